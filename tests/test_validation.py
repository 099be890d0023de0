"""Every input check, fed the bad input it exists for, with the message it must give."""

import numpy as np
import pytest

from distglm import validation as val
from distglm.core.observations import NegativeBinomialObservations
from distglm.core.regularizers import GroupLasso
from distglm.errors import DistGLMError, FitError, InputError, InputTypeError
from distglm.glm import GLM, PopulationGLM, model_from_config

pytestmark = pytest.mark.usefixtures("x64")


@pytest.fixture(scope="module")
def data():
    """X (60, 3), Poisson y (60, 2), and a full mask (3, 2)."""
    rng = np.random.default_rng(0)
    X = rng.normal(size=(60, 3))
    y = rng.poisson(1.0, size=(60, 2)).astype(float)
    return X, y, np.ones((3, 2))


def test_errors_are_value_errors():
    # code written against NeMoS catches ValueError; kind errors are TypeErrors too
    assert issubclass(InputError, ValueError) and issubclass(FitError, DistGLMError)
    assert issubclass(InputTypeError, TypeError) and issubclass(InputTypeError, ValueError)


# ---------------------------------------------------------------------------- shapes
@pytest.mark.parametrize("bad_X", [np.zeros(60), np.zeros((60, 3, 1))])
def test_X_must_be_2d(data, bad_X):
    _, y, _ = data
    with pytest.raises(InputError, match=r"X must be 2-D .*got shape \(60"):
        PopulationGLM().fit(bad_X, y)


def test_X_must_be_numeric(data):
    _, y, _ = data
    with pytest.raises(InputTypeError, match="X must be array-like of numbers"):
        PopulationGLM().fit("not an array", y)
    with pytest.raises(InputTypeError, match="X must be array-like of numbers; got an array of dtype <U1"):
        PopulationGLM().fit(np.full((60, 3), "a"), y)


def test_population_y_must_be_2d(data):
    X, y, _ = data
    with pytest.raises(InputError, match=r"y must be 2-dimensional of shape \(n_samples, n_neurons\); got shape \(60,\)"):
        PopulationGLM().fit(X, y[:, 0])


def test_single_neuron_y_must_be_1d(data):
    X, y, _ = data
    with pytest.raises(InputError, match=r"y must be 1-dimensional of shape \(n_samples,\); got shape \(60, 2\)"):
        GLM().fit(X, y)


def test_X_and_y_must_have_the_same_number_of_samples(data):
    X, y, _ = data
    with pytest.raises(InputError, match="same number of samples; got X with 59 and y with 60"):
        PopulationGLM().fit(X[:-1], y)
    with pytest.raises(InputError, match="same number of samples; got X with 60 and y with 58"):
        GLM().fit(X, y[:-2, 0])


def test_dict_X_groups_must_have_equal_rows(data):
    X, y, _ = data
    with pytest.raises(InputError, match=r"same n_samples; got \{'a': 60, 'b': 59\}"):
        PopulationGLM().fit({"a": X[:, :1], "b": X[:-1, 1:]}, y)
    with pytest.raises(InputError, match=r"X\['b'\] must be 2-D"):
        PopulationGLM().fit({"a": X[:, :1], "b": X[:, 1]}, y)
    with pytest.raises(InputError, match="X is an empty dict"):
        PopulationGLM().fit({}, y)


# ---------------------------------------------------------------------------- init_params
@pytest.mark.parametrize("init", [(np.zeros((3, 2)),), (np.zeros((3, 2)), np.zeros(2), np.zeros(2))])
def test_init_params_must_have_length_two(data, init):
    X, y, _ = data
    with pytest.raises(InputError, match=f"init_params must have length two, .*got length {len(init)}"):
        PopulationGLM().fit(X, y, init_params=init)


def test_init_params_must_be_a_pair(data):
    X, y, _ = data
    with pytest.raises(InputTypeError, match="init_params must be a tuple"):
        PopulationGLM().fit(X, y, init_params=3.0)


def test_init_params_shapes(data):
    X, y, _ = data
    with pytest.raises(InputError, match=r"init_params\[0\] \(coef\) must have shape \(3, 2\); got shape \(2, 3\)"):
        PopulationGLM().fit(X, y, init_params=(np.zeros((2, 3)), np.zeros(2)))
    with pytest.raises(InputError, match=r"init_params\[1\] \(intercept\) must have shape \(2,\); got shape \(3,\)"):
        PopulationGLM().fit(X, y, init_params=(np.zeros((3, 2)), np.zeros(3)))
    with pytest.raises(InputError, match=r"init_params\[0\] \(coef\) must have shape \(3,\); got shape \(3, 1\)"):
        GLM().fit(X, y[:, 0], init_params=(np.zeros((3, 1)), np.zeros(1)))
    with pytest.raises(InputError, match=r"init_params\[1\] \(intercept\) must have shape \(1,\); got shape \(\)"):
        GLM().fit(X, y[:, 0], init_params=(np.zeros(3), 0.0))
    with pytest.raises(InputError, match="init_params must be finite"):
        PopulationGLM().fit(X, y, init_params=(np.full((3, 2), np.nan), np.zeros(2)))


def test_init_params_with_dict_X(data):
    X, y, _ = data
    X_dict = {"a": X[:, :1], "b": X[:, 1:]}
    mask = {"a": np.ones(2), "b": np.ones(2)}
    with pytest.raises(InputError, match=r"init_params\[0\] must be a dict with X's feature groups"):
        PopulationGLM(feature_mask=mask).fit(X_dict, y, init_params=(np.zeros((3, 2)), np.zeros(2)))
    with pytest.raises(InputError, match=r"init_params\[0\]\['b'\] must have shape \(2, 2\); got shape \(1, 2\)"):
        PopulationGLM(feature_mask=mask).fit(
            X_dict, y, init_params=({"a": np.zeros((1, 2)), "b": np.zeros((1, 2))}, np.zeros(2)))


def test_init_params_are_used(data):
    X, y, _ = data
    model = PopulationGLM(solver_kwargs={"maxiter": 1, "tol": 1e-300},
                          solver_name="GradientDescent")
    with pytest.warns(RuntimeWarning, match="did not converge"):
        near = model.fit(X, y, init_params=(np.full((3, 2), 0.01), np.zeros(2))).coef_.copy()
    with pytest.warns(RuntimeWarning, match="did not converge"):
        far = model.fit(X, y, init_params=(np.full((3, 2), 1.0), np.zeros(2))).coef_.copy()
    assert not np.allclose(near, far)


# ---------------------------------------------------------------------------- feature_mask
def test_feature_mask_must_be_binary():
    with pytest.raises(InputError, match=r"feature_mask must hold only 0s and 1s; got 0.5"):
        PopulationGLM(feature_mask=np.array([[1, 0.5], [1, 1]]))
    with pytest.raises(InputError, match=r"feature_mask must hold only 0s and 1s; got 2"):
        PopulationGLM(feature_mask={"a": np.array([1, 2])})


def test_feature_mask_must_be_2d():
    with pytest.raises(InputError, match=r"feature_mask must be 2-D of shape \(n_features, n_neurons\); got shape \(3,\)"):
        PopulationGLM(feature_mask=np.ones(3))
    with pytest.raises(InputError, match=r"feature_mask\['a'\] must be 1-D of shape \(n_neurons,\); got shape \(1, 2\)"):
        PopulationGLM(feature_mask={"a": np.ones((1, 2))})


def test_feature_mask_must_match_the_data(data):
    X, y, _ = data
    with pytest.raises(InputError, match=r"feature_mask must have shape \(n_features, n_neurons\) = \(3, 2\); "
                                         r"got shape \(2, 3\)"):
        PopulationGLM(feature_mask=np.ones((2, 3))).fit(X, y)
    with pytest.raises(InputError, match=r"feature_mask\['a'\] must have shape \(n_neurons,\) = \(2,\); got shape \(3,\)"):
        PopulationGLM(feature_mask={"a": np.ones(3), "b": np.ones(2)}).fit({"a": X[:, :1], "b": X[:, 1:]}, y)
    with pytest.raises(InputError, match=r"feature_mask keys \['a', 'c'\] do not match X's feature groups \['a', 'b'\]"):
        PopulationGLM(feature_mask={"a": np.ones(2), "c": np.ones(2)}).fit({"a": X[:, :1], "b": X[:, 1:]}, y)
    with pytest.raises(InputTypeError, match="feature_mask must be a dict with the same keys"):
        PopulationGLM(feature_mask=np.ones((3, 2))).fit({"a": X[:, :1], "b": X[:, 1:]}, y)
    with pytest.raises(InputTypeError, match="feature_mask is a dict but X is an array"):
        PopulationGLM(feature_mask={"a": np.ones(2)}).fit(X, y)


def test_feature_mask_of_a_fitted_model_is_frozen(data):
    X, y, mask = data
    model = PopulationGLM(feature_mask=mask).fit(X, y)
    with pytest.raises(AttributeError, match="cannot be changed"):
        model.feature_mask = np.zeros((3, 2))


# ---------------------------------------------------------------------------- NaN solution
def test_nan_solution_is_an_error(data):
    X, y, _ = data
    # a step of 1e10 overflows exp on the first iteration, for every neuron
    model = PopulationGLM(solver_name="GradientDescent", solver_kwargs={"stepsize": 1e10, "maxiter": 5})
    with pytest.raises(FitError, match="Solver returned NaN parameters for every neuron"):
        model.fit(X, y)
    assert model.coef_ is None


def test_population_of_silent_neurons_is_an_error(data):
    X, y, _ = data
    with pytest.raises(FitError, match="NaN parameters for every neuron"):
        PopulationGLM().fit(X, np.zeros_like(y))


def test_check_solution():
    val.check_solution(np.array([[np.nan, 1.0]]), np.array([np.nan, 0.0]))  # one neuron left: no error
    val.check_solution(np.full((2, 1), np.nan), np.array([0.0]))
    with pytest.raises(FitError, match="NaN parameters for every neuron"):
        val.check_solution(np.full((2, 3), np.nan), np.full(3, np.nan))


# ---------------------------------------------------------------------------- support of y
def test_poisson_y_must_be_non_negative(data):
    X, y, _ = data
    bad = y.copy()
    bad[4, 1] = -1
    with pytest.raises(InputError, match=r"y must hold non-negative values \(counts\) for the Poisson observation "
                                         r"model; got -1.0 at sample 4, neuron 1 \(1 such values\)"):
        PopulationGLM().fit(X, bad)
    with pytest.raises(InputError, match=r"for the NegativeBinomial observation model; got -1.0 at sample 4 \(1 such values\)"):
        GLM(observation_model=NegativeBinomialObservations(scale=1.0)).fit(X, bad[:, 1])


def test_bernoulli_y_must_be_zero_or_one(data):
    X, _, _ = data
    y = (np.arange(60) % 2).astype(float)
    y[[3, 9]] = [0.5, 2.0]
    with pytest.raises(InputError, match=r"values in \{0, 1\} for the Bernoulli observation model; got 0.5 at "
                                         r"sample 3 \(2 such values\)"):
        GLM(observation_model="Bernoulli").fit(X, y)


@pytest.mark.parametrize("bad_value", [0.0, -2.0])
def test_gamma_y_must_be_positive(data, bad_value):
    X, y, _ = data
    y = y + 1.0
    y[10, 0] = bad_value
    with pytest.raises(InputError, match=f"strictly positive values for the Gamma observation model; got {bad_value} "
                                         "at sample 10, neuron 0"):
        PopulationGLM(observation_model="Gamma").fit(X, y)


def test_support_is_checked_after_nan_rows_are_dropped(data):
    X, y, _ = data
    y = y.copy()
    y[2, 0] = np.nan
    # the NaN is no support violation, and its row is dropped
    PopulationGLM(solver_kwargs={"maxiter": 50}).fit(X, y)


# ---------------------------------------------------------------------------- finiteness, NaN rows
def test_inf_in_X_outside_nan_rows(data):
    X, y, _ = data
    X = X.copy()
    X[5, 2] = np.inf
    with pytest.raises(InputError, match="X must be finite outside rows holding NaN .*got inf at row 5, column 2"):
        PopulationGLM().fit(X, y)
    X[3, 0] = np.nan  # row 5 is still there: the reported row is the one of the input
    with pytest.raises(InputError, match="got inf at row 5, column 2"):
        PopulationGLM().fit(X, y)


def test_inf_in_y(data):
    X, y, _ = data
    y = y.copy()
    y[7, 1] = np.inf
    with pytest.raises(InputError, match="y must be finite outside NaN rows; got inf at row 7, neuron 1"):
        PopulationGLM().fit(X, y)


def test_all_rows_nan(data):
    X, y, _ = data
    X = X.copy()
    X[:, 0] = np.nan
    with pytest.raises(InputError, match="every sample holds a NaN"):
        PopulationGLM().fit(X, y)


def test_drop_nan_rows():
    X = np.arange(12.0).reshape(6, 2)
    y = np.arange(12.0).reshape(6, 2)
    X[1, 0] = np.nan
    X[1, 1] = np.inf  # in a NaN row: dropped, not an error
    y[4, 1] = np.nan
    X_kept, y_kept, keep = val.drop_nan_rows(X, y)
    np.testing.assert_array_equal(keep, [True, False, True, True, False, True])
    np.testing.assert_array_equal(X_kept, X[keep])
    np.testing.assert_array_equal(y_kept, y[keep])


# ---------------------------------------------------------------------------- regularizer strength
def test_ridge_strength_of_wrong_shape(data):
    X, y, _ = data
    with pytest.raises(InputError, match=r"Ridge regularizer_strength must be a scalar or an array of the "
                                         r"coefficients' shape \(3, 2\); got shape \(3,\)"):
        PopulationGLM(regularizer="Ridge", regularizer_strength=np.ones(3)).fit(X, y)
    # the coefficients' shape itself is accepted
    PopulationGLM(regularizer="Ridge", regularizer_strength=np.full((3, 2), 0.1)).fit(X, y)


def test_strength_must_be_numeric_and_finite(data):
    X, y, _ = data
    with pytest.raises(InputTypeError, match="Lasso regularizer_strength must be a number"):
        PopulationGLM(regularizer="Lasso", regularizer_strength="strong").fit(X, y)
    with pytest.raises(InputError, match="Ridge regularizer_strength must be finite"):
        PopulationGLM(regularizer="Ridge", regularizer_strength=np.nan).fit(X, y)


def test_group_lasso_strength_of_wrong_length(data):
    X, y, _ = data
    reg = GroupLasso(mask=[[1, 1, 0], [0, 0, 1]])
    with pytest.raises(InputError, match=r"GroupLasso regularizer_strength must be a scalar or of shape \(2,\) "
                                         r"\(one per group\); got shape \(3,\)"):
        PopulationGLM(regularizer=reg, regularizer_strength=[0.1, 0.2, 0.3]).fit(X, y)


def test_group_lasso_mask_checks(data):
    X, y, _ = data
    with pytest.raises(InputError, match="GroupLasso mask must hold only 0s and 1s"):
        GroupLasso(mask=[[1, 0.5, 0]])
    with pytest.raises(InputError, match="assigns some features to more than one group"):
        GroupLasso(mask=[[1, 1, 0], [0, 1, 1]])
    with pytest.raises(InputError, match="GroupLasso mask is empty"):
        GroupLasso(mask=[[0, 0, 0]])
    with pytest.raises(InputError, match=r"GroupLasso mask must be 2-D .*got shape \(3,\)"):
        GroupLasso(mask=[1, 0, 1])
    with pytest.raises(InputError, match="GroupLasso mask has 2 feature columns but X has 3 features"):
        PopulationGLM(regularizer=GroupLasso(mask=[[1, 0], [0, 1]])).fit(X, y)


@pytest.mark.parametrize("ratio", [0.0, -0.1, 1.5])
def test_elastic_net_ratio_out_of_range(data, ratio):
    X, y, _ = data
    with pytest.raises(InputError, match=rf"ElasticNet ratio must lie in \(0, 1\]; got {ratio}"):
        PopulationGLM(regularizer="ElasticNet", regularizer_strength=(0.1, ratio)).fit(X, y)


def test_elastic_net_strength_must_be_a_pair(data):
    X, y, _ = data
    with pytest.raises(InputTypeError, match=r"ElasticNet regularizer_strength must be a tuple \(strength, ratio\)"):
        PopulationGLM(regularizer="ElasticNet", regularizer_strength=(0.1, 0.5, 0.2)).fit(X, y)


def test_strength_of_unregularized_is_ignored_with_a_warning(data):
    X, y, _ = data
    with pytest.warns(UserWarning, match="regularizer_strength 1.0 is not used by the UnRegularized regularizer"):
        model = PopulationGLM(regularizer_strength=1.0)
    assert model.regularizer_strength is None
    model.fit(X, y)


# ---------------------------------------------------------------------------- solver and names
def test_unknown_solver_kwargs_key(data):
    X, y, _ = data
    with pytest.raises(InputError, match=r"solver_kwargs \['learning_rate'\] not accepted by LBFGS; accepted keys are "
                                         r"\[.*'maxiter'.*'tol'.*\]"):
        PopulationGLM(solver_kwargs={"learning_rate": 0.1}).fit(X, y)
    # jaxopt arguments distglm sets itself cannot be overridden
    with pytest.raises(InputError, match=r"solver_kwargs \['fun'\] not accepted by LBFGS"):
        PopulationGLM(solver_kwargs={"fun": None}).fit(X, y)


def test_bad_solver_kwargs_values(data):
    X, y, _ = data
    with pytest.raises(InputTypeError, match="solver_kwargs must be a dict; got list"):
        PopulationGLM(solver_kwargs=[("tol", 1e-6)])
    with pytest.raises(InputTypeError, match=r"solver_kwargs\['tol'\] must be a number; got 'small'"):
        PopulationGLM(solver_kwargs={"tol": "small"})
    with pytest.raises(InputError, match=r"solver_kwargs\['maxiter'\] must be a positive integer .*; got 2.5"):
        PopulationGLM(solver_kwargs={"maxiter": 2.5}).fit(X, y)
    with pytest.raises(InputError, match=r"solver_kwargs\['maxiter'\] must be a positive integer of at most "
                                         r"2147483647 .*; got 1000000000000"):
        PopulationGLM(solver_kwargs={"maxiter": 10**12})


@pytest.mark.parametrize("regularizer", ["Lasso", "ElasticNet", "GroupLasso"])
@pytest.mark.parametrize("solver", ["LBFGS", "GradientDescent"])
def test_solver_not_allowed_for_the_regularizer(data, regularizer, solver):
    X, y, _ = data
    with pytest.raises(InputError, match=rf"solver '{solver}' cannot fit the {regularizer} regularizer; "
                                         r"allowed solvers are \['ProximalGradient', 'ProxSVRG'\]"):
        PopulationGLM(regularizer=regularizer, solver_name=solver)


def test_solver_checked_when_a_configuration_is_loaded():
    with pytest.raises(InputError, match="solver 'BFGS' cannot fit the Lasso regularizer"):
        model_from_config({"class": "GLM", "regularizer": "Lasso", "solver_name": "BFGS"})
    with pytest.raises(InputError, match=r"unknown keys in model configuration: \['colour'\]"):
        model_from_config({"class": "GLM", "colour": "blue"})
    with pytest.raises(InputError, match="model class must be one of"):
        model_from_config({"class": "Perceptron"})
    with pytest.raises(InputError, match="custom inverse link function"):
        model_from_config({"class": "GLM", "inverse_link_function": "custom:my_link"})


def test_unknown_names():
    with pytest.raises(InputError, match=r"observation_model must be one of \['Poisson', 'Gamma', 'Bernoulli', "
                                         r"'Gaussian', 'NegativeBinomial'\].*; got 'Binomial'"):
        GLM(observation_model="Binomial")
    with pytest.raises(InputError, match=r"regularizer must be one of \[.*'Ridge'.*\]; got 'L2'"):
        PopulationGLM(regularizer="L2")
    with pytest.raises(InputError, match=r"solver_name must be one of \[.*'LBFGS'.*\].*; got 'Adam'"):
        GLM(solver_name="Adam")
    with pytest.raises(InputTypeError, match="solver_name must be a string"):
        GLM(solver_name=3)
    with pytest.raises(InputTypeError, match="observation_model must be a name in"):
        GLM(observation_model=3.0)
    with pytest.raises(InputTypeError, match="regularizer must be a name in"):
        GLM(regularizer=object())
    with pytest.raises(InputError, match=r"Unknown link function: 'cube'; inverse_link_function must be a callable "
                                         r"or one of \[.*'jax.numpy.exp'.*\]"):
        GLM(inverse_link_function="cube")
    with pytest.raises(InputTypeError, match="inverse_link_function must be a callable or one of"):
        GLM(inverse_link_function=3)


def test_negative_binomial_scale():
    with pytest.raises(InputError, match="NegativeBinomial scale must be a positive finite number; got -1"):
        NegativeBinomialObservations(scale=-1)
    with pytest.raises(InputTypeError, match="NegativeBinomial scale must be a positive number; got 'big'"):
        NegativeBinomialObservations(scale="big")


# ---------------------------------------------------------------------------- fitted-model inputs
def test_inputs_after_fit(data):
    X, y, mask = data
    model = PopulationGLM(feature_mask=mask).fit(X, y)
    with pytest.raises(InputError, match="X has 2 features, but PopulationGLM is expecting 3 features"):
        model.predict(X[:, :2])
    with pytest.raises(InputError, match="y has 1 neurons but coef_ has 2"):
        model.score(X, y[:, :1])
    with pytest.raises(NotImplementedError, match=r"score_type 'r2' is not implemented; score_type must be one of"):
        model.score(X, y, score_type="r2")
    with pytest.raises(InputError, match="feature groups"):
        model.predict({"a": X})
