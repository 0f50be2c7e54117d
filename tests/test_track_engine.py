"""The tracking engine: random streams, SH basis, the pure-Python twin, determinism, geometry."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import track_naive as naive
from track_phantom import GFA_THRESHOLD, bundle_seeds, fitted

import mriflow
import mriflow.track as mt
from mriflow.errors import TrackingInputError, TrackingWarning
from mriflow.track.api import _field_arrays
from mriflow.track.directions import FIELD_KINDS
from mriflow.track.kernels import REASON_INVALID, track_seed_range
from mriflow.track.rng import new_rng_state, philox4x32, uniform
from mriflow.track.sphere import sh_basis_matrix
from mriflow.track.stopping import threshold_check


def _words(counter: tuple[int, int, int, int], key: tuple[int, int]) -> tuple[int, ...]:
    stream = counter[2] | (counter[3] << 32)
    return philox4x32(key[0] | (key[1] << 32), stream, counter[0] | (counter[1] << 32))


def test_philox_known_answers():
    # Random123's kat_vectors for philox4x32-10.
    assert _words((0, 0, 0, 0), (0, 0)) == (0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8)
    ones = 0xFFFFFFFF
    assert _words((ones,) * 4, (ones, ones)) == (0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD)
    pi = (0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344)
    assert _words(pi, (0xA4093822, 0x299F31D0)) == (0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1)


def test_uniform_stream_is_keyed_and_uniform():
    state = new_rng_state(42, 7)
    draws = np.array([uniform(state) for _ in range(20000)])
    assert state[2] == 20000
    assert draws.min() >= 0.0
    assert draws.max() < 1.0
    assert abs(draws.mean() - 0.5) < 0.01
    assert abs(draws.var() - 1 / 12) < 0.003
    again = new_rng_state(42, 7)
    assert uniform(again) == draws[0]
    assert uniform(new_rng_state(42, 8)) != draws[0]
    assert uniform(new_rng_state(43, 7)) != draws[0]


@pytest.mark.parametrize("basis", ["descoteaux07", "tournier07"])
@pytest.mark.parametrize("legacy", [True, False])
def test_sh_basis_matches_dipy(basis, legacy):
    from dipy.core.geometry import cart2sphere
    from dipy.reconst.shm import real_sh_descoteaux, real_sh_tournier

    vertices = mt.sphere("repulsion724")
    assert vertices.shape == (724, 3)
    np.testing.assert_allclose(vertices[:362], -vertices[362:])
    _, polar, azimuth = cart2sphere(*vertices.T)
    function = real_sh_descoteaux if basis == "descoteaux07" else real_sh_tournier
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        expected, _, _ = function(8, polar, azimuth, legacy=legacy)
    np.testing.assert_allclose(sh_basis_matrix(vertices, 8, basis, legacy), expected, atol=1e-12)


def _broken_peaks():
    """The fit's raw peaks with NaN in a slab beside the straight bundle (j = 6, i 10-14):
    streamlines through it end as invalid, those whose cell only touches it with weight
    0 go on."""
    raw = fitted()[1].peak_dirs.copy(deep=True)
    raw[10:15, 6] = np.nan
    return raw


def _engine_inputs(field_name: str, getter: str, n_seeds: int, broken: bool = False):
    phantom, fit, _, _ = fitted()
    stop_map = np.ascontiguousarray(fit.gfa.values, dtype=np.float64)
    field = _broken_peaks() if broken else fit[field_name]
    arrays = _field_arrays(field, stop_map, FIELD_KINDS[getter], 724)
    seeds, _ = bundle_seeds(phantom, density=1)
    voxels = mriflow.from_array(stop_map, phantom.affine).mri.world_to_voxel(seeds)
    chosen = np.random.default_rng(0).choice(len(voxels), n_seeds, replace=False)
    return phantom, arrays, np.ascontiguousarray(voxels[chosen])


@pytest.mark.parametrize(
    ("field_name", "getter", "broken", "min_total_weight"),
    [
        ("peak_dirs", "peak_following", False, 0.0),
        ("peak_dirs", "peak_following", False, 0.5),
        ("peak_dirs", "peak_following", True, 0.0),
        ("shm_coeff", "max_odf", False, 0.0),
    ],
)
def test_kernel_equals_pure_python_twin(field_name, getter, broken, min_total_weight):
    phantom, arrays, seeds = _engine_inputs(field_name, getter, 12, broken)
    if broken:  # every seed of the straight bundle, to cross the NaN slab
        seeds, labels = bundle_seeds(phantom, density=1)
        voxels = mriflow.from_array(arrays.stop_map, phantom.affine).mri.world_to_voxel(seeds)
        seeds = np.ascontiguousarray(voxels[labels == 0])
    step, angle, max_steps, min_points = 0.5, 30.0, 400, 3
    voxel_steps = step / phantom.zooms
    cos_max = math.cos(math.radians(angle))
    points, lengths, reasons = track_seed_range(
        mt.direction_getter(getter),
        threshold_check,
        arrays.field,
        arrays.basis,
        arrays.vertices,
        arrays.stop_map,
        seeds,
        np.arange(len(seeds), dtype=np.int64),
        voxel_steps,
        np.array([cos_max, 0.1, min_total_weight]),
        np.array([GFA_THRESHOLD]),
        max_steps,
        min_points,
        np.uint64(0),
        arrays.field.shape[3] + arrays.basis.shape[1] + 8,
    )
    if getter == "peak_following":
        # The twin reads the fit's raw peaks and normalises them itself.
        raw = _broken_peaks() if broken else fitted()[1].peak_dirs
        peaks = np.asarray(raw.transpose(*raw.mri.spatial_dims, "peak", "xyz"), dtype=np.float64)

        def next_direction(point, direction):
            return naive.peak_direction(peaks, point, direction, cos_max, min_total_weight)
    else:

        def next_direction(point, direction):
            return naive.odf_direction(
                arrays.field, arrays.basis.T, arrays.vertices, point, direction, cos_max, 0.1
            )

    def stop(point):
        return naive.threshold_stop(arrays.stop_map, point, GFA_THRESHOLD)

    offset = 0
    long_ones = 0
    for n, seed in enumerate(seeds):
        twin = naive.track_one(next_direction, stop, seed, voxel_steps, max_steps, min_points)
        if twin is None:
            assert lengths[n] == 0
            continue
        line, twin_reasons = twin
        assert lengths[n] == len(line)
        np.testing.assert_array_equal(points[offset : offset + len(line)], line)
        assert tuple(reasons[n]) == twin_reasons
        offset += len(line)
        long_ones += len(line) > 40
    assert offset == len(points)
    assert long_ones >= 8
    if broken:
        ended_invalid = (reasons == REASON_INVALID).any(axis=1)
        assert 0 < ended_invalid.sum() < len(seeds), ended_invalid.sum()


def _probabilistic(**kwargs):
    phantom, fit, _, _ = fitted()
    seeds, _ = bundle_seeds(phantom, density=1)
    stop = mt.ThresholdStopping(fit.gfa, GFA_THRESHOLD)
    options = {"method": "probabilistic", "step_size": 0.5, "max_angle": 30.0, "rng": 11}
    options.update(kwargs)
    return seeds, mt.track(fit, stop, seeds, **options)


def test_probabilistic_is_reproducible_and_independent_of_batching():
    seeds, first = _probabilistic(n_threads=2, batch_size=64)
    _, again = _probabilistic(n_threads=1, batch_size=1000)
    _, small = _probabilistic(n_threads=2, batch_size=7)
    for other in (again, small):
        np.testing.assert_array_equal(first.positions, other.positions)
        np.testing.assert_array_equal(first.offsets, other.offsets)
        np.testing.assert_array_equal(first.seed_ids, other.seed_ids)
        np.testing.assert_array_equal(first.stop_reasons, other.stop_reasons)
    _, other_key = _probabilistic(rng=12)
    assert len(other_key.positions) != len(first.positions) or not np.array_equal(
        other_key.positions, first.positions
    )
    # A subset of seeds, tracked alone under their global ids, gives the same streamlines.
    subset = np.arange(5, len(seeds), 9)
    _, fit, _, _ = fitted()
    alone = mt.track(
        fit,
        mt.ThresholdStopping(fit.gfa, GFA_THRESHOLD),
        seeds[subset],
        method="probabilistic",
        step_size=0.5,
        max_angle=30.0,
        rng=11,
        seed_ids=subset,
    )
    assert len(alone) > 20
    where = {int(s): n for n, s in enumerate(first.seed_ids)}
    for n, seed_id in enumerate(alone.seed_ids):
        np.testing.assert_array_equal(alone[n], first[where[int(seed_id)]])


def test_steps_are_step_size_mm_with_anisotropic_voxels():
    phantom, fit, _, _ = fitted()
    assert len(set(phantom.zooms)) == 3
    seeds, _ = bundle_seeds(phantom, density=1)
    stop = mt.ThresholdStopping(fit.gfa, GFA_THRESHOLD)
    result = mt.track(fit.shm_coeff, stop, seeds, step_size=0.4, max_angle=30.0)
    steps = np.linalg.norm(np.diff(result.positions.astype(np.float64), axis=0), axis=1)
    inner = np.ones(len(steps), bool)
    inner[result.offsets[1:-1] - 1] = False  # the gaps between streamlines
    np.testing.assert_allclose(steps[inner], 0.4, atol=1e-4)
    assert (result.n_points >= 2).all()
    # Within the max-angle cone at every step.
    line = result[int(np.argmax(result.n_points))].astype(np.float64)
    moves = np.diff(line, axis=0)
    cosines = (moves[1:] * moves[:-1]).sum(1) / (0.4 * 0.4)
    assert (cosines >= math.cos(math.radians(30.0)) - 1e-3).all()


def test_world_positions_follow_the_effective_affine_of_a_view():
    phantom, fit, _, _ = fitted()
    seeds, _ = bundle_seeds(phantom, density=1)
    stop = mt.ThresholdStopping(fit.gfa, GFA_THRESHOLD)
    full = mt.track(fit.peak_dirs, stop, seeds, step_size=0.5)
    crop = {"i": slice(1, None), "j": slice(0, -1)}
    view = fit.isel(crop)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", TrackingWarning)
        cropped = mt.track(view.peak_dirs, mt.ThresholdStopping(view.gfa, GFA_THRESHOLD), seeds)
    assert cropped.dimensions == (phantom.masks.shape[1] - 1, phantom.masks.shape[2] - 1, 6)
    np.testing.assert_allclose(cropped.affine, view.gfa.mri.affine)
    # Streamlines not reaching the cropped-away faces are the same in world space.
    same = 0
    where = {int(s): n for n, s in enumerate(full.seed_ids)}
    for n, seed_id in enumerate(cropped.seed_ids):
        if "outside" in cropped.stop_reason_names()[n]:
            continue
        theirs = full[where[int(seed_id)]]
        if len(theirs) == len(cropped[n]):
            np.testing.assert_allclose(cropped[n], theirs, atol=1e-4)
            same += 1
    assert same > 0.8 * len(cropped)


def test_max_length_and_nan_stop_reasons():
    phantom, fit, _, _ = fitted()
    seeds, labels = bundle_seeds(phantom, density=1)
    stop = mt.ThresholdStopping(fit.gfa, GFA_THRESHOLD)
    short = mt.track(fit.peak_dirs, stop, seeds, step_size=0.5, min_length=0, max_length=8.0)
    assert short.lengths().max() <= 8.0 + 1e-3
    names = short.stop_reason_names()
    assert (names == "max_length").any()
    assert not short.valid[(names == "max_length").any(axis=1)].any()
    # NaN peaks across the straight bundle: streamlines reaching them end as "invalid".
    broken = fit.peak_dirs.copy(deep=True)
    broken.values[14] = np.nan
    result = mt.track(broken, stop, seeds[labels == 0], step_size=0.5)
    assert (result.stop_reason_names() == "invalid").any(axis=1).mean() > 0.5


def test_planned_job_pickles_and_batches_concatenate_to_the_whole():
    import pickle

    phantom, fit, _, _ = fitted()
    seeds, _ = bundle_seeds(phantom, density=1)
    stop = mt.ThresholdStopping(fit.gfa, GFA_THRESHOLD)
    job = mt.plan_tracking(fit, stop, seeds, method="probabilistic", rng=21)
    job = pickle.loads(pickle.dumps(job))
    whole = job.run()
    cut = len(seeds) // 3
    parts = [
        mt.track_batch(job.fields, job.seeds_voxel[a:b], job.seed_ids[a:b], job.params)
        for a, b in ((0, cut), (cut, len(seeds)))
    ]
    positions = np.concatenate([p["positions"] for p in parts])
    np.testing.assert_array_equal(positions, whole.positions)
    np.testing.assert_array_equal(np.concatenate([p["seed_ids"] for p in parts]), whole.seed_ids)
    counts = np.concatenate([np.diff(p["offsets"]) for p in parts])
    np.testing.assert_array_equal(counts, whole.n_points)
    np.testing.assert_allclose(whole.affine, fit.gfa.mri.affine)


def test_unit_peaks_normalises_once_and_puts_absent_peaks_last():
    from mriflow.track.directions import unit_peaks

    peaks = np.zeros((1, 1, 2, 9))
    peaks[0, 0, 0, :] = [0, 0, 0, 3, 0, 4, 0, 2, 0]  # absent, (3, 0, 4), (0, 2, 0)
    peaks[0, 0, 1, :] = [np.nan, 1, 0, 0, 0, 0, 1, 1, 1]
    prepared = unit_peaks(peaks)
    np.testing.assert_array_equal(prepared[0, 0, 0], [0.6, 0, 0.8, 0, 1, 0, 0, 0, 0])
    assert np.isnan(prepared[0, 0, 1, :3]).all()  # NaN stays, in its place
    root = 1 / math.sqrt(3)
    np.testing.assert_allclose(prepared[0, 0, 1, 3:6], [root] * 3, rtol=0, atol=1e-15)
    np.testing.assert_array_equal(prepared[0, 0, 1, 6:], 0)


def test_kernel_maps_points_through_the_affine_into_float32():
    _, arrays, seeds = _engine_inputs("peak_dirs", "peak_following", 6)
    affine = np.array([[0, -2.0, 0, 10], [1.5, 0, 0, -4], [0, 0, 2.5, 3], [0, 0, 0, 1]])
    common = (
        mt.direction_getter("peak_following"),
        threshold_check,
        arrays.field,
        arrays.basis,
        arrays.vertices,
        arrays.stop_map,
        seeds,
        np.arange(len(seeds), dtype=np.int64),
        np.array([0.25, 0.25, 0.25]),
        np.array([math.cos(math.radians(30)), 0.1, 0.0]),
        np.array([GFA_THRESHOLD]),
        200,
        3,
        np.uint64(0),
        arrays.field.shape[3] + arrays.basis.shape[1] + 8,
    )
    voxels, lengths, reasons = track_seed_range(*common)
    world, world_lengths, world_reasons = track_seed_range(*common, affine=affine, dtype=np.float32)
    assert world.dtype == np.float32
    assert len(voxels) > 100
    np.testing.assert_array_equal(world_lengths, lengths)
    np.testing.assert_array_equal(world_reasons, reasons)
    expected = voxels @ affine[:3, :3].T + affine[:3, 3]
    np.testing.assert_allclose(world, expected, rtol=1e-6, atol=1e-5)


def test_kernel_refuses_a_stopping_map_on_another_grid():
    _, arrays, seeds = _engine_inputs("peak_dirs", "peak_following", 2)
    with pytest.raises(TrackingInputError, match=r"^stop_map: grid"):
        track_seed_range(
            mt.direction_getter("peak_following"),
            threshold_check,
            arrays.field,
            arrays.basis,
            arrays.vertices,
            np.ascontiguousarray(arrays.stop_map[:-1]),
            seeds,
            np.arange(len(seeds), dtype=np.int64),
            np.array([0.25, 0.25, 0.25]),
            np.array([0.9, 0.1, 0.0]),
            np.array([GFA_THRESHOLD]),
            20,
            3,
            np.uint64(0),
            arrays.field.shape[3] + 8,
        )
