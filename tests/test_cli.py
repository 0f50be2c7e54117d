"""The mriflow command: exit codes, info output, and the demo end to end."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from mriflow.cli import main


def test_info_prints_geometry(nibabel_data, capsys):
    assert main(["info", str(nibabel_data / "example4d.nii.gz")]) == 0
    out = capsys.readouterr().out
    assert "i=128, j=96, k=24, t=2" in out
    assert "LAS" in out
    assert "int16" in out


def test_bad_input_exits_1_with_one_line(tmp_path, capsys):
    assert main(["info", str(tmp_path / "nope.nii.gz")]) == 1
    err = capsys.readouterr().err
    assert "nope.nii.gz" in err
    assert "Traceback" not in err


def test_usage_error_exits_2(capsys):
    assert main(["info"]) == 2
    assert main(["no-such-command"]) == 2


def test_console_script_is_installed(nibabel_data):
    script = Path(sys.executable).parent / "mriflow"  # installed next to this interpreter
    assert script.exists() or shutil.which("mriflow")
    result = subprocess.run(
        [
            str(script if script.exists() else shutil.which("mriflow")),
            "info",
            str(nibabel_data / "anatomical.nii"),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "anatomical" in result.stdout


def test_demo_runs_end_to_end(tmp_path, capsys):
    from mriflow.demo import run_demo

    result = run_demo(tmp_path, shape=(24, 28, 20), workers=1, say=lambda _: None)
    fa = nib.load(result["files"]["fa"])
    assert nib.aff2axcodes(fa.affine) == ("R", "A", "S")
    # phantom truth: white matter is anisotropic (FA ~0.7 in single-fibre voxels), CSF is not
    assert result["summary"]["fa_white_matter"] > 0.35
    assert result["summary"]["fa_csf"] < 0.15
    assert set(result["stages"]) >= {"phantom", "dti", "csd + peaks", "tracking", "pictures"}
    tracts = nib.streamlines.load(result["files"]["tracts.trk"])
    assert len(tracts.streamlines) > 100
    import mriflow

    peaks = mriflow.open_zarr(result["files"]["fits"], group="peaks")
    assert "peak_dirs" in peaks
    from PIL import Image

    for name in ("fa.png", "colour_fa.png", "streamlines.png"):
        picture = np.asarray(Image.open(result["files"][name]).convert("RGB"), dtype=float)
        assert picture.std() > 10, name


def test_demo_through_the_console_script(tmp_path):
    result = console("demo", tmp_path, "--small", "--workers", "1")
    assert result.returncode == 0, result.stderr
    assert "dashboard http" in result.stdout
    assert "\r" not in result.stdout + result.stderr
    for name in ("fits.zarr", "tracts.trk", "streamlines.png", "colour_fa.png", "fa_RAS.nii.gz"):
        assert name in result.stdout
        assert (tmp_path / name).exists()


def test_python_dash_m(nibabel_data):
    result = subprocess.run(
        [sys.executable, "-m", "mriflow", "info", str(nibabel_data / "anatomical.nii")],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "LAS" in result.stdout or "RAS" in result.stdout


EXAMPLES = sorted((Path(__file__).parent.parent / "examples").glob("*.yaml"))


def console(*args, cwd=None):
    script = Path(sys.executable).parent / "mriflow"
    return subprocess.run(
        [str(script if script.exists() else shutil.which("mriflow")), *map(str, args)],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
        cwd=cwd,
    )


@pytest.fixture(scope="module")
def phantom(tmp_path_factory):
    import mriflow

    return mriflow.data.write_dwi_phantom(tmp_path_factory.mktemp("phantom"), shape=(16, 18, 12))


@pytest.fixture(scope="module")
def dce_phantom(tmp_path_factory):
    import mriflow

    return mriflow.data.write_dce_phantom(tmp_path_factory.mktemp("dce"))


# perfusion examples: the phantom writer, the input it writes, and (map, truth, tolerance on
# the median absolute relative error, tolerance on the bias) per recovered parameter
PERFUSION_EXAMPLES = {
    "asl": ("write_asl_phantom", "asl", [("asl_cbf", "truth_cbf", 0.05, 0.02)]),
    # oSVD underestimates peak flow (regularised residue): see test_perfusion's DSC bounds
    "dsc": (
        "write_dsc_phantom",
        "dsc",
        [("dsc_rcbv", "truth_rcbv", 0.1, 0.06), ("dsc_cbf", "truth_cbf", 0.35, 0.35)],
    ),
    "ivim": (
        "write_ivim_phantom",
        "dwi",
        [("ivim_d", "truth_d", 0.1, 0.03), ("ivim_f", "truth_f", 0.3, 0.1)],
    ),
}


def check_recovery(out: Path, phantom_paths: dict, checks: list) -> None:
    mask = nib.load(phantom_paths["mask"]).get_fdata() > 0
    for name, truth_name, median_abs, bias in checks:
        estimate = nib.load(out / f"{name}.nii.gz").get_fdata()[mask]
        truth = nib.load(phantom_paths[truth_name]).get_fdata()[mask]
        relative = (estimate - truth) / truth
        assert np.median(np.abs(relative)) < median_abs, name
        assert abs(np.median(relative)) < bias, name


@pytest.mark.parametrize("example", EXAMPLES, ids=lambda p: p.name)
def test_example_configs_validate_and_run(example, phantom, dce_phantom, tmp_path):
    import mriflow

    checked = console("run", example, "--validate")
    assert checked.returncode == 0, checked.stderr
    config = tmp_path / example.name
    modality = next(
        m for m in ("dwi", "dce", "asl", "dsc", "ivim") if f"modality: {m}" in example.read_text()
    )
    recovery = None
    if modality in PERFUSION_EXAMPLES:
        writer, key, recovery = PERFUSION_EXAMPLES[modality]
        written = getattr(mriflow.data, writer)(tmp_path / "phantom")
        config.write_text(example.read_text())
        folder, source = written[key].parent, written[key].name
    elif modality == "dce":
        # the example names its inputs relative to the folder it runs in
        config.write_text(example.read_text())
        folder, source = dce_phantom["dce"].parent, dce_phantom["dce"].name
    else:
        config.write_text(example.read_text().replace("mask: null", f"mask: {phantom['mask']}"))
        folder, source = None, phantom["dwi"]
    result = console("run", config, source, "-o", tmp_path / "out", cwd=folder)
    assert result.returncode == 0, result.stderr
    assert "done in" in result.stdout
    assert "dashboard http" in result.stdout  # the cluster's dashboard link
    assert "\r" not in result.stdout + result.stderr  # a pipe gets lines, no progress frames
    assert any((tmp_path / "out").iterdir())
    if recovery is not None:
        check_recovery(tmp_path / "out", written, recovery)


def test_dce_pipeline_recovers_ktrans(dce_phantom, tmp_path):
    from mriflow.config import load_config
    from mriflow.pipeline import run_pipeline

    text = (Path(__file__).parent.parent / "examples" / "dce_extended_tofts.yaml").read_text()
    folder = dce_phantom["dce"].parent
    text = text.replace("sub-01_vfa.nii.gz", str(folder / "sub-01_vfa.nii.gz"))
    text = text.replace("sub-01_mask.nii.gz", str(folder / "sub-01_mask.nii.gz"))
    (tmp_path / "dce.yaml").write_text(text)
    outputs = run_pipeline(
        load_config(tmp_path / "dce.yaml"), dce_phantom["dce"], tmp_path / "out", say=lambda _: None
    )
    ktrans = nib.load(next(p for p in outputs["extended_tofts"] if "ktrans" in p.name)).get_fdata()
    truth = nib.load(dce_phantom["truth_ktrans"]).get_fdata()
    assert np.median(np.abs(ktrans - truth) / truth) < 0.05  # SNR 50


def test_run_error_paths_through_the_console_script(tmp_path, phantom):
    bad_yaml = tmp_path / "bad.yaml"
    bad_yaml.write_text("modality: [dwi\n")
    unknown = tmp_path / "unknown.yaml"
    unknown.write_text("modality: dwi\nfitt: csd\n")
    wrong_type = tmp_path / "wrong.yaml"
    wrong_type.write_text("modality: dwi\ncluster: {n_workers: many}\n")
    cases = [
        (("run", tmp_path / "absent.yaml", "--validate"), 1, "no such config file"),
        (("run", bad_yaml, "--validate"), 1, "not valid YAML"),
        (("run", unknown, "--validate"), 1, "did you mean 'fit'"),
        (("run", wrong_type, "--validate"), 1, "cluster.n_workers"),
        (("run", EXAMPLES[0], tmp_path / "missing.nii.gz"), 1, "missing.nii.gz"),
        (("info", tmp_path / "missing.nii.gz"), 1, "no such file"),
        (("run", "--bogus-flag"), 2, "No such option"),
    ]
    for args, code, message in cases:
        result = console(*args)
        assert result.returncode == code, (args, result.stdout, result.stderr)
        assert message in result.stdout + result.stderr, (args, result.stderr)
        assert "Traceback" not in result.stderr


def test_dump_defaults_round_trip(tmp_path):
    result = console("run", "--dump-defaults", "dce")
    assert result.returncode == 0
    config = tmp_path / "dce.yaml"
    config.write_text(result.stdout)
    assert console("run", config, "--validate").returncode == 0
