"""``mriflow demo``: a synthetic diffusion dataset through the whole pipeline.

phantom -> lazy open -> DTI, CSD + peaks on the embedded cluster -> zarr store + NIfTI maps ->
fibre tracking -> .trk + pictures. Every stage is timed; the summary lists the files.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import numpy as np

from mriflow.progress import ProgressFactory, no_progress

if TYPE_CHECKING:
    import xarray as xr

__all__ = ["run_demo"]


def _colour_fa(rgb: Any, path: Path) -> Path:
    """The classic colour-FA picture (red L-R, green A-P, blue S-I) of the central slices."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    values = np.asarray(rgb.transpose("i", "j", "k", "channel").values, dtype=np.float64)
    values = np.clip(values / max(np.percentile(values, 99.5), 1e-6), 0, 1)
    centre = [n // 2 for n in values.shape[:3]]
    figure, axes = plt.subplots(1, 3, figsize=(12, 4.2), layout="constrained")
    planes = {
        "sagittal (i fixed)": values[centre[0]].transpose(1, 0, 2),
        "coronal (j fixed)": values[:, centre[1]].transpose(1, 0, 2),
        "axial (k fixed)": values[:, :, centre[2]].transpose(1, 0, 2),
    }
    for ax, (name, plane) in zip(axes, planes.items(), strict=True):
        ax.imshow(plane, origin="lower", interpolation="nearest")
        ax.set_title(name)
        ax.set_axis_off()
    figure.suptitle("colour FA: principal direction x FA (voxel frame)")
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path


def run_demo(
    out_dir: str | Path,
    *,
    shape: tuple[int, int, int] = (48, 56, 40),
    workers: int | None = None,
    scheduler: str | None = None,
    seed_density: int = 1,
    say: Callable[[str], None] = print,
    progress: ProgressFactory = no_progress,
) -> dict[str, Any]:
    """Run the demo into ``out_dir``; returns ``{"files": {...}, "stages": {name: seconds}}``.

    ``progress`` makes the progress display of each stage (see
    :func:`mriflow.progress.compute_progress`)."""
    from mriflow import fit
    from mriflow.cluster import get_client
    from mriflow.data import write_dwi_phantom
    from mriflow.io import open_image, open_zarr, to_zarr

    out = Path(out_dir)
    stages: dict[str, float] = {}
    files: dict[str, Path] = {}
    clock = time.perf_counter()

    def lap(name: str) -> None:
        nonlocal clock
        now = time.perf_counter()
        stages[name] = now - clock
        clock = now
        say(f"  {name}: {stages[name]:.1f} s")

    paths = write_dwi_phantom(out, shape=shape, bvalue=2000.0, n_directions=45)
    files.update({k: v for k, v in paths.items() if k in ("dwi", "labels", "mask")})
    lap("phantom")
    dwi = open_image(paths["dwi"])
    mask = open_image(paths["mask"]) > 0
    threads = 1 if workers else None
    with get_client(scheduler, n_workers=workers, threads_per_worker=threads) as client:
        say(f"  cluster {client.scheduler.address}, dashboard {client.dashboard_link}")
        tensor = fit.dti(dwi, mask=mask)
        store = out / "fits.zarr"
        with progress("dti"):
            to_zarr(tensor[["fa", "md", "evecs", "rgb"]], store, group="dti", overwrite=True)
            # Fitted once: later stages read the store instead of fitting again.
            tensor = cast("xr.Dataset", open_zarr(store, group="dti"))
            files["fa"] = tensor["fa"].mri.reorient("RAS").mri.to_nifti(out / "fa_RAS.nii.gz")
        lap("dti")
        with progress("csd + peaks"):
            response = fit.auto_response(dwi)
            odf = fit.csd(dwi, response=response, mask=mask)
            to_zarr(odf, store, group="csd", overwrite=True)
            odf = cast("xr.Dataset", open_zarr(store, group="csd"))
            found = fit.peaks(odf, relative_peak_threshold=0.5, min_separation_angle=25)
            to_zarr(found, store, group="peaks", overwrite=True)
        files["fits"] = store
        lap("csd + peaks")
        from mriflow import track

        with progress("tracking inputs"):
            fa_map = tensor["fa"].compute()
            fields = odf.compute()
        white_matter = open_image(paths["labels"], chunks=None).load() == 2
        seeds = track.seeds_from_mask(white_matter, density=seed_density)
        tractogram = track.track(
            fields,
            track.ThresholdStopping(fa_map, 0.15),
            seeds,
            method="probabilistic",
            step_size=0.5,
            max_angle=30,
            rng=42,
        )
        files["tracts.trk"] = out / "tracts.trk"
        tractogram.save(files["tracts.trk"])
        from mriflow.viz import streamlines_png

        files["streamlines.png"] = streamlines_png(
            tractogram.positions,
            tractogram.offsets,
            out / "streamlines.png",
            title="probabilistic CSD tracking",
        )
        say(f"  {len(tractogram)} streamlines from {len(seeds)} seeds")
        lap("tracking")
        with progress("pictures"):
            tensor["fa"].mri.plot(output_path=out / "fa.png", cmap="gray", title="FA")
            rgb = tensor["rgb"].compute()
        files["fa.png"] = out / "fa.png"
        files["colour_fa.png"] = _colour_fa(rgb, out / "colour_fa.png")
        labels = open_image(paths["labels"], chunks=None).load()
        fa = tensor["fa"]
        summary = {
            "fa_white_matter": float(fa.where(labels == 2).mean().compute()),
            "fa_csf": float(fa.where(labels == 3).mean().compute()),
        }
        lap("pictures")
    say(f"  mean FA: white matter {summary['fa_white_matter']:.3f}, CSF {summary['fa_csf']:.3f}")
    return {"files": files, "stages": stages, "summary": summary}
