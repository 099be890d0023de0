"""Submit a distributed fit to a running Ray cluster and follow it from any machine.

:func:`submit` checks what it can from here (the model, the store's inputs), writes a job record
into the store's ``job`` group, and hands the fit to the cluster through Ray's Jobs API, so the fit
runs on the cluster and outlives the submitting process. The job's entrypoint,
``python -m distglm.cli _run-job PATH --job-id ID``, runs :func:`distglm.scheduler.fit` on the
cluster and records its progress and its end in the same ``job`` group. A :class:`Job` joins
that record with what the cluster says (when it can be reached): the record alone answers even
after the cluster is gone, from any machine that can read the store.

The ``job`` group's attributes::

    id, address             the job's id on the cluster and the dashboard it was submitted to
    state                   pending -> running -> succeeded | failed | cancelled
    history                 [[state, time], ...], every state the job went through
    model, fit_options, x64 what to fit: model_to_config(model), options of scheduler.fit
                            (a history spec as HistorySpec.to_json()), and whether JAX ran in
                            float64 where the job was submitted
    neurons_total, neurons_done, neurons_converged, neurons_failed
    submitted_at, started_at, finished_at, updated_at   ISO 8601 times, UTC
    error                   why the job failed, or None
    report                  the fit's summary (seconds, neurons/s, retries, failed blocks)

Addresses: the Jobs API talks to the cluster's dashboard, ``http://HEAD:8265``. An address is
taken from the ``address`` argument, else ``RAY_ADDRESS``, else ``http://127.0.0.1:8265``. An
``http(s)://`` address is used as it is; ``ray://HOST[:PORT]`` and ``HOST:6379`` (the cluster's
own address) mean the dashboard on HOST's default port 8265; any other ``HOST:PORT`` is taken to
be the dashboard's. Clusters with token authentication (Ray's default for new local clusters)
are reached with the token in ``RAY_AUTH_TOKEN``, the file named by ``RAY_AUTH_TOKEN_PATH``, or
``~/.ray/auth_token``.

The cluster's nodes must run a ``python`` (first on their ``PATH``) that imports distglm, and
must be able to read and write the store: a shared file system, or an object store whose
credentials they hold (see ``cluster/README.md``).
"""

from __future__ import annotations

import dataclasses
import datetime
import functools
import json
import os
import shlex
import sys
import time
import uuid

from . import store
from .connect import auth_token, bounded, dashboard_url, one_line
from .errors import DistGLMError, InputError, InputTypeError, JobError, JobTimeoutError, StoreError

__all__ = ["JOB_STATES", "Job", "JobStatus", "submit", "get_job", "dashboard_url", "run_job"]

#: Every state of a job, in the order a job goes through them; the last three are final.
JOB_STATES = ("pending", "running", "succeeded", "failed", "cancelled")
_FINAL = frozenset(JOB_STATES[2:])
_GROUP = "job"
_FIT_OPTIONS = ("num_actors", "block_size", "resume", "max_retries", "block_timeout", "stream", "memory_per_actor",
                "history")
_PATH_METADATA = "distglm_path"
# Bound on each request to the cluster, so that an unreachable address fails instead of hanging.
_REQUEST_TIMEOUT_S = 15.0
# How long wait() keeps polling a job the cluster no longer answers for.
_UNREACHABLE_GRACE_S = 60.0
_STOP_TIMEOUT_S = 60.0
# How a job's storage_options reach it: its runtime environment, not the store or the job record.
_STORAGE_OPTIONS_ENV = "DISTGLM_STORAGE_OPTIONS"


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def _parse_time(text: str | None) -> datetime.datetime | None:
    try:
        return datetime.datetime.fromisoformat(text) if text else None
    except (TypeError, ValueError):
        return None  # a record edited by hand: no derived times rather than an error


@dataclasses.dataclass(frozen=True)
class JobStatus:
    """Where a submitted fit stands.

    Attributes
    ----------
    id : str
        The job's id on the cluster.
    path : str
        The job's store.
    state : str
        One of :data:`JOB_STATES`.
    neurons_total, neurons_done, neurons_converged, neurons_failed : int or None
        Neurons in the store, with results, that converged, and that failed or did not
        converge (None when the store could not be read).
    error : str or None
        Why the job failed.
    cluster_status : str or None
        Ray's status of the job (PENDING, RUNNING, STOPPED, SUCCEEDED, FAILED), UNKNOWN when the
        cluster has no job of this id, or None when it could not be reached.
    submitted_at, updated_at : str or None
        ISO 8601 times (UTC) of the submission and of the record's last change.
    started_at, finished_at : str or None
        ISO 8601 times (UTC) at which the fit started on the cluster and ended.

    Examples
    --------
    >>> status = JobStatus("distglm-1", "/data/rec.zarr", "running", 256, 64, 64, 0, None, "RUNNING", None, None)
    >>> status.finished, status.neurons_done
    (False, 64)
    """

    id: str
    path: str
    state: str
    neurons_total: int | None
    neurons_done: int | None
    neurons_converged: int | None
    neurons_failed: int | None
    error: str | None
    cluster_status: str | None
    submitted_at: str | None
    updated_at: str | None
    started_at: str | None = None
    finished_at: str | None = None

    @property
    def finished(self) -> bool:
        """Whether the job is in a final state (succeeded, failed or cancelled)."""
        return self.state in _FINAL

    @property
    def elapsed_s(self) -> float | None:
        """Seconds since the fit started on the cluster (until it ended, once it has); None before."""
        start = _parse_time(self.started_at)
        if start is None:
            return None
        end = _parse_time(self.finished_at) if self.finished else None
        return max(0.0, ((end or datetime.datetime.now(datetime.timezone.utc)) - start).total_seconds())

    @property
    def neurons_per_second(self) -> float | None:
        """Neurons fitted per second, from the start to the record's last progress; None before any."""
        start, last = _parse_time(self.started_at), _parse_time(self.finished_at or self.updated_at)
        if start is None or last is None or not self.neurons_done or last <= start:
            return None
        return self.neurons_done / (last - start).total_seconds()

    @property
    def eta_s(self) -> float | None:
        """Seconds until the neurons left are fitted at the rate so far; 0 once finished, None if unknown."""
        if self.finished:
            return 0.0
        rate = self.neurons_per_second
        if rate is None or self.neurons_total is None:
            return None
        return max(0, self.neurons_total - self.neurons_done) / rate

    def as_dict(self) -> dict:
        """Every field and the derived progress (elapsed_s, neurons_per_second, eta_s), for JSON."""
        return {**dataclasses.asdict(self), "finished": self.finished, "elapsed_s": self.elapsed_s,
                "neurons_per_second": self.neurons_per_second, "eta_s": self.eta_s}

    def __str__(self) -> str:
        cluster = self.cluster_status or "cluster not reachable"
        lines = [f"job {self.id}: {self.state} (cluster: {cluster})", f"  store: {self.path}"]
        if self.neurons_total is not None:
            lines.append(f"  neurons: {self.neurons_done}/{self.neurons_total} fitted, {self.neurons_converged} "
                         f"converged, {self.neurons_failed} failed or not converged")
        if self.submitted_at:
            lines.append(f"  submitted {self.submitted_at}, updated {self.updated_at}")
        if self.elapsed_s is not None:
            rate, eta = self.neurons_per_second, self.eta_s
            lines.append(f"  elapsed {self.elapsed_s:.0f} s, " + (f"{rate:.1f} neurons/s" if rate else "rate unknown")
                         + ("" if self.finished else f", ETA {eta:.0f} s" if eta is not None else ", ETA unknown"))
        if self.error:
            lines.append(f"  error: {self.error}")
        return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# The cluster


def _bounded(call, what: str, url: str):
    """Run ``call()``; raise JobError if the dashboard at ``url`` does not answer in time."""
    return bounded(call, _REQUEST_TIMEOUT_S, lambda: JobError(
        f"the Ray cluster's dashboard at {url} did not answer within {_REQUEST_TIMEOUT_S:.0f} s ({what})"))


class _Cluster:
    """A Jobs API client whose every request is bounded in time and fails as JobError."""

    def __init__(self, url: str):
        self.url = url
        from ray.exceptions import AuthenticationError
        from ray.job_submission import JobSubmissionClient

        def connect(headers=None):
            return _bounded(lambda: JobSubmissionClient(url, headers=headers), "connecting", url)

        try:
            try:
                self._client = connect()
            except AuthenticationError as err:
                token = auth_token()
                if token is None:
                    raise JobError(f"the Ray cluster at {url} requires an authentication token and none was "
                                   "found in RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH or ~/.ray/auth_token") from err
                self._client = connect({"Authorization": f"Bearer {token}"})
        except DistGLMError:
            raise
        except Exception as err:  # noqa: BLE001 - every way of not reaching the cluster is one error
            raise JobError(f"cannot reach the Ray cluster's dashboard at {url} ({one_line(err)}); is the "
                           "cluster running, and is this its dashboard address (http://HEAD:8265)?") from None

    def call(self, method: str, *args, **kwargs):
        try:
            return _bounded(lambda: getattr(self._client, method)(*args, **kwargs), method, self.url)
        except DistGLMError:
            raise
        except Exception as err:  # noqa: BLE001 - as in __init__
            raise JobError(f"the Ray cluster at {self.url} failed to {method.replace('_', ' ')}: "
                           f"{one_line(err)}") from None

    def job_info(self, job_id: str):
        """Ray's details of a job, or None if the cluster has no job of that id."""
        try:
            return _bounded(lambda: self._client.get_job_info(job_id), "get job info", self.url)
        except DistGLMError:
            raise
        except Exception as err:  # noqa: BLE001 - as in __init__
            # The Jobs API answers an unknown id with HTTP 404, which the client raises as text.
            if "404" in str(err):
                return None
            raise JobError(f"the Ray cluster at {self.url} failed to get job info: {one_line(err)}") from None


# ---------------------------------------------------------------------------------------------
# The job record


def _store_path(path) -> str:
    if isinstance(path, os.PathLike):
        path = os.fspath(path)
    if not isinstance(path, str):
        raise InputTypeError(f"path must be a str (a directory or a URL) or os.PathLike; got {type(path).__name__}")
    # The job runs elsewhere, in another working directory: a local path must be absolute.
    return path if "://" in path else os.path.abspath(path)


def _read_record(path: str) -> dict:
    try:
        return store.read_attrs(path, _GROUP)
    except DistGLMError:
        raise
    except Exception as err:  # noqa: BLE001 - object-store backends raise their own errors
        raise _store_error(path, err) from None


def _store_error(path: str, err: BaseException) -> StoreError:
    return StoreError(f"cannot read the store {path}: {one_line(err)}")


def _record_state(path: str, state: str, **values) -> None:
    """Move the job record to ``state``, appending to its history, and set ``values``."""
    record = store.read_attrs(path, _GROUP)
    now = _now()
    history = list(record.get("history") or []) + [[state, now]]
    store.write_attrs(path, _GROUP, {"state": state, "history": history, "updated_at": now, **values})


def _new_record(job_id: str, url: str, model, options: dict, n_neurons: int) -> dict:
    """The record of a job just submitted; it has every key, so none of an earlier job's survives."""
    import jax

    from .glm import model_to_config

    now = _now()
    return {
        "id": job_id, "address": url, "state": "pending", "history": [["pending", now]],
        # The fit uses the store's mask (submit checked that the model's, if any, is the same).
        "model": {**model_to_config(model), "feature_mask": None},
        "fit_options": _jsonable_options(options), "x64": bool(jax.config.jax_enable_x64),
        "neurons_total": n_neurons, "neurons_done": 0, "neurons_converged": 0, "neurons_failed": 0,
        "submitted_at": now, "started_at": None, "finished_at": None, "updated_at": now,
        "error": None, "report": None,
    }


def _jsonable_options(options: dict) -> dict:
    """Fit options as the job record holds them: a HistorySpec by its JSON description."""
    if options.get("history") is None:
        return options
    return {**options, "history": options["history"].to_json()}


def _fit_options_of(record: dict) -> dict:
    """The options of :func:`distglm.fit` a job record describes (the inverse of ``_jsonable_options``)."""
    options = dict(record.get("fit_options") or {})
    if options.get("history") is not None:
        from .history import HistorySpec

        options["history"] = HistorySpec.from_json(options["history"])
    return options


def _check_fit_options(options: dict) -> dict:
    from .scheduler import check_fit_options

    unknown = sorted(set(options) - set(_FIT_OPTIONS))
    if unknown:
        raise InputError(f"unknown fit options {unknown}; a submitted fit takes {list(_FIT_OPTIONS)}")
    return dict(check_fit_options(**options))


# ---------------------------------------------------------------------------------------------
# Public API


@store.with_storage_options
def submit(path, model, *, address: str | None = None, runtime_env: dict | None = None,
           storage_options: dict | None = None, **fit_options) -> "Job":
    """Start a distributed fit on a running Ray cluster and return at once.

    The fit runs as a Ray job: it goes on after this process exits, and :func:`get_job` finds
    it again from any process. Its progress and end are recorded in the store.

    Parameters
    ----------
    path : str or os.PathLike
        A store written by :func:`distglm.write_inputs`, at a place both this process and the
        cluster can read (a shared directory, or an object store URL such as ``s3://bucket/x.zarr``).
        A relative local path is made absolute.
    model : PopulationGLM, or a NeMoS 0.2.8 GLM or PopulationGLM
        The configuration to fit (its feature mask, if any, must equal the store's); a NeMoS
        model is converted with :func:`distglm.glm.from_nemos`.
    address : str, optional
        The cluster's dashboard, ``http://HEAD:8265``; see :func:`dashboard_url`.
    runtime_env : dict, optional
        Ray runtime environment of the job, for example
        ``{"env_vars": {"AWS_ENDPOINT_URL": ...}}`` to give the cluster the store's endpoint.
    storage_options : dict, optional
        fsspec options (credentials, endpoint) for a store at a URL. This process uses them, the
        returned :class:`Job` keeps them in memory, and the job gets them through its runtime
        environment (the variable ``DISTGLM_STORAGE_OPTIONS``, which Ray shows to those who can
        see the job's runtime environment); they are never written into the store or its job
        record. Without them the cluster uses its own credentials.
    **fit_options
        ``num_actors``, ``block_size``, ``resume``, ``max_retries``, ``block_timeout``, ``stream``,
        ``memory_per_actor``, ``history`` of :func:`distglm.fit` (the history spec travels to
        the job as its JSON description, and the job rebuilds it).

    Returns
    -------
    Job

    Raises
    ------
    InputTypeError, InputError
        If the model or an option is not valid.
    StoreError
        If the store's inputs cannot be read from here.
    JobError
        If the cluster cannot be reached, or the store already has a job pending or running.

    Examples
    --------
    >>> import distglm  # doctest: +SKIP
    >>> job = distglm.submit("s3://bucket/rec.zarr", distglm.PopulationGLM(), address="http://head:8265")  # doctest: +SKIP
    >>> job.wait().state  # doctest: +SKIP
    'succeeded'
    """
    from .core.solvers import is_stochastic
    from .glm import check_link_portable, from_nemos
    from .scheduler import _check_history, _check_mask, _check_model

    path = _store_path(path)
    model = from_nemos(model)
    options = _check_fit_options(fit_options)
    if runtime_env is not None and not isinstance(runtime_env, dict):
        raise InputTypeError(f"runtime_env must be a dict or None; got {type(runtime_env).__name__}")
    if storage_options:
        env_vars = {**(runtime_env or {}).get("env_vars", {}), _STORAGE_OPTIONS_ENV: json.dumps(storage_options)}
        runtime_env = {**(runtime_env or {}), "env_vars": env_vars}
    try:
        info = store.open_inputs(path)
    except DistGLMError:
        raise
    except Exception as err:  # noqa: BLE001 - object-store backends raise their own errors
        raise _store_error(path, err) from None
    config = _check_model(model)
    # refused here, before the cluster is asked, as the job would refuse it
    recorded_test = store.read_test(path) if info.has_test and options.get("history") is not None else None
    _check_history(options.get("history"), info, options.get("stream"), is_stochastic(config.solver_name),
                   recorded_test, False)
    # A submitted job rebuilds the model from the JSON record in the store: links must be named.
    check_link_portable(model)
    if model.feature_mask is not None:
        _check_mask(model, info, store.read_mask_block(path, 0, info.n_neurons) if info.has_mask else None)
    holder = store.read_lease(path)
    if holder is not None and not holder["expired"]:
        raise JobError(f"{path} is in use by {store.describe_holder(holder)}; submit when it ends (or, if it is "
                       f"gone, run distglm unlock {path})")
    url = dashboard_url(address)
    cluster = _Cluster(url)

    previous = _read_record(path)
    if previous.get("state") in ("pending", "running"):
        still = Job(previous.get("id", "?"), path, url, cluster).status()
        if not still.finished:
            raise JobError(f"{path} already has job {still.id} {still.state}; wait for it or cancel it "
                           f"(distglm cancel {still.id}) before submitting another fit of this store")

    job_id = f"distglm-{uuid.uuid4().hex[:12]}"
    store.write_attrs(path, _GROUP, _new_record(job_id, url, model, options, info.n_neurons))
    entrypoint = f"python -m distglm.cli _run-job {shlex.quote(path)} --job-id {job_id}"
    try:
        cluster.call("submit_job", entrypoint=entrypoint, submission_id=job_id,
                     metadata={_PATH_METADATA: path}, runtime_env=runtime_env)
    except JobError as err:
        _record_state(path, "failed", error=str(err), finished_at=_now())
        raise
    return Job(job_id, path, url, cluster, _storage_options=storage_options)


def get_job(id_or_path, address: str | None = None, *, storage_options: dict | None = None) -> "Job":
    """The handle of a submitted job, by its id or by its store.

    Parameters
    ----------
    id_or_path : str or os.PathLike
        A job id (as :func:`submit` returned it), or the path or URL of the job's store. A
        string that names an existing local path or contains ``/`` or ``://`` is a store.
    address : str, optional
        The cluster's dashboard; by default, for a store the address recorded at submission,
        for an id as in :func:`dashboard_url`.
    storage_options : dict, optional
        fsspec options for a store at a URL, kept in memory by the returned :class:`Job`.

    Returns
    -------
    Job

    Raises
    ------
    JobError
        If the id is unknown to the cluster, the cluster cannot be reached for an id, or the
        store holds no job.

    Examples
    --------
    >>> import distglm  # doctest: +SKIP
    >>> distglm.get_job("s3://bucket/rec.zarr").status().state  # doctest: +SKIP
    'running'
    """
    if isinstance(id_or_path, os.PathLike):
        id_or_path = os.fspath(id_or_path)
    if not isinstance(id_or_path, str) or not id_or_path:
        raise InputTypeError(f"id_or_path must be a job id or a store path; got {id_or_path!r}")
    if "/" in id_or_path or os.sep in id_or_path or os.path.exists(id_or_path):
        path = _store_path(id_or_path)
        with store.using_storage_options(path, storage_options):
            record = _read_record(path)
        if not record.get("id"):
            raise JobError(f"{path} holds no job record: no fit was submitted for this store")
        return Job(record["id"], path, dashboard_url(address or record.get("address")),
                   _storage_options=storage_options)
    url = dashboard_url(address)
    cluster = _Cluster(url)
    info = cluster.job_info(id_or_path)
    if info is None:
        raise JobError(f"no job {id_or_path!r} on the Ray cluster at {url}")
    path = (info.metadata or {}).get(_PATH_METADATA)
    if not path:
        raise JobError(f"job {id_or_path!r} on the Ray cluster at {url} was not submitted by distglm")
    return Job(id_or_path, path, url, cluster, _storage_options=storage_options)


def _with_store(method):
    """Run a :class:`Job` method with the job's store opened with its storage options."""

    @functools.wraps(method)
    def opened(self, *args, **kwargs):
        with store.using_storage_options(self.path, self._storage_options):
            return method(self, *args, **kwargs)

    return opened


class Job:
    """A fit submitted to a Ray cluster (see :func:`submit` and :func:`get_job`).

    Attributes
    ----------
    id : str
    path : str
        The job's store.
    address : str
        The cluster's dashboard URL.

    Examples
    --------
    >>> job = Job("distglm-3f2a9c41d07e", "s3://bucket/rec.zarr", "http://head:8265")
    >>> job
    Job(id='distglm-3f2a9c41d07e', path='s3://bucket/rec.zarr', address='http://head:8265')
    """

    def __init__(self, id: str, path: str, address: str, _cluster: _Cluster | None = None,  # noqa: A002
                 _storage_options: dict | None = None):
        self.id, self.path, self.address = id, path, address
        self._cluster = _cluster
        self._storage_options = _storage_options

    def __repr__(self) -> str:
        return f"Job(id={self.id!r}, path={self.path!r}, address={self.address!r})"

    def _cluster_or_none(self) -> _Cluster | None:
        if self._cluster is None:
            try:
                self._cluster = _Cluster(self.address)
            except JobError:
                return None
        return self._cluster

    def _cluster_view(self) -> tuple[str | None, str | None]:
        """Ray's status of the job and its message.

        The status is None if the cluster cannot answer, and UNKNOWN if it has no such job (a
        cluster restarted at the same address has forgotten the jobs of the one before).
        """
        cluster = self._cluster_or_none()
        if cluster is None:
            return None, None
        try:
            info = cluster.job_info(self.id)
        except JobError:
            self._cluster = None
            return None, None
        if info is None:
            return "UNKNOWN", None
        return str(getattr(info.status, "value", info.status)), info.message

    @_with_store
    def status(self) -> JobStatus:
        """The job's state and progress, from its store record and the cluster.

        The record is the source of truth once the job has ended. While the record says the job
        is pending or running, the cluster's word decides whether it stopped (cancelled) or
        died (failed). Without a cluster to ask, the record is returned as it stands.

        Returns
        -------
        JobStatus

        Raises
        ------
        JobError
            If neither the store nor the cluster can be read.
        """
        # The cluster first: a job writes its end into the record before Ray sees it end, so a
        # record read after Ray reports the end holds that end.
        cluster_status, message = self._cluster_view()
        try:
            record = _read_record(self.path)
            store_error = None
        except DistGLMError as err:
            record, store_error = {}, err
        if record.get("id") not in (None, self.id):
            record = {}  # the store was submitted again since: its record is another job's
        if store_error is not None and cluster_status is None:
            raise JobError(f"job {self.id}: neither its store nor the cluster at {self.address} can be read "
                           f"({store_error})")
        state, error = record.get("state", "pending"), record.get("error")
        if state not in _FINAL and cluster_status is not None:
            if cluster_status == "RUNNING" and state == "pending":
                state = "running"
            elif cluster_status == "STOPPED":
                state = "cancelled"
            elif cluster_status == "FAILED":
                state, error = "failed", error or self._failure_reason(message)
            elif cluster_status == "SUCCEEDED":
                state, error = "failed", error or "the job ended without recording its result in the store"
            elif cluster_status == "UNKNOWN":
                state, error = "failed", error or (f"the Ray cluster at {self.address} has no job {self.id}: the "
                                                   f"cluster it ran on is gone, and the store records it {state}")
        if store_error is not None and state in ("failed", "pending", "running"):
            error = error or str(store_error)
        return JobStatus(
            id=self.id, path=self.path, state=state,
            neurons_total=record.get("neurons_total"), neurons_done=record.get("neurons_done"),
            neurons_converged=record.get("neurons_converged"), neurons_failed=record.get("neurons_failed"),
            error=error, cluster_status=cluster_status,
            submitted_at=record.get("submitted_at"), updated_at=record.get("updated_at"),
            started_at=record.get("started_at"), finished_at=record.get("finished_at"),
        )

    def logs(self) -> str:
        """The job's log as the cluster keeps it (the driver's output and its actors' lines).

        Raises
        ------
        JobError
            If the cluster cannot be reached or no longer has the job.
        """
        cluster = self._cluster_or_none()
        if cluster is None:
            raise JobError(f"cannot read the log of job {self.id}: the Ray cluster at {self.address} cannot be "
                           "reached")
        if cluster.job_info(self.id) is None:
            raise JobError(f"the Ray cluster at {self.address} has no job {self.id} (it keeps the logs of its own "
                           "jobs only)")
        return cluster.call("get_job_logs", self.id)

    def _failure_reason(self, message: str | None) -> str:
        """Why the job failed, when the store could not record it: the job's last ``error:`` line.

        Ray's message holds only the end of the job's output, where exit-time noise can follow
        that line; the whole output is read only when the message lacks it.
        """
        reason = _error_line(message or "")
        if reason is None and self._cluster is not None:
            try:
                reason = _error_line(self._cluster.call("get_job_logs", self.id))
            except JobError:
                reason = None
        if reason is None:
            lines = [line.strip() for line in (message or "").splitlines() if line.strip()]
            reason = lines[0][:500] if lines else "the job failed on the cluster"
        return reason

    def wait(self, timeout: float | None = None, poll_interval: float = 1.0) -> JobStatus:
        """Poll until the job ends; return its final status.

        Parameters
        ----------
        timeout : float, optional
            Seconds to wait at most; default no limit.
        poll_interval : float
            Seconds between polls.

        Returns
        -------
        JobStatus

        Raises
        ------
        JobTimeoutError
            If the job has not ended after ``timeout`` seconds (the job goes on).
        JobError
            If the cluster stops answering while the record says the job is not over.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        unreachable_since = None
        while True:
            status = self.status()
            if status.finished:
                return status
            now = time.monotonic()
            if status.cluster_status is None:
                unreachable_since = unreachable_since or now
                if now - unreachable_since > _UNREACHABLE_GRACE_S:
                    raise JobError(f"job {self.id}: the cluster at {self.address} has not answered for "
                                   f"{_UNREACHABLE_GRACE_S:.0f} s and the store records it {status.state}")
            else:
                unreachable_since = None
            if deadline is not None and now >= deadline:
                raise JobTimeoutError(f"job {self.id} is still {status.state} after {timeout} s "
                                      f"({status.neurons_done}/{status.neurons_total} neurons fitted)")
            time.sleep(poll_interval if deadline is None else max(0.0, min(poll_interval, deadline - now)))

    @_with_store
    def result(self):
        """The fitted :class:`~distglm.glm.PopulationGLM`, read from the store.

        Raises
        ------
        JobError
            If the job has not succeeded (still running, failed or cancelled).
        """
        from . import load_model

        status = self.status()
        if status.state != "succeeded":
            detail = f": {status.error}" if status.error else ""
            raise JobError(f"job {self.id} has no result: it is {status.state}{detail}")
        return load_model(self.path)

    @_with_store
    def cancel(self) -> JobStatus:
        """Stop the job on the cluster and record it cancelled; a finished job is left as it is.

        Returns
        -------
        JobStatus

        Raises
        ------
        JobError
            If the cluster cannot be reached, or does not stop the job in time.
        """
        status = self.status()
        if status.finished:
            return status
        cluster = self._cluster_or_none()
        if cluster is None:
            raise JobError(f"cannot cancel job {self.id}: the Ray cluster at {self.address} cannot be reached")
        cluster.call("stop_job", self.id)
        # Record the end only once the job's process is gone, so that it cannot write after us.
        deadline = time.monotonic() + _STOP_TIMEOUT_S
        while cluster.call("get_job_status", self.id).value not in ("STOPPED", "SUCCEEDED", "FAILED"):
            if time.monotonic() > deadline:
                raise JobError(f"job {self.id} did not stop within {_STOP_TIMEOUT_S:.0f} s")
            time.sleep(0.5)
        if _read_record(self.path).get("state") not in _FINAL:
            _record_state(self.path, "cancelled", finished_at=_now())
        return self.status()


def _error_line(output: str) -> str | None:
    """The reason in the output of a failed job: the last ``error:`` line its entrypoint printed."""
    reasons = [line.strip()[len("error:"):].strip() for line in output.splitlines()
               if line.strip().startswith("error:")]
    return reasons[-1] if reasons else None


# ---------------------------------------------------------------------------------------------
# The job's entrypoint, on the cluster


def run_job(path: str, job_id: str) -> int:
    """Run the fit of the job recorded in the store (the job's entrypoint on the cluster).

    Records the job running, its progress after every block, and its end. Returns 0 if every
    block was fitted, else 1; an error that stops the fit is recorded, then raised. The store
    is opened with the storage options :func:`submit` put in the job's environment, if any.

    Examples
    --------
    >>> run_job("s3://bucket/rec.zarr", "distglm-3f2a9c41d07e")  # doctest: +SKIP
    0
    """
    storage_options = json.loads(os.environ.get(_STORAGE_OPTIONS_ENV) or "null")
    with store.using_storage_options(path, storage_options):
        return _run_job(path, job_id, storage_options)


def _run_job(path: str, job_id: str, storage_options: dict | None) -> int:
    import jax

    from .glm import model_from_config
    from .scheduler import fit

    record = _read_record(path)
    if record.get("id") != job_id:
        raise JobError(f"{path} records job {record.get('id')!r}, not {job_id!r}: the store was submitted again")
    jax.config.update("jax_enable_x64", bool(record.get("x64")))
    _record_state(path, "running", started_at=_now())
    counts = {"neurons_done": 0, "neurons_converged": 0, "neurons_failed": 0}

    def on_block(summary: dict) -> None:
        counts["neurons_done"] += summary["n_neurons"]
        counts["neurons_converged"] += summary["n_converged"]
        counts["neurons_failed"] += len(summary["failures"])
        try:
            store.write_attrs(path, _GROUP, {**counts, "updated_at": _now()})
        except Exception as err:  # noqa: BLE001 - progress is best effort; it must not stop the fit
            print(f"warning: could not record progress in {path}: {one_line(err)}", file=sys.stderr)

    try:
        model = model_from_config(record["model"])
        report = fit(path, model, progress=False, on_block=on_block, storage_options=storage_options,
                     **_fit_options_of(record))
    except Exception as err:
        try:
            _record_state(path, "failed", error=one_line(err), finished_at=_now())
        except Exception as record_err:  # noqa: BLE001 - the fit's error matters more than this one
            print(f"warning: could not record the failure in {path}: {one_line(record_err)}", file=sys.stderr)
        raise
    error = None
    if report.failed_blocks:
        first = ", ".join(f"block {b}: {why}" for b, why in list(report.failed_blocks.items())[:3])
        error = f"{len(report.failed_blocks)} blocks failed on every try ({first})"
    _record_state(
        path, "failed" if error else "succeeded", error=error, finished_at=_now(),
        neurons_done=report.n_fitted, neurons_converged=report.n_converged, neurons_failed=report.n_failed,
        report={"seconds": report.seconds, "neurons_per_second": report.neurons_per_second,
                "n_blocks": report.n_blocks, "n_retries": report.n_retries,
                "failed_blocks": {str(b): why for b, why in report.failed_blocks.items()}},
    )
    return 1 if error else 0
