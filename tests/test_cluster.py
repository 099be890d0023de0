"""Fits submitted to a real multi-node Ray cluster on this machine (cluster/local.sh).

One cluster for the module: a head node and two worker nodes of one CPU each, every node its own
``ray start`` process tree. The tests submit through the Jobs API, reattach from another process,
cancel, use a store on an S3-compatible server, and kill a worker node in the middle of a fit.
"""

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import NamedTuple

import numpy as np
import psutil
import pytest

import distglm
from distglm import store
from distglm.errors import JobError
from distglm.submit import get_job, submit

pytestmark = pytest.mark.ray
submit_module = sys.modules["distglm.submit"]
LOCAL_SH = Path(__file__).resolve().parents[1] / "cluster" / "local.sh"
MODEL = dict(regularizer="Ridge", regularizer_strength=0.1)


class LocalCluster(NamedTuple):
    url: str        # the dashboard: the Jobs API
    state_dir: str  # local.sh's pid files and logs
    env: dict


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def cluster():
    # A short directory: Ray's socket paths under it must stay within 107 bytes.
    state_dir = tempfile.mkdtemp(prefix="dg-")
    dashboard_port = free_port()
    env = {
        **os.environ,
        # the nodes run submitted jobs with the `python` first on their PATH: this environment's
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
        "DISTGLM_LOCAL_DIR": state_dir,
        "DISTGLM_LOCAL_WORKERS": "2",
        "DISTGLM_LOCAL_CPUS": "1",
        "DISTGLM_LOCAL_PORT": str(free_port()),
        "DISTGLM_LOCAL_DASHBOARD_PORT": str(dashboard_port),
        "JAX_PLATFORMS": "cpu",
    }
    env.pop("RAY_ADDRESS", None)
    try:
        up = subprocess.run(["bash", str(LOCAL_SH), "up"], env=env, capture_output=True, text=True, timeout=300)
        assert up.returncode == 0, up.stdout + up.stderr
        status = subprocess.run(["bash", str(LOCAL_SH), "status"], env=env, capture_output=True, text=True,
                                timeout=60)
        assert "cluster: 3 live nodes, 3 CPUs" in status.stdout, status.stdout + status.stderr
        yield LocalCluster(f"http://127.0.0.1:{dashboard_port}", state_dir, env)
    finally:
        down = subprocess.run(["bash", str(LOCAL_SH), "down"], env=env, capture_output=True, text=True, timeout=300)
        shutil.rmtree(state_dir, ignore_errors=True)
        assert down.returncode == 0, down.stdout + down.stderr


def make_inputs(n_neurons, n_samples=2000, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n_samples, 5))
    mask = (rng.random((5, n_neurons)) < 0.8).astype(np.uint8)
    coef = rng.normal(0, 0.3, size=(5, n_neurons)) * mask
    y = rng.poisson(np.exp(X @ coef - 0.3)).astype(np.int32)
    return X, y, mask


def assert_matches_in_memory_fit(fitted, X, y, mask):
    reference = distglm.PopulationGLM(**MODEL, feature_mask=mask).fit(X, y)
    np.testing.assert_allclose(fitted.coef_, reference.coef_, atol=2e-3)
    np.testing.assert_allclose(fitted.intercept_, reference.intercept_, atol=2e-3)
    assert np.all(fitted.coef_[mask == 0] == 0)


def run_cli(*args, env=None):
    return subprocess.run([sys.executable, "-m", "distglm.cli", *args], capture_output=True, text=True,
                          timeout=180, env=env)


def fitter_processes(state_dir, workers_only=False, busy=False):
    """The BlockFitter actor processes of this cluster, with the raylet of the node each runs on.

    With ``busy``, only those fitting a block now (their process title names the method).
    """
    title = "ray::BlockFitter.fit" if busy else "BlockFitter"
    found = []
    names = ["worker-1", "worker-2"] + ([] if workers_only else ["head"])
    for name in names:
        try:
            node = psutil.Process(int(Path(state_dir, f"{name}.pid").read_text()))
            raylets = [p for p in node.children(recursive=True) if p.name() == "raylet"]
            for raylet in raylets:
                found += [(raylet, p) for p in raylet.children()
                          if title in " ".join(p.cmdline())]
        except (OSError, psutil.Error):
            continue  # a node that is gone hosts nothing
    return found


def wait_until(predicate, timeout, what):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


# ---------------------------------------------------------------------------------------------


def test_unknown_and_foreign_job_ids(cluster):
    with pytest.raises(JobError, match="no job 'distglm-doesnotexist' on the Ray cluster at http://127.0.0.1"):
        get_job("distglm-doesnotexist", address=cluster.url)
    foreign = submit_module._Cluster(cluster.url).call("submit_job", entrypoint="true")
    with pytest.raises(JobError, match=f"job '{foreign}' .* was not submitted by distglm"):
        get_job(foreign, address=cluster.url)
    result = run_cli("status", "distglm-doesnotexist", "--address", cluster.url)
    assert result.returncode == 1
    assert result.stderr.startswith("error: no job 'distglm-doesnotexist'")


def test_a_job_its_cluster_forgot(cluster, tmp_path):
    # the record of a job submitted to a cluster that was since replaced at the same address
    X, y, mask = make_inputs(16, n_samples=100)
    path = store.write_inputs(str(tmp_path / "forgotten.zarr"), X, y, mask)
    store.write_attrs(path, "job", submit_module._new_record("distglm-forgotten", cluster.url,
                                                             distglm.PopulationGLM(), {}, 16))
    status = get_job(path).status()
    assert (status.state, status.cluster_status) == ("failed", "UNKNOWN")
    assert "has no job distglm-forgotten: the cluster it ran on is gone, and the store records it pending" in status.error
    assert get_job(path).wait(timeout=5).state == "failed"


def test_submit_status_and_cancel(cluster, tmp_path):
    # enough blocks that a fit is still running when the command line cancels it
    X, y, mask = make_inputs(480, n_samples=20_000)
    path = store.write_inputs(str(tmp_path / "cancel.zarr"), X, y, mask, neuron_chunk=16)
    job = submit(path, distglm.PopulationGLM(**MODEL), address=cluster.url, num_actors=2)
    assert store.read_attrs(path, "job")["history"][0][0] == "pending"
    with pytest.raises(JobError, match=f"already has job {job.id}"):
        submit(path, distglm.PopulationGLM(), address=cluster.url)

    wait_until(lambda: job.status().state == "running", 120, "the job to run")
    wait_until(lambda: fitter_processes(cluster.state_dir), 120, "the fit's actors")
    status = job.cancel()
    assert (status.state, status.cluster_status) == ("cancelled", "STOPPED")
    assert [s for s, _ in store.read_attrs(path, "job")["history"]] == ["pending", "running", "cancelled"]
    with pytest.raises(JobError, match="has no result: it is cancelled"):
        job.result()
    # the fit's actors went with it
    wait_until(lambda: not fitter_processes(cluster.state_dir), 60, "the actors to stop")

    # the command line: submit again (a cancelled job frees the store), follow it by path, cancel by id
    submitted = run_cli("submit", path, "--address", cluster.url, "--model", '{"regularizer": "Ridge"}',
                        "--no-resume")
    assert submitted.returncode == 0, submitted.stderr
    job_id = submitted.stdout.strip()
    assert job_id.startswith("distglm-") and job_id != job.id
    status = run_cli("status", path)  # the address comes from the store's record
    assert status.returncode == 0, status.stderr
    assert status.stdout.startswith(f"job {job_id}: ")
    cancelled = run_cli("cancel", job_id, "--address", cluster.url)
    assert cancelled.returncode == 0, cancelled.stderr
    assert f"job {job_id}: cancelled (cluster: STOPPED)" in cancelled.stdout
    assert store.read_attrs(path, "job")["state"] == "cancelled"


@pytest.fixture(scope="module")
def s3():
    """An S3-compatible server on loopback, with a bucket, and this process's credentials for it.

    One for the module: fsspec caches its S3 file system, endpoint included, for the process.
    """
    import boto3
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=free_port(), verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    env = {"AWS_ENDPOINT_URL": f"http://{host}:{port}", "AWS_ACCESS_KEY_ID": "testing",
           "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}
    with pytest.MonkeyPatch.context() as patch:
        for key, value in env.items():
            patch.setenv(key, value)
        client = boto3.client("s3", endpoint_url=env["AWS_ENDPOINT_URL"])
        client.create_bucket(Bucket="distglm-test")
        yield env, client
    server.stop()


def test_fit_with_the_store_on_s3(cluster, s3):
    env, client = s3
    X, y, mask = make_inputs(32)
    path = store.write_inputs("s3://distglm-test/recording.zarr", X, y, mask, neuron_chunk=16)
    # The nodes hold no credentials of their own: the job's runtime environment carries them.
    job = submit(path, distglm.PopulationGLM(**MODEL), address=cluster.url, num_actors=2,
                 runtime_env={"env_vars": env})
    status = job.wait(timeout=240)
    assert status.state == "succeeded", status
    assert (status.neurons_done, status.neurons_total, status.neurons_failed) == (32, 32, 0)
    keys = {obj["Key"] for obj in client.list_objects_v2(Bucket="distglm-test")["Contents"]}
    assert "recording.zarr/results/coef/zarr.json" in keys
    assert any(key.startswith("recording.zarr/results/coef/c/") for key in keys)
    assert_matches_in_memory_fit(job.result(), X, y, mask)


def test_a_job_given_storage_options_and_its_log(cluster, s3):
    env, client = s3
    X, y, mask = make_inputs(32)
    # credentials of their own, which neither the nodes nor the job's runtime environment are given
    options = {"key": "AKIDFROMOPTIONS", "secret": "secret-from-options",
               "client_kwargs": {"endpoint_url": env["AWS_ENDPOINT_URL"], "region_name": "us-east-1"}}
    path = store.write_inputs("s3://distglm-test/options.zarr", X, y, mask, neuron_chunk=16,
                              storage_options=options)
    job = submit(path, distglm.PopulationGLM(**MODEL), address=cluster.url, num_actors=2, storage_options=options)
    status = job.wait(timeout=240)
    assert status.state == "succeeded", status
    assert status.elapsed_s > 0 and status.neurons_per_second > 0 and status.eta_s == 0
    assert "neurons/s" in str(status) and "elapsed" in str(status)
    assert_matches_in_memory_fit(job.result(), X, y, mask)
    # the job's log, as ray job logs shows it: a line per block from the actors and the driver
    log = job.logs()
    assert "distglm.actor: block 0: neurons 0-15, " in log and "distglm.actor: block 1: neurons 16-31, " in log
    progress = [line for line in log.splitlines() if "distglm.scheduler: fit: block" in line]
    assert len(progress) == 2 and "32/32 neurons (100%)" in progress[-1] and "ETA 0 s" in progress[-1]
    tail = run_cli("logs", job.id, "--address", cluster.url, "--tail", "3")
    assert tail.returncode == 0, tail.stderr
    assert tail.stdout.splitlines() == log.rstrip("\n").splitlines()[-3:]
    as_json = run_cli("status", job.id, "--address", cluster.url, "--json")
    assert as_json.returncode == 0, as_json.stderr
    assert json.loads(as_json.stdout)["state"] == "succeeded" and json.loads(as_json.stdout)["eta_s"] == 0
    # the credentials are in no object of the store (the job record included)
    for obj in client.list_objects_v2(Bucket="distglm-test", Prefix="options.zarr/")["Contents"]:
        body = client.get_object(Bucket="distglm-test", Key=obj["Key"])["Body"].read()
        assert b"secret-from-options" not in body and b"AKIDFROMOPTIONS" not in body, obj["Key"]


def test_a_store_the_cluster_cannot_read(cluster, s3):
    env, _ = s3
    X, y, mask = make_inputs(16, n_samples=200)
    path = store.write_inputs("s3://distglm-test/unreachable.zarr", X, y, mask)
    # readable from here, but the cluster is pointed at an endpoint where nothing listens
    job = submit(path, distglm.PopulationGLM(), address=cluster.url,
                 runtime_env={"env_vars": {**env, "AWS_ENDPOINT_URL": f"http://127.0.0.1:{free_port()}"}})
    status = job.wait(timeout=180)
    assert status.state == "failed" and status.cluster_status == "FAILED"
    assert status.error.startswith("cannot read the store s3://distglm-test/unreachable.zarr"), status.error
    with pytest.raises(JobError, match="has no result: it is failed: cannot read the store"):
        job.result()


def test_fit_survives_its_submitter_and_a_lost_worker_node(cluster, tmp_path):
    # enough blocks of enough samples that the fit is still running, with an actor busy on a
    # worker node, when that node is lost (fits have become fast: a few blocks end within a second)
    n_blocks = 24
    X, y, mask = make_inputs(16 * n_blocks, n_samples=100_000)
    path = store.write_inputs(str(tmp_path / "survivor.zarr"), X, y, mask, neuron_chunk=16)
    script = ("import distglm\n"
              f"job = distglm.submit({path!r}, distglm.PopulationGLM(**{MODEL!r}), address={cluster.url!r}, "
              "num_actors=2, block_size=16)\n"
              "print(job.id)\n")
    submitter = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert submitter.returncode == 0, submitter.stderr
    job = get_job(submitter.stdout.split()[-1], address=cluster.url)
    assert job.path == path

    # kill the raylet of a worker node while one of the fit's actors runs there
    raylet, _ = wait_until(lambda: fitter_processes(cluster.state_dir, workers_only=True, busy=True)[:1],
                           120, "an actor fitting a block on a worker node")[0]
    assert job.status().state in ("pending", "running")
    raylet.kill()

    status = job.wait(timeout=300)
    assert status.state == "succeeded", status
    # No block is lost, whether the actor on that node died with its raylet (its blocks retried
    # elsewhere) or, talking to the driver directly, finished its blocks before it noticed.
    record = store.read_attrs(path, "job")
    assert [s for s, _ in record["history"]] == ["pending", "running", "succeeded"]
    assert store.done_blocks(path) == set(range(n_blocks))
    assert np.all(store.read_results(path)["status"] != store.STATUS_UNWRITTEN)
    assert_matches_in_memory_fit(job.result(), X, y, mask)



FIT_SCRIPT = """
import sys, distglm
report = distglm.fit(sys.argv[1], distglm.PopulationGLM(regularizer="Ridge", regularizer_strength=0.1),
                     address=sys.argv[2], progress=False, connect_timeout=60)
print("FITTED", report.n_fitted)
"""


def test_fit_joins_a_cluster_with_token_authentication(cluster, tmp_path):
    X, y, mask = make_inputs(32)
    path = store.write_inputs(str(tmp_path / "joined.zarr"), X, y, mask, neuron_chunk=16)
    address = f"127.0.0.1:{cluster.env['DISTGLM_LOCAL_PORT']}"
    # the token where Ray and distglm look for it: ~/.ray/auth_token (local.sh made it)
    joined = subprocess.run([sys.executable, "-c", FIT_SCRIPT, path, address], env=cluster.env,
                            capture_output=True, text=True, timeout=300)
    assert joined.returncode == 0, joined.stderr[-3000:]
    assert "FITTED 32" in joined.stdout
    assert_matches_in_memory_fit(distglm.load_model(path), X, y, mask)

    # no token anywhere: refused at once, with the reason and where the token is looked for
    home = tmp_path / "home"
    home.mkdir()
    env = {**cluster.env, "HOME": str(home), "RAY_AUTH_TOKEN_PATH": str(home / "no-token")}
    env.pop("RAY_AUTH_TOKEN", None)
    other = store.write_inputs(str(tmp_path / "refused.zarr"), X, y, mask, neuron_chunk=16)
    started = time.monotonic()
    refused = subprocess.run([sys.executable, "-c", FIT_SCRIPT, other, address], env=env,
                             capture_output=True, text=True, timeout=300)
    assert refused.returncode == 1
    # where the token is looked for, whichever way Ray reports the refusal
    assert "authentication token" in refused.stderr, refused.stderr[-3000:]
    assert "RAY_AUTH_TOKEN, the file named by RAY_AUTH_TOKEN_PATH, or ~/.ray/auth_token" in refused.stderr
    assert time.monotonic() - started < 60
    assert store.read_fingerprint(other) is None


def test_the_lease_on_s3(s3):
    X, y, mask = make_inputs(16, n_samples=200)
    path = store.write_inputs("s3://distglm-test/leased.zarr", X, y, mask)
    with store.acquire_lease(path, "fit") as lease:
        held = store.read_lease(path)
        assert (held["pid"], held["expired"]) == (os.getpid(), False)
        # the holder is alive on this machine: a second writer is refused, naming it
        with pytest.raises(distglm.StoreError, match=f"in use by fit in process {os.getpid()}"):
            store.acquire_lease(path, "write_inputs")
        with pytest.raises(distglm.StoreError, match="in use by fit"):
            store.write_inputs(path, X, y, mask, overwrite=True)
        assert not lease.lost
    assert store.read_lease(path) is None
    with store.acquire_lease(path, "fit"):
        assert store.break_lease(path)["purpose"] == "fit"
    assert store.read_lease(path) is None
    # replacing inputs on an object store: staged, then copied into place (no rename there)
    generation = store.inputs_generation(path)
    X2, y2, mask2 = make_inputs(16, n_samples=200, seed=5)
    store.write_inputs(path, X2, y2, mask2, overwrite=True)
    assert store.inputs_generation(path) != generation
    np.testing.assert_array_equal(store.read_y_block(path, 0, 16), y2)
    np.testing.assert_array_equal(store.read_mask_block(path, 0, 16), mask2)
    listed = s3[1].list_objects_v2(Bucket="distglm-test", Prefix="leased.zarr/staging")
    assert listed.get("KeyCount", 0) == 0
