"""Find a BIDS cohort's subjects: participants.tsv + BIDS file names -> the same Subjects.

The layout (`config.data.layout="bids"`) of most neuroimaging tools and of ClinicaDL:

    DIR/participants.tsv          tab-separated: participant_id (sub-<label>), the label column
    DIR/sub-<id>/[ses-<s>/]anat/sub-<id>_[ses-<s>_][ce-<agent>_]..._<suffix>.nii[.gz]
    DIR/derivatives/<pipeline>/sub-<id>/[ses-<s>/]anat/..._label-lesion_mask.nii.gz  (masks)

Each modality is a BIDS query, `[key-value_]...<suffix>` (`config.data.bids.modalities`):
"T1w", "ce-*_T1w", "acq-mprage_T1w"; a value may hold glob wildcards. A file matches when its
suffix is the query's and every entity the query names has a matching value. Entities the query
leaves out may take any value, except `ce` (contrast enhancement): a query without `ce` matches
only files without it, so "T1w" is the plain T1 and never also the contrast-enhanced one. The
lesion mask is a query too (`config.data.bids.mask`, "" for none), looked for in the subject's
anat folder under `config.data.bids.mask_dir` (a glob relative to DIR, default "derivatives/*"),
without the `ce` rule (a mask's name may carry its source's entities).

Sessions (`config.data.bids.session`): "first" or "last" takes one session per participant (in
natural order of the labels: ses-2 before ses-10), a label ("02" or "ses-02") that session, and
"all" makes every session its own example with subject_id `sub-<id>_ses-<s>`. Every Subject's
metadata holds `participant_id` and `session`, so `config.data.group_column="participant_id"`
keeps a participant's sessions in one split and fold (the config check sets it for "all").

Labels come from participants.tsv's label column (`config.data.bids.label_column`); "n/a" means
missing, as BIDS says. The other columns are metadata, as labels.csv's are. Several files
matching one query (two runs) stop the subject, naming the files, unless they differ only in
their `run` and `config.data.bids.run` says which to take ("first" or "last").
Every bad input is one line naming the subject, the file and the problem, with the same
`on_error` behaviour as the pattern layout (`ernjax.data.cohort`).
"""

import csv
import dataclasses
import fnmatch
import io
import logging
import re
import unicodedata
from collections.abc import Mapping, Sequence
from pathlib import Path

from ernjax.data import cohort as cohort_lib
from ernjax.errors import InputError

PARTICIPANTS = "participants.tsv"
SESSIONS = ("first", "last", "all")  # or one session's label
RUNS = ("", "first", "last")  # "": two files that differ only in their run stop the subject
MISSING = ("n/a", *cohort_lib.MISSING_LABELS)  # BIDS writes a missing value as "n/a"
CONTRAST = "ce"  # the entity a query must name to match a contrast-enhanced file
_LABEL = r"[0-9a-zA-Z]+"
_NAME = re.compile(rf"^sub-({_LABEL})((?:_{_LABEL}-{_LABEL})*)_({_LABEL})\.nii(?:\.gz)?$")
NAME_FORM = "sub-<label>[_ses-<label>][_<key>-<value>...]_<suffix>.nii[.gz]"


@dataclasses.dataclass(frozen=True)
class Query:
    """A parsed BIDS query: the entities it names (key -> glob of the value) and the suffix."""

    entities: tuple[tuple[str, str], ...]
    suffix: str

    def matches(self, entities: Mapping[str, str], suffix: str, *, contrast_rule: bool) -> bool:
        """True if a file with these entities and suffix is what the query asks for."""
        named = dict(self.entities)
        if suffix != self.suffix:
            return False
        if contrast_rule and CONTRAST not in named and CONTRAST in entities:
            return False
        return all(k in entities and fnmatch.fnmatchcase(entities[k], v) for k, v in named.items())


def parse_query(text: str, field: str) -> Query:
    """Parses "ce-*_T1w" into a Query.

    Args:
      text: the query (a trailing .nii or .nii.gz is ignored).
      field: the config field it comes from, for the error message.

    Raises:
      ValueError: not `[key-value_]...<suffix>`, or it names sub or ses (the layout's own).
    """
    body = re.sub(r"\.nii(\.gz)?$", "", str(text).strip())
    parts = body.split("_") if body else []
    entities = [p.split("-", 1) for p in parts[:-1]]
    ok = (
        parts
        and re.fullmatch(_LABEL, parts[-1])
        and all(len(e) == 2 and re.fullmatch(_LABEL, e[0]) and e[1] for e in entities)
    )
    if not ok:
        raise ValueError(
            f"{field}={text!r} is not a BIDS query like 'T1w', 'ce-*_T1w' or "
            "'acq-mprage_T1w' ([key-value_]...suffix)"
        )
    if named := [k for k, _ in entities if k in ("sub", "ses")]:
        raise ValueError(
            f"{field}={text!r} names {', '.join(named)}: subjects and sessions come from the "
            "folders (config.data.bids.session chooses the sessions)"
        )
    return Query(tuple((k, v) for k, v in entities), parts[-1])


def parse_name(name: str) -> tuple[dict[str, str], str] | None:
    """A BIDS file name -> (entities with sub and ses, suffix); None when it is not one."""
    m = _NAME.match(name)
    if not m:
        return None
    pairs = [p.split("-", 1) for p in m.group(2).split("_")[1:]]
    keys = [k for k, _ in pairs]
    if len(set(keys)) != len(keys) or "sub" in keys:
        return None  # an entity given twice
    return {"sub": m.group(1), **dict(pairs)}, m.group(3)


def check_settings(settings: Mapping) -> None:
    """The BIDS settings (`config.data.bids` less modalities and mask) as the reader takes them.

    Raises:
      ValueError: an empty label column, an unknown session choice or run choice.
    """
    if not settings["label_column"]:
        raise ValueError("config.data.bids.label_column is empty: name participants.tsv's label")
    session = str(settings["session"])
    if session not in SESSIONS and not re.fullmatch(_LABEL, session.removeprefix("ses-")):
        raise ValueError(
            f"config.data.bids.session={session!r}: expected first, last, all or a session "
            "label such as 02 (or ses-02)"
        )
    if settings["run"] not in RUNS:
        raise ValueError(f"config.data.bids.run={settings['run']!r}: expected '', first or last")


# ----------------------------------------------------------------------------- participants
def read_participants(cohort_dir, label_column: str) -> list[dict[str, str]]:
    """participants.tsv's rows: column -> cell.

    Returns:
      One dict per row, participant_id in Unicode's composed form (NFC); "n/a" cells become ""
      (missing), as labels.csv's empty cells.

    Raises:
      InputError: no participants.tsv, not UTF-8, no participant_id or label column, a row
        with more or fewer cells than columns, or a participant_id that is not sub-<label>.
    """
    path = Path(cohort_dir) / PARTICIPANTS
    if not path.is_file():
        raise InputError(
            "",
            path,
            f"{PARTICIPANTS} not found (BIDS: a tab-separated table with the columns "
            f"participant_id and {label_column})",
        )
    reader = csv.reader(io.StringIO(cohort_lib._utf8_text(path), newline=""), delimiter="\t")
    header = [c.strip() for c in next(reader, [])]
    wanted = (("participant_id", "BIDS"), (label_column, "config.data.bids.label_column"))
    for column, why in wanted:
        if column not in header:
            raise InputError("", path, f"no column {column!r} ({why}); the columns are {header}")
    rows = []
    for cells in reader:
        if not any(c.strip() for c in cells):
            continue  # a blank line
        line = reader.line_num
        row = dict(zip(header, (c.strip() for c in cells), strict=False))
        pid = unicodedata.normalize("NFC", row.get("participant_id", ""))
        if len(cells) != len(header):
            raise InputError(
                pid,
                path,
                f"line {line} has {len(cells)} cells for {len(header)} columns (separate the "
                "cells with tabs; write n/a for a missing value)",
            )
        if not re.fullmatch(f"sub-{_LABEL}", pid):
            raise InputError(
                pid, path, f"line {line}: participant_id {pid!r} is not like sub-01 (BIDS)"
            )
        row = {k: ("" if v in MISSING else v) for k, v in row.items()}
        rows.append({**row, "participant_id": pid})
    return rows


# ----------------------------------------------------------------------------- sessions
def _natural(label: str) -> list:
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", label)]


def session_folders(folder: Path) -> list[Path]:
    """The participant folder's ses-* folders, in natural order of their labels."""
    found = [p for p in folder.iterdir() if p.is_dir() and p.name.startswith("ses-")]
    return sorted(found, key=lambda p: _natural(p.name[4:]))


def examples_of(folder: Path, session: str) -> list[tuple[str, str, Path]]:
    """(subject_id, session, folder holding anat/) of a participant's examples.

    Args:
      folder: DIR/sub-<id>.
      session: config.data.bids.session.

    Raises:
      InputError: the session asked for is not there.
    """
    pid, found = folder.name, session_folders(folder)
    if not found:
        if session in SESSIONS:
            return [(pid, "", folder)]
        raise InputError(
            pid, folder, f"has no session folders, and config.data.bids.session={session!r}"
        )
    if session == "all":
        return [(f"{pid}_{s.name}", s.name, s) for s in found]
    if session in ("first", "last"):
        chosen = found[0] if session == "first" else found[-1]
        return [(pid, chosen.name, chosen)]
    want = "ses-" + session.removeprefix("ses-")
    if not (folder / want).is_dir():
        names = ", ".join(s.name for s in found)
        raise InputError(pid, folder, f"has no session {want} (it has {names})")
    return [(pid, want, folder / want)]


def participant_folders(cohort_dir: Path) -> dict[str, Path]:
    """participant_id (NFC) -> DIR/sub-<id>; other top-level folders (derivatives, code) aren't."""
    return {
        unicodedata.normalize("NFC", p.name): p
        for p in cohort_dir.iterdir()
        if p.is_dir() and p.name.startswith("sub-")
    }


def label_rows(cohort_dir, settings: Mapping) -> list[dict[str, str]]:
    """The rows of the examples a cohort gives, in labels.csv's form (no image is opened).

    One row per example of each participant that has both a row and a folder (a session of
    its own under session "all"): "subject_id" is the example's, "label" its participant's,
    plus "participant_id", "session" and participants.tsv's other columns. A participant
    listed twice gives its rows twice; one whose session is missing gives none.

    Raises:
      InputError: participants.tsv missing or malformed (`read_participants`).
    """
    cohort_dir, column = Path(cohort_dir), settings["label_column"]
    rows = read_participants(cohort_dir, column)
    folders = participant_folders(cohort_dir)
    out = []
    for row in rows:
        if row["participant_id"] not in folders:
            continue
        try:
            found = examples_of(folders[row["participant_id"]], str(settings["session"]))
        except InputError:
            continue
        row = {**row, "label": row[column]}
        out += [{**row, "subject_id": sid, "session": ses} for sid, ses, _ in found]
    return out


# ----------------------------------------------------------------------------- subjects
def find_subjects(
    cohort_dir,
    modalities: Mapping[str, str],
    settings: Mapping,
    *,
    mask: str = "",
    slices_column: str = "",
    centre_column: str = "",
    classes: Sequence[str] | None = None,
    on_error: str = "raise",
    labels_required: bool = True,
) -> cohort_lib.Cohort:
    """Finds and validates every example of a BIDS cohort (`cohort.find_subjects`'s twin).

    Args:
      cohort_dir: the BIDS folder (participants.tsv, sub-* folders, derivatives/).
      modalities: modality name -> BIDS query ("T1w", "ce-*_T1w").
      settings: label_column, session, mask_dir and run (`config.data.bids`).
      mask: the lesion mask's BIDS query ("" for none), under settings["mask_dir"].
      slices_column: participants.tsv column with lesion slice indices ("" for none).
      centre_column: participants.tsv column with lesion centres "x;y;z" mm ("" for none).
      classes: allowed label values, in class-index order (None: the values found, sorted).
      on_error: "raise", or "skip" to log and record bad examples in `Cohort.skipped`.
      labels_required: False: a participant with "n/a" is an unlabeled subject.

    Returns:
      The cohort, subjects sorted by subject_id (sub-<id> or sub-<id>_ses-<s>).

    Raises:
      InputError: bad input (under on_error="raise"), or no folder, no participants.tsv, no
        such column.
      ValueError: a query or setting that is not valid (the config check says so first).
    """
    subjects, skipped, several = [], [], 0
    fail = cohort_lib.failure_policy(on_error, skipped)
    check_settings(settings)
    queries = {m: parse_query(q, f"config.data.bids.modalities.{m}") for m, q in modalities.items()}
    mask_query = parse_query(mask, "config.data.bids.mask") if mask else None
    cohort_dir = Path(cohort_dir)
    if not cohort_dir.is_dir():
        raise InputError("", cohort_dir, "cohort folder not found")
    tsv, column = cohort_dir / PARTICIPANTS, settings["label_column"]
    rows = read_participants(cohort_dir, column)
    for other in (slices_column, centre_column):
        if other and rows and other not in rows[0]:
            raise InputError("", tsv, f"no column {other!r}; the columns are {list(rows[0])}")
    names = [str(c) for c in classes] if classes else sorted({r[column] for r in rows} - {""})
    folders = participant_folders(cohort_dir)
    by_id: dict[str, list[dict]] = {}
    for row in rows:
        by_id.setdefault(row["participant_id"], []).append(row)
    reader = _Reader(cohort_dir, queries, mask_query, settings, (slices_column, centre_column))
    for pid in sorted(set(by_id) | set(folders)):
        try:
            row = _row(pid, by_id.get(pid, []), folders, tsv)
            label, label_name = cohort_lib._label(
                {"subject_id": pid, "label": row[column]}, names, tsv, labels_required
            )
            several += len(session_folders(folders[pid])) > 1
            found = examples_of(folders[pid], str(settings["session"]))
        except InputError as err:
            fail(err)
            continue
        for sid, ses, folder in found:
            try:
                subjects.append(reader.subject(sid, ses, folder, row, label, label_name))
            except InputError as err:
                fail(err)
    if several and settings["session"] in ("first", "last"):
        logging.info(
            "bids: %d participants have several sessions; each gives its %s session "
            "(config.data.bids.session=all makes every session an example)",
            several,
            settings["session"],
        )
    return cohort_lib.Cohort(sorted(subjects, key=lambda s: s.subject_id), skipped)


def _row(pid: str, own: list[dict], folders: dict, tsv: Path) -> dict:
    """The participant's one participants.tsv row, its folder checked."""
    if len(own) > 1:
        raise InputError(pid, tsv, f"participant listed {len(own)} times in {PARTICIPANTS}")
    if not own:
        raise InputError(pid, folders[pid], f"participant folder has no row in {PARTICIPANTS}")
    if pid not in folders:
        raise InputError(
            pid, tsv.parent / pid, f"listed in {PARTICIPANTS} but the participant folder is missing"
        )
    return own[0]


@dataclasses.dataclass
class _Reader:
    """Finds one example's files by the queries (the settings of one `find_subjects`)."""

    cohort_dir: Path
    queries: dict[str, Query]
    mask: Query | None
    settings: Mapping
    columns: tuple[str, str]  # slices, centre

    def subject(self, sid, session, folder, row, label, label_name) -> cohort_lib.Subject:
        """The Subject of one example: its folder holds anat/."""
        pid = row["participant_id"]
        anat = folder / "anat"
        if not anat.is_dir():
            raise InputError(sid, anat, "no anat folder (BIDS: sub-<id>/[ses-<s>/]anat/)")
        files = _named_files([anat], sid, pid, session)
        found = {m: self._one(files, q, sid, anat, m, True) for m, q in self.queries.items()}
        mask = None
        if self.mask is not None:
            rel = Path(pid, session, "anat") if session else Path(pid, "anat")
            dirs = [d / rel for d in self._mask_roots() if (d / rel).is_dir()]
            where = self.cohort_dir / self.settings["mask_dir"] / rel
            masks = _named_files(dirs, sid, pid, session)
            mask = self._one(masks, self.mask, sid, where, "lesion mask", False)
        slices_column, centre_column = self.columns
        tsv = self.cohort_dir / PARTICIPANTS
        slices = cohort_lib.parse_slices(row[slices_column], sid, tsv) if slices_column else None
        centre = cohort_lib.parse_centre(row[centre_column], sid, tsv) if centre_column else None
        own = (self.settings["label_column"], slices_column, centre_column)
        meta = {k: v for k, v in row.items() if k not in own}
        meta["session"] = session
        return cohort_lib.Subject(sid, label, label_name, found, mask, slices, meta, centre)

    def _mask_roots(self) -> list[Path]:
        pattern = str(self.settings["mask_dir"])
        if pattern in ("", "."):
            return [self.cohort_dir]
        return sorted(p for p in self.cohort_dir.glob(pattern) if p.is_dir())

    def _one(self, files, query: Query, sid, where: Path, what: str, contrast_rule: bool) -> Path:
        """The one file of `files` the query matches (a run chosen by settings["run"])."""
        hits = [f for f in files if query.matches(*files[f], contrast_rule=contrast_rule)]
        shown = _query_text(query)
        if not hits:
            held = ", ".join(sorted(f.name for f in files)) or "no NIfTI file"
            problem = f"no {what} file matches the BIDS query {shown!r} ({held})"
            raise InputError(sid, where, problem)
        if len(hits) > 1:
            return _pick_run(hits, files, self.settings["run"], sid, where, what, shown)
        return hits[0]


def _pick_run(hits, files, run: str, sid, where, what, shown) -> Path:
    """One of several matches that differ only in their run, by `run`; else InputError."""
    names = ", ".join(sorted(f.name for f in hits))
    rest = {tuple(sorted((k, v) for k, v in files[f][0].items() if k != "run")) for f in hits}
    only_runs = len(rest) == 1 and all("run" in files[f][0] for f in hits)
    if only_runs and run:
        ordered = sorted(hits, key=lambda f: int(files[f][0]["run"]))
        return ordered[0] if run == "first" else ordered[-1]
    # The entities whose values differ among the files (or that some lack): the query names one.
    last, keys = files[hits[-1]][0], {k for f in hits for k in files[f][0]}
    apart = sorted(k for k in keys if any(files[f][0].get(k) != last.get(k) for f in hits))
    named = [k for k in apart if k in last]
    example = f"{named[0]}-{last[named[0]]}_{shown}" if named else shown
    fix = f"name the entity that tells them apart ({', '.join(apart)}) in the query, e.g. "
    fix += repr(example)
    if only_runs:
        fix = f"config.data.bids.run=last (or first) takes one run, or {fix}"
    raise InputError(
        sid, where, f"{len(hits)} {what} files match the BIDS query {shown!r} ({names}): {fix}"
    )


def _query_text(q: Query) -> str:
    return "_".join([*(f"{k}-{v}" for k, v in q.entities), q.suffix])


def _named_files(dirs, sid, pid, session) -> dict[Path, tuple[dict, str]]:
    """NIfTI files of `dirs` -> (entities, suffix); InputError on a name that is not BIDS."""
    out = {}
    for d in dirs:
        for f in sorted(d.iterdir()):
            if f.name.startswith(".") or not f.is_file() or not re.search(r"\.nii(\.gz)?$", f.name):
                continue  # hidden files, JSON sidecars
            parsed = parse_name(f.name)
            if parsed is None:
                raise InputError(sid, f, f"not a BIDS file name ({NAME_FORM})")
            entities, suffix = parsed
            owner = "sub-" + entities["sub"]
            if owner != pid or entities.get("ses", "") != session.removeprefix("ses-"):
                mine = f"{pid}_{session}_" if session else f"{pid}_"
                raise InputError(sid, f, f"the name does not start with {mine} (its folder's)")
            out[f] = (entities, suffix)
    return out
