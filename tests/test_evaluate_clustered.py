"""Image-level intervals that resample patients, and the caveats that travel with the numbers.

References: scipy.stats.bootstrap (stratified: one sample per class), Obuchowski's (1997)
clustered AUC variance and the ratio-estimator variance of a clustered proportion, both written
plainly here, and scikit-learn on explicitly rebuilt cohorts.
"""

import json
import logging
import math
from pathlib import Path

import numpy as np
import pytest
from scipy import stats
from sklearn import metrics as skm

from benchmarks import clustered_ci
from ernjax.evaluate import reporting
from ernjax.evaluate import stats as ev
from ernjax.evaluate.predictions import Predictions
from ernjax.evaluate.scoring import ScoringPolicy

CLASSES = ("necrosis", "recurrence")


def _clustered(n_pos=20, n_neg=20, slices=6, rho=0.6, seed=0):
    """(y [N], score [N], ids [N]): slices of a subject correlate by rho (clustered_ci's model)."""
    probs, labels, ids = clustered_ci.cohort(np.random.default_rng(seed), n_pos, n_neg, rho, slices)
    return labels == 1, probs[:, 1], ids


def _probs(p):
    return np.stack([1 - p, p], axis=1)


# ----------------------------------------------------------------------------- the bootstrap
def test_replicates_equal_sklearn_on_the_rebuilt_cohorts():
    y, s, ids = _clustered(n_pos=7, n_neg=5, slices=4)
    reps = ev.bootstrap_metrics(y, s, ids, 0.5, n_bootstrap=30, seed=3)
    _, inverse, counts = ev.bootstrap_subject_counts(y, ids, n_bootstrap=30, seed=3)
    for b in range(10):
        rows = np.concatenate(
            [np.flatnonzero(inverse == j).repeat(c) for j, c in enumerate(counts[b])]
        )
        yb, pb = y[rows], s[rows] >= 0.5
        assert reps["sensitivity"][b] == pytest.approx(skm.recall_score(yb, pb))
        assert reps["specificity"][b] == pytest.approx(skm.recall_score(~yb, ~pb))
        assert reps["accuracy"][b] == pytest.approx(skm.accuracy_score(yb, pb))
        assert reps["precision"][b] == pytest.approx(skm.precision_score(yb, pb, zero_division=0))
        assert reps["f1"][b] == pytest.approx(skm.f1_score(yb, pb))
        assert reps["auc"][b] == pytest.approx(skm.roc_auc_score(yb, s[rows]))
    np.testing.assert_array_equal(reps["auc"], ev.bootstrap_aucs(y, s, ids, n_bootstrap=30, seed=3))


def _plain_auc(pos, neg):
    return np.mean((pos[:, None] > neg[None, :]) + 0.5 * (pos[:, None] == neg[None, :]))


def test_one_slice_per_subject_matches_scipy_stratified_bootstrap():
    # One image a subject: the subject bootstrap is the ordinary bootstrap, stratified by class,
    # which scipy.stats.bootstrap does when each class is its own sample.
    rng = np.random.default_rng(7)
    y = np.arange(70) < 40
    s = 1 / (1 + np.exp(-rng.normal(y * 1.0 - 0.3, 1.0)))
    ids = [f"s{i}" for i in range(70)]
    cis, notes = ev.bootstrap_cis(y, s, ids, 0.5, n_bootstrap=4000, seed=0)
    assert notes == []

    def counts(pos, neg):
        tp, fp = np.sum(pos >= 0.5), np.sum(neg >= 0.5)
        return tp, len(pos) - tp, len(neg) - fp, fp  # tp, fn, tn, fp

    statistics = {
        "sensitivity": lambda p, n: counts(p, n)[0] / len(p),
        "specificity": lambda p, n: counts(p, n)[2] / len(n),
        "accuracy": lambda p, n: (counts(p, n)[0] + counts(p, n)[2]) / (len(p) + len(n)),
        "precision": lambda p, n: counts(p, n)[0] / (counts(p, n)[0] + counts(p, n)[3]),
        "f1": lambda p, n: 2 * counts(p, n)[0] / (len(p) + counts(p, n)[0] + counts(p, n)[3]),
        "auc": _plain_auc,
    }
    for name, statistic in statistics.items():
        ref = stats.bootstrap(
            (s[y], s[~y]), statistic, n_resamples=4000, method="percentile", vectorized=False,
            rng=np.random.default_rng(1),
        ).confidence_interval  # fmt: skip
        np.testing.assert_allclose(cis[f"{name}_ci"], [ref.low, ref.high], atol=0.02, err_msg=name)


def _obuchowski_var(y, s, ids):
    """Obuchowski (1997) variance of the AUC of clustered data, each cluster one class."""
    pos, neg = s[y], s[~y]
    psi = (pos[:, None] > neg[None, :]) + 0.5 * (pos[:, None] == neg[None, :])
    m, n, auc = len(pos), len(neg), psi.mean()
    v10 = psi.sum(axis=1) / n  # per positive image
    v01 = psi.sum(axis=0) / m  # per negative image
    c10 = [(v10[ids[y] == c].sum(), np.sum(ids[y] == c)) for c in np.unique(ids[y])]
    c01 = [(v01[ids[~y] == c].sum(), np.sum(ids[~y] == c)) for c in np.unique(ids[~y])]
    s10 = len(c10) / ((len(c10) - 1) * m) * sum((v - k * auc) ** 2 for v, k in c10)
    s01 = len(c01) / ((len(c01) - 1) * n) * sum((v - k * auc) ** 2 for v, k in c01)
    return s10 / m + s01 / n  # no cluster holds both classes: no covariance term


def test_image_auc_spread_matches_obuchowski_clustered_variance():
    y, s, ids = _clustered(n_pos=40, n_neg=40, slices=6, rho=0.6, seed=2)
    reps = ev.bootstrap_aucs(y, s, ids, n_bootstrap=2000, seed=0)
    clustered = math.sqrt(_obuchowski_var(y, s, ids))
    assert reps.std() == pytest.approx(clustered, rel=0.12)
    # DeLong over slices (every slice independent) is far narrower: the error this fixes.
    _, cov = ev.delong_covariance(y, s)
    assert math.sqrt(cov[0, 0]) < 0.75 * clustered


def test_image_sensitivity_spread_matches_the_clustered_ratio_variance():
    y, s, ids = _clustered(n_pos=40, n_neg=40, slices=6, rho=0.6, seed=4)
    reps = ev.bootstrap_metrics(y, s, ids, 0.5, n_bootstrap=2000, seed=0, auc=False)
    hits = s[y] >= 0.5
    clusters = [(hits[ids[y] == c].sum(), np.sum(ids[y] == c)) for c in np.unique(ids[y])]
    p, total, k = hits.mean(), hits.size, len(clusters)
    var = k / (k - 1) * sum((x - p * m) ** 2 for x, m in clusters) / total**2
    assert reps["sensitivity"].std() == pytest.approx(math.sqrt(var), rel=0.12)


# ----------------------------------------------------------------------------- the defaults
def test_image_intervals_resample_subjects_by_default():
    # 12 subjects, 40 identical slices each: every image interval is the subjects' own bootstrap.
    rng = np.random.default_rng(4)
    subject_p = np.clip(np.r_[rng.normal(0.65, 0.2, 8), rng.normal(0.4, 0.2, 4)], 0.01, 0.99)
    subject_y = (np.arange(12) < 8).astype(int)
    subject_ids = np.array([f"s{i:02d}" for i in range(12)])
    p, labels, ids = (np.repeat(v, 40) for v in (subject_p, subject_y, subject_ids))
    r = ev.evaluate_predictions(_probs(p), labels, ids, positive=1, class_names=CLASSES)
    image, subject = r["image"], r["subject"]
    assert image["ci_method"] == image["auc_ci_method"] == "subject_bootstrap"
    assert (subject["ci_method"], subject["auc_ci_method"]) == ("wilson", "delong")
    assert subject["f1_ci_method"] == "subject_bootstrap"
    one_row, _ = ev.bootstrap_cis(subject_y == 1, subject_p, subject_ids, 0.5)
    for name in ev.BOOTSTRAPPED:
        np.testing.assert_allclose(image[f"{name}_ci"], one_row[f"{name}_ci"], err_msg=name)
        assert image[f"{name}_ci"][0] <= image[name] <= image[f"{name}_ci"][1], name
    assert subject["f1_ci"] == pytest.approx(one_row["f1_ci"])
    assert not any("independent" in n for n in image["notes"])
    # image_ci="independent": Wilson and DeLong over 480 slices, much narrower, and said so.
    old = ev.evaluate_predictions(
        _probs(p), labels, ids, positive=1, class_names=CLASSES, image_ci="independent"
    )["image"]
    assert old["sensitivity_ci"] == list(ev.proportion_ci(old["tp"], old["n_positive"]))
    assert old["auc_ci"] == ev.roc_auc_with_ci(labels == 1, p)[1]
    width = {k: m["auc_ci"][1] - m["auc_ci"][0] for k, m in (("new", image), ("old", old))}
    assert width["new"] > 2 * width["old"]
    assert any("treat the images as independent" in n for n in old["notes"])
    with pytest.raises(ValueError, match="image CI method"):
        ev.level_ci_methods("image", image_ci="delong")


def test_policy_reads_image_ci_from_the_config():
    from ernjax import defaults

    e = defaults.base_config().eval
    assert e.image_ci == "subject_bootstrap"
    assert ScoringPolicy.from_config(e, CLASSES).image_ci == "subject_bootstrap"
    e.image_ci = "independent"
    assert ScoringPolicy.from_config(e, CLASSES).image_ci == "independent"


# ----------------------------------------------------------------------------- caveats
def test_constant_predictor_is_flagged_in_words():
    y, _, ids = _clustered(n_pos=8, n_neg=4, slices=13)
    p = np.full(y.size, 0.593)
    r = ev.evaluate_predictions(_probs(p), y.astype(int), ids, positive=1, class_names=CLASSES)
    table = reporting.format_table({"collapsed": r})
    assert "0.500 (0.500-0.500)" in table  # the figure a reader sees, and under it why
    for level in ("subject", "image"):
        assert f"collapsed {level}: constant scores: every {level} scored 0.593" in table
    assert "collapsed image: zero-width CIs, which are not certainty" in table
    assert "auc (0.500-0.500)" in table
    assert "auc_ci degenerate: DeLong variance 0 (the scores tie)" in table
    assert "the classes do not overlap" not in table


def test_small_sample_says_so_with_the_width():
    # Hanley & McNeil (1982) eq. 2 by hand at AUC 0.75, 8 and 4 cases: Q1 = 0.6, Q2 = 0.642857,
    # var = (0.1875 + 7 * 0.0375 + 3 * 0.080357) / 32 = 0.021596.
    assert ev.hanley_mcneil_se(0.75, 8, 4) == pytest.approx(0.146956, abs=1e-5)

    def notes(n_pos, n_neg, separated=False):
        y, s, ids = _clustered(n_pos=n_pos, n_neg=n_neg, slices=3, rho=0.95, seed=1)
        p = np.where(y, 0.9, 0.1) if separated else s
        r = ev.evaluate_predictions(_probs(p), y.astype(int), ids, positive=1, class_names=CLASSES)
        return [n for n in r["subject"]["notes"] if n.startswith("small sample")], r["subject"]

    assert notes(20, 20)[0] == []
    few, subject = notes(8, 4)
    width = subject["auc_ci"][1] - subject["auc_ci"][0]
    assert 0.1 < width < 1
    assert few == [
        f"small sample: 12 subjects (8 recurrence, 4 necrosis), under about 30 subjects or 10 of "
        f"a class: the subject AUC 95% CI is {width:.2f} wide"
    ]
    assert "6 necrosis" in notes(34, 6)[0][0]
    separated, subject = notes(8, 4, separated=True)  # AUC 1: DeLong's interval collapses
    assert subject["auc"] == 1.0 and "of zero width" in separated[0]
    assert "an AUC of 0.75 has a 95% CI about 0.58 wide (Hanley & McNeil 1982)" in separated[0]
    one_class = ev.small_sample_note(
        dict(n=5, n_positive=5, n_negative=0, auc_ci=[math.nan] * 2), "recurrence", "necrosis"
    )
    assert one_class[0].endswith("one class only, so the AUC is undefined")
    assert "nan" not in one_class[0]


def test_notes_reach_json_csv_and_the_log(tmp_path, caplog):
    y, s, ids = _clustered(n_pos=8, n_neg=4, slices=13)
    preds = Predictions(list(ids), y.astype(int), _probs(s), CLASSES)
    policy = ScoringPolicy(class_names=CLASSES, positive=1)
    with caplog.at_level(logging.INFO):
        r = policy.score(preds)
    line = next(m for m in caplog.messages if m.startswith("scored 12 subjects, 156 images"))
    assert line.index("subject AUC") < line.index("image AUC") < line.index("small sample")
    reporting.write_tables(tmp_path, "compare", {"ern": r})
    saved = json.loads((tmp_path / "compare.json").read_text())
    assert saved["ern.subject.notes"] == r["subject"]["notes"] and saved["ern.image.notes"] == []
    assert "small sample" in (tmp_path / "compare.csv").read_text()
    md = (tmp_path / "compare.md").read_text()
    assert "- ern subject: small sample: 12 subjects" in md


# ----------------------------------------------------------------------------- coverage
@pytest.mark.slow
def test_clustered_intervals_cover_where_independent_ones_do_not():
    # The README's test size, 8 vs 4 subjects x 13 slices, slices correlated 0.8 within a
    # subject (benchmarks/clustered_ci.py runs 400 cohorts per cell; 120 here, SE about 0.04).
    rows = clustered_ci.simulate(8, 4, 0.8, n_sims=120, n_bootstrap=500, seed=11)
    boot, independent, subject = rows
    for name in ("sensitivity", "specificity", "accuracy", "auc"):
        assert boot[name] >= 0.78 and independent[name] <= 0.7, (name, boot, independent)
        assert boot[name] - independent[name] >= 0.2, name
    assert boot["f1"] >= 0.78 and subject["auc"] >= 0.75


def test_the_readme_example_table_is_what_ernjax_prints():
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    start = readme.index("```\n", readme.index("An example, printed")) + 4
    shown = readme[start : readme.index("```", start)]
    probs, labels, ids = clustered_ci.cohort(np.random.default_rng(2), 8, 4, 0.8)
    r = ev.evaluate_predictions(probs, labels, ids, positive=1, class_names=CLASSES)
    flat = _probs(np.full(len(labels), 0.593))
    collapsed = ev.evaluate_predictions(flat, labels, ids, positive=1, class_names=CLASSES)
    assert reporting.format_table({"ern_b0": r, "collapsed": collapsed}) == shown


def test_holm_matches_statsmodels():
    from statsmodels.stats.multitest import multipletests

    rng = np.random.default_rng(4)
    for m in (1, 2, 7, 20):
        p = rng.uniform(0, 0.2, m) ** 2
        np.testing.assert_allclose(ev.holm(p), multipletests(p, method="holm")[1], rtol=1e-12)
    # An undefined test (NaN) is not counted in the family and stays undefined.
    out = ev.holm([0.01, float("nan"), 0.04])
    np.testing.assert_allclose(out[[0, 2]], multipletests([0.01, 0.04], method="holm")[1])
    assert np.isnan(out[1])
