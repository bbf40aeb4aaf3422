"""Calibration and clinical usefulness (TRIPOD+AI items on calibration and net benefit).

Discrimination (AUC) says whether the model ranks patients; calibration says whether its
probabilities mean what they say, and a decision curve whether acting on them does more good than
treating everyone or no one. Here, with `y` the outcome (True: the positive class of
`config.eval.positive_class`) and `p` the predicted probability of it:

  brier_score(y, p)                   mean squared error of p (0 is perfect; predicting the
                                      prevalence for everyone scores prevalence * (1 - prevalence))
  calibration_intercept_slope(y, p)   calibration-in-the-large intercept (ideal 0) and slope
                                      (ideal 1) of Van Calster et al. 2016/2019, Steyerberg 2019
  reliability_curve(y, p, n_bins)     observed rate against mean prediction per bin (the points of
                                      a reliability diagram; sklearn's calibration_curve bins)
  net_benefit(y, p, thresholds)       decision curve of Vickers & Elkin 2006, with treat-all and
                                      treat-none
  fit_recalibration / apply_recalibration
                                      logistic recalibration on logit(p) (Platt's form, fitted by
                                      maximum likelihood), fitted on VALIDATION predictions only
  level_calibration(y, p, subject_ids) the metrics of one level with subject-bootstrap intervals
  plot_reliability, plot_decision_curves   figures of several prediction sets
  format_calibration_table, format_decision_table   tables

Subject level. A patient's probability is the mean of their slice probabilities (what
`ernjax.predict` reports as "probabilities"), whatever `config.eval.subject_method` decides with:
the "predictive_index" and "majority" scores are fractions of slices called positive, a decision
rule's vote count and no probability, so they are not calibrated (the note says so).

Probabilities are clipped to [1e-6, 1 - 1e-6] before their logit (predictions_<split>.csv keeps 6
decimals, so 0 and 1 occur). A value that cannot be estimated (one class only, constant
probabilities, probabilities that separate the classes so that the slope's maximum-likelihood
estimate is infinite) is NaN with a note, never an exception.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
from collections.abc import Mapping, Sequence

import numpy as np
from scipy.special import expit

from ernjax import atomic
from ernjax.evaluate import stats

# The smallest probability distance from 0 and 1: the resolution of predictions_<split>.csv.
CLIP = 1e-6
RECALIBRATION_METHODS = ("none", "logistic")
STRATEGIES = ("uniform", "quantile")
# The thresholds of the decision-curve table, and the grid of its figure.
TABLE_THRESHOLDS = tuple(round(0.1 * k, 1) for k in range(1, 10))
CURVE_THRESHOLDS = np.round(np.arange(0.01, 1.0, 0.01), 2)
# Replicates fitted at once by the bootstrap (bounds memory at [chunk, N] floats).
_CHUNK = 100
NAN = float("nan")
# The metrics `level_calibration` adds to a level's results (and the calibration table shows).
METRICS = ("brier", "calibration_intercept", "calibration_slope")
_TITLES = {
    "brier": "Brier",
    "brier_null": "Brier, prevalence for all",
    "calibration_intercept": "Calibration intercept",
    "calibration_slope": "Calibration slope",
}


# ----------------------------------------------------------------------------- metrics
def logit(p) -> np.ndarray:
    """log(p / (1 - p)) of p clipped to [CLIP, 1 - CLIP]."""
    p = np.clip(np.asarray(p, float), CLIP, 1.0 - CLIP)
    return np.log(p) - np.log1p(-p)


def brier_score(y, p) -> float:
    """Mean squared difference between the outcome (1 positive, 0 not) and its probability.

    Args:
      y: [N] bools (or 0/1), True for the positive class.
      p: [N] predicted probabilities of the positive class.

    Returns:
      The Brier score (sklearn.metrics.brier_score_loss); NaN for no cases.
    """
    y, p = np.asarray(y, float), np.asarray(p, float)
    return float(np.mean((p - y) ** 2)) if y.size else NAN


def _separated(x: np.ndarray, y: np.ndarray, w: np.ndarray) -> np.ndarray:
    """[B] True where x (weights w [B, N] > 0) separates the classes, ties at the border included.

    A logistic regression of y on x then has no finite maximum-likelihood slope (Albert &
    Anderson 1984: complete or quasi-complete separation).
    """
    drawn = w > 0
    pos, neg = drawn & y, drawn & ~y
    big = np.inf
    min_pos, max_pos = np.where(pos, x, big).min(1), np.where(pos, x, -big).max(1)
    min_neg, max_neg = np.where(neg, x, big).min(1), np.where(neg, x, -big).max(1)
    return (min_pos >= max_neg) | (max_pos <= min_neg)


def _fit_logistic(x, y, weights, *, slope: bool, max_iter: int = 100, tol: float = 1e-10):
    """Weighted logistic regressions of y on x, one per row of `weights`, by Newton-Raphson.

    slope=True fits logit P(y) = a + b x; slope=False fits logit P(y) = a + x (x an offset, b = 1).
    Each Newton step is halved until the log-likelihood does not fall (it is concave, so plain
    Newton only overshoots far from the optimum).

    Args:
      x: [N] covariate (logit p).
      y: [N] bools.
      weights: [B, N] case weights (bootstrap counts), or [N].
      slope: fit the slope, or the intercept alone with x as an offset.
      max_iter: Newton steps at most; rows not converged by then are NaN.
      tol: convergence: every parameter moved by less than this.

    Returns:
      (a [B], b [B]); NaN in rows without a finite estimate (one class, constant x, separation,
      no convergence).
    """
    x, yf = np.asarray(x, float), np.asarray(y, bool)
    w = np.atleast_2d(np.asarray(weights, float))
    y1 = yf.astype(float)
    total = w.sum(1)
    prevalence = (w @ y1) / np.where(total > 0, total, 1.0)
    undefined = (prevalence <= 0) | (prevalence >= 1)
    if slope:
        spread = np.where(w > 0, x, np.inf).min(1) == np.where(w > 0, x, -np.inf).max(1)
        undefined |= spread | _separated(x, yf, w)
    # A start the likelihood is finite at: the prevalence's logit (b = 0), or the offset itself.
    start = logit(np.clip(prevalence, 0.01, 0.99))
    a = np.where(undefined, 0.0, start if slope else np.zeros_like(start))
    b = np.zeros_like(a) if slope else np.ones_like(a)

    def loglik(a, b):
        eta = a[:, None] + b[:, None] * x[None, :]
        return (w * (y1 * eta - np.logaddexp(0.0, eta))).sum(1)

    done = undefined.copy()
    for _ in range(max_iter):
        if done.all():
            break
        eta = a[:, None] + b[:, None] * x[None, :]
        mu = expit(eta)
        r, v = w * (y1 - mu), w * mu * (1 - mu)
        ga, haa = r.sum(1), v.sum(1)
        with np.errstate(divide="ignore", invalid="ignore"):
            if slope:
                gb, hab, hbb = (r * x).sum(1), (v * x).sum(1), (v * x * x).sum(1)
                det = haa * hbb - hab**2
                da, db = (hbb * ga - hab * gb) / det, (haa * gb - hab * ga) / det
            else:
                da, db = ga / haa, np.zeros_like(ga)
        da, db = np.where(done, 0.0, da), np.where(done, 0.0, db)
        before, t = loglik(a, b), np.ones_like(a)
        for _ in range(40):  # step halving
            worse = loglik(a + t * da, b + t * db) < before - 1e-12 * np.abs(before)
            if not worse.any():
                break
            t = np.where(worse, t / 2, t)
        a, b = a + t * da, b + t * db
        done |= np.maximum(np.abs(t * da), np.abs(t * db)) < tol
    bad = undefined | ~done | ~np.isfinite(a) | ~np.isfinite(b)
    return np.where(bad, NAN, a), np.where(bad, NAN, b)


def _why_undefined(y: np.ndarray, p: np.ndarray) -> tuple[str, str]:
    """(why the intercept is undefined or "", why the slope is undefined or "")."""
    if y.all() or not y.any():
        return "one class only", "one class only"
    x = logit(p)
    if np.ptp(x) == 0 or np.ptp(p) < stats.CONSTANT_SCORE:
        return "", "constant probabilities"
    w = np.ones((1, len(y)))
    if _separated(x, y, w)[0]:
        return "", "the probabilities separate the classes (the slope would be infinite)"
    return "", ""


def calibration_intercept_slope(y, p) -> tuple[float, float, list[str]]:
    """Calibration-in-the-large intercept and calibration slope (logistic recalibration).

    slope: the coefficient b of logit(p) in the logistic regression logit P(y) = a + b logit(p)
      (1: ideal; below 1: predictions too extreme, as from overfitting; above 1: too modest).
    intercept: a of logit P(y) = a + logit(p), logit(p) an offset (slope fixed at 1), the
      calibration-in-the-large (0: ideal; below 0: the model overestimates the positive class).
    These are the definitions of Van Calster et al. (J Clin Epidemiol 2016; BMC Med 2019) and
    Steyerberg (Clinical Prediction Models, 2019).

    Args:
      y: [N] bools (or 0/1), True for the positive class.
      p: [N] predicted probabilities of the positive class (clipped to [CLIP, 1 - CLIP]).

    Returns:
      (intercept, slope, notes); NaN with a note where undefined: one class (both), constant
      probabilities or probabilities that separate the classes (the slope).
    """
    y, p = np.asarray(y, bool), np.asarray(p, float)
    no_intercept, no_slope = _why_undefined(y, p)
    x, w = logit(p), np.ones(len(y))
    intercept = NAN if no_intercept else float(_fit_logistic(x, y, w, slope=False)[0][0])
    slope = NAN if no_slope else float(_fit_logistic(x, y, w, slope=True)[1][0])
    notes = []
    if no_intercept:
        notes.append(f"calibration intercept and slope undefined: {no_intercept}")
    elif no_slope:
        notes.append(f"calibration slope undefined: {no_slope}")
    return intercept, slope, notes


def reliability_curve(y, p, n_bins: int = 10, strategy: str = "uniform"):
    """The points of a reliability diagram: observed rate against mean probability per bin.

    The bins are those of sklearn.calibration.calibration_curve: "uniform" cuts [0, 1] into
    n_bins equal widths, "quantile" at the quantiles of p (bins of about equal counts); a
    probability on an inner edge goes to the lower bin; empty bins are left out.

    Args:
      y: [N] bools (or 0/1), True for the positive class.
      p: [N] predicted probabilities in [0, 1].
      n_bins: number of bins.
      strategy: "uniform" or "quantile".

    Returns:
      (observed [M] fraction positive, predicted [M] mean probability, count [M]) of the M
      non-empty bins.
    """
    if strategy not in STRATEGIES:
        raise ValueError(f"reliability strategy {strategy!r}: expected one of {STRATEGIES}")
    y, p = np.asarray(y, float), np.asarray(p, float)
    if strategy == "quantile":
        # sklearn's own expression: edges on tied values then fall exactly where its do
        edges = np.percentile(p, np.linspace(0, 1, n_bins + 1) * 100)
    else:
        edges = np.linspace(0.0, 1.0, n_bins + 1)
    bins = np.searchsorted(edges[1:-1], p)
    count = np.bincount(bins, minlength=n_bins)
    kept = count > 0
    observed = np.bincount(bins, y, n_bins)[kept] / count[kept]
    predicted = np.bincount(bins, p, n_bins)[kept] / count[kept]
    return observed, predicted, count[kept]


def net_benefit(y, p, thresholds=TABLE_THRESHOLDS) -> dict[str, np.ndarray]:
    """Decision curve: the net benefit of treating when p >= each threshold probability.

    Net benefit = TP/n - FP/n * pt / (1 - pt) (Vickers & Elkin, Med Decis Making 2006): true
    positives gained, less false positives weighted by the odds at the threshold pt (the harm of
    an unneeded treatment relative to the benefit of a needed one that a reader accepting pt
    implies). Treat-all: prevalence - (1 - prevalence) * pt / (1 - pt); treat-none: 0.

    Args:
      y: [N] bools (or 0/1), True for the positive class ("treat" = act as if positive).
      p: [N] predicted probabilities of the positive class.
      thresholds: threshold probabilities pt in (0, 1).

    Returns:
      {"threshold", "model", "treat_all", "treat_none"}: arrays over the thresholds.
    """
    y, p = np.asarray(y, bool), np.asarray(p, float)
    t = np.asarray(thresholds, float)
    if ((t <= 0) | (t >= 1)).any():
        raise ValueError("decision-curve thresholds must lie strictly between 0 and 1")
    n = max(len(y), 1)
    treat = p[None, :] >= t[:, None]
    tp, fp = (treat & y).sum(1) / n, (treat & ~y).sum(1) / n
    odds = t / (1 - t)
    prevalence = y.mean() if y.size else NAN
    return {
        "threshold": t,
        "model": tp - fp * odds,
        "treat_all": prevalence - (1 - prevalence) * odds,
        "treat_none": np.zeros_like(t),
    }


# ----------------------------------------------------------------------------- recalibration
@dataclasses.dataclass(frozen=True)
class Recalibration:
    """A logistic recalibration p' = sigmoid(intercept + slope * logit(p)), fitted on validation.

    Attributes:
      method: "logistic" (intercept and slope), "intercept" (slope kept at 1: the slope could not
        be estimated) or "identity" (nothing could be fitted; p' = p).
      intercept, slope: the fitted coefficients.
      n_images, n_subjects: the validation predictions it was fitted on.
      fitted_on: a fingerprint of those predictions (`fingerprint`), so that a score of the same
        predictions can say it is in-sample.
      note: why the method fell back ("" when it did not).
    """

    method: str
    intercept: float
    slope: float
    n_images: int
    n_subjects: int
    fitted_on: str = ""
    note: str = ""

    def describe(self) -> str:
        """One line: what was fitted on what."""
        data = f"the validation predictions ({self.n_images} images, {self.n_subjects} subjects)"
        if self.method == "identity":
            return f"recalibration {self.note} in {data}: probabilities as the model gave them"
        why = f" ({self.note})" if self.note else ""
        return (
            f"probabilities recalibrated before scoring to sigmoid({self.intercept:.3f} + "
            f"{self.slope:.3f} logit p){why}, fitted on {data}; cut-offs chosen on the "
            f"recalibrated validation probabilities"
        )


def fingerprint(subject_ids, y, p) -> str:
    """A short hash of prediction data (IDs, outcomes, probabilities to 6 decimals)."""
    h = hashlib.sha1()
    h.update("\n".join(np.asarray(subject_ids).astype(str)).encode())
    h.update(np.asarray(y, bool).tobytes())
    h.update(np.round(np.asarray(p, float), 6).tobytes())
    return h.hexdigest()[:12]


def fit_recalibration(y_val, p_val, subject_ids=None) -> Recalibration:
    """Logistic recalibration fitted on VALIDATION predictions (never on the split it serves).

    Fits logit P(y) = a + b logit(p) by maximum likelihood on every validation image (a
    subject's slices are correlated, which leaves the estimates unbiased but their precision
    overstated: they are not reported with intervals). Where the slope cannot be estimated
    (constant probabilities, or probabilities that separate the classes, common on a small
    validation split) the slope stays 1 and only the intercept is fitted (recalibration in the
    large); with one class only nothing is fitted.

    Args:
      y_val: [N] bools, True for the positive class.
      p_val: [N] validation probabilities of the positive class.
      subject_ids: [N] subject per image (counted in the description; None: one per image).

    Returns:
      The frozen `Recalibration`.
    """
    y, p = np.asarray(y_val, bool), np.asarray(p_val, float)
    ids = np.arange(len(y)).astype(str) if subject_ids is None else np.asarray(subject_ids)
    common = dict(n_images=len(y), n_subjects=len(np.unique(ids)), fitted_on=fingerprint(ids, y, p))
    no_intercept, no_slope = _why_undefined(y, p)
    x, w = logit(p), np.ones(len(y))
    if no_intercept:
        return Recalibration("identity", 0.0, 1.0, note=f"not fitted: {no_intercept}", **common)
    if no_slope:
        a = float(_fit_logistic(x, y, w, slope=False)[0][0])
        note = f"slope kept at 1: {no_slope}"
        return Recalibration("intercept", a, 1.0, note=note, **common)
    a, b = (float(v[0]) for v in _fit_logistic(x, y, w, slope=True))
    return Recalibration("logistic", a, b, **common)


def apply_recalibration(params: Recalibration | None, p) -> np.ndarray:
    """The recalibrated probabilities sigmoid(intercept + slope * logit(p)); p itself for None."""
    p = np.asarray(p, float)
    if params is None or params.method == "identity":
        return p
    return expit(params.intercept + params.slope * logit(p))


def recalibrate_probs(params: Recalibration | None, probs, positive: int) -> np.ndarray:
    """[N, K] class probabilities with the positive column recalibrated, the others rescaled.

    The other classes keep their shares of what is left (1 - recalibrated p), so rows still sum
    to 1; for two classes the other column is 1 - p'.
    """
    probs = np.asarray(probs, float)
    if params is None or params.method == "identity":
        return probs
    out = probs.copy()
    new = apply_recalibration(params, probs[:, positive])
    rest = np.delete(probs, positive, axis=1)
    total = rest.sum(1, keepdims=True)
    share = np.where(total > 0, rest / np.where(total > 0, total, 1.0), 1.0 / rest.shape[1])
    out[:, positive] = new
    out[:, [k for k in range(probs.shape[1]) if k != positive]] = share * (1.0 - new)[:, None]
    return out


# ----------------------------------------------------------------------------- one level
def _bootstrap_replicates(y, p, subject_ids, n_bootstrap: int, seed: int) -> dict:
    """Brier, intercept and slope in each subject-resampled replicate (`stats` machinery).

    The replicates are `stats.bootstrap_subject_counts`' with the same seed as the other metrics'
    intervals: the same patients drawn, stratified by class, a patient's slices together.
    """
    _, inverse, counts = stats.bootstrap_subject_counts(y, subject_ids, n_bootstrap, seed)
    s = counts.shape[1]
    squared = np.bincount(inverse, (p - y) ** 2, s)
    per_subject = np.bincount(inverse, minlength=s)
    reps = {"brier": (counts @ squared) / (counts @ per_subject)}
    x = logit(p)
    a_all, b_all = [], []
    for start in range(0, n_bootstrap, _CHUNK):
        w = counts[start : start + _CHUNK][:, inverse].astype(float)
        a_all.append(_fit_logistic(x, y, w, slope=False)[0])
        b_all.append(_fit_logistic(x, y, w, slope=True)[1])
    reps["calibration_intercept"] = np.concatenate(a_all) if a_all else np.zeros(0)
    reps["calibration_slope"] = np.concatenate(b_all) if b_all else np.zeros(0)
    return reps


def level_calibration(
    y, p, subject_ids, *, n_bootstrap: int = 1000, seed: int = 0, confidence: float = 0.95
) -> tuple[dict, list[str]]:
    """Brier score, calibration intercept and slope of one level, with subject-bootstrap CIs.

    Args:
      y: [N] bools, True for the positive class.
      p: [N] probabilities of the positive class (per image, or per subject at the subject level).
      subject_ids: [N] subject per row (one row per subject: the ordinary bootstrap).
      n_bootstrap: replicates (0: no intervals).
      seed: bootstrap seed (`stats.bootstrap_subject_counts`).
      confidence: two-sided level.

    Returns:
      ({"brier", "brier_ci", "brier_null" (the Brier score of predicting the prevalence for
      everyone), "calibration_intercept", "calibration_intercept_ci", "calibration_slope",
      "calibration_slope_ci"}, notes); a CI is [nan, nan] where no replicate defines it.
    """
    y, p = np.asarray(y, bool), np.asarray(p, float)
    intercept, slope, notes = calibration_intercept_slope(y, p)
    prevalence = float(y.mean()) if y.size else NAN
    out = {
        "brier": brier_score(y, p),
        "brier_null": prevalence * (1 - prevalence),
        "calibration_intercept": intercept,
        "calibration_slope": slope,
    }
    reps = _bootstrap_replicates(y, p, subject_ids, n_bootstrap, seed) if n_bootstrap else {}
    for name in METRICS:
        out[f"{name}_ci"], undefined = stats.percentile_ci(reps.get(name, []), confidence)
        # A point estimate that is undefined makes its replicates' interval meaningless.
        if math.isnan(out[name]):
            out[f"{name}_ci"] = [NAN, NAN]
        elif 0 < undefined:
            notes.append(
                f"{name}_ci: {undefined} of {n_bootstrap} bootstrap replicates left out (one "
                f"class, constant or separating probabilities in them)"
            )
    zero = [
        f"{name} ({out[f'{name}_ci'][0]:.3f} to {out[f'{name}_ci'][1]:.3f})"
        for name in METRICS
        if out[f"{name}_ci"][0] == out[f"{name}_ci"][1]  # NaN == NaN is False
    ]
    if zero:
        notes.append(
            f"zero-width CIs, which are not certainty (too few subjects of a class, or constant "
            f"predictions): {', '.join(zero)}"
        )
    return out, notes


SUBJECT_PROBABILITY_NOTE = (
    "subject calibration and decision curves use the mean of each subject's slice "
    "probabilities (the probability predict reports), not the {rule} score, which is a fraction "
    "of slices called positive and no probability"
)


def evaluate_calibration(
    probs_pos,
    y,
    subject_ids: Sequence[str],
    *,
    subject_method: str = "mean",
    n_bootstrap: int = 1000,
    seed: int = 0,
    confidence: float = 0.95,
) -> dict[str, dict]:
    """Calibration metrics of the image and subject levels, to merge into a scoring's results.

    Args:
      probs_pos: [N] positive-class probability per image (recalibrated, if it was).
      y: [N] bools per image, True for the positive class.
      subject_ids: [N] subject per image.
      subject_method: the scoring's subject rule (only noted: subjects are calibrated on their
        mean probability, see the module doc).
      n_bootstrap: replicates of the subject bootstrap of the intervals.
      seed: its seed.
      confidence: two-sided level of the intervals.

    Returns:
      {"image": {...}, "subject": {...}}: `level_calibration`'s metrics and
      "calibration_notes" (a list of str) per level.
    """
    y = np.asarray(y, bool)
    ids = np.asarray(subject_ids).astype(str)
    p = np.asarray(probs_pos, float)
    subjects, s_p, s_y = stats.aggregate_by_subject(p, y.astype(int), ids, "mean")
    boot = dict(n_bootstrap=n_bootstrap, seed=seed, confidence=confidence)
    image, image_notes = level_calibration(y, p, ids, **boot)
    subject, subject_notes = level_calibration(s_y.astype(bool), s_p, subjects, **boot)
    if subject_method != "mean":
        subject_notes.insert(0, SUBJECT_PROBABILITY_NOTE.format(rule=subject_method))
    image["calibration_notes"], subject["calibration_notes"] = image_notes, subject_notes
    return {"image": image, "subject": subject}


def subject_probabilities(y, p, subject_ids) -> tuple[np.ndarray, np.ndarray]:
    """(is_positive [S], mean probability [S]) per subject, in sorted subject order."""
    _, s_p, s_y = stats.aggregate_by_subject(
        np.asarray(p, float), np.asarray(y, bool).astype(int), subject_ids, "mean"
    )
    return s_y.astype(bool), s_p


# ----------------------------------------------------------------------------- tables
def _calibration_cell(m: Mapping, key: str, digits: int) -> str:
    value = m.get(key, NAN)
    if value is None or math.isnan(value):
        return "n/a"
    ci = m.get(f"{key}_ci")
    text = f"{value:.{digits}f}"
    if ci is None or any(v is None or math.isnan(v) for v in ci):
        return text
    return f"{text} ({ci[0]:.{digits}f} to {ci[1]:.{digits}f})"


def _rows(results: Mapping[str, Mapping], levels: Sequence[str]) -> list[tuple[str, Mapping]]:
    """("name level", metrics) of every result that has calibration metrics, subject rows first."""
    rows = []
    for level in levels:
        for name, r in results.items():
            if isinstance(r, Mapping) and "brier" in r.get(level, {}):
                rows.append((f"{name} {level}", r[level]))
    return rows


def format_calibration_table(
    results: Mapping[str, Mapping],
    *,
    fmt: str = "text",
    levels: Sequence[str] = ("subject", "image"),
    digits: int = 3,
) -> str:
    """A table of Brier score, calibration intercept and slope with CIs, subject rows first.

    Args:
      results: row name -> scoring output ({"subject": metrics, "image": metrics}, as
        `ScoringPolicy.score` returns with `evaluate_calibration`'s keys merged in).
      fmt: "text", "markdown" or "csv" (one number a cell, intervals as _ci_low/_ci_high).
      levels: the levels to show, in row order.
      digits: decimals.

    Returns:
      The table, then (text, Markdown) how to read it and the rows' calibration notes.
    """
    from ernjax.evaluate import reporting  # the table renderer (reporting imports no one here)

    if fmt != "csv":  # one volume per subject: the image rows would repeat the subject rows
        levels = reporting.shown_levels(results, levels)[0]
    rows = _rows(results, levels)
    keys = ("brier", "brier_null", "calibration_intercept", "calibration_slope")
    if fmt == "csv":
        header = ["row", "positive_class", "n", "n_positive"]
        for k in keys:
            header += [k] + ([f"{k}_ci_low", f"{k}_ci_high"] if k in METRICS else [])
        body = []
        for name, m in rows:
            flat = reporting.flatten(m)
            cells = [name, str(m.get("positive_class", ""))]
            cells += [reporting._csv_number(flat.get(k, NAN)) for k in header[2:]]
            body.append(cells + ["; ".join(m.get("calibration_notes") or ())])
        return reporting._render(header + ["notes"], body, fmt)
    ci = f"{rows[0][1].get('confidence', 0.95):.0%} CI" if rows else "95% CI"
    header = ["", "n (positive)"] + [
        _TITLES[k] + (f" ({ci})" if k in METRICS else "") for k in keys
    ]
    body = [
        [name, f"{m.get('n', '?')} ({m.get('n_positive', '?')})"]
        + [_calibration_cell(m, k, digits) for k in keys]
        for name, m in rows
    ]
    positives = sorted({str(m.get("positive_class", "?")) for _, m in rows})
    lead = "- " if fmt == "markdown" else "  "
    where: dict[str, list[str]] = {}  # each distinct note once, with the rows it applies to
    for name, m in rows:
        for note in m.get("calibration_notes") or ():
            where.setdefault(str(note), []).append(name)
    notes = [f"{', '.join(names)}: {note}" for note, names in where.items()]
    foot = (
        f"\nProbability of {', '.join(positives)}. Brier: mean squared error of the probability "
        f"(lower is better; 'prevalence for all' is the Brier of predicting every case the "
        f"prevalence). Calibration intercept (ideal 0; below 0: the model overestimates "
        f"{', '.join(positives)}) and slope (ideal 1; below 1: probabilities too extreme) of a "
        f"logistic regression on logit(p). {ci}s: percentile bootstrap over subjects (stratified "
        f"by class). Subject rows: the mean of each subject's slice probabilities.\n"
    )
    listed = "".join(f"{lead}{n}\n" for n in notes)
    return reporting._render(header, body, fmt) + foot + (f"\nNotes:\n{listed}" if notes else "")


def format_decision_table(
    curves: Mapping[str, tuple],
    thresholds: Sequence[float] = TABLE_THRESHOLDS,
    *,
    fmt: str = "text",
    digits: int = 3,
) -> str:
    """Net benefit of each prediction set, treat-all and treat-none, at threshold probabilities.

    Args:
      curves: column name -> (is_positive [N], probability [N]); sets on the same cases share
        one treat-all column, sets on different cases (prevalences) get one each.
      thresholds: threshold probabilities (rows).
      fmt: "text", "markdown" or "csv".
      digits: decimals.

    Returns:
      The table; text and Markdown end with how to read it.
    """
    from ernjax.evaluate import reporting

    nb = {name: net_benefit(y, p, thresholds) for name, (y, p) in curves.items()}
    prevalences = {round(float(np.mean(np.asarray(y, bool))), 12) for y, _ in curves.values()}
    one_all = len(prevalences) <= 1
    header = ["threshold", *nb]
    header += ["treat all"] if one_all else [f"treat all ({n})" for n in nb]
    header += ["treat none"]
    body = []
    for i, t in enumerate(np.asarray(thresholds, float)):
        cells = [f"{t:.2f}"] + [nb[n]["model"][i] for n in nb]
        cells += [next(iter(nb.values()))["treat_all"][i]] if one_all and nb else []
        cells += [] if one_all else [nb[n]["treat_all"][i] for n in nb]
        cells.append(0.0)
        if fmt == "csv":
            body.append([cells[0]] + [reporting._csv_number(float(c)) for c in cells[1:]])
        else:
            body.append([cells[0]] + [f"{float(c):.{digits}f}" for c in cells[1:]])
    table = reporting._render(header, body, fmt)
    if fmt == "csv":
        return table
    return table + (
        "\nNet benefit = TP/n - FP/n x pt/(1 - pt) at threshold probability pt (Vickers & Elkin "
        "2006), treating (acting as if positive) when p >= pt. A model helps at pt where its "
        "net benefit exceeds both treat all and treat none (0).\n"
    )


# ----------------------------------------------------------------------------- figures
def default_bins(n: int) -> int:
    """Bins of a reliability diagram of n cases: about 10 cases a bin, 3 to 10 bins."""
    return int(np.clip(n // 10, 3, 10))


def _legend_below(fig, axes, width_in: float, body_in: float) -> None:
    """The legend of `axes` under the plots, the figure grown to hold it (no curve hidden)."""
    handles, labels = axes.get_legend_handles_labels()
    legend_in = 0.2 * (len(labels) + 1)
    fig.set_size_inches(width_in, body_in + legend_in)
    fig.legend(handles, labels, loc="lower center", fontsize="x-small", frameon=False)
    fig.subplots_adjust(bottom=(legend_in + 0.45) / (body_in + legend_in))


def plot_reliability(
    curves: Mapping[str, tuple],
    path,
    title: str = "Reliability diagram",
    *,
    n_bins: int | None = None,
    strategy: str = "quantile",
    positive_class: str = "",
):
    """Reliability diagram of several prediction sets in one PNG, with a histogram beneath.

    Each set is drawn as its binned points (observed rate against mean probability, marker area
    by the count of the bin) joined by a line, and its logistic calibration curve
    sigmoid(a + b logit p) (dashed; smoother than the bins on few cases); the legend, under the
    plots, gives n, Brier, calibration intercept and slope. The histogram shows the fraction of
    each set's cases per probability (sets of different sizes stay comparable).

    Args:
      curves: legend name -> (is_positive [N] bools or 0/1, probability [N]).
      path: PNG to write atomically (folders are created).
      title: figure title.
      n_bins: bins per set (None: `default_bins` of its size).
      strategy: "quantile" (bins of equal counts: the default, for few cases) or "uniform".
      positive_class: named on the axes when given.

    Returns:
      The path written.
    """
    from matplotlib.figure import Figure

    fig = Figure(dpi=150)
    grid = fig.add_gridspec(2, 1, height_ratios=(3.2, 1), hspace=0.08)
    ax, hist = fig.add_subplot(grid[0]), fig.add_subplot(grid[1])
    ax.plot([0, 1], [0, 1], color="0.6", linestyle=":", linewidth=1, label="ideal calibration")
    grid_p = np.linspace(0.005, 0.995, 199)
    for i, (name, (y, p)) in enumerate(curves.items()):
        y, p = np.asarray(y, bool), np.asarray(p, float)
        color = f"C{i}"
        a, b, _ = calibration_intercept_slope(y, p)
        label = (
            f"{name}: n {len(y)}, Brier {brier_score(y, p):.3f}, intercept {_fmt(a)}, "
            f"slope {_fmt(b)}"
        )
        bins = n_bins or default_bins(len(y))
        observed, predicted, count = reliability_curve(y, p, bins, strategy)
        size = 15 + 150 * count / max(count.max(), 1) if count.size else 20
        ax.plot(predicted, observed, color=color, linewidth=1.2, marker="", label=label)
        ax.scatter(predicted, observed, s=size, color=color, alpha=0.8, edgecolors="white")
        fit_a, fit_b = _fit_logistic(logit(p), y, np.ones(len(y)), slope=True)
        if np.isfinite(fit_a[0]):  # undefined (one class, separation): no curve
            curve = expit(fit_a[0] + fit_b[0] * logit(grid_p))
            ax.plot(grid_p, curve, color=color, linestyle="--", linewidth=1)
        weights = np.full(len(p), 1.0 / max(len(p), 1))
        hist.hist(p, bins=20, range=(0, 1), weights=weights, histtype="step", color=color)
    ax.plot([], [], color="0.3", linestyle="--", linewidth=1, label="dashed: logistic fit")
    suffix = f" of {positive_class}" if positive_class else ""
    ax.set(xlim=(0, 1), ylim=(-0.02, 1.02), title=title, ylabel=f"Observed fraction{suffix}")
    ax.tick_params(labelbottom=False)
    hist.set(xlim=(0, 1), xlabel=f"Predicted probability{suffix}", ylabel="Fraction of cases")
    fig.subplots_adjust(left=0.13, right=0.97, top=0.94)
    _legend_below(fig, ax, 5.5, 6.3)
    return atomic.save_figure(fig, path)


def _fmt(value: float) -> str:
    return "n/a" if math.isnan(value) else f"{value:.2f}"


def plot_decision_curves(
    curves: Mapping[str, tuple],
    path,
    title: str = "Decision curve",
    *,
    thresholds=CURVE_THRESHOLDS,
    positive_class: str = "",
):
    """Decision curves (net benefit against threshold probability) of several sets in one PNG.

    Args:
      curves: legend name -> (is_positive [N] bools or 0/1, probability [N]); treat-all is drawn
        once per distinct prevalence.
      path: PNG to write atomically (folders are created).
      title: figure title.
      thresholds: the threshold probabilities of the x axis.
      positive_class: named on the axes when given ("treat" = act as if it were present).

    Returns:
      The path written.
    """
    from matplotlib.figure import Figure

    fig = Figure(dpi=150)
    ax = fig.add_subplot()
    t = np.asarray(thresholds, float)
    ax.axhline(0.0, color="black", linewidth=1, label="treat none")
    top, drawn = 0.05, set()
    prevalences = {round(float(np.mean(np.asarray(y, bool))), 12) for y, _ in curves.values()}
    for i, (name, (y, p)) in enumerate(curves.items()):
        nb = net_benefit(y, p, t)
        prevalence = round(float(np.mean(np.asarray(y, bool))), 12)
        if prevalence not in drawn:  # one treat-all curve per cohort: grey, or the set's colour
            one = len(prevalences) == 1
            style = dict(color="0.55" if one else f"C{i}", linestyle="--", linewidth=1)
            ax.plot(
                t, nb["treat_all"], label="treat all" if one else f"treat all ({name})", **style
            )
            drawn.add(prevalence)
        ax.plot(t, nb["model"], color=f"C{i}", linewidth=1.5, label=name)
        top = max(top, float(np.nanmax(nb["model"])), prevalence)
    who = positive_class or "the positive class"
    ax.set(
        xlim=(0, 1),
        ylim=(-0.1 * top - 0.02, 1.1 * top),
        title=title,
        xlabel=f"Threshold probability of {who} (treat when p >= threshold)",
        ylabel="Net benefit",
    )
    fig.subplots_adjust(left=0.12, right=0.97, top=0.92)
    _legend_below(fig, ax, 6.0, 4.3)
    return atomic.save_figure(fig, path)
