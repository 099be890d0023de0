"""The persistent compilation cache: a process's first fit loads the compiled solve from disk.

Compiling the block solve is most of a first fit. JAX can keep compiled executables on disk
and load them in any later process that compiles the same program (same shapes, bucketed by
``distglm.core.fit``, same configuration, same JAX and XLA flags). distglm turns this cache on
for its in-memory estimators and for its Ray actors alike, at the first fit of a process.

Where the cache lives, first match wins:

1. JAX's own setting, if the user made one (``jax.config.update("jax_compilation_cache_dir",
   ...)`` or the ``JAX_COMPILATION_CACHE_DIR`` environment variable): distglm leaves it alone;
2. the ``DISTGLM_COMPILATION_CACHE`` environment variable; set to the empty string, it turns
   distglm's cache off;
3. ``$XDG_CACHE_HOME/distglm/xla``, by default ``~/.cache/distglm/xla``.
"""

from __future__ import annotations

import os

__all__ = ["ENV_VAR", "default_cache_dir", "enable_compilation_cache"]

ENV_VAR = "DISTGLM_COMPILATION_CACHE"

# Compilations shorter than this are not written: the small host-side programs would fill the
# cache and cost more to load than to compile.
_MIN_COMPILE_SECONDS = 0.1


def default_cache_dir() -> str:
    """``$XDG_CACHE_HOME/distglm/xla``, or ``~/.cache/distglm/xla``."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "distglm", "xla")


def enable_compilation_cache() -> str | None:
    """Turn JAX's persistent compilation cache on, unless the user configured it; idempotent.

    Returns
    -------
    str or None
        The cache directory in use, or None when the cache is off.

    Examples
    --------
    >>> from distglm.compile_cache import enable_compilation_cache
    >>> path = enable_compilation_cache()  # the directory in use, or None when turned off
    """
    import jax

    configured = jax.config.jax_compilation_cache_dir
    if configured:
        return configured
    path = os.environ.get(ENV_VAR, default_cache_dir())
    if not path:
        return None
    jax.config.update("jax_compilation_cache_dir", path)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", _MIN_COMPILE_SECONDS)
    return path
