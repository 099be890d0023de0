"""Peak memory of a cross-validated block beside a plain fit of the same block, and the planner's estimates.

A fresh process (one XLA thread, float32, no Ray) fits one block of neurons on 20,000 samples,
either once (``core.fit_block``, what a plain fit's actor solves) or as a cross-validated path
(``core.cv.cv_path``, 3 contiguous folds x 3 Ridge strengths, what a ``PopulationGLMCV``
block's actor solves before its refit), and reports its peak RSS beside
``plan.estimate_block_memory`` (``cv_strengths=3`` for the path). Two shapes, one with X the
larger array (400 features x 128 neurons) and one with y (100 features x 512 neurons), so that
the copies of X and of y the path adds can be told apart; the planner's ``_CV_DESIGN_COPIES``
and ``_CV_RESPONSE_COPIES`` are these two measurements solved for and rounded up.

Usage::

    .venv/bin/python benchmarks/bench_cv_memory.py            # writes results/bench_cv_memory.*
    .venv/bin/python benchmarks/bench_cv_memory.py --quick    # smaller, prints only
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from bench_vs_nemos import RESULT_TAG, machine_info, publish, run_for_result  # noqa: E402

FULL = dict(n_samples=20_000, shapes=((400, 128), (100, 512)))
QUICK = dict(n_samples=4_000, shapes=((100, 32), (25, 128)))
N_FOLDS = 3
STRENGTHS = np.logspace(0, -2, 3)
THREADS = {"XLA_FLAGS": "--xla_cpu_multi_thread_eigen=false", "PJRT_NPROC": "1", "JAX_PLATFORMS": "cpu",
           "OMP_NUM_THREADS": "1"}


def worker(mode: str, n_samples: int, n_features: int, n_neurons: int) -> dict:
    from distglm.core import cv as core_cv
    from distglm.core import fit as core_fit
    from distglm.cv import make_folds
    from distglm.glm import PopulationGLMCV
    from distglm.plan import estimate_block_memory

    rng = np.random.default_rng(0)
    X = (rng.normal(size=(n_samples, n_features)) / np.sqrt(n_features)).astype(np.float32)
    y = rng.poisson(1.0, size=(n_samples, n_neurons)).astype(np.float32)
    mask = np.ones((n_features, n_neurons), np.float32)
    model = PopulationGLMCV(regularizer="Ridge", regularizer_strengths=STRENGTHS, cv=N_FOLDS)
    config = model._fit_config()
    if mode == "cv":
        candidates = [model._selected_strength(s, n_features, n_neurons) for s in STRENGTHS]
        core_cv.cv_path(X, y, mask, config, candidates, make_folds(N_FOLDS, n_samples), "log-likelihood")
    else:
        core_fit.fit_block(X, y, mask, config, strength=model._selected_strength(STRENGTHS[1], n_features, n_neurons))
    kind = core_fit.choose_preconditioner(mask) if config.preconditioned else "none"
    estimate = estimate_block_memory(core_fit.bucket_rows(n_samples, 1), n_features, n_neurons, preconditioner=kind,
                                     cv_strengths=len(STRENGTHS) if mode == "cv" else 0)
    return {"mode": mode, "n_features": n_features, "n_neurons": n_neurons,
            "peak_rss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
            "estimate": estimate._asdict(), "load_average": os.getloadavg()}


def markdown(report: dict) -> str:
    m, n = report["machine"], report["n_samples"]
    lines = [
        "# Peak memory of a cross-validated block beside a plain fit, and the planner's estimates",
        "",
        f"One block, {n:,} samples, float32, a fresh process each (one XLA thread, no Ray): a plain fit "
        f"(`core.fit_block`) or a cross-validated path (`core.cv.cv_path`, {N_FOLDS} folds x {len(STRENGTHS)} Ridge "
        f"strengths). {m['date_utc']}, {m['cpu_count']} CPUs ({m['cpu_model']}). Load average at the start: "
        f"{m['uptime']}. Memory does not depend on the load.",
        "",
        "| features x neurons | X MB | y MB | plain peak MB | plain estimate MB | CV peak MB | CV estimate MB "
        "| CV adds, measured MB | CV adds, estimated MB |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for shape in report["shapes"]:
        plain, cv = shape["plain"], shape["cv"]
        x_mb = n * shape["n_features"] * 4 / 1e6
        y_mb = n * shape["n_neurons"] * 4 / 1e6
        lines.append(
            f"| {shape['n_features']} x {shape['n_neurons']} | {x_mb:.1f} | {y_mb:.1f} | {plain['peak_rss'] / 1e6:.0f} "
            f"| {plain['estimate']['total'] / 1e6:.0f} | {cv['peak_rss'] / 1e6:.0f} | {cv['estimate']['total'] / 1e6:.0f} "
            f"| {(cv['peak_rss'] - plain['peak_rss']) / 1e6:.0f} | {cv['estimate']['cv'] / 1e6:.0f} |")
    lines += ["", "Load average at the end of each process: " + "; ".join(
        f"{s['n_features']}x{s['n_neurons']} {mode} " + ", ".join(f"{x:.2f}" for x in s[mode]["load_average"])
        for s in report["shapes"] for mode in ("plain", "cv")) + ".", ""]
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--worker", choices=["plain", "cv"])
    parser.add_argument("--n-samples", type=int)
    parser.add_argument("--n-features", type=int)
    parser.add_argument("--n-neurons", type=int)
    args = parser.parse_args(argv)
    if args.worker:
        print(RESULT_TAG + json.dumps(worker(args.worker, args.n_samples, args.n_features, args.n_neurons)))
        return
    sizes = QUICK if args.quick else FULL
    env = {**os.environ, **THREADS, "DISTGLM_COMPILATION_CACHE": ""}
    report = {"machine": machine_info(), "n_samples": sizes["n_samples"], "n_folds": N_FOLDS,
              "strengths": STRENGTHS.tolist(), "shapes": []}
    for n_features, n_neurons in sizes["shapes"]:
        shape = {"n_features": n_features, "n_neurons": n_neurons}
        for mode in ("plain", "cv"):
            cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", mode, "--n-samples",
                   str(sizes["n_samples"]), "--n-features", str(n_features), "--n-neurons", str(n_neurons)]
            shape[mode] = run_for_result(cmd, env, f"{mode} worker")
        report["shapes"].append(shape)
    publish("bench_cv_memory", report, markdown(report), args.quick)


if __name__ == "__main__":
    main()
