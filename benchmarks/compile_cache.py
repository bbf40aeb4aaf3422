"""Compile once: what JAX's persistent compilation cache saves, measured in fresh processes.

    python -m benchmarks.compile_cache [--models=ern_b1,resnet10] [--rounds=3]
        [--crossval_folds=3] [--out=benchmarks/results]

1. Time to the first train step. Each round starts two fresh processes on one new, empty cache
   folder: the first compiles the train step and writes it to the cache ("cold"), the second
   reads it back ("warm"), as a rerun of the main job does. Both the first step (compile or
   read, plus the step) and the process's whole wall time (imports, model, first step) are
   reported, as medians over the rounds with their range.
2. A whole `crossval` (configs/ern.py, 1 epoch, `--crossval_folds` folds, records built in its
   own workdir) with the cache off and then with the cache on and empty: with it, the first fold
   compiles and the others read.

Writes OUT/compile_cache.json and .md stamped with the machine.
"""

import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from absl import flags

from benchmarks import builder, common, run
from ernjax import cli

ROUNDS = flags.DEFINE_integer("rounds", 3, "cold/warm process pairs per model")
FOLDS = flags.DEFINE_integer("crossval_folds", 3, "folds of the crossval part (0 skips it)")
CHILD = flags.DEFINE_bool("child", False, "internal: time one process's first train step")


def child() -> None:
    """Prints the first train step's seconds of `--models`' first model as one JSON line."""
    case = run.cases()[0]
    ours = run.ernjax_case(case, "float32")
    t = time.perf_counter()
    ours["train"]()
    print(json.dumps({"first_step_s": ours["compile_s"], "warm_step_s": time.perf_counter() - t}))


def _process(model: str, cache: str) -> dict:
    cmd = [sys.executable, "-m", "benchmarks.compile_cache", "--child", f"--models={model}",
           f"--compilation_cache_dir={cache}"]  # fmt: skip
    if run.SHAPE.value:
        cmd.append(f"--shape={run.SHAPE.value}")
    t = time.perf_counter()
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    got = json.loads(out.strip().splitlines()[-1])
    return got | {"process_s": time.perf_counter() - t}


def first_step_rows() -> list[dict]:
    """Cold and warm first train step per model, over `--rounds` fresh cache folders."""
    rows = []
    for model in run.MODELS.value:
        cold, warm = [], []
        for _ in range(ROUNDS.value):
            with tempfile.TemporaryDirectory() as cache:
                cold.append(_process(model, cache))
                warm.append(_process(model, cache))
        for what, key in (("first train step s", "first_step_s"), ("process wall s", "process_s")):
            c, w = np.array([r[key] for r in cold]), np.array([r[key] for r in warm])
            rows.append({
                "model": model, "measure": what, "cache cold": float(np.median(c)),
                "cache warm": float(np.median(w)), "cold / warm": float(np.median(c / w)),
                "range": f"{(c / w).min():.3g}-{(c / w).max():.3g}",
                "warm step s": float(np.median([r["warm_step_s"] for r in warm])),
            })  # fmt: skip
            print(rows[-1], flush=True)
    return rows


def _crossval(workdir: Path, cache: str) -> float:
    cmd = [sys.executable, "-m", "ernjax.crossval", "--config=configs/ern.py",
           f"--workdir={workdir}", "--config.train.num_epochs=1",
           f"--config.data.split.folds={FOLDS.value}",
           f"--compilation_cache_dir={cache}"]  # fmt: skip
    t = time.perf_counter()
    subprocess.run(cmd, capture_output=True, text=True, check=True)
    return time.perf_counter() - t


def crossval_rows() -> list[dict]:
    """One crossval without the cache and one with an empty cache, each in a fresh workdir."""
    with tempfile.TemporaryDirectory() as tmp:
        off = _crossval(Path(tmp) / "off", "")
        on = _crossval(Path(tmp) / "on", str(Path(tmp) / "cache"))
    row = {"model": f"crossval ern.py, {FOLDS.value} folds x 1 epoch", "measure": "wall s",
           "cache cold": off, "cache warm": on, "cold / warm": off / on}  # fmt: skip
    row["note"] = "cold = cache off; warm = cache on, empty at the start (fold 0 compiles)"
    print(row, flush=True)
    return [row]


def main(argv):
    del argv
    if CHILD.value:
        child()
        return
    rows = first_step_rows() + (crossval_rows() if FOLDS.value else [])
    columns = ["model", "measure", "cache cold", "cache warm", "cold / warm", "range",
               "warm step s", "note"]  # fmt: skip
    notes = (
        f"First train step: {ROUNDS.value} rounds, each a new empty cache folder and two fresh "
        "processes on it (cold writes, warm reads); medians, with the range of the per-round "
        "cold/warm ratio. Crossval: one run each way, so a single pair."
    )
    print(common.write_report(builder.OUT_DIR.value, "compile_cache", rows, columns, notes=notes))


if __name__ == "__main__":
    cli.run(main)
