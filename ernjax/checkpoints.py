"""Orbax checkpoints of a training run: the train state, the data position, progress and config.

One `CheckpointManager` in WORKDIR/checkpoints holds, per saved step, four items:
  state   the model state (parameters, BatchNorm statistics, the dropout RNG key and counter)
          and the optimizer state, as one pytree (`StandardSave`: sharded arrays, typed PRNG keys)
  data    the Grain iterator position, one JSON file per process (Grain's own Orbax handler)
  meta    progress as JSON: step, epoch, best validation AUC and its step, epochs without gain
  config  the run's config as JSON (what produced the checkpoint)

Kept: the latest `keep` steps plus the best by validation AUC (ties go to the earlier step, the
one early stopping saw first). Orbax writes each step into a temporary directory and renames it
when complete, so a SIGKILL at any moment leaves the previous checkpoints readable; leftover
temporary directories are removed when the next run opens the manager.

A full disk (or quota) during a save raises one `NoSpaceError` naming the step and the folder.
Orbax reports such a failure from each of its background threads, and each write TensorStore
still had in flight when Orbax closed its event loop reports "Event loop is closed" (about 1,100
traceback lines for a small model); those echoes of the one error are dropped (see `_QuietOrbax`
and `_quiet_unraisable`).
"""

import dataclasses
import json
import logging
import math
import sys
import types
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grain.python as grain
import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
from flax import nnx
from orbax.checkpoint import checkpoint_managers as policies

from ernjax.errors import InputError, NoSpaceError, disk_full_reason

_ITEMS = ("state", "data", "meta", "config")


class _QuietOrbax(logging.Filter):
    """Drops Orbax's INFO lines, its warning on saves without metrics, and full-disk reports.

    Orbax logs several INFO lines per save, which would bury the training progress; its other
    warnings and errors still show. Mid-epoch steps carry no metrics by design. A full disk is
    logged with a traceback by each Orbax thread that saw it, and by asyncio for each write task
    left behind ("Task exception was never retrieved"): `Checkpointer` raises it once instead.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        orbax = "/orbax/" in record.pathname.replace("\\", "/")
        if orbax and record.levelno < logging.WARNING:
            return False
        if (orbax or record.name == "asyncio") and _reports_full_disk(record):
            return False
        return "did not provide metrics" not in record.getMessage()


def _reports_full_disk(record: logging.LogRecord) -> bool:
    exc = record.exc_info[1] if record.exc_info else None
    return bool(disk_full_reason(exc) or disk_full_reason(record.getMessage()))


for _name in ("absl", "asyncio"):
    logging.getLogger(_name).addFilter(_QuietOrbax())


def _quiet_unraisable(unraisable, previous=sys.unraisablehook) -> None:
    """Drops the echoes of a failed save that Python reports as unraisable; passes on the rest.

    When one write of a save fails, Orbax closes the event loop of that save while TensorStore's
    other writes are still running; as each finishes, TensorStore's callback finds the loop
    closed ("RuntimeError: Event loop is closed", one traceback per write). At exit, Python then
    closes Orbax's abandoned write coroutines, whose clean-up fails on the half torn-down
    interpreter. Neither says anything the first error did not.
    """
    exc, obj = unraisable.exc_value, unraisable.object
    tb = unraisable.exc_traceback
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    closed_loop = (
        isinstance(exc, RuntimeError)
        and str(exc) == "Event loop is closed"
        and tb is not None
        and tb.tb_frame.f_code.co_name == "_check_closed"
    )
    abandoned = isinstance(obj, types.CoroutineType) and "/orbax/" in obj.cr_code.co_filename
    if not (closed_loop or abandoned):
        previous(unraisable)


sys.unraisablehook = _quiet_unraisable


def _best_key(metrics: dict) -> tuple[float, int]:
    """Ranks steps by validation AUC, then by earliness (higher is better)."""
    return (metrics["val_auc"], -metrics["step"])


def scored_step(select: str, best: int | None, latest: int | None) -> tuple[int | None, str]:
    """The step a run is scored and used with, and why (`config.train.select_checkpoint`).

    "best": the best validation AUC step, or the latest when no step has one; "last": the latest.
    None when there is no checkpoint.
    """
    if select == "best" and best is not None:
        return best, "best validation AUC"
    if select == "best":
        return latest, "latest: no validation AUC was defined"
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
                # Steps saved without a validation AUC (mid-epoch, or AUC undefined) only count
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
        self._manager = ocp.CheckpointManager(
            self.directory, item_names=_ITEMS, item_handlers=handlers, options=options
        )
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
        """Returns the step with the best validation AUC, or None when no step has one."""
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
        meta: dict,
        config_json: str,
        *,
        val_auc: float | None = None,
    ) -> None:
        """Writes one checkpoint (asynchronously unless disabled).

        The arrays and the iterator position are captured before this returns, so the caller
        may go on training (and donate the state buffers) at once.

        Args:
          step: the number of train steps taken.
          state: the train state pytree (jax arrays, possibly sharded).
          data_iterator: the Grain train iterator (its position is saved per process).
          meta: JSON-able progress (step, epoch, best AUC, ...).
          config_json: the run's config, `config.to_json()`.
          val_auc: validation AUC at this step; None or NaN if there is none (the step is then
            not a candidate for "best").
        """
        metrics = None
        if val_auc is not None and math.isfinite(val_auc):
            metrics = {"val_auc": float(val_auc), "step": int(step)}
        args = ocp.args.Composite(
            state=ocp.args.StandardSave(state),
            data=grain.PyGrainCheckpointSave(data_iterator),
            meta=ocp.args.JsonSave(meta),
            config=ocp.args.JsonSave({"json": config_json}),
        )
        self.wait()  # Orbax reports a failed background save at the next call: name that step
        self._guard(step, lambda: self._manager.save(step, args=args, metrics=metrics))
        self._writing = step

    def restore(self, step: int, state_like: Any, data_iterator=None) -> tuple[Any, dict]:
        """Reads one checkpoint.

        Args:
          step: the step to read.
          state_like: a pytree like the saved state (arrays or `jax.ShapeDtypeStruct`s); the
            restored arrays take its shapes, dtypes and shardings.
          data_iterator: the Grain train iterator to reposition, or None to leave data alone.

        Returns:
          (state, meta).
        """
        abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, state_like)
        items = {"state": ocp.args.StandardRestore(abstract), "meta": ocp.args.JsonRestore()}
        if data_iterator is not None:
            items["data"] = grain.PyGrainCheckpointRestore(data_iterator)
        restored = self._manager.restore(step, args=ocp.args.Composite(**items))
        return restored["state"], dict(restored["meta"])

    def restore_raw(self, step: int) -> tuple[dict, dict]:
        """Reads one checkpoint without a template (for analysis and tests).

        Returns:
          (state as nested dicts of arrays, meta).
        """
        items = {"state": ocp.args.StandardRestore(), "meta": ocp.args.JsonRestore()}
        restored = self._manager.restore(step, args=ocp.args.Composite(**items))
        return restored["state"], dict(restored["meta"])

    def restore_model(self, step: int, like=None):
        """Reads only the model part of one checkpoint's state (no optimizer state, no data).

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
        if like is None:
            item = {"model": saved["model"]}
            args = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), item)
        else:
            item = {"model": jax.tree.map(ocp.utils.to_shape_dtype_struct, like)}
            args = ocp.checkpoint_utils.construct_restore_args(item)
        restore = ocp.args.PyTreeRestore(item=item, restore_args=args, partial_restore=True)
        restored = self._manager.restore(step, args=ocp.args.Composite(state=restore))
        return restored["state"]["model"]

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

        After a full disk was reported, closing does not report it again.
        """
        if not self._failed:
            self.wait()
        try:
            self._manager.close()
        except Exception as e:
            if not (self._failed and disk_full_reason(e)):
                raise


# ----------------------------------------------------------------------------- a finished run
@dataclasses.dataclass
class ScoredModel:
    """A finished run's model: the checkpoint its results were computed with (`load_model`).

    Attributes:
      config: the run's config, as saved with its checkpoints.
      state: the model part of that checkpoint's train state (parameters, BatchNorm statistics,
        RNG state): restored into `model`, or nested dicts of numpy arrays without one.
      step: the checkpoint's step.
      which: why that step, e.g. "best validation AUC".
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
