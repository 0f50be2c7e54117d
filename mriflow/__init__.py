"""mriflow: out-of-core MRI processing on xarray and dask.

Images are lazy, dask-backed ``xarray.DataArray`` objects with labelled axes and their
voxel-to-world affine; the ``.mri`` accessor carries the spatial semantics.
"""

from mriflow import image as _image  # noqa: F401  (registers the ``.mri`` accessor)
from mriflow._version import __version__
from mriflow.errors import (
    CorruptDataError,
    GeometryError,
    ImageFormatError,
    ImageHeaderError,
    IncompleteStoreError,
    MissingAffineWarning,
    MissingFileError,
    MriflowError,
    SidecarError,
    StoreFormatError,
    StoreMetadataError,
    StoreWriteError,
)
from mriflow.image import from_array
from mriflow.io import convert, open_image, open_zarr, to_nifti, to_zarr

__all__ = [
    "CorruptDataError",
    "GeometryError",
    "ImageFormatError",
    "ImageHeaderError",
    "MissingFileError",
    "MriflowError",
    "SidecarError",
    "__version__",
    "from_array",
    "open_image",
    "to_nifti",
    "IncompleteStoreError",
    "MissingAffineWarning",
    "StoreFormatError",
    "StoreMetadataError",
    "StoreWriteError",
    "convert",
    "open_zarr",
    "to_zarr",
]


def __getattr__(name: str) -> object:
    """Import heavy subpackages on first use: ``mriflow.track`` loads the numba kernels."""
    if name == "track":
        import importlib

        return importlib.import_module("mriflow.track")
    raise AttributeError(f"module 'mriflow' has no attribute {name!r}")
