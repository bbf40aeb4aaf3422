"""The model registry and the contract every model keeps (shapes, dtypes, modes, features)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from model_helpers import build, contract, forward, rand

from ernjax.models import count_params, model_names


def test_registry_names_and_unknown_name_lists_them():
    names = model_names()
    for expected in ("ern_b0", "ern_b1", "ern_tiny", "resnet10", "resnet50", "resnet10_tiny"):
        assert expected in names
    with pytest.raises(
        ValueError, match=r"unknown model 'vgg99'; known models: .*ern_b0.*resnet10"
    ):
        build("vgg99")
    with pytest.raises(ValueError, match="spatial_dims must be 2 or 3"):
        build("ern_tiny", spatial_dims=1)
    with pytest.raises(TypeError):  # a misspelt option is not silently ignored
        build("resnet10_tiny", shortcut="A")


@pytest.mark.parametrize(
    "name, spatial, features_shape",
    [
        ("ern_tiny", (32, 32), (1, 1, 320)),  # /32, head 1280 * 0.25
        ("ern_tiny", (32, 32, 32), (1, 1, 1, 320)),  # ERN-Net in 3D, as MONAI allows
        ("resnet10_tiny", (16, 16, 16), (1, 1, 1, 64)),  # max pool and 3 strides: /16
        ("resnet10_tiny", (32, 32), (2, 2, 64)),
    ],
)
def test_forward_shapes_and_features_classify_contract(name, spatial, features_shape):
    model = build(name, spatial_dims=len(spatial), in_channels=2, num_classes=3)
    model.eval()
    x = rand(2, *spatial, 2)
    logits, feats, again, grads = contract(model, x)
    assert logits.shape == (2, 3) and logits.dtype == jnp.float32
    assert feats.shape == (2, *features_shape)
    np.testing.assert_allclose(again, logits, rtol=1e-5, atol=1e-5)
    # Grad-CAM's need: logits differentiable with respect to the feature map.
    assert grads.shape == feats.shape and bool(jnp.any(grads != 0))


def test_wrong_input_layout_is_a_clear_error():
    model = build("resnet10_tiny", spatial_dims=3, in_channels=4)
    with pytest.raises(ValueError, match=r"channels-last input \[B, S, S, S, 4\].*got shape"):
        model(rand(1, 4, 16, 16, 16))  # channels-first by mistake


@pytest.mark.parametrize("name, spatial", [("ern_tiny", (32, 32)), ("resnet10_tiny", (16,) * 3)])
def test_bfloat16_compute_keeps_float32_params_and_logits(name, spatial):
    model = build(name, spatial_dims=len(spatial), dtype="bfloat16")
    params = jax.tree.leaves(nnx.state(model, nnx.Param))
    assert {p.dtype for p in params} == {jnp.dtype(jnp.float32)}
    model.eval()
    x = rand(2, *spatial, 3)
    logits, feats, _, _ = contract(model, x)
    assert feats.dtype == jnp.bfloat16 and logits.dtype == jnp.float32
    # Same weights in float32 give nearly the same logits.
    ref = build(name, spatial_dims=len(spatial))
    ref.eval()
    np.testing.assert_allclose(logits, forward(ref, x), rtol=0.1, atol=0.1)


def test_train_mode_uses_batch_statistics_and_eval_mode_running_averages():
    model = build("resnet10_tiny", spatial_dims=3, in_channels=2)
    x = rand(4, 16, 16, 16, 2)
    model.train()
    full, part = forward(model, x), forward(model, x[:2])
    # Batch statistics: a sample's output depends on the rest of the batch ...
    assert not np.allclose(full[:2], part, atol=1e-4)
    # ... and the running averages moved.
    mean = np.asarray(model.bn1.mean[...])
    assert np.abs(mean).max() > 0
    model.eval()
    full, part = forward(model, x), forward(model, x[:2])
    np.testing.assert_allclose(full[:2], part, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(model.bn1.mean[...], mean)  # eval leaves them alone


def test_dropout_and_stochastic_depth_only_in_train_mode():
    model = build("ern_tiny", dropout=0.5)
    x = rand(4, 32, 32, 3)
    model.train()
    a, b = forward(model, x), forward(model, x)
    assert not np.allclose(a, b)  # fresh dropout masks from the `dropout` stream
    model.eval()
    np.testing.assert_array_equal(forward(model, x), forward(model, x))


def test_same_seed_same_parameters_and_counts():
    a, b = build("ern_tiny"), build("ern_tiny")
    leaves_a, leaves_b = (jax.tree.leaves(nnx.state(m, nnx.Param)) for m in (a, b))
    for x, y in zip(leaves_a, leaves_b, strict=True):
        np.testing.assert_array_equal(x, y)
    assert count_params(a) == 124_254
    assert count_params(build("resnet10_tiny", spatial_dims=3)) == 233_066


@pytest.mark.parametrize("name, spatial_dims", [("ern_tiny", 2), ("resnet10_tiny", 3)])
def test_same_seed_same_weights_eager_or_traced(name, spatial_dims):
    eager = build(name, spatial_dims=spatial_dims)
    traced = nnx.jit(lambda: build(name, spatial_dims=spatial_dims))()
    for a, b in zip(*(_weights(m) for m in (eager, traced)), strict=True):
        np.testing.assert_array_equal(a, b)


def test_every_host_initializer_same_values_eager_or_traced():
    from ernjax.models import densenet, layers, vgg

    inits = (layers.conv_init, layers.dense_init_fan_in, densenet.conv_init_fan_in)
    key, shape = jax.random.key(7), (3, 3, 4, 8)
    for init in (*inits, vgg.dense_init_normal):
        eager = init(key, shape)
        np.testing.assert_array_equal(jax.jit(init, static_argnums=1)(key, shape), eager)
        assert eager.dtype == jnp.float32 and np.asarray(eager).std() > 0
        # A batch of keys under vmap: one draw per key, as eagerly.
        keys = jax.random.split(key, 2)
        batch = jax.jit(jax.vmap(lambda k, init=init: init(k, shape)))(keys)
        np.testing.assert_array_equal(batch[1], init(keys[1], shape))


def _weights(model):
    return jax.tree.leaves(nnx.state(model, nnx.Param, nnx.BatchStat))


def test_resnet_options_shortcut_a_passes_gradients():
    # MedicalNet-style: type-A (parameter-free) shortcut, stride-2 stem, no max pool.
    model = build("resnet10_tiny", shortcut_type="A", conv1_stride=2, no_max_pool=True)
    assert model.layer2[0].downsample.conv is None
    model.eval()
    assert contract(model, rand(1, 32, 32, 3))[1].shape == (1, 2, 2, 64)
    # Unlike MONAI's (which detaches it), the zero-padded identity carries gradients.
    shortcut = model.layer2[0].downsample
    g = jax.grad(lambda v: shortcut(v).sum())(rand(1, 8, 8, 8))
    np.testing.assert_array_equal(g[:, ::2, ::2], 1.0)


@pytest.mark.parametrize(
    "shape, kernel, stride, padding",
    [
        ((2, 9, 9, 4), 3, 2, "SAME"),  # odd size, stride 2: TF "same" pads 1 + 1
        ((2, 8, 8, 4), 5, 2, "SAME"),  # even size: pads 1 + 2
        ((1, 6, 7, 5, 3), 3, 1, [(1, 1)] * 3),  # 3D, explicit padding
    ],
)
def test_depthwise_fast_path_equals_lax(shape, kernel, stride, padding):
    c = shape[-1]
    _check_fast_path_equals_lax(shape, (kernel,) * (len(shape) - 2) + (1, c), stride, padding, c)


@pytest.mark.parametrize(
    "shape, kernel, stride, padding",
    [
        ((2, 9, 8, 7, 3), (3, 3, 3), 1, [(1, 1)] * 3),  # ResNet 3x3x3, odd sizes
        ((2, 9, 8, 7, 3), (3, 3, 3), 2, [(1, 1)] * 3),  # strided: the slow input gradient
        ((1, 9, 9, 9, 2), (7, 7, 7), 2, [(3, 3)] * 3),  # DenseNet's 7^3 stride-2 stem
        ((2, 6, 6, 6, 4), (1, 1, 1), 2, [(0, 0)] * 3),  # type-B shortcut (a dot)
        ((2, 6, 6, 6, 4), (1, 1, 1), 1, "VALID"),  # DenseNet's bottleneck (a dot)
        ((1, 8, 7, 6, 2), (3, 1, 5), 2, "SAME"),  # anisotropic kernel, TF padding
        ((2, 9, 8, 7, 2), (7, 7, 7), 1, [(3, 3)] * 3),  # ResNet's 7^3 stem: FFT weight gradient
        ((1, 7, 6, 9, 2), (5, 6, 5), 1, [(2, 2), (0, 5), (4, 1)]),  # FFT, uneven padding
    ],
)
def test_3d_fast_path_equals_lax(shape, kernel, stride, padding):
    _check_fast_path_equals_lax(shape, kernel + (shape[-1], 5), stride, padding, 1)


@pytest.mark.parametrize("stride, padding", [(1, "SAME"), (2, [(0, 0), (0, 0)]), (2, "SAME")])
def test_2d_pointwise_fast_path_equals_lax(stride, padding):
    _check_fast_path_equals_lax((2, 7, 6, 4), (1, 1, 4, 5), stride, padding, 1)


def _check_fast_path_equals_lax(shape, kernel_shape, stride, padding, groups):
    from ernjax.models.cpu_fast_paths import channels_last_numbers
    from ernjax.models.layers import conv_general_dilated

    x, w = rand(*shape), rand(*kernel_shape, seed=1)
    kw = dict(dimension_numbers=channels_last_numbers(len(shape)), feature_group_count=groups)
    args = (x, w, (stride,) * (len(shape) - 2), padding)
    fast = jax.jit(lambda a, b: conv_general_dilated(a, b, *args[2:], **kw))
    ref = jax.jit(lambda a, b: jax.lax.conv_general_dilated(a, b, *args[2:], **kw))
    assert _takes_fast_path(fast.lower(x, w).as_text(), kernel_shape, groups)
    y = ref(x, w)
    np.testing.assert_allclose(fast(x, w), y, rtol=1e-5, atol=1e-5)
    # Gradients too (the training path), under a random cotangent.
    r = rand(*y.shape, seed=2)
    grads = [
        jax.jit(jax.grad(lambda a, b, f=f: (f(a, b) * r).sum(), (0, 1)))(x, w) for f in (fast, ref)
    ]
    for g_fast, g_ref in zip(*grads, strict=True):
        np.testing.assert_allclose(g_fast, g_ref, rtol=1e-4, atol=1e-4)


def test_stem_weight_gradient_takes_the_fft_only_where_it_pays():
    from ernjax.models.cpu_fast_paths import channels_last_numbers
    from ernjax.models.layers import conv_general_dilated

    def grad_hlo(shape, kernel_shape, stride):
        kw = dict(dimension_numbers=channels_last_numbers(5))
        f = jax.grad(lambda w: conv_general_dilated(x, w, (stride,) * 3, "SAME", **kw).sum())
        x = rand(*shape)
        return jax.jit(f).lower(rand(*kernel_shape, seed=1)).as_text()

    assert "stablehlo.fft" in grad_hlo((1, 8, 8, 8, 4), (7, 7, 7, 4, 8), 1)  # ResNet stem
    assert "stablehlo.fft" not in grad_hlo((1, 8, 8, 8, 4), (7, 7, 7, 4, 8), 2)  # strided
    assert "stablehlo.fft" not in grad_hlo((1, 8, 8, 8, 4), (3, 3, 3, 4, 8), 1)  # small kernel
    assert "stablehlo.fft" not in grad_hlo((1, 8, 8, 8, 16), (7, 7, 7, 16, 8), 1)  # wide input


def _takes_fast_path(hlo, kernel_shape, groups):
    """No convolution left (depthwise, 1x1), or only 2D ones (3D)."""
    if groups > 1 or set(kernel_shape[:-2]) == {1}:
        return "stablehlo.convolution" not in hlo
    return "[b, 0, 1, 2, f]" not in hlo


# (input, kernel, stride, padding, groups): one case of each conv fast path.
_FAST_CASES = [
    ((2, 9, 8, 7, 3), (3, 3, 3, 3, 5), 2, [(1, 1)] * 3, 1),  # 3D conv as 2D
    ((2, 9, 9, 4), (3, 3, 1, 4), 2, "SAME", 4),  # depthwise as slices
    ((2, 6, 6, 6, 4), (1, 1, 1, 4, 5), 2, [(0, 0)] * 3, 1),  # 1x1 as a dot
    ((1, 7, 6, 5, 2), (5, 5, 5, 2, 3), 1, [(2, 2)] * 3, 1),  # stem with the FFT weight gradient
]


def _conv_and_grad(conv_fn, shape, kernel_shape, stride, padding, groups):
    """Forward and gradient of `conv_fn` as one function of (x, w), for lowering."""
    from ernjax.models.cpu_fast_paths import channels_last_numbers

    kw = dict(dimension_numbers=channels_last_numbers(len(shape)), feature_group_count=groups)
    strides = (stride,) * (len(shape) - 2)

    def f(a, b):
        y = conv_fn(a, b, strides, padding, **kw)
        return y, jax.grad(lambda u, v: conv_fn(u, v, strides, padding, **kw).sum(), (0, 1))(a, b)

    return f, (rand(*shape), rand(*kernel_shape, seed=1))


@pytest.mark.parametrize("shape, kernel_shape, stride, padding, groups", _FAST_CASES)
def test_switch_off_gives_plain_lax(monkeypatch, shape, kernel_shape, stride, padding, groups):
    from ernjax.models.layers import conv_general_dilated

    monkeypatch.setenv("ERNJAX_CPU_FAST_PATHS", "0")
    case = (shape, kernel_shape, stride, padding, groups)
    ours, args = _conv_and_grad(conv_general_dilated, *case)
    plain, _ = _conv_and_grad(jax.lax.conv_general_dilated, *case)
    assert jax.jit(ours).lower(*args).as_text() == jax.jit(plain).lower(*args).as_text()


def test_switch_off_gives_lax_max_pool_gradient(monkeypatch):
    from ernjax.models.layers import max_pool

    monkeypatch.setenv("ERNJAX_CPU_FAST_PATHS", "0")
    x, pads = rand(1, 7, 6, 5, 2), [(1, 1)] * 3
    ours = jax.grad(lambda v: max_pool(v, 3, 2, 1).sum())
    plain = jax.grad(lambda v: nnx.max_pool(v, (3,) * 3, strides=(2,) * 3, padding=pads).sum())
    assert jax.jit(ours).lower(x).as_text() == jax.jit(plain).lower(x).as_text()


def test_switch_with_a_bad_value_is_a_clear_error(monkeypatch):
    from ernjax.models.layers import max_pool

    monkeypatch.setenv("ERNJAX_CPU_FAST_PATHS", "off")
    with pytest.raises(ValueError, match=r"ERNJAX_CPU_FAST_PATHS=.off. .* 1 .* or 0"):
        max_pool(rand(1, 4, 4, 1), 2, 2)


@pytest.mark.parametrize("shape, kernel_shape, stride, padding, groups", _FAST_CASES)
def test_fast_paths_follow_the_platform_lowered_for(shape, kernel_shape, stride, padding, groups):
    from ernjax.models.layers import conv_general_dilated

    # What runs is decided for the devices the computation is lowered for, not by the default
    # backend of this (CPU-only) process: exported for a GPU, it is plain lax.
    case = (shape, kernel_shape, stride, padding, groups)
    f, args = _conv_and_grad(conv_general_dilated, *case)
    for platform, fast in (("cpu", True), ("cuda", False), ("rocm", False)):
        hlo = jax.export.export(jax.jit(f), platforms=[platform])(*args).mlir_module()
        assert _takes_fast_path(hlo, kernel_shape, groups) == fast, platform


def test_max_pool_gradient_follows_the_platform_lowered_for():
    from ernjax.models.layers import max_pool

    pool = jax.jit(jax.grad(lambda v: max_pool(v, 3, 2, 1).sum()))
    for platform, fast in (("cpu", True), ("cuda", False)):
        hlo = jax.export.export(pool, platforms=[platform])(rand(1, 7, 6, 5, 2)).mlir_module()
        assert ("select_and_scatter" not in hlo) == fast, platform


@pytest.mark.parametrize(
    "shape, window, stride, padding",
    [
        ((2, 9, 8, 3), 3, 2, 1),  # ResNet/DenseNet's pool, 2D, odd size
        ((1, 7, 6, 5, 2), 3, 2, 1),  # 3D
        ((2, 8, 6, 3), 2, 2, 0),  # VGG's
        ((1, 9, 9, 2), 3, 2, 0),  # Inception's (VALID)
    ],
)
def test_max_pool_equals_nnx_with_pytorchs_gradient_routing(shape, window, stride, padding):
    torch = pytest.importorskip("torch")
    from ernjax.models.layers import max_pool

    nd = len(shape) - 2
    kw = dict(strides=(stride,) * nd, padding=[(padding, padding)] * nd)
    ref = lambda v: nnx.max_pool(v, (window,) * nd, **kw)  # noqa: E731
    ours = lambda v: max_pool(v, window, stride, padding)  # noqa: E731
    # Ties everywhere (ReLU zeros, repeated values), as after a ReLU: PyTorch sends a window's
    # gradient to its first maximum in scan order, and so must we.
    x = jnp.maximum(jnp.round(rand(*shape) * 2) / 2, 0)
    y = ref(x)
    np.testing.assert_array_equal(jax.jit(ours)(x), y)
    r = rand(*y.shape, seed=3)
    grad = jax.jit(jax.grad(lambda v: (ours(v) * r).sum()))(x)
    tx = torch.tensor(np.moveaxis(np.asarray(x), -1, 1).copy(), requires_grad=True)
    pool = torch.nn.functional.max_pool3d if nd == 3 else torch.nn.functional.max_pool2d
    out = pool(tx, window, stride, padding)
    (out * torch.tensor(np.moveaxis(np.asarray(r), -1, 1).copy())).sum().backward()
    np.testing.assert_allclose(grad, np.moveaxis(tx.grad.numpy(), 1, -1), rtol=1e-6, atol=1e-6)
    # Without ties, the same gradient as lax's reduce_window.
    x = rand(*shape, seed=4)
    np.testing.assert_allclose(
        jax.grad(lambda v: (ours(v) * r).sum())(x),
        jax.grad(lambda v: (ref(v) * r).sum())(x),
        rtol=1e-6,
        atol=1e-6,
    )


@pytest.mark.parametrize("norm", ["group", "instance"])
@pytest.mark.parametrize("name,dims", [("ern_tiny", 2), ("resnet10_tiny", 3)])
def test_group_and_instance_norm_do_not_depend_on_the_batch(norm, name, dims):
    """No BatchNorm statistics, and an example's logits are the same alone or in a batch."""
    from ernjax.models import create_model
    from ernjax.models.layers import group_count

    model = create_model(
        name, in_channels=2, num_classes=2, spatial_dims=dims, norm=norm, rngs=nnx.Rngs(0)
    )
    assert not jax.tree.leaves(nnx.state(model, nnx.BatchStat))
    groups = {m.num_groups for _, m in nnx.iter_graph(model) if isinstance(m, nnx.GroupNorm)}
    assert groups and all(g >= 1 for g in groups)
    x = rand(3, *(16,) * dims, 2)
    together, alone = model(x), model(x[:1])  # training mode: BatchNorm would differ here
    np.testing.assert_allclose(np.asarray(alone), np.asarray(together[:1]), rtol=1e-4, atol=1e-5)
    assert group_count(40, "group") == 8 and group_count(64, "group") == 32
    assert group_count(40, "instance") == 40


def test_unknown_norm_is_refused():
    from ernjax.models import create_model

    with pytest.raises(ValueError, match="config.model.norm='layer'"):
        create_model("ern_tiny", in_channels=2, num_classes=2, norm="layer", rngs=nnx.Rngs(0))
