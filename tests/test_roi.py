"""Lesion-centred inputs (config.data.roi): the ROI box's geometry and affine, the mask channel,
the centre from labels.csv, bad input, and a tiny ROI run through predict and Grad-CAM."""

import csv
import functools
import importlib.util
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import test_samples
from scipy import ndimage
from test_samples import MODS, RAS, SHAPE, data_cfg, lps, make_subject, ramps, slope

from ernjax import inference
from ernjax.data import cohort, pipeline, samples
from ernjax.data.cohort import Subject
from ernjax.errors import InputError
from ernjax.evaluate import predictions
from ernjax.train import loop

REPO = Path(__file__).resolve().parents[1]
# The lesion: voxels x 12..15, y 10..13, z 6..8 of the RAS grid (1.2 x 1.0 x 2.5 mm).
LESION = (slice(12, 16), slice(10, 14), slice(6, 9))
# Its bounding box's centre: voxel (13.5, 11.5, 7), by hand in world mm through RAS.
CENTRE = np.array([13.5 * 1.2 - 12, 11.5 * 1.0 - 14, 7 * 2.5 - 9])  # (4.2, -2.5, 8.5)


def lesion_mask() -> np.ndarray:
    m = np.zeros(SHAPE, np.float32)
    m[LESION] = 1
    return m


def roi_cfg(kind="volumes3d", **overrides):
    shape = (12, 12, 12) if kind == "volumes3d" else (12, 12)
    settings = dict(roi="mask", roi_size_mm=(24.0, 24.0, 24.0), shape=shape)
    return data_cfg(kind, **{**settings, **overrides})


def test_hand_computed_box_volumes3d(tmp_path):
    vol = samples.load_subject(make_subject(tmp_path, mask=lesion_mask()), roi_cfg())
    assert vol.image.shape == (12, 12, 12, 3)
    # spacing = roi_size_mm / shape = 2 mm; radiological layout (d: +z, h: -y, w: -x)
    np.testing.assert_allclose(vol.affine[:3, :3], [[0, 0, -2], [0, -2, 0], [2, 0, 0]])
    # voxel (0, 0, 0): the box's corner, 11 mm (5.5 voxels of 2 mm) from the centre on each axis
    np.testing.assert_allclose(vol.affine[:3, 3], CENTRE + [11, 11, -11], atol=1e-5)
    # the ROI's centre index maps to the lesion centre, and the lesion sits there
    np.testing.assert_allclose(vol.affine @ [5.5, 5.5, 5.5, 1], [*CENTRE, 1], atol=1e-5)
    idx = np.argwhere(vol.mask)
    np.testing.assert_allclose((idx.min(0) + idx.max(0)) / 2, 5.5, atol=0.5)


@pytest.mark.parametrize("kind", ["slices2d", "volumes3d"])
def test_roi_affine_maps_voxels_to_their_anatomy(tmp_path, kind, monkeypatch):
    # a linear ramp in world mm over the whole grid, z-scored: each output voxel must hold the
    # ramp's value at the world point the affine gives it (up to one scale and offset)
    monkeypatch.setattr(test_samples, "head", functools.partial(ramps, box=False))
    s = make_subject(tmp_path, mask=lesion_mask(), store=lps)
    vol = samples.load_subject(s, roi_cfg(kind, normalize="zscore"))
    inner = ndimage.binary_erosion(vol.brain, iterations=1)
    assert inner.sum() > 30
    world = np.argwhere(inner) @ vol.affine[:3, :3].T + vol.affine[:3, 3]
    for c in range(3):
        a = slope(1.0 - c)
        fit = np.polyfit(world @ a, vol.image[..., c][inner], 1)
        assert np.abs(np.polyval(fit, world @ a) - vol.image[..., c][inner]).max() < 1e-3


def test_slices2d_keeps_the_scan_slices_inside_the_box(tmp_path):
    s = make_subject(tmp_path, mask=lesion_mask())
    vol = samples.load_subject(s, roi_cfg("slices2d"))
    # in-plane 24 mm / 12 = 2 mm; along z the scan's own 2.5 mm slices, every one of them
    assert vol.image.shape == (SHAPE[2], 12, 12, 3)
    np.testing.assert_allclose(vol.affine[:3, :3], [[0, 0, -2], [0, -2, 0], [2.5, 0, 0]])
    np.testing.assert_allclose(vol.affine @ [7, 5.5, 5.5, 1], [*CENTRE, 1], atol=1e-5)
    assert vol.lesion_slices == (6, 7, 8)  # the mask's slices: within 12 mm of the centre
    # a 5 mm thick box keeps the centre slice and its neighbours at 2.5 mm only
    thin = samples.load_subject(s, roi_cfg("slices2d", roi_size_mm=(24.0, 24.0, 5.0)))
    assert thin.lesion_slices == (6, 7, 8)
    thinner = samples.load_subject(s, roi_cfg("slices2d", roi_size_mm=(24.0, 24.0, 2.0)))
    assert thinner.lesion_slices == (7,)
    exs = samples.slice_examples(s, roi_cfg("slices2d"))
    assert [e["slice"] for e in exs] == [6, 7, 8] and exs[0]["image"].shape == (12, 12, 3)


def test_mask_channel(tmp_path):
    s = make_subject(tmp_path, mask=lesion_mask())
    vol = samples.load_subject(s, roi_cfg(mask_channel=True))
    assert vol.image.shape == (12, 12, 12, 4)
    np.testing.assert_array_equal(vol.image[..., 3] > 0.5, vol.mask)
    spec = roi_cfg(mask_channel=True)
    assert spec.channel_names == (*MODS, "mask") and spec.image_shape == (12, 12, 12, 4)
    # also over the whole brain
    whole = samples.load_subject(s, data_cfg("volumes3d", mask_channel=True))
    np.testing.assert_array_equal(whole.image[..., 3] > 0.5, whole.mask)


def test_augmentation_keeps_the_mask_channel_binary():
    img = np.zeros((8, 8, 2), np.float32)
    img[2:6, 2:6] = [0.5, 1.0]
    aug = pipeline.Augment(flip=False, rotate_deg=0, scale=0, intensity=0.3, mask_channel=True)
    out = aug.random_map({"image": img}, np.random.default_rng(0))["image"]
    np.testing.assert_array_equal(out[..., 1], img[..., 1])
    assert not np.allclose(out[..., 0], img[..., 0])


def test_lps_storage_gives_the_same_roi(tmp_path):
    a = samples.load_subject(make_subject(tmp_path / "a", mask=lesion_mask()), roi_cfg())
    b = samples.load_subject(make_subject(tmp_path / "b", mask=lesion_mask(), store=lps), roi_cfg())
    np.testing.assert_allclose(a.image, b.image, atol=1e-6)
    np.testing.assert_allclose(a.affine, b.affine, atol=1e-5)
    assert (a.mask == b.mask).all()


def write_labels(root: Path, centres: dict) -> Path:
    with (root / "labels.csv").open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["subject_id", "label", "centre"])
        for sid, text in centres.items():
            w.writerow([sid, "recurrence", text])
    return root / "labels.csv"


def find(root: Path, **kw):
    return cohort.find_subjects(
        root, {m: f"*_{m}.nii.gz" for m in MODS}, classes=("necrosis", "recurrence"), **kw
    )


def test_centre_from_labels_csv_equals_the_mask_roi(tmp_path):
    make_subject(tmp_path, "s1", mask=lesion_mask())
    write_labels(tmp_path, {"s1": ";".join(f"{v:.4f}" for v in CENTRE)})
    sub = find(tmp_path, centre_column="centre", mask_pattern="*_mask.nii.gz").subjects[0]
    np.testing.assert_allclose(sub.centre, CENTRE, atol=1e-4)
    assert "centre" not in sub.metadata
    for kind in ("volumes3d", "slices2d"):
        by_mask = samples.load_subject(sub, roi_cfg(kind))
        by_click = samples.load_subject(sub, roi_cfg(kind, roi="centre", centre_column="centre"))
        np.testing.assert_allclose(by_click.affine, by_mask.affine, atol=1e-3)
        np.testing.assert_allclose(by_click.image, by_mask.image, atol=1e-3)
        assert by_click.lesion_slices == by_mask.lesion_slices
    # without a mask (a reader's click only): the same box
    bare = Subject("s1", 1, "recurrence", sub.files, None, None, {}, sub.centre)
    vol = samples.load_subject(bare, roi_cfg(roi="centre", centre_column="centre"))
    np.testing.assert_allclose(vol.affine[:3, 3], CENTRE + [11, 11, -11], atol=1e-3)


def test_box_partly_outside_the_scan_is_zeros(tmp_path):
    s = make_subject(tmp_path)
    corner = RAS[:3, 3] + [1.0, 1.0, 1.0]  # near voxel (0, 0, 0): most of the box is outside
    near = Subject("s1", 1, "recurrence", s.files, None, None, {}, tuple(corner))
    vol = samples.load_subject(near, roi_cfg(roi="centre", centre_column="c"))
    assert vol.image.shape == (12, 12, 12, 3)
    np.testing.assert_allclose(vol.affine @ [5.5, 5.5, 5.5, 1], [*corner, 1], atol=1e-5)
    # the box is not moved: below, behind and right of the scan (2 mm past its first voxel
    # centres along z, y and x) it holds zeros
    assert (vol.image[:5, 7:, 7:] == 0).all() and not vol.brain[:5, 7:, 7:].any()
    assert vol.image[6:, :6, :6].any()  # the scan's part of the box


# --- bad input ----------------------------------------


def test_centre_that_does_not_parse(tmp_path):
    make_subject(tmp_path, "s1")
    labels = write_labels(tmp_path, {"s1": "12;x;3"})
    with pytest.raises(InputError, match=r"lesion centre '12;x;3' is not like") as err:
        find(tmp_path, centre_column="centre")
    assert err.value.subject == "s1" and err.value.path == str(labels)
    write_labels(tmp_path, {"s1": "1;2"})
    with pytest.raises(InputError, match="x;y;z in world mm"):
        find(tmp_path, centre_column="centre")
    with pytest.raises(InputError, match="no column 'middle'"):
        find(tmp_path, centre_column="middle")


def test_centre_outside_the_field_of_view(tmp_path):
    make_subject(tmp_path, "s1")
    labels = write_labels(tmp_path, {"s1": "4;-3;300"})
    sub = find(tmp_path, centre_column="centre").subjects[0]
    with pytest.raises(InputError, match=r"centre \(4, -3, 300\) mm lies outside the t1") as err:
        samples.load_subject(sub, roi_cfg(roi="centre", centre_column="centre"))
    assert err.value.subject == "s1" and err.value.path == str(labels)


def test_missing_centre_or_mask(tmp_path):
    make_subject(tmp_path, "s1")
    labels = write_labels(tmp_path, {"s1": ""})
    sub = find(tmp_path, centre_column="centre").subjects[0]
    with pytest.raises(InputError, match="needs a lesion centre: none in labels.csv column") as e:
        samples.load_subject(sub, roi_cfg(roi="centre", centre_column="centre"))
    assert e.value.path == str(labels)
    with pytest.raises(
        InputError, match=r"data.roi='mask' needs a lesion mask, and this subject has none"
    ):
        samples.load_subject(sub, roi_cfg())
    with pytest.raises(InputError, match="data.mask_channel needs a lesion mask"):
        samples.load_subject(sub, data_cfg("volumes3d", mask_channel=True))


def test_empty_mask_and_slice_list_outside_the_box(tmp_path):
    s = make_subject(tmp_path, mask=np.zeros(SHAPE))
    with pytest.raises(InputError, match="mask is empty .*, and data.roi='mask' centres") as err:
        samples.load_subject(s, roi_cfg())
    assert err.value.path == str(s.mask)
    s = make_subject(tmp_path, mask=lesion_mask())
    listed = Subject("s1", 1, "recurrence", s.files, s.mask, (0, 1), {})
    with pytest.raises(InputError, match="none of the lesion slices of the labels.csv slice"):
        samples.load_subject(listed, roi_cfg("slices2d"))


def test_bad_roi_settings():
    with pytest.raises(ValueError, match="data.roi 'box'"):
        roi_cfg(roi="box")
    with pytest.raises(ValueError, match="roi_size_mm"):
        roi_cfg(roi_size_mm=(10.0, 0.0, 10.0))


# --- a tiny ROI run, predict and Grad-CAM ----------------------------------------


def _config(path: str, **data):
    spec = importlib.util.spec_from_file_location("cfg", REPO / path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    c = mod.get_config("tiny")
    c.data.update(dict(roi="mask", mask_pattern="*_mask.nii.gz", **data))
    return c


@pytest.mark.parametrize(
    "path, size", [("configs/ern.py", (48.0, 48.0, 12.0)), ("configs/resnet3d.py", (48.0,) * 3)]
)
def test_tiny_roi_run_and_predict(tmp_path, path, size):
    workdir = tmp_path / "run"
    loop.train_and_evaluate(_config(path, roi_size_mm=size), workdir)
    run = inference.load_run(workdir)
    sid = predictions.read_csv(workdir / "predictions_test.csv").subject_id[0]
    folder = workdir / "synthetic_cohort" / sid
    subject = inference.make_subject(run, sid, {}, subject_dir=folder)
    report = inference.predict(run, subject, tmp_path / "out", max_pngs=2)
    test = predictions.read_csv(workdir / "predictions_test.csv")
    rows = [i for i, s in enumerate(test.subject_id) if s == sid]
    assert report["roi"] == {"centred_on": "mask", "size_mm": list(size)}
    if "slices" in report:  # 2D: PNGs over the ROI's slices
        probs = [s["recurrence"] for s in report["slices"]]
        np.testing.assert_allclose(probs, test.probs[rows, 1], atol=2e-5)
        assert len(report["gradcam"]) == min(2, len(probs))
        for name in report["gradcam"]:
            assert (tmp_path / "out" / name).read_bytes()[:4] == b"\x89PNG"
        return
    np.testing.assert_allclose(
        report["probabilities"]["recurrence"], test.probs[rows[0], 1], atol=2e-5
    )
    # the 3D map lands on the scan's grid, and its peak lies inside the ROI box
    ref = folder / f"{sid}_{run.config.data.reference}.nii.gz"
    cam = nib.load(str(tmp_path / "out" / "gradcam.nii.gz"))
    scan = nib.load(str(ref))
    assert cam.shape == scan.shape and np.allclose(cam.affine, scan.affine, atol=1e-4)
    peak = np.unravel_index(np.argmax(cam.get_fdata()), cam.shape)
    world = nib.affines.apply_affine(cam.affine, peak)
    vol = samples.load_subject(subject, run.config.data)
    inside = nib.affines.apply_affine(np.linalg.inv(vol.affine), world)
    assert np.all(inside >= -0.5) and np.all(inside <= np.array(vol.image.shape[:3]) - 0.5)
    assert cam.get_fdata().max() > 0


def test_predict_needs_the_mask_or_centre_of_an_roi_run(tmp_path):
    run = inference.TrainedRun(_config("configs/resnet3d.py"), None, 0, None, {})
    s = make_subject(tmp_path)
    with pytest.raises(InputError, match="pass --mask"):
        inference.make_subject(run, "p1", {}, subject_dir=s.files["t1"].parent)
    run.config.data.roi = "centre"
    with pytest.raises(InputError, match=r"data.roi='centre'\): pass --centre=x,y,z"):
        inference.make_subject(run, "p1", {}, subject_dir=s.files["t1"].parent)
    p1 = inference.make_subject(run, "p1", {}, subject_dir=s.files["t1"].parent, centre=CENTRE)
    np.testing.assert_allclose(p1.centre, CENTRE)
    assert samples.load_subject(p1, roi_cfg(roi="centre")).image.shape == (12, 12, 12, 3)
    # a centre outside the scan names the flag it came from
    far = inference.make_subject(
        run, "p1", {}, subject_dir=s.files["t1"].parent, centre=(0, 0, 900)
    )
    with pytest.raises(InputError, match="lies outside") as err:
        samples.load_subject(far, roi_cfg(roi="centre"))
    assert err.value.path == "--centre"
