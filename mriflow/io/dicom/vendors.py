"""Vendor-specific DICOM header knowledge: diffusion tables, Philips scaling, Siemens CSA.

Every function here takes a pydicom ``Dataset`` (or a per-frame functional group item) read
with ``stop_before_pixels`` and returns plain Python values; nothing reads pixels. Siemens CSA
headers are parsed by ``nibabel.nicom.csareader``.

Direction conventions (all returned in DICOM patient space, LPS):

- standard (0018,9087) DiffusionBValue / (0018,9089) DiffusionGradientOrientation: patient LPS.
- Siemens CSA ``B_value`` / ``DiffusionGradientDirection`` and Siemens XA private
  (0019,100C) / (0019,100E): patient LPS.
- Philips (2001,1003) b-value and (2005,10B0/10B1/10B2) directions along the RL, AP, FH
  axes, which are Philips' names for patient x (toward L), y (toward P), z (toward H): LPS.
- GE (0043,1039) first value is the b-value, stored with a vendor offset of 1e9 on some
  software versions (decoded modulo 1e9); (0019,10BB/10BC/10BD) are components in GE's
  logical frame (frequency, phase, slice), mapped to patient space through the image plane
  as :func:`ge_logical_axes` describes (dcm2niix's conventions).
"""

from __future__ import annotations

import struct
import warnings
from typing import Any

import numpy as np

__all__ = [
    "DiffusionInfo",
    "csa_image_header",
    "diffusion_info",
    "frame_diffusion_info",
    "ge_logical_axes",
    "mosaic_slice_count",
    "philips_scale_slope",
    "vendor_of",
]

DiffusionInfo = tuple[float | None, tuple[float, float, float] | None]

_GE_B_OFFSET = 1_000_000_000


def _nicom() -> Any:
    """``nibabel.nicom`` submodules, imported without nibabel's 'experimental' warning."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        from nibabel.nicom import csareader, dicomwrappers

    return csareader, dicomwrappers


def vendor_of(dataset: Any) -> str:
    """``"siemens"``, ``"ge"``, ``"philips"`` or ``"other"`` from (0008,0070) Manufacturer."""
    maker = str(dataset.get("Manufacturer", "") or "").upper()
    if "SIEMENS" in maker:
        return "siemens"
    if maker.startswith("GE") or "GENERAL ELECTRIC" in maker:
        return "ge"
    if "PHILIPS" in maker:
        return "philips"
    return "other"


def _private_value(dataset: Any, group: int, element: int) -> Any:
    """Value of a private tag, or None. Raw bytes (VR UN) are returned as bytes."""
    item = dataset.get((group, element))
    if item is None:
        return None
    return item.value


def _as_floats(value: Any, fmt: str = "<f") -> list[float] | None:
    """Numbers from a decoded value (number, list, string) or from raw little-endian bytes."""
    if value is None:
        return None
    if isinstance(value, bytes):
        size = struct.calcsize(fmt)
        if len(value) == 0 or len(value) % size:
            try:
                return [float(v) for v in value.decode("ascii").strip("\x00 ").split("\\")]
            except (UnicodeDecodeError, ValueError):
                return None
        return [float(v) for v in struct.unpack(f"<{len(value) // size}{fmt[-1]}", value)]
    if isinstance(value, str):
        try:
            return [float(v) for v in value.split("\\") if v.strip()]
        except ValueError:
            return None
    try:
        return [float(v) for v in value]
    except TypeError:
        return [float(value)]


def _unit(vector: list[float] | None) -> tuple[float, float, float] | None:
    if vector is None or len(vector) < 3:
        return None
    array = np.asarray(vector[:3], dtype=np.float64)
    if not np.all(np.isfinite(array)):
        return None
    norm = float(np.linalg.norm(array))
    if norm < 1e-6:
        return (0.0, 0.0, 0.0)
    return tuple(float(v) for v in array / norm)  # type: ignore[return-value]


def csa_image_header(dataset: Any) -> dict[str, Any] | None:
    """The Siemens CSA image header (0029,xx10) as parsed by nibabel, or None."""
    csareader, _ = _nicom()
    try:
        return csareader.get_csa_header(dataset, "image")
    except Exception:  # a damaged CSA header is not a reason to drop the image
        return None


def mosaic_slice_count(dataset: Any, csa: dict[str, Any] | None) -> int:
    """Number of slices packed in a Siemens mosaic image, 0 if the image is not a mosaic."""
    image_type = dataset.get("ImageType") or []
    image_type = [image_type] if isinstance(image_type, str) else image_type
    if "MOSAIC" not in [str(v).upper() for v in image_type]:
        return 0
    dataset = getattr(dataset, "dataset", dataset)
    count = _as_floats(_private_value(dataset, 0x0019, 0x100A), "<H")
    if count:
        return int(count[0])
    if csa is not None:
        csareader, _ = _nicom()
        try:
            return int(csareader.get_n_mosaic(csa) or 0)
        except (KeyError, TypeError, ValueError):
            return 0
    return 0


def philips_scale_slope(dataset: Any) -> float | None:
    """Philips private ScaleSlope (2005,100E), top level or in (2005,140F), or None."""
    values = _as_floats(_private_value(dataset, 0x2005, 0x100E))
    if not values:
        private = dataset.get((0x2005, 0x140F))
        if private is not None and getattr(private, "VR", "") == "SQ" and len(private.value):
            values = _as_floats(_private_value(private.value[0], 0x2005, 0x100E))
    if not values or not np.isfinite(values[0]) or values[0] == 0:
        return None
    return float(values[0])


def _standard_diffusion(item: Any) -> DiffusionInfo:
    """(0018,9087)/(0018,9089) at top level, or inside an MRDiffusionSequence item."""
    bvalue = _as_floats(item.get("DiffusionBValue"))
    direction = _as_floats(item.get("DiffusionGradientOrientation"))
    sequence = item.get("DiffusionGradientDirectionSequence")
    if direction is None and sequence:
        direction = _as_floats(sequence[0].get("DiffusionGradientOrientation"))
    return (bvalue[0] if bvalue else None), _unit(direction)


def _siemens_diffusion(dataset: Any, csa: dict[str, Any] | None) -> DiffusionInfo:
    if csa is not None:
        csareader, _ = _nicom()
        try:
            bvalue = csareader.get_b_value(csa)
        except (KeyError, TypeError, ValueError):
            bvalue = None
        if bvalue is not None:
            try:
                vector = csareader.get_g_vector(csa)
            except (KeyError, TypeError, ValueError):
                vector = None
            direction = _unit(list(vector)) if vector is not None else None
            return float(bvalue), direction if direction is not None else (0.0, 0.0, 0.0)
    bvalue_xa = _as_floats(_private_value(dataset, 0x0019, 0x100C), "<i")
    if bvalue_xa:
        direction = _unit(_as_floats(_private_value(dataset, 0x0019, 0x100E), "<d"))
        return bvalue_xa[0], direction if direction is not None else (0.0, 0.0, 0.0)
    return None, None


def _ge_diffusion(dataset: Any) -> DiffusionInfo:
    values = _as_floats(_private_value(dataset, 0x0043, 0x1039))
    if not values:
        return None, None
    bvalue = float(values[0])
    if bvalue >= _GE_B_OFFSET:
        bvalue = float(bvalue % _GE_B_OFFSET)
    components = [
        _as_floats(_private_value(dataset, 0x0019, element)) for element in (0x10BB, 0x10BC, 0x10BD)
    ]
    if any(not c for c in components):
        return bvalue, None
    logical = np.array([c[0] for c in components], dtype=np.float64)  # type: ignore[index]
    orientation = _as_floats(dataset.get("ImageOrientationPatient"))
    if orientation is None or len(orientation) != 6:
        return bvalue, None
    frequency_axis, phase_axis, slice_axis = ge_logical_axes(
        orientation, str(dataset.get("InPlanePhaseEncodingDirection", "COL") or "COL")
    )
    patient = logical[0] * frequency_axis + logical[1] * phase_axis + logical[2] * slice_axis
    return bvalue, _unit(list(patient))


def ge_logical_axes(
    orientation: Any, phase_encoding: str
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Patient (LPS) directions of GE's logical gradient axes (frequency, phase, slice).

    With column phase encoding, frequency runs along the rows (the row direction cosine),
    phase along the columns, and slice along column x row (the slice normal nibabel and
    mriflow order slices by). With ``ROW`` phase encoding frequency and phase swap and the
    frequency axis points against the column direction; for coronal slices (slice normal
    closest to anterior-posterior) the phase axis is reversed. These are the conventions
    dcm2niix applies to GE data (validated by GE on a multi-orientation phantom series);
    the tests check mriflow against dcm2niix for axial, coronal and sagittal, COL and ROW.
    """
    values = np.asarray([float(v) for v in orientation], dtype=np.float64)
    row_cosine, column_cosine = values[:3], values[3:]
    slice_axis = np.cross(column_cosine, row_cosine)
    if phase_encoding.strip().upper() == "ROW":
        frequency_axis, phase_axis = -column_cosine, row_cosine
    else:
        frequency_axis, phase_axis = row_cosine, column_cosine
    if int(np.argmax(np.abs(slice_axis))) == 1:  # coronal slices: GE's phase axis flips
        phase_axis = -phase_axis
    return frequency_axis, phase_axis, slice_axis


def _philips_diffusion(dataset: Any) -> DiffusionInfo:
    values = _as_floats(_private_value(dataset, 0x2001, 0x1003))
    if not values:
        return None, None
    components = [
        _as_floats(_private_value(dataset, 0x2005, element)) for element in (0x10B0, 0x10B1, 0x10B2)
    ]
    if any(not c for c in components):
        return values[0], (0.0, 0.0, 0.0) if values[0] == 0 else None
    return values[0], _unit([c[0] for c in components])  # type: ignore[index]


def diffusion_info(dataset: Any, vendor: str, csa: dict[str, Any] | None) -> DiffusionInfo:
    """``(b-value, unit direction in patient LPS)`` of a single-frame image; Nones if absent.

    The standard tags win when present; otherwise the vendor's private layout is decoded.
    ``dataset`` is a pydicom Dataset or discovery's fast read-only view of one.
    """
    bvalue, direction = _standard_diffusion(dataset)
    if bvalue is not None:
        return bvalue, direction if direction is not None or bvalue else (0.0, 0.0, 0.0)
    dataset = getattr(dataset, "dataset", dataset)  # the pydicom Dataset behind a fast view
    if vendor == "siemens":
        return _siemens_diffusion(dataset, csa)
    if vendor == "ge":
        return _ge_diffusion(dataset)
    if vendor == "philips":
        return _philips_diffusion(dataset)
    return None, None


def frame_diffusion_info(frame_group: Any, dataset: Any, vendor: str) -> DiffusionInfo:
    """Diffusion of one frame of an enhanced multi-frame object (per-frame, then shared)."""
    for group in (frame_group, _shared_group(dataset)):
        if group is None:
            continue
        sequence = group.get("MRDiffusionSequence")
        if sequence:
            bvalue, direction = _standard_diffusion(sequence[0])
            if bvalue is not None:
                return bvalue, direction if direction is not None else (0.0, 0.0, 0.0)
    if vendor == "siemens":
        return _siemens_diffusion(dataset, None)
    return None, None


def _shared_group(dataset: Any) -> Any:
    shared = dataset.get("SharedFunctionalGroupsSequence")
    return shared[0] if shared else None
