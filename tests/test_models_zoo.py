"""VGG and DenseNet: parameter counts, shapes in 2D and 3D, bfloat16, parity with PyTorch/MONAI.

The parity tests need the `torch` extra (CPU PyTorch + MONAI) and are skipped without it. MONAI
has no VGG: the reference is written here from the paper (torchvision's module names).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from model_helpers import build, contract, forward

from ernjax.models import count_params, model_names
from ernjax.models.convert import load_state_dict
from ernjax.models.vgg import adaptive_avg_pool

# Small options for the contract tests: same code paths, seconds to compile.
VGG_SMALL = dict(hidden_features=32)
DENSENET_SMALL = dict(block_config=(2, 2, 2, 2), init_features=16, growth_rate=8)


def shape_count(name, **kw):
    """Parameter count from shapes only: nothing is sampled or allocated."""
    return count_params(nnx.eval_shape(lambda: build(name, **kw)))


def rand(*shape, seed=0):
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def test_registry_has_both_families():
    names = model_names()
    for depth in (11, 16, 19):
        assert f"vgg{depth}" in names and f"vgg{depth}_bn" in names
    for depth in (121, 169, 201):
        assert f"densenet{depth}" in names


@pytest.mark.parametrize(
    "name, expected",
    [  # torchvision's figures (3 channels, 1000 classes); VGG-16 is the paper's 138M
        ("vgg11", 132_863_336),
        ("vgg16", 138_357_544),
        ("vgg19", 143_667_240),
        ("vgg16_bn", 138_365_992),
        ("densenet121", 7_978_856),
        ("densenet169", 14_149_480),
    ],
)
def test_2d_imagenet_parameter_counts(name, expected):
    assert shape_count(name, num_classes=1000) == expected


def test_vgg_3d_pools_to_one_before_the_dense_layers():
    # 3D default pool_size 1: the first fc is 512 -> 4096 (not 7^3 * 512 -> 4096).
    convs_3d = sum(27 * i * o + o for i, o in _vgg_conv_pairs("D"))
    dense = (512 * 4096 + 4096) + (4096 * 4096 + 4096) + (4096 * 2 + 2)
    assert shape_count("vgg16", spatial_dims=3) == convs_3d + dense
    # ... unless asked: pool_size 2 makes it 2^3 * 512 inputs.
    dense2 = dense + 7 * 512 * 4096
    assert shape_count("vgg16", spatial_dims=3, pool_size=2) == convs_3d + dense2


def _vgg_conv_pairs(config):
    from ernjax.models.vgg import CONFIGS

    widths = [w for w in CONFIGS[config] if w != "M"]
    return list(zip([3, *widths[:-1]], widths, strict=True))


@pytest.mark.parametrize(
    "name, spatial, features_shape, options",
    [
        ("vgg11", (32, 32), (2, 2, 512), VGG_SMALL),  # features before the 5th pool: /16
        ("vgg11_bn", (32, 32, 32), (2, 2, 2, 512), VGG_SMALL),
        ("vgg11", (40, 48), (2, 3, 512), dict(hidden_features=16, pool_size=3)),
        ("densenet121", (32, 32, 32), (1, 1, 1, 16 + 2 * 8), DENSENET_SMALL),
        ("densenet121", (64, 64), (2, 2, 32), DENSENET_SMALL),
    ],
)
def test_forward_shapes_and_features_classify_contract(name, spatial, features_shape, options):
    model = build(name, spatial_dims=len(spatial), in_channels=2, num_classes=3, **options)
    model.eval()
    x = jnp.asarray(rand(2, *spatial, 2))
    logits, feats, again, grads = contract(model, x)
    assert logits.shape == (2, 3) and logits.dtype == jnp.float32
    assert feats.shape == (2, *features_shape)
    np.testing.assert_allclose(again, logits, rtol=1e-5, atol=1e-5)
    assert grads.shape == feats.shape and bool(jnp.any(grads != 0))


@pytest.mark.parametrize(
    "name, spatial, options",
    [("vgg11_bn", (32, 32), VGG_SMALL), ("densenet121", (16, 16, 16), DENSENET_SMALL)],
)
def test_bfloat16_compute_keeps_float32_params_and_logits(name, spatial, options):
    model = build(name, spatial_dims=len(spatial), dtype="bfloat16", **options)
    params = jax.tree.leaves(nnx.state(model, nnx.Param))
    assert {p.dtype for p in params} == {jnp.dtype(jnp.float32)}
    model.eval()
    x = jnp.asarray(rand(2, *spatial, 3))
    logits, feats, _, _ = contract(model, x)
    assert feats.dtype == jnp.bfloat16 and logits.dtype == jnp.float32
    ref = build(name, spatial_dims=len(spatial), **options)
    ref.eval()
    scale = float(jnp.abs(forward(ref, x)).max())
    np.testing.assert_allclose(logits, forward(ref, x), rtol=0, atol=0.1 * scale)


def test_dropout_only_in_train_mode():
    model = build("vgg11", dropout=0.5, **VGG_SMALL)
    x = jnp.asarray(rand(2, 32, 32, 3))
    a, b = forward(model, x), forward(model, x)
    assert not np.allclose(a, b)
    model.eval()
    np.testing.assert_array_equal(forward(model, x), forward(model, x))


def test_unknown_vgg_config_and_wrong_layout_are_clear_errors():
    with pytest.raises(ValueError, match="unknown VGG config 'Z'"):
        build("vgg11", config="Z")
    model = build("densenet121", spatial_dims=3, in_channels=4, **DENSENET_SMALL)
    with pytest.raises(ValueError, match=r"DenseNet expects channels-last input \[B, S, S, S, 4\]"):
        model(jnp.zeros((1, 4, 16, 16, 16)))


# ---------------------------------------------------------------- parity with PyTorch / MONAI


def torch_count(module) -> int:
    return sum(p.numel() for p in module.parameters() if p.requires_grad)


def calibrate(torch, tm, x: np.ndarray) -> None:
    """Random BatchNorm affines, then running statistics from one momentum-1 pass over `x`."""
    g = torch.Generator().manual_seed(1)
    for m in tm.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.weight.data.copy_(torch.rand(m.weight.shape, generator=g) * 0.4 + 0.8)
            m.bias.data.copy_(torch.randn(m.bias.shape, generator=g) * 0.1)
            m.momentum = 1.0
    tm.train()
    with torch.no_grad():
        tm(torch.from_numpy(x))
    tm.eval()


def compare(torch, tm, model, x: np.ndarray, source: str) -> None:
    """Copies `tm`'s weights into `model`; asserts equal eval-mode logits on channels-first x."""
    calibrate(torch, tm, x)
    assert count_params(model) == torch_count(tm)
    report = load_state_dict(model, tm.state_dict(), source=source)
    assert report.complete
    model.eval()
    with torch.no_grad():
        theirs = tm(torch.from_numpy(x)).numpy()
    ours = np.asarray(forward(model, jnp.asarray(np.moveaxis(x, 1, -1))))
    scale = np.abs(theirs).max()
    assert theirs.std(axis=0).min() > 1e-3 * scale, "logits must depend on the input"
    np.testing.assert_allclose(ours, theirs, rtol=0, atol=1e-4 * scale)


def torch_vgg(torch, config, *, spatial_dims, in_channels, num_classes, bn, pool, hidden):
    """VGG from Simonyan & Zisserman Table 1, in torchvision's module layout."""
    from ernjax.models.vgg import CONFIGS

    nn = torch.nn
    conv = (nn.Conv2d, nn.Conv3d)[spatial_dims - 2]
    norm = (nn.BatchNorm2d, nn.BatchNorm3d)[spatial_dims - 2]
    max_pool = (nn.MaxPool2d, nn.MaxPool3d)[spatial_dims - 2]
    avg_pool = (nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d)[spatial_dims - 2]

    class VGG(nn.Module):
        def __init__(self):
            super().__init__()
            layers, in_f = [], in_channels
            for w in CONFIGS[config]:
                if w == "M":
                    layers.append(max_pool(kernel_size=2, stride=2))
                    continue
                layers.append(conv(in_f, w, kernel_size=3, padding=1))
                layers += [norm(w), nn.ReLU()] if bn else [nn.ReLU()]
                in_f = w
            self.features = nn.Sequential(*layers)
            self.avgpool = avg_pool(pool)
            self.classifier = nn.Sequential(
                nn.Linear(in_f * pool**spatial_dims, hidden),
                nn.ReLU(),
                nn.Dropout(0.5),
                nn.Linear(hidden, hidden),
                nn.ReLU(),
                nn.Dropout(0.5),
                nn.Linear(hidden, num_classes),
            )

            for m in self.modules():  # torchvision's init (torch's default fades to the bias)
                if isinstance(m, conv):
                    nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                    nn.init.zeros_(m.bias)
                elif isinstance(m, nn.Linear):
                    nn.init.normal_(m.weight, 0, 0.01)
                    nn.init.zeros_(m.bias)

        def forward(self, x):
            return self.classifier(torch.flatten(self.avgpool(self.features(x)), 1))

    return VGG()


@pytest.mark.parametrize(
    "name, spatial, in_channels, pool",
    [
        ("vgg11", (64, 64), 3, 7),  # 2x2 map pooled up to 7x7 (overlapping adaptive bins)
        ("vgg11_bn", (32, 32, 32), 4, 1),  # 3D default: pool to 1
    ],
)
def test_vgg_logits_match_torch_reference(name, spatial, in_channels, pool):
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    nd = len(spatial)
    tm = torch_vgg(
        torch,
        "A",
        spatial_dims=nd,
        in_channels=in_channels,
        num_classes=2,
        bn=name.endswith("_bn"),
        pool=pool,
        hidden=64,
    )
    model = build(name, spatial_dims=nd, in_channels=in_channels, hidden_features=64)
    assert model.pool_size == pool
    compare(torch, tm, model, rand(2, in_channels, *spatial), "torchvision")


@pytest.mark.parametrize("n, size", [(10, 7), (3, 7), (7, 7), (9, 1), (5, 2)])
def test_adaptive_avg_pool_matches_torch(n, size):
    torch = pytest.importorskip("torch")
    x = rand(2, 3, n, n + 1)
    theirs = torch.nn.functional.adaptive_avg_pool2d(torch.from_numpy(x), size).numpy()
    ours = adaptive_avg_pool(jnp.asarray(np.moveaxis(x, 1, -1)), size)
    np.testing.assert_allclose(np.moveaxis(np.asarray(ours), -1, 1), theirs, atol=1e-6)


def monai_densenet(spatial_dims, in_channels, depth=121, **kw):
    nets = pytest.importorskip("monai.networks.nets")
    cls = getattr(nets, f"DenseNet{depth}")
    return cls(spatial_dims=spatial_dims, in_channels=in_channels, out_channels=2, **kw)


@pytest.mark.parametrize("depth, spatial_dims, in_channels", [(121, 2, 4), (169, 3, 1)])
def test_densenet_parameter_counts_match_monai(depth, spatial_dims, in_channels):
    pytest.importorskip("torch")
    tm = monai_densenet(spatial_dims, in_channels, depth)
    ours = shape_count(f"densenet{depth}", spatial_dims=spatial_dims, in_channels=in_channels)
    assert ours == torch_count(tm)


@pytest.mark.parametrize("spatial, in_channels", [((64, 64), 4), ((32, 32, 32), 3)])
def test_densenet121_logits_match_monai(spatial, in_channels):
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    tm = monai_densenet(len(spatial), in_channels)
    model = build("densenet121", spatial_dims=len(spatial), in_channels=in_channels)
    compare(torch, tm, model, rand(2, in_channels, *spatial), "monai")


def test_densenet_torchvision_names_load():
    pytest.importorskip("torch")
    small = dict(block_config=(1, 2), init_features=8, growth_rate=4)
    tm = monai_densenet(2, 3, **small)
    # torchvision's names: no `layers.` level inside a dense layer, head `classifier`.
    state = {
        k.replace(".layers.", ".").replace("class_layers.out", "classifier"): v
        for k, v in tm.state_dict().items()
    }
    model = build("densenet121", **small)
    assert load_state_dict(model, state, source="torchvision").complete
    np.testing.assert_array_equal(
        model.denseblock2.denselayer2.conv2.kernel[...],
        tm.features.denseblock2.denselayer2.layers.conv2.weight.detach()
        .numpy()
        .transpose(2, 3, 1, 0),
    )
