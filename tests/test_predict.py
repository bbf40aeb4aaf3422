"""Predict command: a tiny trained run classifies a patient exactly as its test evaluation did."""

import base64
import csv
import dataclasses
import importlib.util
import json
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from ernjax import inference
from ernjax.errors import InputError
from ernjax.evaluate import calibration, predictions, run_report
from ernjax.evaluate.scoring import ScoringPolicy
from ernjax.train import logs, loop, outputs

REPO = Path(__file__).resolve().parents[1]


def _config(path: str):
    spec = importlib.util.spec_from_file_location("cfg", REPO / path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.get_config("tiny")


@pytest.fixture(scope="module")
def run_2d(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("ern_tiny")
    loop.train_and_evaluate(_config("configs/ern.py"), workdir)
    return workdir


def _test_subject(workdir: Path) -> str:
    return predictions.read_csv(workdir / "predictions_test.csv").subject_id[0]


def test_predict_matches_the_test_evaluation(run_2d, tmp_path):
    run = inference.load_run(run_2d)
    sid = _test_subject(run_2d)
    subject = inference.make_subject(run, sid, {}, subject_dir=run_2d / "synthetic_cohort" / sid)
    report = inference.predict(run, subject, tmp_path / "out", max_pngs=3)

    test = predictions.read_csv(run_2d / "predictions_test.csv")
    rows = [i for i, s in enumerate(test.subject_id) if s == sid]
    # predictions_test.csv names each slice where predict finds it (records are not in slice
    # order): slice by slice, the same probability.
    by_slice = dict(zip(test.slice[rows].tolist(), test.probs[rows, 1], strict=True))
    assert sorted(by_slice) == [s["slice"] for s in report["slices"]]
    recurrence = [s["recurrence"] for s in report["slices"]]
    np.testing.assert_allclose(
        recurrence, [by_slice[s["slice"]] for s in report["slices"]], atol=2e-5
    )
    assert report["n_images"] == len(rows)
    assert sum(report["probabilities"].values()) == pytest.approx(1.0)
    assert report["decision"] in ("necrosis", "recurrence")
    # tune_threshold is off: the cut-off is the fixed 0.5, not one chosen on validation.
    assert report["threshold"] == 0.5 and report["threshold_source"] == "default"
    assert len(report["gradcam"]) == 3
    for name in report["gradcam"]:
        assert (tmp_path / "out" / name).read_bytes()[:4] == b"\x89PNG"
    saved = (tmp_path / "out" / "report.json").read_text()
    assert json.loads(saved)["subject_id"] == sid
    assert str(tmp_path) not in saved and "nii" not in saved  # IDs only, no file paths


def test_predict_from_files_refuses_a_missing_modality(run_2d):
    run = inference.load_run(run_2d)
    sid = _test_subject(run_2d)
    folder = run_2d / "synthetic_cohort" / sid
    files = {"t1": folder / f"{sid}_t1.nii.gz", "t1c": folder / f"{sid}_t1c.nii.gz"}
    with pytest.raises(InputError, match=r"missing \['t2'\]: pass --t2=FILE"):
        inference.make_subject(run, "P1", files)


def test_predict_refuses_a_4d_series(run_2d, tmp_path):
    run = inference.load_run(run_2d)
    sid = _test_subject(run_2d)
    folder = run_2d / "synthetic_cohort" / sid
    files = {m: folder / f"{sid}_{m}.nii.gz" for m in ("t1", "t2", "t1c")}
    img = nib.load(files["t2"])
    series = np.stack([np.asarray(img.dataobj)] * 2, -1)
    files["t2"] = tmp_path / "t2_dwi.nii.gz"
    nib.save(nib.Nifti1Image(series, img.affine), files["t2"])
    subject = inference.make_subject(run, "P1", files)
    with pytest.raises(InputError, match=r"subject P1, file .*t2_dwi.nii.gz: expected a 3D volume"):
        inference.predict(run, subject, tmp_path / "out")


def test_predict_without_a_run_says_so(tmp_path):
    with pytest.raises(InputError, match="no checkpoint: train the model first"):
        inference.load_run(tmp_path)


def test_predict_3d_writes_the_map_in_the_scan_space(tmp_path):
    workdir = tmp_path / "run"
    loop.train_and_evaluate(_config("configs/resnet3d.py"), workdir)
    run = inference.load_run(workdir)
    sid = _test_subject(workdir)
    folder = workdir / "synthetic_cohort" / sid
    subject = inference.make_subject(run, sid, {}, subject_dir=folder)
    report = inference.predict(run, subject, tmp_path / "out")
    test = predictions.read_csv(workdir / "predictions_test.csv")
    row = test.subject_id.index(sid)
    assert report["probabilities"]["necrosis"] == pytest.approx(test.probs[row, 0], abs=2e-5)
    cam = nib.load(tmp_path / "out" / "gradcam.nii.gz")
    ref = nib.load(folder / f"{sid}_t1c.nii.gz")
    assert cam.shape == ref.shape
    np.testing.assert_allclose(cam.affine, ref.affine, atol=1e-4)


def test_predict_a_raw_clinical_case_through_the_runs_preprocessing(run_2d, shared_data, tmp_path):
    """tcga_fg6692_raw: 4 series on their own 5.5 mm grids, skull on, long scanner names."""
    raw = shared_data / "tcga_fg6692_raw" / "TCGA-FG-6692"
    if not raw.is_dir():
        pytest.skip(f"{raw} not found")
    run = inference.load_run(run_2d)
    # As if the run had been trained on a cohort made by `python -m ernjax.preprocess`.
    run.config.data.preprocess.steps = ("reorient", "n4", "coregister", "mni", "skullstrip")
    files = {m: next(raw.glob(f"*_{m}.nii.gz")) for m in ("t1", "t2", "t1c")}
    subject = inference.make_subject(run, "TCGA-FG-6692", files)
    report = inference.predict(run, subject, tmp_path / "out", max_pngs=2)
    # No mask: every brain slice of the MNI-registered volume is classified.
    assert report["n_images"] >= 10
    assert sum(report["probabilities"].values()) == pytest.approx(1.0)
    assert report["decision"] in ("necrosis", "recurrence")
    assert len(report["gradcam"]) == 2
    saved = (tmp_path / "out" / "report.json").read_text()
    assert "TCGA-FG-6692" in saved and "OtherEXample" not in saved and str(raw) not in saved


def test_predict_refuses_a_mask_from_another_grid(run_2d, tmp_path):
    run = inference.load_run(run_2d)
    sid = _test_subject(run_2d)
    folder = run_2d / "synthetic_cohort" / sid
    files = {m: folder / f"{sid}_{m}.nii.gz" for m in ("t1", "t2", "t1c")}
    img = nib.load(folder / f"{sid}_mask.nii.gz")
    bad = tmp_path / "lesion.nii.gz"  # the case: half the shape under the image's header
    nib.save(nib.Nifti1Image(np.asarray(img.dataobj)[::2, ::2, ::2], img.affine), bad)
    subject = inference.make_subject(run, "P1", files, mask=bad)
    with pytest.raises(InputError, match=r"subject P1, file .*lesion.nii.gz: the lesion mask has"):
        inference.predict(run, subject, tmp_path / "out")
    assert not (tmp_path / "out" / "report.json").exists()


def _predict_command(*args: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "ernjax.predict", *args]
    return subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300, check=False)


def test_command_line_takes_any_modality_of_the_run(run_2d, tmp_path):
    # --t1 as documented; t1c and t2 through --modality=NAME=FILE, the flag for any name.
    sid = _test_subject(run_2d)
    folder = run_2d / "synthetic_cohort" / sid
    out = tmp_path / "out"
    proc = _predict_command(
        f"--workdir={run_2d}",
        f"--t1={folder / f'{sid}_t1.nii.gz'}",
        f"--modality=t1c={folder / f'{sid}_t1c.nii.gz'}",
        f"--modality=t2={folder / f'{sid}_t2.nii.gz'}",
        f"--mask={folder / f'{sid}_mask.nii.gz'}",
        f"--subject_id={sid}",
        f"--out={out}",
        "--nogradcam",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads((out / "report.json").read_text())
    test = predictions.read_csv(run_2d / "predictions_test.csv")
    rows = [i for i, s in enumerate(test.subject_id) if s == sid]
    recurrence = [s["recurrence"] for s in report["slices"]]
    np.testing.assert_allclose(recurrence, test.probs[rows, 1], atol=2e-5)
    assert f"{sid}: P(necrosis) = " in proc.stdout

    bad = _predict_command(f"--workdir={run_2d}", "--modality=t2")
    assert bad.returncode == 1 and "Traceback" not in bad.stderr, bad.stderr[-3000:]
    assert bad.stderr.splitlines()[-1] == (
        "ernjax: subject new_patient: --modality=t2: expected NAME=FILE"
    )


def test_the_run_writes_calibration_beside_its_results(run_2d):
    """results.json, calibration.md and the test split's figures (ernjax.evaluate.calibration)."""
    flat = json.loads((run_2d / "results.json").read_text())
    run = inference.load_run(run_2d)
    test = predictions.read_csv(run_2d / "predictions_test.csv")
    y, p = run.scoring.calibration_data(test, "subject")  # mean slice probability per patient
    assert flat["test.subject.brier"] == pytest.approx(calibration.brier_score(y, p), abs=1e-5)
    assert flat["test.subject.brier_ci_low"] <= flat["test.subject.brier"]
    assert "test.image.calibration_slope" in flat and "test.subject.calibration_intercept" in flat
    assert isinstance(flat["test.subject.calibration_notes"], list)
    text = (run_2d / "calibration.md").read_text()
    assert "| test subject |" in text and "Decision curve, test split, subject-wise" in text
    assert (run_2d / "decision_curve_test.csv").read_text().startswith("threshold,")
    for name in ("reliability_test.png", "decision_curve_test.png"):
        assert (run_2d / name).read_bytes()[:4] == b"\x89PNG"


def test_predict_applies_the_validation_recalibration(run_2d, tmp_path):
    """config.eval.recalibrate=logistic: predict recalibrates as the run's test scoring did.

    The recalibration is fitted on the run's validation predictions; predict reports and decides
    on the recalibrated probabilities.
    """
    run = inference.load_run(run_2d)
    e = run.config.eval.copy_and_resolve_references()
    e.recalibrate = "logistic"
    scoring = ScoringPolicy.from_config(e, run.class_names)
    cutoffs = scoring.cutoffs(predictions.read_csv(run_2d / "predictions_validation.csv"))
    run = dataclasses.replace(run, scoring=scoring, cutoffs=cutoffs)
    sid = _test_subject(run_2d)
    subject = inference.make_subject(run, sid, {}, subject_dir=run_2d / "synthetic_cohort" / sid)
    report = inference.predict(run, subject, tmp_path / "out", cam=False)
    test = predictions.read_csv(run_2d / "predictions_test.csv")
    rows = [i for i, s in enumerate(test.subject_id) if s == sid]
    expected = scoring.recalibrated_probs(test.probs[rows], cutoffs)
    k = run.class_names.index("recurrence")
    shown = [s["recurrence"] for s in report["slices"]]
    np.testing.assert_allclose(shown, expected[:, k], atol=1e-4)
    assert report["recalibration"]["slope"] == cutoffs["recalibration"].slope
    decided = scoring.decide(test.probs[rows], cutoffs)
    assert report["score"] == pytest.approx(decided["score"], abs=1e-4)
    assert report["decision"] == decided["decision"]


# ----------------------------------------------------------------------------- the run's report
class _Page(HTMLParser):
    """The headings, image sources and table cells of an HTML page."""

    def __init__(self):
        super().__init__()
        self.headings, self.images, self.cells, self._tag = [], [], [], None

    def handle_starttag(self, tag, attrs):
        self._tag = tag
        if tag == "img":
            self.images.append(dict(attrs)["src"])

    def handle_data(self, data):
        if self._tag in ("h1", "h2") and data.strip():
            self.headings.append(data.strip())
        if self._tag == "td":
            self.cells.append(data.strip())


def test_report_shows_the_run_on_one_page(run_2d):
    config = inference.load_run(run_2d).config
    path = run_report.write(config, run_2d, gradcam_subjects=2)
    page = _Page()
    page.feed(path.read_text(encoding="utf-8"))
    for section in ("Data", "Settings", "Results", "Calibration", "Figures", "Grad-CAM"):
        assert section in page.headings
    assert page.headings[-1] == "Reporting checklist"
    # Self-contained: every picture embedded, and each a PNG.
    assert len(page.images) >= 5
    for src in page.images:
        head, data = src.split(",", 1)
        assert head == "data:image/png;base64"
        assert base64.b64decode(data)[:8] == b"\x89PNG\r\n\x1a\n"
    # The data table counts what split.csv and the predictions say.
    rows = list(csv.DictReader((run_2d / "split.csv").open()))
    i = page.cells.index("test")
    assert page.cells[i + 1] == str(sum(r["split"] == "test" for r in rows))
    test = predictions.read_csv(run_2d / "predictions_test.csv")
    assert page.cells[i + 4] == str(len(test))  # images
    # The results table prints results.json's test subject AUC.
    flat = json.loads((run_2d / "results.json").read_text())
    auc = f"{flat['test.subject.auc']:.3f}"
    assert any(c.startswith(auc) for c in page.cells[page.cells.index("test subject") :][:8])
    # Grad-CAM of one test subject of each class, as predict reports it.
    cams = sorted((run_2d / run_report.GRADCAM_DIR).iterdir())
    labels = dict(zip(test.subject_id, test.label, strict=False))
    assert {int(labels[d.name]) for d in cams} == {0, 1}
    for d in cams:
        report = json.loads((d / "report.json").read_text())
        assert report["subject_id"] == d.name and list(d.glob("*.png"))
    # Subject IDs only: nothing of labels.csv but the ID and the label reaches the page.
    assert "syn-" in path.read_text() and "lesion_slices" not in path.read_text()


def test_report_refuses_an_unfinished_run(tmp_path):
    with pytest.raises(InputError, match="no results.json"):
        run_report.write(_config("configs/ern.py"), tmp_path)


def test_markdown_tables_become_html_tables():
    text = "# Title\n\n| a | b |\n|---|---|\n| 1 | x<y |\n\nSome text\nmore.\n\n- one\n- two\n"
    assert run_report.markdown_to_html(text) == (
        "<h2>Title</h2>\n"
        "<table><thead><tr><th>a</th><th>b</th></tr></thead>"
        "<tbody><tr><td>1</td><td>x&lt;y</td></tr></tbody></table>\n"
        "<p>Some text more.</p>\n<ul><li>one</li><li>two</li></ul>"
    )


def test_scalars_read_back_as_tensorboardx_wrote_them(tmp_path):
    from tensorboardX import SummaryWriter

    w = SummaryWriter(str(tmp_path))
    for step in range(1, 4):
        w.add_scalar("train/loss", 1.0 / step, step)
    w.add_scalar("validation/subject.auc", 0.75, 3)
    w.add_text("config", "not a scalar", 0)
    w.close()
    got = logs.read_scalars(tmp_path)
    assert got["train/loss"] == [(1, 1.0), (2, 0.5), (3, pytest.approx(1 / 3))]
    assert got["validation/subject.auc"] == [(3, 0.75)] and "config" not in got
    # A file cut short (a killed run) ends at its last whole event.
    events = next(tmp_path.glob("events.out.tfevents.*"))
    events.write_bytes(events.read_bytes()[:-5])
    assert logs.read_scalars(tmp_path)["train/loss"][:2] == [(1, 1.0), (2, 0.5)]
    png = outputs.plot_training_curves(got, tmp_path / "curves.png", "image.auc")
    assert png.read_bytes()[:4] == b"\x89PNG"


@pytest.mark.parametrize(
    "method, tune, source",
    [
        ("mean", False, "default"),
        ("mean", True, "validation"),
        ("predictive_index", False, "validation"),
        ("majority", True, "default"),
    ],
)
def test_the_cutoff_source_says_whether_validation_chose_it(method, tune, source):
    c = _config("configs/ern.py").eval
    c.subject_method, c.tune_threshold = method, tune
    scoring = ScoringPolicy.from_config(c, ("necrosis", "recurrence"))
    assert scoring.subject_cutoff_source({"threshold": 0.5, "subject_threshold": 0.5}) == source
    assert scoring.subject_cutoff_source({}) == "default"


def test_a_run_leaves_its_tables_config_and_figures(run_2d):
    config = inference.load_run(run_2d).config
    assert json.loads((run_2d / "config.json").read_text()) == json.loads(config.to_json())
    table = (run_2d / "results.md").read_text()
    assert table.index("test subject") < table.index("test image") and "Notes:" in table
    rows = list(csv.DictReader((run_2d / "results.csv").open()))
    flat = json.loads((run_2d / "results.json").read_text())
    test_subject = next(r for r in rows if r["row"] == "test subject")
    assert float(test_subject["sensitivity"]) == pytest.approx(flat["test.subject.sensitivity"])
    for name in (
        "roc_test_subject.png",
        "roc_test_image.png",
        "confusion_test.png",
        "training_curves.png",
        "inputs_validation.png",
    ):
        assert (run_2d / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name
    # Every figure is in TensorBoard's Images tab too.
    tags = {
        v.tag
        for event in logs.read_events(run_2d / "tensorboard")
        for v in event.summary.value
        if v.HasField("image")
    }
    expected = {"figures/confusion_test", "figures/roc_test_subject", "figures/reliability_test"}
    assert expected <= tags
    if (run_2d / run_report.GRADCAM_DIR).is_dir():  # the report, when it ran first, adds its maps
        assert any(t.startswith("gradcam/") for t in tags)
    # The validation curve has every epoch's point (the events were flushed before reading).
    scalars = logs.read_scalars(run_2d / "tensorboard")
    assert len(scalars["validation/loss"]) == config.train.num_epochs


def test_report_adds_readers_given_after_the_run(run_2d, tmp_path):
    # `python -m ernjax.report --readers=FILE` sets the saved config's eval.readers_csv.
    test = predictions.read_csv(run_2d / "predictions_test.csv")
    truth = dict(zip(test.subject_id, (int(v) for v in test.label), strict=False))
    subjects = sorted(truth)
    rows = ["reader,subject_id,decision"]
    rows += [f"R1,{s},{test.class_names[truth[s]]}" for s in subjects]  # always right
    rows += [f"R2,{s},1" for s in subjects[1:]] + ["R2,not-a-test-subject,0"]
    path = tmp_path / "readers.csv"
    path.write_text("\n".join(rows) + "\n")
    config = inference.load_run(run_2d).config
    with config.unlocked():
        config.eval.readers_csv = str(path)
    before = (run_2d / "roc_test_subject.png").read_bytes()
    page = run_report.write(config, run_2d, gradcam_subjects=0).read_text(encoding="utf-8")
    assert "<h2>Readers against the model</h2>" in page
    assert "ROC, subject-wise (test), the readers as points" in page
    assert (run_2d / "roc_test_subject.png").read_bytes() != before
    found = json.loads((run_2d / "readers.json").read_text())
    assert found["readers"]["R1"]["accuracy"] == 1.0
    r2 = found["readers"]["R2"]
    assert r2["specificity"] == 0.0 and r2["missing"] == subjects[:1]
    assert r2["extra"] == ["not-a-test-subject"]
    # The model's row is the results' test subject row (the validation cut-off's decisions).
    flat = json.loads((run_2d / "results.json").read_text())
    model = found["models"][config.model.name]
    for k in ("sensitivity", "specificity", "accuracy"):
        assert model[k] == pytest.approx(flat[f"test.subject.{k}"], nan_ok=True)
    # Rewritten without the setting, the page keeps the readers an earlier report found.
    config = inference.load_run(run_2d).config
    assert (
        "Readers against the model"
        in run_report.write(config, run_2d, gradcam_subjects=0).read_text()
    )
