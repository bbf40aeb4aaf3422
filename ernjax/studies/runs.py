"""One run of a study: a network or the radiomics baseline, on the data of the whole study.

Every study (crossval, compare, repeat) goes through here, so they agree on three things:
  - `shared_data`: the runs read one cohort and one records folder under the study's WORKDIR
    (the synthetic cohort is written once, to WORKDIR/synthetic_cohort), so the records build
    once and every run sees the same patients in the same splits;
  - `Runner`: `config.model.name == radiomics.MODEL_NAME` fits the radiomics baseline
    (`radiomics.run`, with one feature table per cohort shared by the study's radiomics runs),
    any other name trains a network (`loop.train_and_evaluate`); both write the same
    predictions_<split>.csv and results.json;
  - resuming: a run that finished with the very same config (WORKDIR/run_config.json) is not
    redone, its results.json is read back; any other run resumes as `train_and_evaluate` does.
"""

import dataclasses
import json
from pathlib import Path

from absl import logging

from ernjax import atomic
from ernjax.baselines import radiomics
from ernjax.data import check, prepare
from ernjax.data.spec import SampleSpec
from ernjax.train import loop

# The config a study's run finished with, beside its results.json: a rerun of the study skips
# the run only when its config is the same (another config trains, resumes or re-evaluates).
RUN_CONFIG = "run_config.json"


def shared_data(config, workdir):
    """A copy of `config` whose data are the study's: one cohort and one records folder.

    `config.data.records_dir` "" becomes WORKDIR/records. `config.data.cohort_dir` "" (the
    synthetic cohort) becomes WORKDIR/synthetic_cohort, written now if not there: left "", each
    run would write its own copy under its own folder, and the records, whose name hashes the
    cohort's path and file times, would build once per run.
    """
    workdir = Path(workdir)
    c = config.copy_and_resolve_references()
    # Before the synthetic cohort is written; the classes a run may take from labels.csv are
    # then in every run's config already, as its saved run_config.json will hold them.
    check.check_config(c, split_counts=False)
    with c.unlocked():
        c.data.records_dir = config.data.records_dir or str(workdir / "records")
        if not config.data.cohort_dir:
            c.data.cohort_dir = str(prepare.cohort_dir(config, workdir))
    return c


def finished(config, workdir) -> dict | None:
    """results.json of the run in WORKDIR if it finished with `config`, else None."""
    workdir = Path(workdir)
    saved, results = workdir / RUN_CONFIG, workdir / "results.json"
    if not (saved.is_file() and results.is_file()):
        return None
    if json.loads(saved.read_text(encoding="utf-8")) != json.loads(config.to_json()):
        logging.info("%s finished with another config: it runs again", workdir)
        return None
    return json.loads(results.read_text(encoding="utf-8"))


class Runner:
    """Runs a study's runs one after the other (see the module docstring).

    One Runner per study: it keeps the radiomics feature tables it computed, one per cohort and
    records layout, so the folds of a cross-validation, or the channel sets of a comparison,
    compute the features once.
    """

    def __init__(self):
        self._tables: dict[str, radiomics.FeatureTable] = {}

    def __call__(self, config, workdir) -> dict:
        """Trains or fits the run of `config` in WORKDIR, or reads back its finished results.

        Returns:
          The run's flat results, as its results.json holds them (NaN read back as None).
        """
        workdir = Path(workdir)
        if (done := finished(config, workdir)) is not None:
            logging.info("%s finished with this config: its results.json is reused", workdir)
            return done
        if config.model.name == radiomics.MODEL_NAME:
            results = radiomics.run(config, workdir, table=self._table(config, workdir))
        else:
            results = loop.train_and_evaluate(config, workdir)
        # After results.json: a run stopped in between has no RUN_CONFIG and is redone.
        atomic.write_text(workdir / RUN_CONFIG, config.to_json(indent=1))
        return results

    def _table(self, config, workdir) -> radiomics.FeatureTable:
        """The radiomics features of `config`'s records, computed on first use."""
        key = _features_key(config)
        if key not in self._tables:
            self._tables[key] = radiomics.cohort_features(config, workdir)
        return self._tables[key]


def _features_key(config) -> str:
    """What a radiomics feature table depends on: the cohort, the records and the sampling.

    The channels are left out: the features cover every modality, and the records of two
    channel sets hold the same subjects, splits and lesion slices in the same order (the split
    depends on the subjects, labels and `config.data.split`, the slices on the mask), so a
    comparison over channel sets computes the features once. `config.data.fold` is not part of
    the spec either: a table holds every fold.
    """
    spec = SampleSpec.from_config(config.data)
    spec = dataclasses.replace(spec, channels=tuple(m for m, _ in spec.modalities))
    key = [spec.to_dict(), config.data.cohort_dir, config.data.records_dir]
    return json.dumps(key, sort_keys=True)
