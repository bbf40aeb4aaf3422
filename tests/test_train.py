"""Trainer: data-parallel step == single device, loss and schedule, NaN guard, kill-and-resume.

Most runs use `FakePipeline` (the `DataPipeline` contract on in-memory arrays, with a real Grain
iterator so the data position is checkpointed the same way); the last tests run the real configs
end to end. Compiled steps are shared between runs (and the killed subprocess) through a
persistent compilation cache, so each program compiles once per session.

`python tests/test_train.py WORKDIR CACHE_DIR DELAY` is the subprocess of the kill test.
"""

import dataclasses
import importlib.util
import inspect
import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import grain.python as grain
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx
from jax.experimental.compilation_cache import compilation_cache

from ernjax import checkpoints, defaults
from ernjax.data import pipeline as pipeline_lib
from ernjax.data.prepare import DataInfo
from ernjax.train import logs as train_logs
from ernjax.train import loop, objective
from ernjax.train import steps as train_steps

REPO = Path(__file__).resolve().parents[1]
SHAPE = (16, 16, 3)
SIZES = {"train": 24, "validation": 8, "test": 8}
CLASSES = ("necrosis", "recurrence")
SPLITS = ("train", "validation", "test")


# ----------------------------------------------------------------------------- fake data
@dataclasses.dataclass(frozen=True)
class FakeInfo:
    """The DataInfo fields the trainer reads."""

    records_dir: str
    kind: str
    image_shape: tuple
    class_names: tuple
    num_examples: dict
    train_class_counts: tuple
    train_subject_class_counts: tuple
    skipped: tuple = ()

    def subject_ids(self, split: str) -> list[str]:
        return [_example(split, i)["subject_id"] for i in range(SIZES[split])]


def _example(split: str, i: int) -> dict:
    """Two images per subject; label by subject; the label shifts the mean intensity."""
    subject = i // 2
    label = 0 if subject % 3 == 0 else 1
    rng = np.random.default_rng([SPLITS.index(split), i])
    image = rng.normal(size=SHAPE).astype(np.float32) + 0.5 * label
    return {
        "image": image,
        "label": np.int32(label),
        "subject_id": f"sub-{split[:2]}{subject:02d}",
        "valid": np.bool_(True),
    }


class _Source(grain.RandomAccessDataSource):
    def __init__(self, split):
        self.split = split

    def __len__(self):
        return SIZES[self.split]

    def __repr__(self):  # Grain compares repr(source) on restore: no object address in it
        return f"FakeSource({self.split})"

    def __getitem__(self, i):
        return _example(self.split, i)


class _Wrapped:
    """Delegates iteration and checkpoint state to the wrapped train iterator."""

    def __init__(self, it):
        self.it = it

    def __iter__(self):
        return self

    def __next__(self):
        return next(self.it)

    def get_state(self):
        return self.it.get_state()

    def set_state(self, state):
        self.it.set_state(state)

    def start_prefetch(self):
        pass


class _Poisoned(_Wrapped):
    """Wraps the train iterator: batch number `at` (1-based) gets NaN images."""

    def __init__(self, it, at):
        super().__init__(it)
        self.at, self.count, self.poisoned_ids = at, 0, None

    def __next__(self):
        batch = next(self.it)
        self.count += 1
        if self.count == self.at:
            batch["image"] = np.full_like(batch["image"], np.nan)
            self.poisoned_ids = sorted(set(batch["subject_id"].tolist()))
        return batch


class _Slow(_Wrapped):
    """Wraps the train iterator with a delay per batch (so the kill lands mid-run)."""

    def __init__(self, it, delay):
        super().__init__(it)
        self.delay = delay

    def __next__(self):
        time.sleep(self.delay)
        return next(self.it)


class FakePipeline:
    """A `DataPipeline` (prepare, train_iterator, eval_iterator, steps_per_epoch) in memory."""

    def __init__(self, nan_at: int | None = None, delay: float = 0.0):
        self.nan_at, self.delay, self.train_iter = nan_at, delay, None

    def prepare(self, config, workdir):
        del config, workdir
        labels = [int(_example("train", i)["label"]) for i in range(SIZES["train"])]
        return FakeInfo(
            records_dir="",
            kind="slices2d",
            image_shape=SHAPE,
            class_names=CLASSES,
            num_examples=dict(SIZES),
            train_class_counts=(labels.count(0), labels.count(1)),
            train_subject_class_counts=(labels[::2].count(0), labels[::2].count(1)),
        )

    def steps_per_epoch(self, info, global_batch):
        return max(1, info.num_examples["train"] // global_batch)

    def train_iterator(self, config, info, *, global_batch):
        loader = grain.DataLoader(
            data_source=_Source("train"),
            sampler=grain.IndexSampler(
                SIZES["train"],
                shard_options=grain.ShardByJaxProcess(drop_remainder=True),
                shuffle=True,
                num_epochs=None,
                seed=config.seed,
            ),
            operations=[grain.Batch(global_batch // jax.process_count(), drop_remainder=True)],
        )
        it = iter(loader)
        if self.delay:
            it = _Slow(it, self.delay)
        if self.nan_at:
            it = _Poisoned(it, self.nan_at)
        self.train_iter = it
        return it

    def eval_iterator(self, config, info, split, *, global_batch):
        n, local = SIZES[split], global_batch // jax.process_count()
        for b in range(0, n, global_batch):
            start = b + jax.process_index() * local
            rows = [
                {**_example(split, min(i, n - 1)), "valid": i < n}
                for i in range(start, start + local)
            ]
            yield {k: np.stack([r[k] for r in rows]) for k in rows[0]}


def tiny_config(**train_overrides):
    """3 epochs x 3 steps of resnet10_tiny on 16x16 images, a checkpoint every step."""
    c = defaults.base_config()
    c.model.name = "resnet10_tiny"
    c.model.dropout = 0.3  # exercises the dropout RNG in the saved state
    c.train.update(
        dict(
            batch_size=8,
            num_epochs=3,
            learning_rate=1e-2,
            warmup_epochs=1.0,
            checkpoint_every_steps=1,
            log_every_steps=1,
            keep_checkpoints=2,
        )
    )
    c.train.update(train_overrides)
    c.eval.batch_size = 8
    return c


# ----------------------------------------------------------------------------- unit tests
def test_class_weights_match_gao():
    # Gao 2020: 50 necrosis, 96 recurrence -> n_total / (n_classes * n_class).
    w = objective.class_weights((50, 96))
    np.testing.assert_allclose(w, [146 / 100, 146 / 192], rtol=1e-6)
    np.testing.assert_allclose(w, [1.5, 0.75], atol=0.05)  # the paper's rounded values
    np.testing.assert_allclose(objective.class_weights((50, 96), (2.0, 1.0)), [2.0, 1.0])
    with pytest.raises(ValueError, match="no training examples"):
        objective.class_weights((0, 5))
    with pytest.raises(ValueError, match="1 class weights"):
        objective.class_weights((3, 5), (1.0,))


def test_weighted_cross_entropy_is_keras_class_weight():
    logits = np.array([[2.0, 0.0], [0.0, 1.0], [1.0, 1.0]], np.float32)
    labels = np.array([0, 1, 0])
    valid = np.array([True, True, False])  # the padding row counts for nothing
    loss, per_row = objective.weighted_cross_entropy(logits, labels, np.array([2.0, 0.5]), valid)
    ce = -np.log(np.exp(logits[[0, 1], labels[:2]]) / np.exp(logits[:2]).sum(1))
    np.testing.assert_allclose(loss, (2.0 * ce[0] + 0.5 * ce[1]) / 2, rtol=1e-6)
    assert float(per_row[2]) == 0.0


def test_learning_rate_schedule_shape():
    c = tiny_config(num_epochs=10, warmup_epochs=2.0, learning_rate=1e-3)
    lr = objective.learning_rate_schedule(c.train, steps_per_epoch=5)
    values = np.array([float(lr(s)) for s in range(51)])
    assert values[0] == 0.0
    np.testing.assert_allclose(values[10], 1e-3)  # peak after 2 warmup epochs
    assert np.all(np.diff(values[:11]) > 0) and np.all(np.diff(values[10:]) < 0)
    assert values[50] < 1e-9
    c.train.schedule = "constant"
    lr = objective.learning_rate_schedule(c.train, steps_per_epoch=5)
    assert {float(lr(s)) for s in (0, 7, 49)} == {1e-3}


def test_early_stopping_counts_epochs_without_auc_gain():
    progress, auc_metric = checkpoints.Progress(), checkpoints.SelectMetric("image.auc")
    for step, auc in [(3, 0.7), (6, float("nan")), (9, 0.8), (12, 0.8)]:
        loop.track_best(progress, auc, step, patience=2, select=auc_metric)
        assert not progress.stopped_early
    assert (progress.best_metric, progress.best_step, progress.bad_epochs) == (0.8, 9, 1)
    loop.track_best(progress, 0.75, 15, patience=2, select=auc_metric)
    assert progress.stopped_early
    loop.track_best(progress, 0.1, 18, patience=0, select=auc_metric)
    assert not progress.stopped_early  # 0 = off


def test_an_auc_tie_at_a_lower_loss_is_a_gain():
    progress, auc_metric = checkpoints.Progress(), checkpoints.SelectMetric("image.auc")
    for step, auc, loss in [(3, 1.0, 1.1), (6, 1.0, 0.4), (9, 1.0, 0.6)]:
        loop.track_best(progress, auc, step, patience=2, select=auc_metric, loss=loss)
    assert (progress.best_step, progress.best_loss, progress.bad_epochs) == (6, 0.4, 1)


def test_early_stopping_on_the_loss_counts_rises():
    progress, loss = checkpoints.Progress(), checkpoints.SelectMetric("loss")
    for step, value in [(3, 0.7), (6, 0.5), (9, 0.6), (12, 0.5)]:
        loop.track_best(progress, value, step, patience=2, select=loss)
    assert (progress.best_metric, progress.best_step, progress.bad_epochs) == (0.5, 6, 2)
    assert progress.stopped_early


def test_a_bad_select_metric_stops_before_any_data_work(tmp_path):
    class NoData(FakePipeline):
        def prepare(self, config, workdir):
            raise AssertionError("prepare ran")

    config = tiny_config(select_metric="auc")
    with pytest.raises(ValueError, match=r"config\.train\.select_metric='auc': expected one of"):
        loop.train_and_evaluate(config, tmp_path, pipeline=NoData())
    assert not list(tmp_path.iterdir())


def _params(fn, skip_self: bool) -> list[tuple[str, object]]:
    params = list(inspect.signature(fn).parameters.values())[1 if skip_self else 0 :]
    return [(p.name, p.kind) for p in params]


@pytest.mark.parametrize("pipeline", [pipeline_lib.GRAIN, FakePipeline()], ids=["grain", "fake"])
def test_the_real_pipeline_and_the_fake_are_the_data_seam(pipeline):
    """Both satisfy DataPipeline: the methods with its parameters, and infos that are layouts."""
    assert isinstance(pipeline, pipeline_lib.DataPipeline)
    for name in ("prepare", "steps_per_epoch", "train_iterator", "eval_iterator"):
        expected = _params(getattr(pipeline_lib.DataPipeline, name), skip_self=True)
        assert _params(getattr(pipeline, name), skip_self=False) == expected, name
    if isinstance(pipeline, FakePipeline):
        info = pipeline.prepare(tiny_config(), "")
        it = pipeline.train_iterator(tiny_config(), info, global_batch=8)
        assert isinstance(it, pipeline_lib.CheckpointableIterator)
    else:
        parts = {"train": (("train", 0),)}
        info = DataInfo("", "slices2d", SHAPE, CLASSES, {"train": 1}, (0, 1), (0, 1), parts)
    assert isinstance(info, pipeline_lib.DataLayout)


class _TinyNet(nnx.Module):
    """Conv + BatchNorm + Dropout + Linear: every kind of state the trainer carries."""

    def __init__(self, rngs, dtype=jnp.float32):
        # No bias before BatchNorm: its gradient is 0 up to rounding, which Adam would amplify
        # to +-lr, so the 1- and 4-device runs would differ by noise (real models have none).
        self.conv = nnx.Conv(3, 4, (3, 3), use_bias=False, dtype=dtype, rngs=rngs)
        self.bn = nnx.BatchNorm(4, dtype=dtype, rngs=rngs)
        self.drop = nnx.Dropout(0.3, rngs=rngs)
        self.fc = nnx.Linear(4, 2, rngs=rngs)

    def __call__(self, x):
        x = nnx.relu(self.bn(self.conv(x))).mean(axis=(1, 2))
        return self.fc(self.drop(x))


def _run_steps(devices, batches, dtype=jnp.float32):
    mesh = jax.make_mesh((len(devices),), ("data",), (jax.sharding.AxisType.Auto,), devices=devices)
    model = _TinyNet(nnx.Rngs(0), dtype)
    tx = objective.make_optimizer(tiny_config().train, optax.constant_schedule(0.05))
    steps = train_steps.build_steps(
        model, nnx.Optimizer(model, tx, wrt=nnx.Param), [1.5, 0.75], mesh
    )
    state, losses = steps.state, []
    for b in batches:
        batch = train_steps.device_batch(b, steps.batch_sharding)
        with jax.transfer_guard("disallow"):  # no hidden host<->device copies in the step
            state, metrics = steps.train(state, batch)
        losses.append(float(jax.device_get(metrics["loss"])))
    probs = steps.evaluate(
        state["model"], train_steps.device_batch(batches[0], steps.batch_sharding)
    )
    return losses, jax.device_get(state), np.asarray(probs["probs"]), steps


def _batches(n):
    rng = np.random.default_rng(0)
    return [
        {
            "image": rng.normal(size=(8, 6, 6, 3)).astype(np.float32),
            "label": rng.integers(0, 2, 8).astype(np.int32),
            "valid": np.ones(8, bool),
        }
        for _ in range(n)
    ]


def test_train_step_on_4_devices_equals_1_device():
    assert jax.device_count() == 4, "conftest.py should give 4 fake CPU devices"
    batches = _batches(3)
    loss1, state1, probs1, _ = _run_steps(jax.devices()[:1], batches)
    loss4, state4, probs4, steps4 = _run_steps(jax.devices(), batches)
    assert len(steps4.batch_sharding.device_set) == 4
    # Equality needs BatchNorm statistics over the global batch (per-device ones would differ)
    # and the same dropout masks whatever the sharding.
    np.testing.assert_allclose(loss4, loss1, rtol=1e-5, atol=1e-5)
    leaves1, leaves4 = jax.tree.leaves(state1), jax.tree.leaves(state4)
    assert len(leaves1) == len(leaves4)
    for a, b in zip(leaves1, leaves4, strict=True):
        if jax.dtypes.issubdtype(a.dtype, jax.dtypes.prng_key):
            a, b = jax.random.key_data(a), jax.random.key_data(b)
        np.testing.assert_allclose(np.asarray(b), np.asarray(a), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(probs4, probs1, rtol=1e-5, atol=1e-5)


def test_bfloat16_compute_keeps_float32_parameters():
    batches = _batches(2)
    loss32, _, _, _ = _run_steps(jax.devices(), batches)
    loss16, state16, probs16, _ = _run_steps(jax.devices(), batches, jnp.bfloat16)
    params = nnx.filter_state(state16["model"], nnx.Param)
    assert {x.dtype for x in jax.tree.leaves(params)} == {np.dtype(np.float32)}
    assert probs16.dtype == np.float32
    np.testing.assert_allclose(loss16, loss32, atol=0.05)


# ----------------------------------------------------------------------------- runs
def _final_state(workdir: Path) -> tuple[int, dict]:
    ckpt = checkpoints.Checkpointer(workdir / "checkpoints", keep=10)
    step = ckpt.latest_step()
    state, _ = ckpt.restore_raw(step)
    ckpt.close()
    return step, state


def _assert_trees_equal(a, b):
    flat_a, flat_b = (
        jax.tree_util.tree_flatten_with_path(a)[0],
        dict(jax.tree_util.tree_flatten_with_path(b)[0]),
    )
    assert len(flat_a) == len(flat_b)
    for path, x in flat_a:
        y = flat_b[path]
        if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
            x, y = jax.random.key_data(x), jax.random.key_data(y)
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y), err_msg=str(path))


def _tensorboard_tags(logdir: Path) -> set[str]:
    """Tags in tensorboardX event files."""
    return {v.tag for event in train_logs.read_events(logdir) for v in event.summary.value}


def test_nan_batch_stops_with_step_and_subjects(tmp_path, compile_cache):
    pipeline = FakePipeline(nan_at=5)
    config = tiny_config(checkpoint_every_steps=2)
    with pytest.raises(loop.NonFiniteLossError) as err:
        loop.train_and_evaluate(config, tmp_path, pipeline=pipeline)
    message = str(err.value)
    assert "step 5 " in message and "(epoch 2)" in message
    assert str(pipeline.train_iter.poisoned_ids) in message
    assert "last good checkpoint (step 4)" in message
    # Saved: 2, 3 (epoch end), 4; nothing after the bad step, and step 4 reads back finite.
    step, state = _final_state(tmp_path)
    assert step == 4
    floats = [x for x in jax.tree.leaves(state) if jax.dtypes.issubdtype(x.dtype, np.floating)]
    assert all(np.isfinite(np.asarray(x)).all() for x in floats)


def test_killed_run_resumes_to_the_same_parameters(tmp_path, compile_cache):
    config = tiny_config()
    results = loop.train_and_evaluate(config, tmp_path / "a", pipeline=FakePipeline())
    # The uninterrupted run's outputs.
    assert {"test.image.auc", "test.subject.auc", "validation.image.auc"} <= set(results)
    assert json.loads((tmp_path / "a" / "results.json").read_text()).keys() == results.keys()
    rows = (tmp_path / "a" / "predictions_test.csv").read_text().splitlines()
    assert rows[0] == "subject_id,label,label_name,prob_necrosis,prob_recurrence"
    assert len(rows) == 1 + SIZES["test"]
    tags = _tensorboard_tags(tmp_path / "a" / "tensorboard")
    assert {"train/loss", "train/learning_rate", "train/grad_norm"} <= tags
    assert {"train/examples_per_second", "validation/loss", "validation/image.auc"} <= tags
    assert "config/text_summary" in tags

    # The same run, killed with SIGKILL once its first checkpoint is on disk, then rerun.
    killed = tmp_path / "b"
    log = open(tmp_path / "killed.log", "w")
    proc = subprocess.Popen(
        [sys.executable, __file__, str(killed), str(compile_cache), "0.4"],
        cwd=REPO,
        env={**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=4"},
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    deadline = time.time() + 120
    while not any(p.name.isdigit() for p in (killed / "checkpoints").glob("*")):
        assert proc.poll() is None, (tmp_path / "killed.log").read_text()[-3000:]
        assert time.time() < deadline, "no checkpoint within 120 s"
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not list(killed.glob("*.json")) + list(killed.glob("*.csv"))  # no final output yet
    killed_at = checkpoints.Checkpointer(killed / "checkpoints", keep=10).latest_step()
    assert killed_at < 9, "the kill should land before the end of training"
    resumed = loop.train_and_evaluate(config, killed, pipeline=FakePipeline())
    # Only complete step folders: a save the kill cut short left nothing behind.
    assert all(p.name.isdigit() for p in (killed / "checkpoints").iterdir())

    step_a, state_a = _final_state(tmp_path / "a")
    step_b, state_b = _final_state(killed)
    assert step_a == step_b == 9
    _assert_trees_equal(state_a, state_b)
    assert resumed.keys() == results.keys()
    for k, v in results.items():
        if k != "train.steps_per_second":
            np.testing.assert_equal(resumed[k], v, err_msg=k)


# ----------------------------------------------------------------------------- real configs
def _load_config(path: str, arg: str):
    spec = importlib.util.spec_from_file_location("config_module", REPO / path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config(arg)


@pytest.mark.parametrize("path", ["configs/ern.py", "configs/resnet3d.py"])
def test_tiny_config_end_to_end(path, tmp_path, compile_cache):
    config = _load_config(path, "tiny")
    results = loop.train_and_evaluate(config, tmp_path)
    for key in ("test.image.auc", "test.subject.auc", "test.subject.accuracy"):
        assert key in results
    assert (tmp_path / "results.json").exists()
    assert (tmp_path / "predictions_test.csv").exists()
    done = checkpoints.Checkpointer(tmp_path / "checkpoints", keep=3).latest_step()
    # One more epoch resumes from the last checkpoint: the real Grain iterator, built anew,
    # takes its saved position.
    config.train.num_epochs += 1
    loop.train_and_evaluate(config, tmp_path)
    more = checkpoints.Checkpointer(tmp_path / "checkpoints", keep=3).latest_step()
    assert more == done * config.train.num_epochs // (config.train.num_epochs - 1)


def _subprocess_main(workdir: str, cache_dir: str, delay: str) -> None:
    """The killed run of test_killed_run_resumes_to_the_same_parameters."""
    jax.config.update("jax_num_cpu_devices", 4)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
    compilation_cache.set_cache_dir(cache_dir)
    loop.train_and_evaluate(tiny_config(), workdir, pipeline=FakePipeline(delay=float(delay)))


if __name__ == "__main__":
    _subprocess_main(*sys.argv[1:4])


def test_init_from_a_finished_run(tmp_path, compile_cache):
    """config.model.init_from = an ernjax run: the new run starts from its weights, reported."""
    first = tiny_config(num_epochs=1)
    loop.train_and_evaluate(first, tmp_path / "a", pipeline=FakePipeline())
    second = tiny_config(num_epochs=0)
    second.model.init_from = str(tmp_path / "a")
    # 0 epochs: nothing trains, so the final evaluation sees the loaded weights.
    loop.train_and_evaluate(second, tmp_path / "b", pipeline=FakePipeline())
    report = json.loads((tmp_path / "b" / "init_report.json").read_text())
    assert report["source"] == "ernjax" and report["loaded"]
    assert not report["new"]
    a = json.loads((tmp_path / "a" / "results.json").read_text())
    b = json.loads((tmp_path / "b" / "results.json").read_text())
    assert b["test.image.auc"] == pytest.approx(a["test.image.auc"])


def test_select_checkpoint_last_scores_the_final_step(tmp_path, compile_cache):
    config = tiny_config(num_epochs=2)
    config.train.select_checkpoint = "last"
    results = loop.train_and_evaluate(config, tmp_path, pipeline=FakePipeline())
    last = checkpoints.Checkpointer(tmp_path / "checkpoints", keep=3).latest_step()
    assert results["checkpoint_step"] == last
    config.train.select_checkpoint = "first"
    with pytest.raises(ValueError, match="select_checkpoint='first'"):
        loop.train_and_evaluate(config, tmp_path, pipeline=FakePipeline())


def test_ema_update_is_the_warmed_up_average():
    """Float leaves move by min(decay, (1 + t) / (10 + t)); integer leaves are copied."""
    ema = {"w": jnp.array([0.0, 10.0]), "count": jnp.array(3)}
    new = {"w": jnp.array([1.0, 0.0]), "count": jnp.array(4)}
    out = train_steps.ema_update(ema, new, jnp.array(2), 0.99)
    d = 3.0 / 12.0  # step 2: the warm-up term is below the decay
    np.testing.assert_allclose(out["w"], [d * 0 + (1 - d) * 1, d * 10 + (1 - d) * 0], rtol=1e-6)
    assert int(out["count"]) == 4
    late = train_steps.ema_update(ema, new, jnp.array(10_000), 0.9)
    np.testing.assert_allclose(late["w"], [0.1, 9.0], rtol=1e-6)


def test_ema_run_scores_and_serves_the_averaged_weights(tmp_path, compile_cache):
    """With ema_decay, checkpoints keep both; validation, scores and load_model use the EMA."""
    config = tiny_config(num_epochs=2, ema_decay=0.9, select_checkpoint="last")
    results = loop.train_and_evaluate(config, tmp_path, pipeline=FakePipeline())
    step, raw = _final_state(tmp_path)
    assert results["checkpoint_step"] == step and {"model", "opt", "ema"} <= set(raw)
    kernel = ("conv1", "kernel", "value")
    ema_k, model_k = (np.asarray(_get(raw[k], kernel)) for k in ("ema", "model"))
    assert not np.allclose(ema_k, model_k)  # the average lags the trained weights
    scored = checkpoints.load_model(tmp_path, build=lambda c: train_steps.create_model(c, SHAPE))
    np.testing.assert_array_equal(np.asarray(scored.model.conv1.kernel[...]), ema_k)


def _get(tree, path):
    for key in path:
        if key not in tree and key == "value":
            return tree
        tree = tree[key]
    return tree


def test_recipe_settings_fail_before_any_data_work(tmp_path):
    class NoData(FakePipeline):
        def prepare(self, config, workdir):
            raise AssertionError("prepare must not run")

    for field, value, match in (
        ("train.sampling", "stratified", "config.train.sampling='stratified'"),
        ("train.ema_decay", 1.0, "config.train.ema_decay=1.0"),
        ("model.norm", "layer", "config.model.norm='layer'"),
        ("train.class_weight_counts", "slices", "class_weight_counts='slices': expected"),
    ):
        config = tiny_config()
        section, name = field.split(".")
        config[section][name] = value
        with pytest.raises(ValueError, match=match):
            loop.train_and_evaluate(config, tmp_path, pipeline=NoData())
    config = tiny_config()
    config.model.norm, config.model.init_from = "group", str(tmp_path / "medicalnet.pth")
    with pytest.raises(ValueError, match="PyTorch weights carry BatchNorm statistics"):
        loop.train_and_evaluate(config, tmp_path, pipeline=NoData())


@pytest.mark.parametrize("counted", ["images", "subjects"])
def test_class_weights_count_images_or_subjects(tmp_path, monkeypatch, counted):
    # Gao 2020's 1.5 / 0.75 are patient counts; the default counts the images the loss sums.
    seen = []
    build = train_steps.build_training

    def spy(config, model, class_counts, spe):
        seen.append(tuple(class_counts))
        return build(config, model, class_counts, spe)

    monkeypatch.setattr(loop, "build_training", spy)

    class Counts(FakePipeline):
        def prepare(self, config, workdir):
            info = super().prepare(config, workdir)
            return dataclasses.replace(info, train_subject_class_counts=(3, 5))

    config = tiny_config(num_epochs=1, class_weight_counts=counted)
    loop.train_and_evaluate(config, tmp_path, pipeline=Counts())
    info = FakePipeline().prepare(config, tmp_path)
    assert seen == [info.train_class_counts if counted == "images" else (3, 5)]


def test_balanced_sampling_trains_with_unit_class_weights():
    config = tiny_config()
    config.train.sampling = "balanced"
    model = train_steps.create_model(config, SHAPE)
    _, _, weights = train_steps.build_training(config, model, (30, 10), 3)
    np.testing.assert_array_equal(weights, [1.0, 1.0])
    config.train.sampling = "shuffle"
    _, _, weights = train_steps.build_training(config, model, (30, 10), 3)
    np.testing.assert_allclose(weights, [40 / 60, 40 / 20])


def test_bfloat16_on_cpu_devices_computes_in_float32_and_says_so(caplog):
    with caplog.at_level(logging.WARNING):
        assert train_steps.compute_dtype("bfloat16", ["cpu"]) == "float32"
    assert "computing in float32" in caplog.text
    assert train_steps.compute_dtype("bfloat16", ["gpu"]) == "bfloat16"
    assert train_steps.compute_dtype("float32", ["cpu"]) == "float32"
    config = tiny_config()
    config.train.dtype = "bfloat16"
    model = train_steps.create_model(config, (6, 6, 3))
    model.eval()
    assert model.features(jnp.zeros((1, 6, 6, 3))).dtype == jnp.float32
