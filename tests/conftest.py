"""Shared test setup: 4 fake CPU devices, the real-data folder, one persistent compilation cache."""

import os
import tempfile
from pathlib import Path

# Must happen before JAX initialises its backends: the parallel tests shard over these 4 devices.
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=4")
# Set before any ernjax module is imported: `--compilation_cache_dir` takes its default from it.
os.environ["ERNJAX_CACHE_DIR"] = tempfile.mkdtemp(prefix="ernjax-tests-jax-cache-")

import jax  # noqa: E402
import pytest  # noqa: E402
from jax.experimental.compilation_cache import compilation_cache  # noqa: E402

jax.config.update("jax_num_cpu_devices", 4)

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The real MRI folders of ../shared/data; skips the test when they are not on this machine."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real MRI not found at {SHARED_DATA} (see README: Tests)")
    return SHARED_DATA


@pytest.fixture(scope="session", autouse=True)
def compile_cache():
    """One persistent compilation cache for the whole test session, its subprocesses included.

    Many tests train the same tiny configs; each program then compiles once per session instead of
    once per test or module. Subprocesses (the command-line tests) and in-process commands find it
    through $ERNJAX_CACHE_DIR, the default of every command's `--compilation_cache_dir`, so no test
    writes to the user's ~/.cache.
    """
    path = Path(os.environ["ERNJAX_CACHE_DIR"])
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
    compilation_cache.set_cache_dir(str(path))
    compilation_cache.reset_cache()
    yield path
    compilation_cache.reset_cache()
    jax.config.update("jax_compilation_cache_dir", None)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 1.0)


def pytest_configure(config):
    """Registers the `slow` marker: simulations of a few seconds to a minute. CI runs them (its
    command deselects nothing); `-m "not slow"` leaves them out while working."""
    config.addinivalue_line("markers", "slow: a simulation study (CI runs it; -m 'not slow' skips)")
