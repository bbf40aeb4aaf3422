"""The run: `train_and_evaluate(config, workdir)` (flax examples/imagenet style).

Setup (data, model, pretrained weights, compiled steps, checkpoints, resuming), the loop with its
NaN guard, validation, early stopping and checkpoint cadence, then the final evaluation of the
selected checkpoint on validation and test.

The state holds everything that decides the next step: parameters, BatchNorm statistics, the
dropout RNG key and counter (NNX keeps them in the model state), and the optimizer state with its
step count. With the data iterator position it is checkpointed, so a run killed at any moment and
rerun ends with the same parameters as an uninterrupted one.
"""

import dataclasses
import math
import time
from pathlib import Path

import jax
import ml_collections
import numpy as np
import optax
from absl import logging

from ernjax import atomic
from ernjax.checkpoints import Checkpointer, Progress, SelectMetric
from ernjax.data.check import ConfigError
from ernjax.data.pipeline import GRAIN, CheckpointableIterator, DataLayout, DataPipeline
from ernjax.data.prepare import DataInfo
from ernjax.evaluate import calibration, predictions, reporting, stats
from ernjax.evaluate.predictions import Predictions
from ernjax.evaluate.scoring import ScoringPolicy
from ernjax.models import pretrained
from ernjax.models.layers import check_norm
from ernjax.progress import Meter
from ernjax.train import outputs
from ernjax.train.logs import StepLog, Writer
from ernjax.train.steps import Steps, build_training, create_model, device_batch, scored_model


class NonFiniteLossError(FloatingPointError):
    """The loss or the gradient norm became NaN/Inf; the message names the step and subjects."""


# ----------------------------------------------------------------------------- the run
@dataclasses.dataclass
class _Run:
    """Everything one call of `train_and_evaluate` works with."""

    config: ml_collections.ConfigDict
    info: DataLayout
    workdir: Path
    pipeline: DataPipeline
    steps: Steps
    schedule: optax.Schedule
    scoring: ScoringPolicy
    select: SelectMetric
    train_iter: CheckpointableIterator
    ckpt: Checkpointer
    writer: Writer
    progress: Progress
    steps_per_epoch: int

    @property
    def total_steps(self) -> int:
        return self.config.train.num_epochs * self.steps_per_epoch


def _check_settings(config) -> SelectMetric:
    """Fails at once, in one line, on settings no data can make right; returns the select metric.

    Raises:
      ConfigError: the setting, its value and what it can be.
    """
    if config.train.select_checkpoint not in ("best", "last"):
        raise ConfigError(
            f"config.train.select_checkpoint={config.train.select_checkpoint!r}: expected "
            "'best' or 'last'"
        )
    t = config.train
    if t.get("class_weight_counts", "images") not in ("images", "subjects"):
        raise ConfigError(
            f"config.train.class_weight_counts={t.class_weight_counts!r}: expected 'images' or "
            "'subjects'"
        )
    if t.sampling not in ("shuffle", "balanced"):
        raise ConfigError(f"config.train.sampling={t.sampling!r}: expected 'shuffle' or 'balanced'")
    if not 0.0 <= t.ema_decay < 1.0:
        raise ConfigError(f"config.train.ema_decay={t.ema_decay}: expected 0 (off) or in (0, 1)")
    try:
        check_norm(config.model.norm)  # before the records are built, as the rest here
    except ValueError as e:
        raise ConfigError(str(e)) from None
    pytorch_weights = config.model.init_from and not Path(config.model.init_from).is_dir()
    if pytorch_weights and config.model.norm != "batch":  # an ernjax run has its own norm
        raise ConfigError(
            f"config.model.norm={config.model.norm!r} with config.model.init_from="
            f"{config.model.init_from}: PyTorch weights carry BatchNorm statistics; use "
            "--config.model.norm=batch to load them"
        )
    n = jax.device_count()
    for name in ("train.batch_size", "eval.batch_size"):
        size = config[name.split(".")[0]][name.split(".")[1]]
        if size % n:
            raise ConfigError(f"config.{name}={size} must be a multiple of the {n} devices")
    try:
        return SelectMetric(config.train.select_metric)
    except ValueError as e:
        raise ConfigError(str(e)) from None


def _weights_source(train_config, counted: str, counts) -> str:
    """Says where the class weights came from, for the log."""
    if train_config.class_weights:
        return "config.train.class_weights"
    if train_config.sampling == "balanced":
        return "balanced sampling: unweighted"
    return f"from training {counted} per class {list(counts)}"


def _check_data(config, info: DataLayout) -> None:
    """Fails early, in words, on settings the data cannot take."""
    if config.model.num_classes != len(info.class_names):
        raise ValueError(
            f"config.model.num_classes={config.model.num_classes} but the data has classes "
            f"{info.class_names}"
        )


def _setup(config, workdir: Path, pipeline: DataPipeline) -> _Run:
    """Data, model, optimizer, compiled steps, checkpoints (resumed if any) and the writer."""
    select = _check_settings(config)  # before the records are built: that can take minutes
    info = pipeline.prepare(config, workdir)
    _check_data(config, info)
    scoring = ScoringPolicy.from_config(config.eval, info.class_names)  # checks positive_class
    spe = pipeline.steps_per_epoch(info, config.train.batch_size)
    logging.info("creating the model %s and its optimizer...", config.model.name)
    model = create_model(config, info.image_shape)
    if config.model.init_from:
        # Pretrained weights (PyTorch file or an ernjax run); a checkpoint to resume wins later.
        report = pretrained.init_from(model, config.model.init_from)
        logging.info("init_from: %s", report.summary())
        if jax.process_index() == 0:
            workdir.mkdir(parents=True, exist_ok=True)
            report.write_json(workdir / "init_report.json")
    counted = config.train.get("class_weight_counts", "images")
    counts = info.train_subject_class_counts if counted == "subjects" else info.train_class_counts
    steps, schedule, weights = build_training(config, model, counts, spe)
    logging.info(
        "model %s: %d parameters; class weights %s (%s); %d steps per epoch on %d devices",
        config.model.name,
        steps.num_params,
        dict(zip(info.class_names, [round(float(w), 3) for w in weights], strict=True)),
        _weights_source(config.train, counted, counts),
        spe,
        jax.device_count(),
    )
    run = _Run(
        config=config,
        info=info,
        workdir=workdir,
        pipeline=pipeline,
        steps=steps,
        schedule=schedule,
        scoring=scoring,
        select=select,
        train_iter=pipeline.train_iterator(config, info, global_batch=config.train.batch_size),
        ckpt=Checkpointer(workdir / "checkpoints", keep=config.train.keep_checkpoints),
        writer=Writer(workdir / "tensorboard"),
        progress=Progress(),
        steps_per_epoch=spe,
    )
    _resume(run)
    return run


def _resume(run: _Run) -> None:
    """Restores the latest checkpoint (state, data position, progress), if there is one."""
    step = run.ckpt.latest_step()
    if step is None:
        run.writer.text("config", run.config.to_json(indent=2))
        return
    if run.ckpt.saved_config(step) != run.config.to_json():
        logging.warning("resuming step %d with a config that differs from the saved one", step)
    run.steps.state, run.progress = run.ckpt.restore(step, run.steps.state, run.train_iter)
    logging.info("resumed from %s at step %d", run.ckpt.directory, step)


def train_and_evaluate(config, workdir, *, pipeline: DataPipeline = GRAIN) -> dict:
    """Trains (resuming from WORKDIR/checkpoints if possible), then evaluates the best checkpoint.

    Args:
      config: the full config (see ernjax/defaults.py).
      workdir: directory for records, checkpoints, TensorBoard events and results.
      pipeline: the data (`ernjax.data.pipeline.DataPipeline`): the records through Grain, or
        a test's in-memory stand-in.

    Returns:
      Flat results, e.g. {"test.image.auc": ..., "test.subject.auc": ...}, and "skipped": the
      subjects left out under config.data.on_error="skip" ({"subject_id", "file", "problem"}
      each); also written to WORKDIR/results.json (NaN written as null).

    Raises:
      NonFiniteLossError: the loss or gradient became NaN/Inf (the last good checkpoint stays).
    """
    workdir = Path(workdir)
    run = _setup(config, workdir, pipeline)
    try:
        steps_per_s = _train(run)
        # The predictions and results.json are renamed into place together once all are
        # written, results.json last: a failure leaves the previous run's set, never a mix.
        with atomic.staged():
            results = _final_evaluation(run)
            results["train.steps_per_second"] = steps_per_s
            results["skipped"] = _skipped(run)
            _write_results(run, results)
        if jax.process_index() == 0:
            outputs.to_tensorboard(run.writer, workdir, int(results["checkpoint_step"]))
        return results
    finally:
        run.ckpt.close()
        run.writer.close()


# ----------------------------------------------------------------------------- training loop
def _train(run: _Run) -> float:
    """Runs the remaining steps; validates, saves and maybe stops early at each epoch end.

    Returns:
      Steps per second after the first logged step (compilation excluded; validation and
      checkpoints included), NaN if too few steps ran.
    """
    cfg, progress = run.config.train, run.progress
    step, spe, total = progress.step, run.steps_per_epoch, run.total_steps
    if step >= total or progress.stopped_early:
        logging.info("training already complete at step %d", step)
        return math.nan
    log = StepLog(
        run.writer,
        run.schedule,
        batch_size=cfg.batch_size,
        steps_per_epoch=spe,
        total_steps=total,
        step=step,
    )
    pending, first = None, step + 1
    while step < total and not progress.stopped_early:
        if step + 1 == first:
            logging.info("compiling the train step (and reading the first batch)...")
            compile_start = time.perf_counter()
        batch = next(run.train_iter)
        run.steps.state, metrics = run.steps.train(
            run.steps.state, device_batch(batch, run.steps.batch_sharding)
        )
        step += 1
        if step == first:  # compiled: timed apart, and kept out of the rates and the ETA
            jax.block_until_ready(metrics)
            seconds = time.perf_counter() - compile_start
            logging.info("compiled the train step in %.1f s (with step %d)", seconds, step)
            log.started(step)
        # Check the previous step while this one runs, so the host never waits on the device.
        if pending is not None:
            _check_finite(run, *pending)
        pending = (step, metrics, batch["subject_id"])
        epoch_end = step % spe == 0
        save = epoch_end or (cfg.checkpoint_every_steps and step % cfg.checkpoint_every_steps == 0)
        if save or (cfg.log_every_steps and step % cfg.log_every_steps == 0):
            log.log(step, _check_finite(run, *pending))
            pending = None
        value, loss = _end_epoch(run, step // spe) if epoch_end else (None, None)
        if save:
            progress.step = step
            score = run.select.score(value)
            config = run.config.to_json()
            run.ckpt.save(
                step, run.steps.state, run.train_iter, progress, config, score=score, loss=loss
            )
            log.restart_interval(step)  # keep validation and saving out of examples/s
    if pending is not None:
        _check_finite(run, *pending)
    return log.steps_per_second(step)


def _check_finite(run: _Run, step: int, metrics: dict, subject_ids) -> dict:
    """Returns the step's metrics as floats, or raises NonFiniteLossError naming the batch."""
    values = {k: float(v) for k, v in jax.device_get(metrics).items()}
    if all(math.isfinite(v) for v in values.values()):
        return values
    run.ckpt.wait()
    last = run.ckpt.latest_step()
    kept = f"the last good checkpoint (step {last})" if last is not None else "no checkpoint"
    raise NonFiniteLossError(
        f"training stopped at step {step} (epoch {(step - 1) // run.steps_per_epoch + 1}): "
        f"loss {values['loss']}, gradient norm {values['grad_norm']}. The batch held subjects "
        f"{sorted(set(np.asarray(subject_ids).astype(str).tolist()))} (this process's share). "
        f"{kept} in {run.ckpt.directory} is intact; check these subjects' images, or lower "
        f"config.train.learning_rate, then rerun to resume."
    )


def _end_epoch(run: _Run, epoch: int) -> tuple[float | None, float | None]:
    """Validates, logs, and updates the best value and the early-stopping count in run.progress.

    Returns:
      (the validation value of `config.train.select_metric`, the validation loss), both None
      without a validation split.
    """
    if not run.info.num_examples.get("validation"):
        return None, None
    results, _ = _evaluate_split(run, scored_model(run.steps.state), "validation")
    flat, loss = reporting.flatten(results), results["loss"]
    step, value = epoch * run.steps_per_epoch, flat[run.select.name]
    shown = {f"validation/{k}": v for k, v in flat.items() if k.rsplit(".", 1)[-1] in _TB_METRICS}
    run.writer.scalars(step, {"validation/loss": loss, **shown})
    p = run.progress
    track_best(p, value, step, run.config.train.early_stopping_patience, run.select, loss)
    shown_best = "n/a" if p.best_metric is None else f"{p.best_metric:.3f}"
    best = f"best {run.select.name} {shown_best} at step {p.best_step}"
    logging.info(
        "epoch %d validation: loss %.4f, image AUC %.3f, subject AUC %.3f (%s)%s",
        *(epoch, loss, flat["image.auc"], flat["subject.auc"], best),
        "; stopping early" if p.stopped_early else "",
    )
    return value, loss


_TB_METRICS = ("auc", "sensitivity", "specificity", "accuracy")


def track_best(
    progress: Progress,
    value: float,
    step: int,
    patience: int,
    select: SelectMetric,
    loss: float | None = None,
) -> None:
    """Updates the best value and step, the epochs without gain and stopped_early in `progress`.

    Only a gain in `select`'s order counts: a strictly better value, or the same value at a
    strictly lower validation `loss` (`SelectMetric.improves`); an undefined (NaN) value is no
    gain. patience 0 never stops.
    """
    if select.improves(value, progress.best_metric, loss, progress.best_loss):
        progress.best_metric, progress.best_step, progress.bad_epochs = value, step, 0
        progress.best_loss = loss
    else:
        progress.bad_epochs += 1
    progress.stopped_early = bool(patience and progress.bad_epochs >= patience)


def _evaluate_split(run: _Run, model_state, split: str) -> tuple[dict, Predictions]:
    """Predicts every example of `split` once and scores it at the default cut-offs.

    Returns:
      (evaluate_predictions output plus "loss" (class-weighted), the predictions).
    """
    outs, size = [], run.config.eval.batch_size
    batches = run.pipeline.eval_iterator(run.config, run.info, split, global_batch=size)
    n = run.info.num_examples[split]
    logging.info("predicting the %d %s examples...", n, split)
    # Lines only every interval_s: a short evaluation shows just its total time.
    with Meter(f"{split} predictions", n, unit="example", every=n) as meter:
        for batch in batches:
            outs.append(
                run.steps.evaluate(model_state, device_batch(batch, run.steps.batch_sharding))
            )
            if len(outs) > 1:  # counted once done, a batch behind: the device keeps working
                jax.block_until_ready(outs[-2])
                meter.update(min(size, n - meter.done))
        jax.block_until_ready(outs[-1])
        meter.update(n - meter.done)
    out = {k: np.concatenate([np.asarray(o[k]) for o in outs]) for k in outs[0]}
    keep = out["valid"].astype(bool)
    preds = Predictions(
        subject_id=run.info.subject_ids(split),
        label=out["label"][keep],
        probs=out["probs"][keep],
        class_names=run.info.class_names,
        slice=_slices(run, split),
    )
    results = stats.evaluate_predictions(
        preds.probs,
        preds.label,
        preds.subject_id,
        positive=run.scoring.positive,
        class_names=run.info.class_names,
    )
    results["loss"] = float(out["nll"][keep].mean())
    return results, preds


# ----------------------------------------------------------------------------- final evaluation
def _final_evaluation(run: _Run) -> dict:
    """Restores the selected checkpoint and scores validation and test.

    "best" is the step best by config.train.select_metric on validation (the latest when it
    was never defined); "last" the latest.

    Cut-offs (and a recalibration, `config.eval.recalibrate`) come from the validation
    predictions as `config.eval` says (never from test); the predictions of both splits are
    written to WORKDIR/predictions_<split>.csv, the calibration outputs by `_write_calibration`.
    """
    run.ckpt.wait()  # a failed last save (e.g. a full disk) stops the run before any output
    step, which = run.ckpt.scored_step(run.config.train.select_checkpoint)
    state = run.ckpt.restore(step, run.steps.state)[0] if step is not None else run.steps.state
    logging.info("evaluating the checkpoint of step %s (%s)", step, which)
    preds = {}
    for split in ("validation", "test"):
        if run.info.num_examples.get(split):
            preds[split] = _evaluate_split(run, scored_model(state), split)[1]
            if jax.process_index() == 0:
                predictions.write_csv(run.workdir / f"predictions_{split}.csv", preds[split])
    cutoffs = run.scoring.cutoffs(preds.get("validation"))
    results = {split: run.scoring.score(p, cutoffs) for split, p in preds.items()}
    if jax.process_index() == 0:
        print(f"Results of the checkpoint of step {step}:", flush=True)
        print(reporting.format_table(results), flush=True)
        print("\nCalibration:\n" + calibration.format_calibration_table(results), flush=True)
        if skipped := _skipped(run):
            print(reporting.format_skipped(skipped), flush=True)
        _write_calibration(run, preds, cutoffs, results)
        run.writer.flush()  # training_curves.png reads the events back
        outputs.write(
            run.workdir,
            run.config,
            run.scoring,
            preds,
            cutoffs,
            results,
            inputs=_first_batch(run, "validation"),
            data=_data_summary(run),
        )
    flat = reporting.flatten(results)
    flat["checkpoint_step"] = float(step if step is not None else run.progress.step)
    return flat


def _write_calibration(run: _Run, preds: dict, cutoffs: dict, results: dict) -> None:
    """WORKDIR/calibration.md, and the test split's figures and decision curve numbers.

    calibration.md: Brier, calibration intercept and slope of every split and level, then the
    test split's subject-wise net benefit at thresholds 0.1-0.9. reliability_test.png (subject
    and image rows), decision_curve_test.png and decision_curve_test.csv (thresholds 0.01-0.99),
    subject-wise; the validation split's when there is no test split. Probabilities as scored
    (recalibrated when `config.eval.recalibrate` is on).
    """
    split = "test" if "test" in preds else "validation"
    if split not in preds:
        return
    scoring, model, w = run.scoring, run.config.model.name, run.workdir
    levels = ("subject", "image")
    data = {lvl: scoring.calibration_data(preds[split], lvl, cutoffs) for lvl in levels}
    table = calibration.format_calibration_table(results, fmt="markdown")
    decision = calibration.format_decision_table({model: data["subject"]}, fmt="markdown")
    atomic.write_text(
        w / "calibration.md",
        f"# Calibration\n\n{table}\n## Decision curve, {split} split, subject-wise\n\n{decision}",
    )
    curve = calibration.format_decision_table(
        {model: data["subject"]}, calibration.CURVE_THRESHOLDS, fmt="csv"
    )
    atomic.write_text(w / f"decision_curve_{split}.csv", curve)
    positive = scoring.positive_name
    calibration.plot_reliability(
        {f"{model} {lvl}": data[lvl] for lvl in levels},
        w / f"reliability_{split}.png",
        f"Reliability, {split} split",
        positive_class=positive,
    )
    calibration.plot_decision_curves(
        {model: data["subject"]},
        w / f"decision_curve_{split}.png",
        f"Decision curve, {split} split, subject-wise",
        positive_class=positive,
    )


def _slices(run: _Run, split: str) -> np.ndarray | None:
    """Each example's slice index (slices2d records), None otherwise or for in-memory data."""
    slices = run.info.slices(split) if isinstance(run.info, DataInfo) else None
    return None if slices is None else np.asarray(slices, np.int64)


def _data_summary(run: _Run) -> dict | None:
    """What the run trained and was scored on, for WORKDIR/data.json (None for other layouts)."""
    if not isinstance(run.info, DataInfo):  # a test's in-memory data
        return None
    return {
        "kind": run.info.kind,
        "class_names": list(run.info.class_names),
        "splits": run.info.class_counts(),
        "skipped": _skipped(run),
    }


def _first_batch(run: _Run, split: str) -> dict | None:
    """The first evaluation batch of `split` (this process's share), None without the split."""
    if not run.info.num_examples.get(split):
        return None
    size = run.config.eval.batch_size
    return next(iter(run.pipeline.eval_iterator(run.config, run.info, split, global_batch=size)))


def _skipped(run: _Run) -> list[dict]:
    """The subjects the data left out."""
    return [dict(s) for s in run.info.skipped]


def _write_results(run: _Run, results: dict) -> None:
    """WORKDIR/results.json (process 0), NaN as null so that any JSON reader takes it."""
    if jax.process_index() == 0:
        reporting.write_json(run.workdir / "results.json", results, indent=2)
