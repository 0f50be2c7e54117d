"""Forward models of the perfusion and IVIM fits in plain numpy, for phantoms and checks.

Written independently of the numba kernels (the Tofts convolution here is a fine-grid
numerical integral, not the kernels' exact recursion), so recovery tests compare two
implementations. :func:`recovery` summarises estimates against the truth.
"""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = [
    "asl_difference",
    "dsc_tissue",
    "gamma_variate",
    "ivim_signal",
    "recovery",
    "spgr_signal",
    "tofts_concentration",
]


def tofts_concentration(
    times: np.ndarray,
    plasma: np.ndarray,
    ktrans: np.ndarray,
    ve: np.ndarray,
    vp: np.ndarray,
    oversample: int = 40,
) -> np.ndarray:
    """Extended Tofts tissue curves (voxels, times): ``Ktrans Cp ⊗ exp(-kep t) + vp Cp``.

    ``times`` in seconds, ``ktrans`` in 1/min; the convolution is a Riemann sum on a grid
    ``oversample`` times finer than the sampling, with ``Cp`` interpolated linearly.
    """
    minutes = (np.asarray(times, dtype=np.float64) - times[0]) / 60.0
    fine = np.linspace(0.0, minutes[-1], (len(minutes) - 1) * oversample + 1)
    step = fine[1] - fine[0]
    plasma_fine = np.interp(fine, minutes, plasma)
    ktrans = np.atleast_1d(ktrans)[:, None]
    kep = ktrans / np.atleast_1d(ve)[:, None]
    kernel = np.exp(-kep * fine[None, :])
    out = np.empty((ktrans.shape[0], len(minutes)))
    for v in range(ktrans.shape[0]):
        full = np.convolve(plasma_fine, kernel[v])[: fine.size] * step
        # trapezoid correction: the Riemann sum counts both ends fully
        full -= 0.5 * step * (plasma_fine * kernel[v, 0] + plasma_fine[0] * kernel[v, : fine.size])
        out[v] = np.interp(minutes, fine, ktrans[v, 0] * full)
    return out + np.atleast_1d(vp)[:, None] * np.asarray(plasma)[None, :]


def spgr_signal(
    concentration: np.ndarray,
    t10: np.ndarray,
    m0: float,
    flip_angle: float,
    repetition_time: float,
    relaxivity: float = 4.5,
) -> np.ndarray:
    """Spoiled gradient echo signal of concentration curves (voxels, times); T10 per voxel."""
    r1 = 1.0 / np.asarray(t10)[:, None] + relaxivity * concentration
    e1 = np.exp(-repetition_time * r1)
    angle = np.deg2rad(flip_angle)
    return m0 * np.sin(angle) * (1 - e1) / (1 - np.cos(angle) * e1)


def ivim_signal(
    bvals: np.ndarray, s0: Any, fraction: Any, diffusion: Any, pseudo: Any
) -> np.ndarray:
    """IVIM signal (voxels, b-values)."""
    b = np.asarray(bvals, dtype=np.float64)[None, :]
    f = np.atleast_1d(fraction)[:, None]
    return np.atleast_1d(s0)[:, None] * (
        f * np.exp(-b * np.atleast_1d(pseudo)[:, None])
        + (1 - f) * np.exp(-b * np.atleast_1d(diffusion)[:, None])
    )


def asl_difference(
    delays: np.ndarray,
    duration: float,
    cbf: np.ndarray,
    att: np.ndarray,
    m0: float,
    *,
    pasl: bool = False,
    efficiency: float = 0.85,
    t1_blood: float = 1.65,
    partition: float = 0.9,
) -> np.ndarray:
    """Control - label difference (voxels, delays) of the Buxton model (T1 tissue = T1 blood).

    ``cbf`` in ml/100 g/min, ``att`` in s; PCASL ``duration`` is the labeling duration, PASL
    ``duration`` the QUIPSS II TI1 and ``delays`` the inversion times.
    """
    flow = np.asarray(cbf, dtype=np.float64)[:, None] / 6000.0
    arrival = np.asarray(att, dtype=np.float64)[:, None]
    delay = np.asarray(delays, dtype=np.float64)[None, :]
    scale = 2 * efficiency * m0 / partition
    if pasl:
        rising = scale * flow * (delay - arrival) * np.exp(-delay / t1_blood)
        plateau = scale * flow * duration * np.exp(-delay / t1_blood)
        return np.where(delay < arrival, 0.0, np.where(delay < arrival + duration, rising, plateau))
    elapsed = delay + duration
    start = scale * flow * t1_blood * np.exp(-arrival / t1_blood)
    rising = start * (1 - np.exp(-(elapsed - arrival) / t1_blood))
    falling = start * np.exp(-(delay - arrival) / t1_blood) * (1 - np.exp(-duration / t1_blood))
    return np.where(elapsed < arrival, 0.0, np.where(elapsed < arrival + duration, rising, falling))


def gamma_variate(
    times: np.ndarray, arrival: float, peak: float, alpha: float = 3.0, beta: float = 1.5
):
    """A gamma-variate bolus scaled to ``peak`` at its maximum."""
    x = np.clip(np.asarray(times, dtype=np.float64) - arrival, 0, None)
    curve = x**alpha * np.exp(-x / beta)
    return curve / curve.max() * peak


def dsc_tissue(
    times: np.ndarray,
    arterial: Any,
    flow: np.ndarray,
    mtt: np.ndarray,
    delay: np.ndarray,
    oversample: int = 20,
) -> np.ndarray:
    """Tissue deltaR2* (voxels, times): ``flow * AIF ⊗ R`` with ``R(t) = exp(-(t-delay)/mtt)``.

    ``arterial(times)`` gives the arterial deltaR2*; ``flow`` in 1/s. The convolution is a
    Riemann sum on a grid ``oversample`` times finer than the sampling.
    """
    step = (times[1] - times[0]) / oversample
    fine = np.arange(0, times[-1] + step / 2, step)
    aif = arterial(fine)
    out = np.empty((len(flow), len(times)))
    for v in range(len(flow)):
        residue = np.where(fine >= delay[v], np.exp(-(fine - delay[v]) / mtt[v]), 0.0)
        curve = flow[v] * np.convolve(aif, residue)[: fine.size] * step
        out[v] = np.interp(times, fine, curve)
    return out


def recovery(name: str, estimate: np.ndarray, truth: np.ndarray, snr: float) -> dict[str, Any]:
    """Bias (median relative error), spread (IQR of it) and median absolute relative error."""
    estimate = np.asarray(estimate, dtype=np.float64).ravel()
    truth = np.asarray(truth, dtype=np.float64).ravel()
    relative = (estimate - truth) / truth
    q25, q75 = np.nanpercentile(relative, [25, 75])
    return {
        "parameter": name,
        "snr": snr,
        "voxels": int(truth.size),
        "bias": float(np.nanmedian(relative)),
        "spread": float(q75 - q25),
        "median_abs": float(np.nanmedian(np.abs(relative))),
        "failed": int(np.sum(~np.isfinite(estimate))),
    }
