"""Quality control a person can look at: per-subject PNGs and a cohort index, outliers first.

Each subject's PNG has one row per preprocessing step and, per modality, its three orthogonal
planes through the brain (or head) centre, with the brain-mask outline where one is known and the
step's similarity metric in the row title. The index (HTML) lists failed subjects, then subjects
whose registration metric is an outlier, then the rest.
"""

import html
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from ernjax import atomic
from ernjax.data.geometry import Image, reorient_canonical, resample


def _centre(data: np.ndarray, mask: np.ndarray | None) -> tuple[int, ...]:
    """The voxel through which the planes are cut: the mask centroid, else the bright voxels'."""
    region = mask if mask is not None and mask.any() else data > np.percentile(data, 75)
    idx = np.argwhere(region)
    return tuple(int(v) for v in (idx.mean(0) if idx.size else np.array(data.shape) / 2))


def _planes(image: Image, mask: Image | None):
    """Yields (2D image, 2D mask or None, aspect) for the axial, coronal and sagittal planes."""
    canon = reorient_canonical(image)  # display only: RAS+ axes, no interpolation
    m = None
    if mask is not None:  # the mask may live on another grid: resample it by world position
        m = resample(mask, canon.data.shape, canon.affine, order=0).data > 0.5
    c = _centre(canon.data, m)
    sp = canon.spacing
    cuts = [(2, (0, 1)), (1, (0, 2)), (0, (1, 2))]  # axial (x, y), coronal (x, z), sagittal (y, z)
    for axis, (a, b) in cuts:
        take = lambda v, axis=axis: np.take(v, c[axis], axis=axis).T  # noqa: E731
        yield take(canon.data), (take(m) if m is not None else None), sp[b] / sp[a]


def window(data: np.ndarray) -> tuple[float, float]:
    """The grey-scale window (vmin, vmax) of one image in the QC figure.

    From 0, or from the 0.5th percentile when that is negative (an image normalized by z-score
    or WhiteStripe, whose white matter is 0), to the 99.5th percentile; the percentiles are of
    the non-zero voxels, since the air (or what the brain mask removed) sets no contrast.
    """
    values = data[data != 0]
    if not values.size:
        return 0.0, 1.0
    lo, hi = np.percentile(values, [0.5, 99.5])
    vmin = min(0.0, float(lo))
    return vmin, max(float(hi), vmin + 1e-6)


def subject_figure(subject: str, rows: Sequence[tuple], path) -> None:
    """Writes the subject's QC PNG.

    Args:
      subject: the subject ID (the figure title; never a name from image headers).
      rows: (step title, {modality: Image}, brain mask Image (any grid) or None, metric text).
      path: the PNG to write (atomically).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    grey = plt.get_cmap("gray").with_extremes(bad="black")

    mods = sorted({m for _, images, _, _ in rows for m in images})
    fig, axes = plt.subplots(
        len(rows), 3 * len(mods), figsize=(1.5 * 3 * len(mods), 1.75 * len(rows)), squeeze=False
    )
    fig.subplots_adjust(
        left=0.005, right=0.995, bottom=0.005, top=1 - 0.3 / len(rows), wspace=0.04, hspace=0.3
    )
    for r, (title, images, mask, metric) in enumerate(rows):
        for k, mod in enumerate(mods):
            cells = axes[r, 3 * k : 3 * k + 3]
            for ax in cells:
                ax.set_axis_off()
            if mod not in images:
                continue
            vmin, vmax = window(images[mod].data)
            for ax, (plane, outline, aspect) in zip(cells, _planes(images[mod], mask), strict=True):
                # zeros (air, outside the brain mask) black, whatever the window: after a z-score
                # or WhiteStripe, 0 is mid-grey
                shown = np.ma.masked_equal(plane, 0)
                ax.imshow(shown, cmap=grey, origin="lower", vmin=vmin, vmax=vmax, aspect=aspect)
                if outline is not None and outline.any():
                    ax.contour(outline.astype(float), [0.5], colors="r", linewidths=0.6)
            cells[0].text(
                0.02, 0.98, mod, color="yellow", fontsize=7, va="top", transform=cells[0].transAxes
            )
        box = axes[r, 0].get_position()
        fig.text(
            box.x0, box.y1 + 0.08 / len(rows), f"{r}. {title}   {metric}", fontsize=8, va="bottom"
        )
    fig.suptitle(f"subject {subject}", fontsize=9, y=1.0, va="top")
    try:
        atomic.save_figure(fig, path, dpi=80)
    finally:
        plt.close(fig)  # pyplot keeps every figure until closed


def outliers(scores: Mapping[str, float], z: float = 3.0) -> set[str]:
    """Subjects whose score is low by more than `z` robust standard deviations (median / MAD).

    Needs at least 4 subjects; a low score is the only bad direction (poor registration).
    """
    if len(scores) < 4:
        return set()
    values = np.array(list(scores.values()), float)
    med = np.median(values)
    mad = 1.4826 * np.median(np.abs(values - med)) or 1e-9
    return {s for s, v in scores.items() if (med - v) / mad > z}


def write_index(out_dir, results: Sequence[Mapping]) -> Path:
    """Writes OUT/qc/index.html (atomically): failed subjects, then metric outliers, then the rest.

    Args:
      out_dir: the output cohort folder.
      results: per subject {"subject", "status", "error", "metrics": {name: value}, "qc": png
        path relative to OUT/qc}; the outlier score is metrics["min_mi"] when present.

    Returns:
      The index path.
    """
    scores = {
        r["subject"]: r["metrics"]["min_mi"]
        for r in results
        if r["status"] == "done" and "min_mi" in r.get("metrics", {})
    }
    low = outliers(scores)

    def rank(r):
        return (r["status"] != "failed", r["subject"] not in low, r["subject"])

    parts = [
        "<html><head><meta charset='utf-8'><title>ernjax preprocessing QC</title></head><body>"
    ]
    parts.append(f"<h1>Preprocessing QC: {len(results)} subjects</h1>")
    for r in sorted(results, key=rank):
        flag = "FAILED" if r["status"] == "failed" else ("OUTLIER" if r["subject"] in low else "ok")
        metrics = ", ".join(f"{k}={v:.3f}" for k, v in sorted(r.get("metrics", {}).items()))
        parts.append(f"<h2>{html.escape(r['subject'])} [{flag}]</h2><p>{html.escape(metrics)}</p>")
        if r.get("error"):
            parts.append(f"<p style='color:red'>{html.escape(r['error'])}</p>")
        if r.get("qc"):
            parts.append(f"<img src='{html.escape(r['qc'])}' style='max-width:100%'>")
    parts.append("</body></html>")
    return atomic.write_text(Path(out_dir) / "qc" / "index.html", "\n".join(parts))
