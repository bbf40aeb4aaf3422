"""DICOM series to NIfTI with dcm2niix, modality matched by rule, no patient identifiers out.

A DICOM cohort is a folder per subject holding the files of several series (any sub-folders).
Each series used becomes `OUT/<subject>/<subject>_<modality>.nii.gz` plus a `.json` sidecar; the
subject ID is the folder name, never a header field.

dcm2niix (the field's standard converter, from its PyPI package) turns pixels into volumes; it
handles what a plain slice stack does not (mosaic, enhanced multi-frame, compressed transfer
syntaxes). ernjax keeps what it does not do well: every file is read first, so a corrupt one is
named with its subject (dcm2niix names some and silently leaves out others, such as a file cut in
its header, stacking the rest with a wrong slice spacing); the slice positions are checked to be
evenly spaced, and the converted volume is checked against the DICOM headers before it is kept.

Identifiers: free text from the headers (descriptions, dcm2niix's sidecar and messages) reaches no
output before the header's PatientName parts, PatientID and PatientBirthDate are removed from it.
The report (`dicom_report.csv`) says which rule matched each series, not its description.
"""

import csv
import dataclasses
import json
import logging
import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

import numpy as np

from ernjax.data.geometry import Image, load_image, save_image
from ernjax.errors import InputError

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
MAPPING_RULE = "mapping file"
NO_RULE = "no rule"
REPORT_COLUMNS = ("subject", "series", "slices", "modality", "matched_rule", "note")
SKIP_SETTING = "--skip_corrupt_slices (config.data.preprocess.dicom_skip_corrupt_slices)"
_REMOVED = "***"
# Slices count as evenly spaced when each step is a whole number of the smallest step within this
# fraction of it (scanners round positions to 1e-3 mm or so; a missing slice is a whole step).
_STEP_TOLERANCE = 0.02
# A converted slice must lie this close (in voxels) to where its header puts it.
_GEOMETRY_TOLERANCE_VOXELS = 0.1


@dataclasses.dataclass
class Conversion:
    """What converting a DICOM cohort produced.

    Attributes:
      report: the report CSV (REPORT_COLUMNS).
      failed: subject -> the InputError (subject, file, problem) of each subject not converted.
    """

    report: Path
    failed: dict


@dataclasses.dataclass
class DicomFile:
    """One file of a subject's folder, read without decoding its pixels.

    Attributes:
      path: the file.
      header: the pydicom dataset, or None when unreadable.
      problem: why the file cannot be used ("" when it can).
    """

    path: Path
    header: object = None
    problem: str = ""

    @property
    def series(self) -> str:
        """The SeriesInstanceUID ("" when unknown)."""
        return str(self.header.get("SeriesInstanceUID", "")) if self.header is not None else ""


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


def match_modality(description: str, mapping: dict | None = None) -> tuple[str, str]:
    """The modality of a series and the rule that matched it.

    Args:
      description: the SeriesDescription.
      mapping: description (case-insensitive) -> modality, overriding the guess ("" = ignore).

    Returns:
      (modality, rule): modality is "" when unknown or to be ignored; rule is MAPPING_RULE,
      "<modality>: /<pattern>/" for a built-in guess, or NO_RULE. The rule holds no header text.
    """
    key = description.strip().lower()
    if mapping and key in mapping:
        return mapping[key], MAPPING_RULE
    for modality, pattern in _GUESSES:
        if re.search(pattern, key):
            return modality, f"{modality}: /{pattern}/"
    return "", NO_RULE


def guess_modality(description: str, mapping: dict | None = None) -> str:
    """The modality of a series from its description; "" when unknown or to be ignored."""
    return match_modality(description, mapping)[0]


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


def identifier_terms(headers) -> set:
    """The patient's name parts, ID and birth date (several spellings) found in `headers`."""
    terms = set()
    for ds in headers:
        name = str(ds.get("PatientName", "") or "")
        terms.update(re.split(r"[\^\s=,]+", name))
        terms.add(str(ds.get("PatientID", "") or "").strip())
        birth = str(ds.get("PatientBirthDate", "") or "").strip()
        terms.add(birth)
        if re.fullmatch(r"\d{8}", birth):  # DICOM DA is YYYYMMDD; free text may spell it out
            y, m, d = birth[:4], birth[4:6], birth[6:]
            terms.update({f"{y}-{m}-{d}", f"{d}.{m}.{y}", f"{m}/{d}/{y}", f"{d}/{m}/{y}"})
    return {t for t in terms if t}


def scrub(text: str, terms) -> str:
    """`text` with every identifier term removed (case-insensitive).

    Terms of 3 or more characters go wherever they occur ("DOEJOHN" too); shorter ones (initials)
    only as whole words, so that they do not cut up sequence names.
    """
    if not terms or not text:
        return text
    parts = [
        re.escape(t) if len(t) >= 3 else rf"\b{re.escape(t)}\b"
        for t in sorted(terms, key=len, reverse=True)
    ]
    return re.sub("|".join(parts), _REMOVED, text, flags=re.IGNORECASE)


def _scrub_json(value, terms):
    if isinstance(value, str):
        return scrub(value, terms)
    if isinstance(value, list):
        return [_scrub_json(v, terms) for v in value]
    if isinstance(value, dict):
        return {k: _scrub_json(v, terms) for k, v in value.items()}
    return value


def _is_image_storage(ds) -> bool:
    sop = ds.get("SOPClassUID") or ds.file_meta.get("MediaStorageSOPClassUID", "")
    return "Image Storage" in getattr(sop, "name", "")


def _pixel_problem(ds) -> str:
    """Why an image file's pixel data is unusable ("" when its length is right)."""
    if "PixelData" not in ds:
        return "the file has no pixel data (it is cut short)"
    syntax = ds.file_meta.get("TransferSyntaxUID")
    if syntax is not None and syntax.is_compressed:
        return ""  # encapsulated: its length says nothing; dcm2niix reports a bad one
    try:
        frames = int(ds.get("NumberOfFrames", 1) or 1)
        expected = ds.Rows * ds.Columns * ds.SamplesPerPixel * frames * (ds.BitsAllocated // 8)
    except (AttributeError, TypeError, ValueError):
        return "the image size (rows, columns, bits) is missing from the header"
    if len(ds.PixelData) < expected:
        return f"the pixel data is truncated ({len(ds.PixelData)} of {expected} bytes)"
    return ""


def read_file(path) -> DicomFile | None:
    """Reads one file's header; None for a DICOM file that holds no image (DICOMDIR, reports)."""
    import pydicom

    path = Path(path)
    try:
        ds = pydicom.dcmread(path)
    except Exception as e:  # noqa: BLE001 - pydicom raises many types for damaged files
        return DicomFile(path, None, f"cannot be read as DICOM ({type(e).__name__}: {e})")
    if not _is_image_storage(ds) and "PixelData" not in ds:
        return None
    problem = _pixel_problem(ds)
    if not problem and "SeriesInstanceUID" not in ds:
        problem = "the header has no SeriesInstanceUID (it is cut short)"
    return DicomFile(path, ds, problem)


def _where(subject_dir: Path, path, terms) -> str:
    """A path for messages: below the subject folder, file names can hold the patient's name."""
    try:
        return str(subject_dir / scrub(str(Path(path).relative_to(subject_dir)), terms))
    except ValueError:
        return str(path)


def _multiframe(ds) -> bool:
    """Enhanced multi-frame or mosaic: one file holds many slices, geometry left to dcm2niix."""
    return int(ds.get("NumberOfFrames", 1) or 1) > 1 or "MOSAIC" in list(ds.get("ImageType", []))


def slice_planes(headers, subject: str, where) -> tuple[np.ndarray, float]:
    """The plane index of each slice on an evenly spaced grid, and the spacing (mm).

    Args:
      headers: the slices' datasets.
      subject: the subject ID, for messages.
      where: the series' first file, for messages.

    Returns:
      (planes, spacing): planes[i] is the grid plane of headers[i] (0 = the lowest position
      along the slice normal); planes missing from it are slices absent from the series.

    Raises:
      InputError: missing geometry, a single slice, slices differing in orientation or size,
        several slices at one position (echoes or repetitions), or uneven spacing.
    """
    try:
        iops = np.array([[float(v) for v in ds.ImageOrientationPatient] for ds in headers])
        positions = np.array([[float(v) for v in ds.ImagePositionPatient] for ds in headers])
        [float(v) for v in headers[0].PixelSpacing]
    except (AttributeError, TypeError, ValueError) as e:
        raise InputError(
            subject,
            where,
            "the affine is missing (no orientation/position/spacing in the DICOM headers)",
        ) from e
    if len(headers) < 2:
        raise InputError(subject, where, "a single 2D image where a volume is expected")
    if np.abs(iops - iops[0]).max() > 1e-4:
        raise InputError(subject, where, "the slices of this series differ in orientation")
    if len({(ds.Rows, ds.Columns) for ds in headers}) != 1:
        raise InputError(subject, where, "the slices of this series differ in size")
    normal = np.cross(iops[0, :3], iops[0, 3:])
    depth = positions @ (normal / np.linalg.norm(normal))
    steps = np.diff(np.sort(depth))
    if steps.min() < 1e-3:
        raise InputError(
            subject,
            where,
            "several slices lie at one position (echoes or repetitions in one series); "
            "ernjax takes one 3D volume per modality",
        )
    spacing = float(steps.min())
    ratio = steps / spacing
    if np.abs(ratio - np.round(ratio)).max() > _STEP_TOLERANCE:
        raise InputError(
            subject,
            where,
            f"the slices are unevenly spaced ({steps.min():.3f} to {steps.max():.3f} mm "
            "between neighbours); NIfTI needs one slice spacing",
        )
    return np.round((depth - depth.min()) / spacing).astype(int), spacing


def _dcm2niix_binary() -> str:
    try:
        import dcm2niix
    except ImportError as e:
        raise RuntimeError(
            "dcm2niix is not installed; it comes with ernjax (pip install -e .), or run "
            "`pip install dcm2niix`"
        ) from e
    return dcm2niix.bin


def run_dcm2niix(paths, work: Path, subject: str, where, terms, gaps=False) -> tuple[Path, dict]:
    """Converts the given files (one series) with dcm2niix; returns (NIfTI, scrubbed sidecar).

    Only these files are seen by dcm2niix (links in a folder of their own). Its sidecar is
    anonymized (`-ba y`) and then scrubbed of the identifier terms. With `gaps` (slices known to
    be missing) the plain stack is taken: dcm2niix then also tries an evenly spaced copy
    (`*_Eq_*`), which it can make of signed but not of unsigned 16-bit data (exit status 1).

    Raises:
      InputError: dcm2niix failed, made no volume, or made several (echoes, orientations);
        its message, scrubbed and with the original file names, is in the error.
    """
    src, out = work / "in", work / "out"
    src.mkdir(parents=True)
    out.mkdir()
    names = {}
    for i, path in enumerate(paths):
        link = src / f"{i:05d}.dcm"
        link.symlink_to(Path(path).resolve())
        names[str(link)] = str(path)
    cmd = [_dcm2niix_binary(), "-b", "y", "-ba", "y", "-z", "n", "-f", "series"]
    result = subprocess.run(
        [*cmd, "-o", str(out), str(src)], capture_output=True, text=True, errors="replace"
    )
    made = sorted(p for p in out.glob("*.nii") if not (gaps and "_Eq_" in p.name))
    if (result.returncode == 0 or gaps) and len(made) == 1:
        sidecar = made[0].with_suffix(".json")
        meta = json.loads(sidecar.read_text()) if sidecar.is_file() else {}
        return made[0], _scrub_json(meta, terms)
    text = result.stdout + result.stderr
    for link, original in names.items():
        text = text.replace(link, original)
    lines = [ln.strip() for ln in text.splitlines() if re.search(r"error|warning", ln, re.I)]
    said = scrub("; ".join(lines[-3:]) or text.strip()[-300:], terms)
    if made:
        problem = f"dcm2niix made {len(made)} volumes of this series (echoes or orientations)"
        said = "ernjax takes one 3D volume per modality"
    else:
        problem = f"dcm2niix could not convert this series (exit status {result.returncode})"
    raise InputError(subject, where, f"{problem}: {said}")


def _fill_planes(image: Image, planes: np.ndarray, spacing: float, normal_lps) -> Image:
    """Places dcm2niix's slices on the full grid; missing planes interpolated from neighbours.

    dcm2niix stacks the slices it got in spatial order; with a missing slice it keeps the first
    step for all of them, which puts every slice after the gap at the wrong position.
    """
    normal = np.array([-normal_lps[0], -normal_lps[1], normal_lps[2]])  # LPS -> RAS
    sign = 1.0 if image.affine[:3, 2] @ normal > 0 else -1.0
    order = np.sort(planes)
    index = order if sign > 0 else order[-1] - order[::-1]
    data = np.zeros(image.data.shape[:2] + (order[-1] + 1,), np.float32)
    data[:, :, index] = image.data
    for m in sorted(set(range(order[-1] + 1)) - set(index.tolist())):
        lo, hi = index[index < m].max(), index[index > m].min()
        w = (m - lo) / (hi - lo)
        data[:, :, m] = (1 - w) * data[:, :, lo] + w * data[:, :, hi]
    affine = image.affine.copy()
    affine[:3, 2] = sign * normal / np.linalg.norm(normal) * spacing
    return Image(data, affine)


def check_geometry(image: Image, headers, subject: str, where) -> None:
    """Checks that each slice's pixels lie where its DICOM header puts them, one slice a plane.

    Raises:
      InputError: a slice off its header position by more than a tenth of a voxel, or two
        slices on one plane.
    """
    inverse, planes = np.linalg.inv(image.affine), set()
    for ds in headers:
        iop = np.array([float(v) for v in ds.ImageOrientationPatient])
        dr, dc = (float(v) for v in ds.PixelSpacing)  # between rows, between columns
        ipp = np.array([float(v) for v in ds.ImagePositionPatient])
        corners = [(0, 0), (ds.Rows - 1, 0), (0, ds.Columns - 1)]
        lps = np.array([ipp + c * dc * iop[:3] + r * dr * iop[3:] for r, c in corners])
        ijk = (inverse @ np.c_[-lps[:, 0], -lps[:, 1], lps[:, 2], np.ones(3)].T)[:3].T
        off = np.abs(ijk - np.round(ijk)).max()
        inside = np.all((np.round(ijk) >= 0) & (np.round(ijk) < image.data.shape))
        if off > _GEOMETRY_TOLERANCE_VOXELS or not inside or len(set(np.round(ijk[:, 2]))) != 1:
            raise InputError(
                subject,
                where,
                f"the converted volume does not match the DICOM headers (a slice is {off:.2f} "
                "voxels off its header position or outside the volume); not converted",
            )
        planes.add(int(np.round(ijk[0, 2])))
    if len(planes) != len(headers):
        raise InputError(
            subject, where, "the converted volume puts two slices on one plane; not converted"
        )


def convert_series(files, dropped, subject_dir: Path, work: Path, *, skip_corrupt, terms):
    """One series to (Image, sidecar, notes).

    Args:
      files: the series' readable DicomFiles.
      dropped: its corrupt DicomFiles (refused unless `skip_corrupt`).
      subject_dir: the subject folder (for messages).
      work: an empty scratch folder.
      skip_corrupt: convert without the corrupt files, interpolating the planes they leave.
      terms: identifier terms to scrub from anything that leaves.

    Raises:
      InputError: a corrupt file (when not skipping), a gap in the slices (when not skipping),
        bad geometry, a failed conversion, or a volume that disagrees with its headers.
    """
    subject = subject_dir.name
    where = _where(subject_dir, (files or dropped)[0].path, terms)
    number = str((files or dropped)[0].header.get("SeriesNumber", "?"))
    if dropped and not skip_corrupt:
        more = f" ({len(dropped) - 1} more corrupt files in it)" if len(dropped) > 1 else ""
        raise InputError(
            subject,
            _where(subject_dir, dropped[0].path, terms),
            f"{dropped[0].problem}; series {number} is refused{more} and nothing of it is "
            f"written. To convert it without the corrupt files, set {SKIP_SETTING}",
        )
    if not files:
        raise InputError(subject, where, f"every file of series {number} is corrupt")
    headers = [f.header for f in files]
    multi = len(headers) == 1 and _multiframe(headers[0])
    planes, spacing = (np.zeros(1, int), 0.0) if multi else slice_planes(headers, subject, where)
    missing = int(planes.max()) + 1 - len(planes)
    if missing and not skip_corrupt:
        order = np.argsort(planes)
        k = int(np.argmax(np.diff(planes[order]) > 1))  # the first gap, after files[order[k]]
        raise InputError(
            subject,
            _where(subject_dir, files[order[k]].path, terms),
            f"series {number} lacks {missing} slice(s) between its first and last: after this "
            f"file the next slice position ({scrub(files[order[k + 1]].path.name, terms)}) is "
            f"{planes[order[k + 1]] - planes[order[k]]} slices on. To interpolate the missing "
            f"slices, set {SKIP_SETTING}",
        )
    paths = [f.path for f in files]
    nii, sidecar = run_dcm2niix(paths, work, subject, where, terms, gaps=missing > 0)
    try:
        image = load_image(nii, subject)
    except InputError as e:
        raise InputError(subject, where, f"dcm2niix's volume: {e.problem}") from e
    if not multi:
        iop = np.array([float(v) for v in headers[0].ImageOrientationPatient])
        image = _fill_planes(image, planes, spacing, np.cross(iop[:3], iop[3:]))
        check_geometry(image, headers, subject, where)
    notes = [
        f"dropped corrupt file {_where(subject_dir, f.path, terms)} ({f.problem})" for f in dropped
    ]
    if missing:
        gaps = sorted(set(range(int(planes.max()) + 1)) - set(planes.tolist()))
        listed = ", ".join(str(g + 1) for g in gaps)  # counted along the slice normal
        notes.append(f"slice(s) {listed} of {len(planes) + missing} interpolated (missing)")
    return image, sidecar, notes


def _note(row: dict, text: str) -> None:
    row["note"] = f"{row['note']}; {text}".lstrip("; ")


def _series_rows(subject, groups, corrupt, mapping, names, min_slices):
    """Report rows of a subject's series and the series to convert per modality."""
    rows, best = [], {}
    for index, uid in enumerate(sorted(set(groups) | set(corrupt))):
        ds = (groups.get(uid) or corrupt[uid])[0].header
        modality, rule = match_modality(str(ds.get("SeriesDescription", "")), mapping)
        count = len(groups.get(uid, [])) + len(corrupt.get(uid, []))
        row = dict(
            subject=subject,
            series=str(ds.get("SeriesNumber", index)),
            slices=count,
            modality=modality,
            matched_rule=rule,
            note="",
        )
        if count < min_slices:
            _note(row, f"fewer than {min_slices} slices")
        if modality in names and count > best.get(modality, (0,))[0]:
            best[modality] = (count, uid, row)
        rows.append(row)
    rows.sort(key=lambda r: (len(r["series"]), r["series"]))  # by series number
    chosen = {uid: (modality, row) for modality, (_, uid, row) in best.items()}
    for row in rows:
        if all(row is not r for _, r in chosen.values()):
            _note(row, "not used")
    return rows, chosen


def convert_subject(
    subject_dir: Path, out_dir: Path, *, names, mapping: dict, min_slices: int, skip_corrupt=False
) -> list:
    """Converts one subject's series; returns report rows (no identifiers, no free text).

    The series kept per modality is the one with most slices; others are reported as unused.
    The subject's folder is written whole or not at all (a failed subject has none).

    Raises:
      InputError: a corrupt file or a bad series of a modality to convert (see
        `convert_series`); a corrupt file whose series is unknown, unless `skip_corrupt`.
    """
    subject = subject_dir.name
    read = [read_file(p) for p in sorted(subject_dir.rglob("*")) if p.is_file() and is_dicom(p)]
    read = [f for f in read if f is not None]
    terms = identifier_terms(f.header for f in read if f.header is not None)
    groups, corrupt = {}, {}
    for f in read:
        f.problem = scrub(f.problem, terms)
        (corrupt if f.problem else groups).setdefault(f.series, []).append(f)
    orphans = corrupt.pop("", [])
    if orphans and not skip_corrupt:
        raise InputError(
            subject,
            _where(subject_dir, orphans[0].path, terms),
            f"{orphans[0].problem}; its series cannot be told, so no series of this subject is "
            f"converted. To convert without it, set {SKIP_SETTING}",
        )
    rows, chosen = _series_rows(subject, groups, corrupt, mapping, names, min_slices)
    final, partial = out_dir / subject, out_dir / f".{subject}.partial"
    shutil.rmtree(partial, ignore_errors=True)
    try:
        for uid, (modality, row) in sorted(chosen.items(), key=lambda x: x[1][0]):
            with tempfile.TemporaryDirectory(dir=out_dir, prefix=".dcm2niix-") as work:
                image, sidecar, notes = convert_series(
                    groups.get(uid, []),
                    corrupt.get(uid, []),
                    subject_dir,
                    Path(work),
                    skip_corrupt=skip_corrupt,
                    terms=terms,
                )
            save_image(image, partial / f"{subject}_{modality}.nii.gz")
            (partial / f"{subject}_{modality}.json").write_text(json.dumps(sidecar, indent=1))
            for text in [*notes, "converted"]:
                _note(row, text)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        shutil.rmtree(final, ignore_errors=True)  # an older conversion of changed input: stale
        raise
    shutil.rmtree(final, ignore_errors=True)
    if partial.is_dir():
        os.replace(partial, final)
    for f in orphans:
        where = _where(subject_dir, f.path, terms)
        note = f"dropped corrupt file {where} ({f.problem})"
        rows.append(dict(zip(REPORT_COLUMNS, (subject, "", 0, "", "", note), strict=True)))
    for row in rows:
        if row["series"] and row["slices"] < min_slices:
            logging.warning(
                "subject %s series %s (%s): %d slices < %d",
                subject,
                row["series"],
                row["modality"] or "?",
                row["slices"],
                min_slices,
            )
        if "dropped" in row["note"] or "interpolated" in row["note"]:
            logging.warning("subject %s series %s: %s", subject, row["series"], row["note"])
    return rows


def _write_report(rows: list, path: Path) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, REPORT_COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    os.replace(tmp, path)


def convert_cohort(
    cohort_dir,
    out_dir,
    *,
    names,
    mapping_file: str = "",
    min_slices: int = 32,
    skip_corrupt: bool = False,
) -> Conversion:
    """Converts every subject folder of a DICOM cohort to NIfTI.

    Args:
      cohort_dir: one folder per subject with its DICOM files; labels.csv is copied.
      out_dir: where `<subject>/<subject>_<modality>.nii.gz` (and `.json`) are written.
      names: the modalities wanted (series guessed as others are reported, not converted).
      mapping_file: CSV (series_description,modality) or JSON overriding the guesses.
      min_slices: series with fewer slices are reported.
      skip_corrupt: convert a series without its corrupt files (reported) instead of refusing
        the subject.

    Returns:
      The report path (subject, series number, slices, modality, matched rule, note) and the
      subjects not converted with their errors.
    """
    cohort_dir, out_dir = Path(cohort_dir), Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    mapping = read_mapping(mapping_file)
    rows, failed = [], {}
    for subject_dir in sorted(p for p in cohort_dir.iterdir() if p.is_dir()):
        try:
            rows += convert_subject(
                subject_dir,
                out_dir,
                names=set(names),
                mapping=mapping,
                min_slices=min_slices,
                skip_corrupt=skip_corrupt,
            )
        except InputError as e:  # this subject only: the others are still converted
            logging.error("DICOM: %s", e)
            failed[subject_dir.name] = e
            where = f" (file {e.path})" if e.path else ""
            rows.append(
                dict(
                    subject=subject_dir.name,
                    series="",
                    slices=0,
                    modality="",
                    matched_rule="",
                    note=f"not converted: {e.problem}{where}",
                )
            )
    if (cohort_dir / "labels.csv").is_file():
        (out_dir / "labels.csv").write_bytes((cohort_dir / "labels.csv").read_bytes())
    report = out_dir / "dicom_report.csv"
    _write_report(rows, report)
    return Conversion(report, failed)
