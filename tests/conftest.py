import gc

import jax
import numpy as np
import pytest


@pytest.fixture(scope="module", autouse=True)
def _release_compiled_programs():
    """Drop every module's compiled programs once it is done.

    Each XLA executable keeps its own memory mappings, and JAX keeps every program it compiled:
    a single process that runs the whole suite would otherwise pass Linux's limit on mappings
    per process (``vm.max_map_count``, 65,530 by default), where LLVM can no longer allocate
    and the process crashes. Programs the next module needs again come from the persistent
    compilation cache.
    """
    yield
    jax.clear_caches()
    gc.collect()


@pytest.fixture(scope="module")
def x64():
    """float64 for every test of the module that asks for it, float32 again afterwards.

    Comparisons against NeMoS and statsmodels need tight tolerances; the switch is scoped so
    that tests elsewhere keep JAX's default precision.
    """
    with jax.enable_x64(True):
        yield


@pytest.fixture(scope="module")
def poisson_population():
    """Poisson counts of 3 neurons on 4 features, with a mask that drops 3 (feature, neuron) pairs.

    Returns ``(X, y, mask)`` of shapes (300, 4), (300, 3) and (4, 3).
    """
    rng = np.random.default_rng(20240611)
    n_samples, n_features, n_neurons = 300, 4, 3
    X = 0.5 * rng.normal(size=(n_samples, n_features))
    mask = np.ones((n_features, n_neurons))
    mask[0, 1] = mask[2, 2] = mask[3, 0] = 0
    weights = 0.4 * rng.normal(size=(n_features, n_neurons)) * mask
    y = rng.poisson(np.exp(X @ weights + 0.2)).astype(float)
    return X, y, mask
