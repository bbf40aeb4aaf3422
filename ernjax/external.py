"""External validation: a finished run, or a cross-validation's fold ensemble, on another cohort.

    python -m ernjax.external --run=W --cohort_dir=OTHER --workdir=OUT [--group_by=site,scanner]
    python -m ernjax.external --crossval=W --cohort_dir=OTHER --workdir=OUT [--ensemble=majority]

The run's own model, data settings and cut-offs (chosen on its validation split, never on
OTHER) are used; every subject of OTHER is scored once (`ernjax.studies.external`, which does
the work, says what OUT gets). A cohort whose files are named otherwise takes its own patterns:
`--modalities=t1=*T1_AX*.nii.gz,t1c=*POST*.nii.gz,t2=*T2*.nii.gz`, `--mask_pattern`,
`--slices_column`, `--centre_column`, `--on_error`; what an example is (channels, grid,
normalization, ROI) stays the run's.
"""

from absl import app, flags

from ernjax import cli
from ernjax.studies import external

FLAGS = flags.FLAGS


def define_flags() -> None:
    """The command's flags (defined when run, not on import: other commands share names)."""
    flags.DEFINE_string("run", None, "A finished training run's WORKDIR.")
    flags.DEFINE_string("crossval", None, "A finished cross-validation's WORKDIR (fold_k/ inside).")
    flags.DEFINE_string("cohort_dir", None, "The external cohort: labels.csv + subject folders.")
    flags.DEFINE_string("workdir", None, "Output folder (OUT); its records/ too.")
    flags.DEFINE_list("group_by", [], "labels.csv columns to break the figures down by.")
    flags.DEFINE_enum("ensemble", "mean", ["mean", "majority"], "How fold models combine.")
    flags.DEFINE_list(
        "modalities", [], "name=glob pairs of OTHER's files (default: the run's patterns)."
    )
    flags.DEFINE_string("mask_pattern", None, "OTHER's lesion mask glob (default: the run's).")
    flags.DEFINE_string("slices_column", None, "OTHER's labels.csv lesion slice column.")
    flags.DEFINE_string("centre_column", None, "OTHER's labels.csv lesion centre column.")
    flags.DEFINE_enum("on_error", None, ["raise", "skip"], "Bad subjects of OTHER: stop or skip.")
    flags.mark_flags_as_required(["cohort_dir", "workdir"])
    flags.mark_flags_as_mutual_exclusive(["run", "crossval"], required=True)


def cohort_settings() -> dict:
    """The `external.COHORT_FIELDS` the flags set (the others stay the run's)."""
    settings = {}
    if FLAGS.modalities:
        pairs = [item.split("=", 1) for item in FLAGS.modalities]
        if any(len(p) != 2 or not p[0] or not p[1] for p in pairs):
            raise app.UsageError(
                "--modalities takes name=glob pairs, e.g. t1=*_t1.nii.gz,t2=*_t2.nii.gz"
            )
        settings["modalities"] = dict(pairs)
    for name in ("mask_pattern", "slices_column", "centre_column", "on_error"):
        if getattr(FLAGS, name) is not None:
            settings[name] = getattr(FLAGS, name)
    return settings


def main(argv):
    """Entry point (absl): flags -> `studies.external.run`."""
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    external.run(
        FLAGS.run or FLAGS.crossval,
        FLAGS.cohort_dir,
        FLAGS.workdir,
        is_crossval=bool(FLAGS.crossval),
        group_by=FLAGS.group_by,
        ensemble=FLAGS.ensemble,
        cohort_settings=cohort_settings(),
    )


if __name__ == "__main__":
    define_flags()
    cli.run(main)
