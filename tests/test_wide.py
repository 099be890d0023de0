"""Wide designs: the preconditioners reach the same optimum, and the planner's memory estimate holds.

Every preconditioner is an invertible change of variables, so all of them must give the
per-neuron Cholesky factor's answer (the path checked against NeMoS and statsmodels elsewhere)
to within the solver's tolerance. The memory estimate is checked against the peak RSS of a real
fit in a fresh process, and the distributed fit against a real local Ray and Zarr store.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import ray
from hypothesis import given, settings
from hypothesis import strategies as st

import distglm
from distglm.core import FitConfig, PoissonObservations
from distglm.core import fit as core_fit
from distglm.core.regularizers import Ridge, UnRegularized
from distglm.errors import InputError, PlanError
from distglm.glm import PopulationGLM
from distglm.plan import ACTOR_BASE_BYTES, PROCESS_BASE_BYTES, estimate_block_memory, largest_block, plan_blocks
from distglm.scheduler import check_fit_options, stored_fingerprint

TOL = 1e-6
# float32 fits converged to TOL from different coordinates agree to about 1e-5
ATOL = 2e-4


def simulate(n_samples, n_features, n_neurons, seed=0, correlated=True):
    """``(X, y)``: a design with correlated columns (float32) and Poisson counts (float32)."""
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n_samples, n_features))
    if correlated:
        X[:, 1:] += 0.8 * X[:, :1]
    X = (X / np.sqrt(n_features)).astype(np.float32)
    weights = 0.5 * rng.normal(size=(n_features, n_neurons))
    y = rng.poisson(np.exp(X @ weights - 0.5)).astype(np.float32)
    return X, y


def config(regularizer):
    return FitConfig(PoissonObservations(), "exp", regularizer, "LBFGS", (("tol", TOL),))


def fit(X, y, mask, regularizer, strength, kind):
    return core_fit.fit_block(X, y, mask, config(regularizer), strength=strength, preconditioner=kind)


def assert_same_fit(result, reference):
    assert result.converged.all() and reference.converged.all()
    np.testing.assert_allclose(result.coef, reference.coef, atol=ATOL)
    np.testing.assert_allclose(result.intercept, reference.intercept, atol=ATOL)
    np.testing.assert_allclose(result.loss, reference.loss, rtol=1e-5)


def test_every_preconditioner_reaches_the_cholesky_optimum():
    X, y = simulate(1500, 12, 5)
    # equal masks with a feature dropped for every neuron, then one neuron's mask changed
    shared = np.ones((12, 5), np.float32)
    shared[4] = 0
    differing = shared.copy()
    differing[7, 2] = 0
    # the ridge differs between neurons: the shared basis takes each neuron's own
    strength = np.linspace(0.005, 0.05, 5, dtype=np.float32) * np.ones((12, 1), np.float32)
    for mask, kinds in ((shared, ("shared", "diagonal")), (differing, ("diagonal",))):
        reference = fit(X, y, mask, Ridge(), strength, "cholesky")
        for kind in kinds:
            result = fit(X, y, mask, Ridge(), strength, kind)
            assert_same_fit(result, reference)
            assert np.all(result.coef[mask == 0] == 0)


def test_wide_block_picks_the_shared_basis_and_matches_cholesky():
    n_features = core_fit.CHOLESKY_MAX_PARAMS + 20
    X, y = simulate(600, n_features, 4, correlated=False)
    mask = np.ones((n_features, 4), np.float32)
    strength = np.full(mask.shape, 0.05, np.float32)
    assert core_fit.choose_preconditioner(mask) == "shared"
    auto = fit(X, y, mask, Ridge(), strength, "auto")
    assert_same_fit(auto, fit(X, y, mask, Ridge(), strength, "cholesky"))


def test_gram_inside_the_solve_gives_the_same_fit():
    # device arrays already padded to the bucket are used as given: the Gram matrix (and the shared
    # eigenbasis) are then computed inside the solve, as for streamed samples
    import jax.numpy as jnp

    X, y = simulate(600, 10, 4)
    mask = np.ones((10, 4), np.float32)
    mask[3] = 0
    strength = np.full(mask.shape, 0.02, np.float32)
    rows = core_fit.bucket_rows(600, core_fit.bucket_neurons(4))
    Xd, yd = (jnp.asarray(np.pad(a, ((0, rows - 600), (0, 0)))) for a in (X, y))
    for kind in ("shared", "diagonal", "cholesky"):
        inside = core_fit.fit_block(Xd, yd, mask, config(Ridge()), strength=strength, n_samples=600,
                                    preconditioner=kind)
        assert_same_fit(inside, fit(X, y, mask, Ridge(), strength, kind))


def test_choice_of_preconditioner():
    wide = core_fit.CHOLESKY_MAX_PARAMS
    assert core_fit.choose_preconditioner(np.ones((wide - 1, 3))) == "cholesky"
    mask = np.ones((wide, 3))
    assert core_fit.choose_preconditioner(mask) == "shared"
    mask[0, 2] = 0
    assert core_fit.choose_preconditioner(mask) == "diagonal"
    # an inactive neuron's (padding) column does not count
    assert core_fit.choose_preconditioner(mask, np.array([True, True, False])) == "shared"


def test_design_gram_is_that_of_x_with_a_column_of_ones():
    X, _ = simulate(200, 6, 1)
    A = np.concatenate([X, np.ones((200, 1), np.float32)], axis=1).astype(np.float64)
    np.testing.assert_allclose(core_fit.DesignGram(X.astype(np.float64)).matrix, A.T @ A / 200, rtol=1e-12)
    # zero rows of padding do not count when n_valid says so
    padded = np.concatenate([X, np.zeros((40, 6), np.float32)])
    np.testing.assert_allclose(core_fit.DesignGram(padded, n_valid=200).matrix, core_fit.DesignGram(X).matrix,
                               rtol=1e-6)


def test_shared_basis_is_computed_once_per_mask():
    X, _ = simulate(200, 6, 1)
    gram = core_fit.DesignGram(X)
    mask = np.ones((6, 3), np.float32)
    first = gram.for_preconditioner("shared", mask, np.ones(3, bool))
    assert gram.for_preconditioner("shared", mask, np.array([False, True, True])) is first
    mask[2] = 0
    other = gram.for_preconditioner("shared", mask, np.ones(3, bool))
    # the restricted matrix: feature 2 is cut from the others and has curvature 1
    restricted = (other.basis * other.values) @ other.basis.T
    expected = gram.matrix.copy()
    expected[2, :] = expected[:, 2] = 0
    expected[2, 2] = 1
    np.testing.assert_allclose(restricted, expected, atol=1e-5)


def test_given_gram_and_unknown_preconditioner_are_checked():
    X, y = simulate(100, 3, 2)
    mask = np.ones((3, 2), np.float32)
    with pytest.raises(InputError, match="preconditioner must be one of"):
        fit(X, y, mask, UnRegularized(), None, "jacobi")
    with pytest.raises(InputError, match=r"gram must be the DesignGram of X, of shape \(4, 4\)"):
        core_fit.fit_block(X, y, mask, config(UnRegularized()), gram=np.eye(4))
    with pytest.raises(InputError, match=r"got \(3, 3\)"):
        core_fit.fit_block(X, y, mask, config(UnRegularized()), gram=core_fit.DesignGram(X[:, :2]))
    given_gram = core_fit.fit_block(X, y, mask, config(UnRegularized()), gram=core_fit.DesignGram(X))
    assert_same_fit(given_gram, core_fit.fit_block(X, y, mask, config(UnRegularized())))


def test_step_by_step_fitting_with_a_wide_design():
    n_features = core_fit.CHOLESKY_MAX_PARAMS + 4
    X, y = simulate(400, n_features, 3, correlated=False)
    model = PopulationGLM(regularizer="Ridge", regularizer_strength=0.1, solver_kwargs={"tol": TOL})
    model.fit(X, y)
    params = (np.zeros((n_features, 3), np.float32), np.log(y.mean(axis=0)))
    stepper = PopulationGLM(regularizer="Ridge", regularizer_strength=0.1)
    state = stepper.initialize_state(X, y, params)
    assert isinstance(state.precond, core_fit._Shared)
    for _ in range(30):
        params, state = stepper.update(params, state, X, y)
    np.testing.assert_allclose(params[0], model.coef_, atol=1e-3)


# ---------------------------------------------------------------------------------------------
# Memory estimate

MEASURE = """
import json, sys
import numpy as np
from distglm.core import FitConfig, PoissonObservations, fit as core_fit
from distglm.core.regularizers import Ridge
n_samples, n_features, n_neurons = map(int, sys.argv[1:4])
rng = np.random.default_rng(0)
X = rng.standard_normal((n_samples, n_features), dtype=np.float32) / np.float32(n_features ** 0.5)
y = rng.integers(0, 3, size=(n_samples, n_neurons), dtype=np.int32).astype(np.float32)
cfg = FitConfig(PoissonObservations(), "exp", Ridge(), "LBFGS", (("maxiter", 20),))
strength = np.full((n_features, n_neurons), 1e-3, np.float32)
core_fit.fit_block(X, y, np.ones((n_features, n_neurons), np.float32), cfg, strength=strength)
spec = core_fit.state_spec(cfg, n_samples, n_features, n_neurons, "float32", strength)
# VmHWM is this process's own peak; getrusage's ru_maxrss keeps the forking parent's across exec
hwm_kb = next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM:"))
print("PEAK " + json.dumps({
    "peak": hwm_kb * 1024,
    "state_per_neuron": sum(int(np.prod(s)) * 4 for s, _, per in spec.values() if per),
    "preconditioner": core_fit.choose_preconditioner(np.ones((n_features, 1)))}))
"""
# the estimate is within this factor of a real fit's peak RSS, either way
MEMORY_FACTOR = 1.5


def test_memory_estimate_against_the_peak_of_a_real_fit():
    shape = (20_000, 600, 64)
    env = {"XLA_FLAGS": "--xla_cpu_multi_thread_eigen=false", "PJRT_NPROC": "1", "OMP_NUM_THREADS": "1",
           "JAX_PLATFORMS": "cpu"}
    done = subprocess.run([sys.executable, "-c", MEASURE, *map(str, shape)], capture_output=True, text=True,
                          env={**os.environ, **env}, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    measured = json.loads(done.stdout.split("PEAK ", 1)[1])
    estimate = estimate_block_memory(*shape, preconditioner=measured["preconditioner"],
                                     state_bytes_per_neuron=measured["state_per_neuron"], base=PROCESS_BASE_BYTES)
    ratio = estimate.total / measured["peak"]
    assert 1 / MEMORY_FACTOR <= ratio <= MEMORY_FACTOR, (estimate, measured)


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 5000), st.integers(1, 300), st.integers(100, 200_000), st.integers(1, 5000),
       st.sampled_from(["cholesky", "shared", "diagonal", "none"]), st.integers(5 * 10**8, 10**11))
def test_largest_block_is_the_largest_that_fits(n_neurons, chunk, n_samples, n_features, kind, budget):
    def total(size):
        return estimate_block_memory(n_samples, n_features, size, preconditioner=kind).total

    try:
        size = largest_block(budget, n_neurons, chunk, n_samples, n_features, preconditioner=kind)
    except PlanError as err:
        assert total(chunk) > budget
        assert "more than" in str(err)
        return
    assert size % chunk == 0 and 0 < size <= -(-n_neurons // chunk) * chunk
    assert total(size) <= budget
    assert size + chunk > n_neurons or total(size + chunk) > budget


def test_estimate_grows_with_each_input():
    base = estimate_block_memory(10_000, 500, 64, preconditioner="cholesky")
    assert estimate_block_memory(20_000, 500, 64, preconditioner="cholesky").design > base.design
    assert estimate_block_memory(10_000, 500, 128, preconditioner="cholesky").responses > base.responses
    shared = estimate_block_memory(10_000, 500, 64, preconditioner="shared")
    # a shared factorisation does not grow with the block; a per-neuron one does
    assert shared.preconditioner * 32 < base.preconditioner
    assert base.total == base.base + base.design + base.responses + base.preconditioner + base.solver
    with pytest.raises(InputError, match="preconditioner must be one of"):
        estimate_block_memory(10, 5, 2, preconditioner="jacobi")


# ---------------------------------------------------------------------------------------------
# Distributed fits sized by memory


@pytest.mark.parametrize("value", [0, -5, True, 2.5e9, "4GB"])
def test_memory_per_actor_must_be_a_positive_number_of_bytes(value):
    with pytest.raises(InputError, match="memory_per_actor must be a positive integer"):
        check_fit_options(memory_per_actor=value)


@pytest.fixture(scope="module")
def local_ray():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


@pytest.mark.usefixtures("local_ray")
def test_distributed_blocks_are_sized_to_the_memory_budget(tmp_path):
    X, y = simulate(1000, 20, 64)
    path = distglm.write_inputs(tmp_path / "wide.zarr", X, y.astype(np.int32), neuron_chunk=16)
    model = PopulationGLM(regularizer="Ridge", regularizer_strength=0.01, solver_kwargs={"tol": TOL})
    # a budget that fits two chunks, not three; the counts are below 256, so actors hold them as uint8
    assert 0 <= y.min() and y.max() <= 255
    memory = dict(n_samples=core_fit.bucket_rows(1000, 1), n_features=20, preconditioner="cholesky",
                  queued_blocks=1, base=ACTOR_BASE_BYTES, y_itemsize=1)
    budget = (estimate_block_memory(**memory, n_neurons=32).total
              + estimate_block_memory(**memory, n_neurons=48).total) // 2
    # one actor's default plan is blocks of 48; the budget makes them 32
    assert plan_blocks(64, 16, num_actors=1)[0].size == 48
    report = distglm.fit(path, model, num_actors=1, memory_per_actor=int(budget), progress=False)
    assert stored_fingerprint(path)["block_size"] == 32
    assert report.n_blocks == 2 and report.n_fitted == 64
    assert report.memory_per_actor == budget and report.memory_estimate.total <= budget
    assert "memory per actor" in str(report)
    np.testing.assert_allclose(distglm.load_model(path).coef_, model.fit(X, y).coef_, atol=1e-3)

    # a budget below one chunk's estimate is refused before anything is written
    other = distglm.write_inputs(tmp_path / "small.zarr", X, y.astype(np.int32), neuron_chunk=16)
    with pytest.raises(PlanError, match="one chunk"):
        distglm.fit(other, model, memory_per_actor=10**8, progress=False)
    assert stored_fingerprint(other) is None
