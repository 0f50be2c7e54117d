"""Shared fixtures: real sample files shipped by nibabel and dipy, and generated images."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

NIBABEL_DATA = Path(nib.__file__).parent / "tests" / "data"


@pytest.fixture(scope="session")
def nibabel_data() -> Path:
    return NIBABEL_DATA


def oblique_affine(rng: np.random.Generator, zooms=(1.5, 2.0, 2.5)) -> np.ndarray:
    """A random rotation (possibly improper) times zooms, with a random translation."""
    q, r = np.linalg.qr(rng.normal(size=(3, 3)))
    q = q * np.sign(np.diag(r))
    affine = np.eye(4)
    affine[:3, :3] = q @ np.diag(zooms)
    affine[:3, 3] = rng.uniform(-100, 100, 3)
    return affine


@pytest.fixture
def oblique_4d(tmp_path: Path) -> tuple[Path, np.ndarray, np.ndarray]:
    """A scaled int16 4D .nii.gz with an oblique affine: (path, scaled data, affine)."""
    rng = np.random.default_rng(7)
    affine = oblique_affine(rng)
    raw = rng.integers(-3000, 3000, size=(20, 18, 14, 5), dtype=np.int16)
    img = nib.Nifti1Image(raw, affine)
    img.header.set_slope_inter(0.5, 10.0)
    img.header.set_xyzt_units("mm", "msec")
    img.header.set_zooms((*img.header.get_zooms()[:3], 1500.0))
    path = tmp_path / "oblique_bold.nii.gz"
    nib.save(img, path)
    return path, raw * 0.5 + 10.0, affine


def pytest_terminal_summary(terminalreporter):
    """Print the malformed-input corpus table when the corpus ran."""
    import sys

    module = sys.modules.get("test_corpus") or sys.modules.get("tests.test_corpus")
    table = module.corpus_table() if module else ""
    if table:
        terminalreporter.write_sep("-", "malformed inputs")
        terminalreporter.write_line(table)
