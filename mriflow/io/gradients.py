"""Diffusion gradient tables: FSL ``.bval``/``.bvec`` files and frame conversions.

FSL's ``.bvec`` holds directions in the image's voxel frame with the first axis negated when
the voxel-to-world determinant is positive (FSL's radiological voxel convention; dcm2niix and
MRtrix follow it). mriflow stores directions in world (RAS+) coordinates, which no slicing,
flipping or reorienting can invalidate, and converts back on the way out.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from mriflow.errors import SidecarError

__all__ = ["bvecs_to_world", "read_bval_bvec", "world_to_bvecs"]


def _directions(affine: np.ndarray) -> np.ndarray:
    linear = np.asarray(affine, dtype=np.float64)[:3, :3]
    return linear / np.linalg.norm(linear, axis=0)


def _normalise(vectors: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(vectors, axis=-1, keepdims=True)
    return np.divide(vectors, norms, out=np.zeros_like(vectors), where=norms > 1e-12)


def _fsl_sign(affine: np.ndarray) -> np.ndarray:
    positive = np.linalg.det(np.asarray(affine)[:3, :3]) > 0
    return np.array([-1.0 if positive else 1.0, 1.0, 1.0])


def bvecs_to_world(bvecs: np.ndarray, affine: np.ndarray) -> np.ndarray:
    """World (RAS+) unit directions of FSL-convention ``bvecs`` ``(n, 3)`` for ``affine``."""
    voxel = np.asarray(bvecs, dtype=np.float64) * _fsl_sign(affine)
    return _normalise(voxel @ _directions(affine).T)


def world_to_bvecs(
    world: np.ndarray, affine: np.ndarray, *, fsl: bool = True, frame: str = "fsl"
) -> np.ndarray:
    """Directions ``(n, 3)`` in the voxel frame of ``affine`` (FSL's convention if ``fsl``)."""
    if frame not in ("fsl", "voxel"):
        raise ValueError(f"frame must be 'ras', 'voxel' or 'fsl', got {frame!r}")
    voxel = _normalise(np.asarray(world, dtype=np.float64) @ np.linalg.inv(_directions(affine)).T)
    return voxel * _fsl_sign(affine) if fsl else voxel


def read_bval_bvec(
    bval_path: Path, bvec_path: Path, n_volumes: int
) -> tuple[np.ndarray, np.ndarray]:
    """Read an FSL pair, checking both against the image's number of volumes.

    Returns ``(bvals (n,), bvecs (n, 3))`` with bvecs as written (FSL convention).
    """
    bvals = _load_table(bval_path, allow_nan=False).ravel()
    if bvals.size != n_volumes:
        raise SidecarError(
            f"{bval_path}: has {bvals.size} b-values but the image has {n_volumes} volumes"
        )
    if np.any(bvals < 0):
        raise SidecarError(f"{bval_path}: b-values must not be negative")
    table = _load_table(bvec_path, allow_nan=True)
    if table.ndim == 2 and table.shape[0] == 3 and table.shape[1] == n_volumes:
        bvecs = table.T
    elif table.ndim == 2 and table.shape == (n_volumes, 3):
        bvecs = table
    else:
        raise SidecarError(
            f"{bvec_path}: expected 3 rows of {n_volumes} directions (one per volume), "
            f"got a table of shape {table.shape}"
        )
    # Some tools (dipy's own sample data among them) write NaN as the direction of b=0
    # volumes, which have none: read those as zero. NaN anywhere else is an error.
    undefined = ~np.isfinite(bvecs).all(axis=1)
    if np.any(undefined & (bvals > 0)):
        volumes = np.flatnonzero(undefined & (bvals > 0))
        raise SidecarError(
            f"{bvec_path}: directions of diffusion-weighted volumes {volumes.tolist()[:10]} "
            "are NaN or infinite"
        )
    bvecs = np.where(undefined[:, None], 0.0, bvecs)
    return bvals.astype(np.float64), bvecs.astype(np.float64)


def _load_table(path: Path, *, allow_nan: bool) -> np.ndarray:
    try:
        table = np.loadtxt(path, dtype=np.float64, ndmin=2)
    except (OSError, ValueError) as exc:
        raise SidecarError(f"{path}: not a table of numbers ({exc})") from exc
    if not allow_nan and not np.all(np.isfinite(table)):
        raise SidecarError(f"{path}: contains NaN or infinite values")
    return table
