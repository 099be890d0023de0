"""History and coupling features: NeMoS's kernels and convolution, built by actors from the store's y.

The kernels and the features are compared with NeMoS 0.2.8's own ``RaisedCosineLogConv``; a
distributed fit with declared history (self, all-to-all, neighbour mask), whose actors build
the features a stored chunk of samples at a time (windows crossing chunk edges), is compared
with the in-memory ``PopulationGLM`` fitted on the design NeMoS's ``compute_features`` builds.
"""

from __future__ import annotations

import doctest

import jax
import nemos as nmo
import numpy as np
import pytest
import ray
import xarray as xr

import distglm
import distglm.history
from distglm import store
from distglm.cli import inspect_store
from distglm.errors import InputError, InputTypeError, StoreError, UnsupportedOptionError
from distglm.glm import PopulationGLM
from distglm.history import HistorySpec, history_features, raised_cosine_log

N_NEURONS, N_SAMPLES, K, WINDOW = 20, 6_000, 4, 12


@pytest.fixture
def global_x64():
    """float64 set globally: the driver's setting is the actors' (and a streamed fit's chunks
    arrive on an XLA thread that a thread-local ``jax.enable_x64`` does not reach)."""
    before = jax.config.jax_enable_x64
    jax.config.update("jax_enable_x64", True)
    yield
    jax.config.update("jax_enable_x64", before)


@pytest.mark.parametrize("n_basis_funcs, window_size", [(3, 5), (4, 12), (6, 50)])
def test_kernels_equal_nemos(global_x64, n_basis_funcs, window_size):
    basis = nmo.basis.RaisedCosineLogConv(n_basis_funcs, window_size=window_size)
    want = np.asarray(basis.evaluate_on_grid(window_size)[1])
    np.testing.assert_allclose(raised_cosine_log(n_basis_funcs, window_size), want, rtol=1e-12, atol=1e-14)
    np.testing.assert_array_equal(HistorySpec.from_basis(basis).kernels, want)


def test_features_equal_nemos_compute_features(global_x64):
    rng = np.random.default_rng(1)
    y = rng.poisson(1.5, size=(400, 3)).astype(float)
    basis = nmo.basis.RaisedCosineLogConv(K, window_size=WINDOW)
    want = np.asarray(basis.compute_features(y))
    got = history_features(y, HistorySpec.raised_cosine_log(K, WINDOW))
    np.testing.assert_array_equal(np.isnan(got), np.isnan(want))
    assert np.isnan(got[:WINDOW]).all() and not np.isnan(got[WINDOW:]).any()
    np.testing.assert_allclose(got[WINDOW:], want[WINDOW:], rtol=1e-12, atol=1e-12)


def test_docstring_examples_run():
    assert doctest.testmod(distglm.history).failed == 0
    assert distglm.HistorySpec is HistorySpec


def test_spec_is_validated():
    with pytest.raises(InputError, match="coupling must be 'self', 'all' or a bool array"):
        HistorySpec.raised_cosine_log(4, 10, coupling="some")
    with pytest.raises(InputError, match=r"bool array of shape \(n_neurons, n_neurons\); got int64 of shape \(3, 3\)"):
        HistorySpec.raised_cosine_log(4, 10, coupling=np.eye(3, dtype=int))
    with pytest.raises(InputError, match="kernels must be a numeric array of shape"):
        HistorySpec(np.ones(5))
    with pytest.raises(InputError, match="n_basis_funcs must be at least 2; got 1"):
        raised_cosine_log(1, 10)
    with pytest.raises(InputTypeError, match="NeMoS convolutional basis"):
        HistorySpec.from_basis(nmo.basis.RaisedCosineLogEval(4))
    spec = HistorySpec.raised_cosine_log(4, 10, coupling=np.eye(3, dtype=bool))
    assert HistorySpec.from_json(spec.to_json()) == spec
    with pytest.raises(InputError, match=r"has shape \(3, 3\) but the store holds 5 neurons"):
        spec.coupling_mask(5)


def test_fit_refuses_history_it_cannot_build(tmp_path):
    rng = np.random.default_rng(0)
    path = distglm.write_inputs(tmp_path / "s.zarr", rng.normal(size=(200, 2)), rng.poisson(1.0, size=(200, 5)))
    before = sorted(p.name for p in (tmp_path / "s.zarr").iterdir())
    with pytest.raises(InputTypeError, match="history must be a distglm.history.HistorySpec or None; got dict"):
        distglm.fit(path, PopulationGLM(), history={"kernels": [[1.0]]}, progress=False)
    with pytest.raises(InputError, match="holds 5 neurons"):
        distglm.fit(path, PopulationGLM(), history=HistorySpec.raised_cosine_log(3, 5, np.eye(4, dtype=bool)),
                    progress=False)
    with pytest.raises(UnsupportedOptionError, match=r"stream=False, held-out samples \(test_samples"):
        distglm.fit(path, PopulationGLM(), history=HistorySpec.raised_cosine_log(3, 5), stream=False,
                    test_samples=slice(0, 20), progress=False)
    # refused before the store is touched
    assert sorted(p.name for p in (tmp_path / "s.zarr").iterdir()) == before


def _neighbours(n):
    """Each neuron driven by itself and the two neurons either side of it (a ring)."""
    ring = np.arange(n)
    mask = np.zeros((n, n), dtype=bool)
    for shift in (-2, -1, 0, 1, 2):
        mask[(ring + shift) % n, ring] = True
    return mask


@pytest.fixture(scope="module")
def coupled_store(tmp_path_factory):
    """Poisson counts of 20 neurons driven by 2 stimulus features and by each other's past (one
    count NaN), in a store chunked along time so history windows cross the chunks' edges."""
    rng = np.random.default_rng(7)
    X = 0.3 * rng.normal(size=(N_SAMPLES, 2))
    y = np.zeros((N_SAMPLES, N_NEURONS))
    kernels = raised_cosine_log(K, WINDOW)
    w_hist = -0.05 * rng.random((N_NEURONS, K, N_NEURONS)) * _neighbours(N_NEURONS)[:, None, :]
    w_stim = 0.3 * rng.normal(size=(2, N_NEURONS))
    for t in range(N_SAMPLES):
        past = y[max(t - WINDOW, 0):t][::-1]
        drive = np.einsum("jn,jk,nkm->m", past, kernels[:len(past)], w_hist)
        y[t] = rng.poisson(np.exp(-1.0 + X[t] @ w_stim + drive))
    # a NaN a few samples before a chunk's edge: that sample and the WINDOW after it (whose
    # windows cross the edge) are dropped, as NeMoS's features are NaN there
    y[2_797, 5] = np.nan
    mp = pytest.MonkeyPatch()
    mp.setattr(store.inputs, "_ROW_CHUNK", 1_400)
    try:
        path = distglm.write_inputs(tmp_path_factory.mktemp("hist") / "fit.zarr", X, y, neuron_chunk=10)
    finally:
        mp.undo()
    assert store.open_inputs(path).row_chunk == 1_400
    return path, X, y


@pytest.fixture(scope="module")
def local_ray():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


@pytest.mark.ray
@pytest.mark.usefixtures("local_ray")
@pytest.mark.parametrize("coupling", ["self", "all", "neighbours"])
def test_history_fit_equals_in_memory_fit_on_nemos_design(global_x64, coupled_store, coupling, tmp_path):
    path, X, y = coupled_store
    mask_of = {"self": np.eye(N_NEURONS, dtype=bool), "all": np.ones((N_NEURONS, N_NEURONS), bool),
               "neighbours": _neighbours(N_NEURONS)}
    spec = HistorySpec.raised_cosine_log(K, WINDOW, coupling=mask_of[coupling] if coupling == "neighbours"
                                         else coupling)
    basis = nmo.basis.RaisedCosineLogConv(K, window_size=WINDOW)
    design = np.hstack([X, np.asarray(basis.compute_features(y))])
    feature_mask = np.vstack([np.ones((2, N_NEURONS)), np.repeat(mask_of[coupling], K, axis=0)])
    options = dict(regularizer="Ridge", regularizer_strength=1e-3, solver_kwargs={"tol": 1e-12, "maxiter": 1000})
    want = PopulationGLM(feature_mask=feature_mask, **options).fit(design, y)
    assert np.isnan(design[2_798:2_798 + WINDOW]).any(axis=1).all()

    report = distglm.fit(path, PopulationGLM(**options), history=spec, num_actors=1, block_size=20,
                         name=coupling, progress=False)
    assert report.failed_blocks == {} and report.n_fitted == N_NEURONS == report.n_converged
    got = distglm.load_model(path, name=coupling)
    assert got.history_ == spec
    np.testing.assert_array_equal(got.feature_mask, feature_mask)
    np.testing.assert_allclose(got.coef_, want.coef_, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(got.intercept_, want.intercept_, rtol=1e-5)
    assert np.all(got.coef_[feature_mask == 0] == 0)
    # the loaded model predicts from the stimulus and the history NeMoS builds
    np.testing.assert_allclose(distglm.history.design(X, y, got.history_)[WINDOW:], design[WINDOW:], atol=1e-12)
    np.testing.assert_allclose(got.predict(design[WINDOW:]), want.predict(design[WINDOW:]), rtol=1e-5)  # NaN rows too
    # the recorded spec is part of the fit: resuming it with another history, or none, is refused
    for other in (HistorySpec.raised_cosine_log(K, WINDOW + 1, coupling=spec.coupling), None):
        with pytest.raises(StoreError, match=r"fingerprint differs in \['history'"):
            distglm.fit(path, PopulationGLM(**options), history=other, name=coupling, progress=False)
    if coupling != "neighbours":
        return
    # the results name the history features beside the stored ones, and xarray opens them
    ds = xr.open_zarr(path, group=f"results/{coupling}", consolidated=False)
    assert list(ds["feature"].values[:2 + K + 1]) == ["0", "1"] + [f"0_history{k}" for k in range(K)] + ["1_history0"]
    np.testing.assert_array_equal(ds["coef"].values, got.coef_)
    # distglm inspect scores the fit on the design with its history
    r2 = inspect_store(path, name=coupling)["pseudo_r2"]
    assert isinstance(r2, dict) and 0 < r2["median"] < 1, r2
    # and simulates from its own history (the store's spec) as the in-memory fit does from the declared one
    key = jax.random.PRNGKey(0)
    rates = distglm.history.simulate_recurrent(got, key, X[WINDOW:WINDOW + 50], y[:WINDOW])[1]
    want_rates = distglm.history.simulate_recurrent(want, key, X[WINDOW:WINDOW + 50], y[:WINDOW], spec)[1]
    np.testing.assert_allclose(rates, want_rates, rtol=1e-4)


def test_simulation_feeds_back_its_draws_as_nemos_does(global_x64):
    rng = np.random.default_rng(3)
    n, p, T = 4, 2, 60
    spec = HistorySpec.raised_cosine_log(K, WINDOW, coupling="all")
    model = PopulationGLM()
    model.coef_ = np.vstack([0.2 * rng.normal(size=(p, n)), -0.1 * rng.random((n * K, n))])
    model.intercept_ = np.full(n, -0.5)
    X = rng.normal(size=(T, p))
    init_y = rng.poisson(1.0, size=(WINDOW, n)).astype(float)
    key = jax.random.PRNGKey(11)
    spikes, rates = distglm.history.simulate_recurrent(model, key, X, init_y, spec)
    coupling = model.coef_[p:].reshape(n, K, n).transpose(2, 0, 1)  # (receiver, sender, K)
    want_spikes, want_rates = nmo.simulation.simulate_recurrent(
        coupling, model.coef_[:p].T, model.intercept_, key, np.broadcast_to(X[:, None], (T, n, p)),
        spec.kernels, init_y, inverse_link_function=jax.numpy.exp)
    np.testing.assert_allclose(rates, want_rates, rtol=1e-10)
    np.testing.assert_array_equal(spikes, want_spikes)
    # the draws feed back: the rates are those of the recorded-history model on the simulated spikes
    full = distglm.history.design(np.vstack([np.zeros((WINDOW, p)), X]), np.vstack([init_y, spikes]), spec)
    np.testing.assert_allclose(model.predict(full[WINDOW:]), rates, rtol=1e-10)
    with pytest.raises(InputTypeError, match="needs the model's history"):
        distglm.history.simulate_recurrent(model, key, X, init_y)
    with pytest.raises(InputError, match=r"init_y must be of shape \(12, 4\)"):
        distglm.history.simulate_recurrent(model, key, X, init_y[1:], spec)
