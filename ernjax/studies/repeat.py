"""One run repeated over training seeds: the mean and spread of its metrics, not one lucky run.

Seed s trains in W/seed_<s> with `config.seed = s` (weights, dropout, shuffling, augmentation)
and nothing else changed: `config.data.split.seed` stays, and the seeds share W's cohort and
records (`runs.shared_data`), so every seed trains, validates and is tested on the same patients.
Reruns resume; a seed that finished with the same config is not retrained (`runs.Runner`).
With `with_radiomics`, the radiomics baseline is fitted once, in W/radiomics: its features and
split are the same for every seed, and `config.seed` only deals its inner folds, so it is one
row, not repeated per seed. Written to W:
  - repeat.md: per metric the mean, SD and min-max across seeds with each seed's value (and
    the radiomics value), a note on what the spread is, and each seed's test metrics with CIs;
  - repeat.csv: the first table, full precision; repeat.json: the same numbers, flat.

`over_seeds` and `spread` take any study, so a cross-validation or a comparison is repeated over
seeds the same way: `study_spread` writes W/<stem>_seeds.md/.csv/.json, the mean and spread of
every row of the study's table (`python -m ernjax.crossval --seeds=0,1,2 [--split_seeds=0,1,2]`,
`python -m ernjax.compare --seeds=0,1,2`).
"""

from collections.abc import Callable, Iterable, Mapping
from pathlib import Path

import numpy as np
from absl import logging

from ernjax import atomic
from ernjax.baselines import radiomics
from ernjax.evaluate import reporting
from ernjax.studies import runs

# What a seed's run is summarised by: the test metrics at both levels, and the validation AUC
# (the validation split chose the cut-offs, so only its AUC is a fair figure).
METRICS = ("auc", "sensitivity", "specificity", "accuracy")
KEYS = (
    *(f"test.{level}.{m}" for level in ("subject", "image") for m in METRICS),
    "validation.subject.auc",
    "validation.image.auc",
)
SEEDS_NOTE = (
    "The seeds are not independent patients: every seed trained, validated and was tested on "
    "the same patients (one split, `config.data.split.seed` = {split_seed}). The mean, SD "
    "(n - 1) and min-max across the {n} seeds are training variability (initial weights, "
    "dropout, shuffling, augmentation); each seed's 95% CI is the patient-sampling uncertainty, "
    "and pooling the seeds does not narrow it."
)


# A study's rows are summarised by these metrics, subject level first (`reporting.LEVELS`).
STUDY_METRICS = ("auc", "sensitivity", "specificity")
SPLIT_SEEDS_NOTE = (
    "Repeated cross-validation: each split seed (`config.data.split.seed`) deals the subjects "
    "into folds anew{test}. The spread across split seeds is how much the figure depends on "
    "which patients happened to share a fold; it is not a confidence interval over patients."
)


def parse_seeds(values: Iterable) -> list[int]:
    """The seeds of `--seeds=0,1,2` as integers.

    Raises:
      ValueError: no seed, one that is not an integer, or one given twice.
    """
    values = [str(v).strip() for v in values if str(v).strip()]
    try:
        seeds = [int(v) for v in values]
    except ValueError:
        raise ValueError(f"seeds must be integers, e.g. 0,1,2; got {','.join(values)}") from None
    if not seeds:
        raise ValueError("no seed given: e.g. --seeds=0,1,2")
    if len(set(seeds)) != len(seeds):
        raise ValueError(f"seed given twice in {','.join(values)}: each seed runs once")
    return seeds


def seed_config(config, seed: int):
    """`config` with `config.seed = seed`; the data (split seed included) unchanged."""
    c = config.copy_and_resolve_references()
    with c.unlocked():
        c.seed = int(seed)
    return c


def over_seeds(
    config, workdir, seeds: Iterable[int], study: Callable[..., Mapping]
) -> dict[int, Mapping]:
    """Runs `study(config with seed s, WORKDIR/seed_<s>)` for each seed, on the same data.

    Args:
      config: the full config; its cohort and records become WORKDIR's (`runs.shared_data`).
      workdir: the repeat directory.
      seeds: the training seeds.
      study: (config, workdir) -> flat results, e.g. a `runs.Runner`.

    Returns:
      {seed: flat results}, in seed order.
    """
    workdir = Path(workdir)
    shared = runs.shared_data(config, workdir)
    results = {}
    for seed in seeds:
        logging.info("repeat: seed %d", seed)
        results[seed] = study(seed_config(shared, seed), workdir / f"seed_{seed}")
    return results


def spread(per_run: Mapping[object, Mapping], keys: Iterable[str] = KEYS) -> dict[str, dict]:
    """Mean, SD, min, max and count of each key across runs.

    SD is the sample SD (n - 1 in the denominator; NaN for one run). A key a run has not (or
    has as None, an undefined metric written as null) counts as NaN, and NaN propagates: an
    undefined value in one seed makes the summary undefined rather than quietly leaving it out.

    Args:
      per_run: run -> flat results ("test.subject.auc": 0.71, ...).
      keys: the keys to summarise.

    Returns:
      {key: {"mean", "sd", "min", "max", "n"}}, in `keys` order.
    """
    out = {}
    for key in keys:
        v = np.array([_value(r, key) for r in per_run.values()], np.float64)
        out[key] = {
            "mean": float(v.mean()),
            "sd": float(v.std(ddof=1)) if len(v) > 1 else float("nan"),
            "min": float(v.min()),
            "max": float(v.max()),
            "n": float(len(v)),
        }
    return out


def _value(flat: Mapping, key: str) -> float:
    v = flat.get(key)
    return float("nan") if v is None else float(v)


def run(config, workdir, seeds: Iterable[int], with_radiomics: bool = False) -> dict:
    """Trains (or resumes) the run of `config` once per seed, then writes the summary.

    Args:
      config: the full config.
      workdir: the repeat directory (W/seed_<s>, W/radiomics, W/records inside).
      seeds: the training seeds (`parse_seeds`).
      with_radiomics: fit the radiomics baseline too, once, in W/radiomics.

    Returns:
      The flat numbers of W/repeat.json (see `summarize`).
    """
    workdir = Path(workdir)
    seeds = parse_seeds(seeds)
    runner = runs.Runner()
    per_seed = over_seeds(config, workdir, seeds, runner)
    baseline = None
    if with_radiomics:
        c = runs.shared_data(config, workdir)
        with c.unlocked():
            c.model.name = radiomics.MODEL_NAME
        baseline = runner(c, workdir / radiomics.MODEL_NAME)
    return summarize(config, workdir, per_seed, baseline)


def summarize(config, workdir, per_seed: Mapping[int, Mapping], baseline=None) -> dict:
    """Writes W/repeat.md, repeat.csv and repeat.json (last) from each seed's flat results.

    Args:
      config: the repeated config (names the model and split; `config.eval` the CI methods).
      workdir: the repeat directory.
      per_seed: {seed: flat results} (a results.json each).
      baseline: the radiomics run's flat results, or None.

    Returns:
      {"n_seeds", "mean.<key>", "sd.<key>", "min.<key>", "max.<key>", "seed_<s>.<key>" (with
      the CI bounds of each key), "radiomics.<key>"}: the numbers of repeat.json.
    """
    workdir = Path(workdir)
    summary = spread(per_seed)
    columns = {f"seed {s}": r for s, r in per_seed.items()}
    if baseline is not None:
        columns[radiomics.MODEL_NAME] = baseline
    flat = {"n_seeds": float(len(per_seed))}
    for stat in ("mean", "sd", "min", "max"):
        flat |= {f"{stat}.{k}": s[stat] for k, s in summary.items()}
    for name, r in columns.items():
        keys = [f"{k}{end}" for k in KEYS for end in ("", "_ci_low", "_ci_high")]
        flat |= {f"{name.replace(' ', '_')}.{k}": _value(r, k) for k in keys if k in r}
    markdown = _markdown(config, summary, columns, per_seed)
    with atomic.staged():
        atomic.write_text(workdir / "repeat.md", markdown)
        table = reporting.format_spread(summary, columns, fmt="csv")
        atomic.write_text(workdir / "repeat.csv", table)
        reporting.write_json(workdir / "repeat.json", flat)
    print(markdown, flush=True)
    return flat


def _markdown(config, summary: dict, columns: dict, per_seed: Mapping) -> str:
    """repeat.md: the spread table, the note on what it is, each run's test metrics with CIs."""
    seeds = ", ".join(str(s) for s in per_seed)
    chans = "+".join(config.data.channels)
    lines = [
        f"# {config.model.name} {chans}: {len(per_seed)} training seeds ({seeds})",
        "",
        f"Test and validation metrics of each seed's run, cut-offs chosen on its validation "
        f"split; positive class {config.eval.positive_class}.",
        "",
        reporting.format_spread(summary, columns, fmt="markdown"),
        SEEDS_NOTE.format(split_seed=config.data.split.seed, n=len(per_seed)),
    ]
    if radiomics.MODEL_NAME in columns:
        lines += [
            "",
            "radiomics: the radiomics baseline, fitted once (the same features and split for "
            "every seed; `config.seed` only deals its inner folds): one run, not repeated.",
        ]
    tests = {name: reporting.scored_levels(r, "test", config.eval) for name, r in columns.items()}
    lines += [
        "",
        "## Each run on the test split, 95% CIs over patients",
        "",
        reporting.format_table(tests, fmt="markdown", levels=("subject", "image")),
    ]
    return "\n".join(lines)


def study_keys(rows: Iterable[str], metrics: Iterable[str] = STUDY_METRICS) -> list[str]:
    """The flat keys ("<row>.subject.auc", ...) of a study table's rows, subject level first."""
    metrics = tuple(metrics)
    return [f"{r}.{level}.{m}" for r in rows for level in reporting.LEVELS for m in metrics]


def study_spread(
    workdir, stem: str, title: str, per_repeat: Mapping[str, Mapping], note: str, rows=None
) -> dict:
    """Writes W/<stem>_seeds.md, .csv and .json: a study's table rows across repeats.

    Args:
      workdir: the study directory.
      stem: "crossval" or "compare".
      title: the Markdown heading.
      per_repeat: repeat name ("seed 0", "split 1 seed 0") -> that repeat's results as the
        study returns them ({row: {"subject": metrics, "image": metrics}}); every repeat is
        expected to have the rows of the first.
      note: what the spread is (`SEEDS_NOTE`, `SPLIT_SEEDS_NOTE`).
      rows: the table rows to summarise; None = all of the first repeat's.

    Returns:
      {"mean.<key>", "sd.<key>", "min.<key>", "max.<key>", "<repeat>.<key>"}: repeat.json's
      layout, for the keys of `study_keys`.
    """
    workdir = Path(workdir)
    flat = {name: reporting.flatten(r) for name, r in per_repeat.items()}
    rows = list(next(iter(per_repeat.values()))) if rows is None else list(rows)
    summary = spread(flat, study_keys(rows))
    out = {"n_repeats": float(len(flat))}
    for stat in ("mean", "sd", "min", "max"):
        out |= {f"{stat}.{k}": s[stat] for k, s in summary.items()}
    for name, f in flat.items():
        out |= {f"{name.replace(' ', '_')}.{k}": _value(f, k) for k in summary}
    markdown = "\n".join(
        [f"# {title}", "", reporting.format_spread(summary, flat, fmt="markdown"), note, ""]
    )
    with atomic.staged():
        atomic.write_text(workdir / f"{stem}_seeds.md", markdown)
        atomic.write_text(
            workdir / f"{stem}_seeds.csv", reporting.format_spread(summary, flat, fmt="csv")
        )
        reporting.write_json(workdir / f"{stem}_seeds.json", out)
    print(markdown, flush=True)
    return out
