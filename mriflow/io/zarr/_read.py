"""Opening NIfTI-Zarr stores (ours, other tools', plain OME-Zarr) as lazy images."""

from __future__ import annotations

import io
import warnings
from collections.abc import Mapping
from typing import Any

import numpy as np
import xarray as xr

from mriflow.errors import (
    GeometryError,
    IncompleteStoreError,
    MissingAffineWarning,
    MissingFileError,
    StoreFormatError,
    StoreMetadataError,
)
from mriflow.image.affine import check_affine
from mriflow.image.model import KINDS, make_image
from mriflow.io.zarr import _layout as layout
from mriflow.io.zarr._store import StoreLocation, resolve_store
from mriflow.io.zarr._write import DATASET_FORMAT, IMAGE_FORMAT

__all__ = ["open_zarr"]

_TIME_UNITS = {"sec": 1.0, "msec": 1e-3, "usec": 1e-6}
_SPACE_TO_MM = {"millimeter": 1.0, "micrometer": 1e-3, "nanometer": 1e-6, "meter": 1e3,
                "centimeter": 10.0}  # fmt: skip
_INTENT_LABEL = 1002


def open_zarr(
    store: Any,
    group: str | None = None,
    *,
    level: int = 0,
    chunks: Mapping[str, int] | None = None,
    storage_options: dict[str, Any] | None = None,
) -> xr.DataArray | xr.Dataset:
    """Open a NIfTI-Zarr store lazily: a DataArray for an image, a Dataset for a map group.

    Reads metadata only; pixels come per chunk through dask. Stores written by mriflow come
    back with the same dims, coordinates (``bval``/``bvec_*``, ``t``), affine and attrs;
    ``attrs["source"]`` then names the store and ``attrs["provenance"]`` the original file.
    Stores from other NIfTI-Zarr writers get their affine, scaling and intent from the
    binary NIfTI header; plain OME-Zarr images fall back to the NGFF scale/translation
    (with a :class:`~mriflow.errors.MissingAffineWarning`). ``level`` picks a pyramid level;
    ``chunks`` (by dim name) overrides the store's chunking.
    """
    import zarr

    loc = resolve_store(store, storage_options=storage_options, read_only=True)
    group = (group or "").strip("/")
    name = loc.name + (f" (group {group})" if group else "")
    if loc.local and not loc.fs.exists(loc.path(group)):
        raise MissingFileError(f"{name}: no such store")
    try:
        node = zarr.open(loc.store, path=group or None, mode="r")
    except Exception as exc:
        raise StoreFormatError(
            f"{name}: not a zarr store (no zarr.json or .zgroup metadata found: "
            f"{type(exc).__name__}: {exc})"
        ) from exc
    if not isinstance(node, zarr.Group):
        raise StoreFormatError(f"{name}: is a bare zarr array; expected an image group")
    meta = node.attrs.get("mriflow")
    if isinstance(meta, dict) and meta.get("format") == DATASET_FORMAT:
        return _open_dataset(loc, group, name, node, meta, chunks, level)
    if isinstance(meta, dict) and meta.get("format") == IMAGE_FORMAT:
        if not meta.get("complete"):
            raise IncompleteStoreError(
                f"{name}: the store is incomplete (its write was interrupted); continue it "
                "with resume=True (mriflow convert --resume) before opening it"
            )
        return _open_ours(loc, name, node, meta, level, chunks)
    return _open_foreign(loc, name, node, level, chunks)


def _multiscales(name: str, node: Any) -> dict[str, Any]:
    attrs = dict(node.attrs)
    entries = (attrs.get("ome") or {}).get("multiscales") or attrs.get("multiscales")
    if not entries or not isinstance(entries, list) or "datasets" not in entries[0]:
        raise StoreFormatError(
            f"{name}: a zarr group without OME-NGFF 'multiscales' metadata, so not an image store"
        )
    return entries[0]


def _level_array(name: str, node: Any, multiscale: dict[str, Any], level: int) -> Any:
    datasets = multiscale["datasets"]
    if not -len(datasets) <= level < len(datasets):
        raise StoreFormatError(
            f"{name}: has {len(datasets)} pyramid level(s); level {level} does not exist"
        )
    path = datasets[level]["path"]
    try:
        array = node[path]
    except KeyError:
        raise StoreMetadataError(
            f"{name}: multiscales lists array {path!r} but the store has no such array"
        ) from None
    _refuse_objects(name, path, array)
    return array


def _refuse_objects(name: str, path: str, array: Any) -> None:
    """Images are numbers: an object array would be decoded by unpickling (or similar) data
    read from the store, which can run code. Refuse it before any chunk is read."""
    if np.dtype(array.dtype).kind not in "biufc":  # object, void, bytes, text
        raise StoreFormatError(
            f"{name}: array {path!r} holds {array.dtype} values, not numbers; mriflow does "
            "not decode object arrays (their codecs can run code)"
        )


def _lazy(array: Any, order: tuple[int, ...], chunks: tuple[int, ...] | None) -> Any:
    import dask.array as dask_array

    data = dask_array.from_zarr(array, chunks=chunks or layout.storage_unit(array))
    return data.transpose(order)


def _scale(data: Any, slope: float, inter: float) -> Any:
    from mriflow.io.nifti import _scaled_dtype

    if slope == 1.0 and inter == 0.0:
        return data
    out = _scaled_dtype(np.dtype(data.dtype), slope, inter)

    def apply(block: np.ndarray) -> np.ndarray:
        from nibabel.volumeutils import apply_read_scaling

        return np.asarray(apply_read_scaling(block, slope, inter), dtype=out)

    return data.map_blocks(apply, dtype=out)


def _zarr_chunks(
    chunks: Mapping[str, int] | None, dims: list[str], order: tuple[int, ...], array: Any
) -> tuple[int, ...] | None:
    """Dask chunks in zarr order: ``chunks`` by dim name (-1 = whole axis), else the store's."""
    if not chunks:
        return None
    in_nifti = []
    for dim, axis in zip(dims, order, strict=True):
        size = int(chunks.get(dim, layout.storage_unit(array)[axis]))
        in_nifti.append(int(array.shape[axis]) if size == -1 else size)
    inverse = np.argsort(order)
    return tuple(in_nifti[a] for a in inverse)


def _open_ours(
    loc: StoreLocation,
    name: str,
    node: Any,
    meta: dict[str, Any],
    level: int,
    chunks: Mapping[str, int] | None,
) -> xr.DataArray:
    multiscale = _multiscales(name, node)
    array = _level_array(name, node, multiscale, level)
    dims = list(meta["dims"])
    shape = tuple(int(n) for n in meta["shape"])
    ndim = len(shape)
    if array.ndim != ndim or len(dims) != ndim:
        raise StoreMetadataError(
            f"{name}: metadata describes {ndim} axes {dims} but array {array.path!r} has "
            f"{array.ndim}"
        )
    order = layout.zarr_to_nifti_order(ndim)
    factors = layout.level_factors(shape, max(level + 1, len(multiscale["datasets"])))[level]
    expected = layout.level_shape(shape, factors)
    actual = tuple(int(array.shape[a]) for a in order)
    if actual != expected:
        raise StoreMetadataError(
            f"{name}: array {array.path!r} has shape {actual} (image order) but the metadata "
            f"says {expected}; the store's metadata does not match its arrays"
        )
    recorded = meta.get("chunks")
    if level == 0 and recorded is not None and list(array.chunks) != list(recorded):
        raise StoreMetadataError(
            f"{name}: array {array.path!r} has chunks {tuple(array.chunks)} but the metadata "
            f"says {tuple(recorded)}"
        )
    if np.dtype(array.dtype) != np.dtype(meta["dtype"]):
        raise StoreMetadataError(
            f"{name}: array dtype {array.dtype} but the metadata says {meta['dtype']}"
        )
    try:
        affine = check_affine(np.asarray(meta["affine"], dtype=np.float64), name)
    except GeometryError as exc:
        raise StoreMetadataError(str(exc)) from exc
    affine = layout.level_affine(affine, factors)
    header = _header(name, node)
    if header is not None:
        header_shape = tuple(int(n) for n in header.get_data_shape())
        if header_shape[: len(shape)] != shape:
            raise StoreMetadataError(
                f"{name}: the NIfTI header says shape {header_shape} but the metadata and "
                f"arrays say {shape}"
            )
    slope, inter = float(meta.get("scl_slope", 1.0)), float(meta.get("scl_inter", 0.0))
    data = _scale(_lazy(array, order, _zarr_chunks(chunks, dims, order, array)), slope, inter)
    coords: dict[str, Any] = {}
    for coord_name, coord in meta.get("coords", {}).items():
        values = np.asarray(coord["values"], dtype=np.dtype(coord.get("dtype", "f8")))
        coords[coord_name] = (tuple(coord["dims"]), values)
    attrs = layout.from_json(meta.get("attrs", {}), meta.get("tuple_attrs", []))
    provenance = dict(meta.get("provenance", {}))
    attrs["provenance"] = provenance
    attrs["source"] = {"path": loc.name, "format": "nifti-zarr"}
    encoding = {
        "dtype": np.dtype(meta["dtype"]),
        "scl_slope": slope,
        "scl_inter": inter,
        "sform_code": int(meta.get("encoding", {}).get("sform_code", 1)),
        "qform_code": int(meta.get("encoding", {}).get("qform_code", 1)),
        "preferred_chunks": {
            d: layout.storage_unit(array)[a] for d, a in zip(dims, order, strict=True)
        },
        "source": loc.name,
        "zarr_level": level,
    }
    kind = meta.get("kind", "scalar")
    return make_image(
        data,
        affine,
        dims,
        name=meta.get("name"),
        kind=kind if kind in KINDS else "scalar",
        attrs=attrs,
        coords=coords,
        encoding=encoding,
        source=name,
    )


def _header(name: str, node: Any) -> Any:
    """The binary NIfTI header of a NIfTI-Zarr group, or None when it has none."""
    import nibabel as nib

    if "nifti" not in node:
        return None
    raw = np.asarray(node["nifti"][:], dtype=np.uint8).tobytes()
    size_le = int.from_bytes(raw[:4], "little") if len(raw) >= 4 else 0
    size_be = int.from_bytes(raw[:4], "big") if len(raw) >= 4 else 0
    header_class = nib.Nifti2Header if 540 in (size_le, size_be) else nib.Nifti1Header
    try:
        return header_class.from_fileobj(io.BytesIO(raw), check=False)
    except Exception as exc:
        raise StoreMetadataError(f"{name}: unreadable NIfTI header in 'nifti' ({exc})") from exc


def _open_foreign(
    loc: StoreLocation, name: str, node: Any, level: int, chunks: Mapping[str, int] | None
) -> xr.DataArray:
    multiscale = _multiscales(name, node)
    array = _level_array(name, node, multiscale, level)
    axes = [a["name"] if isinstance(a, dict) else str(a) for a in multiscale.get("axes", [])]
    if len(axes) != array.ndim:
        raise StoreMetadataError(
            f"{name}: multiscales names {len(axes)} axes {axes} but array {array.path!r} has "
            f"{array.ndim}"
        )
    if not {"x", "y", "z"} <= set(axes) or array.ndim > 5:
        raise StoreFormatError(
            f"{name}: axes {axes}; mriflow opens 3D to 5D images with x, y and z axes"
        )
    others = [a for a in axes if a not in ("x", "y", "z")]
    others.sort(key=lambda a: {"t": 0, "c": 1}.get(a, 2))
    order = tuple(axes.index(a) for a in ("x", "y", "z", *others))
    dims = ["i", "j", "k", *("t" if a == "t" else "channel" if a == "c" else a for a in others)]
    header = _header(name, node)
    slope, inter, kind = 1.0, 0.0, "scalar"
    coords: dict[str, Any] = {}
    if header is not None:
        affine = _header_affine(name, header)
        slope, inter = (float(v) if v is not None else np.nan for v in header.get_slope_inter())
        if not np.isfinite(slope) or slope == 0:
            slope, inter = 1.0, 0.0
        inter = inter if np.isfinite(inter) else 0.0
        if int(header["intent_code"]) == _INTENT_LABEL:
            kind = "label"
        zooms = header.get_zooms()
        if "t" in others and len(zooms) > 3 and zooms[3] > 0:
            unit = header.get_xyzt_units()[1]
            step = float(zooms[3]) * _TIME_UNITS.get(unit, 1.0)
            coords["t"] = ("t", np.arange(array.shape[axes.index("t")]) * step)
        header_shape = tuple(int(n) for n in header.get_data_shape())
        actual = tuple(int(array.shape[a]) for a in order)
        if level == 0 and header_shape[:3] != actual[:3]:
            raise StoreMetadataError(
                f"{name}: the NIfTI header says shape {header_shape} but array "
                f"{array.path!r} holds {actual}"
            )
        if level != 0:
            affine = affine @ _ngff_relative(multiscale, level, axes)
    else:
        warnings.warn(
            f"{name}: no NIfTI header and no mriflow metadata, so no affine; using the OME-NGFF "
            "scale/translation (axis-aligned, no rotation); world positions may differ from "
            "the scanner's",
            MissingAffineWarning,
            stacklevel=3,
        )
        affine = _ngff_affine(name, multiscale, level, axes)
    data = _scale(_lazy(array, order, _zarr_chunks(chunks, dims, order, array)), slope, inter)
    attrs = {
        "modality": "unknown",
        "source": {"path": loc.name, "format": "nifti-zarr" if header is not None else "ome-zarr"},
        "space_units": "mm",
        "time_units": "s",
    }
    encoding = {
        "dtype": np.dtype(array.dtype),
        "scl_slope": slope,
        "scl_inter": inter,
        "preferred_chunks": {
            d: layout.storage_unit(array)[a] for d, a in zip(dims, order, strict=True)
        },
        "source": loc.name,
        "zarr_level": level,
    }
    return make_image(
        data,
        affine,
        dims,
        name=multiscale.get("name") or None,
        kind=kind,
        attrs=attrs,
        coords=coords,
        encoding=encoding,
        source=name,
    )


def _header_affine(name: str, header: Any) -> np.ndarray:
    try:
        return check_affine(header.get_best_affine(), name)
    except GeometryError as exc:
        raise StoreMetadataError(str(exc)) from exc


def _transforms(entries: list[dict[str, Any]], ndim: int) -> tuple[np.ndarray, np.ndarray]:
    scale, translation = np.ones(ndim), np.zeros(ndim)
    for entry in entries or []:
        if entry.get("type") == "scale":
            scale = scale * np.asarray(entry["scale"], dtype=np.float64)
            translation = translation * np.asarray(entry["scale"], dtype=np.float64)
        elif entry.get("type") == "translation":
            translation = translation + np.asarray(entry["translation"], dtype=np.float64)
    return scale, translation


def _ngff_affine(name: str, multiscale: dict[str, Any], level: int, axes: list[str]) -> np.ndarray:
    ndim = len(axes)
    dataset = multiscale["datasets"][level]
    scale, translation = _transforms(dataset.get("coordinateTransformations", []), ndim)
    outer_scale, outer_translation = _transforms(
        multiscale.get("coordinateTransformations", []), ndim
    )
    scale, translation = scale * outer_scale, translation * outer_scale + outer_translation
    units = [a.get("unit") if isinstance(a, dict) else None for a in multiscale.get("axes", [])]
    affine = np.eye(4)
    for row, axis in enumerate(("x", "y", "z")):
        position = axes.index(axis)
        factor = _SPACE_TO_MM.get(units[position] or "millimeter", 1.0)
        affine[row, row] = scale[position] * factor
        affine[row, 3] = translation[position] * factor
    try:
        return check_affine(affine, name)
    except GeometryError as exc:
        raise StoreMetadataError(str(exc)) from exc


def _ngff_relative(multiscale: dict[str, Any], level: int, axes: list[str]) -> np.ndarray:
    """Map from level ``level`` voxels to level-0 voxels, from the NGFF transforms."""
    ndim = len(axes)
    datasets = multiscale["datasets"]
    scale0, translation0 = _transforms(datasets[0].get("coordinateTransformations", []), ndim)
    scale1, translation1 = _transforms(datasets[level].get("coordinateTransformations", []), ndim)
    relative = np.eye(4)
    for row, axis in enumerate(("x", "y", "z")):
        position = axes.index(axis)
        relative[row, row] = scale1[position] / scale0[position]
        relative[row, 3] = (translation1[position] - translation0[position]) / scale0[position]
    return relative


def _open_dataset(
    loc: StoreLocation,
    group: str,
    name: str,
    node: Any,
    meta: dict[str, Any],
    chunks: Mapping[str, int] | None,
    level: int,
) -> xr.Dataset:
    if not meta.get("complete"):
        raise IncompleteStoreError(
            f"{name}: the Dataset group is incomplete (its write was interrupted); continue "
            "it with resume=True before opening it"
        )
    variables = {}
    for variable in meta.get("variables", []):
        path = f"{group}/{variable}" if group else variable
        if variable not in node:
            raise StoreMetadataError(f"{name}: lists variable {variable!r} but has no such group")
        image = open_zarr(loc.root if loc.local else loc.store, path, level=level, chunks=chunks)
        if not isinstance(image, xr.DataArray):
            raise StoreMetadataError(f"{name}: variable {variable!r} is not an image group")
        variables[variable] = image
    attrs = layout.from_json(meta.get("attrs", {}), meta.get("tuple_attrs", []))
    if "affine" in meta:
        attrs["affine"] = np.asarray(meta["affine"], dtype=np.float64)
    return xr.Dataset(variables, attrs=attrs)
