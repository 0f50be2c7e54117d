"""A deterministic diffusion phantom with known bundles, for tracking tests and benchmarks.

Three tube-shaped bundles in a slab of anisotropic voxels, clear of its faces:
``straight`` (along the first axis), ``crossing`` (a straight bundle crossing it at
``crossing_angle``, 75° by default) and ``curved`` (a circular arc).
Geometry is defined in millimetres of the voxel frame (index x voxel size), so fibre
directions are unit vectors in that frame, the frame the trackers work in.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from mriflow.data import gradient_table

__all__ = ["BUNDLES", "BundlePhantom", "bundle_phantom"]

#: Bundle names, in the order of :attr:`BundlePhantom.masks`.
BUNDLES = ("straight", "crossing", "curved")


@dataclass(frozen=True)
class BundlePhantom:
    """The generated DWI and its ground truth.

    ``dwi`` ``(i, j, k, volume)`` float32; ``bvals``, ``bvecs`` (unit, voxel frame)
    ``(volume,)``/``(volume, 3)``; ``affine`` voxel-to-RAS; ``masks`` ``(bundle, i, j, k)``
    bool (bundles overlap where they cross); ``directions`` ``(bundle, i, j, k, 3)`` unit
    fibre directions (zero outside the bundle).
    """

    dwi: np.ndarray
    bvals: np.ndarray
    bvecs: np.ndarray
    affine: np.ndarray
    masks: np.ndarray
    directions: np.ndarray

    @property
    def zooms(self) -> np.ndarray:
        """Voxel size in mm."""
        return np.sqrt((self.affine[:3, :3] ** 2).sum(axis=0))

    @property
    def white_matter(self) -> np.ndarray:
        """Union of the bundles."""
        return np.asarray(self.masks.any(axis=0))


def _straight(
    points: np.ndarray, start: np.ndarray, end: np.ndarray, radius: float
) -> tuple[np.ndarray, np.ndarray]:
    axis = (end - start) / np.linalg.norm(end - start)
    along = (points - start) @ axis
    across = points - start - along[..., None] * axis
    inside = (np.linalg.norm(across, axis=-1) < radius) & (along >= 0)
    inside &= along <= np.linalg.norm(end - start)
    return inside, np.broadcast_to(axis, points.shape)


def _arc(
    points: np.ndarray, centre: np.ndarray, radius: float, width: float, angles: tuple[float, float]
) -> tuple[np.ndarray, np.ndarray]:
    offset = points - centre
    height = offset[..., 2].copy()
    offset[..., 2] = 0.0
    distance = np.linalg.norm(offset, axis=-1)
    angle = np.degrees(np.arctan2(offset[..., 1], offset[..., 0])) % 360.0
    inside = np.hypot(distance - radius, height) < width / 2
    inside &= (angle >= angles[0]) & (angle <= angles[1])
    tangent = np.stack([-offset[..., 1], offset[..., 0], np.zeros_like(distance)], axis=-1)
    tangent /= np.maximum(np.linalg.norm(tangent, axis=-1, keepdims=True), 1e-12)
    return inside, tangent


def bundle_phantom(
    *,
    scale: float = 1.0,
    zooms: tuple[float, float, float] = (2.0, 2.5, 3.0),
    n_slices: int = 6,
    n_directions: int = 64,
    bvalue: float = 2000.0,
    snr: float = 20.0,
    crossing_angle: float = 75.0,
    seed: int = 0,
) -> BundlePhantom:
    """Generate the phantom; ``scale`` multiplies the in-plane extent (1: 56 x 60 mm).

    Signal: per fibre population a cylindrical tensor (1.7 / 0.3 µm²/ms), equal fractions
    where bundles cross; background isotropic (0.7 µm²/ms, S0 twice the fibres'); Rician
    noise with sigma = S0 / ``snr``. One b=0 volume per 10 directions.
    """
    zoom = np.asarray(zooms, dtype=np.float64)
    shape = (round(28 * scale), round(24 * scale), int(n_slices))
    index = np.stack(np.meshgrid(*[np.arange(n) for n in shape], indexing="ij"), axis=-1)
    mm = index * zoom / scale  # geometry drawn on the unit-scale layout
    centre_k = (shape[2] - 1) * zoom[2] / scale / 2
    bundles = [
        _straight(mm, np.array([4.0, 15.0, centre_k]), np.array([52.0, 15.0, centre_k]), 5.0),
        _straight(
            mm,
            np.array([28.0 - 13.0 / np.tan(np.radians(crossing_angle)), 2.0, centre_k]),
            np.array([28.0 + 15.0 / np.tan(np.radians(crossing_angle)), 30.0, centre_k]),
            4.0,
        ),
        _arc(mm, np.array([28.0, 62.0, centre_k]), 19.0, 8.0, (210.0, 330.0)),
    ]
    masks = np.stack([inside for inside, _ in bundles])
    directions = np.stack([np.where(inside[..., None], d, 0.0) for inside, d in bundles])
    bvals, bvecs = gradient_table(n_directions, bvalue, max(n_directions // 10, 1), seed)
    axial, radial, iso = 1.7e-3, 0.3e-3, 0.7e-3
    count = masks.sum(axis=0)
    signal = np.zeros((*shape, len(bvals)))
    for volume, (b, g) in enumerate(zip(bvals, bvecs, strict=True)):
        fibre = np.zeros(shape)
        for n in range(len(bundles)):
            cos2 = (directions[n] @ g) ** 2
            fibre += masks[n] * np.exp(-b * (radial + (axial - radial) * cos2))
        signal[..., volume] = np.where(
            count > 0, 1000.0 * fibre / np.maximum(count, 1), 2000.0 * np.exp(-b * iso)
        )
    rng = np.random.default_rng(seed)
    sigma = 1000.0 / snr
    noisy = np.sqrt(
        (signal + rng.normal(0, sigma, signal.shape)) ** 2 + rng.normal(0, sigma, signal.shape) ** 2
    )
    affine = np.diag([*zoom, 1.0])
    affine[:3, 3] = -zoom * (np.asarray(shape) - 1) / 2
    return BundlePhantom(noisy.astype(np.float32), bvals, bvecs, affine, masks, directions)
