"""Constant solid angle ODFs (Aganj et al. 2010) in real spherical harmonics, with GFA.

The same estimator as dipy's ``CsaOdfModel``: signals are raised to ``min_signal``,
divided by the mean b=0 signal, clipped to ``[0.001, 0.999]``, and the SH coefficients of
``log(-log(E))`` are taken by Laplace-Beltrami regularised least squares (``smooth``) and
mapped through the Funk-Radon transform; the ``l = 0`` coefficient is ``1 / (2 sqrt(pi))``
so each ODF integrates to one. GFA is computed from the coefficients.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import xarray as xr
from numba import njit

from mriflow.errors import FitInputError
from mriflow.fit._kernels import usable_signal
from mriflow.fit.gradients import DEFAULT_B0_THRESHOLD, DiffusionTable, diffusion_table
from mriflow.fit.mapper import NUMBA_OPTIONS, map_voxels, output_attrs, split_params
from mriflow.fit.shm import legendre_at_zero, n_coefficients, sh_degrees_orders, sh_matrix

__all__ = ["check_sh_order", "csa", "csa_fit_matrix", "csa_kernel", "sh_coords"]

_CLIP_LOW, _CLIP_HIGH = 0.001, 0.999
_C0 = 0.5 / np.sqrt(np.pi)


def check_sh_order(sh_order: int, table: DiffusionTable) -> int:
    """Validate ``sh_order`` (even, >= 0) against the number of diffusion directions."""
    if not isinstance(sh_order, int | np.integer) or sh_order < 0 or sh_order % 2:
        raise FitInputError(f"sh_order: must be an even integer >= 0, got {sh_order!r}")
    needed = n_coefficients(int(sh_order))
    if table.n_diffusion < needed:
        raise FitInputError(
            f"{table.label}: sh_order {sh_order} needs at least {needed} diffusion-weighted "
            f"directions, the image has {table.n_diffusion}; use a lower sh_order"
        )
    return int(sh_order)


def sh_coords(sh_order: int) -> dict[str, Any]:
    """Coordinates of the ``sh`` dim: degree ``sh_l`` and order ``sh_m`` of each coefficient."""
    degrees, orders = sh_degrees_orders(sh_order)
    return {"sh_l": ("sh", degrees), "sh_m": ("sh", orders)}


def csa_fit_matrix(
    sh_order: int,
    directions: np.ndarray,
    *,
    smooth: float = 0.006,
    basis: str = "descoteaux07",
    legacy: bool = True,
) -> np.ndarray:
    """``(n_coeffs, n_directions)`` matrix taking ``log(-log(E))`` to CSA coefficients."""
    basis_matrix = sh_matrix(sh_order, directions, basis=basis, legacy=legacy)
    degrees, _ = sh_degrees_orders(sh_order)
    laplace = -degrees * (degrees + 1.0)
    stacked = np.concatenate([basis_matrix, np.diag(np.sqrt(smooth) * laplace)])
    inverse = np.linalg.pinv(stacked)[:, : basis_matrix.shape[0]]
    funk_radon = legendre_at_zero(degrees)
    return (funk_radon * laplace)[:, None] / (8 * np.pi) * inverse


@njit(**NUMBA_OPTIONS)
def csa_kernel(
    signal: np.ndarray,
    out: np.ndarray,
    fit_matrix: np.ndarray,
    b0_index: np.ndarray,
    dwi_index: np.ndarray,
    min_signal: float,
) -> int:
    """CSA coefficients (first ``n_coeffs`` params) and GFA (last param) per voxel."""
    n_voxels = signal.shape[0]
    n_coef = fit_matrix.shape[0]
    n_dwi = dwi_index.size
    loglog = np.empty(n_dwi)
    n_invalid = 0
    for voxel in range(n_voxels):
        row = signal[voxel]
        if not usable_signal(row):
            out[voxel, :] = np.nan
            n_invalid += 1
            continue
        b0 = 0.0
        for g in b0_index:
            b0 += max(row[g], min_signal)
        b0 /= b0_index.size
        for n in range(n_dwi):
            ratio = max(row[dwi_index[n]], min_signal) / b0
            ratio = min(max(ratio, _CLIP_LOW), _CLIP_HIGH)
            loglog[n] = np.log(-np.log(ratio))
        total_sq = 0.0
        for c in range(n_coef):
            value = 0.0
            for n in range(n_dwi):
                value += fit_matrix[c, n] * loglog[n]
            if c == 0:
                value = _C0
            out[voxel, c] = value
            total_sq += value * value
        out[voxel, n_coef] = np.sqrt(1.0 - _C0 * _C0 / total_sq)
    return n_invalid


def csa(
    dwi: xr.DataArray,
    *,
    sh_order: int = 6,
    mask: Any = None,
    smooth: float = 0.006,
    min_signal: float = 1e-5,
    basis: str = "descoteaux07",
    legacy: bool = True,
    b0_threshold: float = DEFAULT_B0_THRESHOLD,
) -> xr.Dataset:
    """Fit CSA ODFs in every voxel of ``dwi`` (lazy).

    Returns a Dataset with ``shm_coeff`` (spatial dims then ``sh``; coords ``sh_l``/``sh_m``;
    ``basis``/``legacy``/``sh_order`` in attrs, voxel frame) and ``gfa``. Outside ``mask``
    both are 0; voxels with NaN/Inf/negative signal are NaN (with a warning). Pass the
    result to :func:`mriflow.fit.peaks` for peak directions.
    """
    table = diffusion_table(dwi, b0_threshold)
    order = check_sh_order(sh_order, table)
    if min_signal <= 0:
        raise FitInputError(f"min_signal: must be > 0, got {min_signal}")
    dwi_index = np.flatnonzero(~table.b0_mask)
    fit_matrix = csa_fit_matrix(
        order, table.bvecs[dwi_index], smooth=smooth, basis=basis, legacy=legacy
    )
    n_coef = fit_matrix.shape[0]
    packed = map_voxels(
        csa_kernel,
        dwi,
        core_dim="volume",
        n_params=n_coef + 1,
        constants=(fit_matrix, np.flatnonzero(table.b0_mask), dwi_index, float(min_signal)),
        mask=mask,
        label=table.label,
    )
    attrs = output_attrs(
        dwi, model="csa", sh_order=order, basis=basis, legacy=bool(legacy), frame="voxel"
    )
    ds = split_params(
        packed, [("shm_coeff", 0, ("sh",), (n_coef,)), ("gfa", n_coef, (), ())], attrs
    )
    ds.attrs.update(attrs)
    return ds.assign_coords(sh_coords(order))
