"""Trains and evaluates a model: `python -m ernjax.main --config=configs/ern.py --workdir=DIR`.

Overrides work the ml_collections way, e.g. `--config.train.num_epochs=3`,
`--config.data.cohort_dir=/data/cohort`. Rerunning the same command resumes from the latest
checkpoint in WORKDIR/checkpoints. At the end, WORKDIR/report.html shows the run on one page
(`ernjax.evaluate.run_report`; `python -m ernjax.report --workdir=DIR` writes it again).
"""

import contextlib
import sys
import tempfile
from pathlib import Path

import jax
from absl import app, flags, logging
from jax.experimental import multihost_utils
from ml_collections import config_flags

from ernjax import cli
from ernjax.evaluate import run_report
from ernjax.train import loop

FLAGS = flags.FLAGS
flags.DEFINE_string("workdir", "workdir", "Directory for records, checkpoints, logs and results.")
flags.DEFINE_bool("distributed", False, "Call jax.distributed.initialize() (multi-host, SLURM).")
flags.DEFINE_string("coordinator_address", None, "host:port of process 0 (None: from SLURM).")
flags.DEFINE_integer("num_processes", None, "Processes in the job (None: from SLURM).")
flags.DEFINE_integer("process_id", None, "This process's rank (None: from SLURM).")
config_flags.DEFINE_config_file(
    "config", "configs/ern.py", "Training configuration file.", lock_config=True
)


def main(argv):
    """Entry point (absl)."""
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    if FLAGS.distributed:
        initialize_distributed(FLAGS.coordinator_address, FLAGS.num_processes, FLAGS.process_id)
    logging.info(
        "JAX process %d/%d, devices: %s", jax.process_index(), jax.process_count(), jax.devices()
    )
    made = not Path(FLAGS.workdir).exists()
    check_writable(FLAGS.workdir)
    try:
        loop.train_and_evaluate(FLAGS.config, FLAGS.workdir)
    except BaseException:
        if made:  # a run refused before it wrote anything leaves no empty WORKDIR behind
            with contextlib.suppress(OSError):
                Path(FLAGS.workdir).rmdir()  # only when empty: never what a run wrote
        raise
    if jax.process_index() == 0:
        # Grad-CAM restores the checkpoint, which Orbax does with every process of the job, and
        # the others are done: a multi-process run's report has none (`python -m ernjax.report`).
        cams = 2 if jax.process_count() == 1 else 0
        path = run_report.write(FLAGS.config, FLAGS.workdir, gradcam_subjects=cams)
        print(f"report: {path}", flush=True)


def initialize_distributed(coordinator_address, num_processes, process_id) -> None:
    """Joins the multi-process job (one process per host) and connects its collectives.

    Args:
      coordinator_address: host:port of process 0 (None: from SLURM).
      num_processes: processes in the job (None: from SLURM).
      process_id: this process's rank (None: from SLURM).
    """
    # Gloo gives the CPU backend cross-process collectives (GPUs use NCCL regardless).
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(coordinator_address, num_processes, process_id)
    # Gloo connects the processes at their first collective and waits only 30 s there for the
    # others (later collectives wait 30 min): that first one comes now, while the processes are
    # in step (the backend's topology exchange waits for all of them), and not after work that
    # one process does alone (process 0 builds the records: over 60 s on a loaded machine).
    multihost_utils.sync_global_devices("ernjax: processes joined")


def check_writable(workdir: str) -> None:
    """Creates WORKDIR if needed; exits with one line if it cannot be written (before any work).

    A read-only or foreign workdir would otherwise fail only at the first write (the records,
    or the checkpoints after the records were built), with a traceback.
    """
    try:
        Path(workdir).mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=workdir):
            pass
    except OSError as e:
        sys.exit(
            f"ernjax: cannot write to the work folder {Path(workdir).absolute()} ({e.strerror}); "
            "choose another --workdir or make this one writable"
        )


if __name__ == "__main__":
    cli.run(main)
