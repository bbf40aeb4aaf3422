"""Inception-v3 and Inception-ResNet-v2: published parameter counts, shapes, dtypes, 2D only."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from ernjax.models import count_params, create_model, inception, model_names


@nnx.jit
def forward(model, x):
    feats = model.features(x)
    return model(x), feats


def build(name, **kw):
    kw = {"in_channels": 4, "num_classes": 2, "rngs": nnx.Rngs(params=0, dropout=1), **kw}
    return create_model(name, **kw)


@functools.cache
def abstract(name):
    """The ImageNet-shaped model (3 channels, 1000 classes) as shapes only: nothing allocated.

    Cached: tracing Inception-ResNet-v2's initializers alone takes seconds on a small CPU.
    """
    return nnx.eval_shape(lambda: build(name, in_channels=3, num_classes=1000))


@pytest.mark.parametrize(
    "name, params, bn_stats",
    [
        # torchvision inception_v3(aux_logits=False); Keras: 23,817,352 trainable + 34,432 stats.
        ("inception_v3", 23_834_568, 34_432),
        # timm inception_resnet_v2; Keras: 55,813,192 trainable + 60,544 stats.
        ("inception_resnet_v2", 55_843_464, 60_544),
    ],
)
def test_parameter_counts_match_published(name, params, bn_stats):
    model = abstract(name)
    assert count_params(model) == params
    stats = sum(x.size for x in jax.tree.leaves(nnx.state(model, nnx.BatchStat)))
    assert stats == bn_stats  # Keras' non-trainable count: one mean and variance per BN channel
    assert name in model_names()


# One compile per model (the cost of this file): float32 for one, bfloat16 for the other.
@pytest.mark.parametrize(
    "name, width, dtype",
    [
        ("inception_v3", 2048, jnp.float32),
        ("inception_resnet_v2", 1536, jnp.bfloat16),
    ],
)
def test_forward_at_minimum_size_four_channels(name, width, dtype):
    model = build(name, dtype=dtype)
    model.eval()
    x = jnp.asarray(np.random.default_rng(0).standard_normal((2, 75, 75, 4)), jnp.float32)
    logits, feats = forward(model, x)
    assert feats.shape == (2, 1, 1, width) and feats.dtype == dtype
    assert logits.shape == (2, 2) and logits.dtype == jnp.float32
    assert bool(jnp.all(jnp.isfinite(logits)))
    params = jax.tree.leaves(nnx.state(model, nnx.Param))
    assert {p.dtype for p in params} == {jnp.dtype(jnp.float32)}


@pytest.mark.parametrize("name", ["inception_v3", "inception_resnet_v2"])
def test_3d_and_too_small_inputs_are_clear_errors(name):
    with pytest.raises(ValueError, match=r"2D network.*spatial_dims=3"):
        build(name, spatial_dims=3)
    model = abstract(name)  # the size check runs before any parameter is touched
    with pytest.raises(ValueError, match=r"at least 75x75 pixels, got 74x80"):
        model(jnp.zeros((1, 74, 80, 3)))
    with pytest.raises(ValueError, match=r"channels-last input"):
        model(jnp.zeros((1, 3, 80, 80)))


def test_unknown_arch():
    with pytest.raises(ValueError, match="unknown Inception arch 'v4'"):
        inception.build(arch="v4", in_channels=1, num_classes=2, rngs=nnx.Rngs(0))
