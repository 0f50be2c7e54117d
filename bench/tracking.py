"""Tracking throughput: mriflow.track against dipy's fastest trackers, same fields and seeds.

Usage::

    python bench/tracking.py [--data /tmp/track-data/bench] [--seeds 40000] [--cases peaks]

Prepares (once, cached under ``--data``) a whole-brain-sized DWI phantom with
``mriflow.data.write_dwi_phantom`` (81 x 106 x 76, b=2000, 150 directions, SNR 20) and
fits it with dipy's CSA model (order 8) + ``peaks_from_model`` on mriflow's 724-vertex
sphere. Then, for each case, runs mriflow and dipy in separate fresh processes on the
same SH / peaks, stopping map (GFA), seeds (random in the white matter), initial
directions, step (0.5 mm), max angle (30 deg) and lengths (10 to 1000 mm): each process
does an untimed warm-up on 200 seeds (numba cache load; dipy has no JIT), then one timed
run. Peak RSS is each child's VmHWM (its own high-water mark since exec). Cases:
probabilistic from SH (dipy ``probabilistic_tracking``), deterministic ODF maximum from SH
(``deterministic_tracking``), deterministic peak following (``eudx_tracking`` on the
peaks), all with ``nbr_threads=0`` (both cores); mriflow uses 2 threads. Prints the table
last.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

STEP = 0.5
ANGLE = 30.0
GFA_THRESHOLD = 0.2
# Long enough that no streamline is cut or dropped for length (dipy drops over-long ones
# after tracking them, which would count work it did not report).
MAX_LENGTH = 1000.0
CASES = {
    "probabilistic (SH)": "prob",
    "deterministic max-ODF (SH)": "det",
    "deterministic peaks": "peaks",
}


def prepare(data: Path) -> Path:
    """Generate and fit the phantom once; returns the npz of fields."""
    fields = data / "fields.npz"
    if fields.exists():
        return fields
    import nibabel as nib
    from dipy.core.gradients import gradient_table
    from dipy.core.sphere import Sphere
    from dipy.direction import peaks_from_model
    from dipy.reconst.shm import CsaOdfModel

    import mriflow
    import mriflow.track as mt
    from mriflow.data import LABELS, write_dwi_phantom

    data.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    paths = write_dwi_phantom(
        data, shape=(81, 106, 76), n_directions=150, bvalue=2000.0, snr=20.0, seed=0
    )
    dwi = mriflow.open_image(paths["dwi"])
    bvals = dwi.mri.bvals
    bvecs = dwi.mri.bvecs("fsl")
    labels = np.asarray(nib.load(paths["labels"]).dataobj)
    wm = labels == LABELS["white_matter"]
    print(f"phantom written in {time.perf_counter() - started:.0f} s", flush=True)
    table = gradient_table(bvals, bvecs=bvecs)
    sphere = Sphere(xyz=mt.sphere(724))
    values = np.asarray(dwi.values, dtype=np.float32)
    started = time.perf_counter()
    peaks = peaks_from_model(
        CsaOdfModel(table, 8),
        values,
        sphere,
        relative_peak_threshold=0.5,
        min_separation_angle=25,
        mask=labels > 0,
        npeaks=5,
        return_sh=True,
    )
    print(f"CSA fit + peaks in {time.perf_counter() - started:.0f} s", flush=True)
    np.savez(
        fields,
        shm_coeff=peaks.shm_coeff.astype(np.float64),
        peak_dirs=peaks.peak_dirs.astype(np.float64),
        peak_indices=peaks.peak_indices,
        peak_values=peaks.peak_values,
        gfa=peaks.gfa,
        wm=wm,
        affine=dwi.mri.affine,
    )
    return fields


def _load(fields: Path):
    loaded = np.load(fields)
    return {name: loaded[name] for name in loaded.files}


def _seeds(arrays: dict, n: int) -> np.ndarray:
    import mriflow
    import mriflow.track as mt

    wm = mriflow.from_array(arrays["wm"].astype(np.uint8), arrays["affine"])
    return mt.random_seeds(wm, n=n, rng=0)


def child(side: str, case: str, fields: Path, n_seeds: int) -> None:
    """Run one side of one case and print its figures as JSON (in a fresh process)."""
    import warnings

    warnings.simplefilter("ignore")
    arrays = _load(fields)
    seeds = _seeds(arrays, n_seeds)
    affine = arrays["affine"]
    field = "peak_dirs" if case == "peaks" else "shm_coeff"
    method = "probabilistic" if case == "prob" else "deterministic"

    import mriflow
    import mriflow.track as mt

    if field == "peak_dirs":
        image = mriflow.from_array(arrays[field], affine, dims=("i", "j", "k", "peak", "xyz"))
    else:
        image = mriflow.from_array(arrays[field], affine, dims=("i", "j", "k", "sh"))
    directions = mt.seed_directions(image, seeds, method=method)
    keep = np.isfinite(directions).all(axis=1)
    seeds, directions = seeds[keep], directions[keep]

    if side == "mriflow":
        stop = mt.ThresholdStopping(mriflow.from_array(arrays["gfa"], affine), GFA_THRESHOLD)

        def run(n: int) -> tuple[int, int]:
            result = mt.track(
                image,
                stop,
                seeds[:n],
                method=method,
                step_size=STEP,
                max_angle=ANGLE,
                min_length=10.0,
                max_length=MAX_LENGTH,
                rng=1,
                n_threads=2,
                # eudx_tracking's rule (min_total_weight=0.5): the same algorithm both sides.
                min_total_weight=0.5 if case == "peaks" else 0.0,
            )
            return len(result), len(result.positions)
    else:
        from dipy.core.sphere import Sphere
        from dipy.direction.peaks import PeaksAndMetrics
        from dipy.tracking.stopping_criterion import ThresholdStoppingCriterion
        from dipy.tracking.tracker import (
            deterministic_tracking,
            eudx_tracking,
            probabilistic_tracking,
        )

        sphere = Sphere(xyz=mt.sphere(724))
        criterion = ThresholdStoppingCriterion(arrays["gfa"], GFA_THRESHOLD)
        common = {
            "step_size": STEP,
            "max_angle": ANGLE,
            "sphere": sphere,
            "min_len": 10,
            "max_len": MAX_LENGTH,
            "nbr_threads": 0,
            "random_seed": 1,
            "return_all": True,
        }
        if case == "peaks":
            pam = PeaksAndMetrics()
            pam.peak_dirs = arrays["peak_dirs"]
            pam.peak_indices = arrays["peak_indices"]
            pam.peak_values = arrays["peak_values"]
            pam.sphere = sphere
            function, extra = eudx_tracking, {"pam": pam}
        else:
            function = probabilistic_tracking if case == "prob" else deterministic_tracking
            extra = {"sh": arrays["shm_coeff"]}

        def run(n: int) -> tuple[int, int]:
            count = total = 0
            lines = function(
                seeds[:n],
                criterion,
                affine,
                seed_directions=directions[:n],
                **common,
                **extra,
            )
            for line in lines:
                count += 1
                total += len(line)
            return count, total

    run(200)  # warm-up, untimed
    started = time.perf_counter()
    count, total = run(len(seeds))
    seconds = time.perf_counter() - started
    # Peak RSS of this process image (VmHWM restarts at exec; ru_maxrss of a forked child
    # starts from the parent's).
    status = Path("/proc/self/status").read_text().splitlines()
    peak_kib = next(int(line.split()[1]) for line in status if line.startswith("VmHWM"))
    figures = {
        "seconds": seconds,
        "streamlines": count,
        "points": total,
        "seeds": len(seeds),
        "peak_rss_mib": peak_kib / 1024,
    }
    print("@@" + json.dumps(figures))


def measure(side: str, case: str, fields: Path, n_seeds: int) -> dict:
    """Run a child process and return the figures it prints (its own peak RSS included)."""
    process = subprocess.Popen(
        [
            sys.executable,
            __file__,
            "--child",
            side,
            case,
            "--fields",
            str(fields),
            "--seeds",
            str(n_seeds),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    output = process.stdout.read()
    if process.wait():
        raise RuntimeError(f"{side} {case} failed ({process.returncode}): {output[-2000:]}")
    return json.loads(output.split("@@")[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=Path("/tmp/track-data/bench"))
    parser.add_argument("--seeds", type=int, default=40000)
    parser.add_argument("--child", nargs=2, metavar=("SIDE", "CASE"))
    parser.add_argument("--fields", type=Path)
    parser.add_argument(
        "--cases",
        nargs="+",
        choices=sorted(CASES.values()),
        default=list(CASES.values()),
        help="cases to run (default: all)",
    )
    args = parser.parse_args()
    if args.child:
        child(args.child[0], args.child[1], args.fields, args.seeds)
        return
    fields = prepare(args.data)
    rows = []
    for label, case in CASES.items():
        if case not in args.cases:
            continue
        figures = {}
        for side in ("mriflow", "dipy"):
            figures[side] = measure(side, case, fields, args.seeds)
            print(side, case, json.dumps(figures[side]), flush=True)
        ours = figures["mriflow"]
        row = {"case": label}
        for side, result in figures.items():
            row[f"{side} points/s"] = result["points"] / result["seconds"]
            row[f"{side} seeds/s"] = result["seeds"] / result["seconds"]
            row[f"{side} s"] = result["seconds"]
            row[f"{side} streamlines"] = result["streamlines"]
            row[f"{side} RSS MiB"] = result["peak_rss_mib"]
        row["ratio points/s"] = row["mriflow points/s"] / row["dipy points/s"]
        rows.append(row)
        print(json.dumps(row), flush=True)
    print(
        f"\nmachine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores; "
        f"{ours['seeds']} seeds, step {STEP} mm, max angle {ANGLE} deg\n"
    )
    columns = [
        "case",
        "mriflow points/s",
        "dipy points/s",
        "ratio points/s",
        "mriflow seeds/s",
        "dipy seeds/s",
        "mriflow streamlines",
        "dipy streamlines",
        "mriflow RSS MiB",
        "dipy RSS MiB",
    ]
    print("| " + " | ".join(columns) + " |")
    print("|" + "---|" * len(columns))
    for row in rows:
        cells = [
            f"{row[c]:,.0f}"
            if isinstance(row[c], float) and "ratio" not in c
            else (f"{row[c]:.2f}x" if "ratio" in c else str(row[c]))
            for c in columns
        ]
        print("| " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
