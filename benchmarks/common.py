"""What every benchmark shares: the machine stamp, a warm timer and the report writers."""

import datetime
import json
import os
import platform
import time
from importlib import metadata
from pathlib import Path

import jax

LIBRARIES = ("jax", "jaxlib", "flax", "optax", "grain", "tensorflow-datasets", "torch", "monai")


def machine() -> dict:
    """The machine, library versions and date a figure was measured on."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    versions = {}
    for lib in LIBRARIES:
        try:
            versions[lib] = metadata.version(lib)
        except metadata.PackageNotFoundError:
            pass
    dev = jax.devices()[0]
    return {
        "cpu": cpu,
        "cores": len(os.sched_getaffinity(0)),
        "device": f"{dev.platform}: {getattr(dev, 'device_kind', '')} x{jax.device_count()}",
        "python": platform.python_version(),
        "versions": versions,
        "date": datetime.date.today().isoformat(),
    }


def timed(fn, *, warmup: int = 1, repeats: int = 5) -> float:
    """Median wall seconds of `fn()` after `warmup` calls (`fn` must block until done)."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return sorted(times)[len(times) // 2]


def interleaved(fns, *, repeats: int = 5, warmup: int = 1) -> list[list[float]]:
    """Wall seconds of each of `fns` (each blocks until done) over `repeats` interleaved rounds.

    After `warmup` calls of each, every round calls each function once, in the order A, B, ...
    in even rounds and reversed in odd ones, so that neither side always runs first after the
    other and a slow spell of a shared machine falls on both. Returns times[fn][round].
    """
    if repeats < 3:
        raise ValueError(f"repeats={repeats}: at least 3 interleaved rounds give a range")
    for fn in fns:
        for _ in range(warmup):
            fn()
    times = [[] for _ in fns]
    for r in range(repeats):
        order = list(range(len(fns)))
        for i in order if r % 2 == 0 else order[::-1]:
            t = time.perf_counter()
            fns[i]()
            times[i].append(time.perf_counter() - t)
    return times


def markdown_table(rows: list[dict], columns: list[str]) -> str:
    """A Markdown table of `rows` over `columns` (floats to 3 significant figures)."""

    def fmt(v):
        if isinstance(v, float):
            return f"{v:.3g}"
        return "" if v is None else str(v)

    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(fmt(r.get(c)) for c in columns) + " |" for r in rows]
    return "\n".join(lines)


def write_report(out_dir, name: str, rows: list[dict], columns: list[str], notes: str = "") -> str:
    """Writes OUT/<name>.json and OUT/<name>.md, stamped with the machine; returns the Markdown.

    `notes` (Markdown) goes under the table and into the JSON.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    stamp = machine()
    doc = {"machine": stamp, "rows": rows} | ({"notes": notes} if notes else {})
    (out / f"{name}.json").write_text(json.dumps(doc, indent=1))
    head = (
        f"Machine: {stamp['cpu']}, {stamp['cores']} cores; {stamp['device']}; "
        f"{stamp['date']}; " + ", ".join(f"{k} {v}" for k, v in stamp["versions"].items())
    )
    md = head + "\n\n" + markdown_table(rows, columns) + "\n" + (f"\n{notes}\n" if notes else "")
    (out / f"{name}.md").write_text(md)
    return md
