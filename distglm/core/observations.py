"""Observation models: per-sample losses, log-likelihoods, deviances, scale and sampling.

Every function here works elementwise on arrays of shape ``(n_samples, n_neurons)`` and
returns per-sample terms; aggregation (mean over samples, sum over neurons) is left to the
caller, so one block of neurons and the whole population share the same maths.

The losses follow NeMoS 0.2.8: negative log-likelihoods with the normalisation constants
dropped, rates clipped at the dtype's machine epsilon before any logarithm.
"""

from __future__ import annotations

import dataclasses
import sys
from typing import Callable, ClassVar

import jax
import jax.numpy as jnp
import numpy as np

from ..errors import InputError, InputTypeError

__all__ = [
    "Observations",
    "PoissonObservations",
    "GammaObservations",
    "BernoulliObservations",
    "GaussianObservations",
    "NegativeBinomialObservations",
    "OBSERVATION_MODELS",
    "LINKS",
    "LINK_NAMES",
    "link_name",
    "resolve_link",
    "check_inverse_link",
    "initial_intercept",
]


def _eps(x):
    return jnp.finfo(x.dtype).eps


def _clip_rate(rate):
    return jnp.clip(rate, min=_eps(rate))


@dataclasses.dataclass(frozen=True)
class Observations:
    """Base class of the observation models.

    Subclasses define the per-sample negative log-likelihood ``nll_terms`` (constants dropped),
    the normalisation constant ``log_norm_terms``, the residual deviance, the scale estimate,
    a sampler and the support of the observations.
    """

    name: ClassVar[str] = ""
    default_link: ClassVar[str] = "exp"
    support: ClassVar[str] = "any real value"

    @property
    def scale(self) -> float:
        """The scale a model uses when none was estimated (NeMoS's ``observation_model.scale``)."""
        return 1.0

    @property
    def fixed_scale(self) -> float | None:
        """The scale set at construction, or None when it is estimated from the fit."""
        return None

    def nll_terms(self, y, rate):
        """Per-sample negative log-likelihood, constants dropped, shape of ``y``."""
        raise NotImplementedError

    def log_likelihood_terms(self, y, rate, scale):
        """Per-sample log-likelihood with its normalisation constant, shape of ``y``."""
        raise NotImplementedError

    def data_terms(self, y):
        """The part of ``log_likelihood_terms`` that depends on ``y`` alone (shape of ``y``), or None
        when the family splits none off. Scoring many fits on the same samples computes it once
        and passes it to ``log_likelihood_terms(..., data_terms=...)``."""
        return None

    def deviance_terms(self, y, rate, scale):
        """Per-sample residual deviance, shape of ``y``."""
        raise NotImplementedError

    def estimate_scale(self, y, rate, dof_resid):
        """Scale per neuron, shape ``(n_neurons,)``, from ``y``/``rate`` of shape (n_samples, n_neurons)."""
        return jnp.ones(y.shape[1:], dtype=rate.dtype)

    def sample(self, key, rate, scale):
        """Draw observations with mean ``rate`` (any shape)."""
        raise NotImplementedError

    def out_of_support(self, y: np.ndarray) -> np.ndarray:
        """Boolean array, True where ``y`` lies outside the family's support (NaN is ignored)."""
        return np.zeros(np.shape(y), dtype=bool)

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


@dataclasses.dataclass(frozen=True, repr=False)
class PoissonObservations(Observations):
    """Poisson observations (spike counts); default inverse link ``exp``, scale 1."""

    name: ClassVar[str] = "Poisson"
    support: ClassVar[str] = "non-negative values (counts)"

    def nll_terms(self, y, rate):
        rate = _clip_rate(rate)
        return rate - y * jnp.log(rate)

    def log_likelihood_terms(self, y, rate, scale, data_terms=None):
        return -self.nll_terms(y, rate) + (self.data_terms(y) if data_terms is None else data_terms)

    def data_terms(self, y):
        # log(1 / y!): most of the cost of a Poisson log-likelihood
        return -jax.scipy.special.gammaln(y + 1)

    def deviance_terms(self, y, rate, scale):
        ratio = jnp.clip(y / rate, _eps(rate), jnp.inf)
        return 2 * (y * jnp.log(ratio) - (y - rate))

    def sample(self, key, rate, scale):
        return jax.random.poisson(key, rate)

    def out_of_support(self, y):
        with np.errstate(invalid="ignore"):
            return np.asarray(y) < 0


@dataclasses.dataclass(frozen=True, repr=False)
class GammaObservations(Observations):
    """Gamma observations; default inverse link ``1/x``, scale estimated from Pearson residuals."""

    name: ClassVar[str] = "Gamma"
    default_link: ClassVar[str] = "one_over_x"
    support: ClassVar[str] = "strictly positive values"

    def nll_terms(self, y, rate):
        rate = _clip_rate(rate)
        return y / rate + jnp.log(rate)

    def log_likelihood_terms(self, y, rate, scale):
        k = 1.0 / scale
        norm = (k - 1) * jnp.log(y) + k * jnp.log(k) - jax.scipy.special.gammaln(k)
        return norm - k * self.nll_terms(y, rate)

    def deviance_terms(self, y, rate, scale):
        y_mu = jnp.clip(y / rate, min=_eps(rate))
        return 2 * (-jnp.log(y_mu) + (y - rate) / rate) / scale

    def estimate_scale(self, y, rate, dof_resid):
        rate = _clip_rate(rate)
        return jnp.sum((y - rate) ** 2 / rate**2, axis=0) / dof_resid

    def sample(self, key, rate, scale):
        return jax.random.gamma(key, rate / scale) * scale

    def out_of_support(self, y):
        with np.errstate(invalid="ignore"):
            return np.asarray(y) <= 0


@dataclasses.dataclass(frozen=True, repr=False)
class BernoulliObservations(Observations):
    """Bernoulli observations (0/1 events); default inverse link ``logistic``, scale 1."""

    name: ClassVar[str] = "Bernoulli"
    default_link: ClassVar[str] = "logistic"
    support: ClassVar[str] = "values in {0, 1}"

    def nll_terms(self, y, rate):
        eps = _eps(rate)
        p = jnp.clip(rate, min=eps, max=1.0 - eps)
        return -(y * jnp.log(p) + (1 - y) * jnp.log1p(-p))

    def log_likelihood_terms(self, y, rate, scale):
        return -self.nll_terms(y, rate)

    def deviance_terms(self, y, rate, scale):
        eps = _eps(rate)
        r1 = jnp.clip(y / rate, eps, jnp.inf)
        r2 = jnp.clip((1 - y) / (1 - rate), eps, jnp.inf)
        return 2 * (y * jnp.log(r1) + (1 - y) * jnp.log(r2))

    def sample(self, key, rate, scale):
        return jax.random.bernoulli(key, rate).astype(rate.dtype)

    def out_of_support(self, y):
        y = np.asarray(y)
        return ~np.isnan(y) & (y != 0) & (y != 1)


@dataclasses.dataclass(frozen=True, repr=False)
class GaussianObservations(Observations):
    """Gaussian observations; default inverse link ``identity``, scale = residual variance."""

    name: ClassVar[str] = "Gaussian"
    default_link: ClassVar[str] = "identity"

    def nll_terms(self, y, rate):
        return (y - rate) ** 2

    def log_likelihood_terms(self, y, rate, scale):
        return -0.5 * jnp.log(2 * jnp.pi * scale) - (0.5 / scale) * self.nll_terms(y, rate)

    def deviance_terms(self, y, rate, scale):
        return (y - rate) ** 2 / scale

    def estimate_scale(self, y, rate, dof_resid):
        return jnp.sum((y - rate) ** 2, axis=0) / dof_resid

    def sample(self, key, rate, scale):
        return rate + jnp.sqrt(scale) * jax.random.normal(key, rate.shape, dtype=rate.dtype)


@dataclasses.dataclass(frozen=True, repr=False)
class NegativeBinomialObservations(Observations):
    """Negative binomial counts with a fixed dispersion ``scale`` (variance ``mu + scale * mu**2``).

    Parameters
    ----------
    scale : float
        The dispersion; the shape parameter is ``1 / scale``. It is not estimated by the fit.
    """

    scale: float = 1.0
    name: ClassVar[str] = "NegativeBinomial"
    support: ClassVar[str] = "non-negative values (counts)"

    def __post_init__(self):
        if isinstance(self.scale, bool) or not isinstance(self.scale, (int, float, np.floating, np.integer)):
            raise InputTypeError(
                f"NegativeBinomial scale must be a positive number; got {self.scale!r}"
            )
        if not np.isfinite(self.scale) or self.scale <= 0:
            raise InputError(f"NegativeBinomial scale must be a positive finite number; got {self.scale!r}")
        object.__setattr__(self, "scale", float(self.scale))

    @property
    def fixed_scale(self):
        return self.scale

    def nll_terms(self, y, rate):
        rate = _clip_rate(rate)
        factor = 1.0 / (self.scale * rate + 1.0)
        return -(y * jnp.log(1 - factor) + jnp.log(factor) / self.scale)

    def log_likelihood_terms(self, y, rate, scale):
        r = 1.0 / scale
        norm = (
            jax.scipy.special.gammaln(y + r)
            - jax.scipy.special.gammaln(y + 1)
            - jax.scipy.special.gammaln(r)
        )
        return -self.nll_terms(y, rate) + norm

    def deviance_terms(self, y, rate, scale):
        factor = (rate * scale + 1) / (y * scale + 1)
        y_mu = jnp.clip(y / rate, min=_eps(rate))
        return 2 * (y * jnp.log(y_mu * factor) + jnp.log(factor) / scale)

    def estimate_scale(self, y, rate, dof_resid):
        return jnp.full(y.shape[1:], self.scale, dtype=rate.dtype)

    def sample(self, key, rate, scale):
        k_gamma, k_poisson = jax.random.split(key)
        r = 1.0 / scale
        lam = jax.random.gamma(k_gamma, r, shape=rate.shape, dtype=rate.dtype) * rate / r
        return jax.random.poisson(k_poisson, lam).astype(rate.dtype)

    def out_of_support(self, y):
        with np.errstate(invalid="ignore"):
            return np.asarray(y) < 0

    def __repr__(self) -> str:
        return f"NegativeBinomialObservations(scale={self.scale})"


OBSERVATION_MODELS: dict[str, type[Observations]] = {
    cls.name: cls
    for cls in (
        PoissonObservations,
        GammaObservations,
        BernoulliObservations,
        GaussianObservations,
        NegativeBinomialObservations,
    )
}


def logistic(x):
    return jax.lax.logistic(x)


def one_over_x(x):
    return 1.0 / x


def identity(x):
    return x


# name -> (inverse link, link); the link maps a mean response back to the linear predictor
# and gives each neuron's initial intercept.
LINKS: dict[str, tuple[Callable, Callable]] = {
    "exp": (jnp.exp, jnp.log),
    "logistic": (logistic, jax.scipy.special.logit),
    "one_over_x": (one_over_x, one_over_x),
    "identity": (identity, identity),
    "softplus": (jax.nn.softplus, lambda m: jnp.log(jnp.expm1(m))),
    "norm_cdf": (jax.scipy.stats.norm.cdf, jax.scipy.stats.norm.ppf),
}

# The spellings of inverse links NeMoS 0.2.8 accepts as strings, and their names above. A string
# is looked up here and nowhere else: no dotted path is ever imported or evaluated.
LINK_NAMES: dict[str, str] = {
    **{name: name for name in LINKS},
    "jax.numpy.exp": "exp",
    "jax._src.numpy.ufuncs.exp": "exp",
    "nemos.inverse_link_function_utils.exp": "exp",
    "expit": "logistic",
    "jax.lax.logistic": "logistic",
    "jax._src.lax.lax.logistic": "logistic",
    "jax.scipy.special.expit": "logistic",
    "jax._src.scipy.special.expit": "logistic",
    "jax._src.scipy.special.logistic": "logistic",
    "nemos.inverse_link_function_utils.expit": "logistic",
    "nemos.inverse_link_function_utils.logistic": "logistic",
    "jax.nn.softplus": "softplus",
    "jax._src.nn.functions.softplus": "softplus",
    "nemos.inverse_link_function_utils.softplus": "softplus",
    "norm.cdf": "norm_cdf",
    "jax.scipy.stats.norm.cdf": "norm_cdf",
    "jax._src.scipy.stats.norm.cdf": "norm_cdf",
    "nemos.inverse_link_function_utils.norm_cdf": "norm_cdf",
    "nemos.utils.one_over_x": "one_over_x",
    # the names NeMoS 0.2.8 writes to .npz files for its identity and probit wrappers
    "nemos.inverse_link_function_utils.identity": "identity",
    "jax._src.scipy.stats.norm.norm_cdf": "norm_cdf",
    "nemos.inverse_link_function_utils.one_over_x": "one_over_x",
}

# Callables users commonly pass from jax, and their names above.
_KNOWN_CALLABLES = {
    jnp.exp: "exp",
    jax.lax.logistic: "logistic",
    jax.nn.sigmoid: "logistic",
    jax.scipy.special.expit: "logistic",
    jax.nn.softplus: "softplus",
    jax.scipy.stats.norm.cdf: "norm_cdf",
}



def _nemos_link_name(inverse_link: Callable) -> str | None:
    """The name of one of NeMoS's own link functions, found in its table if NeMoS is loaded.

    Only a module already imported is read (``sys.modules``): distglm never imports NeMoS.
    """
    utils = sys.modules.get("nemos.inverse_link_function_utils")
    if utils is None:
        return None
    # both tables: NeMoS's "identity" entry is a lambda, its module attribute a wrapper
    for key, fn in (*getattr(utils, "LINK_NAME_TO_FUNC", {}).items(), *vars(utils).items()):
        if fn is inverse_link and key in LINK_NAMES:
            return LINK_NAMES[key]
    return None


def link_name(inverse_link: Callable | str) -> str | None:
    """The registered name of an inverse link (a callable or a NeMoS spelling), or None if custom.

    Examples
    --------
    >>> import jax
    >>> link_name(jax.scipy.stats.norm.cdf), link_name("jax.numpy.exp"), link_name(lambda x: x**2)
    ('norm_cdf', 'exp', None)
    """
    if isinstance(inverse_link, str):
        return LINK_NAMES.get(inverse_link)
    for name, (fn, _) in LINKS.items():
        if inverse_link is fn:
            return name
    try:
        name = _KNOWN_CALLABLES.get(inverse_link)
    except TypeError:  # unhashable callable
        name = None
    return name if name is not None else _nemos_link_name(inverse_link)


def resolve_link(inverse_link: Callable | str) -> Callable:
    """The inverse link function for a name (see ``LINK_NAMES``) or a callable."""
    name = link_name(inverse_link)
    if name is not None:
        return LINKS[name][0]
    if isinstance(inverse_link, str):
        raise InputError(
            f"Unknown link function: {inverse_link!r}; inverse_link_function must be a callable or one of "
            f"{sorted(LINK_NAMES)}"
        )
    return inverse_link


def check_inverse_link(inverse_link: Callable | str) -> Callable | str:
    """Check an inverse link as NeMoS does; return its registered name, or the callable itself.

    A custom link must be a JAX function acting elementwise: an array in gives an array of the
    same shape out, a scalar gives a scalar, and it is differentiable with a finite, non-zero
    derivative somewhere.

    Raises
    ------
    InputTypeError
        If ``inverse_link`` is neither a callable nor a string.
    InputError
        If it is an unknown name, or a callable that fails one of the checks above.

    Examples
    --------
    >>> import jax.numpy as jnp
    >>> check_inverse_link("jax.scipy.special.expit")
    'logistic'
    >>> check_inverse_link(lambda x: jnp.maximum(x, 0.0) + 0.1).__name__
    '<lambda>'
    """
    if not callable(inverse_link) and not isinstance(inverse_link, str):
        raise InputTypeError(
            f"inverse_link_function must be a callable or one of {sorted(LINK_NAMES)}; got {inverse_link!r}"
        )
    name = link_name(inverse_link)
    if name is not None:
        return name
    fn = resolve_link(inverse_link)
    probe = jnp.array([-1.0, 0.5, 1.0, 2.0])
    try:
        out = fn(probe)
        scalar_out = fn(1.0)
        slope = jax.jvp(fn, (probe,), (jnp.ones_like(probe),))[1]
    except Exception as err:  # noqa: BLE001 - any failure here is the link's
        raise InputError(
            f"inverse_link_function must be a differentiable JAX function of an array; calling or "
            f"differentiating it failed with {type(err).__name__}: {err}"
        ) from err
    if not isinstance(out, jax.Array):
        raise InputError(
            f"inverse_link_function must return a jax array (write it with jax.numpy); got {type(out).__name__}"
        )
    if out.shape != probe.shape or jnp.shape(scalar_out) != ():
        raise InputError(
            "inverse_link_function must act elementwise: an array of shape (4,) must give shape (4,) and "
            f"a scalar a scalar; got shapes {out.shape} and {jnp.shape(scalar_out)}"
        )
    if not bool(jnp.any(jnp.isfinite(slope) & (slope != 0))):
        raise InputError(
            "inverse_link_function must be differentiable with a non-zero derivative; its derivative at "
            f"{probe.tolist()} is {slope.tolist()}"
        )
    return fn


def initial_intercept(inverse_link: Callable | str, mean_y):
    """Intercept whose inverse link equals each neuron's mean response, shape of ``mean_y``.

    Non-finite entries (for example the log of a zero rate) are returned as they are: the
    caller reports those neurons as failed instead of aborting the whole population.
    """
    name = link_name(inverse_link)
    if name is not None:
        with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
            if name in _HOST_INVERSES and isinstance(mean_y, np.ndarray):
                return _HOST_INVERSES[name](mean_y)
            return LINKS[name][1](mean_y)
    return _invert_numerically(inverse_link, mean_y)


# The inverses of ``LINKS`` in numpy, for a host array: an eager JAX operation would be one more
# compilation (about 0.05 s) in the first fit of a process.
_HOST_INVERSES: dict[str, Callable] = {
    "exp": np.log,
    "logistic": lambda m: np.log(m) - np.log1p(-m),
    "one_over_x": lambda m: 1.0 / m,
    "identity": lambda m: m,
    "softplus": lambda m: np.log(np.expm1(m)),
}


def _invert_numerically(fn: Callable, target, max_steps: int = 100, max_halvings: int = 30):
    """Solve ``fn(x) = target`` elementwise for a custom monotone inverse link (traceable under jit).

    Damped Newton steps from ``x = target`` (NeMoS's starting point): a step is halved until it
    reduces the residual, so a sigmoid-shaped link does not overshoot. Entries with no root
    within ``1e-4`` (relative) come back NaN, a target the link only approaches (the 0 of ``exp``)
    included. ``target`` may have any shape, 0-d included.
    """
    target = jnp.asarray(target, dtype=jnp.result_type(float))

    def residual(x):
        return fn(x) - target

    def slope_at(x):
        return jax.jvp(fn, (x,), (jnp.ones_like(x),))[1]

    def newton(_, carry):
        x, r = carry
        step = r / slope_at(x)
        step = jnp.where(jnp.isfinite(step), step, 0.0)

        def halve(_, trial):
            step, x_new, r_new = trial
            worse = ~(jnp.abs(r_new) < jnp.abs(r))
            step = jnp.where(worse, 0.5 * step, step)
            r_try = residual(x - step)
            return step, jnp.where(worse, x - step, x_new), jnp.where(worse, r_try, r_new)

        _, x_new, r_new = jax.lax.fori_loop(0, max_halvings, halve, (step, x - step, residual(x - step)))
        better = jnp.abs(r_new) < jnp.abs(r)
        return jnp.where(better, x_new, x), jnp.where(better, r_new, r)

    x, r = jax.lax.fori_loop(0, max_steps, newton, (target, residual(target)))
    # a zero slope at the "root" means the link only approached the target (underflow)
    ok = (jnp.abs(r) <= 1e-4 * jnp.abs(target)) & (slope_at(x) != 0)
    return jnp.where(ok, x, jnp.nan)
