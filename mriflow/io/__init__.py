"""Readers and writers: NIfTI/Analyze today; zarr, DICOM and BIDS build on the same model."""

from mriflow.io.api import open_image
from mriflow.io.nifti import to_nifti

__all__ = ["open_image", "to_nifti"]
