"""Building blocks shared by every model family: N-d convs, BatchNorm and the classifier head.

Everything is channels-last ([B, *spatial, C]), so one code path serves 2D and 3D: the kernel
of a conv is simply a tuple of `spatial_dims` sizes. Parameters are always float32; `dtype` is
the compute dtype (float32 or bfloat16).
"""

import functools
import itertools

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx


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
    """`lax.conv_general_dilated` with fast paths for the convs XLA:CPU runs slowly.

    On the CPU backend, for an undilated channels-last conv (Flax's layout):
    - a depthwise conv runs as a sum of shifted slices (`_depthwise_by_slices`);
    - a 1x1 conv runs as a matrix product (`_pointwise_by_dot`);
    - any other dense 3D conv runs as one 2D conv with the depth taps folded into the channels
      (`_conv3d_by_2d`).
    Anything else, and everything on other backends, is plain lax. Same result to float
    rounding; `tests/test_models.py` checks values and gradients against lax.

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
    plain = (
        jax.default_backend() == "cpu"
        and all(d == 1 for d in (lhs_dilation or ()) + (rhs_dilation or ()))
        and kwargs.get("dimension_numbers") == _channels_last_numbers(lhs.ndim)
        and kwargs.get("batch_group_count", 1) == 1
    )
    if not plain:
        return jax.lax.conv_general_dilated(
            lhs, rhs, window_strides, padding, lhs_dilation, rhs_dilation, **kwargs
        )
    if isinstance(padding, str):
        padding = jax.lax.padtype_to_pads(lhs.shape[1:-1], rhs.shape[:-2], window_strides, padding)
    padding = [tuple(p) for p in padding]
    groups = kwargs.get("feature_group_count", 1)
    if rhs.shape[-2] == 1 and groups == lhs.shape[-1] == rhs.shape[-1]:
        return _depthwise_by_slices(lhs, rhs, window_strides, padding)
    if groups == 1 and set(rhs.shape[:-2]) == {1} and set(padding) == {(0, 0)}:
        return _pointwise_by_dot(lhs, rhs, window_strides, kwargs)
    if groups == 1 and lhs.ndim == 5:
        return _conv3d_by_2d(lhs, rhs, window_strides, padding, kwargs)
    return jax.lax.conv_general_dilated(lhs, rhs, window_strides, padding, **kwargs)


def _depthwise_by_slices(lhs, rhs, window_strides, padding):
    """A depthwise conv as a sum of k^d shifted, strided slices times per-channel weights.

    XLA:CPU runs grouped convolutions with one channel per group 7-60x slower than oneDNN
    (PyTorch) and their input gradients slower still; this form fuses into one elementwise loop
    and is about 15x faster forward and 7-10x faster backward (measured on a 2-core CPU,
    EfficientNet-B0 shapes).
    """
    nd = lhs.ndim - 2
    kernel = rhs.shape[:nd]
    x = jnp.pad(lhs, [(0, 0), *padding, (0, 0)])
    out = [(x.shape[1 + a] - kernel[a]) // window_strides[a] + 1 for a in range(nd)]
    acc_dtype = jnp.promote_types(lhs.dtype, jnp.float32)  # bfloat16 sums in float32
    y = jnp.zeros((x.shape[0], *out, x.shape[-1]), acc_dtype)
    for tap in itertools.product(*(range(k) for k in kernel)):
        tap_slice = x[_window(tap, out, window_strides)]
        y = y + tap_slice.astype(acc_dtype) * rhs[(*tap, 0)].astype(acc_dtype)
    return y.astype(lhs.dtype)


def _window(tap, out, strides):
    """Index of what kernel tap `tap` sees of a padded [B, *spatial, C] input, for `out` outputs."""
    return (
        slice(None),
        *(slice(t, t + (o - 1) * s + 1, s) for t, o, s in zip(tap, out, strides, strict=True)),
    )


def _pointwise_by_dot(lhs, rhs, window_strides, kwargs):
    """A 1x1 conv as a matrix product over the channel axis (after the stride's subsampling).

    XLA:CPU turns the gradients of a 1x1 conv into convolutions whose window spans the whole
    image, far slower than the equivalent matrix products: in EfficientNet-B1 at 224 px, batch
    16, one 16 -> 96 expansion's weight gradient took 290 ms and its input gradient 206 ms, for
    0.6 GFLOP each (the train step went from 4.22 to 5.18 examples/s with this path).
    """
    x = lhs[(slice(None), *(slice(None, None, s) for s in window_strides))]
    return jnp.einsum(
        "...i,io->...o",
        x,
        rhs.reshape(rhs.shape[-2:]),
        precision=kwargs.get("precision"),
        preferred_element_type=kwargs.get("preferred_element_type"),
    )


def _conv3d_by_2d(lhs, rhs, window_strides, padding, kwargs):
    """A dense 3D conv as one 2D conv over (H, W) whose channels are the kd depth taps.

    The kd depth-shifted (and depth-strided) copies of the input are stacked on the channel
    axis and the depth axis is folded into the batch, so the kernel [kd, kh, kw, I, O] becomes
    a 2D kernel [kh, kw, kd * I, O]. XLA:CPU runs 2D convs and their gradients on much faster
    paths than 3D ones: on a 2-core CPU, MONAI ResNet-10 shapes at 64^3, the 3x3x3 stride-2
    conv's input gradient is 30x faster this way, 3x3x3 stride-1 convs 1.5-2.3x, and the 7^3
    stem's forward 2.8x and its weight gradient 1.2x. The stacked copy holds kd times the
    input; XLA's planned peak memory of a MONAI ResNet-10 train step (64^3, batch 2) grows 7%
    (1.41 -> 1.51 GiB), and recomputing the copy in the backward pass (`jax.checkpoint`) did
    not lower it.
    """
    (pd, ph, pw), (sd, sh, sw) = padding, window_strides
    kd = rhs.shape[0]
    x = jnp.pad(lhs, [(0, 0), pd, (0, 0), (0, 0), (0, 0)])
    depth = (x.shape[1] - kd) // sd + 1
    taps = [x[:, t : t + (depth - 1) * sd + 1 : sd] for t in range(kd)]
    x = jnp.concatenate(taps, axis=-1)  # [B, D', H, W, kd * I], tap-major
    w = jnp.moveaxis(rhs, 0, 2).reshape(*rhs.shape[1:3], -1, rhs.shape[-1])  # same order
    y = jax.lax.conv_general_dilated(
        x.reshape(x.shape[0] * depth, *x.shape[2:]),  # no -1: sizes may be 0
        w,
        (sh, sw),
        (ph, pw),
        **{**kwargs, "dimension_numbers": _channels_last_numbers(4)},
    )
    return y.reshape(lhs.shape[0], depth, *y.shape[1:])


def max_pool(x: jax.Array, window: int, stride: int, padding: int = 0) -> jax.Array:
    """Max pooling over every spatial axis of a channels-last [B, *spatial, C] batch.

    On the CPU the gradient is `_max_pool_bwd`'s: XLA:CPU computes the gradient of
    `lax.reduce_window` max with a variadic reduce-window that carries one int32 index array per
    axis, 4-5x slower than PyTorch's max_pool3d backward (MONAI ResNet-10 at 64^3: 0.81 s
    against 0.18 s for forward and backward, 15% of the train step). The forward is
    `nnx.max_pool` everywhere. A window's gradient goes to one maximum, the first in PyTorch's
    scan order on the CPU.

    Args:
      x: the batch.
      window: window edge, the same along every spatial axis.
      stride: stride along every spatial axis.
      padding: symmetric padding with -inf on both sides of every spatial axis (PyTorch's).

    Returns:
      The pooled batch.
    """
    if jax.default_backend() != "cpu":
        return _reduce_window_max(x, window, stride, padding)
    return _max_pool_cpu(x, window, stride, padding)


def _reduce_window_max(x, window, stride, padding):
    nd = x.ndim - 2
    pads = [(padding, padding)] * nd
    return nnx.max_pool(x, (window,) * nd, strides=(stride,) * nd, padding=pads)


@functools.partial(jax.custom_vjp, nondiff_argnums=(1, 2, 3))
def _max_pool_cpu(x, window, stride, padding):
    return _reduce_window_max(x, window, stride, padding)


def _max_pool_fwd(x, window, stride, padding):
    y = _reduce_window_max(x, window, stride, padding)
    nd = x.ndim - 2
    xp = jnp.pad(x, [(0, 0), *[(padding, padding)] * nd, (0, 0)], constant_values=-jnp.inf)
    # Which tap of its window each output took its maximum from: the first one, in PyTorch's
    # scan order. One fused loop over the k^d strided slices of the padded input.
    first = jnp.full(y.shape, window**nd, jnp.int32)
    for i, tap in reversed(list(enumerate(itertools.product(range(window), repeat=nd)))):
        first = jnp.where(xp[_window(tap, y.shape[1:-1], (stride,) * nd)] == y, i, first)
    return y, (first.astype(jnp.int16), x.shape)


def _max_pool_bwd(window, stride, padding, residuals, g):
    first, shape = residuals
    nd = len(shape) - 2
    padded = [s + 2 * padding for s in shape[1:-1]]
    dx = jnp.zeros((shape[0], *padded, shape[-1]), g.dtype)
    for i, tap in enumerate(itertools.product(range(window), repeat=nd)):
        # The transpose of a strided slice: zeros between (interior) and around (low, high).
        config = [(0, 0, 0)]
        for a, t in enumerate(tap):
            high = padded[a] - t - (g.shape[1 + a] - 1) * stride - 1
            config.append((t, high, stride - 1))
        config.append((0, 0, 0))
        dx = dx + jax.lax.pad(jnp.where(first == i, g, 0), jnp.zeros((), g.dtype), config)
    inner = tuple(slice(padding, padding + s) for s in shape[1:-1])
    return (dx[(slice(None), *inner)],)


_max_pool_cpu.defvjp(_max_pool_fwd, _max_pool_bwd)


def _channels_last_numbers(ndim: int):
    """Flax's dimension numbers: input [B, *spatial, C], kernel [*spatial, I, O]."""
    lhs_spec = (0, ndim - 1, *range(1, ndim - 1))
    return jax.lax.ConvDimensionNumbers(lhs_spec, (ndim - 1, ndim - 2, *range(ndim - 2)), lhs_spec)


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


def batch_norm(
    features: int, *, momentum: float, epsilon: float, dtype=jnp.float32, rngs: nnx.Rngs
) -> nnx.BatchNorm:
    """Returns a BatchNorm over the channel (last) axis.

    Args:
      features: channels.
      momentum: Flax momentum, i.e. 1 - PyTorch's momentum (PyTorch 0.1 is Flax 0.9).
      epsilon: added to the variance.
      dtype: compute dtype (statistics are reduced in float32 regardless).
      rngs: random streams (unused by the initializers, required by Flax).

    Returns:
      The `nnx.BatchNorm` module, in training mode until `model.eval()`.
    """
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
