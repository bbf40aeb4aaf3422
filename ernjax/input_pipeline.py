"""Records -> device-ready batches with Grain: shuffling, augmentation, batching, fold selection.

`prepare` makes the records (writing the synthetic cohort first when no cohort is configured);
`train_iterator` gives an endless, per-epoch reshuffled, augmented stream whose position can be
checkpointed; `eval_iterator` sees every example exactly once, padding the last batch with
`valid=False` so the compiled step keeps one shape. Both give this process's share of each
global batch (global batch / process count), ready for `jax.make_array_from_process_local_data`.
"""

import dataclasses
import logging
from collections.abc import Iterator
from pathlib import Path

import grain.python as grain
import jax
import numpy as np
from jax.experimental import multihost_utils
from scipy import ndimage

from ernjax import records as records_lib
from ernjax import splits

SPLITS = ("train", "validation", "test")


@dataclasses.dataclass(frozen=True)
class DataInfo:
    """What the trainer needs to know about the data (see `prepare`)."""

    records_dir: str
    kind: str  # "slices2d" | "volumes3d"
    image_shape: tuple[int, ...]  # per example, channels last
    class_names: tuple[str, ...]
    num_examples: dict[str, int]  # "train", "validation", "test" after fold selection
    train_class_counts: tuple[int, ...]
    parts: dict[str, tuple[tuple[str, int], ...]]  # split -> (stored split, record index) pairs
    # Subjects left out under on_error="skip": {"subject_id", "file" (relative to the cohort
    # folder), "problem"} each, for results.json and the printed summary.
    skipped: tuple[dict, ...] = ()

    def subject_ids(self, split: str) -> list[str]:
        """Subject of each example of `split`, in iteration order of `eval_iterator`."""
        index = records_lib.open_records(self.records_dir).index["splits"]
        return [index[s]["subject_id"][i] for s, i in self.parts[split]]


def cohort_dir(config, workdir) -> Path:
    """The configured cohort, or the synthetic one (written under WORKDIR on first use)."""
    d = config.data
    if d.cohort_dir:
        return Path(d.cohort_dir)
    from ernjax import phantoms

    s = d.synthetic
    return phantoms.write_cohort(
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
    """
    records_dir = config.data.records_dir or str(Path(workdir) / "records")
    if jax.process_index() == 0:
        cohort = cohort_dir(config, workdir)
        recs = records_lib.build(config.data, cohort, records_dir)
    if jax.process_count() > 1:
        # Process 0 writes the cohort and the records; the others then find them on a shared
        # file system (or, without one, build their own copy after the barrier).
        multihost_utils.sync_global_devices("ernjax: records built")
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


class _Source(grain.RandomAccessDataSource):
    """The examples of one (fold-selected) split; opens the shards lazily in each process."""

    def __init__(self, records_dir: str, parts):
        self._dir, self._parts, self._open = records_dir, tuple(parts), None

    def __len__(self) -> int:
        return len(self._parts)

    def __getitem__(self, i: int) -> dict:
        if self._open is None:
            recs = records_lib.open_records(self._dir)
            self._open = {s: recs.source(s) for s in {p[0] for p in self._parts}}
        split, j = self._parts[i]
        ex = self._open[split][j]
        return {
            "image": np.asarray(ex["image"], np.float32),
            "label": np.int32(ex["label"]),
            "subject_id": ex["subject_id"].decode(),
            "valid": np.bool_(True),
        }

    def __repr__(self) -> str:
        # Grain stores repr(source) in the iterator state and checks it on restore: keep it
        # stable across processes (no object address).
        return f"ErnjaxRecords({self._dir!r}, n={len(self._parts)})"

    def __getstate__(self):
        return {"_dir": self._dir, "_parts": self._parts, "_open": None}


class Augment(grain.RandomMapTransform):
    """Left-right flip, a small in-plane rotation and scaling, and per-channel intensity jitter.

    The same code serves 2D (H, W, C) and 3D (D, H, W, C) examples: the geometric part acts on
    the last two spatial axes (the axial plane), applied to every channel with linear
    interpolation; background (zero) voxels stay zero under the intensity jitter.
    """

    def __init__(self, flip: bool, rotate_deg: float, scale: float, intensity: float):
        self.flip, self.rotate_deg, self.scale, self.intensity = flip, rotate_deg, scale, intensity

    def random_map(self, element: dict, rng: np.random.Generator) -> dict:
        """Returns the element with an augmented image."""
        img = element["image"]
        if self.flip and rng.random() < 0.5:
            img = img[..., ::-1, :]  # W is the patient's left-right axis
        if self.rotate_deg or self.scale:
            img = _rotate_scale(
                img,
                rng.uniform(-self.rotate_deg, self.rotate_deg),
                rng.uniform(1 - self.scale, 1 + self.scale),
            )
        if self.intensity:
            c = img.shape[-1]
            gain = 1 + rng.uniform(-self.intensity, self.intensity, size=c)
            shift = rng.uniform(-self.intensity, self.intensity, size=c) / 2
            img = np.where(img != 0, img * gain + shift, 0.0)
        return {**element, "image": np.ascontiguousarray(img, np.float32)}


def _rotate_scale(img: np.ndarray, degrees: float, zoom: float) -> np.ndarray:
    """Rotates and scales the last two spatial axes about the centre (output -> input map)."""
    t = np.deg2rad(degrees)
    n = img.ndim - 1
    matrix = np.eye(n)
    matrix[-2:, -2:] = np.array([[np.cos(t), -np.sin(t)], [np.sin(t), np.cos(t)]]) / zoom
    centre = (np.array(img.shape[:n]) - 1) / 2
    offset = centre - matrix @ centre
    out = np.empty_like(img)
    for ch in range(img.shape[-1]):
        out[..., ch] = ndimage.affine_transform(
            img[..., ch], matrix, offset, order=1, mode="constant", cval=0.0, prefilter=False
        )
    return out


def local_batch_size(global_batch: int) -> int:
    """Returns the share of the global batch fed by this process (it must divide evenly)."""
    n = jax.process_count()
    if global_batch % n:
        raise ValueError(f"global batch {global_batch} is not divisible by {n} processes")
    return global_batch // n


def steps_per_epoch(info: DataInfo, global_batch: int) -> int:
    """Train steps in one pass over the training split (last partial batch dropped), >= 1."""
    return max(1, info.num_examples["train"] // global_batch)


def train_iterator(config, info: DataInfo, *, global_batch: int) -> grain.PyGrainDatasetIterator:
    """An endless stream of augmented training batches, reshuffled every epoch from config.seed.

    Returns:
      A Grain iterator (with get_state/set_state for checkpoints) of dicts: image float32
      [local_batch, *image_shape], label int32, subject_id str, valid bool.
    """
    source = _Source(info.records_dir, info.parts["train"])
    if len(source) < global_batch:
        raise ValueError(
            f"the training split has {len(source)} examples, fewer than the "
            f"global batch {global_batch}: lower config.train.batch_size"
        )
    a = config.data.augment
    ops = [Augment(a.flip, a.rotate_deg, a.scale, a.intensity)] if a.enabled else []
    loader = grain.DataLoader(
        data_source=source,
        sampler=grain.IndexSampler(
            len(source),
            shard_options=grain.ShardByJaxProcess(drop_remainder=True),
            shuffle=True,
            num_epochs=None,
            seed=config.seed,
        ),
        operations=ops + [grain.Batch(local_batch_size(global_batch), drop_remainder=True)],
        worker_count=config.data.worker_count,
    )
    return iter(loader)


def eval_iterator(config, info: DataInfo, split: str, *, global_batch: int) -> Iterator[dict]:
    """Every example of `split` once, in index order, in fixed-size batches.

    The last batch is padded (repeating example 0 with valid=False); each process gets its
    contiguous share of every global batch, so all processes run the same number of steps.
    """
    del config  # evaluation has no augmentation; the signature mirrors train_iterator
    source = _Source(info.records_dir, info.parts[split])
    local = local_batch_size(global_batch)
    start = jax.process_index() * local
    for b in range(0, len(source), global_batch):
        rows = []
        for i in range(b + start, b + start + local):
            ex = source[i if i < len(source) else 0]
            rows.append({**ex, "valid": np.bool_(i < len(source))})
        yield {k: np.stack([r[k] for r in rows]) for k in rows[0]}
