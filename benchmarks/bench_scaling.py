"""Scaling of the distributed fit: 1 vs 2 Ray actors, and the Ray path vs the in-memory fit.

Three simulated populations (Poisson counts, a random feature mask, Ridge, LBFGS, float32): a
small one (2,048 neurons x 20,000 samples x 50 features), where the fixed costs of a Ray fit
(Ray start, actor start, compilation, the driver's preparation) are of the order of the solves,
a large one (8,192 neurons x 50,000 samples x 50 features), closer to a real recording, where
the solves dominate, and a wide one (the large one with 200 features), whose solves take four
times as long for the same reads of y. Each is written once to a Zarr store. Each run then happens in its own fresh process:

- ``memory``: ``PopulationGLM(..., feature_mask=mask).fit(X, y)`` on the same data read back
  from the store; cold (compilation included) and warm (a second fit). JAX uses every core.
- ``ray-1`` and ``ray-2``: a fresh local Ray (``ray.init(num_cpus=2)``, timed apart), then
  ``distglm.fit(path, model, num_actors=N)``; each actor runs XLA on one thread and starts
  with an empty persistent compilation cache, so every actor compiles. ``ray-1-warm`` and
  ``ray-2-warm`` run again with the cache the cold run left.

Two throughputs per Ray run:

- end to end: neurons / wall time of ``distglm.fit`` (Ray already running);
- steady state: from ``on_block`` callbacks timestamped in the driver, the neurons of every
  block that is not its actor's first, divided by the time from the first block completion
  (of any actor) to the last block completion. This leaves out Ray's and the actors' start,
  compilation and the driver's preparation; it counts the tail where one actor may idle.

The report also splits each Ray fit's time with ``FitReport.timings``. A short probe measures
how much this machine gains from running two single-threaded processes at once, the ceiling
for two actors. Before the benchmark, and (briefly) before each run, the script waits for the
1-minute load average to fall below a threshold and records the load either way.

Usage::

    .venv/bin/python benchmarks/bench_scaling.py            # full size, writes results/
    .venv/bin/python benchmarks/bench_scaling.py --quick    # small smoke run, prints only
    .venv/bin/python benchmarks/bench_scaling.py --only small   # one configuration
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import threading

import numpy as np
import psutil

from bench_vs_nemos import RESULT_TAG, CompileClock, machine_info, publish

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"

# name -> sizes and the block size (the same plan for every actor count: the default plan
# shrinks blocks to keep more actors busy)
FULL = {
    "small": dict(n_samples=20_000, n_features=50, n_neurons=2_048, block_size=256),
    "large": dict(n_samples=50_000, n_features=50, n_neurons=8_192, block_size=256),
    # a wide design (stimulus and coupling features): four times the solve per block, the same
    # reads of y
    "wide": dict(n_samples=50_000, n_features=200, n_neurons=8_192, block_size=256),
}
QUICK = {
    "small": dict(n_samples=4_000, n_features=20, n_neurons=256, block_size=64),
    "large": dict(n_samples=8_000, n_features=20, n_neurons=512, block_size=64),
    "wide": dict(n_samples=8_000, n_features=80, n_neurons=512, block_size=64),
}
STRENGTH = 1e-3
MASK_DENSITY = 0.8
SEED = 7
GOALS = {
    # neurons/s with 2 actors over neurons/s with 1, end to end (wall time of distglm.fit)
    "two_actor_speedup": 1.7,
    # the same in the steady state (blocks after each actor's first)
    "two_actor_speedup_steady": 1.7,
    # wall time of the Ray fit (best actor count, Ray already running) over the in-memory cold fit
    "ray_over_memory": 1.3,
}
# Before the benchmark, wait up to QUIET_WAIT_S for the 1-minute load average to fall below
# QUIET_LOAD. Before each run (whose predecessor raised the load average itself), wait up to
# RUN_WAIT_S for the processes outside this benchmark to use less than OTHERS_QUIET_CORES.
QUIET_LOAD = 1.5
QUIET_WAIT_S = 300.0
RUN_WAIT_S = 30.0
OTHERS_QUIET_CORES = 0.3
PROBE_SECONDS = 3.0


def simulate(n_samples: int, n_features: int, n_neurons: int):
    """X of shape (n_samples, n_features), int32 counts y of shape (n_samples, n_neurons), 0/1 mask."""
    rng = np.random.default_rng(SEED)
    X = rng.normal(size=(n_samples, n_features)).astype(np.float32)
    mask = (rng.random((n_features, n_neurons)) < MASK_DENSITY).astype(np.uint8)
    W = (rng.normal(scale=0.1, size=(n_features, n_neurons)) * mask).astype(np.float32)
    b = rng.uniform(np.log(0.1), np.log(1.0), size=n_neurons).astype(np.float32)
    y = np.empty((n_samples, n_neurons), dtype=np.int32)
    for start in range(0, n_neurons, 1024):  # a slice at a time: the rates stay small
        stop = min(start + 1024, n_neurons)
        y[:, start:stop] = rng.poisson(np.exp(X @ W[:, start:stop] + b[start:stop]))
    return X, y, mask


def wait_for_quiet(threshold: float = QUIET_LOAD, max_wait_s: float = QUIET_WAIT_S, poll_s: float = 5.0) -> dict:
    """Wait until the 1-minute load average is below ``threshold``, at most ``max_wait_s``."""
    t0 = time.monotonic()
    first = load = os.getloadavg()[0]
    while load >= threshold and time.monotonic() - t0 < max_wait_s:
        time.sleep(poll_s)
        load = os.getloadavg()[0]
    return {"threshold": threshold, "max_wait_s": max_wait_s, "load_at_start": first,
            "load_after_wait": load, "waited_s": round(time.monotonic() - t0, 1), "quiet": load < threshold}


class OtherCPU:
    """Cores used on average, while the block runs, by processes outside this process's tree.

    A thread records this process's descendants (the workers, Ray and its actors) as they
    appear; the CPU time that every other process gained between entry and exit, over the
    elapsed time, is what the machine's other users took. Processes that both start and end
    inside the block are missed, so this is a lower bound.
    """

    def __init__(self, every_s: float = 0.5):
        self.me = psutil.Process()
        self.ours = {self.me.pid}
        self.every_s = every_s
        self.cores = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _mark_ours(self):
        try:
            self.ours.update(p.pid for p in self.me.children(recursive=True))
        except psutil.Error:
            pass

    def _snapshot(self) -> dict:
        self._mark_ours()
        out = {}
        for proc in psutil.process_iter(["create_time", "cpu_times"]):
            times = proc.info["cpu_times"]
            if proc.pid not in self.ours and times is not None:
                out[proc.pid] = (proc.info["create_time"], times.user + times.system)
        return out

    def _run(self):
        while not self._stop.wait(self.every_s):
            self._mark_ours()

    def __enter__(self):
        self._t0 = time.perf_counter()
        self._start = self._snapshot()
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        end = self._snapshot()
        used = 0.0
        for pid, (created, cpu) in end.items():
            if pid in self.ours:
                continue
            before = self._start.get(pid)
            used += cpu - before[1] if before is not None and before[0] == created else cpu
        self.cores = used / max(time.perf_counter() - self._t0, 1e-9)


def wait_for_others(max_wait_s: float = RUN_WAIT_S, threshold: float = OTHERS_QUIET_CORES,
                    sample_s: float = 2.0) -> dict:
    """Wait until other processes use fewer than ``threshold`` cores (2 s samples), at most ``max_wait_s``."""
    t0 = time.monotonic()
    while True:
        with OtherCPU() as other:
            time.sleep(sample_s)
        if other.cores < threshold or time.monotonic() - t0 >= max_wait_s:
            break
    return {"others_cores_before": other.cores, "waited_s": round(time.monotonic() - t0, 1),
            "load_average_before": os.getloadavg()[0]}


def model_kwargs() -> dict:
    return dict(observation_model="Poisson", regularizer="Ridge", regularizer_strength=STRENGTH,
                solver_name="LBFGS")


# ------------------------------------------------------------------ workers
def memory_worker(path: str, out_dir: str) -> dict:
    from distglm import store
    from distglm.glm import PopulationGLM

    clock = CompileClock()
    info = store.open_inputs(path)
    X = store.read_X(path).astype(np.float32)
    y = store.read_y_block(path, 0, info.n_neurons)
    mask = store.read_mask_block(path, 0, info.n_neurons)
    times, compile_s = [], []
    for _ in range(2):
        model = PopulationGLM(feature_mask=mask, **model_kwargs())
        before = clock.snapshot()
        t0 = time.perf_counter()
        model.fit(X, y)
        coef = np.asarray(model.coef_)
        times.append(time.perf_counter() - t0)
        compile_s.append(sum(CompileClock.delta(before, clock.snapshot()).values()))
    np.save(os.path.join(out_dir, "memory_coef.npy"), coef)
    np.save(os.path.join(out_dir, "memory_intercept.npy"), np.asarray(model.intercept_))
    return {
        "cold_s": times[0],
        "warm_s": times[1],
        "cold_compile_s": compile_s[0],
        "warm_compile_s": compile_s[1],
        "n_converged": int(np.sum(model.converged_)),
        "neurons_per_second_cold": info.n_neurons / times[0],
    }


def steady_state(events: list[dict]) -> dict:
    """Throughput of the blocks after each actor's first, from the driver's timestamped callbacks.

    ``events``: one dict per finished block with ``t`` (seconds since the fit started, taken
    in the driver), ``pid`` (the actor), ``first_block`` and ``n_neurons``.
    """
    firsts = [e["t"] for e in events if e["first_block"]]
    later = [e for e in events if not e["first_block"]]
    if not firsts or not later:
        return {"steady_neurons": 0, "steady_window_s": 0.0, "steady_neurons_per_second": None,
                "steady_neurons_per_second_actor_sum": None}
    window = max(e["t"] for e in events) - min(firsts)
    # alternative: each actor's own window (its first completion to its last), rates summed
    per_actor = []
    for pid in {e["pid"] for e in events}:
        mine = [e for e in events if e["pid"] == pid]
        own = [e for e in mine if not e["first_block"]]
        if own:
            span = max(e["t"] for e in own) - min(e["t"] for e in mine if e["first_block"])
            per_actor.append(sum(e["n_neurons"] for e in own) / span)
    n = sum(e["n_neurons"] for e in later)
    return {
        "first_block_done_s": min(firsts),
        "all_first_blocks_done_s": max(firsts),
        "last_block_done_s": max(e["t"] for e in events),
        "steady_neurons": n,
        "steady_window_s": window,
        "steady_neurons_per_second": n / window if window > 0 else None,
        "steady_neurons_per_second_actor_sum": sum(per_actor) if per_actor else None,
    }


def ray_worker(path: str, out_dir: str, num_actors: int, block_size: int) -> dict:
    import ray

    import distglm
    from distglm import store

    t0 = time.perf_counter()
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    ray_start_s = time.perf_counter() - t0
    events = []

    def on_block(summary: dict) -> None:
        events.append({"t": time.perf_counter() - t_fit, "block": summary["block"], "pid": summary["pid"],
                       "first_block": summary["first_block"], "n_neurons": summary["n_neurons"]})

    try:
        t_fit = time.perf_counter()
        report = distglm.fit(path, distglm.PopulationGLM(**model_kwargs()), num_actors=num_actors,
                             block_size=block_size, progress=False, resume=False, on_block=on_block)
    finally:
        ray.shutdown()
    results = store.read_results(path)
    coef_memory = np.load(os.path.join(out_dir, "memory_coef.npy"))
    intercept_memory = np.load(os.path.join(out_dir, "memory_intercept.npy"))
    t = report.timings
    n_blocks = report.n_blocks_fitted
    per_block = t["solve"] / max(1, n_blocks - num_actors)
    return {
        "num_actors": num_actors,
        "ray_start_s": ray_start_s,
        "fit_s": report.seconds,
        "neurons_per_second": report.neurons_per_second,
        **steady_state(events),
        "n_blocks": report.n_blocks,
        "block_size": block_size,
        "n_converged": report.n_converged,
        "n_failed_blocks": len(report.failed_blocks),
        "timings": t,
        # the first block of each actor also compiles; take a typical block's solve away
        "compile_estimate_s": max(0.0, t["first_solve"] - num_actors * per_block),
        "solve_per_block_s": per_block,
        "max_abs_coef_diff_vs_memory": float(np.max(np.abs(results["coef"] - coef_memory))),
        "max_abs_intercept_diff_vs_memory": float(np.max(np.abs(results["intercept"] - intercept_memory))),
        "blocks": events,
    }


def probe_worker(n_samples: int, n_features: int, n_neurons: int) -> dict:
    """Single-threaded float32 matmuls shaped like one block's work, for PROBE_SECONDS."""
    rng = np.random.default_rng(0)
    X = rng.normal(size=(n_samples, n_features)).astype(np.float32)
    W = rng.normal(size=(n_features, n_neurons)).astype(np.float32)
    t0, n = time.perf_counter(), 0
    while time.perf_counter() - t0 < PROBE_SECONDS:
        X.T @ (X @ W)
        n += 1
    return {"rounds_per_second": n / (time.perf_counter() - t0)}


# ------------------------------------------------------------------ parent
def worker_command(args: list[str]) -> list[str]:
    return [sys.executable, str(Path(__file__).resolve()), "--worker", *args]


def single_thread_env() -> dict:
    return dict(os.environ, OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1", MKL_NUM_THREADS="1")


def parse(stdout: str, stderr: str, what: str) -> dict:
    lines = [line for line in stdout.splitlines() if line.startswith(RESULT_TAG)]
    if not lines:
        sys.stderr.write(stdout + stderr)
        raise RuntimeError(f"{what} worker printed no result")
    return json.loads(lines[-1][len(RESULT_TAG):])


def run_worker(args: list[str], env: dict) -> dict:
    proc = subprocess.run(worker_command(args), capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        sys.stderr.write(proc.stdout[-5000:] + proc.stderr[-5000:])
        raise RuntimeError(f"worker {args} failed with exit code {proc.returncode}")
    return parse(proc.stdout, proc.stderr, args[0])


def machine_probe(sizes: dict) -> dict:
    """Speed-up of two concurrent single-threaded processes over one: the ceiling for 2 actors."""
    args = ["probe", "--n-samples", str(sizes["n_samples"]), "--n-features", str(sizes["n_features"]),
            "--n-neurons", str(sizes["block_size"])]

    def run(k):
        procs = [subprocess.Popen(worker_command(args), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                  text=True, env=single_thread_env()) for _ in range(k)]
        outs = [proc.communicate() for proc in procs]
        return [parse(out, err, "probe")["rounds_per_second"] for out, err in outs]

    one = run(1)[0]
    two = run(2)
    return {"one_process_rounds_per_second": one, "two_processes_rounds_per_second": two,
            "two_process_speedup": sum(two) / one}


# (name, actors): first each actor count with an empty compilation cache, then again with it
RAY_RUNS = (("ray-1", 1), ("ray-2", 2), ("ray-1-warm", 1), ("ray-2-warm", 2))


def summarize(res: dict) -> dict:
    """Ratios of one configuration's runs, and which goals its cold-cache runs meet."""
    mem = res["memory"]
    out = {}
    for cache, suffix in (("cold", ""), ("warm", "-warm")):
        r1, r2 = res["ray-1" + suffix], res["ray-2" + suffix]
        best = min(r1["fit_s"], r2["fit_s"])
        s1, s2 = r1["steady_neurons_per_second"], r2["steady_neurons_per_second"]
        a1, a2 = r1["steady_neurons_per_second_actor_sum"], r2["steady_neurons_per_second_actor_sum"]
        out[cache] = {
            "two_actor_speedup": r2["neurons_per_second"] / r1["neurons_per_second"],
            # as if neither run found the check kept: the first check's seconds added to each
            "two_actor_speedup_with_check": (r1["fit_s"] + res["inputs_check"]["seconds"])
            / (r2["fit_s"] + res["inputs_check"]["seconds"]),
            "two_actor_speedup_steady": s2 / s1 if s1 and s2 else None,
            "two_actor_speedup_steady_actor_sum": a2 / a1 if a1 and a2 else None,
            # the actors' solve seconds alone (FitReport.timings), blocks after each actor's first
            "two_actor_speedup_solve_only": 2 * r1["solve_per_block_s"] / r2["solve_per_block_s"],
            "ray_over_memory": best / mem["cold_s"],
            "ray_over_memory_with_ray_start": min(r["fit_s"] + r["ray_start_s"] for r in (r1, r2)) / mem["cold_s"],
            "ray_over_memory_warm": best / mem["warm_s"],
            "ray_2_over_memory": r2["fit_s"] / mem["cold_s"],
        }
    cold = out["cold"]
    steady = cold["two_actor_speedup_steady"]
    out["goals_met"] = {
        "two_actor_speedup": cold["two_actor_speedup"] >= GOALS["two_actor_speedup"],
        "two_actor_speedup_steady": steady is not None and steady >= GOALS["two_actor_speedup_steady"],
        "ray_over_memory": cold["ray_over_memory"] <= GOALS["ray_over_memory"],
    }
    return out


def config_markdown(name: str, res: dict) -> list[str]:
    s, sz, mem, probe = res["summary"], res["sizes"], res["memory"], res["machine_probe"]
    met = {k: "met" if v else "not met" for k, v in s["goals_met"].items()}
    runs = [res[run] for run, _ in RAY_RUNS]

    def row(label, first, cell):
        lines.append(f"| {label} | {first} | " + " | ".join(cell(r) for r in runs) + " |")

    def f(value, fmt):
        return "n/a" if value is None else format(value, fmt)

    def steady_block(r):
        later = sum(not e["first_block"] for e in r["blocks"])
        if not later or not r.get("steady_window_s"):
            return "n/a"
        per = r["steady_window_s"] * r["num_actors"] / later
        t, n = r["timings"], r["n_blocks"]
        return f"{per:.2f} ({r['solve_per_block_s']:.2f} + {t['read'] / n:.2f} + {t['write'] / n:.2f})"

    lines = [
        f"## {name}: {sz['n_neurons']:,} neurons x {sz['n_samples']:,} samples x {sz['n_features']} features",
        "",
        "| | in memory | 1 actor, cold | 2 actors, cold | 1 actor, warm cache | 2 actors, warm cache |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    row("load average (1 min) before", f"{mem['load_average_before']:.2f}", lambda r: f"{r['load_average_before']:.2f}")
    row("load average (1 min) after", f"{mem['load_average_after']:.2f}", lambda r: f"{r['load_average_after']:.2f}")
    row("other processes' cores: before / during",
        f"{mem['others_cores_before']:.2f} / {mem['others_cores_during']:.2f}",
        lambda r: f"{r['others_cores_before']:.2f} / {r['others_cores_during']:.2f}")
    row("Ray start (s)", "", lambda r: f"{r['ray_start_s']:.2f}")
    row("fit wall time (s)", f"{mem['cold_s']:.2f} cold, {mem['warm_s']:.2f} warm", lambda r: f"{r['fit_s']:.2f}")
    row("neurons/s, end to end",
        f"{sz['n_neurons'] / mem['cold_s']:.0f} cold, {sz['n_neurons'] / mem['warm_s']:.0f} warm",
        lambda r: f"{r['neurons_per_second']:.0f}")
    row("neurons/s, steady state", "", lambda r: f(r["steady_neurons_per_second"], ".0f"))
    row("steady window (s): first to last block done", "",
        lambda r: (f"{r['first_block_done_s']:.2f} to {r['last_block_done_s']:.2f}"
                   if r.get("steady_window_s") else "n/a"))
    row("steady state: s per block per actor (solve + read + write)", "", steady_block)
    row("blocks x neurons", f"1 x {sz['n_neurons']}", lambda r: f"{r['n_blocks']} x {r['block_size']}")
    row("driver: prepare (s)", "", lambda r: f"{r['timings']['prepare']:.2f}")
    row("actors: read y + write results (s)", "", lambda r: f"{r['timings']['read']:.2f} + {r['timings']['write']:.2f}")
    row("compilation (s)", f"{mem['cold_compile_s']:.2f}", lambda r: f"{r['compile_estimate_s']:.2f} (est.)")
    row("first blocks, incl. compilation (s)", "", lambda r: f"{r['timings']['first_solve']:.2f}")
    row("other blocks' solves (s)", "", lambda r: f"{r['timings']['solve']:.2f}")
    row("solve per block (s)", "", lambda r: f"{r['solve_per_block_s']:.2f}")
    row("converged", f"{mem['n_converged']}", lambda r: f"{r['n_converged']}")
    row("max abs coef diff vs in memory", "", lambda r: f"{r['max_abs_coef_diff_vs_memory']:.1e}")
    cold, warm = s["cold"], s["warm"]
    lines += [
        "",
        "| goal | cold cache | warm cache | target | cold cache |",
        "|---|---:|---:|---:|---|",
        f"| 2 actors vs 1, neurons/s end to end | {cold['two_actor_speedup']:.2f}x | "
        f"{warm['two_actor_speedup']:.2f}x | "
        f">= {GOALS['two_actor_speedup']:g}x | {met['two_actor_speedup']} |",
        f"| 2 actors vs 1, neurons/s steady state | {f(cold['two_actor_speedup_steady'], '.2f')}x | "
        f"{f(warm['two_actor_speedup_steady'], '.2f')}x | >= {GOALS['two_actor_speedup_steady']:g}x | "
        f"{met['two_actor_speedup_steady']} |",
        f"| Ray fit (best, Ray running) / in-memory cold fit | {cold['ray_over_memory']:.2f}x | "
        f"{warm['ray_over_memory']:.2f}x | <= {GOALS['ray_over_memory']:g}x | {met['ray_over_memory']} |",
        f"| 2 actors vs 1, end to end, with the first check of the inputs ({res['inputs_check']['seconds']:.2f} s) "
        f"added to each | {cold['two_actor_speedup_with_check']:.2f}x | {warm['two_actor_speedup_with_check']:.2f}x "
        "| | |",
        f"| 2 actors vs 1, solve seconds only (`FitReport.timings`) | {cold['two_actor_speedup_solve_only']:.2f}x | "
        f"{warm['two_actor_speedup_solve_only']:.2f}x | | |",
        f"| 2 actors vs 1, steady state per actor's own window, summed | "
        f"{f(cold['two_actor_speedup_steady_actor_sum'], '.2f')}x | "
        f"{f(warm['two_actor_speedup_steady_actor_sum'], '.2f')}x | | |",
        f"| Ray fit, 2 actors / in-memory cold fit | {cold['ray_2_over_memory']:.2f}x | "
        f"{warm['ray_2_over_memory']:.2f}x | | |",
        f"| Ray fit (best) + Ray start / in-memory cold fit | {cold['ray_over_memory_with_ray_start']:.2f}x | "
        f"{warm['ray_over_memory_with_ray_start']:.2f}x | | |",
        f"| Ray fit (best) / in-memory warm fit | {cold['ray_over_memory_warm']:.2f}x | "
        f"{warm['ray_over_memory_warm']:.2f}x | | |",
        "",
        f"Machine probe (before the runs): single-threaded float32 `X.T @ (X @ W)` at these shapes "
        f"({sz['block_size']} neurons) runs {probe['one_process_rounds_per_second']:.1f} rounds/s in one process and "
        f"{' + '.join(f'{v:.1f}' for v in probe['two_processes_rounds_per_second'])} rounds/s in two at once: "
        f"two processes got {probe['two_process_speedup']:.2f}x the throughput of one, the ceiling for two actors.",
        "",
    ]
    return lines


def markdown(report: dict) -> str:
    m, quiet = report["machine"], report["quiet"]
    lines = [
        "# Scaling of the distributed fit: 1 vs 2 Ray actors, and Ray vs in memory",
        "",
        f"Poisson, Ridge {STRENGTH}, LBFGS (default tolerance), feature mask {MASK_DENSITY:.0%} ones, float32. "
        f"{m['date_utc']}, {m['cpu_count']} CPUs ({m['cpu_model']}), jax {m['versions']['jax']}. "
        "Each run in a fresh process; each Ray run on a fresh local Ray (`ray.init(num_cpus=2)`, timed "
        "apart as 'Ray start'), first with an empty persistent compilation cache (cold: every actor "
        "compiles), then again with the cache that run left (warm). One run each, on a shared machine "
        "whose other users' load varies (see the load averages): ratios are from this one run.",
        "",
        f"Before the benchmark the 1-minute load average was {quiet['load_at_start']:.2f}; after waiting "
        f"{quiet['waited_s']:.0f} s (at most {quiet['max_wait_s']:.0f} s) for it to fall below "
        f"{quiet['threshold']:g} it was {quiet['load_after_wait']:.2f}"
        f"{'' if quiet['quiet'] else ' (the machine did not become quiet)'}. Before each run (the previous "
        f"run raises the load average itself) the script waited up to {report['run_wait_s']:.0f} s for the processes "
        f"outside the benchmark to use less than {OTHERS_QUIET_CORES:g} of a core. The tables give, per run, "
        "the load average before and after and the cores that other processes used just before and "
        "during the run (their CPU time over the run's wall time; a lower bound).",
        "",
        "Every Ray run fits inputs whose check an earlier fit kept (`distglm.input_scans`): the driver's "
        "first check of a store's inputs, which reads all of y, is timed once apart from the runs "
        "(and added to both runs in one row of each goal table).",
        "",
        "Definitions. End to end: neurons / wall time of `distglm.fit` with Ray already running (the "
        "driver's preparation, actor start, compilation, solves, reads and writes). Steady state: the "
        "neurons of the blocks after each actor's first, over the time from the first block completion "
        "(of any actor) to the last, both timestamped in the driver by `on_block`; it leaves out start-up "
        "and compilation and keeps the tail where one actor may idle. 'Per actor's own window, summed': "
        "each actor's later blocks over its own first-to-last completion, rates added. 'Solve seconds "
        "only': `FitReport.timings` solve time per block, which leaves out reads, writes and dispatch. "
        "'s per block per actor': the steady window times the number of actors over the blocks in it, "
        "next to the mean solve (blocks after the first), read and write seconds of a block.",
        "",
    ]
    for name in report["configs"]:
        lines += config_markdown(name, report["configs"][name])
    lines += [
        "Timings from `FitReport.timings` are summed over actors; 'compilation (est.)' is the actors' "
        "first blocks minus one typical block's solve each. The in-memory fit runs XLA on every core; "
        "each actor runs it on one thread (one actor per core).",
        "",
    ]
    return "\n".join(lines)


def first_check(path: str, scans: str, written_at: float) -> dict:
    """The driver's check of the inputs (``scheduler._checked_inputs``), kept in ``scans`` for the runs.

    A check of files written less than ``input_scans.SETTLE_S`` before it is not kept: it waits
    that long after the store was written (the machine probe usually took longer).
    """
    from distglm import input_scans, scheduler, store

    os.environ[input_scans.ENV_VAR] = scans
    time.sleep(max(0.0, written_at + input_scans.SETTLE_S + 0.5 - time.time()))
    model = distglm_model()
    t0 = time.perf_counter()
    scheduler._checked_inputs(path, store.open_inputs(path), scheduler._check_model(model).observation, np.float32)
    seconds = time.perf_counter() - t0
    if not os.listdir(scans):
        raise RuntimeError(f"the check of {path} was not kept in {scans}")
    return {"seconds": seconds}


def distglm_model():
    import distglm

    return distglm.PopulationGLM(**model_kwargs())


def run_config(name: str, sizes: dict, work: str, run_wait_s: float = RUN_WAIT_S) -> dict:
    import distglm

    res = {"sizes": sizes}
    path = os.path.join(work, f"{name}.zarr")
    print(f"[{name}] writing the store ...", file=sys.stderr, flush=True)
    t0 = time.perf_counter()
    X, y, mask = simulate(sizes["n_samples"], sizes["n_features"], sizes["n_neurons"])
    distglm.write_inputs(path, X, y, mask)
    del X, y
    res["write_inputs_s"] = time.perf_counter() - t0
    written_at = time.time()
    print(f"[{name}] probing the machine ...", file=sys.stderr, flush=True)
    res["machine_probe"] = machine_probe(sizes)
    # every run fits inputs an earlier fit checked (the driver keeps its check): the check is
    # timed once, here, apart from the runs
    scans = os.path.join(work, f"scans-{name}")
    res["inputs_check"] = first_check(path, scans, written_at)
    block_size = str(sizes["block_size"])
    runs = [("memory", ["memory", path, work], "memory")]
    runs += [(run, ["ray", path, work, str(n), block_size], f"ray-{n}") for run, n in RAY_RUNS]
    for run, worker_args, cache in runs:
        wait = wait_for_others(max_wait_s=run_wait_s)
        print(f"[{name}] running {run} (other processes {wait['others_cores_before']:.2f} cores, "
              f"load {wait['load_average_before']:.2f}) ...", file=sys.stderr, flush=True)
        env = dict(os.environ, DISTGLM_COMPILATION_CACHE=os.path.join(work, f"xla-cache-{name}-{cache}"),
                   DISTGLM_SCAN_CACHE=scans)
        t0 = time.perf_counter()
        with OtherCPU() as other:
            res[run] = run_worker(worker_args, env)
        res[run].update(wait)
        res[run]["load_average_after"] = os.getloadavg()[0]
        res[run]["others_cores_during"] = other.cores
        res[run]["process_s"] = time.perf_counter() - t0
    shutil.rmtree(path, ignore_errors=True)
    res["summary"] = summarize(res)
    return res


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="small smoke run; results are printed, not written")
    parser.add_argument("--only", choices=sorted(FULL), help="run one configuration; results are printed, not written")
    parser.add_argument("--worker", nargs="+", help=argparse.SUPPRESS)
    parser.add_argument("--n-samples", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--n-features", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--n-neurons", type=int, help=argparse.SUPPRESS)
    args, _ = parser.parse_known_args(argv)

    if args.worker:
        kind, *rest = args.worker
        if kind == "memory":
            out = memory_worker(*rest)
        elif kind == "ray":
            out = ray_worker(rest[0], rest[1], int(rest[2]), int(rest[3]))
        else:
            out = probe_worker(args.n_samples, args.n_features, args.n_neurons)
        print(RESULT_TAG + json.dumps(out), flush=True)
        return

    configs = QUICK if args.quick else FULL
    if args.only:
        configs = {args.only: configs[args.only]}
    t_start = time.perf_counter()
    # the smoke run does not wait
    quiet_wait_s, run_wait_s = (0.0, 0.0) if args.quick else (QUIET_WAIT_S, RUN_WAIT_S)
    print(f"waiting for a quiet machine (load < {QUIET_LOAD:g}, at most {quiet_wait_s:.0f} s) ...",
          file=sys.stderr, flush=True)
    quiet = wait_for_quiet(max_wait_s=quiet_wait_s)
    report = {"strength": STRENGTH, "mask_density": MASK_DENSITY, "seed": SEED, "goals": GOALS,
              "machine": machine_info(), "quiet": quiet, "run_wait_s": run_wait_s, "configs": {}}
    work = tempfile.mkdtemp(prefix="bench_scaling_")
    try:
        for name, sizes in configs.items():
            report["configs"][name] = run_config(name, sizes, work, run_wait_s)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    report["total_s"] = time.perf_counter() - t_start
    # a partial run (--quick, --only) prints its results but does not record them
    publish("bench_scaling", report, markdown(report), bool(args.quick or args.only))


if __name__ == "__main__":
    main()
