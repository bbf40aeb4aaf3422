"""Orbax checkpoints of a training run, and which of its steps is the model.

One `CheckpointManager` in WORKDIR/checkpoints holds, per saved step, four items:
  state   the model state (parameters, BatchNorm statistics, the dropout RNG key and counter)
          and the optimizer state, as one pytree (`StandardSave`: sharded arrays, typed PRNG keys)
  data    the Grain iterator position, one JSON file per process (Grain's own Orbax handler)
  meta    the run's `Progress` as JSON: step, best validation metric and its step, epochs without
          gain, stopped early (checkpoints written before Progress say "best_auc": still read)
  config  the run's config as JSON (what produced the checkpoint)

Kept: the latest `keep` steps plus the best by the validation metric `config.train.select_metric`
(`SelectMetric`; ties go to the earlier step, the one early stopping saw first). Each step's Orbax
metrics hold its "score", that metric signed so that higher is better (the loss negated);
checkpoints written before hold "val_auc", read the same. Orbax writes each step into a temporary
directory and renames it when complete, so a SIGKILL at any moment leaves the previous checkpoints
readable; leftover temporary directories are removed when the next run opens the manager.

A full disk (or quota) during a save raises one `NoSpaceError` naming the step and the folder.
Orbax reports such a failure from each of its background threads, and each write TensorStore
still had in flight when Orbax closed its event loop reports "Event loop is closed" (about 1,100
traceback lines for a small model); those echoes of the one error are dropped, as are Orbax's
INFO lines, while a `Checkpointer` is open (`ernjax.orbax_logs`; importing changes no logging).
"""

import contextlib
import dataclasses
import json
import math
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import grain.python as grain
import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
from flax import nnx
from orbax.checkpoint import checkpoint_managers as policies

from ernjax import orbax_logs
from ernjax.errors import InputError, NoSpaceError, disk_full_reason

_ITEMS = ("state", "data", "meta", "config")


# ----------------------------------------------------------------------------- progress, selection
@dataclasses.dataclass
class Progress:
    """How far a run got, saved with every checkpoint (its "meta" item).

    Attributes:
      step: train steps taken.
      best_metric: the best validation value of `config.train.select_metric` so far, or None.
      best_loss: the validation loss at that step (the tie-break), or None.
      best_step: the step it was reached at, or None.
      bad_epochs: epochs since the last gain (for early stopping).
      stopped_early: early stopping ended the run.
    """

    step: int = 0
    best_metric: float | None = None
    best_loss: float | None = None
    best_step: int | None = None
    bad_epochs: int = 0
    stopped_early: bool = False

    def to_json(self) -> dict:
        """The JSON-able dict saved as "meta"."""
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, meta: Mapping) -> "Progress":
        """Reads a saved "meta": this class's fields, or the dict written before it.

        Checkpoints written before `Progress` saved the best validation AUC as "best_auc"; keys
        this class does not know are ignored.
        """
        meta = dict(meta)
        if "best_auc" in meta:
            meta.setdefault("best_metric", meta.pop("best_auc"))
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in meta.items() if k in names})


# What a run may select its checkpoint by: a key of its flat validation results, the
# class-weighted loss (lower is better) or a metric of stats.evaluate_predictions (higher is).
_LEVEL_METRICS = ("auc", "accuracy", "sensitivity", "specificity", "precision", "f1")
SELECTABLE = ("loss",) + tuple(f"{lv}.{m}" for lv in ("image", "subject") for m in _LEVEL_METRICS)


@dataclasses.dataclass(frozen=True)
class SelectMetric:
    """The validation metric that ranks a run's steps (`config.train.select_metric`).

    The best step, early stopping and the checkpoint kept (and scored) as "best" all follow it.
    Ties go to the lower validation loss, then to the earlier step: on a validation split of a
    handful of subjects an AUC often reaches 1.0 at an early, barely trained epoch and stays
    there, and only the loss still tells those epochs apart.

    Attributes:
      name: one of `SELECTABLE`, e.g. "image.auc" (the default), "subject.auc" or "loss".
    """

    name: str = "image.auc"

    def __post_init__(self):
        if self.name not in SELECTABLE:
            raise ValueError(
                f"config.train.select_metric={self.name!r}: expected one of {', '.join(SELECTABLE)}"
            )

    @property
    def higher_is_better(self) -> bool:
        """False for the loss, True for the others."""
        return self.name != "loss"

    def score(self, value: float | None) -> float | None:
        """`value` signed so that higher is better (the loss negated); None if None or NaN."""
        if value is None or not math.isfinite(value):
            return None
        return float(value) if self.higher_is_better else -float(value)

    def improves(self, value, best, loss=None, best_loss=None) -> bool:
        """Whether `value` beats `best` in this metric's order; NaN never does.

        Strictly better wins; a tie wins at a strictly lower `loss` than `best_loss`. `best`
        None: nothing yet, any defined value wins.
        """
        score = self.score(value)
        if score is None or best is None:
            return score is not None
        return (score, _tiebreak(loss)) > (self.score(best), _tiebreak(best_loss))


def _tiebreak(loss: float | None) -> float:
    """Higher is better: the validation loss negated; -inf when there is none."""
    return -float(loss) if loss is not None and math.isfinite(loss) else -math.inf


def _best_key(metrics: dict) -> tuple[float, float, int]:
    """Ranks steps by their score (higher is better), then lower validation loss, then earliness."""
    # "val_auc": the score of the checkpoints written before config.train.select_metric;
    # checkpoints written before the tie-break have no "val_loss" (their ties go by earliness).
    score = metrics["score"] if "score" in metrics else metrics["val_auc"]
    return (score, _tiebreak(metrics.get("val_loss")), -metrics["step"])


def scored_step(select: str, best: int | None, latest: int | None) -> tuple[int | None, str]:
    """The step a run is scored and used with, and why (`config.train.select_checkpoint`).

    "best": the step best by `config.train.select_metric`, or the latest when no step had a
    defined value; "last": the latest. None when there is no checkpoint.
    """
    if select == "best" and best is not None:
        return best, "best by config.train.select_metric on validation"
    if select == "best":
        return latest, "latest: no validation config.train.select_metric was defined"
    return latest, "last (config.train.select_checkpoint)"


class Checkpointer:
    """Saves and restores training checkpoints under `directory` (see the module docstring).

    Every process must make the same calls (Orbax coordinates multi-host writes).
    """

    def __init__(
        self, directory: str | Path, *, keep: int, async_save: bool = True, read_only=False
    ):
        """Opens (or creates) the checkpoint directory.

        Args:
          directory: where the step folders live, e.g. WORKDIR/checkpoints.
          keep: how many of the latest steps to keep (the best one is kept in addition).
          async_save: write in a background thread once the arrays are copied to the host.
          read_only: read a finished run, or one another process is writing (`load_model`):
            nothing is created, saved or cleaned up, and the state is read by `restore_model`.
        """
        if keep < 1:
            raise ValueError(f"config.train.keep_checkpoints must be >= 1, got {keep}")
        self.directory = Path(directory).absolute()
        policy = policies.AnyPreservationPolicy(
            [
                policies.LatestN(n=keep),
                # Steps saved without a validation score (mid-epoch, or undefined) only count
                # for LatestN; otherwise they would be kept forever.
                policies.BestN(
                    get_metric_fn=_best_key, n=1, keep_checkpoints_without_metrics=False
                ),
            ]
        )
        options = ocp.CheckpointManagerOptions(
            preservation_policy=policy,
            best_fn=_best_key,
            best_mode="max",
            # Read-only: another process may be writing the run. (Not Orbax's `read_only`,
            # which warns at every open; this object just never saves.)
            cleanup_tmp_directories=not read_only,
            enable_async_checkpointing=async_save,
            create=not read_only,
        )
        handlers = {"data": grain.PyGrainCheckpointHandler()}
        if read_only:  # the saved tree's structure (`item_metadata`) and partial restores
            handlers["state"] = ocp.PyTreeCheckpointHandler()
            handlers |= {k: ocp.JsonCheckpointHandler() for k in ("meta", "config")}
        # Orbax's INFO lines and the echoes of a full disk are dropped until close().
        self._quiet = contextlib.ExitStack()
        self._quiet.enter_context(orbax_logs.quiet())
        try:
            self._manager = ocp.CheckpointManager(
                self.directory, item_names=_ITEMS, item_handlers=handlers, options=options
            )
        except BaseException:
            self._quiet.close()
            raise
        self._writing = None  # the step of a save that may still run in the background
        self._failed = False  # a save hit a full disk; Orbax then re-raises it on every wait

    def _guard(self, step: int | None, call):
        """Runs an Orbax call; a full disk becomes one NoSpaceError naming the step and folder."""
        try:
            return call()
        except Exception as e:
            reason = disk_full_reason(e)
            if reason is None:
                raise
            self._failed = True
            # From the folder: Orbax's own list already lacks steps it meant to delete next.
            kept = sorted(int(p.name) for p in self.directory.iterdir() if p.name.isdigit())
            advice = f"; steps {kept} there are intact" if kept else ""
            raise NoSpaceError(
                f"checkpoint step {step} to {self.directory}",
                reason,
                f"{advice}. Free space there and rerun the same command to resume.",
            ) from e

    def latest_step(self) -> int | None:
        """Returns the newest complete step, or None when there is none."""
        return self._manager.latest_step()

    def best_step(self) -> int | None:
        """Returns the step best by its validation score, or None when no step has one."""
        if not any(self._manager.metrics(s) for s in self._manager.all_steps()):
            return None
        return self._manager.best_step()

    def scored_step(self, select: str = "best") -> tuple[int | None, str]:
        """The step a run is scored and used with, and why (see `scored_step`)."""
        return scored_step(select, self.best_step(), self.latest_step())

    def all_steps(self) -> list[int]:
        """Returns the steps on disk, oldest first."""
        return sorted(self._manager.all_steps())

    def save(
        self,
        step: int,
        state: Any,
        data_iterator,
        progress: Progress,
        config_json: str,
        *,
        score: float | None = None,
        loss: float | None = None,
    ) -> None:
        """Writes one checkpoint (asynchronously unless disabled).

        The arrays and the iterator position are captured before this returns, so the caller
        may go on training (and donate the state buffers) at once.

        Args:
          step: the number of train steps taken.
          state: the train state pytree (jax arrays, possibly sharded).
          data_iterator: the Grain train iterator (its position is saved per process).
          progress: the run's progress at this step.
          config_json: the run's config, `config.to_json()`.
          score: this step's validation `SelectMetric.score` (higher is better); None or NaN if
            there is none (the step is then not a candidate for "best").
          loss: this step's validation loss, which breaks ties of `score`; None if none.
        """
        metrics = None
        if score is not None and math.isfinite(score):
            metrics = {"score": float(score), "step": int(step)}
            if loss is not None and math.isfinite(loss):
                metrics["val_loss"] = float(loss)
        args = ocp.args.Composite(
            state=ocp.args.StandardSave(state),
            data=grain.PyGrainCheckpointSave(data_iterator),
            meta=ocp.args.JsonSave(progress.to_json()),
            config=ocp.args.JsonSave({"json": config_json}),
        )
        self.wait()  # Orbax reports a failed background save at the next call: name that step
        self._guard(step, lambda: self._manager.save(step, args=args, metrics=metrics))
        self._writing = step

    def restore(self, step: int, state_like: Any, data_iterator=None) -> tuple[Any, Progress]:
        """Reads one checkpoint.

        Args:
          step: the step to read.
          state_like: a pytree like the saved state (arrays or `jax.ShapeDtypeStruct`s); the
            restored arrays take its shapes, dtypes and shardings.
          data_iterator: the Grain train iterator to reposition, or None to leave data alone.

        Returns:
          (state, progress).
        """
        abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, state_like)
        items = {"state": ocp.args.StandardRestore(abstract), "meta": ocp.args.JsonRestore()}
        if data_iterator is not None:
            items["data"] = grain.PyGrainCheckpointRestore(data_iterator)
        restored = self._manager.restore(step, args=ocp.args.Composite(**items))
        return restored["state"], Progress.from_json(restored["meta"])

    def restore_raw(self, step: int) -> tuple[dict, Progress]:
        """Reads one checkpoint without a template (for analysis and tests).

        Returns:
          (state as nested dicts of arrays, progress).
        """
        items = {"state": ocp.args.StandardRestore(), "meta": ocp.args.JsonRestore()}
        restored = self._manager.restore(step, args=ocp.args.Composite(**items))
        return restored["state"], Progress.from_json(restored["meta"])

    def restore_model(self, step: int, like=None):
        """Reads only the scored model state of one checkpoint (no optimizer state, no data).

        Needs `read_only=True`. The arrays are read for this process's devices, whatever devices
        the run was trained on.

        Args:
          step: the step to read.
          like: the model's state (`nnx.state(model)`) to restore into, with its shapes, dtypes,
            shardings and typed PRNG keys; None: the saved structure as nested dicts of numpy
            arrays (PRNG keys as their key data).

        Raises:
          InputError: the checkpoint holds no model state (not an ernjax run).
        """
        saved = self._manager.item_metadata(step)["state"]
        if saved is None or "model" not in saved.keys():
            raise InputError(
                "", self.directory, f"step {step} holds no model state (not an ernjax run?)"
            )
        # The scored weights (ernjax.train.steps.scored_model): the EMA ones if the run kept them.
        key = "ema" if "ema" in saved.keys() else "model"
        if like is None:
            item = {key: saved[key]}
            args = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), item)
        else:
            item = {key: jax.tree.map(ocp.utils.to_shape_dtype_struct, like)}
            args = ocp.checkpoint_utils.construct_restore_args(item)
        restore = ocp.args.PyTreeRestore(item=item, restore_args=args, partial_restore=True)
        restored = self._manager.restore(step, args=ocp.args.Composite(state=restore))
        return restored["state"][key]

    def saved_config(self, step: int) -> str:
        """Returns the config JSON saved with `step`."""
        restored = self._manager.restore(
            step, args=ocp.args.Composite(config=ocp.args.JsonRestore())
        )
        return restored["config"]["json"]

    def wait(self) -> None:
        """Blocks until background writes have finished.

        Raises:
          NoSpaceError: a save ran out of disk space (or quota).
        """
        self._guard(self._writing, self._manager.wait_until_finished)
        self._writing = None

    def close(self) -> None:
        """Finishes pending writes and releases the manager.

        After a full disk was reported, closing does not report it again, and Orbax's filters
        stay: its abandoned writes report the same error as they are torn down, up to the
        interpreter's exit.
        """
        if not self._failed:
            self.wait()
        try:
            self._manager.close()
        except Exception as e:
            if not (self._failed and disk_full_reason(e)):
                raise
        finally:
            if not self._failed:
                self._quiet.close()


# ----------------------------------------------------------------------------- a finished run
@dataclasses.dataclass
class ScoredModel:
    """A finished run's model: the checkpoint its results were computed with (`load_model`).

    Attributes:
      config: the run's config, as saved with its checkpoints.
      state: the model part of that checkpoint's train state (parameters, BatchNorm statistics,
        RNG state): restored into `model`, or nested dicts of numpy arrays without one.
      step: the checkpoint's step.
      which: why that step, e.g. "best by config.train.select_metric on validation".
      model: built from `config` by `load_model`'s `build`, with `state` loaded, in eval mode;
        None when no `build` was given.
    """

    config: ml_collections.ConfigDict
    state: Any
    step: int
    which: str
    model: nnx.Module | None = None


def run_checkpoints(path) -> Path | None:
    """The folder of a run's step folders: PATH/checkpoints or PATH itself; None if neither."""
    for directory in (Path(path) / "checkpoints", Path(path)):
        if directory.is_dir() and any(p.name.isdigit() for p in directory.iterdir()):
            return directory
    return None


def load_model(
    path, build: Callable[[ml_collections.ConfigDict], nnx.Module] | None = None
) -> ScoredModel:
    """Loads the model a finished run was scored with: the one place that says which it is.

    The step is the one `config.train.select_checkpoint` of the run's own (latest saved) config
    chose for its results (`Checkpointer.scored_step`), so a prediction, a pretrained start or an
    analysis uses the model the run's metrics describe. Only the model state is read: no
    optimizer, mesh or compiled step is built, and the run may have had other devices.

    Args:
      path: the run's WORKDIR, or its checkpoints folder.
      build: config -> a freshly built model of that config (e.g. `train.steps.create_model`);
        the state is restored into it and it is set to eval mode. None: the state comes back as
        nested dicts of numpy arrays (e.g. to load into a model of another shape).

    Returns:
      The ScoredModel.

    Raises:
      InputError: PATH holds no complete checkpoint, or the checkpoint no model state.
    """
    directory = run_checkpoints(path)
    if directory is None:
        raise InputError("", Path(path) / "checkpoints", "no checkpoint: train the model first")
    ckpt = Checkpointer(directory, keep=1, async_save=False, read_only=True)
    try:
        latest = ckpt.latest_step()
        if latest is None:
            raise InputError("", directory, "holds no complete ernjax checkpoint")
        config = ml_collections.ConfigDict(json.loads(ckpt.saved_config(latest)))
        step, which = ckpt.scored_step(config.get("train", {}).get("select_checkpoint", "best"))
        model = build(config) if build is not None else None
        state = ckpt.restore_model(step, nnx.state(model) if model is not None else None)
    finally:
        ckpt.close()
    if model is not None:
        nnx.update(model, state)
        model.eval()
    return ScoredModel(config, state, int(step), which, model)
