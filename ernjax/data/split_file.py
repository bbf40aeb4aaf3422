"""A study's split as a file a paper can publish: subject_id,group,split,fold.

Every run writes the assignment of its records to WORKDIR/split.csv (`write`, called by
`ernjax.data.prepare`): one row per subject, its group (`config.data.group_column`, or the
subject itself), its split (train, validation, test) and its fold (0..folds-1; -1 for test).
The split is the one the records were built with; `config.data.fold` then picks which fold
validates when a run reads them.

`config.data.split.file` reads such a file back (`read`), and `apply` fixes the split with it:
  - a subject in the file keeps its split and fold exactly;
  - a subject of the cohort that the file does not list (added since) joins its group's split and
    fold when its group (patient) is in the file, test included: a group never straddles
    splits. The other new subjects are split by the usual stratified rule
    (`splits.assign_splits`) among themselves, with no test share: into train and validation
    (`config.data.split.validation`, `seed`) and the folds. They never enter the test split, so
    a published test set stays as published. A warning names every new subject and its split;
  - a subject in the file that is not in the cohort (removed, or skipped under on_error="skip")
    is dropped with a warning naming it; every other subject keeps its split, so the test split
    keeps all its remaining subjects.
The groups are the cohort's (`config.data.group_column`); the file's group column is written for
the reader and not used on input, but a group that the file puts in two splits or two folds is
refused. The records' name hashes the file's content (`digest`), so records built with another
split are never reused.
"""

import csv
import hashlib
import io
import logging
import unicodedata
from pathlib import Path

from ernjax import atomic
from ernjax.data import splits
from ernjax.errors import InputError

SPLIT_CSV = "split.csv"  # the file every run writes in its WORKDIR
COLUMNS = ("subject_id", "group", "split", "fold")
REQUIRED = ("subject_id", "split", "fold")  # group is informative (see the module docstring)
SPLITS = ("train", "validation", "test")


def write(path, assignment: dict[str, dict]) -> Path:
    """Writes an assignment (`splits.assign_splits`' form) as a split file, atomically.

    Args:
      path: the CSV to write (WORKDIR/split.csv).
      assignment: subject_id -> {"split", "fold", "group" (the subject itself when absent, as in
        records built before groups existed)}.

    Returns:
      `path`. Rows are sorted by subject ID.
    """
    out = io.StringIO()
    w = csv.writer(out, lineterminator="\n")
    w.writerow(COLUMNS)
    for sid in sorted(assignment):
        a = assignment[sid]
        w.writerow([sid, a.get("group", sid), a["split"], int(a["fold"])])
    return atomic.write_text(path, out.getvalue())


def output_path(workdir, given: str = "") -> Path:
    """WORKDIR/split.csv, which a run writes; InputError when it is also the run's input.

    Args:
      workdir: the run's (or study's) folder.
      given: `config.data.split.file`.

    Raises:
      InputError: `given` is that file: rewriting it would drop from it the subjects missing
        now, and with them the split they had in the study.
    """
    out = Path(workdir) / SPLIT_CSV
    if given and Path(given).resolve() == out.resolve():
        raise InputError(
            "",
            given,
            f"config.data.split.file is the {SPLIT_CSV} this run writes; copy it "
            f"(cp {given} study_split.csv) and give the copy",
        )
    return out


def digest(path) -> str:
    """A hash of the split file's bytes, for the records' name.

    Raises:
      InputError: the file does not exist.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError("", path, "split file not found (config.data.split.file)")
    return hashlib.sha1(path.read_bytes()).hexdigest()[:12]


def read(path, folds: int) -> dict[str, dict]:
    """Reads and checks a split file.

    Args:
      path: the CSV (`config.data.split.file`).
      folds: `config.data.split.folds`; the file's train and validation rows must use exactly
        the folds 0..folds-1, so that cross-validation trains every fold of the file.

    Returns:
      subject_id -> {"split", "fold", "group"} ("group": the file's value, or the subject).

    Raises:
      InputError: naming the file, and the subject and line where there is one: missing file
        or columns, text not UTF-8, an empty subject_id, a duplicate subject, an unknown split,
        a fold that is not an integer, a test fold other than -1, or folds that do not match.
    """
    path = Path(path)
    digest(path)  # exists
    try:
        text = path.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise InputError("", path, f"not UTF-8 text (byte {e.start}); save it as UTF-8") from None
    reader = csv.DictReader(io.StringIO(text, newline=""), skipinitialspace=True)
    cols = [c.strip() for c in reader.fieldnames or []]
    if missing := [c for c in REQUIRED if c not in cols]:
        raise InputError(
            "",
            path,
            f"a split file needs the columns {','.join(COLUMNS)} (group optional); "
            f"{', '.join(missing)} missing (found {cols})",
        )
    out, line_of = {}, {}
    for raw in reader:
        row = {(k or "").strip(): (v or "").strip() for k, v in raw.items() if k is not None}
        line = reader.line_num
        sid = unicodedata.normalize("NFC", row["subject_id"])  # as cohort.read_labels
        if not sid:
            raise InputError("", path, f"line {line} has no subject_id")
        if sid in out:
            raise InputError(
                sid, path, f"line {line}: subject listed twice (lines {line_of[sid]} and {line})"
            )
        out[sid], line_of[sid] = _entry(row, sid, path, line, folds), line
    _check_folds(out, path, folds)
    return out


def _entry(row: dict, sid: str, path: Path, line: int, folds: int) -> dict:
    """One row's {"split", "fold", "group"}, checked (see `read`)."""
    split = row["split"]
    if split not in SPLITS:
        raise InputError(sid, path, f"line {line}: split {split!r} is not one of {list(SPLITS)}")
    try:
        fold = int(row["fold"])
    except ValueError:
        raise InputError(
            sid, path, f"line {line}: fold {row['fold']!r} is not a whole number"
        ) from None
    if split == "test" and fold != -1:
        raise InputError(sid, path, f"line {line}: a test subject's fold is -1, not {fold}")
    if split != "test" and not 0 <= fold < folds:
        raise InputError(
            sid,
            path,
            f"line {line}: fold {fold} is not in 0..{folds - 1} (config.data.split.folds="
            f"{folds}); set config.data.split.folds to the file's number of folds",
        )
    return {"split": split, "fold": fold, "group": row.get("group") or sid}


def _check_folds(fixed: dict, path: Path, folds: int) -> None:
    """InputError when the file's train/validation rows leave a fold of 0..folds-1 empty."""
    used = {a["fold"] for a in fixed.values() if a["split"] != "test"}
    if used and used != set(range(folds)):
        raise InputError(
            "",
            path,
            f"the file's folds are {sorted(used)} but config.data.split.folds={folds}: set "
            f"--config.data.split.folds={max(used) + 1} (a fold without subjects cannot be "
            "cross-validated)",
        )


def apply(
    fixed: dict[str, dict],
    subject_ids,
    labels,
    groups,
    *,
    validation: float,
    folds: int,
    seed: int,
    path,
) -> dict[str, dict]:
    """The assignment of a cohort under a split file (the rules of the module docstring).

    Args:
      fixed: `read`'s output.
      subject_ids: the cohort's subjects (those that loaded).
      labels: their classes.
      groups: their groups (`config.data.group_column`, or the subject IDs).
      validation: `config.data.split.validation`, for the subjects the file does not list.
      folds: `config.data.split.folds`, likewise.
      seed: `config.data.split.seed`, likewise.
      path: the split file, for messages.

    Returns:
      subject_id -> {"split", "fold", "group"} for every subject of the cohort.

    Raises:
      InputError: a group whose subjects the file puts in different splits or folds.
    """
    group_of = dict(zip(subject_ids, groups, strict=True))
    label_of = dict(zip(subject_ids, labels, strict=True))
    if dropped := sorted(set(fixed) - set(subject_ids)):
        logging.warning(
            "split file %s: %s not in the cohort dropped (the others keep their split): %s",
            path,
            _count(dropped),
            ", ".join(dropped),
        )
    kept = {s: fixed[s] for s in subject_ids if s in fixed}
    by_group = _group_places(kept, group_of, path)
    out = {
        s: {"split": a["split"], "fold": a["fold"], "group": group_of[s]} for s, a in kept.items()
    }
    new = [s for s in subject_ids if s not in fixed]
    joined = [s for s in new if group_of[s] in by_group]
    for s in joined:
        out[s] = {**by_group[group_of[s]], "group": group_of[s]}
    rest = [s for s in new if group_of[s] not in by_group]
    out |= splits.assign_splits(
        rest,
        [label_of[s] for s in rest],
        test=0.0,
        validation=validation,
        folds=folds,
        seed=seed,
        groups=[group_of[s] for s in rest],
    )
    if new:
        logging.warning(
            "split file %s: %s of the cohort not in it; a patient's new scans join its split, "
            "other new subjects are split into train and validation (never test): %s",
            path,
            _count(new),
            ", ".join(f"{s} ({out[s]['split']}, fold {out[s]['fold']})" for s in new),
        )
    return {s: out[s] for s in subject_ids}


def _count(subjects) -> str:
    """'1 subject', '3 subjects'."""
    return f"{len(subjects)} subject{'' if len(subjects) == 1 else 's'}"


def _group_places(kept: dict, group_of: dict, path) -> dict[str, dict]:
    """Each group's one {"split", "fold"} in the file; InputError when a group straddles."""
    places: dict[str, dict] = {}
    for s, a in sorted(kept.items()):
        places.setdefault(group_of[s], {})[s] = (a["split"], a["fold"])
    for group, members in places.items():
        if len(set(members.values())) > 1:
            where = ", ".join(f"{s} ({sp}, fold {f})" for s, (sp, f) in members.items())
            raise InputError(
                "",
                path,
                f"group {group!r} (config.data.group_column) is in more than one split or fold: "
                f"{where}; a patient's subjects must share one split and fold",
            )
    return {
        g: dict(zip(("split", "fold"), next(iter(m.values())), strict=True))
        for g, m in places.items()
    }
