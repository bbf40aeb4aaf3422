"""The example schema and what decides the examples: one frozen `SampleSpec` from `config.data`.

A `SampleSpec` holds every `config.data` setting that changes what the records hold (which files
are read, how they are sampled, which subjects go to which split), and nothing else. Its whole
content is hashed into the records' name (`ernjax.data.records.dataset_name`), so a setting that
changes the examples cannot be left out of the cache key: it is a field here, or it does not
reach the examples. The spec also owns the schema of one example: its keys, the TFDS features
the builder declares (`features`), the dict the samples give (`example`), the element the input
pipeline yields (`element`) and the part of it that goes to the devices (`DEVICE_KEYS`).

The `config.data` fields that are NOT in the spec, and why (tests/test_spec.py checks that every
field of `config.data` is in one list or the other):
  cohort_dir     where the cohort is: the records' name hashes its resolved path and a
                 fingerprint of its files instead (`records.dataset_name`);
  synthetic      the synthetic cohort's settings change its files, hence that fingerprint;
  preprocess     offline (`python -m ernjax.preprocess`): its output is a cohort like any other;
  records_dir    where the records go, not what they hold;
  build_workers  how many processes build them (the same records with any number);
  fold           chosen when the records are read (`prepare.select_parts`), not when written;
  augment        applied by the input pipeline on every read;
  worker_count   Grain's reading processes.
"""

import dataclasses
import json
from collections.abc import Mapping

import numpy as np

KINDS = ("slices2d", "volumes3d")
LAYOUTS = ("patterns", "bids")  # config.data.layout (ernjax.data.layouts)
ROIS = ("brain", "mask", "centre")  # config.data.roi (ernjax/defaults.py says what each is)
# The ROI settings, and their values before they existed: at these values they are left out of
# the records' name (`hashed`), so records built before keep their name.
ROI_DEFAULTS = dict(
    roi="brain", roi_size_mm=(64.0, 64.0, 64.0), centre_column="", mask_channel=False
)
MASK_CHANNEL = "mask"  # the name of the appended mask channel (`SampleSpec.channel_names`)
NOT_IN_SPEC = (
    "cohort_dir",
    "synthetic",
    "preprocess",
    "records_dir",
    "build_workers",
    "fold",
    "augment",
    "worker_count",
)
# What the input pipeline yields per example: the stored image, label and subject, and "valid"
# (False on the padding that fills a last evaluation batch); of those, what goes to the devices
# (the subject ids stay on the host, for subject-wise scoring and error messages).
ELEMENT_KEYS = ("image", "label", "subject_id", "valid")
DEVICE_KEYS = ("image", "label", "valid")


def _pick(cls, data) -> dict:
    """The values of the dataclass `cls`'s fields in `data` (a mapping or a ConfigDict).

    A field with a default may be missing (the ROI fields, in the settings of records and runs
    from before they existed).
    """
    fields = dataclasses.fields(cls)
    has_default = {f.name for f in fields if f.default is not dataclasses.MISSING}
    return {f.name: data[f.name] for f in fields if f.name in data or f.name not in has_default}


@dataclasses.dataclass(frozen=True)
class SplitSpec:
    """`config.data.split`: the held-out fractions, the cross-validation folds and their seed."""

    test: float
    validation: float
    folds: int
    seed: int
    # A study's split file (subject_id,group,split,fold: ernjax.data.split_file); "" = none.
    # The records' name hashes the file's content, not this path (`records.dataset_name`).
    file: str = ""

    def __post_init__(self):
        casts = (("test", float), ("validation", float), ("folds", int), ("seed", int))
        for name, cast in (*casts, ("file", str)):
            object.__setattr__(self, name, cast(getattr(self, name)))


@dataclasses.dataclass(frozen=True)
class BidsSpec:
    """`config.data.bids` less its queries (those are the spec's `modalities`, `mask_pattern`)."""

    label_column: str = "diagnosis"  # participants.tsv column of the labels
    session: str = "first"  # "first", "last", "all" or a session label (ernjax.data.bids)
    mask_dir: str = "derivatives/*"  # folder (a glob, relative to the cohort) of the masks
    run: str = ""  # "", "first" or "last": which of several runs (ernjax.data.bids)

    def __post_init__(self):
        for f in dataclasses.fields(self):
            object.__setattr__(self, f.name, str(getattr(self, f.name)))


@dataclasses.dataclass(frozen=True)
class SampleSpec:
    """Every `config.data` setting that changes the records (the fields as in ernjax/defaults.py).

    Frozen and hashable; sequences are tuples, `modalities` a tuple of (name, glob) pairs in
    config order (the order the cohort is checked in; the records' name ignores it). The
    settings that are not here are listed, with the reason, in the module docstring.
    """

    kind: str
    modalities: tuple[tuple[str, str], ...]
    mask_pattern: str
    slices_column: str
    classes: tuple[str, ...]
    channels: tuple[str, ...]
    reference: str
    spacing: tuple[float, ...]
    shape: tuple[int, ...]
    normalize: str
    on_error: str
    split: SplitSpec
    roi: str = ROI_DEFAULTS["roi"]
    roi_size_mm: tuple[float, ...] = ROI_DEFAULTS["roi_size_mm"]
    centre_column: str = ROI_DEFAULTS["centre_column"]
    mask_channel: bool = ROI_DEFAULTS["mask_channel"]
    group_column: str = ""  # labels.csv column whose equal values split together ("" = none)
    # "bids": the cohort is BIDS (`bids` says how), and `modalities` / `mask_pattern` hold the
    # BIDS queries of config.data.bids instead of globs (`from_config`).
    layout: str = "patterns"
    bids: BidsSpec = BidsSpec()

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"data.kind {self.kind!r}: expected one of {KINDS}")
        if self.layout not in LAYOUTS:
            raise ValueError(f"data.layout {self.layout!r}: expected one of {LAYOUTS}")
        if self.roi not in ROIS:
            raise ValueError(f"data.roi {self.roi!r}: expected one of {ROIS}")
        if len(self.roi_size_mm) != 3 or min(float(s) for s in self.roi_size_mm) <= 0:
            raise ValueError(f"data.roi_size_mm {self.roi_size_mm}: expected 3 sizes (x, y, z) > 0")
        split = (
            self.split
            if isinstance(self.split, SplitSpec)
            else SplitSpec(**_pick(SplitSpec, self.split))
        )
        values = dict(
            modalities=tuple((m, p) for m, p in dict(self.modalities).items()),
            classes=tuple(self.classes),
            channels=tuple(self.channels),
            spacing=tuple(float(s) for s in self.spacing),
            shape=tuple(int(n) for n in self.shape),
            split=split,
            bids=self.bids
            if isinstance(self.bids, BidsSpec)
            else BidsSpec(**_pick(BidsSpec, self.bids)),
            roi_size_mm=tuple(float(s) for s in self.roi_size_mm),
            mask_channel=bool(self.mask_channel),
        )
        for name, value in values.items():
            object.__setattr__(self, name, value)  # frozen: only __post_init__ may normalize

    @classmethod
    def from_config(cls, data) -> "SampleSpec":
        """The spec of `config.data`.

        Args:
          data: `config.data` (a ConfigDict), a dict with its keys (such as `to_dict()` or the
            records' stored settings; other keys are ignored), or a SampleSpec (returned as is).

        Returns:
          The SampleSpec.

        Raises:
          KeyError: a field of the spec is missing from `data`.
          ValueError: an unknown `kind`.
        """
        if isinstance(data, cls):
            return data
        values = _pick(cls, data)
        queries = data["bids"] if "bids" in data else {}
        if values.get("layout") == "bids" and "modalities" in queries:
            # config.data itself (not a stored spec): the BIDS queries are the modalities.
            values["modalities"] = dict(queries["modalities"])
            values["mask_pattern"] = str(queries["mask"])
        return cls(**values)

    def to_dict(self) -> dict:
        """The spec as plain JSON values (lists, `modalities` and `split` as dicts).

        Returns:
          A dict that `from_config` turns back into an equal spec: what the records' name
          hashes, what the TFDS BuilderConfig carries and what the records' metadata stores.
        """
        d = dataclasses.asdict(self)
        d["modalities"] = dict(self.modalities)
        return json.loads(json.dumps(d))

    def hashed(self) -> dict:
        """`to_dict` less the fields added later, where at their defaults: what the name hashes.

        Those are the ROI fields, `group_column`, `layout`, `bids` and `split.file`. Every
        other value is kept, so that any change of any field changes the name, while the
        default settings keep the name they had before those fields existed.
        """
        d = self.to_dict()
        later = {**ROI_DEFAULTS, "group_column": "", "layout": "patterns", "bids": BidsSpec()}
        for name, default in later.items():
            if getattr(self, name) == default:
                del d[name]
        if not self.split.file:
            del d["split"]["file"]
        return d

    @property
    def channel_names(self) -> tuple[str, ...]:
        """The stored image's channels, in order: `channels`, then "mask" with `mask_channel`."""
        return (*self.channels, MASK_CHANNEL) if self.mask_channel else self.channels

    @property
    def image_shape(self) -> tuple[int, ...]:
        """The stored image's shape: `shape` + (channels,), channels last (the mask one too)."""
        return (*self.shape, len(self.channel_names))

    @property
    def example_keys(self) -> tuple[str, ...]:
        """The keys of one example, in order.

        image, label, subject_id, then what places the example in its subject: the slice's D
        index (slices2d) or the volume's voxel-to-world affine (volumes3d).
        """
        return ("image", "label", "subject_id", "slice" if self.kind == "slices2d" else "affine")

    def features(self) -> dict:
        """The TFDS features of one example, keyed as `example_keys`.

        Images are float16 Tensors, zlib-compressed: an `Image` feature would encode through
        TensorFlow, which ernjax never imports.
        """
        # Imported here: the records build's worker processes import this module and never
        # need TFDS (half a second each; ernjax.data.loading).
        import tensorflow_datasets as tfds

        where = (
            np.int32
            if self.kind == "slices2d"
            else tfds.features.Tensor(shape=(4, 4), dtype=np.float32)
        )
        values = (
            tfds.features.Tensor(shape=self.image_shape, dtype=np.float16, encoding="zlib"),
            tfds.features.ClassLabel(names=list(self.classes)),
            tfds.features.Text(),
            where,
        )
        return dict(zip(self.example_keys, values, strict=True))

    def example(self, image, label: int, subject_id: str, where) -> dict:
        """One example as the builder stores it, keyed as `example_keys`.

        Args:
          image: (H, W, C) for slices2d or (D, H, W, C) for volumes3d; stored as float16.
          label: the class index (-1 for an unlabeled subject, in prediction only).
          subject_id: the subject's ID.
          where: the slice's D index (slices2d) or the volume's 4x4 affine (volumes3d).

        Returns:
          {"image": float16, "label": int, "subject_id": str, "slice": int | "affine": float32}.
        """
        where = int(where) if self.kind == "slices2d" else np.asarray(where, np.float32)
        values = (np.asarray(image, np.float16), int(label), str(subject_id), where)
        return dict(zip(self.example_keys, values, strict=True))


def element(record: Mapping) -> dict:
    """One record, as the TFDS data source decodes it -> one element of the input pipeline.

    Returns:
      {"image": float32, "label": int32, "subject_id": str, "valid": True}, keyed as
      `ELEMENT_KEYS`.
    """
    values = (
        np.asarray(record["image"], np.float32),
        np.int32(record["label"]),
        record["subject_id"].decode(),
        np.bool_(True),
    )
    return dict(zip(ELEMENT_KEYS, values, strict=True))
