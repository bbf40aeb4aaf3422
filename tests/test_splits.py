"""ernjax.data.splits: stratified, subject-grouped, seeded splits and cross-validation folds."""

from collections import Counter

import pytest

from ernjax.data.splits import assign_splits, select_fold

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
