"""SVRG and ProxSVRG: the same optimum as the full-batch solvers, in memory and on Ray actors.

Objectives are computed here in numpy from the documented loss (Poisson mean negative
log-likelihood plus the penalty), independently of distglm's core.
"""

from __future__ import annotations

import json
from pathlib import Path

import jax
import nemos as nmo
import numpy as np
import pytest
import ray

import distglm
from distglm.core import FitConfig, PoissonObservations, UnRegularized
from distglm.core.fit import ChunkSource, fit_streamed
from distglm.core.solvers import accepted_kwargs
from distglm.errors import UnknownSolverArgumentError
from distglm.glm import GLM, PopulationGLM, model_from_config, model_to_config

pytestmark = pytest.mark.usefixtures("x64")

RIDGE = 0.02
LASSO = 0.01
GAP = 1e-5  # largest relative gap of a neuron's objective to the full-batch solver's


@pytest.fixture(scope="module")
def data():
    """20,000 samples x 12 features x 32 Poisson neurons, with a feature mask."""
    rng = np.random.default_rng(7)
    n_samples, n_features, n_neurons = 20_000, 12, 32
    X = 0.5 * rng.normal(size=(n_samples, n_features))
    mask = (rng.random((n_features, n_neurons)) < 0.85).astype(float)
    weights = 0.3 * rng.normal(size=(n_features, n_neurons)) * mask
    y = rng.poisson(np.exp(X @ weights - 1.0)).astype(float)
    return X, y, mask


def objective(model, X, y, penalty):
    """Each neuron's penalised loss, shape (n_neurons,)."""
    coef = np.asarray(model.coef_).reshape(X.shape[1], -1)
    eta = X @ coef + np.asarray(model.intercept_)
    nll = np.mean(np.exp(eta) - y.reshape(len(y), -1) * eta, axis=0)
    return nll + {"Ridge": 0.5 * RIDGE * np.sum(coef**2, axis=0), "Lasso": LASSO * np.sum(np.abs(coef), axis=0),
                  "UnRegularized": 0.0}[penalty]


def relative_gap(model, reference, X, y, penalty):
    ours, theirs = objective(model, X, y, penalty), objective(reference, X, y, penalty)
    return (ours - theirs) / np.abs(theirs)


@pytest.fixture(scope="module")
def ridge_fits(data):
    """In-memory Ridge fits with the mask: SVRG (defaults) and LBFGS (tight)."""
    X, y, mask = data
    common = dict(regularizer="Ridge", regularizer_strength=RIDGE, feature_mask=mask)
    svrg = PopulationGLM(solver_name="SVRG", **common).fit(X, y)
    lbfgs = PopulationGLM(solver_name="LBFGS", solver_kwargs={"tol": 1e-9}, **common).fit(X, y)
    return svrg, lbfgs


def test_svrg_reaches_the_lbfgs_objective(data, ridge_fits):
    X, y, mask = data
    svrg, lbfgs = ridge_fits
    gap = relative_gap(svrg, lbfgs, X, y, "Ridge")
    assert np.max(np.abs(gap)) <= GAP, gap
    assert np.all(svrg.coef_[mask == 0] == 0)
    state = svrg.solver_state_
    # every neuron converged and each stopped on its own: epochs differ, all within maxiter
    assert np.asarray(state.stalled).sum() == 0
    assert int(state.iter_num) < 10_000
    np.testing.assert_allclose(svrg.coef_, lbfgs.coef_, atol=1e-4)


def test_svrg_fits_a_single_neuron_glm(data):
    X, y, _ = data
    svrg = GLM(solver_name="SVRG[nemos]").fit(X, y[:, 3])
    lbfgs = GLM(solver_kwargs={"tol": 1e-9}).fit(X, y[:, 3])
    assert svrg.coef_.shape == (X.shape[1],) and np.shape(svrg.intercept_) == (1,)
    assert abs(relative_gap(svrg, lbfgs, X, y[:, 3], "UnRegularized")[0]) <= GAP


LASSO_MODEL = dict(regularizer="Lasso", regularizer_strength=LASSO, solver_name="ProxSVRG")


@pytest.fixture(scope="module")
def lasso_fits(data):
    """In-memory Lasso fits with the mask: ProxSVRG (defaults) and ProximalGradient (tight)."""
    X, y, mask = data
    prox_svrg = PopulationGLM(feature_mask=mask, **LASSO_MODEL).fit(X, y)
    reference = PopulationGLM(regularizer="Lasso", regularizer_strength=LASSO, feature_mask=mask,
                              solver_kwargs={"tol": 1e-8, "maxiter": 5000}).fit(X, y)
    return prox_svrg, reference


def test_proxsvrg_lasso_reaches_the_proximal_gradient_objective(data, lasso_fits):
    X, y, mask = data
    prox_svrg, reference = lasso_fits
    gap = relative_gap(prox_svrg, reference, X, y, "Lasso")
    assert np.max(np.abs(gap)) <= GAP, gap
    # the proximal step sets coefficients exactly to zero, as ProximalGradient's does
    assert np.sum(prox_svrg.coef_ == 0) > np.sum(mask == 0)


def test_a_converged_neuron_stops_moving(data, ridge_fits):
    X, y, mask = data
    _, lbfgs = ridge_fits
    # neurons 0-7 start at their optimum, the others at the default start
    init = PopulationGLM(feature_mask=mask).initialize_params(X, y)
    coef, intercept = np.array(init[0]), np.array(init[1])
    coef[:, :8], intercept[:8] = lbfgs.coef_[:, :8], lbfgs.intercept_[:8]
    model = PopulationGLM(regularizer="Ridge", regularizer_strength=RIDGE, feature_mask=mask,
                          solver_name="SVRG", solver_kwargs={"tol": 1e-6})
    model.fit(X, y, init_params=(coef, intercept))
    np.testing.assert_allclose(model.coef_[:, :8], coef[:, :8], rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(model.intercept_[:8], intercept[:8], rtol=1e-10)
    # the first update evaluates the start: it is all a neuron at its optimum needs
    assert np.all(model.n_iter_[:8] == 1) and np.all(model.n_iter_[8:] > 1)
    assert np.all(model.converged_)


def test_fits_are_deterministic_and_the_key_sets_the_path(data):
    X, y, _ = data
    X, y = X[:3000], y[:3000, :4]
    fit = lambda **kw: PopulationGLM(solver_name="SVRG", solver_kwargs=kw).fit(X, y)  # noqa: E731
    first, again = fit(), fit()
    assert np.array_equal(first.coef_, again.coef_) and np.array_equal(first.intercept_, again.intercept_)
    # NeMoS's default key is jax.random.key(123); a seed, a raw key and a typed key are one key
    np.testing.assert_array_equal(fit(key=123).coef_, first.coef_)
    seeded, typed = fit(key=5), fit(key=jax.random.key(5))
    np.testing.assert_array_equal(seeded.coef_, typed.coef_)
    np.testing.assert_array_equal(fit(key=jax.random.PRNGKey(5)).coef_, seeded.coef_)
    # another key draws other minibatches: another path to the same optimum
    assert not np.array_equal(seeded.coef_, first.coef_)
    np.testing.assert_allclose(seeded.coef_, first.coef_, atol=1e-5)


def test_solver_kwargs_are_nemos_svrg_kwargs():
    for name in ("SVRG", "ProxSVRG"):
        assert {"maxiter", "tol", "stepsize", "batch_size", "key"} <= set(accepted_kwargs(name))
    model = PopulationGLM(solver_name="SVRG", solver_kwargs={"stepsize": 0.1, "batch_size": 64, "maxiter": 5,
                                                             "tol": 1e-4, "key": 3})
    assert model.solver_kwargs["key"] == (0, 3) and model.get_params()["solver_kwargs"]["key"] == 3
    # the configuration actors and job records carry goes through JSON and back
    again = model_from_config(json.loads(json.dumps(model_to_config(model))))
    assert again.solver_kwargs == model.solver_kwargs and again.solver_name == "SVRG"
    # NeMoS refuses an unknown key with a NameError, as distglm does
    for lib in (nmo.glm.PopulationGLM, PopulationGLM):
        with pytest.raises(NameError):
            lib(solver_name="SVRG", solver_kwargs={"history_size": 3})
    with pytest.raises(UnknownSolverArgumentError, match=r"accepted keys are \[.*'batch_size'"):
        PopulationGLM(solver_name="SVRG", solver_kwargs={"linesearch": "zoom"})
    bad = [({"batch_size": 0}, ValueError, r"batch_size'\] must be a positive integer"),
           ({"batch_size": 2.5}, ValueError, r"batch_size.\] must be a positive integer of at most 2147483647 .*; got 2.5"),
           ({"stepsize": -1.0}, ValueError, r"stepsize'\] must be a positive finite number; got -1.0"),
           ({"stepsize": "big"}, TypeError, r"stepsize'\] must be a number or None; got 'big'"),
           ({"key": "seed"}, TypeError, r"key'\] must be an int seed or a jax random key"),
           ({"key": (1, 2, 3)}, TypeError, r"key'\] must be an int seed or a jax random key")]
    for kwargs, error, message in bad:
        with pytest.raises(error, match=message):
            PopulationGLM(solver_name="ProxSVRG", solver_kwargs=kwargs)


def test_given_stepsize_and_batch_size_are_used(data):
    X, y, _ = data
    X, y = X[:2000], y[:2000, :3]
    model = PopulationGLM(solver_name="SVRG", solver_kwargs={"stepsize": 0.05, "batch_size": 32, "maxiter": 3})
    with pytest.warns(RuntimeWarning, match="did not converge"):
        model.fit(X, y)
    state = model.solver_state_
    assert int(state.iter_num) == 3 and np.all(np.asarray(state.stepsize) == 0.05)


def test_nemos_solver_names_resolve():
    for name, algo, regularizer in (("SVRG", "SVRG", "Ridge"), ("SVRG[nemos]", "SVRG", "UnRegularized"),
                                    ("ProxSVRG", "ProxSVRG", "Lasso"), ("ProxSVRG[nemos]", "ProxSVRG", "GroupLasso"),
                                    ("ProxSVRG", "ProxSVRG", "Ridge"), ("ProxSVRG", "ProxSVRG", "ElasticNet")):
        ours = PopulationGLM(regularizer=regularizer, solver_name=name)
        theirs = nmo.glm.PopulationGLM(regularizer=regularizer, solver_name=name)
        assert ours.algo_name == theirs.algo_name == algo
        assert ours.get_params()["solver_name"] == name
    # NeMoS implements SVRG itself only, and refuses SVRG for a non-smooth penalty: so does distglm
    for lib in (nmo.glm.PopulationGLM, PopulationGLM):
        with pytest.raises(ValueError):
            lib(solver_name="SVRG[jaxopt]")
        with pytest.raises(ValueError):
            lib(regularizer="Lasso", solver_name="SVRG")
    with pytest.raises(ValueError, match=r"SVRG has only the 'nemos' backend"):
        PopulationGLM(solver_name="SVRG[optimistix]")
    with pytest.raises(ValueError, match=r"solver 'SVRG' cannot fit the GroupLasso regularizer"):
        PopulationGLM(regularizer="GroupLasso", solver_name="SVRG")


def test_step_by_step_fitting_is_refused_clearly(data):
    X, y, _ = data
    X, y = X[:500], y[:500, :2]
    theirs = nmo.glm.PopulationGLM(solver_name="SVRG")
    params = theirs.initialize_params(X, y)
    with pytest.raises(ValueError):
        theirs.update(params, theirs.initialize_solver_and_state(X, y, params), X, y)
    ours = PopulationGLM(solver_name="SVRG")
    with pytest.raises(ValueError, match=r"'SVRG' runs whole epochs over the data and has no step-by-step update"):
        ours.initialize_solver_and_state(X, y, ours.initialize_params(X, y))


def test_svrg_refuses_streamed_samples(data, tmp_path):
    X, y, _ = data
    X, y = X[:400], y[:400, :2]
    path = distglm.write_inputs(tmp_path / "fit.zarr", X, y, neuron_chunk=2)
    files = sorted(p.relative_to(path) for p in Path(path).rglob("*"))
    # refused before the store or Ray is touched
    with pytest.raises(ValueError, match=r"'SVRG' samples rows at random .* cannot fit streamed samples"):
        distglm.fit(path, PopulationGLM(solver_name="SVRG"), stream=True, progress=False)
    assert sorted(p.relative_to(path) for p in Path(path).rglob("*")) == files
    source = ChunkSource(lambda i: (X[200 * i:200 * i + 200], y[200 * i:200 * i + 200], np.ones(200, bool)),
                         n_chunks=2, rows=200, n_features=X.shape[1], n_neurons=2, n_valid=400)
    config = FitConfig(PoissonObservations(), "exp", UnRegularized(), "ProxSVRG")
    with pytest.raises(ValueError, match=r"'ProxSVRG' samples rows at random"):
        fit_streamed(source, np.ones((X.shape[1], 2)), config)


def test_distributed_fits_equal_in_memory(data, ridge_fits, lasso_fits, tmp_path):
    X, y, mask = data
    svrg, lbfgs = ridge_fits
    prox_svrg, proximal_gradient = lasso_fits
    paths = [distglm.write_inputs(tmp_path / f"{name}.zarr", X, y, mask, neuron_chunk=16) for name in ("svrg", "prox")]
    models = [PopulationGLM(solver_name="SVRG", regularizer="Ridge", regularizer_strength=RIDGE, feature_mask=mask),
              PopulationGLM(feature_mask=mask, **LASSO_MODEL)]
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        # two actors for one fit, one actor through both blocks for the other
        reports = [distglm.fit(path, model, num_actors=num_actors, block_size=16, progress=False)
                   for path, model, num_actors in zip(paths, models, (2, 1))]
    finally:
        ray.shutdown()
    for report in reports:
        assert report.failed_blocks == {} and report.n_fitted == 32 and report.n_blocks == 2
    for path, in_memory, reference, penalty in ((paths[0], svrg, lbfgs, "Ridge"),
                                                (paths[1], prox_svrg, proximal_gradient, "Lasso")):
        fitted = distglm.load_model(path)
        assert fitted.solver_name == in_memory.solver_name
        # a neuron's path depends on its own data and the shared key only, not on its block
        np.testing.assert_allclose(fitted.coef_, in_memory.coef_, rtol=1e-7, atol=1e-9)
        np.testing.assert_allclose(fitted.intercept_, in_memory.intercept_, rtol=1e-7)
        assert np.max(np.abs(relative_gap(fitted, reference, X, y, penalty))) <= GAP
