"""Building blocks shared by every model family: N-d convs, normalization and the classifier head.

Everything is channels-last ([B, *spatial, C]), so one code path serves 2D and 3D: the kernel
of a conv is simply a tuple of `spatial_dims` sizes. Parameters are always float32; `dtype` is
the compute dtype (float32 or bfloat16).
"""

import contextlib
import contextvars
import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from ernjax.models import cpu_fast_paths


def host_init(sample):
    """Makes an initializer that samples with numpy on the host, seeded from the JAX key's bits.

    One key gives one set of weights whether a model is built eagerly or under tracing
    (`nnx.jit`, `nnx.vmap`): traced, the same numpy sampler runs as a `jax.pure_callback` (under
    `nnx.eval_shape` it does not run at all). Numpy rather than `jax.random` because eager
    `jax.random` compiles one XLA program per parameter shape (about 0.15 s each on a CPU, ~20 s
    for ERN-Net's 80 shapes), where numpy costs nothing.

    Args:
      sample: `sample(numpy_generator, shape) -> numpy array`, the distribution.

    Returns:
      An initializer `(key, shape, dtype) -> array`.
    """

    def draw(bits, shape, dtype):
        generator = np.random.default_rng(np.asarray(bits).ravel().tolist())
        return np.asarray(sample(generator, shape), dtype)

    def init(key, shape, dtype=jnp.float32):
        shape, dtype = tuple(shape), jnp.dtype(dtype)
        bits = jax.random.key_data(key)
        if not isinstance(bits, jax.core.Tracer):
            return jnp.asarray(draw(bits, shape, dtype))
        return jax.pure_callback(
            functools.partial(draw, shape=shape, dtype=dtype),
            jax.ShapeDtypeStruct(shape, dtype),
            bits,
            vmap_method="sequential",  # one draw per key of a batch, as eagerly
        )

    return init


def _fan_out(shape):
    return int(np.prod(shape[:-2], dtype=np.int64)) * shape[-1] if len(shape) > 2 else shape[-1]


# He-normal on fan_out (torch `kaiming_normal_(mode="fan_out")`, the init of MONAI's ResNet and of
# the official EfficientNet): an untruncated normal with variance 2 / (prod(kernel) * out).
conv_init = host_init(lambda rng, shape: rng.normal(0.0, np.sqrt(2.0 / _fan_out(shape)), shape))
# Dense layers: uniform(+-1/sqrt(fan_in)), torch.nn.Linear's default (MONAI's ResNet head; every
# head here, see efficientnet.py for why not EfficientNet's fan_out variant).
dense_init_fan_in = host_init(lambda rng, shape: rng.uniform(-1.0, 1.0, shape) / np.sqrt(shape[0]))


def conv_general_dilated(
    lhs, rhs, window_strides, padding, lhs_dilation=None, rhs_dilation=None, **kwargs
) -> jax.Array:
    """`lax.conv_general_dilated`, with a faster form where it runs on a CPU.

    The depthwise, 1x1 and dense 3D convs XLA:CPU runs slowly take the forms of
    `cpu_fast_paths.conv_form` on a CPU (same result to float rounding); anything else, any
    other platform, and `ERNJAX_CPU_FAST_PATHS=0` give plain lax.

    Args:
      lhs: input [B, *spatial, C].
      rhs: kernel [*kernel, C / groups, O].
      window_strides: per-axis strides.
      padding: "SAME", "VALID" or per-axis (low, high) pairs.
      lhs_dilation: must be None/ones for a fast path.
      rhs_dilation: must be None/ones for a fast path.
      **kwargs: the rest of lax.conv_general_dilated's keywords.

    Returns:
      The convolution output.
    """

    def plain(x, w):
        return jax.lax.conv_general_dilated(
            x, w, window_strides, padding, lhs_dilation, rhs_dilation, **kwargs
        )

    fast = cpu_fast_paths.conv_form(
        lhs, rhs, window_strides, padding, lhs_dilation, rhs_dilation, kwargs
    )
    return cpu_fast_paths.on_cpu(fast, plain, lhs, rhs)


def max_pool(x: jax.Array, window: int, stride: int, padding: int = 0) -> jax.Array:
    """Max pooling over every spatial axis of a channels-last [B, *spatial, C] batch.

    The forward is `nnx.max_pool` everywhere. On a CPU the gradient is
    `cpu_fast_paths.max_pool`'s: a window's gradient goes to its first maximum in PyTorch's scan
    order, 5x faster than XLA:CPU's own; elsewhere, or with `ERNJAX_CPU_FAST_PATHS=0`, lax's.

    Args:
      x: the batch.
      window: window edge, the same along every spatial axis.
      stride: stride along every spatial axis.
      padding: symmetric padding with -inf on both sides of every spatial axis (PyTorch's).

    Returns:
      The pooled batch.
    """
    return cpu_fast_paths.on_cpu(
        lambda v: cpu_fast_paths.max_pool(v, window, stride, padding),
        lambda v: cpu_fast_paths.reduce_window_max(v, window, stride, padding),
        x,
    )


def conv(
    in_features: int,
    out_features: int,
    kernel_size: int,
    *,
    spatial_dims: int,
    stride: int = 1,
    padding: str | int = "SAME",
    groups: int = 1,
    use_bias: bool = False,
    dtype=jnp.float32,
    rngs: nnx.Rngs,
) -> nnx.Conv:
    """Returns a `spatial_dims`-d convolution with a cubic kernel.

    Args:
      in_features: input channels.
      out_features: output channels.
      kernel_size: kernel edge length, the same along every spatial axis.
      spatial_dims: 2 or 3.
      stride: stride along every spatial axis.
      padding: "SAME" (TensorFlow's, asymmetric when the stride is 2) or an int p for a
        symmetric zero padding of p on both sides of every axis (PyTorch's `padding=p`).
      groups: feature groups; `groups == in_features` makes it depthwise.
      use_bias: whether to add a bias.
      dtype: compute dtype.
      rngs: random streams for the initializer.

    Returns:
      The `nnx.Conv` module.
    """
    if isinstance(padding, int):
        padding = [(padding, padding)] * spatial_dims
    return nnx.Conv(
        in_features,
        out_features,
        kernel_size=(kernel_size,) * spatial_dims,
        strides=(stride,) * spatial_dims,
        padding=padding,
        feature_group_count=groups,
        use_bias=use_bias,
        conv_general_dilated=conv_general_dilated,
        kernel_init=conv_init,
        dtype=dtype,
        param_dtype=jnp.float32,
        rngs=rngs,
    )


NORMS = ("batch", "group", "instance")
# The normalization layer `norm_layer` builds: set for one model's construction by
# `create_model(norm=...)` (ernjax.models), so that every family gets the choice without
# threading it through each block's constructor.
_NORM = contextvars.ContextVar("ernjax_norm", default="batch")


def check_norm(kind: str) -> None:
    """Raises ValueError, naming `config.model.norm`, unless `kind` is one of NORMS."""
    if kind not in NORMS:
        raise ValueError(f"config.model.norm={kind!r}: expected one of {', '.join(NORMS)}")


@contextlib.contextmanager
def norm_kind(kind: str):
    """Within the block, `norm_layer` builds `kind` layers: "batch", "group" or "instance"."""
    check_norm(kind)
    token = _NORM.set(kind)
    try:
        yield
    finally:
        _NORM.reset(token)


def group_count(features: int, kind: str) -> int:
    """Groups of a "group" (GroupNorm, at most 32: Wu & He 2018) or "instance" layer."""
    return features if kind == "instance" else math.gcd(features, 32)


def norm_layer(
    features: int, *, momentum: float, epsilon: float, dtype=jnp.float32, rngs: nnx.Rngs
) -> nnx.Module:
    """Returns the normalization over the channel (last) axis chosen by `norm_kind`.

    "batch" (the default, every paper's) is BatchNorm: statistics of the batch while training,
    running averages at inference, so with a batch of 2-4 volumes the two differ. "group"
    (GroupNorm, `group_count` groups) and "instance" (one group per channel) normalize each
    example on its own, the same in training and inference, whatever the batch size.

    Args:
      features: channels.
      momentum: BatchNorm's Flax momentum, i.e. 1 - PyTorch's momentum (PyTorch 0.1 is Flax 0.9).
      epsilon: added to the variance.
      dtype: compute dtype (statistics are reduced in float32 regardless).
      rngs: random streams (unused by the initializers, required by Flax).

    Returns:
      `nnx.BatchNorm` (in training mode until `model.eval()`) or `nnx.GroupNorm`.
    """
    kind = _NORM.get()
    if kind != "batch":
        return nnx.GroupNorm(
            features,
            num_groups=group_count(features, kind),
            epsilon=epsilon,
            dtype=dtype,
            param_dtype=jnp.float32,
            rngs=rngs,
        )
    return nnx.BatchNorm(
        features,
        momentum=momentum,
        epsilon=epsilon,
        dtype=dtype,
        param_dtype=jnp.float32,
        rngs=rngs,
    )


def global_avg_pool(x: jax.Array) -> jax.Array:
    """Means a [B, *spatial, C] map over its spatial axes, in float32; returns [B, C]."""
    return jnp.mean(x.astype(jnp.float32), axis=tuple(range(1, x.ndim - 1)))


class Classifier(nnx.Module):
    """Base of every model: `__call__(x) == classify(features(x))`.

    Subclasses build the convolutional trunk in `features` and call `_init_head` in their
    constructor. Grad-CAM differentiates `classify` with respect to the output of `features`.
    """

    def _init_head(
        self,
        features: int,
        num_classes: int,
        dropout: float,
        kernel_init,
        rngs: nnx.Rngs,
    ) -> None:
        # No stream is taken when there is nothing to drop: nnx.Rngs(params=...) suffices then.
        self.dropout = nnx.Dropout(dropout, rngs=rngs if dropout > 0 else None)
        # The head runs in float32 whatever the compute dtype: logits feed the loss.
        self.fc = nnx.Linear(
            features,
            num_classes,
            kernel_init=kernel_init,
            dtype=jnp.float32,
            param_dtype=jnp.float32,
            rngs=rngs,
        )

    def features(self, x: jax.Array) -> jax.Array:
        """Returns the feature map of the last conv block, [B, *spatial', F] (pre-pooling)."""
        raise NotImplementedError

    def classify(self, features: jax.Array) -> jax.Array:
        """Global average pooling, dropout and the dense layer.

        Args:
          features: the output of `features`, [B, *spatial', F].

        Returns:
          Float32 logits [B, num_classes].
        """
        pooled = global_avg_pool(features)
        return self.fc(self.dropout(pooled))

    def __call__(self, x: jax.Array) -> jax.Array:
        """Returns float32 logits [B, num_classes] for a channels-last batch [B, *spatial, C]."""
        return self.classify(self.features(x))


def check_input(x: jax.Array, spatial_dims: int, in_channels: int, model: str) -> None:
    """Raises a ValueError naming the expected layout when `x` cannot be this model's input."""
    if x.ndim != spatial_dims + 2 or x.shape[-1] != in_channels:
        raise ValueError(
            f"{model} expects channels-last input [B, {', '.join(['S'] * spatial_dims)}, "
            f"{in_channels}] ({spatial_dims}D, {in_channels} channels), got shape {x.shape}"
        )
