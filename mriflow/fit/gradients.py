"""The gradient table a diffusion fit uses, checked against the image it comes with.

Fits work in the **voxel frame of the array they are given**: directions are
``dwi.mri.bvecs("voxel")`` (unit vectors along the array's i, j, k axes), so tensor
eigenvectors, SH coefficients and peak directions are in that frame too — what fibre tracking
in voxel space consumes. To compare with dipy, build dipy's ``gradient_table`` from the same
``dwi.mri.bvals`` and ``dwi.mri.bvecs("voxel")``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import xarray as xr

from mriflow.errors import FitInputError
from mriflow.fit.mapper import image_label

__all__ = ["DiffusionTable", "diffusion_table"]

#: Volumes with a b-value at or below this (s/mm²) count as b=0 (dipy's default too).
DEFAULT_B0_THRESHOLD = 50.0


@dataclass(frozen=True)
class DiffusionTable:
    """b-values ``(n,)``, voxel-frame unit directions ``(n, 3)``, and which volumes are b=0."""

    bvals: np.ndarray
    bvecs: np.ndarray
    b0_mask: np.ndarray
    label: str

    @property
    def n_diffusion(self) -> int:
        """Number of diffusion-weighted (non-b0) volumes."""
        return int((~self.b0_mask).sum())


def diffusion_table(
    dwi: xr.DataArray, b0_threshold: float = DEFAULT_B0_THRESHOLD
) -> DiffusionTable:
    """Check ``dwi``'s gradients and return them in the array's voxel frame.

    Raises :class:`~mriflow.errors.FitInputError` naming the image when it has no ``volume``
    axis or no gradients, the table does not match the number of volumes, no volume is b=0,
    or a diffusion-weighted volume has a zero or non-unit direction.
    """
    label = image_label(dwi) if isinstance(dwi, xr.DataArray) else "image"
    if not isinstance(dwi, xr.DataArray):
        raise FitInputError(
            f"{label}: diffusion fits take an image DataArray (mriflow.open_image), "
            f"got {type(dwi).__name__}"
        )
    if "volume" not in dwi.dims:
        raise FitInputError(f"{label}: no 'volume' axis (dims {dwi.dims}); is this a DWI series?")
    names = ("bval", "bvec_x", "bvec_y", "bvec_z")
    missing = [n for n in names if n not in dwi.coords]
    if missing:
        raise FitInputError(
            f"{label}: no gradient table ({', '.join(missing)} missing); put .bval/.bvec files "
            "next to the image or pass bvals=/bvecs= to mriflow.from_array"
        )
    n_volumes = dwi.sizes["volume"]
    for n in names:
        if dwi.coords[n].dims != ("volume",) or dwi.coords[n].size != n_volumes:
            raise FitInputError(
                f"{label}: gradient coordinate {n!r} has {dwi.coords[n].size} entries but the "
                f"image has {n_volumes} volumes"
            )
    bvals = dwi.mri.bvals
    world = dwi.mri.bvecs("ras")
    if not (np.all(np.isfinite(bvals)) and np.all(np.isfinite(world))):
        raise FitInputError(f"{label}: the gradient table holds NaN or infinite values")
    if np.any(bvals < 0):
        raise FitInputError(f"{label}: b-values must not be negative")
    b0_mask = bvals <= b0_threshold
    if not b0_mask.any():
        raise FitInputError(
            f"{label}: no b=0 volume (no b-value <= {b0_threshold:g}); the fit needs one to "
            "normalise the signal (raise b0_threshold if your b=0 volumes have small b-values)"
        )
    if b0_mask.all():
        raise FitInputError(f"{label}: every volume is b=0; no diffusion weighting to fit")
    norms = np.linalg.norm(world, axis=1)
    bad = np.flatnonzero(~b0_mask & (np.abs(norms - 1.0) > 1e-2))
    if bad.size:
        raise FitInputError(
            f"{label}: diffusion-weighted volume(s) {bad[:10].tolist()} have zero or non-unit "
            f"gradient directions (norms {np.round(norms[bad[:10]], 4).tolist()})"
        )
    return DiffusionTable(bvals=bvals, bvecs=dwi.mri.bvecs("voxel"), b0_mask=b0_mask, label=label)
