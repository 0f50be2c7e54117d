"""A deterministic corpus of malformed inputs, built into a directory.

Each case is a real file (or folder) made from a valid one written by nibabel, damaged in
one documented way, plus what mriflow must do with it: raise a typed error naming the file
("error") or warn and return a safe result ("warning"). Formats add their cases with the
``@case`` decorator; ``build(root)`` writes them all.
"""

from __future__ import annotations

import gzip
import json
import struct
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np


@dataclass(frozen=True)
class Case:
    name: str
    path: Path
    expect: str  # "error" or "warning"
    # how the input is opened: "image" (mriflow.open_image), "asl" (load_asl_context of
    # subject 01), "asl-image"/"dce-image" (open_image with that modality), "config"
    opener: str = "image"


_BUILDERS: list[tuple[str, str, str, Callable[[Path], Path]]] = []


def case(name: str, expect: str = "error", opener: str = "image"):
    """Register a builder ``f(folder) -> path`` for the malformed input ``name``."""

    def register(builder: Callable[[Path], Path]) -> Callable[[Path], Path]:
        _BUILDERS.append((name, expect, opener, builder))
        return builder

    return register


def build(root: Path) -> list[Case]:
    """Write every registered case under ``root`` (one folder each) and list them."""
    cases = []
    for name, expect, opener, builder in _BUILDERS:
        folder = root / name.replace("/", "__")
        folder.mkdir(parents=True)
        cases.append(Case(name, builder(folder), expect, opener))
    return cases


# --- NIfTI: a valid image, then its header bytes patched ---------------------------------------

_AFFINE = np.array([[-2.0, 0, 0, 60], [0, 2, 0, -70], [0, 0, 2.5, -40], [0, 0, 0, 1]])


def _nifti_bytes(data: np.ndarray) -> bytes:
    """Exactly what ``nib.save`` writes for a single-file NIfTI-1 (header, 4 bytes, pixels)."""
    image = nib.Nifti1Image(data, _AFFINE)
    image.header.set_data_offset(image.header.single_vox_offset)
    return image.header.binaryblock + b"\0" * 4 + data.tobytes(order="F")


def _valid_bytes(gzipped: bool = False, shape=(6, 5, 4, 3)) -> bytes:
    data = np.arange(np.prod(shape), dtype=np.float32).reshape(shape)
    raw = _nifti_bytes(data)
    return gzip.compress(raw, mtime=0) if gzipped else raw


def _noise_gz() -> bytes:
    """A 4 MiB incompressible image: its end lies beyond what opening inflates."""
    data = np.random.default_rng(11).normal(size=(64, 64, 64, 4)).astype(np.float32)
    return gzip.compress(_nifti_bytes(data), compresslevel=1, mtime=0)


def _patched(offset: int, fmt: str, *values, base: bytes | None = None) -> bytes:
    out = bytearray(base if base is not None else _valid_bytes())
    struct.pack_into(fmt, out, offset, *values)
    return bytes(out)


def _write(folder: Path, name: str, content: bytes) -> Path:
    path = folder / name
    path.write_bytes(content)
    return path


def _header_case(name: str, offset: int, fmt: str, *values, expect: str = "error", base=None):
    @case(f"nifti/{name}", expect)
    def builder(folder: Path) -> Path:
        return _write(folder, "image.nii", _patched(offset, fmt, *values, base=base))

    return builder


# dim[0] and dims
_header_case("dim0-zero", 40, "<h", 0)
_header_case("dim0-negative", 40, "<h", -1)
_header_case("dim0-nine", 40, "<h", 9)
_header_case("dim-negative", 42, "<h", -5)
_header_case("dim-zero", 44, "<h", 0)
_header_case("dim-absurd", 42, "<4h", 32767, 32767, 32767, 32767)
_header_case("dim-beyond-file", 42, "<h", 600)
# datatype
_header_case("datatype-unknown", 70, "<h", 999)
_header_case("datatype-zero", 70, "<h", 0)
# where the pixels are
_header_case("vox-offset-past-eof", 108, "<f", 1e7)
_header_case("vox-offset-inside-header", 108, "<f", 0.0)
_header_case("vox-offset-100", 108, "<f", 100.0)
# sizeof_hdr and magic
_header_case("sizeof-hdr-wrong", 0, "<i", 300)
_header_case("magic-wrong", 344, "<4s", b"xyz\0")
# geometry: sform (codes at 252/254, srow_x/y/z at 280/296/312), qform quaternion at 256+
_SFORM_ONLY = _patched(252, "<2h", 0, 1)
_header_case("sform-nan", 280, "<f", float("nan"), base=_SFORM_ONLY)
_header_case("sform-inf", 296, "<f", float("inf"), base=_SFORM_ONLY)
_header_case("sform-singular", 312, "<4f", 0, 0, 0, -40, base=_SFORM_ONLY)
_header_case("sform-zero", 280, "<12f", *([0.0] * 12), base=_SFORM_ONLY)
_QFORM_ONLY = _patched(252, "<2h", 1, 0)
_header_case("qform-nan-quaternion", 256, "<f", float("nan"), base=_QFORM_ONLY)
_header_case("qform-inf-offset", 268, "<f", float("inf"), base=_QFORM_ONLY)
_header_case("qform-zero-pixdim", 80, "<3f", 0.0, 0.0, 0.0, base=_QFORM_ONLY)
# scaling
_header_case("scl-slope-inf", 112, "<2f", float("inf"), 0.0, expect="warning")
_header_case("scl-slope-minus-inf", 112, "<2f", float("-inf"), 0.0, expect="warning")
_header_case("scl-inter-inf", 112, "<2f", 2.0, float("inf"))


@case("nifti/data-truncated")
def _data_truncated(folder: Path) -> Path:
    valid = _valid_bytes()
    return _write(folder, "image.nii", valid[: len(valid) - 100])


@case("nifti/header-truncated")
def _header_truncated(folder: Path) -> Path:
    return _write(folder, "image.nii", _valid_bytes()[:100])


@case("nifti/empty-file")
def _empty(folder: Path) -> Path:
    return _write(folder, "image.nii", b"")


@case("nifti/zeros")
def _zeros(folder: Path) -> Path:
    return _write(folder, "image.nii", b"\0" * 4096)


@case("nifti/text-file")
def _text(folder: Path) -> Path:
    return _write(folder, "image.nii", b"this is a README, not an image\n" * 20)


@case("nifti/unknown-extension")
def _unknown_extension(folder: Path) -> Path:
    return _write(folder, "image.mgz", _valid_bytes())


@case("nifti/missing-file")
def _missing(folder: Path) -> Path:
    return folder / "image.nii.gz"


@case("nifti/directory")
def _directory(folder: Path) -> Path:
    path = folder / "image.nii"
    path.mkdir()
    return path


@case("nifti/pair-without-img")
def _pair_without_img(folder: Path) -> Path:
    nib.save(nib.Nifti1Pair(np.zeros((3, 3, 3), np.float32), _AFFINE), folder / "pair.hdr")
    (folder / "pair.img").unlink()
    return folder / "pair.hdr"


@case("nifti/pair-without-hdr")
def _pair_without_hdr(folder: Path) -> Path:
    nib.save(nib.Nifti1Pair(np.zeros((3, 3, 3), np.float32), _AFFINE), folder / "pair.hdr")
    (folder / "pair.hdr").unlink()
    return folder / "pair.img"


@case("nifti/pair-img-truncated")
def _pair_img_truncated(folder: Path) -> Path:
    nib.save(nib.Nifti1Pair(np.ones((8, 8, 8), np.float32), _AFFINE), folder / "pair.hdr")
    img = folder / "pair.img"
    img.write_bytes(img.read_bytes()[:1000])
    return folder / "pair.hdr"


# --- gzip damage ----------------------------------------------------------------------------


def _gzip_case(name: str, damage: Callable[[bytearray], bytes]):
    @case(f"gzip/{name}")
    def builder(folder: Path) -> Path:
        return _write(folder, "image.nii.gz", damage(bytearray(_noise_gz())))

    return builder


def _flip_deflate(raw: bytearray) -> bytes:
    for position in range(len(raw) // 3, len(raw) - 100, len(raw) // 7):
        raw[position] ^= 0x5A
    return bytes(raw)


def _flip_stored(raw: bytearray) -> bytes:
    stored = bytearray(gzip.compress(gzip.decompress(bytes(raw)), compresslevel=0, mtime=0))
    stored[len(stored) * 2 // 3] ^= 0x01  # stored blocks have no check: only the CRC sees it
    return bytes(stored)


def _xor_at(position: int, value: int) -> Callable[[bytearray], bytes]:
    def damage(raw: bytearray) -> bytes:
        raw[position] ^= value
        return bytes(raw)

    return damage


_gzip_case("deflate-bit-flips", _flip_deflate)
_gzip_case("stored-block-bit-flip", _flip_stored)
_gzip_case("bad-crc", _xor_at(-8, 0xFF))
_gzip_case("bad-isize", _xor_at(-4, 0x10))
_gzip_case("trailer-truncated", lambda raw: bytes(raw[:-4]))
_gzip_case("trailing-garbage", lambda raw: bytes(raw) + b"GARBAGE!")
_gzip_case("stream-truncated", lambda raw: bytes(raw[: len(raw) // 2]))
_gzip_case("header-flags-damaged", _xor_at(3, 0xE0))


@case("gzip/not-gzip")
def _not_gzip(folder: Path) -> Path:
    return _write(folder, "image.nii.gz", _valid_bytes())


@case("gzip/gzipped-text")
def _gzipped_text(folder: Path) -> Path:
    return _write(folder, "image.nii.gz", gzip.compress(b"hello\n" * 1000, mtime=0))


# --- sidecars -------------------------------------------------------------------------------


def _dwi(folder: Path, volumes: int = 3) -> Path:
    data = np.ones((4, 4, 3, volumes), np.float32)
    path = folder / "sub-01_dwi.nii.gz"
    nib.save(nib.Nifti1Image(data, _AFFINE), path)
    (folder / "sub-01_dwi.bval").write_text(" ".join(["0"] + ["1000"] * (volumes - 1)))
    rows = np.zeros((3, volumes))
    rows[0, 1:] = 1
    (folder / "sub-01_dwi.bvec").write_text("\n".join(" ".join(map(str, r)) for r in rows))
    return path


def _sidecar_case(name: str, damage: Callable[[Path], None]):
    @case(f"sidecar/{name}")
    def builder(folder: Path) -> Path:
        path = _dwi(folder)
        damage(folder)
        return path

    return builder


_sidecar_case("json-invalid", lambda f: (f / "sub-01_dwi.json").write_text('{"EchoTime": 0.1,'))
_sidecar_case("json-array", lambda f: (f / "sub-01_dwi.json").write_text("[1, 2, 3]"))
_sidecar_case("json-not-utf8", lambda f: (f / "sub-01_dwi.json").write_bytes(b'{"a": "\xff\xfe"}'))
_sidecar_case("bval-count", lambda f: (f / "sub-01_dwi.bval").write_text("0 1000"))
_sidecar_case("bvec-shape", lambda f: (f / "sub-01_dwi.bvec").write_text("1 0\n0 1\n"))
_sidecar_case("bvec-missing", lambda f: (f / "sub-01_dwi.bvec").unlink())
_sidecar_case("bval-negative", lambda f: (f / "sub-01_dwi.bval").write_text("0 -1000 1000"))
_sidecar_case("bvec-nan", lambda f: (f / "sub-01_dwi.bvec").write_text("0 nan 1\n0 0 0\n0 0 0"))
_sidecar_case("bval-text", lambda f: (f / "sub-01_dwi.bval").write_text("zero thousand x"))


@case("sidecar/gradients-on-3d-image")
def _gradients_3d(folder: Path) -> Path:
    path = folder / "sub-01_dwi.nii.gz"
    nib.save(nib.Nifti1Image(np.ones((4, 4, 3), np.float32), _AFFINE), path)
    (folder / "sub-01_dwi.bval").write_text("0 1000 1000")
    (folder / "sub-01_dwi.bvec").write_text("0 1 0\n0 0 1\n0 0 0")
    return path


def describe(cases: list[Case]) -> str:
    return json.dumps([c.name for c in cases])


# --- DICOM: a valid synthetic series (pydicom-written files), one thing broken -------------


# read what can be read, and say what was not
_DICOM_WARNINGS = {"no-file-meta"}


def _dicom_series(folder: Path, **kwargs: Any) -> list[Path]:
    from mriflow.io.dicom import synthetic

    return synthetic.write_series(folder, shape=(8, 6, 4), **kwargs).files


def _dicom_case(name: str, damage: Callable[[Path, list[Path]], None]):
    @case(f"dicom/{name}", "warning" if name in _DICOM_WARNINGS else "error")
    def builder(folder: Path) -> Path:
        series = folder / "series"
        files = _dicom_series(series)
        damage(series, sorted(files))
        return series

    return builder


def _edit(path: Path, change: Callable[[Any], None]) -> None:
    import pydicom

    dataset = pydicom.dcmread(path)
    change(dataset)
    dataset.save_as(path, enforce_file_format=True)


def _truncate_pixels(_: Path, files: list[Path]) -> None:
    files[1].write_bytes(files[1].read_bytes()[:-200])


def _without_meta(_: Path, files: list[Path]) -> None:
    raw = files[0].read_bytes()
    files[0].write_bytes(raw[132:])  # drop the preamble and "DICM": not a Part-10 file


def _drop(keyword: str) -> Callable[[Path, list[Path]], None]:
    def damage(_: Path, files: list[Path]) -> None:
        _edit(files[2], lambda ds: delattr(ds, keyword))

    return damage


def _bad_vr(_: Path, files: list[Path]) -> None:
    """PixelSpacing (DS) holding letters: patched in the bytes, since pydicom refuses to."""
    raw = bytearray(files[0].read_bytes())
    tag = raw.find(b"\x28\x00\x30\x00DS")
    length = int.from_bytes(raw[tag + 6 : tag + 8], "little")
    raw[tag + 8 : tag + 8 + length] = (b"abc\\x" * length)[:length]
    files[0].write_bytes(bytes(raw))


def _mixed(folder: Path, _: list[Path]) -> None:
    _dicom_series(folder, series_number=2, description="second", seed=3, name_prefix="B")


def _non_dicom_only(folder: Path, files: list[Path]) -> None:
    for path in files:
        path.unlink()
    (folder / "README").write_text("not DICOM")
    (folder / "icc.icc").write_bytes(b"\x00\x00\x02\x0cprofile" * 20)


def _dicomdir(folder: Path, files: list[Path]) -> None:
    import pydicom
    from pydicom.data import get_testdata_file

    for path in files:
        path.unlink()
    source = get_testdata_file("DICOMDIR")
    if source is not None:
        (folder / "DICOMDIR").write_bytes(Path(str(source)).read_bytes())
    else:  # pragma: no cover - pydicom ships it
        pydicom.dcmwrite(folder / "DICOMDIR", pydicom.Dataset())


_dicom_case("pixel-data-truncated", _truncate_pixels)
_dicom_case("no-file-meta", _without_meta)
_dicom_case("missing-image-position", _drop("ImagePositionPatient"))
_dicom_case("missing-image-orientation", _drop("ImageOrientationPatient"))
_dicom_case("missing-pixel-spacing", _drop("PixelSpacing"))
_dicom_case("bad-vr-pixel-spacing", _bad_vr)
_dicom_case("mixed-series", _mixed)
_dicom_case("non-dicom-files-only", _non_dicom_only)
_dicom_case("dicomdir-only", _dicomdir)


@case("dicom/single-non-dicom-file")
def _single_non_dicom(folder: Path) -> Path:
    return _write(folder, "image.dcm", b"\x00" * 128 + b"NOPE" + b"garbage" * 10)


# --- BIDS -----------------------------------------------------------------------------------


def _asl_tree(folder: Path, rows: int) -> Path:
    import bids_tree

    root = bids_tree.dataset(folder / "ds")
    perf = root / "sub-01" / "perf"
    bids_tree.write_image(perf / "sub-01_asl.nii.gz", (4, 4, 3, 6))
    bids_tree.write_json(perf / "sub-01_asl.json", bids_tree.PCASL)
    bids_tree.write_aslcontext(perf / "sub-01_aslcontext.tsv", ["control", "label"] * (rows // 2))
    return root


@case("bids/aslcontext-row-mismatch", opener="asl")
def _aslcontext_mismatch(folder: Path) -> Path:
    return _asl_tree(folder, rows=4)


@case("bids/missing-subject", opener="asl")
def _missing_subject(folder: Path) -> Path:
    root = _asl_tree(folder, rows=6)
    import shutil

    shutil.rmtree(root / "sub-01")
    return root


@case("bids/pcasl-without-labeling-duration", opener="asl-image")
def _pcasl_missing_field(folder: Path) -> Path:
    import bids_tree

    root = _asl_tree(folder, rows=6)
    fields = {k: v for k, v in bids_tree.PCASL.items() if k != "LabelingDuration"}
    bids_tree.write_json(root / "sub-01" / "perf" / "sub-01_asl.json", fields)
    return root / "sub-01" / "perf" / "sub-01_asl.nii.gz"


@case("bids/4d-without-timing", opener="dce-image")
def _no_timing(folder: Path) -> Path:
    path = folder / "sub-01_dce.nii.gz"
    image = nib.Nifti1Image(np.ones((4, 4, 3, 5), np.float32), _AFFINE)
    image.header.set_xyzt_units("mm", "unknown")
    image.header["pixdim"][4] = 0
    nib.save(image, path)
    return path


# --- pipeline YAML --------------------------------------------------------------------------


def _yaml_case(name: str, text: str):
    @case(f"yaml/{name}", opener="config")
    def builder(folder: Path) -> Path:
        return _write(folder, "pipeline.yaml", text.encode())

    return builder


_yaml_case("wrong-type", "modality: dwi\ntracking: {step_size: fast}\nfit: csd\n")
_yaml_case("unknown-key", "modality: dce\npipline: {model: tofts}\n")
_yaml_case("unknown-nested-key", "modality: dwi\nfit: csd\ncluster: {n_worker: 2}\n")
_yaml_case("not-a-mapping", "- modality\n- dwi\n")
_yaml_case("invalid-yaml", "modality: [dwi\n")
_yaml_case("missing-modality", "fit: csd\n")
_yaml_case(
    "alias-bomb",
    "a: &a [x, x, x, x, x, x, x, x]\n"
    + "".join(
        f"{n}: &{n} [" + ", ".join([f"*{p}"] * 8) + "]\n"
        for p, n in zip("abcdefgh", "bcdefghi", strict=True)
    ),
)
_yaml_case("python-object-tag", "modality: !!python/object/apply:os.system ['true']\n")
