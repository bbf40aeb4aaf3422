"""Metrics with confidence intervals, image-wise and subject-wise, the way the papers report them.

Gao 2020 and Ying 2025 report sensitivity, specificity, accuracy and ROC AUC with 95% CIs; Shin 2021
adds precision and F1 and a subject decision by the "predictive index". Which class is positive is a
setting (Gao: recurrence, Ying: necrosis) and travels with every result. A value that is undefined
(AUC on a one-class subset, sensitivity without positives) is NaN with a note, never an exception.

Intervals. The slices of one patient are not independent, so image-level intervals come by default
from a percentile bootstrap that resamples subjects (stratified by class; a subject's slices travel
together), for every metric; `image_ci="independent"` gives the older Wilson/DeLong intervals that
treat slices as independent (noted as such). Subject-level rows hold one case per subject: Wilson
(or `ci_method`) and DeLong (or `auc_ci`) are right there. F1 is no proportion: its interval is the
subject bootstrap at both levels. Notes also flag zero-width intervals, constant scores and samples
too small for stable estimates (under about 30 subjects or 10 a class), with the width they imply.

Thresholds are chosen on validation data only: `choose_thresholds(validation...)` returns the
keyword arguments that `evaluate_predictions(test...)` takes. Tables and ROC figures live in
`ernjax.evaluate.reporting`.
"""

from __future__ import annotations

import logging
import math
import warnings
from collections.abc import Sequence

import numpy as np
from scipy import stats
from sklearn import metrics as skm

from ernjax.errors import InputError

PROPORTION_CI_METHODS = ("wilson", "wilson_cc", "exact", "wald")
AUC_CI_METHODS = ("delong", "bootstrap")
# Image-level intervals: resample subjects (the default), or treat the images as independent.
IMAGE_CI_METHODS = ("subject_bootstrap", "independent")
BOOTSTRAPPED = ("sensitivity", "specificity", "accuracy", "precision", "f1", "auc")
# Below these counts (about 30 subjects, 10 of a class) the summary says the sample is small.
SMALL_SUBJECTS, SMALL_CLASS = 30, 10
# Scores that vary by less than this (the resolution of predictions_<split>.csv) are constant.
CONSTANT_SCORE = 1e-6
SUBJECT_METHODS = ("mean", "predictive_index", "majority")
NAN = float("nan")
# The image cut-off when none was chosen on validation data: argmax for two classes, as Gao 2020
# and Ying 2025 used.
DEFAULT_THRESHOLD = 0.5


# ----------------------------------------------------------------------------- proportions
def proportion_ci(
    successes: int, n: int, method: str = "wilson", confidence: float = 0.95
) -> tuple[float, float]:
    """Confidence interval for a binomial proportion successes / n.

    Args:
      successes: number of successes (e.g. true positives for sensitivity).
      n: number of trials; 0 gives (nan, nan).
      method: "wilson" (score interval, the default: good coverage at small n and near 0 or 1),
        "wilson_cc" (Wilson with continuity correction, Newcombe 1998), "exact" (Clopper-Pearson,
        from the beta distribution; conservative) or "wald" (normal approximation; shown for
        comparison with older papers, poor at small n).
      confidence: two-sided level, e.g. 0.95.

    Returns:
      (low, high), clipped to [0, 1].
    """
    if method not in PROPORTION_CI_METHODS:
        raise ValueError(f"CI method {method!r}: expected one of {PROPORTION_CI_METHODS}")
    if n == 0:
        return NAN, NAN
    x, p = successes, successes / n
    alpha = 1.0 - confidence
    z = stats.norm.ppf(1.0 - alpha / 2)
    if method == "exact":
        low = stats.beta.ppf(alpha / 2, x, n - x + 1) if x > 0 else 0.0
        high = stats.beta.ppf(1 - alpha / 2, x + 1, n - x) if x < n else 1.0
    elif method == "wald":
        half = z * math.sqrt(p * (1 - p) / n)
        low, high = p - half, p + half
    elif method == "wilson":
        denom = 1 + z**2 / n
        center = (p + z**2 / (2 * n)) / denom
        half = z / denom * math.sqrt(p * (1 - p) / n + z**2 / (4 * n**2))
        low = center - half if x > 0 else 0.0  # exact 0 and 1 at the ends (no rounding error)
        high = center + half if x < n else 1.0
    else:  # Newcombe (1998) method 4
        denom = 2 * (n + z**2)
        low = high = 0.0
        if x > 0:
            root = math.sqrt(z**2 - 2 - 1 / n + 4 * p * (n * (1 - p) + 1))
            low = (2 * n * p + z**2 - 1 - z * root) / denom
        high = 1.0
        if x < n:
            root = math.sqrt(z**2 + 2 - 1 / n + 4 * p * (n * (1 - p) - 1))
            high = (2 * n * p + z**2 + 1 + z * root) / denom
    return float(max(0.0, low)), float(min(1.0, high))


def binary_metrics(
    y_true, scores, threshold: float = 0.5, *, ci_method: str = "wilson", confidence: float = 0.95
) -> tuple[dict, list[str]]:
    """Confusion-matrix metrics at a threshold (score >= threshold is called positive).

    Args:
      y_true: [N] bools, True for the positive class.
      scores: [N] scores for the positive class.
      threshold: decision cut-off.
      ci_method: proportion CI method (see `proportion_ci`).
      confidence: two-sided level.

    Returns:
      (metrics, notes): sensitivity, specificity, accuracy, precision with "<name>_ci" [low, high],
      f1, counts (n, n_positive, n_negative, tp, fp, tn, fn) and the threshold; notes name every
      value that is undefined (NaN).
    """
    y = np.asarray(y_true, bool)
    pred = np.asarray(scores) >= threshold
    tp, fn = int(np.sum(pred & y)), int(np.sum(~pred & y))
    tn, fp = int(np.sum(~pred & ~y)), int(np.sum(pred & ~y))
    out = dict(n=tp + fn + tn + fp, n_positive=tp + fn, n_negative=tn + fp)
    out.update(tp=tp, fp=fp, tn=tn, fn=fn, threshold=float(threshold))
    notes = []
    proportions = (
        ("sensitivity", tp, tp + fn, "no positive cases"),
        ("specificity", tn, tn + fp, "no negative cases"),
        ("accuracy", tp + tn, out["n"], "no cases"),
        ("precision", tp, tp + fp, "nothing called positive"),
    )
    for name, k, n, why in proportions:
        out[name] = k / n if n else NAN
        out[f"{name}_ci"] = list(proportion_ci(k, n, ci_method, confidence))
        if not n:
            notes.append(f"{name} undefined: {why}")
    f1_denom = 2 * tp + fp + fn
    out["f1"] = 2 * tp / f1_denom if f1_denom else NAN
    return out, notes


# ----------------------------------------------------------------------------- ROC AUC
def delong_covariance(y_true, scores) -> tuple[np.ndarray, np.ndarray]:
    """AUCs of k score vectors on the same cases and their DeLong covariance (fast DeLong).

    The O(N log N) algorithm of Sun & Xu (2014, IEEE Signal Process Lett 21:1389): structural
    components of DeLong et al. (1988) from midranks instead of all positive-negative pairs.

    Args:
      y_true: [N] bools, True for the positive class; both classes must be present.
      scores: [N] or [k, N] scores (higher = more positive).

    Returns:
      (aucs [k], covariance [k, k]); the covariance is NaN when a class has fewer than 2 cases.
    """
    y = np.asarray(y_true, bool)
    s = np.atleast_2d(np.asarray(scores, float))
    pos, neg = s[:, y], s[:, ~y]
    m, n = pos.shape[1], neg.shape[1]
    tx = stats.rankdata(pos, axis=1)
    ty = stats.rankdata(neg, axis=1)
    tz = stats.rankdata(np.concatenate([pos, neg], axis=1), axis=1)
    aucs = (tz[:, :m].sum(axis=1) - m * (m + 1) / 2) / (m * n)
    if m < 2 or n < 2:
        return aucs, np.full((len(s), len(s)), NAN)
    v10 = (tz[:, :m] - tx) / n  # per positive: share of negatives scored below it (ties 1/2)
    v01 = 1.0 - (tz[:, m:] - ty) / m  # per negative: share of positives scored above it
    cov = np.atleast_2d(np.cov(v10)) / m + np.atleast_2d(np.cov(v01)) / n
    return aucs, cov


def holm(pvalues) -> np.ndarray:
    """Holm's (1979) step-down adjusted p-values of one family of tests, in the input order.

    The k-th smallest of m p-values is multiplied by m - k + 1, kept monotone and capped at 1.
    NaN (an undefined test) stays NaN and is not counted in m.
    """
    p = np.asarray(pvalues, np.float64)
    out = np.full(p.shape, np.nan)
    ok = np.flatnonzero(np.isfinite(p))
    order = ok[np.argsort(p[ok], kind="stable")]
    m = order.size
    scaled = p[order] * (m - np.arange(m))
    out[order] = np.minimum(np.maximum.accumulate(scaled), 1.0)
    return out


def delong_test(labels, probs_a, probs_b, *, positive: int = 1) -> tuple[float, float]:
    """DeLong test that two correlated AUCs (two models, the same cases) are equal.

    Args:
      labels: [N] class labels; `labels == positive` marks the positive cases.
      probs_a: [N] positive-class scores of model A.
      probs_b: [N] positive-class scores of model B on the same cases, in the same order.
      positive: the positive label value.

    Returns:
      (z, two-sided p). Identical AUCs give (0, 1); a zero variance with different AUCs gives
      (+-inf, 0); NaN when the test is undefined (fewer than 2 cases in a class).
    """
    y = np.asarray(labels) == positive
    if y.sum() < 2 or (~y).sum() < 2:
        return NAN, NAN
    aucs, cov = delong_covariance(y, np.stack([np.asarray(probs_a), np.asarray(probs_b)]))
    diff = aucs[0] - aucs[1]
    var = cov[0, 0] + cov[1, 1] - 2 * cov[0, 1]
    if diff == 0:
        return 0.0, 1.0
    if var <= 1e-15:
        return math.copysign(math.inf, diff), 0.0
    z = diff / math.sqrt(var)
    return float(z), float(2 * stats.norm.sf(abs(z)))


# ----------------------------------------------------------------------------- bootstrap
def _subjects(labels, subject_ids) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(sorted subject IDs, image -> subject index, label per subject); mixed labels: error."""
    labels = np.asarray(labels)
    ids = np.asarray(subject_ids).astype(str)
    subjects, first, inverse = np.unique(ids, return_index=True, return_inverse=True)
    subject_labels = labels[first]
    mixed = np.flatnonzero(labels != subject_labels[inverse])
    if mixed.size:
        sid = subjects[inverse[mixed[0]]]
        found = sorted({str(v) for v in labels[inverse == inverse[mixed[0]]]})
        raise InputError(sid, "", f"images of one subject carry different labels ({found})")
    return subjects, inverse, subject_labels


def bootstrap_subject_counts(y_true, subject_ids, n_bootstrap: int = 1000, seed: int = 0):
    """How often each subject is drawn when subjects (patients, not slices) are resampled.

    Resampling is stratified by class: each replicate draws, with replacement, as many positive
    subjects as there are, and as many negative ones, so every replicate has both classes.

    Args:
      y_true: [N] bools per image, True for the positive class.
      subject_ids: [N] subject ID per image.
      n_bootstrap: number of replicates.
      seed: seed of the numpy generator.

    Returns:
      (subjects [S], image_to_subject [N], counts [n_bootstrap, S]); the weight of image i in
      replicate b is counts[b, image_to_subject[i]].
    """
    subjects, inverse, subject_y = _subjects(np.asarray(y_true, bool), subject_ids)
    rng = np.random.default_rng(seed)
    counts = np.zeros((n_bootstrap, len(subjects)), np.int64)
    rows = np.arange(n_bootstrap)[:, None]
    for cls in (True, False):
        members = np.flatnonzero(subject_y == cls)
        if members.size:
            draws = members[rng.integers(0, members.size, (n_bootstrap, members.size))]
            np.add.at(counts, (rows, draws), 1)
    return subjects, inverse, counts


def _weighted_auc(score_bin: np.ndarray, y: np.ndarray, weights: np.ndarray) -> float:
    """Weighted Mann-Whitney AUC; score_bin indexes the sorted unique scores (ties count 1/2)."""
    size = int(score_bin.max()) + 1 if score_bin.size else 0
    wp = np.bincount(score_bin, weights * y, size)
    wn = np.bincount(score_bin, weights * ~y, size)
    below = np.cumsum(wn) - wn
    return float(np.sum(wp * (below + 0.5 * wn)) / (wp.sum() * wn.sum()))


def bootstrap_aucs(y_true, scores, subject_ids, *, n_bootstrap: int = 1000, seed: int = 0):
    """ROC AUC in each subject-resampled replicate (see `bootstrap_subject_counts`).

    Returns:
      [n_bootstrap] AUCs; empty when a class is missing.
    """
    y = np.asarray(y_true, bool)
    if y.all() or not y.any():
        return np.zeros(0)
    _, inverse, counts = bootstrap_subject_counts(y, subject_ids, n_bootstrap, seed)
    return _replicate_aucs(y, scores, inverse, counts)


def _replicate_aucs(y, scores, inverse, counts) -> np.ndarray:
    """Weighted AUC of each replicate's subject counts [B, S]; image i is in subject inverse[i]."""
    score_bin = np.unique(np.asarray(scores, float), return_inverse=True)[1]
    return np.array([_weighted_auc(score_bin, y, c[inverse].astype(float)) for c in counts])


def bootstrap_metrics(
    y_true, scores, subject_ids, threshold: float = 0.5, *, n_bootstrap=1000, seed=0, auc=True
) -> dict[str, np.ndarray]:
    """Every metric of `BOOTSTRAPPED` in each subject-resampled replicate.

    The replicates are those of `bootstrap_subject_counts` (and `bootstrap_aucs`, same seed): a
    drawn subject brings all its images, so the spread is that of patients, not of slices.

    Args:
      y_true: [N] bools per image, True for the positive class.
      scores: [N] positive-class scores; score >= threshold is called positive.
      subject_ids: [N] subject per image (one row per subject: the ordinary bootstrap).
      threshold: decision cut-off.
      n_bootstrap: replicates.
      seed: seed of `bootstrap_subject_counts`.
      auc: also the AUC (the slowest part; NaN replicates when False or one class only).

    Returns:
      {metric: [n_bootstrap] values}, NaN where a replicate leaves a metric undefined.
    """
    y = np.asarray(y_true, bool)
    pred = np.asarray(scores) >= threshold
    _, inverse, counts = bootstrap_subject_counts(y, subject_ids, n_bootstrap, seed)
    s = counts.shape[1]
    tp, fp, tn, fn = (
        counts @ np.bincount(inverse, m.astype(float), s)
        for m in (pred & y, pred & ~y, ~pred & ~y, ~pred & y)
    )
    with np.errstate(invalid="ignore", divide="ignore"):  # 0/0: undefined in that replicate
        reps = dict(
            sensitivity=tp / (tp + fn),
            specificity=tn / (tn + fp),
            accuracy=(tp + tn) / (tp + fp + tn + fn),
            precision=tp / (tp + fp),
            f1=2 * tp / (2 * tp + fp + fn),
        )
    both = y.any() and not y.all()
    reps["auc"] = _replicate_aucs(y, scores, inverse, counts) if auc and both else tp * NAN
    return reps


def percentile_ci(replicates, confidence: float = 0.95) -> tuple[list[float], int]:
    """Percentile interval of bootstrap replicates, and how many were undefined (NaN, left out).

    Returns:
      ([low, high], n_undefined); [nan, nan] when no replicate is defined.
    """
    reps = np.asarray(replicates, float)
    finite = reps[np.isfinite(reps)]
    if not finite.size:
        return [NAN, NAN], int(reps.size)
    low, high = np.quantile(finite, [(1 - confidence) / 2, (1 + confidence) / 2])
    return [float(low), float(high)], int(reps.size - finite.size)


def bootstrap_cis(
    y_true, scores, subject_ids, threshold, *, names=BOOTSTRAPPED, confidence=0.95, **boot
) -> tuple[dict[str, list[float]], list[str]]:
    """Subject-bootstrap percentile intervals of `names` (see `bootstrap_metrics`).

    Returns:
      ({"<name>_ci": [low, high]}, notes on replicates left out as undefined).
    """
    reps = bootstrap_metrics(y_true, scores, subject_ids, threshold, auc="auc" in names, **boot)
    cis, notes = {}, []
    for name in names:
        cis[f"{name}_ci"], undefined = percentile_ci(reps[name], confidence)
        if 0 < undefined < len(reps[name]):
            notes.append(
                f"{name}_ci: {undefined} of {len(reps[name])} bootstrap replicates left out "
                f"(undefined in them)"
            )
    return cis, notes


def roc_auc_with_ci(
    y_true,
    scores,
    subject_ids=None,
    *,
    method: str = "delong",
    confidence: float = 0.95,
    n_bootstrap: int = 1000,
    seed: int = 0,
) -> tuple[float, list[float], list[str]]:
    """ROC AUC with a confidence interval.

    Args:
      y_true: [N] bools, True for the positive class.
      scores: [N] positive-class scores.
      subject_ids: [N] subject per case (needed for "bootstrap"; None = every case its own subject).
      method: "delong" (normal approximation with the DeLong variance; every case independent) or
        "bootstrap" (percentile interval over replicates that resample subjects, stratified).
      confidence: two-sided level.
      n_bootstrap: replicates for "bootstrap".
      seed: seed for "bootstrap".

    Returns:
      (auc, [low, high], notes); NaN with a note when undefined.
    """
    if method not in AUC_CI_METHODS:
        raise ValueError(f"AUC CI method {method!r}: expected one of {AUC_CI_METHODS}")
    y = np.asarray(y_true, bool)
    if y.all() or not y.any():
        return NAN, [NAN, NAN], ["auc undefined: only one class present"]
    auc = float(skm.roc_auc_score(y, np.asarray(scores, float)))
    if method == "bootstrap":
        ids = np.arange(len(y)) if subject_ids is None else subject_ids
        reps = bootstrap_aucs(y, scores, ids, n_bootstrap=n_bootstrap, seed=seed)
        ci = percentile_ci(reps, confidence)[0]
        same = ["auc_ci degenerate: every replicate has the same AUC (too few subjects?)"]
        return auc, ci, same if ci[0] == ci[1] else []
    _, cov = delong_covariance(y, scores)
    if math.isnan(cov[0, 0]):
        return auc, [NAN, NAN], ["auc_ci undefined: DeLong needs 2 or more cases of each class"]
    why = "the classes do not overlap" if auc in (0.0, 1.0) else "the scores tie"
    notes = [f"auc_ci degenerate: DeLong variance 0 ({why})"] if cov[0, 0] <= 1e-15 else []
    half = stats.norm.ppf((1 + confidence) / 2) * math.sqrt(max(cov[0, 0], 0.0))
    return auc, [float(max(0.0, auc - half)), float(min(1.0, auc + half))], notes


# ----------------------------------------------------------------------------- subjects
def aggregate_by_subject(
    probs_pos,
    labels,
    subject_ids: Sequence[str],
    method: str = "mean",
    *,
    threshold: float = DEFAULT_THRESHOLD,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One score per subject from its images' positive-class probabilities.

    Args:
      probs_pos: [N] positive-class probability per image (slice).
      labels: [N] label per image; every image of a subject must carry the same label.
      subject_ids: [N] subject ID per image.
      method: "mean": mean of the slice probabilities (Gao 2020); "predictive_index": the fraction
        of the subject's slices called positive (Shin 2021), to be cut at a threshold chosen on
        validation data (`choose_thresholds`); "majority": the same fraction, cut at 0.5 (a tie
        counts as positive).
      threshold: the slice-level cut-off for "predictive_index" and "majority".

    Returns:
      (subjects [S] sorted, scores [S], labels [S]).

    Raises:
      InputError: a subject's images carry different labels.
    """
    if method not in SUBJECT_METHODS:
        raise ValueError(f"subject method {method!r}: expected one of {SUBJECT_METHODS}")
    subjects, inverse, subject_labels = _subjects(labels, subject_ids)
    values = np.asarray(probs_pos, float)
    if method != "mean":
        values = (values >= threshold).astype(float)
    per_subject = np.bincount(inverse, minlength=len(subjects))
    scores = np.bincount(inverse, values, len(subjects)) / np.maximum(per_subject, 1)
    # Means of equal slice scores over different slice counts differ in the last bits; rounded,
    # a constant predictor's subjects tie (AUC 0.5) instead of being ranked by float noise.
    return subjects, np.round(scores, 12), subject_labels


def choose_threshold(labels, scores, *, positive: int = 1, default: float = 0.5) -> float:
    """The cut-off that maximises Youden's J = sensitivity + specificity - 1 (on validation data).

    Any cut-off between the optimal score and the next lower one gives the same J on these data;
    the midpoint is returned, so that a test case scored just below the optimal one is not decided
    by the accident of which validation score was observed. Ties in J go to the higher cut-off.

    Args:
      labels: [N] labels; `labels == positive` marks positives.
      scores: [N] scores (higher = more positive).
      positive: the positive label value.
      default: returned (with a logged warning) when a class is missing.

    Returns:
      The cut-off; call positive when score >= cut-off.
    """
    y = np.asarray(labels) == positive
    if y.all() or not y.any():
        logging.warning("choose_threshold: one class only in the data, using %s", default)
        return float(default)
    fpr, tpr, cuts = skm.roc_curve(y, np.asarray(scores, float), drop_intermediate=False)
    best = int(np.argmax(np.round(tpr - fpr, 12)))  # rounded: 2/3 - 0 ties 1 - 1/3
    if not np.isfinite(cuts[best]):  # sklearn's first cut-off (inf) calls nothing positive
        return float(np.max(scores)) + 1e-9
    if best + 1 < len(cuts):
        return float((cuts[best] + cuts[best + 1]) / 2)
    return float(cuts[best])


def choose_thresholds(
    probs,
    labels,
    subject_ids: Sequence[str],
    *,
    positive: int,
    subject_method: str = "mean",
    tune_threshold: bool = False,
    tune_subject_threshold: bool | None = None,
) -> dict[str, float]:
    """Thresholds from VALIDATION predictions, to pass on to `evaluate_predictions` on test.

    Example: `evaluate_predictions(test_probs, ..., **choose_thresholds(val_probs, ...))`.

    Args:
      probs: [N, K] validation class probabilities.
      labels: [N] validation class indices.
      subject_ids: [N] validation subject IDs.
      positive: index of the positive class.
      subject_method: as in `aggregate_by_subject`.
      tune_threshold: choose the image threshold by Youden's J (False: 0.5, i.e. argmax for 2
        classes, as Gao 2020 and Ying 2025 do).
      tune_subject_threshold: choose the subject cut-off by Youden's J; None = only for
        "predictive_index" (Shin 2021 took its cut-off from the ROC curve).

    Returns:
      {"threshold": image cut-off, "subject_threshold": subject cut-off}.
    """
    probs, labels, subject_ids = _check(probs, labels, subject_ids, positive, None)
    score = probs[:, positive]
    threshold = DEFAULT_THRESHOLD
    if tune_threshold:
        threshold = choose_threshold(labels, score, positive=positive)
    if tune_subject_threshold is None:
        tune_subject_threshold = subject_method == "predictive_index"
    _, s_score, s_labels = aggregate_by_subject(
        score, labels, subject_ids, subject_method, threshold=threshold
    )
    if tune_subject_threshold:
        subject_threshold = choose_threshold(s_labels, s_score, positive=positive)
    else:
        subject_threshold = default_subject_threshold(subject_method, threshold)
    return {"threshold": threshold, "subject_threshold": subject_threshold}


def default_subject_threshold(subject_method: str, threshold: float) -> float:
    """The subject cut-off when none was chosen on validation data.

    "mean" scores a subject on the scale of its slice probabilities, so the image cut-off
    `threshold` applies; "predictive_index" and "majority" score the fraction of slices called
    positive, cut at half (a tie counts as positive).
    """
    return threshold if subject_method == "mean" else 0.5


# ----------------------------------------------------------------------------- tests
def one_sample_ttests(
    probs_pos, labels, class_names: Sequence[str], *, positive: int = 1, popmean: float = 0.5
) -> dict[str, dict]:
    """One-sample t tests of the probability given to the true class against 0.5 (Ying 2025).

    Ying's Table 5 tests all cases together, Table 6 each class on its own.

    Args:
      probs_pos: [N] positive-class probabilities.
      labels: [N] class indices.
      class_names: name per class index.
      positive: index of the positive class (the true-class probability of a negative case is
        1 - probs_pos).
      popmean: the chance level tested against.

    Returns:
      {"all": {...}, class_name: {...}} with "t", "p" (two-sided), "n" and "mean" each; NaN t and p
      for fewer than 2 cases or constant probabilities (SD < 1e-6, as a collapsed model gives).
    """
    labels = np.asarray(labels)
    p = np.asarray(probs_pos, float)
    p_true = np.where(labels == positive, p, 1.0 - p)
    groups = {"all": p_true} | {n: p_true[labels == k] for k, n in enumerate(class_names)}
    out = {}
    for name, x in groups.items():
        t = pval = NAN
        # A constant sample has no t statistic. "Constant" is an SD under 1e-6, the resolution of
        # predictions_<split>.csv: below it, rounding noise would give t = +-1e15 or inf.
        if len(x) >= 2 and x.std(ddof=1) >= 1e-6:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)
                t, pval = stats.ttest_1samp(x, popmean)
        mean = float(x.mean()) if len(x) else NAN
        out[name] = {"t": float(t), "p": float(pval), "n": len(x), "mean": mean}
    return out


# ----------------------------------------------------------------------------- entry point
def _check(probs, labels, subject_ids, positive, class_names):
    """Validated arrays: probs [N, K] finite, labels [N] in 0..K-1, N subject IDs."""
    probs = np.asarray(probs, float)
    labels = np.asarray(labels)
    if probs.ndim != 2:
        raise ValueError(f"probs must be [N, K] class probabilities, got shape {probs.shape}")
    n, k = probs.shape
    if labels.shape != (n,) or len(subject_ids) != n:
        raise ValueError(f"{n} rows of probs, {labels.shape} labels, {len(subject_ids)} subjects")
    if not np.isfinite(probs).all():
        raise ValueError("probs contain NaN or Inf (did training diverge?)")
    if n and (labels.min() < 0 or labels.max() >= k):
        raise ValueError(f"labels must be class indices in 0..{k - 1}")
    if not 0 <= positive < k or (class_names is not None and len(class_names) != k):
        raise ValueError(f"positive={positive}, class_names={class_names} for {k} classes")
    return probs, labels.astype(int), np.asarray(subject_ids).astype(str)


def level_ci_methods(level: str, *, ci_method="wilson", auc_ci="delong", image_ci=None) -> dict:
    """Which interval each metric of a level gets (the one place that decides it).

    Args:
      level: "image" or "subject".
      ci_method: the proportion method of subject-level rows (and of image rows under
        image_ci="independent").
      auc_ci: the AUC method of subject-level rows (and of image rows, likewise).
      image_ci: "subject_bootstrap" (the default, None) or "independent" (see `IMAGE_CI_METHODS`).

    Returns:
      {"ci_method", "auc_ci_method", "f1_ci_method"}, as stored with the level's metrics.
    """
    image_ci = image_ci or IMAGE_CI_METHODS[0]
    if image_ci not in IMAGE_CI_METHODS:
        raise ValueError(f"image CI method {image_ci!r}: expected one of {IMAGE_CI_METHODS}")
    boot = "subject_bootstrap"
    if level == "image" and image_ci == boot:
        return dict(ci_method=boot, auc_ci_method=boot, f1_ci_method=boot)
    return dict(ci_method=ci_method, auc_ci_method=auc_ci, f1_ci_method=boot)


def _level_metrics(y, score, groups, threshold, level, opts: dict):
    """binary_metrics + AUC with the CIs of `level_ci_methods` + notes, for one level."""
    methods = level_ci_methods(level, **{k: opts[k] for k in ("ci_method", "auc_ci", "image_ci")})
    boot = dict(n_bootstrap=opts["n_bootstrap"], seed=opts["seed"])
    out, notes = binary_metrics(
        y, score, threshold, ci_method=opts["ci_method"], confidence=opts["confidence"]
    )
    clustered = methods["ci_method"] == "subject_bootstrap"
    # Clustered, the AUC interval comes from bootstrap_cis below: DeLong here only gives the AUC
    # (with auc_ci="bootstrap" this would draw the same replicates a second time).
    out["auc"], out["auc_ci"], auc_notes = roc_auc_with_ci(
        y,
        score,
        groups,
        method="delong" if clustered else opts["auc_ci"],
        confidence=opts["confidence"],
        **boot,
    )
    out["n_subjects"] = len(np.unique(groups))
    if clustered:
        auc_notes = [n for n in auc_notes if not n.startswith("auc_ci")]  # replaced below
    names = BOOTSTRAPPED if clustered else ("f1",)
    cis, boot_notes = bootstrap_cis(
        y, score, groups, threshold, names=names, confidence=opts["confidence"], **boot
    )
    out |= cis
    if not clustered and out["n_subjects"] < out["n"]:
        notes.append("CIs treat the images as independent; see the subject-wise row for patients")
    out.update(methods, confidence=opts["confidence"], n_bootstrap=opts["n_bootstrap"])
    notes += auc_notes + boot_notes
    return out, notes + caveats(out, score, level, notes)


def caveats(metrics: dict, score, level: str, notes=()) -> list[str]:
    """Notes, in words, on constant scores and on zero-width intervals of one level's metrics."""
    out = []
    score = np.asarray(score, float)
    if score.size > 1 and np.ptp(score) < CONSTANT_SCORE:
        out.append(
            f"constant scores: every {level} scored {score[0]:.3f}, so the model ranks nothing; "
            f"its AUC of 0.5 is no evidence and its intervals no precision"
        )
    zero = []
    for name in BOOTSTRAPPED:
        ci = metrics.get(f"{name}_ci", [NAN, NAN])
        said = any(n.startswith(f"{name}_ci degenerate") for n in notes)
        if ci[0] == ci[1] and not said:  # NaN == NaN is False: undefined intervals are noted
            zero.append(f"{name} ({ci[0]:.3f}-{ci[1]:.3f})")
    if zero:
        out.append(
            f"zero-width CIs, which are not certainty (too few subjects, or constant or perfect "
            f"predictions): {', '.join(zero)}"
        )
    return out


def hanley_mcneil_se(auc: float, n_positive: int, n_negative: int) -> float:
    """Standard error of an AUC from its value and the class counts (Hanley & McNeil 1982, eq. 2).

    Used for the width a sample size implies, when the observed interval says nothing (zero
    width or undefined).
    """
    q1, q2 = auc / (2 - auc), 2 * auc**2 / (1 + auc)
    var = auc * (1 - auc) + (n_positive - 1) * (q1 - auc**2) + (n_negative - 1) * (q2 - auc**2)
    return math.sqrt(var / (n_positive * n_negative)) if n_positive and n_negative else NAN


def small_sample_note(subject: dict, positive: str, negative: str, confidence=0.95) -> list[str]:
    """A note when a split has under about 30 subjects or 10 of a class, with the CI width.

    Args:
      subject: the subject-level metrics (n, n_positive, n_negative, auc_ci).
      positive: the positive class's name.
      negative: the other class's name.
      confidence: the CI level of the widths.

    Returns:
      [] for a sample large enough, else one note.
    """
    n, pos, neg = subject["n"], subject["n_positive"], subject["n_negative"]
    if n >= SMALL_SUBJECTS and min(pos, neg) >= SMALL_CLASS:
        return []
    low, high = subject["auc_ci"]
    text = (
        f"small sample: {n} subjects ({pos} {positive}, {neg} {negative}), under about "
        f"{SMALL_SUBJECTS} subjects or {SMALL_CLASS} of a class: "
    )
    if high - low > 0:  # False for NaN
        return [text + f"the subject AUC {confidence:.0%} CI is {high - low:.2f} wide"]
    if min(pos, neg) == 0:  # no AUC at any width: say so rather than "nan wide"
        return [text + "one class only, so the AUC is undefined"]
    half = stats.norm.ppf((1 + confidence) / 2) * hanley_mcneil_se(0.75, pos, neg)
    why = "undefined" if math.isnan(high - low) else "of zero width"
    return [
        text + f"the subject AUC CI is {why}; at these counts an AUC of 0.75 has a "
        f"{confidence:.0%} CI about {2 * half:.2f} wide (Hanley & McNeil 1982)"
    ]


def evaluate_predictions(
    probs: np.ndarray,
    labels: np.ndarray,
    subject_ids: Sequence[str],
    *,
    positive: int,
    class_names: Sequence[str],
    threshold: float = DEFAULT_THRESHOLD,
    subject_method: str = "mean",
    subject_threshold: float | None = None,
    ci_method: str = "wilson",
    auc_ci: str = "delong",
    image_ci: str = "subject_bootstrap",
    confidence: float = 0.95,
    n_bootstrap: int = 1000,
    seed: int = 0,
) -> dict:
    """Image-wise and subject-wise metrics with confidence intervals.

    Args:
      probs: [N, K] class probabilities, one row per image (slice or volume).
      labels: [N] class indices.
      subject_ids: [N] subject (patient) ID per row.
      positive: index of the positive class (Gao 2020: recurrence; Ying 2025: necrosis).
      class_names: name per class index.
      threshold: image cut-off on the positive-class probability (0.5 = argmax for 2 classes);
        also the slice cut-off of "predictive_index" and "majority".
      subject_method: "mean", "predictive_index" or "majority" (see `aggregate_by_subject`).
      subject_threshold: subject cut-off chosen on validation data (`choose_thresholds`); None =
        `threshold` for "mean", 0.5 for the others (noted for "predictive_index").
      ci_method: proportion CI method of subject rows (see `proportion_ci`).
      auc_ci: AUC CI of subject rows, "delong" or "bootstrap" (see `roc_auc_with_ci`).
      image_ci: image rows' intervals: "subject_bootstrap" (every metric, resampling subjects)
        or "independent" (`ci_method` and `auc_ci` as if the images were independent).
      confidence: two-sided CI level.
      n_bootstrap: bootstrap replicates.
      seed: bootstrap seed.

    Returns:
      {"image": metrics, "subject": metrics}; metrics has auc, sensitivity, specificity, accuracy,
      precision and f1 (each with "<name>_ci" [low, high]), n, n_positive, n_negative,
      n_subjects, tp/fp/tn/fn, threshold, positive_class, level, the CI methods
      (`level_ci_methods`), and "notes" (list of str): undefined values, degenerate intervals,
      constant scores, a small sample; "subject" also has subject_method.

    Raises:
      ValueError: malformed arrays (shapes, NaN probabilities, labels out of range).
      InputError: a subject's images carry different labels.
    """
    probs, labels, subject_ids = _check(probs, labels, subject_ids, positive, class_names)
    score, y = probs[:, positive], labels == positive
    opts = dict(
        ci_method=ci_method,
        auc_ci=auc_ci,
        image_ci=image_ci,
        confidence=confidence,
        n_bootstrap=n_bootstrap,
        seed=seed,
    )
    image, image_notes = _level_metrics(y, score, subject_ids, threshold, "image", opts)
    subjects, s_score, s_labels = aggregate_by_subject(
        score, labels, subject_ids, subject_method, threshold=threshold
    )
    notes = []
    if subject_threshold is None:
        subject_threshold = default_subject_threshold(subject_method, threshold)
        if subject_method == "predictive_index":
            notes.append("subject_threshold not chosen on validation data; 0.5 used")
    subject, subject_notes = _level_metrics(
        s_labels == positive, s_score, subjects, subject_threshold, "subject", opts
    )
    subject["subject_method"] = subject_method
    others = [str(c) for i, c in enumerate(class_names) if i != positive]
    negative = others[0] if len(others) == 1 else "other"
    subject_notes += small_sample_note(subject, str(class_names[positive]), negative, confidence)
    for level, level_notes in ((image, image_notes), (subject, notes + subject_notes)):
        level["positive_class"] = str(class_names[positive])
        level["notes"] = level_notes
    image["level"], subject["level"] = "image", "subject"
    return {"image": image, "subject": subject}
