"""Several models x several MRI sequence sets, the same splits, one table (Gao 2020 Tables 3-4).

Each (model, channel set) trains with `loop.train_and_evaluate` in W/<model>_<channels> (reruns
resume; the cohort and the records are shared under W: `runs.shared_data`). The model
"radiomics" (`radiomics.MODEL_NAME`) is the radiomics baseline on the features of the channel set
(`runs.Runner`: the features are computed once): `--models=radiomics,ern_b0` tests the network's
AUC against it. The split depends only on the subjects, labels and `config.data.split`, so every
run sees the same training, validation and test patients, and the test predictions can be
compared case by case (the radiomics baseline predicts in the records' order, as a network).
Written to W:
  - compare.md / compare.csv / compare.json: sensitivity, specificity, accuracy and AUC with CIs,
    subject- and image-wise, on the test split (cut-offs from each run's validation split);
  - delong.md: DeLong tests of each run's test AUC against a reference run's (the first, or
    `--reference`), or of every pair (`--all_pairs`), subject then image, each p beside its
    Holm-adjusted value over the level's tests, with a note that the image test counts slices
    as independent;
  - ttests.md: one-sample t tests of the true-class probability against 0.5 (Ying Tables 5-6);
  - roc_test_image.png / roc_test_subject.png: every run's ROC curve in one figure;
  - with `config.eval.readers_csv`, readers.md / readers.json (`ernjax.evaluate.readers`): each
    reader against each run (McNemar), Gao's t tests of the runs against the readers, also
    appended to compare.md, and the readers as points on roc_test_subject.png.
"""

import itertools
from pathlib import Path

import numpy as np

from ernjax import atomic
from ernjax.data import layouts
from ernjax.evaluate import predictions, readers, reporting, stats
from ernjax.evaluate.scoring import ScoringPolicy
from ernjax.studies import repeat, runs


def parse_channel_sets(text: str) -> list[tuple[str, ...]]:
    """Parses "t1c;t2;t1,t2,t1c" into [("t1c",), ("t2",), ("t1", "t2", "t1c")]."""
    sets = [tuple(c.strip() for c in part.split(",") if c.strip()) for part in text.split(";")]
    return [s for s in sets if s]


def run_name(model: str, channels) -> str:
    """The run's row name and folder: "ern_b0 t1+t2+t1c"."""
    return f"{model} {'+'.join(channels)}"


def run(config, workdir, models, channel_sets, reference: str = "", all_pairs=False) -> dict:
    """Trains (or resumes) every (model, channel set) run and writes the comparison.

    Args:
      config: the base config (data, training and evaluation settings shared by all runs).
      workdir: the comparison directory.
      models: model names (`ernjax.models.model_names()`, or "radiomics" for the radiomics
        baseline); empty = `config.model.name`.
      channel_sets: tuples of modality names; empty = `config.data.channels`.
      reference: the run delong.md tests the others against: a run name ("resnet18 t1c") or a
        model name with one run; "" = the first run.
      all_pairs: delong.md tests every pair of runs instead.

    Returns:
      {run name: {"image": ..., "subject": ...}} test metrics, in run order.
    """
    workdir = Path(workdir)
    if config.data.split.test <= 0:
        raise ValueError(
            "compare scores every run on the test split, and config.data.split.test is 0: set a "
            "test fraction, or compare cross-validations (python -m ernjax.crossval) instead"
        )
    models = list(models) or [config.model.name]
    channel_sets = list(channel_sets) or [tuple(config.data.channels)]
    for chans in channel_sets:
        have = layouts.modalities(config.data)  # the globs, or the BIDS queries
        if unknown := set(chans) - set(have):
            raise ValueError(
                f"channel set {chans}: {sorted(unknown)} not in "
                f"{layouts.modalities_field(config.data)} {sorted(have)}"
            )
    names = [run_name(m, chans) for m in models for chans in channel_sets]
    ref = resolve_reference(reference, names)  # before any training: a typo fails at once
    readers.check_setting(config)  # likewise a bad readers' file
    val, test = {}, {}
    shared, runner = runs.shared_data(config, workdir), runs.Runner()
    for model in models:
        for chans in channel_sets:
            name = run_name(model, chans)
            c = shared.copy_and_resolve_references()
            with c.unlocked():
                c.model.name = model
                c.data.channels = tuple(chans)
            out = workdir / name.replace(" ", "_")
            runner(c, out)
            val[name] = predictions.read_csv(out / "predictions_validation.csv")
            test[name] = predictions.read_csv(out / "predictions_test.csv")
    return summarize(config, workdir, names, val, test, reference=ref, all_pairs=all_pairs)


def run_seeds(config, workdir, models, channel_sets, seeds, **delong) -> dict:
    """The comparison repeated over training seeds, and the spread of every run's metrics.

    Seed s runs the whole comparison (`run`, its tables and tests) in WORKDIR/seed_<s>, on the
    study's shared cohort and records, so every seed compares the same patients. Then
    WORKDIR/compare_seeds.md/.csv/.json: each run's metrics across seeds (`repeat.study_spread`).

    Args:
      config: the base config, as in `run`.
      workdir: the comparison directory (seed_<s>/ inside).
      models: model names, as in `run`.
      channel_sets: modality tuples, as in `run`.
      seeds: the training seeds (`repeat.parse_seeds`).
      **delong: `reference` and `all_pairs`, as in `run`, for each seed's delong.md.

    Returns:
      The flat numbers of compare_seeds.json.
    """
    workdir = Path(workdir)
    per_seed = repeat.over_seeds(
        config,
        workdir,
        repeat.parse_seeds(seeds),
        lambda c, w: run(c, w, models, channel_sets, **delong),
    )
    note = repeat.SEEDS_NOTE.format(split_seed=config.data.split.seed, n=len(per_seed))
    title = f"Comparison over {len(per_seed)} training seeds ({', '.join(map(str, per_seed))})"
    per_seed = {f"seed {s}": r for s, r in per_seed.items()}
    return repeat.study_spread(workdir, "compare", title, per_seed, note)


def resolve_reference(reference: str, names: list[str]) -> str | None:
    """The run `reference` names (a run name, or a model with one run); None for "" (the first)."""
    if not reference:
        return None
    if reference in names:
        return reference
    matches = [n for n in names if n.split(" ")[0] == reference]
    if len(matches) == 1:
        return matches[0]
    raise ValueError(
        f"--reference={reference!r}: expected one of the runs {', '.join(names)}"
        + (" (that model has several channel sets: name the run)" if matches else "")
    )


def summarize(
    config, workdir: Path, names, val: dict, test: dict, reference=None, all_pairs=False
) -> dict:
    """Scores the runs' test predictions and writes tables, tests and ROC figures.

    The files are renamed into place together once all are written (compare.json last).
    """
    scoring = ScoringPolicy.from_config(config.eval, test[names[0]].class_names)
    positive = scoring.positive
    cutoffs = {n: scoring.cutoffs(val[n]) for n in names}  # each run's, chosen on its validation
    results = {n: scoring.score(test[n], cutoffs[n]) for n in names}
    delong = delong_table(
        test, names, scoring, reference=reference, all_pairs=all_pairs, cutoffs=cutoffs
    )
    ttests = {
        n: stats.one_sample_ttests(
            test[n].probs[:, positive], test[n].label, test[n].class_names, positive=positive
        )
        for n in names
    }
    with atomic.staged():
        atomic.write_text(workdir / "delong.md", delong)
        atomic.write_text(workdir / "ttests.md", reporting.format_ttests(ttests, fmt="markdown"))
        points, tail = None, ""
        if config.eval.get("readers_csv"):
            found, tail = readers.run(config.eval.readers_csv, workdir, scoring, test, cutoffs)
            points = readers.roc_points(found)
        scoring.plot_rocs(test, workdir / "roc_test", cutoffs, readers=points)
        reporting.write_tables(workdir, "compare", results, markdown_tail=tail)
    print(reporting.format_table(results), flush=True)
    print(delong, flush=True)
    if tail:
        print(tail, flush=True)
    return results


def delong_table(
    test: dict,
    names,
    scoring: ScoringPolicy,
    split: str = "test split",
    reference: str | None = None,
    all_pairs: bool = False,
    cutoffs: dict | None = None,
) -> str:
    """Markdown: DeLong z and p of run AUCs against a reference run's, or of all pairs, per level.

    Each level (subject, image) is one family of tests: beside each raw p is its Holm-adjusted p
    over that family (`stats.holm`), so that one of many comparisons is not read as a finding.

    Args:
      test: run name -> its Predictions on the compared examples.
      names: the runs, in table order.
      scoring: the study's policy (positive class, subject aggregation).
      split: names the predictions compared in the title (e.g. "pooled out-of-fold").
      reference: the run the others are tested against; None = the first of `names`.
      all_pairs: test every pair of runs instead (the earlier run of a pair is its reference).
      cutoffs: run name -> the cut-offs its table row uses (`ScoringPolicy.cutoffs`), so that a
        subject rule that counts slices called positive counts them at the same image cut-off
        here; a run not in it gets the defaults.

    Raises:
      ValueError: an unknown reference, or runs that predicted different test examples or gave
        them different labels (different splits or cohorts): DeLong pairs the scores example by
        example.
    """
    ref = names[0] if reference is None else reference
    if ref not in names:
        raise ValueError(f"reference {ref!r} is not one of the runs: {', '.join(names)}")
    if all_pairs:
        pairs = list(itertools.combinations(names, 2))
        title = f"DeLong tests of every pair of runs ({split}"
    else:
        pairs = [(ref, n) for n in names if n != ref]
        title = f"DeLong tests against {ref} ({split}"
    for a, b in pairs:
        same_labels = np.array_equal(test[a].label, test[b].label)
        if test[a].subject_id != test[b].subject_id or not same_labels:
            raise ValueError(f"{b} and {a} predicted different test examples: not comparable")
    lines = [
        f"{title}; positive class {test[ref].class_names[scoring.positive]}; Holm: adjusted "
        f"over the {len(pairs)} tests of a level)",
        "",
        "| run | level | AUC | AUC of reference | z | p | p (Holm) | reference |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for level in reporting.LEVELS:  # subject rows first, as in every table
        rows = []
        for a, b in pairs:
            ya, sa = scoring.roc_data(test[a], level, (cutoffs or {}).get(a))
            _, sb = scoring.roc_data(test[b], level, (cutoffs or {}).get(b))
            z, p = stats.delong_test(ya.astype(int), sb, sa, positive=1)
            auc_b, auc_a = stats.delong_covariance(ya, [sb, sa])[0]
            rows.append((b, auc_b, auc_a, z, p, a))
        adjusted = stats.holm([r[4] for r in rows])
        for (b, auc_b, auc_a, z, p, a), p_holm in zip(rows, adjusted, strict=True):
            lines.append(
                f"| {b} | {level} | {auc_b:.3f} | {auc_a:.3f} | {z:.3f} | {p:.3g} | "
                f"{p_holm:.3g} | {a} |"
            )
    # DeLong pairs examples; over slices it counts a patient's correlated slices as independent.
    lines += ["", IMAGE_DELONG_NOTE]
    return "\n".join(lines) + "\n"


IMAGE_DELONG_NOTE = (
    "Note: the image rows' DeLong test treats the slices of a patient as independent, so its p is "
    "too small when patients have many slices; the subject rows are the test to believe."
)
