"""ernjax.data.pipeline: shuffling, resumable state, exactly-once eval, folds, augmentation."""

import shutil
from pathlib import Path

import numpy as np
import pytest

import configs.resnet3d
from ernjax.data import pipeline as ip
from ernjax.data import prepare

DUMMY = Path(__file__).resolve().parents[1] / "data_builders" / "ernjax_mri" / "dummy_data"


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    work = tmp_path_factory.mktemp("work")
    shutil.copytree(DUMMY, work / "cohort")
    cfg = configs.resnet3d.get_config("tiny")
    cfg.data.cohort_dir = str(work / "cohort")
    cfg.data.mask_pattern = "*_mask.nii.gz"
    cfg.data.shape = (8, 8, 8)
    cfg.data.split.folds = 2
    cfg.data.split.test = 0.2
    cfg.data.build_workers = 1
    return cfg, ip.prepare(cfg, work), work


def test_data_info(setup):
    cfg, info, _ = setup
    assert info.image_shape == (8, 8, 8, 3) and info.kind == "volumes3d"
    assert info.num_examples == {"train": 6, "validation": 2, "test": 2}
    assert sum(info.train_class_counts) == 6
    train_subjects = set(info.subject_ids("train"))
    assert sum(info.train_subject_class_counts) == len(train_subjects)  # one volume per subject
    assert info.train_subject_class_counts == info.train_class_counts
    assert ip.steps_per_epoch(info, 4) == 1


def _ids(it, n):
    return [list(next(it)["subject_id"]) for _ in range(n)]


def test_train_iterator_shuffles_each_epoch_and_resumes(setup):
    cfg, info, _ = setup
    it = ip.train_iterator(cfg, info, global_batch=2)
    batch = next(it)
    assert batch["image"].shape == (2, 8, 8, 8, 3) and batch["image"].dtype == np.float32
    assert batch["label"].dtype == np.int32 and batch["valid"].all()
    epochs = [sum(_ids(it, 3), []) for _ in range(2)]  # batch 1-3 overlap epochs 1-2; fine
    first_epoch = [s for b in [list(batch["subject_id"])] for s in b]
    assert len(set(epochs[0] + first_epoch)) >= 5
    state = it.get_state()
    expected = _ids(it, 4)
    again = ip.train_iterator(cfg, info, global_batch=2)
    again.set_state(state)
    assert _ids(again, 4) == expected
    fresh = ip.train_iterator(cfg, info, global_batch=2)
    assert _ids(fresh, 3) != _ids(fresh, 3)  # epoch 1 and 2 orders differ


def test_train_iterator_is_deterministic_for_a_seed(setup):
    cfg, info, _ = setup
    a = next(ip.train_iterator(cfg, info, global_batch=2))
    b = next(ip.train_iterator(cfg, info, global_batch=2))
    np.testing.assert_array_equal(a["image"], b["image"])


def test_eval_sees_every_example_once(setup):
    cfg, info, _ = setup
    for split in ("train", "validation", "test"):
        batches = list(ip.eval_iterator(cfg, info, split, global_batch=4))
        assert all(b["image"].shape[0] == 4 for b in batches)
        seen = [s for b in batches for s, v in zip(b["subject_id"], b["valid"], strict=True) if v]
        assert seen == info.subject_ids(split)
        assert len(seen) == info.num_examples[split]


def test_folds_partition_the_non_test_subjects(setup):
    cfg, info, work = setup
    from ernjax.data import records

    index = records.open_records(info.records_dir).index
    validation = []
    for k in range(2):
        parts = prepare.select_parts(index, k)
        sid = lambda p: index["splits"][p[0]]["subject_id"][p[1]]  # noqa: E731
        train, val = {sid(p) for p in parts["train"]}, {sid(p) for p in parts["validation"]}
        assert not train & val and len(train | val) == 8
        validation += sorted(val)
    assert len(validation) == len(set(validation)) == 8
    with pytest.raises(ValueError, match="fold 5"):
        prepare.select_parts(index, 5)


def test_augment_keeps_background_and_shape():
    rng = np.random.default_rng(0)
    img = np.zeros((4, 12, 12, 3), np.float32)
    img[:, 3:9, 2:6] = 0.5
    aug = ip.Augment(flip=True, rotate_deg=10, scale=0.1, intensity=0.1)
    out = aug.random_map({"image": img, "label": 0}, rng)["image"]
    assert out.shape == img.shape and out.dtype == np.float32
    assert np.all(out[:, 0, 0] == 0)  # corners stay background
    flip = ip.Augment(flip=True, rotate_deg=0, scale=0, intensity=0)
    outs = [flip.random_map({"image": img}, np.random.default_rng(s))["image"] for s in range(8)]
    assert any(np.array_equal(o, img[..., ::-1, :]) for o in outs)
    assert any(np.array_equal(o, img) for o in outs)


def test_balanced_parts_make_the_classes_equally_frequent():
    parts = [("train", i) for i in range(7)]
    labels = [0, 0, 0, 0, 0, 1, 1]  # 5:2
    out = ip.balanced_parts(parts, labels, 2, seed=0)
    got = [labels[i] for _, i in out]
    assert got.count(0) == got.count(1) == 5
    assert {i for _, i in out} == set(range(7))  # nothing dropped
    minority = [i for _, i in out if labels[i] == 1]
    assert sorted(minority.count(i) for i in (5, 6)) == [2, 3]  # repeated as evenly as it goes
    assert out == ip.balanced_parts(parts, labels, 2, seed=0)


def test_balanced_training_stream_draws_the_balanced_list(setup):
    cfg, info, _ = setup
    cfg = cfg.copy_and_resolve_references()
    cfg.train.sampling = "balanced"
    it = ip.train_iterator(cfg, info, global_batch=4)
    labels = np.concatenate([next(it)["label"] for _ in range(30)])
    counts = np.bincount(labels, minlength=2)
    assert abs(counts[0] - counts[1]) <= 0.2 * counts.sum()  # about 1:1, whatever the split's
