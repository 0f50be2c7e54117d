"""Pipeline configuration: YAML files validated before any work starts.

The schema (pydantic, unknown keys forbidden) covers the osipy-style perfusion config and the
diffusion path. Errors name the key, its line, what was expected, and the nearest valid key.
YAML is read with ``yaml.safe_load`` after refusing anchors and aliases (a few lines of
aliases can expand to gigabytes: the "billion laughs" attack).
"""

from __future__ import annotations

import difflib
import os
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from mriflow.errors import MriflowError

__all__ = ["ConfigError", "PipelineConfig", "default_config", "dump_defaults", "load_config"]

MAX_CONFIG_BYTES = 1 << 20
#: The modalities a pipeline config can name.
MODALITIES = ("dwi", "dce", "asl", "dsc", "ivim")


class ConfigError(MriflowError, ValueError):
    """A pipeline config is unreadable or invalid; the message names the key and its line."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_default=True)


class DataConfig(_Section):
    """Where the input comes from."""

    format: Literal["auto", "nifti", "dicom", "bids", "zarr"] = "auto"
    subject: str | None = None
    session: str | None = None
    mask: str | None = Field(None, description="path to a mask image (NIfTI/zarr)")
    vfa: str | None = Field(
        None,
        description="DCE: variable-flip-angle image, one volume per angle, or a DICOM folder "
        "holding one series per flip angle",
    )
    t1_map: str | None = Field(None, description="DCE: pre-contrast T1 map (s) instead of vfa")
    t10: float | None = Field(None, gt=0, description="DCE: one pre-contrast T1 (s) for all voxels")


class AcquisitionConfig(_Section):
    """Explicit acquisition parameters; they win over sidecars and DICOM headers.

    Times are in milliseconds here, as in osipy's configs (``tr: 5.0``)."""

    tr: float | None = Field(None, gt=0, description="repetition time (ms)")
    te: float | None = Field(None, gt=0, description="echo time (ms)")
    flip_angles: list[float] | None = Field(None, description="degrees, one per VFA volume")
    flip_angle: float | None = Field(
        None,
        gt=0,
        lt=90,
        description="DCE: degrees, of the dynamic series (default: the last of flip_angles "
        "for NIfTI input, the headers for a DICOM study, else the sidecar)",
    )
    field_strength: float | None = Field(None, gt=0, description="tesla")


class PerfusionConfig(_Section):
    model: Literal["tofts", "extended_tofts", "patlak"] = "extended_tofts"
    aif_source: Literal["population", "mask"] = "population"
    population_aif: Literal["parker", "georgiou", "fritz_hansen"] = "parker"
    aif_mask: str | None = None
    hematocrit: float = Field(0.42, gt=0, lt=1)
    relaxivity: float = Field(4.5, gt=0, description="contrast agent r1 (/mM/s)")
    baseline_frames: int = Field(5, ge=1)
    aif_delay: float = Field(0.0, ge=0, description="bolus arrival after the first frame (s)")

    @model_validator(mode="after")
    def _mask_for_mask_aif(self) -> PerfusionConfig:
        if self.aif_source == "mask" and not self.aif_mask:
            raise ValueError("aif_source 'mask' needs aif_mask: the path of the arterial mask")
        return self


class AslConfig(_Section):
    """ASL CBF (white paper; multi-PLD: CBF and ATT). Times in seconds, as in BIDS sidecars;
    values given here win over the sidecar."""

    m0: str | None = Field(None, description="separate M0 image (default: the sidecar's M0Type)")
    m0_value: float | None = Field(None, gt=0, description="one M0 for every voxel")
    labeling_type: Literal["PCASL", "CASL", "PASL"] | None = None
    post_labeling_delay: float | list[float] | None = Field(
        None, description="s; one value, or one per volume"
    )
    labeling_duration: float | list[float] | None = Field(
        None, description="s (PCASL/CASL); one value, or one per volume"
    )
    bolus_cut_off_delay_time: float | None = Field(None, gt=0, description="s, PASL TI1")
    labeling_efficiency: float | None = Field(
        None, gt=0, le=1, description="default: the white paper's for the labeling type"
    )
    t1_blood: float = Field(1.65, gt=0, description="s (3 T)")
    partition_coefficient: float = Field(0.9, gt=0, description="ml/g")

    @model_validator(mode="after")
    def _one_m0(self) -> AslConfig:
        if self.m0 is not None and self.m0_value is not None:
            raise ValueError("give m0 (an image) or m0_value (one number), not both")
        return self


class DscConfig(_Section):
    """DSC rCBV, oSVD CBF, MTT, Tmax; the AIF is the mean signal over an arterial mask."""

    aif_mask: str = Field(description="arterial mask image on the series' grid")
    baseline_frames: int = Field(5, ge=1, description="pre-bolus volumes")
    leakage_correction: bool = Field(False, description="Boxerman-Weisskoff correction")
    oscillation_index: float = Field(0.095, gt=0, description="oSVD residue smoothness")


class IvimConfig(_Section):
    """IVIM: S0, f, D and D* (mm²/s) from a multi-b diffusion series (.bval/.bvec)."""

    method: Literal["segmented", "full"] = "segmented"
    b_threshold: float = Field(
        200.0, gt=0, description="s/mm²; b-values from here fit D in the segmented step"
    )


class SeedsConfig(_Section):
    mask: str | None = Field(None, description="seed mask; default: white matter of the fit")
    density: int = Field(2, ge=1, le=10, description="seeds per voxel along each axis")


class StoppingConfig(_Section):
    map: Literal["gfa", "fa"] = "gfa"
    threshold: float = Field(0.25, ge=0, le=1)


class TrackingConfig(_Section):
    method: Literal["deterministic", "probabilistic"] = "probabilistic"
    seeds: SeedsConfig = SeedsConfig()
    stopping: StoppingConfig = StoppingConfig()
    step_size: float = Field(0.5, gt=0, description="mm")
    max_angle: float = Field(30.0, gt=0, le=90, description="degrees")
    min_length: float = Field(10.0, ge=0, description="mm")
    max_length: float = Field(250.0, gt=0, description="mm")
    min_total_weight: float = Field(
        0.0, ge=0, le=1, description="deterministic peaks: 0.5 is dipy's EuDX rule"
    )
    rng: int = 0


class ClusterConfig(_Section):
    address: str | None = Field(None, description="tcp://host:port of a dask scheduler")
    n_workers: int | None = Field(None, ge=1)
    threads_per_worker: int | None = Field(None, ge=1)
    memory_limit: str | None = Field(None, description="per worker, e.g. '4GiB'")


class OutputConfig(_Section):
    format: Literal["zarr", "nifti"] = "zarr"
    chunks: list[int] | None = Field(None, min_length=3, max_length=3)
    compressor: Literal["zstd", "lz4", "zlib", "none"] = "zstd"


class PipelineConfig(_Section):
    """A whole pipeline: what the input is, what to fit, what to track, where to run."""

    modality: Literal["dwi", "dce", "asl", "dsc", "ivim"]
    data: DataConfig = DataConfig()
    acquisition: AcquisitionConfig = AcquisitionConfig()
    pipeline: PerfusionConfig | None = None
    fit: Literal["dti", "csa", "csd"] | None = None
    tracking: TrackingConfig | None = None
    asl: AslConfig | None = None
    dsc: DscConfig | None = None
    ivim: IvimConfig | None = None
    cluster: ClusterConfig = ClusterConfig()
    output: OutputConfig = OutputConfig()

    @model_validator(mode="after")
    def _sections_fit_the_modality(self) -> PipelineConfig:
        diffusion = self.modality == "dwi"
        if self.pipeline is not None and self.modality != "dce":
            raise ValueError(
                f"'pipeline' (DCE models) does not apply to modality {self.modality!r}"
            )
        if (self.fit is not None or self.tracking is not None) and not diffusion:
            raise ValueError(f"'fit' and 'tracking' apply to diffusion data, not {self.modality!r}")
        if self.tracking is not None and self.fit == "dti":
            raise ValueError("tracking needs an ODF fit: set fit to 'csa' or 'csd'")
        for section in ("asl", "dsc", "ivim"):
            if getattr(self, section) is not None and self.modality != section:
                raise ValueError(f"{section!r} does not apply to modality {self.modality!r}")
        if self.modality == "dsc" and self.dsc is None:
            raise ValueError("modality 'dsc' needs a 'dsc' section with aif_mask (the AIF)")
        return self


def default_config(modality: str) -> PipelineConfig:
    """The defaults for ``modality`` (one of :data:`MODALITIES`), as ``mriflow run
    --dump-defaults``."""
    if modality == "dce":
        return PipelineConfig(
            modality="dce",
            pipeline=PerfusionConfig(),
            acquisition=AcquisitionConfig(tr=5.0, flip_angles=[2, 5, 10, 15]),
        )
    if modality == "dwi":
        return PipelineConfig(modality="dwi", fit="csd", tracking=TrackingConfig())
    if modality == "asl":
        return PipelineConfig(modality="asl", asl=AslConfig())
    if modality == "dsc":
        return PipelineConfig(modality="dsc", dsc=DscConfig(aif_mask="sub-01_aifmask.nii.gz"))
    if modality == "ivim":
        return PipelineConfig(modality="ivim", ivim=IvimConfig())
    raise ConfigError(
        f"--dump-defaults: no defaults for {modality!r}; use one of {', '.join(MODALITIES)}"
    )


def dump_defaults(modality: str) -> str:
    """YAML text of :func:`default_config` (sections of other modalities left out)."""
    values = default_config(modality).model_dump(mode="json")
    return yaml.safe_dump(
        {key: value for key, value in values.items() if value is not None}, sort_keys=False
    )


def _refuse_aliases(text: str, source: str) -> None:
    try:
        for event in yaml.parse(text, Loader=yaml.SafeLoader):
            if isinstance(event, yaml.AliasEvent) or getattr(event, "anchor", None):
                mark = event.start_mark
                raise ConfigError(
                    f"{source}: line {mark.line + 1}: YAML anchors and aliases are not allowed "
                    "in pipeline configs; write the values out"
                )
    except yaml.YAMLError as exc:
        raise ConfigError(f"{source}: not valid YAML ({exc})") from exc


def _lines(text: str) -> dict[tuple[str, ...], int]:
    """1-based line of every mapping key, by its path."""
    found: dict[tuple[str, ...], int] = {}

    def walk(node: Any, path: tuple[str, ...]) -> None:
        if isinstance(node, yaml.MappingNode):
            for key, value in node.value:
                child = (*path, str(key.value))
                found[child] = key.start_mark.line + 1
                walk(value, child)
        elif isinstance(node, yaml.SequenceNode):
            for index, value in enumerate(node.value):
                found[(*path, str(index))] = value.start_mark.line + 1
                walk(value, (*path, str(index)))

    walk(yaml.compose(text, Loader=yaml.SafeLoader), ())
    return found


def _allowed_keys(path: tuple[str, ...]) -> list[str]:
    model: Any = PipelineConfig
    for part in path:
        field = model.model_fields.get(part)
        if field is None:
            return []
        annotation = field.annotation
        candidates = [annotation, *getattr(annotation, "__args__", ())]
        model = next(
            (c for c in candidates if isinstance(c, type) and issubclass(c, BaseModel)), None
        )
        if model is None:
            return []
    return list(model.model_fields)


def _explain(error: dict[str, Any], lines: dict[tuple[str, ...], int], source: str) -> str:
    path = tuple(str(p) for p in error["loc"])
    key = ".".join(path) or "(top level)"
    line = next((lines[path[:n]] for n in range(len(path), 0, -1) if path[:n] in lines), None)
    where = f"{source}: line {line}: " if line else f"{source}: "
    if error["type"] == "extra_forbidden":
        allowed = _allowed_keys(path[:-1])
        near = difflib.get_close_matches(path[-1], allowed, n=1)
        hint = f"; did you mean {near[0]!r}?" if near else f"; valid keys: {', '.join(allowed)}"
        return f"{where}unknown key {key!r}{hint}"
    if error["type"] == "missing":
        return f"{where}{key!r} is required"
    given = error.get("input")
    message = error["msg"].removeprefix("Value error, ")
    return f"{where}{key}: {message} (got {given!r})" if path else f"{where}{message}"


def load_config(path: str | os.PathLike[str]) -> PipelineConfig:
    """Read and validate a pipeline YAML file; raise :class:`ConfigError` on any problem."""
    path = Path(path)
    source = str(path)
    try:
        if path.stat().st_size > MAX_CONFIG_BYTES:
            raise ConfigError(f"{source}: {path.stat().st_size} bytes is too large for a config")
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{source}: no such config file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{source}: cannot read the config ({exc})") from exc
    _refuse_aliases(text, source)
    try:
        content = yaml.safe_load(text)
    except yaml.YAMLError as exc:  # e.g. a !!python tag, which safe_load refuses
        raise ConfigError(f"{source}: not a plain YAML config ({exc})") from exc
    if not isinstance(content, dict):
        raise ConfigError(f"{source}: a pipeline config is a mapping of keys (modality: ..., ...)")
    try:
        return PipelineConfig.model_validate(content)
    except ValidationError as exc:
        lines = _lines(text)
        problems = [_explain(dict(e), lines, source) for e in exc.errors()]
        raise ConfigError("\n".join(problems)) from None
