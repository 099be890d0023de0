"""distglm SVRG vs distglm LBFGS vs NeMoS 0.2.8 SVRG on a Ridge-penalised Poisson population.

Every fit runs in its own fresh Python process (float32, JAX's default), so its peak resident
memory (``VmHWM``) is its own; "cold" is the process's first ``fit`` (compilation included),
"warm" the faster of two more ``fit`` calls on the same data in the same process. Every solution is
scored by one function, each neuron's penalised objective in float64 numpy, and compared
neuron by neuron with distglm LBFGS at a tight tolerance (``tol=1e-8``, run in float64),
the reference optimum.

NeMoS's SVRG has no default step size or batch size for the exponential link (its defaults
are computed for the softplus link only), so it runs with its class defaults (one sample per
step, step size 1e-3, tol 1e-3): an epoch is ``n_samples`` sequential steps. It runs on the
first ``--nemos-neurons`` neurons (default all of them) and is stopped after
``--nemos-timeout`` seconds; the table says which.

Usage::

    .venv/bin/python benchmarks/bench_svrg.py            # full size, writes results/
    .venv/bin/python benchmarks/bench_svrg.py --quick    # small smoke run, prints only
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
RESULT_TAG = "BENCH_RESULT_JSON:"

FULL = dict(n_samples=200_000, n_features=50, n_neurons=256)
QUICK = dict(n_samples=20_000, n_features=20, n_neurons=32)
STRENGTH = 1e-3
SEED = 0
GOAL_GAP = 1e-5

CHILD = r"""
import json, sys, time
import numpy as np
spec = json.loads(sys.argv[1])
import jax
jax.config.update("jax_enable_x64", spec["x64"])
X = np.load(spec["data"] + "/X.npy")
y = np.ascontiguousarray(np.load(spec["data"] + "/y.npy")[:, :spec["n_neurons"]])
def status_mb(field):
    # VmHWM is this process's own peak (getrusage's ru_maxrss keeps the forking parent's)
    line = next(line for line in open("/proc/self/status") if line.startswith(field + ":"))
    return int(line.split()[1]) / 1024
peak_rss_mb = lambda: status_mb("VmHWM")
rss_data_mb = status_mb("VmRSS")
if spec["library"] == "nemos":
    import nemos as nmo
    make = lambda: nmo.glm.PopulationGLM(regularizer="Ridge", regularizer_strength=spec["strength"],
                                         solver_name=spec["solver"], solver_kwargs=spec["kwargs"])
else:
    from distglm.glm import PopulationGLM
    make = lambda: PopulationGLM(regularizer="Ridge", regularizer_strength=spec["strength"],
                                 solver_name=spec["solver"], solver_kwargs=spec["kwargs"])
times = []
for _ in range(spec["repeats"]):
    model = make()
    start = time.perf_counter()
    model.fit(X, y)
    jax.block_until_ready(model.coef_)
    times.append(time.perf_counter() - start)
state = model.solver_state_
print("BENCH_RESULT_JSON:" + json.dumps({
    "times": times,
    "coef": np.asarray(model.coef_, dtype=float).tolist(),
    "intercept": np.asarray(model.intercept_, dtype=float).tolist(),
    "epochs": int(np.asarray(state.iter_num)),
    "peak_rss_mb": peak_rss_mb(),
    "rss_data_mb": rss_data_mb,
}))
"""


def simulate(n_samples, n_features, n_neurons):
    """Poisson counts of shape (n_samples, n_neurons) from a random linear model, float32 inputs."""
    rng = np.random.default_rng(SEED)
    X = (rng.normal(size=(n_samples, n_features)) / np.sqrt(n_features)).astype(np.float32)
    weights = 0.5 * rng.normal(size=(n_features, n_neurons))
    y = rng.poisson(np.exp(X @ weights - 1.5)).astype(np.float32)
    return X, y


def objective(data, n_neurons, coef, intercept):
    """Each neuron's penalised loss in float64, shape (n_neurons,)."""
    X = np.load(Path(data) / "X.npy").astype(np.float64)
    y = np.load(Path(data) / "y.npy")[:, :n_neurons].astype(np.float64)
    coef, intercept = np.asarray(coef), np.asarray(intercept)
    eta = X @ coef + intercept
    return np.mean(np.exp(eta) - y * eta, axis=0) + 0.5 * STRENGTH * np.sum(coef**2, axis=0)


def run(spec, timeout):
    """One fit in a fresh process; None when it ran past ``timeout`` seconds."""
    env = dict(os.environ, PYTHONPATH=str(HERE.parent) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    try:
        out = subprocess.run([sys.executable, "-c", CHILD, json.dumps(spec)], capture_output=True, text=True,
                             timeout=timeout, env=env, check=True)
    except subprocess.TimeoutExpired:
        return None
    except subprocess.CalledProcessError as err:
        raise RuntimeError(f"benchmark process failed:\n{err.stderr[-3000:]}") from err
    line = next(line for line in out.stdout.splitlines() if line.startswith(RESULT_TAG))
    result = json.loads(line[len(RESULT_TAG):])
    result["load_after"] = os.getloadavg()
    return result


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small smoke run; prints only")
    parser.add_argument("--nemos-neurons", type=int, default=256, help="neurons NeMoS SVRG fits")
    parser.add_argument("--nemos-timeout", type=float, default=900.0, help="seconds before NeMoS SVRG is stopped")
    args = parser.parse_args()
    sizes = QUICK if args.quick else FULL
    n = sizes["n_neurons"]
    data = tempfile.TemporaryDirectory()
    X, y = simulate(**sizes)
    np.save(Path(data.name) / "X.npy", X)
    np.save(Path(data.name) / "y.npy", y)
    del X, y
    base = dict(data=data.name, strength=STRENGTH, x64=False, repeats=3)
    load_start = os.getloadavg()

    runs = {
        "distglm LBFGS": dict(base, library="distglm", solver="LBFGS", kwargs={}, n_neurons=n),
        "distglm SVRG": dict(base, library="distglm", solver="SVRG", kwargs={}, n_neurons=n),
        f"NeMoS SVRG ({args.nemos_neurons} neurons)": dict(base, library="nemos", solver="SVRG", kwargs={},
                                                           n_neurons=args.nemos_neurons, repeats=1),
    }
    reference = run(dict(base, library="distglm", solver="LBFGS", kwargs={"tol": 1e-8}, n_neurons=n, x64=True,
                         repeats=1), timeout=3600)
    best = objective(data.name, n, reference["coef"], reference["intercept"])
    rows = {}
    for name, spec in runs.items():
        timeout = args.nemos_timeout if spec["library"] == "nemos" else 3600
        result = run(spec, timeout)
        if result is None:
            rows[name] = {"neurons": spec["n_neurons"], "timed_out_s": timeout}
            print(f"{name}: stopped after {timeout:.0f} s")
            continue
        k = spec["n_neurons"]
        values = objective(data.name, k, result["coef"], result["intercept"])
        gap = (values - best[:k]) / np.abs(best[:k])
        rows[name] = {
            "neurons": k,
            "cold_s": result["times"][0],
            "warm_s": min(result["times"][1:]) if len(result["times"]) > 1 else None,
            "epochs_or_iterations": result["epochs"],
            "peak_rss_mb": result["peak_rss_mb"],
            "rss_with_data_mb": result["rss_data_mb"],
            "max_rel_gap_to_lbfgs": float(np.max(gap)),
            "median_rel_gap_to_lbfgs": float(np.median(gap)),
            "load_after": result["load_after"],
        }
        print(name, json.dumps(rows[name]))

    svrg, lbfgs = rows["distglm SVRG"], rows["distglm LBFGS"]
    record = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, {platform.platform()}",
        "sizes": sizes, "strength": STRENGTH, "dtype": "float32", "load_start": load_start,
        "reference": "distglm LBFGS tol=1e-8 in float64", "goal_max_rel_gap": GOAL_GAP,
        "runs": rows,
        "svrg_over_lbfgs_warm": svrg["warm_s"] / lbfgs["warm_s"],
        "svrg_over_lbfgs_cold": svrg["cold_s"] / lbfgs["cold_s"],
    }
    print(json.dumps({k: record[k] for k in ("svrg_over_lbfgs_warm", "svrg_over_lbfgs_cold")}))
    if args.quick:
        return
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "bench_svrg.json").write_text(json.dumps(record, indent=2) + "\n")
    (RESULTS / "bench_svrg.md").write_text(markdown(record))


def markdown(record) -> str:
    s = record["sizes"]
    lines = [
        "# distglm SVRG vs distglm LBFGS vs NeMoS 0.2.8 SVRG",
        "",
        f"Poisson, Ridge (strength {record['strength']}), {s['n_samples']:,} samples x {s['n_features']} features x "
        f"{s['n_neurons']} neurons, {record['dtype']}, each library's default solver settings; every fit in a fresh "
        "process. Written by `benchmarks/bench_svrg.py` on "
        f"{record['date']} ({record['machine']}); load average at the start "
        f"{', '.join(f'{x:.2f}' for x in record['load_start'])} (1, 5, 15 min).",
        "",
        f"Objective gap: each neuron's penalised objective (float64 numpy) relative to {record['reference']}; "
        f"the goal is a largest gap of at most {record['goal_max_rel_gap']:g}.",
        "",
        "Memory: the process's peak resident set over both fits, and its resident set once the data "
        "(float32 X and y, loaded from .npy) were in memory, before the first fit.",
        "",
        "| run | neurons | cold fit (s) | warm fit (s) | epochs / iterations | peak RSS (MB) | RSS with data (MB) | "
        "max rel. gap | median rel. gap | load after (1 min) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, row in record["runs"].items():
        if "timed_out_s" in row:
            lines.append(f"| {name} | {row['neurons']} | stopped after {row['timed_out_s']:.0f} s | | | | | | | |")
            continue
        warm = "" if row["warm_s"] is None else f"{row['warm_s']:.2f}"
        lines.append(f"| {name} | {row['neurons']} | {row['cold_s']:.2f} | {warm} | {row['epochs_or_iterations']} | "
                     f"{row['peak_rss_mb']:.0f} | {row['rss_with_data_mb']:.0f} | {row['max_rel_gap_to_lbfgs']:.1e} | "
                     f"{row['median_rel_gap_to_lbfgs']:.1e} | {row['load_after'][0]:.2f} |")
    lines += [
        "",
        f"distglm SVRG / distglm LBFGS, same run: warm {record['svrg_over_lbfgs_warm']:.2f}x the time, "
        f"cold {record['svrg_over_lbfgs_cold']:.2f}x.",
        "",
        "NeMoS SVRG has no default step or batch size for the exponential link: it runs its class defaults "
        "(batch 1, step 1e-3, tol 1e-3 on its own error), so an epoch is n_samples sequential steps, and it runs "
        "once (no warm fit). Its gap says how far its default stopping rule leaves it from the optimum.",
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
