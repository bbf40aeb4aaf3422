"""Calibration and decision curves, pinned to scikit-learn, statsmodels and worked examples.

References nobody here wrote: sklearn.metrics.brier_score_loss and
sklearn.calibration.calibration_curve; statsmodels' Logit and GLM (binomial, logit(p) as an
offset) for the calibration slope and intercept; Vickers & Elkin's (2006) net benefit worked by
hand, and MSKCC's dcurves package when it is installed (it is not a pinned test dependency: its
release needs pandas < 3, below this project's pin).
"""

import dataclasses
import json
import math
import types

import numpy as np
import pytest
import statsmodels.api as sm
from sklearn.calibration import calibration_curve
from sklearn.metrics import brier_score_loss

from ernjax import defaults
from ernjax.evaluate import calibration as cal
from ernjax.evaluate import reporting
from ernjax.evaluate.predictions import Predictions
from ernjax.evaluate.scoring import ScoringPolicy
from ernjax.train import loop

CLASSES = ("necrosis", "recurrence")


def _cases(n=120, seed=0, a=0.4, b=0.6):
    """Probabilities and outcomes drawn from a known miscalibration: logit P(y) = a + b logit p."""
    rng = np.random.default_rng(seed)
    p = rng.uniform(0.02, 0.98, n)
    y = rng.uniform(size=n) < 1 / (1 + np.exp(-(a + b * np.log(p / (1 - p)))))
    return y, p


def _predictions(n_subjects, slices, seed, sharp=2.0, tag="s"):
    """Predictions of a cohort: a patient's slices share a random effect; 2/3 recurrence."""
    rng = np.random.default_rng(seed)
    is_pos = np.arange(n_subjects) % 3 != 0
    y = np.repeat(is_pos, slices)
    z = 1.2 * (y - 0.5) + np.repeat(rng.normal(0, 1, n_subjects), slices)
    p = 1 / (1 + np.exp(-sharp * (z + rng.normal(0, 0.8, y.size))))
    ids = np.repeat([f"{tag}{i:02d}" for i in range(n_subjects)], slices)
    return Predictions(list(ids), y.astype(int), np.stack([1 - p, p], 1), CLASSES)


def _policy(recalibrate="none", n_bootstrap=200, **overrides):
    e = defaults.base_config().eval
    e.recalibrate, e.n_bootstrap = recalibrate, n_bootstrap
    e.update(overrides)
    return ScoringPolicy.from_config(e, CLASSES)


# ----------------------------------------------------------------------------- metrics
@pytest.mark.parametrize("seed", [0, 1])
def test_brier_matches_sklearn(seed):
    y, p = _cases(seed=seed)
    assert cal.brier_score(y, p) == pytest.approx(brier_score_loss(y, p), abs=1e-15)
    # Necrosis positive (Ying 2025): the outcome and the probability both flip.
    assert cal.brier_score(~y, 1 - p) == pytest.approx(brier_score_loss(y, 1 - p, pos_label=0))


@pytest.mark.parametrize("a,b,seed", [(0.4, 0.6, 0), (-0.8, 1.5, 1), (0.0, 1.0, 2)])
def test_intercept_and_slope_match_statsmodels(a, b, seed):
    y, p = _cases(seed=seed, a=a, b=b)
    intercept, slope, notes = cal.calibration_intercept_slope(y, p)
    x = np.log(p / (1 - p))
    # Slope: logistic regression of y on logit(p); intercept: logit(p) as an offset.
    slope_fit = sm.Logit(y.astype(float), sm.add_constant(x)).fit(disp=0)
    offset_fit = sm.GLM(
        y.astype(float), np.ones((len(y), 1)), family=sm.families.Binomial(), offset=x
    ).fit()
    assert slope == pytest.approx(slope_fit.params[1], rel=1e-7)
    assert intercept == pytest.approx(offset_fit.params[0], rel=1e-7, abs=1e-9)
    assert notes == []


def test_weighted_fits_match_statsmodels_frequency_weights():
    """The bootstrap's fits: case weights are the counts of a drawn subject."""
    y, p = _cases(n=60, seed=3)
    w = np.random.default_rng(0).integers(0, 4, (3, 60)).astype(float)
    x = cal.logit(p)
    a, b = cal._fit_logistic(x, y, w, slope=True)
    a0, _ = cal._fit_logistic(x, y, w, slope=False)
    for k in range(3):
        family = sm.families.Binomial()
        full = sm.GLM(y.astype(float), sm.add_constant(x), family=family, freq_weights=w[k])
        offset = sm.GLM(
            y.astype(float), np.ones((60, 1)), family=family, offset=x, freq_weights=w[k]
        )
        np.testing.assert_allclose([a[k], b[k]], full.fit().params, rtol=1e-7)
        assert a0[k] == pytest.approx(offset.fit().params[0], rel=1e-7)


def test_degenerate_inputs_are_nan_with_a_note():
    p = np.array([0.2, 0.4, 0.6, 0.8])
    a, b, notes = cal.calibration_intercept_slope(np.ones(4, bool), p)
    assert math.isnan(a) and math.isnan(b) and "one class only" in notes[0]
    a, b, notes = cal.calibration_intercept_slope(np.array([1, 0, 1, 0], bool), np.full(4, 0.3))
    assert math.isnan(b) and "constant probabilities" in notes[0]
    # Constant p = 0.3 for a prevalence of 1/2: the offset fit is logit(1/2) - logit(0.3).
    assert a == pytest.approx(-math.log(0.3 / 0.7))
    # The probabilities separate the classes: no finite slope, the intercept is still defined.
    y = np.array([0, 0, 1, 1], bool)
    a, b, notes = cal.calibration_intercept_slope(y, p)
    assert math.isnan(b) and "separate the classes" in notes[0]
    x = np.log(p / (1 - p))
    ref = sm.GLM(y.astype(float), np.ones((4, 1)), family=sm.families.Binomial(), offset=x)
    assert a == pytest.approx(ref.fit().params[0], abs=1e-8)
    # 0 and 1 (6-decimal CSV values) are clipped, not infinite.
    a, b, _ = cal.calibration_intercept_slope(np.array([0, 1, 0, 1], bool), [0.0, 1.0, 0.7, 0.2])
    assert np.isfinite(a) and np.isfinite(b)


@pytest.mark.parametrize("strategy", ["uniform", "quantile"])
@pytest.mark.parametrize("n_bins", [3, 5, 10])
def test_reliability_curve_matches_sklearn(strategy, n_bins):
    y, p = _cases(n=97, seed=4)
    p = np.concatenate([np.round(p, 1), [0.0, 1.0, 0.5]])  # ties, bin edges, both ends
    y = np.concatenate([y, [False, True, True]])
    observed, predicted, count = cal.reliability_curve(y, p, n_bins, strategy)
    prob_true, prob_pred = calibration_curve(y, p, n_bins=n_bins, strategy=strategy)
    np.testing.assert_allclose(observed, prob_true, atol=1e-12)
    np.testing.assert_allclose(predicted, prob_pred, atol=1e-12)
    assert count.sum() == len(p) and (count > 0).all()


def test_net_benefit_by_hand():
    # 10 patients, 4 positive (recurrence). Treat when p >= pt.
    y = np.array([1, 1, 1, 1, 0, 0, 0, 0, 0, 0], bool)
    p = np.array([0.9, 0.8, 0.7, 0.3, 0.6, 0.4, 0.2, 0.1, 0.05, 0.5])
    nb = cal.net_benefit(y, p, [0.25, 0.5, 0.75])
    # pt 0.25, odds 1/3: treated 0.9 0.8 0.7 0.3 (TP 4) and 0.6 0.4 0.5 (FP 3):
    #   4/10 - 3/10 * 1/3 = 0.3; treat all: 0.4 - 0.6 * 1/3 = 0.2.
    # pt 0.5, odds 1: TP 3 (0.9 0.8 0.7), FP 2 (0.6 0.5): 0.3 - 0.2 = 0.1; all: 0.4 - 0.6 = -0.2.
    # pt 0.75, odds 3: TP 2 (0.9 0.8), FP 0: 0.2; treat all: 0.4 - 0.6 * 3 = -1.4.
    np.testing.assert_allclose(nb["model"], [0.3, 0.1, 0.2], atol=1e-12)
    np.testing.assert_allclose(nb["treat_all"], [0.2, -0.2, -1.4], atol=1e-12)
    np.testing.assert_array_equal(nb["treat_none"], [0, 0, 0])
    with pytest.raises(ValueError, match="strictly between 0 and 1"):
        cal.net_benefit(y, p, [0.0, 0.5])


def test_net_benefit_matches_dcurves_when_installed():
    dcurves = pytest.importorskip("dcurves")
    pd = pytest.importorskip("pandas")
    rng = np.random.default_rng(3)
    p = np.round(rng.uniform(0, 1, 80), 2)  # ties at the thresholds: both treat p >= pt
    y = rng.uniform(size=80) < p
    t = np.round(np.arange(0.05, 0.96, 0.05), 2)
    frame = pd.DataFrame({"y": y.astype(int), "m": p})
    theirs = dcurves.dca(data=frame, outcome="y", modelnames=["m"], thresholds=t)
    ours = cal.net_benefit(y, p, t)
    for name, key in (("m", "model"), ("all", "treat_all"), ("none", "treat_none")):
        rows = theirs[theirs.model == name].sort_values("threshold")
        np.testing.assert_allclose(rows["net_benefit"], ours[key], atol=1e-12, err_msg=name)


# ----------------------------------------------------------------------------- recalibration
def test_recalibration_is_the_logistic_fit_and_falls_back_in_words():
    y, p = _cases(seed=5, a=0.5, b=0.5)
    r = cal.fit_recalibration(y, p)
    ref = sm.Logit(y.astype(float), sm.add_constant(np.log(p / (1 - p)))).fit(disp=0).params
    assert r.method == "logistic" and [r.intercept, r.slope] == pytest.approx(ref, rel=1e-7)
    expected = 1 / (1 + np.exp(-(ref[0] + ref[1] * np.log(p / (1 - p)))))
    np.testing.assert_allclose(cal.apply_recalibration(r, p), expected, rtol=1e-9)
    # Recalibrated on the data it was fitted on, the slope is 1 and the intercept 0.
    a, b, _ = cal.calibration_intercept_slope(y, cal.apply_recalibration(r, p))
    assert a == pytest.approx(0, abs=1e-6) and b == pytest.approx(1, abs=1e-6)
    # Separation (a small validation split with AUC 1): the slope stays 1, the intercept is fitted.
    sep = cal.fit_recalibration(np.array([0, 0, 1, 1], bool), [0.1, 0.3, 0.6, 0.8])
    assert sep.method == "intercept" and sep.slope == 1.0 and "slope kept at 1" in sep.note
    one = cal.fit_recalibration(np.ones(3, bool), [0.2, 0.5, 0.9])
    assert one.method == "identity"
    np.testing.assert_array_equal(cal.apply_recalibration(one, [0.2, 0.5]), [0.2, 0.5])
    assert "not fitted: one class only" in one.describe()
    # K classes: the positive column recalibrated, the others keep their shares, rows sum to 1.
    probs = np.array([[0.2, 0.5, 0.3], [0.6, 0.1, 0.3]])
    out = cal.recalibrate_probs(r, probs, positive=1)
    np.testing.assert_allclose(out[:, 1], cal.apply_recalibration(r, probs[:, 1]))
    np.testing.assert_allclose(out.sum(1), 1.0)
    np.testing.assert_allclose(out[:, 0] / out[:, 2], probs[:, 0] / probs[:, 2])


def test_recalibration_never_sees_the_test_split():
    val, test = _predictions(10, 6, seed=1, sharp=3.0), _predictions(14, 6, seed=2, tag="t")
    policy = _policy("logistic", tune_threshold=True)
    cutoffs = policy.cutoffs(val)
    r = cutoffs["recalibration"]
    direct = cal.fit_recalibration(val.label == 1, val.probs[:, 1], val.subject_id)
    assert (r.intercept, r.slope) == (direct.intercept, direct.slope)
    # The image cut-off is chosen on the recalibrated validation probabilities.
    recal_val = policy.recalibrated(val, cutoffs)
    again = dataclasses.replace(policy, recalibrate="none").cutoffs(recal_val)
    assert cutoffs["threshold"] == again["threshold"]
    # Other test labels and probabilities: the same fitted recalibration in the results.
    changed = dataclasses.replace(test, label=1 - test.label, probs=test.probs[::-1].copy())
    for preds in (test, changed):
        res = policy.score(preds, cutoffs)
        assert res["subject"]["recalibration_intercept"] == r.intercept
        assert res["image"]["recalibration_slope"] == r.slope
        assert "fitted on the validation predictions" in res["subject"]["notes"][0]
        assert "in-sample" not in res["subject"]["notes"][0]
    assert "in-sample" in policy.score(val, cutoffs)["image"]["notes"][0]
    # Scoring with the recalibration = scoring the recalibrated probabilities without one.
    plain = dataclasses.replace(policy, recalibrate="none")
    a = policy.score(test, cutoffs)["subject"]
    b = plain.score(policy.recalibrated(test, cutoffs), {k: cutoffs[k] for k in ("threshold",)})
    for key in ("auc", "sensitivity", "specificity", "brier", "calibration_intercept"):
        assert a[key] == pytest.approx(b["subject"][key], nan_ok=True), key
    # One patient's decision recalibrates the same way.
    rows = [i for i, s in enumerate(test.subject_id) if s == test.subject_id[0]]
    decided = policy.decide(test.probs[rows], cutoffs)
    assert decided["score"] == pytest.approx(cal.apply_recalibration(r, test.probs[rows, 1]).mean())


def test_the_setting_is_checked_and_old_configs_get_none():
    e = defaults.base_config().eval
    assert e.recalibrate == "none" and ScoringPolicy.from_config(e, CLASSES).recalibrate == "none"
    e.recalibrate = "isotonic"
    with pytest.raises(ValueError, match="config.eval.recalibrate='isotonic'"):
        ScoringPolicy.from_config(e, CLASSES)
    old = defaults.base_config().eval
    del old["recalibrate"]
    assert ScoringPolicy.from_config(old, CLASSES).recalibrate == "none"
    # Asked for, but nothing to fit it on: said so.
    res = _policy("logistic").score(_predictions(6, 3, seed=0), {})
    assert "no validation predictions fitted a recalibration" in res["subject"]["notes"][0]


# ----------------------------------------------------------------------------- levels, tables
def test_scores_carry_calibration_per_level_with_subject_bootstrap_cis():
    preds = _predictions(12, 5, seed=3)
    res = _policy(subject_method="predictive_index").score(preds)
    y, p = preds.label == 1, preds.probs[:, 1]
    assert res["image"]["brier"] == pytest.approx(brier_score_loss(y, p))
    s_y, s_p = cal.subject_probabilities(y, p, preds.subject_id)
    assert len(s_y) == 12 and res["subject"]["brier"] == pytest.approx(brier_score_loss(s_y, s_p))
    for level in ("image", "subject"):
        low, high = res[level]["brier_ci"]
        assert low < res[level]["brier"] < high
        assert res[level]["brier_null"] == pytest.approx(8 / 12 * 4 / 12)
    # The predictive-index score is a fraction of slices: the note says what was calibrated.
    assert "not the predictive_index score" in res["subject"]["calibration_notes"][0]
    flat = reporting.flatten({"test": res})
    assert flat["test.subject.calibration_notes"] == res["subject"]["calibration_notes"]
    assert "test.image.calibration_slope_ci_low" in flat
    back = reporting.unflatten(json.loads(json.dumps(flat)), "test")
    assert back["subject"]["calibration_notes"] == res["subject"]["calibration_notes"]


def test_calibration_and_decision_tables():
    policy = _policy()
    preds = {"validation": _predictions(9, 3, seed=4), "test": _predictions(12, 3, seed=5)}
    results = {s: policy.score(p) for s, p in preds.items()}
    text = cal.format_calibration_table(results)
    lines = text.splitlines()
    assert lines[0].split()[:3] == ["n", "(positive)", "Brier"]
    names = [line.split("  ")[0] for line in lines[2:6]]
    assert names == ["validation subject", "test subject", "validation image", "test image"]
    assert "percentile bootstrap over subjects" in text
    csv_text = cal.format_calibration_table(results, fmt="csv")
    assert csv_text.splitlines()[0].startswith("row,positive_class,n,n_positive,brier,brier_ci_low")
    curves = {"ern": policy.calibration_data(preds["test"], "subject")}
    table = cal.format_decision_table(curves, fmt="markdown")
    assert table.splitlines()[0] == "| threshold | ern | treat all | treat none |"
    nb = cal.net_benefit(*curves["ern"], [0.5])
    assert f"| 0.50 | {nb['model'][0]:.3f} |" in table


def test_figures_are_written_for_several_sets(tmp_path):
    policy = _policy("logistic")
    val, test = _predictions(9, 3, seed=6), _predictions(12, 3, seed=7, tag="t")
    cutoffs = policy.cutoffs(val)
    policy.plot_calibration({"a": test, "b": val}, tmp_path / "cmp", {"a": cutoffs})
    for name in ("cmp_reliability.png", "cmp_decision_curve.png"):
        assert (tmp_path / name).read_bytes()[:4] == b"\x89PNG"
    one_class = (np.ones(4, bool), np.array([0.2, 0.4, 0.6, 0.9]))
    cal.plot_reliability({"one class": one_class}, tmp_path / "r.png", strategy="uniform")
    cal.plot_decision_curves({"one class": one_class}, tmp_path / "d.png")
    assert (tmp_path / "r.png").exists() and (tmp_path / "d.png").exists()


def test_the_run_writes_its_calibration_outputs(tmp_path):
    """The trainer's writer on stored predictions (no training here; test_predict trains one)."""
    policy = _policy("logistic")
    preds = {"validation": _predictions(9, 3, seed=8), "test": _predictions(12, 3, seed=9, tag="t")}
    cutoffs = policy.cutoffs(preds["validation"])
    results = {s: policy.score(p, cutoffs) for s, p in preds.items()}
    config = types.SimpleNamespace(model=types.SimpleNamespace(name="ern_b0"))
    run = types.SimpleNamespace(scoring=policy, config=config, workdir=tmp_path)
    loop._write_calibration(run, preds, cutoffs, results)
    text = (tmp_path / "calibration.md").read_text()
    assert "| test subject |" in text and "## Decision curve, test split, subject-wise" in text
    assert "recalibrated before scoring" in text
    rows = (tmp_path / "decision_curve_test.csv").read_text().splitlines()
    assert rows[0] == "threshold,ern_b0,treat all,treat none" and len(rows) == 1 + 99
    for name in ("reliability_test.png", "decision_curve_test.png"):
        assert (tmp_path / name).read_bytes()[:4] == b"\x89PNG"
