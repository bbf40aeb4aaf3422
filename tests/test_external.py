"""External validation: a tiny cross-validation (2 folds) and one of its fold runs, scored on a
second synthetic cohort (another generator seed, a `site` column) with the runs' own cut-offs."""

import csv
import importlib.util
import json
import math
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from ml_collections import ConfigDict

from ernjax import inference
from ernjax.data import synthetic
from ernjax.errors import InputError
from ernjax.evaluate import predictions
from ernjax.evaluate.scoring import ScoringPolicy
from ernjax.studies import crossval, external

REPO = Path(__file__).resolve().parents[1]
SITES = ("A", "B", "C")


def _tiny_config():
    spec = importlib.util.spec_from_file_location("cfg", REPO / "configs/ern.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    config = mod.get_config("tiny")
    config.data.split.folds = 2
    return config


@pytest.fixture(scope="module")
def cv(tmp_path_factory, compile_cache):
    """A finished 2-fold cross-validation; W/fold_0 is a finished run of its own."""
    workdir = tmp_path_factory.mktemp("cv")
    crossval.run(_tiny_config(), workdir)
    return workdir


def _write_labels(path: Path, rows: list[dict]) -> None:
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)


@pytest.fixture(scope="module")
def other(tmp_path_factory) -> Path:
    """10 subjects of generator seed 7, with a site column; site C holds one recurrence only."""
    folder = synthetic.write_cohort(tmp_path_factory.mktemp("other") / "c", subjects=10, seed=7)
    with open(folder / "labels.csv", newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    first_recurrence = next(i for i, r in enumerate(rows) if r["label"] == "recurrence")
    for i, r in enumerate(rows):
        r["site"] = "C" if i == first_recurrence else SITES[i % 2]
    _write_labels(folder / "labels.csv", rows)
    return folder


@pytest.fixture(scope="module")
def scored_run(cv, other, tmp_path_factory) -> Path:
    """`python -m ernjax.external --run=W/fold_0 ...`, as a user types it."""
    out = tmp_path_factory.mktemp("ext_run")
    proc = _command(
        f"--run={cv / 'fold_0'}", f"--cohort_dir={other}", f"--workdir={out}", "--group_by=site"
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "external subject" in proc.stdout
    return out


@pytest.fixture(scope="module")
def scored_cv(cv, other, tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("ext_cv")
    results = external.run(cv, other, out, is_crossval=True, group_by=("site",))
    return out, results


def _command(*args: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "ernjax.external", *args]
    return subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600, check=False)


def _labels(cohort_dir: Path) -> dict[str, dict]:
    with open(cohort_dir / "labels.csv", newline="", encoding="utf-8") as f:
        return {r["subject_id"]: r for r in csv.DictReader(f)}


def _json(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8"))


def _validation_cutoffs(run_dir: Path) -> dict:
    """The run's cut-offs, chosen here from its validation predictions (not via load_run)."""
    c = ConfigDict(json.loads((run_dir / "run_config.json").read_text()))
    policy = ScoringPolicy.from_config(c.eval, c.data.classes)
    return policy.cutoffs(predictions.read_csv(run_dir / "predictions_validation.csv")), policy


# ----------------------------------------------------------------------------- one run
def test_every_subject_of_the_cohort_is_scored_once(scored_run, other):
    preds = predictions.read_csv(scored_run / "predictions_external.csv")
    labels = _labels(other)
    assert set(preds.subject_id) == set(labels)
    flat = _json(scored_run / "external.json")
    assert flat["external.subject.n"] == len(labels)
    assert flat["external.image.n"] == len(preds)
    for sid in labels:  # each subject's labels.csv class
        rows = [i for i, s in enumerate(preds.subject_id) if s == sid]
        assert preds.class_names[preds.label[rows[0]]] == labels[sid]["label"]
    for name in ("external.md", "external.csv", "roc_external_image.png"):
        assert (scored_run / name).is_file()
    # Calibration (ernjax.evaluate.calibration) for the external split too.
    assert "external.subject.brier" in flat and "external.image.calibration_slope" in flat
    assert "Brier" in (scored_run / "calibration_external.md").read_text()
    for name in ("reliability", "decision_curve"):
        assert (scored_run / f"calibration_external_{name}.png").read_bytes()[:4] == b"\x89PNG"
    assert (scored_run / "roc_external_subject.png").read_bytes()[:4] == b"\x89PNG"
    assert not list(scored_run.glob(".tmp-*"))


def test_predictions_equal_what_predict_gives(scored_run, cv, other, tmp_path):
    run = inference.load_run(cv / "fold_0")
    preds = predictions.read_csv(scored_run / "predictions_external.csv")
    for sid in sorted(set(preds.subject_id)):
        subject = inference.make_subject(run, sid, {}, subject_dir=other / sid)
        report = inference.predict(run, subject, tmp_path / sid, cam=False)
        rows = [i for i, s in enumerate(preds.subject_id) if s == sid]
        assert report["n_images"] == len(rows)
        # The records hold a subject's slices in their own order: compare them sorted.
        theirs = sorted(s["recurrence"] for s in report["slices"])
        np.testing.assert_allclose(sorted(preds.probs[rows, 1]), theirs, atol=2e-5)


def test_cutoffs_are_the_runs_validation_cutoffs(scored_run, cv):
    cutoffs, policy = _validation_cutoffs(cv / "fold_0")
    assert cutoffs  # chosen on validation, not the defaults
    flat = _json(scored_run / "external.json")
    assert flat["external.image.threshold"] == pytest.approx(policy.image_cutoff(cutoffs))
    assert flat["external.subject.threshold"] == pytest.approx(policy.subject_cutoff(cutoffs))
    table = (scored_run / "external.md").read_text()
    assert "from the run's validation split" in table
    assert "not re-tuned on this external cohort" in table


def test_group_rows_sum_to_the_cohort_and_equal_scoring_by_hand(scored_run, cv, other):
    flat = _json(scored_run / "external_by_site.json")
    labels = _labels(other)
    counts = {g: flat[f"site={g}.subject.n"] for g in SITES}
    assert (
        sum(counts.values())
        == len(labels)
        == _json(scored_run / "external.json")["external.subject.n"]
    )
    cutoffs, policy = _validation_cutoffs(cv / "fold_0")
    preds = predictions.read_csv(scored_run / "predictions_external.csv")
    for g in SITES:
        keep = [i for i, s in enumerate(preds.subject_id) if labels[s]["site"] == g]
        part = predictions.Predictions(
            [preds.subject_id[i] for i in keep],
            preds.label[keep],
            preds.probs[keep],
            preds.class_names,
        )
        want = policy.score(part, cutoffs)
        for level in ("subject", "image"):
            for metric in ("n", "auc", "sensitivity", "specificity", "accuracy"):
                got = flat[f"site={g}.{level}.{metric}"]
                expected = float(want[level][metric])
                if math.isnan(expected):
                    assert got is None  # NaN is written as null
                else:
                    assert got == pytest.approx(expected)
            low, high = want[level]["sensitivity_ci"]
            assert flat[f"site={g}.{level}.sensitivity_ci_low"] == pytest.approx(low)
            assert flat[f"site={g}.{level}.sensitivity_ci_high"] == pytest.approx(high)
    # Site C: one recurrence subject. Sensitivity is defined; AUC and specificity are not.
    assert flat["site=C.subject.n"] == 1 and flat["site=C.subject.sensitivity"] is not None
    assert flat["site=C.subject.auc"] is None and flat["site=C.subject.specificity"] is None
    notes = " ".join(flat["site=C.subject.notes"])
    assert "auc undefined" in notes and "small sample" in notes
    table = (scored_run / "external_by_site.md").read_text()
    assert table.index("site=A subject") < table.index("site=A image")


def test_outputs_name_subjects_by_id_only(scored_run, other, cv):
    for path in scored_run.glob("external*"):
        text = path.read_text(encoding="utf-8")
        assert str(other) not in text and str(cv) not in text and ".nii" not in text


# ----------------------------------------------------------------------------- cross-validation
def test_crossval_ensemble_is_the_mean_of_its_folds_at_the_pooled_cutoffs(
    scored_cv, cv, scored_run
):
    out, results = scored_cv
    folds = [predictions.read_csv(out / f"predictions_external_fold_{k}.csv") for k in (0, 1)]
    ens = predictions.read_csv(out / "predictions_external.csv")
    assert ens.subject_id == folds[0].subject_id == folds[1].subject_id
    np.testing.assert_allclose(ens.probs, (folds[0].probs + folds[1].probs) / 2, atol=2e-6)
    # Fold 0's model on the same records gives what the single-run command gave.
    alone = predictions.read_csv(scored_run / "predictions_external.csv")
    np.testing.assert_allclose(folds[0].probs, alone.probs, atol=1e-6)
    # The ensemble's cut-offs: chosen on the pooled out-of-fold predictions, here by hand.
    _, policy = _validation_cutoffs(cv / "fold_0")
    val = [predictions.read_csv(cv / f"fold_{k}" / "predictions_validation.csv") for k in (0, 1)]
    pooled = crossval.concat(val)
    cutoffs = policy.cutoffs(pooled)
    row = results["ensemble (mean) external"]
    assert row["image"]["threshold"] == pytest.approx(policy.image_cutoff(cutoffs))
    assert row["subject"]["threshold"] == pytest.approx(policy.subject_cutoff(cutoffs))
    fold1, _ = _validation_cutoffs(cv / "fold_1")
    assert results["fold 1 external"]["image"]["threshold"] == pytest.approx(
        policy.image_cutoff(fold1)
    )
    flat = _json(out / "external_by_site.json")
    assert sum(flat[f"site={g}.subject.n"] for g in SITES) == row["subject"]["n"]
    assert "pooled out-of-fold" in (out / "external.md").read_text()


# ----------------------------------------------------------------------------- bad input
def test_a_missing_run_is_one_clear_error(other, tmp_path):
    with pytest.raises(InputError, match=r"nope: run folder not found"):
        external.run(tmp_path / "nope", other, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_a_run_without_a_selected_checkpoint(cv, other, tmp_path):
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    for name in ("results.json", "predictions_validation.csv"):
        shutil.copy(cv / "fold_0" / name, run / name)
    with pytest.raises(InputError, match=r"file .*run/checkpoints: no checkpoint"):
        external.run(run, other, tmp_path / "out")
    with pytest.raises(InputError, match=r"not a finished cross-validation \(no crossval.json\)"):
        external.run(run, other, tmp_path / "out", is_crossval=True)
    assert not (tmp_path / "out").exists()


def test_a_label_not_among_the_runs_classes(cv, other, tmp_path):
    cohort = tmp_path / "cohort"
    cohort.mkdir()
    rows = list(_labels(other).values())
    rows[3]["label"] = "necrose"
    _write_labels(cohort / "labels.csv", rows)
    sid = rows[3]["subject_id"]
    with pytest.raises(
        InputError,
        match=rf"subject {sid}, file .*labels.csv: label 'necrose' is not one of the run's "
        r"classes \['necrosis', 'recurrence'\]",
    ):
        external.run(cv / "fold_0", cohort, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_a_group_by_column_missing_from_labels_csv_is_one_line(cv, other, tmp_path):
    proc = _command(
        f"--run={cv / 'fold_0'}",
        f"--cohort_dir={other}",
        f"--workdir={tmp_path / 'out'}",
        "--group_by=site,scanner",
    )
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert proc.stderr.splitlines()[-1] == (
        f"ernjax: file {other / 'labels.csv'}: no column 'scanner' to group by (--group_by); "
        "its columns are subject_id, label, lesion_slices, site"
    )
    assert not (tmp_path / "out").exists()


def test_a_bad_scan_leaves_nothing_in_out(cv, other, tmp_path):
    cohort = tmp_path / "cohort"
    shutil.copytree(other, cohort)
    sid = sorted(_labels(other))[2]
    bad = cohort / sid / f"{sid}_t2.nii.gz"
    bad.write_bytes(bad.read_bytes()[:100])  # a truncated download
    out = tmp_path / "out"
    with pytest.raises(InputError, match=rf"subject {sid}, file .*{sid}_t2.nii.gz: cannot be read"):
        external.run(cv / "fold_0", cohort, out)
    assert not out.exists() or not [p for p in out.rglob("*") if p.is_file()]
