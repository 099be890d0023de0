"""Wide designs: time per evaluation against its two matrix products, iterations, peak memory.

For each number of features p (T = 20,000 samples of Poisson counts, Ridge 1e-3, LBFGS at its
default tolerance, float32, full feature mask) a fresh process with one XLA thread (as an actor
has) fits one block of neurons, the block the planner chooses for a population of 128 neurons
on a budget of this machine's available memory per core. It records:

- the fit with the preconditioner ``"auto"`` picks: wall time (compilation, the Gram matrix
  and the preconditioner included), iterations, converged neurons, peak RSS beside the
  planner's estimate;
- for each preconditioner, the time of one function evaluation (the objective and its
  gradient, as the solver calls it, coordinate change included) over the time of its two
  matrix products ``X @ W`` and ``X.T @ D`` alone, and, where a full fit with it is affordable,
  its iterations (the per-neuron Cholesky factor is skipped where its n_block x (p+1)^2 arrays
  would take gigabytes; the diagonal one where its iterations make the fit take many minutes).

NeMoS 0.2.8 is not run here: at these sizes it does not converge within its 500 iterations and
takes minutes to tens of minutes per fit; the table quotes earlier measurements on this machine
(``NEMOS_EARLIER`` below), NeMoS and distglm on the same data, as earlier measurements.

Usage::

    .venv/bin/python benchmarks/bench_wide.py            # full run, writes results/bench_wide.*
    .venv/bin/python benchmarks/bench_wide.py --quick    # small smoke run, prints only
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from functools import partial
from pathlib import Path

from bench_scaling import wait_for_quiet
from bench_vs_nemos import machine_info, publish

HERE = Path(__file__).resolve().parent

FULL = dict(n_samples=20_000, features=(50, 500, 1000, 2000, 4000), n_neurons=128)
QUICK = dict(n_samples=2_000, features=(20, 300), n_neurons=32)
NEURON_CHUNK = 16
STRENGTH = 1e-3
SEED = 5
# full fits with a preconditioner other than the one "auto" picks, up to these widths
CHOLESKY_FIT_MAX = 1000
DIAGONAL_FIT_MAX = 1000
# an evaluation within this factor of its two matrix products
GOAL_EVAL_RATIO = 1.5
# Earlier measurements on this machine (2 shared cores), T = 20,000, 128 neurons, Ridge 1e-3, one
# simulation per p fitted by both libraries: NeMoS 0.2.8's cold fit seconds (its default solver,
# stopped at 500 iterations without converging), its objective, and distglm's objective then
# (per-neuron Cholesky preconditioner). At p = 4,000 NeMoS was projected at ~19 minutes, not run.
NEMOS_EARLIER = {50: (35, 59.811, 59.797), 500: (149, 57.555, 57.317), 1000: (363, 56.186, 55.410),
                 2000: (370, 53.870, 50.910)}
ONE_THREAD = {"XLA_FLAGS": "--xla_cpu_multi_thread_eigen=false", "PJRT_NPROC": "1", "OMP_NUM_THREADS": "1",
              "OPENBLAS_NUM_THREADS": "1", "JAX_PLATFORMS": "cpu"}


def simulate(n_samples: int, n_features: int, n_neurons: int):
    """``(X, y)``: standardised correlated features (float32) and Poisson counts (float32)."""
    import numpy as np

    rng = np.random.default_rng(SEED)
    X = rng.standard_normal((n_samples, n_features), dtype=np.float32)
    X[:, 1:] += np.float32(0.3) * X[:, :1]
    X /= np.float32(np.sqrt(n_features))
    weights = (0.5 * rng.standard_normal((n_features, n_neurons))).astype(np.float32)
    y = rng.poisson(np.exp(X @ weights - 0.5)).astype(np.float32)
    return X, y


def _timed(fn, *args, reps: int = 5) -> tuple[float, float]:
    """Fastest wall and CPU seconds of ``reps`` calls of ``fn(*args)`` (after one call that
    compiles). On a shared machine the fastest is the one least slowed by other processes; the
    process's CPU time (one XLA thread) counts its own work only, whatever the others' load."""
    import jax

    jax.block_until_ready(fn(*args))
    walls, cpus = [], []
    for _ in range(reps):
        t0, c0 = time.perf_counter(), time.process_time()
        jax.block_until_ready(fn(*args))
        walls.append(time.perf_counter() - t0)
        cpus.append(time.process_time() - c0)
    return min(walls), min(cpus)


def evaluation_times(X, y, mask, strength, config, gram, kinds) -> dict:
    """Seconds per evaluation of each preconditioner's objective, and of the two matmuls alone.

    An evaluation is timed inside one jitted loop of evaluations (k minus 1 evaluations, over
    k - 1, with k enough for the loop to take about 0.3 s, at least 4), so that what the solver
    does once per fit (the preconditioner, its inverse) is not counted. ``"none"`` is the
    objective in plain coordinates: the data pass and the penalty alone. The matmuls are timed
    again beside each kind, so each ratio compares times taken under the same load. Wall and
    CPU seconds are both kept; their ratios are given apart.
    """
    import jax
    import jax.numpy as jnp
    import numpy as np

    from distglm.core import fit as core_fit

    Xj, yj, mj = jnp.asarray(X), jnp.asarray(y), jnp.asarray(mask)
    n_features, n_neurons = mask.shape
    products = jax.jit(lambda X, W, D: (X @ W, X.T @ D))
    W, D = jnp.zeros((n_features, n_neurons), X.dtype), jnp.ones((X.shape[0], n_neurons), X.dtype)
    wall, cpu = _timed(products, Xj, W, D)
    out = {"matmuls_s": wall, "matmuls_cpu_s": cpu}
    k = max(4, int(np.ceil(0.3 / max(cpu, 1e-4))))
    init = core_fit.default_init(config, y, n_features, X.dtype)
    theta0 = core_fit.Params(jnp.asarray(init.coef), jnp.asarray(init.intercept))
    active = jnp.ones(n_neurons, bool)
    for kind in ("none", *kinds):
        if kind == "none":
            precond = None
        else:
            design = gram.for_preconditioner(kind, mask, active)
            precond = jax.jit(lambda design: core_fit._precondition(kind, design, core_fit._chunk(Xj, yj), mj,
                                                                    theta0, strength, active, config))(design)

        @partial(jax.jit, static_argnums=2)
        def evaluations(precond, v, k):
            objective = core_fit._build(core_fit._chunk(Xj, yj), mj, strength, active, precond, config).solver.fun

            def body(_, v):
                _, grad = objective(v)
                return jax.tree_util.tree_map(lambda a, g: a - 1e-4 * g, v, grad)

            return jax.lax.fori_loop(0, k, body, v)

        v = core_fit.Params(jnp.zeros((n_features, n_neurons), X.dtype), jnp.zeros(n_neurons, X.dtype))
        many, one = _timed(evaluations, precond, v, k), _timed(evaluations, precond, v, 1)
        per_eval, per_eval_cpu = (max((a - b) / (k - 1), 0.0) for a, b in zip(many, one))
        matmuls, matmuls_cpu = _timed(products, Xj, W, D)
        out["matmuls_s"], out["matmuls_cpu_s"] = min(out["matmuls_s"], matmuls), min(out["matmuls_cpu_s"], matmuls_cpu)
        out[kind] = {"eval_s": per_eval, "matmuls_s": matmuls, "eval_over_matmuls": per_eval / matmuls,
                     "eval_cpu_s": per_eval_cpu, "matmuls_cpu_s": matmuls_cpu,
                     "eval_over_matmuls_cpu": per_eval_cpu / matmuls_cpu, "evaluations_timed": k}
    return out


def peak_rss() -> int:
    """This process's own peak resident memory (VmHWM), in bytes: ``getrusage``'s ru_maxrss would
    carry the peak of the parent that forked it across the exec."""
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmHWM:")) * 1024


def run_one(n_samples: int, n_features: int, n_neurons: int) -> dict:
    """In a fresh process: the fits and timings for one width (see the module docstring)."""
    import numpy as np

    from distglm.core import FitConfig, PoissonObservations
    from distglm.core import fit as core_fit
    from distglm.core.regularizers import Ridge

    X, y = simulate(n_samples, n_features, n_neurons)
    mask = np.ones((n_features, n_neurons), np.float32)
    strength = np.full(mask.shape, STRENGTH, np.float32)
    config = FitConfig(PoissonObservations(), "exp", Ridge(), "LBFGS", ())
    rss_before = peak_rss()
    auto = core_fit.choose_preconditioner(mask)

    def full_fit(kind):
        t0 = time.perf_counter()
        res = core_fit.fit_block(X, y, mask, config, strength=strength, preconditioner=kind)
        seconds = time.perf_counter() - t0
        return {"seconds": seconds, "iterations_max": int(res.n_iter.max()),
                "iterations_median": float(np.median(res.n_iter)), "converged": int(res.converged.sum()),
                "objective": float(np.sum(res.loss))}

    out = {"n_samples": n_samples, "n_features": n_features, "n_neurons": n_neurons, "auto": auto,
           "rss_before_fit": rss_before}
    out["fits"] = {auto: full_fit(auto)}
    out["peak_rss"] = peak_rss()
    spec = core_fit.state_spec(config, n_samples, n_features, n_neurons, "float32", strength)
    out["state_bytes_per_neuron"] = sum(int(np.prod(s)) * 4 for s, _, per in spec.values() if per)
    kinds = ["shared", "diagonal"] + (["cholesky"] if n_features <= CHOLESKY_FIT_MAX else [])
    for kind in kinds:
        affordable = n_features <= (CHOLESKY_FIT_MAX if kind == "cholesky" else DIAGONAL_FIT_MAX)
        if kind not in out["fits"] and (kind == "shared" or affordable):
            out["fits"][kind] = full_fit(kind)
    t0 = time.perf_counter()
    gram = core_fit.DesignGram(X)
    out["gram_s"] = time.perf_counter() - t0
    out["evaluations"] = evaluation_times(X, y, mask, strength, config, gram, kinds)
    return out


def planned_block(n_samples: int, n_features: int, n_neurons: int, budget: int) -> tuple[int, dict]:
    from distglm.core.fit import bucket_rows
    from distglm.plan import PROCESS_BASE_BYTES, estimate_block_memory, largest_block

    kind = "cholesky" if n_features + 1 <= 256 else "shared"
    kwargs = dict(preconditioner=kind, base=PROCESS_BASE_BYTES)
    block = largest_block(budget, n_neurons, NEURON_CHUNK, bucket_rows(n_samples, 1), n_features, **kwargs)
    estimate = estimate_block_memory(bucket_rows(n_samples, 1), n_features, block, **kwargs)
    return block, estimate._asdict()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--one", nargs=3, type=int, metavar=("T", "P", "N"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print("RESULT " + json.dumps(run_one(*args.one)))
        return

    import psutil

    sizes = QUICK if args.quick else FULL
    report = {"machine": machine_info(), "quiet": wait_for_quiet(max_wait_s=0 if args.quick else 120),
              "sizes": sizes, "strength": STRENGTH, "runs": []}
    budget = int(psutil.virtual_memory().available / (os.cpu_count() or 1))
    report["budget_bytes"] = budget
    env = {**os.environ, **ONE_THREAD, "PYTHONPATH": str(HERE.parent)}
    for p in sizes["features"]:
        block, estimate = planned_block(sizes["n_samples"], p, sizes["n_neurons"], budget)
        load_before = os.getloadavg()[0]
        t0 = time.perf_counter()
        done = subprocess.run([sys.executable, __file__, "--one", str(sizes["n_samples"]), str(p), str(block)],
                              capture_output=True, text=True, env=env)
        if done.returncode != 0:
            print(done.stderr[-3000:], file=sys.stderr)
            raise SystemExit(f"the run at p = {p} failed")
        run = json.loads(done.stdout.split("RESULT ", 1)[1])
        run.update(estimate=estimate, wall_s=time.perf_counter() - t0, load_before=load_before,
                   load_after=os.getloadavg()[0])
        report["runs"].append(run)
        print(f"p = {p}: block {block}, {json.dumps(run['fits'])}", flush=True)
    publish("bench_wide", report, render(report), args.quick)


def render(report: dict) -> str:
    m, sizes = report["machine"], report["sizes"]
    lines = [
        f"# Wide designs: {sizes['n_samples']:,} samples, up to {max(sizes['features']):,} features",
        "",
        f"Poisson counts, Ridge {report['strength']}, LBFGS (default tolerance), full feature mask, float32; "
        f"one process per width with one XLA thread (as an actor), fitting the block the planner chooses for "
        f"{sizes['n_neurons']} neurons in chunks of {NEURON_CHUNK} on a budget of "
        f"{report['budget_bytes'] / 1e9:.1f} GB (available memory per core). {m['date_utc']}, "
        f"{m['cpu_count']} CPUs ({m['cpu_model']}). The machine is shared: the load average is recorded "
        f"beside each run; times are indicative (several times slower under load), ratios within one run are "
        f"steadier.",
        "",
        f"Before the benchmark the 1-minute load average was {report['quiet']['load_at_start']:.2f}; after "
        f"waiting {report['quiet']['waited_s']} s (at most {report['quiet']['max_wait_s']} s) for it to fall "
        f"below {report['quiet']['threshold']} it was {report['quiet']['load_after_wait']:.2f}.",
        "",
        "| p | block | load before / after | preconditioner (auto) | fit s (cold) | iterations max / median "
        "| converged | peak RSS GB | estimate GB | estimate / peak |",
        "|---:|---:|---|---|---:|---|---:|---:|---:|---:|",
    ]
    for r in report["runs"]:
        fit = r["fits"][r["auto"]]
        est = r["estimate"]["total"]
        lines.append(f"| {r['n_features']:,} | {r['n_neurons']} | {r['load_before']:.1f} / {r['load_after']:.1f} "
                     f"| {r['auto']} | {fit['seconds']:.1f} | {fit['iterations_max']} / "
                     f"{fit['iterations_median']:.0f} | {fit['converged']}/{r['n_neurons']} | "
                     f"{r['peak_rss'] / 1e9:.2f} | {est / 1e9:.2f} | {est / r['peak_rss']:.2f} |")
    lines += [
        "",
        f"Time of one evaluation (objective and gradient, coordinate change included) over its two matrix "
        f"products alone (goal: at most {GOAL_EVAL_RATIO}x), as wall-clock seconds and as the ratio of wall and of "
        f"CPU seconds (one XLA thread: its CPU time is its own work, which the other processes' load does not "
        f"lengthen), and the iterations of a full fit with each preconditioner (- where not run: the per-neuron "
        f"Cholesky factor above p = {CHOLESKY_FIT_MAX}, whose block x (p+1)^2 arrays take gigabytes; the diagonal "
        f"one above p = {DIAGONAL_FIT_MAX}, whose fits take many minutes).",
        "",
        "| p | matmuls s | plain coordinates: eval s (ratio wall / CPU) | shared: eval s (ratio wall / CPU), iters "
        "| diagonal: eval s (ratio wall / CPU), iters | cholesky: eval s (ratio wall / CPU), iters | Gram s |",
        "|---:|---:|---|---|---|---|---:|",
    ]

    def cell(ev):
        return f"{ev['eval_s']:.3f} ({ev['eval_over_matmuls']:.2f}x / {ev['eval_over_matmuls_cpu']:.2f}x)"

    for r in report["runs"]:
        ev = r["evaluations"]
        cells = [cell(ev["none"])]
        for kind in ("shared", "diagonal", "cholesky"):
            if kind not in ev:
                cells.append("-")
                continue
            iters = r["fits"].get(kind, {}).get("iterations_max", "-")
            cells.append(f"{cell(ev[kind])}, {iters}")
        lines.append(f"| {r['n_features']:,} | {ev['matmuls_s']:.3f} | " + " | ".join(cells)
                     + f" | {r['gram_s']:.1f} |")
    worst = {unit: max(r["evaluations"][r["auto"]][f"eval_over_matmuls{unit}"] for r in report["runs"])
             for unit in ("", "_cpu")}
    added = max(r["evaluations"][r["auto"]]["eval_over_matmuls_cpu"]
                - r["evaluations"]["none"]["eval_over_matmuls_cpu"] for r in report["runs"])
    lines += [
        "",
        f"Worst ratio of an evaluation with the preconditioner \"auto\" picks over all p: {worst['_cpu']:.2f}x in "
        f"CPU time ({'met' if worst['_cpu'] <= GOAL_EVAL_RATIO else 'not met'}: goal {GOAL_EVAL_RATIO}x), "
        f"{worst['']:.2f}x in wall time; the most the preconditioner adds to the plain-coordinates evaluation: "
        f"{added:.2f}x the matmuls (CPU time).",
        "",
        "NeMoS 0.2.8 beside it, from earlier measurements on this machine (not rerun here: 128 neurons, its "
        "default solver stopped at 500 iterations without converging; both libraries fitted the same "
        "simulation, another than this run's, so compare the two objectives of a row with each other, and "
        "NeMoS's time with this run's fit time only as an order of magnitude).",
        "",
        "| p | NeMoS s (earlier) | NeMoS / distglm objective (earlier, same data) | distglm fit s (this run) |",
        "|---:|---:|---|---:|",
    ]
    for r in report["runs"]:
        earlier = NEMOS_EARLIER.get(r["n_features"])
        if earlier:
            nemos = f"{earlier[0]} | {earlier[1]:.3f} / {earlier[2]:.3f}"
        else:
            nemos = "not run (~19 min projected) | -" if r["n_features"] == 4000 else "not measured | -"
        lines.append(f"| {r['n_features']:,} | {nemos} | {r['fits'][r['auto']]['seconds']:.1f} |")
    lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
