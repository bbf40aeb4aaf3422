"""ernjax.data.split_file: a study's split written by every run and read back to fix it.

The point of a split file: dropping one subject from the cohort must leave every other subject in
its split (without one, the seeded reshuffle keeps only some of the 12 test subjects).
"""

import logging
import shutil
from pathlib import Path

import pytest

import configs.resnet3d
from ernjax.data import prepare, records, split_file, synthetic
from ernjax.data.spec import SampleSpec
from ernjax.data.splits import assign_splits
from ernjax.errors import InputError
from ernjax.studies import crossval
from ernjax.train import loop

DUMMY = Path(__file__).resolve().parents[1] / "data_builders" / "ernjax_mri" / "dummy_data"
KW = dict(validation=0.2, folds=5, seed=0)


def study():
    """The default synthetic cohort's subjects and labels (60; 20 % of each class tested: 12)."""
    ids = [f"syn-{i:04d}" for i in range(1, 61)]  # as synthetic.write_cohort names them
    classes = ["necrosis", "recurrence"]
    labels = [classes.index(x) for x in synthetic._labels(60, 0, 0.66)]
    return ids, labels, assign_splits(ids, labels, test=0.2, **KW)


def apply(fixed, ids, labels, path="study_split.csv"):
    return split_file.apply(fixed, ids, labels, list(ids), path=path, **KW)


def places(assignment):
    return {s: (a["split"], a["fold"]) for s, a in assignment.items()}


def test_written_file_reads_back_as_the_same_assignment(tmp_path):
    ids, labels, out = study()
    path = split_file.write(tmp_path / "split.csv", out)
    assert path.read_text().splitlines()[0] == "subject_id,group,split,fold"
    fixed = split_file.read(path, folds=5)
    assert fixed == out
    assert apply(fixed, ids, labels) == out


def test_dropping_a_subject_keeps_every_other_subjects_split(tmp_path, caplog):
    ids, labels, out = study()
    test = sorted(s for s, a in out.items() if a["split"] == "test")
    assert len(test) == 12
    # without a split file, dropping any one other subject reshuffles: 2 to 10 of the 12 stay
    stayed = []
    for gone in (s for s in ids if s not in test):
        rest = [i for i, s in enumerate(ids) if s != gone]
        again = assign_splits([ids[i] for i in rest], [labels[i] for i in rest], test=0.2, **KW)
        stayed.append(len({s for s, a in again.items() if a["split"] == "test"} & set(test)))
    assert min(stayed) == 2 and max(stayed) == 10
    keep = [i for i, s in enumerate(ids) if s != gone]
    ids2, labels2 = [ids[i] for i in keep], [labels[i] for i in keep]
    # with it, every other subject keeps its split and fold, all 12 test subjects included
    fixed = split_file.read(split_file.write(tmp_path / "split.csv", out), folds=5)
    with caplog.at_level(logging.WARNING):
        kept = apply(fixed, ids2, labels2)
    assert places(kept) == {s: p for s, p in places(out).items() if s != gone}
    assert gone in caplog.text and "dropped" in caplog.text
    # dropping a test subject: the test split keeps its 11 others
    ids3 = [s for s in ids if s != test[0]]
    kept = apply(fixed, ids3, [labels[ids.index(s)] for s in ids3])
    assert sorted(s for s, a in kept.items() if a["split"] == "test") == test[1:]


def test_added_subjects_never_enter_the_test_split_and_are_named(tmp_path, caplog):
    ids, labels, out = study()
    fixed = split_file.read(split_file.write(tmp_path / "split.csv", out), folds=5)
    new = [f"new-{i:02d}" for i in range(20)]
    with caplog.at_level(logging.WARNING):
        got = apply(fixed, ids + new, labels + [i % 2 for i in range(20)])
    assert places({s: got[s] for s in ids}) == places(out)
    assert {got[s]["split"] for s in new} == {"train", "validation"}  # the usual rule, no test
    assert {got[s]["fold"] for s in new} == set(range(5))
    assert all(s in caplog.text for s in new)


def test_a_new_scan_of_a_patient_in_the_file_joins_its_split(tmp_path):
    ids, labels, out = study()
    patient = next(s for s, a in out.items() if a["split"] == "test")
    groups = list(ids) + [patient]  # the new scan belongs to a test patient
    got = split_file.apply(
        split_file.read(split_file.write(tmp_path / "s.csv", out), folds=5),
        ids + ["rescan"],
        labels + [labels[ids.index(patient)]],
        groups,
        path="s.csv",
        **KW,
    )
    assert got["rescan"] == {"split": "test", "fold": -1, "group": patient}


GOOD = "subject_id,group,split,fold\na,a,train,0\nb,b,validation,1\nc,c,test,-1\n"


@pytest.mark.parametrize(
    "text, match",
    [
        ("subject_id,split\na,train\n", r"needs the columns .*fold missing"),
        (GOOD + "d,d,tset,0\n", r"subject d, .*line 5: split 'tset' is not one of"),
        (GOOD + "a,a,train,1\n", r"subject a, .*subject listed twice \(lines 2 and 5\)"),
        (GOOD + "d,d,train,one\n", r"subject d, .*line 5: fold 'one' is not a whole number"),
        (GOOD + "d,d,test,1\n", r"subject d, .*line 5: a test subject's fold is -1, not 1"),
        (GOOD + "d,d,train,2\n", r"subject d, .*line 5: fold 2 is not in 0..1"),
        (GOOD + ",x,train,0\n", r"line 5 has no subject_id"),
        ("subject_id,group,split,fold\na,a,train,0\n", r"folds are \[0\] but .*folds=2"),
    ],
    ids=["columns", "split", "duplicate", "fold_text", "test_fold", "fold_range", "no_id", "folds"],
)
def test_malformed_files_name_the_file_row_and_problem(tmp_path, text, match):
    path = tmp_path / "study_split.csv"
    path.write_text(text)
    with pytest.raises(InputError, match=match) as err:
        split_file.read(path, folds=2)
    assert str(path) in str(err.value)


def test_missing_file_and_a_group_across_splits_are_refused(tmp_path):
    with pytest.raises(InputError, match="split file not found"):
        split_file.read(tmp_path / "nope.csv", folds=2)
    path = tmp_path / "s.csv"
    path.write_text(GOOD)
    fixed = split_file.read(path, folds=2)
    with pytest.raises(InputError, match=r"group 'p' .* a \(train, fold 0\), c \(test, fold -1\)"):
        split_file.apply(
            fixed, ["a", "b", "c"], [0, 1, 0], ["p", "b", "p"], path=path, **{**KW, "folds": 2}
        )


# Through the records: group_column and split.file in a real (10-subject) build.


@pytest.fixture
def cohort(tmp_path) -> Path:
    out = tmp_path / "cohort"
    shutil.copytree(DUMMY, out)
    return out


def with_patients(cohort: Path, patient_of: dict) -> None:
    """Adds a patient_id column to labels.csv."""
    labels = cohort / "labels.csv"
    rows = labels.read_text().splitlines()
    out = [rows[0] + ",patient_id"]
    out += [f"{r},{patient_of.get(r.split(',')[0], r.split(',')[0])}" for r in rows[1:]]
    labels.write_text("\n".join(out) + "\n")


# necrosis: dummy-00, 03, 06, 09; recurrence: the others
PATIENTS = {"dummy-03": "dummy-00", "dummy-09": "dummy-06", "dummy-02": "dummy-01"}
PATIENTS |= {"dummy-05": "dummy-04", "dummy-08": "dummy-07"}


def config(cohort: Path, tmp_path: Path, **data):
    cfg = configs.resnet3d.get_config("tiny")
    d = cfg.data
    d.cohort_dir, d.records_dir = str(cohort), str(tmp_path / "rec")
    d.mask_pattern, d.shape, d.build_workers = "*_mask.nii.gz", (8, 16, 16), 1
    d.split.folds, d.split.validation = 2, 0.0
    for key, value in data.items():
        setattr(d, key, value)
    return cfg


def test_group_column_keeps_a_patients_scans_in_one_split_and_fold(cohort, tmp_path):
    with_patients(cohort, PATIENTS)
    recs = records.build(
        config(cohort, tmp_path, group_column="patient_id").data, cohort, tmp_path / "rec"
    )
    assignment = recs.index["assignment"]
    for sid, patient in PATIENTS.items():
        assert assignment[sid]["group"] == patient
        assert {k: v for k, v in assignment[sid].items() if k != "group"} == {
            k: v for k, v in assignment[patient].items() if k != "group"
        }


def test_group_column_errors_name_labels_csv_and_the_columns(cohort, tmp_path):
    with pytest.raises(
        InputError, match=r"labels.csv: no column 'patient' .*\['subject_id', 'label'\]"
    ):
        records.build(
            config(cohort, tmp_path, group_column="patient").data, cohort, tmp_path / "rec"
        )
    with_patients(cohort, PATIENTS)
    labels = cohort / "labels.csv"
    labels.write_text(
        labels.read_text().replace("dummy-04,recurrence,dummy-04", "dummy-04,recurrence,")
    )
    with pytest.raises(InputError, match=r"subject dummy-04, .*no patient_id"):
        records.build(
            config(cohort, tmp_path, group_column="patient_id").data, cohort, tmp_path / "rec"
        )


def test_a_runs_split_csv_fed_back_gives_the_same_split_and_folds(cohort, tmp_path):
    with_patients(cohort, PATIENTS)
    cfg = config(cohort, tmp_path, group_column="patient_id")
    first = prepare.prepare(cfg, tmp_path / "run1")
    written = tmp_path / "run1" / "split.csv"
    rows = written.read_text().splitlines()
    assert rows[0] == "subject_id,group,split,fold" and len(rows) == 11
    study_split = tmp_path / "study_split.csv"
    shutil.copy(written, study_split)
    cfg.data.split.file = str(study_split)
    again = prepare.prepare(cfg, tmp_path / "run2")
    assert again.records_dir != first.records_dir  # the file is part of the records' name
    a, b = (records.open_records(i.records_dir).index["assignment"] for i in (first, again))
    assert a == b
    assert (tmp_path / "run2" / "split.csv").read_text() == written.read_text()
    # cross-validation's fold k validates on the file's fold k
    for k in (0, 1):
        cfg.data.fold = k
        info = prepare.prepare(cfg, tmp_path / f"fold_{k}")
        assert set(info.subject_ids("validation")) == {
            s for s, x in a.items() if x["split"] != "test" and x["fold"] == k
        }
    # an edited file gives other records, and moves the patient it moves
    train = {x["group"]: x["fold"] for x in a.values() if x["split"] == "train"}
    big = max((0, 1), key=list(train.values()).count)  # moving from it leaves no fold empty
    patient = next(g for g, f in train.items() if f == big)
    text = written.read_text()
    for sid, x in a.items():
        if x["group"] == patient:
            old = f"{sid},{patient},train,{x['fold']}"
            text = text.replace(old, f"{sid},{patient},train,{1 - x['fold']}")
    study_split.write_text(text)
    cfg.data.fold = -1
    edited = prepare.prepare(cfg, tmp_path / "run3")
    assert edited.records_dir not in (first.records_dir, again.records_dir)
    moved = records.open_records(edited.records_dir).index["assignment"]
    assert {s: x["fold"] for s, x in moved.items() if x["group"] == patient} == {
        s: 1 - x["fold"] for s, x in a.items() if x["group"] == patient
    }


def test_the_runs_own_split_csv_is_not_accepted_as_its_input(cohort, tmp_path):
    cfg = config(cohort, tmp_path)
    prepare.prepare(cfg, tmp_path / "run")
    cfg.data.split.file = str(tmp_path / "run" / "split.csv")
    with pytest.raises(InputError, match="copy it"):
        prepare.prepare(cfg, tmp_path / "run")


def test_crossval_validates_each_fold_of_the_file_and_writes_the_studys_split(
    cohort, tmp_path, monkeypatch
):
    with_patients(cohort, PATIENTS)
    cfg = config(cohort, tmp_path, group_column="patient_id")
    prepare.prepare(cfg, tmp_path / "first")
    study_split = tmp_path / "study_split.csv"
    shutil.copy(tmp_path / "first" / "split.csv", study_split)
    fixed = split_file.read(study_split, folds=2)
    cfg.data.split.file = str(study_split)
    validated = {}

    def train(config, workdir):  # the folds' data, not their training
        info = prepare.prepare(config, workdir)
        validated[config.data.fold] = set(info.subject_ids("validation"))
        return {}

    monkeypatch.setattr(loop, "train_and_evaluate", train)
    assert crossval.run(cfg, tmp_path / "cv") == {}  # no results.json: no summary
    for k in (0, 1):
        assert validated[k] == {
            s for s, x in fixed.items() if x["split"] != "test" and x["fold"] == k
        }
        groups = {fixed[s]["group"] for s in validated[k]}
        assert all(fixed[s]["fold"] == k for s, x in fixed.items() if x["group"] in groups)
    assert (tmp_path / "cv" / "split.csv").read_text() == study_split.read_text()


def test_the_records_name_hashes_the_split_files_content_not_its_path(tmp_path):
    d = configs.resnet3d.get_config("tiny").data
    plain = records.dataset_name(SampleSpec.from_config(d), DUMMY)
    first, moved = tmp_path / "a.csv", tmp_path / "elsewhere.csv"
    first.write_text(GOOD)
    moved.write_text(GOOD)
    d.split.file = str(first)
    name = records.dataset_name(SampleSpec.from_config(d), DUMMY)
    d.split.file = str(moved)
    assert records.dataset_name(SampleSpec.from_config(d), DUMMY) == name != plain
    moved.write_text(GOOD.replace("b,b,validation,1", "b,b,train,1"))
    assert records.dataset_name(SampleSpec.from_config(d), DUMMY) != name


def test_a_split_lacking_a_class_counts_patients(cohort, tmp_path):
    with_patients(cohort, PATIENTS)  # 2 necrosis patients: one tested, none left to validate
    cfg = config(cohort, tmp_path, group_column="patient_id")
    cfg.data.split.validation = 0.2
    with pytest.raises(InputError, match=r"2 necrosis and 3 recurrence patients \(patient_id\)"):
        records.build(cfg.data, cohort, tmp_path / "rec")


def test_a_patient_with_scans_of_both_classes_is_named_and_kept_together(cohort, tmp_path, caplog):
    with_patients(cohort, {**PATIENTS, "dummy-00": "dummy-01", "dummy-03": "dummy-01"})
    with caplog.at_level(logging.WARNING):
        recs = records.build(
            config(cohort, tmp_path, group_column="patient_id").data, cohort, tmp_path / "rec"
        )
    assert "group dummy-01 (patient_id) holds subjects of different classes" in caplog.text
    assert "dummy-00, dummy-01, dummy-02, dummy-03" in caplog.text
    places = {
        (x["split"], x["fold"])
        for x in recs.index["assignment"].values()
        if x["group"] == "dummy-01"
    }
    assert len(places) == 1
