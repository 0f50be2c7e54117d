"""The one voxelwise mapper: a per-voxel numba kernel applied over spatial dask chunks.

A *kernel* is a module-level ``@numba.njit(nogil=True, cache=True)`` function
``kernel(signal, out, *constants) -> int`` that fits every row of ``signal``
``(n_voxels, n_samples)`` (float64, C-contiguous) into the same row of ``out``
``(n_voxels, n_params)`` and returns how many rows held unusable signal (NaN, infinite or
negative); it writes NaN into those rows. Kernels are serial and release the GIL, so dask's
thread pool runs one per thread with no numba threading layer involved (numba's default
``workqueue`` layer is not thread-safe; a serial ``njit`` kernel never touches it), and they
are compiled once per process (``cache=True`` reuses the compiled code across processes).

:func:`map_voxels` keeps the model axis (``volume``, ``sh``, ...) whole in each chunk
(rechunking it if needed), never splits voxels between tasks, and applies the kernel with
``xarray.apply_ufunc(..., dask="parallelized")``: it runs unchanged on the threaded or
processes scheduler and on a ``distributed`` cluster, and the result stays lazy.

Mask convention: voxels outside ``mask`` are not computed; every parameter there holds
``fill`` (``0.0`` by default, as dipy's fits do, so maps and SH fields are safe to
interpolate). Voxels inside the mask whose signal is NaN, infinite or negative fit to NaN, and
each chunk holding such voxels issues one :class:`~mriflow.errors.InvalidSignalWarning` with
their count.
"""

from __future__ import annotations

import importlib
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import xarray as xr

from mriflow.errors import FitInputError, InvalidSignalWarning
from mriflow.image.affine import SPATIAL_DIMS

__all__ = ["align_mask", "image_label", "map_voxels", "output_attrs", "split_params"]

#: Options every kernel is compiled with (one place for numba flags). ``fastmath`` allows
#: only reassociation and fused multiply-add (vectorised sums); NaN/Inf semantics stay exact,
#: since kernels test signals for them.
NUMBA_OPTIONS: dict[str, Any] = {"nogil": True, "cache": True, "fastmath": {"reassoc", "contract"}}


def image_label(image: xr.DataArray) -> str:
    """How messages name an image: its source path, else its name, else ``"image"``."""
    source = image.attrs.get("source")
    if isinstance(source, dict) and source.get("path"):
        return str(source["path"])
    return str(image.name) if image.name is not None else "image"


def align_mask(mask: Any, image: xr.DataArray, label: str) -> xr.DataArray | None:
    """``mask`` as a boolean DataArray on ``image``'s spatial dims and coords, or ``None``.

    A DataArray mask must have the image's spatial shape and (within 1e-4 mm) its affine; a
    numpy/dask mask must have the image's spatial shape in the image's dim order.
    """
    if mask is None:
        return None
    spatial = [d for d in image.dims if d in SPATIAL_DIMS]
    shape = tuple(image.sizes[d] for d in spatial)
    if isinstance(mask, xr.DataArray):
        mask_spatial = [d for d in mask.dims if d in SPATIAL_DIMS]
        if sorted(mask_spatial) != sorted(spatial) or mask.ndim != len(spatial):
            raise FitInputError(
                f"{label}: mask dims {mask.dims} do not match the image's spatial dims {spatial}"
            )
        mask = mask.transpose(*spatial)
        if mask.shape != shape:
            raise FitInputError(
                f"{label}: mask shape {mask.shape} does not match the image grid {shape}"
            )
        if (
            "affine" in mask.attrs
            and "affine" in image.attrs
            and not np.allclose(mask.mri.affine, image.mri.affine, rtol=0, atol=1e-4)
        ):
            raise FitInputError(
                f"{label}: mask affine does not match the image affine "
                f"(mask {np.round(mask.mri.affine, 4).tolist()}, image "
                f"{np.round(image.mri.affine, 4).tolist()}); resample the mask first"
            )
        data = mask.data
    else:
        data = mask
        if tuple(data.shape) != shape:
            raise FitInputError(
                f"{label}: mask shape {tuple(data.shape)} does not match the image grid {shape}"
            )
    coords = {d: image.coords[d] for d in spatial if d in image.coords}
    return xr.DataArray(data, dims=spatial, coords=coords).astype(bool)


def _kernel_reference(kernel: Callable[..., int]) -> Any:
    """``"module:name"`` for a module-level kernel, else the kernel itself.

    Tasks carry the reference, not the dispatcher: a pickled numba dispatcher is rebuilt as
    a new dispatcher in each worker process and compiles again there, while importing it by
    name loads the module's dispatcher and its on-disk cache.
    """
    module, name = getattr(kernel, "__module__", None), getattr(kernel, "__name__", None)
    if module and name:
        try:
            if getattr(importlib.import_module(module), name) is kernel:
                return f"{module}:{name}"
        except (ImportError, AttributeError):
            pass
    return kernel


def _resolve_kernel(reference: Any) -> Callable[..., int]:
    if isinstance(reference, str):
        module, name = reference.split(":")
        return getattr(importlib.import_module(module), name)
    return reference


def _fit_block(
    signal: np.ndarray,
    *maybe_mask: np.ndarray,
    kernel: Any,
    n_params: int,
    constants: tuple[Any, ...],
    fill: float,
    label: str,
) -> np.ndarray:
    """Fit one chunk: select the masked voxels, run the kernel on them, scatter back."""
    spatial_shape = signal.shape[:-1]
    flat = signal.reshape(-1, signal.shape[-1])
    out = np.full((flat.shape[0], n_params), fill, dtype=np.float64)
    if maybe_mask:
        selected = np.flatnonzero(np.broadcast_to(maybe_mask[0], spatial_shape).reshape(-1))
        voxels = np.ascontiguousarray(flat[selected], dtype=np.float64)
    else:
        selected = None
        voxels = np.ascontiguousarray(flat, dtype=np.float64)
    if voxels.shape[0]:
        fitted = np.empty((voxels.shape[0], n_params), dtype=np.float64)
        n_invalid = int(_resolve_kernel(kernel)(voxels, fitted, *constants))
        if selected is None:
            out[:] = fitted
        else:
            out[selected] = fitted
        if n_invalid:
            warnings.warn(
                f"{label}: {n_invalid} voxel(s) of a chunk of {voxels.shape[0]} hold NaN, "
                "infinite or negative signal; they fit to NaN",
                InvalidSignalWarning,
                stacklevel=2,
            )
    return out.reshape((*spatial_shape, n_params))


def map_voxels(
    kernel: Callable[..., int],
    image: xr.DataArray,
    *,
    core_dim: str,
    n_params: int,
    constants: Sequence[Any] = (),
    mask: Any = None,
    fill: float = 0.0,
    label: str | None = None,
    param_dim: str = "param",
) -> xr.DataArray:
    """Apply ``kernel`` to every voxel of ``image`` along ``core_dim``, lazily.

    Returns a float64 DataArray with ``image``'s spatial dims (and coords) followed by
    ``param_dim`` of length ``n_params``. See the module docstring for the kernel contract
    and the mask convention. ``constants`` (design matrices, bases) travel inside the task
    graph once per chunk task; keep them small.
    """
    label = label or image_label(image)
    if core_dim not in image.dims:
        raise FitInputError(f"{label}: image has no {core_dim!r} axis (dims {image.dims})")
    spatial = [d for d in image.dims if d in SPATIAL_DIMS]
    extra = [d for d in image.dims if d not in SPATIAL_DIMS and d != core_dim]
    if extra:
        raise FitInputError(f"{label}: unexpected axes {extra} besides space and {core_dim!r}")
    image = image.transpose(*spatial, core_dim)
    if image.chunks is None or len(image.chunks[image.get_axis_num(core_dim)]) > 1:
        image = image.chunk({core_dim: -1})
    # Only index coords on space survive; gradient coords belong to the model axis.
    image = image.drop_vars([c for c in image.coords if c not in spatial])
    args: list[Any] = [image]
    core_dims: list[list[str]] = [[core_dim]]
    aligned = align_mask(mask, image, label)
    if aligned is not None:
        args.append(aligned)
        core_dims.append([])
    result = xr.apply_ufunc(
        _fit_block,
        *args,
        input_core_dims=core_dims,
        output_core_dims=[[param_dim]],
        dask="parallelized",
        output_dtypes=[np.float64],
        dask_gufunc_kwargs={"output_sizes": {param_dim: n_params}},
        kwargs={
            "kernel": _kernel_reference(kernel),
            "n_params": n_params,
            "constants": tuple(constants),
            "fill": float(fill),
            "label": label,
        },
        keep_attrs=False,
    )
    return result


def output_attrs(image: xr.DataArray, **extra: Any) -> dict[str, Any]:
    """Attrs for a map derived from ``image``: its grid affine and spatial metadata."""
    attrs: dict[str, Any] = {"affine": np.asarray(image.attrs["affine"]), "kind": "scalar"}
    for key in ("zooms", "space_units", "modality"):
        if key in image.attrs:
            attrs[key] = image.attrs[key]
    source = image.attrs.get("source")
    if isinstance(source, dict):
        attrs["derived_from"] = str(source.get("path", ""))
    attrs.update(extra)
    return attrs


def split_params(
    packed: xr.DataArray,
    layout: Sequence[tuple[str, int, tuple[str, ...], tuple[int, ...]]],
    attrs: dict[str, Any],
    param_dim: str = "param",
) -> xr.Dataset:
    """Cut a packed ``param`` axis into named variables.

    ``layout`` holds ``(name, start, dims, shape)``: the variable takes ``prod(shape)``
    parameters from ``start`` and reshapes them into ``dims`` of ``shape`` (``()`` for a
    scalar map).
    """
    spatial = [d for d in packed.dims if d != param_dim]
    variables: dict[str, xr.DataArray] = {}
    for name, start, dims, shape in layout:
        size = int(np.prod(shape)) if shape else 1
        part = packed.isel({param_dim: slice(start, start + size)})
        data = part.data.reshape((*part.shape[:-1], *shape)) if shape else part.data[..., 0]
        variables[name] = xr.DataArray(
            data, dims=(*spatial, *dims), coords={d: packed.coords[d] for d in spatial}
        )
        variables[name].attrs.update(attrs)
    return xr.Dataset(variables)
