"""Perfusion and IVIM fits: recovery of known parameters from simulated real files, bad input.

Each model is forward-simulated (numpy twins in ``mriflow.fit.perfusion_phantoms``) on a
grid of realistic parameters, noise is added at SNR 20 and 50, the series is written as a
NIfTI with BIDS sidecars and read back through ``open_image(..., modality=...)``, and the
fitted maps must recover the truth within stated bounds. Each test prints its bias/spread
table (``pytest -s``).
"""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

import mriflow
from mriflow.errors import AcquisitionError, AifError, InvalidSignalWarning, PerfusionInputError
from mriflow.fit import perfusion_phantoms as phantoms
from mriflow.fit._lm import exponential_convolution

AFFINE = np.diag([2.0, 2.0, 3.0, 1.0])


def write_series(path: Path, data: np.ndarray, sidecar: dict | None = None) -> Path:
    """Write voxels x samples as a (n, m, 1, samples) float32 NIfTI with its JSON sidecar."""
    n_voxels, n_samples = data.shape
    side = int(np.sqrt(n_voxels))
    while n_voxels % side:
        side -= 1
    volume = data.reshape(side, n_voxels // side, 1, n_samples).astype(np.float32)
    nib.save(nib.Nifti1Image(volume, AFFINE), path)
    if sidecar is not None:
        path.with_name(path.name.replace(".nii.gz", ".json")).write_text(json.dumps(sidecar))
    return path


def flat(image) -> np.ndarray:
    return np.asarray(image.values).reshape(-1)


def print_table(title: str, rows: list[dict]) -> None:
    print(f"\n{title}")
    print(f"{'parameter':>10} {'SNR':>4} {'voxels':>6} {'bias':>8} {'spread':>8} {'|err|':>8}")
    for r in rows:
        print(
            f"{r['parameter']:>10} {r['snr']:>4} {r['voxels']:>6} {r['bias']:>8.4f} "
            f"{r['spread']:>8.4f} {r['median_abs']:>8.4f}"
        )


# --- DCE --------------------------------------------------------------------------------------

TIMES = np.arange(60) * 5.0
DCE_SIDECAR = {"RepetitionTime": 5.0, "RepetitionTimeExcitation": 0.005, "FlipAngle": 15}


def dce_grid():
    ktrans, ve, vp = np.meshgrid(
        [0.05, 0.1, 0.2, 0.35, 0.5], [0.1, 0.2, 0.35, 0.5], [0.01, 0.05, 0.1], indexing="ij"
    )
    return np.repeat(ktrans.ravel(), 4), np.repeat(ve.ravel(), 4), np.repeat(vp.ravel(), 4)


def test_exponential_convolution_matches_fine_grid_twin():
    aif = mriflow.fit.population_aif("parker", TIMES, delay=30).values / 0.55
    out = np.empty(TIMES.size)
    for kep in (0.05, 0.5, 3.0):
        exponential_convolution(TIMES / 60, aif, kep, out)
        twin = phantoms.tofts_concentration(TIMES, aif, np.array([kep]), np.array([1.0]), [0.0])
        assert np.allclose(kep * out, twin[0], rtol=2e-3, atol=1e-4 * aif.max())


def test_parker_aif_matches_published_shape():
    minutes = np.arange(0, 6, 1 / 600)
    curve = mriflow.fit.population_aif("parker", minutes * 60).values
    assert abs(minutes[np.argmax(curve)] - 0.17) < 0.01  # first-pass peak (Parker 2006)
    assert 5.5 < curve.max() < 6.5  # mM, blood
    for name in ("georgiou", "fritz_hansen"):
        other = mriflow.fit.population_aif(name, TIMES)
        assert other.dims == ("t",)
        assert np.all(other.values >= 0)
        assert other.values.max() > 1


@pytest.mark.parametrize("snr", [50, 20])
def test_dce_chain_recovers_extended_tofts(tmp_path, snr):
    """VFA T1 and DCE signal written as NIfTI + sidecars, through concentration, to Ktrans."""
    rng = np.random.default_rng(snr)
    ktrans, ve, vp = dce_grid()
    n = ktrans.size
    t10 = rng.uniform(0.8, 1.6, n)
    angles = [2, 5, 10, 15]
    vfa = np.stack(
        [phantoms.spgr_signal(np.zeros((n, 1)), t10, 5000.0, a, 0.005)[:, 0] for a in angles], 1
    )
    vfa += rng.normal(size=vfa.shape) * vfa.max() / 200  # T1 map at SNR 200 (averaged)
    vfa_path = write_series(
        tmp_path / "vfa.nii.gz", vfa, {"RepetitionTime": 1.0, **DCE_SIDECAR, "FlipAngle": angles}
    )
    aif = mriflow.fit.population_aif("parker", TIMES, delay=30)
    conc = phantoms.tofts_concentration(TIMES, aif.values / (1 - 0.45), ktrans, ve, vp)
    signal = phantoms.spgr_signal(conc, t10, 5000.0, 15, 0.005)
    peak_enhancement = signal.max(1, keepdims=True) - signal[:, :5].mean(1, keepdims=True)
    signal += rng.normal(size=signal.shape) * peak_enhancement / snr
    dce_path = write_series(tmp_path / "dce.nii.gz", signal, DCE_SIDECAR)

    vfa_image = mriflow.open_image(vfa_path, modality="dce")
    t1 = mriflow.fit.t1_vfa(vfa_image)  # flip angles and TR from the sidecar
    dce_image = mriflow.open_image(dce_path, modality="dce")
    concentration = mriflow.fit.dce_concentration(dce_image, t1=t1.t1, relaxivity=4.5, baseline=5)
    fitted = mriflow.fit.dce(concentration, aif=aif, model="extended_tofts").compute()
    rows = [
        phantoms.recovery("T1", flat(t1.t1), t10, 200),
        phantoms.recovery("ktrans", flat(fitted.ktrans), ktrans, snr),
        phantoms.recovery("ve", flat(fitted.ve), ve, snr),
        phantoms.recovery("vp", flat(fitted.vp), vp, snr),
    ]
    print_table(f"extended Tofts via SPGR, SNR {snr}", rows)
    by_name = {r["parameter"]: r for r in rows}
    assert by_name["T1"]["median_abs"] < 0.02
    limit = 0.05 if snr == 50 else 0.12
    assert by_name["ktrans"]["median_abs"] < limit
    assert abs(by_name["ktrans"]["bias"]) < limit / 2
    assert by_name["ve"]["median_abs"] < limit
    assert by_name["vp"]["median_abs"] < 3 * limit
    assert np.mean(flat(fitted.converged)) > 0.95
    assert np.all(flat(fitted.residual) < 0.5 * peak_enhancement.max())
    assert fitted.ktrans.attrs["model"] == "extended_tofts"


def test_tofts_and_patlak_recover_their_parameters():
    rng = np.random.default_rng(5)
    aif = mriflow.fit.population_aif("georgiou", TIMES, delay=20)
    plasma = aif.values / (1 - 0.45)
    ktrans, ve, _ = dce_grid()
    conc = phantoms.tofts_concentration(TIMES, plasma, ktrans, ve, np.zeros_like(ve))
    conc += rng.normal(size=conc.shape) * conc.max(1, keepdims=True) / 50
    image = mriflow.from_array(conc.reshape(15, 16, 1, 60), AFFINE)
    image = image.assign_coords(t=TIMES) if "t" in image.dims else image
    fitted = mriflow.fit.dce(image, aif=aif, model="tofts").compute()
    rows = [
        phantoms.recovery("ktrans", flat(fitted.ktrans), ktrans, 50),
        phantoms.recovery("ve", flat(fitted.ve), ve, 50),
    ]
    # Patlak: irreversible uptake (kep = 0) plus a plasma term.
    patlak_truth = rng.uniform(0.01, 0.2, 100), rng.uniform(0.01, 0.1, 100)
    minutes = TIMES / 60
    integral = np.concatenate([[0], np.cumsum(np.diff(minutes) * (plasma[1:] + plasma[:-1]) / 2)])
    curves = patlak_truth[0][:, None] * integral + patlak_truth[1][:, None] * plasma
    curves += rng.normal(size=curves.shape) * curves.max(1, keepdims=True) / 50
    patlak_image = mriflow.from_array(curves.reshape(10, 10, 1, 60), AFFINE)
    patlak = mriflow.fit.dce(patlak_image.assign_coords(t=TIMES), aif=aif, model="patlak").compute()
    rows += [
        phantoms.recovery("patlak Kt", flat(patlak.ktrans), patlak_truth[0], 50),
        phantoms.recovery("patlak vp", flat(patlak.vp), patlak_truth[1], 50),
    ]
    print_table("Tofts (georgiou AIF) and Patlak, SNR 50", rows)
    assert all(abs(r["bias"]) < 0.03 for r in rows)
    assert rows[0]["median_abs"] < 0.05
    assert rows[2]["median_abs"] < 0.05


def test_aif_from_mask_feeds_the_fit():
    aif = mriflow.fit.population_aif("fritz_hansen", TIMES, delay=30)
    curves = np.concatenate(
        [
            np.tile(aif.values, (8, 1)),
            phantoms.tofts_concentration(
                TIMES, aif.values / 0.55, np.full(8, 0.2), np.full(8, 0.3), np.full(8, 0.05)
            ),
        ]
    )
    image = mriflow.from_array(curves.reshape(4, 4, 1, 60), AFFINE)
    image = image.assign_coords(t=TIMES)
    vessel = np.zeros((4, 4, 1), bool)
    vessel[:2] = True
    measured = mriflow.fit.aif_from_mask(image, vessel)
    assert np.allclose(measured.values, aif.values)
    fitted = mriflow.fit.dce(image, aif=measured, mask=~vessel).compute()
    assert np.allclose(fitted.ktrans.values[2:], 0.2, rtol=0.01)
    assert np.all(fitted.ktrans.values[:2] == 0)  # outside the mask


# --- IVIM -------------------------------------------------------------------------------------

BVALS = np.array([0, 10, 20, 50, 100, 200, 400, 600, 800, 1000.0])


@pytest.mark.parametrize("snr", [50, 20])
def test_ivim_recovers_parameters_from_bval_file(tmp_path, snr):
    rng = np.random.default_rng(10 + snr)
    d, f, d_star = np.meshgrid(
        [0.0007, 0.001, 0.0015], [0.08, 0.15, 0.25], [0.015, 0.03, 0.06], indexing="ij"
    )
    d, f, d_star = (np.repeat(x.ravel(), 20) for x in (d, f, d_star))
    signal = phantoms.ivim_signal(BVALS, 1000.0, f, d, d_star)
    signal = np.abs(signal + rng.normal(size=signal.shape) * 1000.0 / snr)
    path = write_series(tmp_path / "ivim.nii.gz", signal)
    np.savetxt(tmp_path / "ivim.bval", BVALS[None], fmt="%g")
    np.savetxt(tmp_path / "ivim.bvec", np.tile([[1.0], [0.0], [0.0]], (1, BVALS.size)), fmt="%g")
    image = mriflow.open_image(path, modality="ivim")
    rows = []
    for method in ("segmented", "full"):
        fitted = mriflow.fit.ivim(image, method=method, b_threshold=200).compute()
        for name, truth in (("d", d), ("f", f), ("d_star", d_star)):
            row = phantoms.recovery(name, flat(fitted[name]), truth, snr)
            row["parameter"] = f"{method[:3]} {name}"
            rows.append(row)
    print_table(f"IVIM, SNR {snr}", rows)
    by_name = {r["parameter"]: r for r in rows}
    scale = 1.0 if snr == 50 else 2.5
    for method in ("seg", "ful"):
        assert by_name[f"{method} d"]["median_abs"] < 0.07 * scale
        assert abs(by_name[f"{method} d"]["bias"]) < 0.03 * scale
        assert by_name[f"{method} f"]["median_abs"] < 0.25 * scale
        assert by_name[f"{method} d_star"]["median_abs"] < 0.45 * scale


# --- ASL --------------------------------------------------------------------------------------


def asl_tree(root: Path, types: list[str], data: np.ndarray, sidecar: dict) -> Path:
    perf = root / "sub-01" / "perf"
    perf.mkdir(parents=True)
    (root / "dataset_description.json").write_text('{"Name": "t", "BIDSVersion": "1.9.0"}')
    write_series(perf / "sub-01_asl.nii.gz", data, sidecar)
    (perf / "sub-01_aslcontext.tsv").write_text("volume_type\n" + "\n".join(types) + "\n")
    return root


def test_asl_single_pld_pcasl_white_paper(tmp_path):
    rng = np.random.default_rng(20)
    cbf = np.repeat(np.linspace(20, 90, 8), 25)
    m0 = 1500.0
    difference = phantoms.asl_difference([1.8], 1.8, cbf, np.full(cbf.size, 1.2), m0)[:, 0]
    control = np.full(cbf.size, 1000.0)
    volumes, types = [], []
    for _ in range(10):
        volumes += [control, control - difference]
        types += ["control", "label"]
    volumes.append(np.full(cbf.size, m0))
    types.append("m0scan")
    data = np.stack(volumes, 1) + rng.normal(
        size=(cbf.size, 21)
    ) * difference.mean() / 20 * np.sqrt(10)
    sidecar = {
        "ArterialSpinLabelingType": "PCASL",
        "PostLabelingDelay": 1.8,
        "LabelingDuration": 1.8,
        "BackgroundSuppression": False,
        "M0Type": "Included",
        "RepetitionTimePreparation": 4.0,
    }
    root = asl_tree(tmp_path / "bids", types, data, sidecar)
    asl = mriflow.load_bids(root, "01", modality="asl")
    context = mriflow.load_asl_context(root, "01")
    fitted = mriflow.fit.asl_cbf(asl, context=context).compute()
    row = phantoms.recovery("cbf", flat(fitted.cbf), cbf, 20)
    print_table("ASL PCASL single PLD (M0 included), mean deltaM SNR 14", [row])
    assert abs(row["bias"]) < 0.03
    assert row["median_abs"] < 0.06
    # The formula, in numpy, on the noise-free difference.
    expected = (
        6000
        * 0.9
        * difference
        * np.exp(1.8 / 1.65)
        / (2 * 0.85 * 1.65 * m0 * (1 - np.exp(-1.8 / 1.65)))
    )
    assert np.allclose(expected, cbf)
    # M0 from a separate image wins over the included volumes; non-positive M0 is an error.
    separate = mriflow.from_array(np.full((asl.sizes["i"], asl.sizes["j"], 1), 2 * m0), AFFINE)
    halved = mriflow.fit.asl_cbf(asl, m0=separate, context=context).compute()
    assert np.allclose(flat(halved.cbf), flat(fitted.cbf) / 2, rtol=0.01)
    with pytest.raises(PerfusionInputError, match="M0 must be positive"):
        mriflow.fit.asl_cbf(asl, m0=0.0, context=context)


def test_asl_pasl_quipss2_and_multi_pld(tmp_path):
    rng = np.random.default_rng(21)
    n = 200
    cbf = rng.uniform(30, 80, n)
    att = rng.uniform(0.6, 1.8, n)
    m0 = 1000.0
    # PASL QUIPSS II: TI 1.8 s, TI1 0.8 s
    difference = phantoms.asl_difference(
        [1.8], 0.8, cbf, np.full(n, 0.7), m0, pasl=True, efficiency=0.98
    )[:, 0]
    data = np.stack([np.full(n, 900.0), 900.0 - difference], 1)
    image = mriflow.from_array(data.reshape(10, 20, 1, 2), AFFINE).rename({"t": "volume"})
    pasl = mriflow.fit.asl_cbf(
        image,
        m0=m0,
        context=["control", "label"],
        labeling_type="PASL",
        post_labeling_delay=1.8,
        bolus_cut_off_delay_time=0.8,
    ).compute()
    assert np.allclose(flat(pasl.cbf), cbf, rtol=1e-6)
    # Multi-PLD PCASL: CBF and ATT.
    delays = np.array([0.5, 1.0, 1.5, 2.0, 2.5, 3.0])
    difference = phantoms.asl_difference(delays, 1.8, cbf, att, m0)
    volumes, types, plds = [], [], []
    for k, delay in enumerate(delays):
        for _ in range(2):
            volumes += [np.full(n, 900.0), 900.0 - difference[:, k]]
            types += ["control", "label"]
            plds += [delay, delay]
    data = np.stack(volumes, 1)
    data += rng.normal(size=data.shape) * np.median(difference.max(1)) / 20
    image = mriflow.from_array(data.reshape(10, 20, 1, -1), AFFINE).rename({"t": "volume"})
    fitted = mriflow.fit.asl_cbf(
        image,
        m0=m0,
        context=types,
        labeling_type="PCASL",
        post_labeling_delay=plds,
        labeling_duration=1.8,
    ).compute()
    rows = [
        phantoms.recovery("cbf", flat(fitted.cbf), cbf, 20),
        phantoms.recovery("att", flat(fitted.att), att, 20),
    ]
    print_table("ASL multi-PLD PCASL, deltaM SNR 20 at its peak, per PLD", rows)
    assert all(abs(r["bias"]) < 0.03 and r["median_abs"] < 0.06 for r in rows)


def test_asl_bad_pairing_and_missing_fields(tmp_path):
    image = mriflow.from_array(np.ones((2, 2, 1, 3)), AFFINE).rename({"t": "volume"})
    with pytest.raises(PerfusionInputError, match="1 control and 2 label"):
        mriflow.fit.asl_cbf(
            image,
            m0=1.0,
            context=["control", "label", "label"],
            labeling_type="PCASL",
            post_labeling_delay=1.8,
            labeling_duration=1.8,
        )
    with pytest.raises(AcquisitionError, match="LabelingDuration"):
        mriflow.fit.asl_cbf(
            image,
            m0=1.0,
            context=["control", "label", "m0scan"],
            labeling_type="PCASL",
            post_labeling_delay=1.8,
        )


# --- DSC --------------------------------------------------------------------------------------

DSC_TIMES = np.arange(60) * 1.0


def arterial(times):
    # Arterial deltaR2* peak 150 1/s at TE 30 ms: tissue signal drops 10-35%.
    return phantoms.gamma_variate(times, 10.0, 150.0)


@pytest.mark.parametrize("snr", [50, 20])
def test_dsc_recovers_rcbv_cbf_mtt_tmax(tmp_path, snr):
    rng = np.random.default_rng(30 + snr)
    flow, mtt, delay = np.meshgrid(
        [0.008, 0.012, 0.016, 0.02], [3.0, 4.5, 6.0], [0.0, 1.0, 2.0, 3.0], indexing="ij"
    )
    flow, mtt, delay = (np.repeat(x.ravel(), 8) for x in (flow, mtt, delay))
    tissue = phantoms.dsc_tissue(DSC_TIMES, arterial, flow, mtt, delay)
    signal = 1000.0 * np.exp(-0.03 * tissue) + rng.normal(size=tissue.shape) * 1000.0 / snr
    path = write_series(tmp_path / "dsc.nii.gz", signal, {"RepetitionTime": 1.0, "EchoTime": 0.03})
    image = mriflow.open_image(path, modality="dsc")
    aif_signal = 1000.0 * np.exp(-0.03 * arterial(DSC_TIMES))
    fitted = mriflow.fit.dsc(image, aif=aif_signal, baseline=8).compute()
    rows = [
        phantoms.recovery("rcbv", flat(fitted.rcbv), flow * mtt, snr),
        phantoms.recovery("cbf", flat(fitted.cbf), 6000 * flow, snr),
        phantoms.recovery("mtt", flat(fitted.mtt), mtt, snr),
    ]
    tmax_error = flat(fitted.tmax) - delay
    print_table(f"DSC oSVD, SNR {snr} (tmax error median {np.median(tmax_error)} s)", rows)
    # rCBV integrates the whole noisy curve: unbiased, its spread is noise-limited.
    assert abs(rows[0]["bias"]) < 0.05
    assert rows[0]["median_abs"] < (0.2 if snr == 50 else 0.45)
    # oSVD underestimates peak flow (regularised residue) and so overestimates MTT; the
    # bounds say by how much.
    assert -0.35 < rows[1]["bias"] < 0.0
    assert rows[1]["spread"] < (0.3 if snr == 50 else 0.4)
    assert 0.0 < rows[2]["bias"] < 0.4
    assert np.median(np.abs(tmax_error)) <= 2.0


def test_dsc_leakage_correction_removes_k2():
    rng = np.random.default_rng(40)
    n = 64
    flow, mtt = np.full(n, 0.015), np.full(n, 4.0)
    normal = phantoms.dsc_tissue(DSC_TIMES, arterial, flow, mtt, np.zeros(n))
    step = DSC_TIMES[1] - DSC_TIMES[0]
    integral = np.concatenate([[0], np.cumsum((normal[0, 1:] + normal[0, :-1]) / 2 * step)])
    k2 = np.linspace(0.0, 0.02, n)
    leaky = normal - k2[:, None] * integral[None, :]
    signal = 1000.0 * np.exp(-0.03 * leaky) + rng.normal(size=leaky.shape) * 1000.0 / 100
    image = mriflow.from_array(signal.reshape(8, 8, 1, 60), AFFINE)
    image = image.assign_coords(t=DSC_TIMES)
    aif_signal = 1000.0 * np.exp(-0.03 * arterial(DSC_TIMES))
    reference = 1000.0 * np.exp(-0.03 * normal[0])
    plain = mriflow.fit.dsc(image, aif=aif_signal, te=0.03, baseline=8).compute()
    corrected = mriflow.fit.dsc(
        image,
        aif=aif_signal,
        te=0.03,
        baseline=8,
        leakage_correction=True,
        leakage_reference=reference,
    ).compute()
    truth = flow[0] * mtt[0]
    leaky_voxels = k2 > 0.01
    corrected_error = flat(corrected.rcbv)[leaky_voxels] / truth - 1
    plain_error = flat(plain.rcbv)[leaky_voxels] / truth - 1
    print(f"leakage: rCBV bias {np.median(plain_error):.3f} -> {np.median(corrected_error):.3f}")
    assert abs(np.median(corrected_error)) < 0.05
    assert np.median(plain_error) < -0.3
    assert np.median(np.abs(flat(corrected.k2) - k2)) < 0.005
    assert np.corrcoef(flat(corrected.k2), k2)[0, 1] > 0.6


# --- bad input --------------------------------------------------------------------------------


def test_vfa_flip_angle_count_and_missing_tr(tmp_path):
    data = np.random.default_rng(0).uniform(100, 200, (16, 3))
    path = write_series(
        tmp_path / "vfa.nii.gz", data, {"RepetitionTime": 1.0, "FlipAngle": [2, 5, 10, 15]}
    )
    image = mriflow.open_image(path)  # no modality: nothing resolved
    with pytest.raises(AcquisitionError, match="4 flip angle"):
        mriflow.fit.t1_vfa(image, flip_angles=[2, 5, 10, 15], tr=0.005)
    with pytest.raises(
        AcquisitionError,
        match=r"vfa.nii.gz: repetition_time \(RepetitionTimeExcitation\) is missing.*tr=",
    ):
        mriflow.fit.t1_vfa(image, flip_angles=[2, 5, 10])
    with pytest.raises(AcquisitionError, match="looks like milliseconds"):
        mriflow.fit.t1_vfa(image, flip_angles=[2, 5, 10], tr=5.0)


def test_aif_time_axis_must_match():
    image = mriflow.from_array(np.ones((2, 2, 1, 60)), AFFINE)
    image = image.assign_coords(t=TIMES)
    with pytest.raises(AifError, match="time axis"):
        mriflow.fit.dce(image, aif=mriflow.fit.population_aif("parker", TIMES[:50]))
    with pytest.raises(AifError, match="does not match"):
        mriflow.fit.dce(image, aif=mriflow.fit.population_aif("parker", TIMES + 2.5))
    with pytest.raises(AifError, match="unknown population AIF"):
        mriflow.fit.population_aif("weinmann", TIMES)


def test_signal_drop_to_zero_gives_nan_and_a_counted_warning():
    signal = phantoms.spgr_signal(np.zeros((4, 60)), np.full(4, 1.2), 1000.0, 15, 0.005)
    signal[1, 30:] = 0.0
    image = mriflow.from_array(signal.reshape(2, 2, 1, 60), AFFINE)
    image = image.assign_coords(t=TIMES)
    with pytest.warns(InvalidSignalWarning, match="1 voxel"):
        concentration = mriflow.fit.dce_concentration(image, t1=1.2, flip_angle=15, tr=0.005)
    values = concentration.values.reshape(4, 60)
    assert np.all(np.isnan(values[1, 30:]))
    assert np.allclose(values[1, :30], 0, atol=1e-9)
    assert np.allclose(values[[0, 2, 3]], 0, atol=1e-9)


def test_dsc_needs_echo_time(tmp_path):
    path = write_series(tmp_path / "dsc.nii.gz", np.ones((4, 60)), {"RepetitionTime": 1.0})
    image = mriflow.open_image(path)
    image = image.rename({image.dims[-1]: "t"}).assign_coords(t=DSC_TIMES)
    with pytest.raises(AcquisitionError, match=r"echo_time \(EchoTime\) is missing"):
        mriflow.fit.dsc(image, aif=np.ones(60))


@pytest.mark.parametrize("m0_type", ["Estimate", "Separate", "Absent"])
def test_asl_m0_per_m0type(tmp_path, m0_type):
    cbf = np.linspace(20, 90, 16)
    m0 = 1200.0
    difference = phantoms.asl_difference([1.8], 1.8, cbf, np.full(16, 1.0), m0)[:, 0]
    data = np.stack([np.full(16, 1000.0), 1000.0 - difference], 1)
    sidecar = {
        "ArterialSpinLabelingType": "PCASL",
        "PostLabelingDelay": 1.8,
        "LabelingDuration": 1.8,
        "BackgroundSuppression": False,
        "M0Type": m0_type,
        "RepetitionTimePreparation": 4.0,
    }
    if m0_type == "Estimate":
        sidecar["M0Estimate"] = m0
    root = asl_tree(tmp_path / "bids", ["control", "label"], data, sidecar)
    if m0_type == "Separate":
        write_series(root / "sub-01" / "perf" / "sub-01_m0scan.nii.gz", np.full((16, 1), m0), {})
    asl, m0_image = mriflow.load_bids_with_m0(root, "01")
    if m0_type == "Absent":
        with pytest.raises(PerfusionInputError, match="no M0: M0Type is Absent"):
            mriflow.fit.asl_cbf(asl, m0=m0_image)
        return
    fitted = mriflow.fit.asl_cbf(asl, m0=m0_image).compute()
    assert np.allclose(flat(fitted.cbf), cbf, rtol=1e-5)


def test_fits_on_a_local_cluster_match_threads(tmp_path):
    """Worker processes import the kernels by name; maps equal the threaded scheduler's."""
    import dask

    from mriflow.cluster import get_client

    rng = np.random.default_rng(50)
    aif = mriflow.fit.population_aif("parker", TIMES, delay=30)
    n = 64
    conc = phantoms.tofts_concentration(
        TIMES,
        aif.values / 0.55,
        rng.uniform(0.05, 0.4, n),
        rng.uniform(0.1, 0.5, n),
        np.full(n, 0.03),
    )
    conc += rng.normal(size=conc.shape) * 0.01
    dce_path = write_series(tmp_path / "conc.nii.gz", conc, DCE_SIDECAR)
    signal = phantoms.ivim_signal(
        BVALS, 1000.0, np.full(n, 0.1), np.full(n, 0.001), np.full(n, 0.03)
    )
    ivim_path = write_series(tmp_path / "ivim.nii.gz", signal + rng.normal(size=signal.shape) * 10)
    np.savetxt(tmp_path / "ivim.bval", BVALS[None], fmt="%g")
    np.savetxt(tmp_path / "ivim.bvec", np.tile([[1.0], [0.0], [0.0]], (1, BVALS.size)), fmt="%g")
    concentration = mriflow.open_image(dce_path, modality="dce").chunk({"i": 4})
    dwi = mriflow.open_image(ivim_path, modality="ivim").chunk({"i": 4})
    tofts = mriflow.fit.dce(concentration, aif=aif)
    ivim = mriflow.fit.ivim(dwi, method="full")
    with dask.config.set(scheduler="threads"):
        expected = (tofts.ktrans.values, ivim.d.values)
    with get_client(
        n_workers=2, threads_per_worker=1, memory_limit="1GiB", dashboard=False
    ) as client:
        assert client.scheduler_info()["address"].startswith("tcp://127.0.0.1")
        got = (tofts.ktrans.compute().values, ivim.d.compute().values)
        client.cluster.close()
    np.testing.assert_array_equal(got[0], expected[0])
    np.testing.assert_array_equal(got[1], expected[1])
