"""Deterministic synthetic data: a diffusion phantom for the demo, tests and benchmarks.

Everything is generated from a seed into a directory the caller chooses; nothing large is
shipped with the package.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "LABELS",
    "gradient_table",
    "oblique_affine",
    "write_asl_phantom",
    "write_dce_dicom_study",
    "write_dce_phantom",
    "write_dsc_phantom",
    "write_dwi_phantom",
    "write_ivim_phantom",
]

#: Label values of the phantom's tissue map.
LABELS = {"background": 0, "grey_matter": 1, "white_matter": 2, "csf": 3}


def oblique_affine(
    zooms: tuple[float, float, float], shape: tuple[int, ...], degrees: float = 12.0
) -> np.ndarray:
    """An LAS+ scanner-like affine, rotated about x by ``degrees``, centred on the grid."""
    angle = np.deg2rad(degrees)
    rotation = np.array(
        [[1, 0, 0], [0, np.cos(angle), -np.sin(angle)], [0, np.sin(angle), np.cos(angle)]]
    )
    linear = rotation @ np.diag([-zooms[0], zooms[1], zooms[2]])
    affine = np.eye(4)
    affine[:3, :3] = linear
    affine[:3, 3] = -linear @ ((np.asarray(shape[:3]) - 1) / 2)
    return affine


def gradient_table(
    n_directions: int, bvalue: float, n_b0: int = 1, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """``n_b0`` b=0 volumes then ``n_directions`` near-uniform unit directions (Fibonacci
    sphere, random rotation from ``seed``), as FSL-style ``(bvals (n,), bvecs (n, 3))``."""
    index = np.arange(n_directions) + 0.5
    polar = np.arccos(1 - index / n_directions)  # hemisphere: antipodal symmetry
    azimuth = np.pi * (1 + 5**0.5) * index
    directions = np.stack(
        [np.cos(azimuth) * np.sin(polar), np.sin(azimuth) * np.sin(polar), np.cos(polar)], axis=1
    )
    q, _ = np.linalg.qr(np.random.default_rng(seed).normal(size=(3, 3)))
    directions = directions @ q.T
    bvals = np.concatenate([np.zeros(n_b0), np.full(n_directions, float(bvalue))])
    bvecs = np.concatenate([np.zeros((n_b0, 3)), directions])
    return bvals, bvecs


def _tissue_map(shape: tuple[int, int, int]) -> np.ndarray:
    grid = np.stack(np.meshgrid(*[np.linspace(-1, 1, n) for n in shape], indexing="ij"), axis=-1)
    radius = np.sqrt(((grid / [0.85, 0.9, 0.8]) ** 2).sum(-1))
    labels = np.zeros(shape, np.uint8)
    labels[radius < 1.0] = LABELS["grey_matter"]
    labels[radius < 0.8] = LABELS["white_matter"]
    ventricle = np.sqrt(((grid / [0.15, 0.3, 0.2]) ** 2).sum(-1)) < 1.0
    labels[ventricle] = LABELS["csf"]
    return labels


def _fibre_directions(shape: tuple[int, int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Two fibre populations: left-right in the lower half, anterior-posterior in the
    upper half; both in a crossing band between (voxel frame)."""
    first = np.zeros((*shape, 3))
    second = np.zeros((*shape, 3))
    k = np.arange(shape[2])[None, None, :]
    lower = k < shape[2] * 0.55
    upper = k >= shape[2] * 0.45
    first[..., 0] = np.broadcast_to(lower, shape)
    second[..., 1] = np.broadcast_to(upper, shape)
    return first, second


def write_dwi_phantom(
    out_dir: str | Path,
    *,
    shape: tuple[int, int, int] = (48, 56, 40),
    zooms: tuple[float, float, float] = (2.0, 2.0, 2.0),
    n_directions: int = 32,
    bvalue: float = 1000.0,
    n_b0: int = 2,
    snr: float = 30.0,
    seed: int = 0,
    name: str = "sub-01_dwi",
) -> dict[str, Path]:
    """Write a BIDS-like DWI phantom: ``{name}.nii.gz`` (int16, scaled), ``.bval``,
    ``.bvec``, ``.json``, plus ``sub-01_dseg.nii.gz`` (tissue labels) and
    ``sub-01_mask.nii.gz``. Tensors: single and crossing fibres in white matter (FA ~0.7),
    isotropic grey matter and CSF; Rician noise at ``snr`` on b=0. Returns the paths."""
    import nibabel as nib

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    affine = oblique_affine(zooms, shape)
    labels = _tissue_map(shape)
    bvals, bvecs = gradient_table(n_directions, bvalue, n_b0, seed)
    # The tensors live in the voxel frame, so do the gradients; FSL's .bvec stores them with
    # x negated when the affine's determinant is positive.
    fsl_sign = np.array([-1.0 if np.linalg.det(affine[:3, :3]) > 0 else 1.0, 1.0, 1.0])

    s0 = np.select(
        [
            labels == LABELS["white_matter"],
            labels == LABELS["grey_matter"],
            labels == LABELS["csf"],
        ],
        [800.0, 1000.0, 2000.0],
        0.0,
    )
    first, second = _fibre_directions(shape)
    axial, radial = 1.7e-3, 0.3e-3
    signal = np.zeros((*shape, bvals.size))
    for n, (b, g) in enumerate(zip(bvals, bvecs, strict=True)):
        iso = {LABELS["grey_matter"]: 0.8e-3, LABELS["csf"]: 3.0e-3}
        attenuation = np.ones(shape)
        for label, diffusivity in iso.items():
            attenuation[labels == label] = np.exp(-b * diffusivity)
        wm = labels == LABELS["white_matter"]
        parts = []
        weights = []
        for fibres in (first, second):
            present = np.linalg.norm(fibres, axis=-1) > 0
            cos2 = (fibres @ g) ** 2
            parts.append(np.exp(-b * (radial + (axial - radial) * cos2)) * present)
            weights.append(present.astype(float))
        total = np.maximum(weights[0] + weights[1], 1)
        attenuation[wm] = ((parts[0] + parts[1]) / total)[wm]
        signal[..., n] = s0 * attenuation
    sigma = 1000.0 / snr
    noisy = np.sqrt(
        (signal + rng.normal(0, sigma, signal.shape)) ** 2 + rng.normal(0, sigma, signal.shape) ** 2
    )
    noisy[labels == 0] = np.abs(rng.normal(0, sigma, (int((labels == 0).sum()), bvals.size)))

    dwi = nib.Nifti1Image(np.zeros(noisy.shape, np.int16), affine)
    dwi.header.set_data_dtype(np.int16)
    dwi.header.set_xyzt_units("mm", "sec")
    dwi.header.set_zooms((*zooms, 3.2))
    dwi.set_sform(affine, code=1)
    dwi.set_qform(affine, code=1)
    slope = float(noisy.max() / 32000.0)
    raw = np.rint(noisy / slope).astype(np.int16)
    dwi = nib.Nifti1Image(raw, affine, dwi.header)
    dwi.header.set_slope_inter(slope, 0.0)
    paths = {"dwi": out / f"{name}.nii.gz"}
    nib.save(dwi, paths["dwi"])
    paths["bval"] = out / f"{name}.bval"
    paths["bvec"] = out / f"{name}.bvec"
    np.savetxt(paths["bval"], bvals[None], fmt="%g")
    np.savetxt(paths["bvec"], (bvecs * fsl_sign).T, fmt="%.8f")
    paths["json"] = out / f"{name}.json"
    paths["json"].write_text(
        json.dumps(
            {
                "RepetitionTime": 3.2,
                "EchoTime": 0.08,
                "MagneticFieldStrength": 3,
                "PhaseEncodingDirection": "j-",
                "Manufacturer": "mriflow-phantom",
            },
            indent=2,
        )
    )
    label_img = nib.Nifti1Image(labels, affine)
    label_img.header.set_intent("label")
    paths["labels"] = out / "sub-01_dseg.nii.gz"
    nib.save(label_img, paths["labels"])
    paths["mask"] = out / "sub-01_mask.nii.gz"
    nib.save(nib.Nifti1Image((labels > 0).astype(np.uint8), affine), paths["mask"])
    return paths


def _dce_signals(
    shape: tuple[int, int, int],
    n_times: int,
    temporal_resolution: float,
    flip_angles: tuple[float, ...],
    dce_flip_angle: float,
    repetition_time: float,
    snr: float,
    seed: int,
) -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]]:
    """VFA signal (voxels, angles), DCE signal (voxels, times) and the true maps (voxels)."""
    from mriflow.fit.dce import population_aif
    from mriflow.fit.perfusion_phantoms import spgr_signal, tofts_concentration

    rng = np.random.default_rng(seed)
    n_voxels = int(np.prod(shape))
    i, j, _ = np.meshgrid(*[np.linspace(0, 1, n) for n in shape], indexing="ij")
    truth = {
        "ktrans": (0.05 + 0.25 * i).ravel(),
        "ve": (0.1 + 0.4 * j).ravel(),
        "vp": np.full(n_voxels, 0.03),
        "t10": np.full(n_voxels, 1.4),
    }
    times = np.arange(n_times) * temporal_resolution
    plasma = np.asarray(population_aif("parker", times=times, delay=20.0).values) / (1 - 0.45)
    concentration = tofts_concentration(times, plasma, truth["ktrans"], truth["ve"], truth["vp"])
    m0 = 1000.0
    baseline = spgr_signal(np.zeros((1, 1)), truth["t10"][:1], m0, dce_flip_angle, repetition_time)
    noise = float(baseline[0, 0]) / snr  # SNR of the pre-contrast DCE signal
    vfa = np.stack(
        [
            spgr_signal(np.zeros((n_voxels, 1)), truth["t10"], m0, a, repetition_time)[:, 0]
            for a in flip_angles
        ],
        axis=-1,
    )
    vfa = vfa + rng.normal(0, noise, vfa.shape)
    signal = spgr_signal(concentration, truth["t10"], m0, dce_flip_angle, repetition_time)
    signal = signal + rng.normal(0, noise, signal.shape)
    return vfa, signal, truth


def write_dce_phantom(
    out_dir: str | Path,
    *,
    shape: tuple[int, int, int] = (16, 16, 6),
    n_times: int = 40,
    temporal_resolution: float = 4.0,
    flip_angles: tuple[float, ...] = (2.0, 5.0, 10.0, 15.0),
    dce_flip_angle: float = 15.0,
    repetition_time: float = 0.005,
    snr: float = 50.0,
    seed: int = 0,
) -> dict[str, Path]:
    """Write a BIDS-like DCE phantom: ``sub-01_vfa.nii.gz`` (one volume per flip angle),
    ``sub-01_dce.nii.gz`` (SPGR signal of extended-Tofts tissue with a Parker AIF), their
    JSON sidecars, ``sub-01_mask.nii.gz`` and the true maps (``truth_ktrans``, ``truth_ve``,
    ``truth_vp``, ``truth_t10``). Ktrans rises along ``i``, ve along ``j``."""
    import nibabel as nib

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    affine = np.diag([2.0, 2.0, 4.0, 1.0])
    vfa, signal, truth = _dce_signals(
        shape,
        n_times,
        temporal_resolution,
        flip_angles,
        dce_flip_angle,
        repetition_time,
        snr,
        seed,
    )
    paths: dict[str, Path] = {}

    def save(
        name: str, data: np.ndarray, sidecar: dict | None = None, intent: str | None = None
    ) -> None:
        image = nib.Nifti1Image(data.astype(np.float32), affine)
        image.header.set_xyzt_units("mm", "sec")
        if data.ndim == 4 and name == "dce":
            image.header.set_zooms((2.0, 2.0, 4.0, temporal_resolution))
        if intent:
            image.header.set_intent(intent)
        paths[name] = out / f"sub-01_{name}.nii.gz"
        nib.save(image, paths[name])
        if sidecar:
            paths[f"{name}.json"] = out / f"sub-01_{name}.json"
            paths[f"{name}.json"].write_text(json.dumps(sidecar, indent=2))

    save(
        "vfa",
        vfa.reshape(*shape, len(flip_angles)),
        {"FlipAngle": list(flip_angles), "RepetitionTimeExcitation": repetition_time},
    )
    save(
        "dce",
        signal.reshape(*shape, n_times),
        {
            "FlipAngle": dce_flip_angle,
            "RepetitionTimeExcitation": repetition_time,
            "RepetitionTime": temporal_resolution,
        },
    )
    save("mask", np.ones(shape), intent="label")
    for name, values in truth.items():
        save(f"truth_{name}", values.reshape(shape))
    return paths


def write_dce_dicom_study(
    out_dir: str | Path,
    *,
    shape: tuple[int, int, int] = (16, 16, 6),
    n_times: int = 40,
    temporal_resolution: float = 4.0,
    flip_angles: tuple[float, ...] = (2.0, 5.0, 10.0, 15.0),
    dce_flip_angle: float = 15.0,
    repetition_time: float = 0.005,
    snr: float = 50.0,
    seed: int = 0,
    per_frame: bool = True,
    write_repetition_time: bool = True,
) -> dict[str, Path]:
    """Write the DCE phantom of :func:`write_dce_phantom` as a DICOM study, unsorted.

    ``study/`` holds one single-frame MR series per flip angle (the VFA set for T1, flip
    angle and TR in the headers) and the dynamic series: with ``per_frame`` a TWIST-style
    export, one series per time frame described ``"dce_twist TT=<seconds>s"``, else one
    series with a TemporalPositionIdentifier per frame. Stored values are the signal x 10
    with RescaleSlope 0.1. ``write_repetition_time=False`` leaves RepetitionTime out of
    every header. The true maps are NIfTI files next to ``study/`` (``truth_ktrans``, ...;
    voxel order rows, columns, slices as mriflow loads the series).
    """
    import nibabel as nib

    from mriflow.io.dicom.synthetic import write_series

    out = Path(out_dir)
    study = out / "study"
    vfa, signal, truth = _dce_signals(
        shape,
        n_times,
        temporal_resolution,
        flip_angles,
        dce_flip_angle,
        repetition_time,
        snr,
        seed,
    )
    tr_ms = repetition_time * 1000 if write_repetition_time else None
    common: dict[str, Any] = {
        "shape": shape,
        "study_uid": "1.2.826.0.1.3680043.8.498.1",
        "repetition_time": tr_ms,
        "rescale": (0.1, 0.0),
        "pixel_spacing": (2.0, 2.0),
        "slice_spacing": 4.0,
        "seed": seed,
    }

    def stored(values: np.ndarray) -> np.ndarray:
        return np.clip(np.rint(values * 10), 0, 65535).astype(np.uint16)

    for index, angle in enumerate(flip_angles):
        write_series(
            study / f"vfa_{index}",
            description=f"t1_vibe_fa{angle:g}",
            series_number=10 + index,
            flip_angle=angle,
            pixels=stored(vfa[:, index]).reshape(*shape, 1),
            name_prefix=f"V{index}_",
            **common,
        )
    dynamic = stored(signal).reshape(*shape, n_times)
    if per_frame:
        for frame in range(n_times):
            write_series(
                study / "dce" / f"frame_{frame:03d}",
                description=f"dce_twist TT={frame * temporal_resolution:.1f}s",
                series_number=100 + frame,
                flip_angle=dce_flip_angle,
                pixels=dynamic[..., frame : frame + 1],
                start_time=36000.0 + frame * temporal_resolution,
                name_prefix=f"F{frame:03d}_",
                **common,
            )
    else:
        write_series(
            study / "dce",
            description="dce_vibe",
            series_number=100,
            n_volumes=n_times,
            flip_angle=dce_flip_angle,
            temporal_resolution=temporal_resolution,
            pixels=dynamic,
            name_prefix="D",
            **common,
        )
    paths = {"study": study}
    for name, values in truth.items():
        paths[f"truth_{name}"] = out / f"truth_{name}.nii.gz"
        nib.save(
            nib.Nifti1Image(values.reshape(shape).astype(np.float32), np.eye(4)),
            paths[f"truth_{name}"],
        )
    return paths


def _save_nifti(
    path: Path,
    data: np.ndarray,
    affine: np.ndarray,
    sidecar: dict | None = None,
    label: bool = False,
) -> Path:
    """A float32 NIfTI (uint8 label image when ``label``) with its JSON sidecar."""
    import nibabel as nib

    image = nib.Nifti1Image(data.astype(np.uint8 if label else np.float32), affine)
    image.header.set_xyzt_units("mm", "sec")
    if label:
        image.header.set_intent("label")
    nib.save(image, path)
    if sidecar is not None:
        path.with_name(path.name.replace(".nii.gz", ".json")).write_text(
            json.dumps(sidecar, indent=2)
        )
    return path


_PERFUSION_AFFINE = np.diag([2.0, 2.0, 3.0, 1.0])


def _save_truths(
    out: Path, truth: dict[str, np.ndarray], shape: tuple[int, ...]
) -> dict[str, Path]:
    """The true maps of a perfusion phantom as ``truth_<name>.nii.gz``, by ``truth_<name>``."""
    return {
        f"truth_{name}": _save_nifti(
            out / f"truth_{name}.nii.gz", values.reshape(shape), _PERFUSION_AFFINE
        )
        for name, values in truth.items()
    }


def write_ivim_phantom(
    out_dir: str | Path,
    *,
    shape: tuple[int, int, int] = (8, 8, 2),
    bvalues: tuple[float, ...] = (0, 10, 20, 50, 100, 200, 400, 600, 800, 1000),
    snr: float = 50.0,
    seed: int = 0,
) -> dict[str, Path]:
    """Write an IVIM phantom: ``sub-01_acq-ivim_dwi.nii.gz`` with ``.bval``/``.bvec``,
    ``sub-01_mask.nii.gz`` and the true maps (``truth_d``, ``truth_f``, ``truth_d_star``;
    mm²/s). D rises along ``i`` (0.7-1.5e-3), f along ``j`` (0.08-0.25), D* is 0.03."""
    from mriflow.fit.perfusion_phantoms import ivim_signal

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    i, j, _ = np.meshgrid(*[np.linspace(0, 1, n) for n in shape], indexing="ij")
    truth = {
        "d": (0.0007 + 0.0008 * i).ravel(),
        "f": (0.08 + 0.17 * j).ravel(),
        "d_star": np.full(i.size, 0.03),
    }
    bvals = np.asarray(bvalues, dtype=np.float64)
    signal = ivim_signal(bvals, 1000.0, truth["f"], truth["d"], truth["d_star"])
    signal = np.abs(signal + rng.normal(0, 1000.0 / snr, signal.shape))
    paths = {
        "dwi": _save_nifti(
            out / "sub-01_acq-ivim_dwi.nii.gz",
            signal.reshape(*shape, bvals.size),
            _PERFUSION_AFFINE,
            {"EchoTime": 0.08, "RepetitionTime": 4.0},
        )
    }
    paths["bval"] = out / "sub-01_acq-ivim_dwi.bval"
    paths["bvec"] = out / "sub-01_acq-ivim_dwi.bvec"
    np.savetxt(paths["bval"], bvals[None], fmt="%g")
    directions = np.tile([[1.0], [0.0], [0.0]], (1, bvals.size))
    directions[:, bvals == 0] = 0.0
    np.savetxt(paths["bvec"], directions, fmt="%g")
    paths["mask"] = _save_nifti(
        out / "sub-01_mask.nii.gz", np.ones(shape), _PERFUSION_AFFINE, label=True
    )
    paths.update(_save_truths(out, truth, shape))
    return paths


def write_dsc_phantom(
    out_dir: str | Path,
    *,
    shape: tuple[int, int, int] = (8, 8, 2),
    n_times: int = 60,
    temporal_resolution: float = 1.0,
    echo_time: float = 0.03,
    arterial_peak: float = 150.0,
    snr: float = 200.0,
    seed: int = 0,
) -> dict[str, Path]:
    """Write a DSC phantom: ``sub-01_dsc.nii.gz`` (gradient-echo signal, sidecar with
    ``RepetitionTime`` and ``EchoTime``), ``sub-01_aifmask.nii.gz`` (the arterial voxels: the
    last ``j`` row), ``sub-01_mask.nii.gz`` (tissue: the other voxels) and the true maps
    (``truth_rcbv``, ``truth_cbf`` in 6000 x flow, ``truth_mtt`` in s). Flow rises along
    ``i`` (0.008-0.02 /s), MTT along ``j`` (3-6 s); the bolus arrives with the AIF, whose
    deltaR2* peaks at ``arterial_peak`` (1/s). ``snr`` is the baseline signal over the noise
    SD; the arterial signal at the bolus peak keeps exp(-TE x peak) (1 %) of its baseline,
    so a noisy AIF would bias rCBV: the default keeps it measurable."""
    from mriflow.fit.perfusion_phantoms import dsc_tissue, gamma_variate

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    times = np.arange(n_times) * temporal_resolution

    def arterial(at: np.ndarray) -> np.ndarray:
        return gamma_variate(at, 10.0, arterial_peak)

    i, j, _ = np.meshgrid(*[np.linspace(0, 1, n) for n in shape], indexing="ij")
    flow = (0.008 + 0.012 * i).ravel()
    mtt = (3.0 + 3.0 * j).ravel()
    tissue = dsc_tissue(times, arterial, flow, mtt, np.zeros(flow.size))
    vessel = np.zeros(shape, dtype=bool)
    vessel[:, -1, :] = True
    curves = np.where(vessel.ravel()[:, None], arterial(times)[None, :], tissue)
    signal = 1000.0 * np.exp(-echo_time * curves)
    signal = signal + rng.normal(0, 1000.0 / snr, signal.shape)
    paths = {
        "dsc": _save_nifti(
            out / "sub-01_dsc.nii.gz",
            signal.reshape(*shape, n_times),
            _PERFUSION_AFFINE,
            {"RepetitionTime": temporal_resolution, "EchoTime": echo_time},
        ),
        "aif_mask": _save_nifti(
            out / "sub-01_aifmask.nii.gz", vessel, _PERFUSION_AFFINE, label=True
        ),
        "mask": _save_nifti(out / "sub-01_mask.nii.gz", ~vessel, _PERFUSION_AFFINE, label=True),
    }
    truth = {"rcbv": flow * mtt, "cbf": 6000 * flow, "mtt": mtt}
    paths.update(_save_truths(out, truth, shape))
    return paths


def write_asl_phantom(
    out_dir: str | Path,
    *,
    shape: tuple[int, int, int] = (8, 8, 2),
    n_pairs: int = 10,
    post_labeling_delay: float = 1.8,
    labeling_duration: float = 1.8,
    m0: float = 1500.0,
    snr: float = 20.0,
    seed: int = 0,
) -> dict[str, Path]:
    """Write a single-PLD PCASL phantom: ``sub-01_asl.nii.gz`` (``n_pairs`` control/label
    pairs then one M0 volume), its BIDS sidecar (M0Type Included) and
    ``sub-01_aslcontext.tsv``, ``sub-01_mask.nii.gz`` and ``truth_cbf`` (ml/100 g/min,
    rising along ``i`` from 20 to 90; ATT 1.2 s). ``snr`` is that of one pair's difference."""
    from mriflow.fit.perfusion_phantoms import asl_difference

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    i, _, _ = np.meshgrid(*[np.linspace(0, 1, n) for n in shape], indexing="ij")
    cbf = (20.0 + 70.0 * i).ravel()
    difference = asl_difference(
        np.array([post_labeling_delay]), labeling_duration, cbf, np.full(cbf.size, 1.2), m0
    )[:, 0]
    control = np.full(cbf.size, 1000.0)
    volumes, types = [], []
    for _ in range(n_pairs):
        volumes += [control, control - difference]
        types += ["control", "label"]
    volumes.append(np.full(cbf.size, m0))
    types.append("m0scan")
    data = np.stack(volumes, axis=1)
    noise = rng.normal(0, difference.mean() / snr / np.sqrt(2), data.shape)
    sidecar = {
        "ArterialSpinLabelingType": "PCASL",
        "PostLabelingDelay": post_labeling_delay,
        "LabelingDuration": labeling_duration,
        "BackgroundSuppression": False,
        "M0Type": "Included",
        "RepetitionTimePreparation": 4.0,
    }
    paths = {
        "asl": _save_nifti(
            out / "sub-01_asl.nii.gz",
            (data + noise).reshape(*shape, len(types)),
            _PERFUSION_AFFINE,
            sidecar,
        ),
        "mask": _save_nifti(
            out / "sub-01_mask.nii.gz", np.ones(shape), _PERFUSION_AFFINE, label=True
        ),
        **_save_truths(out, {"cbf": cbf}, shape),
    }
    paths["aslcontext"] = out / "sub-01_aslcontext.tsv"
    paths["aslcontext"].write_text("volume_type\n" + "\n".join(types) + "\n")
    return paths
