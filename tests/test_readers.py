"""Readers against the model (Gao 2020 Table 5, Fig. 4b): the file, the metrics and the tests.

The expected numbers are worked by hand from the small CSV below (counts, proportions, exact
binomial tails), and checked against independent references: statsmodels' Wilson interval and
exact McNemar test, scipy's t tests, sklearn's AUC, and Gao 2020's own Table 5 P values.
"""

import json
import math

import numpy as np
import pytest
from scipy import stats as sps
from sklearn import metrics as skm
from statsmodels.stats.contingency_tables import mcnemar
from statsmodels.stats.proportion import proportion_confint
from test_crossval_compare import TEST_SUBJECTS, FakeTrain
from test_crossval_compare import _config as compare_config

from ernjax.errors import InputError
from ernjax.evaluate import readers, reporting
from ernjax.evaluate.predictions import Predictions
from ernjax.evaluate.scoring import ScoringPolicy
from ernjax.studies import compare
from ernjax.train import loop

CLASSES = ("necrosis", "recurrence")
POSITIVE = 1
# Truth: s1-s5 recurrence (positive), s6-s8 necrosis.
TRUTH = {f"s{i}": i <= 5 for i in range(1, 9)}
# The model calls s1-s4 and s8 recurrence: TP 4, FN 1 (s5), TN 2, FP 1 (s8).
MODEL = {f"s{i}": i <= 4 or i == 8 for i in range(1, 9)}
# Reader A (class names): TP 4 (s1 s2 s3 s5), FN s4, TN 2 (s7 s8), FP s6.
# Reader B (1/0): TP 2 (s1 s2), FN 3, TN 1 (s8), FP 2 (s6 s7).
# Reader C: no s8, and x9 is not a test subject: TP 5, TN 1 (s7), FP 1 (s6), 7 subjects.
READERS_CSV = """reader,subject_id,decision,confidence
A,s1,recurrence,5
A,s2,Recurrence,4
A,s3,recurrence,2
A,s4,necrosis,3
A,s5,recurrence,1
A,s6,recurrence,1
A,s7,necrosis,4
A,s8,necrosis,2
B,s1,1,3
B,s2,1,3
B,s3,0,3
B,s4,0,3
B,s5,0,3
B,s6,1,3
B,s7,1,3
B,s8,0,3

C,s1,recurrence,1
C,s2,recurrence,1
C,s3,recurrence,1
C,s4,recurrence,1
C,s5,recurrence,1
C,s6,recurrence,1
C,s7,necrosis,1
C,x9,recurrence,1
"""


def _model() -> readers.SubjectCalls:
    subjects = sorted(TRUTH)
    return readers.SubjectCalls(
        subjects,
        np.array([TRUTH[s] for s in subjects]),
        np.array([MODEL[s] for s in subjects]),
    )


@pytest.fixture
def readers_csv(tmp_path):
    path = tmp_path / "readers.csv"
    path.write_text(READERS_CSV)
    return path


def test_reader_metrics_and_tests_match_hand_computed_values(readers_csv):
    decisions = readers.read_csv(readers_csv, CLASSES, POSITIVE)
    assert decisions.readers == ("A", "B", "C")
    assert decisions.calls["B"]["s1"] and not decisions.calls["B"]["s3"]  # 1 / 0
    assert decisions.calls["A"]["s2"]  # a class name in any case
    r = readers.compare(decisions, {"ern": _model()})

    model = r["models"]["ern"]
    assert (model["tp"], model["fn"], model["tn"], model["fp"]) == (4, 1, 2, 1)
    assert model["sensitivity"] == 0.8 and model["specificity"] == pytest.approx(2 / 3)
    a, b, c = (r["readers"][k] for k in "ABC")
    assert (a["tp"], a["fn"], a["tn"], a["fp"]) == (4, 1, 2, 1)
    assert (b["tp"], b["fn"], b["tn"], b["fp"]) == (2, 3, 1, 2)
    assert (c["tp"], c["fn"], c["tn"], c["fp"]) == (5, 0, 1, 1)
    assert b["sensitivity"] == 0.4 and b["specificity"] == pytest.approx(1 / 3)
    assert b["accuracy"] == 3 / 8 and c["accuracy"] == pytest.approx(6 / 7)
    # Wilson intervals (config.eval.ci_method), as statsmodels computes them.
    np.testing.assert_allclose(b["sensitivity_ci"], proportion_confint(2, 5, method="wilson"))
    np.testing.assert_allclose(c["accuracy_ci"], proportion_confint(6, 7, method="wilson"))
    # C's subjects differ from the test split: both ways, named.
    assert c["subjects"] == 7 and c["missing"] == ["s8"] and c["extra"] == ["x9"]
    assert len(r["warnings"]) == 2
    assert "reader C did not decide 1 of the 8 test subjects (s8)" in r["warnings"][0]
    assert "x9" in r["warnings"][1] and "not in the test split" in r["warnings"][1]

    # The readers' mean: sensitivity (0.8 + 0.4 + 1) / 3, SD from the squared deviations
    # (1/15)^2 + (1/3)^2 + (4/15)^2 = 0.18667 over 2, t interval with 2 df.
    sens = r["mean"]["sensitivity"]
    assert sens["mean"] == pytest.approx(11 / 15) and sens["n"] == 3
    assert sens["sd"] == pytest.approx(math.sqrt(0.28 / 1.5 / 2))
    half = sps.t.ppf(0.975, 2) * sens["sd"] / math.sqrt(3)
    assert 11 / 15 + half > 1 and 11 / 15 - half < 0  # three readers: clipped to [0, 1]
    assert sens["ci"] == [0.0, 1.0]
    spec = r["mean"]["specificity"]  # (2/3 + 1/3 + 1/2) / 3
    half = sps.t.ppf(0.975, 2) * spec["sd"] / math.sqrt(3)
    assert spec["mean"] == pytest.approx(0.5) and spec["ci"] == pytest.approx(
        [0.5 - half, 0.5 + half]
    )

    # McNemar, exact. Accuracy, B against the model: the model alone right on s3 s4 s6 s7 (4),
    # B alone on s8 (1): p = 2 P(X <= 1 | 5, 1/2) = 2 * 6/32.
    mc = r["mcnemar"]["ern"]
    assert (mc["B"]["accuracy"]["model_only"], mc["B"]["accuracy"]["reader_only"]) == (4, 1)
    assert mc["B"]["accuracy"]["p"] == pytest.approx(12 / 32)
    table = [[mc["B"]["accuracy"]["both"], 4], [1, mc["B"]["accuracy"]["neither"]]]
    assert mc["B"]["accuracy"]["p"] == pytest.approx(mcnemar(table, exact=True).pvalue)
    # Sensitivity pairs the 5 positives (model alone s3 s4; s5 both wrong): 2 P(X <= 0 | 2).
    assert mc["B"]["sensitivity"]["n"] == 5 and mc["B"]["sensitivity"]["p"] == 0.5
    # Specificity, 3 negatives: model alone s6 s7, B alone s8: 2 P(X <= 1 | 3) = 1.
    assert mc["B"]["specificity"]["p"] == 1.0
    # A: 2 against 2 discordant subjects; C on its 7 shared subjects: s6 against s5.
    assert mc["A"]["accuracy"]["p"] == 1.0
    assert mc["C"]["accuracy"]["n"] == 7 and mc["C"]["accuracy"]["p"] == 1.0
    # Holm over the 3 readers: 0.375 * 3 is capped at 1.
    assert [mc[k]["accuracy"]["p_holm"] for k in "ABC"] == [1.0, 1.0, 1.0]

    # Gao's t test, one model: the one-sample t test of the readers against the model's value
    # (scipy's statistic is readers minus model; ours model minus readers).
    ref = sps.ttest_1samp([0.8, 0.4, 1.0], 0.8)
    t = r["ttests"]["ern"]["sensitivity"]
    assert t["t"] == pytest.approx(-ref.statistic) and t["p"] == pytest.approx(ref.pvalue)
    assert t["t"] == pytest.approx((0.8 - 11 / 15) / (sens["sd"] / math.sqrt(3)))
    assert t["df"] == pytest.approx(2) and "ttests_models" not in r

    # Confidence ranks each reader's subjects: the decision signed by it, as sklearn's AUC.
    conf = {"s1": 5, "s2": 4, "s3": 2, "s4": -3, "s5": 1, "s6": 1, "s7": -4, "s8": -2}
    y = [TRUTH[s] for s in sorted(conf)]
    assert a["auc"] == pytest.approx(skm.roc_auc_score(y, [conf[s] for s in sorted(conf)]))
    assert a["auc_ci"][0] < a["auc"] < a["auc_ci"][1]


def test_mcnemar_and_welch_match_statsmodels_and_scipy():
    for b, c in ((0, 6), (3, 9), (5, 5), (0, 0), (12, 2)):
        ref = mcnemar([[10, b], [c, 4]], exact=True).pvalue
        assert readers.mcnemar_exact(b, c) == pytest.approx(ref)
    assert readers.mcnemar_exact(0, 6) == pytest.approx(2 / 64)
    models, rs = [0.9, 0.85, 0.8], [0.6, 0.7, 0.5, 0.65]
    ref = sps.ttest_ind(models, rs, equal_var=False)
    t = readers.gao_ttest(models, rs)
    assert t["t"] == pytest.approx(ref.statistic) and t["p"] == pytest.approx(ref.pvalue)
    assert math.isnan(readers.gao_ttest([0.9], [0.5])["p"])  # one reader: no spread to test
    assert math.isnan(readers.gao_ttest([0.9], [0.5, 0.5])["p"])


def test_gao_2020_table_5_p_values_are_welchs_t_test():
    # Table 5: the six networks' subject-wise values, and the five neurosurgeons' mean (SD);
    # Welch's t depends on the readers through their mean and SD only. Gao: P = .02, <.001,
    # <.001 (accuracy's SD is "0.750" in the table, 0.075 in the text).
    dnn = {
        "sensitivity": [0.947, 0.947, 0.947, 0.947, 1.000, 0.895],
        "specificity": [0.9, 0.8, 0.7, 0.8, 0.8, 0.9],
        "accuracy": [0.931, 0.897, 0.862, 0.897, 0.931, 0.897],
    }
    surgeons = {"sensitivity": (0.768, 0.109), "specificity": (0.360, 0.089)}
    surgeons["accuracy"] = (0.628, 0.075)
    spread = np.array([-2.0, -1.0, 0.0, 1.0, 2.0]) / math.sqrt(2.5)  # mean 0, SD 1
    p = {}
    for k, (mean, sd) in surgeons.items():
        t = readers.gao_ttest(dnn[k], mean + sd * spread)
        assert t["mean_readers"] == pytest.approx(mean) and t["sd_readers"] == pytest.approx(sd)
        p[k] = t["p"]
    assert round(p["sensitivity"], 2) == 0.02
    assert p["specificity"] < 0.001 and p["accuracy"] < 0.001
    # Student's pooled test would have printed .004 for sensitivity, not .02.
    student = sps.ttest_ind(dnn["sensitivity"], 0.768 + 0.109 * spread).pvalue
    assert round(student, 3) == 0.004


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("reader,subject,decision\nA,s1,1\n", r"line 1: header .*missing \['subject_id'\]"),
        ("reader,subject_id,decision,note\n", r"line 1: header .*unknown \['note'\]"),
        ("reader,subject_id,decision\nA,s1,1\nA,s2,maybe\n", r"subject s2, file .*r.csv: line 3: "),
        ("reader,subject_id,decision\nA,s1,1\nA,s1,0\n", "line 3: reader A decided this subject"),
        ("reader,subject_id,decision\nA,s1\n", "line 2: 2 fields, the header has 3"),
        ("reader,subject_id,decision\n,s1,1\n", "line 2: no reader"),
        ("reader,subject_id,decision,confidence\nA,s1,1,high\n", "line 2: confidence 'high'"),
        ("reader,subject_id,decision\n", "no decisions"),
        ("", "line 1: the file is empty"),
    ],
)
def test_a_bad_readers_file_is_one_line_naming_file_line_and_problem(tmp_path, text, problem):
    path = tmp_path / "r.csv"
    path.write_text(text)
    with pytest.raises(InputError, match=problem) as e:
        readers.read_csv(path, CLASSES, POSITIVE)
    assert str(path) in str(e.value) and "\n" not in str(e.value)
    if "maybe" in text:
        assert "'necrosis', 'recurrence', 1 (recurrence) or 0 (not recurrence)" in str(e.value)
    with pytest.raises(InputError, match="readers file not found"):
        readers.read_csv(tmp_path / "missing.csv", CLASSES, POSITIVE)


def test_the_models_decisions_are_its_subject_rows(readers_csv):
    # Two slices a subject; the model's subject decisions at the cut-off give its table row.
    ids = [s for s in sorted(TRUTH) for _ in range(2)]
    label = np.array([int(TRUTH[s]) for s in ids])
    p = np.array([0.9 if MODEL[s] else 0.2 for s in ids]) + np.tile([0.05, -0.05], 8)
    preds = Predictions(ids, label, np.stack([1 - p, p], 1), CLASSES)
    config = compare_config()
    scoring = ScoringPolicy.from_config(config.eval, CLASSES)
    subjects, truth, called = scoring.subject_calls(preds, {})
    assert subjects == sorted(TRUTH) and called.tolist() == [MODEL[s] for s in subjects]
    row = scoring.score(preds, {})["subject"]
    result, _ = readers.run(readers_csv, readers_csv.parent, scoring, {"m": preds}, {"m": {}})
    for k in ("sensitivity", "specificity", "accuracy"):
        assert result["models"]["m"][k] == row[k]
        assert result["models"]["m"][f"{k}_ci"] == row[f"{k}_ci"]
    md = (readers_csv.parent / "readers.md").read_text()
    assert "| reader B | 8 (5) | 0.400 (" in md and "| m | B | accuracy | 8 | 4 | 1 | 0.375 |" in md
    saved = json.loads((readers_csv.parent / "readers.json").read_text())
    assert saved["readers"]["C"]["missing"] == ["s8"]


def test_compare_tables_and_rocs_show_the_readers(tmp_path, monkeypatch):
    monkeypatch.setattr(loop, "train_and_evaluate", FakeTrain())
    # TEST_SUBJECTS t0-t7 (recurrence: the odd ones). R1 is right on all; R2 calls t0-t3
    # recurrence and misses t7: TP t1 t3, FN t5, FP t0 t2, TN t4 t6.
    rows = ["reader,subject_id,decision"]
    rows += [f"R1,{s},{'recurrence' if int(s[-1]) % 2 else 'necrosis'}" for s in TEST_SUBJECTS]
    rows += [f"R2,{s},{int(s[-1]) < 4:d}" for s in TEST_SUBJECTS[:-1]]
    path = tmp_path / "readers.csv"
    path.write_text("\n".join(rows) + "\n")
    config = compare_config()
    config.eval.readers_csv = str(path)
    out = tmp_path / "cmp"
    compare.run(config, out, ["ern_tiny", "resnet10_tiny"], [("t1c",)])
    md = (out / "compare.md").read_text()
    assert md.index("ern_tiny t1c subject") < md.index("# Readers against the model")
    assert "| reader R1 | 8 (4) | 1.000 (" in md and "| reader R2 | 7 (3) | 0.667 (" in md
    assert "all 2 models" in md and "reader R2 did not decide 1 of the 8" in md
    result = json.loads((out / "readers.json").read_text())
    table = json.loads((out / "compare.json").read_text())
    for run in ("ern_tiny t1c", "resnet10_tiny t1c"):  # each run at its validation cut-off
        for k in ("sensitivity", "specificity", "accuracy"):
            assert result["models"][run][k] == pytest.approx(table[f"{run}.subject.{k}"])
    assert set(result["mcnemar"]) == {"ern_tiny t1c", "resnet10_tiny t1c"}
    assert (out / "roc_test_subject.png").stat().st_size > 0
    points, mean = readers.roc_points(result)
    assert points == {"R1": (0.0, 1.0), "R2": pytest.approx((0.5, 2 / 3))}
    assert mean == pytest.approx(((0 + 0.5) / 2, (1 + 2 / 3) / 2))
    # A bad file stops the comparison before any run trains.
    path.write_text("reader,subject_id,decision\nR1,t0,perhaps\n")
    calls = FakeTrain()
    monkeypatch.setattr(loop, "train_and_evaluate", calls)
    with pytest.raises(InputError, match="line 2: decision 'perhaps'"):
        compare.run(config, tmp_path / "cmp2", ["ern_tiny"], [("t1c",)])
    assert not calls.calls


def test_roc_figure_draws_readers_as_points(tmp_path):
    y = np.array([1, 1, 1, 0, 0, 0, 1, 0])
    s = np.array([0.9, 0.8, 0.4, 0.3, 0.6, 0.1, 0.7, 0.2])
    points = {"A": (0.25, 0.75), "B": (0.5, 0.5), "C": (float("nan"), 1.0)}
    path = reporting.plot_roc(
        {"ern": (y, s)}, tmp_path / "roc.png", "ROC", readers=(points, (0.375, 0.625))
    )
    assert path.read_bytes()[:4] == b"\x89PNG"


def test_a_bad_readers_file_stops_a_run_before_the_records_are_built(tmp_path):
    from ernjax import defaults
    from ernjax.data import prepare

    config = defaults.base_config()
    (tmp_path / "r.csv").write_text("reader,subject_id,decision\nA,s1,recurrence\nA,s2,RN\n")
    config.eval.readers_csv = str(tmp_path / "r.csv")
    with pytest.raises(InputError, match=r"r.csv: line 3: decision 'RN' is not one of"):
        prepare.prepare(config, tmp_path / "work")
    assert not (tmp_path / "work").exists()  # neither the synthetic cohort nor the records
