"""Outputs are written whole or not at all, and a full disk is reported in one line.

A full disk is simulated, without root: `open` of the chosen files writes a few bytes and then
raises ENOSPC, and for checkpoints Orbax's TensorStore writes fail the way TensorStore reports
it, asynchronously, on real TensorStore futures (so the "Event loop is closed" echoes appear as
they do on a real full disk; `mount -t tmpfs -o size=3m` reproduces the same by hand).

`python tests/test_outputs_atomic.py WORKDIR CACHE_DIR FAIL_STEP` is the subprocess of the
checkpoint test: `python -m ernjax.main` on the tiny fake data of test_train.
"""

import builtins
import contextlib
import errno
import functools
import io
import os
import runpy
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
from test_train import FakePipeline, tiny_config

from ernjax import errors
from ernjax.evaluate import predictions, reporting
from ernjax.train import loop

REPO = Path(__file__).resolve().parents[1]
FULL = "No space left on device"


# ----------------------------------------------------------------------------- a full disk
class _FullFile:
    """A file opened for writing on a disk with `room` bytes left."""

    def __init__(self, f, room: int):
        self._f, self._room = f, room

    def write(self, data):
        if len(data) > self._room:
            self._f.write(data[: self._room])
            self._f.flush()  # the cut-off part reaches the file, as on a real disk
            self._room = 0
            raise OSError(errno.ENOSPC, FULL)
        self._room -= len(data)
        return self._f.write(data)

    def __getattr__(self, name):
        return getattr(self._f, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self._f.close()


@contextlib.contextmanager
def full_disk(match=lambda path: True, room: int = 8):
    """While active, files opened for writing whose path satisfies `match` fill up."""
    real = builtins.open

    def fake_open(file, mode="r", *args, **kwargs):
        f = real(file, mode, *args, **kwargs)
        if any(c in mode for c in "wax+") and isinstance(file, str | os.PathLike) and match(file):
            return _FullFile(f, room)
        return f

    mp = pytest.MonkeyPatch()
    mp.setattr(builtins, "open", fake_open)
    mp.setattr(io, "open", fake_open)  # pathlib's write_text goes through io.open
    try:
        yield
    finally:
        mp.undo()


def _snapshot(folder: Path) -> dict:
    """Every file under `folder` (hidden ones included) -> its bytes."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


# ----------------------------------------------------------------------------- every writer
def _preds(version: int) -> predictions.Predictions:
    rng = np.random.default_rng(version)
    probs = rng.random((40, 2))
    return predictions.Predictions(
        [f"sub-{i // 4:02d}" for i in range(40)],
        np.arange(40) % 2,
        probs / probs.sum(1, keepdims=True),
        ("necrosis", "recurrence"),
    )


def _metrics(version: int) -> dict:
    return {"run": {"auc": 0.5 + version / 10, "n": 10, "n_positive": 4, "positive_class": "r"}}


def _write_nifti(folder: Path, version: int) -> None:
    from ernjax.data.geometry import Image, save_image

    data = np.full((6, 5, 4), float(version), np.float32)
    save_image(Image(data, np.eye(4)), folder / "sub-01_t1.nii.gz")


def _write_png(folder: Path, version: int) -> None:
    from ernjax import gradcam

    rng = np.random.default_rng(version)
    gradcam.overlay_png(rng.random((12, 10, 3)), rng.random((12, 10)), folder / "cam.png")


def _write_roc(folder: Path, version: int) -> None:
    y = np.arange(20) % 2
    scores = np.random.default_rng(version).random(20)
    reporting.plot_roc({"model": (y, scores)}, folder / "roc.png")


def _write_qc_index(folder: Path, version: int) -> None:
    from ernjax.preprocess import qc

    row = {"subject": "sub-01", "status": "done", "metrics": {"min_mi": version / 10}, "qc": ""}
    qc.write_index(folder, [row])


def _write_init_report(folder: Path, version: int) -> None:
    from ernjax.models import pretrained

    pretrained.InitReport(path=f"weights_v{version}.pt", loaded=["a"] * 20).write_json(
        folder / "init_report.json"
    )


WRITERS = {
    "predictions csv": lambda d, v: predictions.write_csv(d / "predictions_test.csv", _preds(v)),
    "results json": lambda d, v: reporting.write_json(d / "results.json", {"auc": v / 10}),
    "tables": lambda d, v: reporting.write_tables(d, "compare", _metrics(v)),
    "nifti": _write_nifti,
    "gradcam png": _write_png,
    "roc png": _write_roc,
    "qc index": _write_qc_index,
    "init report": _write_init_report,
}


@pytest.mark.parametrize("name", list(WRITERS))
def test_a_writer_failing_midway_leaves_the_previous_file(name, tmp_path):
    WRITERS[name](tmp_path, 1)
    before = _snapshot(tmp_path)
    with full_disk(), pytest.raises(OSError) as failure:
        WRITERS[name](tmp_path, 2)
    assert _snapshot(tmp_path) == before  # not cut mid-row, and no temporary file left
    assert isinstance(failure.value, errors.NoSpaceError)
    message = str(failure.value)
    assert message.startswith(f"no space left on device while writing {tmp_path}/")
    assert message.split(f"{tmp_path}/")[1].split(" ")[0] in before  # names the output file
    WRITERS[name](tmp_path, 2)  # and with room again, the new version goes in
    assert _snapshot(tmp_path) != before


# ----------------------------------------------------------------------------- a run's outputs
def test_a_failed_final_output_leaves_the_previous_complete_set(tmp_path, compile_cache):
    """Disk full at results.json: not new predictions beside the old results.json."""
    outputs = ("results.json", "predictions_validation.csv", "predictions_test.csv")
    loop.train_and_evaluate(tiny_config(num_epochs=1), tmp_path, pipeline=FakePipeline())
    first = {n: (tmp_path / n).read_bytes() for n in outputs}
    more = tiny_config(num_epochs=2)  # resumes, so its predictions differ from the first's
    with full_disk(lambda p: str(p).endswith("results.json")), pytest.raises(OSError) as failure:
        loop.train_and_evaluate(more, tmp_path, pipeline=FakePipeline())
    assert {n: (tmp_path / n).read_bytes() for n in outputs} == first
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".tmp-")]
    assert str(failure.value) == (
        f"no space left on device while writing {tmp_path}/results.json "
        "(the previous outputs are unchanged)"
    )
    loop.train_and_evaluate(more, tmp_path, pipeline=FakePipeline())  # room again: completes
    for name in outputs:
        assert (tmp_path / name).read_bytes() != first[name]


# ----------------------------------------------------------------------------- checkpoints
# TensorStore's words for ENOSPC, as Orbax raises them (measured on a full tmpfs).
TS_FULL = (
    'RESOURCE_EXHAUSTED: Error writing local file "{path}": Failed to write 238347 bytes to file '
    f"8: {FULL} [os_error_code='28']"
)


def _fail_tensorstore_writes(step: int) -> list:
    """Makes every array write of checkpoint `step` fail as TensorStore does on a full disk.

    Each write awaits a real TensorStore future that a timer thread fails: the first at once,
    the others a little later, after Orbax has given up on the save and closed its event loop.
    Returns the timers (join them before checking the output).
    """
    import tensorstore as ts
    from orbax.checkpoint._src.serialization import serialization

    real, timers = serialization.async_serialize_from_host, []

    async def write(rslices, tspec, **kwargs):
        if f"/{step}.orbax-checkpoint-tmp/" not in str(tspec):
            return await real(rslices, tspec, **kwargs)
        promise, future = ts.Promise.new()
        error = ValueError(TS_FULL.format(path=tspec["kvstore"]))
        timer = threading.Timer(0.02 if not timers else 0.5, promise.set_exception, [error])
        timers.append(timer)
        timer.start()
        await future

    serialization.async_serialize_from_host = write
    return timers


def _checkpoint_subprocess(workdir: str, cache_dir: str, fail_step: str) -> None:
    """`python -m ernjax.main` with test_train's fake data and a disk full at one checkpoint."""
    import jax
    from jax.experimental.compilation_cache import compilation_cache

    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
    compilation_cache.set_cache_dir(cache_dir)
    loop.train_and_evaluate = functools.partial(loop.train_and_evaluate, pipeline=FakePipeline())
    timers = _fail_tensorstore_writes(int(fail_step))
    sys.argv = [
        "ernjax.main",
        f"--workdir={workdir}",
        "--config=configs/ern.py:tiny",
        "--config.model.name=resnet10_tiny",
        "--config.train.num_epochs=3",
        "--config.train.checkpoint_every_steps=1",
        "--config.eval.batch_size=8",
    ]
    try:
        runpy.run_module("ernjax.main", run_name="__main__")
    finally:
        for t in timers:
            t.join()


if __name__ == "__main__":
    _checkpoint_subprocess(*sys.argv[1:4])


def test_disk_full_while_checkpointing_is_one_clear_line(tmp_path, compile_cache):
    workdir = tmp_path / "run"
    env = {**os.environ, "PYTHONPATH": str(REPO), "XLA_FLAGS": ""}
    proc = subprocess.run(
        [sys.executable, __file__, str(workdir), str(compile_cache), "4"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    err = proc.stderr
    assert proc.returncode == 1, err[-3000:]
    assert "Event loop is closed" not in err, f"{err.count('Event loop is closed')} echoes"
    assert "Traceback" not in err, err[-3000:]
    lines = err.strip().splitlines()
    assert [line for line in lines if FULL.lower() in line.lower()] == [lines[-1]]
    assert lines[-1].startswith(
        f"ernjax: no space left on device while writing checkpoint step 4 to "
        f"{workdir}/checkpoints; steps [1, 2, 3] there are intact. Free space there and rerun "
        "the same command to resume."
    ), lines[-1]
    assert not (workdir / "results.json").exists()  # the run stopped before its outputs
