"""Records build speed against `config.data.build_workers`: 1, 2, every core and the default.

    python -m benchmarks.build_workers [--out=benchmarks/results] [--repeats=3]
        [--cohorts=tiny,embedded,brats_3d,brats_2d] [--workers=1,2,all,default]

Cohorts:
  tiny      configs/ern.py:tiny's 12 synthetic subjects, slices2d 32 x 32 (the smoke runs);
  embedded  the main job's cohort: configs/ern.py (60 synthetic subjects, written once here),
            slices2d, lesion-centred 96 x 96;
  brats_3d  configs/brats2018_3d.py on ../shared/data/brats2018_hgg_lgg_2mm (21 subjects),
            volumes3d 48^3, four channels;
  brats_2d  the same scans as configs/ern.py's slices2d records (lesion slices from `_seg`).

Each build runs in a fresh process, as a real run's build does: its worker processes start from
nothing, and the process has imported `ernjax.main` (JAX, Flax, Orbax, TFDS), as under
`python -m ernjax.main`. The timer spans `records.build` only, not the process's own imports.
The settings are interleaved (1, 2, ..., 1, 2, ...) `--repeats` times, and each row reports the
median and range of subjects/s, with the CPU seconds per subject of the build and its workers
and the load average (a shared machine's other work shows there). `worker_start_s` is what
starting the pool costs (`ernjax.data.loading.WORKER_START_SECONDS` is set from it): the wall
time for a fresh pool of every core to run one trivial job in each worker.
It writes OUT/build_workers.json and OUT/build_workers.md.
"""

import importlib.util
import json
import logging as std_logging
import os
import re
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from absl import flags, logging

from benchmarks import common
from ernjax import cli

ROOT = Path(__file__).resolve().parents[1]
BRATS = ROOT.parent / "shared" / "data" / "brats2018_hgg_lgg_2mm"
# The config of each cohort: "tiny" is the 12-subject smoke cohort of issue 19's report.
CONFIGS = {
    "tiny": "configs/ern.py:tiny",
    "embedded": "configs/ern.py",
    "brats_3d": "configs/brats2018_3d.py",
    "brats_2d": "configs/ern.py",
}
COHORTS = tuple(CONFIGS)
NOTE = """
subjects_per_s: median of the runs, with their min and max; wall_s: the median build time. "all"
is measured as its number of cores ({cores} here: rows 1 and 2 only). cpu_s_per_subject counts
the build process and its workers. load: the 1-minute load average during the builds (median
{load:.1f}): a load at or above the cores means other work held them: workers then queue for
the cores with the build, and their start-up is CPU time added.
"""
COLUMNS = [
    "cohort", "build_workers", "workers", "subjects", "examples", "subjects_per_s",
    "subjects_per_s_min", "subjects_per_s_max", "wall_s", "cpu_s_per_subject", "load",
    "worker_start_s", "runs",
]  # fmt: skip
OUT_DIR = flags.DEFINE_string("out", "benchmarks/results", "report directory")
REPEATS = flags.DEFINE_integer("repeats", 3, "builds of each cohort and setting, interleaved")
ONLY = flags.DEFINE_list("cohorts", list(COHORTS), "cohorts to measure")
WORKERS = flags.DEFINE_list("workers", ["1", "2", "all", "default"], "build_workers settings")
ONE = flags.DEFINE_string("one", "", "internal: COHORT:WORKERS:COHORT_DIR, one build, as JSON")


def data_config(cohort: str, cohort_dir: str):
    """`config.data` of a cohort (see the module docstring), reading `cohort_dir`."""
    config = load_config(CONFIGS[cohort])
    d = config.data
    d.cohort_dir = cohort_dir
    if cohort == "brats_2d":
        d.mask_pattern = "*_seg.nii.gz"
        d.classes = ("HGG", "LGG")
        d.split.test = 0.0  # 4 LGG subjects: as configs/brats2018_3d.py
    return d


def workers_value(setting: str) -> int:
    """`build_workers` for a setting: "default" is 0, "all" every core."""
    if setting == "default":
        return 0
    return len(os.sched_getaffinity(0)) if setting == "all" else int(setting)


def one_build(cohort: str, setting: str, cohort_dir: str) -> dict:
    """Times one records build in this process (see the module docstring)."""
    from ernjax import main as _  # noqa: F401 (what a run's process has imported)
    from ernjax.data import loading, records

    d = data_config(cohort, cohort_dir)
    d.build_workers = workers_value(setting)
    said = _Said()
    std_logging.getLogger().addHandler(said)
    std_logging.getLogger().setLevel(std_logging.INFO)
    with tempfile.TemporaryDirectory() as tmp:
        load = os.getloadavg()[0]
        cpu = _cpu_s()
        t = time.perf_counter()
        recs = records.build(d, cohort_dir, tmp)
        wall = time.perf_counter() - t
        cpu = _cpu_s() - cpu
        load = (load + os.getloadavg()[0]) / 2
    subjects = len(recs.index["assignment"]) + len(recs.index["skipped"])
    examples = sum(len(v["label"]) for v in recs.index["splits"].values())
    cores = len(os.sched_getaffinity(0))
    t = time.perf_counter()
    with loading.pool(cores) as pool:
        list(pool.map(time.sleep, [0.0] * cores, chunksize=1))
        start_s = time.perf_counter() - t
    used = [int(m) for m in re.findall(r"with (\d+) workers", " ".join(said.lines))]
    return dict(
        wall_s=wall,
        cpu_s=cpu,
        subjects=subjects,
        examples=examples,
        load=load,
        start_s=start_s,
        workers=used[-1] if used else None,
    )


class _Said(std_logging.Handler):
    """Keeps the records build's "records: ..." log lines (which say the workers used)."""

    def __init__(self):
        super().__init__(std_logging.INFO)
        self.lines = []

    def emit(self, record):
        if record.getMessage().startswith("records:"):
            self.lines.append(record.getMessage())


def _cpu_s() -> float:
    # This process and its finished children (the pool's workers, once shut down).
    own, kids = (
        resource.getrusage(resource.RUSAGE_SELF),
        resource.getrusage(resource.RUSAGE_CHILDREN),
    )
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def _run_one(cohort: str, setting: str, cohort_dir: str) -> dict:
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "benchmarks.build_workers",
            f"--one={cohort}:{setting}:{cohort_dir}",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    if out.returncode:
        raise RuntimeError(f"{cohort} {setting}: {out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def load_config(path: str):
    """Imports `configs/<x>.py[:arg]` and returns its config (as benchmarks.builder does)."""
    path, _, arg = path.partition(":")
    spec = importlib.util.spec_from_file_location("cfg", ROOT / path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.get_config(arg or None)


def _summary(cohort: str, setting: str, runs: list[dict]) -> dict:
    rates = [r["subjects"] / r["wall_s"] for r in runs]
    return {
        "cohort": cohort,
        "build_workers": setting,
        "workers": "/".join(sorted({str(r["workers"] or 1) for r in runs})),
        "subjects": runs[0]["subjects"],
        "examples": runs[0]["examples"],
        "subjects_per_s": statistics.median(rates),
        "subjects_per_s_min": min(rates),
        "subjects_per_s_max": max(rates),
        "wall_s": statistics.median(r["wall_s"] for r in runs),
        "cpu_s_per_subject": statistics.median(r["cpu_s"] / r["subjects"] for r in runs),
        "load": statistics.median(r["load"] for r in runs),
        "worker_start_s": statistics.median(r["start_s"] for r in runs),
        "runs": len(runs),
        "rates": [round(x, 3) for x in rates],
    }


def main(argv):
    del argv
    logging.set_verbosity(logging.WARNING)
    if ONE.value:
        cohort, setting, cohort_dir = ONE.value.split(":", 2)
        print(json.dumps(one_build(cohort, setting, cohort_dir)))
        return
    settings, values = [], set()
    for s in WORKERS.value:  # "all" is "2" on 2 cores: measured once
        if s == "default" or workers_value(s) not in values:
            settings.append(s)
            values.add(workers_value(s))
    rows, md = [], ""
    with tempfile.TemporaryDirectory() as tmp:
        for cohort in ONLY.value:
            if cohort in ("tiny", "embedded"):
                from ernjax.data import prepare

                config = load_config(CONFIGS[cohort])
                cohort_dir = str(prepare.cohort_dir(config, Path(tmp) / cohort))
            elif BRATS.is_dir():
                cohort_dir = str(BRATS)
            else:
                print(f"skip {cohort}: {BRATS} not found")
                continue
            runs = {s: [] for s in settings}
            for r in range(REPEATS.value):
                for s in settings:  # interleaved: 1, 2, ..., 1, 2, ...
                    runs[s].append(_run_one(cohort, s, cohort_dir))
                    print(cohort, s, r, runs[s][-1], flush=True)
            rows += [_summary(cohort, s, v) for s, v in runs.items()]
            md = common.write_report(OUT_DIR.value, "build_workers", rows, COLUMNS)  # so far
            md += NOTE.format(
                cores=len(os.sched_getaffinity(0)), load=statistics.median(r["load"] for r in rows)
            )
            (Path(OUT_DIR.value) / "build_workers.md").write_text(md)
    print(md)


if __name__ == "__main__":
    cli.run(main)
