"""Output files written whole or not at all: a temporary name in the same folder, then a rename.

Every output of ernjax (results, predictions, tables, reports, QC pages, figures, NIfTI maps)
goes through `atomic_path` or one of its conveniences, so a run that fails (an exception, a full
disk, a kill) leaves each file either as it was or complete, never cut mid-row. `staged()` goes
one step further for a set of files that belong together, such as a run's predictions and its
results.json: they are all renamed into place at the end of the block, or none is.

Temporary names are hidden and end with the final name (`.tmp-<pid>-<token>-results.json`), so
writers that infer the format from the extension (nibabel, matplotlib) still see it.
"""

import contextlib
import contextvars
import os
import secrets
from collections.abc import Iterator
from pathlib import Path

from ernjax.errors import NoSpaceError, disk_full_reason

# The (temporary, final) renames of the innermost `staged()` block, or None outside one.
_STAGE: contextvars.ContextVar[list | None] = contextvars.ContextVar("ernjax_stage", default=None)


def temp_name(path) -> Path:
    """A fresh hidden name beside `path` that ends with its name (same folder: rename is atomic)."""
    path = Path(path)
    return path.with_name(f".tmp-{os.getpid()}-{secrets.token_hex(4)}-{path.name}")


@contextlib.contextmanager
def atomic_path(path, *, fsync: bool = False) -> Iterator[Path]:
    """Yields a temporary path to write instead of `path`; renamed to `path` when the block ends.

    Args:
      path: the output file; its folder is created.
      fsync: flush the file to the disk before the rename (survives a power cut, costs a sync).

    Yields:
      The temporary path, in the same folder. If the block raises, it is removed and `path`
      keeps its previous content (or stays absent). Inside `staged()` the rename waits for the
      end of that block.

    Raises:
      NoSpaceError: the disk (or quota) was full; the message names `path`.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_name(path)
    try:
        yield tmp
        if fsync:
            _fsync(tmp)
    except BaseException as e:
        tmp.unlink(missing_ok=True)
        reason = disk_full_reason(e)
        if reason and not isinstance(e, NoSpaceError):
            raise NoSpaceError(str(path), reason, " (the previous outputs are unchanged)") from e
        raise
    stage = _STAGE.get()
    if stage is None:
        os.replace(tmp, path)
    else:
        stage.append((tmp, path))


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_text(path, text: str, *, fsync: bool = False) -> Path:
    """Writes `text` (UTF-8) to `path` atomically; returns `path`."""
    with atomic_path(path, fsync=fsync) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


def write_bytes(path, data: bytes, *, fsync: bool = False) -> Path:
    """Writes `data` to `path` atomically; returns `path`."""
    with atomic_path(path, fsync=fsync) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def save_figure(fig, path, **savefig_kwargs) -> Path:
    """`fig.savefig` to `path` atomically, the format taken from the final name (".png": PNG)."""
    path = Path(path)
    fmt = path.suffix.lstrip(".").lower() or "png"
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format=fmt, **savefig_kwargs)
    return path


@contextlib.contextmanager
def staged() -> Iterator[None]:
    """Defers the renames of every `atomic_path` in the block to its end: all files or none.

    Files are renamed in the order they were written, and the previous version of the LAST one
    is removed before the first rename: write the file that says a set is complete last
    (results.json of a run). A failure in the block leaves every previous file untouched and
    removes the temporary ones; a kill during the few renames at the end leaves that last file
    absent, never beside a mix of old and new files. A nested block joins the outer one.

    Files written in the block are not in place until it ends: do not read them back inside it,
    nor run code there that does (e.g. preprocessing, which writes and then reads its outputs).
    """
    if _STAGE.get() is not None:
        yield
        return
    pending: list[tuple[Path, Path]] = []
    token = _STAGE.set(pending)
    try:
        yield
    except BaseException:
        _discard(pending)
        raise
    finally:
        _STAGE.reset(token)
    try:
        if pending:
            pending[-1][1].unlink(missing_ok=True)
        while pending:
            os.replace(*pending[0])
            pending.pop(0)
    finally:
        _discard(pending)


def _discard(pending: list[tuple[Path, Path]]) -> None:
    for tmp, _ in pending:
        tmp.unlink(missing_ok=True)
