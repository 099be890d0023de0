"""distglm: population GLMs of neural activity, in memory or sharded across a Ray cluster.

The in-memory estimators follow NeMoS 0.2.8's API (``from distglm.glm import PopulationGLM``).
The distributed path writes the inputs to a Zarr store, fits blocks of neurons on Ray actors
and gathers every result in the store::

    import distglm
    path = distglm.write_inputs("recording.zarr", X, y, feature_mask)
    report = distglm.fit(path, distglm.PopulationGLM(regularizer="Ridge", regularizer_strength=0.1))
    model = distglm.load_model(path)

Importing distglm does not import Ray; the distributed functions import it when called.
"""

from __future__ import annotations

import os

from .errors import (
    ClusterError,
    DistGLMError,
    FitError,
    InputError,
    InputTypeError,
    InterfaceError,
    JobError,
    NotFittedError,
    PlanError,
    StoreError,
    UnknownSolverArgumentError,
    UnsupportedOptionError,
)
from .glm import GLM, PopulationGLM, PopulationGLMCV
from .history import HistorySpec
from .store import write_inputs
# Imported now rather than on first call: importing the submodule ``distglm.submit`` later would
# rebind the package's ``submit`` from the function to the module. It imports Ray only when used.
from .submit import Job, get_job, submit

__version__ = "0.1.0"

__all__ = [
    "GLM",
    "PopulationGLM",
    "PopulationGLMCV",
    "HistorySpec",
    "write_inputs",
    "fit",
    "load_model",
    "submit",
    "get_job",
    "Job",
    "DistGLMError",
    "InputError",
    "InputTypeError",
    "NotFittedError",
    "FitError",
    "StoreError",
    "PlanError",
    "ClusterError",
    "JobError",
    "InterfaceError",
    "UnknownSolverArgumentError",
    "UnsupportedOptionError",
]


def fit(path, model, **options):
    """Fit ``model`` to the store at ``path`` on Ray actors; see :func:`distglm.scheduler.fit`."""
    from .scheduler import fit as _fit

    return _fit(path, model, **options)




def load_model(path, mapping_dict=None, name=None, *, storage_options=None):
    """A fitted model from a store (a fit's results) or from a ``.npz`` file (``save_params``).

    ``name`` picks a named fit of the store (``distglm.fit(path, model, name=...)``); None, the
    store's unnamed fit. ``storage_options`` are fsspec options (credentials, endpoint) for a
    store at a URL.

    Examples
    --------
    >>> import numpy as np, tempfile, os, distglm
    >>> X = np.random.default_rng(0).normal(size=(50, 2)); y = np.random.default_rng(1).poisson(1.0, size=(50, 3))
    >>> f = os.path.join(tempfile.mkdtemp(), "m.npz")
    >>> distglm.PopulationGLM().fit(X, y).save_params(f)
    >>> distglm.load_model(f).coef_.shape
    (2, 3)
    """
    target = os.fspath(path) if isinstance(path, os.PathLike) else path
    if isinstance(target, str) and target.endswith(".npz"):
        from .glm import load_model as _load_npz

        if name is not None:
            raise InputError(f"a .npz file holds one model; name={name!r} names a fit of a store")
        return _load_npz(target, mapping_dict)
    from .scheduler import load_fitted

    return load_fitted(target, mapping_dict, name, storage_options=storage_options)
