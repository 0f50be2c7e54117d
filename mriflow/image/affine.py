"""Pure numpy geometry on 4x4 voxel-to-world affines.

Nothing here knows about xarray; the accessor derives the inputs from coordinates.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from nibabel import orientations

from mriflow.errors import GeometryError

__all__ = [
    "SPATIAL_DIMS",
    "check_affine",
    "index_affine",
    "orientation_codes",
    "reorientation",
    "voxel_sizes",
]

SPATIAL_DIMS = ("i", "j", "k")


def check_affine(affine: np.ndarray, source: str) -> np.ndarray:
    """Return ``affine`` as a float64 4x4 array, or raise if it cannot map voxels to world.

    A usable affine is finite, has a ``[0, 0, 0, 1]`` last row, and an invertible 3x3 part.
    """
    aff = np.asarray(affine, dtype=np.float64)
    if aff.shape != (4, 4):
        raise GeometryError(f"{source}: affine must be 4x4, got shape {aff.shape}")
    if not np.all(np.isfinite(aff)):
        raise GeometryError(
            f"{source}: affine has NaN or infinite entries, so voxels have no world position "
            "(check the sform/qform of the header)"
        )
    if not np.allclose(aff[3], [0, 0, 0, 1]):
        raise GeometryError(f"{source}: affine last row must be [0, 0, 0, 1], got {aff[3]}")
    linear = aff[:3, :3]
    scale = np.abs(linear).max()
    if scale == 0 or abs(np.linalg.det(linear / scale)) < 1e-12:
        raise GeometryError(
            f"{source}: affine is singular (zero or collinear voxel axes), so world positions "
            "cannot be mapped back to voxels"
        )
    return aff


def index_affine(
    base: np.ndarray, axes: Sequence[int], starts: Sequence[float], steps: Sequence[float]
) -> np.ndarray:
    """Affine of a view onto a grid whose affine is ``base``.

    Array axis ``p`` of the view walks original axis ``axes[p]`` from index ``starts[p]`` in
    steps of ``steps[p]`` (negative for a flip). ``axes`` is a permutation of ``(0, 1, 2)``.
    """
    view_to_original = np.zeros((4, 4))
    view_to_original[3, 3] = 1.0
    for position, (axis, start, step) in enumerate(zip(axes, starts, steps, strict=True)):
        view_to_original[axis, position] = step
        view_to_original[axis, 3] = start
    return np.asarray(base, dtype=np.float64) @ view_to_original


def voxel_sizes(affine: np.ndarray) -> np.ndarray:
    """Length of each voxel axis in world units (column norms of the 3x3 part)."""
    return np.sqrt((np.asarray(affine)[:3, :3] ** 2).sum(axis=0))


def orientation_codes(affine: np.ndarray) -> tuple[str, str, str]:
    """The world direction each voxel axis points to, as RAS+ letters, e.g. ``("L", "A", "S")``."""
    return tuple(orientations.aff2axcodes(affine))  # type: ignore[return-value]


def reorientation(affine: np.ndarray, target: str | Sequence[str]) -> tuple[list[int], list[bool]]:
    """How to permute and flip the voxel axes of ``affine`` so they point to ``target``.

    Returns ``(order, flips)``: output axis ``p`` is input axis ``order[p]``, and input axis
    ``a`` is reversed when ``flips[a]``.
    """
    codes = tuple(target)
    if len(codes) != 3 or {c.upper() for c in codes} not in _VALID_CODE_SETS:
        raise GeometryError(
            f"orientation {''.join(codes)!r} is not valid: give one of L/R, one of A/P and one "
            "of S/I, e.g. 'RAS' or 'LPS'"
        )
    current = orientations.io_orientation(affine)
    wanted = orientations.axcodes2ornt([c.upper() for c in codes])
    transform = orientations.ornt_transform(current, wanted)
    flips = [bool(f < 0) for f in transform[:, 1]]
    order = [int(a) for a in np.argsort(transform[:, 0])]
    return order, flips


_VALID_CODE_SETS = [{a, b, c} for a in ("L", "R") for b in ("A", "P") for c in ("S", "I")]
