"""Converting an image several times larger than a dask worker's memory limit."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

import mriflow
from mriflow.cluster import get_client
from mriflow.data import oblique_affine
from mriflow.io.zarr._convert import RawFileArray

WORKER_LIMIT = 300_000_000
SHAPE = (256, 256, 96, 64)  # int16: 805 MB, 2.7x one worker's limit


def _peak_rss_bytes() -> int:
    """High-water RSS of this process since it started (ru_maxrss would include the parent's
    from before the worker's fork and exec)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


@pytest.fixture(scope="module")
def large_nifti(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, np.ndarray]:
    """An uncompressed 4D int16 NIfTI written volume by volume (never whole in memory), and
    the sum of each volume."""
    path = tmp_path_factory.mktemp("large") / "sub-01_dwi.nii"
    header = nib.Nifti1Header()
    header.set_data_shape(SHAPE)
    header.set_data_dtype(np.int16)
    header.set_qform(oblique_affine((1.5, 1.5, 1.5), SHAPE), code=1)
    header.set_sform(oblique_affine((1.5, 1.5, 1.5), SHAPE), code=1)
    header.set_data_offset(352)
    ramp = np.add.outer(np.add.outer(np.arange(256), np.arange(256)), np.arange(96))
    with path.open("wb") as stream:
        header.write_to(stream)
        stream.write(b"\0" * (352 - stream.tell()))
        sums = []
        for volume in range(SHAPE[3]):
            values = (ramp * (volume + 1) % 4000).astype("<i2")
            sums.append(values.sum(dtype=np.int64))
            stream.write(values.tobytes(order="F"))
    return path, np.array(sums)


def _current_rss_bytes() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


#: What converting may add to a worker's resident memory: chunks in flight, not the image.
GROWTH_LIMIT = 100_000_000


def test_conversion_larger_than_worker_memory(
    large_nifti: tuple[Path, np.ndarray], tmp_path: Path
) -> None:
    path, volume_sums = large_nifti
    store = tmp_path / "large.zarr"
    image_bytes = int(np.prod(SHAPE)) * 2
    assert image_bytes > 2 * WORKER_LIMIT
    # An idle worker already holds 150-270 MB of imports, depending on the environment, so
    # dask's pause (80%) and kill (95%) thresholds of a 300 MB worker could stall or restart
    # it before any data arrives. They are off here; the test measures what the conversion
    # adds instead: bounded by the chunks in flight, far below the image and the limit.
    import dask
    import distributed  # noqa: F401

    # distributed must be imported before dask.config.set: otherwise the "distributed" key
    # is new to the config, and leaving the block removes it whole, including the defaults
    # distributed added meanwhile ("distributed.comm..." then fails in the next test).
    memory_policy = {
        "distributed.worker.memory.target": False,
        "distributed.worker.memory.spill": False,
        "distributed.worker.memory.pause": False,
        "distributed.worker.memory.terminate": False,
    }
    with (
        dask.config.set(memory_policy),
        get_client(
            n_workers=2, threads_per_worker=1, memory_limit=WORKER_LIMIT, dashboard=False
        ) as client,
    ):
        workers_before = set(client.scheduler_info()["workers"])
        idle = client.run(_current_rss_bytes)
        mriflow.convert(path, store, chunks="32,32,16", compressor="lz4")
        workers_after = set(client.scheduler_info()["workers"])
        assert workers_after == workers_before  # no worker was killed and restarted
        peaks = client.run(_peak_rss_bytes)
        growth = {w: peaks[w] - idle[w] for w in peaks}
        assert max(growth.values()) < GROWTH_LIMIT, (idle, peaks)
        assert image_bytes > 8 * GROWTH_LIMIT
        stored = mriflow.open_zarr(store)
        assert stored.dtype == np.int16
        np.testing.assert_array_equal(
            stored.data.sum(axis=(0, 1, 2), dtype=np.int64).compute(), volume_sums
        )
        # and one slab voxel for voxel against the file (read here, not on a small worker)
        raw = RawFileArray(str(path), SHAPE, "<i2", 352)
        slab = stored.data[:, :, 40:56].compute(scheduler="threads")
        np.testing.assert_array_equal(slab, raw[:, :, 40:56, :])
    assert stored.shape == SHAPE
