"""World positions survive every view: hypothesis properties on random oblique affines.

Each voxel's value is its flat index in the original grid, so a view's data alone says which
original voxel sits where, independently of the coordinates the affine is derived from.
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import mriflow
from mriflow.errors import GeometryError

CODES = ["".join(c) for c in itertools.product("LR", "AP", "SI")]
CODES += ["".join(p) for code in CODES for p in itertools.permutations(code)]
CODES = sorted(set(CODES))


@st.composite
def oblique_images(draw):
    shape = tuple(draw(st.integers(2, 7)) for _ in range(3))
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    q, r = np.linalg.qr(rng.normal(size=(3, 3)))
    affine = np.eye(4)
    affine[:3, :3] = q * np.sign(np.diag(r)) @ np.diag(rng.uniform(0.5, 3.0, 3))
    affine[:3, 3] = rng.uniform(-50, 50, 3)
    data = np.arange(np.prod(shape), dtype=np.int64).reshape(shape)
    return mriflow.from_array(data, affine), affine


def original_world(view, base_affine):
    """World position of each voxel of ``view``, found from its value (original flat index)."""
    shape = view.attrs["original_shape"]
    index = np.stack(np.unravel_index(view.values.ravel(), shape), axis=-1)
    return index @ base_affine[:3, :3].T + base_affine[:3, 3]


def view_world(view):
    grid = np.stack(np.meshgrid(*[np.arange(n) for n in view.shape], indexing="ij"), axis=-1)
    return view.mri.voxel_to_world(grid.reshape(-1, 3))


def axis_slices():
    return st.builds(
        slice,
        st.one_of(st.none(), st.integers(-7, 6)),
        st.one_of(st.none(), st.integers(-7, 7)),
        st.one_of(st.none(), st.sampled_from([1, 2, 3, -1, -2, -3])),
    )


@settings(max_examples=150, deadline=None)
@given(oblique_images(), st.tuples(axis_slices(), axis_slices(), axis_slices()))
def test_slicing_stepping_and_flipping_keep_world_positions(case, slices):
    image, affine = case
    image.attrs["original_shape"] = image.shape
    view = image[slices]
    if 0 in view.shape:
        return
    np.testing.assert_allclose(view_world(view), original_world(view, affine), atol=1e-9)


@settings(max_examples=150, deadline=None)
@given(oblique_images(), st.sampled_from(CODES), st.permutations(["i", "j", "k"]))
def test_reorient_points_axes_as_asked_and_keeps_world_positions(case, target, order):
    image, affine = case
    image.attrs["original_shape"] = image.shape
    turned = image.transpose(*order).mri.reorient(target)
    assert "".join(turned.mri.orientation) == target
    np.testing.assert_allclose(view_world(turned), original_world(turned, affine), atol=1e-9)


@settings(max_examples=100, deadline=None)
@given(oblique_images(), st.sampled_from(CODES))
def test_reorient_and_back_is_the_identity(case, target):
    image, _ = case
    start = "".join(image.mri.orientation)
    back = image.mri.reorient(target).mri.reorient(start)
    assert back.dims == image.dims
    np.testing.assert_array_equal(back.values, image.values)
    np.testing.assert_allclose(back.mri.affine, image.mri.affine, atol=1e-12)
    for dim in "ijk":
        np.testing.assert_array_equal(back[dim].values, image[dim].values)


@settings(max_examples=100, deadline=None)
@given(oblique_images(), st.lists(st.floats(-10, 10), min_size=3, max_size=3))
def test_world_to_voxel_inverts_voxel_to_world(case, point):
    image, _ = case
    view = image[::-1, 1:, ::2]
    world = view.mri.voxel_to_world(point)
    np.testing.assert_allclose(view.mri.world_to_voxel(world), point, atol=1e-8)


def test_bounds_center_origin_spacing():
    affine = np.array([[-2.0, 0, 0, 90], [0, 2.5, 0, -120], [0, 0, 3, -60], [0, 0, 0, 1]])
    image = mriflow.from_array(np.zeros((10, 20, 30)), affine)
    assert image.mri.orientation == ("L", "A", "S")
    assert image.mri.spacing == (2.0, 2.5, 3.0)
    assert image.mri.origin == (90.0, -120.0, -60.0)
    assert image.mri.bounds == (
        (90 - 2 * 9.5, 91.0),
        (-121.25, -120 + 2.5 * 19.5),
        (-61.5, -60 + 3 * 29.5),
    )
    center = image.mri.center()
    np.testing.assert_allclose(center, [90 - 9, -120 + 2.5 * 9.5, -60 + 3 * 14.5])
    np.testing.assert_allclose(image.mri.center(lps=True), [-center[0], -center[1], center[2]])
    ras = image.mri.reorient("RAS")
    np.testing.assert_allclose(ras.mri.bounds, image.mri.bounds)
    assert ras.mri.center() == pytest.approx(center)


def test_integer_index_drops_an_axis_but_keeps_its_position():
    affine = np.diag([2.0, 3.0, 4.0, 1.0])
    image = mriflow.from_array(np.zeros((5, 6, 7)), affine)
    plane = image.isel(k=3)
    assert plane.mri.spatial_dims == ("i", "j")
    np.testing.assert_allclose(plane.mri.voxel_to_world([1, 1, 0]), [2, 3, 12])


def test_irregular_selection_has_no_affine():
    image = mriflow.from_array(np.zeros((5, 6, 7)), np.eye(4))
    with pytest.raises(GeometryError, match="not evenly spaced"):
        _ = image.isel(i=[0, 1, 3]).mri.affine


def test_bad_orientation_code():
    image = mriflow.from_array(np.zeros((5, 6, 7)), np.eye(4))
    with pytest.raises(GeometryError, match="not valid"):
        image.mri.reorient("RAR")


def test_gradients_follow_reorientation(tmp_path):
    paths = mriflow.data.write_dwi_phantom(tmp_path, shape=(8, 9, 7), n_directions=6)
    image = mriflow.open_image(paths["dwi"])
    ras = image.mri.reorient("RAS")
    np.testing.assert_allclose(ras.mri.bvecs("ras"), image.mri.bvecs("ras"))
    # LAS -> RAS flips i: the voxel-frame x component changes sign, the rest stays
    np.testing.assert_allclose(
        ras.mri.bvecs("voxel"), image.mri.bvecs("voxel") * [-1, 1, 1], atol=1e-12
    )
    swapped = image.transpose("j", "i", "k", "volume")
    np.testing.assert_allclose(
        swapped.mri.bvecs("voxel"), image.mri.bvecs("voxel")[:, [1, 0, 2]], atol=1e-12
    )
