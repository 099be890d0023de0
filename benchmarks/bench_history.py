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

Self-history, the second part: one block of neurons of a larger population whose neurons are
each driven by their own past alone, its function evaluations (the objective and its gradient,
as the solver calls them) timed two ways, each in a fresh process with one XLA thread (as an
actor has): the core's own features (X of the stimulus and each neuron's K history features,
K multiply-adds per sample and neuron) and the masked product over the full design (every
neuron's K columns, N * K multiply-adds per sample and neuron, as coupled fits use). Recorded:
seconds per evaluation (a jitted loop of 6 evaluations minus one of 1, over 5, the fastest of
3 runs), the bytes of the block's design arrays, the process's peak memory (VmHWM) and, for
the own features, the whole fit of the block.

Usage::

    .venv/bin/python benchmarks/bench_history.py            # writes results/
    .venv/bin/python benchmarks/bench_history.py --quick    # small smoke run, prints only
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from functools import partial
from pathlib import Path

import numpy as np

from bench_vs_nemos import RESULT_TAG, machine_info, publish, run_for_result

FULL = dict(n_samples=100_000, n_neurons=64, n_basis_funcs=4, window_size=20)
QUICK = dict(n_samples=10_000, n_neurons=16, n_basis_funcs=4, window_size=10)
# self-history: a block of n_block neurons of a population of n_neurons
SELF_FULL = dict(n_samples=20_000, n_neurons=256, n_block=64, n_basis_funcs=6, window_size=50)
SELF_QUICK = dict(n_samples=4_000, n_neurons=32, n_block=16, n_basis_funcs=4, window_size=10)
WORKER_ENV = {"XLA_FLAGS": "--xla_cpu_multi_thread_eigen=false", "PJRT_NPROC": "1", "OMP_NUM_THREADS": "1",
              "JAX_PLATFORMS": "cpu"}
STRENGTH = 1e-3
SEED = 5


def data(n_samples: int, n_neurons: int, n_basis_funcs: int, window_size: int, rank: int | None = None):
    """Stimulus and counts with a weak all-to-all history drive (simulated sample by sample).

    With ``rank``, the (n_neurons * K, n_neurons) coupling weights are a product of two random
    factors of that rank (every neuron still drives every other), so that each simulated sample
    costs O(n_neurons * K * rank) rather than O(n_neurons**2 * K).
    """
    from distglm.history import raised_cosine_log

    rng = np.random.default_rng(SEED)
    X = 0.3 * rng.normal(size=(n_samples, 2))
    kernels = raised_cosine_log(n_basis_funcs, window_size)
    # weights[n * K + k, m]: neuron n's past through kernel k onto neuron m
    if rank is None:
        factors = ((-0.02 * rng.random((n_neurons, n_basis_funcs, n_neurons))).reshape(-1, n_neurons),)
    else:
        factors = (rng.random((n_neurons * n_basis_funcs, rank)), -0.02 / rank * rng.random((rank, n_neurons)))
    drive = X @ (0.3 * rng.normal(size=(2, n_neurons))) - 1.0
    y = np.zeros((n_samples, n_neurons))
    for t in range(n_samples):
        past = y[max(t - window_size, 0):t][::-1]
        history = (kernels[:len(past)].T @ past).T.reshape(-1)
        for factor in factors:
            history = history @ factor
        y[t] = rng.poisson(np.exp(drive[t] + history))
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


def self_history_worker(way: str, n_samples: int, n_neurons: int, n_block: int, n_basis_funcs: int,
                        window_size: int) -> dict:
    """In a fresh process: one block's evaluations with self-history fitted ``way`` ("own" or "masked")."""
    from distglm.core import fit as core_fit
    from distglm.glm import PopulationGLM
    from distglm.history import HistorySpec, history_features

    rng = np.random.default_rng(SEED)
    K = n_basis_funcs
    X = (0.3 * rng.normal(size=(n_samples, 2))).astype(np.float32)
    y = rng.poisson(np.exp(-1.0 + X @ (0.3 * rng.normal(size=(2, n_neurons))))).astype(np.float32)
    spec = HistorySpec.raised_cosine_log(K, window_size, coupling="self")
    history = history_features(y, spec)[window_size:].astype(np.float32)
    X, y = X[window_size:], y[window_size:]
    block = slice(0, n_block)
    model = PopulationGLM(regularizer="Ridge", regularizer_strength=STRENGTH)
    config = model._fit_config()
    if way == "own":
        design = (X, history.reshape(len(X), n_neurons, K)[:, block].transpose(0, 2, 1).copy())
        mask = np.ones((2 + K, n_block), np.float32)
    else:
        design = (np.hstack([X, history]), None)
        mask = np.vstack([np.ones((2, n_neurons)), spec.feature_mask(n_neurons)])[:, block].astype(np.float32)
    del history
    yb = y[:, block].copy()
    strength = np.full(mask.shape, STRENGTH, np.float32)
    out = {"way": way, "design_bytes": sum(a.nbytes for a in design if a is not None),
           "eval_s": evaluation_seconds(design[0], design[1], yb, mask, strength, config)}
    if way == "own":
        t0 = time.perf_counter()
        res = core_fit.fit_block(X, yb, mask, config, strength=strength, own=design[1], n_other=(n_neurons - n_block) * K)
        out["fit_s"] = time.perf_counter() - t0
        out["fit_iterations_max"] = int(res.n_iter.max())
        out["fit_converged"] = int(res.converged.sum())
    out["vmhwm_bytes"] = vmhwm()
    return out


def evaluation_seconds(X, own, y, mask, strength, config) -> float:
    """Seconds per evaluation of a block's objective and gradient (as the solver calls them, in
    plain coordinates), in memory: a jitted loop of 6 evaluations minus one of 1, over 5, each
    the fastest of 3 runs. ``own`` (n_samples, K, n_neurons) or None."""
    import jax
    import jax.numpy as jnp

    from distglm.core import fit as core_fit

    Xj, ownj, yj, mj = (None if a is None else jnp.asarray(a) for a in (X, own, y, mask))
    chunks = core_fit._chunk(Xj, yj, own=ownj)
    active = jnp.ones(y.shape[1], bool)

    @partial(jax.jit, static_argnums=1)
    def evaluations(v, k):
        objective = core_fit._build(chunks, mj, strength, active, None, config).solver.fun

        def body(_, v):
            _, grad = objective(v)
            return jax.tree_util.tree_map(lambda a, g: a - 1e-4 * g, v, grad)

        return jax.lax.fori_loop(0, k, body, v)

    def timed(k):
        jax.block_until_ready(evaluations(v, k))
        times = []
        for _ in range(3):
            t0 = time.perf_counter()
            jax.block_until_ready(evaluations(v, k))
            times.append(time.perf_counter() - t0)
        return min(times)

    v = core_fit.Params(jnp.zeros(mask.shape, Xj.dtype), jnp.zeros(y.shape[1], Xj.dtype))
    return max((timed(6) - timed(1)) / 5, 0.0)


def vmhwm() -> int:
    """This process's peak resident memory (VmHWM), in bytes."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


def run_self_history(sizes: dict) -> dict:
    env = {**os.environ, **WORKER_ENV}
    out = {}
    for way in ("own", "masked"):
        cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", way, json.dumps(sizes)]
        out[way] = run_for_result(cmd, env, f"{way} worker")
    out["eval_ratio_masked_over_own"] = out["masked"]["eval_s"] / out["own"]["eval_s"]
    return out


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
    ] + self_history_markdown(report))


def self_history_markdown(report: dict) -> list[str]:
    sz, r = report["self_sizes"], report["self_history"]
    own, masked = r["own"], r["masked"]
    p_full = 2 + sz["n_neurons"] * sz["n_basis_funcs"]
    return [
        "## Self-history: own features vs the masked product",
        "",
        f"One block of {sz['n_block']} neurons of a population of {sz['n_neurons']}, {sz['n_samples']:,} samples, "
        f"each neuron driven by its own past alone (K = {sz['n_basis_funcs']} kernels over {sz['window_size']} "
        f"samples) and 2 stimulus features, Poisson, Ridge {STRENGTH}, float32, one XLA thread per process "
        f"(1-minute load average {report['self_load_before']:.2f} before, {report['self_load_after']:.2f} after).",
        "",
        "| | own features | masked product |",
        "|---|---:|---:|",
        f"| coefficients per neuron in the products | {2 + sz['n_basis_funcs']} | {p_full} |",
        f"| time per evaluation (ms) | {1e3 * own['eval_s']:.2f} | {1e3 * masked['eval_s']:.2f} |",
        f"| block's design arrays (MB) | {own['design_bytes'] / 1e6:.1f} | {masked['design_bytes'] / 1e6:.1f} |",
        f"| process peak memory, VmHWM (MB) | {own['vmhwm_bytes'] / 1e6:.0f} | {masked['vmhwm_bytes'] / 1e6:.0f} |",
        "",
        f"The masked product takes {r['eval_ratio_masked_over_own']:.1f}x the time per evaluation of the own "
        f"features (in flops the ratio is about {p_full}/{2 + sz['n_basis_funcs']} = "
        f"{p_full / (2 + sz['n_basis_funcs']):.0f}; the loss's per-sample work over the block's neurons and the "
        "passes over the own features, which are memory-bound, do not shrink with it). The whole fit of the block with own features (compilation, the "
        f"per-neuron Gram matrices and Cholesky factors included) took {own['fit_s']:.1f} s, "
        f"{own['fit_iterations_max']} iterations at most, {own['fit_converged']}/{sz['n_block']} converged.",
        "",
    ]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="small smoke run; results are printed, not written")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--worker", nargs=2, metavar=("WAY", "SIZES"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        way, sizes = args.worker
        print(RESULT_TAG + json.dumps(self_history_worker(way, **json.loads(sizes))), flush=True)
        return
    sizes = QUICK if args.quick else FULL
    self_sizes = SELF_QUICK if args.quick else SELF_FULL
    workdir = tempfile.mkdtemp(prefix="bench_history_")
    try:
        load_before = os.getloadavg()[0]
        result = run(sizes, args.rounds, workdir)
        report = {"sizes": sizes, "rounds": args.rounds, "machine": machine_info(), "load_before": load_before,
                  "load_after": os.getloadavg()[0], "result": result, "self_sizes": self_sizes,
                  "self_load_before": os.getloadavg()[0]}
        report["self_history"] = run_self_history(self_sizes)
        report["self_load_after"] = os.getloadavg()[0]
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    publish("bench_history", report, markdown(report), args.quick)


if __name__ == "__main__":
    main()
