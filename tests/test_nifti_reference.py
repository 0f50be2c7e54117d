"""open_image against nibabel on files nobody here wrote: data, dtype, affine and slicing."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
import xarray as xr

import mriflow
from mriflow.io.nifti import bytes_read

SHIPPED = [
    "example4d.nii.gz",
    "example_nifti2.nii.gz",
    "anatomical.nii",
    "functional.nii",
    "standard.nii.gz",
    "reoriented_anat_moved.nii",
    "resampled_anat_moved.nii",
]


@pytest.mark.parametrize("name", SHIPPED)
def test_data_dtype_and_affine_match_nibabel(nibabel_data, name):
    path = nibabel_data / name
    reference = nib.load(path)
    image = mriflow.open_image(path)
    assert image.shape == reference.shape
    assert image.dims[:3] == ("i", "j", "k")[: min(3, reference.ndim)]
    # same dtype as nibabel's dataobj, in native byte order
    assert image.dtype == np.asanyarray(reference.dataobj).dtype.newbyteorder("=")
    np.testing.assert_array_equal(image.values, reference.get_fdata())
    np.testing.assert_allclose(image.mri.affine, reference.affine, rtol=0, atol=1e-12)
    assert image.mri.orientation == nib.aff2axcodes(reference.affine)
    np.testing.assert_allclose(image.mri.spacing, reference.header.get_zooms()[:3], rtol=1e-5)


SLICES = [
    (slice(32, -32),),
    (slice(None, None, 2), slice(None, None, 3)),
    (slice(5, 60, 4), slice(10, None), slice(2, 20, 2)),
    (slice(120, 4, -3),),  # nibabel needs an explicit start for negative steps (see below)
    (slice(None), slice(90, None, -2), slice(None, None, 5)),
]


@pytest.mark.parametrize("index", SLICES)
def test_slicing_keeps_the_affine_of_nibabel_slicer(nibabel_data, index):
    path = nibabel_data / "example4d.nii.gz"
    reference = nib.load(path)
    view = mriflow.open_image(path)[index]
    expected = reference.slicer[index]
    np.testing.assert_allclose(view.mri.affine, expected.affine, atol=1e-9)
    np.testing.assert_array_equal(view.values, expected.get_fdata())


def test_negative_step_without_start_keeps_world_positions(nibabel_data):
    # nibabel's slicer.slice_affine takes start=0 for `::-k`, placing voxel 0 of the flipped
    # view at the world position of the original voxel 0 (it really is voxel n-1). We follow
    # the data instead: world positions of every voxel are unchanged by the flip.
    path = nibabel_data / "example4d.nii.gz"
    image = mriflow.open_image(path)
    flipped = image.isel(j=slice(None, None, -3))
    original_index = flipped.j.values
    world_view = flipped.mri.voxel_to_world(np.c_[[0, 0, 0], np.arange(3), [0, 0, 0]])
    world_orig = image.mri.voxel_to_world(np.c_[[0, 0, 0], original_index[:3], [0, 0, 0]])
    np.testing.assert_allclose(world_view, world_orig, atol=1e-9)


def test_volume_selection_and_transposition_keep_geometry(nibabel_data):
    path = nibabel_data / "example4d.nii.gz"
    reference = nib.load(path)
    image = mriflow.open_image(path)
    first = image.isel(t=1)
    assert first.dims == ("i", "j", "k")
    np.testing.assert_array_equal(first.values, reference.get_fdata()[..., 1])
    np.testing.assert_allclose(first.mri.affine, reference.affine)
    swapped = image.transpose("k", "t", "i", "j")
    assert swapped.mri.spatial_dims == ("k", "i", "j")
    expected = reference.affine[:, [2, 0, 1, 3]]
    np.testing.assert_allclose(swapped.mri.affine, expected)


def test_time_axis_in_seconds(nibabel_data, oblique_4d):
    path, _, _ = oblique_4d
    image = mriflow.open_image(path)
    assert image.dims == ("i", "j", "k", "t")
    np.testing.assert_allclose(image.t.values, np.arange(5) * 1.5)  # 1500 ms
    assert image.attrs["zooms"][3] == pytest.approx(1.5)


def test_scaling_applied_per_chunk_like_nibabel(oblique_4d):
    path, expected, affine = oblique_4d
    image = mriflow.open_image(path, chunks={"k": 3})
    assert image.chunks[2] == (3, 3, 3, 3, 2)
    assert image.dtype == np.float64  # nibabel's dataobj dtype for int16 with float scaling
    np.testing.assert_array_equal(image.values, expected)
    np.testing.assert_allclose(image.mri.affine, affine)
    assert image.encoding["dtype"] == np.int16
    assert image.encoding["scl_slope"] == 0.5


def test_pairs_and_analyze_written_by_nibabel(tmp_path):
    rng = np.random.default_rng(3)
    data = rng.integers(0, 200, size=(9, 8, 7), dtype=np.int16)
    affine = np.diag([2.0, 3.0, 4.0, 1.0])
    affine[:3, 3] = [-8, -10, 12]
    cases = {
        "pair.hdr": nib.Nifti1Pair(data, affine),
        "pair2.img": nib.Nifti2Pair(data, affine),
        "spm.hdr": nib.Spm99AnalyzeImage(data, affine),
        "plain.hdr": nib.AnalyzeImage(data, affine),
    }
    for name, img in cases.items():
        path = tmp_path / name
        nib.save(img, path)
        reference = nib.load(path)
        image = mriflow.open_image(path)
        np.testing.assert_array_equal(image.values, reference.get_fdata(), err_msg=name)
        np.testing.assert_allclose(image.mri.affine, reference.affine, err_msg=name)


def test_big_endian_nifti(tmp_path):
    data = np.arange(60, dtype=">f4").reshape(3, 4, 5)
    header = nib.Nifti1Header(endianness=">")
    img = nib.Nifti1Image(data, np.eye(4), header)
    nib.save(img, tmp_path / "be.nii")
    image = mriflow.open_image(tmp_path / "be.nii")
    assert image.dtype == np.dtype("<f4") or image.dtype.isnative
    np.testing.assert_array_equal(image.values, data.astype(np.float32))


def test_xarray_backend_entry_point(nibabel_data):
    path = nibabel_data / "example4d.nii.gz"
    through_xarray = xr.open_dataarray(path, engine="mriflow", chunks={"k": 8})
    direct = mriflow.open_image(path, chunks={"k": 8})
    xr.testing.assert_identical(through_xarray, direct)
    assert through_xarray.chunks == direct.chunks
    assert "mriflow" in xr.backends.list_engines()


def test_opening_reads_no_pixels(nibabel_data):
    path = nibabel_data / "functional.nii"
    before = bytes_read(path)
    image = mriflow.open_image(path)
    assert bytes_read(path) == before
    image.isel(t=0, k=0).compute()
    assert 0 < bytes_read(path) - before < image.nbytes / 4


def test_bids_sidecar_and_fsl_gradients_are_picked_up(tmp_path):
    paths = mriflow.data.write_dwi_phantom(tmp_path, shape=(10, 12, 8), n_directions=6)
    image = mriflow.open_image(paths["dwi"])
    assert image.dims == ("i", "j", "k", "volume")
    assert image.attrs["sidecar"]["RepetitionTime"] == 3.2
    np.testing.assert_allclose(image.mri.bvals, np.loadtxt(paths["bval"]))
    np.testing.assert_allclose(image.mri.bvecs("fsl"), np.loadtxt(paths["bvec"]).T, atol=1e-7)
    assert image.chunks is not None
    assert image.chunks[3] == (image.sizes["volume"],)  # volume axis whole per chunk


def test_label_kind_from_intent_and_name(tmp_path):
    paths = mriflow.data.write_dwi_phantom(tmp_path, shape=(10, 12, 8), n_directions=6)
    assert mriflow.open_image(paths["labels"]).attrs["kind"] == "label"  # label intent
    assert mriflow.open_image(paths["mask"]).attrs["kind"] == "label"  # *_mask, integer
    assert mriflow.open_image(paths["dwi"]).attrs["kind"] == "scalar"
    assert mriflow.open_image(paths["dwi"], kind="label").attrs["kind"] == "label"


def test_from_array_numpy_and_dask():
    import dask.array as da

    affine = np.diag([2.0, 2.0, 2.0, 1.0])
    data = np.arange(2 * 3 * 4 * 5, dtype=np.float32).reshape(2, 3, 4, 5)
    image = mriflow.from_array(data, affine)
    assert image.dims == ("i", "j", "k", "t")
    lazy = mriflow.open_image(da.from_array(data, chunks=2), affine=affine)
    assert lazy.chunks is not None
    np.testing.assert_array_equal(lazy.values, data)
    np.testing.assert_allclose(lazy.isel(i=slice(1, None)).mri.origin, [2.0, 0, 0])


def test_dipy_sample_with_nan_b0_directions_opens():
    """dipy's small_64D.bvec holds NaN as the direction of its b=0 volume."""
    from pathlib import Path

    import dipy

    files = Path(dipy.__file__).parent / "data" / "files"
    image = mriflow.open_image(files / "small_64D.nii")
    bvals = np.loadtxt(files / "small_64D.bval")
    raw = np.loadtxt(files / "small_64D.bvec")  # one row per volume in this file
    raw = raw if raw.shape == (bvals.size, 3) else raw.T
    assert np.isnan(raw[bvals == 0]).any()  # the sample really has them
    np.testing.assert_allclose(image.mri.bvals, bvals)
    assert np.all(image.mri.bvecs("fsl")[bvals == 0] == 0)
    np.testing.assert_allclose(image.mri.bvecs("fsl")[bvals > 0], raw[bvals > 0], atol=1e-6)
