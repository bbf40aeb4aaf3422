"""VGG-11/16/19 (configurations A, D, E) for 2D and 3D input, with or without BatchNorm.

Simonyan & Zisserman 2015, "Very Deep Convolutional Networks for Large-Scale Image Recognition"
(ICLR, arXiv:1409.1556): stacks of 3x3 convs (stride 1, padding 1) with ReLU, five 2x2
stride-2 max pools, then three fully connected layers (4096, 4096, classes) with dropout. The
BatchNorm variant (`vgg*_bn`, a BatchNorm after every conv) is torchvision's (Ioffe & Szegedy
2015 applied to VGG). Channels-last; one implementation for 2D and 3D (`spatial_dims`).

The head is torchvision's: adaptive average pooling to `pool_size` per axis, flatten in
PyTorch's channels-first order (so torchvision weights load with a plain transpose, see
`convert.VGG_TORCH`), fc 4096 - ReLU - dropout - fc 4096 - ReLU - dropout - fc classes. 2D VGG-16
with 3 input channels and 1000 classes has 138,357,544 parameters, as torchvision's.

3D choice: `pool_size` defaults to 7 in 2D (torchvision) but to 1 in 3D, i.e. global average
pooling before the fc stack (512 -> 4096 -> 4096 -> classes). Pooling a volume to 7^3 would make
the first fc 7^3 * 512 * 4096 = 719M parameters. Pass `pool_size=...` to choose otherwise.

Grad-CAM: `features` returns the last conv block's ReLU output, before the fifth max pool (the
conv5 map of the Grad-CAM paper, twice the resolution of the pooled map); `classify` applies
that max pool and the head.
"""

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from ernjax.models import layers
from ernjax.models.layers import Classifier, check_input, conv, host_init, max_pool

# Paper Table 1: widths of the 3x3 convs, "M" a 2x2 stride-2 max pool.
CONFIGS = {
    "A": (64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"),
    "D": (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"),
    "E": (
        *(64, 64, "M", 128, 128, "M"),
        *(256, 256, 256, 256, "M", 512, 512, 512, 512, "M", 512, 512, 512, 512, "M"),
    ),
}
# torchvision's init of the dense layers: normal(0, 0.01), zero bias.
dense_init_normal = host_init(lambda rng, shape: rng.normal(0.0, 0.01, shape))
# PyTorch BatchNorm defaults: momentum 0.1 (Flax 0.9), eps 1e-5.
_BN = dict(momentum=0.9, epsilon=1e-5)


class VGG(Classifier):
    """VGG classifier for 2D or 3D channels-last input.

    Attributes:
      trunk: `nnx.Dict` of the convs (and BatchNorms) keyed by their index in torchvision's
        `features` Sequential ("0", "1", ...), so the weight table is one regex.
      head: `nnx.Dict` of the three dense layers keyed "0", "3", "6" (torchvision's
        `classifier` indices); `dropout` is applied after the first two.
      plan: the static sequence of ops ("conv", key), ("bn", key), ("relu",), ("pool",).
    """

    family = "vgg"

    def __init__(
        self,
        *,
        config: str,
        batch_norm: bool = False,
        in_channels: int,
        num_classes: int,
        spatial_dims: int = 2,
        dropout: float = 0.0,
        pool_size: int | None = None,
        hidden_features: int = 4096,
        dtype=jnp.float32,
        rngs: nnx.Rngs,
    ):
        """Builds the network.

        Args:
          config: "A" (VGG-11), "D" (VGG-16) or "E" (VGG-19).
          batch_norm: a BatchNorm after every conv (torchvision's `vgg*_bn`).
          in_channels: input channels (modalities).
          num_classes: number of logits.
          spatial_dims: 2 or 3; every spatial axis must be at least 32 (five max pools).
          dropout: rate of the two dropouts in the head (torchvision 0.5).
          pool_size: adaptive average pooling size per axis before the head; None is 7 in 2D
            (torchvision) and 1 in 3D (see the module docstring).
          hidden_features: width of the two hidden dense layers (4096 in the paper).
          dtype: compute dtype of the convs; the head and the logits are float32.
          rngs: `nnx.Rngs` with `params` and `dropout` streams (or a default stream).
        """
        if config not in CONFIGS:
            raise ValueError(f"unknown VGG config {config!r}; use one of {sorted(CONFIGS)}")
        self.spatial_dims, self.in_channels = spatial_dims, in_channels
        self.pool_size = pool_size if pool_size is not None else (7 if spatial_dims == 2 else 1)
        common = dict(spatial_dims=spatial_dims, dtype=dtype, rngs=rngs)
        trunk, plan, in_f = _make_trunk(CONFIGS[config], in_channels, batch_norm, common)
        self.trunk, self.plan = nnx.Dict(trunk), tuple(plan)
        flat = in_f * self.pool_size**spatial_dims
        widths = (flat, hidden_features, hidden_features, num_classes)
        self.head = nnx.Dict(
            {
                str(3 * i): nnx.Linear(
                    widths[i],
                    widths[i + 1],
                    kernel_init=dense_init_normal,
                    dtype=jnp.float32,
                    param_dtype=jnp.float32,
                    rngs=rngs,
                )
                for i in range(3)
            }
        )
        self.dropout = nnx.Dropout(dropout, rngs=rngs if dropout > 0 else None)

    @property
    def fc(self) -> nnx.Linear:
        """The logits layer (`head["6"]`), under the name other families give it."""
        return self.head["6"]

    def features(self, x: jax.Array) -> jax.Array:
        """Returns the last conv's ReLU output [B, *spatial/16, 512], before the last pool."""
        check_input(x, self.spatial_dims, self.in_channels, "VGG")
        for op in self.plan[:-1]:  # the trunk ends with a pool: classify applies it
            if op[0] in ("conv", "bn"):
                x = self.trunk[op[1]](x)
            elif op[0] == "relu":
                x = jax.nn.relu(x)
            else:
                x = max_pool(x, 2, 2)
        return x

    def classify(self, features: jax.Array) -> jax.Array:
        """The fifth max pool, adaptive average pooling and the three dense layers.

        Args:
          features: the output of `features`, [B, *spatial', F].

        Returns:
          Float32 logits [B, num_classes].
        """
        x = max_pool(features, 2, 2).astype(jnp.float32)
        x = adaptive_avg_pool(x, self.pool_size)
        # Flatten channels-first, as torch.flatten on NC[D]HW: torchvision weights then load.
        x = jnp.moveaxis(x, -1, 1).reshape(x.shape[0], -1)
        x = self.dropout(jax.nn.relu(self.head["0"](x)))
        x = self.dropout(jax.nn.relu(self.head["3"](x)))
        return self.head["6"](x)


def _make_trunk(config, in_f, with_bn, common):
    """Returns (modules keyed by torchvision index, the op plan, output width); `make_layers`."""
    trunk, plan, index = {}, [], 0
    for width in config:
        if width == "M":
            plan.append(("pool",))
            index += 1
            continue
        trunk[str(index)] = conv(in_f, width, 3, padding=1, use_bias=True, **common)
        plan.append(("conv", str(index)))
        index += 1
        if with_bn:
            bn_args = dict(dtype=common["dtype"], rngs=common["rngs"])
            trunk[str(index)] = layers.norm_layer(width, **_BN, **bn_args)
            plan.append(("bn", str(index)))
            index += 1
        plan.append(("relu",))
        index += 1
        in_f = width
    return trunk, plan, in_f


def adaptive_avg_pool(x: jax.Array, size: int) -> jax.Array:
    """PyTorch's `AdaptiveAvgPool{2,3}d(size)` on a channels-last map [B, *spatial, C].

    Output cell i of an axis of length n averages inputs floor(i*n/size) .. ceil((i+1)*n/size)-1
    (overlapping bins when n is not a multiple, repeated inputs when n < size), written as one
    small averaging matrix per axis.

    Args:
      x: the map.
      size: output length of every spatial axis.

    Returns:
      [B, *(size,) * spatial_dims, C], in x's dtype.
    """
    for axis in range(1, x.ndim - 1):
        n = x.shape[axis]
        if n == size:
            continue
        matrix = np.zeros((size, n), np.float32)
        for i in range(size):
            start, end = (i * n) // size, -((-(i + 1) * n) // size)
            matrix[i, start:end] = 1.0 / (end - start)
        pooled = jnp.tensordot(x, jnp.asarray(matrix, x.dtype), axes=([axis], [1]))
        x = jnp.moveaxis(pooled, -1, axis)
    return x


# name -> VGG keyword arguments (paper Table 1 columns A, D, E; torchvision's *_bn variants).
VARIANTS = {
    f"vgg{depth}{'_bn' if bn else ''}": dict(config=config, batch_norm=bn)
    for depth, config in ((11, "A"), (16, "D"), (19, "E"))
    for bn in (False, True)
}
