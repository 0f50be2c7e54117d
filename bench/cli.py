"""`mriflow demo` at the default size on a terminal: per-stage times, with and without bars.

Each run is the real console script in a fresh wrapper process, on a pseudo-terminal (so the
progress bars are drawn exactly as for a user); the wrapper reports wall time and the peak
RSS of its largest descendant (``RUSAGE_CHILDREN``). The reference is the same run on a
``TERM=dumb`` terminal, where rich draws no bars (and nothing polls the scheduler) but the
stage lines still print. Run under the heavy lock:

    flock /tmp/mriflow-heavy.lock python bench/cli.py [OUT_ROOT] [--small]
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

WRAPPER = textwrap.dedent(
    """
    import json, os, pty, resource, subprocess, sys, time
    primary, secondary = pty.openpty()
    env = dict(os.environ, TERM=os.environ.get("BENCH_TERM", "xterm"), COLUMNS="120")
    started = time.perf_counter()
    child = subprocess.Popen(sys.argv[1:], stdout=secondary, stderr=secondary, env=env)
    os.close(secondary)
    chunks = []
    while True:
        try:
            data = os.read(primary, 65536)
        except OSError:
            break
        if not data:
            break
        chunks.append(data)
    code = child.wait()
    elapsed = time.perf_counter() - started
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024
    text = b"".join(chunks).decode(errors="replace")
    print("@@" + json.dumps({"code": code, "seconds": elapsed, "peak_rss": peak, "out": text}))
    """
)
ESCAPE = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
STAGE = re.compile(r"^\s+([a-z +]+): ([0-9.]+) s$", re.MULTILINE)


def run_demo(out_dir: Path, bars: bool, small: bool = False) -> dict:
    script = Path(sys.executable).parent / "mriflow"
    command = [str(script if script.exists() else shutil.which("mriflow")), "demo", str(out_dir)]
    command += ["--small"] if small else []
    env = dict(os.environ, BENCH_TERM="xterm" if bars else "dumb")
    done = subprocess.run(
        [sys.executable, "-c", WRAPPER, *command],
        capture_output=True,
        text=True,
        check=True,
        env=env,
    )
    result = json.loads(done.stdout.split("@@")[-1])
    if result["code"] != 0:
        raise RuntimeError(result["out"][-2000:])
    plain = ESCAPE.sub("", result["out"].replace("\r", "\n"))
    result["stages"] = {name: float(seconds) for name, seconds in STAGE.findall(plain)}
    result["frames"] = result["out"].count("\r\x1b[2K")  # rich's redraw of the bar line
    del result["out"]
    return result


def main() -> None:
    arguments = [a for a in sys.argv[1:] if a != "--small"]
    small = "--small" in sys.argv[1:]  # a quick check of this script, not a benchmark
    root = Path(arguments[0]) if arguments else Path(tempfile.mkdtemp(prefix="cli-"))
    rows: dict[str, dict] = {}
    # alternate the two kinds, several rounds, best of each: the machine is shared
    rounds = 2 if small else 3
    for round_index in range(rounds):
        kinds = (("bars (TERM=xterm)", True), ("no bars (TERM=dumb)", False))
        for name, bars in kinds if round_index % 2 == 0 else kinds[::-1]:
            out_dir = root / ("bars" if bars else "plain")
            row = run_demo(out_dir, bars, small)
            shutil.rmtree(out_dir, ignore_errors=True)
            print(f"round {round_index}: {name} {row['seconds']:.1f} s {row['stages']}")
            if name not in rows or row["seconds"] < rows[name]["seconds"]:
                rows[name] = row
    stages = list(rows["no bars (TERM=dumb)"]["stages"])
    print("| run | " + " | ".join(stages) + " | total | peak RSS | redraws |")
    print("|---" * (len(stages) + 4) + "|")
    for name, row in rows.items():
        cells = [f"{row['stages'].get(stage, float('nan')):.1f} s" for stage in stages]
        print(
            f"| {name} | "
            + " | ".join(cells)
            + f" | {row['seconds']:.1f} s | {row['peak_rss'] / 2**20:.0f} MiB | {row['frames']} |"
        )
    ratio = rows["bars (TERM=xterm)"]["seconds"] / rows["no bars (TERM=dumb)"]["seconds"]
    print(f"\nbest of {rounds}: wall time with bars / without: {ratio:.2f}x")


if __name__ == "__main__":
    main()
