"""The synthetic cohort: layout, determinism, class ratio, lesions, contrasts, atomic write."""

import csv
import json
import socket

import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage

from ernjax.data import synthetic
from ernjax.data.geometry import load_image

N_SUBJECTS = 9  # 9 * 0.66 -> 6 recurrences, 3 necroses


def read_labels(cohort):
    with open(cohort / "labels.csv", newline="") as fh:
        return list(csv.DictReader(fh))


def load_subject(cohort, sid):
    return {
        m: nib.load(str(cohort / sid / f"{sid}_{m}.nii.gz"))
        for m in (*synthetic.MODALITIES, "mask")
    }


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    out = tmp_path_factory.mktemp("phantoms") / "cohort"
    return synthetic.write_cohort(out, subjects=N_SUBJECTS, seed=3)


def test_template_loads_offline(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("the MNI152 template must not be downloaded")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    tmpl = synthetic._template.__wrapped__(2.0)
    assert tmpl["shape"] == (99, 117, 95)
    assert tmpl["maps"]["mask"].sum() > 200_000  # about 1.9 litres of brain at 8 mm^3


def test_layout_and_labels(cohort):
    rows = read_labels(cohort)
    with open(cohort / "labels.csv") as fh:
        assert fh.readline().strip() == "subject_id,label,lesion_slices"
    assert [r["subject_id"] for r in rows] == [f"syn-{i:04d}" for i in range(1, N_SUBJECTS + 1)]
    assert {r["label"] for r in rows} <= set(synthetic.CLASSES)
    assert sorted(p.name for p in cohort.iterdir() if p.is_dir()) == [r["subject_id"] for r in rows]
    params = json.loads((cohort / "cohort.json").read_text())
    assert params["subjects"] == N_SUBJECTS and params["seed"] == 3
    for r in rows[:3]:
        imgs = load_subject(cohort, r["subject_id"])
        for m, img in imgs.items():
            assert img.shape == (99, 117, 95)
            np.testing.assert_allclose(img.affine[:3, :3], np.diag([2.0, 2.0, 2.0]))
            assert nib.aff2axcodes(img.affine) == ("R", "A", "S")
            assert int(img.header["qform_code"]) == 1 and int(img.header["sform_code"]) == 1
            assert img.get_data_dtype() == (np.uint8 if m == "mask" else np.int16)
            load_image(cohort / r["subject_id"] / f"{r['subject_id']}_{m}.nii.gz", r["subject_id"])


def test_class_ratio(cohort):
    labels = [r["label"] for r in read_labels(cohort)]
    assert labels.count("recurrence") == round(N_SUBJECTS * 0.66)
    for n, f in [(60, 0.66), (146, 96 / 146), (7, 0.0), (7, 1.0), (11, 0.5)]:
        got = synthetic._labels(n, 0, f)
        assert len(got) == n and got.count("recurrence") == round(n * f)


def test_lesion_slices_match_mask_inside_brain(cohort):
    for r in read_labels(cohort):
        sid = r["subject_id"]
        imgs = load_subject(cohort, sid)
        mask = np.asarray(imgs["mask"].dataobj) > 0
        assert mask.any(), sid
        stored = [int(k) for k in r["lesion_slices"].split(";")]
        assert stored == list(np.flatnonzero(mask.any(axis=(0, 1))))
        assert stored == synthetic.lesion_slices(mask.astype(np.uint8))
        for m in synthetic.MODALITIES:
            data = np.asarray(imgs[m].dataobj)
            assert (data[mask] > 0).all(), (
                sid,
                m,
            )  # the lesion lies inside the skull-stripped brain
            assert data.min() == 0  # zero outside the brain, like BraTS


def test_determinism(tmp_path):
    kw = dict(subjects=2, seed=5, spacing=4.0)
    a = synthetic.write_cohort(tmp_path / "a", **kw)
    b = synthetic.write_cohort(tmp_path / "b", **kw)
    c = synthetic.write_cohort(tmp_path / "c", **{**kw, "seed": 6})
    assert (a / "labels.csv").read_text() == (b / "labels.csv").read_text()
    for sid in ("syn-0001", "syn-0002"):
        for m in (*synthetic.MODALITIES, "mask"):
            name = f"{sid}/{sid}_{m}.nii.gz"
            x, y = (np.asarray(nib.load(str(d / name)).dataobj) for d in (a, b))
            np.testing.assert_array_equal(x, y)
    x, y = (np.asarray(nib.load(str(d / "syn-0001/syn-0001_t1.nii.gz")).dataobj) for d in (a, c))
    assert not np.array_equal(x, y)


def test_normal_tissue_contrasts():
    tmpl = synthetic._template(2.0)
    maps = dict(tmpl["maps"])
    maps["csf"] = np.clip(maps["mask"] - maps["gm"] - maps["wm"], 0, 1)
    vols = synthetic._contrasts(np.random.default_rng(0), maps)
    means = {
        m: {t: float(v[maps[t] > 0.9].mean()) for t in ("csf", "gm", "wm")} for m, v in vols.items()
    }
    for m in ("t1", "t1c"):
        assert means[m]["wm"] > means[m]["gm"] > means[m]["csf"]
    assert means["t2"]["csf"] > means["t2"]["gm"] > means["t2"]["wm"]
    assert means["flair"]["gm"] > means["flair"]["wm"] > means["flair"]["csf"]


def lesion_measures(arrays):
    """T1c enhancement ratio and FLAIR edema volume (voxels) around the lesion."""
    mask = arrays["mask"] > 0
    brain = arrays["t1"] > 0
    far = brain & ~ndimage.binary_dilation(mask, iterations=20)
    t1c, flair = (arrays[m].astype(np.float32) for m in ("t1c", "flair"))
    enhancing = mask & (t1c > np.percentile(t1c[mask], 50))
    near = ndimage.binary_dilation(mask, iterations=15) & ~mask
    edema = near & (flair > 1.5 * np.median(flair[far]))
    return t1c[enhancing].mean() / np.median(t1c[far]), int(edema.sum())


def test_lesion_contrasts_follow_the_papers():
    measures = {c: [] for c in synthetic.CLASSES}
    for i in range(1, 7):
        label = synthetic.CLASSES[i % 2]
        arrays, _ = synthetic.make_subject(11, i, label, difficulty=0.5)
        measures[label].append(lesion_measures(arrays))
    enh = {c: np.array([m[0] for m in v]) for c, v in measures.items()}
    edema = {c: np.mean([m[1] for m in v]) for c, v in measures.items()}
    for c in synthetic.CLASSES:
        assert (enh[c] > 1.3).all(), (c, enh[c])  # enhancing part brighter than normal brain on T1c
    assert edema["recurrence"] > 1.5 * edema["necrosis"], edema  # infiltrative vs focal (Ying)


def test_necrosis_core_does_not_enhance():
    arrays, _ = synthetic.make_subject(0, 1, "necrosis", difficulty=0.0)
    mask = arrays["mask"] > 0
    t1c = arrays["t1c"].astype(np.float32)
    centre = tuple(int(round(c)) for c in ndimage.center_of_mass(mask))
    core = t1c[tuple(slice(c - 1, c + 2) for c in centre)].mean()
    rim = t1c[mask & ~ndimage.binary_erosion(mask, iterations=1)].mean()
    assert core < 0.6 * rim, (core, rim)


def test_thick_slices(tmp_path):
    arrays, affine = synthetic.make_subject(0, 1, "recurrence", slice_thickness=6.0)
    np.testing.assert_allclose(np.sqrt((affine[:3, :3] ** 2).sum(0)), [2.0, 2.0, 6.0])
    assert arrays["t1"].shape == (99, 117, round(95 * 2 / 6))
    assert abs(affine[2, 3] - (-72.0 + 2.0)) < 1e-6  # first slab centred on the old first 3 slices
    assert arrays["mask"].any()
    out = synthetic.write_cohort(
        tmp_path / "thick", subjects=1, seed=0, slice_thickness=8.0, spacing=4.0
    )
    img = nib.load(str(out / "syn-0001" / "syn-0001_flair.nii.gz"))
    np.testing.assert_allclose(img.header.get_zooms(), (4.0, 4.0, 8.0))
    np.testing.assert_allclose(img.header.get_qform(), img.affine)
    row = read_labels(out)[0]
    mask = np.asarray(nib.load(str(out / "syn-0001" / "syn-0001_mask.nii.gz")).dataobj)
    assert [int(k) for k in row["lesion_slices"].split(";")] == synthetic.lesion_slices(mask)


def test_existing_cohort_is_reused_and_replaced_when_parameters_change(tmp_path):
    out = tmp_path / "c"
    kw = dict(subjects=1, seed=0, spacing=4.0)
    synthetic.write_cohort(out, **kw)
    (out / "sentinel").write_text("kept")
    assert synthetic.write_cohort(out, **kw) == out
    assert (out / "sentinel").exists()  # reused, not rewritten
    synthetic.write_cohort(out, **{**kw, "seed": 1})
    assert not (out / "sentinel").exists()
    assert json.loads((out / "cohort.json").read_text())["seed"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["c"]  # no temp folders left behind


def test_interrupted_write_leaves_nothing(tmp_path, monkeypatch):
    real = synthetic.make_subject

    def fail_second(seed, index, *args, **kwargs):
        if index == 2:
            raise KeyboardInterrupt
        return real(seed, index, *args, **kwargs)

    monkeypatch.setattr(synthetic, "make_subject", fail_second)
    with pytest.raises(KeyboardInterrupt):
        synthetic.write_cohort(tmp_path / "c", subjects=3, spacing=4.0)
    assert list(tmp_path.iterdir()) == []


def test_foreign_folder_and_bad_parameters(tmp_path):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "scan.nii.gz").write_text("x")
    with pytest.raises(FileExistsError):
        synthetic.write_cohort(tmp_path / "mine", subjects=1, spacing=4.0)
    for bad in (
        dict(subjects=0),
        dict(difficulty=1.5),
        dict(recurrence_fraction=-0.1),
        dict(slice_thickness=1.0),
        dict(spacing=1.0),
    ):
        with pytest.raises(ValueError):
            synthetic.write_cohort(tmp_path / "x", **bad)
    with pytest.raises(ValueError):
        synthetic.make_subject(0, 1, "glioma")


def test_command_line(tmp_path, capsys):
    synthetic.main(
        [
            "--out",
            str(tmp_path / "cli"),
            "--subjects",
            "2",
            "--seed",
            "4",
            "--difficulty",
            "0.3",
            "--spacing",
            "4",
        ]
    )
    assert "synthetic cohort" in capsys.readouterr().out
    assert len(read_labels(tmp_path / "cli")) == 2
    params = json.loads((tmp_path / "cli" / "cohort.json").read_text())
    assert params["difficulty"] == 0.3 and params["spacing"] == 4.0
