"""Diffusion tensor imaging: log-linear WLS (default) or OLS tensor fits, per voxel.

The model is dipy's ``TensorModel`` with ``fit_method="WLS"`` or ``"OLS"``: the design
matrix rows are ``-b * (gx², 2 gx gy, gy², 2 gx gz, 2 gy gz, gz², 1/b)`` over every volume,
signals below ``min_signal`` are raised to it, WLS weights are the squared signal predicted by
a first OLS pass (Chung et al. 2006), eigenvalues are sorted in decreasing order and clipped
below at ``1e-6 / max(b)``.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import xarray as xr
from numba import njit

from mriflow.errors import FitInputError
from mriflow.fit._kernels import cholesky_solve
from mriflow.fit.gradients import DEFAULT_B0_THRESHOLD, DiffusionTable, diffusion_table
from mriflow.fit.mapper import NUMBA_OPTIONS, map_voxels, output_attrs, split_params

__all__ = ["FIT_METHODS", "design_matrix", "dti", "fractional_anisotropy", "tensor_kernel"]

FIT_METHODS = ("WLS", "OLS")
#: Signal floor before taking logarithms (dipy's ``MIN_POSITIVE_SIGNAL``).
MIN_SIGNAL = 1e-4
_N_PARAMS = 13  # evals (3), evecs (3x3, row-major, columns are eigenvectors), S0


def design_matrix(table: DiffusionTable) -> np.ndarray:
    """The ``(n_volumes, 7)`` log-linear design matrix (dipy's ``dti.design_matrix``)."""
    scaled = table.bvecs * np.sqrt(table.bvals)[:, None]
    gx, gy, gz = scaled.T
    columns = [gx * gx, 2 * gx * gy, gy * gy, 2 * gx * gz, 2 * gy * gz, gz * gz, np.ones_like(gx)]
    matrix = np.stack(columns, axis=1)
    return -matrix


@njit(**NUMBA_OPTIONS)
def tensor_kernel(
    signal: np.ndarray,
    out: np.ndarray,
    design: np.ndarray,
    ols_pinv: np.ndarray,
    weighted: bool,
    min_signal: float,
    min_diffusivity: float,
) -> int:
    """Fit a tensor to each row of ``signal``; see the module and mapper docstrings."""
    n_voxels, n_volumes = signal.shape
    n_coef = design.shape[1]
    log_signal = np.empty(n_volumes)
    weights = np.empty(n_volumes)
    coef = np.empty(n_coef)
    normal = np.empty((n_coef, n_coef))
    factor = np.empty((n_coef, n_coef))
    rhs = np.empty(n_coef)
    tensor = np.empty((3, 3))
    n_invalid = 0
    for voxel in range(n_voxels):
        valid = True
        for g in range(n_volumes):
            value = signal[voxel, g]
            if not (value >= 0.0 and value < np.inf):
                valid = False
                break
            log_signal[g] = np.log(max(value, min_signal))
        if not valid:
            out[voxel, :] = np.nan
            n_invalid += 1
            continue
        for p in range(n_coef):
            total = 0.0
            for g in range(n_volumes):
                total += ols_pinv[p, g] * log_signal[g]
            coef[p] = total
        if weighted:
            for g in range(n_volumes):
                predicted = 0.0
                for p in range(n_coef):
                    predicted += design[g, p] * coef[p]
                weight = np.exp(predicted)
                weights[g] = weight * weight
            for p in range(n_coef):
                total = 0.0
                for g in range(n_volumes):
                    total += weights[g] * design[g, p] * log_signal[g]
                rhs[p] = total
                for q in range(p + 1):
                    total = 0.0
                    for g in range(n_volumes):
                        total += weights[g] * design[g, p] * design[g, q]
                    normal[p, q] = total
                    normal[q, p] = total
            if not cholesky_solve(normal, rhs, factor, coef):
                out[voxel, :] = np.nan
                continue
        tensor[0, 0] = coef[0]
        tensor[1, 0] = tensor[0, 1] = coef[1]
        tensor[1, 1] = coef[2]
        tensor[2, 0] = tensor[0, 2] = coef[3]
        tensor[2, 1] = tensor[1, 2] = coef[4]
        tensor[2, 2] = coef[5]
        if not np.all(np.isfinite(tensor)):
            out[voxel, :] = np.nan
            continue
        evals, evecs = np.linalg.eigh(tensor)
        for rank in range(3):
            source = 2 - rank  # eigh sorts ascending; we want descending
            out[voxel, rank] = max(evals[source], min_diffusivity)
            for row in range(3):
                out[voxel, 3 + 3 * row + rank] = evecs[row, source]
        out[voxel, 12] = np.exp(-coef[6])
    return n_invalid


def fractional_anisotropy(evals: Any) -> Any:
    """FA of eigenvalues on a last axis of 3 (dipy's formula; 0 where all are 0)."""
    first, second, third = evals[..., 0], evals[..., 1], evals[..., 2]
    squares = first * first + second * second + third * third
    all_zero = squares == 0
    return np.sqrt(
        0.5
        * ((first - second) ** 2 + (second - third) ** 2 + (third - first) ** 2)
        / (squares + all_zero)
    )


def dti(
    dwi: xr.DataArray,
    *,
    mask: Any = None,
    fit_method: str = "WLS",
    b0_threshold: float = DEFAULT_B0_THRESHOLD,
    min_signal: float = MIN_SIGNAL,
) -> xr.Dataset:
    """Fit the diffusion tensor in every voxel of ``dwi`` (lazy).

    Returns a Dataset on ``dwi``'s grid: ``fa``, ``md``, ``ad``, ``rd``, ``s0`` (scalar maps),
    ``evals`` (dim ``eig``, decreasing), ``evecs`` (dims ``xyz``, ``eig``: ``evecs[..., :, n]``
    is the eigenvector of ``evals[..., n]``, in the array's voxel frame) and ``rgb`` (dim
    ``channel``: ``|principal eigenvector| * FA``). ``fit_method`` is ``"WLS"`` or ``"OLS"``;
    volumes with ``bval <= b0_threshold`` are the b=0 volumes. Outside ``mask`` every map is 0;
    voxels with NaN/Inf/negative signal are NaN (with a warning).
    """
    table = diffusion_table(dwi, b0_threshold)
    method = str(fit_method).upper()
    if method in ("LS", "LLS"):
        method = "OLS"
    if method not in FIT_METHODS:
        raise FitInputError(f"fit_method: must be one of {FIT_METHODS}, got {fit_method!r}")
    if min_signal <= 0:
        raise FitInputError(f"min_signal: must be > 0, got {min_signal}")
    design = design_matrix(table)
    if np.linalg.matrix_rank(design) < 7:
        raise FitInputError(
            f"{table.label}: the gradient table cannot determine a tensor (it needs at least 6 "
            "non-collinear directions and a b=0 volume)"
        )
    min_diffusivity = 1e-6 / -design.min()
    packed = map_voxels(
        tensor_kernel,
        dwi,
        core_dim="volume",
        n_params=_N_PARAMS,
        constants=(
            design,
            np.linalg.pinv(design),
            method == "WLS",
            float(min_signal),
            float(min_diffusivity),
        ),
        mask=mask,
        label=table.label,
    )
    attrs = output_attrs(dwi, model="dti", fit_method=method, frame="voxel")
    fitted = split_params(
        packed,
        [
            ("evals", 0, ("eig",), (3,)),
            ("evecs", 3, ("xyz", "eig"), (3, 3)),
            ("s0", 12, (), ()),
        ],
        attrs,
    )
    evals = fitted["evals"]
    fa = fractional_anisotropy(evals.transpose(..., "eig").data)
    spatial = evals.dims[:-1]
    coords = {d: evals.coords[d] for d in spatial}

    def scalar(data: Any) -> xr.DataArray:
        return xr.DataArray(data, dims=spatial, coords=coords, attrs=dict(attrs))

    principal = np.abs(fitted["evecs"].data[..., 0])
    ds = xr.Dataset(
        {
            "fa": scalar(fa),
            "md": scalar(evals.data.mean(axis=-1)),
            "ad": scalar(evals.data[..., 0]),
            "rd": scalar((evals.data[..., 1] + evals.data[..., 2]) / 2),
            "s0": fitted["s0"],
            "evals": evals,
            "evecs": fitted["evecs"],
            "rgb": xr.DataArray(
                principal * np.clip(fa, 0, 1)[..., None],
                dims=(*spatial, "channel"),
                coords=coords,
                attrs=dict(attrs),
            ),
        },
        attrs=attrs,
    )
    return ds
