"""Builders of small, real BIDS datasets (nibabel NIfTI files, JSON and TSV sidecars)."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np

AFFINE = np.array(
    [[2.0, 0.0, 0.0, -10.0], [0.0, 2.0, 0.0, -12.0], [0.0, 0.0, 2.5, -8.0], [0.0, 0.0, 0.0, 1.0]]
)


def write_image(path: Path, shape: Sequence[int], *, seed: int = 0) -> np.ndarray:
    """Write a float32 NIfTI of ``shape`` with deterministic random values; return them."""
    data = np.random.default_rng(seed).uniform(0, 1000, size=tuple(shape)).astype(np.float32)
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(data, AFFINE), path)
    return data


def write_json(path: Path, content: Mapping[str, Any]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(content, indent=1))
    return path


def write_aslcontext(path: Path, volume_types: Sequence[str]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("volume_type\n" + "".join(f"{v}\n" for v in volume_types))
    return path


def write_gradients(stem: Path, bvals: Sequence[float], seed: int = 0) -> np.ndarray:
    """Write ``stem.bval``/``stem.bvec`` (FSL layout) with unit directions; return bvecs (n,3)."""
    rng = np.random.default_rng(seed)
    bvecs = rng.normal(size=(len(bvals), 3))
    bvecs /= np.linalg.norm(bvecs, axis=1, keepdims=True)
    bvecs[np.asarray(bvals) == 0] = 0.0
    np.savetxt(stem.with_name(stem.name + ".bval"), np.asarray(bvals)[None], fmt="%g")
    np.savetxt(stem.with_name(stem.name + ".bvec"), bvecs.T, fmt="%.8f")
    return bvecs


def dataset(root: Path) -> Path:
    write_json(root / "dataset_description.json", {"Name": "test", "BIDSVersion": "1.9.0"})
    return root


PCASL = {
    "ArterialSpinLabelingType": "PCASL",
    "PostLabelingDelay": 1.8,
    "LabelingDuration": 1.8,
    "BackgroundSuppression": False,
    "M0Type": "Included",
    "RepetitionTimePreparation": 4.0,
    "MagneticFieldStrength": 3,
    "EchoTime": 0.012,
}

PASL = {
    "ArterialSpinLabelingType": "PASL",
    "PostLabelingDelay": 1.8,
    "BolusCutOffFlag": True,
    "BolusCutOffTechnique": "Q2TIPS",
    "BolusCutOffDelayTime": [0.7, 1.6],
    "BackgroundSuppression": True,
    "M0Type": "Separate",
    "RepetitionTimePreparation": 3.5,
}
