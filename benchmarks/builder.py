"""Records build speed and input-pipeline throughput against the train step's consumption.

    python -m benchmarks.builder [--out=benchmarks/results] [--steps=10]

For each real-data config (configs/brats2018_3d.py: volumes3d; configs/tcga_lgg_2d.py: slices2d,
both reading ../shared/data) it measures, in one process on the current machine:
  - build: subjects/s and examples/s of a fresh records build (all cores, `data.build_workers=0`);
  - pipeline: examples/s delivered by `train_iterator` with the config's augmentation;
  - step: examples/s the jit train step consumes on in-memory batches (compile excluded);
  - fed: examples/s of the train step fed by the real pipeline (nnU-Net's check: if `fed` is well
    below `step`, loading is the bottleneck).
It prints a Markdown table and writes OUT/builder.json and OUT/builder.md.
"""

import importlib.util
import tempfile
import time
from pathlib import Path

import jax
from absl import flags, logging

from benchmarks import common
from ernjax import cli
from ernjax.data import pipeline as input_pipeline
from ernjax.data import records
from ernjax.data.prepare import prepare
from ernjax.train import steps as train_steps

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ("configs/brats2018_3d.py", "configs/tcga_lgg_2d.py")
OUT_DIR = flags.DEFINE_string("out", "benchmarks/results", "report directory")
STEPS = flags.DEFINE_integer("steps", 10, "timed batches/steps per measurement")
ONLY = flags.DEFINE_list("configs", list(CONFIGS), "config files to measure")


def load_config(path: str):
    """Imports `configs/<x>.py` and returns its default config."""
    spec = importlib.util.spec_from_file_location("cfg", ROOT / path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.get_config()


def measure(config, workdir: Path, n: int) -> dict:
    """Build, pipeline, step and fed throughput of one config (see the module docstring)."""
    config.data.records_dir = str(workdir / "records")
    t = time.perf_counter()
    recs = records.build(config.data, config.data.cohort_dir, config.data.records_dir)
    build_s = time.perf_counter() - t
    n_subjects = len(recs.index["assignment"]) + len(recs.index["skipped"])
    n_examples = sum(len(v["label"]) for v in recs.index["splits"].values())

    info = prepare(config, workdir)
    batch = config.train.batch_size
    it = input_pipeline.train_iterator(config, info, global_batch=batch)
    next(it)  # opens the shards
    t = time.perf_counter()
    batches = [next(it) for _ in range(n)]
    pipeline_s = (time.perf_counter() - t) / n

    spe = input_pipeline.steps_per_epoch(info, batch)
    model = train_steps.create_model(config, info.image_shape)
    steps = train_steps.build_training(config, model, info.train_class_counts, spe)[0]
    dev = [train_steps.device_batch(b, steps.batch_sharding) for b in batches]

    def run_steps(feed):
        state = steps.state
        for b in feed():
            state, metrics = steps.train(state, b)
        jax.block_until_ready(metrics)
        steps.state = state

    run_steps(lambda: dev[:1])  # compile
    t = time.perf_counter()
    run_steps(lambda: dev)
    step_s = (time.perf_counter() - t) / n
    t = time.perf_counter()
    run_steps(lambda: (train_steps.device_batch(next(it), steps.batch_sharding) for _ in range(n)))
    fed_s = (time.perf_counter() - t) / n
    return {
        "kind": info.kind,
        "shape": "x".join(map(str, info.image_shape)),
        "subjects": n_subjects,
        "examples": n_examples,
        "build_s": build_s,
        "build_subjects_per_s": n_subjects / build_s,
        "build_examples_per_s": n_examples / build_s,
        "model": config.model.name,
        "batch": batch,
        "pipeline_examples_per_s": batch / pipeline_s,
        "step_examples_per_s": batch / step_s,
        "fed_examples_per_s": batch / fed_s,
        "pipeline_over_step": step_s / pipeline_s,
        "fed_over_step": step_s / fed_s,
    }


def main(argv):
    del argv
    logging.set_verbosity(logging.WARNING)
    rows = []
    for path in ONLY.value:
        config = load_config(path)
        if not Path(config.data.cohort_dir).is_dir():
            print(f"skip {path}: {config.data.cohort_dir} not found")
            continue
        with tempfile.TemporaryDirectory() as tmp:
            row = measure(config, Path(tmp), STEPS.value)
        row["config"] = path
        rows.append(row)
        print(row)
    columns = [
        "config", "kind", "shape", "subjects", "examples", "build_subjects_per_s",
        "build_examples_per_s", "model", "batch", "pipeline_examples_per_s",
        "step_examples_per_s", "fed_examples_per_s", "pipeline_over_step", "fed_over_step",
    ]  # fmt: skip
    print(common.write_report(OUT_DIR.value, "builder", rows, columns))


if __name__ == "__main__":
    cli.run(main)
