"""DICOM series to NIfTI, modality guessed from the series description, no patient identifiers.

A DICOM cohort is a folder per subject holding the files of several series (any sub-folders).
Each series becomes `OUT/<subject>/<subject>_<modality>.nii.gz`; the subject ID is the folder name,
never a header field. Nothing from the headers but geometry, pixel values, series number and
series description is read into the outputs or the log. Series with fewer than `min_slices`
slices are reported (Ying 2025 excluded them), and the report is written as CSV beside the output.
"""

import csv
import json
import logging
import re
from pathlib import Path

import numpy as np

from ernjax.errors import InputError
from ernjax.preprocess.geometry import Image, save_image

# Checked in order: FLAIR descriptions often also say T2, post-contrast T1 ones also say T1.
_GUESSES = (
    ("flair", r"flair|\bfla\b|dark.?fluid|\bt2.?fl"),
    (
        "t1c",
        r"t1.*(post|gad|\bgd\b|\+ ?c\b|contrast|\bce\b|\bc\+)|(post|gad|\bgd\b).*t1|mprage.*post",
    ),
    ("t1", r"\bt1|mprage|spgr|tfl3d"),
    ("t2", r"\bt2"),
)


def is_dicom(path) -> bool:
    """True when the file has the DICOM preamble ("DICM" at byte 128)."""
    try:
        with open(path, "rb") as f:
            f.seek(128)
            return f.read(4) == b"DICM"
    except OSError:
        return False


def is_dicom_cohort(cohort_dir) -> bool:
    """True when the cohort holds DICOM files and no NIfTI files."""
    files = [p for p in Path(cohort_dir).rglob("*") if p.is_file()]
    if any(p.name.endswith((".nii", ".nii.gz")) for p in files):
        return False
    return any(is_dicom(p) for p in files)


def guess_modality(description: str, mapping: dict | None = None) -> str:
    """The modality of a series from its description; "" when unknown or to be ignored.

    Args:
      description: the SeriesDescription.
      mapping: description (case-insensitive) -> modality, overriding the guess ("" = ignore).
    """
    key = description.strip().lower()
    if mapping and key in mapping:
        return mapping[key]
    for modality, pattern in _GUESSES:
        if re.search(pattern, key):
            return modality
    return ""


def read_mapping(path) -> dict:
    """A mapping file: CSV with columns series_description,modality, or a JSON object."""
    if not path:
        return {}
    text = Path(path).read_text()
    if str(path).endswith(".json"):
        rows = json.loads(text).items()
    else:
        rows = ((r["series_description"], r["modality"]) for r in csv.DictReader(text.splitlines()))
    return {str(k).strip().lower(): str(v).strip() for k, v in rows}


def _series(subject_dir: Path) -> dict:
    """SeriesInstanceUID -> list of datasets (pixel data included) of one subject."""
    import pydicom

    series = {}
    for path in sorted(p for p in subject_dir.rglob("*") if p.is_file() and is_dicom(p)):
        ds = pydicom.dcmread(path)
        series.setdefault(str(ds.get("SeriesInstanceUID", "unknown")), []).append((path, ds))
    return series


def series_image(datasets: list, subject: str, where) -> Image:
    """Stacks one series' slices into an Image (RAS+ affine from the DICOM geometry).

    Raises:
      InputError: missing or degenerate geometry (orientation, position, spacing), a single
        slice (a 2D image where a volume is expected), or slices of different sizes.
    """
    try:
        iop = np.array([float(v) for v in datasets[0][1].ImageOrientationPatient])
        spacing = [float(v) for v in datasets[0][1].PixelSpacing]
        positions = np.array([[float(v) for v in ds.ImagePositionPatient] for _, ds in datasets])
    except (AttributeError, TypeError, ValueError) as e:
        raise InputError(
            subject,
            where,
            "the affine is missing (no orientation/position/spacing in the DICOM headers)",
        ) from e
    if len(datasets) < 2:
        raise InputError(subject, where, "a single 2D image where a volume is expected")
    row, col = iop[:3], iop[3:]
    normal = np.cross(row, col)
    order = np.argsort(positions @ normal)
    positions = positions[order]
    slices = [datasets[i][1] for i in order]
    if len({s.pixel_array.shape for s in slices}) != 1:
        raise InputError(subject, where, "the slices of this series differ in size")
    pixels = np.stack(
        [
            s.pixel_array.astype(np.float32) * float(getattr(s, "RescaleSlope", 1) or 1)
            + float(getattr(s, "RescaleIntercept", 0) or 0)
            for s in slices
        ],
        axis=-1,
    )  # (rows, columns, slices)
    lps = np.eye(4)
    lps[:3, 0] = row * spacing[1]  # array axis 0 = DICOM column index (along the row direction)
    lps[:3, 1] = col * spacing[0]
    lps[:3, 2] = (positions[-1] - positions[0]) / (len(slices) - 1)
    lps[:3, 3] = positions[0]
    if abs(np.linalg.det(lps[:3, :3])) < 1e-6:
        raise InputError(subject, where, "the affine is singular (slices at one position?)")
    data = np.ascontiguousarray(pixels.transpose(1, 0, 2))
    return Image(data, np.diag([-1.0, -1.0, 1.0, 1.0]) @ lps)  # LPS (DICOM) -> RAS (NIfTI)


def convert_subject(
    subject_dir: Path, out_dir: Path, *, names, mapping: dict, min_slices: int
) -> list:
    """Converts one subject's series; returns report rows (no identifiers).

    The series kept per modality is the one with most slices; others are reported as unused.
    """
    subject = subject_dir.name
    rows, best = [], {}
    for uid_index, (_, items) in enumerate(sorted(_series(subject_dir).items())):
        ds = items[0][1]
        number = str(ds.get("SeriesNumber", uid_index))
        description = str(ds.get("SeriesDescription", ""))
        modality = guess_modality(description, mapping)
        row = dict(
            subject=subject,
            series=number,
            description=description,
            slices=len(items),
            modality=modality,
            note="",
        )
        if len(items) < min_slices:
            row["note"] = f"fewer than {min_slices} slices"
        if modality and modality in names and len(items) > best.get(modality, (0, None))[0]:
            best[modality] = (len(items), items, row)
        elif not modality or modality not in names:
            row["note"] = (row["note"] + "; not used").lstrip("; ")
        rows.append(row)
    for modality, (_, items, row) in best.items():
        where = f"{subject_dir}/series {row['series']}"
        save_image(
            series_image(items, subject, where), out_dir / subject / f"{subject}_{modality}.nii.gz"
        )
        row["note"] = (row["note"] + "; converted").lstrip("; ")
    for row in rows:
        if row["slices"] < min_slices:
            logging.warning(
                "subject %s series %s (%s): %d slices < %d",
                subject,
                row["series"],
                row["modality"] or "?",
                row["slices"],
                min_slices,
            )
    return rows


def convert_cohort(
    cohort_dir, out_dir, *, names, mapping_file: str = "", min_slices: int = 32
) -> Path:
    """Converts every subject folder of a DICOM cohort to NIfTI.

    Args:
      cohort_dir: one folder per subject with its DICOM files; labels.csv is copied.
      out_dir: where `<subject>/<subject>_<modality>.nii.gz` are written.
      names: the modalities wanted (series guessed as others are reported, not converted).
      mapping_file: CSV (series_description,modality) or JSON overriding the guesses.
      min_slices: series with fewer slices are reported.

    Returns:
      The report CSV path (subject, series number, description, slices, modality, note).
    """
    cohort_dir, out_dir = Path(cohort_dir), Path(out_dir)
    mapping = read_mapping(mapping_file)
    rows = []
    for subject_dir in sorted(p for p in cohort_dir.iterdir() if p.is_dir()):
        try:
            rows += convert_subject(
                subject_dir, out_dir, names=set(names), mapping=mapping, min_slices=min_slices
            )
        except InputError as e:  # the subject then lacks that modality and fails downstream
            logging.error("DICOM: %s", e)
            rows.append(
                dict(
                    subject=subject_dir.name,
                    series="",
                    description="",
                    slices=0,
                    modality="",
                    note=e.problem,
                )
            )
    if (cohort_dir / "labels.csv").is_file():
        (out_dir / "labels.csv").write_bytes((cohort_dir / "labels.csv").read_bytes())
    report = out_dir / "dicom_report.csv"
    out_dir.mkdir(parents=True, exist_ok=True)
    with open(report, "w", newline="") as f:
        writer = csv.DictWriter(
            f, ["subject", "series", "description", "slices", "modality", "note"]
        )
        writer.writeheader()
        writer.writerows(rows)
    return report
