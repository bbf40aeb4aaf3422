"""Grad-CAM (Selvaraju et al. 2017) for every registered model, 2D and 3D, and its outputs.

`gradcam(model, x)` weights each channel of a feature map by the spatial mean of the gradient of
the target logit with respect to it, sums, applies a ReLU, upsamples linearly to the input's
size and scales each example to [0, 1]. The default feature map is the output of
`model.features` (every `Classifier`: `model(x) == model.classify(model.features(x))`), so the
gradient is that of `classify` alone. `layer="layer3"` or `"blocks.10"` taps an intermediate
submodule instead: in a private copy of the model the submodule is wrapped so that its output is
recorded on a first pass and replaced by the differentiated variable on a second, which works
for any submodule the forward pass calls exactly once, with no change to the model code.

`overlay_png` draws the map over the image (one slice, or a grid of axial slices of a volume);
`save_cam_nifti` writes a 3D map as NIfTI in world coordinates (see `cam_image` for the space).
"""

import functools
import math
from collections.abc import Sequence
from pathlib import Path

import jax
import jax.numpy as jnp
import nibabel as nib
import numpy as np
from flax import nnx
from matplotlib import colormaps
from matplotlib.cm import ScalarMappable
from matplotlib.colors import Normalize
from matplotlib.figure import Figure

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


def overlay_png(
    image,
    cam,
    path,
    *,
    channel: int | None = None,
    alpha: float = 0.5,
    cmap: str = "jet",
    num_slices: int = 9,
    slices: Sequence[int] | None = None,
    extent=None,
    title: str | None = None,
    dpi: int = 100,
) -> tuple[int, ...]:
    """Writes a PNG of the image with the Grad-CAM heatmap blended over it.

    The heatmap's opacity is `alpha * cam`, so where the map is 0 the image shows unaltered.
    Arrays are drawn as the model saw them; for `samples` layouts (H = anterior at the top,
    W = patient right on the left) that is the radiological view of an axial slice.

    Args:
      image: [H, W] or [H, W, C] for a slice; [D, H, W] or [D, H, W, C] for a volume.
      cam: [H, W] or [D, H, W], values in [0, 1] (a `gradcam` output without its batch axis).
      path: the PNG file, written atomically; parent folders are created.
      channel: draw this channel in grey; None draws 3 channels as RGB (the fused T1/T2/T1c
        slice of Gao 2020) and otherwise channel 0 in grey.
      alpha: opacity of the heatmap where the map is 1.
      cmap: matplotlib colormap of the heatmap.
      num_slices: for a volume, how many axial slices, evenly spaced through `extent`.
      slices: for a volume, explicit D indices to draw (overrides num_slices).
      extent: for a volume, bool [D, H, W] whose D range the slices span (the lesion mask, or
        the brain); None takes the voxels where any channel is non-zero (the brain after
        skull stripping and normalization).
      title: figure title.
      dpi: resolution of the PNG.

    Returns:
      The D indices drawn (empty for a slice).

    Raises:
      ValueError: shapes of image and cam that do not match.
    """
    image, cam = np.asarray(image, np.float32), np.asarray(cam, np.float32)
    volume = cam.ndim == 3
    if image.ndim == cam.ndim:  # no channel axis
        image = image[..., None]
    if cam.ndim not in (2, 3) or image.shape[:-1] != cam.shape:
        raise ValueError(
            f"image {image.shape} and cam {cam.shape} do not match: expected [H, W(, C)] with "
            "[H, W], or [D, H, W(, C)] with [D, H, W]"
        )
    base = _display(image, channel)
    if not volume:
        panels, drawn = [(base, cam, None)], ()
    else:
        drawn = tuple(slices) if slices is not None else _spread(image, extent, num_slices)
        panels = [(base[d], cam[d], f"slice {d}") for d in drawn]
    heat = colormaps[cmap]
    cols = math.ceil(math.sqrt(len(panels)))
    rows = math.ceil(len(panels) / cols)
    fig = Figure(figsize=(2.4 * cols + 0.6, 2.4 * rows + (0.4 if title else 0)))
    axes = fig.subplots(rows, cols, squeeze=False)
    for ax in axes.ravel():
        ax.set_axis_off()
    for ax, (rgb, c, label) in zip(axes.ravel(), panels, strict=False):
        weight = alpha * np.clip(c, 0, 1)[..., None]
        blend = (1 - weight) * rgb + weight * heat(np.clip(c, 0, 1))[..., :3]
        ax.imshow(np.clip(blend, 0, 1))  # float rounding may step past 1
        if label:
            ax.set_title(label, fontsize=8)
    fig.colorbar(ScalarMappable(Normalize(0, 1), heat), ax=axes.ravel().tolist(), shrink=0.8)
    if title:  # small enough for one 2.4-inch panel
        fig.suptitle(title, fontsize=9)
    atomic.save_figure(fig, path, dpi=dpi)
    return drawn


def _display(image: np.ndarray, channel: int | None) -> np.ndarray:
    """[..., C] -> RGB in [0, 1], each channel scaled by its 0.5-99.5 percentiles (all slices)."""
    if channel is None:
        channel = None if image.shape[-1] == 3 else 0
    chans = image if channel is None else image[..., channel : channel + 1]
    flat = chans.reshape(-1, chans.shape[-1])
    lo, hi = np.percentile(flat, 0.5, axis=0), np.percentile(flat, 99.5, axis=0)
    scaled = np.clip((chans - lo) / np.where(hi > lo, hi - lo, 1.0), 0, 1)
    return np.broadcast_to(scaled, (*scaled.shape[:-1], 3)) if channel is not None else scaled


def _spread(image: np.ndarray, extent, n: int) -> tuple[int, ...]:
    """Returns n D indices evenly spaced over the slices that `extent` touches."""
    region = np.any(image != 0, axis=-1) if extent is None else np.asarray(extent, bool)
    ks = np.nonzero(region.any(axis=(1, 2)))[0]
    lo, hi = (int(ks[0]), int(ks[-1])) if ks.size else (0, image.shape[0] - 1)
    return tuple(int(k) for k in np.unique(np.rint(np.linspace(lo, hi, max(1, n)))))


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
