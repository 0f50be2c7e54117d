"""DICOM: discover series from headers, load them lazily as 3D/4D images."""

from mriflow.io.dicom.discover import ROLE_HINTS, DicomSeries, FrameRecord, discover_dicom
from mriflow.io.dicom.load import DicomGeometryWarning, load_dicom_series, open_dicom_directory

__all__ = [
    "ROLE_HINTS",
    "DicomGeometryWarning",
    "DicomSeries",
    "FrameRecord",
    "discover_dicom",
    "load_dicom_series",
    "open_dicom_directory",
]
