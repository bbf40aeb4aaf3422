"""One subject -> the arrays stored in the records: aligned, cropped, normalized, resized.

Geometry before sampling (issue "data"), in this order:
1. load every needed modality (`data.channels` and `data.reference`) and reorient it to RAS+
   from its affine, so scans stored LPS and RAS hold the same anatomy on the same axes;
2. the sampling grid is the reference modality's grid, or, with `data.spacing` (x, y, z mm),
   that field of view at that spacing. For slices2d only the in-plane x, y spacing is applied:
   the slices stay the acquired axial slices (and a labels.csv slice list keeps pointing at
   them), as Gao 2020 classified the acquired slices;
3. every modality whose grid differs is interpolated once (linear), straight from its own grid
   onto the sampling grid, after checking that it covers at least half of it; the lesion mask
   with nearest neighbour, after `geometry.check_mask_grid`: on an image's grid (same shape,
   affine within 1e-3 mm) it is taken voxel for voxel, with that image's affine but another
   shape it is refused, on another grid it is resampled from its own affine, the overlap logged;
4. crop to the bounding box of the reference's non-zero region (the brain in a skull-stripped
   scan) plus `MARGIN` voxels; slices2d keeps every axial slice. With `data.roi` "mask" or
   "centre" the whole grid is kept here instead, and step 5b cuts the lesion's box;
5. normalize each channel inside that region (`data.normalize`: min-max to [0, 1] as Ying 2025,
   z-score, or WhiteStripe as Shin 2021, by each channel's contrast: `ernjax.data.whitestripe`);
5b. lesion-centred inputs (`data.roi`, issue 16 item 2): a box of `data.roi_size_mm` (x, y, z mm)
   centred on the lesion mask's bounding-box centre or on the labels.csv centre, with the grid's
   axis directions, sampled at `data.shape` (linear; the mask nearest neighbour), so the voxel
   size is roi_size_mm / shape for every subject. slices2d: in-plane only, every axial slice
   kept, the lesion slices limited to those within the box's z extent. Intensities are those
   normalized over the whole brain (step 5), whatever the box holds; the part of the box outside
   the scan is zeros (the box is not shifted, so the lesion stays at its centre). With
   `data.mask_channel` the lesion mask is appended as the last channel, "mask";
6. lay out as (D, H, W): D = z (inferior -> superior), H = y flipped (anterior at the top),
   W = x flipped (patient right on the left), so `image[d]` displays as radiologists read an
   axial slice;
7. resize with `geometry.fit_to_shape` (pad to the aspect ratio, then zoom) to `data.shape`:
   (H, W) for slices2d, keeping every slice; (D, H, W) for volumes3d (an ROI is at that shape
   already: the resize is the identity).
The 4x4 `affine` maps the final (d, h, w) index to RAS+ millimetres exactly, so Grad-CAM maps can
be written back as NIfTI over the original scan. Lesion slices come from the labels.csv slice
list (stored slice numbers of the reference file, mapped through reorientation and cropping),
else from the slices the lesion mask touches, else from the slices holding brain.
"""

import dataclasses
import logging

import numpy as np

from ernjax.data import geometry as geo
from ernjax.data import whitestripe
from ernjax.data.spec import SampleSpec
from ernjax.errors import InputError

MIN_COVERAGE = 0.5  # fraction of the reference grid every other modality must cover
MARGIN = 2  # voxels kept around the brain's bounding box
SAME_GRID_MM = geo.SAME_GRID_MM  # affines closer than this (float noise in headers): one grid
MIN_BRAIN_AREA = 0.1  # without slice list or mask: slices with >= 10% of the largest brain area


@dataclasses.dataclass
class SubjectVolume:
    """A subject on its sampling grid.

    Attributes:
      image: float32 (D, H, W, C), channels in `data.channels` order, normalized.
      mask: bool (D, H, W) lesion mask, or None without a mask.
      brain: bool (D, H, W), voxels that hold anatomy (non-zero in the reference).
      affine: 4x4, (d, h, w) index -> world mm (RAS+), for writing maps back as NIfTI.
      lesion_slices: D indices of the lesion slices (slice list > mask > slices with brain).
    """

    image: np.ndarray
    mask: np.ndarray | None
    brain: np.ndarray
    affine: np.ndarray
    lesion_slices: tuple[int, ...]


def _grid(ref: geo.Image, spec: SampleSpec) -> tuple[tuple[int, ...], np.ndarray]:
    """The subject's sampling grid: the reference grid, or it resampled to `spec.spacing`."""
    if not spec.spacing:
        return ref.data.shape, ref.affine
    sp = list(spec.spacing)
    if spec.kind == "slices2d":
        sp[2] = 0.0  # keep the acquired axial slices (and the slice list) as they are
    return geo.spacing_grid(ref, sp)


def _onto_grid(
    subject, spec: SampleSpec
) -> tuple[dict[str, geo.Image], geo.Image | None, tuple | None]:
    """Loads the modalities and the mask onto the sampling grid; maps the slice list.

    Each image is interpolated once, straight from its own grid onto the sampling grid.

    Returns:
      (modality -> image, mask or None, slice list as canonical z indices or None).
    """
    sid = subject.subject_id
    names = list(dict.fromkeys([spec.reference, *spec.channels]))
    missing = [m for m in names if m not in subject.files]
    if missing:
        raise ValueError(f"channels/reference {missing} are not in data.modalities")
    raw = {m: geo.load_image(subject.files[m], sid) for m in names}
    ref_file, slices = subject.files[spec.reference], None
    if subject.slices:
        ref = raw[spec.reference]
        slices = tuple(
            geo.canonical_slice_index(k, ref.affine, ref.data.shape, sid, ref_file)
            for k in subject.slices
        )
    imgs = {m: geo.reorient_canonical(im) for m, im in raw.items()}
    shape, affine = _grid(imgs[spec.reference], spec)
    if slices:  # reference z index -> sampling-grid z index (differs with a 3D spacing)
        to_grid = np.linalg.inv(affine) @ imgs[spec.reference].affine
        z = np.rint(to_grid[2, 2] * np.array(slices) + to_grid[2, 3]).astype(int)
        slices = tuple(int(k) for k in np.unique(np.clip(z, 0, shape[2] - 1)))
    for m, im in imgs.items():
        if im.data.shape == tuple(shape) and np.allclose(im.affine, affine, atol=SAME_GRID_MM):
            imgs[m] = geo.Image(im.data, affine)  # one grid up to float noise in the headers
            continue
        cov = 1.0 if m == spec.reference else geo.coverage(im, shape, affine)
        if cov < MIN_COVERAGE:
            raise InputError(
                sid,
                subject.files[m],
                f"fields of view cannot be aligned: this {m} image covers {cov:.0%} of the "
                f"{spec.reference} image ({ref_file.name}); at least {MIN_COVERAGE:.0%} needed",
            )
        imgs[m] = geo.resample(im, shape, affine, order=1)
    mask = None
    if subject.mask is not None:
        m = geo.load_image(subject.mask, sid, allow_empty=True)
        m = geo.check_mask_grid(m, raw, spec.reference, sid, subject.mask)
        mask = geo.resample(geo.reorient_canonical(m), shape, affine, order=0)
    return imgs, mask, slices


def _to_dhw(a: np.ndarray) -> np.ndarray:
    """(x, y, z, ...) RAS+ -> (d, h, w, ...) = (z, flipped y, flipped x): radiological slices."""
    return np.ascontiguousarray(a.transpose(2, 1, 0, *range(3, a.ndim))[:, ::-1, ::-1])


def _dhw_index(lo, n) -> np.ndarray:
    """4x4 (d, h, w, 1) -> (x, y, z, 1) on the grid before cropping `_to_dhw(a[box])`."""
    index = np.zeros((4, 4))
    index[0, 2], index[0, 3] = -1, lo[0] + n[0] - 1  # x = x0 + nx - 1 - w
    index[1, 1], index[1, 3] = -1, lo[1] + n[1] - 1  # y = y0 + ny - 1 - h
    index[2, 0], index[2, 3] = 1, lo[2]  # z = z0 + d
    index[3, 3] = 1
    return index


def load_subject(subject, spec) -> SubjectVolume:
    """Loads one subject onto its sampling grid (the steps are in the module docstring).

    Args:
      subject: a `cohort.Subject`.
      spec: the SampleSpec, or `config.data` (read through `SampleSpec.from_config`); reads
        kind, channels, reference, spacing, shape, normalize.

    Returns:
      The SubjectVolume.

    Raises:
      InputError: unreadable or invalid images, fields of view that cannot be aligned, a lesion
        mask with an image's affine but another shape or outside the reference's field of
        view, an empty lesion mask where the mask is the source of the lesion slices or of the
        ROI's centre; for an ROI: no mask or no centre, a centre outside the reference's field
        of view, no lesion slice inside the box (slices2d).
      ValueError: a configuration that does not fit (unknown channel, wrong shape length).
    """
    spec = SampleSpec.from_config(spec)
    vol = load_on_grid(subject, spec)
    return _resize(vol.image, vol.brain, vol.mask, vol.affine, vol.lesion_slices, spec)


def load_on_grid(subject, spec) -> SubjectVolume:
    """Steps 1-6 of the module docstring: a subject on its sampling grid, before resizing.

    Voxels keep their physical size (the lengths of the affine's first three columns, in mm,
    along d, h and w), which features in physical units need; `load_subject` resizes this
    volume to `spec.shape`. For slices2d the D axis is never resized, so `lesion_slices` are the
    records' slice numbers.

    Args and Raises: as `load_subject` (`spec.shape` is not read).
    """
    spec = SampleSpec.from_config(spec)
    imgs, mask, slices = _onto_grid(subject, spec)
    _check_needs_mask(subject, spec)
    ref = imgs[spec.reference]
    box = _brain_box(ref.data != 0, spec)
    lo = [b.start for b in box]
    brain = ref.data[box] != 0
    # normalized over the whole brain, also for an ROI: its statistics then do not depend on
    # where the box falls (a box around a bright lesion would otherwise dim the rest)
    chans = [_normalized(subject, m, imgs[m].data[box], brain, spec) for m in spec.channels]
    image, lesion = np.stack(chans, -1), None if mask is None else mask.data[box] > 0.5
    grid_affine = ref.affine @ _box_index(lo)
    # the ROI's centre first: an empty mask is then reported as the centre's problem
    centre = None if spec.roi == "brain" else roi_centre(subject, spec, lesion, grid_affine)
    found = _lesion_slices(
        subject, slices, None if lesion is None else _to_dhw(lesion), _to_dhw(brain), lo[2]
    )
    if spec.roi != "brain":
        image, brain, lesion, grid_affine, zrange = _crop_roi(
            subject, spec, centre, (image, brain, lesion), grid_affine
        )
        if spec.kind == "slices2d":  # the ROI keeps every slice: the same slice numbers
            found = _in_box(subject, spec, found, zrange, slices)
        else:  # the ROI's slices with lesion, else with brain (no check: the volume is one)
            touched = (lesion if lesion is not None and lesion.any() else brain).any(axis=(0, 1))
            found = np.nonzero(touched)[0]
    if spec.mask_channel:
        image = np.concatenate([image, lesion[..., None].astype(np.float32)], -1)
    image, brain = _to_dhw(image), _to_dhw(brain)
    lesion = None if lesion is None else _to_dhw(lesion)
    affine = grid_affine @ _dhw_index((0, 0, 0), brain.shape[::-1])
    return SubjectVolume(image, lesion, brain, affine, tuple(int(k) for k in found))


def _normalized(subject, modality: str, data, brain, spec: SampleSpec) -> np.ndarray:
    """One channel normalized inside the brain (step 5).

    Raises:
      InputError: WhiteStripe found no white-matter stripe in it (names the subject and file).
    """
    try:
        return geo.normalize(data, brain, spec.normalize, modality)
    except whitestripe.StripeError as e:
        raise InputError(subject.subject_id, subject.files.get(modality, ""), str(e)) from e


def _brain_box(nonzero: np.ndarray, spec: SampleSpec) -> tuple[slice, ...]:
    """The part of the grid kept before resizing or cutting the ROI (x, y, z slices).

    roi "brain": the bounding box of the brain plus MARGIN voxels, every slice for slices2d.
    An ROI: the whole grid (its box may reach past the brain, even past the scan).
    """
    if spec.roi != "brain":
        return tuple(slice(0, n) for n in nonzero.shape)
    box = geo.bounding_box(nonzero, margin=MARGIN)
    if spec.kind == "slices2d":
        box = (box[0], box[1], slice(0, nonzero.shape[2]))
    return box


def _in_box(subject, spec, found, zrange, slices) -> np.ndarray:
    """The lesion slices within the ROI box's z extent (slices2d: the box's own slices).

    Raises:
      InputError: none is (a slice list or mask far from the given centre).
    """
    kept = found[(found >= zrange[0]) & (found <= zrange[1])]
    if not kept.size:
        if slices is not None:
            source, path = "the labels.csv slice list", _labels_csv(subject, "labels.csv")
        elif subject.mask is not None:
            source, path = "the lesion mask", subject.mask
        else:
            source, path = "the slices with brain", subject.files[spec.reference]
        raise InputError(
            subject.subject_id,
            path,
            f"none of the lesion slices of {source} lies inside the ROI box (axial slices "
            f"{zrange[0]}..{zrange[1]}, data.roi_size_mm {list(spec.roi_size_mm)} around the "
            "lesion centre); check the centre, or enlarge the box",
        )
    return kept


def _box_index(lo) -> np.ndarray:
    """4x4 index in a box starting at voxel `lo` -> index on the whole grid."""
    m = np.eye(4)
    m[:3, 3] = lo
    return m


def _check_needs_mask(subject, spec: SampleSpec) -> None:
    """`data.roi="mask"` and `data.mask_channel` need the subject's lesion mask."""
    needs = [
        w
        for w, on in (
            ("data.roi='mask'", spec.roi == "mask"),
            ("data.mask_channel", spec.mask_channel),
        )
        if on
    ]
    if needs and subject.mask is None:
        verb = "need" if len(needs) > 1 else "needs"
        raise InputError(
            subject.subject_id,
            next(iter(subject.files.values())).parent,
            f"{' and '.join(needs)} {verb} a lesion mask, and this subject has none (set "
            "data.mask_pattern, for a BIDS cohort data.bids.mask; for predict, pass --mask)",
        )


def roi_centre(subject, spec: SampleSpec, lesion, affine: np.ndarray) -> np.ndarray:
    """The ROI's centre in world mm (RAS+): the mask's bounding-box centre, or labels.csv's.

    Args:
      subject: the `cohort.Subject` (its `centre` for roi "centre").
      spec: the SampleSpec.
      lesion: bool (x, y, z) lesion mask on the grid of `affine`, or None.
      affine: the grid's voxel -> world affine.

    Raises:
      InputError: no centre for the subject, or an empty lesion mask.
    """
    sid = subject.subject_id
    if spec.roi == "centre":
        if subject.centre is None:
            where = (
                f"labels.csv column {spec.centre_column!r}"
                if spec.centre_column
                else ("data.centre_column (or --centre=x,y,z for predict)")
            )
            raise InputError(
                sid,
                _labels_csv(subject),
                f"data.roi='centre' needs a lesion centre: none in {where}",
            )
        return np.asarray(subject.centre, float)
    if not lesion.any():
        raise InputError(
            sid,
            subject.mask,
            "the lesion mask is empty (no lesion voxel inside the image), and data.roi='mask' "
            "centres the input on it; fix the mask, or use data.roi='centre'",
        )
    idx = np.argwhere(lesion)
    mid = (idx.min(0) + idx.max(0)) / 2.0  # the bounding box's centre, in voxels
    return affine[:3, :3] @ mid + affine[:3, 3]


def _labels_csv(subject, otherwise="--centre"):
    """The cohort's labels.csv (beside the subject's folder), for messages; else `otherwise`.

    A BIDS cohort's is participants.tsv, beside the participant's folder. A new patient's
    centre (predict) comes from the `--centre` flag, not from a labels.csv.
    """
    pid = subject.metadata.get("participant_id")
    for folder in next(iter(subject.files.values())).parents:
        if folder.name == subject.subject_id and (folder.parent / "labels.csv").is_file():
            return folder.parent / "labels.csv"
        if folder.name == pid and (folder.parent / "participants.tsv").is_file():
            return folder.parent / "participants.tsv"
    return otherwise


def roi_grid(spec: SampleSpec, centre, shape, affine: np.ndarray):
    """The ROI grid (x, y, z order): a box of `roi_size_mm` centred on `centre`.

    Its axes have the directions of the grid (shape, affine) it is cut from. volumes3d: the box
    is sampled at `spec.shape` = (D, H, W), so the voxel size is roi_size_mm / (W, H, D) along
    x, y, z. slices2d: in-plane roi_size_mm[:2] / (W, H); along z the grid's own slices, all of
    them (so slice numbers stay the scan's), of which those whose centres lie within
    roi_size_mm[2] / 2 of the centre (at least the nearest one) are the box's.

    Args:
      spec: the SampleSpec.
      centre: the box's centre, world mm.
      shape: the shape (x, y, z) of the grid the box is cut from.
      affine: that grid's voxel -> world affine.

    Returns:
      (roi shape (x, y, z), roi affine, (first, last) z index of the box's slices).

    Raises:
      ValueError: `spec.shape` does not fit `spec.kind`.
    """
    need = 2 if spec.kind == "slices2d" else 3
    if len(spec.shape) != need:
        raise ValueError(f"data.shape {spec.shape} does not fit kind {spec.kind!r}")
    size = np.asarray(spec.roi_size_mm, float)
    voxel = np.linalg.inv(affine)[:3] @ np.r_[centre, 1.0]  # the centre on the grid
    cols = affine[:3, :3] / np.sqrt((affine[:3, :3] ** 2).sum(0))  # unit axis directions
    n = np.array(spec.shape[::-1], float)  # (W, H) or (W, H, D): along x, y (, z)
    if spec.kind == "volumes3d":
        a = cols * (size / n)
        offset, zrange = (n - 1) / 2.0, (0, int(n[2]) - 1)
    else:
        half = size[2] / 2.0 / float(np.linalg.norm(affine[:3, 2]))  # in slices
        top = shape[2] - 1
        lo = int(np.clip(np.ceil(voxel[2] - half - 1e-6), 0, top))
        hi = int(np.clip(np.floor(voxel[2] + half + 1e-6), 0, top))
        if hi < lo:  # a box thinner than a slice: the nearest slice
            lo = hi = int(np.clip(np.rint(voxel[2]), 0, top))
        n, zrange = np.r_[n, shape[2]], (lo, hi)
        a = np.c_[cols[:, :2] * (size[:2] / n[:2]), affine[:3, 2]]
        # ROI slice k is the grid's slice k, exactly (its plane, not only its number)
        offset = np.r_[(n[:2] - 1) / 2.0, voxel[2]]
    roi = np.eye(4)
    roi[:3, :3] = a
    roi[:3, 3] = centre - a @ offset
    return tuple(int(k) for k in n), roi, zrange


def _crop_roi(subject, spec, centre, arrays, affine):
    """Resamples the subject onto its ROI grid, a box around `centre` (world mm).

    Args:
      subject: the `cohort.Subject`, for messages.
      spec: the SampleSpec.
      centre: the box's centre (`roi_centre`).
      arrays: (image (x, y, z, C), brain, lesion or None) on the grid of `affine`.
      affine: their voxel -> world affine.

    Returns:
      (image, brain, lesion, ROI affine, (first, last) z index of the box's slices).

    Raises:
      InputError: the centre lies outside the scan's field of view.
    """
    image, brain, lesion = arrays
    shape = brain.shape
    voxel = np.linalg.inv(affine)[:3] @ np.r_[centre, 1.0]
    if np.any(voxel < -0.5) or np.any(voxel > np.array(shape) - 0.5):
        ref, xyz = geo.Image(brain, affine), ", ".join(f"{v:.4g}" for v in centre)
        raise InputError(
            subject.subject_id,
            _labels_csv(subject) if spec.roi == "centre" else subject.mask,
            f"the lesion centre ({xyz}) mm lies outside the {spec.reference} "
            f"image's field of view ({geo.grid_text(ref)}); the centre is x;y;z in world mm, "
            "RAS+ (as a viewer shows it, not voxel indices)",
        )
    roi_shape, roi, zrange = roi_grid(spec, centre, shape, affine)
    if geo.coverage(geo.Image(brain, affine), roi_shape, roi) < 1.0:
        # a lesion near the edge of the field of view: the box is not moved (the lesion stays
        # at its centre); the part outside the scan is zeros
        logging.info("%s: the ROI box extends past the scan; zeros there", subject.subject_id)

    def onto(a, order):
        return geo.resample(geo.Image(a.astype(np.float32), affine), roi_shape, roi, order).data

    image = np.stack([onto(image[..., c], 1) for c in range(image.shape[-1])], -1)
    lesion = None if lesion is None else onto(lesion, 0) > 0.5
    return image, onto(brain, 0) > 0.5, lesion, roi, zrange


def _lesion_slices(subject, slices, lesion, brain, z0) -> np.ndarray:
    """D indices before resizing: slice list > slices the mask touches > slices with brain."""
    depth = brain.shape[0]
    if slices is not None:
        return np.array([k - z0 for k in slices if 0 <= k - z0 < depth], int)
    if lesion is not None:
        ks = np.nonzero(lesion.any(axis=(1, 2)))[0]
        if not ks.size:
            raise InputError(
                subject.subject_id,
                subject.mask,
                "the lesion mask is empty (no lesion voxel inside the image), and it is the only "
                "source of lesion slices; fix the mask or give a slice list",
            )
        return ks
    area = brain.sum(axis=(1, 2))
    return np.nonzero(area >= MIN_BRAIN_AREA * area.max())[0]


def _fit(a: np.ndarray, shape, axes, order: int) -> np.ndarray:
    """Resizes `axes` of `a` to `shape` with geometry.fit_to_shape (pad to aspect, zoom)."""
    lead = np.moveaxis(a.astype(np.float32, copy=False), axes, range(len(axes)))
    rest = lead.shape[len(axes) :]
    flat = lead.reshape(*lead.shape[: len(axes)], -1)
    # one 2D/3D zoom per slice/channel: a zoom over the kept axes too interpolates between
    # 2**ndim neighbours for nothing (2-4x slower on a 4-channel 1 mm BraTS volume)
    out = np.stack(
        [geo.fit_to_shape(flat[..., k], shape, order=order) for k in range(flat.shape[-1])], -1
    )
    return np.moveaxis(out.reshape(*shape, *rest), range(len(axes)), axes)


def _fit_index(sizes, shape, axes) -> np.ndarray:
    """4x4 (output index) -> (input index) of `_fit`: the arithmetic of fit_to_shape."""
    s, t = np.asarray(sizes, float), np.asarray(shape, float)
    padded = np.array([np.ceil(max(s / t) * ti) for ti in t])
    scale = padded / t
    offset = 0.5 * scale - 0.5 - (padded - s) // 2  # ndimage.zoom with grid_mode=True
    m = np.eye(4)
    for ax, sc, off in zip(axes, scale, offset, strict=True):
        m[ax, ax], m[ax, 3] = sc, off
    return m


def _resize(image, brain, lesion, affine, found, spec: SampleSpec) -> SubjectVolume:
    """Resizes (D, H, W, ...) to spec.shape, (H, W) in-plane for slices2d, else (D, H, W)."""
    shape = spec.shape
    axes = (1, 2) if spec.kind == "slices2d" else (0, 1, 2)
    if len(shape) != len(axes):
        raise ValueError(f"data.shape {shape} does not fit kind {spec.kind!r}")
    index = _fit_index([brain.shape[a] for a in axes], shape, axes)
    image = _fit(image, shape, axes, order=1)
    brain = _fit(brain, shape, axes, order=0) > 0.5
    lesion = None if lesion is None else _fit(lesion, shape, axes, order=0) > 0.5
    # input slice k sits at output (k - offset) / scale along D (identity for slices2d)
    d = np.rint((np.asarray(found, float) - index[0, 3]) / index[0, 0]).astype(int)
    d = np.unique(np.clip(d, 0, image.shape[0] - 1)) if d.size else d
    return SubjectVolume(image, lesion, brain, affine @ index, tuple(int(k) for k in d))


def _label(subject) -> int:
    """The class index, -1 for an unlabeled subject (prediction only; records need labels)."""
    return -1 if subject.label is None else int(subject.label)


def slice_examples(subject, spec) -> list[dict]:
    """The slices2d examples of one subject, one per lesion slice.

    Args:
      subject: a `cohort.Subject`.
      spec: the SampleSpec (kind "slices2d"), or `config.data`.

    Returns:
      `spec.example` dicts {"image": float16 (H, W, C), "label": int, "subject_id": str,
      "slice": int}, where "slice" is the D index: the slice number along the canonical
      inferior->superior axis of the reference scan (slices2d neither crops nor resamples it).
    """
    spec = SampleSpec.from_config(spec)
    vol = load_subject(subject, spec)
    image = vol.image.astype(np.float16)  # once for the volume, not once per slice
    return [
        spec.example(image[k], _label(subject), subject.subject_id, k) for k in vol.lesion_slices
    ]


def volume_example(subject, spec) -> dict:
    """The volumes3d example of one subject.

    Args:
      subject: a `cohort.Subject`.
      spec: the SampleSpec (kind "volumes3d"), or `config.data`.

    Returns:
      The `spec.example` dict {"image": float16 (D, H, W, C), "label": int, "subject_id": str,
      "affine": float32 4x4}.
    """
    spec = SampleSpec.from_config(spec)
    vol = load_subject(subject, spec)
    return spec.example(vol.image, _label(subject), subject.subject_id, vol.affine)


def examples(subject, spec: SampleSpec) -> list[dict]:
    """The examples of one subject as the records hold them: one per lesion slice, or its volume.

    Raises:
      InputError: the subject's images cannot be used (see `load_subject`).
    """
    if spec.kind == "slices2d":
        return slice_examples(subject, spec)
    return [volume_example(subject, spec)]
