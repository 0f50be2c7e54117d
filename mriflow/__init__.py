"""mriflow: out-of-core MRI processing on xarray and dask.

Images are lazy, dask-backed ``xarray.DataArray`` objects with labelled axes and their
voxel-to-world affine; the ``.mri`` accessor carries the spatial semantics.
"""

from mriflow import bids, data, fit
from mriflow import image as _image  # noqa: F401  (registers the ``.mri`` accessor)
from mriflow._version import __version__
from mriflow.acquisition import Modality
from mriflow.bids import load_asl_context, load_bids, load_bids_with_m0
from mriflow.errors import (
    AcquisitionError,
    AifError,
    BidsError,
    CorruptDataError,
    DicomGeometryWarning,
    FitInputError,
    GeometryError,
    ImageFormatError,
    ImageHeaderError,
    IncompleteStoreError,
    MetadataWarning,
    MissingAffineWarning,
    MissingFileError,
    MissingTimingError,
    MriflowError,
    MriflowWarning,
    PerfusionInputError,
    SidecarError,
    StoreFormatError,
    StoreMetadataError,
    StoreWriteError,
)
from mriflow.image import from_array
from mriflow.io import convert, open_image, open_zarr, to_nifti, to_zarr
from mriflow.io.dicom import DicomSeries, discover_dicom, load_dicom_series, open_dce_study

__all__ = [
    "AcquisitionError",
    "AifError",
    "PerfusionInputError",
    "BidsError",
    "MetadataWarning",
    "MissingTimingError",
    "Modality",
    "bids",
    "load_asl_context",
    "load_bids",
    "load_bids_with_m0",
    "CorruptDataError",
    "FitInputError",
    "DicomGeometryWarning",
    "DicomSeries",
    "GeometryError",
    "ImageFormatError",
    "ImageHeaderError",
    "MissingFileError",
    "MriflowError",
    "MriflowWarning",
    "SidecarError",
    "__version__",
    "data",
    "fit",
    "discover_dicom",
    "from_array",
    "load_dicom_series",
    "open_dce_study",
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
