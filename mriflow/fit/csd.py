"""Constrained spherical deconvolution (Tournier et al. 2007), single shell, single tissue.

The estimator is dipy's ``ConstrainedSphericalDeconvModel``: the response is an axially
symmetric tensor signal ``(evals, S0)`` expressed in rotational harmonics; fibre ODF
coefficients (descoteaux07 basis) come from a Cholesky least-squares solve of the raw
diffusion-weighted signal, then the non-negativity iteration adds, as extra equations, the
points of the regularisation sphere where the ODF falls below ``tau`` times its mean (first
judged on the order-4 part), until that set of points stops changing or ``convergence``
iterations pass. :func:`auto_response` estimates the response from high-FA voxels in a
central box, as dipy's ``auto_response_ssst`` does.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import xarray as xr
from numba import njit

from mriflow.errors import FitInputError
from mriflow.fit._kernels import cholesky_solve, usable_signal
from mriflow.fit.csa import check_sh_order, sh_coords
from mriflow.fit.dti import MIN_SIGNAL, design_matrix, fractional_anisotropy, tensor_kernel
from mriflow.fit.gradients import DEFAULT_B0_THRESHOLD, diffusion_table
from mriflow.fit.mapper import NUMBA_OPTIONS, map_voxels, output_attrs, split_params
from mriflow.fit.shm import get_sphere, sh_degrees_orders, sh_matrix

__all__ = ["Response", "auto_response", "csd", "csd_kernel", "csd_matrices"]

_REFERENCE_SPHERE_SIZE = 362.0
_RIDGE = 1e-5


@dataclass(frozen=True)
class Response:
    """Single-fibre response: tensor ``evals`` (axial, radial, radial) and b=0 signal ``s0``.

    Iterates as ``(evals, s0)``, the tuple dipy's CSD model takes.
    """

    evals: np.ndarray
    s0: float
    n_voxels: int = 0

    @property
    def ratio(self) -> float:
        """Radial over axial diffusivity."""
        return float(self.evals[1] / self.evals[0])

    def __iter__(self) -> Iterator[Any]:
        return iter((self.evals, self.s0))


def _as_response(response: Any, label: str) -> Response:
    if isinstance(response, Response):
        return response
    try:
        evals, s0 = response
        evals = np.asarray(evals, dtype=np.float64).ravel()
        s0 = float(s0)
    except (TypeError, ValueError) as exc:
        raise FitInputError(
            f"{label}: response must be (evals, S0) or a mriflow.fit.Response, got {response!r}"
        ) from exc
    if evals.shape != (3,) or not np.all(np.isfinite(evals)) or not np.isfinite(s0) or s0 <= 0:
        raise FitInputError(f"{label}: response needs 3 finite eigenvalues and S0 > 0")
    if evals[0] <= 0:
        raise FitInputError(f"{label}: response axial diffusivity must be > 0, got {evals[0]}")
    return Response(evals=evals, s0=s0)


def csd_matrices(
    bvals: np.ndarray,
    directions: np.ndarray,
    response: Response,
    sh_order: int,
    reg_vertices: np.ndarray,
    *,
    lambda_: float = 1.0,
    legacy: bool = True,
) -> tuple[np.ndarray, np.ndarray]:
    """``(X, B_reg)``: the deconvolution matrix over the diffusion volumes and the scaled
    regularisation basis, as dipy builds them."""
    degrees, orders = sh_degrees_orders(sh_order)
    basis_dwi = sh_matrix(sh_order, directions, legacy=legacy)
    basis_reg = sh_matrix(sh_order, reg_vertices, legacy=legacy)
    # Response signal of a fibre along z: D = diag(radial, radial, axial) in x, y, z.
    tensor = np.diag([response.evals[2], response.evals[1], response.evals[0]])
    quadratic = np.einsum("ni,ij,nj->n", directions, tensor, directions)
    response_signal = response.s0 * np.exp(-bvals * quadratic)
    response_sh = np.linalg.lstsq(basis_dwi, response_signal, rcond=-1)[0]
    zonal = orders == 0
    dirac = np.sqrt((2 * degrees[zonal] + 1) / (4 * math.pi))
    rotational = response_sh[zonal] / dirac
    convolution = rotational[degrees // 2]
    scale = (
        lambda_
        * degrees.size
        * rotational[0]
        / (math.sqrt(basis_reg.shape[0]) * math.sqrt(_REFERENCE_SPHERE_SIZE))
    )
    return convolution * basis_dwi, basis_reg * scale


def _initial_solve(normal: np.ndarray, deconvolution: np.ndarray) -> np.ndarray:
    """``(P)^-1 X^T`` by Cholesky, with dipy's ridge ``1e-5 I`` if ``P`` is not definite."""
    from scipy.linalg import LinAlgError, cho_factor, cho_solve

    try:
        factor = cho_factor(normal, lower=False)
    except LinAlgError:
        factor = cho_factor(normal + _RIDGE * np.eye(normal.shape[0]), lower=False)
    return np.ascontiguousarray(cho_solve(factor, deconvolution.T))


@njit(**NUMBA_OPTIONS)
def _add_outer(system: np.ndarray, rows: np.ndarray, row: int, sign: float) -> None:
    """``system += sign * outer(rows[row], rows[row])`` on the lower triangle."""
    n_coef = system.shape[0]
    for p in range(n_coef):
        weight = sign * rows[row, p]
        for q in range(p + 1):
            system[p, q] += weight * rows[row, q]


@njit(**NUMBA_OPTIONS)
def csd_kernel(
    signal: np.ndarray,
    out: np.ndarray,
    deconvolution: np.ndarray,
    normal: np.ndarray,
    initial: np.ndarray,
    reg_basis: np.ndarray,
    dwi_index: np.ndarray,
    tau: float,
    convergence: int,
) -> int:
    """fODF coefficients per voxel (dipy's ``csdeconv``); last param: iterations used
    (``-1`` when ``convergence`` was reached without the constraint set settling)."""
    n_voxels = signal.shape[0]
    n_dwi, n_coef = deconvolution.shape
    n_reg = reg_basis.shape[0]
    n_low = min(15, n_coef)
    projected = np.empty(n_coef)
    coef = np.empty(n_coef)
    system = np.empty((n_coef, n_coef))
    factor = np.empty((n_coef, n_coef))
    small = np.zeros(n_reg, dtype=np.bool_)
    normal_all = normal + reg_basis.T @ reg_basis
    dwsignal = np.empty(n_dwi)
    n_invalid = 0
    for voxel in range(n_voxels):
        row = signal[voxel]
        if not usable_signal(row):
            out[voxel, :] = np.nan
            n_invalid += 1
            continue
        for n in range(n_dwi):
            dwsignal[n] = row[dwi_index[n]]
        for c in range(n_coef):
            total = 0.0
            unconstrained = 0.0
            for n in range(n_dwi):
                total += deconvolution[n, c] * dwsignal[n]
                unconstrained += initial[c, n] * dwsignal[n]
            projected[c] = total
            coef[c] = unconstrained
        threshold = reg_basis[0, 0] * coef[0] * tau
        n_small = 0
        for v in range(n_reg):
            total = 0.0
            for c in range(n_low):
                total += reg_basis[v, c] * coef[c]
            small[v] = total < threshold
            n_small += small[v]
        if n_small == 0:
            for v in range(n_reg):
                total = 0.0
                for c in range(n_coef):
                    total += reg_basis[v, c] * coef[c]
                small[v] = total < threshold
                n_small += small[v]
        iterations = 0
        if n_small > 0:
            # system = P + H^T H over the rows of the sphere where the fODF is small; built
            # once (lower triangle), then updated only by the rows that change.
            if 2 * n_small <= n_reg:
                system[:, :] = normal
                for v in range(n_reg):
                    if small[v]:
                        _add_outer(system, reg_basis, v, 1.0)
            else:  # fewer rows to take out of P + B_reg^T B_reg than to add to P
                system[:, :] = normal_all
                for v in range(n_reg):
                    if not small[v]:
                        _add_outer(system, reg_basis, v, -1.0)
            settled = False
            for iteration in range(1, convergence + 1):
                iterations = iteration
                for p in range(n_coef):
                    for q in range(p):
                        system[q, p] = system[p, q]
                if not cholesky_solve(system, projected, factor, coef):
                    break
                changed = False
                for v in range(n_reg):
                    total = 0.0
                    for c in range(n_coef):
                        total += reg_basis[v, c] * coef[c]
                    now_small = total < threshold
                    if now_small != small[v]:
                        changed = True
                        _add_outer(system, reg_basis, v, 1.0 if now_small else -1.0)
                        small[v] = now_small
                if not changed:
                    settled = True
                    break
            if not settled:
                iterations = -1
        for c in range(n_coef):
            out[voxel, c] = coef[c]
        out[voxel, n_coef] = iterations
    return n_invalid


def csd(
    dwi: xr.DataArray,
    *,
    response: Any,
    sh_order: int = 6,
    mask: Any = None,
    reg_sphere: Any = "symmetric362",
    lambda_: float = 1.0,
    tau: float = 0.1,
    convergence: int = 50,
    legacy: bool = True,
    b0_threshold: float = DEFAULT_B0_THRESHOLD,
) -> xr.Dataset:
    """Fit fibre ODFs by constrained spherical deconvolution in every voxel (lazy).

    ``response`` is ``(evals, S0)`` (e.g. from :func:`auto_response`). Returns a Dataset with
    ``shm_coeff`` (descoteaux07, ``legacy`` as given; dims spatial then ``sh``; voxel frame)
    and ``iterations`` (non-negativity iterations per voxel, ``-1`` where they did not
    settle). Outside ``mask`` both are 0. Peaks: :func:`mriflow.fit.peaks`.
    """
    table = diffusion_table(dwi, b0_threshold)
    order = check_sh_order(sh_order, table)
    chosen_response = _as_response(response, table.label)
    sphere = get_sphere(reg_sphere)
    if tau < 0 or int(convergence) < 1:
        raise FitInputError("tau must be >= 0 and convergence >= 1")
    dwi_index = np.flatnonzero(~table.b0_mask)
    deconvolution, reg_basis = csd_matrices(
        table.bvals[dwi_index],
        table.bvecs[dwi_index],
        chosen_response,
        order,
        sphere.vertices,
        lambda_=lambda_,
        legacy=legacy,
    )
    n_coef = deconvolution.shape[1]
    normal = deconvolution.T @ deconvolution
    packed = map_voxels(
        csd_kernel,
        dwi,
        core_dim="volume",
        n_params=n_coef + 1,
        constants=(
            deconvolution,
            normal,
            _initial_solve(normal, deconvolution),
            reg_basis,
            dwi_index,
            float(tau),
            int(convergence),
        ),
        mask=mask,
        label=table.label,
    )
    attrs = output_attrs(
        dwi,
        model="csd",
        sh_order=order,
        basis="descoteaux07",
        legacy=bool(legacy),
        frame="voxel",
        response_evals=[float(v) for v in chosen_response.evals],
        response_s0=float(chosen_response.s0),
    )
    ds = split_params(
        packed, [("shm_coeff", 0, ("sh",), (n_coef,)), ("iterations", n_coef, (), ())], attrs
    )
    ds["iterations"] = ds["iterations"].fillna(-1).astype(np.int32)
    ds.attrs.update(attrs)
    return ds.assign_coords(sh_coords(order))


def auto_response(
    dwi: xr.DataArray,
    *,
    roi_center: Any = None,
    roi_radius: int | tuple[int, int, int] = 10,
    fa_threshold: float = 0.7,
    b0_threshold: float = DEFAULT_B0_THRESHOLD,
) -> Response:
    """Single-fibre response from voxels with FA above ``fa_threshold`` in a central box.

    The box is centred on ``roi_center`` (array indices; default the grid centre) with half
    sizes ``roi_radius`` (shrunk to fit in the image), as in dipy's ``auto_response_ssst``.
    Only the box is read. Raises :class:`~mriflow.errors.FitInputError` when no voxel passes.
    """
    table = diffusion_table(dwi, b0_threshold)
    spatial = [d for d in dwi.dims if d in ("i", "j", "k")]
    if len(spatial) != 3:
        raise FitInputError(f"{table.label}: auto_response needs a 3D grid, dims {dwi.dims}")
    shape = np.array([dwi.sizes[d] for d in spatial])
    center = shape // 2 if roi_center is None else np.asarray(roi_center, dtype=int)
    radii = np.broadcast_to(np.asarray(roi_radius, dtype=int), (3,)).copy()
    for axis in range(3):
        if center[axis] - radii[axis] < 0 or center[axis] + radii[axis] >= shape[axis]:
            radii[axis] = min(int(center[axis]), int(shape[axis] - center[axis]))
    box = {
        d: slice(max(int(c - r), 0), int(c + r) + 1)
        for d, c, r in zip(spatial, center, radii, strict=True)
    }
    roi = np.asarray(dwi.isel(box).transpose(*spatial, "volume").values, dtype=np.float64)
    voxels = np.ascontiguousarray(roi.reshape(-1, roi.shape[-1]))
    design = design_matrix(table)
    params = np.empty((voxels.shape[0], 13))
    tensor_kernel(
        voxels, params, design, np.linalg.pinv(design), True, MIN_SIGNAL, 1e-6 / -design.min()
    )
    fa = np.nan_to_num(fractional_anisotropy(params[:, :3]), nan=0.0)
    chosen = fa > fa_threshold
    if not chosen.any():
        raise FitInputError(
            f"{table.label}: no voxel with FA > {fa_threshold} in the box {box}; lower "
            "fa_threshold or enlarge roi_radius"
        )
    lambdas = params[chosen, :2].mean(axis=0)
    s0 = float(voxels[chosen][:, table.b0_mask].mean())
    evals = np.array([lambdas[0], lambdas[1], lambdas[1]])
    return Response(evals=evals, s0=s0, n_voxels=int(chosen.sum()))
