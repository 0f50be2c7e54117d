"""Helpers shared by the perfusion fits: acquisition look-ups, time axes, AIF curves."""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any

import numpy as np
import xarray as xr

from mriflow.errors import AcquisitionError, AifError, InvalidSignalWarning
from mriflow.fit.mapper import image_label
from mriflow.image.affine import SPATIAL_DIMS

__all__ = [
    "acquisition_value",
    "apply_voxelwise",
    "check_aif",
    "series_dim",
    "spatial_dims",
]


def spatial_dims(image: xr.DataArray) -> list[str]:
    """The image's spatial dims in array order."""
    return [str(d) for d in image.dims if d in SPATIAL_DIMS]


def series_dim(image: xr.DataArray, preferred: str, label: str) -> str:
    """The one non-spatial axis of ``image`` (``preferred`` when present)."""
    if preferred in image.dims:
        return preferred
    extra = [d for d in image.dims if d not in SPATIAL_DIMS]
    if len(extra) != 1:
        raise AcquisitionError(
            f"{label}: expected one {preferred!r} axis besides space, got dims {image.dims}"
        )
    return str(extra[0])


def acquisition_value(
    image: xr.DataArray,
    explicit: Any,
    field: str,
    bids_key: str,
    argument: str,
) -> Any:
    """``explicit`` if given, else ``attrs["acquisition"][field]["value"]``, else an error.

    The error names the field, its BIDS key and every place looked in.
    """
    if explicit is not None:
        return explicit
    acquisition = image.attrs.get("acquisition") or {}
    entry = acquisition.get(field)
    if isinstance(entry, dict) and entry.get("value") is not None:
        return entry["value"]
    label = image_label(image)
    opened = (
        "attrs['acquisition'] (resolved from the sidecar, DICOM and header)"
        if acquisition
        else "attrs['acquisition'] (absent: open the image with modality=...)"
    )
    raise AcquisitionError(
        f"{label}: {field} ({bids_key}) is missing; looked in the {argument}= argument and "
        f"{opened}; pass {argument}= or add {bids_key} to the BIDS sidecar"
    )


def time_axis(image: xr.DataArray, dim: str, label: str) -> np.ndarray:
    """Seconds of each volume on ``dim`` (its coordinate), or an error when absent."""
    if dim not in image.coords:
        raise AcquisitionError(
            f"{label}: the {dim!r} axis has no time coordinates; open the series with "
            "modality=... and RepetitionTime/VolumeTiming in its sidecar"
        )
    times = np.asarray(image.coords[dim].values, dtype=np.float64)
    if times.ndim != 1 or not np.all(np.isfinite(times)) or np.any(np.diff(times) <= 0):
        raise AcquisitionError(f"{label}: the {dim!r} coordinates must increase strictly")
    return times


def check_aif(aif: Any, times: np.ndarray, label: str) -> np.ndarray:
    """The AIF as a float64 vector on ``times``; an error when its time axis differs."""
    if isinstance(aif, xr.DataArray):
        if aif.ndim != 1:
            raise AifError(f"{label}: the AIF must be one curve, got dims {aif.dims}")
        dim = aif.dims[0]
        if dim in aif.coords and np.issubdtype(aif.coords[dim].dtype, np.number):
            aif_times = np.asarray(aif.coords[dim].values, dtype=np.float64)
            if aif_times.shape != times.shape or not np.allclose(
                aif_times, times, rtol=0, atol=1e-3
            ):
                raise AifError(
                    f"{label}: the AIF time axis ({aif_times.size} points, "
                    f"{aif_times[:1].tolist()}..{aif_times[-1:].tolist()} s) does not match "
                    f"the data's ({times.size} points, {times[0]}..{times[-1]} s)"
                )
        values = np.asarray(aif.values, dtype=np.float64)
    else:
        values = np.asarray(aif, dtype=np.float64)
    if values.shape != times.shape:
        raise AifError(
            f"{label}: the AIF has {values.size} points but the data has {times.size} time "
            "points; the AIF time axis must match the data"
        )
    if not np.all(np.isfinite(values)):
        raise AifError(f"{label}: the AIF holds NaN or infinite values")
    return values


def apply_voxelwise(
    function: Callable[..., int],
    image: xr.DataArray,
    per_voxel: xr.DataArray | None,
    *,
    core_dim: str,
    constants: tuple[Any, ...],
    label: str,
    problem: str,
) -> xr.DataArray:
    """Map ``function(signal, per_voxel, out, *constants) -> n_bad`` over chunks, keeping
    ``core_dim`` (a per-sample transform, unlike :func:`map_voxels` which yields parameters).

    ``per_voxel`` is one value per voxel (or ``None``: zeros). Each chunk with bad voxels
    issues one :class:`InvalidSignalWarning` saying ``problem`` with their count.
    """
    spatial = spatial_dims(image)
    image = image.transpose(*spatial, core_dim)
    if image.chunks is not None and len(image.chunks[-1]) > 1:
        image = image.chunk({core_dim: -1})
    if per_voxel is None:
        per_voxel = xr.zeros_like(image.isel({core_dim: 0}, drop=True), dtype=np.float64)

    def block(signal: np.ndarray, values: np.ndarray) -> np.ndarray:
        shape = signal.shape
        flat = np.ascontiguousarray(signal.reshape(-1, shape[-1]), dtype=np.float64)
        voxel_values = np.ascontiguousarray(
            np.broadcast_to(values, shape[:-1]).reshape(-1), dtype=np.float64
        )
        out = np.empty_like(flat)
        n_bad = int(function(flat, voxel_values, out, *constants))
        if n_bad:
            warnings.warn(
                f"{label}: {n_bad} voxel(s) of a chunk of {flat.shape[0]} {problem}",
                InvalidSignalWarning,
                stacklevel=2,
            )
        return out.reshape(shape)

    return xr.apply_ufunc(
        block,
        image,
        per_voxel.astype(np.float64),
        input_core_dims=[[core_dim], []],
        output_core_dims=[[core_dim]],
        dask="parallelized",
        output_dtypes=[np.float64],
        keep_attrs=False,
    )
