"""The voxelwise engine: schedulers, masks, chunking, laziness, outputs on the image grid,
and slow numpy twins of every kernel."""

from __future__ import annotations

import math
import warnings

import dask
import nibabel as nib
import numpy as np
import pytest
import xarray as xr
from scipy.spatial import ConvexHull
from scipy.special import sph_harm_y

import mriflow
from mriflow.data import write_dwi_phantom
from mriflow.errors import InvalidSignalWarning
from mriflow.fit.csa import csa_fit_matrix
from mriflow.fit.dti import design_matrix
from mriflow.fit.gradients import diffusion_table
from mriflow.fit.shm import get_sphere, real_sh, sh_degrees_orders, sh_matrix
from mriflow.io.nifti import bytes_read


@pytest.fixture(scope="module")
def phantom(tmp_path_factory):
    out = tmp_path_factory.mktemp("phantom")
    paths = write_dwi_phantom(out, shape=(12, 12, 10), n_directions=30, bvalue=1000, seed=2)
    return paths


@pytest.fixture(scope="module")
def dwi(phantom):
    return mriflow.open_image(phantom["dwi"], chunks={"k": 3})


@pytest.fixture(scope="module")
def reference_fa(dwi):
    with dask.config.set(scheduler="synchronous"):
        return mriflow.fit.dti(dwi).fa.values


# --- schedulers ------------------------------------------------------------------------------


def test_threaded_scheduler_matches_synchronous(dwi, reference_fa):
    with dask.config.set(scheduler="threads", num_workers=2):
        fa = mriflow.fit.dti(dwi).fa.values
    np.testing.assert_array_equal(fa, reference_fa)


def test_processes_scheduler_matches_synchronous(dwi, reference_fa):
    # fork: the workers inherit the imported, compiled kernels (spawn works too, slower).
    with dask.config.set(
        {"scheduler": "processes", "num_workers": 2, "multiprocessing.context": "fork"}
    ):
        fa = mriflow.fit.dti(dwi).fa.values
    np.testing.assert_array_equal(fa, reference_fa)


def test_distributed_local_cluster(dwi, reference_fa, phantom):
    from mriflow.cluster import get_client

    mask = mriflow.open_image(phantom["mask"]) > 0
    # Spawned worker processes: kernels reach them by import path and load numba's cache.
    with get_client(
        n_workers=2, threads_per_worker=1, memory_limit="1GiB", dashboard=False
    ) as client:
        assert client.scheduler_info()["address"].startswith("tcp://127.0.0.1")
        fit = mriflow.fit.dti(dwi, mask=mask)
        fa = fit.fa.compute()
        csa = mriflow.fit.csa(dwi, sh_order=4, mask=mask)
        peaks = mriflow.fit.peaks(csa, sphere="symmetric362").compute()
        client.cluster.close()
    np.testing.assert_array_equal(fa.values, np.where(mask.values, reference_fa, 0.0))
    assert (peaks.peak_indices.values[mask.values][:, 0] >= 0).all()


# --- mask, chunking, invalid signal ----------------------------------------------------------


def test_masked_voxels_are_not_computed_and_hold_zero(dwi):
    values = np.asarray(dwi.values, dtype=np.float64).copy()
    mask = np.zeros(values.shape[:3], bool)
    mask[3:9, 3:9, 2:8] = True
    values[~mask] = np.nan  # would warn and fit to NaN if any kernel saw them
    image = mriflow.from_array(
        values, dwi.mri.affine, bvals=dwi.mri.bvals, bvecs=dwi.mri.bvecs("fsl")
    ).chunk({"k": 4})
    with warnings.catch_warnings():
        warnings.simplefilter("error", InvalidSignalWarning)
        fit = mriflow.fit.dti(image, mask=mask).compute()
        csd = mriflow.fit.csd(
            image, response=([1.7e-3, 3e-4, 3e-4], 800.0), sh_order=4, mask=mask
        ).compute()
    assert np.all(fit.fa.values[~mask] == 0)
    assert np.all(fit.evecs.values[~mask] == 0)
    assert np.all(np.isfinite(fit.fa.values[mask]))
    assert fit.fa.values[mask].max() > 0.3
    assert np.all(csd.shm_coeff.values[~mask] == 0)
    assert np.all(csd.shm_coeff.values[mask][:, 0] > 0)


def test_bad_signal_fits_to_nan_with_a_count(dwi):
    values = np.asarray(dwi.values, dtype=np.float64).copy()
    values[1, 1, 1, 5] = np.nan
    values[2, 2, 2, 7] = np.inf
    values[3, 3, 3, 0] = -5.0
    image = mriflow.from_array(
        values, dwi.mri.affine, bvals=dwi.mri.bvals, bvecs=dwi.mri.bvecs("fsl")
    )
    with pytest.warns(InvalidSignalWarning, match="3 voxel"):
        fa = mriflow.fit.dti(image).fa.values
    assert np.isnan(fa[[1, 2, 3], [1, 2, 3], [1, 2, 3]]).all()
    assert np.isfinite(fa).sum() == fa.size - 3
    with pytest.warns(InvalidSignalWarning):
        gfa = mriflow.fit.csa(image, sh_order=4).gfa.values
    assert np.isnan(gfa).sum() == 3


def test_model_axis_split_over_chunks_is_rechunked(dwi, reference_fa):
    split = dwi.chunk({"volume": 7, "i": 5})
    fit = mriflow.fit.dti(split)
    assert len(fit.fa.chunks[0]) == 3
    np.testing.assert_allclose(fit.fa.values, reference_fa, rtol=0, atol=1e-12)


def test_numpy_backed_image_gives_lazy_result(dwi, reference_fa):
    image = mriflow.from_array(
        np.asarray(dwi.values), dwi.mri.affine, bvals=dwi.mri.bvals, bvecs=dwi.mri.bvecs("fsl")
    )
    fit = mriflow.fit.dti(image)
    assert fit.fa.chunks is not None
    # bvecs round-trip through the FSL convention here, so allow for rounding.
    np.testing.assert_allclose(fit.fa.values, reference_fa, rtol=0, atol=1e-8)


def test_fits_are_lazy_until_computed(phantom):
    image = mriflow.open_image(phantom["dwi"])
    before = bytes_read(phantom["dwi"])
    fit = mriflow.fit.dti(image)
    csa = mriflow.fit.csa(image, sh_order=4)
    mriflow.fit.peaks(csa)
    assert bytes_read(phantom["dwi"]) == before
    assert all(var.chunks is not None for var in fit.data_vars.values())


# --- outputs on the image grid ---------------------------------------------------------------


def test_maps_carry_the_affine_and_write_nifti(dwi, tmp_path):
    fit = mriflow.fit.dti(dwi)
    np.testing.assert_allclose(fit.fa.mri.affine, dwi.mri.affine)
    path = fit.fa.mri.to_nifti(tmp_path / "fa.nii.gz")
    written = nib.load(path)
    np.testing.assert_allclose(written.affine, dwi.mri.affine, atol=1e-5)
    np.testing.assert_allclose(written.get_fdata(), fit.fa.values, atol=1e-6)
    # A cropped, flipped view keeps world space right through the fit.
    view = dwi.isel(i=slice(2, 9), j=slice(None, None, -1))
    cropped = mriflow.fit.dti(view)
    np.testing.assert_allclose(cropped.fa.mri.affine, view.mri.affine)
    np.testing.assert_allclose(
        cropped.fa.values, fit.fa.isel(i=slice(2, 9), j=slice(None, None, -1)).values, atol=1e-9
    )


def test_csd_dataset_round_trips_through_zarr(dwi, tmp_path):
    response = mriflow.fit.auto_response(dwi, fa_threshold=0.5)
    fit = mriflow.fit.csd(dwi, response=response, sh_order=4)
    fit.to_zarr(tmp_path / "fits.zarr", group="csd")
    back = xr.open_zarr(tmp_path / "fits.zarr", group="csd")
    np.testing.assert_allclose(back.shm_coeff.values, fit.shm_coeff.values)
    assert back.shm_coeff.dims == ("i", "j", "k", "sh")
    np.testing.assert_allclose(np.asarray(back.shm_coeff.attrs["affine"]), dwi.attrs["affine"])


def test_peaks_basis_independent_and_in_voxel_frame(dwi, phantom):
    mask = mriflow.open_image(phantom["mask"]) > 0
    labels = mriflow.open_image(phantom["labels"]).values
    ours = mriflow.fit.peaks(mriflow.fit.csa(dwi, sh_order=6, mask=mask), npeaks=2)
    tournier = mriflow.fit.peaks(
        mriflow.fit.csa(dwi, sh_order=6, mask=mask, basis="tournier07", legacy=False), npeaks=2
    )
    # The same ODF in another basis: the same peaks (antipodal vertices tie, so up to sign).
    np.testing.assert_array_equal(ours.peak_indices.values >= 0, tournier.peak_indices.values >= 0)
    cosine = np.abs((ours.peak_dirs.values * tournier.peak_dirs.values).sum(-1))
    present = ours.peak_indices.values >= 0
    assert present.sum() > 100
    np.testing.assert_allclose(cosine[present], 1.0, atol=1e-9)
    # Phantom fibres run along voxel x in the lower slabs (k < 0.45 n) of white matter.
    lower_wm = (labels == 2) & (np.arange(10)[None, None, :] < 4)
    first = ours.peak_dirs.values[lower_wm][:, 0, :]
    assert np.median(np.abs(first[:, 0])) > 0.95


# --- numpy twins of the kernels -------------------------------------------------------------


def _voxels(dwi, count=40, seed=0):
    values = np.asarray(dwi.values, dtype=np.float64).reshape(-1, dwi.sizes["volume"])
    rng = np.random.default_rng(seed)
    return rng.choice(np.flatnonzero(values[:, 0] > 100), count, replace=False), values


def test_dti_kernel_matches_numpy_twin(dwi):
    table = diffusion_table(dwi)
    chosen, values = _voxels(dwi)
    design = design_matrix(table)
    fa = mriflow.fit.dti(dwi).fa.values.reshape(-1)
    for voxel in chosen:
        log_signal = np.log(np.maximum(values[voxel], 1e-4))
        ols = np.linalg.lstsq(design, log_signal, rcond=None)[0]
        weights = np.exp(design @ ols)
        wls = np.linalg.lstsq(design * weights[:, None], weights * log_signal, rcond=None)[0]
        xx, xy, yy, xz, yz, zz = wls[:6]
        evals = np.linalg.eigvalsh([[xx, xy, xz], [xy, yy, yz], [xz, yz, zz]])
        mean = evals.mean()
        twin = math.sqrt(1.5 * ((evals - mean) ** 2).sum() / (evals**2).sum())
        assert fa[voxel] == pytest.approx(twin, abs=1e-9)


def test_sh_basis_matches_scipy_definition():
    rng = np.random.default_rng(1)
    polar, azimuth = rng.uniform(0, np.pi, 30), rng.uniform(-np.pi, np.pi, 30)
    degrees, orders = sh_degrees_orders(8)
    for legacy in (True, False):
        basis = real_sh(8, polar, azimuth, legacy=legacy)
        tournier = real_sh(8, polar, azimuth, basis="tournier07", legacy=legacy)
        for column, (degree, order) in enumerate(zip(degrees, orders, strict=True)):
            positive = sph_harm_y(degree, abs(order), polar, azimuth)
            if order > 0:
                expected = math.sqrt(2) * positive.imag
            elif order < 0:
                signed = positive if legacy else sph_harm_y(degree, order, polar, azimuth)
                expected = math.sqrt(2) * signed.real
            else:
                expected = positive.real
            np.testing.assert_allclose(basis[:, column], expected, atol=1e-12)
            scale = 1.0 if legacy or order == 0 else math.sqrt(2)
            expected_t = scale * (positive.imag if order < 0 else positive.real)
            np.testing.assert_allclose(tournier[:, column], expected_t, atol=1e-12)


def test_csa_kernel_matches_numpy_twin(dwi):
    table = diffusion_table(dwi)
    chosen, values = _voxels(dwi, seed=1)
    dwi_index = np.flatnonzero(~table.b0_mask)
    basis = sh_matrix(6, table.bvecs[dwi_index])
    degrees, _ = sh_degrees_orders(6)
    laplace = -degrees * (degrees + 1.0)
    funk_radon = np.array([np.polynomial.legendre.legval(0.0, np.eye(n + 1)[n]) for n in degrees])
    fit = mriflow.fit.csa(dwi, sh_order=6)
    coeff = fit.shm_coeff.values.reshape(-1, degrees.size)
    gfa = fit.gfa.values.reshape(-1)
    for voxel in chosen:
        signal = np.maximum(values[voxel], 1e-5)
        ratio = np.clip(signal[dwi_index] / signal[table.b0_mask].mean(), 0.001, 0.999)
        target = np.log(-np.log(ratio))
        raw = np.linalg.solve(basis.T @ basis + 0.006 * np.diag(laplace**2), basis.T @ target)
        twin = funk_radon * laplace / (8 * np.pi) * raw
        twin[0] = 0.5 / np.sqrt(np.pi)
        np.testing.assert_allclose(coeff[voxel], twin, atol=1e-9)
        assert gfa[voxel] == pytest.approx(np.sqrt(1 - twin[0] ** 2 / (twin**2).sum()))
    np.testing.assert_allclose(csa_fit_matrix(6, table.bvecs[dwi_index]).shape, (28, 30))


def test_peak_kernel_matches_numpy_twin(dwi):
    sphere = get_sphere("symmetric362")
    fit = mriflow.fit.csa(dwi, sh_order=6)
    found = mriflow.fit.peaks(
        fit, sphere=sphere, relative_peak_threshold=0.3, min_separation_angle=30, npeaks=3
    )
    coeff = fit.shm_coeff.values.reshape(-1, 28)
    indices = found.peak_indices.values.reshape(-1, 3)
    faces = ConvexHull(sphere.vertices).simplices
    neighbours = [set() for _ in range(len(sphere))]
    for a, b, c in faces:
        neighbours[a] |= {b, c}
        neighbours[b] |= {a, c}
        neighbours[c] |= {a, b}
    sampling = sh_matrix(6, sphere.vertices)
    chosen, _ = _voxels(dwi, seed=2)
    for voxel in chosen:
        odf = sampling @ coeff[voxel]
        maxima = [
            v
            for v in range(len(sphere))
            if all(odf[v] >= odf[n] for n in neighbours[v])
            and any(odf[v] > odf[n] for n in neighbours[v])
        ]
        maxima.sort(key=lambda v: -odf[v])
        floor = max(odf.min(), 0)
        if len(maxima) > 1:
            maxima = [v for v in maxima if odf[v] - floor >= 0.3 * (odf[maxima[0]] - floor)]
        kept = []
        for v in maxima:
            dots = [abs(sphere.vertices[v] @ sphere.vertices[k]) for k in kept]
            if all(d <= np.cos(np.deg2rad(30)) for d in dots):
                kept.append(v)
        twin = ([*kept, -1, -1, -1])[:3]
        # Antipodal vertices tie; compare directions up to sign.
        for ours_index, twin_index in zip(indices[voxel], twin, strict=True):
            assert (ours_index < 0) == (twin_index < 0)
            if twin_index >= 0:
                cosine = abs(sphere.vertices[ours_index] @ sphere.vertices[twin_index])
                assert cosine == pytest.approx(1.0)


def test_csd_kernel_matches_numpy_twin(dwi):
    table = diffusion_table(dwi)
    response = mriflow.fit.Response(np.array([1.5e-3, 3e-4, 3e-4]), 800.0)
    fit = mriflow.fit.csd(dwi, response=response, sh_order=6)
    coeff = fit.shm_coeff.values.reshape(-1, 28)
    from mriflow.fit.csd import csd_matrices

    dwi_index = np.flatnonzero(~table.b0_mask)
    reg = get_sphere("symmetric362").vertices
    deconvolution, reg_basis = csd_matrices(
        table.bvals[dwi_index], table.bvecs[dwi_index], response, 6, reg
    )
    chosen, values = _voxels(dwi, seed=3)
    for voxel in chosen:
        signal = values[voxel, dwi_index]
        normal = deconvolution.T @ deconvolution
        twin = np.linalg.solve(normal, deconvolution.T @ signal)
        threshold = 0.1 * reg_basis[0, 0] * twin[0]
        negative = reg_basis[:, :15] @ twin[:15] < threshold
        if not negative.any():
            negative = reg_basis @ twin < threshold
        for _ in range(50):
            if not negative.any():
                break
            rows = reg_basis[negative]
            twin = np.linalg.solve(normal + rows.T @ rows, deconvolution.T @ signal)
            update = reg_basis @ twin < threshold
            if np.array_equal(update, negative):
                break
            negative = update
        np.testing.assert_allclose(coeff[voxel], twin, rtol=0, atol=1e-8 * np.abs(twin).max())


@pytest.mark.parametrize(
    ("name", "size", "min_angle"), [("symmetric362", 362, 9.5), ("repulsion724", 724, 6.5)]
)
def test_shipped_spheres_are_symmetric_and_even(name, size, min_angle):
    sphere = get_sphere(name)
    vertices = sphere.vertices
    assert vertices.shape == (size, 3)
    np.testing.assert_allclose(np.linalg.norm(vertices, axis=1), 1.0, atol=1e-12)
    np.testing.assert_allclose(vertices[size // 2 :], -vertices[: size // 2], atol=1e-12)
    cosine = np.abs(vertices @ vertices.T)
    np.fill_diagonal(cosine, 0)
    cosine[cosine > 1 - 1e-9] = 0  # antipodes
    assert np.degrees(np.arccos(cosine.max())) > min_angle
    rebuilt = mriflow.fit.Sphere(vertices)
    np.testing.assert_array_equal(rebuilt.edges, sphere.edges)


def test_cli_fit_writes_maps(phantom, tmp_path, capsys):
    from mriflow.cli import main

    code = main(["fit", "dti", str(phantom["dwi"]), str(tmp_path), "--mask", str(phantom["mask"])])
    assert code == 0
    fa = nib.load(tmp_path / "dti_fa.nii.gz")
    assert fa.shape == (12, 12, 10)
    assert nib.load(tmp_path / "dti_rgb.nii.gz").shape == (12, 12, 10, 3)
    assert 0.3 < fa.get_fdata()[nib.load(phantom["labels"]).get_fdata() == 2].mean() < 1
    assert main(["fit", "dti", str(phantom["mask"]), str(tmp_path)]) == 1
    assert "no 'volume' axis" in " ".join(capsys.readouterr().err.split())
