"""Bad input: a typed MriflowError naming the file, at open time when the header shows it."""

from __future__ import annotations

import struct
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

import mriflow
from mriflow.errors import (
    CorruptDataError,
    GeometryError,
    ImageFormatError,
    ImageHeaderError,
    MissingFileError,
    MriflowError,
    SidecarError,
)


@pytest.fixture
def good(tmp_path: Path) -> dict[str, bytes]:
    rng = np.random.default_rng(0)
    data = rng.normal(size=(30, 30, 20, 3)).astype(np.float32)
    img = nib.Nifti1Image(data, np.diag([2.0, 2.0, 2.0, 1.0]))
    nib.save(img, tmp_path / "ok.nii")
    nib.save(img, tmp_path / "ok.nii.gz")
    return {
        "nii": (tmp_path / "ok.nii").read_bytes(),
        "gz": (tmp_path / "ok.nii.gz").read_bytes(),
    }


def patched(raw: bytes, offset: int, fmt: str, *values) -> bytes:
    out = bytearray(raw)
    struct.pack_into(fmt, out, offset, *values)
    return bytes(out)


def write(path: Path, content: bytes) -> Path:
    path.write_bytes(content)
    return path


def open_fails(path, error):
    with pytest.raises(error) as info:
        mriflow.open_image(path)
    assert isinstance(info.value, MriflowError)
    assert path.name in str(info.value)
    return str(info.value)


def test_truncated_nii(tmp_path, good):
    path = write(tmp_path / "cut.nii", good["nii"][: len(good["nii"]) // 2])
    assert "truncated" in open_fails(path, CorruptDataError)


def test_truncated_gzip_fails_at_open_or_compute_naming_the_file(tmp_path, good):
    for n, fraction in enumerate((0.3, 0.5, 0.7, 0.9)):
        path = write(tmp_path / f"cut{n}.nii.gz", good["gz"][: int(len(good["gz"]) * fraction)])
        with pytest.raises(CorruptDataError, match=path.name):
            mriflow.open_image(path).sum().compute()


def test_corrupt_gzip_stream(tmp_path, good):
    # a damaged deflate stream after the header: zlib reports it when the pixels are read
    damaged = bytearray(good["gz"])
    for position in range(2000, len(damaged) - 100, 997):
        damaged[position] ^= 0xA5
    path = write(tmp_path / "damaged.nii.gz", bytes(damaged))
    with pytest.raises(CorruptDataError, match=r"damaged\.nii\.gz"):
        mriflow.open_image(path).sum().compute()


def test_not_gzip_although_named_so(tmp_path, good):
    path = write(tmp_path / "plain.nii.gz", good["nii"])
    assert "not a gzip file" in open_fails(path, CorruptDataError)


def test_wrong_sizeof_hdr(tmp_path, good):
    path = write(tmp_path / "sizeof.nii", patched(good["nii"], 0, "<i", 300))
    assert "sizeof_hdr is 300" in open_fails(path, ImageHeaderError)


@pytest.mark.parametrize(
    ("dims", "message"),
    [
        ((0, 30, 30, 20, 3), "dim[0] is 0"),
        ((9, 30, 30, 20, 3), "dim[0] is 9"),
        ((4, -5, 30, 20, 3), "impossible dimensions"),
        ((4, 30, 0, 20, 3), "impossible dimensions"),
    ],
)
def test_impossible_dims(tmp_path, good, dims, message):
    path = write(tmp_path / "dims.nii", patched(good["nii"], 40, "<5h", *dims))
    assert message in open_fails(path, ImageHeaderError)


def test_dims_bigger_than_the_file(tmp_path, good):
    path = write(tmp_path / "huge.nii", patched(good["nii"], 40, "<5h", 4, 30000, 30, 20, 3))
    assert "header needs" in open_fails(path, CorruptDataError)


def test_unknown_datatype(tmp_path, good):
    path = write(tmp_path / "dtype.nii", patched(good["nii"], 70, "<h", 999))
    open_fails(path, ImageHeaderError)


@pytest.mark.parametrize("row", [[np.nan, 0, 0, 0], [np.inf, 0, 0, 0]])
def test_non_finite_sform(tmp_path, good, row):
    raw = patched(good["nii"], 252, "<2h", 0, 1)  # qform_code 0, sform_code 1
    path = write(tmp_path / "nan.nii", patched(raw, 280, "<4f", *row))
    assert "NaN or infinite" in open_fails(path, GeometryError)


def test_singular_sform(tmp_path, good):
    raw = patched(good["nii"], 252, "<2h", 0, 1)
    raw = patched(raw, 280, "<12f", 1, 0, 0, 0, 2, 0, 0, 0, 3, 0, 0, 0)  # z column zero
    path = write(tmp_path / "singular.nii", raw)
    assert "singular" in open_fails(path, GeometryError)


def test_unknown_extension_missing_file_and_directory(tmp_path):
    text = write(tmp_path / "notes.txt", b"not an image")
    assert "not a file type" in open_fails(text, ImageFormatError)
    assert "no such file" in open_fails(tmp_path / "missing.nii.gz", MissingFileError)
    folder = tmp_path / "folder.nii"
    folder.mkdir()
    assert "directory" in open_fails(folder, ImageFormatError)


def test_missing_img_of_a_pair(tmp_path):
    nib.save(nib.Nifti1Pair(np.zeros((3, 3, 3), np.float32), np.eye(4)), tmp_path / "p.hdr")
    (tmp_path / "p.img").unlink()
    with pytest.raises(MissingFileError, match=r"p\.(hdr|img)"):
        mriflow.open_image(tmp_path / "p.hdr")


def test_gradient_files_that_do_not_match(tmp_path):
    paths = mriflow.data.write_dwi_phantom(tmp_path, shape=(6, 6, 4), n_directions=6)
    n = len(np.loadtxt(paths["bval"]))
    paths["bval"].write_text(" ".join(["1000"] * (n - 1)))
    with pytest.raises(SidecarError, match=r"sub-01_dwi\.bval.*volumes"):
        mriflow.open_image(paths["dwi"])
    paths["bval"].write_text(" ".join(["1000"] * n))
    paths["bvec"].write_text("1 0\n0 1\n")
    with pytest.raises(SidecarError, match=r"sub-01_dwi\.bvec"):
        mriflow.open_image(paths["dwi"])
    paths["bvec"].unlink()
    with pytest.raises(SidecarError, match="bvec is missing"):
        mriflow.open_image(paths["dwi"])


def test_invalid_json_sidecar(tmp_path):
    paths = mriflow.data.write_dwi_phantom(tmp_path, shape=(6, 6, 4), n_directions=6)
    paths["json"].write_text('{"RepetitionTime": 3.2,')
    with pytest.raises(SidecarError, match=r"sub-01_dwi\.json.*invalid JSON"):
        mriflow.open_image(paths["dwi"])


@pytest.fixture
def incompressible(tmp_path: Path) -> bytes:
    """An 8 MiB .nii.gz whose end lies far beyond what opening inflates."""
    data = np.random.default_rng(5).normal(size=(64, 64, 64, 8)).astype(np.float32)
    nib.save(nib.Nifti1Image(data, np.eye(4)), tmp_path / "noise.nii.gz")
    return (tmp_path / "noise.nii.gz").read_bytes()


@pytest.mark.parametrize(
    ("damage", "when"),
    [
        ("crc", "compute"),
        ("isize", "open"),
        ("trailing garbage", "open"),
        ("stored block bit flip", "compute"),
    ],
)
def test_gzip_integrity_is_checked_on_a_full_pass(tmp_path, incompressible, damage, when):
    raw = bytearray(incompressible)
    if damage == "crc":
        raw[-8] ^= 0xFF
    elif damage == "isize":
        struct.pack_into(
            "<I", raw, len(raw) - 4, struct.unpack_from("<I", raw, len(raw) - 4)[0] + 8
        )
    elif damage == "trailing garbage":
        raw += b"\x00garbage"
    else:  # deflate "stored" blocks carry no check of their own: only the CRC sees the flip
        import gzip

        plain = gzip.decompress(bytes(raw))
        raw = bytearray(gzip.compress(plain, compresslevel=0, mtime=0))
        raw[len(raw) // 2] ^= 0x01
    path = write(tmp_path / "damaged.nii.gz", bytes(raw))
    if when == "open":
        open_fails(path, CorruptDataError)
        return
    for chunks in ("auto", {"t": 2}):  # whole-time slabs, then volumes in file order
        image = mriflow.open_image(path, chunks=chunks)  # the header is intact
        with pytest.raises(CorruptDataError, match=r"damaged\.nii\.gz"):
            image.sum().compute()
