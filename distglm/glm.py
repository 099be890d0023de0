"""``GLM`` and ``PopulationGLM``: in-memory estimators with NeMoS 0.2.8's API.

A NeMoS user switches with one import::

    from distglm.glm import PopulationGLM   # instead of: from nemos.glm import PopulationGLM

Both estimators fit through :func:`distglm.core.fit_block`, the same code every Ray actor
of a distributed fit runs.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from . import npz as _npz
from . import validation as val
from .compile_cache import enable_compilation_cache
from .core import fit as _fit
from .core import inference as _inference
from .core import solvers as _solvers
from .core.observations import (
    LINKS,
    OBSERVATION_MODELS,
    NegativeBinomialObservations,
    Observations,
    check_inverse_link,
    link_name,
    resolve_link,
)
from .core.regularizers import REGULARIZERS, GroupLasso, Regularizer
from .core.scoring import SCORE_TYPES, finish_score, score_terms
from .errors import InputError, InputTypeError, InterfaceError, NotFittedError, UnsupportedOptionError

__all__ = ["GLM", "PopulationGLM", "PopulationGLMCV", "load_model", "model_to_config", "model_from_config", "check_link_portable",
           "parse_solver_name"]


def _float_dtype():
    return np.float64 if jax.config.jax_enable_x64 else np.float32


def _as_observation(value) -> Observations:
    """An observation model from an instance, a NeMoS object, or a name as NeMoS spells it.

    Names may be ``"Poisson"``, ``"PoissonObservations"`` or dotted like
    ``"nemos.observation_models.PoissonObservations"`` (only the last part is read).
    """
    if isinstance(value, Observations):
        return value
    if isinstance(value, str):
        name = value.rsplit(".", 1)[-1].removesuffix("Observations")
        if name == "Categorical":
            raise InputTypeError(
                "the Categorical observation model is for classification, which distglm does not implement; "
                f"use one of {list(OBSERVATION_MODELS)}"
            )
        if name not in OBSERVATION_MODELS:
            raise InputError(f"observation_model must be one of {list(OBSERVATION_MODELS)} (optionally as "
                             f"'<name>Observations'); got {value!r}")
        return OBSERVATION_MODELS[name]()
    # a NeMoS observation object: map it by class name so `nmo.observation_models.X()` works too
    cls_name = type(value).__name__.replace("Observations", "")
    if cls_name in OBSERVATION_MODELS and type(value).__module__.startswith("nemos"):
        if cls_name == "NegativeBinomial":
            return OBSERVATION_MODELS[cls_name](scale=float(value.scale))
        return OBSERVATION_MODELS[cls_name]()
    raise InterfaceError(
        f"observation_model must be a name in {list(OBSERVATION_MODELS)} or an observation model instance; "
        f"got {value!r}, which has none of an observation model's methods"
    )


def _as_regularizer(value) -> Regularizer:
    if value is None:
        return REGULARIZERS["UnRegularized"]()
    if isinstance(value, Regularizer):
        return value
    if isinstance(value, str):
        if value not in REGULARIZERS:
            raise InputError(f"regularizer must be one of {list(REGULARIZERS)}; got {value!r}")
        return REGULARIZERS[value]()
    name = type(value).__name__
    if name in REGULARIZERS and type(value).__module__.startswith("nemos"):
        if name == "GroupLasso":
            return GroupLasso(mask=None if value.mask is None else np.asarray(value.mask))
        return REGULARIZERS[name]()
    raise InputTypeError(
        f"regularizer must be a name in {list(REGULARIZERS)} or a Regularizer instance; got {value!r}"
    )


# NeMoS 0.2.8 names a solver's implementation in brackets ("LBFGS[optimistix]"); distglm runs
# every algorithm on its own core, so the backend is accepted and the algorithm kept.
SOLVER_BACKENDS = ("jaxopt", "optimistix", "optax+optimistix", "optax", "nemos")
# NeMoS 0.2.8 implements SVRG and ProxSVRG itself only: they take no other backend.
_NEMOS_ONLY = ("SVRG", "ProxSVRG")


def parse_solver_name(value) -> str:
    """The distglm algorithm for a solver name, bare (``"LBFGS"``) or with a backend (``"LBFGS[jaxopt]"``).

    ``"SVRG"`` and ``"ProxSVRG"`` take only the ``nemos`` backend, as in NeMoS 0.2.8.

    Raises
    ------
    InputTypeError
        If ``value`` is not a string.
    InputError
        For an unknown algorithm or backend.

    Examples
    --------
    >>> parse_solver_name("GradientDescent[optimistix]"), parse_solver_name("ProxSVRG[nemos]")
    ('GradientDescent', 'ProxSVRG')
    """
    if not isinstance(value, str):
        raise InputTypeError(f"solver_name must be a string; got {value!r}")
    algo, bracket, backend = value.partition("[")
    if bracket and (not backend.endswith("]") or backend[:-1] not in SOLVER_BACKENDS):
        raise InputError(f"solver_name {value!r}: the backend in brackets must be one of {list(SOLVER_BACKENDS)}")
    if bracket and algo in _NEMOS_ONLY and backend[:-1] != "nemos":
        raise InputError(f"solver_name {value!r}: {algo} has only the 'nemos' backend (e.g. '{algo}[nemos]')")
    if algo not in _solvers.SOLVERS:
        raise InputError(f"solver_name must be one of {list(_solvers.SOLVERS)} (optionally with a backend, "
                         f"e.g. 'LBFGS[jaxopt]'); got {value!r}")
    return algo


def _adapt_strength(regularizer: Regularizer, strength):
    """A strength carried over to a new regularizer: converted as NeMoS does, or reset with a warning."""
    if strength is not None and regularizer.name == "UnRegularized":
        warnings.warn(f"regularizer_strength {strength!r} is not used by the UnRegularized regularizer; "
                      "it is set to None", UserWarning, stacklevel=4)
        return None
    try:
        return regularizer.validate_strength(strength)
    except (InputError, InputTypeError):
        default = regularizer.validate_strength(None)
        warnings.warn(f"regularizer_strength {strength!r} does not suit the {regularizer.name} regularizer; "
                      f"it is reset to the default {default!r}", UserWarning, stacklevel=4)
        return default


def _time_series_of(X):
    """The pynapple time series ``X`` is, or holds as a feature group; None if there is none."""
    for x in (X.values() if isinstance(X, Mapping) else (X,)):
        if all(hasattr(x, attr) for attr in ("times", "data", "time_support")):
            return x
    return None


def _column_labels(y):
    """The column labels of a pynapple ``TsdFrame`` y (its neurons' unit ids); None for other inputs."""
    columns = getattr(y, "columns", None) if _time_series_of(y) is not None else None
    return None if columns is None else np.asarray(columns)


def _on_time_axis(array, X, columns=None):
    """``array`` as a pynapple ``Tsd``/``TsdFrame`` on X's time axis when X is a time series, else as is.

    A ``TsdFrame``'s columns are labelled by ``columns`` (the neurons' ids) when given.
    """
    series = _time_series_of(X)
    if series is None:
        return array
    import pynapple as nap  # installed: X is one of its objects

    array = np.asarray(array)
    if array.ndim == 1:
        return nap.Tsd(t=series.times(), d=array, time_support=series.time_support)
    labels = columns if columns is not None and len(columns) == array.shape[1] else None
    return nap.TsdFrame(t=series.times(), d=array, time_support=series.time_support, columns=labels)


class GLM:
    """Generalized linear model of one neuron.

    Parameters
    ----------
    observation_model : str or Observations
        "Poisson" (default), "Gamma", "Bernoulli", "Gaussian", "NegativeBinomial", or an instance;
        NeMoS's spellings ("PoissonObservations", "nemos.observation_models.PoissonObservations")
        and observation objects are accepted too.
    inverse_link_function : callable or str, optional
        Default: the observation model's (exp, 1/x, logistic, identity, exp). A name NeMoS accepts
        ("jax.numpy.exp", "jax.scipy.stats.norm.cdf", ...) or a differentiable elementwise JAX
        function, checked here.
    regularizer : str or Regularizer
        "UnRegularized" (default), "Ridge", "Lasso", "ElasticNet", "GroupLasso", or an instance.
    regularizer_strength : float, array or tuple, optional
        Ridge/Lasso: scalar or coef-shaped; ElasticNet: ``(strength, ratio)`` (a scalar ``s`` means
        ``(s, 0.5)``); GroupLasso: scalar or one per group. None means 1.0 for a penalised model.
    solver_name : str, optional
        "GradientDescent", "BFGS", "LBFGS", "NonlinearCG" or "ProximalGradient", optionally with a
        NeMoS backend ("LBFGS[optax+optimistix]"). Default LBFGS for smooth problems,
        ProximalGradient for Lasso, ElasticNet and GroupLasso.
    solver_kwargs : dict, optional
        Passed to the solver (``tol``, ``maxiter``, ...; LBFGS stops each neuron at a gradient
        norm of ``tol`` = 3e-6 in preconditioned coordinates, see :mod:`distglm.core.solvers`);
        ``tol <= 0`` runs ``maxiter`` iterations.

    Every argument is checked when set (here, as an attribute, or with ``set_params``), against
    the others: a solver that cannot fit the regularizer is refused at once.

    Attributes
    ----------
    coef_ : array of shape (n_features,), or dict of arrays for a dict X
    intercept_ : array of shape (1,)
    scale_, dof_resid_ : arrays of shape (1,); ``scale_`` may be set by hand (a scalar too), and
        None means the observation model's ``scale``
    n_iter_, converged_ : per-neuron iterations and convergence flags
    solver_state_ : the solver's final state
    coef_se_, intercept_se_ : standard errors, shaped as ``coef_`` and ``intercept_``; None until
        :meth:`compute_standard_errors` is called
    heldout_scores_ : dict or None
        For a model loaded from a store fitted with ``test_samples``: NeMoS score type -> each
        neuron's score on the held-out samples, of shape (n_neurons,)

    Examples
    --------
    >>> import numpy as np
    >>> from distglm.glm import GLM
    >>> rng = np.random.default_rng(0)
    >>> X = rng.normal(size=(200, 2))
    >>> y = rng.poisson(np.exp(X @ np.array([0.4, -0.3])))
    >>> GLM().fit(X, y).coef_.shape
    (2,)
    """

    _population = False
    # the constructor arguments that _configure resolves and checks together
    _CONFIG_NAMES = ("observation_model", "inverse_link_function", "regularizer", "regularizer_strength",
                     "solver_name", "solver_kwargs")

    def __init__(
        self,
        observation_model: str | Observations = "Poisson",
        inverse_link_function: Callable | str | None = None,
        regularizer: str | Regularizer | None = "UnRegularized",
        regularizer_strength: Any = None,
        solver_name: str | None = None,
        solver_kwargs: dict | None = None,
    ):
        self._raw: dict = {}
        self._configure(observation_model=observation_model, inverse_link_function=inverse_link_function,
                        regularizer=regularizer, regularizer_strength=regularizer_strength,
                        solver_name=solver_name, solver_kwargs=solver_kwargs)
        self._reset_fit()

    # ----------------------------------------------------------------- configuration
    def _configure(self, **changes):
        """Apply constructor arguments, checked together, and commit them only if all are valid.

        A changed regularizer keeps the current strength where it suits it (an ElasticNet scalar
        ``s`` becomes ``(s, 0.5)``) and resets it with a warning where it does not; an explicit
        solver that cannot fit the regularizer is refused here, not at ``fit``.
        """
        raw = {**self._raw, **changes}
        observation = _as_observation(raw["observation_model"])
        link = raw["inverse_link_function"]
        link = observation.default_link if link is None else check_inverse_link(link)
        regularizer = _as_regularizer(raw["regularizer"])
        if "regularizer_strength" in changes:
            strength = changes["regularizer_strength"]
            if strength is not None and regularizer.name == "UnRegularized":
                strength = _adapt_strength(regularizer, strength)
            strength = regularizer.validate_strength(strength)
        else:
            strength = _adapt_strength(regularizer, self._strength)
        solver = regularizer.default_solver if raw["solver_name"] is None else parse_solver_name(raw["solver_name"])
        if solver not in regularizer.allowed_solvers:
            raise InputError(
                f"solver {solver!r} cannot fit the {regularizer.name} regularizer; allowed solvers are "
                f"{list(regularizer.allowed_solvers)}"
            )
        kwargs = raw["solver_kwargs"]
        if kwargs is not None and not isinstance(kwargs, dict):
            raise InputTypeError(f"solver_kwargs must be a dict; got {type(kwargs).__name__}")
        kwargs = _solvers.validate_solver_kwargs(solver, kwargs or {})
        self._raw = raw
        self._observation_model, self._link, self._regularizer = observation, link, regularizer
        self._strength, self._solver, self._solver_kwargs = strength, solver, kwargs

    @property
    def observation_model(self) -> Observations:
        """The observation model (an instance; ``get_params`` returns what was passed)."""
        return self._observation_model

    @observation_model.setter
    def observation_model(self, value):
        self._configure(observation_model=value)

    @property
    def inverse_link_function(self) -> Callable:
        """The inverse link function; the observation model's default unless one was given."""
        return resolve_link(self._link)

    @inverse_link_function.setter
    def inverse_link_function(self, value):
        self._configure(inverse_link_function=value)

    @property
    def regularizer(self) -> Regularizer:
        return self._regularizer

    @regularizer.setter
    def regularizer(self, value):
        self._configure(regularizer=value)

    @property
    def regularizer_strength(self):
        """The strength as the regularizer uses it: 1.0 by default, ``(s, r)`` for ElasticNet."""
        return self._strength

    @regularizer_strength.setter
    def regularizer_strength(self, value):
        self._configure(regularizer_strength=value)

    @property
    def solver_name(self) -> str:
        """The solver: the one given, or the regularizer's default (LBFGS, or ProximalGradient)."""
        return self._solver

    @solver_name.setter
    def solver_name(self, value):
        self._configure(solver_name=value)

    @property
    def algo_name(self) -> str:
        """The optimisation algorithm, without a backend (NeMoS 0.2.8's ``algo_name``)."""
        return self._solver

    @property
    def solver_kwargs(self) -> dict:
        return dict(self._solver_kwargs)

    @solver_kwargs.setter
    def solver_kwargs(self, value):
        self._configure(solver_kwargs=value)

    def _fit_config(self) -> _fit.FitConfig:
        """The static configuration of a fit (checked when the arguments were set)."""
        return _fit.FitConfig(self._observation_model, self._link, self._regularizer, self._solver,
                              tuple(sorted(self._solver_kwargs.items())))

    def _expanded_strength(self, n_features: int, n_neurons: int):
        return self._regularizer.expand_strength(self._strength, n_features, n_neurons)

    def get_params(self, deep: bool = True) -> dict:
        """The constructor's arguments as passed (scikit-learn API).

        ``inverse_link_function`` and ``solver_name`` left as None are returned as the defaults in
        effect; ``regularizer_strength`` as the regularizer uses it (see :attr:`regularizer_strength`).
        """
        out = {name: self._raw[name] for name in self._CONFIG_NAMES}
        out["inverse_link_function"] = out["inverse_link_function"] or self.inverse_link_function
        out["solver_name"] = out["solver_name"] or self._solver
        out["regularizer_strength"] = self._strength
        return out

    def set_params(self, **params):
        """Set constructor arguments together (scikit-learn API); returns self.

        As in NeMoS, a new ``regularizer`` without a ``regularizer_strength`` takes its default strength.
        """
        valid = self.get_params()
        unknown = sorted(set(params) - set(valid))
        if unknown:
            raise InputError(f"{unknown} are not parameters of {type(self).__name__}; valid are {sorted(valid)}")
        config = {key: value for key, value in params.items() if key in self._CONFIG_NAMES}
        if "regularizer" in config and "regularizer_strength" not in config:
            config["regularizer_strength"] = None
        if config:
            self._configure(**config)
        for key in set(params) - set(config):
            setattr(self, key, params[key])
        return self

    def __sklearn_clone__(self):
        # the arguments as passed: defaults (None) stay defaults in the clone
        params = {**self.get_params(deep=False), **self._raw, "regularizer_strength": self._strength}
        return type(self)(**params)

    def __sklearn_is_fitted__(self) -> bool:
        # coef_ exists (as None) before fit, as in NeMoS 0.2.8; scikit-learn's check_is_fitted asks this
        return getattr(self, "coef_", None) is not None

    def __sklearn_tags__(self):
        from sklearn.utils import RegressorTags, Tags, TargetTags

        return Tags(
            estimator_type="regressor",
            target_tags=TargetTags(required=True, one_d_labels=not self._population, two_d_labels=self._population),
            regressor_tags=RegressorTags(),
        )

    def __repr__(self) -> str:
        def show(value):
            return getattr(value, "__name__", None) or repr(value) if callable(value) else repr(value)

        params = self.get_params()
        args = ", ".join(f"{k}={show(v)}" for k, v in params.items()
                         if v is not None and not (isinstance(v, dict) and not v))
        return f"{type(self).__name__}({args})"

    # ----------------------------------------------------------------- data handling
    def _reset_fit(self):
        self.coef_ = None
        self.intercept_ = None
        self.scale_ = None
        self.dof_resid_ = None
        self.solver_state_ = None
        self.n_iter_ = None
        self.converged_ = None
        self.status_ = None
        self.coef_se_ = None
        self.intercept_se_ = None
        self.heldout_scores_ = None
        # the declared history features of a fit loaded from a store (distglm.history)
        self.history_ = None
        self._groups = None
        self._step_args = None
        self._neuron_ids = None
        # scikit-learn's fitted attribute: present only once the model is fitted
        self.__dict__.pop("n_features_in_", None)

    def _mask_for(self, groups, n_features: int, n_neurons: int) -> np.ndarray:
        return np.ones((n_features, n_neurons))

    def _prepare(self, X, y=None, drop_nans=True):
        """Validated design (2-D), responses as (n_samples, n_neurons), and the feature groups."""
        dtype = _float_dtype()
        design = val.as_design(X, dtype)
        Xa = design.X
        ya = None
        if y is not None:
            ya = val.as_responses(y, dtype, self._population)
            val.check_n_samples(Xa, ya)
            ya = ya.reshape(ya.shape[0], -1)
        if drop_nans:
            Xa, ya, _ = val.drop_nan_rows(Xa, ya)
        return Xa, ya, design.groups

    def _check_is_fit(self):
        if self.coef_ is None or self.intercept_ is None:
            raise NotFittedError(f"This {type(self).__name__} is not fitted yet; call fit(X, y) first")

    def _coef_matrix(self, names=None) -> np.ndarray:
        """coef_ as one array of shape (n_features, n_neurons); a dict's groups stacked in ``names`` order."""
        coef = self.coef_
        if isinstance(coef, Mapping):
            parts = [np.asarray(coef[name]) for name in (coef if names is None else names)]
            coef = np.concatenate([part.reshape(part.shape[0], -1) for part in parts], axis=0)
        coef = np.asarray(coef)
        return coef.reshape(coef.shape[0], -1)

    def _fitted_params(self, groups, n_features: int):
        """``(coef, intercept, mask)`` of shapes (n_features, n_neurons), (n_neurons,), (n_features, n_neurons).

        Fitted parameters and parameters set by hand (NeMoS's simulation workflow) are checked
        alike against X (its feature groups ``groups`` and ``n_features``) and the feature mask.
        """
        self._check_is_fit()
        coef = self.coef_
        n_dims = 2 if self._population else 1
        expected = "(n_features, n_neurons)" if self._population else "(n_features,)"
        if isinstance(coef, Mapping) != (groups is not None):
            raise InputError("X and coef_ must both be dicts of feature groups, or both arrays; got X as "
                             f"{'a dict' if groups is not None else 'an array'} and coef_ as a {type(coef).__name__}")
        if groups is not None:
            names = [name for name, _ in groups]
            if set(coef) != set(names):
                raise InputError(f"coef_ has feature groups {sorted(coef)} but X has {names}")
            for name, size in groups:
                if np.ndim(coef[name]) != n_dims or np.shape(coef[name])[0] != size:
                    raise InputError(f"coef_[{name!r}] must have shape {expected} with n_features={size} as in X; "
                                     f"got shape {np.shape(coef[name])}")
            matrix = self._coef_matrix(names)
        else:
            if np.ndim(coef) != n_dims:
                raise InputError(f"coef_ must have shape {expected}; got shape {np.shape(coef)}")
            matrix = self._coef_matrix()
        if matrix.shape[0] != n_features:
            raise InputError(f"X has {n_features} features, but {type(self).__name__} is expecting "
                             f"{matrix.shape[0]} features as input (the rows of coef_)")
        intercept = np.asarray(self.intercept_).reshape(-1)
        if intercept.shape != (matrix.shape[1],):
            raise InputError(f"intercept_ must have shape ({matrix.shape[1]},), one per neuron of coef_; "
                             f"got shape {np.shape(self.intercept_)}")
        return matrix, intercept, self._mask_for(groups, n_features, matrix.shape[1])

    def _scale_vector(self, n_neurons: int) -> np.ndarray:
        """``scale_`` of shape (n_neurons,): estimated, set by hand (a scalar or one per neuron), or
        the observation model's ``scale`` when none was estimated, as NeMoS uses."""
        scale = np.asarray(self._observation_model.scale if self.scale_ is None else self.scale_, dtype=float)
        if scale.ndim == 0:
            return np.full(n_neurons, float(scale))
        if scale.shape != (n_neurons,):
            raise InputError(f"scale_ must be a scalar or of shape ({n_neurons},), one per neuron; "
                             f"got shape {scale.shape}")
        return scale

    def _user_coef(self, coef: np.ndarray):
        """Shape an (n_features, n_neurons) array as the user sees coef_ (dict, 1-D for a GLM)."""
        if not self._population:
            coef = coef[:, 0]
        if self._groups is None:
            return coef
        out, start = {}, 0
        for name, size in self._groups:
            out[name] = coef[start:start + size]
            start += size
        return out

    # ----------------------------------------------------------------- fitting
    def fit(self, X, y, init_params=None):
        """Fit the model to ``y`` given the predictors ``X``.

        Parameters
        ----------
        X : array of shape (n_samples, n_features), or dict of (n_samples, k) arrays
        y : array of shape (n_samples,) for a GLM, (n_samples, n_neurons) for a PopulationGLM
        init_params : tuple (coef, intercept), optional
            Starting values; default zeros and the intercepts matching the mean responses.

        Returns
        -------
        self

        Raises
        ------
        InputError
            On inputs of the wrong shape or values outside the family's support.
        FitError
            When every neuron's solution is NaN.
        """
        if y is None:
            raise InputTypeError(f"{type(self).__name__} requires y to be passed, but the target y is None")
        result, groups = self._solve(X, y, init_params)
        val.check_solution(result.coef, result.intercept)
        self._set_fitted(groups, result._asdict(), result.state, neuron_ids=_column_labels(y))
        self._warn_about(result)
        return self

    def _solve(self, X, y, init_params=None):
        """Validate the data and run the solver; returns the :class:`~distglm.core.BlockResult` and X's groups."""
        config = self._fit_config()
        enable_compilation_cache()
        Xa, ya, groups = self._prepare(X, y)
        val.check_support(self._observation_model, ya if self._population else ya[:, 0])
        n_features, n_neurons = Xa.shape[1], ya.shape[1]
        mask = self._mask_for(groups, n_features, n_neurons)
        strength = self._expanded_strength(n_features, n_neurons)
        init = None
        if init_params is not None:
            coef0, intercept0 = val.as_params(init_params, groups, n_features,
                                              n_neurons if self._population else None, Xa.dtype)
            init = _fit.Params(coef0.reshape(n_features, n_neurons), intercept0.reshape(n_neurons))
        return _fit.fit_block(Xa, ya, mask, config, init=init, strength=strength), groups

    def _set_fitted(self, groups, arrays, state=None, neuron_ids=None):
        """Set the fitted attributes from arrays named as :class:`~distglm.core.BlockResult`'s fields.

        ``arrays["coef"]`` has shape (n_features, n_neurons); the other per-neuron arrays
        (``scale``, ``dof_resid``, ``n_iter``, ``converged``, ``status``) may be absent or empty.
        ``neuron_ids`` of shape (n_neurons,) name the neurons in ``failure_reasons_`` and label
        the columns of predictions on a time axis (positions when None).
        """
        self._groups = groups
        self._neuron_ids = neuron_ids
        self.n_features_in_ = int(np.shape(arrays["coef"])[0])
        self.coef_se_ = self.intercept_se_ = self.heldout_scores_ = self.history_ = None
        self.coef_ = self._user_coef(np.asarray(arrays["coef"]))
        self.intercept_ = np.asarray(arrays["intercept"])
        for name in ("scale", "dof_resid", "n_iter", "converged", "status"):
            value = arrays.get(name)
            setattr(self, name + "_", None if value is None or np.size(value) == 0 else np.asarray(value))
        self.solver_state_ = state

    @property
    def failure_reasons_(self) -> dict[int, str]:
        """Neurons that failed or did not converge, with the reason."""
        self._check_is_fit()
        ids = np.arange(np.size(self.status_)) if self._neuron_ids is None else self._neuron_ids
        return {ids[i].item(): _fit.STATUS_REASONS[int(s)] for i, s in enumerate(self.status_) if s != _fit.STATUS_OK}

    def _warn_about(self, result):
        status = np.asarray(result.status)
        failed = int(np.sum(status >= _fit.STATUS_NONFINITE_INIT))
        slow = int(np.sum(status == _fit.STATUS_NOT_CONVERGED))
        if failed:
            warnings.warn(f"{failed} of {status.size} neurons failed to fit; see failure_reasons_", RuntimeWarning,
                          stacklevel=3)
        if slow:
            warnings.warn(
                f"The fit did not converge for {slow} of {status.size} neurons; increase solver_kwargs['maxiter'], "
                "loosen 'tol', or enable float64 with jax.config.update('jax_enable_x64', True)",
                RuntimeWarning, stacklevel=3,
            )

    def compute_standard_errors(self, X, y):
        """Standard errors of the fitted coefficients and intercepts; sets ``coef_se_``, ``intercept_se_``.

        From the Fisher information of the samples at the fitted parameters, with the model's
        scale (estimated for Gamma and Gaussian): the errors statsmodels' ``GLM(...).fit().bse``
        reports for an unpenalised model. For a penalised fit they are conditional on the
        strength: the information is taken at the penalised optimum, without the penalty's
        curvature, and says nothing of the uncertainty in choosing the strength.

        Parameters
        ----------
        X : array of shape (n_samples, n_features), or dict; the samples the model was fitted to
        y : array of shape (n_samples,) or (n_samples, n_neurons); its NaN rows are dropped as in ``fit``

        Returns
        -------
        self
            ``coef_se_`` is shaped as ``coef_`` (NaN for masked features), ``intercept_se_`` has
            shape (n_neurons,) (shape (1,) for a GLM).

        Examples
        --------
        >>> import numpy as np
        >>> from distglm.glm import PopulationGLM
        >>> rng = np.random.default_rng(0)
        >>> X = rng.normal(size=(500, 2)); y = rng.poisson(np.exp(0.3 * X), size=(500, 2))
        >>> model = PopulationGLM().fit(X, y).compute_standard_errors(X, y)
        >>> model.coef_se_.shape, model.intercept_se_.shape
        ((2, 2), (2,))
        """
        Xa, ya, groups = self._prepare(X, y)
        coef, intercept, mask = self._fitted_params(groups, Xa.shape[1])
        if ya.shape[1] != coef.shape[1]:
            raise InputError(f"y has {ya.shape[1]} neurons but coef_ has {coef.shape[1]}")
        coef_se, intercept_se = _inference.standard_errors(self._fit_config(), Xa, mask, coef, intercept,
                                                           self._scale_vector(coef.shape[1]))
        self.coef_se_ = self._user_coef(coef_se)
        self.intercept_se_ = intercept_se
        return self

    # ----------------------------------------------------------------- evaluation
    def _rate(self, X, coef, intercept, mask=None):
        return np.asarray(_fit.predict_rate(self.inverse_link_function, jnp.asarray(X), jnp.asarray(coef),
                                            jnp.asarray(intercept), None if mask is None else jnp.asarray(mask)))

    def predict(self, X):
        """Predicted mean response, shape (n_samples,) or (n_samples, n_neurons); NaN rows stay NaN.

        A pynapple ``TsdFrame`` X (or feature groups of them) gives a ``Tsd``/``TsdFrame`` on its time axis.

        Examples
        --------
        >>> import numpy as np
        >>> from distglm.glm import GLM
        >>> X = np.random.default_rng(1).normal(size=(50, 2))
        >>> y = np.random.default_rng(2).poisson(1.0, size=50)
        >>> GLM().fit(X, y).predict(X).shape
        (50,)
        """
        return _on_time_axis(self._predict_array(X), X, self._neuron_ids)

    def _predict_array(self, X) -> np.ndarray:
        Xa, _, groups = self._prepare(X, drop_nans=False)
        rate = self._rate(Xa, *self._fitted_params(groups, Xa.shape[1]))
        return rate if self._population else rate[:, 0]

    def compute_loss(self, params, X, y):
        """Unpenalised loss of ``params = (coef, intercept)``: mean NLL over samples, summed over neurons."""
        Xa, ya, groups = self._prepare(X, y)
        n_neurons = ya.shape[1]
        coef, intercept = val.as_params(params, groups, Xa.shape[1], n_neurons if self._population else None,
                                        Xa.dtype)
        rate = self._rate(Xa, coef.reshape(Xa.shape[1], n_neurons), intercept.reshape(n_neurons),
                          self._mask_for(groups, Xa.shape[1], n_neurons))
        return jnp.sum(jnp.mean(self._observation_model.nll_terms(jnp.asarray(ya), jnp.asarray(rate)), axis=0))

    def score(self, X, y, score_type: str = "log-likelihood", aggregate_sample_scores: Callable = jnp.mean):
        """Goodness of fit: mean log-likelihood, or McFadden's or Cohen's pseudo-R2.

        Parameters
        ----------
        X : array of shape (n_samples, n_features) or dict
        y : array of shape (n_samples,) or (n_samples, n_neurons)
        score_type : {"log-likelihood", "pseudo-r2-McFadden", "pseudo-r2-Cohen"}
        aggregate_sample_scores : callable
            Reduces the per-sample, per-neuron array to the score (default: mean of all).

        Returns
        -------
        float
        """
        if score_type not in SCORE_TYPES:
            raise UnsupportedOptionError(
                f"score_type {score_type!r} is not implemented; score_type must be one of {list(SCORE_TYPES)}"
            )
        Xa, ya, groups = self._prepare(X, y)
        coef, intercept, mask = self._fitted_params(groups, Xa.shape[1])
        if ya.shape[1] != coef.shape[1]:
            raise InputError(f"y has {ya.shape[1]} neurons but coef_ has {coef.shape[1]}")
        rate = self._rate(Xa, coef, intercept, mask)
        terms = score_terms(self._observation_model, ya, rate, self._scale_vector(coef.shape[1]), score_type)
        return finish_score(*(None if t is None else aggregate_sample_scores(t) for t in terms), score_type)

    def simulate(self, random_key, feedforward_input):
        """Draw responses from the fitted model.

        Returns
        -------
        (samples, rates) : arrays of shape (n_samples,) or (n_samples, n_neurons)
            pynapple ``Tsd``/``TsdFrame`` objects on the input's time axis when the input is one.
        """
        rate = jnp.asarray(self._predict_array(feedforward_input))
        scale = jnp.asarray(self._scale_vector(np.size(self.intercept_)), rate.dtype)
        samples = self._observation_model.sample(random_key, rate, scale)
        return (_on_time_axis(samples, feedforward_input, self._neuron_ids),
                _on_time_axis(rate, feedforward_input, self._neuron_ids))

    # ----------------------------------------------------------------- step-by-step fitting
    def initialize_params(self, X, y):
        """Starting ``(coef, intercept)``: zeros and the intercepts matching the mean responses."""
        Xa, ya, groups = self._prepare(X, y)
        self._groups = groups
        init = _fit.default_init(self._fit_config(), ya, Xa.shape[1], Xa.dtype)
        return self._user_coef(np.asarray(init.coef)), np.asarray(init.intercept)

    def initialize_state(self, X, y, init_params):
        """Set up the solver for :meth:`update` from ``init_params``; returns the solver state.

        Not available for SVRG and ProxSVRG, whose steps need the full gradient at an anchor
        point that only a whole epoch over the data provides (NeMoS 0.2.8's ``update`` refuses
        them too); they fit with :meth:`fit`.
        """
        config = self._fit_config()
        if _solvers.is_stochastic(config.solver_name):
            raise UnsupportedOptionError(
                f"solver {config.solver_name!r} runs whole epochs over the data and has no step-by-step update; "
                "fit the model with fit(X, y), or choose a full-batch solver (e.g. 'LBFGS', 'ProximalGradient') "
                "for initialize_solver_and_state/update")
        enable_compilation_cache()
        Xa, ya, groups = self._prepare(X, y)
        val.check_support(self._observation_model, ya if self._population else ya[:, 0])
        n_features, n_neurons = Xa.shape[1], ya.shape[1]
        coef, intercept = val.as_params(init_params, groups, n_features, n_neurons if self._population else None,
                                        Xa.dtype)
        self._groups = groups
        self._step_args = (config, self._mask_for(groups, n_features, n_neurons),
                           self._expanded_strength(n_features, n_neurons))
        params = _fit.Params(jnp.asarray(coef.reshape(n_features, n_neurons)), jnp.asarray(intercept.reshape(n_neurons)))
        return _fit.init_update_state(jnp.asarray(Xa), jnp.asarray(ya), jnp.asarray(self._step_args[1], Xa.dtype),
                                      params, self._step_args[2], config)

    initialize_solver_and_state = initialize_state

    def _step_inputs(self, params, X, y):
        """``(X, y, valid, weight, params, groups)`` for one step, the same eagerly and under ``jax.jit``.

        NaN rows are not dropped but zeroed and given weight 0 (``weight`` of shape (n_samples,)
        sums to 1 over the ``valid`` rows), so a traced call runs the very computation an eager
        one does. Concrete inputs are validated in full; traced ones by their shapes.
        """
        dtype = _float_dtype()
        mask = self._step_args[1]
        traced = any(isinstance(leaf, jax.core.Tracer) for leaf in jax.tree_util.tree_leaves((params, X, y)))
        if traced:
            groups = tuple((k, jnp.shape(v)[1]) for k, v in X.items()) if isinstance(X, Mapping) else None
            Xj = jnp.concatenate([jnp.asarray(X[k], dtype) for k, _ in groups], axis=1) if groups else \
                jnp.asarray(X, dtype)
            yj = jnp.asarray(y, dtype)
            yj = yj.reshape(yj.shape[0], -1)
            coef, intercept = params
            if groups:
                coef = jnp.concatenate([jnp.reshape(coef[k], (size, -1)) for k, size in groups], axis=0)
            coef, intercept = jnp.asarray(coef, dtype), jnp.asarray(intercept, dtype).reshape(-1)
            if Xj.shape[0] != yj.shape[0] or Xj.shape[1] != mask.shape[0] or yj.shape[1] != mask.shape[1] \
                    or coef.size != mask.size or intercept.shape != (mask.shape[1],):
                raise InputError(f"X {Xj.shape}, y {yj.shape}, coef {coef.shape} and intercept {intercept.shape} "
                                 f"do not match the shapes of initialize_state's inputs (features, neurons) = "
                                 f"{mask.shape}")
            coef = coef.reshape(mask.shape)
        else:
            Xa, ya, groups = self._prepare(X, y, drop_nans=False)
            _, kept, _ = val.drop_nan_rows(Xa, ya)
            val.check_support(self._observation_model, kept if self._population else kept[:, 0])
            if Xa.shape[1] != mask.shape[0] or ya.shape[1] != mask.shape[1]:
                raise InputError(f"X and y give (features, neurons) = {(Xa.shape[1], ya.shape[1])} but "
                                 f"initialize_state was given {mask.shape}")
            coef, intercept = val.as_params(params, groups, Xa.shape[1], ya.shape[1] if self._population else None,
                                            dtype)
            Xj, yj = jnp.asarray(Xa), jnp.asarray(ya)
            coef, intercept = jnp.asarray(coef).reshape(mask.shape), jnp.asarray(intercept).reshape(-1)
        valid = ~(jnp.any(jnp.isnan(Xj), axis=1) | jnp.any(jnp.isnan(yj), axis=1))
        weight = valid / jnp.sum(valid)
        return (jnp.where(valid[:, None], Xj, 0.0), jnp.where(valid[:, None], yj, 0.0), valid, weight,
                _fit.Params(coef, intercept), groups)

    def _step(self, params, opt_state, X, y):
        """One solver step: ``(params, state, X, y, valid)``, new params masked, data as the step saw it."""
        if self._step_args is None:
            raise NotFittedError("call initialize_solver_and_state(X, y, init_params) before a solver step")
        config, mask, strength = self._step_args
        Xj, yj, valid, weight, p, groups = self._step_inputs(params, X, y)
        new, state = _fit.update_step(Xj, yj, jnp.asarray(mask, Xj.dtype), p, opt_state, strength, config,
                                      weight=weight)
        self._groups = groups
        return new, state, Xj, yj, valid

    # NeMoS 0.2.8 exposes its solver's functions; they return ``aux`` (None here) and set no attribute
    @property
    def solver_init_state(self) -> Callable | None:
        """``(init_params, X, y) -> state``, as :meth:`initialize_solver_and_state`; None before it is called."""
        if self._step_args is None:
            return None
        return lambda init_params, X, y: self.initialize_state(X, y, init_params)

    @property
    def solver_update(self) -> Callable | None:
        """``(params, state, X, y) -> (params, state, None)``: one step, no attribute set; None before
        :meth:`initialize_solver_and_state`."""
        if self._step_args is None:
            return None

        def solver_update(params, opt_state, X, y):
            new, state, *_ = self._step(params, opt_state, X, y)
            return (self._user_coef(new.coef), new.intercept), state, None

        return solver_update

    @property
    def solver_run(self) -> Callable | None:
        """``(init_params, X, y) -> (params, state, None)``: a whole solve, no attribute set; None before
        :meth:`initialize_solver_and_state`."""
        if self._step_args is None:
            return None

        def solver_run(init_params, X, y):
            result, groups = self._solve(X, y, init_params)
            self._groups = groups
            return (self._user_coef(result.coef), result.intercept), result.state, None

        return solver_run

    def update(self, params, opt_state, X, y, n_samples: int | None = None):
        """One solver step on ``(X, y)``; returns ``(params, opt_state)`` and stores them as fitted.

        Rows with a NaN are left out. The step is deterministic and gives the same result when the
        call is wrapped in ``jax.jit``; a traced call only returns its result, and leaves the
        model's fitted attributes (``coef_``, ``scale_``, ...) as they were.

        Parameters
        ----------
        params : tuple (coef, intercept)
            Coefficients of shape (n_features, n_neurons) ((n_features,) for a GLM) and intercepts.
        opt_state : the state from :meth:`initialize_state` or the previous ``update``
        X : array of shape (n_samples, n_features), or dict of arrays
        y : array of shape (n_samples, n_neurons), or (n_samples,) for a GLM
        n_samples : int, optional
            The number of samples of the whole data set when ``(X, y)`` is a batch; it sets
            ``dof_resid_`` and so the scale estimate. Default: the rows of this batch without NaN.
        """
        if n_samples is not None and (isinstance(n_samples, bool) or not isinstance(n_samples, int)):
            raise InputTypeError(f"n_samples must be None or an int; got {n_samples!r}")
        new, state, Xj, yj, valid = self._step(params, opt_state, X, y)
        coef = self._user_coef(new.coef)
        if isinstance(new.coef, jax.core.Tracer):
            # under jax.jit the values are traced: storing them would leak tracers into the model
            return (coef, new.intercept), state
        config = self._step_args[0]
        rows = jnp.sum(valid) if n_samples is None else n_samples
        dof = _fit.dof_resid(config, Xj, new.coef) + (rows - Xj.shape[0])
        rate = _fit.predict_rate(self.inverse_link_function, Xj, new.coef, new.intercept)
        self.coef_, self.intercept_, self.dof_resid_ = coef, new.intercept, dof
        self.scale_ = self._observation_model.estimate_scale(jnp.where(valid[:, None], yj, rate), rate, dof)
        self.solver_state_ = state
        return (coef, new.intercept), state

    # ----------------------------------------------------------------- persistence
    def save_params(self, filename: str | Path):
        """Save the model to a ``.npz`` file in NeMoS 0.2.8's layout (see :func:`load_model`).

        NeMoS's ``nemos.load_model`` reads the file too; a custom inverse link is saved by name
        and must be given back when loading. An unfitted model is saved as well, as in NeMoS.
        """
        np.savez(filename, **_npz.flatten(_model_tree(self)))


class PopulationGLM(GLM):
    """Generalized linear model of a population of neurons sharing one design matrix.

    Parameters are those of :class:`GLM`, plus

    feature_mask : array of 0/1 of shape (n_features, n_neurons), or dict of (n_neurons,) arrays
        Feature ``i`` predicts neuron ``j`` iff ``feature_mask[i, j] == 1`` (for a dict X,
        ``feature_mask[group][j]``). Masked coefficients are returned as exactly 0.

    Examples
    --------
    >>> import numpy as np
    >>> from distglm.glm import PopulationGLM
    >>> np.random.seed(123)
    >>> X = np.random.normal(size=(100, 3))
    >>> weights = np.array([[0.5, 0.0], [-0.5, -0.5], [0.0, 1.0]])
    >>> y = np.random.poisson(np.exp(X.dot(weights)))
    >>> model = PopulationGLM(feature_mask=np.array([[1, 0], [1, 1], [0, 1]])).fit(X, y)
    >>> model.coef_.shape
    (3, 2)
    """

    _population = True

    def __init__(
        self,
        observation_model: str | Observations = "Poisson",
        inverse_link_function: Callable | str | None = None,
        regularizer: str | Regularizer | None = "UnRegularized",
        regularizer_strength: Any = None,
        solver_name: str | None = None,
        solver_kwargs: dict | None = None,
        feature_mask: Any = None,
    ):
        super().__init__(observation_model, inverse_link_function, regularizer, regularizer_strength,
                         solver_name, solver_kwargs)
        self.feature_mask = feature_mask

    @property
    def feature_mask(self):
        return self._feature_mask

    @feature_mask.setter
    def feature_mask(self, mask):
        if getattr(self, "coef_", None) is not None:
            raise AttributeError("feature_mask of a fitted PopulationGLM cannot be changed; fit a new model")
        if mask is None:
            self._feature_mask = None
        elif isinstance(mask, Mapping):
            checked = {}
            for key, value in mask.items():
                arr = np.asarray(value, dtype=float)
                if arr.ndim != 1:
                    raise InputError(f"feature_mask[{key!r}] must be 1-D of shape (n_neurons,); got shape {arr.shape}")
                val.check_binary_mask(arr)
                checked[key] = arr
            self._feature_mask = checked
        else:
            arr = val._as_numeric(mask, "feature_mask").astype(float)
            if arr.ndim != 2:
                raise InputError(
                    f"feature_mask must be 2-D of shape (n_features, n_neurons); got shape {arr.shape}"
                )
            val.check_binary_mask(arr)
            self._feature_mask = arr
        self._feature_mask_raw = mask

    def get_params(self, deep: bool = True) -> dict:
        return {**super().get_params(deep), "feature_mask": self._feature_mask_raw}

    def _mask_for(self, groups, n_features, n_neurons):
        if self._feature_mask is None:
            return np.ones((n_features, n_neurons))
        return val.as_feature_mask(self._feature_mask, groups, n_features, n_neurons)


# ---------------------------------------------------------------------- NeMoS models
def from_nemos(model) -> PopulationGLM:
    """A distglm ``PopulationGLM`` configured as a NeMoS 0.2.8 ``GLM`` or ``PopulationGLM`` is.

    The observation model, inverse link, regularizer (GroupLasso's mask included), strength,
    solver and solver settings carry over, and a PopulationGLM's feature mask; fitted
    parameters do not (the model is to be fitted). A distglm ``PopulationGLM`` is returned as it
    is.

    Parameters
    ----------
    model : nemos.glm.GLM, nemos.glm.PopulationGLM, or a distglm PopulationGLM

    Returns
    -------
    PopulationGLM

    Raises
    ------
    InputTypeError
        If ``model`` is none of those (a distglm ``GLM`` included: it is the in-memory model of
        one neuron; ``PopulationGLM(**glm.get_params())`` is its population version).
    InputError
        If NeMoS's solver is one distglm lacks (a solver registered with NeMoS by the user); the
        message lists distglm's solvers.
    UnknownSolverArgumentError
        If a NeMoS solver setting has no distglm counterpart.

    Examples
    --------
    >>> import nemos as nmo
    >>> model = from_nemos(nmo.glm.PopulationGLM(regularizer="Ridge", regularizer_strength=0.1))
    >>> type(model).__name__, model.regularizer.name, model.regularizer_strength
    ('PopulationGLM', 'Ridge', 0.1)
    """
    if isinstance(model, PopulationGLM):
        return model
    if isinstance(model, GLM):
        raise InputTypeError("model must be a distglm PopulationGLM: a GLM is one neuron's in-memory model "
                             "(PopulationGLM(**model.get_params()) is its population version)")
    if not (type(model).__module__.startswith("nemos") and type(model).__name__ in ("GLM", "PopulationGLM")):
        raise InputTypeError("model must be a distglm PopulationGLM, or a NeMoS 0.2.8 GLM or PopulationGLM; got "
                             f"{type(model).__module__}.{type(model).__name__}")
    params = model.get_params(deep=False)
    return PopulationGLM(**{name: params[name] for name in GLM._CONFIG_NAMES},
                         feature_mask=params.get("feature_mask"))


# ---------------------------------------------------------------------- configuration I/O
def check_link_portable(model: GLM) -> None:
    """Raise unless the model's inverse link can be written into a job record (a named link).

    A fit submitted as a job is rebuilt on the cluster from :func:`model_to_config`, which names
    links; a custom callable has no name there. (``distglm.fit`` sends a custom callable to its
    actors itself.)

    Raises
    ------
    InputError
        If the inverse link is a custom callable rather than one of the named links.

    Examples
    --------
    >>> check_link_portable(PopulationGLM(observation_model="Bernoulli", inverse_link_function="norm.cdf"))
    """
    if not isinstance(model._link, str):
        raise InputError(
            f"the custom inverse link {getattr(model._link, '__name__', model._link)!r} cannot be written into a "
            "submitted job's record, from which the cluster rebuilds the model; use a named link "
            f"({sorted(LINKS)}, or any spelling NeMoS accepts, e.g. 'jax.scipy.stats.norm.cdf'), or fit with "
            "distglm.fit(path, model), which sends the function to the actors"
        )


def model_to_config(model: GLM) -> dict:
    """A JSON-able description of a model's configuration (no fitted values)."""
    obs = model.observation_model
    if model._raw["inverse_link_function"] is None:
        link = None
    elif isinstance(model._link, str):
        link = model._link
    else:
        link = "custom:" + getattr(model._link, "__name__", "function")
    reg = model.regularizer
    strength = model.regularizer_strength

    def _jsonable(x):
        if isinstance(x, tuple):
            return {"tuple": [_jsonable(v) for v in x]}
        if x is None or isinstance(x, (int, float, str, bool)):
            return x
        return np.asarray(x, dtype=float).tolist()

    mask = getattr(model, "feature_mask", None)
    if isinstance(mask, dict):
        mask = {"dict": {k: np.asarray(v).tolist() for k, v in mask.items()}}
    elif mask is not None:
        mask = np.asarray(mask).tolist()
    config = {
        "class": type(model).__name__,
        "observation_model": obs.name,
        "observation_scale": obs.fixed_scale,
        "inverse_link_function": link,
        "regularizer": reg.name,
        "group_mask": None if not isinstance(reg, GroupLasso) or reg.mask is None else reg.mask.tolist(),
        "regularizer_strength": _jsonable(strength),
        "solver_name": None if model._raw["solver_name"] is None else model._solver,
        "solver_kwargs": model.solver_kwargs,
        "feature_mask": mask,
    }
    if isinstance(model, PopulationGLMCV):
        config["cv"] = model._cv_config()
    return config


def model_from_config(config: dict) -> GLM:
    """Rebuild an unfitted model from :func:`model_to_config`'s output."""
    if not isinstance(config, dict):
        raise InputTypeError(f"a model configuration must be a dict; got {type(config).__name__}")
    known = {"GLM": GLM, "PopulationGLM": PopulationGLM, "PopulationGLMCV": PopulationGLMCV}
    cls = known.get(config.get("class", "PopulationGLM"))
    if cls is None:
        raise InputError(f"model class must be one of {list(known)}; got {config.get('class')!r}")
    unknown = set(config) - {"class", "observation_model", "observation_scale", "inverse_link_function",
                             "regularizer", "group_mask", "regularizer_strength", "solver_name", "solver_kwargs",
                             "feature_mask", "feature_groups", "cv"}
    if unknown:
        raise InputError(f"unknown keys in model configuration: {sorted(unknown)}")

    def _from_json(x):
        if isinstance(x, dict) and "tuple" in x:
            return tuple(_from_json(v) for v in x["tuple"])
        if isinstance(x, list):
            return np.asarray(x, dtype=float)
        return x

    obs_name = config.get("observation_model", "Poisson")
    if obs_name == "NegativeBinomial" and config.get("observation_scale") is not None:
        obs = OBSERVATION_MODELS[obs_name](scale=config["observation_scale"])
    else:
        obs = obs_name
    link = config.get("inverse_link_function")
    if isinstance(link, str) and link.startswith("custom:"):
        raise InputError(
            f"the model used a custom inverse link function ({link[7:]}), which a configuration cannot hold; "
            "use a named link"
        )
    reg = config.get("regularizer", "UnRegularized")
    if reg == "GroupLasso":
        reg = GroupLasso(mask=config.get("group_mask"))
    kwargs = dict(
        observation_model=obs,
        inverse_link_function=link,
        regularizer=reg,
        regularizer_strength=_from_json(config.get("regularizer_strength")),
        solver_name=config.get("solver_name"),
        solver_kwargs=config.get("solver_kwargs") or {},
    )
    if cls is PopulationGLMCV:
        kwargs.update(PopulationGLMCV._cv_kwargs(config.get("cv") or {}))
    if issubclass(cls, PopulationGLM):
        mask = config.get("feature_mask")
        if isinstance(mask, dict) and "dict" in mask:
            mask = {k: np.asarray(v) for k, v in mask["dict"].items()}
        elif mask is not None:
            mask = np.asarray(mask)
        kwargs["feature_mask"] = mask
    return cls(**kwargs)


# The spellings NeMoS 0.2.8 reads back for distglm's named links.
_NEMOS_LINK_SPELLING = {"exp": "jax.numpy.exp", "logistic": "jax.scipy.special.expit", "softplus": "jax.nn.softplus",
                        "norm_cdf": "jax.scipy.stats.norm.cdf", "one_over_x": "nemos.utils.one_over_x",
                        "identity": "identity"}
_NEMOS_MODEL_CLASS = "nemos.glm.glm.{}"
_REQUIRED_KEYS = ("model_class", "observation_model", "regularizer", "save_metadata")
# what NeMoS 0.2.8 writes in save_metadata (it reads none of it back); distglm adds its fit diagnostics
_METADATA_PACKAGES = ("jax", "jaxlib", "scipy", "scikit-learn")
_DIAGNOSTICS = ("n_iter", "converged", "status")


def _saved_link(model: GLM):
    """The inverse link as a name NeMoS 0.2.8 reads (None for the observation model's default)."""
    raw = model._raw["inverse_link_function"]
    if raw is None or isinstance(raw, str):
        return raw
    if isinstance(model._link, str):
        return _NEMOS_LINK_SPELLING[model._link]
    return f"{getattr(raw, '__module__', '')}.{getattr(raw, '__name__', type(raw).__name__)}"


def _model_tree(model: GLM) -> dict:
    """The model as the nested dict NeMoS 0.2.8's ``save_params`` flattens into a ``.npz`` file."""
    from importlib.metadata import PackageNotFoundError, version

    from . import __version__

    def installed(package):
        try:
            return version(package)
        except PackageNotFoundError:
            return "not installed"

    obs, reg = model._observation_model, model._regularizer
    observation = {"class": f"nemos.observation_models.{obs.name}Observations"}
    if obs.fixed_scale is not None:
        observation["params"] = {"scale": obs.fixed_scale}
    regularizer = {"class": f"nemos.regularizer.{reg.name}"}
    if isinstance(reg, GroupLasso) and reg.mask is not None:
        regularizer["params"] = {"mask": reg.mask.astype(np.int32)}
    tree = {}
    if model._population:
        tree["feature_mask"] = model._feature_mask_raw
    fitted = model.coef_ is not None and model.intercept_ is not None
    tree.update({
        "inverse_link_function": _saved_link(model),
        "observation_model": observation,
        "regularizer": regularizer,
        "regularizer_strength": model._strength,
        "solver_kwargs": model.solver_kwargs or None,
        "solver_name": model._raw["solver_name"],
        "aux_": None,
        "coef_": model.coef_ if fitted else None,
        "dof_resid_": model.dof_resid_,
        "intercept_": model.intercept_ if fitted else None,
        "scale_": model.scale_,
        "save_metadata": {**{package: installed(package) for package in _METADATA_PACKAGES}, "nemos": "0.2.8",
                          "distglm": {"version": __version__,
                                      **{name + "_": getattr(model, name + "_") for name in _DIAGNOSTICS}}},
        "model_class": _NEMOS_MODEL_CLASS.format(type(model).__name__),
    })
    return tree


def _model_from_tree(tree: dict, mapping_dict: dict, source: str) -> GLM:
    """Rebuild a model from :func:`_model_tree`'s dict, as written by distglm or by NeMoS 0.2.8."""
    class_name = str(tree["model_class"]).rsplit(".", 1)[-1]
    classes = {"GLM": GLM, "PopulationGLM": PopulationGLM}
    if class_name not in classes:
        raise InputError(f"{source} holds a {tree['model_class']!r}; distglm loads {list(classes)}")
    unknown_maps = sorted(set(mapping_dict) - {"inverse_link_function"})
    if unknown_maps:
        raise InputError(f"mapping_dict may only map 'inverse_link_function'; got {unknown_maps}")

    def spec(name):
        value = tree[name]
        if not isinstance(value, dict) or not isinstance(value.get("class"), str):
            raise InputError(f"{source}: {name} must be saved as a class name and its parameters; got {value!r}")
        return value["class"].rsplit(".", 1)[-1], value.get("params") or {}

    obs_name, obs_params = spec("observation_model")
    # instances, as NeMoS's load_model gives them back (get_params shows them)
    observation = (NegativeBinomialObservations(scale=obs_params.get("scale", 1.0))
                   if obs_name == "NegativeBinomialObservations" else _as_observation(obs_name))
    reg_name, reg_params = spec("regularizer")
    regularizer = GroupLasso(mask=reg_params.get("mask")) if reg_name == "GroupLasso" else _as_regularizer(reg_name)
    link = tree.get("inverse_link_function")
    if "inverse_link_function" in mapping_dict:
        link = mapping_dict["inverse_link_function"]
    elif isinstance(link, str) and link_name(link) is None:
        raise InputError(f"{source} was saved with the custom inverse link {link!r}, which a file cannot hold; "
                         "pass it as load_model(..., mapping_dict={'inverse_link_function': fn})")
    kwargs = dict(observation_model=observation, inverse_link_function=link, regularizer=regularizer,
                  regularizer_strength=tree.get("regularizer_strength"), solver_name=tree.get("solver_name"),
                  solver_kwargs=tree.get("solver_kwargs"))
    if class_name == "PopulationGLM":
        kwargs["feature_mask"] = tree.get("feature_mask")
    model = classes[class_name](**kwargs)
    coef = tree.get("coef_")
    if coef is not None and tree.get("intercept_") is not None:
        groups = tuple((name, np.shape(part)[0]) for name, part in coef.items()) if isinstance(coef, dict) else None
        model.coef_ = coef
        diagnostics = (tree["save_metadata"].get("distglm") or {}) if isinstance(tree["save_metadata"], dict) else {}
        model._set_fitted(groups, {"coef": model._coef_matrix(), "intercept": tree["intercept_"],
                                   "scale": tree.get("scale_"), "dof_resid": tree.get("dof_resid_"),
                                   **{name: diagnostics.get(name + "_") for name in _DIAGNOSTICS}})
    return model


def load_model(filename: str | Path, mapping_dict: dict | None = None) -> GLM:
    """Load a model saved by :meth:`GLM.save_params` or by NeMoS 0.2.8's ``save_params``.

    The file is read without unpickling, and no name in it is imported or evaluated: a custom
    inverse link is given back through ``mapping_dict={"inverse_link_function": fn}``.

    Examples
    --------
    >>> import numpy as np, tempfile, os
    >>> from distglm.glm import GLM, load_model
    >>> X = np.random.default_rng(0).normal(size=(50, 2)); y = np.random.default_rng(1).poisson(1.0, size=50)
    >>> path = os.path.join(tempfile.mkdtemp(), "model.npz")
    >>> GLM(regularizer="Ridge", regularizer_strength=0.1).fit(X, y).save_params(path)
    >>> load_model(path).regularizer
    Ridge()
    """
    path = Path(filename)
    if not path.is_file():
        raise InputError(f"no saved model at {str(filename)!r}")
    if mapping_dict is not None and not isinstance(mapping_dict, dict):
        raise InputTypeError(f"mapping_dict must be a dict; got {type(mapping_dict).__name__}")
    try:
        with np.load(path, allow_pickle=False) as data:
            present = {key.split("::")[1].removeprefix("strkey:") for key in data.files if "::" in key}
            missing = [key for key in _REQUIRED_KEYS if key not in present]
            if missing:
                raise InputError(f"{str(filename)!r} is not a model saved by distglm or NeMoS 0.2.8: missing {missing} "
                                 f"(it holds {sorted(data.files)})")
            tree = _npz.unflatten(data)
    except ValueError as err:  # pickled objects, or not an .npz file at all
        if isinstance(err, InputError):
            raise
        raise InputError(f"{str(filename)!r} is not a readable .npz model file: {err}") from err
    return _model_from_tree(tree, mapping_dict or {}, repr(str(filename)))


# Defined in its own module, which builds on PopulationGLM: imported last, once PopulationGLM exists.
from .cv import PopulationGLMCV  # noqa: E402
