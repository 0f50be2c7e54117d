"""``track_to_zarr``: tracking on a dask.distributed cluster into a resumable zarr store.

How the work is laid out:

- seeds are cut into many contiguous batches balanced by estimated cost (a seed where the
  stopping map already says stop costs almost nothing), at least ``batch_size`` seeds'
  worth of work each; the layout depends on the seeds and ``batch_size`` only, never on the
  cluster, so a resume on a different cluster finds the same batches;
- the field arrays travel once to each worker inside a worker plugin (also sent to any
  worker that joins later, e.g. a replacement for one that died); tasks name the plugin;
- each batch is one task: :func:`mriflow.track.track_batch` on one thread, then the worker
  writes the result to the batch's own group of the store and its completion marker; only
  two counts come back to the client, which keeps a bounded window of tasks in flight;
- a final consolidation writes the TRX-shaped arrays (:mod:`mriflow.track.store`).

Results do not depend on the partitioning: every streamline's random stream is keyed by
``(rng, seed id)``, so 1 or 8 workers, batch size 1,000 or 10,000, a retried batch after a
worker died, or a resumed run all give the same bytes.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
import math
import os
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from typing import Any

import numpy as np
import xarray as xr
from distributed import WorkerPlugin

from mriflow.cluster import current_client
from mriflow.errors import StoreWriteError, TrackingInputError, TractogramStoreError
from mriflow.io.zarr._store import resolve_store
from mriflow.track.api import (
    FieldArrays,
    TrackingParams,
    _opened_from_zarr,
    plan_tracking,
    track_batch,
)
from mriflow.track.stopping import StoppingCriterion
from mriflow.track.store import (
    EarlyConsolidation,
    StreamlineStore,
    consolidate,
    create_store,
    done_batches,
    drop_batches,
    is_unstarted_store,
    open_tractogram,
    read_header,
    remove_orphans,
    reset_store,
    write_batch,
)

__all__ = ["batch_bounds", "seed_costs", "track_to_zarr"]

#: Where workers get the fields from (see :func:`track_to_zarr`).
_FIELDS_FROM = ("auto", "inputs", "copy", "plugin")
#: Relative cost of a seed where the stopping map already stops tracking.
IDLE_SEED_COST = 0.02


def seed_costs(
    stop_map: np.ndarray, check: str, params: tuple[float, ...], voxels: np.ndarray
) -> np.ndarray:
    """Estimated work per seed: 1 where tracking can start (nearest voxel of the stopping
    map passes the check), :data:`IDLE_SEED_COST` where it stops at once."""
    shape = np.asarray(stop_map.shape)
    limit = params[0] if check == "threshold" and params else 0.0
    costs = np.empty(len(voxels), np.float64)
    block = 1 << 16  # a block at a time: no seed-sized temporaries
    for start in range(0, len(voxels), block):
        nearest = np.clip(np.floor(voxels[start : start + block] + 0.5), 0, shape - 1)
        index = nearest.astype(np.int64)
        values = stop_map[index[:, 0], index[:, 1], index[:, 2]]
        costs[start : start + block] = np.where(values > limit, 1.0, IDLE_SEED_COST)
    return costs


def batch_bounds(costs: np.ndarray, batch_size: int) -> np.ndarray:
    """Seed indices ``(n_batches + 1,)`` cutting seeds into contiguous batches of about
    ``batch_size`` seeds' worth of cost each (and at most ``20 * batch_size`` seeds)."""
    n_seeds = len(costs)
    cumulative = np.cumsum(costs)
    total = float(cumulative[-1]) if n_seeds else 0.0
    n_batches = max(math.ceil(total / batch_size - 1e-9), 1)
    targets = np.arange(1, n_batches) * (total / n_batches)
    cuts = np.searchsorted(cumulative, targets, side="left") + 1
    bounds = np.unique(np.concatenate([[0], cuts, [n_seeds]])).astype(np.int64)
    # Cap the seeds per batch so batches of idle seeds stay small too.
    widest = 20 * batch_size
    split = [bounds[:1]]
    for start, stop in itertools.pairwise(bounds):
        pieces = max(math.ceil((stop - start) / widest), 1)
        split.append(np.linspace(start, stop, pieces + 1).round().astype(np.int64)[1:])
    return np.unique(np.concatenate(split))


#: Bumped when the batch files change layout, so a resume never mixes two layouts.
_BATCH_LAYOUT = 2


def _fields_digest(fields: FieldArrays) -> Any:
    """A running hash over the engine's field arrays (shape and bytes of each)."""
    digest = hashlib.blake2b(digest_size=16)
    for array in (fields.field, fields.basis, fields.vertices, fields.stop_map):
        digest.update(str(array.shape).encode())
        digest.update(np.ascontiguousarray(array).data)
    return digest


def _fingerprint(fields: Any, voxels: np.ndarray, ids: np.ndarray, params: dict) -> str:
    """Hash of everything that determines the store: ``fields`` (a :func:`_fields_digest`),
    seeds, ids and parameters."""
    digest = fields.copy()
    for array in (voxels, ids):
        digest.update(str(array.shape).encode())
        digest.update(np.ascontiguousarray(array).data)
    digest.update(json.dumps(params, sort_keys=True).encode())
    digest.update(f"batch layout {_BATCH_LAYOUT}".encode())
    return digest.hexdigest()


def _run_batch(
    fields: FieldArrays,
    location: str,
    storage_options: dict[str, Any] | None,
    index: int,
    seeds_voxel: np.ndarray,
    seed_ids: np.ndarray,
    params: TrackingParams,
) -> tuple[int, int, int]:
    """One task: track a batch and write it (group, then marker). Returns
    ``(index, n_streamlines, n_points)``."""
    result = track_batch(fields, seeds_voxel, seed_ids, params)
    target = resolve_store(location, storage_options=storage_options)
    n_points = write_batch(target, index, result)
    return index, len(result["seed_ids"]), n_points


class _Progress:
    """A rich progress bar over batches on stderr, or nothing."""

    def __init__(self, enabled: bool | None, total: int, done: int) -> None:
        import sys

        self.bar: Any = None
        if enabled is None:  # by default only where someone watches: a terminal
            enabled = sys.stderr.isatty()
        if enabled:
            from rich.console import Console
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                Progress,
                TimeElapsedColumn,
                TimeRemainingColumn,
            )

            self.bar = Progress(
                "tracking",
                BarColumn(),
                MofNCompleteColumn(),
                "batches",
                TimeElapsedColumn(),
                TimeRemainingColumn(),
                console=Console(stderr=True),
                transient=False,
            )
            self.bar.start()
            self.task = self.bar.add_task("batches", total=total, completed=done)

    def advance(self) -> None:
        if self.bar is not None:
            self.bar.advance(self.task)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.stop()


def _run_local(
    submit_args: list[tuple[Any, ...]],
    fields: FieldArrays,
    on_done: Callable[[tuple[int, int, int]], None],
) -> None:
    """Batches in this process on one thread per CPU (no cluster)."""
    threads = os.cpu_count() or 1
    with ThreadPoolExecutor(max_workers=threads) as pool:
        pending: set[Future[Any]] = set()
        for args in submit_args:
            pending.add(pool.submit(_run_batch, fields, *args))
            if len(pending) >= 2 * threads:
                finished, pending = wait(pending, return_when=FIRST_COMPLETED)
                for future in finished:
                    on_done(future.result())
        for future in pending:
            on_done(future.result())


#: How many times each field set arrived in this process (by plugin name): once per
#: worker process is the promise, checked by the tests.
FIELD_ARRIVALS: dict[str, int] = {}
#: How many times this process opened each field set from storage (by plugin name).
FIELD_OPENINGS: dict[str, int] = {}


@dataclasses.dataclass(frozen=True)
class FieldRecipe:
    """How a worker opens the fields itself: the lazy (storage-backed) fields and stopping
    criterion as the user passed them, and the options that turn them into engine arrays.
    Pickled, it holds file names and dask graphs, not voxels."""

    fields: Any
    stopping: StoppingCriterion
    options: dict[str, Any]
    digest: str

    def open(self) -> FieldArrays:
        """The engine arrays, read from storage on this process's threads and checked
        against the client's digest (so a store changed under the run cannot mix in)."""
        import dask

        affine = self.stopping.affine
        one_seed = np.asarray(affine[:3, 3], dtype=np.float64)[None]  # voxel (0, 0, 0)
        with dask.config.set(scheduler="threads"):
            job = plan_tracking(self.fields, self.stopping, one_seed, **self.options)
        if _fields_digest(job.fields).hexdigest() != self.digest:
            raise TractogramStoreError(
                "fields: the arrays a worker read from storage differ from the client's; "
                "were the fit or stopping-map files changed during the run?"
            )
        return job.fields


#: Where the client leaves a copy of the engine arrays for workers to open, inside the
#: tracking store's scratch area (removed with the batch files).
FIELDS_COPY = "batches/fields"
_FIELD_NAMES = ("field", "basis", "vertices", "stop_map")


@dataclasses.dataclass(frozen=True)
class StoredFields:
    """Engine arrays the client wrote once into the tracking store (``.npy`` files under
    :data:`FIELDS_COPY`), read whole by each worker: the path for fields held in memory.
    Plain ``.npy`` rather than zarr arrays: written and read at disk speed (zarr took ten
    times longer for these whole-array reads and writes)."""

    where: str
    storage_options: dict[str, Any] | None
    shapes: dict[str, tuple[int, ...]]

    def open(self) -> FieldArrays:
        """Read the arrays (writable, C-ordered float64)."""
        location = resolve_store(self.where, storage_options=self.storage_options)
        arrays = {}
        for name in _FIELD_NAMES:
            with location.fs.open(location.path(f"{FIELDS_COPY}/{name}.npy"), "rb") as stream:
                arrays[name] = np.ascontiguousarray(np.load(stream, allow_pickle=False))
            if arrays[name].shape != tuple(self.shapes[name]):
                raise TractogramStoreError(
                    f"{location.name}: the copy of the fields in the store has {name} of shape "
                    f"{arrays[name].shape}, not {self.shapes[name]}; was the store changed "
                    "during the run?"
                )
        return FieldArrays(**arrays)


def write_fields_copy(
    location: Any, where: str, storage_options: dict[str, Any] | None, fields: FieldArrays
) -> StoredFields:
    """Write the engine arrays once into the tracking store for the workers (each file
    under a temporary name, then renamed); returns how workers open them."""
    import uuid

    location.fs.makedirs(location.path(FIELDS_COPY), exist_ok=True)
    for name in _FIELD_NAMES:
        target = location.path(f"{FIELDS_COPY}/{name}.npy")
        values = getattr(fields, name)
        if location.local:
            staging = f"{target}.{uuid.uuid4().hex[:12]}.partial"
            with open(staging, "wb") as stream:
                np.save(stream, values, allow_pickle=False)
            os.replace(staging, target)
        else:
            with location.fs.open(target, "wb") as stream:
                np.save(stream, values, allow_pickle=False)
    shapes = {name: tuple(getattr(fields, name).shape) for name in _FIELD_NAMES}
    return StoredFields(where, storage_options, shapes)


def _field_source(
    fields_from: str,
    fields: Any,
    stopping: StoppingCriterion,
    options: dict[str, Any],
    arrays: FieldArrays,
    digest: str,
    location: Any,
    where: str,
    storage_options: dict[str, Any] | None,
) -> FieldRecipe | StoredFields | None:
    """How workers get the fields: a :class:`FieldRecipe` (they open the user's zarr
    inputs), :class:`StoredFields` (they open a copy this process writes into the tracking
    store now), or None (the arrays travel in the worker plugin through the scheduler).

    ``"auto"`` picks the inputs when the fields and the stopping map were opened from zarr
    stores (:func:`_opened_from_zarr`), else the copy.
    """
    if fields_from == "plugin":
        return None
    if fields_from == "auto":
        lazy = _opened_from_zarr(fields) and _opened_from_zarr(stopping.image)
        fields_from = "inputs" if lazy else "copy"
    if fields_from == "copy":
        return write_fields_copy(location, where, storage_options, arrays)
    recipe = FieldRecipe(fields, stopping, options, digest)
    from distributed.protocol import pickle as dask_pickle

    size = len(dask_pickle.dumps(recipe))
    engine_bytes = arrays.field.nbytes + arrays.stop_map.nbytes
    if size * 4 > engine_bytes:
        raise TrackingInputError(
            f"fields_from: 'inputs' needs fields and a stopping map read lazily from files "
            f"(mriflow.open_zarr, open_image); these would send {size} bytes per worker, "
            f"about their own size ({engine_bytes} bytes)"
        )
    return recipe


class FieldsPlugin(WorkerPlugin):  # type: ignore[misc]
    """A dask worker plugin giving tasks the fields: either carrying the arrays (sent once
    to every worker, and to every worker that joins later, e.g. a replacement for one that
    died) or carrying how to open them (:class:`FieldRecipe`, :class:`StoredFields`),
    which each worker does once, on its first task. Tasks name the plugin, never carry the
    fields.

    A plugin rather than ``scatter(broadcast=True)``: the scheduler's active memory manager
    drops "extra" replicas of scattered data, and tasks then fetched the fields again
    (seen in the tests). Unregistering it at the end of the run frees the fields.
    """

    def __init__(
        self,
        name: str,
        fields: FieldArrays | None = None,
        recipe: FieldRecipe | StoredFields | None = None,
    ) -> None:
        self.name = name
        self.fields = fields
        self.recipe = recipe

    def setup(self, worker: Any) -> None:
        import threading

        self._lock = threading.Lock()
        if self.fields is not None:
            FIELD_ARRIVALS[self.name] = FIELD_ARRIVALS.get(self.name, 0) + 1

    def arrays(self) -> FieldArrays:
        """The fields (opened from storage by the first task that needs them)."""
        if self.fields is None:
            with self._lock:
                if self.fields is None:
                    assert self.recipe is not None
                    self.fields = self.recipe.open()
                    FIELD_OPENINGS[self.name] = FIELD_OPENINGS.get(self.name, 0) + 1
        return self.fields


def _run_batch_on_worker(plugin: str, *args: Any) -> tuple[int, int, int]:
    """:func:`_run_batch` with the fields this worker holds in plugin ``plugin``."""
    from distributed import get_worker

    holder: Any = get_worker().plugins[plugin]
    return _run_batch(holder.arrays(), *args)


def _run_cluster(
    client: Any,
    submit_args: list[tuple[Any, ...]],
    fields: FieldArrays,
    recipe: FieldRecipe | StoredFields | None,
    token: str,
    on_done: Callable[[tuple[int, int, int]], None],
) -> None:
    """Batches as tasks on ``client``'s cluster, fields sent (or opened from storage) once
    per worker, a bounded window of tasks in flight so the client never holds more than
    that many."""
    import uuid

    from distributed import as_completed

    plugin = f"mriflow-fields-{token}-{uuid.uuid4().hex[:8]}"
    carrier = FieldsPlugin(plugin, recipe=recipe) if recipe else FieldsPlugin(plugin, fields)
    client.register_plugin(carrier, name=plugin)
    window = max(4 * sum(client.nthreads().values()), 8)
    queue = iter(submit_args)

    def submit(args: tuple[Any, ...]) -> Any:
        return client.submit(
            _run_batch_on_worker,
            plugin,
            *args,
            key=f"mriflow-track-{token}-{args[2]}",
            pure=False,
            retries=2,
        )

    try:
        running = as_completed(
            [submit(args) for _, args in zip(range(window), queue, strict=False)]
        )
        for future in running:
            counts = future.result()
            future.release()
            on_done(counts)
            following = next(queue, None)
            if following is not None:
                running.add(submit(following))
    finally:
        client.unregister_worker_plugin(plugin)


def track_to_zarr(
    fields: xr.Dataset | xr.DataArray,
    stopping: StoppingCriterion,
    seeds: Any,
    store: str | os.PathLike[str] | Any,
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
    rng: int = 0,
    batch_size: int = 5_000,
    client: Any = None,
    resume: bool = False,
    overwrite: bool = False,
    progress: bool | None = None,
    fields_from: str = "auto",
    storage_options: dict[str, Any] | None = None,
) -> StreamlineStore:
    """Track ``seeds`` like :func:`mriflow.track.track`, batch by batch on a dask cluster,
    into the zarr streamline store ``store``; returns it opened lazily.

    ``client``: a ``distributed.Client`` (see :func:`mriflow.cluster.get_client`); None uses
    the current default client if there is one, else threads in this process. Workers must
    reach ``store`` (a shared filesystem path or an fsspec URL with ``storage_options``).
    ``batch_size``: seeds per task (cost-balanced). ``resume=True`` continues an interrupted
    store written with the same inputs, skipping batches marked complete; ``overwrite=True``
    replaces an existing store. ``rng`` keys the per-seed random streams: the same inputs
    and ``rng`` give the same store, byte for byte, whatever the cluster or batching.

    Fields reach each worker once, never with a task (``fields_from``): ``"inputs"``, each
    worker opens the zarr stores ``fields`` and the stopping map were opened from
    (:func:`mriflow.open_zarr`; only a few kB of file names and dask graph travel);
    ``"copy"``, this process writes the engine arrays once into the tracking store
    (uncompressed, removed at the end) and each worker reads them from there; ``"plugin"``,
    the arrays travel through the scheduler inside a worker plugin. ``"auto"``: ``"inputs"``
    when both were opened from zarr (and only indexed since), else ``"copy"``. Workers
    check what they open: its hash against this process's (inputs), its shapes (copy).
    ``progress``: a progress bar over batches on stderr; None shows it only when stderr is
    a terminal.
    """
    if int(batch_size) < 1:
        raise TrackingInputError(f"batch_size: must be a positive integer, got {batch_size}")
    if fields_from not in _FIELDS_FROM:
        raise TrackingInputError(f"fields_from: must be one of {_FIELDS_FROM}, got {fields_from!r}")
    if rng is None or int(rng) < 0:
        raise TrackingInputError(
            f"rng: track_to_zarr needs a fixed non-negative integer key (resumes and retries "
            f"must draw the same streams), got {rng}"
        )

    options: dict[str, Any] = {
        "method": method,
        "direction_getter": direction_getter,
        "step_size": step_size,
        "max_angle": max_angle,
        "pmf_threshold": pmf_threshold,
        "min_total_weight": min_total_weight,
        "min_length": min_length,
        "max_length": max_length,
        "sphere": sphere,
        "rng": int(rng),
        "n_threads": 1,  # one batch per worker thread
    }
    # Fields that only read a zarr store are read here by threads (api._values), not moved
    # through a cluster.
    job = plan_tracking(fields, stopping, seeds, **options)
    arrays, voxels, ids, params = job.fields, job.seeds_voxel, job.seed_ids, job.params
    stop_map, affine = arrays.stop_map, job.affine
    described = {
        "method": method,
        "sphere": str(sphere),
        "n_seeds": len(ids),
        "batch_size": int(batch_size),
        **{
            key: (list(value) if isinstance(value, tuple) else value)
            for key, value in dataclasses.asdict(params).items()
            if key not in ("n_threads", "batch_size", "affine")
        },
    }
    described["stopping_params"] = list(params.stopping_params)
    fields_digest = _fields_digest(arrays)
    fingerprint = _fingerprint(fields_digest, voxels, ids, described)

    location = resolve_store(store, storage_options=storage_options)
    header = read_header(location)
    exists = location.fs.exists(location.root) and bool(location.fs.ls(location.root))
    if resume and header is None and exists and is_unstarted_store(location):
        exists = False  # killed while starting: start over (reset_store below)
        reset_store(location)
    if header is not None and resume:
        if header.get("fingerprint") != fingerprint:
            raise TractogramStoreError(
                f"{location.name}: the store was started with other inputs or parameters "
                "(fingerprint differs); resume with exactly the same fields, seeds and "
                "options, or start over with overwrite=True"
            )
    elif exists and not overwrite:
        raise StoreWriteError(
            f"{location.name}: already exists; pass resume=True to continue it or "
            "overwrite=True to replace it"
        )
    if header is None or not resume:
        costs = seed_costs(stop_map, params.stopping_check, params.stopping_params, voxels)
        bounds = batch_bounds(costs, int(batch_size))
        if exists:
            reset_store(location)
        create_store(
            location,
            affine=affine,
            dimensions=tuple(int(n) for n in stop_map.shape),  # type: ignore[arg-type]
            parameters=described,
            fingerprint=fingerprint,
            batch_bounds=bounds,
        )
        header = read_header(location)
    assert header is not None
    if header["status"] == "complete":
        drop_batches(location)  # a crash may have come between marking and cleaning
        return open_tractogram(store, storage_options=storage_options)

    remove_orphans(location)
    import zarr

    bounds = np.asarray(zarr.open_array(location.store, path="batch_bounds", mode="r")[:])
    done = done_batches(location)
    # Workers resolve the store themselves: an absolute path (their working directory may
    # differ) or the URL.
    where = location.root if location.local else store
    if not isinstance(where, str):
        raise TrackingInputError(
            f"store: workers open the store by name; pass a path or fsspec URL, not a "
            f"{type(store).__name__}"
        )
    todo = [
        (
            where,
            storage_options,
            index,
            voxels[bounds[index] : bounds[index + 1]],
            ids[bounds[index] : bounds[index + 1]],
            params,
        )
        for index in range(len(bounds) - 1)
        if index not in done
    ]
    client = client if client is not None else current_client()
    recipe = None
    if client is not None and todo:
        recipe = _field_source(
            fields_from, fields, stopping, options, arrays, fields_digest.hexdigest(),
            location, where, storage_options,
        )  # fmt: skip
    bar = _Progress(progress, len(bounds) - 1, len(done))
    # Output chunks are written as soon as the batches they come from are all written, on
    # a thread of this process (which is otherwise idle while the cluster tracks).
    early = EarlyConsolidation(location, where, storage_options, done)

    def batch_done(counts: tuple[int, int, int]) -> None:
        early.batch_done(*counts)
        bar.advance()

    try:
        if client is None:
            _run_local(todo, arrays, batch_done)
        elif todo:
            _run_cluster(client, todo, arrays, recipe, fingerprint[:12], batch_done)
    finally:
        bar.close()
        early.finish()
    consolidate(location, where=where, storage_options=storage_options, client=client)
    return open_tractogram(store, storage_options=storage_options)
