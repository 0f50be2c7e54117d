"""Intravoxel incoherent motion: ``S(b) = S0 (f exp(-b D*) + (1 - f) exp(-b D))``.

b-values in s/mm², so ``d`` and ``d_star`` are in mm²/s.

- ``"segmented"``: D and ``S0 (1 - f)`` from a log-linear fit of the volumes with
  ``b >= b_threshold`` (where the pseudo-diffusion term has decayed), S0 from the mean of the
  lowest-b volumes, ``f = 1 - S0 (1 - f) / S0``, then D* alone by bounded Levenberg-Marquardt
  on every volume with the others fixed.
- ``"full"``: all four parameters by bounded Levenberg-Marquardt from the segmented estimate.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import xarray as xr
from numba import njit

from mriflow.errors import PerfusionInputError
from mriflow.fit._lm import IVIM_FULL, IVIM_PSEUDO, levenberg_marquardt
from mriflow.fit._perfusion import acquisition_value, series_dim
from mriflow.fit.mapper import NUMBA_OPTIONS, image_label, map_voxels, output_attrs, split_params

__all__ = ["IVIM_METHODS", "ivim", "ivim_kernel"]

IVIM_METHODS = ("segmented", "full")
#: Bounds (mm²/s) of D and D*, and of f.
D_BOUNDS = (0.0, 0.005)
D_STAR_BOUNDS = (0.003, 0.5)
F_BOUNDS = (0.0, 1.0)
_D_STAR_GRID = np.geomspace(0.004, 0.3, 12)


@njit(**NUMBA_OPTIONS)
def ivim_kernel(
    signal: np.ndarray,
    out: np.ndarray,
    xdata: np.ndarray,
    high: np.ndarray,
    lowest: np.ndarray,
    full: bool,
    lower: np.ndarray,
    upper: np.ndarray,
    max_iterations: int,
    tolerance: float,
) -> int:
    """IVIM per voxel: ``out = (S0, f, D, D*, rms residual, converged)``."""
    n_voxels, n_b = signal.shape
    bvals = xdata[0]
    aux = np.empty(3)
    star = np.empty(1)
    star_lower = np.array([lower[3]])
    star_upper = np.array([upper[3]])
    params = np.empty(4)
    n_invalid = 0
    for voxel in range(n_voxels):
        data = signal[voxel]
        valid = True
        for g in range(n_b):
            if not (data[g] >= 0.0 and data[g] < np.inf):
                valid = False
        if not valid:
            out[voxel, :] = np.nan
            n_invalid += 1
            continue
        # 1. D and S0 (1 - f) from the high b-values (log-linear least squares).
        s_b = s_bb = s_y = s_by = 0.0
        count = 0
        for g in range(n_b):
            if high[g]:
                y = np.log(max(data[g], 1e-8))
                s_b += bvals[g]
                s_bb += bvals[g] * bvals[g]
                s_y += y
                s_by += bvals[g] * y
                count += 1
        det = count * s_bb - s_b * s_b
        slope = (count * s_by - s_b * s_y) / det
        intercept = (s_y - slope * s_b) / count
        diffusion = min(max(-slope, lower[2]), upper[2])
        tissue = np.exp(intercept)
        s0 = 0.0
        n_low = 0
        for g in range(n_b):
            if lowest[g]:
                s0 += data[g]
                n_low += 1
        s0 /= n_low
        if not s0 > 0.0:
            out[voxel, :] = np.nan
            continue
        fraction = min(max(1.0 - tissue / s0, lower[1]), upper[1])
        # 2. D* alone, from the best node of a grid then LM.
        aux[0] = s0
        aux[1] = fraction
        aux[2] = diffusion
        best = np.inf
        for node in _D_STAR_GRID:
            star[0] = node
            cost = 0.0
            for g in range(n_b):
                value = s0 * (fraction * np.exp(-bvals[g] * node)) + s0 * (1.0 - fraction) * np.exp(
                    -bvals[g] * diffusion
                )
                cost += (data[g] - value) ** 2
            if cost < best:
                best = cost
                params[3] = node
        star[0] = params[3]
        cost, converged = levenberg_marquardt(
            IVIM_PSEUDO, star, star_lower, star_upper, xdata, aux, data, max_iterations, tolerance
        )
        params[0] = s0
        params[1] = fraction
        params[2] = diffusion
        params[3] = star[0]
        if full:
            cost, converged = levenberg_marquardt(
                IVIM_FULL, params, lower, upper, xdata, aux, data, max_iterations, tolerance
            )
        for p in range(4):
            out[voxel, p] = params[p]
        out[voxel, 4] = np.sqrt(cost / n_b)
        out[voxel, 5] = 1.0 if converged else 0.0
    return n_invalid


def ivim(
    dwi: xr.DataArray,
    *,
    method: str = "segmented",
    b_threshold: float = 200.0,
    bvalues: Any = None,
    mask: Any = None,
    max_iterations: int = 100,
    tolerance: float = 1e-6,
) -> xr.Dataset:
    """Fit IVIM in every voxel of a multi-b diffusion series (lazy).

    b-values (s/mm²) come from ``bvalues``, else the ``bval`` coordinate of the ``volume``
    axis (``open_image`` reads it from the ``.bval`` file), else ``attrs["acquisition"]``.
    ``method`` is ``"segmented"`` or ``"full"``; ``b_threshold`` splits the high b-values of
    the segmented first step. Returns ``s0``, ``f``, ``d``, ``d_star`` (mm²/s), ``residual``
    (RMS, signal units) and ``converged`` (1/0). Outside ``mask`` every map is 0.
    """
    label = image_label(dwi)
    key = str(method).lower()
    if key not in IVIM_METHODS:
        raise PerfusionInputError(f"method: must be one of {IVIM_METHODS}, got {method!r}")
    dim = series_dim(dwi, "volume", label)
    if bvalues is None and "bval" in dwi.coords:
        bvalues = dwi.coords["bval"].values
    bvals = np.asarray(
        acquisition_value(dwi, bvalues, "bvalues", "bval", "bvalues"), dtype=np.float64
    ).ravel()
    if bvals.size != dwi.sizes[dim]:
        raise PerfusionInputError(
            f"{label}: {bvals.size} b-values for {dwi.sizes[dim]} volumes; give one per volume"
        )
    high = bvals >= b_threshold
    if len(np.unique(bvals[high])) < 2:
        raise PerfusionInputError(
            f"{label}: IVIM needs at least two distinct b-values >= b_threshold "
            f"({b_threshold} s/mm²); got {sorted(set(bvals.tolist()))}"
        )
    lowest = bvals == bvals.min()
    if bvals.min() >= b_threshold or len(np.unique(bvals)) < 4:
        raise PerfusionInputError(
            f"{label}: IVIM needs at least 4 distinct b-values including some below "
            f"b_threshold ({b_threshold}); got {sorted(set(bvals.tolist()))}"
        )
    lower = np.array([0.0, F_BOUNDS[0], D_BOUNDS[0], D_STAR_BOUNDS[0]])
    upper = np.array([np.inf, F_BOUNDS[1], D_BOUNDS[1], D_STAR_BOUNDS[1]])
    packed = map_voxels(
        ivim_kernel,
        dwi,
        core_dim=dim,
        n_params=6,
        constants=(
            np.ascontiguousarray(bvals[None, :]),
            high,
            lowest,
            key == "full",
            lower,
            upper,
            int(max_iterations),
            float(tolerance),
        ),
        mask=mask,
        label=label,
    )
    attrs = output_attrs(dwi, model="ivim", method=key, b_threshold=float(b_threshold))
    layout = [
        ("s0", 0, (), ()),
        ("f", 1, (), ()),
        ("d", 2, (), ()),
        ("d_star", 3, (), ()),
        ("residual", 4, (), ()),
        ("converged", 5, (), ()),
    ]
    return split_params(packed, layout, attrs)
