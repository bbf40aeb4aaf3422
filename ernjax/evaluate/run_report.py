"""One self-contained HTML page per run: what a person looks at instead of reading the files.

`write(config, workdir)` reads a finished run's own outputs (results.json, data.json,
predictions_<split>.csv, calibration.md and the figures of `ernjax.train.outputs`) and writes
WORKDIR/report.html with, in this order:
  - the data: subjects and images per split and class, the subjects skipped and why;
  - the settings of preprocessing, sampling, model, training and evaluation (and the full config);
  - the results tables with their notes (subject rows first), the calibration table;
  - the readers against the model, with `config.eval.readers_csv` (`ernjax.evaluate.readers`:
    written to WORKDIR/readers.md and readers.json here, the readers drawn on the subject ROC);
  - figures: ROC (subject- and image-wise), reliability diagram, decision curve, training curves,
    and Grad-CAM of a few test subjects (through `ernjax.inference`, what `predict` runs);
  - a checklist of the CLAIM 2024 and TRIPOD+AI 2024 topics the run covers, and those it leaves to
    the researcher.
Images are embedded (base64), so the page can be mailed or archived alone. It carries subject IDs
only, as every output does. The figures are the run's own (`ernjax.train.outputs`, the
calibration figures); the Grad-CAM images are left in WORKDIR/report_gradcam/.
"""

import base64
import datetime
import html
import json
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path

from ernjax import atomic
from ernjax.errors import InputError
from ernjax.evaluate import predictions, readers, reporting
from ernjax.evaluate.scoring import ScoringPolicy

REPORT = "report.html"
WIDE = ("training_curves.png", "confusion_test.png", "inputs_validation.png")
GRADCAM_DIR = "report_gradcam"
# The settings a reader of a methods section asks for first; the full config follows them.
SETTINGS = {
    "Data": (
        "data.kind",
        "data.channels",
        "data.reference",
        "data.shape",
        "data.normalize",
        "data.roi",
        "data.roi_size_mm",
        "data.mask_channel",
        "data.slice_selection",
        "data.group_column",
        "data.split",
    ),
    "Augmentation": ("data.augment",),
    "Model": ("model.name", "model.norm", "model.dropout", "model.init_from"),
    "Training": (
        "train.num_epochs",
        "train.batch_size",
        "train.optimizer",
        "train.learning_rate",
        "train.schedule",
        "train.warmup_epochs",
        "train.weight_decay",
        "train.sampling",
        "train.class_weights",
        "train.class_weight_counts",
        "train.ema_decay",
        "train.select_checkpoint",
        "train.select_metric",
        "seed",
    ),
    "Evaluation": (
        "eval.positive_class",
        "eval.subject_method",
        "eval.tune_threshold",
        "eval.image_ci",
        "eval.recalibrate",
        "eval.confidence",
        "eval.readers_csv",
    ),
}
FIGURES = (
    ("roc_test_subject.png", "ROC, subject-wise (test)"),
    ("roc_test_image.png", "ROC, image-wise (test)"),
    ("confusion_test.png", "Confusion matrices at the table's cut-offs (test)"),
    ("reliability_test.png", "Reliability diagram (test)"),
    ("decision_curve_test.png", "Decision curve (test)"),
    ("training_curves.png", "Training and validation curves"),
    ("inputs_validation.png", "Validation inputs as the model sees them"),
)


def write(config, workdir, *, gradcam_subjects: int = 2) -> Path:
    """Writes WORKDIR/report.html for the finished run in WORKDIR (see the module docstring).

    Args:
      config: the run's config.
      workdir: the run's WORKDIR, with its results.json.
      gradcam_subjects: test subjects with Grad-CAM images (one of each class first); 0: none.

    Returns:
      The report's path.

    Raises:
      InputError: WORKDIR has no results.json (the run has not finished).
    """
    workdir = Path(workdir)
    results_path = workdir / "results.json"
    if not results_path.is_file():
        raise InputError("", results_path, "the run has not finished: no results.json to report")
    flat = json.loads(results_path.read_text(encoding="utf-8"))
    preds = {
        s: predictions.read_csv(workdir / f"predictions_{s}.csv")
        for s in ("validation", "test")
        if (workdir / f"predictions_{s}.csv").is_file()
    }
    readers_md = _readers(config, workdir, preds)
    cams = _gradcam(workdir, preds.get("test"), gradcam_subjects)
    if not isinstance(cams, str):
        _cams_to_tensorboard(workdir, cams, flat.get("checkpoint_step"))
    sections = [
        _header(config, workdir, flat),
        _data_section(config, workdir, flat),
        _settings_section(config),
        _results_section(workdir, flat, config.eval),
        _readers_section(readers_md),
        _figures_section(workdir),
        _gradcam_section(cams),
        _checklist_section(config, workdir, flat),
    ]
    page = _page(f"ernjax run {workdir.name}", "\n".join(sections))
    path = workdir / REPORT
    atomic.write_text(path, page)
    logging.info("report: %s", path)
    return path


# ----------------------------------------------------------------------------- sections
def _header(config, workdir: Path, flat: Mapping) -> str:
    d = config.data
    cohort = d.cohort_dir or f"the embedded synthetic cohort (seed {d.synthetic.seed})"
    step = flat.get("checkpoint_step")
    step = "n/a" if step is None else int(step)
    when = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    return (
        f"<h1>{_e(config.model.name)} on {_e(d.kind)} ({_e('+'.join(d.channels))})</h1>"
        f"<p class='meta'>Run <code>{_e(str(workdir))}</code>; cohort <code>{_e(str(cohort))}"
        f"</code>; scored checkpoint: step {step} ({_e(config.train.select_checkpoint)}); "
        f"report written {when}. Positive class: <b>{_e(config.eval.positive_class)}</b>.</p>"
    )


def _data_section(config, workdir: Path, flat: Mapping) -> str:
    path = workdir / "data.json"
    if not path.is_file():
        return "<h2>Data</h2><p>No data.json: the run finished before runs recorded it.</p>"
    data = json.loads(path.read_text(encoding="utf-8"))
    names = data["class_names"]
    header = ["split", "subjects", *(f"{n} subjects" for n in names), "images"]
    body = []
    for split, c in data["splits"].items():
        row = [split, str(sum(c["subjects"])), *map(str, c["subjects"]), str(sum(c["images"]))]
        body.append(row)
    total = [sum(c["subjects"][k] for c in data["splits"].values()) for k in range(len(names))]
    body.append(["all", str(sum(total)), *map(str, total), ""])
    parts = ["<h2>Data</h2>", _table(header, body)]
    unit = "slices" if data["kind"] == "slices2d" else "volumes"
    parts.append(
        f"<p>Images are {unit}. The split is by patient"
        + (
            f", grouped by the labels.csv column <code>{_e(config.data.group_column)}</code>"
            if config.data.get("group_column")
            else ""
        )
        + "; it is written to <code>split.csv</code> (subject_id, group, split, fold) and can be "
        "given back as <code>--config.data.split.file</code>.</p>"
    )
    skipped = data.get("skipped") or flat.get("skipped") or []
    if skipped:
        rows = [[s.get("subject_id") or "cohort", s.get("file", ""), s["problem"]] for s in skipped]
        parts += [
            f"<h3>{len(skipped)} subject(s) skipped (on_error='skip'), in no split</h3>",
            _table(["subject", "file", "problem"], rows),
        ]
    else:
        parts.append("<p>No subject was skipped.</p>")
    return "\n".join(parts)


def _setting(config, key: str):
    node = config
    for part in key.split("."):
        if part not in node:
            return None
        node = node[part]
    return node.to_dict() if hasattr(node, "to_dict") else node


def _settings_section(config) -> str:
    parts = ["<h2>Settings</h2>"]
    for title, keys in SETTINGS.items():
        rows = [
            [f"config.{k}", _e(repr(v))] for k in keys if (v := _setting(config, k)) is not None
        ]
        parts += [f"<h3>{title}</h3>", _table(["setting", "value"], rows, escape=False)]
    parts.append(
        "<details><summary>The full config</summary><pre>"
        f"{_e(config.to_json(indent=2))}</pre></details>"
    )
    return "\n".join(parts)


def _results_section(workdir: Path, flat: Mapping, eval_config) -> str:
    results = {
        split: reporting.scored_levels(flat, split, eval_config)
        for split in ("validation", "test")
        if any(k.startswith(f"{split}.") for k in flat)
    }
    parts = ["<h2>Results</h2>"]
    if results:
        parts.append(markdown_to_html(reporting.format_table(results, fmt="markdown")))
    calibration = workdir / "calibration.md"
    if calibration.is_file():  # its own headings
        parts.append(markdown_to_html(calibration.read_text("utf-8")))
    return "\n".join(parts)


def _readers(config, workdir: Path, preds: Mapping) -> str:
    """The readers' Markdown of `config.eval.readers_csv`, or of an earlier report, or "".

    With the setting, readers.md and readers.json are written now and the subject ROC is redrawn
    with the readers on it; without it, the readers.md an earlier report left is shown.
    """
    path = config.eval.get("readers_csv", "")
    if not path:
        old = workdir / "readers.md"
        return old.read_text(encoding="utf-8") if old.is_file() else ""
    if "test" not in preds:
        logging.warning("report: no test split, so the readers are not compared")
        return "# Readers against the model\n\nNo test split: the readers are not compared.\n"
    test = preds["test"]
    scoring = ScoringPolicy.from_config(config.eval, test.class_names)
    cutoffs = scoring.cutoffs(preds.get("validation"))
    name = config.model.name
    result, markdown = readers.run(path, workdir, scoring, {name: test}, {name: cutoffs})
    points = readers.roc_points(result)
    scoring.plot_rocs({"test": test}, workdir / "roc_test", {"test": cutoffs}, readers=points)
    for warning in result["warnings"]:
        logging.warning("readers: %s", warning)
    logging.info("readers: %s", workdir / "readers.md")
    return markdown


def _readers_section(markdown: str) -> str:
    return markdown_to_html(markdown) if markdown else ""


def _figures_section(workdir: Path) -> str:
    parts = ["<h2>Figures</h2>", "<div class='figs'>"]
    with_readers = (workdir / "readers.json").is_file()
    for name, title in FIGURES:
        if with_readers and name == "roc_test_subject.png":
            title += ", the readers as points"
        if (workdir / name).is_file():
            parts.append(_figure(workdir / name, title))
    parts.append("</div>")
    return "\n".join(parts)


def _gradcam(workdir: Path, test, n: int) -> list[dict] | str:
    """Grad-CAM of up to `n` test subjects (one of each class first), via `inference.predict`.

    Returns the predict reports with their PNGs, or why there are none (a str).
    """
    if not n or test is None:
        if test is None:
            return "no test split"
        return "not drawn here (a multi-process run, or asked for none): python -m ernjax.report"
    from ernjax import inference

    label_of = dict(zip(test.subject_id, (int(v) for v in test.label), strict=False))
    classes = sorted(set(label_of.values()))
    firsts = [next(s for s, k in label_of.items() if k == c) for c in classes]
    chosen = (firsts + [s for s in label_of if s not in firsts])[:n]
    try:
        run = inference.load_run(workdir)
        if run.config.data.get("roi", "brain") == "centre":
            return "the run's ROI is a reader's lesion centre, which the report does not have"
        cohort = _cohort_folder(run.config, workdir)
        found = _bids_subjects(run.config, cohort)
        reports = []
        for k, sid in enumerate(chosen, 1):
            logging.info("report: Grad-CAM of test subject %s (%d of %d)...", sid, k, len(chosen))
            if found is None:
                subject = inference.make_subject(run, sid, {}, subject_dir=cohort / sid)
            else:  # a BIDS example is no one folder: its files as the records' build found them
                if sid not in found:
                    raise InputError(sid, cohort, "not in the BIDS cohort any more")
                subject = inference.make_subject(run, sid, found[sid].files, mask=found[sid].mask)
            out = workdir / GRADCAM_DIR / sid
            report = inference.predict(run, subject, out, cam=True, max_pngs=2)
            report["label"] = test.class_names[label_of[sid]]
            report["pngs"] = sorted(out.glob("*.png"))[:2]
            reports.append(report)
        return reports
    except (InputError, OSError, ValueError) as e:
        logging.warning("report: no Grad-CAM (%s)", e)
        return f"not drawn: {e}"


def _cams_to_tensorboard(workdir: Path, cams: list[dict], step) -> None:
    """The Grad-CAM PNGs in TensorBoard's Images tab too, beside the run's other figures."""
    from ernjax.train import logs  # tensorboardX, only when there is something to write

    writer = logs.Writer(workdir / "tensorboard")
    try:
        for r in cams:
            for png in r["pngs"]:
                writer.image(f"gradcam/{r['subject_id']}/{png.stem}", png, int(step or 0))
    finally:
        writer.close()


def _cohort_folder(config, workdir: Path) -> Path:
    return Path(config.data.cohort_dir) if config.data.cohort_dir else workdir / "synthetic_cohort"


def _bids_subjects(config, cohort: Path) -> dict | None:
    """subject_id -> Subject of a BIDS cohort (config.data.layout); None for the glob layout."""
    from ernjax.data import layouts
    from ernjax.data.spec import SampleSpec

    if not layouts.is_bids(config.data):
        return None
    found = layouts.find(cohort, SampleSpec.from_config(config.data), on_error="skip")
    return {s.subject_id: s for s in found.subjects}


def _gradcam_section(cams) -> str:
    parts = ["<h2>Grad-CAM</h2>"]
    if isinstance(cams, str):
        return "\n".join(parts + [f"<p>Grad-CAM: {_e(cams)}.</p>"])
    parts.append(
        "<p>Where the scored model's evidence for its decision lies, for test subjects of each "
        "class, as <code>python -m ernjax.predict</code> draws it (the same model, cut-offs and "
        "ROI). A map is a hint where the model looked, not proof of what it learned.</p>"
    )
    parts.append("<div class='figs'>")
    for r in cams:
        probs = ", ".join(f"P({k}) {v:.2f}" for k, v in r["probabilities"].items())
        caption = f"{r['subject_id']}: truth {r['label']}, decision {r['decision']} ({probs})"
        parts += [_figure(p, caption) for p in r["pngs"]]
    parts.append("</div>")
    return "\n".join(parts)


def checklist(config, workdir: Path, flat: Mapping) -> list[tuple[str, str, str]]:
    """(topic, "yes" | "partly" | "no", where or what is missing) for the report's checklist.

    The topics are those of CLAIM 2024 (Tejani et al., Radiol Artif Intell 6:e240300) and
    TRIPOD+AI 2024 (Collins et al., BMJ 385:e078378) that a run's outputs can answer; the
    others (study design, eligibility, reference standard, readers, clinical setting) are the
    researcher's to write.
    """
    has = {name: (workdir / name).is_file() for name in ("calibration.md", "split.csv")}
    test = "test.subject.auc" in flat
    d, t = config.data, config.train
    skipped = len(flat.get("skipped") or [])
    items = [
        ("Data source and cohort", "yes", f"cohort: {d.cohort_dir or 'embedded synthetic'}"),
        (
            "Participants excluded, with reasons",
            "yes",
            f"{skipped} skipped, listed under Data" if skipped else "none skipped",
        ),
        (
            "Data partitions by patient, sizes per class",
            "yes" if has["split.csv"] else "partly",
            "Data table; split.csv",
        ),
        ("Preprocessing and input (ROI, normalization, shape)", "yes", "Settings: Data"),
        ("Model architecture and initialization", "yes", f"{config.model.name}; Settings: Model"),
        (
            "Training details (optimizer, schedule, epochs, class imbalance)",
            "yes",
            f"class weights from training {t.get('class_weight_counts', 'images')}; sampling "
            f"{t.sampling}",
        ),
        (
            "Model selection on validation data, not test",
            "yes",
            f"checkpoint: {t.select_checkpoint} by {t.select_metric} on validation; cut-offs "
            "from validation",
        ),
        (
            "Discrimination with confidence intervals at the patient level",
            "yes" if test else "partly",
            "Results: subject rows first, intervals over patients",
        ),
        (
            "Calibration (Brier, intercept, slope, reliability diagram)",
            "yes" if has["calibration.md"] else "no",
            "Calibration; Figures",
        ),
        (
            "Clinical utility (decision curve, net benefit)",
            "yes" if (workdir / "decision_curve_test.png").is_file() else "no",
            "Figures: decision curve",
        ),
        (
            "Explainability (saliency maps)",
            "yes" if (workdir / GRADCAM_DIR).is_dir() else "no",
            "Grad-CAM",
        ),
        (
            "Uncertainty from small samples stated",
            "yes",
            "Results notes (small samples, degenerate intervals)",
        ),
        (
            "Comparison with clinicians (readers) on the same patients",
            "yes" if (workdir / "readers.json").is_file() else "no",
            "Readers"
            if (workdir / "readers.json").is_file()
            else "python -m ernjax.report --readers=FILE (or --config.eval.readers_csv=FILE)",
        ),
        (
            "Comparison with a simple baseline on the same patients",
            "no",
            "run python -m ernjax.compare --models=radiomics,<model>",
        ),
        (
            "Training variability (several seeds)",
            "no",
            "run python -m ernjax.repeat --seeds=0,1,2",
        ),
        ("External validation on another cohort", "no", "run python -m ernjax.external"),
        (
            "Subgroup performance (site, scanner; fairness)",
            "no",
            "python -m ernjax.external --group_by=<labels.csv column>",
        ),
        ("Code and configuration", "yes", "Settings: the full config; ernjax version in setup.py"),
    ]
    return items


def _checklist_section(config, workdir: Path, flat: Mapping) -> str:
    rows = [
        [_e(topic), f"<span class='{status}'>{status}</span>", _e(where)]
        for topic, status, where in checklist(config, workdir, flat)
    ]
    return "\n".join(
        [
            "<h2>Reporting checklist</h2>",
            "<p>Topics of CLAIM 2024 and TRIPOD+AI 2024 that this run's outputs answer (topics, "
            "not item numbers). Study design, eligibility, the reference standard and the "
            "clinical setting are the researcher's to write.</p>",
            _table(["topic", "covered", "where / how"], rows, escape=False),
        ]
    )


# ----------------------------------------------------------------------------- HTML
def _e(text) -> str:
    return html.escape(str(text))


def _table(header: Sequence[str], body: Sequence[Sequence[str]], *, escape: bool = True) -> str:
    cell = _e if escape else str
    head = "".join(f"<th>{cell(h)}</th>" for h in header)
    rows = "".join("<tr>" + "".join(f"<td>{cell(c)}</td>" for c in r) + "</tr>" for r in body)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>"


def _figure(path: Path, caption: str) -> str:
    data = base64.b64encode(Path(path).read_bytes()).decode("ascii")
    wide = " class='wide'" if Path(path).name in WIDE else ""
    return (
        f"<figure{wide}><img alt='{_e(caption)}' src='data:image/png;base64,{data}'>"
        f"<figcaption>{_e(caption)}</figcaption></figure>"
    )


def markdown_to_html(text: str) -> str:
    """The Markdown the tables are written in (pipe tables, #-headings, "- " lists, paragraphs)."""
    out, block = [], []

    def flush():
        if block:
            out.append(_md_block(block))
            block.clear()

    for line in text.splitlines():
        if not line.strip():
            flush()
        elif block and _kind(line) != _kind(block[-1]):
            flush()
            block.append(line)
        else:
            block.append(line)
    flush()
    return "\n".join(out)


def _kind(line: str) -> str:
    s = line.lstrip()
    if s.startswith("|"):
        return "table"
    if s.startswith("#"):
        return "heading"
    if s.startswith("- "):
        return "list"
    return "text"


def _md_block(lines: list[str]) -> str:
    kind = _kind(lines[0])
    if kind == "table":
        rows = [[c.strip() for c in r.strip().strip("|").split("|")] for r in lines]
        rows = [r for r in rows if not all(set(c) <= set("-: ") for c in r)]
        return _table(rows[0], rows[1:])
    if kind == "heading":  # "#" is the page's h2, "##" its h3
        return "\n".join(
            f"<h{min(len(r) - len(r.lstrip('#')) + 1, 4)}>{_e(r.lstrip('#').strip())}"
            f"</h{min(len(r) - len(r.lstrip('#')) + 1, 4)}>"
            for r in lines
        )
    if kind == "list":
        items = "".join(f"<li>{_e(r.strip()[2:])}</li>" for r in lines)
        return f"<ul>{items}</ul>"
    return f"<p>{_e(' '.join(r.strip() for r in lines))}</p>"


STYLE = """
body { font-family: system-ui, sans-serif; max-width: 1100px; margin: 2em auto; padding: 0 1em;
       color: #222; line-height: 1.45; }
h1 { font-size: 1.5em; } h2 { border-bottom: 1px solid #ccc; margin-top: 2em; }
table { border-collapse: collapse; margin: 0.8em 0; font-size: 0.88em; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: left; vertical-align: top; }
th { background: #f2f2f2; } tbody tr:nth-child(even) { background: #fafafa; }
.meta { color: #555; } code, pre { background: #f6f6f6; }
pre { padding: 0.8em; overflow-x: auto; font-size: 0.8em; }
.figs { display: flex; flex-wrap: wrap; gap: 1em; }
figure { margin: 0; max-width: 520px; } figure.wide { max-width: 100%; }
figure img { max-width: 100%; border: 1px solid #ddd; }
figcaption { font-size: 0.85em; color: #555; }
.yes { color: #1a7f37; font-weight: bold; } .partly { color: #9a6700; font-weight: bold; }
.no { color: #b42318; font-weight: bold; }
"""


def _page(title: str, body: str) -> str:
    return (
        "<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'>"
        f"<title>{_e(title)}</title><style>{STYLE}</style></head>\n<body>\n{body}\n</body></html>\n"
    )
