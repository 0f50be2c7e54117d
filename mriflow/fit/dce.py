"""Dynamic contrast-enhanced MRI: VFA T1, SPGR signal to concentration, Tofts-family fits.

Units: times on the ``t`` axis in seconds (BIDS); kinetic rates (``ktrans``, ``kep``) in
1/min, volume fractions (``ve``, ``vp``) dimensionless, concentrations in mM, T1 in seconds,
flip angles in degrees, relaxivity in 1/(mM s).

- :func:`t1_vfa`: T1 and M0 from a variable-flip-angle SPGR series (the linearised SPGR
  equation, DESPOT1: ``S/sin a = E1 S/tan a + M0 (1 - E1)``, ``E1 = exp(-TR/T1)``).
- :func:`dce_concentration`: SPGR signal to concentration: M0 from the baseline mean and T10,
  then ``R1(t)`` from the inverted SPGR equation and ``C = (R1 - 1/T10) / r1``. Where the
  signal is at or below zero or beyond the SPGR range the concentration is undefined: NaN, with
  one :class:`~mriflow.errors.InvalidSignalWarning` per chunk giving the voxel count.
- :func:`dce`: Tofts (``ktrans``, ``ve``), extended Tofts (+ ``vp``) by a bounded
  Levenberg-Marquardt in numba (initialised by a grid over ``kep`` with the linear
  parameters solved exactly at each node), and Patlak (``ktrans``, ``vp``; linear least
  squares). The AIF is a blood curve, converted to plasma with the hematocrit
  (``Cp = Cb / (1 - Hct)``); pass ``hematocrit=0`` for a plasma curve. Fit quality:
  ``residual`` (root mean square, mM) and ``converged`` (1/0).
- :func:`population_aif`: Parker 2006, and the "georgiou" and "fritz_hansen" forms with
  the parameters used by OSIPI's osipy (so maps compare with osipy's); :func:`aif_from_mask`:
  the mean curve of an image over a vessel mask.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import xarray as xr
from numba import njit

from mriflow.errors import AcquisitionError, AifError, PerfusionInputError
from mriflow.fit._lm import (
    EXTENDED_TOFTS,
    TOFTS,
    exponential_convolution,
    levenberg_marquardt,
)
from mriflow.fit._perfusion import (
    acquisition_value,
    apply_voxelwise,
    check_aif,
    series_dim,
    spatial_dims,
    time_axis,
)
from mriflow.fit.mapper import NUMBA_OPTIONS, image_label, map_voxels, output_attrs, split_params

__all__ = [
    "DCE_MODELS",
    "POPULATION_AIFS",
    "aif_from_mask",
    "dce",
    "dce_concentration",
    "population_aif",
    "t1_vfa",
]

DCE_MODELS = ("tofts", "extended_tofts", "patlak")
POPULATION_AIFS = ("parker", "georgiou", "fritz_hansen")

#: Bounds of the nonlinear fits: ktrans (1/min), ve, vp.
KTRANS_BOUNDS = (1e-5, 5.0)
VE_BOUNDS = (1e-3, 1.0)
VP_BOUNDS = (0.0, 1.0)
#: kep nodes (1/min) of the initial grid search.
_KEP_GRID = np.geomspace(0.02, 8.0, 16)


# --- population and measured AIFs -------------------------------------------------------------


def population_aif(
    name: str,
    times: Any,
    *,
    delay: float = 0.0,
) -> xr.DataArray:
    """A population blood AIF (mM) at ``times`` (seconds; a DataArray coordinate works).

    ``name`` is ``"parker"`` (Parker et al. 2006, MRM 56:993, Table 1), ``"georgiou"`` or
    ``"fritz_hansen"`` (the functional forms and parameters of OSIPI's osipy, which follow
    Georgiou et al. 2014 and Fritz-Hansen et al. 1996 in simplified form). ``delay`` (s)
    shifts the curve later: the bolus arrives at ``delay`` rather than at ``t = 0``.
    Returns a DataArray on ``t`` with ``attrs["aif"] = name`` and ``attrs["kind"] = "blood"``.
    """
    key = str(name).lower().replace("-", "_")
    if key not in POPULATION_AIFS:
        raise AifError(f"aif: unknown population AIF {name!r}; choose one of {POPULATION_AIFS}")
    seconds = np.asarray(getattr(times, "values", times), dtype=np.float64)
    if seconds.ndim != 1 or not np.all(np.isfinite(seconds)):
        raise AifError("times: must be a one-dimensional array of finite seconds")
    minutes = (seconds - float(delay)) / 60.0
    if key == "parker":
        curve = (
            0.809 / (0.0563 * np.sqrt(2 * np.pi)) * np.exp(-((minutes - 0.17046) ** 2) / 0.00633938)
            + 0.330 / (0.132 * np.sqrt(2 * np.pi)) * np.exp(-((minutes - 0.365) ** 2) / 0.034848)
            + 1.050 * np.exp(-0.1685 * minutes) / (1.0 + np.exp(-38.078 * (minutes - 0.483)))
        )
    elif key == "georgiou":
        curve = (
            0.37 / (0.055 * np.sqrt(2 * np.pi)) * np.exp(-((minutes - 0.11) ** 2) / 0.00605)
            + 0.33 / (0.095 * np.sqrt(2 * np.pi)) * np.exp(-((minutes - 0.28) ** 2) / 0.01805)
            + np.where(minutes > 0, 5.0 * np.exp(-0.05 * minutes), 0.0)
        )
    else:
        curve = np.where(
            minutes >= 0, 3.99 * np.exp(-0.144 * minutes) + 4.78 * np.exp(-0.0111 * minutes), 0.0
        )
    return xr.DataArray(
        curve, dims=("t",), coords={"t": seconds}, attrs={"aif": key, "kind": "blood", "unit": "mM"}
    )


def aif_from_mask(image: xr.DataArray, mask: Any) -> xr.DataArray:
    """The mean curve of ``image`` over the voxels of ``mask`` (a vessel ROI), computed now.

    ``image`` is a concentration series for :func:`dce` (a blood curve) or a signal series
    for :func:`~mriflow.fit.dsc.dsc`. Returns a DataArray on the image's series axis.
    """
    from mriflow.fit.mapper import align_mask

    label = image_label(image)
    dim = series_dim(image, "t", label)
    aligned = align_mask(mask, image.isel({dim: 0}, drop=True), label)
    if aligned is None:
        raise AifError(f"{label}: aif_from_mask needs a mask")
    count = int(aligned.sum().compute())
    if count == 0:
        raise AifError(f"{label}: the AIF mask selects no voxel")
    curve = image.where(aligned).mean(dim=spatial_dims(image)).compute()
    if not np.all(np.isfinite(curve.values)):
        raise AifError(f"{label}: the AIF over the mask ({count} voxels) holds NaN values")
    curve.attrs = {"aif": "mask", "voxels": count}
    return curve


# --- VFA T1 ------------------------------------------------------------------------------------


@njit(**NUMBA_OPTIONS)
def vfa_kernel(
    signal: np.ndarray, out: np.ndarray, flip_radians: np.ndarray, repetition_time: float
) -> int:
    """DESPOT1 per voxel: ``out = (T1 s, M0)``; NaN where the slope leaves (0, 1)."""
    n_voxels, n_angles = signal.shape
    sines = np.sin(flip_radians)
    tangents = np.tan(flip_radians)
    n_invalid = 0
    for voxel in range(n_voxels):
        valid = True
        sum_x = sum_y = sum_xx = sum_xy = 0.0
        for a in range(n_angles):
            value = signal[voxel, a]
            if not (value >= 0.0 and value < np.inf):
                valid = False
                break
            x = value / tangents[a]
            y = value / sines[a]
            sum_x += x
            sum_y += y
            sum_xx += x * x
            sum_xy += x * y
        if not valid:
            out[voxel, 0] = np.nan
            out[voxel, 1] = np.nan
            n_invalid += 1
            continue
        denominator = n_angles * sum_xx - sum_x * sum_x
        if denominator == 0.0:
            out[voxel, 0] = np.nan
            out[voxel, 1] = np.nan
            continue
        slope = (n_angles * sum_xy - sum_x * sum_y) / denominator
        intercept = (sum_y - slope * sum_x) / n_angles
        if 0.0 < slope < 1.0:
            out[voxel, 0] = -repetition_time / np.log(slope)
            out[voxel, 1] = intercept / (1.0 - slope)
        else:
            out[voxel, 0] = np.nan
            out[voxel, 1] = np.nan
    return n_invalid


def t1_vfa(
    vfa: xr.DataArray,
    flip_angles: Any = None,
    tr: float | None = None,
    *,
    mask: Any = None,
) -> xr.Dataset:
    """T1 (s) and M0 maps from a variable-flip-angle SPGR series (lazy).

    ``vfa`` has one non-spatial axis, one volume per flip angle. ``flip_angles`` (degrees)
    and ``tr`` (the excitation TR, seconds) default to ``attrs["acquisition"]``'s
    ``flip_angle`` and ``repetition_time`` (BIDS ``FlipAngle``, ``RepetitionTimeExcitation``).
    """
    label = image_label(vfa)
    dim = series_dim(vfa, "volume", label)
    angles = np.atleast_1d(
        np.asarray(acquisition_value(vfa, flip_angles, "flip_angle", "FlipAngle", "flip_angles"))
    ).astype(np.float64)
    n = vfa.sizes[dim]
    if angles.size != n:
        raise AcquisitionError(
            f"{label}: {angles.size} flip angle(s) {angles.tolist()} for {n} VFA volumes; "
            "give one flip angle (degrees) per volume"
        )
    if len(np.unique(angles)) < 2 or np.any((angles <= 0) | (angles >= 90)):
        raise AcquisitionError(
            f"{label}: flip angles {angles.tolist()} must be in (0, 90) degrees with at least "
            "two different values"
        )
    repetition = float(
        acquisition_value(vfa, tr, "repetition_time", "RepetitionTimeExcitation", "tr")
    )
    _check_excitation_tr(repetition, label)
    packed = map_voxels(
        vfa_kernel,
        vfa,
        core_dim=dim,
        n_params=2,
        constants=(np.deg2rad(angles), repetition),
        mask=mask,
        label=label,
    )
    attrs = output_attrs(vfa, model="vfa_t1", flip_angles=angles.tolist(), tr=repetition)
    return split_params(packed, [("t1", 0, (), ()), ("m0", 1, (), ())], attrs)


def _check_excitation_tr(repetition: float, label: str) -> None:
    if not 0.0 < repetition < 1.0:
        raise AcquisitionError(
            f"{label}: excitation TR {repetition} s is outside (0, 1) s"
            + (" (it looks like milliseconds; give seconds)" if repetition >= 1.0 else "")
        )


# --- signal to concentration --------------------------------------------------------------------


@njit(**NUMBA_OPTIONS)
def spgr_concentration_kernel(
    signal: np.ndarray,
    t10: np.ndarray,
    out: np.ndarray,
    baseline: np.ndarray,
    flip_radians: float,
    repetition_time: float,
    relaxivity: float,
) -> int:
    """SPGR signal rows to concentration rows; returns how many voxels hold undefined points."""
    n_voxels, n_times = signal.shape
    cosine = np.cos(flip_radians)
    sine = np.sin(flip_radians)
    n_bad = 0
    for voxel in range(n_voxels):
        t1 = t10[voxel]
        base = 0.0
        count = 0
        for t in range(n_times):
            if baseline[t]:
                base += signal[voxel, t]
                count += 1
        base /= max(count, 1)
        if not (t1 > 0.0 and t1 < np.inf and base > 0.0 and base < np.inf):
            out[voxel, :] = np.nan
            n_bad += 1
            continue
        e10 = np.exp(-repetition_time / t1)
        m0 = base * (1.0 - cosine * e10) / (sine * (1.0 - e10))
        bad = False
        for t in range(n_times):
            value = signal[voxel, t]
            ratio = value / (m0 * sine)
            e1 = (1.0 - ratio) / (1.0 - ratio * cosine)
            if value > 0.0 and value < np.inf and 0.0 < e1 < 1.0:
                out[voxel, t] = (-np.log(e1) / repetition_time - 1.0 / t1) / relaxivity
            else:
                out[voxel, t] = np.nan
                bad = True
        if bad:
            n_bad += 1
    return n_bad


def dce_concentration(
    dce_image: xr.DataArray,
    t1: Any,
    *,
    relaxivity: float = 4.5,
    baseline: slice | int = 5,
    flip_angle: float | None = None,
    tr: float | None = None,
) -> xr.DataArray:
    """Contrast agent concentration (mM) from an SPGR DCE series (lazy, same ``t`` axis).

    ``t1`` is the pre-contrast T1 map (s, e.g. ``t1_vfa(...).t1``) on the series' grid, or one
    number. ``baseline`` selects the pre-contrast volumes (a slice of ``t`` positions, or
    their count from the start). ``flip_angle`` (deg) and ``tr`` (excitation TR, s) default to
    ``attrs["acquisition"]``. ``relaxivity`` is r1 in 1/(mM s).
    """
    label = image_label(dce_image)
    dim = series_dim(dce_image, "t", label)
    angle = acquisition_value(dce_image, flip_angle, "flip_angle", "FlipAngle", "flip_angle")
    if isinstance(angle, list | tuple | np.ndarray):
        values = np.unique(np.asarray(angle, dtype=np.float64))
        if values.size != 1:
            raise AcquisitionError(
                f"{label}: FlipAngle varies over the series ({values.tolist()}); a DCE "
                "series needs one flip angle"
            )
        angle = float(values[0])
    angle = float(angle)
    if not 0.0 < angle < 90.0:
        raise AcquisitionError(f"{label}: flip angle {angle} deg is outside (0, 90)")
    repetition = float(
        acquisition_value(dce_image, tr, "repetition_time", "RepetitionTimeExcitation", "tr")
    )
    _check_excitation_tr(repetition, label)
    if not relaxivity > 0:
        raise PerfusionInputError(f"relaxivity: must be > 0 (1/(mM s)), got {relaxivity}")
    n_times = dce_image.sizes[dim]
    selected = np.zeros(n_times, dtype=bool)
    selected[baseline if isinstance(baseline, slice) else slice(0, int(baseline))] = True
    if not selected.any():
        raise PerfusionInputError(f"{label}: baseline {baseline!r} selects no volume")
    spatial = spatial_dims(dce_image)
    if isinstance(t1, xr.DataArray):
        t1_map = t1.transpose(*spatial) if set(t1.dims) == set(spatial) else None
        if t1_map is None or t1_map.shape != tuple(dce_image.sizes[d] for d in spatial):
            raise PerfusionInputError(
                f"{label}: the T1 map (dims {t1.dims}, shape {t1.shape}) is not on the DCE grid"
            )
        t1_map = xr.DataArray(t1_map.data, dims=spatial, coords={d: dce_image[d] for d in spatial})
    else:
        value = float(t1)
        if not value > 0:
            raise PerfusionInputError(f"t1: must be > 0 s, got {value}")
        t1_map = xr.full_like(dce_image.isel({dim: 0}, drop=True), value, dtype=np.float64)
    result = apply_voxelwise(
        spgr_concentration_kernel,
        dce_image,
        t1_map,
        core_dim=dim,
        constants=(selected, np.deg2rad(angle), repetition, float(relaxivity)),
        label=label,
        problem="have time points where the concentration is undefined (signal at or below "
        "zero, no baseline, or beyond the SPGR range); they are NaN",
    )
    if dim in dce_image.coords:
        result = result.assign_coords({dim: dce_image.coords[dim].values})
    result.attrs = output_attrs(dce_image, unit="mM", relaxivity=float(relaxivity))
    return result


# --- kinetic models ------------------------------------------------------------------------------


@njit(**NUMBA_OPTIONS)
def tofts_kernel(
    signal: np.ndarray,
    out: np.ndarray,
    xdata: np.ndarray,
    model: int,
    lower: np.ndarray,
    upper: np.ndarray,
    kep_grid: np.ndarray,
    max_iterations: int,
    tolerance: float,
) -> int:
    """(Extended) Tofts per voxel: ``out = (ktrans, ve, vp, kep, rms residual, converged)``."""
    n_voxels, n_times = signal.shape
    times, plasma = xdata[0], xdata[1]
    n_params = 3 if model == EXTENDED_TOFTS else 2
    params = np.empty(n_params)
    convolved = np.empty(n_times)
    aux = np.empty(1)
    n_invalid = 0
    for voxel in range(n_voxels):
        data = signal[voxel]
        if not np.all(np.isfinite(data)):
            out[voxel, :] = np.nan
            n_invalid += 1
            continue
        best = np.inf
        for kep in kep_grid:
            exponential_convolution(times, plasma, kep, convolved)
            # Linear least squares for ktrans (and vp) at this kep.
            s_ee = s_ep = s_pp = s_ey = s_py = 0.0
            for t in range(n_times):
                s_ee += convolved[t] * convolved[t]
                s_ey += convolved[t] * data[t]
                if model == EXTENDED_TOFTS:
                    s_ep += convolved[t] * plasma[t]
                    s_pp += plasma[t] * plasma[t]
                    s_py += plasma[t] * data[t]
            vp = 0.0
            if model == EXTENDED_TOFTS:
                det = s_ee * s_pp - s_ep * s_ep
                if det <= 0.0:
                    continue
                ktrans = (s_ey * s_pp - s_ep * s_py) / det
                vp = (s_ee * s_py - s_ep * s_ey) / det
            else:
                if s_ee <= 0.0:
                    continue
                ktrans = s_ey / s_ee
            cost = 0.0
            for t in range(n_times):
                r = data[t] - ktrans * convolved[t] - vp * plasma[t]
                cost += r * r
            if cost < best:
                best = cost
                params[0] = ktrans
                params[1] = ktrans / kep
                if model == EXTENDED_TOFTS:
                    params[2] = vp
        if best == np.inf:
            params[0] = 0.1
            params[1] = 0.2
            if model == EXTENDED_TOFTS:
                params[2] = 0.01
        cost, converged = levenberg_marquardt(
            model, params, lower, upper, xdata, aux, data, max_iterations, tolerance
        )
        out[voxel, 0] = params[0]
        out[voxel, 1] = params[1]
        out[voxel, 2] = params[2] if model == EXTENDED_TOFTS else 0.0
        out[voxel, 3] = params[0] / params[1]
        out[voxel, 4] = np.sqrt(cost / n_times)
        out[voxel, 5] = 1.0 if converged else 0.0
    return n_invalid


@njit(**NUMBA_OPTIONS)
def patlak_kernel(signal: np.ndarray, out: np.ndarray, xdata: np.ndarray) -> int:
    """Patlak per voxel (linear): ``out = (ktrans, vp, rms residual, converged = 1)``."""
    n_voxels, n_times = signal.shape
    integral, plasma = xdata[2], xdata[1]
    s_ii = s_ip = s_pp = 0.0
    for t in range(n_times):
        s_ii += integral[t] * integral[t]
        s_ip += integral[t] * plasma[t]
        s_pp += plasma[t] * plasma[t]
    det = s_ii * s_pp - s_ip * s_ip
    n_invalid = 0
    for voxel in range(n_voxels):
        data = signal[voxel]
        if not np.all(np.isfinite(data)) or det <= 0.0:
            out[voxel, :] = np.nan
            n_invalid += 1
            continue
        s_iy = s_py = 0.0
        for t in range(n_times):
            s_iy += integral[t] * data[t]
            s_py += plasma[t] * data[t]
        ktrans = (s_iy * s_pp - s_ip * s_py) / det
        vp = (s_ii * s_py - s_ip * s_iy) / det
        cost = 0.0
        for t in range(n_times):
            r = data[t] - ktrans * integral[t] - vp * plasma[t]
            cost += r * r
        out[voxel, 0] = ktrans
        out[voxel, 1] = vp
        out[voxel, 2] = np.sqrt(cost / n_times)
        out[voxel, 3] = 1.0
    return n_invalid


def dce(
    concentration: xr.DataArray,
    aif: Any,
    *,
    model: str = "extended_tofts",
    mask: Any = None,
    hematocrit: float = 0.45,
    max_iterations: int = 100,
    tolerance: float = 1e-8,
) -> xr.Dataset:
    """Fit a kinetic model to every voxel of a concentration series (lazy).

    ``aif`` is a blood concentration curve on the series' ``t`` axis (a DataArray from
    :func:`population_aif` / :func:`aif_from_mask`, or a plain vector of the same length);
    it is divided by ``1 - hematocrit`` to give the plasma curve. ``model`` is one of
    :data:`DCE_MODELS`. Returns ``ktrans`` (1/min), ``ve``, ``vp`` and ``kep`` (1/min) as
    the model defines them (Tofts: ``vp`` = 0; Patlak: no ``ve``/``kep``), ``residual`` (RMS,
    mM) and ``converged`` (1/0). Outside ``mask`` every map is 0.
    """
    label = image_label(concentration)
    key = str(model).lower().replace("-", "_")
    if key not in DCE_MODELS:
        raise PerfusionInputError(f"model: must be one of {DCE_MODELS}, got {model!r}")
    if not 0.0 <= hematocrit < 1.0:
        raise PerfusionInputError(f"hematocrit: must be in [0, 1), got {hematocrit}")
    dim = series_dim(concentration, "t", label)
    times = time_axis(concentration, dim, label)
    blood = check_aif(aif, times, label)
    plasma = blood / (1.0 - hematocrit)
    minutes = (times - times[0]) / 60.0
    integral = np.concatenate([[0.0], np.cumsum(np.diff(minutes) * (plasma[1:] + plasma[:-1]) / 2)])
    xdata = np.ascontiguousarray(np.stack([minutes, plasma, integral]))
    attrs = output_attrs(concentration, model=key, hematocrit=float(hematocrit))
    if key == "patlak":
        packed = map_voxels(
            patlak_kernel,
            concentration,
            core_dim=dim,
            n_params=4,
            constants=(xdata,),
            mask=mask,
            label=label,
        )
        layout = [("ktrans", 0, (), ()), ("vp", 1, (), ()), ("residual", 2, (), ())]
        layout.append(("converged", 3, (), ()))
        return split_params(packed, layout, attrs)
    model_id = EXTENDED_TOFTS if key == "extended_tofts" else TOFTS
    lower = [KTRANS_BOUNDS[0], VE_BOUNDS[0], VP_BOUNDS[0]]
    upper = [KTRANS_BOUNDS[1], VE_BOUNDS[1], VP_BOUNDS[1]]
    n_free = 3 if model_id == EXTENDED_TOFTS else 2
    packed = map_voxels(
        tofts_kernel,
        concentration,
        core_dim=dim,
        n_params=6,
        constants=(
            xdata,
            model_id,
            np.asarray(lower[:n_free]),
            np.asarray(upper[:n_free]),
            _KEP_GRID,
            int(max_iterations),
            float(tolerance),
        ),
        mask=mask,
        label=label,
    )
    layout = [("ktrans", 0, (), ()), ("ve", 1, (), ())]
    if model_id == EXTENDED_TOFTS:
        layout.append(("vp", 2, (), ()))
    layout += [("kep", 3, (), ()), ("residual", 4, (), ()), ("converged", 5, (), ())]
    return split_params(packed, layout, attrs)
