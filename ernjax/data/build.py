"""Builds a run's records ahead of it, on this machine or through an Apache Beam runner.

    python -m ernjax.data.build --config=configs/ern.py --workdir=W \
        [--beam_runner=DirectRunner] [--beam_options="--direct_num_workers=2 ..."]

The records go where `python -m ernjax.main` (and `crossval`, `compare`) with the same config and
WORKDIR look for them (`config.data.records_dir`, else WORKDIR/records), under the same name, so
the run then finds them and does not build again. Without a Beam flag the build is the run's own
(subjects loaded in `config.data.build_workers` processes); with one, the subjects load in the
workers of that runner (`ernjax.data.beam_build`; pip install -e ".[beam]"), into the same
records. The cohort (or the synthetic one, written under WORKDIR when no cohort is configured)
and the records folder must then be readable and writable by every worker at the same path.
"""

import importlib.util
import shlex
from pathlib import Path

from absl import app, flags
from ml_collections import config_flags

from ernjax import cli
from ernjax.data import check, prepare
from ernjax.data import records as records_lib

FLAGS = flags.FLAGS
flags.DEFINE_string(
    "workdir", "workdir", "The run's directory (its records go to WORKDIR/records)."
)
flags.DEFINE_string(
    "beam_runner",
    "",
    "Apache Beam runner that loads the subjects (DirectRunner, FnApiRunner, DataflowRunner, "
    "FlinkRunner, SparkRunner, PortableRunner...); empty: this process's own workers.",
)
flags.DEFINE_string(
    "beam_options",
    "",
    'Beam pipeline options, as one string: "--direct_num_workers=2 '
    '--direct_running_mode=multi_processing", "--flink_master=HOST:8081 ...".',
)
config_flags.DEFINE_config_file(
    "config", "configs/ern.py", "Training configuration file.", lock_config=True
)


def main(argv):
    """Entry point (absl)."""
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    config, workdir = FLAGS.config, FLAGS.workdir
    beam = bool(FLAGS.beam_runner or FLAGS.beam_options)
    options = None
    if beam:
        if importlib.util.find_spec("apache_beam") is None:
            raise app.UsageError(
                "--beam_runner and --beam_options need Apache Beam: pip install -e '.[beam]'"
            )
        from apache_beam.options.pipeline_options import PipelineOptions

        options = PipelineOptions(shlex.split(FLAGS.beam_options))
    check.check_config(config)  # before the (long) build, as a run does
    records_dir = config.data.records_dir or str(Path(workdir) / "records")
    recs = records_lib.build(
        config.data,
        prepare.cohort_dir(config, workdir),
        records_dir,
        beam_runner=FLAGS.beam_runner or None,
        beam_options=options,
    )
    counts = {s: len(v["label"]) for s, v in recs.index["splits"].items()}
    print(f"records: {recs.path} (examples per split: {counts})", flush=True)


if __name__ == "__main__":
    cli.run(main)
