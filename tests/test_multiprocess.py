"""The multi-host path on this machine: 2 processes on localhost via launch/multiprocess_local.sh.

Each process owns one CPU device and its share of every global batch; jax.distributed (gloo
collectives on the CPU) joins them exactly as on a SLURM cluster. Process 0 writes the cohort,
the records, the checkpoints' metadata and the results.
"""

import json
import os
import socket
import subprocess
from pathlib import Path

from ernjax.data import records
from ernjax.evaluate import predictions

REPO = Path(__file__).resolve().parents[1]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def _launch(workdir: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "ERNJAX_COORDINATOR_PORT": str(_free_port())}
    env.pop("XLA_FLAGS", None)  # one device per process, not the tests' 4 fake ones
    return subprocess.run(
        ["bash", "launch/multiprocess_local.sh", "2", "configs/ern.py:tiny", str(workdir)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )


def test_two_processes_train_evaluate_and_resume(tmp_path):
    done = _launch(tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "JAX process 1/2" in done.stderr and "JAX process 0/2" in done.stderr
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["test.subject.n"] >= 2
    # Every test example evaluated exactly once across the two processes' shards.
    recs = records.open_records(next((tmp_path / "records" / "ernjax_mri").glob("*/1.0.0")))
    test = predictions.read_csv(tmp_path / "predictions_test.csv")
    assert test.subject_id == recs.index["splits"]["test"]["subject_id"]
    assert len(list((tmp_path / "checkpoints").glob("[0-9]*"))) >= 1

    again = _launch(tmp_path)  # rerunning resumes: nothing left to train
    assert again.returncode == 0, again.stderr[-3000:]
    assert "training already complete" in again.stderr
