"""What a run shows while it trains: console progress lines and TensorBoard event files."""

import math
import struct
import time
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path

import jax
import optax
from absl import logging

from ernjax.errors import disk_full_reason
from ernjax.progress import clock


class Writer:
    """TensorBoard event files via tensorboardX (no TensorFlow), written by process 0 only."""

    def __init__(self, logdir: Path):
        self._w, self.logdir = None, logdir
        if jax.process_index() == 0:
            from tensorboardX import SummaryWriter

            self._w = SummaryWriter(str(logdir))

    def scalars(self, step: int, values: dict) -> None:
        """Writes {tag: value} at `step`."""
        if self._w is not None:
            for k, v in values.items():
                self._w.add_scalar(k, v, step)

    def flush(self) -> None:
        """Writes the buffered events to disk (so that `read_scalars` sees them all)."""
        if self._w is not None:
            self._w.flush()

    def image(self, tag: str, png, step: int) -> None:
        """Writes a PNG file as an image at `step` (TensorBoard's Images tab)."""
        if self._w is not None:
            from matplotlib import image as mpimg

            pixels = mpimg.imread(str(png))[..., :3]  # RGBA floats in [0, 1]
            self._w.add_image(tag, pixels, step, dataformats="HWC")

    def text(self, tag: str, text: str) -> None:
        """Writes a text summary (shown as code) at step 0."""
        if self._w is not None:
            # Indented by four spaces: TensorBoard renders text as Markdown, this as code.
            self._w.add_text(tag, "\n".join("    " + line for line in text.splitlines()), 0)

    def close(self) -> None:
        """Flushes and closes the event file; a full disk loses the last events with a warning."""
        if self._w is None:
            return
        try:
            self._w.close()
        except OSError as e:
            reason = disk_full_reason(e)
            if reason is None:
                raise
            # Only the last events are lost; the run's own error (a checkpoint or an output on
            # the same disk) is the one to show. tensorboardX's thread is stopped and its writer
            # marked closed, or its exit hook retries the flush and prints the error again.
            logging.warning(
                "TensorBoard events in %s: the last ones are lost (%s)", self.logdir, reason
            )
            events = self._w.file_writer.event_writer
            events._worker.stop()
            events._closed = True


def read_events(logdir) -> Iterator:
    """The events of a run's TensorBoard files (tensorboardX's protobuf), file by file.

    Reads the TFRecord framing (length, its CRC, the event, its CRC), so no TensorFlow or
    TensorBoard is needed. A file cut short by a killed run ends where its last whole event does.
    """
    from tensorboardX.proto import event_pb2

    for path in sorted(Path(logdir).glob("events.out.tfevents.*")):
        data, pos = path.read_bytes(), 0
        while pos + 12 <= len(data):
            (n,) = struct.unpack("<Q", data[pos : pos + 8])
            if pos + 12 + n + 4 > len(data):
                break
            yield event_pb2.Event.FromString(data[pos + 12 : pos + 12 + n])
            pos += 12 + n + 4


def read_scalars(logdir) -> dict[str, list[tuple[int, float]]]:
    """The scalars of a run's TensorBoard files: {tag: [(step, value), ...]} by step."""
    out = defaultdict(list)
    for event in read_events(logdir):
        for v in event.summary.value:
            if v.HasField("simple_value"):
                out[v.tag].append((int(event.step), float(v.simple_value)))
    return {tag: sorted(values) for tag, values in out.items()}


class StepLog:
    """Console progress with throughput and ETA, and the train scalars for TensorBoard."""

    def __init__(
        self,
        writer: Writer,
        schedule: optax.Schedule,
        *,
        batch_size: int,
        steps_per_epoch: int,
        total_steps: int,
        step: int,
        clock=time.perf_counter,
    ):
        """Starts timing at `step` (0, or the step a run resumed from).

        Args:
          writer: where the train scalars go.
          schedule: the learning-rate schedule (its value is logged).
          batch_size: the global batch (for examples per second).
          steps_per_epoch: train steps per epoch (for the epoch shown).
          total_steps: the run's last step (for the ETA).
          step: the step training starts from.
          clock: seconds (tests pass a fake clock).
        """
        self.writer, self.schedule, self.batch_size = writer, schedule, batch_size
        self.steps_per_epoch, self.total_steps = steps_per_epoch, total_steps
        self.clock = clock
        self.step, self.time = step, clock()
        # (step, time) where the rates and the ETA start: `started` after the first step, which
        # compiles (minutes on a CPU), else the first log.
        self.ref = None

    def started(self, step: int) -> None:
        """Marks the end of the warm-up (the first step, compiled): rates count from here."""
        self.restart_interval(step)
        self.ref = (step, self.time)

    def steps_per_second(self, step: int) -> float:
        """Mean rate since the warm-up (`started`, else the first log); NaN before."""
        if self.ref is None or step <= self.ref[0]:
            return math.nan
        return (step - self.ref[0]) / max(self.clock() - self.ref[1], 1e-9)

    def restart_interval(self, step: int) -> None:
        """Starts the next throughput interval now (the ETA still counts all time)."""
        self.step, self.time = step, self.clock()

    def log(self, step: int, values: dict) -> None:
        """Logs one line and writes the train scalars of `values` ({"loss", "grad_norm"})."""
        now = self.clock()
        if self.ref is None:  # nothing marked the warm-up: its time would be in the rate
            self.ref = (step, now)
        scalars = {
            "loss": values["loss"],
            "grad_norm": values["grad_norm"],
            "learning_rate": float(self.schedule(step - 1)),
        }
        if step > self.step:  # none at the first log after the warm-up's mark (its own step)
            scalars["examples_per_second"] = (
                (step - self.step) * self.batch_size / max(now - self.time, 1e-9)
            )
        shown = ", ".join(f"{k} {v:.4g}" for k, v in scalars.items())
        epoch = (step - 1) // self.steps_per_epoch + 1
        epochs = math.ceil(self.total_steps / self.steps_per_epoch)
        eta = clock((self.total_steps - step) / self.steps_per_second(step))
        total = self.total_steps
        logging.info("step %d/%d (epoch %d/%d): %s, ETA %s", step, total, epoch, epochs, shown, eta)
        self.writer.scalars(step, {f"train/{k}": v for k, v in scalars.items()})
        self.step, self.time = step, now
