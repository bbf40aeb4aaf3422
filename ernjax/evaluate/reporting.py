"""Tables and ROC figures from `ernjax.evaluate.stats` results, in the layout of the papers' tables.

Gao 2020 Tables 3-4 give "Sensitivity (95% CI)", "Specificity (95% CI)", "Accuracy (95% CI)" and
"Area under the curve (95% CI)" per model and MRI sequence, as "0.915 (0.895-0.932)"; Ying 2025
Tables 5-6 give one-sample t tests per model. Numbers only; no statistics are computed here.

Subject-level rows lead every table (one row per patient: the figures to believe), image-level
rows follow; each table ends with the CI methods per level and the notes of its rows in words
(undefined values, zero-width intervals, constant scores, small samples). The notes also travel
in the flat results (`flatten`, so results.json) and in `summary_line` (the log line).
"""

from __future__ import annotations

import csv
import io
import json
import math
import numbers
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from ernjax import atomic
from ernjax.evaluate import stats

# Gao 2020's column order (Tables 3-5).
DEFAULT_COLUMNS = ("sensitivity", "specificity", "accuracy", "auc")
_TITLES = {
    "sensitivity": "Sensitivity",
    "specificity": "Specificity",
    "accuracy": "Accuracy",
    "precision": "Precision",
    "f1": "F1",
    "auc": "AUC",
    "brier": "Brier",
    "calibration_intercept": "Calibration intercept",
    "calibration_slope": "Calibration slope",
}
# The counts among `stats.evaluate_predictions`' metrics (whole numbers; floats once flattened).
_COUNTS = frozenset({"n", "n_positive", "n_negative", "n_subjects", "tp", "fp", "tn", "fn"})
_CI_NAMES = {
    "wilson": "Wilson",
    "wilson_cc": "Wilson with continuity correction",
    "exact": "Clopper-Pearson exact",
    "wald": "Wald",
    "delong": "DeLong",
    "bootstrap": "bootstrap over subjects",
    "subject_bootstrap": "percentile bootstrap over subjects (stratified by class)",
}
LEVELS = ("subject", "image")  # the order of rows: subject-level first


def flatten(results: Mapping, prefix: str = "") -> dict[str, float | list[str]]:
    """Nested results as flat "a.b.c" -> float, e.g. for TensorBoard or a CSV row.

    A "<name>_ci" pair becomes "<name>_ci_low" and "<name>_ci_high"; the counts (n, tp, ...)
    become ints and the other numbers (bools, NaN included) floats. "notes" and "<what>_notes"
    ("calibration_notes") stay, as lists of str ("test.image.notes"), so that the caveats travel
    with the numbers into results.json; other strings are left out.

    Args:
      results: nested mappings, e.g. {"test": evaluate_predictions(...)}.
      prefix: prepended to every key, joined by ".".

    Returns:
      {"test.image.auc": 0.91, "test.image.auc_ci_low": 0.85, ...}.
    """
    out = {}
    for key, value in results.items():
        name = f"{prefix}.{key}" if prefix else str(key)
        if isinstance(value, Mapping):
            out.update(flatten(value, name))
        elif key == "notes" or str(key).endswith("_notes"):
            out[name] = [str(n) for n in value]
        elif str(key).endswith("_ci") and isinstance(value, Sequence | np.ndarray):
            out[f"{name}_low"], out[f"{name}_high"] = (float(v) for v in value)
        elif isinstance(value, numbers.Real):
            # Counts stay whole numbers ("tp": 76, not 76.0); everything else is a float.
            whole = key in _COUNTS and float(value).is_integer()
            out[name] = int(value) if whole else float(value)
    return out


def unflatten(flat: Mapping[str, float | None], prefix: str = "") -> dict:
    """The nested metrics of `flatten`'s output (e.g. a results.json), for `format_table`.

    "<name>_ci_low" and "<name>_ci_high" become the pair "<name>_ci"; None (NaN written as null)
    becomes NaN; the counts (n, n_positive, tp, ...) become ints again; "notes" lists stay. The
    strings `flatten` leaves out (positive_class, the CI methods) stay out.

    Args:
      flat: {"test.subject.auc": 0.91, "test.subject.auc_ci_low": 0.85, ...}.
      prefix: keep only the keys under it ("test": {"image": ..., "subject": ...}).

    Returns:
      {"test": {"subject": {"auc": 0.91, "auc_ci": [0.85, ...], ...}}}, or the part under `prefix`.
    """
    lead = f"{prefix}." if prefix else ""
    out: dict = {}
    for key, value in flat.items():
        is_notes = key.endswith((".notes", "_notes")) and isinstance(value, list)
        if not key.startswith(lead) or not (is_notes or isinstance(value, numbers.Real | None)):
            continue
        *path, leaf = key[len(lead) :].split(".")
        node = out
        for part in path:
            node = node.setdefault(part, {})
        if is_notes:
            node[leaf] = [str(n) for n in value]
            continue
        value = math.nan if value is None else float(value)
        for end, i in (("_ci_low", 0), ("_ci_high", 1)):
            if leaf.endswith(end):
                node.setdefault(leaf[: -len(end)] + "_ci", [math.nan, math.nan])[i] = value
                break
        else:
            node[leaf] = int(value) if leaf in _COUNTS and value.is_integer() else value
    return out


def scored_levels(flat: Mapping, split: str, eval_config) -> dict:
    """A split's metrics as `format_table` takes them, from a run's flat results (results.json).

    `flatten` keeps numbers and notes only; the CI methods, positive class and confidence that
    the table's footnote names come back from the run's `config.eval`.
    """
    levels = unflatten(flat, split)
    e = eval_config
    for level, metrics in levels.items():
        methods = stats.level_ci_methods(
            level, ci_method=e.ci_method, auc_ci=e.auc_ci, image_ci=e.get("image_ci")
        )
        metrics |= methods | dict(
            level=level, positive_class=e.positive_class, confidence=float(e.confidence)
        )
    return levels


def write_json(path, flat: Mapping[str, float], indent: int = 1) -> None:
    """Writes flat results as JSON (atomically), NaN as null so that any JSON reader takes it.

    Values are numbers, or other JSON values (the list of skipped subjects), written as they are.
    """
    clean = {
        k: None if isinstance(v, numbers.Real) and not math.isfinite(v) else v
        for k, v in flat.items()
    }
    atomic.write_text(path, json.dumps(clean, indent=indent, sort_keys=True))


def write_tables(
    directory, stem: str, results: Mapping[str, Mapping], *, markdown_tail: str = ""
) -> None:
    """DIRECTORY/<stem>.json (flat numbers), <stem>.md and <stem>.csv (the metrics table).

    Each file is written atomically; the three are renamed into place together. `markdown_tail`
    (e.g. the readers' section of a comparison) follows the table in <stem>.md.
    """
    directory = Path(directory)
    tail = f"\n{markdown_tail}" if markdown_tail else ""
    with atomic.staged():
        atomic.write_text(directory / f"{stem}.md", format_table(results, fmt="markdown") + tail)
        atomic.write_text(directory / f"{stem}.csv", format_table(results, fmt="csv"))
        write_json(directory / f"{stem}.json", flatten(results))


def format_skipped(skipped: Sequence[Mapping]) -> str:
    """The subjects left out under on_error="skip", one line each ("" when none).

    Args:
      skipped: {"subject_id", "file" (relative to the cohort folder, or ""), "problem"} each.
    """
    if not skipped:
        return ""
    n = len(skipped)
    lines = [f"{n} subject{'s' * (n != 1)} skipped (config.data.on_error='skip'), in no split:"]
    for s in skipped:
        where = f"{s['file']}: " if s["file"] else ""
        lines.append(f"  {s['subject_id'] or 'cohort'}: {where}{s['problem']}")
    return "\n".join(lines)


def _rows(results: Mapping[str, Mapping], levels: Sequence[str]) -> list[tuple[str, Mapping]]:
    """(row name, metrics) pairs: level by level ("name level"), then single-level results.

    Every result's subject row comes before any image row (with the default `levels`); results
    that are one level's metrics already keep their name and come last.
    """
    rows = [(str(n), r) for n, r in results.items() if "auc" in r]
    nested = [(n, r) for n, r in results.items() if "auc" not in r]
    by_level = [(f"{n} {lvl}", r[lvl]) for lvl in levels for n, r in nested if lvl in r]
    return by_level + rows


ONE_IMAGE_NOTE = (
    "One image (volume) per subject: the image rows equal the subject rows and are not shown "
    "(the .csv and .json keep both)."
)


def shown_levels(results: Mapping[str, Mapping], levels: Sequence[str]) -> tuple[list[str], bool]:
    """The levels a text or Markdown table shows, and whether image rows were left out.

    Where every result has one image per subject (3D volumes), the image rows repeat the
    subject rows number for number, so only the subject rows are shown.
    """
    nested = [r for r in results.values() if "auc" not in r and "image" in r]
    one_each = bool(nested) and all(
        r["image"].get("n") == r["image"].get("n_subjects") for r in nested
    )
    if one_each and "subject" in levels and "image" in levels:
        return [lvl for lvl in levels if lvl != "image"], True
    return list(levels), False


def row_notes(rows: Sequence[tuple[str, Mapping]]) -> list[str]:
    """Each distinct note once, with the rows it applies to: "ern subject, ern image: <note>"."""
    where: dict[str, list[str]] = {}
    for name, m in rows:
        for note in m.get("notes") or ():
            where.setdefault(str(note), []).append(name)
    return [f"{', '.join(names)}: {note}" for note, names in where.items()]


def _number(value, digits: int) -> str:
    return "n/a" if value is None or math.isnan(value) else f"{value:.{digits}f}"


def _csv_number(value: float) -> str:
    """Full precision; whole numbers (counts) without ".0"."""
    return str(int(value)) if float(value).is_integer() else repr(float(value))


def _cell(metrics: Mapping, column: str, digits: int) -> str:
    """'0.915 (0.895-0.932)'; 'n/a' for NaN; no interval where none was computed."""
    text = _number(metrics.get(column, math.nan), digits)
    ci = metrics.get(f"{column}_ci")
    if ci is None or text == "n/a":
        return text
    return f"{text} ({_number(ci[0], digits)}-{_number(ci[1], digits)})"


def _render(header: list[str], body: list[list[str]], fmt: str) -> str:
    """Text (aligned), Markdown (pipe table) or CSV."""
    if fmt == "csv":
        buffer = io.StringIO()
        csv.writer(buffer, lineterminator="\n").writerows([header, *body])
        return buffer.getvalue()
    if fmt == "markdown":
        lines = [header, ["---"] * len(header), *body]
        return "\n".join("| " + " | ".join(r) + " |" for r in lines) + "\n"
    if fmt == "text":
        widths = [max(len(r[i]) for r in [header, *body]) for i in range(len(header))]
        lines = [header, ["-" * w for w in widths], *body]
        return "\n".join(
            "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in lines
        )
    raise ValueError(f"table format {fmt!r}: expected 'text', 'markdown' or 'csv'")


def format_table(
    results: Mapping[str, Mapping],
    *,
    fmt: str = "text",
    columns: Sequence[str] = DEFAULT_COLUMNS,
    levels: Sequence[str] = LEVELS,
    digits: int = 3,
) -> str:
    """A table of metrics with CIs, one row per result and level (Gao 2020 Table 4 layout).

    Args:
      results: row name -> `evaluate_predictions` output (rows "<name> image", "<name> subject")
        or -> one level's metrics (row "<name>"). Names can carry model and sequence, e.g.
        "ERN-Net T1c".
      fmt: "text", "markdown" or "csv". Text and Markdown show "0.915 (0.895-0.932)" and end with
        a line naming the positive class and the CI methods of each level, then the rows' notes,
        one line each; CSV has one number per cell ("<metric>", "<metric>_ci_low",
        "<metric>_ci_high"), a positive_class column and a notes column ("; "-joined).
      columns: metric keys, in order.
      levels: which levels of `evaluate_predictions` output to show, in row order (all subject
        rows, then all image rows, by default).
      digits: decimals (Gao reports 3).

    Returns:
      The table as a string.
    """
    if fmt != "csv":
        levels, dropped = shown_levels(results, levels)
    rows = _rows(results, levels)
    positives = sorted({str(m.get("positive_class", "?")) for _, m in rows})
    if fmt == "csv":
        header = ["row", "positive_class", "n", "n_positive"]
        for col in columns:
            header += [col, f"{col}_ci_low", f"{col}_ci_high"]
        flat = [(name, flatten(m)) for name, m in rows]
        body = [[name, str(m.get("positive_class", ""))] for name, m in rows]
        for cells, (_, f), (_, m) in zip(body, flat, rows, strict=True):
            cells += [_csv_number(f.get(key, math.nan)) for key in header[2:]]
            cells.append("; ".join(m.get("notes") or ()))
        return _render(header + ["notes"], body, fmt)
    one_positive = len(positives) == 1
    header = ["", "n (positive)"] + [_TITLES.get(c, c) + " (95% CI)" for c in columns]
    for i, col in enumerate(columns):
        if one_positive and col in ("sensitivity", "specificity", "precision"):
            header[i + 2] = f"{_TITLES[col]} [positive: {positives[0]}] (95% CI)"
    if not one_positive:
        header.insert(1, "positive class")
    body = []
    for name, m in rows:
        count = f"{m.get('n', '?')} ({m.get('n_positive', '?')})"
        cells = [name] + ([] if one_positive else [str(m.get("positive_class", "?"))])
        body.append(cells + [count] + [_cell(m, c, digits) for c in columns])
    notes = row_notes(rows) + ([ONE_IMAGE_NOTE] if dropped else [])
    lead = "- " if fmt == "markdown" else "  "
    listed = "".join(f"{lead}{n}\n" for n in notes)
    return (
        _render(header, body, fmt)
        + _footnote(rows, positives)
        + (f"\nNotes:\n{listed}" if notes else "")
    )


def ci_name(method: str) -> str:
    """An interval method in words: "wilson" -> "Wilson"."""
    return _CI_NAMES.get(method, method)


def ci_description(m: Mapping) -> str:
    """One level's CI methods in words: "Wilson for proportions, DeLong for AUC, ... for F1"."""

    def name(key):
        return _CI_NAMES.get(m.get(key), m.get(key, "?"))

    proportion, auc, f1 = name("ci_method"), name("auc_ci_method"), name("f1_ci_method")
    if proportion == auc == f1:
        return f"{proportion}, every metric"
    return f"{proportion} for proportions, {auc} for AUC, {f1} for F1"


def _footnote(rows, positives) -> str:
    """The positive class and the CI methods of each level, as the papers' footnotes give them."""
    if not rows:
        return ""
    confidence = rows[0][1].get("confidence", 0.95)
    described: dict[str, str] = {}
    for name, m in rows:
        level = m.get("level") or name.rsplit(" ", 1)[-1]
        described.setdefault(f"{level} rows" if level in LEVELS else name, ci_description(m))
    methods = "; ".join(f"{who}: {how}" for who, how in described.items())
    return (
        f"\nPositive class: {', '.join(positives)}. {confidence:.0%} CIs, {methods}. n/a: "
        f"undefined (the notes say why).\n"
    )


def summary_line(results: Mapping) -> str:
    """One log line of an `evaluate_predictions` result: subject AUC first, then image, notes.

    E.g. "12 subjects, 156 images: subject AUC 1.000 (1.000-1.000), image AUC 0.930
    (0.870-0.975); notes: subject: small sample: ...".
    """
    parts = [f"{lvl} AUC {_cell(results[lvl], 'auc', 3)}" for lvl in LEVELS if lvl in results]
    notes = [f"{lvl}: {n}" for lvl in LEVELS for n in results.get(lvl, {}).get("notes") or ()]
    image = results.get("image", {})
    head = f"{image.get('n_subjects', '?')} subjects, {image.get('n', '?')} images: "
    return head + ", ".join(parts) + (f"; notes: {' | '.join(notes)}" if notes else "")


def metric_label(key: str) -> str:
    """A flat results key as a table row names it: "test.subject.auc" -> "test subject AUC"."""
    *where, metric = key.split(".")
    title = _TITLES.get(metric, metric)
    return " ".join([*where, title if title.isupper() else title.lower()])


def format_spread(
    spread: Mapping[str, Mapping[str, float]],
    runs: Mapping[str, Mapping[str, float | None]] | None = None,
    *,
    fmt: str = "text",
    digits: int = 3,
) -> str:
    """Mean, SD and range of metrics across runs, each run's value beside them.

    Args:
      spread: flat results key ("test.subject.auc") -> {"mean", "sd", "min", "max", "n"}, e.g.
        `ernjax.studies.repeat.spread` over training seeds.
      runs: column name ("seed 0", "radiomics") -> that run's flat results; its value of each
        key is shown (None or missing: n/a).
      fmt: "text", "markdown" or "csv" (full precision, one number a cell, "n" the run count).
      digits: decimals of text and Markdown.

    Returns:
      One row per key, in `spread`'s order: metric, mean, SD, min-max (CSV: min, max, n), runs.
    """
    runs = runs or {}

    def value(flat, key):
        v = flat.get(key)
        return math.nan if v is None else float(v)

    if fmt == "csv":
        header = ["metric", "mean", "sd", "min", "max", "n", *runs]
        body = [
            [key]
            + [_csv_number(s[c]) for c in ("mean", "sd", "min", "max", "n")]
            + [_csv_number(value(r, key)) for r in runs.values()]
            for key, s in spread.items()
        ]
        return _render(header, body, fmt)
    header = ["", "mean", "SD", "min-max", *runs]
    body = [
        [
            metric_label(key),
            _number(s["mean"], digits),
            _number(s["sd"], digits),
            f"{_number(s['min'], digits)}-{_number(s['max'], digits)}",
            *(_number(value(r, key), digits) for r in runs.values()),
        ]
        for key, s in spread.items()
    ]
    return _render(header, body, fmt)


def format_ttests(tests: Mapping[str, Mapping], *, fmt: str = "text", digits: int = 3) -> str:
    """A table of `one_sample_ttests` results per model (Ying 2025 Tables 5-6).

    Args:
      tests: row name (e.g. model) -> `one_sample_ttests` output.
      fmt: "text", "markdown" or "csv".
      digits: decimals of t and of the mean probability.

    Returns:
      One row per model and group ("all" and each class): n, mean probability of the true class,
      t and two-sided p.
    """
    header = ["", "group", "n", "mean p(true class)", "t", "p"]
    body = []
    for name, groups in tests.items():
        for group, r in groups.items():
            p = "n/a" if math.isnan(r["p"]) else f"{r['p']:.3g}"
            stats = [_number(r["mean"], digits), _number(r["t"], digits), p]
            body.append([str(name), str(group), str(r["n"]), *stats])
    return _render(header, body, fmt) + ("" if fmt == "csv" else "\n")


def plot_roc(
    curves: Mapping[str, tuple],
    path,
    title: str = "ROC",
    *,
    positive_class: str = "",
    readers: tuple[Mapping[str, tuple[float, float]], tuple[float, float]] | None = None,
) -> Path:
    """ROC curves of several models in one PNG, with each AUC in the legend.

    Args:
      curves: legend name -> (y_true [N] bools or 0/1 with 1 positive, scores [N]).
      path: PNG file to write atomically (folders are created).
      title: figure title.
      positive_class: named on the axes ("sensitivity (recurrence)") when given.
      readers: ({reader: (1 - specificity, sensitivity)}, the readers' mean point), drawn as
        red dots labelled with the reader and a red cross (Gao 2020 Fig. 4b), or None
        (`ernjax.evaluate.readers.roc_points`).

    Returns:
      The path written. A curve whose data hold one class only is listed as "AUC undefined".
    """
    from matplotlib.figure import Figure  # the Agg canvas, without pyplot's global state
    from sklearn import metrics as skm

    fig = Figure(figsize=(5.5, 5), dpi=150)
    ax = fig.add_subplot()
    ax.plot([0, 1], [0, 1], color="0.7", linestyle="--", linewidth=1, label="chance")
    for name, (y_true, scores) in curves.items():
        y = np.asarray(y_true).astype(bool)
        if y.all() or not y.any():
            ax.plot([], [], label=f"{name} (AUC undefined: one class only)")
            continue
        fpr, tpr, _ = skm.roc_curve(y, np.asarray(scores, float))
        auc = skm.roc_auc_score(y, np.asarray(scores, float))
        ax.plot(fpr, tpr, linewidth=1.5, label=f"{name} (AUC {auc:.3f})")
    if readers is not None:
        _plot_readers(ax, *readers)
    suffix = f" ({positive_class})" if positive_class else ""
    ax.set(xlim=(0, 1), ylim=(0, 1.01), title=title, aspect="equal")
    ax.set(xlabel=f"1 - specificity{suffix}", ylabel=f"Sensitivity{suffix}")
    ax.legend(loc="lower right", fontsize="small")
    fig.tight_layout()
    return atomic.save_figure(fig, path)


def _plot_readers(ax, points: Mapping[str, tuple[float, float]], mean: tuple[float, float]):
    """The readers as red dots, labelled (one label for readers on one point); the mean, a cross."""
    shown = {r: p for r, p in points.items() if all(math.isfinite(v) for v in p)}
    at: dict[tuple[float, float], list[str]] = {}
    for r, (x, y) in shown.items():
        at.setdefault((round(x, 9), round(y, 9)), []).append(r)
    if shown:
        x, y = zip(*at, strict=True)
        label = f"readers ({len(shown)})"
        ax.scatter(x, y, s=28, color="tab:red", zorder=3, clip_on=False, label=label)
        for (px, py), names in at.items():
            right = px > 0.85  # near the right edge the label goes to the left of its point
            ax.annotate(
                ", ".join(names),
                (px, py),
                xytext=(-4 if right else 4, -9),
                ha="right" if right else "left",
                textcoords="offset points",
                fontsize=6.5,
                color="0.25",
                annotation_clip=False,
                zorder=5,  # over the mean's cross: every label stays readable
                bbox=dict(boxstyle="round,pad=0.1", facecolor="white", edgecolor="none", alpha=0.7),
            )
    if all(math.isfinite(v) for v in mean) and len(shown) > 1:
        ax.scatter(
            *mean,
            s=70,
            marker="X",
            color="tab:red",
            edgecolor="black",
            linewidth=0.6,
            zorder=4,
            clip_on=False,
            label="readers' mean",
        )
