"""Goodness of fit as NeMoS 0.2.8 scores it, split so that scores can be pooled over neurons.

A score is built from per-sample terms: the model's log-likelihood (``"log-likelihood"``),
its log-likelihood and the null model's (McFadden's pseudo-R2), or its deviance and the null
model's (Cohen's pseudo-R2). The null model predicts each neuron's mean response over the
scored samples. ``score_terms`` returns the terms, the caller aggregates them (a mean over
samples per neuron, or over everything as ``GLM.score`` does by default) and
``finish_score`` turns the aggregates into the score. Scoring one neuron at a time and
pooling neurons then share one formula.
"""

from __future__ import annotations

import jax.numpy as jnp

from .observations import Observations

__all__ = ["SCORE_TYPES", "score_terms", "finish_score"]

SCORE_TYPES = ("log-likelihood", "pseudo-r2-McFadden", "pseudo-r2-Cohen")


def score_terms(observation: Observations, y, rate, scale, score_type: str, data_terms=None):
    """Per-sample terms of a score: ``(model_terms, null_terms)``, each shaped like ``y``.

    Parameters
    ----------
    observation : Observations
    y, rate : arrays of shape (n_samples, n_neurons)
        Observed responses and the model's predicted mean.
    scale : array of shape (n_neurons,)
        The model's scale (used by the log-likelihoods; Cohen's deviances use the observation
        model's fixed scale, or 1).
    score_type : {"log-likelihood", "pseudo-r2-McFadden", "pseudo-r2-Cohen"}
    data_terms : array shaped like ``y``, optional
        ``observation.data_terms(y)`` when computed already (scoring several fits on the same
        samples); the log-likelihoods use it instead of computing it again.

    Returns
    -------
    (model_terms, null_terms)
        ``null_terms`` is None for ``"log-likelihood"``.

    Examples
    --------
    >>> import numpy as np
    >>> from distglm.core.observations import PoissonObservations
    >>> y = np.array([[0.0], [2.0]]); rate = np.array([[0.5], [1.5]])
    >>> model, null = score_terms(PoissonObservations(), y, rate, np.ones(1), "pseudo-r2-McFadden")
    >>> model.shape, null.shape
    ((2, 1), (2, 1))
    """
    y = jnp.asarray(y)
    rate = jnp.asarray(rate, dtype=y.dtype)
    null = jnp.ones_like(y) * jnp.mean(y, axis=0)
    if score_type == "pseudo-r2-Cohen":
        dev_scale = jnp.asarray(observation.fixed_scale or 1.0, dtype=y.dtype)
        return observation.deviance_terms(y, rate, dev_scale), observation.deviance_terms(y, null, dev_scale)
    scale = jnp.asarray(scale, dtype=y.dtype)

    def log_likelihood(mean):
        if data_terms is None:
            return observation.log_likelihood_terms(y, mean, scale)
        return observation.log_likelihood_terms(y, mean, scale, data_terms=data_terms)

    model = log_likelihood(rate)
    if score_type == "log-likelihood":
        return model, None
    return model, log_likelihood(null)


def finish_score(model, null, score_type: str):
    """The score from aggregated terms (any shape; ``null`` is None for ``"log-likelihood"``).

    Examples
    --------
    >>> float(finish_score(-1.0, -2.0, "pseudo-r2-McFadden"))
    0.5
    """
    if score_type == "log-likelihood":
        return model
    if score_type == "pseudo-r2-McFadden":
        return 1 - model / null
    return (null - model) / null
