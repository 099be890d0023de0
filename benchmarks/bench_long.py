"""Long recordings: a streamed fit's memory stays flat in the number of samples, its time is linear.

512 neurons x 100 features of Poisson counts (int32) at 100,000, 300,000 and 1,000,000 samples
are written to Zarr stores (chunked along time as ``write_inputs`` does for long recordings)
and fitted by ``distglm.fit(..., stream=True, memory_per_actor=0.9 GB)`` on two actors in a fresh
driver process, while
a thread samples the resident memory (RSS and USS) of the driver and of every
``ray::BlockFitter`` process (see ``bench_large.py``, whose store writer and fit worker this
script reuses). At the largest size X alone is 0.4 GB and y 2 GB in float32; an actor that
held them (the in-memory path) would need X plus two blocks of y, 2.4 GB on top of its
baseline. A streaming actor reads chunks of at most ``plan.STREAM_CHUNK_BYTES`` and keeps
between passes what its budget leaves (``plan.stream_cache_bytes``): the budget is set low
enough here that the cache is full from the second recording on (the first fits it whole), so
the peaks should be flat from there.

The ratios reported (peak RSS at the longest recording over the shortest, seconds per million
samples) come from one run of this script, each fit preceded by a wait (at most 30 s) for the
machine's other processes to go quiet; the load average is recorded before and after each fit.

Usage::

    .venv/bin/python benchmarks/bench_long.py            # full size, writes results/
    .venv/bin/python benchmarks/bench_long.py --quick    # small smoke run, prints only
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
from pathlib import Path

import psutil

from bench_large import STRENGTH, run_fit, write_store
from distglm import store
from distglm.plan import STREAM_CHUNK_BYTES, stream_cache_bytes, stream_rows
from bench_scaling import OtherCPU, wait_for_others, wait_for_quiet
from bench_vs_nemos import machine_info, publish

FULL = dict(n_samples=(100_000, 300_000, 1_000_000), n_features=100, n_neurons=512)
QUICK = dict(n_samples=(5_000, 20_000, 80_000), n_features=20, n_neurons=64)
NUM_ACTORS = 2
# Bytes each actor may use: the planner sizes the actors' chunk caches to it.
MEMORY_PER_ACTOR = 900_000_000
MB = 1e6
GOALS = {
    # driver and actor peak RSS at the longest recording over the shortest
    "driver_growth": 1.25,
    "actor_growth": 1.5,
    # an actor's peak RSS at the longest recording (MB)
    "actor_peak_mb": 2000,
}


def summarize(report: dict) -> dict:
    sizes = report["sizes"]["n_samples"]
    short, long = report["fits"][str(sizes[0])], report["fits"][str(sizes[-1])]
    driver_growth = long["driver_peak_rss_mb"] / short["driver_peak_rss_mb"]
    actor_growth = max(long["actor_peak_rss_mb"]) / max(short["actor_peak_rss_mb"])
    per_million = {str(n): report["fits"][str(n)]["seconds"] / n * 1e6 for n in sizes}
    # the cost of each added million samples, without the fixed costs (Ray, compilation)
    marginal = {str(b): (report["fits"][str(b)]["seconds"] - report["fits"][str(a)]["seconds"]) / (b - a) * 1e6
                for a, b in zip(sizes, sizes[1:])}
    return {
        "marginal_seconds_per_million_samples": marginal,
        "driver_growth": driver_growth,
        "actor_growth": actor_growth,
        "actor_peak_mb": max(long["actor_peak_rss_mb"]),
        "seconds_per_million_samples": per_million,
        "goals_met": {
            "driver_growth": driver_growth <= GOALS["driver_growth"],
            "actor_growth": actor_growth <= GOALS["actor_growth"],
            "actor_peak_mb": max(long["actor_peak_rss_mb"]) <= GOALS["actor_peak_mb"],
        },
    }


def _block(report: dict, n_samples: int) -> int:
    from distglm.core.fit import bucket_neurons

    fit = report["fits"][str(n_samples)]
    return bucket_neurons(-(-report["sizes"]["n_neurons"] // fit["n_blocks"]))


def cache_mb(report: dict, n_samples: int) -> float:
    """The chunk cache the planner gives each actor (default solver, Cholesky preconditioner)."""
    p, fit = report["sizes"]["n_features"], report["fits"][str(n_samples)]
    return stream_cache_bytes(MEMORY_PER_ACTOR, n_samples, p, _block(report, n_samples), fit["row_chunk"]) / MB


def block_data_mb(report: dict, n_samples: int) -> float:
    """X and one block's y in the chunks a streaming actor reads (the last one filled up with zeros)."""
    p, n, fit = report["sizes"]["n_features"], _block(report, n_samples), report["fits"][str(n_samples)]
    rows = stream_rows(fit["row_chunk"], p, n)
    return -(-n_samples // rows) * rows * (p + n) * 4 / MB


def markdown(report: dict) -> str:
    s, m, sz, quiet = report["summary"], report["machine"], report["sizes"], report["quiet"]
    met = {k: "met" if v else "not met" for k, v in s["goals_met"].items()}
    sizes = sz["n_samples"]
    fits = [report["fits"][str(n)] for n in sizes]
    writes = [report["writes"][str(n)] for n in sizes]

    def row(label, values):
        return f"| {label} | " + " | ".join(values) + " |"

    def mbs(values):
        return ", ".join(f"{v:.0f}" for v in values)

    x_mb = sizes[-1] * sz["n_features"] * 4 / MB
    y_mb = sizes[-1] * sz["n_neurons"] * 4 / MB
    lines = [
        f"# Long recordings: {sz['n_neurons']} neurons, up to {sizes[-1]:,} samples, streamed",
        "",
        f"{sz['n_features']} features; Poisson counts (int32), Ridge {STRENGTH}, LBFGS (default tolerance), "
        f"float32; `distglm.fit(..., stream=True, memory_per_actor={MEMORY_PER_ACTOR / 1e9:g} GB)` on "
        f"{NUM_ACTORS} actors of a fresh local Ray started by the driver, default plan. {m['date_utc']}, {m['cpu_count']} CPUs ({m['cpu_model']}), "
        f"{psutil.virtual_memory().total / 2**30:.0f} GiB. One run each on a shared machine whose other users' "
        "load varies: times are indicative, memory is not.",
        "",
        f"Before the benchmark the 1-minute load average was {quiet['load_at_start']:.2f}; after waiting "
        f"{quiet['waited_s']:.0f} s (at most {quiet['max_wait_s']:.0f} s) for it to fall below "
        f"{quiet['threshold']:g} it was {quiet['load_after_wait']:.2f}"
        f"{'' if quiet['quiet'] else ' (the machine did not become quiet)'}.",
        "",
        "| samples | " + " | ".join(f"{n:,}" for n in sizes) + " |",
        "|---|" + "---:|" * len(sizes),
        row("load average (1 min) before / after the fit",
            [f"{f['load_average_before']:.2f} / {f['load_average_after']:.2f}" for f in fits]),
        row("other processes' cores before / during the fit",
            [f"{f['others_cores_before']:.2f} / {f['others_cores_during']:.2f}" for f in fits]),
        row("write inputs (s)", [f"{w['seconds']:.1f}" for w in writes]),
        row("fit wall time (s)", [f"{f['seconds']:.1f}" for f in fits]),
        row("fit seconds per million samples", [f"{s['seconds_per_million_samples'][str(n)]:.0f}" for n in sizes]),
        row("added fit seconds per added million samples (from the previous size)",
            ["-"] + [f"{s['marginal_seconds_per_million_samples'][str(n)]:.0f}" for n in sizes[1:]]),
        row("blocks", [str(f["n_blocks"]) for f in fits]),
        row("fitted / converged", [f"{f['n_fitted']} / {f['n_converged']}" for f in fits]),
        row("driver: streamed checks, Ray start, plan (s)", [f"{f['timings']['prepare']:.1f}" for f in fits]),
        row("actors: first blocks incl. compilation, other solves (s, summed)",
            [f"{f['timings']['first_solve']:.1f}, {f['timings']['solve']:.1f}" for f in fits]),
        row("driver peak RSS / USS (MB)", [f"{f['driver_peak_rss_mb']:.0f} / {f['driver_peak_uss_mb']:.0f}"
                                           for f in fits]),
        row("each actor's peak RSS (MB)", [mbs(f["actor_peak_rss_mb"]) for f in fits]),
        row("each actor's peak USS (MB)", [mbs(f["actor_peak_uss_mb"]) for f in fits]),
        "",
        f"For comparison, at {sizes[-1]:,} samples X is {x_mb:.0f} MB and y {y_mb:.0f} MB in float32.",
        "",
        "Where a streamed actor's memory goes: it reads the samples in chunks of X and of its block's y of at "
        f"most {STREAM_CHUNK_BYTES / 2**20:.0f} MiB (float32), whatever the recording's length, and keeps between "
        "passes the chunks that fit its cache, which the driver sizes to what the actor's budget leaves beside "
        "the chunks in flight and the solve (`plan.stream_cache_bytes`), and to no more than the samples; the "
        "others are read again at every pass. Once a recording's samples outgrow the cache, the actor's peak "
        "is its baseline, the full cache and the chunks in flight: the plateau. Cache per actor (estimated "
        "by the planner's rule) against the samples of one block in whole chunks: "
        + ", ".join(f"{n:,} samples {cache_mb(report, n):.0f} MB of {block_data_mb(report, n):.0f} MB"
                    for n in sizes) + ". "
        "The driver holds one flag per sample (1 MB at 1,000,000 samples) and one stored chunk at a time.",
        "",
        "| goal | measured | target | |",
        "|---|---:|---:|---|",
        f"| driver peak RSS, longest over shortest recording | {s['driver_growth']:.2f}x | "
        f"<= {GOALS['driver_growth']:g}x | {met['driver_growth']} |",
        f"| largest actor peak RSS, longest over shortest recording | {s['actor_growth']:.2f}x | "
        f"<= {GOALS['actor_growth']:g}x | {met['actor_growth']} |",
        f"| largest actor peak RSS at {sizes[-1]:,} samples | {s['actor_peak_mb']:.0f} MB | "
        f"<= {GOALS['actor_peak_mb']} MB | {met['actor_peak_mb']} |",
        "",
        "Memory is sampled every 0.3 s from a thread of the driver (its own process and every "
        "`ray::BlockFitter` process under it); peaks shorter than that can be missed.",
        "",
    ]
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="small smoke run; results are printed, not written")
    parser.add_argument("--dir", help="directory for the stores (default: a new temporary directory)")
    args = parser.parse_args(argv)

    sizes = QUICK if args.quick else FULL
    quiet_wait_s, run_wait_s = (0.0, 0.0) if args.quick else (60.0, 30.0)
    print(f"waiting for a quiet machine (at most {quiet_wait_s:.0f} s) ...", file=sys.stderr, flush=True)
    quiet = wait_for_quiet(max_wait_s=quiet_wait_s)
    report = {"quiet": quiet, "run_wait_s": run_wait_s, "sizes": sizes, "strength": STRENGTH,
              "num_actors": NUM_ACTORS, "goals": GOALS, "machine": machine_info(), "writes": {}, "fits": {}}
    work = args.dir or tempfile.mkdtemp(prefix="bench_long_")
    os.makedirs(work, exist_ok=True)
    try:
        for n_samples in sizes["n_samples"]:
            path = os.path.join(work, f"long-{n_samples}.zarr")
            print(f"writing {n_samples} samples to {path} ...", file=sys.stderr, flush=True)
            report["writes"][str(n_samples)] = write_store(path, n_samples, sizes["n_features"], sizes["n_neurons"])
            print(f"fitting {n_samples} samples ...", file=sys.stderr, flush=True)
            wait = wait_for_others(max_wait_s=run_wait_s)
            # each block's deadline follows its work (the default), however long the recording
            options = {"stream": True, "memory_per_actor": MEMORY_PER_ACTOR}
            row_chunk = store.open_inputs(path).row_chunk
            with OtherCPU() as other:
                fit = run_fit(path, os.path.join(work, f"xla-cache-{n_samples}"), options)
            report["fits"][str(n_samples)] = {**fit, **wait, "others_cores_during": other.cores,
                                              "load_average_after": os.getloadavg()[0], "row_chunk": row_chunk}
            shutil.rmtree(path, ignore_errors=True)
    finally:
        for path in Path(work).glob("*"):
            shutil.rmtree(path, ignore_errors=True)
        if not args.dir:
            shutil.rmtree(work, ignore_errors=True)
    report["summary"] = summarize(report)
    publish("bench_long", report, markdown(report), args.quick)


if __name__ == "__main__":
    main()
