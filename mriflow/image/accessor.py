"""The ``.mri`` accessor: spatial semantics of an image DataArray.

The image model (docs/design.md): spatial dims are named ``i``, ``j``, ``k`` after the axes of
the grid the image was loaded from; their coordinates hold that grid's voxel indices, and
``attrs["affine"]`` is that grid's voxel-to-world (RAS+ mm) affine. The affine of any view —
cropped, strided, flipped, transposed — is derived from the coordinates here, so plain xarray
indexing keeps world space right with no special code. The accessor is stateless: xarray
rebuilds it for every new object.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import xarray as xr

from mriflow.errors import GeometryError
from mriflow.image import affine as affine_math
from mriflow.image.affine import SPATIAL_DIMS

if TYPE_CHECKING:
    import os
    from pathlib import Path

__all__ = ["MriAccessor"]


@xr.register_dataarray_accessor("mri")
class MriAccessor:
    """Spatial view of an image: affine, orientation, spacing, reorientation, writing."""

    def __init__(self, obj: xr.DataArray) -> None:
        self._obj = obj

    # --- geometry -------------------------------------------------------------------------

    @property
    def spatial_dims(self) -> tuple[str, ...]:
        """Spatial dims present in the array, in array order (e.g. ``("j", "i", "k")``)."""
        return tuple(d for d in self._obj.dims if d in SPATIAL_DIMS)

    @property
    def base_affine(self) -> np.ndarray:
        """Affine of the grid the image was loaded from (``attrs["affine"]``)."""
        name = self._obj.name or "image"
        try:
            base = self._obj.attrs["affine"]
        except KeyError:
            raise GeometryError(
                f"{name}: no 'affine' in attrs; build images with mriflow.open_image or "
                "mriflow.from_array so they carry their voxel-to-world affine"
            ) from None
        return affine_math.check_affine(np.asarray(base), str(name))

    @property
    def affine(self) -> np.ndarray:
        """Voxel-to-world affine of this view.

        Columns follow the spatial dims in array order; spatial axes that were dropped by
        integer indexing (or never existed, for 2D images) come after them.
        """
        axes, starts, steps = self._index_grid()
        return affine_math.index_affine(self.base_affine, axes, starts, steps)

    def _index_grid(self) -> tuple[list[int], list[float], list[float]]:
        obj = self._obj
        present = list(self.spatial_dims)
        absent = [d for d in SPATIAL_DIMS if d not in present]
        axes, starts, steps = [], [], []
        for dim in present + absent:
            start, step = 0.0, 1.0
            if dim in obj.coords:
                values = np.asarray(obj.coords[dim].values, dtype=np.float64).ravel()
                if values.size:
                    start = float(values[0])
                if values.size > 1 and dim in obj.dims:
                    diffs = np.diff(values)
                    step = float(diffs[0])
                    if step == 0 or not np.allclose(diffs, step, rtol=0, atol=1e-9):
                        raise GeometryError(
                            f"{obj.name or 'image'}: coordinate {dim!r} is not evenly spaced "
                            f"(steps {np.unique(diffs)[:5]}), so this view has no single affine; "
                            "select with slices rather than lists of indices"
                        )
            axes.append(SPATIAL_DIMS.index(dim))
            starts.append(start)
            steps.append(step)
        return axes, starts, steps

    @property
    def spacing(self) -> tuple[float, ...]:
        """Voxel size in mm along each spatial dim, in array order."""
        sizes = affine_math.voxel_sizes(self.affine)
        return tuple(float(s) for s in sizes[: len(self.spatial_dims)])

    @property
    def origin(self) -> tuple[float, float, float]:
        """World (RAS+ mm) position of the centre of the first voxel of this view."""
        return tuple(float(v) for v in self.affine[:3, 3])  # type: ignore[return-value]

    @property
    def orientation(self) -> tuple[str, str, str]:
        """The world direction each spatial dim points to, e.g. ``("L", "A", "S")``."""
        return affine_math.orientation_codes(self.affine)

    @property
    def grid_shape(self) -> tuple[int, int, int]:
        """Shape of the spatial grid, with 1 for dropped or absent spatial dims."""
        sizes = [self._obj.sizes[d] for d in self.spatial_dims]
        return tuple(sizes + [1] * (3 - len(sizes)))  # type: ignore[return-value]

    @property
    def bounds(self) -> tuple[tuple[float, float], tuple[float, float], tuple[float, float]]:
        """World extent ``((xmin, xmax), (ymin, ymax), (zmin, zmax))`` of the voxel boxes."""
        shape = np.asarray(self.grid_shape, dtype=np.float64)
        corners = (
            np.array([[a, b, c] for a in (0, 1) for b in (0, 1) for c in (0, 1)], dtype=np.float64)
            * shape
            - 0.5
        )
        world = self.voxel_to_world(corners)
        return tuple((float(world[:, n].min()), float(world[:, n].max())) for n in range(3))  # type: ignore[return-value]

    def center(self, lps: bool = False) -> tuple[float, float, float]:
        """World position of the grid centre, RAS+ by default or DICOM's LPS+ with ``lps``."""
        middle = (np.asarray(self.grid_shape, dtype=np.float64) - 1) / 2
        point = self.voxel_to_world(middle)
        if lps:
            point = point * np.array([-1.0, -1.0, 1.0])
        return tuple(float(v) for v in point)  # type: ignore[return-value]

    def voxel_to_world(self, ijk: Any) -> np.ndarray:
        """World (RAS+ mm) positions of voxel indices ``(..., 3)`` of this view."""
        points = np.asarray(ijk, dtype=np.float64)
        if points.shape[-1] != 3:
            raise GeometryError(f"voxel indices need a last axis of 3, got shape {points.shape}")
        aff = self.affine
        return points @ aff[:3, :3].T + aff[:3, 3]

    def world_to_voxel(self, xyz: Any) -> np.ndarray:
        """Fractional voxel indices ``(..., 3)`` of this view for world positions."""
        points = np.asarray(xyz, dtype=np.float64)
        if points.shape[-1] != 3:
            raise GeometryError(f"world points need a last axis of 3, got shape {points.shape}")
        inverse = np.linalg.inv(self.affine)
        return points @ inverse[:3, :3].T + inverse[:3, 3]

    # --- views ----------------------------------------------------------------------------

    def reorient(self, target: str | Sequence[str] = "RAS") -> xr.DataArray:
        """Lazily flip and transpose the spatial dims so they point to ``target`` (e.g. "RAS").

        Only views change: no resampling, no data read. Non-spatial dims keep their places.
        """
        spatial = self.spatial_dims
        if len(spatial) != 3:
            raise GeometryError(
                f"{self._obj.name or 'image'}: reorient needs the three spatial dims i, j, k; "
                f"this view has {spatial}"
            )
        order, flips = affine_math.reorientation(self.affine, target)
        flipped = self._obj.isel(
            {d: slice(None, None, -1) for d, flip in zip(spatial, flips, strict=True) if flip}
        )
        new_spatial = iter([spatial[a] for a in order])
        dims = [next(new_spatial) if d in SPATIAL_DIMS else d for d in self._obj.dims]
        return flipped.transpose(*dims)

    # --- diffusion gradients ----------------------------------------------------------------

    @property
    def bvals(self) -> np.ndarray:
        """b-values (s/mm²) of the ``volume`` axis."""
        return np.asarray(self._coord("bval"), dtype=np.float64)

    def bvecs(self, frame: str = "fsl") -> np.ndarray:
        """Gradient directions ``(n_volumes, 3)`` of the ``volume`` axis.

        mriflow keeps gradients in world (RAS+) coordinates so slicing, flipping and
        reorienting never invalidate them. ``frame`` picks the frame they are returned in:
        ``"ras"`` (world), ``"voxel"`` (along this view's array axes), or ``"fsl"`` (FSL's
        convention for this view, what a ``.bvec`` file written next to it must hold).
        """
        from mriflow.io.gradients import world_to_bvecs

        world = np.stack([self._coord(f"bvec_{c}") for c in "xyz"], axis=-1).astype(np.float64)
        if frame == "ras":
            return world
        return world_to_bvecs(world, self.affine, fsl=(frame == "fsl"), frame=frame)

    def _coord(self, name: str) -> np.ndarray:
        if name not in self._obj.coords:
            raise GeometryError(
                f"{self._obj.name or 'image'}: no {name!r} coordinate; diffusion images get "
                "bval/bvec coordinates from .bval/.bvec files next to the image"
            )
        return np.asarray(self._obj.coords[name].values)

    # --- output ---------------------------------------------------------------------------

    def to_nifti(self, path: str | os.PathLike[str], **kwargs: Any) -> Path:
        """Write this view to a NIfTI file chunk by chunk; see :func:`mriflow.to_nifti`."""
        from mriflow.io.nifti import to_nifti

        return to_nifti(self._obj, path, **kwargs)

    def to_zarr(self, store: Any, **kwargs: Any) -> str:
        """Write this view to a NIfTI-Zarr store chunk by chunk; see :func:`mriflow.to_zarr`."""
        from mriflow.io.zarr import to_zarr

        return to_zarr(self._obj, store, **kwargs)
