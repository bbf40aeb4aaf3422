"""What bad input gets, through the real entry points with the default settings of
`configs/ern.py:tiny`: the records build of `data.prepare.prepare` (as `ernjax.main` runs it) and
`python -m ernjax.main` itself. Every refusal names the subject, the file or folder and the
problem, and leaves no dataset, staging folder or output behind; non-ASCII names just work.
"""

import logging
import os
import re
import shutil
import stat
import subprocess
import sys
import unicodedata
from pathlib import Path

import pytest

import configs.ern
from ernjax import cli
from ernjax.data.prepare import prepare
from ernjax.errors import InputError
from ernjax.train import loop

REPO = Path(__file__).resolve().parents[1]
DUMMY = REPO / "data_builders" / "ernjax_mri" / "dummy_data"
SID = "dummy-03"  # a necrosis subject of dummy_data


@pytest.fixture
def cohort(tmp_path) -> Path:
    out = tmp_path / "cohort"
    shutil.copytree(DUMMY, out)
    return out


def _config(cohort: Path):
    """configs/ern.py:tiny on `cohort`: every other setting (build workers too) is the default."""
    config = configs.ern.get_config("tiny")
    config.data.cohort_dir = str(cohort)
    return config


def _leftovers(workdir: Path) -> list[Path]:
    """Files, datasets and staging folders under a run's workdir (empty folders aside)."""
    if not workdir.exists():
        return []
    return [
        *(p for p in workdir.rglob("*") if p.is_file()),
        *workdir.rglob(".staging-*"),
        *workdir.rglob("ernjax_mri"),
    ]


def _refused(cohort: Path, workdir: Path, subject: str, path: Path, problem: str) -> str:
    """Runs the records build of a run; checks the message and that nothing was left."""
    with pytest.raises(InputError) as err:
        prepare(_config(cohort), workdir)
    message = str(err.value)
    assert err.value.subject == subject and f"subject {subject}," in message, message
    assert err.value.path == str(path) and str(path) in message, message
    assert problem in message, message
    assert _leftovers(workdir) == []
    return message


def _edit_labels(cohort: Path, old: str, new: str) -> None:
    labels = cohort / "labels.csv"
    text = labels.read_text(encoding="utf-8")
    assert old in text
    labels.write_text(text.replace(old, new), encoding="utf-8")


# ----------------------------------------------------------------------------- the cohort's layout
def test_missing_file(cohort, tmp_path):
    (cohort / SID / f"{SID}_t2.nii.gz").unlink()
    _refused(cohort, tmp_path / "work", SID, cohort / SID, "no t2 file matches '*_t2.nii.gz'")


def test_two_files_match_one_pattern(cohort, tmp_path):
    shutil.copy(cohort / SID / f"{SID}_t2.nii.gz", cohort / SID / f"{SID}_t2_old_t2.nii.gz")
    message = _refused(
        cohort, tmp_path / "work", SID, cohort / SID, "2 files match the t2 pattern '*_t2.nii.gz'"
    )
    assert f"({SID}_t2.nii.gz, {SID}_t2_old_t2.nii.gz); make the pattern specific" in message


def test_label_not_in_classes(cohort, tmp_path):
    _edit_labels(cohort, f"{SID},necrosis", f"{SID},necrose")
    _refused(
        cohort,
        tmp_path / "work",
        SID,
        cohort / "labels.csv",
        "label 'necrose' is not one of the classes ['necrosis', 'recurrence']",
    )


def test_duplicate_subject_id(cohort, tmp_path):
    _edit_labels(cohort, f"{SID},necrosis", f"{SID},necrosis\n{SID},recurrence")
    _refused(
        cohort,
        tmp_path / "work",
        SID,
        cohort / "labels.csv",
        "subject listed 2 times in labels.csv",
    )


def test_missing_subject_folder(cohort, tmp_path):
    shutil.rmtree(cohort / SID)
    _refused(
        cohort,
        tmp_path / "work",
        SID,
        cohort / SID,
        "listed in labels.csv but the subject folder is missing",
    )


def test_orphan_folder_is_refused_with_the_way_out(cohort, tmp_path):
    # A folder without a labels.csv row is most often an ID typed differently in labels.csv, so
    # it stops the run (on_error="skip" skips it); a folder that is not a subject starts with "_".
    shutil.copytree(cohort / SID, cohort / "dummy-10")
    _refused(
        cohort,
        tmp_path / "work",
        "dummy-10",
        cohort / "dummy-10",
        "subject folder has no row in labels.csv: add one, or start the folder name with '_' "
        "if it holds no subject",
    )
    (cohort / "dummy-10").rename(cohort / "_not_a_subject")
    info = prepare(_config(cohort), tmp_path / "work")
    assert sum(info.num_examples.values()) > 0


# ----------------------------------------------------------------------------- the files
def test_unreadable_file(cohort, tmp_path):
    bad = cohort / SID / f"{SID}_t2.nii.gz"
    bad.write_bytes(os.urandom(4096))  # garbage, e.g. a file another program was still writing
    _refused(cohort, tmp_path / "work", SID, bad.resolve(), "cannot be read as NIfTI")


# ----------------------------------------------------------------------------- non-ASCII names
def _rename_subject(cohort: Path, old: str, new: str) -> None:
    for f in (cohort / old).iterdir():
        f.rename(f.with_name(f.name.replace(old, new)))
    (cohort / old).rename(cohort / new)
    _edit_labels(cohort, f"{old},", f"{new},")


NON_ASCII = {
    "dummy-01": "patiënt-é-01",
    "dummy-02": "müller-ü-02",
    SID: "患者-03",
    "dummy-04": "Δ-🧠-04",
}


def test_non_ascii_cohort_subjects_and_workdir_train(tmp_path, caplog, capsys):
    cohort = tmp_path / "Kohorte-Ärzte-队列"
    shutil.copytree(DUMMY, cohort)
    for old, new in NON_ASCII.items():
        _rename_subject(cohort, old, new)
    workdir = tmp_path / "arbeit-é-工作"
    config = _config(cohort)
    config.train.num_epochs = 1
    cli.quiet_library_logs()  # as every command does
    caplog.set_level(logging.INFO)
    loop.train_and_evaluate(config, workdir)
    _assert_no_library_chatter(caplog, capsys.readouterr().out)
    info = prepare(config, workdir)
    ids = {s for split in ("train", "validation", "test") for s in info.subject_ids(split)}
    assert set(NON_ASCII.values()) <= ids
    for split in ("validation", "test"):
        rows = (workdir / f"predictions_{split}.csv").read_text(encoding="utf-8").splitlines()
        assert [r.split(",")[0] for r in rows[1:]] == info.subject_ids(split)
    assert (workdir / "results.json").exists()


# What TFDS and Orbax said on every run before `cli.quiet_library_logs` (issue 18 item 4).
CHATTER = (
    "Load dataset info",
    "Using custom data configuration",
    "Generating dataset",
    "Done writing",
    "Downloading and preparing",
    "downloaded and prepared",
    "BasePyTreeCheckpointHandler",
)


def _assert_no_library_chatter(caplog, stdout: str) -> None:
    """Only the run's own log lines, its best value rounded (JAX's TPU line: test_cli_errors)."""
    messages = [r.getMessage() for r in caplog.records]
    assert [m for m in [*messages, *stdout.splitlines()] if any(c in m for c in CHATTER)] == []
    assert any(m.startswith("records built: ") for m in messages)  # the run's own lines stay
    epoch = next(m for m in messages if m.startswith("epoch 1 validation: "))
    assert re.search(r"\(best image\.auc (\d\.\d{3}|n/a) at step \d+\)$", epoch), epoch


def test_folder_names_in_decomposed_unicode_match_labels_csv(cohort, tmp_path):
    # macOS file systems store "ë" as "e" + a combining diaeresis (NFD); labels.csv typed in a
    # spreadsheet holds the one-character form (NFC). Both are the same subject.
    _rename_subject(cohort, SID, "patiënt-03")
    nfd = unicodedata.normalize("NFD", "patiënt-03")
    for f in (cohort / "patiënt-03").iterdir():
        f.rename(f.with_name(f.name.replace("patiënt-03", nfd)))
    (cohort / "patiënt-03").rename(cohort / nfd)
    info = prepare(_config(cohort), tmp_path / "work")
    ids = {s for split in ("train", "validation", "test") for s in info.subject_ids(split)}
    assert "patiënt-03" in ids and nfd not in ids


def test_labels_csv_not_utf8(cohort, tmp_path):
    # Excel's plain "CSV" on Windows is cp1252, not UTF-8.
    _rename_subject(cohort, SID, "patiënt-03")
    labels = cohort / "labels.csv"
    labels.write_bytes(labels.read_text(encoding="utf-8").encode("cp1252"))
    line = labels.read_bytes().split(b"\n").index(b"pati\xebnt-03,necrosis") + 1
    _refused(
        cohort,
        tmp_path / "work",
        "pati\\xebnt-03",
        labels,
        f"line {line} is not UTF-8 text (byte 0xeb); save labels.csv as UTF-8 (Excel: 'CSV UTF-8')",
    )


# ----------------------------------------------------------------------------- the command line
def _main(*args: str, prefix=()) -> subprocess.CompletedProcess:
    """`python -m ernjax.main --config=configs/ern.py:tiny ARGS`, started through `prefix`."""
    cmd = [*prefix, sys.executable, "-m", "ernjax.main", "--config=configs/ern.py:tiny", *args]
    return subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300, check=False)


def test_command_line_prints_one_line_for_bad_input(cohort, tmp_path):
    (cohort / SID / f"{SID}_t2.nii.gz").unlink()
    work = tmp_path / "work"
    run = _main(f"--config.data.cohort_dir={cohort}", f"--workdir={work}")
    assert run.returncode == 1
    assert "Traceback" not in run.stderr, run.stderr[-3000:]
    assert run.stderr.splitlines()[-1] == (
        f"ernjax: subject {SID}, file {cohort / SID}: no t2 file matches '*_t2.nii.gz'"
    )
    assert _leftovers(work) == []


@pytest.fixture
def read_only_workdir(tmp_path):
    """(a workdir the run cannot write to, the command prefix to start the run with).

    chmod stops every user but root; root is stopped too inside a user namespace of its own
    (`unshare --user`), where it keeps no power over the files outside it.
    """
    work = tmp_path / "work"
    work.mkdir(mode=0o555)
    prefix = []
    if os.geteuid() == 0:
        prefix = ["unshare", "--user"]
        if not shutil.which("unshare") or subprocess.run([*prefix, "true"]).returncode:
            pytest.skip("root ignores chmod, and `unshare --user` cannot start here")
    return work, prefix


def test_read_only_workdir_gets_one_line(read_only_workdir):
    work, prefix = read_only_workdir
    run = _main(f"--config.data.cohort_dir={DUMMY}", f"--workdir={work}", prefix=prefix)
    assert run.returncode == 1
    assert "Traceback" not in run.stderr, run.stderr[-3000:]
    assert run.stderr.splitlines()[-1] == (
        f"ernjax: cannot write to the work folder {work} (Permission denied); "
        "choose another --workdir or make this one writable"
    )
    assert stat.S_IMODE(work.stat().st_mode) == 0o555 and list(work.iterdir()) == []


# ----------------------------------------------------------------------------- every command
# Each command line entry point runs through errors.one_line_errors: bad input is one line
# naming what is wrong, and exit status 1 (`ernjax.main`'s own cases are above).
COMMANDS = {
    "predict": (
        ["--workdir={tmp}/run", "--t1={tmp}/t1.nii.gz"],
        "ernjax: file {tmp}/run/checkpoints: no checkpoint: train the model first",
    ),
    "crossval": (
        ["--config=configs/ern.py:tiny", "--config.data.cohort_dir={cohort}", "--workdir={tmp}/cv"],
        "ernjax: subject {sid}, file {cohort}/{sid}: no t2 file matches '*_t2.nii.gz'",
    ),
    "compare": (
        ["--config=configs/ern.py:tiny", "--config.data.cohort_dir={cohort}", "--workdir={tmp}/c"],
        "ernjax: subject {sid}, file {cohort}/{sid}: no t2 file matches '*_t2.nii.gz'",
    ),
    "preprocess": (
        ["--cohort_dir={tmp}/none", "--out_dir={tmp}/out"],
        "ernjax: file {tmp}/none: cohort folder not found",
    ),
    "data.synthetic": (
        ["--out", "{tmp}/synthetic", "--subjects", "0"],
        "ernjax: cohort: subjects must be >= 1, got 0",
    ),
}


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_says_bad_input_in_one_line(command, cohort, tmp_path):
    (cohort / SID / f"{SID}_t2.nii.gz").unlink()
    args, line = COMMANDS[command]
    where = dict(tmp=tmp_path, cohort=cohort, sid=SID)
    cmd = [sys.executable, "-m", f"ernjax.{command}", *(a.format(**where) for a in args)]
    run = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300, check=False)
    assert run.returncode == 1, run.stderr[-3000:]
    assert "Traceback" not in run.stderr, run.stderr[-3000:]
    assert run.stderr.splitlines()[-1] == line.format(**where)
