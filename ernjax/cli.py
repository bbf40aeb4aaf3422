"""What every command line entry point shares: `cli.run(main)` in place of `absl.app.run(main)`.

- Errors in one paragraph (`ernjax.errors` says which errors are the user's): flags that do not
  parse, an unknown config field (with the field meant), a value of the wrong type, a missing
  config file, exit status 2; bad input, exit status 1 (`errors.one_line_errors`, which wraps
  `main`). `--verbose_errors` shows their traceback; a bug always shows it.
- `--help` exits 0 (absl's exits 1) and says how to list the config fields: `--print_config`
  prints every field of the resolved config (the `--config` file with the `--config.x.y=value`
  overrides) with its comment, and exits 0 (`ernjax.config_listing`).
- The libraries' own chatter is kept out of the run's log (`quiet_library_logs`).
- JAX's persistent compilation cache is on (`--compilation_cache_dir`, `ernjax.compile_cache`).
"""

import logging
import re
import sys

from absl import app, flags
from ml_collections.config_flags import config_flags

from ernjax import compile_cache, config_listing, errors

FLAGS = flags.FLAGS
PRINT_CONFIG = flags.DEFINE_bool(
    "print_config",
    False,
    "Print every config field with its value (the --config file with the --config.x.y=value "
    "overrides given) and its comment from ernjax/defaults.py and the config file, then exit.",
)
_HELP = ("help", "helpshort", "helpfull", "helpxml", "?")
CONFIG_HINT = (
    "List the config fields with their values and comments: add --print_config to the command "
    "(after --config=FILE and any --config.x.y=value overrides)."
)


def run(main) -> None:
    """Runs an absl `main(argv)` as every ernjax command does (see the module docstring)."""
    quiet_library_logs()
    shared = ("verbose_errors", "compilation_cache_dir", "print_config")
    for name in shared[: 3 if _config_flags() else 2]:
        # Listed by --help with the command's own flags (absl lists the main module's).
        FLAGS.register_key_flag_for_module(sys.argv[0], FLAGS[name])

    def cached_main(argv):
        compile_cache.enable(compile_cache.CACHE_DIR.value)
        return main(argv)

    app.run(errors.one_line_errors(cached_main), flags_parser=parse_flags)


def parse_flags(argv: list[str]) -> list[str]:
    """Parses the flags as absl does, but with one-paragraph errors and `--help` exiting 0.

    `--print_config` prints the config listing and exits 0.

    Returns:
      The arguments left after the flags (absl's `main(argv)` argument).
    """
    try:
        args = FLAGS(argv)
    except SystemExit as e:
        if e.code == 1 and _asked_for_help(argv):  # absl exits 1 after printing the help
            if _config_flags():
                print(f"\n{CONFIG_HINT}")
            print("Errors are one paragraph; --verbose_errors adds their traceback.")
            sys.exit(0)
        raise
    except flags.Error as e:
        _usage_error(_flag_message(str(e)))
    except (AttributeError, KeyError) as e:  # ml_collections: an override of no such field
        _usage_error(_unknown_field_message(e, argv))
    for name in _config_flags():
        _check_loaded(name)
        _check_tuples(name)
    if PRINT_CONFIG.value:
        _print_config()
    return args


def _asked_for_help(argv) -> bool:
    for arg in argv[1:]:
        if arg == "--":
            return False
        if arg.startswith("-") and arg.lstrip("-").split("=", 1)[0] in _HELP:
            return True
    return False


def _config_flags() -> list[str]:
    """The names of the command's config flags (`--config`; none for predict or report)."""
    return [name for name in FLAGS if config_flags.is_config_flag(FLAGS[name])]


def _usage_error(message: str) -> None:
    """Ends a command line that is wrong: one paragraph, exit status 2 (or the traceback)."""
    hint = "--help lists the flags"
    if _config_flags() and "--config" in message:
        hint = "--print_config lists the config fields and their values"
    errors.print_error(f"{message} ({hint})")
    if errors.verbose():
        raise  # noqa: PLE0704 (called from an except block: the error being handled)
    sys.exit(errors.USAGE)


def _flag_message(text: str) -> str:
    """The flag error absl gives, without Python's wording of a failed conversion."""
    text = re.sub(
        r"invalid literal for int\(\) with base 10: (.*)", r"expected an integer, got \1", text
    )
    return re.sub(r"could not convert string to float: (.*)", r"expected a number, got \1", text)


def _unknown_field_message(error: BaseException, argv) -> str:
    """`--config.train.num_epoch=3: no config field train.num_epoch; did you mean ...?`."""
    text = error
    while isinstance(text, BaseException) and text.args:
        text = text.args[0]  # AttributeError(KeyError("'num_epoch'\nDid you mean ..."))
    text = str(text)
    key = re.match(r"'([^']*)'", text)
    key = key.group(1) if key else text.splitlines()[0]
    meant = re.search(r'Did you mean "([^"]+)"', text)
    for arg in argv[1:]:
        m = re.match(r"-{1,2}(?:no)?(\w+)\.([\w.]+)", arg)
        if m and m.group(1) in _config_flags() and key in m.group(2).split("."):
            fields = m.group(2).split(".")
            where = ".".join(fields[: fields.index(key)])
            said = f"{arg}: {m.group(1)}{'.' + where if where else ''} has no field {key!r}"
            if meant:
                fields[fields.index(key)] = meant.group(1)
                said += f"; did you mean --{m.group(1)}.{'.'.join(fields)}?"
            return said
    return f"no config field {key!r}" + (f"; did you mean {meant.group(1)!r}?" if meant else "")


def _check_loaded(name: str) -> None:
    """A config file that failed to load: one paragraph now, not a traceback in `main`.

    ml_collections keeps the error of a file it could not find until the config is first read.
    """
    try:
        FLAGS[name].value.get("seed")  # any read raises the kept error
    except OSError as e:
        path = _config_file(name)
        missing = "No such file or directory" in str(e)
        problem = "no such config file" if missing else f"cannot load it ({e})"
        errors.print_error(f"--{name}={path}: {problem} (e.g. --{name}=configs/ern.py)")
        if errors.verbose():
            raise
        sys.exit(errors.USAGE)


def _check_tuples(name: str) -> None:
    """`--config.data.shape=abc`: a tuple of numbers given words, one paragraph (exit 2).

    ml_collections checks a scalar override's type but reads any tuple, `('abc',)`, which would
    fail deep in the run (after the synthetic cohort is written). The default (the config file
    without the overrides) says which tuples hold numbers.
    """
    overrides = config_flags.get_override_values(FLAGS[name])
    if not overrides:
        return
    file = _config_file(name)
    default = FLAGS[name].parser.parse(file)
    for path, value in overrides.items():
        was = _get(default, path)
        if _numbers(was) and isinstance(value, tuple) and not _numbers(value):
            example = ",".join(str(v) for v in was)
            errors.print_error(
                f"--{name}.{path}={','.join(map(str, value))}: config.{path} is a tuple of "
                f"numbers, e.g. --{name}.{path}={example} "
                "(--print_config lists the config fields and their values)"
            )
            sys.exit(errors.USAGE)


def _get(config, path: str):
    for key in path.split("."):
        config = config.get(key) if hasattr(config, "get") else None
    return config


def _numbers(value) -> bool:
    """Whether `value` is a non-empty tuple of numbers (not of bools)."""
    return (
        isinstance(value, tuple)
        and bool(value)
        and all(isinstance(v, int | float) and not isinstance(v, bool) for v in value)
    )


def _print_config() -> None:
    """Prints each config flag's listing (`ernjax.config_listing`) and exits 0."""
    names = _config_flags()
    if not names:
        errors.print_error("this command has no --config (it reads a run's own config)")
        sys.exit(errors.USAGE)
    for name in names:
        print(config_listing.listing(FLAGS[name].value, _config_file(name)))
    sys.exit(0)


def _config_file(name: str) -> str:
    """The `--NAME` config file as given (`configs/ern.py:tiny`); "" for a config dict flag."""
    try:
        return FLAGS[name].config_filename
    except (AttributeError, flags.Error):
        return ""


# ----------------------------------------------------------------------------- quiet logs
class _Drop(logging.Filter):
    """Drops the log records `noise(record)` says are the libraries' chatter."""

    def __init__(self, noise):
        super().__init__()
        self._noise = noise

    def filter(self, record: logging.LogRecord) -> bool:
        return not self._noise(record)


def _jax_noise(record: logging.LogRecord) -> bool:
    # Every CPU or GPU machine: JAX tries the TPU backend first and says it found none.
    return record.getMessage().startswith("Unable to initialize backend 'tpu'")


_CHATTY = ("/tensorflow_datasets/", "/orbax/")  # libraries whose INFO lines say nothing to a user
_TFDS_WARNINGS = ("Using custom data configuration",)  # every build of our own builder says it


def _library_noise(record: logging.LogRecord) -> bool:
    path = record.pathname.replace("\\", "/")
    if not any(p in path for p in _CHATTY):
        return False
    if record.levelno <= logging.INFO:
        return True  # "Load dataset info from ..." (once per reader thread), "Generating ..."
    return record.levelno == logging.WARNING and record.getMessage().startswith(_TFDS_WARNINGS)


def quiet_library_logs() -> None:
    """Keeps JAX's, TFDS's and Orbax's routine chatter out of the log; their warnings stay.

    Filters, not levels: JAX's and the absl logger's other lines (the run's own INFO lines go
    through absl too) are kept. TFDS's "Downloading and preparing" / "downloaded and prepared"
    lines are prints, silenced in `ernjax.data.builder.Builder`.
    """
    for name, noise in (("jax._src.xla_bridge", _jax_noise), ("absl", _library_noise)):
        logger = logging.getLogger(name)
        if not any(isinstance(f, _Drop) for f in logger.filters):
            logger.addFilter(_Drop(noise))
