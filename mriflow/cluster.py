"""Dask clients for mriflow: an embedded local cluster by default, or an existing scheduler.

The embedded cluster listens on 127.0.0.1 only — scheduler, workers and dashboard — since
``distributed.LocalCluster()`` on its own serves its dashboard on every interface. A remote
scheduler is named by argument or by the ``MRIFLOW_SCHEDULER`` environment variable; secure
it with TLS through ``distributed.security.Security`` (see cluster/README.md).
"""

from __future__ import annotations

import os
import sys
from typing import Any

__all__ = ["SCHEDULER_ENV", "current_client", "get_client"]

SCHEDULER_ENV = "MRIFLOW_SCHEDULER"


def get_client(
    address: str | None = None,
    *,
    n_workers: int | None = None,
    threads_per_worker: int | None = None,
    memory_limit: str | float | None = "auto",
    processes: bool = True,
    dashboard: bool = True,
    **cluster_kwargs: Any,
) -> Any:
    """A ``distributed.Client``: to ``address`` (or ``$MRIFLOW_SCHEDULER``) if given, else
    to a new loopback-only ``LocalCluster`` sized to this machine.

    The local cluster's workers start without ``MALLOC_TRIM_THRESHOLD_``, which
    distributed's nanny sets by default (``distributed.nanny.pre-spawn-environ``): setting
    it fixes glibc's mmap threshold, so every large array a task allocates is a fresh
    mapping, faulted in page by page; tracking batches ran ~9 % slower in such workers
    than in the client (``bench/results/dtrack.md``)."""
    import dask
    from distributed import Client

    address = address or os.environ.get(SCHEDULER_ENV)
    if address:
        return Client(address)
    if not dashboard:
        cluster_kwargs.setdefault("scheduler_kwargs", {})["dashboard"] = False
    environ = dict(dask.config.get("distributed.nanny.pre-spawn-environ", default={}) or {})
    environ.pop("MALLOC_TRIM_THRESHOLD_", None)
    # Client starts the LocalCluster itself, so closing the client also stops the cluster;
    # its nannies read the environment for their workers when they are made, here.
    with dask.config.set({"distributed.nanny.pre-spawn-environ": environ}):
        return Client(
            host="127.0.0.1",
            n_workers=n_workers,
            threads_per_worker=threads_per_worker,
            memory_limit=memory_limit,
            processes=processes,
            dashboard_address="127.0.0.1:0",  # never distributed's default of every interface
            **cluster_kwargs,
        )


def current_client() -> Any:
    """The active ``distributed`` client (``distributed.default_client()``), or None.

    Does not import distributed when nothing has: no client can exist before it is imported.
    """
    if "distributed" not in sys.modules:
        return None
    from distributed import default_client

    try:
        return default_client()
    except ValueError:  # distributed imported, no client made
        return None
