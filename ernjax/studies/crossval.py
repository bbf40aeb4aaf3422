"""k-fold cross-validation by patient, with pooled metrics and the fold ensemble.

The records store a fixed test split and k stratified, subject-grouped folds of the other
subjects (`config.data.split`). Fold k trains on the other folds and validates on fold k, in
W/fold_k (each fold resumes on its own; all share W/records and, for the synthetic cohort,
W/synthetic_cohort: `runs.shared_data`). `config.model.name = "radiomics"` cross-validates the
radiomics baseline instead, on features computed once for all folds (`runs.Runner`). Then:
  - per fold: validation metrics, and test metrics at cut-offs chosen on that fold's validation;
  - pooled out-of-fold: every non-test subject predicted once, by the model that did not train
    on it;
  - ensemble on the held-out test split (Shin 2021's 5-fold recipe): the mean of the fold
    models' probabilities ("mean"), or the fraction of fold models calling each example positive
    ("majority"), at cut-offs chosen on the pooled out-of-fold predictions.
W/crossval.json (flat numbers), crossval.md / crossval.csv (the table) and the test ROC curves
roc_test_image.png / roc_test_subject.png are written. A cohort too small for a held-out test
split (`config.data.split.test = 0`) gets the per-fold and pooled out-of-fold figures and
roc_out_of_fold_*.png; with `config.train.select_checkpoint = "last"` no fold's scored
predictions took part in choosing its model, so the pooled figure is unbiased.
"""

import dataclasses
from pathlib import Path

import numpy as np
from absl import logging

from ernjax import atomic
from ernjax.data import split_file
from ernjax.errors import InputError
from ernjax.evaluate import calibration, predictions, reporting, stats
from ernjax.evaluate.predictions import Predictions
from ernjax.evaluate.scoring import ScoringPolicy
from ernjax.progress import Meter
from ernjax.studies import compare, repeat, runs


def fold_config(config, workdir: Path, fold: int):
    """The config of one fold: `data.fold = fold`, the study's data (`runs.shared_data`)."""
    c = runs.shared_data(config, workdir)
    with c.unlocked():
        c.data.fold = fold
    return c


def run(config, workdir, folds=None, ensemble: str = "mean") -> dict:
    """Trains (or resumes) every fold, then scores folds, pooled and ensemble predictions.

    Args:
      config: the full config; `config.data.split.folds` folds.
      workdir: the cross-validation directory.
      folds: fold indices to train ([] or None: all); the summary needs every fold.
      ensemble: "mean" or "majority".

    Returns:
      Nested results {"fold_k": {"validation", "test"}, "pooled_validation", "ensemble_test"}.
    """
    workdir = Path(workdir)
    k = int(config.data.split.folds)
    if k < 2:
        raise ValueError(f"config.data.split.folds={k}: cross-validation needs at least 2 folds")
    todo = list(folds) if folds else list(range(k))
    if bad := [f for f in todo if not 0 <= f < k]:
        raise ValueError(f"fold {bad[0]} is not in 0..{k - 1}")
    split_csv = split_file.output_path(workdir, config.data.split.get("file", ""))
    runner = runs.Runner()  # the radiomics folds share one feature table
    # The ETA counts every finished fold, the first (which also builds the records) too: there
    # are too few folds to leave one out.
    meter = Meter("cross-validation", len(todo), unit="fold", every=1, tty=False, warmup=False)
    with meter:
        for i, fold in enumerate(todo, start=1):
            out = workdir / f"fold_{fold}"
            logging.info("cross-validation: fold %d of %d (%s)", i, len(todo), out)
            runner(fold_config(config, workdir, fold), out)
            meter.update()
    # The study's split (and folds) beside its results: every fold's run wrote the same one.
    if (written := workdir / f"fold_{todo[-1]}" / split_file.SPLIT_CSV).is_file():
        atomic.write_text(split_csv, written.read_text(encoding="utf-8"))
    missing = [f for f in range(k) if not (workdir / f"fold_{f}" / "results.json").exists()]
    if missing:
        logging.info("folds %s not trained yet: no pooled summary", missing)
        return {}
    return summarize(config, workdir, k, ensemble)


def run_repeated(
    config, workdir, seeds=(), split_seeds=(), folds=None, ensemble: str = "mean"
) -> dict:
    """The cross-validation repeated over training seeds and/or split seeds, and its spread.

    Each repeat is a whole `run` in its own folder of WORKDIR ("seed_1", "split_2",
    "split_2_seed_1"), on the study's shared cohort and records. Training seeds
    (`config.seed`) keep the folds; split seeds (`config.data.split.seed`) deal them anew
    (repeated cross-validation). Then WORKDIR/crossval_seeds.md/.csv/.json (`repeat.study_spread`).

    Args:
      config: the full config.
      workdir: the study directory.
      seeds: training seeds (empty: `config.seed` only).
      split_seeds: split seeds (empty: `config.data.split.seed` only).
      folds: the folds to train now, as in `run`, in every repeat.
      ensemble: how fold models are combined, as in `run`.

    Returns:
      The flat numbers of crossval_seeds.json, or {} while a repeat has folds left to train.
    """
    workdir = Path(workdir)
    shared = runs.shared_data(config, workdir)
    split_seeds = list(split_seeds) or [int(config.data.split.seed)]
    seeds = list(seeds) or [int(config.seed)]
    per_repeat = {}
    for q in split_seeds:
        for s in seeds:
            name = " ".join(
                ([f"split {q}"] if len(split_seeds) > 1 else [])
                + ([f"seed {s}"] if len(seeds) > 1 else [])
            )
            c = repeat.seed_config(shared, s)
            with c.unlocked():
                c.data.split.seed = int(q)
            logging.info("cross-validation repeat: %s", name)
            per_repeat[name] = run(c, workdir / name.replace(" ", "_"), folds, ensemble)
    if not all(per_repeat.values()):
        return {}
    notes = []
    if len(seeds) > 1:
        split_seed = split_seeds[0] if len(split_seeds) == 1 else "the repeat's split seed"
        notes.append(repeat.SEEDS_NOTE.format(split_seed=split_seed, n=len(seeds)))
    if len(split_seeds) > 1:
        test = (
            ", test split included: each repeat's test rows are other patients"
            if config.data.split.test > 0
            else ""
        )
        notes.append(repeat.SPLIT_SEEDS_NOTE.format(test=test))
    title = f"{config.model.name} cross-validation over {len(per_repeat)} repeats"
    # The pooled and ensemble rows are the study's figures; a single fold's spread is noise.
    rows = [r for r in next(iter(per_repeat.values())) if not r.startswith("fold ")]
    note = "\n\n".join(notes)
    return repeat.study_spread(workdir, "crossval", title, per_repeat, note, rows)


def summarize(config, workdir: Path, k: int, ensemble: str = "mean") -> dict:
    """Scores the k fold runs under WORKDIR (see the module docstring) and writes the reports.

    Without a test split (`config.data.split.test = 0`, for cohorts too small to hold one out)
    the pooled out-of-fold metrics are the result, and there is no ensemble.
    """
    fold_dirs = [workdir / f"fold_{f}" for f in range(k)]
    val = fold_validation_predictions(workdir, k)
    has_test = all((d / "predictions_test.csv").exists() for d in fold_dirs)
    test = [predictions.read_csv(d / "predictions_test.csv") for d in fold_dirs] if has_test else []
    scoring = ScoringPolicy.from_config(config.eval, val[0].class_names)
    results = {}
    fold_cutoffs = []
    for f in range(k):
        fold_cutoffs.append(scoring.cutoffs(val[f]))
        results[f"fold {f} validation"] = scoring.score(val[f])
        if has_test:
            results[f"fold {f} test"] = scoring.score(test[f], fold_cutoffs[f])
    pooled = concat(val)
    results["pooled out-of-fold"] = scoring.score(pooled)
    if has_test:
        ens = ensemble_predictions(test, scoring.positive, ensemble, fold_cutoffs)
        cutoffs = ensemble_cutoffs(scoring, val, ensemble, fold_cutoffs)
        results[f"ensemble ({ensemble}) test"] = scoring.score(ens, cutoffs)
        curves = {f"fold {f}": p for f, p in enumerate(test)} | {"ensemble": ens}
        named_cutoffs = {f"fold {f}": c for f, c in enumerate(fold_cutoffs)}
        _write(workdir, scoring, results, curves, "roc_test", named_cutoffs | {"ensemble": cutoffs})
    else:
        curves = {f"fold {f}": p for f, p in enumerate(val)} | {"pooled": pooled}
        _write(workdir, scoring, results, curves, "roc_out_of_fold")
    return results


def ensemble_cutoffs(
    scoring: ScoringPolicy, val: list[Predictions], method: str, fold_cutoffs: list[dict]
) -> dict:
    """The fold ensemble's cut-offs, chosen on the pooled out-of-fold predictions.

    No model of the ensemble saw all of them in training, so they stand in for the ensemble's
    validation split. "mean" averages probabilities, so its cut-offs are those of the pooled
    probabilities. "majority" calls an example positive when most models do, so its image
    cut-off is 0.5 on the vote fraction; the subject cut-off of "predictive_index" (the fraction
    of a subject's slices called positive) is tuned on the pooled slices called positive by
    their own fold's model at that fold's cut-off, as one model's vote.
    """
    pooled = concat(val)
    if method == "mean":
        return scoring.cutoffs(pooled)
    votes = concat(
        [
            ensemble_predictions([v], scoring.positive, "majority", [c])
            for v, c in zip(val, fold_cutoffs, strict=True)
        ]
    )
    # Vote fractions are no probabilities: nothing to recalibrate (each vote already was).
    return dataclasses.replace(scoring, tune_threshold=False, recalibrate="none").cutoffs(votes)


def delong_against(config, workdir, others, k: int) -> str:
    """DeLong tests of each other cross-validation's pooled out-of-fold AUC against WORKDIR's.

    The studies must have predicted the same patients in the same folds (same cohort, split
    and records layout; the models may differ): each pooled set is the folds' validation
    predictions in fold order. Written to WORKDIR/delong_out_of_fold.md and returned.

    Raises:
      ValueError: a study predicted other examples (`compare.delong_table`).
    """
    workdir = Path(workdir)
    dirs = {workdir.name: workdir} | {Path(o).name: Path(o) for o in others}
    pooled = {}
    for name, d in dirs.items():
        folds = [d / f"fold_{f}" / "predictions_validation.csv" for f in range(k)]
        if missing := [str(f) for f in folds if not f.is_file()]:
            raise InputError("", missing[0], f"{name} has not finished its {k} folds")
        pooled[name] = concat(fold_validation_predictions(d, k))
    scoring = ScoringPolicy.from_config(config.eval, pooled[workdir.name].class_names)
    table = compare.delong_table(pooled, list(dirs), scoring, split="pooled out-of-fold")
    atomic.write_text(workdir / "delong_out_of_fold.md", table)
    print(table, flush=True)
    return table


def fold_validation_predictions(workdir, k: int) -> list[Predictions]:
    """Each fold's out-of-fold (validation) predictions, in fold order."""
    return [
        predictions.read_csv(Path(workdir) / f"fold_{f}" / "predictions_validation.csv")
        for f in range(k)
    ]


def concat(parts: list[Predictions]) -> Predictions:
    """The examples of several prediction sets, one after the other."""
    slices = [p.slice for p in parts]
    return Predictions(
        subject_id=[s for p in parts for s in p.subject_id],
        label=np.concatenate([p.label for p in parts]),
        probs=np.concatenate([p.probs for p in parts]),
        class_names=parts[0].class_names,
        slice=None if any(s is None for s in slices) else np.concatenate(slices),
    )


def ensemble_predictions(
    members: list[Predictions], positive: int, method: str = "mean", cutoffs=None
) -> Predictions:
    """Combines the predictions of several models on the same examples.

    Args:
      members: predictions of each model, the same examples in the same order.
      positive: index of the positive class.
      method: "mean": mean class probabilities; "majority": each model calls an example
        positive at its own image cut-off (`cutoffs[i]["threshold"]`, default
        `stats.DEFAULT_THRESHOLD`), on its probabilities recalibrated as that cut-off was
        chosen (`cutoffs[i]["recalibration"]`, if any), and the positive "probability" is the
        fraction of models that did (a tie counts as positive at the 0.5 cut-off).
      cutoffs: per-member cut-offs for "majority".

    Raises:
      ValueError: members disagree on examples or labels, or an unknown method.
    """
    first = members[0]
    for i, m in enumerate(members[1:], 1):
        if m.subject_id != first.subject_id or not np.array_equal(m.label, first.label):
            raise ValueError(f"ensemble member {i} predicted different examples than member 0")
    if method == "mean":
        probs = np.mean([m.probs for m in members], axis=0)
    elif method == "majority":
        if first.probs.shape[1] != 2:
            raise ValueError("majority voting is defined here for two classes")
        cutoffs = cutoffs or [{}] * len(members)
        votes = [
            calibration.recalibrate_probs(c.get("recalibration"), m.probs, positive)[:, positive]
            >= c.get("threshold", stats.DEFAULT_THRESHOLD)
            for m, c in zip(members, cutoffs, strict=True)
        ]
        frac = np.mean(votes, axis=0)
        probs = np.zeros_like(first.probs)
        probs[:, positive], probs[:, 1 - positive] = frac, 1.0 - frac
    else:
        raise ValueError(f"ensemble method {method!r}: expected 'mean' or 'majority'")
    return Predictions(
        list(first.subject_id), first.label.copy(), probs, first.class_names, first.slice
    )


def _write(
    workdir: Path, scoring: ScoringPolicy, results, curves, roc_name: str, cutoffs=None
) -> None:
    """The ROC figures and crossval.*, renamed into place together (crossval.json last)."""
    with atomic.staged():
        scoring.plot_rocs(curves, workdir / roc_name, cutoffs)
        reporting.write_tables(workdir, "crossval", results)
    print(reporting.format_table(results), flush=True)
