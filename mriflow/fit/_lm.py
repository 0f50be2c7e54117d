"""Bounded Levenberg-Marquardt for the small nonlinear perfusion models, in numba.

One serial, GIL-free solver serves every model: the model is chosen by an integer id and
evaluated by :func:`evaluate_model` (an ``if`` chain, so the kernels cache to disk, which
first-class function arguments would prevent). The Jacobian is closed-form for the IVIM
models (:func:`analytic_jacobian`) and taken by forward differences for the others; bounds are
kept by projecting each trial step onto the box ``[lower, upper]``.

Models (``xdata`` rows and ``aux`` entries are model constants):

- ``TOFTS`` (Ktrans, ve): ``xdata[0]`` times (min), ``xdata[1]`` plasma AIF (mM).
- ``EXTENDED_TOFTS`` (Ktrans, ve, vp): same constants.
- ``ASL_BUXTON`` (f in ml/g/s, ATT in s): ``xdata[0]`` PLDs (s), ``xdata[1]`` label durations
  (s); ``aux = (T1 blood, 2 * efficiency / partition coefficient, pasl flag)``; the data is
  ``deltaM / M0``.
- ``IVIM_FULL`` (S0, f, D, D*): ``xdata[0]`` b-values (s/mm²).
- ``IVIM_PSEUDO`` (D*): ``xdata[0]`` b-values; ``aux = (S0, f, D)``.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from mriflow.fit._kernels import cholesky_solve
from mriflow.fit.mapper import NUMBA_OPTIONS

__all__ = [
    "ASL_BUXTON",
    "EXTENDED_TOFTS",
    "IVIM_FULL",
    "IVIM_PSEUDO",
    "TOFTS",
    "analytic_jacobian",
    "evaluate_model",
    "exponential_convolution",
    "levenberg_marquardt",
]

TOFTS = 0
EXTENDED_TOFTS = 1
ASL_BUXTON = 2
IVIM_FULL = 3
IVIM_PSEUDO = 4


@njit(**NUMBA_OPTIONS)
def exponential_convolution(
    times: np.ndarray, curve: np.ndarray, rate: float, out: np.ndarray
) -> None:
    """``out(t) = ∫_0^t curve(τ) exp(-rate (t - τ)) dτ`` for a piecewise-linear ``curve``.

    Exact for linear interpolation between samples (any, not only uniform, spacing), by the
    recursion ``out_i = out_{i-1} e^{-rate dt} + ∫ over [t_{i-1}, t_i]``.
    """
    out[0] = 0.0
    for i in range(1, times.shape[0]):
        step = times[i] - times[i - 1]
        start, end = curve[i - 1], curve[i]
        x = rate * step
        if x < 1e-6:
            segment = 0.5 * (start + end) * step
            decay = 1.0 - x
        else:
            decay = np.exp(-x)
            segment = end * (1.0 - decay) / rate - (end - start) / step * (
                1.0 - decay * (1.0 + x)
            ) / (rate * rate)
        out[i] = out[i - 1] * decay + segment


@njit(**NUMBA_OPTIONS)
def evaluate_model(
    model: int,
    params: np.ndarray,
    xdata: np.ndarray,
    aux: np.ndarray,
    predicted: np.ndarray,
) -> None:
    """Write the model's prediction for ``params`` into ``predicted``."""
    n = predicted.shape[0]
    if model in (TOFTS, EXTENDED_TOFTS):
        ktrans = params[0]
        kep = ktrans / params[1]
        exponential_convolution(xdata[0], xdata[1], kep, predicted)
        for i in range(n):
            predicted[i] *= ktrans
        if model == EXTENDED_TOFTS:
            for i in range(n):
                predicted[i] += params[2] * xdata[1, i]
    elif model == ASL_BUXTON:
        flow, arrival = params[0], params[1]
        t1_blood, scale, pasl = aux[0], aux[1], aux[2]
        for i in range(n):
            delay, duration = xdata[0, i], xdata[1, i]
            if pasl > 0.5:
                # PASL with QUIPSS II: bolus of width ``duration`` (TI1) from time 0; the
                # inversion time is ``delay``.
                if delay < arrival:
                    predicted[i] = 0.0
                elif delay < arrival + duration:
                    predicted[i] = scale * flow * (delay - arrival) * np.exp(-delay / t1_blood)
                else:
                    predicted[i] = scale * flow * duration * np.exp(-delay / t1_blood)
            else:
                elapsed = delay + duration  # time since the start of labeling
                if elapsed < arrival:
                    predicted[i] = 0.0
                elif elapsed < arrival + duration:
                    predicted[i] = (
                        scale
                        * flow
                        * t1_blood
                        * np.exp(-arrival / t1_blood)
                        * (1.0 - np.exp(-(elapsed - arrival) / t1_blood))
                    )
                else:
                    predicted[i] = (
                        scale
                        * flow
                        * t1_blood
                        * np.exp(-arrival / t1_blood)
                        * np.exp(-(elapsed - duration - arrival) / t1_blood)
                        * (1.0 - np.exp(-duration / t1_blood))
                    )
    elif model == IVIM_FULL:
        for i in range(n):
            b = xdata[0, i]
            predicted[i] = params[0] * (
                params[1] * np.exp(-b * params[3]) + (1.0 - params[1]) * np.exp(-b * params[2])
            )
    else:  # IVIM_PSEUDO
        for i in range(n):
            b = xdata[0, i]
            predicted[i] = aux[0] * (
                aux[1] * np.exp(-b * params[0]) + (1.0 - aux[1]) * np.exp(-b * aux[2])
            )


@njit(**NUMBA_OPTIONS)
def analytic_jacobian(
    model: int,
    params: np.ndarray,
    xdata: np.ndarray,
    aux: np.ndarray,
    jacobian: np.ndarray,
) -> bool:
    """Write the model's Jacobian into ``jacobian`` when it has a closed form (IVIM).

    Returns ``False`` for models differentiated numerically.
    """
    if model == IVIM_FULL:
        s0, fraction, diffusion, pseudo = params[0], params[1], params[2], params[3]
        for i in range(jacobian.shape[0]):
            b = xdata[0, i]
            fast = np.exp(-b * pseudo)
            slow = np.exp(-b * diffusion)
            jacobian[i, 0] = fraction * fast + (1.0 - fraction) * slow
            jacobian[i, 1] = s0 * (fast - slow)
            jacobian[i, 2] = -s0 * (1.0 - fraction) * b * slow
            jacobian[i, 3] = -s0 * fraction * b * fast
        return True
    if model == IVIM_PSEUDO:
        for i in range(jacobian.shape[0]):
            b = xdata[0, i]
            jacobian[i, 0] = -aux[0] * aux[1] * b * np.exp(-b * params[0])
        return True
    return False


@njit(**NUMBA_OPTIONS)
def _cost(
    model: int,
    params: np.ndarray,
    xdata: np.ndarray,
    aux: np.ndarray,
    data: np.ndarray,
    predicted: np.ndarray,
    residual: np.ndarray,
) -> float:
    evaluate_model(model, params, xdata, aux, predicted)
    total = 0.0
    for i in range(data.shape[0]):
        residual[i] = data[i] - predicted[i]
        total += residual[i] * residual[i]
    return total


@njit(**NUMBA_OPTIONS)
def levenberg_marquardt(
    model: int,
    params: np.ndarray,
    lower: np.ndarray,
    upper: np.ndarray,
    xdata: np.ndarray,
    aux: np.ndarray,
    data: np.ndarray,
    max_iterations: int,
    tolerance: float,
) -> tuple[float, bool]:
    """Minimise the sum of squared residuals over ``params`` (updated in place) in the box.

    Returns ``(sum of squared residuals, converged)``; converged means the relative decrease
    of the cost or the relative step fell below ``tolerance`` within ``max_iterations``.
    """
    n_params = params.shape[0]
    n_data = data.shape[0]
    predicted = np.empty(n_data)
    residual = np.empty(n_data)
    shifted = np.empty(n_data)
    jacobian = np.empty((n_data, n_params))
    normal = np.empty((n_params, n_params))
    damped = np.empty((n_params, n_params))
    factor = np.empty((n_params, n_params))
    gradient = np.empty(n_params)
    step = np.empty(n_params)
    trial = np.empty(n_params)
    trial_residual = np.empty(n_data)
    for p in range(n_params):
        params[p] = min(max(params[p], lower[p]), upper[p])
    cost = _cost(model, params, xdata, aux, data, predicted, residual)
    damping = 1e-3
    converged = False
    for _ in range(max_iterations):
        n_numeric = 0 if analytic_jacobian(model, params, xdata, aux, jacobian) else n_params
        for p in range(n_numeric):
            delta = 1e-6 * max(abs(params[p]), 1e-6)
            if params[p] + delta > upper[p]:
                delta = -delta
            saved = params[p]
            params[p] = saved + delta
            evaluate_model(model, params, xdata, aux, shifted)
            params[p] = saved
            for i in range(n_data):
                jacobian[i, p] = (shifted[i] - predicted[i]) / delta
        for p in range(n_params):
            total = 0.0
            for i in range(n_data):
                total += jacobian[i, p] * residual[i]
            gradient[p] = total
            for q in range(p + 1):
                total = 0.0
                for i in range(n_data):
                    total += jacobian[i, p] * jacobian[i, q]
                normal[p, q] = total
                normal[q, p] = total
        improved = False
        for _attempt in range(12):
            for p in range(n_params):
                for q in range(n_params):
                    damped[p, q] = normal[p, q]
                damped[p, p] = normal[p, p] * (1.0 + damping) + 1e-12
            if not cholesky_solve(damped, gradient, factor, step):
                damping *= 10.0
                continue
            step_size = 0.0
            param_size = 0.0
            for p in range(n_params):
                trial[p] = min(max(params[p] + step[p], lower[p]), upper[p])
                step_size += (trial[p] - params[p]) ** 2
                param_size += params[p] ** 2
            trial_cost = _cost(model, trial, xdata, aux, data, shifted, trial_residual)
            if trial_cost < cost:
                relative = (cost - trial_cost) / max(cost, 1e-300)
                for p in range(n_params):
                    params[p] = trial[p]
                for i in range(n_data):
                    residual[i] = trial_residual[i]
                    predicted[i] = shifted[i]
                cost = trial_cost
                damping = max(damping * 0.3, 1e-9)
                improved = True
                if relative < tolerance or step_size <= (tolerance * tolerance) * param_size:
                    converged = True
                break
            damping *= 10.0
        if converged:
            break
        if not improved:
            # No downhill step even with heavy damping: a (box-constrained) minimum.
            converged = True
            break
    return cost, converged
