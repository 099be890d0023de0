"""``fit_block``: fit a block of neurons jointly, with masked features, in one jitted solve.

Every function evaluation is one matrix product ``X @ (coef * mask)`` over the whole block
(and one more for its gradient), so a block of hundreds of neurons runs at matmul speed.
Because the loss and the penalties are sums over neurons, the joint optimum is each neuron's
own optimum; convergence is judged neuron by neuron (each neuron's optimality error must fall
below ``tol``), so blocks of any size stop at the same per-neuron precision.

Smooth problems are solved in preconditioned coordinates: for neuron ``n`` the parameters
``theta_n = [coef_n, intercept_n]`` are written ``theta_n = M_n v_n`` where ``M_n M_n^T``
approximates the inverse Hessian of its loss at the starting point (``h_n * G`` restricted to
the neuron's unmasked features, plus the ridge curvature, with ``G = [X 1]^T [X 1] / n_samples``
the design's Gram matrix, computed once by ``DesignGram``). The solver then sees a problem
whose Hessian starts near the identity, so quasi-Newton methods take near-Newton steps from the
first iteration; the optimum is unchanged. Three kinds (``choose_preconditioner``):

- ``cholesky``: ``M_n = L_n^{-T}`` from each neuron's own Cholesky factor, exact. It holds
  ``n_neurons * (p + 1)**2`` numbers and costs as many flops per evaluation, so it is kept for
  narrow designs (``p + 1 <= CHOLESKY_MAX_PARAMS``).
- ``shared``: when the block's neurons share their mask, one eigendecomposition ``G = U S U^T``
  serves all of them, ``M_n = U diag(h_n S + r_n)^{-1/2}`` (``r_n`` the neuron's mean ridge,
  also given to the intercept): ``(p + 1)**2 + n_neurons * (p + 1)`` numbers, and the change of
  variables is one matrix product each way.
- ``diagonal``: Jacobi scaling by the diagonal of each neuron's Hessian, for wide blocks whose
  masks differ; more iterations, no extra memory.

With the default LBFGS (``solvers.PopulationLBFGS``) each neuron stops once the 2-norm of its
gradient in these coordinates is at most ``tol`` (default 3e-6). That norm is the neuron's
Newton decrement at the starting curvature: half its square estimates how far the neuron's
objective is above its optimum (about 5e-12 at the default).

Shapes are padded to buckets (``bucket_rows``, ``bucket_neurons``): padding rows carry zero
weight and padding neurons never enter the solve, so data sets of nearby sizes share one
compiled solve and get the results they would get unpadded.

Every pass over the samples (loss and gradient, curvature, the Gram matrix of the
preconditioner, the rank of X, the scale estimate) is a fold over row chunks. The chunks come
from in-memory arrays (``fit_block``) or from the host (``fit_streamed``): a callback inside the
fold returns one chunk of X and y at a time from a ``ChunkSource``, so a fit of a recording too
long to hold runs the same solve loop with one chunk in memory at a time; it re-reads the
samples at every pass, which costs time where the in-memory path costs memory.

Besides the shared ``X``, a block may carry each neuron's own features (``own``, of shape
(n_samples, K, n_neurons), e.g. its spike history): they add ``K`` coefficients per neuron,
``K`` multiply-adds per sample and neuron each way, and their columns to each neuron's Gram
matrix (``cholesky``: each neuron's ``[X F_n 1]`` factor; ``diagonal``: its diagonal; the
``shared`` eigenbasis does not apply, each neuron's Gram matrix being its own).

Failures are data: a neuron whose initial intercept is not finite (no events at all) or whose
solution turns non-finite is reported in ``status`` and left out of the solve; the rest of
the block still fits.
"""

from __future__ import annotations

import dataclasses
import itertools
from functools import partial
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from ..errors import InputError, InputTypeError
from . import solvers as _solvers
from .observations import Observations, initial_intercept, resolve_link
from .regularizers import Regularizer
from .svrg import neuron_norm as _neuron_norm

__all__ = [
    "Params",
    "FitConfig",
    "BlockResult",
    "WarmStart",
    "STATUS_OK",
    "STATUS_NOT_CONVERGED",
    "STATUS_NONFINITE_INIT",
    "STATUS_NONFINITE_SOLUTION",
    "STATUS_REASONS",
    "STATUS_NAMES",
    "fit_block",
    "fit_streamed",
    "ChunkSource",
    "HostLayout",
    "default_init",
    "predict_rate",
    "state_leaves",
    "state_spec",
    "UpdateState",
    "init_update_state",
    "update_step",
    "dof_resid",
    "bucket_rows",
    "bucket_neurons",
    "DesignGram",
    "choose_preconditioner",
    "PRECONDITIONERS",
    "CHOLESKY_MAX_PARAMS",
]

STATUS_OK = 0
STATUS_NOT_CONVERGED = 1
STATUS_NONFINITE_INIT = 2
STATUS_NONFINITE_SOLUTION = 3

STATUS_REASONS = {
    STATUS_OK: "",
    STATUS_NOT_CONVERGED: "did not converge within maxiter",
    STATUS_NONFINITE_INIT: "initial intercept is not finite (a neuron with no events, or a mean response "
    "outside the inverse link's range)",
    STATUS_NONFINITE_SOLUTION: "the solver returned a non-finite solution",
}

#: One word per status, as the store records them (CF ``flag_meanings``).
STATUS_NAMES = {
    STATUS_OK: "ok",
    STATUS_NOT_CONVERGED: "not_converged",
    STATUS_NONFINITE_INIT: "nonfinite_initial_intercept",
    STATUS_NONFINITE_SOLUTION: "nonfinite_solution",
}

_MAX_RETRIES = 3


class Params(NamedTuple):
    """Model parameters of a block of neurons.

    Attributes
    ----------
    coef : array of shape (n_features, n_neurons)
    intercept : array of shape (n_neurons,)
    """

    coef: Any
    intercept: Any


@dataclasses.dataclass(frozen=True)
class FitConfig:
    """Everything static about a fit; hashable, so it keys the jit cache.

    Attributes
    ----------
    observation : Observations
    inverse_link : callable or str
    regularizer : Regularizer
    solver_name : str
    solver_kwargs : tuple of (key, value) pairs, sorted
    """

    observation: Observations
    inverse_link: Callable | str
    regularizer: Regularizer
    solver_name: str
    solver_kwargs: tuple = ()

    @property
    def link(self) -> Callable:
        return resolve_link(self.inverse_link)

    @property
    def preconditioned(self) -> bool:
        return self.regularizer.smooth and self.solver_name != "ProximalGradient"


class WarmStart(NamedTuple):
    """What an L-BFGS solve knows at its end, in the parameters' own coordinates: what a fit of a
    nearby problem on the same samples (the next strength of a path) can start from.

    Attributes
    ----------
    steps : Params whose arrays have a leading axis of pairs: coef of shape
        (n_pairs, n_features, n_neurons), intercept of shape (n_pairs, n_neurons); the
        solver's latest steps, oldest first (unused pairs are zeros)
    grad_changes : Params like ``steps``: the change of the objective's gradient along each step
    loss : array of shape (n_neurons,): each neuron's data loss (without the penalty) at the
        returned parameters; NaN where unknown
    grad : Params (coef (n_features, n_neurons), intercept (n_neurons,)): the data loss's
        gradient there
    curvature : array of shape (n_neurons,) or None: each neuron's mean curvature of the data
        loss that its preconditioner was built with; where finite, the next fit's
        preconditioner reuses it instead of a pass over the samples (a preconditioner changes
        the path to the optimum, not the optimum). None or NaN: measured afresh.
    """

    steps: Any
    grad_changes: Any
    loss: Any
    grad: Any
    curvature: Any = None


class BlockResult(NamedTuple):
    """What ``fit_block`` returns; per-neuron arrays have the neuron axis last.

    Attributes
    ----------
    coef : array of shape (n_features, n_neurons); masked entries exactly 0
    intercept : array of shape (n_neurons,)
    scale : array of shape (n_neurons,)
    dof_resid : array of shape (n_neurons,)
    n_iter : int array of shape (n_neurons,): iterations until the neuron first met ``tol``
    converged : bool array of shape (n_neurons,)
    loss : array of shape (n_neurons,): final penalised loss of each neuron
    grad_norm : array of shape (n_neurons,): final optimality error of each neuron
    status : int8 array of shape (n_neurons,): a key of ``STATUS_REASONS``
    state : the solver's state (a jaxopt NamedTuple) at the end of the solve
    warm_start : WarmStart or None
        The L-BFGS solver's curvature pairs, data loss and gradient at the end of the solve,
        for a solve that started from a ``warm_start`` (a path: its first fit starts from
        ``core.cv.empty_warm_start``); None otherwise, and for other solvers. A plain fit
        leaves them out of its compiled program, which then compiles about 15% faster.
    """

    coef: Any
    intercept: Any
    scale: Any
    dof_resid: Any
    n_iter: Any
    converged: Any
    loss: Any
    grad_norm: Any
    status: Any
    state: Any
    warm_start: Any = None


def predict_rate(link: Callable, X, coef, intercept, mask=None):
    """Mean response ``link(X @ (coef * mask) + intercept)``, shape (n_samples, n_neurons)."""
    weights = coef if mask is None else coef * mask
    return link(X @ weights + intercept)


def default_init(config: FitConfig, y, n_features: int, dtype) -> Params:
    """Zero coefficients and the intercepts matching each neuron's mean response.

    ``y`` has shape (n_samples, n_neurons); the coefficients have shape (n_features, n_neurons).
    """
    return _init_for_mean(config, np.mean(y, axis=0, dtype=dtype), n_features, dtype)


def _init_for_mean(config: FitConfig, mean_y, n_features: int, dtype) -> Params:
    intercept = np.asarray(initial_intercept(config.inverse_link, np.asarray(mean_y, dtype)), dtype=dtype)
    return Params(np.zeros((n_features, intercept.shape[0]), dtype), intercept)


# Integer types ``fit_block`` takes counts in as they are (every value exact in float32), instead
# of a float copy of the block: an actor holds a block's spike counts in a quarter of the memory.
NARROW_COUNTS = (np.dtype(np.uint8), np.dtype(np.uint16))


def narrow_counts_dtype(low: int, high: int) -> np.dtype | None:
    """The narrowest of ``NARROW_COUNTS`` that holds every integer in ``[low, high]``; None if none does.

    >>> narrow_counts_dtype(0, 255), narrow_counts_dtype(0, 256), narrow_counts_dtype(-1, 3)
    (dtype('uint8'), dtype('uint16'), None)
    """
    return next((t for t in NARROW_COUNTS if np.iinfo(t).min <= low and high <= np.iinfo(t).max), None)

# Row chunks of at most this many elements (n_rows * n_neurons): every per-sample intermediate
# then stays a few MB, in cache, instead of a fresh (n_samples, n_neurons) buffer per pass.
_CHUNK_ELEMENTS = 1 << 20


class HostLayout(NamedTuple):
    """The static shape of samples fed from the host: ``n_chunks`` chunks of ``rows`` rows.

    Each chunk holds ``X`` rows of shape (rows, n_features), ``y`` rows of shape
    (rows, n_neurons), with ``n_own`` > 0 the per-neuron features of shape
    (rows, n_own, n_neurons), and a bool row mask of shape (rows,); ``dtype`` names the float
    type. Hashable, so a fit compiles once per layout whatever source feeds it.
    """

    n_chunks: int
    rows: int
    n_features: int
    n_neurons: int
    dtype: str
    n_own: int = 0


class _Chunks(NamedTuple):
    """Samples read in row chunks of ``rows`` (static), from arrays or from the host.

    In memory, ``X`` (n, p) and ``y`` (n, N) hold the samples; only the first ``n_valid`` rows
    (a traced integer) are data, the rest pad ``n`` up to a bucket (see ``bucket_rows``) and
    count for nothing. ``weight`` (n,), when given, replaces the mean over the valid rows by a
    weighted sum (rows of weight 0 drop out).

    Fed from the host, ``X`` and ``y`` are None, ``host`` gives the layout and ``token`` (traced)
    names the registered reader that returns each chunk (see ``ChunkSource``); ``n_valid`` is
    the number of data rows over all chunks.

    ``own`` (n, K, N), in memory, holds each neuron's own features (see ``fit_block``); None
    when the block has none (fed from the host, ``host.n_own`` says).
    """

    X: Any
    y: Any
    rows: int
    n_valid: Any
    weight: Any = None
    host: HostLayout | None = None
    token: Any = None
    own: Any = None


# JAX's CPU client takes a host array without copying it when the array is aligned to this
# many bytes (numpy guarantees only 16): a padded design or block of y then lives once, not
# once on the host and again on the device.
_DEVICE_ALIGNMENT = 64


def device_buffer(shape: tuple, dtype) -> np.ndarray:
    """A zero array of ``shape`` that ``jax.device_put`` takes without a copy (aligned to 64 bytes).

    Filled on the host, then handed to JAX and never written again: JAX treats it as immutable.
    """
    dtype = np.dtype(dtype)
    n_bytes = int(np.prod(shape)) * dtype.itemsize
    raw = np.zeros(n_bytes + _DEVICE_ALIGNMENT, np.uint8)
    start = -raw.ctypes.data % _DEVICE_ALIGNMENT
    return raw[start:start + n_bytes].view(dtype).reshape(shape)


def _padded(a: np.ndarray, shape: tuple, n_rows: int) -> np.ndarray:
    """The first ``n_rows`` rows of ``a`` in a zero ``device_buffer`` of ``shape`` (padding after them)."""
    out = device_buffer(shape, a.dtype)
    out[(slice(0, n_rows), *(slice(0, k) for k in a.shape[1:]))] = a[:n_rows]
    return out


def _chunk_rows(n_samples: int, n_neurons: int) -> int:
    """Rows per chunk of a pass over ``n_samples``: at most ``_CHUNK_ELEMENTS / n_neurons`` (and 8),
    in a power of two of chunks of equal size (a multiple of 8), as few as that allows.
    """
    most = max(8, (_CHUNK_ELEMENTS // max(n_neurons, 1)) // 8 * 8)
    if n_samples <= most:
        return n_samples
    n_chunks = 1 << (-(-n_samples // most) - 1).bit_length()
    return -(-n_samples // (8 * n_chunks)) * 8


def _chunk(X, y, n_valid=None, weight=None, own=None) -> _Chunks:
    n_valid = X.shape[0] if n_valid is None else n_valid
    n_neurons = 1 if y is None else y.shape[1]
    return _Chunks(X, y, _chunk_rows(X.shape[0], n_neurons), jnp.asarray(n_valid, jnp.int32), weight, own=own)


def _n_own(chunks: _Chunks) -> int:
    """Own features per neuron (K) of the chunks' samples; 0 when they have none."""
    if chunks.host is not None:
        return chunks.host.n_own
    return 0 if chunks.own is None else chunks.own.shape[1]


def _host_chunk(layout: HostLayout, token, n_valid) -> _Chunks:
    rows = _chunk_rows(layout.rows, layout.n_neurons)
    return _Chunks(None, None, rows, jnp.asarray(n_valid, jnp.int32), None, layout, token)


def _fold(X, own, y, rows: int, valid: Callable, weight, body: Callable, carry):
    """Fold ``body`` over the row chunks of in-memory ``X``, ``own``, ``y``, slicing in place.

    ``valid(start, size)`` is the bool array of shape (size, 1) of the chunk's data rows.
    """
    n = X.shape[0]
    k, rem = divmod(n, rows)

    def rows_of(a, start, size):
        return None if a is None else jax.lax.dynamic_slice_in_dim(a, start, size)

    def responses(a):
        # counts held narrow (see ``fit_block``) become floats a chunk at a time, fused into the
        # chunk's first use
        return a if a is None or a.dtype == X.dtype else a.astype(X.dtype)

    def step(carry, i):
        start = i * rows
        return body(carry, rows_of(X, start, rows), rows_of(own, start, rows), responses(rows_of(y, start, rows)),
                    valid(start, rows), rows_of(weight, start, rows)), None

    carry, _ = jax.lax.scan(step, carry, jnp.arange(k))
    if rem:
        carry = body(carry, X[k * rows:], None if own is None else own[k * rows:],
                     responses(y if y is None else y[k * rows:]), valid(k * rows, rem),
                     None if weight is None else weight[k * rows:])
    return carry


def _reduce(chunks: _Chunks, body: Callable, init):
    """Fold ``body(carry, x_chunk, own_chunk, y_chunk, valid, w_chunk)`` over the row chunks.

    ``own_chunk`` is the chunk's own features (rows, K, N), or None when the block has none;
    ``valid`` is a bool array of shape (rows, 1): which of the chunk's rows are data;
    ``w_chunk`` is the chunk's row weights, or None when ``chunks.weight`` is None. Samples fed
    from the host arrive one host chunk at a time (a callback inside the loop), and each host
    chunk is folded like an in-memory array: the same ``body`` serves both.
    """
    if chunks.host is None:
        n_valid = chunks.n_valid

        def valid(start, size):
            return (start + jnp.arange(size)[:, None]) < n_valid

        return _fold(chunks.X, chunks.own, chunks.y, chunks.rows, valid, chunks.weight, body, init)

    layout = chunks.host
    dtype = np.dtype(layout.dtype)
    shapes = (jax.ShapeDtypeStruct((layout.rows, layout.n_features), dtype),
              jax.ShapeDtypeStruct((layout.rows, layout.n_neurons), dtype),
              jax.ShapeDtypeStruct((layout.rows,), np.dtype(bool)))
    if layout.n_own:
        shapes = shapes + (jax.ShapeDtypeStruct((layout.rows, layout.n_own, layout.n_neurons), dtype),)

    def outer(carry, i):
        x, yy, ok, *own = jax.pure_callback(_read_registered, shapes, chunks.token, i, vmap_method="sequential")
        ok = ok[:, None]
        return _fold(x, own[0] if own else None, yy, chunks.rows,
                     lambda start, size: jax.lax.dynamic_slice_in_dim(ok, start, size), None, body, carry), None

    return jax.lax.scan(outer, init, jnp.arange(layout.n_chunks))[0]


# Readers of the sources being fitted, by token: the compiled fit holds a token, not a reader, so
# one compilation serves every source of the same layout.
_READERS: dict[int, Callable] = {}
_TOKENS = itertools.count()


def _read_registered(token, i):
    return _READERS[int(token)](int(i))


class ChunkSource:
    """Samples of a fit fed from the host in chunks of rows, never all in memory at once.

    Parameters
    ----------
    read : callable
        ``read(i) -> (X_rows, y_rows, keep)`` for chunk ``i`` in ``range(n_chunks)``: arrays of
        shape (rows, n_features) and (rows, n_neurons) and a bool array of shape (rows,) that
        is False for rows that are not data (NaN rows, padding past the last sample). Rows
        that are not data must hold finite values (zeros, say). With ``n_own`` > 0,
        ``read(i) -> (X_rows, y_rows, keep, own_rows)``, ``own_rows`` the neurons' own features
        of shape (rows, n_own, n_neurons) (see :func:`fit_block`).
    n_chunks, rows, n_features, n_neurons : int
        The layout; every chunk has ``rows`` rows.
    n_valid : int
        Data rows over all chunks.
    n_own : int, optional
        Own features per neuron (K); default 0, none.

    Examples
    --------
    >>> import numpy as np
    >>> X, y = np.ones((10, 2), "float32"), np.ones((10, 3), "float32")
    >>> src = ChunkSource(lambda i: (X[5 * i:5 * i + 5], y[5 * i:5 * i + 5], np.ones(5, bool)),
    ...                   n_chunks=2, rows=5, n_features=2, n_neurons=3, n_valid=10)
    >>> src.layout("float32")
    HostLayout(n_chunks=2, rows=5, n_features=2, n_neurons=3, dtype='float32', n_own=0)
    """

    def __init__(self, read: Callable, *, n_chunks: int, rows: int, n_features: int, n_neurons: int, n_valid: int,
                 n_own: int = 0):
        if not callable(read):
            raise TypeError(f"read must be callable; got {type(read).__name__}")
        for name, value in (("n_chunks", n_chunks), ("rows", rows), ("n_features", n_features),
                            ("n_neurons", n_neurons), ("n_valid", n_valid)):
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
                raise ValueError(f"{name} must be a positive int; got {value!r}")
        if isinstance(n_own, bool) or not isinstance(n_own, (int, np.integer)) or n_own < 0:
            raise ValueError(f"n_own must be a non-negative int; got {n_own!r}")
        if n_valid > n_chunks * rows:
            raise ValueError(f"n_valid={n_valid} exceeds the {n_chunks} x {rows} rows of the chunks")
        self.read, self.n_chunks, self.rows = read, int(n_chunks), int(rows)
        self.n_features, self.n_neurons, self.n_valid = int(n_features), int(n_neurons), int(n_valid)
        self.n_own = int(n_own)

    def layout(self, dtype, n_neurons: int | None = None) -> HostLayout:
        return HostLayout(self.n_chunks, self.rows, self.n_features,
                          self.n_neurons if n_neurons is None else n_neurons, np.dtype(dtype).name, self.n_own)


def _bucket(n: int) -> int:
    """``n`` rounded up to the grid ``m * 2**e`` (``8 <= m < 16``): less than 1/8 more."""
    if n <= 16:
        return n
    e = n.bit_length() - 4
    return -(-n >> e) << e


def bucket_rows(n_samples: int, n_neurons: int) -> int:
    """Rows a fit of ``n_samples`` is padded to: at most 1/8 more, in row chunks of one shape.

    Data sets of nearby sizes then share one compiled solve. The bucket is ``_bucket(n_samples)``
    (less than 1/8 above ``n_samples``), a multiple of ``2**e >= n_samples / 16``; a power of two
    of equal chunks of a multiple of 8 rows splits it exactly when the chunks may hold at least
    256 rows (blocks of up to 4,096 neurons), so every chunk has one shape and the chunked pass
    is traced once. With more neurons the bucket is rounded up to whole chunks as far as the 1/8
    allows; beyond it the last chunk is shorter (and traced on its own).
    """
    n = _bucket(n_samples)
    rows = _chunk_rows(n, n_neurons)
    whole = -(-n // rows) * rows
    return whole if 8 * (whole - n_samples) <= n_samples else n


def bucket_neurons(n_neurons: int) -> int:
    """Neurons a block of ``n_neurons`` is padded to (with empty neurons that never enter the solve)."""
    return _bucket(n_neurons)


def _elementwise(obs: Observations, link: Callable, order: int):
    """``f(y, eta) -> (nll, d nll/d eta)`` (order 1) or ``d^2 nll/d eta^2`` (order 2), elementwise."""
    def nll(y, eta):
        return obs.nll_terms(y, link(eta))

    def first(y, eta):
        return jax.jvp(lambda e: nll(y, e), (eta,), (jnp.ones_like(eta),))

    if order == 1:
        return first

    def second(y, eta):
        return jax.jvp(lambda e: first(y, e)[1], (eta,), (jnp.ones_like(eta),))[1]

    return second


def _linear(x, own, weights, intercept):
    """The linear predictor of a row chunk, shape (rows, N): ``x @ weights[:p] + intercept``, plus
    with own features ``own`` (rows, K, N) each neuron's ``sum_k own[:, k, n] * weights[p + k, n]``."""
    p = x.shape[1]
    eta = x @ weights[:p] + intercept
    if own is None:
        return eta
    # one fused elementwise pass per feature: XLA lowers the einsum "rkn,kn->rn" to a batched
    # product over n with transposes, ten times slower
    for k in range(own.shape[1]):
        eta = eta + own[:, k, :] * weights[p + k]
    return eta


def _linear_transpose(x, own, d):
    """The gradient of ``sum(_linear(...) * d)`` w.r.t. the weights, shape (p [+ K], N)."""
    g = x.T @ d
    if own is None:
        return g
    # the sum over rows as a product with ones (a matrix-vector product), not a column reduction
    # nor the einsum "rkn,rn->kn", both several times slower
    rows, k, n = own.shape
    g_own = jnp.ones((rows,), d.dtype) @ (own * d[:, None, :]).reshape(rows, k * n)
    return jnp.concatenate([g, g_own.reshape(k, n)], axis=0)


def _data_pass(chunks: _Chunks, weights, intercept, fn, with_grad: bool):
    """Per-neuron mean loss (N,), and its gradients (p, N), (N,) w.r.t. weights and intercept.

    One pass over row chunks: each chunk costs one product ``X_c @ weights`` and, for the
    gradient, one ``X_c.T @ d``; nothing of size (n_samples, n_neurons) is materialised. Own
    features add ``K`` multiply-adds per sample and neuron each way (``_linear``).
    """
    scale = 1.0 / chunks.n_valid.astype(weights.dtype)
    zeros_n = jnp.zeros((weights.shape[1],), weights.dtype)

    def body(carry, x, own, yy, valid, w):
        value, deriv = fn(yy, _linear(x, own, weights, intercept))
        w = scale if w is None else w[:, None]
        loss = carry[0] + jnp.sum(jnp.where(valid, w * value, 0.0), axis=0)
        if not with_grad:
            return (loss,)
        d = jnp.where(valid, w * deriv, 0.0)
        return (loss, carry[1] + _linear_transpose(x, own, d), carry[2] + jnp.sum(d, axis=0))

    init = (zeros_n, jnp.zeros_like(weights), zeros_n) if with_grad else (zeros_n,)
    return _reduce(chunks, body, init)


def _curvature(chunks: _Chunks, weights, intercept, fn2):
    """Mean over samples of d^2 nll / d eta^2 at the given parameters, shape (n_neurons,)."""
    def body(acc, x, own, yy, valid, w):
        curvature = jnp.where(valid, fn2(yy, _linear(x, own, weights, intercept)), 0.0)
        return acc + jnp.sum(curvature, axis=0) / chunks.n_valid.astype(weights.dtype)

    return _reduce(chunks, body, jnp.zeros(weights.shape[1], weights.dtype))


def _gram(chunks: _Chunks, p: int, dtype):
    """``[X 1]^T [X 1] / n_valid`` over the data rows, shape (p+1, p+1), one row chunk at a time."""
    def body(acc, x, own, yy, valid, w):
        a = jnp.where(valid, jnp.concatenate([x, jnp.ones((x.shape[0], 1), dtype)], axis=1), 0.0)
        return acc + a.T @ a

    return _reduce(chunks, body, jnp.zeros((p + 1, p + 1), dtype)) / chunks.n_valid.astype(dtype)


def _own_gram(chunks: _Chunks, p: int, n_neurons: int, dtype):
    """Each neuron's ``[X F_n 1]^T [X F_n 1] / n_valid`` (F_n its own features), shape (N, p+K+1, p+K+1).

    The shared block ``[X 1]^T [X 1]`` is one product; the own features add ``X^T F_n`` and
    ``F_n^T F_n`` per neuron (``(p + 1) * K + K**2`` multiply-adds per sample and neuron).
    """
    k = _n_own(chunks)

    def body(acc, x, own, yy, valid, w):
        a = jnp.where(valid, jnp.concatenate([x, jnp.ones((x.shape[0], 1), dtype)], axis=1), 0.0)
        f = jnp.where(valid[:, :, None], own, 0.0)
        return acc[0] + a.T @ a, acc[1] + jnp.einsum("ra,rkn->nak", a, f), acc[2] + jnp.einsum("rkn,rjn->nkj", f, f)

    init = (jnp.zeros((p + 1, p + 1), dtype), jnp.zeros((n_neurons, p + 1, k), dtype),
            jnp.zeros((n_neurons, k, k), dtype))
    shared, cross, own = (a / chunks.n_valid.astype(dtype) for a in _reduce(chunks, body, init))
    # in the order of the parameters: [X, F_n, 1]
    xs, one = shared[:p], shared[p:]
    top = jnp.concatenate([jnp.broadcast_to(xs[:, :p], (n_neurons, p, p)), cross[:, :p],
                           jnp.broadcast_to(xs[:, p:], (n_neurons, p, 1))], axis=2)
    middle = jnp.concatenate([jnp.swapaxes(cross[:, :p], 1, 2), own, jnp.swapaxes(cross[:, p:], 1, 2)], axis=2)
    bottom = jnp.concatenate([jnp.broadcast_to(one[:, :p], (n_neurons, 1, p)), cross[:, p:],
                              jnp.broadcast_to(one[:, p:], (n_neurons, 1, 1))], axis=2)
    return jnp.concatenate([top, middle, bottom], axis=1)


# Above this many parameters per neuron (features + intercept) a per-neuron factor of the
# Hessian costs n_neurons * (p + 1)**2 memory and memory-bound products every evaluation, so
# wide blocks share one factorisation (equal masks) or use the diagonal (differing masks).
CHOLESKY_MAX_PARAMS = 256

#: The preconditioners ``fit_block`` can use; ``"auto"`` picks one (see ``choose_preconditioner``).
PRECONDITIONERS = ("auto", "cholesky", "shared", "diagonal")


class _Cholesky(NamedTuple):
    """Exact per-neuron factor: ``theta_n = tri_n^{-T} v_n``, ``tri`` of shape (n_neurons, p+1, p+1),
    lower triangular; ``inverse`` its inverse (``_lower_inverse``), which the solve maps by."""

    tri: Any
    inverse: Any = None


class _Shared(NamedTuple):
    """One eigenbasis for the block: ``Theta = basis @ (scale * V)``, ``Theta`` of shape (p+1, n_neurons).

    ``basis`` (p+1, p+1) is orthogonal; ``scale`` (p+1, n_neurons) is each neuron's
    ``(h_n * lambda + ridge_n)^{-1/2}`` in that basis.
    """

    basis: Any
    scale: Any


class _Diagonal(NamedTuple):
    """Jacobi scaling ``Theta = scale * V``, ``scale`` of shape (p+1, n_neurons)."""

    scale: Any


class DesignGram:
    """The Gram matrix of a design ``[X 1]``, and what each preconditioner needs of it.

    Computed once per design and shared by every block fitted on it: ``X`` is not copied (the
    column of ones enters as column sums). The eigendecomposition the shared preconditioner
    uses is computed once per mask column and kept for the next block (the last one only).

    Parameters
    ----------
    X : array of shape (n_samples, n_features)
        Rows past ``n_valid`` must be zero (padding).
    n_valid : int, optional
        Number of data rows; default ``n_samples``.

    Attributes
    ----------
    matrix : numpy array of shape (n_features + 1, n_features + 1)
        ``[X 1]^T [X 1] / n_valid``, in X's float dtype.

    Examples
    --------
    >>> DesignGram(np.array([[1.0, 2.0], [3.0, 4.0]])).matrix
    array([[ 5.,  7.,  2.],
           [ 7., 10.,  3.],
           [ 2.,  3.,  1.]])
    """

    def __init__(self, X, n_valid=None):
        X = np.asarray(X)
        self.matrix = _gram_of_chunks([X], X.shape[0] if n_valid is None else n_valid)
        self._eigen = (None, None)

    @classmethod
    def from_chunks(cls, chunks, n_valid: int) -> "DesignGram":
        """The Gram matrix of a design given a chunk of rows at a time.

        ``chunks`` is an iterable of arrays of shape (n_rows, n_features), in the design's row
        order or any other; rows that are not data must be zero. ``n_valid`` counts the data rows.

        Examples
        --------
        >>> X = np.array([[1.0, 2.0], [3.0, 4.0], [0.5, -1.0]])
        >>> bool(np.allclose(DesignGram.from_chunks([X[:2], X[2:]], 3).matrix, DesignGram(X).matrix))
        True
        """
        made = cls.__new__(cls)
        made.matrix, made._eigen = _gram_of_chunks(chunks, n_valid), (None, None)
        return made

    def for_preconditioner(self, kind: str, mask, active):
        """What ``kind`` needs: the matrix (cholesky), its diagonal (diagonal), or the
        eigendecomposition of its restriction to the first active neuron's mask (shared)."""
        if kind == "cholesky":
            return self.matrix
        if kind == "diagonal":
            return np.diagonal(self.matrix).copy()
        active = np.asarray(active, bool)
        column = np.ones(self.matrix.shape[0], self.matrix.dtype)
        if active.any():
            column[:-1] = np.asarray(mask)[:, int(np.argmax(active))]
        key = column.tobytes()
        if self._eigen[0] != key:
            self._eigen = (key, _Eigen(*_restricted_eigh(self.matrix, column)))
        return self._eigen[1]


def _gram_of_chunks(chunks, n_valid) -> np.ndarray:
    """``[X 1]^T [X 1] / n_valid`` in X's dtype, from chunks of rows of X (rows that are not data zero)."""
    gram = None
    for X in chunks:
        X = np.asarray(X)
        if gram is None:
            p = X.shape[1]
            gram = np.zeros((p + 1, p + 1), dtype=X.dtype)
        sums = X.sum(axis=0)
        gram[:p, :p] += X.T @ X
        gram[:p, p] += sums
        gram[p, :p] += sums
    if gram is None:
        raise ValueError("chunks must hold at least one chunk of rows")
    n = int(n_valid)
    gram[p, p] = n
    gram /= np.asarray(max(n, 1), gram.dtype)
    return gram


class _Eigen(NamedTuple):
    """``S = basis @ diag(values) @ basis.T``, S the Gram matrix restricted to a mask."""

    values: Any
    basis: Any


@jax.jit
def _restricted_eigh(gram, column):
    # masked features get an identity block, so they stay out of the unmasked ones' basis
    return jnp.linalg.eigh(gram * column[:, None] * column[None, :] + jnp.diag(1.0 - column))


def choose_preconditioner(mask, active=None, own: bool = False) -> str:
    """The preconditioner ``"auto"`` picks for a block: ``"cholesky"``, ``"shared"`` or ``"diagonal"``.

    Narrow blocks (at most ``CHOLESKY_MAX_PARAMS - 1`` features) get the exact per-neuron
    Cholesky factor; wider blocks whose active neurons share one mask column get one
    eigendecomposition shared by all of them (exact up to the ridge of the intercept); wider
    blocks with differing masks get the diagonal (Jacobi) scaling.

    Parameters
    ----------
    mask : array of shape (n_features, n_neurons)
    active : bool array of shape (n_neurons,), optional
        Neurons that enter the solve; the others' mask columns are ignored. Default all.
    own : bool
        Whether the block has own features (``fit_block``'s ``own``): each neuron then has its
        own Gram matrix, so wide blocks get the diagonal, never the shared eigenbasis.

    Examples
    --------
    >>> import numpy as np
    >>> choose_preconditioner(np.ones((10, 4))), choose_preconditioner(np.ones((300, 4)))
    ('cholesky', 'shared')
    >>> m = np.ones((300, 4)); m[0, 1] = 0
    >>> choose_preconditioner(m)
    'diagonal'
    """
    mask = np.asarray(mask)
    if mask.shape[0] + 1 <= CHOLESKY_MAX_PARAMS:
        return "cholesky"
    if own:
        return "diagonal"
    cols = mask if active is None else mask[:, np.asarray(active, bool)]
    if cols.shape[1] == 0 or np.all(cols == cols[:, :1]):
        return "shared"
    return "diagonal"


def _preconditioner(kind: str, design, mask, h, ridge):
    """The block's preconditioner of kind ``kind``; ``design`` is ``DesignGram.for_preconditioner(kind, ...)``.

    The target for neuron ``n`` is its Hessian at the start, ``h_n * G`` (G the Gram matrix)
    restricted to its unmasked features plus the ridge curvature (masked features get
    curvature 1: they never move, since their gradient is zero).
    """
    p1, n_neurons = mask.shape[0] + 1, mask.shape[1]
    dtype = mask.dtype
    m = jnp.concatenate([mask, jnp.ones((1, n_neurons), dtype)], axis=0)  # (p+1, N)
    h = jnp.where(jnp.isfinite(h) & (h > 0), h, 1.0)
    ridge = jnp.zeros_like(mask) if ridge is None else jnp.broadcast_to(ridge, mask.shape) * mask
    ridge = jnp.concatenate([ridge, jnp.zeros((1, n_neurons), dtype)], axis=0)  # (p+1, N)
    # a rank-deficient design would make the target singular; a jitter relative to its mean
    # diagonal keeps it definite
    rel = 1e-7 if dtype == jnp.float32 else 1e-12
    if kind == "diagonal":
        # design: the Gram matrix's diagonal, shared (p+1,) or per neuron (p+1, N)
        d = h * (design if design.ndim == 2 else design[:, None]) * m + (1.0 - m) + ridge
        return _Diagonal(jax.lax.rsqrt(d + rel * jnp.mean(d, axis=0)))
    if kind == "shared":
        # every active neuron has this mask, so in the eigenbasis of its restricted Gram matrix
        # each neuron's h_n * G + ridge_n is diagonal (ridge_n: its mean ridge curvature, also
        # given to the intercept, so the basis stays exact for a uniform ridge)
        lam = jnp.maximum(design.values, 0.0)
        lam = lam + rel * jnp.sum(lam) / p1
        r = jnp.sum(ridge, axis=0) / jnp.maximum(jnp.sum(m[:-1], axis=0), 1.0)
        return _Shared(design.basis, jax.lax.rsqrt(lam[:, None] * h[None, :] + r[None, :]))
    mt = m.T  # (N, p+1)
    # design: the Gram matrix, shared (p+1, p+1) or per neuron (N, p+1, p+1)
    P = h[:, None, None] * (design if design.ndim == 3 else design[None]) * mt[:, :, None] * mt[:, None, :]
    eye = jnp.eye(p1, dtype=dtype)
    P = P + ((1.0 - mt) + ridge.T)[:, :, None] * eye
    P = P + rel * jnp.trace(P, axis1=1, axis2=2)[:, None, None] / p1 * eye
    L = jnp.linalg.cholesky(P)
    good = jnp.all(jnp.isfinite(L), axis=(1, 2))
    return _Cholesky(jnp.where(good[:, None, None], L, eye))


def _lower_inverse(L) -> np.ndarray:
    """Inverse of lower-triangular matrices ``L`` of shape (..., n, n), on the host (numpy).

    Forward substitution, row by row for the whole batch at once: row ``i`` of ``L^{-1}`` is
    ``(e_i - L[i, :i] @ L^{-1}[:i]) / L[i, i]``, n batched products (7 ms for 512 factors of
    51 x 51 in float32, about as accurate as LAPACK's LU inverse). The solve takes the inverse
    as an input rather than computing it: inside XLA, the batched inverse was a third of the
    solve's compilation (about 0.4 s of 1.4 s), and a host callback would keep the solve out of
    the persistent compilation cache.
    """
    L = np.asarray(L)  # of a CPU device's array: a view, not a copy
    n = L.shape[-1]
    inverse = device_buffer(L.shape, L.dtype)  # the solve takes it without a copy
    diagonal = 1.0 / np.diagonal(L, axis1=-2, axis2=-1)
    for i in range(n):
        row = -np.matmul(L[..., i:i + 1, :i], inverse[..., :i, :])[..., 0, :]
        row[..., i] += 1.0
        inverse[..., i, :] = row * diagonal[..., i:i + 1]
    return inverse


class _Problem(NamedTuple):
    solver: Any
    to_theta: Callable
    to_solver: Callable
    data_loss: Callable
    penalty: Callable
    error: Callable


def _cholesky_to_solver(tri, theta: Params) -> Params:
    """``L_n^T theta_n`` for every neuron: parameters into a Cholesky preconditioner's coordinates."""
    p = theta.coef.shape[0]
    T = jnp.einsum("nji,jn->in", tri, jnp.concatenate([theta.coef, theta.intercept[None]], axis=0))
    return Params(T[:p], T[p])


def _build(chunks: _Chunks, mask, strength, active, precond, config: FitConfig) -> _Problem:
    """The solver and coordinate maps for a block (traced inside jit).

    The objective returns each neuron's value and the gradient together, from one chunked pass
    over the samples (see ``_data_pass``).
    """
    obs, reg, link = config.observation, config.regularizer, config.link
    p = mask.shape[0]
    weight = active.astype(mask.dtype)
    fn = _elementwise(obs, link, 1)

    def data_loss(theta: Params):
        return _data_pass(chunks, theta.coef * mask, theta.intercept, fn, with_grad=False)[0]

    def penalty(theta: Params):
        return reg.penalty(theta.coef * mask, strength)

    def stacked(theta: Params):
        return jnp.concatenate([theta.coef, theta.intercept[None]], axis=0)  # (p+1, N)

    def split(T) -> Params:
        return Params(T[:p], T[p])

    if isinstance(precond, _Cholesky):
        # by L^{-1}, so that each evaluation maps coordinates by a batched product (cheap to run
        # and to compile, with a product for its transpose) rather than a triangular solve
        tri, tri_inv = precond
        if tri_inv is None:
            raise ValueError("a Cholesky preconditioner reaches the solve with its inverse (see _solve_block)")

        def to_theta(v: Params) -> Params:
            return split(jnp.einsum("nji,jn->in", tri_inv, stacked(v)))

        def to_solver(theta: Params) -> Params:
            return _cholesky_to_solver(tri, theta)
    elif isinstance(precond, _Shared):
        # one GEMM with the shared basis each way
        def to_theta(v: Params) -> Params:
            return split(precond.basis @ (precond.scale * stacked(v)))

        def to_solver(theta: Params) -> Params:
            return split((precond.basis.T @ stacked(theta)) / precond.scale)
    elif isinstance(precond, _Diagonal):
        def to_theta(v: Params) -> Params:
            return split(precond.scale * stacked(v))

        def to_solver(theta: Params) -> Params:
            return split(stacked(theta) / precond.scale)
    else:
        def to_theta(v):
            return v

        def to_solver(theta):
            return theta

    # ProximalGradient may fit a smooth problem too: then its penalty is in the objective and
    # its proximal operator is the identity
    penalised = reg.smooth

    def objective_on(data: _Chunks):
        def objective(v):
            theta, pullback = jax.vjp(to_theta, v)
            loss, g_w, g_b = _data_pass(data, theta.coef * mask, theta.intercept, fn, with_grad=True)
            g_coef = weight * g_w * mask
            values = weight * loss
            if penalised:
                pen, pen_vjp = jax.vjp(lambda c: weight * penalty(Params(c, None)), theta.coef)
                values = values + pen
                g_coef = g_coef + pen_vjp(jnp.ones_like(pen))[0]
            return values, pullback(Params(g_coef, weight * g_b))[0]

        return objective

    objective = objective_on(chunks)

    if penalised:
        def prox(theta, hyperparams, scaling=1.0):
            return theta
    else:
        def prox(theta, hyperparams, scaling=1.0):
            return Params(reg.prox(theta.coef, strength, scaling), theta.intercept)

    def objective_value(v):
        theta = to_theta(v)
        total = jnp.sum(weight * data_loss(theta))
        return total + jnp.sum(weight * penalty(theta)) if penalised else total

    # Line-search solvers that use gradients at every trial point get each neuron's value and
    # gradient from one pass; GradientDescent and ProximalGradient backtrack on values alone,
    # so they get the cheaper value-only pass and differentiate it when they need a gradient.
    with_grad = _solvers.has_grad_in_state(config.solver_name)
    sampled = None
    if _solvers.is_stochastic(config.solver_name):
        # a minibatch is the rows ``rows`` of the block's data, read as one chunk: one product
        def batch_fun(v, rows):
            size = rows.shape[0]
            return objective_on(_Chunks(chunks.X[rows], chunks.y[rows], size, jnp.asarray(size, jnp.int32)))(v)

        sampled = _solvers.SampledObjective(
            batch_fun, chunks.n_valid, chunks.X.shape[0], chunks.rows,
            lambda v: _svrg_smoothness(chunks, mask, to_theta(v), config),
            None if penalised else lambda v: weight * penalty(to_theta(v)))
    solver = _solvers.make_solver(config.solver_name, objective if with_grad else objective_value, prox,
                                  dict(config.solver_kwargs), sampled)

    if with_grad:
        def error(v_old, v_new, state):
            return _neuron_norm(state.grad)
    else:
        def error(v_old, v_new, state):
            step = jax.tree_util.tree_map(lambda a, b: a - b, v_new, v_old)
            return _neuron_norm(step) / jnp.maximum(state.stepsize, jnp.finfo(mask.dtype).tiny)

    return _Problem(solver, to_theta, to_solver, data_loss, penalty, error)


def _svrg_smoothness(chunks: _Chunks, mask, theta: Params, config: FitConfig):
    """Bounds ``(l_smooth, l_smooth_max)`` near ``theta`` of each neuron's mean and one-sample
    loss smoothness in the solver's coordinates, each of shape (n_neurons,), for SVRG's step size.

    One sample's loss has the Hessian ``h_i a_i a_i^T``, ``a_i = [x_i, 1]`` (masked). In
    preconditioned coordinates the mean loss's Hessian is the identity at the start (so
    ``l_smooth = 1``) and ``a_i^T P^{-1} a_i`` is at most ``a_i^T G^{-1} a_i / h`` with ``G`` the
    unmasked Gram matrix and ``h`` the mean curvature; in plain coordinates it is ``||a_i||^2``
    and ``l_smooth`` is about ``h * lambda_max(G)``.
    """
    dtype = mask.dtype
    gram = _gram(chunks, mask.shape[0], dtype)
    eye = jnp.eye(gram.shape[0], dtype=dtype)
    jitter = 1e-7 if dtype == jnp.float32 else 1e-12
    form = jnp.linalg.inv(gram + jitter * jnp.trace(gram) / gram.shape[0] * eye) if config.preconditioned else eye
    fn2 = _elementwise(config.observation, config.link, 2)
    weights, intercept = theta.coef * mask, theta.intercept

    def body(carry, x, own, yy, valid, w):
        h = jnp.where(valid, fn2(yy, x @ weights + intercept), 0.0)
        a = jnp.concatenate([x, jnp.ones((x.shape[0], 1), dtype)], axis=1)
        q = jnp.sum((a @ form) * a, axis=1)
        return carry[0] + jnp.sum(h, axis=0), jnp.maximum(carry[1], jnp.max(jnp.abs(h) * q[:, None], axis=0))

    zeros = jnp.zeros(weights.shape[1], dtype)
    h_sum, hq_max = _reduce(chunks, body, (zeros, zeros))
    h = h_sum / chunks.n_valid.astype(dtype)
    h = jnp.where(jnp.isfinite(h) & (h > 0), h, 1.0)
    if config.preconditioned:
        return jnp.ones_like(h), hq_max / h
    return h * jnp.linalg.eigvalsh(gram)[-1], hq_max


def _safe_start(config: FitConfig, init: Params, active) -> Params:
    """Start inactive neurons where their (validated, finite) data give a finite loss.

    Their loss is weighted by 0, so they contribute exact zeros and never NaN; a neuron with
    no events gets the intercept matching a mean response of 1 (0.5 for Bernoulli).
    """
    safe_mean = 0.5 if config.observation.name == "Bernoulli" else 1.0
    safe_b = jnp.asarray(initial_intercept(config.inverse_link, np.asarray(safe_mean)), init.intercept.dtype)
    coef = jnp.where(active[None, :], init.coef, 0.0)
    intercept = jnp.where(active, init.intercept, safe_b)
    return Params(coef, intercept)


def _precondition(kind: str, design, chunks: _Chunks, mask, theta0: Params, strength, active, config: FitConfig,
                  known_h=None):
    """The block's preconditioner and the curvature it was built with, ``(precond, h)`` (None,
    None when the solver is not preconditioned).

    ``design`` is ``DesignGram.for_preconditioner(kind, ...)`` when the caller computed the Gram
    matrix once for several blocks; None computes it here from the row chunks. ``known_h``
    (n_neurons,): a curvature to use where every entry is finite, instead of measuring it at
    ``theta0`` (one pass over the samples).
    """
    if not config.preconditioned:
        return None, None
    if design is None and _n_own(chunks):
        # each neuron's Gram matrix of [X, F_n, 1]; "shared" is refused with own features
        gram = _own_gram(chunks, mask.shape[0] - _n_own(chunks), mask.shape[1], mask.dtype)
        design = gram if kind == "cholesky" else jnp.diagonal(gram, axis1=1, axis2=2).T
    elif design is None:
        gram = _gram(chunks, mask.shape[0], mask.dtype)
        if kind == "cholesky":
            design = gram
        elif kind == "diagonal":
            design = jnp.diagonal(gram)
        else:
            column = jnp.concatenate([mask[:, jnp.argmax(active)], jnp.ones((1,), mask.dtype)])
            design = _Eigen(*_restricted_eigh(gram, column))
    def measure():
        fn2 = _elementwise(config.observation, config.link, 2)
        return _curvature(chunks, theta0.coef * mask, theta0.intercept, fn2)

    if known_h is None:
        h = measure()
    else:
        known_h = known_h.astype(mask.dtype)
        h = jax.lax.cond(jnp.all(jnp.isfinite(known_h)), lambda: known_h, measure)
    return _preconditioner(kind, design, mask, h, config.regularizer.ridge_diagonal(strength)), h


def _extra_args(config: FitConfig) -> tuple:
    # ProximalGradient takes the prox hyperparameters positionally; ours live in the closure
    return (None,) if config.solver_name == "ProximalGradient" else ()


def _rank(chunks: _Chunks, p: int, dtype):
    """Rank of the data rows of X, as ``numpy.linalg.matrix_rank`` computes it, from row chunks.

    The triangular factor R of X (X = QR) has X's singular values; it is updated one row chunk
    at a time by the QR of R stacked on the chunk.
    """
    def body(R, x, own, yy, valid, w):
        return jnp.linalg.qr(jnp.concatenate([R, jnp.where(valid, x, 0.0)]), mode="r")

    s = jnp.linalg.svd(_reduce(chunks, body, jnp.zeros((p, p), dtype)), compute_uv=False)
    tol = s.max(initial=0.0) * jnp.maximum(chunks.n_valid, p).astype(dtype) * jnp.finfo(dtype).eps
    return jnp.sum(s > tol)


def _dof_resid(config: FitConfig, chunks: _Chunks, coef, n_other=0):
    """NeMoS's residual degrees of freedom, shape (n_neurons,).

    ``n_other`` counts the columns of the full design that the block's view leaves out (the
    other neurons' own features, masked out for all of its neurons): NeMoS counts every column.
    Unregularised, the rank of the full design is taken as the rank of X plus one for each own
    feature column (exact when those columns are independent of each other and of X).
    """
    p, n_neurons = coef.shape
    n, dtype = chunks.n_valid, coef.dtype
    name = config.regularizer.name
    if name in ("Lasso", "ElasticNet", "GroupLasso"):
        nnz = jnp.sum(~jnp.isclose(coef, 0.0), axis=0)
        return (n - nnz - 1).astype(dtype)
    if name == "Ridge":
        return jnp.full((n_neurons,), n - p - n_other - 1, dtype)
    k = _n_own(chunks)
    return jnp.full((n_neurons,), n - _rank(chunks, p - k, dtype) - k - n_other - 1, dtype)


def _scale(config: FitConfig, chunks: _Chunks, coef, intercept, dof):
    """Each neuron's scale estimate (shape (n_neurons,)), one row chunk at a time.

    Every ``estimate_scale`` is a sum over samples of terms that vanish where ``y`` equals the
    rate, divided by ``dof``, plus a part that does not depend on ``y``: the terms are summed
    over chunks (rows that are not data observe exactly their rate) and the part added once.
    """
    obs, link = config.observation, config.link

    def body(acc, x, own, yy, valid, w):
        rate = link(_linear(x, own, coef, intercept))
        ones = jnp.ones_like(dof)
        return acc + obs.estimate_scale(jnp.where(valid, yy, rate), rate, ones) - obs.estimate_scale(rate, rate, ones)

    total = _reduce(chunks, body, jnp.zeros_like(dof))
    rate = predict_rate(link, jnp.zeros((1, coef.shape[0]), coef.dtype), coef, intercept)
    return total / dof + obs.estimate_scale(rate, rate, dof)


@partial(jax.jit, static_argnames=("config", "kind", "host"))
def _solve(X, y, mask, init: Params, strength, active, n_valid, design, config: FitConfig, kind: str,
           host: HostLayout | None = None, warm_start: WarmStart | None = None, own=None, n_other=0,
           factor=None):
    """The one solve loop of every fit. With ``host``, ``X`` is the token of a registered reader
    and ``y`` is None: the samples are fed from the host chunk by chunk. ``kind`` and ``design``
    choose the preconditioner (see ``_precondition``). ``warm_start`` (L-BFGS only) seeds the
    solver's curvature pairs and, where its loss is finite, the objective and gradient at
    ``init`` (which must be the point it was taken at); the solve's own comes back likewise,
    and only then (a plain fit compiles without it). ``own`` (in memory) and ``n_other``: the
    block's own features, see ``fit_block``. ``factor``: the Cholesky preconditioner, the
    curvature it was built with and the start in its coordinates, ``(_Cholesky, h, v0)``, from
    ``_factor`` (see ``_solve_block``); None builds the preconditioner here."""
    theta0 = _safe_start(config, init, active)
    chunks = _chunk(X, y, n_valid, own=own) if host is None else _host_chunk(host, X, n_valid)
    v0 = None
    if factor is None:
        precond, h = _precondition(kind, design, chunks, mask, theta0, strength, active, config,
                                   _known_curvature(warm_start, active))
    else:
        precond, h, v0 = factor
    prob = _build(chunks, mask, strength, active, precond, config)
    solver = prob.solver
    v0 = prob.to_solver(theta0) if v0 is None else v0
    extra = _extra_args(config)
    lbfgs = config.solver_name == "LBFGS"
    weight = active.astype(mask.dtype)

    def penalty_and_grad(coef):
        # each neuron's penalty and its gradient, as the objective adds them
        pen, pen_vjp = jax.vjp(lambda c: weight * prob.penalty(Params(c, None)), coef)
        return pen, pen_vjp(jnp.ones_like(pen))[0]

    if warm_start is None or not lbfgs:
        state0 = solver.init_state(v0, *extra)
    else:
        # steps map like parameters, gradients like gradients (the transpose map); the data
        # part of the loss and gradient does not depend on the strength, the penalty's is added
        pull = jax.vjp(prob.to_theta, v0)[1]
        pen, pen_grad = penalty_and_grad(theta0.coef)
        known = active & jnp.isfinite(warm_start.loss)
        value = jnp.where(known, weight * warm_start.loss + pen, jnp.inf)
        grad = pull(Params(weight * warm_start.grad.coef + pen_grad, weight * warm_start.grad.intercept))[0]
        grad = jax.tree_util.tree_map(lambda g: jnp.where(known, g, 0.0), grad)
        state0 = solver.init_state(v0, (jax.vmap(prob.to_solver)(warm_start.steps),
                                        jax.vmap(lambda g: pull(g)[0])(warm_start.grad_changes)), (value, grad))
    n_neurons = mask.shape[1]
    maxiter, tol = solver.maxiter, solver.tol

    def cond(carry):
        _, state, it, _, err = carry
        return (it < maxiter) & jnp.any(active & ~(err <= tol) & ~_solvers.stalled(state))

    def body(carry):
        v, state, it, n_iter, err = carry
        v_new, state_new = solver.update(v, state, *extra)
        err_new = prob.error(v, v_new, state_new)
        n_iter = jnp.where(err <= tol, n_iter, it + 1)
        return v_new, state_new, it + 1, n_iter, err_new

    init_err = jnp.full((n_neurons,), jnp.inf, mask.dtype)
    carry = (v0, state0, jnp.asarray(0), jnp.zeros((n_neurons,), jnp.int32), init_err)
    v, state, _, n_iter, err = jax.lax.while_loop(cond, body, carry)

    theta = prob.to_theta(v)
    coef = theta.coef * mask
    intercept = theta.intercept
    loss = _solvers.neuron_values(state)
    if loss is None:
        loss = prob.data_loss(theta) + prob.penalty(theta)
    dof = _dof_resid(config, chunks, coef, n_other)
    scale = _scale(config, chunks, coef, intercept, dof)
    finite = jnp.all(jnp.isfinite(coef), axis=0) & jnp.isfinite(intercept) & jnp.isfinite(loss)
    warm = None
    if lbfgs and warm_start is not None:
        push = jax.vjp(prob.to_solver, theta)[1]
        steps, changes, grad = _solvers.lbfgs_memory(state, v)
        grad = push(grad)[0]
        pen, pen_grad = penalty_and_grad(theta.coef)
        warm = WarmStart(jax.vmap(prob.to_theta)(steps), jax.vmap(lambda g: push(g)[0])(changes),
                         jnp.where(active, state.value - pen, jnp.nan), Params(grad.coef - pen_grad, grad.intercept),
                         None if h is None else jnp.where(active, h, jnp.nan))
    return coef, intercept, scale, dof, n_iter, err, loss, finite, state, warm


def _known_curvature(warm_start: WarmStart | None, active):
    """The curvature a warm start carries, for the preconditioner (None: measure it)."""
    # inactive neurons never enter the solve: only the active ones' curvature must be known
    if warm_start is None or warm_start.curvature is None:
        return None
    return jnp.where(active, warm_start.curvature, 1.0)


@partial(jax.jit, static_argnames=("config", "kind", "host"))
def _factor(X, y, mask, init: Params, strength, active, n_valid, design, config: FitConfig, kind: str,
            host: HostLayout | None = None, warm_start: WarmStart | None = None, own=None):
    """The part of ``_solve`` before its loop for a Cholesky preconditioner: each neuron's factor,
    the curvature it was built with and the starting point in the solver's coordinates,
    ``(tri, h, v0)``; arguments as ``_solve``'s."""
    theta0 = _safe_start(config, init, active)
    chunks = _chunk(X, y, n_valid, own=own) if host is None else _host_chunk(host, X, n_valid)
    precond, h = _precondition(kind, design, chunks, mask, theta0, strength, active, config,
                               _known_curvature(warm_start, active))
    return precond.tri, h, _cholesky_to_solver(precond.tri, theta0)


def _solve_block(X, y, mask, init: Params, strength, active, n_valid, design, config: FitConfig, kind: str,
                 host: HostLayout | None = None, warm_start: WarmStart | None = None, own=None, n_other=0):
    """``_solve``; with a Cholesky preconditioner, in two compiled programs around the host.

    ``_factor`` computes the factors, the host inverts them (``_lower_inverse``) and ``_solve``
    runs with the inverse (and the factors, for a fit from a warm start). The two programs
    compile in about 70% of the time of the one solve that inverted the factors itself, and
    both are kept by the persistent compilation cache.
    """
    factor = None
    if config.preconditioned and kind == "cholesky":
        if host is None:
            # placed once for both programs (a numpy array would be copied by each call)
            X, y, own = jax.device_put((X, y, own))
        tri, h, v0 = _factor(X, y, mask, init, strength, active, n_valid, design, config, kind, host=host,
                             warm_start=warm_start, own=own)
        inverse = _lower_inverse(tri)
        # a plain fit needs the factor only for its start, mapped here: the solve holds the
        # inverse alone (a path maps its warm start both ways, and keeps both)
        factor = (_Cholesky(tri if warm_start is not None else None, inverse), h, v0)
        del tri
    return _solve(X, y, mask, init, strength, active, n_valid, design, config, kind, host=host,
                  warm_start=warm_start, own=own, n_other=n_other, factor=factor)


def fit_block(X, y, mask, config: FitConfig, init: Params | None = None, strength=None,
              n_samples: int | None = None, gram=None, preconditioner: str = "auto",
              warm_start: WarmStart | None = None, own=None, n_other: int = 0) -> BlockResult:
    """Fit a block of neurons sharing the design ``X``; compiled once per shape and config.

    Besides the shared ``X``, each neuron may have ``K`` features of its own (``own``, e.g. its
    spike history): neuron ``n``'s linear predictor is then
    ``X[t] @ (coef * mask)[:p, n] + sum_k own[t, k, n] * (coef * mask)[p + k, n] + intercept[n]``,
    the coefficients of shape (p + K, n_neurons). This is the masked product over the full
    design ``[X, F_0, ..., F_{N-1}]`` whose mask lets neuron ``n`` see only ``F_n``, at
    ``K`` rather than ``N * K`` multiply-adds per sample and neuron.

    Parameters
    ----------
    X : array of shape (n_samples, n_features)
        Design matrix, NaN rows already removed.
    y : array of shape (n_samples, n_neurons)
        Responses of the block's neurons: of ``X``'s float type, or counts held in one of
        ``NARROW_COUNTS`` (uint8, uint16), a half or a quarter of the memory, which the solve
        turns into floats one row chunk at a time (exactly: the results are the same).
    mask : array of shape (n_features [+ K], n_neurons)
        1 where a feature predicts a neuron, 0 where it does not (own features last).
    config : FitConfig
    init : Params, optional
        Starting coefficients (n_features [+ K], n_neurons) and intercepts (n_neurons,); default
        zeros and the intercepts matching each neuron's mean response.
    strength : per-neuron strength arrays, optional
        As returned by ``config.regularizer.expand_strength`` (neuron axis last) for
        ``n_features [+ K]`` features.
    n_samples : int, optional
        Data rows of ``X`` and ``y``: the rows after them are zero padding. Arrays already
        padded to ``bucket_rows(n_samples, bucket_neurons(n_neurons))`` rows (and ``y`` to
        ``bucket_neurons(n_neurons)`` columns) are used as given, without a copy; JAX arrays
        then stay on their device. Default: every row is data.
    gram : DesignGram, optional
        ``DesignGram(X)``, when the caller fits several blocks on one ``X`` and computes it
        once; default computed here for a numpy ``X``, inside the solve for a JAX array (only
        preconditioned solvers use it).
    preconditioner : {"auto", "cholesky", "shared", "diagonal"}
        Change of variables of preconditioned solvers; ``"auto"`` is
        ``choose_preconditioner(mask)``. ``"shared"`` assumes the active neurons share one mask
        column (it uses the first active neuron's). Every choice reaches the same optimum.
        With ``own``, each neuron's Gram matrix includes its own features, computed inside
        the solve: ``"cholesky"`` factors each neuron's ``[X F_n 1]`` Gram matrix,
        ``"diagonal"`` scales by its diagonal, and ``"shared"`` (one matrix for the block) is
        refused.
    warm_start : WarmStart, optional
        Where the L-BFGS solver starts from (ignored by other solvers): a previous
        ``BlockResult.warm_start`` on the same samples, for a nearby problem (the next strength
        of a path, its penalty's curvature change added to ``grad_changes``), with ``init`` the
        parameters that fit returned. Its curvature pairs make the first steps near-Newton
        steps, and its loss and gradient save the evaluation of the starting point (neurons
        whose ``loss`` is NaN evaluate it). The optimum is unchanged. Only a fit given a
        ``warm_start`` returns one (``BlockResult.warm_start``): a path's first fit starts
        from ``core.cv.empty_warm_start``, which carries nothing.
    own : array of shape (n_samples, K, n_neurons), optional
        Each neuron's own features (rows padded like ``y``'s); default none. Not with a
        ``gram`` (the Gram matrix then differs by neuron) nor with a stochastic solver.
    n_other : int
        Columns of the full design outside this block's view (the other neurons' own
        features): counted in the residual degrees of freedom as NeMoS counts every column.

    Returns
    -------
    BlockResult

    Examples
    --------
    >>> import numpy as np
    >>> from distglm.core import FitConfig, fit_block, PoissonObservations, UnRegularized
    >>> rng = np.random.default_rng(0)
    >>> X = rng.normal(size=(500, 3)).astype("float32")
    >>> y = rng.poisson(np.exp(X @ np.array([[0.3, 0.0], [0.0, -0.2], [0.1, 0.2]]))).astype("float32")
    >>> cfg = FitConfig(PoissonObservations(), "exp", UnRegularized(), "LBFGS", (("tol", 1e-6),))
    >>> res = fit_block(X, y, np.ones((3, 2), "float32"), cfg)
    >>> res.coef.shape, bool(res.converged.all())
    ((3, 2), True)
    """
    # host-side preparation in numpy: each jnp operation here would be one more compilation
    dtype = jax.dtypes.canonicalize_dtype(X.dtype if hasattr(X, "dtype") else np.result_type(X))
    X = X if isinstance(X, jax.Array) and X.dtype == dtype else np.asarray(X, dtype=dtype)
    if not (isinstance(y, jax.Array) and y.dtype in (dtype, *NARROW_COUNTS)):
        y = np.asarray(y)
        y = y if y.dtype in NARROW_COUNTS else y.astype(dtype, copy=False)
    n_features, n_neurons = X.shape[1], y.shape[1]
    n_samples = X.shape[0] if n_samples is None else int(n_samples)
    n_own = _check_own(own, X.shape[0], n_neurons, config, n_other)
    if n_own and gram is not None:
        raise InputError("gram must be None with own features: each neuron's Gram matrix includes its own features, "
                         "computed in the solve")
    if gram is not None and (not isinstance(gram, DesignGram) or gram.matrix.shape != (n_features + 1,) * 2
                             or gram.matrix.dtype != dtype):
        got = gram.matrix.shape if isinstance(gram, DesignGram) else type(gram).__name__
        raise InputError(f"gram must be the DesignGram of X, of shape {(n_features + 1,) * 2} and dtype {dtype}; "
                         f"got {got}")
    if init is None:
        init = _init_for_mean(config, np.sum(np.asarray(y)[:n_samples], axis=0, dtype=dtype) / n_samples,
                              n_features + n_own, dtype)

    # Pad to the shape bucket: zero rows past n_samples count for nothing.
    n_cols = bucket_neurons(n_neurons)
    n_rows = bucket_rows(n_samples, n_cols)
    # padded in buffers the device takes without a copy
    if X.shape[0] != n_rows:
        X = _padded(np.asarray(X), (n_rows, n_features), n_samples)
    if y.shape != (n_rows, n_cols):
        y = _padded(np.asarray(y), (n_rows, n_cols), n_samples)
    if n_own:
        own = np.asarray(own, dtype)
        if own.shape != (n_rows, n_own, n_cols):
            own = _padded(own, (n_rows, n_own, n_cols), n_samples)

    if gram is None and config.preconditioned and isinstance(X, np.ndarray) and not n_own:
        # on the host, one BLAS product; device arrays get theirs inside the solve
        gram = DesignGram(X, n_samples)

    if warm_start is not None and not isinstance(warm_start, WarmStart):
        raise InputTypeError(f"warm_start must be a WarmStart (BlockResult.warm_start); got {type(warm_start).__name__}")

    def solve(mask, init, strength, active, design, kind, warm_start):
        return _solve_block(X, y, mask, init, strength, active, np.int32(n_samples), design, config, kind,
                            warm_start=warm_start, own=own, n_other=np.int32(n_other))

    return _run(solve, mask, init, strength, config, dtype, preconditioner, gram, warm_start, own=bool(n_own))


def _check_own(own, n_rows: int, n_neurons: int, config: FitConfig, n_other) -> int:
    """``own`` checked against the block (shape (n_rows, K, n_neurons)): its K, 0 for None."""
    if isinstance(n_other, bool) or not isinstance(n_other, (int, np.integer)) or n_other < 0:
        raise InputError(f"n_other must be a non-negative int; got {n_other!r}")
    if own is None:
        return 0
    shape = np.shape(own)
    if len(shape) != 3 or shape[0] != n_rows or shape[2] != n_neurons or shape[1] < 1:
        raise InputError(f"own must be of shape (n_samples, K, n_neurons) = ({n_rows}, K, {n_neurons}); "
                         f"got shape {shape}")
    if _solvers.is_stochastic(config.solver_name):
        raise InputError(f"solver {config.solver_name!r} samples rows at random and takes no own features; "
                         "choose a full-batch solver")
    return shape[1]


def fit_streamed(source: ChunkSource, mask, config: FitConfig, init: Params | None = None,
                 strength=None, preconditioner: str = "auto", n_other: int = 0, gram=None) -> BlockResult:
    """Fit a block of neurons whose samples are fed from the host, one chunk of rows at a time.

    The same solve as :func:`fit_block` (and the same results, to rounding): every pass over
    the samples calls ``source.read`` for each chunk, so memory holds one chunk at a time, not
    the samples. Compiled once per layout (chunks, rows, features, neurons) and config.

    Parameters
    ----------
    source : ChunkSource
        The samples, chunk by chunk, in the fit's float dtype or any numeric dtype.
    mask : array of shape (n_features, n_neurons)
    config : FitConfig
    init : Params, optional
        Default zeros and the intercepts matching each neuron's mean response (one extra pass).
    strength : per-neuron strength arrays, optional
    preconditioner : {"auto", "cholesky", "shared", "diagonal"}
        As in :func:`fit_block`; the Gram matrix is accumulated over the chunks in the solve,
        unless ``gram`` gives it.
    n_other : int
        As in :func:`fit_block`, for a source with own features (``source.n_own``).
    gram : DesignGram, optional
        The Gram matrix of the source's design (``DesignGram.from_chunks``), when several blocks
        share the design: computed once for them all instead of in each block's solve (not with
        own features, whose Gram matrices differ by neuron).

    Returns
    -------
    BlockResult

    Notes
    -----
    The chunks are read in a callback that JAX runs on one of its own threads, so float64 must
    be set globally (``jax.config.update("jax_enable_x64", True)``, as actors do): the
    thread-local ``jax.enable_x64()`` context does not reach that thread.

    Examples
    --------
    >>> import numpy as np
    >>> from distglm.core import FitConfig, PoissonObservations, UnRegularized
    >>> rng = np.random.default_rng(0)
    >>> X = rng.normal(size=(600, 3)).astype("float32")
    >>> y = rng.poisson(np.exp(X @ np.array([[0.3, 0.0], [0.0, -0.2], [0.1, 0.2]]))).astype("float32")
    >>> src = ChunkSource(lambda i: (X[200 * i:200 * i + 200], y[200 * i:200 * i + 200], np.ones(200, bool)),
    ...                   n_chunks=3, rows=200, n_features=3, n_neurons=2, n_valid=600)
    >>> cfg = FitConfig(PoissonObservations(), "exp", UnRegularized(), "LBFGS", (("tol", 1e-6),))
    >>> res = fit_streamed(src, np.ones((3, 2), "float32"), cfg)
    >>> bool(np.allclose(res.coef, fit_block(X, y, np.ones((3, 2), "float32"), cfg).coef, atol=1e-4))
    True
    """
    if not isinstance(source, ChunkSource):
        raise TypeError(f"source must be a ChunkSource; got {type(source).__name__}")
    if _solvers.is_stochastic(config.solver_name):
        # minibatches are rows drawn at random from all the samples, which a stream cannot give
        raise ValueError(f"solver {config.solver_name!r} samples rows at random and cannot fit streamed samples; "
                         "fit the block in memory (fit_block) or choose a full-batch solver")
    dtype = jax.dtypes.canonicalize_dtype(np.float64)
    n_cols = bucket_neurons(source.n_neurons)
    layout = source.layout(dtype, n_cols)
    _check_own(None, 0, 0, config, n_other)
    expected = ((layout.rows, layout.n_features), (layout.rows, source.n_neurons), (layout.rows,))
    if source.n_own:
        expected = expected + ((layout.rows, source.n_own, source.n_neurons),)

    def read(i):
        x, yy, keep, *own = source.read(i)
        shapes = tuple(np.shape(a) for a in (x, yy, keep, *own))
        if shapes != expected:
            raise ValueError(f"chunk {i} of the source must have shapes {expected}; got {shapes}")
        pad = n_cols - source.n_neurons
        yy = np.pad(np.asarray(yy, dtype), ((0, 0), (0, pad))) if pad else np.asarray(yy, dtype)
        own = [np.pad(np.asarray(a, dtype), ((0, 0), (0, 0), (0, pad))) if pad else np.asarray(a, dtype) for a in own]
        return (np.asarray(x, dtype), yy, np.asarray(keep, bool), *own)

    if init is None:
        total = np.zeros(source.n_neurons, dtype)
        for i in range(source.n_chunks):
            _, yy, keep, *_ = source.read(i)
            total += np.sum(np.asarray(yy)[np.asarray(keep, bool)], axis=0, dtype=dtype)
        init = _init_for_mean(config, total / source.n_valid, source.n_features + source.n_own, dtype)

    token = next(_TOKENS)
    _READERS[token] = read
    try:
        def solve(mask, init, strength, active, design, kind, warm_start):
            return _solve_block(np.int32(token), None, mask, init, strength, active, np.int32(source.n_valid),
                                design, config, kind, host=layout, n_other=np.int32(n_other))

        if gram is not None and source.n_own:
            raise InputError("gram cannot describe a source with own features: each neuron's Gram matrix differs")
        if gram is not None and not isinstance(gram, DesignGram):
            raise InputTypeError(f"gram must be a DesignGram; got {type(gram).__name__}")
        return _run(solve, mask, init, strength, config, dtype, preconditioner, gram, own=bool(source.n_own))
    finally:
        del _READERS[token]


def _run(solve: Callable, mask, init: Params, strength, config: FitConfig, dtype, preconditioner: str,
         gram, warm_start: WarmStart | None = None, own: bool = False) -> BlockResult:
    """Pad the neurons to their bucket, run ``solve`` (retrying without neurons that diverge), and
    gather the block's results without the padding.

    Padding neurons have a NaN intercept, so they are inactive from the start and never enter
    the solve. The preconditioner ``preconditioner`` ("auto": ``choose_preconditioner``) is
    built from ``gram`` (a ``DesignGram``), or inside the solve when it is None; ``own``: the
    block has own features.
    """
    if preconditioner not in PRECONDITIONERS:
        raise InputError(f"preconditioner must be one of {PRECONDITIONERS}; got {preconditioner!r}")
    if own and preconditioner == "shared":
        raise InputError("the shared preconditioner needs one Gram matrix for the whole block, and own features give "
                         "each neuron its own: choose 'auto', 'cholesky' or 'diagonal'")
    n_neurons = np.shape(init.intercept)[0]
    n_cols = bucket_neurons(n_neurons)

    def pad_neurons(a, **kwargs):
        a = np.asarray(a, dtype=dtype)
        return np.pad(a, [(0, 0)] * (a.ndim - 1) + [(0, n_cols - a.shape[-1])], **kwargs)

    mask = pad_neurons(mask)
    init = Params(pad_neurons(init.coef), pad_neurons(init.intercept, constant_values=np.nan))
    strength = jax.tree_util.tree_map(lambda s: pad_neurons(s, mode="edge"), strength)
    if warm_start is not None:
        warm_start = jax.tree_util.tree_map(pad_neurons, warm_start)

    status = np.where(np.isfinite(np.asarray(init.intercept)), STATUS_OK, STATUS_NONFINITE_INIT).astype(np.int8)
    kind = choose_preconditioner(mask, status == STATUS_OK, own) if preconditioner == "auto" else preconditioner
    design = None
    if config.preconditioned and gram is not None:
        design = gram.for_preconditioner(kind, mask, status == STATUS_OK)
    for _ in range(_MAX_RETRIES):
        active = status == STATUS_OK
        coef, intercept, scale, dof, n_iter, err, loss, finite, state, warm = solve(mask, init, strength, active,
                                                                                      design, kind, warm_start)
        newly_bad = np.asarray(active) & ~np.asarray(finite)
        if not newly_bad.any():
            break
        # a diverging neuron poisons a joint line search (jaxopt's solvers): drop it and refit
        # the others
        status[newly_bad] = STATUS_NONFINITE_SOLUTION
    status = status[:n_neurons]
    coef, intercept, scale, dof, n_iter, err, loss = (
        np.asarray(a)[..., :n_neurons] for a in (coef, intercept, scale, dof, n_iter, err, loss))
    state = _slice_state(state, n_neurons)
    if warm is not None:
        warm = jax.tree_util.tree_map(lambda a: np.asarray(a)[..., :n_neurons], warm)
    tol = _solver_tol(config)
    converged = (status == STATUS_OK) & (err <= tol)
    status = np.where((status == STATUS_OK) & ~converged, STATUS_NOT_CONVERGED, status).astype(np.int8)
    failed = status >= STATUS_NONFINITE_INIT
    nan = np.asarray(np.nan, dtype=np.dtype(dtype.name))
    return BlockResult(
        coef=np.where(failed[None, :], nan, np.asarray(coef)),
        intercept=np.where(failed, nan, np.asarray(intercept)),
        scale=np.where(failed, nan, np.asarray(scale)),
        dof_resid=np.asarray(dof),
        n_iter=np.asarray(n_iter, dtype=np.int32),
        converged=converged,
        loss=np.where(failed, nan, np.asarray(loss)),
        grad_norm=np.where(failed, nan, err),
        status=status,
        state=state,
        warm_start=warm,
    )


def _solver_tol(config: FitConfig) -> float:
    kwargs = dict(config.solver_kwargs)
    if "tol" in kwargs:
        return float(kwargs["tol"])
    return float(_solvers.SOLVERS[config.solver_name].tol)


def _flatten_state(state):
    """``[(name, leaf, per_neuron)]``; per-neuron leaves sit under a ``Params`` node or in one of
    the state's ``per_neuron_fields``."""
    out = []
    per_neuron_fields = getattr(state, "per_neuron_fields", ())
    for path, leaf in jax.tree_util.tree_flatten_with_path(state)[0]:
        names = [getattr(k, "name", getattr(k, "key", getattr(k, "idx", None))) for k in path]
        per_neuron = any(n in ("coef", "intercept") for n in names) or names[0] in per_neuron_fields
        out.append((".".join(str(n) for n in names), leaf, per_neuron))
    return out


def _slice_state(state, n_neurons: int):
    """The state as numpy arrays, its per-neuron leaves cut to the first ``n_neurons`` (padding dropped)."""
    leaves = [np.asarray(leaf)[..., :n_neurons] if per_neuron else np.asarray(leaf)
              for _, leaf, per_neuron in _flatten_state(state)]
    return jax.tree_util.tree_unflatten(jax.tree_util.tree_structure(state), leaves)


def state_leaves(state) -> dict[str, tuple[np.ndarray, bool]]:
    """Flatten a solver state into ``{name: (array, per_neuron)}`` for storage.

    A per-neuron leaf is shaped like the coefficients or the intercepts (neuron axis last);
    the other leaves describe the whole block (iteration count, step size, ...).
    """
    return {name: (np.asarray(leaf), per_neuron) for name, leaf, per_neuron in _flatten_state(state)}


def state_spec(config: FitConfig, n_samples: int, n_features: int, n_neurons: int, dtype, strength=None) -> dict:
    """Shapes of the solver state of a block, without compiling or running anything.

    Returns ``{name: (shape, dtype_str, per_neuron)}``; per-neuron shapes exclude the
    trailing neuron axis. ``strength`` is the block's strength pytree (or None).
    """
    dtype = np.dtype(dtype)
    sds = jax.ShapeDtypeStruct
    args = (
        sds((n_samples, n_features), dtype),
        sds((n_samples, n_neurons), dtype),
        sds((n_features, n_neurons), dtype),
        Params(sds((n_features, n_neurons), dtype), sds((n_neurons,), dtype)),
        jax.tree_util.tree_map(lambda a: sds(np.shape(a), dtype), strength),
        sds((n_neurons,), np.dtype(bool)),
        sds((), np.dtype(np.int32)),
        sds((n_features + 1,), dtype) if config.preconditioned else None,
    )
    # the solver state does not depend on the preconditioner
    out = jax.eval_shape(partial(_solve, config=config, kind="diagonal"), *args)
    spec = {}
    for name, leaf, per_neuron in _flatten_state(out[8]):
        shape = tuple(leaf.shape[:-1]) if per_neuron else tuple(leaf.shape)
        spec[name] = (shape, np.dtype(leaf.dtype).str, per_neuron)
    return spec


class UpdateState(NamedTuple):
    """State of step-by-step fitting: the solver's state and the coordinates it works in.

    Attributes
    ----------
    solver_state : the jaxopt solver state
    precond : the preconditioner fixed at initialisation (a NamedTuple of arrays whose type
        says its kind), or None when the solver is not preconditioned
    """

    solver_state: Any
    precond: Any


def init_update_state(X, y, mask, params: Params, strength, config: FitConfig, preconditioner: str = "auto"):
    """Set up step-by-step fitting (``update_step``) from ``params`` on the data ``X``, ``y``.

    ``preconditioner`` as in ``fit_block``; ``"auto"`` needs a concrete ``mask``.
    """
    if preconditioner not in PRECONDITIONERS:
        raise InputError(f"preconditioner must be one of {PRECONDITIONERS}; got {preconditioner!r}")
    kind = choose_preconditioner(np.asarray(mask)) if preconditioner == "auto" else preconditioner
    precond = _step_preconditioner(X, y, mask, params, strength, config, kind)
    if isinstance(precond, _Cholesky):
        # inverted on the host, as for fit_block (see _solve_block)
        precond = _Cholesky(precond.tri, _lower_inverse(precond.tri))
    return _init_update_state(X, y, mask, params, strength, config, precond)


@partial(jax.jit, static_argnames=("config", "kind"))
def _step_preconditioner(X, y, mask, params: Params, strength, config: FitConfig, kind: str):
    active = jnp.ones(y.shape[1], dtype=bool)
    return _precondition(kind, None, _chunk(X, y), mask, params, strength, active, config)[0]


@partial(jax.jit, static_argnames=("config",))
def _init_update_state(X, y, mask, params: Params, strength, config: FitConfig, precond) -> UpdateState:
    active = jnp.ones(y.shape[1], dtype=bool)
    prob = _build(_chunk(X, y), mask, strength, active, precond, config)
    extra = _extra_args(config)
    return UpdateState(prob.solver.init_state(prob.to_solver(params), *extra), precond)


@partial(jax.jit, static_argnames=("config",))
def update_step(X, y, mask, params: Params, ustate: UpdateState, strength, config: FitConfig, weight=None):
    """One solver iteration on the data ``X``, ``y``; returns ``(params, UpdateState)``.

    ``weight`` of shape (n_samples,), optional: per-row weights summing to 1 that replace the mean
    over samples, so rows to ignore (NaN rows) are dropped with weight 0 under ``jax.jit`` too.
    """
    active = jnp.ones(y.shape[1], dtype=bool)
    prob = _build(_chunk(X, y, weight=weight), mask, strength, active, ustate.precond, config)
    extra = _extra_args(config)
    v, state = prob.solver.update(prob.to_solver(params), ustate.solver_state, *extra)
    theta = prob.to_theta(v)
    return Params(theta.coef * mask, theta.intercept), UpdateState(state, ustate.precond)


def dof_resid(config: FitConfig, X, coef):
    """Residual degrees of freedom per neuron (NeMoS's estimate), shape (n_neurons,)."""
    X = jnp.asarray(X)
    return _dof_resid(config, _chunk(X, None), jnp.asarray(coef, X.dtype))
