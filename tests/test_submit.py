"""Submission without a cluster: addresses, checks before submitting, and the job record.

The job's entrypoint (``run_job``) runs here against a local Ray, so the states it records in
the store are tested without the Jobs API; tests/test_cluster.py submits to a real cluster.
"""

import doctest
import os
import sys
import time

import numpy as np
import pytest

import distglm
from distglm import store
from distglm.errors import (InputError, InputTypeError, JobError, JobTimeoutError, StoreError,
                            UnsupportedOptionError)
from distglm.submit import Job, _new_record, dashboard_url, get_job, run_job, submit

submit_module = sys.modules["distglm.submit"]
UNREACHABLE = "http://127.0.0.1:9"  # the discard port: nothing listens there


def make_store(path, n_neurons=32, n_samples=600, seed=0, neuron_chunk=8):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n_samples, 4))
    mask = (rng.random((4, n_neurons)) < 0.75).astype(np.uint8)
    coef = rng.normal(0, 0.3, size=(4, n_neurons)) * mask
    y = rng.poisson(np.exp(X @ coef - 0.5))
    return store.write_inputs(str(path), X, y, mask, neuron_chunk=neuron_chunk), X, y, mask


def record_job(path, model, job_id="distglm-000000000001", **options):
    """Write the record submit writes, without a cluster to submit to."""
    store.write_attrs(path, "job", _new_record(job_id, UNREACHABLE, model, options, store.open_inputs(path).n_neurons))
    return Job(job_id, path, UNREACHABLE)


@pytest.mark.parametrize("address, url", [
    ("http://head:8265", "http://head:8265"),
    ("https://ray.example.org/", "https://ray.example.org"),
    ("10.0.0.5:6379", "http://10.0.0.5:8265"),
    ("ray://10.0.0.5:10001", "http://10.0.0.5:8265"),
    ("ray://head", "http://head:8265"),
    ("head", "http://head:8265"),
    ("127.0.0.1:8299", "http://127.0.0.1:8299"),
])
def test_dashboard_url(address, url):
    assert dashboard_url(address) == url


def test_docstring_examples():
    assert doctest.testmod(submit_module).failed == 0


def test_dashboard_url_defaults_and_errors(monkeypatch):
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    assert dashboard_url() == "http://127.0.0.1:8265"
    monkeypatch.setenv("RAY_ADDRESS", "10.1.2.3:6379")
    assert dashboard_url() == "http://10.1.2.3:8265"
    with pytest.raises(InputError, match="ftp://x"):
        dashboard_url("ftp://x")
    with pytest.raises(InputError, match="names no host"):
        dashboard_url(":6379")
    with pytest.raises(InputTypeError):
        dashboard_url(6379)


def test_package_exports_the_functions_not_the_module():
    assert distglm.submit is submit and distglm.get_job is get_job and distglm.Job is Job


def test_import_distglm_does_not_import_ray():
    import subprocess

    code = "import sys, distglm; distglm.submit; sys.exit('ray' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


def test_checks_before_submitting_leave_the_store_untouched(tmp_path):
    path, _, _, mask = make_store(tmp_path / "s.zarr")
    model = distglm.PopulationGLM()
    with pytest.raises(InputTypeError, match="PopulationGLM"):
        submit(path, distglm.GLM(), address=UNREACHABLE)
    with pytest.raises(InputError, match=r"unknown fit options \['progress'\]"):
        submit(path, model, address=UNREACHABLE, progress=True)
    with pytest.raises(InputError, match="num_actors"):
        submit(path, model, address=UNREACHABLE, num_actors=0)
    with pytest.raises(InputTypeError, match="resume"):
        submit(path, model, address=UNREACHABLE, resume="yes")
    with pytest.raises(InputError, match="feature_mask differs"):
        submit(path, distglm.PopulationGLM(feature_mask=1 - mask), address=UNREACHABLE)
    with pytest.raises(StoreError, match="not a distglm store"):
        submit(tmp_path / "missing.zarr", model, address=UNREACHABLE)
    assert store.read_attrs(path, "job") == {}


def test_unreachable_cluster_fails_fast_before_recording_a_job(tmp_path):
    path, *_ = make_store(tmp_path / "s.zarr")
    t0 = time.monotonic()
    with pytest.raises(JobError, match="cannot reach the Ray cluster's dashboard at http://127.0.0.1:9"):
        submit(path, distglm.PopulationGLM(), address=UNREACHABLE)
    assert time.monotonic() - t0 < 10
    assert store.read_attrs(path, "job") == {}
    with pytest.raises(JobError, match="cannot reach"):
        get_job("distglm-123", address=UNREACHABLE)


def test_a_silent_dashboard_is_abandoned_after_the_request_timeout(monkeypatch):
    import socket

    # A socket that listens but never answers: the kernel completes the connection, then the
    # request waits for a reply that never comes.
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        monkeypatch.setattr(submit_module, "_REQUEST_TIMEOUT_S", 2.0)
        t0 = time.monotonic()
        with pytest.raises(JobError, match="did not answer within 2 s"):
            get_job("distglm-123", address=f"http://127.0.0.1:{silent.getsockname()[1]}")
        assert time.monotonic() - t0 < 5


def test_get_job_by_store(tmp_path):
    path, *_ = make_store(tmp_path / "s.zarr")
    with pytest.raises(JobError, match="holds no job record"):
        get_job(path)
    record_job(path, distglm.PopulationGLM(), job_id="distglm-abc")
    job = get_job(path)
    assert (job.id, job.path, job.address) == ("distglm-abc", path, UNREACHABLE)
    # a relative path is made absolute, since the job runs in another working directory
    os.chdir(tmp_path)
    assert get_job("s.zarr").path == path
    assert get_job(path, address="http://other:8265").address == "http://other:8265"


@pytest.mark.ray
def test_run_job_records_every_state_and_the_progress(tmp_path, monkeypatch):
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    path, X, y, mask = make_store(tmp_path / "s.zarr")
    model = distglm.PopulationGLM(regularizer="Ridge", regularizer_strength=0.1)
    job = record_job(path, model, num_actors=2)
    status = job.status()  # the cluster cannot be asked: the record answers
    assert (status.state, status.cluster_status, status.neurons_total, status.neurons_done) == ("pending", None, 32, 0)
    with pytest.raises(JobError, match="has no result: it is pending"):
        job.result()
    with pytest.raises(JobTimeoutError, match="still pending after 0.2 s") as timeout:
        job.wait(timeout=0.2, poll_interval=0.05)
    assert isinstance(timeout.value, TimeoutError)

    seen = []
    real_write = store.write_attrs

    def spy(path_, group, attrs):
        real_write(path_, group, attrs)
        seen.append(dict(store.read_attrs(path_, group)))

    monkeypatch.setattr(store, "write_attrs", spy)
    assert run_job(path, job.id) == 0
    states = [r["state"] for r in seen]
    assert states[0] == "running" and states[-1] == "succeeded"
    progress = [r["neurons_done"] for r in seen if r["state"] == "running"]
    assert progress == sorted(progress) and progress[-1] > 0  # one update per block of 8 neurons

    record = store.read_attrs(path, "job")
    assert [state for state, _ in record["history"]] == ["pending", "running", "succeeded"]
    assert record["neurons_done"] == record["neurons_total"] == 32
    assert record["report"]["n_blocks"] == 4 and record["error"] is None
    status = job.wait(timeout=5)
    assert status.state == "succeeded" and status.finished and status.neurons_converged == 32
    fitted = job.result()
    reference = distglm.PopulationGLM(regularizer="Ridge", regularizer_strength=0.1, feature_mask=mask).fit(X, y)
    np.testing.assert_allclose(fitted.coef_, reference.coef_, atol=2e-3)
    assert "succeeded" in str(status) and "32/32 fitted" in str(status)


@pytest.mark.ray
def test_run_job_records_a_failure(tmp_path, monkeypatch):
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    path, *_ = make_store(tmp_path / "s.zarr")
    # Bernoulli responses must be 0 or 1: the fit stops before any actor starts
    job = record_job(path, distglm.PopulationGLM(observation_model="Bernoulli"))
    with pytest.raises(InputError):
        run_job(path, job.id)
    status = job.status()
    assert status.state == "failed" and "InputError" in status.error
    assert [s for s, _ in store.read_attrs(path, "job")["history"]] == ["pending", "running", "failed"]
    with pytest.raises(JobError, match="has no result: it is failed: InputError"):
        job.result()
    assert job.wait(timeout=1).state == "failed"
    assert job.cancel().state == "failed"  # a finished job is left as it is


def test_run_job_refuses_another_jobs_record(tmp_path):
    path, *_ = make_store(tmp_path / "s.zarr")
    record_job(path, distglm.PopulationGLM(), job_id="distglm-new")
    with pytest.raises(JobError, match="records job 'distglm-new', not 'distglm-old'"):
        run_job(path, "distglm-old")


def test_waiting_on_a_job_nobody_can_reach(tmp_path, monkeypatch):
    path, *_ = make_store(tmp_path / "s.zarr")
    job = record_job(path, distglm.PopulationGLM())
    monkeypatch.setattr(submit_module, "_UNREACHABLE_GRACE_S", 0.3)
    with pytest.raises(JobError, match="has not answered for 0 s and the store records it pending"):
        job.wait(poll_interval=0.1)
    with pytest.raises(JobError, match="cannot cancel job distglm-000000000001"):
        job.cancel()
    with pytest.raises(JobError, match="neither its store nor the cluster"):
        Job("distglm-x", str(tmp_path / "gone.zarr"), UNREACHABLE).status()


def test_submitted_history_fit_runs_from_its_json_record(tmp_path, monkeypatch):
    """``distglm submit --history-...`` records the spec as JSON; the job rebuilds it and fits with it."""
    from distglm.cli import _fit_options, _parser
    from distglm.history import HistorySpec

    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    path, X, y, _ = make_store(tmp_path / "s.zarr", n_neurons=8, n_samples=400)
    spec = HistorySpec.raised_cosine_log(3, 6, coupling="self")
    model = distglm.PopulationGLM(regularizer="Ridge", regularizer_strength=0.01)
    # refused here, before the cluster is asked, when the store cannot take it
    with pytest.raises(InputError, match="holds 8 neurons"):
        submit(path, model, address=UNREACHABLE, history=HistorySpec.raised_cosine_log(3, 6, np.eye(4, dtype=bool)))
    held_out = store.write_inputs(str(tmp_path / "held_out.zarr"), X, y, test=slice(350, None))
    with pytest.raises(UnsupportedOptionError, match="held-out samples"):
        submit(held_out, model, address=UNREACHABLE, history=spec)
    options = _fit_options(_parser().parse_args(["submit", path, "--history-basis", "3", "--history-window", "6",
                                                 "--history-coupling", "self", "--num-actors", "1"]))
    job = record_job(path, model, **options)
    assert store.read_attrs(path, "job")["fit_options"]["history"] == spec.to_json()
    assert run_job(path, job.id) == 0
    assert job.status().state == "succeeded"
    got = distglm.load_model(path)
    assert got.history_ == spec and got.coef_.shape == (4 + 8 * 3, 8)
    own = np.kron(np.eye(8), np.ones((3, 1))).astype(bool)
    assert np.all(got.coef_[4:][~own] == 0) and np.all(got.coef_[4:][own] != 0)
