"""The persistent compilation cache every command turns on (`ernjax.compile_cache`)."""

import jax
import jax.numpy as jnp
from jax.experimental.compilation_cache import compilation_cache

from ernjax import compile_cache


def test_a_program_compiled_once_is_read_back(tmp_path, monkeypatch):
    session_cache = jax.config.jax_compilation_cache_dir  # conftest.py's, restored below
    hits = []
    jax.monitoring.register_event_listener(
        lambda name, **kw: hits.append(name) if "cache_hits" in name else None
    )
    monkeypatch.setenv("ERNJAX_CACHE_DIR", str(tmp_path / "from_env"))
    assert compile_cache.default_dir() == str(tmp_path / "from_env")
    try:
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
        compilation_cache.reset_cache()
        assert compile_cache.enable(str(tmp_path / "cache")) == str(tmp_path / "cache")
        f = jax.jit(lambda x: jnp.tanh(x) * 3 + 1)
        f(jnp.ones(7)).block_until_ready()
        assert any((tmp_path / "cache").iterdir())  # written
        jax.clear_caches()  # what a new process starts with
        f = jax.jit(lambda x: jnp.tanh(x) * 3 + 1)
        f(jnp.ones(7)).block_until_ready()
        assert hits  # read back, not compiled again
    finally:
        compilation_cache.reset_cache()
        jax.config.update("jax_compilation_cache_dir", session_cache)


def test_an_empty_folder_name_leaves_the_cache_off(tmp_path):
    assert compile_cache.enable("") is None and compile_cache.enable(None) is None
    blocked = tmp_path / "file"
    blocked.write_text("not a folder")
    assert compile_cache.enable(str(blocked / "cache")) is None  # cannot be created: off
