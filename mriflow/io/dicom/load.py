"""Assemble discovered DICOM frames into a lazy 3D/4D image.

Geometry comes from the headers only: slices are ordered by their position along the slice
normal (ImageOrientationPatient x ImagePositionPatient), never by file name or
InstanceNumber, and the voxel-to-world affine is built from IOP/IPP/PixelSpacing and
converted from DICOM LPS to RAS+. The array follows nibabel's ``nicom`` convention: axis
``i`` walks down the rows of a slice, ``j`` along a row, ``k`` along the slice normal.

Pixels are read inside dask tasks, modelled on ``dask_image.imread``: a small object array
holds one read description per block (a file, a frame group of a multi-frame file, or a
whole mosaic), and ``map_blocks`` turns each into its pixels.
"""

from __future__ import annotations

import os
import warnings
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import dask
import dask.array as da
import numpy as np
import xarray as xr
from dask.base import tokenize
from dask.utils import parse_bytes

from mriflow.errors import (
    CorruptDataError,
    DicomGeometryWarning,
    GeometryError,
    ImageFormatError,
    ImageHeaderError,
    MriflowError,
)
from mriflow.image.affine import voxel_sizes
from mriflow.image.model import gradient_coords, make_image
from mriflow.io.dicom import vendors
from mriflow.io.dicom.discover import DicomSeries, FrameRecord, discover_dicom

__all__ = ["DicomGeometryWarning", "load_dicom_series", "open_dicom_directory"]

_LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])
_POSITION_TOLERANCE_MM = 0.01
_ORIENTATION_TOLERANCE = 1e-4
_SPACING_TOLERANCE = 0.05  # relative spread of slice gaps accepted as regular
_GAP_FACTOR = 1.5
_ALIGNMENT_TOLERANCE_MM = 0.05  # a gap this much wider than the typical one is a missing slice


@dataclass(frozen=True)
class _Read:
    """What one dask block reads: a file, which frames of it, and how to scale them."""

    path: str
    frames: tuple[int, ...] | None
    n_mosaic: int
    slopes: tuple[float, ...]
    intercepts: tuple[float, ...]
    philips_scales: tuple[float | None, ...]
    rows: int
    columns: int
    dtype: str
    offsets: tuple[int, ...] | None = None
    stored_dtype: str = ""
    unused_bits: int = 0


# --- public entry points ----------------------------------------------------------------------


def load_dicom_series(
    series: DicomSeries | Sequence[DicomSeries],
    *,
    chunks: Any = "auto",
    kind: str = "scalar",
    modality: str | None = None,
) -> xr.DataArray:
    """Load one series, or per-timepoint series stacked in time, as a lazy image.

    ``series`` is a :class:`DicomSeries` from :func:`mriflow.discover_dicom`, or a list of them
    (e.g. every ``dynamic_frame`` of one ``group_key``), each one volume, stacked into 4D in
    order of their ``trigger_time_hint`` (else acquisition time, else series number).
    Returns dims ``(i, j, k)``, ``(i, j, k, t)`` with ``t`` in seconds, or ``(i, j, k,
    volume)`` with ``bval``/``bvec_x``/``bvec_y``/``bvec_z`` coordinates (world RAS+) for
    diffusion. Pixels stay on disk until computed, read by one dask task per block:
    ``chunks="auto"`` keeps the 4th axis whole in every block (as ``open_image`` does for
    NIfTI) with as many slices as fit dask's ``array.chunk-size`` (mosaics, which hold whole
    volumes, group volumes instead); ``chunks="file"`` gives one block per file (a
    multi-frame volume or a mosaic is one block); any other dask chunk spec rechunks.
    """
    members = [series] if isinstance(series, DicomSeries) else list(series)
    if not members or not all(isinstance(s, DicomSeries) for s in members):
        raise TypeError("load_dicom_series takes a DicomSeries or a non-empty list of them")
    label = _label(members)
    records = _stacked_records(members)
    _check_problems(label, records)
    image = _assemble(label, records, members, chunks == "file")
    if chunks not in ("auto", "file", None):
        image = image.chunk(chunks)
    image.attrs["kind"] = kind
    if modality is not None:
        image.attrs["modality"] = modality
    return image


def open_dicom_directory(
    directory: str | os.PathLike[str],
    *,
    chunks: Any = "auto",
    kind: str | None = None,
    modality: str | None = None,
) -> xr.DataArray:
    """Open a directory holding exactly one DICOM image series (used by ``open_image``)."""
    found = discover_dicom(directory)
    if not found:
        raise ImageFormatError(
            f"{directory}: no DICOM image series found (files that are not DICOM images are "
            "skipped; enable INFO logging to see why each was skipped)"
        )
    if len(found) > 1:
        listing = "; ".join(f"{s.uid} ({s.description or 'no description'})" for s in found)
        raise ImageFormatError(
            f"{directory}: holds {len(found)} DICOM series ({listing}); open one of its "
            "folders, or pick a series from mriflow.discover_dicom(path) and load it with "
            "mriflow.load_dicom_series"
        )
    return load_dicom_series(found[0], chunks=chunks, kind=kind or "scalar", modality=modality)


# --- checks -----------------------------------------------------------------------------------


def _label(members: Sequence[DicomSeries]) -> str:
    uids = [s.uid for s in members]
    if len(uids) <= 3:
        return "series " + ", ".join(uids)
    return f"series {uids[0]}, ... ({len(uids)} series)"


def _files(records: Sequence[FrameRecord], limit: int = 6) -> str:
    names = sorted({r.path if r.frame is None else f"{r.path}[frame {r.frame}]" for r in records})
    shown = ", ".join(names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")


def _stacked_records(members: Sequence[DicomSeries]) -> list[FrameRecord]:
    """All records; with several series, each is tagged with its place in time."""
    if len(members) == 1:
        return list(members[0].records)

    def order(item: DicomSeries) -> tuple[float, float, float]:
        times = [r.acquisition_time for r in item.records if r.acquisition_time is not None]
        hint = item.trigger_time_hint
        return (
            hint if hint is not None else np.inf,
            min(times) if times else np.inf,
            item.series_number if item.series_number is not None else np.inf,
        )

    ordered = sorted(members, key=order)
    records: list[FrameRecord] = []
    for index, item in enumerate(ordered):
        records.extend(replace(r, volume_hint=float(index)) for r in item.records)
    return records


def _check_problems(label: str, records: Sequence[FrameRecord]) -> None:
    broken: dict[str, list[FrameRecord]] = defaultdict(list)
    for record in records:
        if record.problem:
            broken[record.problem].append(record)
    if broken:
        details = "; ".join(f"{_files(rs)}: {problem}" for problem, rs in broken.items())
        raise CorruptDataError(f"{label}: cannot load: {details}")
    sizes: dict[tuple[int, int], list[FrameRecord]] = defaultdict(list)
    for record in records:
        sizes[(record.rows, record.columns)].append(record)
    if len(sizes) > 1:
        details = "; ".join(f"{r}x{c} in {_files(rs)}" for (r, c), rs in sizes.items())
        raise ImageHeaderError(f"{label}: mixed matrix sizes in one series: {details}")
    missing = [
        r for r in records if r.orientation is None or r.position is None or not r.pixel_spacing
    ]
    if missing:
        raise GeometryError(
            f"{label}: {_files(missing)} lack ImageOrientationPatient, ImagePositionPatient or "
            "PixelSpacing, so the slices have no position in space"
        )
    orientations = np.array([r.orientation for r in records], dtype=np.float64)
    reference = orientations[0]
    differs = np.abs(orientations - reference).max(axis=1) > _ORIENTATION_TOLERANCE
    odd = [r for r, bad in zip(records, differs, strict=True) if bad]
    if odd:
        raise GeometryError(
            f"{label}: mixed slice orientations in one series: {_files(odd)} differ from "
            f"{records[0].path} (ImageOrientationPatient {list(reference)})"
        )
    spacings = np.array([r.pixel_spacing for r in records], dtype=np.float64)
    spacing = spacings[0]
    differs = (np.abs(spacings - spacing) > 1e-4 * np.abs(spacing)).any(axis=1)
    odd = [r for r, bad in zip(records, differs, strict=True) if bad]
    if odd:
        raise GeometryError(
            f"{label}: mixed PixelSpacing in one series: {_files(odd)} differ from "
            f"{records[0].path} ({list(spacing)})"
        )
    _check_decoders(label, records)
    mosaic = {r.n_mosaic for r in records}
    if len(mosaic) > 1:
        raise ImageHeaderError(
            f"{label}: mixes mosaic and plain images (slices per mosaic: {sorted(mosaic)})"
        )


def _check_decoders(label: str, records: Sequence[FrameRecord]) -> None:
    """Fail at load time, not inside a dask task, when pydicom cannot decode the pixels."""
    from pydicom.pixels import get_decoder

    for syntax in sorted({r.transfer_syntax for r in records if r.compressed}):
        files = [r for r in records if r.transfer_syntax == syntax]
        try:
            decoder = get_decoder(syntax)
        except NotImplementedError:
            decoder = None
        if decoder is None or not decoder.is_available:
            missing = "; ".join(decoder.missing_dependencies) if decoder is not None else ""
            raise ImageFormatError(
                f"{label}: {_files(files)}: pixel data is compressed with transfer syntax "
                f"{syntax} and no installed pydicom decoder can read it"
                + (f" ({missing})" if missing else "")
            )


# --- geometry ---------------------------------------------------------------------------------


def _volume_key(record: FrameRecord) -> tuple[float, ...]:
    """Order of a frame among the frames at one slice position (time, then acquisition)."""

    def value(number: float | None) -> float:
        return -np.inf if number is None else float(number)

    return (
        value(record.volume_hint),
        value(record.temporal_position),
        value(record.acquisition_time),
        value(record.trigger_time),
        value(record.acquisition_number),
        value(record.instance_number),
        value(record.echo_number),
    )


def _identity(record: FrameRecord) -> tuple[Any, ...]:
    """Records with equal identity at one position are the same image stored twice."""
    return (*_volume_key(record), record.bvalue, record.bvector)


def _in_plane_axes(record: FrameRecord) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    orientation = np.asarray(record.orientation, dtype=np.float64)
    row_cosine, column_cosine = orientation[:3], orientation[3:]
    normal = np.cross(column_cosine, row_cosine)
    return column_cosine, row_cosine, normal


def _group_positions(
    label: str, records: Sequence[FrameRecord], normal: np.ndarray
) -> list[list[FrameRecord]]:
    """Records grouped by slice position along ``normal``, groups in ascending position."""
    distance = np.array([np.dot(normal, r.position) for r in records])  # type: ignore[arg-type]
    order = np.argsort(distance, kind="stable")
    groups: list[list[FrameRecord]] = []
    last = None
    for index in order:
        if last is None or distance[index] - last > _POSITION_TOLERANCE_MM:
            groups.append([])
        groups[-1].append(records[index])
        last = distance[index]
    return groups


def _drop_duplicates(label: str, groups: list[list[FrameRecord]]) -> list[list[FrameRecord]]:
    cleaned = []
    dropped: list[FrameRecord] = []
    for group in groups:
        seen: dict[tuple[Any, ...], FrameRecord] = {}
        for record in sorted(group, key=lambda r: (r.path, r.frame or 0)):
            if _identity(record) in seen:
                dropped.append(record)
            else:
                seen[_identity(record)] = record
        cleaned.append(sorted(seen.values(), key=_volume_key))
    if dropped:
        warnings.warn(
            f"{label}: {_files(dropped)} repeat images already present at the same slice "
            "position with the same timing; the repeats were ignored",
            DicomGeometryWarning,
            stacklevel=4,
        )
    return cleaned


def _check_counts(label: str, groups: list[list[FrameRecord]], normal: np.ndarray) -> int:
    counts = [len(g) for g in groups]
    expected = max(set(counts), key=counts.count)
    odd = [g for g in groups if len(g) != expected]
    if odd:
        group = odd[0]
        where = float(np.dot(normal, group[0].position))  # type: ignore[arg-type]
        raise GeometryError(
            f"{label}: {len(group)} image(s) at slice position {where:.3f} mm "
            f"({_files(group)}) where the other positions have {expected}: images are "
            "missing or duplicated with different timing"
        )
    return expected


def _check_spacing(label: str, groups: list[list[FrameRecord]], normal: np.ndarray) -> None:
    if len(groups) < 2:
        return
    distance = np.array([np.dot(normal, g[0].position) for g in groups])  # type: ignore[arg-type]
    gaps = np.diff(distance)
    typical = float(np.median(gaps))
    wide = np.flatnonzero(gaps > _GAP_FACTOR * typical)
    if wide.size:
        index = int(wide[0])
        raise GeometryError(
            f"{label}: missing slice(s): gap of {gaps[index]:.3f} mm between "
            f"{_files(groups[index][:1])} and {_files(groups[index + 1][:1])} where slices are "
            f"{typical:.3f} mm apart"
        )
    if gaps.max() - gaps.min() > _SPACING_TOLERANCE * typical:
        index = int(np.argmax(np.abs(gaps - typical)))
        raise GeometryError(
            f"{label}: inconsistent slice spacing ({gaps.min():.3f} to {gaps.max():.3f} mm); "
            f"e.g. {gaps[index]:.3f} mm between {_files(groups[index][:1])} and "
            f"{_files(groups[index + 1][:1])}"
        )


def _check_alignment(label: str, groups: list[list[FrameRecord]]) -> None:
    """Slice positions must lie on one line, evenly spaced (no in-plane jumps)."""
    if len(groups) < 3:
        return
    positions = np.array([g[0].position for g in groups], dtype=np.float64)
    step = (positions[-1] - positions[0]) / (len(groups) - 1)
    expected = positions[0] + np.outer(np.arange(len(groups)), step)
    error = np.linalg.norm(positions - expected, axis=1)
    if error.max() > _ALIGNMENT_TOLERANCE_MM:
        index = int(np.argmax(error))
        raise GeometryError(
            f"{label}: slice positions do not lie on one line: {_files(groups[index][:1])} is "
            f"{error[index]:.3f} mm off the line through the first and last slices "
            "(ImagePositionPatient shifted in-plane)"
        )


def _slice_affine(groups: list[list[FrameRecord]], normal: np.ndarray) -> np.ndarray:
    """LPS affine of the sorted slices (first volume)."""
    first = groups[0][0]
    column_cosine, row_cosine, _ = _in_plane_axes(first)
    row_spacing, column_spacing = first.pixel_spacing  # type: ignore[misc]
    affine = np.eye(4)
    affine[:3, 0] = column_cosine * row_spacing
    affine[:3, 1] = row_cosine * column_spacing
    if len(groups) > 1:
        last = groups[-1][0]
        affine[:3, 2] = (np.asarray(last.position) - np.asarray(first.position)) / (len(groups) - 1)
    else:
        thickness = first.spacing_between_slices or first.slice_thickness or 1.0
        affine[:3, 2] = normal * thickness
    affine[:3, 3] = first.position  # type: ignore[assignment]
    return affine


# --- assembly ---------------------------------------------------------------------------------


def _assemble(
    label: str,
    records: list[FrameRecord],
    members: Sequence[DicomSeries],
    per_file: bool,
) -> xr.DataArray:
    first = records[0]
    _, _, normal = _in_plane_axes(first)
    if first.n_mosaic:
        volumes = [[r] for r in _drop_duplicates(label, [records])[0]]
        positions = np.array([r.position for r in records])
        if not np.allclose(positions, positions[0], atol=_POSITION_TOLERANCE_MM):
            raise GeometryError(
                f"{label}: mosaic volumes at different positions ({_files(records)}); "
                "each mosaic file must cover the same slab"
            )
        if first.mosaic_affine is None:
            raise GeometryError(f"{label}: {first.path}: the mosaic geometry is incomplete")
        lps = np.asarray(first.mosaic_affine).reshape(4, 4)
    else:
        groups = _drop_duplicates(label, _group_positions(label, records, normal))
        n_volumes = _check_counts(label, groups, normal)
        _check_spacing(label, groups, normal)
        _check_alignment(label, groups)
        lps = _slice_affine(groups, normal)
        volumes = [[g[v] for g in groups] for v in range(n_volumes)]
    affine = _LPS_TO_RAS @ lps
    plan, k_chunks, t_chunks = _plan_blocks(volumes, per_file)
    data = _lazy_pixels(plan, k_chunks, t_chunks, first.rows, first.columns)
    coords, fourth = _volume_coords(label, volumes, members, affine)
    if len(volumes) == 1 and fourth != "volume":
        data = data[..., 0]
        dims: tuple[str, ...] = ("i", "j", "k")
    else:
        dims = ("i", "j", "k", fourth)
    zooms = [float(z) for z in voxel_sizes(affine)]
    if fourth == "t" and len(volumes) > 1 and "t" in coords:
        times = np.asarray(coords["t"][1])
        zooms.append(float(np.median(np.diff(times))) if times.size > 1 else 0.0)
    elif len(dims) > 3:
        zooms.append(1.0)
    acquisition = members[0].acquisition()
    if len(members) > 1:
        acquisition.pop("SeriesDescription", None)
    source_path = _common_directory(records)
    attrs: dict[str, Any] = {
        "modality": "dwi" if fourth == "volume" else "unknown",
        "source": {"path": source_path, "format": "dicom"},
        "zooms": tuple(zooms),
        "space_units": "mm",
        "time_units": "s",
        "acquisition": acquisition,
    }
    encoding = {
        "dtype": np.dtype(np.result_type(*[np.dtype(r.dtype) for r in records])).newbyteorder("="),
        "preferred_chunks": dict(zip(dims, data.chunksize, strict=True)),
        "source": source_path,
    }
    name = members[0].description if len(members) == 1 else _stem_description(members[0])
    return make_image(
        data,
        affine,
        dims,
        name=name or "dicom",
        attrs=attrs,
        coords=coords,
        encoding=encoding,
        source=label,
    )


def _stem_description(series: DicomSeries) -> str:
    from mriflow.io.dicom.discover import _FRAME_SUFFIX

    return _FRAME_SUFFIX.sub("", series.description).strip()


def _common_directory(records: Sequence[FrameRecord]) -> str:
    return os.path.commonpath([str(Path(r.path).parent) for r in records])


def _output_dtype(records: Sequence[FrameRecord]) -> np.dtype:
    scaled = any(
        r.rescale_slope != 1.0 or r.rescale_intercept != 0.0 or r.philips_scale_slope is not None
        for r in records
    )
    if scaled:
        return np.dtype(np.float32)
    return np.dtype(np.result_type(*[np.dtype(r.dtype) for r in records])).newbyteorder("=")


def _read_of(frames: Sequence[FrameRecord], n_mosaic: int = 0) -> _Read:
    first = frames[0]
    direct = not n_mosaic and all(r.pixel_offset is not None for r in frames)
    return _Read(
        offsets=tuple(int(r.pixel_offset) for r in frames) if direct else None,  # type: ignore[arg-type]
        stored_dtype=first.stored_dtype,
        unused_bits=first.unused_bits,
        path=first.path,
        frames=None if first.frame is None else tuple(int(r.frame) for r in frames),  # type: ignore[arg-type]
        n_mosaic=n_mosaic,
        slopes=tuple(r.rescale_slope for r in frames),
        intercepts=tuple(r.rescale_intercept for r in frames),
        philips_scales=tuple(r.philips_scale_slope for r in frames),
        rows=first.rows,
        columns=first.columns,
        dtype=_output_dtype(frames).str,
    )


def _slab_reads(slab: Sequence[FrameRecord], dtype: np.dtype) -> tuple[_Read, ...]:
    """Reads for a run of one volume's slices: one frame group when they share a multi-frame
    file (or are a mosaic), else one read per file."""
    first = slab[0]
    if first.n_mosaic:
        return (replace(_read_of(slab, first.n_mosaic), dtype=dtype.str),)
    if first.frame is not None and len({r.path for r in slab}) == 1:
        return (replace(_read_of(slab), dtype=dtype.str),)
    return tuple(replace(_read_of([r]), dtype=dtype.str) for r in slab)


def _runs(total: int, size: int) -> list[tuple[int, int]]:
    return [(start, min(start + size, total)) for start in range(0, total, size)]


def _readers() -> int:
    """How many blocks to read at once: dask's ``num_workers`` setting, else the CPU count."""
    return max(1, int(dask.config.get("num_workers", None) or os.cpu_count() or 1))


def _plan_blocks(
    volumes: list[list[FrameRecord]], per_file: bool
) -> tuple[np.ndarray, tuple[int, ...], tuple[int, ...]]:
    """The block plan: an object array ``(k blocks, t blocks)`` of reads, and the chunks.

    Like NIfTI's ``chunks="auto"``, a block keeps the 4th axis whole and takes as many
    consecutive slices as fit dask's ``array.chunk-size`` (at least one), split further so
    there is a block per reader (dask's ``num_workers``, else one per CPU) to read files in
    parallel. A mosaic holds a whole volume, so
    mosaic blocks keep all slices and group volumes instead.
    ``per_file`` gives one block per file (per slice and volume; a whole mosaic or
    multi-frame volume stays one block).
    """
    records = [r for v in volumes for r in v]
    dtype = _output_dtype(records)
    first = volumes[0][0]
    mosaic = bool(first.n_mosaic)
    n_volumes = len(volumes)
    n_slices = first.n_mosaic if mosaic else len(volumes[0])
    slice_bytes = first.rows * first.columns * max(dtype.itemsize, 4)
    limit = parse_bytes(dask.config.get("array.chunk-size"))
    whole_volume = mosaic or (first.frame is not None and per_file)
    if per_file:
        slices_per_block = n_slices if whole_volume else 1
        volumes_per_block = 1
    elif mosaic:
        slices_per_block = n_slices
        fitting = limit // (slice_bytes * n_slices)
        spread = -(-n_volumes // _readers())
        volumes_per_block = max(1, min(n_volumes, fitting, spread))
    else:
        # at most what fits the chunk size, and at least one block per CPU to read in parallel
        fitting = limit // (slice_bytes * n_volumes)
        spread = -(-n_slices // _readers())
        slices_per_block = max(1, min(n_slices, fitting, spread))
        volumes_per_block = n_volumes
    slabs = _runs(n_slices, slices_per_block)
    groups = _runs(n_volumes, volumes_per_block)
    plan = np.empty((len(slabs), len(groups)), dtype=object)
    for row, (k0, k1) in enumerate(slabs):
        for column, (t0, t1) in enumerate(groups):
            plan[row, column] = tuple(
                _slab_reads(volumes[v] if mosaic else volumes[v][k0:k1], dtype)
                for v in range(t0, t1)
            )
    return plan, tuple(k1 - k0 for k0, k1 in slabs), tuple(t1 - t0 for t0, t1 in groups)


def _lazy_pixels(
    plan: np.ndarray,
    k_chunks: tuple[int, ...],
    t_chunks: tuple[int, ...],
    rows: int,
    columns: int,
) -> da.Array:
    """``(rows, columns, slices, volumes)`` dask array, one task per planned block."""
    reads = [read for block in plan.ravel() for volume in block for read in volume]
    dtype = np.dtype(reads[0].dtype)
    stamps = [(path, os.stat(path).st_mtime_ns) for path in sorted({r.path for r in reads})]
    plan_token = tokenize(plan.tolist())
    plan_array = da.from_array(plan, chunks=1, name=f"dicom-plan-{plan_token}")
    return da.map_blocks(
        _read_block,
        plan_array,
        new_axis=[0, 1],
        chunks=((rows,), (columns,), k_chunks, t_chunks),
        dtype=dtype,
        meta=np.empty((0, 0, 0, 0), dtype=dtype),
        name=f"dicom-{tokenize(plan_token, stamps)}",
    )


def _read_block(plan: np.ndarray) -> np.ndarray:
    """Pixels of one block ``(rows, columns, slices, volumes)``, in physical values."""
    block: tuple[tuple[_Read, ...], ...] = plan.ravel()[0]
    volumes = []
    for reads in block:
        parts = [_scaled_pixels(read) for read in reads]
        volumes.append(parts[0] if len(parts) == 1 else np.concatenate(parts, axis=2))
    return np.stack(volumes, axis=-1)


def _scaled_pixels(read: _Read) -> np.ndarray:
    """One read's slices ``(rows, columns, n)`` in physical values and the output dtype."""
    pixels = _read_pixels(read)
    if pixels.shape[:2] != (read.rows, read.columns):
        raise CorruptDataError(
            f"{read.path}: pixel data has shape {pixels.shape[:2]}, the header says "
            f"{read.rows}x{read.columns}"
        )
    if np.dtype(read.dtype).kind != "f":
        return pixels.astype(read.dtype, copy=False)
    slopes = np.asarray(read.slopes)
    intercepts = np.asarray(read.intercepts)
    out = pixels.astype(np.float64) * slopes + intercepts
    philips = np.array([np.nan if s is None else s for s in read.philips_scales])
    if np.any(np.isfinite(philips)):
        # Philips floating point value: FP = (PV * RS + RI) / (RS * SS)
        divisor = np.where(np.isfinite(philips), slopes * philips, 1.0)
        out = out / divisor
    return out.astype(read.dtype, copy=False)


def _read_pixels(read: _Read) -> np.ndarray:
    """Raw stored values ``(rows, columns, slices)`` of one read."""
    import pydicom
    from pydicom.pixels import iter_pixels

    try:
        if read.offsets is not None:
            return _read_native(read)
        if read.n_mosaic:
            dataset = pydicom.dcmread(read.path)
            _, dicomwrappers = vendors._nicom()
            wrapper = dicomwrappers.MosaicWrapper(dataset, None, read.n_mosaic)
            return np.asarray(wrapper.get_unscaled_data())
        if read.frames is None:
            return pydicom.dcmread(read.path).pixel_array[..., None]
        wanted = sorted(set(read.frames))
        frames = dict(zip(wanted, iter_pixels(read.path, indices=wanted), strict=True))
        return np.stack([frames[f] for f in read.frames], axis=-1)
    except MriflowError:
        raise
    except Exception as exc:
        raise CorruptDataError(
            f"{read.path}: cannot decode the pixel data ({type(exc).__name__}: {exc})"
        ) from exc


def _read_native(read: _Read) -> np.ndarray:
    """Natively encoded frames read straight from their offsets (found at discovery).

    Unused high bits (BitsStored < BitsAllocated) are cleared, or sign-extended for signed
    data, by shifting up and back as PS3.5 8.1.1 requires (and as pydicom does).
    """
    dtype = np.dtype(read.stored_dtype)
    count = read.rows * read.columns
    frames = []
    with open(read.path, "rb") as file:
        for offset in read.offsets or ():
            file.seek(offset)
            frame = np.frombuffer(file.read(count * dtype.itemsize), dtype=dtype)
            if frame.size != count:
                raise CorruptDataError(
                    f"{read.path}: pixel data ends early (file changed since discovery?)"
                )
            frames.append(frame.reshape(read.rows, read.columns))
    pixels = np.stack(frames, axis=-1).astype(dtype.newbyteorder("="), copy=False)
    if read.unused_bits:
        pixels = np.right_shift(np.left_shift(pixels, read.unused_bits), read.unused_bits)
    return pixels


# --- the fourth axis --------------------------------------------------------------------------


def _volume_coords(
    label: str,
    volumes: list[list[FrameRecord]],
    members: Sequence[DicomSeries],
    affine: np.ndarray,
) -> tuple[dict[str, Any], str]:
    """Coordinates of the fourth axis and its name (``t`` or ``volume``)."""
    diffusion = any(r.bvalue for v in volumes for r in v)
    if diffusion:
        bvals = np.zeros(len(volumes))
        world = np.zeros((len(volumes), 3))
        for index, volume in enumerate(volumes):
            values = {r.bvalue for r in volume}
            if len(values) > 1:
                raise ImageHeaderError(
                    f"{label}: volume {index} mixes b-values {sorted(values, key=str)} across "
                    f"its slices ({_files(volume)})"
                )
            bvals[index] = volume[0].bvalue or 0.0
            vector = volume[0].bvector
            if bvals[index] > 0 and (vector is None or not np.any(vector)):
                warnings.warn(
                    f"{label}: volume {index} ({_files(volume[:1])}) has b={bvals[index]:g} but "
                    "no gradient direction (a trace or isotropic image?); its direction is 0",
                    DicomGeometryWarning,
                    stacklevel=5,
                )
                vector = (0.0, 0.0, 0.0)
            world[index] = _LPS_TO_RAS[:3, :3] @ np.asarray(vector or (0.0, 0.0, 0.0))
        return gradient_coords(bvals, world), "volume"
    if len(volumes) < 2:
        return {}, "t"
    times = _volume_times(volumes, members)
    return ({"t": ("t", times)} if times is not None else {}), "t"


def _volume_times(
    volumes: list[list[FrameRecord]], members: Sequence[DicomSeries]
) -> np.ndarray | None:
    """Seconds of each volume: TT= hints, else acquisition times, else trigger times."""
    if len(members) > 1:
        hints = sorted(s.trigger_time_hint for s in members if s.trigger_time_hint is not None)
        if len(hints) == len(members) == len(volumes):
            return np.asarray(hints, dtype=np.float64)
    acquisition = [
        [r.acquisition_time for r in v if r.acquisition_time is not None] for v in volumes
    ]
    if all(acquisition):
        starts = np.array([min(a) for a in acquisition])
        if np.ptp(starts) > 0:
            return starts - starts[0]
    trigger = [[r.trigger_time for r in v if r.trigger_time is not None] for v in volumes]
    if all(trigger):
        starts = np.array([min(t) for t in trigger]) / 1000.0
        if np.ptp(starts) > 0:
            return starts - starts[0]
    return None
