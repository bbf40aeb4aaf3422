"""DICOM in: geometry against the headers, modality rules, corrupt files, no identifiers out."""

import csv
import gzip
import json
import logging
import shutil

import nibabel as nib
import numpy as np
import pydicom
import pytest
from pydicom.dataset import FileDataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage, generate_uid

from ernjax import defaults
from ernjax.data.geometry import load_image
from ernjax.errors import InputError
from ernjax.preprocess import dicom, runner

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
    patient=SECRETS[0],
    prefix="IM",
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
        path = folder / f"{prefix}{number:02d}_{k:03d}.dcm"
        ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
        ds.PatientName, ds.PatientID, ds.PatientBirthDate = patient, SECRETS[2], SECRETS[3]
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


OBLIQUE = (1.0, 0.0, 0.0, 0.0, float(np.cos(0.3)), float(np.sin(0.3)))
T1_RULE = "t1: /" + dict(dicom._GUESSES)["t1"] + "/"


def cut(path, keep):
    """Cuts a file short (an interrupted copy): keep > 0 bytes from the start, < 0 from the end."""
    data = path.read_bytes()
    path.write_bytes(data[:keep])


def assert_matches_headers(nii, files):
    """Each pixel of each DICOM file lies on a voxel centre of `nii` that holds its value."""
    img = nib.load(nii)
    data, inverse = np.asarray(img.dataobj, np.float64), np.linalg.inv(img.affine)
    for f in files:
        ds = pydicom.dcmread(f)
        iop = np.array(ds.ImageOrientationPatient, float)
        dr, dc = (float(v) for v in ds.PixelSpacing)
        r, c = (a.ravel()[:, None] for a in np.mgrid[: ds.Rows, : ds.Columns])
        lps = np.array(ds.ImagePositionPatient, float) + c * dc * iop[:3] + r * dr * iop[3:]
        ras = np.c_[-lps[:, 0], -lps[:, 1], lps[:, 2], np.ones(len(lps))]
        ijk = (inverse @ ras.T)[:3].T
        np.testing.assert_allclose(ijk, np.round(ijk), atol=0.01, err_msg=f"{f} off the grid")
        index = np.round(ijk).astype(int)
        assert np.all((index >= 0) & (index < data.shape)), f"{f} outside the volume"
        value = ds.pixel_array * float(ds.get("RescaleSlope", 1)) + float(
            ds.get("RescaleIntercept", 0)
        )
        np.testing.assert_allclose(data[tuple(index.T)], value.ravel(), atol=1e-3, err_msg=str(f))


def report_rows(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_series_geometry_and_pixels_match_the_headers(tmp_path):
    vol = blob()
    write_series(tmp_path / "p1", "T1 AX SE", 3, vol)
    result = dicom.convert_cohort(tmp_path, tmp_path / "out", names=("t1",), min_slices=32)
    nii = tmp_path / "out" / "p1" / "p1_t1.nii.gz"
    assert_matches_headers(nii, sorted((tmp_path / "p1").glob("*.dcm")))
    img = load_image(nii)
    np.testing.assert_allclose(img.spacing, (0.8, 0.9, 5.5), atol=1e-4)
    (row,) = report_rows(result.report)
    assert row["matched_rule"] == T1_RULE and row["slices"] == "8"
    assert row["note"] == "fewer than 32 slices; converted"


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
    headers = [dicom.read_file(p).header for p in (tmp_path / "p1").glob("*.dcm")]
    with pytest.raises(InputError, match="subject p1.*2D image where a volume"):
        dicom.slice_planes(headers, "p1", tmp_path / "p1")
    write_series(tmp_path / "p2", "T1 AX", 2, blob(), geometry=False)
    headers = [dicom.read_file(p).header for p in (tmp_path / "p2").glob("*.dcm")]
    with pytest.raises(InputError, match="subject p2.*affine is missing"):
        dicom.slice_planes(headers, "p2", tmp_path / "p2")


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


def test_truncated_slice_refuses_the_subject_naming_subject_and_file(tmp_path):
    raw, out = tmp_path / "raw", tmp_path / "out"
    write_series(raw / "p1", "T1 AX SE", 3, blob())
    write_series(raw / "p2", "T1 AX SE", 3, blob(seed=1))
    bad = raw / "p1" / "IM03_004.dcm"
    cut(bad, -300)  # pixel data cut short
    (out / "p1").mkdir(parents=True)
    (out / "p1" / "p1_t1.nii.gz").write_bytes(b"an older conversion")
    result = dicom.convert_cohort(raw, out, names=("t1",), min_slices=4)
    message = str(result.failed["p1"])
    assert message.startswith(
        f"subject p1, file {bad}: the pixel data is truncated (660 of 960 bytes); series 3 is "
        "refused and nothing of it is written. To convert it without the corrupt files, set "
        "--skip_corrupt_slices"
    ), message
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*.nii*")) == ["p2/p2_t1.nii.gz"]
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no partial folder left
    (row,) = [r for r in report_rows(result.report) if r["subject"] == "p1"]
    assert (
        row["note"].startswith("not converted: the pixel data is truncated")
        and bad.name in row["note"]
    )
    # through the preprocessing runner the subject is failed with the same message
    s = defaults.base_config().data.preprocess
    s.steps, s.qc = ("reorient",), False
    summary = runner.preprocess_cohort(
        raw, tmp_path / "prep", modalities={"t1": "ignored"}, settings=s, progress=False
    )
    assert summary.done == ["p2"] and summary.failed == {"p1": message}


def test_skip_corrupt_slices_converts_without_the_file_and_reports_it(tmp_path):
    raw, out = tmp_path / "raw", tmp_path / "out"
    write_series(raw / "p1", "T1 AX SE", 3, blob(), orientation=OBLIQUE)
    write_series(raw / "p2", "T1 AX SE", 3, blob(seed=1))
    bad = raw / "p1" / "IM03_004.dcm"  # an inner slice: its plane is interpolated
    cut(bad, -300)
    headless = raw / "p2" / "IM03_007.dcm"  # the last slice, cut in its header: series unknown
    cut(headless, 400)
    result = dicom.convert_cohort(raw, out, names=("t1",), min_slices=4, skip_corrupt=True)
    assert not result.failed
    nii = out / "p1" / "p1_t1.nii.gz"
    assert nib.load(nii).shape == (20, 24, 8)
    assert_matches_headers(nii, sorted(set((raw / "p1").glob("*.dcm")) - {bad}))
    img = load_image(nii)
    position = np.array(pydicom.dcmread(bad).ImagePositionPatient, float) * [-1, -1, 1]
    k = int(round((np.linalg.inv(img.affine) @ np.r_[position, 1])[2]))
    np.testing.assert_allclose(
        img.data[:, :, k], (img.data[:, :, k - 1] + img.data[:, :, k + 1]) / 2, atol=1e-3
    )
    assert nib.load(out / "p2" / "p2_t1.nii.gz").shape == (20, 24, 7)
    assert_matches_headers(
        out / "p2" / "p2_t1.nii.gz", sorted(set((raw / "p2").glob("*.dcm")) - {headless})
    )
    notes = {r["subject"]: r["note"] for r in report_rows(result.report)}
    assert notes["p1"] == (
        f"dropped corrupt file {bad} (the pixel data is truncated (660 of 960 bytes)); "
        "slice(s) 5 of 8 interpolated (missing); converted"
    )
    assert f"dropped corrupt file {headless}" in "".join(
        r["note"] for r in report_rows(result.report) if r["subject"] == "p2"
    )


def test_no_patient_identifier_in_report_sidecars_or_logs(tmp_path, caplog):
    raw, out = tmp_path / "raw", tmp_path / "out"
    write_series(raw / "case01", "AX T1 DOE JOHN", 3, blob(), patient="DOE^JOHN")
    write_series(
        raw / "case01", "T2 john doe 1961-02-03", 4, blob(), patient="DOE^JOHN", prefix="DOE_JOHN_"
    )
    bad = raw / "case01" / "DOE_JOHN_04_002.dcm"
    cut(bad, -300)
    secrets = (b"DOE", b"JOHN", b"PID-SECRET-4711", b"19610203", b"1961-02-03")
    with caplog.at_level(logging.DEBUG):
        refused = dicom.convert_cohort(raw, tmp_path / "refused", names=("t1", "t2"))
        result = dicom.convert_cohort(raw, out, names=("t1", "t2"), skip_corrupt=True)
    assert "***_***_04_002.dcm" in str(refused.failed["case01"])
    assert sorted(p.name for p in (out / "case01").iterdir()) == [
        "case01_t1.json",
        "case01_t1.nii.gz",
        "case01_t2.json",
        "case01_t2.nii.gz",
    ]
    written = [p for p in [*out.rglob("*"), *(tmp_path / "refused").rglob("*")] if p.is_file()]
    for path in written:
        data = path.read_bytes()
        data = gzip.decompress(data) if path.suffix == ".gz" else data
        for secret in secrets:
            assert secret not in data.upper(), f"{secret} in {path}"
    for secret in secrets:
        assert secret.decode() not in caplog.text.upper()
        assert secret.decode() not in str(refused.failed).upper()
    rows = report_rows(result.report)
    assert list(rows[0]) == ["subject", "series", "slices", "modality", "matched_rule", "note"]
    assert [(r["series"], r["modality"], r["matched_rule"]) for r in rows] == [
        ("3", "t1", T1_RULE),
        ("4", "t2", "t2: /" + dict(dicom._GUESSES)["t2"] + "/"),
    ]
    sidecar = json.loads((out / "case01" / "case01_t1.json").read_text())
    assert sidecar["SeriesDescription"] == "AX T1 *** ***"


def nifti_as_dicom(nii, folder, number, description):
    """Writes a NIfTI volume as a DICOM series: its pixels, and its grid in the DICOM headers."""
    img = nib.load(nii)
    lps = np.diag([-1.0, -1.0, 1.0, 1.0]) @ img.affine
    row, col = (lps[:3, i] / np.linalg.norm(lps[:3, i]) for i in (0, 1))
    data = np.asarray(img.dataobj)
    volume = (data.transpose(1, 0, 2) - data.min()).astype(np.uint16)
    origin = lps[:3, 3]
    if np.cross(row, col) @ lps[:3, 2] < 0:  # write_series steps along the normal, as DICOM does
        volume, origin = volume[:, :, ::-1], (lps @ [0, 0, volume.shape[2] - 1, 1])[:3]
    write_series(
        folder,
        description,
        number,
        volume,
        spacing=(np.linalg.norm(lps[:3, 1]), np.linalg.norm(lps[:3, 0])),
        thickness=float(np.linalg.norm(lps[:3, 2])),
        orientation=np.r_[row, col],
        origin=origin,
        prefix=f"S{number}_",
    )


def test_real_tcga_series_geometry_equals_the_headers(shared_data, tmp_path):
    """The 4 series of TCGA-FG-6692 (oblique, 0.9x0.9x5.5 mm, each its own grid)."""
    folder = shared_data / "tcga_fg6692_raw"
    if not folder.is_dir():
        pytest.skip(f"{folder} not found (see ../shared/data/README.md)")
    raw, subject = tmp_path / "raw", "TCGA-FG-6692"
    real_dicom = any(dicom.is_dicom(p) for p in folder.rglob("*"))
    if real_dicom:
        shutil.copytree(folder, raw)
    else:  # the share keeps these scans as NIfTI: their pixels and grids as DICOM headers
        names = {"t1": "T1 AX SE", "t1c": "MRHR T1 AX POST GAD SE", "t2": "MRHR T2 AX SE"}
        names["fla"] = "MRHR FLAIR AX SE IR"
        for number, (suffix, description) in enumerate(names.items(), 1):
            (nii,) = folder.glob(f"*/*_{suffix}.nii.gz")
            nifti_as_dicom(nii, raw / subject / suffix, number, description)
    modalities = ("t1", "t1c", "t2", "flair")
    result = dicom.convert_cohort(raw, tmp_path / "out", names=modalities, min_slices=20)
    assert not result.failed, result.failed
    files = sorted(p for p in (raw / subject).rglob("*") if dicom.is_dicom(p))
    numbers = {p: str(pydicom.dcmread(p, stop_before_pixels=True).SeriesNumber) for p in files}
    converted = [r for r in report_rows(result.report) if r["note"].endswith("converted")]
    assert sorted(r["modality"] for r in converted) == sorted(modalities)
    for row in converted:
        nii = tmp_path / "out" / subject / f"{subject}_{row['modality']}.nii.gz"
        series = [p for p in files if numbers[p] == row["series"]]
        assert len(series) == nib.load(nii).shape[2] >= 20
        assert_matches_headers(nii, series)
    if real_dicom:
        return
    # a file lost from the T2 series: refused by default; with the option, the other 25 slices
    # keep their header positions and the lost one is interpolated
    t2 = sorted((raw / subject / "t2").glob("*.dcm"))
    t2.pop(13).unlink()
    refused = dicom.convert_cohort(raw, tmp_path / "o2", names=("t2",))
    assert "lacks 1 slice(s) between its first and last" in str(refused.failed[subject])
    dicom.convert_cohort(raw, tmp_path / "o3", names=("t2",), skip_corrupt=True)
    nii = tmp_path / "o3" / subject / f"{subject}_t2.nii.gz"
    assert nib.load(nii).shape[2] == 26
    assert_matches_headers(nii, t2)
