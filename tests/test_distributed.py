"""Images on a real dask.distributed cluster (scheduler and worker processes on 127.0.0.1)."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest

import mriflow
from mriflow.cluster import get_client


@pytest.fixture(scope="module")
def client():
    with get_client(n_workers=2, threads_per_worker=1, memory_limit="1GiB") as client:
        yield client


def test_cluster_is_loopback_only(client):
    import psutil

    me = psutil.Process()
    listening = [
        (process.pid, conn.laddr)
        for process in (me, *me.children(recursive=True))
        for conn in process.net_connections(kind="inet")
        if conn.status == psutil.CONN_LISTEN
    ]
    assert len(listening) >= 4  # scheduler, its dashboard, and two workers at least
    assert all(addr.ip in ("127.0.0.1", "::1") for _, addr in listening), listening
    assert client.scheduler.address.startswith("tcp://127.0.0.1:")
    assert all(addr.startswith("tcp://127.0.0.1:") for addr in client.scheduler_info()["workers"])
    assert client.dashboard_link.startswith("http://127.0.0.1:")


def test_workers_read_nifti_gz_chunks(client, tmp_path):
    paths = mriflow.data.write_dwi_phantom(tmp_path, shape=(24, 28, 20), n_directions=12)
    image = mriflow.open_image(paths["dwi"], chunks={"k": 5})
    mean = image.mean("volume").compute()
    expected = nib.load(paths["dwi"]).get_fdata().mean(axis=3)
    np.testing.assert_allclose(mean.values, expected, rtol=1e-12)
    # the reads happened on the workers, not here
    per_worker = client.run(lambda: __import__("mriflow.io.nifti").io.nifti._BYTES_READ.total())
    assert sum(per_worker.values()) >= image.nbytes // 4  # int16 on disk, float64 in memory


def test_to_nifti_from_workers(client, tmp_path):
    paths = mriflow.data.write_dwi_phantom(tmp_path / "in", shape=(20, 22, 18), n_directions=8)
    image = mriflow.open_image(paths["dwi"], chunks={"k": 4})
    out = image.mri.reorient("RAS").mri.to_nifti(tmp_path / "ras.nii")
    written = nib.load(out)
    assert nib.aff2axcodes(written.affine) == ("R", "A", "S")
    expected = image.mri.reorient("RAS").values
    np.testing.assert_array_equal(written.get_fdata(), expected)
