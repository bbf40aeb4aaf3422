"""The config checked against labels.csv before any work (`ernjax.data.check`, issue 18 item 1).

Cohorts here are a labels.csv and empty subject folders: every check reads labels.csv only, so
an error must come before any image is opened and any record is written.
"""

import logging
import subprocess
import sys
from pathlib import Path

import pytest
from absl import flags
from ml_collections import config_flags

import configs.ern
import configs.resnet3d
from ernjax.data import check
from ernjax.data.prepare import prepare

REPO = Path(__file__).resolve().parents[1]


def _cohort(root: Path, counts: dict[str, int], extra: str = "") -> Path:
    """A cohort folder: labels.csv with `counts` subjects per label, one empty folder each."""
    root.mkdir(parents=True)
    lines = ["subject_id,label"]
    for label, n in counts.items():
        for i in range(n):
            sid = f"{label}-{i:02d}"
            (root / sid).mkdir()
            lines.append(f"{sid},{label}")
    (root / "labels.csv").write_text("\n".join(lines + [extra] if extra else lines) + "\n")
    return root


def _config(cohort: Path, module=configs.ern, **data):
    config = module.get_config("tiny")
    config.data.cohort_dir = str(cohort)
    for key, value in data.items():
        config.data[key] = value
    return config


@pytest.fixture(autouse=True)
def _fresh_warnings():
    check._WARNED.clear()  # each warning is logged once per process
    yield


def _warnings(caplog) -> str:
    return "\n".join(r.getMessage() for r in caplog.records if r.levelno == logging.WARNING)


# ----------------------------------------------------------------------------- classes
def test_wrong_classes_name_the_labels_counts_and_flag_before_any_record(tmp_path):
    cohort = _cohort(tmp_path / "c", {"HGG": 17, "LGG": 4})
    config = _config(cohort, classes=("G2", "G3"))
    workdir = tmp_path / "work"
    with pytest.raises(check.ConfigError) as err:
        prepare(config, workdir)
    message = str(err.value)
    assert message.startswith(f"file {cohort / 'labels.csv'}: the labels are 'HGG' (17 subjects)")
    assert "and 'LGG' (4)" in message
    assert "config.data.classes=('G2', 'G3')" in message
    assert "set --config.data.classes=\"('HGG','LGG')\"" in message
    assert not (workdir / "records").exists()
    assert not workdir.exists()  # nothing at all was written


def test_three_labels_also_ask_for_num_classes(tmp_path):
    cohort = _cohort(tmp_path / "c", {"a": 3, "b": 3, "c": 3})
    with pytest.raises(check.ConfigError, match="--config.model.num_classes=3"):
        check.check_config(_config(cohort, classes=("x", "y")))


def test_default_classes_are_taken_from_two_other_labels_in_sorted_order(tmp_path, caplog):
    cohort = _cohort(tmp_path / "c", {"LGG": 4, "HGG": 17})
    config = _config(cohort)
    config.eval.positive_class = "LGG"
    with caplog.at_level(logging.INFO):
        check.check_config(config)
    assert config.data.classes == ("HGG", "LGG")
    log = caplog.text
    assert "class 0 = HGG, class 1 = LGG (sorted); the positive class is LGG" in log
    assert "--config.data.classes=\"('HGG','LGG')\" to fix the order" in log


def test_positive_class_outside_the_taken_classes_names_the_flag(tmp_path):
    cohort = _cohort(tmp_path / "c", {"HGG": 17, "LGG": 4})
    workdir = tmp_path / "work"
    with pytest.raises(check.ConfigError) as err:
        prepare(_config(cohort, module=configs.resnet3d), workdir)  # positive: necrosis
    assert str(err.value) == (
        "config.eval.positive_class='necrosis' is not one of the classes ('HGG', 'LGG') (taken "
        f"from {cohort / 'labels.csv'}): set --config.eval.positive_class=LGG or "
        "--config.eval.positive_class=HGG (the class whose sensitivity is reported)"
    )
    assert not (workdir / "records").exists()


def test_positive_class_not_among_given_classes(tmp_path):
    cohort = _cohort(tmp_path / "c", {"G2": 5, "G3": 5})
    config = _config(cohort, classes=("G2", "G3"))
    with pytest.raises(check.ConfigError, match="positive_class='recurrence' is not one of"):
        check.check_config(config)


def test_a_typo_in_one_row_is_left_to_the_subject_message(tmp_path):
    # Every configured class is present: the stray label is one subject's problem, and
    # cohort.find_subjects names that subject (tests/test_bad_input.py).
    cohort = _cohort(tmp_path / "c", {"necrosis": 4, "recurrence": 6}, extra="x-01,necrose")
    check.check_config(_config(cohort))


def test_synthetic_cohort_classes(tmp_path):
    config = configs.ern.get_config("tiny")
    config.data.classes = ("HGG", "LGG")
    with pytest.raises(check.ConfigError, match="the synthetic cohort is used"):
        prepare(config, tmp_path / "work")
    assert not (tmp_path / "work").exists()  # not even the synthetic cohort


# ----------------------------------------------------------------------------- modalities
def test_unused_modality_is_named_with_the_flag(tmp_path, caplog):
    cohort = _cohort(tmp_path / "c", {"necrosis": 6, "recurrence": 6})
    config = _config(cohort, module=configs.resnet3d)  # modalities t1, t1c, t2, flair
    check.check_config(config)
    assert (
        "config.data.modalities has flair, which config.data.channels=('t1', 't1c', 't2') "
        "leaves out" in _warnings(caplog)
    )
    assert "--config.data.channels=\"('t1','t1c','t2','flair')\"" in _warnings(caplog)


def test_channel_without_modality_is_an_error(tmp_path):
    cohort = _cohort(tmp_path / "c", {"necrosis": 6, "recurrence": 6})
    config = _config(cohort, modalities={"t1": "*_t1.nii.gz", "t1c": "*_t1c.nii.gz"})
    with pytest.raises(check.ConfigError, match=r"names t2, which config.data.modalities does"):
        check.check_config(config)


def test_mask_that_a_whole_brain_volume_does_not_use(tmp_path, caplog):
    cohort = _cohort(tmp_path / "c", {"necrosis": 6, "recurrence": 6})
    config = _config(cohort, module=configs.resnet3d, mask_pattern="*_seg.nii.gz")
    config.data.channels = ("t1", "t1c", "t2", "flair")
    check.check_config(config)
    assert "the volumes do not depend on it" in _warnings(caplog)
    assert "flair" not in _warnings(caplog)
    caplog.clear()
    config.data.roi = "mask"
    check.check_config(config)
    assert _warnings(caplog) == ""


# ----------------------------------------------------------------------------- split counts
def test_small_split_warns_and_points_to_crossval(tmp_path, caplog):
    cohort = _cohort(tmp_path / "c", {"HGG": 17, "LGG": 4})
    config = _config(cohort, module=configs.resnet3d, classes=("HGG", "LGG"))
    config.data.channels = ("t1", "t1c", "t2", "flair")
    config.eval.positive_class = "LGG"
    config.train.select_checkpoint = "best"
    with caplog.at_level(logging.INFO):
        check.check_config(config)
    assert "train 10 HGG, 2 LGG; validation 3 HGG, 1 LGG; test 4 HGG, 1 LGG" in caplog.text
    warning = _warnings(caplog)
    assert "fewer than 3 subjects of a class (train 2 LGG; validation 1 LGG; test 1 LGG)" in warning
    assert "The best checkpoint" in warning
    assert check.CROSSVAL in warning


def test_crossval_fold_scoring_its_last_checkpoint_does_not_warn(tmp_path, caplog):
    cohort = _cohort(tmp_path / "c", {"HGG": 17, "LGG": 4})
    config = _config(cohort, module=configs.resnet3d, classes=("HGG", "LGG"), fold=1)
    config.data.channels = ("t1", "t1c", "t2", "flair")
    config.data.split.test = 0.0
    config.eval.positive_class = "LGG"
    check.check_config(config)  # resnet3d scores the last checkpoint
    assert _warnings(caplog) == ""


def test_large_splits_do_not_warn(tmp_path, caplog):
    cohort = _cohort(tmp_path / "c", {"necrosis": 20, "recurrence": 20})
    config = _config(cohort)
    del config.data.modalities["flair"]  # configs/ern.py's channels leave it out
    check.check_config(config)
    assert _warnings(caplog) == ""


# ----------------------------------------------------------------------------- the command line
def _parse(*args):
    """The config as `python -m ernjax.main` parses these flags (absl + config_flags)."""
    argv = ["prog", "--config=configs/ern.py", *args]
    values = flags.FlagValues()
    # sys_argv: config_flags finds the overrides there (sys.argv otherwise), as app.run would
    config_flags.DEFINE_config_file(
        "config", None, "config", flag_values=values, lock_config=True, sys_argv=argv
    )
    values(argv)
    return values.config


@pytest.mark.parametrize(
    "args",
    [
        ["--config.data.classes=HGG,LGG"],
        ["--config.data.classes=HGG, LGG"],
        ["--config.data.classes=('HGG','LGG')"],
        ["--config.data.classes=HGG", "--config.data.classes=LGG"],
    ],
)
def test_tuple_flags_comma_separated_or_python_tuple(args, monkeypatch):
    monkeypatch.chdir(REPO)
    config = _parse(*args, "--config.data.channels=t1,flair")
    check.split_comma_tuples(config)
    assert config.data.classes == ("HGG", "LGG")
    assert config.data.channels == ("t1", "flair")


def test_modalities_dict_flag_replaces_the_whole_dict(monkeypatch):
    monkeypatch.chdir(REPO)
    config = _parse('--config.data.modalities={"t1": "*T1*.nii.gz", "t1c": "*POST*.nii.gz"}')
    assert dict(config.data.modalities) == {"t1": "*T1*.nii.gz", "t1c": "*POST*.nii.gz"}


def test_main_refuses_in_one_line_before_the_records(tmp_path):
    cohort = _cohort(tmp_path / "c", {"HGG": 17, "LGG": 4})
    workdir = tmp_path / "work"
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "ernjax.main",
            "--config=configs/ern.py:tiny",
            f"--workdir={workdir}",
            f"--config.data.cohort_dir={cohort}",
            "--config.data.classes=HGG,LGG",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 1, run.stderr
    last = run.stderr.strip().splitlines()[-1]
    assert last.startswith("ernjax: config.eval.positive_class='recurrence' is not one of the ")
    assert "classes ('HGG', 'LGG'): set --config.eval.positive_class=LGG" in last
    assert "read as ('HGG', 'LGG')" in run.stderr
    assert not workdir.exists() or list(workdir.iterdir()) == []  # nothing written
