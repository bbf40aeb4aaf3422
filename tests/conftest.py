"""Shared test setup: 4 fake CPU devices for the data-parallel tests, and the real-data folder."""

import os
from pathlib import Path

# Must happen before JAX initialises its backends: the parallel tests shard over these 4 devices.
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=4")

import jax  # noqa: E402
import pytest  # noqa: E402

jax.config.update("jax_num_cpu_devices", 4)

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The real MRI folders of ../shared/data; skips the test when they are not on this machine."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real MRI not found at {SHARED_DATA} (see README: Tests)")
    return SHARED_DATA
