"""ERN-Net: the EfficientNet topology of Gao et al. 2020 (JMIR Med Inform 8(11):e19805).

Gao describes "nine convolutional modules, including seven with inverted linear bottleneck
layers", 3x smaller and 8.1x faster than Inception-v3: a 3x3 stem conv, seven MBConv stages
(inverted residual, linear bottleneck, depthwise conv, squeeze-excitation), a 1x1 head conv,
global pooling, dropout and a dense layer -- EfficientNet-B0/B1 (Tan & Le 2019). Layer for layer
this is MONAI's `EfficientNetBN` (same parameter count, same logits with its weights), written
channels-last and for 2D or 3D input.

Padding: every conv uses TensorFlow's "SAME" rule on the actual input size (asymmetric, more at
the end, for stride 2), as the official EfficientNet and Keras do. MONAI instead fixes its pads at
construction from the nominal image size (224 for B0, 240 for B1); the two agree whenever the
input size has the nominal size's parity at each stride-2 layer (e.g. 64, 96, 224 for B0; 80,
240 for B1) and differ by one pixel of padding otherwise.
"""

import dataclasses
import functools
import math

import jax
import jax.numpy as jnp
from flax import nnx

from ernjax.models import layers

# EfficientNet's BatchNorm eps 1e-3 (Tan & Le 2019). Momentum 0.9, not the paper's 0.99: with
# the few hundred steps of a small cohort, 0.99 leaves the running statistics near their initial
# values and eval-mode predictions constant (measured: ern.py:tiny test AUC 0.5 with 0.99, 0.89
# with 0.9). Inference is unaffected, so the MONAI parity tests still hold.
_BN = dict(momentum=0.9, epsilon=1e-3)


@dataclasses.dataclass(frozen=True)
class Stage:
    """One MBConv stage of the B0 baseline, before width/depth scaling."""

    repeats: int
    kernel: int
    stride: int
    expand: int
    in_features: int
    out_features: int
    se_ratio: float = 0.25


# EfficientNet-B0 (Tan & Le 2019, Table 1), seven MBConv stages.
B0_STAGES = (
    Stage(1, 3, 1, 1, 32, 16),
    Stage(2, 3, 2, 6, 16, 24),
    Stage(2, 5, 2, 6, 24, 40),
    Stage(3, 3, 2, 6, 40, 80),
    Stage(3, 5, 1, 6, 80, 112),
    Stage(4, 5, 2, 6, 112, 192),
    Stage(1, 3, 1, 6, 192, 320),
)


def round_filters(filters: int, width: float, divisor: int = 8) -> int:
    """Scales a channel count by `width`, rounded to a multiple of `divisor` (never -10%)."""
    scaled = filters * width
    new = max(divisor, int(scaled + divisor / 2) // divisor * divisor)
    if new < 0.9 * scaled:
        new += divisor
    return int(new)


def round_repeats(repeats: int, depth: float) -> int:
    """Scales a stage's block count by `depth`, rounded up."""
    return int(math.ceil(depth * repeats))


class MBConv(nnx.Module):
    """Mobile inverted bottleneck: 1x1 expand, depthwise kxk, squeeze-excitation, 1x1 project.

    The projection is linear (no activation), and the identity skip -- with stochastic depth
    ("drop connect") in training -- is used when stride is 1 and the channel count is kept.
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        *,
        kernel: int,
        stride: int,
        expand: int,
        se_ratio: float,
        drop_rate: float,
        spatial_dims: int,
        dtype,
        rngs: nnx.Rngs,
    ):
        mid = in_features * expand
        kw = dict(spatial_dims=spatial_dims, dtype=dtype, rngs=rngs)
        bn = functools.partial(layers.norm_layer, **_BN, dtype=dtype, rngs=rngs)
        self.expand_conv = layers.conv(in_features, mid, 1, **kw) if expand != 1 else None
        self.expand_bn = bn(mid) if expand != 1 else None
        self.depthwise_conv = layers.conv(mid, mid, kernel, stride=stride, groups=mid, **kw)
        self.depthwise_bn = bn(mid)
        squeezed = max(1, int(in_features * se_ratio))
        se_kw = dict(kernel_init=layers.conv_init, param_dtype=jnp.float32, dtype=dtype, rngs=rngs)
        # Squeeze-excitation on the pooled [B, C] vector: two dense layers (1x1 convs in MONAI).
        self.se_reduce = nnx.Linear(mid, squeezed, **se_kw)
        self.se_expand = nnx.Linear(squeezed, mid, **se_kw)
        self.project_conv = layers.conv(mid, out_features, 1, **kw)
        self.project_bn = bn(out_features)
        self.skip = stride == 1 and in_features == out_features
        # Stochastic depth drops a whole sample's residual branch: broadcast over all but batch.
        rate = drop_rate if self.skip else 0.0
        self.drop_path = nnx.Dropout(
            rate, broadcast_dims=tuple(range(1, spatial_dims + 2)), rngs=rngs if rate else None
        )

    def __call__(self, inputs: jax.Array) -> jax.Array:
        """Applies the block to a channels-last batch."""
        x = inputs
        if self.expand_conv is not None:
            x = jax.nn.silu(self.expand_bn(self.expand_conv(x)))
        x = jax.nn.silu(self.depthwise_bn(self.depthwise_conv(x)))
        squeezed = jnp.mean(x, axis=tuple(range(1, x.ndim - 1)))
        gate = self.se_expand(jax.nn.silu(self.se_reduce(squeezed)))
        x = x * jax.nn.sigmoid(gate).reshape(gate.shape[0], *[1] * (x.ndim - 2), -1)
        x = self.project_bn(self.project_conv(x))
        if self.skip:
            x = self.drop_path(x) + inputs
        return x


class ERNNet(layers.Classifier):
    """EfficientNet-style classifier (ERN-Net, Gao 2020) for 2D or 3D channels-last input.

    Attributes:
      stem_conv, stem_bn: the 3x3 stride-2 stem.
      blocks: all MBConv blocks of the seven stages, in order (an `nnx.List`).
      head_conv, head_bn: the 1x1 head conv; its activation is the `features` output.
      dropout, fc: the classifier (see `layers.Classifier`).
    """

    family = "efficientnet"

    def __init__(
        self,
        *,
        in_channels: int,
        num_classes: int,
        spatial_dims: int = 2,
        width: float = 1.0,
        depth: float = 1.0,
        dropout: float = 0.0,
        drop_connect_rate: float = 0.2,
        stages: tuple[Stage, ...] = B0_STAGES,
        stem_features: int = 32,
        head_features: int = 1280,
        dtype=jnp.float32,
        rngs: nnx.Rngs,
    ):
        """Builds the network.

        Args:
          in_channels: input channels (3 for Gao's T1/T2/T1c fusion).
          num_classes: number of logits.
          spatial_dims: 2 or 3.
          width: channel multiplier (B0 1.0, B1 1.0).
          depth: block-count multiplier (B0 1.0, B1 1.1).
          dropout: dropout rate before the dense layer (EfficientNet-B0/B1 use 0.2).
          drop_connect_rate: stochastic-depth rate of the last block, scaled linearly from 0
            over the blocks (EfficientNet: 0.2).
          stages: the unscaled stage table.
          stem_features: unscaled stem channels.
          head_features: unscaled head-conv channels.
          dtype: compute dtype; parameters stay float32.
          rngs: `nnx.Rngs` with `params` and `dropout` streams (or a default stream).
        """
        self.spatial_dims, self.in_channels = spatial_dims, in_channels
        kw = dict(spatial_dims=spatial_dims, dtype=dtype, rngs=rngs)
        bn = functools.partial(layers.norm_layer, **_BN, dtype=dtype, rngs=rngs)
        stem = round_filters(stem_features, width)
        self.stem_conv = layers.conv(in_channels, stem, 3, stride=2, **kw)
        self.stem_bn = bn(stem)
        specs = _block_specs(stages, width, depth)
        self.blocks = nnx.List(
            MBConv(**spec, drop_rate=drop_connect_rate * i / len(specs), **kw)
            for i, spec in enumerate(specs)
        )
        head = round_filters(head_features, width)
        self.head_conv = layers.conv(specs[-1]["out_features"], head, 1, **kw)
        self.head_bn = bn(head)
        # The head's init is torch.nn.Linear's (uniform +-1/sqrt(fan_in)), not EfficientNet's
        # uniform +-1/sqrt(fan_out): with 2 classes fan_out gives +-0.7 weights over 1280
        # features, logits of order 10 and a first-step loss of 12 (measured on configs/ern.py).
        self._init_head(head, num_classes, dropout, layers.dense_init_fan_in, rngs)

    def features(self, x: jax.Array) -> jax.Array:
        """Returns the activated head-conv map [B, *spatial / 32, F] (Grad-CAM's target)."""
        layers.check_input(x, self.spatial_dims, self.in_channels, "ERN-Net")
        x = jax.nn.silu(self.stem_bn(self.stem_conv(x)))
        for block in self.blocks:
            x = block(x)
        return jax.nn.silu(self.head_bn(self.head_conv(x)))


def _block_specs(stages: tuple[Stage, ...], width: float, depth: float) -> list[dict]:
    """Expands the stage table into one keyword dict per MBConv block, scaled."""
    specs = []
    for stage in stages:
        in_f = round_filters(stage.in_features, width)
        out_f = round_filters(stage.out_features, width)
        for i in range(round_repeats(stage.repeats, depth)):
            specs.append(
                dict(
                    in_features=in_f if i == 0 else out_f,
                    out_features=out_f,
                    kernel=stage.kernel,
                    stride=stage.stride if i == 0 else 1,
                    expand=stage.expand,
                    se_ratio=stage.se_ratio,
                )
            )
    return specs


# name -> ERNNet keyword arguments (EfficientNet-B0/B1 scaling of Tan & Le 2019; Gao 2020's
# "3x smaller, 8.1x faster than Inception-v3" is B1's figure).
VARIANTS = {
    "ern_b0": dict(width=1.0, depth=1.0),
    "ern_b1": dict(width=1.0, depth=1.1),
    # Seconds-fast for tests: one block per stage, quarter width, same code.
    "ern_tiny": dict(width=0.25, depth=0.25),
}
