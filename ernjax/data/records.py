"""Build and open the TFDS records of a cohort: one directory per distinct data setting, atomic.

The records of a setting live in `RECORDS/ernjax_mri/<kind>-<hash>/1.0.0/`, where the hash covers
the whole `SampleSpec` (every `config.data` setting that changes the examples: ernjax.data.spec),
the cohort's folder and a fingerprint of its files, so changing a pattern, a shape or a scan
gives new records instead of silently reusing stale ones.
A build runs in a staging directory that is renamed into place only when complete: a failed build
leaves nothing behind, and a rebuild after a fix starts clean. A build that was killed cannot
clean up; its staging directory is removed by the next build under the same records root (a lock
held while a build runs tells a dead build's directory from a live one).
"""

import contextlib
import dataclasses
import fcntl
import functools
import hashlib
import json
import logging
import os
import shutil
from pathlib import Path

import tensorflow_datasets as tfds

from ernjax.data import builder as builder_lib
from ernjax.data import split_file
from ernjax.data.spec import SampleSpec

INDEX = "index.json"


@dataclasses.dataclass(frozen=True)
class Records:
    """A built dataset: its directory and the per-split index of examples.

    Attributes:
      path: the dataset directory (holds the array_record shards and dataset_info.json).
      index: {"splits": {split: {"subject_id": [...], "label": [...]}}, "image_shape": [...],
        "class_names": [...], "kind": str, "assignment": {subject: {"split", "fold", "group"}},
        "skipped": [...]}; list positions are the record indices of each split.
    """

    path: Path
    index: dict

    def source(self, split: str):
        """Returns the random-access data source of one split (decodes to numpy)."""
        return _builder(str(self.path)).as_data_source(split=split)


@functools.lru_cache(maxsize=16)
def _builder(path: str):
    # Once per process and dataset: every evaluation opens its splits again, and each
    # builder_from_directory reads and logs dataset_info.json.
    return tfds.builder_from_directory(path)


def cohort_fingerprint(cohort_dir: Path) -> str:
    """Hash of every file's relative path, size and modification time under the cohort."""
    h = hashlib.sha1()
    for root, dirs, files in os.walk(cohort_dir):
        dirs.sort()
        for name in sorted(files):
            p = Path(root, name)
            st = p.stat()
            h.update(f"{p.relative_to(cohort_dir)}|{st.st_size}|{st.st_mtime_ns}\n".encode())
    return h.hexdigest()[:12]


def dataset_name(spec: SampleSpec, cohort_dir) -> str:
    """The records' name: `<kind>-<hash>`.

    Args:
      spec: the SampleSpec, hashed whole (`hashed`: the ROI fields only when not at their
        defaults), so no setting can be left out.
      cohort_dir: the cohort folder; its resolved path and `cohort_fingerprint` are hashed too.
        A split file (`config.data.split.file`) is hashed by its content (`split_file.digest`).

    Returns:
      The name (the same as before SampleSpec existed, for the same settings).
    """
    cohort_dir = Path(cohort_dir).resolve()
    # One flat dict, laid out as the settings were hashed before the spec existed, so that
    # records built then keep their name.
    key = {**spec.hashed(), "cohort_dir": str(cohort_dir)}
    key["fingerprint"] = cohort_fingerprint(cohort_dir)
    if spec.split.file:
        # The split file decides the split by its content: records built from another file (or
        # from this one before an edit) are not reused, the same file moved elsewhere is.
        key["split"] = {**key["split"], "file": split_file.digest(spec.split.file)}
    if spec.on_error == "skip":
        # Records from before subjects were loaded ahead of the split could hold a split that a
        # load-time skip had left without a class: never reuse those (on_error="raise" records
        # are the same either way, and keep their name).
        key["split_after_loading"] = True
    digest = hashlib.sha1(json.dumps(key, sort_keys=True).encode()).hexdigest()[:10]
    return f"{spec.kind}-{digest}"


def build(data, cohort_dir, records_dir, *, beam_runner=None, beam_options=None) -> Records:
    """Builds the records of `cohort_dir` under `records_dir` unless they already exist.

    Args:
      data: `config.data` (ml_collections.ConfigDict or dict): its SampleSpec and build_workers.
      cohort_dir: the cohort folder (labels.csv + one folder per subject).
      records_dir: root folder of all record sets.
      beam_runner: an Apache Beam runner (a name such as "DirectRunner", or a runner object),
        or None; with it or `beam_options`, the subjects load in that runner's workers
        (`ernjax.data.beam_build`), into the same records as without.
      beam_options: `apache_beam.options.pipeline_options.PipelineOptions`, or None.

    Returns:
      The built (or found) records.

    Raises:
      InputError: bad input under on_error="raise"; nothing is left on disk.
    """
    spec = SampleSpec.from_config(data)
    name = dataset_name(spec, cohort_dir)
    final = Path(records_dir) / "ernjax_mri" / name / str(builder_lib.VERSION)
    if (final / INDEX).exists():
        logging.info("records found: %s", final)
        return open_records(final)
    tfds.disable_progress_bar()  # the build logs per subject; terminal bars only clutter logs
    remove_stale_staging(records_dir)
    # Folders this build makes (innermost first), the records folder's new parents too (a
    # study's WORKDIR): a failed build removes them again if they are still empty.
    ancestors = (final.parent, final.parent.parent, Path(records_dir), *Path(records_dir).parents)
    made = [d for d in ancestors if not d.exists()]
    staging = Staging(records_dir, name)
    try:
        config = builder_lib.ErnjaxMriConfig(
            name=name,
            spec=spec.to_dict(),
            cohort_dir=str(Path(cohort_dir).resolve()),
            build_workers=int(data.get("build_workers", 0)),
        )
        builder = builder_lib.Builder(config=config, data_dir=str(staging.path))
        builder.download_and_prepare(
            download_dir=str(staging.path / "downloads"),
            file_format="array_record",
            download_config=tfds.download.DownloadConfig(
                try_download_gcs=False, beam_runner=beam_runner, beam_options=beam_options
            ),
        )
        built = Path(builder.data_dir)
        _write_index(built, builder.info, spec)
        final.parent.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(final, ignore_errors=True)  # an index-less leftover of an older version
        os.replace(built, final)
    finally:
        staging.close()
        if not final.exists():
            _remove_empty(made)
    logging.info("records built: %s", final)
    return open_records(final)


def _remove_empty(folders) -> None:
    # A failed build leaves no trace: not even the empty folders it made (innermost first).
    for d in folders:
        with contextlib.suppress(OSError):
            d.rmdir()


class Staging:
    """The folder a build writes in, `RECORDS/.staging-<name>-<pid>`, locked while it runs.

    The lock is an flock on `.lock` inside the folder: the system drops it when the process
    ends, however it ends, so `remove_stale_staging` can tell a killed build's folder from a
    running one's (a process ID alone could be reused, or belong to another machine).
    """

    def __init__(self, records_dir, name: str):
        self.path = Path(records_dir) / f".staging-{name}-{os.getpid()}"
        for _ in range(10):
            shutil.rmtree(self.path, ignore_errors=True)
            self.path.mkdir(parents=True, exist_ok=True)
            try:
                self._fd = _lock(self.path, wait=True)
                # A concurrent remove_stale_staging may have taken the folder for a dead
                # build's (unlocked between mkdir and flock) and removed it: make it again.
                if os.stat(self.path / _LOCK).st_ino == os.fstat(self._fd).st_ino:
                    return
                os.close(self._fd)
            except FileNotFoundError:
                pass
        raise RuntimeError(f"could not create the staging folder {self.path}")

    def close(self) -> None:
        """Removes the folder, then lets go of the lock."""
        shutil.rmtree(self.path, ignore_errors=True)
        os.close(self._fd)


_LOCK = ".lock"


def _lock(folder: Path, *, wait: bool) -> int | None:
    """The descriptor of FOLDER/.lock, flock-ed; None when another process holds the lock.

    Where the file system has no locks (some network mounts), `wait=True` returns the file
    unlocked and `wait=False` None: a folder is then never taken for a dead build's.
    """
    fd = os.open(folder / _LOCK, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
    except OSError:
        if wait:
            return fd
        os.close(fd)
        return None
    return fd


def remove_stale_staging(records_dir) -> None:
    """Removes the staging folders under `records_dir` of builds that are no longer running."""
    for folder in sorted(Path(records_dir).glob(".staging-*")):
        try:
            fd = _lock(folder, wait=False)
        except OSError:  # removed meanwhile by another build, or not a folder
            continue
        if fd is None:
            continue  # a build in progress
        try:
            logging.warning("removing %s, left by a build that did not finish", folder)
            shutil.rmtree(folder, ignore_errors=True)
        finally:
            os.close(fd)


def open_records(path) -> Records:
    """Opens records written by `build`."""
    path = Path(path)
    return Records(path, json.loads((path / INDEX).read_text()))


def _write_index(path: Path, info, spec: SampleSpec) -> None:
    # One pass over the records: the subject and label of every record index, so fold
    # selection, class counts and subject-wise evaluation never decode an image again.
    b = tfds.builder_from_directory(str(path))
    splits = {}
    for split in info.splits:
        src = b.as_data_source(split=split)
        rows = [src[i] for i in range(len(src))]
        splits[split] = {
            "subject_id": [r["subject_id"].decode() for r in rows],
            "label": [int(r["label"]) for r in rows],
        }
        if spec.kind == "slices2d":  # where a reader finds the slice (predictions_<split>.csv)
            splits[split]["slice"] = [int(r["slice"]) for r in rows]
    index = {
        "splits": splits,
        "kind": spec.kind,
        "class_names": list(spec.classes),
        "image_shape": list(spec.image_shape),
        "channels": list(spec.channel_names),
        "assignment": info.metadata["assignment"],
        "skipped": info.metadata["skipped"],
    }
    (path / INDEX).write_text(json.dumps(index, indent=1))
