"""Errors worded for a clinician-researcher, and which errors are the user's to fix.

User errors end a command with one paragraph on stderr, "ernjax: <what is wrong>", and no
traceback (`one_line_errors`, which every command line entry point runs through, by way of
`ernjax.cli.run`):

- exit status 2, the command line itself: a flag that does not parse, an unknown config field
  (`--config.train.num_epoch=3`, with the field meant), a value of the wrong type, a config file
  that is not there, `absl.app.UsageError` (`ernjax.cli.parse_flags` and `one_line_errors`);
- exit status 1, what the run refuses: `InputError` (bad input data, or a setting that does not
  fit the cohort: `ernjax.data.check.ConfigError` is one), a full disk or quota (`NoSpaceError`,
  `disk_full_reason`) and `PermissionError` (a file or folder the user cannot read or write).

Everything else is taken for a bug and keeps its traceback: a ValueError or KeyError from deep
inside may be either, and hiding a bug's traceback costs more than showing a user's. The flag
`--verbose_errors` shows the traceback of user errors too.
"""

import errno
import functools
import sys

from absl import app, flags

VERBOSE_ERRORS = flags.DEFINE_bool(
    "verbose_errors",
    False,
    "Show the full traceback of bad input and config errors too (they are one paragraph).",
)
USAGE = 2  # exit status: the command line is wrong (a flag, a config field or its value)
REFUSED = 1  # exit status: the run refused its input (bad data, a full disk, no permission)


class InputError(ValueError):
    """Bad input data: says which subject, which file and what is wrong.

    Attributes:
      subject: the subject ID ("" when the problem is cohort-wide).
      path: the offending file or folder ("" when none).
      problem: what is wrong, in words.
    """

    def __init__(self, subject: str, path, problem: str):
        self.subject = str(subject)
        self.path = str(path) if path else ""
        self.problem = problem
        where = [f"subject {self.subject}"] if self.subject else []
        if self.path:
            where.append(f"file {self.path}")
        super().__init__(f"{', '.join(where) or 'cohort'}: {problem}")

    def __reduce__(self):
        # Rebuilt from the three parts, not from `args` (the message alone): an error raised in a
        # records-build worker process must arrive in the parent intact, naming the subject.
        return type(self), (self.subject, self.path, self.problem)


# Full-disk errors as the libraries word them: OSError errno, or TensorStore's text (which Orbax
# checkpoints raise as ValueError: "... No space left on device [os_error_code='28']").
_FULL = {
    errno.ENOSPC: ("no space left on device", ("No space left on device", "os_error_code='28'")),
    errno.EDQUOT: ("disk quota exceeded", ("Disk quota exceeded", "os_error_code='122'")),
}


class NoSpaceError(OSError):
    """An output or checkpoint could not be written: the disk or the quota is full.

    The message is one line: what ran out, while writing what, and where.
    """

    def __init__(self, what: str, reason: str = "no space left on device", advice: str = ""):
        code = next((c for c, (r, _) in _FULL.items() if r == reason), errno.ENOSPC)
        super().__init__(code, f"{reason} while writing {what}{advice}")
        self._parts = (what, reason, advice)

    def __reduce__(self):
        # OSError's own pickling would call __init__(errno, message): keep the three parts.
        return type(self), self._parts

    def __str__(self) -> str:
        return self.strerror


def disk_full_reason(error: BaseException | str | None) -> str | None:
    """Why `error` (or its cause) failed if the disk or quota was full, else None.

    Returns "no space left on device" or "disk quota exceeded" (the wording of NoSpaceError).

    Args:
      error: an exception (its __cause__ and __context__ are searched too) or a message.
    """
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        for code, (reason, texts) in _FULL.items():
            if getattr(error, "errno", None) == code or any(t in str(error) for t in texts):
                return reason
        if isinstance(error, str):
            return None
        error = error.__cause__ or error.__context__
    return None


def one_line_errors(main):
    """Wraps a command's `main`: a user error ends it with one paragraph and a non-zero exit.

    Every command line entry point runs through it (`ernjax.cli.run` wraps absl's `main`;
    `python -m ernjax.data.synthetic` calls it directly). An `InputError` names the subject, the
    file and the problem, a full disk what was being written where: a traceback through TFDS,
    Orbax or the trainer would only bury that last line. See the module docstring for which
    errors count as the user's; any other error (a bug) keeps its traceback.

    Args:
      main: the entry point, e.g. an absl `main(argv)`.

    Returns:
      `main` with the same arguments, exiting with "ernjax: <message>" and status 1 (2 for an
      `app.UsageError`) on such errors, or re-raising them under `--verbose_errors`.
    """

    @functools.wraps(main)
    def wrapped(*args, **kwargs):
        try:
            return main(*args, **kwargs)
        except app.UsageError as e:
            _exit_or_raise(f"{e} (--help lists the flags)", USAGE)
        except InputError as e:
            _exit_or_raise(str(e), REFUSED)
        except PermissionError as e:
            # "permission denied: /path", not "[Errno 13] Permission denied: '/path'"
            where = f": {e.filename}" if e.filename else ""
            _exit_or_raise(f"{(e.strerror or str(e)).lower()}{where}", REFUSED)
        except OSError as e:
            if disk_full_reason(e) is None:
                raise
            _exit_or_raise(str(e), REFUSED)

    return wrapped


def verbose() -> bool:
    """Whether `--verbose_errors` was given (absl's flags, or argv before they are parsed)."""
    if flags.FLAGS.is_parsed():
        return VERBOSE_ERRORS.value
    return any(a in ("--verbose_errors", "--verbose_errors=true") for a in sys.argv[1:])


def _exit_or_raise(message: str, status: int) -> None:
    """Exits with "ernjax: MESSAGE" and `status`; re-raises the error being handled if verbose."""
    if verbose():
        raise  # noqa: PLE0704 (called from an except block: the error being handled)
    print_error(message)
    sys.exit(status)


def print_error(message: str) -> None:
    """Writes "ernjax: MESSAGE" to stderr as one paragraph (no blank lines inside)."""
    lines = [line.rstrip() for line in str(message).strip().splitlines() if line.strip()]
    print("ernjax: " + "\n".join(lines), file=sys.stderr, flush=True)
