"""Stopping criteria: a scalar map plus a jitted check with one signature, chosen by name.

Every check has :data:`mriflow.track.kernels.STOPPER_SIGNATURE`::

    status = check(stop_map, point, params, cell)

returning ``STOP_CONTINUE``, ``STOP_ENDPOINT``, ``STOP_OUTSIDE`` (beyond the image) or
``STOP_INVALID`` (NaN in the map). Max angle and min/max length are the driver's own rules.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import xarray as xr
from numba import njit

from mriflow.errors import TrackingInputError
from mriflow.track.kernels import (
    STOP_CONTINUE,
    STOP_ENDPOINT,
    STOP_INVALID,
    STOP_OUTSIDE,
    STOPPER_SIGNATURE,
    stable_plugin,
)

__all__ = [
    "STOPPING_CHECKS",
    "BinaryStopping",
    "StoppingCriterion",
    "ThresholdStopping",
    "binary_check",
    "threshold_check",
]


@stable_plugin
@njit(STOPPER_SIGNATURE, nogil=True, cache=True, inline="always")
def threshold_check(stop_map, point, params, cell):
    """Continue while the trilinearly interpolated map is above ``params[0]``."""
    if not cell[0]:
        return STOP_OUTSIDE
    value = 0.0
    for corner in range(8):
        a = (corner >> 2) & 1
        b = (corner >> 1) & 1
        c = corner & 1
        weight = (
            (cell[7] if a else 1.0 - cell[7])
            * (cell[8] if b else 1.0 - cell[8])
            * (cell[9] if c else 1.0 - cell[9])
        )
        if weight > 0.0:
            value += (
                weight
                * stop_map[
                    cell[4] if a else cell[1], cell[5] if b else cell[2], cell[6] if c else cell[3]
                ]
            )
    if math.isnan(value):
        return STOP_INVALID
    return STOP_CONTINUE if value > params[0] else STOP_ENDPOINT


@stable_plugin
@njit(STOPPER_SIGNATURE, nogil=True, cache=True, inline="always")
def binary_check(stop_map, point, params, cell):
    """Continue while the nearest voxel of the mask is non-zero."""
    for axis in range(3):
        if not (point[axis] >= -0.5 and point[axis] < stop_map.shape[axis] - 0.5):
            return STOP_OUTSIDE
    i = min(math.floor(point[0] + 0.5), stop_map.shape[0] - 1)
    j = min(math.floor(point[1] + 0.5), stop_map.shape[1] - 1)
    k = min(math.floor(point[2] + 0.5), stop_map.shape[2] - 1)
    value = stop_map[i, j, k]
    if math.isnan(value):
        return STOP_INVALID
    return STOP_CONTINUE if value > 0.0 else STOP_ENDPOINT


#: Registered checks by name.
STOPPING_CHECKS: dict[str, Callable[..., int]] = {
    "threshold": threshold_check,
    "binary": binary_check,
}


@dataclass(frozen=True)
class StoppingCriterion:
    """A stopping map (a 3D image) and the name of the check applied to it.

    ``check`` names an entry of :data:`STOPPING_CHECKS`; ``params`` are its parameters.
    """

    image: xr.DataArray
    check: str
    params: tuple[float, ...] = field(default=())

    def __post_init__(self) -> None:
        if not isinstance(self.image, xr.DataArray):
            raise TrackingInputError(
                f"stopping: the map must be an image DataArray (mriflow.open_image / "
                f"from_array), got {type(self.image).__name__}"
            )
        spatial = self.image.mri.spatial_dims
        if len(spatial) != 3 or self.image.ndim != 3:
            raise TrackingInputError(
                f"stopping: the map must be 3D over i, j, k; got dims {self.image.dims}"
            )
        if self.check not in STOPPING_CHECKS:
            raise TrackingInputError(
                f"stopping: unknown check {self.check!r}; registered: {sorted(STOPPING_CHECKS)}"
            )

    def arrays(self) -> tuple[np.ndarray, np.ndarray]:
        """The map as C-ordered float64 ``(i, j, k)`` and the check's parameter vector."""
        values = np.asarray(self.image.values, dtype=np.float64)
        return np.ascontiguousarray(values), np.asarray(self.params, dtype=np.float64)

    @property
    def affine(self) -> np.ndarray:
        """Voxel-to-world affine of the map."""
        return self.image.mri.affine

    @property
    def shape(self) -> tuple[int, ...]:
        """Grid shape of the map."""
        return tuple(int(n) for n in self.image.shape)

    def check_function(self) -> Callable[..., Any]:
        """The jitted check."""
        return STOPPING_CHECKS[self.check]


def ThresholdStopping(scalar_map: xr.DataArray, threshold: float) -> StoppingCriterion:
    """Stop where the trilinearly interpolated ``scalar_map`` (e.g. GFA, FA) falls to
    ``threshold`` or below."""
    threshold = float(threshold)
    if not math.isfinite(threshold):
        raise TrackingInputError(f"threshold: must be a finite number, got {threshold}")
    return StoppingCriterion(scalar_map, "threshold", (threshold,))


def BinaryStopping(mask: xr.DataArray) -> StoppingCriterion:
    """Stop where the nearest voxel of ``mask`` is zero (e.g. outside white matter)."""
    return StoppingCriterion(mask, "binary", ())
