"""Cross-validation and comparison commands: orchestration, pooling, ensembles, tables, tests.

Training itself is covered by test_train.py; here `loop.train_and_evaluate` is replaced by a
fake that writes prediction files the way the trainer does, so the arithmetic can be checked.
"""

import json
from pathlib import Path

import numpy as np
import pytest

from ernjax import defaults
from ernjax.evaluate import calibration, predictions, stats
from ernjax.evaluate.predictions import Predictions
from ernjax.evaluate.scoring import ScoringPolicy
from ernjax.studies import compare, crossval
from ernjax.train import loop

CLASSES = ("necrosis", "recurrence")
TEST_SUBJECTS = [f"t{j}" for j in range(8)]


def _preds(subjects, seed, skill) -> Predictions:
    """Two slices per subject; label by subject; recurrence probability tracks the label."""
    rng = np.random.default_rng(seed)
    ids = [s for s in subjects for _ in range(2)]
    label = np.array([int(s[-1]) % 2 for s in ids])
    p = np.clip(0.5 + skill * (label - 0.5) + rng.normal(0, 0.25, len(ids)), 0.01, 0.99)
    return Predictions(ids, label, np.stack([1 - p, p], 1), CLASSES)


class FakeTrain:
    """Stands in for loop.train_and_evaluate: records the configs, writes predictions."""

    def __init__(self, with_test=True):
        self.calls, self.with_test = [], with_test

    def __call__(self, config, workdir):
        workdir = Path(workdir)
        workdir.mkdir(parents=True, exist_ok=True)
        self.calls.append((config, workdir))
        seed = len(self.calls)
        val_subjects = [f"v{config.data.fold}_{j}" for j in range(6)]
        predictions.write_csv(
            workdir / "predictions_validation.csv", _preds(val_subjects, seed, 0.6)
        )
        if self.with_test:
            predictions.write_csv(
                workdir / "predictions_test.csv", _preds(TEST_SUBJECTS, 100 + seed, 0.5)
            )
        (workdir / "results.json").write_text("{}")
        return {}


@pytest.fixture
def fake_train(monkeypatch):
    fake = FakeTrain()
    monkeypatch.setattr(loop, "train_and_evaluate", fake)
    return fake


def _config(folds=3):
    c = defaults.base_config()
    c.data.split.folds = folds
    # FakeTrain reads no data: a cohort folder keeps the studies from writing the synthetic one
    c.data.cohort_dir = "cohort"
    return c


def test_csv_round_trip(tmp_path):
    p = _preds(["a1", "b0"], 0, 0.5)
    q = predictions.read_csv(predictions.write_csv(tmp_path / "p.csv", p))
    assert q.subject_id == p.subject_id and q.class_names == CLASSES
    np.testing.assert_array_equal(q.label, p.label)
    np.testing.assert_allclose(q.probs, p.probs, atol=1e-6)
    assert q.slice is None
    # Slices carry their index along the volume; every row names its class.
    p.slice = np.array([40, 41, 7, 8])
    path = predictions.write_csv(tmp_path / "s.csv", p)
    header, first = path.read_text().splitlines()[:2]
    assert header == "subject_id,label,label_name,slice,prob_necrosis,prob_recurrence"
    assert first.startswith("a1,1,recurrence,40,")
    np.testing.assert_array_equal(predictions.read_csv(path).slice, p.slice)
    # A file written before those columns reads as before.
    old = tmp_path / "old.csv"
    old.write_text("subject_id,label,prob_necrosis,prob_recurrence\na1,1,0.2,0.8\n")
    o = predictions.read_csv(old)
    assert o.slice is None and o.probs.tolist() == [[0.2, 0.8]]


def test_read_csv_errors_name_the_file(tmp_path):
    with pytest.raises(ValueError, match="predictions file not found"):
        predictions.read_csv(tmp_path / "missing.csv")
    (tmp_path / "bad.csv").write_text("a,b\n1,2\n")
    with pytest.raises(ValueError, match="bad.csv.*not a predictions file"):
        predictions.read_csv(tmp_path / "bad.csv")


def test_crossval_trains_each_fold_and_pools(tmp_path, fake_train):
    results = crossval.run(_config(3), tmp_path, ensemble="mean")
    assert [c.data.fold for c, _ in fake_train.calls] == [0, 1, 2]
    assert {c.data.records_dir for c, _ in fake_train.calls} == {str(tmp_path / "records")}
    pooled = results["pooled out-of-fold"]
    assert pooled["subject"]["n"] == 18 and pooled["image"]["n"] == 36  # every fold's subjects
    ens = results["ensemble (mean) test"]
    assert ens["subject"]["n"] == len(TEST_SUBJECTS)
    for name in ("crossval.json", "crossval.md", "crossval.csv", "roc_test_image.png"):
        assert (tmp_path / name).stat().st_size > 0
    flat = json.loads((tmp_path / "crossval.json").read_text())
    assert "fold 2 test.subject.auc" in flat
    # Ensemble of better-than-chance members: at least as good as the weakest fold on test.
    fold_aucs = [results[f"fold {f} test"]["image"]["auc"] for f in range(3)]
    assert ens["image"]["auc"] >= min(fold_aucs)


def test_crossval_without_a_test_split_reports_pooled_out_of_fold(tmp_path, monkeypatch):
    # BraTS 2018 has 4 LGG subjects: all of them go through the folds and none is held out.
    monkeypatch.setattr(loop, "train_and_evaluate", FakeTrain(with_test=False))
    results = crossval.run(_config(3), tmp_path)
    assert list(results) == [
        "fold 0 validation",
        "fold 1 validation",
        "fold 2 validation",
        "pooled out-of-fold",
    ]
    assert results["pooled out-of-fold"]["subject"]["n"] == 18
    assert (tmp_path / "roc_out_of_fold_subject.png").stat().st_size > 0
    assert not (tmp_path / "roc_test_subject.png").exists()


def test_crossval_partial_folds_defer_the_summary(tmp_path, fake_train):
    assert crossval.run(_config(3), tmp_path, folds=[1]) == {}
    assert [c.data.fold for c, _ in fake_train.calls] == [1]
    with pytest.raises(ValueError, match="fold 5 is not in 0..2"):
        crossval.run(_config(3), tmp_path, folds=[5])


def test_ensemble_mean_and_majority():
    a, b, c = (_preds(TEST_SUBJECTS, s, 0.5) for s in (1, 2, 3))
    mean = crossval.ensemble_predictions([a, b, c], positive=1)
    np.testing.assert_allclose(mean.probs, (a.probs + b.probs + c.probs) / 3)
    cut = [{"threshold": 0.5}, {"threshold": 0.5}, {"threshold": 0.9}]
    vote = crossval.ensemble_predictions([a, b, c], 1, "majority", cut)
    calls = [a.probs[:, 1] >= 0.5, b.probs[:, 1] >= 0.5, c.probs[:, 1] >= 0.9]
    expected = np.sum(calls, axis=0) / 3
    np.testing.assert_allclose(vote.probs[:, 1], expected)
    np.testing.assert_allclose(vote.probs.sum(1), 1.0)


def test_ensemble_refuses_different_examples():
    a = _preds(TEST_SUBJECTS, 1, 0.5)
    b = _preds(TEST_SUBJECTS[::-1], 2, 0.5)
    with pytest.raises(ValueError, match="member 1 predicted different examples"):
        crossval.ensemble_predictions([a, b], 1)


def test_parse_channel_sets():
    assert compare.parse_channel_sets("t1c; t2;t1,t2,t1c;") == [
        ("t1c",),
        ("t2",),
        ("t1", "t2", "t1c"),
    ]


def test_compare_runs_every_model_and_channel_set(tmp_path, fake_train):
    cfg = _config()
    sets = [("t1c",), ("t1", "t2", "t1c")]
    results = compare.run(cfg, tmp_path, ["ern_tiny", "resnet10_tiny"], sets)
    runs = [(c.model.name, tuple(c.data.channels)) for c, _ in fake_train.calls]
    assert runs == [(m, s) for m in ("ern_tiny", "resnet10_tiny") for s in sets]
    assert list(results) == [
        "ern_tiny t1c",
        "ern_tiny t1+t2+t1c",
        "resnet10_tiny t1c",
        "resnet10_tiny t1+t2+t1c",
    ]
    table = (tmp_path / "compare.md").read_text()
    assert "ern_tiny t1c subject" in table and "(95% CI)" in table
    # Subject rows lead (every run's), image rows follow; the rows' notes close the table.
    rows = [line.split(" | ")[0][2:] for line in table.splitlines()[2:10]]
    assert rows == [f"{n} {level}" for level in ("subject", "image") for n in results]
    assert "image rows: percentile bootstrap over subjects" in table
    assert "\nNotes:\n- " in table and "small sample" in table
    delong = (tmp_path / "delong.md").read_text()
    assert delong.count("| image |") == 3 and delong.count("| subject |") == 3
    assert "necrosis" in (tmp_path / "ttests.md").read_text()
    assert (tmp_path / "roc_test_subject.png").stat().st_size > 0


def test_compare_refuses_unknown_modalities(tmp_path, fake_train):
    with pytest.raises(ValueError, match=r"\['adc'\] not in config.data.modalities"):
        compare.run(_config(), tmp_path, ["ern_tiny"], [("t1", "adc")])
    assert not fake_train.calls


def test_compare_refuses_a_config_without_test_split(tmp_path, fake_train):
    config = _config()
    config.data.split.test = 0.0
    with pytest.raises(ValueError, match="config.data.split.test is 0"):
        compare.run(config, tmp_path, ["ern_tiny"], [("t1",)])
    assert not fake_train.calls


def test_crossval_delong_against_pools_the_same_patients(tmp_path, fake_train):
    for name in ("a", "b"):
        crossval.run(_config(3), tmp_path / name)
    table = crossval.delong_against(_config(3), tmp_path / "a", [tmp_path / "b"], 3)
    assert "DeLong tests against a (pooled out-of-fold" in table
    assert (tmp_path / "a" / "delong_out_of_fold.md").read_text() == table
    rows = {r.split("|")[2].strip(): r for r in table.splitlines() if r.startswith("| b |")}
    assert set(rows) == {"image", "subject"}
    # The subject row is DeLong on the pooled subject-mean scores, as stats computes it.
    pool = {
        n: crossval.concat(
            [
                predictions.read_csv(tmp_path / n / f"fold_{f}/predictions_validation.csv")
                for f in range(3)
            ]
        )
        for n in ("a", "b")
    }
    scoring = crossval.ScoringPolicy.from_config(_config().eval, CLASSES)
    ya, sa = scoring.roc_data(pool["a"], "subject")
    _, sb = scoring.roc_data(pool["b"], "subject")
    z, _ = crossval.stats.delong_test(ya.astype(int), sb, sa, positive=1)
    assert f"| {z:.3f} |" in rows["subject"]
    with pytest.raises(crossval.InputError, match="has not finished its 4 folds"):
        crossval.delong_against(_config(4), tmp_path / "a", [tmp_path / "b"], 4)


def _three_runs(seed=0):
    """Three runs' predictions on the same 40 subjects x 3 slices, of different quality."""
    rng = np.random.default_rng(seed)
    subjects = [f"s{i:02d}" for i in range(40) for _ in range(3)]
    label = np.repeat(np.arange(40) % 2, 3)
    runs = {}
    for name, signal in (("a", 0.2), ("b", 1.0), ("c", 2.0)):
        score = 1 / (1 + np.exp(-(signal * (2 * label - 1) + rng.normal(size=label.size))))
        runs[name] = Predictions(subjects, label, np.stack([1 - score, score], 1), CLASSES)
    return runs


def _rows(table):
    return [[c.strip() for c in r.split("|")[1:-1]] for r in table.splitlines()[4:] if "|" in r]


def test_delong_table_holm_adjusts_each_level_and_tests_all_pairs():
    runs = _three_runs()
    scoring = ScoringPolicy.from_config(defaults.base_config().eval, CLASSES)
    table = compare.delong_table(runs, list(runs), scoring, reference="c")
    rows = _rows(table)
    assert "DeLong tests against c" in table.splitlines()[0]
    assert [(r[0], r[1], r[7]) for r in rows] == [
        ("a", "subject", "c"),
        ("b", "subject", "c"),
        ("a", "image", "c"),
        ("b", "image", "c"),
    ]
    for level in ("subject", "image"):
        raw = [float(r[5]) for r in rows if r[1] == level]
        holm = [float(r[6]) for r in rows if r[1] == level]
        np.testing.assert_allclose(holm, stats.holm(raw), rtol=5e-3)  # printed to 3 digits
        assert all(h >= p for h, p in zip(holm, raw, strict=True))
    pairs = _rows(compare.delong_table(runs, list(runs), scoring, all_pairs=True))
    assert [(r[0], r[7]) for r in pairs if r[1] == "subject"] == [
        ("b", "a"),
        ("c", "a"),
        ("c", "b"),
    ]
    with pytest.raises(ValueError, match="reference 'd' is not one of the runs"):
        compare.delong_table(runs, list(runs), scoring, reference="d")


def test_compare_refuses_an_unknown_reference_before_training(tmp_path, fake_train):
    with pytest.raises(ValueError, match=r"--reference='resnet': expected one of the runs"):
        compare.run(_config(), tmp_path, ["ern_tiny"], [("t1",), ("t1c",)], reference="resnet")
    with pytest.raises(ValueError, match="several channel sets: name the run"):
        compare.run(_config(), tmp_path, ["ern_tiny"], [("t1",), ("t1c",)], reference="ern_tiny")
    assert not fake_train.calls
    assert compare.resolve_reference("ern_tiny", ["ern_tiny t1", "x t1"]) == "ern_tiny t1"


def _predictive_index_policy() -> ScoringPolicy:
    c = defaults.base_config()
    c.eval.subject_method, c.eval.tune_threshold = "predictive_index", True
    return ScoringPolicy.from_config(c.eval, CLASSES)


def test_predictive_index_curves_and_delong_use_the_tables_cutoff():
    # Slice scores all below 0.5 but ordered by label: at 0.5 no slice is called positive and
    # every subject scores 0; at the tuned cut-off the subjects separate.
    runs = _three_runs()
    for p in runs.values():
        p.probs[:, 1] *= 0.4
        p.probs[:, 0] = 1 - p.probs[:, 1]
    scoring = _predictive_index_policy()
    cutoffs = {n: scoring.cutoffs(p) for n, p in runs.items()}
    assert all(c["threshold"] < 0.5 for c in cutoffs.values())
    for n, p in runs.items():
        table_auc = scoring.score(p, cutoffs[n])["subject"]["auc"]
        y, s = scoring.roc_data(p, "subject", cutoffs[n])
        _, by_hand, _ = stats.aggregate_by_subject(
            p.probs[:, 1],
            p.label,
            p.subject_id,
            "predictive_index",
            threshold=cutoffs[n]["threshold"],
        )
        np.testing.assert_array_equal(s, by_hand)
        assert stats.delong_covariance(y, [s])[0][0] == pytest.approx(table_auc)
        assert np.ptp(scoring.roc_data(p, "subject")[1]) == 0  # the old curve: all at 0
    table = compare.delong_table(runs, list(runs), scoring, reference="a", cutoffs=cutoffs)
    subject_rows = [r for r in _rows(table) if r[1] == "subject"]
    for r in subject_rows:
        assert float(r[2]) == pytest.approx(
            scoring.score(runs[r[0]], cutoffs[r[0]])["subject"]["auc"], abs=5e-4
        )


def test_majority_ensemble_tunes_the_predictive_index_cutoff_on_out_of_fold_votes():
    scoring = _predictive_index_policy()
    val = [_preds([f"v{f}_{j}" for j in range(6)], f, 0.6) for f in range(3)]
    fold_cutoffs = [scoring.cutoffs(v) for v in val]
    got = crossval.ensemble_cutoffs(scoring, val, "majority", fold_cutoffs)
    # By hand: each pooled slice is one vote at its own fold's cut-off; the subject cut-off is
    # Youden's on the fraction of a subject's slices voted positive.
    ids = [s for v in val for s in v.subject_id]
    votes = np.concatenate(
        [v.probs[:, 1] >= c["threshold"] for v, c in zip(val, fold_cutoffs, strict=True)]
    )
    labels = np.concatenate([v.label for v in val])
    _, frac, s_label = stats.aggregate_by_subject(votes.astype(float), labels, ids, "mean")
    assert got["threshold"] == 0.5 and got["subject_threshold"] != 0.5  # tuned, not the default
    assert got["subject_threshold"] == stats.choose_threshold(s_label, frac, positive=1)
    assert crossval.ensemble_cutoffs(scoring, val, "mean", fold_cutoffs) == scoring.cutoffs(
        crossval.concat(val)
    )


def test_crossval_repeated_over_seeds_and_split_seeds_reports_the_spread(tmp_path, fake_train):
    out = crossval.run_repeated(_config(2), tmp_path, seeds=[0, 1], split_seeds=[3, 4])
    dealt = [(c.data.split.seed, c.seed, c.data.fold) for c, _ in fake_train.calls]
    assert dealt == [(q, s, f) for q in (3, 4) for s in (0, 1) for f in (0, 1)]
    assert {c.data.records_dir for c, _ in fake_train.calls} == {str(tmp_path / "records")}
    names = ["split 3 seed 0", "split 3 seed 1", "split 4 seed 0", "split 4 seed 1"]
    key = "pooled out-of-fold.subject.auc"
    each = [
        json.loads((tmp_path / n.replace(" ", "_") / "crossval.json").read_text())[key]
        for n in names
    ]
    assert [out[f"{n.replace(' ', '_')}.{key}"] for n in names] == each
    assert out[f"mean.{key}"] == pytest.approx(np.mean(each))
    assert out[f"sd.{key}"] == pytest.approx(np.std(each, ddof=1))
    assert json.loads((tmp_path / "crossval_seeds.json").read_text())[f"max.{key}"] == max(each)
    table = (tmp_path / "crossval_seeds.md").read_text()
    assert "pooled out-of-fold subject AUC" in table and "ensemble (mean) test image AUC" in table
    assert "Repeated cross-validation" in table and "training variability" in table
    lines = table.splitlines()
    first_image = next(i for i, r in enumerate(lines) if "pooled out-of-fold image" in r)
    assert "pooled out-of-fold subject AUC" in "".join(lines[:first_image])  # subject first
    # A repeat with folds left to train defers the summary, as a single cross-validation does.
    assert crossval.run_repeated(_config(2), tmp_path / "p", seeds=[0, 1], folds=[0]) == {}
    assert not (tmp_path / "p" / "crossval_seeds.md").exists()


def test_compare_over_seeds_runs_every_seed_on_the_same_data(tmp_path, fake_train):
    sets = [("t1",), ("t1c",)]
    out = compare.run_seeds(_config(), tmp_path, ["ern_tiny"], sets, ["0", "2"], reference="")
    assert [(c.seed, tuple(c.data.channels)) for c, _ in fake_train.calls] == [
        (s, chans) for s in (0, 2) for chans in sets
    ]
    assert {c.data.records_dir for c, _ in fake_train.calls} == {str(tmp_path / "records")}
    key = "ern_tiny t1c.subject.auc"
    each = [
        json.loads((tmp_path / f"seed_{s}" / "compare.json").read_text())[
            "ern_tiny t1c.subject.auc"
        ]
        for s in (0, 2)
    ]
    assert out[f"mean.{key}"] == pytest.approx(np.mean(each))
    assert (tmp_path / "seed_2" / "delong.md").is_file()
    table = (tmp_path / "compare_seeds.md").read_text()
    assert "| ern_tiny t1 subject AUC |" in table and "seed 2" in table.splitlines()[2]
    with pytest.raises(ValueError, match="seed given twice"):
        compare.run_seeds(_config(), tmp_path, ["ern_tiny"], sets, ["1", "1"])


def test_majority_votes_on_the_scale_each_cut_off_was_chosen_on():
    # A fold whose cut-off was chosen on recalibrated probabilities votes on recalibrated ones.
    a, b = (_preds(TEST_SUBJECTS, s, 0.5) for s in (1, 2))
    shift = calibration.Recalibration("logistic", 3.0, 1.0, 10, 5, "", "")
    cut = [{"threshold": 0.5, "recalibration": shift}, {"threshold": 0.5}]
    vote = crossval.ensemble_predictions([a, b], 1, "majority", cut)
    raised = calibration.apply_recalibration(shift, a.probs[:, 1]) >= 0.5
    np.testing.assert_allclose(vote.probs[:, 1], (raised.astype(int) + (b.probs[:, 1] >= 0.5)) / 2)
    assert raised.sum() > (a.probs[:, 1] >= 0.5).sum()  # the shift changed votes
