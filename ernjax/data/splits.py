"""Patient-level splits: stratified by label, grouped by patient, seeded; plus k folds.

The unit of the split is a group: by default each subject is its own group; with
`config.data.group_column` (say patient_id in labels.csv) the subjects (scans, sessions) of one
patient form one group, and a group goes whole to one split and one fold, so no patient is ever
in two splits. Fractions and folds then count groups (patients), not scans.
A group is stratified by its majority label (a tie goes to the lower class index): a patient may
have a necrosis at one scan and a recurrence at a later one, which is no error in the data;
`mixed_groups` names such groups so the builder can warn about them.

Rules:
- Within each class the groups are sorted by ID and shuffled with `seed`, so the result depends
  only on the (subject, label, group) triples and the seed, not on the input order.
- Test: round(test * n) groups of a class of n, at least 1 when n >= 2 (every class that can
  spare one is tested; Gao 2020 split 80:20 by patient), never all of a class.
- Validation: round(validation * m) of the m remaining, at least 1 when m >= 2.
- A class of 1 group goes to train. Rounding is half-up per class; with tiny classes (BraTS
  2018: 4 LGG of 21) the fractions are only approximate, by design.
- Folds: the non-test groups of each class are dealt round-robin into `folds` folds, continuing
  from class to class, so folds are stratified and differ in size by at most one. When some
  group holds several subjects, the non-test groups are dealt by subject counts instead
  (`_balanced_folds`, StratifiedGroupKFold's greedy rule), so that folds of patients with
  different numbers of scans still hold about 1/folds of every class's subjects.
  `select_fold(k)` then validates on fold k and trains on the other folds; the test set never
  moves.
Whether a class reaches a split depends only on the class's size, so `split_problem` can say
before any assignment which split would lack which class (a split without a class has no AUC).
"""

import itertools
import math
from collections import Counter, defaultdict
from collections.abc import Sequence

import numpy as np


def _count(fraction: float, n: int, minimum: int) -> int:
    """round(fraction * n) half up, at least `minimum`, at most n - 1 (0 when fraction is 0)."""
    if fraction <= 0 or n == 0:
        return 0
    return int(min(n - 1, max(minimum, math.floor(fraction * n + 0.5))))


def _sizes(n: int, test: float, validation: float) -> dict[str, int]:
    """How many of a class of n subjects go to test, validation and train."""
    n_test = _count(test, n, minimum=1 if n >= 2 else 0)
    n_val = _count(validation, n - n_test, minimum=1 if n - n_test >= 2 else 0)
    return {"train": n - n_test - n_val, "validation": n_val, "test": n_test}


def assign_splits(
    subject_ids: Sequence[str],
    labels: Sequence[int],
    *,
    test: float,
    validation: float,
    folds: int,
    seed: int,
    groups: Sequence[str] | None = None,
) -> dict[str, dict]:
    """Assigns every subject to train/validation/test and to a cross-validation fold.

    Args:
      subject_ids: unique subject IDs.
      labels: the class of each subject (None for unlabeled subjects: one more stratum).
      test: fraction of each class's groups held out for testing.
      validation: fraction of each class's remaining groups used for validation.
      folds: number of cross-validation folds over the non-test groups (>= 1).
      seed: the shuffling seed.
      groups: the group (patient) of each subject; None: each subject is its own group (the
        assignment is then the same as before groups existed). A group is stratified by its
        majority label (`group_labels`).

    Returns:
      subject_id -> {"split": "train" | "validation" | "test", "fold": k in 0..folds-1, -1
      for test subjects, "group": the subject's group}; the subjects of a group share split
      and fold.

    Raises:
      ValueError: duplicate subject IDs, lengths that differ, or fractions out of range.
    """
    groups = list(subject_ids) if groups is None else list(groups)
    if not len(subject_ids) == len(labels) == len(groups):
        raise ValueError(
            f"{len(subject_ids)} subject IDs but {len(labels)} labels and {len(groups)} groups"
        )
    if len(set(subject_ids)) != len(subject_ids):
        raise ValueError("subject IDs must be unique: a subject is the unit of the split")
    if not (0 <= test < 1 and 0 <= validation < 1 and folds >= 1):
        raise ValueError(f"need 0 <= test, validation < 1 and folds >= 1: {test}, {validation}")
    of_group = group_labels(labels, groups)
    per_group = _assign_units(
        list(of_group), list(of_group.values()), test, validation, folds, seed
    )
    if len(of_group) < len(groups):
        # Groups of several subjects: dealing groups round-robin would leave folds of very
        # different sizes and class mixes, so they are dealt by subject counts instead.
        non_test = [g for g in of_group if per_group[g]["split"] != "test"]
        for g, k in _balanced_folds(non_test, labels, groups, folds, seed).items():
            per_group[g]["fold"] = k
    return {sid: {**per_group[g], "group": g} for sid, g in zip(subject_ids, groups, strict=True)}


def _assign_units(units, labels, test, validation, folds, seed) -> dict[str, dict]:
    """The split rule of the module docstring on units (groups) with one label each."""
    rng = np.random.default_rng(seed)
    out = {}
    dealt = 0  # the round-robin continues across classes so folds stay balanced in size
    for label in sorted(set(labels), key=lambda x: (x is None, x)):
        ids = sorted(u for u, lab in zip(units, labels, strict=True) if lab == label)
        ids = [ids[i] for i in rng.permutation(len(ids))]
        n = len(ids)
        sizes = _sizes(n, test, validation)
        n_test, n_val = sizes["test"], sizes["validation"]
        for i, uid in enumerate(ids):
            if i < n_test:
                out[uid] = {"split": "test", "fold": -1}
            else:
                split = "validation" if i < n_test + n_val else "train"
                out[uid] = {"split": split, "fold": (dealt + i - n_test) % folds}
        dealt += n - n_test
    return out


def _balanced_folds(units, labels, groups, folds: int, seed: int) -> dict[str, int]:
    """Deals whole groups into folds so that each fold holds about 1/folds of every class.

    The groups, shuffled with `seed`, go largest first (stable) to the fold where the spread of
    every class's share across folds is smallest after adding it (ties: the fold with fewer
    subjects, then the lower index): the greedy rule of scikit-learn's StratifiedGroupKFold,
    written out here so that a study's folds do not move with a library version.

    Args:
      units: the groups to deal.
      labels: every subject's class.
      groups: every subject's group (subjects of groups not in `units` are ignored).
      folds: the number of folds.
      seed: the shuffling seed.

    Returns:
      group -> fold.
    """
    strata = sorted(set(labels), key=lambda x: (x is None, x))
    counts = {g: np.zeros(len(strata)) for g in units}
    for label, g in zip(labels, groups, strict=True):
        if g in counts:
            counts[g][strata.index(label)] += 1
    order = [units[i] for i in np.random.default_rng(seed).permutation(len(units))]
    order.sort(key=lambda g: -counts[g].sum())
    total = np.maximum(sum(counts.values(), np.zeros(len(strata))), 1)
    in_fold = np.zeros((folds, len(strata)))
    out = {}
    for g in order:
        spread = []
        for k in range(folds):
            trial = in_fold.copy()
            trial[k] += counts[g]
            # rounded: a tie must not depend on the last bits of a float sum
            score = round(float(np.std(trial / total, axis=0).mean()), 9)
            spread.append((score, in_fold[k].sum(), k))
        k = min(spread)[2]
        in_fold[k] += counts[g]
        out[g] = k
    return out


def group_labels(labels: Sequence, groups: Sequence[str]) -> dict:
    """The label each group's subjects have most often (a tie: the lower class index, None last).

    Returns:
      group -> label, the groups in the order of their first subject.
    """
    counts = defaultdict(Counter)
    for label, group in zip(labels, groups, strict=True):
        counts[group][label] += 1
    order = lambda x: (x is None, x)  # noqa: E731
    return {g: min(c, key=lambda lab, c=c: (-c[lab], *order(lab))) for g, c in counts.items()}


def mixed_groups(
    subject_ids: Sequence[str], labels: Sequence, groups: Sequence[str]
) -> dict[str, list[str]]:
    """The groups whose subjects have different labels: group -> its subjects, sorted."""
    members, seen = defaultdict(list), defaultdict(set)
    for sid, label, group in zip(subject_ids, labels, groups, strict=True):
        members[group].append(sid)
        seen[group].add(label)
    return {g: sorted(members[g]) for g in sorted(members) if len(seen[g]) > 1}


def split_problem(
    labels: Sequence[int],
    class_names: Sequence[str],
    *,
    test: float,
    validation: float,
    skipped: Sequence[str] = (),
    unit: str = "subjects",
) -> str:
    """Which split would lack which class, the class sizes and what to change; "" if none would.

    Every split with a fraction above 0 (train always) must hold every class: without one its
    AUC is undefined, so the checkpoint choice (validation) or the result (test) means nothing.

    Args:
      labels: the class index of each subject that will be split.
      class_names: the classes, in class-index order.
      test: `config.data.split.test`.
      validation: `config.data.split.validation`.
      skipped: IDs of the subjects left out (under on_error="skip"), named in the message.
      unit: what a label counts, in words: "subjects", or the groups (patients) when subjects
        are grouped (`labels` is then one label per group, `group_labels`).

    Returns:
      One paragraph for an error message, or "".
    """
    counts = [list(labels).count(k) for k in range(len(class_names))]
    wanted = [s for s, f in (("train", 1), ("validation", validation), ("test", test)) if f > 0]
    lacking = {}  # class -> the splits it would not reach
    for name, n in zip(class_names, counts, strict=True):
        sizes = _sizes(n, test, validation)
        if missing := [s for s in wanted if sizes[s] == 0]:
            lacking[name] = missing
    if not lacking:
        return ""
    what = "; ".join(
        f"the {_words(s)} split{'s' if len(s) > 1 else ''} would hold no {c} subject"
        for c, s in lacking.items()
    )
    have = _words([f"{n} {c}" for c, n in zip(class_names, counts, strict=True)])
    gone = f" to split ({len(skipped)} skipped: {', '.join(skipped)})" if skipped else ""
    need = next(
        n for n in itertools.count(1) if all(_sizes(n, test, validation)[s] for s in wanted)
    )
    return (
        f"{what}: the cohort has {have} {unit}{gone}, and with config.data.split.test={test} "
        f"and config.data.split.validation={validation} a class needs at least {need} {unit}. "
        + _remedy(lacking, counts, class_names, bool(skipped))
    )


def _words(items) -> str:
    """Joins words as in a sentence: a; a and b; a, b and c."""
    items = list(items)
    return ", ".join(items[:-1]) + " and " + items[-1] if len(items) > 1 else "".join(items)


def _remedy(lacking: dict, counts, class_names, skipped: bool) -> str:
    """What the user can change, for `split_problem`."""
    empty = [c for c, n in zip(class_names, counts, strict=True) if n == 0]
    if empty:
        return (
            f"No subject has the label {' or '.join(map(repr, empty))}: check "
            "config.data.classes against the labels in labels.csv."
        )
    fixes = [f"add {_words(lacking)} subjects" + (" or fix the skipped ones" if skipped else "")]
    splits = {s for missing in lacking.values() for s in missing}
    if "validation" in splits:
        fixes.append(
            "set config.data.split.validation=0 to train without a validation split (then also "
            "config.train.select_checkpoint='last')"
        )
    if "test" in splits:
        fixes.append("set config.data.split.test=0 and cross-validate (python -m ernjax.crossval)")
    return "To fix: " + "; or ".join(fixes) + "."


def select_fold(assignment: dict[str, dict], fold: int) -> dict[str, str]:
    """Maps each subject to its split for one cross-validation fold.

    Args:
      assignment: the output of `assign_splits`.
      fold: k >= 0 validates on fold k and trains on every other non-test subject; -1 keeps
        the splits as assigned. Test subjects stay in test either way.

    Returns:
      subject_id -> "train" | "validation" | "test".
    """
    if fold < 0:
        return {s: a["split"] for s, a in assignment.items()}
    if fold not in {a["fold"] for a in assignment.values()}:
        raise ValueError(f"fold {fold} has no subject (folds are 0..max assigned)")
    return {
        s: "test" if a["split"] == "test" else "validation" if a["fold"] == fold else "train"
        for s, a in assignment.items()
    }
