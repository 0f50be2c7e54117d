"""Diagnostic for bench/cli.py: the small demo in one process, progress bars drawn to a
forced-terminal console writing to /dev/null, vs no bars, vs bars without scheduler polling.

    flock /tmp/mriflow-heavy.lock python bench/cli_inprocess.py
"""

from __future__ import annotations

import os
import tempfile
import time

from rich.console import Console

import mriflow.progress as progress_module
from mriflow.demo import run_demo


def run(kind: str, out: str) -> dict[str, float]:
    console = Console(file=open(os.devnull, "w"), force_terminal=True, width=100)  # noqa: SIM115
    factory = (
        progress_module.no_progress
        if kind == "none"
        else progress_module.terminal_progress(console, enabled=True)
    )
    original = progress_module._default_client
    if kind == "bars-no-poll":
        progress_module._default_client = lambda: None
    try:
        return run_demo(out, shape=(24, 28, 20), say=lambda _: None, progress=factory)["stages"]
    finally:
        progress_module._default_client = original


if __name__ == "__main__":
    root = tempfile.mkdtemp(prefix="cli-inprocess-")
    for round_index in range(2):
        for kind in ("none", "bars", "bars-no-poll"):
            started = time.perf_counter()
            stages = run(kind, os.path.join(root, kind))
            elapsed = time.perf_counter() - started
            shown = {name: round(seconds, 1) for name, seconds in stages.items()}
            print(round_index, kind, f"{elapsed:.1f} s", shown, flush=True)
