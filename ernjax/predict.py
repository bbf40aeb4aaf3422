"""Predict for a new patient with a trained run: class probabilities, a decision, Grad-CAM.

    python -m ernjax.predict --workdir=W --t1=t1.nii.gz --t1c=t1c.nii.gz --t2=t2.nii.gz \
        [--flair=...] [--mask=lesion.nii.gz] [--subject_id=P001] [--out=DIR]
    python -m ernjax.predict --workdir=W --subject_dir=cohort/P001     (the run's file patterns)

The run's own config (saved with its checkpoints) decides everything: which modalities are
needed, the preprocessing steps (`config.data.preprocess.steps`, when the training cohort was
made by `python -m ernjax.preprocess`), the grid, normalization and slices (the same
`ernjax.data.samples` code that built the records), the model, and the operating cut-offs, chosen on
the run's validation predictions as `config.eval` says. Written to OUT (default
W/predictions/<subject_id>): report.json, Grad-CAM PNGs, and for 3D models gradcam.nii.gz in the
reference scan's space. The report names the subject by its ID only; file paths stay out of it.
"""

import dataclasses
import json
import logging
import tempfile
from pathlib import Path

import jax
import ml_collections
import numpy as np
from absl import app, flags
from flax import nnx

from ernjax import atomic, gradcam
from ernjax.checkpoints import Checkpointer
from ernjax.data import cohort, samples
from ernjax.errors import InputError, exit_on_full_disk
from ernjax.evaluate import predictions, stats
from ernjax.train import steps as train_steps

MODALITY_FLAGS = ("t1", "t1c", "t2", "flair")


@dataclasses.dataclass
class TrainedRun:
    """A finished training run, loaded for inference."""

    config: ml_collections.ConfigDict
    model: nnx.Module  # eval mode, the evaluated checkpoint's parameters
    step: int
    cutoffs: dict  # {"threshold", "subject_threshold"} or {} (defaults)

    @property
    def class_names(self) -> tuple[str, ...]:
        """The class names, in class-index order."""
        return tuple(self.config.data.classes)

    @property
    def positive(self) -> int:
        """Index of `config.eval.positive_class`."""
        return self.class_names.index(self.config.eval.positive_class)


def load_run(workdir) -> TrainedRun:
    """Loads the run's config, the checkpoint it was scored with, and its cut-offs.

    Raises:
      InputError: WORKDIR holds no checkpoint.
    """
    workdir = Path(workdir)
    ckpt = Checkpointer(workdir / "checkpoints", keep=1, async_save=False)
    try:
        latest = ckpt.latest_step()
        if latest is None:
            raise InputError("", workdir / "checkpoints", "no checkpoint: train the model first")
        config = ml_collections.ConfigDict(json.loads(ckpt.saved_config(latest)))
        # The checkpoint the run itself was scored with (and its cut-offs chosen for).
        step, _ = ckpt.scored_step(config.train.get("select_checkpoint", "best"))
        d = config.data
        shape = (*d.shape, len(d.channels))
        model = train_steps.create_model(config, shape)
        steps, _, _ = train_steps.build_training(config, model, (1,) * len(d.classes), 1)
        state, _ = ckpt.restore(step, steps.state)
    finally:
        ckpt.close()
    nnx.update(model, jax.device_get(state["model"]))
    model.eval()
    val = workdir / "predictions_validation.csv"
    run = TrainedRun(config, model, int(step), {})
    if val.is_file():
        run.cutoffs = predictions.thresholds(config.eval, predictions.read_csv(val), run.positive)
    return run


def make_subject(run: TrainedRun, subject_id: str, files: dict, mask=None, subject_dir=None):
    """The new patient as a `cohort.Subject`, checked against what the model was trained on.

    Args:
      run: the trained run.
      subject_id: the ID used in the report.
      files: modality -> NIfTI path (ignored when `subject_dir` is given).
      mask: optional lesion mask (lesion slices of a 2D model; else every brain slice).
      subject_dir: a subject folder read with the run's `config.data.modalities` patterns.

    Raises:
      InputError: a modality the model needs is missing, or a file does not exist.
    """
    d = run.config.data
    needed = list(dict.fromkeys([*d.channels, d.reference]))
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
            f"missing {missing}: pass " + " ".join(f"--{m}=FILE" for m in missing),
        )
    for m, p in [*files.items(), *([("mask", Path(mask))] if mask else [])]:
        if not p.is_file():
            raise InputError(subject_id, p, f"the {m} file does not exist")
    mask = Path(mask) if mask else None
    return cohort.Subject(subject_id, None, "", {m: files[m] for m in needed}, mask)


def preprocess(run: TrainedRun, subject, work_dir: Path):
    """Runs the run's preprocessing steps on the subject (none configured: returns it as is)."""
    p = run.config.data.preprocess
    if not tuple(p.steps):
        return subject
    from ernjax.preprocess import runner

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
    if subject.mask is None and d.mask_pattern:
        logging.warning(
            "%s: no lesion mask given; every brain slice is classified (training used the "
            "mask's lesion slices)",
            subject.subject_id,
        )
    exs = samples.slice_examples(subject, d)
    return np.stack([e["image"] for e in exs]).astype(np.float32), [e["slice"] for e in exs], {}


def predict(run: TrainedRun, subject, out_dir, *, cam: bool = True, max_pngs: int = 12) -> dict:
    """Classifies one subject, writes OUT/report.json and Grad-CAM images, returns the report.

    The files are renamed into place together once all are written, report.json last.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        subject = preprocess(run, subject, Path(tmp))
        x, slices, vol = examples(run, subject)
        probs = _probabilities(run, x)
        report = _report(run, subject.subject_id, probs, slices)
        with atomic.staged():
            if cam:
                cams = _write_cams(run, subject, x, slices, probs, vol, out_dir, max_pngs)
                report["gradcam"] = cams
            atomic.write_text(out_dir / "report.json", json.dumps(report, indent=1))
    return report


def _probabilities(run: TrainedRun, x: np.ndarray) -> np.ndarray:
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
    ev, pos, names = run.config.eval, run.positive, run.class_names
    threshold = run.cutoffs.get("threshold", 0.5)
    _, score, _ = stats.aggregate_by_subject(
        probs[:, pos], np.zeros(len(probs), int), [subject_id] * len(probs), ev.subject_method,
        threshold=threshold,
    )  # fmt: skip
    cut = run.cutoffs.get("subject_threshold", threshold if ev.subject_method == "mean" else 0.5)
    decision = names[pos] if score[0] >= cut else names[1 - pos] if len(names) == 2 else None
    if decision is None:  # more than two classes: the most probable one
        decision = names[int(np.argmax(probs.mean(0)))]
    report = {
        "subject_id": subject_id,
        "model": run.config.model.name,
        "checkpoint_step": run.step,
        "modalities": list(run.config.data.channels),
        "probabilities": {n: float(p) for n, p in zip(names, probs.mean(0), strict=True)},
        "positive_class": names[pos],
        "subject_method": ev.subject_method,
        "score": float(score[0]),
        "threshold": float(cut),
        "threshold_source": "validation" if run.cutoffs else "default",
        "decision": decision,
        "n_images": len(probs),
    }
    if slices:
        report["slices"] = [
            {"slice": int(k), **{n: float(v) for n, v in zip(names, p, strict=True)}}
            for k, p in zip(slices, probs, strict=True)
        ]
    return report


def _write_cams(run, subject, x, slices, probs, vol, out_dir: Path, max_pngs: int) -> list[str]:
    pos = run.positive
    cams = gradcam.gradcam(run.model, x, target_class=pos)
    written = []
    if vol:  # 3D: an axial grid and the map in the reference scan's space
        gradcam.overlay_png(x[0], cams[0], out_dir / "gradcam.png", title=subject.subject_id)
        ref = subject.files[run.config.data.reference]
        gradcam.save_cam_nifti(cams[0], vol["affine"], out_dir / "gradcam.nii.gz", reference=ref)
        return ["gradcam.png", "gradcam.nii.gz"]
    order = np.argsort(-probs[:, pos])[:max_pngs]  # the slices most in favour of the positive
    for i in sorted(order):
        name = f"gradcam_slice{slices[i]:03d}.png"
        title = (
            f"{subject.subject_id} slice {slices[i]}: P({run.class_names[pos]}) {probs[i, pos]:.2f}"
        )
        gradcam.overlay_png(x[i], cams[i], out_dir / name, title=title)
        written.append(name)
    return written


def main(argv):
    """Entry point (absl)."""
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    f = flags.FLAGS
    run = load_run(f.workdir)
    sid = f.subject_id or (Path(f.subject_dir).name if f.subject_dir else "new_patient")
    files = {m: getattr(f, m) for m in MODALITY_FLAGS}
    subject = make_subject(run, sid, files, f.mask, f.subject_dir)
    out = f.out or str(Path(f.workdir) / "predictions" / sid)
    report = predict(run, subject, out, cam=f.gradcam)
    probs = ", ".join(f"P({k}) = {v:.3f}" for k, v in report["probabilities"].items())
    print(
        f"{sid}: {probs}; {report['subject_method']} score {report['score']:.3f} vs cut-off "
        f"{report['threshold']:.3f} ({report['threshold_source']}) -> {report['decision']}\n"
        f"report: {Path(out) / 'report.json'}",
        flush=True,
    )


if __name__ == "__main__":
    flags.DEFINE_string("workdir", None, "The training run's directory (checkpoints/ inside).")
    for _m in MODALITY_FLAGS:
        flags.DEFINE_string(_m, None, f"{_m} NIfTI of the patient.")
    flags.DEFINE_string("mask", None, "Lesion mask NIfTI (2D models: which slices to classify).")
    flags.DEFINE_string("subject_dir", None, "A subject folder, read with the run's patterns.")
    flags.DEFINE_string("subject_id", None, "ID in the report (default: the folder name).")
    flags.DEFINE_string("out", None, "Output folder (default WORKDIR/predictions/<subject_id>).")
    flags.DEFINE_bool("gradcam", True, "Write Grad-CAM images.")
    flags.mark_flag_as_required("workdir")
    app.run(exit_on_full_disk(main))
