"""TFDS builder: a NIfTI cohort -> patient-split, sharded array_record files.

Two kinds of example (the BuilderConfig's `kind`):
  slices2d   one example per lesion slice: an H x W x C image whose channels are chosen modalities
             (default T1 -> R, T2 -> G, T1c -> B; Gao 2020, Fig. 3a), label, subject_id, slice.
  volumes3d  one example per subject: a D x H x W x C volume (default T1, T1c, T2; Ying 2025),
             label, subject_id and the voxel-to-world affine of the volume's grid.

The cohort and every geometry setting travel in the BuilderConfig (`data`, the `config.data` dict),
so one builder serves any cohort; `ernjax.records.build` gives each distinct setting its own
directory and builds atomically. Images are float16, zlib-compressed (no visible loss on [0, 1]
data). Nothing here imports TensorFlow.
"""

import concurrent.futures as cf
import logging
import multiprocessing
import os

import ml_collections
import numpy as np
import tensorflow_datasets as tfds

VERSION = tfds.core.Version("1.0.0")


class ErnjaxMriConfig(tfds.core.BuilderConfig):
    """A BuilderConfig carrying the `config.data` settings (a plain dict) it was built from."""

    def __init__(self, *, data: dict, **kwargs):
        super().__init__(version=VERSION, **kwargs)
        self.data = data


def _default_data(kind: str) -> dict:
    # The configs used on dummy_data/ (and the defaults of configs/ern.py and configs/resnet3d.py).
    slices = kind == "slices2d"
    return dict(
        cohort_dir=os.path.join(os.path.dirname(__file__), "dummy_data"),
        kind=kind,
        modalities={m: f"*_{m}.nii.gz" for m in ("t1", "t1c", "t2", "flair")},
        mask_pattern="*_mask.nii.gz",
        slices_column="",
        classes=["necrosis", "recurrence"],
        channels=["t1", "t2", "t1c"] if slices else ["t1", "t1c", "t2"],  # Gao / Ying
        reference="t1" if slices else "t1c",
        spacing=[],
        shape=[16, 16] if slices else [8, 16, 16],
        normalize="minmax",
        on_error="raise",
        split=dict(test=0.2, validation=0.2, folds=2, seed=0),
        build_workers=1,
    )


class _LocalDatasetInfo(tfds.core.DatasetInfo):
    """DatasetInfo that never looks for pre-computed info in TFDS's public bucket.

    ernjax datasets are private cohorts. TFDS's lookup would find nothing and leave one empty
    `tmp*tfds` folder in the system temp dir per build.
    """

    def initialize_from_bucket(self) -> None:
        return None


class Builder(tfds.core.GeneratorBasedBuilder):
    """Fused multimodal 2D lesion slices or multichannel 3D volumes from a NIfTI cohort."""

    VERSION = VERSION
    BUILDER_CONFIGS = [
        ErnjaxMriConfig(
            name="slices2d",
            data=_default_data("slices2d"),
            description="One example per lesion slice, modalities fused as channels.",
        ),
        ErnjaxMriConfig(
            name="volumes3d",
            data=_default_data("volumes3d"),
            description="One example per subject, modalities as channels.",
        ),
    ]

    def _info(self) -> tfds.core.DatasetInfo:
        data = self.builder_config.data
        shape = tuple(data["shape"]) + (len(data["channels"]),)
        features = {
            "image": tfds.features.Tensor(shape=shape, dtype=np.float16, encoding="zlib"),
            "label": tfds.features.ClassLabel(names=list(data["classes"])),
            "subject_id": tfds.features.Text(),
        }
        if data["kind"] == "slices2d":
            features["slice"] = np.int32
        else:
            features["affine"] = tfds.features.Tensor(shape=(4, 4), dtype=np.float32)
        return _LocalDatasetInfo(
            builder=self,
            description=self.builder_config.description,
            features=tfds.features.FeaturesDict(features),
            metadata=tfds.core.MetadataDict(),
            homepage="https://github.com/ernjax/ernjax",
        )

    def _split_generators(self, dl_manager):
        del dl_manager  # everything is local
        from ernjax import cohort as cohort_lib
        from ernjax import splits

        data = self.builder_config.data
        cohort = cohort_lib.find_subjects(
            data["cohort_dir"],
            data["modalities"],
            mask_pattern=data["mask_pattern"],
            slices_column=data["slices_column"],
            classes=data["classes"],
            on_error=data["on_error"],
        )
        if not cohort.subjects:
            raise ValueError(f"cohort {data['cohort_dir']}: no usable subject")
        s = data["split"]
        assignment = splits.assign_splits(
            [x.subject_id for x in cohort.subjects],
            [x.label for x in cohort.subjects],
            test=s["test"],
            validation=s["validation"],
            folds=s["folds"],
            seed=s["seed"],
        )
        self.info.metadata["assignment"] = assignment
        self.info.metadata["skipped"] = list(cohort.skipped)
        self.info.metadata["data"] = data
        by_split = {
            name: [x for x in cohort.subjects if assignment[x.subject_id]["split"] == name]
            for name in ("train", "validation", "test")
        }
        return {name: self._generate_examples(subs) for name, subs in by_split.items() if subs}

    def _generate_examples(self, subjects):
        data = self.builder_config.data
        workers = int(data.get("build_workers") or os.cpu_count() or 1)
        for subject, examples, problem in _map_subjects(subjects, data, workers):
            if problem:
                logging.warning("skipping %s", problem)
                self.info.metadata["skipped"].append(
                    {"subject_id": subject.subject_id, "path": "", "problem": problem}
                )
                continue
            for ex in examples:
                key = subject.subject_id + (f"/{ex['slice']:05d}" if "slice" in ex else "")
                yield key, ex


def subject_examples(subject, data: dict):
    """Returns (examples, problem) for one subject; problem is set only under on_error="skip"."""
    from ernjax import samples
    from ernjax.errors import InputError

    cfg = ml_collections.ConfigDict(data)
    try:
        if data["kind"] == "slices2d":
            return samples.slice_examples(subject, cfg), ""
        return [samples.volume_example(subject, cfg)], ""
    except InputError as e:
        if data["on_error"] != "skip":
            raise
        return [], str(e)


def _map_subjects(subjects, data, workers):
    """Yields (subject, examples, problem) in subject order, loading in parallel processes."""
    if workers <= 1 or len(subjects) <= 1:
        for subject in subjects:
            yield (subject, *subject_examples(subject, data))
        return
    # spawn, not fork: the parent may already run JAX threads, which fork can deadlock.
    ctx = multiprocessing.get_context("spawn")
    with cf.ProcessPoolExecutor(min(workers, len(subjects)), mp_context=ctx) as pool:
        results = pool.map(subject_examples, subjects, [data] * len(subjects))
        for subject, (examples, problem) in zip(subjects, results, strict=True):
            yield subject, examples, problem
