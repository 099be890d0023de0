"""The cross-validated path's warm starts (core.fit.WarmStart) and the pooled selection with failed neurons."""

import warnings

import numpy as np
import pytest

from distglm.core import cv as core_cv
from distglm.core.fit import Params, WarmStart, default_init, fit_block
from distglm.errors import InputTypeError
from distglm.glm import PopulationGLM, PopulationGLMCV

pytestmark = pytest.mark.usefixtures("x64")

GRID = np.array([1.0, 0.1, 0.01])


def _population(seed=0, n_samples=600, n_features=6, n_neurons=5):
    rng = np.random.default_rng(seed)
    X = 0.5 * rng.normal(size=(n_samples, n_features))
    mask = (rng.random((n_features, n_neurons)) < 0.7).astype(float)
    y = rng.poisson(np.exp(X @ (0.4 * rng.normal(size=(n_features, n_neurons)) * mask) - 0.5)).astype(float)
    return X, y, mask


def _config(mask):
    return PopulationGLM(regularizer="Ridge", regularizer_strength=1.0, feature_mask=mask)._fit_config()


def test_a_warm_started_strength_reaches_the_cold_fit_in_fewer_evaluations():
    X, y, mask = _population()
    config = _config(mask)
    reg = config.regularizer
    # a path's first fit starts from a warm start that carries nothing, and returns its own
    first = fit_block(X, y, mask, config, strength=reg.expand_strength(0.3, *mask.shape),
                      warm_start=core_cv.empty_warm_start(config, *mask.shape))
    assert isinstance(first.warm_start, WarmStart)
    strength = reg.expand_strength(0.1, *mask.shape)
    cold = fit_block(X, y, mask, config, strength=strength)
    # a plain fit compiles without the warm start it would not use
    assert cold.warm_start is None
    ok = np.ones(mask.shape[1], bool)
    warm_start = core_cv._next_warm_start(config, first.warm_start, mask, reg.expand_strength(0.3, *mask.shape),
                                          strength, ok)
    warm = fit_block(X, y, mask, config, init=Params(first.coef, first.intercept), strength=strength,
                     warm_start=warm_start)
    assert warm.converged.all() and cold.converged.all()
    np.testing.assert_allclose(warm.coef, cold.coef, atol=1e-5)
    np.testing.assert_allclose(warm.intercept, cold.intercept, atol=1e-5)
    # the carried loss is the data loss at the returned point: adding the penalty gives the loss
    np.testing.assert_allclose(first.warm_start.loss + 0.5 * 0.3 * np.sum(first.coef**2, axis=0), first.loss,
                               rtol=1e-10)
    assert int(warm.state.num_fun_eval) < int(cold.state.num_fun_eval)


def test_a_neuron_without_a_known_loss_evaluates_its_start_and_still_converges():
    X, y, mask = _population(1)
    config = _config(mask)
    reg = config.regularizer
    big, small = (reg.expand_strength(s, *mask.shape) for s in (0.3, 0.1))
    first = fit_block(X, y, mask, config, strength=big, warm_start=core_cv.empty_warm_start(config, *mask.shape))
    ok = np.array([True, False, True, True, False])
    warm_start = core_cv._next_warm_start(config, first.warm_start, mask, big, small, ok)
    assert np.isnan(warm_start.loss[~ok]).all() and not np.any(warm_start.steps.coef[..., ~ok])
    start = default_init(config, y, X.shape[1], X.dtype)
    init = Params(np.where(ok, first.coef, start.coef), np.where(ok, first.intercept, start.intercept))
    warm = fit_block(X, y, mask, config, init=init, strength=small, warm_start=warm_start)
    cold = fit_block(X, y, mask, config, strength=small)
    np.testing.assert_allclose(warm.coef, cold.coef, atol=1e-5)
    # a cold start (nothing carried) is a plain fit
    empty = core_cv.empty_warm_start(config, *mask.shape)
    again = fit_block(X, y, mask, config, strength=small, warm_start=empty)
    np.testing.assert_array_equal(again.coef, cold.coef)
    assert int(again.state.num_fun_eval) == int(cold.state.num_fun_eval)


def test_warm_start_of_the_wrong_type_is_rejected():
    X, y, mask = _population()
    with pytest.raises(InputTypeError, match="warm_start must be a WarmStart"):
        fit_block(X, y, mask, _config(mask), warm_start=(1, 2))


def test_the_pooled_selection_leaves_out_a_failed_neuron_and_warns():
    X, y, mask = _population(2, n_samples=450)
    y[150:, 4] = 0  # events in the first fold only: its fits on that fold's training samples fail
    kwargs = dict(regularizer="Ridge", regularizer_strengths=GRID, cv=3, per_neuron=False)
    with pytest.warns(RuntimeWarning, match="1 of 5 neurons have no finite held-out score"):
        model = PopulationGLMCV(feature_mask=mask, **kwargs).fit(X, y)
    assert (model.cv_status_[:, 0, 4] != 0).all()
    assert np.isfinite(model.population_cv_scores_).all()
    good = PopulationGLMCV(feature_mask=mask[:, :4], **kwargs).fit(X, y[:, :4])
    np.testing.assert_allclose(model.population_cv_scores_, good.population_cv_scores_, rtol=1e-6)
    assert model.best_index_[0] == good.best_index_[0]
    # each neuron's own selection leaves the pooled score out of it: no warning
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        PopulationGLMCV(feature_mask=mask, **{**kwargs, "per_neuron": True}).fit(X, y)
    assert not any("pooled score" in str(w.message) for w in record)
