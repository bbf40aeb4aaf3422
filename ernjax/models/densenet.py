"""DenseNet-121/169/201/264 for 2D and 3D input, layer for layer MONAI's `DenseNet`.

Huang, Liu, van der Maaten & Weinberger 2017, "Densely Connected Convolutional Networks" (CVPR,
arXiv:1608.06993), the DenseNet-BC variant: a 7x7 stride-2 stem conv with BatchNorm and ReLU and
a 3x3 stride-2 max pool; four dense blocks whose layers (BN-ReLU-1x1 conv to bn_size * growth,
BN-ReLU-3x3 conv to growth) each append `growth_rate` channels to their input; between blocks a
transition (BN-ReLU-1x1 conv halving the channels, 2x2 average pool); a final BatchNorm and
ReLU, global average pooling and a dense layer. Same options, defaults, parameter counts and
(up to the rename tables `convert.DENSENET_MONAI` / `DENSENET_TORCHVISION`) parameter names as
`monai.networks.nets.DenseNet121` .. `DenseNet264`, channels-last.

`features` returns the final map after BatchNorm and ReLU (MONAI applies that ReLU in its
`class_layers`): the activated map Grad-CAM expects. `dropout` is the rate before the dense
layer (MONAI has none); MONAI's `dropout_prob` after each dense layer is the option of that name.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from ernjax.models.layers import (
    Classifier,
    check_input,
    conv_general_dilated,
    dense_init_fan_in,
    host_init,
    max_pool,
    norm_layer,
)

# PyTorch BatchNorm defaults: momentum 0.1 (Flax 0.9), eps 1e-5.
_BN = dict(momentum=0.9, epsilon=1e-5)
# MONAI's conv init: torch `kaiming_normal_` with its default mode fan_in, variance 2 / fan_in.
conv_init_fan_in = host_init(
    lambda rng, shape: rng.normal(0.0, np.sqrt(2.0 / np.prod(shape[:-1])), shape),
)


def _conv(in_f, out_f, kernel, *, stride=1, common):
    """A bias-free conv with PyTorch's symmetric padding kernel // 2 and MONAI's init."""
    nd = common["spatial_dims"]
    return nnx.Conv(
        in_f,
        out_f,
        kernel_size=(kernel,) * nd,
        strides=(stride,) * nd,
        padding=[(kernel // 2, kernel // 2)] * nd,
        use_bias=False,
        kernel_init=conv_init_fan_in,
        conv_general_dilated=conv_general_dilated,  # fast paths on the CPU
        dtype=common["dtype"],
        param_dtype=jnp.float32,
        rngs=common["rngs"],
    )


class DenseLayer(nnx.Module):
    """BN-ReLU-1x1 conv (bn_size * growth) - BN-ReLU-3x3 conv (growth), concatenated to x."""

    def __init__(self, in_f, *, growth_rate, bn_size, dropout_prob, common):
        mid = bn_size * growth_rate
        bn = functools.partial(norm_layer, **_BN, dtype=common["dtype"], rngs=common["rngs"])
        self.norm1, self.conv1 = bn(in_f), _conv(in_f, mid, 1, common=common)
        self.norm2, self.conv2 = bn(mid), _conv(mid, growth_rate, 3, common=common)
        rngs = common["rngs"] if dropout_prob > 0 else None
        self.dropout = nnx.Dropout(dropout_prob, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        """Returns [x, new features] along the channel axis."""
        out = self.conv1(jax.nn.relu(self.norm1(x)))
        out = self.dropout(self.conv2(jax.nn.relu(self.norm2(out))))
        return jnp.concatenate([x, out], axis=-1)


class DenseBlock(nnx.Module):
    """`num_layers` dense layers, named denselayer1 .. denselayerN as in MONAI."""

    def __init__(self, in_f, num_layers, *, growth_rate, bn_size, dropout_prob, common):
        self.num_layers = num_layers
        for i in range(num_layers):
            layer = DenseLayer(
                in_f + i * growth_rate,
                growth_rate=growth_rate,
                bn_size=bn_size,
                dropout_prob=dropout_prob,
                common=common,
            )
            setattr(self, f"denselayer{i + 1}", layer)

    def __call__(self, x: jax.Array) -> jax.Array:
        """Applies the layers in order; the width grows by growth_rate per layer."""
        for i in range(self.num_layers):
            x = getattr(self, f"denselayer{i + 1}")(x)
        return x


class Transition(nnx.Module):
    """BN-ReLU-1x1 conv to `out_f` channels, then a 2x2 stride-2 average pool."""

    def __init__(self, in_f, out_f, *, common):
        self.norm = norm_layer(in_f, **_BN, dtype=common["dtype"], rngs=common["rngs"])
        self.conv = _conv(in_f, out_f, 1, common=common)

    def __call__(self, x: jax.Array) -> jax.Array:
        """Applies the transition (halves every spatial size, rounding down)."""
        x = self.conv(jax.nn.relu(self.norm(x)))
        nd = x.ndim - 2
        return nnx.avg_pool(x, (2,) * nd, strides=(2,) * nd)


class DenseNet(Classifier):
    """DenseNet classifier for 2D or 3D channels-last input.

    Attributes:
      conv0, norm0: the 7x7 stride-2 stem, then a 3x3 stride-2 max pool.
      denseblock1 .. denseblockN: `DenseBlock`s; transition1 .. transition(N-1) between them.
      norm5: the final BatchNorm (ReLU follows); its activated output is the `features` map.
      dropout, fc: the classifier (see `Classifier`).
    """

    family = "densenet"

    def __init__(
        self,
        *,
        block_config: tuple[int, ...],
        in_channels: int,
        num_classes: int,
        spatial_dims: int = 2,
        dropout: float = 0.0,
        init_features: int = 64,
        growth_rate: int = 32,
        bn_size: int = 4,
        dropout_prob: float = 0.0,
        dtype=jnp.float32,
        rngs: nnx.Rngs,
    ):
        """Builds the network; defaults are MONAI's `DenseNet121(...)`.

        Args:
          block_config: layers per dense block, (6, 12, 24, 16) for DenseNet-121.
          in_channels: input channels (modalities).
          num_classes: number of logits.
          spatial_dims: 2 or 3.
          dropout: dropout rate before the dense layer (MONAI has none: 0).
          init_features: width of the stem conv.
          growth_rate: channels each dense layer adds (k in the paper).
          bn_size: bottleneck width factor (the 1x1 conv has bn_size * k channels).
          dropout_prob: dropout after each dense layer (MONAI's option of that name).
          dtype: compute dtype; parameters stay float32.
          rngs: `nnx.Rngs` with `params` and `dropout` streams (or a default stream).
        """
        self.spatial_dims, self.in_channels = spatial_dims, in_channels
        self.num_blocks = len(block_config)
        common = dict(spatial_dims=spatial_dims, dtype=dtype, rngs=rngs)
        self.conv0 = _conv(in_channels, init_features, 7, stride=2, common=common)
        self.norm0 = norm_layer(init_features, **_BN, dtype=dtype, rngs=rngs)
        in_f = init_features
        layer_args = dict(growth_rate=growth_rate, bn_size=bn_size, dropout_prob=dropout_prob)
        for i, num_layers in enumerate(block_config):
            block = DenseBlock(in_f, num_layers, **layer_args, common=common)
            setattr(self, f"denseblock{i + 1}", block)
            in_f += num_layers * growth_rate
            if i < self.num_blocks - 1:
                setattr(self, f"transition{i + 1}", Transition(in_f, in_f // 2, common=common))
                in_f //= 2
        self.norm5 = norm_layer(in_f, **_BN, dtype=dtype, rngs=rngs)
        self._init_head(in_f, num_classes, dropout, dense_init_fan_in, rngs)

    def features(self, x: jax.Array) -> jax.Array:
        """Returns relu(norm5(...)), [B, *spatial/32, F] (Grad-CAM's target)."""
        check_input(x, self.spatial_dims, self.in_channels, "DenseNet")
        x = jax.nn.relu(self.norm0(self.conv0(x)))
        x = max_pool(x, 3, 2, padding=1)
        for i in range(self.num_blocks):
            x = getattr(self, f"denseblock{i + 1}")(x)
            if i < self.num_blocks - 1:
                x = getattr(self, f"transition{i + 1}")(x)
        return jax.nn.relu(self.norm5(x))


# name -> DenseNet keyword arguments (MONAI's DenseNet121 .. DenseNet264 block configs).
VARIANTS = {
    "densenet121": dict(block_config=(6, 12, 24, 16)),
    "densenet169": dict(block_config=(6, 12, 32, 32)),
    "densenet201": dict(block_config=(6, 12, 48, 32)),
    "densenet264": dict(block_config=(6, 12, 64, 48)),
}
