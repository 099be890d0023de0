"""Per-neuron vs shared regularizer strength on neurons that need strengths orders of magnitude apart.

The population is ``distglm.demo.simulate_heterogeneous``: rates from 0.01 to 5 spikes per bin,
quiet neurons sharply tuned to 1 feature (linear predictor sd 2.5), loud ones weakly tuned to
all 50 (sd 0.1), so the Ridge strength each neuron needs spans almost three decades. Each
seed draws ``n_train`` training bins, the only samples the selection sees (5 contiguous
folds), and a separate test set of ``n_test`` bins, on which every model is scored (McFadden
pseudo-R2 per neuron, the mean over the test bins):

- per-neuron: ``PopulationGLMCV(per_neuron=True)``, each neuron's strength from its own folds;
- CV-shared: the one strength the population's pooled fold score selects (what
  ``per_neuron=False`` and ``GridSearchCV`` over a ``PopulationGLM`` choose, from the same folds);
- every shared strength of the grid, each a ``PopulationGLM`` fitted on the training bins;
  the best of them on the test set is the best shared strength in hindsight (an upper bound
  for any shared selection, since it peeks at the test set);
- the oracle: each neuron's best strength of the grid on the test set (an upper bound for any
  per-neuron selection).

Usage::

    .venv/bin/python benchmarks/bench_cv_selection.py            # 256 neurons x 3 seeds, writes results/
    .venv/bin/python benchmarks/bench_cv_selection.py --quick    # 32 neurons x 1 seed, prints only
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from bench_vs_nemos import machine_info, publish  # noqa: E402

FULL = dict(n_neurons=256, n_train=1_000, n_test=8_000, n_features=50, seeds=(0, 1, 2))
QUICK = dict(n_neurons=32, n_train=1_000, n_test=8_000, n_features=50, seeds=(0,))
GRID = np.logspace(1, -3, 9)
N_FOLDS = 5
SCORE = "pseudo-r2-McFadden"


def one_seed(seed: int, n_neurons: int, n_train: int, n_test: int, n_features: int) -> dict:
    from distglm.demo import simulate_heterogeneous
    from distglm.glm import PopulationGLM, PopulationGLMCV

    pop = simulate_heterogeneous(n_neurons, n_train + n_test, n_features, seed=seed)
    X, y = pop.X.astype(np.float32), pop.y.astype(np.float32)
    train, test = slice(0, n_train), slice(n_train, None)

    def held_out(model):
        return np.asarray(model.score(X[test], y[test], SCORE, aggregate_sample_scores=lambda a: a.mean(axis=0)))

    t0 = time.perf_counter()
    per_neuron = PopulationGLMCV(regularizer="Ridge", regularizer_strengths=GRID, cv=N_FOLDS).fit(X[train], y[train])
    cv_seconds = time.perf_counter() - t0
    shared = np.stack([held_out(PopulationGLM(regularizer="Ridge", regularizer_strength=s).fit(X[train], y[train]))
                       for s in GRID])
    ours = held_out(per_neuron)
    cv_index = int(np.argmax(per_neuron.population_cv_scores_.mean(axis=1)))
    medians = np.median(shared, axis=1)
    best = int(np.argmax(medians))
    oracle = shared.max(axis=0)
    return {
        "seed": seed,
        "median": {"per_neuron": float(np.median(ours)), "cv_shared": float(medians[cv_index]),
                   "best_shared_in_hindsight": float(medians[best]), "oracle_per_neuron": float(np.median(oracle))},
        "mean": {"per_neuron": float(ours.mean()), "cv_shared": float(shared[cv_index].mean()),
                 "best_shared_in_hindsight": float(shared.mean(axis=1).max()), "oracle_per_neuron": float(oracle.mean())},
        "cv_shared_strength": float(GRID[cv_index]),
        "best_shared_strength": float(GRID[best]),
        "median_by_shared_strength": medians.tolist(),
        "neurons_at_least_as_good_as_best_shared": float(np.mean(ours >= shared[best])),
        "selected_per_neuron": np.bincount(per_neuron.best_index_, minlength=GRID.size).tolist(),
        "oracle_per_neuron": np.bincount(shared.argmax(axis=0), minlength=GRID.size).tolist(),
        "cv_seconds": cv_seconds,
        "load_average": os.getloadavg(),
    }


def markdown(report: dict) -> str:
    m, s = report["machine"], report["sizes"]
    lines = [
        "# Per-neuron vs shared Ridge strength on a population that needs strengths decades apart",
        "",
        f"`distglm.demo.simulate_heterogeneous`: {s['n_neurons']} Poisson neurons, {s['n_features']} features, "
        "rates 0.01 to 5 spikes per bin, quiet neurons sharply tuned to 1 feature (linear predictor sd 2.5), loud "
        f"ones weakly tuned to all {s['n_features']} (sd 0.1). Per seed: {s['n_train']:,} training bins "
        f"({N_FOLDS} contiguous folds, the only samples the selection sees) and a separate test set of "
        f"{s['n_test']:,} bins on which every model is scored. Grid: {GRID.size} Ridge strengths, 10 down to 1e-3. "
        f"Score: held-out McFadden pseudo-R2 per neuron; the table gives its median over neurons. float32, "
        f"{m['date_utc']}, {m['cpu_count']} CPUs ({m['cpu_model']}).",
        "",
        f"Load average (`uptime`) at the start: {m['uptime']}; at the end of each seed: "
        + "; ".join(", ".join(f"{x:.2f}" for x in r["load_average"]) for r in report["seeds"])
        + ". Timing is not the point here; the scores do not depend on the load.",
        "",
        "| seed | per-neuron CV | CV-shared | best shared in hindsight | oracle per neuron | gap to CV-shared "
        "| gap to best shared | neurons >= best shared |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in report["seeds"]:
        med = r["median"]
        lines.append(
            f"| {r['seed']} | {med['per_neuron']:.4f} | {med['cv_shared']:.4f} (s={r['cv_shared_strength']:.3g}) "
            f"| {med['best_shared_in_hindsight']:.4f} (s={r['best_shared_strength']:.3g}) "
            f"| {med['oracle_per_neuron']:.4f} | {med['per_neuron'] - med['cv_shared']:+.4f} "
            f"| {med['per_neuron'] - med['best_shared_in_hindsight']:+.4f} "
            f"| {100 * r['neurons_at_least_as_good_as_best_shared']:.0f}% |")
    lines += [
        "",
        "Means over neurons (same fits): "
        + "; ".join(f"seed {r['seed']}: per-neuron {r['mean']['per_neuron']:.4f}, CV-shared {r['mean']['cv_shared']:.4f}, "
                    f"best shared {r['mean']['best_shared_in_hindsight']:.4f}" for r in report["seeds"]) + ".",
        "",
        "Strengths chosen (count of neurons per grid strength, 10 first): "
        + "; ".join(f"seed {r['seed']}: per-neuron CV {r['selected_per_neuron']}, oracle {r['oracle_per_neuron']}"
                    for r in report["seeds"]) + ".",
        "",
    ]
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args(argv)
    sizes = dict(QUICK if args.quick else FULL)
    seeds = sizes.pop("seeds")
    report = {"machine": machine_info(), "sizes": {**sizes, "seeds": list(seeds)}, "grid": GRID.tolist(),
              "n_folds": N_FOLDS, "score": SCORE}
    report["seeds"] = [one_seed(seed, **sizes) for seed in seeds]
    publish("bench_cv_selection", report, markdown(report), args.quick)


if __name__ == "__main__":
    main()
