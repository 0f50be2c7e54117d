"""DICOM benchmark: header discovery over a generated study, and load+compute of a 4D series.

    python bench/dicom.py [--data DIR] [--files 20000] [--out bench/results/dicom.md]

The study (written once with pydicom, reused afterwards) holds one 4D dynamic series, one
diffusion series and many small 3D series; every file is a real single-frame MR image.
Each measurement runs in a fresh interpreter; peak RSS is the larger of that process's
VmHWM and its child processes' ``ru_maxrss`` (worker processes, where used).

- discovery: ``mriflow.discover_dicom`` vs a plain pydicom loop that reads every header
  (``stop_before_pixels``) and groups files by SeriesInstanceUID.
- load+compute (the temporal mean of the 4D series): ``mriflow.load_dicom_series(...)``
  ``.mean("t").compute()`` vs a pydicom loop reading every file into one numpy array (sorted
  by position and time) and taking its mean.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import textwrap
import time
from pathlib import Path

PROBE = """
import json, resource, time
{setup}
started = time.perf_counter()
{body}
elapsed = time.perf_counter() - started
# VmHWM is this process's own high-water mark (ru_maxrss would include the RSS of the
# benchmark driver it was forked from); worker processes count through RUSAGE_CHILDREN
with open("/proc/self/status") as status:
    own = next(int(line.split()[1]) for line in status if line.startswith("VmHWM:"))
peak = max(own, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss) * 1024
print("@@" + json.dumps({{"seconds": elapsed, "peak_rss": peak, "result": float(result)}}))
"""

DYNAMIC = {"shape": (96, 96, 24), "n_volumes": 250}  # 6,000 files
DIFFUSION = {"shape": (64, 64, 20), "n_volumes": 100}  # 2,000 files
SMALL = {"shape": (32, 32, 16)}  # 16 files per series, as many series as needed


def run_probe(body: str, setup: str = "") -> dict[str, float]:
    code = PROBE.format(setup=textwrap.dedent(setup).strip(), body=textwrap.dedent(body).strip())
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    return json.loads(out.split("@@")[-1])


def generate(root: Path, n_files: int) -> int:
    """Write the study under ``root`` unless a complete one is there; returns its file count."""
    marker = root / "COMPLETE.json"
    if marker.exists() and json.loads(marker.read_text())["files"] >= n_files:
        return int(json.loads(marker.read_text())["files"])
    from mriflow.io.dicom import synthetic

    study = "1.2.826.0.1.3680043.8.498.77"
    started = time.perf_counter()
    synthetic.write_series(
        root / "dynamic", description="dce_dynamic", series_number=1, study_uid=study, **DYNAMIC
    )
    bvals = [0.0] * 10 + [1000.0] * 90
    import numpy as np

    rng = np.random.default_rng(0)
    directions = rng.normal(size=(100, 3))
    directions /= np.linalg.norm(directions, axis=1, keepdims=True)
    synthetic.write_series(
        root / "dwi",
        description="dwi",
        series_number=2,
        study_uid=study,
        bvals=bvals,
        bvecs_lps=directions,
        **DIFFUSION,
    )
    written = 6000 + 2000
    number = 3
    while written < n_files:
        synthetic.write_series(
            root / f"t1_{number:04d}",
            description=f"t1_{number}",
            series_number=number,
            study_uid=study,
            seed=number,
            **SMALL,
        )
        written += SMALL["shape"][2]
        number += 1
    marker.write_text(json.dumps({"files": written}))
    print(f"wrote {written} files in {time.perf_counter() - started:.0f} s", file=sys.stderr)
    return written


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=Path("/tmp/dicom-data/bench"))
    parser.add_argument("--files", type=int, default=20000)
    parser.add_argument("--out", type=Path, default=Path("bench/results/dicom.md"))
    args = parser.parse_args()
    n_files = generate(args.data, args.files)
    root = str(args.data)
    dynamic = str(args.data / "dynamic")
    # warm the page cache so both sides read from memory
    for directory, _, names in os.walk(root):
        for name in names:
            Path(directory, name).read_bytes()

    discovery_ours = run_probe(
        "series = mriflow.discover_dicom(ROOT, workers=2); result = sum(s.n_files for s in series)",
        setup=f"import mriflow; ROOT = {root!r}",
    )
    discovery_serial = run_probe(
        "series = mriflow.discover_dicom(ROOT); result = sum(s.n_files for s in series)",
        setup=f"import mriflow; ROOT = {root!r}",
    )
    discovery_reference = run_probe(
        """
        groups = {}
        for directory, _, names in os.walk(ROOT):
            for name in names:
                path = os.path.join(directory, name)
                try:
                    ds = pydicom.dcmread(path, stop_before_pixels=True)
                except pydicom.errors.InvalidDicomError:
                    continue
                groups.setdefault(ds.SeriesInstanceUID, []).append(path)
        result = sum(len(v) for v in groups.values())
        """,
        setup=f"import os, pydicom, pydicom.errors; ROOT = {root!r}",
    )
    load_setup = f"""
        import dask, mriflow, numpy as np
        (SERIES,) = mriflow.discover_dicom({dynamic!r})
    """
    load_threads = run_probe(
        """
        image = mriflow.load_dicom_series(SERIES)
        mean = image.mean("t").compute(scheduler="threads")
        result = float(mean.sum())
        """,
        setup=load_setup,
    )
    load_small_chunks = run_probe(
        """
        with dask.config.set({"array.chunk-size": "16MiB"}):
            image = mriflow.load_dicom_series(SERIES)
        mean = image.mean("t").compute(scheduler="threads")
        result = float(mean.sum())
        """,
        setup=load_setup,
    )
    load_processes = run_probe(
        """
        image = mriflow.load_dicom_series(SERIES)
        mean = image.mean("t").compute(scheduler="processes", num_workers=2)
        result = float(mean.sum())
        """,
        setup=load_setup,
    )
    load_reference = run_probe(
        """
        files = sorted(glob.glob(os.path.join(ROOT, "*.dcm")))
        slices = []
        for path in files:
            ds = pydicom.dcmread(path)
            normal = np.cross(
                np.array(ds.ImageOrientationPatient[3:], float),
                np.array(ds.ImageOrientationPatient[:3], float),
            )
            position = float(np.dot(normal, ds.ImagePositionPatient))
            key = (int(ds.TemporalPositionIdentifier), position)
            slices.append((key, ds.pixel_array))
        slices.sort(key=lambda item: item[0])
        n_slices = len({k[1] for k, _ in slices})
        data = np.stack([p for _, p in slices], axis=-1)
        data = data.reshape(data.shape[0], data.shape[1], -1, n_slices).transpose(0, 1, 3, 2)
        result = float(data.mean(axis=-1).sum())
        """,
        setup=f"import glob, os, numpy as np, pydicom; ROOT = {dynamic!r}",
    )
    assert discovery_ours["result"] == discovery_reference["result"] == n_files
    assert discovery_serial["result"] == n_files
    for ours in (load_threads, load_small_chunks, load_processes):
        relative = abs(ours["result"] - load_reference["result"]) / abs(load_reference["result"])
        assert relative < 1e-5, (ours["result"], load_reference["result"])

    def mib(value: float) -> str:
        return f"{value / 2**20:.0f}"

    rows = [
        (
            f"discovery, {n_files} files",
            "mriflow.discover_dicom(workers=2)",
            discovery_ours,
            f"{n_files / discovery_ours['seconds']:.0f} files/s",
        ),
        (
            f"discovery, {n_files} files",
            "mriflow.discover_dicom (one process, default)",
            discovery_serial,
            f"{n_files / discovery_serial['seconds']:.0f} files/s",
        ),
        (
            f"discovery, {n_files} files",
            "pydicom header loop",
            discovery_reference,
            f"{n_files / discovery_reference['seconds']:.0f} files/s",
        ),
        ("load + temporal mean, 4D 96x96x24x250", "mriflow, dask threads", load_threads, ""),
        (
            "load + temporal mean, 4D 96x96x24x250",
            "mriflow, dask threads, array.chunk-size=16MiB",
            load_small_chunks,
            "",
        ),
        ("load + temporal mean, 4D 96x96x24x250", "mriflow, dask 2 processes", load_processes, ""),
        ("load + temporal mean, 4D 96x96x24x250", "pydicom loop into numpy", load_reference, ""),
    ]
    lines = [
        "# DICOM benchmark",
        "",
        f"Machine: {platform.machine()}, {os.cpu_count()} cores, 24 GiB (shared with other jobs),"
        f" Python {platform.python_version()}; files in the page cache.",
        "",
        f"Command: `python bench/dicom.py --files {args.files}` (study under {root}).",
        "",
        "| task | side | wall s | peak RSS MiB | rate |",
        "|---|---|---|---|---|",
    ]
    lines += [
        f"| {task} | {side} | {m['seconds']:.2f} | {mib(m['peak_rss'])} | {rate} |"
        for task, side, m, rate in rows
    ]
    lines += [
        "",
        "Ratios (reference wall / mriflow wall, > 1 means mriflow is faster):",
        "",
        f"- discovery: {discovery_reference['seconds'] / discovery_serial['seconds']:.2f} "
        f"(2 processes: {discovery_reference['seconds'] / discovery_ours['seconds']:.2f})",
        f"- load + mean, threads: {load_reference['seconds'] / load_threads['seconds']:.2f}; "
        f"peak RSS {mib(load_threads['peak_rss'])} vs {mib(load_reference['peak_rss'])} MiB",
        f"- load + mean, threads, 16 MiB chunks: "
        f"{load_reference['seconds'] / load_small_chunks['seconds']:.2f}; peak RSS "
        f"{mib(load_small_chunks['peak_rss'])} vs {mib(load_reference['peak_rss'])} MiB",
        f"- load + mean, 2 processes: {load_reference['seconds'] / load_processes['seconds']:.2f};"
        f" peak RSS {mib(load_processes['peak_rss'])} vs "
        f"{mib(load_reference['peak_rss'])} MiB",
    ]
    text = "\n".join(lines) + "\n"
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
