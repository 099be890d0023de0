"""History features built in the actors vs the same design written to the store whole.

Poisson counts of a coupled population (all-to-all history, raised-cosine-log kernels) and two
stimulus features. Two stores of the same recording: one holds X (the stimulus) and y, and
``distglm.fit(..., history=spec)`` has the actors convolve y a chunk of samples at a time; the
other holds the full design ``[X, history features]`` that NeMoS's ``compute_features`` builds
(n_neurons * K more columns), fitted with ``stream=True`` so both take the same streamed route
through the core. Reported: the fits' wall times (2 actors on a local Ray, each fit starting
its own actors; compilation cache warm after the first round), the bytes each store's inputs
take on disk, and the largest coefficient difference. Rounds alternate (``--rounds``, default
2); each time is the best of its rounds. The load average is recorded before and after.

Usage::

    .venv/bin/python benchmarks/bench_history.py            # writes results/
    .venv/bin/python benchmarks/bench_history.py --quick    # small smoke run, prints only
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from bench_vs_nemos import machine_info, publish

FULL = dict(n_samples=100_000, n_neurons=64, n_basis_funcs=4, window_size=20)
QUICK = dict(n_samples=10_000, n_neurons=16, n_basis_funcs=4, window_size=10)
STRENGTH = 1e-3
SEED = 5


def data(n_samples: int, n_neurons: int, n_basis_funcs: int, window_size: int):
    """Stimulus and counts with a weak all-to-all history drive (simulated sample by sample)."""
    from distglm.history import raised_cosine_log

    rng = np.random.default_rng(SEED)
    X = 0.3 * rng.normal(size=(n_samples, 2))
    filters = np.einsum("jk,nkm->jnm", raised_cosine_log(n_basis_funcs, window_size),
                        -0.02 * rng.random((n_neurons, n_basis_funcs, n_neurons)))
    drive = X @ (0.3 * rng.normal(size=(2, n_neurons))) - 1.0
    y = np.zeros((n_samples, n_neurons))
    for t in range(n_samples):
        past = y[max(t - window_size, 0):t][::-1]
        y[t] = rng.poisson(np.exp(drive[t] + np.tensordot(past, filters[:len(past)], 2)))
    return X, y.astype(np.int32)


def disk_bytes(path: str) -> int:
    return sum(f.stat().st_size for f in Path(path, "inputs").rglob("*") if f.is_file())


def run(sizes: dict, rounds: int, workdir: str) -> dict:
    import ray

    import distglm
    from distglm.glm import PopulationGLM
    from distglm.history import HistorySpec, design

    X, y = data(**sizes)
    spec = HistorySpec.raised_cosine_log(sizes["n_basis_funcs"], sizes["window_size"], coupling="all")
    stores = {"history in actors": distglm.write_inputs(os.path.join(workdir, "history.zarr"), X, y),
              "design in store": distglm.write_inputs(os.path.join(workdir, "design.zarr"),
                                                      design(X, y, spec).astype(np.float32), y)}
    options = {"history in actors": dict(history=spec), "design in store": dict(stream=True)}
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    best = {name: float("inf") for name in stores}
    models = {}
    try:
        for _ in range(rounds):
            for name, path in stores.items():
                t0 = time.perf_counter()
                report = distglm.fit(path, PopulationGLM(regularizer="Ridge", regularizer_strength=STRENGTH),
                                     num_actors=2, resume=False, progress=False, **options[name])
                best[name] = min(best[name], time.perf_counter() - t0)
                assert report.n_failed == 0, report
                models[name] = distglm.load_model(path)
    finally:
        ray.shutdown()
    coef = {name: np.asarray(m.coef_) for name, m in models.items()}
    return {
        "seconds": best,
        "ratio_history_over_design": best["history in actors"] / best["design in store"],
        "inputs_bytes_on_disk": {name: disk_bytes(path) for name, path in stores.items()},
        "n_features_fitted": int(coef["history in actors"].shape[0]),
        "max_abs_coef_difference": float(np.max(np.abs(coef["history in actors"] - coef["design in store"]))),
    }


def markdown(report: dict) -> str:
    sz, m, r = report["sizes"], report["machine"], report["result"]
    disk = r["inputs_bytes_on_disk"]
    return "\n".join([
        "# History features built in the actors vs written to the store",
        "",
        f"{sz['n_neurons']} neurons x {sz['n_samples']:,} samples, all-to-all history with K = {sz['n_basis_funcs']} "
        f"raised-cosine-log kernels over {sz['window_size']} samples and 2 stimulus features "
        f"({r['n_features_fitted']} features fitted), Poisson, Ridge {STRENGTH}, LBFGS (default tolerance), "
        f"float32, 2 actors on a local Ray, streamed in both cases ({m['date_utc']}, {m['cpu_count']} CPUs, "
        f"{m['cpu_model']}). Best of {report['rounds']} alternating rounds; 1-minute load average "
        f"{report['load_before']:.2f} before, {report['load_after']:.2f} after (a shared machine: the ratio, "
        "measured within one run, is what to read).",
        "",
        "| | history in actors | design in store |",
        "|---|---:|---:|",
        f"| fit (s) | {r['seconds']['history in actors']:.1f} | {r['seconds']['design in store']:.1f} |",
        f"| inputs on disk (MB) | {disk['history in actors'] / 1e6:.1f} | {disk['design in store'] / 1e6:.1f} |",
        "",
        f"History in actors over design in store: {r['ratio_history_over_design']:.2f}x in time. Largest "
        f"coefficient difference between the two: {r['max_abs_coef_difference']:.1e}.",
        "",
    ])


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="small smoke run; results are printed, not written")
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args(argv)
    sizes = QUICK if args.quick else FULL
    workdir = tempfile.mkdtemp(prefix="bench_history_")
    try:
        load_before = os.getloadavg()[0]
        result = run(sizes, args.rounds, workdir)
        report = {"sizes": sizes, "rounds": args.rounds, "machine": machine_info(), "load_before": load_before,
                  "load_after": os.getloadavg()[0], "result": result}
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    publish("bench_history", report, markdown(report), args.quick)


if __name__ == "__main__":
    main()
