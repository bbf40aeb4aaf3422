"""Find a cohort's subjects: labels.csv + one glob pattern per modality -> validated Subjects.

A cohort is a folder holding `labels.csv` (columns `subject_id,label`; any other column is kept as
metadata) and one folder per subject. Each modality is found by a glob relative to the subject
folder (`**` recurses); exactly one file must match. Hidden files (names starting with ".", such
as the `._name.nii.gz` files macOS leaves on shared drives) never match, and folders whose names
start with "." or "_" are not subjects. labels.csv is UTF-8; subject IDs and folder names are
compared in Unicode's composed form (NFC), so a folder copied from macOS, which stores "ë" as "e"
plus a combining mark, still matches the ID typed in labels.csv.
"""

import csv
import dataclasses
import io
import logging
import math
import re
import unicodedata
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from ernjax.errors import InputError

MISSING_LABELS = ("", "NA", "N/A", "NaN", "nan")  # label values that mean "no label"


@dataclasses.dataclass(frozen=True)
class Subject:
    """One subject's files and label.

    Attributes:
      subject_id: the folder name (and labels.csv `subject_id`).
      label: index into the configured classes; None for an unlabeled subject.
      label_name: the labels.csv value ("" when unlabeled).
      files: modality name -> file.
      mask: the lesion mask file, or None.
      slices: lesion slice indices (stored third-axis index of the reference file), or None.
      metadata: the other labels.csv columns.
      centre: the lesion centre (x, y, z) in world mm, RAS+ (`data.centre_column`), or None.
    """

    subject_id: str
    label: int | None
    label_name: str
    files: dict[str, Path]
    mask: Path | None = None
    slices: tuple[int, ...] | None = None
    metadata: dict[str, str] = dataclasses.field(default_factory=dict)
    centre: tuple[float, float, float] | None = None


@dataclasses.dataclass
class Cohort:
    """The usable subjects, sorted by ID, and what was skipped (under on_error="skip").

    Attributes:
      subjects: the valid subjects, sorted by subject_id.
      skipped: one {"subject_id", "path", "problem"} dict per skipped subject or folder.
    """

    subjects: list[Subject]
    skipped: list[dict]


def match_one(folder: Path, pattern: str, subject: str, what: str) -> Path:
    """Returns the single file under `folder` matching `pattern` (recursive globs allowed).

    Args:
      folder: the subject folder.
      pattern: a glob relative to `folder`.
      subject: the subject ID, for the error message.
      what: what the file is ("t1", "lesion mask"), for the error message.

    Returns:
      The matching file.

    Raises:
      InputError: no file or several files match.
    """
    found = sorted(p for p in folder.glob(pattern) if p.is_file() and not p.name.startswith("."))
    if not found:
        raise InputError(subject, folder, f"no {what} file matches {pattern!r}")
    if len(found) > 1:
        names = ", ".join(str(p.relative_to(folder)) for p in found)
        raise InputError(
            subject,
            folder,
            f"{len(found)} files match the {what} pattern {pattern!r} ({names}); "
            "make the pattern specific",
        )
    return found[0]


def parse_slices(text: str, subject: str, path) -> tuple[int, ...] | None:
    """Parses "12;13;14" (semicolons, commas or spaces) into sorted slice indices.

    Args:
      text: the labels.csv cell.
      subject: the subject ID, for the error message.
      path: labels.csv, for the error message.

    Returns:
      The sorted unique indices, or None for an empty cell.

    Raises:
      InputError: anything but non-negative integers.
    """
    parts = [t for t in re.split(r"[;,\s]+", text.strip()) if t]
    if not parts:
        return None
    if not all(t.isdigit() for t in parts):
        raise InputError(
            subject, path, f"lesion slice list {text!r} is not like '12;13;14' (slice numbers)"
        )
    return tuple(sorted({int(t) for t in parts}))


def parse_centre(text: str, subject: str, path) -> tuple[float, float, float] | None:
    """Parses a lesion centre "x;y;z" (semicolons, commas or spaces), world mm RAS+.

    Args:
      text: the labels.csv cell (or a `--centre` value).
      subject: the subject ID, for the error message.
      path: where the text comes from, for the error message.

    Returns:
      (x, y, z) in mm, or None for an empty cell.

    Raises:
      InputError: not three finite numbers.
    """
    parts = [t for t in re.split(r"[;,\s]+", text.strip()) if t]
    if not parts:
        return None
    try:
        xyz = tuple(float(t) for t in parts)
    except ValueError:
        xyz = ()
    if len(xyz) != 3 or not all(math.isfinite(v) for v in xyz):
        raise InputError(
            subject,
            path,
            f"lesion centre {text!r} is not like '12.5;-30;41' (x;y;z in world mm, RAS+)",
        )
    return xyz


def read_labels(path: Path) -> list[dict[str, str]]:
    """Reads labels.csv into rows of stripped strings (a UTF-8 BOM from Excel is fine).

    Subject IDs are returned in Unicode's composed form (NFC).

    Raises:
      InputError: not UTF-8 text, no subject_id/label columns, or a row without a subject_id.
    """
    rows = []
    reader = csv.DictReader(io.StringIO(_utf8_text(path), newline=""), skipinitialspace=True)
    cols = [c.strip() for c in reader.fieldnames or []]
    if not {"subject_id", "label"} <= set(cols):
        raise InputError("", path, f"needs the columns subject_id,label (found {cols})")
    for r in reader:
        if None in r:  # more cells than header columns, e.g. an unquoted "12,13" slice list
            raise InputError(
                (r.get("subject_id") or "").strip(),
                path,
                f"line {reader.line_num} has more cells than columns (quote lists with commas)",
            )
        rows.append({k.strip(): (v or "").strip() for k, v in r.items()})
        rows[-1]["subject_id"] = unicodedata.normalize("NFC", rows[-1]["subject_id"])
        if not rows[-1]["subject_id"]:
            raise InputError("", path, f"line {reader.line_num} has no subject_id")
    return rows


def _utf8_text(path: Path) -> str:
    """The text of a UTF-8 file (BOM dropped); InputError naming the first line that is not."""
    raw = path.read_bytes()
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        # Excel's plain "CSV" is the system code page (cp1252 on Windows), which cannot be
        # guessed reliably: say where, and how to save it right.
        line = raw.count(b"\n", 0, e.start) + 1
        cell = raw.split(b"\n")[line - 1].split(b",")[0] if line > 1 else b""  # the subject
        raise InputError(
            cell.decode("utf-8", "backslashreplace").strip(),
            path,
            f"line {line} is not UTF-8 text (byte 0x{raw[e.start]:02x}); save {path.name} as "
            "UTF-8 (Excel: 'CSV UTF-8')",
        ) from None


def failure_policy(on_error: str, skipped: list) -> Callable[[InputError], None]:
    """What a cohort reader does with a bad subject (`data.on_error`), as one function.

    "raise" raises the error; "skip" logs it and appends {"subject_id", "path", "problem"} to
    `skipped` (`Cohort.skipped`).

    Raises:
      ValueError: `on_error` is neither.
    """
    if on_error not in ("raise", "skip"):
        raise ValueError(f"on_error must be 'raise' or 'skip', not {on_error!r}")

    def fail(err: InputError) -> None:
        if on_error == "raise":
            raise err
        logging.warning("skipping %s", err)
        skipped.append({"subject_id": err.subject, "path": err.path, "problem": err.problem})

    return fail


def find_subjects(
    cohort_dir,
    modalities: Mapping[str, str],
    *,
    mask_pattern: str = "",
    slices_column: str = "",
    centre_column: str = "",
    classes: Sequence[str] | None = None,
    on_error: str = "raise",
    labels_required: bool = True,
) -> Cohort:
    """Finds and validates every subject of a cohort folder.

    Args:
      cohort_dir: folder with labels.csv and one folder per subject.
      modalities: modality name -> glob relative to the subject folder (exactly one match).
      mask_pattern: glob of the lesion mask ("" for none).
      slices_column: labels.csv column with lesion slice indices ("" for none).
      centre_column: labels.csv column with lesion centres "x;y;z" in world mm ("" for none).
      classes: allowed label values, in class-index order (None: the values found, sorted).
      on_error: "raise", or "skip" to log and record bad subjects in `Cohort.skipped`.
      labels_required: True: every subject needs a label in `classes` and labels.csv must exist.
        False: without labels.csv every folder is an unlabeled subject, and an empty or NA
        label gives an unlabeled subject (for preprocessing and prediction).

    Returns:
      The cohort, subjects sorted by ID.

    Raises:
      InputError: bad input (under on_error="raise"), or no cohort folder / no labels.csv.
    """
    subjects, skipped = [], []
    fail = failure_policy(on_error, skipped)
    checked = {**modalities, **({"lesion mask": mask_pattern} if mask_pattern else {})}
    for name, pattern in checked.items():
        if not pattern or Path(pattern).is_absolute():
            raise ValueError(f"pattern of {name!r} must be a glob relative to the subject folder")
    cohort_dir = Path(cohort_dir)
    if not cohort_dir.is_dir():
        raise InputError("", cohort_dir, "cohort folder not found")
    folders = {
        unicodedata.normalize("NFC", p.name): p
        for p in cohort_dir.iterdir()
        if p.is_dir() and p.name[0] not in "._"
    }
    labels_csv = cohort_dir / "labels.csv"
    if labels_csv.exists():
        rows = read_labels(labels_csv)
    elif labels_required:
        raise InputError("", labels_csv, "labels.csv not found (columns subject_id,label)")
    else:
        rows = [{"subject_id": name, "label": ""} for name in folders]
    if slices_column and rows and slices_column not in rows[0]:
        raise InputError("", labels_csv, f"no column {slices_column!r} (lesion slice lists)")
    if centre_column and rows and centre_column not in rows[0]:
        raise InputError("", labels_csv, f"no column {centre_column!r} (lesion centres x;y;z mm)")
    if classes:
        names = [str(c) for c in classes]
    else:
        names = sorted({r["label"] for r in rows} - set(MISSING_LABELS))
    patterns = (modalities, mask_pattern, slices_column, centre_column)
    by_id = {}
    for row in rows:
        by_id.setdefault(row["subject_id"], []).append(row)
    for sid in sorted(set(by_id) | set(folders)):
        try:
            subjects.append(
                _subject(
                    sid, by_id.get(sid, []), folders, labels_csv, patterns, names, labels_required
                )
            )
        except InputError as err:
            fail(err)
    return Cohort(subjects, skipped)


def _label(row, names, labels_csv, labels_required) -> tuple[int | None, str]:
    """(class index, label name) of a row; (None, "") for an allowed missing label."""
    sid, value = row["subject_id"], row["label"]
    if value in MISSING_LABELS:
        if not labels_required:
            return None, ""
        shown = repr(value) if value else "empty"
        raise InputError(sid, labels_csv, f"label is missing ({shown}); expected one of {names}")
    if value not in names:
        raise InputError(sid, labels_csv, f"label {value!r} is not one of the classes {names}")
    return names.index(value), value


def _subject(sid, own, folders, labels_csv, patterns, names, labels_required) -> Subject:
    """Validates one subject's labels.csv row and folder into a Subject."""
    modalities, mask_pattern, slices_column, centre_column = patterns
    if len(own) > 1:
        raise InputError(sid, labels_csv, f"subject listed {len(own)} times in labels.csv")
    if not own:
        raise InputError(
            sid,
            folders[sid],
            "subject folder has no row in labels.csv: add one, or start the folder name with '_' "
            "if it holds no subject",
        )
    if sid not in folders:
        raise InputError(
            sid, labels_csv.parent / sid, "listed in labels.csv but the subject folder is missing"
        )
    row = own[0]
    label, label_name = _label(row, names, labels_csv, labels_required)
    folder = folders[sid]
    files = {m: match_one(folder, pat, sid, m) for m, pat in modalities.items()}
    mask = match_one(folder, mask_pattern, sid, "lesion mask") if mask_pattern else None
    slices = parse_slices(row[slices_column], sid, labels_csv) if slices_column else None
    centre = parse_centre(row[centre_column], sid, labels_csv) if centre_column else None
    own_columns = ("subject_id", "label", slices_column, centre_column)
    meta = {k: v for k, v in row.items() if k not in own_columns}
    return Subject(sid, label, label_name, files, mask, slices, meta, centre)
