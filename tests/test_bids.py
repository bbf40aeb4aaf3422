"""BIDS cohorts (`config.data.layout="bids"`, ernjax.data.bids; issue 20 item 3).

The reader's tests use empty placeholder files (it never opens an image): sessions chosen or each
its own example, the plain T1 never matched by the contrast-enhanced one, masks from derivatives,
and every bad input one line naming the participant, the file and the problem, or skipped and
recorded under on_error="skip". One test trains `configs/ern.py:tiny` on a BIDS cohort with
sessions, written from the synthetic phantoms under BIDS names.
"""

import csv
import logging
import shutil
from pathlib import Path

import pytest

import configs.ern
from ernjax.data import bids, check, layouts, synthetic
from ernjax.data.spec import SampleSpec
from ernjax.errors import InputError
from ernjax.train import loop

CLASSES = ("necrosis", "recurrence")
# Name in the BIDS folder of each synthetic modality (ernjax.data.synthetic's file names).
BIDS_NAMES = {"t1": "T1w", "t1c": "ce-gadolinium_T1w", "t2": "T2w", "flair": "FLAIR"}
QUERIES = {"t1": "T1w", "t1c": "ce-*_T1w", "t2": "T2w", "flair": "FLAIR"}  # the defaults
SETTINGS = dict(label_column="diagnosis", session="all", mask_dir="derivatives/*", run="")


def write_participants(root: Path, rows, header="participant_id\tage\tdiagnosis") -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "participants.tsv").write_text("\n".join([header, *rows]) + "\n")
    return root / "participants.tsv"


def add_files(root: Path, pid: str, session: str, names, *, source=None, mask=None) -> Path:
    """anat/ files of one participant's session ("" = none), copied from `source` or empty.

    Args:
      names: BIDS names after "sub-<id>_[ses-<s>_]" (e.g. "ce-gadolinium_T1w"); with `source`
        a mapping from those names to the files to copy.
      mask: the lesion mask's file to copy (or b"" for an empty one) into derivatives/lesions.
    """
    parts = [pid, session] if session else [pid]
    prefix = "_".join(parts)
    anat = root.joinpath(*parts, "anat")
    anat.mkdir(parents=True, exist_ok=True)
    for name in names:
        target = anat / f"{prefix}_{name}.nii.gz"
        shutil.copy(source[name], target) if source else target.write_bytes(b"")
    (anat / f"{prefix}_T1w.json").write_text("{}")  # a sidecar: never a candidate
    if mask is not None:
        der = root.joinpath("derivatives", "lesions", *parts, "anat")
        der.mkdir(parents=True, exist_ok=True)
        target = der / f"{prefix}_label-lesion_mask.nii.gz"
        shutil.copy(mask, target) if isinstance(mask, Path) else target.write_bytes(mask)
    return anat


@pytest.fixture
def cohort(tmp_path) -> Path:
    """sub-01: sessions 1, 2 and 10 (natural order); sub-02: none; sub-03: session 2 only."""
    root = tmp_path / "bids"
    write_participants(
        root, ["sub-01\t61\trecurrence", "sub-02\tn/a\tnecrosis", "sub-03\t47\trecurrence"]
    )
    names = list(BIDS_NAMES.values())
    for pid, session in (
        ("sub-01", "ses-1"),
        ("sub-01", "ses-2"),
        ("sub-01", "ses-10"),
        ("sub-02", ""),
        ("sub-03", "ses-2"),
    ):
        add_files(root, pid, session, names, mask=b"")
    (root / "derivatives" / "lesions" / "dataset_description.json").write_text("{}")
    return root


def find(root, *, modalities=QUERIES, mask="label-lesion_mask", **settings):
    return bids.find_subjects(
        root, modalities, {**SETTINGS, **settings}, mask=mask, classes=CLASSES
    )


def raises(root, match: str, subject: str, path: str, **kw) -> InputError:
    """The InputError of `find(root, **kw)`: one line naming `subject` and `path`."""
    with pytest.raises(InputError, match=match) as err:
        find(root, **kw)
    e = err.value
    assert e.subject == subject and (not subject or subject in str(e))
    assert path in e.path and path in str(e) and "\n" not in str(e)
    return e


# ----------------------------------------------------------------------------- the reader
def test_every_session_its_own_example_with_its_participant(cohort):
    c = find(cohort, session="all")
    ids = [s.subject_id for s in c.subjects]
    assert ids == ["sub-01_ses-1", "sub-01_ses-10", "sub-01_ses-2", "sub-02", "sub-03_ses-2"]
    s = c.subjects[1]
    assert (s.label, s.label_name) == (1, "recurrence")
    assert s.metadata == {"participant_id": "sub-01", "age": "61", "session": "ses-10"}
    assert s.files["t1"].name == "sub-01_ses-10_T1w.nii.gz"
    assert s.files["t1c"].name == "sub-01_ses-10_ce-gadolinium_T1w.nii.gz"
    assert (
        s.mask
        == cohort / "derivatives/lesions/sub-01/ses-10/anat/sub-01_ses-10_label-lesion_mask.nii.gz"
    )
    # "n/a" is missing in BIDS: an empty metadata value, as an empty labels.csv cell
    assert c.subjects[3].metadata == {"participant_id": "sub-02", "age": "", "session": ""}


@pytest.mark.parametrize(
    "session, chosen",
    [("first", ["ses-1", "", "ses-2"]), ("last", ["ses-10", "", "ses-2"])],
)
def test_one_session_per_participant_in_natural_order(cohort, session, chosen, caplog):
    with caplog.at_level(logging.INFO):
        c = find(cohort, session=session)
    assert [s.subject_id for s in c.subjects] == ["sub-01", "sub-02", "sub-03"]
    assert [s.metadata["session"] for s in c.subjects] == chosen
    assert f"1 participants have several sessions; each gives its {session}" in caplog.text


def test_a_named_session_and_who_lacks_it(cohort):
    e = raises(cohort, "has no session folders", "sub-02", "sub-02", session="2")
    assert "config.data.bids.session='2'" in e.problem
    c = bids.find_subjects(
        cohort, QUERIES, {**SETTINGS, "session": "ses-2"}, classes=CLASSES, on_error="skip"
    )
    assert [(s.subject_id, s.metadata["session"]) for s in c.subjects] == [
        ("sub-01", "ses-2"),
        ("sub-03", "ses-2"),
    ]
    assert [x["subject_id"] for x in c.skipped] == ["sub-02"]
    e = raises(
        cohort,
        r"has no session ses-7 \(it has ses-1, ses-2, ses-10\)",
        "sub-01",
        "sub-01",
        session="7",
    )


def test_plain_t1_never_matches_the_contrast_enhanced_one_and_other_entities_are_free(tmp_path):
    root = tmp_path / "b"
    write_participants(root, ["sub-01\t50\tnecrosis"])
    add_files(root, "sub-01", "", ["acq-mprage_T1w", "ce-gadolinium_acq-mprage_T1w", "T2w"])
    c = find(root, modalities={"t1": "T1w", "t1c": "ce-*_T1w", "t2": "T2w"}, mask="")
    files = c.subjects[0].files
    assert files["t1"].name == "sub-01_acq-mprage_T1w.nii.gz"
    assert files["t1c"].name == "sub-01_ce-gadolinium_acq-mprage_T1w.nii.gz"
    assert c.subjects[0].mask is None
    # a value may be a glob; a query naming another value finds nothing, and says what is there
    assert find(root, modalities={"t1c": "ce-gad*_T1w"}, mask="").subjects[0].files["t1c"]
    e = raises(
        root,
        "no t1c file matches the BIDS query 'ce-dotarem_T1w'",
        "sub-01",
        "anat",
        modalities={"t1c": "ce-dotarem_T1w"},
        mask="",
    )
    assert "sub-01_ce-gadolinium_acq-mprage_T1w.nii.gz" in e.problem


def test_two_runs_stop_the_subject_unless_a_run_is_chosen(tmp_path):
    root = tmp_path / "b"
    write_participants(root, ["sub-01\t50\tnecrosis"])
    add_files(root, "sub-01", "", ["run-1_T1w", "run-2_T1w", "run-10_T1w"])
    e = raises(
        root,
        "3 t1 files match the BIDS query 'T1w'",
        "sub-01",
        "sub-01/anat",
        modalities={"t1": "T1w"},
        mask="",
    )
    assert "sub-01_run-10_T1w.nii.gz, sub-01_run-1_T1w.nii.gz, sub-01_run-2_T1w.nii.gz" in e.problem
    assert "config.data.bids.run=last" in e.problem
    for run, chosen in (("last", "run-10"), ("first", "run-1")):
        c = find(root, modalities={"t1": "T1w"}, mask="", run=run)
        assert c.subjects[0].files["t1"].name == f"sub-01_{chosen}_T1w.nii.gz"
    assert find(root, modalities={"t1": "run-2_T1w"}, mask="").subjects[0].files["t1"]
    # files that differ in more than their run: no run choice picks one
    add_files(root, "sub-01", "", ["acq-fast_run-1_T1w"])
    e = raises(
        root, "4 t1 files match", "sub-01", "anat", modalities={"t1": "T1w"}, mask="", run="last"
    )
    assert "name the entity that tells them apart" in e.problem


# ----------------------------------------------------------------------------- bad input
def _edit_cohort(root: Path, case: str) -> None:
    """Breaks the fixture cohort one way."""
    tsv = root / "participants.tsv"
    anat = root / "sub-03" / "ses-2" / "anat"
    if case == "no participants.tsv":
        tsv.unlink()
    elif case == "no label column":
        tsv.write_text(tsv.read_text().replace("diagnosis", "dx"))
    elif case == "bad participant_id":
        tsv.write_text(tsv.read_text().replace("sub-03\t", "03\t"))
    elif case == "cells":
        tsv.write_text(tsv.read_text().replace("sub-03\t47\t", "sub-03 47\t"))
    elif case == "missing contrast":
        (anat / "sub-03_ses-2_FLAIR.nii.gz").unlink()
    elif case == "non-BIDS name":
        (anat / "sub-03_ses-2_T1w.nii.gz").rename(anat / "sub-03_ses-2_T1w_brain.nii.gz")
    elif case == "another subject's file":
        (anat / "sub-03_ses-2_T2w.nii.gz").rename(anat / "sub-04_ses-2_T2w.nii.gz")
    elif case == "missing mask":
        (
            root / "derivatives/lesions/sub-03/ses-2/anat/sub-03_ses-2_label-lesion_mask.nii.gz"
        ).unlink()
    elif case == "no anat":
        shutil.rmtree(anat)
    elif case == "listed twice":
        tsv.write_text(tsv.read_text() + "sub-03\t47\trecurrence\n")
    elif case == "no row":
        tsv.write_text(tsv.read_text().replace("sub-03\t47\trecurrence\n", ""))
    elif case == "no folder":
        tsv.write_text(tsv.read_text() + "sub-04\t50\tnecrosis\n")
    elif case == "n/a label":
        tsv.write_text(tsv.read_text().replace("47\trecurrence", "47\tn/a"))
    elif case == "other label":
        tsv.write_text(tsv.read_text().replace("47\trecurrence", "47\tglioma"))


BAD = [
    # case, message, subject, path
    ("no participants.tsv", "participants.tsv not found", "", "participants.tsv"),
    (
        "no label column",
        r"no column 'diagnosis' \(config.data.bids.label_column\)",
        "",
        "participants.tsv",
    ),
    (
        "bad participant_id",
        "line 4: participant_id '03' is not like sub-01",
        "03",
        "participants.tsv",
    ),
    ("cells", "line 4 has 2 cells for 3 columns", "sub-03 47", "participants.tsv"),
    (
        "missing contrast",
        "no flair file matches the BIDS query 'FLAIR'",
        "sub-03_ses-2",
        "sub-03/ses-2/anat",
    ),
    (
        "non-BIDS name",
        r"not a BIDS file name \(sub-<label>",
        "sub-03_ses-2",
        "anat/sub-03_ses-2_T1w_brain.nii.gz",
    ),
    (
        "another subject's file",
        "does not start with sub-03_ses-2_",
        "sub-03_ses-2",
        "sub-04_ses-2_T2w.nii.gz",
    ),
    (
        "missing mask",
        "no lesion mask file matches the BIDS query 'label-lesion_mask'",
        "sub-03_ses-2",
        "derivatives/*/sub-03/ses-2/anat",
    ),
    ("no anat", "no anat folder", "sub-03_ses-2", "sub-03/ses-2/anat"),
    (
        "listed twice",
        "participant listed 2 times in participants.tsv",
        "sub-03",
        "participants.tsv",
    ),
    ("no row", "participant folder has no row in participants.tsv", "sub-03", "sub-03"),
    (
        "no folder",
        "listed in participants.tsv but the participant folder is missing",
        "sub-04",
        "sub-04",
    ),
    ("n/a label", "label is missing", "sub-03", "participants.tsv"),
    ("other label", "label 'glioma' is not one of the classes", "sub-03", "participants.tsv"),
]


@pytest.mark.parametrize("case, match, subject, path", BAD, ids=[b[0] for b in BAD])
def test_bad_input_is_one_line_naming_subject_file_and_problem(cohort, case, match, subject, path):
    _edit_cohort(cohort, case)
    raises(cohort, match, subject, path)


def test_skip_records_the_bad_examples_and_keeps_the_others(cohort):
    for case in ("missing contrast", "n/a label"):  # sub-03 twice over: its row is checked first
        _edit_cohort(cohort, case)
    (cohort / "sub-01/ses-2/anat/sub-01_ses-2_T2w.nii.gz").unlink()
    c = bids.find_subjects(
        cohort, QUERIES, SETTINGS, mask="label-lesion_mask", classes=CLASSES, on_error="skip"
    )
    assert [s.subject_id for s in c.subjects] == ["sub-01_ses-1", "sub-01_ses-10", "sub-02"]
    assert [(x["subject_id"], x["problem"][:24]) for x in c.skipped] == [
        ("sub-01_ses-2", "no t2 file matches the B"),
        ("sub-03", "label is missing (empty)"),
    ]


@pytest.mark.parametrize(
    "query, match",
    [("T1w_", "not a BIDS query"), ("ce_T1w", "not a BIDS query"), ("ses-01_T1w", "names ses")],
)
def test_bad_queries_are_refused(query, match):
    with pytest.raises(ValueError, match=match):
        bids.parse_query(query, "config.data.bids.modalities.t1")


# ----------------------------------------------------------------------------- config
def bids_config(root, **bids_settings):
    config = configs.ern.get_config("tiny")
    d = config.data
    d.cohort_dir, d.layout = str(root), "bids"
    d.bids.mask = "label-lesion_mask"
    d.bids.update(bids_settings)
    return config


def test_the_config_check_reads_participants_tsv_and_groups_every_sessions_participant(
    tmp_path, caplog
):
    root = tmp_path / "b"
    labels = ["RN", "TR"] * 5  # not the default classes: they are taken from participants.tsv
    write_participants(root, [f"sub-{i}\t50\t{x}" for i, x in enumerate(labels)])
    for i in range(len(labels)):
        for session in ("ses-a", "ses-b")[: 1 + i % 2]:  # the TR participants: 2 sessions
            add_files(root, f"sub-{i}", session, BIDS_NAMES.values(), mask=b"")
    config = bids_config(root, session="all")
    config.eval.positive_class = "TR"
    with caplog.at_level(logging.INFO):
        check.check_config(config)
    assert config.data.classes == ("RN", "TR")
    assert config.data.group_column == "participant_id"
    # the split is counted in examples (15 sessions), made by participant (as the builder does)
    assert f"split of 15 labelled subjects (from {root / 'participants.tsv'})" in caplog.text
    spec = SampleSpec.from_config(config.data)  # the queries are the spec's modalities
    assert dict(spec.modalities) == QUERIES and spec.mask_pattern == "label-lesion_mask"
    assert SampleSpec.from_config(spec.to_dict()) == spec
    found = layouts.find(root, spec).subjects
    assert [s.subject_id for s in found][:3] == ["sub-0_ses-a", "sub-1_ses-a", "sub-1_ses-b"]


@pytest.mark.parametrize(
    "change, match",
    [
        (dict(layout="bdis"), "config.data.layout='bdis': expected one of patterns, bids"),
        (dict(cohort_dir=""), "needs a BIDS cohort: set --config.data.cohort_dir"),
        (dict(session="ses_2"), "config.data.bids.session='ses_2'"),
        (dict(run="2"), "config.data.bids.run='2'"),
        (dict(mask=""), "data.roi='mask' needs each subject's lesion mask"),
        (dict(t1c="ce_T1w"), "config.data.bids.modalities.t1c='ce_T1w' is not a BIDS query"),
        (dict(label_column="grade"), r"no column 'grade' \(config.data.bids.label_column\)"),
    ],
)
def test_bad_bids_settings_stop_before_any_work(cohort, change, match):
    config = bids_config(cohort)
    d = config.data
    d.roi = "mask"
    for key, value in change.items():
        if key in d:
            d[key] = value
        elif key in d.bids.modalities:
            d.bids.modalities[key] = value
        else:
            d.bids[key] = value
    with pytest.raises(InputError, match=match):
        check.check_config(config)


# ----------------------------------------------------------------------------- training
@pytest.fixture(scope="module")
def bids_cohort(tmp_path_factory) -> Path:
    """A BIDS cohort with sessions: 6 participants (3 of each class), the odd ones with 2.

    The images are the synthetic phantoms (one per participant; its second session a copy),
    with the lesion masks as BIDS derivatives.
    """
    syn = synthetic.write_cohort(
        tmp_path_factory.mktemp("syn") / "c", subjects=6, seed=0, recurrence_fraction=0.5
    )
    root = tmp_path_factory.mktemp("bids") / "cohort"
    with open(syn / "labels.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    write_participants(
        root, [f"sub-{i:02d}\t{40 + i}\t{r['label']}" for i, r in enumerate(rows, start=1)]
    )
    for i, r in enumerate(rows, start=1):
        sid, pid = r["subject_id"], f"sub-{i:02d}"
        source = {n: syn / sid / f"{sid}_{m}.nii.gz" for m, n in BIDS_NAMES.items()}
        for session in ("ses-01", "ses-02")[: 2 if i % 2 else 1]:
            add_files(
                root, pid, session, source, source=source, mask=syn / sid / f"{sid}_mask.nii.gz"
            )
    return root


def test_tiny_training_on_a_bids_cohort_with_sessions(bids_cohort, tmp_path):
    config = bids_config(bids_cohort, session="all")
    results = loop.train_and_evaluate(config, tmp_path)
    assert {"test.subject.auc", "test.image.auc"} <= set(results)
    with open(tmp_path / "split.csv", newline="") as fh:
        split = list(csv.DictReader(fh))
    assert len(split) == 9  # every session an example
    where = {}
    for row in split:  # a participant's sessions share one split and fold
        assert row["group"] == row["subject_id"].split("_")[0]
        where.setdefault(row["group"], set()).add((row["split"], row["fold"]))
    assert len(where) == 6 and all(len(v) == 1 for v in where.values())
    with open(tmp_path / "predictions_test.csv", newline="") as fh:
        tested = {r["subject_id"] for r in csv.DictReader(fh)}
    assert tested == {r["subject_id"] for r in split if r["split"] == "test"}


def test_the_reports_grad_cam_finds_each_bids_example_by_its_id(cohort):
    # report.html draws Grad-CAM of test subjects by ID: a BIDS example is no one folder
    from ernjax.evaluate import run_report

    found = run_report._bids_subjects(bids_config(cohort, session="all"), cohort)
    s = found["sub-01_ses-10"]
    assert s.files["t1"].name == "sub-01_ses-10_T1w.nii.gz" and s.mask.name.endswith("mask.nii.gz")
    assert run_report._bids_subjects(configs.ern.get_config("tiny"), cohort) is None
