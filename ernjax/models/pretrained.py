"""Start a model from pretrained weights on disk (`config.model.init_from`), with a report.

Two kinds of source, both read from local files only (nothing is downloaded at run time):
  * a PyTorch state dict, `.pt`/`.pth`/`.pth.tar`, in the MONAI, MedicalNet (Chen et al. 2019
    Med3D: {"state_dict": {"module.conv1.weight": ...}}) or torchvision layout; the layout is
    detected from the tensor names (see `convert.LAYOUTS`) unless `source=` names it (MONAI,
    MedicalNet and torchvision name their ResNets alike: the report says "medicalnet" for a
    file with MedicalNet's marks, `module.` prefixes or `conv_seg`, else "monai");
  * an ernjax run directory, or its `checkpoints/` directory (Orbax; a directory is always
    read as one): the step with the best
    validation AUC when the run recorded one, else the latest; the model's part of the saved
    train state is used.

Three rules decide what happens to each model tensor:
  * loaded: the file has it with the same shape;
  * adapted: the first conv when the file has another number of input channels. Rule: sum the
    file's kernel over its input channels, divide by the model's channel count C and repeat it C
    times. A volume whose C channels are all equal then gives exactly the response the original
    network gave to that one channel (activation scale kept). So 1 -> C repeats the kernel / C
    (1-channel MedicalNet weights for 4 MRI modalities), 3 -> 1 sums the RGB kernel, and in
    general each new channel gets the mean kernel times C_file / C;
  * new: the model keeps its fresh initialization, because the file lacks the tensor or because
    it is the final dense layer and the class count differs.
Any other shape mismatch is an error naming the tensor, the file and both shapes, and a file
with no tensor for the model at all is an error: a wrong file never yields a silent random init.
"""

import dataclasses
import json
from collections.abc import Mapping
from pathlib import Path

import jax.numpy as jnp
import numpy as np
from flax import nnx

from ernjax import atomic, checkpoints
from ernjax.errors import InputError
from ernjax.models import convert

SOURCES = ("auto", "monai", "medicalnet", "torchvision", "ernjax")
_FIRST_CONV = {  # family -> the module that sees the input (others: found by in_channels)
    "resnet": "conv1",
    "densenet": "conv0",
    "efficientnet": "stem_conv",
    "vgg": "trunk.0",
    "inception_v3": "stem.conv2d_1a.conv",
    "inception_resnet_v2": "stem.conv2d_1a.conv",
}


@dataclasses.dataclass
class InitReport:
    """What `init_from` did, tensor by tensor (Flax paths such as "layer1.0.conv1.kernel").

    Attributes:
      path: the file or directory read ("" when there was none).
      source: the layout used: "monai", "medicalnet", "torchvision", "ernjax" or "none".
      step: the checkpoint step read (ernjax checkpoints only).
      loaded: model tensors copied from the file unchanged (up to the layout transpose).
      adapted: model tensor -> how it was derived from the file's (first conv).
      new: model tensor -> why it kept its fresh initialization.
      unused: file tensors that went into no model tensor.
    """

    path: str = ""
    source: str = "none"
    step: int | None = None
    loaded: list[str] = dataclasses.field(default_factory=list)
    adapted: dict[str, str] = dataclasses.field(default_factory=dict)
    new: dict[str, str] = dataclasses.field(default_factory=dict)
    unused: list[str] = dataclasses.field(default_factory=list)

    def summary(self, limit: int = 8) -> str:
        """Returns a short human-readable account (at most `limit` names per list)."""
        if self.source == "none":
            return "no pretrained weights (config.model.init_from unset): random initialization"
        step = f" (step {self.step})" if self.step is not None else ""
        lines = [f"init_from {self.path}{step} as {self.source}: loaded {len(self.loaded)}"]
        for label in ("adapted", "new"):
            items = getattr(self, label)
            if items:
                shown = [f"{k} ({v})" for k, v in list(items.items())[:limit]]
                lines.append(f"{label} {len(items)}: " + _more(shown, len(items), limit))
        if self.unused:
            lines.append(
                f"unused from the file {len(self.unused)}: "
                + _more(self.unused[:limit], len(self.unused), limit)
            )
        return "; ".join(lines)

    def to_dict(self) -> dict:
        """Returns the report as JSON-able dict, with counts."""
        counts = {k: len(getattr(self, k)) for k in ("loaded", "adapted", "new", "unused")}
        return {**dataclasses.asdict(self), "counts": counts}

    def write_json(self, path) -> None:
        """Writes `to_dict()` as JSON to `path` (e.g. WORKDIR/init_report.json), atomically."""
        atomic.write_text(path, json.dumps(self.to_dict(), indent=2) + "\n")


def init_from(model: nnx.Module, path, *, source: str = "auto") -> InitReport:
    """Overwrites `model`'s parameters and BatchNorm statistics with pretrained ones, in place.

    Args:
      model: a model from `create_model` (freshly initialized).
      path: a `.pt`/`.pth`/`.pth.tar` PyTorch file, or an ernjax run or checkpoints directory;
        None or "" leaves the model as it is (the report says so).
      source: "auto" (detect from the path and tensor names), or one of "monai",
        "medicalnet", "torchvision" (PyTorch layouts) or "ernjax" (Orbax checkpoint).

    Returns:
      The `InitReport`.

    Raises:
      InputError: the path is missing or unreadable, no tensor in it fits the model, or a
        tensor other than the first conv's and the head's has another shape than the model's.
      ValueError: unknown `source`.
    """
    if path is None or str(path) == "":
        return InitReport()
    if source not in SOURCES:
        raise ValueError(f"unknown init_from source {source!r}; use one of {SOURCES}")
    path = Path(path).expanduser()
    if not path.exists():
        raise InputError("", path, "pretrained weights not found (config.model.init_from)")
    state, targets = convert.flax_targets(model)
    report = InitReport(path=str(path))
    if path.is_dir() or source == "ernjax":
        matches, report.unused, report.step = _match_checkpoint(model, path, targets)
        report.source = "ernjax"
    else:
        report.source, matches, report.unused = _match_torch(model, path, source, targets)
    if not matches:
        raise InputError("", path, _nothing_matches(model, report.unused))
    writes = _plan(model, path, matches, targets, report)
    if not writes:  # e.g. only a head with another class count
        raise InputError("", path, _nothing_matches(model, [m[0] for m in matches] + report.unused))
    for key, value in writes.items():
        targets[key][...] = jnp.asarray(value, dtype=targets[key].dtype)
    nnx.update(model, state)
    for key in targets:
        if key not in writes:
            report.new.setdefault(key, "not in the file")
    return report


def adapt_first_conv(kernel: np.ndarray, in_channels: int) -> np.ndarray:
    """Maps a Flax conv kernel [*k, C_file, O] to [*k, in_channels, O] (module docstring rule).

    Args:
      kernel: the file's first-conv kernel in the Flax layout.
      in_channels: the model's input channels.

    Returns:
      sum over the file's input channels / in_channels, repeated in_channels times.
    """
    total = kernel.sum(axis=-2, keepdims=True) / in_channels
    return np.repeat(total, in_channels, axis=-2)


def _plan(model, path, matches, targets, report: InitReport) -> dict[str, np.ndarray]:
    """Decides each matched tensor (loaded, adapted, new head) and returns the writes to do.

    Raises InputError listing every other shape mismatch.
    """
    first_conv, head = _first_conv_kernel(model), _head_paths(model)
    writes, errors = {}, []
    for key, flax_path, value in matches:
        want = tuple(targets[flax_path].shape)
        if value.shape == want:
            writes[flax_path] = value
            report.loaded.append(flax_path)
        elif flax_path == first_conv and value.shape[:-2] + value.shape[-1:] == (
            want[:-2] + want[-1:]
        ):
            writes[flax_path] = adapt_first_conv(value, want[-2])
            report.adapted[flax_path] = (
                f"input channels {value.shape[-2]} -> {want[-2]}: summed over the file's "
                f"channels, divided by {want[-2]}, repeated"
            )
        elif flax_path in head and value.shape[:-1] == want[:-1]:
            report.new[flax_path] = (
                f"head: the file has {value.shape[-1]} classes, the model {want[-1]}; "
                "kept its fresh initialization"
            )
        else:
            errors.append(_mismatch(key, flax_path, value.shape, want))
    if errors:
        raise InputError("", path, "tensors do not fit the model: " + "; ".join(errors))
    return writes


def _mismatch(key, flax_path, got, want) -> str:
    """One shape-mismatch line (both shapes in the Flax layout, channels last)."""
    hint = ""
    if len(got) != len(want) and min(len(got), len(want)) >= 4:
        hint = f" (a {len(got) - 2}D kernel for a {len(want) - 2}D model: check spatial_dims)"
    return f"{key} -> {flax_path}: file shape {tuple(got)} vs model shape {want}{hint}"


def _match_torch(model, path, source, targets):
    """Reads a PyTorch file; returns (layout name, matches, unused keys)."""
    state_dict = convert.read_torch_file(path)
    family = getattr(model, "family", type(model).__name__)
    names = [s for f, s in convert.LAYOUTS if f == family]
    if source != "auto" and source not in names:
        raise InputError("", path, f"no {source!r} weight layout for {family}; have {names}")
    if not names:
        raise InputError("", path, f"{family} loads only ernjax checkpoints, not PyTorch files")
    candidates = names if source == "auto" else [source]
    results = {
        s: convert.match_tensors(state_dict, convert.LAYOUTS[(family, s)], targets)
        for s in candidates
    }
    best = max(candidates, key=lambda s: (len(results[s][0]), _hint(state_dict) == s))
    return best, *results[best]


def _hint(state_dict: Mapping) -> str:
    """The layout the names suggest when several tables map them equally well."""
    keys = [k.removeprefix("module.") for k in state_dict]
    if any(k.startswith("conv_seg.") for k in keys) or all(
        k.startswith("module.") for k in state_dict
    ):
        return "medicalnet"  # its segmentation head; its files were saved from DataParallel
    if any(k.startswith(("classifier.", "features.")) for k in keys):
        return "torchvision"
    return "monai"


def _match_checkpoint(model, path: Path, targets):
    """Reads an ernjax Orbax checkpoint; returns (matches, unused names, step)."""
    tensors, step = _read_checkpoint(path)
    others = {".".join(map(str, p)) for p, _ in nnx.to_flat_state(nnx.state(model))}
    matches, unused = [], []
    for name, value in tensors.items():
        if name in targets:
            matches.append((name, name, np.asarray(value)))
        elif name not in others:  # the model's own RNG state etc. is not a weight: skipped
            unused.append(name)
    return matches, unused, step


def _read_checkpoint(path: Path) -> tuple[dict, int]:
    """Returns ({"a.b.kernel": array} of the run's scored model state, the step read)."""
    if checkpoints.run_checkpoints(path) is None:
        raise InputError(
            "", path, "is neither a PyTorch weight file nor an ernjax run/checkpoints directory"
        )
    # The model the run was scored with (config.train.select_checkpoint), as predict uses;
    # in numpy arrays, since this model may differ from it (head, input channels).
    scored = checkpoints.load_model(path)
    return dict(_flatten(scored.state)), scored.step


def _flatten(tree, prefix=""):
    """Yields ("a.b.kernel", leaf) for a nested dict of a saved nnx.State (".value" dropped)."""
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            yield from _flatten(value, name + ".")
        else:
            yield name.removesuffix(".value"), value


def _first_conv_kernel(model) -> str | None:
    """The Flax path of the kernel that sees the input channels."""
    module = _FIRST_CONV.get(getattr(model, "family", ""))
    if module is None:  # a family not listed: the only conv reading `in_channels` channels
        convs = [
            ".".join(map(str, p))
            for p, m in nnx.iter_graph(model)
            if isinstance(m, nnx.Conv) and m.in_features == model.in_channels
        ]
        module = convs[0] if len(convs) == 1 else None
    return None if module is None else f"{module}.kernel"


def _head_paths(model) -> set[str]:
    """The Flax paths of the logits layer (`model.fc`) kernel and bias."""
    fc = getattr(model, "fc", None)
    for p, m in nnx.iter_graph(model):
        if fc is not None and m is fc:
            name = ".".join(map(str, p))
            return {f"{name}.kernel", f"{name}.bias"}
    return set()


def _nothing_matches(model, unused: list[str]) -> str:
    """The message for a file without any tensor of the model."""
    family = getattr(model, "family", type(model).__name__)
    shown = ", ".join(unused[:5]) + (", ..." if len(unused) > 5 else "")
    return (
        f"none of its {len(unused)} tensors fits the {family} model ({shown}); "
        "wrong file or wrong config.model.name? Refusing a silent random initialization"
    )


def _more(names: list[str], total: int, limit: int) -> str:
    """Joins names, noting how many more there are."""
    return ", ".join(names) + (f" (+{total - limit} more)" if total > limit else "")
