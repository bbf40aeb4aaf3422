"""The records build through Apache Beam: the subjects load in the workers of a Beam runner.

`pip install -e ".[beam]"`; then a `tfds.download.DownloadConfig` with a `beam_runner` or
`beam_options` (`records.build(..., beam_runner=, beam_options=)`, `python -m ernjax.data.build
--beam_runner=...`) builds through here instead of the build process's own worker pool.

One pipeline, in TFDS's Beam mode (`_generate_examples` as a `beam.PTransform` per split):

  subject indices | Reshuffle | Load (a worker loads one subject: its examples, and its outcome)
  outcomes | ToList | Split (one step: the split of the subjects that loaded, as `Builder` makes it)
  examples | per split, the subjects the split holds (the Split step as a side input) | TFDS writer

The examples carry the keys of the in-process build and TFDS's Beam writer orders records by the
same hash of the key, so both builds give the same records in the same order (and the same bytes:
tests/test_beam_build.py). The split is made after the loading, on the subjects that loaded, so
on_error="skip" gives the in-process build's split too; the skipped subjects go to the metadata
as there. The splits themselves (train, validation, test) are named before the pipeline runs,
from the split of every subject found: should skipped subjects empty one or fill another, the
build stops and says so (only possible with a split file).

Under on_error="raise", a worker that cannot load its subject writes the error to the build's
folder before it fails; the pipeline then stops and the build raises that `InputError` (subject,
file, problem), the first in subject order of those that failed before the runner stopped.

The build's folder is `<data dir>/ernjax-beam` (removed when the build ends): the subject list
the workers read, their errors and the split. The data dir is where TFDS's Beam writer puts the
shards from the workers, so it already has to be one the driver and every worker can reach; so
do the cohort's files.
"""

import json
import logging
import pickle

try:
    import apache_beam as beam
except ImportError as e:  # the default install has no Beam
    raise ImportError(
        "building the records with Apache Beam needs its extra: pip install -e '.[beam]'"
    ) from e
from etils import epath

from ernjax.data import builder as builder_lib
from ernjax.data import samples
from ernjax.errors import InputError

SPLITS = ("train", "validation", "test")
FOLDER = "ernjax-beam"  # in the data dir, while the build runs
_JOB, _DECISION, _ERRORS = "job.pkl", "split.json", "errors"


def prepare(builder, run, dl_manager, download_config) -> None:
    """`Builder._download_and_prepare` under Beam: `run(dl_manager, download_config)` (TFDS's).

    Raises:
      InputError: a subject that does not load (on_error="raise"), or a split that the skipped
        subjects leave without a class, as the in-process build words it.
    """
    build = BeamBuild(builder, download_config)
    builder._beam_build = build  # read by Builder._split_generators
    try:
        run(dl_manager, download_config)
    except Exception as e:
        error = build.error()
        build.folder.rmtree(missing_ok=True)
        if error is None:
            raise
        raise error from e  # one line (errors.one_line_errors); the runner's error as its cause
    finally:
        builder._beam_build = None
    build.finish()


class BeamBuild:
    """One Beam build of a `Builder`: the split generators, then the metadata or the error."""

    def __init__(self, builder, download_config):
        self.builder = builder
        self.runner = download_config.beam_runner
        # During download_and_prepare, data_dir is TFDS's staging folder for this version.
        self.folder = epath.Path(builder.data_dir) / FOLDER

    def split_generators(self, cohort, labels_csv, groups, fixed) -> dict:
        """`Builder._split_generators` under Beam, from the cohort found and checked there.

        Returns:
          {split: beam.PTransform of (key, example)}, for the splits that hold subjects.
        """
        b, spec = self.builder, self.builder.spec
        cfg = b.builder_config
        # The split of every subject found: the split itself when none is skipped (always under
        # on_error="raise"), and which splits there are.
        assignment = builder_lib._assign(cohort.subjects, groups, spec, fixed)
        names = [s for s in SPLITS if any(a["split"] == s for a in assignment.values())]
        self.folder.mkdir(parents=True, exist_ok=True)
        # The workers read the subjects from a file: in the pipeline's graph a biobank's subject
        # list would pass a runner's limit (Dataflow's is 10 MB).
        job = dict(
            spec=spec,
            subjects=cohort.subjects,
            cohort_skipped=cohort.skipped,
            labels_csv=labels_csv,
            groups=groups,
            fixed=fixed,
            assignment=assignment,
            splits=names,
        )
        (self.folder / _JOB).write_bytes(pickle.dumps(job))
        logging.info(
            "records: loading %d subjects in a Beam pipeline (%s)",
            len(cohort.subjects),
            f"runner {self.runner}" if self.runner else "the runner of the pipeline options",
        )
        # The settings the records were built from, as the in-process build stores them.
        self.data = {**cfg.spec, "cohort_dir": cfg.cohort_dir, "build_workers": cfg.build_workers}
        stage = _Loaded(str(self.folder), len(cohort.subjects))
        return {name: _Split(stage, name) for name in names}

    def finish(self) -> None:
        """After the pipeline: the split and the skipped subjects into the metadata."""
        decision = json.loads((self.folder / _DECISION).read_text())
        metadata = self.builder.info.metadata  # in the in-process build's order
        metadata.update(assignment=decision["assignment"], skipped=decision["skipped"])
        metadata["data"] = self.data
        self.folder.rmtree(missing_ok=True)

    def error(self) -> InputError | None:
        """The InputError a worker reported (the first in subject order), if any."""
        folder = self.folder / _ERRORS
        reports = sorted(folder.iterdir(), key=lambda p: p.name) if folder.exists() else []
        if not reports:
            return None
        return InputError(**json.loads(reports[0].read_text()))


class _Loaded:
    """The loading stage, shared by the splits: built once, by the first split that asks."""

    def __init__(self, folder: str, n: int):
        self.folder, self.n = folder, n
        self._out = None

    def get(self, pipeline):
        """(examples keyed by subject_id, the Split step's decision as a singleton side input)."""
        if self._out is None:
            # Each split's transform is applied to the pipeline root by TFDS; the stage they
            # share is made inside the first one's and read by the others (its PCollections
            # belong to the same pipeline).
            loaded = (
                pipeline
                | "Subjects" >> beam.Create(range(self.n))
                | "Spread" >> beam.Reshuffle()  # one subject per work item, across the workers
                | "Load" >> beam.ParDo(_Load(self.folder)).with_outputs(_OUTCOME, main="examples")
            )
            decision = (
                loaded[_OUTCOME]
                | "Outcomes" >> beam.combiners.ToList()
                | "Split" >> beam.Map(_decide, folder=self.folder)
            )
            self._out = loaded.examples, beam.pvalue.AsSingleton(decision)
        return self._out


class _Split(beam.PTransform):
    """The (key, example) pairs of one split."""

    def __init__(self, stage: _Loaded, name: str):
        super().__init__()
        self.stage, self.split = stage, name

    def expand(self, pbegin):
        examples, decision = self.stage.get(pbegin.pipeline)
        return (
            examples
            | "InSplit" >> beam.Filter(_in_split, split=self.split, decision=decision)
            | "KeyExample" >> beam.Values()
        )


def _in_split(item, split: str, decision: dict) -> bool:
    subject_id, _ = item
    return decision["assignment"][subject_id]["split"] == split


_OUTCOME = "outcome"


class _Load(beam.DoFn):
    """Loads one subject (by its index): its (subject_id, (key, example)) pairs, and its outcome.

    The outcome (tagged output "outcome") is (index, None) when the subject loaded, or
    (index, {"subject_id", "path", "problem"}) when it was skipped (on_error="skip").
    """

    def __init__(self, folder: str):
        super().__init__()
        self.folder = folder

    def setup(self):
        self.job = pickle.loads((epath.Path(self.folder) / _JOB).read_bytes())
        self.loaded = beam.metrics.Metrics.counter("ernjax", "subjects_loaded")
        self.skipped = beam.metrics.Metrics.counter("ernjax", "subjects_skipped")

    def process(self, index: int):
        spec = self.job["spec"]
        subject = self.job["subjects"][index]
        try:
            examples = samples.examples(subject, spec)
        except InputError as e:
            if spec.on_error != "skip":
                _report(self.folder, f"load-{index:08d}", e)
                raise
            logging.warning("skipping %s", e)
            self.skipped.inc()
            skip = {"subject_id": e.subject or subject.subject_id, "path": e.path}
            yield beam.pvalue.TaggedOutput(_OUTCOME, (index, {**skip, "problem": e.problem}))
            return
        self.loaded.inc()
        yield beam.pvalue.TaggedOutput(_OUTCOME, (index, None))
        for ex in examples:
            yield subject.subject_id, (example_key(ex), ex)


def example_key(ex: dict) -> str:
    """The example's TFDS key, as `Builder._generate_examples` makes it (the records' order)."""
    return ex["subject_id"] + (f"/{ex['slice']:05d}" if "slice" in ex else "")


def _decide(outcomes: list, folder: str) -> dict:
    """The split of the subjects that loaded, as `Builder._split_generators` makes it.

    Writes it to the build's folder (for `BeamBuild.finish`) and returns it (the side input
    of the splits): {"assignment": {subject_id: {...}}, "skipped": [...]}.
    """
    job = pickle.loads((epath.Path(folder) / _JOB).read_bytes())
    gone = dict(sorted(o for o in outcomes if o[1] is not None))
    try:
        if not gone:
            subjects, assignment = job["subjects"], job["assignment"]
            skipped = sorted(job["cohort_skipped"], key=lambda x: x["subject_id"])
        else:  # as builder._split_generators after _load_all
            subjects = [x for i, x in enumerate(job["subjects"]) if i not in gone]
            skipped = sorted(job["cohort_skipped"] + list(gone.values()), key=_subject_id)
            args = (job["spec"], job["labels_csv"], job["groups"], job["fixed"])
            builder_lib._check_split(subjects, skipped, *args)
            assignment = builder_lib._assign(subjects, job["groups"], job["spec"], job["fixed"])
            now = [s for s in SPLITS if any(a["split"] == s for a in assignment.values())]
            if now != job["splits"]:
                raise InputError(
                    "",
                    job["spec"].split.file or job["labels_csv"],
                    f"with the {len(gone)} subjects skipped the splits are {now}, not "
                    f"{job['splits']} as the pipeline was built for: build these records "
                    "without Beam, or fix or remove the skipped subjects",
                )
    except InputError as e:
        _report(folder, "split", e)
        raise
    decision = {"assignment": assignment, "skipped": skipped}
    (epath.Path(folder) / _DECISION).write_text(json.dumps(decision))
    return decision


def _subject_id(skip: dict) -> str:
    return skip["subject_id"]


def _report(folder: str, name: str, error: InputError) -> None:
    """Leaves the error where the driver finds it: a runner re-raises it reworded, or as text."""
    out = epath.Path(folder) / _ERRORS
    out.mkdir(parents=True, exist_ok=True)
    parts = {"subject": error.subject, "path": error.path, "problem": error.problem}
    (out / f"{name}.json").write_text(json.dumps(parts))
