"""Held-out evaluation of a distributed fit (samples kept out of training, each neuron scored on
them) and standard errors computed by the actors."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest
import ray

import distglm
from distglm import store
from distglm.cli import main
from distglm.errors import InputError, InputTypeError, StoreError, UnsupportedOptionError
from distglm.glm import PopulationGLM

MODEL = dict(regularizer="Ridge", regularizer_strength=0.1, solver_kwargs={"tol": 1e-7})


@pytest.fixture
def inputs(tmp_path):
    rng = np.random.default_rng(5)
    X = rng.normal(size=(600, 3))
    X[[7, 300]] = np.nan
    y = rng.poisson(np.exp(np.nan_to_num(X) @ rng.normal(scale=0.3, size=(3, 8)))).astype(float)
    return store.write_inputs(str(tmp_path / "s.zarr"), X, y, neuron_chunk=4), X, y


def test_test_samples_are_checked_before_anything_is_written(inputs):
    path = inputs[0]
    for bad, error in ((np.ones(10, bool), InputTypeError), (np.arange(600), InputTypeError),
                       (slice(0, 0), InputError), (slice(None), InputError)):
        with pytest.raises(error, match="test_samples"):
            distglm.fit(path, PopulationGLM(**MODEL), test_samples=bad)
    with pytest.raises(InputTypeError, match="standard_errors must be"):
        distglm.fit(path, PopulationGLM(**MODEL), standard_errors="yes")

    class Intervals:
        start, end = np.array([0.0]), np.array([1.0])

    with pytest.raises(UnsupportedOptionError, match="IntervalSet"):
        distglm.fit(path, PopulationGLM(**MODEL), test_samples=Intervals())
    assert store.fit_names(path) == []


@pytest.mark.ray
def test_actors_score_held_out_samples_and_compute_standard_errors(inputs, capsys):
    path, X, y = inputs
    test = np.zeros(600, bool)
    test[::4] = True
    ray.init(num_cpus=2, include_dashboard=False)
    try:
        report = distglm.fit(path, PopulationGLM(**MODEL), test_samples=test, name="heldout", num_actors=1,
                             progress=False, standard_errors=True)
        # another held-out set is another fit: resuming this one with it is refused
        with pytest.raises(StoreError, match="different fit"):
            distglm.fit(path, PopulationGLM(**MODEL), test_samples=~test, name="heldout", num_actors=1,
                        progress=False)
        # and so is dropping an option the stored fit had: no held-out set, or no standard errors
        for dropped in ({"standard_errors": True}, {"test_samples": test}):
            with pytest.raises(StoreError, match=r"fingerprint differs in \['%s'\]" % next(
                    name for name in ("standard_errors", "test_samples") if name not in dropped)):
                distglm.fit(path, PopulationGLM(**MODEL), name="heldout", num_actors=1, progress=False, **dropped)
    finally:
        ray.shutdown()
    ok = ~np.isnan(X).any(axis=1)
    train, held = ok & ~test, ok & test
    reference = PopulationGLM(**MODEL).fit(X[train], y[train])
    loaded = distglm.load_model(path, name="heldout")
    np.testing.assert_allclose(loaded.coef_, reference.coef_, rtol=1e-4, atol=1e-5)
    reference.compute_standard_errors(X[train], y[train])
    np.testing.assert_allclose(loaded.coef_se_, reference.coef_se_, rtol=1e-3)
    np.testing.assert_allclose(loaded.intercept_se_, reference.intercept_se_, rtol=1e-3)
    for score_type in store.HELDOUT_NAMES:
        expected = reference.score(X[held], y[held], score_type, aggregate_sample_scores=lambda a: jnp.mean(a, 0))
        np.testing.assert_allclose(report.heldout[score_type], expected, rtol=1e-3, atol=1e-5)
        np.testing.assert_allclose(loaded.heldout_scores_[score_type], expected, rtol=1e-3, atol=1e-5)
    assert "held-out score, median over neurons" in str(report)
    assert main(["inspect", path, "--name", "heldout", "--no-pseudo-r2"]) == 0
    assert "held-out pseudo-r2-McFadden per neuron" in capsys.readouterr().out
