"""Seeds, saving and loading tractograms, and the typed errors for bad tracking input."""

from __future__ import annotations

import warnings

import nibabel as nib
import numpy as np
import pytest
import xarray as xr
from track_phantom import GFA_THRESHOLD, bundle_seeds, fitted

import mriflow
import mriflow.track as mt
from mriflow.errors import (
    MissingFileError,
    MriflowError,
    TrackingInputError,
    TrackingWarning,
    TractogramFormatError,
)


@pytest.fixture(scope="module")
def tractogram() -> mt.Tractogram:
    phantom, fit, _, _ = fitted()
    seeds, _ = bundle_seeds(phantom, density=1)
    stop = mt.ThresholdStopping(fit.gfa, GFA_THRESHOLD)
    return mt.track(fit, stop, seeds[::3], method="probabilistic", rng=5, step_size=0.5)


def test_seeds_from_mask_match_dipy():
    from dipy.tracking.utils import seeds_from_mask

    phantom, _, _, _ = fitted()
    mask = mriflow.from_array(phantom.masks[2].astype(np.uint8), phantom.affine)
    ours = mt.seeds_from_mask(mask, density=2)
    theirs = seeds_from_mask(phantom.masks[2], phantom.affine, density=2)
    assert len(ours) == 8 * phantom.masks[2].sum()
    np.testing.assert_allclose(
        np.unique(ours.round(6), axis=0), np.unique(theirs.round(6), axis=0), atol=1e-6
    )


def test_random_seeds_are_reproducible_and_inside():
    phantom, _, _, _ = fitted()
    mask = mriflow.from_array(phantom.masks[0].astype(np.uint8), phantom.affine)
    first = mt.random_seeds(mask, n=500, rng=3)
    np.testing.assert_array_equal(first, mt.random_seeds(mask, n=500, rng=3))
    assert not np.array_equal(first, mt.random_seeds(mask, n=500, rng=4))
    voxels = np.rint(mask.mri.world_to_voxel(first)).astype(int)
    assert phantom.masks[0][tuple(voxels.T)].all()


@pytest.mark.parametrize("suffix", [".trk", ".trx"])
def test_save_load_round_trip_keeps_everything(tractogram, tmp_path, suffix):
    path = tractogram.save(tmp_path / f"prob{suffix}")
    assert path.exists()
    assert not list(tmp_path.glob("*.partial*"))
    loaded = mt.load(path)
    np.testing.assert_allclose(loaded.positions, tractogram.positions, atol=1e-4)
    np.testing.assert_array_equal(loaded.offsets, tractogram.offsets)
    np.testing.assert_array_equal(loaded.seed_ids, tractogram.seed_ids)
    np.testing.assert_array_equal(loaded.stop_reasons, tractogram.stop_reasons)
    np.testing.assert_allclose(loaded.affine, tractogram.affine, atol=1e-5)
    assert loaded.dimensions == tractogram.dimensions


def test_trk_and_tck_read_by_nibabel_in_world_space(tractogram, tmp_path):
    trk = nib.streamlines.load(str(tractogram.save(tmp_path / "det.trk")))
    np.testing.assert_allclose(
        trk.header[nib.streamlines.Field.VOXEL_TO_RASMM], tractogram.affine, atol=1e-5
    )
    np.testing.assert_allclose(trk.streamlines[3], tractogram[3], atol=1e-4)
    tck = nib.streamlines.load(str(tractogram.save(tmp_path / "det.tck")))
    assert len(tck.streamlines) == len(tractogram)
    np.testing.assert_allclose(tck.streamlines[-1], tractogram[-1], atol=1e-4)
    loaded = mt.load(tmp_path / "det.tck", reference=tractogram)
    np.testing.assert_allclose(loaded.positions, tractogram.positions, atol=1e-4)
    assert (loaded.seed_ids == -1).all()


def test_trx_read_by_trx_python(tractogram, tmp_path):
    from trx.trx_file_memmap import load

    trx = load(str(tractogram.save(tmp_path / "prob.trx")))
    try:
        np.testing.assert_allclose(trx.header["VOXEL_TO_RASMM"], tractogram.affine, atol=1e-5)
        assert len(trx.streamlines) == len(tractogram)
        np.testing.assert_allclose(trx.streamlines[0], tractogram[0], atol=1e-4)
    finally:
        trx.close()


def test_file_errors(tractogram, tmp_path):
    with pytest.raises(TractogramFormatError, match=r"out\.vtk"):
        tractogram.save(tmp_path / "out.vtk")
    with pytest.raises(MissingFileError, match=r"missing\.trk"):
        mt.load(tmp_path / "missing.trk")
    bad = tmp_path / "bad.trk"
    bad.write_bytes(b"not a trackvis file at all" * 20)
    with pytest.raises(TractogramFormatError, match=r"bad\.trk"):
        mt.load(bad)


def _inputs():
    phantom, fit, _, _ = fitted()
    seeds, _ = bundle_seeds(phantom, density=1)
    return phantom, fit, seeds, mt.ThresholdStopping(fit.gfa, GFA_THRESHOLD)


def test_seeds_outside_are_dropped_with_a_warning_or_refused():
    _, fit, seeds, stop = _inputs()
    far = seeds[:10] + 1000.0
    with pytest.warns(TrackingWarning, match="dropped 10 of"):
        result = mt.track(fit.peak_dirs, stop, np.concatenate([seeds, far]))
    assert result.seed_ids.max() < len(seeds)
    with pytest.raises(TrackingInputError, match=r"^seeds: all 10 seeds are outside"):
        mt.track(fit.peak_dirs, stop, far)
    with pytest.raises(TrackingInputError, match=r"^seeds:"):
        mt.track(fit.peak_dirs, stop, seeds[:, :2])


def test_grid_mismatch_between_field_and_stopping_map():
    _, fit, seeds, _ = _inputs()
    smaller = mt.ThresholdStopping(fit.gfa.isel(i=slice(1, None)), GFA_THRESHOLD)
    with pytest.raises(TrackingInputError, match=r"^stopping: .*grid"):
        mt.track(fit.peak_dirs, smaller, seeds)
    shifted = fit.gfa.copy()
    moved = shifted.attrs["affine"].copy()
    moved[0, 3] += 3.0
    shifted.attrs["affine"] = moved
    with pytest.raises(TrackingInputError, match=r"^stopping: .*affine"):
        mt.track(fit.peak_dirs, mt.BinaryStopping(shifted > 0.2), seeds)


def test_bad_numbers_and_methods():
    _, fit, seeds, stop = _inputs()
    for step in (0.0, -1.0, float("nan")):
        with pytest.raises(TrackingInputError, match=r"^step_size"):
            mt.track(fit.peak_dirs, stop, seeds, step_size=step)
    with pytest.warns(TrackingWarning, match=r"^step_size: 2.1 mm is larger"):
        mt.track(fit.peak_dirs, stop, seeds[:20], step_size=2.1)
    with pytest.raises(TrackingInputError, match=r"^max_angle"):
        mt.track(fit.peak_dirs, stop, seeds, max_angle=0)
    for weight in (-0.1, 1.5, float("nan")):
        with pytest.raises(TrackingInputError, match=r"^min_total_weight: must be in \[0, 1\]"):
            mt.track(fit.peak_dirs, stop, seeds, min_total_weight=weight)
    with pytest.raises(TrackingInputError, match=r"^method"):
        mt.track(fit, stop, seeds, method="magic")
    with pytest.raises(TrackingInputError, match=r"^fields: probabilistic .* SH"):
        mt.track(fit.peak_dirs, stop, seeds, method="probabilistic")
    with pytest.raises(TrackingInputError, match=r"^fields: .*shm_coeff"):
        mt.track(fit[["peak_dirs", "gfa"]], stop, seeds, method="probabilistic")
    with pytest.raises(TrackingInputError, match=r"^direction_getter: unknown"):
        mt.track(fit, stop, seeds, direction_getter="nope")
    with pytest.raises(TrackingInputError, match=r"^stopping:"):
        mt.track(fit, fit.gfa, seeds)
    with pytest.raises(TrackingInputError, match=r"^sphere:"):
        mt.track(fit.shm_coeff, stop, seeds, sphere="round")


def test_sh_coefficient_count_must_match_an_order():
    _, fit, seeds, stop = _inputs()
    odd = fit.shm_coeff.isel(sh=slice(0, 40))
    with pytest.raises(TrackingInputError, match=r"^shm_coeff: 40 SH coefficients"):
        mt.track(odd, stop, seeds)
    declared = fit.shm_coeff.copy()
    declared.attrs["sh_order"] = 6
    with pytest.raises(TrackingInputError, match=r"^shm_coeff: attrs say SH order 6"):
        mt.track(declared, stop, seeds)
    basis = fit.shm_coeff.copy()
    basis.attrs["sh_basis"] = "mrtrix9"
    with pytest.raises(TrackingInputError, match=r"^shm_coeff: sh_basis 'mrtrix9'"):
        mt.track(basis, stop, seeds)


def test_errors_are_mriflow_errors():
    assert issubclass(TrackingInputError, MriflowError)
    assert issubclass(TractogramFormatError, MriflowError)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(MriflowError):
            mt.seeds_from_mask(xr.DataArray(np.ones((2, 2, 2))), density=2)
