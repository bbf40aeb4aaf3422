"""Orbax's noise while a run checkpoints, dropped only while checkpoints are in use.

Orbax logs several INFO lines per save, which would bury the training progress. A full disk (or
quota) during a save is reported by each of Orbax's background threads, and each write TensorStore
still had in flight when Orbax closed its event loop reports "Event loop is closed" (about 1,100
traceback lines for a small model); `ernjax.checkpoints.Checkpointer` raises that one error once
instead, and its echoes are dropped here.

Orbax logs through absl's one logger (it has no logger of its own), so the filter sits on that
logger, and asyncio's, and passes every record that is neither Orbax's nor a full disk's echo. It
and the unraisable hook are installed only inside `quiet()` (a `Checkpointer` holds it while
open): importing ernjax changes no logging.
"""

import contextlib
import functools
import logging
import sys
import threading
import types

from ernjax.errors import disk_full_reason


class _QuietOrbax(logging.Filter):
    """Drops Orbax's INFO lines, its warning on saves without metrics, and full-disk reports.

    Orbax logs several INFO lines per save, which would bury the training progress; its other
    warnings and errors still show. Mid-epoch steps carry no metrics by design. A full disk is
    logged with a traceback by each Orbax thread that saw it, and by asyncio for each write task
    left behind ("Task exception was never retrieved"): `Checkpointer` raises it once instead.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        orbax = "/orbax/" in record.pathname.replace("\\", "/")
        if orbax and record.levelno < logging.WARNING:
            return False
        if (orbax or record.name == "asyncio") and _reports_full_disk(record):
            return False
        return "did not provide metrics" not in record.getMessage()


def _reports_full_disk(record: logging.LogRecord) -> bool:
    exc = record.exc_info[1] if record.exc_info else None
    return bool(disk_full_reason(exc) or disk_full_reason(record.getMessage()))


def _quiet_unraisable(unraisable, previous) -> None:
    """Drops the echoes of a failed save that Python reports as unraisable; passes on the rest.

    When one write of a save fails, Orbax closes the event loop of that save while TensorStore's
    other writes are still running; as each finishes, TensorStore's callback finds the loop
    closed ("RuntimeError: Event loop is closed", one traceback per write). At exit, Python then
    closes Orbax's abandoned write coroutines, whose clean-up fails on the half torn-down
    interpreter. Neither says anything the first error did not.
    """
    exc, obj = unraisable.exc_value, unraisable.object
    tb = unraisable.exc_traceback
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    closed_loop = (
        isinstance(exc, RuntimeError)
        and str(exc) == "Event loop is closed"
        and tb is not None
        and tb.tb_frame.f_code.co_name == "_check_closed"
    )
    abandoned = isinstance(obj, types.CoroutineType) and "/orbax/" in obj.cr_code.co_filename
    if not (closed_loop or abandoned):
        previous(unraisable)


class _Installed:
    """The filter and the hook, installed while anyone is inside `quiet()` (counted)."""

    def __init__(self):
        self._lock, self._users, self._hook = threading.Lock(), 0, None
        self._filter = _QuietOrbax()

    def acquire(self) -> None:
        with self._lock:
            self._users += 1
            if self._users == 1:
                for name in ("absl", "asyncio"):
                    logging.getLogger(name).addFilter(self._filter)
                self._hook = functools.partial(_quiet_unraisable, previous=sys.unraisablehook)
                sys.unraisablehook = self._hook

    def release(self) -> None:
        with self._lock:
            self._users -= 1
            if self._users == 0:
                for name in ("absl", "asyncio"):
                    logging.getLogger(name).removeFilter(self._filter)
                if sys.unraisablehook is self._hook:  # else another hook was put on top of it
                    sys.unraisablehook = self._hook.keywords["previous"]


_INSTALLED = _Installed()


@contextlib.contextmanager
def quiet():
    """A block in which Orbax's INFO lines and the echoes of a full disk are dropped.

    Blocks may nest and overlap across threads; the filters go when the last one ends.
    """
    _INSTALLED.acquire()
    try:
        yield
    finally:
        _INSTALLED.release()
