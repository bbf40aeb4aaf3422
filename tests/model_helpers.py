"""Helpers shared by the model tests: one compiled forward, the model contract, a builder."""

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from ernjax.models import create_model


# Compiled once per model and shape: eager dispatch would compile every op on its own (slower).
@nnx.jit
def forward(model, x):
    return model(x)


@nnx.jit
def contract(model, x):
    """Logits, the feature map, classify(features) and d logit_1 / d features."""
    feats = model.features(x)
    grads = jax.grad(lambda f: model.classify(f)[:, 1].sum())(feats)
    return model(x), feats, model.classify(feats), grads


def build(name, spatial_dims=2, in_channels=3, num_classes=2, **kw):
    """A registry model with fixed params/dropout seeds."""
    return create_model(
        name,
        in_channels=in_channels,
        num_classes=num_classes,
        spatial_dims=spatial_dims,
        rngs=nnx.Rngs(params=0, dropout=1),
        **kw,
    )


def rand(*shape, seed=0):
    """Standard normal float32 array of `shape`."""
    return jnp.asarray(np.random.default_rng(seed).standard_normal(shape), jnp.float32)
