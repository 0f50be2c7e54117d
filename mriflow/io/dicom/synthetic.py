"""Write deterministic DICOM series with pydicom, for tests, benchmarks and demos.

Real files in the layouts scanners write: classic single-frame MR images (one file per slice
and time point) with vendor private diffusion tags (GE, Siemens XA, Philips) or standard ones,
Siemens mosaics, and enhanced multi-frame MR objects with per-frame functional groups (with
Philips private scaling). Every writer returns a :class:`WrittenSeries` with the stored pixel
values, the expected physical values and the expected RAS+ affine, so a reader can be checked
against what was written. No identity is written beyond a fixed fake patient name.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence as DicomSequence
from pydicom.uid import UID, ExplicitVRLittleEndian, generate_uid

from mriflow.io.dicom.vendors import ge_logical_axes

__all__ = ["WrittenSeries", "write_enhanced_series", "write_mosaic_series", "write_series"]

MR_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.4"
ENHANCED_MR_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.4.1"
_LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])
AXIAL = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)


@dataclass
class WrittenSeries:
    """What a writer put on disk: files, stored and physical pixel values, geometry."""

    files: list[Path]
    stored: np.ndarray  # (rows, columns, slices, volumes) as stored
    physical: np.ndarray  # (rows, columns, slices, volumes) after the vendor's scaling
    affine: np.ndarray  # RAS+ voxel-to-world of the (rows, columns, slices) grid
    series_uid: str
    bvals: np.ndarray | None = None
    bvecs_lps: np.ndarray | None = None


def oblique_orientation(
    angles_deg: Sequence[float] = (15.0, -10.0, 20.0),
) -> tuple[float, ...]:
    """ImageOrientationPatient of an axial plane rotated about x, y, z by ``angles_deg``."""
    ax, ay, az = np.deg2rad(angles_deg)
    rx = np.array([[1, 0, 0], [0, np.cos(ax), -np.sin(ax)], [0, np.sin(ax), np.cos(ax)]])
    ry = np.array([[np.cos(ay), 0, np.sin(ay)], [0, 1, 0], [-np.sin(ay), 0, np.cos(ay)]])
    rz = np.array([[np.cos(az), -np.sin(az), 0], [np.sin(az), np.cos(az), 0], [0, 0, 1]])
    rotation = rz @ ry @ rx
    return tuple(float(v) for v in np.concatenate([rotation[:, 0], rotation[:, 1]]))


def _geometry(
    orientation: Sequence[float],
    origin: Sequence[float],
    pixel_spacing: Sequence[float],
    slice_spacing: float,
    n_slices: int,
) -> tuple[np.ndarray, np.ndarray]:
    """Slice positions (n, 3) LPS and the RAS affine in nibabel's (row, column, slice) order."""
    row_cosine = np.asarray(orientation[:3], dtype=np.float64)
    column_cosine = np.asarray(orientation[3:], dtype=np.float64)
    normal = np.cross(column_cosine, row_cosine)
    positions = np.asarray(origin, dtype=np.float64) + np.outer(
        np.arange(n_slices) * slice_spacing, normal
    )
    lps = np.eye(4)
    lps[:3, 0] = column_cosine * pixel_spacing[0]
    lps[:3, 1] = row_cosine * pixel_spacing[1]
    lps[:3, 2] = normal * slice_spacing
    lps[:3, 3] = positions[0]
    return positions, _LPS_TO_RAS @ lps


def _uid(*parts: object) -> UID:
    """A deterministic UID derived from ``parts``."""
    return generate_uid(entropy_srcs=[str(p) for p in parts])


def _base_dataset(sop_class: str, study_uid: str, series_uid: str, **fields: Any) -> Dataset:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = UID(sop_class)
    meta.MediaStorageSOPInstanceUID = _uid(series_uid, *fields.get("_instance_key", ()))
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = series_uid
    ds.FrameOfReferenceUID = _uid(study_uid, "frame-of-reference")
    ds.Modality = "MR"
    ds.PatientName = "Phantom^Synthetic"
    ds.PatientID = "PHANTOM"
    for key, value in fields.items():
        if value is not None and not key.startswith("_"):
            setattr(ds, key, value)
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = 16
    ds.BitsStored = 16
    ds.HighBit = 15
    return ds


def _pattern(rows: int, columns: int, n_slices: int, n_volumes: int, seed: int) -> np.ndarray:
    """Deterministic stored values with structure along every axis (uint16-safe)."""
    rng = np.random.default_rng(seed)
    grid = np.indices((rows, columns, n_slices)).astype(np.float64)
    base = 200 + 7 * grid[0] + 3 * grid[1] + 50 * grid[2]
    volumes = [base + 40 * v + rng.integers(0, 20, base.shape) for v in range(n_volumes)]
    return np.stack(volumes, axis=-1).astype(np.uint16)


def _add_private(
    ds: Dataset, group: int, creator: str, element: int, vr: str, value: object
) -> None:
    ds.private_block(group, creator, create=True).add_new(element & 0xFF, vr, value)


def _diffusion_tags(
    ds: Dataset,
    vendor: str,
    bvalue: float,
    vector_lps: np.ndarray,
    orientation: Sequence[float],
    phase_encoding: str = "COL",
) -> None:
    if vendor == "standard":
        ds.add_new((0x0018, 0x9087), "FD", float(bvalue))
        ds.add_new((0x0018, 0x9089), "FD", [float(v) for v in vector_lps])
    elif vendor == "siemens":  # Siemens XA private layout
        _add_private(ds, 0x0019, "SIEMENS MR HEADER", 0x0C, "IS", int(bvalue))
        _add_private(ds, 0x0019, "SIEMENS MR HEADER", 0x0E, "FD", [float(v) for v in vector_lps])
    elif vendor == "philips":
        _add_private(ds, 0x2001, "Philips Imaging DD 001", 0x03, "FL", float(bvalue))
        for element, value in zip((0xB0, 0xB1, 0xB2), vector_lps, strict=True):
            _add_private(ds, 0x2005, "Philips MR Imaging DD 001", element, "FL", float(value))
    elif vendor == "ge":
        # b-value with GE's 1e9 offset; direction in GE's logical (freq, phase, slice) frame
        _add_private(ds, 0x0043, "GEMS_PARM_01", 0x39, "IS", [int(bvalue) + 1_000_000_000, 8, 0, 0])
        axes = ge_logical_axes(orientation, phase_encoding)
        logical = [float(np.dot(vector_lps, axis)) for axis in axes]
        for element, value in zip((0xBB, 0xBC, 0xBD), logical, strict=True):
            _add_private(ds, 0x0019, "GEMS_ACQU_01", element, "DS", f"{value:.6f}")
        ds.InPlanePhaseEncodingDirection = phase_encoding
    else:
        raise ValueError(f"unknown vendor {vendor!r}")


_MANUFACTURERS = {
    "standard": "ACME",
    "siemens": "SIEMENS",
    "philips": "Philips Medical Systems",
    "ge": "GE MEDICAL SYSTEMS",
}


def write_series(
    out_dir: str | os.PathLike[str],
    *,
    shape: tuple[int, int, int] = (16, 12, 6),
    n_volumes: int = 1,
    orientation: Sequence[float] = AXIAL,
    origin: Sequence[float] = (-20.0, -30.0, 10.0),
    pixel_spacing: tuple[float, float] = (1.5, 1.25),
    slice_spacing: float = 2.0,
    description: str = "synthetic",
    series_number: int = 1,
    study_uid: str | None = None,
    series_uid: str | None = None,
    vendor: str = "standard",
    bvals: Sequence[float] | None = None,
    bvecs_lps: np.ndarray | None = None,
    rescale: tuple[float, float] | None = None,
    philips_scale: float | None = None,
    phase_encoding: str = "COL",
    flip_angle: float | None = 15.0,
    repetition_time: float | None = 5.0,
    echo_time: float = 2.0,
    temporal_resolution: float = 3.5,
    start_time: float = 36000.0,
    temporal_positions: bool = True,
    shuffle_names: bool = True,
    seed: int = 0,
    name_prefix: str = "IM",
    pixels: np.ndarray | None = None,
) -> WrittenSeries:
    """Write a classic single-frame MR series: one file per slice and volume.

    Volume ``v`` is acquired at ``start_time + v * temporal_resolution`` seconds after
    midnight (AcquisitionTime) and, when ``temporal_positions``, carries
    TemporalPositionIdentifier ``v + 1``. ``bvals`` (one per volume) and ``bvecs_lps``
    (volumes x 3, patient LPS) write diffusion tags in ``vendor``'s layout (GE's in the logical
    frame of ``phase_encoding``, "COL" or "ROW"). ``philips_scale`` writes Philips' private
    ScaleSlope (2005,100E) (use with ``vendor="philips"``). File names are
    shuffled relative to slice order when ``shuffle_names``. ``pixels`` (rows, columns,
    slices, volumes; uint16) are the stored values to write instead of the default pattern;
    ``repetition_time``/``flip_angle`` of ``None`` leave those attributes out.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rows, columns, n_slices = shape
    study_uid = study_uid or _uid("study", seed)
    series_uid = series_uid or _uid(
        "series", study_uid, series_number, description, seed, out.resolve()
    )
    positions, affine = _geometry(orientation, origin, pixel_spacing, slice_spacing, n_slices)
    if pixels is None:
        stored = _pattern(rows, columns, n_slices, n_volumes, seed)
    else:
        stored = np.asarray(pixels, dtype=np.uint16).reshape(rows, columns, n_slices, n_volumes)
    slope, intercept = rescale if rescale is not None else (1.0, 0.0)
    physical = stored * slope + intercept
    if philips_scale is not None:
        physical = physical / (slope * philips_scale)
    order = np.random.default_rng(seed + 1).permutation(n_slices * n_volumes)
    files = []
    for index in range(n_slices * n_volumes):
        volume, slice_index = divmod(index, n_slices)
        acquired = start_time + volume * temporal_resolution + slice_index * 0.01
        hours, rest = divmod(acquired, 3600)
        minutes, seconds = divmod(rest, 60)
        ds = _base_dataset(
            MR_IMAGE_STORAGE,
            study_uid,
            series_uid,
            SeriesDescription=description,
            SeriesNumber=series_number,
            Manufacturer=_MANUFACTURERS[vendor],
            ManufacturerModelName="Synthetic",
            MagneticFieldStrength=3.0,
            RepetitionTime=repetition_time,
            EchoTime=echo_time,
            FlipAngle=flip_angle,
            ImageType=["ORIGINAL", "PRIMARY", "M", "NONE"],
            InstanceNumber=int(order[index]) + 1,
            _instance_key=("image", index),
            AcquisitionNumber=volume + 1,
            AcquisitionTime=f"{int(hours):02d}{int(minutes):02d}{seconds:09.6f}",
            ImageOrientationPatient=[f"{v:.8f}" for v in orientation],
            ImagePositionPatient=[f"{v:.6f}" for v in positions[slice_index]],
            PixelSpacing=[f"{v:g}" for v in pixel_spacing],
            SliceThickness=f"{slice_spacing:g}",
            Rows=rows,
            Columns=columns,
            PixelRepresentation=0,
        )
        if temporal_positions and n_volumes > 1:
            ds.TemporalPositionIdentifier = volume + 1
            ds.NumberOfTemporalPositions = n_volumes
        if rescale is not None:
            ds.RescaleSlope = f"{slope:g}"
            ds.RescaleIntercept = f"{intercept:g}"
        if philips_scale is not None:
            _add_private(ds, 0x2005, "Philips MR Imaging DD 001", 0x0E, "FL", philips_scale)
        if bvals is not None:
            vector = np.zeros(3) if bvecs_lps is None else np.asarray(bvecs_lps)[volume]
            _diffusion_tags(ds, vendor, bvals[volume], vector, orientation, phase_encoding)
        ds.PixelData = np.ascontiguousarray(stored[:, :, slice_index, volume]).tobytes()
        path = out / f"{name_prefix}{int(order[index]) if shuffle_names else index:05d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        files.append(path)
    return WrittenSeries(
        files=files,
        stored=stored,
        physical=physical,
        affine=affine,
        series_uid=series_uid,
        bvals=None if bvals is None else np.asarray(bvals, dtype=np.float64),
        bvecs_lps=None if bvecs_lps is None else np.asarray(bvecs_lps, dtype=np.float64),
    )


def write_mosaic_series(
    out_dir: str | os.PathLike[str],
    *,
    shape: tuple[int, int, int] = (8, 8, 5),
    bvals: Sequence[float] = (0.0, 1000.0),
    bvecs_lps: np.ndarray | None = None,
    orientation: Sequence[float] = AXIAL,
    origin: Sequence[float] = (-20.0, -30.0, 10.0),
    pixel_spacing: tuple[float, float] = (2.0, 2.0),
    slice_spacing: float = 2.5,
    seed: int = 0,
) -> WrittenSeries:
    """Write a Siemens mosaic series, one file per diffusion volume (XA private b-values).

    Slices are tiled row-major into a square mosaic of ``ceil(sqrt(n_slices))`` tiles per
    side; ImagePositionPatient holds the position of the mosaic's top-left pixel, as Siemens
    writes it, and (0019,100A) NumberOfImagesInMosaic the slice count.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rows, columns, n_slices = shape
    n_volumes = len(bvals)
    tiles = int(np.ceil(np.sqrt(n_slices)))
    study_uid = _uid("mosaic-study", seed)
    series_uid = _uid("mosaic-series", seed, out.resolve())
    positions, affine = _geometry(orientation, origin, pixel_spacing, slice_spacing, n_slices)
    if bvecs_lps is None:
        bvecs_lps = np.zeros((n_volumes, 3))
        bvecs_lps[1:] = np.array([0.6, 0.0, 0.8])
    stored = _pattern(rows, columns, n_slices, n_volumes, seed)
    row_cosine = np.asarray(orientation[:3])
    column_cosine = np.asarray(orientation[3:])
    # Siemens' mosaic position: the slab's top-left corner, (tiles-1)/2 slices up and left
    shift = (tiles * np.array([rows, columns]) - np.array([rows, columns])) / 2
    mosaic_origin = (
        positions[0]
        - column_cosine * pixel_spacing[0] * shift[0]
        - row_cosine * pixel_spacing[1] * shift[1]
    )
    files = []
    for volume in range(n_volumes):
        slab = np.zeros((tiles * rows, tiles * columns), dtype=np.uint16)
        for index in range(n_slices):
            tile_row, tile_column = divmod(index, tiles)
            slab[
                tile_row * rows : (tile_row + 1) * rows,
                tile_column * columns : (tile_column + 1) * columns,
            ] = stored[:, :, index, volume]
        ds = _base_dataset(
            MR_IMAGE_STORAGE,
            study_uid,
            series_uid,
            SeriesDescription="ep2d_diff_mosaic",
            SeriesNumber=3,
            Manufacturer="SIEMENS",
            ManufacturerModelName="Synthetic",
            MagneticFieldStrength=3.0,
            RepetitionTime=6600.0,
            EchoTime=90.0,
            FlipAngle=90.0,
            ImageType=["ORIGINAL", "PRIMARY", "DIFFUSION", "NONE", "ND", "MOSAIC"],
            InstanceNumber=volume + 1,
            _instance_key=("mosaic", volume),
            AcquisitionNumber=volume + 1,
            AcquisitionTime=f"1000{volume * 7:02d}.000000",
            ImageOrientationPatient=[f"{v:.8f}" for v in orientation],
            ImagePositionPatient=[f"{v:.6f}" for v in mosaic_origin],
            PixelSpacing=[f"{v:g}" for v in pixel_spacing],
            SliceThickness=f"{slice_spacing:g}",
            SpacingBetweenSlices=f"{slice_spacing:g}",
            Rows=tiles * rows,
            Columns=tiles * columns,
            PixelRepresentation=0,
        )
        _add_private(ds, 0x0019, "SIEMENS MR HEADER", 0x0A, "US", n_slices)
        _diffusion_tags(ds, "siemens", bvals[volume], bvecs_lps[volume], orientation)
        ds.PixelData = slab.tobytes()
        path = out / f"MOSAIC{volume:03d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        files.append(path)
    return WrittenSeries(
        files=files,
        stored=stored,
        physical=stored.astype(np.float64),
        affine=affine,
        series_uid=series_uid,
        bvals=np.asarray(bvals, dtype=np.float64),
        bvecs_lps=np.asarray(bvecs_lps, dtype=np.float64),
    )


def write_enhanced_series(
    path: str | os.PathLike[str],
    *,
    shape: tuple[int, int, int] = (10, 12, 4),
    n_volumes: int = 3,
    orientation: Sequence[float] = AXIAL,
    origin: Sequence[float] = (-20.0, -30.0, 10.0),
    pixel_spacing: tuple[float, float] = (1.5, 1.25),
    slice_spacing: float = 2.0,
    philips: tuple[float, float, float] | None = (2.5, -100.0, 0.4),
    temporal_resolution: float = 4.0,
    bvals: Sequence[float] | None = None,
    bvecs_lps: np.ndarray | None = None,
    shuffle_frames: bool = True,
    seed: int = 0,
) -> WrittenSeries:
    """Write one enhanced MR multi-frame file: ``n_volumes`` time points x slices.

    Each frame has its own PlanePosition, FrameContent (TemporalPositionIndex,
    FrameAcquisitionDateTime) and PixelValueTransformation; ``philips=(RS, RI, SS)`` writes
    Philips' private ScaleSlope (2005,100E) in the per-frame private sequence (2005,140F), so
    the physical value is ``(PV * RS + RI) / (RS * SS)``. ``bvals``/``bvecs_lps`` (one per
    volume) write a per-frame MRDiffusionSequence (standard tags, as Siemens XA and Philips
    enhanced exports do). Frames are stored in a shuffled order.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    rows, columns, n_slices = shape
    study_uid = _uid("enhanced-study", seed)
    series_uid = _uid("enhanced-series", seed, target.resolve())
    positions, affine = _geometry(orientation, origin, pixel_spacing, slice_spacing, n_slices)
    stored = _pattern(rows, columns, n_slices, n_volumes, seed)
    slope, intercept, scale = philips if philips is not None else (1.0, 0.0, None)
    physical = stored * slope + intercept
    if scale is not None:
        physical = physical / (slope * scale)
    frames = [(v, s) for v in range(n_volumes) for s in range(n_slices)]
    if shuffle_frames:
        order = np.random.default_rng(seed + 2).permutation(len(frames))
        frames = [frames[i] for i in order]
    ds = _base_dataset(
        ENHANCED_MR_IMAGE_STORAGE,
        study_uid,
        series_uid,
        SeriesDescription="enhanced_dynamic",
        SeriesNumber=7,
        Manufacturer="Philips Medical Systems" if philips else "SIEMENS",
        ManufacturerModelName="Synthetic",
        MagneticFieldStrength=3.0,
        ImageType=["ORIGINAL", "PRIMARY", "M", "NONE"],
        InstanceNumber=1,
        Rows=rows,
        Columns=columns,
        NumberOfFrames=len(frames),
        PixelRepresentation=0,
    )
    shared = Dataset()
    orientation_item = Dataset()
    orientation_item.ImageOrientationPatient = [f"{v:.8f}" for v in orientation]
    shared.PlaneOrientationSequence = DicomSequence([orientation_item])
    measures = Dataset()
    measures.PixelSpacing = [f"{v:g}" for v in pixel_spacing]
    measures.SliceThickness = f"{slice_spacing:g}"
    shared.PixelMeasuresSequence = DicomSequence([measures])
    timing = Dataset()
    timing.RepetitionTime = 5.0
    timing.FlipAngle = 12.0
    shared.MRTimingAndRelatedParametersSequence = DicomSequence([timing])
    ds.SharedFunctionalGroupsSequence = DicomSequence([shared])
    dimensions = []
    for pointer in (0x00209056, 0x00209057, 0x00209128):  # StackID, InStackPosition, TempPos
        dimension = Dataset()
        dimension.DimensionIndexPointer = pointer
        dimension.FunctionalGroupPointer = 0x00209111  # FrameContentSequence
        dimensions.append(dimension)
    ds.DimensionIndexSequence = DicomSequence(dimensions)
    per_frame = []
    for volume, slice_index in frames:
        group = Dataset()
        position = Dataset()
        position.ImagePositionPatient = [f"{v:.6f}" for v in positions[slice_index]]
        group.PlanePositionSequence = DicomSequence([position])
        content = Dataset()
        content.TemporalPositionIndex = volume + 1
        seconds = 36000.0 + volume * temporal_resolution
        hours, rest = divmod(seconds, 3600)
        minutes, secs = divmod(rest, 60)
        content.FrameAcquisitionDateTime = f"20200101{int(hours):02d}{int(minutes):02d}{secs:09.6f}"
        content.InStackPositionNumber = slice_index + 1
        content.StackID = "1"
        content.DimensionIndexValues = [1, slice_index + 1, volume + 1]
        group.FrameContentSequence = DicomSequence([content])
        transform = Dataset()
        transform.RescaleSlope = f"{slope:g}"
        transform.RescaleIntercept = f"{intercept:g}"
        transform.RescaleType = "US"
        group.PixelValueTransformationSequence = DicomSequence([transform])
        if bvals is not None:
            diffusion = Dataset()
            diffusion.DiffusionBValue = float(bvals[volume])
            diffusion.DiffusionDirectionality = "DIRECTIONAL" if bvals[volume] else "NONE"
            if bvals[volume] and bvecs_lps is not None:
                direction = Dataset()
                direction.DiffusionGradientOrientation = [float(v) for v in bvecs_lps[volume]]
                diffusion.DiffusionGradientDirectionSequence = DicomSequence([direction])
            group.MRDiffusionSequence = DicomSequence([diffusion])
        if scale is not None:
            private = Dataset()
            _add_private(private, 0x2005, "Philips MR Imaging DD 001", 0x0E, "FL", scale)
            group.add_new((0x2005, 0x0014), "LO", "Philips MR Imaging DD 005")
            group.add_new((0x2005, 0x140F), "SQ", DicomSequence([private]))
        per_frame.append(group)
    ds.PerFrameFunctionalGroupsSequence = DicomSequence(per_frame)
    ds.PixelData = b"".join(np.ascontiguousarray(stored[:, :, s, v]).tobytes() for v, s in frames)
    ds.save_as(target, enforce_file_format=True)
    return WrittenSeries(
        files=[target],
        stored=stored,
        physical=physical,
        affine=affine,
        series_uid=series_uid,
        bvals=None if bvals is None else np.asarray(bvals, dtype=np.float64),
        bvecs_lps=None if bvecs_lps is None else np.asarray(bvecs_lps, dtype=np.float64),
    )


def read_back(path: str | os.PathLike[str]) -> Dataset:
    """Read a written file fully (for tests that edit headers)."""
    return pydicom.dcmread(path)
