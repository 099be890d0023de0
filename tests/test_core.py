"""The shared JAX core: observation models, regularizers and ``fit_block``."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.stats

from distglm.core import fit as core_fit
from distglm.core import (
    BernoulliObservations,
    ElasticNet,
    FitConfig,
    GammaObservations,
    GaussianObservations,
    GroupLasso,
    Lasso,
    NegativeBinomialObservations,
    Params,
    PoissonObservations,
    Ridge,
    UnRegularized,
    fit_block,
    state_leaves,
)
from distglm.core.observations import LINKS, initial_intercept, resolve_link

pytestmark = pytest.mark.usefixtures("x64")

TIGHT = (("maxiter", 5000), ("tol", 1e-10))


def poisson_config(regularizer=None, solver="LBFGS", solver_kwargs=TIGHT):
    return FitConfig(PoissonObservations(), "exp", regularizer or UnRegularized(), solver, solver_kwargs)


def assert_block_close(a, b, neurons_a=slice(None), neurons_b=slice(None), rtol=1e-6, atol=1e-8):
    """Two block results agree on the named neurons (coef, intercept, scale, loss)."""
    np.testing.assert_allclose(a.coef[:, neurons_a], b.coef[:, neurons_b], rtol=rtol, atol=atol)
    np.testing.assert_allclose(a.intercept[neurons_a], b.intercept[neurons_b], rtol=rtol, atol=atol)
    np.testing.assert_allclose(a.scale[neurons_a], b.scale[neurons_b], rtol=rtol, atol=atol)
    np.testing.assert_allclose(a.loss[neurons_a], b.loss[neurons_b], rtol=rtol, atol=atol)


# ---------------------------------------------------------------------------- observation models
def _observations_and_scipy():
    """(observation model, scale, sampler of y given rate, scipy log-density of y given rate)."""
    nb = 0.4
    return {
        "Poisson": (PoissonObservations(), 1.0,
                    lambda rng, mu: rng.poisson(mu).astype(float),
                    lambda y, mu: scipy.stats.poisson.logpmf(y, mu)),
        "Gamma": (GammaObservations(), 0.3,
                  lambda rng, mu: rng.gamma(1 / 0.3, mu * 0.3),
                  lambda y, mu: scipy.stats.gamma.logpdf(y, a=1 / 0.3, scale=mu * 0.3)),
        "Bernoulli": (BernoulliObservations(), 1.0,
                      lambda rng, mu: rng.binomial(1, mu / (1 + mu)).astype(float),
                      lambda y, p: scipy.stats.bernoulli.logpmf(y, p)),
        "Gaussian": (GaussianObservations(), 0.7,
                     lambda rng, mu: mu + np.sqrt(0.7) * rng.normal(size=mu.shape),
                     lambda y, mu: scipy.stats.norm.logpdf(y, mu, np.sqrt(0.7))),
        "NegativeBinomial": (NegativeBinomialObservations(scale=nb), nb,
                             lambda rng, mu: rng.negative_binomial(1 / nb, 1 / (1 + nb * mu)).astype(float),
                             lambda y, mu: scipy.stats.nbinom.logpmf(y, 1 / nb, 1 / (1 + nb * mu))),
    }


@pytest.mark.parametrize("family", list(_observations_and_scipy()))
def test_log_likelihood_matches_scipy(family):
    obs, scale, sample, logpdf = _observations_and_scipy()[family]
    rng = np.random.default_rng(0)
    mu = rng.uniform(0.2, 3.0, size=(50, 2))
    y = sample(rng, mu)
    if family == "Bernoulli":
        mu = mu / (1 + mu)  # a probability
    ours = np.asarray(obs.log_likelihood_terms(jnp.asarray(y), jnp.asarray(mu), jnp.asarray(scale)))
    np.testing.assert_allclose(ours, logpdf(y, mu), rtol=1e-10, atol=1e-12)
    # nll_terms is minus the log-likelihood up to terms free of the rate and a positive factor
    factor = {"Gamma": 1 / scale, "Gaussian": 0.5 / scale}.get(family, 1.0)
    nll = np.asarray(obs.nll_terms(jnp.asarray(y), jnp.asarray(mu)))
    other_mu = mu * 0.9 if family != "Bernoulli" else mu * 0.8
    nll_other = np.asarray(obs.nll_terms(jnp.asarray(y), jnp.asarray(other_mu)))
    ll_other = logpdf(y, other_mu)
    np.testing.assert_allclose(factor * (nll_other - nll), -(ll_other - logpdf(y, mu)), rtol=1e-8, atol=1e-12)


@pytest.mark.parametrize("family", list(_observations_and_scipy()))
def test_deviance_is_zero_at_the_data_and_positive_elsewhere(family):
    obs, scale, sample, _ = _observations_and_scipy()[family]
    rng = np.random.default_rng(1)
    mu = rng.uniform(0.2, 3.0, size=(40, 2))
    if family == "Bernoulli":
        mu = mu / (1 + mu)
        y = rng.binomial(1, mu).astype(float)
        perfect = np.clip(y, 1e-12, 1 - 1e-12)
    else:
        y = np.maximum(sample(rng, mu), 0.5) if family != "Gaussian" else sample(rng, mu)
        perfect = y
    s = jnp.asarray(scale)
    np.testing.assert_allclose(np.asarray(obs.deviance_terms(jnp.asarray(y), jnp.asarray(perfect), s)), 0,
                               atol=1e-8)
    assert np.all(np.asarray(obs.deviance_terms(jnp.asarray(y), jnp.asarray(mu), s)) >= -1e-12)


def test_estimate_scale_formulas():
    rng = np.random.default_rng(2)
    mu = rng.uniform(0.5, 2.0, size=(30, 3))
    y = mu * rng.uniform(0.5, 1.5, size=mu.shape)
    dof = jnp.asarray([20.0, 25.0, 27.0])
    np.testing.assert_allclose(np.asarray(GaussianObservations().estimate_scale(jnp.asarray(y), jnp.asarray(mu), dof)),
                               np.sum((y - mu) ** 2, axis=0) / np.asarray(dof))
    np.testing.assert_allclose(np.asarray(GammaObservations().estimate_scale(jnp.asarray(y), jnp.asarray(mu), dof)),
                               np.sum(((y - mu) / mu) ** 2, axis=0) / np.asarray(dof))
    np.testing.assert_array_equal(np.asarray(PoissonObservations().estimate_scale(jnp.asarray(y), jnp.asarray(mu), dof)),
                                  np.ones(3))
    np.testing.assert_array_equal(
        np.asarray(NegativeBinomialObservations(scale=0.25).estimate_scale(jnp.asarray(y), jnp.asarray(mu), dof)),
        np.full(3, 0.25))


@pytest.mark.parametrize("link", list(LINKS))
def test_initial_intercept_inverts_each_link(link):
    mean = np.array([0.1, 0.4, 0.9])
    b = initial_intercept(link, mean)
    np.testing.assert_allclose(np.asarray(resolve_link(link)(jnp.asarray(b))), mean, rtol=1e-10)


def test_initial_intercept_of_a_custom_link_and_of_a_silent_neuron():
    def shifted_exp(x):
        return jnp.exp(x) + 0.05

    mean = np.array([0.3, 1.0, 2.5])
    b = np.asarray(initial_intercept(shifted_exp, jnp.asarray(mean)))
    np.testing.assert_allclose(np.asarray(shifted_exp(jnp.asarray(b))), mean, rtol=1e-8)
    # no value of the link reaches a mean of 0.01: reported as NaN, not as a wrong number
    assert np.isnan(np.asarray(initial_intercept(shifted_exp, jnp.asarray([0.01]))))[0]
    assert np.isneginf(initial_intercept("exp", np.array([0.0])))[0]


# ---------------------------------------------------------------------------- regularizers
def _strengths(n_features=4, n_neurons=3):
    rng = np.random.default_rng(3)
    groups = np.array([[1, 1, 0, 0], [0, 0, 0, 1]])  # feature 2 in no group
    return {
        "Ridge": (Ridge(), rng.uniform(0.1, 1.0, size=(n_features, n_neurons))),
        "Lasso": (Lasso(), rng.uniform(0.1, 1.0, size=(n_features, n_neurons))),
        "ElasticNet": (ElasticNet(), (rng.uniform(0.1, 1.0, size=(n_features, n_neurons)),
                                      rng.uniform(0.1, 1.0, size=(n_features, n_neurons)))),
        "GroupLasso": (GroupLasso(mask=groups), np.repeat(np.array([[0.3], [0.6]]), n_neurons, axis=1)),
    }


def _penalty_by_hand(name, coef, strength):
    if name == "Ridge":
        return 0.5 * np.sum(strength * coef**2, axis=0)
    if name == "Lasso":
        return np.sum(strength * np.abs(coef), axis=0)
    if name == "ElasticNet":
        s, r = strength
        return np.sum(s * ((1 - r) * 0.5 * coef**2 + r * np.abs(coef)), axis=0)
    groups = np.array([[1, 1, 0, 0], [0, 0, 0, 1]], dtype=bool)
    return sum(strength[g] * np.sqrt(groups[g].sum()) * np.linalg.norm(coef[groups[g]], axis=0)
               for g in range(len(groups)))


@pytest.mark.parametrize("name", ["Ridge", "Lasso", "ElasticNet", "GroupLasso"])
def test_penalty_and_prox(name):
    reg, strength = _strengths()[name]
    rng = np.random.default_rng(4)
    v = rng.normal(size=(4, 3))
    np.testing.assert_allclose(np.asarray(reg.penalty(jnp.asarray(v), strength)), _penalty_by_hand(name, v, strength),
                               rtol=1e-12)
    # the proximal point minimises 0.5 * ||x - v||^2 + scaling * penalty(x), neuron by neuron
    scaling = 0.7
    x = np.asarray(reg.prox(jnp.asarray(v), strength, scaling))

    def objective(z):
        return 0.5 * np.sum((z - v) ** 2, axis=0) + scaling * _penalty_by_hand(name, z, strength)

    best = objective(x)
    for _ in range(200):
        trial = x + 1e-3 * rng.normal(size=x.shape) * rng.integers(0, 2, size=x.shape)
        assert np.all(objective(trial) >= best - 1e-12)
    if name == "GroupLasso":
        # a group whose norm falls under its threshold is removed whole
        big = np.asarray(reg.prox(jnp.asarray(v), strength * 100.0, scaling))
        np.testing.assert_array_equal(big[[0, 1, 3]], 0.0)
        np.testing.assert_array_equal(big[2], v[2])  # ungrouped feature untouched


def test_expand_strength_shapes():
    np.testing.assert_array_equal(Ridge().expand_strength(0.5, 4, 3), np.full((4, 3), 0.5))
    s, r = ElasticNet().expand_strength((0.2, 0.7), 4, 3)
    assert s.shape == r.shape == (4, 3) and np.all(r == 0.7)
    s, r = ElasticNet().expand_strength(0.2, 4, 3)
    assert np.all(r == 0.5)
    g = GroupLasso(mask=[[1, 1, 0, 0], [0, 0, 1, 1]]).expand_strength([0.1, 0.2], 4, 3)
    np.testing.assert_array_equal(g, [[0.1] * 3, [0.2] * 3])
    np.testing.assert_array_equal(GroupLasso().expand_strength(None, 4, 3), np.ones((1, 3)))


# ---------------------------------------------------------------------------- fit_block
@pytest.fixture(scope="module")
def block_data():
    """X (250, 4), Poisson y (250, 5) and a mask (4, 5) with some features masked."""
    rng = np.random.default_rng(5)
    X = 0.5 * rng.normal(size=(250, 4))
    mask = (rng.uniform(size=(4, 5)) > 0.3).astype(float)
    weights = 0.5 * rng.normal(size=(4, 5)) * mask
    y = rng.poisson(np.exp(X @ weights)).astype(float)
    return X, y, mask


def test_fit_block_result(block_data):
    X, y, mask = block_data
    config = poisson_config()
    res = fit_block(X, y, mask, config)
    assert res.coef.shape == (4, 5) and res.intercept.shape == (5,)
    assert res.coef.dtype == np.float64
    assert np.all(res.coef[mask == 0] == 0)
    assert np.all(res.converged) and np.all(res.status == core_fit.STATUS_OK)
    assert np.all(res.n_iter > 0) and np.all(res.grad_norm <= 1e-10)
    np.testing.assert_array_equal(res.scale, np.ones(5))
    np.testing.assert_array_equal(res.dof_resid, np.full(5, 250 - 4 - 1))
    rate = np.exp(X @ res.coef + res.intercept)
    np.testing.assert_allclose(res.loss, np.mean(rate - y * np.log(rate), axis=0), rtol=1e-12)
    # optimality: the gradient of each neuron's mean NLL vanishes on its unmasked features
    grad_coef = X.T @ (rate - y) / len(X)
    np.testing.assert_allclose(grad_coef * mask, 0, atol=1e-9)
    np.testing.assert_allclose(np.mean(rate - y, axis=0), 0, atol=1e-9)


@pytest.mark.parametrize("regularizer, strength_of", [
    (UnRegularized(), lambda r: None),
    (Ridge(), lambda r: r.expand_strength(0.05, 4, 5)),
    (Lasso(), lambda r: r.expand_strength(0.02, 4, 5)),
], ids=["UnRegularized", "Ridge", "Lasso"])
def test_one_block_equals_many_blocks(block_data, regularizer, strength_of):
    X, y, mask = block_data
    config = poisson_config(regularizer, solver="ProximalGradient" if not regularizer.smooth else "LBFGS")
    strength = strength_of(regularizer)
    whole = fit_block(X, y, mask, config, strength=strength)
    # blocks of one size compile once; the overlap covers every neuron
    for start, stop in [(0, 2), (2, 4), (3, 5)]:
        part_strength = None if strength is None else strength[:, start:stop]
        part = fit_block(X, y[:, start:stop], mask[:, start:stop], config, strength=part_strength)
        assert_block_close(whole, part, neurons_a=slice(start, stop))


@pytest.mark.parametrize("family", ["Poisson", "Gaussian"])
def test_padding_a_block_with_empty_neurons_changes_nothing(block_data, family):
    X, y, mask = block_data
    if family == "Poisson":
        config = poisson_config()
    else:
        config = FitConfig(GaussianObservations(), "identity", UnRegularized(), "LBFGS", TIGHT)
        y = np.log1p(y)
    n_pad = 3
    y_pad = np.concatenate([y, np.zeros((len(y), n_pad))], axis=1)
    mask_pad = np.concatenate([mask, np.zeros((mask.shape[0], n_pad))], axis=1)
    real = fit_block(X, y, mask, config)
    padded = fit_block(X, y_pad, mask_pad, config)
    assert_block_close(real, padded, neurons_b=slice(0, 5))
    np.testing.assert_array_equal(padded.status[:5], real.status)
    assert np.all(padded.coef[:, 5:][~np.isnan(padded.coef[:, 5:])] == 0)
    if family == "Poisson":
        # a neuron with no events cannot start: reported, and left out of the solve
        np.testing.assert_array_equal(padded.status[5:], core_fit.STATUS_NONFINITE_INIT)
        assert not padded.converged[5:].any()
    else:
        # zeros are valid Gaussian data: the padded neurons fit to exactly nothing
        assert padded.converged.all()
        np.testing.assert_allclose(padded.intercept[5:], 0, atol=1e-12)


def test_fit_block_from_its_own_solution_stays_there(block_data):
    X, y, mask = block_data
    config = poisson_config()
    first = fit_block(X, y, mask, config)
    again = fit_block(X, y, mask, config, init=Params(first.coef, first.intercept))
    assert_block_close(first, again, rtol=1e-8, atol=1e-10)
    assert np.all(again.n_iter <= 1)


@pytest.mark.parametrize("counts", ["uint8", "uint16"])
@pytest.mark.parametrize("x64", [True, False], ids=["float64", "float32"])
def test_fit_block_takes_counts_held_narrow(block_data, counts, x64):
    # an actor holds a block's spike counts as uint8/uint16; the solve makes floats of them a
    # chunk of rows at a time, and fits exactly what the float block fits
    X, y, mask = block_data
    with jax.enable_x64(x64):
        dtype = np.float64 if x64 else np.float32
        Xf = X.astype(dtype)
        # 203 data rows: the zero rows after them pad the samples to their bucket
        want = fit_block(Xf, y.astype(dtype), mask, poisson_config(), n_samples=203)
        got = fit_block(Xf, y.astype(counts), mask, poisson_config(), n_samples=203)
        assert got.coef.dtype == dtype
        assert_block_close(want, got, rtol=1e-12 if x64 else 1e-6)
        np.testing.assert_array_equal(got.n_iter, want.n_iter)


def test_fit_block_ignores_masked_entries_of_init(block_data):
    X, y, mask = block_data
    config = poisson_config()
    rng = np.random.default_rng(6)
    init = Params(rng.normal(size=mask.shape), np.zeros(5))
    res = fit_block(X, y, mask, config, init=init)
    assert np.all(res.coef[mask == 0] == 0)
    assert_block_close(res, fit_block(X, y, mask, config))


def test_fit_block_in_float32():
    # the default precision, as a user without jax_enable_x64 gets it
    with jax.enable_x64(False):
        rng = np.random.default_rng(0)
        X = rng.normal(size=(500, 3)).astype("float32")
        y = rng.poisson(np.exp(X @ np.array([[0.3, 0.0], [0.0, -0.2], [0.1, 0.2]]))).astype("float32")
        cfg = FitConfig(PoissonObservations(), "exp", UnRegularized(), "LBFGS", (("tol", 1e-6),))
        res = fit_block(X, y, np.array([[1, 0], [0, 1], [1, 1]], "float32"), cfg)
    assert res.coef.dtype == np.float32
    assert res.converged.all()
    assert res.coef[1, 0] == 0 and res.coef[0, 1] == 0
    np.testing.assert_allclose(res.coef[[0, 2], 0], [0.3, 0.1], atol=0.1)


def test_state_leaves_marks_per_neuron_arrays(block_data):
    X, y, mask = block_data
    res = fit_block(X, y, mask, poisson_config())
    leaves = state_leaves(res.state)
    assert leaves
    per_neuron = {name: arr for name, (arr, flag) in leaves.items() if flag}
    assert per_neuron, "the solver state holds the gradient, shaped like the parameters"
    for arr in per_neuron.values():
        assert arr.shape[-1] == 5
    for name, (arr, flag) in leaves.items():
        assert isinstance(arr, np.ndarray)


def test_update_steps_reach_fit_block(block_data):
    X, y, mask = block_data
    config = poisson_config()
    Xj, yj, mj = jnp.asarray(X), jnp.asarray(y), jnp.asarray(mask)
    params = core_fit.default_init(config, y, 4, Xj.dtype)
    ustate = core_fit.init_update_state(Xj, yj, mj, params, None, config)
    for _ in range(40):
        params, ustate = core_fit.update_step(Xj, yj, mj, params, ustate, None, config)
    res = fit_block(X, y, mask, config)
    np.testing.assert_allclose(np.asarray(params.coef), res.coef, atol=1e-7)
    np.testing.assert_allclose(np.asarray(params.intercept), res.intercept, atol=1e-7)


def test_dof_resid_per_regularizer():
    X = np.random.default_rng(7).normal(size=(40, 3))
    X[:, 2] = X[:, 0] + X[:, 1]  # rank 2
    coef = np.array([[0.5, 0.0], [0.0, 0.0], [1e-12, -0.2]])
    for reg, expected in [(UnRegularized(), [40 - 2 - 1] * 2), (Ridge(), [40 - 3 - 1] * 2),
                          (Lasso(), [40 - 1 - 1, 40 - 1 - 1])]:
        config = FitConfig(PoissonObservations(), "exp", reg, reg.default_solver, ())
        np.testing.assert_array_equal(np.asarray(core_fit.dof_resid(config, X, coef)), expected)


def test_jaxopt_is_imported_only_for_its_solvers():
    # importing jaxopt (with SciPy's optimizers and numba) costs each actor's start 0.4-1 s:
    # the default solver must not pull it in, and a jaxopt solver must still resolve to its class
    import os
    import subprocess
    import sys

    code = ("import sys, distglm, distglm.actor; import numpy as np; "
            "distglm.PopulationGLM().fit(np.ones((20, 2), 'float32'), np.ones((20, 3), 'float32')); "
            "print('jaxopt' in sys.modules); "
            "from distglm.core.solvers import SOLVERS; import jaxopt; "
            "print(SOLVERS['BFGS'] is jaxopt.BFGS, SOLVERS['ProximalGradient'] is jaxopt.ProximalGradient, "
            "len(SOLVERS) == len(list(SOLVERS)))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                         env={**os.environ, "DISTGLM_COMPILATION_CACHE": ""})
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["False", "True", "True", "True"]
