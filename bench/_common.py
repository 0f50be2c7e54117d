"""Benchmark helpers: run a snippet in a fresh process, time it, read its peak RSS."""

from __future__ import annotations

import json
import platform
import subprocess
import sys
import textwrap

import numpy as np

PROBE = """
import json, resource, time
{setup}
started = time.perf_counter()
{body}
elapsed = time.perf_counter() - started
# VmHWM is this process's own high-water mark; ru_maxrss would start from the parent's peak,
# which Linux carries across fork and exec.
peak = next(int(line.split()[1]) * 1024 for line in open("/proc/self/status")
            if line.startswith("VmHWM:"))
print("@@" + json.dumps({{"seconds": elapsed, "peak_rss": peak, "result": float(result)}}))
"""


def measure(body: str, setup: str = "", repeat: int = 1) -> dict[str, float]:
    """Run ``setup`` (imports, untimed) then ``body`` (timed; sets ``result``) in a new
    interpreter; best wall time of ``repeat``, highest peak RSS."""
    runs = []
    for _ in range(repeat):
        code = PROBE.format(
            setup=textwrap.dedent(setup).strip(), body=textwrap.dedent(body).strip()
        )
        out = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, check=True
        ).stdout
        runs.append(json.loads(out.split("@@")[-1]))
    best = min(runs, key=lambda r: r["seconds"])
    best["peak_rss"] = max(r["peak_rss"] for r in runs)
    return best


def machine() -> str:
    import os

    cpu = platform.processor() or platform.machine()
    return f"{cpu}, {os.cpu_count()} cores, Python {platform.python_version()}"


def write_4d(path, shape, seed=0, chunk_volumes=16):
    """A deterministic int16 4D NIfTI of any size, written block by block (bounded memory)."""
    import dask.array as da

    import mriflow

    def block(block_info=None):
        loc = block_info[None]["array-location"]
        shape_ = block_info[None]["chunk-shape"]
        rng = np.random.default_rng([seed, loc[3][0]])
        grid = np.indices(shape_[:3], dtype=np.float32)
        centre = (np.asarray(shape[:3], np.float32)[:, None, None, None] - 1) / 2
        radius = np.sqrt((((grid - centre) / centre) ** 2).sum(0))
        tissue = np.where(radius < 0.9, 1000.0 - 300.0 * radius, 0.0).astype(np.float32)
        noise = rng.normal(0, 20, size=shape_).astype(np.float32)
        return np.clip(tissue[..., None] + noise, 0, 32767).astype(np.int16)

    volumes = [chunk_volumes] * (shape[3] // chunk_volumes)
    if shape[3] % chunk_volumes:
        volumes.append(shape[3] % chunk_volumes)
    chunks = ((shape[0],), (shape[1],), (shape[2],), tuple(volumes))
    data = da.map_blocks(block, dtype=np.int16, chunks=chunks, meta=np.empty((0,) * 4, np.int16))
    image = mriflow.from_array(data, np.diag([2.0, 2.0, 2.0, 1.0]))
    return image.mri.to_nifti(path)


def table(rows: list[dict], columns: list[str]) -> str:
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(str(r[c]) for c in columns) + " |" for r in rows]
    return "\n".join(lines)


def dumps(obj) -> str:
    return json.dumps(obj, indent=2)
