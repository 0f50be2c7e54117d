"""The tracking engine: one jitted driver integrating streamlines from a range of seeds.

Direction getters and stopping checks are jitted functions with fixed signatures
(:data:`GETTER_SIGNATURE`, :data:`STOPPER_SIGNATURE`), looked up by name. The driver is
written once (:func:`_make_driver`) and specialised per (getter, stopper) pair, so the
plug-ins are direct calls the compiler can inline, not calls through function pointers
(which cost more than half of the time of a peak-following step); a new getter still
needs no change to the driver. Specialisations of the built-in plug-ins (marked with
:func:`stable_plugin`) are cached on disk like any ``cache=True`` kernel; a driver for a
user-registered plug-in is compiled once per process.

Conventions inside the kernels:

- positions are fractional voxel indices of the field arrays (voxel centres at integers);
- directions are unit vectors in the voxel frame in millimetre units (one component per
  array axis), so a step of ``step_size`` mm moves ``direction * step_size / voxel_size``
  voxels — anisotropic voxels handled;
- a streamline runs backward end → seed → forward end.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable
from typing import Any

import numpy as np
from numba import njit, types
from numba.core import cgutils
from numba.core.dispatcher import Dispatcher
from numba.extending import intrinsic

from mriflow.errors import TrackingInputError
from mriflow.track.rng import RNG_STATE_SIZE

__all__ = [
    "GETTER_OK",
    "GETTER_NO_DIRECTION",
    "GETTER_INVALID",
    "GETTER_SIGNATURE",
    "STOPPER_SIGNATURE",
    "STOP_CONTINUE",
    "STOP_ENDPOINT",
    "STOP_OUTSIDE",
    "STOP_INVALID",
    "REASON_NONE",
    "REASON_ENDPOINT",
    "REASON_OUTSIDE",
    "REASON_ANGLE",
    "REASON_MAX_LENGTH",
    "REASON_INVALID",
    "STOP_REASONS",
    "stable_plugin",
    "track_seed_range",
    "tracking_driver",
    "trilinear_cell",
]

# Direction getter results.
GETTER_OK = 0
GETTER_NO_DIRECTION = 1
GETTER_INVALID = 2

# Stopping check results.
STOP_CONTINUE = 0
STOP_ENDPOINT = 1
STOP_OUTSIDE = 2
STOP_INVALID = 3

# Why each end of a streamline stopped (per-streamline data, uint8).
REASON_NONE = 0
REASON_ENDPOINT = 1
REASON_OUTSIDE = 2
REASON_ANGLE = 3
REASON_MAX_LENGTH = 4
REASON_INVALID = 5
#: Names of the stop reason codes, by code.
STOP_REASONS = ("none", "endpoint", "outside", "angle", "max_length", "invalid")

#: ``(inside, i0, j0, k0, i1, j1, k1, fi, fj, fk)`` of :func:`trilinear_cell`.
_CELL = types.Tuple((types.boolean, *([types.int64] * 6), *([types.float64] * 3)))

#: ``status = getter(field, basis, vertices, point, direction, params, rng_state, scratch,
#: cell)``. ``direction`` is read and overwritten; all zeros asks for the seed's initial
#: direction. ``cell`` is :func:`trilinear_cell` of ``point`` on the grid (computed once
#: per step by the driver and shared with the stopping check).
GETTER_SIGNATURE = types.int64(
    types.float64[:, :, :, ::1],  # field (i, j, k, channel)
    types.float32[:, ::1],  # basis (coefficients, hemisphere vertices) or empty
    types.float64[:, ::1],  # hemisphere vertices (voxel frame) or empty
    types.float64[::1],  # point (voxel indices)
    types.float64[::1],  # direction (in/out)
    types.float64[::1],  # getter params: cos(max_angle), pmf_threshold, min_total_weight
    types.uint64[::1],  # rng state
    types.float32[::1],  # scratch
    _CELL,  # trilinear_cell(grid shape, point)
)
#: ``status = stopper(stop_map, point, params, cell)`` (``cell`` as for the getter).
STOPPER_SIGNATURE = types.int64(
    types.float64[:, :, ::1], types.float64[::1], types.float64[::1], _CELL
)


@njit(
    _CELL(types.UniTuple(types.int64, 3), types.float64[::1]),
    nogil=True,
    cache=True,
)
def trilinear_cell(shape, point):
    """The interpolation cell of ``point``: low and high corner indices and fractions.

    ``inside`` is False beyond half a voxel from the first or last voxel centre; corners past
    the edge are clamped to it, as dipy does. Corner ``(a, b, c)`` (0 = low, 1 = high) has
    weight ``(fi if a else 1 - fi) * (fj if b else 1 - fj) * (fk if c else 1 - fk)``.
    """
    for axis in range(3):
        if not (point[axis] >= -0.5 and point[axis] < shape[axis] - 0.5):
            return False, 0, 0, 0, 0, 0, 0, 0.0, 0.0, 0.0
    fi = math.floor(point[0])
    fj = math.floor(point[1])
    fk = math.floor(point[2])
    return (
        True,
        max(int(fi), 0),
        max(int(fj), 0),
        max(int(fk), 0),
        min(int(fi) + 1, shape[0] - 1),
        min(int(fj) + 1, shape[1] - 1),
        min(int(fk) + 1, shape[2] - 1),
        point[0] - fi,
        point[1] - fj,
        point[2] - fk,
    )


@intrinsic
def _borrowed(typingctx, array):
    """A view of ``array`` that holds no reference to its memory (a NULL meminfo, no
    parent), for the step loop: the plug-ins inlined there pass their array arguments
    around, and every such copy of a counted array costs an atomic increment and
    decrement of the shared count (a fifth of a peak-following step, and a cache line
    bounced between the threads tracking the same field). The caller keeps ``array``
    alive for as long as the view is used."""
    if not isinstance(array, types.Array):
        return None

    def codegen(context, builder, signature, args):
        source = context.make_array(array)(context, builder, args[0])
        view = context.make_array(array)(context, builder)
        for name in ("nitems", "itemsize", "data", "shape", "strides"):
            setattr(view, name, getattr(source, name))
        view.meminfo = cgutils.get_null_value(view.meminfo.type)
        view.parent = cgutils.get_null_value(view.parent.type)
        return view._getvalue()

    return array(array), codegen


@njit(nogil=True, cache=True)
def _keep_alive(*arrays):
    """Nothing: a use of ``arrays`` that keeps them alive until here (numba frees a
    variable after its last use, and a borrowed view is not a use)."""
    return len(arrays)


@njit(nogil=True, cache=True)
def _grow(buffer: np.ndarray, needed: int) -> np.ndarray:
    """A copy of ``buffer`` with room for at least ``needed`` rows."""
    bigger = np.empty((max(needed, 2 * buffer.shape[0]), 3), buffer.dtype)
    bigger[: buffer.shape[0]] = buffer
    return bigger


@njit(nogil=True, cache=True, inline="always")
def _store_point(out, row, affine, x, y, z):
    """Write voxel position ``(x, y, z)`` mapped by ``affine`` (3 x 4) into ``out[row]``."""
    for axis in range(3):
        out[row, axis] = (
            affine[axis, 0] * x + affine[axis, 1] * y + affine[axis, 2] * z + affine[axis, 3]
        )


_STABLE_PREFIX = "mriflow-plugin:"


def _jitted_callees(plugin: Any) -> list[Any]:
    """The jitted functions ``plugin`` calls by global name."""
    function = plugin.py_func
    found = (function.__globals__.get(name) for name in function.__code__.co_names)
    return [value for value in found if isinstance(value, Dispatcher)]


def stable_plugin(plugin: Any) -> Any:
    """Give a module-level jitted plug-in (and the jitted functions it calls) a stable
    identity across processes, so drivers specialised on it are cached on disk; returns
    ``plugin``. Use as a decorator above ``@njit``.

    numba keys a closure's cache entry on its captured values, pickled with the code of
    each captured function and of the functions that one calls (so an edited getter gets
    a new entry), and with each dispatcher's id, random per process unless set here.
    """
    if getattr(plugin, "_MemoMixin__uuid", None) is None and hasattr(plugin, "_set_uuid"):
        # numba internals: without them the drivers still work, compiled once per process.
        function = plugin.py_func
        plugin._set_uuid(f"{_STABLE_PREFIX}{function.__module__}.{function.__qualname__}")
    for callee in _jitted_callees(plugin):
        if callee is not plugin:
            stable_plugin(callee)
    return plugin


def _is_stable(plugin: Any) -> bool:
    identity = str(getattr(plugin, "_MemoMixin__uuid", None))
    return identity.startswith(_STABLE_PREFIX) and all(
        _is_stable(callee) for callee in _jitted_callees(plugin) if callee is not plugin
    )


def _make_driver(getter: Any, stopper: Any) -> Callable[..., Any]:
    """Compile the driver for one (getter, stopper) pair."""

    @njit(nogil=True, cache=_is_stable(getter) and _is_stable(stopper))
    def driver(
        field_arg,
        basis_arg,
        vertices_arg,
        stop_map_arg,
        seeds,
        seed_ids,
        voxel_steps_arg,
        getter_params_arg,
        stopper_params_arg,
        max_points,
        min_points,
        rng_key,
        scratch_size,
        affine,
        positions_like,
    ):
        """Track every seed in ``seeds`` (voxel indices), both ways; the serial engine.

        ``voxel_steps`` is the step size in voxels along each axis (step mm / voxel size mm);
        ``max_points`` bounds the steps of the whole streamline (forward half first, the
        backward half gets what is left); streamlines with fewer than
        ``min_points`` points are dropped (length 0). Returns ``(points, lengths, reasons)``:
        the kept streamlines' points one after another, mapped by ``affine`` (3 x 4) and of
        the dtype of ``positions_like``, the point count of every seed's streamline (0 when
        dropped), and ``(backward, forward)`` stop reasons per seed.
        """
        # Uncounted views of the arrays the step loop hands to the plug-ins (the
        # arguments and the locals below stay alive until the end).
        field = _borrowed(field_arg)
        basis = _borrowed(basis_arg)
        vertices = _borrowed(vertices_arg)
        stop_map = _borrowed(stop_map_arg)
        voxel_steps = _borrowed(voxel_steps_arg)
        getter_params = _borrowed(getter_params_arg)
        stopper_params = _borrowed(stopper_params_arg)
        n_seeds = seeds.shape[0]
        lengths = np.zeros(n_seeds, np.int64)
        reasons = np.zeros((n_seeds, 2), np.uint8)
        # Room for every streamline at full length (bounded): pages never written are
        # never touched, so the unused room costs address space, not memory; growing and
        # a trimmed copy would touch fresh pages again.
        capacity = max(1024, min(n_seeds * (2 * max_points + 1), 1 << 22))
        out = np.empty((capacity, 3), positions_like.dtype)
        n_out = 0
        line = np.empty((2 * max_points + 1, 3))
        point_owner = np.empty(3)
        direction_owner = np.empty(3)
        rng_state_owner = np.zeros(RNG_STATE_SIZE, np.uint64)
        scratch_owner = np.empty(scratch_size, np.float32)
        point = _borrowed(point_owner)
        direction = _borrowed(direction_owner)
        rng_state = _borrowed(rng_state_owner)
        scratch = _borrowed(scratch_owner)
        first_step = np.empty(3)
        centre = max_points
        grid = (stop_map.shape[0], stop_map.shape[1], stop_map.shape[2])
        for s in range(n_seeds):
            rng_state[0] = rng_key
            rng_state[1] = np.uint64(seed_ids[s])
            rng_state[2] = 0
            for axis in range(3):
                line[centre, axis] = seeds[s, axis]
                point[axis] = seeds[s, axis]
                direction[axis] = 0.0
            # One interpolation cell per point, shared by the stopping check and the
            # getter's next call (the grids are the same; checked by the caller).
            seed_cell = trilinear_cell(grid, point)
            status = getter(
                field,
                basis,
                vertices,
                point,
                direction,
                getter_params,
                rng_state,
                scratch,
                seed_cell,
            )
            if status != GETTER_OK:
                code = REASON_INVALID if status == GETTER_INVALID else REASON_ANGLE
                reasons[s, 0] = code
                reasons[s, 1] = code
                if min_points <= 1:
                    lengths[s] = 1
                    if n_out + 1 > out.shape[0]:
                        out = _grow(out, n_out + 1)
                    _store_point(out, n_out, affine, seeds[s, 0], seeds[s, 1], seeds[s, 2])
                    n_out += 1
                continue
            for axis in range(3):
                first_step[axis] = direction[axis]
            last = centre
            first = centre
            for half in range(2):
                sign = 1 if half == 0 else -1
                for axis in range(3):
                    point[axis] = seeds[s, axis]
                    direction[axis] = first_step[axis] * sign
                cell = seed_cell
                reason = REASON_MAX_LENGTH
                taken = 0
                # Both halves share the length budget: max_points steps in all.
                budget = max_points if half == 0 else max_points - (last - centre)
                for n in range(1, budget + 1):
                    status = getter(
                        field,
                        basis,
                        vertices,
                        point,
                        direction,
                        getter_params,
                        rng_state,
                        scratch,
                        cell,
                    )
                    if status == GETTER_INVALID:
                        reason = REASON_INVALID
                        break
                    if status != GETTER_OK:
                        reason = REASON_ANGLE
                        break
                    if half == 0 and n == 1:
                        # The backward half leaves along the first forward step, reversed.
                        for axis in range(3):
                            first_step[axis] = direction[axis]
                    for axis in range(3):
                        point[axis] += direction[axis] * voxel_steps[axis]
                    cell = trilinear_cell(grid, point)
                    check = stopper(stop_map, point, stopper_params, cell)
                    if check != STOP_CONTINUE:
                        # The point that failed the check is not kept (as in dipy).
                        if check == STOP_ENDPOINT:
                            reason = REASON_ENDPOINT
                        elif check == STOP_OUTSIDE:
                            reason = REASON_OUTSIDE
                        else:
                            reason = REASON_INVALID
                        break
                    taken = n
                    index = centre + sign * n
                    for axis in range(3):
                        line[index, axis] = point[axis]
                if half == 0:
                    last = centre + taken
                    reasons[s, 1] = reason
                else:
                    first = centre - taken
                    reasons[s, 0] = reason
            count = last - first + 1
            if count < min_points:
                continue
            lengths[s] = count
            if n_out + count > out.shape[0]:
                out = _grow(out, n_out + count)
            for n in range(count):
                _store_point(
                    out,
                    n_out + n,
                    affine,
                    line[first + n, 0],
                    line[first + n, 1],
                    line[first + n, 2],
                )
            n_out += count
        # Keep the owners of the borrowed views alive to the end.
        _keep_alive(point_owner, direction_owner, rng_state_owner, scratch_owner)
        return out[:n_out], lengths, reasons

    return driver


_DRIVERS: dict[tuple[Any, Any], Callable[..., Any]] = {}
_DRIVERS_LOCK = threading.Lock()


def tracking_driver(getter: Any, stopper: Any) -> Callable[..., Any]:
    """The driver specialised for ``getter`` and ``stopper`` (built once per process)."""
    key = (getter, stopper)
    driver = _DRIVERS.get(key)
    if driver is None:
        with _DRIVERS_LOCK:
            driver = _DRIVERS.get(key)
            if driver is None:
                driver = _make_driver(getter, stopper)
                _DRIVERS[key] = driver
    return driver


def track_seed_range(
    getter: Any,
    stopper: Any,
    field: np.ndarray,
    basis: np.ndarray,
    vertices: np.ndarray,
    stop_map: np.ndarray,
    seeds: np.ndarray,
    seed_ids: np.ndarray,
    voxel_steps: np.ndarray,
    getter_params: np.ndarray,
    stopper_params: np.ndarray,
    max_points: int,
    min_points: int,
    rng_key: np.uint64,
    scratch_size: int,
    affine: np.ndarray | None = None,
    dtype: Any = np.float64,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Track every seed in ``seeds`` (voxel indices), both ways, with ``getter`` and
    ``stopper``; the serial engine (see :func:`_make_driver` for the arguments).

    Points come out mapped by ``affine`` (voxel to world, 4 x 4 or 3 x 4; default: voxel
    indices) as ``dtype`` (float32 for the RAS mm positions of a tractogram).
    """
    if tuple(field.shape[:3]) != tuple(stop_map.shape):
        # The driver indexes both with one interpolation cell per step.
        raise TrackingInputError(
            f"stop_map: grid {tuple(stop_map.shape)} differs from the field's "
            f"{tuple(field.shape[:3])}"
        )
    if affine is None:
        affine = np.eye(4)
    affine = np.ascontiguousarray(np.asarray(affine, dtype=np.float64)[:3, :4])
    return tracking_driver(getter, stopper)(
        field,
        basis,
        vertices,
        stop_map,
        seeds,
        seed_ids,
        voxel_steps,
        getter_params,
        stopper_params,
        max_points,
        min_points,
        rng_key,
        scratch_size,
        affine,
        np.empty((0, 3), dtype),
    )
