"""The exceptions mriflow raises for problems a user can cause.

Every message starts with the file (or config key) it is about, says what is wrong in plain
words, and suggests a fix where one is known. Each class also derives from the built-in
exception a Python user would try first (``ValueError``, ``OSError``, ...), so existing
``except`` clauses keep working.
"""

from __future__ import annotations

__all__ = [
    "CorruptDataError",
    "FitInputError",
    "DicomGeometryWarning",
    "GeometryError",
    "ImageFormatError",
    "ImageHeaderError",
    "InvalidSignalWarning",
    "MissingFileError",
    "MriflowError",
    "MriflowWarning",
    "SidecarError",
    "BidsError",
    "AcquisitionError",
    "MissingTimingError",
    "MetadataWarning",
    "TrackingInputError",
    "TrackingWarning",
    "TractogramFormatError",
    "StoreFormatError",
    "IncompleteStoreError",
    "StoreMetadataError",
    "StoreWriteError",
    "MissingAffineWarning",
    "PerfusionInputError",
    "AifError",
    "TractogramStoreError",
]


class MriflowError(Exception):
    """Base class of every error mriflow raises on bad input."""


class MissingFileError(MriflowError, FileNotFoundError):
    """A path that should exist does not."""


class ImageFormatError(MriflowError, ValueError):
    """The path is not an image format mriflow can read (unknown extension, a directory, ...)."""


class ImageHeaderError(MriflowError, ValueError):
    """The image header is unreadable or describes an impossible image."""


class CorruptDataError(MriflowError, OSError):
    """Pixel data is missing, truncated, or the compressed stream is damaged."""


class GeometryError(MriflowError, ValueError):
    """The voxel-to-world geometry is unusable (non-finite or singular affine, irregular axes)."""


class SidecarError(MriflowError, ValueError):
    """A sidecar file (BIDS JSON, FSL .bval/.bvec) is malformed or does not match the image."""


class MriflowWarning(UserWarning):
    """Input mriflow accepts with a documented, safe interpretation, but the user should know."""


class BidsError(MriflowError, ValueError):
    """A BIDS dataset does not hold what was asked (no match, several matches, ambiguity)."""


class AcquisitionError(MriflowError, ValueError):
    """An acquisition parameter is missing or impossible for the modality (e.g. ASL fields)."""


class MissingTimingError(AcquisitionError):
    """A 4D time series gives no way to time its volumes (no RepetitionTime/VolumeTiming)."""


class MetadataWarning(MriflowWarning):
    """Metadata was accepted from a non-standard place (e.g. b-values in a JSON sidecar)."""


class FitInputError(MriflowError, ValueError):
    """Input to a model fit is unusable: gradients, mask, model order or response."""


class InvalidSignalWarning(MriflowWarning, RuntimeWarning):
    """Some voxels hold NaN, infinite or negative signal; they fit to NaN (a count is given)."""


class TrackingInputError(MriflowError, ValueError):
    """Tracking inputs do not fit together: fields, stopping map, seeds or parameters."""


class TractogramFormatError(MriflowError, ValueError):
    """A streamline file cannot be written or read (unknown extension, malformed content)."""


class TrackingWarning(MriflowWarning):
    """Tracking went ahead but dropped or adjusted something the caller should know of."""


class StoreFormatError(MriflowError, ValueError):
    """The path is not a zarr store, or not one that holds an image mriflow can read."""


class IncompleteStoreError(MriflowError, RuntimeError):
    """A store whose writing was interrupted: some regions were never written.

    Continue it with ``resume=True`` (``mriflow convert --resume``) or start over with
    ``overwrite=True``.
    """


class StoreMetadataError(MriflowError, ValueError):
    """A store's metadata contradicts itself or its arrays (shape, chunks, dims, dtype)."""


class StoreWriteError(MriflowError, OSError):
    """A store cannot be written: read-only location, disk full, or it already exists."""


class MissingAffineWarning(MriflowWarning):
    """A store written by another tool has no affine; the NGFF scale/translation is used."""


class DicomGeometryWarning(MriflowWarning):
    """A DICOM series had a problem with a safe fix (e.g. a repeated image that was dropped)."""


class SkippedDicomWarning(MriflowWarning):
    """Files that look like DICOM were not read (no Part-10 header): a series may be incomplete."""


class PerfusionInputError(FitInputError):
    """Input to a perfusion or IVIM fit is unusable (M0, b-values, volume pairing, ...)."""


class AifError(PerfusionInputError):
    """An arterial input function is unusable: wrong time axis, empty mask, NaN values."""


class TractogramStoreError(MriflowError, ValueError):
    """A streamline store cannot be continued: it was started with other inputs."""
