"""Track on a SLURM or PBS cluster through dask-jobqueue (settings: cluster/jobqueue.yaml).

    python cluster/hpc.py slurm --jobs 8 fit.zarr tracts.zarr [--resume] [--print-job-script]

Runs on a login node: the dask scheduler lives in this process, each batch job is one
worker. Stores must be on a filesystem every node sees (or an object-store URL). A killed
run (walltime, preemption) is continued with ``--resume``: finished batches are kept.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import dask.config
import yaml


def make_cluster(kind: str, jobs: int, **options):  # type: ignore[no-untyped-def]
    """A dask-jobqueue cluster from cluster/jobqueue.yaml (``options`` override it),
    scaled to ``jobs`` jobs."""
    from dask_jobqueue import PBSCluster, SLURMCluster

    settings = yaml.safe_load(Path(__file__).with_name("jobqueue.yaml").read_text())
    dask.config.update(dask.config.config, settings, priority="new")
    cluster = {"slurm": SLURMCluster, "pbs": PBSCluster}[kind](**options)
    if jobs:
        cluster.scale(jobs=jobs)
    return cluster


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("kind", choices=["slurm", "pbs"])
    parser.add_argument("fields", nargs="?", help="fit store (zarr) with shm_coeff and gfa")
    parser.add_argument("output", nargs="?", help="streamline store to write")
    parser.add_argument("--jobs", type=int, default=4)
    parser.add_argument("--resume", action="store_true")
    parser.add_argument("--print-job-script", action="store_true")
    args = parser.parse_args()
    if args.print_job_script:
        print(make_cluster(args.kind, 0).job_script())
        return
    from distributed import Client

    import mriflow.track as mt
    from mriflow.io.zarr import open_zarr

    with make_cluster(args.kind, args.jobs) as cluster, Client(cluster) as client:
        fields = open_zarr(args.fields)
        stopping = mt.ThresholdStopping(fields.gfa, 0.2)
        mask = (fields.gfa > 0.2).astype("uint8")
        mask.attrs.update(fields.gfa.attrs)
        seeds = mt.seeds_from_mask(mask, density=2)
        mt.track_to_zarr(
            fields, stopping, seeds, args.output, method="probabilistic", rng=42,
            client=client, resume=args.resume,
        )  # fmt: skip


if __name__ == "__main__":
    main()
