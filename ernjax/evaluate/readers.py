"""Readers against the model: clinicians' decisions per subject beside the model's (Gao 2020).

Gao 2020 (JMIR Med Inform 8:e19805) showed the same 29 test patients to five neurosurgeons and
compared them with the networks subject by subject (Table 5), the readers drawn as points on the
subject-wise ROC (Fig. 4b): "The neurosurgeons achieved an average sensitivity of 0.768 (SD
0.109), specificity of 0.360 (SD 0.089), and accuracy of 0.628 (SD 0.075), which were
significantly worse than the DNN models when measured using t tests (P=.02 in sensitivity and
P<.001 in specificity and accuracy)." Table 5's last row is "P values for t tests between the
DNNs and the neurosurgeons". See `gao_ttest` for which t test that is.

The readers' file (`config.eval.readers_csv`, `read_csv`) has one row per reader and subject:

    reader,subject_id,decision[,confidence]
    R1,syn-003,recurrence
    R1,syn-007,0

`decision` is a class name of `config.data.classes` (any case), or 1 / 0 for the positive class
(`config.eval.positive_class`) / not it. A class name wins over 1 / 0 when the classes are
themselves called "0" and "1". `confidence`, optional, is how sure the reader is of that
decision on any scale where higher is surer (e.g. 1-5); with it, each reader also gets an ROC AUC
(the decision signed by the confidence ranks the subjects). Anything else is refused with one
line naming the file, the line and the problem (`InputError`).

`compare` scores, on the test subjects (subject-wise, the level the readers decide at):
  - each reader: sensitivity, specificity and accuracy with `config.eval.ci_method` intervals
    (Wilson by default), and the AUC with a DeLong interval when confidences are given;
  - the readers' mean of each metric, its SD and a t interval across readers (the readers as a
    sample of readers, as Gao's mean (SD) and t tests treat them);
  - each model (a run, or every run of a comparison) at its validation cut-off: the decisions
    of its subject table row (`ScoringPolicy.subject_calls`);
  - McNemar's exact test of each reader against each model on the subjects both decided, for
    accuracy (all of them), sensitivity (the positive ones) and specificity (the negative
    ones), each p beside its Holm-adjusted value over the readers: the paired test;
  - Gao's t tests of the readers' values against the model's (`gao_ttest`), for comparison;
  - warnings where a reader's subjects differ from the test split (missing ones are left out of
    that reader's metrics; extra ones, which have no test label, are ignored).
`run` reads the file, compares and writes DIR/readers.md and readers.json (the run's report and
`compare` call it); `roc_points` gives the ROC figure's points.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from scipy import stats as sps

from ernjax import atomic
from ernjax.errors import InputError
from ernjax.evaluate import reporting, stats

COLUMNS = ("reader", "subject_id", "decision")
OPTIONAL_COLUMNS = ("confidence",)
METRICS = ("sensitivity", "specificity", "accuracy")
# The subjects each metric of McNemar's test pairs: all, the positive ones, the negative ones.
_PAIRED_ON = {"accuracy": None, "sensitivity": True, "specificity": False}
_TITLES = {"sensitivity": "Sensitivity", "specificity": "Specificity", "accuracy": "Accuracy"}
NAN = float("nan")
LISTED = 8  # subject IDs named in a warning before "and N more"


@dataclasses.dataclass(frozen=True)
class ReaderDecisions:
    """The decisions of a readers' file.

    Attributes:
      path: the file read.
      readers: reader names, in the order they first appear.
      calls: reader -> {subject_id: called positive}.
      confidence: reader -> {subject_id: confidence}, or None without a confidence column.
    """

    path: str
    readers: tuple[str, ...]
    calls: dict[str, dict[str, bool]]
    confidence: dict[str, dict[str, float]] | None = None


@dataclasses.dataclass(frozen=True)
class SubjectCalls:
    """One model's subject-wise decisions (`ScoringPolicy.subject_calls`).

    Attributes:
      subjects: [S] subject IDs, sorted.
      truth: [S] True where the subject is of the positive class.
      called: [S] True where the model calls it positive at its cut-off.
    """

    subjects: list[str]
    truth: np.ndarray
    called: np.ndarray


def decision_values(class_names: Sequence[str], positive: int) -> dict[str, bool]:
    """What a decision cell may say (lower case) -> called positive."""
    values = {"1": True, "0": False}
    values |= {str(c).lower(): i == positive for i, c in enumerate(class_names)}
    return values


def read_csv(path, class_names: Sequence[str], positive: int) -> ReaderDecisions:
    """Reads and checks a readers' file (see the module docstring for its columns and values).

    Args:
      path: the CSV file.
      class_names: the class names, in class-index order (`config.data.classes`).
      positive: index of the positive class.

    Returns:
      The decisions, every (reader, subject) once.

    Raises:
      InputError: one line naming the file, the line and the problem: a missing file, a header
        without reader/subject_id/decision (or with an unknown column), a row with the wrong
        number of fields, an empty reader or subject, a decision that is no class name nor 1/0,
        a confidence that is no finite number, or a reader deciding a subject twice.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError("", path, "readers file not found (config.eval.readers_csv)")
    with open(path, newline="", encoding="utf-8-sig") as f:  # -sig: Excel's byte-order mark
        rows = list(csv.reader(f))
    expected = f"expected the header {','.join(COLUMNS)}[,{','.join(OPTIONAL_COLUMNS)}]"
    if not rows:
        raise InputError("", path, f"line 1: the file is empty; {expected}")
    header = [h.strip().lower() for h in rows[0]]
    missing = [c for c in COLUMNS if c not in header]
    unknown = [h for h in header if h not in COLUMNS + OPTIONAL_COLUMNS]
    if missing or unknown or len(set(header)) != len(header):
        what = f"missing {missing}" if missing else f"unknown {unknown}" if unknown else "repeats"
        raise InputError("", path, f"line 1: header {rows[0]} ({what}); {expected}")
    values = decision_values(class_names, positive)
    allowed = ", ".join(f"{c!r}" for c in class_names)
    allowed += f", 1 ({class_names[positive]}) or 0 (not {class_names[positive]})"
    has_conf = "confidence" in header
    calls: dict[str, dict[str, bool]] = {}
    conf: dict[str, dict[str, float]] = {}
    seen: dict[tuple[str, str], int] = {}
    for line, row in enumerate(rows[1:], start=2):
        if not any(cell.strip() for cell in row):
            continue  # a blank line
        if len(row) != len(header):
            raise InputError(
                "", path, f"line {line}: {len(row)} fields, the header has {len(header)}"
            )
        r = dict(zip(header, (cell.strip() for cell in row), strict=True))
        reader, sid, decision = r["reader"], r["subject_id"], r["decision"]
        if not reader or not sid:
            raise InputError(
                sid, path, f"line {line}: no {'reader' if not reader else 'subject_id'}"
            )
        if decision.lower() not in values:
            raise InputError(
                sid, path, f"line {line}: decision {decision!r} is not one of {allowed}"
            )
        if (reader, sid) in seen:
            raise InputError(
                sid,
                path,
                f"line {line}: reader {reader} decided this subject already on line "
                f"{seen[reader, sid]}",
            )
        seen[reader, sid] = line
        calls.setdefault(reader, {})[sid] = values[decision.lower()]
        if has_conf:
            try:
                value = float(r["confidence"])
            except ValueError:
                value = NAN
            if not math.isfinite(value):
                raise InputError(
                    sid, path, f"line {line}: confidence {r['confidence']!r} is not a number"
                )
            conf.setdefault(reader, {})[sid] = value
    if not calls:
        raise InputError("", path, "no decisions: the file has a header only")
    return ReaderDecisions(str(path), tuple(calls), calls, conf if has_conf else None)


def check_setting(config) -> None:
    """Reads `config.eval.readers_csv`, if set, so that a bad file fails before any work.

    Called once the config check has settled `config.data.classes` (`ernjax.data.prepare`), and
    by `compare` before its runs train. A positive class not among the classes is left to the
    config check to report.
    """
    path = config.eval.get("readers_csv", "")
    names = tuple(str(c) for c in config.data.classes)
    if path and config.eval.positive_class in names:
        read_csv(path, names, names.index(config.eval.positive_class))


# ----------------------------------------------------------------------------- tests
def mcnemar_exact(b: int, c: int) -> float:
    """Two-sided exact McNemar p of b and c discordant pairs (a binomial test of b in b + c at 1/2).

    Twice the smaller tail, capped at 1; no discordant pair gives 1.
    """
    n = int(b) + int(c)
    if n == 0:
        return 1.0
    return float(min(1.0, 2.0 * sps.binom.cdf(min(b, c), n, 0.5)))


def gao_ttest(models: Sequence[float], readers: Sequence[float]) -> dict:
    """Gao 2020's t test of the models' values of a metric against the readers' values.

    Gao's Table 5 reports, per metric, one P for "t tests between the DNNs and the
    neurosurgeons": six networks' values against five neurosurgeons'. The paper does not say
    which t test; Welch's unequal-variance two-sample test reproduces all three of its P values
    from the table (sensitivity .019, specificity 1.8e-5, accuracy 6.7e-4: ".02", "<.001",
    "<.001"), and Student's pooled one does not (.004 for sensitivity), so Welch's it is
    (tests/test_readers.py reproduces them). With one model (one run) the test is the one-sample
    t test of the readers' values against the model's (Welch's with a variance-free side).

    It treats the readers (and models) as samples of readers (and models) and ignores that
    every value is estimated on the same few subjects: McNemar's paired test of each reader is
    the test of the decisions themselves.

    Args:
      models: the models' values (one or more).
      readers: the readers' values (two or more); NaN values (undefined) are left out.

    Returns:
      {"t", "df", "p" (two-sided), "n_models", "n_readers", "mean_models", "mean_readers",
      "sd_readers"}; t and p NaN when undefined (fewer than 2 readers, or no spread at all).
    """
    a = np.asarray([v for v in models if math.isfinite(v)], float)
    b = np.asarray([v for v in readers if math.isfinite(v)], float)
    out = dict(n_models=len(a), n_readers=len(b), t=NAN, df=NAN, p=NAN)
    out["mean_models"] = float(a.mean()) if len(a) else NAN
    out["mean_readers"] = float(b.mean()) if len(b) else NAN
    out["sd_readers"] = float(b.std(ddof=1)) if len(b) > 1 else NAN
    if len(a) < 1 or len(b) < 2:
        return out
    va = a.var(ddof=1) / len(a) if len(a) > 1 else 0.0
    vb = b.var(ddof=1) / len(b)
    se2 = va + vb
    if se2 <= 1e-15:
        return out
    df_parts = vb**2 / (len(b) - 1) + (va**2 / (len(a) - 1) if len(a) > 1 else 0.0)
    df = se2**2 / df_parts
    t = (a.mean() - b.mean()) / math.sqrt(se2)
    out.update(t=float(t), df=float(df), p=float(2 * sps.t.sf(abs(t), df)))
    return out


def across_readers(values: Sequence[float], confidence: float = 0.95) -> dict:
    """Mean, SD and t interval of one metric across readers (NaN values left out).

    Returns:
      {"mean", "sd", "ci" [low, high], "n"}; the interval is NaN for fewer than 2 readers.
    """
    v = np.asarray([x for x in values if math.isfinite(x)], float)
    out = dict(n=len(v), mean=float(v.mean()) if len(v) else NAN, sd=NAN, ci=[NAN, NAN])
    if len(v) > 1:
        sd = float(v.std(ddof=1))
        half = sps.t.ppf((1 + confidence) / 2, len(v) - 1) * sd / math.sqrt(len(v))
        out.update(
            sd=sd, ci=[float(max(0.0, out["mean"] - half)), float(min(1.0, out["mean"] + half))]
        )
    return out


# ----------------------------------------------------------------------------- comparison
def _metrics(y: np.ndarray, called: np.ndarray, ci_method: str, confidence: float) -> dict:
    m, notes = stats.binary_metrics(
        y, called.astype(float), 0.5, ci_method=ci_method, confidence=confidence
    )
    m.pop("threshold")
    m["notes"] = notes
    return m


def _listed(ids: Sequence[str]) -> str:
    ids = sorted(ids)
    more = f" and {len(ids) - LISTED} more" if len(ids) > LISTED else ""
    return ", ".join(ids[:LISTED]) + more


def compare(
    decisions: ReaderDecisions,
    models: Mapping[str, SubjectCalls],
    *,
    ci_method: str = "wilson",
    confidence: float = 0.95,
) -> dict:
    """Every reader against every model on the test subjects (see the module docstring).

    Args:
      decisions: the readers' decisions (`read_csv`).
      models: model (run) name -> its subject decisions on the test split at its validation
        cut-off; every model must have decided the same subjects with the same labels.
      ci_method: the proportion interval of each reader's and model's metrics
        (`stats.proportion_ci`; `config.eval.ci_method`).
      confidence: the two-sided level of every interval.

    Returns:
      {"file", "n_subjects", "models": {name: metrics}, "readers": {reader: metrics, with
      "subjects" (how many it decided of the test split), "missing" and "extra" (subject IDs)},
      "mean": {metric: `across_readers`}, "mcnemar": {model: {reader: {metric: {"n",
      "model_only", "reader_only", "both", "neither", "p", "p_holm"}}}}, "ttests": {model:
      {metric: `gao_ttest`}}, "ttests_models": {metric: `gao_ttest`} (two or more models),
      "warnings": [str]}. "model_only" counts subjects the model got right and the reader wrong.

    Raises:
      ValueError: the models decided different subjects, or gave them different labels.
    """
    names = list(models)
    first = models[names[0]]
    for n in names[1:]:
        m = models[n]
        if m.subjects != first.subjects or not np.array_equal(m.truth, first.truth):
            raise ValueError(f"{n} and {names[0]} decided different test subjects: not comparable")
    truth = dict(zip(first.subjects, first.truth.tolist(), strict=True))
    test = set(first.subjects)
    out: dict = {"file": decisions.path, "n_subjects": len(test), "warnings": []}
    out["models"] = {
        n: _metrics(m.truth, m.called, ci_method, confidence) for n, m in models.items()
    }
    readers: dict[str, dict] = {}
    for r in decisions.readers:
        calls = decisions.calls[r]
        shared = sorted(set(calls) & test)
        missing, extra = sorted(test - set(calls)), sorted(set(calls) - test)
        y = np.array([truth[s] for s in shared], bool)
        called = np.array([calls[s] for s in shared], bool)
        m = _metrics(y, called, ci_method, confidence)
        m["auc"], m["auc_ci"] = NAN, [NAN, NAN]
        if decisions.confidence is not None and len(shared):
            sure = decisions.confidence[r]
            rating = np.array([sure[s] if calls[s] else -sure[s] for s in shared], float)
            m["auc"], m["auc_ci"], auc_notes = stats.roc_auc_with_ci(
                y, rating, method="delong", confidence=confidence
            )
            m["notes"] += auc_notes
        m.update(subjects=len(shared), missing=missing, extra=extra)
        if missing:
            out["warnings"].append(
                f"reader {r} did not decide {len(missing)} of the {len(test)} test subjects "
                f"({_listed(missing)}): its metrics and tests count the {len(shared)} it did"
            )
        if extra:
            out["warnings"].append(
                f"reader {r} decided {len(extra)} subjects not in the test split "
                f"({_listed(extra)}): left out"
            )
        readers[r] = m
    out["readers"] = readers
    out["mean"] = {k: across_readers([m[k] for m in readers.values()], confidence) for k in METRICS}
    out["mcnemar"] = {}
    for n, model in models.items():
        model_calls = dict(zip(model.subjects, model.called.tolist(), strict=True))
        per_reader = {r: _paired(decisions.calls[r], model_calls, truth) for r in readers}
        for k in METRICS:  # Holm over the readers, for each metric and model
            adjusted = stats.holm([per_reader[r][k]["p"] for r in readers])
            for r, p in zip(readers, adjusted, strict=True):
                per_reader[r][k]["p_holm"] = float(p)
        out["mcnemar"][n] = per_reader
    out["ttests"] = {
        n: {k: gao_ttest([out["models"][n][k]], [m[k] for m in readers.values()]) for k in METRICS}
        for n in names
    }
    if len(names) > 1:
        out["ttests_models"] = {
            k: gao_ttest([out["models"][n][k] for n in names], [m[k] for m in readers.values()])
            for k in METRICS
        }
    return out


def _paired(reader: Mapping[str, bool], model: Mapping[str, bool], truth: Mapping) -> dict:
    """McNemar's exact test of one reader against one model, per metric, on shared subjects."""
    shared = sorted(set(reader) & set(model))
    out = {}
    for metric, cls in _PAIRED_ON.items():
        subjects = [s for s in shared if cls is None or truth[s] == cls]
        r_ok = np.array([reader[s] == truth[s] for s in subjects], bool)
        m_ok = np.array([model[s] == truth[s] for s in subjects], bool)
        b, c = int(np.sum(m_ok & ~r_ok)), int(np.sum(r_ok & ~m_ok))
        out[metric] = dict(
            n=len(subjects),
            model_only=b,
            reader_only=c,
            both=int(np.sum(m_ok & r_ok)),
            neither=int(np.sum(~m_ok & ~r_ok)),
            p=mcnemar_exact(b, c) if subjects else NAN,
        )
    return out


def roc_points(result: Mapping) -> tuple[dict[str, tuple[float, float]], tuple[float, float]]:
    """Each reader's (1 - specificity, sensitivity) and the readers' mean point, for the ROC."""
    points = {r: (1.0 - m["specificity"], m["sensitivity"]) for r, m in result["readers"].items()}
    mean = result["mean"]
    return points, (1.0 - mean["specificity"]["mean"], mean["sensitivity"]["mean"])


# ----------------------------------------------------------------------------- tables
def _num(v, digits=3) -> str:
    return "n/a" if v is None or not math.isfinite(v) else f"{v:.{digits}f}"


def _cell(m: Mapping, key: str) -> str:
    v, ci = m.get(key, NAN), m.get(f"{key}_ci", [NAN, NAN])
    if not math.isfinite(v):
        return "n/a"
    return f"{_num(v)} ({_num(ci[0])}-{_num(ci[1])})"


def _p(p: float) -> str:
    return "n/a" if not math.isfinite(p) else f"{p:.3g}"


def format_markdown(
    result: Mapping,
    *,
    positive_class: str,
    cutoffs: Mapping[str, str] | None = None,
    ci_method: str = "wilson",
    confidence: float = 0.95,
) -> str:
    """readers.md: the readers' table, McNemar's tests, Gao's t tests and the warnings.

    Args:
      result: `compare`'s output.
      positive_class: the positive class's name.
      cutoffs: model name -> its cut-off in words (e.g. "subject score >= 0.5 (validation)").
      ci_method: named in the footnote.
      confidence: named in the headers.
    """
    level = f"{confidence:.0%} CI"
    lines = [
        "# Readers against the model",
        "",
        f"Test split, subject-wise, {result['n_subjects']} subjects; positive class "
        f"{positive_class}. Readers' decisions from {Path(result['file']).name} "
        f"({len(result['readers'])} readers); each model decides at its validation cut-off, as "
        f"its subject row of the results table does"
        + (": " + "; ".join(f"{n} {c}" for n, c in cutoffs.items()) + "." if cutoffs else "."),
        "",
    ]
    header = ["", "subjects (positive)", *(f"{_TITLES[k]} ({level})" for k in METRICS)]
    header.append(f"AUC ({level})")
    body = []
    for n, m in result["models"].items():
        body.append([n, f"{m['n']} ({m['n_positive']})", *(_cell(m, k) for k in METRICS), "-"])
    for r, m in result["readers"].items():
        auc = _cell(m, "auc") if math.isfinite(m.get("auc", NAN)) else "n/a"
        body.append(
            [f"reader {r}", f"{m['n']} ({m['n_positive']})", *(_cell(m, k) for k in METRICS), auc]
        )
    mean = result["mean"]
    k_readers = len(result["readers"])
    body.append(
        [
            f"readers, mean ({level} across readers)",
            f"{k_readers} readers",
            *(
                f"{_num(mean[k]['mean'])} ({_num(mean[k]['ci'][0])}-{_num(mean[k]['ci'][1])})"
                for k in METRICS
            ),
            "",
        ]
    )
    body.append(["readers, SD", "", *(_num(mean[k]["sd"]) for k in METRICS), ""])
    lines += _table(header, body)
    lines += [
        "",
        f"Readers' and models' intervals: {reporting.ci_name(ci_method)}; the readers' mean: a t "
        f"interval across readers (the readers as a sample of readers). AUC: from the readers' "
        f"confidences (DeLong), n/a without a confidence column (a yes/no decision has no "
        f"curve: the readers are points on the ROC figure).",
        "",
        "## Paired tests: each reader against each model (McNemar, exact)",
        "",
        "On the subjects both decided: accuracy on all of them, sensitivity on the "
        f'{positive_class} ones, specificity on the others. "model only": the model right and '
        'the reader wrong; "reader only": the reverse; p (Holm): adjusted over the readers '
        "of a model and metric.",
        "",
    ]
    header = ["model", "reader", "metric", "subjects", "model only", "reader only", "p", "p (Holm)"]
    body = []
    for n, per_reader in result["mcnemar"].items():
        for k in METRICS:
            for r, tests in per_reader.items():
                t = tests[k]
                body.append(
                    [
                        n,
                        r,
                        k,
                        str(t["n"]),
                        str(t["model_only"]),
                        str(t["reader_only"]),
                        _p(t["p"]),
                        _p(t["p_holm"]),
                    ]
                )
    lines += _table(header, body)
    lines += [
        "",
        "## Gao 2020's t tests across readers (for comparison)",
        "",
        "Welch's t test of the models' value against the readers' values (Gao 2020 Table 5); "
        "with one model, the one-sample t test of the readers against it. It counts readers, "
        "not subjects, and ignores that every value comes from the same few subjects: "
        "McNemar's test above is the paired test.",
        "",
    ]
    header = ["models", "metric", "value (models' mean)", "readers' mean (SD)", "t", "df", "p"]
    body = []
    rows = [(n, tests) for n, tests in result["ttests"].items()]
    if "ttests_models" in result:
        rows.append((f"all {len(result['models'])} models", result["ttests_models"]))
    for n, tests in rows:
        for k in METRICS:
            t = tests[k]
            body.append(
                [
                    n,
                    k,
                    _num(t["mean_models"]),
                    f"{_num(t['mean_readers'])} ({_num(t['sd_readers'])})",
                    _num(t["t"]),
                    _num(t["df"], 1),
                    _p(t["p"]),
                ]
            )
    lines += _table(header, body)
    notes = list(result["warnings"])
    for r, m in result["readers"].items():
        notes += [f"reader {r}: {note}" for note in m["notes"]]
    if notes:
        lines += ["", "Warnings and notes:", *(f"- {w}" for w in notes)]
    return "\n".join(lines) + "\n"


def _table(header: Sequence[str], body: Sequence[Sequence[str]]) -> list[str]:
    rows = [list(header), ["---"] * len(header), *map(list, body)]
    return ["| " + " | ".join(r) + " |" for r in rows]


def to_json(result: Mapping) -> str:
    """`compare`'s output as JSON, NaN as null."""

    def clean(v):
        if isinstance(v, Mapping):
            return {str(k): clean(x) for k, x in v.items()}
        if isinstance(v, list | tuple):
            return [clean(x) for x in v]
        if isinstance(v, float | np.floating):
            return float(v) if math.isfinite(v) else None
        if isinstance(v, np.integer | np.bool_):
            return v.item()
        return v

    return json.dumps(clean(result), indent=1, sort_keys=True) + "\n"


def run(readers_csv, directory, scoring, test: Mapping, cutoffs: Mapping) -> tuple[dict, str]:
    """Reads the readers' file, compares, writes DIRECTORY/readers.md and readers.json.

    Args:
      readers_csv: the readers' file (`config.eval.readers_csv`).
      directory: where readers.md and readers.json go (atomically; inside `atomic.staged()`
        they are renamed with the block's other files).
      scoring: the run's (or study's) `ScoringPolicy`: positive class, subject rule, cut-offs,
        interval method.
      test: model (run) name -> its test `Predictions`.
      cutoffs: model name -> its cut-offs chosen on validation (`ScoringPolicy.cutoffs`).

    Returns:
      (`compare`'s output, the Markdown of readers.md).
    """
    decisions = read_csv(readers_csv, scoring.class_names, scoring.positive)
    calls = {n: SubjectCalls(*scoring.subject_calls(p, cutoffs.get(n))) for n, p in test.items()}
    result = compare(decisions, calls, ci_method=scoring.ci_method, confidence=scoring.confidence)
    described = {
        n: f"(subject score >= {scoring.subject_cutoff(cutoffs.get(n)):.3g}, "
        f"{scoring.subject_method}, cut-off: {scoring.subject_cutoff_source(cutoffs.get(n))})"
        for n in test
    }
    markdown = format_markdown(
        result,
        positive_class=scoring.positive_name,
        cutoffs=described,
        ci_method=scoring.ci_method,
        confidence=scoring.confidence,
    )
    directory = Path(directory)
    atomic.write_text(directory / "readers.md", markdown)
    atomic.write_text(directory / "readers.json", to_json(result))
    return result, markdown
