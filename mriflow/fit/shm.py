"""Real symmetric spherical harmonics and the spheres ODFs are sampled on.

Bases follow dipy's conventions exactly, so coefficients are exchangeable with dipy's:

- ``"descoteaux07"`` (default): for degree ``l`` and order ``m``,
  ``sqrt(2) * Im(Y_l^|m|)`` for ``m > 0``, ``Y_l^0`` for ``m = 0``, and for ``m < 0``
  ``sqrt(2) * Re(Y_l^|m|)`` with ``legacy=True`` (dipy's default) or
  ``sqrt(2) * Re(Y_l^m)`` (= ``(-1)^m`` times the legacy function) with ``legacy=False``.
- ``"tournier07"``: ``Im(Y_l^|m|)`` for ``m < 0`` and ``Re(Y_l^m)`` for ``m >= 0``; without
  ``legacy`` (MRtrix 3) the ``m != 0`` functions are scaled by ``sqrt(2)``.

``Y_l^m`` is the orthonormal complex harmonic with the Condon-Shortley phase (scipy's
``sph_harm_y``); coefficients are ordered by even degree ``l = 0, 2, ...`` and, within a
degree, by order ``m = -l .. l``. Angles: ``polar`` from +z, ``azimuth`` from +x towards +y.

Spheres: ``symmetric362`` and ``repulsion724`` are antipodally symmetric point sets of 362
and 724 vertices, computed here by electrostatic repulsion (see :func:`repulsion_sphere`)
and shipped as ``spheres.npz`` next to this module; they are not dipy's files of the same
name (dipy is not a run-time dependency), but any vertex set, dipy's included, can be given
as ``Sphere(vertices)``.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from mriflow.errors import FitInputError

__all__ = [
    "BASES",
    "SPHERE_NAMES",
    "Sphere",
    "cart_to_sphere",
    "get_sphere",
    "n_coefficients",
    "order_from_n_coefficients",
    "real_sh",
    "repulsion_sphere",
    "sh_degrees_orders",
    "sh_matrix",
]

BASES = ("descoteaux07", "tournier07")
SPHERE_NAMES = ("symmetric362", "repulsion724")
_SPHERE_FILE = Path(__file__).with_name("spheres.npz")


def n_coefficients(sh_order: int) -> int:
    """Number of coefficients of the real symmetric basis up to even degree ``sh_order``."""
    return (sh_order + 1) * (sh_order + 2) // 2


def order_from_n_coefficients(n_coeffs: int) -> int:
    """The even maximum degree whose symmetric basis has ``n_coeffs`` coefficients."""
    order = round((-3 + math.sqrt(1 + 8 * n_coeffs)) / 2)
    if order < 0 or order % 2 or n_coefficients(order) != n_coeffs:
        raise FitInputError(f"sh: {n_coeffs} coefficients is not a symmetric SH basis size")
    return order


def sh_degrees_orders(sh_order: int) -> tuple[np.ndarray, np.ndarray]:
    """``(degrees l, orders m)`` of every coefficient, in basis order."""
    if sh_order < 0 or sh_order % 2:
        raise FitInputError(f"sh_order: must be an even integer >= 0, got {sh_order}")
    degrees = np.concatenate([np.full(2 * n + 1, n) for n in range(0, sh_order + 1, 2)])
    orders = np.concatenate([np.arange(-n, n + 1) for n in range(0, sh_order + 1, 2)])
    return degrees, orders


def _normalised_legendre(degree: int, order: int, cos_polar: np.ndarray) -> np.ndarray:
    """``N_lm P_l^m(x)`` for ``m >= 0`` with the Condon-Shortley phase, where
    ``N_lm = sqrt((2l+1)/(4 pi) (l-m)!/(l+m)!)``, by the standard three-term recurrence."""
    x = np.asarray(cos_polar, dtype=np.float64)
    sine = np.sqrt(np.clip(1.0 - x * x, 0.0, None))
    # P_m^m = (-1)^m (2m-1)!! sin^m
    double_factorial = np.prod(np.arange(1, 2 * order, 2, dtype=np.float64)) if order else 1.0
    current = (-1.0) ** order * double_factorial * sine**order
    if degree > order:
        previous, current = current, x * (2 * order + 1) * current
        for n in range(order + 2, degree + 1):
            previous, current = (
                current,
                ((2 * n - 1) * x * current - (n + order - 1) * previous) / (n - order),
            )
    log_norm = 0.5 * (
        math.log((2 * degree + 1) / (4 * math.pi))
        + math.lgamma(degree - order + 1)
        - math.lgamma(degree + order + 1)
    )
    return current * math.exp(log_norm)


def real_sh(
    sh_order: int,
    polar: np.ndarray,
    azimuth: np.ndarray,
    *,
    basis: str = "descoteaux07",
    legacy: bool = True,
) -> np.ndarray:
    """The real symmetric SH basis sampled at directions: array ``(n_points, n_coeffs)``."""
    if basis not in BASES:
        raise FitInputError(f"basis: must be one of {BASES}, got {basis!r}")
    polar = np.asarray(polar, dtype=np.float64).ravel()
    azimuth = np.asarray(azimuth, dtype=np.float64).ravel()
    degrees, orders = sh_degrees_orders(sh_order)
    out = np.empty((polar.size, degrees.size))
    cos_polar = np.cos(polar)
    root2 = math.sqrt(2.0)
    for column, (degree, order) in enumerate(zip(degrees, orders, strict=True)):
        magnitude = abs(int(order))
        legendre = _normalised_legendre(int(degree), magnitude, cos_polar)
        real_part = legendre * np.cos(magnitude * azimuth)
        imag_part = legendre * np.sin(magnitude * azimuth)
        if basis == "descoteaux07":
            if order > 0:
                value = root2 * imag_part
            elif order < 0:
                sign = 1.0 if legacy else (-1.0) ** magnitude
                value = root2 * sign * real_part
            else:
                value = legendre
        else:
            value = imag_part if order < 0 else real_part
            if not legacy and order != 0:
                value = root2 * value
        out[:, column] = value
    return out


def cart_to_sphere(vectors: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(polar, azimuth)`` angles of 3-vectors ``(n, 3)`` (polar 0 for zero vectors)."""
    vectors = np.asarray(vectors, dtype=np.float64)
    radius = np.linalg.norm(vectors, axis=-1)
    cosine = np.divide(vectors[..., 2], radius, out=np.ones_like(radius), where=radius > 0)
    polar = np.arccos(np.clip(cosine, -1.0, 1.0))
    azimuth = np.arctan2(vectors[..., 1], vectors[..., 0])
    return polar, azimuth


def sh_matrix(
    sh_order: int, directions: np.ndarray, *, basis: str = "descoteaux07", legacy: bool = True
) -> np.ndarray:
    """The SH basis sampled at unit ``directions`` ``(n, 3)``: ``(n, n_coeffs)``."""
    polar, azimuth = cart_to_sphere(directions)
    return real_sh(sh_order, polar, azimuth, basis=basis, legacy=legacy)


def legendre_at_zero(degrees: np.ndarray) -> np.ndarray:
    """Legendre polynomials ``P_l(0)`` for each degree (the Funk-Radon eigenvalues / 2 pi)."""
    return np.array(
        [
            _normalised_legendre(int(n), 0, np.zeros(1))[0] / math.sqrt((2 * n + 1) / (4 * math.pi))
            for n in degrees
        ]
    )


# --- spheres ------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class Sphere:
    """Unit vertices ``(n, 3)`` and the edges of their convex hull (for local maxima)."""

    vertices: np.ndarray
    name: str = "custom"
    edges: np.ndarray = field(default=None, repr=False)  # type: ignore[assignment,arg-type]

    def __post_init__(self) -> None:
        vertices = np.ascontiguousarray(self.vertices, dtype=np.float64)
        if vertices.ndim != 2 or vertices.shape[1] != 3 or vertices.shape[0] < 4:
            raise FitInputError(
                f"sphere {self.name}: vertices must be an (n >= 4, 3) array, got {vertices.shape}"
            )
        norms = np.linalg.norm(vertices, axis=1)
        if not np.all(np.isfinite(vertices)) or np.any(np.abs(norms - 1) > 1e-3):
            raise FitInputError(f"sphere {self.name}: vertices must be finite unit vectors")
        vertices = vertices / norms[:, None]
        object.__setattr__(self, "vertices", vertices)
        if self.edges is None:
            object.__setattr__(self, "edges", _hull_edges(vertices, self.name))

    def __len__(self) -> int:
        return int(self.vertices.shape[0])


def _hull_edges(vertices: np.ndarray, name: str) -> np.ndarray:
    from scipy.spatial import ConvexHull, QhullError

    message = f"sphere {name}: vertices do not span the sphere (give a full, not a half, sphere)"
    try:
        hull = ConvexHull(vertices)
    except QhullError as exc:
        raise FitInputError(message) from exc
    if not np.all(hull.equations[:, 3] < -1e-6):  # the centre must lie inside the hull
        raise FitInputError(message)
    faces = hull.simplices
    edges = np.concatenate([faces[:, [0, 1]], faces[:, [1, 2]], faces[:, [0, 2]]])
    edges.sort(axis=1)
    return np.unique(edges, axis=0).astype(np.int64)


def repulsion_sphere(n_pairs: int, iterations: int = 2000) -> np.ndarray:
    """``2 * n_pairs`` antipodally symmetric unit vectors spread by electrostatic repulsion.

    Deterministic: starts from a Fibonacci half-sphere and takes ``iterations`` fixed-step
    gradient steps of the Coulomb energy of the points and their antipodes. Returns
    ``(2 * n_pairs, 3)``, the first half on the ``z >= 0`` side and the second its mirror.
    """
    index = np.arange(n_pairs) + 0.5
    polar = np.arccos(1 - index / n_pairs)
    azimuth = np.pi * (1 + 5**0.5) * index
    points = np.stack(
        [np.cos(azimuth) * np.sin(polar), np.sin(azimuth) * np.sin(polar), np.cos(polar)], axis=1
    )
    step = 0.5 / n_pairs
    for _ in range(iterations):
        both = np.concatenate([points, -points])
        diff = points[:, None, :] - both[None, :, :]
        dist2 = (diff**2).sum(-1)
        dist2[np.arange(n_pairs), np.arange(n_pairs)] = np.inf
        force = (diff / dist2[..., None] ** 1.5).sum(1)
        force -= (force * points).sum(1, keepdims=True) * points
        points = points + step * force / np.sqrt(n_pairs)
        points /= np.linalg.norm(points, axis=1, keepdims=True)
    points[points[:, 2] < 0] *= -1
    return np.concatenate([points, -points])


def write_sphere_file(path: Path = _SPHERE_FILE) -> None:
    """Regenerate the shipped ``spheres.npz`` (vertices and hull edges of the named spheres)."""
    arrays: dict[str, np.ndarray] = {}
    for name, pairs in (("symmetric362", 181), ("repulsion724", 362)):
        vertices = repulsion_sphere(pairs)
        arrays[f"{name}_vertices"] = vertices
        arrays[f"{name}_edges"] = _hull_edges(vertices, name)
    np.savez_compressed(path, **arrays)  # type: ignore[arg-type]


@functools.cache
def _named_sphere(name: str) -> Sphere:
    with np.load(_SPHERE_FILE) as stored:
        return Sphere(stored[f"{name}_vertices"], name=name, edges=stored[f"{name}_edges"])


def get_sphere(sphere: Any = "repulsion724") -> Sphere:
    """A :class:`Sphere` from a name in :data:`SPHERE_NAMES`, a ``Sphere``, or vertices
    ``(n, 3)`` (a full sphere: for a half sphere pass ``np.vstack([v, -v])``)."""
    if isinstance(sphere, Sphere):
        return sphere
    if isinstance(sphere, str):
        if sphere not in SPHERE_NAMES:
            raise FitInputError(f"sphere: unknown name {sphere!r}; known: {SPHERE_NAMES}")
        return _named_sphere(sphere)
    vertices = getattr(sphere, "vertices", sphere)
    return Sphere(np.asarray(vertices, dtype=np.float64))
