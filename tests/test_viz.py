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


def test_streamline_picture_is_a_direction_coloured_density(tmp_path):
    from mriflow.viz import _direction_density, streamlines_png

    # 10 streamlines along x (L-R) at y = 0, z = 0 and 30 along z (S-I) at x = 20, y = 5.
    along_x = [np.column_stack([np.arange(-10, 10.5, 0.5), np.zeros(41), np.zeros(41)])] * 10
    along_z = [np.column_stack([np.full(41, 20.0), np.full(41, 5.0), np.arange(-10, 10.5, 0.5)])]
    lines = along_x + along_z * 30
    positions = np.concatenate(lines)
    offsets = np.concatenate([[0], np.cumsum([len(line) for line in lines])])
    starts, ends = positions[:-1], positions[1:]
    inside = np.ones(len(starts), bool)
    inside[offsets[1:-1] - 1] = False
    steps = (ends - starts)[inside]
    colours = np.abs(steps) / np.linalg.norm(steps, axis=1, keepdims=True)
    image, extent = _direction_density(starts[inside], colours, 0, 2, 1.0)  # coronal: x, z
    x0, _, z0, _ = extent

    def pixel(x, z):
        return image[int((z - z0) // 1.0), int((x - x0) // 1.0)]

    np.testing.assert_allclose(pixel(0.2, 0.2)[[1, 2]], 0)  # the x bundle: pure red
    assert pixel(0.2, 0.2)[0] > 0
    np.testing.assert_allclose(pixel(20.2, 0.2)[[0, 1]], 0)  # the z bundle: pure blue
    assert pixel(20.2, 0.2)[2] > pixel(0.2, 0.2)[0]  # 30 streamlines brighter than 10
    np.testing.assert_array_equal(pixel(10.2, 5.2), 0)  # no streamline: black
    out = streamlines_png(positions, offsets, tmp_path / "lines.png", title="two bundles")
    picture = np.asarray(Image.open(out).convert("RGB"))
    assert picture.shape[0] > 300
    assert picture.shape[1] > 900
    assert (picture[..., 0] > 200).any()
    assert (picture[..., 2] > 200).any()
