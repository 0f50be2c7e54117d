"""Distributed tracking benchmark: track_to_zarr on LocalClusters of 1 and 2 worker
processes vs the single-process engine ``track()``, in one run, each in its own process.

    python bench/track_distributed.py --data /tmp/dtrack-data/bench [--density 4] [--repeat 2]

Inputs: the bundle phantom fitted with dipy's CSD (written once to a zarr fit store),
seeds on a ``density``^3 grid in every white-matter voxel, probabilistic tracking.
Reports seeds/s and points/s, scaling efficiency (2 workers / (2 x 1 worker)), overhead of
1 worker vs ``track()`` on one thread, peak RSS of the client and of each worker.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve()
OPTIONS = {"method": "probabilistic", "rng": 7, "step_size": 0.5, "max_length": 200.0}


def prepare(data: Path) -> Path:
    """Fit the phantom with dipy once; keep the fit as a zarr store."""
    fit = data / "fit.zarr"
    if not fit.exists():
        sys.path.insert(0, str(HERE.parents[1] / "tests"))
        from track_phantom import fitted

        from mriflow.io.zarr import to_zarr

        _, dataset, _, _ = fitted()
        to_zarr(dataset[["shm_coeff", "gfa"]], fit)
    return fit


def inputs(fit: Path, density: int):
    import mriflow.track as mt
    from mriflow.io.zarr import open_zarr

    dataset = open_zarr(fit).load()
    stopping = mt.ThresholdStopping(dataset.gfa, 0.2)
    mask = (dataset.gfa > 0.2).astype("uint8")
    mask.attrs.update(dataset.gfa.attrs)
    return dataset, stopping, mt.seeds_from_mask(mask, density=density)


def peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _warm(dataset, stopping, seeds) -> None:
    import mriflow.track as mt

    mt.track(dataset, stopping, seeds, n_threads=1, **OPTIONS)


def child(mode: str, fit: Path, density: int, out: Path) -> dict:
    """One measurement, in this (child) process."""
    import mriflow.track as mt

    dataset, stopping, seeds = inputs(fit, density)
    # Warm the kernels here (compile or load the cache) outside the timing.
    mt.track(dataset, stopping, seeds[:50], n_threads=1, **OPTIONS)
    result: dict = {"mode": mode, "seeds": len(seeds)}
    if mode.startswith("track-"):
        threads = int(mode.split("-")[1])
        start = time.perf_counter()
        tg = mt.track(dataset, stopping, seeds, n_threads=threads, **OPTIONS)
        result.update(seconds=time.perf_counter() - start, points=len(tg.positions))
    else:
        from mriflow.cluster import get_client

        workers = int(mode.split("-")[1])
        with get_client(n_workers=workers, threads_per_worker=1) as client:
            # Warm every worker too (imports, kernels from numba's cache).
            client.run(_warm, dataset, stopping, seeds[:50])
            start = time.perf_counter()
            store = mt.track_to_zarr(
                dataset, stopping, seeds, out, batch_size=1000, client=client,
                overwrite=True, progress=False, **OPTIONS,
            )  # fmt: skip
            result.update(seconds=time.perf_counter() - start, points=store.n_points)
            result["worker_peak_mib"] = sorted(client.run(peak_mib).values())
            result["n_batches"] = store.header["n_batches"]
    result["client_peak_mib"] = peak_mib()
    return result


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--data", type=Path, default=Path("/tmp/dtrack-data/bench"))
    parser.add_argument("--density", type=int, default=4)
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--child", default=None)
    args = parser.parse_args()
    args.data.mkdir(parents=True, exist_ok=True)
    fit = prepare(args.data)
    if args.child:
        print(json.dumps(child(args.child, fit, args.density, args.data / "tracts.zarr")))
        return
    rows = []
    for _ in range(args.repeat):
        for mode in ("track-1", "track-2", "cluster-1", "cluster-2"):
            done = subprocess.run(
                [sys.executable, str(HERE), "--data", str(args.data), "--density",
                 str(args.density), "--child", mode],
                capture_output=True, text=True, check=True,
            )  # fmt: skip
            rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
            print(json.dumps(rows[-1]), flush=True)
    best = {}
    for row in rows:
        if row["mode"] not in best or row["seconds"] < best[row["mode"]]["seconds"]:
            best[row["mode"]] = row
    print(
        f"\n| run | seeds | points | s (best of {args.repeat}) | seeds/s | points/s | "
        "client peak MiB | worker peak MiB |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for mode, row in best.items():
        print(
            f"| {mode} | {row['seeds']} | {row['points']} | {row['seconds']:.2f} | "
            f"{row['seeds'] / row['seconds']:.0f} | {row['points'] / row['seconds']:.0f} | "
            f"{row['client_peak_mib']:.0f} | {row.get('worker_peak_mib', '-')} |"
        )
    rate = {mode: row["seeds"] / row["seconds"] for mode, row in best.items()}
    print(
        f"\nscaling efficiency 2 workers / (2 x 1 worker): "
        f"{rate['cluster-2'] / (2 * rate['cluster-1']):.2f}"
    )
    print(f"overhead 1 worker vs track() 1 thread: {rate['track-1'] / rate['cluster-1'] - 1:+.1%}")
    print(f"2 workers vs track() 2 threads: {rate['cluster-2'] / rate['track-2']:.2f}x")
    print(f"identical points: {len({row['points'] for row in rows}) == 1}")


if __name__ == "__main__":
    main()
