"""Distributed fits: plan blocks, dispatch them to Ray actors, retry, resume, report.

The store is the source of truth. ``fit`` checks everything it can before any actor starts
(the store's inputs, the model, the plan, every ``y`` value against the family's support),
creates every result array, then hands the blocks not yet marked done to a pool of actors.
A block whose actor dies or raises is retried on a live actor, up to ``max_retries`` times;
a dead actor is replaced. A fit rerun with ``resume=True`` skips the blocks marked done.
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import hashlib
import itertools
import json
import logging
import os
import sys
import time
import warnings
from typing import Callable

import numpy as np

from . import plan as _plan
from . import store
from . import validation as val
from .actor import FitSpec
from .connect import connect_ray
from .cv import SplitRecord, store_folds
from .errors import ClusterError, InputError, InputTypeError, StoreError, UnsupportedOptionError
from .logs import enabled_level

__all__ = ["DEFAULT_BLOCK_TIMEOUT_S", "STREAM_ABOVE_BYTES", "FitReport", "fit", "load_fitted", "stored_fingerprint"]

#: Bytes of X and two blocks of y above which actors stream the samples by default (see ``fit``).
STREAM_ABOVE_BYTES = 2**30

_log = logging.getLogger(__name__)

#: Seconds a block may run at least before its actor is taken for stuck (see ``fit``).
DEFAULT_BLOCK_TIMEOUT_S = _plan.MIN_BLOCK_TIMEOUT_S
# How long blocks wait for an actor to start when no actor runs at all.
_ACTOR_START_TIMEOUT_S = 300.0
# The dispatch loop wakes at least this often (to check the lease and deadlines).
_POLL_S = 5.0
# Blocks an actor holds at once: one solved while the other is read or written.
_PIPELINE = 2
# How long the end of a fit waits for the actors it killed to be gone.
_KILL_WAIT_S = 60.0
_OLDER = ("the results were written by an older distglm, which recorded neither the identity of their inputs nor "
          "checkable done markers; refit with resume=False (distglm fit PATH --no-resume)")
_X64_HINT = "; fit in float64 (jax.config.update('jax_enable_x64', True)) or rescale the data"


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
        Neuron id -> reason, for neurons that failed or did not converge; the ids are those the
        store records (``write_inputs(neuron_ids=...)`` or a pynapple y's column labels), by
        default the neurons' positions.
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
    memory_estimate : MemoryEstimate or None
        The planner's estimate of an actor's peak memory with the plan's blocks
        (:func:`distglm.plan.estimate_block_memory`); None when nothing was left to fit or the
        actors stream their samples (their memory is then bounded by their chunk cache), except
        in a history fit: one streamed chunk of the full design, and the chunk cache.
    memory_per_actor : int or None
        The budget in bytes the blocks were sized for (``memory_per_actor``, or the cluster's
        memory per CPU on its tightest node); None when nothing was left to fit.
    heldout : dict or None
        For a fit with ``test_samples``: NeMoS score type -> each neuron's held-out score, array
        of shape (n_neurons,) (NaN for a neuron without results).
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
    memory_estimate: _plan.MemoryEstimate | None = None
    memory_per_actor: int | None = None
    heldout: dict | None = None

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
        if self.memory_estimate is not None:
            lines.append(f"  memory per actor: about {self.memory_estimate} of {self.memory_per_actor / 1e9:.2f} GB")
        for bid, reason in list(self.failed_blocks.items())[:5]:
            lines.append(f"  block {bid} failed: {reason}")
        if self.heldout is not None:
            medians = ", ".join(f"{score_type} {np.nanmedian(values):.4g}" if np.isfinite(values).any()
                                else f"{score_type} none" for score_type, values in self.heldout.items())
            lines.append(f"  held-out score, median over neurons: {medians}")
        return "\n".join(lines)


def _scan_inputs(path: str, info: store.InputsInfo, observation, dtype) -> tuple:
    """Read and check every input value, one stored chunk at a time; return ``(keep, mask, digest, y_ok,
    counts_dtype)``.

    X and y are streamed (the driver never holds either whole, nor memory that grows with the
    recording beyond one flag per sample); the mask is read whole. Checks: the mask is 0/1; X
    and y are finite outside the NaN rows, within the range of the fit's float ``dtype``, and y
    is in the family's support; a corrupted chunk is named. ``keep`` (n_samples,) flags the rows
    without NaN, ``mask`` is None without a stored mask, ``digest`` identifies the inputs'
    content (it changes with any value of X, y or the mask), and ``y_ok`` (n_samples,) flags
    the rows without NaN in y (history windows need those alone). ``counts_dtype`` is the
    narrowest of ``core.fit.NARROW_COUNTS`` that holds every stored y, for integer y (None for
    float y or counts beyond them): the actors hold blocks of y in it.
    """
    digest = hashlib.blake2b(digest_size=16)
    digest.update(json.dumps([info.n_samples, info.n_features, info.n_neurons, info.X_dtype.str,
                              info.y_dtype.str, info.feature_groups, info.has_mask]).encode())
    if info.has_test:
        # the held-out samples the inputs record are part of what was fitted
        digest.update(b"test" + np.packbits(store.read_test(path)).tobytes())
    keep = np.ones(info.n_samples, dtype=bool)
    y_ok = np.ones(info.n_samples, dtype=bool)
    limit = np.finfo(dtype).max
    # X's non-finite or out-of-range values, checked once the NaN rows of y are known
    suspects = []

    def scan_X(row, X_rows):
        digest.update(np.ascontiguousarray(X_rows).tobytes())
        keep[row:row + len(X_rows)] = ~np.isnan(X_rows).any(axis=1)
        with np.errstate(invalid="ignore"):
            bad = np.isinf(X_rows) | (np.abs(X_rows) > limit)
        for r in np.flatnonzero(bad.any(axis=1)):
            c = int(np.argmax(bad[r]))
            suspects.append((row + r, c, X_rows[r, c]))

    store.scan_X(path, scan_X)
    mask = None
    if info.has_mask:
        mask = store.read_mask_block(path, 0, info.n_neurons)
        bad = ~((mask == 0) | (mask == 1))
        if bad.any():
            feature, neuron = np.argwhere(bad)[0]
            raise InputError(f"{path}: inputs/feature_mask must hold only 0 and 1; got {mask[feature, neuron]} "
                             f"at feature {feature}, neuron {neuron} ({int(bad.sum())} such entries); write the "
                             "mask again with distglm.write_inputs(..., feature_mask=...)")
        digest.update(mask.tobytes())
    is_float = np.issubdtype(info.y_dtype, np.floating)
    y_range = [0, 0]

    def check(start, stop, chunk, row):
        digest.update(chunk.tobytes())
        if is_float:
            y_ok[row:row + len(chunk)] &= ~np.isnan(chunk).any(axis=1)
            beyond = np.isinf(chunk) | (np.abs(np.nan_to_num(chunk)) > limit)
            if beyond.any():
                r, col = np.argwhere(beyond)[0]
                raise InputError(f"{path}: inputs/y must be finite outside NaN rows and within the range of "
                                 f"{np.dtype(dtype).name}; got {chunk[r, col]} at sample {row + r}, neuron "
                                 f"{start + col}" + _X64_HINT * (dtype == np.float32))
        elif chunk.size:
            y_range[0], y_range[1] = min(y_range[0], int(chunk.min())), max(y_range[1], int(chunk.max()))
        val.check_support(observation, chunk, offset=start, row_offset=row)

    store.scan_y(path, check, by_rows=True)
    keep &= y_ok
    for row, col, value in suspects:
        if keep[row]:
            if np.isinf(value):
                raise InputError(f"X must be finite outside rows holding NaN (those rows are dropped); got {value} "
                                 f"at row {row}, column {col}")
            raise InputError(f"{path}: inputs/X must lie within the range of {np.dtype(dtype).name}; got {value} "
                             f"at sample {row}, feature {col}" + _X64_HINT * (dtype == np.float32))
    if not keep.any():
        raise InputError("every sample holds a NaN in X or y; nothing is left to fit")
    from .core.fit import narrow_counts_dtype

    narrow = None if is_float else narrow_counts_dtype(*y_range)
    return keep, mask, digest.hexdigest(), y_ok, None if narrow is None else narrow.name


def _checked_inputs(path: str, info: store.InputsInfo, observation, dtype) -> tuple:
    """``_scan_inputs``, or its outcome kept from an earlier fit of the same unchanged input files
    (``input_scans``), for the same family and float type."""
    from . import input_scans
    from .core.observations import OBSERVATION_MODELS

    began = time.time_ns()
    # a family of distglm's own: its support is what its name says
    known = type(observation) in OBSERVATION_MODELS.values()
    key = (repr(observation), np.dtype(dtype).str)
    sig = input_scans.signature(path) if known else None
    kept = input_scans.load(path, key, sig)
    if kept is not None:
        _log.info("%s: inputs unchanged since an earlier fit checked them; not read again", path)
        mask = store.read_mask_block(path, 0, info.n_neurons) if info.has_mask else None
        return kept["keep"], mask, kept["digest"], kept["y_ok"], kept["counts_dtype"]
    found = _scan_inputs(path, info, observation, dtype)
    keep, _, digest, y_ok, counts_dtype = found
    if sig is not None and input_scans.signature(path) == sig:
        input_scans.save(path, key, sig, began, keep, y_ok, digest, counts_dtype)
    return found


def _check_model(model):
    from .glm import PopulationGLM, PopulationGLMCV

    if not isinstance(model, PopulationGLM):
        raise InputTypeError(f"model must be a distglm PopulationGLM (from_nemos converts a NeMoS model); got "
                             f"{type(model).__name__}")
    if isinstance(model, PopulationGLMCV):
        model._check_regularizer()
        if not hasattr(model.cv, "split"):
            # a splitter is recorded once it has split the store's samples
            model._cv_config()
    return model._fit_config()


def _is_cv(model) -> bool:
    from .glm import PopulationGLMCV

    return isinstance(model, PopulationGLMCV)


def _training_samples(path: str, train: np.ndarray, dtype):
    """The store's training samples as an actor reads them (``actor.SampleReader``), for the driver's reads."""
    from .actor import SampleReader

    return SampleReader(store.InputsReader(path), FitSpec(path, {}, 1, dtype == np.float64,
                                                          dropped_rows=np.flatnonzero(~train),
                                                          n_samples=int(train.sum())), dtype)


def _cv_folds(model, data, train: np.ndarray) -> np.ndarray:
    """The folds the actors cross-validate (``cv.store_folds``): a splitter splits the training samples' X."""
    X = np.asarray(data.design(1))[:data.n_samples] if hasattr(model.cv, "split") else None
    return store_folds(model.cv, train, X)


def _cv_grid(model, config, info: store.InputsInfo, data) -> np.ndarray:
    """The candidate strengths of a ``PopulationGLMCV`` on the store's training samples, largest first.

    The default grid starts at the largest strength of any neuron (a population maximum), so it
    is computed here from all the neurons, a stored chunk of neurons at a time, before any
    block is dispatched: every block cross-validates the same candidates. ``data`` reads the
    training samples (:func:`_training_samples`).
    """
    from .core import cv as core_cv

    def max_strengths(ratio):
        X = np.asarray(data.design(1))[:data.n_samples]
        tops = []
        for start in range(0, info.n_neurons, info.neuron_chunk):
            stop = min(start + info.neuron_chunk, info.n_neurons)
            y = data.responses(start, stop, data.n_samples, stop - start)
            tops.append(core_cv.max_strength(config, X, y, data.reader.mask_block(start, stop), ratio=ratio))
        return np.concatenate(tops)

    return model._grid(max_strengths)


def _custom_link(model):
    """The model's inverse link if it is a custom callable, checked to travel to Ray actors; else None."""
    link = model._link
    if isinstance(link, str):
        return None
    from ray import cloudpickle

    try:
        cloudpickle.loads(cloudpickle.dumps(link))
    except Exception as err:  # noqa: BLE001 - whatever stops serialisation is the user's to fix
        name = getattr(link, "__name__", type(link).__name__)
        raise InputError(
            f"the custom inverse link {name!r} cannot be sent to Ray actors ({type(err).__name__}: {err}); define it "
            "as a plain function (at module level of a module the cluster's nodes can import, e.g. shipped with "
            "runtime_env={'py_modules': [...]}) that holds no locks, files or open connections, or use a named "
            "link such as 'jax.scipy.stats.norm.cdf'"
        ) from None
    return link


def _check_mask(model, info: store.InputsInfo, stored) -> None:
    if model.feature_mask is None:
        return
    mask = val.as_feature_mask(model.feature_mask, info.feature_groups, info.n_features, info.n_neurons)
    if stored is None:
        stored = np.ones((info.n_features, info.n_neurons))
    if not np.array_equal(mask, stored):
        raise InputError(
            "the model's feature_mask differs from the store's inputs/feature_mask; write the mask "
            "with write_inputs(..., feature_mask=...) and leave the model's feature_mask None"
        )


def stored_fingerprint(path: str, name: str | None = None) -> dict | None:
    """The fingerprint of a fit's results (the unnamed fit, or the fit ``name``), checked to describe a
    fit; None without results."""
    fingerprint = store.read_fingerprint(path, name)
    if fingerprint is None:
        return None
    expected = {"model": dict, "n_samples": int, "dtype": str, "block_size": int}
    problems = [f"{key!r} missing" if key not in fingerprint else f"{key!r} is not a {kind.__name__}"
                for key, kind in expected.items() if not isinstance(fingerprint.get(key), kind)]
    if problems:
        raise StoreError(f"{path}: the results' fingerprint does not describe a distglm fit ({'; '.join(problems)}); "
                         "they were written by another version or edited by hand: refit with resume=False "
                         "(distglm fit PATH --no-resume)")
    return fingerprint


def check_fit_options(**options) -> dict:
    """Check the options of :func:`fit` that are given (also for fits submitted as jobs)."""
    for name in ("resume", "progress"):
        if name in options and not isinstance(options[name], bool):
            raise InputTypeError(f"{name} must be True or False; got {options[name]!r}")
    retries = options.get("max_retries", 0)
    if isinstance(retries, bool) or not isinstance(retries, int) or retries < 0:
        raise InputError(f"max_retries must be a non-negative integer; got {retries!r}")
    for name in ("num_actors", "block_size", "memory_per_actor"):
        value = options.get(name)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise InputError(f"{name} must be a positive integer or None; got {value!r}")
    limit = options.get("block_timeout")
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, (int, float)) or not limit > 0):
        raise InputError(f"block_timeout must be a positive number of seconds or None; got {limit!r}")
    if options.get("stream") is not None and not isinstance(options["stream"], bool):
        raise InputTypeError(f"stream must be True, False or None; got {options['stream']!r}")
    if options.get("on_block") is not None and not callable(options["on_block"]):
        raise InputTypeError(f"on_block must be callable; got {type(options['on_block']).__name__}")
    return options


@store.with_storage_options
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
    connect_timeout: float | None = None,
    block_timeout: float | None = None,
    name: str | None = None,
    test_samples=None,
    standard_errors: bool = False,
    stream: bool | None = None,
    history=None,
    memory_per_actor: int | None = None,
    storage_options: dict | None = None,
) -> FitReport:
    """Fit ``model`` to the inputs of the store at ``path`` on Ray actors.

    Everything is checked before the store is touched: the arguments, the model, every input
    value (the mask, X, a stream of y) and the connection to the cluster. Then the fit takes the
    store's lease (one writer at a time), creates or keeps the results, and hands the blocks
    not yet done to actors. An error before that point leaves the store as it was.

    Parameters
    ----------
    path : str or path-like
        A store written by :func:`distglm.write_inputs` (or a group with ``inputs/X`` and
        ``inputs/y`` written by hand).
    model : PopulationGLM, or a NeMoS 0.2.8 GLM or PopulationGLM
        The configuration to fit (its feature mask, if any, must equal the store's); a NeMoS
        model is converted with :func:`distglm.glm.from_nemos`. A ``PopulationGLMCV`` is
        cross-validated block by block and each neuron refitted at its selected strength, as
        ``PopulationGLMCV.fit`` does in memory (never streamed). ``cv`` a number of folds or one
        label per stored sample defines folds on the stored samples; a splitter (``KFold``,
        ``TimeSeriesSplit``, any object with ``split``) is evaluated by the driver on the training
        samples (without NaN, not held out), given their X alone, and its folds are sent to the
        actors (:func:`distglm.cv.store_folds`); the results' configuration names the splitter.
        With ``per_neuron=False``, every block's path is written
        before the driver selects the shared strength and the blocks are refitted at it.
    num_actors : int, optional
        Actors to start; default one per CPU of the cluster, at most one per block. More
        actors than the cluster has CPUs are capped to its CPUs, with a warning.
    block_size : int, optional
        Neurons per block, a multiple of the store's neuron chunk; see :func:`distglm.plan.plan_blocks`.
        By default the plan's block, made smaller (whole chunks at a time) until an actor's
        estimated peak memory fits ``memory_per_actor``.
    address : str, optional
        A Ray cluster's address, ``HOST:6379`` or ``ray://HOST:10001`` (or ``RAY_ADDRESS``);
        default a local Ray started and stopped here. If Ray is already initialised in this
        process, that connection is used.
    resume : bool
        Keep results of an earlier run of the same fit and skip its finished blocks. Results of
        another fit, or of inputs that changed since, are refused. With False, existing
        results are replaced.
    progress : bool
        Show a progress bar (neurons done, neurons/s, ETA).
    max_retries : int
        Extra tries for a block whose actor died or was stuck. A block whose actor raised
        (a corrupted chunk, say) fails at once: trying it again would fail the same way.
    on_block : callable, optional
        Called in the driver with each finished block's summary (used to record progress); for
        a shared strength selected by cross-validation, with each refitted block's.
    connect_timeout : float, optional
        Seconds to wait for the cluster at ``address``; default ``DISTGLM_CONNECT_TIMEOUT``
        or 30.
    block_timeout : float, optional
        Seconds a block may run at least before its actor is taken for stuck, killed and the
        block retried elsewhere; the limit is the larger of this and 10 times the slowest block
        seen so far in the fit (an actor's first block, which compiles, is not counted). A
        block queued behind another on its actor gets twice the limit. None (default): the
        blocks' work decides, :func:`distglm.plan.block_timeout` (at least 900 s, more for long
        or wide recordings and for cross-validation) until a block has finished, then 10 times
        the slowest block, at least 900 s.
    name : str, optional
        The fit's name: its results go to ``results/<name>/``, beside the store's other fits of
        the same inputs, which neither ``resume`` nor ``resume=False`` touches (load it with
        ``load_model(path, name=name)``). None: the store's unnamed fit, in ``results/``.
    test_samples : bool array of shape (n_samples,), slice or pynapple IntervalSet, optional
        Samples held out of training; by default those the inputs record
        (``write_inputs(test=...)``), and a ``test_samples`` that differs from those is refused
        (the recorded test set is the data's, kept out of every fit). An IntervalSet selects
        the samples whose time (the inputs' ``time`` coordinate) lies in one of its intervals,
        bounds included as in pynapple's ``restrict``; a store that records no time (written
        without ``time=`` or pynapple time series) refuses intervals. The actors score each
        neuron on them (every NeMoS score
        type, as ``PopulationGLM.score`` with a mean over samples per neuron) and store the
        scores with its results: ``FitReport.heldout``, ``distglm inspect`` and the loaded
        model's ``heldout_scores_`` show them. Samples with NaN are dropped from both sets.
    standard_errors : bool
        The actors also compute each neuron's standard errors (as
        ``PopulationGLM.compute_standard_errors`` on the training samples) and store them: the
        loaded model's ``coef_se_`` and ``intercept_se_``. Not with a streamed fit.
    stream : bool, optional
        Whether actors stream X and y from the store a chunk of samples at a time (memory
        bounded whatever the recording's length; every pass over the data reads the chunks
        that do not fit in the actor's cache) rather than hold X and a block of y in memory.
        Default: stream when X and two blocks of y would take more than
        ``STREAM_ABOVE_BYTES`` (1 GiB) in an actor (blocks of integer counts are held as
        uint8 or uint16 when every count fits). SVRG and ProxSVRG draw rows at random
        from all the samples and never stream (``stream=True`` with them is refused).
    memory_per_actor : int, optional
        Bytes an actor may use; default the memory Ray schedules per CPU on the cluster's
        tightest node. The planner estimates an actor's peak
        (:func:`distglm.plan.estimate_block_memory`) and sizes the blocks to fit; a fit whose
        smallest block (one neuron chunk) does not fit is refused before any actor starts, and
        an explicit ``block_size`` over the budget gets a warning.
    storage_options : dict, optional
        fsspec options for a store at a URL (``{"key": ..., "secret": ..., "client_kwargs":
        {"endpoint_url": ...}}`` for S3), used by this process and sent to the actors in
        memory; never written into the store.
    history : HistorySpec, optional
        Spike-history and coupling features (:class:`distglm.history.HistorySpec`), built by
        the actors from the stored y a chunk of samples at a time, never whole: the fitted
        design is ``[X, history features]`` with ``n_features + n_neurons * K`` columns, its
        mask the stored mask over the coupling mask repeated for each kernel. The spec is
        recorded with the fit. The first ``window_size`` samples, and every sample whose
        window holds a dropped sample (NaN in X or y), are dropped. Always streamed; not with
        SVRG, ``test_samples``, ``standard_errors`` or X stored as feature groups.

    Returns
    -------
    FitReport

    Raises
    ------
    StoreError
        If the store is unreadable or damaged, another process holds its lease, or it holds
        results of another fit or of other inputs while ``resume`` is True.
    PlanError
        If not even a block of one neuron chunk fits ``memory_per_actor``.
    ClusterError
        If the cluster cannot be reached, or no actor can start on it.

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
    from .core.solvers import is_stochastic
    from .glm import from_nemos, model_to_config

    t_start = time.perf_counter()
    path = os.fspath(path) if isinstance(path, os.PathLike) else path
    if not isinstance(path, str):
        raise InputTypeError(f"path must be a string or path-like; got {type(path).__name__}")
    check_fit_options(resume=resume, progress=progress, max_retries=max_retries, num_actors=num_actors,
                      block_size=block_size, block_timeout=block_timeout, on_block=on_block, stream=stream,
                      memory_per_actor=memory_per_actor)
    store.results_group(name)
    if not isinstance(standard_errors, bool):
        raise InputTypeError(f"standard_errors must be True or False; got {standard_errors!r}")

    info = store.open_inputs(path)
    model = from_nemos(model)
    test = _test_mask(path, test_samples, info)
    config = _check_model(model)
    stochastic = is_stochastic(config.solver_name)
    if stream and stochastic:
        raise UnsupportedOptionError(f"solver {config.solver_name!r} samples rows at random from all the samples and "
                                     "cannot fit streamed samples; pass stream=False or a full-batch solver")
    inverse_link = _custom_link(model)
    dtype = np.float64 if jax.config.jax_enable_x64 else np.float32
    history = _check_history(history, info, stream, stochastic, test, standard_errors)
    if _is_cv(model) and (stream or history is not None):
        raise UnsupportedOptionError(
            "a PopulationGLMCV fits each fold's samples in memory, and cannot stream them"
            + (": pass stream=False (or leave it out)" if history is None else
               " nor build history features, which only streaming actors do: fit the store with a PopulationGLM "
               "at a strength cross-validated in memory"))
    # Where Ray already runs, the actors start (each a process: Python, JAX, distglm) while the driver
    # checks the inputs, and are given the fit's spec once it is known.
    early = _start_actors_early(num_actors)
    started = False
    try:
        keep, mask, digest, y_ok, counts_dtype = _checked_inputs(path, info, config.observation, dtype)
        _check_mask(model, info, mask)
        n_features = info.n_features
        if history is not None:
            keep = _history_keep(keep, y_ok, history.window_size)
            n_features += info.n_neurons * history.n_basis_funcs
            if not keep.any():
                raise InputError(f"no sample has a whole history window of {history.window_size} samples without NaN "
                                 f"among the {info.n_samples} stored")
        n_kept = int(keep.sum())
        # the model's configuration, set once a splitter (recorded by name) has made its folds
        fingerprint = {"model": None, "n_samples": n_kept, "dtype": np.dtype(dtype).str,
                       "inputs": {"generation": info.generation, "digest": digest}}
        if history is not None:
            fingerprint["history"] = history.to_json()
        # training samples: kept and not held out; held-out ones as stored sample indices
        train, test_rows = keep, None
        if test is not None:
            train, test_rows = keep & ~test, np.flatnonzero(keep & test)
            if not train.any() or not test_rows.size:
                raise InputError(f"test_samples holds out {test_rows.size} of the {n_kept} samples without NaN; both "
                                 "the training and the held-out samples must be non-empty")
            fingerprint["test_samples"] = hashlib.sha256(np.packbits(test).tobytes()).hexdigest()
        n_train = int(train.sum())
        if standard_errors:
            fingerprint["standard_errors"] = True
        folds = grid = None
        recorded = model
        if _is_cv(model):
            training = _training_samples(path, train, dtype)
            folds = _cv_folds(model, training, train)
            if hasattr(model.cv, "split"):
                # the configuration names the splitter; the fingerprint identifies the folds it made
                recorded = type(model)(**{**model.get_params(), "cv": SplitRecord(repr(model.cv), _n_folds(folds))})
                fingerprint["cv_folds"] = hashlib.sha256(np.ascontiguousarray(folds).tobytes()).hexdigest()
            grid = _cv_grid(model, config, info, training)
            fingerprint["cv_grid"] = grid.tolist()
            del training
        model_config = fingerprint["model"] = {**model_to_config(recorded), "feature_mask": None}

        done = set()
        stored = stored_fingerprint(path, name) if resume else None
        if stored is not None:
            _check_resumable(path, stored, fingerprint, block_size)
            block_size = stored["block_size"]
            done = store.done_blocks(path, name)
            blocks = _plan.plan_blocks(info.n_neurons, info.neuron_chunk, block_size)
            if all(b.id in done for b in blocks):
                # Nothing to do: no cluster is needed and the store is not written.
                return _report(path, info, blocks, done, [], {}, 0, t_start, time.perf_counter() - t_start, name)

        started = connect_ray(address, timeout=connect_timeout)
        import ray

        cpus = int(ray.cluster_resources().get("CPU", 0))
        if num_actors is not None and cpus and num_actors > cpus:
            warnings.warn(f"num_actors={num_actors} but the cluster has {cpus} CPUs, so only {cpus} actors can run; "
                          f"using {cpus}", UserWarning, stacklevel=2)
            num_actors = cpus
        actors = num_actors or max(cpus, 1)
        blocks = _plan.plan_blocks(info.n_neurons, info.neuron_chunk, block_size, actors)
        pad_to = _plan.padded_size(blocks)
        block_strength = _strength_by_block(model, n_features, info.n_neurons, pad_to)
        spec = core_fit.state_spec(config, n_train, n_features, pad_to, dtype, block_strength(blocks[0]))
        budget = memory_per_actor or _memory_per_cpu(ray)
        streams = history is not None or (not stochastic and grid is None
                                          and _streams(stream, n_train, n_features, pad_to, dtype, counts_dtype))
        estimate = None
        if not streams:
            # the estimate describes an actor that holds its samples; a streaming actor's memory
            # is bounded by its chunk cache whatever the block
            # a cross-validated block fits float copies of its folds; a plain one holds the counts
            memory = _memory_model(config, n_train, n_features, dtype, mask, spec, 0 if grid is None else len(grid),
                                   counts_dtype=counts_dtype if grid is None else None)
            largest = _plan.largest_block(budget, info.n_neurons, info.neuron_chunk, **memory)
            if block_size is None and largest < pad_to:
                blocks = _plan.plan_blocks(info.n_neurons, info.neuron_chunk, largest, actors)
                pad_to = _plan.padded_size(blocks)
                block_strength = _strength_by_block(model, n_features, info.n_neurons, pad_to)
                spec = core_fit.state_spec(config, n_train, n_features, pad_to, dtype, block_strength(blocks[0]))
            elif largest < pad_to:
                warnings.warn(f"blocks of {pad_to} neurons need about {_estimate(memory, pad_to)} per actor, more "
                              f"than memory_per_actor={budget}; blocks of {largest} would fit", UserWarning,
                              stacklevel=2)
            estimate = _estimate(memory, pad_to)
        cache_bytes = 0
        if streams:
            # a streaming actor keeps what its budget leaves of the samples between passes
            memory = _memory_model(config, n_train, n_features, dtype, mask, spec)
            del memory["n_samples"], memory["n_features"]
            cache_bytes = _plan.stream_cache_bytes(budget, info.n_samples, n_features,
                                                   core_fit.bucket_neurons(pad_to),
                                                   info.row_chunk or info.n_samples, **memory)
        if streams and history is not None:
            estimate = _streamed_history_estimate(config, info, n_features, dtype, spec, pad_to, cache_bytes)
            if estimate.total > budget:
                warnings.warn(f"a history fit's actor needs about {estimate}, more than memory_per_actor={budget} "
                              f"(its chunks of samples hold all {n_features} features)", UserWarning, stacklevel=2)
        # a block size the planner accepts again: a single block's size rounded up to whole chunks
        fingerprint["block_size"] = (blocks[0].size if len(blocks) > 1
                                     else -(-pad_to // info.neuron_chunk) * info.neuron_chunk)
        if grid is not None:
            # each block's strengths are selected by its actor
            block_strength = _no_strength
        if standard_errors and streams:
            raise UnsupportedOptionError("standard errors of a streamed fit are not computed (they need X whole in "
                                         "each actor): pass stream=False, or compute them in memory")
        with store.acquire_lease(path, "fit") as lease:
            if store.inputs_generation(path) != info.generation:
                raise StoreError(f"{path}: the inputs were written again while this fit checked them; run the "
                                 "fit again")
            store.create_results(path, n_features=n_features, n_neurons=info.n_neurons,
                                 neuron_chunk=fingerprint["block_size"], n_blocks=len(blocks), dtype=np.dtype(dtype),
                                 state_spec=spec, fingerprint=fingerprint, overwrite=not resume, name=name,
                                 heldout=test_rows is not None, standard_errors=standard_errors,
                                 cv=None if grid is None else {"n_strengths": len(grid),
                                                               "n_folds": _n_folds(folds),
                                                               "null": model.scoring != "log-likelihood",
                                                               "pooled": not model.per_neuron},
                                 attributes=_results_attributes(model_config),
                                 status_meanings=core_fit.STATUS_NAMES,
                                 extra_features=None if history is None else history.feature_names(
                                     store.read_coordinates(path)["neuron"]))
            done = store.done_blocks(path, name) if resume else set()
            todo = [b for b in blocks if b.id not in done]
            t_prepared = time.perf_counter() - t_start
            fit_spec = FitSpec(path=path, model=model_config, pad_to=pad_to, x64=bool(jax.config.jax_enable_x64),
                               inverse_link=inverse_link, dropped_rows=np.flatnonzero(~train), n_samples=n_train,
                               stream=streams, cache_bytes=cache_bytes, fit_name=name, test_rows=test_rows,
                               standard_errors=standard_errors,
                               cv_grid=None if grid is None else tuple(grid.tolist()), cv_folds=folds,
                               storage_options=storage_options, log_level=enabled_level(),
                               history=fingerprint.get("history"), counts_dtype=counts_dtype)
            del keep, train
            if block_timeout is None:
                # the blocks' own deadline, until the fit has timed one
                fits_per_block = 1 if grid is None else len(grid) * _n_folds(folds) + 1
                first_limit = _plan.block_timeout(n_train, n_features, core_fit.bucket_neurons(pad_to), stream=streams,
                                                  candidates=fits_per_block, itemsize=np.dtype(dtype).itemsize)
                limits = (first_limit, DEFAULT_BLOCK_TIMEOUT_S)
            else:
                limits = (float(block_timeout), float(block_timeout))
            dispatch = functools.partial(
                _dispatch, lease=lease, max_retries=max_retries, block_timeout=limits,
                progress=progress, n_neurons=info.n_neurons, on_block=on_block, prestarted=early)
            summaries, failed_blocks, n_retries = [], {}, 0
            if grid is not None and not model.per_neuron:
                # one strength for all: every block's path first, then the refits at the pooled choice
                path_done = store.cv_path_done_blocks(path, name)
                path_todo = [b for b in todo if b.id not in path_done]
                # on_block hears of refitted blocks only: a block's neurons are counted once
                _, failed_blocks, n_retries = dispatch(
                    dataclasses.replace(fit_spec, cv_stage="path"), path_todo, block_strength, on_block=None,
                    num_actors=min(actors, len(path_todo)) if path_todo else 0,
                    n_already=sum(b.size for b in blocks if b.id in done or b.id in path_done))
                if not failed_blocks:
                    fit_spec = dataclasses.replace(fit_spec, cv_stage="refit",
                                                   cv_index=_pooled_index(model, store.read_results(path, name=name)))
            # without every block's path there is no shared strength to refit at
            if not failed_blocks:
                summaries, failed_blocks, retried = dispatch(
                    fit_spec, todo, block_strength,
                    num_actors=min(actors, len(todo)) if todo else 0,
                    n_already=sum(b.size for b in blocks if b.id in done))
                n_retries += retried
    finally:
        if early:
            import ray

            # the actors no dispatch took: the fit failed, or had nothing left to fit
            for actor in early:
                ray.kill(actor)
        if started:
            import ray

            ray.shutdown()

    return dataclasses.replace(_report(path, info, blocks, done, summaries, failed_blocks, n_retries, t_start,
                                       t_prepared, name), memory_estimate=estimate, memory_per_actor=int(budget))


def _memory_per_cpu(ray) -> int:
    """Memory Ray schedules per CPU on the cluster's tightest node, in bytes (one actor per CPU)."""
    shares = [node["Resources"].get("memory", 0) / node["Resources"]["CPU"]
              for node in ray.nodes() if node.get("Alive") and node["Resources"].get("CPU")]
    if not shares:
        resources = ray.cluster_resources()
        shares = [resources.get("memory", 0) / max(resources.get("CPU", 1), 1)]
    return max(int(min(shares)), 1)


def _memory_model(config, n_samples: int, n_features: int, dtype, mask, spec, cv_strengths: int = 0,
                  counts_dtype: str | None = None) -> dict:
    """Keyword arguments of ``plan.estimate_block_memory`` for an actor holding its samples (and
    cross-validating ``cv_strengths`` candidates, if any; blocks of y held as ``counts_dtype``
    when given)."""
    from .core import fit as core_fit

    if config.preconditioned:
        kind = core_fit.choose_preconditioner(np.ones((n_features, 1)) if mask is None else mask)
    else:
        kind = "none"
    per_neuron = sum(int(np.prod(shape)) * np.dtype(dt).itemsize for shape, dt, per in spec.values() if per)
    return dict(n_samples=core_fit.bucket_rows(n_samples, 1), n_features=n_features,
                itemsize=np.dtype(dtype).itemsize, y_itemsize=np.dtype(counts_dtype or dtype).itemsize,
                preconditioner=kind, state_bytes_per_neuron=per_neuron, queued_blocks=_PIPELINE - 1,
                base=_plan.ACTOR_BASE_BYTES, cv_strengths=cv_strengths)


def _streamed_history_estimate(config, info: store.InputsInfo, n_features: int, dtype, spec,
                               n_neurons: int, cache_bytes: int) -> _plan.MemoryEstimate:
    """An actor's peak memory in a history fit: the estimate of an actor holding one streamed chunk
    of samples (rows bounded by ``actor.history_stream_rows`` for the full width of the design), plus
    its cache of chunks. An upper bound for self-history, whose chunks hold the neurons' own
    history columns alone."""
    from .actor import history_stream_rows

    itemsize = np.dtype(dtype).itemsize
    rows = history_stream_rows(info, n_features, n_neurons, itemsize)
    estimate = _estimate(_memory_model(config, rows, n_features, dtype, None, spec), n_neurons)
    cache = min(cache_bytes, -(-info.n_samples // rows) * rows * (n_features + n_neurons) * itemsize)
    return estimate._replace(total=estimate.total + cache, design=estimate.design + cache)


def _estimate(memory: dict, n_neurons: int) -> _plan.MemoryEstimate:
    memory = dict(memory)
    return _plan.estimate_block_memory(memory.pop("n_samples"), memory.pop("n_features"), n_neurons, **memory)


def _check_history(history, info: store.InputsInfo, stream, stochastic: bool, test, standard_errors: bool):
    """``history`` checked against the store and the other options: a HistorySpec or None."""
    if history is None:
        return None
    from .history import HistorySpec

    if not isinstance(history, HistorySpec):
        raise InputTypeError(f"history must be a distglm.history.HistorySpec or None; got {type(history).__name__}")
    history.coupling_mask(info.n_neurons)
    refused = [name for name, on in (("stream=False", stream is False), ("an SVRG solver", stochastic),
                                     ("held-out samples (test_samples, or those the inputs record)", test is not None),
                                     ("standard_errors", standard_errors),
                                     ("X stored as feature groups", info.feature_groups is not None)) if on]
    if refused:
        raise UnsupportedOptionError(f"history features are built by streaming actors and cannot be fitted with "
                                     f"{', '.join(refused)}")
    return history


def _history_keep(keep: np.ndarray, y_ok: np.ndarray, window: int) -> np.ndarray:
    """``keep`` less the first ``window`` samples and those whose ``window`` preceding samples hold a NaN
    in y: NeMoS's history features are NaN there. A NaN in X drops its own sample alone, as in NeMoS
    (the history of the samples after it is whole)."""
    nan_y = np.concatenate([[0], np.cumsum(~y_ok)])
    t = np.arange(len(keep))
    whole = (t >= window) & (nan_y[t] == nan_y[np.maximum(t - window, 0)])
    return keep & whole


def _n_folds(folds: np.ndarray) -> int:
    """The number of folds of ``cv.store_folds``' output (labels, or roles of shape (n_folds, n_samples))."""
    return int(folds.max()) + 1 if folds.ndim == 1 else folds.shape[0]


def _test_mask(path: str, test_samples, info: store.InputsInfo) -> np.ndarray | None:
    """The held-out samples as a bool mask of shape (n_samples,) over the store's samples, or None.

    ``test_samples`` if given (intervals select samples by the store's time), else those the
    inputs record; a ``test_samples`` that differs from the recorded ones is refused.
    """
    if test_samples is None:
        return store.read_test(path) if info.has_test else None
    mask = val.as_sample_mask(test_samples, info.n_samples, lambda: store.read_time(path), "test_samples")
    if info.has_test:
        recorded = store.read_test(path)
        if not np.array_equal(mask, recorded):
            raise InputError(f"test_samples holds out {int(mask.sum())} samples, not the {int(recorded.sum())} the "
                             f"store's inputs record as held out (write_inputs(test=...)); leave test_samples out to "
                             "use them, or write the inputs again with another test set")
    return mask


def _results_attributes(model_config: dict) -> dict:
    """What the results group tells its readers: the model fitted and the software that fitted it."""
    return {"title": "results of a population GLM fit (distglm)", "model": model_config,
            "software": store.software_versions()}


def _streams(stream: bool | None, n_samples: int, n_features: int, pad_to: int, dtype,
             counts_dtype: str | None = None) -> bool:
    """Whether actors stream the samples: as asked, or when X and two blocks of y (held as
    ``counts_dtype`` when given) are too big to hold."""
    if stream is not None:
        return stream
    y_itemsize = np.dtype(counts_dtype or dtype).itemsize
    return n_samples * (n_features * np.dtype(dtype).itemsize + 2 * pad_to * y_itemsize) > STREAM_ABOVE_BYTES


def _check_resumable(path: str, stored: dict, fingerprint: dict, block_size) -> None:
    """Refuse to resume results of another fit, or of inputs that changed since they were fitted."""
    # keys on either side: an option the stored fit had and this one drops (a history, held-out
    # samples, standard errors) makes another fit as surely as one it adds
    differing = sorted(key for key in {*fingerprint, *stored}
                       if key not in ("inputs", "block_size") and stored.get(key) != fingerprint.get(key))
    if differing:
        raise StoreError(f"{path} holds results of a different fit (fingerprint differs in {differing}); "
                         "pass resume=False (distglm fit PATH --no-resume) to replace them")
    if "inputs" not in stored:
        raise StoreError(_OLDER)
    if stored.get("inputs") != fingerprint["inputs"]:
        raise StoreError(
            f"{path}: the store's inputs changed since its results were fitted (their content or generation "
            "differs), so the results are stale; refit them with resume=False (distglm fit PATH --no-resume)"
        )
    if block_size is not None and block_size != stored["block_size"]:
        raise StoreError(f"{path} holds results of this fit in blocks of {stored['block_size']} neurons, not "
                         f"{block_size}; resume with block_size={stored['block_size']} (or leave it out), or pass "
                         "resume=False to refit in blocks of the new size")


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


def _no_strength(block):
    return None


def _fitter_class():
    """``BlockFitter`` as a Ray actor class: one CPU, host libraries on one thread (``ACTOR_ENV``,
    set by the actor in its own process: see ``actor.actor_class``)."""
    import ray

    from .actor import actor_class

    return ray.remote(num_cpus=1, max_restarts=0, max_task_retries=0, max_concurrency=_PIPELINE)(actor_class())


def _start_actors_early(num_actors: int | None) -> list:
    """Actors started before the fit's spec is known, where Ray already runs in this process; else none.

    Starting an actor (a Ray worker process that imports JAX and distglm) takes seconds; started
    here, it overlaps the driver's checks of the inputs. As many as the fit will use at most
    (``num_actors``, else one per CPU of the cluster); ``_dispatch`` gives them the spec, and the
    caller kills those it did not take. Ray is never started, nor imported, here: a fit refused
    for its inputs does not touch a cluster it would otherwise not have joined.
    """
    ray = sys.modules.get("ray")
    if ray is None or not ray.is_initialized():
        return []
    cpus = int(ray.cluster_resources().get("CPU", 0))
    remote_cls = _fitter_class()
    return [remote_cls.remote() for _ in range(min(num_actors or cpus, cpus))]


def _dispatch(spec, todo, block_strength, lease, *, num_actors, max_retries, block_timeout, progress,
              n_neurons, n_already, on_block, prestarted=None):
    """Fit the blocks ``todo`` on ``num_actors`` actors; return summaries, failed blocks and retries.

    Blocks go only to actors that have started (an actor the cluster cannot place is never
    waited on). A block whose actor dies, or runs past its deadline (then its actor is killed),
    is retried on a live actor up to ``max_retries`` times; a block whose actor raised fails at
    once. A dead actor is replaced where a CPU is free. Actors are taken from ``prestarted``
    (a list of actors started without a spec, emptied as they are taken) before new ones start.
    ``block_timeout`` is ``(first, later)``: a block's deadline before any block has been timed,
    and the least one after (10 times the slowest block when that is longer).
    """
    if not todo:
        return [], {}, 0
    import ray
    from ray.exceptions import RayActorError, RayError, RayTaskError

    remote_cls = _fitter_class()
    actors, starting = {}, {}
    load = collections.Counter()  # blocks in flight, by actor (only actors that have started)
    slots = itertools.count()

    def start_actor():
        slot = next(slots)
        if prestarted:
            # started while the driver prepared the fit; ready once it holds the spec
            actors[slot] = prestarted.pop()
            starting[actors[slot].configure.remote(spec)] = slot
        else:
            actors[slot] = remote_cls.remote(spec)
            starting[actors[slot].pid.remote()] = slot

    dying = []  # a killed actor's pid call: it fails once the actor is really gone

    def lose_actor(slot):
        # Its other block in flight fails too and is retried when its error arrives. A
        # replacement only where a CPU is free (or no actor is left): on a cluster that lost a
        # node, a replacement would wait for a CPU the live actors hold until the end.
        if slot not in actors:
            return
        actor = actors.pop(slot)
        ray.kill(actor)
        dying.append(actor.pid.remote())
        load.pop(slot, None)
        if not actors or ray.available_resources().get("CPU", 0) >= 1:
            start_actor()

    def free_actor():
        # Every actor gets a block before any gets a second (read ahead while it solves).
        free = [slot for slot, n in load.items() if n < _PIPELINE]
        return min(free, key=lambda slot: load[slot]) if free else None

    for _ in range(num_actors):
        start_actor()
    queue = collections.deque(todo)
    tries = {b.id: 0 for b in todo}
    in_flight = {}
    summaries, failed_blocks, n_retries = [], {}, 0
    slowest = 0.0
    stalled_since = time.monotonic()

    def retry_or_fail(block, reason):
        nonlocal n_retries
        if tries[block.id] <= max_retries:
            n_retries += 1
            queue.appendleft(block)
        else:
            failed_blocks[block.id] = f"{reason} (tried {tries[block.id]} times)"

    progress_log = _ProgressLog(n_neurons, n_already)
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=n_neurons, initial=n_already, unit="neuron", desc="distglm fit", smoothing=0.1)
    try:
        while queue or in_flight:
            lease.check()
            now = time.monotonic()
            while queue and (slot := free_actor()) is not None:
                block = queue.popleft()
                tries[block.id] += 1
                load[slot] += 1
                # a second block waits for the first one's solve: its limit counts both
                limit = (max(block_timeout[1], 10 * slowest) if slowest else block_timeout[0]) * load[slot]
                ref = actors[slot].fit.remote(block, block_strength(block))
                in_flight[ref] = (slot, block, now + limit, limit)
            if in_flight:
                stalled_since = now
            elif now - stalled_since > _ACTOR_START_TIMEOUT_S:
                raise ClusterError(
                    f"no actor could start within {_ACTOR_START_TIMEOUT_S:.0f} s to fit the {len(queue)} remaining "
                    f"blocks (the cluster has {ray.cluster_resources().get('CPU', 0):.0f} CPUs, "
                    f"{ray.available_resources().get('CPU', 0):.0f} free); rerun when CPUs are free: finished "
                    "blocks are kept"
                )
            # every pass, not only when nothing arrives: a busy fit must not shelter a stuck actor
            for ref in [ref for ref, entry in in_flight.items() if entry[2] <= now]:
                slot, block, _, limit = in_flight.pop(ref)
                lose_actor(slot)
                retry_or_fail(block, f"its actor did not finish it within {limit:.0f} s and was killed "
                                     "(raise block_timeout if blocks are this slow)")
            wait_s = min([deadline for _, _, deadline, _ in in_flight.values()] + [now + _POLL_S]) - now
            ready, _ = ray.wait(list(in_flight) + list(starting), num_returns=1, timeout=max(0.05, wait_s))
            if not ready:
                continue
            ref = ready[0]
            if ref in starting:
                slot = starting.pop(ref)
                try:
                    ray.get(ref)
                    load[slot] = 0
                except RayActorError as err:
                    if getattr(err, "actor_init_failed", False):
                        # the same on every node (distglm missing, a bad runtime environment)
                        raise ClusterError(f"the fit's actors fail to start: {_short_reason(err)}") from None
                    actors.pop(slot, None)
                    if not actors:
                        start_actor()
                except RayError:
                    actors.pop(slot, None)
                    if not actors:
                        start_actor()
                continue
            slot, block, _, _ = in_flight.pop(ref)
            try:
                summary = ray.get(ref)
            except RayTaskError as err:
                if slot in load:
                    load[slot] -= 1
                failed_blocks[block.id] = _short_reason(err)
                continue
            except RayError as err:  # the actor died, or its node, worker or objects were lost
                lose_actor(slot)
                retry_or_fail(block, _short_reason(err))
                continue
            if slot in load:
                load[slot] -= 1
            if not summary["first_block"]:
                # an actor's first block compiles: the floor covers it, not the measured limit
                slowest = max(slowest, summary["total_s"])
            summaries.append(summary)
            progress_log.block_done(block, summary)
            if on_block is not None:
                on_block(summary)
            if bar is not None:
                bar.update(summary["n_neurons"])
    finally:
        if bar is not None:
            bar.close()
        busy = {slot for slot, *_ in in_flight.values()}
        for slot, actor in actors.items():
            ray.kill(actor)
            if slot in busy:
                dying.append(actor.pid.remote())
        # Killed actors may still be writing a block (an interrupted fit leaves blocks in
        # flight): the lease is given back only when they are gone, so that the next writer of
        # the store never races them.
        if dying:
            ray.wait(dying, num_returns=len(dying), timeout=_KILL_WAIT_S)
    return summaries, failed_blocks, n_retries


def _pooled_index(model, results: dict) -> int:
    """The index of the strength the population's pooled score selects, from every block's stored path."""
    from .actor import stored_path
    from .core import cv as core_cv

    _, _, index = core_cv.select(stored_path(results), model.scoring, False, model.selection)
    return int(index[0])


def _set_cv_results(model, fingerprint: dict, results: dict) -> None:
    """Set a loaded ``PopulationGLMCV``'s cross-validation attributes from its stored results."""
    from .actor import stored_path

    model._set_cv(np.asarray(fingerprint["cv_grid"], dtype=float), stored_path(results), results["cv_index"])


class _ProgressLog:
    """Logs the fit's progress after each block: neurons done, the rate of this run and the ETA."""

    def __init__(self, n_neurons: int, n_already: int):
        self.n_neurons, self.n_done, self.n_now = n_neurons, n_already, 0
        self.t0 = time.monotonic()

    def block_done(self, block, summary: dict) -> None:
        self.n_done += summary["n_neurons"]
        self.n_now += summary["n_neurons"]
        elapsed = time.monotonic() - self.t0
        rate = self.n_now / elapsed if elapsed > 0 else 0.0
        left = self.n_neurons - self.n_done
        eta = f"{left / rate:.0f} s" if rate > 0 else "unknown"
        _log.info("fit: block %d done (%d converged of %d, %.2f s); %d/%d neurons (%.0f%%), %.1f neurons/s, "
                  "elapsed %.0f s, ETA %s", block.id, summary["n_converged"], summary["n_neurons"],
                  summary["total_s"], self.n_done, self.n_neurons, 100 * self.n_done / self.n_neurons, rate,
                  elapsed, eta)


def _short_reason(err: Exception) -> str:
    text = str(err).strip().splitlines()
    tail = [line for line in text if line.strip()][-1:] or [type(err).__name__]
    return f"{type(err).__name__}: {tail[0][:300]}"


def _report(path, info, blocks, done, summaries, failed_blocks, n_retries, t_start, t_prepared,
            name=None) -> FitReport:
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
            results = store.read_results(path, b.start, b.stop, name)
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
    ids = store.read_coordinates(path)["neuron"]
    return FitReport(
        path=path, n_neurons=info.n_neurons, n_fitted=n_fitted, n_converged=n_converged,
        failures={ids[i].item(): reason for i, reason in sorted(failures.items())}, failed_blocks=failed_blocks, n_blocks=len(blocks),
        n_blocks_skipped=len(skipped), n_blocks_fitted=len(summaries), n_retries=n_retries,
        seconds=seconds, neurons_per_second=n_now / seconds if seconds > 0 else 0.0, timings=timings,
        heldout=(_heldout_scores(store.read_results(path, name=name))
                 if "test_samples" in (store.read_fingerprint(path, name) or {}) else None),
    )


def _heldout_scores(results: dict) -> dict | None:
    """Score type -> per-neuron held-out scores, from a fit's results; None if it held no samples out."""
    if store.HELDOUT_NAMES["log-likelihood"] not in results:
        return None
    return {score_type: results[key] for score_type, key in store.HELDOUT_NAMES.items()}


@store.with_storage_options
def load_fitted(path, mapping_dict: dict | None = None, name: str | None = None, *,
                storage_options: dict | None = None):
    """A fitted ``PopulationGLM`` from the results in the store at ``path`` (of the fit ``name``, if given).

    A fit with a custom inverse link records only its name: give the function again as
    ``mapping_dict={"inverse_link_function": fn}``, as NeMoS's ``load_model`` takes it.
    ``storage_options`` are fsspec options for a store at a URL.

    Raises :class:`StoreError` if the store holds no complete fit.
    """
    path = os.fspath(path) if isinstance(path, os.PathLike) else path
    info = store.open_inputs(path)
    fingerprint = stored_fingerprint(path, name)
    if fingerprint is None:
        others = [repr(n) for n in store.fit_names(path)]
        raise StoreError(f"{path} holds no fit results" + ("" if name is None else f" named {name!r}")
                         + (f" (its fits: {', '.join(others)})" if others else "") + "; run distglm.fit first")
    if "inputs" not in fingerprint:
        raise StoreError(_OLDER)
    fitted_to = fingerprint["inputs"].get("generation")
    if fitted_to != info.generation:
        raise StoreError(f"{path}: the results were fitted to earlier inputs (the inputs were written again since); "
                         "refit them with distglm.fit(path, model, resume=False)")
    n_blocks = len(_plan.plan_blocks(info.n_neurons, info.neuron_chunk, fingerprint["block_size"]))
    missing = sorted(set(range(n_blocks)) - store.done_blocks(path, name))
    if missing:
        raise StoreError(
            f"{path} holds an unfinished fit: blocks {missing[:10]}{'...' if len(missing) > 10 else ''} are not done "
            "(or their data is missing); rerun distglm.fit(path, model) to finish it"
        )
    link = None
    stored_link = fingerprint["model"].get("inverse_link_function")
    if isinstance(stored_link, str) and stored_link.startswith("custom:"):
        link = (mapping_dict or {}).get("inverse_link_function")
        if not callable(link):
            raise InputError(f"{path} was fitted with the custom inverse link {stored_link[7:]!r}, which a store "
                             "cannot hold: load it with mapping_dict={'inverse_link_function': the function}")
    model = FitSpec(path, fingerprint["model"], 0, False, link).build_model()
    history = None
    if "history" in fingerprint:
        from .history import HistorySpec

        history = HistorySpec.from_json(fingerprint["history"])
        stored = (store.read_mask_block(path, 0, info.n_neurons) if info.has_mask
                  else np.ones((info.n_features, info.n_neurons)))
        model.feature_mask = np.concatenate([stored, history.feature_mask(info.n_neurons)])
    elif info.has_mask:
        mask = store.read_mask_block(path, 0, info.n_neurons)
        if info.feature_groups is None:
            model.feature_mask = mask
        else:
            starts = np.cumsum([0] + [size for _, size in info.feature_groups])
            model.feature_mask = {name: mask[s] for (name, _), s in zip(info.feature_groups, starts)}
    results, state = store.read_results(path, name=name), store.read_state(path, name)
    # a fit that replaced the results meanwhile would have changed the fingerprint or the markers
    if (stored_fingerprint(path, name) != fingerprint
            or missing != sorted(set(range(n_blocks)) - store.done_blocks(path, name))):
        raise StoreError(f"{path}: the results changed while they were read (another fit is writing them); "
                         "load them again when it ends")
    model._set_fitted(info.feature_groups, results, state, neuron_ids=store.read_coordinates(path)["neuron"])
    if _is_cv(model):
        _set_cv_results(model, fingerprint, results)
    model.heldout_scores_ = _heldout_scores(results)
    model.history_ = history
    if "coef_se" in results:
        model.coef_se_, model.intercept_se_ = model._user_coef(results["coef_se"]), results["intercept_se"]
    return model
