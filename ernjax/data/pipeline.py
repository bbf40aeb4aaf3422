"""Records -> device-ready batches with Grain: shuffling, augmentation, batching.

`train_iterator` gives an endless, per-epoch reshuffled, augmented stream whose position can be
checkpointed; `eval_iterator` sees every example exactly once, padding the last batch with
`valid=False` so the compiled step keeps one shape. Both give this process's share of each
global batch (global batch / process count), ready for `jax.make_array_from_process_local_data`.
The data layout they read comes from `ernjax.data.prepare`.

`DataPipeline` writes down what the trainer asks of its data (`ernjax.train.loop`'s `pipeline=`);
`GRAIN` is the real one, built from these functions, and tests pass in-memory stand-ins.
"""

from collections.abc import Iterator
from typing import Protocol, runtime_checkable

import grain.python as grain
import jax
import numpy as np
from scipy import ndimage

from ernjax.data import records as records_lib
from ernjax.data import spec as spec_lib
from ernjax.data.prepare import DataInfo, prepare


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
        return spec_lib.element(self._open[split][j])

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
    interpolation; background (zero) voxels stay zero under the intensity jitter. With
    `mask_channel` the last channel is the lesion mask (`config.data.mask_channel`): it moves
    with the image but keeps its 0/1 values (no intensity jitter).
    """

    def __init__(
        self, flip: bool, rotate_deg: float, scale: float, intensity: float, mask_channel=False
    ):
        self.flip, self.rotate_deg, self.scale, self.intensity = flip, rotate_deg, scale, intensity
        self.mask_channel = bool(mask_channel)

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
            if self.mask_channel:
                gain[-1], shift[-1] = 1.0, 0.0
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


def balanced_parts(parts, labels, num_classes: int, seed: int) -> tuple:
    """`parts` (one per example, class `labels`) with every class as frequent as the commonest.

    A rarer class's examples are repeated whole, then the remainder drawn without replacement
    (seeded), so no example comes more than once more often than another of its class. The
    sampler shuffles this list; an epoch stays `steps_per_epoch` batches, so a balanced run
    sees as many examples as a shuffled one.
    """
    labels = np.asarray(labels)
    target = np.bincount(labels, minlength=num_classes).max()
    rng, out = np.random.default_rng(seed), []
    for k in range(num_classes):
        own = np.flatnonzero(labels == k)
        if len(own):
            reps, rest = divmod(int(target), len(own))
            chosen = np.concatenate([np.tile(own, reps), rng.choice(own, rest, replace=False)])
            out += [parts[i] for i in chosen]
    return tuple(out)


def train_iterator(config, info: DataInfo, *, global_batch: int) -> grain.PyGrainDatasetIterator:
    """An endless stream of augmented training batches, reshuffled every epoch from config.seed.

    With `config.train.sampling="balanced"` the stream draws from `balanced_parts`.

    Returns:
      A Grain iterator (with get_state/set_state for checkpoints) of dicts: image float32
      [local_batch, *image_shape], label int32, subject_id str, valid bool.
    """
    parts = info.parts["train"]
    if config.train.sampling == "balanced":
        index = records_lib.open_records(info.records_dir).index["splits"]
        labels = [index[s]["label"][i] for s, i in parts]
        parts = balanced_parts(parts, labels, len(info.class_names), config.seed)
    source = _Source(info.records_dir, parts)
    if len(parts) < global_batch:
        raise ValueError(
            f"the training split has {len(parts)} examples, fewer than the "
            f"global batch {global_batch}: lower config.train.batch_size"
        )
    a = config.data.augment
    mask_channel = config.data.get("mask_channel", False)
    ops = [Augment(a.flip, a.rotate_deg, a.scale, a.intensity, mask_channel)] if a.enabled else []
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


# ----------------------------------------------------------------------------- the trainer's seam
@runtime_checkable
class CheckpointableIterator(Protocol):
    """An endless stream of batches whose position a checkpoint saves and restores.

    Grain's iterators are; `ernjax.checkpoints` saves them with Grain's Orbax handler, which
    calls `get_state` and `set_state`.
    """

    def __iter__(self): ...

    def __next__(self) -> dict: ...

    def get_state(self):
        """The position, JSON-able."""
        ...

    def set_state(self, state) -> None:
        """Moves to a position `get_state` gave."""
        ...


@runtime_checkable
class DataLayout(Protocol):
    """What the trainer reads of the data `prepare` found (`DataInfo` is one)."""

    image_shape: tuple[int, ...]  # per example, channels last
    class_names: tuple[str, ...]
    num_examples: dict[str, int]  # per split after fold selection; 0 or absent: no such split
    train_class_counts: tuple[int, ...]  # training examples per class
    train_subject_class_counts: tuple[int, ...]  # training subjects per class
    skipped: tuple[dict, ...]  # subjects left out under config.data.on_error="skip"

    def subject_ids(self, split: str) -> list[str]:
        """Subject of each example of `split`, in the order of `eval_iterator`."""
        ...


@runtime_checkable
class DataPipeline(Protocol):
    """The trainer's data seam: the data of a run, as batches of this process's share.

    Batches are dicts of numpy arrays with a leading axis of global batch / process count:
    "image" float32 [b, *image_shape], "label" int32, "valid" bool (False: padding), and
    "subject_id" str.
    """

    def prepare(self, config, workdir) -> DataLayout:
        """Makes the data of `config` ready under `workdir` (once) and says what it holds."""
        ...

    def steps_per_epoch(self, info, global_batch: int) -> int:
        """Train steps in one pass over the training split, >= 1."""
        ...

    def train_iterator(self, config, info, *, global_batch: int) -> CheckpointableIterator:
        """Endless, shuffled (and augmented) training batches from `config.seed`."""
        ...

    def eval_iterator(self, config, info, split: str, *, global_batch: int) -> Iterator[dict]:
        """Every example of `split` once, in subject_ids order; the last batch padded."""
        ...


class GrainPipeline:
    """`DataPipeline` over the records on disk: `prepare` and the Grain iterators above."""

    prepare = staticmethod(prepare)
    steps_per_epoch = staticmethod(steps_per_epoch)
    train_iterator = staticmethod(train_iterator)
    eval_iterator = staticmethod(eval_iterator)


GRAIN = GrainPipeline()  # what `train_and_evaluate` uses unless given another pipeline
