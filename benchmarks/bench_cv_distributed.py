"""PopulationGLMCV on a store's Ray actors vs the same cross-validation in memory.

The population of ``bench_vs_nemos.py`` (Poisson, Ridge, feature mask, float32), 5 contiguous
folds x 6 strengths, a strength selected per neuron and, in a second fit, one shared strength
(two stages: every block's path, then the refits). In memory: ``PopulationGLMCV.fit(X, y)``,
all neurons in one solve per candidate. Distributed: ``distglm.fit(store, PopulationGLMCV(...))``
on a local Ray of ``--actors`` actors, blocks of ``--block-size`` neurons. Each side runs in
its own fresh process with the persistent compilation cache off, so both pay for compilation;
the report also gives how closely the two agree (selected strengths, held-out scores).

Usage::

    .venv/bin/python benchmarks/bench_cv_distributed.py            # writes results/bench_cv_distributed.*
    .venv/bin/python benchmarks/bench_cv_distributed.py --quick    # small smoke run, prints only
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from bench_vs_nemos import RESULT_TAG, run_for_result, feature_mask, machine_info, publish, simulate  # noqa: E402

FULL = dict(n_samples=5_000, n_features=20, n_neurons=128, actors=2, block_size=32)
QUICK = dict(n_samples=1_000, n_features=10, n_neurons=16, actors=2, block_size=8)
N_FOLDS = 5
GRID = np.logspace(0, -3, 6)
SEED = 2


def _model(per_neuron: bool, mask=None):
    from distglm.glm import PopulationGLMCV

    return PopulationGLMCV(regularizer="Ridge", regularizer_strengths=GRID, cv=N_FOLDS, per_neuron=per_neuron,
                           feature_mask=mask)


def worker(side: str, per_neuron: bool, n_samples: int, n_features: int, n_neurons: int, actors: int,
           block_size: int) -> dict:
    mask = feature_mask(n_features, n_neurons)
    X, y = simulate(SEED, n_samples, n_features, n_neurons, mask)
    if side == "memory":
        t0 = time.perf_counter()
        model = _model(per_neuron, mask).fit(X, y)
        seconds = time.perf_counter() - t0
    else:
        import ray

        import distglm

        path = distglm.write_inputs(tempfile.mkdtemp() + "/bench.zarr", X, y, feature_mask=mask,
                                    neuron_chunk=block_size)
        ray.init(num_cpus=actors, include_dashboard=False)
        try:
            t0 = time.perf_counter()
            distglm.fit(path, _model(per_neuron), num_actors=actors, block_size=block_size, progress=False)
            seconds = time.perf_counter() - t0
        finally:
            ray.shutdown()
        model = distglm.load_model(path)
    return {"seconds": seconds, "cv_scores": model.cv_scores_.tolist(), "best_index": model.best_index_.tolist(),
            "load_average": os.getloadavg()}


def run_worker(side: str, per_neuron: bool, sizes: dict) -> dict:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", side, "--per-neuron", str(int(per_neuron)),
           *[arg for key, value in sizes.items() for arg in (f"--{key.replace('_', '-')}", str(value))]]
    env = {k: v for k, v in os.environ.items() if k != "JAX_COMPILATION_CACHE_DIR"}
    env["DISTGLM_COMPILATION_CACHE"] = ""
    return run_for_result(cmd, env, f"{side} worker")


def agreement(report: dict) -> dict:
    """Per selection mode: seconds of each side, their ratio, same selections, largest relative score gap."""
    out = {}
    for mode in ("True", "False"):
        mem, dist = report["memory"][mode], report["distributed"][mode]
        a, b = np.asarray(mem["cv_scores"], float), np.asarray(dist["cv_scores"], float)
        both = np.isfinite(a) & np.isfinite(b)
        out[mode] = {
            "memory_seconds": mem["seconds"], "distributed_seconds": dist["seconds"],
            "distributed_over_memory": dist["seconds"] / mem["seconds"],
            "same_selection": float(np.mean(np.asarray(mem["best_index"]) == np.asarray(dist["best_index"]))),
            "max_relative_score_gap": float(np.max(np.abs(a[both] - b[both]) / np.abs(a[both]))),
            "same_failures": bool(np.array_equal(np.isfinite(a), np.isfinite(b))),
        }
    return out


def markdown(report: dict) -> str:
    m, s, agree = report["machine"], report["sizes"], report["agreement"]
    rows = []
    for mode, label in (("True", "per-neuron strengths (one stage)"), ("False", "one shared strength (two stages)")):
        g = agree[mode]
        rows.append(f"| {label} | {g['memory_seconds']:.1f} | {g['distributed_seconds']:.1f} | "
                    f"{g['distributed_over_memory']:.2f} | {100 * g['same_selection']:.0f}% | "
                    f"{g['max_relative_score_gap']:.1e} |")
    load = {side: "; ".join(", ".join(f"{x:.2f}" for x in report[side][mode]["load_average"])
                            for mode in ("True", "False")) for side in ("memory", "distributed")}
    return "\n".join([
        "# PopulationGLMCV on Ray actors vs in memory",
        "",
        f"{s['n_samples']:,} samples, {s['n_features']} features, {s['n_neurons']} neurons (Poisson, Ridge, feature "
        f"mask, float32), {N_FOLDS} contiguous folds x {len(GRID)} strengths. Distributed: {s['actors']} actors on a "
        f"local Ray, blocks of {s['block_size']} neurons. {m['date_utc']}, {m['cpu_count']} CPUs ({m['cpu_model']}), "
        f"jax {m['versions']['jax']}. Each fit in a fresh process, compilation included (no persistent cache).",
        "",
        f"Load average (`uptime`): {m['uptime']}. At the end of each process (per-neuron; shared): in memory "
        f"{load['memory']}; "
        f"distributed {load['distributed']}. The machine is shared with other work: absolute times are slow and "
        "noisy, the ratios are from this one run.",
        "",
        "| selection | in memory (s) | distributed (s) | distributed / memory | same selection | largest relative "
        "gap in held-out scores |",
        "|---|---:|---:|---:|---:|---:|",
        *rows,
        "",
        "The distributed time includes starting the actors, each compiling its own solves, the driver's checks of "
        "the store, and writing every block's results; its blocks solve in parallel on the actors.",
        "",
    ])


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--worker", choices=["memory", "distributed"])
    parser.add_argument("--per-neuron", type=int, default=1)
    for key in FULL:
        parser.add_argument(f"--{key.replace('_', '-')}", type=int)
    args = parser.parse_args(argv)
    if args.worker:
        sizes = {key: getattr(args, key) for key in FULL}
        print(RESULT_TAG + json.dumps(worker(args.worker, bool(args.per_neuron), **sizes)))
        return
    sizes = QUICK if args.quick else FULL
    report = {"machine": machine_info(), "sizes": sizes, "grid": GRID.tolist(), "n_folds": N_FOLDS}
    for side in ("memory", "distributed"):
        report[side] = {str(per_neuron): run_worker(side, per_neuron, sizes) for per_neuron in (True, False)}
    report["agreement"] = agreement(report)
    for side in ("memory", "distributed"):
        for fit in report[side].values():
            # compared above; too long to record
            del fit["cv_scores"], fit["best_index"]
    publish("bench_cv_distributed", report, markdown(report), args.quick)


if __name__ == "__main__":
    main()
