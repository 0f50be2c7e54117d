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

from mriflow.errors import StoreWriteError, TrackingInputError, TractogramStoreError
from mriflow.io.zarr._store import resolve_store
from mriflow.track.api import FieldArrays, TrackingParams, plan_tracking, track_batch
from mriflow.track.stopping import StoppingCriterion
from mriflow.track.store import (
    StreamlineStore,
    consolidate,
    create_store,
    done_batches,
    drop_batches,
    open_tractogram,
    read_header,
    remove_orphans,
    write_batch,
)

__all__ = ["batch_bounds", "seed_costs", "track_to_zarr"]

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


def _fingerprint(fields: FieldArrays, voxels: np.ndarray, ids: np.ndarray, params: dict) -> str:
    digest = hashlib.blake2b(digest_size=16)
    for array in (fields.field, fields.basis, fields.vertices, fields.stop_map, voxels, ids):
        digest.update(str(array.shape).encode())
        digest.update(np.ascontiguousarray(array).data)
    digest.update(json.dumps(params, sort_keys=True).encode())
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
    """A rich progress bar over batches, or nothing."""

    def __init__(self, enabled: bool, total: int, done: int) -> None:
        self.bar: Any = None
        if enabled:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn

            self.bar = Progress(
                "tracking", BarColumn(), MofNCompleteColumn(), TimeRemainingColumn()
            )
            self.bar.start()
            self.task = self.bar.add_task("batches", total=total, completed=done)

    def advance(self) -> None:
        if self.bar is not None:
            self.bar.advance(self.task)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.stop()


def _default_client() -> Any:
    try:
        from distributed import default_client

        return default_client()
    except (ImportError, ValueError):
        return None


def _run_local(
    submit_args: list[tuple[Any, ...]], fields: FieldArrays, on_done: Callable[[], None]
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
                    future.result()
                    on_done()
        for future in pending:
            future.result()
            on_done()


#: How many times each field set arrived in this process (by plugin name): once per
#: worker process is the promise, checked by the tests.
FIELD_ARRIVALS: dict[str, int] = {}


class FieldsPlugin(WorkerPlugin):  # type: ignore[misc]
    """A dask worker plugin carrying the fields: sent once to every worker, and to every
    worker that joins later (a replacement for one that died). Tasks name it, never carry
    it.

    A plugin rather than ``scatter(broadcast=True)``: the scheduler's active memory manager
    drops "extra" replicas of scattered data, and tasks then fetched the fields again
    (seen in the tests). Unregistering it at the end of the run frees the fields.
    """

    def __init__(self, name: str, fields: FieldArrays) -> None:
        self.name = name
        self.fields = fields

    def setup(self, worker: Any) -> None:
        FIELD_ARRIVALS[self.name] = FIELD_ARRIVALS.get(self.name, 0) + 1


def _run_batch_on_worker(plugin: str, *args: Any) -> tuple[int, int, int]:
    """:func:`_run_batch` with the fields this worker holds in plugin ``plugin``."""
    from distributed import get_worker

    holder: Any = get_worker().plugins[plugin]
    return _run_batch(holder.fields, *args)


def _run_cluster(
    client: Any,
    submit_args: list[tuple[Any, ...]],
    fields: FieldArrays,
    token: str,
    on_done: Callable[[], None],
) -> None:
    """Batches as tasks on ``client``'s cluster, fields sent once per worker, a bounded
    window of tasks in flight so the client never holds more than that many."""
    import uuid

    from distributed import as_completed

    plugin = f"mriflow-fields-{token}-{uuid.uuid4().hex[:8]}"
    client.register_plugin(FieldsPlugin(plugin, fields), name=plugin)
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
            future.result()
            future.release()
            on_done()
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
    sphere: str | int = "repulsion724",
    rng: int = 0,
    batch_size: int = 5_000,
    client: Any = None,
    resume: bool = False,
    overwrite: bool = False,
    progress: bool = True,
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
    """
    if int(batch_size) < 1:
        raise TrackingInputError(f"batch_size: must be a positive integer, got {batch_size}")
    if rng is None or int(rng) < 0:
        raise TrackingInputError(
            f"rng: track_to_zarr needs a fixed non-negative integer key (resumes and retries "
            f"must draw the same streams), got {rng}"
        )
    job = plan_tracking(
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
        sphere=sphere,
        rng=int(rng),
        n_threads=1,  # one batch per worker thread
    )
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
    fingerprint = _fingerprint(arrays, voxels, ids, described)

    location = resolve_store(store, storage_options=storage_options)
    header = read_header(location)
    exists = location.fs.exists(location.root) and bool(location.fs.ls(location.root))
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
            location.fs.rm(location.root, recursive=True)
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
    bar = _Progress(progress, len(bounds) - 1, len(done))
    try:
        client = client if client is not None else _default_client()
        if client is None:
            _run_local(todo, arrays, bar.advance)
        else:
            _run_cluster(client, todo, arrays, fingerprint[:12], bar.advance)
    finally:
        bar.close()
    consolidate(location, where=where, storage_options=storage_options, client=client)
    return open_tractogram(store, storage_options=storage_options)
