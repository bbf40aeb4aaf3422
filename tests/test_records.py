"""ernjax.data.records: caching by settings, atomic builds, skips recorded, real cohorts."""

import json
import shutil
import time
from pathlib import Path

import ml_collections
import numpy as np
import pytest

import configs.ern
import configs.resnet3d
from ernjax.data import records
from ernjax.errors import InputError

DUMMY = Path(__file__).resolve().parents[1] / "data_builders" / "ernjax_mri" / "dummy_data"


def small_data(kind="volumes3d", **overrides) -> ml_collections.ConfigDict:
    cfg = (configs.resnet3d if kind == "volumes3d" else configs.ern).get_config("tiny")
    d = cfg.data
    d.mask_pattern = "*_mask.nii.gz"
    d.shape = (8, 16, 16) if kind == "volumes3d" else (16, 16)
    d.split.folds = 2
    d.build_workers = 1
    for key, value in overrides.items():  # assignment, not update: dicts are replaced whole
        setattr(d, key, value)
    return d


@pytest.fixture
def cohort(tmp_path) -> Path:
    out = tmp_path / "cohort"
    shutil.copytree(DUMMY, out)
    return out


def test_build_is_cached_and_keyed_by_settings(cohort, tmp_path):
    d = small_data()
    first = records.build(d, cohort, tmp_path / "rec")
    assert sum(len(s["label"]) for s in first.index["splits"].values()) == 10
    stamp = (first.path / records.INDEX).stat().st_mtime_ns
    again = records.build(d, cohort, tmp_path / "rec")
    assert again.path == first.path and (again.path / records.INDEX).stat().st_mtime_ns == stamp
    other = records.build(small_data(shape=(8, 8, 8)), cohort, tmp_path / "rec")
    assert other.path != first.path and other.index["image_shape"] == [8, 8, 8, 3]


def test_cohort_change_gives_new_records(cohort, tmp_path):
    first = records.build(small_data(), cohort, tmp_path / "rec")
    time.sleep(0.01)
    labels = cohort / "labels.csv"
    labels.write_text(labels.read_text().replace("dummy-09,necrosis", "dummy-09,recurrence"))
    second = records.build(small_data(), cohort, tmp_path / "rec")
    assert second.path != first.path


def test_failed_build_leaves_nothing_and_rebuild_works(cohort, tmp_path):
    bad = cohort / "dummy-04" / "dummy-04_t2.nii.gz"
    good = bad.read_bytes()
    bad.write_bytes(good[: len(good) // 2])  # a truncated download
    with pytest.raises(InputError, match="dummy-04") as err:
        records.build(small_data(), cohort, tmp_path / "rec")
    assert "dummy-04_t2.nii.gz" in str(err.value)
    leftovers = [p for p in (tmp_path / "rec").rglob("*") if p.is_file()]
    assert leftovers == []
    bad.write_bytes(good)
    recs = records.build(small_data(), cohort, tmp_path / "rec")
    assert sum(len(s["label"]) for s in recs.index["splits"].values()) == 10


def test_failed_first_build_leaves_no_empty_records_folder(cohort, tmp_path):
    (cohort / "dummy-04" / "dummy-04_t2.nii.gz").write_bytes(b"not a NIfTI file")
    (tmp_path / "kept").mkdir()
    for workdir in (tmp_path / "work", tmp_path / "kept"):
        with pytest.raises(InputError, match="dummy-04"):
            records.build(small_data(), cohort, workdir / "records")
    assert not (tmp_path / "work").exists()  # made by the build (a study's WORKDIR): removed
    assert list((tmp_path / "kept").iterdir()) == []  # there before: kept, empty


def test_skip_policy_records_the_skip(cohort, tmp_path):
    bad = cohort / "dummy-04" / "dummy-04_t2.nii.gz"
    bad.write_bytes(bad.read_bytes()[:100])
    recs = records.build(small_data(on_error="skip"), cohort, tmp_path / "rec")
    ids = {s for split in recs.index["splits"].values() for s in split["subject_id"]}
    assert "dummy-04" not in ids and len(ids) == 9
    assert [s["subject_id"] for s in recs.index["skipped"]] == ["dummy-04"]
    meta = json.loads((recs.path / "metadata.json").read_text())
    assert [s["subject_id"] for s in meta["skipped"]] == ["dummy-04"]


def test_slices_examples_and_records_read_back(cohort, tmp_path):
    recs = records.build(small_data("slices2d"), cohort, tmp_path / "rec")
    src = recs.source("train")
    ex = src[0]
    assert ex["image"].shape == (16, 16, 3) and ex["image"].dtype == np.float16
    index = recs.index["splits"]["train"]
    assert [src[i]["subject_id"].decode() for i in range(len(src))] == index["subject_id"]


def test_brats2018_volumes3d(shared_data, tmp_path):
    d = small_data(
        modalities={m: f"*_{m}.nii.gz" for m in ("t1", "t1c", "t2", "flair")},
        mask_pattern="",
        classes=("HGG", "LGG"),
        channels=("t1", "t1c", "t2", "flair"),
        shape=(32, 32, 32),
        build_workers=2,
    )
    recs = records.build(d, shared_data / "brats2018_hgg_lgg_2mm", tmp_path / "rec")
    counts = {s: len(v["label"]) for s, v in recs.index["splits"].items()}
    assert sum(counts.values()) == 21 and counts["test"] >= 2
    lgg = [lab for v in recs.index["splits"].values() for lab in v["label"]].count(1)
    assert lgg == 4
    ex = recs.source("train")[0]
    assert ex["image"].shape == (32, 32, 32, 4)


def test_tcga_lgg_slices2d_from_masks(shared_data, tmp_path):
    d = small_data(
        "slices2d",
        modalities={"t1": "*_t1.nii.gz", "flair": "*_flair.nii.gz", "t1c": "*_t1c.nii.gz"},
        mask_pattern="*_mask.nii.gz",
        classes=("G2", "G3"),
        channels=("t1", "flair", "t1c"),
        reference="flair",
        shape=(64, 64),
        on_error="skip",
        build_workers=2,
    )
    recs = records.build(d, shared_data / "tcga_lgg_grade_2d", tmp_path / "rec")
    assert [s["subject_id"] for s in recs.index["skipped"]] == ["TCGA_HT_A61B_19991127"]
    subjects = {s for v in recs.index["splits"].values() for s in v["subject_id"]}
    assert len(subjects) == 109
    assert recs.source("test")[0]["image"].shape == (64, 64, 3)
