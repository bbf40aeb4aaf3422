"""DICOM in: geometry, modality guess and mapping, short series, no patient identifiers out."""

import gzip
import logging

import numpy as np
import pytest
from pydicom.dataset import FileDataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage, generate_uid

from ernjax import defaults
from ernjax.errors import InputError
from ernjax.preprocess import dicom, runner
from ernjax.preprocess.geometry import load_image

SECRETS = ("Doe^Jane", "Doe", "PID-SECRET-4711", "19610203")


def write_series(
    folder,
    description,
    number,
    volume,
    *,
    spacing=(0.9, 0.8),
    thickness=5.5,
    orientation=(1, 0, 0, 0, 1, 0),
    origin=(-100.0, -110.0, -40.0),
    geometry=True,
):
    """Writes `volume` (rows, columns, slices) as one DICOM series with a fake patient identity."""
    uid = generate_uid()
    row, col = np.array(orientation[:3], float), np.array(orientation[3:], float)
    normal = np.cross(row, col)
    for k in range(volume.shape[2]):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = MRImageStorage
        meta.MediaStorageSOPInstanceUID = generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        path = folder / f"IM{number:02d}_{k:03d}.dcm"
        ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
        ds.PatientName, ds.PatientID, ds.PatientBirthDate = SECRETS[0], SECRETS[2], SECRETS[3]
        ds.SOPClassUID, ds.SOPInstanceUID = MRImageStorage, meta.MediaStorageSOPInstanceUID
        ds.Modality, ds.SeriesInstanceUID, ds.SeriesNumber = "MR", uid, number
        ds.SeriesDescription, ds.InstanceNumber = description, k + 1
        if geometry:
            ds.ImageOrientationPatient = [float(v) for v in orientation]
            ds.ImagePositionPatient = [float(v) for v in np.array(origin) + k * thickness * normal]
            ds.PixelSpacing = [float(spacing[0]), float(spacing[1])]
        ds.SliceThickness = thickness
        ds.Rows, ds.Columns = volume.shape[:2]
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
        ds.RescaleSlope, ds.RescaleIntercept = 2, -10
        ds.PixelData = np.ascontiguousarray(volume[:, :, k], np.uint16).tobytes()
        folder.mkdir(parents=True, exist_ok=True)
        ds.save_as(path, enforce_file_format=True)


def blob(shape=(24, 20, 8), seed=0):
    rng = np.random.default_rng(seed)
    r, c, s = np.mgrid[: shape[0], : shape[1], : shape[2]]
    inside = ((r - 12) / 9) ** 2 + ((c - 10) / 7) ** 2 + ((s - 4) / 4) ** 2 < 1
    return (inside * 400 + rng.integers(0, 20, shape)).astype(np.uint16)


def test_series_geometry_and_pixels_match_the_headers(tmp_path):
    vol = blob()
    write_series(tmp_path / "p1", "T1 AX SE", 3, vol)
    report = dicom.convert_cohort(tmp_path, tmp_path / "out", names=("t1",), min_slices=32)
    img = load_image(tmp_path / "out" / "p1" / "p1_t1.nii.gz")
    # array axis 0 runs along the DICOM columns (row direction), axis 1 along the rows
    np.testing.assert_allclose(img.data, vol.transpose(1, 0, 2) * 2.0 - 10, atol=1e-4)
    lps_first = img.affine @ [0, 0, 0, 1] * [-1, -1, 1, 1]
    np.testing.assert_allclose(lps_first[:3], (-100, -110, -40), atol=1e-4)
    np.testing.assert_allclose(img.spacing, (0.8, 0.9, 5.5), atol=1e-4)
    text = report.read_text()
    assert "fewer than 32 slices" in text and "T1 AX SE" in text and "converted" in text


@pytest.mark.parametrize(
    "description,modality",
    [
        ("T1 AX SE", "t1"),
        ("AX T1 POST GAD", "t1c"),
        ("T1+C MPRAGE", "t1c"),
        ("MRHR T2 AX", "t2"),
        ("T2 FLAIR AX", "flair"),
        ("DWI b1000", ""),
    ],
)
def test_modality_guess_from_series_description(description, modality):
    assert dicom.guess_modality(description) == modality


def test_mapping_file_overrides_the_guess(tmp_path):
    mapping = tmp_path / "map.csv"
    mapping.write_text("series_description,modality\nSAG 3D BRAVO,t1c\nT2 AX,\n")
    table = dicom.read_mapping(mapping)
    assert dicom.guess_modality("sag 3d bravo", table) == "t1c"
    assert dicom.guess_modality("T2 AX", table) == ""


def test_single_slice_and_missing_geometry_are_named(tmp_path):
    write_series(tmp_path / "p1", "T1 AX", 1, blob()[:, :, :1])
    items = sorted(dicom._series(tmp_path / "p1").values())[0]
    with pytest.raises(InputError, match="subject p1.*2D image where a volume"):
        dicom.series_image(items, "p1", tmp_path / "p1")
    write_series(tmp_path / "p2", "T1 AX", 2, blob(), geometry=False)
    items = list(dicom._series(tmp_path / "p2").values())[0]
    with pytest.raises(InputError, match="subject p2.*affine is missing"):
        dicom.series_image(items, "p2", tmp_path / "p2")


def test_dicom_cohort_end_to_end_without_patient_identifiers(tmp_path, caplog):
    raw = tmp_path / "raw"
    for i, subject in enumerate(["case01", "case02"]):
        write_series(raw / subject / "a", "T1 AX SE", 2, blob(seed=i))
        write_series(
            raw / subject / "b",
            "T2 AX TSE",
            5,
            blob(seed=10 + i),
            orientation=(1, 0, 0, 0, 0.996, 0.087),
        )
        write_series(raw / subject / "b", "DWI", 7, blob(seed=20 + i))
    (raw / "labels.csv").write_text("subject_id,label\ncase01,necrosis\ncase02,recurrence\n")
    s = defaults.base_config().data.preprocess
    s.steps = ("reorient", "normalize")
    out = tmp_path / "out"
    with caplog.at_level(logging.DEBUG):
        summary = runner.preprocess_cohort(
            raw, out, modalities={"t1": "ignored", "t2": "ignored"}, settings=s, progress=False
        )
    assert summary.ok, summary.failed
    assert sorted(summary.done) == ["case01", "case02"]
    assert (out / "case01" / "case01_t2.nii.gz").is_file() and (out / "labels.csv").is_file()
    written = [p for p in out.rglob("*") if p.is_file()]
    assert len(written) > 6
    for path in written:
        blob_bytes = path.read_bytes()
        if path.suffix == ".gz":
            blob_bytes = gzip.decompress(blob_bytes)
        for secret in SECRETS:
            assert secret.encode() not in blob_bytes, f"{secret} leaked into {path}"
    for secret in SECRETS:
        assert secret not in caplog.text
