"""Direction getters: jitted plug-ins with one signature, chosen by name.

Every getter has :data:`mriflow.track.kernels.GETTER_SIGNATURE`::

    status = getter(field, basis, vertices, point, direction, params, rng_state, scratch, cell)

- ``field`` ``(i, j, k, channel)``: unit peak directions (``peak * 3`` channels, see
  :func:`unit_peaks`) or SH coefficients; ``basis`` ``(n_coefficients,
  n_hemisphere_vertices)`` float32 and ``vertices`` ``(n_hemisphere_vertices, 3)``
  describe the sphere (empty for peaks);
- ``point``: voxel indices; ``direction`` (unit, voxel frame, mm): the previous step's
  direction on input, replaced by the next one; all zeros asks for the initial direction
  at a seed (the strongest fibre there);
- ``params``: ``[cos(max_angle), pmf_threshold, min_total_weight]``; ``rng_state``: the streamline's
  counter-based stream (:mod:`mriflow.track.rng`); ``scratch``: float32 workspace of at
  least ``n_coefficients + n_hemisphere_vertices`` values;
- returns ``GETTER_OK``, ``GETTER_NO_DIRECTION`` (nothing within ``max_angle`` or above the
  pmf threshold) or ``GETTER_INVALID`` (NaN in the field).

Register a new one with :func:`register_direction_getter`; the driver needs no change.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
from numba import njit

from mriflow.errors import TrackingInputError
from mriflow.track.kernels import (
    GETTER_INVALID,
    GETTER_NO_DIRECTION,
    GETTER_OK,
    GETTER_SIGNATURE,
    stable_plugin,
)
from mriflow.track.rng import uniform

__all__ = [
    "DIRECTION_GETTERS",
    "FIELD_KINDS",
    "direction_getter",
    "max_odf",
    "peak_following",
    "probabilistic_odf",
    "register_direction_getter",
    "unit_peaks",
]


@njit(nogil=True, cache=True, inline="always")
def _corner_jit(cell, corner):
    """Indices and weight of corner ``0..7`` of a trilinear cell (bits: i, j, k high)."""
    a = (corner >> 2) & 1
    b = (corner >> 1) & 1
    c = corner & 1
    i = cell[4] if a else cell[1]
    j = cell[5] if b else cell[2]
    k = cell[6] if c else cell[3]
    weight = (
        (cell[7] if a else 1.0 - cell[7])
        * (cell[8] if b else 1.0 - cell[8])
        * (cell[9] if c else 1.0 - cell[9])
    )
    return i, j, k, weight


@njit(nogil=True, cache=True)
def unit_peaks(peaks):
    """Peak directions ``(i, j, k, peak * 3)`` prepared once for :func:`peak_following`.

    Every peak is scaled to unit length (``x / sqrt(x * x + y * y + z * z)`` per
    component; NaN stays NaN) and each voxel's non-zero peaks are moved to the front, in
    their order, with the zero (absent) peaks after them, so the getter stops at the
    first zero peak.
    """
    n_values = peaks.shape[3]
    flat = peaks.reshape(-1, n_values)
    out = np.zeros_like(flat)
    for voxel in range(flat.shape[0]):
        kept = 0
        for start in range(0, n_values - 2, 3):
            x = flat[voxel, start]
            y = flat[voxel, start + 1]
            z = flat[voxel, start + 2]
            norm = math.sqrt(x * x + y * y + z * z)
            if norm == 0.0:
                continue
            out[voxel, kept] = x / norm
            out[voxel, kept + 1] = y / norm
            out[voxel, kept + 2] = z / norm
            kept += 3
    return out.reshape(peaks.shape)


@stable_plugin
@njit(GETTER_SIGNATURE, nogil=True, cache=True, inline="always")
def peak_following(field, basis, vertices, point, direction, params, rng_state, scratch, cell):
    """Deterministic peak following (EuDX-like).

    ``field`` holds unit peaks, present ones first (:func:`unit_peaks`). In each of the 8
    voxels around ``point`` take the peak closest to ``direction`` (either sign); keep it
    if within ``max_angle``; the next direction is the trilinear-weighted sum of the kept
    peaks, normalised, unless the kept corners' weights sum below ``params[2]`` (EuDX's
    total weight: 0.5 in dipy's ``eudx_tracking``). At a seed: the first non-zero peak of
    the nearest voxel.
    """
    n_peaks = field.shape[3] // 3
    shape = (field.shape[0], field.shape[1], field.shape[2])
    dx = direction[0]
    dy = direction[1]
    dz = direction[2]
    if dx == 0.0 and dy == 0.0 and dz == 0.0:
        i = min(max(math.floor(point[0] + 0.5), 0), shape[0] - 1)
        j = min(max(math.floor(point[1] + 0.5), 0), shape[1] - 1)
        k = min(max(math.floor(point[2] + 0.5), 0), shape[2] - 1)
        for p in range(n_peaks):
            x = field[i, j, k, 3 * p]
            y = field[i, j, k, 3 * p + 1]
            z = field[i, j, k, 3 * p + 2]
            if math.isnan(x) or math.isnan(y) or math.isnan(z):
                return GETTER_INVALID
            if x == 0.0 and y == 0.0 and z == 0.0:
                break  # the absent peaks come last
            direction[0] = x
            direction[1] = y
            direction[2] = z
            return GETTER_OK
        return GETTER_NO_DIRECTION
    if not cell[0] or n_peaks == 0:
        return GETTER_NO_DIRECTION
    cos_max = params[0]
    sum_x = 0.0
    sum_y = 0.0
    sum_z = 0.0
    total = 0.0  # trilinear weight of the corners with a peak within max_angle
    invalid = False
    # Selection without data-dependent branches, which were mispredicted at most corners
    # (a third of the step's time): the loop keeps only the index of the closest peak and
    # its |cosine| (a max), and that peak is read again after it. A zero-weight corner
    # adds exact zeros; a zero (absent) peak has cosine 0, so it is never within
    # max_angle (cos_max > 0) nor closer than a present one: reading the first two
    # unconditionally gives the result of stopping at the first absent one, as the loop
    # does from the third on. Unsigned indices spare every read the negative-index fix-up.
    for corner in range(8):
        i, j, k, weight = _corner_jit(cell, corner)
        iu = np.uint64(i)
        ju = np.uint64(j)
        ku = np.uint64(k)
        best = -1.0
        chosen = np.uint64(0)
        corner_nan = False
        for p in range(n_peaks):
            first = np.uint64(3 * p)
            x = field[iu, ju, ku, first]
            y = field[iu, ju, ku, first + np.uint64(1)]
            z = field[iu, ju, ku, first + np.uint64(2)]
            if p >= 2 and x == 0.0 and y == 0.0 and z == 0.0:
                break  # the absent peaks come last
            cosine = x * dx + y * dy + z * dz
            corner_nan |= math.isnan(cosine)
            size = abs(cosine)
            closer = size > best
            chosen = first if closer else chosen  # an index, not a branch
            best = size if closer else best  # maxsd
        # The chosen peak, read again (from L1) at its index.
        best_x = field[iu, ju, ku, chosen]
        best_y = field[iu, ju, ku, chosen + np.uint64(1)]
        best_z = field[iu, ju, ku, chosen + np.uint64(2)]
        signed = best_x * dx + best_y * dy + best_z * dz
        invalid |= corner_nan and weight > 0.0
        # A NaN corner (weight 0, or the step is invalid anyway) adds nothing.
        best_x = 0.0 if corner_nan else best_x
        best_y = 0.0 if corner_nan else best_y
        best_z = 0.0 if corner_nan else best_z
        used = weight if best >= cos_max else 0.0
        total += used
        used = -used if signed < 0.0 else used
        sum_x += used * best_x
        sum_y += used * best_y
        sum_z += used * best_z
    if invalid:
        return GETTER_INVALID
    norm = math.sqrt(sum_x * sum_x + sum_y * sum_y + sum_z * sum_z)
    if norm == 0.0 or total < params[2]:
        return GETTER_NO_DIRECTION
    direction[0] = sum_x / norm
    direction[1] = sum_y / norm
    direction[2] = sum_z / norm
    return GETTER_OK


@njit(nogil=True, cache=True, fastmath={"reassoc", "contract"})
def _odf_on_hemisphere(field, basis, cell, scratch):
    """Interpolate SH coefficients in ``cell`` (``trilinear_cell`` of the point) into
    ``scratch[:n_coef]`` and evaluate the ODF (negatives clipped) on the hemisphere into
    ``scratch[n_coef:]``, in float32:
    ``basis`` is ``(n_coef, n_vertices)`` so the product runs along contiguous vertices.
    Returns (status, max value)."""
    n_coef = basis.shape[0]
    n_vertices = basis.shape[1]
    if not cell[0]:
        return GETTER_NO_DIRECTION, 0.0
    for c in range(n_coef):
        scratch[c] = 0.0
    for corner in range(8):
        i, j, k, weight = _corner_jit(cell, corner)
        if weight <= 0.0:
            continue
        for c in range(n_coef):
            scratch[c] += np.float32(weight * field[i, j, k, c])
    for c in range(n_coef):
        if math.isnan(scratch[c]):
            return GETTER_INVALID, 0.0
    odf = scratch[n_coef : n_coef + n_vertices]
    odf[:] = 0.0
    for c in range(n_coef):
        coefficient = scratch[c]
        for v in range(n_vertices):
            odf[v] += coefficient * basis[c, v]
    top = np.float32(0.0)
    for v in range(n_vertices):
        value = max(odf[v], np.float32(0.0))
        odf[v] = value
        top = max(top, value)
    if top <= 0.0:
        return GETTER_NO_DIRECTION, 0.0
    return GETTER_OK, float(top)


@njit(nogil=True, cache=True)
def _initial_odf_direction(vertices, direction, scratch, n_coef):
    best = -1.0
    best_v = 0
    for v in range(vertices.shape[0]):
        if scratch[n_coef + v] > best:
            best = scratch[n_coef + v]
            best_v = v
    for axis in range(3):
        direction[axis] = vertices[best_v, axis]


@stable_plugin
@njit(GETTER_SIGNATURE, nogil=True, cache=True, inline="always")
def max_odf(field, basis, vertices, point, direction, params, rng_state, scratch, cell):
    """Deterministic maximum of the ODF from SH coefficients (dipy's deterministic tracker).

    The ODF is evaluated from trilinearly interpolated coefficients; values below
    ``pmf_threshold`` times its maximum are dropped; the next direction is the largest
    remaining vertex within ``max_angle`` of ``direction``, flipped to continue forward.
    """
    n_coef = field.shape[3]
    status, top = _odf_on_hemisphere(field, basis, cell, scratch)
    if status != GETTER_OK:
        return status
    if direction[0] == 0.0 and direction[1] == 0.0 and direction[2] == 0.0:
        _initial_odf_direction(vertices, direction, scratch, n_coef)
        return GETTER_OK
    cos_max = params[0]
    floor = params[1] * top
    best = 0.0
    best_v = -1
    best_cos = 0.0
    for v in range(vertices.shape[0]):
        value = scratch[n_coef + v]
        if value < floor or value <= best:
            continue
        cosine = (
            vertices[v, 0] * direction[0]
            + vertices[v, 1] * direction[1]
            + vertices[v, 2] * direction[2]
        )
        if abs(cosine) > cos_max:
            best = value
            best_v = v
            best_cos = cosine
    if best_v < 0:
        return GETTER_NO_DIRECTION
    sign = 1.0 if best_cos > 0.0 else -1.0
    for axis in range(3):
        direction[axis] = sign * vertices[best_v, axis]
    return GETTER_OK


@njit(nogil=True, cache=True, inline="always")
def _pmf_value(scratch, index, vertices, v, dx, dy, dz, floor, cos_max):
    """The pmf at vertex ``v``: its ODF value ``scratch[index]`` if at or above ``floor`` and
    within the cone ``|cos| >= cos_max`` around ``(dx, dy, dz)``, else 0 (stored back)."""
    value = scratch[index]
    cosine = vertices[v, 0] * dx + vertices[v, 1] * dy + vertices[v, 2] * dz
    value = value if (value >= floor and abs(cosine) >= cos_max) else np.float32(0.0)
    scratch[index] = value
    return value


@stable_plugin
@njit(GETTER_SIGNATURE, nogil=True, cache=True, inline="always")
def probabilistic_odf(field, basis, vertices, point, direction, params, rng_state, scratch, cell):
    """Probabilistic direction from SH coefficients (dipy's probabilistic tracker).

    The ODF (thresholded at ``pmf_threshold`` times its maximum) restricted to vertices
    within ``max_angle`` of ``direction`` is the sampling distribution; one uniform draw
    from the streamline's counter-based stream picks the next direction. At a seed: the
    ODF maximum, as dipy starts from the seed's peak.
    """
    n_coef = field.shape[3]
    status, top = _odf_on_hemisphere(field, basis, cell, scratch)
    if status != GETTER_OK:
        return status
    if direction[0] == 0.0 and direction[1] == 0.0 and direction[2] == 0.0:
        _initial_odf_direction(vertices, direction, scratch, n_coef)
        return GETTER_OK
    cos_max = params[0]
    floor = params[1] * top
    n_vertices = vertices.shape[0]
    dx = direction[0]
    dy = direction[1]
    dz = direction[2]
    # The pmf: ODF values at or above the floor, within max_angle (branch-free), summed
    # in four partial sums (a shorter dependency chain than one running sum).
    sum0 = 0.0
    sum1 = 0.0
    sum2 = 0.0
    sum3 = 0.0
    last = -1
    for base in range(0, n_vertices, 4):
        for lane in range(4):
            v = base + lane
            if v >= n_vertices:
                break
            value = _pmf_value(scratch, n_coef + v, vertices, v, dx, dy, dz, floor, cos_max)
            last = v if value > 0.0 else last
            if lane == 0:
                sum0 += value
            elif lane == 1:
                sum1 += value
            elif lane == 2:
                sum2 += value
            else:
                sum3 += value
    total = (sum0 + sum1) + (sum2 + sum3)
    if total <= 0.0:
        return GETTER_NO_DIRECTION
    target = uniform(rng_state) * total
    # The first vertex whose running sum passes the target (the last kept one if rounding
    # leaves the running sum short of it).
    chosen = last
    running = 0.0
    for v in range(last):
        running += scratch[n_coef + v]
        if running > target:
            chosen = v
            break
    cosine = (
        vertices[chosen, 0] * direction[0]
        + vertices[chosen, 1] * direction[1]
        + vertices[chosen, 2] * direction[2]
    )
    sign = 1.0 if cosine > 0.0 else -1.0
    for axis in range(3):
        direction[axis] = sign * vertices[chosen, axis]
    return GETTER_OK


#: Registered getters by name.
DIRECTION_GETTERS: dict[str, Callable[..., int]] = {
    "peak_following": peak_following,
    "max_odf": max_odf,
    "probabilistic": probabilistic_odf,
}
#: The field each getter reads: ``"peaks"`` or ``"sh"``.
FIELD_KINDS: dict[str, str] = {
    "peak_following": "peaks",
    "max_odf": "sh",
    "probabilistic": "sh",
}


def register_direction_getter(name: str, getter: Callable[..., int], field_kind: str) -> None:
    """Add a getter compiled with ``GETTER_SIGNATURE`` under ``name``, reading ``field_kind``
    (``"peaks"`` or ``"sh"``) fields."""
    if field_kind not in ("peaks", "sh"):
        raise TrackingInputError(f"field_kind: must be 'peaks' or 'sh', got {field_kind!r}")
    DIRECTION_GETTERS[name] = getter
    FIELD_KINDS[name] = field_kind


def direction_getter(name: str) -> Callable[..., int]:
    """The registered getter called ``name``."""
    try:
        return DIRECTION_GETTERS[name]
    except KeyError:
        raise TrackingInputError(
            f"direction_getter: unknown name {name!r}; registered: {sorted(DIRECTION_GETTERS)}"
        ) from None
