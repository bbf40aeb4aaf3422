"""Repeated training seeds (`studies.repeat`); the radiomics baseline in compare and crossval.

One real repeat of `configs/ern.py:tiny` (2 seeds and the radiomics baseline, on the synthetic
cohort) is built once for the module; the compare and crossval tests reuse its cohort, records and
a finished seed, so no network trains twice. Compiled steps go through a persistent compilation
cache, so the second seed does not compile again.
"""

import json
import math
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import configs.ern
from ernjax.baselines import radiomics
from ernjax.data import records
from ernjax.data.spec import SampleSpec
from ernjax.evaluate import predictions, reporting
from ernjax.studies import compare, crossval, repeat, runs
from ernjax.train import loop

REPO = Path(__file__).resolve().parents[1]
DUMMY = REPO / "data_builders" / "ernjax_mri" / "dummy_data"
SEEDS = (0, 1)


def _config(**data):
    """configs/ern.py:tiny, scored on the last checkpoint: the best, at epoch 1, can be a 10-step
    ern_tiny that gives every image the same probability (seed 0's), nothing for DeLong to rank."""
    c = configs.ern.get_config("tiny")
    c.train.select_checkpoint = "last"
    c.data.build_workers = 1
    for key, value in data.items():
        setattr(c.data, key, value)
    return c


@pytest.fixture(scope="module")
def repeated(tmp_path_factory, compile_cache):
    """(config, W, repeat.json's numbers) of `repeat.run` over SEEDS with the radiomics baseline."""
    del compile_cache  # seed 1 reuses seed 0's compiled programs
    workdir = tmp_path_factory.mktemp("repeat")
    config = _config()
    flat = repeat.run(config, workdir, SEEDS, with_radiomics=True)
    return config, workdir, flat


def _shared(workdir: Path):
    """`_config` on the repeat's cohort and records, as the repeat's runs saw them."""
    cohort, records_dir = workdir / "synthetic_cohort", workdir / "records"
    return _config(cohort_dir=str(cohort), records_dir=str(records_dir))


def _results(run_dir: Path) -> dict:
    return json.loads((run_dir / "results.json").read_text())


def _num(value) -> float:
    """A results.json number: null (NaN written as null) as NaN."""
    return math.nan if value is None else float(value)


def _nums(flat: dict) -> dict:
    return {k: _num(v) for k, v in flat.items()}


def _forbid_training(monkeypatch):
    """Any network training or radiomics fit from here on fails the test."""

    def refuse(config, workdir, **_):
        raise AssertionError(f"{workdir} ran again")

    monkeypatch.setattr(loop, "train_and_evaluate", refuse)
    monkeypatch.setattr(radiomics, "run", refuse)


# ----------------------------------------------------------------------------- repeat
def test_each_seed_trains_in_its_folder_on_records_built_once(repeated):
    config, workdir, _ = repeated
    for seed in SEEDS:
        saved = json.loads((workdir / f"seed_{seed}" / runs.RUN_CONFIG).read_text())
        assert saved["seed"] == seed
        assert saved["data"]["split"]["seed"] == config.data.split.seed  # the split is kept
        assert saved["data"]["records_dir"] == str(workdir / "records")
    # one cohort and one set of records for both seeds and the baseline, none per run
    assert [p.name for p in (workdir / "records" / "ernjax_mri").iterdir()] == [
        records.dataset_name(SampleSpec.from_config(config.data), workdir / "synthetic_cohort")
    ]
    for run_dir in (workdir / "seed_0", workdir / "seed_1", workdir / "radiomics"):
        assert not (run_dir / "records").exists() and not (run_dir / "synthetic_cohort").exists()
    # same patients in the same order, different weights
    a, b, r = (
        predictions.read_csv(workdir / d / "predictions_test.csv")
        for d in ("seed_0", "seed_1", "radiomics")
    )
    assert a.subject_id == b.subject_id == r.subject_id
    np.testing.assert_array_equal(a.label, b.label)
    assert not np.allclose(a.probs, b.probs)


def test_mean_and_spread_are_numpys_over_the_seeds_results(repeated):
    _, workdir, flat = repeated
    per_seed = [_results(workdir / f"seed_{s}") for s in SEEDS]
    written = json.loads((workdir / "repeat.json").read_text())
    assert _nums(written) == pytest.approx(_nums(flat), nan_ok=True)
    assert flat["n_seeds"] == len(SEEDS)
    for key in repeat.KEYS:
        v = np.array([_num(r[key]) for r in per_seed])
        assert flat[f"mean.{key}"] == pytest.approx(np.mean(v), nan_ok=True)
        assert flat[f"sd.{key}"] == pytest.approx(np.std(v, ddof=1), nan_ok=True)
        assert flat[f"min.{key}"] == pytest.approx(v.min(), nan_ok=True)
        assert flat[f"max.{key}"] == pytest.approx(v.max(), nan_ok=True)
    assert any(flat[f"sd.{k}"] > 0 for k in repeat.KEYS)  # the seeds did differ
    # each seed's subject-level CI, and the radiomics row, as their own results.json
    for s, r in zip(SEEDS, per_seed, strict=True):
        for end in ("", "_ci_low", "_ci_high"):
            key = f"test.subject.auc{end}"
            assert _num(flat[f"seed_{s}.{key}"]) == pytest.approx(_num(r[key]), nan_ok=True)
    baseline = _results(workdir / "radiomics")
    assert flat["radiomics.test.subject.auc"] == baseline["test.subject.auc"]
    # the CSV is the spread table at full precision
    rows = {line.split(",")[0]: line.split(",") for line in (workdir / "repeat.csv").open()}
    assert rows["metric"] == ["metric", "mean", "sd", "min", "max", "n"] + [
        "seed 0",
        "seed 1",
        "radiomics\n",
    ]
    assert float(rows["test.subject.accuracy"][1]) == flat["mean.test.subject.accuracy"]
    md = (workdir / "repeat.md").read_text()
    assert "| test subject AUC |" in md and "| seed 1 subject |" in md
    assert "The seeds are not independent patients" in md
    assert "radiomics: the radiomics baseline, fitted once" in md


def test_a_rerun_trains_nothing_that_finished_with_the_same_config(repeated, monkeypatch):
    config, workdir, flat = repeated
    _forbid_training(monkeypatch)
    again = repeat.run(config, workdir, list(SEEDS), with_radiomics=True)
    assert _nums(again) == pytest.approx(_nums(flat), nan_ok=True)
    # another config is not "finished": it would resume (train_and_evaluate) instead
    shared = runs.shared_data(config, workdir)
    assert runs.finished(repeat.seed_config(shared, 0), workdir / "seed_0") is not None
    changed = repeat.seed_config(shared, 0)
    changed.train.num_epochs += 1
    assert runs.finished(changed, workdir / "seed_0") is None


def test_spread_of_undefined_values_and_a_single_seed():
    per_run = {0: {"a": 0.5, "b": None}, 1: {"a": 0.7, "b": 0.2}, 2: {"a": 0.9}}
    s = repeat.spread(per_run, ["a", "b"])
    assert s["a"] == pytest.approx(dict(mean=0.7, sd=0.2, min=0.5, max=0.9, n=3))
    assert all(math.isnan(v) for k, v in s["b"].items() if k != "n")  # undefined, not skipped
    assert math.isnan(repeat.spread({0: {"a": 0.5}}, ["a"])["a"]["sd"])


def test_parse_seeds():
    assert repeat.parse_seeds(["3", " 1", "2"]) == [3, 1, 2]
    for bad, message in ((["0", "x"], "integers"), ([], "no seed"), (["1", "1"], "twice")):
        with pytest.raises(ValueError, match=message):
            repeat.parse_seeds(bad)


def test_unflatten_inverts_flatten():
    nested = {"test": {"subject": {"auc": 0.8, "auc_ci": [0.6, 0.9], "n": 12, "note": "x"}}}
    back = reporting.unflatten(reporting.flatten(nested) | {"skipped": []}, "test")
    assert back == {"subject": {"auc": 0.8, "auc_ci": [0.6, 0.9], "n": 12}}
    assert isinstance(back["subject"]["n"], int)
    assert math.isnan(reporting.unflatten({"a.auc": None})["a"]["auc"])


# ----------------------------------------------------------------------------- radiomics in studies
def test_compare_radiomics_against_a_network_pairs_the_same_test_examples(
    repeated, tmp_path, monkeypatch
):
    _, workdir, _ = repeated
    # seed 0 is the network run compare asks for, with the same config: reused, not retrained
    shutil.copytree(workdir / "seed_0", tmp_path / "ern_tiny_t1+t2+t1c")
    fit, fits = radiomics.run, []

    def counted(config, out, table=None):
        fits.append(Path(out))
        return fit(config, out, table=table)

    _forbid_training(monkeypatch)
    monkeypatch.setattr(radiomics, "run", counted)
    results = compare.run(_shared(workdir), tmp_path, ["radiomics", "ern_tiny"], [])
    assert list(results) == ["radiomics t1+t2+t1c", "ern_tiny t1+t2+t1c"]
    assert fits == [tmp_path / "radiomics_t1+t2+t1c"]
    net = predictions.read_csv(tmp_path / "ern_tiny_t1+t2+t1c" / "predictions_test.csv")
    base = predictions.read_csv(tmp_path / "radiomics_t1+t2+t1c" / "predictions_test.csv")
    assert base.subject_id == net.subject_id  # DeLong pairs them example by example
    np.testing.assert_array_equal(base.label, net.label)
    delong = (tmp_path / "delong.md").read_text()
    assert "DeLong tests against radiomics t1+t2+t1c" in delong
    rows = [r.split(" | ") for r in delong.splitlines() if r.startswith("| ern_tiny t1+t2+t1c |")]
    assert [r[1] for r in rows] == ["subject", "image"]  # subject rows first, as in tables
    assert "image rows' DeLong test treats the slices of a patient as independent" in delong
    network, baseline = results["ern_tiny t1+t2+t1c"], results["radiomics t1+t2+t1c"]
    for row, level in zip(rows, ("subject", "image"), strict=True):
        assert float(row[2]) == pytest.approx(network[level]["auc"], abs=5e-4)
        assert float(row[3]) == pytest.approx(baseline[level]["auc"], abs=5e-4)
    assert 0 <= float(rows[1][5].rstrip(" |")) <= 1  # image p; 3 test subjects may tie (nan)


def test_crossval_of_radiomics_pools_out_of_fold_on_one_feature_table(
    repeated, tmp_path, monkeypatch
):
    _, workdir, _ = repeated
    config = _shared(workdir)
    config.model.name = radiomics.MODEL_NAME
    k = config.data.split.folds  # the repeat's records: another split would build new ones
    tables = []
    real = radiomics.cohort_features
    monkeypatch.setattr(radiomics, "cohort_features", lambda c, w: tables.append(w) or real(c, w))
    results = crossval.run(config, tmp_path)
    assert len(tables) == 1  # one feature table for all folds
    index = records.open_records(
        next((workdir / "records" / "ernjax_mri").iterdir()) / "1.0.0"
    ).index
    assignment = index["assignment"]
    outside_test = {s for s, a in assignment.items() if a["split"] != "test"}
    pooled = results["pooled out-of-fold"]
    assert pooled["subject"]["n"] == len(outside_test)
    assert pooled["image"]["n"] == sum(
        len(index["splits"][s]["label"]) for s in ("train", "validation")
    )
    for fold in range(k):
        val = predictions.read_csv(tmp_path / f"fold_{fold}" / "predictions_validation.csv")
        assert set(val.subject_id) == {s for s in outside_test if assignment[s]["fold"] == fold}
    assert results["ensemble (mean) test"]["subject"]["n"] == len(assignment) - len(outside_test)
    assert f"fold {k - 1} test.subject.auc" in json.loads((tmp_path / "crossval.json").read_text())


# ----------------------------------------------------------------------------- command line
def _repeat_command(*args: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "ernjax.repeat", "--config=configs/ern.py:tiny", *args]
    return subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300, check=False)


def test_command_line_bad_input_is_one_line(tmp_path):
    cohort = tmp_path / "cohort"
    shutil.copytree(DUMMY, cohort)
    (cohort / "dummy-03" / "dummy-03_t2.nii.gz").unlink()
    run = _repeat_command(f"--config.data.cohort_dir={cohort}", f"--workdir={tmp_path / 'w'}")
    assert run.returncode == 1, run.stderr[-3000:]
    assert "Traceback" not in run.stderr, run.stderr[-3000:]
    assert run.stderr.splitlines()[-1] == (
        f"ernjax: subject dummy-03, file {cohort / 'dummy-03'}: no t2 file matches '*_t2.nii.gz'"
    )
    assert not (tmp_path / "w" / "seed_0").exists()


def test_command_line_bad_seeds_are_a_flag_error(tmp_path):
    run = _repeat_command("--seeds=0,x", f"--workdir={tmp_path / 'w'}")
    assert run.returncode == 2 and "Traceback" not in run.stderr, run.stderr[-3000:]
    assert run.stderr.splitlines() == [
        "ernjax: flag --seeds=['0', 'x']: seeds must be integers, e.g. 0,1,2; got 0,x "
        "(--help lists the flags)"
    ]
    assert not (tmp_path / "w").exists()
