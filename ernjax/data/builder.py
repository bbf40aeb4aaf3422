"""TFDS builder: a NIfTI cohort -> patient-split, sharded array_record files.

Two kinds of example (the BuilderConfig's `kind`):
  slices2d   one example per lesion slice: an H x W x C image whose channels are chosen modalities
             (default T1 -> R, T2 -> G, T1c -> B; Gao 2020, Fig. 3a), label, subject_id, slice.
  volumes3d  one example per subject: a D x H x W x C volume (default T1, T1c, T2; Ying 2025),
             label, subject_id and the voxel-to-world affine of the volume's grid.

The BuilderConfig carries the `SampleSpec` (as a dict: `ernjax.data.spec`, which also gives the
features), the cohort folder and the worker count, so one builder serves any cohort;
`ernjax.data.records.build` gives each distinct spec and cohort its own directory and builds
atomically. Images are float16, zlib-compressed (no visible loss on [0, 1] data). Nothing here
imports TensorFlow.

Every subject is loaded once, in parallel worker processes (`ernjax.data.loading`), before the
split is made: a subject that fails to load (on_error="skip") is then simply not in the cohort
that is split, and a split that would lack a class stops the build with a message saying what to
change.
"""

import concurrent.futures as cf
import contextlib
import logging
import time
from pathlib import Path

import tensorflow_datasets as tfds

from ernjax.data import layouts, loading, split_file, splits
from ernjax.data.spec import SampleSpec
from ernjax.errors import InputError
from ernjax.progress import Meter

VERSION = tfds.core.Version("1.0.0")
# TFDS convention: the dataset's README.md, CITATIONS.bib and dummy_data/ live in its data_builders/
# package, which registers this builder under that package's name.
PACKAGE_DIR = Path(__file__).resolve().parents[2] / "data_builders" / "ernjax_mri"


class ErnjaxMriConfig(tfds.core.BuilderConfig):
    """A BuilderConfig carrying what the records are built from.

    Attributes:
      spec: `SampleSpec.to_dict()`, the settings that decide the examples.
      cohort_dir: the cohort folder (labels.csv + one folder per subject).
      build_workers: processes loading subjects (0 = the free cores if that pays: `_load_all`);
        the records are the same.
    """

    def __init__(self, *, spec: dict, cohort_dir: str, build_workers: int = 0, **kwargs):
        super().__init__(version=VERSION, **kwargs)
        self.spec, self.cohort_dir, self.build_workers = spec, cohort_dir, build_workers


def _default_config(kind: str, description: str) -> ErnjaxMriConfig:
    # The configs used on dummy_data/ (and the defaults of configs/ern.py and configs/resnet3d.py).
    slices = kind == "slices2d"
    spec = SampleSpec(
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
    )
    return ErnjaxMriConfig(
        name=kind,
        spec=spec.to_dict(),
        cohort_dir=str(PACKAGE_DIR / "dummy_data"),
        build_workers=1,
        description=description,
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

    name = "ernjax_mri"
    pkg_dir_path = PACKAGE_DIR
    VERSION = VERSION
    BUILDER_CONFIGS = [
        _default_config("slices2d", "One example per lesion slice, modalities fused as channels."),
        _default_config("volumes3d", "One example per subject, modalities as channels."),
    ]

    @property
    def spec(self) -> SampleSpec:
        """The SampleSpec of this builder's config."""
        return SampleSpec.from_config(self.builder_config.spec)

    # TFDS prints "Downloading and preparing dataset ..." and "... downloaded and prepared"
    # on every build: nothing is downloaded here, and records.build logs the build itself.
    def _log_download_bytes(self) -> None:
        pass

    def _log_download_done(self) -> None:
        pass

    _beam_build = None  # while a Beam build runs (ernjax.data.beam_build)

    def _download_and_prepare(self, dl_manager, download_config):
        run = super()._download_and_prepare
        if download_config.beam_runner is None and download_config.beam_options is None:
            return run(dl_manager, download_config)
        # A Beam runner or pipeline options: the subjects load in the pipeline's workers
        # (pip install -e ".[beam]").
        from ernjax.data import beam_build

        beam_build.prepare(self, run, dl_manager, download_config)

    def _info(self) -> tfds.core.DatasetInfo:
        return _LocalDatasetInfo(
            builder=self,
            description=self.builder_config.description,
            features=tfds.features.FeaturesDict(self.spec.features()),
            metadata=tfds.core.MetadataDict(),
            homepage="https://github.com/ernjax/ernjax",
        )

    def _split_generators(self, dl_manager):
        cfg, spec = self.builder_config, self.spec
        cohort = layouts.find(cfg.cohort_dir, spec)  # labels.csv + globs, or BIDS
        if not cohort.subjects:
            raise ValueError(f"cohort {cfg.cohort_dir}: no usable subject")
        labels_csv = layouts.labels_file(cfg.cohort_dir, spec)  # or participants.tsv
        # The groups, the split file and the split are checked before the (long) loading.
        groups = _groups(cohort.subjects, spec, labels_csv)
        fixed = split_file.read(spec.split.file, spec.split.folds) if spec.split.file else None
        _check_split(cohort.subjects, cohort.skipped, spec, labels_csv, groups, fixed)
        if self._beam_build is not None:  # the pipeline loads the subjects and splits them
            return self._beam_build.split_generators(cohort, labels_csv, groups, fixed)
        workers = int(cfg.build_workers)  # 0: chosen as the subjects load (_load_all)
        folder = Path(dl_manager.download_dir) / "subjects"
        loaded, skipped = _load_all(cohort.subjects, spec, folder, workers)
        # The split is made on the subjects that loaded, as if the skipped ones were not in the
        # cohort: dropping them after the split once left validation without its only necrosis
        # subject (AUC undefined) and scored a meaningless checkpoint.
        subjects = [x for x in cohort.subjects if x.subject_id in loaded]
        skipped = sorted(cohort.skipped + skipped, key=lambda x: x["subject_id"])
        _check_split(subjects, skipped, spec, labels_csv, groups, fixed)
        assignment = _assign(subjects, groups, spec, fixed)
        self.info.metadata["assignment"] = assignment
        self.info.metadata["skipped"] = skipped
        # The settings the records were built from, as they always were stored (a flat dict).
        self.info.metadata["data"] = {
            **cfg.spec,
            "cohort_dir": cfg.cohort_dir,
            "build_workers": cfg.build_workers,
        }
        by_split = {
            name: [
                loaded[x.subject_id] for x in subjects if assignment[x.subject_id]["split"] == name
            ]
            for name in ("train", "validation", "test")
        }
        return {name: self._generate_examples(files) for name, files in by_split.items() if files}

    def _generate_examples(self, files):
        for path in filter(None, files):
            for ex in loading.read_examples(path):
                key = ex["subject_id"] + (f"/{ex['slice']:05d}" if "slice" in ex else "")
                yield key, ex
            Path(path).unlink(missing_ok=True)  # written: free the disk as the build goes


def _groups(subjects, spec: SampleSpec, labels_csv: Path) -> dict[str, str]:
    """subject_id -> its group: the labels.csv `column` (config.data.group_column), or itself.

    Raises:
      InputError: no such column in labels.csv, or a subject with an empty cell there.
    """
    column = spec.group_column
    if not column:
        return {x.subject_id: x.subject_id for x in subjects}
    if subjects and column not in subjects[0].metadata:
        found = layouts.columns(labels_csv.parent, spec)  # the slice, centre columns too
        raise InputError(
            "",
            labels_csv,
            f"no column {column!r} (config.data.group_column); the columns are {found}",
        )
    for x in subjects:
        if not x.metadata[column]:
            raise InputError(
                x.subject_id,
                labels_csv,
                f"no {column} (config.data.group_column): give every subject its group (its "
                "own subject_id when no other subject shares it)",
            )
    return {x.subject_id: x.metadata[column] for x in subjects}


def _assign(subjects, groups: dict, spec: SampleSpec, fixed: dict | None) -> dict[str, dict]:
    """The split of the subjects: by `spec.split` and the groups, or the split file's."""
    s = spec.split
    ids = [x.subject_id for x in subjects]
    labels = [x.label for x in subjects]
    of = [groups[i] for i in ids]
    for group, members in splits.mixed_groups(ids, labels, of).items():
        logging.warning(
            "group %s (%s) holds subjects of different classes (%s): it is stratified by its "
            "majority label and kept in one split",
            group,
            spec.group_column,
            ", ".join(members),
        )
    if fixed is None:
        return splits.assign_splits(
            ids, labels, test=s.test, validation=s.validation, folds=s.folds, seed=s.seed, groups=of
        )
    return split_file.apply(
        fixed, ids, labels, of, validation=s.validation, folds=s.folds, seed=s.seed, path=s.file
    )


def _check_split(subjects, skipped, spec: SampleSpec, labels_csv: Path, groups, fixed) -> None:
    """InputError naming labels.csv when a split would lack a class (see splits.split_problem).

    With groups the classes count groups (patients), by their majority label. With a split file
    (`fixed`) its test and validation splits must each still hold every class after the
    subjects it lists but the cohort lacks are dropped (a split without a class has no AUC).
    """
    if fixed is not None:
        _check_file_split(subjects, spec, fixed)
        return
    ids = [x.subject_id for x in subjects]
    of = splits.group_labels([x.label for x in subjects], [groups[i] for i in ids])
    problem = splits.split_problem(
        list(of.values()),
        spec.classes,
        test=spec.split.test,
        validation=spec.split.validation,
        skipped=[x["subject_id"] for x in skipped],
        unit=f"patients ({spec.group_column})" if spec.group_column else "subjects",
    )
    if problem:
        raise InputError("", labels_csv, problem)


def _check_file_split(subjects, spec: SampleSpec, fixed: dict) -> None:
    """InputError naming the split file when its test or validation split lacks a class."""
    for split in ("validation", "test"):
        held = {x.label for x in subjects if fixed.get(x.subject_id, {}).get("split") == split}
        if held and (lacking := [c for k, c in enumerate(spec.classes) if k not in held]):
            raise InputError(
                "",
                spec.split.file,
                f"the {split} split of the file holds no {' or '.join(lacking)} subject of the "
                "cohort (a split without a class has no AUC): give it one in the file",
            )


def _load_all(
    subjects, spec: SampleSpec, folder: Path, workers: int
) -> tuple[dict[str, str], list[dict]]:
    """Loads every subject once, in parallel processes, into one file each under `folder`.

    Args:
      subjects: the cohort's Subjects, in order.
      spec: the SampleSpec of the examples.
      folder: where the files go (one .npz per subject).
      workers: processes loading subjects (1: the build process itself); 0: every free core,
        if the time of the first subjects, loaded here, says a pool pays (`loading`).

    Returns:
      ({subject_id: file} of the subjects that loaded, one {"subject_id", "path", "problem"}
      per subject skipped under on_error="skip"), in subject order.

    Raises:
      InputError: a subject that does not load, under on_error="raise" (the first in subject
        order; the subjects not started yet are not loaded).
    """
    folder.mkdir(parents=True, exist_ok=True)
    jobs = [(x, spec, str(folder / f"{i:05d}.npz")) for i, x in enumerate(subjects)]
    loaded, skipped = {}, []
    meter = Meter("records: subjects loaded", len(jobs), unit="subject")
    with meter, contextlib.closing(_outcomes(jobs, workers, meter)) as outcomes:
        for (subject, _, _), outcome in zip(jobs, outcomes, strict=True):
            if not isinstance(outcome, InputError):
                loaded[subject.subject_id] = outcome
                continue
            if spec.on_error != "skip":
                raise outcome
            logging.warning("skipping %s", outcome)
            skipped.append(
                {
                    "subject_id": outcome.subject or subject.subject_id,
                    "path": outcome.path,
                    "problem": outcome.problem,
                }
            )
    return loaded, skipped


def _outcomes(jobs, workers: int, meter: Meter):
    """Yields `loading.write_examples(*job)` or the InputError it raised, in job order.

    Jobs run here, one when its outcome is asked for (so an error stops the build before the
    next subject is loaded), or in a pool of `workers` processes (`_load_all` says which).
    `meter` counts each subject as it finishes, in whatever order the workers finish them.
    """
    first = 0
    if workers == 0:  # the default: time the first subjects here, then choose
        cores = loading.free_cores()
        first = len(jobs) if cores == 1 else min(loading.TIMED_SUBJECTS, len(jobs))
        if cores == 1:  # one core, or the others busy: a pool would only add its start-up
            logging.info("records: loading %d subjects with 1 workers (1 core free)", len(jobs))
        else:
            logging.info(
                "records: loading %d subjects (the first %d here, timed to choose the workers)",
                len(jobs),
                first,
            )
        took = 0.0
        for job in jobs[:first]:
            start = time.perf_counter()
            outcome = _outcome(job)
            took = time.perf_counter() - start
            meter.update()
            yield outcome
        workers = loading.workers_that_pay(cores, len(jobs) - first, took)
        if first < len(jobs):
            logging.info(
                "records: the other %d subjects with %d workers (%.2f s a subject here)",
                len(jobs) - first,
                workers,
                took,
            )
    else:
        logging.info(
            "records: loading %d subjects with %d workers", len(jobs), min(workers, len(jobs))
        )
    rest = jobs[first:]
    with loading.pool(min(workers, len(rest))) as pool:
        if pool is None:
            for job in rest:
                outcome = _outcome(job)
                meter.update()
                yield outcome
            return
        futures = [pool.submit(loading.write_examples, *job) for job in rest]
        for f in futures:
            # Runs in the pool's thread; a job cancelled (taken back, or at shutdown after an
            # error) is not done.
            f.add_done_callback(lambda f: f.cancelled() or meter.update())
        here = _while_starting(rest, futures, min(workers, len(rest)), meter)
        for i, job in enumerate(rest):
            yield here[i] if i in here else _outcome(job, futures[i])


def _while_starting(jobs, futures, workers: int, meter: Meter) -> dict:
    """Loads subjects here while the pool starts: {job index: outcome} of those loaded here.

    Workers take a second or more to start (`loading.WORKER_START_SECONDS`), in which this
    process would only wait. It takes jobs back from the end of the queue, one at a time, until
    a worker has finished one; the first `workers` jobs are always left to the workers.
    """
    here = {}
    for i in range(len(jobs) - 1, workers - 1, -1):
        if any(f.done() for f in futures[:workers]) or not futures[i].cancel():
            break
        here[i] = _outcome(jobs[i])
        meter.update()
    return here


def _outcome(job, future: cf.Future | None = None):
    """`loading.write_examples(*job)`, or the future's result, or the InputError raised."""
    try:
        return future.result() if future else loading.write_examples(*job)
    except InputError as e:
        return e
