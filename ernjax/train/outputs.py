"""What a finished run leaves in WORKDIR to be read and looked at, besides its predictions.

`write(...)` is called once, at the end of `loop.train_and_evaluate`, inside the run's staged
outputs (renamed into place with results.json, or not at all):
  results.md, results.csv   the printed tables (subject rows first, with their notes)
  config.json               the resolved config the run trained with
  data.json                 subjects and images per split and class, the skipped subjects
  roc_<split>_subject.png, roc_<split>_image.png   ROC curves of the scored split (test, else
                            validation), the subject rule at the cut-offs the table uses
  confusion_<split>.png     the confusion matrices at those cut-offs, subject- and image-wise
  training_curves.png       training and validation loss, validation AUCs, from TensorBoard
  inputs_validation.png     the first validation examples as the model sees them
`to_tensorboard` then adds every figure to TensorBoard (its Images tab) at the scored step.
"""

import json
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from ernjax import atomic
from ernjax.evaluate import reporting
from ernjax.evaluate.scoring import ScoringPolicy
from ernjax.train import logs

N_INPUTS = 8  # validation examples in inputs_validation.png


def write(
    workdir,
    config,
    scoring: ScoringPolicy,
    preds: Mapping,
    cutoffs: Mapping,
    results: Mapping,
    *,
    inputs: Mapping | None = None,
    data: Mapping | None = None,
) -> list[Path]:
    """Writes the run's tables, config and figures (see the module docstring).

    Args:
      workdir: the run's WORKDIR.
      config: the run's config.
      scoring: the run's scoring policy.
      preds: split -> Predictions of the scored checkpoint.
      cutoffs: the cut-offs chosen on validation (`scoring.cutoffs`).
      results: split -> scoring output, as printed.
      inputs: a batch of validation examples ({"image", "label", "subject_id"}), or None.
      data: the data summary for data.json ({"kind", "class_names", "splits", "skipped"}), or
        None.

    Returns:
      The figure paths written.
    """
    workdir = Path(workdir)
    atomic.write_text(workdir / "results.md", reporting.format_table(results, fmt="markdown"))
    atomic.write_text(workdir / "results.csv", reporting.format_table(results, fmt="csv"))
    atomic.write_text(workdir / "config.json", config.to_json(indent=2) + "\n")
    if data is not None:
        atomic.write_text(workdir / "data.json", json.dumps(data, indent=1) + "\n")
    figures = []
    split = "test" if "test" in preds else "validation"
    if split in preds:
        stem = workdir / f"roc_{split}"
        scoring.plot_rocs({split: preds[split]}, stem, {split: cutoffs})
        figures += [Path(f"{stem}_subject.png"), Path(f"{stem}_image.png")]
        figures.append(
            plot_confusion(results[split], workdir / f"confusion_{split}.png", split, scoring)
        )
    scalars = logs.read_scalars(workdir / "tensorboard")
    if scalars:
        curves = workdir / "training_curves.png"
        figures.append(plot_training_curves(scalars, curves, config.train.select_metric))
    if inputs is not None and len(inputs["image"]):
        names = scoring.class_names
        figures.append(plot_inputs(inputs, workdir / "inputs_validation.png", names))
    return figures


def to_tensorboard(writer: logs.Writer, workdir, step: int) -> None:
    """The run's figures (these and the calibration ones) as TensorBoard images at `step`.

    Called once they are in place: inside the staged outputs they are not there yet.
    """
    for path in sorted(Path(workdir).glob("*.png")):
        writer.image(f"figures/{path.stem}", path, step)


def plot_confusion(split_results: Mapping, path, split: str, scoring: ScoringPolicy) -> Path:
    """Subject- and image-wise confusion matrices (counts) at the cut-offs the table used."""
    positive, names = scoring.positive_name, scoring.class_names
    negative = names[1 - scoring.positive] if len(names) == 2 else "other"
    levels = [lvl for lvl in reporting.LEVELS if lvl in split_results]
    fig = Figure(figsize=(4.2 * len(levels), 4), dpi=130)
    for i, level in enumerate(levels, 1):
        m = split_results[level]
        ax = fig.add_subplot(1, len(levels), i)
        # Rows: the truth; columns: the decision; positive class first.
        counts = np.array([[m["tp"], m["fn"]], [m["fp"], m["tn"]]], float)
        ax.imshow(counts, cmap="Blues", vmin=0, vmax=max(counts.max(), 1))
        for (r, c), v in np.ndenumerate(counts):
            dark = v > counts.max() / 2
            ax.text(c, r, f"{int(v)}", ha="center", va="center", color="white" if dark else "black")
        ax.set_xticks([0, 1], [positive, negative])
        ax.set_yticks([0, 1], [positive, negative])
        ax.set(xlabel="decision", ylabel="truth")
        cut = m.get("threshold", float("nan"))
        ax.set_title(f"{level}-wise, {split} (n={m['n']}; cut-off {cut:.3g})", fontsize=9)
    fig.tight_layout()
    return atomic.save_figure(fig, path)


def plot_training_curves(scalars: Mapping[str, Sequence], path, select_metric: str = "") -> Path:
    """Training and validation loss (left) and validation AUCs per epoch (right), by step."""
    fig = Figure(figsize=(10, 3.6), dpi=130)
    ax_loss, ax_auc = fig.subplots(1, 2)
    for tag, style in (("train/loss", "-"), ("validation/loss", "o-")):
        if tag in scalars:
            steps, values = zip(*scalars[tag], strict=True)
            ax_loss.plot(steps, values, style, label=tag, markersize=3, linewidth=1)
    ax_loss.set(xlabel="step", ylabel="loss (log scale)", title="Loss")
    ax_loss.set_yscale("log")
    for tag in ("validation/subject.auc", "validation/image.auc"):
        if tag in scalars:
            steps, values = zip(*scalars[tag], strict=True)
            ax_auc.plot(steps, values, "o-", label=tag, markersize=3, linewidth=1)
    ax_auc.set(xlabel="step", ylabel="AUC", ylim=(-0.02, 1.02), title="Validation AUC per epoch")
    ax_auc.axhline(0.5, color="grey", linewidth=0.8, linestyle=":")
    ax_auc.set_xlim(ax_loss.get_xlim())  # one step axis for both panels
    for ax in (ax_loss, ax_auc):
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
    if select_metric:
        fig.suptitle(f"checkpoint selection metric: {select_metric}", fontsize=9)
    fig.tight_layout()
    return atomic.save_figure(fig, path)


def _displayable(image: np.ndarray) -> np.ndarray:
    """[H, W, 3] in [0, 1] (three channels as RGB, as Gao fuses them) or [H, W] grey.

    A volume shows its middle axial slice. Each image is scaled by its own 1st-99th
    percentiles, since the inputs are normalized (z-scores or [0, 1]) per subject.
    """
    x = np.asarray(image, np.float32)
    if x.ndim == 4:  # [D, H, W, C]
        x = x[x.shape[0] // 2]
    x = x if x.shape[-1] == 3 else x[..., 0]
    low, high = np.percentile(x, [1, 99])
    return np.clip((x - low) / max(high - low, 1e-6), 0, 1)


def plot_inputs(batch: Mapping, path, class_names: Sequence[str], n: int = N_INPUTS) -> Path:
    """The first `n` valid examples of a batch as the model sees them, with subject and label."""
    keep = np.flatnonzero(np.asarray(batch.get("valid", np.ones(len(batch["image"]), bool))))[:n]
    cols = min(4, max(len(keep), 1))
    rows = max(1, -(-len(keep) // cols))
    fig = Figure(figsize=(2.6 * cols, 3.1 * rows), dpi=130)  # room for each row's titles
    for k, i in enumerate(keep, 1):
        ax = fig.add_subplot(rows, cols, k)
        x = _displayable(batch["image"][i])
        ax.imshow(x, cmap=None if x.ndim == 3 else "gray")
        label = class_names[int(batch["label"][i])]
        ax.set_title(f"{batch['subject_id'][i]}: {label}", fontsize=8)
        ax.set_axis_off()
    fig.suptitle("Validation inputs as the model sees them", fontsize=9)
    fig.tight_layout()
    return atomic.save_figure(fig, path)
