"""ernjax.data.samples: geometry before sampling (orientation, grids, crop, layout, resize, affine),
lesion slices, float16 storage, bad input naming the subject and the file, and real cohorts."""

import functools
import sys
from pathlib import Path

import nibabel as nib
import nibabel.processing
import numpy as np
import pytest
from scipy import ndimage

from ernjax.data import geometry as geo
from ernjax.data import samples
from ernjax.data.cohort import Subject, find_subjects
from ernjax.data.spec import SampleSpec
from ernjax.defaults import base_config
from ernjax.errors import InputError

MODS = ("t1", "t2", "t1c")
SHAPE = (20, 24, 14)  # stored (x, y, z) of the synthetic scans
RAS = np.diag([1.2, 1.0, 2.5, 1.0]) + np.array(
    [[0, 0, 0, -12], [0, 0, 0, -14], [0, 0, 0, -9], [0] * 4]
)


def data_cfg(kind="slices2d", **overrides):
    d = base_config().data
    d.kind = kind
    d.modalities = {m: f"*_{m}.nii.gz" for m in MODS}
    d.channels, d.reference = MODS, "t1"
    d.shape = (16, 16) if kind == "slices2d" else (10, 16, 16)
    d.update(overrides)
    return SampleSpec.from_config(d)


def head(shape=SHAPE, affine=RAS, contrast=1.0) -> np.ndarray:
    """An ellipsoid 'brain' filling part of the grid, with a bright off-centre blob, in world mm."""
    ijk = np.stack(np.meshgrid(*[np.arange(n) for n in shape], indexing="ij"), -1)
    xyz = ijk @ affine[:3, :3].T + affine[:3, 3]
    r = ((xyz - [0.5, 1.0, 2.0]) / [9.0, 10.0, 12.0]) ** 2
    brain = r.sum(-1) < 1
    blob = np.exp(-(((xyz - [4.0, -3.0, 5.0]) / [2.0, 2.0, 3.0]) ** 2).sum(-1))
    return (brain * (100 + contrast * 40 * xyz[..., 0] / 9 + 300 * blob)).astype(np.float32)


def write(path: Path, data, affine=RAS) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(np.asarray(data, np.float32), affine), str(path))
    return path


def lps(data, affine):
    """The same image stored LPS: x and y array axes reversed, the affine compensating."""
    n = np.array(data.shape)
    flip = np.diag([-1.0, -1.0, 1.0, 1.0])
    flip[:2, 3] = n[:2] - 1
    return data[::-1, ::-1].copy(), affine @ flip


def make_subject(root: Path, sid="s1", *, mask=None, slices=None, store=None) -> Subject:
    """t1/t2/t1c with different contrasts on RAS; `store` maps (data, affine) before writing."""
    files = {}
    for i, m in enumerate(MODS):
        data, aff = head(contrast=1.0 - i), RAS
        if store:
            data, aff = store(data, aff)
        files[m] = write(root / sid / f"{sid}_{m}.nii.gz", data, aff)
    mask_file = None
    if mask is not None:
        data, aff = (mask, RAS) if not store else store(mask.astype(np.float32), RAS)
        mask_file = write(root / sid / f"{sid}_mask.nii.gz", data, aff)
    return Subject(sid, 1, "recurrence", files, mask_file, slices, {})


def nibabel_view(path, vol) -> np.ndarray:
    """The file resampled by nibabel onto the output grid (vol.affine): the same anatomy."""
    img = nib.load(str(path))
    grid = (vol.image.shape[:3], vol.affine)
    return np.asarray(nib.processing.resample_from_to(img, grid, order=1).dataobj)


def corr(a, b, where) -> float:
    return float(np.corrcoef(a[where], b[where])[0, 1])


# --- geometry ----------------------------------------


def slope(contrast: float) -> np.ndarray:
    return np.array([3.0, 5.0 * contrast, 7.0 - 2.0 * contrast**2])  # independent for 1, 0, -1


def ramps(shape=SHAPE, affine=RAS, contrast=1.0, box=True) -> np.ndarray:
    """A linear ramp in world mm (a different slope per contrast) inside an off-centre box."""
    ijk = np.stack(np.meshgrid(*[np.arange(n) for n in shape], indexing="ij"), -1)
    xyz = ijk @ affine[:3, :3].T + affine[:3, 3]
    inside = np.all((xyz > [-9, -11, -6]) & (xyz < [7, 8, 20]), axis=-1) if box else 1
    return (inside * (200 + xyz @ slope(contrast))).astype(np.float32)


def brain_centre(path, spacing) -> np.ndarray:
    """Mean world position of the non-zero voxels (after geometry's resampling to `spacing`)."""
    img = geo.reorient_canonical(geo.load_image(path))
    if spacing:
        img = geo.resample(img, *geo.spacing_grid(img, spacing))
    return nib.affines.apply_affine(img.affine, np.argwhere(img.data != 0)).mean(0)


@pytest.mark.parametrize(
    "kind, spacing", [("slices2d", ()), ("volumes3d", ()), ("volumes3d", (2.0, 1.5, 3.0))]
)
def test_affine_maps_output_index_to_the_same_anatomy(tmp_path, kind, spacing, monkeypatch):
    # a resampled box edge would mix ramp and background (partial volume) and bias the z-score
    # statistics, so with `spacing` the ramp fills the grid (no crop offset: the others test it)
    box = not spacing
    monkeypatch.setattr(sys.modules[__name__], "head", functools.partial(ramps, box=box))
    s = make_subject(tmp_path, store=lps)
    vol = samples.load_subject(s, data_cfg(kind, spacing=spacing, normalize="zscore"))
    inner = ndimage.binary_erosion(vol.brain, iterations=2)
    assert inner.sum() > 30
    world = np.argwhere(inner) @ vol.affine[:3, :3].T + vol.affine[:3, 3]
    # z-scored ramp: out = (a.world - a.mu) / sd, mu = mean world position of the brain voxels
    a_mu = []
    for c in range(3):
        a = slope(1.0 - c)
        fit = np.polyfit(world @ a, vol.image[..., c][inner], 1)
        assert np.abs(np.polyval(fit, world @ a) - vol.image[..., c][inner]).max() < 1e-3
        a_mu.append(-fit[1] / fit[0])
    mu = np.linalg.solve([slope(1.0 - c) for c in range(3)], a_mu)
    assert np.abs(mu - brain_centre(s.files["t1"], spacing)).max() < 1e-3
    # radiological layout: d -> superior, h -> posterior, w -> patient left
    assert np.sign(np.diag(vol.affine[:3, :3][::-1])).tolist() == [1, -1, -1]


def test_bright_spot_stays_at_its_world_position(tmp_path):
    s = make_subject(tmp_path, store=lps)
    vol = samples.load_subject(s, data_cfg("volumes3d", spacing=(2.0, 2.0, 2.0)))
    spot = np.argwhere(vol.image[..., 0] > 0.8).mean(0)
    world = vol.affine[:3, :3] @ spot + vol.affine[:3, 3]
    assert np.abs(world - [4.0, -3.0, 5.0]).max() < 2.0


def test_lps_and_ras_storage_give_identical_arrays(tmp_path):
    mask = np.zeros(SHAPE)
    mask[8:12, 10:14, 6:9] = 1
    a = samples.load_subject(make_subject(tmp_path / "a", mask=mask), data_cfg("volumes3d"))
    b = samples.load_subject(
        make_subject(tmp_path / "b", mask=mask, store=lps), data_cfg("volumes3d")
    )
    np.testing.assert_allclose(a.image, b.image, atol=1e-6)
    np.testing.assert_allclose(a.affine, b.affine, atol=1e-9)
    assert (a.mask == b.mask).all() and (a.brain == b.brain).all()
    assert a.lesion_slices == b.lesion_slices and a.mask.any()


def test_modalities_on_other_grids_are_resampled_onto_the_reference(tmp_path):
    s = make_subject(tmp_path)
    other = np.diag([1.5, 1.5, 1.6, 1.0])
    other[:3, 3] = [-14, -16, -11]
    other_shape = (18, 21, 22)
    stored, aff = lps(head(other_shape, other, contrast=0.0), other)
    s.files["t2"] = write(s.files["t2"], stored, aff)
    vol = samples.load_subject(s, data_cfg("volumes3d"))
    same = samples.load_subject(make_subject(tmp_path / "same"), data_cfg("volumes3d"))
    # the same anatomy as when t2 had been acquired on the t1 grid, up to interpolation (and
    # min-max ends moved by partial-volume voxels at the edge)
    inner = ndimage.binary_erosion(vol.brain, iterations=1)
    t2, t2_same = vol.image[..., 1], same.image[..., 1]
    assert corr(t2, t2_same, inner) > 0.95


def test_spacing_in_plane_only_for_slices(tmp_path):
    s = make_subject(tmp_path)
    plain = samples.load_subject(s, data_cfg("slices2d", shape=(20, 20)))
    spaced = samples.load_subject(s, data_cfg("slices2d", shape=(20, 20), spacing=(2.0, 2.0, 1.0)))
    assert plain.image.shape[0] == spaced.image.shape[0] == SHAPE[2]  # the acquired slices
    assert plain.affine[2, 0] == spaced.affine[2, 0] == RAS[2, 2]


# --- lesion slices ----------------------------------------


def mark_slice(data: np.ndarray, k: int) -> np.ndarray:
    data = data.copy()
    data[6:10, 8:12, k] = 900.0
    return data


def test_slice_list_maps_through_reorientation(tmp_path):
    k = 4  # stored index; the file is stored superior -> inferior
    flip_z = np.diag([1.0, 1.0, -1.0, 1.0])
    flip_z[2, 3] = SHAPE[2] - 1

    def store(data, aff):
        return mark_slice(data[:, :, ::-1], k), aff @ flip_z

    s = make_subject(tmp_path, slices=(k,), store=store)
    vol = samples.load_subject(s, data_cfg("slices2d"))
    (d,) = vol.lesion_slices
    assert d == SHAPE[2] - 1 - k
    assert np.argmax(vol.image[..., 0].max(axis=(1, 2)) >= 1.0) == d  # the marked slice
    z_world = (RAS @ flip_z)[2] @ [0, 0, k, 1]
    for spacing in ((), (1.0, 1.0, 1.1)):
        vol3 = samples.load_subject(s, data_cfg("volumes3d", spacing=spacing))
        (d3,) = vol3.lesion_slices
        assert abs(vol3.affine[2] @ [d3, 0, 0, 1] - z_world) <= abs(vol3.affine[2, 0]) / 2 + 1e-6


def test_lesion_slices_from_the_mask_and_from_the_brain(tmp_path):
    mask = np.zeros(SHAPE)
    mask[8:12, 10:14, 6:9] = 1
    with_mask = samples.load_subject(make_subject(tmp_path / "a", mask=mask), data_cfg())
    assert with_mask.lesion_slices == (6, 7, 8) and with_mask.mask.shape == (14, 16, 16)
    brain = samples.load_subject(make_subject(tmp_path / "b"), data_cfg())
    area = (head() > 0).sum(axis=(0, 1))
    assert brain.lesion_slices == tuple(np.nonzero(area >= 0.1 * area.max())[0])


def test_examples_are_float16_without_visible_loss(tmp_path):
    mask = np.zeros(SHAPE)
    mask[8:12, 10:14, 6:9] = 1
    s = make_subject(tmp_path, mask=mask)
    d = data_cfg()
    vol = samples.load_subject(s, d)
    exs = samples.slice_examples(s, d)
    assert [e["slice"] for e in exs] == [6, 7, 8]
    for e in exs:
        assert e["image"].dtype == np.float16 and e["image"].shape == (16, 16, 3)
        assert e["label"] == 1 and e["subject_id"] == "s1"
        assert np.abs(e["image"].astype(np.float32) - vol.image[e["slice"]]).max() < 1e-3
    ex = samples.volume_example(s, data_cfg("volumes3d"))
    assert ex["image"].dtype == np.float16 and ex["affine"].dtype == np.float32
    assert 0.0 <= ex["image"].min() and ex["image"].max() <= 1.0


def test_zscore_normalization(tmp_path):
    vol = samples.load_subject(make_subject(tmp_path), data_cfg("volumes3d", normalize="zscore"))
    inside = vol.image[vol.brain]
    assert abs(inside.mean()) < 0.2 and 0.7 < inside.std() < 1.3


# --- bad input ----------------------------------------


def fails(s: Subject, file: Path, match: str, kind="slices2d"):
    with pytest.raises(InputError, match=match) as err:
        samples.load_subject(s, data_cfg(kind))
    assert err.value.subject == s.subject_id and f"subject {s.subject_id}" in str(err.value)
    assert err.value.path == str(file) and file.name in str(err.value)


@pytest.mark.parametrize("value", [np.nan, np.inf])
def test_nan_or_inf_voxels(tmp_path, value):
    s = make_subject(tmp_path)
    data = head()
    data[3, 4, 5] = value
    write(s.files["t2"], data)
    fails(s, s.files["t2"], "NaN or Inf")


def test_all_zero_volume(tmp_path):
    s = make_subject(tmp_path)
    write(s.files["t1c"], np.zeros(SHAPE))
    fails(s, s.files["t1c"], "all zeros")


def test_truncated_file(tmp_path):
    s = make_subject(tmp_path)
    whole = s.files["t2"].read_bytes()
    s.files["t2"].write_bytes(whole[: len(whole) // 2])  # a copy that stopped half way
    fails(s, s.files["t2"], "cannot be read")


def test_empty_mask(tmp_path):
    s = make_subject(tmp_path, mask=np.zeros(SHAPE))
    fails(s, s.mask, "lesion mask is empty")
    # with a slice list the mask is not the source of lesion slices
    listed = Subject("s1", 1, "recurrence", s.files, s.mask, (5,), {})
    assert samples.load_subject(listed, data_cfg()).lesion_slices == (5,)


def test_fields_of_view_that_cannot_be_aligned(tmp_path):
    s = make_subject(tmp_path)
    moved = RAS.copy()
    moved[:3, 3] += [0, 0, 200.0]
    write(s.files["t1c"], head(), moved)
    fails(s, s.files["t1c"], "fields of view cannot be aligned", kind="volumes3d")


def test_configuration_errors(tmp_path):
    s = make_subject(tmp_path)
    with pytest.raises(ValueError, match="flair"):
        samples.load_subject(s, data_cfg(channels=("t1", "flair")))
    with pytest.raises(ValueError, match="does not fit"):
        samples.load_subject(s, data_cfg("volumes3d", shape=(16, 16)))


# --- real data ----------------------------------------


def test_brats2023_orientation(shared_data, tmp_path):
    d = data_cfg("volumes3d", channels=("t1n",), reference="t1n", shape=(40, 48, 48))
    folder = shared_data / "brats2023_gli_met"
    gli, met = find_subjects(folder, {"t1n": "*-t1n.nii.gz"}, classes=("GLI", "MET")).subjects
    assert nib.aff2axcodes(nib.load(gli.files["t1n"]).affine) == ("L", "P", "S")
    assert nib.aff2axcodes(nib.load(met.files["t1n"]).affine) == ("R", "A", "S")
    a, b = samples.load_subject(gli, d), samples.load_subject(met, d)
    # GLI re-stored as RAS (array and affine flipped together) loads to the same arrays
    img = nib.load(gli.files["t1n"])
    flipped = write(tmp_path / "gli_ras.nii.gz", *lps(np.asarray(img.dataobj), img.affine))
    assert nib.aff2axcodes(nib.load(flipped).affine) == ("R", "A", "S")
    c = samples.load_subject(Subject(gli.subject_id, 0, "GLI", {"t1n": flipped}, None, None, {}), d)
    np.testing.assert_allclose(a.image, c.image, atol=1e-6)
    np.testing.assert_allclose(a.affine, c.affine, atol=1e-4)
    # the two real cases (stored LPS and RAS) now overlap anatomically: front to front
    dice = lambda p, q: 2 * (p & q).sum() / (p.sum() + q.sum())  # noqa: E731
    assert dice(a.brain, b.brain) > dice(a.brain, b.brain[:, ::-1]) + 0.05
    assert dice(a.brain, b.brain) > dice(a.brain, b.brain[::-1]) + 0.05


def test_tcga_lgg_slices_from_mask(shared_data):
    mods = {"t1": "*_t1.nii.gz", "flair": "*_flair.nii.gz", "t1c": "*_t1c.nii.gz"}
    c = find_subjects(
        shared_data / "tcga_lgg_grade_2d",
        mods,
        mask_pattern="*_mask.nii.gz",
        classes=("G2", "G3"),
        on_error="skip",
    )
    d = data_cfg("slices2d", modalities=mods, channels=("t1", "flair", "t1c"), shape=(64, 64))
    for s in c.subjects[:2]:
        mask = nib.as_closest_canonical(nib.load(s.mask)).get_fdata() > 0
        exs = samples.slice_examples(s, d)
        assert [e["slice"] for e in exs] == np.nonzero(mask.any(axis=(0, 1)))[0].tolist()
        assert exs[0]["image"].shape == (64, 64, 3) and exs[0]["label"] == s.label


def test_brats2018_2mm_volume(shared_data):
    mods = {m: f"*_{m}.nii.gz" for m in ("t1", "t1c", "t2")}
    c = find_subjects(shared_data / "brats2018_hgg_lgg_2mm", mods, classes=("HGG", "LGG"))
    s = c.subjects[0]
    d = data_cfg("volumes3d", modalities=mods, channels=("t1", "t1c", "t2"), shape=(32, 40, 40))
    ex = samples.volume_example(s, d)
    assert ex["image"].shape == (32, 40, 40, 3) and ex["label"] == s.label
    vol = samples.load_subject(s, d)
    for ch, m in enumerate(("t1", "t1c", "t2")):
        assert corr(nibabel_view(s.files[m], vol), vol.image[..., ch], vol.brain) > 0.95
