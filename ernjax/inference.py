"""A trained run on a new patient: class probabilities, a decision, Grad-CAM.

The run's own config (saved with its checkpoints) decides everything: which modalities are
needed, the preprocessing steps (`config.data.preprocess.steps`, when the training cohort was
made by `python -m ernjax.preprocess`), the grid, normalization and slices (the same
`ernjax.data.samples` code that built the records), the model and checkpoint
(`checkpoints.load_model`), the lesion-centred box of an ROI run (`data.roi`: the patient's
mask or lesion centre is then needed; Grad-CAM maps come out over the box, and the 3D NIfTI map
is carried back onto the scan's grid by the box's affine, zero outside the box), and the
operating cut-offs, chosen on the run's validation predictions by its scoring policy
(`ernjax.evaluate.scoring`). `predict` writes report.json, Grad-CAM PNGs, and for 3D models
gradcam.nii.gz in the reference scan's space. The report names the subject by its ID only; file
paths stay out of it. The command line is `ernjax.predict`.

    run = load_run(workdir)
    subject = make_subject(run, "P001", {"t1": ..., "t1c": ..., "t2": ...}, mask=...)
    report = predict(run, subject, out_dir)
"""

import dataclasses
import json
import logging
import tempfile
from pathlib import Path

import jax
import ml_collections
import numpy as np
from flax import nnx

from ernjax import atomic, checkpoints, gradcam
from ernjax.data import cohort, samples
from ernjax.data.spec import SampleSpec
from ernjax.errors import InputError
from ernjax.evaluate import predictions
from ernjax.evaluate.scoring import ScoringPolicy
from ernjax.preprocess import runner
from ernjax.train import steps as train_steps


@dataclasses.dataclass
class TrainedRun:
    """A finished training run, loaded for inference.

    Attributes:
      config: the run's config.
      model: in eval mode, with the parameters of the checkpoint the run was scored with.
      step: that checkpoint's step.
      scoring: the run's scoring policy (positive class, subject rule).
      cutoffs: chosen on the run's validation predictions, or {} (the defaults); with
        `config.eval.recalibrate` on, also the recalibration fitted on them ("recalibration"),
        applied to the probabilities before they are reported and decided on.
    """

    config: ml_collections.ConfigDict
    model: nnx.Module
    step: int
    scoring: ScoringPolicy
    cutoffs: dict

    @property
    def class_names(self) -> tuple[str, ...]:
        """The class names, in class-index order."""
        return self.scoring.class_names

    @property
    def positive(self) -> int:
        """Index of the positive class (`config.eval.positive_class`)."""
        return self.scoring.positive

    @property
    def modalities(self) -> list[str]:
        """The modalities the model needs: its channels, then the reference if not among them."""
        d = self.config.data
        return list(dict.fromkeys([*d.channels, d.reference]))


def configured_model(config) -> nnx.Module:
    """A fresh model of a run's config, for examples of its grid and channels (mask one too)."""
    return train_steps.create_model(config, SampleSpec.from_config(config.data).image_shape)


def load_run(workdir) -> TrainedRun:
    """Loads the run's config, the checkpoint it was scored with, and its cut-offs.

    Args:
      workdir: the training run's WORKDIR.

    Raises:
      InputError: WORKDIR holds no checkpoint.
    """
    scored = checkpoints.load_model(workdir, build=configured_model)
    config = scored.config
    scoring = ScoringPolicy.from_config(config.eval, config.data.classes)
    val = Path(workdir) / "predictions_validation.csv"
    cutoffs = scoring.cutoffs(predictions.read_csv(val)) if val.is_file() else {}
    return TrainedRun(config, scored.model, scored.step, scoring, cutoffs)


def make_subject(
    run: TrainedRun, subject_id: str, files: dict, mask=None, subject_dir=None, centre=None
):
    """The new patient as a `cohort.Subject`, checked against what the model was trained on.

    Args:
      run: the trained run.
      subject_id: the ID used in the report.
      files: modality -> NIfTI path (ignored when `subject_dir` is given); modalities the model
        does not need are left out, with a warning.
      mask: optional lesion mask (lesion slices of a 2D model; else every brain slice); needed
        by a run with `data.roi="mask"` or `data.mask_channel`.
      subject_dir: a subject folder read with the run's `config.data.modalities` patterns.
      centre: the lesion centre (x, y, z) in world mm, RAS+ (in the space of the scans the run
        reads, after its preprocessing); needed by a run with `data.roi="centre"`.

    Raises:
      InputError: a modality the model needs is missing, a file does not exist, or the run's
        ROI needs a mask or a centre that is not given.
    """
    d, needed = run.config.data, run.modalities
    if subject_dir:
        folder = Path(subject_dir)
        files = {m: cohort.match_one(folder, d.modalities[m], subject_id, m) for m in needed}
        if d.mask_pattern and mask is None and list(folder.glob(d.mask_pattern)):
            mask = cohort.match_one(folder, d.mask_pattern, subject_id, "mask")
    files = {m: Path(p) for m, p in files.items() if p}
    missing = [m for m in needed if m not in files]
    if missing:
        raise InputError(
            subject_id,
            "",
            f"the model was trained on {list(d.channels)} (reference {d.reference}); "
            f"missing {missing}: pass " + " ".join(f"{modality_flag(m)}=FILE" for m in missing),
        )
    if unused := [m for m in files if m not in needed]:
        logging.warning("%s: the model does not use %s; ignored", subject_id, unused)
    for m, p in [*files.items(), *([("mask", Path(mask))] if mask else [])]:
        if not p.is_file():
            raise InputError(subject_id, p, f"the {m} file does not exist")
    mask = Path(mask) if mask else None
    _check_roi_inputs(run, subject_id, mask, centre)
    centre = None if centre is None else tuple(float(v) for v in centre)
    return cohort.Subject(subject_id, None, "", {m: files[m] for m in needed}, mask, centre=centre)


def _check_roi_inputs(run: TrainedRun, subject_id: str, mask, centre) -> None:
    """A run trained on lesion-centred inputs needs the patient's mask or lesion centre."""
    d = run.config.data
    roi, mask_channel = d.get("roi", "brain"), d.get("mask_channel", False)
    if (roi == "mask" or mask_channel) and mask is None:
        why = (
            "centred on the lesion mask (data.roi='mask')"
            if roi == "mask"
            else "with the lesion mask as a channel (data.mask_channel)"
        )
        raise InputError(subject_id, "", f"the model was trained on inputs {why}: pass --mask=FILE")
    if roi == "centre" and centre is None:
        raise InputError(
            subject_id,
            "",
            "the model was trained on inputs centred on a lesion centre (data.roi='centre'): "
            "pass --centre=x,y,z (world mm, RAS+, as a viewer shows it)",
        )


# The modalities with a flag of their own (`--t1=FILE`); any other is `--modality=NAME=FILE`.
MODALITY_FLAGS = ("t1", "t1c", "t2", "flair")


def modality_flag(name: str) -> str:
    """The `python -m ernjax.predict` flag that passes the `name` file."""
    return f"--{name}" if name in MODALITY_FLAGS else f"--modality={name}"


def preprocess(run: TrainedRun, subject, work_dir: Path):
    """Runs the run's preprocessing steps on the subject (none configured: returns it as is)."""
    p = run.config.data.preprocess
    if not tuple(p.steps):
        return subject
    raw = work_dir / "raw" / subject.subject_id
    raw.mkdir(parents=True)
    for m, f in subject.files.items():
        (raw / f"{subject.subject_id}_{m}.nii.gz").symlink_to(f.resolve())
    if subject.mask:
        (raw / f"{subject.subject_id}_mask.nii.gz").symlink_to(subject.mask.resolve())
    out = work_dir / "preprocessed"
    summary = runner.preprocess_cohort(
        work_dir / "raw",
        out,
        modalities={m: f"*_{m}.nii.gz" for m in subject.files},
        settings=p,
        mask_pattern="*_mask.nii.gz" if subject.mask else "",
        progress=False,
    )
    if not summary.ok:
        raise InputError(subject.subject_id, "", f"preprocessing failed: {summary}")
    folder = out / subject.subject_id
    files = {m: folder / f"{subject.subject_id}_{m}.nii.gz" for m in subject.files}
    mask = folder / f"{subject.subject_id}_mask.nii.gz" if subject.mask else None
    return dataclasses.replace(subject, files=files, mask=mask)


def examples(run: TrainedRun, subject) -> tuple[np.ndarray, list[int], dict]:
    """(images [N, *shape, C] float32, slice index per image or [], the volume example)."""
    d = run.config.data
    if d.kind == "volumes3d":
        ex = samples.volume_example(subject, d)
        return ex["image"][None].astype(np.float32), [], ex
    if subject.mask is None and d.mask_pattern and d.get("roi", "brain") == "brain":
        logging.warning(
            "%s: no lesion mask given; every brain slice is classified (training used the "
            "mask's lesion slices)",
            subject.subject_id,
        )
    exs = samples.slice_examples(subject, d)
    return np.stack([e["image"] for e in exs]).astype(np.float32), [e["slice"] for e in exs], {}


def predict(
    run: TrainedRun,
    subject,
    out_dir,
    *,
    cam: bool = True,
    max_pngs: int = 12,
    underlay: str | None = None,
) -> dict:
    """Classifies one subject, writes OUT/report.json and Grad-CAM images, returns the report.

    `underlay` is the modality the Grad-CAM maps are drawn over (default T1c when the run has
    it, else its first channel). The files are renamed into place together once all are
    written, report.json last.
    """
    out_dir = Path(out_dir)
    underlay = cam_underlay(run, subject.subject_id, underlay) if cam else None
    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        subject = preprocess(run, subject, Path(tmp))
        x, slices, vol = examples(run, subject)
        probs = probabilities(run, x)
        report = _report(run, subject.subject_id, probs, slices)
        shown = run.scoring.recalibrated_probs(probs, run.cutoffs)  # as the report gives them
        with atomic.staged():
            if cam:
                cams = _write_cams(run, subject, x, slices, shown, vol, out_dir, max_pngs, underlay)
                report["gradcam"] = cams
            atomic.write_text(out_dir / "report.json", json.dumps(report, indent=1))
    return report


def probabilities(run: TrainedRun, x: np.ndarray) -> np.ndarray:
    """Class probabilities [N, K] (float64) of the run's model on images x [N, *shape, C]."""
    forward = nnx.jit(lambda m, b: jax.nn.softmax(m(b)))
    size = int(run.config.eval.batch_size)
    out = []
    for i in range(0, len(x), size):
        b = x[i : i + size]
        pad = size - len(b)  # one compiled shape for every batch
        b = np.concatenate([b, np.zeros((pad, *b.shape[1:]), b.dtype)]) if pad else b
        out.append(np.asarray(forward(run.model, b))[: size - pad])
    return np.concatenate(out).astype(np.float64)


def _report(run: TrainedRun, subject_id: str, probs: np.ndarray, slices: list[int]) -> dict:
    """report.json of the model's probabilities `probs`, recalibrated as the run's test was."""
    names, decided = run.class_names, run.scoring.decide(probs, run.cutoffs)  # recalibrates
    probs = run.scoring.recalibrated_probs(probs, run.cutoffs)
    report = {
        "subject_id": subject_id,
        "model": run.config.model.name,
        "checkpoint_step": run.step,
        "modalities": list(run.config.data.channels),
        "probabilities": {n: float(p) for n, p in zip(names, probs.mean(0), strict=True)},
        "positive_class": run.scoring.positive_name,
        "subject_method": run.scoring.subject_method,
        "score": decided["score"],
        "threshold": decided["threshold"],
        "threshold_source": run.scoring.subject_cutoff_source(run.cutoffs),
        "decision": decided["decision"],
        "n_images": len(probs),
    }
    if recal := run.cutoffs.get("recalibration"):
        report["recalibration"] = {
            "method": recal.method,
            "intercept": recal.intercept,
            "slope": recal.slope,
            "fitted_on": "validation",
        }
    if (roi := run.config.data.get("roi", "brain")) != "brain":
        report["roi"] = {"centred_on": roi, "size_mm": list(run.config.data.roi_size_mm)}
    if slices:
        report["slices"] = [
            {"slice": int(k), **{n: float(v) for n, v in zip(names, p, strict=True)}}
            for k, p in zip(slices, probs, strict=True)
        ]
    return report


def cam_underlay(run: TrainedRun, subject_id: str, requested: str | None = None) -> str:
    """The modality Grad-CAM is drawn over (`gradcam.underlay_modality`).

    `requested`, else T1c when the run has it, else its first channel.

    Raises:
      InputError: `requested` is not one of the run's modalities.
    """
    try:
        return gradcam.underlay_modality(run.modalities, requested)
    except ValueError as e:
        raise InputError(subject_id, "", f"--gradcam_underlay: {e}") from e


def _write_cams(
    run, subject, x, slices, probs, vol, out_dir: Path, max_pngs: int, underlay: str
) -> list[str]:
    """Grad-CAM of the positive class: PNGs at the scan's resolution (and a 3D NIfTI map).

    The maps go back onto the reference scan's grid (`gradcam.scan_layers`) and are drawn over
    the `underlay` modality (default T1c), with the lesion outline when there is a mask. 3D:
    gradcam.png (views through the lesion or the map's peak) and gradcam.nii.gz; 2D: one PNG
    per slice, for the `max_pngs` slices most in favour of the positive class.
    """
    d, pos, name = run.config.data, run.positive, underlay
    cams = gradcam.gradcam(run.model, x, target_class=pos)
    ref, label = subject.files[d.reference], f"P({run.class_names[pos]})"
    draw = {"underlay": subject.files[name], "lesion": subject.mask}
    if vol:  # 3D: five views on the scan's grid, and the map in the reference scan's space
        gradcam.save_cam_nifti(cams[0], vol["affine"], out_dir / "gradcam.nii.gz", reference=ref)
        layers = gradcam.scan_layers(cams[0], vol["affine"], ref, **draw)
        title = f"{subject.subject_id}  ·  {label} = {probs[0, pos]:.2f}"
        _draw_cam(layers, out_dir / "gradcam.png", title, name)
        return ["gradcam.png", "gradcam.nii.gz"]
    order = sorted(np.argsort(-probs[:, pos])[:max_pngs])  # most in favour of the positive
    grid = samples.load_subject(subject, d)  # the slices' grid: its affine takes maps back
    stack = np.zeros(grid.brain.shape, np.float32)
    for i in order:
        stack[slices[i]] = cams[i]
    layers = gradcam.scan_layers(stack, grid.affine, ref, **draw)
    written = []
    for i in order:
        k, file = slices[i], f"gradcam_slice{slices[i]:03d}.png"
        title = f"{subject.subject_id}  ·  axial slice {k}  ·  {label} = {probs[i, pos]:.2f}"
        _draw_cam(layers, out_dir / file, title, name, k)
        written.append(file)
    return written


_DISPLAY_NAMES = {"t1": "T1", "t1c": "T1c", "t2": "T2", "flair": "FLAIR"}


def _draw_cam(layers, path: Path, title: str, underlay: str, k: int | None = None) -> None:
    """One PNG of `layers` (a `gradcam.ScanLayers`): the volume, or its axial slice k."""
    key = slice(None) if k is None else k
    lesion = None if layers.lesion is None else layers.lesion[key]
    gradcam.overlay_png(
        layers.image[key],
        layers.cam[key],
        path,
        brain=layers.brain[key],
        lesion=lesion,
        affine=layers.affine,
        title=title,
        underlay_name=_DISPLAY_NAMES.get(underlay, underlay),
    )
