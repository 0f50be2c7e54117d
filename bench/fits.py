"""Benchmark: mriflow's voxelwise fits against dipy on the same data.

Generates a whole-brain-sized phantom (81 x 106 x 76, 10 b=0 + 150 directions at b=2000,
Rician noise; like the Stanford HARDI set) and a slab of its central k-slices. Each
measurement runs in its own subprocess; wall time and the peak RSS of that subprocess and its
descendants (``os.wait4``) are recorded.

- comparison (same slab file, same mask, same response): DTI (WLS), CSA + peaks
  (relative threshold 0.5, 25 degrees, 5 peaks, 724-vertex sphere) and CSD (order 6);
  dipy in its fastest documented setting (``TensorModel`` is vectorised;
  ``peaks_from_model(parallel=True, num_processes=2)``; CSD ``fit(engine="dask", n_jobs=2)``
  with a serial run as fallback), mriflow on dask's threaded scheduler (2 threads);
- mriflow on the whole volume (throughput at scale);
- out of core: DTI + CSA over the whole volume on a loopback ``LocalCluster`` whose workers
  together get less memory than the float64 signal array, written to zarr.

Run: ``flock /tmp/mriflow-heavy.lock python bench/fits.py --data /tmp/fit-data/bench``
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np

SHAPE = (81, 106, 76)
N_B0, N_DIRECTIONS, BVALUE = 10, 150, 2000.0


def _generate(data_dir: Path, k_slices: int) -> dict[str, str]:
    import nibabel as nib

    from mriflow.data import write_dwi_phantom

    full = data_dir / "full"
    if not (full / "sub-01_dwi.nii.gz").exists():
        write_dwi_phantom(
            full,
            shape=SHAPE,
            n_directions=N_DIRECTIONS,
            bvalue=BVALUE,
            n_b0=N_B0,
            snr=20,
            seed=7,
        )
    slab = data_dir / "slab"
    slab.mkdir(parents=True, exist_ok=True)
    start = SHAPE[2] // 2 - k_slices // 2
    for name in ("sub-01_dwi", "sub-01_mask"):
        part = nib.load(full / f"{name}.nii.gz").slicer[:, :, start : start + k_slices]
        dtype = np.float32 if name == "sub-01_dwi" else np.uint8
        data = np.asarray(part.dataobj, dtype=dtype)
        nib.save(nib.Nifti1Image(data, part.affine), slab / f"{name}.nii")
    for suffix in (".bval", ".bvec"):  # same linear affine: the same FSL table
        (slab / f"sub-01_dwi{suffix}").write_text((full / f"sub-01_dwi{suffix}").read_text())
    return {"full": str(full), "slab": str(slab)}


# --- workers (run in subprocesses) ------------------------------------------------------------


def _image_path(folder: Path, stem: str) -> Path:
    plain = folder / f"{stem}.nii"
    return plain if plain.exists() else folder / f"{stem}.nii.gz"


def _dipy_worker(task: str, folder: Path, response: list[float]) -> dict[str, float]:
    import nibabel as nib
    from dipy.core.gradients import gradient_table
    from dipy.data import get_sphere
    from dipy.direction import peaks_from_model
    from dipy.io.gradients import read_bvals_bvecs
    from dipy.reconst.csdeconv import ConstrainedSphericalDeconvModel
    from dipy.reconst.dti import TensorModel
    from dipy.reconst.shm import CsaOdfModel

    start = time.perf_counter()
    image = _image_path(folder, "sub-01_dwi")
    bvals, bvecs = read_bvals_bvecs(
        str(folder / "sub-01_dwi.bval"), str(folder / "sub-01_dwi.bvec")
    )
    gtab = gradient_table(bvals, bvecs=bvecs)
    data = nib.load(image).get_fdata()
    mask = np.asarray(nib.load(_image_path(folder, "sub-01_mask")).dataobj) > 0
    engine = "-"
    if task == "dti":
        fit = TensorModel(gtab).fit(data, mask=mask)
        _ = fit.fa, fit.md, fit.evecs
    elif task == "csa_peaks":
        peaks_from_model(
            CsaOdfModel(gtab, 6),
            data,
            get_sphere(name="repulsion724"),
            0.5,
            25,
            mask=mask,
            npeaks=5,
            parallel=True,
            num_processes=2,
        )
    elif task == "csd":
        model = ConstrainedSphericalDeconvModel(
            gtab, (np.array(response[:3]), response[3]), sh_order_max=6
        )
        try:
            _ = model.fit(data, mask=mask, engine="dask", n_jobs=2).shm_coeff
            engine = "dask"
        except Exception as exc:  # record the fallback honestly
            engine = f"serial ({type(exc).__name__})"
            _ = model.fit(data, mask=mask).shm_coeff
    return {"seconds": time.perf_counter() - start, "voxels": int(mask.sum()), "engine": engine}


def _mriflow_worker(task: str, folder: Path, response: list[float]) -> dict[str, float]:
    import dask

    import mriflow

    start = time.perf_counter()
    dwi = mriflow.open_image(_image_path(folder, "sub-01_dwi"), chunks={"k": 2})
    mask = mriflow.open_image(_image_path(folder, "sub-01_mask")) > 0
    with dask.config.set(scheduler="threads", num_workers=2):
        if task == "dti":
            fit = mriflow.fit.dti(dwi, mask=mask)
            dask.compute(fit.fa, fit.md, fit.evecs)
        elif task == "csa_peaks":
            csa = mriflow.fit.csa(dwi, sh_order=6, mask=mask)
            found = mriflow.fit.peaks(
                csa,
                sphere="repulsion724",
                relative_peak_threshold=0.5,
                min_separation_angle=25,
                npeaks=5,
            )
            dask.compute(
                csa.gfa, csa.shm_coeff, found.peak_dirs, found.peak_values, found.peak_indices
            )
        elif task == "csd":
            fit = mriflow.fit.csd(dwi, response=(response[:3], response[3]), sh_order=6, mask=mask)
            fit.shm_coeff.compute()
    return {
        "seconds": time.perf_counter() - start,
        "voxels": int(mask.sum().values),
        "engine": "threads x2",
    }


def _out_of_core_worker(folder: Path, store: Path, memory_limit: str) -> dict[str, float]:
    import shutil

    import mriflow
    from mriflow.cluster import get_client

    shutil.rmtree(store, ignore_errors=True)
    start = time.perf_counter()
    with get_client(
        n_workers=2, threads_per_worker=1, memory_limit=memory_limit, dashboard=False
    ) as client:
        dwi = mriflow.open_image(folder / "sub-01_dwi.nii.gz", chunks={"k": 2})
        mask = mriflow.open_image(folder / "sub-01_mask.nii.gz") > 0
        n_voxels = int(mask.sum().values)
        dti = mriflow.fit.dti(dwi, mask=mask)[["fa", "md", "evecs"]]
        csa = mriflow.fit.csa(dwi, sh_order=6, mask=mask)
        dti.to_zarr(store, group="dti", mode="w")
        csa.to_zarr(store, group="csa", mode="a")
        worker_memory = client.run(lambda: __import__("psutil").Process().memory_info().rss)
        client.close()
        client.cluster.close()
    signal_bytes = int(np.prod(dwi.shape)) * 8
    return {
        "seconds": time.perf_counter() - start,
        "voxels": n_voxels,
        "signal_float64_mib": signal_bytes / 2**20,
        "worker_rss_at_end_mib": [v / 2**20 for v in worker_memory.values()],
    }


def _run(args: list[str]) -> dict[str, float]:
    """Run a worker under ``/usr/bin/time -v``: its peak RSS (largest process of the tree
    that ``time`` waited for) is measured from a small parent, not inherited from this one."""
    completed = subprocess.run(
        ["/usr/bin/time", "-v", sys.executable, __file__, *args],
        capture_output=True,
        text=True,
        check=False,
    )
    if completed.returncode != 0:
        raise RuntimeError(f"worker {args} failed:\n{completed.stderr[-3000:]}")
    result = json.loads(completed.stdout.strip().splitlines()[-1])
    for line in completed.stderr.splitlines():
        if "Maximum resident set size" in line:
            result["peak_rss_mib"] = int(line.split(":")[-1]) / 1024
    return result


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--data", type=Path, default=Path("/tmp/fit-data/bench"))
    parser.add_argument("--k-slices", type=int, default=8)
    parser.add_argument("--memory-limit", default="400MiB")
    parser.add_argument("--smoke", action="store_true", help="tiny phantom, to check the script")
    parser.add_argument("--worker", nargs="*")
    args = parser.parse_args()
    global SHAPE, N_DIRECTIONS
    if args.smoke:
        SHAPE, N_DIRECTIONS = (20, 24, 16), 40
    warnings.simplefilter("ignore")
    if args.worker:
        side, task, folder, response = args.worker
        values = json.loads(response)
        if side == "dipy":
            result = _dipy_worker(task, Path(folder), values)
        elif side == "mriflow":
            result = _mriflow_worker(task, Path(folder), values)
        else:
            result = _out_of_core_worker(Path(folder), Path(task), values)
        print(json.dumps(result))
        return

    import mriflow

    args.data.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    folders = _generate(args.data, args.k_slices)
    print(f"data ready in {time.perf_counter() - start:.0f}s", flush=True)
    response = mriflow.fit.auto_response(
        mriflow.open_image(Path(folders["full"]) / "sub-01_dwi.nii.gz"), fa_threshold=0.7
    )
    values = json.dumps([*map(float, response.evals), float(response.s0)])
    rows = []
    for task in ("dti", "csa_peaks", "csd"):
        # mriflow first warms numba's on-disk cache, as an installed package would have it.
        _run(["--worker", "mriflow", task, folders["slab"], values])
        ours = _run(["--worker", "mriflow", task, folders["slab"], values])
        ref = _run(["--worker", "dipy", task, folders["slab"], values])
        rows.append((task, ours, ref))
        print(task, json.dumps(ours), json.dumps(ref), flush=True)
    full_rows = []
    for task in ("dti", "csa_peaks", "csd"):
        full = _run(["--worker", "mriflow", task, folders["full"], values])
        full_rows.append((task, full))
        print("full", task, json.dumps(full), flush=True)
    store = args.data / "out_of_core.zarr"
    ooc = _run(["--worker", "ooc", str(store), folders["full"], json.dumps(args.memory_limit)])
    print("out-of-core", json.dumps(ooc), flush=True)

    lines = [
        f"Slab: {SHAPE[0]}x{SHAPE[1]}x{args.k_slices} of the {SHAPE} phantom, "
        f"{N_B0} b=0 + {N_DIRECTIONS} directions at b={BVALUE:g}; "
        f"response evals {np.round(response.evals, 6).tolist()}, S0 {response.s0:.1f}.",
        "",
        "| fit | voxels | mriflow s | dipy s | mriflow vox/s | dipy vox/s | speed-up | "
        "mriflow peak RSS MiB | dipy peak RSS MiB | dipy setting |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for task, ours, ref in rows:
        lines.append(
            f"| {task} | {ours['voxels']} | {ours['seconds']:.2f} | {ref['seconds']:.2f} | "
            f"{ours['voxels'] / ours['seconds']:.0f} | {ref['voxels'] / ref['seconds']:.0f} | "
            f"{ref['seconds'] / ours['seconds']:.2f}x | {ours['peak_rss_mib']:.0f} | "
            f"{ref['peak_rss_mib']:.0f} | {ref['engine']} |"
        )
    lines += [
        "",
        f"Whole volume {SHAPE}, mriflow only:",
        "",
        "| fit | voxels | s | vox/s | peak RSS MiB |",
        "|---|---|---|---|---|",
    ]
    for task, full in full_rows:
        lines.append(
            f"| {task} | {full['voxels']} | {full['seconds']:.1f} | "
            f"{full['voxels'] / full['seconds']:.0f} | {full['peak_rss_mib']:.0f} |"
        )
    lines += [
        "",
        f"Out of core: DTI + CSA of the whole volume to zarr on a LocalCluster of 2 workers x "
        f"{args.memory_limit} (float64 signal: {ooc['signal_float64_mib']:.0f} MiB): "
        f"{ooc['seconds']:.1f} s, peak RSS of the process tree {ooc['peak_rss_mib']:.0f} MiB, "
        f"worker RSS at end {[round(v) for v in ooc['worker_rss_at_end_mib']]} MiB.",
    ]
    report = "\n".join(lines)
    print(report)
    (args.data / "report.md").write_text(report + "\n")


if __name__ == "__main__":
    main()
