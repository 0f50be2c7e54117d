"""Open + full-volume mean of a >= 1 GiB 4D image: mriflow (local threads) vs nibabel.

    python bench/open_and_reduce.py [--data DIR] [--shape 128,128,64,512]

Each variant runs in its own fresh interpreter so peak RSS is its own. The reference is
``nibabel.load(path).get_fdata().mean()``; mriflow opens lazily and reduces chunk by chunk on
dask's threaded scheduler, with its default chunks (spatial slabs x whole time axis, what
voxelwise fits want) and with chunks along time (contiguous on disk, what a pure streaming
reduction wants). Prints a markdown table; add it to bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from _common import machine, measure, table, write_4d

NIBABEL_SETUP = "import nibabel as nib"
NIBABEL = """
result = nib.load({path!r}).get_fdata().mean()
"""

MRIFLOW_SETUP = """
import dask
import mriflow
dask.config.set(scheduler="threads")
"""
MRIFLOW = """
result = mriflow.open_image({path!r}, chunks={chunks}).mean().compute()
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=Path(tempfile.gettempdir()) / "mriflow-bench")
    parser.add_argument("--shape", default="128,128,64,512")
    parser.add_argument("--repeat", type=int, default=1)
    args = parser.parse_args()
    shape = tuple(int(n) for n in args.shape.split(","))
    args.data.mkdir(parents=True, exist_ok=True)
    rows = []
    for suffix in (".nii", ".nii.gz"):
        path = args.data / f"bold_{'x'.join(map(str, shape))}{suffix}"
        if not path.exists():
            started = time.perf_counter()
            write_4d(path, shape)
            print(
                f"wrote {path} ({path.stat().st_size / 2**30:.2f} GiB on disk) in "
                f"{time.perf_counter() - started:.0f} s",
                flush=True,
            )
        reference = measure(NIBABEL.format(path=str(path)), NIBABEL_SETUP, args.repeat)
        rows.append(row(path, "nibabel get_fdata().mean()", reference, reference))
        for label, chunks in (
            ("mriflow, auto chunks", '"auto"'),
            ("mriflow, chunks={'t': 32}", "{'t': 32}"),
        ):
            result = measure(
                MRIFLOW.format(path=str(path), chunks=chunks), MRIFLOW_SETUP, args.repeat
            )
            assert abs(result["result"] - reference["result"]) <= 1e-9 * abs(reference["result"])
            rows.append(row(path, label, result, reference))
        print(table(rows[-3:], COLUMNS), flush=True)
    print(f"\nmachine: {machine()}; image {shape} int16 = {rows[0]['size']}\n")
    print(table(rows, COLUMNS))


COLUMNS = ["file", "method", "wall s", "wall vs nibabel", "peak RSS MiB", "RSS vs nibabel"]


def row(path: Path, method: str, result: dict, reference: dict) -> dict:
    return {
        "file": path.name.split("_", 1)[1] if "_" in path.name else path.name,
        "size": f"{path.stat().st_size / 2**30:.2f} GiB",
        "method": method,
        "wall s": f"{result['seconds']:.2f}",
        "wall vs nibabel": f"{result['seconds'] / reference['seconds']:.2f}x",
        "peak RSS MiB": f"{result['peak_rss'] / 2**20:.0f}",
        "RSS vs nibabel": f"{100 * result['peak_rss'] / reference['peak_rss']:.0f}%",
    }


if __name__ == "__main__":
    main()
