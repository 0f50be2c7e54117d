"""``track()``: fields + stopping criterion + seeds -> Tractogram, and the pure batch engine.

:func:`track_batch` is the unit of work: plain numpy arrays in, flat arrays out, no xarray,
no globals, so the distributed runner can call it on seed batches anywhere. Its result does
not depend on how seeds are split into batches or threads: every streamline's random stream
is keyed by ``(rng, seed id)``.
"""

from __future__ import annotations

import math
import os
import warnings
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np
import xarray as xr
from numba import njit

from mriflow.errors import TrackingInputError, TrackingWarning
from mriflow.track.directions import FIELD_KINDS, direction_getter, unit_peaks
from mriflow.track.directions import direction_getter as direction_getter_function
from mriflow.track.kernels import track_seed_range, trilinear_cell
from mriflow.track.sphere import hemisphere, sh_basis_matrix, sh_order_from_count
from mriflow.track.stopping import STOPPING_CHECKS, StoppingCriterion
from mriflow.track.tractogram import Tractogram

__all__ = [
    "FieldArrays",
    "TrackingJob",
    "TrackingParams",
    "plan_tracking",
    "seed_directions",
    "spatial_order",
    "track",
    "track_batch",
]

_METHODS = ("deterministic", "probabilistic")


@dataclass(frozen=True)
class FieldArrays:
    """The numpy inputs of the engine (C-ordered; float64 but the basis, float32).

    ``field`` ``(i, j, k, channel)``: unit peak directions (``peak * 3``) or SH coefficients;
    ``basis`` ``(n_coefficients, n_hemisphere_vertices)`` float32 and ``vertices``
    ``(n_hemisphere_vertices, 3)`` (empty for peaks); ``stop_map`` ``(i, j, k)``.
    """

    field: np.ndarray
    basis: np.ndarray
    vertices: np.ndarray
    stop_map: np.ndarray


@dataclass(frozen=True)
class TrackingParams:
    """Everything but the arrays: names of the plug-ins and the numbers they use.

    Lengths in mm; ``voxel_size`` of the field's grid in mm (array axis order); ``affine``
    voxel-to-RAS of that grid; ``rng`` the key of the counter-based streams.
    """

    direction_getter: str
    stopping_check: str
    stopping_params: tuple[float, ...]
    step_size: float
    voxel_size: tuple[float, float, float]
    affine: tuple[tuple[float, ...], ...]
    max_angle: float = 30.0
    pmf_threshold: float = 0.1
    min_length: float = 10.0
    max_length: float = 250.0
    min_total_weight: float = 0.0
    rng: int = 0
    n_threads: int = 0
    batch_size: int = 256

    @property
    def max_steps(self) -> int:
        """Steps a streamline may take in all (both halves)."""
        return max(math.floor(self.max_length / self.step_size + 1e-9), 1)

    @property
    def min_points(self) -> int:
        """Fewest points a kept streamline has (``(points - 1) * step >= min_length``)."""
        return math.ceil(self.min_length / self.step_size - 1e-9) + 1


def _run_range(
    fields: FieldArrays, seeds: np.ndarray, ids: np.ndarray, params: TrackingParams
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    getter_params = np.array(
        [math.cos(math.radians(params.max_angle)), params.pmf_threshold, params.min_total_weight],
        dtype=np.float64,
    )
    return track_seed_range(
        direction_getter(params.direction_getter),
        STOPPING_CHECKS[params.stopping_check],
        fields.field,
        fields.basis,
        fields.vertices,
        fields.stop_map,
        np.ascontiguousarray(seeds, dtype=np.float64),
        np.ascontiguousarray(ids, dtype=np.int64),
        np.asarray(params.step_size / np.asarray(params.voxel_size), dtype=np.float64),
        getter_params,
        np.asarray(params.stopping_params, dtype=np.float64),
        params.max_steps,
        params.min_points,
        np.uint64(params.rng),
        fields.field.shape[3] + fields.basis.shape[1] + 8,
        affine=np.asarray(params.affine, dtype=np.float64),
        dtype=np.float32,
    )


def spatial_order(points: np.ndarray) -> np.ndarray:
    """A stable order of ``points`` (voxel indices, ``(n, 3)``) along a Morton (Z-order)
    curve over their nearest voxels, so that points close in space come close in order."""
    voxels = np.clip(np.rint(points), 0, 2**20 - 1).astype(np.int64)
    code = np.zeros(len(voxels), np.int64)
    for bit in range(20):
        for axis in range(3):
            code |= ((voxels[:, axis] >> bit) & 1) << (3 * bit + axis)
    return np.argsort(code, kind="stable")


@njit(nogil=True, cache=True)
def _empty_points(n: int) -> np.ndarray:
    """``np.empty((n, 3), float32)`` from numba's allocator: numpy advises huge pages for
    large arrays, and with the kernel's default THP defrag policy ("madvise") first
    touches then wait on memory compaction: placing 12 M points took 4x longer."""
    return np.empty((n, 3), np.float32)


@njit(nogil=True, cache=True)
def _place_streamlines(
    points: np.ndarray, lengths: np.ndarray, starts: np.ndarray, positions: np.ndarray
) -> None:
    """Copy consecutive streamlines (``lengths[n]`` points each) from ``points`` to rows
    ``starts[n]...`` of ``positions``."""
    source = 0
    for n in range(lengths.shape[0]):
        target = starts[n]
        for row in range(lengths[n]):
            for axis in range(3):
                positions[target + row, axis] = points[source + row, axis]
        source += lengths[n]


def track_batch(
    fields: FieldArrays,
    seeds_voxel: np.ndarray,
    seed_ids: np.ndarray,
    params: TrackingParams,
) -> dict[str, np.ndarray]:
    """Track seeds given in voxel indices of the field grid; a pure function.

    Seeds are put in a space-filling-curve order (:func:`spatial_order`) and cut into
    ``params.batch_size`` ranges run on ``params.n_threads`` threads (0: one per CPU) by
    the nogil kernel; results are gathered in input seed order with a count-then-fill pass.
    Returns flat arrays: ``positions`` ``(n_points, 3)`` float32 RAS mm, ``offsets``
    ``(n + 1,)`` int64, ``seed_ids`` ``(n,)`` int64, ``stop_reasons`` ``(n, 2)`` uint8,
    for the kept streamlines.
    """
    seeds_voxel = np.ascontiguousarray(seeds_voxel, dtype=np.float64).reshape(-1, 3)
    seed_ids = np.ascontiguousarray(seed_ids, dtype=np.int64).reshape(-1)
    n_seeds = len(seeds_voxel)
    # Track in a space-filling-curve order: neighbouring seeds run one after another and
    # reuse the field in cache. Every streamline depends only on its seed and seed id, so
    # the order changes no result; the output is put back in input order below.
    order = spatial_order(seeds_voxel)
    sorted_seeds = np.ascontiguousarray(seeds_voxel[order])
    sorted_ids = np.ascontiguousarray(seed_ids[order])
    size = max(int(params.batch_size), 1)
    ranges = [(start, min(start + size, n_seeds)) for start in range(0, n_seeds, size)]
    n_threads = params.n_threads or os.cpu_count() or 1

    def run(bounds: tuple[int, int]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        start, stop = bounds
        return _run_range(fields, sorted_seeds[start:stop], sorted_ids[start:stop], params)

    parallel = n_threads > 1 and len(ranges) > 1
    pool = ThreadPoolExecutor(max_workers=n_threads) if parallel else None
    try:
        parts = list(pool.map(run, ranges)) if pool else [run(bounds) for bounds in ranges]
        # count (in input order) ...
        lengths = np.zeros(n_seeds, np.int64)
        reasons = np.zeros((n_seeds, 2), np.uint8)
        if parts:
            lengths[order] = np.concatenate([p[1] for p in parts])
            reasons[order] = np.concatenate([p[2] for p in parts])
        kept = lengths > 0
        offsets = np.zeros(int(kept.sum()) + 1, np.int64)
        np.cumsum(lengths[kept], out=offsets[1:])
        starts = np.cumsum(lengths) - lengths  # where each seed's points go
        # ... then fill (the kernel already wrote float32 RAS mm) on the same threads: the
        # copy is cheap, the first touch of the fresh output pages is not.
        positions = _empty_points(int(offsets[-1]))

        def place(n: int) -> None:
            start, stop = ranges[n]
            points, range_lengths, _ = parts[n]
            _place_streamlines(points, range_lengths, starts[order[start:stop]], positions)
            parts[n] = None  # type: ignore[call-overload]

        if pool:
            list(pool.map(place, range(len(ranges))))
        else:
            for n in range(len(ranges)):
                place(n)
    finally:
        if pool:
            pool.shutdown()
    return {
        "positions": positions,
        "offsets": offsets,
        "seed_ids": seed_ids[kept],
        "stop_reasons": np.ascontiguousarray(reasons[kept]),
    }


# --- the user-facing function ------------------------------------------------------------


def _pick_field(fields: Any, method: str, getter_name: str | None) -> tuple[xr.DataArray, str]:
    """The field DataArray and the getter name for ``method``."""
    if method not in _METHODS:
        raise TrackingInputError(f"method: must be one of {_METHODS}, got {method!r}")
    if isinstance(fields, xr.Dataset):
        wanted = ["shm_coeff"] if method == "probabilistic" else ["peak_dirs", "shm_coeff"]
        if getter_name is not None:
            wanted = ["peak_dirs" if FIELD_KINDS.get(getter_name) == "peaks" else "shm_coeff"]
        for name in wanted:
            if name in fields:
                field = fields[name]
                field.attrs = {**fields.attrs, **field.attrs}
                break
        else:
            raise TrackingInputError(
                f"fields: {method} tracking needs {' or '.join(wanted)} in the Dataset; it "
                f"holds {sorted(str(name) for name in fields.data_vars)}"
            )
    elif isinstance(fields, xr.DataArray):
        field = fields
    else:
        raise TrackingInputError(
            "fields: must be a fit result (xarray Dataset with peak_dirs or shm_coeff) or one "
            f"of those DataArrays, got {type(fields).__name__}"
        )
    if "sh" in field.dims:
        kind = "sh"
    elif "peak" in field.dims and "xyz" in field.dims:
        kind = "peaks"
    else:
        raise TrackingInputError(
            f"fields: {field.name or 'field'} has dims {field.dims}; expected peaks "
            "(i, j, k, peak, xyz) or SH coefficients (i, j, k, sh)"
        )
    if getter_name is None:
        if method == "probabilistic":
            if kind != "sh":
                raise TrackingInputError(
                    "fields: probabilistic tracking samples the ODF and needs SH "
                    "coefficients (shm_coeff), not peaks"
                )
            getter_name = "probabilistic"
        else:
            getter_name = "peak_following" if kind == "peaks" else "max_odf"
    direction_getter(getter_name)
    if FIELD_KINDS[getter_name] != kind:
        raise TrackingInputError(
            f"direction_getter: {getter_name!r} reads {FIELD_KINDS[getter_name]} fields, got {kind}"
        )
    return field, getter_name


#: Dask layers that only read a zarr store and index, reorder or convert what it holds:
#: recomputing them on a worker costs a read, never a fit.
_READING_LAYERS = frozenset(
    {"original-from-zarr", "from-zarr", "transpose", "getitem", "astype", "rechunk-merge",
     "rechunk-split", "apply"}  # "apply": open_zarr's scl_slope/scl_inter scaling
)  # fmt: skip


def _opened_from_zarr(value: Any) -> bool:
    """Whether every array of ``value`` (DataArray or Dataset) is a dask array that reads a
    zarr store (e.g. :func:`mriflow.open_zarr`) and does nothing heavier."""
    import dask.array as da

    variables = list(value.data_vars.values()) if isinstance(value, xr.Dataset) else [value]
    for variable in variables:
        if not isinstance(variable.data, da.Array):
            return False
        kinds = {str(name).rsplit("-", 1)[0] for name in variable.data.dask.layers}
        if "from-zarr" not in kinds or not kinds <= _READING_LAYERS:
            return False
    return bool(variables)


def _values(array: xr.DataArray, dtype: Any) -> np.ndarray:
    """``array``'s values as a C-contiguous ``dtype`` array. When its graph only reads a
    zarr store, the blocks are written straight into the result on local threads (0.4-0.6 s
    for the benchmark's 235 MB SH field against 1.1-1.5 s for ``.values``, which joins the
    blocks and then copies them again)."""
    if _opened_from_zarr(array):
        import dask.array as da

        out = np.empty(array.shape, dtype)
        da.store(array.data, out, lock=False, scheduler="threads")
        return out
    return np.ascontiguousarray(np.asarray(array.values), dtype=dtype)


def _field_arrays(
    field: xr.DataArray, stop_map: np.ndarray, kind: str, sphere_name: str | int
) -> FieldArrays:
    spatial = field.mri.spatial_dims
    if len(spatial) != 3:
        raise TrackingInputError(f"fields: need the three spatial dims i, j, k; got {field.dims}")
    if kind == "peaks":
        ordered = field.transpose(*spatial, "peak", "xyz")
        values = _values(ordered, np.float64)
        if values.shape[-1] != 3:
            raise TrackingInputError(
                f"peak_dirs: the xyz dim must have 3 entries, got {values.shape[-1]}"
            )
        data = unit_peaks(np.ascontiguousarray(values.reshape(*values.shape[:3], -1)))
        return FieldArrays(data, np.zeros((0, 0), np.float32), np.zeros((0, 3)), stop_map)
    ordered = field.transpose(*spatial, "sh")
    n_coef = ordered.sizes["sh"]
    order = sh_order_from_count(n_coef, str(field.name or "shm_coeff"))
    declared = field.attrs.get("sh_order", field.attrs.get("sh_order_max"))
    if declared is not None and int(declared) != order:
        raise TrackingInputError(
            f"shm_coeff: attrs say SH order {declared} but {n_coef} coefficients mean order {order}"
        )
    vertices = np.array(hemisphere(_sphere_count(sphere_name)), dtype=np.float64, order="C")
    basis = sh_basis_matrix(
        vertices,
        order,
        str(field.attrs.get("sh_basis", "descoteaux07")),
        bool(field.attrs.get("sh_legacy", True)),
    )
    data = _values(ordered, np.float64)
    basis = np.ascontiguousarray(basis.T, dtype=np.float32)
    return FieldArrays(data, basis, vertices, stop_map)


def _sphere_count(sphere_name: str | int) -> int:
    from mriflow.track.sphere import _vertex_count

    return _vertex_count(sphere_name)


def _check_grids(field: xr.DataArray, stopping: StoppingCriterion) -> np.ndarray:
    spatial = field.mri.spatial_dims
    field_shape = tuple(field.sizes[d] for d in spatial)
    stop_image = stopping.image.transpose(*[d for d in spatial if d in stopping.image.dims])
    if tuple(stop_image.sizes[d] for d in spatial) != field_shape:
        raise TrackingInputError(
            f"stopping: the stopping map's grid {stopping.shape} differs from the field's "
            f"{field_shape}; resample one onto the other first"
        )
    if not np.allclose(stop_image.mri.affine, field.mri.affine, rtol=0, atol=1e-4):
        raise TrackingInputError(
            "stopping: the stopping map's affine differs from the field's "
            f"(max difference {np.abs(stop_image.mri.affine - field.mri.affine).max():.3g} "
            "mm); both must be on the same grid"
        )
    return _values(stop_image, np.float64)


def _check_numbers(
    step_size: float,
    voxel_size: np.ndarray,
    max_angle: float,
    pmf_threshold: float,
    min_length: float,
    max_length: float,
    min_total_weight: float = 0.0,
) -> None:
    if not (math.isfinite(step_size) and step_size > 0):
        raise TrackingInputError(f"step_size: must be a positive number of mm, got {step_size}")
    if step_size > voxel_size.min():
        warnings.warn(
            f"step_size: {step_size} mm is larger than the smallest voxel size "
            f"({voxel_size.min():.3g} mm); streamlines may skip over voxels",
            TrackingWarning,
            stacklevel=4,
        )
    if not (0 < max_angle <= 90):
        raise TrackingInputError(f"max_angle: must be in (0, 90] degrees, got {max_angle}")
    if not (0 <= pmf_threshold < 1):
        raise TrackingInputError(f"pmf_threshold: must be in [0, 1), got {pmf_threshold}")
    if not (0 <= min_total_weight <= 1):
        raise TrackingInputError(
            f"min_total_weight: must be in [0, 1] (a share of the trilinear weight), got "
            f"{min_total_weight}"
        )
    if not (0 <= min_length < max_length and math.isfinite(max_length)):
        raise TrackingInputError(
            f"min_length/max_length: need 0 <= min_length < max_length (finite), got "
            f"{min_length}, {max_length}"
        )


def _seed_voxels(
    seeds: Any, affine: np.ndarray, shape: Sequence[int], seed_ids: Any
) -> tuple[np.ndarray, np.ndarray]:
    world = np.asarray(seeds, dtype=np.float64)
    if world.ndim != 2 or world.shape[1] != 3 or len(world) == 0:
        raise TrackingInputError(
            f"seeds: need world positions of shape (n, 3) with n >= 1, got {world.shape}"
        )
    if not np.isfinite(world).all():
        raise TrackingInputError("seeds: positions contain NaN or infinity")
    if seed_ids is None:
        ids = np.arange(len(world), dtype=np.int64)
    else:
        ids = np.asarray(seed_ids, dtype=np.int64).reshape(-1)
        if ids.shape != (len(world),) or (ids < 0).any():
            raise TrackingInputError(
                f"seed_ids: need one non-negative id per seed ({len(world)}), got {ids.shape}"
            )
    inverse = np.linalg.inv(affine)
    voxels = world @ inverse[:3, :3].T + inverse[:3, 3]
    inside = ((voxels >= -0.5) & (voxels < np.asarray(shape, dtype=np.float64) - 0.5)).all(1)
    if not inside.any():
        raise TrackingInputError(
            f"seeds: all {len(world)} seeds are outside the image grid {tuple(shape)}; are they "
            "world (RAS mm) positions in the same space as the fields?"
        )
    if not inside.all():
        warnings.warn(
            f"seeds: dropped {int((~inside).sum())} of {len(world)} seeds outside the image",
            TrackingWarning,
            stacklevel=4,
        )
    return voxels[inside], ids[inside]


@dataclass(frozen=True)
class TrackingJob:
    """Checked, engine-ready inputs: what :func:`track` runs, and what a distributed
    runner splits into seed batches (``seeds_voxel[a:b]``, ``seed_ids[a:b]``) for
    :func:`track_batch`. Picklable; the arrays are plain numpy."""

    fields: FieldArrays
    seeds_voxel: np.ndarray
    seed_ids: np.ndarray
    params: TrackingParams
    dimensions: tuple[int, int, int]

    @property
    def affine(self) -> np.ndarray:
        """Voxel-to-RAS affine of the tracking grid."""
        return np.asarray(self.params.affine, dtype=np.float64)

    def tractogram(self, out: dict[str, np.ndarray]) -> Tractogram:
        """Wrap :func:`track_batch` output (or batches concatenated in seed order)."""
        return Tractogram(
            out["positions"],
            out["offsets"],
            out["seed_ids"],
            out["stop_reasons"],
            self.affine,
            self.dimensions,
        )

    def run(self) -> Tractogram:
        """Track every seed in this process."""
        return self.tractogram(
            track_batch(self.fields, self.seeds_voxel, self.seed_ids, self.params)
        )


def plan_tracking(
    fields: xr.Dataset | xr.DataArray,
    stopping: StoppingCriterion,
    seeds: Any,
    *,
    method: str = "deterministic",
    direction_getter: str | None = None,
    step_size: float = 0.5,
    max_angle: float = 30.0,
    pmf_threshold: float = 0.1,
    min_length: float = 10.0,
    max_length: float = 250.0,
    min_total_weight: float = 0.0,
    sphere: str | int = "repulsion724",
    rng: int | None = 0,
    seed_ids: Any = None,
    n_threads: int | None = None,
    batch_size: int = 256,
) -> TrackingJob:
    """Check and convert the inputs of :func:`track` (same arguments) without tracking."""
    field, getter_name = _pick_field(fields, method, direction_getter)
    if not isinstance(stopping, StoppingCriterion):
        raise TrackingInputError(
            "stopping: use mriflow.track.ThresholdStopping(...) or BinaryStopping(...), got "
            f"{type(stopping).__name__}"
        )
    stop_map = _check_grids(field, stopping)
    affine = field.mri.affine
    voxel_size = np.sqrt((affine[:3, :3] ** 2).sum(axis=0))
    _check_numbers(
        step_size, voxel_size, max_angle, pmf_threshold, min_length, max_length, min_total_weight
    )
    if rng is None:
        rng = int(np.random.default_rng().integers(0, 2**63 - 1))
    if int(rng) < 0:
        raise TrackingInputError(f"rng: must be a non-negative integer, got {rng}")
    shape = stop_map.shape
    arrays = _field_arrays(field, stop_map, FIELD_KINDS[getter_name], sphere)
    voxels, ids = _seed_voxels(seeds, affine, shape, seed_ids)
    params = TrackingParams(
        direction_getter=getter_name,
        stopping_check=stopping.check,
        stopping_params=tuple(float(p) for p in stopping.params),
        step_size=float(step_size),
        voxel_size=tuple(float(v) for v in voxel_size),  # type: ignore[arg-type]
        affine=tuple(tuple(float(v) for v in row) for row in affine),
        max_angle=float(max_angle),
        pmf_threshold=float(pmf_threshold),
        min_total_weight=float(min_total_weight),
        min_length=float(min_length),
        max_length=float(max_length),
        rng=int(rng),
        n_threads=int(n_threads or 0),
        batch_size=int(batch_size),
    )
    return TrackingJob(arrays, voxels, ids, params, tuple(int(n) for n in shape))  # type: ignore[arg-type]


def track(
    fields: xr.Dataset | xr.DataArray,
    stopping: StoppingCriterion,
    seeds: Any,
    *,
    method: str = "deterministic",
    direction_getter: str | None = None,
    step_size: float = 0.5,
    max_angle: float = 30.0,
    pmf_threshold: float = 0.1,
    min_length: float = 10.0,
    max_length: float = 250.0,
    min_total_weight: float = 0.0,
    sphere: str | int = "repulsion724",
    rng: int | None = 0,
    seed_ids: Any = None,
    n_threads: int | None = None,
    batch_size: int = 256,
) -> Tractogram:
    """Track streamlines from ``seeds`` (world RAS mm, ``(n, 3)``) through ``fields``.

    ``fields``: a fit result Dataset holding ``peak_dirs`` (deterministic peak following)
    or ``shm_coeff`` (deterministic ODF maximum, or probabilistic), or that DataArray.
    ``method`` picks the getter unless ``direction_getter`` names a registered one.
    ``stopping``: :func:`ThresholdStopping` or :func:`BinaryStopping` on the fields' grid.
    Each seed grows both ways in ``step_size`` mm steps, turning at most ``max_angle``
    degrees per step; streamlines shorter than ``min_length`` mm are dropped, longer ones
    cut at ``max_length`` mm. ``min_total_weight`` (peak following only): a step also
    needs corners carrying at least this share of the trilinear weight to hold a peak
    within ``max_angle``; 0.5 is dipy's EuDX (``eudx_tracking``), 0 (default) follows
    as long as any corner does, like dipy's ``deterministic_tracking`` on peaks.
    ``rng``: key of the per-seed random streams (same key, same
    tractogram, whatever the threads). ``seed_ids``: global ids (default ``0..n-1``).
    """
    return plan_tracking(
        fields,
        stopping,
        seeds,
        method=method,
        direction_getter=direction_getter,
        step_size=step_size,
        max_angle=max_angle,
        pmf_threshold=pmf_threshold,
        min_length=min_length,
        max_length=max_length,
        min_total_weight=min_total_weight,
        sphere=sphere,
        rng=rng,
        seed_ids=seed_ids,
        n_threads=n_threads,
        batch_size=batch_size,
    ).run()


def seed_directions(
    fields: xr.Dataset | xr.DataArray,
    seeds: Any,
    *,
    method: str = "deterministic",
    direction_getter: str | None = None,
    sphere: str | int = "repulsion724",
) -> np.ndarray:
    """The direction each seed's streamline starts along: the strongest fibre there.

    Unit vectors ``(n, 3)`` in the voxel frame (mm), NaN where the getter finds none or the
    seed is outside the grid. The same rule :func:`track` uses, exposed so other trackers
    can be started identically.
    """
    field, getter_name = _pick_field(fields, method, direction_getter)
    affine = field.mri.affine
    shape = tuple(field.sizes[d] for d in field.mri.spatial_dims)
    dummy = np.zeros((1, 1, 1))
    arrays = _field_arrays(field, dummy, FIELD_KINDS[getter_name], sphere)
    world = np.asarray(seeds, dtype=np.float64).reshape(-1, 3)
    inverse = np.linalg.inv(affine)
    voxels = world @ inverse[:3, :3].T + inverse[:3, 3]
    getter = direction_getter_function(getter_name)
    params = np.array([1.0, 0.0, 0.0])
    state = np.zeros(3, np.uint64)
    scratch = np.empty(arrays.field.shape[3] + arrays.basis.shape[1] + 8, np.float32)
    out = np.full((len(world), 3), np.nan)
    direction = np.zeros(3)
    for n, point in enumerate(voxels):
        if not ((point >= -0.5) & (point < np.asarray(shape) - 0.5)).all():
            continue
        direction[:] = 0.0
        point = np.ascontiguousarray(point)
        status = getter(
            arrays.field,
            arrays.basis,
            arrays.vertices,
            point,
            direction,
            params,
            state,
            scratch,
            trilinear_cell(shape, point),
        )
        if status == 0:
            out[n] = direction
    return out
