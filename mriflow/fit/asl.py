"""Arterial spin labeling CBF (ml/100 g/min) per the ASL white paper (Alsop et al. 2015).

Single PLD, PCASL/CASL::

    CBF = 6000 lambda dM exp(PLD / T1b) / (2 alpha T1b M0 (1 - exp(-tau / T1b)))

Single TI, PASL with QUIPSS II or Q2TIPS bolus cut-off (TI1 = ``BolusCutOffDelayTime``)::

    CBF = 6000 lambda dM exp(TI / T1b) / (2 alpha TI1 M0)

(lambda: partition coefficient, alpha: labeling efficiency, tau: labeling duration.)

``dM`` is the mean control - label difference at that delay: controls and labels are paired
in order from the aslcontext ``volume_type`` list (``deltam`` volumes count as ready
differences). Several distinct PLDs: CBF and arterial transit time (ATT) are fitted to the
Buxton general kinetic model (with T1 of tissue taken equal to T1 of blood, as the white
paper does) by bounded Levenberg-Marquardt in numba.

M0 follows ``M0Type``: ``Included`` (the ``m0scan`` volumes of the series, averaged),
``Separate`` (pass ``m0=``, e.g. from :func:`mriflow.load_bids_with_m0`), ``Estimate`` (one
number, ``M0Estimate``); ``Absent`` needs ``m0=``. ``M0Scale`` multiplies M0. An explicit
``m0`` (image or number) always wins. Labeling efficiency defaults to the white paper's
(PCASL 0.85, CASL 0.68, PASL 0.98); background suppression losses are not modelled: pass
``labeling_efficiency`` to include them.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import xarray as xr
from numba import njit

from mriflow.errors import AcquisitionError, PerfusionInputError
from mriflow.fit._lm import ASL_BUXTON, evaluate_model, levenberg_marquardt
from mriflow.fit._perfusion import acquisition_value, series_dim, spatial_dims
from mriflow.fit.mapper import NUMBA_OPTIONS, image_label, map_voxels, output_attrs, split_params

__all__ = ["asl_cbf", "asl_kernel"]

#: Seconds; T1 of arterial blood at 3 T (white paper).
T1_BLOOD_3T = 1.65
#: Brain/blood partition coefficient (ml/g).
PARTITION_COEFFICIENT = 0.9
_ATT_GRID = np.linspace(0.2, 3.0, 15)
#: Bounds of the multi-PLD fit: f in ml/g/s, ATT in s.
_FLOW_BOUNDS = (0.0, 0.05)
_ATT_BOUNDS = (0.0, 4.0)


@njit(**NUMBA_OPTIONS)
def asl_kernel(
    signal: np.ndarray,
    out: np.ndarray,
    weights: np.ndarray,
    m0_mode: int,
    m0_value: float,
    xdata: np.ndarray,
    aux: np.ndarray,
    max_iterations: int,
    tolerance: float,
) -> int:
    """CBF per voxel: ``out = (cbf, att, rms residual of ΔM/M0, converged)``.

    ``weights`` rows give the mean control-label difference per delay and, last, the M0
    average (``m0_mode`` 0); ``m0_mode`` 1 reads M0 from the last sample, 2 uses
    ``m0_value``. ``xdata`` holds the delays and bolus durations, ``aux`` the model constants
    (:mod:`mriflow.fit._lm`).
    """
    n_voxels = signal.shape[0]
    n_delays = weights.shape[0] - 1
    n_volumes = weights.shape[1]
    normalised = np.empty(n_delays)
    params = np.empty(2)
    lower = np.array([_FLOW_BOUNDS[0], _ATT_BOUNDS[0]])
    upper = np.array([_FLOW_BOUNDS[1], _ATT_BOUNDS[1]])
    unit = np.array([1.0, 0.0])
    shape = np.empty(n_delays)
    n_invalid = 0
    for voxel in range(n_voxels):
        data = signal[voxel]
        if not np.all(np.isfinite(data)):
            out[voxel, :] = np.nan
            n_invalid += 1
            continue
        if m0_mode == 0:
            m0 = 0.0
            for v in range(n_volumes):
                m0 += weights[n_delays, v] * data[v]
        elif m0_mode == 1:
            m0 = data[n_volumes]
        else:
            m0 = m0_value
        m0 *= aux[3]
        if not (m0 > 0.0):
            out[voxel, :] = np.nan
            n_invalid += 1
            continue
        for d in range(n_delays):
            total = 0.0
            for v in range(n_volumes):
                total += weights[d, v] * data[v]
            normalised[d] = total / m0
        if n_delays == 1:
            # White-paper single-delay formula: the Buxton model with ATT <= PLD.
            params[0] = 1.0
            params[1] = 0.0
            from_model = np.empty(1)
            evaluate_model(ASL_BUXTON, params, xdata, aux, from_model)
            out[voxel, 0] = 6000.0 * normalised[0] / from_model[0]
            out[voxel, 1] = np.nan
            out[voxel, 2] = 0.0
            out[voxel, 3] = 1.0
            continue
        best = np.inf
        for arrival in _ATT_GRID:
            unit[1] = arrival
            evaluate_model(ASL_BUXTON, unit, xdata, aux, shape)
            s_ss = s_sy = 0.0
            for d in range(n_delays):
                s_ss += shape[d] * shape[d]
                s_sy += shape[d] * normalised[d]
            if s_ss <= 0.0:
                continue
            flow = max(s_sy / s_ss, 0.0)
            cost = 0.0
            for d in range(n_delays):
                cost += (normalised[d] - flow * shape[d]) ** 2
            if cost < best:
                best = cost
                params[0] = flow
                params[1] = arrival
        cost, converged = levenberg_marquardt(
            ASL_BUXTON, params, lower, upper, xdata, aux, normalised, max_iterations, tolerance
        )
        out[voxel, 0] = 6000.0 * params[0]
        out[voxel, 1] = params[1]
        out[voxel, 2] = np.sqrt(cost / n_delays)
        out[voxel, 3] = 1.0 if converged else 0.0
    return n_invalid


def _per_volume(value: Any, n: int, name: str, label: str) -> np.ndarray:
    array = np.atleast_1d(np.asarray(value, dtype=np.float64))
    if array.size == 1:
        return np.full(n, float(array[0]))
    if array.size != n:
        raise AcquisitionError(f"{label}: {name} has {array.size} values for {n} volumes")
    return array


def asl_cbf(
    asl: xr.DataArray,
    m0: Any = None,
    context: Any = None,
    *,
    labeling_type: str | None = None,
    post_labeling_delay: Any = None,
    labeling_duration: Any = None,
    bolus_cut_off_delay_time: float | None = None,
    labeling_efficiency: float | None = None,
    t1_blood: float = T1_BLOOD_3T,
    partition_coefficient: float = PARTITION_COEFFICIENT,
    mask: Any = None,
    max_iterations: int = 100,
    tolerance: float = 1e-10,
) -> xr.Dataset:
    """CBF (ml/100 g/min) of an ASL series, and ATT (s) when it has several PLDs (lazy).

    ``context`` is the ``volume_type`` of each volume (``mriflow.load_asl_context``; default:
    the ``volume_type`` coordinate ``open_image(..., modality="asl")`` sets). Acquisition
    parameters default to ``attrs["acquisition"]`` (and per-volume coordinates); explicit
    arguments win. Returns ``cbf``, ``att`` (NaN for one PLD), ``residual`` (RMS of ΔM/M0
    against the model) and ``converged`` (1/0); outside ``mask`` every map is 0.
    """
    label = image_label(asl)
    dim = series_dim(asl, "volume", label)
    n = asl.sizes[dim]
    if context is None and "volume_type" in asl.coords:
        context = asl.coords["volume_type"].values
    if context is None:
        raise PerfusionInputError(
            f"{label}: no volume_type per volume; pass context= (mriflow.load_asl_context) or "
            "open the series with modality='asl' next to its *_aslcontext.tsv"
        )
    types = [str(v).lower() for v in np.asarray(context).ravel()]
    if len(types) != n:
        raise PerfusionInputError(
            f"{label}: the context lists {len(types)} volume types for {n} volumes"
        )
    kind = str(
        acquisition_value(
            asl, labeling_type, "labeling_type", "ArterialSpinLabelingType", "labeling_type"
        )
    ).upper()
    if kind not in ("PCASL", "CASL", "PASL"):
        raise AcquisitionError(f"{label}: labeling type must be PCASL, CASL or PASL, got {kind}")
    if post_labeling_delay is None and "post_labeling_delay" in asl.coords:
        post_labeling_delay = asl.coords["post_labeling_delay"].values
    delays = _per_volume(
        acquisition_value(
            asl,
            post_labeling_delay,
            "post_labeling_delay",
            "PostLabelingDelay",
            "post_labeling_delay",
        ),
        n,
        "PostLabelingDelay",
        label,
    )
    if kind == "PASL":
        if bolus_cut_off_delay_time is None:
            technique = (asl.attrs.get("acquisition") or {}).get("bolus_cut_off_technique")
            if technique and technique["value"] == "QUIPSS":
                raise AcquisitionError(
                    f"{label}: BolusCutOffTechnique QUIPSS is not supported; the white-paper "
                    "PASL formula needs QUIPSS II or Q2TIPS"
                )
        cut_off = acquisition_value(
            asl,
            bolus_cut_off_delay_time,
            "bolus_cut_off_delay_time",
            "BolusCutOffDelayTime",
            "bolus_cut_off_delay_time",
        )
        durations = np.full(n, float(np.atleast_1d(cut_off)[0]))
    else:
        if labeling_duration is None and "labeling_duration" in asl.coords:
            labeling_duration = asl.coords["labeling_duration"].values
        durations = _per_volume(
            acquisition_value(
                asl, labeling_duration, "labeling_duration", "LabelingDuration", "labeling_duration"
            ),
            n,
            "LabelingDuration",
            label,
        )
    efficiency = float(
        acquisition_value(
            asl,
            labeling_efficiency,
            "labeling_efficiency",
            "LabelingEfficiency",
            "labeling_efficiency",
        )
        if labeling_efficiency is not None
        or (asl.attrs.get("acquisition") or {}).get("labeling_efficiency")
        else {"PCASL": 0.85, "CASL": 0.68, "PASL": 0.98}[kind]
    )
    scale_entry = (asl.attrs.get("acquisition") or {}).get("m0_scale")
    m0_scale = float(scale_entry["value"]) if scale_entry else 1.0

    # Pair controls and labels per delay, in order.
    keys = sorted({round(float(d), 6) for d, t in zip(delays, types, strict=True) if t != "m0scan"})
    weights = np.zeros((len(keys) + 1, n))
    for row, key in enumerate(keys):
        at = [v for v in range(n) if round(float(delays[v]), 6) == key]
        controls = [v for v in at if types[v] == "control"]
        labels = [v for v in at if types[v] == "label"]
        differences = [v for v in at if types[v] == "deltam"]
        if len(controls) != len(labels):
            raise PerfusionInputError(
                f"{label}: {len(controls)} control and {len(labels)} label volume(s) at PLD "
                f"{key} s; the aslcontext must pair every control with a label"
            )
        n_pairs = len(controls) + len(differences)
        if n_pairs == 0:
            raise PerfusionInputError(f"{label}: no control/label pair or deltam volume at {key} s")
        for c, lab in zip(controls, labels, strict=True):
            weights[row, c] += 1.0 / n_pairs
            weights[row, lab] -= 1.0 / n_pairs
        for v in differences:
            weights[row, v] += 1.0 / n_pairs
    duration_of = [float(durations[[round(float(d), 6) for d in delays].index(k)]) for k in keys]

    image = asl
    m0_value = 0.0
    m0_types = [v for v in range(n) if types[v] == "m0scan"]
    if m0 is None:
        m0_type = (asl.attrs.get("acquisition") or {}).get("m0_type", {}).get("value")
        if m0_types and m0_type in (None, "Included"):
            weights[-1, m0_types] = 1.0 / len(m0_types)
            m0_mode = 0
        elif m0_type == "Estimate":
            m0_value = float(acquisition_value(asl, None, "m0_estimate", "M0Estimate", "m0"))
            m0_mode = 2
        else:
            raise PerfusionInputError(
                f"{label}: no M0: M0Type is {m0_type or 'not given'}; pass m0= (an image, e.g. "
                "from mriflow.load_bids_with_m0, or one number)"
            )
    elif isinstance(m0, xr.DataArray):
        image = _with_m0_volume(asl, m0, dim, label)
        m0_mode = 1
    else:
        m0_value = float(m0)
        m0_mode = 2
    if m0_mode == 2 and not m0_value * m0_scale > 0:
        raise PerfusionInputError(f"{label}: M0 must be positive, got {m0_value * m0_scale}")
    xdata = np.ascontiguousarray(np.stack([np.asarray(keys, dtype=np.float64), duration_of]))
    aux = np.array(
        [
            float(t1_blood),
            2.0 * efficiency / float(partition_coefficient),
            1.0 if kind == "PASL" else 0.0,
            m0_scale,
        ]
    )
    packed = map_voxels(
        asl_kernel,
        image,
        core_dim=dim,
        n_params=4,
        constants=(
            weights,
            m0_mode,
            m0_value,
            xdata,
            aux,
            int(max_iterations),
            float(tolerance),
        ),
        mask=mask,
        label=label,
    )
    attrs = output_attrs(
        asl,
        model="asl",
        labeling_type=kind,
        labeling_efficiency=efficiency,
        t1_blood=float(t1_blood),
        post_labeling_delays=list(keys),
        unit_cbf="ml/100g/min",
    )
    layout = [
        ("cbf", 0, (), ()),
        ("att", 1, (), ()),
        ("residual", 2, (), ()),
        ("converged", 3, (), ()),
    ]
    return split_params(packed, layout, attrs)


def _with_m0_volume(asl: xr.DataArray, m0: xr.DataArray, dim: str, label: str) -> xr.DataArray:
    """``asl`` with the (time-averaged) M0 image appended as one more volume on ``dim``."""
    spatial = spatial_dims(asl)
    extra = [d for d in m0.dims if d not in spatial]
    if extra:
        m0 = m0.mean(dim=extra)
    if sorted(map(str, m0.dims)) != sorted(spatial):
        raise PerfusionInputError(f"{label}: M0 dims {m0.dims} do not match the ASL grid")
    m0 = m0.transpose(*spatial)
    if m0.shape != tuple(asl.sizes[d] for d in spatial):
        raise PerfusionInputError(
            f"{label}: M0 shape {m0.shape} does not match the ASL grid "
            f"{tuple(asl.sizes[d] for d in spatial)}"
        )
    if (
        "affine" in m0.attrs
        and "affine" in asl.attrs
        and not np.allclose(m0.mri.affine, asl.mri.affine, rtol=0, atol=1e-4)
    ):
        raise PerfusionInputError(f"{label}: M0 affine does not match the ASL affine")
    series = asl.drop_vars([c for c in asl.coords if c not in spatial])
    volume = xr.DataArray(
        m0.data.astype(np.float64)[..., None],
        dims=(*spatial, dim),
        coords={d: series.coords[d] for d in spatial if d in series.coords},
    )
    combined = xr.concat([series.transpose(*spatial, dim).astype(np.float64), volume], dim=dim)
    combined.attrs = dict(asl.attrs)
    return combined
