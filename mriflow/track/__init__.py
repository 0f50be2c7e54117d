"""Fiber tracking: seeds, stopping criteria, direction getters, the numba engine, output.

```python
seeds = mriflow.track.seeds_from_mask(wm, density=2)
stop = mriflow.track.ThresholdStopping(fit.gfa, 0.25)
tg = mriflow.track.track(fit, stop, seeds, method="probabilistic", step_size=0.5, rng=42)
tg.save("prob.trx"); mriflow.track.load("prob.trx")
```
"""

from mriflow.track.api import (
    FieldArrays,
    TrackingJob,
    TrackingParams,
    plan_tracking,
    seed_directions,
    track,
    track_batch,
)
from mriflow.track.directions import (
    DIRECTION_GETTERS,
    direction_getter,
    register_direction_getter,
)
from mriflow.track.distributed import track_to_zarr
from mriflow.track.kernels import STOP_REASONS
from mriflow.track.seeds import random_seeds, seeds_from_mask
from mriflow.track.sphere import sphere
from mriflow.track.stopping import (
    STOPPING_CHECKS,
    BinaryStopping,
    StoppingCriterion,
    ThresholdStopping,
)
from mriflow.track.store import StreamlineStore, open_tractogram
from mriflow.track.tractogram import Tractogram, load

__all__ = [
    "DIRECTION_GETTERS",
    "STOPPING_CHECKS",
    "STOP_REASONS",
    "BinaryStopping",
    "FieldArrays",
    "StoppingCriterion",
    "StreamlineStore",
    "ThresholdStopping",
    "Tractogram",
    "TrackingJob",
    "TrackingParams",
    "direction_getter",
    "load",
    "open_tractogram",
    "plan_tracking",
    "random_seeds",
    "register_direction_getter",
    "seed_directions",
    "seeds_from_mask",
    "sphere",
    "track",
    "track_batch",
    "track_to_zarr",
]
