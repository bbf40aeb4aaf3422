"""The HTML report of a finished run: `python -m ernjax.report --workdir=W`.

`python -m ernjax.main` writes W/report.html at the end of every run; this command writes it again
for any finished run (a fold of `crossval`, a run of `compare`), from the run's own outputs and the
config its checkpoints were saved with (`ernjax.evaluate.run_report`, which does the work).
`--readers=FILE` sets that config's `eval.readers_csv`: readers' decisions given after the run
(`ernjax.evaluate.readers`).
"""

from absl import app, flags

from ernjax import cli, inference
from ernjax.evaluate import run_report

FLAGS = flags.FLAGS


def main(argv):
    """Entry point (absl): the run's saved config -> `run_report.write`."""
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    config = inference.load_run(FLAGS.workdir).config
    if FLAGS.readers:  # the run's config.eval.readers_csv, given after the run
        with config.unlocked():
            config.eval.readers_csv = FLAGS.readers
    path = run_report.write(config, FLAGS.workdir, gradcam_subjects=FLAGS.gradcam_subjects)
    print(f"report: {path}", flush=True)


if __name__ == "__main__":
    flags.DEFINE_string("workdir", None, "A finished run's directory (results.json inside).")
    flags.DEFINE_integer("gradcam_subjects", 2, "Test subjects shown with Grad-CAM (0: none).")
    flags.DEFINE_string(
        "readers",
        "",
        "Readers' decisions CSV (reader,subject_id,decision[,confidence]): readers.md and the "
        "readers on the subject ROC, as --config.eval.readers_csv gives a run.",
    )
    flags.mark_flag_as_required("workdir")
    cli.run(main)
