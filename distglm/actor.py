"""The Ray actor that fits blocks of neurons: loads X once, compiles once, writes to the store.

An actor receives the NaN-free design ``X`` once (through Ray's object store, zero-copy), and
for each block reads only that block's ``y`` and mask from the store, pads the block to the
common block size (so ``fit_block`` compiles once per actor), fits it with the shared core,
and writes the block's results into its own chunks before marking it done.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import threading
import time
from typing import Callable

import numpy as np

from . import store
from .compile_cache import enable_compilation_cache
from .plan import Block

__all__ = ["ACTOR_ENV", "BlockFitter", "FitSpec", "fit_one_block", "slice_strength"]

# One XLA thread per actor: actors are the unit of parallelism, and several multi-threaded
# XLA runtimes on one machine only fight over its cores. XLA's CPU client sizes its thread pool
# from PJRT_NPROC (the Eigen flag alone leaves one thread per core); with a pool of one thread,
# asynchronous dispatch keeps a second thread busy waiting, so dispatch is synchronous.
ACTOR_ENV = {
    "XLA_FLAGS": "--xla_cpu_multi_thread_eigen=false",
    "PJRT_NPROC": "1",
    "JAX_CPU_ENABLE_ASYNC_DISPATCH": "false",
    "JAX_PLATFORMS": "cpu",
    "OMP_NUM_THREADS": "1",
}


@dataclasses.dataclass(frozen=True)
class FitSpec:
    """What every actor of one fit needs to know, sent once from the driver to each actor.

    Attributes
    ----------
    path : str
        The store.
    model : dict
        The model's configuration (:func:`distglm.glm.model_to_config`, feature mask None: the
        store's mask is read block by block).
    pad_to : int
        The common block size; shorter blocks are padded with empty neurons.
    x64 : bool
        Whether the driver runs JAX in float64.
    inverse_link : callable or None
        The model's inverse link when it is a custom callable (a configuration names only the
        named links); Ray sends it to the actors by value.
    """

    path: str
    model: dict
    pad_to: int
    x64: bool
    inverse_link: Callable | None = None

    def build_model(self):
        """The model to fit, rebuilt from the configuration (and the custom link, if any)."""
        from .glm import model_from_config

        if self.inverse_link is None:
            return model_from_config(self.model)
        return model_from_config({**self.model, "inverse_link_function": None}).set_params(
            inverse_link_function=self.inverse_link)




def slice_strength(strength, start: int, stop: int, pad_to: int):
    """The block's slice of per-neuron strength arrays (neuron axis last), padded by repetition."""
    if strength is None:
        return None
    import jax

    def cut(a):
        a = np.asarray(a)[..., start:stop]
        if a.shape[-1] < pad_to:
            pad = [(0, 0)] * (a.ndim - 1) + [(0, pad_to - a.shape[-1])]
            a = np.pad(a, pad, mode="edge")
        return a

    return jax.tree_util.tree_map(cut, strength)


def fit_one_block(reader: store.InputsReader, writer: store.ResultsWriter, block: Block, X: np.ndarray,
                  keep: np.ndarray | None, config, strength, pad_to: int, solve_lock=None, gram=None) -> dict:
    """Fit one block of neurons and write its results; returns a small summary.

    With ``solve_lock``, only the solve holds it: another thread can read the next block and
    write the previous one while this block is solved.

    Parameters
    ----------
    reader, writer : InputsReader, ResultsWriter
        The store's inputs and results, held open across blocks.
    block : Block
        Neurons ``[block.start, block.stop)``.
    X : array of shape (n_kept_samples, n_features)
        Design matrix with NaN rows already dropped.
    keep : bool array of shape (n_samples,), or None when no row is dropped
    config : FitConfig
        The fit's static configuration (``PopulationGLM._fit_config()``).
    strength : the block's strength arrays of shape (..., pad_to) (neuron axis last), or None
    pad_to : int
        The common block size; shorter blocks are padded with empty neurons.
    gram : core.fit.DesignGram, optional
        The Gram matrix of ``X``, computed once per actor; default computed for this block.
    """
    import jax

    from .core import fit as core_fit

    t0 = time.perf_counter()
    n_real = block.stop - block.start
    # Padded neurons have no events and no features: they fail at initialisation and never
    # enter the solve, so the real neurons' results do not depend on padding. The block is cast
    # and padded in one buffer, so the stored block is the only other copy held.
    stored = reader.y_block(block.start, block.stop)
    y = np.zeros((X.shape[0], pad_to), dtype=X.dtype)
    y[:, :n_real] = stored if keep is None else stored[keep]
    del stored
    mask = np.zeros((X.shape[1], pad_to))
    mask[:, :n_real] = reader.mask_block(block.start, block.stop)
    dtype = X.dtype
    t_read = time.perf_counter() - t0

    with solve_lock or contextlib.nullcontext():
        t1 = time.perf_counter()
        result = core_fit.fit_block(X, y, mask.astype(dtype), config, strength=strength, gram=gram)
        jax.block_until_ready(result.state)
        t_solve = time.perf_counter() - t1
    del y, mask

    t2 = time.perf_counter()
    arrays = {
        name: np.asarray(getattr(result, name))[..., :n_real]
        for name in ("coef", "intercept", "scale", "dof_resid", "loss", "grad_norm", "n_iter", "converged", "status")
    }
    state = {}
    for name, (leaf, per_neuron) in core_fit.state_leaves(result.state).items():
        state[name] = leaf[..., :n_real] if per_neuron else leaf
    writer.write(block, arrays, state)
    t_write = time.perf_counter() - t2

    status = arrays["status"]
    failures = {
        int(block.start + i): core_fit.STATUS_REASONS[int(s)]
        for i, s in enumerate(status)
        if s != core_fit.STATUS_OK
    }
    return {
        "block": block.id,
        "n_neurons": n_real,
        "n_converged": int(np.sum(arrays["converged"])),
        "failures": failures,
        "read_s": t_read,
        "solve_s": t_solve,
        "write_s": t_write,
        "pid": os.getpid(),
    }


class BlockFitter:
    """Ray actor class body (wrapped with ``ray.remote`` by the scheduler).

    Parameters
    ----------
    spec : FitSpec
    X : array of shape (n_kept_samples, n_features)
        NaN-free design matrix; passed as an object reference, so it is read once per actor.
    keep : bool array of shape (n_samples,) or None
    """

    def __init__(self, spec: FitSpec, X, keep):
        import jax

        jax.config.update("jax_enable_x64", bool(spec.x64))
        # A persistent compilation cache lets a replacement actor, the second actor on a node
        # and a resumed fit load the compiled block fit instead of compiling it again.
        enable_compilation_cache()
        self._spec, self._X, self._keep = spec, X, keep
        self._config = spec.build_model()._fit_config()
        self._io = None
        self._gram = None
        self._n_blocks = 0
        # The scheduler gives an actor up to two blocks at once (it runs them in two threads):
        # one block is solved while the other is read or written; solves take turns.
        self._solve_lock = threading.Lock()
        self._lock = threading.Lock()

    def pid(self) -> int:
        return os.getpid()

    def fit(self, block: Block, strength) -> dict:
        """Fit ``block`` with its strength arrays (shape (..., pad_to)) and write its results."""
        t0 = time.perf_counter()
        with self._lock:
            if self._io is None:
                # Opened at the first block, once the driver has created the results.
                self._io = (store.InputsReader(self._spec.path), store.ResultsWriter(self._spec.path))
            if self._gram is None and self._config.preconditioned:
                from .core import fit as core_fit

                # the Gram matrix of the design serves every block of this actor
                self._gram = core_fit.DesignGram(self._X)
            # the first block of an actor pays for compilation; report it apart
            first, self._n_blocks = self._n_blocks == 0, self._n_blocks + 1
        reader, writer = self._io
        summary = fit_one_block(reader, writer, block, self._X, self._keep, self._config, strength,
                                self._spec.pad_to, self._solve_lock, self._gram)
        summary["first_block"] = first
        summary["total_s"] = time.perf_counter() - t0
        return summary
