"""Interop with the NIfTI-Zarr reference implementation (``nifti-zarr`` on PyPI, ``niizarr``)."""

from __future__ import annotations

import io
from pathlib import Path

import nibabel as nib
import niizarr
import numpy as np
import pytest
import zarr

import mriflow
from mriflow.data import write_dwi_phantom

NIBABEL_DATA = Path(nib.__file__).parent / "tests" / "data"


@pytest.fixture(scope="module")
def phantom(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return write_dwi_phantom(tmp_path_factory.mktemp("phantom"), shape=(20, 24, 18), n_directions=6)


def _store_header(store: Path) -> nib.Nifti1Header:
    raw = bytes(np.asarray(zarr.open_group(store, mode="r")["nifti"][:]))
    return nib.Nifti1Header.from_fileobj(io.BytesIO(raw), check=False)


@pytest.mark.parametrize("zarr_version", [3, 2])
@pytest.mark.parametrize("sample", ["example4d.nii.gz", "functional.nii", "anatomical.nii"])
def test_we_read_what_niizarr_writes(sample: str, zarr_version: int, tmp_path: Path) -> None:
    source = NIBABEL_DATA / sample
    store = tmp_path / "ref.nii.zarr"
    niizarr.nii2zarr(str(source), str(store), chunk=16, nb_levels=1, zarr_version=zarr_version)
    image = mriflow.open_zarr(store)
    expected = mriflow.open_image(source)
    assert image.dims[:3] == ("i", "j", "k")
    assert image.shape == expected.shape
    np.testing.assert_array_equal(image.values, expected.values)
    np.testing.assert_array_equal(image.mri.affine, nib.load(source).affine)
    assert image.attrs["source"]["format"] == "nifti-zarr"


def test_we_read_niizarr_pyramid_levels(phantom: dict[str, Path], tmp_path: Path) -> None:
    store = tmp_path / "ref.nii.zarr"
    niizarr.nii2zarr(str(phantom["dwi"]), str(store), chunk=8, nb_levels=2)
    level1 = mriflow.open_zarr(store, level=1)
    reference = niizarr.zarr2nii(str(store), level=1)
    assert level1.shape == reference.shape
    np.testing.assert_allclose(level1.mri.affine, reference.header.get_best_affine(), atol=1e-4)


@pytest.mark.parametrize("sample", ["example4d.nii.gz", "functional.nii", "anatomical.nii"])
def test_niizarr_reads_what_we_write(sample: str, tmp_path: Path) -> None:
    source = NIBABEL_DATA / sample
    store = tmp_path / "ours.zarr"
    mriflow.convert(source, store, chunks="16,16,16")
    original = nib.load(source)
    reference = niizarr.zarr2nii(str(store))
    assert reference.shape == original.shape
    raw = np.asarray(reference.dataobj)
    np.testing.assert_array_equal(raw, np.asarray(original.dataobj.get_unscaled()))
    np.testing.assert_array_equal(reference.header.get_best_affine(), original.affine)
    header = _store_header(store)
    slope, inter = header.get_slope_inter()
    scaled = raw * (slope if slope is not None else 1.0) + (inter or 0.0)
    np.testing.assert_allclose(scaled, original.get_fdata(), rtol=1e-6)
    # and niizarr's NIfTI export of our store opens as the same image
    out = tmp_path / "via-niizarr.nii.gz"
    niizarr.zarr2nii(str(store), str(out))
    np.testing.assert_array_equal(nib.load(out).get_fdata(), np.asarray(raw, dtype=np.float64))


def test_niizarr_reads_our_oblique_dwi_and_pyramid(phantom: dict[str, Path], tmp_path: Path):
    store = tmp_path / "dwi.zarr"
    image = mriflow.open_image(phantom["dwi"])
    mriflow.to_zarr(image, store, levels=2, chunks="8,8,8")
    for level in (0, 1):
        ours = mriflow.open_zarr(store, level=level)
        reference = niizarr.zarr2nii(str(store), level=level)
        assert reference.shape == ours.shape
        np.testing.assert_allclose(reference.header.get_best_affine(), ours.mri.affine, atol=1e-5)
        slope = _store_header(store).get_slope_inter()[0]
        np.testing.assert_allclose(np.asarray(reference.dataobj) * slope, ours.values, rtol=1e-6)


def test_niizarr_channel_axis_opens_as_channel(tmp_path: Path) -> None:
    source = NIBABEL_DATA / "example4d.nii.gz"
    store = tmp_path / "channels.nii.zarr"
    niizarr.nii2zarr(str(source), str(store), chunk=16, nb_levels=1, no_time=True)
    image = mriflow.open_zarr(store)
    assert image.dims == ("i", "j", "k", "channel")
    np.testing.assert_array_equal(image.values, np.asarray(nib.load(source).dataobj))
