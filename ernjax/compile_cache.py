"""JAX's persistent compilation cache, on by default for every command.

XLA compiles each program (the train step, the evaluation step, Grad-CAM) once per process; a
second run, the next fold of `crossval` or the next run of `compare` then compiles again, which on
a CPU takes minutes. With the cache, a program compiled once is read back from disk instead
(JAX's own cache: keyed by the program, the JAX/XLA versions and the device, so a changed model or
setting compiles anew, and it is safe to share between runs and processes).

The folder is `--compilation_cache_dir` (every command's flag; "" turns the cache off), by default
$ERNJAX_CACHE_DIR, else $XDG_CACHE_HOME/ernjax/jax, else ~/.cache/ernjax/jax. Deleting it only
costs the next compile.
"""

import os
from pathlib import Path

import jax
from absl import flags, logging


def default_dir() -> str:
    """$ERNJAX_CACHE_DIR, else $XDG_CACHE_HOME/ernjax/jax, else ~/.cache/ernjax/jax."""
    if os.environ.get("ERNJAX_CACHE_DIR"):
        return os.environ["ERNJAX_CACHE_DIR"]
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return str(Path(base) / "ernjax" / "jax")


CACHE_DIR = flags.DEFINE_string(
    "compilation_cache_dir",
    default_dir(),
    "Folder of JAX's persistent compilation cache, so that reruns, folds and the runs of a "
    'comparison do not compile again; "" turns it off.',
)


def enable(directory: str | None) -> str | None:
    """Points JAX's persistent compilation cache at `directory` ("" or None: leaves it off).

    Returns:
      The folder in use, or None when the cache is off or the folder cannot be created (then
      the run compiles as without a cache, and the log says why).
    """
    if not directory:
        return None
    path = Path(directory).expanduser()
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        logging.warning("compilation cache off: cannot create %s (%s)", path, e.strerror)
        return None
    jax.config.update("jax_compilation_cache_dir", str(path))
    logging.info("compilation cache: %s", path)
    return str(path)
