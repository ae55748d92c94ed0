"""JAX's persistent compilation cache for every command: a program compiled once on this machine (an init, a train
step, an evaluation) is read back by the next command that compiles the same program, with the same jax and flags,
instead of compiled again. The cache lives in ~/.cache/lm/jax, or where JAX_COMPILATION_CACHE_DIR says."""

import os

DEFAULT_DIR = "~/.cache/lm/jax"


def enable() -> None:
    """Turns the cache on in DEFAULT_DIR for every program, however quick to compile (JAX's own defaults keep only
    those over a second), unless JAX_COMPILATION_CACHE_DIR is set: then JAX's settings stand as given."""
    if "JAX_COMPILATION_CACHE_DIR" in os.environ:
        return
    import jax  # here, not above: commands that never compile (sweeps, plots) never load JAX

    jax.config.update("jax_compilation_cache_dir", os.path.expanduser(DEFAULT_DIR))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
