"""The ``mriflow`` command.

Exit codes: 0 success, 1 bad input (one-line message; the traceback with ``-v``), 2 usage.
"""

from __future__ import annotations

import functools
import logging
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from mriflow._version import __version__
from mriflow.acquisition import Modality
from mriflow.errors import MriflowError

app = typer.Typer(
    name="mriflow",
    help="Out-of-core MRI processing: lazy images, fits, tracking, zarr archives.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
console = Console(highlight=False, soft_wrap=True)  # paths stay whole in pipes
_state: dict[str, Any] = {"verbose": 0, "quiet": False}


def _version(value: bool) -> None:
    if value:
        console.print(f"mriflow {__version__}")
        raise typer.Exit


@app.callback()
def _main(
    verbose: Annotated[
        int, typer.Option("--verbose", "-v", count=True, help="More output; -v shows tracebacks.")
    ] = 0,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Only errors.")] = False,
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version.")
    ] = False,
) -> None:
    _state["verbose"], _state["quiet"] = verbose, quiet
    level = logging.DEBUG if verbose > 1 else logging.INFO if verbose else logging.WARNING
    for name in ("mriflow", "distributed"):
        logging.getLogger(name).setLevel(level)


def _reports_errors(command: Callable[..., None]) -> Callable[..., None]:
    """Turn mriflow's input errors into one line on stderr and exit code 1."""

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> None:
        try:
            command(*args, **kwargs)
        except MriflowError as exc:
            if _state["verbose"]:
                raise
            Console(stderr=True, highlight=False, soft_wrap=True).print(
                f"[red]error:[/] {escape(str(exc))}"
            )
            raise typer.Exit(1) from None

    return wrapper


def _say(*args: Any) -> None:
    if not _state["quiet"]:
        console.print(*args)


def _progress() -> Any:
    """Progress bars for each stage's dask work: on a terminal, unless ``--quiet``."""
    from mriflow.progress import terminal_progress

    return terminal_progress(console, enabled=not _state["quiet"])


def _shows_progress() -> bool:
    return not _state["quiet"] and console.is_terminal and not console.is_dumb_terminal


def _describe(image: Any) -> Table:
    table = Table(title=str(image.name), show_header=False, box=None)
    table.add_row("dims", ", ".join(f"{d}={n}" for d, n in image.sizes.items()))
    table.add_row("dtype", str(image.dtype))
    table.add_row("chunks", str(tuple(c[0] for c in image.chunks)) if image.chunks else "-")
    table.add_row("kind", str(image.attrs.get("kind")))
    table.add_row("orientation", "".join(image.mri.orientation))
    table.add_row("spacing (mm)", ", ".join(f"{s:.4g}" for s in image.mri.spacing))
    table.add_row("origin (mm)", ", ".join(f"{v:.4g}" for v in image.mri.origin))
    table.add_row("center RAS (mm)", ", ".join(f"{v:.4g}" for v in image.mri.center()))
    with np.printoptions(precision=4, suppress=True):
        table.add_row("affine", str(image.mri.affine))
    if "t" in image.coords and image.sizes.get("t", 0) > 1:
        step = float(image.t[1] - image.t[0])
        table.add_row("time step (s)", f"{step:.6g}")
    if "bval" in image.coords:
        shells = sorted({round(float(b), -1) for b in image.mri.bvals})
        table.add_row("b-values", ", ".join(f"{b:g}" for b in shells))
    source = image.attrs.get("source", {})
    if source:
        table.add_row("format", str(source.get("format")))
    return table


@app.command()
@_reports_errors
def info(
    path: Annotated[
        Path,
        typer.Argument(help="An image file (NIfTI, NIfTI pair, Analyze) or a DICOM series folder."),
    ],
) -> None:
    """Dims, shape, dtype, affine, orientation and spacing of an image (headers only)."""
    from mriflow.io import open_image

    image = open_image(path)
    console.print(_describe(image))


@app.command("dicom")
@_reports_errors
def dicom_series(
    directory: Annotated[Path, typer.Argument(help="A folder searched recursively for DICOM.")],
) -> None:
    """List the DICOM series under a folder, read from headers only (no identity shown)."""
    from rich.markup import escape

    from mriflow.io.dicom import discover_dicom

    found = discover_dicom(directory)
    table = Table(title=f"{len(found)} DICOM series in {directory}")
    for column in ("#", "description", "role", "matrix", "files", "volumes", "flip", "group"):
        table.add_column(column)
    for index, series in enumerate(found):
        table.add_row(
            str(index),
            escape(series.description or "-"),
            series.role_hint,
            f"{series.rows}x{series.columns}",
            str(series.n_files),
            str(series.n_temporal_positions),
            "-" if series.flip_angle is None else f"{series.flip_angle:g}",
            escape(series.group_key.rsplit("|", 1)[-1]) if series.group_key else "-",
        )
    console.print(table)


@app.command()
@_reports_errors
def demo(
    out_dir: Annotated[
        Path, typer.Argument(help="Where to write the demo data and results.")
    ] = Path("mriflow-demo"),
    workers: Annotated[int | None, typer.Option(help="Workers of the local cluster.")] = None,
    scheduler: Annotated[
        str | None, typer.Option(help="Address of an existing dask scheduler (else a local one).")
    ] = None,
    small: Annotated[bool, typer.Option(help="A 24x28x20 phantom instead of 48x56x40.")] = False,
) -> None:
    """Generate a synthetic DWI dataset and run the whole pipeline on a local dask cluster."""
    from mriflow.demo import run_demo

    started = time.perf_counter()
    _say(f"[bold]mriflow demo[/] into {out_dir}/")
    shape = (24, 28, 20) if small else (48, 56, 40)
    result = run_demo(
        out_dir,
        shape=shape,
        workers=workers,
        scheduler=scheduler,
        say=_say,
        progress=_progress(),
    )
    _say("[bold]files[/]")
    for name, path in result["files"].items():
        _say(f"  {name:14s} {path}")
    _say(f"done in {time.perf_counter() - started:.1f} s")


@app.command()
@_reports_errors
def acquisition(
    path: Annotated[Path, typer.Argument(help="An image file with its BIDS sidecar(s).")],
    modality: Annotated[Modality, typer.Option("--modality", "-m", help="The acquisition kind.")],
) -> None:
    """Acquisition parameters of an image: value, unit, and where each one came from."""
    from mriflow.io import open_image

    resolved = open_image(path, modality=modality.value).attrs["acquisition"]
    table = Table(title=f"{path.name} ({modality.value})")
    for column in ("parameter", "value", "unit", "source", "from"):
        table.add_column(column)
    for name, field in resolved.items():
        if name == "modality":
            continue
        value = field["value"]
        shown = f"{len(value)} values" if isinstance(value, list) and len(value) > 6 else value
        table.add_row(name, str(shown), field["unit"], field["source"], field["origin"])
    console.print(table)


@app.command("fit")
@_reports_errors
def fit_command(
    model: Annotated[str, typer.Argument(help="dti, csa or csd.")],
    dwi_path: Annotated[Path, typer.Argument(help="DWI image with .bval/.bvec next to it.")],
    out_dir: Annotated[Path, typer.Argument(help="Folder for the NIfTI maps.")],
    mask: Annotated[Path | None, typer.Option(help="Brain mask image (same grid).")] = None,
    sh_order: Annotated[int, typer.Option(help="SH order for csa/csd.")] = 6,
    scheduler: Annotated[
        str | None, typer.Option(help="Address of a dask scheduler (else local threads).")
    ] = None,
) -> None:
    """Fit a diffusion model voxel by voxel and write its maps as NIfTI (voxel-frame vectors)."""
    import dask

    from mriflow import fit as fits
    from mriflow.cluster import get_client
    from mriflow.errors import FitInputError
    from mriflow.io import open_image

    if model not in ("dti", "csa", "csd"):
        raise FitInputError(f"model: must be dti, csa or csd, got {model!r}")
    started = time.perf_counter()
    dwi = open_image(dwi_path)
    brain = open_image(mask, kind="label") > 0 if mask is not None else None
    if model == "dti":
        result = fits.dti(dwi, mask=brain)
        maps = {name: result[name] for name in ("fa", "md", "ad", "rd", "rgb")}
        maps["v1"] = result["evecs"].isel(eig=0)
    else:
        if model == "csa":
            result = fits.csa(dwi, sh_order=sh_order, mask=brain)
            maps = {"gfa": result["gfa"]}
        else:
            response = fits.auto_response(dwi)
            _say(f"response: evals {np.round(response.evals, 6).tolist()}, S0 {response.s0:.1f}")
            result = fits.csd(dwi, response=response, sh_order=sh_order, mask=brain)
            maps = {}
        found = fits.peaks(result, relative_peak_threshold=0.5, min_separation_angle=25)
        maps.update(
            shm_coeff=result["shm_coeff"],
            peak_dirs=found["peak_dirs"],
            peak_values=found["peak_values"],
        )
    out_dir.mkdir(parents=True, exist_ok=True)
    context = get_client(scheduler) if scheduler else dask.config.set(scheduler="threads")
    with context as client:
        if scheduler:
            _say(f"cluster {client.scheduler.address}, dashboard {client.dashboard_link}")
        progress = _progress()
        for name, image in maps.items():
            with progress(name):
                path = image.astype("float32").mri.to_nifti(out_dir / f"{model}_{name}.nii.gz")
            _say(f"  {name:12s} {path}")
    _say(f"done in {time.perf_counter() - started:.1f} s")


@app.command()
@_reports_errors
def convert(
    source: Annotated[
        str,
        typer.Argument(
            help="A NIfTI file, a DICOM series folder, a BIDS dataset root or a zarr store."
        ),
    ],
    destination: Annotated[
        str,
        typer.Argument(
            help="A .zarr store, a .nii/.nii.gz file, or a folder (for a BIDS dataset)."
        ),
    ],
    chunks: Annotated[
        str | None,
        typer.Option(help="Spatial chunk sizes i,j,k (e.g. 64,64,64); other axes stay whole."),
    ] = None,
    compressor: Annotated[
        str, typer.Option(help="zstd (blosc-zstd), lz4 (blosc-lz4), zlib or none.")
    ] = "zstd",
    levels: Annotated[
        int, typer.Option(help="Resolution levels, 1 = no pyramid (labels pooled by mode).")
    ] = 1,
    zarr_format: Annotated[int, typer.Option(help="zarr format version, 3 or 2.")] = 3,
    resume: Annotated[
        bool, typer.Option("--resume", help="Continue an interrupted conversion.")
    ] = False,
    overwrite: Annotated[
        bool, typer.Option("--overwrite", help="Replace an existing store.")
    ] = False,
) -> None:
    """Convert NIfTI, DICOM or a BIDS dataset to NIfTI-Zarr stores (streaming, resumable), or a
    store back to NIfTI."""
    from mriflow.io.zarr import convert as convert_image

    started = time.perf_counter()
    try:
        with _progress()("convert"):
            written = convert_image(
                source,
                destination,
                chunks=chunks,
                compressor=compressor,
                levels=levels,
                zarr_format=zarr_format,
                resume=resume,
                overwrite=overwrite,
            )
    except ValueError as exc:
        if isinstance(exc, MriflowError):
            raise
        raise typer.BadParameter(str(exc)) from None
    _say(f"wrote {written} in {time.perf_counter() - started:.1f} s")


@app.command("run")
@_reports_errors
def run_command(
    config: Annotated[
        Path | None, typer.Argument(help="Pipeline YAML (see --dump-defaults).")
    ] = None,
    source: Annotated[
        str | None, typer.Argument(help="Input: NIfTI file, DICOM folder, zarr store, BIDS root.")
    ] = None,
    output: Annotated[Path, typer.Option("--output", "-o", help="Output folder.")] = Path(
        "mriflow-out"
    ),
    scheduler: Annotated[
        str | None, typer.Option(help="Address of a dask scheduler (overrides the config).")
    ] = None,
    resume: Annotated[bool, typer.Option(help="Continue an interrupted run.")] = False,
    validate: Annotated[bool, typer.Option(help="Only check the config, run nothing.")] = False,
    dump_defaults: Annotated[
        str | None, typer.Option(help="Print the default config for dwi, dce, asl, dsc or ivim.")
    ] = None,
) -> None:
    """Run a pipeline from a YAML config; the config is validated before any work starts."""
    from mriflow.config import dump_defaults as defaults_text
    from mriflow.config import load_config
    from mriflow.pipeline import run_pipeline

    if dump_defaults:
        console.print(defaults_text(dump_defaults), end="", markup=False)
        return
    if config is None:
        raise typer.BadParameter("give a pipeline config (or --dump-defaults dwi|dce|asl|dsc|ivim)")
    settings = load_config(config)
    if validate:
        _say(f"{config}: valid {settings.modality} pipeline")
        return
    if source is None:
        raise typer.BadParameter("give the input to process after the config")
    started = time.perf_counter()
    outputs = run_pipeline(
        settings,
        source,
        output,
        scheduler=scheduler,
        resume=resume,
        say=_say,
        progress=_progress(),
    )
    for stage, paths in outputs.items():
        for path in paths:
            _say(f"  {stage:10s} {path}")
    _say(f"done in {time.perf_counter() - started:.1f} s")


def _named_image(fields: Any, name: str, what: str) -> Any:
    """A data variable of the fit store ``fields``, or an image file opened by path."""
    if name in fields.data_vars:
        return fields[name]
    if Path(name).exists():
        from mriflow.io import open_image

        return open_image(name)
    raise typer.BadParameter(
        f"{what} {name!r}: neither a variable of the fields store "
        f"({', '.join(sorted(map(str, fields.data_vars)))}) nor an existing image file"
    )


@app.command()
@_reports_errors
def track(
    fields: Annotated[
        str, typer.Argument(help="A fit store (zarr Dataset with shm_coeff or peak_dirs).")
    ],
    output: Annotated[str, typer.Option("--output", "-o", help="The streamline store (.zarr).")],
    method: Annotated[str, typer.Option(help="deterministic or probabilistic.")] = "deterministic",
    stop: Annotated[
        str, typer.Option(help="Stopping map: a variable of FIELDS or an image file.")
    ] = "gfa",
    threshold: Annotated[float, typer.Option(help="Stop where the map falls to this.")] = 0.2,
    seed_mask: Annotated[
        str | None,
        typer.Option(help="Seed mask (variable or image file); default: stopping map > threshold."),
    ] = None,
    density: Annotated[int, typer.Option(help="Seeds per voxel along each axis.")] = 1,
    step_size: Annotated[float, typer.Option(help="Step in mm.")] = 0.5,
    max_angle: Annotated[float, typer.Option(help="Largest turn per step, degrees.")] = 30.0,
    min_length: Annotated[float, typer.Option(help="Drop shorter streamlines (mm).")] = 10.0,
    max_length: Annotated[float, typer.Option(help="Cut longer streamlines (mm).")] = 250.0,
    min_total_weight: Annotated[
        float,
        typer.Option(help="Peak following: share of corner weight that must agree (EuDX 0.5)."),
    ] = 0.0,
    rng: Annotated[int, typer.Option(help="Key of the per-seed random streams.")] = 0,
    batch_size: Annotated[int, typer.Option(help="Seeds per task.")] = 5000,
    workers: Annotated[int | None, typer.Option(help="Workers of the local cluster.")] = None,
    scheduler: Annotated[
        str | None, typer.Option(help="Address of an existing dask scheduler (else a local one).")
    ] = None,
    resume: Annotated[
        bool, typer.Option("--resume", help="Continue an interrupted run, skipping done batches.")
    ] = False,
    overwrite: Annotated[
        bool, typer.Option("--overwrite", help="Replace an existing store.")
    ] = False,
) -> None:
    """Track streamlines on a dask cluster into a resumable zarr streamline store."""
    import mriflow.track as mt
    from mriflow.cluster import get_client
    from mriflow.io.zarr import open_zarr

    started = time.perf_counter()
    dataset = open_zarr(fields)
    if not hasattr(dataset, "data_vars"):
        raise typer.BadParameter(f"{fields}: holds one image, not a fit Dataset")
    stop_map = _named_image(dataset, stop, "--stop")
    stopping = mt.ThresholdStopping(stop_map, threshold)
    mask = _named_image(dataset, seed_mask, "--seed-mask") if seed_mask else stop_map > threshold
    mask = mask.astype("uint8")
    mask.attrs.update(stop_map.attrs if seed_mask is None else mask.attrs)
    seeds = mt.seeds_from_mask(mask, density=density)
    with get_client(
        scheduler, n_workers=workers, threads_per_worker=1 if workers else None
    ) as client:
        _say(
            f"cluster {client.scheduler.address}, dashboard {client.dashboard_link}, "
            f"{len(seeds)} seeds"
        )
        written = mt.track_to_zarr(
            dataset,
            stopping,
            seeds,
            output,
            method=method,
            step_size=step_size,
            max_angle=max_angle,
            min_length=min_length,
            max_length=max_length,
            min_total_weight=min_total_weight,
            rng=rng,
            batch_size=batch_size,
            client=client,
            resume=resume,
            overwrite=overwrite,
            progress=_shows_progress(),
        )
    _say(f"wrote {written!r} in {time.perf_counter() - started:.1f} s")


@app.command()
@_reports_errors
def export(
    store: Annotated[str, typer.Argument(help="A streamline store written by `mriflow track`.")],
    destination: Annotated[Path, typer.Argument(help="Output file: .trx, .trk or .tck.")],
) -> None:
    """Export a streamline store to .trx / .trk / .tck, streaming (bounded memory)."""
    import mriflow.track as mt

    started = time.perf_counter()
    tractogram = mt.open_tractogram(store)
    tractogram.export(destination)
    elapsed = time.perf_counter() - started
    _say(f"wrote {destination} ({len(tractogram)} streamlines) in {elapsed:.1f} s")


def main(argv: list[str] | None = None) -> int:
    """Run the command line; returns the exit code."""
    try:
        app(args=argv, prog_name="mriflow")
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else 0 if exc.code is None else 1
    return 0


def run() -> None:
    """``mriflow`` console script."""
    sys.exit(main())
