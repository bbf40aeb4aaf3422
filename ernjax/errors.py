"""Errors worded for a clinician-researcher: bad input data, and a full disk."""

import errno
import functools
import sys


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
    """Wraps a command's `main`: bad input or a full disk ends it with one line and exit status 1.

    Every command line entry point runs through it (`python -m ernjax.main`, `.predict`,
    `.crossval`, `.compare`, `.preprocess`, `.data.synthetic`). An `InputError` names the
    subject, the file and the problem, and a full disk what was being written where: a traceback
    through TFDS, Orbax or the trainer would only bury that last line. Other errors (bugs, a
    config that makes no sense) keep their traceback.

    Args:
      main: the entry point, e.g. an absl `main(argv)`.

    Returns:
      `main` with the same arguments, exiting with "ernjax: <message>" on such errors.
    """

    @functools.wraps(main)
    def wrapped(*args, **kwargs):
        try:
            return main(*args, **kwargs)
        except InputError as e:
            sys.exit(f"ernjax: {e}")
        except OSError as e:
            if disk_full_reason(e) is None:
                raise
            sys.exit(f"ernjax: {e}")

    return wrapped
