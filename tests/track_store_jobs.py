"""Jobs the distributed-tracking tests run in their own processes (to kill them, or to read
their peak RSS): ``python tests/track_store_jobs.py JOB ARGS...``."""

from __future__ import annotations

import json
import resource
import sys
from functools import lru_cache
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))

from track_phantom import GFA_THRESHOLD, bundle_seeds, fitted

#: Options shared by every run the tests compare.
OPTIONS = {"method": "probabilistic", "rng": 3, "step_size": 0.5, "max_length": 120.0}


#: A file the fields are shared through, so every process tracks the very same bits: dipy's
#: fits are not bit-reproducible across processes (BLAS thread counts differ), and a resume
#: rightly refuses fields whose fingerprint changed.
FIELDS_FILE = "MRIFLOW_TEST_TRACK_FIELDS"


def _fields():
    import os
    import pickle

    shared = os.environ.get(FIELDS_FILE)
    if shared and Path(shared).exists():
        with open(shared, "rb") as stream:  # written by this test suite, not user data
            return pickle.load(stream)
    phantom, dataset, _, _ = fitted()
    if shared:
        with open(shared, "wb") as stream:
            pickle.dump((phantom, dataset), stream)
    return phantom, dataset


@lru_cache(maxsize=1)
def inputs():
    """(fit Dataset, stopping criterion, seeds) of the bundle phantom."""
    import mriflow.track as mt

    phantom, dataset = _fields()
    seeds, _ = bundle_seeds(phantom, density=2)
    return dataset, mt.ThresholdStopping(dataset.gfa, GFA_THRESHOLD), seeds


def many_inputs(n_seeds: int):
    """Cheap streamlines in bulk: peak following, at most 2 steps, ``n_seeds`` random seeds
    in the white matter."""
    import mriflow
    import mriflow.track as mt

    phantom, dataset, _, _ = fitted()
    mask = mriflow.from_array(phantom.white_matter.astype(np.uint8), phantom.affine)
    seeds = mt.random_seeds(mask, n_seeds, rng=1)
    return dataset, mt.ThresholdStopping(dataset.gfa, GFA_THRESHOLD), seeds


def peak_rss_mib() -> float:
    """This process's peak resident memory in MiB."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main(job: str, *args: str) -> None:
    import mriflow.track as mt

    if job == "track":  # STORE SCHEDULER_FILE BATCH_SIZE [resume]
        from distributed import Client

        store, scheduler_file, batch_size = args[0], args[1], int(args[2])
        dataset, stopping, seeds = inputs()
        with Client(scheduler_file=scheduler_file) as client:
            mt.track_to_zarr(
                dataset,
                stopping,
                seeds,
                store,
                batch_size=batch_size,
                client=client,
                progress=False,
                resume=len(args) > 3,
                **OPTIONS,
            )
    elif job == "open":  # STORE: what export costs before it reads any streamline
        print(len(mt.open_tractogram(args[0])))
    elif job == "million":  # STORE N_SEEDS: through a 2-worker LocalCluster
        from mriflow.cluster import get_client

        dataset, stopping, seeds = many_inputs(int(args[1]))
        with get_client(n_workers=2, threads_per_worker=1) as client:
            before = peak_rss_mib()
            store = mt.track_to_zarr(
                dataset,
                stopping,
                seeds,
                args[0],
                step_size=0.5,
                min_length=0.0,
                max_length=1.0,
                batch_size=20_000,
                client=client,
                progress=False,
            )
            after = peak_rss_mib()
        print(
            json.dumps(
                {
                    "streamlines": len(store),
                    "points": store.n_points,
                    "before_mib": before,
                    "after_mib": after,
                }
            )
        )
    elif job == "export":  # STORE OUT
        mt.open_tractogram(args[0]).export(args[1])
    print(json.dumps({"peak_rss_mib": peak_rss_mib()}))


if __name__ == "__main__":
    main(*sys.argv[1:])
