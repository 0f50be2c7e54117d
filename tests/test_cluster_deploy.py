"""The deployment files in cluster/: dask-jobqueue renders real job scripts from our
settings, and the Kubernetes manifest is a DaskCluster that exposes nothing outside."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import yaml

CLUSTER = Path(__file__).parents[1] / "cluster"


def _hpc():
    spec = importlib.util.spec_from_file_location("mriflow_hpc", CLUSTER / "hpc.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize(
    ("kind", "expected"),
    [
        ("slurm", ["#SBATCH --cpus-per-task=8", "#SBATCH --mem=32G", "#SBATCH -t 04:00:00"]),
        ("pbs", ["#PBS -l select=1:ncpus=8:mem=32GB", "#PBS -l walltime=04:00:00"]),
    ],
)
def test_jobqueue_settings_render_job_scripts(kind, expected):
    # (dashboard on a free port: tests run beside other clusters)
    cluster = _hpc().make_cluster(kind, 0, scheduler_options={"dashboard_address": "127.0.0.1:0"})
    try:
        script = cluster.job_script()
    finally:
        cluster.close()
    for line in expected:
        assert line in script
    assert "source ~/mriflow-venv/bin/activate" in script
    assert "--nthreads 8" in script


def test_kubernetes_manifest_is_a_private_dask_cluster():
    manifest = yaml.safe_load((CLUSTER / "kubernetes" / "daskcluster.yaml").read_text())
    assert manifest["apiVersion"] == "kubernetes.dask.org/v1"
    assert manifest["kind"] == "DaskCluster"
    scheduler = manifest["spec"]["scheduler"]
    assert scheduler["service"]["type"] == "ClusterIP"
    assert scheduler["spec"]["containers"][0]["args"] == ["dask", "scheduler"]
    worker = manifest["spec"]["worker"]["spec"]["containers"][0]
    assert worker["args"][:2] == ["dask", "worker"]
    assert worker["image"] == scheduler["spec"]["containers"][0]["image"]
    assert "FROM python:3.11" in (CLUSTER / "Dockerfile").read_text()
