"""The solvers: distglm's own population L-BFGS (``"LBFGS"``, the default for smooth problems)
and SVRG/ProxSVRG (``svrg.PopulationSVRG``), and jaxopt's GradientDescent, BFGS, NonlinearCG and
ProximalGradient.

This is the only module of distglm that imports jaxopt, and only when one of its solvers is
first looked up: importing it (with the SciPy and numba modules it loads) takes 0.4-1 s, which
every Ray actor's start and every ``import distglm`` would otherwise pay for a solver that the
default fit never uses.
``solver_kwargs`` are passed through to the solver's class; keys that class does not take are
rejected with the list of those it does. Arguments distglm sets itself (the objective, the
proximal operator, jit and unrolling) cannot be overridden.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Mapping
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from ..errors import InputError, InputTypeError, UnknownSolverArgumentError
from .svrg import PopulationSVRG, PopulationSVRGState, SampledObjective

__all__ = ["SOLVERS", "PopulationLBFGS", "PopulationLBFGSState", "SampledObjective", "accepted_kwargs",
           "validate_solver_kwargs", "make_solver", "has_grad_in_state", "is_stochastic", "neuron_values", "stalled",
           "lbfgs_memory"]


def _ravel(tree):
    """A pytree whose leaves have the neuron axis last, as one matrix of shape (size, n_neurons)."""
    leaves = jax.tree_util.tree_leaves(tree)
    return jnp.concatenate([leaf.reshape(-1, leaf.shape[-1]) for leaf in leaves], axis=0)


def _unraveler(tree) -> Callable:
    """The inverse of ``_ravel`` for pytrees structured like ``tree``."""
    leaves, treedef = jax.tree_util.tree_flatten(tree)
    shapes = [leaf.shape for leaf in leaves]
    splits = np.cumsum([int(np.prod(shape[:-1])) for shape in shapes])[:-1]

    def unravel(matrix):
        parts = jnp.split(matrix, splits, axis=0)
        return jax.tree_util.tree_unflatten(treedef, [p.reshape(shape) for p, shape in zip(parts, shapes)])

    return unravel


def _dot(a, b):
    """Per-neuron inner products of two (size, n_neurons) matrices, shape (n_neurons,)."""
    return jnp.sum(a * b, axis=-2)


class PopulationLBFGSState(NamedTuple):
    """State of :class:`PopulationLBFGS`; per-neuron arrays have the neuron axis last.

    The parameters of each neuron are held as one column: vectors have shape
    (size, n_neurons), ``size`` the number of parameters of a neuron.

    Attributes
    ----------
    iter_num : int scalar, updates of the block (one evaluation each)
    value : array of shape (n_neurons,), each neuron's objective at its current point
    grad : array of shape (size, n_neurons), each neuron's gradient at its current point
    direction : array of shape (size, n_neurons), each neuron's search direction
    slope : array of shape (n_neurons,), ``<grad, direction>``
    stepsize : array of shape (n_neurons,), the step each neuron tries next along its direction
        (0 for a neuron that no longer moves)
    backtracks : int array of shape (n_neurons,), trials each neuron has rejected in its current
        line search
    s_history, y_history : arrays of shape (history_size, size, n_neurons), each neuron's
        latest steps and gradient changes, newest last
    rho : array of shape (history_size, n_neurons), ``1 / <s, y>`` of each pair, 0 where unused
    gamma : array of shape (n_neurons,), scale of the initial inverse Hessian
    n_steps : int array of shape (n_neurons,), steps each neuron has taken
    best_grad_norm : array of shape (n_neurons,), the smallest gradient norm each neuron has had
    since_best : int array of shape (n_neurons,), steps each neuron has taken since then
    stalled : bool array of shape (n_neurons,), neurons that stopped without meeting ``tol``: their
        line search failed, or their gradient norm stopped falling (the rounding floor)
    num_fun_eval : int scalar, evaluations of the objective (each one covers every neuron)
    """

    iter_num: Any
    value: Any
    grad: Any
    direction: Any
    slope: Any
    stepsize: Any
    backtracks: Any
    s_history: Any
    y_history: Any
    rho: Any
    gamma: Any
    n_steps: Any
    best_grad_norm: Any
    since_best: Any
    stalled: Any
    num_fun_eval: Any

    #: the fields that hold one value (or column) per neuron, neuron axis last
    per_neuron_fields = ("value", "grad", "direction", "slope", "stepsize", "backtracks", "s_history",
                         "y_history", "rho", "gamma", "n_steps", "best_grad_norm", "since_best", "stalled")


@dataclasses.dataclass(eq=False)
class PopulationLBFGS:
    """L-BFGS run for every neuron of a block at once, each neuron with its own curvature pairs,
    line search and stopping point.

    The neurons' problems are independent, so nothing couples them: inner products, the
    two-loop recursion and the line search are per neuron, and a neuron whose gradient norm is
    at most ``tol`` stops moving while the others go on. Only the evaluations are shared: each
    ``update`` makes one call of ``fun``, which evaluates every neuron at its own trial point
    (one matrix product for the block), and then each neuron either takes its step or, if the
    trial is rejected, shortens it for the next update. A neuron's line search never waits for
    another's, and the whole solve has one evaluation site, so it compiles small.

    Each line search starts at step 1 (the natural step of a quasi-Newton method in
    preconditioned coordinates) and backtracks by safeguarded quadratic interpolation. A trial
    is accepted when it satisfies the Armijo condition or, as in Hager and Zhang's CG_DESCENT,
    the approximate Wolfe conditions: the slope along the step has shrunk and the objective has
    not risen by more than its rounding error. The second test is what lets a neuron converge
    where, in float32, the decrease Armijo asks for is below the rounding error of its objective.

    Parameters
    ----------
    fun : callable
        ``fun(params) -> (values, grad)``: each neuron's objective, shape (n_neurons,), and its
        gradient, a pytree like ``params`` whose leaves have the neuron axis last.
    tol : float
        A neuron stops once the 2-norm of its gradient is at most ``tol``.
    maxiter : int
        Updates of the block at most (one evaluation each: a step, or a backtrack for the
        neurons whose trial was rejected).
    history_size : int
        Curvature pairs kept per neuron.
    max_backtracks : int
        Rejected trials in a row after which a neuron keeps its point and stops, marked stalled.
    max_steps_without_progress : int
        Steps in a row that do not lower a neuron's smallest gradient norm so far, after which
        it stops, marked stalled: the gradient is then rounding noise (in float32 near a
        tolerance its precision cannot reach), and more steps would only hold the block.

    Examples
    --------
    >>> import jax.numpy as jnp
    >>> from distglm.core.solvers import PopulationLBFGS
    >>> target = jnp.array([[1.0, -2.0], [0.5, 3.0]])  # 2 parameters (rows) of 2 neurons (columns)
    >>> solver = PopulationLBFGS(fun=lambda x: (jnp.sum((x - target) ** 2, axis=0), 2 * (x - target)))
    >>> x = jnp.zeros((2, 2))
    >>> state = solver.init_state(x)
    >>> for _ in range(6):
    ...     x, state = solver.update(x, state)
    >>> bool(jnp.allclose(x, target)), state.n_steps.tolist()
    (True, [1, 1])
    """

    fun: Callable
    tol: float = 3e-6
    maxiter: int = 1000
    history_size: int = 10
    max_backtracks: int = 20
    max_steps_without_progress: int = 10

    def init_state(self, params, history=None, start=None) -> PopulationLBFGSState:
        """A state whose first update evaluates ``params`` itself and accepts it; no evaluation here.

        ``history``, optional: curvature pairs ``(steps, grad_changes)`` to start from, pytrees
        like ``params`` with a leading axis of at most ``history_size`` pairs (oldest first),
        from a nearby problem. The first direction then uses their curvature instead of the
        gradient alone; pairs without positive curvature (or not finite) are left out.
        ``start``, optional: ``(values, grad)``, each neuron's objective at ``params`` (shape
        (n_neurons,)) and its gradient (like ``params``), already known: a neuron whose value
        is finite skips the evaluation of its start and takes its first step at once.
        """
        x = _ravel(params)
        (size, n_neurons), dtype = x.shape, x.dtype
        m = self.history_size
        vector = jnp.zeros((n_neurons,), dtype)
        s_history = jnp.zeros((m, size, n_neurons), dtype)
        y_history = jnp.zeros((m, size, n_neurons), dtype)
        rho = jnp.zeros((m, n_neurons), dtype)
        gamma = jnp.ones((n_neurons,), dtype)
        if history is not None:
            s, y = (jax.vmap(_ravel)(h)[-m:].astype(dtype) for h in history)
            sy, ss, yy = _dot(s, y), _dot(s, s), _dot(y, y)
            good = jnp.isfinite(sy) & jnp.isfinite(ss) & jnp.isfinite(yy) & (sy > jnp.finfo(dtype).eps * jnp.sqrt(ss * yy))
            s, y = jnp.where(good[:, None], s, 0.0), jnp.where(good[:, None], y, 0.0)
            k = s.shape[0]
            s_history, y_history = s_history.at[m - k:].set(s), y_history.at[m - k:].set(y)
            rho = rho.at[m - k:].set(jnp.where(good, 1.0 / jnp.where(good, sy, 1.0), 0.0))
            # the newest good pair scales the initial inverse Hessian, as after a step
            newest = jnp.max(jnp.where(good, jnp.arange(k)[:, None], -1), axis=0)
            pick = jnp.arange(k)[:, None] == newest[None, :]
            gamma = jnp.where(newest >= 0, jnp.sum(jnp.where(pick, sy / jnp.where(good, yy, 1.0), 0.0), axis=0), gamma)
        value, grad, direction, slope, stepsize = jnp.full((n_neurons,), jnp.inf, dtype), x * 0, x * 0, vector, vector
        best = jnp.full((n_neurons,), jnp.inf, dtype)
        if start is not None:
            known = jnp.isfinite(start[0])
            value = jnp.where(known, start[0], jnp.inf).astype(dtype)
            grad = jnp.where(known, _ravel(start[1]), 0.0).astype(dtype)
            direction, slope = self._descent(grad, s_history, y_history, rho, gamma)
            best = jnp.where(known, jnp.sqrt(_dot(grad, grad)), jnp.inf)
            stepsize = jnp.where(known & (best > self.tol), 1.0, 0.0).astype(dtype)
        return PopulationLBFGSState(
            iter_num=jnp.asarray(0),
            value=value,
            grad=grad,
            direction=direction,
            slope=slope,
            stepsize=stepsize,
            backtracks=jnp.zeros((n_neurons,), jnp.int32),
            s_history=s_history,
            y_history=y_history,
            rho=rho,
            gamma=gamma,
            n_steps=jnp.zeros((n_neurons,), jnp.int32),
            best_grad_norm=best,
            since_best=jnp.zeros((n_neurons,), jnp.int32),
            stalled=jnp.zeros((n_neurons,), bool),
            num_fun_eval=jnp.asarray(0),
        )

    @staticmethod
    def _direction(grad, s_history, y_history, rho, gamma):
        """Two-loop recursion per neuron: minus the inverse-Hessian estimate times ``grad``."""
        def newest_first(q, pair):
            s, y, r = pair
            alpha = r * _dot(s, q)
            return q - alpha * y, alpha

        pairs = (s_history, y_history, rho)
        q, alphas = jax.lax.scan(newest_first, grad, pairs, reverse=True)

        def oldest_first(r_vec, pair):
            s, y, r, alpha = pair
            beta = r * _dot(y, r_vec)
            return r_vec + (alpha - beta) * s, None

        r_vec, _ = jax.lax.scan(oldest_first, gamma * q, (*pairs, alphas))
        return -r_vec

    def _descent(self, grad, s_history, y_history, rho, gamma):
        """The next direction and its slope; one that is not of descent (rounding, a poor
        history) falls back to minus the gradient."""
        direction = self._direction(grad, s_history, y_history, rho, gamma)
        slope = _dot(grad, direction)
        steepest = ~(slope < 0)
        return jnp.where(steepest, -grad, direction), jnp.where(steepest, -_dot(grad, grad), slope)

    def update(self, params, state: PopulationLBFGSState):
        """Evaluate every neuron's trial point, then step or backtrack; returns ``(params, state)``."""
        unravel = _unraveler(params)
        x = _ravel(params)
        dtype = x.dtype
        eps = jnp.finfo(dtype).eps
        t, f0, slope0, d = state.stepsize, state.value, state.slope, state.direction
        trial = x + t * d
        value, grad = self.fun(unravel(trial))
        grad = _ravel(grad)

        # Armijo, or approximate Wolfe (a shrunken slope and no rise beyond rounding); the
        # first update has f0 = inf and t = 0, and so accepts the starting point itself
        trial_slope = _dot(grad, d)
        armijo = value <= f0 + 1e-4 * t * slope0
        wolfe = ((value <= f0 + 10 * eps * jnp.abs(f0)) & (trial_slope >= 0.9 * slope0)
                 & (trial_slope <= -0.8 * slope0))
        ok = jnp.isfinite(value) & (armijo | wolfe)
        # a neuron that stopped (t = 0 after its start) re-evaluates its own point
        frozen = (t == 0) & jnp.isfinite(f0)
        step = ok & ~frozen
        rejected = ~ok & ~frozen

        # curvature pairs only where the step carries positive curvature (true of exact Wolfe
        # steps; rounding or an Armijo-only step can break it)
        s, y = t * d, grad - state.grad
        sy, yy = _dot(s, y), _dot(y, y)
        pair = step & jnp.isfinite(f0) & (sy > eps * jnp.sqrt(_dot(s, s) * yy))
        roll = lambda hist, new: jnp.where(pair, jnp.concatenate([hist[1:], new[None]], axis=0), hist)
        s_history, y_history = roll(state.s_history, s), roll(state.y_history, y)
        rho = roll(state.rho, 1.0 / jnp.where(pair, sy, 1.0))
        gamma = jnp.where(pair, sy / jnp.where(pair, yy, 1.0), state.gamma)

        x = jnp.where(step, trial, x)
        new_value = jnp.where(step, value, f0)
        new_grad = jnp.where(step, grad, state.grad)

        direction, slope = self._descent(new_grad, s_history, y_history, rho, gamma)

        # after a rejected trial, the minimiser of the quadratic through f0, the slope and the
        # trial value, kept within [0.1 t, 0.5 t]
        curvature = value - f0 - slope0 * t
        t_quad = -slope0 * t * t / (2 * curvature)
        t_quad = jnp.where(jnp.isfinite(t_quad) & (curvature > 0), t_quad, 0.5 * t)
        backtracks = jnp.where(rejected, state.backtracks + 1, jnp.where(step, 0, state.backtracks))
        grad_norm = jnp.sqrt(_dot(new_grad, new_grad))
        better = grad_norm < state.best_grad_norm
        since_best = jnp.where(step & ~better, state.since_best + 1, jnp.where(better, 0, state.since_best))
        stalled = (state.stalled | (rejected & (backtracks > self.max_backtracks))
                   | (since_best >= self.max_steps_without_progress))

        done = grad_norm <= self.tol
        stepsize = jnp.where(step, 1.0, jnp.where(rejected, jnp.clip(t_quad, 0.1 * t, 0.5 * t), t))
        stepsize = jnp.where(done | stalled, 0.0, stepsize).astype(dtype)
        new_state = PopulationLBFGSState(
            iter_num=state.iter_num + 1,
            value=new_value,
            grad=new_grad,
            direction=jnp.where(step, direction, d),
            slope=jnp.where(step, slope, slope0),
            stepsize=stepsize,
            backtracks=backtracks,
            s_history=s_history,
            y_history=y_history,
            rho=rho,
            gamma=gamma,
            n_steps=state.n_steps + (step & jnp.isfinite(f0)),
            best_grad_norm=jnp.minimum(grad_norm, state.best_grad_norm),
            since_best=since_best,
            stalled=stalled,
            num_fun_eval=state.num_fun_eval + 1,
        )
        return unravel(x), new_state


class _Solvers(Mapping):
    """The solver classes by name; a jaxopt solver's class is imported at its first look-up."""

    _NAMES = ("GradientDescent", "BFGS", "LBFGS", "NonlinearCG", "ProximalGradient", "SVRG", "ProxSVRG")
    _OWN = {"LBFGS": PopulationLBFGS, "SVRG": PopulationSVRG, "ProxSVRG": PopulationSVRG}

    def __getitem__(self, name: str) -> type:
        if name not in self._NAMES:
            raise KeyError(name)
        if name in self._OWN:
            return self._OWN[name]
        import jaxopt

        return getattr(jaxopt, name)

    def __iter__(self) -> Iterator[str]:
        return iter(self._NAMES)

    def __len__(self) -> int:
        return len(self._NAMES)


SOLVERS: Mapping[str, type] = _Solvers()

_RESERVED = frozenset({"fun", "prox", "value_and_grad", "has_aux", "jit", "unroll",
                       "implicit_diff", "implicit_diff_solve", "sampled"})

# Defaults distglm chooses where jaxopt's are poor for this problem: a quasi-Newton step in
# well-preconditioned coordinates has natural length 1, so each line search starts there.
_DEFAULTS = {
    "BFGS": {"linesearch_init": "max"},
}


def accepted_kwargs(solver_name: str) -> tuple[str, ...]:
    """The ``solver_kwargs`` keys a solver accepts (``tol``, ``maxiter``, ``stepsize``, ...)."""
    fields = [f.name for f in dataclasses.fields(SOLVERS[solver_name])]
    return tuple(sorted(name for name in fields if name not in _RESERVED))


# Iteration counters are int32 inside the compiled solvers.
_MAX_COUNT = 2**31 - 1


def validate_solver_kwargs(solver_name: str, solver_kwargs) -> dict:
    """Check ``solver_kwargs`` against the solver's parameters; return them as a plain dict."""
    if solver_kwargs is None:
        return {}
    if not isinstance(solver_kwargs, dict):
        raise InputTypeError(f"solver_kwargs must be a dict; got {type(solver_kwargs).__name__}")
    accepted = accepted_kwargs(solver_name)
    unknown = sorted(set(solver_kwargs) - set(accepted))
    if unknown:
        raise UnknownSolverArgumentError(
            f"solver_kwargs {unknown} not accepted by {solver_name}; accepted keys are {list(accepted)}"
        )
    # tol <= 0 is allowed: as in NeMoS, it runs all maxiter iterations
    if "tol" in solver_kwargs and (isinstance(solver_kwargs["tol"], bool)
                                   or not isinstance(solver_kwargs["tol"], (int, float))):
        raise InputTypeError(f"solver_kwargs['tol'] must be a number; got {solver_kwargs['tol']!r}")
    for key in ("maxiter", "history_size", "max_backtracks", "max_steps_without_progress", "batch_size",
                "max_rejections", "max_epochs_without_progress"):
        value = solver_kwargs.get(key, 1)
        if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= _MAX_COUNT:
            raise InputError(f"solver_kwargs['{key}'] must be a positive integer of at most {_MAX_COUNT} (solvers "
                             f"count in 32-bit integers); got {value!r}")
    kwargs = dict(solver_kwargs)
    if is_stochastic(solver_name):
        kwargs.update(_stochastic_kwargs(kwargs))
    return kwargs


def _stochastic_kwargs(kwargs: dict) -> dict:
    """SVRG's ``stepsize`` checked, and its ``key`` as a hashable tuple of two ints (a fit's
    configuration keys the compilation cache and is saved with the model)."""
    out = {}
    stepsize = kwargs.get("stepsize")
    if stepsize is not None:
        if isinstance(stepsize, bool) or not isinstance(stepsize, (int, float)):
            raise InputTypeError(f"solver_kwargs['stepsize'] must be a number or None; got {stepsize!r}")
        if not (np.isfinite(stepsize) and stepsize > 0):
            raise InputError(f"solver_kwargs['stepsize'] must be a positive finite number; got {stepsize!r}")
    if "key" in kwargs:
        out["key"] = _as_key(kwargs["key"])
    return out


def _as_key(key) -> tuple:
    """A random key as a tuple of two ints: from a seed, a raw key (``jax.random.PRNGKey``) or a
    typed key (``jax.random.key``)."""
    if isinstance(key, (int, np.integer)) and not isinstance(key, bool):
        key = jax.random.PRNGKey(int(key))
    elif hasattr(key, "dtype") and jax.dtypes.issubdtype(key.dtype, jax.dtypes.prng_key):
        key = jax.random.key_data(key)
    elif isinstance(key, (tuple, list)) and len(key) == 2 and all(
            isinstance(k, (int, np.integer)) and not isinstance(k, bool) and 0 <= k < 2**32 for k in key):
        key = np.asarray(key, np.uint32)
    raw = np.asarray(key) if hasattr(key, "shape") else None
    if raw is None or raw.shape != (2,) or raw.dtype != np.uint32:
        raise InputTypeError("solver_kwargs['key'] must be an int seed or a jax random key "
                             f"(jax.random.key(seed) or jax.random.PRNGKey(seed)); got {key!r}")
    return tuple(int(k) for k in raw)


def make_solver(solver_name: str, fun: Callable, prox: Callable | None, solver_kwargs: dict,
                sampled: SampledObjective | None = None):
    """Instantiate the solver for ``fun`` (and ``prox`` for ProximalGradient and ProxSVRG;
    ``sampled``, the minibatch objective, for SVRG and ProxSVRG).

    For the solvers that keep a gradient (``has_grad_in_state``), ``fun(params)`` returns each
    neuron's objective, shape (n_neurons,), and the gradient together; for the others it returns
    the block's objective, a scalar.
    """
    kwargs = {**_DEFAULTS.get(solver_name, {}), **solver_kwargs}
    if solver_name == "LBFGS":
        return PopulationLBFGS(fun=fun, **kwargs)
    if is_stochastic(solver_name):
        return PopulationSVRG(fun=fun, sampled=sampled, prox=prox if solver_name == "ProxSVRG" else None, **kwargs)
    if solver_name == "ProximalGradient":
        kwargs["prox"] = prox
    if has_grad_in_state(solver_name):
        def summed(params):
            values, grad = fun(params)
            return jnp.sum(values), grad

        return SOLVERS[solver_name](fun=summed, value_and_grad=True, **kwargs)
    return SOLVERS[solver_name](fun=fun, **kwargs)


def has_grad_in_state(solver_name: str) -> bool:
    """Whether the solver keeps the gradient at the current iterate in its state."""
    return solver_name in ("BFGS", "LBFGS", "NonlinearCG", "SVRG", "ProxSVRG")


def is_stochastic(solver_name: str) -> bool:
    """Whether the solver steps on minibatches of rows (SVRG, ProxSVRG)."""
    return solver_name in ("SVRG", "ProxSVRG")


def neuron_values(state) -> Any:
    """Each neuron's objective at the solver's current point, shape (n_neurons,), or None where
    the solver keeps only the block's."""
    return state.value if isinstance(state, (PopulationLBFGSState, PopulationSVRGState)) else None


def stalled(state) -> Any:
    """Neurons that stopped without meeting ``tol`` (their line search failed, or their progress
    stopped): bool, or False."""
    return state.stalled if isinstance(state, (PopulationLBFGSState, PopulationSVRGState)) else False


def lbfgs_memory(state: PopulationLBFGSState, params):
    """What a :class:`PopulationLBFGS` state knows, as pytrees like ``params``: ``(steps,
    grad_changes, grad)``, the curvature pairs with a leading axis of ``history_size`` pairs
    (oldest first; unused pairs are zeros) and the gradient at the current point."""
    unravel = _unraveler(params)
    return jax.vmap(unravel)(state.s_history), jax.vmap(unravel)(state.y_history), unravel(state.grad)
