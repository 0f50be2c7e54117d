"""Run a validated pipeline config (``mriflow run``): open, fit, track, write.

Each stage is a plain function of the previous stage's lazy results; the work happens when
outputs are written, on the cluster the config names (or an embedded loopback-only one).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import xarray as xr

from mriflow.config import ConfigError, PipelineConfig
from mriflow.progress import ProgressFactory, no_progress

__all__ = ["run_pipeline"]

Say = Callable[[str], None]


@dataclass
class _Inputs:
    """What a pipeline runs on: the main image, and the DCE study it came from, if any."""

    image: xr.DataArray
    study: Any = None


# AcquisitionError prefixes of open_dce_study -> the config keys that set those values
_STUDY_KEYS = {
    "flip_angle:": ("acquisition.flip_angle", "degrees"),
    "flip_angles:": ("acquisition.flip_angles", "degrees, one per VFA series"),
    "repetition_time:": ("acquisition.tr", "ms"),
}


def _open_input(config: PipelineConfig, source: str | Path) -> _Inputs:
    """The input image of ``config``'s modality, with its acquisition parameters resolved."""
    from mriflow.io import open_image

    fmt = config.data.format
    if fmt == "bids":
        from mriflow.bids import load_bids

        if not config.data.subject:
            raise ConfigError("data.subject: a BIDS input needs the subject to process")
        return _Inputs(
            load_bids(
                source,
                subject=config.data.subject,
                session=config.data.session,
                modality=config.modality,
            )
        )
    path = Path(source)
    is_dicom = path.is_dir() and not path.name.endswith(".zarr")
    checks = {
        "nifti": lambda p: p.is_file(),
        "dicom": lambda p: is_dicom,
        "zarr": lambda p: p.name.endswith(".zarr") or "://" in str(source),
    }
    if fmt in checks and not checks[fmt](path):
        raise ConfigError(f"data.format: {source} is not {fmt} input")
    if config.modality == "dce" and is_dicom and fmt in ("auto", "dicom"):
        return _dce_study(config, path)
    from mriflow.errors import AcquisitionError

    try:
        image = open_image(source, modality=config.modality, acquisition=_explicit(config))
    except AcquisitionError as exc:
        message = str(exc)
        keys = [
            key for bids, key in _CONFIG_KEYS.get(config.modality, {}).items() if bids in message
        ]
        if not keys:
            raise
        raise ConfigError(f"{message}; or set {keys[0]} in the config") from exc
    return _Inputs(image)


# BIDS keys a missing-metadata error can name -> the config key that gives the value
_CONFIG_KEYS = {
    "asl": {
        "ArterialSpinLabelingType": "asl.labeling_type",
        "PostLabelingDelay": "asl.post_labeling_delay (s)",
        "LabelingDuration": "asl.labeling_duration (s)",
        "BolusCutOffDelayTime": "asl.bolus_cut_off_delay_time (s)",
    },
    "dsc": {"EchoTime": "acquisition.te (ms)", "RepetitionTime": "acquisition.tr (ms)"},
    "dce": {"FlipAngle": "acquisition.flip_angle (degrees)"},
}


def _dce_study(config: PipelineConfig, folder: Path) -> _Inputs:
    """A DICOM study folder: the dynamic series and VFA set found from the headers."""
    from mriflow.errors import AcquisitionError
    from mriflow.io.dicom.study import open_dce_study

    acq = config.acquisition
    try:
        study = open_dce_study(
            folder,
            flip_angle=acq.flip_angle,
            vfa_flip_angles=acq.flip_angles,
            repetition_time=None if acq.tr is None else acq.tr / 1000,
        )
    except AcquisitionError as exc:
        message = str(exc)
        for prefix, (key, unit) in _STUDY_KEYS.items():
            if message.startswith(prefix):
                detail = message.removeprefix(prefix).strip()
                raise ConfigError(f"{key}: {detail}; set {key} in the config ({unit})") from exc
        raise
    return _Inputs(study.dynamic, study)


def _explicit(config: PipelineConfig) -> dict[str, Any] | None:
    """Explicit acquisition values from the config, in the units mriflow uses (seconds)."""
    acq = config.acquisition
    values: dict[str, Any] = {}
    if acq.te is not None:
        values["EchoTime"] = acq.te / 1000
    if acq.field_strength is not None:
        values["MagneticFieldStrength"] = acq.field_strength
    if config.modality == "dce":
        if acq.tr is not None:
            values["RepetitionTimeExcitation"] = acq.tr / 1000
        if acq.flip_angle is not None:
            values["FlipAngle"] = acq.flip_angle
        elif acq.flip_angles:
            values["FlipAngle"] = acq.flip_angles[-1]
    elif acq.tr is not None:
        values["RepetitionTime"] = acq.tr / 1000
    if config.modality == "asl" and config.asl is not None:
        asl = config.asl
        given = {
            "ArterialSpinLabelingType": asl.labeling_type,
            "PostLabelingDelay": asl.post_labeling_delay,
            "LabelingDuration": asl.labeling_duration,
            "BolusCutOffDelayTime": asl.bolus_cut_off_delay_time,
            "LabelingEfficiency": asl.labeling_efficiency,
        }
        values.update({key: value for key, value in given.items() if value is not None})
    return values or None


def _client(config: PipelineConfig, scheduler: str | None) -> Any:
    from mriflow.cluster import get_client

    cluster = config.cluster
    kwargs: dict[str, Any] = {}
    if cluster.n_workers:
        kwargs["n_workers"] = cluster.n_workers
    if cluster.threads_per_worker:
        kwargs["threads_per_worker"] = cluster.threads_per_worker
    if cluster.memory_limit:
        kwargs["memory_limit"] = cluster.memory_limit
    return get_client(scheduler or cluster.address, **kwargs)


def _write(
    config: PipelineConfig,
    result: xr.Dataset,
    out_dir: Path,
    name: str,
    resume: bool,
    say: Say,
    progress: ProgressFactory = no_progress,
) -> list[Path]:
    with progress(name):
        return _write_outputs(config, result, out_dir, name, resume, say)


def _write_outputs(
    config: PipelineConfig, result: xr.Dataset, out_dir: Path, name: str, resume: bool, say: Say
) -> list[Path]:
    from mriflow.io import to_zarr

    started = time.perf_counter()
    if config.output.format == "zarr":
        store = out_dir / "fits.zarr"
        to_zarr(
            result,
            store,
            group=name,
            chunks=config.output.chunks,
            compressor=config.output.compressor,
            resume=resume,
            overwrite=not resume,
        )
        written = [store / name]
    else:
        written = [
            image.mri.to_nifti(out_dir / f"{name}_{variable}.nii.gz")
            for variable, image in result.data_vars.items()
        ]
    say(f"  {name}: wrote {len(written)} output(s) in {time.perf_counter() - started:.1f} s")
    return written


def _diffusion(
    config: PipelineConfig,
    inputs: _Inputs,
    mask: Any,
    out_dir: Path,
    resume: bool,
    say: Say,
    progress: ProgressFactory = no_progress,
) -> dict[str, list[Path]]:
    from mriflow import fit

    dwi = inputs.image
    outputs: dict[str, list[Path]] = {}
    model = config.fit or "dti"
    if model == "dti":
        outputs["dti"] = _write(
            config, fit.dti(dwi, mask=mask), out_dir, "dti", resume, say, progress
        )
        return outputs
    if model == "csa":
        odf = fit.csa(dwi, mask=mask)
    else:
        response = fit.auto_response(dwi)
        say(f"  response: evals {[round(float(e), 6) for e in response.evals]}")
        odf = fit.csd(dwi, response=response, mask=mask)
    outputs[model] = _write(config, odf, out_dir, model, resume, say, progress)
    found = fit.peaks(odf)
    outputs["peaks"] = _write(config, found, out_dir, "peaks", resume, say, progress)
    if config.tracking is not None:
        with progress("tracking"):
            outputs["tracking"] = _tracking(config, dwi, odf, found, mask, out_dir, say)
    return outputs


def _tracking(
    config: PipelineConfig,
    dwi: xr.DataArray,
    odf: xr.Dataset,
    found: xr.Dataset,
    mask: Any,
    out_dir: Path,
    say: Say,
) -> list[Path]:
    try:
        from mriflow import track
    except ImportError:  # pragma: no cover - tracking ships with the package
        raise ConfigError("tracking: this mriflow has no tracking engine") from None
    from mriflow.io import open_image

    settings = config.tracking
    assert settings is not None
    started = time.perf_counter()
    if settings.seeds.mask:
        seed_mask = open_image(settings.seeds.mask, kind="label") > 0
    elif mask is not None:
        seed_mask = mask
    else:
        raise ConfigError("tracking.seeds.mask: give a seed mask (or data.mask)")
    if settings.stopping.map == "gfa":
        stop_map = odf["gfa"] if "gfa" in odf else found.get("gfa")
        if stop_map is None:
            from mriflow import fit

            stop_map = fit.csa(dwi, mask=mask)["gfa"]
    else:
        from mriflow import fit

        stop_map = fit.dti(dwi, mask=mask)["fa"]
    stopping = track.ThresholdStopping(stop_map.compute(), settings.stopping.threshold)
    seeds = track.seeds_from_mask(seed_mask.compute(), density=settings.seeds.density)
    fields = (found if settings.method == "deterministic" else odf).compute()
    tractogram = track.track(
        fields,
        stopping,
        seeds,
        method=settings.method,
        step_size=settings.step_size,
        max_angle=settings.max_angle,
        min_length=settings.min_length,
        max_length=settings.max_length,
        min_total_weight=settings.min_total_weight,
        rng=settings.rng,
    )
    path = out_dir / "tracts.trk"
    tractogram.save(path)
    say(
        f"  tracking: {len(tractogram)} streamlines from {len(seeds)} seeds in "
        f"{time.perf_counter() - started:.1f} s"
    )
    return [path]


def _dce(
    config: PipelineConfig,
    inputs: _Inputs,
    mask: Any,
    out_dir: Path,
    resume: bool,
    say: Say,
    progress: ProgressFactory = no_progress,
) -> dict[str, list[Path]]:
    """SPGR signal -> pre-contrast T1 (VFA) -> concentration -> AIF -> kinetic model."""
    from mriflow import fit
    from mriflow.config import PerfusionConfig
    from mriflow.io import open_image

    settings = config.pipeline or PerfusionConfig()
    series, study = inputs.image, inputs.study
    acq = config.acquisition
    tr = acq.tr / 1000 if acq.tr is not None else None
    outputs: dict[str, list[Path]] = {}
    data = config.data
    if data.t1_map:
        t1: Any = open_image(data.t1_map)
    elif data.vfa or (study is not None and study.vfa is not None):
        if data.vfa and Path(data.vfa).is_dir() and not data.vfa.endswith(".zarr"):
            from mriflow.io.dicom.study import open_vfa_series

            angles: Any
            vfa, angles, header_tr = open_vfa_series(data.vfa, flip_angles=acq.flip_angles)
            vfa_tr = tr if tr is not None else header_tr  # the dynamic keeps its own TR
            if vfa_tr is None:
                raise ConfigError(
                    f"acquisition.tr: the VFA series in {data.vfa} have no RepetitionTime "
                    "(0018,0080); set acquisition.tr in the config (ms)"
                )
            say(f"  t1: VFA set of {len(angles)} series, flip angles {angles} deg, TR {vfa_tr} s")
        elif data.vfa:
            vfa, angles, vfa_tr = open_image(data.vfa, modality="dce"), acq.flip_angles, tr
        else:
            vfa, angles, tr = study.vfa, study.vfa_flip_angles, study.repetition_time
            vfa_tr = tr
            say(f"  t1: VFA set of {len(angles)} series, flip angles {angles} deg, TR {tr} s")
        relaxometry = fit.t1_vfa(vfa, flip_angles=angles, tr=vfa_tr, mask=mask)
        outputs["t1"] = _write(config, relaxometry, out_dir, "t1", resume, say, progress)
        t1 = relaxometry["t1"]
    elif data.t10 is not None:
        t1 = data.t10
    else:
        raise ConfigError(
            "data: DCE needs the pre-contrast T1: data.vfa (a variable-flip-angle image), "
            "data.t1_map, or data.t10 (one value in seconds)"
        )
    concentration = fit.dce_concentration(
        series, t1, relaxivity=settings.relaxivity, baseline=settings.baseline_frames, tr=tr
    )
    if settings.aif_source == "mask":
        arterial = open_image(settings.aif_mask, kind="label") > 0
        aif = fit.aif_from_mask(concentration, arterial)
    else:
        aif = fit.population_aif(
            settings.population_aif, times=series["t"], delay=settings.aif_delay
        )
    kinetic = fit.dce(
        concentration, aif, model=settings.model, mask=mask, hematocrit=settings.hematocrit
    )
    outputs[settings.model] = _write(
        config, kinetic, out_dir, settings.model, resume, say, progress
    )
    return outputs


def _asl(
    config: PipelineConfig,
    inputs: _Inputs,
    mask: Any,
    out_dir: Path,
    resume: bool,
    say: Say,
    progress: ProgressFactory = no_progress,
) -> dict[str, list[Path]]:
    """Control/label pairs (aslcontext) -> CBF (and ATT with several PLDs)."""
    from mriflow import fit
    from mriflow.config import AslConfig
    from mriflow.io import open_image

    settings = config.asl or AslConfig()
    m0: Any = settings.m0_value
    if settings.m0:
        m0 = open_image(settings.m0)
    result = fit.asl_cbf(
        inputs.image,
        m0=m0,
        labeling_efficiency=settings.labeling_efficiency,
        t1_blood=settings.t1_blood,
        partition_coefficient=settings.partition_coefficient,
        mask=mask,
    )
    return {"asl": _write(config, result, out_dir, "asl", resume, say, progress)}


def _dsc(
    config: PipelineConfig,
    inputs: _Inputs,
    mask: Any,
    out_dir: Path,
    resume: bool,
    say: Say,
    progress: ProgressFactory = no_progress,
) -> dict[str, list[Path]]:
    """Signal -> deltaR2* -> AIF over the arterial mask -> rCBV, oSVD CBF, MTT, Tmax."""
    from mriflow import fit
    from mriflow.io import open_image

    settings = config.dsc
    assert settings is not None  # the schema requires the section for DSC
    series = inputs.image
    arterial = open_image(settings.aif_mask, kind="label") > 0
    with progress("aif"):
        aif = fit.aif_from_mask(series, arterial)
    say(f"  aif: mean signal of {aif.attrs['voxels']} arterial voxels")
    result = fit.dsc(
        series,
        aif,
        baseline=settings.baseline_frames,
        leakage_correction=settings.leakage_correction,
        oscillation_index=settings.oscillation_index,
        mask=mask,
    )
    return {"dsc": _write(config, result, out_dir, "dsc", resume, say, progress)}


def _ivim(
    config: PipelineConfig,
    inputs: _Inputs,
    mask: Any,
    out_dir: Path,
    resume: bool,
    say: Say,
    progress: ProgressFactory = no_progress,
) -> dict[str, list[Path]]:
    """Multi-b diffusion series -> S0, f, D, D*."""
    from mriflow import fit
    from mriflow.config import IvimConfig

    settings = config.ivim or IvimConfig()
    result = fit.ivim(
        inputs.image, method=settings.method, b_threshold=settings.b_threshold, mask=mask
    )
    return {"ivim": _write(config, result, out_dir, "ivim", resume, say, progress)}


def run_pipeline(
    config: PipelineConfig,
    source: str | Path,
    out_dir: str | Path,
    *,
    scheduler: str | None = None,
    resume: bool = False,
    say: Say = print,
    progress: ProgressFactory = no_progress,
) -> dict[str, list[Path]]:
    """Run ``config`` on ``source`` and write everything under ``out_dir``; returns the paths
    written per stage. Inputs are opened (and their metadata checked) before any cluster
    starts, so a bad input fails fast. ``progress`` makes the progress display of each stage
    (see :func:`mriflow.progress.compute_progress`)."""
    from mriflow.io import open_image

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    inputs = _open_input(config, source)
    mask = open_image(config.data.mask, kind="label") > 0 if config.data.mask else None
    runners = {"dwi": _diffusion, "dce": _dce, "asl": _asl, "dsc": _dsc, "ivim": _ivim}
    if config.modality not in runners:
        raise ConfigError(
            f"modality: {config.modality!r} pipelines are not available in this version; "
            f"available: {', '.join(sorted(runners))}"
        )
    with _client(config, scheduler) as client:
        say(f"cluster {client.scheduler.address}, dashboard {client.dashboard_link}")
        return runners[config.modality](config, inputs, mask, out, resume, say, progress)
