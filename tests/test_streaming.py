"""Samples streamed chunk by chunk: the same answers as in memory, in memory bounded by a chunk.

The core's streamed solve (``fit_streamed``) is compared with ``fit_block`` on the same data;
a distributed fit whose actors stream X and y from a store chunked along time is compared with
the in-memory ``PopulationGLM.fit`` and with the same fit held in memory; the driver's
streamed checks still name the sample at fault; and a streamed fit's peak memory, measured in
a fresh process, does not grow with the recording's length.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest
import ray

import distglm
from distglm import store
from distglm.core import ChunkSource, FitConfig, fit_block, fit_streamed
from distglm.core.observations import GammaObservations, PoissonObservations
from distglm.core.regularizers import Ridge, UnRegularized
from distglm.core.fit import DesignGram
from distglm.errors import InputError, InputTypeError
from distglm.glm import PopulationGLM

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def chunked(X, y, keep, rows):
    """A ChunkSource over in-memory arrays, the last chunk padded with rows that are not data."""
    n = X.shape[0]

    def read(i):
        start, stop = i * rows, min(i * rows + rows, n)
        ok = np.zeros(rows, dtype=bool)
        ok[:stop - start] = keep[start:stop]
        x = np.zeros((rows, X.shape[1]))
        yy = np.zeros((rows, y.shape[1]))
        x[:stop - start], yy[:stop - start] = X[start:stop], y[start:stop]
        x[~ok] = yy[~ok] = 0.0
        return x, yy, ok

    return ChunkSource(read, n_chunks=-(-n // rows), rows=rows, n_features=X.shape[1], n_neurons=y.shape[1],
                       n_valid=int(keep.sum()))


CORE_CASES = {
    # the rank of X (residual degrees of freedom), gradients from the chunked pass
    "Poisson, unregularized, LBFGS": (PoissonObservations(), UnRegularized(), "LBFGS", {"tol": 1e-10}, 0.0),
    # the scale estimate; gradients by differentiating the pass through the chunk callback
    "Gamma, ridge, gradient descent": (GammaObservations(), Ridge(), "GradientDescent",
                                       {"tol": 1e-9, "maxiter": 5000}, 0.5),
}


@pytest.fixture
def global_x64():
    """float64 set globally, as actors set it: chunks arrive in a callback that runs on an XLA
    thread, which a thread-local ``jax.enable_x64`` context does not reach."""
    before = jax.config.jax_enable_x64
    jax.config.update("jax_enable_x64", True)
    yield
    jax.config.update("jax_enable_x64", before)


@pytest.mark.parametrize("shared_gram", [False, True], ids=["gram in the solve", "gram given"])
@pytest.mark.parametrize("case", list(CORE_CASES))
def test_streamed_core_equals_in_memory(global_x64, case, shared_gram):
    observation, regularizer, solver, kwargs, shift = CORE_CASES[case]
    rng = np.random.default_rng(3)
    n, p, N = 2_300, 4, 5
    X = rng.normal(size=(n, p))
    y = rng.poisson(np.exp(X @ rng.normal(scale=0.2, size=(p, N)))).astype(float) + shift
    keep = rng.random(n) > 0.05  # rows dropped as NaN rows are, spread over every chunk
    mask = (rng.random((p, N)) > 0.3).astype(float)
    config = FitConfig(observation, "exp", regularizer, solver, tuple(sorted(kwargs.items())))
    strength = None if regularizer.name == "UnRegularized" else regularizer.expand_strength(0.01, p, N)
    want = fit_block(X[keep], y[keep], mask, config, strength=strength)
    # 700 rows per chunk: the last of the 4 chunks is partly padding
    source = chunked(X, y, keep, 700)
    # the Gram matrix several blocks share, computed once from the chunks (as an actor does)
    gram = (DesignGram.from_chunks((source.read(i)[0] for i in range(source.n_chunks)), source.n_valid)
            if shared_gram else None)
    if shared_gram:
        np.testing.assert_allclose(gram.matrix, DesignGram(X[keep]).matrix, rtol=1e-12)
        with pytest.raises(InputTypeError, match="gram must be a DesignGram; got ndarray"):
            fit_streamed(source, mask, config, strength=strength, gram=gram.matrix)
    got = fit_streamed(source, mask, config, strength=strength, gram=gram)
    assert np.all(got.converged)
    for name in ("coef", "intercept", "scale", "dof_resid", "loss"):
        np.testing.assert_allclose(getattr(got, name), getattr(want, name), rtol=1e-7, atol=1e-9, err_msg=name)
    assert np.all(got.coef[mask == 0] == 0)


def test_chunk_source_is_checked():
    with pytest.raises(ValueError, match="n_valid=11 exceeds the 2 x 5 rows"):
        ChunkSource(lambda i: None, n_chunks=2, rows=5, n_features=1, n_neurons=1, n_valid=11)
    with pytest.raises(ValueError, match="rows must be a positive int; got 0"):
        ChunkSource(lambda i: None, n_chunks=2, rows=0, n_features=1, n_neurons=1, n_valid=1)
    with pytest.raises(TypeError, match="read must be callable"):
        ChunkSource(None, n_chunks=2, rows=5, n_features=1, n_neurons=1, n_valid=1)


# --------------------------------------------------------------------------------------------
# Distributed fits streamed from a store chunked along time


@pytest.fixture(scope="module")
def long_store(tmp_path_factory):
    """3,000 samples (NaN rows in X and in y) x 5 features x 40 neurons, stored in chunks of 700 samples.

    Returns ``(path, X, y, mask)``.
    """
    rng = np.random.default_rng(5)
    n, p, N = 3_000, 5, 40
    X = rng.normal(size=(n, p))
    mask = (rng.random((p, N)) < 0.8).astype(np.uint8)
    y = rng.poisson(np.exp(X @ (0.25 * rng.normal(size=(p, N)) * mask) - 0.3)).astype(np.float64)
    X[[10, 1_500, 2_999]] = np.nan
    y[[700, 2_100], [3, 39]] = np.nan
    mp = pytest.MonkeyPatch()
    # short time chunks, so a small store is read in several chunks of samples
    mp.setattr(store.inputs, "_ROW_CHUNK", 700)
    try:
        path = distglm.write_inputs(tmp_path_factory.mktemp("long") / "fit.zarr", X, y, mask, neuron_chunk=8)
    finally:
        mp.undo()
    return path, X, y, mask


@pytest.fixture(scope="module")
def local_ray():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


def test_store_is_chunked_along_time(long_store):
    path = long_store[0]
    info = store.open_inputs(path)
    assert (info.row_chunk, info.neuron_chunk) == (700, 8)
    assert np.flatnonzero(store.nan_rows(path)).tolist() == [10, 700, 1_500, 2_100, 2_999]


@pytest.mark.ray
@pytest.mark.usefixtures("local_ray")
def test_streamed_fit_equals_held_fit_equals_in_memory(long_store, tmp_path):
    path, X, y, mask = long_store
    options = dict(feature_mask=mask, regularizer="Ridge", regularizer_strength=0.05, solver_kwargs={"tol": 1e-7})
    want = PopulationGLM(**options).fit(X, y)
    fitted = {}
    for stream in (True, False):
        copy = str(tmp_path / f"stream{stream}.zarr")
        distglm.write_inputs(copy, X, y, mask, neuron_chunk=8) if not stream else None
        target = path if stream else copy
        # blocks of 16: the last of 3 blocks is padded
        report = distglm.fit(target, PopulationGLM(**options), num_actors=2, block_size=16, progress=False,
                             stream=stream)
        assert report.failed_blocks == {} and report.n_fitted == 40 and report.n_converged == 40
        fitted[stream] = distglm.load_model(target)
    for model in fitted.values():
        np.testing.assert_allclose(model.coef_, want.coef_, rtol=1e-4, atol=1e-4)
        np.testing.assert_allclose(model.intercept_, want.intercept_, rtol=1e-4, atol=1e-4)
        np.testing.assert_allclose(model.scale_, want.scale_, rtol=1e-5)
        np.testing.assert_array_equal(model.dof_resid_, want.dof_resid_)
        assert np.all(model.coef_[mask == 0] == 0)
    np.testing.assert_allclose(fitted[True].coef_, fitted[False].coef_, rtol=1e-5, atol=1e-5)


def test_streamed_checks_name_the_stored_sample(tmp_path):
    rng = np.random.default_rng(0)
    y = rng.poisson(1.0, size=(2_000, 3)).astype(float)
    y[1_801, 2] = -1.0
    mp = pytest.MonkeyPatch()
    mp.setattr(store.inputs, "_ROW_CHUNK", 500)
    try:
        path = distglm.write_inputs(tmp_path / "fit.zarr", rng.normal(size=(2_000, 2)), y)
    finally:
        mp.undo()
    # refused before any cluster starts (no Ray is running here)
    with pytest.raises(InputError, match=r"got -1.0 at sample 1801, neuron 2"):
        distglm.fit(path, PopulationGLM(), progress=False)
    y[1_801, 2], y[1_999, 1] = 1.0, np.inf
    distglm.write_inputs(path, rng.normal(size=(2_000, 2)), y, overwrite=True)
    with pytest.raises(InputError, match=r"inputs/y must be finite outside NaN rows.*got inf at sample 1999, neuron 1"):
        distglm.fit(path, PopulationGLM(), progress=False)


def test_stream_option_is_checked_and_chosen_by_size(long_store):
    from distglm.errors import InputTypeError
    from distglm.scheduler import STREAM_ABOVE_BYTES, _streams

    with pytest.raises(InputTypeError, match="stream must be True, False or None; got 'yes'"):
        distglm.fit(long_store[0], PopulationGLM(), stream="yes", progress=False)
    # X and two blocks of y, in the fit's float type, against the threshold
    rows = STREAM_ABOVE_BYTES // ((100 + 2 * 256) * 4)
    assert not _streams(None, rows, 100, 256, np.float32)
    assert _streams(None, rows + 1, 100, 256, np.float32)
    assert _streams(True, 10, 1, 1, np.float32) and not _streams(False, 10**9, 100, 256, np.float32)
    # counts held as uint8: a block of y is a quarter of the float one, so 2.7x the samples stay in memory
    rows = STREAM_ABOVE_BYTES // (100 * 4 + 2 * 256)
    assert not _streams(None, rows, 100, 256, np.float32, "uint8")
    assert _streams(None, rows + 1, 100, 256, np.float32, "uint8")


# --------------------------------------------------------------------------------------------
# Memory


PEAK_SCRIPT = """
import json, sys
import numpy as np
from distglm.core import ChunkSource, FitConfig, fit_streamed
from distglm.core.observations import GaussianObservations
from distglm.core.regularizers import Ridge

n_chunks, rows, p, N = int(sys.argv[1]), 8192, 20, 16
rng = np.random.default_rng(0)
X0 = rng.normal(size=(rows, p)).astype(np.float32)
y0 = (X0 @ rng.normal(scale=0.3, size=(p, N)) + rng.normal(size=(rows, N))).astype(np.float32)
keep = np.ones(rows, bool)

def read(i):
    # every chunk is new memory, as a chunk read from a store is
    return np.roll(X0, i, axis=0), np.roll(y0, i, axis=0), keep

source = ChunkSource(read, n_chunks=n_chunks, rows=rows, n_features=p, n_neurons=N, n_valid=n_chunks * rows)
config = FitConfig(GaussianObservations(), "identity", Ridge(), "LBFGS")
def fit():
    return fit_streamed(source, np.ones((p, N), np.float32), config, strength=Ridge().expand_strength(0.01, p, N))
# a first fit compiles: the compiler's memory varies from run to run by tens of MB, so the peak
# is measured over a second fit, from the resident memory the first left (clear_refs 5 resets VmHWM)
fit()
with open("/proc/self/clear_refs", "w") as handle:
    handle.write("5")
rss_kb = next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmRSS:"))
result = fit()
# VmHWM is this process's own peak; getrusage's ru_maxrss keeps the forking parent's across exec
hwm_kb = next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM:"))
print("PEAK " + json.dumps({"kb": hwm_kb - rss_kb,
                            "converged": bool(result.converged.all())}))
"""


def peak_of_streamed_fit(n_chunks: int) -> dict:
    env = {**os.environ, "PYTHONPATH": ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""),
           "XLA_FLAGS": "--xla_cpu_multi_thread_eigen=false", "JAX_PLATFORMS": "cpu",
           # a fixed threshold: every chunk-sized array is its own mapping, returned when freed, so
           # memory a fit held and freed never hides in the heap for the next fit to reuse
           "MALLOC_MMAP_THRESHOLD_": "131072"}
    out = subprocess.run([sys.executable, "-c", PEAK_SCRIPT, str(n_chunks)], capture_output=True, text=True,
                         env=env, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    line = [line for line in out.stdout.splitlines() if line.startswith("PEAK ")][-1]
    return json.loads(line[5:])


def test_streamed_fit_memory_does_not_grow_with_samples():
    short, long = peak_of_streamed_fit(4), peak_of_streamed_fit(64)
    assert short["converged"] and long["converged"]
    # 60 more chunks of X and y: 71 MB (float32) the long fit never holds at once; "kb" is how
    # far a fit's peak rose above the memory the process held before it
    data_mb = 60 * 8192 * (20 + 16) * 4 / 1e6
    growth_mb = (long["kb"] - short["kb"]) / 1e3
    assert growth_mb < 0.2 * data_mb, (growth_mb, data_mb)


def test_streaming_reader_caches_within_its_budget(long_store):
    """The chunks a streaming actor keeps between passes never exceed ``cache_bytes``; what they
    give is what the store holds."""
    from distglm.actor import FitSpec, SampleReader

    path, X, y, mask = long_store
    per_chunk = 700 * (5 + 40) * 4
    reads = {}
    for cache_bytes in (0, 2 * per_chunk + 1, 10 * per_chunk):
        spec = FitSpec(str(path), {}, pad_to=40, x64=False, stream=True, cache_bytes=cache_bytes)
        reader = SampleReader(store.InputsReader(str(path)), spec, np.float32)
        source = reader.source(0, 40, 40)
        assert source.rows == 700 and source.n_chunks == 5
        passes = [[source.read(i) for i in range(source.n_chunks)] for _ in range(2)]
        assert reader._cached <= cache_bytes
        assert reader._cached == min(cache_bytes // per_chunk, 5) * per_chunk
        reads[cache_bytes] = passes
    for passes in reads.values():
        for got, want in zip(passes[0] + passes[1], reads[0][0] * 2):
            for a, b in zip(got, want):
                np.testing.assert_array_equal(a, b)
    first = reads[0][0][0]
    np.testing.assert_array_equal(first[0][first[2]], X[:700][first[2]].astype(np.float32))
