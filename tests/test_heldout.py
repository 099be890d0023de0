"""Held-out evaluation of a distributed fit (samples kept out of training, each neuron scored on
them) and standard errors computed by the actors."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pynapple as nap
import pytest
import ray

import distglm
from distglm import store
from distglm.cli import main
from distglm.errors import InputError, InputTypeError, StoreError, UnsupportedOptionError
from distglm.glm import PopulationGLM

MODEL = dict(regularizer="Ridge", regularizer_strength=0.1, solver_kwargs={"tol": 1e-7})
# 600 bins of 1/32 s (exact in binary); every bound falls on a bin: 0.5 s is bin 16, 3.0 s bin 96
TIMES = np.arange(600) / 32
INTERVALS = nap.IntervalSet(start=[0.5, 2.0, 14.0], end=[1.0, 3.0, 14.5])


@pytest.fixture
def inputs(tmp_path):
    rng = np.random.default_rng(5)
    X = rng.normal(size=(600, 3))
    X[[7, 300]] = np.nan
    y = rng.poisson(np.exp(np.nan_to_num(X) @ rng.normal(scale=0.3, size=(3, 8)))).astype(float)
    return store.write_inputs(str(tmp_path / "s.zarr"), X, y, neuron_chunk=4, time=TIMES), X, y


def _held(X):
    """The samples INTERVALS selects, as pynapple restricts a time series to them."""
    return np.isin(TIMES, nap.TsdFrame(t=TIMES, d=X).restrict(INTERVALS).times())


def test_test_samples_are_checked_before_anything_is_written(inputs, tmp_path):
    path, X, y = inputs
    for bad, error in ((np.ones(10, bool), InputTypeError), (np.arange(600), InputTypeError),
                       (slice(0, 0), InputError), (slice(None), InputError)):
        with pytest.raises(error, match="test_samples"):
            distglm.fit(path, PopulationGLM(**MODEL), test_samples=bad)
    with pytest.raises(InputTypeError, match="standard_errors must be"):
        distglm.fit(path, PopulationGLM(**MODEL), standard_errors="yes")

    with pytest.raises(UnsupportedOptionError, match="streaming actors"):
        distglm.fit(path, PopulationGLM(**MODEL), test_samples=INTERVALS,
                    history=distglm.HistorySpec.raised_cosine_log(2, 4))
    assert store.fit_names(path) == []
    # without time=, the store's time coordinate is the sample index: no time for intervals to select
    untimed = store.write_inputs(str(tmp_path / "untimed.zarr"), X, y)
    with pytest.raises(InputError, match="records no time"):
        distglm.fit(untimed, PopulationGLM(**MODEL), test_samples=INTERVALS)
    assert store.fit_names(untimed) == []


def test_intervals_select_the_samples_pynapple_restricts_to(tmp_path, inputs):
    _, X, y = inputs
    X_series = nap.TsdFrame(t=TIMES, d=X)
    expected = _held(X)
    np.testing.assert_array_equal(expected, X_series.in_interval(INTERVALS).values.astype(bool))
    # bounds are included: bins 16-32, 64-96 and 448-464
    assert expected.sum() == 67 and expected[[16, 32, 64, 96, 448, 464]].all() and not expected[[15, 33, 97, 465]].any()
    for kwargs in ({"X": X_series, "y": y}, {"X": X, "y": nap.TsdFrame(t=TIMES, d=y)}, {"X": X, "y": y, "time": TIMES}):
        path = store.write_inputs(str(tmp_path / f"{len(kwargs)}-{type(kwargs['y']).__name__}.zarr"),
                                  test=INTERVALS, **kwargs)
        np.testing.assert_array_equal(store.read_test(path), expected)
        assert store.open_inputs(path).has_test
    mask_path = store.write_inputs(str(tmp_path / "mask.zarr"), X, y, test=expected)
    np.testing.assert_array_equal(store.read_test(mask_path), expected)
    sliced = store.write_inputs(str(tmp_path / "slice.zarr"), X, y, test=slice(500, None))
    assert store.read_test(sliced).sum() == 100 and store.read_test(sliced)[500:].all()
    assert store.read_test(inputs[0]) is None and not store.open_inputs(inputs[0]).has_test
    # a store written by hand with Zarr has no time coordinate at all
    import zarr

    root = zarr.open_group(str(tmp_path / "hand.zarr"), mode="w")
    root.create_array("inputs/X", data=X)
    root.create_array("inputs/y", data=y)
    with pytest.raises(InputError, match="records no time"):
        store.read_time(str(tmp_path / "hand.zarr"))


def test_recorded_test_samples_are_checked_and_conflicts_refused(tmp_path, inputs):
    _, X, y = inputs
    fresh = str(tmp_path / "refused.zarr")
    for bad, error, match in ((INTERVALS, InputError, "needs the samples' times"),
                              (np.ones(600, bool), InputError, "keep one for training"),
                              (slice(0, 0), InputError, "hold out at least one"),
                              (np.ones(599, bool), InputTypeError, r"shape \(600,\)"),
                              (np.arange(600), InputTypeError, "test must be")):
        with pytest.raises(error, match=match):
            store.write_inputs(fresh, X, y, test=bad)
    assert not (tmp_path / "refused.zarr").exists()
    path = store.write_inputs(str(tmp_path / "recorded.zarr"), X, y, time=TIMES, test=INTERVALS)
    with pytest.raises(InputError, match="not the 67 the store's inputs record"):
        distglm.fit(path, PopulationGLM(**MODEL), test_samples=slice(0, 10), progress=False)
    assert store.fit_names(path) == [] and store.read_fingerprint(path) is None


@pytest.mark.ray
def test_actors_score_held_out_samples_and_compute_standard_errors(inputs, capsys):
    path, X, y = inputs
    test = _held(X)
    ray.init(num_cpus=2, include_dashboard=False)
    try:
        # intervals of time select the held-out samples from the store's time coordinate
        report = distglm.fit(path, PopulationGLM(**MODEL), test_samples=INTERVALS, name="heldout", num_actors=1,
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
