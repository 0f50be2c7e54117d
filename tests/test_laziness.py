"""Opening reads headers only; a chunk of a .nii.gz is read without inflating the whole file."""

from __future__ import annotations

import pickle
import time

import nibabel as nib
import numpy as np
import pytest

import mriflow
from mriflow.io.nifti import _HANDLES, bytes_read


def sparse_nifti(path, shape, dtype=np.float32):
    """A real NIfTI file of any size: nibabel's header, then a sparse hole for the pixels."""
    header = nib.Nifti1Header()
    header.set_data_shape(shape)
    header.set_data_dtype(dtype)
    header.set_qform(np.diag([1.0, 1.0, 1.0, 1.0]), code=1)
    header.set_sform(np.diag([1.0, 1.0, 1.0, 1.0]), code=1)
    header.set_data_offset(header.single_vox_offset)
    with path.open("wb") as stream:
        header.write_to(stream)
        stream.truncate(header.single_vox_offset + int(np.prod(shape)) * np.dtype(dtype).itemsize)
    return path


def test_opening_a_multi_gigabyte_file_reads_no_pixels(tmp_path):
    path = sparse_nifti(tmp_path / "big.nii", (256, 256, 180, 64))  # 3.0 GB
    assert path.stat().st_size > 3e9
    mriflow.open_image(sparse_nifti(tmp_path / "small.nii", (2, 2, 2, 2)))  # warm the imports
    started = time.perf_counter()
    image = mriflow.open_image(path)
    elapsed = time.perf_counter() - started
    assert elapsed < 0.25, f"open took {elapsed:.3f} s"  # ~10 ms on an idle 2-core machine
    assert bytes_read(path) == 0
    assert image.nbytes > 3e9
    assert image.chunks[3] == (64,)  # whole time axis per chunk
    first_chunk = image.isel(k=slice(0, image.chunks[2][0]))
    assert float(first_chunk.mean()) == 0.0
    assert bytes_read(path) == first_chunk.nbytes  # that chunk and nothing else
    assert first_chunk.nbytes < image.nbytes / 10


def covered(layout) -> int:
    """How far into the uncompressed stream the gzip index of this process reaches."""
    points = _HANDLES.get(layout).file.seek_points()
    return max((int(u) for u, _ in points), default=0)


@pytest.fixture(scope="module")
def compressed_volume(tmp_path_factory):
    rng = np.random.default_rng(1)
    shape = (256, 256, 384)
    smooth = np.cumsum(rng.integers(-2, 3, size=shape, dtype=np.int16), axis=0, dtype=np.int16)
    path = tmp_path_factory.mktemp("gz") / "volume.nii.gz"
    nib.save(nib.Nifti1Image(smooth, np.eye(4)), path)
    return path, smooth


def test_one_chunk_of_a_gzip_file_inflates_only_what_it_needs(compressed_volume):
    path, data = compressed_volume
    image = mriflow.open_image(path, chunks={"k": 16})
    layout = image.encoding["token"][0]
    total = layout.offset + layout.nbytes
    _HANDLES.drop(layout)

    first = image.isel(k=slice(0, 16)).values
    np.testing.assert_array_equal(first, data[:, :, :16])
    assert covered(layout) < 0.25 * total  # the index only reaches as far as chunk 0

    _HANDLES.drop(layout)
    started = time.perf_counter()
    last_cold = image.isel(k=slice(368, 384)).values  # a fresh handle inflates up to it
    cold = time.perf_counter() - started
    assert covered(layout) > 0.8 * total
    started = time.perf_counter()
    again = image.isel(k=slice(368, 384)).values  # the index now jumps straight there
    warm = time.perf_counter() - started
    np.testing.assert_array_equal(last_cold, again)
    np.testing.assert_array_equal(again, data[:, :, 368:])
    assert warm < cold / 2, f"indexed read {warm:.3f} s vs cold {cold:.3f} s"


def test_images_pickle_for_distributed_workers(compressed_volume):
    path, data = compressed_volume
    image = mriflow.open_image(path, chunks={"k": 40})
    clone = pickle.loads(pickle.dumps(image))
    assert clone.name == image.name
    np.testing.assert_allclose(clone.mri.affine, image.mri.affine)
    assert float(clone.isel(k=slice(344, 384)).sum()) == float(data[:, :, 344:].sum())
    assert len(pickle.dumps(image)) < 20_000  # no pixels travel with the graph
