"""Images with their affines: loading with validation, canonical orientation, resampling.

Everything here is a pure function on `Image` (a voxel array in float32 plus its 4x4 voxel-to-world
affine in RAS+ millimetres, the NIfTI convention), so each step can be tested on its own.
"""

import dataclasses
import itertools
import logging

import nibabel as nib
import numpy as np
from scipy import ndimage

from ernjax import atomic
from ernjax.data import whitestripe
from ernjax.errors import InputError

# Two affines closer than this at every voxel of a grid are one grid. NIfTI headers hold the affine
# in float32 (sform) and as a float32 quaternion (qform): a round trip moves the corner voxels of
# an oblique 256x256x60 grid by up to 1e-4 mm (measured), 10x below this and 1/400 of a 0.4 mm
# voxel. Any real difference is larger, and is resampled, never ignored.
SAME_GRID_MM = 1e-3
NORMALIZATIONS = ("minmax", "zscore", "whitestripe")  # `normalize`'s methods


@dataclasses.dataclass(frozen=True)
class Image:
    """A 3D voxel array and its voxel-to-world (RAS+, mm) affine."""

    data: np.ndarray
    affine: np.ndarray

    @property
    def spacing(self) -> np.ndarray:
        """Voxel size in mm along each array axis."""
        return np.sqrt((self.affine[:3, :3] ** 2).sum(axis=0))

    def to_nifti(self) -> nib.Nifti1Image:
        """Returns the image as a NIfTI-1 object (sform and qform set to the affine)."""
        img = nib.Nifti1Image(np.asarray(self.data), self.affine)
        img.set_qform(self.affine, code=1)
        img.set_sform(self.affine, code=1)
        return img


def load_image(path, subject: str = "", *, allow_empty: bool = False) -> Image:
    """Reads a NIfTI file and checks that it is a usable 3D image.

    Args:
      path: a .nii or .nii.gz file.
      subject: the subject ID, used in error messages.
      allow_empty: accept an all-zero image (lesion masks are checked by their callers).

    Returns:
      The image with float32 data.

    Raises:
      InputError: unreadable or truncated file, not 3D, singular or non-finite affine,
        NaN/Inf voxels, or (unless allowed) an all-zero image.
    """
    try:
        img = nib.load(str(path))
        data = np.asarray(img.dataobj, dtype=np.float32)
    except Exception as e:  # nibabel raises many types for damaged files (EOFError, zlib, ...)
        raise InputError(subject, path, f"cannot be read as NIfTI ({type(e).__name__}: {e})") from e
    while data.ndim > 3 and data.shape[-1] == 1:
        data = data[..., 0]
    if data.ndim != 3 or min(data.shape) < 2:
        raise InputError(subject, path, f"expected a 3D volume, found shape {data.shape}")
    affine = np.asarray(img.affine, dtype=np.float64)
    if not np.all(np.isfinite(affine)) or abs(np.linalg.det(affine[:3, :3])) < 1e-9:
        raise InputError(subject, path, "the affine (voxel-to-world matrix) is singular or missing")
    bad = ~np.isfinite(data)
    if bad.any():
        raise InputError(subject, path, f"{int(bad.sum())} voxels are NaN or Inf")
    if not allow_empty and not np.any(data):
        raise InputError(subject, path, "the image is all zeros")
    return Image(data, affine)


def save_image(image: Image, path) -> None:
    """Writes the image as NIfTI (compressed when the name ends in .gz), atomically."""
    with atomic.atomic_path(path) as tmp:  # the temporary name keeps the .nii.gz ending
        nib.save(image.to_nifti(), str(tmp))


def canonical_orientation(affine: np.ndarray) -> np.ndarray:
    """Returns nibabel's orientation array taking the stored axes to RAS+."""
    return nib.orientations.io_orientation(affine)


def reorient_canonical(image: Image) -> Image:
    """Permutes and flips the array axes to RAS+, without interpolation.

    RAS+: x left->right, y posterior->anterior, z inferior->superior. Images stored LPS and RAS
    then hold the same anatomy on the same axes.
    """
    ornt = canonical_orientation(image.affine)
    data = nib.orientations.apply_orientation(image.data, ornt)
    affine = image.affine @ nib.orientations.inv_ornt_aff(ornt, image.data.shape)
    return Image(np.ascontiguousarray(data, dtype=np.float32), affine)


def canonical_slice_index(k: int, affine: np.ndarray, shape, subject: str = "", path="") -> int:
    """Maps slice k of the stored third axis to its index on the canonical z axis.

    Raises:
      InputError: the stored third axis is not the axial (inferior-superior) one, or k is out
        of range.
    """
    ornt = canonical_orientation(affine)
    axis, flip = int(ornt[2, 0]), ornt[2, 1] < 0
    if axis != 2:
        raise InputError(subject, path, "slice indices need axially stored slices (3rd axis I-S)")
    if not 0 <= k < shape[2]:
        raise InputError(subject, path, f"slice index {k} outside 0..{shape[2] - 1}")
    return shape[2] - 1 - k if flip else k


def coverage(source: Image, shape, affine: np.ndarray) -> float:
    """Fraction of the target grid's voxels whose centres fall inside the source's field of view."""
    corners = np.stack(
        np.meshgrid(*[np.linspace(0, n - 1, min(n, 16)) for n in shape], indexing="ij"), -1
    ).reshape(-1, 3)
    world = corners @ affine[:3, :3].T + affine[:3, 3]
    vox = (world - source.affine[:3, 3]) @ np.linalg.inv(source.affine[:3, :3]).T
    inside = np.all((vox >= -0.5) & (vox <= np.array(source.data.shape) - 0.5), axis=1)
    return float(inside.mean())


def grid_offset_mm(a: np.ndarray, b: np.ndarray, shape) -> float:
    """Largest distance (mm) between the world positions two affines give one voxel of `shape`.

    The offset is affine in the voxel index, so its largest norm over the grid is at a corner.
    """
    corners = np.array(list(itertools.product(*[(0, n - 1) for n in shape])), float)
    ijk1 = np.c_[corners, np.ones(len(corners))]
    return float(np.linalg.norm(ijk1 @ (a - b)[:3].T, axis=1).max())


def _numbers(values) -> str:
    return ", ".join(f"{x:.4g}" for x in np.round(values, 4) + 0.0)  # + 0.0: no "-0"


def grid_text(image: Image) -> str:
    """The grid in words: shape, voxel size, origin (world mm of voxel 0,0,0), orientation."""
    codes = "".join(nib.orientations.aff2axcodes(image.affine))
    return (
        f"shape {'x'.join(map(str, image.data.shape))}, voxel {_numbers(image.spacing)} mm, "
        f"origin ({_numbers(image.affine[:3, 3])}) mm, {codes}"
    )


def check_mask_grid(mask: Image, images: dict, reference: str, subject: str, path) -> Image:
    """Checks a lesion mask's grid against the subject's images; returns the mask to resample.

    On the grid of one of `images` (same shape, affine within SAME_GRID_MM at every voxel), the
    mask is that image's voxels: returned with that image's affine. With the affine of one of
    them but another shape, it is an array from another grid under a copied header: refused,
    as no rule can place its voxels. On another grid it is resampled by the caller (nearest
    neighbour, from its own affine); it must put lesion voxels inside the reference's field of
    view, and how much of it overlaps is logged.

    Args:
      mask: the lesion mask as stored (not reoriented).
      images: modality -> image as stored, on the same footing.
      reference: the modality whose grid the subject is sampled on.
      subject: the subject ID, for messages.
      path: the mask file, for messages.

    Raises:
      InputError: the inconsistent header, or no overlap with the reference; the message gives
        both grids.
    """
    for m, im in images.items():
        same_shape = mask.data.shape == im.data.shape
        both = np.maximum(mask.data.shape, im.data.shape)  # every voxel of either grid
        if grid_offset_mm(mask.affine, im.affine, both) > SAME_GRID_MM:
            continue
        if same_shape:
            return Image(mask.data, im.affine)  # one grid up to float noise in the headers
        raise InputError(
            subject,
            path,
            f"the lesion mask has the affine of the {m} image but another shape, so it comes "
            f"from another grid and its voxels cannot be placed. Mask: {grid_text(mask)}; "
            f"{m}: {grid_text(im)}. Write the mask on the {m} grid, or with the affine of its "
            "own grid",
        )
    return _overlapping(mask, images[reference], reference, subject, path)


def _overlapping(mask: Image, ref: Image, name: str, subject: str, path) -> Image:
    """The mask on another grid, once its lesion is seen to lie in the reference's view."""
    lesion = np.argwhere(mask.data > 0.5)
    ref_vox = nib.affines.apply_affine(np.linalg.inv(ref.affine) @ mask.affine, lesion)
    inside = np.all((ref_vox >= -0.5) & (ref_vox <= np.array(ref.data.shape) - 0.5), axis=1)
    grids = f"Mask: {grid_text(mask)}; {name}: {grid_text(ref)}"
    if len(lesion) and not inside.any():
        raise InputError(
            subject,
            path,
            f"the lesion mask does not overlap the {name} image: none of its {len(lesion)} lesion "
            f"voxels lies inside that image's field of view. {grids}. Check that the mask belongs "
            "to this subject and that its header (affine) is right",
        )
    n = len(lesion)
    share = f"{inside.sum()} of {n} lesion voxels ({inside.mean():.0%})" if n else "no lesion voxel"
    cover = coverage(mask, ref.data.shape, ref.affine)
    # a warning, not info: build worker processes pass on warnings only
    logging.warning(
        "subject %s, file %s: the lesion mask is on another grid than the %s image and is "
        "resampled onto it (nearest neighbour, from its own affine): %s inside the %s image; "
        "its field of view covers %.0f%% of the %s image's. %s",
        subject,
        path,
        name,
        share,
        name,
        100 * cover,
        name,
        grids,
    )
    return mask


def resample(source: Image, shape, affine: np.ndarray, order: int = 1) -> Image:
    """Resamples `source` onto the grid (shape, affine) in world coordinates.

    Args:
      source: the image to resample.
      shape: target array shape.
      affine: target voxel-to-world affine.
      order: spline order, 1 (linear) for images, 0 (nearest) for masks and labels.

    Returns:
      The resampled image; voxels outside the source's field of view are 0.
    """
    # target voxel -> world -> source voxel, as one affine map for ndimage.affine_transform.
    mapping = np.linalg.inv(source.affine) @ affine
    if np.allclose(mapping, np.eye(4), atol=1e-6) and tuple(shape) == source.data.shape:
        return Image(source.data, affine)
    data = ndimage.affine_transform(
        source.data,
        mapping[:3, :3],
        mapping[:3, 3],
        output_shape=tuple(int(n) for n in shape),
        order=order,
        mode="constant",
        cval=0.0,
        prefilter=False,
    )
    return Image(data.astype(np.float32), affine)


def spacing_grid(image: Image, spacing) -> tuple[tuple[int, ...], np.ndarray]:
    """Returns (shape, affine) of a grid with the given voxel size over `image`'s field of view.

    Axes keep their directions; a spacing of 0 on an axis keeps that axis as it is.
    """
    old = image.spacing
    new = np.where(np.asarray(spacing, float) > 0, np.asarray(spacing, float), old)
    extent = np.array(image.data.shape) * old
    shape = tuple(int(max(1, round(e))) for e in extent / new)
    affine = image.affine.copy()
    affine[:3, :3] = image.affine[:3, :3] / old * new
    # keep the field of view centred: the first voxel centre moves by half the size change
    shift = (new - old) / 2.0
    affine[:3, 3] = image.affine[:3, :3] @ (shift / old) + image.affine[:3, 3]
    return shape, affine


def bounding_box(mask: np.ndarray, margin: int = 0) -> tuple[slice, ...]:
    """Slices of the smallest box holding every true voxel of `mask`, grown by `margin`."""
    idx = np.nonzero(mask)
    if not idx[0].size:
        return tuple(slice(0, n) for n in mask.shape)
    return tuple(
        slice(max(0, int(i.min()) - margin), min(n, int(i.max()) + 1 + margin))
        for i, n in zip(idx, mask.shape, strict=True)
    )


def fit_to_shape(data: np.ndarray, shape, order: int = 1) -> np.ndarray:
    """Pads the leading axes to a common aspect ratio, then zooms them to `shape`.

    The array's first len(shape) axes are resized; any trailing axes (channels, slices) are kept.
    Padding (with zeros, centred) before zooming keeps anatomy undistorted.
    """
    n = len(shape)
    target = np.asarray(shape, float)
    ratio = max(data.shape[i] / target[i] for i in range(n))
    padded = [int(np.ceil(ratio * target[i])) for i in range(n)]
    sizes = zip(padded, data.shape[:n], strict=True)
    pads = [((p - s) // 2, p - s - (p - s) // 2) for p, s in sizes]
    data = np.pad(data, pads + [(0, 0)] * (data.ndim - n))
    zoom = [t / p for t, p in zip(shape, padded, strict=True)] + [1.0] * (data.ndim - n)
    out = ndimage.zoom(data, zoom, order=order, mode="nearest", grid_mode=True, prefilter=False)
    return out.astype(np.float32)


def normalize(
    data: np.ndarray, region: np.ndarray, method: str = "minmax", modality: str = ""
) -> np.ndarray:
    """Intensity normalization inside `region` (brain or non-zero voxels); zero outside.

    Args:
      data: the image array.
      region: boolean mask of voxels that define the statistics.
      method: "minmax" to [0, 1] (Ying 2025: per-sample min-max), "zscore" (mean 0, std 1) or
        "whitestripe" (Shinohara 2014: the white-matter stripe at mean 0, std 1; Shin 2021).
      modality: the image's modality name ("t1", "t1c", "t2", "flair", ...): WhiteStripe's
        rule for the white-matter mode depends on the contrast (`whitestripe.CONTRASTS`).

    Raises:
      whitestripe.StripeError: WhiteStripe found no stripe (a constant or tiny region).
      ValueError: an unknown method, or a modality WhiteStripe does not know.
    """
    if method == "whitestripe":
        return whitestripe.normalize(data, region, modality)
    values = data[region]
    out = np.zeros_like(data, dtype=np.float32)
    if values.size == 0:
        return out
    if method == "minmax":
        # robust ends (0.5 and 99.5 percentiles) so one hot voxel cannot squash the rest
        lo, hi = np.percentile(values, [0.5, 99.5])
        scaled = np.clip((data - lo) / max(hi - lo, 1e-6), 0.0, 1.0)
    elif method == "zscore":
        scaled = (data - values.mean()) / max(float(values.std()), 1e-6)
    else:
        raise ValueError(f"unknown normalization {method!r}: use one of {NORMALIZATIONS}")
    out[region] = scaled[region]
    return out
