"""Progress bars on the terminal while dask computes (``mriflow run``, ``demo``, ``fit``, ...).

One :func:`compute_progress` block is one bar, drawn by ``rich``. It counts dask tasks from
two sources, whichever applies to where the work runs:

- local schedulers (threads, processes, synchronous): a :class:`dask.callbacks.Callback`
  adds each graph's tasks to the total when the graph starts and advances on every finished
  task (what ``dask.diagnostics.ProgressBar`` counts);
- a dask.distributed cluster (the default client): a background thread asks the scheduler
  twice a second for its task groups' state counts (what the dashboard's progress plot
  shows) and sums the groups seen during the block.

Nothing is drawn when the console is not a terminal (CI logs, pipes), so logs get no
carriage-return frames, or when progress is turned off (``--quiet``).
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from typing import Any

from dask.callbacks import Callback

from mriflow.cluster import current_client

__all__ = ["ProgressFactory", "compute_progress", "no_progress", "terminal_progress"]

log = logging.getLogger(__name__)

ProgressFactory = Callable[[str], AbstractContextManager[Any]]
"""Makes the progress context of one stage from its description."""

_FINISHED_STATES = ("memory", "released", "forgotten", "erred")
POLL_SECONDS = 0.5


def no_progress(description: str) -> AbstractContextManager[Any]:
    """A :data:`ProgressFactory` that shows nothing."""
    return contextlib.nullcontext()


def scheduler_task_counts(dask_scheduler: Any) -> dict[str, tuple[int, int]]:
    """``{task group: (tasks, finished tasks)}`` on a distributed scheduler.

    Runs on the scheduler (``Client.run_on_scheduler``); a task counts as finished once it
    is in memory, released after use, forgotten or erred.
    """
    counts: dict[str, tuple[int, int]] = {}
    for name, group in dask_scheduler.task_groups.items():
        states = group.states
        counts[str(name)] = (
            int(sum(states.values())),
            int(sum(states.get(state, 0) for state in _FINISHED_STATES)),
        )
    return counts


class _LocalTasks(Callback):
    """Counts the tasks of graphs run by dask's local schedulers into a rich task."""

    def __init__(self, advance: Callable[[int, int], None]) -> None:
        super().__init__()
        self._advance = advance

    def _start_state(self, dsk: Any, state: dict[str, Any]) -> None:
        total = sum(len(state[key]) for key in ("ready", "waiting", "running", "finished"))
        self._advance(total, len(state["finished"]))

    def _posttask(self, key: Any, result: Any, dsk: Any, state: Any, worker_id: Any) -> None:
        self._advance(0, 1)


class _ClusterTasks:
    """Polls a distributed scheduler for task-group counts in a daemon thread."""

    def __init__(self, client: Any, update: Callable[[int, int], None]) -> None:
        self._client = client
        self._update = update
        self._stop = threading.Event()
        self._seen: dict[str, tuple[int, int]] = {}
        self._thread = threading.Thread(target=self._run, name="mriflow-progress", daemon=True)

    def __enter__(self) -> _ClusterTasks:
        try:  # groups that exist already (held results) are not part of this block
            self._before = set(self._client.run_on_scheduler(scheduler_task_counts))
        except Exception as exc:  # a scheduler that cannot import mriflow: no bar, no failure
            log.info("no progress from the scheduler: %s", exc)
            return self
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5)

    def _run(self) -> None:
        while not self._stop.wait(POLL_SECONDS):
            try:
                counts = self._client.run_on_scheduler(scheduler_task_counts)
            except Exception as exc:  # the cluster closing under us ends the bar
                log.debug("progress polling stopped: %s", exc)
                return
            for name, (total, done) in counts.items():
                if name not in self._before:
                    self._seen[name] = (total, done)
            # a group gone from the scheduler was forgotten: all of its tasks finished
            for name, (total, _) in list(self._seen.items()):
                if name not in counts:
                    self._seen[name] = (total, total)
            totals = [value[0] for value in self._seen.values()]
            finished = [value[1] for value in self._seen.values()]
            self._update(sum(totals), sum(finished))


@contextlib.contextmanager
def compute_progress(
    description: str,
    *,
    console: Any = None,
    enabled: bool = True,
    client: Any = None,
) -> Iterator[None]:
    """A progress bar for the dask work done inside the ``with`` block.

    ``console`` is the :class:`rich.console.Console` to draw on (default: stdout); nothing
    is drawn when it is not a terminal or ``enabled`` is false. ``client`` is the
    distributed client whose scheduler is polled (default: the default client, if any).
    """
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
    )

    console = console if console is not None else Console()
    if not enabled or not console.is_terminal or console.is_dumb_terminal:
        yield
        return
    bar = Progress(
        TextColumn("  {task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("tasks"),
        TimeElapsedColumn(),
        console=console,
        transient=True,
    )
    task = bar.add_task(description, total=None)
    lock = threading.Lock()
    local = {"total": 0, "done": 0}

    def advance_local(total: int, done: int) -> None:
        with lock:
            local["total"] += total
            local["done"] += done
            bar.update(task, total=local["total"], completed=local["done"])

    def update_cluster(total: int, done: int) -> None:
        with lock:
            bar.update(task, total=local["total"] + total, completed=local["done"] + done)

    client = client if client is not None else current_client()
    cluster = _ClusterTasks(client, update_cluster) if client is not None else None
    with bar, _LocalTasks(advance_local), cluster or contextlib.nullcontext():
        yield


def terminal_progress(console: Any, enabled: bool) -> ProgressFactory:
    """A :data:`ProgressFactory` drawing on ``console`` (nothing when not ``enabled``)."""

    def factory(description: str) -> AbstractContextManager[Any]:
        return compute_progress(description, console=console, enabled=enabled)

    return factory
