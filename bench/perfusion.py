"""Voxels/s of extended Tofts and IVIM: mriflow (all cores) vs a per-voxel curve_fit loop.

Writes a 128x128x40 DCE concentration phantom (60 time points, Parker AIF, extended Tofts
curves + noise at SNR 30) and an IVIM phantom (10 b-values, SNR 30) as NIfTI under
/tmp/perfusion-data, then times, each in a fresh process (peak RSS from that process):

- mriflow: ``open_image`` -> ``mriflow.fit.dce(..., model="extended_tofts")`` /
  ``mriflow.fit.ivim(..., method="full")`` over every voxel, threaded dask scheduler;
- reference: ``scipy.optimize.curve_fit`` (trf, same bounds) voxel by voxel on a random
  subsample, extrapolated to the whole phantom (the full loop would take hours).

Run: ``flock /tmp/mriflow-heavy.lock python bench/perfusion.py [--subsample N]``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import nibabel as nib
import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from _common import machine, table

DATA = Path("/tmp/perfusion-data")
SHAPE = (128, 128, 40)
TIMES = np.arange(60) * 5.0
BVALS = np.array([0, 10, 20, 50, 100, 200, 400, 600, 800, 1000.0])


def write_phantoms() -> tuple[Path, Path]:
    from mriflow.fit import perfusion_phantoms as phantoms
    from mriflow.fit.dce import population_aif

    DATA.mkdir(parents=True, exist_ok=True)
    dce_path, ivim_path = DATA / "dce.nii.gz", DATA / "ivim.nii.gz"
    n = int(np.prod(SHAPE))
    rng = np.random.default_rng(0)
    if not dce_path.exists():
        aif = population_aif("parker", TIMES, delay=30).values / 0.55
        kinds = 512  # distinct parameter sets, tiled over the volume; the noise differs
        ktrans, ve = rng.uniform(0.05, 0.5, kinds), rng.uniform(0.1, 0.6, kinds)
        vp = rng.uniform(0.01, 0.1, kinds)
        curves = phantoms.tofts_concentration(TIMES, aif, ktrans, ve, vp).astype(np.float32)
        which = rng.integers(0, kinds, n)
        data = curves[which]
        data += rng.normal(size=data.shape).astype(np.float32) * (curves.max(1)[which, None] / 30)
        nib.save(nib.Nifti1Image(data.reshape(*SHAPE, 60), np.eye(4)), dce_path)
        del data
    if not ivim_path.exists():
        kinds = 512
        signal = phantoms.ivim_signal(
            BVALS,
            1000.0,
            rng.uniform(0.05, 0.3, kinds),
            rng.uniform(0.0006, 0.002, kinds),
            rng.uniform(0.01, 0.06, kinds),
        ).astype(np.float32)
        data = signal[rng.integers(0, kinds, n)]
        data += rng.normal(size=data.shape).astype(np.float32) * (1000.0 / 30)
        nib.save(nib.Nifti1Image(np.abs(data).reshape(*SHAPE, 10), np.eye(4)), ivim_path)
        np.savetxt(DATA / "ivim.bval", BVALS[None], fmt="%g")
        np.savetxt(DATA / "ivim.bvec", np.tile([[1.0], [0.0], [0.0]], (1, BVALS.size)), fmt="%g")
    return dce_path, ivim_path


MRIFLOW_SETUP = """
import dask, numpy as np, mriflow
dask.config.set(scheduler="threads")
# Untimed warm-up on 4 voxels: kernels compile (or load from numba's cache) here.
warm = mriflow.open_image("{path}")[:2, :2, :1].compute()
if warm.sizes[warm.dims[-1]] == 60:
    warm = warm.assign_coords(t=np.arange(60) * 5.0)
    mriflow.fit.dce(warm, aif=mriflow.fit.population_aif("parker", warm.t)).compute()
else:
    mriflow.fit.ivim(warm, method="full").compute()
"""

MRIFLOW_DCE = """
image = mriflow.open_image("{path}").chunk({{"k": 2}})
image = image.assign_coords(t=np.arange(60) * 5.0)
aif = mriflow.fit.population_aif("parker", image.t, delay=30)
fitted = mriflow.fit.dce(image, aif=aif, model="extended_tofts", hematocrit=0.45).compute()
result = float(np.nanmedian(fitted.ktrans.values))
np.save("{maps}", fitted.ktrans.values[:, :, :{slices}])
"""

MRIFLOW_IVIM = """
image = mriflow.open_image("{path}").chunk({{"k": 2}})
fitted = mriflow.fit.ivim(image, method="full").compute()
result = float(np.nanmedian(fitted.d.values))
np.save("{maps}", fitted.d.values[:, :, :{slices}])
"""

OSIPY_SETUP = """
import numpy as np, nibabel as nib
data = np.asarray(nib.load("{path}").dataobj[:, :, :{slices}], dtype=np.float64)
"""

OSIPY_DCE = """
from osipy.common.aif.population import ParkerAIF
from osipy.dce.fitting import fit_model
times = np.arange(60) * 5.0
plasma = ParkerAIF()(times - 30.0).concentration / 0.55
fitted = fit_model("extended_tofts", data, plasma, times)
values = np.asarray(fitted.parameter_maps["Ktrans"].values)
np.save("{maps}", values)
result = float(np.nanmedian(values))
"""

OSIPY_IVIM = """
from osipy.ivim import fit_ivim
from osipy.ivim.fitting.estimators import FittingMethod
fitted = fit_ivim(data, np.loadtxt("{bval}"), method=FittingMethod.FULL)
values = np.asarray(fitted.d_map.values)
np.save("{maps}", values)
result = float(np.nanmedian(values))
"""

#: Python 3.12 environment with osipy (osipy needs Python >= 3.12; mriflow's venv is 3.11).
OSIPY_PYTHON = Path("/tmp/venv-perfusion-osipy/bin/python")


#: Like ``_common.PROBE``, but peak RSS is the process's own ``VmHWM``: ``ru_maxrss`` of a
#: child process starts from its parent's peak (Linux keeps it across fork and exec).
PROBE = """
import json, time
{setup}
started = time.perf_counter()
{body}
elapsed = time.perf_counter() - started
with open("/proc/self/status") as status:
    peak = next(int(line.split()[1]) for line in status if line.startswith("VmHWM")) * 1024
print("@@" + json.dumps({{"seconds": elapsed, "peak_rss": peak, "result": float(result)}}))
"""


def measure(body: str, setup: str = "", python: Path | str = sys.executable) -> dict[str, float]:
    """Run ``setup`` (untimed) then ``body`` (timed; sets ``result``) in a new ``python``."""
    import json
    import subprocess
    import textwrap

    code = PROBE.format(setup=textwrap.dedent(setup).strip(), body=textwrap.dedent(body).strip())
    out = subprocess.run(
        [str(python), "-c", code], capture_output=True, text=True, check=True
    ).stdout
    return json.loads(out.split("@@")[-1])


CURVE_FIT_SETUP = """
import numpy as np, nibabel as nib
from scipy.optimize import curve_fit
from mriflow.fit.dce import population_aif
rng = np.random.default_rng(1)
"""

CURVE_FIT_DCE_SETUP = """
data = np.asarray(nib.load("{path}").dataobj).reshape(-1, 60)
voxels = data[rng.choice(data.shape[0], {count}, replace=False)].astype(np.float64)
del data
"""

CURVE_FIT_DCE = """
times = np.arange(60) * 5.0 / 60.0
plasma = population_aif("parker", times * 60, delay=30).values / 0.55
step = times[1] - times[0]

def extended_tofts(t, ktrans, ve, vp):
    kernel = np.exp(-(ktrans / ve) * t)
    return ktrans * np.convolve(plasma, kernel)[: t.size] * step + vp * plasma

estimates = []
for curve in voxels:
    try:
        popt, _ = curve_fit(extended_tofts, times, curve, p0=(0.1, 0.2, 0.01),
                            bounds=([1e-5, 1e-3, 0.0], [5.0, 1.0, 1.0]), maxfev=2000)
    except RuntimeError:
        popt = (np.nan, np.nan, np.nan)
    estimates.append(popt[0])
result = float(np.nanmedian(estimates))
"""

CURVE_FIT_IVIM_SETUP = """
data = np.asarray(nib.load("{path}").dataobj).reshape(-1, 10)
voxels = data[rng.choice(data.shape[0], {count}, replace=False)].astype(np.float64)
del data
"""

CURVE_FIT_IVIM = """
bvals = np.loadtxt("{bval}")

def ivim(b, s0, f, d, d_star):
    return s0 * (f * np.exp(-b * d_star) + (1 - f) * np.exp(-b * d))

estimates = []
for curve in voxels:
    try:
        popt, _ = curve_fit(ivim, bvals, curve, p0=(curve[0], 0.1, 0.001, 0.02),
                            bounds=([0, 0, 0, 0.003], [np.inf, 1, 0.005, 0.5]), maxfev=2000)
    except RuntimeError:
        popt = (np.nan,) * 4
    estimates.append(popt[2])
result = float(np.nanmedian(estimates))
"""


def _osipy_version() -> str:
    import subprocess

    return subprocess.run(
        [str(OSIPY_PYTHON), "-c", "import osipy; print(osipy.__version__)"],
        capture_output=True,
        text=True,
    ).stdout.strip()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--subsample", type=int, default=400)
    parser.add_argument("--osipy-slices", type=int, default=4)
    parser.add_argument("--shape", default="128,128,40", help="phantom grid (smoke runs)")
    parser.add_argument(
        "--out", type=Path, default=Path(__file__).parent / "results" / "perfusion.md"
    )
    args = parser.parse_args()
    global SHAPE, DATA
    SHAPE = tuple(int(v) for v in args.shape.split(","))
    DATA = Path(f"/tmp/perfusion-data/{'x'.join(map(str, SHAPE))}")
    dce_path, ivim_path = write_phantoms()
    n = int(np.prod(SHAPE))
    rows = []
    comparisons: list[dict] = []
    for model, ours, theirs, extra in (
        ("extended Tofts", MRIFLOW_DCE, CURVE_FIT_DCE, {}),
        ("IVIM (full)", MRIFLOW_IVIM, CURVE_FIT_IVIM, {"bval": DATA / "ivim.bval"}),
    ):
        path = dce_path if model.startswith("extended") else ivim_path
        maps = {"ours": DATA / f"mriflow_{model[:4]}.npy", "osipy": DATA / f"osipy_{model[:4]}.npy"}
        slices = args.osipy_slices
        mine = measure(
            ours.format(path=path, maps=maps["ours"], slices=slices),
            MRIFLOW_SETUP.format(path=path),
        )
        # The loop's data reading is untimed (its setup); mriflow's timing includes reading.
        loading = CURVE_FIT_DCE_SETUP if model.startswith("extended") else CURVE_FIT_IVIM_SETUP
        ref = measure(
            theirs.format(path=path, count=args.subsample, **extra),
            CURVE_FIT_SETUP + loading.format(path=path, count=args.subsample),
        )
        if OSIPY_PYTHON.exists():
            body = OSIPY_DCE if model.startswith("extended") else OSIPY_IVIM
            theirs_osipy = measure(
                body.format(path=path, maps=maps["osipy"], slices=slices, **extra),
                OSIPY_SETUP.format(path=path, slices=slices),
                python=OSIPY_PYTHON,
            )
            ours_map, osipy_map = np.load(maps["ours"]), np.load(maps["osipy"])
            relative = np.abs(osipy_map - ours_map) / np.maximum(np.abs(ours_map), 1e-12)
            osipy_voxels = SHAPE[0] * SHAPE[1] * slices
            osipy_rate = osipy_voxels / theirs_osipy["seconds"]
            comparisons.append(
                {
                    "model": model,
                    "osipy voxels": f"{osipy_voxels:,} ({slices} slices)",
                    "osipy s": f"{theirs_osipy['seconds']:.1f}",
                    "osipy voxels/s": f"{osipy_rate:,.0f}",
                    "osipy peak RSS": f"{theirs_osipy['peak_rss'] / 2**20:,.0f} MiB",
                    "mriflow/osipy speed": f"{n / mine['seconds'] / osipy_rate:.1f}x",
                    "map": "ktrans" if model.startswith("extended") else "D",
                    "median rel. diff": f"{np.nanmedian(relative):.2e}",
                    "95th pct rel. diff": f"{np.nanpercentile(relative, 95):.2e}",
                    "osipy NaN": int(np.sum(~np.isfinite(osipy_map))),
                }
            )
            print(comparisons[-1], flush=True)
        ours_rate = n / mine["seconds"]
        ref_rate = args.subsample / ref["seconds"]
        rows.append(
            {
                "model": model,
                "mriflow s (all voxels)": f"{mine['seconds']:.1f}",
                "mriflow voxels/s": f"{ours_rate:,.0f}",
                "mriflow peak RSS": f"{mine['peak_rss'] / 2**20:,.0f} MiB",
                "curve_fit s (subsample)": f"{ref['seconds']:.1f} ({args.subsample} vox)",
                "curve_fit voxels/s": f"{ref_rate:,.0f}",
                "curve_fit full (extrapolated)": f"{n / ref_rate / 60:,.0f} min",
                "curve_fit peak RSS": f"{ref['peak_rss'] / 2**20:,.0f} MiB",
                "ratio": f"{ours_rate / ref_rate:,.0f}x",
                "median (mriflow / curve_fit)": f"{mine['result']:.4g} / {ref['result']:.4g}",
            }
        )
        print(rows[-1], flush=True)
    columns = list(rows[0])
    text = (
        f"\n## Speed: voxels/s on a {SHAPE[0]}x{SHAPE[1]}x{SHAPE[2]} phantom\n\n"
        f"Machine: {machine()}. Command: `flock /tmp/mriflow-heavy.lock python "
        f"bench/perfusion.py --subsample {args.subsample} --osipy-slices {args.osipy_slices}`.\n"
        "mriflow fits every voxel (threaded dask, all cores); curve_fit (scipy, trf with the "
        f"same bounds, one voxel at a time) fits {args.subsample} random voxels and its rate "
        "is extrapolated to the phantom. mriflow's time includes reading the .nii.gz; the "
        "loop's and osipy's exclude it (untimed setup). Each side runs in its own process; "
        "peak RSS is that process's (VmHWM). Extended Tofts: 60 time points; IVIM: 10 b-values.\n\n"
        + table(rows, columns)
        + "\n"
    )
    if comparisons:
        text += (
            "\n### osipy on the same input\n\n"
            f"osipy {_osipy_version()} in a Python 3.12 venv (not a mriflow dependency), its "
            "vectorised Levenberg-Marquardt fits (IVIM: method=full), on the first "
            f"{args.osipy_slices} slices of the same phantom; rate and the map differences "
            "against mriflow's maps of those voxels (relative to mriflow's value).\n\n"
            + table(comparisons, list(comparisons[0]))
            + "\n"
        )
    print(text)
    marker = "\n## Speed"
    previous = args.out.read_text() if args.out.exists() else ""
    head = previous.split(marker)[0] if previous else "# Perfusion and IVIM fits\n"
    args.out.write_text(head.rstrip("\n") + "\n" + text)


if __name__ == "__main__":
    main()
