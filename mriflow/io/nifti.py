"""NIfTI-1/2 and Analyze images: lazy reading through nibabel, streaming writes.

Opening reads the header only (nibabel) and checks what it can without touching pixels: dims,
datatype, affine, and whether the file is long enough to hold the data (for ``.nii.gz`` the
gzip trailer's ISIZE). Pixels are read per dask chunk by :class:`NiftiArray`, a small
pickle-safe array that keeps one file handle per process: a memory map for uncompressed files,
an ``indexed_gzip`` handle for ``.nii.gz`` so reading chunk *n* does not re-inflate chunks
``0..n-1`` once the index covers them. ``scl_slope``/``scl_inter`` are applied per chunk
exactly as nibabel's ``img.dataobj`` does.
"""

from __future__ import annotations

import contextlib
import gzip
import json
import os
import re
import shutil
import struct
import threading
import warnings
import zlib
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr
from xarray.backends import BackendArray
from xarray.core import indexing

from mriflow._version import __version__
from mriflow.errors import (
    CorruptDataError,
    GeometryError,
    ImageFormatError,
    ImageHeaderError,
    MissingFileError,
    MriflowError,
    MriflowWarning,
    SidecarError,
)
from mriflow.image.affine import SPATIAL_DIMS, check_affine, voxel_sizes
from mriflow.image.model import KINDS, default_dims, gradient_coords, make_image

__all__ = [
    "NIFTI_SUFFIXES",
    "NiftiArray",
    "auto_chunks",
    "bytes_read",
    "nifti_suffix",
    "open_nifti",
    "to_nifti",
]

NIFTI_SUFFIXES = (".nii.gz", ".nii", ".hdr.gz", ".img.gz", ".hdr", ".img")
_TIME_UNIT_SECONDS = {"sec": 1.0, "msec": 1e-3, "usec": 1e-6}
_LABEL_WORDS = {"dseg", "mask", "brainmask", "label", "labels", "aseg", "aparc", "seg", "atlas"}
_INTENT_LABEL = 1002
_GZIP_MAGIC = b"\x1f\x8b"
_GZIP_READ_AHEAD = 256 << 10
_GZIP_SPACING = 1 << 20

#: Raw pixel bytes read by this process, per file path (for tests and benchmarks).
_BYTES_READ: Counter[str] = Counter()


def bytes_read(path: str | os.PathLike[str]) -> int:
    """Raw pixel bytes this process has read from ``path`` so far."""
    return _BYTES_READ[str(Path(path).resolve())]


def nifti_suffix(path: str | os.PathLike[str]) -> str | None:
    """The NIfTI/Analyze suffix of ``path`` (``".nii.gz"``, ``".nii"``, ...), or None."""
    name = os.fspath(path).lower()
    return next((s for s in NIFTI_SUFFIXES if name.endswith(s)), None)


def _stem(path: Path) -> Path:
    suffix = nifti_suffix(path) or path.suffix
    return path.with_name(path.name[: len(path.name) - len(suffix)])


def _sibling(path: Path, extension: str) -> Path:
    """The file next to image ``path`` with the same stem and ``extension`` (e.g. ".bval")."""
    stem = _stem(path)
    return stem.with_name(stem.name + extension)


# --- lazy pixel access ------------------------------------------------------------------------


@dataclass(frozen=True)
class _Layout:
    """Where and how the pixels of one image lie on disk (all it takes to read them)."""

    path: str
    shape: tuple[int, ...]
    dtype: str
    offset: int
    order: str
    gzipped: bool
    signature: tuple[int, int]  # (size, mtime_ns): a changed file gets new handles

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64)) * np.dtype(self.dtype).itemsize


class _GzipStream:
    """One process's ``indexed_gzip`` handle on a ``.nii.gz``, shared by its threads.

    Integrity: indexed_gzip checks the gzip CRC and length only when it inflates the stream
    from the start in one pass (``build_full_index``), not when seeks build the index bit by
    bit. So the first time a read needs the index to reach past a quarter of the stream, the
    whole index is built in one validated pass: a read that touches every volume (whole-time
    chunks) or the end of the file pays nothing extra, reads in file order pay at most a
    quarter of a pass again, and a single chunk near the start still inflates only that far.
    """

    VALIDATE_PAST = 0.25

    def __init__(self, layout: _Layout) -> None:
        from indexed_gzip import IndexedGzipFile

        # Chunk reads are strided runs (one per volume), so every run pays the inflation from
        # the seek point before it: seek points every 1 MiB (default 4 MiB; each costs a 32 KiB
        # window of memory) and a 256 KiB read-ahead buffer (default 4 MiB) keep that small.
        self.file = IndexedGzipFile(
            layout.path, drop_handles=False, spacing=_GZIP_SPACING, buffer_size=_GZIP_READ_AHEAD
        )
        self.lock = threading.Lock()
        self.total = layout.offset + layout.nbytes
        self.reached = 0
        self.validated = False
        self.closed = False

    def prepare(self, end: int) -> None:
        """Get ready to read up to byte ``end`` of the inflated stream."""
        with self.lock:
            if self.closed:
                raise OSError("the file was closed after an earlier read error")
            if not self.validated and end > self.reached and end > self.VALIDATE_PAST * self.total:
                self.file.build_full_index()  # raises on a CRC or length mismatch
                self.validated = True
            self.reached = max(self.reached, end)

    def close(self) -> None:
        # under the lock: another thread may be inflating through this handle right now
        with self.lock, contextlib.suppress(Exception):
            self.closed = True
            self.file.close()


class _Handles:
    """Open gzip streams of this process, one per file (dask workers are thread pools)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._open: dict[tuple[int, _Layout], _GzipStream] = {}

    def get(self, layout: _Layout) -> _GzipStream:
        key = (os.getpid(), layout)
        with self._lock:
            if key not in self._open:
                self._open[key] = _GzipStream(layout)
            return self._open[key]

    def drop(self, layout: _Layout) -> None:
        with self._lock:
            stream = self._open.pop((os.getpid(), layout), None)
        if stream is not None:
            stream.close()


def _byte_extent(key: tuple[Any, ...], layout: _Layout) -> int:
    """One past the last byte of the inflated stream that reading ``key`` touches."""
    last = []
    for index, size in zip(key, layout.shape, strict=True):
        if isinstance(index, slice):
            selected = range(*index.indices(size))
            if not selected:
                return 0
            last.append(max(selected[0], selected[-1]))
        else:
            last.append(int(index) % size)
    flat = int(np.ravel_multi_index(tuple(last), layout.shape, order=layout.order))  # type: ignore[call-overload]
    return layout.offset + (flat + 1) * np.dtype(layout.dtype).itemsize


_HANDLES = _Handles()


class NiftiArray(BackendArray):
    """Lazy, pickle-safe pixel array of one NIfTI/Analyze image, scaled like nibabel's."""

    def __init__(self, layout: _Layout, slope: float, inter: float) -> None:
        self.layout = layout
        self.slope = slope
        self.inter = inter
        self.shape = layout.shape
        self.dtype = _scaled_dtype(np.dtype(layout.dtype), slope, inter)

    def __getitem__(self, key: indexing.ExplicitIndexer) -> np.ndarray:
        return indexing.explicit_indexing_adapter(
            key, self.shape, indexing.IndexingSupport.BASIC, self._read
        )

    def _read(self, key: tuple[Any, ...]) -> np.ndarray:
        from nibabel.fileslice import fileslice
        from nibabel.volumeutils import apply_read_scaling

        layout = self.layout
        try:
            if layout.gzipped:
                stream = _HANDLES.get(layout)
                stream.prepare(_byte_extent(key, layout))
                raw = fileslice(
                    stream.file,
                    key,
                    layout.shape,
                    np.dtype(layout.dtype),
                    layout.offset,
                    layout.order,
                    lock=stream.lock,
                )
            else:
                raw = _read_plain(layout, key)
        except MriflowError:
            raise
        except Exception as exc:
            _HANDLES.drop(layout)
            raise CorruptDataError(
                f"{layout.path}: could not read pixels {_describe(key)} "
                f"({type(exc).__name__}: {exc}); the file is truncated or its compressed "
                "stream is damaged"
            ) from exc
        _BYTES_READ[layout.path] += raw.nbytes
        raw = raw.astype(raw.dtype.newbyteorder("="), copy=False)
        if self.slope == 1.0 and self.inter == 0.0:
            return raw
        return apply_read_scaling(raw, self.slope, self.inter)


def _read_plain(layout: _Layout, key: tuple[Any, ...]) -> np.ndarray:
    """Read one selection of an uncompressed file with its own handle (thread-safe).

    Plain reads, not a memory map: reading a 128 MiB chunk through ``mmap`` put about 530 MiB
    into the process's resident set (the touched page-cache pages plus fault-around), against
    about 230 MiB this way, at the same speed.
    """
    from nibabel.fileslice import fileslice

    with open(layout.path, "rb") as stream:
        return fileslice(
            stream, key, layout.shape, np.dtype(layout.dtype), layout.offset, layout.order
        )


def _scaled_dtype(raw: np.dtype, slope: float, inter: float) -> np.dtype:
    from nibabel.volumeutils import apply_read_scaling

    native = raw.newbyteorder("=")
    if slope == 1.0 and inter == 0.0:
        return native
    return apply_read_scaling(np.zeros(1, native), slope, inter).dtype


def _describe(key: tuple[Any, ...]) -> str:
    parts = [f"{k.start or 0}:{k.stop}" if isinstance(k, slice) else str(k) for k in key]
    return "[" + ", ".join(parts) + "]"


# --- opening ------------------------------------------------------------------------------------


def _load_header(path: Path) -> Any:
    import nibabel as nib
    from nibabel.filebasedimages import ImageFileError
    from nibabel.spatialimages import HeaderDataError

    if not path.exists():
        raise MissingFileError(f"{path}: no such file")
    if path.is_dir():
        raise ImageFormatError(
            f"{path}: is a directory; open_image expects a NIfTI/Analyze file here"
        )
    if nifti_suffix(path) is None:
        raise ImageFormatError(
            f"{path}: unknown image extension; mriflow reads "
            f"{', '.join(NIFTI_SUFFIXES)} (NIfTI-1/2, NIfTI pairs, Analyze)"
        )
    try:
        raw_block = _check_raw_header(path)
        image = nib.load(path)
        return image, _unfixed_header(image, raw_block)
    except MriflowError:
        raise
    except FileNotFoundError as exc:
        raise MissingFileError(f"{path}: a file of this image is missing ({exc})") from exc
    except (ImageFileError, HeaderDataError) as exc:
        damage = _gzip_damage(path) if path.name.lower().endswith(".gz") else None
        if damage:
            raise CorruptDataError(f"{path}: damaged gzip stream ({damage})") from exc
        raise ImageHeaderError(f"{path}: not a valid NIfTI/Analyze header ({exc})") from exc
    except (OSError, EOFError, zlib.error) as exc:
        raise CorruptDataError(f"{path}: cannot read the header ({exc})") from exc
    except Exception as exc:
        raise ImageHeaderError(
            f"{path}: cannot read the header ({type(exc).__name__}: {exc})"
        ) from exc


def _check_raw_header(path: Path) -> bytes | None:
    """Check ``sizeof_hdr`` and ``dim[0]`` as written, before nibabel interprets them.

    nibabel silently "fixes" a wrong ``sizeof_hdr`` and takes an out-of-range ``dim[0]`` as a
    sign of the other byte order; both really mean a damaged header or a file that is not
    NIfTI/Analyze, so mriflow refuses them with the reason.
    """
    name = path.name.lower()
    header_path = path
    if name.endswith(".img"):
        header_path = path.with_name(path.name[: -len(".img")] + ".hdr")
    elif name.endswith(".img.gz"):
        header_path = path.with_name(path.name[: -len(".img.gz")] + ".hdr.gz")
    if not header_path.exists():
        return None  # nibabel names the missing header
    with header_path.open("rb") as stream:
        if name.endswith(".gz"):
            if stream.read(2) != _GZIP_MAGIC:
                raise CorruptDataError(f"{header_path}: named .gz but is not a gzip file")
            stream.seek(0)
            try:
                with gzip.GzipFile(fileobj=stream) as inflated:
                    start = inflated.read(540)
            except (OSError, EOFError, zlib.error) as exc:
                raise CorruptDataError(f"{header_path}: damaged gzip stream ({exc})") from exc
        else:
            start = stream.read(540)
    if len(start) < 48:
        raise ImageHeaderError(f"{header_path}: too short to hold a NIfTI/Analyze header")
    for order in ("<", ">"):
        (sizeof_hdr,) = struct.unpack_from(order + "i", start, 0)
        if sizeof_hdr in (348, 540):
            break
    else:
        raise ImageHeaderError(
            f"{header_path}: sizeof_hdr is {struct.unpack_from('<i', start, 0)[0]}, not 348 "
            "(NIfTI-1/Analyze) or 540 (NIfTI-2); the file is not a NIfTI/Analyze image or its "
            "header is damaged"
        )
    (ndim,) = struct.unpack_from(
        order + ("h" if sizeof_hdr == 348 else "q"), start, 40 if sizeof_hdr == 348 else 16
    )
    if not 1 <= ndim <= 7:
        raise ImageHeaderError(f"{header_path}: dim[0] is {ndim}; NIfTI allows 1 to 7 dimensions")
    return start[:sizeof_hdr]


def _unfixed_header(image: Any, block: bytes | None) -> Any:
    """The header as written: nibabel's loader silently repairs some fields (zero pixdims,
    low vox_offset), and the repairs hide damage mriflow reports."""
    header = image.header
    if block is None or len(block) != header.sizeof_hdr:
        return header
    return type(header)(block, endianness=header.endianness, check=False)


def _gzip_damage(path: Path, limit: int = 1 << 20) -> str | None:
    """Why the first ``limit`` bytes of a gzip stream do not inflate, or None if they do."""
    try:
        with gzip.open(path, "rb") as stream:
            stream.read(limit)
    except (OSError, EOFError, zlib.error) as exc:
        return str(exc)
    return None


def _check_dims(path: Path, header: Any) -> tuple[int, ...]:
    dim = [int(d) for d in header["dim"]]
    ndim = dim[0]
    if not 1 <= ndim <= 7:
        raise ImageHeaderError(f"{path}: dim[0] is {ndim}; NIfTI allows 1 to 7 dimensions")
    shape = tuple(dim[1 : ndim + 1])
    if any(n < 1 for n in shape):
        raise ImageHeaderError(f"{path}: impossible dimensions {shape}; every size must be >= 1")
    return shape


def _checked_scaling(path: Path, written: Any, slope: float, inter: float) -> tuple[float, float]:
    """The scaling to apply. ``scl_slope`` 0 (the NIfTI standard) and NaN (what nibabel
    writes) mean unscaled. An infinite slope is damage: the pixels are read unscaled with a
    warning. A non-finite intercept next to a real slope cannot be read safely."""
    raw_slope = float(written["scl_slope"]) if "scl_slope" in written else slope
    if np.isinf(raw_slope) or np.isinf(slope):
        slope = raw_slope if np.isinf(raw_slope) else slope
        warnings.warn(
            f"{path}: scl_slope is {slope}; reading the pixels unscaled (as for scl_slope 0 "
            "or NaN)",
            MriflowWarning,
            stacklevel=4,
        )
        return 1.0, 0.0
    if not (np.isfinite(slope) and np.isfinite(inter)):
        raise ImageHeaderError(f"{path}: scl_slope/scl_inter are not finite ({slope}, {inter})")
    return slope, inter


def _check_voxel_sizes(path: Path, written: Any) -> None:
    """When the affine comes from pixdim (qform, or no sform/qform at all), zero or
    non-finite voxel sizes make it singular; nibabel quietly replaces them by 1."""
    sform = int(written["sform_code"]) if "sform_code" in written else 0
    if sform > 0:
        return
    sizes = np.asarray(written["pixdim"][1:4], dtype=np.float64)
    ndim = int(written["dim"][0])
    used = sizes[: min(ndim, 3)]
    if not np.all(np.isfinite(used)) or np.any(used == 0):
        raise GeometryError(
            f"{path}: voxel sizes (pixdim) are {tuple(float(v) for v in used)}; with no sform "
            "they define the affine, which would be singular"
        )


def _check_offset(path: Path, image: Any, proxy: Any) -> None:
    """Pixels of a single-file NIfTI cannot start inside its header."""
    header = image.header
    if not getattr(header, "is_single", False):
        return
    minimum = header.single_vox_offset
    if int(proxy.offset) < minimum:
        raise ImageHeaderError(
            f"{path}: vox_offset is {int(proxy.offset)}, inside the {minimum}-byte header; "
            "the pixels would include header bytes"
        )


def _check_length(path: Path, layout: _Layout) -> None:
    needed = layout.offset + layout.nbytes
    data_path = Path(layout.path)
    size = data_path.stat().st_size
    if not layout.gzipped:
        if size < needed:
            raise CorruptDataError(
                f"{data_path}: file is {size} bytes but its header needs {needed} "
                f"({layout.offset} offset + {layout.nbytes} pixel bytes); the file is truncated"
            )
        return
    if size < 18:
        raise CorruptDataError(f"{data_path}: gzip file of {size} bytes is truncated")
    with data_path.open("rb") as stream:
        stream.seek(-4, os.SEEK_END)
        isize = int.from_bytes(stream.read(4), "little")
    if isize != needed % 2**32:
        raise CorruptDataError(
            f"{data_path}: gzip trailer says the stream inflates to {isize} bytes (mod 2**32) "
            f"but the header describes {needed}; the file is truncated, has trailing bytes, "
            "or is damaged (a multi-member gzip file must be recompressed as one stream)"
        )


def _time_axis(header: Any, sidecar: dict[str, Any], n: int) -> tuple[np.ndarray | None, float]:
    """``t`` coordinates in seconds (or None when the file gives no timing) and the step."""
    if isinstance(sidecar.get("VolumeTiming"), list) and len(sidecar["VolumeTiming"]) == n:
        times = np.asarray(sidecar["VolumeTiming"], dtype=np.float64)
        step = float(np.median(np.diff(times))) if n > 1 else 0.0
        return times, step
    zooms = header.get_zooms()
    step = float(zooms[3]) if len(zooms) > 3 else 0.0
    units = header.get_xyzt_units()[1] if hasattr(header, "get_xyzt_units") else "unknown"
    step *= _TIME_UNIT_SECONDS.get(units, 1.0)
    if step <= 0 and isinstance(sidecar.get("RepetitionTime"), int | float):
        step = float(sidecar["RepetitionTime"])
    if step <= 0 or not np.isfinite(step):
        return None, 0.0
    return np.arange(n) * step, step


def _read_sidecar(path: Path) -> dict[str, Any]:
    json_path = _sibling(path, ".json")
    if not json_path.is_file():
        return {}
    try:
        content = json.loads(json_path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise SidecarError(f"{json_path}: invalid JSON sidecar ({exc})") from exc
    if not isinstance(content, dict):
        raise SidecarError(
            f"{json_path}: a JSON sidecar must hold an object, got {type(content).__name__}"
        )
    return content


def _gradients(path: Path, shape: tuple[int, ...], affine: np.ndarray) -> dict[str, Any] | None:
    from mriflow.io.gradients import bvecs_to_world, read_bval_bvec

    bval, bvec = _sibling(path, ".bval"), _sibling(path, ".bvec")
    if not bval.is_file() and not bvec.is_file():
        return None
    if not (bval.is_file() and bvec.is_file()):
        found, missing = (bval, bvec) if bval.is_file() else (bvec, bval)
        raise SidecarError(f"{found}: found, but {missing.name} is missing; both are needed")
    if len(shape) != 4:
        raise SidecarError(f"{bval}: gradient files next to an image of shape {shape} (not 4D)")
    bvals, bvecs = read_bval_bvec(bval, bvec, shape[3])
    return gradient_coords(bvals, bvecs_to_world(bvecs, affine))


def _guess_kind(path: Path, header: Any, raw_dtype: np.dtype, scaled: bool) -> str:
    with contextlib.suppress(KeyError, ValueError, TypeError):
        if int(header["intent_code"]) == _INTENT_LABEL:
            return "label"
    if raw_dtype.kind in "iub" and not scaled:
        words = set(re.split(r"[_.\-]", _stem(path).name.lower()))
        if words & _LABEL_WORDS:
            return "label"
    return "scalar"


def auto_chunks(shape: tuple[int, ...], dims: tuple[str, ...], itemsize: int) -> dict[str, int]:
    """Chunks that keep every non-spatial axis whole and split space into on-disk slabs.

    NIfTI stores ``i`` fastest, so slabs along ``k`` (then ``j``) are contiguous runs in every
    volume: cheap to read, also through a gzip index. The target size is dask's
    ``array.chunk-size``.
    """
    import dask
    from dask.utils import parse_bytes

    target = parse_bytes(dask.config.get("array.chunk-size"))
    sizes = dict(zip(dims, shape, strict=True))
    chunks = dict(sizes)
    per_voxel_column = itemsize * int(
        np.prod([n for d, n in sizes.items() if d not in SPATIAL_DIMS])
    )
    for split in ("k", "j", "i"):
        if split not in sizes:
            continue
        others = int(np.prod([chunks[d] for d in SPATIAL_DIMS if d in sizes and d != split]))
        slab = per_voxel_column * others
        chunks[split] = int(max(1, min(sizes[split], target // max(slab, 1))))
        if chunks[split] > 1 or slab <= target:
            break
    return chunks


def open_nifti(
    path: str | os.PathLike[str],
    *,
    kind: str | None = None,
    modality: str | None = None,
) -> xr.DataArray:
    """Open a NIfTI/Analyze file as a lazy image (not yet dask-chunked; see ``open_image``)."""
    path = Path(path).expanduser()
    image, written = _load_header(path)
    header = image.header
    shape = _check_dims(path, header)
    proxy = image.dataobj
    data_path = Path(proxy.file_like) if isinstance(proxy.file_like, str) else path
    try:
        affine = check_affine(image.affine, str(path))
        raw_dtype = np.dtype(proxy.dtype)
        slope, inter = float(proxy.slope), float(proxy.inter)
    except MriflowError:
        raise
    except Exception as exc:
        raise ImageHeaderError(f"{path}: cannot interpret the header ({exc})") from exc
    if raw_dtype.fields is not None:
        raise ImageFormatError(
            f"{path}: RGB/RGBA pixels (datatype {int(header['datatype'])}) are not supported "
            "yet; store colour maps with a separate channel axis"
        )
    slope, inter = _checked_scaling(path, written, slope, inter)
    _check_voxel_sizes(path, written)
    _check_offset(path, image, proxy)
    if not data_path.is_file():
        raise MissingFileError(f"{data_path}: the pixel file of {path.name} is missing")
    stat = data_path.stat()
    layout = _Layout(
        path=str(data_path.resolve()),
        shape=shape,
        dtype=raw_dtype.str,
        offset=int(proxy.offset),
        order=proxy.order,
        gzipped=data_path.name.lower().endswith(".gz"),
        signature=(stat.st_size, stat.st_mtime_ns),
    )
    _check_length(path, layout)
    array = NiftiArray(layout, slope, inter)

    sidecar = _read_sidecar(path)
    gradients = _gradients(path, shape, affine)
    dims = default_dims(len(shape), "volume" if gradients else "t")
    coords: dict[str, Any] = dict(gradients or {})
    zooms = [float(z) for z in header.get_zooms()]
    if len(shape) >= 4 and dims[3] == "t":
        times, step = _time_axis(header, sidecar, shape[3])
        zooms[3] = step
        if times is not None:
            coords["t"] = ("t", times)
    scaled = not (slope == 1.0 and inter == 0.0)
    if kind is None:
        kind = _guess_kind(path, header, raw_dtype, scaled)
    if kind not in KINDS:
        raise ValueError(f"{path}: kind must be one of {KINDS}, got {kind!r}")

    attrs: dict[str, Any] = {
        "modality": modality or "unknown",
        "source": {"path": str(path), "format": _format_name(image)},
        "zooms": tuple(zooms),
        "space_units": "mm",
        "time_units": "s",
    }
    if sidecar:
        attrs["sidecar"] = sidecar
    encoding = {
        "dtype": raw_dtype.newbyteorder("="),
        "scl_slope": slope,
        "scl_inter": inter,
        "sform_code": int(header["sform_code"]) if "sform_code" in header else 0,
        "qform_code": int(header["qform_code"]) if "qform_code" in header else 0,
        "source": str(path),
        # what names the pixels: a deterministic dask token for this file's contents
        "token": (layout, slope, inter),
    }
    variable = xr.Variable(dims, indexing.LazilyIndexedArray(array), encoding=encoding)
    return make_image(
        variable,
        affine,
        dims,
        name=_stem(path).name,
        kind=kind,
        attrs=attrs,
        coords=coords,
        source=str(path),
    )


def _format_name(image: Any) -> str:
    import nibabel as nib

    for cls, name in (
        (nib.Nifti2Image, "nifti2"),
        (nib.Nifti1Image, "nifti1"),
        (nib.Nifti2Pair, "nifti2-pair"),
        (nib.Nifti1Pair, "nifti1-pair"),
        (nib.Spm2AnalyzeImage, "analyze-spm2"),
        (nib.Spm99AnalyzeImage, "analyze-spm99"),
        (nib.AnalyzeImage, "analyze"),
    ):
        if isinstance(image, cls):
            return name
    return type(image).__name__


# --- writing ------------------------------------------------------------------------------------


class _MemmapTarget:
    """A ``da.store`` target that opens the output per task, so it pickles to any worker."""

    def __init__(self, path: str, dtype: np.dtype, shape: tuple[int, ...], offset: int) -> None:
        self.path, self.dtype, self.shape, self.offset = path, dtype, shape, offset

    def __setitem__(self, key: Any, value: np.ndarray) -> None:
        out = np.memmap(self.path, self.dtype, "r+", self.offset, self.shape, order="F")
        out[key] = value
        out.flush()
        del out


def _raw_encoding(image: xr.DataArray, dtype: Any) -> tuple[np.dtype, float, float]:
    """On-disk dtype and scaling: the source file's when the values still fit it."""
    if dtype is not None:
        return np.dtype(dtype), 1.0, 0.0
    enc = image.encoding
    raw = enc.get("dtype")
    slope, inter = float(enc.get("scl_slope", 1.0)), float(enc.get("scl_inter", 0.0))
    if raw is not None and np.dtype(image.dtype) == _scaled_dtype(np.dtype(raw), slope, inter):
        return np.dtype(raw), slope, inter
    native = np.dtype(image.dtype)
    if native == np.bool_:
        return np.dtype(np.uint8), 1.0, 0.0
    if native == np.float16:
        return np.dtype(np.float32), 1.0, 0.0
    return native, 1.0, 0.0


def _unscale(block: np.ndarray, slope: float, inter: float, dtype: np.dtype) -> np.ndarray:
    if slope == 1.0 and inter == 0.0:
        return block.astype(dtype, copy=False)
    values = np.rint((block - inter) / slope)
    info = np.iinfo(dtype) if dtype.kind in "iu" else None
    if info is not None:
        values = np.clip(values, info.min, info.max)
    return values.astype(dtype)


def _header_for(
    image: xr.DataArray,
    affine: np.ndarray,
    shape: tuple[int, ...],
    dtype: np.dtype,
    slope: float,
    inter: float,
) -> Any:
    import warnings

    import nibabel as nib

    big = max(shape) > 32767 or image.attrs.get("source", {}).get("format") == "nifti2"
    header = nib.Nifti2Header() if big else nib.Nifti1Header()
    header.set_data_shape(shape)
    header.set_data_dtype(dtype)
    header.set_xyzt_units("mm", "sec")
    enc = image.encoding
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        header.set_qform(affine, code=int(enc.get("qform_code") or 1))
        header.set_sform(affine, code=int(enc.get("sform_code") or 1))
    zooms = list(voxel_sizes(affine)) + [1.0] * (len(shape) - 3)
    if len(shape) > 3:
        zooms[3] = _step_of(image, shape)
    header.set_zooms(zooms)
    if slope != 1.0 or inter != 0.0:
        header.set_slope_inter(slope, inter)
    if image.attrs.get("kind") == "label":
        header.set_intent("label")
    header["descrip"] = f"mriflow {__version__}".encode()
    header.set_data_offset(header.single_vox_offset)
    return header


def _step_of(image: xr.DataArray, shape: tuple[int, ...]) -> float:
    fourth = [d for d in image.dims if d not in SPATIAL_DIMS][:1]
    if fourth and fourth[0] in image.coords and image.sizes[fourth[0]] > 1:
        values = np.asarray(image.coords[fourth[0]].values, dtype=np.float64)
        if values.ndim == 1:
            return float(abs(values[1] - values[0]))
    zooms = image.attrs.get("zooms", ())
    return float(zooms[3]) if len(zooms) > 3 else 0.0


def to_nifti(
    image: xr.DataArray,
    path: str | os.PathLike[str],
    *,
    dtype: Any = None,
    compresslevel: int = 1,
    sidecars: bool = True,
) -> Path:
    """Write ``image`` to ``.nii`` or ``.nii.gz``, computing it chunk by chunk.

    The data go to a temporary file beside ``path`` (memory-mapped, written by parallel dask
    tasks; for ``.nii.gz`` then compressed as one stream) and are renamed into place only when
    complete, so a crash never leaves a half-written image. The on-disk dtype and scaling of
    the source file are kept when the values still fit them; spatial dims come first, in array
    order, with the view's effective affine as sform and qform. FSL ``.bval``/``.bvec`` (in the
    frame of the written array) and the JSON sidecar are written next to it when ``sidecars``.
    No identity fields are copied: ``descrip`` names mriflow, extensions are dropped.
    """
    import dask.array as dask_array

    path = Path(path).expanduser()
    suffix = nifti_suffix(path)
    if suffix not in (".nii", ".nii.gz"):
        raise ImageFormatError(f"{path}: to_nifti writes .nii or .nii.gz files")
    affine = image.mri.affine
    spatial = image.mri.spatial_dims
    missing = [d for d in SPATIAL_DIMS if d not in spatial]
    others = [d for d in image.dims if d not in SPATIAL_DIMS]
    if len(others) > 4:
        raise ImageFormatError(f"{path}: NIfTI holds at most 7 axes; image dims are {image.dims}")
    ordered = image.expand_dims(missing).transpose(*spatial, *missing, *others)
    shape = tuple(int(n) for n in ordered.shape)
    raw_dtype, slope, inter = _raw_encoding(image, dtype)
    header = _header_for(image, affine, shape, raw_dtype, slope, inter)
    offset = int(header.get_data_offset())

    data = dask_array.asarray(ordered.data)
    data = data.map_blocks(_unscale, slope, inter, raw_dtype, dtype=raw_dtype)
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = path.with_name(path.name + ".partial")
    raw_path = staging if suffix == ".nii" else path.with_name(path.name + ".raw.partial")
    try:
        with raw_path.open("wb") as stream:
            header.write_to(stream)
            stream.truncate(offset + int(np.prod(shape, dtype=np.int64)) * raw_dtype.itemsize)
        region_target = _MemmapTarget(str(raw_path), raw_dtype, shape, offset)
        dask_array.store(data, region_target, lock=False)  # type: ignore[arg-type]
        if suffix == ".nii.gz":
            # no file name in the gzip header (it would be the staging name), no time stamp
            with (
                raw_path.open("rb") as source,
                staging.open("wb") as compressed,
                gzip.GzipFile(
                    filename="", mode="wb", fileobj=compressed, compresslevel=compresslevel, mtime=0
                ) as sink,
            ):
                shutil.copyfileobj(source, sink, 16 << 20)
            raw_path.unlink()
        os.replace(staging, path)
    except BaseException:
        for leftover in (staging, raw_path):
            leftover.unlink(missing_ok=True)
        raise
    if sidecars:
        _write_sidecars(ordered, path)
    return path


def _write_sidecars(image: xr.DataArray, path: Path) -> None:
    if "bval" in image.coords and "volume" in image.dims:
        bvecs = image.mri.bvecs("fsl")
        np.savetxt(_sibling(path, ".bval"), image.mri.bvals[None], fmt="%.10g")
        np.savetxt(_sibling(path, ".bvec"), bvecs.T, fmt="%.10f")
    if image.attrs.get("sidecar"):
        _sibling(path, ".json").write_text(json.dumps(image.attrs["sidecar"], indent=2))
