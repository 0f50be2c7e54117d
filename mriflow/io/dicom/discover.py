"""Find DICOM image series under a directory by reading headers only.

Each file is parsed with ``pydicom.dcmread(..., stop_before_pixels=True)`` (never
``force=True``: a file without the DICM preamble is not read). Every image frame becomes a
:class:`FrameRecord` holding only what loading needs (geometry, timing, diffusion, scaling,
where the pixels are) and no identity: no names, IDs, dates, institution or device serials.
Records are grouped into :class:`DicomSeries` by SeriesInstanceUID, and each series gets a
``role_hint`` from its headers.
"""

from __future__ import annotations

import io
import logging
import os
import re
import struct
import warnings
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
from pydicom.datadict import tag_for_keyword
from pydicom.errors import InvalidDicomError

from mriflow.errors import MissingFileError, SkippedDicomWarning
from mriflow.io.dicom import vendors

__all__ = ["ROLE_HINTS", "DicomSeries", "FrameRecord", "discover_dicom", "read_records"]

log = logging.getLogger(__name__)

ROLE_HINTS = ("dynamic", "dynamic_frame", "vfa", "t1_look_locker", "dwi", "unknown")

#: Series descriptions of per-timepoint exports such as Siemens TWIST: "... TT=12.3s".
_FRAME_SUFFIX = re.compile(r"[\s_]*TT\s*=\s*([0-9]+(?:\.[0-9]*)?)\s*s\s*$", re.IGNORECASE)
_LOOK_LOCKER = re.compile(r"look[\s_-]*locker|molli|\bLL\b|tfl_?ll|_LL_", re.IGNORECASE)
_PIXEL_DATA = 0x7FE00010
_IN_MEMORY_BYTES = 1 << 20
_UNDEFINED_LENGTH = 0xFFFFFFFF


@dataclass(frozen=True, slots=True)
class FrameRecord:
    """One image frame (a slice, a frame of a multi-frame file, or a whole mosaic).

    Positions and directions are in DICOM patient space (LPS, mm); times in seconds.
    ``frame`` is the 0-based frame index in a multi-frame file, None for single-frame files.
    ``n_mosaic`` > 0 marks a Siemens mosaic holding that many slices.
    """

    path: str
    frame: int | None
    series_uid: str
    rows: int
    columns: int
    orientation: tuple[float, ...] | None
    position: tuple[float, float, float] | None
    pixel_spacing: tuple[float, float] | None
    slice_thickness: float | None
    spacing_between_slices: float | None
    n_mosaic: int = 0
    temporal_position: int | None = None
    acquisition_time: float | None = None
    trigger_time: float | None = None
    instance_number: int | None = None
    acquisition_number: int | None = None
    echo_number: int | None = None
    echo_time: float | None = None
    inversion_time: float | None = None
    flip_angle: float | None = None
    bvalue: float | None = None
    bvector: tuple[float, float, float] | None = None
    rescale_slope: float = 1.0
    rescale_intercept: float = 0.0
    philips_scale_slope: float | None = None
    dtype: str = "<u2"
    compressed: bool = False
    problem: str | None = None
    volume_hint: float | None = None
    transfer_syntax: str = ""
    pixel_offset: int | None = None
    stored_dtype: str = ""
    unused_bits: int = 0
    mosaic_affine: tuple[float, ...] | None = None


@dataclass(frozen=True)
class DicomSeries:
    """A DICOM series found by :func:`discover_dicom`: headers only, no pixels.

    ``repetition_time``/``echo_time``/``inversion_time`` are in ms as in DICOM,
    ``trigger_time_hint`` in seconds (from a ``TT=x.xs`` description suffix).
    ``files`` are sorted by name; load order comes from the geometry, not from names.
    """

    uid: str
    study_uid: str
    description: str
    series_number: int | None
    modality: str
    manufacturer: str
    model: str
    rows: int
    columns: int
    n_files: int
    n_frames: int
    n_temporal_positions: int
    flip_angle: float | None
    repetition_time: float | None
    echo_time: float | None
    inversion_time: float | None
    field_strength: float | None
    image_type: tuple[str, ...]
    role_hint: str = "unknown"
    group_key: str | None = None
    trigger_time_hint: float | None = None
    files: tuple[str, ...] = field(default=(), repr=False)
    records: tuple[FrameRecord, ...] = field(default=(), repr=False)

    @property
    def is_diffusion(self) -> bool:
        """True when any frame carries a non-zero b-value."""
        return any(r.bvalue for r in self.records)

    def acquisition(self) -> dict[str, Any]:
        """Acquisition physics in BIDS names and units, with each field's DICOM provenance."""
        values: dict[str, Any] = {}
        provenance: dict[str, str] = {}

        def put(name: str, value: Any, source: str) -> None:
            if value is not None and value != "":
                values[name] = value
                provenance[name] = source

        ms = 1e-3
        put("Manufacturer", self.manufacturer or None, "(0008,0070) Manufacturer")
        put("ManufacturersModelName", self.model or None, "(0008,1090) ManufacturersModelName")
        put("MagneticFieldStrength", self.field_strength, "(0018,0087) MagneticFieldStrength")
        put(
            "RepetitionTime",
            None if self.repetition_time is None else self.repetition_time * ms,
            "(0018,0080) RepetitionTime [ms -> s]",
        )
        put(
            "EchoTime",
            None if self.echo_time is None else self.echo_time * ms,
            "(0018,0081) EchoTime [ms -> s]",
        )
        put(
            "InversionTime",
            None if self.inversion_time is None else self.inversion_time * ms,
            "(0018,0082) InversionTime [ms -> s]",
        )
        put("FlipAngle", self.flip_angle, "(0018,1314) FlipAngle [deg]")
        put("Modality", self.modality or None, "(0008,0060) Modality")
        put("SeriesDescription", self.description or None, "(0008,103E) SeriesDescription")
        put("ImageType", list(self.image_type) or None, "(0008,0008) ImageType")
        values["provenance"] = provenance
        return values


# --- fast top-level value access ----------------------------------------------------------------

_ASCII_VRS = frozenset({"DS", "IS", "CS", "UI", "TM", "DA", "DT", "AS"})
_TEXT_VRS = frozenset({"LO", "SH"})
_SINGLE_BYTE_CHARSETS = frozenset({"", "ISO_IR 6", "ISO_IR 100", "ISO 2022 IR 6"})
_BINARY_FORMATS = {"US": "H", "SS": "h", "UL": "I", "SL": "i", "FL": "f", "FD": "d"}


class _Header:
    """Read-only access to a dataset's top-level values, decoding plain ones directly.

    pydicom converts each raw element through its generic machinery (about 30 µs an element);
    discovery reads ~40 elements from every file, so numbers, codes, UIDs and times in
    explicit-VR files are decoded here straight from the raw bytes (PS3.5 6.2: backslash
    separated ASCII, or fixed-size binary). Everything else (text in a character set,
    sequences, implicit-VR files, already converted elements) goes through pydicom.
    """

    def __init__(self, dataset: Any) -> None:
        self.dataset = dataset
        self._elements = dict(dataset.items())  # raw (unconverted) elements by tag
        syntax = getattr(getattr(dataset, "file_meta", None), "TransferSyntaxUID", None)
        self._endian = "<" if syntax is None or syntax.is_little_endian else ">"
        charset = self._elements.get(0x00080005)
        charset_value = getattr(charset, "value", b"") or b""
        if isinstance(charset_value, bytes):
            charset_value = charset_value.decode("ascii", "replace")
        names = {str(v).strip(" \x00") for v in str(charset_value).split("\\")}
        self._latin1 = names <= _SINGLE_BYTE_CHARSETS

    def get(self, keyword: str, default: Any = None) -> Any:
        raw = self._elements.get(_tag_of(keyword))
        if raw is None:
            return default
        vr = getattr(raw, "VR", None)
        value = getattr(raw, "value", None)
        if isinstance(value, bytes) and type(raw).__name__ == "RawDataElement":
            if vr in _ASCII_VRS or (vr in _TEXT_VRS and self._latin1):
                parts = value.decode("latin-1").strip(" \x00").split("\\")
                parts = [p.strip() for p in parts]
                return parts if len(parts) > 1 else parts[0]
            if vr in _BINARY_FORMATS:
                code = _BINARY_FORMATS[vr]
                count = len(value) // struct.calcsize(code)
                numbers = struct.unpack(
                    f"{self._endian}{count}{code}", value[: count * struct.calcsize(code)]
                )
                return list(numbers) if count > 1 else (numbers[0] if count else default)
        return self.dataset.get(keyword, default)


_TAGS: dict[str, int] = {}


def _tag_of(keyword: str) -> int:
    tag = _TAGS.get(keyword)
    if tag is None:
        found = tag_for_keyword(keyword)
        if found is None:
            raise KeyError(keyword)
        tag = _TAGS[keyword] = int(found)
    return tag


# --- reading one file -------------------------------------------------------------------------


def _float(value: Any) -> float | None:
    if value is None or value == "":
        return None
    try:
        result = float(value)
    except (TypeError, ValueError):
        return None
    return result if np.isfinite(result) else None


def _int(value: Any) -> int | None:
    number = _float(value)
    return None if number is None else int(number)


def _floats(value: Any, count: int) -> tuple[float, ...] | None:
    if value is None:
        return None
    try:
        numbers = tuple(float(v) for v in value)
    except (TypeError, ValueError):
        return None
    if len(numbers) != count or not all(np.isfinite(numbers)):
        return None
    return numbers


def _strings(value: Any) -> tuple[str, ...]:
    """A multi-valued string element as a tuple (a single value is one item)."""
    if value is None or value == "":
        return ()
    if isinstance(value, str):
        return (value,)
    return tuple(str(v) for v in value)


def _first_float(value: Any) -> float | None:
    """The first number of a multi-valued element (or the value itself), or None."""
    if value is None or isinstance(value, str | bytes):
        return _float(value)
    try:
        return _float(value[0]) if len(value) else None
    except TypeError:
        return _float(value)


def _seconds_of_day(value: Any) -> float | None:
    """Seconds since midnight of a DICOM TM (``HHMMSS.ffffff``) or DT value."""
    text = str(value or "").strip()
    if not text:
        return None
    if len(text) >= 14 and "." not in text[:8]:  # DT: YYYYMMDDHHMMSS.ffffff
        text = text[8:]
    text = text.split("+")[0].split("-")[0]
    try:
        hours = int(text[0:2])
        minutes = int(text[2:4]) if len(text) >= 4 else 0
        seconds = float(text[4:]) if len(text) > 4 else 0.0
    except ValueError:
        return None
    return hours * 3600.0 + minutes * 60.0 + seconds


def _pixel_dtype(header: _Header) -> str:
    bits = int(header.get("BitsAllocated", 16) or 16)
    signed = int(header.get("PixelRepresentation", 0) or 0) == 1
    if bits not in (8, 16, 32, 64):
        bits = 16
    kind = "i" if signed else "u"
    return f"<{kind}{bits // 8}" if bits > 8 else f"|{kind}1"


def _transfer_syntax(header: _Header) -> str:
    meta = getattr(header.dataset, "file_meta", None)
    return str(getattr(meta, "TransferSyntaxUID", "") or "")


@dataclass(frozen=True)
class _PixelLayout:
    """What the PixelData element looks like on disk, checked without reading it."""

    problem: str | None = None
    compressed: bool = False
    #: byte offset of the first frame when the values can be read straight from the file
    #: (native encoding, one sample per pixel); None when pydicom must decode them
    offset: int | None = None
    stored_dtype: str = ""
    unused_bits: int = 0


def _pixel_layout(fp: Any, header: _Header, n_frames: int, size: int) -> _PixelLayout:
    """Check the PixelData element that follows the header.

    ``fp`` stands where ``stop_before_pixels`` left it, at the PixelData tag.
    """
    meta = getattr(header.dataset, "file_meta", None)
    syntax = getattr(meta, "TransferSyntaxUID", None)
    if syntax is not None and syntax.is_deflated:
        return _PixelLayout(compressed=True)
    implicit = bool(syntax.is_implicit_VR) if syntax is not None else True
    little = bool(syntax.is_little_endian) if syntax is not None else True
    compressed = bool(syntax is not None and syntax.is_compressed)
    start = fp.tell()
    head = fp.read(12)
    endian = "<" if little else ">"
    if len(head) < 8:
        return _PixelLayout("has no pixel data (file ends after the header)", compressed)
    group, element = struct.unpack(f"{endian}HH", head[:4])
    if (group << 16 | element) != _PIXEL_DATA:
        return _PixelLayout(
            f"has no pixel data (found tag ({group:04X},{element:04X}) instead)", compressed
        )
    if implicit:
        (length,) = struct.unpack(f"{endian}I", head[4:8])
        value_start = start + 8
    else:
        if len(head) < 12:
            return _PixelLayout("pixel data element is truncated", compressed)
        (length,) = struct.unpack(f"{endian}I", head[8:12])
        value_start = start + 12
    if length == _UNDEFINED_LENGTH:
        return _PixelLayout(
            None if size > value_start else "compressed pixel data is empty", compressed=True
        )
    rows = int(header.get("Rows", 0) or 0)
    columns = int(header.get("Columns", 0) or 0)
    samples = int(header.get("SamplesPerPixel", 1) or 1)
    bits = int(header.get("BitsAllocated", 16) or 16)
    stored_bits = int(header.get("BitsStored", bits) or bits)
    expected = rows * columns * samples * n_frames * bits // 8
    available = size - value_start
    if available < min(length, expected):
        return _PixelLayout(
            f"pixel data is truncated: {available} bytes on disk, the header needs {expected}",
            compressed,
        )
    if length < expected:
        return _PixelLayout(
            f"pixel data is too short: {length} bytes for {n_frames} frame(s) of "
            f"{rows}x{columns} at {bits} bits ({expected} bytes)",
            compressed,
        )
    if compressed or samples != 1 or bits not in (8, 16, 32) or not 0 < stored_bits <= bits:
        return _PixelLayout(compressed=compressed)
    signed = int(header.get("PixelRepresentation", 0) or 0) == 1
    stored_dtype = np.dtype(f"{endian}{'i' if signed else 'u'}{bits // 8}")
    return _PixelLayout(
        offset=value_start, stored_dtype=stored_dtype.str, unused_bits=bits - stored_bits
    )


def read_records(path: str) -> tuple[list[FrameRecord], dict[str, Any] | None, str | None]:
    """Parse one file's header: ``(frame records, series info, skip reason)``.

    A file that is not DICOM, not readable, or holds no image returns no records and the
    reason it was skipped. Series info holds the per-series fields of :class:`DicomSeries`.
    """
    try:
        with open(path, "rb") as file:
            size = os.fstat(file.fileno()).st_size
            # small files (most single-frame images) are parsed from memory: pydicom reads
            # element by element, and a BytesIO answers those reads several times faster
            fp: Any = io.BytesIO(file.read()) if size <= _IN_MEMORY_BYTES else file
            dataset = pydicom.dcmread(fp, stop_before_pixels=True)
            if "Rows" not in dataset or "Columns" not in dataset:
                sop = getattr(dataset.get("SOPClassUID"), "name", "unknown SOP class")
                return [], None, f"DICOM object without an image (no Rows/Columns; {sop})"
            if "SeriesInstanceUID" not in dataset:
                return [], None, "DICOM image without SeriesInstanceUID"
            header = _Header(dataset)
            n_frames = max(_int(header.get("NumberOfFrames")) or 1, 1)
            layout = _pixel_layout(fp, header, n_frames, size)
    except InvalidDicomError as exc:
        return [], None, f"not a DICOM file ({exc})"
    except (OSError, EOFError, ValueError, struct.error, KeyError, TypeError) as exc:
        return [], None, f"unreadable DICOM header ({type(exc).__name__}: {exc})"
    try:
        return _records_of(path, header, n_frames, layout)
    except (ValueError, TypeError, KeyError, AttributeError, IndexError) as exc:
        return [], None, f"header fields cannot be interpreted ({type(exc).__name__}: {exc})"


def _series_info(header: _Header) -> dict[str, Any]:
    return {
        "uid": str(header.get("SeriesInstanceUID")),
        "study_uid": str(header.get("StudyInstanceUID", "") or ""),
        "description": str(header.get("SeriesDescription", "") or "").strip(),
        "series_number": _int(header.get("SeriesNumber")),
        "modality": str(header.get("Modality", "") or ""),
        "manufacturer": str(header.get("Manufacturer", "") or "").strip(),
        "model": str(header.get("ManufacturerModelName", "") or "").strip(),
        "repetition_time": _float(header.get("RepetitionTime")),
        "field_strength": _float(header.get("MagneticFieldStrength")),
        "image_type": _strings(header.get("ImageType")),
    }


def _records_of(
    path: str, header: _Header, n_frames: int, layout: _PixelLayout
) -> tuple[list[FrameRecord], dict[str, Any], None]:
    dataset = header.dataset
    info = _series_info(header)
    vendor = vendors.vendor_of(header)
    if "PerFrameFunctionalGroupsSequence" in dataset:
        return _multiframe_records(path, dataset, vendor, layout), info, None
    csa = vendors.csa_image_header(dataset) if vendor == "siemens" else None
    n_mosaic = vendors.mosaic_slice_count(header, csa)
    rows, columns = int(header.get("Rows")), int(header.get("Columns"))
    position = _floats(header.get("ImagePositionPatient"), 3)
    if n_mosaic:
        _, dicomwrappers = vendors._nicom()
        wrapper = dicomwrappers.MosaicWrapper(dataset, csa, n_mosaic)
        rows, columns = int(wrapper.image_shape[0]), int(wrapper.image_shape[1])
        mosaic_position = wrapper.image_position
        position = None if mosaic_position is None else tuple(float(v) for v in mosaic_position)
        try:
            mosaic_affine = tuple(float(v) for v in np.asarray(wrapper.affine).ravel())
        except Exception:  # nibabel raises its own errors for incomplete geometry
            mosaic_affine = None
    else:
        mosaic_affine = None
    bvalue, bvector = vendors.diffusion_info(header, vendor, csa)
    scale = vendors.philips_scale_slope(dataset) if vendor == "philips" else None
    record = FrameRecord(
        path=path,
        frame=None,
        series_uid=info["uid"],
        rows=rows,
        columns=columns,
        orientation=_floats(header.get("ImageOrientationPatient"), 6),
        position=position,  # type: ignore[arg-type]
        pixel_spacing=_floats(header.get("PixelSpacing"), 2),  # type: ignore[arg-type]
        slice_thickness=_float(header.get("SliceThickness")),
        spacing_between_slices=_float(header.get("SpacingBetweenSlices")),
        n_mosaic=n_mosaic,
        mosaic_affine=mosaic_affine,
        temporal_position=_int(header.get("TemporalPositionIdentifier")),
        acquisition_time=_seconds_of_day(
            header.get("AcquisitionTime") or header.get("ContentTime")
        ),
        trigger_time=_float(header.get("TriggerTime")),
        instance_number=_int(header.get("InstanceNumber")),
        acquisition_number=_int(header.get("AcquisitionNumber")),
        echo_number=_int(header.get("EchoNumbers")),
        echo_time=_float(header.get("EchoTime")),
        inversion_time=_float(header.get("InversionTime")),
        flip_angle=_float(header.get("FlipAngle")),
        bvalue=bvalue,
        bvector=bvector,
        rescale_slope=_float(header.get("RescaleSlope")) or 1.0,
        rescale_intercept=_float(header.get("RescaleIntercept")) or 0.0,
        philips_scale_slope=scale,
        dtype=_pixel_dtype(header),
        compressed=layout.compressed,
        transfer_syntax=_transfer_syntax(header),
        problem=layout.problem,
        pixel_offset=layout.offset,
        stored_dtype=layout.stored_dtype,
        unused_bits=layout.unused_bits,
    )
    return [record], info, None


def _group_item(frame_group: Any, shared: Any, name: str) -> Any:
    """The first item of functional-group sequence ``name``, per-frame first, then shared."""
    for group in (frame_group, shared):
        if group is not None:
            sequence = group.get(name)
            if sequence:
                return sequence[0]
    return None


def _multiframe_records(
    path: str, dataset: Any, vendor: str, layout: _PixelLayout
) -> list[FrameRecord]:
    """One record per frame of an enhanced multi-frame object (per-frame functional groups)."""
    info_uid = str(dataset.SeriesInstanceUID)
    shared_sequence = dataset.get("SharedFunctionalGroupsSequence")
    shared = shared_sequence[0] if shared_sequence else None
    per_frame = dataset.PerFrameFunctionalGroupsSequence
    top_scale = vendors.philips_scale_slope(dataset) if vendor == "philips" else None
    header = _Header(dataset)
    dtype = _pixel_dtype(header)
    syntax = _transfer_syntax(header)
    frame_bytes = int(dataset.Rows) * int(dataset.Columns) * np.dtype(dtype).itemsize
    records = []
    for index, frame_group in enumerate(per_frame):
        orientation_item = _group_item(frame_group, shared, "PlaneOrientationSequence")
        position_item = _group_item(frame_group, shared, "PlanePositionSequence")
        measures = _group_item(frame_group, shared, "PixelMeasuresSequence")
        content = _group_item(frame_group, shared, "FrameContentSequence")
        transform = _group_item(frame_group, shared, "PixelValueTransformationSequence")
        timing = _group_item(frame_group, shared, "MRTimingAndRelatedParametersSequence")
        echo = _group_item(frame_group, shared, "MREchoSequence")
        modifier = _group_item(frame_group, shared, "MRModifierSequence")
        bvalue, bvector = vendors.frame_diffusion_info(frame_group, dataset, vendor)
        scale = top_scale
        if vendor == "philips":
            scale = vendors.philips_scale_slope(frame_group) or top_scale
        get = lambda item, key: None if item is None else item.get(key)  # noqa: E731
        records.append(
            FrameRecord(
                path=path,
                frame=index,
                series_uid=info_uid,
                rows=int(dataset.Rows),
                columns=int(dataset.Columns),
                orientation=_floats(get(orientation_item, "ImageOrientationPatient"), 6),
                position=_floats(get(position_item, "ImagePositionPatient"), 3),  # type: ignore[arg-type]
                pixel_spacing=_floats(get(measures, "PixelSpacing"), 2),  # type: ignore[arg-type]
                slice_thickness=_float(get(measures, "SliceThickness")),
                spacing_between_slices=_float(get(measures, "SpacingBetweenSlices")),
                temporal_position=_int(get(content, "TemporalPositionIndex")),
                acquisition_time=_seconds_of_day(get(content, "FrameAcquisitionDateTime")),
                trigger_time=_float(
                    get(
                        _group_item(frame_group, shared, "CardiacSynchronizationSequence"),
                        "NominalCardiacTriggerDelayTime",
                    )
                ),
                instance_number=index + 1,
                acquisition_number=_int(dataset.get("AcquisitionNumber")),
                echo_number=_int(get(content, "ReferencedEchoNumber") if content else None),
                echo_time=_float(get(echo, "EffectiveEchoTime")),
                inversion_time=_first_float(get(modifier, "InversionTimes")),
                flip_angle=_float(get(timing, "FlipAngle")),
                bvalue=bvalue,
                bvector=bvector,
                rescale_slope=_float(get(transform, "RescaleSlope"))
                or _float(dataset.get("RescaleSlope"))
                or 1.0,
                rescale_intercept=_float(get(transform, "RescaleIntercept"))
                or _float(dataset.get("RescaleIntercept"))
                or 0.0,
                philips_scale_slope=scale,
                dtype=dtype,
                compressed=layout.compressed,
                transfer_syntax=syntax,
                problem=layout.problem,
                pixel_offset=None if layout.offset is None else layout.offset + index * frame_bytes,
                stored_dtype=layout.stored_dtype,
                unused_bits=layout.unused_bits,
            )
        )
    return records


# --- discovery --------------------------------------------------------------------------------


def _candidate_files(root: Path) -> list[str]:
    files: list[str] = []
    for directory, subdirs, names in os.walk(root):
        subdirs.sort()
        files.extend(
            os.path.join(directory, n)
            for n in sorted(names)
            if not n.startswith(".") and n.upper() != "DICOMDIR"
        )
    return files


def _read_many(
    paths: Sequence[str],
) -> list[tuple[list[FrameRecord], dict[str, Any] | None, str | None]]:
    return [read_records(p) for p in paths]


def discover_dicom(directory: str | os.PathLike[str], *, workers: int = 1) -> list[DicomSeries]:
    """Find the DICOM image series under ``directory`` (recursively), reading headers only.

    Files that are not DICOM, unreadable, or hold no image are skipped; each is logged at
    INFO level with the reason. Returns series sorted by study, series number and UID, each
    with a ``role_hint`` (see :data:`ROLE_HINTS`). ``workers`` > 1 parses headers in that
    many processes; on the shared 2-core benchmark machine that was slower in one run and
    faster in another (bench/results/dicom.md), so the default is to parse here.
    """
    root = Path(directory).expanduser()
    if not root.exists():
        raise MissingFileError(f"{root}: no such file or directory")
    paths = [str(root)] if root.is_file() else _candidate_files(root)
    if workers > 1 and len(paths) > 1:
        batch = max(64, len(paths) // (workers * 8))
        batches = [paths[i : i + batch] for i in range(0, len(paths), batch)]
        with ProcessPoolExecutor(max_workers=workers) as pool:
            results = [r for part in pool.map(_read_many, batches) for r in part]
    else:
        results = _read_many(paths)
    by_series: dict[str, list[FrameRecord]] = defaultdict(list)
    infos: dict[str, dict[str, Any]] = {}
    headerless: list[str] = []
    for path, (records, info, reason) in zip(paths, results, strict=True):
        if reason is not None or info is None:
            log.info("%s: skipped: %s", path, reason)
            if reason and "DICM" in reason and _looks_like_raw_dataset(path):
                headerless.append(path)
            continue
        by_series[info["uid"]].extend(records)
        infos.setdefault(info["uid"], info)
    if headerless:
        warnings.warn(
            f"{root}: {len(headerless)} file(s) look like DICOM datasets without the Part-10 "
            f"header (e.g. {headerless[0]}) and were not read, so a series may be incomplete; "
            "rewrite them as Part-10 files (e.g. dcmconv, gdcmconv)",
            SkippedDicomWarning,
            stacklevel=2,
        )
    series = [_make_series(infos[uid], records) for uid, records in by_series.items()]
    series = _assign_roles(series)
    return sorted(series, key=lambda s: (s.study_uid, s.series_number or 0, s.uid))


def _looks_like_raw_dataset(path: str) -> bool:
    """A file starting with a group 0x0002 or 0x0008 element: DICOM missing its preamble."""
    try:
        with open(path, "rb") as stream:
            start = stream.read(8)
    except OSError:
        return False
    return len(start) == 8 and start[:2] in (b"\x02\x00", b"\x08\x00")


def _most_common(values: Iterable[Any]) -> Any:
    counts = Counter(v for v in values if v is not None)
    return counts.most_common(1)[0][0] if counts else None


def _count_volumes(records: Sequence[FrameRecord]) -> int:
    """Images per slice position (distinct timing/diffusion; exact repeats count once)."""
    temporal = {r.temporal_position for r in records if r.temporal_position is not None}
    if len(temporal) > 1:
        return len(temporal)
    if records and records[0].n_mosaic:
        return len({_image_identity(r) for r in records})
    placed = [r for r in records if r.position is not None and r.orientation is not None]
    if not placed:
        return 1
    orientations = np.array([r.orientation for r in placed], dtype=np.float64)
    positions = np.array([r.position for r in placed], dtype=np.float64)
    normals = np.cross(orientations[:, 3:], orientations[:, :3])
    keys = np.round(np.einsum("ij,ij->i", normals, positions), 2)
    per_position: dict[float, set[tuple[Any, ...]]] = defaultdict(set)
    for key, record in zip(keys.tolist(), placed, strict=True):
        per_position[key].add(_image_identity(record))
    return max(len(v) for v in per_position.values())


def _image_identity(record: FrameRecord) -> tuple[Any, ...]:
    return (
        record.temporal_position,
        record.acquisition_time,
        record.trigger_time,
        record.acquisition_number,
        record.instance_number,
        record.echo_number,
        record.bvalue,
        record.bvector,
    )


def _make_series(info: dict[str, Any], records: list[FrameRecord]) -> DicomSeries:
    files = tuple(sorted({r.path for r in records}))
    description = info["description"]
    match = _FRAME_SUFFIX.search(description)
    return DicomSeries(
        uid=info["uid"],
        study_uid=info["study_uid"],
        description=description,
        series_number=info["series_number"],
        modality=info["modality"],
        manufacturer=info["manufacturer"],
        model=info["model"],
        rows=_most_common(r.rows for r in records),
        columns=_most_common(r.columns for r in records),
        n_files=len(files),
        n_frames=sum(max(r.n_mosaic, 1) for r in records),
        n_temporal_positions=_count_volumes(records),
        flip_angle=_most_common(r.flip_angle for r in records),
        repetition_time=info["repetition_time"],
        echo_time=_most_common(r.echo_time for r in records),
        inversion_time=_most_common(r.inversion_time for r in records),
        field_strength=info["field_strength"],
        image_type=info["image_type"],
        trigger_time_hint=float(match.group(1)) if match else None,
        files=files,
        records=tuple(records),
    )


def _assign_roles(series: list[DicomSeries]) -> list[DicomSeries]:
    """Give every series its ``role_hint`` (and ``group_key`` for frame and VFA sets)."""
    assigned: list[DicomSeries] = []
    vfa_candidates: dict[str, list[DicomSeries]] = defaultdict(list)
    for item in series:
        inversion_times = {r.inversion_time for r in item.records if r.inversion_time}
        if item.is_diffusion:
            assigned.append(replace(item, role_hint="dwi"))
        elif _LOOK_LOCKER.search(item.description) or (
            len(inversion_times) > 1 and item.n_temporal_positions > 1
        ):
            assigned.append(replace(item, role_hint="t1_look_locker"))
        elif item.n_temporal_positions > 1:
            assigned.append(replace(item, role_hint="dynamic"))
        elif item.trigger_time_hint is not None:
            stem = _FRAME_SUFFIX.sub("", item.description).strip()
            key = f"{item.study_uid}|{item.rows}x{item.columns}|{stem}"
            assigned.append(replace(item, role_hint="dynamic_frame", group_key=key))
        else:
            tr = None if item.repetition_time is None else round(item.repetition_time, 2)
            key = f"{item.study_uid}|{item.rows}x{item.columns}x{item.n_frames}|TR={tr}"
            vfa_candidates[key].append(item)
    for key, members in vfa_candidates.items():
        angles = {m.flip_angle for m in members if m.flip_angle is not None}
        is_vfa = len(angles) > 1
        assigned.extend(
            replace(m, role_hint="vfa", group_key=key) if is_vfa else m for m in members
        )
    return assigned
