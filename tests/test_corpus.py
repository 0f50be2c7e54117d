"""Run the malformed-input corpus: every case gives a typed, named error or a documented
warning; none returns silent garbage. The table is printed at the end of the test run."""

from __future__ import annotations

import struct
import warnings
from collections import Counter

import corpus
import nibabel as nib
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import mriflow
from mriflow.errors import MriflowError, MriflowWarning

OUTCOMES: dict[str, str] = {}


def _image(path):
    return mriflow.open_image(path).sum().compute()


OPENERS = {
    "image": _image,
    "asl": lambda path: mriflow.load_asl_context(path, subject="01"),
    "asl-image": lambda path: mriflow.open_image(path, modality="asl").sum().compute(),
    "dce-image": lambda path: mriflow.open_image(path, modality="dce").sum().compute(),
    "config": lambda path: __import__("mriflow.config").config.load_config(path),
}


def outcome(case: corpus.Case) -> str:
    """What mriflow did with ``case``: typed error / warning / silent / a defect."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            OPENERS[case.opener](case.path)
        except MriflowError as exc:
            named = case.path.name in str(exc) or case.path.stem.split(".")[0] in str(exc)
            return "typed error" if named else f"error not naming the file: {exc}"
        except Exception as exc:  # a defect: not a MriflowError
            return f"untyped {type(exc).__name__}: {exc}"
    if any(issubclass(w.category, MriflowWarning) for w in caught):
        return "warning"
    return "silent"


@pytest.fixture(scope="module")
def cases(tmp_path_factory):
    return corpus.build(tmp_path_factory.mktemp("corpus"))


def test_corpus_is_large_enough(cases):
    assert len(cases) >= 40
    assert len({c.name for c in cases}) == len(cases)


def test_every_case_is_refused_or_warned(cases, record_property):
    for case in cases:
        OUTCOMES[case.name] = outcome(case)
    expected = {c.name: "typed error" if c.expect == "error" else "warning" for c in cases}
    wrong = {n: o for n, o in OUTCOMES.items() if o != expected[n]}
    assert not wrong, wrong
    assert Counter(OUTCOMES.values())["silent"] == 0


def corpus_table() -> str:
    """The summary table printed by conftest at the end of the run."""
    if not OUTCOMES:
        return ""
    counts = Counter(
        o if o in ("typed error", "warning", "silent") else "defect" for o in OUTCOMES.values()
    )
    lines = [
        "malformed-input corpus",
        f"  inputs tried {len(OUTCOMES)} | typed errors {counts['typed error']} | "
        f"warnings {counts['warning']} | silent {counts['silent']} | defects {counts['defect']}",
    ]
    by_format = Counter(name.split("/")[0] for name in OUTCOMES)
    lines.append("  by format: " + ", ".join(f"{k} {v}" for k, v in sorted(by_format.items())))
    return "\n".join(lines)


# --- fuzzing: random values in the header fields nibabel interprets ------------------------

FIELDS = {
    "dim": (40, "<8h", st.lists(st.integers(-3, 40), min_size=8, max_size=8)),
    "datatype": (70, "<h", st.sampled_from([0, 1, 2, 4, 8, 16, 64, 128, 256, 512, 999, -3])),
    "vox_offset": (
        108,
        "<f",
        st.one_of(st.floats(-1e3, 1e5), st.sampled_from([float("nan"), float("inf")])),
    ),
    "scl": (
        112,
        "<2f",
        st.lists(st.floats(allow_nan=True, allow_infinity=True, width=32), min_size=2, max_size=2),
    ),
    "pixdim": (
        76,
        "<8f",
        st.lists(
            st.one_of(st.floats(-10, 10, width=32), st.just(float("nan"))), min_size=8, max_size=8
        ),
    ),
    "codes": (252, "<2h", st.lists(st.integers(-1, 5), min_size=2, max_size=2)),
    "quatern": (
        256,
        "<6f",
        st.lists(st.floats(allow_nan=True, allow_infinity=True, width=32), min_size=6, max_size=6),
    ),
    "srow": (
        280,
        "<12f",
        st.lists(
            st.one_of(st.floats(-1e6, 1e6, width=32), st.just(float("nan"))),
            min_size=12,
            max_size=12,
        ),
    ),
}


@st.composite
def damaged_headers(draw):
    raw = bytearray(corpus._valid_bytes())
    for name in draw(
        st.lists(st.sampled_from(sorted(FIELDS)), min_size=1, max_size=3, unique=True)
    ):
        offset, fmt, values = FIELDS[name]
        value = draw(values)
        struct.pack_into(fmt, raw, offset, *(value if isinstance(value, list) else [value]))
    return bytes(raw)


@settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(damaged_headers())
def test_fuzzed_headers_never_give_untyped_errors_or_garbage(tmp_path, raw):
    path = tmp_path / "fuzz.nii"
    path.write_bytes(raw)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            image = mriflow.open_image(path)
            values = image.values
        except MriflowError as exc:
            message = str(exc)
        else:
            message = None
    if message is not None:
        assert "fuzz.nii" in message
        return
    # accepted: it must be what nibabel reads, on a usable grid
    reference = nib.load(path)
    np.testing.assert_array_equal(values, np.asanyarray(reference.dataobj))
    assert np.all(np.isfinite(image.mri.affine))
    assert abs(np.linalg.det(image.mri.affine[:3, :3])) > 0


# --- fuzzing: DICOM geometry tags ----------------------------------------------------------

GEOMETRY_VALUES = st.one_of(
    st.floats(-1e4, 1e4, allow_nan=False, width=32),
    st.sampled_from([0.0, float("nan"), float("inf"), 1e30]),
)


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    field=st.sampled_from(
        ["ImageOrientationPatient", "ImagePositionPatient", "PixelSpacing", "SliceThickness"]
    ),
    values=st.lists(GEOMETRY_VALUES, min_size=1, max_size=6),
    which=st.sampled_from(["one", "all"]),
)
def test_fuzzed_dicom_geometry_gives_typed_errors_or_sane_geometry(
    tmp_path_factory, field, values, which
):
    import pydicom

    from mriflow.io.dicom import synthetic

    folder = tmp_path_factory.mktemp("dicomfuzz")
    written = synthetic.write_series(folder, shape=(6, 5, 4))
    targets = written.files if which == "all" else written.files[1:2]
    for path in targets:
        dataset = pydicom.dcmread(path)
        try:
            with warnings.catch_warnings():  # pydicom warns about the invalid values we write
                warnings.simplefilter("ignore")
                value = [str(v) for v in values] if len(values) > 1 else str(values[0])
                setattr(dataset, field, value)
                dataset.save_as(path, enforce_file_format=True)
        except (ValueError, OverflowError, TypeError):
            return  # pydicom itself refuses to write this value: nothing to test
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            image = mriflow.open_image(folder)
            values_read = image.values
        except MriflowError as exc:
            message = str(exc)
        else:
            message = None
    if message is not None:
        assert str(folder) in message or written.series_uid in message or "IM" in message
        return
    affine = image.mri.affine
    assert np.all(np.isfinite(affine))
    assert abs(np.linalg.det(affine[:3, :3])) > 0
    assert values_read.shape[:2] == (6, 5)
