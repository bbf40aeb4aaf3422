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
      slice: [N] each slice's index along the volume's D axis (slices2d; the slice a reader
        finds it at), or None (volumes, or predictions that do not say).
    """

    subject_id: list[str]
    label: np.ndarray
    probs: np.ndarray
    class_names: tuple[str, ...]
    slice: np.ndarray | None = None

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
    """One row per example, atomically.

    Columns: subject_id, label (the class index), label_name, slice (slices only: the index
    along the volume's D axis), one `prob_<class>` column per class.
    """
    path = Path(path)
    slices = preds.slice is not None
    with atomic.atomic_path(path) as tmp, open(tmp, "w", newline="") as f:
        w = csv.writer(f)
        probs = [f"prob_{c}" for c in preds.class_names]
        w.writerow(["subject_id", "label", "label_name", *(["slice"] * slices), *probs])
        for i, (sid, y, p) in enumerate(
            zip(preds.subject_id, preds.label, preds.probs, strict=True)
        ):
            where = [int(preds.slice[i])] if slices else []
            name = preds.class_names[int(y)]
            w.writerow([sid, int(y), name, *where, *(f"{v:.{DIGITS}f}" for v in p)])
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
    prob_cols = [i for i, h in enumerate(header) if h.startswith("prob_")]
    classes = tuple(header[i][len("prob_") :] for i in prob_cols)
    if header[:2] != ["subject_id", "label"] or not classes:
        raise InputError("-", path, f"not a predictions file: header {header}")
    body = rows[1:]
    at = header.index("slice") if "slice" in header else None  # files before it had none
    return Predictions(
        subject_id=[r[0] for r in body],
        label=np.array([int(r[1]) for r in body], np.int64),
        probs=np.array([[float(r[i]) for i in prob_cols] for r in body], np.float64).reshape(
            len(body), len(classes)
        ),
        class_names=classes,
        slice=None if at is None else np.array([int(r[at]) for r in body], np.int64),
    )
