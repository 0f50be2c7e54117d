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
    FitInputError,
    GeometryError,
    ImageFormatError,
    ImageHeaderError,
    MetadataWarning,
    MissingFileError,
    MissingTimingError,
    MriflowError,
    MriflowWarning,
    PerfusionInputError,
    SidecarError,
)
from mriflow.image import from_array
from mriflow.io import open_image, to_nifti

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
    "from_array",
    "open_image",
    "to_nifti",
]
