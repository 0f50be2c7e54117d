"""Deterministic symmetric spheres and the real symmetric spherical-harmonic bases.

Spheres are Fibonacci point sets on the upper hemisphere plus their antipodes, so every
vertex ``v`` has ``-v`` in the set; the ODFs tracked here are antipodally symmetric, so the
kernels evaluate them on the hemisphere only. Names follow dipy's habit of ending in the
vertex count (``"repulsion724"``, ``"symmetric362"``), but the points are mriflow's own.
"""

from __future__ import annotations

import re
from functools import lru_cache

import numpy as np
from scipy import special

from mriflow.errors import TrackingInputError

__all__ = ["SH_BASES", "hemisphere", "sh_basis_matrix", "sh_order_from_count", "sphere"]

#: Supported SH basis names (as in dipy).
SH_BASES = ("descoteaux07", "tournier07")


@lru_cache(maxsize=16)
def hemisphere(n_vertices: int) -> np.ndarray:
    """``n_vertices // 2`` unit vectors spread evenly over the ``z > 0`` hemisphere.

    Together with their antipodes they form a symmetric sphere of ``n_vertices`` points.
    """
    if n_vertices < 2 or n_vertices % 2:
        raise TrackingInputError(
            f"sphere: a symmetric sphere needs an even vertex count >= 2, got {n_vertices}"
        )
    half = n_vertices // 2
    index = np.arange(half) + 0.5
    height = 1.0 - index / half
    polar = np.arccos(height)
    azimuth = np.pi * (1.0 + 5.0**0.5) * index
    points = np.stack(
        [np.cos(azimuth) * np.sin(polar), np.sin(azimuth) * np.sin(polar), height], axis=1
    )
    points /= np.linalg.norm(points, axis=1, keepdims=True)
    points.setflags(write=False)
    return points


def sphere(name_or_count: str | int) -> np.ndarray:
    """Vertices ``(n, 3)`` of a symmetric sphere: hemisphere points then their antipodes.

    Accepts a vertex count or a name ending in it, e.g. ``"repulsion724"``.
    """
    return np.concatenate([half := hemisphere(_vertex_count(name_or_count)), -half], axis=0)


def _vertex_count(name_or_count: str | int) -> int:
    if isinstance(name_or_count, int | np.integer):
        return int(name_or_count)
    match = re.fullmatch(r"[A-Za-z_]*(\d+)", str(name_or_count))
    if match is None:
        raise TrackingInputError(
            f"sphere: {name_or_count!r} is not a sphere name; use a vertex count or a name "
            "ending in one, e.g. 'repulsion724'"
        )
    return int(match.group(1))


def sh_order_from_count(n_coefficients: int, source: str = "shm_coeff") -> int:
    """Maximum even SH order of a symmetric basis with ``n_coefficients`` terms."""
    order = 0
    while (order + 1) * (order + 2) // 2 < n_coefficients:
        order += 2
    if (order + 1) * (order + 2) // 2 != n_coefficients:
        raise TrackingInputError(
            f"{source}: {n_coefficients} SH coefficients match no even SH order "
            "(a symmetric basis of order L has (L+1)(L+2)/2 terms: 1, 6, 15, 28, 45, ...)"
        )
    return order


def sh_basis_matrix(
    vertices: np.ndarray, sh_order: int, basis: str = "descoteaux07", legacy: bool = True
) -> np.ndarray:
    """Real symmetric SH basis ``(n_vertices, n_coefficients)`` sampled at ``vertices``.

    Same definitions and term order as dipy's ``real_sh_descoteaux`` /
    ``real_sh_tournier`` (``l = 0, 2, ...``; ``m = -l..l``), including their ``legacy``
    variants (dipy's default), so coefficients fitted with dipy evaluate to the same ODF.
    """
    if basis not in SH_BASES:
        raise TrackingInputError(
            f"shm_coeff: sh_basis {basis!r} is not supported; use one of {SH_BASES}"
        )
    even = range(0, sh_order + 1, 2)
    degrees = np.concatenate([np.full(2 * degree + 1, degree) for degree in even])
    orders = np.concatenate([np.arange(-degree, degree + 1) for degree in even])
    vertices = np.asarray(vertices, dtype=np.float64)
    polar = np.arccos(np.clip(vertices[:, 2], -1.0, 1.0))[:, None]
    azimuth = np.arctan2(vertices[:, 1], vertices[:, 0])[:, None]
    if basis == "descoteaux07":
        used_orders = np.abs(orders) if legacy else orders
        values = special.sph_harm_y(degrees, used_orders, polar, azimuth)
        real = np.where(orders > 0, values.imag, values.real)
        real *= np.where(orders == 0, 1.0, np.sqrt(2.0))
    else:
        values = special.sph_harm_y(degrees, np.abs(orders), polar, azimuth)
        real = np.where(orders < 0, values.imag, values.real)
        if not legacy:
            real *= np.where(orders == 0, 1.0, np.sqrt(2.0))
    return np.ascontiguousarray(real, dtype=np.float64)
