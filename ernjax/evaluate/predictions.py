"""Per-example predictions of one split, and their one CSV format.

Training writes `predictions_<split>.csv`; cross-validation, comparisons, ensembles and predict
read them back and score them with one `ernjax.evaluate.scoring.ScoringPolicy`, so every command
uses the same cut-offs (chosen on validation predictions, never on the split being scored), CI
methods and subject-wise rule.
"""

import csv
import dataclasses
from pathlib import Path

import numpy as np

from ernjax import atomic
from ernjax.errors import InputError


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


DIGITS = 6  # decimals of a probability in the CSV


def as_written(preds: Predictions) -> Predictions:
    """`preds` with the probabilities as `write_csv` stores them and `read_csv` reads them back.

    A table scored from them is then what scoring the CSV again gives.
    """
    probs = np.array([[float(f"{v:.{DIGITS}f}") for v in row] for row in preds.probs], np.float64)
    probs = probs.reshape(preds.probs.shape)
    return dataclasses.replace(preds, probs=probs)


def write_csv(path, preds: Predictions) -> Path:
    """One row per example: subject_id, label, one `prob_<class>` column per class (atomically)."""
    path = Path(path)
    with atomic.atomic_path(path) as tmp, open(tmp, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["subject_id", "label", *(f"prob_{c}" for c in preds.class_names)])
        for sid, y, p in zip(preds.subject_id, preds.label, preds.probs, strict=True):
            w.writerow([sid, int(y), *(f"{v:.{DIGITS}f}" for v in p)])
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
