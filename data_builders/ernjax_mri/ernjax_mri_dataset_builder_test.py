"""Declarative test of the ernjax_mri builder on dummy_data/ (both BuilderConfigs).

tfds.testing.DatasetBuilderTestCase needs TensorFlow, which ernjax never installs, so the same
checks are spelled out here: split sizes, features, patient-level splits, and no TensorFlow.
"""

import sys

import numpy as np
import pytest
import tensorflow_datasets as tfds

from data_builders.ernjax_mri import ernjax_mri_dataset_builder as lib

# dummy_data: 10 subjects (7 recurrence, 3 necrosis), 20 x 24 x 10 voxels, a lesion in each.
SPLITS = {"volumes3d": {"train": 6, "validation": 2, "test": 2}}
SUBJECT_SPLITS = {"train": 6, "validation": 2, "test": 2}


@pytest.fixture(scope="module", params=["slices2d", "volumes3d"])
def built(request, tmp_path_factory):
    builder = lib.Builder(config=request.param, data_dir=str(tmp_path_factory.mktemp("tfds")))
    builder.download_and_prepare(
        file_format="array_record",
        download_config=tfds.download.DownloadConfig(try_download_gcs=False),
    )
    return builder


def test_split_sizes(built):
    name = built.builder_config.name
    counts = {s: built.info.splits[s].num_examples for s in built.info.splits}
    if name in SPLITS:
        assert counts == SPLITS[name]
    else:  # slices2d: one example per lesion slice; every subject's lesion spans >= 2 slices
        assert set(counts) == set(SUBJECT_SPLITS)
        for split, n_subjects in SUBJECT_SPLITS.items():
            assert counts[split] >= 2 * n_subjects


def test_features(built):
    data = built.builder_config.spec  # SampleSpec.to_dict()
    ex = built.as_data_source(split="train")[0]
    assert ex["image"].dtype == np.float16
    assert ex["image"].shape == tuple(data["shape"]) + (len(data["channels"]),)
    assert 0.0 <= float(ex["image"].min()) and float(ex["image"].max()) <= 1.0
    assert ex["subject_id"].decode().startswith("dummy-")
    assert ("slice" in ex) == (data["kind"] == "slices2d")
    assert ("affine" in ex) == (data["kind"] == "volumes3d")


def test_subjects_in_one_split_and_stored_assignment(built):
    seen = {}
    for split in built.info.splits:
        src = built.as_data_source(split=split)
        for i in range(len(src)):
            sid = src[i]["subject_id"].decode()
            assert seen.setdefault(sid, split) == split, f"{sid} in {seen[sid]} and {split}"
    assignment = built.info.metadata["assignment"]
    assert {sid: a["split"] for sid, a in assignment.items()} == seen
    assert {s: list(seen.values()).count(s) for s in SUBJECT_SPLITS} == SUBJECT_SPLITS


def test_no_tensorflow(built):
    assert built.info.splits["train"].num_examples > 0
    assert "tensorflow" not in sys.modules
