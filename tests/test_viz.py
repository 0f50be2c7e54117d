"""Pictures: orthogonal slices in world space, GIFs, the slice viewer; only slices are read."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import numpy as np
from PIL import Image

import mriflow
from mriflow.io.nifti import bytes_read


def test_orthogonal_slices_follow_world_space():
    # a bright point at a known world position shows up at that position in all three planes
    affine = np.array([[-2.0, 0, 0, 40], [0, 0, 3, -30], [0, 2, 0, -20], [0, 0, 0, 1]])  # L, S, A
    data = np.zeros((20, 10, 15), np.float32)
    data[5, 3, 7] = 100
    image = mriflow.from_array(data, affine)
    point = image.mri.voxel_to_world([5, 3, 7])
    from mriflow.viz import orthogonal_slices

    slices = orthogonal_slices(image, center=point)
    for name, (h, v) in (("sagittal", (1, 2)), ("coronal", (0, 2)), ("axial", (0, 1))):
        plane = slices[name]
        row, col = np.unravel_index(np.argmax(plane["data"]), plane["data"].shape)
        left, right, bottom, top = plane["extent"]
        x = left + (col + 0.5) * (right - left) / plane["data"].shape[1]
        y = bottom + (row + 0.5) * (top - bottom) / plane["data"].shape[0]
        np.testing.assert_allclose([x, y], [point[h], point[v]], atol=1e-6, err_msg=name)


def test_plot_writes_a_picture_reading_three_planes(tmp_path):
    paths = mriflow.data.write_dwi_phantom(tmp_path, shape=(24, 28, 20), n_directions=6)
    image = mriflow.open_image(paths["dwi"].with_name("sub-01_mask.nii.gz"))
    out = tmp_path / "mask.png"
    image.mri.plot(output_path=out)
    picture = np.asarray(Image.open(out).convert("L"), dtype=float)
    assert picture.shape[0] > 300
    assert picture.std() > 10  # not a blank canvas
    dwi = mriflow.open_image(paths["dwi"], chunks={"k": 5})
    before = bytes_read(paths["dwi"])
    dwi.mri.plot(index={"volume": 3}, output_path=tmp_path / "dwi.png")
    assert bytes_read(paths["dwi"]) - before < dwi.nbytes / 4 / 4  # int16 on disk; 3 planes


def test_gif_through_space_and_time(tmp_path):
    image = mriflow.from_array(np.random.default_rng(0).random((12, 10, 8, 5)), np.eye(4))
    slices = Image.open(image.mri.to_gif(tmp_path / "k.gif", axis="k"))
    assert slices.n_frames == 8
    series = Image.open(image.mri.to_gif(tmp_path / "t.gif", axis="t"))
    assert series.n_frames == 5


def test_viewer_builds_sliders_for_every_dim():
    image = mriflow.from_array(np.zeros((6, 5, 4, 3)), np.eye(4))
    widget = image.mri.view()
    names = {child.description for child in widget.children if hasattr(child, "max")}
    assert names == {"k", "t"}
