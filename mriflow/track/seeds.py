"""Seeds: world (RAS+ mm) positions to start streamlines from, built from masks."""

from __future__ import annotations

import numpy as np
import xarray as xr

from mriflow.errors import TrackingInputError

__all__ = ["random_seeds", "seeds_from_mask"]


def _mask_voxels(mask: xr.DataArray, argument: str) -> np.ndarray:
    if not isinstance(mask, xr.DataArray):
        raise TrackingInputError(
            f"{argument}: must be an image DataArray carrying its affine, got {type(mask).__name__}"
        )
    if mask.ndim != 3 or len(mask.mri.spatial_dims) != 3:
        raise TrackingInputError(f"{argument}: must be 3D over i, j, k; got dims {mask.dims}")
    voxels = np.argwhere(np.asarray(mask.values) > 0)
    if voxels.size == 0:
        raise TrackingInputError(f"{argument}: the mask selects no voxel, so there is no seed")
    return voxels


def seeds_from_mask(mask: xr.DataArray, density: int | tuple[int, int, int] = 2) -> np.ndarray:
    """Seeds on a regular ``density`` grid inside every voxel of ``mask`` (``> 0``).

    ``density=2`` puts 2x2x2 seeds per voxel, at the centres of the sub-voxels (as dipy's
    ``seeds_from_mask``). Returns world positions ``(n, 3)`` float64 in RAS+ mm, voxel by
    voxel in C order.
    """
    counts = np.broadcast_to(np.asarray(density), (3,))
    if not np.issubdtype(counts.dtype, np.integer) or (counts < 1).any():
        raise TrackingInputError(f"density: must be positive integers, got {density!r}")
    voxels = _mask_voxels(mask, "mask")
    offsets = [(np.arange(n) + 0.5) / n - 0.5 for n in counts]
    grid = np.stack(np.meshgrid(*offsets, indexing="ij"), axis=-1).reshape(-1, 3)
    positions = (voxels[:, None, :] + grid[None, :, :]).reshape(-1, 3)
    return mask.mri.voxel_to_world(positions)


def random_seeds(
    mask: xr.DataArray, n: int, rng: int | np.random.Generator | None = None
) -> np.ndarray:
    """``n`` seeds drawn uniformly within the voxels of ``mask`` (``> 0``).

    Each seed picks a mask voxel uniformly, then a uniform position inside it. ``rng`` is a
    seed or a ``numpy.random.Generator``. Returns world positions ``(n, 3)`` in RAS+ mm.
    """
    if int(n) < 1:
        raise TrackingInputError(f"n: the number of seeds must be at least 1, got {n}")
    voxels = _mask_voxels(mask, "mask")
    generator = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)
    chosen = voxels[generator.integers(0, len(voxels), size=int(n))]
    positions = chosen + generator.uniform(-0.5, 0.5, size=(int(n), 3))
    return mask.mri.voxel_to_world(positions)
