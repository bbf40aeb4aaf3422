r"""Preprocesses a cohort: `python -m ernjax.preprocess --cohort_dir=IN --out_dir=OUT`.

Example (all steps, two subjects at a time):

  python -m ernjax.preprocess --cohort_dir=raw --out_dir=prep --workers=2 \\
    --steps=reorient,n4,coregister,mni,skullstrip,normalize,crop \\
    --modalities=t1=*_t1.nii.gz,t1c=*_t1c.nii.gz,t2=*_t2.nii.gz,flair=*_fla.nii.gz

Step settings are `config.data.preprocess` (ernjax/defaults.py), overridable as
`--config.data.preprocess.n4_shrink=2`. Exits non-zero when any subject failed; a rerun
processes only failed or changed subjects. The QC index is OUT/.preprocess/qc/index.html.
"""

import logging
import sys

from absl import app, flags
from ml_collections import config_flags

from ernjax import cli
from ernjax.preprocess import pipeline, runner

FLAGS = flags.FLAGS
flags.DEFINE_string("cohort_dir", None, "Input cohort: a folder per subject (NIfTI or DICOM).")
flags.DEFINE_string("out_dir", None, "Output cohort (created; never the input folder).")
flags.DEFINE_list(
    "steps",
    None,
    f"Steps, comma-separated, from {','.join(pipeline.STEPS)}. "
    "Default: config.data.preprocess.steps, or all steps when that is empty.",
)
flags.DEFINE_list(
    "modalities", None, "name=glob pairs, comma-separated. Default: config.data.modalities."
)
flags.DEFINE_string(
    "mask_pattern", "", "Glob of a lesion mask carried through the same transforms ('': none)."
)
flags.DEFINE_integer("workers", 1, "Subjects processed in parallel.")
flags.DEFINE_bool("labels_required", False, "Require labels.csv to list every subject.")
flags.DEFINE_bool(
    "skip_corrupt_slices",
    None,
    "DICOM: convert a series without its corrupt files (reported in dicom_report.csv) instead "
    "of refusing the subject. Default: config.data.preprocess.dicom_skip_corrupt_slices.",
)
config_flags.DEFINE_config_file("config", "configs/ern.py", "Configuration file (data.preprocess).")
flags.mark_flags_as_required(["cohort_dir", "out_dir"])


def _modalities(config) -> dict:
    if not FLAGS.modalities:
        return dict(config.data.modalities)
    pairs = [item.split("=", 1) for item in FLAGS.modalities]
    if any(len(p) != 2 for p in pairs):
        raise app.UsageError(
            "--modalities takes name=glob pairs, e.g. t1=*_t1.nii.gz,t2=*_t2.nii.gz"
        )
    return dict(pairs)


def main(argv):
    """Entry point (absl): runs the cohort and exits 1 when any subject failed."""
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    logging.getLogger().setLevel(logging.INFO)
    config = FLAGS.config
    settings = config.data.preprocess.to_dict()
    settings["steps"] = tuple(FLAGS.steps or settings["steps"] or pipeline.STEPS)
    if FLAGS.skip_corrupt_slices is not None:
        settings["dicom_skip_corrupt_slices"] = FLAGS.skip_corrupt_slices
    summary = runner.preprocess_cohort(
        FLAGS.cohort_dir,
        FLAGS.out_dir,
        modalities=_modalities(config),
        settings=settings,
        workers=FLAGS.workers,
        labels_required=FLAGS.labels_required,
        mask_pattern=FLAGS.mask_pattern,
    )
    done, reused, failed = len(summary.done), len(summary.reused), len(summary.failed)
    print(
        f"done {done}, already done {reused}, failed {failed}"
        + (f"; QC index: {summary.index}" if summary.index else ""),
        file=sys.stderr,
    )
    for subject, error in sorted(summary.failed.items()):
        print(f"FAILED {subject}: {error}", file=sys.stderr)
    sys.exit(0 if summary.ok else 1)


if __name__ == "__main__":
    cli.run(main)
