"""``GLM`` and ``PopulationGLM``: in-memory estimators with NeMoS 0.2.8's API.

A NeMoS user switches with one import::

    from distglm.glm import PopulationGLM   # instead of: from nemos.glm import PopulationGLM

Both estimators fit through :func:`distglm.core.fit_block`, the same code every Ray actor
of a distributed fit runs.
"""

from __future__ import annotations

import inspect
import json
import warnings
from pathlib import Path
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from . import validation as val
from .compile_cache import enable_compilation_cache
from .core import fit as _fit
from .core import solvers as _solvers
from .core.observations import OBSERVATION_MODELS, LINKS, Observations, link_name, resolve_link
from .core.regularizers import REGULARIZERS, GroupLasso, Regularizer
from .errors import InputError, InputTypeError, NotFittedError

__all__ = ["GLM", "PopulationGLM", "load_model", "model_to_config", "model_from_config"]

SCORE_TYPES = ("log-likelihood", "pseudo-r2-McFadden", "pseudo-r2-Cohen")


def _float_dtype():
    return np.float64 if jax.config.jax_enable_x64 else np.float32


def _as_observation(value) -> Observations:
    if isinstance(value, Observations):
        return value
    if isinstance(value, str):
        if value not in OBSERVATION_MODELS:
            raise InputError(f"observation_model must be one of {list(OBSERVATION_MODELS)}; got {value!r}")
        return OBSERVATION_MODELS[value]()
    # a NeMoS observation object: map it by class name so `nmo.observation_models.X()` works too
    cls_name = type(value).__name__.replace("Observations", "")
    if cls_name in OBSERVATION_MODELS and type(value).__module__.startswith("nemos"):
        if cls_name == "NegativeBinomial":
            return OBSERVATION_MODELS[cls_name](scale=float(value.scale))
        return OBSERVATION_MODELS[cls_name]()
    raise InputTypeError(
        f"observation_model must be a name in {list(OBSERVATION_MODELS)} or an Observations instance; "
        f"got {value!r}"
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


class GLM:
    """Generalized linear model of one neuron.

    Parameters
    ----------
    observation_model : str or Observations
        "Poisson" (default), "Gamma", "Bernoulli", "Gaussian", "NegativeBinomial", or an instance.
    inverse_link_function : callable or str, optional
        Default: the observation model's (exp, 1/x, logistic, identity, exp).
    regularizer : str or Regularizer
        "UnRegularized" (default), "Ridge", "Lasso", "ElasticNet", "GroupLasso", or an instance.
    regularizer_strength : float, array or tuple, optional
        Ridge/Lasso: scalar or coef-shaped; ElasticNet: ``(strength, ratio)``; GroupLasso: scalar
        or one per group. None means 1.0 for a penalised model.
    solver_name : str, optional
        "GradientDescent", "BFGS", "LBFGS", "NonlinearCG" or "ProximalGradient". Default LBFGS
        for smooth problems, ProximalGradient for Lasso, ElasticNet and GroupLasso.
    solver_kwargs : dict, optional
        Passed to the solver (``tol``, ``maxiter``, ...; LBFGS stops each neuron at a gradient
        norm of ``tol`` = 3e-6 in preconditioned coordinates, see :mod:`distglm.core.solvers`).

    Attributes
    ----------
    coef_ : array of shape (n_features,), or dict of arrays for a dict X
    intercept_ : array of shape (1,)
    scale_, dof_resid_ : arrays of shape (1,)
    n_iter_, converged_ : per-neuron iterations and convergence flags
    solver_state_ : the solver's final state

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

    def __init__(
        self,
        observation_model: str | Observations = "Poisson",
        inverse_link_function: Callable | str | None = None,
        regularizer: str | Regularizer | None = "UnRegularized",
        regularizer_strength: Any = None,
        solver_name: str | None = None,
        solver_kwargs: dict | None = None,
    ):
        self.observation_model = observation_model
        self.inverse_link_function = inverse_link_function
        self.regularizer = regularizer
        self.regularizer_strength = regularizer_strength
        self.solver_name = solver_name
        self.solver_kwargs = solver_kwargs
        self._reset_fit()

    # ----------------------------------------------------------------- configuration
    @property
    def observation_model(self) -> Observations:
        return self._observation_model

    @observation_model.setter
    def observation_model(self, value):
        self._observation_model = _as_observation(value)

    @property
    def inverse_link_function(self) -> Callable:
        if self._inverse_link_function is None:
            return resolve_link(self._observation_model.default_link)
        return resolve_link(self._inverse_link_function)

    @inverse_link_function.setter
    def inverse_link_function(self, value):
        if value is not None and not callable(value) and not (isinstance(value, str) and value in LINKS):
            raise InputTypeError(
                f"inverse_link_function must be callable or one of {list(LINKS)}; got {value!r}"
            )
        self._inverse_link_function = value

    @property
    def regularizer(self) -> Regularizer:
        return self._regularizer

    @regularizer.setter
    def regularizer(self, value):
        self._regularizer = _as_regularizer(value)

    @property
    def solver_name(self) -> str:
        return self._solver_name or self._regularizer.default_solver

    @solver_name.setter
    def solver_name(self, value):
        if value is not None:
            if not isinstance(value, str):
                raise InputTypeError(f"solver_name must be a string; got {value!r}")
            if value not in _solvers.SOLVERS:
                raise InputError(f"solver_name must be one of {list(_solvers.SOLVERS)}; got {value!r}")
        self._solver_name = value

    @property
    def solver_kwargs(self) -> dict:
        return dict(self._solver_kwargs)

    @solver_kwargs.setter
    def solver_kwargs(self, value):
        if value is not None and not isinstance(value, dict):
            raise InputTypeError(f"solver_kwargs must be a dict; got {type(value).__name__}")
        self._solver_kwargs = dict(value or {})

    def _fit_config(self) -> _fit.FitConfig:
        """The static configuration of a fit, checked as a whole (solver vs regularizer)."""
        reg = self._regularizer
        name = self.solver_name
        if name not in reg.allowed_solvers:
            raise InputError(
                f"solver {name!r} cannot fit the {reg.name} regularizer; allowed solvers are {list(reg.allowed_solvers)}"
            )
        kwargs = _solvers.validate_solver_kwargs(name, self._solver_kwargs)
        link = self._inverse_link_function or self._observation_model.default_link
        return _fit.FitConfig(self._observation_model, link, reg, name, tuple(sorted(kwargs.items())))

    def _expanded_strength(self, n_features: int, n_neurons: int):
        strength = self.regularizer_strength
        if self._regularizer.name == "UnRegularized":
            if strength is not None:
                warnings.warn("regularizer_strength is ignored by the UnRegularized regularizer", UserWarning,
                              stacklevel=3)
            return None
        return self._regularizer.expand_strength(strength, n_features, n_neurons)

    def get_params(self, deep: bool = True) -> dict:
        """The constructor's parameters, as scikit-learn expects."""
        names = [p for p in inspect.signature(type(self).__init__).parameters if p != "self"]
        out = {}
        for name in names:
            if name == "inverse_link_function":
                out[name] = self._inverse_link_function
            elif name == "solver_name":
                out[name] = self._solver_name
            else:
                out[name] = getattr(self, name)
        return out

    def set_params(self, **params):
        """Set constructor parameters (scikit-learn API); returns self."""
        valid = self.get_params()
        for key, value in params.items():
            if key not in valid:
                raise InputError(f"{key!r} is not a parameter of {type(self).__name__}; valid are {sorted(valid)}")
            setattr(self, key, value)
        return self

    def __sklearn_clone__(self):
        return type(self)(**self.get_params(deep=False))

    def __sklearn_tags__(self):
        from sklearn.utils import RegressorTags, Tags, TargetTags

        return Tags(
            estimator_type="regressor",
            target_tags=TargetTags(required=True, one_d_labels=not self._population, two_d_labels=self._population),
            regressor_tags=RegressorTags(),
        )

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_params().items() if v is not None)
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
        self._groups = None

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

    def _check_fitted_input(self, X_groups, n_features):
        self._check_is_fit()
        if X_groups != self._groups:
            raise InputError(
                f"X's feature groups {X_groups} do not match those the model was fitted with {self._groups}"
            )
        if n_features != self._coef_matrix.shape[0]:
            raise InputError(
                f"X has {n_features} features but the model was fitted with {self._coef_matrix.shape[0]}"
            )

    def _check_is_fit(self):
        if self.coef_ is None or self.intercept_ is None:
            raise NotFittedError(f"This {type(self).__name__} is not fitted yet; call fit(X, y) first")

    @property
    def _coef_matrix(self) -> np.ndarray:
        """coef_ as one array of shape (n_features, n_neurons)."""
        coef = self.coef_
        if isinstance(coef, dict):
            coef = np.concatenate([np.asarray(coef[name]).reshape(size, -1) for name, size in self._groups], axis=0)
        return np.asarray(coef).reshape(np.asarray(coef).shape[0], -1)

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
        result = _fit.fit_block(Xa, ya, mask, config, init=init, strength=strength)
        val.check_solution(result.coef, result.intercept)
        self._set_fitted(groups, result._asdict(), result.state)
        self._warn_about(result)
        return self

    def _set_fitted(self, groups, arrays, state=None):
        """Set the fitted attributes from arrays named as :class:`~distglm.core.BlockResult`'s fields.

        ``arrays["coef"]`` has shape (n_features, n_neurons); the per-neuron diagnostics
        (``n_iter``, ``converged``, ``status``) may be absent or empty.
        """
        self._groups = groups
        self.coef_ = self._user_coef(np.asarray(arrays["coef"]))
        self.intercept_ = np.asarray(arrays["intercept"])
        self.scale_ = np.asarray(arrays["scale"])
        self.dof_resid_ = np.asarray(arrays["dof_resid"])
        for name in ("n_iter", "converged", "status"):
            value = arrays.get(name)
            setattr(self, name + "_", None if value is None or np.size(value) == 0 else np.asarray(value))
        self.solver_state_ = state

    @property
    def failure_reasons_(self) -> dict[int, str]:
        """Neurons that failed or did not converge, with the reason."""
        self._check_is_fit()
        return {int(i): _fit.STATUS_REASONS[int(s)] for i, s in enumerate(self.status_) if s != _fit.STATUS_OK}

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

    # ----------------------------------------------------------------- evaluation
    def _rate(self, X, coef, intercept, mask=None):
        return np.asarray(_fit.predict_rate(self.inverse_link_function, jnp.asarray(X), jnp.asarray(coef),
                                            jnp.asarray(intercept), None if mask is None else jnp.asarray(mask)))

    def predict(self, X):
        """Predicted mean response, shape (n_samples,) or (n_samples, n_neurons); NaN rows stay NaN.

        Examples
        --------
        >>> import numpy as np
        >>> from distglm.glm import GLM
        >>> X = np.random.default_rng(1).normal(size=(50, 2))
        >>> y = np.random.default_rng(2).poisson(1.0, size=50)
        >>> GLM().fit(X, y).predict(X).shape
        (50,)
        """
        Xa, _, groups = self._prepare(X, drop_nans=False)
        self._check_fitted_input(groups, Xa.shape[1])
        rate = self._rate(Xa, self._coef_matrix, self.intercept_)
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
            raise InputError(f"score_type must be one of {list(SCORE_TYPES)}; got {score_type!r}")
        Xa, ya, groups = self._prepare(X, y)
        self._check_fitted_input(groups, Xa.shape[1])
        if ya.shape[1] != self._coef_matrix.shape[1]:
            raise InputError(f"y has {ya.shape[1]} neurons but the model was fitted with {self._coef_matrix.shape[1]}")
        obs = self._observation_model
        y_j = jnp.asarray(ya)
        rate = jnp.asarray(self._rate(Xa, self._coef_matrix, self.intercept_))
        null = jnp.ones_like(y_j) * jnp.mean(y_j, axis=0)
        scale = jnp.asarray(self.scale_)
        if score_type == "log-likelihood":
            return aggregate_sample_scores(obs.log_likelihood_terms(y_j, rate, scale))
        if score_type == "pseudo-r2-McFadden":
            ll_model = aggregate_sample_scores(obs.log_likelihood_terms(y_j, rate, scale))
            ll_null = aggregate_sample_scores(obs.log_likelihood_terms(y_j, null, scale))
            return 1 - ll_model / ll_null
        dev_scale = jnp.asarray(obs.fixed_scale or 1.0)
        dev_model = aggregate_sample_scores(obs.deviance_terms(y_j, rate, dev_scale))
        dev_null = aggregate_sample_scores(obs.deviance_terms(y_j, null, dev_scale))
        return (dev_null - dev_model) / dev_null

    def simulate(self, random_key, feedforward_input):
        """Draw responses from the fitted model.

        Returns
        -------
        (samples, rates) : arrays of shape (n_samples,) or (n_samples, n_neurons)
        """
        rate = jnp.asarray(self.predict(feedforward_input))
        scale = jnp.asarray(self.scale_) if self._population else jnp.asarray(self.scale_)[0]
        return self._observation_model.sample(random_key, rate, scale), rate

    # ----------------------------------------------------------------- step-by-step fitting
    def initialize_params(self, X, y):
        """Starting ``(coef, intercept)``: zeros and the intercepts matching the mean responses."""
        Xa, ya, groups = self._prepare(X, y)
        self._groups = groups
        init = _fit.default_init(self._fit_config(), ya, Xa.shape[1], Xa.dtype)
        return self._user_coef(np.asarray(init.coef)), np.asarray(init.intercept)

    def initialize_state(self, X, y, init_params):
        """Set up the solver for :meth:`update` from ``init_params``; returns the solver state."""
        config = self._fit_config()
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

    def update(self, params, opt_state, X, y, n_samples: int | None = None):
        """One solver step on ``(X, y)``; returns ``(params, opt_state)`` and stores them as fitted."""
        if getattr(self, "_step_args", None) is None:
            raise NotFittedError("call initialize_state(X, y, init_params) before update")
        if n_samples is not None and (isinstance(n_samples, bool) or not isinstance(n_samples, int)):
            raise InputTypeError(f"n_samples must be None or an int; got {n_samples!r}")
        config, mask, strength = self._step_args
        Xa, ya, groups = self._prepare(X, y)
        n_features, n_neurons = Xa.shape[1], ya.shape[1]
        coef, intercept = val.as_params(params, groups, n_features, n_neurons if self._population else None, Xa.dtype)
        p = _fit.Params(jnp.asarray(coef.reshape(n_features, n_neurons)), jnp.asarray(intercept.reshape(n_neurons)))
        new, state = _fit.update_step(jnp.asarray(Xa), jnp.asarray(ya), jnp.asarray(mask, Xa.dtype), p, opt_state,
                                      strength, config)
        coef_m, intercept_v = np.asarray(new.coef), np.asarray(new.intercept)
        self.coef_ = self._user_coef(coef_m)
        self.intercept_ = intercept_v
        dof = np.asarray(_fit.dof_resid(config, Xa, coef_m))
        if n_samples is not None:
            dof = dof + (n_samples - Xa.shape[0])
        self.dof_resid_ = dof
        rate = jnp.asarray(self._rate(Xa, coef_m, intercept_v))
        self.scale_ = np.asarray(self._observation_model.estimate_scale(jnp.asarray(ya), rate, jnp.asarray(dof)))
        self.solver_state_ = state
        return (self.coef_, self.intercept_), state

    # ----------------------------------------------------------------- persistence
    def save_params(self, filename: str | Path):
        """Save the configuration and fitted parameters to a ``.npz`` file (see :func:`load_model`)."""
        self._check_is_fit()
        np.savez(
            filename,
            config=np.asarray(json.dumps({**model_to_config(self), "feature_groups": self._groups})),
            coef=self._coef_matrix,
            intercept=np.asarray(self.intercept_),
            scale=np.asarray(self.scale_),
            dof_resid=np.asarray(self.dof_resid_),
            n_iter=np.asarray(self.n_iter_ if self.n_iter_ is not None else []),
            converged=np.asarray(self.converged_ if self.converged_ is not None else []),
            status=np.asarray(self.status_ if self.status_ is not None else []),
        )


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
        elif isinstance(mask, dict):
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

    def _mask_for(self, groups, n_features, n_neurons):
        if self._feature_mask is None:
            return np.ones((n_features, n_neurons))
        return val.as_feature_mask(self._feature_mask, groups, n_features, n_neurons)


# ---------------------------------------------------------------------- configuration I/O
def model_to_config(model: GLM) -> dict:
    """A JSON-able description of a model's configuration (no fitted values)."""
    obs = model.observation_model
    raw_link = model._inverse_link_function
    if raw_link is None:
        link = None
    else:
        link = link_name(raw_link)
        if link is None:
            link = "custom:" + getattr(raw_link, "__name__", "function")
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
    return {
        "class": type(model).__name__,
        "observation_model": obs.name,
        "observation_scale": obs.fixed_scale,
        "inverse_link_function": link,
        "regularizer": reg.name,
        "group_mask": None if not isinstance(reg, GroupLasso) or reg.mask is None else reg.mask.tolist(),
        "regularizer_strength": _jsonable(strength),
        "solver_name": model._solver_name,
        "solver_kwargs": model.solver_kwargs,
        "feature_mask": mask,
    }


def model_from_config(config: dict, mapping_dict: dict | None = None) -> GLM:
    """Rebuild an unfitted model from :func:`model_to_config`'s output.

    ``mapping_dict`` supplies objects JSON cannot hold, e.g. ``{"inverse_link_function": fn}``.
    """
    if not isinstance(config, dict):
        raise InputTypeError(f"a model configuration must be a dict; got {type(config).__name__}")
    mapping_dict = mapping_dict or {}
    known = {"GLM": GLM, "PopulationGLM": PopulationGLM}
    cls = known.get(config.get("class", "PopulationGLM"))
    if cls is None:
        raise InputError(f"model class must be one of {list(known)}; got {config.get('class')!r}")
    unknown = set(config) - {"class", "observation_model", "observation_scale", "inverse_link_function",
                             "regularizer", "group_mask", "regularizer_strength", "solver_name", "solver_kwargs",
                             "feature_mask", "feature_groups"}
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
    link = mapping_dict.get("inverse_link_function", config.get("inverse_link_function"))
    if isinstance(link, str) and link.startswith("custom:"):
        raise InputError(
            f"the model used a custom inverse link function ({link[7:]}); pass it as "
            "mapping_dict={'inverse_link_function': fn}"
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
    if cls is PopulationGLM:
        mask = config.get("feature_mask")
        if isinstance(mask, dict) and "dict" in mask:
            mask = {k: np.asarray(v) for k, v in mask["dict"].items()}
        elif mask is not None:
            mask = np.asarray(mask)
        kwargs["feature_mask"] = mask
    model = cls(**kwargs)
    model._fit_config()  # fail now, not at fit time, on an inconsistent configuration
    return model


def load_model(filename: str | Path, mapping_dict: dict | None = None) -> GLM:
    """Load a model saved by :meth:`GLM.save_params`.

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
    with np.load(path, allow_pickle=False) as data:
        config = json.loads(str(data["config"]))
        model = model_from_config(config, mapping_dict)
        groups = config.get("feature_groups")
        model._set_fitted(None if groups is None else tuple(tuple(g) for g in groups),
                          {name: data[name] for name in data.files})
    return model
