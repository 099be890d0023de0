"""The solvers, through jaxopt. This is the only module of distglm that imports jaxopt.

``solver_kwargs`` are passed through to the jaxopt class; keys that class does not take are
rejected with the list of those it does. Arguments distglm sets itself (the objective, the
proximal operator, jit and unrolling) cannot be overridden.
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import jaxopt

from ..errors import InputError, InputTypeError, UnknownSolverArgumentError

__all__ = ["SOLVERS", "accepted_kwargs", "validate_solver_kwargs", "make_solver", "has_grad_in_state"]

SOLVERS: dict[str, type] = {
    "GradientDescent": jaxopt.GradientDescent,
    "BFGS": jaxopt.BFGS,
    "LBFGS": jaxopt.LBFGS,
    "NonlinearCG": jaxopt.NonlinearCG,
    "ProximalGradient": jaxopt.ProximalGradient,
}

_RESERVED = frozenset({"fun", "prox", "value_and_grad", "has_aux", "jit", "unroll",
                       "implicit_diff", "implicit_diff_solve"})

# Defaults distglm chooses where jaxopt's are poor for this problem: a quasi-Newton step in
# well-preconditioned coordinates has natural length 1, so each line search starts there.
# (jaxopt's backtracking search would compile faster, but in float32 near a tight tolerance it
# stalls where the zoom search converges, and one stalled neuron holds its whole block.)
_DEFAULTS = {
    "LBFGS": {"linesearch_init": "max"},
    "BFGS": {"linesearch_init": "max"},
}


def accepted_kwargs(solver_name: str) -> tuple[str, ...]:
    """The ``solver_kwargs`` keys a solver accepts (``tol``, ``maxiter``, ``stepsize``, ...)."""
    fields = [f.name for f in dataclasses.fields(SOLVERS[solver_name])]
    return tuple(sorted(name for name in fields if name not in _RESERVED))


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
    if "maxiter" in solver_kwargs:
        value = solver_kwargs["maxiter"]
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise InputError(f"solver_kwargs['maxiter'] must be a positive integer; got {value!r}")
    return dict(solver_kwargs)


def make_solver(solver_name: str, fun: Callable, prox: Callable | None, solver_kwargs: dict,
                value_and_grad: bool = False):
    """Instantiate the jaxopt solver for ``fun`` (and ``prox`` for ProximalGradient).

    With ``value_and_grad``, ``fun(params)`` returns ``(value, gradient)`` together.
    """
    kwargs = {**_DEFAULTS.get(solver_name, {}), **solver_kwargs}
    if solver_name == "ProximalGradient":
        kwargs["prox"] = prox
    return SOLVERS[solver_name](fun=fun, value_and_grad=value_and_grad, **kwargs)


def has_grad_in_state(solver_name: str) -> bool:
    """Whether the solver keeps the gradient at the current iterate in its state."""
    return solver_name in ("BFGS", "LBFGS", "NonlinearCG")
