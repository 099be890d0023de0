"""PopulationGLMCV against explicit loops of PopulationGLM fits and scikit-learn's GridSearchCV."""

import jax.numpy as jnp
import numpy as np
import pytest
import statsmodels.api as sm
from sklearn.base import clone
from sklearn.model_selection import GridSearchCV, KFold, TimeSeriesSplit

import distglm
from distglm.core import cv as core_cv
from distglm.errors import InputError, InputTypeError, UnsupportedOptionError
from distglm.glm import PopulationGLM, PopulationGLMCV

pytestmark = pytest.mark.usefixtures("x64")

# tight enough that warm and cold starts reach the same optimum far inside 1e-5 of every score
TIGHT = {"tol": 1e-10, "maxiter": 5000}
GRID = np.array([3.0, 1.0, 0.3, 0.1, 0.03, 0.01])


def _per_neuron(a):
    return jnp.mean(a, axis=0)


def _population(seed, n_samples, n_features, n_neurons, family="Poisson"):
    rng = np.random.default_rng(seed)
    X = 0.5 * rng.normal(size=(n_samples, n_features))
    mask = np.ones((n_features, n_neurons))
    mask[0, 1] = mask[2, 0] = 0
    weights = 0.3 * rng.normal(size=(n_features, n_neurons)) * mask
    if family == "Poisson":
        y = rng.poisson(np.exp(X @ weights)).astype(float)
    else:
        y = X @ weights + 0.5 + rng.normal(size=(n_samples, n_neurons))
    return X, y, mask


@pytest.mark.parametrize("family,score_type", [("Poisson", "log-likelihood"), ("Gaussian", "pseudo-r2-Cohen")])
def test_cv_scores_equal_an_explicit_loop_of_fits(family, score_type):
    X, y, mask = _population(1, 240, 4, 3, family)
    model = PopulationGLMCV(observation_model=family, regularizer="Ridge", feature_mask=mask, solver_kwargs=TIGHT,
                            regularizer_strengths=GRID, cv=3, scoring=score_type).fit(X, y)
    expected = np.empty((len(GRID), 3, 3))
    for k, (train, test) in enumerate(KFold(3).split(X)):
        for s, strength in enumerate(GRID):
            fold = PopulationGLM(observation_model=family, regularizer="Ridge", regularizer_strength=strength,
                                 feature_mask=mask, solver_kwargs=TIGHT).fit(X[train], y[train])
            expected[s, k] = fold.score(X[test], y[test], score_type=score_type, aggregate_sample_scores=_per_neuron)
    np.testing.assert_allclose(model.cv_scores_, expected, rtol=1e-5)
    best = np.argmax(expected.mean(axis=1), axis=0)
    np.testing.assert_array_equal(model.best_index_, best)
    np.testing.assert_array_equal(model.regularizer_strength_, GRID[best])
    # the refit on all samples is the PopulationGLM fit with those per-neuron strengths
    refit = PopulationGLM(observation_model=family, regularizer="Ridge", feature_mask=mask, solver_kwargs=TIGHT,
                          regularizer_strength=np.broadcast_to(GRID[best], (4, 3)).copy()).fit(X, y)
    np.testing.assert_allclose(model.coef_, refit.coef_, rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(model.intercept_, refit.intercept_, rtol=1e-6)


def test_shared_strength_is_what_grid_search_selects():
    X, y, mask = _population(2, 240, 4, 3)
    for scoring in ("log-likelihood", "pseudo-r2-McFadden"):
        ours = PopulationGLMCV(regularizer="Ridge", feature_mask=mask, solver_kwargs=TIGHT, regularizer_strengths=GRID,
                               cv=KFold(3), scoring=scoring, per_neuron=False).fit(X, y)
        search = GridSearchCV(PopulationGLM(regularizer="Ridge", feature_mask=mask, solver_kwargs=TIGHT),
                              {"regularizer_strength": list(GRID)}, cv=KFold(3),
                              scoring=lambda est, Xt, yt: float(est.score(Xt, yt, score_type=scoring))).fit(X, y)
        np.testing.assert_allclose(ours.population_cv_scores_.mean(axis=1), search.cv_results_["mean_test_score"],
                                   rtol=1e-5)
        assert np.all(ours.regularizer_strength_ == search.best_params_["regularizer_strength"])
        np.testing.assert_allclose(ours.coef_, search.best_estimator_.coef_, rtol=1e-6, atol=1e-9)


def test_per_neuron_selection_beats_the_cross_validated_shared_strength_on_heterogeneous_neurons():
    # rates from 0.01 to 5 per bin; the quiet neurons sharply tuned to 1 feature, the loud ones
    # weakly to all 50: their best Ridge strengths lie 2 to 3 decades apart. The selection sees
    # 1,000 training bins; every model is scored on 8,000 separate test bins.
    # benchmarks/bench_cv_selection.py runs this at 256 neurons and against every shared strength.
    from distglm.demo import simulate_heterogeneous

    n_train = 1000
    pop = simulate_heterogeneous(n_neurons=32, n_samples=n_train + 8000, n_features=50, seed=0)
    X, y = pop.X.astype(np.float32), pop.y.astype(np.float32)
    train, test = slice(0, n_train), slice(n_train, None)
    grid = np.logspace(1, -3, 9)

    def held_out(model):
        return np.median(model.score(X[test], y[test], "pseudo-r2-McFadden", _per_neuron))

    per_neuron = PopulationGLMCV(regularizer="Ridge", regularizer_strengths=grid).fit(X[train], y[train])
    # the shared strength that per_neuron=False (and GridSearchCV) selects from the same folds
    shared = grid[int(np.argmax(per_neuron.population_cv_scores_.mean(axis=1)))]
    theirs = held_out(PopulationGLM(regularizer="Ridge", regularizer_strength=shared).fit(X[train], y[train]))
    ours = held_out(per_neuron)
    assert np.ptp(np.log10(per_neuron.regularizer_strength_)) >= 2
    assert ours > 1.5 * theirs > 0, f"median held-out McFadden R2: per-neuron CV {ours:.4f}, shared CV {theirs:.4f}"


def test_one_standard_error_rule_picks_the_largest_strength_within_one_se_of_the_best():
    # 3 strengths (largest first), 4 folds, 2 neurons: means -1.0, -0.9, -0.88 for neuron 0 with
    # a standard error of 0.05 on the best, so strength 1 is within it; neuron 1 has a clear best
    folds0 = np.array([[-1.0] * 4, [-0.9] * 4, [-0.88 - 0.1, -0.88 + 0.1, -0.88 - 0.1, -0.88 + 0.1]])
    folds1 = np.array([[-2.0] * 4, [-1.0] * 4, [-1.5] * 4])
    path = core_cv.PathScores(np.stack([folds0, folds1], axis=-1), None, np.zeros((3, 4, 2), np.int8))
    _, _, best = core_cv.select(path, "log-likelihood", True, "min")
    _, _, one_se = core_cv.select(path, "log-likelihood", True, "1se")
    se = np.std(folds0[2], ddof=1) / 2
    assert -0.9 >= -0.88 - se
    np.testing.assert_array_equal(best, [2, 1])
    np.testing.assert_array_equal(one_se, [1, 1])


def test_folds_as_labels_or_splitter_equal_contiguous_folds():
    X, y, _ = _population(4, 120, 3, 2)
    kwargs = dict(regularizer_strengths=GRID[:3], solver_kwargs=TIGHT)
    by_int = PopulationGLMCV(cv=3, **kwargs).fit(X, y)
    labels = np.repeat([0, 1, 2], 40)
    by_labels = PopulationGLMCV(cv=labels, **kwargs).fit(X, y)
    np.testing.assert_allclose(by_labels.cv_scores_, by_int.cv_scores_, rtol=1e-9)
    assert [t.tolist() for _, t in distglm.cv.make_folds(KFold(3), 120, X)] == \
           [t.tolist() for _, t in distglm.cv.make_folds(3, 120)]


def test_nan_rows_leave_the_folds_defined_on_the_samples_given():
    X, y, _ = _population(5, 120, 3, 2)
    X_nan = X.copy()
    X_nan[[5, 50]] = np.nan
    kwargs = dict(regularizer_strengths=GRID[:2], solver_kwargs=TIGHT, cv=3)
    with_nan = PopulationGLMCV(**kwargs).fit(X_nan, y)
    keep = np.ones(120, bool)
    keep[[5, 50]] = False
    labels = np.repeat([0, 1, 2], 40)[keep]
    dropped = PopulationGLMCV(**{**kwargs, "cv": labels}).fit(X[keep], y[keep])
    np.testing.assert_allclose(with_nan.cv_scores_, dropped.cv_scores_, rtol=1e-9)


def test_default_grid_starts_where_every_lasso_coefficient_is_zero():
    X, y, _ = _population(6, 200, 3, 2)
    model = PopulationGLMCV(regularizer="Lasso", regularizer_strengths=3, cv=2).fit(X, y)
    grid = model.regularizer_strengths_
    np.testing.assert_allclose(grid[-1] / grid[0], 1e-4)
    top = PopulationGLM(regularizer="Lasso", regularizer_strength=grid[0]).fit(X, y)
    below = PopulationGLM(regularizer="Lasso", regularizer_strength=0.9 * grid[0]).fit(X, y)
    assert np.abs(top.coef_).max() < 1e-12
    assert np.abs(below.coef_).max() > 1e-4


def test_settings_are_checked_when_set_and_clone_keeps_them():
    with pytest.raises(InputError, match="at least 2"):
        PopulationGLMCV(cv=1)
    with pytest.raises(InputTypeError, match="cv must be"):
        PopulationGLMCV(cv="five")
    with pytest.raises(UnsupportedOptionError, match="scoring must be one of"):
        PopulationGLMCV(scoring="accuracy")
    with pytest.raises(InputError, match="selection must be one of"):
        PopulationGLMCV(selection="max")
    with pytest.raises(InputError, match="positive and finite"):
        PopulationGLMCV(regularizer_strengths=[1.0, -1.0])
    with pytest.raises(InputTypeError, match="per_neuron must be"):
        PopulationGLMCV(per_neuron="yes")
    X, y, _ = _population(7, 60, 3, 2)
    with pytest.raises(InputError, match="UnRegularized"):
        PopulationGLMCV(regularizer="UnRegularized").fit(X, y)
    with pytest.raises(UnsupportedOptionError, match="per_neuron=False"):
        PopulationGLMCV(regularizer="GroupLasso").fit(X, y)
    with pytest.raises(InputError, match="one label per sample"):
        PopulationGLMCV(cv=np.zeros(10)).fit(X, y)
    model = PopulationGLMCV(cv=4, scoring="pseudo-r2-Cohen", per_neuron=False, selection="1se")
    params = clone(model).get_params()
    assert (params["cv"], params["scoring"], params["per_neuron"], params["selection"]) == (
        4, "pseudo-r2-Cohen", False, "1se")


# statsmodels warns that the inverse link can leave the Gamma's domain; these data stay inside it
@pytest.mark.filterwarnings("ignore::statsmodels.tools.sm_exceptions.DomainWarning")
@pytest.mark.parametrize("family", ["Poisson", "Gamma", "Gaussian"])
def test_standard_errors_match_statsmodels(family):
    rng = np.random.default_rng(8)
    X = 0.5 * rng.normal(size=(400, 3))
    eta = X @ np.array([0.3, -0.2, 0.1])
    y = {"Poisson": lambda: rng.poisson(np.exp(eta + 0.5)),
         "Gamma": lambda: rng.gamma(4.0, 1.0 / (4.0 * (1.0 + 0.3 * eta))),
         "Gaussian": lambda: eta + 1.0 + rng.normal(size=eta.shape)}[family]().astype(float)
    ours = PopulationGLM(observation_model=family, solver_kwargs=TIGHT).fit(X, y[:, None])
    ours.compute_standard_errors(X, y[:, None])
    family_sm = {"Poisson": sm.families.Poisson(), "Gamma": sm.families.Gamma(),
                 "Gaussian": sm.families.Gaussian()}[family]
    theirs = sm.GLM(y, sm.add_constant(X), family=family_sm).fit(tol=1e-12)
    np.testing.assert_allclose(ours.coef_[:, 0], theirs.params[1:], rtol=1e-5)
    np.testing.assert_allclose(ours.coef_se_[:, 0], theirs.bse[1:], rtol=1e-4)
    np.testing.assert_allclose(ours.intercept_se_, theirs.bse[:1], rtol=1e-4)


def test_standard_errors_of_masked_features_are_nan_and_the_rest_equal_a_fit_without_them():
    X, y, mask = _population(9, 300, 4, 3)
    model = PopulationGLM(feature_mask=mask, solver_kwargs=TIGHT).fit(X, y).compute_standard_errors(X, y)
    assert np.all(np.isnan(model.coef_se_[mask == 0])) and np.all(np.isfinite(model.coef_se_[mask == 1]))
    kept = mask[:, 1] == 1
    alone = PopulationGLM(solver_kwargs=TIGHT).fit(X[:, kept], y[:, 1:2]).compute_standard_errors(X[:, kept], y[:, 1:2])
    np.testing.assert_allclose(model.coef_se_[kept, 1], alone.coef_se_[:, 0], rtol=1e-6)
    np.testing.assert_allclose(model.intercept_se_[1], alone.intercept_se_[0], rtol=1e-6)
    refit = model.fit(X, y)
    assert refit.coef_se_ is None


def test_examples_in_the_docstrings_run():
    import doctest

    from distglm import cv
    from distglm.core import inference, scoring

    for module in (cv, core_cv, inference, scoring):
        assert doctest.testmod(module).failed == 0, module.__name__


def test_a_splitter_splits_the_samples_without_nan():
    X, y, _ = _population(10, 120, 3, 2)
    X_nan = X.copy()
    X_nan[[5, 50]] = np.nan
    keep = ~np.isnan(X_nan).any(axis=1)
    kwargs = dict(regularizer_strengths=GRID[:2], solver_kwargs=TIGHT, cv=TimeSeriesSplit(3))
    with_nan = PopulationGLMCV(**kwargs).fit(X_nan, y)
    dropped = PopulationGLMCV(**kwargs).fit(X[keep], y[keep])
    np.testing.assert_allclose(with_nan.cv_scores_, dropped.cv_scores_, rtol=1e-9)
    # a splitter's folds need not cover every sample: TimeSeriesSplit never holds out the first
    assert np.isfinite(with_nan.cv_scores_).all()


@pytest.mark.parametrize("score_type", ["log-likelihood", "pseudo-r2-McFadden"])
def test_scores_given_the_data_terms_equal_scores_that_compute_them(score_type):
    from distglm.core.observations import GammaObservations, PoissonObservations
    from distglm.core.scoring import score_terms

    rng = np.random.default_rng(4)
    y = rng.poisson(2.0, size=(50, 3)).astype(float)
    rate = rng.uniform(0.5, 3.0, size=(50, 3))
    poisson = PoissonObservations()
    data = poisson.data_terms(y)
    assert data.shape == y.shape and np.all(np.asarray(data) <= 0)
    for given, computed in zip(score_terms(poisson, y, rate, np.ones(3), score_type, data_terms=data),
                               score_terms(poisson, y, rate, np.ones(3), score_type)):
        if computed is None:  # the log-likelihood has no null terms
            assert given is None
        else:
            np.testing.assert_allclose(given, computed, rtol=1e-6)
    # a family that splits nothing off says so
    assert GammaObservations().data_terms(y) is None
