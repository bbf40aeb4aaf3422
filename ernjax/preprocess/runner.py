"""A cohort through the preprocessing steps: one subject per worker, cached by a manifest.

Output layout (a cohort the TFDS builder reads):

  OUT/labels.csv                                 copied when present
  OUT/<subject>/<subject>_<modality>.nii.gz      one per modality
  OUT/<subject>/<subject>_mask.nii.gz            the lesion mask, when a mask pattern is given
  OUT/<subject>/<subject>_brainmask.nii.gz       after skull stripping
  OUT/.preprocess/manifest.json                  input checksums, settings, status, metrics
  OUT/.preprocess/qc/index.html, <subject>.png   quality control, failed and outliers first

A subject is skipped when the manifest says it is done with the same input checksums and the same
settings and its outputs exist; a rerun therefore retries only failed or changed subjects.
"""

import concurrent.futures
import dataclasses
import hashlib
import json
import logging
import multiprocessing
import os
import shutil
import time
from collections.abc import Mapping
from pathlib import Path
from types import SimpleNamespace

import numpy as np

from ernjax import atomic
from ernjax.data import check
from ernjax.data import cohort as cohort_lib
from ernjax.data.geometry import Image, check_mask_grid, load_image, save_image
from ernjax.errors import InputError
from ernjax.preprocess import dicom, pipeline, qc
from ernjax.progress import Meter

WORK_DIR = ".preprocess"  # hidden, so that it is never taken for a subject folder


@dataclasses.dataclass
class Summary:
    """What a preprocessing run did.

    Attributes:
      out_dir: the output cohort.
      done: subjects processed in this run.
      reused: subjects skipped because the manifest shows them done with the same inputs.
      failed: subject -> error message (subject, file and problem).
      index: the QC index, or None when QC is off.
    """

    out_dir: Path
    done: list
    reused: list
    failed: dict
    index: Path | None = None

    @property
    def ok(self) -> bool:
        """True when no subject failed."""
        return not self.failed


def plain_settings(settings) -> SimpleNamespace:
    """`config.data.preprocess` (ConfigDict or mapping) as a picklable namespace."""
    values = settings.to_dict() if hasattr(settings, "to_dict") else dict(settings)
    values["steps"] = pipeline.check_steps(values.get("steps", ()))
    return SimpleNamespace(**values)


def file_digest(path) -> str:
    """SHA-256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def settings_digest(settings: SimpleNamespace, modalities: Mapping, mask_pattern: str) -> str:
    """A digest of everything that changes a subject's outputs."""
    text = json.dumps(
        [vars(settings), sorted(modalities), bool(mask_pattern)], sort_keys=True, default=list
    )
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _same_grid(a: Image, b: Image) -> bool:
    return a.data.shape == b.data.shape and np.allclose(a.affine, b.affine, atol=1e-3)


def _load(task: dict) -> pipeline.State:
    subject = task["subject"]
    images = {m: load_image(p, subject) for m, p in task["files"].items()}
    lesion, lesion_on = None, ""
    reference = pipeline.choose_reference(images, task["settings"].reference_priority)
    if task["mask"]:
        lesion = load_image(task["mask"], subject, allow_empty=True)
        # an image's affine on another shape, or no overlap: refused; another grid: logged
        lesion = check_mask_grid(lesion, images, reference, subject, task["mask"])
        on = [m for m, im in images.items() if _same_grid(im, lesion)]
        lesion_on = on[0] if on else ""
    state = pipeline.State(images, lesion, lesion_on)
    state.reference = reference
    state.lesion_on = state.lesion_on or state.reference
    return state


def _write(state: pipeline.State, subject: str, out_dir: Path) -> list:
    """Writes the subject folder atomically (a partial folder is renamed when complete)."""
    final, partial = out_dir / subject, out_dir / f".{subject}.partial"
    shutil.rmtree(partial, ignore_errors=True)
    names = {m: im for m, im in state.images.items()}
    if state.lesion is not None:
        names["mask"] = state.lesion
    if state.brain is not None:
        names["brainmask"] = state.brain
    for name, im in names.items():
        save_image(im, partial / f"{subject}_{name}.nii.gz")
    shutil.rmtree(final, ignore_errors=True)
    os.replace(partial, final)
    return sorted(f"{subject}/{subject}_{n}.nii.gz" for n in names)


def process_subject(task: dict) -> dict:
    """Preprocesses one subject; never raises for bad data (the error goes into the record).

    Args:
      task: {"subject", "files": {modality: path}, "mask": path or "", "out_dir", "settings"
        (namespace), "threads"}.

    Returns:
      The manifest record: status "done" or "failed", error, metrics, seconds, qc, outputs.
    """
    import SimpleITK as sitk

    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(task["threads"])
    subject, settings, out_dir = task["subject"], task["settings"], Path(task["out_dir"])
    start, state = time.perf_counter(), None
    record = {"status": "failed", "error": "", "metrics": {}, "outputs": [], "qc": ""}
    try:
        state = _load(task)
        pipeline.run_steps(state, settings, subject, task["files"])
        record["outputs"] = _write(state, subject, out_dir)
        record["status"] = "done"
    except InputError as e:
        record["error"] = str(e)
    except Exception as e:  # noqa: BLE001 - one subject's crash must not stop the cohort
        record["error"] = f"subject {subject}: unexpected {type(e).__name__}: {e}"
    if state is not None:
        mis = [
            v for k, v in state.metrics.items() if k.startswith("mi_after_") or k == "mi_template"
        ]
        if mis:
            state.metrics["min_mi"] = min(mis)
        record["metrics"] = {k: round(float(v), 4) for k, v in state.metrics.items()}
        if settings.qc and state.qc_rows:
            png = out_dir / WORK_DIR / "qc" / f"{subject}.png"
            try:
                qc.subject_figure(subject, state.qc_rows, png)
                record["qc"] = png.name
            except Exception as e:  # noqa: BLE001 - a figure problem must not lose the outputs
                logging.warning("QC figure of subject %s failed: %s", subject, e)
    record["seconds"] = round(time.perf_counter() - start, 2)
    return record


def _manifest_path(out_dir: Path) -> Path:
    return out_dir / WORK_DIR / "manifest.json"


def load_manifest(out_dir) -> dict:
    """The manifest's subject records ({} when there is none or it is unreadable)."""
    try:
        return json.loads(_manifest_path(Path(out_dir)).read_text())["subjects"]
    except (OSError, ValueError, KeyError):
        return {}


def _save_manifest(out_dir: Path, records: dict, settings: SimpleNamespace) -> None:
    # Atomic: an interrupted run leaves the previous manifest.
    atomic.write_text(
        _manifest_path(out_dir),
        json.dumps({"settings": vars(settings), "subjects": records}, indent=1, default=list),
    )


def _is_done(record: dict | None, inputs: dict, digest: str, out_dir: Path) -> bool:
    return bool(
        record
        and record.get("status") == "done"
        and record.get("inputs") == inputs
        and record.get("settings") == digest
        and all((out_dir / f).is_file() for f in record.get("outputs", []))
    )


def _run_tasks(tasks: list, workers: int, progress: bool):
    """Yields (task, record) as subjects finish, in worker processes when workers > 1."""
    bar = _progress(len(tasks), progress)
    if workers <= 1:
        for task in tasks:
            yield task, process_subject(task)
            bar.update(1)
    else:
        # spawn: the parent may hold JAX or ITK threads, which fork would copy half-locked.
        ctx = multiprocessing.get_context("spawn")
        with concurrent.futures.ProcessPoolExecutor(workers, mp_context=ctx) as pool:
            futures = {pool.submit(process_subject, t): t for t in tasks}
            for future in concurrent.futures.as_completed(futures):
                yield futures[future], future.result()
                bar.update(1)
    bar.close()


def _progress(total: int, enabled: bool) -> Meter:
    """The subjects counted as they finish: a bar on a terminal when `enabled`, else log lines."""
    return Meter("preprocess", total, unit="subject", tty=None if enabled else False)


def _discover(cohort_dir: Path, out_dir: Path, modalities, settings, labels_required, mask_pattern):
    """Finds the subjects (converting a DICOM cohort to NIfTI first). Returns (cohort, patterns)."""
    staging = None
    if dicom.is_dicom_cohort(cohort_dir):
        staging = out_dir / WORK_DIR / "dicom_nifti"
        conversion = dicom.convert_cohort(
            cohort_dir,
            staging,
            names=tuple(modalities),
            mapping_file=settings.dicom_map,
            min_slices=settings.dicom_min_slices,
            skip_corrupt=getattr(settings, "dicom_skip_corrupt_slices", False),
        )
        modalities = {m: f"*_{m}.nii.gz" for m in modalities}
        cohort_dir = staging
    found = cohort_lib.find_subjects(
        cohort_dir,
        dict(modalities),
        mask_pattern=mask_pattern,
        on_error="skip",
        labels_required=labels_required,
    )
    if staging is not None:  # a subject refused by the DICOM conversion has no folder: failed
        found.skipped.extend(
            {"subject_id": s, "path": e.path, "problem": e.problem}
            for s, e in conversion.failed.items()
        )
    return found, cohort_dir


def _skipped(found) -> dict:
    """Maps subject -> reason for the subjects the cohort reader could not use."""
    return {
        x["subject_id"]: str(InputError(x["subject_id"], x["path"], x["problem"]))
        for x in found.skipped
    }


def preprocess_cohort(
    cohort_dir,
    out_dir,
    *,
    modalities: Mapping[str, str],
    settings,
    workers: int = 1,
    labels_required: bool = False,
    mask_pattern: str = "",
    progress: bool = True,
) -> Summary:
    """Preprocesses every subject of a cohort into a new cohort folder.

    Args:
      cohort_dir: subject folders of NIfTI files (or of DICOM series) and optionally labels.csv.
      out_dir: the output cohort (see the module docstring); never the input folder.
      modalities: modality name -> glob inside the subject folder (one file must match).
      settings: `config.data.preprocess`.
      workers: subjects processed in parallel (processes).
      labels_required: passed to the cohort reader (a labels.csv must list every subject).
      mask_pattern: glob of a lesion mask, carried through the same transforms (nearest).
      progress: show a progress bar on stderr when it is a terminal (else, and when False,
        the progress goes to the log as plain lines).

    Returns:
      The Summary; `summary.ok` is False when any subject failed.

    Raises:
      ConfigError: a normalization unknown, or WhiteStripe with a modality whose contrast it
        does not know (before anything is written).
    """
    cohort_dir, out_dir = Path(cohort_dir), Path(out_dir)
    if out_dir.resolve() == cohort_dir.resolve():
        raise ValueError(f"out_dir must differ from cohort_dir ({cohort_dir})")
    settings = plain_settings(settings)
    if "normalize" in settings.steps:  # before any work: WhiteStripe needs known contrasts
        check.check_normalization(
            settings.normalize,
            list(modalities),
            "config.data.preprocess.normalize",
            f"the modalities {', '.join(modalities)}: --modalities, else config.data.modalities",
        )
    out_dir.mkdir(parents=True, exist_ok=True)
    found, source_dir = _discover(
        cohort_dir, out_dir, modalities, settings, labels_required, mask_pattern
    )
    if (source_dir / "labels.csv").is_file():
        atomic.write_bytes(out_dir / "labels.csv", (source_dir / "labels.csv").read_bytes())
    elif (cohort_dir / "labels.csv").is_file():
        atomic.write_bytes(out_dir / "labels.csv", (cohort_dir / "labels.csv").read_bytes())
    records, digest = load_manifest(out_dir), settings_digest(settings, modalities, mask_pattern)
    threads = max(1, (os.cpu_count() or 1) // max(1, workers))
    summary, tasks = Summary(out_dir, [], [], _skipped(found)), []
    for subj in found.subjects:
        files = {m: str(p) for m, p in subj.files.items()}
        paths = list(files.values()) + ([str(subj.mask)] if subj.mask else [])
        inputs = {Path(p).name: file_digest(p) for p in paths}
        if _is_done(records.get(subj.subject_id), inputs, digest, out_dir):
            summary.reused.append(subj.subject_id)
            continue
        task = dict(
            subject=subj.subject_id, files=files, mask=str(subj.mask or ""), out_dir=str(out_dir)
        )
        tasks.append({**task, "settings": settings, "threads": threads, "inputs": inputs})
    logging.info("preprocess: %d to do, %d already done", len(tasks), len(summary.reused))
    for task, record in _run_tasks(tasks, workers, progress):
        subject = task["subject"]
        records[subject] = {**record, "inputs": task["inputs"], "settings": digest}
        _save_manifest(out_dir, records, settings)
        if record["status"] == "done":
            summary.done.append(subject)
            logging.info(
                "preprocess: %s done in %.1f s %s", subject, record["seconds"], record["metrics"]
            )
        else:
            summary.failed[subject] = record["error"]
            logging.error("preprocess: %s", record["error"])
    for subject, reason in _skipped(found).items():  # unusable input: failed, retried next run
        records[subject] = {"status": "failed", "error": reason, "metrics": {}, "qc": ""}
        logging.error("preprocess: %s", reason)
    _save_manifest(out_dir, records, settings)
    if settings.qc:
        results = [{"subject": s, **r} for s, r in sorted(records.items())]
        summary.index = qc.write_index(out_dir / WORK_DIR, results)
    return summary
