"""The NIfTI-Zarr 1.0 layout: array order, OME-NGFF multiscales, the binary NIfTI header.

A store is a zarr group holding

- ``0``, ``1``, ...: the pyramid levels, axes ``[t, [c,]] z, y, x`` (the reverse of NIfTI's
  ``x, y, z, t, c``, so the bytes lie as in the NIfTI file), raw on-disk values (the NIfTI
  ``scl_slope``/``scl_inter`` live in the header, exactly as in a ``.nii``);
- ``nifti``: the binary NIfTI-1/2 header (348 or 540 bytes, ``uint8``);
- group attributes: OME-NGFF ``multiscales`` (0.5 under ``ome`` for zarr v3, 0.4 at the top
  for zarr v2) and our own ``mriflow`` block (exact float64 affine, dims, coordinates such
  as ``bval``/``bvec_*`` and ``t``, attrs, kind, provenance, completion state).
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from mriflow.errors import ImageFormatError

__all__ = [
    "COMPRESSORS",
    "DEFAULT_CHUNK_BYTES",
    "axis_names",
    "default_chunks",
    "default_shards",
    "shard_extent",
    "storage_unit",
    "downsample",
    "from_json",
    "level_affine",
    "level_factors",
    "make_compressor",
    "multiscales",
    "nifti_to_zarr_order",
    "parse_chunks",
    "to_json",
    "zarr_to_nifti_order",
]

COMPRESSORS = ("zstd", "lz4", "zlib", "none")
#: Target uncompressed bytes per chunk when the chunk shape is left out.
DEFAULT_CHUNK_BYTES = 8 << 20
#: Blosc block size (bytes compressed independently inside a chunk).
BLOSC_BLOCK_BYTES = 64 << 10
#: Target uncompressed bytes of an inner chunk of a shard (zarr v3 sharding).
INNER_CHUNK_BYTES = 512 << 10
#: At most this many bytes of whole volumes make one inner chunk's volume range (the
#: converter inflates that many volumes before it compresses their inner chunks).
VOLUME_GROUP_BYTES = 256 << 20


def nifti_to_zarr_order(ndim: int) -> tuple[int, ...]:
    """Axis permutation taking an array in NIfTI order (x, y, z, t, c) to zarr order."""
    return {3: (2, 1, 0), 4: (3, 2, 1, 0), 5: (3, 4, 2, 1, 0)}[ndim]


def zarr_to_nifti_order(ndim: int) -> tuple[int, ...]:
    """Inverse of :func:`nifti_to_zarr_order`."""
    return tuple(int(a) for a in np.argsort(nifti_to_zarr_order(ndim)))


def axis_names(ndim: int) -> list[str]:
    """OME/NIfTI-Zarr axis names of a zarr array with ``ndim`` axes."""
    return {3: ["z", "y", "x"], 4: ["t", "z", "y", "x"], 5: ["t", "c", "z", "y", "x"]}[ndim]


def parse_chunks(text: str | Sequence[int] | None) -> tuple[int, ...] | None:
    """``"64,64,64"`` (or a sequence) -> chunk sizes in image order ``i, j, k[, extra...]``."""
    if text is None:
        return None
    values = text.split(",") if isinstance(text, str) else list(text)
    try:
        chunks = tuple(int(v) for v in values)
    except (TypeError, ValueError):
        raise ValueError(f"chunks must be integers like 64,64,64, got {text!r}") from None
    if not 1 <= len(chunks) <= 5 or any(c < 1 for c in chunks):
        raise ValueError(f"chunks must be 1 to 5 positive integers (i,j,k[,...]), got {text!r}")
    return chunks


def default_chunks(
    shape: Sequence[int], itemsize: int, requested: Sequence[int] | None = None
) -> tuple[int, ...]:
    """Chunks in NIfTI order: cubic spatial blocks, every other axis whole.

    Whole non-spatial axes (``volume``, ``t``) are what voxelwise fits want; the block side
    is the largest multiple of 8 keeping a chunk under :data:`DEFAULT_CHUNK_BYTES`.
    ``requested`` overrides the spatial sizes (and the extra axes when given for them).
    """
    shape = [int(n) for n in shape]
    column = itemsize * int(np.prod(shape[3:], dtype=np.int64))
    side = int((DEFAULT_CHUNK_BYTES / max(column, 1)) ** (1 / 3))
    side = max(8 * (side // 8), min(side, 8), 1)
    chunks = [min(side, n) for n in shape[:3]] + shape[3:]
    for axis, size in enumerate(requested or ()):
        if axis < len(chunks):
            chunks[axis] = min(int(size), shape[axis])
    return tuple(chunks)


def default_shards(
    shape: Sequence[int], itemsize: int, chunks: Sequence[int], zarr_format: int
) -> tuple[int, ...] | None:
    """Inner chunks (NIfTI order) of a sharded layout, or None for plain chunks.

    zarr v3 stores of 4D images whose chunks hold every volume are *sharded*: a shard is
    the chunk (spatial block x all volumes, one file, what fits read), split inside into
    inner chunks of the same spatial block x a range of volumes, each compressed on its
    own. A volume range of a ``.nii.gz`` is complete as soon as those volumes are inflated,
    so the converter compresses inner chunks while later volumes are still being inflated.
    The range is the fewest volumes making an inner chunk of about
    :data:`INNER_CHUNK_BYTES`, and no more volumes than :data:`VOLUME_GROUP_BYTES` hold.
    The shard's volume extent is then rounded up to a multiple of the range (zarr wants
    shards divisible by inner chunks; the part past the last volume is never written).
    """
    shape = [int(n) for n in shape]
    chunks = [int(c) for c in chunks]
    if zarr_format != 3 or len(shape) != 4 or chunks[3] < shape[3]:
        return None
    block = itemsize * math.prod(chunks[:3])
    volume = itemsize * math.prod(shape[:3])
    volumes = min(math.ceil(INNER_CHUNK_BYTES / block), max(1, VOLUME_GROUP_BYTES // volume))
    if volumes >= shape[3]:
        return None
    return (*chunks[:3], volumes)


def shard_extent(size: int, inner: int) -> int:
    """Length of a shard along an axis of ``size`` split into inner chunks of ``inner``."""
    return inner * math.ceil(size / inner)


def storage_unit(array: Any) -> tuple[int, ...]:
    """The block one file of ``array`` holds, in zarr order, clipped to the shape: the shard
    of a sharded array, else the chunk. Readers fetch and writers write in these units."""
    unit = getattr(array, "shards", None) or array.chunks
    return tuple(min(int(c), int(n)) for c, n in zip(unit, array.shape, strict=True))


def make_compressor(name: str, zarr_format: int) -> Any:
    """The zarr codec for ``name`` (blosc-zstd, blosc-lz4, zlib or none).

    Blosc runs at level 1 with *bit* shuffle and 64 KiB blocks: on DWI-like int16 data
    (bench/convert.py) that compresses about twice as fast as byte shuffle with automatic
    blocks, to the same size or ~1% smaller; zstd level 3 makes stores no smaller for
    twice the time. Conversion of a ``.nii.gz`` is bound by inflate plus compression.
    """
    if name not in COMPRESSORS:
        raise ValueError(f"compressor must be one of {', '.join(COMPRESSORS)}, got {name!r}")
    if name == "none":
        return None
    if zarr_format == 2:
        import numcodecs

        if name == "zlib":
            return numcodecs.Zlib(level=4)
        return numcodecs.Blosc(
            cname=name, clevel=1, shuffle=numcodecs.Blosc.BITSHUFFLE, blocksize=BLOSC_BLOCK_BYTES
        )
    import zarr.codecs

    if name == "zlib":
        return zarr.codecs.GzipCodec(level=4)
    return zarr.codecs.BloscCodec(
        cname=name,  # type: ignore[arg-type]
        clevel=1,
        shuffle="bitshuffle",  # type: ignore[arg-type]
        blocksize=BLOSC_BLOCK_BYTES,
    )


def level_factors(shape: Sequence[int], levels: int) -> list[list[int]]:
    """Per level, the downsampling factor of each spatial axis (NIfTI order ``x, y, z``).

    Each level halves every spatial axis still longer than one voxel (rounding up).
    """
    sizes = [int(n) for n in shape[:3]]
    factors = [[1, 1, 1]]
    for _ in range(1, levels):
        previous = factors[-1]
        factors.append([f * 2 if n > 1 else f for f, n in zip(previous, sizes, strict=True)])
        sizes = [math.ceil(n / 2) for n in sizes]
    return factors


def level_shape(shape: Sequence[int], factors: Sequence[int]) -> tuple[int, ...]:
    """NIfTI-order shape of the level with spatial ``factors``."""
    return tuple(math.ceil(n / f) for n, f in zip(shape[:3], factors, strict=True)) + tuple(
        shape[3:]
    )


def level_affine(affine: np.ndarray, factors: Sequence[int]) -> np.ndarray:
    """Affine of a pyramid level: voxel ``m`` covers level-0 voxels ``m*f .. m*f+f-1``."""
    to_base = np.eye(4)
    for axis, factor in enumerate(factors):
        to_base[axis, axis] = factor
        to_base[axis, 3] = (factor - 1) / 2
    return np.asarray(affine, dtype=np.float64) @ to_base


def multiscales(
    name: str,
    ndim: int,
    dims: Sequence[str],
    spacing: Sequence[float],
    step: float,
    factors: list[list[int]],
    kind: str,
) -> dict[str, Any]:
    """The OME-NGFF ``multiscales`` entry of an image (NIfTI-Zarr flavour).

    ``spacing`` is the level-0 voxel size along NIfTI ``x, y, z``; ``step`` the time step (s)
    when the fourth axis is time. Scales and translations follow NIfTI-Zarr: level ``n`` has
    scale ``f * spacing`` and translation ``(f - 1) / 2 * spacing`` in the scaled voxel frame.
    """
    names = axis_names(ndim)
    extra = list(dims[3:])
    axes: list[dict[str, Any]] = []
    for position, axis in enumerate(names[: ndim - 3]):
        if extra[position] == "t":
            axes.append({"name": axis, "type": "time", "unit": "second"})
        elif position == 0 and ndim == 5:
            axes.append({"name": axis})
        else:
            axes.append({"name": axis, "type": "channel"})
    axes += [{"name": a, "type": "space", "unit": "millimeter"} for a in names[ndim - 3 :]]
    zyx_spacing = list(spacing)[::-1]
    datasets = []
    for level, level_factor in enumerate(factors):
        zyx = level_factor[::-1]
        datasets.append(
            {
                "path": str(level),
                "coordinateTransformations": [
                    {
                        "type": "scale",
                        "scale": [1.0] * (ndim - 3)
                        + [f * s for f, s in zip(zyx, zyx_spacing, strict=True)],
                    },
                    {
                        "type": "translation",
                        "translation": [0.0] * (ndim - 3)
                        + [(f - 1) / 2 * s for f, s in zip(zyx, zyx_spacing, strict=True)],
                    },
                ],
            }
        )
    time_scale = [float(step) if extra[a] == "t" and step > 0 else 1.0 for a in range(ndim - 3)] + [
        1.0
    ] * 3
    return {
        "name": name,
        "type": "mode 2x2x2" if kind == "label" else "mean 2x2x2",
        "axes": axes,
        "datasets": datasets,
        "coordinateTransformations": [{"type": "scale", "scale": time_scale}],
    }


# --- pyramid ------------------------------------------------------------------------------


def downsample(block: np.ndarray, axes: Sequence[int], label: bool) -> np.ndarray:
    """Halve ``block`` along ``axes`` (zarr order), by mean, or by mode for label maps.

    An odd length is padded with its edge voxel first. Means of integer data are rounded
    back to the dtype; labels are never averaged: the most frequent label of each 2x2x2
    block wins (the smallest on ties).
    """
    pad = [(0, block.shape[a] % 2 if a in axes else 0) for a in range(block.ndim)]
    if any(p[1] for p in pad):
        block = np.pad(block, pad, mode="edge")
    shape: list[int] = []
    pooled: list[int] = []
    for axis, size in enumerate(block.shape):
        if axis in axes:
            shape += [size // 2, 2]
            pooled.append(len(shape) - 1)
        else:
            shape.append(size)
    grouped = block.reshape(shape)
    kept = [a for a in range(len(shape)) if a not in pooled]
    grouped = grouped.transpose(*kept, *pooled).reshape(*[shape[a] for a in kept], -1)
    if label:
        ordered = np.sort(grouped, axis=-1)
        counts = (ordered[..., :, None] == ordered[..., None, :]).sum(axis=-1)
        best = np.argmax(counts, axis=-1)
        return np.take_along_axis(ordered, best[..., None], axis=-1)[..., 0]
    mean = grouped.mean(axis=-1, dtype=np.float64)
    if block.dtype.kind in "iu":
        info = np.iinfo(block.dtype)
        return np.clip(np.rint(mean), info.min, info.max).astype(block.dtype)
    if block.dtype.kind == "b":
        return mean >= 0.5
    return mean.astype(block.dtype)


# --- JSON-safe attributes -----------------------------------------------------------------


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, np.ndarray):
        return _plain(value.tolist())
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, float) and not math.isfinite(value):
        return {"float": repr(value)}
    if value is None or isinstance(value, bool | int | float | str):
        return value
    return str(value)


def to_json(attrs: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """JSON-safe copy of ``attrs`` and the names of the top-level attrs that were tuples."""
    plain = _plain(attrs)
    json.dumps(plain, allow_nan=False)
    return plain, sorted(k for k, v in attrs.items() if isinstance(v, tuple))


def from_json(attrs: dict[str, Any], tuples: Sequence[str]) -> dict[str, Any]:
    """Inverse of :func:`to_json`."""

    def restore(value: Any) -> Any:
        if isinstance(value, dict):
            if set(value) == {"float"}:
                return float(value["float"])
            return {k: restore(v) for k, v in value.items()}
        if isinstance(value, list):
            return [restore(v) for v in value]
        return value

    restored = restore(dict(attrs))
    for name in tuples:
        if isinstance(restored.get(name), list):
            restored[name] = tuple(restored[name])
    return restored


def check_axes(name: str, dims: Sequence[str]) -> None:
    """Raise when an image has more axes than NIfTI-Zarr (OME-NGFF) can hold."""
    if len(dims) > 5:
        raise ImageFormatError(
            f"{name}: NIfTI-Zarr stores hold 3 spatial axes and at most 2 others; the image "
            f"has dims {tuple(dims)}"
        )
