"""The command line around every entry point (`ernjax.cli`, issue 18 items 2 and 4).

A wrong command line is one paragraph and exit status 2, before anything runs (no JAX backend,
no workdir); `--verbose_errors` adds the traceback; `--help` exits 0 and says how to list the
config fields; `--print_config` lists them with their values and comments; a wrong cohort path
is one line, exit status 1, and leaves no folder behind, nor JAX's TPU line. The log of a
training run without the libraries' chatter: tests/test_bad_input.py's non-ASCII run.

Each case is a subprocess (seconds of imports each): the cases are the kinds of error, not
every entry point, since every entry point parses its flags through the same `cli.run`.
"""

import subprocess
import sys
from pathlib import Path

import pytest

import configs.ern
from ernjax import cli, config_listing

REPO = Path(__file__).resolve().parents[1]
TINY = "--config=configs/ern.py:tiny"
LISTS = "(--print_config lists the config fields and their values)"


def _run(module: str, *args: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", module, *args]
    return subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300, check=False)


USAGE = {
    "unknown field": (
        [TINY, "--config.train.num_epoch=3"],
        "ernjax: --config.train.num_epoch=3: config.train has no field 'num_epoch'; did you "
        f"mean --config.train.num_epochs? {LISTS}",
    ),
    "unknown group": (
        [TINY, "--config.trian.num_epochs=3"],
        "ernjax: --config.trian.num_epochs=3: config has no field 'trian'; did you mean "
        f"--config.train.num_epochs? {LISTS}",
    ),
    "wrong type": (
        [TINY, "--config.train.num_epochs=abc"],
        f"ernjax: flag --config.train.num_epochs=abc: expected an integer, got 'abc' {LISTS}",
    ),
    "tuple of numbers": (
        [TINY, "--config.data.shape=abc"],
        "ernjax: --config.data.shape=abc: config.data.shape is a tuple of numbers, e.g. "
        f"--config.data.shape=32,32 {LISTS}",
    ),
    "missing config file": (
        ["--config=configs/nope.py"],
        "ernjax: --config=configs/nope.py: no such config file (e.g. --config=configs/ern.py)",
    ),
}


@pytest.mark.parametrize("case", USAGE)
def test_a_wrong_command_line_is_one_paragraph_and_exit_status_2(case, tmp_path):
    args, message = USAGE[case]
    run = _run("ernjax.main", *args, f"--workdir={tmp_path / 'work'}")
    assert run.returncode == 2, run.stderr[-3000:]
    assert run.stderr.splitlines() == [message]  # no log line, no traceback, no literal \n
    assert not (tmp_path / "work").exists()


def test_verbose_errors_adds_the_traceback(tmp_path):
    args, message = USAGE["unknown field"]
    run = _run("ernjax.main", *args, "--verbose_errors", f"--workdir={tmp_path / 'work'}")
    assert run.returncode != 0
    assert run.stderr.splitlines()[0] == message
    assert "Traceback (most recent call last)" in run.stderr


@pytest.mark.parametrize("module", ["ernjax.main", "ernjax.predict", "ernjax.crossval"])
def test_help_exits_0_and_says_how_to_list_the_config(module):
    run = _run(module, "--help")
    assert run.returncode == 0, run.stderr[-3000:]
    assert "--[no]verbose_errors" in run.stdout
    has_config = module != "ernjax.predict"  # predict reads the trained run's own config
    assert (cli.CONFIG_HINT in run.stdout) == has_config
    assert ("--[no]print_config" in run.stdout) == has_config


def test_print_config_lists_values_after_overrides_with_comments():
    run = _run("ernjax.main", TINY, "--config.train.num_epochs=3", "--print_config")
    assert run.returncode == 0, run.stderr[-3000:]
    lines = run.stdout.splitlines()
    assert lines[0] == f"# {TINY}"
    assert "train.num_epochs = 3" in lines
    assert 'train.optimizer = \'adamw\'  # "adam" or "adamw"' in lines
    i = lines.index("data.channels = ('t1', 't2', 't1c')  # modalities, in channel order")
    assert lines[i + 1] == "    # configs/ern.py: Gao Fig. 3a: T1 -> red, T2 -> green, T1c -> blue"


def test_wrong_cohort_path_leaves_no_folder(tmp_path):
    work, cohort = tmp_path / "work", tmp_path / "nonexistent"
    run = _run("ernjax.main", TINY, f"--config.data.cohort_dir={cohort}", f"--workdir={work}")
    assert run.returncode == 1, run.stderr[-3000:]
    assert "Traceback" not in run.stderr and "Unable to initialize backend" not in run.stderr
    assert run.stderr.splitlines()[-1] == f"ernjax: file {cohort}: cohort folder not found"
    assert not work.exists()  # neither records/ nor the WORKDIR this run made


def test_comments_come_from_the_source_by_alias_and_keyword():
    comments = config_listing.field_comments(REPO / "ernjax" / "defaults.py")
    assert comments["data.kind"].startswith('"slices2d" (an example per lesion slice)')
    assert comments["data.preprocess.n4_shrink"].startswith("N4 fits on the image shrunk")
    assert comments["data.modalities"].startswith("Modality name -> glob")  # the block above
    assert "data.split.test" not in comments  # `dict(test=0.2, ...)` on the statement's line
    protocol = config_listing.field_comments(REPO / "configs" / "ern.py")
    assert protocol["data.reference"] == "Gao: T1c and T2 co-registered to T1"  # via `d = c.data`
    assert "data.roi" not in protocol  # set twice (tiny), so no one comment fits its value
    text = config_listing.listing(configs.ern.get_config("tiny"), "configs/ern.py:tiny")
    assert "data.roi = 'brain'" in text.splitlines()
