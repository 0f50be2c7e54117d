"""Dynamic susceptibility contrast: deltaR2*, rCBV, oSVD CBF, MTT and Tmax per voxel.

- ``deltaR2*(t) = -ln(S(t) / S0) / TE`` (1/s), S0 the mean of the baseline volumes.
- ``rcbv``: ``∫ deltaR2*_tissue dt / ∫ deltaR2*_AIF dt`` (relative, no hematocrit or density
  factors). With ``leakage_correction=True`` the tissue curve is first corrected by the
  Boxerman-Weisskoff model: ``deltaR2*(t) = K1 R(t) - K2 ∫_0^t R`` with ``R`` a reference
  curve of non-leaky tissue (the mean over ``mask`` unless given); the corrected curve adds
  ``K2 ∫ R`` back, and ``k2`` (1/s) is returned.
- ``cbf``: peak of the residue function from oscillation-index-regularised SVD
  deconvolution (oSVD, Wu et al. 2003): the AIF is zero-padded to a block-circulant matrix
  (insensitive to tracer delay) and the truncation threshold rises from 1% of the largest
  singular value until the residue's oscillation index is at most ``oscillation_index``.
  Relative units: ml/100 ml/min up to the unknown scale of ``deltaR2*`` (``6000 max r``).
- ``mtt = rcbv / cbf`` (s, central volume theorem) and ``tmax``: time of the residue peak
  (s).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import xarray as xr
from numba import njit

from mriflow.errors import AcquisitionError, PerfusionInputError
from mriflow.fit._perfusion import (
    acquisition_value,
    check_aif,
    series_dim,
    spatial_dims,
    time_axis,
)
from mriflow.fit.mapper import (
    NUMBA_OPTIONS,
    align_mask,
    image_label,
    map_voxels,
    output_attrs,
    split_params,
)

__all__ = ["DSC_METHODS", "delta_r2star", "dsc", "dsc_kernel"]

DSC_METHODS = ("osvd",)
_THRESHOLDS = np.concatenate([np.arange(0.01, 0.1, 0.01), np.arange(0.1, 0.96, 0.05)])


def delta_r2star(signal: np.ndarray, baseline: np.ndarray, echo_time: float) -> np.ndarray:
    """deltaR2* (1/s) of signal curves on the last axis; NaN where undefined."""
    signal = np.asarray(signal, dtype=np.float64)
    base = signal[..., baseline].mean(axis=-1, keepdims=True)
    with np.errstate(divide="ignore", invalid="ignore"):
        out = -np.log(signal / base) / echo_time
    return np.where(np.isfinite(out), out, np.nan)


@njit(**NUMBA_OPTIONS)
def dsc_kernel(
    signal: np.ndarray,
    out: np.ndarray,
    baseline: np.ndarray,
    echo_time: float,
    step: float,
    aif_area: float,
    u_transposed: np.ndarray,
    singular: np.ndarray,
    v_matrix: np.ndarray,
    target_oscillation: float,
    reference: np.ndarray,
    reference_integral: np.ndarray,
    correct_leakage: bool,
) -> int:
    """DSC per voxel: ``out = (rcbv, cbf, mtt, tmax, k2, oSVD threshold)``."""
    n_voxels, n_times = signal.shape
    padded = 2 * n_times
    curve = np.zeros(padded)
    projected = np.empty(padded)
    residue = np.empty(padded)
    n_invalid = 0
    for voxel in range(n_voxels):
        data = signal[voxel]
        base = 0.0
        count = 0
        for t in range(n_times):
            if baseline[t]:
                base += data[t]
                count += 1
        base /= max(count, 1)
        valid = base > 0.0 and base < np.inf
        for t in range(n_times):
            if not (data[t] > 0.0 and data[t] < np.inf):
                valid = False
        if not valid:
            out[voxel, :] = np.nan
            n_invalid += 1
            continue
        for t in range(n_times):
            curve[t] = -np.log(data[t] / base) / echo_time
        k2 = 0.0
        if correct_leakage:
            s_rr = s_ri = s_ii = s_ry = s_iy = 0.0
            for t in range(n_times):
                r, i = reference[t], -reference_integral[t]
                s_rr += r * r
                s_ri += r * i
                s_ii += i * i
                s_ry += r * curve[t]
                s_iy += i * curve[t]
            det = s_rr * s_ii - s_ri * s_ri
            if det > 0.0:
                k2 = (s_rr * s_iy - s_ri * s_ry) / det
                for t in range(n_times):
                    curve[t] += k2 * reference_integral[t]
        area = 0.0
        for t in range(1, n_times):
            area += 0.5 * (curve[t] + curve[t - 1]) * step
        for k in range(padded):
            total = 0.0
            for t in range(n_times):
                total += u_transposed[k, t] * curve[t]
            projected[k] = total
        chosen = _THRESHOLDS[-1]
        for threshold in _THRESHOLDS:
            cutoff = threshold * singular[0]
            peak = 0.0
            for row in range(padded):
                total = 0.0
                for k in range(padded):
                    if singular[k] >= cutoff:
                        total += v_matrix[row, k] * projected[k] / singular[k]
                residue[row] = total
                peak = max(peak, abs(total))
            if peak == 0.0:
                chosen = threshold
                break
            oscillation = 0.0
            for row in range(2, padded):
                oscillation += abs(residue[row] - 2.0 * residue[row - 1] + residue[row - 2])
            oscillation /= padded * peak
            if oscillation <= target_oscillation:
                chosen = threshold
                break
        best = 0
        for row in range(padded):
            if residue[row] > residue[best]:
                best = row
        flow = residue[best]
        rcbv = area / aif_area
        out[voxel, 0] = rcbv
        out[voxel, 1] = 6000.0 * flow
        out[voxel, 2] = rcbv / flow if flow > 0.0 else np.nan
        out[voxel, 3] = best * step
        out[voxel, 4] = k2
        out[voxel, 5] = chosen
    return n_invalid


def dsc(
    image: xr.DataArray,
    aif: Any,
    *,
    method: str = "osvd",
    te: float | None = None,
    baseline: slice | int = 5,
    aif_kind: str = "signal",
    leakage_correction: bool = False,
    leakage_reference: Any = None,
    oscillation_index: float = 0.095,
    mask: Any = None,
) -> xr.Dataset:
    """rCBV, CBF, MTT and Tmax of a DSC series (lazy); see the module docstring.

    ``aif`` is an arterial curve on the series' ``t`` axis: a signal curve in the image's
    units (``aif_kind="signal"``, e.g. ``aif_from_mask(image, vessel_mask)``) or a deltaR2*
    curve (``"delta_r2star"``). ``te`` (s) defaults to ``attrs["acquisition"]["echo_time"]``
    (first echo). ``baseline`` selects the pre-bolus volumes (slice, or a count from the
    start). The ``t`` axis must be uniformly sampled. Returns ``rcbv``, ``cbf``, ``mtt``,
    ``tmax``, ``k2`` (0 without leakage correction) and ``threshold`` (the oSVD cut-off, as a
    fraction of the largest singular value). Outside ``mask`` every map is 0.
    """
    label = image_label(image)
    if str(method).lower() not in DSC_METHODS:
        raise PerfusionInputError(f"method: must be one of {DSC_METHODS}, got {method!r}")
    dim = series_dim(image, "t", label)
    times = time_axis(image, dim, label)
    steps = np.diff(times)
    if not np.allclose(steps, steps.mean(), rtol=1e-3, atol=1e-4):
        raise AcquisitionError(
            f"{label}: SVD deconvolution needs uniformly sampled time points; intervals range "
            f"{steps.min():.4g}..{steps.max():.4g} s"
        )
    step = float(steps.mean())
    echo = acquisition_value(image, te, "echo_time", "EchoTime", "te")
    echo = float(np.atleast_1d(echo)[0])
    if not 0.0 < echo < 1.0:
        raise AcquisitionError(f"{label}: echo time {echo} s is outside (0, 1) s")
    n_times = times.size
    selected = np.zeros(n_times, dtype=bool)
    selected[baseline if isinstance(baseline, slice) else slice(0, int(baseline))] = True
    if not selected.any():
        raise PerfusionInputError(f"{label}: baseline {baseline!r} selects no volume")
    curve = check_aif(aif, times, label)
    if aif_kind == "signal":
        arterial = delta_r2star(curve, selected, echo)
    elif aif_kind == "delta_r2star":
        arterial = curve
    else:
        raise PerfusionInputError(f"aif_kind: must be 'signal' or 'delta_r2star', got {aif_kind!r}")
    if not np.all(np.isfinite(arterial)):
        raise PerfusionInputError(f"{label}: the AIF signal drops to zero or below; no deltaR2*")
    aif_area = float(np.trapezoid(arterial, dx=step))
    if not aif_area > 0:
        raise PerfusionInputError(f"{label}: the AIF has no positive area (no bolus)")
    padded = np.concatenate([arterial, np.zeros(n_times)])
    circulant = np.empty((2 * n_times, 2 * n_times))
    for column in range(2 * n_times):
        circulant[:, column] = np.roll(padded, column)
    circulant *= step
    u_matrix, singular, v_transposed = np.linalg.svd(circulant)
    reference = np.zeros(n_times)
    if leakage_correction:
        if leakage_reference is None:
            aligned = align_mask(mask, image.isel({dim: 0}, drop=True), label)
            average = image.where(aligned) if aligned is not None else image
            leakage_reference = average.mean(dim=spatial_dims(image)).compute().values
        reference = delta_r2star(check_aif(leakage_reference, times, label), selected, echo)
        if not np.all(np.isfinite(reference)):
            raise PerfusionInputError(f"{label}: the leakage reference curve is undefined")
    integral = np.concatenate([[0.0], np.cumsum((reference[1:] + reference[:-1]) / 2 * step)])
    packed = map_voxels(
        dsc_kernel,
        image,
        core_dim=dim,
        n_params=6,
        constants=(
            selected,
            echo,
            step,
            aif_area,
            np.ascontiguousarray(u_matrix.T[:, :n_times]),
            singular,
            np.ascontiguousarray(v_transposed.T),
            float(oscillation_index),
            reference,
            integral,
            bool(leakage_correction),
        ),
        mask=mask,
        label=label,
    )
    attrs = output_attrs(image, model="dsc", method="osvd", echo_time=echo)
    layout = [
        ("rcbv", 0, (), ()),
        ("cbf", 1, (), ()),
        ("mtt", 2, (), ()),
        ("tmax", 3, (), ()),
        ("k2", 4, (), ()),
        ("threshold", 5, (), ()),
    ]
    return split_params(packed, layout, attrs)
