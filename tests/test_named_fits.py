"""Several named fits in one store: each in results/<name>/, created, replaced and read on its own."""

from __future__ import annotations

import numpy as np
import pytest
import ray

import distglm
from distglm import store
from distglm.cli import main
from distglm.errors import InputError, StoreError
from distglm.glm import PopulationGLM
from distglm.plan import Block

SPEC = {"stepsize": ((), "float64", False)}


def _fingerprint(tag):
    return {"model": distglm.glm.model_to_config(PopulationGLM()), "n_samples": 50, "dtype": "<f8",
            "block_size": 4, "tag": tag}


def _results(path, name, value):
    """Results of 8 neurons in 2 blocks, both written and marked done; every value ``value``."""
    store.create_results(path, n_features=3, n_neurons=8, neuron_chunk=4, n_blocks=2, dtype="float64",
                         state_spec=SPEC, fingerprint=_fingerprint(value), name=name)
    for block in (Block(0, 0, 4), Block(1, 4, 8)):
        arrays = {key: np.full(4, value) for key in store.RESULT_NAMES}
        arrays.update(coef=np.full((3, 4), value), status=np.zeros(4, np.int8), converged=np.ones(4, bool),
                      n_iter=np.ones(4, np.int32))
        store.write_block(path, block, arrays, {"stepsize": np.array(value)}, name=name)


@pytest.fixture
def three_fits(tmp_path):
    rng = np.random.default_rng(0)
    path = store.write_inputs(str(tmp_path / "s.zarr"), rng.normal(size=(50, 3)), rng.poisson(1.0, size=(50, 8)),
                              neuron_chunk=4)
    for name, value in ((None, 1.0), ("ridge", 2.0), ("lasso", 3.0)):
        _results(path, name, value)
    return path


def test_each_fit_is_read_by_its_name(three_fits):
    assert store.fit_names(three_fits) == [None, "lasso", "ridge"]
    for name, value in ((None, 1.0), ("ridge", 2.0), ("lasso", 3.0)):
        assert store.done_blocks(three_fits, name) == {0, 1}
        assert np.all(store.read_results(three_fits, name=name)["coef"] == value)
        assert store.read_state(three_fits, name)["stepsize"].tolist() == [value, value]
        assert store.read_fingerprint(three_fits, name)["tag"] == value


@pytest.mark.parametrize("replaced", [None, "ridge"])
def test_replacing_one_fit_leaves_the_others_done(three_fits, replaced):
    store.create_results(three_fits, n_features=3, n_neurons=8, neuron_chunk=4, n_blocks=2, dtype="float64",
                         state_spec=SPEC, fingerprint=_fingerprint(9.0), overwrite=True, name=replaced)
    assert store.done_blocks(three_fits, replaced) == set()
    for name, value in ((None, 1.0), ("ridge", 2.0), ("lasso", 3.0)):
        if name != replaced:
            assert store.done_blocks(three_fits, name) == {0, 1}
            assert np.all(store.read_results(three_fits, name=name)["coef"] == value)


def test_an_interrupted_replacement_reads_as_no_results_of_that_fit_only(three_fits):
    # discard_results removes the fingerprint first; interrupted right after, the fit is incomplete
    root = store._zarr.open_group(three_fits, "r+")
    root["results/ridge"].attrs.pop("fingerprint")
    assert store.fit_names(three_fits) == [None, "lasso"]
    with pytest.raises(StoreError, match="results of the fit 'ridge' that were not completely created"):
        store.done_blocks(three_fits, "ridge")
    assert store.done_blocks(three_fits, "lasso") == {0, 1} and store.done_blocks(three_fits) == {0, 1}


def test_rewriting_the_inputs_discards_every_fit(three_fits):
    rng = np.random.default_rng(1)
    store.write_inputs(three_fits, rng.normal(size=(50, 3)), rng.poisson(1.0, size=(50, 8)), neuron_chunk=4,
                       overwrite=True)
    assert store.fit_names(three_fits) == []
    assert all(store.read_fingerprint(three_fits, name) is None for name in (None, "ridge", "lasso"))


def test_names_are_checked():
    for bad in ("", "a/b", "../x", "coef", "done", "solver_state", ".hidden"):
        with pytest.raises(InputError, match="a fit's name must be"):
            store.results_group(bad)
    with pytest.raises(TypeError, match="a fit's name must be a str"):
        store.results_group(3)


@pytest.mark.ray
def test_named_fits_on_ray_load_by_name_and_replace_only_themselves(tmp_path, capsys):
    rng = np.random.default_rng(2)
    X = rng.normal(size=(400, 3))
    y = rng.poisson(np.exp(X @ rng.normal(scale=0.3, size=(3, 8))))
    path = store.write_inputs(str(tmp_path / "s.zarr"), X, y, neuron_chunk=4)
    models = {None: PopulationGLM(solver_kwargs={"tol": 1e-7}),
              "ridge": PopulationGLM(regularizer="Ridge", regularizer_strength=0.5, solver_kwargs={"tol": 1e-7})}
    ray.init(num_cpus=2, include_dashboard=False)
    try:
        for name, model in models.items():
            distglm.fit(path, model, name=name, num_actors=1, progress=False)
        stronger = PopulationGLM(regularizer="Ridge", regularizer_strength=5.0, solver_kwargs={"tol": 1e-7})
        distglm.fit(path, stronger, name="ridge", resume=False, num_actors=1, progress=False)
        with pytest.raises(StoreError, match="different fit"):
            distglm.fit(path, models["ridge"], name="ridge", num_actors=1, progress=False)
    finally:
        ray.shutdown()
    expected = {None: models[None].fit(X, y), "ridge": stronger.fit(X, y)}
    for name, model in expected.items():
        loaded = distglm.load_model(path, name=name)
        np.testing.assert_allclose(loaded.coef_, model.coef_, rtol=1e-4, atol=1e-4)
        assert loaded.regularizer_strength == model.regularizer_strength
    with pytest.raises(StoreError, match="no fit results named 'lasso'"):
        distglm.load_model(path, name="lasso")
    assert main(["inspect", path, "--name", "ridge", "--no-pseudo-r2"]) == 0
    out = capsys.readouterr().out
    assert "fits: (unnamed), ridge" in out and "fit: ridge" in out and "strength 5.0" in out
