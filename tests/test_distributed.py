"""The distributed fit end to end: real Ray, real Zarr stores on disk, real processes killed.

Invariances: one block == many blocks == the in-memory ``PopulationGLM.fit``, and padding the
last block changes nothing. Faults: an actor killed mid-fit is replaced and its block redone;
a driver killed mid-fit is resumed; both end with the same bytes as an uninterrupted run.
Bad inputs are refused before Ray is even started, leaving the store as it was.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time

import jax
import jax.numpy as jnp
import numpy as np
import psutil
import pytest
import ray
import ray._private.state as ray_state
import zarr

import distglm
from distglm import store
from distglm.core.fit import STATUS_NONFINITE_INIT, STATUS_OK, STATUS_REASONS
from distglm.errors import InputError, PlanError, StoreError
from distglm.glm import PopulationGLM
from distglm.plan import plan_blocks
from test_store import snapshot

TIGHT = {"tol": 1e-7}
# float32 fits converged to TIGHT agree to about 1e-6; blocks change the order of the solver's
# joint steps, not the optimum
RTOL = ATOL = 1e-4

CONFIGS = {
    "Poisson": dict(solver_kwargs=TIGHT),
    "Ridge": dict(regularizer="Ridge", regularizer_strength=0.05, solver_kwargs=TIGHT),
    # proximal gradient in float32 stalls just short of 1e-7 on a few neurons
    "Lasso": dict(regularizer="Lasso", regularizer_strength=0.01, solver_kwargs={"tol": 1e-6}),
}

# A fit slow enough to be interrupted: 12 blocks of one chunk each, a fraction of a second each.
SLOW = dict(n_samples=30_000, n_features=30, n_neurons=192, neuron_chunk=16)
SLOW_BLOCK = 16
SLOW_MODEL = dict(regularizer="Ridge", regularizer_strength=0.01, solver_kwargs=TIGHT)
# Each fit in a subprocess starts its own local Ray, as a user's script does.
DRIVER = """
import json, sys
import distglm
path, options = sys.argv[1], json.loads(sys.argv[2])
report = distglm.fit(path, distglm.PopulationGLM(**options.pop("model")), progress=False, **options)
print("REPORT " + json.dumps({key: getattr(report, key) for key in
      ("n_fitted", "n_blocks", "n_blocks_skipped", "n_blocks_fitted", "n_retries", "failed_blocks")}))
"""
SUBPROCESS_TIMEOUT = 240


def simulate(n_samples, n_features, n_neurons, seed=0):
    """Poisson counts of shape (n_samples, n_neurons), int32, from a masked linear model."""
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n_samples, n_features))
    mask = (rng.random((n_features, n_neurons)) < 0.8).astype(np.uint8)
    weights = 0.25 * rng.normal(size=(n_features, n_neurons)) * mask
    y = rng.poisson(np.exp(X @ weights - 0.3)).astype(np.int32)
    return X, y, mask


def stored_fit(path):
    """Everything a fit writes: per-neuron results, solver state and done markers."""
    arrays = {f"results/{name}": value for name, value in store.read_results(path).items()}
    arrays.update({f"state/{name}": value for name, value in store.read_state(path).items()})
    arrays["done"] = np.asarray(zarr.open_group(path, mode="r")["results/done"][...])
    return arrays


def assert_same_bytes(got, want):
    assert got.keys() == want.keys()
    for name in want:
        assert got[name].dtype == want[name].dtype, name
        assert got[name].shape == want[name].shape, name
        assert got[name].tobytes() == want[name].tobytes(), name
        assert np.array_equal(got[name], want[name], equal_nan=got[name].dtype.kind == "f"), name


def copy_inputs(source, path):
    """A fresh store holding only the inputs of ``source``."""
    os.makedirs(path)
    shutil.copy(os.path.join(source, "zarr.json"), path)
    shutil.copytree(os.path.join(source, "inputs"), os.path.join(path, "inputs"))
    return str(path)


def block_fitters():
    """This process's Ray actors that fit blocks (their process title names the class)."""
    found = []
    for proc in psutil.Process().children(recursive=True):
        try:
            title = " ".join(proc.cmdline())
        except (psutil.NoSuchProcess, psutil.ZombieProcess):
            continue
        if title.startswith("ray::BlockFitter"):
            found.append((proc, title))
    return found


def poll_done(path):
    """The blocks marked done, or an empty set while the results are being created or written."""
    try:
        return store.done_blocks(path)
    except Exception:  # noqa: BLE001 - a store mid-creation or a chunk mid-write reads as nothing yet
        return set()


def driver_command(path, **options):
    options["model"] = SLOW_MODEL
    return [sys.executable, "-c", DRIVER, str(path), json.dumps(options)]


def driver_env():
    env = dict(os.environ)
    env.pop("RAY_ADDRESS", None)  # a fresh local Ray, never some cluster named in the environment
    return env


def run_driver(path, log, **options):
    with open(log, "w") as out:
        done = subprocess.run(driver_command(path, **options), stdout=out, stderr=subprocess.STDOUT,
                              env=driver_env(), timeout=SUBPROCESS_TIMEOUT)
    text = open(log).read()
    assert done.returncode == 0, text[-3000:]
    line = [line for line in text.splitlines() if line.startswith("REPORT ")][-1]
    return json.loads(line[len("REPORT "):])


def test_actor_buffers_reach_jax_without_a_copy(tmp_path):
    # an actor holds the design and each block's y once: JAX takes the host buffers as they are
    from distglm.actor import FitSpec, SampleReader

    X, y, _ = simulate(300, 3, 32)
    y = y.astype(np.float32)
    y[[4, 150], 7] = np.nan
    path = distglm.write_inputs(tmp_path / "fit.zarr", X, y, neuron_chunk=16)
    keep = ~np.isnan(y).any(axis=1)
    spec = FitSpec(path=str(path), model={}, pad_to=32, x64=False, dropped_rows=np.flatnonzero(~keep),
                   n_samples=int(keep.sum()))
    data = SampleReader(store.InputsReader(path), spec, np.float32)
    design = data.design(32)
    assert np.asarray(design).ctypes.data == design.unsafe_buffer_pointer()
    np.testing.assert_array_equal(np.asarray(design)[:keep.sum()], X[keep].astype(np.float32))
    block = data.responses(16, 32, design.shape[0], 32)
    on_device = jax.device_put(block)
    assert block.ctypes.data == on_device.unsafe_buffer_pointer()
    np.testing.assert_array_equal(np.asarray(on_device)[:keep.sum(), :16], y[keep, 16:32])
    assert not np.asarray(on_device)[keep.sum():].any() and not np.asarray(on_device)[:, 16:].any()


@pytest.mark.parametrize("top, stored, held", [
    (255, np.int32, "uint8"), (256, np.int64, "uint16"), (65535, np.uint32, "uint16"), (65536, np.int32, None),
    (3, np.float32, None), (-1, np.int32, None),
])
def test_actors_hold_counts_in_the_narrowest_type_that_holds_them(tmp_path, top, stored, held):
    # the driver's scan of y finds the narrowest type; an actor's block of y is held in it
    from distglm.actor import FitSpec, SampleReader
    from distglm.core.observations import GaussianObservations, PoissonObservations
    from distglm.scheduler import _scan_inputs

    X, y, _ = simulate(120, 3, 20)
    y = y.astype(stored)
    y[7, 3] = top
    path = distglm.write_inputs(tmp_path / "fit.zarr", X, y, neuron_chunk=8)
    observation = PoissonObservations() if top >= 0 else GaussianObservations()
    *_, counts_dtype = _scan_inputs(str(path), store.InputsReader(path).info, observation, np.float32)
    assert counts_dtype == held
    spec = FitSpec(path=str(path), model={}, pad_to=16, x64=False, n_samples=120, counts_dtype=counts_dtype)
    data = SampleReader(store.InputsReader(path), spec, np.float32)
    block = data.responses(0, 16, 128, 16, counts=True)
    assert block.dtype == np.dtype(held or np.float32)
    np.testing.assert_array_equal(block[:120], y[:, :16])
    assert jax.device_put(block).unsafe_buffer_pointer() == block.ctypes.data
    # the other readers of y (cross-validation, the driver's grid) get floats
    assert data.responses(0, 16, 128, 16).dtype == np.float32


def test_actors_set_the_actor_environment_before_loading_their_libraries():
    # the thread limits are read when numpy, JAX and Zarr load: the actor sets them in its own
    # process before it imports any of them (and glibc's arena limit with mallopt), in a worker
    # Ray had already started, which takes a fraction of the second a dedicated one would
    from distglm.actor import ACTOR_ENV
    from distglm.connect import connect_ray
    from distglm.scheduler import _fitter_class

    driver_had = os.environ.get("MALLOC_ARENA_MAX")
    started = connect_ray()
    try:
        actor = _fitter_class().remote()
        settings = ray.get(actor.environment.remote(), timeout=120)
        pid = ray.get(actor.pid.remote(), timeout=120)
        title = psutil.Process(pid).cmdline()[0]
        # glibc reads the arena limit at process start: a Ray started by distglm passes it to its
        # workers from the start
        at_start = psutil.Process(pid).environ().get("MALLOC_ARENA_MAX")
        ray.kill(actor)
    finally:
        if started:
            ray.shutdown()
    assert started, "a Ray session of an earlier test was left running"
    assert settings["env"] == ACTOR_ENV
    assert settings["loaded_before"] == []
    assert title.startswith("ray::BlockFitter")
    assert at_start == (driver_had or ACTOR_ENV["MALLOC_ARENA_MAX"])
    # and the driver's own environment is as it was
    assert os.environ.get("MALLOC_ARENA_MAX") == driver_had


_FREED_HEAP = """
import json, psutil, sys
import numpy as np
from distglm.actor import release_free_memory
rss = lambda: psutil.Process().memory_info().rss
# 200 MB in buffers below glibc's mmap threshold, from the heap; the last stays in use, so
# the freed ones are not at the heap's top (where free() alone would give them back)
buffers = [np.ones(64 * 1024 // 8) for _ in range(3200)]
kept = buffers.pop()
del buffers
before = rss()
released = release_free_memory()
print(json.dumps({"released": released, "freed_mb": (before - rss()) / 1e6, "kept": float(kept.sum())}))
"""


def test_actors_give_freed_heap_memory_back_between_blocks():
    # what an actor runs after each block: the freed buffers of the block's reads, held in
    # malloc's heap, go back to the system (in a fresh process, whose heap only this test used)
    out = subprocess.run([sys.executable, "-c", _FREED_HEAP], capture_output=True, text=True, timeout=120,
                         check=True)
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["released"] is (sys.platform == "linux" and os.confstr("CS_GNU_LIBC_VERSION") is not None)
    if result["released"]:
        assert result["freed_mb"] > 150

# --------------------------------------------------------------------------------------------
# Bad inputs: refused before any actor starts, store untouched


@pytest.fixture
def no_ray():
    """Bad inputs are refused before the scheduler connects to Ray, so no actor can start."""
    assert not ray.is_initialized()
    yield
    assert not ray.is_initialized(), "the scheduler started Ray before refusing the input"


@pytest.fixture
def small_store(tmp_path):
    X, y, mask = simulate(200, 3, 32)
    return distglm.write_inputs(tmp_path / "fit.zarr", X, y, mask, neuron_chunk=16), mask


@pytest.mark.usefixtures("no_ray")
class TestBadInput:
    def refused(self, path, model, error, match, **options):
        before = snapshot(path)
        with pytest.raises(error, match=match):
            distglm.fit(path, model, progress=False, **options)
        assert snapshot(path) == before

    def test_store_without_y(self, tmp_path):
        path = str(tmp_path / "hand.zarr")
        root = zarr.open_group(path, mode="w")
        root.create_array("inputs/X", shape=(50, 2), dtype="float64")[...] = np.ones((50, 2))
        self.refused(path, PopulationGLM(), StoreError, "no inputs/y")

    def test_store_without_X(self, tmp_path):
        path = str(tmp_path / "hand.zarr")
        root = zarr.open_group(path, mode="w")
        root.create_array("inputs/y", shape=(50, 4), dtype="int32", chunks=(50, 2))[...] = 1
        self.refused(path, PopulationGLM(), StoreError, "no inputs/X")

    def test_mismatched_shapes(self, tmp_path):
        path = str(tmp_path / "hand.zarr")
        root = zarr.open_group(path, mode="w")
        root.create_array("inputs/X", shape=(50, 2), dtype="float64")[...] = 1.0
        root.create_array("inputs/y", shape=(40, 4), dtype="int32", chunks=(40, 2))[...] = 1
        self.refused(path, PopulationGLM(), StoreError, "50 samples")

    def test_mask_of_wrong_shape(self, small_store):
        path, mask = small_store
        self.refused(path, PopulationGLM(feature_mask=mask[:, :10]), InputError, "shape")

    def test_mask_differs_from_the_store(self, small_store):
        path, mask = small_store
        other = mask.copy()
        other[0, 3] = 1 - other[0, 3]
        self.refused(path, PopulationGLM(feature_mask=other), InputError, "differs")

    def test_negative_counts_for_poisson(self, tmp_path):
        X, y, _ = simulate(200, 3, 32)
        y[17, 21] = -1
        path = distglm.write_inputs(tmp_path / "fit.zarr", X, y, neuron_chunk=16)
        self.refused(path, PopulationGLM(), InputError, "neuron 21")

    def test_two_for_bernoulli(self, tmp_path):
        X, _, _ = simulate(200, 3, 32)
        y = (np.random.default_rng(1).random((200, 32)) < 0.3).astype(np.int32)
        y[5, 30] = 2
        path = distglm.write_inputs(tmp_path / "fit.zarr", X, y, neuron_chunk=16)
        self.refused(path, PopulationGLM("Bernoulli"), InputError, "neuron 30")

    def test_directory_that_is_not_a_store(self, tmp_path):
        path = tmp_path / "notes"
        path.mkdir()
        (path / "readme.txt").write_text("not a store")
        self.refused(str(path), PopulationGLM(), StoreError, "not a distglm store")

    def test_missing_path_is_not_created(self, tmp_path):
        path = tmp_path / "missing.zarr"
        with pytest.raises(StoreError, match="not a distglm store"):
            distglm.fit(path, PopulationGLM(), progress=False)
        assert not path.exists()

    def test_block_size_not_a_multiple_of_the_chunk(self, small_store):
        path, _ = small_store
        self.refused(path, PopulationGLM(), PlanError, "multiple", block_size=24)

    def test_resume_a_store_holding_another_fit(self, small_store):
        path, _ = small_store
        another = distglm.glm.model_to_config(PopulationGLM(regularizer="Ridge", regularizer_strength=2.0))
        store.create_results(path, n_features=3, n_neurons=32, neuron_chunk=16, n_blocks=2,
                             dtype="float32", state_spec={},
                             fingerprint={"model": another, "n_samples": 200, "dtype": "<f4", "block_size": 16})
        self.refused(path, PopulationGLM(), StoreError, r"different fit \(fingerprint differs in \['model'\]\)")

    @pytest.mark.parametrize("value", [2, 0.5, np.nan])
    def test_mask_values_other_than_0_and_1(self, tmp_path, value):
        X, y, mask = simulate(200, 3, 32)
        path = distglm.write_inputs(tmp_path / "fit.zarr", X, y, mask.astype(np.float64), neuron_chunk=16)
        # written by hand after write_inputs, which would refuse it
        float_mask = zarr.open_group(path, mode="r+").create_array(
            "inputs/feature_mask", shape=mask.shape, dtype="float64", chunks=(3, 16), overwrite=True)
        float_mask[...] = mask
        float_mask[1, 20] = value
        self.refused(path, PopulationGLM(), InputError,
                     r"inputs/feature_mask must hold only 0 and 1; got .* at feature 1, neuron 20")

    @pytest.mark.parametrize("where", ["X", "y"])
    def test_values_beyond_float32(self, tmp_path, where):
        X, y, _ = simulate(200, 3, 32)
        y = y.astype(np.float64)
        (X if where == "X" else y)[7, 2] = 1e39
        path = distglm.write_inputs(tmp_path / "fit.zarr", X, y, neuron_chunk=16)
        self.refused(path, PopulationGLM("Gaussian"), InputError,
                     rf"inputs/{where} must .*within the range of float32; got 1e\+39 .*jax_enable_x64")

    @pytest.mark.parametrize("array, chunk", [("y", ("c", "0", "1")), ("feature_mask", ("c", "0", "1")),
                                              ("X", ("c", "0", "0"))])
    def test_corrupted_chunk_is_found_before_any_actor(self, small_store, array, chunk):
        path, _ = small_store
        with open(os.path.join(path, "inputs", array, *chunk), "wb") as handle:
            handle.write(b"\x28\xb5\x2f\xfd not a zstd frame")
        self.refused(path, PopulationGLM(), StoreError, rf"inputs/{array} cannot be read: a chunk is corrupted")

    def test_corrupted_metadata_document(self, small_store):
        path, _ = small_store
        with open(os.path.join(path, "inputs", "y", "zarr.json"), "w") as handle:
            handle.write("{ not json")
        self.refused(path, PopulationGLM(), StoreError, "the metadata of inputs/y cannot be read")

    def test_a_custom_link_that_cannot_travel_to_actors(self, small_store):
        path, _ = small_store
        lock = threading.Lock()

        def held_link(x, _lock=lock):  # a default argument holding a lock: not serialisable
            return jnp.exp(x)

        self.refused(path, PopulationGLM(inverse_link_function=held_link), InputError,
                     r"custom inverse link 'held_link' cannot be sent to Ray actors \(TypeError: cannot pickle")

    def test_results_whose_fingerprint_describes_no_fit(self, small_store):
        path, _ = small_store
        store.create_results(path, n_features=3, n_neurons=32, neuron_chunk=16, n_blocks=2,
                             dtype="float32", state_spec={}, fingerprint={"model": "another fit"})
        self.refused(path, PopulationGLM(), StoreError, r"does not describe a distglm fit \('model' is not a dict; "
                                                        r"'n_samples' missing")


# --------------------------------------------------------------------------------------------
# On a real local Ray


@pytest.fixture(scope="class")
def local_ray():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


@pytest.fixture(scope="class")
def population():
    """2,000 samples x 6 features x 96 neurons, with a feature mask, and its in-memory fits."""
    X, y, mask = simulate(2_000, 6, 96)
    fits = {name: PopulationGLM(feature_mask=mask, **kwargs).fit(X, y)
            for name, kwargs in CONFIGS.items()}
    return X, y, mask, fits


@pytest.fixture(scope="class")
def poisson_fits(local_ray, population, tmp_path_factory):
    """The Poisson configuration fitted under several plans: block_size -> (store, report)."""
    X, y, mask, _ = population
    out = {}
    # one block; blocks of one chunk; a short last block padded (64 + 32); blocks of the short
    # block's size, where it is not short
    for block_size, num_actors in ((96, 1), (16, 2), (64, 1), (32, 1)):
        path = distglm.write_inputs(tmp_path_factory.mktemp("plan") / "fit.zarr", X, y, mask, neuron_chunk=16)
        report = distglm.fit(path, PopulationGLM(feature_mask=mask, **CONFIGS["Poisson"]),
                             num_actors=num_actors, block_size=block_size, progress=False)
        out[block_size] = path, report
    return out


@pytest.fixture(scope="class")
def slow_inputs(tmp_path_factory):
    X, y, mask = simulate(SLOW["n_samples"], SLOW["n_features"], SLOW["n_neurons"], seed=1)
    return distglm.write_inputs(tmp_path_factory.mktemp("slow") / "inputs.zarr", X, y, mask,
                                neuron_chunk=SLOW["neuron_chunk"])


@pytest.fixture(scope="class")
def slow_reference(local_ray, slow_inputs, tmp_path_factory):
    """The uninterrupted fit of the slow population, on one actor."""
    path = copy_inputs(slow_inputs, tmp_path_factory.mktemp("reference") / "fit.zarr")
    report = distglm.fit(path, PopulationGLM(**SLOW_MODEL), num_actors=1, block_size=SLOW_BLOCK,
                         progress=False)
    assert report.failed_blocks == {} and report.n_fitted == SLOW["n_neurons"]
    return stored_fit(path)


@pytest.mark.ray
@pytest.mark.usefixtures("local_ray")
class TestOnRay:
    def test_one_block_equals_many_blocks_equals_in_memory(self, population, poisson_fits):
        X, y, mask, fits = population
        want = fits["Poisson"]
        one_block = distglm.load_model(poisson_fits[96][0])
        for block_size, (path, report) in poisson_fits.items():
            n_blocks = -(-96 // block_size)
            assert (report.n_blocks, report.n_blocks_fitted, report.n_fitted) == (n_blocks, n_blocks, 96)
            assert report.failed_blocks == {} and report.failures == {}
            model = distglm.load_model(path)
            for other in (want, one_block):
                np.testing.assert_allclose(model.coef_, other.coef_, rtol=RTOL, atol=ATOL)
                np.testing.assert_allclose(model.intercept_, other.intercept_, rtol=RTOL, atol=ATOL)
            assert np.all(model.coef_[mask == 0] == 0)
            np.testing.assert_allclose(model.predict(X[:100]), want.predict(X[:100]), rtol=1e-3)

    def test_padding_changes_nothing(self, population, poisson_fits):
        _, _, mask, fits = population
        # 96 neurons in blocks of 64: the second block holds 32 neurons padded to 64
        padded_path, padded_report = poisson_fits[64]
        assert padded_report.n_blocks == 2
        padded = store.read_results(padded_path, 64, 96)
        # blocks of 32: the same 32 neurons fill their block
        unpadded = store.read_results(poisson_fits[32][0], 64, 96)
        assert np.all(padded["status"] == STATUS_OK)
        for name in ("coef", "intercept", "scale", "loss"):
            np.testing.assert_allclose(padded[name], unpadded[name], rtol=RTOL, atol=ATOL, err_msg=name)
        np.testing.assert_allclose(padded["coef"], fits["Poisson"].coef_[:, 64:], rtol=RTOL, atol=ATOL)
        np.testing.assert_allclose(padded["intercept"], fits["Poisson"].intercept_[64:], rtol=RTOL, atol=ATOL)

    @pytest.mark.parametrize("name, block_size, num_actors", [("Ridge", 32, 2), ("Lasso", 64, 1)])
    def test_penalised_fit_equals_in_memory(self, population, tmp_path, name, block_size, num_actors):
        X, y, mask, fits = population
        path = distglm.write_inputs(tmp_path / "fit.zarr", X, y, mask, neuron_chunk=16)
        model = PopulationGLM(feature_mask=mask, **CONFIGS[name])
        report = distglm.fit(path, model, num_actors=num_actors, block_size=block_size, progress=False)
        assert report.failed_blocks == {} and report.n_fitted == 96
        fitted = distglm.load_model(path)
        assert fitted.regularizer.name == name
        np.testing.assert_allclose(fitted.coef_, fits[name].coef_, rtol=RTOL, atol=ATOL)
        np.testing.assert_allclose(fitted.intercept_, fits[name].intercept_, rtol=RTOL, atol=ATOL)
        if name == "Lasso":
            # the same coefficients are set exactly to zero by the proximal step
            assert np.array_equal(fitted.coef_ == 0, fits[name].coef_ == 0)

    def test_counts_beyond_uint8_fit_as_in_memory(self, population, tmp_path):
        # counts up to a few thousand: the actors hold the blocks as uint16
        X, y, mask, _ = population
        y = y * 37
        assert 255 < y.max() <= 65535
        model = dict(feature_mask=mask, regularizer="Ridge", regularizer_strength=0.05)
        want = PopulationGLM(**model).fit(X, y)
        path = distglm.write_inputs(tmp_path / "fit.zarr", X, y, mask, neuron_chunk=16)
        report = distglm.fit(path, PopulationGLM(**model), num_actors=1, block_size=48, progress=False)
        assert report.failed_blocks == {} and report.n_converged == 96
        fitted = distglm.load_model(path)
        np.testing.assert_allclose(fitted.coef_, want.coef_, rtol=RTOL, atol=ATOL)
        np.testing.assert_allclose(fitted.intercept_, want.intercept_, rtol=RTOL, atol=ATOL)

    def test_a_refit_of_unchanged_inputs_does_not_read_them_again(self, population, tmp_path, monkeypatch):
        from distglm import input_scans

        X, y, mask, _ = population
        monkeypatch.setenv(input_scans.ENV_VAR, str(tmp_path / "scans"))
        monkeypatch.setattr(input_scans, "SETTLE_S", 0.0)
        path = distglm.write_inputs(tmp_path / "fit.zarr", X, y, mask, neuron_chunk=16)
        model = dict(feature_mask=mask, regularizer="Ridge", regularizer_strength=0.05)
        distglm.fit(path, PopulationGLM(**model), num_actors=1, block_size=48, progress=False)
        first = stored_fit(path)

        def refuse(*args, **kwargs):
            raise AssertionError("the inputs were read again")

        monkeypatch.setattr(store, "scan_y", refuse)
        report = distglm.fit(path, PopulationGLM(**model), num_actors=1, block_size=48, progress=False,
                             resume=False)
        assert report.n_fitted == 96
        assert_same_bytes(stored_fit(path), first)

    def test_bad_call_leaves_a_completed_fit_alone(self, population, poisson_fits):
        _, _, mask, _ = population
        path = poisson_fits[32][0]
        before = snapshot(path)
        with pytest.raises(StoreError, match="different fit"):
            distglm.fit(path, PopulationGLM(**CONFIGS["Ridge"]), progress=False)
        with pytest.raises(PlanError):
            distglm.fit(path, PopulationGLM(**CONFIGS["Poisson"]), block_size=40, resume=False, progress=False)
        with pytest.raises(InputError, match="differs"):
            distglm.fit(path, PopulationGLM(feature_mask=1 - mask, **CONFIGS["Poisson"]), resume=False,
                        progress=False)
        assert snapshot(path) == before
        # resuming the same fit finds every block done and writes nothing
        report = distglm.fit(path, PopulationGLM(feature_mask=mask, **CONFIGS["Poisson"]), progress=False)
        assert (report.n_blocks_skipped, report.n_blocks_fitted, report.n_fitted) == (3, 0, 96)
        assert snapshot(path) == before

    def test_results_are_chunked_by_block(self, poisson_fits):
        # one chunk of each result array per block: a block's write is one file per array
        for block_size in (16, 32):
            results = zarr.open_group(poisson_fits[block_size][0], mode="r")["results"]
            assert results["coef"].chunks == (6, block_size)
            assert results["loss"].chunks == (block_size,)
            assert all(results[f"solver_state/{name}"].chunks[-1] == block_size
                       for name in results["solver_state"].array_keys()
                       if results[f"solver_state/{name}"].shape[-1] == 96)

    def test_actors_started_early_are_stopped_when_the_inputs_are_refused(self, tmp_path):
        # With Ray running, the actors start while the driver checks the inputs; a refused
        # input stops them (no actor keeps a CPU while the error is held, e.g. by a REPL)
        X, y, _ = simulate(200, 3, 32)
        y[17, 21] = -1
        path = distglm.write_inputs(tmp_path / "fit.zarr", X, y, neuron_chunk=16)
        before = set(ray_state.actors())
        with pytest.raises(InputError, match="neuron 21") as refused:
            distglm.fit(path, PopulationGLM(), num_actors=2, progress=False)
        started = [key for key, actor in ray_state.actors().items()
                   if key not in before and actor["ActorClassName"] == "BlockFitter"]
        assert len(started) == 2
        deadline = time.monotonic() + 30
        while any(ray_state.actors()[key]["State"] != "DEAD" for key in started):
            assert time.monotonic() < deadline, "an actor started for the refused fit is still alive"
            time.sleep(0.1)
        assert "neuron 21" in str(refused.value)
        assert "results" not in zarr.open_group(path, mode="r")

    def test_failed_neuron_and_failed_block_are_reported(self, population, tmp_path):
        X, y, mask, _ = population
        y = y.copy()
        y[:, 5] = 0  # a neuron that never fires
        path = distglm.write_inputs(tmp_path / "fit.zarr", X, y, mask, neuron_chunk=16)
        broken = {}

        def break_last_block(summary):
            # once the plan is running, a chunk of the last block's y turns into garbage on disk
            if not broken:
                chunk = os.path.join(path, "inputs", "y", "c", "0", "5")
                with open(chunk, "wb") as handle:
                    handle.write(b"not a zstd frame" * 8)
                broken["after"] = summary["block"]

        report = distglm.fit(path, PopulationGLM(**CONFIGS["Poisson"]), num_actors=1, block_size=32,
                             max_retries=1, progress=False, on_block=break_last_block)
        # the actor holds two blocks at once (blocks 0 and 1): either may end first; block 2 starts after
        assert broken["after"] in (0, 1)
        assert report.failures == {5: STATUS_REASONS[STATUS_NONFINITE_INIT]}
        assert list(report.failed_blocks) == [2]
        # the actor raised: a deterministic failure, named and not retried (the actor stays in use)
        assert "StoreError" in report.failed_blocks[2] and "inputs/y cannot be read" in report.failed_blocks[2]
        assert report.n_retries == 0
        assert (report.n_blocks_fitted, report.n_fitted) == (2, 64)
        results = store.read_results(path)
        assert results["status"][5] == STATUS_NONFINITE_INIT and np.isnan(results["intercept"][5])
        assert np.all(results["status"][np.r_[0:5, 6:64]] == STATUS_OK)
        assert np.all(results["status"][64:] == store.STATUS_UNWRITTEN)
        assert store.done_blocks(path) == {0, 1}
        with pytest.raises(StoreError, match="unfinished"):
            distglm.load_model(path)

    def test_a_custom_inverse_link_fits_on_actors(self, population, tmp_path):
        X, y, mask, _ = population

        def shifted_softplus(x):
            return jax.nn.softplus(x) + 1e-3

        options = dict(feature_mask=mask, inverse_link_function=shifted_softplus, solver_kwargs=TIGHT)
        want = PopulationGLM(**options).fit(X, y)
        path = distglm.write_inputs(tmp_path / "fit.zarr", X, y, mask, neuron_chunk=16)
        report = distglm.fit(path, PopulationGLM(**options), num_actors=2, block_size=32, progress=False)
        assert report.failed_blocks == {} and report.n_fitted == 96
        with pytest.raises(InputError, match="custom inverse link 'shifted_softplus'.*mapping_dict"):
            distglm.load_model(path)
        got = distglm.load_model(path, mapping_dict={"inverse_link_function": shifted_softplus})
        np.testing.assert_allclose(got.coef_, want.coef_, rtol=RTOL, atol=ATOL)
        np.testing.assert_allclose(got.predict(X), want.predict(X), rtol=1e-3)

    def test_killed_actor_is_replaced_and_its_block_redone(self, slow_inputs, slow_reference, tmp_path):
        path = copy_inputs(slow_inputs, tmp_path / "fit.zarr")
        n_blocks = len(plan_blocks(SLOW["n_neurons"], SLOW["neuron_chunk"], SLOW_BLOCK))
        killed, stop = {}, threading.Event()

        def kill_a_busy_actor():
            while not stop.is_set() and not killed:
                done = poll_done(path)
                if 1 <= len(done) < n_blocks - 2:
                    busy = [proc for proc, title in block_fitters() if title.startswith("ray::BlockFitter.fit")]
                    if busy:
                        busy[0].send_signal(signal.SIGKILL)
                        killed.update(pid=busy[0].pid, n_done=len(done))
                time.sleep(0.02)

        killer = threading.Thread(target=kill_a_busy_actor, daemon=True)
        killer.start()
        try:
            report = distglm.fit(path, PopulationGLM(**SLOW_MODEL), num_actors=2, block_size=SLOW_BLOCK,
                                 progress=False)
        finally:
            stop.set()
            killer.join()
        assert killed, "the fit ended before an actor could be killed mid-way"
        assert not psutil.pid_exists(killed["pid"]) or psutil.Process(killed["pid"]).status() == psutil.STATUS_ZOMBIE
        assert report.n_retries >= 1
        assert report.failed_blocks == {}
        assert (report.n_blocks_fitted, report.n_fitted) == (n_blocks, SLOW["n_neurons"])
        got = stored_fit(path)
        assert np.all(got["results/status"] != store.STATUS_UNWRITTEN)
        assert_same_bytes(got, slow_reference)

    def test_killed_driver_is_resumed(self, slow_inputs, slow_reference, tmp_path):
        path = copy_inputs(slow_inputs, tmp_path / "fit.zarr")
        n_blocks = len(plan_blocks(SLOW["n_neurons"], SLOW["neuron_chunk"], SLOW_BLOCK))
        log = open(tmp_path / "killed.log", "w")
        driver = subprocess.Popen(driver_command(path, num_actors=2, block_size=SLOW_BLOCK),
                                  stdout=log, stderr=subprocess.STDOUT, env=driver_env())
        try:
            deadline = time.monotonic() + SUBPROCESS_TIMEOUT
            while not poll_done(path):
                assert driver.poll() is None, open(tmp_path / "killed.log").read()[-3000:]
                assert time.monotonic() < deadline, "no block was done in time"
                time.sleep(0.05)
            # the driver's local Ray: GCS, raylet, agents and the actors
            its_ray = psutil.Process(driver.pid).children(recursive=True)
            driver.send_signal(signal.SIGKILL)
        finally:
            if driver.poll() is None:
                driver.kill()
            driver.wait()
            log.close()
        # Ray's GCS and raylet share the driver's fate and its actors soon notice; give them
        # the time to finish dying, then remove what is left orphaned (the dashboard and
        # runtime-env agents), by pid, so that the test's own Ray is untouched.
        _, lingering = psutil.wait_procs(its_ray, timeout=5)
        for proc in lingering:
            proc.kill()
        _, still = psutil.wait_procs(lingering, timeout=10)
        assert not still
        n_done = len(store.done_blocks(path))
        assert 1 <= n_done < n_blocks

        # a new driver resumes with the default plan of the stored fit
        report = run_driver(path, tmp_path / "resumed.log", num_actors=2)
        assert report["n_blocks"] == n_blocks
        assert report["n_blocks_skipped"] == n_done
        assert report["n_blocks_fitted"] == n_blocks - n_done
        assert report["failed_blocks"] == {}
        assert report["n_fitted"] == SLOW["n_neurons"]
        assert_same_bytes(stored_fit(path), slow_reference)
