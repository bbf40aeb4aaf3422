"""The radiomics baseline: IBSI features in the lesion mask, an L2 logistic regression on them.

    python -m ernjax.baselines.radiomics --config=configs/ern.py --workdir=workdir/radiomics

It takes the networks' config and builds (or finds) their records, so it sees the same patients
in the same splits and folds (`config.data.split`, `config.data.fold`), and it writes what a
network's run writes: WORKDIR/predictions_validation.csv and predictions_test.csv (rows in the
records' order, so `compare` can pair them case by case with a network's and run DeLong tests),
results.json with the same metrics, cut-offs and CIs, and radiomics_model.json (the chosen
penalty, every coefficient and each feature's training mean and standard deviation).

Features (`ernjax.baselines.features`, default discretisation): shape, intensity, histogram and
GLCM features inside the lesion mask, for every modality of `config.data.modalities`, on the
sampling grid of `config.data` (RAS+, the reference modality's grid at `config.data.spacing`),
never resized to `config.data.shape`, so sizes are in mm. volumes3d: one row per subject (3D
features). slices2d: one row per lesion slice the records hold (2D features of that slice), plus
the subject's 3D shape features ("subject.shape.*"). The model uses the shape features and the
features of the modalities in `config.data.channels`, the inputs a network of the same config
gets; `compare` over channel sets then compares like with like.

Model (`fit`): features standardized on the training rows, then scikit-learn's
LogisticRegressionCV with an L2 penalty whose strength C is chosen by an inner cross-validation
on the training subjects alone, in folds grouped by subject and stratified by class.
"""

import concurrent.futures as cf
import dataclasses
import json
import logging
import multiprocessing
import os
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import threadpoolctl
from absl import app, flags
from ml_collections import config_flags
from sklearn.linear_model import LogisticRegression, LogisticRegressionCV
from sklearn.preprocessing import StandardScaler

from ernjax import atomic, cli
from ernjax.baselines import features
from ernjax.data import layouts, samples, splits
from ernjax.data import prepare as prepare_lib
from ernjax.data import records as records_lib
from ernjax.data.spec import SampleSpec
from ernjax.errors import InputError
from ernjax.evaluate import predictions, reporting
from ernjax.evaluate.predictions import Predictions
from ernjax.evaluate.scoring import ScoringPolicy

# C (inverse penalty) grid of the inner cross-validation, half-decade steps: with standardized
# features, 1e-4 all but zeroes every coefficient, 1e2 hardly penalizes.
CS = tuple(np.logspace(-4, 2, 13))
MAX_INNER_FOLDS = 5
# C without an inner cross-validation (a class with 1 training subject, as in the folds of a
# tiny cohort): the strong penalty the inner CV chose on the embedded cohort (ern.py 0.003,
# resnet3d.py 0.01), where a few hundred features face a handful of subjects.
FALLBACK_C = 0.01
# Below 3 subjects of a class in an inner validation fold, its AUC takes a handful of values,
# ties between Cs are the rule, and the grid's order picks C rather than the data.
MIN_SUBJECTS_FOR_AUC = 3
MODEL_NAME = "radiomics"  # its name among the models of `compare` and `crossval`
SUBJECT_SHAPE = "subject.shape."  # prefix of a slice row's 3D shape features (slices2d)
# What a pool of spawned feature workers costs to start: each imports this module (JAX, TFDS,
# scikit-learn; 2-6 s). On a busy 2-core machine, 60 synthetic subjects took 13 s here and 28 s
# in two workers (0.2-0.6 s a subject); a 1 mm BraTS subject takes seconds: there a pool pays.
WORKER_START_SECONDS = 10.0


@dataclasses.dataclass(frozen=True)
class FeatureTable:
    """Features of every record of a cohort's records: one row per subject or lesion slice.

    Rows are in the records' storage order (stored split, then record index), so `rows` gives
    them in the order `DataInfo.subject_ids` lists a split's examples, the order of a network's
    predictions.

    Attributes:
      names: F feature names ("shape.volume_mm3", "t1c.glcm.contrast", ...).
      values: float64 [N, F].
      subject_id: [N] subject of each row.
      label: int64 [N] class index.
      slice: int64 [N] the records' slice number (D index) for slices2d, -1 for volumes3d.
      index: the records index (splits, assignment, class names, kind), for the fold selection.
      skipped: the subjects the records left out (`DataInfo.skipped`), for results.json.
    """

    names: tuple[str, ...]
    values: np.ndarray
    subject_id: tuple[str, ...]
    label: np.ndarray
    slice: np.ndarray
    index: dict
    skipped: tuple[dict, ...] = ()

    @property
    def class_names(self) -> tuple[str, ...]:
        """The classes, in class-index order."""
        return tuple(self.index["class_names"])

    def rows(self, split: str, fold: int = -1) -> np.ndarray:
        """Row numbers of `split` ("train", "validation", "test") under `fold`, in records order.

        `fold` as `config.data.fold`: -1 keeps the splits as built, k >= 0 validates on fold k.
        """
        stored = self.index["splits"]
        offset, start = {}, 0
        for s in prepare_lib.SPLITS:
            offset[s] = start
            start += len(stored.get(s, {}).get("label", []))
        parts = prepare_lib.select_parts(self.index, fold)[split]
        return np.array([offset[s] + i for s, i in parts], np.int64)


def cohort_features(
    config, workdir, settings: features.FeatureSettings | None = None
) -> FeatureTable:
    """Builds (or finds) the records of `config`, then the features of every record's subject.

    Features are computed on the images as `config.data.normalize` normalizes them for the
    networks (per subject, inside the brain): MRI intensities are in arbitrary units that differ
    between scanners, and a z-score puts first-order features (mean, percentiles) of different
    subjects on one scale; the same inputs also keep the comparison with the networks fair.
    Texture features discretise each mask into a fixed number of bins and do not depend on it.

    Subjects load in `config.data.build_workers` processes (0: all cores), as the records build.

    Args:
      config: the full config, as for a network (reads `config.data`).
      workdir: the run's working directory (records under WORKDIR/records unless configured;
        the synthetic cohort under WORKDIR/synthetic_cohort when `config.data.cohort_dir` is "").
      settings: the discretisation of the histogram and GLCM features (None: the defaults).

    Returns:
      The FeatureTable, one row per record.

    Raises:
      InputError: no lesion mask configured, a subject whose mask is empty, or (slices2d) a
        lesion slice of the records that the mask does not touch; also the records' bad input.
    """
    data = config.data
    if not layouts.mask(data):
        field, example = layouts.mask_field(data), "'*_mask.nii.gz'"
        if layouts.is_bids(data):
            example = "label-lesion_mask (the masks' BIDS name)"
        raise InputError(
            "",
            "",
            "the radiomics baseline computes its features inside the lesion mask, and "
            f"{field} is empty: set it to the masks' name, e.g. --{field[7:]}={example}",
        )
    info = prepare_lib.prepare(config, workdir)
    recs = records_lib.open_records(info.records_dir)
    subjects = _record_subjects(config, workdir, recs.index)
    # every modality, each normalized as a channel of the records would be
    spec = SampleSpec.from_config(data)
    spec = dataclasses.replace(spec, channels=tuple(m for m, _ in spec.modalities))
    jobs = [(s, spec, settings or features.FeatureSettings()) for s in subjects]
    start = time.perf_counter()
    workers = int(data.build_workers or os.cpu_count() or 1)
    rows = dict(
        zip((s.subject_id for s in subjects), _map(subject_features, jobs, workers), strict=True)
    )
    logging.info(
        "radiomics: features of %d subjects in %.1f s", len(subjects), time.perf_counter() - start
    )
    return _table(rows, _record_keys(recs), recs.index, info.skipped)


def _record_subjects(config, workdir, index: dict) -> list:
    """The cohort's `Subject`s that the records hold (under on_error="skip", not the skipped)."""
    spec = SampleSpec.from_config(config.data)
    found = layouts.find(prepare_lib.cohort_dir(config, workdir), spec)  # the builder's call
    return [s for s in found.subjects if s.subject_id in index["assignment"]]


def _map(fn, jobs, workers: int) -> list:
    """[fn(*job) for job in jobs]: two here, the rest in spawned processes if that pays.

    The second job's time estimates the others' (the first pays one-off warm-ups); a pool is
    used only when it would save more than `WORKER_START_SECONDS`.
    """
    done = [fn(*job) for job in jobs[:1]]
    start = time.perf_counter()
    done += [fn(*job) for job in jobs[1:2]]
    rest, workers = jobs[2:], min(workers, len(jobs) - 2)
    saved = len(rest) * (time.perf_counter() - start) * (1 - 1 / max(workers, 1))
    if workers <= 1 or saved < WORKER_START_SECONDS:
        return done + [fn(*job) for job in rest]
    # spawn, not fork: the parent runs JAX threads (see ernjax.data.loading.pool)
    context = multiprocessing.get_context("spawn")
    with cf.ProcessPoolExecutor(workers, mp_context=context) as pool:
        return done + list(pool.map(fn, *zip(*rest, strict=True)))


def subject_features(
    subject, spec, settings: features.FeatureSettings | None = None
) -> list[tuple[int, dict[str, float]]]:
    """The feature rows of one subject: (slice, features) pairs.

    Args:
      subject: a `cohort.Subject` with a lesion mask.
      spec: the `SampleSpec` (or `config.data`); features for each of its `channels`.
      settings: the histogram and GLCM discretisation (None: the defaults).

    Returns:
      volumes3d: one row, slice -1, with `features.extract(..., dims=3)`. slices2d: a row per
      lesion slice (the records' slices, in increasing order) with the slice's 2D features and
      the subject's 3D shape features under "subject.shape.".

    Raises:
      InputError: no mask, an empty mask, a lesion slice without mask voxels (names subject and
        mask file), or the image problems of `samples.load_on_grid`.
    """
    sid = subject.subject_id
    if subject.mask is None:
        raise InputError(sid, "", "no lesion mask: the radiomics baseline needs one per subject")
    spec = SampleSpec.from_config(spec)
    vol = samples.load_on_grid(subject, spec)
    if vol.mask is None or not vol.mask.any():
        raise InputError(
            sid, subject.mask, "the lesion mask is empty: radiomics features need lesion voxels"
        )
    fs = settings or features.FeatureSettings()
    spacing = np.linalg.norm(vol.affine[:3, :3], axis=0)  # mm along d, h, w
    images = {m: vol.image[..., c] for c, m in enumerate(spec.channels)}
    if spec.kind == "volumes3d":
        return [(-1, features.extract(images, vol.mask, spacing, fs, dims=3))]
    whole = {SUBJECT_SHAPE + k: v for k, v in features.morphology(vol.mask, spacing).items()}
    rows = []
    for k in vol.lesion_slices:
        if not vol.mask[k].any():
            raise InputError(
                sid,
                subject.mask,
                f"lesion slice {k} (of the slice list) holds no lesion-mask voxel: per-slice "
                "radiomics features need the mask on every lesion slice",
            )
        two_d = {m: a[k] for m, a in images.items()}
        rows.append((k, features.extract(two_d, vol.mask[k], spacing[1:], fs, dims=2) | whole))
    return rows


def _record_keys(recs: records_lib.Records) -> list[tuple[str, int]]:
    """(subject, slice) of every record in storage order; slice -1 for volumes3d."""
    keys = []
    for split in prepare_lib.SPLITS:
        ids = recs.index["splits"].get(split, {}).get("subject_id", [])
        if recs.index["kind"] != "slices2d":
            keys += [(s, -1) for s in ids]
            continue
        if ids:  # the index has no slice numbers: read them from the records
            src = recs.source(split)
            keys += [(s, int(src[i]["slice"])) for i, s in enumerate(ids)]
    return keys


def _table(rows: dict, keys: list[tuple[str, int]], index: dict, skipped) -> FeatureTable:
    """The FeatureTable of `keys` (records order) from each subject's (slice, features) rows."""
    by_key = {(sid, k): f for sid, pairs in rows.items() for k, f in pairs}
    missing = [key for key in keys if key not in by_key]
    if missing:
        raise RuntimeError(f"records hold (subject, slice) {missing[:5]} without features")
    names = tuple(by_key[keys[0]])
    label_of = {
        sid: lab
        for split in index["splits"].values()
        for sid, lab in zip(split["subject_id"], split["label"], strict=True)
    }
    return FeatureTable(
        names=names,
        values=np.array([[by_key[key][n] for n in names] for key in keys], np.float64),
        subject_id=tuple(sid for sid, _ in keys),
        label=np.array([label_of[sid] for sid, _ in keys], np.int64),
        slice=np.array([k for _, k in keys], np.int64),
        index=index,
        skipped=tuple(skipped),
    )


def feature_columns(names: Sequence[str], channels: Sequence[str]) -> list[str]:
    """The features a model on `channels` uses: every shape feature and those of `channels`."""
    keep = tuple(f"{m}." for m in channels)
    return [n for n in names if n.startswith(("shape.", SUBJECT_SHAPE, *keep))]


@dataclasses.dataclass
class RadiomicsModel:
    """A fitted baseline: standardization and the L2 logistic regression.

    Attributes:
      names: the features it uses, in column order.
      class_names: the classes, in class-index order.
      scaler: StandardScaler fitted on the training rows.
      classifier: the fitted LogisticRegressionCV, or LogisticRegression at `FALLBACK_C` when
        the training split is too small for an inner cross-validation.
      C: the inverse penalty it was fitted with.
      scoring: what chose C: "roc_auc", "neg_log_loss", or "none" (`FALLBACK_C`).
      inner_folds: subject -> inner fold ({} without an inner cross-validation).
      inner_scores: the inner cross-validation's mean score of each C of `CS` (() without one).
    """

    names: tuple[str, ...]
    class_names: tuple[str, ...]
    scaler: StandardScaler
    classifier: LogisticRegression
    C: float
    scoring: str
    inner_folds: dict[str, int]
    inner_scores: tuple[float, ...] = ()

    def predict_proba(self, values: np.ndarray) -> np.ndarray:
        """[N, K] class probabilities of [N, len(names)] feature values."""
        return self.classifier.predict_proba(self.scaler.transform(values))

    def summary(self) -> dict:
        """What radiomics_model.json holds: C, the inner CV scores, and every coefficient.

        Coefficients are per standardized feature (one training standard deviation), so their
        sizes compare; for two classes a positive one raises the probability of the second.
        """
        coef = self.classifier.coef_  # [1, F] for two classes, [K, F] otherwise
        order = np.argsort(-np.abs(coef).max(axis=0), kind="stable")
        return {
            "model": "L2 logistic regression on standardized radiomics features",
            "class_names": list(self.class_names),
            "C": self.C,
            "Cs": list(CS) if self.inner_scores else [self.C],
            "inner_scoring": self.scoring,
            "inner_cv_mean_score": list(self.inner_scores),
            "inner_folds": self.inner_folds,
            "intercept": [float(v) for v in self.classifier.intercept_],
            "coefficient_of": list(
                self.class_names[1:] if coef.shape[0] == 1 else self.class_names
            ),
            "features": [
                {
                    "name": self.names[j],
                    "coefficient": [float(v) for v in coef[:, j]],
                    "mean": float(self.scaler.mean_[j]),
                    "std": float(self.scaler.scale_[j]),
                }
                for j in order
            ],
        }


def inner_folds(subject_ids: Sequence[str], labels: Sequence[int], seed: int) -> dict[str, int]:
    """Subject -> inner fold: stratified by class, grouped by subject, dealt as the outer folds.

    Uses `splits.assign_splits` (no test or validation share): each class's subjects shuffled
    with `seed` and dealt round-robin into min(`MAX_INNER_FOLDS`, smallest class) folds, so
    every fold holds a subject of every class.

    Returns:
      The folds, or {} when a class has fewer than 2 subjects (no inner cross-validation).
    """
    by_subject = dict(zip(subject_ids, labels, strict=True))
    counts = np.bincount(list(by_subject.values()))
    if counts.min() < 2:
        return {}
    k = min(MAX_INNER_FOLDS, int(counts.min()))
    assigned = splits.assign_splits(
        list(by_subject), list(by_subject.values()), test=0, validation=0, folds=k, seed=seed
    )
    return {s: a["fold"] for s, a in assigned.items()}


def fit(
    table: FeatureTable,
    train_rows,
    seed: int,
    *,
    columns: Sequence[str] | None = None,
    class_weight: dict | str = "balanced",
) -> RadiomicsModel:
    """Fits the baseline on `train_rows` alone (standardization, C, coefficients).

    L2, not L1 or elastic net: a few hundred strongly correlated features (one tissue's mean,
    median and percentiles; a GLCM family) on tens of subjects, where an L1 penalty keeps one of
    a correlated group and which one changes from fold to fold; L2 spreads the weight over the
    group, its optimum is unique, and lbfgs finds it deterministically in milliseconds.

    C is chosen by LogisticRegressionCV over `CS` in inner folds of the training subjects
    (`inner_folds`: no subject's slices in two folds). Scoring: ROC AUC, the project's metric,
    when the smallest inner validation fold holds at least `MIN_SUBJECTS_FOR_AUC` subjects of
    each class; below that, log loss, which is continuous where so few subjects' AUC would tie
    across the grid. Ties go to the smallest C (the strongest penalty). With a class of fewer
    than 2 training subjects there is no inner cross-validation: C is `FALLBACK_C`.

    The scaler is fitted on all training rows, inner validation folds included: only a mean
    and a standard deviation per feature, against a pipeline refitted in every inner fold.

    Args:
      table: the cohort's features.
      train_rows: row numbers of the training examples (`table.rows("train", fold)`).
      seed: the inner folds' shuffling seed; the fit is deterministic for a seed.
      columns: feature names to use (None: all).
      class_weight: {class index: weight}, or "balanced" (n / (K n_k) over the training rows,
        the networks' default class weights, `config.train.class_weights = ()`).

    Returns:
      The fitted RadiomicsModel.

    Raises:
      ValueError: a class has no training example.
    """
    train_rows = np.asarray(train_rows, np.int64)
    names = tuple(columns) if columns is not None else table.names
    x = table.values[np.ix_(train_rows, [table.names.index(n) for n in names])]
    y = table.label[train_rows]
    if absent := [c for k, c in enumerate(table.class_names) if not np.any(y == k)]:
        raise ValueError(f"the training split holds no {' or '.join(absent)} example")
    sids = [table.subject_id[r] for r in train_rows]
    scaler = StandardScaler().fit(x)
    folds = inner_folds(sids, y.tolist(), seed)
    # One BLAS thread: on matrices this small, threads only wait on each other (13 C values x 5
    # folds on 542 x 222: 10.4 s with OpenBLAS's 2 threads on a busy 2-core machine, 1.3 s).
    with threadpoolctl.threadpool_limits(1, user_api="blas"):
        return RadiomicsModel(
            names,
            table.class_names,
            scaler,
            *_classifier(scaler.transform(x), y, sids, folds, class_weight),
        )


def _classifier(x, y, sids, folds: dict, class_weight) -> tuple:
    """The fitted classifier, C, scoring, folds and inner scores, as `RadiomicsModel` holds them."""
    common = dict(class_weight=class_weight, solver="lbfgs", max_iter=10_000)
    if not folds:
        logging.warning("radiomics: too few training subjects for an inner CV, C = %g", FALLBACK_C)
        clf = LogisticRegression(C=FALLBACK_C, l1_ratio=0.0, **common).fit(x, y)
        return clf, FALLBACK_C, "none", {}
    cv, scoring = _inner_cv(sids, y, folds, len(np.unique(y)))
    clf = LogisticRegressionCV(
        Cs=list(CS), l1_ratios=(0.0,), cv=cv, scoring=scoring, use_legacy_attributes=False, **common
    ).fit(x, y)
    scores = tuple(float(v) for v in clf.scores_[:, 0, :].mean(axis=0))
    return clf, float(clf.C_), scoring, folds, scores


def _inner_cv(sids, y: np.ndarray, folds: dict[str, int], n_classes: int) -> tuple[list, str]:
    """The inner (train rows, validation rows) pairs and the scoring `fit` chooses C by."""
    fold_of_row = np.array([folds[s] for s in sids])
    cv = [
        (np.flatnonzero(fold_of_row != f), np.flatnonzero(fold_of_row == f))
        for f in range(max(folds.values()) + 1)
    ]
    per_class = np.bincount(list(dict(zip(sids, y.tolist(), strict=True)).values()))
    if per_class.min() // len(cv) < MIN_SUBJECTS_FOR_AUC:
        return cv, "neg_log_loss"
    return cv, "roc_auc" if n_classes == 2 else "roc_auc_ovr"


def predict(model: RadiomicsModel, table: FeatureTable, rows) -> Predictions:
    """The model's Predictions of `rows`, in the networks' format (probabilities of every class)."""
    rows = np.asarray(rows, np.int64)
    cols = [table.names.index(n) for n in model.names]
    probs = np.zeros((len(rows), len(model.class_names)))
    probs[:, model.classifier.classes_] = model.predict_proba(table.values[np.ix_(rows, cols)])
    return Predictions(
        subject_id=[table.subject_id[r] for r in rows],
        label=table.label[rows],
        probs=probs,
        class_names=model.class_names,
    )


def fit_config(table: FeatureTable, config) -> RadiomicsModel:
    """`fit` as a network's run of `config` would train: same split, inputs, seed and weights.

    The train split of `config.data.fold`, the shape features and those of the modalities in
    `config.data.channels`, `config.seed`, and `config.train.class_weights` ("balanced" if ()).
    """
    weights = tuple(config.train.class_weights)
    return fit(
        table,
        table.rows("train", int(config.data.fold)),
        int(config.seed),
        columns=feature_columns(table.names, config.data.channels),
        class_weight=dict(enumerate(weights)) if weights else "balanced",
    )


def evaluate(model: RadiomicsModel, table: FeatureTable, config) -> tuple[dict, dict]:
    """Predicts validation and test (those with examples) and scores them as a network's run.

    Cut-offs come from the validation predictions as `config.eval` says (`ScoringPolicy`),
    never from test.

    Returns:
      ({split: Predictions}, {split: `ScoringPolicy.score` output}).
    """
    policy = ScoringPolicy.from_config(config.eval, table.class_names)
    fold = int(config.data.fold)
    preds = {
        s: predict(model, table, r) for s in ("validation", "test") if len(r := table.rows(s, fold))
    }
    cutoffs = policy.cutoffs(preds.get("validation"))
    return preds, {s: policy.score(p, cutoffs) for s, p in preds.items()}


def run(config, workdir, table: FeatureTable | None = None) -> dict:
    """Features, fit on the train split, predictions and scores of validation and test.

    As a network's run (`fit_config`, `evaluate`): WORKDIR/predictions_<split>.csv and
    results.json (written last, all renamed into place together), plus
    WORKDIR/radiomics_model.json; the metrics table is printed.

    Args:
      config: the networks' config (data, split, fold, class weights, seed, eval).
      workdir: the output folder.
      table: the cohort's features, if already computed for this config's records (the folds
        of a cross-validation share one table); None: `cohort_features(config, workdir)`.

    Returns:
      Flat results as results.json holds them ("test.subject.auc", ...; "radiomics.*": C,
      feature count, seconds; "skipped").
    """
    workdir = Path(workdir)
    start = time.perf_counter()
    table = cohort_features(config, workdir) if table is None else table
    featured = time.perf_counter()
    model = fit_config(table, config)
    fit_seconds = time.perf_counter() - featured
    preds, scored = evaluate(model, table, config)
    flat = reporting.flatten(scored)
    flat.update(
        {
            "radiomics.C": model.C,
            "radiomics.n_features": float(len(model.names)),
            # the whole run (the records' build too, when this run made them), and the fit
            "radiomics.seconds": time.perf_counter() - start,
            "radiomics.fit_seconds": fit_seconds,
            "skipped": [dict(s) for s in table.skipped],
        }
    )
    with atomic.staged():
        for split, p in preds.items():
            predictions.write_csv(workdir / f"predictions_{split}.csv", p)
        atomic.write_text(workdir / "radiomics_model.json", json.dumps(model.summary(), indent=1))
        reporting.write_json(workdir / "results.json", flat, indent=2)
    print(f"Radiomics baseline (C = {model.C:.3g}, {len(model.names)} features):")
    print(reporting.format_table(scored), flush=True)
    if table.skipped:
        print(reporting.format_skipped(table.skipped), flush=True)
    return flat


def main(argv):
    """Entry point (absl)."""
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    run(flags.FLAGS.config, flags.FLAGS.workdir)


if __name__ == "__main__":
    # Defined here, not on import: compare and crossval import this module and own these flags.
    flags.DEFINE_string("workdir", "workdir/radiomics", "Directory for records and the outputs.")
    config_flags.DEFINE_config_file(
        "config", "configs/ern.py", "The networks' configuration file.", lock_config=True
    )
    cli.run(main)
