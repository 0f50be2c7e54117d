"""Progress bars: drawn on a terminal (a real pseudo-terminal), never in pipes or with -q."""

from __future__ import annotations

import io
import os
import pty
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import dask
import dask.array as da
import pytest
from rich.console import Console

from mriflow.progress import compute_progress

BAR = re.compile(r"(\d+)/(\d+)\s+tasks")
ESCAPE = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


def bar_counts(shown: str) -> list[tuple[int, int]]:
    """(done, total) of every frame drawn, colours stripped."""
    return [(int(a), int(b)) for a, b in BAR.findall(ESCAPE.sub("", shown))]


def script() -> str:
    installed = Path(sys.executable).parent / "mriflow"
    return str(installed if installed.exists() else shutil.which("mriflow"))


def on_terminal(*args: object, cwd: Path | None = None) -> tuple[int, str]:
    """Run the console script with a pseudo-terminal as stdout/stderr; (exit code, output)."""
    primary, secondary = pty.openpty()
    env = dict(os.environ, TERM="xterm", COLUMNS="120")
    env.pop("NO_COLOR", None)
    process = subprocess.Popen(
        [script(), *map(str, args)], stdout=secondary, stderr=secondary, env=env, cwd=cwd
    )
    os.close(secondary)
    chunks = []
    while True:
        try:
            data = os.read(primary, 65536)
        except OSError:  # the child closed the terminal
            break
        if not data:
            break
        chunks.append(data)
    os.close(primary)
    return process.wait(timeout=300), b"".join(chunks).decode(errors="replace")


@pytest.fixture(scope="module")
def phantom(tmp_path_factory):
    import mriflow

    return mriflow.data.write_dwi_phantom(tmp_path_factory.mktemp("phantom"), shape=(12, 14, 8))


def test_fit_draws_a_bar_on_a_terminal_and_none_with_quiet(phantom, tmp_path):
    code, shown = on_terminal("fit", "dti", phantom["dwi"], tmp_path / "maps")
    assert code == 0, shown
    counts = bar_counts(shown)
    assert counts, shown
    assert any(done == total > 0 for done, total in counts)  # a stage's bar reached its end
    assert "\r" in shown  # redrawn in place, as a terminal bar is
    assert (tmp_path / "maps" / "dti_fa.nii.gz").exists()

    code, shown = on_terminal("-q", "fit", "dti", phantom["dwi"], tmp_path / "quiet")
    assert code == 0, shown
    assert not bar_counts(shown)
    assert shown.strip() == ""
    assert (tmp_path / "quiet" / "dti_fa.nii.gz").exists()


def slow_sum(n_blocks: int) -> da.Array:
    def wait(block):
        time.sleep(0.15)
        return block

    return da.ones(n_blocks * 4, chunks=4).map_blocks(wait, dtype=float).sum()


def test_local_scheduler_counts_every_task():
    shown = io.StringIO()
    console = Console(file=shown, force_terminal=True, width=100)
    with dask.config.set(scheduler="threads"), compute_progress("sum", console=console):
        assert float(slow_sum(6).compute()) == 24.0
    counts = bar_counts(shown.getvalue())
    assert any(0 < done < total for done, total in counts), counts  # seen mid-way
    done, total = counts[-1]
    assert done == total >= 6, counts  # every task of the optimised graph, one per block at least


def test_cluster_progress_from_the_scheduler():
    from mriflow.cluster import get_client

    shown = io.StringIO()
    console = Console(file=shown, force_terminal=True, width=100)
    with (
        get_client(n_workers=1, threads_per_worker=1, dashboard=False) as client,
        compute_progress("sum", console=console, client=client),
    ):
        assert float(slow_sum(12).compute()) == 48.0
    counts = bar_counts(shown.getvalue())
    assert any(0 < done < total for done, total in counts), counts  # seen mid-way
    assert max(total for _, total in counts) >= 12  # at least the 12 slow tasks


def test_not_a_terminal_draws_nothing():
    shown = io.StringIO()
    with compute_progress("sum", console=Console(file=shown)):
        assert float(slow_sum(2).compute(scheduler="threads")) == 8.0
    assert shown.getvalue() == ""
