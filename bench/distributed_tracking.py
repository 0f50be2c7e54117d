"""Distributed tracking: ``track_to_zarr`` on LocalClusters of 1 and 2 worker processes vs
the single-process engine ``track()`` (1 and 2 threads), in one run, each in its own process.

    python bench/distributed_tracking.py [--data /tmp/track-data/bench] [--seeds 40000]
        [--method deterministic] [--batch-size 1000] [--repeat 1]

Inputs: the tracking benchmark's phantom and seeds (``bench/tracking.py``: the 81 x 106 x 76,
150-direction DWI phantom fitted with dipy's CSA, order 8, cached under ``--data``; random
white-matter seeds with a usable initial direction; GFA > 0.2 stopping; step 0.5 mm, max
angle 30 deg, lengths 10 to 1000 mm). Rows:

- ``track-1`` / ``track-2``: ``mriflow.track.track(..., n_threads=1 / 2)``, fields in memory;
- ``copy-N``: ``track_to_zarr`` on ``get_client(n_workers=N, threads_per_worker=1)``,
  fields in memory: the client writes them once into the tracking store and each worker
  reads them from there (the default for in-memory fields);
- ``inputs-N``: the same with the fields and GFA opened lazily from a zarr fit store
  (``open_zarr``), which each worker opens itself (the default for such fields);
- ``plugin-N`` (not run by default): in-memory fields sent through the scheduler in a
  worker plugin (``fields_from="plugin"``).

Timing: from the call to the store being consolidated (tracking, batch writes,
consolidation, and for ``track_to_zarr`` the client's planning and hashing); kernels are
warmed first in every process. Peak RSS: VmHWM of the client and of each worker process.
Also reported per cluster row: the final consolidation's time (the span of its tasks on
the cluster; output chunks whose batches were all written earlier were already written by
the client while tracking went on), the tail (from the last batch tracked to the store
complete) and one batch write.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve()
sys.path.insert(0, str(HERE.parent))

import tracking  # noqa: E402  (the tracking benchmark: its phantom, fields and seeds)

MODES = ("track-1", "track-2", "copy-1", "copy-2", "inputs-1", "inputs-2")


def peak_mib() -> float:
    """This process's own peak RSS (VmHWM) in MiB."""
    status = Path("/proc/self/status").read_text().splitlines()
    return next(int(line.split()[1]) for line in status if line.startswith("VmHWM")) / 1024


def fit_store(data: Path, fields: Path) -> Path:
    """The tracking benchmark's SH field and GFA as a zarr fit store (written once)."""
    store = data / "dtrack-fit.zarr"
    if not (store / "zarr.json").exists():
        import xarray as xr

        import mriflow
        from mriflow.io.zarr import to_zarr

        arrays = tracking._load(fields)
        affine = arrays["affine"]
        sh = mriflow.from_array(arrays["shm_coeff"], affine, dims=("i", "j", "k", "sh"))
        gfa = mriflow.from_array(arrays["gfa"], affine)
        to_zarr(xr.Dataset({"shm_coeff": sh, "gfa": gfa}), store, overwrite=True)
    return store


def inputs(fields: Path, store: Path, n_seeds: int, method: str, lazy: bool):
    """(fields, stopping, seeds) exactly as bench/tracking.py builds them."""
    import mriflow
    import mriflow.track as mt
    from mriflow.io.zarr import open_zarr

    arrays = tracking._load(fields)
    affine = arrays["affine"]
    seeds = tracking._seeds(arrays, n_seeds)
    image = mriflow.from_array(arrays["shm_coeff"], affine, dims=("i", "j", "k", "sh"))
    directions = mt.seed_directions(image, seeds, method=method)
    seeds = seeds[np.isfinite(directions).all(axis=1)]
    if lazy:
        opened = open_zarr(store)
        return opened, mt.ThresholdStopping(opened.gfa, tracking.GFA_THRESHOLD), seeds
    stopping = mt.ThresholdStopping(
        mriflow.from_array(arrays["gfa"], affine), tracking.GFA_THRESHOLD
    )
    return image, stopping, seeds


def options(method: str) -> dict:
    return {
        "method": method,
        "step_size": tracking.STEP,
        "max_angle": tracking.ANGLE,
        "min_length": 10.0,
        "max_length": tracking.MAX_LENGTH,
        "rng": 1,
    }


def _crop(fields, stopping, seed, radius: int = 4):
    """A small piece of the fields around ``seed``: enough to warm kernels anywhere."""
    import mriflow.track as mt

    voxel = np.linalg.inv(stopping.affine) @ np.append(seed, 1.0)
    window = {
        dim: slice(max(int(v) - radius, 0), int(v) + radius)
        for dim, v in zip("ijk", voxel[:3], strict=True)
    }
    small = fields.isel(window).load()
    return small, mt.ThresholdStopping(stopping.image.isel(window).load(), stopping.params[0])


def _warm(fields, stopping, seeds, method: str) -> None:
    import mriflow.track as mt

    mt.track(fields, stopping, seeds, n_threads=1, **options(method))


def child(mode: str, args: argparse.Namespace, fields: Path, store: Path) -> dict:
    """One measurement, in this (child) process."""
    import mriflow.track as mt

    kind, count = mode.split("-")
    count = int(count)
    data, stopping, seeds = inputs(fields, store, args.seeds, args.method, kind == "inputs")
    small, small_stopping = _crop(data, stopping, seeds[0])
    _warm(small, small_stopping, seeds[:1], args.method)
    result: dict = {"mode": mode, "seeds": len(seeds)}
    if kind == "track":
        start = time.perf_counter()
        tg = mt.track(data, stopping, seeds, n_threads=count, **options(args.method))
        result.update(seconds=time.perf_counter() - start, points=len(tg.positions))
        result["streamlines"] = len(tg)
    else:
        from distributed import get_task_stream

        from mriflow.cluster import get_client

        out = args.scratch / f"{mode}.zarr"
        with get_client(n_workers=count, threads_per_worker=1, dashboard=False) as client:
            client.run(_warm, small, small_stopping, seeds[:1], args.method)
            with get_task_stream(client) as stream:
                start = time.perf_counter()
                written = mt.track_to_zarr(
                    data, stopping, seeds, out, batch_size=args.batch_size, client=client,
                    overwrite=True, progress=False, fields_from=kind, **options(args.method),
                )  # fmt: skip
                result["seconds"] = time.perf_counter() - start
                finished = time.time()
            result["worker_peak_mib"] = sorted(client.run(peak_mib).values())
        tracked = [t for t in stream.data if str(t["key"]).startswith("mriflow-track-")]
        if tracked:  # from the last batch tracked to the store complete
            result["tail_s"] = finished - max(s["stop"] for t in tracked for s in t["startstops"])
        copies = [t for t in stream.data if str(t["key"]).startswith("_write_chunk")]
        if copies:
            starts = [s["start"] for t in copies for s in t["startstops"]]
            stops = [s["stop"] for t in copies for s in t["startstops"]]
            result["consolidation_s"] = max(stops) - min(starts)
        result.update(
            points=written.n_points,
            streamlines=len(written),
            n_batches=written.header["n_batches"],
            fields_from=kind,
        )
        result["batch_write_ms"] = _batch_write_ms(data, stopping, seeds, args)
    result["client_peak_mib"] = peak_mib()
    return result


def _batch_write_ms(data, stopping, seeds, args: argparse.Namespace) -> float:
    """Median time to write one batch of ``batch_size`` seeds (file + marker)."""
    import shutil

    from mriflow.io.zarr._store import resolve_store
    from mriflow.track.api import plan_tracking, track_batch
    from mriflow.track.store import write_batch

    job = plan_tracking(
        data, stopping, seeds[: args.batch_size], n_threads=1, **options(args.method)
    )
    result = track_batch(job.fields, job.seeds_voxel, job.seed_ids, job.params)
    target = args.scratch / "one-batch.zarr"
    times = []
    for index in range(5):
        shutil.rmtree(target, ignore_errors=True)
        location = resolve_store(target)
        start = time.perf_counter()
        write_batch(location, index, result)
        times.append(time.perf_counter() - start)
    shutil.rmtree(target, ignore_errors=True)
    return 1000 * float(np.median(times))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=Path("/tmp/track-data/bench"))
    parser.add_argument("--scratch", type=Path, default=Path("/tmp/dtrack2-data/bench"))
    parser.add_argument("--seeds", type=int, default=40000)
    parser.add_argument("--method", default="deterministic")
    parser.add_argument("--batch-size", type=int, default=1000)
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--modes", default=",".join(MODES))
    parser.add_argument("--child", default=None)
    args = parser.parse_args()
    args.scratch.mkdir(parents=True, exist_ok=True)
    fields = tracking.prepare(args.data)
    store = fit_store(args.scratch, fields)
    if args.child:
        print("@@" + json.dumps(child(args.child, args, fields, store)))
        return
    rows = []
    for _ in range(args.repeat):
        for mode in args.modes.split(","):
            command = [sys.executable, str(HERE), "--child", mode]
            for flag in ("data", "scratch", "seeds", "method", "batch_size"):
                command += [f"--{flag.replace('_', '-')}", str(getattr(args, flag))]
            done = subprocess.run(command, capture_output=True, text=True)
            if done.returncode:
                raise RuntimeError(f"{mode} failed: {done.stderr[-3000:]}")
            rows.append(json.loads(done.stdout.split("@@")[-1]))
            print(json.dumps(rows[-1]), flush=True)
    best: dict[str, dict] = {}
    for row in rows:
        if row["mode"] not in best or row["seconds"] < best[row["mode"]]["seconds"]:
            best[row["mode"]] = row
    print(
        f"\n{args.method}, {best[next(iter(best))]['seeds']} seeds, batch_size "
        f"{args.batch_size}, best of {args.repeat}\n"
    )
    print(
        "| run | s | seeds/s | points/s | consolidation s | tail s | batch write ms "
        "| client peak MiB | worker peak MiB |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for mode, row in best.items():
        consolidation, tail = row.get("consolidation_s"), row.get("tail_s")
        write = row.get("batch_write_ms")
        print(
            f"| {mode} | {row['seconds']:.2f} | {row['seeds'] / row['seconds']:,.0f} | "
            f"{row['points'] / row['seconds']:,.0f} | "
            f"{'-' if consolidation is None else f'{consolidation:.2f}'} | "
            f"{'-' if tail is None else f'{tail:.2f}'} | "
            f"{'-' if write is None else f'{write:.1f}'} | {row['client_peak_mib']:,.0f} | "
            f"{', '.join(f'{m:,.0f}' for m in row.get('worker_peak_mib', [])) or '-'} |"
        )
    rate = {mode: row["seeds"] / row["seconds"] for mode, row in best.items()}
    for kind in ("copy", "inputs", "plugin"):
        if f"{kind}-1" in rate and f"{kind}-2" in rate:
            print(
                f"\n{kind}: scaling efficiency 2 workers / (2 x 1 worker): "
                f"{rate[f'{kind}-2'] / (2 * rate[f'{kind}-1']):.3f}"
            )
        if f"{kind}-1" in rate and "track-1" in rate:
            print(
                f"{kind}: overhead 1 worker vs track() 1 thread: "
                f"{rate['track-1'] / rate[f'{kind}-1'] - 1:+.1%}"
            )
        if f"{kind}-2" in rate and "track-2" in rate:
            print(
                f"{kind}: 2 workers vs track() 2 threads: "
                f"{rate[f'{kind}-2'] / rate['track-2']:.2f}x"
            )
    print(f"identical points in every row: {len({row['points'] for row in rows}) == 1}")


if __name__ == "__main__":
    main()
