"""Bad input to zarr stores: typed errors that name the store, and nothing written is lost."""

from __future__ import annotations

import errno
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import zarr
import zarr.storage

import mriflow
from mriflow.data import write_dwi_phantom


@pytest.fixture(scope="module")
def labels(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_dwi_phantom(
        tmp_path_factory.mktemp("phantom"), shape=(20, 24, 18), n_directions=6
    )["labels"]


class CappedStore(zarr.storage.LocalStore):
    """A local store that runs out of space after ``capacity`` bytes (a full disk)."""

    def __init__(self, root: Path, capacity: int, **kwargs: Any) -> None:
        super().__init__(root, **kwargs)
        self.capacity = capacity
        self.used = 0

    async def set(self, key: str, value: Any) -> None:
        self.used += len(value)
        if self.used > self.capacity:
            raise OSError(errno.ENOSPC, "No space left on device", str(self.root / key))
        await super().set(key, value)


def test_a_folder_that_is_not_a_store(tmp_path: Path) -> None:
    folder = tmp_path / "plain.zarr"
    folder.mkdir()
    (folder / "notes.txt").write_text("not zarr")
    with pytest.raises(mriflow.StoreFormatError, match=r"^.*plain\.zarr: not a zarr store"):
        mriflow.open_zarr(folder)
    with pytest.raises(mriflow.MissingFileError, match=r"missing\.zarr: no such store"):
        mriflow.open_image(tmp_path / "missing.zarr")
    # a zarr group without image metadata
    zarr.open_group(tmp_path / "group.zarr", mode="w").attrs["hello"] = "world"
    with pytest.raises(mriflow.StoreFormatError, match=r"group\.zarr: a zarr group without OME"):
        mriflow.open_zarr(tmp_path / "group.zarr")


def test_foreign_ome_zarr_without_affine_falls_back_to_ngff_with_a_warning(tmp_path: Path):
    store = tmp_path / "ome.zarr"
    group = zarr.open_group(store, mode="w")
    data = np.arange(4 * 5 * 6, dtype=np.uint16).reshape(4, 5, 6)  # z, y, x
    group.create_array("s0", data=data, chunks=(2, 5, 6))
    group.attrs["ome"] = {
        "version": "0.5",
        "multiscales": [
            {
                "axes": [
                    {"name": "z", "type": "space", "unit": "micrometer"},
                    {"name": "y", "type": "space", "unit": "micrometer"},
                    {"name": "x", "type": "space", "unit": "micrometer"},
                ],
                "datasets": [
                    {
                        "path": "s0",
                        "coordinateTransformations": [
                            {"type": "scale", "scale": [3000.0, 2000.0, 1000.0]},
                            {"type": "translation", "translation": [30.0, 20.0, 10.0]},
                        ],
                    }
                ],
            }
        ],
    }
    with pytest.warns(mriflow.MissingAffineWarning, match=r"ome\.zarr: no NIfTI header"):
        image = mriflow.open_zarr(store)
    assert image.dims == ("i", "j", "k")
    np.testing.assert_array_equal(image.values, data.transpose(2, 1, 0))
    np.testing.assert_allclose(
        image.mri.affine,
        [[1.0, 0, 0, 0.01], [0, 2.0, 0, 0.02], [0, 0, 3.0, 0.03], [0, 0, 0, 1]],
    )


def test_mismatched_metadata_is_reported(labels: Path, tmp_path: Path) -> None:
    store = tmp_path / "labels.zarr"
    mriflow.to_zarr(mriflow.open_image(labels), store)
    array_json = store / "0" / "zarr.json"
    meta = json.loads(array_json.read_text())
    meta["shape"] = [9, 24, 20]
    array_json.write_text(json.dumps(meta))
    with pytest.raises(mriflow.StoreMetadataError, match=r"labels\.zarr: array '0' has shape"):
        mriflow.open_zarr(store)
    meta["shape"], meta["chunk_grid"]["configuration"]["chunk_shape"] = [18, 24, 20], [4, 4, 4]
    array_json.write_text(json.dumps(meta))
    with pytest.raises(mriflow.StoreMetadataError, match="has chunks"):
        mriflow.open_zarr(store)
    root_json = store / "zarr.json"
    root = json.loads(root_json.read_text())
    root["attributes"]["ome"]["multiscales"][0]["datasets"][0]["path"] = "gone"
    root_json.write_text(json.dumps(root))
    with pytest.raises(mriflow.StoreMetadataError, match="no such array"):
        mriflow.open_zarr(store)


def test_read_only_locations(labels: Path, tmp_path: Path) -> None:
    image = mriflow.open_image(labels)
    store = zarr.storage.LocalStore(tmp_path / "ro.zarr", read_only=True)
    with pytest.raises(mriflow.StoreWriteError, match=r"ro\.zarr: the location is read-only"):
        mriflow.to_zarr(image, store)
    blocker = tmp_path / "file"
    blocker.write_text("a file, not a folder")
    with pytest.raises(mriflow.StoreWriteError, match=r"file/x\.zarr: "):
        mriflow.to_zarr(image, blocker / "x.zarr")


def test_existing_stores_are_not_overwritten_silently(labels: Path, tmp_path: Path) -> None:
    image = mriflow.open_image(labels)
    store = tmp_path / "x.zarr"
    mriflow.to_zarr(image, store)
    with pytest.raises(mriflow.StoreWriteError, match=r"x\.zarr: already holds a complete"):
        mriflow.to_zarr(image, store)
    mriflow.to_zarr(image * 2, store, overwrite=True)
    np.testing.assert_array_equal(mriflow.open_zarr(store).values, image.values * 2)
    other = tmp_path / "data"
    other.mkdir()
    (other / "keep.txt").write_text("precious")
    with pytest.raises(mriflow.StoreWriteError, match="is not a zarr store; refusing"):
        mriflow.to_zarr(image, other)
    assert (other / "keep.txt").read_text() == "precious"


def test_disk_full_keeps_what_was_written_and_resumes(labels: Path, tmp_path: Path) -> None:
    image = mriflow.open_image(labels)
    path = tmp_path / "full.zarr"
    capped = CappedStore(path, capacity=12_000)
    with pytest.raises(mriflow.StoreWriteError, match=r"full\.zarr: no space left"):
        mriflow.to_zarr(image, capped, chunks="4,4,4")
    chunks_before = {p: p.stat().st_mtime_ns for p in (path / "0" / "c").rglob("*") if p.is_file()}
    done = list((path / ".mriflow-progress" / "0").glob("*.done"))
    assert done  # some regions finished before the disk filled up
    with pytest.raises(mriflow.IncompleteStoreError, match=r"full\.zarr: the store is incomplete"):
        mriflow.open_zarr(path)
    with pytest.raises(mriflow.IncompleteStoreError, match="resume=True"):
        mriflow.to_zarr(image, path, chunks="4,4,4")
    mriflow.to_zarr(image, path, chunks="4,4,4", resume=True)
    np.testing.assert_array_equal(mriflow.open_zarr(path).values, image.values)
    assert not (path / ".mriflow-progress").exists()
    # chunks of finished regions were not rewritten
    first_region = [p for p in chunks_before if p.relative_to(path / "0" / "c").parts[0] == "0"]
    assert first_region
    for chunk in first_region:
        assert chunk.stat().st_mtime_ns == chunks_before[chunk]


def test_resume_refuses_a_different_image(labels: Path, tmp_path: Path) -> None:
    image = mriflow.open_image(labels)
    path = tmp_path / "x.zarr"
    with pytest.raises(mriflow.StoreWriteError):
        mriflow.to_zarr(image, CappedStore(path, capacity=8_000), chunks="4,4,4")
    with pytest.raises(mriflow.StoreMetadataError, match=r"x\.zarr: cannot resume: .*chunks"):
        mriflow.to_zarr(image, path, chunks="8,8,8", resume=True)


def test_resume_refuses_a_changed_source(tmp_path: Path) -> None:
    phantom = write_dwi_phantom(tmp_path / "in", shape=(20, 24, 18), n_directions=6)
    labels, mask = mriflow.open_image(phantom["labels"]), mriflow.open_image(phantom["mask"])
    assert labels.shape == mask.shape
    assert labels.dtype == mask.dtype
    path = tmp_path / "x.zarr"
    with pytest.raises(mriflow.StoreWriteError):
        mriflow.to_zarr(labels, CappedStore(path, capacity=8_000), chunks="4,4,4")
    with pytest.raises(mriflow.StoreMetadataError, match=r"x\.zarr: cannot resume: the source"):
        mriflow.to_zarr(mask, path, chunks="4,4,4", resume=True)


def test_bad_options_and_too_many_axes(labels: Path, tmp_path: Path) -> None:
    image = mriflow.open_image(labels)
    with pytest.raises(ValueError, match="compressor must be one of"):
        mriflow.to_zarr(image, tmp_path / "a.zarr", compressor="snappy")
    with pytest.raises(ValueError, match="chunks must be integers"):
        mriflow.to_zarr(image, tmp_path / "b.zarr", chunks="big")
    six = image.expand_dims(a=2, b=2, c=1)
    with pytest.raises(mriflow.ImageFormatError, match="at most 2 others"):
        mriflow.to_zarr(six, tmp_path / "c.zarr")


def test_inflate_handles_multi_member_gzip_and_reports_damage(tmp_path: Path) -> None:
    import gzip
    import hashlib

    from mriflow.io.zarr._convert import inflate

    first, second = b"a" * 100_000, bytes(range(256)) * 1000
    two = tmp_path / "two.gz"
    two.write_bytes(gzip.compress(first) + gzip.compress(second))
    checksum = inflate(two, tmp_path / "out", block=4096)
    assert (tmp_path / "out").read_bytes() == first + second
    assert checksum == "sha256:" + hashlib.sha256(two.read_bytes()).hexdigest()
    damaged = tmp_path / "damaged.gz"
    data = bytearray(gzip.compress(second))
    data[40:60] = b"\xff" * 20
    damaged.write_bytes(bytes(data))
    with pytest.raises(mriflow.CorruptDataError, match=r"damaged\.gz: damaged gzip stream"):
        inflate(damaged, tmp_path / "out2")
    truncated = tmp_path / "truncated.gz"
    truncated.write_bytes(gzip.compress(second)[:-100])
    with pytest.raises(mriflow.CorruptDataError, match=r"truncated\.gz: gzip stream ends early"):
        inflate(truncated, tmp_path / "out3")
