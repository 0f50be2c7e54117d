"""Acquisition parameters: priority of sources, provenance, units, timing, DICOM layers."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
from bids_tree import AFFINE, dataset, write_gradients, write_image, write_json
from pydicom.data import get_testdata_file

import mriflow
from mriflow.acquisition import (
    DceAcquisition,
    MetadataLayer,
    Modality,
    acquisition_class,
    attach_acquisition,
    dicom_layers,
    resolve_acquisition,
)
from mriflow.errors import AcquisitionError, MetadataWarning, MissingTimingError, SidecarError

SHAPE = (4, 5, 3)
DCE = {"RepetitionTimeExcitation": 0.005, "FlipAngle": 15, "RepetitionTime": 4.0, "EchoTime": 0.002}


def _series(folder: Path, name: str, n: int, sidecar: dict | None) -> Path:
    path = folder / f"{name}.nii.gz"
    write_image(path, (*SHAPE, n))
    if sidecar is not None:
        write_json(folder / f"{name}.json", sidecar)
    return path


def _nicom(name: str) -> pydicom.Dataset:
    path = Path(nib.__file__).parent / "nicom" / "tests" / "data" / name
    with gzip.open(path) as stream:
        return pydicom.dcmread(stream)


def test_modality_enum_and_classes():
    assert Modality.parse("DCE") is Modality.DCE
    assert acquisition_class("ivim").modality is Modality.IVIM
    with pytest.raises(ValueError, match="unknown modality 'pet'; expected one of dwi, dce"):
        Modality.parse("pet")
    units = DceAcquisition().units()
    assert units["repetition_time"] == "s"
    assert units["flip_angle"] == "deg"
    assert units["magnetic_field_strength"] == "T"


def test_dce_time_axis_from_repetition_time(tmp_path):
    root = dataset(tmp_path / "ds")
    path = _series(root / "sub-01" / "perf", "sub-01_dce", 6, DCE)
    image = mriflow.open_image(path, modality="dce")
    assert image.dims == ("i", "j", "k", "t")
    np.testing.assert_allclose(image.t.values, np.arange(6) * 4.0)
    assert image.attrs["zooms"][3] == 4.0
    acquisition = image.attrs["acquisition"]
    # the excitation TR (5 ms) and the volume time (4 s) are different things
    assert acquisition["repetition_time"]["value"] == 0.005
    assert acquisition["repetition_time"]["unit"] == "s"
    assert acquisition["volume_timing"]["value"] == [0.0, 4.0, 8.0, 12.0, 16.0, 20.0]
    assert acquisition["temporal_resolution"]["value"] == 4.0
    assert acquisition["temporal_resolution"]["source"] == "sidecar"
    assert acquisition["flip_angle"] == {
        "value": 15.0,
        "unit": "deg",
        "source": "sidecar",
        "origin": str(path.with_name("sub-01_dce.json")),
    }
    dce = mriflow.load_bids(root, "01", modality="dce")
    np.testing.assert_allclose(dce.t.values, image.t.values)


def test_volume_timing_wins_over_repetition_time(tmp_path):
    timing = [0.0, 3.0, 7.0, 12.0]
    path = _series(tmp_path, "x_dce", 4, {**DCE, "VolumeTiming": timing})
    image = mriflow.open_image(path, modality="dce")
    np.testing.assert_allclose(image.t.values, timing)
    resolved = resolve_acquisition(
        "dce", [MetadataLayer("sidecar", {**DCE, "VolumeTiming": timing})], n_volumes=4
    )
    assert resolved.temporal_resolution == 4.0  # median of 3, 4, 5


def test_time_axis_from_a_nifti_header_with_time_units(tmp_path):
    path = tmp_path / "x_dsc.nii.gz"
    image = nib.Nifti1Image(np.ones((*SHAPE, 3), np.float32), AFFINE)
    image.header.set_xyzt_units("mm", "msec")
    image.header.set_zooms((2.0, 2.0, 2.5, 1500.0))
    nib.save(image, path)
    write_json(tmp_path / "x_dsc.json", {"EchoTime": 0.03})
    dsc = mriflow.open_image(path, modality="dsc")
    np.testing.assert_allclose(dsc.t.values, [0.0, 1.5, 3.0])
    assert dsc.attrs["acquisition"]["repetition_time"]["source"] == "header"
    assert dsc.attrs["acquisition"]["echo_time"]["source"] == "sidecar"


def test_4d_series_without_timing_is_an_error(tmp_path):
    path = _series(tmp_path, "sub-01_dce", 3, {"FlipAngle": 12, "RepetitionTimeExcitation": 0.004})
    with pytest.raises(MissingTimingError, match="4D data requires time points") as caught:
        mriflow.open_image(path, modality="dce")
    assert str(caught.value).startswith(f"{tmp_path / 'sub-01_dce.json'}: ")
    assert "add RepetitionTime" in str(caught.value)
    no_sidecar = _series(tmp_path, "sub-02_dsc", 3, None)
    with pytest.raises(MissingTimingError, match=r"sub-02_dsc\.json: 4D data requires"):
        mriflow.open_image(no_sidecar, modality="dsc", acquisition={"EchoTime": 0.03})


def test_explicit_argument_wins_and_says_so(tmp_path):
    path = _series(tmp_path, "x_dce", 3, DCE)
    image = mriflow.open_image(
        path, modality="dce", acquisition={"flip_angle": 20, "RepetitionTime": 2.0}
    )
    acquisition = image.attrs["acquisition"]
    assert acquisition["flip_angle"]["value"] == 20.0
    assert acquisition["flip_angle"]["source"] == "argument"
    assert acquisition["echo_time"]["source"] == "sidecar"
    np.testing.assert_allclose(image.t.values, [0.0, 2.0, 4.0])
    with pytest.raises(ValueError, match="acquisition= needs a modality"):
        mriflow.open_image(path, acquisition={"FlipAngle": 20})


def test_other_modality_strings_are_only_recorded(tmp_path):
    path = _series(tmp_path, "x_bold", 3, {"RepetitionTime": 2.0})
    image = mriflow.open_image(path, modality="bold")
    assert image.attrs["modality"] == "bold"
    assert "acquisition" not in image.attrs


def test_required_fields_of_dce_and_dsc(tmp_path):
    dce = _series(tmp_path, "a_dce", 3, {"RepetitionTime": 3.0})
    with pytest.raises(AcquisitionError, match=r"a_dce\.json: DCE needs FlipAngle"):
        mriflow.open_image(dce, modality="dce")
    dsc = _series(tmp_path, "b_dsc", 3, {"RepetitionTime": 1.5})
    with pytest.raises(AcquisitionError, match=r"b_dsc\.json: DSC needs EchoTime"):
        mriflow.open_image(dsc, modality="dsc")


@pytest.mark.parametrize(
    ("sidecar", "message"),
    [
        ({**DCE, "FlipAngle": "fifteen"}, "FlipAngle must be a number"),
        ({**DCE, "FlipAngle": 400}, r"FlipAngle is 400\.0 deg, outside"),
        ({**DCE, "EchoTime": 30}, r"EchoTime is 30\.0 s.*milliseconds"),
        ({**DCE, "VolumeTiming": [0, 1]}, "VolumeTiming has 2 entries but the image has 3"),
        ({**DCE, "VolumeTiming": [0, 2, 1]}, "VolumeTiming must increase"),
        ({**DCE, "FlipAngle": [10, 15]}, "FlipAngle has 2 values but the image has 3"),
    ],
)
def test_impossible_values_name_the_file_and_key(tmp_path, sidecar, message):
    path = _series(tmp_path, "x_dce", 3, sidecar)
    with pytest.raises((AcquisitionError, SidecarError), match=message) as caught:
        mriflow.open_image(path, modality="dce")
    assert str(caught.value).startswith(str(tmp_path / "x_dce.json"))


def test_variable_flip_angle_per_volume(tmp_path):
    path = _series(tmp_path, "x_dce", 3, {**DCE, "FlipAngle": [2, 10, 15]})
    image = mriflow.open_image(path, modality="dce")
    assert image.attrs["acquisition"]["flip_angle"]["value"] == [2.0, 10.0, 15.0]


def test_b_values_from_a_nonstandard_json_key_warn(tmp_path):
    bvals = [0, 50, 100, 400, 800]
    path = _series(tmp_path, "x_dwi", 5, {"bValues": bvals, "EchoTime": 0.07})
    with pytest.warns(MetadataWarning, match=r"x_dwi\.json: bvalues read from the non-standard"):
        image = mriflow.open_image(path, modality="ivim")
    assert image.dims == ("i", "j", "k", "volume")
    np.testing.assert_array_equal(image.mri.bvals, bvals)
    np.testing.assert_array_equal(image.mri.bvecs("ras"), np.zeros((5, 3)))
    assert image.attrs["acquisition"]["bvalues"]["source"] == "sidecar"
    # with a .bval pair next to it, the pair wins and the JSON key is ignored
    write_gradients(tmp_path / "x_dwi", [0, 10, 20, 500, 1000])
    image = mriflow.open_image(path, modality="ivim")
    np.testing.assert_array_equal(image.mri.bvals, [0, 10, 20, 500, 1000])
    assert image.attrs["acquisition"]["bvalues"]["origin"] == str(tmp_path / "x_dwi.bval")


def test_dwi_without_b_values_is_an_error(tmp_path):
    path = _series(tmp_path, "x_dwi", 3, {"EchoTime": 0.07})
    with pytest.raises(AcquisitionError, match=r"x_dwi\.json: DWI needs b-values"):
        mriflow.open_image(path, modality="dwi")


# --- DICOM layers -------------------------------------------------------------------------------


def test_dicom_standard_layer_from_a_real_header():
    header = pydicom.dcmread(get_testdata_file("MR_small.dcm"))
    vendor, standard = dicom_layers(header, "dsc")
    assert vendor.level == "dicom-vendor"
    assert standard.values["RepetitionTime"] == pytest.approx(4.0)
    assert standard.values["EchoTime"] == pytest.approx(0.240)
    assert standard.values["FlipAngle"] == 90.0
    assert standard.where("EchoTime") == "DICOM (0018,0081) EchoTime"
    _, for_dce = dicom_layers(header, "dce")
    assert "RepetitionTime" not in for_dce.values
    assert for_dce.values["RepetitionTimeExcitation"] == pytest.approx(4.0)


def test_sidecar_wins_over_dicom_and_provenance_says_so(tmp_path):
    header = pydicom.dcmread(get_testdata_file("MR_small.dcm"))  # TE 240 ms, flip 90, TR 4 s
    path = _series(tmp_path, "x_dsc", 3, {"EchoTime": 0.025, "RepetitionTime": 1.2})
    image = mriflow.open_image(path)
    resolved = attach_acquisition(image, "dsc", dicom=header).attrs["acquisition"]
    assert "acquisition" not in image.attrs  # the input image is left as it was
    assert resolved["echo_time"]["value"] == 0.025
    assert resolved["echo_time"]["source"] == "sidecar"
    assert resolved["echo_time"]["origin"] == str(tmp_path / "x_dsc.json")
    assert resolved["repetition_time"]["value"] == 1.2
    assert resolved["flip_angle"] == {
        "value": 90.0,
        "unit": "deg",
        "source": "dicom",
        "origin": "DICOM (0018,1314) FlipAngle",
    }
    # explicit values still win over both
    explicit = attach_acquisition(image, "dsc", dicom=header, acquisition={"EchoTime": 0.05})
    assert explicit.attrs["acquisition"]["echo_time"]["source"] == "argument"
    # and without a sidecar, DICOM times (ms) arrive in seconds
    bare = mriflow.from_array(np.zeros((*SHAPE, 3), np.float32), AFFINE)
    from_dicom = attach_acquisition(bare, "dsc", dicom=header)
    assert from_dicom.attrs["acquisition"]["echo_time"]["value"] == pytest.approx(0.24)
    np.testing.assert_allclose(from_dicom.t.values, [0.0, 4.0, 8.0])


def test_vendor_tags_rank_above_standard_tags():
    siemens = _nicom("siemens_dwi_1000.dcm.gz")
    vendor, standard = dicom_layers(siemens, "dwi")
    assert vendor.values == {"DiffusionBValue": 1000.0}
    assert vendor.where("DiffusionBValue") == "Siemens CSA image header B_value"
    conflicting = MetadataLayer("dicom", {"DiffusionBValue": 5.0}, origin="a standard tag")
    resolved = resolve_acquisition("dwi", [conflicting, vendor, standard], n_volumes=1)
    assert resolved.bvalues == [1000.0]
    assert resolved.provenance["bvalues"] == ("dicom-vendor", "Siemens CSA image header B_value")
    assert resolved.repetition_time == pytest.approx(6.6)
    assert resolved.provenance["repetition_time"][0] == "dicom"
    assert resolved.magnetic_field_strength == 3.0


def test_layers_speak_bids_names_and_resolution_is_json_ready():
    layers = [
        MetadataLayer("default", {"EchoTime": 0.1}, origin="site default"),
        MetadataLayer("sidecar", {"EchoTime": 0.02, "FlipAngle": 10}, origin="a.json"),
    ]
    resolved = resolve_acquisition("anat", layers)
    assert resolved.echo_time == 0.02
    assert resolved.to_dict()["echo_time"]["origin"] == "a.json"
    assert json.loads(json.dumps(resolved.to_dict())) == resolved.to_dict()
    with pytest.raises(ValueError, match="metadata level must be one of"):
        MetadataLayer("guess", {})


def test_cli_shows_values_units_and_sources(tmp_path, monkeypatch, capsys):
    import io

    from rich.console import Console

    from mriflow import cli

    path = _series(tmp_path, "x_dce", 3, DCE)
    output = io.StringIO()
    monkeypatch.setattr(cli, "console", Console(file=output, width=240, highlight=False))
    assert cli.main(["acquisition", str(path), "--modality", "dce"]) == 0
    shown = output.getvalue()
    for text in ("repetition_time", "0.005", "flip_angle", "15.0", "deg", "sidecar", "x_dce.json"):
        assert text in shown
    write_json(tmp_path / "x_dce.json", {"RepetitionTime": 4.0})
    assert cli.main(["acquisition", str(path), "-m", "dce"]) == 1
    assert "DCE needs FlipAngle" in " ".join(capsys.readouterr().err.split())
    assert cli.main(["acquisition", str(path), "-m", "pet"]) == 2


def test_a_dicom_reader_can_pass_per_volume_b_values():
    bare = mriflow.from_array(np.zeros((*SHAPE, 4), np.float32), AFFINE)
    layer = MetadataLayer("dicom", {"bValues": [0, 500, 1000, 1000]}, origin="DICOM series")
    dwi = attach_acquisition(bare, "dwi", dicom=[layer])
    assert dwi.dims == ("i", "j", "k", "volume")
    np.testing.assert_array_equal(dwi.mri.bvals, [0, 500, 1000, 1000])
    assert dwi.attrs["acquisition"]["bvalues"]["source"] == "dicom"
    assert dwi.attrs["acquisition"]["bvalues"]["origin"] == "DICOM series"
