"""The multi-host path on this machine: 2 processes on localhost via launch/multiprocess_local.sh.

Each process owns one CPU device and its share of every global batch; jax.distributed (gloo
collectives on the CPU) joins them exactly as on a SLURM cluster. Process 0 writes the cohort,
the records, the checkpoints' metadata and the results.
"""

import json
import os
import re
import socket
import subprocess
import sys
from pathlib import Path

from ernjax.data import records
from ernjax.evaluate import predictions

REPO = Path(__file__).resolve().parents[1]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def _env() -> dict:
    env = {**os.environ, "ERNJAX_COORDINATOR_PORT": str(_free_port())}
    env.pop("XLA_FLAGS", None)  # one device per process, not the tests' 4 fake ones
    return env


def _launch(workdir: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["bash", "launch/multiprocess_local.sh", "2", "configs/ern.py:tiny", str(workdir)],
        cwd=REPO,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=600,
    )


# Not INFO/WARNING log lines: what went wrong, in absl's, XLA's and Python's words.
_ERROR = re.compile(r"Traceback|Error|error|Check failed|^[EF]\d{4} ")
_INFO = re.compile(r"^[IW]\d{4} ")


def _first_error(log: Path, after: int = 3) -> str:
    """The first error line of one process's log and a few after it.

    Of a Python traceback, the exception line that ends it (the frames between say only where).
    """
    if not log.exists():
        return "no log: the process did not start"
    lines = log.read_text(errors="replace").splitlines()
    for i, line in enumerate(lines):
        if _ERROR.search(line) and not _INFO.match(line):
            if line.startswith("Traceback"):
                i = next((j for j in range(i + 1, len(lines)) if not lines[j][:1].isspace()), i)
            shown = lines[i : i + 1 + after]
            # JAX's note on filtered frames follows its exceptions: not worth the lines.
            return "\n".join(shown[: next((k for k, x in enumerate(shown) if x == "-" * 20), None)])
    return "no error line; the log ends:\n" + "\n".join(lines[-after:])


def _failure(rc: int, logs: list[Path]) -> str:
    """The assertion message of a failed multi-process run: each process's first error."""
    first = [f"--- {log.name}:\n{_first_error(log)}" for log in logs]
    return f"exit status {rc}; the first error of each process:\n" + "\n".join(first)


def _logs(workdir: Path) -> list[Path]:
    return [workdir / "logs" / f"process_{i}.log" for i in range(2)]


def test_two_processes_train_evaluate_and_resume(tmp_path):
    done = _launch(tmp_path)
    rc = done.returncode  # not the CompletedProcess in pytest's message: its whole stderr
    assert rc == 0, _failure(rc, _logs(tmp_path))
    assert "JAX process 1/2" in done.stderr and "JAX process 0/2" in done.stderr
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["test.subject.n"] >= 2
    # Every test example evaluated exactly once across the two processes' shards.
    recs = records.open_records(next((tmp_path / "records" / "ernjax_mri").glob("*/1.0.0")))
    test = predictions.read_csv(tmp_path / "predictions_test.csv")
    assert test.subject_id == recs.index["splits"]["test"]["subject_id"]
    assert len(list((tmp_path / "checkpoints").glob("[0-9]*"))) >= 1

    again = _launch(tmp_path)  # rerunning resumes: nothing left to train
    rc = again.returncode
    assert rc == 0, _failure(rc, _logs(tmp_path))
    assert "training already complete" in again.stderr


# Process 0 alone writes the cohort and builds the records; on a loaded machine that took it over
# 60 s, and the other process, waiting at the barrier after it, was killed (issue 14, item 6).
_SLOW_PROCESS_0 = """
import sys, time
import numpy as np
from jax.experimental import multihost_utils
import configs.ern
from ernjax import main
from ernjax.data import prepare, records

port, pid, workdir = sys.argv[1:]
main.initialize_distributed(f"localhost:{port}", 2, int(pid))
build = records.build

def slow_build(*args, **kwargs):
    time.sleep(35)  # longer than gloo waits for a peer at its first collective (30 s)
    return build(*args, **kwargs)

if pid == "0":
    records.build = slow_build
info = prepare.prepare(configs.ern.get_config("tiny"), workdir)
n = multihost_utils.process_allgather(np.int32(info.num_examples["train"]))
print("train examples of each process:", n.tolist())
"""


def test_records_barrier_waits_for_a_slow_process_0(tmp_path):
    env, logs = _env(), [tmp_path / f"process_{i}.log" for i in range(2)]
    port = env["ERNJAX_COORDINATOR_PORT"]
    procs = []
    for i, log in enumerate(logs):
        with log.open("w") as err:
            argv = [sys.executable, "-c", _SLOW_PROCESS_0, port, str(i), str(tmp_path / "work")]
            procs.append(
                subprocess.Popen(argv, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=err)
            )
    try:
        outs = [p.communicate(timeout=600)[0].decode() for p in procs]
    finally:
        for p in procs:
            p.kill()  # a no-op for those that ended
    rc = max(p.returncode for p in procs)
    assert rc == 0, _failure(rc, logs)
    line = r"^train examples of each process: \[(\d+), (\d+)\]$"
    counts = re.findall(line, "\n".join(outs), re.MULTILINE)
    # Both processes passed the barrier and the collective after it, and read the same records.
    assert len(counts) == 2 and len(set(counts)) == 1 and counts[0][0] == counts[0][1], outs
