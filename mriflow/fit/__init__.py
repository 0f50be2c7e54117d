"""Voxelwise model fits mapped over dask chunks: DTI, CSA-ODF, CSD, and ODF peaks.

Every fit takes a diffusion image DataArray (``mriflow.open_image``), checks its gradient
table, and returns a lazy ``xarray.Dataset`` on the image's grid (affine in attrs, so
``ds.fa.mri.to_nifti(...)`` works). Directions are in the array's voxel frame; see
:mod:`mriflow.fit.gradients`. The engine is :func:`mriflow.fit.mapper.map_voxels`.
"""

from mriflow.fit.asl import asl_cbf
from mriflow.fit.csa import csa
from mriflow.fit.csd import Response, auto_response, csd
from mriflow.fit.dce import aif_from_mask, dce, dce_concentration, population_aif, t1_vfa
from mriflow.fit.dsc import dsc
from mriflow.fit.dti import dti
from mriflow.fit.ivim import ivim
from mriflow.fit.mapper import map_voxels
from mriflow.fit.peaks import peaks
from mriflow.fit.shm import Sphere, get_sphere, real_sh, sh_matrix

__all__ = [
    "Response",
    "aif_from_mask",
    "asl_cbf",
    "dce",
    "dce_concentration",
    "dsc",
    "ivim",
    "population_aif",
    "t1_vfa",
    "Sphere",
    "auto_response",
    "csa",
    "csd",
    "dti",
    "get_sphere",
    "map_voxels",
    "peaks",
    "real_sh",
    "sh_matrix",
]
