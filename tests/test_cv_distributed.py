"""PopulationGLMCV fitted to a store on Ray actors against the same model fitted in memory."""

from __future__ import annotations

import numpy as np
import pytest
import ray
import xarray as xr
import zarr
from sklearn.model_selection import KFold, TimeSeriesSplit

import distglm
from distglm import store
from distglm.cli import main
from distglm.core.fit import STATUS_NONFINITE_INIT
from distglm.errors import InputError, InputTypeError, StoreError, UnsupportedOptionError
from distglm.cv import SplitRecord
from distglm.glm import PopulationGLM, PopulationGLMCV, model_from_config, model_to_config
from distglm.plan import Block

pytestmark = pytest.mark.usefixtures("x64")

TIGHT = {"tol": 1e-10, "maxiter": 5000}


class Interrupted(Exception):
    pass


@pytest.fixture
def population(tmp_path):
    """10 Poisson neurons (2 per stored chunk), two NaN rows, a feature mask, a neuron that fails on a fold."""
    rng = np.random.default_rng(11)
    n_samples, n_features, n_neurons = 300, 3, 10
    X = 0.5 * rng.normal(size=(n_samples, n_features))
    mask = np.ones((n_features, n_neurons))
    mask[0, 1] = mask[2, 6] = 0
    weights = rng.normal(size=(n_features, n_neurons)) * np.geomspace(1.0, 0.05, n_neurons) * mask
    y = rng.poisson(np.exp(X @ weights)).astype(float)
    # spikes only in the first fold's held-out samples: its training samples have none
    y[:, 9] = 0.0
    y[[10, 40, 70], 9] = 1.0
    X[[4, 150]] = np.nan
    path = store.write_inputs(str(tmp_path / "s.zarr"), X, y, feature_mask=mask, neuron_chunk=2)
    return path, X, y, mask


def _assert_same_selection(loaded, memory):
    np.testing.assert_allclose(loaded.regularizer_strengths_, memory.regularizer_strengths_, rtol=1e-12)
    np.testing.assert_array_equal(loaded.best_index_, memory.best_index_)
    np.testing.assert_array_equal(loaded.regularizer_strength_, memory.regularizer_strength_)
    np.testing.assert_allclose(loaded.cv_scores_, memory.cv_scores_, rtol=1e-5)
    np.testing.assert_allclose(loaded.population_cv_scores_, memory.population_cv_scores_, rtol=1e-5)
    # the same candidates fail; whether one stops at maxiter may differ, as a block's solve stops
    # on its own neurons and the in-memory one on all of them
    np.testing.assert_array_equal(loaded.cv_status_ >= STATUS_NONFINITE_INIT, memory.cv_status_ >= STATUS_NONFINITE_INIT)
    np.testing.assert_allclose(loaded.coef_, memory.coef_, rtol=1e-6, atol=1e-8)
    np.testing.assert_allclose(loaded.intercept_, memory.intercept_, rtol=1e-6, atol=1e-8)


def test_a_cv_model_is_checked_before_the_store_is_touched(population):
    path = population[0]
    for model, error, match in (
        (PopulationGLMCV(regularizer="GroupLasso"), UnsupportedOptionError, "per_neuron=False"),
        (PopulationGLMCV(cv=KFold(400)), InputError, "could not split the store's 298 training samples"),
        (PopulationGLMCV(regularizer="UnRegularized"), InputError, "UnRegularized"),
        (PopulationGLMCV(cv=np.zeros(299, int)), InputError, "one label per sample"),
    ):
        with pytest.raises(error, match=match):
            distglm.fit(path, model, progress=False)
    with pytest.raises(UnsupportedOptionError, match="cannot stream"):
        distglm.fit(path, PopulationGLMCV(), stream=True, progress=False)
    with pytest.raises(UnsupportedOptionError, match="nor build history features"):
        distglm.fit(path, PopulationGLMCV(), history=distglm.HistorySpec.raised_cosine_log(3, 5), progress=False)
    # a fold left with no sample once NaN rows are dropped
    labels = np.zeros(300, int)
    labels[[4, 150]] = [1, 1]
    with pytest.raises(InputError, match="no sample left without NaN"):
        distglm.fit(path, PopulationGLMCV(cv=labels), progress=False)
    assert store.fit_names(path) == []


def test_configuration_round_trip_keeps_the_cross_validation_settings():
    labels = np.repeat([0, 1, -1], 4)
    model = PopulationGLMCV(regularizer="Lasso", regularizer_strengths=[0.1, 1.0], cv=labels,
                            scoring="pseudo-r2-Cohen", selection="1se")
    back = model_from_config(model_to_config(model))
    assert isinstance(back, PopulationGLMCV)
    np.testing.assert_array_equal(back.cv, labels)
    np.testing.assert_array_equal(back.regularizer_strengths, [0.1, 1.0])
    assert (back.scoring, back.per_neuron, back.selection, back.regularizer.name) == \
        ("pseudo-r2-Cohen", True, "1se", "Lasso")


def test_fold_labels_restrict_contiguous_folds_of_the_stored_samples():
    train = np.ones(10, bool)
    train[[1, 7]] = False
    labels = distglm.cv.fold_labels(3, train)
    expected = [t for _, t in distglm.cv._kept_folds(distglm.cv.make_folds(3, 10), train)]
    assert [np.flatnonzero(labels == k).tolist() for k in range(3)] == [t.tolist() for t in expected]
    with pytest.raises(InputTypeError, match="1-D boolean array"):
        distglm.cv.fold_labels(3, train.astype(int))


def test_path_markers_count_only_the_paths_written_whole(tmp_path):
    path = store.write_inputs(str(tmp_path / "s.zarr"), np.ones((6, 2)), np.ones((6, 4)), neuron_chunk=2)
    cv = {"n_strengths": 3, "n_folds": 2, "null": True, "pooled": True}
    store.create_results(path, n_features=2, n_neurons=4, neuron_chunk=2, n_blocks=2, dtype="float64",
                         state_spec={}, fingerprint={"fit": 1}, cv=cv)
    writer = store.ResultsWriter(path)
    block_path = {"cv_model_terms": np.ones((3, 2, 2)), "cv_null_terms": np.ones((3, 2, 2)),
                  "cv_status": np.zeros((3, 2, 2), np.int8)}
    with pytest.raises(InputError, match=r"shape \(3, 2, 2\)"):
        writer.write_path(Block(0, 0, 2), {**block_path, "cv_model_terms": np.ones((2, 2, 2))})
    with pytest.raises(InputError, match="missing \\['cv_null_terms'\\]"):
        writer.write_path(Block(0, 0, 2), {k: v for k, v in block_path.items() if k != "cv_null_terms"})
    writer.write_path(Block(0, 0, 2), block_path)
    writer.write_path(Block(1, 2, 4), block_path)
    assert store.cv_path_done_blocks(path) == {0, 1} and store.done_blocks(path) == set()
    # a block's path altered after its marker no longer counts
    zarr.open_group(path, mode="r+")["results/cv_model_terms"][0, 0, 3] = 5.0
    assert store.cv_path_done_blocks(path) == {0}
    # results of a per-neuron selection have no path markers
    store.create_results(path, n_features=2, n_neurons=4, neuron_chunk=2, n_blocks=2, dtype="float64",
                         state_spec={}, fingerprint={"fit": 2}, cv={**cv, "pooled": False}, overwrite=True)
    with pytest.raises(StoreError, match="without a pooled cross-validation"):
        store.cv_path_done_blocks(path)
    with pytest.raises(StoreError, match="no pooled"):
        store.ResultsWriter(path).write_path(Block(0, 0, 2), block_path)


@pytest.mark.ray
def test_distributed_selection_equals_the_in_memory_one_and_resumes(population, capsys):
    path, X, y, mask = population
    # per neuron: the default grid (a population maximum over every block), pseudo-R2 scores
    per_neuron = PopulationGLMCV(regularizer="Ridge", regularizer_strengths=5, cv=3, scoring="pseudo-r2-McFadden",
                                 solver_kwargs=TIGHT)
    # one strength for all, pooled from every block's scores; ElasticNet with its ratio fixed
    shared = PopulationGLMCV(regularizer="ElasticNet", regularizer_strength=(1.0, 0.3), per_neuron=False, cv=3,
                             regularizer_strengths=[0.3, 0.1, 0.03, 0.01, 0.003], solver_kwargs=TIGHT)
    memory = {name: PopulationGLMCV(**{**model.get_params(), "feature_mask": mask}).fit(X, y)
              for name, model in ((None, per_neuron), ("shared", shared))}
    assert np.ptp(memory[None].best_index_[:9]) > 0, "the test needs neurons that select different strengths"
    assert 0 < memory["shared"].best_index_[0] < 4, "the test needs a shared strength inside the grid"
    def interrupt(summary):
        # called for refitted blocks only, once every block's path is written
        raise Interrupted

    ray.init(num_cpus=2, include_dashboard=False)
    try:
        report = distglm.fit(path, per_neuron, num_actors=2, block_size=4, progress=False)
        assert report.n_blocks == 3 and report.n_fitted == 10
        with pytest.raises(Interrupted):
            distglm.fit(path, shared, name="shared", num_actors=1, block_size=4, progress=False, on_block=interrupt)
        assert store.cv_path_done_blocks(path, name="shared") == {0, 1, 2}
        partial = store.done_blocks(path, name="shared")
        assert 1 <= len(partial) < 3
        resumed = distglm.fit(path, shared, name="shared", num_actors=2, block_size=4, progress=False)
        assert resumed.n_blocks_skipped == len(partial) and resumed.n_fitted == 10
    finally:
        ray.shutdown()
    for name in (None, "shared"):
        loaded = distglm.load_model(path, name=name)
        assert isinstance(loaded, PopulationGLMCV) and loaded.per_neuron == (name is None)
        _assert_same_selection(loaded, memory[name])
    assert store.read_results(path)["cv_null_terms"].shape == (5, 3, 10)
    assert "cv_null_terms" not in store.read_results(path, name="shared")
    ds = xr.open_zarr(path, group="results", consolidated=False)
    assert ds["cv_model_terms"].dims == ("strength", "fold", "neuron")
    np.testing.assert_array_equal(ds["cv_strength"].values, memory[None].regularizer_strength_)
    assert main(["inspect", path, "--no-pseudo-r2"]) == 0
    assert "cross-validated strength per neuron" in capsys.readouterr().out


def test_a_splitter_gives_the_actors_labels_or_per_fold_roles():
    train = np.ones(12, bool)
    train[[0, 5]] = False
    X = np.arange(10.0)[:, None]
    shuffled = KFold(3, shuffle=True, random_state=0)
    labels = distglm.cv.store_folds(shuffled, train, X)
    # a partition of the training samples: one label each, the folds the splitter makes on them
    assert labels.shape == (10,)
    for (train_k, test_k), (train_s, test_s) in zip(distglm.cv.stored_folds(labels, 10), shuffled.split(X)):
        assert (train_k.tolist(), test_k.tolist()) == (sorted(train_s), sorted(test_s))
    # folds that train on the past alone: each sample's role in each fold
    roles = distglm.cv.store_folds(TimeSeriesSplit(3), train, X)
    assert roles.shape == (3, 10) and roles.dtype == np.int8
    for (train_k, test_k), (train_s, test_s) in zip(distglm.cv.stored_folds(roles, 10), TimeSeriesSplit(3).split(X)):
        assert (train_k.tolist(), test_k.tolist()) == (train_s.tolist(), test_s.tolist())
    # numbers of folds and labels keep their folds on the stored samples
    np.testing.assert_array_equal(distglm.cv.store_folds(3, train), distglm.cv.fold_labels(3, train))
    with pytest.raises(InputError, match="must hold the 10 training samples"):
        distglm.cv.store_folds(shuffled, train, X[:5])
    with pytest.raises(UnsupportedOptionError, match="recorded by description only"):
        distglm.cv.store_folds(SplitRecord("KFold(3)", 3), train)
    record = model_from_config(model_to_config(PopulationGLMCV(cv=SplitRecord("TimeSeriesSplit(3)", 3)))).cv
    assert record == SplitRecord("TimeSeriesSplit(3)", 3) and repr(record) == "TimeSeriesSplit(3)"


@pytest.mark.ray
def test_a_splitter_cross_validates_the_samples_not_held_out_as_in_memory(population, tmp_path, capsys):
    _, X, y, mask = population
    # the last 60 samples are held out in the inputs: TimeSeriesSplit splits the 238 others
    # (NaN rows dropped), whose folds train on the past alone
    path = store.write_inputs(str(tmp_path / "held.zarr"), X, y, feature_mask=mask, neuron_chunk=2,
                              test=slice(240, None))
    model = PopulationGLMCV(regularizer="Ridge", regularizer_strengths=[1.0, 0.1, 0.01], cv=TimeSeriesSplit(3),
                            solver_kwargs=TIGHT)
    memory = PopulationGLMCV(**{**model.get_params(), "feature_mask": mask}).fit(X[:240], y[:240])
    assert np.ptp(memory.best_index_[:9]) > 0, "the test needs neurons that select different strengths"
    ray.init(num_cpus=2, include_dashboard=False)
    try:
        report = distglm.fit(path, model, num_actors=1, progress=False)
    finally:
        ray.shutdown()
    assert report.n_fitted == 10
    # the blocks were planned for a cross-validating actor
    assert report.memory_estimate.cv > 0
    # other folds are another fit
    with pytest.raises(StoreError, match="different fit"):
        distglm.fit(path, model.set_params(cv=TimeSeriesSplit(4)), progress=False)
    loaded = distglm.load_model(path)
    _assert_same_selection(loaded, memory)
    assert loaded.cv == SplitRecord(repr(TimeSeriesSplit(3)), 3)
    ok = ~np.isnan(X[240:]).any(axis=1)
    for score_type in store.HELDOUT_NAMES:
        expected = PopulationGLM.score(memory, X[240:][ok], y[240:][ok], score_type,
                                       aggregate_sample_scores=lambda a: np.mean(a, 0))
        np.testing.assert_allclose(report.heldout[score_type], expected, rtol=1e-5, atol=1e-8)
        np.testing.assert_allclose(loaded.heldout_scores_[score_type], expected, rtol=1e-5, atol=1e-8)
    assert main(["inspect", path, "--no-pseudo-r2"]) == 0
    out = capsys.readouterr().out
    assert "held-out pseudo-r2-McFadden per neuron" in out and "held-out samples: 60 of 300, recorded" in out
