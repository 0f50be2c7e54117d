"""Peak directions of ODFs given by SH coefficients, sampled on a sphere.

The rule is dipy's ``peak_directions``: a peak is a sphere vertex whose ODF value is greater
than at least one hull neighbour and not smaller than any; peaks are sorted by value, those
below ``relative_peak_threshold`` of the largest (both measured above ``max(0, min(odf))``)
are dropped, then any peak within ``min_separation_angle`` degrees of a larger one
(antipodes count as the same direction), and the first ``npeaks`` are kept.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import xarray as xr
from numba import njit

from mriflow.errors import FitInputError
from mriflow.fit.mapper import NUMBA_OPTIONS, map_voxels, split_params
from mriflow.fit.shm import get_sphere, order_from_n_coefficients, sh_matrix

__all__ = ["peak_kernel", "peaks"]


@njit(**NUMBA_OPTIONS)
def peak_kernel(
    coefficients: np.ndarray,
    out: np.ndarray,
    sampling: np.ndarray,
    vertices: np.ndarray,
    edges: np.ndarray,
    relative_peak_threshold: float,
    min_separation_cosine: float,
    npeaks: int,
) -> int:
    """Per voxel: ``npeaks * 3`` directions, ``npeaks`` values, ``npeaks`` vertex indices.

    Missing peaks are direction 0, value 0, index -1; so are voxels whose coefficients are
    not finite or all zero.
    """
    n_voxels, n_coef = coefficients.shape
    n_vertices = vertices.shape[0]
    odf = np.empty(n_vertices)
    state = np.empty(n_vertices, dtype=np.int8)
    values = np.empty(n_vertices)
    indices = np.empty(n_vertices, dtype=np.int64)
    kept = np.empty(n_vertices, dtype=np.int64)
    for voxel in range(n_voxels):
        out[voxel, : 4 * npeaks] = 0.0
        out[voxel, 4 * npeaks :] = -1.0
        usable = True
        any_nonzero = False
        for c in range(n_coef):
            if not np.isfinite(coefficients[voxel, c]):
                usable = False
            elif coefficients[voxel, c] != 0.0:
                any_nonzero = True
        if not (usable and any_nonzero):
            continue
        odf_min = np.inf
        for v in range(n_vertices):
            total = 0.0
            for c in range(n_coef):
                total += sampling[v, c] * coefficients[voxel, c]
            odf[v] = total
            odf_min = min(odf_min, total)
            state[v] = 0
        for e in range(edges.shape[0]):
            first, second = edges[e, 0], edges[e, 1]
            if odf[first] < odf[second]:
                state[first] = -1
                if state[second] == 0:
                    state[second] = 1
            elif odf[first] > odf[second]:
                state[second] = -1
                if state[first] == 0:
                    state[first] = 1
        count = 0
        for v in range(n_vertices):
            if state[v] > 0:
                values[count] = odf[v]
                indices[count] = v
                count += 1
        if count == 0:
            continue
        order = np.argsort(-values[:count], kind="mergesort")
        sorted_values = values[:count][order]
        sorted_indices = indices[:count][order]
        n_candidates = count
        if count > 1:
            floor = max(odf_min, 0.0)
            threshold = relative_peak_threshold * (sorted_values[0] - floor)
            n_candidates = 0
            while n_candidates < count and sorted_values[n_candidates] - floor >= threshold:
                n_candidates += 1
        n_kept = 0
        for candidate in range(n_candidates):
            vertex = sorted_indices[candidate]
            distinct = True
            for k in range(n_kept):
                other = sorted_indices[kept[k]]
                cosine = 0.0
                for axis in range(3):
                    cosine += vertices[vertex, axis] * vertices[other, axis]
                if abs(cosine) > min_separation_cosine:
                    distinct = False
                    break
            if distinct:
                kept[n_kept] = candidate
                n_kept += 1
        for p in range(min(n_kept, npeaks)):
            vertex = sorted_indices[kept[p]]
            for axis in range(3):
                out[voxel, 3 * p + axis] = vertices[vertex, axis]
            out[voxel, 3 * npeaks + p] = sorted_values[kept[p]]
            out[voxel, 4 * npeaks + p] = vertex
    return 0


def peaks(
    fit: xr.Dataset,
    *,
    sphere: Any = "repulsion724",
    relative_peak_threshold: float = 0.5,
    min_separation_angle: float = 25.0,
    npeaks: int = 5,
    mask: Any = None,
) -> xr.Dataset:
    """Peaks of the ODFs in ``fit`` (a Dataset with ``shm_coeff``, e.g. from ``csa``/``csd``).

    ``sphere`` is a name (``"repulsion724"``, ``"symmetric362"``), a
    :class:`~mriflow.fit.shm.Sphere`, or full-sphere vertices ``(n, 3)``. Returns a lazy
    Dataset: ``peak_dirs`` (spatial dims, ``peak``, ``xyz``; unit vectors in the voxel frame
    of the fit), ``peak_values`` (ODF value at each peak) and ``peak_indices`` (sphere vertex,
    int32), padded with 0, 0, -1 where a voxel has fewer peaks (and in masked voxels); the
    sphere's vertices come along as ``sphere_vertices``.
    """
    if not isinstance(fit, xr.Dataset) or "shm_coeff" not in fit:
        raise FitInputError("fit: peaks needs a Dataset with 'shm_coeff' (from fit.csa/fit.csd)")
    coeff = fit["shm_coeff"]
    label = str(coeff.attrs.get("derived_from") or "shm_coeff")
    if not 0.0 <= relative_peak_threshold <= 1.0:
        raise FitInputError(
            f"relative_peak_threshold: must be in [0, 1], got {relative_peak_threshold}"
        )
    if not 0.0 <= min_separation_angle <= 90.0:
        raise FitInputError(f"min_separation_angle: must be in [0, 90], got {min_separation_angle}")
    if int(npeaks) < 1:
        raise FitInputError(f"npeaks: must be >= 1, got {npeaks}")
    npeaks = int(npeaks)
    chosen = get_sphere(sphere)
    order = order_from_n_coefficients(coeff.sizes["sh"])
    sampling = sh_matrix(
        order,
        chosen.vertices,
        basis=coeff.attrs.get("basis", "descoteaux07"),
        legacy=bool(coeff.attrs.get("legacy", True)),
    )
    packed = map_voxels(
        peak_kernel,
        coeff.drop_vars([c for c in coeff.coords if c not in coeff.dims]),
        core_dim="sh",
        n_params=5 * npeaks,
        constants=(
            sampling,
            chosen.vertices,
            chosen.edges,
            float(relative_peak_threshold),
            float(np.cos(np.deg2rad(min_separation_angle))),
            npeaks,
        ),
        mask=mask,
        label=label,
    )
    attrs = {k: v for k, v in coeff.attrs.items() if k not in ("model",)}
    attrs.update(
        sphere=chosen.name,
        relative_peak_threshold=float(relative_peak_threshold),
        min_separation_angle=float(min_separation_angle),
        npeaks=npeaks,
    )
    ds = split_params(
        packed,
        [
            ("peak_dirs", 0, ("peak", "xyz"), (npeaks, 3)),
            ("peak_values", 3 * npeaks, ("peak",), (npeaks,)),
            ("peak_indices", 4 * npeaks, ("peak",), (npeaks,)),
        ],
        attrs,
    )
    indices = ds["peak_indices"]
    if mask is not None:
        from mriflow.fit.mapper import align_mask

        indices = indices.where(align_mask(mask, coeff, label), -1.0)
    ds["peak_indices"] = indices.astype(np.int32)
    ds["peak_indices"].attrs.update(attrs)
    ds["sphere_vertices"] = xr.DataArray(chosen.vertices, dims=("vertex", "xyz"))
    ds.attrs.update(attrs)
    return ds
