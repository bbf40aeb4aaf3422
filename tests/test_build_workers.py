"""The records build's worker processes: light to start, the same records whatever their count."""

import concurrent.futures as cf
import functools
import importlib.util
import logging
import multiprocessing
import os
import shutil
import sys
import types

import numpy as np
import pytest
from test_records import DUMMY, small_data

from ernjax.data import loading, records


def _examples(recs) -> dict:
    """Every example of every split, by split and key, as numpy arrays or Python values."""
    out = {}
    for split in recs.index["splits"]:
        src = recs.source(split)
        for i in range(len(src)):
            ex = src[i]
            out[(split, ex["subject_id"], int(ex.get("slice", -1)))] = ex
    return out


def test_records_are_the_same_whatever_the_workers(tmp_path, monkeypatch, caplog):
    cohort = tmp_path / "cohort"
    shutil.copytree(DUMMY, cohort)
    built = {}
    for workers in (1, 2):
        built[workers] = records.build(
            small_data("slices2d", build_workers=workers), cohort, tmp_path / f"rec{workers}"
        )
    # The default: two subjects timed here, then (a pool paying for anything) two workers.
    monkeypatch.setattr(loading, "WORKER_START_SECONDS", 0.0)
    monkeypatch.setattr(os, "cpu_count", lambda: 2)
    monkeypatch.setattr(os, "getloadavg", lambda: (0.5, 0.5, 0.5))  # idle cores
    with caplog.at_level(logging.INFO):
        built[0] = records.build(small_data("slices2d", build_workers=0), cohort, tmp_path / "rec0")
    assert "records: the other 8 subjects with 2 workers" in caplog.text
    expected = _examples(built[1])
    assert len(expected) == sum(len(v["label"]) for v in built[1].index["splits"].values())
    for workers in (2, 0):
        assert built[workers].index == built[1].index
        got = _examples(built[workers])
        assert got.keys() == expected.keys()
        for key, ex in expected.items():
            for name, value in ex.items():
                np.testing.assert_array_equal(got[key][name], value, err_msg=f"{key} {name}")


def test_workers_import_neither_the_parents_main_nor_jax(tmp_path, monkeypatch):
    # A parent whose __main__ is a module that leaves a mark when imported: multiprocessing's
    # own spawn imports it again in each worker (as it imported ernjax.main, JAX and all).
    (tmp_path / "heavy_main.py").write_text(
        "from pathlib import Path\nPath(__file__).with_name('imported').touch()\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    main = types.ModuleType("__main__")
    main.__spec__ = importlib.util.find_spec("heavy_main")
    monkeypatch.setitem(sys.modules, "__main__", main)
    modules = functools.partial(eval, "sorted(__import__('sys').modules)")
    with loading.pool(2) as pool:
        imported = pool.submit(modules).result()
    assert not (tmp_path / "imported").exists()
    assert "ernjax.data.samples" in imported
    assert not [m for m in imported if m.split(".")[0] in ("jax", "flax", "tensorflow_datasets")]
    spawn = multiprocessing.get_context("spawn")
    with cf.ProcessPoolExecutor(1, mp_context=spawn) as plain:
        plain.submit(modules).result()
    assert (tmp_path / "imported").exists()  # what the build's pool avoids


@pytest.mark.parametrize(
    "load, free",
    # 2 cores; the build is running: 1.3-1.6 is an idle machine under the build's own start
    [(0.2, 2), (1.2, 2), (1.6, 2), (2.0, 1), (2.9, 1), (11.0, 1)],
)
def test_free_cores_leave_out_the_other_work(monkeypatch, load, free):
    monkeypatch.setattr(os, "cpu_count", lambda: 2)
    monkeypatch.setattr(os, "getloadavg", lambda: (load, load, load))
    assert loading.free_cores() == free


@pytest.mark.parametrize(
    "cores, remaining, seconds, expected",
    [
        (1, 100, 10.0, 1),  # one core: never a pool
        (2, 10, 0.1, 1),  # saves 0.5 s: less than starting the workers
        (2, 58, 0.3, 2),  # the embedded cohort's order of size: saves 8.7 s
        (16, 3, 5.0, 3),  # no more workers than subjects
    ],
)
def test_a_pool_only_where_it_pays(cores, remaining, seconds, expected):
    assert loading.WORKER_START_SECONDS < 58 * 0.3 / 2
    assert loading.workers_that_pay(cores, remaining, seconds) == expected
