"""Inception-v3 and Inception-ResNet-v2, the ImageNet baselines of Gao et al. 2020 (ERN-Net).

2D only, channels-last, any number of input channels and classes. Topologies and paddings are
Keras' (`keras.applications.InceptionV3`, `InceptionResNetV2`): stride-2 and stem convs VALID,
the rest SAME; layer for layer the same networks as torchvision's `inception_v3` and timm's
`inception_resnet_v2`. Every conv is torchvision's/timm's `BasicConv2d`: conv without bias,
BatchNorm (eps 1e-3, with scale and offset) and ReLU. Keras' BatchNorm has no scale, which is
why its parameter counts differ (see the class docstrings for the exact match).

Both need at least 75x75 pixels (five VALID reductions take 75 px to a 1x1 final map);
`features` raises a clear error below that. Differences from the references, none of which
changes a parameter count: the 3x3 average pools exclude the zero padding (TensorFlow's and
Keras' SAME pooling, timm; torchvision's Inception-v3 includes it); no auxiliary head; the
initializers are ernjax's He-normal convs and uniform dense layer, not the references' own.
"""

import functools

import jax
import jax.numpy as jnp
from flax import nnx

from ernjax.models.layers import (
    Classifier,
    check_input,
    conv_init,
    dense_init_fan_in,
    max_pool,
    norm_layer,
)

# torchvision/timm BasicConv2d: BatchNorm eps 1e-3, PyTorch momentum 0.1 (Flax 0.9).
_BN = dict(momentum=0.9, epsilon=1e-3)
MIN_SIZE = 75  # smallest input height and width: the final map is then 1x1


class ConvBN(nnx.Module):
    """Conv (no bias), BatchNorm and ReLU: torchvision's and timm's `BasicConv2d`."""

    def __init__(self, in_f, out_f, kernel, *, stride=1, padding="SAME", dtype, rngs):
        kernel = (kernel, kernel) if isinstance(kernel, int) else tuple(kernel)
        self.conv = nnx.Conv(
            in_f,
            out_f,
            kernel_size=kernel,
            strides=(stride, stride),
            padding=padding,
            use_bias=False,
            kernel_init=conv_init,
            dtype=dtype,
            param_dtype=jnp.float32,
            rngs=rngs,
        )
        self.bn = norm_layer(out_f, **_BN, dtype=dtype, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        """Applies conv, BatchNorm and ReLU."""
        return jax.nn.relu(self.bn(self.conv(x)))


def _chain(in_f, layers, common) -> nnx.Sequential:
    """ConvBNs in sequence from `(out, kernel[, stride])` tuples; stride 2 VALID, else SAME."""
    mods = []
    for out_f, kernel, *stride in layers:
        s = stride[0] if stride else 1
        mods.append(
            ConvBN(in_f, out_f, kernel, stride=s, padding="VALID" if s > 1 else "SAME", **common)
        )
        in_f = out_f
    return nnx.Sequential(*mods)


def _avg_pool(x):
    # 3x3, stride 1, SAME, padding not counted (Keras/TensorFlow and timm).
    return nnx.avg_pool(x, (3, 3), strides=(1, 1), padding="SAME", count_include_pad=False)


def _max_pool(x):
    return max_pool(x, 3, 2)


class Mixed(nnx.Module):
    """Parallel conv chains plus a pool branch, concatenated on channels.

    `pool="avg"`: a 3x3 stride-1 average pool then a 1x1 conv to `pool_features` (the
    resolution-keeping modules); `pool="max"`: a 3x3 stride-2 max pool passing the input
    channels through (the grid reductions, whose conv chains end in a stride-2 conv).
    """

    def __init__(self, in_f, branches, *, pool, pool_features=0, common):
        self.branches = nnx.List([_chain(in_f, b, common) for b in branches])
        self.pool_proj = _chain(in_f, [(pool_features, 1)], common) if pool == "avg" else None
        pooled = pool_features if pool == "avg" else in_f
        self.out_features = sum(b[-1][0] for b in branches) + pooled

    def __call__(self, x: jax.Array) -> jax.Array:
        """Applies every branch to `x` and concatenates their outputs."""
        outs = [branch(x) for branch in self.branches]
        outs.append(_max_pool(x) if self.pool_proj is None else self.pool_proj(_avg_pool(x)))
        return jnp.concatenate(outs, axis=-1)


class InceptionE(nnx.Module):
    """Inception-v3's Mixed_7b/7c: the 3x3 branches end in parallel 1x3 and 3x1 convs."""

    def __init__(self, in_f, *, common):
        self.branch1x1 = _chain(in_f, [(320, 1)], common)
        self.branch3x3_1 = _chain(in_f, [(384, 1)], common)
        self.branch3x3_2a = _chain(384, [(384, (1, 3))], common)
        self.branch3x3_2b = _chain(384, [(384, (3, 1))], common)
        self.branch3x3dbl_1 = _chain(in_f, [(448, 1), (384, 3)], common)
        self.branch3x3dbl_3a = _chain(384, [(384, (1, 3))], common)
        self.branch3x3dbl_3b = _chain(384, [(384, (3, 1))], common)
        self.branch_pool = _chain(in_f, [(192, 1)], common)
        self.out_features = 320 + 768 + 768 + 192

    def __call__(self, x: jax.Array) -> jax.Array:
        """Applies the four branches and concatenates them (2048 channels)."""
        a = self.branch3x3_1(x)
        b = self.branch3x3dbl_1(x)
        outs = [
            self.branch1x1(x),
            self.branch3x3_2a(a),
            self.branch3x3_2b(a),
            self.branch3x3dbl_3a(b),
            self.branch3x3dbl_3b(b),
            self.branch_pool(_avg_pool(x)),
        ]
        return jnp.concatenate(outs, axis=-1)


class Residual(nnx.Module):
    """Inception-ResNet block: `relu(x + scale * conv1x1(concat(branches(x))))`.

    The 1x1 up-projection has a bias and no BatchNorm (Keras and timm); `activation=False`
    drops the ReLU (the last block8).
    """

    def __init__(self, in_f, branches, *, scale, activation=True, common):
        self.scale, self.activation = scale, activation
        self.branches = nnx.List([_chain(in_f, b, common) for b in branches])
        self.up = nnx.Conv(
            sum(b[-1][0] for b in branches),
            in_f,
            kernel_size=(1, 1),
            use_bias=True,
            kernel_init=conv_init,
            dtype=common["dtype"],
            param_dtype=jnp.float32,
            rngs=common["rngs"],
        )

    def __call__(self, x: jax.Array) -> jax.Array:
        """Applies the block; the output has the input's shape."""
        mixed = jnp.concatenate([branch(x) for branch in self.branches], axis=-1)
        x = x + self.scale * self.up(mixed)
        return jax.nn.relu(x) if self.activation else x


class Stem(nnx.Module):
    """The shared stem: 3x3/2, 3x3, 3x3 SAME, max pool, 1x1, 3x3, max pool (35x35 at 299)."""

    def __init__(self, in_channels, *, common):
        self.conv2d_1a = ConvBN(in_channels, 32, 3, stride=2, padding="VALID", **common)
        self.conv2d_2a = ConvBN(32, 32, 3, padding="VALID", **common)
        self.conv2d_2b = ConvBN(32, 64, 3, padding="SAME", **common)
        self.conv2d_3b = ConvBN(64, 80, 1, padding="VALID", **common)
        self.conv2d_4a = ConvBN(80, 192, 3, padding="VALID", **common)

    def __call__(self, x: jax.Array) -> jax.Array:
        """Returns the 192-channel stem output."""
        x = _max_pool(self.conv2d_2b(self.conv2d_2a(self.conv2d_1a(x))))
        return _max_pool(self.conv2d_4a(self.conv2d_3b(x)))


def _check_2d(spatial_dims, model):
    if spatial_dims != 2:
        raise ValueError(
            f"{model} is a 2D network (ImageNet topology); got spatial_dims={spatial_dims}. "
            "Use it on 2D slices, or choose a resnet* or ern_* model for 3D volumes."
        )


def _check_size(x, spatial_dims, in_channels, model):
    check_input(x, spatial_dims, in_channels, model)
    if min(x.shape[1:-1]) < MIN_SIZE:
        raise ValueError(
            f"{model} needs images of at least {MIN_SIZE}x{MIN_SIZE} pixels, got "
            f"{x.shape[1]}x{x.shape[2]}; resize or pad the slices"
        )


class InceptionV3(Classifier):
    """Inception-v3 (Szegedy et al. 2016, "Rethinking the Inception Architecture").

    torchvision's/Keras' topology without the auxiliary head: stem, Mixed_5b-d (InceptionA),
    Mixed_6a, Mixed_6b-e (InceptionC, 7x7 widths 128, 160, 160, 192), Mixed_7a, Mixed_7b-c
    (InceptionE), global average pool, dropout, dense. With 3 channels and 1000 classes it has
    23,834,568 trainable parameters, exactly torchvision's `inception_v3(aux_logits=False)`.
    Keras' InceptionV3 reports 23,851,784 parameters in all: 23,817,352 trainable (its
    BatchNorms have no scale: 17,216 fewer) plus 34,432 moving means and variances.

    Attributes:
      stem: `Stem`; mixed_5b .. mixed_7c: the Inception modules; mixed_7c's 2048-channel
        output (8x8 at 299 px) is the `features` map.
      dropout, fc: the classifier (see `Classifier`).
    """

    family = "inception_v3"

    def __init__(
        self,
        *,
        in_channels: int,
        num_classes: int,
        spatial_dims: int = 2,
        dropout: float = 0.0,
        dtype=jnp.float32,
        rngs: nnx.Rngs,
    ):
        """Builds the network.

        Args:
          in_channels: input channels (modalities).
          num_classes: number of logits.
          spatial_dims: must be 2.
          dropout: dropout rate before the dense layer (torchvision 0.5, Keras none).
          dtype: compute dtype; parameters stay float32.
          rngs: `nnx.Rngs` with `params` and `dropout` streams (or a default stream).

        Raises:
          ValueError: spatial_dims is not 2.
        """
        _check_2d(spatial_dims, "Inception-v3")
        self.spatial_dims, self.in_channels = spatial_dims, in_channels
        common = dict(dtype=dtype, rngs=rngs)
        mixed = functools.partial(Mixed, common=common)
        self.stem = Stem(in_channels, common=common)
        in_f = 192
        for name, pool_features in (("mixed_5b", 32), ("mixed_5c", 64), ("mixed_5d", 64)):
            a = [[(64, 1)], [(48, 1), (64, 5)], [(64, 1), (96, 3), (96, 3)]]
            setattr(self, name, mixed(in_f, a, pool="avg", pool_features=pool_features))
            in_f = getattr(self, name).out_features
        self.mixed_6a = mixed(in_f, [[(384, 3, 2)], [(64, 1), (96, 3), (96, 3, 2)]], pool="max")
        in_f = self.mixed_6a.out_features
        for name, c7 in (
            ("mixed_6b", 128),
            ("mixed_6c", 160),
            ("mixed_6d", 160),
            ("mixed_6e", 192),
        ):
            c = [
                [(192, 1)],
                [(c7, 1), (c7, (1, 7)), (192, (7, 1))],
                [(c7, 1), (c7, (7, 1)), (c7, (1, 7)), (c7, (7, 1)), (192, (1, 7))],
            ]
            setattr(self, name, mixed(in_f, c, pool="avg", pool_features=192))
        d = [[(192, 1), (320, 3, 2)], [(192, 1), (192, (1, 7)), (192, (7, 1)), (192, 3, 2)]]
        self.mixed_7a = mixed(in_f, d, pool="max")
        self.mixed_7b = InceptionE(self.mixed_7a.out_features, common=common)
        self.mixed_7c = InceptionE(self.mixed_7b.out_features, common=common)
        self._init_head(self.mixed_7c.out_features, num_classes, dropout, dense_init_fan_in, rngs)

    def features(self, x: jax.Array) -> jax.Array:
        """Returns Mixed_7c's output [B, H', W', 2048] (Grad-CAM's target)."""
        _check_size(x, self.spatial_dims, self.in_channels, "Inception-v3")
        x = self.stem(x)
        for name in ("5b", "5c", "5d", "6a", "6b", "6c", "6d", "6e", "7a", "7b", "7c"):
            x = getattr(self, f"mixed_{name}")(x)
        return x


class InceptionResNetV2(Classifier):
    """Inception-ResNet-v2 (Szegedy et al. 2017, "Inception-v4, Inception-ResNet ...").

    Keras'/timm's topology: stem, Mixed_5b (320 channels), 10 block35 (scale 0.17), Mixed_6a
    (1088), 20 block17 (scale 0.1), Mixed_7a (2080), 9 block8 (scale 0.2) and a last block8
    (scale 1, no ReLU), conv_7b (1x1 to 1536), global average pool, dropout, dense. With 3
    channels and 1000 classes it has 55,843,464 trainable parameters, exactly timm's
    `inception_resnet_v2`. Keras' InceptionResNetV2 reports 55,873,736 in all: 55,813,192
    trainable (BatchNorms without scale: 30,272 fewer) plus 60,544 moving means and variances.

    Attributes:
      stem, mixed_5b, repeat (block35s), mixed_6a, repeat_1 (block17s), mixed_7a, repeat_2
        (block8s), block8, conv2d_7b (timm's names); conv2d_7b's 1536-channel output (8x8 at
        299 px) is the `features` map.
      dropout, fc: the classifier (see `Classifier`).
    """

    family = "inception_resnet_v2"

    def __init__(
        self,
        *,
        in_channels: int,
        num_classes: int,
        spatial_dims: int = 2,
        dropout: float = 0.0,
        dtype=jnp.float32,
        rngs: nnx.Rngs,
    ):
        """Builds the network.

        Args:
          in_channels: input channels (modalities).
          num_classes: number of logits.
          spatial_dims: must be 2.
          dropout: dropout rate before the dense layer (Keras and timm: none).
          dtype: compute dtype; parameters stay float32.
          rngs: `nnx.Rngs` with `params` and `dropout` streams (or a default stream).

        Raises:
          ValueError: spatial_dims is not 2.
        """
        _check_2d(spatial_dims, "Inception-ResNet-v2")
        self.spatial_dims, self.in_channels = spatial_dims, in_channels
        common = dict(dtype=dtype, rngs=rngs)
        self.stem = Stem(in_channels, common=common)
        b5 = [[(96, 1)], [(48, 1), (64, 5)], [(64, 1), (96, 3), (96, 3)]]
        self.mixed_5b = Mixed(192, b5, pool="avg", pool_features=64, common=common)
        b35 = [[(32, 1)], [(32, 1), (32, 3)], [(32, 1), (48, 3), (64, 3)]]
        self.repeat = _residuals(320, b35, 10, 0.17, common)
        b6 = [[(384, 3, 2)], [(256, 1), (256, 3), (384, 3, 2)]]
        self.mixed_6a = Mixed(320, b6, pool="max", common=common)
        b17 = [[(192, 1)], [(128, 1), (160, (1, 7)), (192, (7, 1))]]
        self.repeat_1 = _residuals(1088, b17, 20, 0.1, common)
        b7 = [[(256, 1), (384, 3, 2)], [(256, 1), (288, 3, 2)], [(256, 1), (288, 3), (320, 3, 2)]]
        self.mixed_7a = Mixed(1088, b7, pool="max", common=common)
        b8 = [[(192, 1)], [(192, 1), (224, (1, 3)), (256, (3, 1))]]
        self.repeat_2 = _residuals(2080, b8, 9, 0.2, common)
        self.block8 = Residual(2080, b8, scale=1.0, activation=False, common=common)
        self.conv2d_7b = ConvBN(2080, 1536, 1, **common)
        self._init_head(1536, num_classes, dropout, dense_init_fan_in, rngs)

    def features(self, x: jax.Array) -> jax.Array:
        """Returns conv2d_7b's output [B, H', W', 1536] (Grad-CAM's target)."""
        _check_size(x, self.spatial_dims, self.in_channels, "Inception-ResNet-v2")
        x = self.mixed_5b(self.stem(x))
        for blk in self.repeat:
            x = blk(x)
        x = self.mixed_6a(x)
        for blk in self.repeat_1:
            x = blk(x)
        x = self.mixed_7a(x)
        for blk in self.repeat_2:
            x = blk(x)
        return self.conv2d_7b(self.block8(x))


def _residuals(in_f, branches, n, scale, common) -> nnx.List:
    return nnx.List([Residual(in_f, branches, scale=scale, common=common) for _ in range(n)])


_ARCHS = {"v3": InceptionV3, "resnet_v2": InceptionResNetV2}


def build(*, arch: str, **kwargs) -> Classifier:
    """Builds an Inception network; the registry's constructor for this family.

    Args:
      arch: "v3" (`InceptionV3`) or "resnet_v2" (`InceptionResNetV2`).
      **kwargs: the class's keywords (in_channels, num_classes, spatial_dims, dropout, dtype,
        rngs).

    Returns:
      The model.

    Raises:
      ValueError: unknown arch, or spatial_dims is not 2.
    """
    if arch not in _ARCHS:
        raise ValueError(f"unknown Inception arch {arch!r}; use one of {sorted(_ARCHS)}")
    return _ARCHS[arch](**kwargs)


# name -> `build` keyword arguments.
VARIANTS = {
    "inception_v3": dict(arch="v3"),
    "inception_resnet_v2": dict(arch="resnet_v2"),
}
