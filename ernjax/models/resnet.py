"""One ResNet for 2D and 3D input (MONAI's `spatial_dims` idea), basic and bottleneck blocks.

Layer for layer MONAI's `monai.networks.nets.ResNet` (itself Hara et al.'s 3D-ResNets and the
MedicalNet layout, Chen et al. 2019 "Med3D"), channels-last: same options (shortcut type A/B,
conv1 kernel size and stride, no_max_pool, widen factor, bias_downsample), same defaults as
MONAI's `resnet10(...)` .. `resnet50(...)` functions, same parameter names up to a rename table
(see `convert.py`), so MONAI and MedicalNet weights load. Ying et al. 2025 (Front Oncol
15:1573700) found the 3D ResNet-10 best on multimodal volumes.

One deliberate difference: MONAI's type-A shortcut (zero-padded identity) detaches its input
from the autograd graph (`out.data`, a leftover of pre-0.4 PyTorch), so no gradient flows
through it; here it does. Forward outputs are identical.
"""

import functools

import jax
import jax.numpy as jnp
from flax import nnx

from ernjax.models.layers import (
    Classifier,
    check_input,
    conv,
    dense_init_fan_in,
    max_pool,
    norm_layer,
)

# PyTorch BatchNorm defaults: momentum 0.1 (Flax 0.9), eps 1e-5.
_BN = dict(momentum=0.9, epsilon=1e-5)


class Shortcut(nnx.Module):
    """The residual path when the block changes stride or width.

    Type "A": parameter-free, subsample by the stride and zero-pad the new channels.
    Type "B": a strided 1x1 conv (bias optional, MONAI's `bias_downsample`) and a BatchNorm.
    """

    def __init__(self, in_f, out_f, *, stride, kind, bias, spatial_dims, dtype, rngs):
        if kind not in ("A", "B"):
            raise ValueError(f"shortcut_type must be 'A' or 'B', got {kind!r}")
        self.stride, self.pad = stride, out_f - in_f
        type_b = kind == "B"
        common = dict(spatial_dims=spatial_dims, dtype=dtype, rngs=rngs)
        self.conv = (
            conv(in_f, out_f, 1, stride=stride, padding=0, use_bias=bias, **common)
            if type_b
            else None
        )
        self.bn = norm_layer(out_f, **_BN, dtype=dtype, rngs=rngs) if type_b else None

    def __call__(self, x: jax.Array) -> jax.Array:
        """Maps the block input onto the block output's shape."""
        if self.conv is not None:
            return self.bn(self.conv(x))
        s = self.stride
        x = x[(slice(None), *[slice(None, None, s)] * (x.ndim - 2))]
        return jnp.pad(x, [(0, 0)] * (x.ndim - 1) + [(0, self.pad)])


class BasicBlock(nnx.Module):
    """Two 3x3 convs with BatchNorm and ReLU, plus the residual."""

    expansion = 1

    def __init__(self, in_f, planes, *, stride, shortcut, spatial_dims, dtype, rngs):
        c3 = functools.partial(conv, padding=1, spatial_dims=spatial_dims, dtype=dtype, rngs=rngs)
        bn = functools.partial(norm_layer, **_BN, dtype=dtype, rngs=rngs)
        self.conv1, self.bn1 = c3(in_f, planes, 3, stride=stride), bn(planes)
        self.conv2, self.bn2 = c3(planes, planes, 3), bn(planes)
        self.downsample = shortcut

    def __call__(self, x: jax.Array) -> jax.Array:
        """Applies the block to a channels-last batch."""
        out = jax.nn.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        residual = x if self.downsample is None else self.downsample(x)
        return jax.nn.relu(out + residual)


class Bottleneck(nnx.Module):
    """1x1 reduce, 3x3 (strided, as MONAI and torchvision v1.5), 1x1 expand by 4, residual."""

    expansion = 4

    def __init__(self, in_f, planes, *, stride, shortcut, spatial_dims, dtype, rngs):
        cv = functools.partial(conv, spatial_dims=spatial_dims, dtype=dtype, rngs=rngs)
        bn = functools.partial(norm_layer, **_BN, dtype=dtype, rngs=rngs)
        out_f = planes * self.expansion
        self.conv1, self.bn1 = cv(in_f, planes, 1, padding=0), bn(planes)
        self.conv2, self.bn2 = cv(planes, planes, 3, stride=stride, padding=1), bn(planes)
        self.conv3, self.bn3 = cv(planes, out_f, 1, padding=0), bn(out_f)
        self.downsample = shortcut

    def __call__(self, x: jax.Array) -> jax.Array:
        """Applies the block to a channels-last batch."""
        out = jax.nn.relu(self.bn1(self.conv1(x)))
        out = jax.nn.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        residual = x if self.downsample is None else self.downsample(x)
        return jax.nn.relu(out + residual)


BLOCKS = {"basic": BasicBlock, "bottleneck": Bottleneck}


class ResNet(Classifier):
    """ResNet classifier for 2D or 3D channels-last input.

    Attributes:
      conv1, bn1: the stem conv (kernel `conv1_size`, stride `conv1_stride`), then a 3x3
        stride-2 max pool unless `no_max_pool`.
      layer1 .. layer4: `nnx.List`s of blocks; layer4's output is the `features` map.
      dropout, fc: the classifier (see `Classifier`).
    """

    family = "resnet"

    def __init__(
        self,
        *,
        block: str,
        layers: tuple[int, int, int, int],
        in_channels: int,
        num_classes: int,
        spatial_dims: int = 3,
        dropout: float = 0.0,
        block_features: tuple[int, ...] = (64, 128, 256, 512),
        widen_factor: float = 1.0,
        conv1_size: int = 7,
        conv1_stride: int = 1,
        no_max_pool: bool = False,
        shortcut_type: str = "B",
        bias_downsample: bool = True,
        dtype=jnp.float32,
        rngs: nnx.Rngs,
    ):
        """Builds the network; defaults are those of MONAI's `resnet10(...)` functions.

        Args:
          block: "basic" or "bottleneck".
          layers: blocks per stage, e.g. (1, 1, 1, 1) for ResNet-10.
          in_channels: input channels (modalities).
          num_classes: number of logits.
          spatial_dims: 2 or 3.
          dropout: dropout rate before the dense layer (MONAI has none: 0).
          block_features: base widths of the four stages.
          widen_factor: multiplies `block_features`.
          conv1_size: stem kernel size (7).
          conv1_stride: stem stride (MONAI 1; MedicalNet and torchvision 2).
          no_max_pool: skip the max pool after the stem.
          shortcut_type: "A" (zero-padded identity) or "B" (1x1 conv + BatchNorm).
          bias_downsample: bias in the type-B shortcut conv (MONAI True; MedicalNet-10/50 False).
          dtype: compute dtype; parameters stay float32.
          rngs: `nnx.Rngs` with `params` and `dropout` streams (or a default stream).
        """
        if block not in BLOCKS:
            raise ValueError(f"unknown ResNet block {block!r}; use one of {sorted(BLOCKS)}")
        self.spatial_dims, self.in_channels = spatial_dims, in_channels
        self.no_max_pool = no_max_pool
        widths = [int(w * widen_factor) for w in block_features]
        common = dict(spatial_dims=spatial_dims, dtype=dtype, rngs=rngs)
        self.conv1 = conv(
            in_channels,
            widths[0],
            conv1_size,
            stride=conv1_stride,
            padding=conv1_size // 2,
            **common,
        )
        self.bn1 = norm_layer(widths[0], **_BN, dtype=dtype, rngs=rngs)
        in_f = widths[0]
        for i, (planes, n) in enumerate(zip(widths, layers, strict=True)):
            shortcut = dict(kind=shortcut_type, bias=bias_downsample)
            stage, in_f = _make_stage(BLOCKS[block], in_f, planes, n, i > 0, shortcut, common)
            setattr(self, f"layer{i + 1}", stage)
        self._init_head(in_f, num_classes, dropout, dense_init_fan_in, rngs)

    def features(self, x: jax.Array) -> jax.Array:
        """Returns layer4's output [B, *spatial', F] (Grad-CAM's target)."""
        check_input(x, self.spatial_dims, self.in_channels, "ResNet")
        x = jax.nn.relu(self.bn1(self.conv1(x)))
        if not self.no_max_pool:
            x = max_pool(x, 3, 2, padding=1)
        for stage in (self.layer1, self.layer2, self.layer3, self.layer4):
            for blk in stage:
                x = blk(x)
        return x


def _make_stage(block_cls, in_f, planes, n, downsample, shortcut, common):
    """Returns (the stage's blocks as an nnx.List, its output width); MONAI's `_make_layer`."""
    blocks, out_f = [], planes * block_cls.expansion
    for j in range(n):
        stride = 2 if downsample and j == 0 else 1
        short = None
        if stride != 1 or in_f != out_f:
            short = Shortcut(in_f, out_f, stride=stride, **shortcut, **common)
        blocks.append(block_cls(in_f, planes, stride=stride, shortcut=short, **common))
        in_f = out_f
    return nnx.List(blocks), out_f


# name -> ResNet keyword arguments (MONAI's resnet10 .. resnet50 blocks and depths).
VARIANTS = {
    "resnet10": dict(block="basic", layers=(1, 1, 1, 1)),
    "resnet18": dict(block="basic", layers=(2, 2, 2, 2)),
    "resnet34": dict(block="basic", layers=(3, 4, 6, 3)),
    "resnet50": dict(block="bottleneck", layers=(3, 4, 6, 3)),
    # Seconds-fast for tests: ResNet-10 at 1/8 width (8, 16, 32, 64 channels), same code.
    "resnet10_tiny": dict(block="basic", layers=(1, 1, 1, 1), widen_factor=0.125),
}
