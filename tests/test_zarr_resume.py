"""Kill a conversion with SIGKILL halfway, resume it, and get the uninterrupted result."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

import mriflow
from mriflow.cli import main
from mriflow.data import oblique_affine

CONVERT = [sys.executable, "-c", "from mriflow.cli import run; run()", "convert"]


@pytest.fixture(scope="module")
def big_dwi(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 4D int16 .nii.gz of ~8 MB whose conversion has 20 regions."""
    shape = (64, 64, 160, 6)
    grid = np.add.outer(np.add.outer(np.arange(64), np.arange(64)), np.arange(160))
    noise = np.random.default_rng(7).integers(0, 50, size=shape, dtype=np.int16)
    data = (grid[..., None] * np.arange(1, 7) % 3000).astype(np.int16) + noise
    path = tmp_path_factory.mktemp("resume") / "sub-01_dwi.nii.gz"
    nib.save(nib.Nifti1Image(data, oblique_affine((2.0, 2.0, 2.0), shape)), path)
    return path


def _chunk_files(store: Path) -> dict[Path, tuple[int, int]]:
    return {
        p.relative_to(store): (p.stat().st_ino, p.stat().st_mtime_ns)
        for p in (store / "0" / "c").rglob("*")
        if p.is_file() and not p.name.endswith(".partial")
    }


def test_sigkilled_conversion_resumes_without_rewriting_finished_regions(
    big_dwi: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    reference = tmp_path / "reference.zarr"
    mriflow.convert(big_dwi, reference, chunks="32,32,8")

    store = tmp_path / "killed.zarr"
    markers = store / ".mriflow-progress" / "0"
    process = subprocess.Popen(
        [*CONVERT, str(big_dwi), str(store), "--chunks", "32,32,8"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    deadline = time.monotonic() + 60
    try:
        while time.monotonic() < deadline and process.poll() is None:
            if markers.is_dir() and sum(n.endswith(".done") for n in os.listdir(markers)) >= 3:
                process.send_signal(signal.SIGKILL)
                break
            time.sleep(0.001)
    finally:
        process.wait(timeout=30)
    assert process.returncode == -signal.SIGKILL, process.stderr.read() if process.stderr else ""
    if process.stderr:
        process.stderr.close()

    done = sorted(int(p.name.split(".")[0]) for p in markers.glob("*.done"))
    assert 3 <= len(done) < 20
    with pytest.raises(
        mriflow.IncompleteStoreError, match=r"killed\.zarr: the store is incomplete"
    ):
        mriflow.open_zarr(store)
    staging = store / ".mriflow-staging.nii.partial"
    assert staging.exists()  # the orphan a kill leaves behind
    orphan = store / "0" / "c" / "0" / "0" / "0" / "0.deadbeef.partial"
    orphan.write_bytes(b"half a chunk")
    before = _chunk_files(store)
    finished = {p: v for p, v in before.items() if int(p.parts[3]) in done}
    assert finished

    assert main(["convert", str(big_dwi), str(store), "--chunks", "32,32,8", "--resume"]) == 0
    after = _chunk_files(store)
    for chunk, identity in finished.items():
        assert after[chunk] == identity, f"{chunk} was rewritten"
    assert not list(store.rglob("*.partial"))
    assert not (store / ".mriflow-progress").exists()
    # identical to the uninterrupted run, chunk file for chunk file
    assert set(after) == set(_chunk_files(reference))
    for chunk in after:
        assert (store / chunk).read_bytes() == (reference / chunk).read_bytes(), chunk
    back = mriflow.open_zarr(store)
    np.testing.assert_array_equal(back.values, mriflow.open_image(big_dwi).values)
    # resuming a complete store is a no-op; without --resume it refuses
    capsys.readouterr()
    assert main(["convert", str(big_dwi), str(store), "--chunks", "32,32,8"]) == 1
    message = " ".join(capsys.readouterr().err.split())
    assert "killed.zarr: already holds a complete image" in message
