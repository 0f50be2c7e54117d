"""``open_image``: one entry point for every image source."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import xarray as xr
from dask.base import tokenize

from mriflow.errors import ImageFormatError, MissingFileError
from mriflow.image.model import from_array
from mriflow.io.nifti import NIFTI_SUFFIXES, auto_chunks, nifti_suffix, open_nifti

__all__ = ["open_image"]


def open_image(
    source: Any,
    *,
    chunks: Any = "auto",
    kind: str | None = None,
    modality: str | None = None,
    affine: Any = None,
    dims: Any = None,
    acquisition: Mapping[str, Any] | None = None,
) -> xr.DataArray:
    """Open an image lazily as a dask-backed ``xarray.DataArray``.

    ``source`` is a path to a NIfTI-1/2 (``.nii``, ``.nii.gz``), NIfTI pair or Analyze file,
    a NIfTI-Zarr store (``*.zarr`` or an fsspec URL, see :func:`mriflow.open_zarr`),
    a directory holding one DICOM series (see :func:`mriflow.load_dicom_series`), or a
    numpy/dask array together with ``affine`` (see :func:`mriflow.from_array`).

    Only headers are read here. ``chunks="auto"`` keeps every non-spatial axis (``volume``,
    ``t``) whole in each chunk and splits space into slabs that are contiguous on disk, sized
    by dask's ``array.chunk-size``; any dask chunk spec (dict by dim name, tuple, ``None`` for
    no dask) is honoured. ``kind`` is ``"scalar"`` or ``"label"``; left out, NIfTI label
    intent or an integer image named like a segmentation (``*_dseg``, ``*_mask``, ``aseg``)
    opens as ``"label"``.

    ``modality`` (``"dwi"``, ``"ivim"``, ``"dce"``, ``"dsc"``, ``"asl"``, ``"anat"``) resolves
    that modality's acquisition parameters into ``attrs["acquisition"]`` (explicit
    ``acquisition`` values first, then the BIDS sidecars with inheritance, then defaults) and
    sets its axis (``t`` times, ``volume`` gradients or ASL volume types); see
    :func:`mriflow.acquisition.attach_acquisition`. Other ``modality`` strings are only
    recorded in ``attrs["modality"]``.
    """
    from mriflow.acquisition import Modality, attach_acquisition

    if modality is not None and str(modality).lower() in {m.value for m in Modality}:
        image = open_image(source, chunks=chunks, kind=kind, affine=affine, dims=dims)
        return attach_acquisition(image, modality, acquisition=acquisition)
    if acquisition is not None:
        raise ValueError(
            f"acquisition= needs a modality, one of {', '.join(m.value for m in Modality)}"
        )
    if not isinstance(source, str | os.PathLike):
        if affine is None:
            raise TypeError("open_image(array) needs the voxel-to-world affine: affine=...")
        return from_array(
            source, affine, dims, kind=kind or "scalar", chunks=None if chunks == "auto" else chunks
        )
    from mriflow.io.zarr import is_zarr_location, open_zarr

    if is_zarr_location(source):
        stored = open_zarr(source, chunks=None if chunks == "auto" else chunks)
        if not isinstance(stored, xr.DataArray):
            raise ImageFormatError(f"{source}: holds a Dataset of maps; use mriflow.open_zarr")
        return stored
    path = Path(source).expanduser()
    if path.is_dir() and nifti_suffix(path) is not None:
        raise ImageFormatError(
            f"{path}: is a directory, though named like a NIfTI file; give the image file "
            "(a directory opens only as a DICOM series)"
        )
    if path.is_dir():
        from mriflow.io.dicom import open_dicom_directory

        return open_dicom_directory(
            path, chunks="auto" if chunks is None else chunks, kind=kind, modality=modality
        )
    if nifti_suffix(path) is None:
        if not path.exists():
            raise MissingFileError(f"{path}: no such file or directory")
        raise ImageFormatError(
            f"{path}: not a file type mriflow reads; expected one of {', '.join(NIFTI_SUFFIXES)}"
            + (" (a directory was given)" if path.is_dir() else "")
        )
    image = open_nifti(path, kind=kind, modality=modality)
    if chunks is None:
        return image
    if chunks == "auto":
        chunks = auto_chunks(image.shape, tuple(map(str, image.dims)), image.dtype.itemsize)
    token = tokenize(image.encoding["token"], kind, modality, chunks)
    chunked = image.chunk(chunks, name_prefix=f"open_image-{image.name}-", token=token)
    # coordinates (gradient tables, times) are small: keep them in memory, not in dask
    return chunked.assign_coords({name: image.coords[name] for name in image.coords})
