"""Building image DataArrays: the one place that knows the data model's names and attrs."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import xarray as xr

from mriflow.errors import GeometryError
from mriflow.image.affine import SPATIAL_DIMS, check_affine

__all__ = ["KINDS", "default_dims", "from_array", "make_image"]

KINDS = ("scalar", "label")
_EXTRA_DIMS = ("t", "channel", "dim6", "dim7")


def default_dims(ndim: int, fourth: str = "t") -> tuple[str, ...]:
    """Dim names for an on-disk array of ``ndim`` axes: ``i, j, k`` then ``fourth``, ...

    ``fourth`` is ``"t"`` for time series and ``"volume"`` for diffusion volumes.
    """
    if not 1 <= ndim <= 7:
        raise GeometryError(f"images have 1 to 7 axes, got {ndim}")
    spatial = SPATIAL_DIMS[: min(ndim, 3)]
    extra = (fourth, *_EXTRA_DIMS[1:])[: max(ndim - 3, 0)]
    return spatial + extra


def make_image(
    data: Any,
    affine: np.ndarray,
    dims: Sequence[str],
    *,
    name: str | None = None,
    kind: str = "scalar",
    attrs: Mapping[str, Any] | None = None,
    coords: Mapping[str, Any] | None = None,
    encoding: Mapping[str, Any] | None = None,
    source: str = "array",
) -> xr.DataArray:
    """Wrap ``data`` (numpy, dask or a lazy ``xarray.Variable``) as an image DataArray.

    Spatial dims get index coordinates ``0..n-1``; ``attrs["affine"]`` holds ``affine``.
    """
    dims = tuple(dims)
    if kind not in KINDS:
        raise ValueError(f"{source}: kind must be one of {KINDS}, got {kind!r}")
    if len(dims) != len(set(dims)):
        raise GeometryError(f"{source}: dims {dims} repeat a name")
    if not any(d in SPATIAL_DIMS for d in dims):
        raise GeometryError(f"{source}: dims {dims} name no spatial axis (i, j or k)")
    shape = data.shape
    if len(shape) != len(dims):
        raise GeometryError(f"{source}: data has {len(shape)} axes but dims are {dims}")
    if any(n < 1 for n in shape):
        raise GeometryError(f"{source}: every axis needs at least one element, shape is {shape}")
    all_coords: dict[str, Any] = {
        d: np.arange(n) for d, n in zip(dims, shape, strict=True) if d in SPATIAL_DIMS
    }
    all_coords.update(coords or {})
    all_attrs = {"affine": check_affine(affine, source), "kind": kind}
    all_attrs.update(attrs or {})
    variable = data if isinstance(data, xr.Variable) else xr.Variable(dims, data)
    variable.attrs.update(all_attrs)
    image = xr.DataArray(variable, coords=all_coords, name=name)
    image.encoding.update({**variable.encoding, **(encoding or {})})
    return image


def from_array(
    data: Any,
    affine: Any,
    dims: Sequence[str] | None = None,
    *,
    kind: str = "scalar",
    name: str | None = None,
    chunks: Any = None,
    bvals: Any = None,
    bvecs: Any = None,
    attrs: Mapping[str, Any] | None = None,
) -> xr.DataArray:
    """Make an image from a numpy or dask array and its voxel-to-world ``affine``.

    ``dims`` defaults to ``i, j, k`` then ``t`` (or ``volume`` when ``bvals`` are given).
    ``chunks`` (any dask spec) turns numpy input into a dask array. ``bvecs`` follow FSL's
    convention, as in a ``.bvec`` file for this array.
    """
    import dask.array as dask_array

    from mriflow.io.gradients import bvecs_to_world

    if chunks is not None:
        data = dask_array.asarray(data).rechunk(chunks)
    elif not hasattr(data, "chunks"):
        data = np.asarray(data)
    if dims is None:
        dims = default_dims(data.ndim, "volume" if bvals is not None else "t")
    coords: dict[str, Any] = {}
    if bvals is not None or bvecs is not None:
        if bvals is None or bvecs is None or "volume" not in dims:
            raise GeometryError("gradients need both bvals and bvecs and a 'volume' dim")
        n = data.shape[list(dims).index("volume")]
        bvals = np.asarray(bvals, dtype=np.float64).ravel()
        bvecs = np.asarray(bvecs, dtype=np.float64)
        if bvecs.shape == (3, n) and n != 3:
            bvecs = bvecs.T
        if bvals.shape != (n,) or bvecs.shape != (n, 3):
            raise GeometryError(
                f"gradients must have one entry per volume ({n}): got bvals {bvals.shape}, "
                f"bvecs {bvecs.shape}"
            )
        coords = gradient_coords(bvals, bvecs_to_world(bvecs, np.asarray(affine, dtype=float)))
    return make_image(data, affine, dims, kind=kind, name=name, attrs=attrs, coords=coords)


def gradient_coords(bvals: np.ndarray, world_bvecs: np.ndarray) -> dict[str, Any]:
    """The ``volume`` coordinates holding a gradient table (directions in world space)."""
    coords: dict[str, Any] = {"bval": ("volume", bvals)}
    for axis, name in enumerate("xyz"):
        coords[f"bvec_{name}"] = ("volume", world_bvecs[:, axis])
    return coords
