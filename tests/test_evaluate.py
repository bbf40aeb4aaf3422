"""Metric code pinned to scikit-learn/scipy, hand-worked cases and independent computations."""

import csv
import io
import json
import math

import numpy as np
import pytest
from scipy import stats
from sklearn import metrics as skm

from ernjax.errors import InputError
from ernjax.evaluate import reporting
from ernjax.evaluate import stats as ev

CLASSES = ("necrosis", "recurrence")  # Gao 2020: 0 = necrosis, 1 = recurrence (positive)


def _cohort(n_subjects=30, slices=8, seed=0, separation=0.4):
    """Probabilities [N, 2], labels and subject IDs of a cohort with `slices` images a subject."""
    rng = np.random.default_rng(seed)
    subject_labels = np.arange(n_subjects) % 3 != 0  # 2/3 positive, like Gao's 96/146
    labels = np.repeat(subject_labels, slices).astype(int)
    ids = np.repeat([f"sub-{i:03d}" for i in range(n_subjects)], slices)
    p = np.clip(0.3 + separation * labels + rng.normal(0, 0.25, labels.size), 0, 1)
    return np.stack([1 - p, p], axis=1), labels, ids


def _delong_plain(y, scores):
    """DeLong (1988) variance from the O(m n) placement values, written plainly."""
    pos, neg = scores[y], scores[~y]
    psi = (pos[:, None] > neg[None, :]) + 0.5 * (pos[:, None] == neg[None, :])
    v10, v01 = psi.mean(axis=1), psi.mean(axis=0)  # per positive, per negative
    return psi.mean(), v10, v01


# ----------------------------------------------------------------------------- proportions
@pytest.mark.parametrize("k,n", [(0, 10), (1, 10), (7, 10), (10, 10), (45, 50), (3, 4), (1, 1)])
@pytest.mark.parametrize("confidence", [0.95, 0.9])
def test_proportion_ci_matches_scipy(k, n, confidence):
    ours_to_scipy = {"wilson": "wilson", "wilson_cc": "wilsoncc", "exact": "exact"}
    result = stats.binomtest(k, n)
    for ours, theirs in ours_to_scipy.items():
        expected = result.proportion_ci(confidence_level=confidence, method=theirs)
        got = ev.proportion_ci(k, n, ours, confidence)
        np.testing.assert_allclose(got, [expected.low, expected.high], atol=1e-9, err_msg=ours)


def test_wald_by_hand_and_clipped():
    # 8/10: 0.8 +- 1.959964 * sqrt(0.8 * 0.2 / 10) = 0.8 +- 0.247918, the upper end clipped to 1.
    np.testing.assert_allclose(ev.proportion_ci(8, 10, "wald"), [0.552082, 1.0], atol=1e-6)
    assert ev.proportion_ci(0, 10, "wald") == (0.0, 0.0)  # Wald's known failure at 0, kept visible


def test_proportion_ci_undefined_and_bad_method():
    assert all(math.isnan(v) for v in ev.proportion_ci(0, 0))
    with pytest.raises(ValueError, match="agresti"):
        ev.proportion_ci(1, 2, "agresti")


def test_two_by_two_confusion_matrix_by_hand():
    # TP 8, FN 2, TN 6, FP 4, positive = recurrence.
    probs_pos = np.array([0.9] * 8 + [0.1] * 2 + [0.2] * 6 + [0.7] * 4)
    labels = np.array([1] * 10 + [0] * 10)
    m, notes = ev.binary_metrics(labels == 1, probs_pos, 0.5)
    assert (m["tp"], m["fn"], m["tn"], m["fp"]) == (8, 2, 6, 4) and notes == []
    assert m["sensitivity"] == 0.8 and m["specificity"] == 0.6 and m["accuracy"] == 0.7
    assert m["precision"] == pytest.approx(8 / 12) and m["f1"] == pytest.approx(16 / 22)
    # Wilson 8/10 by hand: z^2 = 3.841459, centre (0.8 + z^2/20) / (1 + z^2/10) = 0.716741,
    # half-width z / 1.384146 * sqrt(0.016 + z^2/400) = 0.226578 -> 0.4902-0.9433.
    np.testing.assert_allclose(m["sensitivity_ci"], [0.4902, 0.9433], atol=1e-4)
    np.testing.assert_allclose(m["specificity_ci"], [0.3127, 0.8318], atol=1e-4)  # 6/10
    np.testing.assert_allclose(m["accuracy_ci"], [0.4810, 0.8545], atol=1e-4)  # 14/20
    np.testing.assert_allclose(m["precision_ci"], [0.3906, 0.8619], atol=1e-4)  # 8/12
    exact, _ = ev.binary_metrics(labels == 1, probs_pos, 0.5, ci_method="exact")
    np.testing.assert_allclose(exact["sensitivity_ci"], [0.4439, 0.9748], atol=1e-4)
    # scikit-learn agrees on the point values.
    pred = probs_pos >= 0.5
    assert m["sensitivity"] == skm.recall_score(labels, pred)
    assert m["precision"] == pytest.approx(skm.precision_score(labels, pred))
    assert m["f1"] == pytest.approx(skm.f1_score(labels, pred))


# ----------------------------------------------------------------------------- AUC
def test_auc_matches_sklearn_and_one_class_is_nan_not_a_crash():
    probs, labels, ids = _cohort()
    r = ev.evaluate_predictions(probs, labels, ids, positive=1, class_names=CLASSES)
    assert r["image"]["auc"] == pytest.approx(skm.roc_auc_score(labels, probs[:, 1]))
    assert r["image"]["positive_class"] == "recurrence" and r["image"]["n_subjects"] == 30
    only_recurrence = labels == 1
    sub = ev.evaluate_predictions(
        probs[only_recurrence], labels[only_recurrence], ids[only_recurrence],
        positive=1, class_names=CLASSES, auc_ci="bootstrap",
    )  # fmt: skip
    for level in ("image", "subject"):
        m = sub[level]
        assert math.isnan(m["auc"]) and all(math.isnan(v) for v in m["auc_ci"])
        assert math.isnan(m["specificity"]) and not math.isnan(m["sensitivity"])
        assert any("auc undefined" in n for n in m["notes"])
        assert any("specificity undefined" in n for n in m["notes"])
    assert "n/a" in reporting.format_table({"recurrence only": sub})


def test_ying_positive_class_is_necrosis():
    probs, labels, ids = _cohort()
    gao = ev.evaluate_predictions(probs, labels, ids, positive=1, class_names=CLASSES)
    ying = ev.evaluate_predictions(probs, labels, ids, positive=0, class_names=CLASSES)
    assert ying["image"]["positive_class"] == "necrosis"
    assert ying["image"]["n_positive"] == gao["image"]["n_negative"]
    assert ying["image"]["auc"] == pytest.approx(skm.roc_auc_score(labels == 0, probs[:, 0]))


def test_fast_delong_matches_plain_placement_values():
    rng = np.random.default_rng(1)
    y = np.arange(50) < 30  # 30 positives, 20 negatives
    a = np.round(rng.normal(y * 1.0, 1.0), 1)  # rounded: ties between and within classes
    b = np.round(0.5 * a + rng.normal(0, 0.7, 50), 1)
    aucs, cov = ev.delong_covariance(y, np.stack([a, b]))
    auc_a, v10a, v01a = _delong_plain(y, a)
    auc_b, v10b, v01b = _delong_plain(y, b)
    np.testing.assert_allclose(aucs, [auc_a, auc_b], atol=1e-12)
    np.testing.assert_allclose(aucs, [skm.roc_auc_score(y, a), skm.roc_auc_score(y, b)])
    plain_cov = np.cov(np.stack([v10a, v10b])) / 30 + np.cov(np.stack([v01a, v01b])) / 20
    np.testing.assert_allclose(cov, plain_cov, atol=1e-12)
    # The test of two correlated AUCs from the same plain pieces.
    z, p = ev.delong_test(y.astype(int), a, b)
    var = plain_cov[0, 0] + plain_cov[1, 1] - 2 * plain_cov[0, 1]
    assert z == pytest.approx((auc_a - auc_b) / math.sqrt(var))
    assert p == pytest.approx(2 * stats.norm.sf(abs(z)))
    assert ev.delong_test(y, a, a) == (0.0, 1.0)


def test_delong_ci_agrees_with_bootstrap():
    # One image a subject: resampling subjects is resampling cases; the DeLong standard error and
    # the bootstrap spread estimate the same quantity.
    rng = np.random.default_rng(2)
    y = np.arange(300) < 180
    s = rng.normal(y * 1.2, 1.0)
    ids = [f"s{i}" for i in range(300)]
    _, cov = ev.delong_covariance(y, s)
    reps = ev.bootstrap_aucs(y, s, ids, n_bootstrap=1000, seed=0)
    assert reps.std() == pytest.approx(math.sqrt(cov[0, 0]), rel=0.15)
    auc, delong_ci, _ = ev.roc_auc_with_ci(y, s, ids, method="delong")
    _, boot_ci, _ = ev.roc_auc_with_ci(y, s, ids, method="bootstrap", n_bootstrap=1000)
    np.testing.assert_allclose(delong_ci, boot_ci, atol=0.02)
    assert delong_ci[0] < auc < delong_ci[1]


def test_delong_undefined_cases():
    auc, ci, notes = ev.roc_auc_with_ci([True, False, False], [0.9, 0.1, 0.2])
    assert auc == 1.0 and all(math.isnan(v) for v in ci) and "2 or more" in notes[0]
    assert all(math.isnan(v) for v in ev.delong_test([1, 0, 0], [0.9, 0.1, 0.2], [0.5, 0.4, 0.1]))
    _, ci, notes = ev.roc_auc_with_ci([1, 1, 0, 0], [0.9, 0.8, 0.1, 0.2])  # perfect separation
    assert ci == [1.0, 1.0] and "degenerate" in notes[0]


# ----------------------------------------------------------------------------- bootstrap
def test_weighted_auc_matches_sklearn_sample_weight():
    rng = np.random.default_rng(3)
    y = rng.random(80) < 0.4
    s = np.round(rng.random(80), 1)
    w = rng.integers(0, 4, 80).astype(float)
    bins = np.unique(s, return_inverse=True)[1]
    expected = skm.roc_auc_score(y, s, sample_weight=w)
    assert ev._weighted_auc(bins, y, w) == pytest.approx(expected)


def test_bootstrap_resamples_subjects_stratified():
    probs, labels, ids = _cohort(n_subjects=12, slices=5)
    y = labels == 1
    subjects, inverse, counts = ev.bootstrap_subject_counts(y, ids, n_bootstrap=50, seed=0)
    subject_y = np.array([y[ids == s][0] for s in subjects])
    assert (counts[:, subject_y].sum(axis=1) == subject_y.sum()).all()  # 8 positive subjects
    assert (counts[:, ~subject_y].sum(axis=1) == (~subject_y).sum()).all()  # 4 negative ones
    # Each replicate's AUC equals sklearn's on the explicitly rebuilt cohort of drawn subjects.
    reps = ev.bootstrap_aucs(y, probs[:, 1], ids, n_bootstrap=50, seed=0)
    for b in range(10):
        rows = np.concatenate(
            [np.flatnonzero(inverse == j).repeat(c) for j, c in enumerate(counts[b])]
        )
        assert reps[b] == pytest.approx(skm.roc_auc_score(y[rows], probs[rows, 1]))
    again = ev.bootstrap_aucs(y, probs[:, 1], ids, n_bootstrap=50, seed=0)
    np.testing.assert_array_equal(reps, again)  # seeded


def test_subject_with_many_slices_counts_once():
    # 6 subjects a class, 40 identical slices each. Treating slices as independent (DeLong on
    # images) is falsely precise; resampling subjects gives the uncertainty of 12 patients: the
    # same replicates as one row per subject.
    rng = np.random.default_rng(4)
    subject_scores = np.concatenate([rng.normal(1, 1, 6), rng.normal(0, 1, 6)])
    subject_y = np.arange(12) < 6
    subject_ids = np.array([f"s{i:02d}" for i in range(12)])
    scores, y, ids = (np.repeat(v, 40) for v in (subject_scores, subject_y, subject_ids))
    per_slice = ev.bootstrap_aucs(y, scores, ids, n_bootstrap=300)
    per_subject = ev.bootstrap_aucs(subject_y, subject_scores, subject_ids, n_bootstrap=300)
    np.testing.assert_allclose(per_slice, per_subject)
    _, boot_ci, _ = ev.roc_auc_with_ci(y, scores, ids, method="bootstrap", n_bootstrap=300)
    _, image_ci, _ = ev.roc_auc_with_ci(y, scores, method="delong")
    assert boot_ci[1] - boot_ci[0] > 2 * (image_ci[1] - image_ci[0])
    # A subject with 200 slices is still drawn once per replicate on average, like the others.
    slices = np.array([200] + [1] * 11)
    big_y, big_ids = np.repeat(subject_y, slices), np.repeat(subject_ids, slices)
    counts = ev.bootstrap_subject_counts(big_y, big_ids, n_bootstrap=500)[2]
    assert counts.mean(axis=0) == pytest.approx(np.ones(12), abs=0.15)


# ----------------------------------------------------------------------------- subjects
def test_aggregation_methods_by_hand():
    probs_pos = [0.2, 0.6, 0.7, 0.4, 0.45, 0.9]
    labels = [1, 1, 1, 0, 0, 0]
    ids = ["a", "a", "a", "b", "b", "c"]
    subjects, mean, lab = ev.aggregate_by_subject(probs_pos, labels, ids, "mean")
    assert list(subjects) == ["a", "b", "c"] and list(lab) == [1, 0, 0]
    np.testing.assert_allclose(mean, [0.5, 0.425, 0.9])
    _, index, _ = ev.aggregate_by_subject(probs_pos, labels, ids, "predictive_index")
    np.testing.assert_allclose(index, [2 / 3, 0, 1])
    _, index, _ = ev.aggregate_by_subject(probs_pos, labels, ids, "majority", threshold=0.65)
    np.testing.assert_allclose(index, [1 / 3, 0, 1])
    with pytest.raises(ValueError, match="median"):
        ev.aggregate_by_subject(probs_pos, labels, ids, "median")


def test_mixed_labels_name_the_subject():
    with pytest.raises(InputError, match="subject b") as err:
        ev.aggregate_by_subject([0.1, 0.2, 0.3], [1, 0, 1], ["a", "b", "b"])
    assert err.value.subject == "b" and "different labels" in err.value.problem


def test_subject_metrics_use_the_aggregated_scores():
    probs, labels, ids = _cohort(n_subjects=20, slices=4, separation=0.2)
    r = ev.evaluate_predictions(
        probs, labels, ids, positive=1, class_names=CLASSES, subject_method="majority"
    )
    subjects, s_score, s_lab = ev.aggregate_by_subject(probs[:, 1], labels, ids, "majority")
    s = r["subject"]
    assert s["n"] == 20 and s["subject_method"] == "majority"
    assert s["auc"] == pytest.approx(skm.roc_auc_score(s_lab, s_score))
    assert s["tp"] == int(np.sum((s_score >= 0.5) & (s_lab == 1)))
    pi = ev.evaluate_predictions(
        probs, labels, ids, positive=1, class_names=CLASSES, subject_method="predictive_index"
    )
    assert any("not chosen on validation" in n for n in pi["subject"]["notes"])


def test_youden_threshold_by_hand():
    labels = [0, 0, 0, 1, 1, 1]
    scores = [0.1, 0.3, 0.6, 0.4, 0.8, 0.9]
    # J = 2/3 at cut 0.8 (TPR 2/3, FPR 0) and at cut 0.4 (TPR 1, FPR 1/3): the higher one wins,
    # returned as the midpoint to the next lower score 0.6.
    assert ev.choose_threshold(labels, scores) == pytest.approx(0.7)
    fpr, tpr, _ = skm.roc_curve(labels, scores)
    y, s = np.array(labels) == 1, np.array(scores)
    j = np.mean(s[y] >= 0.7) - np.mean(s[~y] >= 0.7)
    assert j == pytest.approx(np.max(tpr - fpr))
    assert ev.choose_threshold([1, 1], [0.2, 0.3]) == 0.5  # one class: the default, no crash


def test_thresholds_come_from_validation_and_feed_test():
    val = _cohort(n_subjects=24, slices=6, seed=5, separation=0.15)
    test = _cohort(n_subjects=24, slices=6, seed=6, separation=0.15)
    chosen = ev.choose_thresholds(*val, positive=1, subject_method="predictive_index")
    assert chosen["threshold"] == 0.5
    _, index, s_lab = ev.aggregate_by_subject(val[0][:, 1], val[1], val[2], "predictive_index")
    assert chosen["subject_threshold"] == ev.choose_threshold(s_lab, index)
    r = ev.evaluate_predictions(
        *test, positive=1, class_names=CLASSES, subject_method="predictive_index", **chosen
    )
    assert r["subject"]["threshold"] == chosen["subject_threshold"]
    assert not any("validation" in n for n in r["subject"]["notes"])
    tuned = ev.choose_thresholds(*val, positive=1, tune_threshold=True)
    assert tuned["threshold"] == ev.choose_threshold(val[1], val[0][:, 1])
    assert tuned["subject_threshold"] == tuned["threshold"]  # "mean" keeps the image cut-off


# ----------------------------------------------------------------------------- t tests, inputs
def test_one_sample_ttests_match_scipy():
    probs_pos = np.array([0.9, 0.8, 0.6, 0.3, 0.2, 0.45, 0.1])
    labels = np.array([1, 1, 1, 0, 0, 0, 0])
    true_class = np.array([0.9, 0.8, 0.6, 0.7, 0.8, 0.55, 0.9])
    out = ev.one_sample_ttests(probs_pos, labels, CLASSES)
    for group, x in (
        ("all", true_class),
        ("recurrence", true_class[:3]),
        ("necrosis", true_class[3:]),
    ):
        t, p = stats.ttest_1samp(x, 0.5)
        assert (out[group]["t"], out[group]["p"]) == pytest.approx((t, p)), group
        assert out[group]["n"] == len(x) and out[group]["mean"] == pytest.approx(x.mean())
    one = ev.one_sample_ttests([0.9], [1], CLASSES)
    assert math.isnan(one["recurrence"]["t"]) and one["necrosis"]["n"] == 0
    assert "necrosis" in reporting.format_ttests({"ERN-Net": out}, fmt="markdown")


def test_one_sample_ttests_of_a_collapsed_model_are_undefined():
    # Every case gets 0.593 (+ float noise): a collapsed model. No t = 1e15, no p = 0.
    probs_pos = np.full(6, 0.593) + np.array([0, 1e-17, 0, 0, 2e-17, 0])
    out = ev.one_sample_ttests(probs_pos, np.array([1, 1, 1, 0, 0, 0]), CLASSES)
    for group in ("recurrence", "necrosis"):
        assert math.isnan(out[group]["t"]) and math.isnan(out[group]["p"]), group
    assert math.isfinite(out["all"]["t"])  # 0.593 and 0.407 vary: a defined test


def test_bad_inputs_are_refused_clearly():
    probs, labels, ids = _cohort(n_subjects=3, slices=2)
    bad = probs.copy()
    bad[0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        ev.evaluate_predictions(bad, labels, ids, positive=1, class_names=CLASSES)
    with pytest.raises(ValueError, match="rows"):
        ev.evaluate_predictions(probs, labels[:-1], ids, positive=1, class_names=CLASSES)
    with pytest.raises(ValueError, match="class indices"):
        ev.evaluate_predictions(probs, labels + 1, ids, positive=1, class_names=CLASSES)
    with pytest.raises(ValueError, match="positive"):
        ev.evaluate_predictions(probs, labels, ids, positive=2, class_names=CLASSES)


# ----------------------------------------------------------------------------- reporting
def test_flatten_keys_and_cis():
    probs, labels, ids = _cohort(n_subjects=9, slices=2)
    r = ev.evaluate_predictions(probs, labels, ids, positive=1, class_names=CLASSES)
    flat = reporting.flatten({"test": r})
    assert flat["test.image.auc"] == r["image"]["auc"]
    assert flat["test.subject.auc_ci_low"] == r["subject"]["auc_ci"][0]
    assert flat["test.image.sensitivity_ci_high"] == r["image"]["sensitivity_ci"][1]
    assert flat["test.subject.f1_ci_low"] == r["subject"]["f1_ci"][0]
    # The notes travel with the numbers (9 subjects: a small sample), as lists of str.
    assert flat["test.subject.notes"] == r["subject"]["notes"]
    assert any("small sample: 9 subjects" in n for n in flat["test.subject.notes"])
    numbers = {k: v for k, v in flat.items() if not k.endswith("notes")}
    whole = ("n", "n_positive", "n_negative", "n_subjects", "tp", "fp", "tn", "fn")
    counts = {k: v for k, v in numbers.items() if k.rsplit(".", 1)[1] in whole}
    assert counts and all(type(v) is int for v in counts.values())  # "tp": 76, not 76.0
    assert all(isinstance(v, float) for k, v in numbers.items() if k not in counts)
    assert '"test.subject.tp": ' + str(r["subject"]["tp"]) + "," in json.dumps(flat)
    assert not any(k.endswith(("positive_class", "auc_ci", "ci_method")) for k in flat)
    assert reporting.flatten(r["image"], "val")["val.n"] == r["image"]["n"]
    back = reporting.unflatten(flat, "test")
    assert back["subject"]["notes"] == r["subject"]["notes"]


def test_table_formats_name_the_positive_class():
    probs, labels, ids = _cohort(n_subjects=12, slices=3)
    results = {
        "ERN-Net T1c": ev.evaluate_predictions(probs, labels, ids, positive=1, class_names=CLASSES),
        "ResNet-18 T1c": ev.evaluate_predictions(
            probs[:, ::-1] * 0.5 + 0.25, labels, ids, positive=1, class_names=CLASSES
        ),
    }
    text = reporting.format_table(results)
    md = reporting.format_table(results, fmt="markdown")
    for table in (text, md):
        assert "Sensitivity [positive: recurrence]" in table and "ERN-Net T1c subject" in table
        assert "subject rows: Wilson for proportions, DeLong for AUC" in table
        assert "image rows: percentile bootstrap over subjects (stratified by class)" in table
        assert "small sample: 12 subjects (8 recurrence, 4 necrosis)" in table
    m = results["ERN-Net T1c"]["subject"]
    lo, hi = m["auc_ci"]
    assert f"{m['auc']:.3f} ({lo:.3f}-{hi:.3f})" in md
    lines = md.splitlines()
    assert lines[1].startswith("| --- |") and lines[6] == "" and lines[8:10] == ["", "Notes:"]
    # Subject rows lead, then image rows, each in the order of the results.
    names = [line.split(" | ")[0][2:] for line in lines[2:6]]
    assert names == [f"{n} {lvl}" for lvl in ("subject", "image") for n in results]
    rows = list(csv.DictReader(io.StringIO(reporting.format_table(results, fmt="csv"))))
    assert len(rows) == 4 and rows[0]["positive_class"] == "recurrence"
    assert float(rows[0]["auc_ci_low"]) == lo and int(rows[1]["n"]) == 12
    assert int(rows[2]["n"]) == 36 and "small sample" in rows[0]["notes"]
    ying = ev.evaluate_predictions(probs, labels, ids, positive=0, class_names=CLASSES)
    mixed = reporting.format_table({"gao": results["ERN-Net T1c"], "ying": ying}, fmt="markdown")
    assert "positive class" in mixed and "| ying image | necrosis |" in mixed
    with pytest.raises(ValueError, match="latex"):
        reporting.format_table(results, fmt="latex")


def test_plot_roc_writes_png(tmp_path):
    probs, labels, ids = _cohort()
    weak = np.clip(probs[:, 1] + np.random.default_rng(0).normal(0, 0.4, len(labels)), 0, 1)
    curves = {
        "ERN-Net": (labels, probs[:, 1]),
        "ResNet-18": (labels, weak),
        "one class": (np.ones(5), np.linspace(0, 1, 5)),
    }
    path = reporting.plot_roc(curves, tmp_path / "roc" / "image.png", "Image-wise ROC",
                       positive_class="recurrence")  # fmt: skip
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 20_000


def test_one_volume_per_subject_prints_the_subject_rows_once():
    probs, labels, ids = _cohort(n_subjects=12, slices=1)  # a 3D run: one volume a subject
    r = {"test": ev.evaluate_predictions(probs, labels, ids, positive=1, class_names=CLASSES)}
    assert r["test"]["image"]["auc"] == r["test"]["subject"]["auc"]
    text = reporting.format_table(r)
    assert "test subject" in text and "test image" not in text
    assert reporting.ONE_IMAGE_NOTE in text
    assert "test image" in reporting.format_table(r, fmt="csv")  # the file keeps both
    slices = _cohort(n_subjects=12, slices=3)
    r2 = {"test": ev.evaluate_predictions(*slices, positive=1, class_names=CLASSES)}
    assert "test image" in reporting.format_table(r2, fmt="markdown")
