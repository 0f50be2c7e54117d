"""BIDS datasets: names, walking, inheritance, loading DWI/IVIM/ASL, and their bad inputs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from bids_tree import (
    AFFINE,
    PASL,
    PCASL,
    dataset,
    write_aslcontext,
    write_gradients,
    write_image,
    write_json,
)

import mriflow
from mriflow import bids
from mriflow.errors import (
    AcquisitionError,
    BidsError,
    MissingFileError,
    MriflowError,
    SidecarError,
)
from mriflow.io.gradients import bvecs_to_world
from mriflow.io.nifti import bytes_read

SHAPE = (4, 5, 3)


def _asl(folder: Path, name: str, context: list[str], sidecar: dict, *, seed: int = 0):
    data = write_image(folder / f"{name}_asl.nii.gz", (*SHAPE, len(context)), seed=seed)
    write_json(folder / f"{name}_asl.json", sidecar)
    write_aslcontext(folder / f"{name}_aslcontext.tsv", context)
    return data


def _dwi(folder: Path, name: str, bvals: list[float], *, seed: int = 0):
    data = write_image(folder / f"{name}_dwi.nii.gz", (*SHAPE, len(bvals)), seed=seed)
    bvecs = write_gradients(folder / f"{name}_dwi", bvals, seed=seed)
    return data, bvecs


# --- names and walking --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        (
            "sub-01_ses-pre_acq-pcasl_run-02_asl.nii.gz",
            ({"sub": "01", "ses": "pre", "acq": "pcasl", "run": "02"}, "asl", ".nii.gz"),
        ),
        ("sub-01_dwi.bval", ({"sub": "01"}, "dwi", ".bval")),
        ("dwi.json", ({}, "dwi", ".json")),
        ("acq-fast_dce.json", ({"acq": "fast"}, "dce", ".json")),
        ("sub-01_aslcontext.tsv", ({"sub": "01"}, "aslcontext", ".tsv")),
    ],
)
def test_parse_name_reads_entities_suffix_and_extension(name, expected):
    assert bids.parse_name(name) == expected


@pytest.mark.parametrize(
    "name", ["sub-01_run-1_run-2_dwi.nii", "sub_01_dwi.nii", "sub-0 1_dwi.nii", "sub-01_.nii"]
)
def test_parse_name_rejects_non_bids_names(name):
    assert bids.parse_name(name) is None


@pytest.fixture
def multi(tmp_path):
    """Three subjects; sub-02 has two sessions; sub-03 has two runs of DWI and a T1w."""
    root = dataset(tmp_path / "ds")
    _dwi(root / "sub-01" / "dwi", "sub-01", [0, 1000, 1000])
    for session in ("pre", "post"):
        _dwi(root / "sub-02" / f"ses-{session}" / "dwi", f"sub-02_ses-{session}", [0, 700])
    for run in ("01", "02"):
        _dwi(root / "sub-03" / "dwi", f"sub-03_run-{run}", [0, 1000])
    write_image(root / "sub-03" / "anat" / "sub-03_T1w.nii.gz", SHAPE)
    (root / "sub-03" / "dwi" / "notes.txt").write_text("not a BIDS name")
    (root / "derivatives").mkdir()
    return root


def test_subjects_sessions_and_find(multi):
    assert bids.subjects(multi) == ["01", "02", "03"]
    assert bids.sessions(multi, "02") == ["post", "pre"]
    assert bids.sessions(multi, "sub-01") == []
    images = bids.find(multi, suffix="dwi", extension=".nii.gz")
    assert [f.path.name for f in images] == [
        "sub-01_dwi.nii.gz",
        "sub-02_ses-post_dwi.nii.gz",
        "sub-02_ses-pre_dwi.nii.gz",
        "sub-03_run-01_dwi.nii.gz",
        "sub-03_run-02_dwi.nii.gz",
    ]
    run_two = bids.find(multi, subject="sub-03", run=2, extension=["bval", ".bvec"])
    assert sorted(f.path.name for f in run_two) == [
        "sub-03_run-02_dwi.bval",
        "sub-03_run-02_dwi.bvec",
    ]
    assert {f.datatype for f in bids.find(multi, subject="03")} == {"dwi", "anat"}
    pre = bids.find(multi, session="pre", suffix="dwi", extension="nii.gz")
    assert len(pre) == 1
    assert pre[0].session == "pre"
    assert pre[0].subject == "02"
    assert bids.find(multi, subject=["01", "02"], datatype="anat") == []
    assert bids.find(multi, subject="1") == []  # labels are not numbers: sub-1 is not sub-01


def test_load_bids_dwi_attaches_gradients_lazily(tmp_path):
    root = dataset(tmp_path / "ds")
    bvals = [0, 1000, 1000, 2000, 0]
    data, bvecs = _dwi(root / "sub-01" / "dwi", "sub-01", bvals)
    write_json(root / "dwi.json", {"RepetitionTime": 3.2, "EchoTime": 0.085})
    image = mriflow.load_bids(root, subject="01", session=None, modality="dwi")
    path = root / "sub-01" / "dwi" / "sub-01_dwi.nii.gz"
    assert bytes_read(path) == 0
    assert image.dims == ("i", "j", "k", "volume")
    np.testing.assert_array_equal(image.mri.bvals, bvals)
    np.testing.assert_allclose(image.mri.bvecs("ras"), bvecs_to_world(bvecs, AFFINE), atol=1e-7)
    np.testing.assert_array_equal(image.values, data)
    acquisition = image.attrs["acquisition"]
    assert acquisition["modality"] == "dwi"
    assert acquisition["bvalues"]["value"] == bvals
    assert acquisition["bvalues"]["origin"] == str(path.with_name("sub-01_dwi.bval"))
    assert acquisition["repetition_time"] == {
        "value": 3.2,
        "unit": "s",
        "source": "sidecar",
        "origin": str(root / "dwi.json"),
    }
    assert image.attrs["bids"] == {"sub": "01", "suffix": "dwi", "datatype": "dwi"}
    json.dumps(acquisition)  # a plain, serialisable dict


def test_load_bids_sessions_and_runs(multi):
    pre = mriflow.load_bids(multi, "02", "pre", "dwi")
    assert pre.attrs["bids"]["ses"] == "pre"
    np.testing.assert_array_equal(pre.mri.bvals, [0, 700])
    with pytest.raises(BidsError, match=r"2 images match .*ses-post.*ses-pre"):
        mriflow.load_bids(multi, "02", modality="dwi")
    with pytest.raises(BidsError, match="run="):
        mriflow.load_bids(multi, "03", modality="dwi")
    assert mriflow.load_bids(multi, "03", modality="dwi", run=1).attrs["bids"]["run"] == "01"
    anat = mriflow.load_bids(multi, "03", modality="anat")
    assert anat.dims == ("i", "j", "k")
    assert anat.attrs["modality"] == "anat"


def test_ivim_multi_b_series(tmp_path):
    root = dataset(tmp_path / "ds")
    bvals = [0, 10, 20, 50, 100, 200, 400, 800]
    data, _ = _dwi(root / "sub-01" / "dwi", "sub-01_acq-ivim", bvals)
    write_json(root / "sub-01" / "dwi" / "sub-01_acq-ivim_dwi.json", {"EchoTime": 0.07})
    image = mriflow.load_bids(root, "01", modality="ivim", acq="ivim")
    assert image.attrs["modality"] == "ivim"
    assert image.attrs["acquisition"]["bvalues"]["value"] == bvals
    assert image.attrs["acquisition"]["echo_time"]["value"] == 0.07
    np.testing.assert_array_equal(image.isel(volume=3).values, data[..., 3])


def test_ivim_needs_several_b_values(tmp_path):
    root = dataset(tmp_path / "ds")
    _dwi(root / "sub-01" / "dwi", "sub-01", [0, 1000, 1000])
    with pytest.raises(AcquisitionError, match=r"sub-01_dwi\.json: IVIM needs at least 3 distinct"):
        mriflow.load_bids(root, "01", modality="ivim")


# --- inheritance ----------------------------------------------------------------------------------


def test_sidecar_inheritance_nearest_wins_key_by_key(tmp_path):
    root = dataset(tmp_path / "ds")
    perf = root / "sub-01" / "ses-1" / "perf"
    _asl(perf, "sub-01_ses-1_acq-pcasl", ["control", "label"] * 2, {"PostLabelingDelay": 2.0})
    top = write_json(root / "acq-pcasl_asl.json", {**PCASL, "M0Type": "Absent", "EchoTime": 0.01})
    write_json(root / "acq-other_asl.json", {"LabelingDuration": 9.9})  # other acq: not applied
    write_json(root / "dwi.json", {"LabelingDuration": 8.8})  # other suffix: not applied
    subject = write_json(root / "sub-01" / "sub-01_asl.json", {"EchoTime": 0.02})
    nearest = perf / "sub-01_ses-1_acq-pcasl_asl.json"
    image_path = perf / "sub-01_ses-1_acq-pcasl_asl.nii.gz"
    assert bids.sidecar_chain(image_path) == [top, subject, nearest]
    asl = mriflow.load_bids(root, "01", "1", "asl")
    acquisition = asl.attrs["acquisition"]
    assert acquisition["post_labeling_delay"]["value"] == 2.0
    assert acquisition["post_labeling_delay"]["origin"] == str(nearest)
    assert acquisition["echo_time"]["value"] == 0.02
    assert acquisition["echo_time"]["origin"] == str(subject)
    assert acquisition["labeling_duration"]["value"] == 1.8
    assert acquisition["labeling_duration"]["origin"] == str(top)
    assert asl.attrs["sidecar"]["EchoTime"] == 0.02
    assert asl.attrs["sidecar"]["M0Type"] == "Absent"


def test_two_sidecars_at_one_level_are_ambiguous(tmp_path):
    root = dataset(tmp_path / "ds")
    _dwi(root / "sub-01" / "dwi", "sub-01_acq-x", [0, 1000, 1000])
    write_json(root / "dwi.json", {"EchoTime": 0.08})
    write_json(root / "acq-x_dwi.json", {"EchoTime": 0.09})
    with pytest.raises(BidsError, match=r"2 JSON sidecars apply to sub-01_acq-x_dwi\.nii\.gz"):
        mriflow.load_bids(root, "01", modality="dwi")


def test_file_outside_a_bids_tree_uses_its_own_sidecar(tmp_path):
    path = tmp_path / "scan_dsc.nii.gz"
    write_image(path, (*SHAPE, 3))
    write_json(tmp_path / "scan_dsc.json", {"EchoTime": 0.03, "RepetitionTime": 1.5})
    write_json(tmp_path / "dsc.json", {"EchoTime": 0.5})  # no BIDS root: not inherited
    image = mriflow.open_image(path, modality="dsc")
    assert image.attrs["acquisition"]["echo_time"]["value"] == 0.03
    np.testing.assert_allclose(image.t.values, [0.0, 1.5, 3.0])


# --- ASL ---------------------------------------------------------------------------------


def test_pcasl_with_included_m0(tmp_path):
    root = dataset(tmp_path / "ds")
    context = ["m0scan", "control", "label", "control", "label"]
    data = _asl(root / "sub-01" / "perf", "sub-01", context, PCASL)
    assert mriflow.load_asl_context(root, subject="01") == context
    full = mriflow.load_bids(root, "01", modality="asl")
    assert full.dims == ("i", "j", "k", "volume")
    assert list(full.volume_type.values) == context
    np.testing.assert_allclose(full.acquisition_time.values, [0, 4, 8, 12, 16])
    np.testing.assert_allclose(full.post_labeling_delay.values, 1.8)
    asl, m0 = mriflow.load_bids_with_m0(root, subject="01")
    assert list(asl.volume_type.values) == context[1:]
    np.testing.assert_array_equal(m0.values, data[..., :1])
    np.testing.assert_array_equal(asl.values, data[..., 1:])
    acquisition = asl.attrs["acquisition"]
    assert acquisition["labeling_type"]["value"] == "PCASL"
    assert acquisition["labeling_efficiency"]["value"] == 0.85
    assert acquisition["labeling_efficiency"]["source"] == "default"
    assert acquisition["m0_scale"] == {
        "value": 1.0,
        "unit": "",
        "source": "default",
        "origin": "mriflow default",
    }


def test_pasl_with_separate_m0(tmp_path):
    root = dataset(tmp_path / "ds")
    perf = root / "sub-01" / "perf"
    _asl(perf, "sub-01", ["label", "control"] * 3, PASL)
    m0_data = write_image(perf / "sub-01_m0scan.nii.gz", SHAPE, seed=5)
    write_json(perf / "sub-01_m0scan.json", {"IntendedFor": "perf/sub-01_asl.nii.gz"})
    # an m0scan with more entities is a candidate but the exact one is preferred
    write_image(perf / "sub-01_dir-PA_m0scan.nii.gz", SHAPE, seed=6)
    asl, m0 = mriflow.load_bids_with_m0(root, "01")
    np.testing.assert_array_equal(m0.values, m0_data)
    assert m0.attrs["sidecar"]["IntendedFor"] == "perf/sub-01_asl.nii.gz"
    assert asl.sizes["volume"] == 6
    acquisition = asl.attrs["acquisition"]
    assert acquisition["labeling_type"]["value"] == "PASL"
    assert acquisition["bolus_cut_off_technique"]["value"] == "Q2TIPS"
    assert acquisition["bolus_cut_off_delay_time"]["value"] == [0.7, 1.6]
    assert acquisition["labeling_efficiency"]["value"] == 0.98
    assert "labeling_duration" not in acquisition
    np.testing.assert_allclose(asl.acquisition_time.values, np.arange(6) * 3.5)


def test_separate_m0_shared_by_runs_and_chosen_by_intended_for(tmp_path):
    root = dataset(tmp_path / "ds")
    perf = root / "sub-01" / "perf"
    for run in ("1", "2"):
        _asl(perf, f"sub-01_run-{run}", ["label", "control"], PASL)
    shared = write_image(perf / "sub-01_m0scan.nii.gz", SHAPE, seed=3)
    asl, m0 = mriflow.load_bids_with_m0(root, "01", run=2)
    assert asl.attrs["bids"]["run"] == "2"
    np.testing.assert_array_equal(m0.values, shared)
    # two M0 scans of other phase-encoding directions: IntendedFor decides
    (perf / "sub-01_m0scan.nii.gz").unlink()
    for direction, target in (("AP", "run-1"), ("PA", "run-2")):
        write_image(perf / f"sub-01_dir-{direction}_m0scan.nii.gz", SHAPE, seed=len(target))
        write_json(
            perf / f"sub-01_dir-{direction}_m0scan.json",
            {"IntendedFor": [f"bids::sub-01/perf/sub-01_{target}_asl.nii.gz"]},
        )
    _, m0 = mriflow.load_bids_with_m0(root, "01", run=1)
    assert m0.attrs["bids"]["dir"] == "AP"
    # an m0scan of another acquisition never belongs to the series
    for direction in ("AP", "PA"):
        (perf / f"sub-01_dir-{direction}_m0scan.nii.gz").rename(
            perf / f"sub-01_acq-other{direction}_m0scan.nii.gz"
        )
    _asl(perf, "sub-01_acq-main", ["label", "control"], PASL)
    with pytest.raises(MissingFileError, match=r"sub-01_acq-main_m0scan\.nii\.gz: not found"):
        mriflow.load_bids_with_m0(root, "01", acq="main")


def test_multi_pld_is_a_coordinate_on_the_volume_axis(tmp_path):
    root = dataset(tmp_path / "ds")
    plds = [0.0, 0.5, 0.5, 1.0, 1.0, 2.0, 2.0]
    durations = [0.0, 1.5, 1.5, 1.8, 1.8, 1.8, 1.8]
    sidecar = {
        **PCASL,
        "PostLabelingDelay": plds,
        "LabelingDuration": durations,
        "RepetitionTimePreparation": [5.0, 3.0, 3.0, 3.5, 3.5, 4.0, 4.0],
    }
    context = ["m0scan", *(["control", "label"] * 3)]
    _asl(root / "sub-01" / "perf", "sub-01", context, sidecar)
    asl, m0 = mriflow.load_bids_with_m0(root, "01")
    np.testing.assert_allclose(asl.post_labeling_delay.values, plds[1:])
    np.testing.assert_allclose(asl.labeling_duration.values, durations[1:])
    np.testing.assert_allclose(asl.acquisition_time.values, [5, 8, 11, 14.5, 18, 22])
    at_one_second = asl.where(asl.post_labeling_delay == 1.0, drop=True)
    assert list(at_one_second.volume_type.values) == ["control", "label"]
    assert m0.post_labeling_delay.values.tolist() == [0.0]


@pytest.mark.parametrize(
    ("m0_type", "extra"), [("Estimate", {"M0Estimate": 1234.5}), ("Absent", {})]
)
def test_m0_estimate_and_absent_give_no_m0_image(tmp_path, m0_type, extra):
    root = dataset(tmp_path / "ds")
    _asl(
        root / "sub-01" / "perf",
        "sub-01",
        ["control", "label"],
        {**PCASL, "M0Type": m0_type, **extra},
    )
    asl, m0 = mriflow.load_bids_with_m0(root, "01")
    assert m0 is None
    assert asl.sizes["volume"] == 2
    estimate = asl.attrs["acquisition"].get("m0_estimate", {}).get("value")
    assert estimate == extra.get("M0Estimate")


# --- bad input ---------------------------------------------------------------------------


def test_missing_subject_session_and_data_folders(multi):
    with pytest.raises(MissingFileError, match=r"ds/sub-09: data directory not found.*01, 02, 03"):
        mriflow.load_bids(multi, "09", modality="dwi")
    with pytest.raises(MissingFileError, match=r"ds/sub-01/perf: data directory not found"):
        mriflow.load_bids(multi, "01", modality="asl")
    with pytest.raises(MissingFileError, match=r"ds/sub-02/ses-mid: data directory not found"):
        mriflow.load_bids(multi, "02", "mid", "dwi")
    with pytest.raises(MissingFileError, match=r"ds/sub-02/ses-\*/perf: data directory not found"):
        mriflow.load_bids(multi, "02", modality="dsc")
    with pytest.raises(MissingFileError, match="BIDS dataset folder not found"):
        bids.subjects(multi / "nowhere")
    with pytest.raises(BidsError, match=r"sub-03/anat: no \*_T2w\.nii\[\.gz\] image for sub-03"):
        mriflow.load_bids(multi, "03", modality="anat", suffix="T2w")


@pytest.mark.parametrize(
    ("labeling", "drop", "message"),
    [
        ("PCASL", "LabelingDuration", "ASL PCASL needs LabelingDuration"),
        ("PCASL", "PostLabelingDelay", "ASL PCASL needs PostLabelingDelay"),
        ("PCASL", "M0Type", "ASL PCASL needs M0Type"),
        ("PCASL", "BackgroundSuppression", "ASL PCASL needs BackgroundSuppression"),
        ("PCASL", "ArterialSpinLabelingType", "ASL needs ArterialSpinLabelingType"),
        ("PASL", "BolusCutOffFlag", "ASL PASL needs BolusCutOffFlag"),
        ("PASL", "BolusCutOffTechnique", "ASL PASL with bolus cut-off needs BolusCutOffTechnique"),
        ("PASL", "BolusCutOffDelayTime", "ASL PASL with bolus cut-off needs BolusCutOffDelayTime"),
    ],
)
def test_required_asl_fields_per_labeling_type(tmp_path, labeling, drop, message):
    root = dataset(tmp_path / "ds")
    sidecar = dict(PCASL if labeling == "PCASL" else {**PASL, "M0Type": "Absent"})
    sidecar.pop(drop)
    _asl(root / "sub-01" / "perf", "sub-01", ["control", "label"], sidecar)
    with pytest.raises(AcquisitionError, match=rf"sub-01_asl\.json: {message}") as caught:
        mriflow.load_bids(root, "01", modality="asl")
    assert str(caught.value).startswith(str(root / "sub-01" / "perf" / "sub-01_asl.json"))


@pytest.mark.parametrize(
    ("technique", "delay", "message"),
    [
        ("Q2TIPS", 0.7, r"PASL Q2TIPS needs 2 BolusCutOffDelayTime values \(s\), got 0\.7"),
        ("QUIPSSII", [0.7, 1.6], "PASL QUIPSSII needs 1 BolusCutOffDelayTime value"),
    ],
)
def test_bolus_cut_off_delay_times_follow_the_technique(tmp_path, technique, delay, message):
    root = dataset(tmp_path / "ds")
    sidecar = {**PASL, "M0Type": "Absent", "BolusCutOffTechnique": technique}
    sidecar["BolusCutOffDelayTime"] = delay
    _asl(root / "sub-01" / "perf", "sub-01", ["control", "label"], sidecar)
    with pytest.raises(AcquisitionError, match=message):
        mriflow.load_bids(root, "01", modality="asl")


def test_m0_estimate_needs_its_value(tmp_path):
    root = dataset(tmp_path / "ds")
    _asl(root / "sub-01" / "perf", "sub-01", ["control", "label"], {**PCASL, "M0Type": "Estimate"})
    with pytest.raises(AcquisitionError, match="M0Type Estimate needs M0Estimate"):
        mriflow.load_bids_with_m0(root, "01")


def test_aslcontext_rows_must_match_volumes(tmp_path):
    root = dataset(tmp_path / "ds")
    perf = root / "sub-01" / "perf"
    _asl(perf, "sub-01", ["control", "label", "control"], PCASL | {"M0Type": "Absent"})
    write_aslcontext(perf / "sub-01_aslcontext.tsv", ["control", "label"])
    pattern = r"sub-01_aslcontext\.tsv: has 2 rows but the ASL image has 3 volumes"
    with pytest.raises(SidecarError, match=pattern):
        mriflow.load_bids(root, "01", modality="asl")
    with pytest.raises(SidecarError, match=pattern):
        mriflow.load_asl_context(root, "01")
    write_aslcontext(perf / "sub-01_aslcontext.tsv", ["control", "label", "tag"])
    with pytest.raises(SidecarError, match="unknown volume_type 'tag'"):
        mriflow.load_asl_context(root, "01")
    (perf / "sub-01_aslcontext.tsv").unlink()
    with pytest.raises(SidecarError, match=r"sub-01_aslcontext\.tsv: not found"):
        mriflow.load_bids(root, "01", modality="asl")


def test_included_m0_must_be_listed_and_separate_m0_must_exist(tmp_path):
    root = dataset(tmp_path / "ds")
    perf = root / "sub-01" / "perf"
    _asl(perf, "sub-01", ["control", "label"], PCASL)
    with pytest.raises(AcquisitionError, match=r"M0Type is Included but sub-01_aslcontext\.tsv"):
        mriflow.load_bids(root, "01", modality="asl")
    write_json(perf / "sub-01_asl.json", {**PCASL, "M0Type": "Separate"})
    with pytest.raises(MissingFileError, match=r"sub-01_m0scan\.nii\.gz: not found, but M0Type"):
        mriflow.load_bids_with_m0(root, "01")


def test_multi_pld_list_must_have_one_value_per_volume(tmp_path):
    root = dataset(tmp_path / "ds")
    sidecar = {**PCASL, "M0Type": "Absent", "PostLabelingDelay": [1.0, 1.5, 2.0]}
    _asl(root / "sub-01" / "perf", "sub-01", ["control", "label"] * 2, sidecar)
    with pytest.raises(SidecarError, match="PostLabelingDelay has 3 values but the image has 4"):
        mriflow.load_bids(root, "01", modality="asl")


def test_milliseconds_in_a_seconds_field_are_caught(tmp_path):
    root = dataset(tmp_path / "ds")
    sidecar = {**PCASL, "M0Type": "Absent", "PostLabelingDelay": 1800}
    _asl(root / "sub-01" / "perf", "sub-01", ["control", "label"], sidecar)
    with pytest.raises(AcquisitionError, match=r"PostLabelingDelay is 1800\.0 s.*milliseconds"):
        mriflow.load_bids(root, "01", modality="asl")


def test_asl_series_without_timing(tmp_path):
    root = dataset(tmp_path / "ds")
    sidecar = {**PCASL, "M0Type": "Absent"}
    del sidecar["RepetitionTimePreparation"]
    _asl(root / "sub-01" / "perf", "sub-01", ["control", "label"], sidecar)
    with pytest.raises(mriflow.MissingTimingError, match="4D data requires time points"):
        mriflow.load_bids(root, "01", modality="asl")


def test_bval_bvec_lengths_must_match_the_image(tmp_path):
    root = dataset(tmp_path / "ds")
    folder = root / "sub-01" / "dwi"
    _dwi(folder, "sub-01", [0, 1000, 1000])
    np.savetxt(folder / "sub-01_dwi.bval", [[0, 1000]], fmt="%g")
    with pytest.raises(SidecarError, match=r"sub-01_dwi\.bval: has 2 b-values but the image has 3"):
        mriflow.load_bids(root, "01", modality="dwi")
    np.savetxt(folder / "sub-01_dwi.bval", [[0, 1000, 1000]], fmt="%g")
    np.savetxt(folder / "sub-01_dwi.bvec", np.zeros((3, 4)), fmt="%g")
    with pytest.raises(SidecarError, match=r"sub-01_dwi\.bvec: expected 3 rows of 3 directions"):
        mriflow.load_bids(root, "01", modality="dwi")


@pytest.mark.parametrize("level", ["nearest", "inherited"])
def test_invalid_json_names_the_file(tmp_path, level):
    root = dataset(tmp_path / "ds")
    _dwi(root / "sub-01" / "dwi", "sub-01", [0, 1000, 1000])
    broken = (
        root / "sub-01" / "dwi" / "sub-01_dwi.json" if level == "nearest" else root / "dwi.json"
    )
    broken.write_text('{"EchoTime": 0.08,')
    with pytest.raises(SidecarError, match=rf"{broken.name}: invalid JSON sidecar") as caught:
        mriflow.load_bids(root, "01", modality="dwi")
    assert isinstance(caught.value, MriflowError)
    assert str(broken) in str(caught.value)
