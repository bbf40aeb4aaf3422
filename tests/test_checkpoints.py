"""Checkpointer: what is kept (latest k + best AUC), exact restore, and crash leftovers."""

import json

import grain.python as grain
import jax
import jax.numpy as jnp
import numpy as np
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
    meta = {"step": step, "best_auc": auc}
    ckpt.save(step, _state(step), it or _iterator(), meta, json.dumps({"s": step}), val_auc=auc)


def test_keeps_latest_k_and_the_best_auc(tmp_path):
    ckpt = checkpoints.Checkpointer(tmp_path, keep=2, async_save=False)
    for step, auc in [(1, 0.6), (2, 0.9), (3, None), (4, 0.7), (5, 0.9), (6, float("nan"))]:
        _save(ckpt, step, auc)
    # 5 and 6 are the latest two; 2 is the best (ties go to the earlier step).
    assert ckpt.all_steps() == [2, 5, 6]
    assert ckpt.best_step() == 2
    assert ckpt.latest_step() == 6
    ckpt.close()


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
    state, meta = ckpt.restore(7, _state(0.0), fresh)
    assert meta == {"step": 7, "best_auc": 0.8}
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
