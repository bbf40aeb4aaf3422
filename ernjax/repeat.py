"""One run repeated over training seeds, with the mean and spread of its metrics.

    python -m ernjax.repeat --config=configs/ern.py --workdir=W --seeds=0,1,2 [--with_radiomics]

Trains seed s (`config.seed`; the split stays) in W/seed_<s> on W's shared records (reruns
resume, finished seeds are not retrained), then writes W/repeat.md, repeat.csv and repeat.json:
mean, SD and min-max across seeds of the test and validation metrics, each seed's CIs, and the
radiomics baseline fitted once with --with_radiomics (`ernjax.studies.repeat`, which does the work).
"""

from absl import app, flags
from ml_collections import config_flags

from ernjax import cli
from ernjax.studies import repeat

FLAGS = flags.FLAGS


def main(argv):
    """Entry point (absl): flags -> `studies.repeat.run`."""
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    repeat.run(FLAGS.config, FLAGS.workdir, FLAGS.seeds, FLAGS.with_radiomics)


def _valid_seeds(values) -> bool:
    """Flag validator: `repeat.parse_seeds`' message as absl's one-line flag error."""
    try:
        repeat.parse_seeds(values)
    except ValueError as e:
        raise flags.ValidationError(str(e)) from None
    return True


if __name__ == "__main__":
    flags.DEFINE_string("workdir", "workdir_repeat", "Repeat directory (seed_<s>/ inside).")
    flags.DEFINE_list("seeds", ["0", "1", "2"], "Training seeds (config.seed); reruns resume.")
    flags.DEFINE_bool("with_radiomics", False, "Fit the radiomics baseline too (once).")
    flags.register_validator("seeds", _valid_seeds)
    config_flags.DEFINE_config_file(
        "config", "configs/ern.py", "Configuration file.", lock_config=True
    )
    cli.run(main)
