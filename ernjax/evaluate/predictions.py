"""Per-example predictions: one CSV format, and scoring them the way `config.eval` says.

Training writes `predictions_<split>.csv`; cross-validation, comparisons and ensembles read them
back, so every command scores predictions with the same thresholds, CI methods and subject-wise
rule. Thresholds always come from validation predictions, never from the split being scored.
"""

import csv
import dataclasses
from pathlib import Path

import numpy as np

from ernjax import atomic
from ernjax.errors import InputError
from ernjax.evaluate import reporting, stats


@dataclasses.dataclass
class Predictions:
    """Class probabilities per example (slice or volume) of one split.

    Attributes:
      subject_id: [N] subject per example.
      label: [N] true class index.
      probs: [N, K] class probabilities.
      class_names: K names, in class-index order.
    """

    subject_id: list[str]
    label: np.ndarray
    probs: np.ndarray
    class_names: tuple[str, ...]

    def __len__(self) -> int:
        return len(self.subject_id)


def write_csv(path, preds: Predictions) -> Path:
    """One row per example: subject_id, label, one `prob_<class>` column per class (atomically)."""
    path = Path(path)
    with atomic.atomic_path(path) as tmp, open(tmp, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["subject_id", "label", *(f"prob_{c}" for c in preds.class_names)])
        for sid, y, p in zip(preds.subject_id, preds.label, preds.probs, strict=True):
            w.writerow([sid, int(y), *(f"{v:.6f}" for v in p)])
    return path


def read_csv(path) -> Predictions:
    """Reads a file written by `write_csv`.

    Raises:
      InputError: missing file, or a header without subject_id/label/prob_ columns.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError("-", path, "predictions file not found (did the run finish?)")
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    header = rows[0] if rows else []
    classes = tuple(h[len("prob_") :] for h in header[2:] if h.startswith("prob_"))
    if header[:2] != ["subject_id", "label"] or not classes:
        raise InputError("-", path, f"not a predictions file: header {header}")
    body = rows[1:]
    return Predictions(
        subject_id=[r[0] for r in body],
        label=np.array([int(r[1]) for r in body], np.int64),
        probs=np.array([[float(v) for v in r[2:]] for r in body], np.float64).reshape(
            len(body), len(classes)
        ),
        class_names=classes,
    )


def thresholds(eval_config, validation: Predictions | None, positive: int) -> dict[str, float]:
    """Image and subject cut-offs from validation predictions, per `config.eval`.

    With no validation predictions (or a tuning option off) the defaults apply: 0.5, i.e. argmax
    for two classes, as Gao 2020 and Ying 2025 used.
    """
    if validation is None or not len(validation):
        return {}
    return stats.choose_thresholds(
        validation.probs,
        validation.label,
        validation.subject_id,
        positive=positive,
        subject_method=eval_config.subject_method,
        tune_threshold=eval_config.tune_threshold,
    )


def score(eval_config, preds: Predictions, positive: int, cutoffs: dict | None = None) -> dict:
    """`stats.evaluate_predictions` with the CI methods and subject rule of `config.eval`.

    Args:
      eval_config: `config.eval`.
      preds: the predictions to score.
      positive: index of the positive class.
      cutoffs: from `thresholds` on validation predictions ({} or None: the defaults).

    Returns:
      {"image": metrics, "subject": metrics} (see `stats.evaluate_predictions`).
    """
    return stats.evaluate_predictions(
        preds.probs,
        preds.label,
        preds.subject_id,
        positive=positive,
        class_names=preds.class_names,
        subject_method=eval_config.subject_method,
        ci_method=eval_config.ci_method,
        auc_ci=eval_config.auc_ci,
        confidence=eval_config.confidence,
        n_bootstrap=eval_config.n_bootstrap,
        seed=0,
        **(cutoffs or {}),
    )


def roc_data(preds: Predictions, positive: int, level: str = "image", subject_method="mean"):
    """(is_positive [N], score [N]) for `reporting.plot_roc`, per image or per subject."""
    score = preds.probs[:, positive]
    if level == "image":
        return preds.label == positive, score
    _, s_score, s_label = stats.aggregate_by_subject(
        score, preds.label, preds.subject_id, subject_method
    )
    return s_label == positive, s_score


def plot_rocs(named: dict, path_stem, positive: int, positive_name: str, subject_method="mean"):
    """Image-wise and subject-wise ROC PNGs of several prediction sets (`<stem>_image.png`, ...)."""
    for level in ("image", "subject"):
        curves = {n: roc_data(p, positive, level, subject_method) for n, p in named.items()}
        reporting.plot_roc(
            curves,
            f"{path_stem}_{level}.png",
            f"ROC, {level}-wise",
            positive_class=positive_name,
        )
