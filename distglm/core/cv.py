"""Cross-validation of the regularizer strength: the grid, the warm-started path, the selection.

For each fold, the candidate strengths are fitted from the largest down, each fit starting
from the previous strength's solution (a warm-started path); every fit is one ``fit_block``
over all the neurons of the block, so the cross-validation runs the same solver as any other
fit. With L-BFGS, each fit also starts from what the previous one knew at its solution
(``core.fit.WarmStart``): its curvature pairs, with the penalty's change of curvature added,
and its data loss and gradient. The first step is then close to a Newton step, and the
starting point is not evaluated again: a candidate takes about half the evaluations of a fit
started from its solution alone, and reaches the same optimum. Held-out scores are kept per (strength, fold, neuron), together with what a pooled
population score needs, so that a strength can be selected per neuron or for the whole
population from one set of fits.

Pure numpy/JAX: the in-memory estimator and the Ray actors call these functions alike.
"""

from __future__ import annotations

import warnings
from functools import partial
from typing import Any, NamedTuple, Sequence

import jax
import numpy as np

from .fit import (DesignGram, FitConfig, Params, WarmStart, _elementwise, bucket_neurons, bucket_rows, default_init,
                  fit_block, predict_rate)
from .scoring import SCORE_TYPES, finish_score, score_terms
from .solvers import PopulationLBFGS

__all__ = ["PathScores", "max_strength", "strength_grid", "cv_path", "empty_warm_start", "fold_scores", "heldout_scores",
           "select"]

# Ridge never sets a coefficient exactly to 0: its largest strength is the Lasso's divided by
# this ratio, as glmnet and glum do for a pure L2 penalty.
_RIDGE_RATIO = 1e-3


class PathScores(NamedTuple):
    """Held-out scores of a cross-validated path; arrays of shape (n_strengths, n_folds, n_neurons).

    Attributes
    ----------
    model : mean over the fold's held-out samples of the model's score terms
    null : the same for the null model (None for ``"log-likelihood"``)
    status : int8 fit status of each candidate (see ``core.fit.STATUS_REASONS``)
    """

    model: Any
    null: Any
    status: Any


def max_strength(config: FitConfig, X, y, mask, ratio: float = 0.5) -> np.ndarray:
    """Per neuron, the smallest strength that keeps every coefficient at 0 (shape (n_neurons,)).

    At coefficients 0 and intercepts matching the mean responses, the gradient ``g`` of the
    mean loss bounds the L1 strength that holds the coefficients at 0: ``max |g|`` for Lasso,
    ``max |g| / r`` for ElasticNet of ratio ``r`` (``ratio``), ``max_g ||g_g|| / sqrt(|g|)`` for
    GroupLasso. Ridge, which never sets a coefficient to 0, takes ``max |g| / 1e-3``.

    Parameters
    ----------
    config : FitConfig
    X : array of shape (n_samples, n_features)
    y : array of shape (n_samples, n_neurons)
    mask : array of shape (n_features, n_neurons)
    ratio : float, the ElasticNet ratio

    Examples
    --------
    >>> import numpy as np
    >>> from distglm.core import FitConfig, PoissonObservations, Lasso
    >>> X = np.array([[1.0], [-1.0], [1.0], [-1.0]]); y = np.array([[2.0], [0.0], [2.0], [0.0]])
    >>> cfg = FitConfig(PoissonObservations(), "exp", Lasso(), "ProximalGradient")
    >>> max_strength(cfg, X, y, np.ones((1, 1)))
    array([1.])
    """
    X = np.asarray(X, dtype=float)
    y = np.asarray(y, dtype=float)
    init = default_init(config, y, X.shape[1], np.float64)
    _, deriv = _elementwise(config.observation, config.link, 1)(y, np.broadcast_to(init.intercept, y.shape))
    grad = np.abs(X.T @ np.asarray(deriv) / X.shape[0]) * np.asarray(mask)
    reg = config.regularizer
    if reg.name == "GroupLasso":
        gmask = reg.group_mask(X.shape[1])
        return (np.sqrt(gmask @ grad**2) / np.sqrt(gmask.sum(axis=1))[:, None]).max(axis=0)
    l1_ratio = {"Lasso": 1.0, "ElasticNet": ratio}.get(reg.name, _RIDGE_RATIO)
    return grad.max(axis=0) / l1_ratio


def strength_grid(top: float, n_strengths: int, decades: float = 4.0) -> np.ndarray:
    """``n_strengths`` log-spaced strengths from ``top`` down ``decades`` decades, largest first.

    Examples
    --------
    >>> strength_grid(10.0, 3, decades=2)
    array([10. ,  1. ,  0.1])
    """
    return np.logspace(np.log10(top), np.log10(top) - decades, n_strengths)


def fold_scores(config: FitConfig, X, y, coef, intercept, scale, score_type: str, data_terms=None):
    """Mean held-out score terms per neuron, ``(model, null)`` of shape (n_neurons,) each.

    ``X`` (n_samples, n_features), ``y`` (n_samples, n_neurons) are the held-out samples;
    ``coef`` (n_features, n_neurons), ``intercept`` and ``scale`` (n_neurons,) the fit;
    ``data_terms``: ``config.observation.data_terms(y)``, when several fits are scored on ``y``.
    """
    return tuple(None if t is None else np.asarray(t)
                 for t in _mean_score_terms(config, X, y, coef, intercept, scale, score_type, data_terms))


@partial(jax.jit, static_argnames=("config", "score_type"))
def _mean_score_terms(config: FitConfig, X, y, coef, intercept, scale, score_type: str, data_terms=None):
    # one compiled program: a path scores every candidate on the same held-out samples
    rate = predict_rate(config.link, X, coef, intercept)
    return tuple(None if t is None else t.mean(axis=0)
                 for t in score_terms(config.observation, y, rate, scale, score_type, data_terms))


@partial(jax.jit, static_argnames=("config",))
def _data_terms(config: FitConfig, y):
    return config.observation.data_terms(y)


def heldout_scores(config: FitConfig, X, y, coef, intercept, scale) -> dict[str, np.ndarray]:
    """Each neuron's score on held-out samples, for every NeMoS score type: ``{score_type: (n_neurons,)}``.

    The score ``PopulationGLM.score(X, y, score_type, aggregate_sample_scores=mean over samples)``
    gives per neuron; shapes as in :func:`fold_scores`.
    """
    return {score_type: np.asarray(finish_score(*fold_scores(config, X, y, coef, intercept, scale, score_type),
                                                score_type)) for score_type in SCORE_TYPES}


def cv_path(X, y, mask, config: FitConfig, strengths: Sequence, folds: Sequence, score_type: str) -> PathScores:
    """Fit every candidate strength on every fold's training samples; score the held-out samples.

    Parameters
    ----------
    X : array of shape (n_samples, n_features)
    y : array of shape (n_samples, n_neurons)
    mask : array of shape (n_features, n_neurons)
    config : FitConfig
    strengths : sequence of per-neuron strength pytrees (``regularizer.expand_strength``),
        from the largest to the smallest: each fit starts from the previous one's solution
        (and, with L-BFGS, its curvature pairs, data loss and gradient).
    folds : sequence of ``(train, test)`` integer index arrays into the samples
    score_type : one of ``core.scoring.SCORE_TYPES``

    Returns
    -------
    PathScores
        A failed candidate (see ``status``) scores NaN.
    """
    X = np.asarray(X)
    y = np.asarray(y)
    n_strengths, n_folds, n_neurons = len(strengths), len(folds), y.shape[1]
    model = np.full((n_strengths, n_folds, n_neurons), np.nan)
    null = None if score_type == "log-likelihood" else np.full_like(model, np.nan)
    status = np.zeros((n_strengths, n_folds, n_neurons), np.int8)
    for k, (train, test) in enumerate(folds):
        start = default_init(config, y[train], X.shape[1], X.dtype)
        X_train, y_train, n_train, gram = _fold_arrays(config, X, y, train)
        X_test, y_test = jax.device_put(X[test]), jax.device_put(y[test])
        # what the held-out log-likelihoods share, computed once for the fold's candidates
        data_terms = None if score_type == "pseudo-r2-Cohen" else _data_terms(config, y_test)
        init, warm = start, empty_warm_start(config, X.shape[1], n_neurons)
        for s, strength in enumerate(strengths):
            res = fit_block(X_train, y_train, mask, config, init=init, strength=strength, warm_start=warm,
                            n_samples=n_train, gram=gram)
            status[s, k] = res.status
            m, n0 = fold_scores(config, X_test, y_test, res.coef, res.intercept, res.scale, score_type, data_terms)
            model[s, k] = m
            if null is not None:
                null[s, k] = n0
            # a neuron that failed at this strength starts the next one afresh
            ok = np.isfinite(res.intercept)
            init = Params(np.where(ok, res.coef, start.coef), np.where(ok, res.intercept, start.intercept))
            if s + 1 < n_strengths:
                warm = _next_warm_start(config, res.warm_start, mask, strength, strengths[s + 1], ok)
    return PathScores(model, null, status)


def _fold_arrays(config: FitConfig, X, y, train):
    """A fold's training samples as every strength of its path fits them: padded once to the
    core's shape bucket and placed on the device, with their Gram matrix computed once, so that
    a candidate costs its solve alone. Returns ``(X, y, n_samples, gram)``."""
    dtype = jax.dtypes.canonicalize_dtype(np.result_type(X))
    n_train, n_neurons = len(train), y.shape[1]
    n_cols = bucket_neurons(n_neurons)
    n_rows = bucket_rows(n_train, n_cols)
    X_train = np.zeros((n_rows, X.shape[1]), dtype)
    X_train[:n_train] = X[train]
    y_train = np.zeros((n_rows, n_cols), dtype)
    y_train[:n_train, :n_neurons] = y[train]
    gram = DesignGram(X_train, n_train) if config.preconditioned else None
    return jax.device_put(X_train), jax.device_put(y_train), n_train, gram


def empty_warm_start(config: FitConfig, n_features: int, n_neurons: int):
    """A warm start that carries nothing (no curvature pairs, an unknown loss) for a path's first
    strength, so that every strength runs the same compiled solve; None for solvers other than
    L-BFGS."""
    if config.solver_name != "LBFGS":
        return None
    size = dict(config.solver_kwargs).get("history_size", PopulationLBFGS.history_size)
    pairs = Params(np.zeros((size, n_features, n_neurons)), np.zeros((size, n_neurons)))
    unknown = np.full(n_neurons, np.nan)
    # the curvature too, where the solve is preconditioned (each strength's solve returns it)
    return WarmStart(pairs, pairs, unknown, Params(np.zeros((n_features, n_neurons)), np.zeros(n_neurons)),
                     unknown if config.preconditioned else None)


def _next_warm_start(config: FitConfig, warm: WarmStart | None, mask, strength, next_strength, ok):
    """One strength's warm start (``BlockResult.warm_start``) for the next strength's fit.

    The data loss, its gradient and the data part of each gradient change are the same for
    both; the penalty's part of a gradient change moves by the change of its curvature times
    the step (a ridge penalty's curvature is its strength). A failed neuron (``ok`` False)
    restarts cold.
    """
    if warm is None:
        return None
    now, nxt = config.regularizer.ridge_diagonal(strength), config.regularizer.ridge_diagonal(next_strength)
    changes = warm.grad_changes
    if now is not None:
        shift = (np.broadcast_to(nxt, mask.shape) - np.broadcast_to(now, mask.shape)) * mask
        changes = Params(changes.coef + shift * warm.steps.coef, changes.intercept)

    def keep(tree, fill=0.0):
        return Params(*(np.where(ok, a, fill) for a in tree))

    curvature = None if warm.curvature is None else np.where(ok, warm.curvature, np.nan)
    return WarmStart(keep(warm.steps), keep(changes), np.where(ok, warm.loss, np.nan), keep(warm.grad), curvature)


def select(path: PathScores, score_type: str, per_neuron: bool, rule: str):
    """Scores of each candidate and the index of the selected strength.

    Parameters
    ----------
    path : PathScores of shape (n_strengths, n_folds, n_neurons), strengths largest first
    score_type : the score the path holds terms of
    per_neuron : bool
        True: each neuron's own held-out score picks its strength. False: the pooled score of
        all neurons picks one strength (the score ``PopulationGLM.score`` gives a fold). A
        neuron without a finite score at every strength and fold (a failed candidate fit) is
        left out of the pooled score, at every strength and fold alike, so that the strengths
        are compared on the same neurons; with ``per_neuron`` False that is warned about
        (RuntimeWarning), since the shared strength is then chosen without those neurons.
    rule : {"min", "1se"}
        "min": the best mean score over folds (the first of equals, i.e. the largest strength).
        "1se": the largest strength whose mean score is within one standard error (standard
        deviation over folds, ddof=1, divided by sqrt(n_folds)) of the best.

    Returns
    -------
    scores : array of shape (n_strengths, n_folds, n_neurons)
    pooled : array of shape (n_strengths, n_folds), the population's score per fold (over the
        neurons with finite scores throughout)
    index : int array of shape (n_neurons,): the selected strength of each neuron (one value
        repeated when ``per_neuron`` is False); a neuron without any finite score gets 0.
    """
    scores = finish_score(path.model, path.null, score_type)
    terms = [np.asarray(t) for t in (path.model, path.null) if t is not None]
    scored = np.all([np.isfinite(t).all(axis=(0, 1)) for t in terms], axis=0)
    n_left_out = int(scored.size - scored.sum())
    if n_left_out and not per_neuron:
        warnings.warn(f"{n_left_out} of {scored.size} neurons have no finite held-out score at some strength and "
                      "fold (a failed candidate fit, see cv_status_): they are left out of the pooled score that "
                      "selects the shared strength", RuntimeWarning, stacklevel=2)
    pool = scored if scored.any() else np.ones_like(scored)
    pooled_null = None if path.null is None else np.asarray(path.null)[..., pool].mean(axis=-1)
    pooled = finish_score(np.asarray(path.model)[..., pool].mean(axis=-1), pooled_null, score_type)
    curves = scores if per_neuron else pooled[..., None]
    index = _select_curve(curves, rule)
    return np.asarray(scores), np.asarray(pooled), np.broadcast_to(index, scores.shape[2:]).copy()


def _select_curve(curves: np.ndarray, rule: str) -> np.ndarray:
    """Selected index per column of ``curves`` (n_strengths, n_folds, n_columns), higher is better."""
    n_folds = curves.shape[1]
    curves = np.where(np.isfinite(curves), curves, np.nan)
    with warnings.catch_warnings():
        # a candidate that failed on every fold has no mean: it is never selected
        warnings.simplefilter("ignore", RuntimeWarning)
        mean = np.nanmean(curves, axis=1)
        se = np.nanstd(curves, axis=1, ddof=1) / np.sqrt(n_folds) if n_folds > 1 else np.zeros_like(mean)
    finite = np.isfinite(mean)
    filled = np.where(finite, mean, -np.inf)
    best = np.argmax(filled, axis=0)
    if rule == "min":
        return np.where(finite.any(axis=0), best, 0)
    cols = np.arange(curves.shape[2])
    threshold = filled[best, cols] - np.nan_to_num(se[best, cols])
    within = filled >= threshold[None, :]
    return np.where(finite.any(axis=0), np.argmax(within, axis=0), 0)
