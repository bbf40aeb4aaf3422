"""Several models x several MRI sequence sets, the same splits, one table (Gao 2020 Tables 3-4).

    python -m ernjax.compare --config=configs/ern.py --workdir=W \
        --models=ern_b0,resnet18 --channel_sets="t1c;t2;t1;t1,t2,t1c"

Each (model, channel set) trains with `loop.train_and_evaluate` in W/<model>_<channels> (reruns
resume; records are shared under W/records). The split depends only on the subjects, labels and
`config.data.split`, so every run sees the same training, validation and test patients, and the
test predictions can be compared case by case. Written to W:
  - compare.md / compare.csv / compare.json: sensitivity, specificity, accuracy and AUC with CIs,
    image- and subject-wise, on the test split (cut-offs from each run's validation split);
  - delong.md: DeLong tests of each run's test AUC against the first run's (image and subject);
  - ttests.md: one-sample t tests of the true-class probability against 0.5 (Ying Tables 5-6);
  - roc_test_image.png / roc_test_subject.png: every run's ROC curve in one figure.
"""

from pathlib import Path

from absl import app, flags
from ml_collections import config_flags

from ernjax import atomic
from ernjax.errors import exit_on_full_disk
from ernjax.evaluate import predictions, reporting, stats
from ernjax.train import loop


def parse_channel_sets(text: str) -> list[tuple[str, ...]]:
    """Parses "t1c;t2;t1,t2,t1c" into [("t1c",), ("t2",), ("t1", "t2", "t1c")]."""
    sets = [tuple(c.strip() for c in part.split(",") if c.strip()) for part in text.split(";")]
    return [s for s in sets if s]


def run_name(model: str, channels) -> str:
    """The run's row name and folder: "ern_b0 t1+t2+t1c"."""
    return f"{model} {'+'.join(channels)}"


def run(config, workdir, models, channel_sets) -> dict:
    """Trains (or resumes) every (model, channel set) run and writes the comparison.

    Args:
      config: the base config (data, training and evaluation settings shared by all runs).
      workdir: the comparison directory.
      models: model names (`ernjax.models.model_names()`); empty = `config.model.name`.
      channel_sets: tuples of modality names; empty = `config.data.channels`.

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
        unknown = set(chans) - set(config.data.modalities)
        if unknown:
            raise ValueError(
                f"channel set {chans}: {sorted(unknown)} not in config.data.modalities "
                f"{sorted(config.data.modalities)}"
            )
    names, val, test = [], {}, {}
    for model in models:
        for chans in channel_sets:
            name = run_name(model, chans)
            c = config.copy_and_resolve_references()
            with c.unlocked():
                c.model.name = model
                c.data.channels = tuple(chans)
                c.data.records_dir = config.data.records_dir or str(workdir / "records")
            out = workdir / name.replace(" ", "_")
            loop.train_and_evaluate(c, out)
            names.append(name)
            val[name] = predictions.read_csv(out / "predictions_validation.csv")
            test[name] = predictions.read_csv(out / "predictions_test.csv")
    return summarize(config, workdir, names, val, test)


def summarize(config, workdir: Path, names, val: dict, test: dict) -> dict:
    """Scores the runs' test predictions and writes tables, tests and ROC figures.

    The files are renamed into place together once all are written (compare.json last).
    """
    ev = config.eval
    positive = test[names[0]].class_names.index(ev.positive_class)
    results = {
        n: predictions.score(ev, test[n], positive, predictions.thresholds(ev, val[n], positive))
        for n in names
    }
    delong = delong_table(test, names, positive, ev.subject_method)
    ttests = {
        n: stats.one_sample_ttests(
            test[n].probs[:, positive], test[n].label, test[n].class_names, positive=positive
        )
        for n in names
    }
    with atomic.staged():
        atomic.write_text(workdir / "delong.md", delong)
        atomic.write_text(workdir / "ttests.md", reporting.format_ttests(ttests, fmt="markdown"))
        predictions.plot_rocs(
            test, workdir / "roc_test", positive, ev.positive_class, ev.subject_method
        )
        reporting.write_tables(workdir, "compare", results)
    print(reporting.format_table(results), flush=True)
    print(delong, flush=True)
    return results


def delong_table(test: dict, names, positive: int, subject_method: str = "mean") -> str:
    """Markdown: DeLong z and p of each run's test AUC against the first run's, per level.

    Raises:
      ValueError: the runs predicted different test examples (different splits or cohorts).
    """
    ref = names[0]
    lines = [
        f"DeLong tests against {ref} (test split; positive class "
        f"{test[ref].class_names[positive]})",
        "",
        "| run | level | AUC | AUC of reference | z | p |",
        "|---|---|---|---|---|---|",
    ]
    for n in names[1:]:
        if test[n].subject_id != test[ref].subject_id:
            raise ValueError(f"{n} and {ref} predicted different test examples: not comparable")
        for level in ("image", "subject"):
            ya, sa = predictions.roc_data(test[ref], positive, level, subject_method)
            _, sb = predictions.roc_data(test[n], positive, level, subject_method)
            z, p = stats.delong_test(ya.astype(int), sb, sa, positive=1)
            auc_b, auc_a = stats.delong_covariance(ya, [sb, sa])[0]
            lines.append(f"| {n} | {level} | {auc_b:.3f} | {auc_a:.3f} | {z:.3f} | {p:.3g} |")
    return "\n".join(lines) + "\n"


def main(argv):
    """Entry point (absl)."""
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    f = flags.FLAGS
    run(f.config, f.workdir, f.models, parse_channel_sets(f.channel_sets))


if __name__ == "__main__":
    flags.DEFINE_string("workdir", "workdir_compare", "Comparison directory (one folder per run).")
    flags.DEFINE_list("models", [], "Model names (default: config.model.name).")
    flags.DEFINE_string("channel_sets", "", '";"-separated sets, e.g. "t1c;t2;t1,t2,t1c".')
    config_flags.DEFINE_config_file(
        "config", "configs/ern.py", "Base configuration.", lock_config=True
    )
    app.run(exit_on_full_disk(main))
