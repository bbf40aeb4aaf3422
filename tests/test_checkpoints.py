"""Checkpointer: what is kept (latest k + best score), exact restore, old formats, leftovers."""

import json

import grain.python as grain
import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest

from ernjax import checkpoints


def _state(value: float) -> dict:
    return {
        "w": jnp.full((3, 2), value, jnp.float32),
        "count": jnp.asarray(int(value), jnp.uint32),
        "key": jax.random.key(int(value)),  # typed PRNG keys, as NNX keeps the dropout RNG
    }


def _iterator():
    loader = grain.DataLoader(
        data_source=list(range(10)),
        sampler=grain.IndexSampler(
            10, shard_options=grain.NoSharding(), shuffle=True, num_epochs=None, seed=3
        ),
        operations=[grain.Batch(2)],
    )
    return iter(loader)


def _save(ckpt, step, auc=None, it=None):
    progress = checkpoints.Progress(step=step, best_metric=auc)
    ckpt.save(step, _state(step), it or _iterator(), progress, json.dumps({"s": step}), score=auc)


def test_keeps_latest_k_and_the_best_auc(tmp_path):
    ckpt = checkpoints.Checkpointer(tmp_path, keep=2, async_save=False)
    for step, auc in [(1, 0.6), (2, 0.9), (3, None), (4, 0.7), (5, 0.9), (6, float("nan"))]:
        _save(ckpt, step, auc)
    # 5 and 6 are the latest two; 2 is the best (ties go to the earlier step).
    assert ckpt.all_steps() == [2, 5, 6]
    assert ckpt.best_step() == 2
    assert ckpt.latest_step() == 6
    ckpt.close()


def test_auc_ties_go_to_the_lower_validation_loss(tmp_path):
    ckpt = checkpoints.Checkpointer(tmp_path, keep=1, async_save=False)
    for step, auc, loss in [(1, 1.0, 1.1), (2, 0.9, 0.5), (3, 1.0, 0.3), (4, 1.0, 0.35)]:
        progress = checkpoints.Progress(step=step, best_metric=auc)
        ckpt.save(step, _state(step), _iterator(), progress, "{}", score=auc, loss=loss)
    assert ckpt.best_step() == 3 and ckpt.all_steps() == [3, 4]
    ckpt.close()
    select = checkpoints.SelectMetric("image.auc")
    assert select.improves(1.0, 1.0, 0.3, 1.1) and not select.improves(1.0, 1.0, 0.4, 0.3)
    assert select.improves(0.9, 0.8, 2.0, 0.1)  # the metric first, the loss only on a tie
    assert not select.improves(1.0, 1.0, float("nan"), 0.3)  # no loss never breaks a tie


def test_best_step_is_none_without_any_auc(tmp_path):
    ckpt = checkpoints.Checkpointer(tmp_path, keep=3, async_save=False)
    _save(ckpt, 1)
    _save(ckpt, 2, float("nan"))
    assert ckpt.best_step() is None
    ckpt.close()


def test_restore_is_exact_and_repositions_the_data(tmp_path):
    ckpt = checkpoints.Checkpointer(tmp_path, keep=1)  # asynchronous writes, as in training
    it = _iterator()
    for _ in range(3):
        next(it)
    _save(ckpt, 7, 0.8, it)
    expected_next = next(it)
    ckpt.close()

    ckpt = checkpoints.Checkpointer(tmp_path, keep=1)
    fresh = _iterator()
    state, progress = ckpt.restore(7, _state(0.0), fresh)
    assert progress == checkpoints.Progress(step=7, best_metric=0.8)
    np.testing.assert_array_equal(state["w"], np.full((3, 2), 7.0))
    assert int(state["count"]) == 7
    np.testing.assert_array_equal(
        jax.random.key_data(state["key"]), jax.random.key_data(jax.random.key(7))
    )
    np.testing.assert_array_equal(next(fresh), expected_next)
    assert json.loads(ckpt.saved_config(7)) == {"s": 7}
    raw, _ = ckpt.restore_raw(7)
    np.testing.assert_array_equal(raw["w"], state["w"])
    ckpt.close()


def test_an_interrupted_write_is_ignored_and_cleaned(tmp_path):
    ckpt = checkpoints.Checkpointer(tmp_path, keep=3, async_save=False)
    _save(ckpt, 1, 0.5)
    ckpt.close()
    # What a SIGKILL during the write of step 2 leaves behind: a temporary folder.
    leftover = tmp_path / "2.orbax-checkpoint-tmp-1234567"
    (leftover / "state").mkdir(parents=True)
    ckpt = checkpoints.Checkpointer(tmp_path, keep=3, async_save=False)
    assert ckpt.latest_step() == 1
    state, _ = ckpt.restore(1, _state(0.0))
    assert int(state["count"]) == 1
    ckpt.close()  # the cleanup runs in the background; close waits for it
    assert not leftover.exists()


def test_keep_must_be_positive(tmp_path):
    with pytest.raises(ValueError, match="keep_checkpoints"):
        checkpoints.Checkpointer(tmp_path, keep=0)


def test_the_loss_selects_its_lowest_step(tmp_path):
    loss = checkpoints.SelectMetric("loss")
    assert not loss.higher_is_better and loss.improves(0.3, 0.4) and not loss.improves(0.5, 0.4)
    assert not loss.improves(float("nan"), None) and loss.improves(0.9, None)
    ckpt = checkpoints.Checkpointer(tmp_path, keep=1, async_save=False)
    for step, value in [(1, 0.7), (2, 0.4), (3, 0.4), (4, 0.6)]:
        _save(ckpt, step, loss.score(value))
    assert ckpt.best_step() == 2  # the lowest loss; the tie goes to the earlier step
    assert ckpt.all_steps() == [2, 4]
    ckpt.close()


def test_an_unknown_select_metric_names_the_choices():
    choices = r"select_metric='image\.auroc': expected one of loss, image\.auc, image\.accuracy"
    with pytest.raises(ValueError, match=choices):
        checkpoints.SelectMetric("image.auroc")


def test_checkpoints_written_before_progress_still_restore(tmp_path):
    """Before Progress: "meta" a dict with "best_auc", the Orbax metrics {"val_auc", "step"}."""
    options = ocp.CheckpointManagerOptions(
        best_fn=lambda m: (m["val_auc"], -m["step"]), best_mode="max", create=True
    )
    items = ("state", "data", "meta", "config")
    handlers = {"data": grain.PyGrainCheckpointHandler()}
    with ocp.CheckpointManager(
        tmp_path, item_names=items, item_handlers=handlers, options=options
    ) as mgr:
        for step, auc in [(3, 0.9), (6, 0.7)]:
            meta = dict(
                step=step, best_auc=0.9, best_step=3, bad_epochs=step // 6, stopped_early=False
            )
            args = ocp.args.Composite(
                state=ocp.args.StandardSave(_state(step)),
                data=grain.PyGrainCheckpointSave(_iterator()),
                meta=ocp.args.JsonSave(meta),
                config=ocp.args.JsonSave({"json": "{}"}),
            )
            mgr.save(step, args=args, metrics={"val_auc": auc, "step": step})
    ckpt = checkpoints.Checkpointer(tmp_path, keep=3, async_save=False)
    assert ckpt.best_step() == 3
    assert ckpt.scored_step("best")[0] == 3
    state, progress = ckpt.restore(6, _state(0.0))
    assert progress == checkpoints.Progress(step=6, best_metric=0.9, best_step=3, bad_epochs=1)
    assert int(state["count"]) == 6
    ckpt.close()
