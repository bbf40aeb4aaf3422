"""ernjax.data.spec: one frozen SampleSpec from config.data is the example schema and the cache key.

The records' name hashes the whole spec, so the test that matters is generic: change any field of
the spec (a field added later included) and the name changes; and every config.data field is
either in the spec or named, with its reason, as not changing the examples.
"""

import dataclasses
import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

import configs.ern
import configs.resnet3d
from ernjax.data import records, spec
from ernjax.data.spec import BidsSpec, SampleSpec, SplitSpec
from ernjax.defaults import base_config

DUMMY = Path(__file__).resolve().parents[1] / "data_builders" / "ernjax_mri" / "dummy_data"


def changed(name: str, value):
    """Another valid value of a spec field: every leaf type the spec uses, and nothing else."""
    if name == "kind":
        return next(k for k in spec.KINDS if k != value)
    if name == "roi":
        return next(r for r in spec.ROIS if r != value)
    if name == "layout":
        return next(r for r in spec.LAYOUTS if r != value)
    if name == "file":  # split.file: the name hashes the file's content, so it must exist
        return str(DUMMY / "labels.csv")
    if isinstance(value, bool):  # before int: a bool is an int
        return not value
    if isinstance(value, str):
        return value + "_other"
    if isinstance(value, int):
        return value + 1
    if isinstance(value, float):
        return value + 0.125
    if isinstance(value, tuple):
        return value[:-1] + (changed(name, value[-1]),) if value else (1.0,)
    raise TypeError(f"field {name}: no changed value for {type(value).__name__}; extend changed()")


def variants(s) -> list[tuple[str, object]]:
    """(field path, s with that one field changed), for every leaf field (nested ones too)."""
    out = []
    for f in dataclasses.fields(s):
        value = getattr(s, f.name)
        if dataclasses.is_dataclass(value):
            inner = [(f"{f.name}.{p}", v) for p, v in variants(value)]
            out += [(p, dataclasses.replace(s, **{f.name: v})) for p, v in inner]
        else:
            out.append((f.name, dataclasses.replace(s, **{f.name: changed(f.name, value)})))
    return out


@pytest.fixture(params=["slices2d", "volumes3d"])
def base(request) -> SampleSpec:
    module = configs.ern if request.param == "slices2d" else configs.resnet3d
    return SampleSpec.from_config(module.get_config("tiny").data)


def test_every_field_changes_the_dataset_name(base):
    name = records.dataset_name(base, DUMMY)
    cases = variants(base)
    leaves = []
    nested = {"split": SplitSpec, "bids": BidsSpec}
    for f in dataclasses.fields(SampleSpec):
        inner = [f"{f.name}.{g.name}" for g in dataclasses.fields(nested.get(f.name, SplitSpec))]
        leaves += inner if f.name in nested else [f.name]
    assert [p for p, _ in cases] == leaves
    for path, other in cases:
        assert other != base, path
        assert records.dataset_name(other, DUMMY) != name, f"changing {path} kept the records' name"


def test_equal_specs_give_equal_names(base):
    again = SampleSpec.from_config(base.to_dict())
    assert again == base and hash(again) == hash(base)
    assert records.dataset_name(again, DUMMY) == records.dataset_name(base, DUMMY)
    # the order modalities are listed in is not a setting of the examples
    shuffled = dataclasses.replace(base, modalities=base.modalities[::-1])
    assert records.dataset_name(shuffled, DUMMY) == records.dataset_name(base, DUMMY)


def test_the_cohort_is_part_of_the_name(base, tmp_path):
    copy = tmp_path / "cohort"
    shutil.copytree(DUMMY, copy, copy_function=shutil.copy2)  # same files, another folder
    assert records.dataset_name(base, copy) != records.dataset_name(base, DUMMY)


def test_every_config_data_field_is_in_the_spec_or_named_as_not_changing_examples():
    fields = {f.name for f in dataclasses.fields(SampleSpec)}
    assert not fields & set(spec.NOT_IN_SPEC)
    assert set(base_config().data) == fields | set(spec.NOT_IN_SPEC)


def test_settings_outside_the_spec_keep_the_name():
    d = configs.ern.get_config("tiny").data
    name = records.dataset_name(SampleSpec.from_config(d), DUMMY)
    d.augment.enabled, d.fold, d.build_workers, d.worker_count = False, 1, 3, 2
    d.records_dir, d.synthetic.seed, d.preprocess.n4_shrink = "/elsewhere", 7, 2
    assert records.dataset_name(SampleSpec.from_config(d), DUMMY) == name


def test_default_roi_settings_keep_the_records_name(base):
    # the name of records built before the ROI and group settings existed: to_dict()'s hash then
    later = {*spec.ROI_DEFAULTS, "group_column", "layout", "bids"}
    before = {k: v for k, v in base.to_dict().items() if k not in later}
    before["split"] = {k: v for k, v in before["split"].items() if k != "file"}
    assert base.hashed() == before
    key = {**before, "cohort_dir": str(DUMMY.resolve())}
    key["fingerprint"] = records.cohort_fingerprint(DUMMY.resolve())
    digest = hashlib.sha1(json.dumps(key, sort_keys=True).encode()).hexdigest()[:10]
    assert records.dataset_name(base, DUMMY) == f"{base.kind}-{digest}"
    # and settings stored without them read back as the defaults
    assert SampleSpec.from_config(before) == base


def test_to_dict_is_plain_json_and_normalizes_types():
    d = configs.resnet3d.get_config("tiny").data
    d.spacing, d.shape = (1, 2, 2), (8.0, 16.0, 16.0)  # ints and floats as a user may write them
    s = SampleSpec.from_config(d)
    assert s.spacing == (1.0, 2.0, 2.0) and s.shape == (8, 16, 16)
    d.spacing, d.shape = (1.0, 2.0, 2.0), (8, 16, 16)
    assert SampleSpec.from_config(d) == s  # the same records, so the same name
    assert records.dataset_name(SampleSpec.from_config(d), DUMMY) == records.dataset_name(s, DUMMY)
    out = s.to_dict()
    assert json.loads(json.dumps(out)) == out
    assert out["modalities"] == dict(d.modalities) and out["split"] == d.split.to_dict()
    assert set(out) == {f.name for f in dataclasses.fields(SampleSpec)}
    assert SampleSpec.from_config(s) is s
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.kind = "slices2d"


def test_unknown_kind_is_refused():
    with pytest.raises(ValueError, match="slices3d"):
        SampleSpec.from_config(
            {**SampleSpec.from_config(base_config().data).to_dict(), "kind": "slices3d"}
        )


@pytest.mark.parametrize("kind", spec.KINDS)
def test_schema_keys_features_and_examples_agree(kind):
    module = configs.ern if kind == "slices2d" else configs.resnet3d
    s = SampleSpec.from_config(module.get_config("tiny").data)
    assert tuple(s.features()) == s.example_keys
    assert s.example_keys[:3] == ("image", "label", "subject_id")
    where = 4 if kind == "slices2d" else np.eye(4)
    ex = s.example(np.zeros(s.image_shape, np.float32), 1, "s1", where)
    assert tuple(ex) == s.example_keys
    assert ex["image"].dtype == np.float16 and ex["image"].shape == s.image_shape
    assert ex["label"] == 1 and ex["subject_id"] == "s1"
    if kind == "slices2d":
        assert ex["slice"] == 4
    else:
        assert ex["affine"].dtype == np.float32


def test_element_and_device_keys():
    record = {"image": np.ones((2, 2, 3), np.float16), "label": np.int64(1), "subject_id": b"s1"}
    el = spec.element({**record, "slice": np.int32(3)})
    assert tuple(el) == spec.ELEMENT_KEYS
    assert el["image"].dtype == np.float32 and el["label"].dtype == np.int32
    assert el["subject_id"] == "s1" and el["valid"]
    assert set(spec.DEVICE_KEYS) < set(spec.ELEMENT_KEYS) and "subject_id" not in spec.DEVICE_KEYS
