"""External validation: a finished run, or a cross-validation's fold ensemble, on another cohort.

Shin 2021's external test: the model and its cut-offs are fixed before the other cohort is seen.

  - The model: the checkpoint the run was scored with, its config and its cut-offs chosen on its
    own validation split (`inference.load_run`, so `checkpoints.load_model` decides which step),
    or each fold's of a cross-validation (W/fold_k) and their ensemble
    (`crossval.ensemble_predictions` at `crossval.ensemble_cutoffs`, chosen on the pooled
    out-of-fold predictions), as `crossval.summarize` scores its test split.
  - The data: records of the other cohort built with the run's own data settings (kind, channels,
    reference, grid, normalization, ROI, classes), every subject in one scored split, "external":
    nothing of that cohort trains, selects a checkpoint or chooses a cut-off. Only how the
    cohort's files are found may differ (`COHORT_FIELDS`: modality and mask patterns, labels.csv
    columns, on_error, build workers); what an example is stays the run's.
  - Scoring: the run's `ScoringPolicy` at those cut-offs, never re-tuned (a note under every
    table says so and gives them), with the same intervals and notes as every table, ROC
    curves, and a breakdown per value of labels.csv columns (site, scanner, field strength).

Written to OUT (all renamed into place together at the end, external.json last):
  external.md / .csv / .json          the table (rows "external", or "ensemble (mean) external"
                                      and "fold k external"); external.json also holds each
                                      row's cut-offs ("<row>.<level>.threshold")
  predictions_external.csv            the model's predictions (the ensemble's for --crossval),
                                      predictions_external_fold_<k>.csv each fold's
  roc_external_image.png / _subject.png
  calibration_external.md             Brier, calibration intercept and slope (every row; the
                                      numbers are in external.json too), net benefit
  calibration_external_reliability.png / _decision_curve.png   subject-wise (`calibration`)
  external_by_<column>.md / .csv / .json   one row per value of the column, subject rows first
The records are built under OUT/records (nothing is written to the run's folders). Outputs name
subjects by their ID only.
"""

import dataclasses
import json
import logging
import re
from pathlib import Path

import numpy as np

from ernjax import atomic, inference
from ernjax.data import cohort, pipeline, prepare
from ernjax.errors import InputError
from ernjax.evaluate import calibration, predictions, reporting
from ernjax.evaluate.predictions import Predictions
from ernjax.evaluate.scoring import ScoringPolicy
from ernjax.studies import crossval

SPLIT = "external"  # the scored split's name in every output
# With `split.test = split.validation = 0` the records builder puts every subject in "train":
# the one split of an external cohort, read back as SPLIT.
_STORED_SPLIT = "train"
# The calibration note of a majority ensemble's rows.
VOTES = (
    "the majority ensemble's probability is the fraction of fold models calling a case "
    "positive, a vote and no probability: its Brier and calibration do not measure calibration"
)
# The `config.data` fields that say where a cohort's files are, not what an example is: the
# only ones another cohort may set (`cohort_settings`).
COHORT_FIELDS = (
    "modalities",
    "mask_pattern",
    "slices_column",
    "centre_column",
    "on_error",
    "build_workers",
)


@dataclasses.dataclass
class Model:
    """What is validated: one run, or the folds of a cross-validation and how they combine.

    Attributes:
      runs: row name ("run", or "fold 0", "fold 1", ...) -> the loaded run.
      ensemble: "mean" or "majority" for a cross-validation, "" for one run.
      ensemble_cutoffs: the ensemble's cut-offs ({} for one run).
      cutoff_source: where the cut-offs were chosen, in words (for the table notes).
    """

    runs: dict[str, inference.TrainedRun]
    ensemble: str = ""
    ensemble_cutoffs: dict = dataclasses.field(default_factory=dict)
    cutoff_source: str = "the run's validation split"

    @property
    def config(self):
        """The config of the (first) run: data settings, scoring."""
        return next(iter(self.runs.values())).config

    @property
    def scoring(self) -> ScoringPolicy:
        """The scoring policy of the (first) run."""
        return next(iter(self.runs.values())).scoring


# ----------------------------------------------------------------------------- the model
def load_finished_run(workdir) -> inference.TrainedRun:
    """A finished training run, with the checkpoint its results were scored with.

    Raises:
      InputError: no such folder, no results.json (training not finished), no checkpoint, or
        the checkpoint the run's rule selects now is not the one its results were scored with.
    """
    workdir = Path(workdir)
    if not workdir.is_dir():
        raise InputError("", workdir, "run folder not found")
    results = workdir / "results.json"
    if not results.is_file():
        hint = " (a cross-validation? use --crossval)" if (workdir / "fold_0").is_dir() else ""
        raise InputError(
            "", results, f"not a finished run: no results.json{hint}; finish its training first"
        )
    run = inference.load_run(workdir)
    scored = json.loads(results.read_text(encoding="utf-8")).get("checkpoint_step")
    if scored is not None and int(scored) != run.step:
        raise InputError(
            "",
            workdir / "checkpoints",
            f"the run's results were scored with step {int(scored)}, but its checkpoints now "
            f"select step {run.step} (was training resumed and not finished?); finish it first",
        )
    return run


def load_model(source, *, is_crossval: bool = False, ensemble: str = "mean") -> Model:
    """The run in SOURCE, or the k fold runs of the cross-validation in SOURCE.

    Raises:
      InputError: see `load_finished_run`; for a cross-validation, no crossval.json or a fold
        missing.
    """
    source = Path(source)
    if ensemble not in ("mean", "majority"):
        raise ValueError(f"ensemble method {ensemble!r}: expected 'mean' or 'majority'")
    if not is_crossval:
        return Model({"run": load_finished_run(source)})
    if not (source / "crossval.json").is_file():
        raise InputError(
            "",
            source / "crossval.json",
            "not a finished cross-validation (no crossval.json): run python -m ernjax.crossval "
            "to the end first",
        )
    first = load_finished_run(source / "fold_0")
    k = int(first.config.data.split.folds)
    runs = {"fold 0": first} | {
        f"fold {f}": load_finished_run(source / f"fold_{f}") for f in range(1, k)
    }
    val = crossval.fold_validation_predictions(source, k)
    fold_cutoffs = [r.cutoffs for r in runs.values()]
    cutoffs = crossval.ensemble_cutoffs(first.scoring, val, ensemble, fold_cutoffs)
    source_words = "the cross-validation's pooled out-of-fold predictions"
    return Model(runs, ensemble, cutoffs, source_words)


# ----------------------------------------------------------------------------- the data
def external_config(config, cohort_dir, out_dir, cohort_settings=None):
    """The run's config for the other cohort: every subject in one split, the run's examples.

    Args:
      config: the run's config.
      cohort_dir: the other cohort (labels.csv + subject folders).
      out_dir: OUT; the records go to OUT/records.
      cohort_settings: `COHORT_FIELDS` values of the other cohort (e.g. its modality patterns).

    Raises:
      ValueError: a setting that is not one of `COHORT_FIELDS`.
      InputError: the modality patterns leave out a modality the model needs.
    """
    settings = dict(cohort_settings or {})
    if bad := sorted(set(settings) - set(COHORT_FIELDS)):
        raise ValueError(
            f"{bad}: only where the cohort's files are may change ({', '.join(COHORT_FIELDS)}); "
            "the examples are the run's"
        )
    c = config.copy_and_resolve_references()
    with c.unlocked():
        d = c.data
        for key, value in settings.items():
            d[key] = dict(value) if key == "modalities" else value
        d.cohort_dir = str(cohort_dir)
        # Under OUT, not the run's records root: nothing is written to the run's folders.
        d.records_dir = str(Path(out_dir) / "records")
        d.split.test, d.split.validation, d.fold = 0.0, 0.0, -1
        # One split: the training cohort's split file and patient groups do not apply here.
        if "file" in d.split:
            d.split.file = ""
        if "group_column" in d:
            d.group_column = ""
    needed = list(dict.fromkeys([*c.data.channels, c.data.reference]))
    if missing := [m for m in needed if m not in c.data.modalities]:
        raise InputError(
            "",
            "",
            f"the model reads {needed}; the modality patterns {dict(c.data.modalities)} "
            f"lack {missing}",
        )
    return c


def check_cohort(config, group_by=()) -> dict[str, dict[str, str]]:
    """Checks labels.csv of the other cohort before any record is built.

    Returns:
      column -> {subject_id: value} for each `group_by` column.

    Raises:
      InputError: no cohort folder or labels.csv, a label that is not one of the run's classes
        (under on_error="raise"), a class with no subject, or a `group_by` column labels.csv
        lacks.
    """
    d = config.data
    folder = Path(d.cohort_dir)
    labels_csv = folder / "labels.csv"
    if not folder.is_dir():
        raise InputError("", folder, "cohort folder not found")
    if not labels_csv.is_file():
        raise InputError("", labels_csv, "labels.csv not found (columns subject_id,label)")
    rows = cohort.read_labels(labels_csv)
    columns = list(rows[0]) if rows else ["subject_id", "label"]
    for column in group_by:
        if column not in columns:
            raise InputError(
                "",
                labels_csv,
                f"no column {column!r} to group by (--group_by); its columns are "
                f"{', '.join(columns)}",
            )
    names = [str(c) for c in d.classes]
    counts = dict.fromkeys(names, 0)
    for r in rows:
        if r["label"] in counts:
            counts[r["label"]] += 1
        elif d.on_error == "raise":
            raise InputError(
                r["subject_id"],
                labels_csv,
                f"label {r['label']!r} is not one of the run's classes {names}",
            )
    if absent := [n for n, k in counts.items() if k == 0]:
        have = ", ".join(f"{k} {n}" for n, k in counts.items())
        raise InputError(
            "",
            labels_csv,
            f"no {' or '.join(absent)} subject ({have}): an external cohort needs every class "
            f"of {names}; a one-class site can be scored as a group of a larger cohort "
            "(--group_by)",
        )
    return {c: {r["subject_id"]: r[c] for r in rows} for c in group_by}


def predict_records(run: inference.TrainedRun, config, info) -> Predictions:
    """The run's class probabilities for every example of the external split, in record order.

    Rounded as predictions_<split>.csv stores them (`predictions.as_written`).
    """
    probs, labels = [], []
    size = int(run.config.eval.batch_size)
    for batch in pipeline.eval_iterator(config, info, _STORED_SPLIT, global_batch=size):
        keep = batch["valid"].astype(bool)
        probs.append(inference.probabilities(run, batch["image"])[keep])
        labels.append(batch["label"][keep])
    preds = Predictions(
        subject_id=info.subject_ids(_STORED_SPLIT),
        label=np.concatenate(labels).astype(np.int64),
        probs=np.concatenate(probs),
        class_names=tuple(info.class_names),
    )
    # As predictions_external.csv holds them: the tables are then what scoring that file gives
    # (a near-constant model's ranks can turn on the 7th decimal), as crossval's tables are.
    return predictions.as_written(preds)


# ----------------------------------------------------------------------------- scoring
def cutoff_note(scoring: ScoringPolicy, cutoffs: dict, source: str) -> str:
    """The table note that says which cut-offs were used, and that this cohort chose none."""
    image, subject = scoring.image_cutoff(cutoffs), scoring.subject_cutoff(cutoffs)
    where = (
        f"from {source} (config.eval says which are tuned there and which stay fixed)"
        if cutoffs
        else "the defaults (the run had no validation split)"
    )
    return (
        f"the run's cut-offs, image {image:.3f} and subject {subject:.3f}, {where}; not re-tuned "
        "on this external cohort"
    )


@dataclasses.dataclass
class PredictionSet:
    """One scored row: predictions on the external cohort, their cut-offs and notes."""

    preds: Predictions
    cutoffs: dict
    note: str  # which cut-offs, and that they were not re-tuned
    votes_note: str = ""  # a majority ensemble's: its "probabilities" are votes


def score(
    scoring: ScoringPolicy, preds: Predictions, cutoffs: dict, note: str, calibration_note=""
) -> dict:
    """`scoring.score` at fixed cut-offs, with `note` (and `calibration_note`) under both levels."""
    results = scoring.score(preds, cutoffs)
    for m in (results[level] for level in reporting.LEVELS):
        m["notes"] = [*m["notes"], note]
        if calibration_note:
            m["calibration_notes"] = [*m.get("calibration_notes", ()), calibration_note]
    return results


def subset(preds: Predictions, keep: list[int]) -> Predictions:
    """The examples `keep` (indices) of `preds`."""
    return Predictions(
        [preds.subject_id[i] for i in keep], preds.label[keep], preds.probs[keep], preds.class_names
    )


def group_results(scoring: ScoringPolicy, model_set: PredictionSet, column: str, values) -> dict:
    """One row per value of a labels.csv column, each scored on its subjects at the set's cut-offs.

    Args:
      scoring: the run's policy.
      model_set: the model's predictions, cut-offs and notes.
      column: the labels.csv column.
      values: subject_id -> the subject's value; a blank cell is the group "(blank)".

    A group of one class gets the metrics defined for it (sensitivity, say) and NaN for the
    others, with the notes that say why.
    """
    group_of = [values.get(s) or "(blank)" for s in model_set.preds.subject_id]
    rows = {}
    for g in sorted(set(group_of)):
        part = subset(model_set.preds, [i for i, v in enumerate(group_of) if v == g])
        s = model_set
        rows[f"{column}={g}"] = score(scoring, part, s.cutoffs, s.note, s.votes_note)
    return rows


def prediction_sets(model: Model, members: dict[str, Predictions]) -> dict[str, PredictionSet]:
    """The rows to score: the ensemble first (the model) for a cross-validation, then each run."""
    scoring, sets = model.scoring, {}
    if model.ensemble:
        fold_cutoffs = [r.cutoffs for r in model.runs.values()]
        ens = crossval.ensemble_predictions(
            list(members.values()), scoring.positive, model.ensemble, fold_cutoffs
        )
        sets[f"ensemble ({model.ensemble})"] = PredictionSet(
            predictions.as_written(ens),
            model.ensemble_cutoffs,
            cutoff_note(scoring, model.ensemble_cutoffs, model.cutoff_source),
            VOTES if model.ensemble == "majority" else "",
        )
    for name, r in model.runs.items():
        source = f"{name}'s validation split" if model.ensemble else model.cutoff_source
        sets[name] = PredictionSet(
            members[name], r.cutoffs, cutoff_note(scoring, r.cutoffs, source)
        )
    return sets


# ----------------------------------------------------------------------------- the study
def run(
    source,
    cohort_dir,
    out_dir,
    *,
    is_crossval: bool = False,
    group_by=(),
    ensemble: str = "mean",
    cohort_settings=None,
) -> dict:
    """Scores a finished run (or a cross-validation's folds and ensemble) on another cohort.

    Args:
      source: the run's WORKDIR, or the cross-validation's (W/fold_k inside).
      cohort_dir: the other cohort.
      out_dir: OUT (see the module docstring for what is written).
      is_crossval: SOURCE is a cross-validation.
      group_by: labels.csv columns to break the model's figures down by.
      ensemble: how the fold models combine, "mean" or "majority" (cross-validation only).
      cohort_settings: `COHORT_FIELDS` of the other cohort (e.g. {"modalities": {...}}).

    Returns:
      {row name: {"subject": metrics, "image": metrics}} of external.json.

    Raises:
      InputError: see `load_model`, `external_config` and `check_cohort`, and any bad subject
        of the other cohort (as a training run's build says it); nothing is written to OUT.
    """
    out_dir = Path(out_dir)
    model = load_model(source, is_crossval=is_crossval, ensemble=ensemble)
    config = external_config(model.config, cohort_dir, out_dir, cohort_settings)
    groups = check_cohort(config, tuple(group_by))
    if steps := tuple(config.data.preprocess.steps):
        logging.warning(
            "the run's cohort was made by ernjax.preprocess (steps %s): the external cohort "
            "must be too, with the same settings",
            list(steps),
        )
    # prepare's workdir is where the records' own split.csv goes: under OUT/records, beside the
    # records, as its "train" for every subject is the records' one split, not a training one.
    info = prepare.prepare(config, out_dir / "records")
    if tuple(info.class_names) != model.scoring.class_names:  # class index = the model's output
        raise InputError(
            "",
            Path(cohort_dir) / "labels.csv",
            f"the records hold the classes {list(info.class_names)}, the run's model "
            f"{list(model.scoring.class_names)}",
        )
    if info.skipped:
        print(reporting.format_skipped(info.skipped), flush=True)
    members = {name: predict_records(r, config, info) for name, r in model.runs.items()}
    sets = prediction_sets(model, members)
    scoring = model.scoring
    results = {
        (SPLIT if name == "run" else f"{name} {SPLIT}"): score(
            scoring, s.preds, s.cutoffs, s.note, s.votes_note
        )
        for name, s in sets.items()
    }
    main = sets[next(iter(sets))]  # the model: the run, or the ensemble
    by_group = {c: group_results(scoring, main, c, values) for c, values in groups.items()}
    _write(out_dir, scoring, results, sets, by_group)
    return results


def table_stem(column: str) -> str:
    """The file stem of a group table: "external_by_field_strength" for "field strength"."""
    return f"{SPLIT}_by_" + re.sub(r"[^A-Za-z0-9_-]+", "_", column).strip("_")


def _write(out_dir: Path, scoring, results, sets: dict[str, PredictionSet], by_group) -> None:
    """Every output, renamed into place together at the end, external.json last."""
    named = {n: s.preds for n, s in sets.items()}
    cutoffs = {n: s.cutoffs for n, s in sets.items()}
    with atomic.staged():
        predictions.write_csv(out_dir / f"predictions_{SPLIT}.csv", next(iter(named.values())))
        for name, preds in named.items():
            if name.startswith("fold "):
                k = name.split()[-1]
                predictions.write_csv(out_dir / f"predictions_{SPLIT}_fold_{k}.csv", preds)
        scoring.plot_rocs(named, out_dir / f"roc_{SPLIT}", cutoffs)
        probabilities = {n: p for n, p in named.items() if not sets[n].votes_note}
        _write_calibration(out_dir, scoring, results, probabilities, cutoffs)
        for column, rows in by_group.items():
            reporting.write_tables(out_dir, table_stem(column), rows)
            print(reporting.format_table(rows), flush=True)
        reporting.write_tables(out_dir, SPLIT, results)
    print(reporting.format_table(results), flush=True)
    print("\nCalibration:\n" + calibration.format_calibration_table(results), flush=True)
    print(f"external validation written to {out_dir}", flush=True)


def _write_calibration(out_dir: Path, scoring, results, named, cutoffs) -> None:
    """calibration_external.md and the subject-wise reliability and decision-curve PNGs.

    The table: Brier, calibration intercept and slope of every row (`scoring.score` computed
    them), then the net benefit of each set of `named` (a majority ensemble is left out: its
    votes are no probabilities); probabilities as scored (recalibrated when the run's
    `config.eval.recalibrate` fitted one on its validation split).
    """
    table = calibration.format_calibration_table(results, fmt="markdown")
    curves = {n: scoring.calibration_data(p, "subject", cutoffs[n]) for n, p in named.items()}
    decision = calibration.format_decision_table(curves, fmt="markdown")
    atomic.write_text(
        out_dir / f"calibration_{SPLIT}.md",
        f"# Calibration, external cohort\n\n{table}\n"
        f"## Decision curve, external cohort, subject-wise\n\n{decision}",
    )
    scoring.plot_calibration(named, out_dir / f"calibration_{SPLIT}", cutoffs, title="External")
