"""ernjax against MONAI/PyTorch on the same network, input, batch, optimizer and loss, in one run.

    python -m benchmarks.run [--suite=cpu|gpu] [--models=ern_b1,resnet10,densenet121]
        [--dtypes=float32,bfloat16] [--out=benchmarks/results]

For each network: the train step (Adam, class-weighted cross-entropy), inference throughput at
the train batch and batch-1 latency, warm (compile/first-call time reported separately), in
float32 and bfloat16 (PyTorch autocast on the peer side: AMP on a GPU; on a CPU the ernjax
trainer itself computes in float32 whatever is asked, `train.steps.compute_dtype`, and the
bfloat16 rows say what forcing it would cost). Each measure is timed in interleaved rounds,
ernjax and MONAI alternating, and the ratio is the median of the rounds' ratios with its range;
the thread settings of both sides go under the table. Peak device memory where the backend
reports it (GPUs). The input pipeline against the train step's consumption
is `python -m benchmarks.builder` (records, Grain, augmentation), run as part of this suite
unless --skip_pipeline. Ratios are ernjax / peer: above 1 means ernjax is faster.
Writes OUT/run.json and OUT/run.md stamped with the machine, versions and date.
"""

import dataclasses
import os
import time

import jax
import numpy as np
import optax
from absl import flags
from flax import nnx

from benchmarks import builder, common
from ernjax import cli, models
from ernjax.train import steps as train_steps

# name -> (spatial shape, channels, ernjax name, cpu batch, gpu batch, gpu shape)
CASES = {
    "ern_b1": ((224, 224), 3, "ern_b1", 16, 64, (224, 224)),
    "resnet10": ((64, 64, 64), 4, "resnet10", 2, 8, (128, 128, 128)),
    "densenet121": ((64, 64, 64), 4, "densenet121", 2, 4, (128, 128, 128)),
}
THREAD_ENV = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")
SUITE = flags.DEFINE_enum("suite", "cpu", ["cpu", "gpu"], "input sizes and batches")
MODELS = flags.DEFINE_list("models", list(CASES), "networks to measure")
DTYPES = flags.DEFINE_list("dtypes", ["float32", "bfloat16"], "compute dtypes")
REPEATS = flags.DEFINE_integer(
    "repeats", 5, "interleaved timed rounds per measure (median and range reported; at least 3)"
)
SKIP_PIPELINE = flags.DEFINE_bool("skip_pipeline", False, "skip the records/pipeline part")
SHAPE = flags.DEFINE_string("shape", "", "override the spatial shape, e.g. 32,32,32 (smoke runs)")


@dataclasses.dataclass
class Case:
    """One network at one input size and batch."""

    name: str
    shape: tuple[int, ...]
    channels: int
    batch: int

    @property
    def spatial_dims(self) -> int:
        """2 or 3."""
        return len(self.shape)


def cases() -> list[Case]:
    """The cases selected by the flags."""
    out = []
    for name in MODELS.value:
        shape, ch, _, cpu_b, gpu_b, gpu_shape = CASES[name]
        if SUITE.value == "gpu":
            shape, batch = gpu_shape, gpu_b
        else:
            batch = cpu_b
        if SHAPE.value:
            shape = tuple(int(s) for s in SHAPE.value.split(","))
        out.append(Case(name, tuple(shape), ch, batch))
    return out


def _batch(case: Case, batch: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((batch, *case.shape, case.channels), dtype=np.float32)
    y = rng.integers(0, 2, batch).astype(np.int32)
    return x, y


# ----------------------------------------------------------------------------- ernjax
def ernjax_case(case: Case, dtype: str) -> dict:
    """The ernjax model's warm train step, inference and batch-1 call, as callables that block.

    Returns {"compile_s", "train", "infer", "latency" (None with several devices), "peak_mem_gb"}.
    """
    model = models.create_model(
        CASES[case.name][2],
        in_channels=case.channels,
        num_classes=2,
        spatial_dims=case.spatial_dims,
        dtype=dtype,
        rngs=nnx.Rngs(0),
    )
    opt = nnx.Optimizer(model, optax.adam(1e-4), wrt=nnx.Param)
    steps = train_steps.build_steps(model, opt, np.array([1.5, 0.75]), train_steps.make_mesh())
    x, y = _batch(case, case.batch)
    b = train_steps.device_batch(
        {"image": x, "label": y, "valid": np.ones(case.batch, bool)}, steps.batch_sharding
    )
    state = {"s": steps.state}

    def step():
        state["s"], m = steps.train(state["s"], b)
        jax.block_until_ready(m)

    def infer(batch):
        out = steps.evaluate(state["s"]["model"], batch)
        jax.block_until_ready(out)

    t = time.perf_counter()
    step()
    compile_s = time.perf_counter() - t
    one = (
        train_steps.device_batch(
            {"image": x[:1], "label": y[:1], "valid": np.ones(1, bool)}, steps.batch_sharding
        )
        if jax.device_count() == 1
        else None
    )
    return {
        "compile_s": compile_s,
        "train": step,
        "infer": lambda: infer(b),
        "latency": (lambda: infer(one)) if one is not None else None,
        "peak_mem_gb": _jax_peak_memory,
    }


def _jax_peak_memory() -> float | None:
    stats = jax.devices()[0].memory_stats() or {}
    peak = stats.get("peak_bytes_in_use")
    return None if peak is None else peak / 2**30


# ----------------------------------------------------------------------------- MONAI / PyTorch
def torch_case(case: Case, dtype: str) -> dict | None:
    """The MONAI network on the same input, batch, optimizer and loss; None without torch.

    Returns the same callables as `ernjax_case`.
    """
    try:
        import torch
        from monai.networks import nets
    except ImportError:
        return None
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    torch.set_num_threads(len(os.sched_getaffinity(0)))
    sd = case.spatial_dims
    if case.name == "ern_b1":
        net = nets.EfficientNetBN("efficientnet-b1", pretrained=False, spatial_dims=sd,
                                  in_channels=case.channels, num_classes=2)  # fmt: skip
    elif case.name == "resnet10":
        net = nets.resnet10(spatial_dims=sd, n_input_channels=case.channels, num_classes=2)
    else:
        net = nets.DenseNet121(spatial_dims=sd, in_channels=case.channels, out_channels=2)
    net = net.to(dev)
    opt = torch.optim.Adam(net.parameters(), 1e-4)
    loss_fn = torch.nn.CrossEntropyLoss(weight=torch.tensor([1.5, 0.75], device=dev))
    x, y = _batch(case, case.batch)
    # PyTorch is channels-first: the same tensor, transposed once outside the timing.
    xt = torch.from_numpy(np.moveaxis(x, -1, 1).copy()).to(dev)
    yt = torch.from_numpy(y.astype(np.int64)).to(dev)
    amp = dtype == "bfloat16"

    def sync():
        if dev == "cuda":
            torch.cuda.synchronize()

    def step():
        net.train()
        opt.zero_grad(set_to_none=True)
        with torch.autocast(dev, dtype=torch.bfloat16, enabled=amp):
            loss = loss_fn(net(xt).float(), yt)
        loss.backward()
        opt.step()
        sync()

    def infer(inp):
        net.eval()
        with torch.no_grad(), torch.autocast(dev, dtype=torch.bfloat16, enabled=amp):
            net(inp)
        sync()

    if dev == "cuda":
        torch.cuda.reset_peak_memory_stats()
    t = time.perf_counter()
    step()
    first = time.perf_counter() - t
    return {
        "compile_s": first,
        "train": step,
        "infer": lambda: infer(xt),
        "latency": lambda: infer(xt[:1]),
        "peak_mem_gb": lambda: torch.cuda.max_memory_allocated() / 2**30 if dev == "cuda" else None,
    }


def rows_for(case: Case, dtype: str) -> list[dict]:
    """Table rows (train, inference, latency) of one case and dtype, with ratios.

    Each measure is timed in `--repeats` interleaved rounds (ernjax, MONAI, ernjax, MONAI, ...)
    after one warm call per side, so that a slow spell of a shared machine falls on both sides.
    A round's ratio compares the two sides' times in that round; the table gives each side's
    median and the median ratio with its range over the rounds.
    """
    ours, peer = ernjax_case(case, dtype), torch_case(case, dtype)
    base = {
        "model": case.name,
        "input": "x".join(map(str, (*case.shape, case.channels))),
        "dtype": dtype,
    }
    out = []
    for what, key, per in (
        ("train ex/s", "train", case.batch),
        ("infer ex/s", "infer", case.batch),
        ("latency ms (b=1)", "latency", None),
    ):
        row = {**base, "batch": 1 if per is None else case.batch, "measure": what}
        sides = [ours[key]] + ([peer[key]] if peer else [])
        if any(fn is None for fn in sides):
            out.append(row)
            continue
        times = common.interleaved(sides, repeats=REPEATS.value)
        row["ernjax"] = _value(float(np.median(times[0])), per)
        if peer:
            row["peer"] = _value(float(np.median(times[1])), per)
            # ratio > 1: ernjax faster (more ex/s, or fewer ms): peer time / ernjax time
            ratios = np.asarray(times[1]) / np.asarray(times[0])
            row["ratio"] = float(np.median(ratios))
            row["ratio range"] = f"{ratios.min():.3g}-{ratios.max():.3g}"
        out.append(row)
    out[0]["compile_s ernjax/peer"] = (
        f"{ours['compile_s']:.1f} / {peer['compile_s']:.1f}" if peer else f"{ours['compile_s']:.1f}"
    )
    mem = [ours["peak_mem_gb"](), peer["peak_mem_gb"]() if peer else None]
    if any(m is not None for m in mem):
        out[0]["peak GiB ernjax/peer"] = " / ".join("n/a" if m is None else f"{m:.2f}" for m in mem)
    return out


def threads_note(repeats: int) -> str:
    """How each side was threaded and timed, for the report (both sides share the cores)."""
    env = {k: os.environ[k] for k in THREAD_ENV if k in os.environ}
    lines = [
        f"Each measure: {repeats} interleaved rounds (ernjax, MONAI, then MONAI, ernjax, ...) "
        "after one warm call per side; ernjax and peer are the medians, ratio is the median of "
        "the rounds' peer time / ernjax time (above 1: ernjax faster), with its range.",
        f"Threads: XLA's CPU client runs on all {len(os.sched_getaffinity(0))} cores of the "
        f"affinity mask; XLA_FLAGS={os.environ.get('XLA_FLAGS', '')!r}; "
        f"ERNJAX_CPU_FAST_PATHS={os.environ.get('ERNJAX_CPU_FAST_PATHS', '1')}; "
        + ("; ".join(f"{k}={v}" for k, v in env.items()) or "no OMP/MKL/BLAS thread variables set"),
    ]
    try:
        import torch

        lines.append(
            f"PyTorch: {torch.get_num_threads()} intra-op threads, "
            f"{torch.get_num_interop_threads()} inter-op, oneDNN "
            f"{'on' if torch.backends.mkldnn.is_available() else 'off'}."
        )
    except ImportError:
        pass
    return "\n\n".join(lines)


def _value(seconds: float, per_batch: int | None) -> float:
    return per_batch / seconds if per_batch else seconds * 1000.0


def main(argv):
    del argv
    # compile_s is the compile time: programs read back from the persistent cache would hide it.
    jax.config.update("jax_enable_compilation_cache", False)
    rows = []
    for case in cases():
        for dtype in DTYPES.value:
            got = rows_for(case, dtype)
            for r in got:
                print(r, flush=True)
            rows += got
    columns = ["model", "input", "dtype", "batch", "measure", "ernjax", "peer", "ratio",
               "ratio range", "compile_s ernjax/peer", "peak GiB ernjax/peer"]  # fmt: skip
    md = common.write_report(
        builder.OUT_DIR.value, "run", rows, columns, notes=threads_note(REPEATS.value)
    )
    print(md)
    if not SKIP_PIPELINE.value:
        builder.main([""])


if __name__ == "__main__":
    cli.run(main)
