"""Distributed fits: plan blocks, dispatch them to Ray actors, retry, resume, report.

The store is the source of truth. ``fit`` checks everything it can before any actor starts
(the store's inputs, the model, the plan, every ``y`` value against the family's support),
creates every result array, then hands the blocks not yet marked done to a pool of actors.
A block whose actor dies or raises is retried on a live actor, up to ``max_retries`` times;
a dead actor is replaced. A fit rerun with ``resume=True`` skips the blocks marked done.
"""

from __future__ import annotations

import dataclasses
import itertools
import os
import time
from typing import Callable

import numpy as np

from . import plan as _plan
from . import store
from . import validation as val
from .errors import InputError, InputTypeError, StoreError

__all__ = ["FitReport", "fit"]


@dataclasses.dataclass
class FitReport:
    """What a distributed fit did.

    Attributes
    ----------
    path : str
    n_neurons : int
        Neurons in the population.
    n_fitted : int
        Neurons whose results are in the store (including blocks done by an earlier run).
    n_converged : int
        Of those, neurons that met the solver's tolerance (counted over this run's blocks
        and the stored results of skipped blocks).
    failures : dict
        Neuron index -> reason, for neurons that failed or did not converge.
    failed_blocks : dict
        Block id -> reason, for blocks that failed on every try (their neurons have no result).
    n_blocks, n_blocks_skipped, n_blocks_fitted : int
    n_retries : int
        Tries beyond the first, over all blocks.
    seconds : float
        Wall time of the call.
    neurons_per_second : float
        Neurons fitted in this run divided by ``seconds``.
    timings : dict
        Seconds summed over actors: ``read``, ``solve``, ``write``, and ``first_solve`` (the
        first block of each actor, which includes compilation); ``prepare`` in the driver.
    """

    path: str
    n_neurons: int
    n_fitted: int
    n_converged: int
    failures: dict
    failed_blocks: dict
    n_blocks: int
    n_blocks_skipped: int
    n_blocks_fitted: int
    n_retries: int
    seconds: float
    neurons_per_second: float
    timings: dict

    @property
    def n_failed(self) -> int:
        return len(self.failures)

    def __str__(self) -> str:
        lines = [
            f"distglm fit of {self.path}",
            f"  neurons: {self.n_neurons} ({self.n_fitted} fitted, {self.n_converged} converged, "
            f"{self.n_failed} failed or not converged)",
            f"  blocks: {self.n_blocks} ({self.n_blocks_fitted} fitted now, {self.n_blocks_skipped} already done, "
            f"{len(self.failed_blocks)} failed, {self.n_retries} retries)",
            f"  {self.seconds:.1f} s, {self.neurons_per_second:.1f} neurons/s",
        ]
        for bid, reason in list(self.failed_blocks.items())[:5]:
            lines.append(f"  block {bid} failed: {reason}")
        return "\n".join(lines)


def _scan_inputs(path: str, info: store.InputsInfo, observation) -> tuple[np.ndarray, np.ndarray | None]:
    """Read X, find NaN rows in X and y, and check every y against the family's support.

    Streams y one chunk at a time, so the driver never holds the whole of it.
    Returns ``(X without NaN rows, keep)``, ``keep`` None when no row is dropped.
    """
    X = store.read_X(path)
    keep = ~np.isnan(X).any(axis=1)
    is_float = np.issubdtype(info.y_dtype, np.floating)

    def check(start, stop, chunk):
        nonlocal keep
        if is_float:
            keep &= ~np.isnan(chunk).any(axis=1)
            if np.isinf(chunk).any():
                row, col = np.argwhere(np.isinf(chunk))[0]
                raise InputError(f"y must be finite outside NaN rows; got {chunk[row, col]} at sample {row}, "
                                 f"neuron {start + col}")
        val.check_support(observation, chunk, offset=start)

    store.scan_y(path, check)
    val.check_finite(X, keep)
    if not keep.any():
        raise InputError("every sample holds a NaN in X or y; nothing is left to fit")
    return X[keep], (None if keep.all() else keep)


def _check_model(model, info: store.InputsInfo, path: str):
    from .glm import PopulationGLM

    if not isinstance(model, PopulationGLM):
        raise InputTypeError(f"model must be a distglm PopulationGLM; got {type(model).__name__}")
    config = model._fit_config()
    if model.feature_mask is not None:
        mask = val.as_feature_mask(model.feature_mask, info.feature_groups, info.n_features, info.n_neurons)
        stored = store.read_mask_block(path, 0, info.n_neurons)
        if not np.array_equal(mask, stored):
            raise InputError(
                "the model's feature_mask differs from the store's inputs/feature_mask; write the mask "
                "with write_inputs(..., feature_mask=...) and leave the model's feature_mask None"
            )
    return config


def _connect(address: str | None, num_cpus: int | None):
    """Connect to Ray; returns True when this call started a local Ray it must stop."""
    import ray

    if ray.is_initialized():
        return False
    address = address or os.environ.get("RAY_ADDRESS")
    if address and address.startswith(("http://", "https://")):
        raise InputError(
            f"{address!r} is a Ray dashboard address, which distglm.submit uses; distglm.fit connects to the "
            "cluster itself: give its GCS address (HOST:6379) or a Ray client address (ray://HOST:10001)"
        )
    if address:
        try:
            ray.init(address=address, log_to_driver=False)
        except Exception as err:  # noqa: BLE001 - any failure to reach the cluster is reported as one
            raise InputError(f"cannot connect to the Ray cluster at {address!r}: {err}") from err
        return True
    ray.init(num_cpus=num_cpus or os.cpu_count(), include_dashboard=False, log_to_driver=False)
    return True


def fit(
    path,
    model,
    *,
    num_actors: int | None = None,
    block_size: int | None = None,
    address: str | None = None,
    resume: bool = True,
    progress: bool = True,
    max_retries: int = 3,
    on_block: Callable[[dict], None] | None = None,
) -> FitReport:
    """Fit ``model`` to the inputs of the store at ``path`` on Ray actors.

    Parameters
    ----------
    path : str or path-like
        A store written by :func:`distglm.write_inputs` (or a group with ``inputs/X`` and
        ``inputs/y`` written by hand).
    model : PopulationGLM
        The configuration to fit (its feature mask, if any, must equal the store's).
    num_actors : int, optional
        Actors to start; default one per CPU of the cluster, at most one per block.
    block_size : int, optional
        Neurons per block, a multiple of the store's neuron chunk; see :func:`distglm.plan.plan_blocks`.
    address : str, optional
        A Ray cluster's address (or ``RAY_ADDRESS``); default a local Ray started and stopped here.
        If Ray is already initialised in this process, that connection is used.
    resume : bool
        Keep results of an earlier run of the same fit and skip its finished blocks. With
        False, existing results are replaced.
    progress : bool
        Show a progress bar (neurons done, neurons/s, ETA).
    max_retries : int
        Extra tries for a block whose actor died or raised.
    on_block : callable, optional
        Called in the driver with each finished block's summary (used to record progress).

    Returns
    -------
    FitReport

    Examples
    --------
    >>> import numpy as np, tempfile, distglm  # doctest: +SKIP
    >>> X = np.random.normal(size=(1000, 5)); y = np.random.poisson(1.0, size=(1000, 64))  # doctest: +SKIP
    >>> path = distglm.write_inputs(tempfile.mkdtemp() + "/s.zarr", X, y)  # doctest: +SKIP
    >>> distglm.fit(path, distglm.PopulationGLM(), progress=False).n_fitted  # doctest: +SKIP
    64
    """
    import jax

    from .core import fit as core_fit
    from .glm import model_to_config

    t_start = time.perf_counter()
    path = os.fspath(path) if isinstance(path, os.PathLike) else path
    if not isinstance(path, str):
        raise InputTypeError(f"path must be a string or path-like; got {type(path).__name__}")
    for name, value in (("resume", resume), ("progress", progress)):
        if not isinstance(value, bool):
            raise InputTypeError(f"{name} must be True or False; got {value!r}")
    if isinstance(max_retries, bool) or not isinstance(max_retries, int) or max_retries < 0:
        raise InputError(f"max_retries must be a non-negative integer; got {max_retries!r}")
    if num_actors is not None and (isinstance(num_actors, bool) or not isinstance(num_actors, int) or num_actors < 1):
        raise InputError(f"num_actors must be a positive integer; got {num_actors!r}")

    info = store.open_inputs(path)
    config = _check_model(model, info, path)
    X, keep = _scan_inputs(path, info, config.observation)
    dtype = np.float64 if jax.config.jax_enable_x64 else np.float32
    X = X.astype(dtype)
    model_config = {**model_to_config(model), "feature_mask": None}

    fingerprint = {"model": model_config, "n_samples": int(X.shape[0]), "dtype": np.dtype(dtype).str}
    stored = store.read_fingerprint(path) if resume else None
    if block_size is None and stored and {k: stored.get(k) for k in fingerprint} == fingerprint:
        block_size = stored.get("block_size")
    blocks = _plan.plan_blocks(info.n_neurons, info.neuron_chunk, block_size, num_actors or 2)
    pad_to = _plan.padded_size(blocks)
    fingerprint["block_size"] = blocks[0].size if len(blocks) > 1 else pad_to
    block_strength = _strength_by_block(model, info.n_features, info.n_neurons, pad_to)
    spec = core_fit.state_spec(config, X.shape[0], info.n_features, pad_to, dtype, block_strength(blocks[0]))
    store.create_results(path, n_features=info.n_features, n_neurons=info.n_neurons,
                         neuron_chunk=info.neuron_chunk,
                         n_blocks=len(blocks), dtype=np.dtype(dtype), state_spec=spec,
                         fingerprint=fingerprint, overwrite=not resume)
    done = store.done_blocks(path) if resume else set()
    todo = [b for b in blocks if b.id not in done]
    t_prepared = time.perf_counter() - t_start

    summaries, failed_blocks, n_retries = [], {}, 0
    if todo:
        started = _connect(address, None)
        try:
            summaries, failed_blocks, n_retries = _dispatch(
                path, todo, X, keep, model_config, block_strength, pad_to, bool(jax.config.jax_enable_x64),
                num_actors, max_retries, progress, info.n_neurons,
                sum(b.size for b in blocks if b.id in done), on_block,
            )
        finally:
            if started:
                import ray

                ray.shutdown()

    return _report(path, info, blocks, done, summaries, failed_blocks, n_retries, t_start, t_prepared)


def _strength_by_block(model, n_features: int, n_neurons: int, pad_to: int) -> Callable:
    """``block -> strength arrays of shape (..., pad_to)`` for that block, validated once here.

    Only a strength given per neuron is held for the whole population (and sliced); a scalar
    (or per-group) strength is expanded block by block, so nothing here grows with n_neurons.
    """
    from .actor import slice_strength

    raw = model.regularizer_strength
    leaves = raw if isinstance(raw, tuple) else (raw,)
    per_neuron = model.regularizer.name not in ("UnRegularized", "GroupLasso") and any(
        raw is not None and np.ndim(leaf) > 0 for leaf in leaves
    )
    if per_neuron:
        full = model._expanded_strength(n_features, n_neurons)
        return lambda block: slice_strength(full, block.start, block.stop, pad_to)
    model._expanded_strength(n_features, 1)
    return lambda block: model._expanded_strength(n_features, pad_to)


def _dispatch(path, todo, X, keep, model_config, block_strength, pad_to, x64, num_actors, max_retries, progress,
              n_neurons, n_already, on_block):
    import ray
    from ray.exceptions import RayActorError, RayTaskError

    from .actor import ACTOR_ENV, BlockFitter

    if num_actors is None:
        num_actors = max(1, int(ray.cluster_resources().get("CPU", 1)))
    num_actors = min(num_actors, len(todo))
    remote_cls = ray.remote(num_cpus=1, max_restarts=0, max_task_retries=0,
                            runtime_env={"env_vars": ACTOR_ENV})(BlockFitter)
    refs = (ray.put(X), ray.put(keep))

    def new_actor():
        return remote_cls.remote(path, refs[0], refs[1], model_config, pad_to, x64)

    actors = {slot: new_actor() for slot in range(num_actors)}
    idle = list(actors)
    new_slots = itertools.count(num_actors)
    queue = list(todo)
    tries = {b.id: 0 for b in todo}
    in_flight = {}
    summaries, failed_blocks, n_retries = [], {}, 0

    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=n_neurons, initial=n_already, unit="neuron", desc="distglm fit", smoothing=0.1)
    try:
        while queue or in_flight:
            while queue and idle:
                slot = idle.pop()
                block = queue.pop(0)
                tries[block.id] += 1
                in_flight[actors[slot].fit.remote(block, block_strength(block))] = (slot, block)
            ready, _ = ray.wait(list(in_flight), num_returns=1)
            ref = ready[0]
            slot, block = in_flight.pop(ref)
            try:
                summary = ray.get(ref)
            except (RayActorError, RayTaskError) as err:
                if isinstance(err, RayActorError) or _actor_is_dead(actors[slot]):
                    # The block goes to a live actor. A replacement is started only where a
                    # CPU is free (or no actor is left): on a cluster that lost a node, a
                    # replacement would wait for a CPU the live actors hold until the end.
                    del actors[slot]
                    if not actors or ray.available_resources().get("CPU", 0) >= 1:
                        slot = next(new_slots)
                        actors[slot] = new_actor()
                        idle.append(slot)
                else:
                    idle.append(slot)
                if tries[block.id] <= max_retries:
                    n_retries += 1
                    queue.insert(0, block)
                else:
                    failed_blocks[block.id] = _short_reason(err)
                continue
            idle.append(slot)
            summaries.append(summary)
            if on_block is not None:
                on_block(summary)
            if bar is not None:
                bar.update(summary["n_neurons"])
    finally:
        if bar is not None:
            bar.close()
        for actor in actors.values():
            ray.kill(actor)
    return summaries, failed_blocks, n_retries


def _actor_is_dead(actor) -> bool:
    import ray

    try:
        ray.get(actor.pid.remote(), timeout=30)
        return False
    except Exception:  # noqa: BLE001 - any failure to answer means the actor is gone
        return True


def _short_reason(err: Exception) -> str:
    text = str(err).strip().splitlines()
    tail = [line for line in text if line.strip()][-1:] or [type(err).__name__]
    return f"{type(err).__name__}: {tail[0][:300]}"


def _report(path, info, blocks, done, summaries, failed_blocks, n_retries, t_start, t_prepared) -> FitReport:
    results = None
    fitted_ids = {s["block"] for s in summaries} | set(done)
    n_fitted = sum(b.size for b in blocks if b.id in fitted_ids)
    failures = {}
    for s in summaries:
        failures.update(s["failures"])
    n_converged = sum(s["n_converged"] for s in summaries)
    skipped = [b for b in blocks if b.id in done]
    if skipped:
        from .core.fit import STATUS_OK, STATUS_REASONS

        for b in skipped:
            results = store.read_results(path, b.start, b.stop)
            n_converged += int(np.sum(results["converged"]))
            for i, s in enumerate(results["status"]):
                if s != STATUS_OK:
                    failures[b.start + i] = STATUS_REASONS.get(int(s), f"status {int(s)}")
    seconds = time.perf_counter() - t_start
    n_now = sum(s["n_neurons"] for s in summaries)
    timings = {
        "prepare": t_prepared,
        "read": sum(s["read_s"] for s in summaries),
        "solve": sum(s["solve_s"] for s in summaries if not s["first_block"]),
        "first_solve": sum(s["solve_s"] for s in summaries if s["first_block"]),
        "write": sum(s["write_s"] for s in summaries),
    }
    return FitReport(
        path=path, n_neurons=info.n_neurons, n_fitted=n_fitted, n_converged=n_converged,
        failures=dict(sorted(failures.items())), failed_blocks=failed_blocks, n_blocks=len(blocks),
        n_blocks_skipped=len(skipped), n_blocks_fitted=len(summaries), n_retries=n_retries,
        seconds=seconds, neurons_per_second=n_now / seconds if seconds > 0 else 0.0, timings=timings,
    )


def load_fitted(path):
    """A fitted ``PopulationGLM`` from the results in the store at ``path``.

    Raises :class:`StoreError` if the store holds no complete fit.
    """
    from .glm import model_from_config

    path = os.fspath(path) if isinstance(path, os.PathLike) else path
    info = store.open_inputs(path)
    fingerprint = store.read_fingerprint(path)
    if fingerprint is None:
        raise StoreError(f"{path} holds no fit results; run distglm.fit first")
    n_blocks = len(_plan.plan_blocks(info.n_neurons, info.neuron_chunk, fingerprint["block_size"]))
    missing = sorted(set(range(n_blocks)) - store.done_blocks(path))
    if missing:
        raise StoreError(
            f"{path} holds an unfinished fit: blocks {missing[:10]}{'...' if len(missing) > 10 else ''} are not done; "
            "rerun distglm.fit(path, model) to finish it"
        )
    model = model_from_config(fingerprint["model"])
    if info.has_mask:
        mask = store.read_mask_block(path, 0, info.n_neurons)
        if info.feature_groups is None:
            model.feature_mask = mask
        else:
            starts = np.cumsum([0] + [size for _, size in info.feature_groups])
            model.feature_mask = {name: mask[s] for (name, _), s in zip(info.feature_groups, starts)}
    model._set_fitted(info.feature_groups, store.read_results(path), store.read_state(path))
    return model
