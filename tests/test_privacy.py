"""Derived outputs carry no patient identity from DICOM: grep every byte written and logged
(NIfTI, zarr, .trk/.tck/.trx, console, logs)."""

from __future__ import annotations

import gzip
import logging

import pydicom

import mriflow
from mriflow.cli import main
from mriflow.io.dicom import synthetic

IDENTITY = {
    "PatientName": "Doe^Jane",
    "PatientID": "ID-4471-XYZ",
    "PatientBirthDate": "19700131",
    "InstitutionName": "Saint Example Hospital",
    "StationName": "MRSTATION77",
    "DeviceSerialNumber": "SN99887766",
    "ReferringPhysicianName": "Who^Doctor",
    "AccessionNumber": "ACC55443322",
}


def _files_under(path):
    return [p for p in path.rglob("*") if p.is_file()] if path.is_dir() else [path]


def test_no_identity_in_any_output(tmp_path, caplog, capsys):
    written = synthetic.write_series(tmp_path / "dicom", shape=(12, 10, 4), n_volumes=3)
    for path in written.files:
        dataset = pydicom.dcmread(path)
        for keyword, value in IDENTITY.items():
            setattr(dataset, keyword, value)
        dataset.save_as(path, enforce_file_format=True)
    caplog.set_level(logging.DEBUG)

    image = mriflow.open_image(tmp_path / "dicom")
    outputs = tmp_path / "out"
    outputs.mkdir()
    image.mri.to_nifti(outputs / "series.nii.gz")
    image.mri.to_nifti(outputs / "series.nii")
    mriflow.to_zarr(image, outputs / "series.zarr")
    mriflow.to_zarr(mriflow.open_zarr(outputs / "series.zarr"), outputs / "copy.zarr")
    import numpy as np

    from mriflow.track import Tractogram

    tracts = Tractogram(  # streamlines on the DICOM series' grid: headers come from it
        positions=np.array([[0, 0, 0], [1, 1, 1], [2, 2, 2]], np.float32),
        offsets=np.array([0, 3], np.int64),
        seed_ids=np.array([0], np.int64),
        stop_reasons=np.zeros((1, 2), np.uint8),
        affine=image.mri.affine,
        dimensions=tuple(int(n) for n in image.mri.grid_shape),
    )
    for suffix in (".trk", ".tck", ".trx"):
        tracts.save(outputs / f"tracts{suffix}")
    assert main(["-vv", "info", str(tmp_path / "dicom")]) == 0
    assert main(["-vv", "dicom", str(tmp_path / "dicom")]) == 0

    texts = {"attrs": repr(image.attrs) + repr(image.encoding), "logs": caplog.text}
    captured = capsys.readouterr()
    texts["console"] = captured.out + captured.err
    for path in _files_under(outputs):
        raw = path.read_bytes()
        if path.suffix == ".gz":
            raw = gzip.decompress(raw)
        if path.suffix == ".trx":  # a zip: read every member
            import zipfile

            with zipfile.ZipFile(path) as archive:
                raw = b"".join(archive.read(name) for name in archive.namelist())
        texts[str(path)] = raw.decode("latin-1")
    assert len(texts) > 6
    for where, text in texts.items():
        for keyword, value in IDENTITY.items():
            for form in {value, value.replace("^", " ")}:
                assert form not in text, f"{keyword} leaked into {where}"
