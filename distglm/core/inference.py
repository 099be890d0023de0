"""Standard errors of fitted coefficients from the Fisher information at the optimum.

For neuron ``n`` with parameters ``theta = [coef_n, intercept_n]`` on its unmasked features,
the expected information of its samples is ``A^T diag(w) A`` with ``A = [X 1]`` and
``w_i = -E[d^2 log p(y_i) / d eta_i^2]``; for an exponential family, whose log-likelihood is
affine in ``y`` once differentiated in ``eta``, that expectation is the second derivative
taken at ``y_i = mu_i``. The log-likelihood carries the model's scale (estimated for Gamma
and Gaussian, 1 for Poisson and Bernoulli, fixed for NegativeBinomial), so the covariance is
the one statsmodels reports for a GLM fitted by IRLS. Standard errors are the square roots of
the diagonal of its inverse.

For a penalised fit the information is taken at the penalised optimum and the penalty's own
curvature is left out: the errors describe the estimate's sampling variation given the
selected strength, not the uncertainty of the strength's selection.
"""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
import numpy as np

from .fit import FitConfig

__all__ = ["standard_errors"]


def _information_weights(config: FitConfig, eta, scale):
    """``-d^2 log p / d eta^2`` at ``y = mu``, shape of ``eta`` (n_samples, n_neurons)."""
    obs, link = config.observation, config.link
    mu = jax.lax.stop_gradient(link(eta))

    def log_lik(e):
        return obs.log_likelihood_terms(mu, link(e), scale)

    def first(e):
        return jax.jvp(log_lik, (e,), (jnp.ones_like(e),))[1]

    return -jax.jvp(first, (eta,), (jnp.ones_like(eta),))[1]


@partial(jax.jit, static_argnames=("config",))
def _standard_errors(X, mask, coef, intercept, scale, config: FitConfig):
    n, p = X.shape
    A = jnp.concatenate([X, jnp.ones((n, 1), X.dtype)], axis=1)
    weights = _information_weights(config, X @ (coef * mask) + intercept, scale)
    keep = jnp.concatenate([mask, jnp.ones((1, mask.shape[1]), X.dtype)], axis=0).T  # (N, p+1)
    eye = jnp.eye(p + 1, dtype=X.dtype)

    def one(args):
        w, m = args
        info = (A * w[:, None]).T @ A
        # masked parameters are not estimated: their rows and columns give way to the identity
        info = info * m[:, None] * m[None, :] + jnp.diag(1.0 - m)
        chol = jnp.linalg.cholesky(info)
        cov_diag = jnp.sum(jax.scipy.linalg.solve_triangular(chol, eye, lower=True) ** 2, axis=0)
        return jnp.where(m > 0, jnp.sqrt(cov_diag), jnp.nan)

    se = jax.lax.map(one, (weights.T, keep))  # (N, p+1)
    return se[:, :p].T, se[:, p]


def standard_errors(config: FitConfig, X, mask, coef, intercept, scale):
    """Standard errors of each neuron's coefficients and intercept.

    Parameters
    ----------
    config : FitConfig
    X : array of shape (n_samples, n_features), the samples the model was fitted to
    mask : array of shape (n_features, n_neurons)
    coef : array of shape (n_features, n_neurons)
    intercept, scale : arrays of shape (n_neurons,)

    Returns
    -------
    coef_se : array of shape (n_features, n_neurons); NaN for masked features
    intercept_se : array of shape (n_neurons,)
        NaN for a neuron whose information is singular or whose fit failed.

    Examples
    --------
    >>> import numpy as np
    >>> from distglm.core import FitConfig, PoissonObservations, UnRegularized
    >>> cfg = FitConfig(PoissonObservations(), "exp", UnRegularized(), "LBFGS")
    >>> X = np.array([[0.0], [1.0], [0.0], [1.0]])
    >>> coef_se, intercept_se = standard_errors(cfg, X, np.ones((1, 1)), np.zeros((1, 1)), np.zeros(1), np.ones(1))
    >>> round(float(intercept_se[0]), 4)  # sqrt(1 / 2): two samples at rate 1 inform the intercept
    0.7071
    """
    dtype = np.result_type(X)
    arrays = (np.asarray(a, dtype=dtype) for a in (X, mask, coef, intercept, scale))
    coef_se, intercept_se = _standard_errors(*arrays, config=config)
    return np.asarray(coef_se), np.asarray(intercept_se)
