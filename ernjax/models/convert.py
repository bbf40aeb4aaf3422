"""Load PyTorch state dicts (MONAI layout) into ernjax's Flax models, with a report.

A layout is a mapping table: for one model family and one source (MONAI, MedicalNet,
torchvision), an ordered list of (regex over the PyTorch module name,
replacement giving the Flax module path). Tensor names then follow one rule for every layout:
`weight` -> `kernel` (conv, dense) or `scale` (BatchNorm), `bias` -> `bias`, `running_mean` ->
`mean`, `running_var` -> `var`; `num_batches_tracked` is dropped. Tensors are transposed from
PyTorch's channels-first layout: conv OI[D]HW -> [D]HWIO (depthwise [C, 1, k, k] ->
[k, k, 1, C] by the same rule), dense [out, in] -> [in, out], a 1x1 conv into a dense layer
(MONAI's squeeze-excitation) -> [in, out].

Only numpy is needed here; torch is imported only to read a `.pt`/`.pth` file.
"""

import dataclasses
import re
from collections.abc import Mapping
from pathlib import Path

import jax.numpy as jnp
import numpy as np
from flax import nnx

from ernjax.errors import InputError

_BLOCK = r"_blocks\.\d+\.(\d+)\."  # MONAI nests blocks as _blocks.<stage>.<global index>
EFFICIENTNET_MONAI = (
    (r"_conv_stem", "stem_conv"),
    (r"_bn0", "stem_bn"),
    (_BLOCK + "_expand_conv", r"blocks.\1.expand_conv"),
    (_BLOCK + "_bn0", r"blocks.\1.expand_bn"),
    (_BLOCK + "_depthwise_conv", r"blocks.\1.depthwise_conv"),
    (_BLOCK + "_bn1", r"blocks.\1.depthwise_bn"),
    (_BLOCK + "_se_reduce", r"blocks.\1.se_reduce"),
    (_BLOCK + "_se_expand", r"blocks.\1.se_expand"),
    (_BLOCK + "_project_conv", r"blocks.\1.project_conv"),
    (_BLOCK + "_bn2", r"blocks.\1.project_bn"),
    (r"_conv_head", "head_conv"),
    (r"_bn1", "head_bn"),
    (r"_fc", "fc"),
)
RESNET_MONAI = (
    (r"(conv1|bn1|fc)", r"\1"),
    (r"(layer[1-4]\.\d+)\.(conv[1-3]|bn[1-3])", r"\1.\2"),
    (r"(layer[1-4]\.\d+)\.downsample\.0", r"\1.downsample.conv"),
    (r"(layer[1-4]\.\d+)\.downsample\.1", r"\1.downsample.bn"),
)
# MedicalNet (Chen et al. 2019, Med3D) and torchvision name their ResNets as MONAI does (MONAI
# copied MedicalNet): conv1, bn1, layerN.M.convK/bnK, downsample.0/.1, fc. MedicalNet files have
# no `fc` but a segmentation head `conv_seg.*`, which maps to nothing (reported unused).
RESNET_MEDICALNET = RESNET_MONAI
RESNET_TORCHVISION = RESNET_MONAI
# torchvision's VGG (and the reference in tests/test_models_zoo.py): `features.N` and
# `classifier.N` Sequentials; ernjax's VGG keys its `trunk` and `head` by the same N.
VGG_TORCH = (
    (r"features\.(\d+)", r"trunk.\1"),
    (r"classifier\.(\d+)", r"head.\1"),
)
_DENSE = r"features\.(denseblock\d+\.denselayer\d+)\."
DENSENET_MONAI = (
    (r"features\.(conv0|norm0|norm5)", r"\1"),
    (_DENSE + r"layers\.(norm[12]|conv[12])", r"\1.\2"),
    (r"features\.(transition\d+)\.(norm|conv)", r"\1.\2"),
    (r"class_layers\.out", "fc"),
)
# torchvision's DenseNet: the same without MONAI's `layers.` level, head named `classifier`.
# Its published weight files use the old names `norm.1`, `conv.2` (torchvision renames them on
# load): both spellings map here.
DENSENET_TORCHVISION = (
    (r"features\.(conv0|norm0|norm5)", r"\1"),
    (_DENSE + r"(norm|conv)\.?([12])", r"\1.\2\3"),
    (r"features\.(transition\d+)\.(norm|conv)", r"\1.\2"),
    (r"classifier", "fc"),
)
# (model family, source) -> table. The family is the model class's `family` attribute.
LAYOUTS = {
    ("efficientnet", "monai"): EFFICIENTNET_MONAI,
    ("resnet", "monai"): RESNET_MONAI,
    ("resnet", "medicalnet"): RESNET_MEDICALNET,
    ("resnet", "torchvision"): RESNET_TORCHVISION,
    ("vgg", "torchvision"): VGG_TORCH,
    ("densenet", "monai"): DENSENET_MONAI,
    ("densenet", "torchvision"): DENSENET_TORCHVISION,
}
_TENSOR_NAMES = {
    "weight": ("kernel", "scale"),
    "bias": ("bias",),
    "running_mean": ("mean",),
    "running_var": ("var",),
}


@dataclasses.dataclass
class LoadReport:
    """What a load did.

    Attributes:
      loaded: Flax paths that received a tensor.
      missing: Flax paths no tensor mapped to (left as initialized).
      unexpected: source keys that map to no Flax variable.
      mismatched: "source key -> Flax path: shape a vs b", not loaded.
    """

    loaded: list[str] = dataclasses.field(default_factory=list)
    missing: list[str] = dataclasses.field(default_factory=list)
    unexpected: list[str] = dataclasses.field(default_factory=list)
    mismatched: list[str] = dataclasses.field(default_factory=list)

    @property
    def complete(self) -> bool:
        """True when every variable was loaded and every source tensor used."""
        return not (self.missing or self.unexpected or self.mismatched)

    def summary(self, limit: int = 10) -> str:
        """Returns a short human-readable account (at most `limit` names per list)."""
        lines = [f"loaded {len(self.loaded)} tensors"]
        for label in ("missing", "unexpected", "mismatched"):
            names = getattr(self, label)
            if names:
                more = f" (+{len(names) - limit} more)" if len(names) > limit else ""
                lines.append(f"{label} {len(names)}: {', '.join(names[:limit])}{more}")
        return "; ".join(lines)


def torch_to_flax_name(key: str, table) -> str | None:
    """Maps a PyTorch module name (without the tensor name) to a Flax path, or None."""
    for pattern, replacement in table:
        if re.fullmatch(pattern, key):
            return re.sub(f"^{pattern}$", replacement, key)
    return None


def to_flax_array(value: np.ndarray, target_ndim: int) -> np.ndarray:
    """Converts one PyTorch tensor (as numpy) to the Flax layout of a `target_ndim` variable."""
    if value.ndim >= 3 and target_ndim == 2:  # a 1x1 conv feeding a dense layer
        return value.reshape(value.shape[0], -1).T
    if value.ndim >= 3:  # conv [O, I/groups, *kernel] -> [*kernel, I/groups, O]
        return np.transpose(value, (*range(2, value.ndim), 1, 0))
    if value.ndim == 2:  # dense [out, in] -> [in, out]
        return value.T
    return value


def load_state_dict(
    model: nnx.Module, state_dict: Mapping, *, source: str = "monai", strict: bool = True
) -> LoadReport:
    """Copies a PyTorch state dict into `model` in place.

    Args:
      model: an ernjax model (its `family` attribute selects the table).
      state_dict: tensor name -> tensor (torch tensors or numpy arrays); a leading `module.`
        (DataParallel) is ignored.
      source: the layout of the names, a key of `LAYOUTS` with the model's family.
      strict: raise when anything is missing, unexpected or mismatched.

    Returns:
      The `LoadReport`.

    Raises:
      ValueError: no table for (family, source), or `strict` and the load is not complete.
    """
    family = getattr(model, "family", type(model).__name__)
    if (family, source) not in LAYOUTS:
        raise ValueError(f"no weight layout for {family!r} from {source!r}; have {list(LAYOUTS)}")
    state, targets = flax_targets(model)
    matches, unexpected = match_tensors(state_dict, LAYOUTS[(family, source)], targets)
    report = LoadReport(unexpected=unexpected)
    for key, path, value in matches:
        if value.shape != targets[path].shape:
            report.mismatched.append(
                f"{key} -> {path}: {value.shape} vs {tuple(targets[path].shape)}"
            )
            continue
        targets[path][...] = jnp.asarray(value, dtype=targets[path].dtype)
        report.loaded.append(path)
    report.missing = sorted(set(targets) - set(report.loaded))
    nnx.update(model, state)
    if strict and not report.complete:
        raise ValueError(f"incomplete weight load ({source} -> {family}): {report.summary()}")
    return report


def load_torch_file(
    model: nnx.Module, path, *, source: str = "monai", strict: bool = True
) -> LoadReport:
    """Reads a PyTorch `.pt`/`.pth` state dict from disk and loads it (see `load_state_dict`).

    A checkpoint dict holding the weights under "state_dict" (MedicalNet's format) is unwrapped.

    Args:
      model: an ernjax model.
      path: the file.
      source: the layout of the names.
      strict: raise when the load is not complete.

    Returns:
      The `LoadReport`.

    Raises:
      InputError: the file is missing or unreadable.
    """
    return load_state_dict(model, read_torch_file(path), source=source, strict=strict)


def read_torch_file(path) -> Mapping:
    """Reads a PyTorch `.pt`/`.pth`/`.pth.tar` state dict (tensors only, no pickled code).

    A checkpoint dict holding the weights under "state_dict" (MedicalNet's format) is unwrapped.

    Args:
      path: the file.

    Returns:
      The state dict, tensor name -> torch tensor (names as in the file).

    Raises:
      InputError: the file is missing, unreadable or holds no state dict.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError("", path, "pretrained weight file not found")
    import torch  # only here: ernjax needs torch only to read PyTorch files

    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises many types for a bad file
        raise InputError("", path, f"cannot read as a PyTorch state dict ({e})") from e
    if isinstance(obj, Mapping) and isinstance(obj.get("state_dict"), Mapping):
        obj = obj["state_dict"]
    if not isinstance(obj, Mapping):
        raise InputError("", path, f"holds a {type(obj).__name__}, not a state dict")
    return obj


def flax_targets(model: nnx.Module) -> tuple[nnx.State, dict]:
    """Returns (the model's parameters and BatchNorm statistics, {"a.b.kernel": variable}).

    Writing `variable[...] = array` and then `nnx.update(model, state)` sets a value.
    """
    state = nnx.state(model, nnx.Any(nnx.Param, nnx.BatchStat))
    return state, {".".join(map(str, path)): var for path, var in nnx.to_flat_state(state)}


def match_tensors(state_dict: Mapping, table, targets: Mapping) -> tuple[list, list[str]]:
    """Pairs each PyTorch tensor with the Flax variable it maps to, without writing anything.

    Args:
      state_dict: tensor name -> tensor (torch or numpy); a leading `module.` is ignored and
        `num_batches_tracked` is skipped.
      table: a layout (see `LAYOUTS`).
      targets: Flax path -> variable, as from `flax_targets`.

    Returns:
      (matches as (source key, Flax path, numpy array in the Flax layout), source keys that
      map to no variable).
    """
    matches, unexpected = [], []
    for key, tensor in state_dict.items():
        key = key.removeprefix("module.")
        module, _, tensor_name = key.rpartition(".")
        if tensor_name == "num_batches_tracked":
            continue
        path = _find_target(module, tensor_name, table, targets)
        if path is None:
            unexpected.append(key)
            continue
        matches.append((key, path, to_flax_array(_to_numpy(tensor), targets[path].ndim)))
    return matches, unexpected


def _find_target(module: str, tensor_name: str, table, targets) -> str | None:
    """The Flax path of one PyTorch tensor, or None when the table or the model lacks it."""
    flax_module = torch_to_flax_name(module, table)
    if flax_module is None:
        return None
    for leaf in _TENSOR_NAMES.get(tensor_name, ()):
        if f"{flax_module}.{leaf}" in targets:
            return f"{flax_module}.{leaf}"
    return None


def _to_numpy(tensor) -> np.ndarray:
    """A torch tensor or array-like as a numpy array, without importing torch."""
    if hasattr(tensor, "detach"):
        tensor = tensor.detach().cpu().numpy()
    return np.asarray(tensor)
