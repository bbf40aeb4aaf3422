"""Faster forms of the convs and the max-pool gradient that XLA's CPU backend runs slowly.

`layers.conv_general_dilated` and `layers.max_pool` dispatch here through `on_cpu`. Each form
gives lax's result to float rounding (`tests/test_models.py` checks values and gradients against
lax, and max pooling's gradient routing against PyTorch's).

Which form runs is decided for the platform the computation is lowered for, i.e. the devices it
runs on, with `jax.lax.platform_dependent`: a computation placed on a GPU, or exported for one,
gets plain lax even in a process whose default backend is the CPU (JAX's docs warn that a Python
test of `jax.default_backend()` is not safe for this). `ERNJAX_CPU_FAST_PATHS=0` turns them off
everywhere (plain lax); it is read when a computation is traced, so set it before the first step.
"""

import functools
import itertools
import os
from collections.abc import Callable

import jax
import jax.numpy as jnp
from flax import nnx

SWITCH = "ERNJAX_CPU_FAST_PATHS"


def enabled() -> bool:
    """Whether the fast paths are on (`ERNJAX_CPU_FAST_PATHS` unset or 1); 0 turns them off.

    Raises:
      ValueError: the variable holds anything else.
    """
    value = os.environ.get(SWITCH, "1").strip()
    if value not in ("0", "1"):
        raise ValueError(
            f"environment variable {SWITCH}={value!r} is not understood: set it to 1 (CPU fast "
            "paths on, the default) or 0 (plain lax convolutions and max pooling)"
        )
    return value == "1"


def on_cpu(fast: Callable | None, plain: Callable, *args):
    """Returns `fast(*args)` where the computation runs on a CPU, else `plain(*args)`.

    Both are traced; the one for the other platform is dropped when the computation is lowered
    (XLA never sees a conditional). With no fast form, or the switch off, only `plain` is traced.

    Args:
      fast: the CPU form, or None when there is none.
      plain: the lax form.
      *args: arrays passed to either.

    Returns:
      The output of the form for the lowering platform.
    """
    if fast is None or not enabled():
        return plain(*args)
    return jax.lax.platform_dependent(*args, cpu=fast, default=plain)


def conv_form(lhs, rhs, window_strides, padding, lhs_dilation, rhs_dilation, kwargs):
    """The CPU form of a `lax.conv_general_dilated` call, or None when plain lax is as fast.

    For an undilated channels-last conv (Flax's layout):
    - a depthwise conv runs as a sum of shifted slices (`_depthwise_by_slices`);
    - a 1x1 conv runs as a matrix product (`_pointwise_by_dot`);
    - any other dense 3D conv runs as one 2D conv with the depth taps folded into the channels
      (`_conv3d_by_2d`); a stride-1 one with a large kernel and few input channels (the 3D
      ResNet's 7^3 stem on the modalities) takes its weight gradient from Fourier transforms
      (`_conv3d_fft_weight_grad`).

    Args:
      lhs: input [B, *spatial, C] (only its shape is read).
      rhs: kernel [*kernel, C / groups, O] (only its shape is read).
      window_strides: per-axis strides.
      padding: "SAME", "VALID" or per-axis (low, high) pairs.
      lhs_dilation: None or ones for a CPU form.
      rhs_dilation: None or ones for a CPU form.
      kwargs: the rest of lax.conv_general_dilated's keywords.

    Returns:
      `form(lhs, rhs) -> output`, or None.
    """
    eligible = (
        all(d == 1 for d in (lhs_dilation or ()) + (rhs_dilation or ()))
        and kwargs.get("dimension_numbers") == channels_last_numbers(lhs.ndim)
        and kwargs.get("batch_group_count", 1) == 1
    )
    if not eligible:
        return None
    if isinstance(padding, str):
        padding = jax.lax.padtype_to_pads(lhs.shape[1:-1], rhs.shape[:-2], window_strides, padding)
    padding = [tuple(p) for p in padding]
    groups = kwargs.get("feature_group_count", 1)
    if rhs.shape[-2] == 1 and groups == lhs.shape[-1] == rhs.shape[-1]:
        return lambda x, w: _depthwise_by_slices(x, w, window_strides, padding)
    if groups == 1 and set(rhs.shape[:-2]) == {1} and set(padding) == {(0, 0)}:
        return lambda x, w: _pointwise_by_dot(x, w, window_strides, kwargs)
    if groups == 1 and lhs.ndim == 5:
        if _fft_weight_grad_pays(lhs.shape, rhs.shape, window_strides, padding, kwargs):
            frozen = tuple(sorted(kwargs.items()))  # custom_vjp's static arguments are hashed
            return lambda x, w: _conv3d_fft_weight_grad(x, w, tuple(padding), frozen)
        return lambda x, w: _conv3d_by_2d(x, w, window_strides, padding, kwargs)
    return None


def channels_last_numbers(ndim: int) -> jax.lax.ConvDimensionNumbers:
    """Flax's dimension numbers: input [B, *spatial, C], kernel [*spatial, I, O]."""
    lhs_spec = (0, ndim - 1, *range(1, ndim - 1))
    return jax.lax.ConvDimensionNumbers(lhs_spec, (ndim - 1, ndim - 2, *range(ndim - 2)), lhs_spec)


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
        **{**kwargs, "dimension_numbers": channels_last_numbers(4)},
    )
    return y.reshape(lhs.shape[0], depth, *y.shape[1:])


def _fft_weight_grad_pays(lhs_shape, rhs_shape, window_strides, padding, kwargs) -> bool:
    """Whether a dense 3D conv takes `_conv3d_fft_weight_grad`.

    Stride 1, a kernel of at least 5 along each axis, padding within the kernel (the linear
    correlation fits the transform), at most 8 input channels (the transform of the gradient
    is paid per input x output channel pair) and no precision or accumulation type asked for.
    """
    kernel = rhs_shape[:3]
    return (
        all(s == 1 for s in window_strides)
        and min(kernel) >= 5
        and all(
            0 <= lo <= k - 1 and 0 <= hi <= k - 1
            for (lo, hi), k in zip(padding, kernel, strict=True)
        )
        and lhs_shape[-1] <= 8
        and kwargs.get("precision") is None
        and kwargs.get("preferred_element_type") is None
    )


def _fft_size(n: int) -> int:
    """The smallest 2^a 3^b 5^c at or above n: sizes the FFT library transforms fastest."""
    while True:
        m = n
        for p in (2, 3, 5):
            while m % p == 0:
                m //= p
        if m == 1:
            return n
        n += 1


def _weight_grad_by_fft(x, g, kernel, padding):
    """The weight gradient of a stride-1 3D conv: the padded input correlated with the output's.

    dW[a, b, e, c, o] = sum over n, i, j, l of xpad[n, i + a, j + b, l + e, c] g[n, i, j, l, o],
    computed as IFFT(FFT(xpad) * conj(FFT(g))) summed over the batch, at transform sizes that
    hold the padded input (no wrap-around for lags below the kernel size). The inverse is
    cropped to the kernel after each axis, so only the first axis is transformed at full size.
    """
    xp = jnp.pad(x.astype(jnp.float32), [(0, 0), *padding, (0, 0)])
    n = [_fft_size(s) for s in xp.shape[1:4]]
    axes = (2, 3, 4)
    xf = jnp.fft.rfftn(jnp.moveaxis(xp, -1, 1), s=n, axes=axes)  # [B, C, ...]
    gf = jnp.conj(jnp.fft.rfftn(jnp.moveaxis(g.astype(jnp.float32), -1, 1), s=n, axes=axes))
    # [C, O, ...]: the batch and channel sums as elementwise products (C is small here).
    p = jnp.stack([sum(xf[b, c] * gf[b] for b in range(x.shape[0])) for c in range(x.shape[-1])])
    kd, kh, kw = kernel
    dw = jnp.fft.ifft(p, axis=2)[:, :, :kd]
    dw = jnp.fft.ifft(dw, axis=3)[:, :, :, :kh]
    dw = jnp.fft.irfft(dw, n=n[2], axis=4)[..., :kw]  # [C, O, kd, kh, kw]
    return jnp.transpose(dw, (2, 3, 4, 0, 1))


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def _conv3d_fft_weight_grad(lhs, rhs, padding, kwargs_items):
    """`_conv3d_by_2d` (stride 1) whose weight gradient comes from `_weight_grad_by_fft`.

    XLA:CPU computes the weight gradient of the folded 7^3 stem (28 channels, a 64 x 64
    window over the output) at well under its conv rate; the transforms do the same sum in a
    few GFLOP. On a 2-core CPU (MONAI ResNet-10 stem, 64^3 x 4, batch 2, 5 interleaved
    repeats, `python -m benchmarks.levers --levers=stem`), forward plus weight gradient went from
    2.79 to 1.69 s (PyTorch 3.92 s) and the resnet10 train step from 4.14 to 2.45 s (medians,
    faster in 5 of 5 rounds each).
    The input gradient stays the folded conv's (it is not needed for a stem: XLA drops it).
    """
    return _conv3d_by_2d(lhs, rhs, (1, 1, 1), padding, dict(kwargs_items))


def _conv3d_fft_weight_grad_fwd(lhs, rhs, padding, kwargs_items):
    return _conv3d_fft_weight_grad(lhs, rhs, padding, kwargs_items), (lhs, rhs)


def _conv3d_fft_weight_grad_bwd(padding, kwargs_items, residuals, g):
    lhs, rhs = residuals
    kwargs = dict(kwargs_items)
    dx = jax.vjp(lambda v: _conv3d_by_2d(v, rhs, (1, 1, 1), padding, kwargs), lhs)[1](g)[0]
    dw = _weight_grad_by_fft(lhs, g, rhs.shape[:3], padding).astype(rhs.dtype)
    return dx, dw


_conv3d_fft_weight_grad.defvjp(_conv3d_fft_weight_grad_fwd, _conv3d_fft_weight_grad_bwd)


def reduce_window_max(x, window: int, stride: int, padding: int) -> jax.Array:
    """Plain max pooling (`nnx.max_pool`, a lax reduce-window) of a [B, *spatial, C] batch.

    The plain path of `layers.max_pool` and the forward of `max_pool`.
    """
    nd = x.ndim - 2
    pads = [(padding, padding)] * nd
    return nnx.max_pool(x, (window,) * nd, strides=(stride,) * nd, padding=pads)


@functools.partial(jax.custom_vjp, nondiff_argnums=(1, 2, 3))
def max_pool(x, window, stride, padding):
    """`reduce_window_max` whose gradient goes to each window's first maximum (PyTorch's rule).

    XLA:CPU computes the gradient of `lax.reduce_window` max with a variadic reduce-window that
    carries one int32 index array per axis, 4-5x slower than PyTorch's max_pool3d backward
    (MONAI ResNet-10 at 64^3: 0.81 s against 0.18 s for forward and backward, 15% of the train
    step). This gradient is a sum of k^d strided scatters of one int16 tap index.
    """
    return reduce_window_max(x, window, stride, padding)


def _max_pool_fwd(x, window, stride, padding):
    y = reduce_window_max(x, window, stride, padding)
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


max_pool.defvjp(_max_pool_fwd, _max_pool_bwd)
