"""Acquisition parameters per modality, resolved from layered metadata with provenance.

Every image opened with a ``modality`` gets ``attrs["acquisition"]``: a plain dict with, for
each parameter, its value, unit, and where it came from. Sources are *layers*, tried highest
priority first:

1. ``argument``: values passed explicitly (``open_image(..., acquisition={...})``),
2. ``sidecar``: BIDS files: the ``.bval``/``.bvec`` pair, then the JSON sidecars merged by the
   BIDS inheritance principle (the nearest JSON up the tree wins key by key),
3. ``dicom-vendor``: private vendor tags (Siemens CSA, GE, Philips),
4. ``dicom``: standard DICOM attributes,
5. ``header``: the NIfTI header (``pixdim[4]`` with explicit time units),
6. ``default``: documented defaults (e.g. the ASL white paper's labeling efficiencies).

Layers speak BIDS: keys are BIDS sidecar names (``RepetitionTime``, ``PostLabelingDelay``),
values are in BIDS units. **Units** after resolution: times in seconds (s), angles in degrees
(deg), field strength in tesla (T), b-values in s/mm², b-vectors as unit vectors in FSL's
convention (the ``.bvec`` file's frame). DICOM values (milliseconds) are converted on the way
in by :func:`dicom_layers`.

``RepetitionTime`` follows the BIDS definition: the time between the starts of successive
*volumes*. It sets the ``t`` axis. The interval between excitation pulses of a 3D gradient
echo (the 5 ms "TR" of a DCE protocol) is BIDS ``RepetitionTimeExcitation``; for DCE the
standard DICOM ``RepetitionTime`` (0018,0080) maps there, since that is what it means in a 3D
GRE series.

For a DICOM reader: build the layers of a series' first header with
:func:`dicom_layers` and pass them to :func:`attach_acquisition` (``dicom=``); the sidecar,
argument and default layers are added there, with their priorities.
"""

from __future__ import annotations

import dataclasses
import enum
import math
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from mriflow.errors import AcquisitionError, MetadataWarning, MissingTimingError, SidecarError

__all__ = [
    "LEVELS",
    "Acquisition",
    "AnatAcquisition",
    "AslAcquisition",
    "DceAcquisition",
    "DscAcquisition",
    "DwiAcquisition",
    "IvimAcquisition",
    "MetadataLayer",
    "Modality",
    "acquisition_class",
    "attach_acquisition",
    "dicom_layers",
    "resolve_acquisition",
]

#: Metadata levels, highest priority first.
LEVELS = ("argument", "sidecar", "dicom-vendor", "dicom", "header", "default")


class Modality(enum.StrEnum):
    """The kinds of acquisition mriflow knows the parameters of."""

    DWI = "dwi"
    DCE = "dce"
    DSC = "dsc"
    ASL = "asl"
    IVIM = "ivim"
    ANAT = "anat"

    @classmethod
    def parse(cls, value: str | Modality) -> Modality:
        """The modality named ``value`` (case-insensitive), or a ``ValueError`` listing all."""
        try:
            return cls(str(value).lower())
        except ValueError:
            names = ", ".join(m.value for m in cls)
            raise ValueError(f"unknown modality {value!r}; expected one of {names}") from None


@dataclass(frozen=True)
class MetadataLayer:
    """One source of acquisition metadata: values keyed by BIDS names, in BIDS units.

    ``level`` is one of :data:`LEVELS`; ``origins`` says, per key, exactly where the value was
    read (a file path, a DICOM tag); ``origin`` is the fallback for keys not in ``origins``.
    """

    level: str
    values: Mapping[str, Any]
    origins: Mapping[str, str] = field(default_factory=dict)
    origin: str = ""

    def __post_init__(self) -> None:
        if self.level not in LEVELS:
            raise ValueError(f"metadata level must be one of {LEVELS}, got {self.level!r}")

    def where(self, key: str) -> str:
        """Where ``key`` of this layer was read."""
        return self.origins.get(key, self.origin)


# --- value conversion -------------------------------------------------------------------------


def _number(value: Any, key: str, where: str, *, low: float, high: float, unit: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float | np.number):
        raise AcquisitionError(f"{where}: {key} must be a number ({unit}), got {value!r}")
    number = float(value)
    if not (math.isfinite(number) and low <= number <= high):
        hint = " (it looks like milliseconds; BIDS uses seconds)" if unit == "s" else ""
        raise AcquisitionError(
            f"{where}: {key} is {number} {unit}, outside the plausible range [{low}, {high}]{hint}"
        )
    return number


def _seconds(high: float = 100.0, low: float = 0.0) -> Callable[[Any, str, str], Any]:
    def convert(value: Any, key: str, where: str) -> Any:
        return _number(value, key, where, low=low, high=high, unit="s")

    return convert


def _seconds_or_list(high: float = 100.0) -> Callable[[Any, str, str], Any]:
    def convert(value: Any, key: str, where: str) -> Any:
        if isinstance(value, list | tuple):
            if not value:
                raise AcquisitionError(f"{where}: {key} is an empty list")
            return [_number(v, key, where, low=0.0, high=high, unit="s") for v in value]
        return _number(value, key, where, low=0.0, high=high, unit="s")

    return convert


def _degrees(value: Any, key: str, where: str) -> Any:
    if isinstance(value, list | tuple):
        return [_number(v, key, where, low=0.0, high=180.0, unit="deg") for v in value]
    return _number(value, key, where, low=0.0, high=180.0, unit="deg")


def _tesla(value: Any, key: str, where: str) -> float:
    return _number(value, key, where, low=0.01, high=20.0, unit="T")


def _plain_number(value: Any, key: str, where: str) -> float:
    return _number(value, key, where, low=-math.inf, high=math.inf, unit="")


def _fraction(value: Any, key: str, where: str) -> float:
    return _number(value, key, where, low=0.0, high=1.0, unit="")


def _count(value: Any, key: str, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 0:
        raise AcquisitionError(f"{where}: {key} must be a non-negative integer, got {value!r}")
    return int(value)


def _flag(value: Any, key: str, where: str) -> bool:
    if not isinstance(value, bool | np.bool_):
        raise AcquisitionError(f"{where}: {key} must be true or false, got {value!r}")
    return bool(value)


def _choice(*choices: str) -> Callable[[Any, str, str], str]:
    lookup = {c.lower(): c for c in choices}

    def convert(value: Any, key: str, where: str) -> str:
        if not isinstance(value, str) or value.lower() not in lookup:
            raise AcquisitionError(
                f"{where}: {key} must be one of {', '.join(choices)}, got {value!r}"
            )
        return lookup[value.lower()]

    return convert


def _bvalues(value: Any, key: str, where: str) -> list[float]:
    values = np.atleast_1d(np.asarray(value, dtype=object)).ravel().tolist()
    out = [_number(v, key, where, low=0.0, high=1e5, unit="s/mm²") for v in values]
    return out


def _bvectors(value: Any, key: str, where: str) -> list[list[float]]:
    try:
        table = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise AcquisitionError(f"{where}: {key} must be a table of numbers ({exc})") from exc
    if table.ndim != 2 or 3 not in table.shape:
        raise AcquisitionError(f"{where}: {key} must be nx3 directions, got shape {table.shape}")
    if table.shape[1] != 3:
        table = table.T
    if not np.all(np.isfinite(table)):
        raise AcquisitionError(f"{where}: {key} holds NaN or infinite values")
    return table.tolist()


def _meta(
    key: str | tuple[str, ...],
    unit: str,
    convert: Callable[[Any, str, str], Any],
    *,
    doc: str = "",
) -> dict[str, Any]:
    """Field metadata of a parameter read from BIDS ``key`` (or the first of several keys)."""
    keys = (key,) if isinstance(key, str) else key
    return {"keys": keys, "unit": unit, "convert": convert, "doc": doc}


# --- parameter classes -------------------------------------------------------------------------


@dataclass(frozen=True)
class Acquisition:
    """Resolved acquisition parameters of one image; subclasses list them per modality.

    Field metadata holds each parameter's BIDS key(s), unit and converter. ``provenance``
    maps a field name to ``(level, origin)``: which layer gave the value and where exactly.
    """

    modality: ClassVar[Modality]
    provenance: Mapping[str, tuple[str, str]] = field(default_factory=dict, compare=False)

    @classmethod
    def parameters(cls) -> tuple[dataclasses.Field[Any], ...]:
        """The parameter fields (everything but ``provenance``)."""
        return tuple(f for f in dataclasses.fields(cls) if "keys" in f.metadata)

    def units(self) -> dict[str, str]:
        """Unit of each parameter (``""`` for dimensionless or text)."""
        return {f.name: f.metadata["unit"] for f in self.parameters()}

    def to_dict(self) -> dict[str, Any]:
        """A plain, JSON-ready dict: ``{"modality": ..., name: {value, unit, source, origin}}``.

        Parameters that no layer gave (value ``None``) are left out. Time series also get
        ``temporal_resolution`` (s), derived from ``volume_timing``.
        """
        out: dict[str, Any] = {"modality": self.modality.value}
        for spec in self.parameters():
            value = getattr(self, spec.name)
            if value is None:
                continue
            level, origin = self.provenance.get(spec.name, ("", ""))
            out[spec.name] = {
                "value": value,
                "unit": spec.metadata["unit"],
                "source": level,
                "origin": origin,
            }
        resolution = getattr(self, "temporal_resolution", None)
        if resolution is not None:
            level, origin = self.provenance.get("volume_timing", ("", ""))
            out["temporal_resolution"] = {
                "value": resolution,
                "unit": "s",
                "source": level,
                "origin": f"median volume interval, from {origin}",
            }
        return out


@dataclass(frozen=True)
class _Timed(Acquisition):
    """Parameters shared by time series: the start time of each volume."""

    volume_timing: list[float] | None = field(
        default=None,
        metadata=_meta(
            ("VolumeTiming", "RepetitionTime"),
            "s",
            _seconds_or_list(high=1e6),
            doc="start time of each volume, from VolumeTiming or n x RepetitionTime",
        ),
    )
    echo_time: float | list[float] | None = field(
        default=None, metadata=_meta("EchoTime", "s", _seconds_or_list(high=1.0))
    )
    magnetic_field_strength: float | None = field(
        default=None, metadata=_meta("MagneticFieldStrength", "T", _tesla)
    )

    @property
    def temporal_resolution(self) -> float | None:
        """Median interval between volume starts (s), or None for one volume / no timing."""
        if self.volume_timing is None or len(self.volume_timing) < 2:
            return None
        return float(np.median(np.diff(self.volume_timing)))


@dataclass(frozen=True)
class DceAcquisition(_Timed):
    """Dynamic contrast-enhanced T1-weighted series.

    ``repetition_time`` is the excitation TR of the 3D gradient echo (BIDS
    ``RepetitionTimeExcitation``, DICOM RepetitionTime); ``flip_angle`` is one number, or one
    per volume for a variable-flip-angle series. ``volume_timing`` sets the ``t`` axis.
    """

    modality: ClassVar[Modality] = Modality.DCE
    repetition_time: float | None = field(
        default=None,
        metadata=_meta("RepetitionTimeExcitation", "s", _seconds(high=10.0), doc="excitation TR"),
    )
    flip_angle: float | list[float] | None = field(
        default=None, metadata=_meta("FlipAngle", "deg", _degrees)
    )


@dataclass(frozen=True)
class DscAcquisition(_Timed):
    """Dynamic susceptibility contrast T2*-weighted series (``repetition_time`` = volume TR)."""

    modality: ClassVar[Modality] = Modality.DSC
    repetition_time: float | None = field(
        default=None, metadata=_meta("RepetitionTime", "s", _seconds())
    )
    flip_angle: float | list[float] | None = field(
        default=None, metadata=_meta("FlipAngle", "deg", _degrees)
    )


_LABEL_EFFICIENCY = {"PCASL": 0.85, "CASL": 0.68, "PASL": 0.98}  # Alsop et al. 2015


@dataclass(frozen=True)
class AslAcquisition(Acquisition):
    """Arterial spin labeling, per the BIDS ASL appendix.

    ``post_labeling_delay`` and ``labeling_duration`` are one number, or one per volume for
    multi-PLD/multi-LD series (also on the ``volume`` axis as coordinates). PASL with
    ``bolus_cut_off_flag`` gives the technique (QUIPSS, QUIPSSII, Q2TIPS) and its delay
    time(s). ``m0_scale`` multiplies the M0 image before quantification (default 1).
    ``labeling_efficiency`` defaults to the ASL white paper's value for the labeling type.
    """

    modality: ClassVar[Modality] = Modality.ASL
    labeling_type: str | None = field(
        default=None,
        metadata=_meta("ArterialSpinLabelingType", "", _choice("PCASL", "PASL", "CASL")),
    )
    post_labeling_delay: float | list[float] | None = field(
        default=None, metadata=_meta("PostLabelingDelay", "s", _seconds_or_list())
    )
    labeling_duration: float | list[float] | None = field(
        default=None, metadata=_meta("LabelingDuration", "s", _seconds_or_list())
    )
    background_suppression: bool | None = field(
        default=None, metadata=_meta("BackgroundSuppression", "", _flag)
    )
    background_suppression_pulse_time: float | list[float] | None = field(
        default=None, metadata=_meta("BackgroundSuppressionPulseTime", "s", _seconds_or_list())
    )
    m0_type: str | None = field(
        default=None,
        metadata=_meta("M0Type", "", _choice("Separate", "Included", "Estimate", "Absent")),
    )
    m0_estimate: float | None = field(default=None, metadata=_meta("M0Estimate", "", _plain_number))
    m0_scale: float | None = field(default=1.0, metadata=_meta("M0Scale", "", _plain_number))
    bolus_cut_off_flag: bool | None = field(
        default=None, metadata=_meta("BolusCutOffFlag", "", _flag)
    )
    bolus_cut_off_technique: str | None = field(
        default=None,
        metadata=_meta("BolusCutOffTechnique", "", _choice("QUIPSS", "QUIPSSII", "Q2TIPS")),
    )
    bolus_cut_off_delay_time: float | list[float] | None = field(
        default=None, metadata=_meta("BolusCutOffDelayTime", "s", _seconds_or_list())
    )
    labeling_efficiency: float | None = field(
        default=None, metadata=_meta("LabelingEfficiency", "", _fraction)
    )
    total_acquired_pairs: int | None = field(
        default=None, metadata=_meta("TotalAcquiredPairs", "", _count)
    )
    repetition_time_preparation: float | list[float] | None = field(
        default=None, metadata=_meta("RepetitionTimePreparation", "s", _seconds_or_list())
    )
    volume_timing: list[float] | None = field(
        default=None,
        metadata=_meta(
            ("VolumeTiming", "RepetitionTimePreparation", "RepetitionTime"),
            "s",
            _seconds_or_list(high=1e6),
            doc="start time of each volume",
        ),
    )
    echo_time: float | list[float] | None = field(
        default=None, metadata=_meta("EchoTime", "s", _seconds_or_list(high=1.0))
    )
    magnetic_field_strength: float | None = field(
        default=None, metadata=_meta("MagneticFieldStrength", "T", _tesla)
    )


@dataclass(frozen=True)
class DwiAcquisition(Acquisition):
    """Diffusion-weighted series: b-values (s/mm²) and FSL-convention b-vectors per volume."""

    modality: ClassVar[Modality] = Modality.DWI
    bvalues: list[float] | None = field(
        default=None, metadata=_meta(("bval", "bValues", "DiffusionBValue"), "s/mm²", _bvalues)
    )
    bvectors: list[list[float]] | None = field(
        default=None,
        metadata=_meta(("bvec", "bVectors", "DiffusionGradientOrientation"), "", _bvectors),
    )
    repetition_time: float | None = field(
        default=None, metadata=_meta("RepetitionTime", "s", _seconds())
    )
    echo_time: float | None = field(
        default=None, metadata=_meta("EchoTime", "s", _seconds(high=1.0))
    )
    magnetic_field_strength: float | None = field(
        default=None, metadata=_meta("MagneticFieldStrength", "T", _tesla)
    )


@dataclass(frozen=True)
class IvimAcquisition(DwiAcquisition):
    """Intravoxel incoherent motion: a diffusion series with several low and high b-values."""

    modality: ClassVar[Modality] = Modality.IVIM


@dataclass(frozen=True)
class AnatAcquisition(Acquisition):
    """Structural image (T1w, T2w, FLAIR, ...)."""

    modality: ClassVar[Modality] = Modality.ANAT
    repetition_time: float | None = field(
        default=None, metadata=_meta("RepetitionTime", "s", _seconds())
    )
    echo_time: float | None = field(
        default=None, metadata=_meta("EchoTime", "s", _seconds(high=1.0))
    )
    inversion_time: float | None = field(
        default=None, metadata=_meta("InversionTime", "s", _seconds(high=10.0))
    )
    flip_angle: float | None = field(default=None, metadata=_meta("FlipAngle", "deg", _degrees))
    magnetic_field_strength: float | None = field(
        default=None, metadata=_meta("MagneticFieldStrength", "T", _tesla)
    )


_CLASSES: dict[Modality, type[Acquisition]] = {
    cls.modality: cls
    for cls in (
        DceAcquisition,
        DscAcquisition,
        AslAcquisition,
        DwiAcquisition,
        IvimAcquisition,
        AnatAcquisition,
    )
}


def acquisition_class(modality: str | Modality) -> type[Acquisition]:
    """The parameter dataclass of ``modality``."""
    return _CLASSES[Modality.parse(modality)]


# --- resolution ----------------------------------------------------------------------------


_NONSTANDARD = {"bValues", "DiffusionBValue", "bVectors", "DiffusionGradientOrientation"}


def _normalise_explicit(values: Mapping[str, Any], cls: type[Acquisition]) -> dict[str, Any]:
    """Explicit arguments may use field names (``repetition_time``) or BIDS keys."""
    by_name = {f.name: f.metadata["keys"][0] for f in cls.parameters()}
    return {by_name.get(key, key): value for key, value in values.items()}


def resolve_acquisition(
    modality: str | Modality,
    layers: Sequence[MetadataLayer],
    *,
    n_volumes: int = 1,
    where: str = "image",
) -> Acquisition:
    """Resolve the parameters of ``modality`` from ``layers``, highest level first.

    For each parameter the first layer (by :data:`LEVELS` priority, then given order) holding
    one of its BIDS keys supplies the value. Per-volume lists are checked against
    ``n_volumes``; required parameters are checked per modality (ASL: per labeling type).
    ``where`` names the sidecar for messages about missing fields.
    """
    modality = Modality.parse(modality)
    cls = _CLASSES[modality]
    ordered = sorted(layers, key=lambda layer: LEVELS.index(layer.level))
    values: dict[str, Any] = {}
    provenance: dict[str, tuple[str, str]] = {}
    for spec in cls.parameters():
        found = _first(ordered, spec.metadata["keys"])
        if found is None:
            continue
        layer, key = found
        origin = layer.where(key)
        raw = layer.values[key]
        value = spec.metadata["convert"](raw, key, f"{origin or where} ({layer.level})")
        if spec.name == "volume_timing":
            value = _timing(key, value, n_volumes, origin or where)
        elif key in _NONSTANDARD and layer.level == "sidecar":
            warnings.warn(
                f"{origin}: {spec.name} read from the non-standard key {key!r}; BIDS keeps "
                "them in .bval/.bvec files next to the image",
                MetadataWarning,
                stacklevel=3,
            )
        values[spec.name] = value
        provenance[spec.name] = (layer.level, origin)
    _apply_defaults(cls, values, provenance)
    _check_lengths(cls, values, provenance, n_volumes, where)
    _check_required(modality, values, where)
    return cls(provenance=provenance, **values)


def _first(
    layers: Sequence[MetadataLayer], keys: Sequence[str]
) -> tuple[MetadataLayer, str] | None:
    for layer in layers:
        for key in keys:
            if layer.values.get(key) is not None:
                return layer, key
    return None


def _timing(key: str, value: Any, n_volumes: int, where: str) -> list[float]:
    if key == "VolumeTiming":
        times = np.atleast_1d(np.asarray(value, dtype=np.float64))
        if times.size != n_volumes:
            raise SidecarError(
                f"{where}: VolumeTiming has {times.size} entries but the image has "
                f"{n_volumes} volumes"
            )
        if n_volumes > 1 and np.any(np.diff(times) <= 0):
            raise SidecarError(f"{where}: VolumeTiming must increase strictly")
        return times.tolist()
    steps = np.atleast_1d(np.asarray(value, dtype=np.float64))
    if steps.size == 1:
        steps = np.repeat(steps, n_volumes)
    if steps.size != n_volumes:
        raise SidecarError(
            f"{where}: {key} has {steps.size} values but the image has {n_volumes} volumes"
        )
    if np.any(steps <= 0):
        raise SidecarError(f"{where}: {key} must be positive to define volume times")
    return np.concatenate([[0.0], np.cumsum(steps)[:-1]]).tolist()


def _apply_defaults(
    cls: type[Acquisition], values: dict[str, Any], provenance: dict[str, tuple[str, str]]
) -> None:
    for spec in cls.parameters():
        if spec.name not in values and spec.default is not None:
            values[spec.name] = spec.default
            provenance[spec.name] = ("default", "mriflow default")
    if cls is AslAcquisition and "labeling_efficiency" not in values:
        labeling = values.get("labeling_type")
        if labeling in _LABEL_EFFICIENCY:
            values["labeling_efficiency"] = _LABEL_EFFICIENCY[labeling]
            provenance["labeling_efficiency"] = (
                "default",
                f"ASL white paper (Alsop et al. 2015) value for {labeling}",
            )


_PER_VOLUME = ("post_labeling_delay", "labeling_duration", "flip_angle", "bvalues", "bvectors")


def _check_lengths(
    cls: type[Acquisition],
    values: dict[str, Any],
    provenance: Mapping[str, tuple[str, str]],
    n_volumes: int,
    where: str,
) -> None:
    for name in _PER_VOLUME:
        value = values.get(name)
        if not isinstance(value, list):
            continue
        if name in ("bvalues", "bvectors") or len(value) != 1:
            if len(value) != n_volumes:
                key = next(f.metadata["keys"][0] for f in cls.parameters() if f.name == name)
                origin = provenance[name][1] or where
                raise SidecarError(
                    f"{origin}: {key} has {len(value)} values but the image has "
                    f"{n_volumes} volumes; give one value, or one per volume"
                )
        elif name not in ("bvalues", "bvectors"):
            values[name] = value[0]


def _check_bolus_cut_off(values: Mapping[str, Any], where: str) -> None:
    """Q2TIPS gives two delay times (start and end of the saturation train), QUIPSS one."""
    technique = values.get("bolus_cut_off_technique")
    delay = values.get("bolus_cut_off_delay_time")
    if technique is None or delay is None:
        return
    count = len(delay) if isinstance(delay, list) else 1
    expected = 2 if technique == "Q2TIPS" else 1
    if count != expected:
        raise AcquisitionError(
            f"{where}: ASL PASL {technique} needs {expected} BolusCutOffDelayTime "
            f"value{'s' if expected > 1 else ''} (s), got {delay!r}"
        )


def _check_required(modality: Modality, values: Mapping[str, Any], where: str) -> None:
    def need(name: str, key: str, why: str) -> None:
        if values.get(name) is None:
            raise AcquisitionError(f"{where}: {why} needs {key}; add it to this sidecar")

    if modality is Modality.ASL:
        need("labeling_type", "ArterialSpinLabelingType", "ASL")
        labeling = values["labeling_type"]
        need("post_labeling_delay", "PostLabelingDelay", f"ASL {labeling}")
        need("m0_type", "M0Type", f"ASL {labeling}")
        need("background_suppression", "BackgroundSuppression", f"ASL {labeling}")
        if labeling in ("PCASL", "CASL"):
            need("labeling_duration", "LabelingDuration", f"ASL {labeling}")
        else:
            need("bolus_cut_off_flag", "BolusCutOffFlag", "ASL PASL")
            if values["bolus_cut_off_flag"]:
                need(
                    "bolus_cut_off_technique", "BolusCutOffTechnique", "ASL PASL with bolus cut-off"
                )
                need(
                    "bolus_cut_off_delay_time",
                    "BolusCutOffDelayTime",
                    "ASL PASL with bolus cut-off",
                )
            _check_bolus_cut_off(values, where)
        if values["m0_type"] == "Estimate":
            need("m0_estimate", "M0Estimate", "ASL with M0Type Estimate")
    elif modality is Modality.DCE:
        need("flip_angle", "FlipAngle", "DCE")
    elif modality is Modality.DSC:
        need("echo_time", "EchoTime", "DSC")
    elif modality in (Modality.DWI, Modality.IVIM):
        if values.get("bvalues") is None:
            raise AcquisitionError(
                f"{where}: {modality.value.upper()} needs b-values; put a .bval/.bvec pair "
                "next to the image"
            )
        if modality is Modality.IVIM and len(set(values["bvalues"])) < 3:
            raise AcquisitionError(
                f"{where}: IVIM needs at least 3 distinct b-values, the series has "
                f"{sorted(set(values['bvalues']))}"
            )


# --- DICOM layers ----------------------------------------------------------------------------

# Standard attribute keyword -> (BIDS key, factor to BIDS units)
_DICOM_STANDARD = {
    "RepetitionTime": ("RepetitionTime", 1e-3),
    "EchoTime": ("EchoTime", 1e-3),
    "InversionTime": ("InversionTime", 1e-3),
    "FlipAngle": ("FlipAngle", 1.0),
    "MagneticFieldStrength": ("MagneticFieldStrength", 1.0),
    "DiffusionBValue": ("DiffusionBValue", 1.0),
}


def dicom_layers(dataset: Any, modality: str | Modality) -> list[MetadataLayer]:
    """The ``dicom-vendor`` and ``dicom`` layers of one pydicom header of a series.

    Standard attributes (TR, TE, TI in ms; flip angle; field strength; b-value) become BIDS
    keys in BIDS units. For DCE the DICOM RepetitionTime is the excitation TR and becomes
    ``RepetitionTimeExcitation``. Vendor layers hold the b-value of Siemens (CSA image header
    ``B_value``), GE ((0043,1039), first value mod 1e9) and Philips ((2001,1003)) headers.
    No identity attribute is read.
    """
    modality = Modality.parse(modality)
    standard: dict[str, Any] = {}
    origins: dict[str, str] = {}
    for keyword, (key, factor) in _DICOM_STANDARD.items():
        element = dataset.get(keyword)
        if element in (None, ""):
            continue
        try:
            value = float(element) * factor
        except (TypeError, ValueError):
            continue
        if key == "RepetitionTime" and modality is Modality.DCE:
            key = "RepetitionTimeExcitation"
        standard[key] = value
        tag = dataset.data_element(keyword).tag
        origins[key] = f"DICOM ({tag.group:04X},{tag.element:04X}) {keyword}"
    vendor, vendor_origins = _vendor_values(dataset)
    return [
        MetadataLayer("dicom-vendor", vendor, vendor_origins),
        MetadataLayer("dicom", standard, origins),
    ]


def _vendor_values(dataset: Any) -> tuple[dict[str, Any], dict[str, str]]:
    maker = str(dataset.get("Manufacturer", "")).upper()
    values: dict[str, Any] = {}
    origins: dict[str, str] = {}
    if "SIEMENS" in maker:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            from nibabel.nicom import csareader
        try:
            header = csareader.get_csa_header(dataset, "image")
        except Exception:  # a damaged private header is not worth failing the image for
            header = None
        bvalue = csareader.get_scalar(header, "B_value") if header else None
        if bvalue is not None:
            values["DiffusionBValue"] = float(bvalue)
            origins["DiffusionBValue"] = "Siemens CSA image header B_value"
    elif "GE" in maker.split() or maker.startswith("GE "):
        element = dataset.get((0x0043, 0x1039))
        if element is not None and element.value:
            first = element.value[0] if element.VM > 1 else element.value
            values["DiffusionBValue"] = float(int(first) % 1_000_000_000)
            origins["DiffusionBValue"] = "GE private (0043,1039)"
    elif "PHILIPS" in maker:
        element = dataset.get((0x2001, 0x1003))
        if element is not None and element.value not in (None, b"", ""):
            values["DiffusionBValue"] = float(element.value)
            origins["DiffusionBValue"] = "Philips private (2001,1003)"
    return values, origins


# --- attaching to images ------------------------------------------------------------------------


def attach_acquisition(
    image: Any,
    modality: str | Modality,
    *,
    acquisition: Mapping[str, Any] | None = None,
    dicom: Any = None,
    path: str | Path | None = None,
) -> Any:
    """Resolve ``modality``'s parameters for ``image`` and return it with them attached.

    Sets ``attrs["acquisition"]`` (see :meth:`Acquisition.to_dict`), ``attrs["modality"]``,
    ``attrs["sidecar"]`` (the merged BIDS sidecars) and the modality's axis: ``t`` with time
    coordinates for DCE/DSC series, ``volume`` with ``bval``/``bvec_*`` for DWI/IVIM, and for
    ASL ``volume`` with ``volume_type`` (from ``*_aslcontext.tsv``), ``post_labeling_delay``
    and ``acquisition_time`` coordinates.

    ``acquisition`` holds explicit values (BIDS keys or field names, BIDS units), which win
    over everything. ``dicom`` is a pydicom header of the series or a list of
    :class:`MetadataLayer` (a DICOM reader calls this function with its first header here).
    ``path`` is the image file, for the BIDS sidecars (default ``attrs["source"]["path"]``).
    """
    from mriflow import bids

    modality = Modality.parse(modality)
    source = path or image.attrs.get("source", {}).get("path")
    image_path = Path(source) if source else None
    where = str(bids.sidecar_path(image_path)) if image_path else str(image.name or "image")
    layers = [explicit_layer(acquisition, modality)]
    merged: dict[str, Any] = {}
    if image_path is not None:
        gradient = _gradient_layer(image, image_path)
        if gradient is not None:
            layers.append(gradient)
        merged, origins = bids.inherited_sidecar(image_path)
        layers.append(MetadataLayer("sidecar", merged, origins, origin=where))
    if dicom is not None:
        layers.extend(dicom if isinstance(dicom, list) else dicom_layers(dicom, modality))
    layers.append(header_layer(image_path))
    extra = [d for d in image.dims if d not in ("i", "j", "k")]
    n_volumes = int(image.sizes[extra[0]]) if extra else 1
    resolved = resolve_acquisition(modality, layers, n_volumes=n_volumes, where=where)
    image = _with_axes(image, modality, resolved, image_path, where)
    image.attrs["acquisition"] = resolved.to_dict()
    image.attrs["modality"] = modality.value
    if merged:
        image.attrs["sidecar"] = merged
    return image


def _gradient_layer(image: Any, path: Path) -> MetadataLayer | None:
    """The b-values/b-vectors already read from the ``.bval``/``.bvec`` pair by the reader."""
    if "bval" not in image.coords:
        return None
    from mriflow import bids

    bval, bvec = bids.sibling(path, ".bval"), bids.sibling(path, ".bvec")
    values: dict[str, Any] = {"bval": image.mri.bvals.tolist()}
    if all(f"bvec_{c}" in image.coords for c in "xyz"):
        values["bvec"] = image.mri.bvecs("fsl").tolist()
    return MetadataLayer("sidecar", values, {"bval": str(bval), "bvec": str(bvec)})


def _with_axes(
    image: Any, modality: Modality, resolved: Acquisition, path: Path | None, where: str
) -> Any:
    extra = [d for d in image.dims if d not in ("i", "j", "k")]
    fourth = extra[0] if extra else None
    image = image.copy(deep=False)  # data shared; attrs and coords are the copy's own
    if modality in (Modality.DWI, Modality.IVIM):
        return _diffusion_axis(image, resolved, fourth)
    if modality in (Modality.DCE, Modality.DSC):
        if fourth is None:
            return image
        timing = getattr(resolved, "volume_timing", None)
        if timing is None:
            raise missing_timing(where)
        times = np.asarray(timing, dtype=np.float64)
        image = _rename_axis(image, fourth, "t").assign_coords(t=("t", times))
        if len(times) > 1 and len(image.attrs.get("zooms", ())) > 3:
            zooms = list(image.attrs["zooms"])
            zooms[3] = float(np.median(np.diff(times)))
            image.attrs["zooms"] = tuple(zooms)
        return image
    if modality is Modality.ASL:
        return _asl_axis(image, resolved, fourth, path, where)
    return image


def _rename_axis(image: Any, old: str, new: str) -> Any:
    """Rename axis ``old`` to ``new``, dropping the coordinates that lay along ``old``."""
    if old == new:
        return image
    along = [name for name, coord in image.coords.items() if old in coord.dims]
    return image.drop_vars(along).rename({old: new})


def _diffusion_axis(image: Any, resolved: Acquisition, fourth: str | None) -> Any:
    from mriflow.image.model import gradient_coords
    from mriflow.io.gradients import bvecs_to_world

    assert isinstance(resolved, DwiAcquisition)
    if fourth is None or resolved.bvalues is None:
        return image
    if resolved.provenance["bvalues"][0] == "sidecar" and "bval" in image.coords:
        return image
    n = int(image.sizes[fourth])
    bvecs = np.asarray(resolved.bvectors if resolved.bvectors else np.zeros((n, 3)))
    image = _rename_axis(image, fourth, "volume")
    coords = gradient_coords(
        np.asarray(resolved.bvalues, dtype=np.float64), bvecs_to_world(bvecs, image.mri.affine)
    )
    return image.assign_coords(coords)


def _asl_axis(
    image: Any, resolved: Acquisition, fourth: str | None, path: Path | None, where: str
) -> Any:
    from mriflow import bids

    assert isinstance(resolved, AslAcquisition)
    n = int(image.sizes[fourth]) if fourth else 1
    context_path = bids.aslcontext_path(path) if path is not None else None
    context = bids.read_aslcontext(context_path, n) if context_path is not None else None
    if context is None:
        raise SidecarError(
            f"{context_path or where}: not found; a BIDS ASL series needs an "
            "*_aslcontext.tsv with one volume_type per volume"
        )
    if resolved.m0_type == "Included" and "m0scan" not in context:
        raise AcquisitionError(
            f"{where}: M0Type is Included but {Path(str(context_path)).name} lists no "
            "m0scan volume; use M0Type Separate with an *_m0scan file, or list the M0 volumes"
        )
    if fourth is None:
        return image
    if resolved.volume_timing is None:
        raise missing_timing(where)
    image = _rename_axis(image, fourth, "volume")
    coords: dict[str, Any] = {
        "volume_type": ("volume", np.asarray(context, dtype=object).astype(str)),
        "acquisition_time": ("volume", np.asarray(resolved.volume_timing, dtype=np.float64)),
    }
    for name in ("post_labeling_delay", "labeling_duration"):
        value = getattr(resolved, name)
        if value is not None:
            coords[name] = (
                "volume",
                np.broadcast_to(np.asarray(value, dtype=np.float64), (n,)).copy(),
            )
    return image.assign_coords(coords)


def explicit_layer(values: Mapping[str, Any] | None, modality: Modality) -> MetadataLayer:
    """The ``argument`` layer of explicit values (field names or BIDS keys)."""
    normalised = _normalise_explicit(values or {}, _CLASSES[modality])
    return MetadataLayer("argument", normalised, origin="argument")


_TIME_UNIT_SECONDS = {"sec": 1.0, "msec": 1e-3, "usec": 1e-6}


def header_layer(path: Path | None) -> MetadataLayer:
    """The NIfTI ``pixdim[4]`` time step of ``path``, when its header states time units.

    nibabel writes ``pixdim[4] = 1`` with unknown units by default, which is no timing.
    """
    from mriflow.io.nifti import nifti_suffix

    if path is None or nifti_suffix(path) is None or not Path(path).is_file():
        return MetadataLayer("header", {})
    import nibabel as nib

    header: Any = nib.load(path).header
    zooms = header.get_zooms()
    units = header.get_xyzt_units()[1] if hasattr(header, "get_xyzt_units") else "unknown"
    if len(zooms) < 4 or units not in _TIME_UNIT_SECONDS or not zooms[3] > 0:
        return MetadataLayer("header", {})
    step = float(zooms[3]) * _TIME_UNIT_SECONDS[units]
    return MetadataLayer("header", {"RepetitionTime": step}, origin=f"{path} NIfTI pixdim[4]")


def missing_timing(where: str) -> MissingTimingError:
    """The error for a 4D series that gives no way to time its volumes."""
    return MissingTimingError(
        f"{where}: 4D data requires time points; add RepetitionTime (seconds between volume "
        "starts) or VolumeTiming to this sidecar, or pass acquisition={'RepetitionTime': ...}"
    )
