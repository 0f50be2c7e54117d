"""The ``mriflow`` xarray backend: ``xr.open_dataarray("x.nii.gz", engine="mriflow")``."""

from __future__ import annotations

import os
from typing import Any

import xarray as xr
from xarray.backends import BackendEntrypoint

from mriflow.io.nifti import nifti_suffix, open_nifti

__all__ = ["MriflowBackendEntrypoint"]


class MriflowBackendEntrypoint(BackendEntrypoint):
    """Opens NIfTI-1/2 and Analyze files as one lazy image variable with its affine."""

    description = "Lazy NIfTI/Analyze images with voxel-to-world affines (mriflow)"
    url = "https://github.com/mriflow/mriflow"
    open_dataset_parameters = ("filename_or_obj", "drop_variables", "kind", "modality")

    def guess_can_open(self, filename_or_obj: Any) -> bool:
        try:
            return nifti_suffix(os.fspath(filename_or_obj)) is not None
        except TypeError:
            return False

    def open_dataset(  # type: ignore[override]
        self,
        filename_or_obj: Any,
        *,
        drop_variables: Any = None,
        kind: str | None = None,
        modality: str | None = None,
    ) -> xr.Dataset:
        image = open_nifti(os.fspath(filename_or_obj), kind=kind, modality=modality)
        dataset = image.to_dataset()
        if drop_variables:
            dataset = dataset.drop_vars(drop_variables, errors="ignore")
        return dataset
