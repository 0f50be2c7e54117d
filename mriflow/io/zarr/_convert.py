"""``mriflow convert``: NIfTI to NIfTI-Zarr and back, streaming and resumable.

NIfTI to zarr reads the raw on-disk values straight from the file (no scaling round trip,
so the store holds exactly the file's numbers) with one small ``pread`` per contiguous run
inside a dask task, so memory is bounded by the chunks in flight and no memory map keeps the
whole file resident. A ``.nii.gz`` file is inflated once, sequentially, to a staging file
first (inside the store folder for local stores, so an interrupted run leaves a
``*.partial`` that the resume removes): a chunk of "spatial block x all volumes" needs bytes
from every volume of a volume-major stream, and reading those through a gzip index would
inflate most of the file again for every slab.
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import os
import tempfile
import zlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from mriflow.errors import CorruptDataError, ImageFormatError, MissingFileError
from mriflow.io.zarr import _layout as layout
from mriflow.io.zarr._store import is_url, resolve_store

__all__ = ["RawFileArray", "convert", "inflate", "is_zarr_location"]

STAGING_NAME = ".mriflow-staging.nii.partial"


class RawFileArray:
    """Pickle-safe lazy view of the raw pixels of an uncompressed NIfTI file (F order).

    Each read opens the file, issues one ``pread`` per contiguous run (whole rows along
    ``x`` for the requested ``y`` range, per ``z``/volume index) and closes it again.
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
        out_shape = tuple(max(0, stop - start) for start, stop in bounds)
        out = np.empty(out_shape, dtype=self.dtype, order="F")
        if out.size == 0:
            return out
        (i0, i1), (j0, j1) = bounds[0], bounds[1] if self.ndim > 1 else (0, 1)
        width = self.shape[0]
        rows = j1 - j0
        itemsize = self.file_dtype.itemsize
        outer_shape = out_shape[2:]
        strides = np.cumprod((1, *self.shape[2:]))[:-1] if self.ndim > 2 else ()
        height = self.shape[1] if self.ndim > 1 else 1
        with open(self.path, "rb") as stream:
            fd = stream.fileno()
            for index in np.ndindex(*outer_shape):
                linear = sum((bounds[2 + a][0] + i) * int(strides[a]) for a, i in enumerate(index))
                first = width * (j0 + height * linear)
                size = rows * width * itemsize
                raw = os.pread(fd, size, self.offset + first * itemsize)
                if len(raw) != size:
                    raise CorruptDataError(
                        f"{self.path}: file ends before the pixel data does (wanted {size} "
                        f"bytes at {self.offset + first * itemsize}, got {len(raw)})"
                    )
                plane = np.frombuffer(raw, dtype=self.file_dtype).reshape(rows, width)
                out[(slice(None), slice(None), *index)] = plane[:, i0:i1].T
        return out


def inflate(source: Path, target: Path, block: int = 8 << 20) -> str:
    """Inflate gzip ``source`` into ``target`` sequentially; returns ``sha256:`` of ``source``.

    Memory stays at a few blocks whatever the compression ratio; multi-member files work.
    Hashing the compressed bytes runs beside the inflation (both release the GIL).
    """
    digest = hashlib.sha256()
    decompressor = zlib.decompressobj(31)
    with (
        source.open("rb") as src,
        target.open("wb") as dst,
        concurrent.futures.ThreadPoolExecutor(1) as hasher,
    ):
        pending: concurrent.futures.Future[None] | None = None
        while chunk := src.read(block):
            if pending is not None:
                pending.result()
            pending = hasher.submit(digest.update, chunk)
            data = chunk
            while data:
                try:
                    out = decompressor.decompress(data, 8 * block)
                except zlib.error as exc:
                    raise CorruptDataError(f"{source}: damaged gzip stream ({exc})") from exc
                dst.write(out)
                if decompressor.eof:
                    data = decompressor.unused_data
                    decompressor = zlib.decompressobj(31)
                else:
                    data = decompressor.unconsumed_tail
        if pending is not None:
            pending.result()
        if not decompressor.eof and decompressor.flush():
            raise CorruptDataError(f"{source}: gzip stream ends early; the file is truncated")
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

    Options as in :func:`mriflow.to_zarr`. Returns the written location.
    """
    from mriflow.io.api import open_image
    from mriflow.io.nifti import nifti_suffix
    from mriflow.io.zarr._read import open_zarr
    from mriflow.io.zarr._write import plan_image, to_zarr, write_plan

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
    plan = plan_image(image, loc.name, raw=data, checksum="" if gzipped else None)

    def stage() -> Any:
        assert staging is not None
        checksum = inflate(file_path, staging)
        plan.meta["provenance"]["source"]["checksum"] = checksum
        return data

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
            staging=stage if gzipped else None,
        )
    finally:
        if gzipped:
            assert staging is not None
            staging.unlink(missing_ok=True)
            if temporary is not None:
                temporary.cleanup()


def _raw_source(path: Path, image: Any) -> tuple[Path, tuple[int, ...], Any, int, bool] | None:
    import nibabel as nib

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
