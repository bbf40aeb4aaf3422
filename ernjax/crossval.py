"""k-fold cross-validation by patient in one command, with pooled metrics and the fold ensemble.

    python -m ernjax.crossval --config=configs/tcga_lgg_2d.py --workdir=W [--folds=0,1,2] \
        [--against=W2,W3] [--seeds=0,1,2] [--split_seeds=0,1,2]

Trains fold k in W/fold_k (reruns resume), then scores every fold, the pooled out-of-fold
predictions and the fold ensemble on the test split (`ernjax.studies.crossval`, which does the
work) and writes W/crossval.json, crossval.md, crossval.csv and the ROC figures. `--against`
names finished cross-validations of other models on the same patients and folds: DeLong tests
of their pooled out-of-fold AUCs against W's go to W/delong_out_of_fold.md. `--seeds` repeats
the whole cross-validation over training seeds, `--split_seeds` over fold assignments (repeated
cross-validation), each repeat in its own folder of W, and writes W/crossval_seeds.md/.csv/.json:
the mean, SD and min-max of every table row across repeats.
"""

from absl import app, flags
from ml_collections import config_flags

from ernjax import cli
from ernjax.studies import crossval, repeat

FLAGS = flags.FLAGS


def main(argv):
    """Entry point (absl): flags -> `studies.crossval.run`."""
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    folds = [int(f) for f in FLAGS.folds]
    if FLAGS.seeds or FLAGS.split_seeds:
        if FLAGS.against:
            raise app.UsageError("--against compares single cross-validations: drop --seeds")
        seeds = repeat.parse_seeds(FLAGS.seeds) if FLAGS.seeds else []
        split_seeds = repeat.parse_seeds(FLAGS.split_seeds) if FLAGS.split_seeds else []
        crossval.run_repeated(
            FLAGS.config, FLAGS.workdir, seeds, split_seeds, folds, FLAGS.ensemble
        )
        return
    crossval.run(FLAGS.config, FLAGS.workdir, folds, FLAGS.ensemble)
    if FLAGS.against:
        k = FLAGS.config.data.split.folds
        crossval.delong_against(FLAGS.config, FLAGS.workdir, FLAGS.against, k)


if __name__ == "__main__":
    flags.DEFINE_string("workdir", "workdir_cv", "Cross-validation directory (fold_k/ inside).")
    flags.DEFINE_list("folds", [], "Folds to train now (default: all); reruns resume.")
    flags.DEFINE_enum("ensemble", "mean", ["mean", "majority"], "How fold models are combined.")
    flags.DEFINE_list("against", [], "Finished cross-validation dirs to DeLong-test against W.")
    flags.DEFINE_list("seeds", [], "Repeat over these training seeds (config.seed).")
    flags.DEFINE_list("split_seeds", [], "Repeat over these fold assignments (split.seed).")
    config_flags.DEFINE_config_file(
        "config", "configs/ern.py", "Configuration file.", lock_config=True
    )
    cli.run(main)
