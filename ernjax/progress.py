"""Progress of the long steps: counts done of total, rate, ETA and elapsed time.

On a terminal (the stream is a tty) one line is redrawn in place; in a log file plain lines come
every `every` items or every `interval_s` seconds, whichever comes first; a last line gives the
total time either way. The rate, and the ETA from it, count only the items done after the first
update: a first item that also compiles, loads a template or starts worker processes would
otherwise stretch the ETA of the whole step.

    with Meter("synthetic cohort", 60, unit="subject") as meter:
        for ...:
            ...
            meter.update()
"""

import logging
import math
import sys
import threading
import time

_logger = logging.getLogger(__name__)


def clock(seconds: float) -> str:
    """`seconds` as H:MM:SS (hours unbounded), "--:--:--" when unknown (NaN or infinite)."""
    if not math.isfinite(seconds):
        return "--:--:--"
    s = int(round(max(seconds, 0.0)))
    return f"{s // 3600:02d}:{s // 60 % 60:02d}:{s % 60:02d}"


class Meter:
    """Counts items done of a known total and shows the progress (see the module docstring).

    Updates may come from several threads (e.g. a process pool's done-callbacks).
    """

    def __init__(
        self,
        what: str,
        total: int,
        *,
        unit: str = "item",
        every: int | None = None,
        interval_s: float = 20.0,
        stream=None,
        tty: bool | None = None,
        log=None,
        clock_fn=time.monotonic,
        warmup: bool = True,
    ):
        """Starts the clock.

        Args:
          what: the step, as the lines begin ("synthetic cohort").
          total: the items to do.
          unit: one item, singular ("subject"); counts add an "s".
          every: in a log, a line every this many items (default: a tenth of the total;
            the total: lines only every `interval_s`).
          interval_s: in a log, a line at least this often (seconds) while items finish.
          stream: where a terminal's line is drawn (default sys.stderr).
          tty: draw one updating line (default: whether `stream` is a terminal); else log lines.
          log: takes each plain line (default: this module's logger, INFO).
          clock_fn: seconds, monotonic (tests pass a fake clock).
          warmup: leave the first update out of the rate (it compiles, loads, starts workers);
            False counts from the start.
        """
        self.what, self.total, self.unit = what, int(total), unit
        self.every = every or max(1, math.ceil(self.total / 10))
        self.interval_s = interval_s
        self.stream = sys.stderr if stream is None else stream
        self.tty = _isatty(self.stream) if tty is None else tty
        self.log = log or _logger.info
        self.clock = clock_fn
        self.done, self.start = 0, clock_fn()
        # (done, time) the rate counts from: after the first update, or the start.
        self.first = None if warmup else (0, self.start)
        self._shown = (0, self.start)  # (done, time) of the last line or redraw
        self._width = 0  # of the terminal line drawn last, to blank it when done
        self._closed = False
        self._lock = threading.Lock()

    def __enter__(self) -> "Meter":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def rate(self) -> float:
        """Items per second after the first update (or the start); NaN until then."""
        if self.first is None or self.done <= self.first[0]:
            return math.nan
        return (self.done - self.first[0]) / max(self.clock() - self.first[1], 1e-9)

    def eta(self) -> float:
        """Seconds left at `rate`; NaN while it is unknown."""
        rate = self.rate()
        return (self.total - self.done) / rate if rate > 0 else math.nan

    def elapsed(self) -> float:
        """Seconds since the start."""
        return self.clock() - self.start

    def update(self, n: int = 1) -> None:
        """Counts `n` more items done and shows the progress when it is time to."""
        with self._lock:
            now = self.clock()
            self.done += n
            if self.first is None:
                self.first = (self.done, now)
            if self.tty:
                if self.done >= self.total or now - self._shown[1] >= 0.2:
                    self._draw(self.bar_line(), now)
            elif self._log_due(now):
                self.log(self.line())
                self._shown = (self.done, now)

    def _log_due(self, now: float) -> bool:
        if self.done >= self.total:  # close() says it, with the total time
            return False
        return self.done - self._shown[0] >= self.every or now - self._shown[1] >= self.interval_s

    def _draw(self, text: str, now: float) -> None:
        pad = " " * max(0, self._width - len(text))
        # The cursor goes back to the line's start: a log line written meanwhile (to the same
        # terminal) then overwrites the bar instead of running on after it.
        self.stream.write("\r" + text + pad + "\r")
        self.stream.flush()
        self._width, self._shown = len(text), (self.done, now)

    def line(self) -> str:
        """The plain progress line: counts, rate, elapsed time and ETA."""
        head = f"{self.what}: {self.done}/{self.total} {self.unit}s"
        if math.isnan(self.rate()):  # one update so far: how long it took
            return f"{head}, the first in {clock(self.elapsed())}"
        times = f"elapsed {clock(self.elapsed())}, ETA {clock(self.eta())}"
        return f"{head}, {self._rate_text()}, {times}"

    def bar_line(self, width: int = 20) -> str:
        """The terminal line: a bar, counts, rate and ETA."""
        filled = int(width * self.done / self.total) if self.total else width
        bar = "#" * filled + "." * (width - filled)
        rate = self._rate_text() if not math.isnan(self.rate()) else "..."
        counts = f"{self.done}/{self.total} {self.unit}s"
        return f"{self.what} [{bar}] {counts}, {rate}, ETA {clock(self.eta())}"

    def _rate_text(self) -> str:
        rate = self.rate()
        if rate >= 1:
            return f"{rate:.3g} {self.unit}s/s"
        if rate >= 1 / 60:
            return f"{1 / rate:.3g} s/{self.unit}"
        return f"{clock(1 / rate)}/{self.unit}"

    def close(self) -> None:
        """Shows the last line: the items done and the total time (once; later calls do nothing)."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            if self.tty and self._width:
                self.stream.write("\r" + " " * self._width + "\r")  # the log line replaces it
                self.stream.flush()
            of = f"/{self.total}" if self.done != self.total else ""
            self.log(f"{self.what}: {self.done}{of} {self.unit}s in {clock(self.elapsed())}")


def _isatty(stream) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        return False
