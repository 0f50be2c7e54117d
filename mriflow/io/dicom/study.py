"""A DCE study folder, as scanners export it, sorted into its parts from headers alone.

:func:`open_dce_study` discovers every series under a folder (:func:`discover_dicom`), then
picks the dynamic series (one series with several time points, role ``dynamic``, or a
TWIST-style export with one series per time frame, role ``dynamic_frame``, stacked in time)
and the variable-flip-angle set for T1 mapping (role ``vfa``: single volumes on one grid with
one TR and different flip angles), ordered by flip angle. Flip angles and the excitation TR
come from the headers unless given explicitly.
"""

from __future__ import annotations

import os
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import xarray as xr

from mriflow.errors import AcquisitionError, ImageFormatError
from mriflow.io.dicom.discover import DicomSeries, discover_dicom
from mriflow.io.dicom.load import load_dicom_series

__all__ = ["DceStudy", "open_dce_study", "open_vfa_series"]


@dataclass
class DceStudy:
    """The parts of a DCE study: lazy images and the acquisition values used for them.

    ``dynamic`` has dims ``(i, j, k, t)`` (``t`` in seconds) with ``attrs["acquisition"]``
    resolved for DCE; ``vfa`` has dims ``(i, j, k, volume)`` with a ``flip_angle``
    coordinate, or is None when the study holds no VFA set. ``vfa_flip_angles`` (degrees)
    and ``repetition_time`` (excitation TR, seconds) are what a T1 fit of ``vfa`` should use;
    ``sources`` says where each of them came from.
    """

    dynamic: xr.DataArray
    vfa: xr.DataArray | None
    vfa_flip_angles: list[float] | None
    repetition_time: float | None
    sources: dict[str, str] = field(default_factory=dict)


def _volumes(candidate: Sequence[DicomSeries]) -> int:
    return len(candidate) if len(candidate) > 1 else candidate[0].n_temporal_positions


def _describe(candidate: Sequence[DicomSeries]) -> str:
    first = candidate[0]
    name = first.description or first.uid
    return f"{name!r} ({_volumes(candidate)} time points, {first.rows}x{first.columns})"


def _dynamic_candidates(found: Sequence[DicomSeries]) -> list[list[DicomSeries]]:
    candidates = [[s] for s in found if s.role_hint == "dynamic"]
    frames: dict[str, list[DicomSeries]] = defaultdict(list)
    for series in found:
        if series.role_hint == "dynamic_frame" and series.group_key:
            frames[series.group_key].append(series)
    candidates.extend(group for group in frames.values() if len(group) > 1)
    return candidates


def _vfa_sets(found: Sequence[DicomSeries]) -> list[list[DicomSeries]]:
    groups: dict[str, list[DicomSeries]] = defaultdict(list)
    for series in found:
        if series.role_hint == "vfa" and series.group_key:
            groups[series.group_key].append(series)
    return [sorted(g, key=lambda s: s.flip_angle or 0.0) for g in groups.values()]


def _pick_one(label: str, what: str, candidates: list[list[DicomSeries]]) -> list[DicomSeries]:
    best = max(_volumes(c) for c in candidates)
    largest = [c for c in candidates if _volumes(c) == best]
    if len(largest) > 1:
        listing = "; ".join(_describe(c) for c in largest)
        raise ImageFormatError(
            f"{label}: {len(largest)} equally long {what} series ({listing}); put the one to "
            "process in a folder of its own"
        )
    return largest[0]


def _header_layers(series: DicomSeries, times: Any) -> list[Any]:
    """DICOM metadata layers of the dynamic series: its first header and its frame times."""
    import pydicom

    from mriflow.acquisition import MetadataLayer, dicom_layers

    header = pydicom.dcmread(series.files[0], stop_before_pixels=True)
    layers = dicom_layers(header, "dce")
    if times is not None:
        layers.append(
            MetadataLayer(
                "dicom",
                {"VolumeTiming": [float(t) for t in times]},
                origin="DICOM frame times (TT= descriptions, AcquisitionTime, TriggerTime)",
            )
        )
    return layers


def open_dce_study(
    directory: str | os.PathLike[str],
    *,
    flip_angle: float | None = None,
    vfa_flip_angles: Sequence[float] | None = None,
    repetition_time: float | None = None,
    chunks: Any = "auto",
) -> DceStudy:
    """Find and open the dynamic series and the VFA set of a DCE study folder (lazy).

    ``flip_angle`` (degrees, the dynamic series'), ``vfa_flip_angles`` (degrees, one per VFA
    volume in increasing header flip angle) and ``repetition_time`` (the excitation TR,
    seconds) override the headers. A value neither given nor in the headers raises
    :class:`~mriflow.errors.AcquisitionError` naming the argument.
    """
    from mriflow.acquisition import attach_acquisition

    label = str(directory)
    found = discover_dicom(directory)
    if not found:
        raise ImageFormatError(f"{label}: no DICOM image series found")
    candidates = _dynamic_candidates(found)
    if not candidates:
        listing = ", ".join(f"{s.description or s.uid} ({s.role_hint})" for s in found)
        raise ImageFormatError(
            f"{label}: no dynamic series (several time points in one series, or one series "
            f"per time frame described 'TT=<s>s'); found: {listing}"
        )
    chosen = _pick_one(label, "dynamic", candidates)
    dynamic = load_dicom_series(chosen, chunks=chunks, modality="dce")
    if "t" not in dynamic.dims:
        raise ImageFormatError(f"{label}: the dynamic series {_describe(chosen)} has no time axis")
    header_angle = chosen[0].flip_angle
    if flip_angle is None and header_angle is None:
        raise AcquisitionError(
            f"flip_angle: the dynamic series {_describe(chosen)} has no FlipAngle (0018,1314) "
            "in its headers; give the flip angle (degrees)"
        )
    explicit: dict[str, Any] = {}
    if flip_angle is not None:
        explicit["FlipAngle"] = float(flip_angle)
    header_tr = chosen[0].repetition_time
    tr = repetition_time
    sources = {"flip_angle": "argument" if flip_angle is not None else "DICOM (0018,1314)"}
    if tr is not None:
        explicit["RepetitionTimeExcitation"] = float(tr)
        sources["repetition_time"] = "argument"
    elif header_tr is not None:
        tr = header_tr / 1000.0
        sources["repetition_time"] = "DICOM (0018,0080) [ms -> s]"
    times = dynamic["t"].values if "t" in dynamic.coords else None
    dynamic = attach_acquisition(
        dynamic,
        "dce",
        acquisition=explicit or None,
        dicom=_header_layers(chosen[0], times),
        path=None,
    )
    if tr is None:
        raise AcquisitionError(
            f"repetition_time: the dynamic series {_describe(chosen)} has no RepetitionTime "
            "(0018,0080) in its headers; give the excitation TR"
        )
    vfa, angles = _open_vfa(label, found, chosen[0], vfa_flip_angles, chunks, sources)
    return DceStudy(dynamic, vfa, angles, tr, sources)


def open_vfa_series(
    directory: str | os.PathLike[str],
    *,
    flip_angles: Sequence[float] | None = None,
    chunks: Any = "auto",
) -> tuple[xr.DataArray, list[float], float | None]:
    """The variable-flip-angle set under a folder: ``(image, flip angles, TR)`` (lazy).

    The image has dims ``(i, j, k, volume)``, one volume per series in increasing header
    flip angle, with a ``flip_angle`` coordinate; ``flip_angles`` (degrees) override the
    headers. TR is the excitation TR in seconds from the headers (None if absent).
    """
    label = str(directory)
    sets = _vfa_sets(discover_dicom(directory))
    if not sets:
        raise ImageFormatError(
            f"{label}: no variable-flip-angle series (single volumes on one grid and TR with "
            "at least two flip angles)"
        )
    members = max(sets, key=len)
    vfa, angles = _stack_vfa(label, members, flip_angles, chunks, {})
    tr = members[0].repetition_time
    return vfa, angles, None if tr is None else tr / 1000.0


def _open_vfa(
    label: str,
    found: Sequence[DicomSeries],
    dynamic: DicomSeries,
    explicit_angles: Sequence[float] | None,
    chunks: Any,
    sources: dict[str, str],
) -> tuple[xr.DataArray | None, list[float] | None]:
    """The VFA set on the dynamic series' matrix, stacked on ``volume`` by flip angle."""
    sets = [
        s for s in _vfa_sets(found) if (s[0].rows, s[0].columns) == (dynamic.rows, dynamic.columns)
    ]
    if not sets:
        return None, None
    return _stack_vfa(label, max(sets, key=len), explicit_angles, chunks, sources)


def _stack_vfa(
    label: str,
    members: Sequence[DicomSeries],
    explicit_angles: Sequence[float] | None,
    chunks: Any,
    sources: dict[str, str],
) -> tuple[xr.DataArray, list[float]]:
    if explicit_angles is not None:
        angles = [float(a) for a in explicit_angles]
        if len(angles) != len(members):
            raise AcquisitionError(
                f"flip_angles: {len(angles)} flip angle(s) {angles} for the {len(members)} VFA "
                f"series of {label} ({', '.join(s.description or s.uid for s in members)})"
            )
        sources["vfa_flip_angles"] = "argument"
    else:
        angles = [float(s.flip_angle) for s in members if s.flip_angle is not None]
        if len(angles) != len(members):
            raise AcquisitionError(
                f"flip_angles: {len(members) - len(angles)} of the {len(members)} VFA series "
                f"of {label} have no FlipAngle (0018,1314); give one flip angle per series"
            )
        sources["vfa_flip_angles"] = "DICOM (0018,1314) of each VFA series"
    volumes = [load_dicom_series(s, chunks=chunks) for s in members]
    vfa = xr.concat(volumes, dim="volume", join="exact", combine_attrs="drop_conflicts")
    vfa = vfa.assign_coords(flip_angle=("volume", np.asarray(angles, dtype=np.float64)))
    vfa.attrs.update({k: v for k, v in volumes[0].attrs.items() if k not in vfa.attrs})
    vfa.attrs["modality"] = "dce"
    vfa.name = "vfa"
    return vfa.transpose("i", "j", "k", "volume"), angles
