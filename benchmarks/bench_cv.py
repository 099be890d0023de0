"""Cross-validated Ridge strength: distglm's PopulationGLMCV vs scikit-learn's GridSearchCV over NeMoS.

The population of ``bench_vs_nemos.py`` (Poisson, Ridge, feature mask, float32), 5 contiguous
folds x 12 strengths. distglm selects a strength per neuron with ``PopulationGLMCV`` (every
fold's strengths fitted as a warm-started path, all neurons at once); NeMoS 0.2.8 selects one
shared strength with ``GridSearchCV(PopulationGLM(solver_name="LBFGS"), cv=KFold(5))``, the way a
NeMoS user would. Each library runs in its own fresh process.

NeMoS runs the full grid by default (60 fits and a refit, about 3-4 minutes here), so its time
is measured, not extrapolated. With ``--nemos-strengths N`` (N < 12) its worker runs
``GridSearchCV`` over N strengths spread evenly over the grid, the largest and the smallest
included (a fit's time depends on its strength: strong penalties converge fastest), and the full
grid's time is extrapolated from the measured time per fit
(``seconds / (n_folds * N + 1) * (5 * 12 + 1)``); the report says which. distglm's
worker also times one plain ``PopulationGLM`` fit (cold: the process's first, compilation
included; warm: the median of the next ``WARM_FITS``) on the same data, so the CV's cost is stated in fits.

Usage::

    .venv/bin/python benchmarks/bench_cv.py            # full size, writes results/bench_cv.*
    .venv/bin/python benchmarks/bench_cv.py --quick    # small smoke run, prints only
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from bench_vs_nemos import RESULT_TAG, run_for_result, feature_mask, machine_info, publish, simulate  # noqa: E402

FULL = dict(n_samples=20_000, n_features=50, n_neurons=500)
QUICK = dict(n_samples=2_000, n_features=50, n_neurons=50)
N_FOLDS = 5
GRID = np.logspace(0, -4, 12)
SEED = 1
WARM_FITS = 5
GOALS = {"speedup_vs_nemos_grid": 20.0, "cost_in_distglm_fits": 5.0}


def nemos_grid(n_strengths: int) -> np.ndarray:
    """``n_strengths`` strengths of ``GRID`` spread evenly over it, the largest and smallest included."""
    return GRID[np.unique(np.round(np.linspace(0, len(GRID) - 1, max(1, min(n_strengths, len(GRID))))).astype(int))]


def _grid_search(mask, n_strengths: int):
    import nemos
    from sklearn.model_selection import GridSearchCV, KFold

    model = nemos.glm.PopulationGLM(observation_model="Poisson", regularizer="Ridge", solver_name="LBFGS",
                                    feature_mask=mask)
    return GridSearchCV(model, {"regularizer_strength": list(nemos_grid(n_strengths))}, cv=KFold(N_FOLDS))


def worker(lib: str, n_samples: int, n_features: int, n_neurons: int, nemos_strengths: int) -> dict:
    mask = feature_mask(n_features, n_neurons)
    X, y = simulate(SEED, n_samples, n_features, n_neurons, mask)
    out = {"lib": lib}
    if lib == "nemos":
        search = _grid_search(mask, nemos_strengths)
        t0, c0 = time.perf_counter(), time.process_time()
        search.fit(X, y)
        seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
        n_strengths = len(nemos_grid(nemos_strengths))
        n_fits = N_FOLDS * n_strengths + 1
        out["grid_search"] = {"seconds": seconds, "strengths": n_strengths, "fits": n_fits,
                              "strength_values": nemos_grid(nemos_strengths).tolist(),
                              "cpu_seconds": cpu,
                              "extrapolated_full_grid_cpu_seconds": cpu / n_fits * (N_FOLDS * len(GRID) + 1),
                              "seconds_per_fit": seconds / n_fits,
                              "extrapolated_full_grid_seconds": seconds / n_fits * (N_FOLDS * len(GRID) + 1)}
    else:
        from distglm.core import cv as core_cv
        from distglm.glm import PopulationGLM, PopulationGLMCV

        one, one_cpu = [], []
        for _ in range(1 + WARM_FITS):
            model = PopulationGLM(regularizer="Ridge", regularizer_strength=GRID[6], feature_mask=mask)
            t0, c0 = time.perf_counter(), time.process_time()
            model.fit(X, y)
            one.append(time.perf_counter() - t0)
            one_cpu.append(time.process_time() - c0)
        # count the candidate fits' evaluations (each one covers every neuron of the fold)
        evaluations, fit_block = [], core_cv.fit_block

        def counted(*args, **kwargs):
            result = fit_block(*args, **kwargs)
            evaluations.append(int(result.state.num_fun_eval))
            return result

        core_cv.fit_block = counted
        cv = PopulationGLMCV(regularizer="Ridge", regularizer_strengths=GRID, cv=N_FOLDS, feature_mask=mask)
        t0, c0 = time.perf_counter(), time.process_time()
        cv.fit(X, y)
        cv_s, cv_cpu = time.perf_counter() - t0, time.process_time() - c0
        core_cv.fit_block = fit_block
        # a fit of a second is at the mercy of the machine's load: the median of a few
        out["one_fit"] = {"cold_seconds": one[0], "warm_seconds": float(np.median(one[1:])), "warm_all_seconds": one[1:],
                          "warm_cpu_seconds": float(np.median(one_cpu[1:])),
                          "evaluations": int(model.solver_state_.num_fun_eval)}
        out["candidate_evaluations"] = evaluations
        out["cv"] = {
            "seconds": cv_s,
            "cpu_seconds": cv_cpu,
            "selected_strengths": np.unique(cv.regularizer_strength_, return_counts=True)[1].tolist(),
            "selected_values": np.unique(cv.regularizer_strength_).tolist(),
            "candidate_fits_converged": int(np.sum(cv.cv_status_ == 0)),
            "candidate_fits": int(cv.cv_status_.size),
        }
    out["load_average"] = os.getloadavg()
    return out


def run_worker(lib: str, sizes: dict, nemos_strengths: int) -> dict:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", lib, "--nemos-strengths", str(nemos_strengths),
           *[arg for key, value in sizes.items() for arg in (f"--{key.replace('_', '-')}", str(value))]]
    # the same environment for both; distglm's persistent compilation cache off, as JAX's is
    env = {k: v for k, v in os.environ.items() if k != "JAX_COMPILATION_CACHE_DIR"}
    env["DISTGLM_COMPILATION_CACHE"] = ""
    return run_for_result(cmd, env, f"{lib} worker")


def markdown(report: dict) -> str:
    m, s, d, n = report["machine"], report["sizes"], report["distglm"], report["nemos"]
    cv_s, warm_s, cold_s = d["cv"]["seconds"], d["one_fit"]["warm_seconds"], d["one_fit"]["cold_seconds"]
    nemos_s = n["grid_search"]["extrapolated_full_grid_seconds"]
    speedup, cost = nemos_s / cv_s, cv_s / warm_s
    goal = report["goals"]
    evals, fit_evals = d["candidate_evaluations"], d["one_fit"]["evaluations"]
    train = (N_FOLDS - 1) / N_FOLDS
    # one evaluation: X @ W and X.T @ D, each 2 * n_samples * n_features * n_neurons flops
    gflop = 4 * s["n_samples"] * s["n_features"] * s["n_neurons"] / 1e9
    work = sum(evals) * train / fit_evals
    allowed = goal["cost_in_distglm_fits"] * fit_evals / (len(evals) * train)
    cv_cpu, warm_cpu = d["cv"]["cpu_seconds"], d["one_fit"]["warm_cpu_seconds"]
    nemos_cpu = n["grid_search"]["extrapolated_full_grid_cpu_seconds"]
    full = n["grid_search"]["strengths"] == len(GRID)
    how = "measured" if full else "extrapolated"

    def verdict(ok):
        return "met" if ok else "NOT met"

    return "\n".join([
        "# Cross-validated Ridge strength: distglm PopulationGLMCV vs GridSearchCV over NeMoS 0.2.8",
        "",
        f"{s['n_samples']:,} samples, {s['n_features']} features, {s['n_neurons']} neurons (Poisson, feature mask, "
        f"float32), {N_FOLDS} contiguous folds x {len(GRID)} strengths (1 down to 1e-4). {m['date_utc']}, "
        f"{m['cpu_count']} CPUs ({m['cpu_model']}), jax {m['versions']['jax']}. Each library in a fresh process.",
        "",
        f"Load average (`uptime`): {m['uptime']}. At the end of each process: distglm "
        f"{', '.join(f'{x:.2f}' for x in d['load_average'])}; NeMoS {', '.join(f'{x:.2f}' for x in n['load_average'])}. "
        "The machine is shared with other work: absolute times are slow and noisy, the ratios are from this one run.",
        "",
        "| | seconds | ratio | goal | |",
        "|---|---:|---:|---|---|",
        f"| distglm PopulationGLMCV, per-neuron selection ({N_FOLDS * len(GRID)} candidate fits + refit) | {cv_s:.1f} "
        "| | | |",
        f"| distglm, one PopulationGLM fit, warm (median of {WARM_FITS}; cold: {cold_s:.1f} s) | {warm_s:.2f} "
        f"| CV = {cost:.1f} fits "
        f"| <= {goal['cost_in_distglm_fits']:.0f} fits | {verdict(cost <= goal['cost_in_distglm_fits'])} |",
        f"| NeMoS GridSearchCV, shared strength, full grid ({how}) | {nemos_s:.1f} | {speedup:.1f}x distglm's "
        f"time | >= {goal['speedup_vs_nemos_grid']:.0f}x | {verdict(speedup >= goal['speedup_vs_nemos_grid'])} |",
        "",
        f"CPU time (the process's, all threads), which a shared machine's load disturbs less than the clock: "
        f"distglm's cross-validation {cv_cpu:.1f} s, one warm fit {warm_cpu:.2f} s (CV = {cv_cpu / warm_cpu:.1f} "
        f"fits); NeMoS's full grid ({how}) {nemos_cpu:.1f} s, {nemos_cpu / cv_cpu:.1f}x distglm's.",
        "",
        (f"NeMoS's full grid was measured: {n['grid_search']['fits']} fits (every fold at every strength, and the "
         f"refit) in {n['grid_search']['seconds']:.1f} s, {n['grid_search']['seconds_per_fit']:.2f} s per fit."
         if full else
         f"NeMoS was measured on {n['grid_search']['strengths']} strength(s) spread over the grid "
         f"({', '.join(f'{v:.3g}' for v in n['grid_search'].get('strength_values', []))}): "
         f"{n['grid_search']['fits']} fits (the folds and the refit) in {n['grid_search']['seconds']:.1f} s, "
         f"{n['grid_search']['seconds_per_fit']:.2f} s per fit; the full grid's time is that per-fit time x "
         f"{N_FOLDS * len(GRID) + 1} fits (an extrapolation, not a measurement)."),
        "",
        f"Work, counted in evaluations (one evaluation is two products over the samples, {gflop:.1f} GFLOP on all "
        f"{s['n_samples']:,} samples, {train:.0%} of that on a fold's training samples): the plain fit took "
        f"{fit_evals}; the {len(evals)} candidate fits took {sum(evals)} ({min(evals)} to {max(evals)} each, "
        f"{sum(evals) / len(evals):.1f} on average), the work of {work:.1f} plain fits before the refit and the "
        "per-candidate passes (the preconditioner's curvature, the held-out scores). At most "
        f"{goal['cost_in_distglm_fits']:.0f} fits of work for {len(evals)} exact candidate fits would allow "
        f"{allowed:.1f} evaluations per candidate, while the fewest a warm-started candidate took to bring every "
        f"neuron's gradient norm below the tolerance was {min(evals)}: "
        + ("that goal is out of reach of exact candidate fits at the default tolerance."
           if allowed < min(evals) else "within reach, by evaluations."),
        "",
        f"distglm's candidate fits: {d['cv']['candidate_fits_converged']} of {d['cv']['candidate_fits']} (strength, "
        f"fold, neuron) fits converged; selected strengths {d['cv']['selected_values']} for "
        f"{d['cv']['selected_strengths']} neurons.",
        "",
    ])


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--nemos-strengths", type=int, default=len(GRID),
                        help="strengths NeMoS's grid search runs, spread over the grid (default: all)")
    parser.add_argument("--worker", choices=["distglm", "nemos"])
    for key in FULL:
        parser.add_argument(f"--{key.replace('_', '-')}", type=int)
    args = parser.parse_args(argv)
    if args.worker:
        sizes = {key: getattr(args, key) for key in FULL}
        print(RESULT_TAG + json.dumps(worker(args.worker, nemos_strengths=args.nemos_strengths, **sizes)))
        return
    sizes = QUICK if args.quick else FULL
    machine = machine_info()
    report = {"machine": machine, "sizes": sizes, "goals": GOALS, "grid": GRID.tolist(), "n_folds": N_FOLDS}
    report["distglm"] = run_worker("distglm", sizes, args.nemos_strengths)
    report["nemos"] = run_worker("nemos", sizes, args.nemos_strengths)
    publish("bench_cv", report, markdown(report), args.quick)


if __name__ == "__main__":
    main()
