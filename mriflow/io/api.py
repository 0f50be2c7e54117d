"""``open_image``: one entry point for every image source."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import xarray as xr

from mriflow.errors import ImageFormatError, MissingFileError
from mriflow.image.model import from_array
from mriflow.io.nifti import NIFTI_SUFFIXES, nifti_suffix

__all__ = ["open_image"]


def open_image(
    source: Any,
    *,
    chunks: Any = "auto",
    kind: str | None = None,
    modality: str | None = None,
    affine: Any = None,
    dims: Any = None,
) -> xr.DataArray:
    """Open an image lazily as a dask-backed ``xarray.DataArray``.

    ``source`` is a path to a NIfTI-1/2 (``.nii``, ``.nii.gz``), NIfTI pair or Analyze file,
    a NIfTI-Zarr store (``*.zarr`` or an fsspec URL, see :func:`mriflow.open_zarr`), or a
    numpy/dask array together with ``affine`` (see :func:`mriflow.from_array`).

    Only headers are read here. ``chunks="auto"`` keeps every non-spatial axis (``volume``,
    ``t``) whole in each chunk and splits space into slabs that are contiguous on disk, sized
    by dask's ``array.chunk-size``; any dask chunk spec (dict by dim name, tuple, ``None`` for
    no dask) is honoured. ``kind`` is ``"scalar"`` or ``"label"``; left out, NIfTI label
    intent or an integer image named like a segmentation (``*_dseg``, ``*_mask``, ``aseg``)
    opens as ``"label"``.
    """
    if not isinstance(source, str | os.PathLike):
        if affine is None:
            raise TypeError("open_image(array) needs the voxel-to-world affine: affine=...")
        return from_array(
            source, affine, dims, kind=kind or "scalar", chunks=None if chunks == "auto" else chunks
        )
    from mriflow.io.zarr import is_zarr_location, open_zarr

    if is_zarr_location(source):
        image = open_zarr(source, chunks=None if chunks == "auto" else chunks)
        if not isinstance(image, xr.DataArray):
            raise ImageFormatError(f"{source}: holds a Dataset of maps; use mriflow.open_zarr")
        return image
    path = Path(source).expanduser()
    if nifti_suffix(path) is None:
        if not path.exists():
            raise MissingFileError(f"{path}: no such file or directory")
        raise ImageFormatError(
            f"{path}: not a file type mriflow reads; expected one of {', '.join(NIFTI_SUFFIXES)}"
            + (" (a directory was given)" if path.is_dir() else "")
        )
    from mriflow.io.backend import MriflowBackendEntrypoint

    xr_chunks = {} if chunks == "auto" else chunks
    return xr.open_dataarray(
        path,
        engine=MriflowBackendEntrypoint,
        chunks=xr_chunks,
        kind=kind,
        modality=modality,
    )
