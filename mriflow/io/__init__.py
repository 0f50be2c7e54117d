"""Readers and writers: NIfTI/Analyze today; zarr, DICOM and BIDS build on the same model."""

from mriflow.io.api import open_image
from mriflow.io.nifti import to_nifti
from mriflow.io.zarr import convert, open_zarr, to_zarr

__all__ = ["convert", "open_image", "open_zarr", "to_nifti", "to_zarr"]
