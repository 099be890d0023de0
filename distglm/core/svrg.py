"""Stochastic variance-reduced gradient solvers (SVRG, ProxSVRG) for a block of neurons.

The algorithm is NeMoS 0.2.8's (Johnson and Zhang 2013; Xiao and Zhang 2014 for the proximal
form): each epoch evaluates the full gradient at an anchor point, then takes about
``n_samples / batch_size`` steps, each on a minibatch of rows drawn with replacement, along the
variance-reduced direction ``g_B(x) - g_B(anchor) + g(anchor)`` (followed by the proximal
operator for ProxSVRG). The epoch's last point becomes the next anchor.

distglm runs it for every neuron of a block at once, neuron axis last: each minibatch costs
one matrix product for the whole block, and each neuron has its own step size, its own
anchor and its own stopping point. Two safeguards make a constant step safe where NeMoS has
no smoothness bound to offer (an exponential link is not globally smooth): an epoch that
raises a neuron's objective is undone for that neuron and its step size halved, and a neuron
whose gradient stops improving, or whose epochs keep being undone, stops, marked stalled.

The default step sizes are NeMoS's (Sebbouh et al. 2019, as ``svrg_stepsize``), from each
neuron's smoothness constants at the start (see ``PopulationSVRG.smoothness``).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp

__all__ = ["PopulationSVRG", "PopulationSVRGState", "SampledObjective", "svrg_stepsize", "default_batch_size",
           "DEFAULT_KEY"]

#: NeMoS 0.2.8's default seed (``jax.random.key(123)``), as a raw key (storable, hashable as a tuple)
DEFAULT_KEY = (0, 123)


def svrg_stepsize(batch_size, n_samples, l_smooth_max, l_smooth):
    """NeMoS 0.2.8's SVRG step size (Sebbouh et al. 2019) for the given smoothness constants.

    ``l_smooth_max`` bounds the smoothness of one sample's loss, ``l_smooth`` that of the mean
    loss; both may be arrays (one value per neuron), and so is the result.

    Examples
    --------
    >>> round(float(svrg_stepsize(1, 1000, 4.0, 1.0)), 6)
    0.041667
    """
    numerator = 0.5 * batch_size * (n_samples - 1)
    denominator = 3 * (n_samples - batch_size) * l_smooth_max + n_samples * (batch_size - 1) * l_smooth
    return numerator / denominator


def default_batch_size(n_samples: int, chunk_rows: int) -> int:
    """Rows per minibatch when none is given: a row chunk, while an epoch keeps at least 32
    steps, and never fewer than about ``sqrt(n_samples)``; a multiple of 8, at most ``n_samples``.

    NeMoS's theoretical optimum counts gradient evaluations of single samples and comes out at
    1 for long recordings; here a minibatch is one matrix product for a whole block, which
    costs little more for thousands of rows than for one, while each step also pays a fixed
    cost per neuron (the change of coordinates). ``chunk_rows`` is the block's row chunk
    (at most about 1M elements of ``y``, see ``fit._chunk_rows``), the size its full passes use.

    Examples
    --------
    >>> default_batch_size(200_000, 4096), default_batch_size(20_000, 32_768), default_batch_size(50, 50)
    (4096, 632, 8)
    """
    root = math.isqrt(n_samples)
    root += root * root < n_samples
    size = max(root, min(chunk_rows, n_samples // 32))
    return max(1, min(n_samples, -(-size // 8) * 8))


class SampledObjective(NamedTuple):
    """What SVRG needs of a problem besides its full objective.

    Attributes
    ----------
    batch_fun : callable
        ``batch_fun(params, rows) -> (values, grad)``: each neuron's mean smooth loss over the
        rows ``rows`` (int array of shape (batch_size,)), and its gradient.
    n_valid : int scalar (may be traced)
        Rows to sample from: ``rows`` are drawn in ``[0, n_valid)``.
    n_rows : int
        Rows of the (padded) data, static: the default batch size follows it.
    chunk_rows : int
        Rows of the chunks the full passes read, static: the default batch size follows it.
    smoothness : callable
        ``smoothness(params) -> (l_smooth, l_smooth_max)``, each of shape (n_neurons,): bounds
        of the mean loss's and of one sample's smoothness near ``params``.
    penalty : callable or None
        ``penalty(params) -> values`` of shape (n_neurons,): the non-smooth penalty that
        ``prox`` handles (None when the objective holds the whole penalty).
    """

    batch_fun: Callable
    n_valid: Any
    n_rows: int
    chunk_rows: int
    smoothness: Callable
    penalty: Callable | None = None


class PopulationSVRGState(NamedTuple):
    """State of :class:`PopulationSVRG`; per-neuron arrays have the neuron axis last.

    Parameter-shaped fields are pytrees like the parameters (a ``Params``).

    Attributes
    ----------
    iter_num : int scalar, epochs run (one full evaluation each)
    key : uint32 array of shape (2,), the random key of the next epoch
    value : array of shape (n_neurons,), each neuron's objective at its anchor
    grad : each neuron's gradient mapping at its anchor (the full gradient for a smooth
        problem), whose norm is its optimality error
    full_grad : the full gradient of the smooth part at each neuron's anchor
    candidate : the point the last epoch reached, evaluated by the next update
    stepsize : array of shape (n_neurons,), each neuron's step size
    rejected : int array of shape (n_neurons,), epochs in a row undone for each neuron
    best_grad_norm : array of shape (n_neurons,), the smallest optimality error so far
    since_best : int array of shape (n_neurons,), epochs since it last fell
    stalled : bool array of shape (n_neurons,), neurons that stopped without meeting ``tol``
    num_fun_eval : int scalar, full evaluations (each covers every neuron)
    """

    iter_num: Any
    key: Any
    value: Any
    grad: Any
    full_grad: Any
    candidate: Any
    stepsize: Any
    rejected: Any
    best_grad_norm: Any
    since_best: Any
    stalled: Any
    num_fun_eval: Any

    #: the fields that hold one value (or column) per neuron, neuron axis last
    per_neuron_fields = ("value", "grad", "full_grad", "candidate", "stepsize", "rejected", "best_grad_norm",
                         "since_best", "stalled")


def neuron_norm(tree):
    """2-norm per neuron of a pytree whose leaves have the neuron axis last, shape (n_neurons,)."""
    leaves = jax.tree_util.tree_leaves(tree)
    return jnp.sqrt(sum(jnp.sum(leaf**2, axis=tuple(range(leaf.ndim - 1))) for leaf in leaves))


def _where(cond, a, b):
    """Per neuron: ``a`` where ``cond`` (shape (n_neurons,)), else ``b``, leaf by leaf."""
    return jax.tree_util.tree_map(lambda x, y: jnp.where(cond, x, y), a, b)


def _axpy(alpha, x, y):
    """``y + alpha * x`` leaf by leaf, ``alpha`` of shape (n_neurons,)."""
    return jax.tree_util.tree_map(lambda a, b: b + alpha * a, x, y)


@dataclasses.dataclass(eq=False)
class PopulationSVRG:
    """(Prox-)SVRG run for every neuron of a block at once; one ``update`` is one epoch.

    An update evaluates the last epoch's end point on all the data (one pass), keeps it as each
    neuron's new anchor if it did not raise that neuron's objective (otherwise the neuron keeps
    its anchor and halves its step size), and then runs the next epoch's minibatch steps from
    the anchors. The parameters it returns are the anchors: every returned point has been
    evaluated, and ``state.value`` is its objective. A neuron whose optimality error (the norm
    of ``state.grad``) is at most ``tol`` stops moving.

    Parameters
    ----------
    fun : callable
        ``fun(params) -> (values, grad)`` on all the data: each neuron's smooth objective,
        shape (n_neurons,), and its gradient, a pytree like ``params``, neuron axis last.
    sampled : SampledObjective
        The minibatch objective and what the defaults are computed from.
    prox : callable, optional
        ``prox(params, hyperparams, scaling)`` with ``scaling`` of shape (n_neurons,); the
        identity when None (SVRG).
    tol : float
        A neuron stops at an anchor where its optimality error is at most ``tol``.
    maxiter : int
        Epochs at most (NeMoS counts epochs too).
    stepsize : float, optional
        One step size for every neuron; default NeMoS's, per neuron (``svrg_stepsize``).
    batch_size : int, optional
        Rows per minibatch; default ``default_batch_size(n_rows, chunk_rows)``.
    key : tuple of 2 ints, optional
        The raw random key (``jax.random.PRNGKey(seed)`` as a tuple); default NeMoS's seed 123.
    max_rejections : int
        Epochs in a row undone after which a neuron stops, marked stalled.
    max_epochs_without_progress : int
        Epochs in a row without a new smallest optimality error after which a neuron stops,
        marked stalled (the error is then rounding noise).

    Examples
    --------
    >>> import jax
    >>> import jax.numpy as jnp
    >>> from distglm.core.svrg import PopulationSVRG, SampledObjective
    >>> A = jnp.array([[1.0, 0.0], [0.0, 2.0], [1.0, 1.0], [2.0, 1.0]])  # 4 samples, 2 parameters
    >>> b = jnp.array([[1.0, 0.0], [2.0, 1.0], [0.0, 1.0], [1.0, 2.0]])  # 2 neurons
    >>> def batch_fun(x, rows):
    ...     r = A[rows] @ x - b[rows]
    ...     return 0.5 * jnp.mean(r**2, axis=0), A[rows].T @ r / rows.shape[0]
    >>> sampled = SampledObjective(batch_fun, 4, 4, 4, lambda x: (jnp.full(2, 3.0), jnp.full(2, 5.0)))
    >>> solver = PopulationSVRG(lambda x: batch_fun(x, jnp.arange(4)), sampled, tol=1e-5, batch_size=2)
    >>> x = jnp.zeros((2, 2))
    >>> state = solver.init_state(x)
    >>> update = jax.jit(solver.update)
    >>> for _ in range(100):
    ...     x, state = update(x, state)
    >>> expected = jnp.linalg.lstsq(A, b)[0]
    >>> bool(jnp.allclose(x, expected, atol=1e-4)), bool(jnp.all(neuron_norm(state.grad) <= 1e-5))
    (True, True)
    """

    fun: Callable
    sampled: SampledObjective
    prox: Callable | None = None
    tol: float = 3e-6
    maxiter: int = 10_000
    stepsize: float | None = None
    batch_size: int | None = None
    key: tuple = DEFAULT_KEY
    max_rejections: int = 20
    max_epochs_without_progress: int = 10

    def _batch_size(self) -> int:
        if self.batch_size is not None:
            return self.batch_size
        return default_batch_size(self.sampled.n_rows, self.sampled.chunk_rows)

    def _prox(self, params, scaling):
        return params if self.prox is None else self.prox(params, None, scaling)

    def _penalty(self, params):
        return 0.0 if self.sampled.penalty is None else self.sampled.penalty(params)

    def init_state(self, params) -> PopulationSVRGState:
        """A state whose first update evaluates ``params`` and accepts it as every neuron's anchor."""
        intercept = jax.tree_util.tree_leaves(params)[-1]
        n_neurons, dtype = intercept.shape[-1], intercept.dtype
        b = self._batch_size()
        if self.stepsize is None:
            l_smooth, l_smooth_max = self.sampled.smoothness(params)
            n = jnp.asarray(self.sampled.n_valid).astype(dtype)
            stepsize = svrg_stepsize(b, n, l_smooth_max, l_smooth)
            stepsize = jnp.where(jnp.isfinite(stepsize) & (stepsize > 0), stepsize, 1e-3)
        else:
            stepsize = jnp.full((n_neurons,), self.stepsize)
        zeros = jax.tree_util.tree_map(jnp.zeros_like, params)
        return PopulationSVRGState(
            iter_num=jnp.asarray(0),
            key=jnp.asarray(self.key, jnp.uint32),
            value=jnp.full((n_neurons,), jnp.inf, dtype),
            grad=zeros,
            full_grad=zeros,
            candidate=params,
            stepsize=jnp.broadcast_to(stepsize, (n_neurons,)).astype(dtype),
            rejected=jnp.zeros((n_neurons,), jnp.int32),
            best_grad_norm=jnp.full((n_neurons,), jnp.inf, dtype),
            since_best=jnp.zeros((n_neurons,), jnp.int32),
            stalled=jnp.zeros((n_neurons,), bool),
            num_fun_eval=jnp.asarray(0),
        )

    def update(self, params, state: PopulationSVRGState):
        """Evaluate the last epoch's end point, keep or undo it per neuron, run the next epoch.

        Returns ``(anchors, state)``.
        """
        dtype = state.value.dtype
        eps = jnp.finfo(dtype).eps
        value, full_grad = self.fun(state.candidate)
        value = value + self._penalty(state.candidate)
        first = ~jnp.isfinite(state.value)
        accept = jnp.isfinite(value) & (first | (value <= state.value + 10 * eps * jnp.abs(state.value)))
        anchor = _where(accept, state.candidate, params)
        full_grad = _where(accept, full_grad, state.full_grad)
        value = jnp.where(accept, value, state.value)
        rejected = jnp.where(accept, 0, state.rejected + 1)
        stepsize = jnp.where(accept, state.stepsize, 0.5 * state.stepsize)

        # the gradient mapping at the anchor: (anchor - prox(anchor - t * grad)) / t
        if self.prox is None:
            grad = full_grad
        else:
            moved = self._prox(_axpy(-stepsize, full_grad, anchor), stepsize)
            grad = jax.tree_util.tree_map(lambda a, m: (a - m) / stepsize, anchor, moved)
        error = neuron_norm(grad)
        better = error < state.best_grad_norm
        since_best = jnp.where(better, 0, state.since_best + accept)
        stalled = (state.stalled | (rejected > self.max_rejections)
                   | (since_best >= self.max_epochs_without_progress))
        moving = ~(error <= self.tol) & ~stalled & jnp.isfinite(value)
        step = jnp.where(moving, stepsize, 0.0).astype(dtype)

        b = self._batch_size()
        n_valid = self.sampled.n_valid
        n_steps = (n_valid + b - 1) // b
        key, epoch_key = jax.random.split(state.key)

        def inner(i, x):
            rows = jax.random.randint(jax.random.fold_in(epoch_key, i), (b,), 0, n_valid)
            g_x = self.sampled.batch_fun(x, rows)[1]
            g_anchor = self.sampled.batch_fun(anchor, rows)[1]
            direction = jax.tree_util.tree_map(lambda a, c, g: a - c + g, g_x, g_anchor, full_grad)
            return self._prox(_axpy(-step, direction, x), step)

        candidate = jax.lax.fori_loop(0, n_steps, inner, anchor)
        new_state = PopulationSVRGState(
            iter_num=state.iter_num + 1,
            key=key,
            value=value,
            grad=grad,
            full_grad=full_grad,
            candidate=_where(moving, candidate, anchor),
            stepsize=stepsize,
            rejected=rejected,
            best_grad_norm=jnp.minimum(error, state.best_grad_norm),
            since_best=since_best,
            stalled=stalled,
            num_fun_eval=state.num_fun_eval + 1,
        )
        return anchor, new_state
