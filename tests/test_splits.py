"""ernjax.data.splits and split_file: stratified, patient-grouped splits, folds, split files."""

from collections import Counter

import numpy as np
import pytest
from sklearn.model_selection import StratifiedGroupKFold

from ernjax.data import splits
from ernjax.data.splits import assign_splits, group_labels, select_fold

KW = dict(test=0.2, validation=0.2, folds=5, seed=0)


def cohort(counts: dict[int, int]) -> tuple[list[str], list[int]]:
    ids, labels = [], []
    for label, n in counts.items():
        ids += [f"c{label}-{i:03d}" for i in range(n)]
        labels += [label] * n
    return ids, labels


def by_split(assignment, label_of) -> Counter:
    return Counter((a["split"], label_of[s]) for s, a in assignment.items())


def test_fractions_and_stratification():
    ids, labels = cohort({0: 50, 1: 100})
    out = assign_splits(ids, labels, **KW)
    counts = by_split(out, dict(zip(ids, labels, strict=True)))
    assert counts[("test", 0)] == 10 and counts[("test", 1)] == 20  # 20% of each class
    assert counts[("validation", 0)] == 8 and counts[("validation", 1)] == 16  # 20% of the rest
    assert counts[("train", 0)] == 32 and counts[("train", 1)] == 64
    assert sorted(out) == sorted(ids)  # every subject exactly once: never in two splits


def test_deterministic_for_a_seed_and_independent_of_input_order():
    ids, labels = cohort({0: 30, 1: 40})
    a = assign_splits(ids, labels, **KW)
    b = assign_splits(ids[::-1], labels[::-1], **KW)
    assert a == b
    c = assign_splits(ids, labels, **{**KW, "seed": 1})
    assert c != a


def test_folds_cover_non_test_subjects_exactly_once():
    ids, labels = cohort({0: 23, 1: 41})
    out = assign_splits(ids, labels, **KW)
    non_test = {s for s, a in out.items() if a["split"] != "test"}
    assert all(a["fold"] == -1 for a in out.values() if a["split"] == "test")
    seen = Counter()
    for k in range(5):
        sel = select_fold(out, k)
        val = {s for s, x in sel.items() if x == "validation"}
        assert {s for s, x in sel.items() if x == "test"} == set(out) - non_test
        assert val <= non_test and {s for s, x in sel.items() if x == "train"} == non_test - val
        seen.update(val)
        # folds are stratified: each class is spread over the folds
        assert {labels[ids.index(s)] for s in val} == {0, 1}
    assert set(seen) == non_test and set(seen.values()) == {1}
    sizes = Counter(out[s]["fold"] for s in non_test)
    assert max(sizes.values()) - min(sizes.values()) <= 1
    assert select_fold(out, -1) == {s: a["split"] for s, a in out.items()}


def test_tiny_classes():
    # BraTS 2018 2 mm: 17 HGG, 4 LGG; plus classes of 3, 2 and 1 subjects
    ids, labels = cohort({0: 17, 1: 4, 2: 3, 3: 2, 4: 1})
    out = assign_splits(ids, labels, **KW)
    counts = by_split(out, dict(zip(ids, labels, strict=True)))
    assert counts[("test", 1)] == 1 and counts[("validation", 1)] == 1 and counts[("train", 1)] == 2
    assert counts[("test", 2)] == 1 and counts[("validation", 2)] == 1 and counts[("train", 2)] == 1
    assert counts[("test", 3)] == 1 and counts[("train", 3)] == 1  # 1 left: it trains
    assert counts[("train", 4)] == 1  # a class of one is never held out
    assert counts[("test", 0)] == 3


def test_no_validation_or_test():
    ids, labels = cohort({0: 5, 1: 5})
    out = assign_splits(ids, labels, test=0.0, validation=0.0, folds=2, seed=3)
    assert {a["split"] for a in out.values()} == {"train"}
    assert Counter(a["fold"] for a in out.values()) == {0: 5, 1: 5}


def test_bad_arguments():
    with pytest.raises(ValueError, match="unique"):
        assign_splits(["a", "a"], [0, 1], **KW)
    with pytest.raises(ValueError, match="labels"):
        assign_splits(["a", "b"], [0], **KW)
    with pytest.raises(ValueError):
        assign_splits(["a", "b"], [0, 1], **{**KW, "test": 1.0})
    out = assign_splits(["a", "b", "c"], [0, 0, 0], **KW)
    with pytest.raises(ValueError, match="fold 4"):
        select_fold(out, 4)


# Groups: several subjects (scans, sessions) of one patient never straddle splits or folds.


def grouped_cohort(n_groups: int, seed: int, mixed: float = 0.1):
    """Patients of 1-4 scans each, about 2/3 recurrence; `mixed` of scans take the other label."""
    rng = np.random.default_rng(seed)
    ids, labels, groups = [], [], []
    for g in range(n_groups):
        label = int(rng.random() < 0.66)
        for j in range(rng.integers(1, 5)):
            ids.append(f"p{g:03d}-scan{j}")
            labels.append(label if rng.random() >= mixed else 1 - label)
            groups.append(f"p{g:03d}")
    return ids, labels, groups


def places_of_groups(out, groups, ids):
    places = {}
    for sid, g in zip(ids, groups, strict=True):
        places.setdefault(g, set()).add((out[sid]["split"], out[sid]["fold"]))
    return places


@pytest.mark.parametrize("n_groups", [6, 13, 40, 90])
@pytest.mark.parametrize("seed", range(4))
def test_groups_never_straddle_splits_or_folds(n_groups, seed):
    ids, labels, groups = grouped_cohort(n_groups, seed)
    out = assign_splits(ids, labels, **{**KW, "seed": seed}, groups=groups)
    assert sorted(out) == sorted(ids)
    assert all(len(p) == 1 for p in places_of_groups(out, groups, ids).values())
    assert all(out[s]["group"] == g for s, g in zip(ids, groups, strict=True))
    # the split counts patients: 20 % of each class's patients (majority label) are tested
    of_group = group_labels(labels, groups)
    for label in (0, 1):
        members = [g for g, lab in of_group.items() if lab == label]
        tested = {out[s]["group"] for s in ids if out[s]["split"] == "test"} & set(members)
        assert len(tested) == splits._sizes(len(members), 0.2, 0.2)["test"]
    # and sklearn's reference check of the folds: no group in two folds
    non_test = [i for i, s in enumerate(ids) if out[s]["split"] != "test"]
    fold = np.array([out[ids[i]]["fold"] for i in non_test])
    for k in range(KW["folds"]):
        train_groups = {groups[i] for i, f in zip(non_test, fold, strict=True) if f != k}
        val_groups = {groups[i] for i, f in zip(non_test, fold, strict=True) if f == k}
        assert not train_groups & val_groups


def class_spread(fold: np.ndarray, labels) -> float:
    """The largest gap between a fold's recurrence fraction and the whole set's."""
    labels = np.asarray(labels)
    return max(abs(labels[fold == k].mean() - labels.mean()) for k in np.unique(fold))


@pytest.mark.parametrize("n_groups", [13, 40, 90])
@pytest.mark.parametrize("seed", range(4))
def test_group_folds_are_as_balanced_as_sklearns_stratified_group_kfold(n_groups, seed):
    ids, labels, groups = grouped_cohort(n_groups, seed)
    out = assign_splits(ids, labels, **{**KW, "seed": seed}, groups=groups)
    non_test = [i for i, s in enumerate(ids) if out[s]["split"] != "test"]
    ours = np.array([out[ids[i]]["fold"] for i in non_test])
    y, g = [labels[i] for i in non_test], [groups[i] for i in non_test]
    ref = np.empty(len(non_test), int)
    sgkf = StratifiedGroupKFold(n_splits=KW["folds"], shuffle=True, random_state=seed)
    for k, (_, val) in enumerate(sgkf.split(np.zeros(len(y)), y, g)):
        ref[val] = k
    assert class_spread(ours, y) <= class_spread(ref, y) + 0.1
    spread = lambda f: np.ptp(np.bincount(f, minlength=KW["folds"]))  # noqa: E731
    assert spread(ours) <= spread(ref) + 2


def test_singleton_groups_give_the_assignment_without_groups():
    ids, labels = cohort({0: 23, 1: 41})
    plain = assign_splits(ids, labels, **KW)
    assert assign_splits(ids, labels, **KW, groups=ids) == plain
    renamed = assign_splits(ids, labels, **KW, groups=[f"x{s}" for s in ids])
    assert {s: (a["split"], a["fold"]) for s, a in renamed.items()} == {
        s: (a["split"], a["fold"]) for s, a in plain.items()
    }


def test_mixed_label_group_is_stratified_by_its_majority_label():
    assert group_labels([0, 1, 1, 0, 0, 1], ["a", "a", "a", "b", "b", "b"]) == {"a": 1, "b": 0}
    assert group_labels([1, 0], ["t", "t"]) == {"t": 0}  # a tie: the lower class index
    ids = ["a1", "a2", "b1"]
    assert splits.mixed_groups(ids, [0, 1, 1], ["a", "a", "b"]) == {"a": ["a1", "a2"]}
