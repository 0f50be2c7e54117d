"""``mriflow convert``: NIfTI to NIfTI-Zarr and back, streaming and resumable.

NIfTI to zarr reads the raw on-disk values straight from the file (no scaling round trip,
so the store holds exactly the file's numbers) with one small ``pread`` per contiguous run
inside a dask task, so memory is bounded by the chunks in flight and no memory map keeps the
whole file resident. A ``.nii.gz`` file going into a sharded store (zarr v3, 4D) is
streamed: inner chunks are compressed while the gzip stream is still being inflated (see
:mod:`mriflow.io.zarr._stream`). Otherwise it is inflated once, sequentially, to a staging
file first (inside the store folder for local stores, so an interrupted run leaves a
``*.partial`` that the resume removes): a chunk of "spatial block x all volumes" needs bytes
from every volume of a volume-major stream, and reading those through a gzip index would
inflate most of the file again for every slab.
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import os
import tempfile
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from mriflow.errors import CorruptDataError, ImageFormatError, MissingFileError
from mriflow.io.zarr import _layout as layout
from mriflow.io.zarr._store import is_url, resolve_store
from mriflow.io.zarr._stream import inflate_blocks, stream_gzip_to_shards

__all__ = ["RawFileArray", "convert", "inflate", "is_zarr_location"]

STAGING_NAME = ".mriflow-staging.nii.partial"


_LOCKS: dict[str, threading.Lock] = {}
_LOCKS_GUARD = threading.Lock()


def _read_lock(path: str) -> threading.Lock:
    """One reader per file per process: the many small ``preadv`` calls of two threads
    otherwise hand the GIL back and forth on every call (several times slower)."""
    with _LOCKS_GUARD:
        return _LOCKS.setdefault(path, threading.Lock())


class RawFileArray:
    """Pickle-safe lazy view of the raw pixels of an uncompressed NIfTI file (F order).

    Each read opens the file, issues one ``preadv`` per contiguous run (whole rows along
    ``x`` for the requested ``y`` range, per ``z``/volume index) straight into the result's
    memory, and closes it again. The result is a view of a C-ordered ``(..., volume, z, y,
    x)`` buffer: the store's own axis order, so writing it needs no copy. (A memory map
    would be faster from the page cache but pulls far more than the block into RSS.)
    """

    def __init__(self, path: str, shape: Sequence[int], dtype: Any, offset: int) -> None:
        self.path = str(path)
        self.shape = tuple(int(n) for n in shape)
        self.file_dtype = np.dtype(dtype)
        self.dtype = self.file_dtype.newbyteorder("=")
        self.ndim = len(self.shape)
        self.offset = int(offset)

    def __getitem__(self, key: tuple[slice, ...]) -> np.ndarray:
        key = tuple(key) + (slice(None),) * (self.ndim - len(key))
        bounds = [k.indices(n)[:2] for k, n in zip(key, self.shape, strict=True)]
        sizes = [max(0, stop - start) for start, stop in bounds]
        (i0, i1), j0 = bounds[0], bounds[1][0]
        width, height = self.shape[0], self.shape[1]
        outer = sizes[2:]
        # C-ordered (..., volume, k, j, i): whole rows along i, exactly the file's byte order
        rows = np.empty((*outer[::-1], sizes[1], width), dtype=self.file_dtype)
        if rows.size:
            itemsize = self.file_dtype.itemsize
            run = sizes[1] * width * itemsize
            # the (y, x) plane of every run, in the buffer's (C) order
            plane = np.zeros(outer[::-1], dtype=np.int64)
            strides = np.cumprod((1, *self.shape[2:]))[:-1]
            for axis, ((first, _), stride) in enumerate(zip(bounds[2:], strides, strict=True)):
                along = [1] * len(outer)
                along[len(outer) - 1 - axis] = outer[axis]
                steps = np.arange(first, first + outer[axis], dtype=np.int64) * int(stride)
                plane = plane + steps.reshape(along)
            offsets = (self.offset + width * (j0 + height * plane.ravel()) * itemsize).tolist()
            targets = rows.reshape(-1, sizes[1], width)
            with _read_lock(self.path), open(self.path, "rb") as stream:
                fd = stream.fileno()
                for target, offset in zip(targets, offsets, strict=True):
                    if os.preadv(fd, [target.data], offset) != run:
                        raise CorruptDataError(
                            f"{self.path}: file ends before the pixel data does (wanted {run} "
                            f"bytes at {offset})"
                        )
        block = rows[..., i0:i1].transpose(*range(rows.ndim - 1, -1, -1))
        return block.astype(self.dtype, copy=False)


def inflate(source: Path, target: Path, block: int = 8 << 20) -> str:
    """Inflate gzip ``source`` into ``target`` sequentially; returns ``sha256:`` of ``source``.

    Memory stays at a few blocks whatever the compression ratio; multi-member files work.
    Hashing the compressed bytes and writing the inflated ones run in their own threads,
    beside the inflation (zlib, hashlib and file writes all release the GIL).
    """
    digest = hashlib.sha256()
    with (
        target.open("wb") as dst,
        concurrent.futures.ThreadPoolExecutor(1) as hasher,
        concurrent.futures.ThreadPoolExecutor(1) as writer,
    ):
        written: concurrent.futures.Future[int] | None = None
        for out in inflate_blocks(source, digest, hasher, block, 8 * block):
            if written is not None:
                written.result()  # at most one block waits to be written
            written = writer.submit(dst.write, out)
        if written is not None:
            written.result()
    return f"sha256:{digest.hexdigest()}"


def is_zarr_location(location: Any) -> bool:
    """Whether ``location`` names a zarr store (``*.zarr``, a URL, or a folder with metadata)."""
    text = os.fspath(location) if isinstance(location, os.PathLike) else location
    if not isinstance(text, str):
        return False
    if text.rstrip("/").lower().endswith(".zarr"):
        return True
    if is_url(text):
        from mriflow.io.nifti import nifti_suffix

        return nifti_suffix(text) is None
    path = Path(text)
    return path.is_dir() and any((path / m).exists() for m in ("zarr.json", ".zgroup"))


def convert(
    source: str | os.PathLike[str],
    destination: str | os.PathLike[str],
    *,
    chunks: Sequence[int] | str | None = None,
    compressor: str = "zstd",
    levels: int = 1,
    zarr_format: int = 3,
    resume: bool = False,
    overwrite: bool = False,
    storage_options: dict[str, Any] | None = None,
) -> str:
    """Convert NIfTI -> NIfTI-Zarr, NIfTI-Zarr -> NIfTI (``.nii``/``.nii.gz``), or zarr -> zarr.

    ``source`` may also be a DICOM series folder (one store), or a BIDS dataset root (a
    folder with ``dataset_description.json``): every NIfTI image of it becomes a store at the
    same relative path under the folder ``destination`` (see :func:`_convert_bids`).

    Options as in :func:`mriflow.to_zarr`. Returns the written location.
    """
    from mriflow.io.api import open_image
    from mriflow.io.nifti import nifti_suffix
    from mriflow.io.zarr._read import open_zarr
    from mriflow.io.zarr._write import file_checksum, plan_image, to_zarr, write_plan

    options: dict[str, Any] = {
        "chunks": chunks,
        "compressor": compressor,
        "levels": levels,
        "zarr_format": zarr_format,
        "resume": resume,
        "overwrite": overwrite,
        "storage_options": storage_options,
    }
    if is_zarr_location(source):
        image = open_zarr(source, storage_options=storage_options)
        if is_zarr_location(destination):
            return to_zarr(image, destination, **options)
        if nifti_suffix(destination) not in (".nii", ".nii.gz"):
            raise ImageFormatError(f"{destination}: convert writes .nii, .nii.gz or .zarr")
        return str(image.mri.to_nifti(destination))
    path = Path(source).expanduser()
    if not path.exists():
        raise MissingFileError(f"{path}: no such file")
    if path.is_dir() and (path / "dataset_description.json").is_file():
        return _convert_bids(path, destination, options)
    image = open_image(path)
    if not is_zarr_location(destination):
        if nifti_suffix(destination) not in (".nii", ".nii.gz"):
            raise ImageFormatError(f"{destination}: convert writes .nii, .nii.gz or .zarr")
        return str(image.mri.to_nifti(destination))
    loc = resolve_store(destination, storage_options=storage_options)
    raw = _raw_source(path, image)
    if raw is None:  # Analyze pairs, C-ordered files: through the image's own reader
        return to_zarr(image, destination, **options)
    file_path, shape, dtype, offset, gzipped = raw
    requested = layout.parse_chunks(chunks) if isinstance(chunks, str) else chunks
    block = layout.default_chunks(shape, np.dtype(dtype).itemsize, requested)
    read_chunks = (shape[0], *block[1:3], *shape[3:])
    if gzipped:
        staging = Path(loc.root) / STAGING_NAME if loc.local else None
        temporary = None
        if staging is None:
            temporary = tempfile.TemporaryDirectory(prefix="mriflow-staging-")
            staging = Path(temporary.name) / STAGING_NAME
        reader = RawFileArray(str(staging), shape, dtype, offset)
    else:
        reader = RawFileArray(str(file_path), shape, dtype, offset)
    data = _as_dask(reader, read_chunks, f"{file_path}:{os.stat(file_path).st_mtime_ns}")
    # a gzip file is hashed while it is inflated; a resume checks the source first
    checksum = None if not gzipped else (file_checksum(file_path) if resume else "")
    plan = plan_image(image, loc.name, raw=data, checksum=checksum)

    def stage() -> Any:
        assert staging is not None
        checksum = inflate(file_path, staging)
        plan.meta["provenance"]["source"]["checksum"] = checksum
        return data

    def stream(array: Any, regions: list[Any], todo: list[int], mark_done: Any) -> None:
        assert staging is not None
        files = _ShardFiles(loc, array.path, staging.parent)
        checksum = stream_gzip_to_shards(
            file_path,
            array,
            offset,
            shape,
            np.dtype(dtype),
            regions,
            todo,
            mark_done,
            files.building,
            files.publish,
        )
        plan.meta["provenance"]["source"]["checksum"] = checksum

    # sharded layout: compress inner chunks while the gzip stream is still being inflated
    streaming = gzipped and layout.default_shards(
        shape, np.dtype(dtype).itemsize, block, zarr_format
    )
    try:
        return write_plan(
            plan,
            loc,
            chunks=block,
            compressor=compressor,
            levels=levels,
            zarr_format=zarr_format,
            resume=resume,
            overwrite=overwrite,
            staging=stage if gzipped and not streaming else None,
            stream=stream if streaming else None,
        )
    finally:
        if gzipped:
            assert staging is not None
            staging.unlink(missing_ok=True)
            if temporary is not None:
                temporary.cleanup()


class _ShardFiles:
    """Where the streaming writer builds shard files and how they reach the store.

    Local stores: next to their final name, as ``<key>.stream.partial`` (a killed run's
    leftovers are removed by the resume like zarr's own ``*.partial`` files), renamed into
    place when complete. Other stores: in a local temporary folder, uploaded when complete.
    """

    def __init__(self, loc: Any, array_path: str, scratch: Path) -> None:
        self.loc = loc
        self.array_path = array_path
        self.scratch = scratch
        self.folders: set[str] = set()
        self.lock = threading.Lock()

    def building(self, key: str) -> str:
        """Local file in which the shard ``key`` is built."""
        if not self.loc.local:
            return str(self.scratch / (key.replace("/", "_") + ".partial"))
        path = self.loc.path(self.array_path, key) + ".stream.partial"
        folder = os.path.dirname(path)
        with self.lock:
            if folder not in self.folders:
                os.makedirs(folder, exist_ok=True)
                self.folders.add(folder)
        return path

    def publish(self, key: str, built: str | None) -> None:
        """Move the finished shard file into the store (``None``: the store holds none)."""
        target = self.loc.path(self.array_path, key)
        if self.loc.local:
            if built is None:
                Path(target).unlink(missing_ok=True)
            else:
                os.replace(built, target)
        elif built is None:
            if self.loc.fs.exists(target):
                self.loc.fs.rm_file(target)
        else:
            self.loc.fs.put_file(built, target)
            os.unlink(built)


def _convert_bids(root: Path, destination: Any, options: dict[str, Any]) -> str:
    """Every NIfTI image of BIDS dataset ``root`` to a store at the same relative path under
    ``destination`` (``sub-01/dwi/sub-01_dwi.nii.gz`` -> ``sub-01/dwi/sub-01_dwi.zarr``).

    Each store carries the image's merged sidecar, ``.bval``/``.bvec`` and acquisition
    metadata, as ``open_image`` reads them; ``dataset_description.json`` is copied so the
    output is itself recognisable as a dataset. With ``resume=True`` complete stores are
    kept and unfinished ones continued, so an interrupted dataset conversion picks up where
    it stopped.
    """
    import fsspec

    from mriflow import bids
    from mriflow.io.nifti import nifti_suffix

    text = os.fspath(destination)
    if nifti_suffix(text) is not None or text.rstrip("/").lower().endswith(".zarr"):
        raise ImageFormatError(
            f"{text}: a BIDS dataset ({root}) converts to a folder of stores, not one file or store"
        )
    images = [entry for entry in bids.index(root) if entry.extension in (".nii", ".nii.gz")]
    if not images:
        raise MissingFileError(f"{root}: no NIfTI images in this BIDS dataset")
    storage_options = options.get("storage_options") or {}
    fs, base = fsspec.core.url_to_fs(text, **storage_options)
    fs.makedirs(base, exist_ok=True)
    with fsspec.open(root / "dataset_description.json", "rb") as description:
        fs.pipe_file(f"{base.rstrip('/')}/dataset_description.json", description.read())
    for entry in sorted(images, key=lambda item: str(item.path)):
        relative = entry.path.relative_to(root).as_posix()
        store = relative[: len(relative) - len(entry.extension)] + ".zarr"
        target = text.rstrip("/") + "/" + store
        convert(entry.path, target, **options)
    return text


def _raw_source(path: Path, image: Any) -> tuple[Path, tuple[int, ...], Any, int, bool] | None:
    import nibabel as nib

    from mriflow.io.nifti import nifti_suffix

    if path.is_dir() or nifti_suffix(path) not in (".nii", ".nii.gz"):
        return None  # DICOM folders, Analyze pairs: through the image's own reader
    loaded: Any = nib.load(path)
    proxy = loaded.dataobj
    if not isinstance(proxy.file_like, str) or getattr(proxy, "order", "F") != "F":
        return None
    file_path = Path(proxy.file_like)
    if file_path.resolve() != path.resolve():
        return None
    del image
    return (
        file_path,
        tuple(int(n) for n in proxy.shape),
        np.dtype(proxy.dtype),
        int(proxy.offset),
        file_path.name.lower().endswith(".gz"),
    )


def _as_dask(reader: RawFileArray, chunks: Sequence[int], token: str) -> Any:
    import dask.array as dask_array
    from dask.base import tokenize

    return dask_array.from_array(
        reader,
        chunks=tuple(int(c) for c in chunks),
        name=f"raw-nifti-{tokenize(reader.path, token, reader.shape, chunks)}",
        asarray=False,
        fancy=False,
        lock=False,
        meta=np.empty((0,) * reader.ndim, dtype=reader.dtype),
    )
