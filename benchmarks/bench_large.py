"""A large population on one machine: wall time, neurons/s, and the memory of driver and actors.

10,000 neurons x 100 features x 50,000 samples of Poisson counts (int32, 2 GB) are written to a
Zarr store a slice of neurons at a time, from a source that simulates each slice when it is
asked for: ``y`` is never whole in any process. The fit then runs in a fresh process (the
driver, which starts its own local Ray with two actors), while a thread samples the resident
memory (RSS, and USS: the memory no other process shares) of the driver and of every
``ray::BlockFitter`` process. The same fit of a 2,500-neuron population shows whether the
driver's memory grows with the number of neurons; an actor's is compared with the design
matrix plus two blocks of ``y`` on top of an actor fitting a tiny population.

Before the benchmark the script waits (at most 5 minutes) for the 1-minute load average to
fall below 1.5, and before each fit (at most 30 s) for the processes outside the benchmark to
go quiet; it records the load and the cores those processes used either way.

Usage::

    .venv/bin/python benchmarks/bench_large.py            # full size, writes results/
    .venv/bin/python benchmarks/bench_large.py --quick    # small smoke run, prints only
    .venv/bin/python benchmarks/bench_large.py --keep --dir /data/tmp   # keep the stores there
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import psutil

from bench_scaling import OtherCPU, wait_for_others, wait_for_quiet
from bench_vs_nemos import RESULT_TAG, machine_info, publish, run_for_result

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"

FULL = dict(n_samples=50_000, n_features=100, n_neurons=(2_500, 10_000))
QUICK = dict(n_samples=5_000, n_features=20, n_neurons=(250, 1_000))
# a tiny population with the same features, whose actors give the baseline memory of an actor
BASELINE = dict(n_samples=200, n_neurons=128)
STRENGTH = 1e-3
MASK_DENSITY = 0.8
NUM_ACTORS = 2
SAMPLE_EVERY_S = 0.3
SEED = 11
MB = 1e6
GOALS = {
    # driver peak RSS with the large population over that with the small one
    "driver_growth": 1.1,
    # an actor's peak RSS above that of an actor fitting a tiny population, over X plus two
    # blocks of y (float32)
    "actor_over_x_plus_two_blocks": 1.5,
}


class SimulatedCounts:
    """Poisson counts of shape (n_samples, n_neurons), int32, simulated a slice at a time.

    Has ``shape``, ``dtype`` and numpy slicing ``[rows, columns]``, so ``write_inputs`` copies
    it a few chunks at a time. Each neuron's counts come from its own seed, so a population of
    the first k neurons holds the same counts as the first k neurons of a larger one.
    """

    dtype = np.dtype(np.int32)

    def __init__(self, X: np.ndarray, weights: np.ndarray, intercept: np.ndarray):
        self.X, self.weights, self.intercept = X, weights, intercept
        self.shape = (X.shape[0], weights.shape[1])
        self.max = 0  # the largest count handed out so far

    def __getitem__(self, key):
        rows, columns = key
        start, stop, step = columns.indices(self.shape[1])
        rate = np.exp(self.X[rows] @ self.weights[:, start:stop:step] + self.intercept[start:stop:step])
        out = np.empty(rate.shape, dtype=self.dtype)
        for k, neuron in enumerate(range(start, stop, step)):
            out[:, k] = np.random.default_rng([SEED, neuron]).poisson(rate[:, k])
        self.max = max(self.max, int(out.max(initial=0)))
        return out


def population(n_samples: int, n_features: int, n_neurons: int):
    """X (float32), the simulated counts, and the 0/1 feature mask of shape (n_features, n_neurons)."""
    rng = np.random.default_rng(SEED)
    X = rng.normal(size=(n_samples, n_features)).astype(np.float32)
    mask = (rng.random((n_features, n_neurons)) < MASK_DENSITY).astype(np.uint8)
    weights = rng.normal(scale=0.05, size=(n_features, n_neurons)) * mask
    intercept = rng.uniform(np.log(0.05), np.log(0.5), size=n_neurons)
    return X, SimulatedCounts(X, weights, intercept), mask


class MemorySampler:
    """Samples, from a thread, the RSS and USS of this process and of its block-fitting actors."""

    def __init__(self):
        self.me = psutil.Process()
        self.peaks: dict[int, dict] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()

    def _targets(self):
        yield self.me, "driver"
        for proc in self.me.children(recursive=True):
            try:
                if proc.cmdline()[:1] and proc.cmdline()[0].startswith("ray::BlockFitter"):
                    yield proc, "actor"
            except (psutil.NoSuchProcess, psutil.ZombieProcess, psutil.AccessDenied):
                continue

    def _run(self):
        while not self._stop.is_set():
            for proc, role in list(self._targets()):
                try:
                    info = proc.memory_full_info()
                except (psutil.NoSuchProcess, psutil.ZombieProcess, psutil.AccessDenied):
                    continue
                peak = self.peaks.setdefault(proc.pid, {"role": role, "rss": 0, "uss": 0, "samples": 0})
                peak["rss"] = max(peak["rss"], info.rss)
                peak["uss"] = max(peak["uss"], info.uss)
                peak["samples"] += 1
            self._stop.wait(SAMPLE_EVERY_S)

    def summary(self) -> dict:
        driver = self.peaks[self.me.pid]
        actors = [p for pid, p in self.peaks.items() if p["role"] == "actor"]
        return {
            "driver_peak_rss_mb": driver["rss"] / MB,
            "driver_peak_uss_mb": driver["uss"] / MB,
            "actor_peak_rss_mb": [p["rss"] / MB for p in actors],
            "actor_peak_uss_mb": [p["uss"] / MB for p in actors],
            "samples": {"driver": driver["samples"], "actors": [p["samples"] for p in actors]},
        }


# ------------------------------------------------------------------ workers
def fit_worker(path: str, options: dict | None = None) -> dict:
    """Fit the store at ``path`` with this benchmark's model; ``options`` go to ``distglm.fit``."""
    import distglm

    before = psutil.Process().memory_info().rss
    with MemorySampler() as sampler:
        report = distglm.fit(path, distglm.PopulationGLM(regularizer="Ridge", regularizer_strength=STRENGTH),
                             num_actors=NUM_ACTORS, progress=False, **(options or {}))
    return {
        "driver_rss_before_fit_mb": before / MB,
        **sampler.summary(),
        "seconds": report.seconds,
        "neurons_per_second": report.neurons_per_second,
        "n_neurons": report.n_neurons,
        "n_fitted": report.n_fitted,
        "n_converged": report.n_converged,
        "n_failed_blocks": len(report.failed_blocks),
        "n_blocks": report.n_blocks,
        "timings": report.timings,
    }


# ------------------------------------------------------------------ parent
def run_fit(path: str, cache: str, options: dict | None = None) -> dict:
    """``fit_worker`` in a fresh process whose actors start from an empty compilation cache."""
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", "fit", path, json.dumps(options or {})]
    # compiling takes memory of its own: every fit, the baseline's included, compiles afresh;
    # and every fit's driver reads the inputs (none reuses an earlier fit's check of them)
    env = dict(os.environ, DISTGLM_COMPILATION_CACHE=cache, DISTGLM_SCAN_CACHE="")
    return run_for_result(cmd, env, f"fit of {path}")


def write_store(path: str, n_samples: int, n_features: int, n_neurons: int) -> dict:
    import distglm

    with MemorySampler() as sampler:
        t0 = time.perf_counter()
        X, counts, mask = population(n_samples, n_features, n_neurons)
        distglm.write_inputs(path, X, counts, mask)
        seconds = time.perf_counter() - t0
    size = sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file())
    return {"seconds": seconds, "writer_peak_rss_mb": sampler.summary()["driver_peak_rss_mb"],
            "store_mb_on_disk": size / MB, "y_mb_in_memory": n_samples * n_neurons * 4 / MB,
            "y_max": counts.max}


def summarize(report: dict) -> dict:
    small, large = (report["fits"][str(n)] for n in report["sizes"]["n_neurons"])
    sz, baseline = report["sizes"], report["baseline"]
    x_mb = sz["n_samples"] * sz["n_features"] * 4 / MB
    block = report["block_size"]
    block_mb = sz["n_samples"] * block * 4 / MB
    growth = large["driver_peak_rss_mb"] / small["driver_peak_rss_mb"]
    # the type the actors hold each block's counts in: the narrowest that holds every count
    from distglm.core.fit import narrow_counts_dtype

    y_max = report["writes"][str(sz["n_neurons"][1])]["y_max"]
    held = narrow_counts_dtype(0, y_max) or np.dtype(np.float32)
    held_mb = sz["n_samples"] * block * held.itemsize / MB
    actor_peak = max(large["actor_peak_rss_mb"])
    above = actor_peak - max(baseline["actor_peak_rss_mb"])
    ratio = above / (x_mb + 2 * block_mb)
    # the same with the compiled solve loaded from the cache: no compiler's memory in either
    warm, baseline_warm = report["warm"]["fit"], report["warm"]["baseline"]
    above_warm = max(warm["actor_peak_rss_mb"]) - max(baseline_warm["actor_peak_rss_mb"])
    return {
        "x_mb": x_mb,
        "block_size": block,
        "block_mb": block_mb,
        "driver_growth": growth,
        "driver_growth_mb": large["driver_peak_rss_mb"] - small["driver_peak_rss_mb"],
        "actor_peak_rss_mb": actor_peak,
        "actor_peak_above_baseline_mb": above,
        "actor_over_x_plus_two_blocks": ratio,
        "actor_peak_rss_mb_warm": max(warm["actor_peak_rss_mb"]),
        "actor_peak_above_baseline_mb_warm": above_warm,
        "actor_over_x_plus_two_blocks_warm": above_warm / (x_mb + 2 * block_mb),
        "y_max": y_max,
        "held_dtype": held.name,
        "held_block_mb": held_mb,
        "actor_over_x_plus_two_held_blocks": above / (x_mb + 2 * held_mb),
        "actor_over_x_plus_two_held_blocks_warm": above_warm / (x_mb + 2 * held_mb),
        "goals_met": {
            "driver_growth": growth <= GOALS["driver_growth"],
            "actor_over_x_plus_two_blocks": ratio <= GOALS["actor_over_x_plus_two_blocks"],
        },
    }


def markdown(report: dict) -> str:
    s, m, sz, baseline = report["summary"], report["machine"], report["sizes"], report["baseline"]
    quiet = report["quiet"]
    met = {k: "met" if v else "not met" for k, v in s["goals_met"].items()}
    n_small, n_large = sz["n_neurons"]
    small, large = report["fits"][str(n_small)], report["fits"][str(n_large)]
    w_small, w_large = report["writes"][str(n_small)], report["writes"][str(n_large)]

    def mbs(values):
        return ", ".join(f"{v:.0f}" for v in values)

    lines = [
        f"# A large population on one machine: {n_large:,} neurons",
        "",
        f"{sz['n_samples']:,} samples x {sz['n_features']} features; Poisson counts (int32), Ridge "
        f"{STRENGTH}, LBFGS (default tolerance), feature mask {MASK_DENSITY:.0%} ones, float32; "
        f"{NUM_ACTORS} actors on a fresh local Ray started by the driver, default plan "
        f"(blocks of {s['block_size']} neurons). {m['date_utc']}, {m['cpu_count']} CPUs ({m['cpu_model']}), "
        f"{psutil.virtual_memory().total / 2**30:.0f} GiB. One run each on a shared machine whose other "
        "users' load varies: times are indicative.",
        "",
        f"Before the benchmark the 1-minute load average was {quiet['load_at_start']:.2f}; after waiting "
        f"{quiet['waited_s']:.0f} s (at most {quiet['max_wait_s']:.0f} s) for it to fall below "
        f"{quiet['threshold']:g} it was {quiet['load_after_wait']:.2f}"
        f"{'' if quiet['quiet'] else ' (the machine did not become quiet)'}. Before each fit the script waited "
        f"up to {report['run_wait_s']:.0f} s for the processes outside the benchmark to go quiet; 'other "
        "processes' cores' is their CPU time over the wall time (a lower bound: processes that start and "
        "end within the interval are missed).",
        "",
        f"| | {n_small:,} neurons | {n_large:,} neurons |",
        "|---|---:|---:|",
        f"| load average (1 min) before / after the fit | {small['load_average_before']:.2f} / "
        f"{small['load_average_after']:.2f} | {large['load_average_before']:.2f} / "
        f"{large['load_average_after']:.2f} |",
        f"| other processes' cores before / during the fit | {small['others_cores_before']:.2f} / "
        f"{small['others_cores_during']:.2f} | {large['others_cores_before']:.2f} / "
        f"{large['others_cores_during']:.2f} |",
        f"| write inputs (s) | {w_small['seconds']:.1f} | {w_large['seconds']:.1f} |",
        f"| writer peak RSS (MB) / y in memory (MB) | {w_small['writer_peak_rss_mb']:.0f} / "
        f"{w_small['y_mb_in_memory']:.0f} | {w_large['writer_peak_rss_mb']:.0f} / {w_large['y_mb_in_memory']:.0f} |",
        f"| store on disk (MB) | {w_small['store_mb_on_disk']:.0f} | {w_large['store_mb_on_disk']:.0f} |",
        f"| fit wall time (s) | {small['seconds']:.1f} | {large['seconds']:.1f} |",
        f"| neurons/s | {small['neurons_per_second']:.0f} | {large['neurons_per_second']:.0f} |",
        f"| blocks | {small['n_blocks']} | {large['n_blocks']} |",
        f"| fitted / converged | {small['n_fitted']} / {small['n_converged']} | "
        f"{large['n_fitted']} / {large['n_converged']} |",
        f"| driver: prepare (s) | {small['timings']['prepare']:.1f} | {large['timings']['prepare']:.1f} |",
        f"| actors: read y, write results (s, summed) | {small['timings']['read']:.1f}, "
        f"{small['timings']['write']:.1f} | {large['timings']['read']:.1f}, {large['timings']['write']:.1f} |",
        f"| actors: first blocks incl. compilation, other solves (s, summed) | "
        f"{small['timings']['first_solve']:.1f}, {small['timings']['solve']:.1f} | "
        f"{large['timings']['first_solve']:.1f}, {large['timings']['solve']:.1f} |",
        f"| driver RSS before the fit (MB) | {small['driver_rss_before_fit_mb']:.0f} | "
        f"{large['driver_rss_before_fit_mb']:.0f} |",
        f"| driver peak RSS / USS (MB) | {small['driver_peak_rss_mb']:.0f} / {small['driver_peak_uss_mb']:.0f} | "
        f"{large['driver_peak_rss_mb']:.0f} / {large['driver_peak_uss_mb']:.0f} |",
        f"| each actor's peak RSS (MB) | {mbs(small['actor_peak_rss_mb'])} | {mbs(large['actor_peak_rss_mb'])} |",
        f"| each actor's peak USS (MB) | {mbs(small['actor_peak_uss_mb'])} | {mbs(large['actor_peak_uss_mb'])} |",
        "",
        f"For comparison: X as the actors hold it (float32) is {s['x_mb']:.0f} MB; one block of y "
        f"({s['block_size']} neurons, float32) is {s['block_mb']:.0f} MB. Baseline: the actors of the same "
        f"fit of a tiny population ({BASELINE['n_samples']} samples, {BASELINE['n_neurons']} neurons) peak at "
        f"{mbs(baseline['actor_peak_rss_mb'])} MB RSS ({mbs(baseline['actor_peak_uss_mb'])} MB USS): "
        "Python, Ray's worker, JAX and the compiled fit.",
        "",
        "| goal | measured | target | |",
        "|---|---:|---:|---|",
        f"| driver peak RSS, {n_large:,} over {n_small:,} neurons | {s['driver_growth']:.2f}x "
        f"({s['driver_growth_mb']:+.0f} MB) | <= {GOALS['driver_growth']:g}x | {met['driver_growth']} |",
        f"| largest actor peak RSS above the baseline actor's, over X + 2 blocks | "
        f"{s['actor_peak_above_baseline_mb']:.0f} MB / {s['x_mb'] + 2 * s['block_mb']:.0f} MB = "
        f"{s['actor_over_x_plus_two_blocks']:.2f}x | <= {GOALS['actor_over_x_plus_two_blocks']:g}x | "
        f"{met['actor_over_x_plus_two_blocks']} |",
        f"| the same, compiled solve loaded from the cache (no compilation in either fit) | "
        f"{s['actor_peak_above_baseline_mb_warm']:.0f} MB / {s['x_mb'] + 2 * s['block_mb']:.0f} MB = "
        f"{s['actor_over_x_plus_two_blocks_warm']:.2f}x | <= {GOALS['actor_over_x_plus_two_blocks']:g}x | "
        f"{'met' if s['actor_over_x_plus_two_blocks_warm'] <= GOALS['actor_over_x_plus_two_blocks'] else 'not met'} |",
        "",
        "Warm: the baseline and the largest fit run again, each with the compilation cache its first run "
        f"left, so the actors load the compiled solve instead of compiling it. Their actors peak at "
        f"{mbs(report['warm']['baseline']['actor_peak_rss_mb'])} MB (baseline) and "
        f"{mbs(report['warm']['fit']['actor_peak_rss_mb'])} MB ({n_large:,} neurons, fit in "
        f"{report['warm']['fit']['seconds']:.1f} s); the difference between the two rows is the memory the "
        "compiler takes for the large fit's shapes beyond the tiny one's.",
        "",
        f"The largest count is {s['y_max']}, so the actors hold each block's counts as {s['held_dtype']} "
        f"({s['held_block_mb']:.0f} MB a block, made floats a chunk of rows at a time in the solve) rather than "
        f"the float32 block the goal is stated in. Over X + 2 blocks as held ({s['x_mb'] + 2 * s['held_block_mb']:.0f}"
        f" MB), the actor's peak above the baseline is {s['actor_over_x_plus_two_held_blocks']:.2f}x "
        f"(cached: {s['actor_over_x_plus_two_held_blocks_warm']:.2f}x).",
        "",
        "Memory is sampled every "
        f"{SAMPLE_EVERY_S} s from a thread of the driver (its own process and every `ray::BlockFitter` "
        "process under it); peaks shorter than that can be missed. RSS counts shared pages (the "
        "libraries' code, Ray's shared memory); USS counts only a process's own pages. Each actor reads X "
        "from the store itself, once.",
        "",
    ]
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="small smoke run; results are printed, not written")
    parser.add_argument("--keep", action="store_true", help="keep the stores (they are big) instead of deleting them")
    parser.add_argument("--dir", help="directory for the stores (default: a new temporary directory)")
    parser.add_argument("--worker", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.worker:
        options = json.loads(args.worker[2]) if len(args.worker) > 2 else {}
        print(RESULT_TAG + json.dumps(fit_worker(args.worker[1], options)), flush=True)
        return

    from distglm import store
    from distglm.plan import plan_blocks

    sizes = QUICK if args.quick else FULL
    # the smoke run does not wait
    quiet_wait_s, run_wait_s = (0.0, 0.0) if args.quick else (300.0, 30.0)
    print(f"waiting for a quiet machine (at most {quiet_wait_s:.0f} s) ...", file=sys.stderr, flush=True)
    quiet = wait_for_quiet(max_wait_s=quiet_wait_s)
    report = {"quiet": quiet, "run_wait_s": run_wait_s, "sizes": sizes, "strength": STRENGTH,
              "mask_density": MASK_DENSITY, "seed": SEED, "num_actors": NUM_ACTORS, "goals": GOALS,
              "machine": machine_info(), "writes": {}, "fits": {}}
    work = args.dir or tempfile.mkdtemp(prefix="bench_large_")
    os.makedirs(work, exist_ok=True)
    paths = []
    try:
        path = os.path.join(work, "baseline.zarr")
        paths.append(path)
        write_store(path, BASELINE["n_samples"], sizes["n_features"], BASELINE["n_neurons"])
        print("fitting the baseline ...", file=sys.stderr, flush=True)
        report["baseline"] = run_fit(path, os.path.join(work, "xla-cache-baseline"))
        for n_neurons in sizes["n_neurons"]:
            path = os.path.join(work, f"large-{n_neurons}.zarr")
            paths.append(path)
            print(f"writing {n_neurons} neurons to {path} ...", file=sys.stderr, flush=True)
            report["writes"][str(n_neurons)] = write_store(path, sizes["n_samples"], sizes["n_features"], n_neurons)
            print(f"fitting {n_neurons} neurons ...", file=sys.stderr, flush=True)
            wait = wait_for_others(max_wait_s=run_wait_s)
            with OtherCPU() as other:
                fit = run_fit(path, os.path.join(work, f"xla-cache-{n_neurons}"))
            report["fits"][str(n_neurons)] = {**fit, **wait, "others_cores_during": other.cores,
                                              "load_average_after": os.getloadavg()[0]}
        print("fitting the baseline and the largest population again, compiled solve cached ...", file=sys.stderr,
              flush=True)
        refit = {"resume": False}
        report["warm"] = {"baseline": run_fit(paths[0], os.path.join(work, "xla-cache-baseline"), refit),
                          "fit": run_fit(paths[-1], os.path.join(work, f"xla-cache-{sizes['n_neurons'][-1]}"), refit)}
        info = store.open_inputs(paths[-1])
        report["block_size"] = plan_blocks(info.n_neurons, info.neuron_chunk, None, NUM_ACTORS)[0].size
    finally:
        if not args.keep:
            for path in paths:
                shutil.rmtree(path, ignore_errors=True)
            for cache in Path(work).glob("xla-cache-*"):
                shutil.rmtree(cache, ignore_errors=True)
            if not args.dir:
                shutil.rmtree(work, ignore_errors=True)
    report["summary"] = summarize(report)
    publish("bench_large", report, markdown(report), args.quick)


if __name__ == "__main__":
    main()
