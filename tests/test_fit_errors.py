"""Bad input to the fits: typed errors that name the image and the problem."""

from __future__ import annotations

import numpy as np
import pytest

import mriflow
from mriflow.data import write_dwi_phantom
from mriflow.errors import FitInputError, MriflowError


@pytest.fixture(scope="module")
def paths(tmp_path_factory):
    return write_dwi_phantom(
        tmp_path_factory.mktemp("bad"), shape=(8, 8, 6), n_directions=20, bvalue=1000, seed=4
    )


def _rewrite(paths, tmp_path, *, bvals=None, bvecs=None):
    """A copy of the phantom with edited .bval/.bvec files next to it."""
    target = tmp_path / "sub-01_dwi.nii.gz"
    target.write_bytes(paths["dwi"].read_bytes())
    table_bvals = np.loadtxt(paths["bval"], ndmin=1)
    table_bvecs = np.loadtxt(paths["bvec"])
    if bvals is not None:
        table_bvals = bvals(table_bvals)
    if bvecs is not None:
        table_bvecs = bvecs(table_bvecs)
    np.savetxt(tmp_path / "sub-01_dwi.bval", table_bvals[None], fmt="%g")
    np.savetxt(tmp_path / "sub-01_dwi.bvec", table_bvecs, fmt="%.8f")
    return target


def test_no_b0_volume(paths, tmp_path):
    path = _rewrite(paths, tmp_path, bvals=lambda b: np.where(b == 0, 700.0, b))
    dwi = mriflow.open_image(path)
    for fit in (mriflow.fit.dti, mriflow.fit.csa):
        with pytest.raises(FitInputError, match=r"^.*sub-01_dwi\.nii\.gz: no b=0 volume"):
            fit(dwi)


def test_zero_gradient_on_a_diffusion_volume(paths, tmp_path):
    def zero_fifth(bvecs):
        bvecs = bvecs.copy()
        bvecs[:, 5] = 0.0
        return bvecs

    dwi = mriflow.open_image(_rewrite(paths, tmp_path, bvecs=zero_fifth))
    with pytest.raises(FitInputError, match=r"sub-01_dwi\.nii\.gz: .*volume\(s\) \[5\].*zero"):
        mriflow.fit.dti(dwi)


def test_bval_count_mismatch_is_refused_at_open(paths, tmp_path):
    path = _rewrite(paths, tmp_path, bvals=lambda b: b[:-1])
    with pytest.raises(MriflowError, match=r"sub-01_dwi\.bval: has 21 b-values"):
        mriflow.open_image(path)


def test_too_few_directions_for_the_sh_order(paths):
    dwi = mriflow.open_image(paths["dwi"])
    with pytest.raises(FitInputError, match=r"sh_order 6 needs at least 28 .* has 20"):
        mriflow.fit.csa(dwi, sh_order=6)
    with pytest.raises(FitInputError, match=r"sh_order 6 needs at least 28"):
        mriflow.fit.csd(dwi, response=([1.7e-3, 3e-4, 3e-4], 800.0), sh_order=6)
    with pytest.raises(FitInputError, match="even integer"):
        mriflow.fit.csa(dwi, sh_order=3)


def test_mask_shape_and_affine_must_match(paths):
    dwi = mriflow.open_image(paths["dwi"])
    mask = mriflow.open_image(paths["mask"]) > 0
    with pytest.raises(FitInputError, match=r"sub-01_dwi\.nii\.gz: mask shape \(8, 8, 5\)"):
        mriflow.fit.dti(dwi, mask=mask.isel(k=slice(0, 5)))
    with pytest.raises(FitInputError, match="mask shape"):
        mriflow.fit.dti(dwi, mask=np.ones((8, 8, 5), bool))
    shifted = mask.copy()
    affine = np.array(shifted.attrs["affine"], dtype=float)
    affine[0, 3] += 2.0
    shifted.attrs["affine"] = affine
    with pytest.raises(FitInputError, match=r"sub-01_dwi\.nii\.gz: mask affine does not match"):
        mriflow.fit.csa(dwi, sh_order=4, mask=shifted)


def test_image_without_gradients_or_volume_axis(paths):
    mask = mriflow.open_image(paths["mask"])
    with pytest.raises(FitInputError, match=r"sub-01_mask\.nii\.gz: no 'volume' axis"):
        mriflow.fit.dti(mask)
    plain = mriflow.from_array(np.ones((4, 4, 4, 6)), np.eye(4), dims=("i", "j", "k", "volume"))
    with pytest.raises(FitInputError, match="no gradient table"):
        mriflow.fit.dti(plain)
    with pytest.raises(FitInputError, match="DataArray"):
        mriflow.fit.dti(np.ones((4, 4, 4, 6)))


def test_bad_options(paths):
    dwi = mriflow.open_image(paths["dwi"])
    with pytest.raises(FitInputError, match="fit_method"):
        mriflow.fit.dti(dwi, fit_method="NLLS")
    with pytest.raises(FitInputError, match="response"):
        mriflow.fit.csd(dwi, response=(1.0, 2.0), sh_order=4)
    with pytest.raises(FitInputError, match="relative_peak_threshold"):
        mriflow.fit.peaks(mriflow.fit.csa(dwi, sh_order=4), relative_peak_threshold=2.0)
    with pytest.raises(FitInputError, match="sphere"):
        mriflow.fit.peaks(mriflow.fit.csa(dwi, sh_order=4), sphere="nonexistent")
    with pytest.raises(FitInputError, match="half"):
        mriflow.fit.get_sphere(np.array([[0, 0, 1.0], [0, 1, 0], [1, 0, 0], [0.6, 0.8, 0]]))


def test_auto_response_without_anisotropic_voxels(paths):
    dwi = mriflow.open_image(paths["dwi"])
    isotropic = mriflow.from_array(
        np.full(dwi.shape, 500.0), dwi.mri.affine, bvals=dwi.mri.bvals, bvecs=dwi.mri.bvecs("fsl")
    ).rename("isotropic")
    with pytest.raises(FitInputError, match=r"^isotropic: no voxel with FA > 0.7"):
        mriflow.fit.auto_response(isotropic)
