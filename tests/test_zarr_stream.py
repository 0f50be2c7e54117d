"""The streaming ``.nii.gz`` -> sharded zarr v3 converter (inner chunks compressed while
the gzip stream is still being inflated): same bytes as zarr's own sharded writer, readable
by niizarr, resumable after SIGKILL, and clear errors on a damaged stream."""

from __future__ import annotations

import gzip
import signal
import subprocess
import sys
import time
from pathlib import Path

import nibabel as nib
import niizarr
import numpy as np
import pytest
import zarr

import mriflow
from mriflow.cli import main
from mriflow.data import oblique_affine

CONVERT = [sys.executable, "-c", "from mriflow.cli import run; run()", "convert"]
# 32 x 32 x 8 int16 blocks (16 KiB a volume): inner chunks of 32 volumes
CHUNKS = "32,32,8"


def _write_dwi(path: Path, shape: tuple[int, int, int, int], seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    data = rng.integers(0, 3000, size=shape, dtype=np.int16)
    data[:32, :32, :8] = 0  # one spatial block all zeros: a shard with no inner chunk
    data[32:, :, 8:16, : shape[3] * 4 // 5] = 0  # inner chunks equal to the fill value
    image = nib.Nifti1Image(data, oblique_affine((2.0, 2.0, 2.0), shape))
    image.header.set_slope_inter(0.5, 10.0)
    nib.save(image, path)
    return data


def _store_files(store: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(store)): p.read_bytes() for p in (store / "0").rglob("*") if p.is_file()
    }


@pytest.fixture(scope="module")
def dwi(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, np.ndarray]:
    """Odd-sized 4D int16 .nii.gz: edge blocks on x, y and z, 41 volumes (1.3 inner chunks)."""
    path = tmp_path_factory.mktemp("stream") / "sub-01_dwi.nii.gz"
    return path, _write_dwi(path, (70, 45, 21, 41), seed=3)


def test_streamed_shards_are_what_zarr_writes(dwi: tuple[Path, np.ndarray], tmp_path: Path):
    path, data = dwi
    streamed = tmp_path / "streamed.zarr"
    mriflow.convert(path, streamed, chunks=CHUNKS)
    array = zarr.open_array(streamed / "0", mode="r")
    assert array.shards == (64, 8, 32, 32)
    assert array.chunks == (32, 8, 32, 32)
    # zarr's own sharding codec writing the same image (through dask, whole shards)
    written = tmp_path / "zarr-written.zarr"
    mriflow.to_zarr(mriflow.open_image(path), written, chunks=CHUNKS)
    ours, theirs = _store_files(streamed), _store_files(written)
    assert "0/c/0/0/0/0" not in ours  # the all-zero block: no shard file at all
    # shard index (offset, nbytes per inner chunk, then CRC32C): first inner chunk not stored
    index = np.frombuffer(ours["0/c/0/1/0/1"][-36:-4], dtype="<u8").reshape(2, 2)
    assert (index[0] == 2**64 - 1).all()
    assert index[1, 0] == 0
    assert index[1, 1] > 0
    assert set(ours) == set(theirs)
    for name in ours:
        assert ours[name] == theirs[name], name
    np.testing.assert_array_equal(np.asarray(array[:]).transpose(3, 2, 1, 0), data)
    assert not list(streamed.rglob("*.partial"))
    back = mriflow.open_zarr(streamed)
    assert back.data.chunks[3] == (41,)  # a dask block is a whole shard: every volume
    np.testing.assert_array_equal(back.values, mriflow.open_image(path).values)
    # the NIfTI-Zarr reference reads the sharded store
    reference = niizarr.zarr2nii(str(streamed))
    np.testing.assert_array_equal(np.asarray(reference.dataobj), data)
    np.testing.assert_array_equal(reference.header.get_best_affine(), nib.load(path).affine)


def test_streams_into_an_fsspec_store(dwi: tuple[Path, np.ndarray], tmp_path: Path) -> None:
    path, data = dwi
    local = tmp_path / "local.zarr"
    mriflow.convert(path, local, chunks=CHUNKS)
    name = mriflow.convert(path, "memory://conv2/streamed.zarr", chunks=CHUNKS)
    back = mriflow.open_zarr(name)
    np.testing.assert_array_equal(back.values, mriflow.open_zarr(local).values)
    array = zarr.open_array("memory://conv2/streamed.zarr/0", mode="r")
    assert array.shards == (64, 8, 32, 32)
    np.testing.assert_array_equal(np.asarray(array[:]).transpose(3, 2, 1, 0), data)


def test_stream_killed_midway_resumes_to_the_same_store(tmp_path: Path) -> None:
    path = tmp_path / "sub-02_dwi.nii.gz"
    _write_dwi(path, (64, 64, 24, 240), seed=4)
    reference = tmp_path / "reference.zarr"
    mriflow.convert(path, reference, chunks=CHUNKS)

    store = tmp_path / "killed.zarr"
    building = store / "0" / "c" / "0" / "0" / "0" / "1.stream.partial"
    process = subprocess.Popen(
        [*CONVERT, str(path), str(store), "--chunks", CHUNKS],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    deadline = time.monotonic() + 60
    try:
        while time.monotonic() < deadline and process.poll() is None:
            if building.exists() and building.stat().st_size:  # some shards half built
                process.send_signal(signal.SIGKILL)
                break
            time.sleep(0.001)
    finally:
        process.wait(timeout=30)
    assert process.returncode == -signal.SIGKILL, process.stderr.read() if process.stderr else ""
    if process.stderr:
        process.stderr.close()
    assert list(store.rglob("*.stream.partial"))
    with pytest.raises(mriflow.IncompleteStoreError, match=r"killed\.zarr"):
        mriflow.open_zarr(store)

    assert main(["convert", str(path), str(store), "--chunks", CHUNKS, "--resume"]) == 0
    assert not list(store.rglob("*.partial"))
    assert _store_files(store) == _store_files(reference)
    meta = zarr.open_group(store, mode="r").attrs["mriflow"]
    assert meta["complete"] is True
    assert meta["provenance"]["source"]["checksum"].startswith("sha256:")


def test_short_gzip_is_refused_before_anything_is_written(
    dwi: tuple[Path, np.ndarray], tmp_path: Path
) -> None:
    path, _ = dwi
    short = tmp_path / "short_dwi.nii.gz"  # a valid gzip stream holding 2/3 of the pixels
    whole = gzip.decompress(path.read_bytes())
    short.write_bytes(gzip.compress(whole[: len(whole) * 2 // 3], compresslevel=1))
    store = tmp_path / "short.zarr"
    with pytest.raises(mriflow.CorruptDataError, match=r"short_dwi\.nii\.gz: .*truncated"):
        mriflow.convert(short, store, chunks=CHUNKS)
    assert not store.exists()
