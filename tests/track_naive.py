"""Slow, obviously-right pure-Python twins of the deterministic tracking kernels.

Written from the documented rules, not from the jitted code: plain loops over Python
floats, one streamline at a time. Used by test_track_engine.py on small inputs.
"""

from __future__ import annotations

import math

import numpy as np

ENDPOINT, OUTSIDE, ANGLE, MAX_LENGTH, INVALID = 1, 2, 3, 4, 5


def cell(shape, point):
    """Corner voxels and weights of trilinear interpolation, or None outside the image."""
    for axis in range(3):
        if not (-0.5 <= point[axis] < shape[axis] - 0.5):
            return None
    base = [math.floor(p) for p in point]
    frac = [p - b for p, b in zip(point, base, strict=True)]
    corners = []
    for a in (0, 1):
        for b in (0, 1):
            for c in (0, 1):
                index = []
                weight = 1.0
                for axis, high in enumerate((a, b, c)):
                    value = base[axis] + high
                    index.append(min(max(value, 0), shape[axis] - 1))
                    weight *= frac[axis] if high else 1.0 - frac[axis]
                corners.append((tuple(index), weight))
    return corners


def threshold_stop(stop_map, point, threshold):
    corners = cell(stop_map.shape, point)
    if corners is None:
        return OUTSIDE
    value = sum(w * float(stop_map[idx]) for idx, w in corners if w > 0)
    if math.isnan(value):
        return INVALID
    return 0 if value > threshold else ENDPOINT


def unit_peak(peak):
    """A stored peak scaled to unit length (None for a zero peak): the engine normalises
    the peaks once when it prepares the field, with this arithmetic."""
    peak = [float(v) for v in peak]
    norm = math.sqrt(peak[0] * peak[0] + peak[1] * peak[1] + peak[2] * peak[2])
    if norm == 0:
        return None
    return [v / norm for v in peak]


def peak_direction(peaks, point, direction, cos_max, min_total_weight=0.0):
    """Next direction by peak following from raw stored peaks, or an int failure code."""
    shape = peaks.shape[:3]
    if direction is None:
        idx = tuple(
            min(max(math.floor(p + 0.5), 0), n - 1) for p, n in zip(point, shape, strict=True)
        )
        for peak in peaks[idx]:
            if any(math.isnan(float(v)) for v in peak):
                return INVALID
            unit = unit_peak(peak)
            if unit is not None:
                return unit
        return ANGLE
    corners = cell(shape, point)
    if corners is None:
        return ANGLE
    total = [0.0, 0.0, 0.0]
    kept_weight = 0.0
    for idx, weight in corners:
        if weight <= 0:
            continue
        best, best_vec = -1.0, None
        for peak in peaks[idx]:
            if any(math.isnan(float(v)) for v in peak):
                return INVALID
            unit = unit_peak(peak)
            if unit is None:
                continue
            cosine = sum(p * d for p, d in zip(unit, direction, strict=True))
            if abs(cosine) > best:
                best = abs(cosine)
                sign = 1.0 if cosine >= 0 else -1.0
                best_vec = [sign * v for v in unit]
        if best >= cos_max:
            total = [t + weight * v for t, v in zip(total, best_vec, strict=True)]
            kept_weight += weight
    norm = math.sqrt(sum(t * t for t in total))
    if norm == 0 or kept_weight < min_total_weight:
        return ANGLE
    return [t / norm for t in total]


def odf_direction(shm, basis, vertices, point, direction, cos_max, pmf_threshold):
    """Next direction by the ODF maximum within the cone, or an int failure code."""
    corners = cell(shm.shape[:3], point)
    if corners is None:
        return ANGLE
    coef = [0.0] * shm.shape[3]
    for idx, weight in corners:
        if weight > 0:
            coef = [c + weight * float(v) for c, v in zip(coef, shm[idx], strict=True)]
    if any(math.isnan(c) for c in coef):
        return INVALID
    odf = [max(sum(float(b) * c for b, c in zip(row, coef, strict=True)), 0.0) for row in basis]
    top = max(odf)
    if top <= 0:
        return ANGLE
    if direction is None:
        return [float(v) for v in vertices[odf.index(top)]]
    best, best_v, best_cos = 0.0, None, 0.0
    for v, value in enumerate(odf):
        if value < pmf_threshold * top or value <= best:
            continue
        cosine = sum(float(a) * b for a, b in zip(vertices[v], direction, strict=True))
        if abs(cosine) > cos_max:
            best, best_v, best_cos = value, v, cosine
    if best_v is None:
        return ANGLE
    sign = 1.0 if best_cos > 0 else -1.0
    return [sign * float(a) for a in vertices[best_v]]


def track_one(next_direction, stop, seed, voxel_steps, max_steps, min_points):
    """One bidirectional streamline: (points backward end -> forward end, reasons) or None."""
    first = next_direction(list(seed), None)
    if isinstance(first, int):
        return None
    halves, reasons = [], []
    start_dir = first
    for half in range(2):
        point = [float(v) for v in seed]
        direction = start_dir if half == 0 else [-v for v in start_dir]
        budget = max_steps if half == 0 else max_steps - len(halves[0])
        points, reason = [], MAX_LENGTH
        for n in range(1, budget + 1):
            new = next_direction(point, direction)
            if isinstance(new, int):
                reason = new
                break
            direction = new
            if half == 0 and n == 1:
                start_dir = direction
            point = [p + d * s for p, d, s in zip(point, direction, voxel_steps, strict=True)]
            check = stop(point)
            if check:
                reason = check
                break
            points.append(point)
        halves.append(points)
        reasons.append(reason)
    line = [*reversed(halves[1]), [float(v) for v in seed], *halves[0]]
    if len(line) < min_points:
        return None
    return np.array(line), (reasons[1], reasons[0])
