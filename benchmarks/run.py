"""ernjax against MONAI/PyTorch on the same network, input, batch, optimizer and loss, in one run.

    python -m benchmarks.run [--suite=cpu|gpu] [--models=ern_b1,resnet10,densenet121]
        [--dtypes=float32,bfloat16] [--out=benchmarks/results]

For each network: the train step (Adam, class-weighted cross-entropy), inference throughput at
the train batch and batch-1 latency, warm (compile/first-call time reported separately), in
float32 and bfloat16 (PyTorch autocast on the peer side: AMP on a GPU). Peak device memory
where the backend reports it (GPUs). The input pipeline against the train step's consumption
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
SUITE = flags.DEFINE_enum("suite", "cpu", ["cpu", "gpu"], "input sizes and batches")
MODELS = flags.DEFINE_list("models", list(CASES), "networks to measure")
DTYPES = flags.DEFINE_list("dtypes", ["float32", "bfloat16"], "compute dtypes")
REPEATS = flags.DEFINE_integer("repeats", 3, "timed repetitions (median reported)")
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
    """Train step, inference and latency of the ernjax model (seconds, warm)."""
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
    res = {
        "compile_s": compile_s,
        "train_s": common.timed(step, warmup=1, repeats=REPEATS.value),
        "infer_s": common.timed(lambda: infer(b), warmup=1, repeats=REPEATS.value),
        "latency_s": common.timed(lambda: infer(one), warmup=1, repeats=REPEATS.value)
        if one is not None
        else float("nan"),
    }
    res["peak_mem_gb"] = _jax_peak_memory()
    return res


def _jax_peak_memory() -> float | None:
    stats = jax.devices()[0].memory_stats() or {}
    peak = stats.get("peak_bytes_in_use")
    return None if peak is None else peak / 2**30


# ----------------------------------------------------------------------------- MONAI / PyTorch
def torch_case(case: Case, dtype: str) -> dict | None:
    """The MONAI network on the same input, batch, optimizer and loss; None without torch."""
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
    res = {
        "compile_s": first,
        "train_s": common.timed(step, warmup=1, repeats=REPEATS.value),
        "infer_s": common.timed(lambda: infer(xt), warmup=1, repeats=REPEATS.value),
        "latency_s": common.timed(lambda: infer(xt[:1]), warmup=1, repeats=REPEATS.value),
        "peak_mem_gb": torch.cuda.max_memory_allocated() / 2**30 if dev == "cuda" else None,
    }
    return res


def rows_for(case: Case, dtype: str) -> list[dict]:
    """Table rows (train, inference, latency) of one case and dtype, with ratios."""
    ours, peer = ernjax_case(case, dtype), torch_case(case, dtype)
    base = {
        "model": case.name,
        "input": "x".join(map(str, (*case.shape, case.channels))),
        "dtype": dtype,
    }
    out = []
    for what, key, per in (
        ("train ex/s", "train_s", case.batch),
        ("infer ex/s", "infer_s", case.batch),
        ("latency ms (b=1)", "latency_s", None),
    ):
        row = {**base, "batch": 1 if per is None else case.batch, "measure": what}
        row["ernjax"] = _value(ours[key], per)
        row["peer"] = _value(peer[key], per) if peer else None
        if peer:
            # ratio > 1: ernjax faster (more ex/s, or fewer ms)
            a, b = row["ernjax"], row["peer"]
            row["ratio"] = a / b if per else b / a
        out.append(row)
    out[0]["compile_s ernjax/peer"] = (
        f"{ours['compile_s']:.1f} / {peer['compile_s']:.1f}" if peer else f"{ours['compile_s']:.1f}"
    )
    mem = [ours.get("peak_mem_gb"), peer.get("peak_mem_gb") if peer else None]
    if any(m is not None for m in mem):
        out[0]["peak GiB ernjax/peer"] = " / ".join("n/a" if m is None else f"{m:.2f}" for m in mem)
    return out


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
               "compile_s ernjax/peer", "peak GiB ernjax/peer"]  # fmt: skip
    md = common.write_report(builder.OUT_DIR.value, "run", rows, columns)
    print(md)
    if not SKIP_PIPELINE.value:
        builder.main([""])


if __name__ == "__main__":
    cli.run(main)
