"""Bad input through the parallel records build, killed builds, and splits that skips would break.

`python tests/test_bad_input_build.py COHORT RECORDS` is the subprocess of the kill test: a records
build with two worker processes.
"""

import ast
import importlib
import inspect
import json
import os
import pickle
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from test_records import DUMMY, small_data

import configs.ern
from ernjax.data import records, splits
from ernjax.errors import InputError
from ernjax.train import loop

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def cohort(tmp_path) -> Path:
    out = tmp_path / "cohort"
    shutil.copytree(DUMMY, out)
    return out


def _leftovers(records_dir: Path) -> list[Path]:
    """Datasets and staging folders under a records root."""
    return [*records_dir.rglob("dataset_info.json"), *records_dir.rglob(".staging-*")]


# ----------------------------------------------------------------------------- pickling
def _error_classes() -> list[type]:
    """Every exception class defined in the package's sources (found by parsing them)."""
    found = []
    for path in sorted([*(REPO / "ernjax").rglob("*.py"), *(REPO / "data_builders").rglob("*.py")]):
        for node in ast.walk(ast.parse(path.read_text())):
            bases = [ast.unparse(b) for b in getattr(node, "bases", [])]
            if isinstance(node, ast.ClassDef) and any(
                b.endswith(("Error", "Exception")) for b in bases
            ):
                module = importlib.import_module(
                    ".".join(path.relative_to(REPO).with_suffix("").parts)
                )
                found.append(getattr(module, node.name))
    return found


def _instance(cls) -> BaseException:
    """An instance with a distinct string for every required argument."""
    try:
        params = inspect.signature(cls).parameters.values()
    except (TypeError, ValueError):  # builtin __init__: one message
        params = []
    positional = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    args = [f"{p.name}-value" for p in params if p.default is p.empty and p.kind in positional]
    return cls(*(args or ["a message"]))


def test_every_error_type_survives_pickling():
    classes = _error_classes()
    assert {c.__name__ for c in classes} >= {"InputError", "NonFiniteLossError"}
    for cls in classes:
        error = _instance(cls)
        back = pickle.loads(pickle.dumps(error))
        assert type(back) is cls
        assert str(back) == str(error) and vars(back) == vars(error), cls


# ----------------------------------------------------------------------------- bad files, workers
def _rewrite(path: Path, data=None, affine=None) -> None:
    img = nib.load(path)
    out = nib.Nifti1Image(
        np.asarray(img.dataobj if data is None else data, np.float32),
        img.affine if affine is None else affine,
    )
    nib.save(out, path)


def _truncate(p):
    p.write_bytes(p.read_bytes()[: p.stat().st_size // 2])


def _nan(p):
    data = np.asarray(nib.load(p).dataobj, np.float32)
    data[10, 12, 5] = np.nan
    _rewrite(p, data)


def _shift(p):
    affine = nib.load(p).affine.copy()
    affine[:3, 3] += 500.0  # half a metre away: no overlap with the other scans
    _rewrite(p, affine=affine)


# (file of dummy-04, how to break it, words the message must hold)
BAD_FILES = {
    "truncated": ("t2", _truncate, "cannot be read as NIfTI"),
    "zero_bytes": ("t2", lambda p: p.write_bytes(b""), "cannot be read as NIfTI"),
    "4d": ("t2", lambda p: _rewrite(p, np.stack([nib.load(p).get_fdata()] * 2, -1)), "3D volume"),
    "nan": ("t2", _nan, "1 voxels are NaN or Inf"),
    "all_zero": ("t2", lambda p: _rewrite(p, np.zeros(nib.load(p).shape)), "all zeros"),
    "disjoint_fov": ("t2", _shift, "fields of view cannot be aligned"),
    "empty_mask": ("mask", lambda p: _rewrite(p, np.zeros(nib.load(p).shape)), "mask is empty"),
}


@pytest.mark.parametrize("case", sorted(BAD_FILES))
def test_parallel_build_names_subject_file_and_problem(case, cohort, tmp_path):
    what, breaks, words = BAD_FILES[case]
    # The first subject: always a worker's (the build loads later ones itself while they start).
    sid = "dummy-00"
    bad = cohort / sid / f"{sid}_{what}.nii.gz"
    breaks(bad)
    data = small_data(build_workers=2)  # the default (0) loads 10 tiny subjects without a pool
    with pytest.raises(InputError) as err:
        records.build(data, cohort, tmp_path / "rec")
    assert type(err.value.__cause__).__name__ == "_RemoteTraceback"  # raised in a worker
    bad = bad.resolve()
    assert err.value.subject == sid and err.value.path == str(bad)
    message = str(err.value)
    assert message.startswith(f"subject {sid}, file {bad}: ") and words in message, message
    assert _leftovers(tmp_path / "rec") == []


# ----------------------------------------------------------------------------- killed build
def _children(pid: int) -> list[int]:
    """Live (not zombie) child processes of `pid`, from /proc."""
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            state, ppid = stat.read_text().rsplit(")", 1)[1].split()[:2]
        except (OSError, IndexError):
            continue
        if int(ppid) == pid and state != "Z":
            out.append(int(stat.parent.name))
    return out


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads processes from /proc")
def test_killed_build_leaves_no_workers_and_next_build_cleans_up(cohort, tmp_path):
    rec = tmp_path / "rec"
    log = open(tmp_path / "build.log", "w")
    proc = subprocess.Popen(
        [sys.executable, __file__, str(cohort), str(rec)],
        cwd=REPO,
        env={
            **os.environ,
            "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
        },
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    deadline, workers = time.time() + 120, []
    # Two workers and multiprocessing's resource tracker, all started by the build.
    while len(workers) < 3 or not list(rec.glob(".staging-*")):
        assert proc.poll() is None, (tmp_path / "build.log").read_text()[-3000:]
        assert time.time() < deadline, "no worker process within 120 s"
        workers = _children(proc.pid)
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    deadline = time.time() + 30
    while any(_alive(p) for p in workers) and time.time() < deadline:
        time.sleep(0.1)
    assert not [p for p in workers if _alive(p)], "worker processes outlived the killed build"
    assert len(list(rec.glob(".staging-*"))) == 1  # what the killed build left behind
    recs = records.build(small_data(), cohort, rec)
    assert sum(len(s["label"]) for s in recs.index["splits"].values()) == 10
    assert list(rec.glob(".staging-*")) == []


def test_staging_of_a_live_build_is_kept(cohort, tmp_path):
    rec = tmp_path / "rec"
    live = records.Staging(rec, "volumes3d-live")  # another build in progress (its lock held)
    dead = rec / ".staging-volumes3d-dead-4242"
    (dead / "downloads").mkdir(parents=True)  # a build that died, from before staging locks
    try:
        records.build(small_data(), cohort, rec)
        assert live.path.is_dir() and not dead.exists()
    finally:
        live.close()
    assert not live.path.exists()


# ----------------------------------------------------------------------------- splits
def _labels(cohort: Path) -> dict[str, str]:
    rows = (cohort / "labels.csv").read_text().split()[1:]
    return dict(r.split(",") for r in rows)


def _split_labels(recs) -> dict[str, set]:
    return {s: set(v["label"]) for s, v in recs.index["splits"].items()}


def test_skip_at_load_time_splits_the_subjects_that_load(cohort, tmp_path):
    labels = _labels(cohort)
    ids = sorted(labels)
    d = small_data(on_error="skip", build_workers=2)  # skips coming back from worker processes
    s = d.split
    full = splits.assign_splits(
        ids,
        [labels[i] for i in ids],
        test=s.test,
        validation=s.validation,
        folds=s.folds,
        seed=s.seed,
    )
    # The only necrosis subject the whole cohort's split puts in validation fails to load.
    (lost,) = [i for i in ids if full[i]["split"] == "validation" and labels[i] == "necrosis"]
    _truncate(cohort / lost / f"{lost}_t1.nii.gz")
    recs = records.build(d, cohort, tmp_path / "rec")
    assert _split_labels(recs) == {"train": {0, 1}, "validation": {0, 1}, "test": {0, 1}}
    assert lost not in recs.index["assignment"]
    (skip,) = recs.index["skipped"]
    assert skip["subject_id"] == lost and skip["path"].endswith(f"{lost}_t1.nii.gz")
    assert "cannot be read as NIfTI" in skip["problem"]


def test_skips_that_empty_a_class_of_a_split_stop_the_build(cohort, tmp_path):
    for sid in ("dummy-03", "dummy-06"):  # 2 of the 4 necrosis subjects
        _truncate(cohort / sid / f"{sid}_t2.nii.gz")
    with pytest.raises(InputError) as err:
        records.build(small_data(on_error="skip"), cohort, tmp_path / "rec")
    message = str(err.value)
    assert message.startswith(f"file {cohort.resolve() / 'labels.csv'}: the validation split")
    assert "2 necrosis and 6 recurrence subjects" in message
    assert "(2 skipped: dummy-03, dummy-06)" in message and "at least 3" in message
    assert "config.data.split.validation" in message
    assert _leftovers(tmp_path / "rec") == []


def test_one_subject_class_stops_before_training(cohort, tmp_path):
    labels = cohort / "labels.csv"
    text = labels.read_text()
    for sid in ("dummy-03", "dummy-06", "dummy-09"):
        text = text.replace(f"{sid},necrosis", f"{sid},recurrence")
    labels.write_text(text)
    config = configs.ern.get_config("tiny")
    config.data.cohort_dir = str(cohort)
    config.data.mask_pattern = "*_mask.nii.gz"
    with pytest.raises(InputError) as err:
        loop.train_and_evaluate(config, tmp_path / "work")
    message = str(err.value)
    assert "the validation and test splits would hold no necrosis subject" in message
    assert "1 necrosis and 9 recurrence subjects" in message
    assert not (tmp_path / "work" / "checkpoints").exists()


def test_skipped_subjects_in_results_json_and_summary(cohort, tmp_path, capsys):
    _truncate(cohort / "dummy-04" / "dummy-04_t2.nii.gz")  # fails while loading
    (cohort / "dummy-05" / "dummy-05_flair.nii.gz").unlink()  # fails while finding the files
    config = configs.ern.get_config("tiny")
    config.data.cohort_dir = str(cohort)
    config.data.on_error = "skip"
    config.train.num_epochs = 1
    results = loop.train_and_evaluate(config, tmp_path / "work")
    written = json.loads((tmp_path / "work" / "results.json").read_text())
    assert written["skipped"] == results["skipped"]
    by_id = {s["subject_id"]: s for s in written["skipped"]}
    assert sorted(by_id) == ["dummy-04", "dummy-05"]
    assert by_id["dummy-04"]["file"] == "dummy-04/dummy-04_t2.nii.gz"
    assert "cannot be read as NIfTI" in by_id["dummy-04"]["problem"]
    assert by_id["dummy-05"]["file"] == "dummy-05"
    assert "no flair file matches" in by_id["dummy-05"]["problem"]
    printed = capsys.readouterr().out
    assert "2 subjects skipped (config.data.on_error='skip'), in no split:" in printed
    assert "  dummy-04: dummy-04/dummy-04_t2.nii.gz: cannot be read as NIfTI" in printed
    assert "  dummy-05: dummy-05: no flair file matches" in printed


if __name__ == "__main__":
    records.build(small_data(build_workers=2), Path(sys.argv[1]), Path(sys.argv[2]))
