"""Predict for a new patient with a trained run: class probabilities, a decision, Grad-CAM.

    python -m ernjax.predict --workdir=W --t1=t1.nii.gz --t1c=t1c.nii.gz --t2=t2.nii.gz \
        [--flair=...] [--modality=adc=adc.nii.gz ...] [--mask=lesion.nii.gz] \
        [--centre=x,y,z] [--subject_id=P001] [--out=DIR] [--gradcam_underlay=t2]
    python -m ernjax.predict --workdir=W --subject_dir=cohort/P001     (the run's file patterns)

The modalities are the run's own (`config.data.channels` and `reference`): `--t1`, `--t1c`,
`--t2` and `--flair` pass those four, `--modality=NAME=FILE` (repeated) any name the run's
`config.data.modalities` has. Written to OUT (default W/predictions/<subject_id>): report.json,
Grad-CAM PNGs over a greyscale modality (`--gradcam_underlay`, default T1c), and for 3D models
gradcam.nii.gz (see `ernjax.inference`, which does the work).
A run trained on lesion-centred inputs (`config.data.roi`) needs `--mask` ("mask") or
`--centre` ("centre": the lesion centre in world mm, RAS+, as a viewer shows it).
"""

from pathlib import Path

from absl import app, flags

from ernjax import cli, inference
from ernjax.data import cohort
from ernjax.errors import InputError

FLAGS = flags.FLAGS


def define_flags() -> None:
    """The command's flags (defined when run, not on import: other commands share names)."""
    flags.DEFINE_string("workdir", None, "The training run's directory (checkpoints/ inside).")
    for m in inference.MODALITY_FLAGS:
        flags.DEFINE_string(m, None, f"{m} NIfTI of the patient.")
    flags.DEFINE_multi_string(
        "modality", [], "NAME=FILE: the patient's NIfTI of any modality the run was trained on."
    )
    flags.DEFINE_string("mask", None, "Lesion mask NIfTI (2D models: which slices to classify).")
    flags.DEFINE_string(
        "centre", None, "x,y,z: the lesion centre in world mm, RAS+ (runs with data.roi=centre)."
    )
    flags.DEFINE_string("subject_dir", None, "A subject folder, read with the run's patterns.")
    flags.DEFINE_string("subject_id", None, "ID in the report (default: the folder name).")
    flags.DEFINE_string("out", None, "Output folder (default WORKDIR/predictions/<subject_id>).")
    flags.DEFINE_bool("gradcam", True, "Write Grad-CAM images.")
    flags.DEFINE_string(
        "gradcam_underlay",
        None,
        "Modality the Grad-CAM maps are drawn over, one of the run's (default t1c when the run "
        "has it, else its first channel).",
    )
    flags.mark_flag_as_required("workdir")


def modality_files(subject_id: str) -> dict[str, str]:
    """Modality -> file from `--t1` ... `--flair` and every `--modality=NAME=FILE`.

    Raises:
      InputError: a `--modality` value is not NAME=FILE, or a modality is given twice.
    """
    files = {m: getattr(FLAGS, m) for m in inference.MODALITY_FLAGS if getattr(FLAGS, m)}
    for item in FLAGS.modality:
        name, sep, path = item.partition("=")
        if not (sep and name and path):
            raise InputError(subject_id, "", f"--modality={item}: expected NAME=FILE")
        if name in files:
            raise InputError(subject_id, "", f"the {name} file is given twice")
        files[name] = path
    return files


def main(argv):
    """Entry point (absl): flags -> `inference.predict`, and one line for the user."""
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    f = FLAGS
    sid = f.subject_id or (Path(f.subject_dir).name if f.subject_dir else "new_patient")
    files = modality_files(sid)
    centre = cohort.parse_centre(f.centre, sid, "--centre") if f.centre else None
    run = inference.load_run(f.workdir)
    subject = inference.make_subject(run, sid, files, f.mask, f.subject_dir, centre)
    out = f.out or str(Path(f.workdir) / "predictions" / sid)
    report = inference.predict(run, subject, out, cam=f.gradcam, underlay=f.gradcam_underlay)
    probs = ", ".join(f"P({k}) = {v:.3f}" for k, v in report["probabilities"].items())
    print(
        f"{sid}: {probs}; {report['subject_method']} score {report['score']:.3f} vs cut-off "
        f"{report['threshold']:.3f} ({report['threshold_source']}) -> {report['decision']}\n"
        f"report: {Path(out) / 'report.json'}",
        flush=True,
    )


if __name__ == "__main__":
    define_flags()
    cli.run(main)
