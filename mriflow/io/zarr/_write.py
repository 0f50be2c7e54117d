"""Writing images and Datasets of maps to NIfTI-Zarr stores, region by region, resumably."""

from __future__ import annotations

import datetime
import hashlib
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import xarray as xr

from mriflow._version import __version__
from mriflow.errors import (
    GeometryError,
    IncompleteStoreError,
    MriflowError,
    StoreMetadataError,
    StoreWriteError,
)
from mriflow.image.affine import SPATIAL_DIMS, voxel_sizes
from mriflow.io.zarr import _layout as layout
from mriflow.io.zarr._store import StoreLocation, resolve_store, sanitize_location, write_error

__all__ = ["ImagePlan", "file_checksum", "plan_image", "to_zarr", "write_plan"]

IMAGE_FORMAT = "mriflow-image"
DATASET_FORMAT = "mriflow-dataset"
FORMAT_VERSION = 1


@dataclass
class ImagePlan:
    """Everything needed to write one image: raw data in NIfTI order and its metadata."""

    data: Any  # dask array, NIfTI order (x, y, z[, t[, c]]), raw on-disk dtype, native order
    header: bytes  # binary NIfTI header
    meta: dict[str, Any]  # the ``mriflow`` attribute block (without completion state)
    extra_dims: list[str] = field(default_factory=list)

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(int(n) for n in self.data.shape)


def file_checksum(path: str | os.PathLike[str]) -> str:
    """``sha256:<hex>`` of a file, read in 16 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        while block := stream.read(16 << 20):
            digest.update(block)
    return f"sha256:{digest.hexdigest()}"


def _source_info(image: xr.DataArray, checksum: str | None) -> dict[str, Any]:
    source = dict(image.attrs.get("source") or {})
    path = source.get("path") or image.encoding.get("source")
    info: dict[str, Any] = {"path": None, "format": source.get("format"), "checksum": checksum}
    if path:
        info["path"] = sanitize_location(str(path))
        if checksum is None and os.path.isfile(str(path)):
            info["checksum"] = file_checksum(str(path))
    return info


def plan_image(
    image: xr.DataArray,
    name: str,
    *,
    checksum: str | None = None,
    raw: Any = None,
    affine: np.ndarray | None = None,
) -> ImagePlan:
    """Describe ``image`` for writing.

    Spatial dims come first in array order (they become NIfTI x, y, z and read back as
    ``i, j, k``), with the view's effective affine, exactly as :func:`mriflow.to_nifti`
    writes. Values are stored in the source file's dtype with its ``scl_slope``/``scl_inter``
    when they still fit (see ``to_nifti``). ``raw`` replaces the data by already-raw values
    (the converter reads them straight from the file).
    """
    import dask.array as dask_array

    from mriflow.io.nifti import _header_for, _raw_encoding, _step_of, _unscale

    if affine is not None:
        image = image.copy()
        image.attrs["affine"] = np.asarray(affine, dtype=np.float64)
    effective = image.mri.affine
    spatial = list(image.mri.spatial_dims)
    missing = [d for d in SPATIAL_DIMS if d not in spatial]
    others = [str(d) for d in image.dims if d not in SPATIAL_DIMS]
    layout.check_axes(name, [*SPATIAL_DIMS, *others])
    ordered = image.expand_dims(missing).transpose(*spatial, *missing, *others)
    shape = tuple(int(n) for n in ordered.shape)
    raw_dtype, slope, inter = _raw_encoding(image, None)
    if raw is None:
        data = dask_array.asarray(ordered.data)
        data = data.map_blocks(_unscale, slope, inter, raw_dtype, dtype=raw_dtype)
    else:
        data = raw
        raw_dtype = np.dtype(raw.dtype)
    header = _header_for(ordered, effective, shape, raw_dtype, slope, inter)
    step = _step_of(ordered, shape) if len(shape) > 3 else 0.0

    coords: dict[str, Any] = {}
    for coord_name, coord in ordered.coords.items():
        if coord_name in SPATIAL_DIMS or any(d in SPATIAL_DIMS for d in coord.dims):
            continue
        values = np.asarray(coord.values)
        if values.dtype.kind not in "biufUS":
            continue
        coords[str(coord_name)] = {
            "dims": [str(d) for d in coord.dims],
            "values": values.tolist(),
            "dtype": values.dtype.str,
        }
    attrs = {k: v for k, v in image.attrs.items() if k not in ("affine", "kind")}
    if isinstance(attrs.get("source"), dict) and attrs["source"].get("path"):
        attrs["source"] = dict(
            attrs["source"], path=sanitize_location(str(attrs["source"]["path"]))
        )
    json_attrs, tuples = layout.to_json(attrs)
    meta: dict[str, Any] = {
        "format": IMAGE_FORMAT,
        "format_version": FORMAT_VERSION,
        "name": str(image.name) if image.name is not None else None,
        "dims": [*SPATIAL_DIMS, *others],
        "shape": list(shape),
        "dtype": raw_dtype.str,
        "scl_slope": slope,
        "scl_inter": inter,
        "affine": effective.tolist(),
        "kind": str(image.attrs.get("kind", "scalar")),
        "spacing": [float(s) for s in voxel_sizes(effective)],
        "time_step": float(step),
        "coords": coords,
        "attrs": json_attrs,
        "tuple_attrs": tuples,
        "encoding": {
            "sform_code": int(image.encoding.get("sform_code") or 1),
            "qform_code": int(image.encoding.get("qform_code") or 1),
        },
        "provenance": {
            "mriflow_version": __version__,
            "source": _source_info(image, checksum),
        },
    }
    if "bval" in ordered.coords and "volume" in others:
        meta["gradients"] = {
            "bvals": np.asarray(ordered.coords["bval"].values, dtype=float).tolist(),
            "bvecs_ras": ordered.mri.bvecs("ras").tolist(),
        }
    structure = np.asarray(header.structarr).tobytes()
    return ImagePlan(data=data, header=structure, meta=meta, extra_dims=others)


# --- the writer ---------------------------------------------------------------------------


def _parallelism() -> int:
    """Threads that will run the writes: the active distributed client's, else this machine's."""
    from mriflow.cluster import current_client

    client = current_client()
    if client is not None:
        return max(1, sum(client.nthreads().values()))
    return os.cpu_count() or 1


def _regions(shape: Sequence[int], chunks: Sequence[int]) -> list[tuple[slice, ...]]:
    """Chunk-aligned slabs along the zarr ``z`` axis (all other axes whole)."""
    axis = len(shape) - 3
    step = int(chunks[axis])
    regions = []
    for start in range(0, int(shape[axis]), step):
        key = [slice(None)] * len(shape)
        key[axis] = slice(start, min(start + step, int(shape[axis])))
        regions.append(tuple(key))
    return regions


def _aligned(source_chunks: tuple[tuple[int, ...], ...], chunks: Sequence[int]) -> bool:
    """Whether every source block covers whole store chunks (then each block is written by
    the task that computed it, with no rechunking and no data moving between workers)."""
    for blocks, size in zip(source_chunks, chunks, strict=True):
        edges = np.cumsum(blocks)[:-1]
        if np.any(edges % int(size)):
            return False
    return True


def _existing_meta(loc: StoreLocation, group: str) -> dict[str, Any] | None:
    """The ``mriflow`` block of the group at ``group``, None when nothing is there.

    Raises when something other than a zarr group is in the way.
    """
    import zarr

    metadata = [loc.path(group, name) for name in ("zarr.json", ".zgroup", ".zarray")]
    if not any(loc.fs.exists(path) for path in metadata):
        where = loc.path(group)
        if loc.fs.exists(where) and (loc.fs.isfile(where) or loc.fs.ls(where)):
            raise StoreWriteError(
                f"{loc.name}: {where} exists and is not a zarr store; refusing to write over it"
            )
        return None
    try:
        existing = zarr.open_group(loc.store, path=group or None, mode="r")
    except Exception as exc:
        raise StoreWriteError(
            f"{loc.name}: a zarr array or an unreadable group is in the way ({exc})"
        ) from exc
    found: Any = existing.attrs.get("mriflow")
    return dict(found) if isinstance(found, dict) else {"format": "foreign"}


_COMPARED = (
    "format",
    "dims",
    "shape",
    "dtype",
    "chunks",
    "shards",
    "levels",
    "compressor",
    "zarr_format",
)


def _check_resumable(
    loc: StoreLocation, group: str, old: dict[str, Any], new: dict[str, Any]
) -> None:
    for key in _COMPARED:
        if old.get(key) != new.get(key):
            raise StoreMetadataError(
                f"{loc.name}: cannot resume: the unfinished store has {key}={old.get(key)!r} but "
                f"this write has {new.get(key)!r}; pass overwrite=True to start over"
            )
    old_affine = np.asarray(old.get("affine", np.nan), dtype=np.float64)
    if old_affine.shape != (4, 4) or not np.allclose(old_affine, new["affine"], rtol=0, atol=1e-9):
        raise StoreMetadataError(f"{loc.name}: cannot resume: the affine differs")
    old_sum = old.get("provenance", {}).get("source", {}).get("checksum")
    new_sum = new.get("provenance", {}).get("source", {}).get("checksum")
    if old_sum and new_sum and old_sum != new_sum:
        raise StoreMetadataError(
            f"{loc.name}: cannot resume: the source file changed ({old_sum} != {new_sum})"
        )


def _prepare_group(
    loc: StoreLocation, group: str, meta: dict[str, Any], *, resume: bool, overwrite: bool
) -> bool:
    """Make the target group ready; False when it already holds this complete image."""
    existing = _existing_meta(loc, group)
    if existing is not None and overwrite:
        loc.fs.rm(loc.path(group), recursive=True)
        existing = None
    if existing is None:
        return True
    if existing.get("format") not in (IMAGE_FORMAT, DATASET_FORMAT):
        raise StoreWriteError(
            f"{loc.name}: already holds a zarr group not written by mriflow; pass "
            "overwrite=True to replace it"
        )
    if existing.get("complete"):
        if resume:
            _check_resumable(loc, group, existing, meta)
            return False
        raise StoreWriteError(
            f"{loc.name}: already holds a complete image; pass overwrite=True to replace it"
        )
    if not resume:
        raise IncompleteStoreError(
            f"{loc.name}: holds an unfinished write; continue it with resume=True "
            "(mriflow convert --resume) or start over with overwrite=True"
        )
    _check_resumable(loc, group, existing, meta)
    return True


def _level_source(level_array: Any, chunks: Sequence[int], spatial_axes: list[int], label: bool):
    """Lazy next pyramid level from the (complete) previous level in the store."""
    import dask.array as dask_array

    read_chunks = [
        min(2 * int(c), int(n)) if a in spatial_axes else int(c)
        for a, (c, n) in enumerate(zip(chunks, level_array.shape, strict=True))
    ]
    source = dask_array.from_zarr(level_array, chunks=tuple(read_chunks))
    out_chunks = tuple(
        tuple(math.ceil(c / 2) for c in axis_chunks) if a in spatial_axes else axis_chunks
        for a, axis_chunks in enumerate(source.chunks)
    )
    return source.map_blocks(
        layout.downsample,
        spatial_axes,
        label,
        chunks=out_chunks,
        dtype=level_array.dtype,
        meta=np.empty((0,) * level_array.ndim, level_array.dtype),
    )


def write_plan(
    plan: ImagePlan,
    store: Any,
    *,
    group: str | None = None,
    chunks: Sequence[int] | str | None = None,
    compressor: str = "zstd",
    levels: int = 1,
    zarr_format: int = 3,
    resume: bool = False,
    overwrite: bool = False,
    storage_options: dict[str, Any] | None = None,
    staging: Any = None,
    stream: Any = None,
) -> str:
    """Write one planned image into ``store`` (at ``group``); returns the store's name.

    Level 0 is written region by region (slabs of whole chunks along the slowest spatial
    axis), each region's completion marker after its chunks; every further level is
    computed from the previous one read back from the store, the same way. ``staging``
    (a callable) runs only when some level-0 region is still missing, and returns the data
    to write (the converter inflates ``.nii.gz`` files there). ``stream`` (a callable
    ``stream(array, regions, todo, mark_done)``) instead writes the missing level-0 regions
    itself and calls ``mark_done(region_indices)`` as they complete.
    """
    import dask
    import dask.array as dask_array
    import zarr

    loc = (
        store
        if isinstance(store, StoreLocation)
        else resolve_store(store, storage_options=storage_options)
    )
    group = (group or "").strip("/")
    name = loc.name + (f" (group {group})" if group else "")
    if levels < 1:
        raise ValueError(f"{name}: levels must be >= 1, got {levels}")
    if zarr_format not in (2, 3):
        raise ValueError(f"{name}: zarr_format must be 2 or 3, got {zarr_format}")
    shape = plan.shape
    ndim = len(shape)
    dtype = np.dtype(plan.meta["dtype"])
    requested = layout.parse_chunks(chunks) if isinstance(chunks, str) else chunks
    nifti_chunks = layout.default_chunks(shape, dtype.itemsize, requested)
    to_zarr_axes = layout.nifti_to_zarr_order(ndim)
    zarr_chunks = [int(nifti_chunks[a]) for a in to_zarr_axes]
    inner = layout.default_shards(shape, dtype.itemsize, nifti_chunks, zarr_format)
    zarr_shards: list[int] | None = None
    if inner is not None:  # the chunk becomes a shard of inner chunks
        zarr_inner = [int(inner[a]) for a in to_zarr_axes]
        zarr_shards = [
            layout.shard_extent(c, i) for c, i in zip(zarr_chunks, zarr_inner, strict=True)
        ]
        zarr_chunks = zarr_inner
    factors = layout.level_factors(shape, levels)
    label = plan.meta["kind"] == "label"
    meta = dict(plan.meta)
    meta.update(
        chunks=zarr_chunks,
        shards=zarr_shards,
        levels=levels,
        compressor=compressor,
        zarr_format=zarr_format,
        complete=False,
    )
    codec = layout.make_compressor(compressor, zarr_format)
    try:
        if not _prepare_group(loc, group, meta, resume=resume, overwrite=overwrite):
            return loc.name
        root = zarr.open_group(
            loc.store,
            path=group or None,
            mode="a",
            zarr_format=2 if zarr_format == 2 else 3,
        )
        loc.remove_partials(group)
        attrs: dict[str, Any] = dict(root.attrs)
        old: dict[str, Any] = attrs.get("mriflow") or {}
        old_provenance = old.get("provenance", {})
        meta["provenance"]["created"] = old_provenance.get("created") or (
            datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
        )
        source_info = meta["provenance"].get("source", {})
        if not source_info.get("checksum"):
            source_info["checksum"] = old_provenance.get("source", {}).get("checksum")
        ome = layout.multiscales(
            meta["name"] or "image",
            ndim,
            meta["dims"],
            meta["spacing"],
            meta["time_step"],
            factors,
            meta["kind"],
        )
        if zarr_format == 3:
            attrs["ome"] = {"version": "0.5", "multiscales": [ome]}
        else:
            attrs["multiscales"] = [dict(ome, version="0.4")]
        attrs["mriflow"] = meta
        root.attrs.update(attrs)
        names = layout.axis_names(ndim)
        arrays = []
        for level, level_factor in enumerate(factors):
            level_shape = layout.level_shape(shape, level_factor)
            zarr_shape = tuple(level_shape[a] for a in to_zarr_axes)
            level_chunks = tuple(min(c, n) for c, n in zip(zarr_chunks, zarr_shape, strict=True))
            level_shards = None
            if zarr_shards is not None:  # spatial sizes as the inner chunks', volumes as given
                level_shards = (zarr_shards[0], *level_chunks[1:])
                level_chunks = (zarr_chunks[0], *level_chunks[1:])
            arrays.append(
                _require_array(
                    root, str(level), zarr_shape, level_chunks, dtype, codec, names, level_shards
                )
            )
        if "nifti" not in root:
            header = np.frombuffer(plan.header, dtype=np.uint8)
            nifti = root.create_array(
                "nifti", shape=header.shape, chunks=header.shape, dtype="u1", compressors=None
            )
            nifti[:] = header

        threads = _parallelism()
        for level, array in enumerate(arrays):
            unit = layout.storage_unit(array)
            regions = _regions(array.shape, unit)
            done = loc.done_regions(group, level)
            todo = [r for r in range(len(regions)) if r not in done]
            if not todo:
                continue
            if level == 0 and stream is not None:
                stream(array, regions, todo, lambda chosen: loc.mark_done(group, 0, chosen))
                continue
            if level == 0:
                data = staging() if staging is not None else plan.data
                source = dask_array.asarray(data).transpose(to_zarr_axes)
                if not _aligned(source.chunks, unit):
                    source = source.rechunk(unit)
            else:
                spatial_axes = [
                    a
                    for a in range(ndim - 3, ndim)
                    if arrays[level - 1].shape[a] > 1
                    and array.shape[a] < arrays[level - 1].shape[a]
                ]
                source = _level_source(arrays[level - 1], unit, spatial_axes, label)
            per_region = math.prod(
                math.ceil(n / c)
                for a, (n, c) in enumerate(zip(array.shape, unit, strict=True))
                if a != ndim - 3
            )
            batch = max(1, math.ceil(2 * threads / per_region))
            for start in range(0, len(todo), batch):
                chosen = todo[start : start + batch]
                stores = [
                    dask_array.store(
                        source[regions[r]], array, regions=regions[r], lock=False, compute=False
                    )
                    for r in chosen
                ]
                dask.compute(*stores)
                loc.mark_done(group, level, chosen)
        meta["complete"] = True
        root.attrs["mriflow"] = meta
        loc.clear_progress(group)
    except MriflowError:
        raise
    except (OSError, PermissionError) as exc:
        raise write_error(name, exc) from exc
    except ValueError as exc:
        if "read-only" in str(exc) or "read only" in str(exc):
            raise write_error(name, exc) from exc
        raise
    return loc.name


def _require_array(
    root: Any,
    key: str,
    shape: tuple[int, ...],
    chunks: tuple[int, ...],
    dtype: np.dtype,
    codec: Any,
    names: list[str],
    shards: tuple[int, ...] | None = None,
) -> Any:
    """The level array ``key``, created unless a matching one exists (resume)."""
    if key in root:
        array = root[key]
        found_shards = getattr(array, "shards", None)
        if (
            tuple(array.shape) != shape
            or tuple(array.chunks) != chunks
            or (tuple(found_shards) if found_shards else None) != shards
            or array.dtype != dtype
        ):
            raise StoreMetadataError(
                f"{key}: existing array has shape {array.shape}, chunks {array.chunks}, shards "
                f"{found_shards}, dtype {array.dtype}; expected {shape}, {chunks}, {shards}, "
                f"{dtype}"
            )
        return array
    options: dict[str, Any] = {
        "shape": shape,
        "chunks": chunks,
        "dtype": dtype,
        "compressors": codec,
        "fill_value": 0,
        "attributes": {"_ARRAY_DIMENSIONS": names},
    }
    if root.metadata.zarr_format == 3:
        options["dimension_names"] = names
        if shards is not None:
            options["shards"] = shards
    else:
        options["chunk_key_encoding"] = {"name": "v2", "separator": "/"}
    return root.create_array(key, **options)


def _image_affine(image: xr.DataArray, dataset: xr.Dataset | None, key: str) -> np.ndarray | None:
    if "affine" in image.attrs:
        return None
    if dataset is not None and "affine" in dataset.attrs:
        return np.asarray(dataset.attrs["affine"], dtype=np.float64)
    raise GeometryError(
        f"{key}: no 'affine' in its attrs (nor in the Dataset's); images written to zarr need "
        "their voxel-to-world affine"
    )


def to_zarr(
    obj: xr.DataArray | xr.Dataset,
    store: Any,
    *,
    group: str | None = None,
    chunks: Sequence[int] | str | None = None,
    compressor: str = "zstd",
    levels: int = 1,
    zarr_format: int = 3,
    resume: bool = False,
    overwrite: bool = False,
    storage_options: dict[str, Any] | None = None,
) -> str:
    """Write an image (or a Dataset of maps) to a NIfTI-Zarr store, chunk by chunk.

    ``store`` is a path, an fsspec URL (``memory://``, ``file://``, ``s3://`` with
    ``storage_options``, which are never written into the store) or a zarr ``LocalStore``.
    ``chunks`` are spatial block sizes in image order (``"64,64,64"``); non-spatial axes stay
    whole unless given too. The default is cubic blocks of about 8 MiB times whole
    non-spatial axes. ``compressor``: ``"zstd"`` (blosc-zstd, default), ``"lz4"``, ``"zlib"``,
    ``"none"``. ``levels`` > 1 adds a multiscale pyramid (means; label maps by mode).

    Writes run through dask (the default scheduler, or a ``distributed`` client when one is
    active): memory is bounded by the chunks in flight. Each region gets a completion marker
    and the store is marked complete last; an interrupted write is continued with
    ``resume=True`` without rewriting finished regions. A Dataset is written as one group
    per variable below ``group``. Returns the store's name (credentials removed).
    """
    if isinstance(obj, xr.Dataset):
        return _dataset_to_zarr(
            obj,
            store,
            group=group,
            chunks=chunks,
            compressor=compressor,
            levels=levels,
            zarr_format=zarr_format,
            resume=resume,
            overwrite=overwrite,
            storage_options=storage_options,
        )
    loc = resolve_store(store, storage_options=storage_options)
    plan = plan_image(obj, loc.name)
    return write_plan(
        plan,
        loc,
        group=group,
        chunks=chunks,
        compressor=compressor,
        levels=levels,
        zarr_format=zarr_format,
        resume=resume,
        overwrite=overwrite,
    )


def _dataset_to_zarr(dataset: xr.Dataset, store: Any, *, group: str | None, **options: Any) -> str:
    import zarr

    loc = resolve_store(store, storage_options=options.pop("storage_options"))
    group = (group or "").strip("/")
    resume, overwrite = options["resume"], options["overwrite"]
    names = [str(n) for n in dataset.data_vars]
    json_attrs, tuples = layout.to_json({k: v for k, v in dataset.attrs.items() if k != "affine"})
    meta: dict[str, Any] = {
        "format": DATASET_FORMAT,
        "format_version": FORMAT_VERSION,
        "variables": names,
        "attrs": json_attrs,
        "tuple_attrs": tuples,
        "complete": False,
        "provenance": {"mriflow_version": __version__},
    }
    if "affine" in dataset.attrs:
        meta["affine"] = np.asarray(dataset.attrs["affine"], dtype=np.float64).tolist()
    try:
        existing = _existing_meta(loc, group)
        if existing is not None and overwrite:
            loc.fs.rm(loc.path(group), recursive=True)
            existing = None
        if existing is not None:
            if existing.get("format") != DATASET_FORMAT:
                raise StoreWriteError(
                    f"{loc.name}: group {group or '/'} already holds something other than a "
                    "mriflow Dataset; pass overwrite=True to replace it"
                )
            if existing.get("complete") and not resume:
                raise StoreWriteError(
                    f"{loc.name}: group {group or '/'} already holds a complete Dataset; pass "
                    "overwrite=True to replace it"
                )
            if not existing.get("complete") and not resume:
                raise IncompleteStoreError(
                    f"{loc.name}: group {group or '/'} holds an unfinished write; continue it "
                    "with resume=True or start over with overwrite=True"
                )
            if existing.get("variables") != names:
                raise StoreMetadataError(
                    f"{loc.name}: cannot resume: the store has variables "
                    f"{existing.get('variables')} but the Dataset has {names}"
                )
        root = zarr.open_group(
            loc.store, path=group or None, mode="a", zarr_format=options["zarr_format"]
        )
        if existing is None:
            root.attrs["mriflow"] = meta
    except MriflowError:
        raise
    except (OSError, PermissionError) as exc:
        raise write_error(loc.name, exc) from exc
    for name in names:
        variable = dataset[name]
        affine = _image_affine(variable, dataset, f"{loc.name}:{name}")
        plan = plan_image(variable, f"{loc.name}:{name}", affine=affine)
        write_plan(plan, loc, group=f"{group}/{name}" if group else name, **options)
    meta["complete"] = True
    root.attrs["mriflow"] = meta
    return loc.name
