"""The persistent compilation cache: a second process's first fit loads the solve, compiles nothing."""

import os
import subprocess
import sys
import textwrap

import pytest

from distglm.compile_cache import ENV_VAR, default_cache_dir

# A fresh process fits a population and reports, from JAX's own log, which programs it compiled
# (a persistent-cache miss) and which it loaded from the cache (a hit).
CHILD = textwrap.dedent("""
    import logging, sys
    import jax
    import numpy as np

    jax.config.update("jax_log_compiles", True)  # logs each persistent-cache hit
    jax.config.update("jax_explain_cache_misses", True)  # and each miss
    hits, misses = [], []

    class Listen(logging.Handler):
        def emit(self, record):
            text = record.getMessage()
            if "compilation cache hit for" in text:
                hits.append(text.split("'")[1])
            elif "COMPILATION CACHE MISS for" in text:
                misses.append(text.split("'")[1])

    logging.getLogger("jax").addHandler(Listen())
    from distglm.glm import PopulationGLM

    n_samples, seed = int(sys.argv[1]), int(sys.argv[2])
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n_samples, 4)).astype("float32")
    y = rng.poisson(np.exp(0.3 * X[:, :3] - 0.5)).astype("float32")
    PopulationGLM(regularizer="Ridge", regularizer_strength=0.1).fit(X, y)
    print("HITS", sorted(set(hits)))
    print("MISSES", sorted(set(misses)))
""")


def _fit_in_new_process(n_samples, seed, env):
    out = subprocess.run([sys.executable, "-c", CHILD, str(n_samples), str(seed)], env=env,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    lines = dict(line.split(" ", 1) for line in out.stdout.splitlines() if line.startswith(("HITS", "MISSES")))
    return eval(lines["HITS"]), eval(lines["MISSES"])


def test_second_process_loads_the_compiled_solve(tmp_path):
    cache = tmp_path / "xla"
    env = dict(os.environ, **{ENV_VAR: str(cache)})
    env.pop("JAX_COMPILATION_CACHE_DIR", None)

    hits, misses = _fit_in_new_process(900, 0, env)
    assert "jit__solve" in misses and "jit__solve" not in hits
    assert any(cache.iterdir())

    # new data of a nearby size: the same shape bucket, so the same executable
    hits, misses = _fit_in_new_process(930, 1, env)
    assert "jit__solve" in hits
    assert "jit__solve" not in misses


def test_cache_location_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert default_cache_dir() == os.path.join(str(tmp_path), "distglm", "xla")


@pytest.mark.parametrize("setting", ["user", "off"])
def test_users_own_setting_wins(setting, tmp_path):
    """JAX's own cache setting is left alone; an empty DISTGLM_COMPILATION_CACHE turns the cache off."""
    code = textwrap.dedent("""
        import jax, sys
        from distglm.compile_cache import enable_compilation_cache
        print(enable_compilation_cache(), jax.config.jax_compilation_cache_dir)
    """)
    env = dict(os.environ)
    env.pop("JAX_COMPILATION_CACHE_DIR", None)
    if setting == "user":
        env["JAX_COMPILATION_CACHE_DIR"] = str(tmp_path / "mine")
        env[ENV_VAR] = str(tmp_path / "ours")
        expected = f"{tmp_path / 'mine'} {tmp_path / 'mine'}"
    else:
        env[ENV_VAR] = ""
        expected = "None None"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == expected


# A process that holds an actor's first solve turn (the one that compiles) for a while.
HOLDER = textwrap.dedent("""
    import sys, time
    from distglm.actor import _SolveTurns

    turns = _SolveTurns(sys.argv[1])
    with turns as turn:
        print("holding", turn, flush=True)
        time.sleep(float(sys.argv[2]))
""")


def test_actors_of_one_machine_compile_one_at_a_time(monkeypatch, tmp_path):
    # the first actor compiles and fills the cache; the next waits, then loads from the cache
    import time

    from distglm import actor

    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(tmp_path), "1.5"], stdout=subprocess.PIPE,
                              text=True)
    try:
        assert holder.stdout.readline().split() == ["holding", "0"]
        turns = actor._SolveTurns(str(tmp_path))
        t0 = time.monotonic()
        with turns as turn:
            waited = time.monotonic() - t0
        assert turn == 0 and 1.0 <= waited < 30, waited
        # later turns compile nothing: they never wait for another process
        holder.wait(timeout=60)
        holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(tmp_path), "30"], stdout=subprocess.PIPE,
                                  text=True)
        assert holder.stdout.readline().split() == ["holding", "0"]
        t0 = time.monotonic()
        with turns as turn:
            assert turn == 1 and time.monotonic() - t0 < 1.0
        # a first turn waits for the lock a bounded time, then compiles without it
        monkeypatch.setattr(actor, "COMPILE_WAIT_S", 0.5)
        t0 = time.monotonic()
        with actor._SolveTurns(str(tmp_path)) as turn:
            assert turn == 0 and 0.5 <= time.monotonic() - t0 < 10
    finally:
        holder.kill()
        holder.wait()
    # without a cache (or with one at a URL) there is no lock to take
    assert actor._SolveTurns(None)._lock_path is None
    assert actor._SolveTurns("gs://bucket/xla")._lock_path is None
