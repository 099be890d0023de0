"""Observation models: per-sample losses, log-likelihoods, deviances, scale and sampling.

Every function here works elementwise on arrays of shape ``(n_samples, n_neurons)`` and
returns per-sample terms; aggregation (mean over samples, sum over neurons) is left to the
caller, so one block of neurons and the whole population share the same maths.

The losses follow NeMoS 0.2.8: negative log-likelihoods with the normalisation constants
dropped, rates clipped at the dtype's machine epsilon before any logarithm.
"""

from __future__ import annotations

import dataclasses
from typing import Callable, ClassVar

import jax
import jax.numpy as jnp
import numpy as np

__all__ = [
    "Observations",
    "PoissonObservations",
    "GammaObservations",
    "BernoulliObservations",
    "GaussianObservations",
    "NegativeBinomialObservations",
    "OBSERVATION_MODELS",
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
    def fixed_scale(self) -> float | None:
        """The scale set at construction, or None when it is estimated from the fit."""
        return None

    def nll_terms(self, y, rate):
        """Per-sample negative log-likelihood, constants dropped, shape of ``y``."""
        raise NotImplementedError

    def log_likelihood_terms(self, y, rate, scale):
        """Per-sample log-likelihood with its normalisation constant, shape of ``y``."""
        raise NotImplementedError

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

    def log_likelihood_terms(self, y, rate, scale):
        return -self.nll_terms(y, rate) - jax.scipy.special.gammaln(y + 1)

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
            from ..errors import InputTypeError

            raise InputTypeError(
                f"NegativeBinomial scale must be a positive number; got {self.scale!r}"
            )
        if not np.isfinite(self.scale) or self.scale <= 0:
            from ..errors import InputError

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


def _logistic(x):
    return jax.lax.logistic(x)


def _one_over_x(x):
    return 1.0 / x


def _identity(x):
    return x


# name -> (inverse link, link); the link maps a mean response back to the linear predictor
# and gives each neuron's initial intercept.
LINKS: dict[str, tuple[Callable, Callable]] = {
    "exp": (jnp.exp, jnp.log),
    "logistic": (_logistic, jax.scipy.special.logit),
    "one_over_x": (_one_over_x, _one_over_x),
    "identity": (_identity, _identity),
    "softplus": (jax.nn.softplus, lambda m: jnp.log(jnp.expm1(m))),
}

# Callables users commonly pass from jax, and their names above.
_KNOWN_CALLABLES = {
    jnp.exp: "exp",
    jax.lax.logistic: "logistic",
    jax.nn.sigmoid: "logistic",
    jax.scipy.special.expit: "logistic",
    jax.nn.softplus: "softplus",
}


def link_name(inverse_link: Callable | str) -> str | None:
    """The registered name of an inverse link function, or None for a custom callable."""
    if isinstance(inverse_link, str):
        return inverse_link if inverse_link in LINKS else None
    for name, (fn, _) in LINKS.items():
        if inverse_link is fn:
            return name
    try:
        name = _KNOWN_CALLABLES.get(inverse_link)
    except TypeError:  # unhashable callable
        name = None
    if name is None:
        # NeMoS exposes its own exp/logistic/one_over_x/identity helpers; match them by name.
        qual = getattr(inverse_link, "__name__", "")
        name = qual if qual in LINKS and getattr(inverse_link, "__module__", "").startswith("nemos") else None
    return name


def resolve_link(inverse_link: Callable | str) -> Callable:
    """The inverse link function for a name or a callable."""
    if isinstance(inverse_link, str):
        return LINKS[inverse_link][0]
    name = link_name(inverse_link)
    return LINKS[name][0] if name is not None else inverse_link


def initial_intercept(inverse_link: Callable | str, mean_y):
    """Intercept whose inverse link equals each neuron's mean response, shape of ``mean_y``.

    Non-finite entries (for example the log of a zero rate) are returned as they are: the
    caller reports those neurons as failed instead of aborting the whole population.
    """
    name = link_name(inverse_link)
    if name is not None:
        with np.errstate(divide="ignore", invalid="ignore"):
            return LINKS[name][1](mean_y)
    return _invert_numerically(inverse_link, mean_y)


def _invert_numerically(fn: Callable, target):
    """Solve ``fn(x) = target`` elementwise for a custom monotone inverse link (Newton steps)."""
    target = jnp.asarray(target)
    grad = jax.vmap(jax.grad(lambda x: fn(x)))
    x = jnp.zeros_like(target)
    for _ in range(100):
        step = (fn(x) - target) / grad(x)
        x = x - jnp.where(jnp.isfinite(step), step, 0.0)
    ok = jnp.abs(fn(x) - target) <= 1e-4 * jnp.maximum(1.0, jnp.abs(target))
    return jnp.where(ok, x, jnp.nan)
