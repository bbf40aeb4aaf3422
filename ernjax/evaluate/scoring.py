"""How predictions are scored: one policy built from `config.eval` and the class names.

`ScoringPolicy.from_config(config.eval, class_names)` is the one owner of the positive class, the
cut-offs and the subject rule. The trainer's final evaluation, cross-validation, comparisons and
`predict` all ask it, so they cannot disagree:

  positive          index of `config.eval.positive_class` among the class names
  cutoffs(val)      image and subject cut-offs chosen on VALIDATION predictions ({}: defaults)
  score(preds, c)   image- and subject-wise metrics with the CI methods of `config.eval`
  decide(probs, c)  one patient's subject score, the cut-off it is held against, the decision
  subject_calls(preds, c)   every subject's truth and decision, as the subject rows count them
  roc_data, plot_rocs   the curves of the positive class, per image or per subject
  calibration_data, plot_calibration   reliability diagrams and decision curves (`calibration`)

Cut-offs travel as the dict `stats.choose_thresholds` returns, {"threshold", "subject_threshold"},
or {} when no validation predictions chose them: then the defaults apply (`stats.DEFAULT_THRESHOLD`,
argmax for two classes, and the subject rule's own default, `stats.default_subject_threshold`).
With `config.eval.recalibrate="logistic"` the dict also holds "recalibration", a
`calibration.Recalibration` fitted on the same validation predictions BEFORE the cut-offs are
chosen (on the recalibrated probabilities); `score`, `decide` and `roc_data` apply it to the
probabilities first, so every command that passes the cut-offs on scores recalibrated
probabilities. Every `score` also reports calibration (Brier, intercept, slope) per level.
"""

import dataclasses
import logging
from collections.abc import Mapping, Sequence

import numpy as np

from ernjax.evaluate import calibration, reporting, stats
from ernjax.evaluate.predictions import Predictions


@dataclasses.dataclass(frozen=True)
class ScoringPolicy:
    """The positive class, cut-offs and subject rule of one run's evaluation (see module doc).

    Attributes:
      class_names: the class names, in class-index order.
      positive: index of the positive class.
      subject_method: "mean", "predictive_index" or "majority" (`stats.aggregate_by_subject`).
      tune_threshold: choose the image cut-off by Youden's J on validation (else the default).
      ci_method, auc_ci, image_ci, confidence, n_bootstrap: the confidence intervals
        (`config.eval`; `stats.level_ci_methods` says which metric gets which).
      recalibrate: "none" or "logistic" (`calibration.fit_recalibration` on validation).
    """

    class_names: tuple[str, ...]
    positive: int
    subject_method: str = "mean"
    tune_threshold: bool = False
    ci_method: str = "wilson"
    auc_ci: str = "delong"
    image_ci: str = stats.IMAGE_CI_METHODS[0]
    confidence: float = 0.95
    n_bootstrap: int = 1000
    recalibrate: str = "none"

    @classmethod
    def from_config(cls, eval_config, class_names: Sequence[str]) -> "ScoringPolicy":
        """The policy of `config.eval` for data with `class_names`.

        Args:
          eval_config: `config.eval` (positive_class, subject_method, tune_threshold, ci_method,
            auc_ci, image_ci, confidence, n_bootstrap). A config saved before image_ci existed
            gets the default, the subject bootstrap.
          class_names: the class names, in class-index order (the data's or the predictions').

        Raises:
          ValueError: `config.eval.positive_class` is not one of the class names, or
            `config.eval.recalibrate` is not one of `calibration.RECALIBRATION_METHODS`.
        """
        names = tuple(str(c) for c in class_names)
        e = eval_config
        if e.positive_class not in names:
            raise ValueError(
                f"config.eval.positive_class={e.positive_class!r} is not one of {names}"
            )
        recalibrate = e.get("recalibrate", "none")  # a config saved before it existed: none
        if recalibrate not in calibration.RECALIBRATION_METHODS:
            raise ValueError(
                f"config.eval.recalibrate={recalibrate!r}: expected one of "
                f"{calibration.RECALIBRATION_METHODS}"
            )
        return cls(
            class_names=names,
            positive=names.index(e.positive_class),
            subject_method=e.subject_method,
            tune_threshold=bool(e.tune_threshold),
            ci_method=e.ci_method,
            auc_ci=e.auc_ci,
            image_ci=e.get("image_ci", stats.IMAGE_CI_METHODS[0]),
            confidence=float(e.confidence),
            n_bootstrap=int(e.n_bootstrap),
            recalibrate=recalibrate,
        )

    @property
    def positive_name(self) -> str:
        """The positive class's name."""
        return self.class_names[self.positive]

    # ------------------------------------------------------------------------- cut-offs
    def cutoffs(self, validation: Predictions | None) -> dict:
        """Image and subject cut-offs chosen on validation predictions, never on the scored split.

        With `recalibrate` set, the recalibration is fitted on these validation predictions
        first and the cut-offs are chosen on the recalibrated probabilities: a cut-off is then on
        the scale of the probabilities it will be held against.

        Returns:
          {"threshold", "subject_threshold"} (and "recalibration", a `calibration.Recalibration`,
          when `recalibrate` is not "none"), or {} without validation predictions (defaults).
        """
        if validation is None or not len(validation):
            return {}
        fitted = {}
        if self.recalibrate != "none":
            is_pos = validation.label == self.positive
            fitted["recalibration"] = calibration.fit_recalibration(
                is_pos, validation.probs[:, self.positive], validation.subject_id
            )
            validation = self.recalibrated(validation, fitted)
        return fitted | stats.choose_thresholds(
            validation.probs,
            validation.label,
            validation.subject_id,
            positive=self.positive,
            subject_method=self.subject_method,
            tune_threshold=self.tune_threshold,
        )

    def subject_cutoff_source(self, cutoffs: Mapping | None) -> str:
        """Whether the subject cut-off was tuned on validation ("validation") or not ("default").

        "mean" cuts subjects at the image cut-off, tuned only with `tune_threshold`;
        "predictive_index" always tunes its own; "majority" always cuts at half.
        """
        if not cutoffs:
            return "default"
        tuned = self.subject_method == "predictive_index" or (
            self.subject_method == "mean" and self.tune_threshold
        )
        return "validation" if tuned else "default"

    def image_cutoff(self, cutoffs: Mapping | None) -> float:
        """The image cut-off on the positive-class probability (`cutoffs` or the default)."""
        return float((cutoffs or {}).get("threshold", stats.DEFAULT_THRESHOLD))

    def subject_cutoff(self, cutoffs: Mapping | None) -> float:
        """The cut-off on the subject score (`cutoffs` or the subject rule's default)."""
        default = stats.default_subject_threshold(self.subject_method, self.image_cutoff(cutoffs))
        return float((cutoffs or {}).get("subject_threshold", default))

    # ------------------------------------------------------------------------- recalibration
    def recalibrated(self, preds: Predictions, cutoffs: Mapping | None) -> Predictions:
        """`preds` with the recalibration of `cutoffs` applied (as they are without one)."""
        params = (cutoffs or {}).get("recalibration")
        if params is None:
            return preds
        probs = calibration.recalibrate_probs(params, preds.probs, self.positive)
        return dataclasses.replace(preds, probs=probs)

    def recalibrated_probs(self, probs: np.ndarray, cutoffs: Mapping | None) -> np.ndarray:
        """[N, K] class probabilities with the recalibration of `cutoffs` applied, if any."""
        params = (cutoffs or {}).get("recalibration")
        return calibration.recalibrate_probs(params, probs, self.positive)

    def _recalibration_notes(self, preds: Predictions, cutoffs: Mapping | None) -> list[str]:
        """What was done to the probabilities before scoring, in words (for every level)."""
        params = (cutoffs or {}).get("recalibration")
        if params is None:
            if self.recalibrate == "none":
                return []
            return [
                f"config.eval.recalibrate={self.recalibrate} but no validation predictions "
                f"fitted a recalibration here: probabilities as the model gave them"
            ]
        is_pos = preds.label == self.positive
        fp = calibration.fingerprint(preds.subject_id, is_pos, preds.probs[:, self.positive])
        same = " (in-sample: these are the predictions it was fitted on)"
        return [params.describe() + (same if fp == params.fitted_on else "")]

    # ------------------------------------------------------------------------- scoring
    def score(self, preds: Predictions, cutoffs: Mapping | None = None) -> dict:
        """Image- and subject-wise metrics with CIs (`stats.evaluate_predictions`).

        The probabilities are first recalibrated when `cutoffs` hold a recalibration. Each level
        also gets `calibration.evaluate_calibration`'s metrics (brier, calibration_intercept,
        calibration_slope with "_ci", brier_null, calibration_notes); subjects are calibrated on
        their mean slice probability whatever the subject rule (see `calibration`).

        Args:
          preds: the predictions to score.
          cutoffs: from `cutoffs` on validation predictions ({} or None: the defaults).

        Returns:
          {"image": metrics, "subject": metrics}; its summary and notes are logged. With a
          recalibration, each level also holds recalibration_intercept and recalibration_slope,
          and its notes say what was fitted on what.
        """
        cutoffs = dict(cutoffs or {})
        params = cutoffs.pop("recalibration", None)
        notes = self._recalibration_notes(preds, {"recalibration": params})
        preds = self.recalibrated(preds, {"recalibration": params})
        results = stats.evaluate_predictions(
            preds.probs,
            preds.label,
            preds.subject_id,
            positive=self.positive,
            class_names=preds.class_names,
            subject_method=self.subject_method,
            ci_method=self.ci_method,
            auc_ci=self.auc_ci,
            image_ci=self.image_ci,
            confidence=self.confidence,
            n_bootstrap=self.n_bootstrap,
            seed=0,
            **cutoffs,
        )
        calibrated = calibration.evaluate_calibration(
            preds.probs[:, self.positive],
            preds.label == self.positive,
            preds.subject_id,
            subject_method=self.subject_method,
            n_bootstrap=self.n_bootstrap,
            seed=0,
            confidence=self.confidence,
        )
        for level, metrics in results.items():
            metrics.update(calibrated[level])
            metrics["notes"] = notes + metrics["notes"]
            metrics["calibration_notes"] = notes + metrics["calibration_notes"]
            if params is not None:
                metrics["recalibration_intercept"] = params.intercept
                metrics["recalibration_slope"] = params.slope
        logging.info("scored %s", reporting.summary_line(results))
        return results

    def decide(self, probs: np.ndarray, cutoffs: Mapping | None = None) -> dict:
        """One patient's decision from the class probabilities of their images.

        Args:
          probs: [N, K] class probabilities of one subject's images (slices or one volume), as
            the model gives them: the recalibration of `cutoffs`, if any, is applied here.
          cutoffs: from `cutoffs` ({} or None: the defaults).

        Returns:
          {"score": the subject score, "threshold": the cut-off it is held against, "decision":
          the positive class when score >= cut-off, else the other of two classes (of more than
          two, the most probable one on average)}.
        """
        probs = self.recalibrated_probs(probs, cutoffs)
        _, score, _ = stats.aggregate_by_subject(
            probs[:, self.positive],
            np.zeros(len(probs), int),
            ["subject"] * len(probs),
            self.subject_method,
            threshold=self.image_cutoff(cutoffs),
        )
        cut, names = self.subject_cutoff(cutoffs), self.class_names
        if score[0] >= cut:
            decision = names[self.positive]
        elif len(names) == 2:
            decision = names[1 - self.positive]
        else:  # more than two classes and not the positive one: the most probable class
            decision = names[int(np.argmax(probs.mean(0)))]
        return {"score": float(score[0]), "threshold": cut, "decision": decision}

    def subject_calls(
        self, preds: Predictions, cutoffs: Mapping | None = None
    ) -> tuple[list[str], np.ndarray, np.ndarray]:
        """Every subject's truth and the model's decision, the ones `score`'s subject row counts.

        A subject is called positive when its score (`roc_data`, the recalibration of `cutoffs`
        applied) is >= `subject_cutoff(cutoffs)`: what `decide` says of each patient. Readers'
        decisions are set against these (`ernjax.evaluate.readers`).

        Returns:
          (subject IDs [S], sorted; is of the positive class [S]; called positive [S]).
        """
        preds = self.recalibrated(preds, cutoffs)
        subjects, score, labels = stats.aggregate_by_subject(
            preds.probs[:, self.positive],
            preds.label,
            preds.subject_id,
            self.subject_method,
            threshold=self.image_cutoff(cutoffs),
        )
        called = score >= self.subject_cutoff(cutoffs)
        return [str(s) for s in subjects], labels == self.positive, called

    # ------------------------------------------------------------------------- ROC curves
    def roc_data(
        self, preds: Predictions, level: str = "image", cutoffs: Mapping | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """(is_positive [N], score [N]) for `reporting.plot_roc`, per image or per subject.

        The subject scores of "predictive_index" and "majority" count the slices called positive
        at the image cut-off of `cutoffs`, the one the tables use ({} or None: the default); a
        recalibration in `cutoffs` is applied first, as the tables do.
        """
        preds = self.recalibrated(preds, cutoffs)
        score = preds.probs[:, self.positive]
        if level == "image":
            return preds.label == self.positive, score
        _, s_score, s_label = stats.aggregate_by_subject(
            score,
            preds.label,
            preds.subject_id,
            self.subject_method,
            threshold=self.image_cutoff(cutoffs),
        )
        return s_label == self.positive, s_score

    def plot_rocs(
        self,
        named: Mapping[str, Predictions],
        path_stem,
        cutoffs: Mapping | None = None,
        *,
        readers: tuple | None = None,
    ) -> None:
        """Image-wise and subject-wise ROC PNGs of several prediction sets (`<stem>_image.png`).

        `cutoffs` maps a set's name to its cut-offs (`roc_data`); a name not in it gets the
        defaults. `readers` (`readers.roc_points`) draws readers on the subject-wise figure.
        """
        cutoffs = cutoffs or {}
        for level in ("image", "subject"):
            curves = {n: self.roc_data(p, level, cutoffs.get(n)) for n, p in named.items()}
            points = readers if level == "subject" else None
            reporting.plot_roc(
                curves,
                f"{path_stem}_{level}.png",
                f"ROC, {level}-wise" + (", readers as points" if points else ""),
                positive_class=self.positive_name,
                readers=points,
            )

    # ------------------------------------------------------------------------- calibration
    def calibration_data(
        self, preds: Predictions, level: str = "subject", cutoffs: Mapping | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """(is_positive, probability of the positive class), per image or per subject.

        For `calibration.plot_reliability`, `plot_decision_curves` and `format_decision_table`.
        A subject's probability is the mean of its slices' (whatever the subject rule: the
        other rules' scores are no probabilities); a recalibration in `cutoffs` is applied.
        """
        preds = self.recalibrated(preds, cutoffs)
        y, p = preds.label == self.positive, preds.probs[:, self.positive]
        if level == "image":
            return y, p
        return calibration.subject_probabilities(y, p, preds.subject_id)

    def plot_calibration(
        self,
        named: Mapping[str, Predictions],
        path_stem,
        cutoffs: Mapping | None = None,
        *,
        title: str = "",
    ) -> None:
        """Subject-wise reliability diagram and decision curve PNGs of several prediction sets.

        Writes `<stem>_reliability.png` and `<stem>_decision_curve.png` (atomically); `cutoffs`
        maps a set's name to its cut-offs (their recalibration, if any, is applied); `title`
        is prefixed to each figure's title.
        """
        cutoffs = cutoffs or {}
        curves = {n: self.calibration_data(p, "subject", cutoffs.get(n)) for n, p in named.items()}
        lead = f"{title}: " if title else ""
        calibration.plot_reliability(
            curves,
            f"{path_stem}_reliability.png",
            f"{lead}Reliability, subject-wise",
            positive_class=self.positive_name,
        )
        calibration.plot_decision_curves(
            curves,
            f"{path_stem}_decision_curve.png",
            f"{lead}Decision curve, subject-wise",
            positive_class=self.positive_name,
        )
