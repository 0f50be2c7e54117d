"""Cost of verifying a .nii.gz's CRC-32 and length during a full pass (issue 12).

    python bench/gzip_integrity.py [PATH]   (default: the 1 GiB file of open_and_reduce.py)

mriflow verifies integrity by building the gzip index in one validated pass
(indexed_gzip's ``build_full_index`` with CRC checks on). This compares that pass with the
same pass with checks off, and zlib's raw inflate with and without a CRC-32 over the output.
"""

from __future__ import annotations

import sys
import tempfile
import time
import zlib
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from _common import machine, table


def timed(function) -> float:
    started = time.perf_counter()
    function()
    return time.perf_counter() - started


def _skip_gzip_header(stream) -> None:
    """Move past a gzip member header (RFC 1952), optional fields included."""
    header = stream.read(10)
    flags = header[3]
    if flags & 4:  # FEXTRA
        stream.read(int.from_bytes(stream.read(2), "little"))
    for flag in (8, 16):  # FNAME, FCOMMENT: zero-terminated
        if flags & flag:
            while stream.read(1) not in (b"\0", b""):
                pass
    if flags & 2:  # FHCRC
        stream.read(2)


def zlib_pass(path: Path, crc: bool) -> None:
    inflater = zlib.decompressobj(-15)
    checksum = 0
    with path.open("rb") as stream:
        _skip_gzip_header(stream)
        while block := stream.read(16 << 20):
            out = inflater.decompress(block)
            if crc:
                checksum = zlib.crc32(out, checksum)


def index_pass(path: Path, skip_crc: bool) -> None:
    from indexed_gzip import IndexedGzipFile

    with IndexedGzipFile(str(path), spacing=1 << 20, skip_crc_check=skip_crc) as handle:
        handle.build_full_index()


def main() -> None:
    default = Path(tempfile.gettempdir()) / "mriflow-bench" / "bold_128x128x64x512.nii.gz"
    path = Path(sys.argv[1]) if len(sys.argv) > 1 else default
    if not path.exists():
        sys.exit(f"{path}: run bench/open_and_reduce.py first (it writes this file)")
    runs = {
        "zlib inflate, no CRC": lambda: zlib_pass(path, crc=False),
        "zlib inflate + CRC-32": lambda: zlib_pass(path, crc=True),
        "index pass, checks off": lambda: index_pass(path, skip_crc=True),
        "index pass, CRC + length checked (mriflow)": lambda: index_pass(path, skip_crc=False),
    }
    seconds = {name: min(timed(run) for _ in range(2)) for name, run in runs.items()}
    base_zlib = seconds["zlib inflate, no CRC"]
    base_index = seconds["index pass, checks off"]
    rows = []
    for name, value in seconds.items():
        base = base_zlib if "zlib" in name else base_index
        rows.append(
            {
                "pass": name,
                "seconds": f"{value:.2f}",
                "check cost": f"{100 * (value / base - 1):+.1f}%",
            }
        )
    size = path.stat().st_size / 2**30
    print(f"\n{path.name} ({size:.2f} GiB compressed); machine: {machine()}; best of 2\n")
    print(table(rows, ["pass", "seconds", "check cost"]))


if __name__ == "__main__":
    main()
