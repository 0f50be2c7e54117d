""".nii.gz -> NIfTI-Zarr for a >= 2 GB 4D image: mriflow vs nibabel get_fdata + zarr.save.

Run heavy jobs one at a time on the shared machine::

    flock /tmp/mriflow-heavy.lock python bench/convert.py [--data /tmp/zarr-data]

Each side runs in a fresh interpreter that reports its wall time and its own peak RSS
(``ru_maxrss``). The practical limit is the raw gzip inflate speed of the same file (one
core, Python's zlib, output discarded), measured in the same run. The image is generated
deterministically (tissue sphere plus Gaussian noise, int16, 782 volumes) the first time.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import textwrap
import time
import zlib
from pathlib import Path

import numpy as np

SHAPE = (128, 128, 80, 782)  # int16: 2.05 GB of voxels (--volumes changes the last)
SEED = 20261122

PROBE = """
import json, resource, time
{setup}
started = time.perf_counter()
{body}
elapsed = time.perf_counter() - started
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
print("@@" + json.dumps({{"seconds": elapsed, "peak_rss": peak}}))
"""


def measure(body: str, setup: str = "") -> dict[str, float]:
    """Run ``setup`` (untimed) then ``body`` (timed) in a new interpreter."""
    code = PROBE.format(setup=textwrap.dedent(setup).strip(), body=textwrap.dedent(body).strip())
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    return json.loads(out.split("@@")[-1])


def generate(path: Path) -> None:
    """Write the 4D int16 .nii.gz volume by volume through one gzip stream (level 1)."""
    import nibabel as nib

    header = nib.Nifti1Header()
    header.set_data_shape(SHAPE)
    header.set_data_dtype(np.int16)
    header.set_xyzt_units("mm", "sec")
    affine = np.diag([-2.0, 2.0, 2.0, 1.0])
    affine[:3, 3] = [127.0, -127.0, -79.0]
    header.set_sform(affine, code=1)
    header.set_qform(affine, code=1)
    header.set_zooms((2.0, 2.0, 2.0, 3.2))
    header.set_data_offset(352)
    grid = np.indices(SHAPE[:3], dtype=np.float32)
    centre = (np.asarray(SHAPE[:3], np.float32)[:, None, None, None] - 1) / 2
    radius = np.sqrt((((grid - centre) / centre) ** 2).sum(0))
    tissue = np.where(radius < 0.9, 1000.0 - 300.0 * radius, 0.0).astype(np.float32)
    partial = path.with_name(path.name + ".partial")
    compressor = zlib.compressobj(1, zlib.DEFLATED, 31)
    with partial.open("wb") as stream:
        head = bytearray()
        header_bytes = header.binaryblock
        head += header_bytes + b"\0" * (352 - len(header_bytes))
        stream.write(compressor.compress(bytes(head)))
        for volume in range(SHAPE[3]):
            rng = np.random.default_rng([SEED, volume])
            attenuation = 1.0 if volume < 10 else 0.3 + 0.4 * ((volume * 7919) % 97) / 97
            values = tissue * attenuation + rng.normal(0, 20, size=SHAPE[:3]).astype(np.float32)
            block = np.clip(values, 0, 32767).astype("<i2")
            stream.write(compressor.compress(block.tobytes(order="F")))
        stream.write(compressor.flush())
    os.replace(partial, path)


def machine() -> str:
    load = os.getloadavg()
    return (
        f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}, "
        f"load average at start {load[0]:.1f}"
    )


def main() -> None:
    global SHAPE
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data", type=Path, default=Path("/tmp/zarr-data"))
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "zarr.md")
    parser.add_argument("--volumes", type=int, default=SHAPE[3], help="smaller for a dry run")
    args = parser.parse_args()
    SHAPE = (*SHAPE[:3], args.volumes)
    args.data.mkdir(parents=True, exist_ok=True)
    source = args.data / f"bench_dwi_{SHAPE[3]}.nii.gz"
    if not source.exists():
        started = time.perf_counter()
        generate(source)
        print(f"generated {source} in {time.perf_counter() - started:.0f} s", flush=True)
    raw_bytes = int(np.prod(SHAPE)) * 2
    header = f"machine: {machine()}"
    print(header, flush=True)

    # the limit: bare zlib inflate of the same stream, with the converter's own output
    # buffer size, best of two runs (a conservative reference on a shared machine)
    inflate_runs = [
        measure(
            f"""
        with open({str(source)!r}, "rb") as stream:
            decompressor = zlib.decompressobj(31)
            total = 0
            while block := stream.read(8 << 20):
                data = block
                while data:
                    total += len(decompressor.decompress(data, INFLATE_OUTPUT_BYTES))
                    data = decompressor.unconsumed_tail
        """,
            setup="import zlib\nfrom mriflow.io.zarr._stream import INFLATE_OUTPUT_BYTES",
        )
        for _ in range(2)
    ]
    inflate = min(inflate_runs, key=lambda run: run["seconds"])
    print("inflate", inflate_runs, flush=True)

    ours_store = args.data / "mriflow.zarr"
    shutil.rmtree(ours_store, ignore_errors=True)
    ours = measure(
        f"mriflow.convert({str(source)!r}, {str(ours_store)!r})",
        setup="import mriflow",
    )
    print("mriflow", ours, flush=True)

    naive_store = args.data / "naive.zarr"
    shutil.rmtree(naive_store, ignore_errors=True)
    naive = measure(
        f"""
        data = nib.load({str(source)!r}).get_fdata(dtype=np.float32)
        zarr.save({str(naive_store)!r}, data)
        """,
        setup="import nibabel as nib, numpy as np, zarr",
    )
    print("naive", naive, flush=True)

    # correctness spot check: one slab of every volume, store vs nibabel
    import nibabel as nib

    import mriflow

    stored = mriflow.open_zarr(ours_store)
    expected = np.asarray(nib.load(source).dataobj[:, :, 40:42, :])
    assert np.array_equal(stored.data[:, :, 40:42, :].compute(), expected)

    def size(path: Path) -> int:
        return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())

    rows = [
        ("raw gzip inflate (limit)", inflate, "-"),
        ("mriflow convert (blosc-zstd)", ours, f"{size(ours_store) / 1e9:.2f} GB"),
        ("nibabel get_fdata(float32) + zarr.save", naive, f"{size(naive_store) / 1e9:.2f} GB"),
    ]
    lines = [
        "# zarr: .nii.gz -> NIfTI-Zarr conversion",
        "",
        f"- {header}; 2 cores and 24 GiB shared with other jobs",
        "- command: `flock /tmp/mriflow-heavy.lock python bench/convert.py`",
        f"- input: {source.name}, shape {SHAPE} int16, {raw_bytes / 1e9:.2f} GB of voxels, "
        f"{source.stat().st_size / 1e9:.2f} GB gzip (level 1)",
        "- mriflow: `mriflow.convert(src, store)` with defaults (zarr v3, shards of spatial "
        f"blocks x all {SHAPE[3]} volumes, inner chunks of a volume range compressed while the "
        "gzip stream is inflated, blosc-zstd level 1 + bitshuffle)",
        "- naive: `nibabel.load().get_fdata(dtype=float32)` (float64 would need 8 GB) then "
        "`zarr.save` (zarr defaults)",
        "",
        "| path | wall (s) | MB/s of voxels | peak RSS (MB) | store size |",
        "|---|---|---|---|---|",
    ]
    for name, result, stored_size in rows:
        lines.append(
            f"| {name} | {result['seconds']:.1f} | {raw_bytes / 1e6 / result['seconds']:.0f} | "
            f"{result['peak_rss'] / 1e6:.0f} | {stored_size} |"
        )
    lines += [
        "",
        f"- mriflow vs naive wall time: {ours['seconds'] / naive['seconds']:.2f}x "
        f"(naive / mriflow = {naive['seconds'] / ours['seconds']:.2f})",
        f"- mriflow vs inflate limit: {ours['seconds'] / inflate['seconds']:.2f}x the inflate "
        "time (goal <= 1.5x)",
        f"- mriflow peak RSS: {100 * ours['peak_rss'] / naive['peak_rss']:.1f}% of the naive "
        "path (goal < 20%)",
    ]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
