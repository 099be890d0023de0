"""What streaming costs: the same block fitted in memory and fed chunk by chunk from the host.

One process, one block of Poisson counts (Ridge, LBFGS, float32): ``core.fit_block`` on arrays
in memory, and ``core.fit_streamed`` on a ``ChunkSource`` that hands out slices of the same
arrays (2**16 samples per chunk), so the difference is the design's own cost (a host callback
per chunk inside every pass, and the passes it cannot fuse), without any reading from a store.
JAX runs on one thread, as in an actor.
Both are compiled first; then the two are timed alternately, ``--rounds`` times (default 3),
and each time is the best of its rounds. The load average is recorded before and after.

Usage::

    .venv/bin/python benchmarks/bench_stream_cost.py            # writes results/
    .venv/bin/python benchmarks/bench_stream_cost.py --quick    # small smoke run, prints only
"""

from __future__ import annotations

import argparse
import os
import time

# one XLA thread, as an actor runs (set before JAX is imported)
os.environ["XLA_FLAGS"] = "--xla_cpu_multi_thread_eigen=false"
os.environ["PJRT_NPROC"] = "1"

import numpy as np  # noqa: E402

from bench_vs_nemos import machine_info, publish  # noqa: E402

FULL = dict(n_samples=200_000, n_features=100, n_neurons=128)
QUICK = dict(n_samples=20_000, n_features=20, n_neurons=32)
ROWS = 2**16
STRENGTH = 1e-3
SEED = 3


def data(n_samples: int, n_features: int, n_neurons: int):
    rng = np.random.default_rng(SEED)
    X = rng.normal(size=(n_samples, n_features)).astype(np.float32)
    weights = rng.normal(scale=0.05, size=(n_features, n_neurons))
    y = rng.poisson(np.exp(X @ weights - 1.0)).astype(np.float32)
    return X, y


def source_of(X, y):
    from distglm.core import ChunkSource

    n = X.shape[0]
    n_chunks = -(-n // ROWS)

    def read(i):
        start, stop = i * ROWS, min(i * ROWS + ROWS, n)
        keep = np.zeros(ROWS, dtype=bool)
        keep[:stop - start] = True
        if stop - start == ROWS:
            return X[start:stop], y[start:stop], keep
        pad = ((0, ROWS - (stop - start)), (0, 0))
        return np.pad(X[start:stop], pad), np.pad(y[start:stop], pad), keep

    return ChunkSource(read, n_chunks=n_chunks, rows=ROWS, n_features=X.shape[1], n_neurons=y.shape[1], n_valid=n)


def run(sizes: dict, rounds: int) -> dict:
    from distglm.core import fit_block, fit_streamed
    from distglm.glm import PopulationGLM

    X, y = data(**sizes)
    model = PopulationGLM(regularizer="Ridge", regularizer_strength=STRENGTH)
    config = model._fit_config()
    strength = model._expanded_strength(sizes["n_features"], sizes["n_neurons"])
    mask = np.ones((sizes["n_features"], sizes["n_neurons"]), np.float32)
    fits = {
        "in memory": lambda: fit_block(X, y, mask, config, strength=strength),
        "streamed": lambda: fit_streamed(source_of(X, y), mask, config, strength=strength),
    }
    results = {name: fit() for name, fit in fits.items()}  # compile both
    best = {name: float("inf") for name in fits}
    for _ in range(rounds):
        for name, fit in fits.items():
            t0 = time.perf_counter()
            fit()
            best[name] = min(best[name], time.perf_counter() - t0)
    coef_diff = float(np.max(np.abs(results["streamed"].coef - results["in memory"].coef)))
    return {
        "seconds": best,
        "ratio_streamed_over_in_memory": best["streamed"] / best["in memory"],
        "n_iter_max": {name: int(r.n_iter.max()) for name, r in results.items()},
        "max_abs_coef_difference": coef_diff,
    }


def markdown(report: dict) -> str:
    sz, m, r = report["sizes"], report["machine"], report["result"]
    return "\n".join([
        "# What streaming costs",
        "",
        f"One block of {sz['n_neurons']} neurons x {sz['n_features']} features x {sz['n_samples']:,} samples, "
        f"Poisson counts, Ridge {STRENGTH}, LBFGS (default tolerance), float32, in one process "
        f"({m['date_utc']}, {m['cpu_count']} CPUs, {m['cpu_model']}; one XLA thread, as in an actor). The last "
        "chunk is padded to a whole chunk, as an actor's is. The streamed fit gets slices of the same "
        f"arrays, {ROWS:,} samples per chunk, from a host callback: no store is read. Best of "
        f"{report['rounds']} alternating rounds after compiling both; 1-minute load average "
        f"{report['load_before']:.2f} before, {report['load_after']:.2f} after (a shared machine: the ratio, "
        "measured within one run, is what to read).",
        "",
        "| | in memory | streamed |",
        "|---|---:|---:|",
        f"| fit (s) | {r['seconds']['in memory']:.2f} | {r['seconds']['streamed']:.2f} |",
        f"| iterations (most of any neuron) | {r['n_iter_max']['in memory']} | {r['n_iter_max']['streamed']} |",
        "",
        f"Streamed over in memory: {r['ratio_streamed_over_in_memory']:.2f}x. Largest coefficient difference "
        f"between the two: {r['max_abs_coef_difference']:.1e}.",
        "",
    ])


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="small smoke run; results are printed, not written")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)
    sizes = QUICK if args.quick else FULL
    load_before = os.getloadavg()[0]
    result = run(sizes, args.rounds)
    report = {"sizes": sizes, "rounds": args.rounds, "machine": machine_info(), "load_before": load_before,
              "load_after": os.getloadavg()[0], "result": result}
    publish("bench_stream_cost", report, markdown(report), args.quick)


if __name__ == "__main__":
    main()
