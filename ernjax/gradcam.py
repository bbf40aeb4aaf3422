"""Grad-CAM (Selvaraju et al. 2017) for every registered model, 2D and 3D, and its outputs.

`gradcam(model, x)` weights each channel of a feature map by the spatial mean of the gradient of
the target logit with respect to it, sums, applies a ReLU, upsamples linearly to the input's
size and scales each example to [0, 1]. The default feature map is the output of
`model.features` (every `Classifier`: `model(x) == model.classify(model.features(x))`), so the
gradient is that of `classify` alone. `layer="layer3"` or `"blocks.10"` taps an intermediate
submodule instead: in a private copy of the model the submodule is wrapped so that its output is
recorded on a first pass and replaced by the differentiated variable on a second, which works
for any submodule the forward pass calls exactly once, with no change to the model code.

`overlay_png` draws the map over one greyscale channel (a slice, or five views of a volume:
three axial slices, a coronal and a sagittal one through the lesion or the map's peak), masked to
the brain and semi-transparent, with the lesion outline, orientation letters and a colour bar;
`scan_layers` first puts the map back on the scan's own grid, to draw it at the scan's
resolution over the scan itself. `save_cam_nifti` writes a 3D map as NIfTI in world coordinates
(see `cam_image` for the space).
"""

import dataclasses
import functools
import math
import textwrap
from collections.abc import Sequence
from pathlib import Path

import jax
import jax.numpy as jnp
import nibabel as nib
import numpy as np
from flax import nnx
from matplotlib import colormaps, patheffects
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.cm import ScalarMappable
from matplotlib.colors import Normalize
from matplotlib.figure import Figure
from scipy import ndimage

from ernjax import atomic
from ernjax.data import geometry as geo

_MAX_LISTED = 40  # submodule names listed in the error for an unknown layer


def gradcam(model: nnx.Module, x, target_class=None, layer: str | None = None) -> np.ndarray:
    """Grad-CAM maps of a batch, upsampled to the input size and scaled to [0, 1] per example.

    The model runs in eval mode (BatchNorm running statistics, no dropout) on a copy: the
    caller's model keeps its mode. Compiled once per model structure, input shape and layer.

    Args:
      model: a `Classifier` from `create_model` (anything with `features` and `classify`).
      x: channels-last batch [B, *spatial, C], 2D or 3D.
      target_class: the logit to explain: None for each example's predicted class, an int for
        all examples, or one int per example.
      layer: None for the output of `model.features`, or the dotted name of a submodule the
        forward pass calls once, e.g. "layer3" (ResNet) or "blocks.10" (ERN-Net). A name that
        denotes a list of blocks means its last block's output.

    Returns:
      float32 [B, *spatial]: 0 where no feature speaks for the class, 1 at each example's peak
      (all zeros where the ReLU leaves nothing, e.g. no positive evidence at all).

    Raises:
      ValueError: a target class out of range, an unknown layer name, or a layer whose output
        is not a [B, *spatial', F] map computed once per forward pass.
    """
    x = jnp.asarray(x, jnp.float32)
    target = _targets(target_class, x.shape[0], _num_classes(model))
    path = None if layer is None else _resolve(model, layer)
    return np.asarray(_gradcam(model, x, target, path=path))


@functools.partial(nnx.jit, static_argnames=("path",))
def _gradcam(model, x, target, *, path):
    # A copy, so that eval mode and the tap stay inside this trace.
    m = nnx.merge(*nnx.split(model))
    m.eval()
    if path is None:
        acts, head = m.features(x), m.classify
    else:
        acts, head = _tapped(m, x, path)

    def score(a):
        logits = head(a)
        t = jnp.where(target < 0, jnp.argmax(logits, -1), target)
        # Examples are independent in eval mode: the gradient of the sum is per example.
        return jnp.take_along_axis(logits, t[:, None], 1).sum()

    grads = jax.grad(score)(acts)
    return _combine(acts, grads, x.shape[1:-1])


def _combine(acts, grads, size):
    """relu(sum_f mean(grad_f) * A_f), resized to `size` (linear), divided by its peak."""
    acts, grads = acts.astype(jnp.float32), grads.astype(jnp.float32)
    spatial = tuple(range(1, acts.ndim - 1))
    weights = grads.mean(axis=spatial, keepdims=True)
    cam = jax.nn.relu((weights * acts).sum(-1))
    cam = jnp.maximum(jax.image.resize(cam, (cam.shape[0], *size), "linear"), 0.0)
    peak = cam.max(axis=tuple(range(1, cam.ndim)), keepdims=True)
    return jnp.where(peak > 0, cam / jnp.where(peak > 0, peak, 1.0), 0.0)


class _Tap(nnx.Module):
    """Wraps a submodule; `hook` sees (and may replace) its output."""

    def __init__(self, inner, hook):
        self.inner, self.hook = inner, hook

    def __call__(self, *args, **kwargs):
        return self.hook(self.inner(*args, **kwargs))


def _tapped(m, x, path):
    """(the layer's output, a -> logits with the layer's output replaced by a), on model copy m."""
    parent = functools.reduce(_child, path[:-1], m)
    key = path[-1]
    inner = _child(parent, key)
    calls, replacement = [], []

    def hook(y):
        calls.append(y)
        return replacement[0] if replacement else y

    tap = _Tap(inner, hook)
    if isinstance(key, int):
        parent[key] = tap
    else:
        setattr(parent, key, tap)
    name = ".".join(map(str, path))
    m(x)  # first pass records the layer's output; the rest is dead code XLA drops
    if len(calls) != 1:
        raise ValueError(f"layer {name!r} is called {len(calls)} times per forward pass; need 1")
    acts = calls[0]
    if not hasattr(acts, "ndim") or acts.ndim != x.ndim or acts.shape[0] != x.shape[0]:
        shape = getattr(acts, "shape", type(acts).__name__)
        raise ValueError(
            f"layer {name!r} outputs {shape}, not a feature map [B, *spatial, F] like the input "
            f"{x.shape}; pick a conv block"
        )

    def head(a):
        calls.clear()
        replacement[:] = [a]
        return m(x)

    return acts, head


def _child(module, key):
    return module[key] if isinstance(key, int) else getattr(module, key)


def _resolve(model, layer: str) -> tuple:
    """'blocks.10' -> ('blocks', 10), checked against the model; a list -> its last element."""
    path, node = [], model
    for part in layer.split("."):
        key = int(part) if part.lstrip("-").isdigit() else part
        try:
            child = _child(node, key)
        except (AttributeError, IndexError, TypeError, KeyError):
            node = None
            break
        # Store non-negative indices: the path is a static (hashed) argument of the jit.
        path.append(key % len(node) if isinstance(key, int) else key)
        node = child
    if isinstance(node, nnx.List) and len(node):
        path, node = [*path, len(node) - 1], node[-1]
    if not isinstance(node, nnx.Module) or node is model:
        names = [".".join(map(str, p)) for p, _ in nnx.iter_modules(model) if 0 < len(p) <= 2]
        more = ", ..." if len(names) > _MAX_LISTED else ""
        raise ValueError(
            f"unknown layer {layer!r} for {type(model).__name__}; submodules are named like "
            f"{', '.join(names[:_MAX_LISTED])}{more}"
        )
    return tuple(path)


def _num_classes(model) -> int | None:
    fc = getattr(model, "fc", None)
    return getattr(fc, "out_features", None)


def _targets(target_class, batch: int, num_classes: int | None) -> jax.Array:
    """The target logit per example as int32 [B]; -1 means the predicted class."""
    if target_class is None:
        return jnp.full((batch,), -1, jnp.int32)
    t = np.broadcast_to(np.asarray(target_class, np.int64), (batch,))
    if num_classes is not None and (t.min() < 0 or t.max() >= num_classes):
        raise ValueError(f"target_class {target_class} outside 0..{num_classes - 1}")
    return jnp.asarray(t, jnp.int32)


# The drawing. A picture is a few panels: slices of one greyscale modality with the map over
# it, the map drawn only inside the brain, more opaque where it is higher, not at all below
# HEAT_FLOOR (the low, diffuse part of an upsampled map is noise, not evidence), the lesion
# outline on top, and orientation letters taken from the affine (so they are right for any
# array layout, not assumed). Panels are upsampled to square millimetre pixels at about the
# size they are shown, then drawn pixel for pixel (nearest), so colours are the blend's.
HEAT_FLOOR = 0.25  # map values below this are not drawn
HEAT_ALPHA = 0.6  # the heat's opacity where the map is 1
HEAT_CMAP = "jet"
PLATEAU = 1e-3  # map values this close to the maximum count as the peak
FLAT_MAP = 0.05  # a map within this of its peak over 95 % of the brain is said to be uniform
LESION_RGB = (0.0, 1.0, 0.0)  # the outline: pure green, which the blend never produces
LESION_PX = 2  # outline width in display pixels
LETTER_RGB = "#ffd21f"
# samples' layout with 1 mm voxels: d -> +z (S), h -> -y (P), w -> -x (patient left)
SAMPLES_AFFINE = np.array([[0, 0, -1.0, 0], [0, -1.0, 0, 0], [1.0, 0, 0, 0], [0, 0, 0, 1]])
DEFAULT_UNDERLAY = "t1c"
_LETTERS = (("L", "R"), ("P", "A"), ("I", "S"))  # RAS+: +x is patient right


@dataclasses.dataclass(frozen=True)
class Panel:
    """One 2D view: array rows go along `row_dir`, columns along `col_dir` (world mm per step).

    Attributes:
      name: its caption, e.g. "axial z = 12.0 mm".
      grey: the underlay scaled to [0, 1].
      cam: the map, [0, 1].
      brain: bool, where the map may be drawn.
      lesion: bool lesion mask, or None.
      row_dir, col_dir: (3,) RAS+ vectors of one row / one column step.
    """

    name: str
    grey: np.ndarray
    cam: np.ndarray
    brain: np.ndarray
    lesion: np.ndarray | None
    row_dir: np.ndarray
    col_dir: np.ndarray

    @property
    def letters(self) -> dict[str, str]:
        """The orientation letter at each edge (see `orientation_letters`)."""
        return orientation_letters(self.row_dir, self.col_dir)


@dataclasses.dataclass(frozen=True)
class Views:
    """Where a 3D picture cuts the volume.

    Attributes:
      point: the (d, h, w) voxel the coronal and sagittal slices go through.
      axial: the D indices of the axial slices.
      source: "lesion" (the mask's centre), "peak" (the map's maximum in the brain) or
        "centre" (the brain's centre: the map is zero in the brain).
    """

    point: tuple[int, int, int]
    axial: tuple[int, ...]
    source: str


@dataclasses.dataclass(frozen=True)
class Drawing:
    """What `overlay_png` drew.

    Attributes:
      panels: the panels, in reading order.
      boxes: per panel, its image's pixel box in the PNG, (left, top, right, bottom).
      size: the PNG's (width, height) in pixels.
      views: for a volume, where it was cut; None for a slice.
      title: the title as drawn, with the lines added (which slices, a uniform map).
    """

    panels: tuple[Panel, ...]
    boxes: tuple[tuple[int, int, int, int], ...]
    size: tuple[int, int]
    views: Views | None
    title: str


def orientation_letters(row_dir, col_dir) -> dict[str, str]:
    """The anatomical direction at each edge of a displayed 2D array.

    Row 0 is at the top, column 0 on the left, so the bottom edge is where `row_dir` points and
    the right edge where `col_dir` does. Each gets the letter of the RAS+ axis it is closest to.

    Args:
      row_dir: (3,) world (RAS+) direction of increasing row index.
      col_dir: (3,) world direction of increasing column index.

    Returns:
      {"top", "bottom", "left", "right"} -> one of R, L, A, P, S, I. For `samples`' axial slices
      (H = anterior at the top, W = patient right on the left): A, P, R, L.
    """
    return {
        "top": _letter(-np.asarray(row_dir, float)),
        "bottom": _letter(row_dir),
        "left": _letter(-np.asarray(col_dir, float)),
        "right": _letter(col_dir),
    }


def _letter(v) -> str:
    v = np.asarray(v, float)
    axis = int(np.argmax(np.abs(v)))
    return _LETTERS[axis][int(v[axis] > 0)]


def underlay_modality(modalities: Sequence[str], requested: str | None = None) -> str:
    """The modality drawn under the map: `requested`, else T1c when there, else the first.

    Raises:
      ValueError: `requested` is not among `modalities`.
    """
    if requested:
        if requested not in modalities:
            raise ValueError(
                f"Grad-CAM underlay {requested!r} is not among the run's modalities "
                f"{list(modalities)}"
            )
        return requested
    return DEFAULT_UNDERLAY if DEFAULT_UNDERLAY in modalities else modalities[0]


def choose_views(cam, brain=None, lesion=None, spacing=(1.0, 1.0, 1.0), step_mm=8.0) -> Views:
    """Where to cut a 3D map: through the lesion's centre when a mask has one, else the peak.

    Three axial slices: through the point and `step_mm` either side (a lesion: a quarter of its
    D extent either side, so all three cut it), at least one slice apart, moved inward at the
    ends of the volume. The peak of a plateau (a flat map) is its voxel nearest its middle.

    Args:
      cam: [D, H, W] map.
      brain: bool [D, H, W] where the map counts (None: everywhere).
      lesion: bool [D, H, W] lesion mask, or None.
      spacing: the voxel size along d, h, w in mm.
      step_mm: distance of the outer axial slices from the point without a lesion.
    """
    cam = np.asarray(cam, np.float32)
    brain = np.ones(cam.shape, bool) if brain is None else np.asarray(brain, bool)
    if lesion is not None and np.any(lesion):
        idx = np.argwhere(lesion)
        point, source = np.rint(idx.mean(0)).astype(int), "lesion"
        step = (idx[:, 0].max() - idx[:, 0].min()) / 4.0
    else:
        inside = np.where(brain, cam, 0.0)
        if inside.max() > 0:
            # the peak; of a plateau (a flat map: every voxel is its maximum) the voxel nearest
            # its middle, not the first in array order (a corner of the volume)
            top = np.argwhere(inside >= inside.max() - PLATEAU)
            point = top[np.argmin(((top - top.mean(0)) ** 2).sum(1))]
            source = "peak"
        else:
            where = np.argwhere(brain) if brain.any() else np.argwhere(np.ones_like(brain))
            point, source = np.rint(where.mean(0)).astype(int), "centre"
        step = step_mm / float(spacing[0])
    return Views(tuple(int(v) for v in point), _three_slices(point[0], step, cam.shape[0]), source)


def _three_slices(k: int, step: float, depth: int) -> tuple[int, ...]:
    """Slice k and `step` slices either side, moved inward at the ends (k stays among them)."""
    step = max(1, int(round(step)))
    step = min(step, max(1, (depth - 1) // 2))
    first = int(np.clip(k - step, 0, max(0, depth - 1 - 2 * step)))
    return tuple(int(v) for v in np.unique(np.clip(first + step * np.arange(3), 0, depth - 1)))


def overlay_png(
    image,
    cam,
    path,
    *,
    channel: int = 0,
    brain=None,
    lesion=None,
    affine=None,
    views: Views | None = None,
    title: str | None = None,
    underlay_name: str = "",
    panel_px: int | None = None,
    floor: float = HEAT_FLOOR,
    alpha: float = HEAT_ALPHA,
    cmap: str = HEAT_CMAP,
) -> Drawing:
    """Writes a PNG of a greyscale slice (or views of a volume) with the Grad-CAM map over it.

    The underlay is one channel in grey (0.5-99.5 percentiles of the brain). The map is drawn
    inside `brain` only, with opacity rising from 0 at `floor` to `alpha` at 1 (below `floor`:
    the underlay alone, exactly grey). The lesion outline is drawn in green; orientation letters
    come from `affine`; a colour bar gives the map's scale. A volume is drawn as three axial
    slices, one coronal and one sagittal through `views` (default `choose_views`: the lesion's
    centre, else the map's peak); the title's second line says which.

    Args:
      image: [H, W] or [H, W, C] for a slice; [D, H, W] or [D, H, W, C] for a volume, in the
        `samples` layout (or any other that `affine` describes).
      cam: [H, W] or [D, H, W], values in [0, 1] (a `gradcam` output without its batch axis, or
        `scan_layers(...).cam`).
      path: the PNG file, written atomically; parent folders are created.
      channel: the channel drawn as the underlay.
      brain: bool, where the map may be drawn; None: where the channel is non-zero.
      lesion: bool lesion mask of the same shape, or None.
      affine: 4x4 (d, h, w) -> RAS+ mm (a slice uses its h and w columns); None: `samples`'
        layout with 1 mm voxels (A at the top, patient right on the left).
      views: for a volume, where to cut it.
      title: the figure's title (a subject, a slice, a probability); may hold line breaks.
      underlay_name: the underlay's modality, for the captions.
      panel_px: the longer side of each panel in pixels (default 640 for a slice, 400 for a
        volume's five views).
      floor: map values below it are not drawn.
      alpha: the heat's opacity where the map is 1.
      cmap: the heat's matplotlib colour map, spread over floor..1.

    Returns:
      The `Drawing`: panels, their pixel boxes in the PNG, its size, the views of a volume.

    Raises:
      ValueError: shapes of image, cam, brain or lesion that do not match.
    """
    image, cam = np.asarray(image, np.float32), np.asarray(cam, np.float32)
    if image.ndim == cam.ndim:  # no channel axis
        image = image[..., None]
    if cam.ndim not in (2, 3) or image.shape[:-1] != cam.shape:
        raise ValueError(
            f"image {image.shape} and cam {cam.shape} do not match: expected [H, W(, C)] with "
            "[H, W], or [D, H, W(, C)] with [D, H, W]"
        )
    grey = image[..., channel]
    brain = grey != 0 if brain is None else np.asarray(brain, bool)
    lesion = None if lesion is None else np.asarray(lesion, bool)
    for name, a in (("brain", brain), ("lesion", lesion)):
        if a is not None and a.shape != cam.shape:
            raise ValueError(f"{name} {a.shape} does not match cam {cam.shape}")
    affine = SAMPLES_AFFINE if affine is None else np.asarray(affine, np.float64)
    grey = _scale_grey(grey, brain)
    what = f"{underlay_name} " if underlay_name else ""
    if cam.ndim == 2:
        cols = affine[:3, 1], affine[:3, 2]
        panels = [_crop_to_brain(Panel(f"{what}axial".strip(), grey, cam, brain, lesion, *cols))]
        views = None
    else:
        spacing = np.sqrt((affine[:3, :3] ** 2).sum(0))
        views = views or choose_views(cam, brain, lesion, spacing)
        panels = _volume_panels(grey, cam, brain, lesion, affine, views, what)
    title = _full_title(title, views, cam[brain])
    px = panel_px or (640 if views is None else 400)
    boxes, size = _draw(panels, path, title, px, floor, alpha, cmap)
    return Drawing(tuple(panels), boxes, size, views, title or "")


_WHERE = {
    "lesion": "slices through the lesion's centre (mask)",
    "peak": "slices through the Grad-CAM peak",
    "centre": "slices through the brain's centre (no Grad-CAM heat in the brain)",
}


def _full_title(title: str | None, views: Views | None, inside: np.ndarray) -> str:
    """The title, then where a volume was cut, then a warning for a uniform map."""
    # e.g. a 1x1 feature map upsampled: the colour then says nothing about where
    flat = (
        inside.size > 0 and 0 < inside.max() and np.ptp(np.percentile(inside, [5, 100])) < FLAT_MAP
    )
    lines = [title] if title else []
    if views is not None:
        plateau = flat and views.source == "peak"
        lines.append(
            "slices through the middle of the map's plateau" if plateau else _WHERE[views.source]
        )
    if flat:
        lines.append("the map is uniform over the brain: it does not localise")
    return "\n".join(lines)


def _scale_grey(grey: np.ndarray, brain: np.ndarray) -> np.ndarray:
    """The underlay in [0, 1]: 0 (or a negative 0.5 percentile) to the brain's 99.5 percentile.

    Black stays the background of a scan (MR intensities are >= 0), so the darkest tissue is
    not drawn as black; a z-scored model input starts at its 0.5 percentile.
    """
    values = grey[brain] if brain.any() else grey.ravel()
    lo, hi = np.percentile(values, [0.5, 99.5])
    lo = min(float(lo), 0.0)
    return np.clip((grey - lo) / (hi - lo if hi > lo else 1.0), 0.0, 1.0)


def _volume_panels(grey, cam, brain, lesion, affine, views: Views, what: str) -> list[Panel]:
    """Axial slices at views.axial, then a coronal and a sagittal one through views.point.

    Every view is cropped to the brain's bounding box (the same box for all). Coronal and
    sagittal views have D reversed, so that superior is at the top.
    """
    box = geo.bounding_box(brain, margin=3)
    layers = (grey, cam, brain, lesion)
    d_dir, h_dir, w_dir = (affine[:3, i] for i in range(3))
    _, h0, w0 = views.point
    point_mm = (affine @ [*views.point, 1.0])[:3]

    def take(key, flip=False):
        out = [None if a is None else a[key] for a in layers]
        return [None if a is None else a[::-1] for a in out] if flip else out

    panels = [
        Panel(
            f"{what}axial, {_axis_mm(d_dir, affine @ [d, h0, w0, 1.0])}",
            *take((d, box[1], box[2])),
            h_dir,
            w_dir,
        )
        for d in views.axial
    ]
    coronal = take((box[0], h0, box[2]), flip=True)
    sagittal = take((box[0], box[1], w0), flip=True)
    panels.append(Panel(f"{what}coronal, {_axis_mm(h_dir, point_mm)}", *coronal, -d_dir, w_dir))
    panels.append(Panel(f"{what}sagittal, {_axis_mm(w_dir, point_mm)}", *sagittal, -d_dir, h_dir))
    return panels


def _axis_mm(direction, mm) -> str:
    """'z = 12 mm': the world coordinate along the RAS+ axis closest to `direction`."""
    axis = int(np.argmax(np.abs(direction)))
    return f"{'xyz'[axis]} = {mm[axis]:.0f} mm"


def _crop_to_brain(panel: Panel) -> Panel:
    """A slice cut to its brain's bounding box plus 3 pixels (unchanged without brain)."""
    if not panel.brain.any():
        return panel
    r, c = geo.bounding_box(panel.brain, margin=3)
    fields = ("grey", "cam", "brain", "lesion")
    cut = {f: None if getattr(panel, f) is None else getattr(panel, f)[r, c] for f in fields}
    return dataclasses.replace(panel, **cut)


_DPI = 100
_PAD, _CAPTION, _BAR = 14, 30, 170  # pixels: between panels, a panel's caption, the colour bar
_TITLE_LINE = 26  # pixels per title line (15 pt at 100 dpi, with leading)


def _draw(panels, path, title, px: int, floor: float, alpha: float, cmap: str):
    """Lays the panels out (at most 3 a row) with letters, captions, colour bar and title."""
    heat = colormaps[cmap]
    n = len(panels)
    ncols = min(n, 3)
    nrows = math.ceil(n / ncols)
    width = _PAD + ncols * (px + _PAD) + _BAR
    lines = _title_lines(title, width)
    top = _PAD + _TITLE_LINE * len(lines)
    height = top + nrows * (_CAPTION + px + _PAD) + _PAD
    fig = Figure(figsize=(width / _DPI, height / _DPI), dpi=_DPI, facecolor="black")
    FigureCanvasAgg(fig)
    axes = []
    for i, p in enumerate(panels):
        r, c = divmod(i, ncols)
        left, upper = _PAD + c * (px + _PAD), top + r * (_CAPTION + px + _PAD) + _CAPTION
        ax = fig.add_axes((left / width, 1 - (upper + px) / height, px / width, px / height))
        ax.imshow(_panel_rgb(p, px, floor, alpha, heat), interpolation="nearest")
        ax.set_axis_off()
        ax.set_title(p.name, color="white", fontsize=12, pad=4)
        _draw_letters(ax, p.letters)
        axes.append(ax)
    bar_h = nrows * (_CAPTION + px + _PAD) - _PAD - _CAPTION
    cax = fig.add_axes(
        (
            (width - _BAR + 18) / width,
            1 - (top + _CAPTION + bar_h) / height,
            18 / width,
            bar_h / height,
        )
    )
    bar = fig.colorbar(ScalarMappable(Normalize(floor, 1.0), heat), cax=cax)
    bar.set_label(
        f"Grad-CAM (relative to its peak)\nbelow {floor:g} not drawn", color="white", fontsize=12
    )
    bar.ax.tick_params(colors="white", labelsize=11)
    bar.outline.set_edgecolor("white")
    if lines:
        fig.text(
            0.5,
            1 - (_PAD / 2) / height,
            "\n".join(lines),
            ha="center",
            va="top",
            color="white",
            fontsize=15,
            linespacing=1.25,
        )
    fig.canvas.draw()
    boxes = tuple(_pixel_box(ax, height) for ax in axes)
    atomic.save_figure(fig, path, dpi=_DPI, facecolor="black")
    return boxes, (int(round(width)), int(round(height)))


def _title_lines(title: str | None, width: int) -> list[str]:
    """The title's lines, each wrapped to the figure's width (about 9 px a character)."""
    if not title:
        return []
    chars = max(20, int(width / 9.5))
    return [w for line in title.split("\n") for w in textwrap.wrap(line, chars) or [""]]


def _pixel_box(ax, height: int) -> tuple[int, int, int, int]:
    """The axes' drawn box as PNG pixels (left, top, right, bottom), rows counted from the top."""
    b = ax.get_window_extent()
    return (
        int(math.ceil(b.x0)),
        int(math.ceil(height - b.y1)),
        int(math.floor(b.x1)),
        int(math.floor(height - b.y0)),
    )


def _draw_letters(ax, letters: dict[str, str]) -> None:
    """The orientation letters inside the panel's edges, yellow on a black outline."""
    outline = [patheffects.withStroke(linewidth=3, foreground="black")]
    spots = {
        "top": (0.5, 0.985, "center", "top"),
        "bottom": (0.5, 0.015, "center", "bottom"),
        "left": (0.015, 0.5, "left", "center"),
        "right": (0.985, 0.5, "right", "center"),
    }
    for edge, (x, y, ha, va) in spots.items():
        ax.text(
            x,
            y,
            letters[edge],
            transform=ax.transAxes,
            ha=ha,
            va=va,
            color=LETTER_RGB,
            fontsize=15,
            fontweight="bold",
            path_effects=outline,
        )


def panel_rgb(panel: Panel, px: int, *, floor=HEAT_FLOOR, alpha=HEAT_ALPHA, cmap=HEAT_CMAP):
    """The panel as drawn: [rows, cols, 3] in [0, 1], upsampled to square mm pixels.

    The longer side is `px` pixels; the underlay and the map are upsampled linearly, the brain
    and the lesion by nearest neighbour. Outside the brain and below `floor` the pixel is the
    underlay's grey (R = G = B); the lesion outline is LESION_RGB, LESION_PX wide.
    """
    return _panel_rgb(panel, px, floor, alpha, colormaps[cmap])


def _panel_rgb(p: Panel, px: int, floor: float, alpha: float, heat) -> np.ndarray:
    step = np.array([np.linalg.norm(p.row_dir), np.linalg.norm(p.col_dir)])
    extent = np.array(p.grey.shape) * step  # mm
    zoom = step * (px / extent.max())
    grey = _zoom(p.grey, zoom, 1)
    cam = np.clip(_zoom(p.cam, zoom, 1), 0.0, 1.0)
    brain = _zoom(p.brain, zoom, 0) > 0.5
    level = np.clip((cam - floor) / (1.0 - floor), 0.0, 1.0)
    a = (alpha * level * brain)[..., None]
    rgb = (1 - a) * grey[..., None] + a * heat(level)[..., :3]
    rgb[a[..., 0] == 0] = grey[a[..., 0] == 0, None]  # exactly grey where no heat
    if p.lesion is not None:
        les = _zoom(p.lesion, zoom, 0) > 0.5
        edge = les & ~ndimage.binary_erosion(les, iterations=LESION_PX, border_value=0)
        rgb[edge] = LESION_RGB
    return np.clip(rgb, 0.0, 1.0)


def _zoom(a: np.ndarray, zoom, order: int) -> np.ndarray:
    """Resizes a 2D array by `zoom` (at least 1x1 out), areas aligned (grid_mode)."""
    a = np.asarray(a, np.float32)
    return ndimage.zoom(a, zoom, order=order, mode="nearest", grid_mode=True, prefilter=False)


@dataclasses.dataclass(frozen=True)
class ScanLayers:
    """A map and its underlay on a scan's own grid, in the `samples` (d, h, w) layout.

    Attributes:
      image: [D, H, W] the underlay scan's values.
      cam: [D, H, W] the map, resampled linearly (0 outside the model's field of view).
      brain: bool [D, H, W], the reference scan's non-zero voxels (as `samples` takes them).
      lesion: bool [D, H, W] lesion mask, or None.
      affine: 4x4 (d, h, w) -> RAS+ mm.
    """

    image: np.ndarray
    cam: np.ndarray
    brain: np.ndarray
    lesion: np.ndarray | None
    affine: np.ndarray


def scan_layers(cam, affine, reference, *, underlay=None, lesion=None) -> ScanLayers:
    """Puts a 3D map back on the reference scan's grid, with an underlay and the lesion mask.

    The grid is the reference scan's, at its resolution, reoriented to RAS+ (no interpolation)
    and laid out as `samples` lays out arrays (D = z, H = y reversed, W = x reversed: axial
    slices in the radiological view), so slice d is the sampling grid's slice d (the slice
    numbers of slices2d runs and their reports). The map is resampled from its world position
    (`cam_image`), as `save_cam_nifti` does; the underlay and the mask, when on other grids, too.

    Args:
      cam: [D, H, W] map on the model's input grid (slices2d: the slice maps stacked at their
        slice numbers, zeros elsewhere).
      affine: 4x4 (d, h, w) -> RAS+ mm of that grid (`volume_example`'s "affine", or
        `load_subject(...).affine`).
      reference: the reference scan: a NIfTI file or a `geometry.Image`.
      underlay: the scan drawn in grey (file or Image); None: the reference.
      lesion: the lesion mask (file or Image), or None.
    """
    ref = geo.reorient_canonical(_as_image(reference))
    shape, grid = ref.data.shape, ref.affine

    def onto(source, order):
        return geo.resample(geo.reorient_canonical(source), shape, grid, order=order).data

    under = ref.data if underlay is None else onto(_as_image(underlay), 1)
    heat = geo.resample(cam_image(cam, affine), shape, grid, order=1).data
    les = None if lesion is None else onto(_as_image(lesion, allow_empty=True), 0) > 0.5
    index = np.zeros((4, 4))  # (d, h, w, 1) -> (i, j, k, 1) of the RAS+ grid
    index[0, 2], index[0, 3] = -1, shape[0] - 1  # i = nx - 1 - w
    index[1, 1], index[1, 3] = -1, shape[1] - 1  # j = ny - 1 - h
    index[2, 0], index[3, 3] = 1, 1  # k = d

    def dhw(a):
        return None if a is None else np.ascontiguousarray(a.transpose(2, 1, 0)[:, ::-1, ::-1])

    return ScanLayers(
        dhw(under), dhw(np.clip(heat, 0, 1)), dhw(ref.data != 0), dhw(les), grid @ index
    )


def _as_image(source, allow_empty: bool = False) -> geo.Image:
    if isinstance(source, geo.Image):
        return source
    return geo.load_image(source, allow_empty=allow_empty)


def cam_image(cam, affine) -> geo.Image:
    """A 3D map in the `samples` layout, put back on its world grid in RAS+ array order.

    Undoes the (D, H, W) layout of `samples`: D = z, H = y and W = x reversed. The grid is the
    subject's sampling grid (the reference scan's, or it at `data.spacing`, reoriented to RAS+)
    cropped to the brain, padded to the aspect of `data.shape` and zoomed to it; `affine` (the
    `SubjectVolume.affine` / `volume_example` "affine") already carries all of that, so every
    voxel sits at its exact world position, but voxels are not those of the scan: resample onto
    the scan with `save_cam_nifti(..., reference=...)` to overlay it voxel for voxel.

    Args:
      cam: [D, H, W] map on the grid of the model's input volume.
      affine: 4x4 (d, h, w) index -> RAS+ mm.

    Returns:
      The image: data[i, j, k] = cam[k, H - 1 - j, W - 1 - i], affine = affine @ that index map.
    """
    cam = np.asarray(cam, np.float32)
    if cam.ndim != 3:
        raise ValueError(f"expected a 3D map [D, H, W], got shape {cam.shape}")
    depth, height, width = cam.shape
    index = np.zeros((4, 4))  # (i, j, k, 1) -> (d, h, w, 1)
    index[0, 2] = 1  # d = k
    index[1, 1], index[1, 3] = -1, height - 1  # h = H - 1 - j
    index[2, 0], index[2, 3] = -1, width - 1  # w = W - 1 - i
    index[3, 3] = 1
    data = np.ascontiguousarray(cam[:, ::-1, ::-1].transpose(2, 1, 0))
    return geo.Image(data, np.asarray(affine, np.float64) @ index)


def save_cam_nifti(cam, affine, path, *, reference=None) -> geo.Image:
    """Writes a 3D Grad-CAM map as NIfTI in world (RAS+ mm) coordinates.

    Without `reference` the file holds the model's input grid (see `cam_image`); with it the map
    is resampled (linear, 0 outside) onto the reference grid, e.g. the subject's original scan,
    whatever its orientation or spacing, so that it overlays the scan in any NIfTI viewer.

    Args:
      cam: [D, H, W] map (a `gradcam` output of a volume, without the batch axis).
      affine: 4x4 (d, h, w) -> RAS+ mm of the input volume (`SubjectVolume.affine`, or the
        "affine" of a `volume_example`; for a lesion-centred input, `data.roi`, the box's
        affine, so the map lands where the box lies in the scan, zero outside it). For
        slices2d, stack the slice maps into the subject's [D, H, W] (zeros elsewhere) and use
        its `load_subject(...).affine`.
      path: the .nii or .nii.gz file; parent folders are created.
      reference: None, a NIfTI file, a `geometry.Image`, or a (shape, affine) pair.

    Returns:
      The image written.
    """
    image = cam_image(cam, affine)
    if reference is not None:
        if isinstance(reference, (str, Path)):
            ref = nib.load(str(reference))
            shape, ref_affine = ref.shape[:3], ref.affine
        elif isinstance(reference, geo.Image):
            shape, ref_affine = reference.data.shape[:3], reference.affine
        else:
            shape, ref_affine = reference
        image = geo.resample(image, shape, np.asarray(ref_affine, np.float64), order=1)
    geo.save_image(image, path)
    return image
