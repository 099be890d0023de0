"""A coupled population end to end: ``distglm.fit`` with all-to-all history features built in the actors.

Poisson counts of a population whose neurons all drive each other through their past (raised-
cosine-log kernels, coupling weights of low rank, simulated sample by sample) and two stimulus
features are written to a store; ``distglm.fit(path, model, history=spec)`` fits every neuron on the stimulus and on the
history of every neuron (n_neurons * K + 2 features), 2 actors on a local Ray, the actors
building the history a chunk of samples at a time. Recorded:

- the fit: wall time, neurons/s, blocks, iterations and function evaluations (the solver's
  count, per block), and the peak memory of each actor process (VmHWM, read from
  ``/proc/PID/status`` of every ``ray::BlockFitter`` process while the fit runs);
- the cost of one evaluation (the objective and its gradient) of one block, measured in a fresh
  process with one XLA thread (as an actor has) on the block's full design in memory (its first
  ``EVAL_SAMPLES`` samples; the cost is linear in them), and the
  flop rate it implies for the model ``flops ~ 2 x 2 x T x (N * K + p) x n_block`` (one product
  for the linear predictor, one for the gradient);
- that cost extrapolated to 1,000 and 5,000 neurons and 200,000 samples on a cluster with one
  actor per block (the blocks of one evaluation in parallel), and the memory of one history
  chunk, ``rows x (p + N * K)`` floats, that an actor builds at every pass.

The default size is the largest this machine was asked to hold, 500 neurons x 200,000 samples
(3,002 features per neuron); ``--n-neurons`` and ``--n-samples`` choose another. The N * K
columns of every evaluation, and of the design's Gram matrix (accumulated once per actor from
the chunks), are what limit it.

Usage::

    .venv/bin/python benchmarks/bench_coupled.py            # writes results/bench_coupled.*
    .venv/bin/python benchmarks/bench_coupled.py --quick    # small smoke run, prints only
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from bench_history import data, evaluation_seconds
from bench_large import MemorySampler
from bench_vs_nemos import RESULT_TAG, machine_info, publish, run_for_result
from distglm.plan import STREAM_CHUNK_BYTES, stream_rows
from distglm.store.inputs import _ROW_CHUNK as ROW_CHUNK

FULL = dict(n_samples=200_000, n_neurons=500, n_basis_funcs=6, window_size=20, rank=4)
QUICK = dict(n_samples=4_000, n_neurons=24, n_basis_funcs=4, window_size=10, rank=4)
# samples of the in-memory evaluation timed beside the fit (its cost is linear in them)
EVAL_SAMPLES = 20_000
# extrapolated to these populations of TARGET_SAMPLES samples
TARGETS = (1_000, 5_000)
TARGET_SAMPLES = 200_000
N_STIMULUS = 2
NUM_ACTORS = 2
STRENGTH = 1e-3
FLOAT_BYTES = 4  # the fits run in float32
WORKER_ENV = {"XLA_FLAGS": "--xla_cpu_multi_thread_eigen=false", "PJRT_NPROC": "1", "OMP_NUM_THREADS": "1",
              "JAX_PLATFORMS": "cpu"}


class PeakSampler(MemorySampler):
    """The peak resident memory (VmHWM, the kernel's own high-water mark) of the actor processes."""

    def _run(self):
        while not self._stop.is_set():
            for proc, role in list(self._targets()):
                try:
                    status = Path(f"/proc/{proc.pid}/status").read_text()
                except OSError:
                    continue
                hwm = next(int(line.split()[1]) * 1024 for line in status.splitlines() if line.startswith("VmHWM:"))
                peak = self.peaks.setdefault(proc.pid, {"role": role, "vmhwm": 0})
                peak["vmhwm"] = max(peak["vmhwm"], hwm)
            self._stop.wait(0.2)

    def actor_peaks(self) -> list[int]:
        return [p["vmhwm"] for p in self.peaks.values() if p["role"] == "actor"]


def fit_population(sizes: dict, workdir: str) -> dict:
    import ray
    import zarr

    import distglm
    from distglm.glm import PopulationGLM
    from distglm.history import HistorySpec

    t0 = time.perf_counter()
    X, y = data(**sizes)
    simulate_s = time.perf_counter() - t0
    path = distglm.write_inputs(os.path.join(workdir, "coupled.zarr"), X, y)
    spec = HistorySpec.raised_cosine_log(sizes["n_basis_funcs"], sizes["window_size"], coupling="all")
    ray.init(num_cpus=NUM_ACTORS, include_dashboard=False, log_to_driver=False)
    try:
        with PeakSampler() as sampler:
            report = distglm.fit(path, PopulationGLM(regularizer="Ridge", regularizer_strength=STRENGTH),
                                 history=spec, num_actors=NUM_ACTORS, resume=False, progress=False)
    finally:
        ray.shutdown()
    assert report.n_fitted == sizes["n_neurons"] and not report.failed_blocks, report
    results = distglm.store.read_results(path, 0, sizes["n_neurons"])
    evaluations = np.asarray(zarr.open_group(path, mode="r")["results/solver_state/num_fun_eval"][:])
    return {
        "simulate_s": simulate_s,
        "fit_s": report.seconds,
        "neurons_per_second": report.neurons_per_second,
        "n_blocks": report.n_blocks,
        "n_block": -(-sizes["n_neurons"] // report.n_blocks),
        "n_converged": report.n_converged,
        "timings": report.timings,
        "iterations_max": int(results["n_iter"].max()),
        "iterations_median": float(np.median(results["n_iter"])),
        "evaluations_per_block": evaluations.tolist(),
        "actor_vmhwm_bytes": sampler.actor_peaks(),
    }


def evaluation_worker(sizes: dict, n_block: int) -> dict:
    """In a fresh process: seconds per evaluation of the first block on its full design in memory
    (the first ``EVAL_SAMPLES`` samples with a whole history window)."""
    from distglm.glm import PopulationGLM
    from distglm.history import HistorySpec, design

    X, y = data(**sizes)
    spec = HistorySpec.raised_cosine_log(sizes["n_basis_funcs"], sizes["window_size"], coupling="all")
    # the samples timed and the window before them: the design of those rows needs no others
    end = sizes["window_size"] + EVAL_SAMPLES
    rows = slice(sizes["window_size"], end)
    full = design(X[:end], y[:end], spec)[rows].astype(np.float32)
    yb = y[rows, :n_block].astype(np.float32)
    mask = np.ones((full.shape[1], n_block), np.float32)
    config = PopulationGLM(regularizer="Ridge", regularizer_strength=STRENGTH)._fit_config()
    seconds = evaluation_seconds(full, None, yb, mask, np.full(mask.shape, STRENGTH, np.float32), config)
    return {"eval_s": seconds, "n_samples": full.shape[0], "n_features": full.shape[1]}


def flops_per_evaluation(n_samples: int, n_neurons: int, n_basis_funcs: int, n_block: int) -> float:
    """2 x 2 x T x (N * K + p) x n_block: the products of the linear predictor and of the gradient."""
    return 2.0 * 2.0 * n_samples * (n_neurons * n_basis_funcs + N_STIMULUS) * n_block


def extrapolate(sizes: dict, fit: dict, evaluation: dict) -> dict:
    K, n_block = sizes["n_basis_funcs"], fit["n_block"]
    rate = flops_per_evaluation(evaluation["n_samples"], sizes["n_neurons"], K, n_block) / evaluation["eval_s"]
    evaluations = float(np.mean(fit["evaluations_per_block"]))
    out = {"flops_per_second": rate, "evaluations_per_block": evaluations}
    for n in TARGETS:
        per_eval = flops_per_evaluation(TARGET_SAMPLES, n, K, n_block) / rate
        p = N_STIMULUS + n * K
        # a stored chunk of a long recording, fewer rows when its full design is wide (as actors do)
        rows = stream_rows(min(TARGET_SAMPLES, ROW_CHUNK), p, n_block, itemsize=FLOAT_BYTES)
        out[str(n)] = {
            "rows_per_chunk": rows,
            "n_blocks": -(-n // n_block),
            "eval_s_per_block": per_eval,
            "fit_s_per_block": per_eval * evaluations,
            # each actor accumulates the Gram matrix of the full design once: 2 x T x (p + 1)^2 flops
            "gram_s_per_actor": 2.0 * TARGET_SAMPLES * (p + 1) ** 2 / rate,
            "history_chunk_bytes": rows * p * FLOAT_BYTES,
            "gram_bytes": (p + 1) ** 2 * FLOAT_BYTES,
        }
    return out


def markdown(report: dict) -> str:
    sz, m, fit, ev, ex = report["sizes"], report["machine"], report["fit"], report["evaluation"], report["extrapolated"]
    K, n = sz["n_basis_funcs"], sz["n_neurons"]
    p = N_STIMULUS + n * K
    peaks = ", ".join(f"{b / 1e6:.0f}" for b in fit["actor_vmhwm_bytes"])
    lines = [
        "# A coupled population end to end",
        "",
        f"{n} neurons x {sz['n_samples']:,} samples, all-to-all history (K = {K} raised-cosine-log kernels over "
        f"{sz['window_size']} samples) and {N_STIMULUS} stimulus features: {p} features per neuron, built by the "
        f"actors from the stored y. Poisson, Ridge {STRENGTH}, LBFGS (default tolerance), float32, "
        f"{NUM_ACTORS} actors on a local Ray ({m['date_utc']}, {m['cpu_count']} CPUs, {m['cpu_model']}); "
        f"1-minute load average {report['load_before']:.2f} before, {report['load_after']:.2f} after (a shared "
        "machine).",
        "",
        "| | |",
        "|---|---:|",
        f"| fit (s), compilation included | {fit['fit_s']:.1f} |",
        f"| neurons/s | {fit['neurons_per_second']:.2f} |",
        f"| blocks x neurons | {fit['n_blocks']} x {fit['n_block']} |",
        f"| converged | {fit['n_converged']}/{n} |",
        f"| iterations, median / max | {fit['iterations_median']:.0f} / {fit['iterations_max']} |",
        f"| function evaluations per block | {', '.join(str(e) for e in fit['evaluations_per_block'])} |",
        f"| peak memory per actor, VmHWM (MB) | {peaks} |",
        f"| one evaluation of one block (s), measured | {ev['eval_s']:.3f} |",
        f"| implied rate (GFLOP/s, one thread) | {ex['flops_per_second'] / 1e9:.1f} |",
        "",
        f"Simulating the counts sample by sample took {fit['simulate_s']:.0f} s, not counted above. The one "
        f"evaluation was timed on the block's first {ev['n_samples']:,} samples. What limits the size here: the "
        "N * K columns that every evaluation multiplies and that the design's Gram matrix accumulates (the cost "
        "of the population grows as N^2), on 2 shared cores. Each block's deadline follows its work "
        "(`distglm.plan.block_timeout`), so long blocks are not taken for stuck.",
        "",
        "## Extrapolated",
        "",
        f"Per evaluation, a block costs about 2 x 2 x T x (N * K + p) x n_block flops (one product for the linear "
        f"predictor, one for the gradient; p = {N_STIMULUS}); the blocks of an evaluation run in parallel, one per "
        f"actor. At the rate measured above, T = {TARGET_SAMPLES:,}, K = {K}, blocks of {fit['n_block']} neurons and "
        f"the {ex['evaluations_per_block']:.0f} evaluations a block took here:",
        "",
        "| neurons | blocks (actors) | s per evaluation per block | s of evaluations per block | "
        "s of the Gram matrix per actor | history chunk: rows, MB | Gram matrix (MB) |",
        "|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for target in TARGETS:
        t = ex[str(target)]
        lines.append(f"| {target:,} | {t['n_blocks']} | {t['eval_s_per_block']:.1f} | {t['fit_s_per_block']:.0f} | "
                     f"{t['gram_s_per_actor']:,.0f} | "
                     f"{t['rows_per_chunk']:,}, {t['history_chunk_bytes'] / 1e6:,.0f} | {t['gram_bytes'] / 1e6:,.0f} |")
    big = ex[str(TARGETS[-1])]
    lines += [
        "",
        "The history chunk is what an actor builds from y at every pass over the samples, rows x (p + N * K) "
        f"floats: a stored chunk of samples ({ROW_CHUNK:,} rows), halved until it and the block's y take at most "
        f"{STREAM_CHUNK_BYTES // 2**20} MiB (`distglm.plan.stream_rows`); the actor keeps the chunks its cache holds and builds the "
        "others again at every pass. The Gram matrix of the preconditioner, (p + N * K + 1)^2 floats, is held "
        "beside its eigenbasis of the same size; each actor accumulates it once from the chunks, for all its "
        "blocks, 2 x T x (p + N * K + 1)^2 flops (its eigendecomposition, about (p + N * K)^3 more, is not "
        f"counted): at {TARGETS[-1]:,} neurons it takes {big['gram_s_per_actor'] / big['fit_s_per_block']:.1f}x "
        "a block's evaluations, paid once per actor where it was paid once per block before. "
        "The extrapolation assumes the flop rate measured here holds at those "
        "widths and that the evaluations per block stay the same; the convolution that builds the chunks "
        "(T x N x window x K multiply-adds per pass when the chunks outgrow the cache) is not counted.",
        "",
    ]
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="small smoke run; results are printed, not written")
    parser.add_argument("--worker", nargs=2, metavar=("SIZES", "N_BLOCK"), help=argparse.SUPPRESS)
    parser.add_argument("--n-neurons", type=int, help=f"neurons (default {FULL['n_neurons']})")
    parser.add_argument("--n-samples", type=int, help=f"samples (default {FULL['n_samples']:,})")
    args = parser.parse_args(argv)
    if args.worker:
        print(RESULT_TAG + json.dumps(evaluation_worker(json.loads(args.worker[0]), int(args.worker[1]))), flush=True)
        return
    sizes = dict(QUICK if args.quick else FULL)
    sizes.update({key: value for key, value in (("n_neurons", args.n_neurons), ("n_samples", args.n_samples))
                  if value is not None})
    workdir = tempfile.mkdtemp(prefix="bench_coupled_")
    try:
        load_before = os.getloadavg()[0]
        fit = fit_population(sizes, workdir)
        cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", json.dumps(sizes), str(fit["n_block"])]
        evaluation = run_for_result(cmd, {**os.environ, **WORKER_ENV}, "evaluation worker")
        report = {"sizes": sizes, "machine": machine_info(), "load_before": load_before,
                  "load_after": os.getloadavg()[0], "fit": fit, "evaluation": evaluation,
                  "extrapolated": extrapolate(sizes, fit, evaluation)}
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    publish("bench_coupled", report, markdown(report), args.quick)


if __name__ == "__main__":
    main()
