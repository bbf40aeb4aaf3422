"""The MNI152 template shipped with nilearn, and skull stripping by carrying its brain mask back.

Gao 2020 and Ying 2025 skull-stripped (FSL BET and a learned tool) after registering to MNI152.
Atlas-based stripping needs nothing but the registration and works offline: the template's brain
mask, mapped through the subject-to-template transform, is the subject's brain mask. A learned
method can be plugged in with `register_learned_method` once its weights are on disk.
"""

import functools
from collections.abc import Callable
from pathlib import Path

import numpy as np
from scipy import ndimage

from ernjax.data.geometry import Image, resample
from ernjax.preprocess.bias import head_mask

# name -> fn(image, weights_path) -> boolean brain mask on the image grid
_LEARNED: dict[str, Callable[[Image, Path], np.ndarray]] = {}


@functools.lru_cache(maxsize=4)
def mni_template(resolution: int = 2, threshold: float = 0.2) -> tuple[Image, Image]:
    """The MNI152 (ICBM 2009 symmetric) T1 template and brain mask shipped with nilearn.

    Args:
      resolution: voxel size in mm (1 or 2).
      threshold: template intensity (0-1) above which a voxel is brain (nilearn's default 0.2).

    Returns:
      (template, brain mask) as Images on the template grid; the template is skull-stripped.
    """
    from nilearn import datasets  # imported here: nilearn is slow to import

    template = datasets.load_mni152_template(resolution=resolution)
    mask = datasets.load_mni152_brain_mask(resolution=resolution, threshold=threshold)
    as_image = lambda img: Image(np.asarray(img.get_fdata(), np.float32), img.affine.astype(float))  # noqa: E731
    return as_image(template), as_image(mask)


def _ball(spacing, radius_mm: float) -> np.ndarray:
    """A structuring element: a ball of `radius_mm` on a grid of the given voxel size."""
    half = np.maximum(np.floor(radius_mm / np.asarray(spacing)), 0).astype(int)
    grid = np.mgrid[tuple(slice(-k, k + 1) for k in half)]
    return sum((g * s / radius_mm) ** 2 for g, s in zip(grid, spacing, strict=True)) <= 1.0


def rough_brain_mask(image: Image, radius_mm: float = 4.0) -> np.ndarray:
    """A crude brain mask to register a head with its skull to the skull-stripped template.

    Otsu's head mask is eroded by `radius_mm` (cutting the thin links through the dark skull),
    its largest component kept and dilated back, then closed and filled slice by slice so the
    ventricles and sulci are inside. Only the registration sees it; the atlas mask replaces it.
    """
    head = head_mask(image.data)
    core = ndimage.binary_erosion(head, _ball(image.spacing, radius_mm))
    labels, n = ndimage.label(core)
    if n == 0:
        return head
    largest = labels == 1 + int(np.argmax(ndimage.sum(core, labels, range(1, n + 1))))
    mask = ndimage.binary_dilation(largest, _ball(image.spacing, radius_mm)) & head
    mask = ndimage.binary_closing(mask, _ball(image.spacing, 1.5 * radius_mm))
    for z in range(mask.shape[2]):
        mask[:, :, z] = ndimage.binary_fill_holes(mask[:, :, z])
    return mask


def atlas_brain_mask(shape, affine: np.ndarray, transform: np.ndarray, mask: Image) -> np.ndarray:
    """The template brain mask carried onto a subject grid.

    Args:
      shape: the subject grid's array shape.
      affine: the subject grid's affine (in subject world space).
      transform: 4x4 world map from template space to subject space (as `register` returns it
        with the template fixed).
      mask: the template's brain mask.

    Returns:
      Boolean mask on the subject grid.
    """
    # Template voxel v sits at template point M v, i.e. at subject point T M v.
    carried = Image(mask.data.astype(np.float32), transform @ mask.affine)
    return resample(carried, shape, affine, order=1).data >= 0.5


def register_learned_method(name: str, fn: Callable[[Image, Path], np.ndarray]) -> None:
    """Adds a learned skull-stripping method, selectable as `skullstrip=name`.

    Args:
      name: the method's name in the config.
      fn: fn(reference image, weights path) -> boolean brain mask on the image's grid.
    """
    _LEARNED[name] = fn


def learned_brain_mask(image: Image, method: str, weights) -> np.ndarray:
    """Runs a registered learned method.

    Args:
      image: the reference modality.
      method: a name given to `register_learned_method`.
      weights: the model weights file or folder (must exist).

    Returns:
      Boolean brain mask on the image grid.

    Raises:
      ValueError: unknown method or weights not on disk.
    """
    if method not in _LEARNED:
        raise ValueError(
            f"unknown skull-stripping method {method!r}: use 'atlas' or one of {sorted(_LEARNED)}"
        )
    if not weights or not Path(weights).exists():
        raise ValueError(
            f"skull-stripping method {method!r} needs its weights on disk: {weights!r}"
        )
    mask = np.asarray(_LEARNED[method](image, Path(weights)), bool)
    if mask.shape != image.data.shape:
        raise ValueError(
            f"{method!r} returned a mask of shape {mask.shape}, not {image.data.shape}"
        )
    return mask


def mask_volume_ml(mask: np.ndarray, affine: np.ndarray) -> float:
    """Volume of a boolean mask in millilitres."""
    return float(mask.sum() * abs(np.linalg.det(affine[:3, :3])) / 1000.0)
