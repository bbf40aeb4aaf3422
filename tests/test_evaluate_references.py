"""Statistics against values nobody on this project computed.

- pROC's aSAH example (`../shared/reference/aSAH.csv`, the values of pROC's own test suite, listed
  in that folder's README): AUCs, the DeLong CI of one AUC and three paired DeLong tests.
- statsmodels' `proportion_confint` for the Wilson, Clopper-Pearson and Wald intervals.
- A published table reproduced from its counts: Newcombe (1998, Stat Med 17:857-872), the table of
  its worked examples: the 95% intervals of methods 3 (Wilson) and 4 (Wilson with continuity
  correction) for 81/263, 15/148, 0/20 and 1/29, printed to 4 decimals.
"""

import csv
from pathlib import Path

import numpy as np
import pytest
from statsmodels.stats.proportion import proportion_confint

from ernjax.evaluate import stats

ASAH = Path(__file__).resolve().parents[1].parent / "shared/reference/aSAH.csv"


@pytest.fixture(scope="module")
def asah():
    if not ASAH.is_file():
        pytest.skip(f"pROC's aSAH data not found at {ASAH} (see ../shared/reference)")
    rows = list(csv.DictReader(ASAH.open()))
    y = np.array([r["outcome"] == "Poor" for r in rows])
    scores = {m: np.array([float(r[m]) for r in rows]) for m in ("wfns", "s100b", "ndka")}
    return y, scores


def test_asah_aucs_and_delong_ci_match_proc(asah):
    y, s = asah
    aucs, _ = stats.delong_covariance(y, np.stack([s["wfns"], s["s100b"], s["ndka"]]))
    np.testing.assert_allclose(
        aucs, [0.823678861788618, 0.731368563685637, 0.611957994579946], rtol=1e-12
    )
    auc, ci, notes = stats.roc_auc_with_ci(y, s["ndka"], method="delong")
    assert auc == pytest.approx(0.611957994579946, rel=1e-12) and not notes
    np.testing.assert_allclose(ci, [0.501244999271703, 0.722670989888189], rtol=1e-9)


@pytest.mark.parametrize(
    "a, b, z, p",
    [
        ("wfns", "s100b", 2.20898359144091, 0.0271757822291882),
        ("wfns", "ndka", 2.79777591868904, 0.00514557970691098),
        ("ndka", "s100b", -1.39077002573558, 0.164295175223054),
    ],
)
def test_asah_paired_delong_tests_match_proc(asah, a, b, z, p):
    y, s = asah
    got_z, got_p = stats.delong_test(y.astype(int), s[a], s[b], positive=1)
    assert got_z == pytest.approx(z, rel=1e-9)
    assert got_p == pytest.approx(p, rel=1e-9)


@pytest.mark.parametrize("n", [1, 2, 5, 12, 29, 100, 263])
@pytest.mark.parametrize(
    ("ours", "theirs"), [("wilson", "wilson"), ("exact", "beta"), ("wald", "normal")]
)
def test_proportion_intervals_match_statsmodels(n, ours, theirs):
    for x in range(n + 1):
        expected = proportion_confint(x, n, alpha=0.05, method=theirs)
        expected = np.clip(np.nan_to_num(expected, nan=0.0), 0.0, 1.0)
        if theirs == "beta":  # statsmodels gives NaN at the ends where the bound is 0 or 1
            expected = [0.0 if x == 0 else expected[0], 1.0 if x == n else expected[1]]
        np.testing.assert_allclose(stats.proportion_ci(x, n, ours), expected, atol=1e-12)


@pytest.mark.parametrize(
    "x, n, wilson, wilson_cc",
    [
        (81, 263, (0.2553, 0.3662), (0.2535, 0.3682)),
        (15, 148, (0.0624, 0.1605), (0.0598, 0.1644)),
        (0, 20, (0.0000, 0.1611), (0.0000, 0.2005)),
        (1, 29, (0.0061, 0.1718), (0.0018, 0.1963)),
    ],
)
def test_wilson_intervals_reproduce_newcombe_1998(x, n, wilson, wilson_cc):
    np.testing.assert_allclose(stats.proportion_ci(x, n, "wilson"), wilson, atol=5e-5)
    np.testing.assert_allclose(stats.proportion_ci(x, n, "wilson_cc"), wilson_cc, atol=5e-5)
