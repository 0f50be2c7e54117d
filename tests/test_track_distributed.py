"""Distributed tracking into the zarr streamline store: real clusters, real kills, real files.

Every comparison is against an undisturbed run (or ``track()`` in this process), byte for
byte: the store's files, or the streamlines.
"""

from __future__ import annotations

import itertools
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from track_store_jobs import FIELDS_FILE, OPTIONS, inputs

import mriflow.track as mt
from mriflow.errors import (
    IncompleteStoreError,
    StoreFormatError,
    StoreWriteError,
    TrackingInputError,
    TractogramFormatError,
    TractogramStoreError,
)
from mriflow.track.distributed import batch_bounds, seed_costs

JOBS = str(Path(__file__).with_name("track_store_jobs.py"))
BATCH = 100
MARKERS = Path("batches/.mriflow-progress/0")


def tree(store: Path) -> dict[str, bytes]:
    """Every file of a store by relative path, with its bytes."""
    return {
        str(path.relative_to(store)): path.read_bytes()
        for path in sorted(store.rglob("*"))
        if path.is_file()
    }


def markers(store: Path) -> int:
    folder = store / MARKERS
    return len(list(folder.glob("*.done"))) if folder.exists() else 0


@pytest.fixture(scope="module", autouse=True)
def shared_fields(tmp_path_factory):
    """Every process of this module (the killed client too) reads the same fields."""
    os.environ[FIELDS_FILE] = str(tmp_path_factory.mktemp("fields") / "fields.pickle")
    inputs.cache_clear()
    inputs()
    yield
    os.environ.pop(FIELDS_FILE, None)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """track() in this process, and an undisturbed store written on local threads."""
    dataset, stopping, seeds = inputs()
    expected = mt.track(dataset, stopping, seeds, **OPTIONS)
    path = tmp_path_factory.mktemp("reference") / "tracts.zarr"
    mt.track_to_zarr(dataset, stopping, seeds, path, batch_size=BATCH, progress=False, **OPTIONS)
    return expected, path, tree(path)


@pytest.fixture(scope="module")
def scheduler_file(tmp_path_factory):
    """`dask scheduler` and two `dask worker` processes on 127.0.0.1."""
    folder = tmp_path_factory.mktemp("cluster")
    path = folder / "scheduler.json"
    dask = str(Path(sys.executable).with_name("dask"))
    scheduler = subprocess.Popen(
        [dask, "scheduler", "--host", "127.0.0.1", "--port", "0", "--no-dashboard",
         "--scheduler-file", str(path)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    for _ in range(300):
        if path.exists() and path.stat().st_size:
            break
        time.sleep(0.05)
    workers = [
        subprocess.Popen(
            [
                dask,
                "worker",
                "--scheduler-file",
                str(path),
                "--nthreads",
                "1",
                "--host",
                "127.0.0.1",
                "--no-dashboard",
                "--local-directory",
                str(folder),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for _ in range(2)
    ]
    from distributed import Client

    with Client(scheduler_file=str(path)) as client:
        client.wait_for_workers(2, timeout=60)
    yield path
    for process in [*workers, scheduler]:
        process.terminate()
    for process in [*workers, scheduler]:
        process.wait(timeout=30)


def test_in_process_run_equals_track_and_exports_match_the_in_memory_writer(reference, tmp_path):
    expected, path, _ = reference
    store = mt.open_tractogram(path)
    assert len(store) == len(expected) > 1000
    assert store.positions.chunks is not None  # lazy dask arrays
    got = store.to_tractogram()
    for name in ("positions", "offsets", "seed_ids", "stop_reasons"):
        np.testing.assert_array_equal(getattr(got, name), getattr(expected, name))
    np.testing.assert_array_equal(store.affine, expected.affine)
    assert store.dimensions == expected.dimensions
    np.testing.assert_allclose(store.lengths.compute(), expected.lengths(), rtol=1e-5)
    assert np.all(np.diff(store.seed_ids.compute()) > 0)  # ordered by seed id
    # Streaming exports are byte-identical to writing the whole tractogram at once.
    for suffix in (".trk", ".tck"):
        store.export(tmp_path / f"stream{suffix}", streamlines_per_chunk=333)
        expected.save(tmp_path / f"whole{suffix}")
        assert (tmp_path / f"stream{suffix}").read_bytes() == (
            tmp_path / f"whole{suffix}"
        ).read_bytes()
    store.export(tmp_path / "stream.trx")
    back = mt.load(tmp_path / "stream.trx")
    np.testing.assert_array_equal(back.positions, expected.positions)
    np.testing.assert_array_equal(back.offsets, expected.offsets)
    np.testing.assert_array_equal(back.seed_ids, expected.seed_ids)
    np.testing.assert_array_equal(back.stop_reasons, expected.stop_reasons)
    with pytest.raises(TractogramFormatError, match=r"stream\.xyz: unknown"):
        store.export(tmp_path / "stream.xyz")


def test_batches_are_cost_balanced_and_results_independent_of_batch_size(reference, tmp_path):
    expected, _, _ = reference
    dataset, stopping, seeds = inputs()
    stop_map = stopping.arrays()[0]
    every_voxel = np.argwhere(np.ones(stop_map.shape, bool)).astype(np.float64)
    costs = seed_costs(stop_map, "threshold", stopping.params, every_voxel)
    assert set(np.unique(costs)) == {0.02, 1.0}  # seeds in and out of the white matter
    np.testing.assert_array_equal(costs == 1.0, (stop_map > stopping.params[0]).reshape(-1))
    bounds = batch_bounds(costs, 50)
    work = np.add.reduceat(costs, bounds[:-1])
    assert len(bounds) > 10
    assert work.max() / work.min() < 1.05  # balanced by cost, not by seed count
    assert np.diff(bounds).max() > 2 * np.diff(bounds).min()
    # However cheap, no batch holds more than 20 x batch_size seeds.
    assert np.diff(batch_bounds(np.full(100_000, 0.02), 200)).max() <= 20 * 200
    for batch_size in (300, 10_000):
        store = mt.track_to_zarr(
            dataset, stopping, seeds, tmp_path / f"b{batch_size}.zarr",
            batch_size=batch_size, progress=False, **OPTIONS,
        )  # fmt: skip
        got = store.to_tractogram()
        np.testing.assert_array_equal(got.positions, expected.positions)
        np.testing.assert_array_equal(got.seed_ids, expected.seed_ids)


def test_subprocess_scheduler_and_workers_give_the_same_store(reference, scheduler_file, tmp_path):
    from distributed import Client

    _, _, expected_tree = reference
    dataset, stopping, seeds = inputs()
    path = tmp_path / "cluster.zarr"
    with Client(scheduler_file=str(scheduler_file)) as client:
        mt.track_to_zarr(
            dataset, stopping, seeds, path, batch_size=BATCH, client=client,
            fields_from="plugin", progress=False, **OPTIONS,
        )  # fmt: skip
        # Both workers tracked batches, and the fields arrived in each worker exactly once
        # (tasks name them and never carry them).
        stats = client.run(
            lambda dask_worker: (
                dask_worker.state.executed_count,
                __import__("mriflow.track.distributed").track.distributed.FIELD_ARRIVALS,
            )
        )
    assert len(stats) == 2
    for executed, arrivals in stats.values():
        assert executed >= 1, stats
        assert len(arrivals) == 1, stats
        assert set(arrivals.values()) == {1}, stats
    assert tree(path) == expected_tree


def test_killed_client_resumes_to_the_same_store(reference, scheduler_file, tmp_path):
    from distributed import Client

    _, _, expected_tree = reference
    path = tmp_path / "killed.zarr"
    job = subprocess.Popen(
        [sys.executable, JOBS, "track", str(path), str(scheduler_file), "20"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    deadline = time.monotonic() + 120
    while markers(path) < 10 and job.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    job.send_signal(signal.SIGKILL)
    job.wait()
    done_at_kill = markers(path)
    header = json.loads((path / "zarr.json").read_text())["attributes"]["mriflow_tractogram"]
    assert header["status"] == "tracking"
    assert 10 <= done_at_kill < header["n_batches"]
    with pytest.raises(IncompleteStoreError, match=r"killed\.zarr: tracking was interrupted"):
        mt.open_tractogram(path)
    dataset, stopping, seeds = inputs()
    with pytest.raises(StoreWriteError, match="already exists"):
        mt.track_to_zarr(dataset, stopping, seeds, path, batch_size=20, progress=False, **OPTIONS)
    with pytest.raises(TractogramStoreError, match="fingerprint differs"):
        mt.track_to_zarr(
            dataset, stopping, seeds, path, batch_size=20, resume=True, progress=False,
            **{**OPTIONS, "rng": 4},
        )  # fmt: skip
    with Client(scheduler_file=str(scheduler_file)) as client:
        store = mt.track_to_zarr(
            dataset, stopping, seeds, path, batch_size=20, client=client, resume=True,
            progress=False, **OPTIONS,
        )  # fmt: skip
    ids = store.seed_ids.compute()
    assert len(np.unique(ids)) == len(ids)  # no batch twice
    expected = reference[0]
    np.testing.assert_array_equal(ids, expected.seed_ids)  # none missing
    # Same bytes as an undisturbed run with that batch size.
    clean = tmp_path / "clean.zarr"
    mt.track_to_zarr(dataset, stopping, seeds, clean, batch_size=20, progress=False, **OPTIONS)
    assert tree(path) == tree(clean)
    assert not any(name.endswith(".partial") for name in tree(path))
    del expected_tree


def test_killed_worker_is_replaced_and_the_store_is_identical(reference, tmp_path):
    from mriflow.cluster import get_client

    _, _, expected_tree = reference
    dataset, stopping, seeds = inputs()
    path = tmp_path / "worker.zarr"
    killed: dict[str, int] = {}
    with get_client(n_workers=2, threads_per_worker=1) as client:
        pids = list(client.run(os.getpid).values())

        def kill_one() -> None:
            deadline = time.monotonic() + 120
            while markers(path) < 3 and time.monotonic() < deadline:
                time.sleep(0.005)
            killed["at"] = markers(path)
            os.kill(pids[0], signal.SIGKILL)

        watcher = threading.Thread(target=kill_one)
        watcher.start()
        mt.track_to_zarr(
            dataset, stopping, seeds, path, batch_size=BATCH, client=client,
            progress=False, **OPTIONS,
        )  # fmt: skip
        watcher.join()
        assert pids[0] not in client.run(os.getpid).values()
    n_batches = json.loads((path / "zarr.json").read_text())["attributes"]["mriflow_tractogram"][
        "n_batches"
    ]
    assert killed["at"] < n_batches
    assert tree(path) == expected_tree


def _array_files(store: Path) -> dict[str, bytes]:
    """The bytes of the final arrays' files (not the header or the batch layout)."""
    return {
        name: data
        for name, data in tree(store).items()
        if name.split("/")[0] in ("positions", "offsets", "dps")
    }


def test_output_chunks_written_while_tracking_are_trusted_only_when_marked(
    reference, tmp_path, monkeypatch
):
    from mriflow.io.zarr._store import resolve_store
    from mriflow.track import store as streamline_store
    from mriflow.track.api import plan_tracking, track_batch

    # Small output chunks, so that this small run has many of them, written early.
    monkeypatch.setattr(streamline_store, "POINT_CHUNK", 4096)
    monkeypatch.setattr(streamline_store, "STREAMLINE_CHUNK", 64)
    expected, _, _ = reference
    dataset, stopping, seeds = inputs()
    early = mt.track_to_zarr(
        dataset, stopping, seeds, tmp_path / "early.zarr", batch_size=BATCH, progress=False,
        **OPTIONS,
    )  # fmt: skip
    assert early._array("positions").chunks == (4096, 3)
    assert early.positions.shape[0] > 8 * 4096
    got = early.to_tractogram()
    for name in ("positions", "offsets", "seed_ids", "stop_reasons"):
        np.testing.assert_array_equal(getattr(got, name), getattr(expected, name))

    # The same streamlines, batches written by hand: one store consolidated all at the end,
    # one where the first batches' chunks were written early and a kill cut one chunk's
    # write short (its bytes garbage, no marker): consolidation rewrites that one only.
    job = plan_tracking(dataset, stopping, seeds, **OPTIONS)
    bounds = np.linspace(0, len(job.seed_ids), 7).round().astype(np.int64)
    stores = {}
    for kind in ("at_end", "early_then_killed"):
        location = resolve_store(tmp_path / f"{kind}.zarr")
        streamline_store.create_store(
            location, affine=job.affine, dimensions=(1, 1, 1), parameters={},
            fingerprint="test", batch_bounds=bounds,
        )  # fmt: skip
        for index, (start, stop) in enumerate(itertools.pairwise(bounds)):
            result = track_batch(
                job.fields, job.seeds_voxel[start:stop], job.seed_ids[start:stop], job.params
            )
            streamline_store.write_batch(location, index, result)
        if kind == "early_then_killed":
            writer = streamline_store.EarlyConsolidation(location, location.root, None, set())
            for index, counts in enumerate(streamline_store.batch_counts(location, range(3))):
                writer.batch_done(index, counts["n_streamlines"], counts["n_points"])
            writer.finish(drop_unstarted=False)
            written = streamline_store.done_chunks(location)
            assert ("positions", 1) in written
            assert ("dps/seed_id", 0) in written
            last = max(chunk for name, chunk in written if name == "positions")
            assert ("positions", last + 1) not in written  # not all written yet
            marker = location.path(streamline_store._chunk_marker("positions", 1))
            os.remove(marker)
            chunk = Path(location.root) / "positions" / "c" / "1" / "0"
            chunk.write_bytes(b"cut short")
        streamline_store.consolidate(location)
        stores[kind] = _array_files(Path(location.root))
    assert stores["at_end"] == stores["early_then_killed"] == _array_files(tmp_path / "early.zarr")


def test_bad_stores(tmp_path):
    import zarr

    zarr.open_group(tmp_path / "image.zarr", mode="w").create_array("x", shape=(2,), dtype="u1")
    with pytest.raises(StoreFormatError, match="not a mriflow streamline store"):
        mt.open_tractogram(tmp_path / "image.zarr")
    from mriflow.errors import MissingFileError

    with pytest.raises(MissingFileError, match=r"nothere\.zarr: no such streamline store"):
        mt.open_tractogram(tmp_path / "nothere.zarr")


def _job(*args: str) -> dict:
    done = subprocess.run(
        [sys.executable, JOBS, *args], capture_output=True, text=True, check=True, timeout=240
    )
    lines = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    return {key: value for line in lines for key, value in line.items()}


def test_a_million_streamlines_with_bounded_client_and_export_memory(tmp_path):
    import zipfile

    path, out = tmp_path / "million.zarr", tmp_path / "million.trx"
    n_seeds = 1_000_000
    run = _job("million", str(path), str(n_seeds))
    assert run["streamlines"] >= 1_000_000
    output_mib = (run["points"] * 12 + run["streamlines"] * 22) / 2**20
    seeds_mib = n_seeds * 3 * 8 / 2**20
    # The client holds the seeds and a few seed-sized temporaries while it prepares
    # batches; no streamline passes through it (workers write, the client gets counts).
    assert run["after_mib"] - run["before_mib"] < 4 * seeds_mib
    opened = _job("open", str(path))["peak_rss_mib"]
    exported = _job("export", str(path), str(out))["peak_rss_mib"]
    assert exported - opened < 0.5 * output_mib  # streaming: a few chunks at a time
    from trx import trx_file_memmap

    trx = trx_file_memmap.load(str(out))
    try:
        assert len(trx.streamlines) == run["streamlines"]
        store = mt.open_tractogram(path)
        last = next(store.iter_chunks(10))
        np.testing.assert_array_equal(np.asarray(trx.streamlines[3]), last[3])
        np.testing.assert_array_equal(
            np.asarray(trx.data_per_streamline["seed_id"][:10]).ravel(), last.seed_ids
        )
    finally:
        trx.close()
    assert zipfile.ZipFile(out).testzip() is None


def test_cli_track_resume_and_export(tmp_path, capsys):
    from mriflow.cli import main
    from mriflow.io.zarr import open_zarr, to_zarr

    dataset, _, _ = inputs()
    fit = tmp_path / "fit.zarr"
    to_zarr(dataset[["shm_coeff", "gfa"]], fit)
    out = tmp_path / "cli.zarr"
    command = ["-q", "track", str(fit), "-o", str(out), "--workers", "1", "--method",
               "probabilistic", "--rng", "5", "--batch-size", "100", "--density", "2"]  # fmt: skip
    assert main(command) == 0
    # The same as the library on the same inputs.
    stored = open_zarr(fit)
    mask = (stored.gfa > 0.2).astype("uint8")
    mask.attrs.update(stored.gfa.attrs)
    library = mt.track_to_zarr(
        stored, mt.ThresholdStopping(stored.gfa, 0.2), mt.seeds_from_mask(mask, density=2),
        tmp_path / "lib.zarr", method="probabilistic", rng=5, batch_size=100, progress=False,
    )  # fmt: skip
    assert tree(out) == tree(tmp_path / "lib.zarr")
    assert main(command) == 1  # exists
    assert "already exists; pass resume=True" in capsys.readouterr().err.replace("\n", "")
    assert main([*command, "--resume"]) == 0  # complete: nothing to do
    assert main(["-q", "export", str(out), str(tmp_path / "cli.tck")]) == 0
    assert len(mt.load(tmp_path / "cli.tck").offsets) == len(library) + 1
    assert main(["export", str(tmp_path / "missing.zarr"), str(tmp_path / "x.trx")]) == 1


def test_store_killed_while_starting_resumes_to_the_same_store(reference, scheduler_file, tmp_path):
    """A client killed before the header is written (or while an old store is removed)
    leaves a store without header: resume starts it over instead of refusing it."""
    import zarr

    _, _, expected_tree = reference
    dataset, stopping, seeds = inputs()
    path = tmp_path / "early.zarr"
    log = tmp_path / "job.log"
    with log.open("wb") as stderr:
        job = subprocess.Popen(
            [sys.executable, JOBS, "track", str(path), str(scheduler_file), str(BATCH)],
            stdout=subprocess.DEVNULL, stderr=stderr,
        )  # fmt: skip
    # zarr's mode "w" makes the folder, empties it (rmtree) and makes it again: wait for the
    # root group's metadata, which stays.
    started = path / "zarr.json"
    deadline = time.monotonic() + 120
    while not started.exists() and job.poll() is None and time.monotonic() < deadline:
        time.sleep(0.0005)
    job.send_signal(signal.SIGKILL)  # as soon as the store's root group is there
    job.wait()
    assert started.exists(), (job.returncode, log.read_text()[-3000:])
    with pytest.raises(IncompleteStoreError):
        mt.open_tractogram(path)
    options = {"batch_size": BATCH, "resume": True, "progress": False, **OPTIONS}
    mt.track_to_zarr(dataset, stopping, seeds, path, **options)
    assert tree(path) == expected_tree
    # The two states such a kill leaves, made exactly: only the root group's metadata (killed
    # inside create_store), and a store whose header went first (killed while replaced).
    zarr.open_group(tmp_path / "started.zarr", mode="w")
    (path / "zarr.json").unlink()
    for state in (tmp_path / "started.zarr", path):
        with pytest.raises(StoreWriteError, match="already exists"):
            mt.track_to_zarr(dataset, stopping, seeds, state, **{**options, "resume": False})
        mt.track_to_zarr(dataset, stopping, seeds, state, **options)
        assert tree(state) == expected_tree
    # A folder holding anything else is never taken for one.
    other = tmp_path / "other.zarr"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    with pytest.raises(StoreWriteError, match="already exists"):
        mt.track_to_zarr(dataset, stopping, seeds, other, **options)
    assert (other / "notes.txt").read_text() == "mine"


def test_workers_open_fields_from_zarr_with_identical_results(reference, tmp_path):
    """Fields opened from a zarr fit store are opened by each worker from that store; fields
    in memory are copied into the tracking store once and opened from there. Both give the
    bytes of the plugin path (test above) and of the in-process run."""
    from track_phantom import GFA_THRESHOLD

    from mriflow.cluster import get_client
    from mriflow.io.zarr import open_zarr, to_zarr

    _, _, expected_tree = reference
    dataset, in_memory_stopping, seeds = inputs()
    fit = tmp_path / "fit.zarr"
    to_zarr(dataset[["shm_coeff", "gfa"]], fit)
    lazy = open_zarr(fit)
    stopping = mt.ThresholdStopping(lazy.gfa, GFA_THRESHOLD)
    options = {"batch_size": BATCH, "progress": False, **OPTIONS}

    def counters(dask_worker):
        from mriflow.track import distributed

        return (
            dask_worker.state.executed_count,
            dict(distributed.FIELD_OPENINGS),
            dict(distributed.FIELD_ARRIVALS),
        )

    with get_client(n_workers=2, threads_per_worker=1, dashboard=False) as client:
        mt.track_to_zarr(lazy, stopping, seeds, tmp_path / "inputs.zarr", client=client, **options)
        after_inputs = client.run(counters)
        mt.track_to_zarr(
            dataset, in_memory_stopping, seeds, tmp_path / "copy.zarr", client=client, **options
        )
        after_copy = client.run(counters)
        with pytest.raises(TrackingInputError, match="fields_from: 'inputs' needs"):
            mt.track_to_zarr(
                dataset, in_memory_stopping, seeds, tmp_path / "x.zarr", client=client,
                fields_from="inputs", **options,
            )  # fmt: skip
    # Each worker opened each run's fields itself, once; none was sent them.
    for stats in (after_inputs, after_copy):
        assert len(stats) == 2
        for executed, _, arrived in stats.values():
            assert executed >= 1, stats
            assert arrived == {}, stats
    assert [list(s[1].values()) for s in after_inputs.values()] == [[1], [1]]
    assert [list(s[1].values()) for s in after_copy.values()] == [[1, 1], [1, 1]]
    assert tree(tmp_path / "inputs.zarr") == expected_tree
    assert tree(tmp_path / "copy.zarr") == expected_tree  # the copy is gone too
    with pytest.raises(TrackingInputError, match="fields_from: must be one of"):
        mt.track_to_zarr(lazy, stopping, seeds, tmp_path / "y.zarr", fields_from="disk")


def test_progress_bar_on_request_and_quiet_by_default(tmp_path, capfd):
    dataset, stopping, seeds = inputs()
    small = {"batch_size": 50, **OPTIONS}
    mt.track_to_zarr(dataset, stopping, seeds[:200], tmp_path / "quiet.zarr", **small)
    assert capfd.readouterr().err == ""  # stderr is no terminal here: no bar by default
    mt.track_to_zarr(dataset, stopping, seeds[:200], tmp_path / "bar.zarr", progress=True, **small)
    err = capfd.readouterr().err
    n_batches = mt.open_tractogram(tmp_path / "bar.zarr").header["n_batches"]
    assert "tracking" in err
    assert f"{n_batches}/{n_batches} batches" in err


def _environ(name: str) -> str | None:
    return os.environ.get(name)


def test_local_cluster_workers_start_without_malloc_trim_threshold():
    """distributed's nanny sets MALLOC_TRIM_THRESHOLD_, which made tracking batches slower
    in workers than in the client; get_client's workers go without it, and keep the rest."""
    import dask

    from mriflow.cluster import get_client

    with get_client(n_workers=1, threads_per_worker=1, dashboard=False) as client:
        assert list(client.run(_environ, "MALLOC_TRIM_THRESHOLD_").values()) == [None]
        assert list(client.run(_environ, "OMP_NUM_THREADS").values()) == ["1"]
    # The configuration is as it was, for clusters made otherwise.
    assert "MALLOC_TRIM_THRESHOLD_" in dask.config.get("distributed.nanny.pre-spawn-environ")
