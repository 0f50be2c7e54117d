"""mriflow: out-of-core MRI processing on xarray and dask.

Images are lazy, dask-backed ``xarray.DataArray`` objects with labelled axes and their
voxel-to-world affine; the ``.mri`` accessor carries the spatial semantics.
"""

from mriflow import image as _image  # noqa: F401  (registers the ``.mri`` accessor)
from mriflow._version import __version__
from mriflow.errors import (
    CorruptDataError,
    DicomGeometryWarning,
    GeometryError,
    ImageFormatError,
    ImageHeaderError,
    MissingFileError,
    MriflowError,
    SidecarError,
)
from mriflow.image import from_array
from mriflow.io import open_image, to_nifti
from mriflow.io.dicom import DicomSeries, discover_dicom, load_dicom_series

__all__ = [
    "CorruptDataError",
    "DicomGeometryWarning",
    "DicomSeries",
    "GeometryError",
    "ImageFormatError",
    "ImageHeaderError",
    "MissingFileError",
    "MriflowError",
    "SidecarError",
    "__version__",
    "discover_dicom",
    "from_array",
    "load_dicom_series",
    "open_image",
    "to_nifti",
]
