"""The exceptions distglm raises.

Every error distglm raises on purpose derives from :class:`DistGLMError`, itself a
``ValueError``, so ``except ValueError`` keeps working for code written against NeMoS.
Errors about the *kind* of an argument also derive from ``TypeError``.
"""

__all__ = [
    "DistGLMError",
    "InputError",
    "InputTypeError",
    "InterfaceError",
    "UnknownSolverArgumentError",
    "UnsupportedOptionError",
    "NotFittedError",
    "FitError",
    "StoreError",
    "PlanError",
    "ClusterError",
    "JobError",
    "JobTimeoutError",
]


class DistGLMError(ValueError):
    """Root of every error raised by distglm."""


class InputError(DistGLMError):
    """An argument has the right kind but a wrong value (shape, range, support)."""


class InputTypeError(DistGLMError, TypeError):
    """An argument is of the wrong kind (not array-like, not a dict, ...)."""


class InterfaceError(InputTypeError, AttributeError):
    """An object lacks the interface expected of it (for example, it is not an observation model).

    An ``AttributeError`` too, as NeMoS raises for such objects.
    """


class UnknownSolverArgumentError(InputError, NameError):
    """A ``solver_kwargs`` key the solver does not take (a ``NameError`` too, as in NeMoS)."""


class UnsupportedOptionError(InputError, NotImplementedError):
    """A named option that distglm does not implement (a score type, a solver)."""


class NotFittedError(DistGLMError, AttributeError):
    """A method that needs fitted parameters was called before ``fit``."""


class FitError(DistGLMError):
    """A fit produced no usable solution (for example every parameter is NaN)."""


class StoreError(DistGLMError):
    """A Zarr store is missing, malformed, or inconsistent with the fit asked of it."""


class PlanError(DistGLMError):
    """Blocks of neurons cannot be planned as asked (for example not chunk-aligned)."""


class ClusterError(DistGLMError):
    """A Ray cluster cannot be reached, refuses the connection, or cannot run the fit asked of it."""


class JobError(DistGLMError):
    """A submitted job is unknown, unreachable, or ended without a result."""


class JobTimeoutError(JobError, TimeoutError):
    """A submitted job did not end within the time it was waited for."""
