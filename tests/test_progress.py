"""ernjax.progress and where the long steps use it: counts, rates and ETAs without the warm-up."""

import io
import logging
import math
import shutil
from pathlib import Path

import optax
import pytest

from ernjax.data import records, synthetic
from ernjax.progress import Meter, clock
from ernjax.train.logs import StepLog

DUMMY = Path(__file__).resolve().parents[1] / "data_builders" / "ernjax_mri" / "dummy_data"


class FakeClock:
    """Seconds that pass only when the test says so."""

    def __init__(self):
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def log_meter(total, **kw):
    """A Meter in log mode on a fake clock, and the lines it logged."""
    lines, t = [], FakeClock()
    meter = Meter("job", total, unit="subject", tty=False, log=lines.append, clock_fn=t, **kw)
    return meter, lines, t


def test_clock_format():
    assert clock(0) == "00:00:00"
    assert clock(3725.4) == "01:02:05"
    assert clock(30 * 3600) == "30:00:00"  # hours unbounded, not wrapped at a day
    assert clock(math.nan) == clock(math.inf) == "--:--:--"


def test_eta_excludes_the_first_item():
    meter, lines, t = log_meter(10, every=1)
    t.now += 60  # the first item also compiled / warmed up
    meter.update()
    assert math.isnan(meter.rate()) and math.isnan(meter.eta())
    assert lines == ["job: 1/10 subjects, the first in 00:01:00"]
    for _ in range(4):
        t.now += 2
        meter.update()
    assert meter.rate() == pytest.approx(0.5)  # 4 items in 8 s; the 60 s first one left out
    assert meter.eta() == pytest.approx(10)
    assert lines[-1] == "job: 5/10 subjects, 2 s/subject, elapsed 00:01:08, ETA 00:00:10"


def test_log_lines_every_n_items_or_interval_and_a_final_line():
    meter, lines, t = log_meter(100, every=10, interval_s=30)
    for _ in range(25):
        t.now += 0.5
        meter.update()
    assert [x.split(",")[0] for x in lines] == ["job: 10/100 subjects", "job: 20/100 subjects"]
    t.now += 40  # a slow item: the interval brings a line before the next 10
    meter.update()
    assert lines[-1].startswith("job: 26/100 subjects")
    for _ in range(74):
        meter.update()
    assert not lines[-1].startswith("job: 100/100")  # the last item's line is the final one
    meter.close()
    meter.close()  # once only
    assert lines[-1] == "job: 100 subjects in 00:00:52"
    assert sum("in 00:00:52" in x for x in lines) == 1


def test_final_line_of_an_unfinished_job_says_how_far_it_got():
    meter, lines, t = log_meter(8)
    with meter:
        meter.update(3)
        t.now += 5
    assert lines[-1] == "job: 3/8 subjects in 00:00:05"


def test_rate_above_one_per_second_and_batched_updates():
    meter, lines, t = log_meter(1000, every=1000, interval_s=1)
    meter.update(100)  # one batch of examples, e.g. the one that compiled
    t.now += 2
    meter.update(100)
    assert meter.rate() == pytest.approx(50)
    assert lines == ["job: 200/1000 subjects, 50 subjects/s, elapsed 00:00:02, ETA 00:00:16"]


def test_terminal_redraws_one_line_and_the_log_keeps_the_total():
    stream, lines, t = io.StringIO(), [], FakeClock()
    meter = Meter("job", 4, unit="subject", stream=stream, tty=True, log=lines.append, clock_fn=t)
    for _ in range(4):
        t.now += 1
        meter.update()
    drawn = stream.getvalue()
    assert "\n" not in drawn and drawn.count("\r") == 8  # before and after each of 4 draws
    last = drawn.rstrip("\r").split("\r")[-1]
    assert last == "job [####################] 4/4 subjects, 1 subjects/s, ETA 00:00:00"
    assert lines == []  # no plain lines while the bar is drawn
    meter.close()
    assert stream.getvalue().endswith("\r")  # the bar is blanked ...
    assert lines == ["job: 4 subjects in 00:00:04"]  # ... and the total logged


def test_redraws_are_throttled():
    stream, t = io.StringIO(), FakeClock()
    meter = Meter("job", 100, stream=stream, tty=True, log=lambda _: None, clock_fn=t)
    for _ in range(50):
        t.now += 0.01
        meter.update()
    assert stream.getvalue().count("\r") == 4  # at 0.2 s and 0.4 s, not 50 times


def test_not_a_terminal_by_default_for_a_file_like_stream():
    assert Meter("job", 1, stream=io.StringIO()).tty is False


class _NoWriter:
    def scalars(self, step, values):
        self.last = values


def step_log(t, **kw):
    return StepLog(
        _NoWriter(),
        optax.constant_schedule(1e-3),
        batch_size=8,
        steps_per_epoch=10,
        total_steps=100,
        step=0,
        clock=t,
        **kw,
    )


def test_step_log_eta_excludes_compilation(caplog):
    t = FakeClock()
    log = step_log(t)
    t.now += 120  # step 1 compiles
    log.started(1)
    t.now += 9 * 0.5  # steps 2-10 at 0.5 s each
    with caplog.at_level(logging.INFO):
        log.log(10, {"loss": 0.7, "grad_norm": 1.0})
    line = caplog.records[-1].getMessage()
    assert line.startswith("step 10/100 (epoch 1/10): ")
    assert line.endswith("ETA 00:00:45")  # 90 steps at 2 steps/s; not 00:20:xx from 124.5 s
    assert log.writer.last["train/examples_per_second"] == pytest.approx(9 * 8 / 4.5)
    assert log.steps_per_second(10) == pytest.approx(2.0)


def test_step_log_at_the_compiled_step_itself_shows_no_rate(caplog):
    t = FakeClock()
    log = step_log(t)
    t.now += 120
    log.started(1)
    with caplog.at_level(logging.INFO):
        log.log(1, {"loss": 0.7, "grad_norm": 1.0})  # log_every_steps=1
    assert caplog.records[-1].getMessage().endswith("ETA --:--:--")
    assert "train/examples_per_second" not in log.writer.last


def test_step_log_without_a_mark_starts_the_rate_at_the_first_log(caplog):
    t = FakeClock()
    log = step_log(t)
    t.now += 120
    with caplog.at_level(logging.INFO):
        log.log(10, {"loss": 0.7, "grad_norm": 1.0})
        t.now += 5
        log.log(20, {"loss": 0.6, "grad_norm": 1.0})
    messages = [r.getMessage() for r in caplog.records]
    assert messages[0].endswith("ETA --:--:--")  # no rate that holds the compilation
    assert messages[1].endswith("ETA 00:00:40")  # 80 steps at 2 steps/s


def _progress_lines(caplog, what):
    return [r.getMessage() for r in caplog.records if r.getMessage().startswith(what)]


def test_synthetic_cohort_reports_each_subject(tmp_path, caplog):
    with caplog.at_level(logging.INFO):
        synthetic.write_cohort(tmp_path / "c", subjects=4, seed=0, spacing=4.0)
    lines = _progress_lines(caplog, "synthetic cohort")
    assert lines[0].startswith("synthetic cohort: writing 4 subjects to ")
    assert [x.split(",")[0] for x in lines[1:-1]] == [
        f"synthetic cohort: {i}/4 subjects" for i in (1, 2, 3)
    ]
    assert "ETA" in lines[-2]
    assert lines[-1].startswith("synthetic cohort: 4 subjects in ")


@pytest.mark.parametrize("workers", [1, 2])
def test_records_build_counts_finished_subjects(tmp_path, caplog, workers):
    import configs.resnet3d

    cohort = tmp_path / "cohort"
    shutil.copytree(DUMMY, cohort)
    d = configs.resnet3d.get_config("tiny").data
    d.mask_pattern, d.shape, d.split.folds, d.build_workers = "*_mask.nii.gz", (8, 8, 8), 2, workers
    with caplog.at_level(logging.INFO):
        records.build(d, cohort, tmp_path / "rec")
    lines = _progress_lines(caplog, "records")
    assert lines[0] == f"records: loading 10 subjects with {workers} workers"
    counts = [int(x.split("/")[0].rsplit(" ", 1)[1]) for x in lines[1:-2]]
    assert counts == list(range(1, 10))  # each as it finished, from the workers too
    assert lines[-2].startswith("records: subjects loaded: 10 subjects in ")
    assert lines[-1].startswith("records built: ")


def test_crossval_says_which_fold_of_how_many_and_the_eta(tmp_path, caplog, monkeypatch):
    import configs.ern
    from ernjax.studies import crossval

    trained = []

    class FakeRunner:  # the folds' training is not what is tested here
        def __call__(self, config, workdir):
            trained.append(config.data.fold)
            return {}

    monkeypatch.setattr(crossval.runs, "Runner", FakeRunner)
    config = configs.ern.get_config("tiny")
    config.data.cohort_dir, config.data.split.folds = str(DUMMY), 3
    with caplog.at_level(logging.INFO):
        crossval.run(config, tmp_path / "cv")
    assert trained == [0, 1, 2]
    lines = _progress_lines(caplog, "cross-validation")
    assert [x.split(" (")[0] for x in lines[0::2]] == [
        f"cross-validation: fold {i} of 3" for i in (1, 2, 3)
    ]
    assert lines[1].startswith("cross-validation: 1/3 folds, ") and "ETA" in lines[1]
    assert lines[-1].startswith("cross-validation: 3 folds in ")
