"""`mriflow run` inputs: a DCE DICOM study sorted from headers alone; missing metadata errors."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from mriflow.cli import main
from mriflow.data import write_dce_dicom_study
from mriflow.errors import AcquisitionError
from mriflow.io.dicom.study import open_dce_study

CONFIG = """\
modality: dce
data: {format: FORMAT}
pipeline: {model: extended_tofts, aif_delay: 20.0, hematocrit: 0.45}
cluster: {n_workers: 1}
output: {format: nifti}
"""


def console(*args):
    script = Path(sys.executable).parent / "mriflow"
    return subprocess.run(
        [str(script if script.exists() else shutil.which("mriflow")), *map(str, args)],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )


@pytest.fixture(scope="module")
def twist_study(tmp_path_factory):
    """Per-frame TWIST export (one series per time frame) plus four VFA series."""
    return write_dce_dicom_study(tmp_path_factory.mktemp("twist"), per_frame=True)


def test_run_on_a_twist_study_recovers_ktrans(twist_study, tmp_path):
    config = tmp_path / "dce.yaml"
    config.write_text(CONFIG.replace("FORMAT", "auto"))
    result = console("run", config, twist_study["study"], "-o", tmp_path / "out")
    assert result.returncode == 0, result.stderr
    assert "flip angles [2.0, 5.0, 10.0, 15.0] deg, TR 0.005 s" in result.stdout  # headers
    t1 = nib.load(tmp_path / "out" / "t1_t1.nii.gz").get_fdata()
    assert np.median(np.abs(t1 - 1.4) / 1.4) < 0.05
    ktrans = nib.load(tmp_path / "out" / "extended_tofts_ktrans.nii.gz").get_fdata()
    truth = nib.load(twist_study["truth_ktrans"]).get_fdata()
    assert ktrans.shape == truth.shape
    assert np.median(np.abs(ktrans - truth) / truth) < 0.06  # SNR 50, 0.1-unit quantisation


def test_single_series_study_and_config_overrides(tmp_path):
    paths = write_dce_dicom_study(tmp_path, per_frame=False, n_times=8, shape=(6, 5, 3))
    study = open_dce_study(paths["study"])
    assert study.dynamic.dims == ("i", "j", "k", "t")
    np.testing.assert_allclose(study.dynamic["t"].values, np.arange(8) * 4.0)
    acquisition = study.dynamic.attrs["acquisition"]
    assert acquisition["flip_angle"]["value"] == 15.0
    assert acquisition["repetition_time"]["value"] == pytest.approx(0.005)
    assert study.vfa.sizes == {"i": 6, "j": 5, "k": 3, "volume": 4}
    assert study.vfa_flip_angles == [2.0, 5.0, 10.0, 15.0]
    np.testing.assert_array_equal(study.vfa.mri.affine, study.dynamic.mri.affine)
    # ordered by flip angle: the 5 deg volume is nearest the Ernst angle (4.8 deg at T1 1.4 s,
    # TR 5 ms), so brightest; the signal falls beyond it
    means = study.vfa.mean(["i", "j", "k"]).values
    assert int(np.argmax(means)) == 1
    assert means[1] > means[2] > means[3]

    overridden = open_dce_study(
        paths["study"], flip_angle=12.0, vfa_flip_angles=[3, 6, 9, 12], repetition_time=0.004
    )
    acquisition = overridden.dynamic.attrs["acquisition"]
    assert acquisition["flip_angle"]["value"] == 12.0
    assert acquisition["repetition_time"]["value"] == pytest.approx(0.004)
    assert overridden.vfa_flip_angles == [3.0, 6.0, 9.0, 12.0]
    assert overridden.repetition_time == pytest.approx(0.004)
    assert overridden.sources["vfa_flip_angles"] == "argument"
    with pytest.raises(AcquisitionError, match=r"^flip_angles: 2 flip angle\(s\)"):
        open_dce_study(paths["study"], vfa_flip_angles=[3, 6])


def test_missing_tr_names_the_config_key(tmp_path, capsys):
    paths = write_dce_dicom_study(tmp_path, n_times=4, shape=(4, 4, 2), write_repetition_time=False)
    config = tmp_path / "dce.yaml"
    config.write_text(CONFIG.replace("FORMAT", "dicom"))
    assert main(["run", str(config), str(paths["study"]), "-o", str(tmp_path / "out")]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: acquisition.tr:"), err
    assert "RepetitionTime (0018,0080)" in err
    assert "set acquisition.tr in the config (ms)" in err
    assert len(err.splitlines()) == 1
    # given in the config, the value is used instead of the headers
    study = open_dce_study(paths["study"], repetition_time=0.005)
    assert study.sources["repetition_time"] == "argument"


def test_a_folder_without_a_dynamic_series(tmp_path, capsys):
    from mriflow.io.dicom.synthetic import write_series

    write_series(tmp_path / "study" / "a", description="t1w", flip_angle=8.0)
    config = tmp_path / "dce.yaml"
    config.write_text(CONFIG.replace("FORMAT", "auto"))
    assert main(["run", str(config), str(tmp_path / "study"), "-o", str(tmp_path / "o")]) == 1
    err = capsys.readouterr().err
    assert "no dynamic series" in err
    assert "t1w" in err


def test_missing_asl_sidecar_value_names_the_config_key(tmp_path, capsys):
    import json

    from mriflow.config import load_config
    from mriflow.data import write_asl_phantom
    from mriflow.pipeline import _open_input

    paths = write_asl_phantom(tmp_path, shape=(3, 3, 1), n_pairs=2)
    sidecar = paths["asl"].with_name("sub-01_asl.json")
    values = json.loads(sidecar.read_text())
    del values["LabelingDuration"]
    sidecar.write_text(json.dumps(values))
    config = tmp_path / "asl.yaml"
    config.write_text("modality: asl\ncluster: {n_workers: 1}\n")
    assert main(["run", str(config), str(paths["asl"]), "-o", str(tmp_path / "out")]) == 1
    err = capsys.readouterr().err.strip()
    assert "sub-01_asl.json: ASL PCASL needs LabelingDuration" in err
    assert err.endswith("or set asl.labeling_duration (s) in the config")
    config.write_text("modality: asl\nasl: {labeling_duration: 1.8}\n")
    image = _open_input(load_config(config), paths["asl"]).image
    assert image.attrs["acquisition"]["labeling_duration"]["value"] == 1.8
    assert image.attrs["acquisition"]["labeling_duration"]["source"] == "argument"


def test_vfa_from_a_dicom_folder_with_a_single_series_dynamic(tmp_path):
    from mriflow.config import load_config
    from mriflow.io.dicom import open_vfa_series
    from mriflow.pipeline import run_pipeline

    paths = write_dce_dicom_study(tmp_path, per_frame=False, n_times=12, shape=(6, 5, 3))
    vfa, angles, tr = open_vfa_series(paths["study"])
    assert angles == [2.0, 5.0, 10.0, 15.0]
    assert tr == pytest.approx(0.005)
    assert vfa.sizes == {"i": 6, "j": 5, "k": 3, "volume": 4}
    # the dynamic series' own folder holds no VFA set: data.vfa names the folder that does
    config = tmp_path / "dce.yaml"
    config.write_text(CONFIG.replace("FORMAT", f"dicom, vfa: {paths['study']}"))
    outputs = run_pipeline(
        load_config(config), paths["study"] / "dce", tmp_path / "out", say=lambda _: None
    )
    t1 = nib.load(next(p for p in outputs["t1"] if p.name == "t1_t1.nii.gz")).get_fdata()
    assert np.median(np.abs(t1 - 1.4) / 1.4) < 0.05
    assert any(p.name == "extended_tofts_ktrans.nii.gz" for p in outputs["extended_tofts"])
