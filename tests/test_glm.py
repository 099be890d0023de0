"""GLM and PopulationGLM against NeMoS 0.2.8 and statsmodels, their invariances and their API."""

import warnings

import jax
import jax.numpy as jnp
import nemos as nmo
import numpy as np
import pytest
import statsmodels.api as sm
from sklearn.base import clone
from sklearn.model_selection import GridSearchCV

from distglm.core import fit as core_fit
from distglm.core.observations import NegativeBinomialObservations
from distglm.core.regularizers import GroupLasso
from distglm.errors import InputError, NotFittedError
from distglm.glm import GLM, PopulationGLM, load_model, model_from_config, model_to_config

pytestmark = pytest.mark.usefixtures("x64")

# Our stopping rule is on each neuron's gradient norm; 1e-10 in float64 puts the optimum
# well inside the 1e-5 relative tolerance of every comparison below.
TIGHT = {"tol": 1e-10, "maxiter": 5000}
SCORE_TYPES = ("log-likelihood", "pseudo-r2-McFadden", "pseudo-r2-Cohen")
NB_SCALE = 0.5


def assert_params_close(ours, theirs, rtol=1e-5):
    # atol 1e-7: a few coefficients sit at (or, for Lasso, are shrunk to) zero, where a relative
    # tolerance means nothing; 1e-7 is far below the size of any coefficient that is not zero.
    np.testing.assert_allclose(np.asarray(ours), np.asarray(theirs), rtol=rtol, atol=1e-7)


# ---------------------------------------------------------------------------- data
def _simulate(family, seed=7, n_samples=300, n_features=4, n_neurons=3):
    """(X, y, mask) drawn from the family's own model with its default inverse link."""
    rng = np.random.default_rng(seed)
    X = 0.5 * rng.normal(size=(n_samples, n_features))
    mask = np.ones((n_features, n_neurons))
    if n_neurons > 1:
        mask[0, 1] = mask[3, 0] = 0
        mask[2, n_neurons - 1] = 0
    weights = 0.4 * rng.normal(size=(n_features, n_neurons)) * mask
    eta = X @ weights
    if family == "Poisson":
        y = rng.poisson(np.exp(eta + 0.3))
    elif family == "Bernoulli":
        y = rng.binomial(1, 1 / (1 + np.exp(-eta)))
    elif family == "Gaussian":
        y = eta + 0.5 + 0.7 * rng.normal(size=eta.shape)
    elif family == "NegativeBinomial":
        mean = np.exp(eta + 0.5)
        shape = 1 / NB_SCALE
        y = rng.negative_binomial(shape, shape / (shape + mean))
    elif family == "Gamma":
        # inverse link 1/x: the mean is 1/eta, so eta must stay positive
        eta = 1.0 + 0.5 * eta
        assert eta.min() > 0
        shape = 3.0
        y = rng.gamma(shape, 1 / (eta * shape))
    else:
        raise AssertionError(family)
    return X, np.asarray(y, dtype=float), mask


# ---------------------------------------------------------------------------- seed example
@pytest.mark.parametrize("use_x64", [False, True])
def test_docstring_example_masks_coefficients(use_x64):
    with jax.enable_x64(use_x64):
        np.random.seed(123)
        X = np.random.normal(size=(100, 3))
        weights = np.array([[0.5, 0.0], [-0.5, -0.5], [0.0, 1.0]])
        y = np.random.poisson(np.exp(X.dot(weights)))
        mask = np.array([[1, 0], [1, 1], [0, 1]])
        model = PopulationGLM(feature_mask=mask).fit(X, y)
    assert model.coef_.shape == (3, 2)
    assert model.intercept_.shape == (2,)
    assert model.coef_.dtype == (np.float64 if use_x64 else np.float32)
    assert np.all(model.coef_[mask == 0] == 0)
    assert np.all(model.coef_[mask == 1] != 0)
    # the fit recovers the generating weights roughly (100 samples)
    np.testing.assert_allclose(model.coef_, weights, atol=0.35)


# ---------------------------------------------------------------------------- NeMoS
REGULARIZATIONS = {
    # name: (strength, NeMoS solver)
    "UnRegularized": (None, "LBFGS"),
    "Ridge": (0.1, "LBFGS"),
    "Lasso": (0.02, "ProximalGradient"),
    "ElasticNet": ((0.05, 0.5), "ProximalGradient"),
}


def _observation_pair(family):
    if family == "NegativeBinomial":
        return (NegativeBinomialObservations(scale=NB_SCALE),
                nmo.observation_models.NegativeBinomialObservations(scale=NB_SCALE))
    return family, family


@pytest.mark.parametrize("regularizer", list(REGULARIZATIONS))
@pytest.mark.parametrize("family", ["Poisson", "Gamma", "Bernoulli", "Gaussian", "NegativeBinomial"])
def test_population_fit_matches_nemos(family, regularizer):
    X, y, mask = _simulate(family)
    strength, nemos_solver = REGULARIZATIONS[regularizer]
    ours_obs, nemos_obs = _observation_pair(family)
    ours = PopulationGLM(observation_model=ours_obs, regularizer=regularizer, regularizer_strength=strength,
                         solver_kwargs=TIGHT, feature_mask=mask).fit(X, y)
    with warnings.catch_warnings():
        # NeMoS's FISTA stops on a step-size criterion that 1e-12 may not meet; its answer is
        # compared below all the same
        warnings.simplefilter("ignore", RuntimeWarning)
        theirs = nmo.glm.PopulationGLM(
            observation_model=nemos_obs, regularizer=regularizer, regularizer_strength=strength,
            solver_name=nemos_solver, solver_kwargs={"tol": 1e-12, "maxiter": 20000}, feature_mask=mask,
        ).fit(X, y)

    assert ours.converged_.all()
    assert np.all(ours.coef_[mask == 0] == 0)
    assert_params_close(ours.coef_, theirs.coef_)
    assert_params_close(ours.intercept_, theirs.intercept_)
    np.testing.assert_allclose(ours.scale_, theirs.scale_, rtol=1e-5)
    np.testing.assert_allclose(ours.dof_resid_, theirs.dof_resid_)
    np.testing.assert_allclose(ours.predict(X), theirs.predict(X), rtol=1e-5)
    for score_type in SCORE_TYPES:
        np.testing.assert_allclose(float(ours.score(X, y, score_type=score_type)),
                                   float(theirs.score(X, y, score_type=score_type)), rtol=1e-5,
                                   err_msg=score_type)
    if regularizer == "Lasso":
        # the comparison is only meaningful if the penalty is active but not total
        free = ours.coef_[mask == 1]
        assert 0 < np.sum(free == 0) < free.size


@pytest.mark.parametrize("family", ["Poisson", "Gamma", "Bernoulli", "Gaussian", "NegativeBinomial"])
def test_compute_loss_matches_nemos(family):
    X, y, mask = _simulate(family, seed=11)
    rng = np.random.default_rng(3)
    # masked entries are non-zero on purpose: both must ignore them
    coef = 0.1 * rng.normal(size=mask.shape)
    intercept = np.full(mask.shape[1], 1.0 if family == "Gamma" else 0.2)
    ours_obs, nemos_obs = _observation_pair(family)
    ours = PopulationGLM(observation_model=ours_obs, feature_mask=mask)
    theirs = nmo.glm.PopulationGLM(observation_model=nemos_obs, feature_mask=mask)
    np.testing.assert_allclose(float(ours.compute_loss((coef, intercept), X, y)),
                               float(theirs.compute_loss((coef, intercept), X, y)), rtol=1e-10)


# ---------------------------------------------------------------------------- statsmodels
STATSMODELS_FAMILIES = {
    "Poisson": lambda: sm.families.Poisson(),
    "Gamma": lambda: sm.families.Gamma(sm.families.links.InversePower()),
    "Bernoulli": lambda: sm.families.Binomial(),
    "Gaussian": lambda: sm.families.Gaussian(),
}


@pytest.mark.parametrize("family", list(STATSMODELS_FAMILIES))
def test_single_neuron_fit_matches_statsmodels(family):
    X, y, _ = _simulate(family, seed=5, n_neurons=1)
    y = y[:, 0]
    with warnings.catch_warnings():
        # statsmodels warns that 1/x can leave the Gamma domain; our data keep it positive
        warnings.simplefilter("ignore", sm.tools.sm_exceptions.DomainWarning)
        ref = sm.GLM(y, sm.add_constant(X), family=STATSMODELS_FAMILIES[family]()).fit(tol=1e-12)
    ours = GLM(observation_model=family, solver_kwargs=TIGHT).fit(X, y)
    assert ours.coef_.shape == (X.shape[1],)
    assert ours.intercept_.shape == (1,)
    assert_params_close(ours.coef_, ref.params[1:])
    assert_params_close(ours.intercept_, ref.params[:1])
    # NeMoS's residual dof for an unregularised fit, n - rank(X) - 1, is statsmodels' df_resid
    np.testing.assert_allclose(ours.dof_resid_, [ref.df_resid])
    if family in ("Gamma", "Gaussian"):
        np.testing.assert_allclose(ours.scale_, [ref.scale], rtol=1e-6)
    else:
        np.testing.assert_allclose(ours.scale_, [1.0])


# ---------------------------------------------------------------------------- invariances
def test_population_fit_equals_per_neuron_fits(poisson_population):
    X, y, mask = poisson_population
    joint = PopulationGLM(solver_kwargs=TIGHT, feature_mask=mask).fit(X, y)
    for j in range(y.shape[1]):
        alone = PopulationGLM(solver_kwargs=TIGHT, feature_mask=mask[:, [j]]).fit(X, y[:, [j]])
        assert_params_close(joint.coef_[:, j], alone.coef_[:, 0])
        assert_params_close(joint.intercept_[j], alone.intercept_[0])
        np.testing.assert_allclose(joint.scale_[j], alone.scale_[0])


def test_masking_a_feature_equals_dropping_its_column(poisson_population):
    X, y, mask = poisson_population
    joint = PopulationGLM(solver_kwargs=TIGHT, feature_mask=mask).fit(X, y)
    for j in range(y.shape[1]):
        keep = mask[:, j] == 1
        dropped = GLM(solver_kwargs=TIGHT).fit(X[:, keep], y[:, j])
        assert_params_close(joint.coef_[keep, j], dropped.coef_)
        assert_params_close(joint.intercept_[j], dropped.intercept_[0])
        np.testing.assert_allclose(joint.predict(X)[:, j], dropped.predict(X[:, keep]), rtol=1e-6)


def test_dict_design_equals_concatenated_array(poisson_population):
    X, y, _ = poisson_population
    group_mask = {"a": np.array([1, 1, 1]), "b": np.array([1, 0, 1])}
    X_dict = {"a": X[:, :2], "b": X[:, 2:]}
    mask = np.concatenate([np.repeat(group_mask["a"][None], 2, axis=0),
                           np.repeat(group_mask["b"][None], 2, axis=0)])
    by_dict = PopulationGLM(solver_kwargs=TIGHT, feature_mask=group_mask).fit(X_dict, y)
    by_array = PopulationGLM(solver_kwargs=TIGHT, feature_mask=mask).fit(X, y)
    assert isinstance(by_dict.coef_, dict)
    assert set(by_dict.coef_) == {"a", "b"}
    assert by_dict.coef_["a"].shape == (2, 3) and by_dict.coef_["b"].shape == (2, 3)
    assert np.all(by_dict.coef_["b"][:, 1] == 0)
    assert_params_close(np.concatenate([by_dict.coef_["a"], by_dict.coef_["b"]]), by_array.coef_)
    assert_params_close(by_dict.intercept_, by_array.intercept_)
    np.testing.assert_allclose(by_dict.predict(X_dict), by_array.predict(X), rtol=1e-8)
    np.testing.assert_allclose(float(by_dict.score(X_dict, y)), float(by_array.score(X, y)), rtol=1e-8)


def test_nan_rows_are_dropped(poisson_population):
    X, y, mask = poisson_population
    X_nan, y_nan = X.copy(), y.copy()
    X_nan[[3, 50], 1] = np.nan
    X_nan[50, 2] = np.inf  # an infinity in a dropped row is no error
    y_nan[[7, 120], [0, 2]] = np.nan
    rows = np.setdiff1d(np.arange(len(X)), [3, 7, 50, 120])
    with_nans = PopulationGLM(solver_kwargs=TIGHT, feature_mask=mask).fit(X_nan, y_nan)
    without = PopulationGLM(solver_kwargs=TIGHT, feature_mask=mask).fit(X[rows], y[rows])
    assert_params_close(with_nans.coef_, without.coef_)
    assert_params_close(with_nans.intercept_, without.intercept_)
    np.testing.assert_allclose(with_nans.dof_resid_, without.dof_resid_)
    np.testing.assert_allclose(float(with_nans.score(X_nan, y_nan)), float(without.score(X[rows], y[rows])))
    # predict keeps the time axis: NaN rows come back NaN
    rate = with_nans.predict(X_nan)
    assert rate.shape == y.shape
    assert np.all(np.isnan(rate[[3, 50]])) and np.all(np.isfinite(rate[rows]))


# ---------------------------------------------------------------------------- failures as data
def test_silent_neuron_is_reported_and_others_still_fit(poisson_population):
    X, y, mask = poisson_population
    y_silent = np.insert(y, 1, 0.0, axis=1)
    mask_silent = np.insert(mask, 1, 1.0, axis=1)
    with pytest.warns(RuntimeWarning, match=r"1 of 4 neurons failed"):
        model = PopulationGLM(solver_kwargs=TIGHT, feature_mask=mask_silent).fit(X, y_silent)
    reference = PopulationGLM(solver_kwargs=TIGHT, feature_mask=mask).fit(X, y)

    assert model.status_[1] == core_fit.STATUS_NONFINITE_INIT
    assert list(model.failure_reasons_) == [1]
    assert "not finite" in model.failure_reasons_[1]
    np.testing.assert_array_equal(model.converged_, [True, False, True, True])
    assert np.all(np.isnan(model.coef_[:, 1])) and np.isnan(model.intercept_[1])
    others = [0, 2, 3]
    assert_params_close(model.coef_[:, others], reference.coef_)
    assert_params_close(model.intercept_[others], reference.intercept_)
    np.testing.assert_allclose(model.predict(X)[:, others], reference.predict(X), rtol=1e-6)


def test_non_convergence_warns_with_count(poisson_population):
    X, y, mask = poisson_population
    with pytest.warns(RuntimeWarning, match=r"did not converge for 3 of 3 neurons"):
        model = PopulationGLM(solver_name="GradientDescent", solver_kwargs={"maxiter": 2, "tol": 1e-12},
                              feature_mask=mask).fit(X, y)
    assert not model.converged_.any()
    assert np.all(model.status_ == core_fit.STATUS_NOT_CONVERGED)
    assert set(model.failure_reasons_) == {0, 1, 2}
    assert np.all(np.isfinite(model.coef_))


# ---------------------------------------------------------------------------- solvers and regularizers
def test_all_solvers_reach_the_same_unregularized_fit(poisson_population):
    X, y, mask = poisson_population
    reference = PopulationGLM(solver_kwargs=TIGHT, feature_mask=mask).fit(X, y)
    for solver in ("GradientDescent", "BFGS", "LBFGS", "NonlinearCG", "ProximalGradient"):
        model = PopulationGLM(solver_name=solver, solver_kwargs={"tol": 1e-9, "maxiter": 5000},
                              feature_mask=mask).fit(X, y)
        assert model.converged_.all(), solver
        np.testing.assert_allclose(model.coef_, reference.coef_, rtol=1e-5, atol=1e-6, err_msg=solver)
        np.testing.assert_allclose(model.intercept_, reference.intercept_, rtol=1e-5, atol=1e-6, err_msg=solver)


def test_group_lasso_zeroes_a_whole_group(poisson_population):
    X, y, mask = poisson_population
    groups = np.array([[1, 1, 0, 0], [0, 0, 1, 1]])
    reg = GroupLasso(mask=groups)
    weak = PopulationGLM(regularizer=reg, regularizer_strength=1e-3, solver_kwargs=TIGHT).fit(X, y)
    assert np.all(weak.coef_ != 0)
    # a strong penalty on the second group only removes it and leaves the first
    strong = PopulationGLM(regularizer=reg, regularizer_strength=[1e-3, 10.0], solver_kwargs=TIGHT).fit(X, y)
    assert np.all(strong.coef_[2:] == 0)
    assert np.all(strong.coef_[:2] != 0)
    # with the second group gone, the first is the unpenalised fit of the first two features plus
    # a small shrinkage: the sign pattern is the one of that fit
    sub = PopulationGLM(solver_kwargs=TIGHT).fit(X[:, :2], y)
    np.testing.assert_array_equal(np.sign(strong.coef_[:2]), np.sign(sub.coef_))
    # NeMoS's dof for sparse penalties counts the non-zero coefficients: two per neuron here
    np.testing.assert_allclose(strong.dof_resid_, np.full(3, len(X) - 2 - 1))


def test_group_lasso_matches_nemos(poisson_population):
    X, y, _ = poisson_population
    groups = np.array([[1, 1, 0, 0], [0, 0, 1, 1]])
    n_groups, n_features = groups.shape
    n_neurons = y.shape[1]
    # NeMoS groups coefficients of the whole (n_features, n_neurons) array; our groups are per
    # neuron, which NeMoS spells as one group per (group, neuron) pair
    nemos_groups = np.zeros((n_groups * n_neurons, n_features, n_neurons))
    for g in range(n_groups):
        for j in range(n_neurons):
            nemos_groups[g * n_neurons + j, :, j] = groups[g]
    strength = 0.12
    ours = PopulationGLM(regularizer=GroupLasso(mask=groups), regularizer_strength=strength,
                         solver_kwargs=TIGHT).fit(X, y)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        theirs = nmo.glm.PopulationGLM(
            regularizer=nmo.regularizer.GroupLasso(mask=nemos_groups), regularizer_strength=strength,
            solver_name="ProximalGradient", solver_kwargs={"tol": 1e-12, "maxiter": 20000},
        ).fit(X, y)
    assert ours.converged_.all()
    assert_params_close(ours.coef_, theirs.coef_)
    assert_params_close(ours.intercept_, theirs.intercept_)
    np.testing.assert_allclose(ours.dof_resid_, theirs.dof_resid_)
    # some but not all (group, neuron) pairs are removed, so the penalty is doing something
    zero_groups = [np.all(ours.coef_[groups[g] == 1, j] == 0) for g in range(n_groups) for j in range(n_neurons)]
    assert 0 < sum(zero_groups) < len(zero_groups)


# ---------------------------------------------------------------------------- scikit-learn API
def test_get_params_and_set_params():
    model = PopulationGLM(regularizer="Ridge", regularizer_strength=0.3, solver_kwargs={"tol": 1e-7})
    params = model.get_params()
    assert set(params) == {"observation_model", "inverse_link_function", "regularizer", "regularizer_strength",
                           "solver_name", "solver_kwargs", "feature_mask"}
    # what was passed, with the defaults in effect where None was passed
    assert params["regularizer"] == "Ridge" and params["regularizer_strength"] == 0.3
    assert params["solver_name"] == "LBFGS" and params["inverse_link_function"] is jnp.exp
    assert params["solver_kwargs"] == {"tol": 1e-7}
    assert model.set_params(regularizer="Lasso", regularizer_strength=0.01) is model
    assert model.regularizer.name == "Lasso" and model.solver_name == "ProximalGradient"
    assert model.get_params()["regularizer_strength"] == 0.01
    with pytest.raises(InputError, match=r"\['alpha'\] are not parameters of PopulationGLM"):
        model.set_params(alpha=1.0)


def test_clone_copies_configuration_not_fit(poisson_population):
    X, y, mask = poisson_population
    model = PopulationGLM(observation_model="Poisson", regularizer="Ridge", regularizer_strength=0.2,
                          feature_mask=mask, solver_kwargs=TIGHT).fit(X, y)
    copy = clone(model)
    assert copy is not model and copy.coef_ is None
    assert model_to_config(copy) == model_to_config(model)
    refit = copy.fit(X, y)
    np.testing.assert_allclose(refit.coef_, model.coef_)


def test_grid_search_runs(poisson_population):
    X, y, _ = poisson_population
    search = GridSearchCV(PopulationGLM(regularizer="Ridge"), {"regularizer_strength": [0.01, 0.1]}, cv=2)
    search.fit(X, y)
    assert search.best_params_["regularizer_strength"] in (0.01, 0.1)
    scores = search.cv_results_["mean_test_score"]
    assert scores.shape == (2,) and np.all(np.isfinite(scores))
    assert search.best_estimator_.coef_.shape == (4, 3)


def test_predict_before_fit_raises(poisson_population):
    X, _, _ = poisson_population
    with pytest.raises(NotFittedError, match="not fitted yet"):
        PopulationGLM().predict(X)


# ---------------------------------------------------------------------------- persistence
@pytest.mark.parametrize("dict_design", [False, True])
def test_save_and_load_round_trip(tmp_path, poisson_population, dict_design):
    X, y, mask = poisson_population
    if dict_design:
        X_in = {"a": X[:, :1], "b": X[:, 1:]}
        feature_mask = {"a": np.array([1, 0, 1]), "b": np.array([1, 1, 1])}
    else:
        X_in, feature_mask = X, mask
    model = PopulationGLM(observation_model=NegativeBinomialObservations(scale=0.7), regularizer="Ridge",
                          regularizer_strength=0.05, solver_kwargs=TIGHT, feature_mask=feature_mask).fit(X_in, y)
    path = tmp_path / "model.npz"
    model.save_params(path)
    loaded = load_model(path)
    assert type(loaded) is PopulationGLM
    assert model_to_config(loaded) == model_to_config(model)
    assert loaded.observation_model.scale == 0.7
    if dict_design:
        assert set(loaded.coef_) == {"a", "b"}
        for key in model.coef_:
            np.testing.assert_array_equal(loaded.coef_[key], model.coef_[key])
    else:
        np.testing.assert_array_equal(loaded.coef_, model.coef_)
    for name in ("intercept_", "scale_", "dof_resid_", "converged_", "status_"):
        np.testing.assert_array_equal(getattr(loaded, name), getattr(model, name), err_msg=name)
    np.testing.assert_array_equal(loaded.predict(X_in), model.predict(X_in))
    assert float(loaded.score(X_in, y)) == float(model.score(X_in, y))


def test_config_round_trip_with_elastic_net_and_group_lasso():
    for model in (PopulationGLM(regularizer="ElasticNet", regularizer_strength=(0.1, 0.3)),
                  GLM(observation_model="Gamma", regularizer=GroupLasso(mask=[[1, 0], [0, 1]]),
                      regularizer_strength=[0.1, 0.2], solver_kwargs={"maxiter": 10})):
        rebuilt = model_from_config(model_to_config(model))
        assert type(rebuilt) is type(model)
        assert model_to_config(rebuilt) == model_to_config(model)


def test_load_model_of_missing_file(tmp_path):
    with pytest.raises(InputError, match="no saved model at"):
        load_model(tmp_path / "absent.npz")


# ---------------------------------------------------------------------------- simulate
def test_simulate_shapes_and_support(poisson_population):
    X, y, mask = poisson_population
    population = PopulationGLM(feature_mask=mask, solver_kwargs=TIGHT).fit(X, y)
    samples, rates = population.simulate(jax.random.PRNGKey(0), X)
    assert samples.shape == rates.shape == y.shape
    np.testing.assert_allclose(rates, population.predict(X))
    samples = np.asarray(samples)
    assert np.all(samples >= 0) and np.all(samples == np.round(samples))
    # counts drawn around the rates: their means agree over 300 samples
    np.testing.assert_allclose(samples.mean(axis=0), np.asarray(rates).mean(axis=0), rtol=0.3)

    single = GLM(observation_model="Gaussian", solver_kwargs=TIGHT).fit(X, y[:, 0])
    samples, rates = single.simulate(jax.random.PRNGKey(1), X)
    assert samples.shape == rates.shape == (len(X),)
    residual_var = np.var(np.asarray(samples) - np.asarray(rates))
    np.testing.assert_allclose(residual_var, single.scale_[0], rtol=0.3)


# ---------------------------------------------------------------------------- step by step
@pytest.mark.parametrize("solver, solver_kwargs", [
    ("LBFGS", {}),
    # Nesterov acceleration does not decrease the loss at every step; plain descent with its
    # line search does
    ("GradientDescent", {"acceleration": False}),
])
def test_update_steps_decrease_the_loss_and_reach_the_fit(poisson_population, solver, solver_kwargs):
    X, y, mask = poisson_population
    fitted = PopulationGLM(feature_mask=mask, solver_kwargs=TIGHT).fit(X, y)
    model = PopulationGLM(feature_mask=mask, solver_name=solver, solver_kwargs=solver_kwargs)
    params = model.initialize_params(X, y)
    assert params[0].shape == (4, 3) and np.all(params[0] == 0)
    np.testing.assert_allclose(params[1], np.log(y.mean(axis=0)))
    state = model.initialize_state(X, y, params)
    losses = [float(model.compute_loss(params, X, y))]
    for _ in range(60 if solver == "LBFGS" else 300):
        params, state = model.update(params, state, X, y)
        losses.append(float(model.compute_loss(params, X, y)))
    # non-increasing up to rounding of the last digits
    assert np.all(np.diff(losses) <= 1e-13)
    assert losses[-1] < losses[0]
    np.testing.assert_allclose(losses[-1], float(model.compute_loss((fitted.coef_, fitted.intercept_), X, y)),
                               rtol=1e-8)
    np.testing.assert_allclose(params[0], fitted.coef_, atol=1e-4)
    np.testing.assert_allclose(params[1], fitted.intercept_, atol=1e-4)
    assert np.all(params[0][mask == 0] == 0)
    # update keeps the model usable as a fitted one
    np.testing.assert_allclose(model.predict(X), fitted.predict(X), rtol=1e-3)
    np.testing.assert_allclose(model.dof_resid_, fitted.dof_resid_)


def test_compute_loss_is_the_unpenalised_objective(poisson_population):
    X, y, mask = poisson_population
    model = PopulationGLM(feature_mask=mask)
    coef = 0.1 * np.ones(mask.shape)
    intercept = np.zeros(3)
    rate = np.exp(X @ (coef * mask) + intercept)
    expected = np.sum(np.mean(rate - y * np.log(rate), axis=0))
    np.testing.assert_allclose(float(model.compute_loss((coef, intercept), X, y)), expected, rtol=1e-12)
    assert isinstance(model.compute_loss((coef, intercept), X, y), jnp.ndarray)
