"""NIfTI-Zarr stores: round trips of real NIfTI files through to_zarr/open_zarr and convert."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import xarray as xr

import mriflow
from mriflow.data import oblique_affine, write_dwi_phantom
from mriflow.io.zarr._layout import downsample

NIBABEL_DATA = Path(nib.__file__).parent / "tests" / "data"
SAMPLES = [
    "anatomical.nii",  # big-endian int16
    "example4d.nii.gz",  # 4D int16, time axis
    "example_nifti2.nii.gz",  # NIfTI-2
    "functional.nii",  # int16 with scl_slope and scl_inter
    "reoriented_anat_moved.nii",  # big-endian float32
    "standard.nii.gz",  # uint8
]


@pytest.fixture(scope="module")
def phantom(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return write_dwi_phantom(
        tmp_path_factory.mktemp("phantom"), shape=(20, 24, 18), n_directions=12
    )


@pytest.fixture(scope="module")
def oblique_bold(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A generated oblique 4D float32 time series (TR 1.5 s) with a BIDS sidecar."""
    folder = tmp_path_factory.mktemp("bold")
    shape = (19, 22, 13, 7)
    data = np.random.default_rng(3).normal(100, 10, size=shape).astype(np.float32)
    affine = oblique_affine((2.5, 2.5, 3.0), shape, degrees=17.0)
    image = nib.Nifti1Image(data, affine)
    image.header.set_xyzt_units("mm", "sec")
    image.header.set_zooms((2.5, 2.5, 3.0, 1.5))
    path = folder / "sub-01_task-rest_bold.nii.gz"
    nib.save(image, path)
    (folder / "sub-01_task-rest_bold.json").write_text(json.dumps({"RepetitionTime": 1.5}))
    return path


def _same_image(back: xr.DataArray, image: xr.DataArray) -> None:
    assert back.dims == image.dims
    assert back.dtype == image.dtype
    np.testing.assert_array_equal(back.values, image.values)
    np.testing.assert_array_equal(back.mri.affine, image.mri.affine)
    for name, coord in image.coords.items():
        np.testing.assert_array_equal(back.coords[name].values, coord.values)
    assert set(back.coords) == set(image.coords)
    for key, value in image.attrs.items():
        if key in ("source", "affine"):
            continue
        assert back.attrs[key] == value, key
    assert back.attrs["source"]["format"] == "nifti-zarr"
    assert back.attrs["provenance"]["source"]["path"] == image.attrs["source"]["path"]


@pytest.mark.parametrize("sample", SAMPLES)
def test_nibabel_samples_round_trip_through_to_zarr(sample: str, tmp_path: Path) -> None:
    image = mriflow.open_image(NIBABEL_DATA / sample)
    store = tmp_path / "image.zarr"
    assert image.mri.to_zarr(store) == str(store)
    back = mriflow.open_zarr(store)
    assert back.chunks is not None  # lazy
    _same_image(back, image)
    provenance = back.attrs["provenance"]
    assert provenance["mriflow_version"] == mriflow.__version__
    assert provenance["source"]["checksum"].startswith("sha256:")
    assert provenance["created"]
    # open_image dispatches .zarr paths to open_zarr
    np.testing.assert_array_equal(mriflow.open_image(store).values, image.values)


@pytest.mark.parametrize("sample", SAMPLES)
def test_convert_nifti_zarr_nifti_is_bit_exact(sample: str, tmp_path: Path) -> None:
    source = NIBABEL_DATA / sample
    store, back_path = tmp_path / "x.zarr", tmp_path / ("back" + "".join(source.suffixes))
    mriflow.convert(source, store)
    mriflow.convert(store, back_path)
    original, back = nib.load(source), nib.load(back_path)
    raw = np.asanyarray(original.dataobj.get_unscaled())
    raw_back = np.asanyarray(back.dataobj.get_unscaled())
    assert raw_back.dtype == raw.dtype.newbyteorder("=")
    np.testing.assert_array_equal(raw_back, raw)
    assert back.dataobj.slope == original.dataobj.slope
    assert back.dataobj.inter == original.dataobj.inter
    np.testing.assert_array_equal(back.affine, original.affine)
    # the store holds the on-disk values, the scaling sits in its NIfTI header
    store_json = json.loads((store / "zarr.json").read_text())["attributes"]["mriflow"]
    assert store_json["scl_slope"] == original.dataobj.slope


def test_oblique_dwi_keeps_gradients_scaling_and_sidecar(
    phantom: dict[str, Path], tmp_path: Path
) -> None:
    image = mriflow.open_image(phantom["dwi"])
    assert image.encoding["scl_slope"] != 1.0
    store = tmp_path / "dwi.zarr"
    mriflow.convert(phantom["dwi"], store, chunks="8,8,8")
    back = mriflow.open_zarr(store)
    _same_image(back, image)
    np.testing.assert_array_equal(back.mri.bvecs("fsl"), image.mri.bvecs("fsl"))
    assert back.chunks == ((8, 8, 4), (8, 8, 8), (8, 8, 2), (14,))
    rechunked = mriflow.open_zarr(store, chunks={"i": 20, "volume": 7})
    assert rechunked.chunks == ((20,), (8, 8, 8), (8, 8, 2), (7, 7))
    np.testing.assert_array_equal(rechunked.values, image.values)
    assert back.encoding["scl_slope"] == image.encoding["scl_slope"]
    zarr_meta = json.loads((store / "0" / "zarr.json").read_text())
    assert zarr_meta["chunk_grid"]["configuration"]["chunk_shape"] == [34 - 20, 8, 8, 8]
    assert zarr_meta["dimension_names"] == ["t", "z", "y", "x"]
    # gradients written as plain lists too, for other tools
    meta = json.loads((store / "zarr.json").read_text())["attributes"]["mriflow"]
    np.testing.assert_allclose(meta["gradients"]["bvecs_ras"], image.mri.bvecs("ras"))
    # back to NIfTI: the .bval/.bvec written next to it match the originals
    out = tmp_path / "back.nii.gz"
    mriflow.convert(store, out)
    np.testing.assert_allclose(
        np.loadtxt(out.with_name("back.bvec")),
        np.loadtxt(phantom["dwi"].with_name("sub-01_dwi.bvec")),
        atol=1e-6,
    )


def test_oblique_time_series_with_zarr_v2_and_lz4(oblique_bold: Path, tmp_path: Path) -> None:
    image = mriflow.open_image(oblique_bold)
    store = tmp_path / "bold.zarr"
    mriflow.to_zarr(image, store, zarr_format=2, compressor="lz4", chunks=(8, 8, 8))
    assert (store / ".zgroup").exists()
    attrs = json.loads((store / ".zattrs").read_text())
    assert attrs["multiscales"][0]["version"] == "0.4"
    assert attrs["multiscales"][0]["axes"][0] == {"name": "t", "type": "time", "unit": "second"}
    assert attrs["multiscales"][0]["coordinateTransformations"][0]["scale"][0] == 1.5
    back = mriflow.open_zarr(store)
    _same_image(back, image)
    np.testing.assert_array_equal(back.t.values, np.arange(7) * 1.5)


def test_views_are_written_with_their_effective_affine(phantom: dict[str, Path], tmp_path: Path):
    image = mriflow.open_image(phantom["dwi"])
    view = image.isel(i=slice(15, 2, -2), k=slice(3, 12)).transpose("k", "volume", "i", "j")
    view = view.isel(volume=slice(1, 5))
    mriflow.to_zarr(view, tmp_path / "view.zarr")
    back = mriflow.open_zarr(tmp_path / "view.zarr")
    assert back.dims == ("i", "j", "k", "volume")
    expected = view.transpose("k", "i", "j", "volume")
    np.testing.assert_array_equal(back.values, expected.values)
    np.testing.assert_allclose(back.mri.affine, expected.mri.affine, atol=1e-12)
    np.testing.assert_allclose(back.mri.bvecs("ras"), view.mri.bvecs("ras"))


def test_pyramid_levels_average_scalars_and_take_the_mode_of_labels(
    phantom: dict[str, Path], tmp_path: Path
) -> None:
    labels = mriflow.open_image(phantom["labels"])
    assert labels.attrs["kind"] == "label"
    mriflow.to_zarr(labels, tmp_path / "labels.zarr", levels=3, chunks="8,8,8")
    level1 = mriflow.open_zarr(tmp_path / "labels.zarr", level=1)
    level2 = mriflow.open_zarr(tmp_path / "labels.zarr", level=2)
    assert level1.shape == (10, 12, 9)
    assert level2.shape == (5, 6, 5)
    # a slow, obviously right mode: most frequent label of each 2x2x2 block, smallest on ties
    full = labels.values
    expected = np.empty((10, 12, 9), full.dtype)
    for index in np.ndindex(*expected.shape):
        block = full[tuple(slice(2 * n, 2 * n + 2) for n in index)].ravel()
        values, counts = np.unique(block, return_counts=True)
        expected[index] = values[np.argmax(counts)]
    np.testing.assert_array_equal(level1.values, expected)
    assert set(np.unique(level2.values)) <= set(np.unique(full))
    # voxel m of level 1 is centred between level-0 voxels 2m and 2m+1
    centre = labels.mri.voxel_to_world([0.5, 0.5, 0.5])
    np.testing.assert_allclose(level1.mri.voxel_to_world([0, 0, 0]), centre, atol=1e-9)

    dwi = mriflow.open_image(phantom["dwi"])
    mriflow.to_zarr(dwi, tmp_path / "dwi.zarr", levels=2)
    raw = np.asarray(nib.load(phantom["dwi"]).dataobj.get_unscaled())
    half = mriflow.open_zarr(tmp_path / "dwi.zarr", level=1)
    expected_raw = raw.reshape(10, 2, 12, 2, 9, 2, -1).mean(axis=(1, 3, 5))
    np.testing.assert_allclose(half.values, np.rint(expected_raw) * dwi.encoding["scl_slope"])


def test_downsample_pads_odd_edges_and_never_averages_labels() -> None:
    block = np.array([[[1, 1, 7]], [[3, 3, 7]]], dtype=np.int32)  # (2, 1, 3)
    labels = downsample(block, [0, 2], label=True)
    np.testing.assert_array_equal(labels, [[[1, 7]]])
    means = downsample(block.astype(np.float32), [0, 2], label=False)
    np.testing.assert_allclose(means, [[[2.0, 7.0]]])


def test_dataset_of_maps_round_trips_in_a_group(phantom: dict[str, Path], tmp_path: Path) -> None:
    dwi = mriflow.open_image(phantom["dwi"])
    mean = dwi.mean("volume").astype("float32")
    mean.attrs.update(dwi.attrs)
    mask = (mriflow.open_image(phantom["mask"]) > 0).astype("uint8")
    mask.attrs.update(dwi.attrs, kind="label")
    dataset = xr.Dataset({"mean": mean, "mask": mask}, attrs={"model": "demo", "shells": (0, 1000)})
    store = tmp_path / "sub-01.zarr"
    mriflow.to_zarr(dwi, store)
    mriflow.to_zarr(dataset, store, group="fits/demo")
    back = mriflow.open_zarr(store, group="fits/demo")
    assert isinstance(back, xr.Dataset)
    assert back.attrs == {"model": "demo", "shells": (0, 1000)}
    np.testing.assert_array_equal(back["mean"].values, mean.values)
    np.testing.assert_array_equal(back["mask"].values, mask.values)
    assert back["mask"].attrs["kind"] == "label"
    np.testing.assert_array_equal(back["mean"].mri.affine, dwi.mri.affine)
    # the image at the root is untouched
    np.testing.assert_array_equal(mriflow.open_zarr(store).values, dwi.values)


def test_fsspec_urls_read_and_write_and_keep_credentials_out(
    phantom: dict[str, Path], tmp_path: Path
) -> None:
    import fsspec

    image = mriflow.open_image(phantom["labels"])
    url = "memory://mriflow-tests/labels.zarr"
    name = mriflow.to_zarr(image, url, storage_options={"secret": "hunter2-token"})
    back = mriflow.open_zarr(url)
    np.testing.assert_array_equal(back.values, image.values)
    assert back.attrs["source"]["path"] == name
    memory = fsspec.filesystem("memory")
    metadata = b"".join(
        memory.cat_file(p) for p in memory.find("/mriflow-tests") if p.endswith("zarr.json")
    )
    assert b"hunter2" not in metadata
    assert b'"complete": true' in metadata
    memory.rm("/mriflow-tests", recursive=True)

    file_url = (tmp_path / "labels.zarr").as_uri()
    mriflow.to_zarr(image, file_url)
    np.testing.assert_array_equal(mriflow.open_image(file_url).values, image.values)
    assert (tmp_path / "labels.zarr" / "zarr.json").exists()


def test_source_urls_lose_their_credentials() -> None:
    from mriflow.io.zarr._store import sanitize_location

    assert (
        sanitize_location("s3://AKIAEXAMPLE:s3cr3t@bucket/sub-01.nii.gz?X-Amz-Signature=abc")
        == "s3://bucket/sub-01.nii.gz"
    )
    assert sanitize_location("/data/sub-01.nii.gz") == "/data/sub-01.nii.gz"


def test_cli_convert_both_ways(phantom: dict[str, Path], tmp_path: Path) -> None:
    from mriflow.cli import main

    store, back = tmp_path / "cli.zarr", tmp_path / "cli.nii"
    args = ["convert", str(phantom["dwi"]), str(store), "--chunks", "8,8,8"]
    assert main([*args, "--levels", "2", "--compressor", "zlib", "--zarr-format", "2"]) == 0
    assert (store / ".zgroup").exists()
    assert main(["convert", str(store), str(back)]) == 0
    original, written = nib.load(phantom["dwi"]), nib.load(back)
    np.testing.assert_array_equal(
        np.asarray(written.dataobj.get_unscaled()), np.asarray(original.dataobj.get_unscaled())
    )
    assert (
        main([*args[:2], str(phantom["dwi"]), str(tmp_path / "x.zarr"), "--compressor", "lz5"]) == 2
    )
    assert main(["convert", str(tmp_path / "none.nii.gz"), str(tmp_path / "y.zarr")]) == 1


def test_credentials_in_source_urls_are_not_stored(phantom: dict[str, Path], tmp_path: Path):
    image = mriflow.open_image(phantom["mask"])
    image.attrs["source"] = {
        "path": "s3://KEY:SECRET@bucket/sub-01_mask.nii.gz?token=t0k",
        "format": "nifti1",
    }
    mriflow.to_zarr(image, tmp_path / "m.zarr")
    text = (tmp_path / "m.zarr" / "zarr.json").read_text()
    assert "SECRET" not in text
    assert "t0k" not in text
    assert "s3://bucket/sub-01_mask.nii.gz" in text


def test_five_dimensional_images(tmp_path: Path) -> None:
    import niizarr

    data = np.arange(6 * 5 * 4 * 3 * 2, dtype=np.float32).reshape(6, 5, 4, 3, 2)
    path = tmp_path / "five.nii.gz"
    nib.save(nib.Nifti1Image(data, oblique_affine((1.0, 1.2, 1.4), data.shape)), path)
    image = mriflow.open_image(path)
    assert image.dims == ("i", "j", "k", "t", "channel")
    mriflow.convert(path, tmp_path / "five.zarr", levels=2)
    back = mriflow.open_zarr(tmp_path / "five.zarr")
    _same_image(back, image)
    reference = niizarr.zarr2nii(str(tmp_path / "five.zarr"))
    np.testing.assert_array_equal(np.asarray(reference.dataobj), data)
    assert mriflow.open_zarr(tmp_path / "five.zarr", level=1).shape == (3, 3, 2, 3, 2)


def test_convert_dicom_folder_and_bids_dataset(tmp_path: Path) -> None:
    """``mriflow convert`` takes a DICOM series folder (one store) and a BIDS root (a store
    per image at the same relative path, with its gradients and sidecar)."""
    from bids_tree import dataset, write_gradients, write_image, write_json

    from mriflow.cli import main
    from mriflow.io.dicom.synthetic import write_series

    series = write_series(tmp_path / "dicom", n_volumes=3)
    assert main(["convert", str(tmp_path / "dicom"), str(tmp_path / "dicom.zarr")]) == 0
    from_dicom = mriflow.open_image(tmp_path / "dicom")
    from_store = mriflow.open_zarr(tmp_path / "dicom.zarr")
    np.testing.assert_array_equal(from_store.values, from_dicom.values)
    np.testing.assert_allclose(from_store.mri.affine, from_dicom.mri.affine)
    del series

    root = dataset(tmp_path / "bids")
    dwi = root / "sub-01" / "dwi" / "sub-01_dwi.nii.gz"
    dwi_data = write_image(dwi, (6, 5, 4, 4), seed=1)
    bvecs = write_gradients(root / "sub-01" / "dwi" / "sub-01_dwi", [0, 1000, 1000, 2000])
    write_json(root / "sub-01" / "dwi" / "sub-01_dwi.json", {"EchoTime": 0.08})
    anat = root / "sub-02" / "ses-a" / "anat" / "sub-02_ses-a_T1w.nii"
    anat_data = write_image(anat, (6, 5, 4), seed=2)
    (root / "sub-01" / "dwi" / "notes.txt").write_text("not BIDS-named: ignored")

    out = tmp_path / "bids-zarr"
    assert main(["convert", str(root), str(out)]) == 0
    assert json.loads((out / "dataset_description.json").read_text())["Name"] == "test"
    dwi_store = mriflow.open_zarr(out / "sub-01" / "dwi" / "sub-01_dwi.zarr")
    np.testing.assert_array_equal(dwi_store.values, dwi_data)
    np.testing.assert_allclose(dwi_store.mri.bvals, [0, 1000, 1000, 2000])
    np.testing.assert_allclose(np.abs(dwi_store.mri.bvecs("fsl")[1:]), np.abs(bvecs[1:]), atol=1e-6)
    anat_store = mriflow.open_zarr(out / "sub-02" / "ses-a" / "anat" / "sub-02_ses-a_T1w.zarr")
    np.testing.assert_array_equal(anat_store.values, anat_data)
    assert sorted(p.name for p in out.rglob("*.zarr")) == [
        "sub-01_dwi.zarr",
        "sub-02_ses-a_T1w.zarr",
    ]

    # a second run refuses to overwrite; --resume keeps the complete stores
    assert main(["convert", str(root), str(out)]) == 1
    assert main(["convert", str(root), str(out), "--resume"]) == 0
    # one store as the destination of a whole dataset is an error naming both
    assert main(["convert", str(root), str(tmp_path / "one.zarr")]) == 1
