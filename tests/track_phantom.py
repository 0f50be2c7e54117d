"""The bundle phantom fitted with dipy (the reference) and wrapped as mriflow fit outputs.

Cached per test session: generating and fitting takes about two seconds.
"""

from __future__ import annotations

import warnings
from functools import lru_cache

import numpy as np
import xarray as xr

import mriflow
import mriflow.track as mt
from mriflow.track.phantom import BundlePhantom, bundle_phantom

GFA_THRESHOLD = 0.2


@lru_cache(maxsize=2)
def fitted(
    scale: float = 1.0, crossing_angle: float = 75.0
) -> tuple[BundlePhantom, xr.Dataset, object, object]:
    """(phantom, fit Dataset in mriflow's contract, dipy PeaksAndMetrics, dipy Sphere).

    Directions (peaks, SH) from dipy's CSD (order 8, the phantom's true fibre response);
    the stopping map ``gfa`` from dipy's CSA (order 6), as in dipy's tracking tutorials.
    """
    from dipy.core.gradients import gradient_table
    from dipy.core.sphere import Sphere
    from dipy.direction import peaks_from_model
    from dipy.reconst.csdeconv import ConstrainedSphericalDeconvModel
    from dipy.reconst.shm import CsaOdfModel

    phantom = bundle_phantom(scale=scale, crossing_angle=crossing_angle)
    table = gradient_table(phantom.bvals, bvecs=phantom.bvecs)
    sphere = Sphere(xyz=mt.sphere(724))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # dipy's legacy-basis notices
        gfa = peaks_from_model(CsaOdfModel(table, 6), phantom.dwi, sphere, 0.5, 25, npeaks=1).gfa
        response = (np.array([1.7e-3, 0.3e-3, 0.3e-3]), 1000.0)
        peaks = peaks_from_model(
            ConstrainedSphericalDeconvModel(table, response, sh_order_max=8),
            phantom.dwi,
            sphere,
            relative_peak_threshold=0.5,
            min_separation_angle=25,
            mask=gfa > GFA_THRESHOLD / 2,
            npeaks=3,
            return_sh=True,
        )
        peaks.gfa = gfa
    affine = phantom.affine
    dataset = xr.Dataset(
        {
            "peak_dirs": mriflow.from_array(
                peaks.peak_dirs, affine, dims=("i", "j", "k", "peak", "xyz")
            ),
            "peak_values": mriflow.from_array(
                peaks.peak_values, affine, dims=("i", "j", "k", "peak")
            ),
            "shm_coeff": mriflow.from_array(
                peaks.shm_coeff,
                affine,
                dims=("i", "j", "k", "sh"),
                attrs={"sh_basis": "descoteaux07", "sh_legacy": True},
            ),
            "gfa": mriflow.from_array(gfa, affine),
        }
    )
    return phantom, dataset, peaks, sphere


def bundle_seeds(phantom: BundlePhantom, density: int = 2) -> tuple[np.ndarray, np.ndarray]:
    """Seeds in each bundle away from crossings and ends, and the bundle index of each."""
    own = phantom.masks & (phantom.masks.sum(axis=0) == 1)
    seeds, labels = [], []
    for n in range(len(phantom.masks)):
        mask = mriflow.from_array(own[n].astype(np.uint8), phantom.affine)
        points = mt.seeds_from_mask(mask, density=density)
        seeds.append(points)
        labels.append(np.full(len(points), n))
    return np.concatenate(seeds), np.concatenate(labels)
