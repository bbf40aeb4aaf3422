"""The compiled steps of a run, the device mesh and how host data is placed on it.

Data parallelism the way JAX compiles pmap today: one `jax.jit` train step over a 1-D device mesh
("data"), parameters and optimizer state replicated, the global batch sharded over all devices of
all processes. BatchNorm statistics are then those of the global batch, with no `pmean` to write.
The step is a pure function of (state, batch): the NNX model and optimizer are `nnx.split` once
into graph definitions and a state pytree, and merged inside the step. A plain `jax.jit` (rather
than `nnx.jit`) gives explicit in/out shardings and buffer donation on the very pytree Orbax
saves, and no Python graph traversal per step.
"""

import dataclasses
import logging
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from jax.sharding import AxisType, NamedSharding
from jax.sharding import PartitionSpec as P

from ernjax import models
from ernjax.data.spec import DEVICE_KEYS  # the batch fields that go to the devices
from ernjax.train.objective import (
    class_weights,
    learning_rate_schedule,
    make_optimizer,
    weighted_cross_entropy,
)


@dataclasses.dataclass
class Steps:
    """The jit-compiled steps of one run and its initial, replicated state.

    `train(state, batch) -> (state, {"loss", "grad_norm"})` donates `state`;
    `evaluate(scored_model(state), batch) -> {"probs", "nll", "label", "valid"}` (replicated
    outputs). `state` is {"model", "opt"}, plus "ema" (the averaged model state) with EMA on.
    """

    state: dict
    train: Any
    evaluate: Any
    batch_sharding: NamedSharding
    num_params: int = 0


def scored_model(state: dict):
    """The model state that is validated, scored and predicted with: the EMA one if kept."""
    return state["ema"] if "ema" in state else state["model"]


def ema_update(ema, model_state, step, decay: float):
    """One EMA step of every float leaf (weights, BatchNorm statistics); others are copied.

    The decay is warmed up as min(decay, (1 + step) / (10 + step)) (TensorFlow's
    `ExponentialMovingAverage(num_updates=step)`), so the first few hundred steps of a short
    run are not dominated by the random initial weights.
    """
    d = jnp.minimum(decay, (1.0 + step) / (10.0 + step))

    def mix(e, m):
        if jnp.issubdtype(m.dtype, jnp.floating):
            return (d * e + (1.0 - d) * m).astype(m.dtype)
        return m

    return jax.tree.map(mix, ema, model_state)


def build_steps(
    model: nnx.Module, optimizer: nnx.Optimizer, weights, mesh, ema_decay: float = 0.0
) -> Steps:
    """Splits model and optimizer and compiles the data-parallel train and eval steps.

    Args:
      model: the NNX model (its train/eval mode is set here).
      optimizer: `nnx.Optimizer(model, tx, wrt=nnx.Param)`.
      weights: per-class loss weights [K].
      mesh: a 1-D mesh with axis "data"; the batch is sharded over it.
      ema_decay: > 0 keeps an exponential moving average of the model state (`ema_update`).

    Returns:
      Steps, with the state placed (replicated) on the mesh.
    """
    replicated, batch_sharding = NamedSharding(mesh, P()), NamedSharding(mesh, P("data"))
    weights = np.asarray(weights, np.float32)
    model.eval()
    eval_def, _ = nnx.split(model)
    model.train()  # train/eval mode is static: it lives in the graph definitions
    train_def, model_state = nnx.split(model)
    opt_def, opt_state = nnx.split(optimizer)

    def train_step(state, batch):
        model = nnx.merge(train_def, state["model"])
        opt = nnx.merge(opt_def, state["opt"])

        def loss_fn(m):
            logits = m(batch["image"])
            return weighted_cross_entropy(logits, batch["label"], weights, batch["valid"])[0]

        loss, grads = nnx.value_and_grad(loss_fn)(model)
        opt.update(model, grads)
        metrics = {"loss": loss, "grad_norm": optax.tree.norm(grads)}
        new = {"model": nnx.state(model), "opt": nnx.state(opt)}
        if "ema" in state:
            new["ema"] = ema_update(state["ema"], new["model"], opt.step[...], ema_decay)
        return new, metrics

    def eval_step(model_state, batch):
        logits = nnx.merge(eval_def, model_state)(batch["image"])
        _, nll = weighted_cross_entropy(logits, batch["label"], weights, batch["valid"])
        probs = jax.nn.softmax(logits.astype(jnp.float32))
        return {"probs": probs, "nll": nll, "label": batch["label"], "valid": batch["valid"]}

    state = {"model": model_state, "opt": opt_state}
    if ema_decay > 0:
        state["ema"] = model_state  # `replicate` places each leaf in a buffer of its own
    state = replicate(state, replicated)
    return Steps(
        state=state,
        train=jax.jit(
            train_step,
            in_shardings=(replicated, batch_sharding),
            out_shardings=(replicated, replicated),
            donate_argnums=0,
        ),
        evaluate=jax.jit(
            eval_step, in_shardings=(replicated, batch_sharding), out_shardings=replicated
        ),
        batch_sharding=batch_sharding,
        num_params=models.count_params(model),
    )


def replicate(tree, sharding: NamedSharding):
    """Places host values (the same on every process) on all devices of `sharding`.

    `jax.device_put` refuses devices of other processes; building each array from a callback
    works on one host and many alike. Typed PRNG keys travel as their key data.
    """

    def put(x):
        if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
            return jax.random.wrap_key_data(
                put(jax.random.key_data(x)), impl=jax.random.key_impl(x)
            )
        x = np.asarray(x)
        return jax.make_array_from_callback(x.shape, sharding, lambda index: x[index])

    return jax.tree.map(put, tree)


def device_batch(batch: dict, sharding: NamedSharding) -> dict:
    """Returns global arrays sharded on the mesh from this process's share of a batch."""
    return {
        k: jax.make_array_from_process_local_data(sharding, np.asarray(batch[k]))
        for k in DEVICE_KEYS
    }


def make_mesh() -> jax.sharding.Mesh:
    """A 1-D mesh "data" over every device of every process.

    Auto axes (GSPMD propagation): the models need no sharding annotations, and XLA inserts the
    cross-device reductions (BatchNorm statistics, gradient sums) that pmap code writes by hand.
    """
    return jax.make_mesh((jax.device_count(),), ("data",), axis_types=(AxisType.Auto,))


def compute_dtype(requested: str, platforms=None) -> str:
    """The dtype a run computes in: `config.train.dtype`, except bfloat16 on CPUs, which is float32.

    XLA's CPU backend converts bfloat16 and computes at or below float32 speed (the train step ran
    at 0.26-0.36x MONAI's autocast and 0.6-0.8x its own float32, benchmarks/results/run.md), so
    bfloat16 buys a CPU run nothing but rounding. The choice is logged.

    Args:
      requested: "float32" or "bfloat16".
      platforms: the devices' platforms (default: those of `jax.devices()`).
    """
    platforms = {d.platform for d in jax.devices()} if platforms is None else set(platforms)
    if requested == "bfloat16" and platforms == {"cpu"}:
        logging.warning(
            "train.dtype=bfloat16 asked for, but the devices are CPUs, where XLA runs bfloat16 "
            "slower than float32: computing in float32 (bfloat16 is for GPUs and TPUs)"
        )
        return "float32"
    return requested


def create_model(config, image_shape) -> nnx.Module:
    """The configured model for examples of `image_shape` (channels last), e.g. (96, 96, 3).

    It computes in `compute_dtype(config.train.dtype)`: float32 on a CPU whatever is asked.
    """
    return models.create_model(
        config.model.name,
        in_channels=image_shape[-1],
        num_classes=config.model.num_classes,
        spatial_dims=len(image_shape) - 1,
        dropout=config.model.dropout,
        dtype=compute_dtype(config.train.dtype),
        norm=config.model.get("norm", "batch"),
        rngs=nnx.Rngs(config.seed),
    )


def build_training(config, model: nnx.Module, class_counts, steps_per_epoch: int):
    """The optimizer and compiled steps for `model`.

    Args:
      config: the full config (train).
      model: from `create_model` (pretrained weights already loaded, if any).
      class_counts: training examples per class (for the default class weights).
      steps_per_epoch: for the learning-rate schedule.

    Returns:
      (Steps with a fresh replicated state, the learning-rate schedule, the class weights).
    """
    schedule = learning_rate_schedule(config.train, steps_per_epoch)
    optimizer = nnx.Optimizer(model, make_optimizer(config.train, schedule), wrt=nnx.Param)
    explicit = tuple(config.train.class_weights)
    if config.train.sampling == "balanced" and not explicit:
        explicit = (1.0,) * len(class_counts)  # the sampler balances the classes already
    weights = class_weights(class_counts, explicit)
    steps = build_steps(model, optimizer, weights, make_mesh(), config.train.ema_decay)
    return steps, schedule, weights
