"""to_nifti: exact round trips, views written with their own affine, nothing half-written."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest

import mriflow
from mriflow.errors import ImageFormatError


@pytest.mark.parametrize("suffix", [".nii", ".nii.gz"])
def test_round_trip_is_exact_with_dtype_and_scaling(tmp_path, oblique_4d, suffix):
    path, expected, affine = oblique_4d
    image = mriflow.open_image(path, chunks={"k": 4})
    out = image.mri.to_nifti(tmp_path / f"copy{suffix}")
    written = nib.load(out)
    source = nib.load(path)
    assert written.get_data_dtype() == np.int16
    assert written.header.get_slope_inter() == source.header.get_slope_inter()
    np.testing.assert_array_equal(np.asanyarray(written.dataobj), np.asanyarray(source.dataobj))
    np.testing.assert_array_equal(written.get_fdata(), expected)
    np.testing.assert_allclose(written.affine, affine, atol=1e-6)
    np.testing.assert_allclose(written.header.get_zooms()[3], 1.5)  # seconds now
    again = mriflow.open_image(out)
    np.testing.assert_array_equal(again.t.values, image.t.values)
    assert not list(tmp_path.glob("*.partial"))


@pytest.mark.parametrize("name", ["example4d.nii.gz", "example_nifti2.nii.gz", "anatomical.nii"])
def test_round_trip_of_shipped_files(tmp_path, nibabel_data, name):
    source = nib.load(nibabel_data / name)
    out = mriflow.open_image(nibabel_data / name).mri.to_nifti(tmp_path / "out.nii.gz")
    written = nib.load(out)
    np.testing.assert_array_equal(written.get_fdata(), source.get_fdata())
    np.testing.assert_allclose(written.affine, source.affine, atol=1e-5)
    assert written.get_data_dtype() == source.get_data_dtype().newbyteorder("=")


def test_views_are_written_where_they_are(tmp_path, oblique_4d):
    path, _, _ = oblique_4d
    image = mriflow.open_image(path)
    views = {
        "crop": image.isel(i=slice(3, -2), k=slice(1, None, 2)),
        "flip": image.isel(j=slice(None, None, -1)),
        "ras": image.mri.reorient("RAS"),
        "transposed": image.transpose("k", "i", "t", "j"),
        "volume": image.isel(t=2),
    }
    for name, view in views.items():
        out = view.mri.to_nifti(tmp_path / f"{name}.nii")
        written = nib.load(out)
        spatial = view.transpose(*view.mri.spatial_dims, ...)
        np.testing.assert_allclose(written.get_fdata(), spatial.values, err_msg=name)
        # the world position of written voxel (1, 2, 0) is that of the same voxel in the view
        np.testing.assert_allclose(
            written.affine @ [1, 2, 0, 1], [*view.mri.voxel_to_world([1, 2, 0]), 1], atol=1e-4
        )


def test_gradients_written_in_the_frame_of_the_written_array(tmp_path):
    paths = mriflow.data.write_dwi_phantom(tmp_path / "in", shape=(8, 9, 7), n_directions=6)
    image = mriflow.open_image(paths["dwi"])
    out = image.mri.reorient("RAS").mri.to_nifti(tmp_path / "ras_dwi.nii.gz")
    bvecs = np.loadtxt(tmp_path / "ras_dwi.bvec")
    np.testing.assert_allclose(np.loadtxt(tmp_path / "ras_dwi.bval"), image.mri.bvals)
    # RAS storage has a positive determinant: FSL's x sign flips once for the storage flip
    # and once for the convention, so the stored values equal the original ones.
    np.testing.assert_allclose(bvecs.T, image.mri.bvecs("fsl"), atol=1e-7)
    reopened = mriflow.open_image(out)
    np.testing.assert_allclose(reopened.mri.bvecs("ras"), image.mri.bvecs("ras"), atol=1e-7)
    assert reopened.attrs["sidecar"] == image.attrs["sidecar"]


def test_computed_float_maps_and_labels(tmp_path):
    affine = np.diag([1.5, 1.5, 3.0, 1.0])
    labels = mriflow.from_array(np.arange(24).reshape(2, 3, 4) % 3, affine, kind="label")
    out = labels.astype(np.uint8).mri.to_nifti(tmp_path / "labels.nii.gz")
    assert mriflow.open_image(out).attrs["kind"] == "label"
    mask = mriflow.from_array(np.ones((2, 3, 4), bool), affine)
    assert nib.load(mask.mri.to_nifti(tmp_path / "mask.nii")).get_data_dtype() == np.uint8
    halves = mriflow.from_array(np.full((2, 3, 4), 0.5, np.float32), affine) * 3
    np.testing.assert_array_equal(
        nib.load(halves.mri.to_nifti(tmp_path / "f.nii")).get_fdata(), 1.5
    )


def test_no_half_written_file_when_the_computation_fails(tmp_path, oblique_4d):
    path, _, _ = oblique_4d
    target = tmp_path / "out.nii.gz"
    target.write_bytes(b"previous result")
    image = mriflow.open_image(path, chunks={"k": 2})

    def explode(block):
        if block.shape[2] and block[0, 0, 0, 0] > -1e9:
            raise RuntimeError("worker died")
        return block

    broken = image.copy(data=image.data.map_blocks(explode, dtype=image.dtype))
    with pytest.raises(RuntimeError, match="worker died"):
        broken.mri.to_nifti(target)
    assert target.read_bytes() == b"previous result"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["oblique_bold.nii.gz", "out.nii.gz"]


def test_refuses_other_formats(tmp_path):
    image = mriflow.from_array(np.zeros((2, 2, 2)), np.eye(4))
    with pytest.raises(ImageFormatError, match=r"out\.mgz"):
        image.mri.to_nifti(tmp_path / "out.mgz")


def test_gzip_output_names_no_file_and_no_time(tmp_path):
    image = mriflow.from_array(np.zeros((3, 3, 3), np.float32), np.eye(4))
    raw = image.mri.to_nifti(tmp_path / "secret_patient_name.nii.gz").read_bytes()
    assert raw[3] & 0x08 == 0  # no FNAME field
    assert raw[4:8] == b"\0\0\0\0"  # mtime 0: the same bytes every run
    assert b"secret" not in raw
