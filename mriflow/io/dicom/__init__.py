"""DICOM: discover series from headers, load them lazily as 3D/4D images."""

from mriflow.io.dicom.discover import ROLE_HINTS, DicomSeries, FrameRecord, discover_dicom
from mriflow.io.dicom.load import DicomGeometryWarning, load_dicom_series, open_dicom_directory
from mriflow.io.dicom.study import DceStudy, open_dce_study, open_vfa_series

__all__ = [
    "ROLE_HINTS",
    "DceStudy",
    "DicomGeometryWarning",
    "DicomSeries",
    "FrameRecord",
    "discover_dicom",
    "load_dicom_series",
    "open_dce_study",
    "open_dicom_directory",
    "open_vfa_series",
]
