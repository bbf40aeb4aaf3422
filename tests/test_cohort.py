"""ernjax.data.cohort: the five real folders load with only patterns changed; every bad input names
the subject, the file and the problem, or is skipped and recorded under on_error="skip"."""

import logging
from pathlib import Path

import pytest

from ernjax.data.cohort import find_subjects
from ernjax.errors import InputError

BRATS18 = {m: f"*_{m}.nii.gz" for m in ("t1", "t1c", "t2", "flair")}
MODS = {"t1": "*_t1.nii.gz", "t1c": "*_t1c.nii.gz"}
CLASSES = ("necrosis", "recurrence")


def make_cohort(root: Path, rows, files=("t1", "t1c"), header="subject_id,label") -> Path:
    """A cohort whose files are empty placeholders: find_subjects never reads images."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "labels.csv").write_text("\n".join([header, *rows]) + "\n")
    for row in rows:
        sid = row.split(",")[0]
        (root / sid).mkdir(exist_ok=True)
        for m in files:
            (root / sid / f"{sid}_{m}.nii.gz").write_bytes(b"")
    return root


@pytest.fixture
def cohort(tmp_path) -> Path:
    return make_cohort(tmp_path / "c", ["s2,recurrence", "s1,necrosis", "s3,recurrence"])


def raises(cohort_dir, match: str, subject: str, path: str, **kw) -> InputError:
    with pytest.raises(InputError, match=match) as err:
        find_subjects(cohort_dir, kw.pop("modalities", MODS), classes=CLASSES, **kw)
    assert err.value.subject == subject and subject in str(err.value)
    assert path in err.value.path and path in str(err.value)
    return err.value


# --- the real folders ----------------------------------------


def test_brats2018_2mm(shared_data):
    c = find_subjects(
        shared_data / "brats2018_hgg_lgg_2mm",
        BRATS18,
        mask_pattern="*_seg.nii.gz",
        classes=("HGG", "LGG"),
    )
    assert len(c.subjects) == 21 and not c.skipped
    assert [s.label for s in c.subjects].count(1) == 4  # 17 HGG, 4 LGG
    ids = [s.subject_id for s in c.subjects]
    assert ids == sorted(ids)
    s = c.subjects[0]
    assert s.files["t1"].name == f"{s.subject_id}_t1.nii.gz" and s.mask.name.endswith("_seg.nii.gz")


def test_brats2018_1mm_sample(shared_data):
    c = find_subjects(shared_data / "brats2018_hgg_lgg_1mm_sample", BRATS18, classes=("HGG", "LGG"))
    assert [(s.label_name, s.label) for s in c.subjects] == [("HGG", 0), ("LGG", 1)]


def test_brats2023_names(shared_data):
    mods = {m: f"*-{m}.nii.gz" for m in ("t1n", "t1c", "t2w", "t2f")}
    c = find_subjects(shared_data / "brats2023_gli_met", mods, classes=("GLI", "MET"))
    assert [s.label_name for s in c.subjects] == ["GLI", "MET"]
    assert all(s.files["t1c"].name.endswith("-t1c.nii.gz") for s in c.subjects)


def test_tcga_raw_without_labels(shared_data):
    mods = {
        "t1": "*_t1.nii.gz",
        "t1c": "*_t1c.nii.gz",
        "t2": "*_t2.nii.gz",
        "flair": "*_fla.nii.gz",
    }
    folder = shared_data / "tcga_fg6692_raw"
    with pytest.raises(InputError, match="labels.csv not found"):
        find_subjects(folder, mods)
    c = find_subjects(folder, mods, labels_required=False)
    (s,) = c.subjects
    assert s.subject_id == "TCGA-FG-6692" and s.label is None and s.label_name == ""
    assert s.files["t1"].name.startswith("T1_AX")  # *_t1.nii.gz does not also match the t1c
    assert len(set(s.files.values())) == 4


def test_tcga_lgg_2d_na_label(shared_data):
    mods = {"t1": "*_t1.nii.gz", "flair": "*_flair.nii.gz", "t1c": "*_t1c.nii.gz"}
    folder = shared_data / "tcga_lgg_grade_2d"
    kw = dict(mask_pattern="*_mask.nii.gz", classes=("G2", "G3"))
    with pytest.raises(InputError, match="label is missing") as err:
        find_subjects(folder, mods, **kw)
    assert err.value.subject == "TCGA_HT_A61B_19991127" and err.value.path.endswith("labels.csv")
    c = find_subjects(folder, mods, on_error="skip", **kw)
    assert len(c.subjects) == 109 and "T2" not in c.subjects[0].files
    assert [x["subject_id"] for x in c.skipped] == ["TCGA_HT_A61B_19991127"]


# --- layout features ----------------------------------------


def test_sorted_metadata_slices_and_default_classes(tmp_path):
    root = make_cohort(
        tmp_path / "c",
        ["b,recurrence,61,12;13;14", "a,necrosis,70,", 'c,recurrence,55," 3 , 1 2"'],
        header="subject_id,label,age,slices",
    )
    c = find_subjects(root, MODS, slices_column="slices")
    assert [s.subject_id for s in c.subjects] == ["a", "b", "c"]
    assert [s.label for s in c.subjects] == [0, 1, 1]  # classes default to the sorted values
    assert [s.slices for s in c.subjects] == [None, (12, 13, 14), (1, 2, 3)]
    assert c.subjects[1].metadata == {"age": "61"}


def test_recursive_pattern_hidden_files_and_bom(tmp_path):
    root = make_cohort(tmp_path / "c", ["s1,necrosis"], files=())
    labels = root / "labels.csv"
    labels.write_bytes(b"\xef\xbb\xbf" + labels.read_bytes())  # Excel's UTF-8 BOM
    (root / "s1" / "ses-1" / "anat").mkdir(parents=True)
    for name in ("s1_t1.nii.gz", "s1_t1c.nii.gz", "._s1_t1.nii.gz"):  # ._ = macOS metadata
        (root / "s1" / "ses-1" / "anat" / name).write_bytes(b"")
    (c,) = find_subjects(root, {m: f"**/{p}" for m, p in MODS.items()}, classes=CLASSES).subjects
    assert c.files["t1"].name == "s1_t1.nii.gz"


# --- bad input ----------------------------------------


def test_missing_modality_file(cohort):
    (cohort / "s2" / "s2_t1c.nii.gz").unlink()
    raises(cohort, "no t1c file matches", "s2", "s2")


def test_two_files_match_one_pattern(cohort):
    (cohort / "s1" / "s1_copy_t1.nii.gz").write_bytes(b"")
    err = raises(cohort, "2 files match", "s1", "s1")
    assert "s1_t1.nii.gz" in err.problem and "s1_copy_t1.nii.gz" in err.problem


def test_row_without_folder(cohort):
    (cohort / "labels.csv").write_text((cohort / "labels.csv").read_text() + "s9,necrosis\n")
    raises(cohort, "folder is missing", "s9", "s9")


def test_folder_without_row(cohort):
    (cohort / "s7").mkdir()
    raises(cohort, "no row in labels.csv", "s7", "s7")


def test_duplicate_rows(cohort):
    (cohort / "labels.csv").write_text((cohort / "labels.csv").read_text() + "s1,recurrence\n")
    raises(cohort, "listed 2 times", "s1", "labels.csv")


@pytest.mark.parametrize(
    "value, match", [("tumour", "not one of"), ("NA", "missing"), ("", "missing")]
)
def test_bad_label(tmp_path, value, match):
    root = make_cohort(tmp_path / "c", ["s1,necrosis", f"s2,{value}"])
    raises(root, match, "s2", "labels.csv")


def test_missing_labels_csv(cohort):
    (cohort / "labels.csv").unlink()
    with pytest.raises(InputError, match="labels.csv not found") as err:
        find_subjects(cohort, MODS, classes=CLASSES)
    assert err.value.path.endswith("labels.csv")


def test_malformed_slice_list(tmp_path):
    root = make_cohort(tmp_path / "c", ["s1,necrosis,12;x"], header="subject_id,label,slices")
    raises(root, "slice list '12;x'", "s1", "labels.csv", slices_column="slices")


def test_missing_slice_column(cohort):
    with pytest.raises(InputError, match="no column 'slices'") as err:
        find_subjects(cohort, MODS, classes=CLASSES, slices_column="slices", on_error="skip")
    assert err.value.path.endswith("labels.csv")


def test_unquoted_comma_list(tmp_path):
    root = make_cohort(tmp_path / "c", ["s1,necrosis,12,13"], header="subject_id,label,slices")
    raises(root, "line 2 has more cells than columns", "s1", "labels.csv")


def test_optional_labels_make_missing_labels_unlabeled(tmp_path):
    root = make_cohort(tmp_path / "c", ["s1,necrosis", "s2,NA", "s3,"])
    c = find_subjects(root, MODS, classes=CLASSES, labels_required=False)
    assert [(s.label, s.label_name) for s in c.subjects] == [
        (0, "necrosis"),
        (None, ""),
        (None, ""),
    ]


def test_missing_mask(cohort):
    for sid in ("s2", "s3"):  # s1 has none
        (cohort / sid / f"{sid}_mask.nii.gz").write_bytes(b"")
    raises(cohort, "no lesion mask file matches", "s1", "s1", mask_pattern="*_mask.nii.gz")


def test_skip_policy_logs_and_records(cohort, caplog):
    (cohort / "s2" / "s2_t1c.nii.gz").unlink()
    (cohort / "s8").mkdir()
    with caplog.at_level(logging.WARNING):
        c = find_subjects(cohort, MODS, classes=CLASSES, on_error="skip")
    assert [s.subject_id for s in c.subjects] == ["s1", "s3"]
    assert [x["subject_id"] for x in c.skipped] == ["s2", "s8"]
    assert c.skipped[0]["path"].endswith("s2") and "t1c" in c.skipped[0]["problem"]
    assert "s2" in caplog.text and "no t1c file" in caplog.text


def test_config_errors(cohort):
    with pytest.raises(ValueError, match="on_error"):
        find_subjects(cohort, MODS, on_error="ignore")
    with pytest.raises(ValueError, match="relative"):
        find_subjects(cohort, {"t1": ""})
