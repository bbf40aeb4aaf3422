"""Cohort -> records -> data layout: the one call a run makes before it trains.

`prepare` writes the synthetic cohort when no cohort is configured, builds the records (process 0
first, the others after a barrier), writes the split to WORKDIR/split.csv (`split_file`), and
selects the fold; it returns a `DataInfo`, which is all the trainer and the Grain pipeline need
to know about the data.
"""

import dataclasses
import logging
from pathlib import Path

import jax
import numpy as np
import orbax.checkpoint as ocp

from ernjax.data import check, split_file, splits, synthetic
from ernjax.data import records as records_lib
from ernjax.evaluate import readers

SPLITS = ("train", "validation", "test")
# How long the other processes wait for process 0 to write the cohort and build the records
# (preprocessing included): a day. If process 0 fails instead, jax.distributed's shutdown timeout
# fails the barrier, and ends both processes, within about 10 minutes.
_RECORDS_TIMEOUT_S = 24 * 3600


@dataclasses.dataclass(frozen=True)
class DataInfo:
    """What the trainer needs to know about the data (see `prepare`)."""

    records_dir: str
    kind: str  # "slices2d" | "volumes3d"
    image_shape: tuple[int, ...]  # per example, channels last
    class_names: tuple[str, ...]
    num_examples: dict[str, int]  # "train", "validation", "test" after fold selection
    train_class_counts: tuple[int, ...]  # training examples (slices or volumes) per class
    train_subject_class_counts: tuple[int, ...]  # training subjects (patients) per class
    parts: dict[str, tuple[tuple[str, int], ...]]  # split -> (stored split, record index) pairs
    # Subjects left out under on_error="skip": {"subject_id", "file" (relative to the cohort
    # folder), "problem"} each, for results.json and the printed summary.
    skipped: tuple[dict, ...] = ()

    def class_counts(self) -> dict[str, dict[str, list[int]]]:
        """Subjects and images per split and class: {split: {"subjects": [..], "images": [..]}}."""
        index = records_lib.open_records(self.records_dir).index["splits"]
        out = {}
        for split in SPLITS:
            parts = self.parts.get(split, ())
            labels = [index[p]["label"][i] for p, i in parts]
            of_subject = {index[p]["subject_id"][i]: index[p]["label"][i] for p, i in parts}
            per_subject = list(of_subject.values())
            out[split] = {
                "subjects": [per_subject.count(k) for k in range(len(self.class_names))],
                "images": [labels.count(k) for k in range(len(self.class_names))],
            }
        return out

    def slices(self, split: str) -> list[int] | None:
        """Slice index of each example of `split` (slices2d), in `eval_iterator` order.

        None for volumes, and for records indexed before the index held slices.
        """
        index = records_lib.open_records(self.records_dir).index["splits"]
        if not all("slice" in index[s] for s, _ in self.parts[split]):
            return None
        return [index[s]["slice"][i] for s, i in self.parts[split]]

    def subject_ids(self, split: str) -> list[str]:
        """Subject of each example of `split`, in iteration order of `eval_iterator`."""
        index = records_lib.open_records(self.records_dir).index["splits"]
        return [index[s]["subject_id"][i] for s, i in self.parts[split]]


def cohort_dir(config, workdir) -> Path:
    """The configured cohort, or the synthetic one (written under WORKDIR on first use)."""
    d = config.data
    if d.cohort_dir:
        return Path(d.cohort_dir)
    s = d.synthetic
    return synthetic.write_cohort(
        Path(workdir) / "synthetic_cohort",
        subjects=s.subjects,
        seed=s.seed,
        difficulty=s.difficulty,
        recurrence_fraction=s.recurrence_fraction,
        slice_thickness=s.slice_thickness,
    )


def prepare(config, workdir) -> DataInfo:
    """Writes the synthetic cohort and builds the records if needed; returns the data layout.

    Args:
      config: the full config (reads `config.data`).
      workdir: the run's working directory.

    Returns:
      A DataInfo with splits chosen by `config.data.fold` (-1: train/validation as built;
      k >= 0: fold k of the non-test subjects validates, the other folds train).

    Raises:
      check.ConfigError: a setting that does not fit the cohort's labels.csv, before any work.
    """
    # Before the synthetic cohort and the records (minutes to hours): classes, positive class,
    # channels against labels.csv; may set config.data.classes (`ernjax.data.check`).
    check.check_config(config)
    readers.check_setting(config)  # a bad readers' file fails now, not after training
    records_dir = config.data.records_dir or str(Path(workdir) / "records")
    split_csv = split_file.output_path(workdir, config.data.split.get("file", ""))
    if jax.process_index() == 0:
        cohort = cohort_dir(config, workdir)
        recs = records_lib.build(config.data, cohort, records_dir)
        # The one place a run's split is written: what a study publishes, and feeds back as
        # config.data.split.file to keep it when subjects are added or removed.
        split_file.write(split_csv, recs.index["assignment"])
    if jax.process_count() > 1:
        # Process 0 writes the cohort and the records; the others then find them on a shared
        # file system (or, without one, build their own copy after the barrier).
        wait_for_all_processes("ernjax: records built", _RECORDS_TIMEOUT_S)
    if jax.process_index() != 0:
        cohort = cohort_dir(config, workdir)
        recs = records_lib.build(config.data, cohort, records_dir)
    parts = select_parts(recs.index, config.data.fold)
    labels = {s: [recs.index["splits"][p]["label"][i] for p, i in parts[s]] for s in SPLITS}
    n_classes = len(recs.index["class_names"])
    info = DataInfo(
        records_dir=str(recs.path),
        kind=recs.index["kind"],
        image_shape=tuple(recs.index["image_shape"]),
        class_names=tuple(recs.index["class_names"]),
        num_examples={s: len(parts[s]) for s in SPLITS},
        train_class_counts=tuple(
            int(np.sum(np.equal(labels["train"], k))) for k in range(n_classes)
        ),
        train_subject_class_counts=_subject_counts(recs.index["splits"], parts["train"], n_classes),
        parts=parts,
        skipped=tuple(_skip_entry(x, cohort) for x in recs.index["skipped"]),
    )
    logging.info(
        "data: %s examples %s, train class counts %s",
        info.kind,
        info.num_examples,
        dict(zip(info.class_names, info.train_class_counts, strict=True)),
    )
    return info


def _subject_counts(stored: dict, parts, n_classes: int) -> tuple[int, ...]:
    """Subjects per class among the examples `parts` ((stored split, index) pairs)."""
    label_of = {stored[p]["subject_id"][i]: stored[p]["label"][i] for p, i in parts}
    labels = list(label_of.values())
    return tuple(labels.count(k) for k in range(n_classes))


def wait_for_all_processes(name: str, timeout_s: int) -> None:
    """A barrier of the job's coordination service, for work that one process does alone.

    Not a collective (`multihost_utils.sync_global_devices`): XLA's CPU collectives give up on
    a peer after 30 min, and process 0 preprocessing a real cohort can take longer.

    Args:
      name: the barrier's name, the same in every process and unique in the run.
      timeout_s: how long a process waits for the others.
    """
    ocp.multihost.get_barrier_sync_fn()(key=name, timeout_ms=timeout_s * 1000)


def _skip_entry(skip: dict, cohort: Path) -> dict:
    """A records index skip entry as outputs show it: the file relative to the cohort folder."""
    path, root = Path(skip["path"]), Path(cohort).resolve()
    file = str(path.relative_to(root)) if path.is_relative_to(root) else skip["path"]
    return {"subject_id": skip["subject_id"], "file": file, "problem": skip["problem"]}


def select_parts(index: dict, fold: int) -> dict[str, tuple[tuple[str, int], ...]]:
    """Maps each split to (stored split, record index) pairs, applying the fold selection.

    Raises:
      ValueError: `fold` >= 0 names a fold that holds no subject.
    """
    stored = index["splits"]
    pairs = [(s, i) for s in SPLITS for i in range(len(stored.get(s, {}).get("label", [])))]
    if fold < 0:
        return {s: tuple(p for p in pairs if p[0] == s) for s in SPLITS}
    split_of = splits.select_fold(index["assignment"], fold)
    subject = lambda p: stored[p[0]]["subject_id"][p[1]]  # noqa: E731
    return {s: tuple(p for p in pairs if split_of[subject(p)] == s) for s in SPLITS}
