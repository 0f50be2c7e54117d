"""DICOM discovery and lazy loading, checked against nibabel's nicom and dcm2niix.

Inputs are real files: pydicom's and nibabel's shipped samples, and series written here with
pydicom (``mriflow.io.dicom.synthetic``) in each vendor's tag layout.
"""

from __future__ import annotations

import gzip
import logging
import pickle
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import dask
import nibabel as nib
import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file

import mriflow
from mriflow.errors import CorruptDataError, GeometryError, ImageFormatError, ImageHeaderError
from mriflow.io.dicom import DicomGeometryWarning
from mriflow.io.dicom import synthetic as syn
from mriflow.io.gradients import bvecs_to_world

NICOM_DATA = Path(nib.__file__).parent / "nicom" / "tests" / "data"
OBLIQUE = syn.oblique_orientation((15.0, -10.0, 20.0))


def _nicom_wrapper(path: Path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        from nibabel.nicom import dicomwrappers

    return dicomwrappers.wrapper_from_data(pydicom.dcmread(path))


def _dcm2niix(directory: Path, out: Path) -> nib.Nifti1Image:
    """Convert ``directory`` with the dcm2niix binary from the PyPI package (test-only)."""
    binary = shutil.which("dcm2niix", path=str(Path(sys.executable).parent)) or shutil.which(
        "dcm2niix"
    )
    assert binary is not None, "dcm2niix (PyPI package, test extra) is not installed"
    out.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        [binary, "-z", "n", "-b", "n", "-f", "converted", "-o", str(out), str(directory)],
        check=True,
        capture_output=True,
    )
    return nib.load(out / "converted.nii")


def _canonical(image) -> tuple[np.ndarray, np.ndarray]:
    """(data, affine) of an image reoriented to RAS+ by nibabel, for comparisons."""
    values = np.asarray(image.values if hasattr(image, "values") else image.get_fdata())
    affine = image.mri.affine if hasattr(image, "mri") else image.affine
    canonical = nib.as_closest_canonical(nib.Nifti1Image(values.astype(np.float64), affine))
    return np.asarray(canonical.dataobj).squeeze(), canonical.affine


def _copy(source: Path | str, directory: Path, name: str | None = None) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    target = directory / (name or Path(source).name.removesuffix(".gz"))
    if str(source).endswith(".gz"):
        target.write_bytes(gzip.decompress(Path(source).read_bytes()))
    else:
        shutil.copy(source, target)
    return target


# --- real files -------------------------------------------------------------------------------


def test_pydicom_mr_small_matches_nicom_and_dcm2niix(tmp_path):
    path = _copy(get_testdata_file("MR_small.dcm"), tmp_path / "series")
    (series,) = mriflow.discover_dicom(tmp_path / "series")
    assert (series.rows, series.columns, series.n_files) == (64, 64, 1)
    assert series.role_hint == "unknown"
    image = mriflow.load_dicom_series(series)
    assert image.dims == ("i", "j", "k")
    wrapper = _nicom_wrapper(path)
    np.testing.assert_array_equal(image.values[..., 0], wrapper.get_data())
    np.testing.assert_allclose(image.attrs["affine"], np.diag([-1, -1, 1, 1]) @ wrapper.affine)
    reference = _dcm2niix(tmp_path / "series", tmp_path / "nii")
    ours_data, ours_affine = _canonical(image)
    ref_data, ref_affine = _canonical(reference)
    np.testing.assert_array_equal(ours_data, ref_data)
    # one slice: the slice axis sign is a convention; compare the in-plane axes and origin
    np.testing.assert_allclose(ours_affine[:, [0, 1, 3]], ref_affine[:, [0, 1, 3]], atol=1e-4)
    acquisition = image.attrs["acquisition"]
    assert acquisition["RepetitionTime"] == pytest.approx(4.0)
    assert acquisition["EchoTime"] == pytest.approx(0.24)
    assert acquisition["FlipAngle"] == 90.0
    assert acquisition["Manufacturer"] == "TOSHIBA_MEC"
    assert "RepetitionTime" in acquisition["provenance"]
    header = pydicom.dcmread(path, stop_before_pixels=True)
    text = repr(image.attrs) + repr(image.encoding) + repr(series)
    for identity in (header.PatientName, header.PatientID):
        assert str(identity)
        assert str(identity) not in text


def test_truncated_file_in_a_series_is_an_error_naming_it(tmp_path):
    _copy(get_testdata_file("MR_small.dcm"), tmp_path)
    _copy(get_testdata_file("MR_truncated.dcm"), tmp_path)
    (series,) = mriflow.discover_dicom(tmp_path)
    with pytest.raises(
        CorruptDataError, match=r"MR_truncated\.dcm: pixel data is truncated"
    ) as err:
        mriflow.load_dicom_series(series)
    assert series.uid in str(err.value)


def test_non_dicom_and_non_image_files_are_skipped_with_reason(tmp_path, caplog):
    _copy(get_testdata_file("MR_small.dcm"), tmp_path)
    (tmp_path / "notes.txt").write_text("not an image")
    _copy(get_testdata_file("rtplan.dcm"), tmp_path)
    with caplog.at_level(logging.INFO, logger="mriflow.io.dicom.discover"):
        found = mriflow.discover_dicom(tmp_path)
    assert len(found) == 1
    messages = "\n".join(r.getMessage() for r in caplog.records)
    assert "notes.txt: skipped: not a DICOM file" in messages
    assert "rtplan.dcm: skipped: DICOM object without an image" in messages
    assert mriflow.open_image(tmp_path).shape == (64, 64, 1)


def test_siemens_mosaic_dwi_matches_nicom_and_dcm2niix(tmp_path):
    directory = tmp_path / "dwi"
    b0 = _copy(NICOM_DATA / "siemens_dwi_0.dcm.gz", directory)
    b1000 = _copy(NICOM_DATA / "siemens_dwi_1000.dcm.gz", directory)
    (series,) = mriflow.discover_dicom(directory)
    assert series.role_hint == "dwi"
    with dask.config.set(num_workers=1):  # one reader: blocks as large as the chunk size
        image = mriflow.open_image(directory)
    assert image.dims == ("i", "j", "k", "volume")
    assert image.shape == (128, 128, 48, 2)
    assert image.data.numblocks == (1, 1, 1, 1)  # both mosaics fit one block
    per_file = mriflow.open_image(directory, chunks="file")
    assert per_file.data.numblocks == (1, 1, 1, 2)  # one task per mosaic file
    np.testing.assert_array_equal(per_file.values, image.values)
    for index, path in enumerate((b0, b1000)):
        wrapper = _nicom_wrapper(path)
        np.testing.assert_array_equal(image.isel(volume=index).values, wrapper.get_data())
        np.testing.assert_allclose(image.attrs["affine"], np.diag([-1, -1, 1, 1]) @ wrapper.affine)
    reference = _dcm2niix(directory, tmp_path / "nii")
    ours_data, ours_affine = _canonical(image)
    ref_data, ref_affine = _canonical(reference)
    # dcm2niix's mosaic origin differs from nibabel's (and ours, equal to nibabel's to 1e-6)
    # by 3.3e-4 mm along y on this file
    np.testing.assert_allclose(ours_affine, ref_affine, atol=1e-3)
    np.testing.assert_array_equal(ours_data, ref_data)
    ref_bvals = np.loadtxt(tmp_path / "nii" / "converted.bval")
    ref_bvecs = np.loadtxt(tmp_path / "nii" / "converted.bvec").T
    np.testing.assert_allclose(image.mri.bvals, ref_bvals, atol=1e-3)
    ours_world = np.c_[image.bvec_x, image.bvec_y, image.bvec_z]
    np.testing.assert_allclose(ours_world, bvecs_to_world(ref_bvecs, reference.affine), atol=1e-3)


@pytest.mark.filterwarnings("ignore:Unable to find Philips private scale factor:UserWarning")
def test_philips_enhanced_multiframe_matches_nicom_and_dcm2niix(tmp_path):
    path = _copy(NICOM_DATA / "philips_mprage.dcm.gz", tmp_path / "mprage")
    (series,) = mriflow.discover_dicom(tmp_path / "mprage")
    assert series.n_frames == 176
    assert series.manufacturer.startswith("Philips")
    with dask.config.set(num_workers=1):
        image = mriflow.load_dicom_series(series)
    assert image.shape == (256, 256, 176)
    assert image.data.numblocks == (1, 1, 1)  # one frame group
    with dask.config.set(num_workers=4):  # four readers: four frame groups of 44 frames
        groups = mriflow.load_dicom_series(series)
    assert groups.data.chunks[2] == (44, 44, 44, 44)
    np.testing.assert_array_equal(groups.values, image.values)
    wrapper = _nicom_wrapper(path)
    np.testing.assert_allclose(image.values, wrapper.get_data(), rtol=1e-6)
    # nibabel scales the slice normal by SliceThickness, we take the step between the first
    # and last frame positions (as dcm2niix does): 8e-6 mm apart here
    np.testing.assert_allclose(
        image.attrs["affine"], np.diag([-1, -1, 1, 1]) @ wrapper.affine, atol=1e-5
    )
    reference = _dcm2niix(tmp_path / "mprage", tmp_path / "nii")
    _, ours_affine = _canonical(image)
    _, ref_affine = _canonical(reference)
    np.testing.assert_allclose(ours_affine, ref_affine, atol=1e-4)
    # this anonymised sample's pixels are all zero, so its data cannot test scaling: the
    # synthetic enhanced Philips series below checks FP = (PV*RS + RI)/(RS*SS) on real values
    assert image.attrs["acquisition"]["Manufacturer"].startswith("Philips")


# --- synthetic series: geometry, time, roles --------------------------------------------------


def test_oblique_shuffled_series_matches_written_geometry_and_dcm2niix(tmp_path):
    written = syn.write_series(
        tmp_path / "t1", shape=(20, 16, 7), orientation=OBLIQUE, rescale=(0.5, 3.0)
    )
    # names are shuffled: sorting by name does not give slice order
    with dask.config.set(num_workers=1):
        image = mriflow.open_image(tmp_path / "t1")
    assert image.dims == ("i", "j", "k")
    assert image.dtype == np.float32
    np.testing.assert_allclose(image.values, written.physical[..., 0])
    np.testing.assert_allclose(image.attrs["affine"], written.affine, atol=1e-5)
    assert image.data.numblocks == (1, 1, 1)  # the volume's 7 files fit one block
    per_file = mriflow.open_image(tmp_path / "t1", chunks="file")
    assert per_file.data.numblocks == (1, 1, 7)  # one task per file
    np.testing.assert_array_equal(per_file.values, image.values)
    reference = _dcm2niix(tmp_path / "t1", tmp_path / "nii")
    ours_data, ours_affine = _canonical(image)
    ref_data, ref_affine = _canonical(reference)
    np.testing.assert_allclose(ours_affine, ref_affine, atol=1e-4)
    np.testing.assert_allclose(ours_data, ref_data, rtol=1e-6, atol=1e-4)
    for path in written.files[:3]:  # each slice agrees with nibabel's single-file wrapper
        wrapper = _nicom_wrapper(path)
        k = round(float(np.linalg.solve(image.attrs["affine"], [*_ras_of(wrapper), 1])[2]))
        np.testing.assert_allclose(image.isel(k=k).values, wrapper.get_data())


def _ras_of(wrapper) -> np.ndarray:
    return (np.diag([-1, -1, 1, 1]) @ wrapper.affine)[:3, 3]


def test_dynamic_series_has_time_in_seconds_and_is_lazy(tmp_path):
    written = syn.write_series(
        tmp_path / "dyn", shape=(8, 6, 4), n_volumes=5, temporal_resolution=2.5
    )
    (series,) = mriflow.discover_dicom(tmp_path)
    assert series.role_hint == "dynamic"
    assert series.n_temporal_positions == 5
    with dask.config.set(num_workers=1):
        image = mriflow.load_dicom_series(series)
    assert image.dims == ("i", "j", "k", "t")
    np.testing.assert_allclose(image["t"].values, np.arange(5) * 2.5, atol=1e-3)
    assert image.data.numblocks == (1, 1, 1, 1)  # t whole, as many slices as fit
    with dask.config.set({"array.chunk-size": f"{8 * 6 * 4 * 5 * 2}B", "num_workers": 1}):
        slabs = mriflow.load_dicom_series(series)
    assert slabs.data.chunks[2:] == ((2, 2), (5,))  # two slices x 5 time points fit a block
    np.testing.assert_array_equal(slabs.values, written.stored)
    per_file = mriflow.load_dicom_series(series, chunks="file")
    assert per_file.data.numblocks == (1, 1, 4, 5)  # one task per file
    np.testing.assert_array_equal(image.isel(t=3, k=2).values, written.stored[:, :, 2, 3])
    restored = pickle.loads(pickle.dumps(image))
    np.testing.assert_array_equal(restored.values, written.stored)
    # pixels are read per file, at compute time: a file removed after loading only breaks
    # the blocks that need it, and the error names it
    victim = next(
        f
        for f in written.files
        if int(pydicom.dcmread(f, stop_before_pixels=True).TemporalPositionIdentifier) == 5
    )
    victim.unlink()
    np.testing.assert_array_equal(per_file.isel(t=0).values, written.stored[..., 0])
    with pytest.raises(CorruptDataError, match=victim.name):
        per_file.isel(t=4).values


def test_twist_like_frames_stack_in_time_by_tt_suffix(tmp_path):
    study = "1.2.826.0.1.3680043.8.498.1"
    written = []
    for index, tt in enumerate((12.5, 2.5, 7.5)):
        written.append(
            syn.write_series(
                tmp_path / f"frame{index}",
                shape=(6, 5, 3),
                description=f"fl3d_twist TT={tt}s",
                series_number=10 + index,
                study_uid=study,
                seed=index,
            )
        )
    found = mriflow.discover_dicom(tmp_path)
    frames = [s for s in found if s.role_hint == "dynamic_frame"]
    assert len(frames) == 3
    assert len({s.group_key for s in frames}) == 1
    assert "fl3d_twist" in frames[0].group_key
    assert sorted(s.trigger_time_hint for s in frames) == [2.5, 7.5, 12.5]
    image = mriflow.load_dicom_series(frames)
    assert image.dims == ("i", "j", "k", "t")
    np.testing.assert_allclose(image["t"].values, [2.5, 7.5, 12.5])
    for position, index in enumerate((1, 2, 0)):
        np.testing.assert_array_equal(image.isel(t=position).values, written[index].stored[..., 0])


def test_vfa_set_and_look_locker_roles(tmp_path):
    study = "1.2.826.0.1.3680043.8.498.2"
    for index, angle in enumerate((2.0, 10.0, 15.0)):
        syn.write_series(
            tmp_path / f"vfa{index}",
            shape=(6, 5, 3),
            flip_angle=angle,
            description=f"vfa_fa{angle:g}",
            series_number=index + 1,
            study_uid=study,
        )
    syn.write_series(
        tmp_path / "molli",
        shape=(6, 5, 1),
        n_volumes=3,
        description="MOLLI T1 map",
        series_number=9,
        study_uid=study,
    )
    found = {s.description: s for s in mriflow.discover_dicom(tmp_path)}
    vfa = [s for s in found.values() if s.role_hint == "vfa"]
    assert sorted(s.flip_angle for s in vfa) == [2.0, 10.0, 15.0]
    assert len({s.group_key for s in vfa}) == 1
    assert found["MOLLI T1 map"].role_hint == "t1_look_locker"


CORONAL = syn.oblique_orientation((80.0, 5.0, 8.0))
SAGITTAL = syn.oblique_orientation((5.0, 80.0, 8.0))


@pytest.mark.parametrize(
    ("vendor", "phase_encoding", "orientation"),
    [
        ("standard", "COL", OBLIQUE),
        ("siemens", "COL", OBLIQUE),
        ("philips", "COL", CORONAL),
        ("ge", "COL", OBLIQUE),
        ("ge", "ROW", OBLIQUE),
        ("ge", "COL", CORONAL),
        ("ge", "ROW", CORONAL),
        ("ge", "ROW", SAGITTAL),
    ],
)
def test_diffusion_tables_of_each_vendor_layout_match_dcm2niix(
    tmp_path, vendor, phase_encoding, orientation
):
    directions = np.array([[0, 0, 0], [1, 0, 0], [0, 0.6, 0.8], [0.48, 0.6, 0.64]])
    bvals = [0.0, 1000.0, 1000.0, 2000.0]
    written = syn.write_series(
        tmp_path / "dwi",
        shape=(6, 5, 3),
        n_volumes=4,
        vendor=vendor,
        bvals=bvals,
        bvecs_lps=directions,
        orientation=orientation,
        phase_encoding=phase_encoding,
    )
    (series,) = mriflow.discover_dicom(tmp_path / "dwi")
    assert series.role_hint == "dwi"
    image = mriflow.load_dicom_series(series)
    assert image.dims == ("i", "j", "k", "volume")
    np.testing.assert_allclose(image.mri.bvals, bvals)
    world = np.c_[image.bvec_x, image.bvec_y, image.bvec_z]
    np.testing.assert_allclose(world, directions * [-1, -1, 1], atol=1e-5)
    # FSL bvecs: the world directions expressed in this image's voxel frame
    fsl = image.mri.bvecs("fsl")
    np.testing.assert_allclose(bvecs_to_world(fsl, image.mri.affine), world, atol=1e-5)
    np.testing.assert_array_equal(image.values, written.stored)
    reference = _dcm2niix(tmp_path / "dwi", tmp_path / "nii")
    np.testing.assert_allclose(np.loadtxt(tmp_path / "nii" / "converted.bval"), bvals, atol=1e-3)
    ref_world = bvecs_to_world(np.loadtxt(tmp_path / "nii" / "converted.bvec").T, reference.affine)
    # a gradient direction and its opposite are the same measurement
    signs = np.sign(np.sum(ref_world * world, axis=1, keepdims=True)) + (world == 0).all(1)[:, None]
    np.testing.assert_allclose(ref_world * signs, world, atol=1e-3)


def test_siemens_mosaic_synthetic_unpacks_like_nicom(tmp_path):
    written = syn.write_mosaic_series(tmp_path, shape=(6, 8, 7), orientation=OBLIQUE)
    image = mriflow.open_image(tmp_path)
    np.testing.assert_array_equal(image.values, written.stored)
    np.testing.assert_allclose(image.attrs["affine"], written.affine, atol=1e-5)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        from nibabel.nicom import dicomwrappers

    wrapper = dicomwrappers.MosaicWrapper(pydicom.dcmread(written.files[1]), None, 7)
    np.testing.assert_array_equal(image.isel(volume=1).values, wrapper.get_data())
    np.testing.assert_allclose(
        image.attrs["affine"], np.diag([-1, -1, 1, 1]) @ wrapper.affine, atol=1e-5
    )
    np.testing.assert_allclose(image.mri.bvals, [0, 1000])


def test_enhanced_philips_scaling_uses_the_full_formula(tmp_path):
    slope, intercept, scale = 2.5, -100.0, 0.4
    written = syn.write_enhanced_series(
        tmp_path / "enh" / "multi.dcm", orientation=OBLIQUE, philips=(slope, intercept, scale)
    )
    with dask.config.set(num_workers=1):
        image = mriflow.open_image(tmp_path / "enh")
    assert image.dims == ("i", "j", "k", "t")
    assert image.data.numblocks == (1, 1, 1, 1)  # one frame group
    per_file = mriflow.open_image(tmp_path / "enh", chunks="file")
    assert per_file.data.numblocks == (1, 1, 1, 3)  # one frame group per time point
    np.testing.assert_array_equal(per_file.values, image.values)
    np.testing.assert_allclose(image["t"].values, [0.0, 4.0, 8.0])
    np.testing.assert_allclose(image.attrs["affine"], written.affine, atol=1e-5)
    expected = (written.stored * slope + intercept) / (slope * scale)
    np.testing.assert_allclose(image.values, expected, rtol=1e-6)
    simplified = written.stored / scale  # only right when RS = 1 and RI = 0
    assert not np.allclose(image.values, simplified)
    # dcm2niix does not look for ScaleSlope inside the per-frame private sequence (2005,140F),
    # so here it writes display values DV = PV*RS + RI, i.e. FP * RS * SS
    reference = _dcm2niix(tmp_path / "enh", tmp_path / "nii")
    ours_data, ours_affine = _canonical(image)
    ref_data, ref_affine = _canonical(reference)
    np.testing.assert_allclose(ours_affine, ref_affine, atol=1e-4)
    np.testing.assert_allclose(ours_data * slope * scale, ref_data, rtol=1e-5, atol=1e-3)


# --- bad input --------------------------------------------------------------------------------


def _series_files(tmp_path, **kwargs) -> syn.WrittenSeries:
    return syn.write_series(tmp_path / "s", shape=(6, 5, 6), **kwargs)


def _by_slice(written: syn.WrittenSeries) -> list[Path]:
    """Files in slice order (positions ascending along the normal)."""
    datasets = [(pydicom.dcmread(f, stop_before_pixels=True), f) for f in written.files]
    return [f for d, f in sorted(datasets, key=lambda p: float(p[0].ImagePositionPatient[2]))]


def test_missing_slice_is_a_geometry_error(tmp_path):
    written = _series_files(tmp_path)
    gone = _by_slice(written)[3]
    gone.unlink()
    with pytest.raises(GeometryError, match="missing slice"):
        mriflow.open_image(tmp_path / "s")


def test_inconsistent_spacing_is_a_geometry_error(tmp_path):
    written = _series_files(tmp_path)
    path = _by_slice(written)[-1]
    ds = pydicom.dcmread(path)
    ds.ImagePositionPatient[2] = float(ds.ImagePositionPatient[2]) - 0.5
    ds.save_as(path)
    with pytest.raises(GeometryError, match=f"inconsistent slice spacing.*{path.name}"):
        mriflow.open_image(tmp_path / "s")


def test_mixed_orientation_and_matrix_size_are_errors(tmp_path):
    written = _series_files(tmp_path)
    path = written.files[0]
    ds = pydicom.dcmread(path)
    ds.ImageOrientationPatient = list(OBLIQUE)
    ds.save_as(path)
    with pytest.raises(GeometryError, match=f"mixed slice orientations.*{path.name}"):
        mriflow.open_image(tmp_path / "s")
    other = syn.write_series(tmp_path / "t", shape=(6, 4, 2), series_uid=written.series_uid)
    shutil.copy(other.files[0], tmp_path / "s" / "other.dcm")
    shutil.copy(written.files[1], path)
    with pytest.raises(ImageHeaderError, match=f"{written.series_uid}: mixed matrix sizes"):
        mriflow.open_image(tmp_path / "s")


def test_a_duplicate_file_warns_and_is_dropped(tmp_path):
    written = _series_files(tmp_path)
    shutil.copy(written.files[2], tmp_path / "s" / "copy_of_one.dcm")
    with pytest.warns(DicomGeometryWarning, match="copy_of_one.dcm|IM"):
        image = mriflow.open_image(tmp_path / "s")
    np.testing.assert_array_equal(image.values, written.stored[..., 0])


def test_duplicate_position_with_other_timing_is_an_error(tmp_path):
    written = _series_files(tmp_path)
    ds = pydicom.dcmread(written.files[2])
    ds.AcquisitionTime = "235959.000000"
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = "1.2.3.4.5"
    ds.save_as(tmp_path / "s" / "extra.dcm")
    with pytest.raises(GeometryError, match="2 image\\(s\\) at slice position"):
        mriflow.open_image(tmp_path / "s")


def test_file_without_pixel_data_is_a_corrupt_data_error(tmp_path):
    written = _series_files(tmp_path)
    ds = pydicom.dcmread(written.files[1])
    del ds.PixelData
    ds.save_as(written.files[1])
    with pytest.raises(CorruptDataError, match=f"{written.files[1].name}: has no pixel data"):
        mriflow.open_image(tmp_path / "s")


def test_truncated_synthetic_file_is_caught_before_reading_pixels(tmp_path):
    written = _series_files(tmp_path)
    data = written.files[4].read_bytes()
    written.files[4].write_bytes(data[:-10])
    (series,) = mriflow.discover_dicom(tmp_path / "s")
    with pytest.raises(CorruptDataError, match="truncated"):
        mriflow.load_dicom_series(series)


def test_open_image_needs_exactly_one_series(tmp_path):
    with pytest.raises(ImageFormatError, match="no DICOM image series"):
        mriflow.open_image(tmp_path)
    syn.write_series(tmp_path / "a", shape=(4, 4, 2), series_number=1, description="a")
    syn.write_series(tmp_path / "b", shape=(4, 4, 2), series_number=2, description="b")
    with pytest.raises(ImageFormatError, match="holds 2 DICOM series"):
        mriflow.open_image(tmp_path)
    assert mriflow.open_image(tmp_path / "a").shape == (4, 4, 2)


def test_cli_lists_series_and_describes_a_series_folder(tmp_path):
    from typer.testing import CliRunner

    from mriflow.cli import app

    syn.write_series(tmp_path / "a", shape=(4, 4, 2), description="[b]bold? no", n_volumes=2)
    syn.write_series(tmp_path / "b", shape=(4, 4, 2), series_number=2, description="vfa")
    runner = CliRunner()
    listing = runner.invoke(app, ["dicom", str(tmp_path)])
    assert listing.exit_code == 0, listing.output
    assert "2 DICOM series" in listing.output
    assert "[b]bold? no" in listing.output
    assert "dynamic" in listing.output
    info = runner.invoke(app, ["info", str(tmp_path / "a")])
    assert info.exit_code == 0, info.output
    assert "t=2" in info.output
    several = runner.invoke(app, ["info", str(tmp_path)])
    assert several.exit_code == 1
    assert "holds 2 DICOM series" in " ".join(several.output.split())


@pytest.mark.filterwarnings("ignore:The pixel data is .* excess padding:UserWarning")
@pytest.mark.parametrize(
    "name",
    [
        "MR_small_implicit.dcm",
        "MR_small_bigendian.dcm",
        "MR_small_expb.dcm",
        "MR_small_RLE.dcm",
        "MR_small_padded.dcm",
    ],
)
def test_transfer_syntaxes_of_mr_small_load_the_same_image(tmp_path, name):
    reference = mriflow.open_image(
        _copy(get_testdata_file("MR_small.dcm"), tmp_path / "ref").parent
    )
    image = mriflow.open_image(_copy(get_testdata_file(name), tmp_path / "variant").parent)
    np.testing.assert_array_equal(image.values, reference.values)
    np.testing.assert_allclose(image.attrs["affine"], reference.attrs["affine"])


def test_compressed_pixels_without_a_decoder_fail_at_load_not_in_a_task(tmp_path):
    from pydicom.pixels import get_decoder

    directory = _copy(get_testdata_file("MR_small_jpeg_ls_lossless.dcm"), tmp_path / "s").parent
    reference = mriflow.open_image(_copy(get_testdata_file("MR_small.dcm"), tmp_path / "r").parent)
    if get_decoder("1.2.840.10008.1.2.4.80").is_available:  # a JPEG-LS plugin is installed
        np.testing.assert_array_equal(mriflow.open_image(directory).values, reference.values)
    else:
        with pytest.raises(ImageFormatError, match="no installed pydicom decoder"):
            mriflow.open_image(directory)


def test_enhanced_diffusion_reads_per_frame_mr_diffusion_sequence(tmp_path):
    directions = np.array([[0, 0, 0], [0.0, 0.8, 0.6], [1.0, 0.0, 0.0]])
    written = syn.write_enhanced_series(
        tmp_path / "dwi" / "enhanced.dcm",
        orientation=OBLIQUE,
        philips=None,
        bvals=[0.0, 1000.0, 3000.0],
        bvecs_lps=directions,
    )
    (series,) = mriflow.discover_dicom(tmp_path / "dwi")
    assert series.role_hint == "dwi"
    image = mriflow.load_dicom_series(series)
    assert image.dims == ("i", "j", "k", "volume")
    np.testing.assert_allclose(image.mri.bvals, [0, 1000, 3000])
    world = np.c_[image.bvec_x, image.bvec_y, image.bvec_z]
    np.testing.assert_allclose(world, directions * [-1, -1, 1], atol=1e-6)
    np.testing.assert_array_equal(image.values, written.stored)
    np.testing.assert_allclose(image.attrs["affine"], written.affine, atol=1e-5)


@pytest.mark.parametrize("signed", [False, True])
def test_unused_high_bits_are_ignored_like_pydicom(tmp_path, signed):
    written = syn.write_series(tmp_path / "s", shape=(6, 5, 3))
    rng = np.random.default_rng(3)
    expected = {}
    for path in written.files:
        ds = pydicom.dcmread(path)
        ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 12, 11, int(signed)
        values = rng.integers(0, 2**16, size=(6, 5), dtype=np.uint16)  # garbage in bits 12-15
        ds.PixelData = values.astype(np.int16 if signed else np.uint16).tobytes()
        ds.save_as(path)
        decoded = pydicom.dcmread(path).pixel_array
        assert decoded.dtype == (np.int16 if signed else np.uint16)
        expected[float(ds.ImagePositionPatient[2])] = decoded
    image = mriflow.open_image(tmp_path / "s")
    # axial IOP: the slice normal (column x row direction cosines) points to -z (inferior)
    stacked = np.stack([expected[z] for z in sorted(expected, reverse=True)], axis=-1)
    np.testing.assert_array_equal(image.values, stacked)
    assert image.dtype == stacked.dtype
    assert stacked.min() < 0 if signed else stacked.max() < 2**12


def test_in_plane_shifted_slice_is_a_geometry_error(tmp_path):
    written = _series_files(tmp_path)
    path = _by_slice(written)[2]
    ds = pydicom.dcmread(path)
    ds.ImagePositionPatient[0] = float(ds.ImagePositionPatient[0]) + 3.0
    ds.save_as(path)
    with pytest.raises(GeometryError, match=f"do not lie on one line.*{path.name}"):
        mriflow.open_image(tmp_path / "s")


def test_a_single_diffusion_volume_keeps_its_volume_axis(tmp_path):
    syn.write_series(
        tmp_path,
        shape=(4, 4, 3),
        vendor="standard",
        bvals=[1000.0],
        bvecs_lps=np.array([[0.0, 0.0, 1.0]]),
    )
    image = mriflow.open_image(tmp_path)
    assert image.dims == ("i", "j", "k", "volume")
    np.testing.assert_allclose(image.mri.bvals, [1000.0])


def test_parallel_discovery_finds_the_same_series(tmp_path):
    for index in range(3):
        syn.write_series(
            tmp_path / f"s{index}", shape=(4, 4, 3), n_volumes=2, series_number=index + 1
        )
    (tmp_path / "junk.bin").write_bytes(b"\x00" * 300)
    serial = mriflow.discover_dicom(tmp_path, workers=1)
    parallel = mriflow.discover_dicom(tmp_path, workers=2)
    assert [s.uid for s in serial] == [s.uid for s in parallel]
    assert [s.records for s in serial] == [s.records for s in parallel]
    assert [s.n_files for s in serial] == [6, 6, 6]
    single = mriflow.discover_dicom(serial[0].files[0])  # a single file works too
    assert single[0].n_files == 1


def test_a_dicom_series_computes_on_a_local_cluster(tmp_path):
    from mriflow.cluster import get_client

    directions = np.array([[0, 0, 0], [1, 0, 0], [0, 0.6, 0.8]])
    written = syn.write_series(
        tmp_path,
        shape=(6, 5, 4),
        n_volumes=3,
        vendor="ge",
        bvals=[0, 1000, 1000],
        bvecs_lps=directions,
        rescale=(0.5, 1.0),
    )
    image = mriflow.open_image(tmp_path, chunks="file")
    client = get_client(n_workers=2, threads_per_worker=1)
    try:
        mean = client.compute(image.mean("volume")).result()
    finally:
        client.close()
        client.cluster.close()
    np.testing.assert_allclose(mean.values, written.physical.mean(axis=-1), rtol=1e-6)


def test_classic_philips_scaling_matches_formula_and_dcm2niix(tmp_path):
    slope, intercept, scale = 1.75, -12.0, 0.025
    written = syn.write_series(
        tmp_path / "s",
        shape=(8, 6, 4),
        vendor="philips",
        rescale=(slope, intercept),
        philips_scale=scale,
        orientation=CORONAL,
    )
    image = mriflow.open_image(tmp_path / "s")
    expected = (written.stored[..., 0] * slope + intercept) / (slope * scale)
    np.testing.assert_allclose(image.values, expected, rtol=1e-6)
    # dcm2niix's default Philips scaling is the same precise floating-point value
    reference = _dcm2niix(tmp_path / "s", tmp_path / "nii")
    ours_data, ours_affine = _canonical(image)
    ref_data, ref_affine = _canonical(reference)
    np.testing.assert_allclose(ours_affine, ref_affine, atol=1e-4)
    np.testing.assert_allclose(ours_data, ref_data, rtol=1e-5)
