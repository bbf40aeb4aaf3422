"""Speed levers for the CPU train step against MONAI, timed before/after in interleaved repeats.

    python -m benchmarks.levers [--levers=stem,stem_s2,gemm,remat,bn_fold,profile]
        [--repeats=5] [--out=benchmarks/results]

The machine this runs on is shared, so a lever is only ever compared with its own "before" in
one process, timed alternately (before, after, before, after, ...; `--repeats` each, after one
warm-up call): a burst of load then hits both. Every row gives the median and the min-max range
in ms; a lever "clears" when its slowest repeat is faster than the fastest "before" repeat, and
"rounds faster" counts the rounds in which it beat the "before" timed beside it.

Levers (issue 19 item 4), each at the kernel level and, where it changes the model, at the step:
- `stem`: the resnet10 stem (7^3, stride 1, 4 -> 64 channels, 64^3, batch 2), forward and forward
  plus weight gradient (the train step needs no input gradient of the stem): the shipped form
  (`cpu_fast_paths._conv3d_by_2d`, depth taps folded into 28 channels) against the 7 depth taps
  as 7 separately scheduled 2D convs summed, the depth taps folded into the output channels of
  one 2D conv, an FFT convolution, and PyTorch's conv3d. Then the resnet10 train step with each.
- `stem_s2`: DenseNet-121's stride-2 7^3 stem (64^3 -> 32^3) as space-to-depth: the kernel
  padded to 8^3 and regrouped to a 4^3 stride-1 conv on 8x the channels.
- `gemm`: the cause: XLA:CPU's matrix product and 2D conv rate against PyTorch's (oneDNN/MKL).
- `remat`: `jax.checkpoint` policies around the resnet10 stem (conv, BatchNorm, ReLU).
- `bn_fold`: BatchNorm folded into the preceding conv (kernel scaled, bias added) for the
  resnet10 eval step.
- `monai`: the shipped train step of each model beside MONAI's (the ratio at this load).
- `profile`: where the densenet121 and ern_b1 train steps spend their time, by XLA op, from
  `jax.profiler`'s trace, beside `torch.profiler`'s for the MONAI step.

Writes OUT/levers.json and OUT/levers.md stamped with the machine (`benchmarks.common`).
"""

import collections
import glob
import gzip
import json
import os
import re
import statistics
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import flags
from flax import nnx

from benchmarks import common
from ernjax import cli, models
from ernjax.models import cpu_fast_paths, layers, resnet
from ernjax.train import steps as train_steps

LEVERS = flags.DEFINE_list(
    "levers", ["stem", "stem_s2", "gemm", "remat", "bn_fold", "profile"], "levers to time"
)
REPEATS = flags.DEFINE_integer("repeats", 5, "timed repeats of each variant (interleaved)")
OUT = flags.DEFINE_string("out", "benchmarks/results", "folder for levers.md / levers.json")
TAPS_IN_OUTPUTS = flags.DEFINE_bool(
    "taps_in_outputs", False, "also time the taps-in-output-channels stem (30 s a repeat)"
)
BEFORE = "folded 2D (before)"
STEP_LEVELS = flags.DEFINE_bool("steps", True, "also time the whole train/eval steps")

ROWS: list[dict] = []


# ----------------------------------------------------------------------------- timing
def interleaved(variants: dict, repeats: int) -> dict[str, list[float]]:
    """Wall seconds of each `variants[name]()` (blocking), timed in turn, `repeats` rounds."""
    for fn in variants.values():
        fn()  # warm: compiled, caches touched
    times = {name: [] for name in variants}
    for _ in range(repeats):
        for name, fn in variants.items():
            t = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t)
    return times


def report(lever: str, level: str, times: dict[str, list[float]], before: str, note=""):
    """Adds one row per variant to ROWS: median and range in ms, and the speed-up on `before`."""
    base = times[before]
    for name, ts in times.items():
        row = {
            "lever": lever,
            "level": level,
            "variant": name,
            "median ms": 1000 * statistics.median(ts),
            "min ms": 1000 * min(ts),
            "max ms": 1000 * max(ts),
            "n": len(ts),
        }
        if name != before:
            row["before/after"] = statistics.median(base) / statistics.median(ts)
            row["clears"] = (
                "yes" if max(ts) < min(base) else ("worse" if min(ts) > max(base) else "no")
            )
            # Paired: the rounds in which this variant beat the "before" timed next to it.
            row["rounds faster"] = f"{sum(a < b for a, b in zip(ts, base, strict=True))}/{len(ts)}"
        row["note"] = note if name == before else ""
        row["times ms"] = [round(1000 * t, 1) for t in ts]
        ROWS.append(row)
        print(row, flush=True)


def blocking(fn, *args):
    """`fn(*args)` blocked until its outputs are ready, as a thunk."""
    return lambda: jax.block_until_ready(fn(*args))


# ----------------------------------------------------------------------------- stem forms
NUMBERS_3D, NUMBERS_2D = (
    cpu_fast_paths.channels_last_numbers(5),
    cpu_fast_paths.channels_last_numbers(4),
)


def folded(x, w, stride=1, pad=3):
    """The shipped CPU form: one 2D conv with the depth taps folded into the channels."""
    return cpu_fast_paths._conv3d_by_2d(
        x, w, (stride,) * 3, [(pad, pad)] * 3, {"dimension_numbers": NUMBERS_3D}
    )


def plain(x, w, stride=1, pad=3):
    """The plain lax 3D conv (the GPU path)."""
    return jax.lax.conv_general_dilated(
        x, w, (stride,) * 3, [(pad, pad)] * 3, dimension_numbers=NUMBERS_3D
    )


def separate_taps(x, w, pad=3):
    """Lever (a): the kd depth taps as kd separately scheduled 2D convs over (H, W), summed."""
    b, d, kd = x.shape[0], x.shape[1], w.shape[0]
    xp = jnp.pad(x, [(0, 0), (pad, pad), (0, 0), (0, 0), (0, 0)])
    out = d + 2 * pad - kd + 1
    y = 0.0
    for t in range(kd):
        xs = xp[:, t : t + out].reshape(b * out, *x.shape[2:])
        y = y + jax.lax.conv_general_dilated(
            xs, w[t], (1, 1), [(pad, pad)] * 2, dimension_numbers=NUMBERS_2D
        )
    return y.reshape(b, out, *y.shape[1:])


def taps_in_outputs(x, w, pad=3):
    """Lever (a'): one 2D conv with kd * O output channels, then the kd shifted slices summed."""
    b, d, kd, o = x.shape[0], x.shape[1], w.shape[0], w.shape[-1]
    xp = jnp.pad(x, [(0, 0), (pad, pad), (0, 0), (0, 0), (0, 0)])
    w2 = jnp.moveaxis(w, 0, 3).reshape(*w.shape[1:3], w.shape[3], kd * o)
    y = jax.lax.conv_general_dilated(
        xp.reshape(-1, *x.shape[2:]), w2, (1, 1), [(pad, pad)] * 2, dimension_numbers=NUMBERS_2D
    )
    y = y.reshape(b, xp.shape[1], *y.shape[1:3], kd, o)
    out = d + 2 * pad - kd + 1
    return sum(y[:, t : t + out, :, :, t] for t in range(kd))


def fft_conv(x, w, pad=3):
    """Lever (e): a stride-1 3D conv as a product of 3D Fourier transforms (channels first).

    The kernel's transform is built one axis at a time from its kd taps (cheap), and the
    inverse transform of the output is cropped after each axis, so no full-size transform of
    zeros is paid for.
    """
    k, c = w.shape[:3], w.shape[3]
    sizes = x.shape[1:4]
    n = [cpu_fast_paths._fft_size(s + kk - 1) for s, kk in zip(sizes, k, strict=True)]
    xc = jnp.moveaxis(x, -1, 1)  # [B, C, D, H, W]
    xf = jnp.fft.rfftn(xc, s=n, axes=(2, 3, 4))
    wf = jnp.transpose(w[::-1, ::-1, ::-1], (3, 4, 0, 1, 2))  # [C, O, kd, kh, kw], flipped
    wf = jnp.fft.rfft(wf, n=n[2], axis=4)
    wf = jnp.fft.fft(wf, n=n[1], axis=3)
    wf = jnp.fft.fft(wf, n=n[0], axis=2)
    yf = sum(xf[:, i, None] * wf[i] for i in range(c))  # [B, O, ...]
    lo = [kk - 1 - pad for kk in k]
    out = [s + 2 * pad - kk + 1 for s, kk in zip(sizes, k, strict=True)]
    y = jnp.fft.ifft(yf, axis=2)[:, :, lo[0] : lo[0] + out[0]]
    y = jnp.fft.ifft(y, axis=3)[:, :, :, lo[1] : lo[1] + out[1]]
    y = jnp.fft.irfft(y, n=n[2], axis=4)[..., lo[2] : lo[2] + out[2]]
    return jnp.moveaxis(y, 1, -1)


def shipped(x, w, stride=1, pad=3):
    """What `layers.conv_general_dilated` runs now (the stride-1 stem: FFT weight gradient)."""
    return layers.conv_general_dilated(
        x, w, (stride,) * 3, [(pad, pad)] * 3, dimension_numbers=NUMBERS_3D
    )


def space_to_depth(x, w, pad=3):
    """Lever (b): a stride-2 3D conv as a stride-1 conv on 2x2x2 blocks (8x the channels).

    The kernel is zero-padded to an even size 2m and regrouped to [m, m, m, 8 C, O]; the padded
    input is regrouped to half the size with 8 C channels. The stride-1 conv then takes the
    shipped folded form.
    """
    b, c = x.shape[0], x.shape[-1]
    k = w.shape[0]
    m = (k + 1) // 2
    xp = jnp.pad(x, [(0, 0), *[(pad, pad + (x.shape[1] + 2 * pad) % 2)] * 3, (0, 0)])
    h = [s // 2 for s in xp.shape[1:4]]
    z = xp.reshape(b, h[0], 2, h[1], 2, h[2], 2, c)
    z = jnp.transpose(z, (0, 1, 3, 5, 2, 4, 6, 7)).reshape(b, *h, 8 * c)
    wp = jnp.pad(w, [(0, 2 * m - k)] * 3 + [(0, 0), (0, 0)])
    wp = wp.reshape(m, 2, m, 2, m, 2, c, w.shape[-1])
    wp = jnp.transpose(wp, (0, 2, 4, 1, 3, 5, 6, 7)).reshape(m, m, m, 8 * c, w.shape[-1])
    out = [(s + 2 * pad - k) // 2 + 1 for s in x.shape[1:4]]
    y = cpu_fast_paths._conv3d_by_2d(
        z, wp, (1, 1, 1), [(0, 0)] * 3, {"dimension_numbers": NUMBERS_3D}
    )
    return y[:, : out[0], : out[1], : out[2]]


def _stem_data(stride):
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.standard_normal((2, 64, 64, 64, 4), np.float32))
    w = jnp.asarray(rng.standard_normal((7, 7, 7, 4, 64), np.float32) * 0.05)
    out = 64 // stride
    g = jnp.asarray(rng.standard_normal((2, out, out, out, 64), np.float32))
    return x, w, g


def _kernel_variants(forms: dict, x, w, g):
    """Forward and forward+weight-gradient thunks of each form, checked against lax."""
    # Errors against lax's 3D conv on a 16^3 crop (lax's 3D gradient at 64^3 takes minutes).
    xs = x[:, :16, :16, :16]
    lax_form = forms.pop("lax")
    gs = jnp.asarray(np.random.default_rng(3).standard_normal(lax_form(xs, w).shape, np.float32))

    def value_and_dw(form):
        # x and g are arguments, not constants: XLA would fold what depends on them alone.
        return jax.jit(jax.value_and_grad(lambda w_, x_, g_: jnp.vdot(form(x_, w_), g_)))

    ref_y, (_, ref_gw) = jax.jit(lax_form)(xs, w), value_and_dw(lax_form)(w, xs, gs)
    fwd, bwd, err = {}, {}, {}
    for name, form in forms.items():
        f, vg = jax.jit(form), value_and_dw(form)
        y, (_, gw) = f(xs, w), vg(w, xs, gs)
        err[name] = (
            float(jnp.abs(y - ref_y).max() / jnp.abs(ref_y).max()),
            float(jnp.abs(gw - ref_gw).max() / jnp.abs(ref_gw).max()),
        )
        fwd[name], bwd[name] = blocking(f, x, w), blocking(vg, w, x, g)
    return fwd, bwd, err


def _torch_stem(x, w, stride):
    import torch

    torch.set_num_threads(len(os.sched_getaffinity(0)))
    xt = torch.from_numpy(np.moveaxis(np.asarray(x), -1, 1).copy())
    wt = torch.from_numpy(np.transpose(np.asarray(w), (4, 3, 0, 1, 2)).copy()).requires_grad_()

    def fwd():
        with torch.no_grad():
            torch.nn.functional.conv3d(xt, wt, stride=stride, padding=3)

    def bwd():
        torch.nn.functional.conv3d(xt, wt, stride=stride, padding=3).sum().backward()
        wt.grad = None

    return fwd, bwd


def lever_stem():
    """Stride-1 stem forms (levers a, a', e) against the shipped one and PyTorch."""
    x, w, g = _stem_data(1)
    forms = {
        "lax": plain,
        BEFORE: folded,
        "7 separate 2D convs": separate_taps,
        "FFT forward and dW": fft_conv,
        "folded forward, FFT dW (shipped)": shipped,
    }
    if TAPS_IN_OUTPUTS.value:
        forms["taps in output channels"] = taps_in_outputs
    fwd, bwd, err = _kernel_variants(forms, x, w, g)
    fwd["PyTorch conv3d"], bwd["PyTorch conv3d"] = _torch_stem(x, w, 1)
    note = "; ".join(f"{k}: rel err y {a:.1e}, dW {b:.1e}" for k, (a, b) in err.items())
    report("stem 7^3 s1 64^3x4 b2", "kernel fwd", interleaved(fwd, REPEATS.value), BEFORE, note)
    report("stem 7^3 s1 64^3x4 b2", "kernel fwd+dW", interleaved(bwd, REPEATS.value), BEFORE)
    if STEP_LEVELS.value:
        steps = {BEFORE: folded, "7 separate 2D convs": separate_taps,
                 "folded forward, FFT dW (shipped)": None}  # fmt: skip
        _step_lever("stem forms", "resnet10", {k: _stem_swap(v) for k, v in steps.items()})


def _stem_swap(form):
    """A model edit that makes the stem conv run `form(x, w)` (None: leave it)."""
    if form is None:
        return None

    def edit(model):
        model.conv1.conv_general_dilated = lambda x, w, *a, **k: form(x, w)
        return model

    return edit


def lever_stem_s2():
    """DenseNet-121's stride-2 stem as space-to-depth (lever b)."""
    x, w, g = _stem_data(2)
    forms = {
        "lax": lambda x, w: plain(x, w, stride=2),
        "shipped (folded 2D)": lambda x, w: folded(x, w, stride=2),
        "space-to-depth 4^3 x 32 ch": space_to_depth,
    }
    fwd, bwd, err = _kernel_variants(forms, x, w, g)
    fwd["PyTorch conv3d"], bwd["PyTorch conv3d"] = _torch_stem(x, w, 2)
    note = "; ".join(f"{k}: rel err y {a:.1e}, dW {b:.1e}" for k, (a, b) in err.items())
    lever = "stem 7^3 s2 64^3x4 b2"
    report(lever, "kernel fwd", interleaved(fwd, REPEATS.value), "shipped (folded 2D)", note)
    report(lever, "kernel fwd+dW", interleaved(bwd, REPEATS.value), "shipped (folded 2D)")
    if STEP_LEVELS.value:

        def edit(model):
            model.conv0.conv_general_dilated = lambda x, w, *a, **k: space_to_depth(x, w)
            return model

        _step_lever(
            "space-to-depth stem", "densenet121", {"shipped": None, "space-to-depth stem": edit}
        )


# ----------------------------------------------------------------------------- cause: GEMM rate
def lever_gemm():
    """XLA:CPU's matrix product and the stem's folded 2D conv against PyTorch's, in GFLOP/s."""
    import torch

    torch.set_num_threads(len(os.sched_getaffinity(0)))
    rng = np.random.default_rng(0)
    a = rng.standard_normal((4096, 1372), np.float32)
    b = rng.standard_normal((1372, 64), np.float32)
    jb, tb = jnp.asarray(b), torch.from_numpy(b)
    mm = jax.jit(lambda p, q: p @ q)
    big_a = jnp.asarray(np.tile(a, (32, 1)))  # 131072 x 1372: the stem's im2col rows / 4
    tbig = torch.from_numpy(np.asarray(big_a))
    flops = 2 * big_a.shape[0] * 1372 * 64
    t = interleaved(
        {"XLA dot": blocking(mm, big_a, jb), "PyTorch matmul": lambda: torch.mm(tbig, tb)},
        REPEATS.value,
    )
    report("GEMM 131072x1372 @ 1372x64", "kernel", t, "XLA dot", _rates(flops, t))
    # The stem's folded 2D conv alone, forward, against oneDNN's 2D conv on the same tensor.
    xs = rng.standard_normal((128, 70, 70, 28), np.float32)
    ws = rng.standard_normal((7, 7, 28, 64), np.float32)
    conv2d = jax.jit(
        lambda p, q: jax.lax.conv_general_dilated(
            p, q, (1, 1), "VALID", dimension_numbers=NUMBERS_2D
        )
    )
    txs = torch.from_numpy(np.moveaxis(xs, -1, 1).copy())
    tws = torch.from_numpy(np.transpose(ws, (3, 2, 0, 1)).copy())

    def tconv():
        with torch.no_grad():
            torch.nn.functional.conv2d(txs, tws)

    flops = 2 * 128 * 64 * 64 * 7 * 7 * 28 * 64
    t = interleaved(
        {"XLA conv2d": blocking(conv2d, jnp.asarray(xs), jnp.asarray(ws)), "PyTorch conv2d": tconv},
        REPEATS.value,
    )
    report(
        "folded stem conv2d 128x70x70x28 -> 64, 7x7", "kernel", t, "XLA conv2d", _rates(flops, t)
    )


def _rates(flops, times):
    """'N GFLOP: name R GFLOP/s, ...' at each variant's median."""
    rates = ", ".join(f"{k} {flops / statistics.median(v) / 1e9:.0f}" for k, v in times.items())
    return f"{flops / 1e9:.1f} GFLOP; GFLOP/s: {rates}"


# ----------------------------------------------------------------------------- remat
def lever_remat():
    """`jax.checkpoint` policies around the resnet10 stem (conv, BN, ReLU), train step."""
    policies = {
        "shipped": None,
        "remat stem, nothing saveable": jax.checkpoint_policies.nothing_saveable,
        "remat stem, dots saveable": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
        "remat stem, everything saveable": jax.checkpoint_policies.everything_saveable,
    }

    def edit_for(policy):
        if policy is None:
            return None

        def edit(model):
            model.stem_policy = policy
            model.__class__ = _RematStemResNet
            return model

        return edit

    _step_lever("remat policies", "resnet10", {k: edit_for(p) for k, p in policies.items()})


class _RematStemResNet(resnet.ResNet):
    """ResNet whose stem (conv1, bn1, ReLU) runs under `nnx.remat` with `self.stem_policy`."""

    def features(self, x):
        stem = nnx.remat(lambda m, v: jax.nn.relu(m.bn1(m.conv1(v))), policy=self.stem_policy)
        x = stem(self, x)
        x = resnet.max_pool(x, 3, 2, padding=1)
        for stage in (self.layer1, self.layer2, self.layer3, self.layer4):
            for blk in stage:
                x = blk(x)
        return x


# ----------------------------------------------------------------------------- BN folding
class _Identity(nnx.Module):
    def __call__(self, x):
        return x


def fold_batchnorm(model):
    """Folds every eval-mode BatchNorm of a ResNet into its conv: kernel * s, bias + shift.

    s = scale / sqrt(var + eps), shift = bias - mean * s; the BatchNorm becomes the identity.
    """
    pairs = [(model, "conv1", "bn1")]
    for stage in (model.layer1, model.layer2, model.layer3, model.layer4):
        for blk in stage:
            pairs += [(blk, "conv1", "bn1"), (blk, "conv2", "bn2")]
            if blk.downsample is not None and blk.downsample.conv is not None:
                pairs.append((blk.downsample, "conv", "bn"))
    for owner, cname, bname in pairs:
        cv, bn = getattr(owner, cname), getattr(owner, bname)
        s = bn.scale[...] / jnp.sqrt(bn.var[...] + bn.epsilon)
        shift = bn.bias[...] - bn.mean[...] * s
        if cv.bias is not None:
            shift = shift + cv.bias[...] * s
        cv.kernel = nnx.Param(cv.kernel[...] * s)
        cv.bias, cv.use_bias = nnx.Param(shift), True
        setattr(owner, bname, _Identity())
    return model


def lever_bn_fold():
    """The resnet10 eval step (batch 2) with BatchNorm folded into the convs, against unfused."""
    x = np.random.default_rng(0).standard_normal((2, 64, 64, 64, 4), np.float32)
    outs, thunks = {}, {}
    for name, fold in (("shipped (BatchNorm apart)", False), ("BatchNorm folded", True)):
        model = _model("resnet10", warm_statistics=True)
        model.eval()
        if fold:
            model = fold_batchnorm(model)
        graph, state = nnx.split(model)
        f = jax.jit(lambda s, v, graph=graph: nnx.merge(graph, s)(v))
        outs[name] = np.asarray(f(state, x))
        thunks[name] = blocking(f, state, x)
    a, b = outs.values()
    note = f"max |logit difference| {np.abs(a - b).max():.1e} (logits up to {np.abs(a).max():.2f})"
    report("BatchNorm folded into convs", "eval step resnet10", interleaved(thunks, REPEATS.value),
           "shipped (BatchNorm apart)", note)  # fmt: skip


# ----------------------------------------------------------------------------- whole steps
def _model(name, warm_statistics=False):
    spatial = 2 if name == "ern_b1" else 3
    model = models.create_model(
        name, in_channels=3 if spatial == 2 else 4, num_classes=2, spatial_dims=spatial,
        rngs=nnx.Rngs(0),
    )  # fmt: skip
    if warm_statistics:  # BatchNorm running statistics away from (0, 1), as after training
        rng = np.random.default_rng(1)
        for _, v in nnx.iter_graph(model):
            if isinstance(v, nnx.BatchNorm):
                n = v.mean.shape
                v.mean.value = jnp.asarray(rng.normal(0, 0.2, n), jnp.float32)
                v.var.value = jnp.asarray(rng.uniform(0.5, 2.0, n), jnp.float32)
                v.scale.value = jnp.asarray(rng.uniform(0.8, 1.2, n), jnp.float32)
                v.bias.value = jnp.asarray(rng.normal(0, 0.1, n), jnp.float32)
    return model


CASES = {  # name -> (batch, spatial shape, channels), benchmarks/run.py's CPU suite
    "ern_b1": (16, (224, 224), 3),
    "resnet10": (2, (64, 64, 64), 4),
    "densenet121": (2, (64, 64, 64), 4),
}


def train_thunk(name, edit=None):
    """A blocking thunk running the ernjax train step of `name`, optionally model-edited."""
    batch, shape, ch = CASES[name]
    model = _model(name)
    if edit is not None:
        model = edit(model)
    opt = nnx.Optimizer(model, optax.adam(1e-4), wrt=nnx.Param)
    steps = train_steps.build_steps(model, opt, np.array([1.5, 0.75]), train_steps.make_mesh())
    rng = np.random.default_rng(0)
    x = rng.standard_normal((batch, *shape, ch), dtype=np.float32)
    y = rng.integers(0, 2, batch).astype(np.int32)
    b = train_steps.device_batch(
        {"image": x, "label": y, "valid": np.ones(batch, bool)}, steps.batch_sharding
    )
    state = {"s": steps.state}

    def step():
        state["s"], m = steps.train(state["s"], b)
        jax.block_until_ready(m)

    return step, steps, b


def torch_train_thunk(name):
    """The MONAI network's train step (Adam, weighted CE), as benchmarks/run.py times it."""
    import torch
    from monai.networks import nets

    torch.set_num_threads(len(os.sched_getaffinity(0)))
    batch, shape, ch = CASES[name]
    if name == "ern_b1":
        net = nets.EfficientNetBN("efficientnet-b1", pretrained=False, spatial_dims=2,
                                  in_channels=ch, num_classes=2)  # fmt: skip
    elif name == "resnet10":
        net = nets.resnet10(spatial_dims=3, n_input_channels=ch, num_classes=2)
    else:
        net = nets.DenseNet121(spatial_dims=3, in_channels=ch, out_channels=2)
    opt = torch.optim.Adam(net.parameters(), 1e-4)
    loss_fn = torch.nn.CrossEntropyLoss(weight=torch.tensor([1.5, 0.75]))
    rng = np.random.default_rng(0)
    xt = torch.from_numpy(rng.standard_normal((batch, ch, *shape), dtype=np.float32))
    yt = torch.from_numpy(rng.integers(0, 2, batch))

    def step():
        net.train()
        opt.zero_grad(set_to_none=True)
        loss_fn(net(xt), yt).backward()
        opt.step()

    return step


def _step_lever(lever, name, edits: dict):
    """Train steps of `name` under each model edit (None = shipped) and MONAI's, interleaved."""
    thunks = {k: train_thunk(name, e)[0] for k, e in edits.items()}
    thunks["MONAI (PyTorch)"] = torch_train_thunk(name)
    report(lever, f"train step {name}", interleaved(thunks, REPEATS.value), next(iter(edits)))


# ----------------------------------------------------------------------------- profiles
def _xla_profile(step, steps, batch, top=12):
    """CPU ms per XLA op category in one train step, from the profiler's trace (all threads)."""
    hlo = steps.train.lower(steps.state, batch).compile().as_text()
    kinds = {}
    for line in hlo.splitlines():
        m = re.match(r"\s*(?:ROOT )?%?([\w.\-]+) = \S+ (\w[\w\-]*)\(", line)
        if m:
            kind = m.group(2)
            if kind == "fusion" and "kind=" in line:
                calls = re.search(r"calls=%?([\w.\-]+)", line)
                kind = f"fusion:{calls.group(1).split('.')[0] if calls else ''}"
            kinds[m.group(1)] = kind
    step()
    with tempfile.TemporaryDirectory() as tmp:
        with jax.profiler.trace(tmp, create_perfetto_trace=True):
            step()
        path = sorted(glob.glob(f"{tmp}/**/*.trace.json.gz", recursive=True))[-1]
        events = json.load(gzip.open(path))["traceEvents"]
    by_kind, total = collections.Counter(), 0.0
    for e in events:
        if e.get("ph") != "X" or e.get("name") not in kinds:
            continue
        by_kind[_category(e["name"], kinds[e["name"]])] += e["dur"] / 1000.0
        total += e["dur"] / 1000.0
    return total, by_kind.most_common(top)


def _category(op: str, kind: str) -> str:
    if kind.startswith("fusion") or kind in ("fusion",):
        base = re.sub(r"[.\d]+$", "", op)
        return f"fusion ({base})"
    return kind


def _torch_profile(name, top=12):
    import torch

    step = torch_train_thunk(name)
    step()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        step()
    rows = sorted(prof.key_averages(), key=lambda r: -r.self_cpu_time_total)[:top]
    total = sum(r.self_cpu_time_total for r in prof.key_averages()) / 1000.0
    return total, [(r.key, r.self_cpu_time_total / 1000.0) for r in rows]


def lever_profile():
    """Where the densenet121 and ern_b1 steps go (XLA op categories, PyTorch ops)."""
    for name in ("densenet121", "ern_b1", "resnet10"):
        step, steps, batch = train_thunk(name)
        total, top = _xla_profile(step, steps, batch)
        _profile_row(name, "ernjax (XLA ops, CPU ms over threads)", total, top)
        total, top = _torch_profile(name)
        _profile_row(name, "MONAI (torch ops, self CPU ms)", total, top)


def _profile_row(name, variant, total, top):
    note = "; ".join(f"{k} {v:.0f}" for k, v in top)
    ROWS.append(
        {"lever": "profile", "level": f"train step {name}", "variant": variant,
         "median ms": total, "n": 1, "note": note}
    )  # fmt: skip
    print(ROWS[-1], flush=True)


def lever_monai():
    """The shipped ernjax step of each model beside MONAI's, interleaved (the ratio now)."""
    for name in CASES:
        _step_lever("ernjax against MONAI", name, {"shipped": None})


def main(argv):
    del argv
    jax.config.update("jax_enable_compilation_cache", False)
    table = {
        "stem": lever_stem,
        "stem_s2": lever_stem_s2,
        "gemm": lever_gemm,
        "remat": lever_remat,
        "bn_fold": lever_bn_fold,
        "profile": lever_profile,
        "monai": lever_monai,
    }
    columns = ["lever", "level", "variant", "median ms", "min ms", "max ms", "n", "before/after",
               "clears", "rounds faster", "note"]  # fmt: skip
    for lever in LEVERS.value:
        table[lever]()
        md = common.write_report(OUT.value, "levers", ROWS, columns)  # after each: partial runs
    print(md)


if __name__ == "__main__":
    cli.run(main)
