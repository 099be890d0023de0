"""A store is never lost, never silently stale and never hangs: the distributed fit under attack.

Real Ray, real Zarr stores on disk, real processes killed (SIGKILL), stopped (SIGSTOP) and
interrupted at chosen points of their store writes. After each attack the user sees either the
exact result of an uninterrupted fit or a clear refusal, never stale or partial data presented
as complete, and a plain rerun finishes the fit byte for byte.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time

import numpy as np
import psutil
import pytest
import ray
import zarr

import distglm
from crashing import run_crashing
from distglm import store
from distglm.errors import ClusterError, InputError, StoreError
from distglm.glm import PopulationGLM
from distglm.plan import plan_blocks
from test_distributed import (
    SLOW_BLOCK,
    SLOW_MODEL,
    assert_same_bytes,
    block_fitters,
    copy_inputs,
    driver_command,
    driver_env,
    poll_done,
    simulate,
    stored_fit,
)
from test_cluster import free_port
from test_store import snapshot

pytestmark = pytest.mark.ray
# 12 blocks of 16 neurons, each long enough (a few tenths of a second) to be attacked mid-way
SLOW = dict(n_samples=10_000, n_features=20, n_neurons=192, neuron_chunk=16)
N_BLOCKS = len(plan_blocks(SLOW["n_neurons"], SLOW["neuron_chunk"], SLOW_BLOCK))
# A fit run by a subprocess driver, after crashing.PRELUDE: argv = path, options as JSON.
DRIVER = """
import json, sys
import distglm
path, options = sys.argv[1], json.loads(sys.argv[2])
distglm.fit(path, distglm.PopulationGLM(**options.pop("model")), progress=False, **options)
print("FITTED")
"""


@pytest.fixture(scope="module")
def slow_inputs(tmp_path_factory):
    X, y, mask = simulate(SLOW["n_samples"], SLOW["n_features"], SLOW["n_neurons"], seed=1)
    return distglm.write_inputs(tmp_path_factory.mktemp("slow") / "inputs.zarr", X, y, mask,
                                neuron_chunk=SLOW["neuron_chunk"])


@pytest.fixture(scope="module")
def fitted(slow_inputs, tmp_path_factory):
    """The uninterrupted fit."""
    path = copy_inputs(slow_inputs, tmp_path_factory.mktemp("reference") / "fit.zarr")
    report = distglm.fit(path, PopulationGLM(**SLOW_MODEL), num_actors=2, block_size=SLOW_BLOCK, progress=False)
    assert report.failed_blocks == {} and report.n_fitted == SLOW["n_neurons"]
    return path


@pytest.fixture(scope="module")
def reference(fitted):
    return stored_fit(fitted)


@pytest.fixture
def fitted_copy(fitted, tmp_path):
    path = str(tmp_path / "fit.zarr")
    shutil.copytree(fitted, path)
    return path


def fit(path, **options):
    options = {"num_actors": 2, "block_size": SLOW_BLOCK, "progress": False, **options}
    return distglm.fit(path, PopulationGLM(**options.pop("model", SLOW_MODEL)), **options)


# --------------------------------------------------------------------------------------------
# Cluster addresses: refused or unreachable, checked before the store is touched


class TestAddresses:
    @pytest.fixture(autouse=True)
    def no_ray_in_this_process(self):
        assert not ray.is_initialized()
        yield
        assert not ray.is_initialized()

    def test_a_refused_address_keeps_finished_results(self, fitted_copy, reference):
        before = snapshot(fitted_copy)
        with pytest.raises(InputError, match="dashboard address, which distglm.submit uses"):
            fit(fitted_copy, resume=False, address="http://127.0.0.1:8265")
        port = free_port()
        started = time.monotonic()
        with pytest.raises(ClusterError, match=rf"'127.0.0.1:{port}': nothing listens at 127.0.0.1:{port} "
                                               r"\(connection refused\)"):
            fit(fitted_copy, resume=False, address=f"127.0.0.1:{port}")
        assert time.monotonic() - started < 10
        cli = subprocess.run([sys.executable, "-m", "distglm.cli", "fit", fitted_copy, "--no-resume",
                              "--address", f"127.0.0.1:{port}"], capture_output=True, text=True, timeout=120)
        assert cli.returncode == 1 and "nothing listens" in cli.stderr
        assert snapshot(fitted_copy) == before
        assert_same_bytes(stored_fit(fitted_copy), reference)

    def test_a_refused_address_leaves_no_results_behind(self, slow_inputs, tmp_path):
        path = copy_inputs(slow_inputs, tmp_path / "fit.zarr")
        before = snapshot(path)
        with pytest.raises(ClusterError, match="connection refused"):
            fit(path, address=f"ray://127.0.0.1:{free_port()}")
        assert snapshot(path) == before
        assert not os.path.exists(os.path.join(path, "results"))

    def test_a_listener_that_is_no_cluster_is_given_up_on_in_time(self, fitted_copy):
        # something accepts connections at the address but never speaks Ray
        with socket.socket() as listener:
            listener.bind(("127.0.0.1", 0))
            listener.listen(16)
            port = listener.getsockname()[1]
            script = ("import distglm, sys\n"
                      f"distglm.fit({fitted_copy!r}, distglm.PopulationGLM(), resume=False, progress=False, "
                      f"address='127.0.0.1:{port}', connect_timeout=3)\n")
            started = time.monotonic()
            run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120,
                                 env=driver_env())
        assert time.monotonic() - started < 60
        assert run.returncode == 1
        assert (f"ClusterError: cannot connect to the Ray cluster at '127.0.0.1:{port}': something listens at "
                f"127.0.0.1:{port} but did not answer as a Ray cluster within 3 s") in run.stderr


# --------------------------------------------------------------------------------------------
# Drivers killed, in validation, while replacing results, while writing inputs


def assert_clear_or_exact(path, reference):
    """load_model either refuses with a StoreError or returns exactly the uninterrupted fit."""
    try:
        distglm.load_model(path)
    except StoreError:
        return "refused"
    assert_same_bytes(stored_fit(path), reference)
    return "exact"


class TestKilledDrivers:
    def test_killed_while_validating_leaves_the_store_as_it_was(self, fitted_copy, reference):
        before = snapshot(fitted_copy)
        options = json.dumps({"model": {"regularizer": "Ridge", "regularizer_strength": 1.0}, "resume": False})
        killed = run_crashing(DRIVER, {"op": "get", "match": "inputs/y/c", "after": 5}, fitted_copy, options)
        assert killed.returncode == -9, killed.stderr[-2000:]
        assert snapshot(fitted_copy) == before
        assert assert_clear_or_exact(fitted_copy, reference) == "exact"

    @pytest.mark.parametrize("files_deleted", [30])
    def test_killed_while_replacing_results_then_rerun(self, fitted_copy, reference, files_deleted):
        options = json.dumps({"model": SLOW_MODEL, "resume": False, "num_actors": 2, "block_size": SLOW_BLOCK})
        killed = run_crashing(DRIVER, {"op": "delete_dir", "match": "results", "after": files_deleted},
                              fitted_copy, options)
        assert killed.returncode == -9, killed.stderr[-2000:]
        assert assert_clear_or_exact(fitted_copy, reference) == "refused"
        inspect = subprocess.run([sys.executable, "-m", "distglm.cli", "inspect", fitted_copy, "--no-pseudo-r2"],
                                 capture_output=True, text=True, timeout=120)
        assert "Traceback" not in inspect.stderr and "KeyError" not in inspect.stderr
        report = run_driver_in_process(fitted_copy)
        assert report.n_blocks_fitted == N_BLOCKS
        assert_same_bytes(stored_fit(fitted_copy), reference)

    def test_killed_while_writing_inputs_then_rerun(self, fitted_copy, reference, slow_inputs):
        script = (f"import sys, json; sys.path.insert(0, {os.path.dirname(__file__)!r})\n"
                  "import distglm\n"
                  "from test_distributed import simulate\n"
                  "size = json.loads(sys.argv[2])\n"
                  "X, y, mask = simulate(size['n_samples'], size['n_features'], size['n_neurons'], seed=1)\n"
                  "distglm.write_inputs(sys.argv[1], X, y, mask, neuron_chunk=size['neuron_chunk'], overwrite=True)\n")
        # killed while copying the new y: the old inputs and their fit are untouched
        killed = run_crashing(script, {"op": "set", "match": "staging/y/c", "after": 4}, fitted_copy, json.dumps(SLOW))
        assert killed.returncode == -9, killed.stderr[-2000:]
        assert_same_bytes(stored_fit(fitted_copy), reference)
        assert fit(fitted_copy).n_blocks_fitted == 0
        # killed while the old inputs are deleted: refused until written again
        killed = run_crashing(script, {"op": "delete_dir", "match": "inputs", "after": 2}, fitted_copy,
                              json.dumps(SLOW))
        assert killed.returncode == -9, killed.stderr[-2000:]
        with pytest.raises(StoreError, match="not completely written|has no inputs"):
            distglm.load_model(fitted_copy)
        with pytest.raises(StoreError, match="not completely written|has no inputs"):
            fit(fitted_copy)
        X, y, mask = simulate(SLOW["n_samples"], SLOW["n_features"], SLOW["n_neurons"], seed=1)
        distglm.write_inputs(fitted_copy, X, y, mask, neuron_chunk=SLOW["neuron_chunk"], overwrite=True)
        run_driver_in_process(fitted_copy)
        got = stored_fit(fitted_copy)
        # new inputs, new generation: the done markers differ, every result is the same
        assert_same_bytes({k: v for k, v in got.items() if k != "done"},
                          {k: v for k, v in reference.items() if k != "done"})


def run_driver_in_process(path, **options):
    report = fit(path, **options)
    assert report.failed_blocks == {}
    return report


# --------------------------------------------------------------------------------------------
# Actors killed, stopped, too many; two drivers; stale and missing data


@pytest.fixture(scope="class")
def local_ray():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


def busy_fitters():
    return [proc for proc, title in block_fitters() if title.startswith("ray::BlockFitter.fit")]


def attack_while_fitting(path, attack, **options):
    """Run a fit while ``attack(done_blocks)`` runs every 20 ms in a thread; return the report."""
    stop = threading.Event()

    def loop():
        while not stop.is_set():
            attack(poll_done(path))
            time.sleep(0.02)

    attacker = threading.Thread(target=loop, daemon=True)
    attacker.start()
    try:
        return fit(path, **options)
    finally:
        stop.set()
        attacker.join()


@pytest.mark.usefixtures("local_ray")
class TestOnRay:
    def test_repeated_actor_kills_lose_nothing(self, slow_inputs, reference, tmp_path):
        path = copy_inputs(slow_inputs, tmp_path / "fit.zarr")
        kills = []

        def kill(done):
            # three kills (more than the two actors), each once a new block is done
            if len(kills) < 3 and len(done) > (kills[-1][1] if kills else 0) and len(done) < N_BLOCKS - 2:
                busy = busy_fitters()
                if busy:
                    busy[0].send_signal(signal.SIGKILL)
                    kills.append((busy[0].pid, len(done)))

        report = attack_while_fitting(path, kill, max_retries=3)
        assert len(kills) == 3, f"the fit ended after {len(kills)} kills"
        assert report.n_retries >= 3 and report.failed_blocks == {}
        assert (report.n_blocks_fitted, report.n_fitted) == (N_BLOCKS, SLOW["n_neurons"])
        assert_same_bytes(stored_fit(path), reference)

    def test_kills_beyond_the_retry_bound(self, slow_inputs, reference, tmp_path):
        path = copy_inputs(slow_inputs, tmp_path / "fit.zarr")
        kills = []

        def kill(done):
            if not kills and len(done) >= 1:
                busy = busy_fitters()
                if busy:
                    busy[0].send_signal(signal.SIGKILL)
                    kills.append(busy[0].pid)

        report = attack_while_fitting(path, kill, max_retries=0)
        # the killed actor held one or two blocks (one solving, one read ahead)
        failed = sorted(report.failed_blocks)
        assert kills and 1 <= len(failed) <= 2
        assert all("tried 1 times" in reason for reason in report.failed_blocks.values())
        assert not set(failed) & store.done_blocks(path)
        with pytest.raises(StoreError, match=f"unfinished fit: blocks {re.escape(str(failed))} are not done"):
            distglm.load_model(path)
        rerun = fit(path)
        assert (rerun.n_blocks_fitted, rerun.n_blocks_skipped) == (len(failed), N_BLOCKS - len(failed))
        assert_same_bytes(stored_fit(path), reference)

    def test_a_stopped_actor_is_given_up_on_and_its_block_redone(self, slow_inputs, reference, tmp_path):
        path = copy_inputs(slow_inputs, tmp_path / "fit.zarr")
        stopped = []

        def stop(done):
            if not stopped and len(done) >= 2:
                busy = busy_fitters()
                if busy:
                    busy[0].send_signal(signal.SIGSTOP)
                    stopped.append(busy[0])

        try:
            report = attack_while_fitting(path, stop, block_timeout=10)
            assert stopped
            # the stuck actor was killed, though it never ran again
            gone, _ = psutil.wait_procs(stopped, timeout=30)
            assert gone or stopped[0].status() == psutil.STATUS_ZOMBIE
        finally:
            for proc in stopped:
                if proc.is_running():
                    proc.send_signal(signal.SIGCONT)
        assert report.n_retries >= 1 and report.failed_blocks == {}
        assert_same_bytes(stored_fit(path), reference)

    def test_more_actors_than_cpus(self, slow_inputs, reference, tmp_path):
        path = copy_inputs(slow_inputs, tmp_path / "fit.zarr")
        with pytest.warns(UserWarning, match="num_actors=3 but the cluster has 2 CPUs"):
            report = fit(path, num_actors=3)
        assert report.failed_blocks == {} and report.n_fitted == SLOW["n_neurons"]
        assert_same_bytes(stored_fit(path), reference)

    def test_a_second_driver_is_refused_and_the_first_finishes(self, slow_inputs, reference, tmp_path):
        path = copy_inputs(slow_inputs, tmp_path / "fit.zarr")
        first = subprocess.Popen(driver_command(path, num_actors=1, block_size=SLOW_BLOCK, resume=False),
                                 stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=driver_env())
        try:
            deadline = time.monotonic() + 240
            while store.read_lease(path) is None:
                assert first.poll() is None, first.stdout.read()[-3000:]
                assert time.monotonic() < deadline
                time.sleep(0.05)
            with pytest.raises(StoreError, match=rf"in use by fit in process {first.pid} on .* one writer at a time"):
                fit(path, model={"regularizer": "Ridge", "regularizer_strength": 1.0}, resume=False)
            output, _ = first.communicate(timeout=240)
        finally:
            if first.poll() is None:
                first.kill()
        assert first.returncode == 0, output[-3000:]
        assert store.read_fingerprint(path)["model"]["regularizer_strength"] == SLOW_MODEL["regularizer_strength"]
        assert_same_bytes(stored_fit(path), reference)

    def test_inputs_edited_in_place_are_not_fitted_with_stale_results(self, fitted_copy, reference):
        y = zarr.open_array(os.path.join(fitted_copy, "inputs", "y"), mode="r+")
        y[100, 3] = y[100, 3] + 5
        before = snapshot(fitted_copy)
        with pytest.raises(StoreError, match="inputs changed since its results were fitted"):
            fit(fitted_copy)
        assert snapshot(fitted_copy) == before
        report = fit(fitted_copy, resume=False)
        assert report.n_blocks_fitted == N_BLOCKS
        got = stored_fit(fitted_copy)
        assert not np.array_equal(got["results/coef"][:, 3], reference["results/coef"][:, 3])
        np.testing.assert_array_equal(got["results/coef"][:, 16:], reference["results/coef"][:, 16:])

    def test_a_done_block_without_its_data_is_refitted(self, fitted_copy, reference):
        # coefficient chunks of block 4 gone, its done marker still there
        os.remove(os.path.join(fitted_copy, "results", "coef", "c", "0", "4"))
        assert store.done_blocks(fitted_copy) == set(range(N_BLOCKS)) - {4}
        with pytest.raises(StoreError, match=r"blocks \[4\] are not done \(or their data is missing\)"):
            distglm.load_model(fitted_copy)
        report = fit(fitted_copy)
        assert (report.n_blocks_fitted, report.n_blocks_skipped) == (1, N_BLOCKS - 1)
        assert_same_bytes(stored_fit(fitted_copy), reference)
