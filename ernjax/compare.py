"""Several models x several MRI sequence sets, the same splits, one table (Gao 2020 Tables 3-4).

    python -m ernjax.compare --config=configs/ern.py --workdir=W \
        --models=ern_b0,resnet18 --channel_sets="t1c;t2;t1;t1,t2,t1c" \
        [--reference="resnet18 t1c" | --all_pairs] [--seeds=0,1,2]

Trains each (model, channel set) in W/<model>_<channels> (reruns resume) and writes the test
comparison to W: compare.md/.csv/.json, delong.md, ttests.md and the ROC figures
(`ernjax.studies.compare`, which does the work). `--seeds` runs the whole comparison once per
training seed in W/seed_<s> and writes W/compare_seeds.md/.csv/.json: each run's metrics across
seeds (mean, SD, min-max).
"""

from absl import app, flags
from ml_collections import config_flags

from ernjax import cli
from ernjax.studies import compare

FLAGS = flags.FLAGS


def main(argv):
    """Entry point (absl): flags -> `studies.compare.run`."""
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    args = (
        FLAGS.config,
        FLAGS.workdir,
        FLAGS.models,
        compare.parse_channel_sets(FLAGS.channel_sets),
    )
    delong = dict(reference=FLAGS.reference, all_pairs=FLAGS.all_pairs)
    if FLAGS.seeds:
        compare.run_seeds(*args, FLAGS.seeds, **delong)
    else:
        compare.run(*args, **delong)


if __name__ == "__main__":
    flags.DEFINE_string("workdir", "workdir_compare", "Comparison directory (one folder per run).")
    flags.DEFINE_list("models", [], "Model names (default: config.model.name).")
    flags.DEFINE_string("channel_sets", "", '";"-separated sets, e.g. "t1c;t2;t1,t2,t1c".')
    flags.DEFINE_string(
        "reference", "", 'Run delong.md tests against ("resnet18 t1c", or a model); "" = first.'
    )
    flags.DEFINE_bool("all_pairs", False, "delong.md tests every pair of runs (Holm-adjusted).")
    flags.DEFINE_list("seeds", [], "Repeat the comparison over these training seeds.")
    config_flags.DEFINE_config_file(
        "config", "configs/ern.py", "Base configuration.", lock_config=True
    )
    cli.run(main)
