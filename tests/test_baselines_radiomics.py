"""ernjax.baselines.radiomics: rows in records order, train-only inner CV, the networks' outputs."""

import json
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

import configs.ern
import configs.resnet3d
from ernjax.baselines import radiomics
from ernjax.data import prepare, records
from ernjax.errors import InputError
from ernjax.evaluate import predictions

DUMMY = Path(__file__).resolve().parents[1] / "data_builders" / "ernjax_mri" / "dummy_data"
VOXEL_MM3 = 2 * 2 * 4  # the dummy scans' voxels: 2 x 2 x 4 mm


def tiny(kind: str, cohort: Path = DUMMY, **data):
    """The tiny network config of `kind` on the 10-subject dummy cohort, with its masks."""
    cfg = (configs.ern if kind == "slices2d" else configs.resnet3d).get_config("tiny")
    d = cfg.data
    d.cohort_dir = str(cohort)
    d.mask_pattern = "*_mask.nii.gz"
    d.shape = (16, 16) if kind == "slices2d" else (8, 16, 16)
    d.split.folds = 2
    d.build_workers = 1
    for key, value in data.items():
        setattr(d, key, value)
    return cfg


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """{kind: (config, workdir, FeatureTable)} on the dummy cohort, built once."""
    out = {}
    for kind in ("slices2d", "volumes3d"):
        workdir = tmp_path_factory.mktemp(kind)
        cfg = tiny(kind)
        out[kind] = (cfg, workdir, radiomics.cohort_features(cfg, workdir))
    return out


def _mask_voxels(subject: str) -> int:
    return int((np.asarray(nib.load(DUMMY / subject / f"{subject}_mask.nii.gz").dataobj) > 0).sum())


def test_slice_rows_line_up_with_the_records(built):
    cfg, workdir, table = built["slices2d"]
    info = prepare.prepare(cfg, workdir)
    recs = records.open_records(info.records_dir)
    assignment = recs.index["assignment"]
    for split in prepare.SPLITS:
        rows = table.rows(split)
        assert [table.subject_id[r] for r in rows] == info.subject_ids(split)
        src = recs.source(split)
        assert table.slice[rows].tolist() == [int(src[i]["slice"]) for i in range(len(src))]
        assert table.label[rows].tolist() == [int(src[i]["label"]) for i in range(len(src))]
        assert {table.subject_id[r] for r in rows} == {
            s for s, a in assignment.items() if a["split"] == split
        }
    # fold 0 validates on the fold-0 subjects, as DataInfo.parts does for a network
    val = {table.subject_id[r] for r in table.rows("validation", fold=0)}
    assert val == {s for s, a in assignment.items() if a["fold"] == 0}
    # in mm on the scan's grid, not on the 16 x 16 records: the subject's voxels times 16 mm^3
    first = table.subject_id.index("dummy-00")
    volume = table.values[first, table.names.index("subject.shape.volume_voxel_counting_mm3")]
    assert volume == _mask_voxels("dummy-00") * VOXEL_MM3
    area = table.names.index("shape.area_pixel_counting_mm2")
    mine = [r for r, s in enumerate(table.subject_id) if s == "dummy-00"]
    assert table.values[mine, area].sum() * 4 == volume  # slice areas x 4 mm thickness


def test_volume_rows_line_up_with_the_records(built):
    cfg, workdir, table = built["volumes3d"]
    info = prepare.prepare(cfg, workdir)
    for split in prepare.SPLITS:
        assert [table.subject_id[r] for r in table.rows(split)] == info.subject_ids(split)
    assert set(table.slice.tolist()) == {-1} and len(table.subject_id) == 10
    row = table.subject_id.index("dummy-03")
    volume = table.values[row, table.names.index("shape.volume_voxel_counting_mm3")]
    assert volume == _mask_voxels("dummy-03") * VOXEL_MM3
    modalities = {n.split(".")[0] for n in table.names} - {"shape"}
    assert modalities == {"t1", "t1c", "t2", "flair"}  # every modality, not only the channels


def test_inner_cv_sees_only_training_subjects(built, monkeypatch):
    _, _, table = built["slices2d"]
    seen = {}

    class Spy(radiomics.LogisticRegressionCV):
        def fit(self, x, y, **kwargs):
            seen.update(n=len(x), y=np.asarray(y).tolist(), cv=self.cv)
            return super().fit(x, y, **kwargs)

    monkeypatch.setattr(radiomics, "LogisticRegressionCV", Spy)
    train = table.rows("train")
    model = radiomics.fit(table, train, seed=0)
    train_ids = [table.subject_id[r] for r in train]
    assert seen["n"] == len(train) and seen["y"] == table.label[train].tolist()
    assert set(model.inner_folds) == set(train_ids)  # no validation or test subject
    for fit_rows, val_rows in seen["cv"]:
        assert sorted([*fit_rows, *val_rows]) == list(range(len(train)))
        held = {train_ids[i] for i in val_rows}
        assert held.isdisjoint({train_ids[i] for i in fit_rows})  # no subject in both
        assert {int(table.label[train][i]) for i in val_rows} == {0, 1}
    np.testing.assert_allclose(model.scaler.mean_, table.values[train].mean(axis=0))


def test_fit_is_deterministic(built):
    _, _, table = built["volumes3d"]
    train, test = table.rows("train"), table.rows("test")
    a = radiomics.fit(table, train, seed=3)
    b = radiomics.fit(table, train, seed=3)
    assert a.inner_folds == b.inner_folds and a.classifier.C_ == b.classifier.C_
    np.testing.assert_array_equal(a.classifier.coef_, b.classifier.coef_)
    np.testing.assert_array_equal(
        radiomics.predict(a, table, test).probs, radiomics.predict(b, table, test).probs
    )


def test_one_training_subject_of_a_class_fits_at_the_fallback_c(built):
    # a fold of a tiny cohort: no inner cross-validation possible, still a model (not an error)
    _, _, table = built["volumes3d"]
    train = table.rows("train")
    necrosis = [r for r in train if table.label[r] == 0]
    rows = [r for r in train if table.label[r] == 1] + necrosis[:1]
    model = radiomics.fit(table, rows, seed=0)
    assert (model.C, model.scoring, model.inner_folds) == (radiomics.FALLBACK_C, "none", {})
    probs = radiomics.predict(model, table, table.rows("test")).probs
    assert probs.shape == (3, 2) and np.all((probs > 0) & (probs < 1))
    with pytest.raises(ValueError, match="holds no necrosis example"):
        radiomics.fit(table, [r for r in train if table.label[r] == 1], seed=0)


def test_run_writes_the_networks_outputs(built, capsys):
    cfg, workdir, _ = built["slices2d"]
    results = radiomics.run(cfg, workdir)
    info = prepare.prepare(cfg, workdir)
    for split in ("validation", "test"):
        p = predictions.read_csv(workdir / f"predictions_{split}.csv")
        assert p.class_names == ("necrosis", "recurrence")
        assert p.subject_id == info.subject_ids(split)  # the order of a network's predictions
        np.testing.assert_allclose(p.probs.sum(axis=1), 1.0, atol=2e-6)
        header = (workdir / f"predictions_{split}.csv").read_text().splitlines()[0]
        assert header == "subject_id,label,label_name,prob_necrosis,prob_recurrence"
    saved = json.loads((workdir / "results.json").read_text())
    assert saved["test.subject.auc"] == results["test.subject.auc"]
    assert saved["test.subject.n"] == 2 and saved["skipped"] == []
    model = json.loads((workdir / "radiomics_model.json").read_text())
    assert model["C"] in radiomics.CS and model["coefficient_of"] == ["recurrence"]
    names = [f["name"] for f in model["features"]]
    assert len(names) == saved["radiomics.n_features"] and "t2.glcm.contrast" in names
    assert not any(n.startswith("flair.") for n in names)  # ern's channels: t1, t2, t1c
    assert "Radiomics baseline" in capsys.readouterr().out


def test_no_mask_configured_is_refused(tmp_path):
    with pytest.raises(InputError, match="mask_pattern is empty"):
        radiomics.cohort_features(tiny("volumes3d", mask_pattern=""), tmp_path)


def test_empty_mask_names_subject_and_file(tmp_path):
    cohort = tmp_path / "cohort"
    shutil.copytree(DUMMY, cohort)
    path = cohort / "dummy-03" / "dummy-03_mask.nii.gz"
    mask = nib.load(path)
    nib.save(nib.Nifti1Image(np.zeros(mask.shape, np.uint8), mask.affine), path)
    # volumes3d records do not use the mask, so they build: the baseline must say it
    with pytest.raises(InputError, match="lesion mask is empty") as err:
        radiomics.cohort_features(tiny("volumes3d", cohort), tmp_path / "work")
    assert err.value.subject == "dummy-03" and err.value.path == str(path)


def test_listed_slice_without_mask_names_subject_and_file(tmp_path):
    cohort = tmp_path / "cohort"
    shutil.copytree(DUMMY, cohort)
    labels = cohort / "labels.csv"
    lines = labels.read_text().split()
    # dummy-02's mask touches slices 5-7 (a RAS scan: stored = canonical slice numbers)
    rows = [f"{line},{'5;6;7;8' if line.startswith('dummy-02') else ''}" for line in lines[1:]]
    labels.write_text("\n".join(["subject_id,label,slices", *rows]) + "\n")
    cfg = tiny("slices2d", cohort, slices_column="slices")
    with pytest.raises(InputError, match="lesion slice 8 .* holds no lesion-mask voxel") as err:
        radiomics.cohort_features(cfg, tmp_path / "work")
    assert err.value.subject == "dummy-02"
    assert err.value.path == str(cohort / "dummy-02" / "dummy-02_mask.nii.gz")


def test_missing_mask_names_subject(tmp_path):
    cohort = tmp_path / "cohort"
    shutil.copytree(DUMMY, cohort)
    (cohort / "dummy-07" / "dummy-07_mask.nii.gz").unlink()
    with pytest.raises(InputError, match="no lesion mask file matches") as err:
        radiomics.cohort_features(tiny("volumes3d", cohort), tmp_path / "work")
    assert err.value.subject == "dummy-07" and err.value.path == str(cohort / "dummy-07")


def test_one_separating_feature_gives_test_auc_1(tmp_path):
    # Every dummy scan twice, once per class: a 2x2x1-voxel lesion for necrosis, 4x4x2 voxels for
    # recurrence, where the scan's own mask was. Only the lesion's size tells the classes apart.
    cohort = tmp_path / "cohort"
    rows = ["subject_id,label"]
    for n, src in enumerate(sorted(DUMMY.glob("dummy-*"))):
        for label, size, sid in (
            ("necrosis", (2, 2, 1), f"n-{n}"),
            ("recurrence", (4, 4, 2), f"r-{n}"),
        ):
            shutil.copytree(src, cohort / sid)
            for f in (cohort / sid).iterdir():
                f.rename(f.with_name(f.name.replace(src.name, sid)))
            path = cohort / sid / f"{sid}_mask.nii.gz"
            old = nib.load(path)
            centre = np.argwhere(np.asarray(old.dataobj) > 0).mean(axis=0).astype(int)
            box = tuple(
                slice(c - s // 2, c - s // 2 + s) for c, s in zip(centre, size, strict=True)
            )
            new = np.zeros(old.shape, np.uint8)
            new[box] = 1
            nib.save(nib.Nifti1Image(new, old.affine), path)
            rows.append(f"{sid},{label}")
    (cohort / "labels.csv").write_text("\n".join(rows) + "\n")
    results = radiomics.run(tiny("volumes3d", cohort), tmp_path / "work")
    assert results["test.subject.n"] == 6
    assert results["test.subject.auc"] == 1.0 and results["test.image.auc"] == 1.0
