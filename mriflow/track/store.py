"""The zarr streamline store: a TRX-shaped tractogram written batch by batch, resumably.

Layout (zarr format 3, local path or fsspec URL)::

    tracts.zarr/
      zarr.json                 attrs["mriflow_tractogram"]: the header (below)
      positions                 (NB_VERTICES, 3) float32, RAS+ mm      } written by the
      offsets                   (NB_STREAMLINES + 1,) uint64 (as TRX)   } final consolidation,
      dps/seed_id               (NB_STREAMLINES,) int64                 } ordered by seed id
      dps/stop_reason           (NB_STREAMLINES, 2) uint8 (backward, forward end)
      dps/length                (NB_STREAMLINES,) float32, arc length in mm
      dpv/                      per-point data (empty: none yet)
      batch_bounds              (n_batches + 1,) int64: seed index where each batch starts
      batches/00000012.batch    while tracking: batch 12 as one raw little-endian file, its
                                arrays one after the other (positions, offsets starting at
                                0, seed_id, stop_reason, length), like TRX's members
      batches/.mriflow-progress/0/12.done   completion marker of batch 12, written last;
                                it holds the batch's counts as JSON
      batches/.mriflow-progress/chunks/positions/3.done   chunk 3 of ``positions`` is
                                written (markers of the output chunks, see below)
      batches/fields/*.npy      while tracking, when the fields were in the client's memory:
                                the copy workers read them from (mriflow.track.distributed)

The header holds ``VOXEL_TO_RASMM``, ``DIMENSIONS``, ``NB_STREAMLINES``, ``NB_VERTICES``
(as TRX's header.json), ``parameters`` (everything that determines the streamlines),
``fingerprint`` (a hash of the inputs, so a resume cannot mix two runs), ``n_batches``,
``status`` (``"tracking"`` then ``"complete"``) and the mriflow version.

Resumable writes follow DESIGN.md: no array ever grows. Each batch is one file, written
under a temporary name and renamed, and its completion marker is written after it; a resume
trusts markers only and first removes the ``*.partial`` files a killed writer leaves. The
header is written last when a store is started, so a store without one was killed while
starting and is started over. Consolidation copies the batch files into the final arrays,
one output chunk at a time (reading only the byte ranges it needs), each chunk followed by
its marker: while tracking goes on, every whole chunk whose rows come from batches
``0..k`` only is written as soon as those batches are all written
(:class:`EarlyConsolidation`, on a thread of the client); at the end, the chunks without a
marker (on the cluster when there is one), then ``status = "complete"``, then the batch
files and markers are removed. A chunk is trusted only by its marker. A crash at any point
leaves a store that ``resume=True`` finishes, with the same bytes.
"""

from __future__ import annotations

import json
import os
import uuid
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from mriflow._version import __version__
from mriflow.errors import (
    IncompleteStoreError,
    MissingFileError,
    StoreFormatError,
)
from mriflow.io.zarr._store import PROGRESS_DIR, StoreLocation, resolve_store
from mriflow.track.tractogram import Tractogram, output_paths

__all__ = [
    "HEADER_KEY",
    "StreamlineStore",
    "batch_counts",
    "batch_file",
    "consolidate",
    "EarlyConsolidation",
    "create_store",
    "done_batches",
    "done_chunks",
    "is_unstarted_store",
    "read_batch_rows",
    "reset_store",
    "open_tractogram",
    "write_batch",
]

#: Root attribute holding the header.
HEADER_KEY = "mriflow_tractogram"
#: Points per chunk of the consolidated ``positions`` (3 MiB), streamlines per chunk of
#: the per-streamline arrays.
POINT_CHUNK = 1 << 18
STREAMLINE_CHUNK = 1 << 18
_BATCHES = "batches"
_BATCH_SUFFIX = ".batch"
_MARKERS = f"{_BATCHES}/{PROGRESS_DIR}/0"
#: Every name a store holds at its top level.
_OWN_NAMES = frozenset(
    {"zarr.json", "positions", "offsets", "dps", "dpv", "batch_bounds", _BATCHES}
)
_PER_STREAMLINE = {
    "seed_id": ((), np.int64),
    "stop_reason": ((2,), np.uint8),
    "length": ((), np.float32),
}


def batch_file(index: int) -> str:
    """Path of batch ``index``'s file inside the store."""
    return f"{_BATCHES}/{index:08d}{_BATCH_SUFFIX}"


def _open_root(location: StoreLocation, mode: str = "r+") -> Any:
    import zarr

    return zarr.open_group(location.store, mode=mode, zarr_format=3)  # type: ignore[arg-type]


def read_header(location: StoreLocation) -> dict[str, Any] | None:
    """The store's header, or None when ``location`` holds no mriflow tractogram."""
    import zarr

    try:
        root = zarr.open_group(location.store, mode="r")
    except (FileNotFoundError, zarr.errors.GroupNotFoundError, zarr.errors.NodeTypeValidationError):
        return None
    header = root.attrs.get(HEADER_KEY)
    return dict(header) if isinstance(header, dict) else None


def is_unstarted_store(location: StoreLocation) -> bool:
    """Whether ``location`` holds only what a store killed while starting (or while being
    replaced) leaves: no header, nothing but this module's own names. Such a store can be
    started over; anything else is the user's and is never removed."""
    if read_header(location) is not None:
        return False
    try:
        names = location.fs.ls(location.root, detail=False)
    except (FileNotFoundError, NotADirectoryError):
        return False
    for name in names:
        base = name.rstrip("/").rsplit("/", 1)[-1]
        if base not in _OWN_NAMES and not base.endswith(".partial"):
            return False
    return True


def reset_store(location: StoreLocation) -> None:
    """Remove a store: its root ``zarr.json`` (the header) first, so that a kill part way
    leaves a store without header (:func:`is_unstarted_store`), never a header whose arrays
    are gone."""
    header = location.path("zarr.json")
    if location.fs.exists(header):
        location.fs.rm_file(header)
    if location.fs.exists(location.root):
        location.fs.rm(location.root, recursive=True)


def create_store(
    location: StoreLocation,
    *,
    affine: np.ndarray,
    dimensions: tuple[int, int, int],
    parameters: dict[str, Any],
    fingerprint: str,
    batch_bounds: np.ndarray,
) -> None:
    """Start a new store: the batch layout, then the header (status ``tracking``) last."""
    root = _open_root(location, mode="w")
    bounds = root.create_array(
        "batch_bounds", shape=batch_bounds.shape, dtype=np.int64, chunks=batch_bounds.shape
    )
    bounds[:] = batch_bounds
    root.require_group(_BATCHES)
    root.attrs[HEADER_KEY] = {
        "VOXEL_TO_RASMM": [[float(v) for v in row] for row in np.asarray(affine)],
        "DIMENSIONS": [int(d) for d in dimensions],
        "NB_STREAMLINES": None,
        "NB_VERTICES": None,
        "n_batches": len(batch_bounds) - 1,
        "parameters": parameters,
        "fingerprint": fingerprint,
        "status": "tracking",
        "mriflow_version": __version__,
    }


def done_batches(location: StoreLocation) -> set[int]:
    """Batches whose completion marker exists (the only thing a resume trusts)."""
    return location.done_regions(_BATCHES, 0)


def streamline_lengths(positions: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """Arc length in mm of each streamline of ``positions`` split at ``offsets`` (n + 1)."""
    if len(offsets) <= 1:
        return np.zeros(0, np.float32)
    steps = np.linalg.norm(np.diff(positions.astype(np.float64), axis=0), axis=1)
    cumulative = np.concatenate([[0.0], np.cumsum(steps)])
    starts, ends = offsets[:-1], offsets[1:] - 1
    return np.where(ends > starts, cumulative[ends] - cumulative[starts], 0.0).astype(np.float32)


def _sections(
    n_points: int, n_streamlines: int
) -> dict[str, tuple[int, np.dtype[Any], tuple[int, ...]]]:
    """Where each array of a batch file starts (bytes), its dtype and its row shape."""
    rows: dict[str, tuple[int, np.dtype[Any], tuple[int, ...]]] = {
        "positions": (n_points, np.dtype("<f4"), (3,)),
        "offsets": (n_streamlines + 1, np.dtype("<i8"), ()),
        "seed_id": (n_streamlines, np.dtype("<i8"), ()),
        "stop_reason": (n_streamlines, np.dtype("u1"), (2,)),
        "length": (n_streamlines, np.dtype("<f4"), ()),
    }
    layout, start = {}, 0
    for name, (count, dtype, shape) in rows.items():
        layout[name] = (start, dtype, shape)
        start += count * dtype.itemsize * int(np.prod(shape, dtype=np.int64))
    return layout


def _put(location: StoreLocation, relative: str, payload: bytes) -> None:
    """Write a whole file at once: under a unique temporary name then renamed (local), or
    as one object (fsspec stores write an object whole)."""
    target = location.path(relative)
    if location.local:
        staging = f"{target}.{uuid.uuid4().hex[:12]}.partial"
        Path(staging).parent.mkdir(parents=True, exist_ok=True)
        Path(staging).write_bytes(payload)
        os.replace(staging, target)
    else:
        location.fs.pipe_file(target, payload)


def write_batch(location: StoreLocation, index: int, result: dict[str, np.ndarray]) -> int:
    """Write one batch (the flat arrays of ``track_batch``) as one file, then its marker
    (holding the batch's counts).

    Idempotent: a retried batch (worker lost, resume) writes the same bytes again. Returns
    the number of points written.
    """
    positions = np.ascontiguousarray(result["positions"], dtype="<f4")
    offsets = np.ascontiguousarray(result["offsets"], dtype="<i8")
    arrays = (
        positions,
        offsets,
        np.ascontiguousarray(result["seed_ids"], dtype="<i8"),
        np.ascontiguousarray(result["stop_reasons"], dtype="u1"),
        streamline_lengths(positions, offsets).astype("<f4"),
    )
    _put(location, batch_file(index), b"".join(array.tobytes() for array in arrays))
    counts = {"n_streamlines": len(offsets) - 1, "n_points": len(positions)}
    _put(location, f"{_MARKERS}/{index}.done", json.dumps(counts).encode())
    return len(positions)


def batch_counts(location: StoreLocation, indices: range) -> list[dict[str, int]]:
    """Counts (``n_streamlines``, ``n_points``) of written batches, from their markers."""
    from concurrent.futures import ThreadPoolExecutor

    def read(index: int) -> dict[str, int]:
        with location.fs.open(location.path(f"{_MARKERS}/{index}.done"), "rb") as stream:
            return dict(json.loads(stream.read()))

    if location.local or len(indices) < 8:
        return [read(index) for index in indices]
    with ThreadPoolExecutor(max_workers=16) as pool:  # remote: latency-bound small reads
        return list(pool.map(read, indices))


def read_batch_rows(
    location: StoreLocation, index: int, counts: dict[str, int], name: str, low: int, high: int
) -> np.ndarray:
    """Rows ``[low, high)`` of array ``name`` of batch ``index``: one ranged read."""
    start, dtype, shape = _sections(int(counts["n_points"]), int(counts["n_streamlines"]))[name]
    row_bytes = dtype.itemsize * int(np.prod(shape, dtype=np.int64))
    with location.fs.open(location.path(batch_file(index)), "rb") as stream:
        stream.seek(start + low * row_bytes)
        payload = stream.read((high - low) * row_bytes)
    return np.frombuffer(payload, dtype=dtype).reshape(high - low, *shape)


def remove_orphans(location: StoreLocation) -> list[str]:
    """Remove the ``*.partial`` files a killed writer left anywhere in the store."""
    return location.remove_partials("")


def _copy_chunk(
    where: str,
    storage_options: dict[str, Any] | None,
    name: str,
    start: int,
    stop: int,
    sources: list[tuple[int, dict[str, int], int, int]],
    n_points: int,
) -> None:
    """Fill rows ``[start, stop)`` (one whole chunk) of final array ``name`` from
    ``sources``, the batches that overlap them as ``(index, counts, first row, first
    point)``: an aligned write, so chunks never race."""
    import zarr

    location = resolve_store(where, storage_options=storage_options)
    target = zarr.open_array(location.store, path=name, mode="r+")
    source = name.removeprefix("dps/")
    rows = "n_points" if name == "positions" else "n_streamlines"
    pieces = []
    for index, counts, first_row, first_point in sources:
        low = max(start, first_row) - first_row
        high = min(stop, first_row + int(counts[rows])) - first_row
        if high > low:
            values = read_batch_rows(location, index, counts, source, low, high)
            if name == "offsets":
                values = values.astype(np.uint64) + np.uint64(first_point)
            pieces.append(values)
    if name == "offsets" and stop == target.shape[0]:
        pieces.append(np.array([n_points], dtype=np.uint64))
    target[start:stop] = np.concatenate(pieces)


#: Rows of an output array created while tracking, before its length is known; the final
#: consolidation shrinks it to its length (only whole chunks below that were written).
_OPEN_ROWS = 1 << 50
_CHUNK_MARKERS = f"{_BATCHES}/{PROGRESS_DIR}/chunks"


def _output_arrays(n_points: int, n_streamlines: int) -> dict[str, tuple[tuple[int, ...], Any]]:
    """Shape and dtype of each final array."""
    arrays: dict[str, tuple[tuple[int, ...], Any]] = {
        "positions": ((n_points, 3), np.float32),
        "offsets": ((n_streamlines + 1,), np.uint64),
    }
    for name, (shape, dtype) in _PER_STREAMLINE.items():
        arrays[f"dps/{name}"] = ((n_streamlines, *shape), dtype)
    return arrays


def _chunk_rows(name: str) -> int:
    return POINT_CHUNK if name == "positions" else STREAMLINE_CHUNK


def _chunk_marker(name: str, chunk: int) -> str:
    return f"{_CHUNK_MARKERS}/{name.replace('/', '.')}/{chunk}.done"


def done_chunks(location: StoreLocation) -> set[tuple[str, int]]:
    """Output chunks ``(array name, chunk index)`` whose write completed (marker present)."""
    folder = location.path(_CHUNK_MARKERS)
    if not location.fs.exists(folder):
        return set()
    done = set()
    for path in location.fs.find(folder):
        parts = str(path).rstrip("/").rsplit("/", 2)
        if len(parts) == 3 and parts[2].endswith(".done"):
            done.add((parts[1].replace(".", "/"), int(parts[2].removesuffix(".done"))))
    return done


def _chunk_jobs(
    counts: list[dict[str, int]], n_rows: dict[str, int] | None, n_points: int
) -> list[tuple[str, int, int, int, list[tuple[int, dict[str, int], int, int]], int]]:
    """``(name, chunk, start, stop, sources, n_points)`` for each output chunk that
    ``counts`` (of batches 0, 1, ... in order) fill.

    ``n_rows`` None: only the whole chunks lying entirely within these batches (the store's
    first batches, while tracking goes on); else the final length of every array, and
    every chunk of it (``counts`` are then all the batches)."""
    point_starts = np.concatenate([[0], np.cumsum([int(c["n_points"]) for c in counts])])
    line_starts = np.concatenate([[0], np.cumsum([int(c["n_streamlines"]) for c in counts])])
    jobs = []
    for name in _output_arrays(0, 0):
        row_starts = point_starts if name == "positions" else line_starts
        rows = _chunk_rows(name)
        if n_rows is None:
            total = int(row_starts[-1])
            end = total - total % rows  # whole chunks only
        else:
            total = end = n_rows[name]
            rows = max(min(rows, total), 1)
        for start in range(0, end, rows):
            stop = min(start + rows, total)
            first = int(np.searchsorted(row_starts, start, side="right")) - 1
            last = int(np.searchsorted(row_starts, stop, side="left"))
            sources = [
                (index, counts[index], int(row_starts[index]), int(point_starts[index]))
                for index in range(max(first, 0), min(last, len(counts)))
            ]
            jobs.append((name, start // rows, start, stop, sources, n_points))
    return jobs


def _write_chunk(
    where: str,
    storage_options: dict[str, Any] | None,
    name: str,
    chunk: int,
    start: int,
    stop: int,
    sources: list[tuple[int, dict[str, int], int, int]],
    n_points: int,
) -> None:
    """Write one output chunk from the batch files, then its completion marker."""
    _copy_chunk(where, storage_options, name, start, stop, sources, n_points)
    location = resolve_store(where, storage_options=storage_options)
    _put(location, _chunk_marker(name, chunk), b"")


class EarlyConsolidation:
    """Writes output chunks while tracking goes on: as soon as batches ``0..k`` are all
    written, every whole output chunk whose rows come from them alone is final (the layout
    is ordered by seed id, so nothing later changes it) and is written on one background
    thread of this process, then marked; what that thread has not reached when tracking
    ends is left to :func:`consolidate`. :func:`consolidate` later writes only the chunks
    without a marker, so a kill at any point leaves a store that a resume finishes.

    The arrays are created (on the first such chunk) with an open length
    (:data:`_OPEN_ROWS`) and whole chunks of :data:`POINT_CHUNK` / :data:`STREAMLINE_CHUNK`
    rows; :func:`consolidate` shrinks them to their length, and the bytes are those of an
    all-at-the-end consolidation."""

    def __init__(
        self,
        location: StoreLocation,
        where: str,
        storage_options: dict[str, Any] | None,
        done: set[int],
    ) -> None:
        from concurrent.futures import ThreadPoolExecutor

        self.location, self.where, self.storage_options = location, where, storage_options
        self.counts: dict[int, dict[str, int]] = {}
        prefix = 0
        while prefix in done:
            prefix += 1
        if prefix:
            self.counts.update(
                zip(range(prefix), batch_counts(location, range(prefix)), strict=True)
            )
        self.prefix = prefix
        self.written = done_chunks(location)
        self.created: set[str] = set()
        self.pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="mriflow-consolidate")
        self.pending: list[Any] = []
        self._schedule()

    def batch_done(self, index: int, n_streamlines: int, n_points: int) -> None:
        """Record batch ``index`` written; write the output chunks it completes."""
        self.counts[index] = {"n_streamlines": int(n_streamlines), "n_points": int(n_points)}
        if index == self.prefix:
            self._schedule()

    def _schedule(self) -> None:
        advanced = False
        while self.prefix in self.counts:
            self.prefix += 1
            advanced = True
        if not advanced and self.pending:
            return
        counts = [self.counts[index] for index in range(self.prefix)]
        for job in _chunk_jobs(counts, None, 0):
            name, chunk = job[0], job[1]
            if (name, chunk) in self.written:
                continue
            self.written.add((name, chunk))
            self.pending.append(self.pool.submit(self._write, job))

    def _write(self, job: tuple[Any, ...]) -> None:
        name = job[0]
        if name not in self.created:
            self._require_array(name)
            self.created.add(name)
        _write_chunk(self.where, self.storage_options, *job)

    def _require_array(self, name: str) -> None:
        import zarr

        try:
            zarr.open_array(self.location.store, path=name, mode="r+")
        except Exception:  # absent, or a creation a kill cut short: (re)create it
            markers = self.location.path(_chunk_marker(name, 0).rsplit("/", 1)[0])
            if self.location.fs.exists(markers):
                self.location.fs.rm(markers, recursive=True)
            shape, dtype = _output_arrays(0, 0)[name]
            _open_root(self.location).create_array(
                name,
                shape=(_OPEN_ROWS, *shape[1:]),
                dtype=dtype,
                chunks=(_chunk_rows(name), *shape[1:]),
                overwrite=True,
            )

    def finish(self, drop_unstarted: bool = True) -> None:
        """Stop: drop the chunk writes not started (the final consolidation writes them, on
        the cluster: one client thread falls behind many workers) unless
        ``drop_unstarted=False``, wait for the rest, raise the first error."""
        if drop_unstarted:
            for future in self.pending:
                future.cancel()
        self.pool.shutdown(wait=True)
        for future in self.pending:
            if not future.cancelled():
                future.result()


def consolidate(
    location: StoreLocation,
    *,
    where: str | None = None,
    storage_options: dict[str, Any] | None = None,
    client: Any = None,
) -> dict[str, int]:
    """Write the final TRX-shaped arrays from all batch files, mark the store complete,
    then drop the batch files.

    One task per output chunk reads the byte ranges of the batch files that overlap it and
    writes that chunk (on ``client``'s cluster when given, else on threads here): memory
    stays O(chunks in flight), whatever the store's size. Chunks already written and
    marked (by :class:`EarlyConsolidation`, or a consolidation a kill interrupted) are
    kept. ``where``: the store's path or URL as workers open it.
    """
    from concurrent.futures import ThreadPoolExecutor

    import zarr
    from zarr.core.sync import sync

    header = read_header(location)
    if header is None:
        raise StoreFormatError(f"{location.name}: not a mriflow streamline store")
    n_batches = int(header["n_batches"])
    missing = sorted(set(range(n_batches)) - done_batches(location))
    if missing:
        raise IncompleteStoreError(
            f"{location.name}: {len(missing)} of {n_batches} batches are not written (first: "
            f"{missing[:5]}); continue with resume=True (mriflow track --resume)"
        )
    root = _open_root(location)
    counts = batch_counts(location, range(n_batches))
    n_points = sum(int(c["n_points"]) for c in counts)
    n_streamlines = sum(int(c["n_streamlines"]) for c in counts)
    written = done_chunks(location)
    arrays = _output_arrays(n_points, n_streamlines)
    for name, (shape, dtype) in arrays.items():
        if any(marked == name for marked, _ in written):
            # Created while tracking, with an open length and whole chunks: shrink it (no
            # chunk lies past its length, so there is nothing to delete).
            array = zarr.open_array(location.store, path=name, mode="r+")
            sync(array._async_array.resize(shape, delete_outside_chunks=False))
        else:
            rows = max(min(_chunk_rows(name), shape[0]), 1)
            root.create_array(
                name, shape=shape, dtype=dtype, chunks=(rows, *shape[1:]), overwrite=True
            )
    jobs = [
        job
        for job in _chunk_jobs(counts, {name: s[0][0] for name, s in arrays.items()}, n_points)
        if (job[0], job[1]) not in written
    ]
    root.require_group("dpv")
    where = where if where is not None else location.root
    if client is not None:
        futures = [
            client.submit(_write_chunk, where, storage_options, *job, pure=False) for job in jobs
        ]
        client.gather(futures)
    else:
        with ThreadPoolExecutor(max_workers=min(os.cpu_count() or 1, 4)) as pool:
            list(pool.map(lambda job: _write_chunk(where, storage_options, *job), jobs))
    header.update(NB_STREAMLINES=n_streamlines, NB_VERTICES=n_points, status="complete")
    root.attrs[HEADER_KEY] = header
    drop_batches(location)
    return {"n_streamlines": n_streamlines, "n_points": n_points}


def drop_batches(location: StoreLocation) -> None:
    """Remove the batch files and their markers (once the store is complete)."""
    directory = location.path(_BATCHES)
    if location.fs.exists(directory):
        location.fs.rm(directory, recursive=True)
    import zarr

    zarr.open_group(location.store, path=_BATCHES, mode="a", zarr_format=3)


# --- reading ------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class StreamlineStore:
    """A complete streamline store opened lazily.

    ``positions`` ``(n_points, 3)`` float32 RAS+ mm, ``offsets`` ``(n + 1,)`` uint64 (as
    TRX: where each streamline starts, then the total), ``seed_ids``, ``stop_reasons`` ``(n, 2)``,
    ``lengths`` (mm) are dask arrays over the zarr chunks; nothing is read until computed.
    """

    name: str
    location: StoreLocation = field(repr=False)
    header: dict[str, Any] = field(repr=False)

    def _array(self, name: str) -> Any:
        import zarr

        return zarr.open_array(self.location.store, path=name, mode="r")

    def _dask(self, name: str) -> Any:
        import dask.array as da

        return da.from_zarr(self._array(name))

    @property
    def positions(self) -> Any:
        return self._dask("positions")

    @property
    def offsets(self) -> Any:
        return self._dask("offsets")

    @property
    def seed_ids(self) -> Any:
        return self._dask("dps/seed_id")

    @property
    def stop_reasons(self) -> Any:
        return self._dask("dps/stop_reason")

    @property
    def lengths(self) -> Any:
        return self._dask("dps/length")

    @property
    def affine(self) -> np.ndarray:
        """Voxel-to-RAS+ affine of the grid the streamlines were tracked on."""
        return np.asarray(self.header["VOXEL_TO_RASMM"], dtype=np.float64)

    @property
    def dimensions(self) -> tuple[int, int, int]:
        """Shape of that grid."""
        return tuple(int(d) for d in self.header["DIMENSIONS"])  # type: ignore[return-value]

    @property
    def parameters(self) -> dict[str, Any]:
        """The tracking parameters the store was written with."""
        return dict(self.header["parameters"])

    @property
    def n_points(self) -> int:
        return int(self.header["NB_VERTICES"])

    def __len__(self) -> int:
        return int(self.header["NB_STREAMLINES"])

    def __repr__(self) -> str:
        return (
            f"<StreamlineStore {self.name}: {len(self)} streamlines, {self.n_points} points, "
            f"grid {self.dimensions}>"
        )

    def iter_chunks(self, streamlines: int = 100_000) -> Iterator[Tractogram]:
        """In-memory :class:`Tractogram` pieces of at most ``streamlines`` streamlines each,
        in order: the way to walk a store of any size in bounded memory."""
        offsets, seed_ids = self._array("offsets"), self._array("dps/seed_id")
        reasons, positions = self._array("dps/stop_reason"), self._array("positions")
        total = len(self)
        for start in range(0, total, max(int(streamlines), 1)):
            stop = min(start + int(streamlines), total)
            bounds = np.asarray(offsets[start : stop + 1]).astype(np.int64)
            yield Tractogram(
                np.asarray(positions[int(bounds[0]) : int(bounds[-1])]),
                bounds - bounds[0],
                np.asarray(seed_ids[start:stop]),
                np.asarray(reasons[start:stop]),
                self.affine,
                self.dimensions,
            )

    def to_tractogram(self) -> Tractogram:
        """The whole store in memory (small stores only)."""
        pieces = list(self.iter_chunks(max(len(self), 1)))
        if pieces:
            return pieces[0]
        return Tractogram(
            np.zeros((0, 3), np.float32),
            np.zeros(1, np.int64),
            np.zeros(0, np.int64),
            np.zeros((0, 2), np.uint8),
            self.affine,
            self.dimensions,
        )

    def export(self, path: str | os.PathLike[str], *, streamlines_per_chunk: int = 100_000) -> Path:
        """Write ``.trx``, ``.trk`` or ``.tck`` streaming: at most ``streamlines_per_chunk``
        streamlines in memory at once. Written under a temporary name, then renamed."""
        path, suffix, partial = output_paths(path)
        try:
            if suffix == ".trx":
                self._export_trx(partial, streamlines_per_chunk)
            else:
                self._export_nibabel(partial, suffix, streamlines_per_chunk)
            os.replace(partial, path)
        finally:
            partial.unlink(missing_ok=True)
        return path

    def _export_trx(self, path: Path, chunk: int) -> None:
        """TRX through the format's own layout: an uncompressed zip whose members are raw
        little-endian arrays named ``name[.columns].dtype``. trx-python builds a whole
        file in memory maps before zipping, so members are streamed here instead; the
        result is read back with trx-python in the tests."""
        header = {
            "DIMENSIONS": list(self.dimensions),
            "VOXEL_TO_RASMM": self.affine.tolist(),
            "NB_VERTICES": self.n_points,
            "NB_STREAMLINES": len(self),
        }
        members: list[tuple[str, str, np.dtype[Any]]] = [
            ("positions.3.float32", "positions", np.dtype("<f4")),
            ("offsets.uint64", "offsets", np.dtype("<u8")),
            ("dps/seed_id.int64", "dps/seed_id", np.dtype("<i8")),
            ("dps/stop_reason.2.uint8", "dps/stop_reason", np.dtype("u1")),
            ("dps/length.float32", "dps/length", np.dtype("<f4")),
        ]
        with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED) as archive:
            archive.writestr("header.json", json.dumps(header))
            for member, name, dtype in members:
                array = self._array(name)
                rows = array.chunks[0]  # one stored chunk per read
                with archive.open(member, "w", force_zip64=True) as out:
                    for start in range(0, array.shape[0], rows):
                        block = np.asarray(array[start : start + rows]).astype(dtype, copy=False)
                        out.write(np.ascontiguousarray(block).tobytes())

    def _export_nibabel(self, path: Path, suffix: str, chunk: int) -> None:
        import nibabel as nib

        def points() -> Iterator[np.ndarray]:
            for piece in self.iter_chunks(chunk):
                for n in range(len(piece)):
                    yield piece[n]

        def per_streamline(name: str) -> Iterator[np.ndarray]:
            for piece in self.iter_chunks(chunk):
                values = piece.seed_ids[:, None] if name == "seed_id" else piece.stop_reasons
                yield from values.astype(np.float32)

        data = {}
        if suffix == ".trk":
            data = {
                "seed_id": lambda: per_streamline("seed_id"),
                "stop_reason": lambda: per_streamline("stop_reason"),
            }
        lazy = nib.streamlines.LazyTractogram(
            points, data_per_streamline=data, affine_to_rasmm=np.eye(4)
        )
        if suffix == ".trk":
            from mriflow.track.tractogram import trk_header

            header = trk_header(self.affine, self.dimensions)
            nib.streamlines.TrkFile(lazy, header=header).save(str(path))
        else:
            nib.streamlines.TckFile(lazy).save(str(path))


def open_tractogram(
    store: str | os.PathLike[str] | Any, *, storage_options: dict[str, Any] | None = None
) -> StreamlineStore:
    """Open a streamline store written by :func:`mriflow.track.track_to_zarr`, lazily."""
    location = resolve_store(store, storage_options=storage_options, read_only=True)
    if location.local and not Path(location.root).exists():
        raise MissingFileError(f"{location.name}: no such streamline store")
    header = read_header(location)
    if header is None and is_unstarted_store(location):
        raise IncompleteStoreError(
            f"{location.name}: tracking was interrupted while the store was being started "
            "(no header yet); start it again with track_to_zarr(..., resume=True) or "
            "`mriflow track ... --resume`"
        )
    if header is None:
        raise StoreFormatError(
            f"{location.name}: not a mriflow streamline store (no {HEADER_KEY!r} header); "
            "write one with mriflow.track.track_to_zarr"
        )
    if header.get("status") != "complete":
        raise IncompleteStoreError(
            f"{location.name}: tracking was interrupted ({len(done_batches(location))} of "
            f"{header.get('n_batches')} batches written); finish it with "
            "track_to_zarr(..., resume=True) or `mriflow track ... --resume`"
        )
    return StreamlineStore(location.name, location, header)
