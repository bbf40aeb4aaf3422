"""How predictions are scored: one policy built from `config.eval` and the class names.

`ScoringPolicy.from_config(config.eval, class_names)` is the one owner of the positive class, the
cut-offs and the subject rule. The trainer's final evaluation, cross-validation, comparisons and
`predict` all ask it, so they cannot disagree:

  positive          index of `config.eval.positive_class` among the class names
  cutoffs(val)      image and subject cut-offs chosen on VALIDATION predictions ({}: defaults)
  score(preds, c)   image- and subject-wise metrics with the CI methods of `config.eval`
  decide(probs, c)  one patient's subject score, the cut-off it is held against, the decision
  roc_data, plot_rocs   the curves of the positive class, per image or per subject

Cut-offs travel as the dict `stats.choose_thresholds` returns, {"threshold", "subject_threshold"},
or {} when no validation predictions chose them: then the defaults apply (`stats.DEFAULT_THRESHOLD`,
argmax for two classes, and the subject rule's own default, `stats.default_subject_threshold`).
"""

import dataclasses
import logging
from collections.abc import Mapping, Sequence

import numpy as np

from ernjax.evaluate import reporting, stats
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

    @classmethod
    def from_config(cls, eval_config, class_names: Sequence[str]) -> "ScoringPolicy":
        """The policy of `config.eval` for data with `class_names`.

        Args:
          eval_config: `config.eval` (positive_class, subject_method, tune_threshold, ci_method,
            auc_ci, image_ci, confidence, n_bootstrap). A config saved before image_ci existed
            gets the default, the subject bootstrap.
          class_names: the class names, in class-index order (the data's or the predictions').

        Raises:
          ValueError: `config.eval.positive_class` is not one of the class names.
        """
        names = tuple(str(c) for c in class_names)
        e = eval_config
        if e.positive_class not in names:
            raise ValueError(
                f"config.eval.positive_class={e.positive_class!r} is not one of {names}"
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
        )

    @property
    def positive_name(self) -> str:
        """The positive class's name."""
        return self.class_names[self.positive]

    # ------------------------------------------------------------------------- cut-offs
    def cutoffs(self, validation: Predictions | None) -> dict[str, float]:
        """Image and subject cut-offs chosen on validation predictions, never on the scored split.

        Returns:
          {"threshold", "subject_threshold"}, or {} without validation predictions (defaults).
        """
        if validation is None or not len(validation):
            return {}
        return stats.choose_thresholds(
            validation.probs,
            validation.label,
            validation.subject_id,
            positive=self.positive,
            subject_method=self.subject_method,
            tune_threshold=self.tune_threshold,
        )

    def image_cutoff(self, cutoffs: Mapping | None) -> float:
        """The image cut-off on the positive-class probability (`cutoffs` or the default)."""
        return float((cutoffs or {}).get("threshold", stats.DEFAULT_THRESHOLD))

    def subject_cutoff(self, cutoffs: Mapping | None) -> float:
        """The cut-off on the subject score (`cutoffs` or the subject rule's default)."""
        default = stats.default_subject_threshold(self.subject_method, self.image_cutoff(cutoffs))
        return float((cutoffs or {}).get("subject_threshold", default))

    # ------------------------------------------------------------------------- scoring
    def score(self, preds: Predictions, cutoffs: Mapping | None = None) -> dict:
        """Image- and subject-wise metrics with CIs (`stats.evaluate_predictions`).

        Args:
          preds: the predictions to score.
          cutoffs: from `cutoffs` on validation predictions ({} or None: the defaults).

        Returns:
          {"image": metrics, "subject": metrics}; its summary and notes are logged.
        """
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
            **(cutoffs or {}),
        )
        logging.info("scored %s", reporting.summary_line(results))
        return results

    def decide(self, probs: np.ndarray, cutoffs: Mapping | None = None) -> dict:
        """One patient's decision from the class probabilities of their images.

        Args:
          probs: [N, K] class probabilities of one subject's images (slices or one volume).
          cutoffs: from `cutoffs` ({} or None: the defaults).

        Returns:
          {"score": the subject score, "threshold": the cut-off it is held against, "decision":
          the positive class when score >= cut-off, else the other of two classes (of more than
          two, the most probable one on average)}.
        """
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

    # ------------------------------------------------------------------------- ROC curves
    def roc_data(
        self, preds: Predictions, level: str = "image", cutoffs: Mapping | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """(is_positive [N], score [N]) for `reporting.plot_roc`, per image or per subject.

        The subject scores of "predictive_index" and "majority" count the slices called positive
        at the image cut-off of `cutoffs`, the one the tables use ({} or None: the default).
        """
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
        self, named: Mapping[str, Predictions], path_stem, cutoffs: Mapping | None = None
    ) -> None:
        """Image-wise and subject-wise ROC PNGs of several prediction sets (`<stem>_image.png`).

        `cutoffs` maps a set's name to its cut-offs (`roc_data`); a name not in it gets the
        defaults.
        """
        cutoffs = cutoffs or {}
        for level in ("image", "subject"):
            curves = {n: self.roc_data(p, level, cutoffs.get(n)) for n, p in named.items()}
            reporting.plot_roc(
                curves,
                f"{path_stem}_{level}.png",
                f"ROC, {level}-wise",
                positive_class=self.positive_name,
            )
