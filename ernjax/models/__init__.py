"""Model registry: every network by name, built the same way for the trainer and the tools.

`create_model("ern_b0", in_channels=3, num_classes=2, rngs=nnx.Rngs(params=0, dropout=1))`
returns an `nnx.Module` whose `__call__(x)` maps a channels-last batch [B, *spatial, C] to float32
logits and equals `classify(features(x))`. A family lives in its own file and exports a
`VARIANTS` table (name -> constructor keyword arguments); adding a family is one line in
`_FAMILIES` below.
"""

from collections.abc import Callable

import jax
import jax.numpy as jnp
from flax import nnx

from ernjax.models import densenet, efficientnet, inception, layers, resnet, vgg

# (constructor, its variant table); constructors take in_channels, num_classes, spatial_dims,
# dropout, dtype and rngs as keywords, plus the variant's own keywords.
_FAMILIES: tuple[tuple[Callable[..., nnx.Module], dict[str, dict]], ...] = (
    (efficientnet.ERNNet, efficientnet.VARIANTS),
    (resnet.ResNet, resnet.VARIANTS),
    (vgg.VGG, vgg.VARIANTS),
    (densenet.DenseNet, densenet.VARIANTS),
    (inception.build, inception.VARIANTS),
)
_REGISTRY: dict[str, tuple[Callable[..., nnx.Module], dict]] = {
    name: (cls, variant) for cls, variants in _FAMILIES for name, variant in variants.items()
}


def model_names() -> list[str]:
    """Returns the names `create_model` accepts, sorted."""
    return sorted(_REGISTRY)


def create_model(
    name: str,
    *,
    in_channels: int,
    num_classes: int,
    spatial_dims: int = 2,
    dropout: float = 0.0,
    dtype=jnp.float32,
    norm: str = "batch",
    rngs: nnx.Rngs,
    **options,
) -> nnx.Module:
    """Builds a registered model.

    Args:
      name: one of `model_names()`.
      in_channels: input channels (modalities).
      num_classes: number of logits.
      spatial_dims: 2 ([B, H, W, C] input) or 3 ([B, D, H, W, C]).
      dropout: dropout rate before the dense layer.
      dtype: compute dtype (float32 or bfloat16, or its name); parameters stay float32 and the
        logits are float32.
      norm: "batch" (BatchNorm, every family's own), "group" or "instance" (GroupNorm with
        at most 32 groups, or one per channel): each BatchNorm of the family is that layer.
      rngs: `nnx.Rngs(params=..., dropout=...)`; dropout and stochastic depth draw from the
        `dropout` stream.
      **options: family-specific keywords overriding the variant table (e.g. ResNet's
        `shortcut_type="A"`, `conv1_stride=2`, `no_max_pool=True`).

    Returns:
      The model, in training mode (call `.eval()` for inference).

    Raises:
      ValueError: unknown name or spatial_dims.
    """
    if name not in _REGISTRY:
        raise ValueError(f"unknown model {name!r}; known models: {', '.join(model_names())}")
    if spatial_dims not in (2, 3):
        raise ValueError(f"spatial_dims must be 2 or 3, got {spatial_dims}")
    cls, variant = _REGISTRY[name]
    with layers.norm_kind(norm):
        return cls(
            **{**variant, **options},
            in_channels=in_channels,
            num_classes=num_classes,
            spatial_dims=spatial_dims,
            dropout=dropout,
            dtype=jnp.dtype(dtype),
            rngs=rngs,
        )


def count_params(model: nnx.Module) -> int:
    """Returns the number of trainable parameters (BatchNorm running statistics excluded)."""
    return sum(x.size for x in jax.tree.leaves(nnx.state(model, nnx.Param)))


__all__ = ["count_params", "create_model", "model_names"]
