"""Subjects loaded in worker processes that start in under a second: the records build's pool.

A worker must not cost more than the subjects it loads. Two things made the build's workers slow
to start (issue 19 item 3; benchmarks/results/build_workers.md):
  - a spawned process imports the parent's `__main__` again, to unpickle anything defined
    there: under `python -m ernjax.main` each worker imported JAX, Flax, Orbax and TFDS (5-11 s
    on a 2-core machine) before its first subject. `pool` starts its workers with the parent's
    `__main__` hidden, so they import only this module and what loading a subject needs
    (`ernjax.data.samples`: NumPy, nibabel, scipy.ndimage; about 0.7 s);
  - the cost was paid for any cohort, however small, and on cores busy with other work.
    `workers_that_pay` is the rule of the default `config.data.build_workers = 0`: the build
    times its first subjects in the parent and starts a pool of the free cores (`free_cores`)
    only when the time it saves exceeds what starting it costs.
While the workers start, the build process loads subjects itself (`ernjax.data.builder`).

Nothing here imports JAX or TensorFlow Datasets.
"""

import concurrent.futures as cf
import contextlib
import multiprocessing
import multiprocessing.connection
import multiprocessing.context
import os
import sys
import threading
import types

import numpy as np

from ernjax.data import samples

# What starting the pool costs, in wall seconds on idle cores: the processes start, import this
# module and unpickle their first job (about 0.8 CPU seconds each, and the parent loads subjects
# meanwhile). Measured by `python -m benchmarks.build_workers` (benchmarks/results/
# build_workers.md, `cpu_s_per_subject` of 1 and 2 workers, and `worker_start_s`).
WORKER_START_SECONDS = 1.5
# Subjects the default (build_workers=0) loads in the build process before it decides: the first
# pays one-off warm-ups (first reads, first calls), the second is timed.
TIMED_SUBJECTS = 2


def free_cores() -> int:
    """The cores not busy with other work: all, less the 1-minute load average of the others.

    On a machine whose cores are all busy, worker processes do not run beside the build: they
    take turns with it and the other work, and their start-up is added CPU time. A pool of 2 on
    a shared 2-core machine at a load of 8-13 loaded subjects at 0.6-1.0x the serial speed;
    on the same machine idle, at 1.1-1.6x (benchmarks/results/build_workers.md). One unit of the
    load is the build process itself, and only whole units beyond it count as other work: on
    an idle machine the build's own imports and first subjects lift the 1-minute average to
    1.3-1.6, which must still leave every core free.
    """
    cores = os.cpu_count() or 1
    try:
        load = os.getloadavg()[0]
    except OSError:  # no load average on this system
        return cores
    return max(1, min(cores, cores - int(max(0.0, load - 1.0))))


def workers_that_pay(cores: int, remaining: int, seconds_per_subject: float) -> int:
    """How many processes should load `remaining` subjects of `seconds_per_subject` each.

    `cores` (the free ones: `free_cores`) processes when they would save more than
    `WORKER_START_SECONDS` over loading the subjects one after the other in the build process,
    else 1 (no pool).
    """
    workers = max(1, min(cores, remaining))
    saved = remaining * seconds_per_subject * (1 - 1 / workers)
    return workers if saved > WORKER_START_SECONDS else 1


def write_examples(subject, spec, path: str) -> str:
    """Loads one subject and saves its examples to `path` (.npz, one array per feature).

    Returns:
      `path`, or "" when the subject gives no example (nothing is written).

    Raises:
      InputError: the subject's images cannot be used (`samples.examples`).
    """
    examples = samples.examples(subject, spec)
    if not examples:
        return ""
    # Not compressed: the file lives only until the records are written (TFDS compresses those).
    np.savez(path, **{k: np.stack([ex[k] for ex in examples]) for k in examples[0]})
    return path


def read_examples(path: str) -> list[dict]:
    """The examples `write_examples` saved, with Python scalars as `samples.examples` gives."""
    with np.load(path) as arrays:
        columns = {k: arrays[k] for k in arrays.files}
    n = len(columns["subject_id"])
    return [{k: v[i].item() if v.ndim == 1 else v[i] for k, v in columns.items()} for i in range(n)]


@contextlib.contextmanager
def pool(workers: int):
    """A process pool of `workers` (None for 1), shut down without running what is still queued.

    Spawned, not forked: the parent may already run JAX threads, which fork can deadlock. The
    workers do not import the parent's `__main__` (see the module docstring), so what they run
    must be defined in a module. Each worker exits when the build process dies (killed, out of
    memory), instead of living on, blocked on a pipe nobody reads.
    """
    if workers <= 1:
        yield None
        return
    executor = cf.ProcessPoolExecutor(
        workers, mp_context=_LightSpawnContext(), initializer=_exit_with_parent
    )
    try:
        yield executor
    finally:
        executor.shutdown(wait=True, cancel_futures=True)


# Stands in for the parent's __main__ while a worker is started: no module name, no file, so
# multiprocessing's spawn sends the worker nothing to import as its main module (as it does for
# an interactive parent).
_NO_MAIN = types.ModuleType("__main__")
_NO_MAIN.__spec__ = None


class _LightSpawnProcess(multiprocessing.context.SpawnProcess):
    """A spawned process that does not import the parent's `__main__`."""

    @staticmethod
    def _Popen(process_obj):
        # multiprocessing.spawn.get_preparation_data reads sys.modules["__main__"] while the
        # process is launched (in the thread that submits the pool's first jobs), and only then.
        main = sys.modules["__main__"]
        sys.modules["__main__"] = _NO_MAIN
        try:
            return multiprocessing.context.SpawnProcess._Popen(process_obj)
        finally:
            sys.modules["__main__"] = main


class _LightSpawnContext(multiprocessing.context.SpawnContext):
    """multiprocessing's spawn context, with processes that leave the parent's main alone."""

    Process = _LightSpawnProcess


def _exit_with_parent() -> None:
    """Worker initializer: a thread that ends this process as soon as its parent is gone."""
    parent = multiprocessing.parent_process()
    if parent is None:
        return

    def watch():
        # The sentinel is a pipe that only the parent holds open: it reads EOF when it dies.
        multiprocessing.connection.wait([parent.sentinel])
        os._exit(1)

    threading.Thread(target=watch, name="exit-with-parent", daemon=True).start()
