"""pynapple in and out: a NeMoS tutorial's workflow runs unchanged on distglm's PopulationGLM.

Spike times -> pynapple counts -> NeMoS basis features -> PopulationGLM -> a TsdFrame of
predicted rates on the counts' time axis, with the units' ids as columns, equal to NeMoS's.
"""

import jax
import nemos as nmo
import numpy as np
import pynapple as nap
import pytest

import distglm
from distglm.glm import PopulationGLM

UNIT_IDS = [3, 8, 15, 21]


@pytest.fixture(scope="module")
def session():
    """A stimulus and four units driven by it (one never spikes), binned at 10 ms over 8 s."""
    rng = np.random.default_rng(11)
    t = np.arange(0, 8, 0.001)
    stimulus = np.sin(2 * np.pi * 0.5 * t) + 0.3 * rng.normal(size=t.size)
    rates = {unit: np.exp(-0.5 + gain * np.roll(stimulus, lag)) * 20
             for unit, gain, lag in zip(UNIT_IDS[:3], (0.8, -0.5, 0.3), (20, 50, 100))}
    units = {unit: nap.Ts(t=t[rng.uniform(size=t.size) < rate * 0.001]) for unit, rate in rates.items()}
    units[UNIT_IDS[3]] = nap.Ts(t=np.array([]))
    spikes = nap.TsGroup(units, time_support=nap.IntervalSet(0, 8))
    spikes.set_info(area=["V1", "V1", "LM", "LM"])
    return spikes, nap.Tsd(t=t, d=stimulus, time_support=nap.IntervalSet(0, 8))


def tutorial(glm_class, spikes, stimulus):
    """The steps of NeMoS's tutorials, written once for either library."""
    counts = spikes.count(0.01)
    feature = stimulus.bin_average(0.01)
    basis = nmo.basis.RaisedCosineLogConv(n_basis_funcs=5, window_size=20)
    X = basis.compute_features(feature)
    model = glm_class(regularizer="Ridge", regularizer_strength=0.01, solver_name="LBFGS")
    model.fit(X, counts)
    return model, X, counts


@pytest.mark.filterwarnings("ignore:.*failed to fit:RuntimeWarning")
@pytest.mark.filterwarnings("ignore:.*spikes:UserWarning")
def test_a_nemos_tutorial_runs_unchanged(session):
    spikes, stimulus = session
    with jax.enable_x64(True):
        model, X, counts = tutorial(PopulationGLM, spikes, stimulus)
        predicted = model.predict(X)
        assert isinstance(predicted, nap.TsdFrame)
        np.testing.assert_array_equal(predicted.times(), counts.times())
        assert list(predicted.columns) == UNIT_IDS
        # the unit that never spikes fails, named by its unit id; the others are NeMoS's fit
        assert list(model.failure_reasons_) == [21]
        reference = nmo.glm.PopulationGLM(regularizer="Ridge", regularizer_strength=0.01, solver_name="LBFGS")
        reference.fit(X, counts[:, :3])
        expected = np.asarray(reference.predict(X))
        ok = ~np.isnan(expected).any(axis=1)
        np.testing.assert_allclose(predicted.values[ok][:, :3], expected[ok], rtol=2e-3)
        rates, samples = model.simulate(jax.random.key(0), X)[::-1]
        assert isinstance(samples, nap.TsdFrame) and list(samples.columns) == UNIT_IDS
        # score takes the TsdFrames as NeMoS does, and agrees with NeMoS on the units it fits
        three = PopulationGLM(regularizer="Ridge", regularizer_strength=0.01).fit(X, counts[:, :3])
        np.testing.assert_allclose(three.score(X, counts[:, :3]), reference.score(X, counts[:, :3]), rtol=1e-4)


def test_predict_of_array_inputs_stays_an_array(session):
    spikes, stimulus = session
    counts = spikes.count(0.1)
    X = stimulus.bin_average(0.1).values[:, None]
    model = PopulationGLM().fit(X, counts.values[:, :3])
    assert isinstance(model.predict(X), np.ndarray)


@pytest.mark.filterwarnings("ignore:.*failed to fit:RuntimeWarning")
def test_store_keeps_pynapple_time_and_unit_ids(session, tmp_path):
    spikes, stimulus = session
    counts = spikes.count(0.05)
    feature = stimulus.bin_average(0.05)
    path = distglm.write_inputs(tmp_path / "s.zarr", feature, counts)
    coordinates = distglm.store.read_coordinates(path)
    np.testing.assert_array_equal(coordinates["neuron"], UNIT_IDS)
    np.testing.assert_allclose(coordinates["time"], counts.times())
    import xarray as xr

    ds = xr.open_zarr(path, group="inputs", consolidated=False)
    assert list(ds["neuron_area"].values) == ["V1", "V1", "LM", "LM"]
    np.testing.assert_array_equal(ds["y"].sel(neuron=15).values, counts[:, 2].values)
