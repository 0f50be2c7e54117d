"""BIDS datasets: file-name entities, dataset walking, sidecar inheritance, ASL context.

No pybids needed: a dataset is walked as ``sub-*/[ses-*/]{dwi,perf,anat,func}/``, and each
file name is parsed into BIDS entities (``sub-01_ses-2_acq-pcasl_run-1_asl.nii.gz`` →
``{"sub": "01", "ses": "2", "acq": "pcasl", "run": "1"}``, suffix ``asl``, extension
``.nii.gz``). Sidecar JSONs are merged by the BIDS inheritance principle: every JSON from the
dataset root down to the file's folder whose entities are a subset of the file's and whose
suffix is the same applies, the nearest one winning key by key.

Images open through :func:`mriflow.open_image` with the modality's acquisition parameters
resolved (see :mod:`mriflow.acquisition`)::

    dwi = load_bids("ds/", subject="01", modality="dwi")
    asl, m0 = load_bids_with_m0("ds/", subject="01")
    context = load_asl_context("ds/", subject="01")   # ["control", "label", ..., "m0scan"]
"""

from __future__ import annotations

import csv
import json
import os
import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import xarray as xr

from mriflow.acquisition import Modality
from mriflow.errors import BidsError, MissingFileError, SidecarError

__all__ = [
    "ASL_VOLUME_TYPES",
    "DATATYPES",
    "BidsFile",
    "aslcontext_path",
    "dataset_root",
    "find",
    "index",
    "inherited_sidecar",
    "load_asl_context",
    "load_bids",
    "load_bids_with_m0",
    "parse_name",
    "read_aslcontext",
    "read_json",
    "sessions",
    "sibling",
    "sidecar_chain",
    "sidecar_path",
    "subjects",
]

#: The data-type folders walked inside each subject (or session).
DATATYPES = ("dwi", "perf", "anat", "func")
#: Allowed ``volume_type`` values of ``*_aslcontext.tsv`` (BIDS ASL appendix).
ASL_VOLUME_TYPES = ("control", "label", "m0scan", "deltam", "cbf", "noRF")

_IMAGE_EXTENSIONS = (".nii.gz", ".nii")
_KEY = re.compile(r"^[a-zA-Z]+$")
_LABEL = re.compile(r"^[a-zA-Z0-9+]+$")
_SUFFIX = re.compile(r"^[a-zA-Z0-9]+$")

_DATATYPE_OF = {
    Modality.DWI: "dwi",
    Modality.IVIM: "dwi",
    Modality.ASL: "perf",
    Modality.DCE: "perf",
    Modality.DSC: "perf",
    Modality.ANAT: "anat",
}
_SUFFIX_OF = {
    Modality.DWI: "dwi",
    Modality.IVIM: "dwi",
    Modality.ASL: "asl",
    Modality.DCE: "dce",
    Modality.DSC: "dsc",
    Modality.ANAT: "T1w",
}


# --- names ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class BidsFile:
    """One file of a BIDS dataset with the entities, suffix and extension of its name."""

    path: Path
    entities: Mapping[str, str]
    suffix: str
    extension: str
    datatype: str = ""

    @property
    def subject(self) -> str | None:
        """The ``sub`` label (without ``sub-``)."""
        return self.entities.get("sub")

    @property
    def session(self) -> str | None:
        """The ``ses`` label (without ``ses-``), or None."""
        return self.entities.get("ses")


def parse_name(name: str) -> tuple[dict[str, str], str, str] | None:
    """``(entities, suffix, extension)`` of a BIDS file name, or None if it is not one.

    The extension starts at the first dot; entities are ``key-label`` pairs joined by ``_``
    before the suffix. ``"dwi.json"`` (a top-level sidecar) parses to ``({}, "dwi", ".json")``.
    """
    stem, dot, rest = name.partition(".")
    extension = dot + rest
    parts = stem.split("_")
    suffix = parts[-1]
    if not _SUFFIX.match(suffix):
        return None
    entities: dict[str, str] = {}
    for part in parts[:-1]:
        key, dash, label = part.partition("-")
        if not dash or not _KEY.match(key) or not _LABEL.match(label) or key in entities:
            return None
        entities[key] = label
    return entities, suffix, extension


def sibling(path: Path, extension: str) -> Path:
    """The file next to image ``path`` with the same stem and ``extension`` (e.g. ``.bval``)."""
    from mriflow.io.nifti import nifti_suffix

    path = Path(path)
    suffix = nifti_suffix(path) or "".join(path.suffixes)
    return path.with_name(path.name[: len(path.name) - len(suffix)] + extension)


def sidecar_path(path: Path | None) -> Path | None:
    """The JSON sidecar right next to image ``path`` (whether or not it exists)."""
    return None if path is None else sibling(path, ".json")


def aslcontext_path(path: Path) -> Path:
    """``sub-01_asl.nii.gz`` → ``sub-01_aslcontext.tsv`` (same folder and entities)."""
    stem = sibling(path, "")
    base = stem.name[: -len("_asl")] if stem.name.endswith("_asl") else stem.name
    return stem.with_name(base + "_aslcontext.tsv")


def _label(value: str, key: str) -> str:
    value = str(value)
    return value[len(key) + 1 :] if value.startswith(f"{key}-") else value


# --- walking ----------------------------------------------------------------------------------


def _entry_name(entry: os.DirEntry[str]) -> str:
    return entry.name


def _scandir(folder: Path) -> list[os.DirEntry[str]]:
    try:
        with os.scandir(folder) as entries:
            return sorted(entries, key=_entry_name)
    except FileNotFoundError:
        return []


def _check_root(root: str | os.PathLike[str]) -> Path:
    path = Path(root).expanduser()
    if not path.is_dir():
        raise MissingFileError(f"{path}: BIDS dataset folder not found")
    return path


def subjects(root: str | os.PathLike[str]) -> list[str]:
    """Subject labels of the dataset (``["01", "02"]``), sorted."""
    folder = _check_root(root)
    return [e.name[4:] for e in _scandir(folder) if e.name.startswith("sub-") and e.is_dir()]


def sessions(root: str | os.PathLike[str], subject: str) -> list[str]:
    """Session labels of ``subject`` (empty when the dataset has no sessions)."""
    folder = _check_root(root) / f"sub-{_label(subject, 'sub')}"
    if not folder.is_dir():
        raise MissingFileError(f"{folder}: subject folder not found")
    return [e.name[4:] for e in _scandir(folder) if e.name.startswith("ses-") and e.is_dir()]


def _data_folders(root: Path, subject: str | None, session: str | None) -> Iterator[Path]:
    subject_dirs = (
        [root / f"sub-{subject}"]
        if subject is not None
        else [Path(e.path) for e in _scandir(root) if e.name.startswith("sub-") and e.is_dir()]
    )
    for subject_dir in subject_dirs:
        session_dirs = [
            Path(e.path) for e in _scandir(subject_dir) if e.name.startswith("ses-") and e.is_dir()
        ]
        if session is not None:
            session_dirs = [d for d in session_dirs if d.name == f"ses-{session}"]
        elif not session_dirs:
            session_dirs = [subject_dir]
        for base in session_dirs:
            for datatype in DATATYPES:
                yield base / datatype


def index(
    root: str | os.PathLike[str], *, subject: str | None = None, session: str | None = None
) -> list[BidsFile]:
    """Every BIDS-named file in the data-type folders of the dataset (or of one subject)."""
    folder = _check_root(root)
    subject = None if subject is None else _label(subject, "sub")
    session = None if session is None else _label(session, "ses")
    found: list[BidsFile] = []
    for data_dir in _data_folders(folder, subject, session):
        for entry in _scandir(data_dir):
            parsed = parse_name(entry.name)
            if parsed is None or "sub" not in parsed[0] or not entry.is_file():
                continue
            entities, suffix, extension = parsed
            found.append(BidsFile(Path(entry.path), entities, suffix, extension, data_dir.name))
    return found


#: Entities whose values are indices (``run-01`` is run 1); the others are labels.
_INDEX_ENTITIES = frozenset({"run", "echo", "flip", "inv", "chunk", "split"})


def _matches(value: str | None, wanted: Any, *, numeric: bool = False) -> bool:
    if wanted is None:
        return True
    options = [wanted] if isinstance(wanted, str | int) else list(wanted)
    for option in options:
        option = str(option)
        if value == option:
            return True
        digits = numeric and value is not None and value.isdigit() and option.isdigit()
        if digits and int(str(value)) == int(option):
            return True
    return False


def find(
    root: str | os.PathLike[str],
    *,
    subject: str | Iterable[str] | None = None,
    session: str | Iterable[str] | None = None,
    datatype: str | Iterable[str] | None = None,
    suffix: str | Iterable[str] | None = None,
    extension: str | Iterable[str] | None = None,
    **entities: Any,
) -> list[BidsFile]:
    """Files of the dataset matching every filter given (``None`` matches anything).

    Each filter is a label or a list of labels; ``subject="01"`` and ``subject="sub-01"`` are
    the same, run indices compare as numbers (``run=1`` matches ``run-01``). Other entities
    go by their BIDS key (``acq="pcasl"``, ``dir="AP"``); ``entity=None`` is no filter.
    """
    one_subject = _label(subject, "sub") if isinstance(subject, str) else None
    one_session = _label(session, "ses") if isinstance(session, str) else None
    files = index(root, subject=one_subject, session=one_session)
    wanted_subjects = None if subject is None else _labels(subject, "sub")
    wanted_sessions = None if session is None else _labels(session, "ses")
    wanted_extensions = (
        None
        if extension is None
        else [e if e.startswith(".") else "." + e for e in _labels(extension, "")]
    )
    return [
        f
        for f in files
        if _matches(f.subject, wanted_subjects)
        and _matches(f.session, wanted_sessions)
        and _matches(f.datatype, datatype)
        and _matches(f.suffix, suffix)
        and _matches(f.extension, wanted_extensions)
        and all(
            _matches(f.entities.get(k), v, numeric=k in _INDEX_ENTITIES)
            for k, v in entities.items()
        )
    ]


def _labels(value: str | Iterable[str], key: str) -> list[str]:
    values = [value] if isinstance(value, str) else list(value)
    return [_label(v, key) if key else str(v) for v in values]


# --- sidecars ----------------------------------------------------------------------------------


def dataset_root(path: str | os.PathLike[str]) -> Path | None:
    """The BIDS root above ``path``: the nearest folder with ``dataset_description.json``,
    else the folder holding the ``sub-*`` folder; None when ``path`` is not inside one."""
    path = Path(path).resolve()
    subject_parent = None
    for parent in path.parents:
        if (parent / "dataset_description.json").is_file():
            return parent
        if subject_parent is None and parent.name.startswith("sub-"):
            subject_parent = parent.parent
    return subject_parent


def _json_names(folder: Path) -> list[tuple[str, dict[str, str], str]]:
    """``(name, entities, suffix)`` of the JSON files directly in ``folder``, sorted."""
    try:
        names = sorted(name for name in os.listdir(folder) if name.endswith(".json"))
    except (FileNotFoundError, NotADirectoryError):
        return []
    out = []
    for name in names:
        parsed = parse_name(name)
        if parsed is not None and parsed[2] == ".json" and (folder / name).is_file():
            out.append((name, parsed[0], parsed[1]))
    return out


def sidecar_chain(path: str | os.PathLike[str]) -> list[Path]:
    """The JSON sidecars that apply to ``path``, from the dataset root down to the nearest.

    Outside a BIDS tree only the JSON right next to the file applies. Two applicable JSONs in
    one folder are ambiguous (BIDS forbids it) and raise :class:`~mriflow.errors.BidsError`.
    """
    path = Path(path)
    parsed = parse_name(path.name)
    own = sidecar_path(path)
    root = dataset_root(path)
    if parsed is None or root is None:
        return [own] if own is not None and own.is_file() else []
    entities, suffix, _ = parsed
    folder = path.resolve().parent
    levels = [folder, *[p for p in folder.parents if p.is_relative_to(root)]]
    chain: list[Path] = []
    for level in reversed(levels):
        applicable = [
            level / name
            for name, json_entities, json_suffix in _json_names(level)
            if json_suffix == suffix and all(entities.get(k) == v for k, v in json_entities.items())
        ]
        if len(applicable) > 1:
            names = ", ".join(p.name for p in applicable)
            raise BidsError(
                f"{level}: {len(applicable)} JSON sidecars apply to {path.name} at one level "
                f"({names}); BIDS inheritance allows one per folder"
            )
        chain.extend(applicable)
    return chain


def read_json(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The object of a JSON sidecar; invalid JSON or a non-object is a SidecarError."""
    try:
        content = json.loads(Path(path).read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise SidecarError(f"{path}: invalid JSON sidecar ({exc})") from exc
    if not isinstance(content, dict):
        raise SidecarError(
            f"{path}: a JSON sidecar must hold an object, got {type(content).__name__}"
        )
    return content


def inherited_sidecar(path: str | os.PathLike[str]) -> tuple[dict[str, Any], dict[str, str]]:
    """The merged sidecar of ``path`` and, per key, the JSON file that gave its value."""
    merged: dict[str, Any] = {}
    origins: dict[str, str] = {}
    for json_path in sidecar_chain(path):
        content = read_json(json_path)
        merged.update(content)
        origins.update(dict.fromkeys(content, str(json_path)))
    return merged, origins


def read_aslcontext(path: Path, n_volumes: int | None = None) -> list[str] | None:
    """The ``volume_type`` column of an ``*_aslcontext.tsv`` (None if the file is absent).

    Values are checked against the BIDS list; with ``n_volumes`` the row count must match.
    """
    if not path.is_file():
        return None
    try:
        with path.open(newline="", encoding="utf-8") as stream:
            rows = list(csv.DictReader(stream, delimiter="\t"))
    except (UnicodeDecodeError, csv.Error) as exc:
        raise SidecarError(f"{path}: not a readable TSV file ({exc})") from exc
    if not rows or "volume_type" not in rows[0]:
        raise SidecarError(f"{path}: needs a 'volume_type' column with one row per volume")
    values = [(row["volume_type"] or "").strip() for row in rows]
    lookup = {v.lower(): v for v in ASL_VOLUME_TYPES}
    bad = sorted({v for v in values if v.lower() not in lookup})
    if bad:
        raise SidecarError(
            f"{path}: unknown volume_type {', '.join(map(repr, bad))}; "
            f"allowed: {', '.join(ASL_VOLUME_TYPES)}"
        )
    if n_volumes is not None and len(values) != n_volumes:
        raise SidecarError(
            f"{path}: has {len(values)} rows but the ASL image has {n_volumes} volumes; "
            "aslcontext needs one volume_type per volume"
        )
    return [lookup[v.lower()] for v in values]


# --- loading ------------------------------------------------------------------------------------


def _data_dirs(root: Path, subject: str, session: str | None, datatype: str) -> list[Path]:
    subject_dir = root / f"sub-{subject}"
    if not subject_dir.is_dir():
        known = ", ".join(subjects(root)) or "none"
        raise MissingFileError(
            f"{subject_dir}: data directory not found (subjects in {root}: {known})"
        )
    if session is not None:
        base = [subject_dir / f"ses-{session}"]
        if not base[0].is_dir():
            known = ", ".join(sessions(root, subject)) or "none"
            raise MissingFileError(
                f"{base[0]}: data directory not found (sessions of sub-{subject}: {known})"
            )
    else:
        base = [subject_dir / f"ses-{s}" for s in sessions(root, subject)] or [subject_dir]
    folders = [b / datatype for b in base if (b / datatype).is_dir()]
    if not folders:
        shown = base[0] / datatype if len(base) == 1 else subject_dir / "ses-*" / datatype
        raise MissingFileError(f"{shown}: data directory not found")
    return folders


def _one_image(
    root: Path,
    subject: str,
    session: str | None,
    datatype: str,
    suffix: str,
    entities: Mapping[str, Any],
) -> BidsFile:
    folders = _data_dirs(root, subject, session, datatype)
    matches = find(
        root,
        subject=subject,
        session=session,
        datatype=datatype,
        suffix=suffix,
        extension=list(_IMAGE_EXTENSIONS),
        **entities,
    )
    if not matches:
        wanted = "_".join(f"{k}-{v}" for k, v in entities.items() if v is not None)
        raise BidsError(
            f"{folders[0]}: no *{'_' + wanted if wanted else ''}_{suffix}.nii[.gz] image "
            f"for sub-{subject}" + (f" ses-{session}" if session else "")
        )
    if len(matches) > 1:
        names = ", ".join(m.path.name for m in matches)
        raise BidsError(
            f"{folders[0]}: {len(matches)} images match ({names}); choose one with "
            "session=, run=, acq=, ... "
        )
    return matches[0]


def load_bids(
    root: str | os.PathLike[str],
    subject: str,
    session: str | None = None,
    modality: str | Modality = "dwi",
    *,
    suffix: str | None = None,
    chunks: Any = "auto",
    acquisition: Mapping[str, Any] | None = None,
    **entities: Any,
) -> xr.DataArray:
    """Open one subject's image of ``modality`` lazily, with its acquisition parameters.

    The image is looked up as ``sub-<subject>/[ses-<session>/]<datatype>/*_<suffix>.nii[.gz]``
    (datatype and suffix follow the modality: ``dwi``→``dwi/*_dwi``, ``asl``→``perf/*_asl``,
    ``dce``/``dsc``→``perf/*_dce``/``*_dsc``, ``anat``→``anat/*_T1w`` unless ``suffix``
    says otherwise). Other ``entities`` (``run=1``, ``acq="pcasl"``) narrow the search; more
    than one match is an error. ``attrs["bids"]`` holds the file's entities.
    """
    from mriflow.io.api import open_image

    modality = Modality.parse(modality)
    folder = _check_root(root)
    subject = _label(subject, "sub")
    session = None if session is None else _label(session, "ses")
    match = _one_image(
        folder, subject, session, _DATATYPE_OF[modality], suffix or _SUFFIX_OF[modality], entities
    )
    image = open_image(match.path, chunks=chunks, modality=modality.value, acquisition=acquisition)
    image.attrs["bids"] = {**match.entities, "suffix": match.suffix, "datatype": match.datatype}
    return image


def load_asl_context(
    root: str | os.PathLike[str], subject: str, session: str | None = None, **entities: Any
) -> list[str]:
    """The ``volume_type`` of each volume of the subject's ASL series (``*_aslcontext.tsv``).

    The row count is checked against the volumes of the ASL image next to it.
    """
    import nibabel as nib

    folder = _check_root(root)
    subject = _label(subject, "sub")
    session = None if session is None else _label(session, "ses")
    image = _one_image(folder, subject, session, "perf", "asl", entities)
    context_path = aslcontext_path(image.path)
    shape = nib.load(image.path).header.get_data_shape()  # type: ignore[attr-defined]
    context = read_aslcontext(context_path, shape[3] if len(shape) > 3 else 1)
    if context is None:
        raise MissingFileError(
            f"{context_path}: not found; a BIDS ASL series needs one volume_type per volume"
        )
    return context


def load_bids_with_m0(
    root: str | os.PathLike[str],
    subject: str,
    session: str | None = None,
    *,
    chunks: Any = "auto",
    acquisition: Mapping[str, Any] | None = None,
    **entities: Any,
) -> tuple[xr.DataArray, xr.DataArray | None]:
    """The subject's ASL series and its M0 image, per the series' ``M0Type``.

    - ``Included``: the ``m0scan`` volumes are split off the series: the first result holds
      the other volumes (control, label, deltam, ...), the second the M0 volumes.
    - ``Separate``: the ``*_m0scan.nii[.gz]`` with the same entities (when several, the one
      whose ``IntendedFor`` names the series).
    - ``Estimate`` (a single value in the ``m0_estimate`` parameter) and ``Absent``: ``None``.
    """
    from mriflow.io.api import open_image

    asl = load_bids(
        root, subject, session, "asl", chunks=chunks, acquisition=acquisition, **entities
    )
    m0_type = asl.attrs["acquisition"]["m0_type"]["value"]
    if m0_type == "Included":
        is_m0 = asl.coords["volume_type"].values == "m0scan"
        return asl.isel(volume=~is_m0), asl.isel(volume=is_m0)
    if m0_type != "Separate":
        return asl, None
    asl_path = Path(asl.attrs["source"]["path"])
    m0_file = _separate_m0(root, asl_path, dict(asl.attrs["bids"]))
    m0 = open_image(m0_file.path, chunks=chunks)
    merged, _ = inherited_sidecar(m0_file.path)
    if merged:
        m0.attrs["sidecar"] = merged
    m0.attrs["bids"] = {**m0_file.entities, "suffix": "m0scan", "datatype": "perf"}
    return asl, m0


def _separate_m0(
    root: str | os.PathLike[str], asl_path: Path, asl_bids: dict[str, str]
) -> BidsFile:
    """The ``*_m0scan`` image of an ASL series: no entity may conflict with the series';
    among several, the one with the same entities, then the one whose IntendedFor names it."""
    asl_entities = {k: v for k, v in asl_bids.items() if k not in ("suffix", "datatype")}
    candidates = [
        f
        for f in find(
            root,
            subject=asl_entities["sub"],
            session=asl_entities.get("ses"),
            datatype="perf",
            suffix="m0scan",
            extension=list(_IMAGE_EXTENSIONS),
        )
        if all(f.entities.get(k, v) == v for k, v in asl_entities.items())
        and all(asl_entities.get(k, v) == v for k, v in f.entities.items())
    ]
    if len(candidates) > 1:
        candidates = [c for c in candidates if dict(c.entities) == asl_entities] or candidates
    if len(candidates) > 1:
        candidates = [c for c in candidates if _intended_for(c.path, asl_path)] or candidates
    if not candidates:
        stem = sibling(asl_path, "").name.removesuffix("_asl")
        raise MissingFileError(
            f"{asl_path.with_name(stem + '_m0scan.nii.gz')}: not found, but M0Type is Separate "
            f"in {sidecar_path(asl_path)}; add the M0 image or change M0Type"
        )
    if len(candidates) > 1:
        names = ", ".join(c.path.name for c in candidates)
        raise BidsError(f"{asl_path}: several m0scan images could belong to it ({names})")
    return candidates[0]


def _intended_for(m0_path: Path, asl_path: Path) -> bool:
    merged, _ = inherited_sidecar(m0_path)
    targets = merged.get("IntendedFor", [])
    targets = [targets] if isinstance(targets, str) else targets
    return any(str(t).endswith(asl_path.name) for t in targets)
