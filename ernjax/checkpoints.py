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
"""

import logging
import math
from pathlib import Path
from typing import Any

import grain.python as grain
import jax
import orbax.checkpoint as ocp
from orbax.checkpoint import checkpoint_managers as policies

_ITEMS = ("state", "data", "meta", "config")


class _QuietOrbax(logging.Filter):
    """Drops Orbax's INFO lines and its warning on saves without metrics.

    Orbax logs several INFO lines per save, which would bury the training progress; its other
    warnings and errors still show. Mid-epoch steps carry no metrics by design.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        if "/orbax/" in record.pathname.replace("\\", "/") and record.levelno < logging.WARNING:
            return False
        return "did not provide metrics" not in record.getMessage()


logging.getLogger("absl").addFilter(_QuietOrbax())


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

    def __init__(self, directory: str | Path, *, keep: int, async_save: bool = True):
        """Opens (or creates) the checkpoint directory.

        Args:
          directory: where the step folders live, e.g. WORKDIR/checkpoints.
          keep: how many of the latest steps to keep (the best one is kept in addition).
          async_save: write in a background thread once the arrays are copied to the host.
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
            cleanup_tmp_directories=True,
            enable_async_checkpointing=async_save,
            create=True,
        )
        self._manager = ocp.CheckpointManager(
            self.directory,
            item_names=_ITEMS,
            item_handlers={"data": grain.PyGrainCheckpointHandler()},
            options=options,
        )

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
        self._manager.save(
            step,
            args=ocp.args.Composite(
                state=ocp.args.StandardSave(state),
                data=grain.PyGrainCheckpointSave(data_iterator),
                meta=ocp.args.JsonSave(meta),
                config=ocp.args.JsonSave({"json": config_json}),
            ),
            metrics=metrics,
        )

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

    def saved_config(self, step: int) -> str:
        """Returns the config JSON saved with `step`."""
        restored = self._manager.restore(
            step, args=ocp.args.Composite(config=ocp.args.JsonRestore())
        )
        return restored["config"]["json"]

    def wait(self) -> None:
        """Blocks until background writes have finished."""
        self._manager.wait_until_finished()

    def close(self) -> None:
        """Finishes pending writes and releases the manager."""
        self._manager.wait_until_finished()
        self._manager.close()
