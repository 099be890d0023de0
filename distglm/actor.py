"""The Ray actor that fits blocks of neurons: reads its data from the store, compiles once, writes.

An actor reads from the store itself, a stored chunk of samples at a time, dropping the NaN
rows the driver found. In memory, it reads the design ``X`` once into a buffer already padded
to the fit's shape bucket, and each block's ``y`` and mask into a padded buffer of the common
block size (so ``fit_block`` compiles once per actor and copies nothing). Streamed (long
recordings), it reads nothing up front: the shared core asks for X and y one chunk of samples
at a time during each pass, and the actor keeps the chunks that fit in its cache. Either way
it writes the block's results into its own chunks before marking it done.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import threading
import time
from typing import Callable

import numpy as np

from . import store
from .compile_cache import enable_compilation_cache
from .logs import log_to_stderr
from .plan import Block, stream_rows

__all__ = ["ACTOR_ENV", "BlockFitter", "actor_class", "FitSpec", "SampleReader", "cv_path_arrays", "fit_one_block",
           "select_block", "slice_strength", "stored_path", "history_stream_rows"]

_log = logging.getLogger(__name__)

# One XLA thread per actor: actors are the unit of parallelism, and several multi-threaded
# XLA runtimes on one machine only fight over its cores. XLA's CPU client sizes its thread pool
# from PJRT_NPROC (the Eigen flag alone leaves one thread per core); with a pool of one thread,
# asynchronous dispatch keeps a second thread busy waiting, so dispatch is synchronous. The
# host libraries are held to one thread each for the same reason: numpy's BLAS (the design's
# Gram), Zarr's pool that decodes chunks (by default as many threads as cores plus four) and
# Blosc's (as many as cores). An actor then uses the one core it asks Ray for, and two actors on
# two cores do not take turns on each other's. glibc's malloc gives each allocating thread an
# arena of its own (up to 8 per core) whose freed memory serves that arena alone: an actor's two
# block threads, Zarr's decoding and Ray's threads then kept freed read buffers resident in
# several heaps. Two arenas lowered the actor peak of a 1,024-neuron fit by about 80 MB. (A fixed
# mmap threshold also returns every freed buffer over it, but the page faults of each solve's
# temporary buffer cost about 5% of the solve, and the compiler's peak rose.)
ACTOR_ENV = {
    "XLA_FLAGS": "--xla_cpu_multi_thread_eigen=false",
    "PJRT_NPROC": "1",
    "JAX_CPU_ENABLE_ASYNC_DISPATCH": "false",
    "JAX_PLATFORMS": "cpu",
    "OMP_NUM_THREADS": "1",
    "OPENBLAS_NUM_THREADS": "1",
    "MKL_NUM_THREADS": "1",
    "ZARR_THREADING__MAX_WORKERS": "1",
    "BLOSC_NTHREADS": "1",
    "MALLOC_ARENA_MAX": "2",
}

# glibc's mallopt parameter for the arena limit (MALLOC_ARENA_MAX read at run time)
_M_ARENA_MAX = -8

_libc = None


def release_free_memory() -> bool:
    """Give the pages malloc holds free back to the system (glibc's ``malloc_trim``); False elsewhere.

    An actor reads a block's y a stored chunk at a time: each decoded chunk and the buffers of
    the previous block are freed into malloc's heaps, where glibc keeps them resident (its mmap
    threshold rises to the size of any large buffer freed, so later chunks of that size come
    from the heap too). Between blocks the actor trims: the free pages of every arena go back,
    and the next block's reads start from the memory the actor holds live (X, the other block's
    y and the solve's buffers). A trim takes 2-8 ms here; it returns nothing a live array uses.
    """
    global _libc
    if _libc is None:
        try:
            import ctypes

            _libc = ctypes.CDLL("libc.so.6")
            _libc.malloc_trim  # noqa: B018 - glibc's, absent from other C libraries
        except (OSError, AttributeError):
            _libc = False
    if not _libc:
        return False
    _libc.malloc_trim(0)
    return True


def actor_class() -> type:
    """The Ray actor class of a fit: a ``BlockFitter`` that sets ``ACTOR_ENV`` in its own process first.

    Every variable of ``ACTOR_ENV`` is read when its library loads (numpy's BLAS, JAX's CPU
    client, Zarr, Blosc), not when the process starts, except glibc's arena limit: a local Ray
    that distglm starts passes that one to its processes from the start
    (``connect._ray_process_environment``; set ``MALLOC_ARENA_MAX=2`` where a cluster's nodes run
    ``ray start``), and an actor that finds it unset sets it with ``mallopt``, for the arenas made
    from then on. So the actor applies them in ``__init__``, before it imports distglm, and
    needs no Ray ``runtime_env``: a ``runtime_env`` makes Ray start a dedicated
    worker process for each actor (about 1 s here), where an actor without one takes a worker
    Ray keeps started. The class is made here, inside a function, so that Ray ships it by value
    and unpickling it in the worker imports nothing of distglm; it is named ``BlockFitter``, the
    name Ray shows (``ray::BlockFitter.fit``). A worker that imported JAX or numpy before (one
    that ran other tasks) keeps the thread settings it loaded them with.
    """
    env = dict(ACTOR_ENV)
    arena_max = (_M_ARENA_MAX, int(env["MALLOC_ARENA_MAX"]))

    class BlockFitter:
        def __init__(self, spec=None):
            import os
            import sys

            # libraries this worker loaded before (they keep the settings they loaded with)
            self._loaded_before = sorted(m for m in ("jax", "numpy", "zarr") if m in sys.modules)
            os.environ.update(env)
            try:
                import ctypes

                ctypes.CDLL("libc.so.6").mallopt(*arena_max)
            except (OSError, AttributeError):  # not glibc
                pass
            from distglm.actor import BlockFitter as Fitter

            self._fitter = Fitter(spec)

        def configure(self, spec):
            return self._fitter.configure(spec)

        def pid(self):
            return self._fitter.pid()

        def fit(self, block, strength):
            return self._fitter.fit(block, strength)

        def environment(self):
            """The actor's ``ACTOR_ENV`` variables, and which of JAX, numpy and Zarr it had loaded
            before it set them (none, in a worker that ran nothing before)."""
            import os

            return {"env": {key: os.environ.get(key) for key in env}, "loaded_before": self._loaded_before}

    BlockFitter.__qualname__ = "BlockFitter"  # as Ray names the actor's class
    return BlockFitter


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
    dropped_rows : int array of shape (n_dropped,) or None
        The stored samples left out of the fit (a NaN in X or y), ascending; None: none.
    n_samples : int or None
        Samples fitted (stored samples less the dropped ones); None: the store's.
    stream : bool
        Whether actors stream the samples chunk by chunk rather than hold them.
    cache_bytes : int
        Memory a streaming actor may keep chunks of samples in (the driver sizes it to the
        actor's budget, ``plan.stream_cache_bytes``).
    fit_name : str or None
        The fit's name (its results in ``results/<name>/``); None for the store's unnamed fit.
    test_rows : int array of shape (n_held_out,) or None
        Stored samples held out of training (they are among ``dropped_rows`` too), ascending:
        each neuron is scored on them and its scores written with its results.
    standard_errors : bool
        Whether each block also writes its neurons' standard errors (``core.inference``).
    cv_grid : tuple of float or None
        For a ``PopulationGLMCV``: the candidate strengths, largest first, the same for every
        block (the default grid is computed by the driver from all the neurons).
    cv_folds : int array of shape (n_samples,), int8 array of shape (n_folds, n_samples), or None
        For a ``PopulationGLMCV``: the fold of each fitted sample (-1: never held out) when the
        folds partition the samples, else each sample's role in each fold (1 training, 2 held
        out, 0 neither), see :func:`distglm.cv.store_folds`.
    cv_stage : {None, "path", "refit"}
        None: each block is cross-validated, each neuron's strength selected and the block
        refitted in one go. A strength shared by the population is selected in two stages:
        "path" writes each block's path alone; "refit" refits each block at ``cv_index``.
    cv_index : int or None
        At the "refit" stage, the index in ``cv_grid`` of the strength the population selected.
    storage_options : dict or None
        fsspec options (credentials) for a store at a URL; held in memory only, left out of
        the spec's repr so that no log shows them.
    log_level : int or None
        The level at which the actors log a line per block to stderr (Ray forwards it to the
        driver and the job's log); None: they do not log.
    history : dict or None
        The fit's history features (``HistorySpec.to_json()``): each actor builds them, a chunk
        of samples at a time, from the stored y of every neuron, after the stored X's columns.
    counts_dtype : str or None
        "uint8" or "uint16" when every stored y is an integer count within that type's range
        (the driver checked them all): each block's y is then held in it, a quarter or a half of
        the float32 buffer, and the solve makes floats of it a chunk of rows at a time. None:
        blocks are held in the fit's float type.
    """

    path: str
    model: dict
    pad_to: int
    x64: bool
    inverse_link: Callable | None = None
    # left out of comparisons: an array's == is elementwise
    dropped_rows: np.ndarray | None = dataclasses.field(default=None, compare=False)
    n_samples: int | None = None
    stream: bool = False
    cache_bytes: int = 512 * 2**20
    fit_name: str | None = None
    test_rows: np.ndarray | None = dataclasses.field(default=None, compare=False)
    standard_errors: bool = False
    cv_grid: tuple | None = None
    cv_folds: np.ndarray | None = dataclasses.field(default=None, compare=False)
    cv_stage: str | None = None
    cv_index: int | None = None
    storage_options: dict | None = dataclasses.field(default=None, repr=False)
    log_level: int | None = None
    history: dict | None = None
    counts_dtype: str | None = None

    def build_model(self):
        """The model to fit, rebuilt from the configuration (and the custom link, if any)."""
        from .glm import model_from_config

        if self.inverse_link is None:
            return model_from_config(self.model)
        return model_from_config({**self.model, "inverse_link_function": None}).set_params(
            inverse_link_function=self.inverse_link)



def history_stream_rows(info: store.InputsInfo, n_features: int, n_neurons: int, itemsize: int) -> int:
    """Rows of a streamed chunk of a history fit's full design (``n_features`` columns: the stored
    ones and every neuron's K) and a block of ``n_neurons``: ``plan.stream_rows``."""
    return stream_rows(info.row_chunk or info.n_samples, n_features, n_neurons, itemsize=itemsize)


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


class SampleReader:
    """An actor's view of the store's samples, NaN rows dropped: X once, or chunks of both X and y.

    Parameters
    ----------
    reader : InputsReader
    spec : FitSpec
    dtype : numpy dtype
        The fit's float type.
    """

    def __init__(self, reader: store.InputsReader, spec: FitSpec, dtype):
        self.reader, self.dtype = reader, np.dtype(dtype)
        info = reader.info
        self.n_stored, self.n_features = info.n_samples, info.n_features
        self.history, self.own = None, False
        if spec.history is not None:
            from .history import HistorySpec

            self.history = HistorySpec.from_json(spec.history)
            self.n_features += info.n_neurons * self.history.n_basis_funcs
            # each neuron driven by its own past alone: the core's own features (K per neuron)
            # instead of the masked product over every neuron's K columns; a group lasso's groups
            # are laid out over the full feature axis, so it keeps the product
            self.own = (spec.model.get("regularizer") != "GroupLasso"
                        and np.array_equal(self.history.coupling_mask(info.n_neurons), np.eye(info.n_neurons)))
        self.n_samples = info.n_samples if spec.n_samples is None else spec.n_samples
        self.dropped = np.zeros(0, np.int64) if spec.dropped_rows is None else np.asarray(spec.dropped_rows)
        # a stored chunk of samples per read, or a part of one: the bytes of the chunks in flight
        # stay bounded whatever the recording's length
        from .core.fit import bucket_neurons

        n_block = bucket_neurons(spec.pad_to)
        width = self.n_features
        if self.history is not None and self.own:
            # the chunk holds the stored columns and each block neuron's own K history columns
            width += (n_block - info.n_neurons) * self.history.n_basis_funcs
        self.rows = stream_rows(info.row_chunk or info.n_samples, max(1, width), n_block,
                                itemsize=self.dtype.itemsize)
        self.cache_bytes = spec.cache_bytes
        self.counts_dtype = None if spec.counts_dtype is None else np.dtype(spec.counts_dtype)
        self._cache, self._cached = {}, 0
        self._design = None
        # an actor's two block threads may both ask for the design first
        self._design_lock = threading.Lock()
        self._gram = None
        self._gram_lock = threading.Lock()
        self._coef_shaped = None

    def _kept(self, row: int, stop: int) -> np.ndarray:
        """Bool array of shape (stop - row,): which stored samples ``[row, stop)`` are fitted."""
        keep = np.ones(stop - row, dtype=bool)
        lo, hi = np.searchsorted(self.dropped, [row, stop])
        keep[self.dropped[lo:hi] - row] = False
        return keep

    def _row_ranges(self, step: int | None = None):
        step = step or self.rows
        for row in range(0, self.n_stored, step):
            yield row, min(row + step, self.n_stored)

    def _fitted_rows(self, values: np.ndarray, row: int) -> np.ndarray:
        """``values`` (the stored samples from ``row`` on) without the dropped ones; no copy when none is."""
        keep = self._kept(row, row + len(values))
        return values if keep.all() else values[keep]

    @property
    def n_fit_features(self) -> int:
        """Coefficients per neuron in the solve: ``n_features``, or with own history features the
        stored features and the neuron's own K."""
        if self.own:
            return self.reader.info.n_features + self.history.n_basis_funcs
        return self.n_features

    def mask_block(self, start: int, stop: int) -> np.ndarray:
        """The 0/1 mask of neurons ``[start, stop)``, of shape (n_fit_features, stop - start): the stored
        mask, then the history features' (coupling mask repeated for each kernel; ones for own features)."""
        stored = self.reader.mask_block(start, stop)
        if self.history is None:
            return stored
        if self.own:
            return np.concatenate([stored, np.ones((self.history.n_basis_funcs, stop - start), stored.dtype)])
        coupling = self.history.coupling_mask(self.reader.info.n_neurons)[:, start:stop]
        return np.concatenate([stored, np.repeat(coupling, self.history.n_basis_funcs, axis=0)])

    def own_rows(self, a: np.ndarray, start: int) -> np.ndarray:
        """Rows of ``a`` (..., n_features, n) laid out over the full feature axis, taken for the
        solve with own features: the stored features' and neuron ``start + j``'s own K, shape
        (..., n_fit_features, n). Neurons past the store (padding) take the last neuron's."""
        n_stored, k = self.reader.info.n_features, self.history.n_basis_funcs
        neurons = np.minimum(start + np.arange(a.shape[-1]), self.reader.info.n_neurons - 1)
        own = a[..., n_stored + neurons[None, :] * k + np.arange(k)[:, None], np.arange(a.shape[-1])]
        return np.concatenate([a[..., :n_stored, :], own], axis=-2)

    def full_rows(self, a: np.ndarray, start: int) -> np.ndarray:
        """The inverse of :meth:`own_rows`: ``a`` (..., n_fit_features, n) over the full feature axis,
        zeros at the other neurons' history features. An array of the solver's stacked
        parameters (..., n_fit_features + 1, n) keeps its last row (the intercepts') last."""
        n_stored, k = self.reader.info.n_features, self.history.n_basis_funcs
        extra = a.shape[-2] - self.n_fit_features
        out = np.zeros(a.shape[:-2] + (self.n_features + extra, a.shape[-1]), a.dtype)
        out[..., :n_stored, :] = a[..., :n_stored, :]
        neurons = start + np.arange(a.shape[-1])
        out[..., n_stored + neurons[None, :] * k + np.arange(k)[:, None], np.arange(a.shape[-1])] = \
            a[..., n_stored:n_stored + k, :]
        out[..., self.n_features:, :] = a[..., self.n_fit_features:, :]
        return out

    def coef_shaped(self, config, strength, n_cols: int) -> frozenset:
        """Names of the solver state's leaves laid out over the features (coefficient-shaped, or
        stacked with the intercepts), which :meth:`full_rows` lays out for the store: those whose
        shape changes with the number of features. Found once, from the state's shapes alone."""
        if self._coef_shaped is None:
            import jax

            from .core.fit import state_spec

            def like(n):
                # the strength arrays (coefficient-shaped) for n features and n_cols neurons
                return jax.tree_util.tree_map(lambda a: np.ones((n, n_cols)), strength)

            specs = [state_spec(config, 8, n, n_cols, self.dtype, like(n))
                     for n in (self.n_fit_features, self.n_fit_features + 1)]
            self._coef_shaped = frozenset(name for name in specs[0] if specs[0][name][0] != specs[1][name][0])
        return self._coef_shaped

    def _history_rows(self, row: int, stop: int, first_neuron: int = 0, last_neuron: int | None = None) -> np.ndarray:
        """History features of the stored samples ``[row, stop)`` of neurons ``[first_neuron, last_neuron)``
        (default all), of shape (stop - row, n * K), neuron-major.

        Read from the ``window_size`` samples before ``row`` on: a window may reach into the
        previous stored chunk. Samples before the first have no history (zeros here; the
        driver drops every sample whose window is not whole, or holds a NaN).
        """
        from .history import history_rows

        last_neuron = self.reader.info.n_neurons if last_neuron is None else last_neuron
        window = self.history.window_size
        first = max(row - window, 0)
        past = np.zeros((stop - 1 - (row - window), last_neuron - first_neuron), np.float64)
        if stop - 1 > first:
            past[first - (row - window):] = self.reader.y_block(first_neuron, last_neuron, slice(first, stop - 1))
        np.nan_to_num(past, copy=False, nan=0.0)
        return history_rows(past, self.history.kernels)

    def design(self, n_cols: int):
        """X without its NaN rows, padded with zero rows to the fit's bucket: a JAX array, read once.

        Of shape (bucket_rows(n_samples, n_cols), n_features).
        """
        with self._design_lock:
            if self._design is None:
                import jax

                from .core.fit import bucket_rows, device_buffer

                X = device_buffer((bucket_rows(self.n_samples, n_cols), self.n_features), self.dtype)
                at = 0
                for row, stop in self._row_ranges():
                    values = self._fitted_rows(self.reader.X_rows(slice(row, stop)), row)
                    X[at:at + len(values)] = values
                    at += len(values)
                self._design = jax.device_put(X)
                # the decoded chunks of X (stored dtype) are freed: back to the system
                release_free_memory()
        return self._design

    def gram(self, n_cols: int):
        """The Gram matrix of the design (``core.fit.DesignGram``), computed once for every block."""
        X = self.design(n_cols)
        with self._gram_lock:
            if self._gram is None:
                from .core.fit import DesignGram

                self._gram = DesignGram(np.asarray(X), self.n_samples)
        return self._gram

    def responses(self, start: int, stop: int, n_rows: int, n_cols: int, counts: bool = False) -> np.ndarray:
        """The y of neurons ``[start, stop)`` without NaN rows, in a zero buffer of shape (n_rows, n_cols).

        Of the fit's float type; with ``counts``, of ``counts_dtype`` where the spec gives one
        (``core.fit.fit_block`` takes such counts as they are).
        """
        from .core.fit import device_buffer

        dtype = self.counts_dtype if counts and self.counts_dtype is not None else self.dtype
        y = device_buffer((n_rows, n_cols), dtype)
        # one stored chunk at a time, whole: the stored dtype is never held for the whole block,
        # and no chunk is decoded twice (a chunk's bytes are bounded when the store is written)
        width = self.reader.info.neuron_chunk
        for first in range(start, stop, width):
            last, at = min(first + width, stop), 0
            for row, end in self._row_ranges(self.reader.info.row_chunk):
                values = self._fitted_rows(self.reader.y_block(first, last, slice(row, end)), row)
                y[at:at + len(values), first - start:last - start] = values
                at += len(values)
        return y

    def _chunk(self, key, make):
        found = self._cache.get(key)
        if found is None:
            found = make()
            # the first chunks of a pass stay; passes run in order, so evicting older chunks
            # for newer ones would make every read a miss once the data outgrow the cache
            if self._cached + found.nbytes <= self.cache_bytes:
                self._cache[key] = found
                self._cached += found.nbytes
        return found

    def _rows_of(self, i: int) -> tuple:
        """Streamed chunk ``i``: its first stored sample, one past its last, and which of its
        ``self.rows`` rows are fitted samples (rows past the recording are not)."""
        row = i * self.rows
        end = min(row + self.rows, self.n_stored)
        keep = np.zeros(self.rows, dtype=bool)
        keep[:end - row] = self._kept(row, end)
        return row, end, keep

    def _design_chunk(self, i: int) -> np.ndarray:
        """Streamed chunk ``i`` of the design every block shares: the stored X, and the history
        features of every neuron unless each block builds its own; rows not fitted are zero."""
        row, end, keep = self._rows_of(i)
        n_stored = self.reader.info.n_features
        X = np.zeros((self.rows, n_stored if self.own else self.n_features), self.dtype)
        X[:end - row, :n_stored] = self.reader.X_rows(slice(row, end))
        if self.history is not None and not self.own:
            X[:end - row, n_stored:] = self._history_rows(row, end)
        X[~keep] = 0.0
        return X

    def streamed_gram(self):
        """The Gram matrix of the streamed design (``core.fit.DesignGram``), computed once for
        every block, a chunk at a time (the chunks stay in the cache for the solves' passes).
        Not for blocks with their own history features, whose Gram matrices differ by neuron."""
        with self._gram_lock:
            if self._gram is None:
                from .core.fit import DesignGram

                n_chunks = -(-self.n_stored // self.rows)
                self._gram = DesignGram.from_chunks(
                    (self._chunk(("X", i), lambda i=i: self._design_chunk(i)) for i in range(n_chunks)),
                    self.n_samples)
        return self._gram

    def source(self, start: int, stop: int, n_cols: int):
        """The samples of neurons ``[start, stop)`` as a ``ChunkSource`` of ``n_cols`` neurons (zeros past stop)."""
        from .core.fit import ChunkSource

        rows, rows_of = self.rows, self._rows_of
        n_X = self.reader.info.n_features if self.own else self.n_features

        def read_own(i):
            # the block's neurons' own history, (rows, K, n_cols)
            row, end, keep = rows_of(i)
            k = self.history.n_basis_funcs
            own = np.zeros((rows, k, n_cols), self.dtype)
            own[:end - row, :, :stop - start] = self._history_rows(row, end, start, stop).reshape(
                end - row, stop - start, k).transpose(0, 2, 1)
            own[~keep] = 0.0
            return own

        def read_y(i):
            row, end, keep = rows_of(i)
            y = np.zeros((rows, n_cols), self.dtype)
            y[:end - row, :stop - start] = self.reader.y_block(start, stop, slice(row, end))
            y[~keep] = 0.0
            return y

        def read(i):
            chunk = (self._chunk(("X", i), lambda: self._design_chunk(i)),
                     self._chunk(("y", start, i), lambda: read_y(i)), rows_of(i)[2])
            return chunk + (self._chunk(("own", start, i), lambda: read_own(i)),) if self.own else chunk

        return ChunkSource(read, n_chunks=-(-self.n_stored // rows), rows=rows, n_features=n_X,
                           n_neurons=n_cols, n_valid=self.n_samples,
                           n_own=self.history.n_basis_funcs if self.own else 0)

    def samples_at(self, index: np.ndarray, start: int, stop: int) -> tuple[np.ndarray, np.ndarray]:
        """X and the y of neurons ``[start, stop)`` at the stored samples ``index`` (ascending), read a
        stored chunk of samples at a time: arrays of shape (len(index), n_features), (len(index), stop - start)."""
        X = np.zeros((len(index), self.n_features), self.dtype)
        y = np.zeros((len(index), stop - start), self.dtype)
        for row, end in self._row_ranges():
            lo, hi = np.searchsorted(index, [row, end])
            if lo < hi:
                at = index[lo:hi] - row
                X[lo:hi] = self.reader.X_rows(slice(row, end))[at]
                y[lo:hi] = self.reader.y_block(start, stop, slice(row, end))[at]
        return X, y

    def forget(self, start: int) -> None:
        """Drop the cached chunks of y (and own features) of the block starting at neuron ``start``."""
        for key in [key for key in self._cache if key[0] in ("y", "own") and key[1] == start]:
            self._cached -= self._cache.pop(key).nbytes


def cv_path_arrays(data: SampleReader, block: Block, model, config, grid: np.ndarray, folds: np.ndarray,
                   pad_to: int) -> dict:
    """Cross-validate the candidate strengths on one block of neurons: the block's path arrays.

    The same path as ``PopulationGLMCV.fit`` runs over all the neurons (``core.cv.cv_path``),
    here over the block's, padded with empty neurons to ``pad_to``.

    Parameters
    ----------
    data : SampleReader
    block : Block
    model : PopulationGLMCV
        The model (its scoring).
    config : FitConfig
    grid : array of shape (n_strengths,), largest first
    folds : array, the folds (``FitSpec.cv_folds``: labels or per-fold roles)
    pad_to : int

    Returns
    -------
    dict
        ``cv_model_terms``, ``cv_status`` (and ``cv_null_terms`` for the pseudo-R2 scores), of
        shape (n_strengths, n_folds, block.size): the path arrays of :data:`distglm.store.CV_NAMES`.
    """
    from .core import cv as core_cv
    from .core import fit as core_fit
    from .cv import stored_folds

    n_real, n_features = block.size, data.n_features
    X = np.asarray(data.design(core_fit.bucket_neurons(pad_to)))[:data.n_samples]
    y = data.responses(block.start, block.stop, data.n_samples, pad_to)
    mask = np.zeros((n_features, pad_to), data.dtype)
    mask[:, :n_real] = data.reader.mask_block(block.start, block.stop)
    candidates = [model._selected_strength(s, n_features, pad_to) for s in grid]
    path = core_cv.cv_path(X, y, mask, config, candidates, stored_folds(folds, data.n_samples),
                           model.scoring)
    arrays = {"cv_model_terms": np.asarray(path.model)[..., :n_real], "cv_status": np.asarray(path.status)[..., :n_real]}
    if path.null is not None:
        arrays["cv_null_terms"] = np.asarray(path.null)[..., :n_real]
    return arrays


def stored_path(arrays: dict):
    """The ``core.cv.PathScores`` of stored path arrays (:func:`cv_path_arrays`' or a store's results)."""
    from .core.cv import PathScores

    return PathScores(arrays["cv_model_terms"], arrays.get("cv_null_terms"), arrays["cv_status"])


def select_block(model, grid: np.ndarray, path: dict, n_features: int, pad_to: int, index: int | None = None):
    """Each neuron's selected strength: its own (``index`` None) or the population's ``index``.

    Returns the refit's strength arrays of shape (..., pad_to) and the block's cross-validation
    arrays (``path`` with ``cv_index`` and ``cv_strength`` of shape (block.size,)).
    """
    from .core import cv as core_cv

    n_real = path["cv_status"].shape[-1]
    if index is None:
        _, _, selected = core_cv.select(stored_path(path), model.scoring, True, model.selection)
        strength = slice_strength(model._selected_strength(grid[selected], n_features, n_real), 0, n_real, pad_to)
    else:
        # one strength for all (GroupLasso's is one per group, never sliced by neuron)
        selected = np.full(n_real, index)
        strength = model._selected_strength(grid[index], n_features, pad_to)
    return strength, {**path, "cv_index": selected, "cv_strength": grid[selected]}


def fit_one_block(data: SampleReader, writer: store.ResultsWriter, block: Block, config, strength, pad_to: int,
                  stream: bool = False, solve_lock=None, test_rows: np.ndarray | None = None,
                  standard_errors: bool = False, cv_arrays: dict | None = None) -> dict:
    """Fit one block of neurons and write its results; returns a small summary.

    With ``solve_lock``, only the solve holds it: another thread can read the next block and
    write the previous one while this block is solved.

    Parameters
    ----------
    data : SampleReader
        The store's samples, held open across blocks.
    writer : ResultsWriter
        The store's results, held open across blocks.
    block : Block
        Neurons ``[block.start, block.stop)``.
    config : FitConfig
        The fit's static configuration (``PopulationGLM._fit_config()``).
    strength : the block's strength arrays of shape (..., pad_to) (neuron axis last), or None
    pad_to : int
        The common block size; shorter blocks are padded with empty neurons.
    stream : bool
        Stream the samples chunk by chunk (``core.fit_streamed``) instead of holding them.
    test_rows : int array, optional
        Stored samples held out of training (``FitSpec.test_rows``); the block's neurons are
        scored on them.
    standard_errors : bool
        Also write the neurons' standard errors, from the training samples (not when streaming).
    cv_arrays : dict, optional
        The block's cross-validation results (:func:`select_block`), written with the
        refit's and covered by the same done marker.
    """
    import jax

    from .core import cv as core_cv
    from .core import fit as core_fit
    from .core import inference

    t0 = time.perf_counter()
    n_real = block.stop - block.start
    # Padded neurons have no events and no features: they fail at initialisation (or, with an
    # identity link, fit to zero) and never change the real neurons' results. The buffers have
    # the padded shape the core compiles for, so it uses them without a copy.
    n_cols = core_fit.bucket_neurons(pad_to)
    mask = np.zeros((data.n_fit_features, n_cols), data.dtype)
    mask[:, :n_real] = data.mask_block(block.start, block.stop)
    y = None
    if not stream:
        X = data.design(n_cols)
        y = data.responses(block.start, block.stop, X.shape[0], n_cols, counts=True)
    t_read = time.perf_counter() - t0

    with solve_lock or contextlib.nullcontext(0) as turn:
        t1 = time.perf_counter()
        if stream:
            n_other = 0
            if data.own:
                strength = jax.tree_util.tree_map(lambda s: data.own_rows(np.asarray(s), block.start), strength)
                n_other = data.n_features - data.n_fit_features
            try:
                # the design's Gram matrix is the same for every block: computed once per actor
                gram = data.streamed_gram() if config.preconditioned and not data.own else None
                result = core_fit.fit_streamed(data.source(block.start, block.stop, n_cols), mask, config,
                                               strength=strength, n_other=n_other, gram=gram)
            finally:
                data.forget(block.start)
        else:
            # on the device without a copy (an aligned buffer), and no longer written here
            y = jax.device_put(y)
            gram = data.gram(n_cols) if config.preconditioned else None
            result = core_fit.fit_block(X, y, mask, config, strength=strength, n_samples=data.n_samples, gram=gram)
            del y
        jax.block_until_ready(result.state)
        t_solve = time.perf_counter() - t1

    t2 = time.perf_counter()
    arrays = {
        name: np.asarray(getattr(result, name))[..., :n_real]
        for name in ("coef", "intercept", "scale", "dof_resid", "loss", "grad_norm", "n_iter", "converged", "status")
    }
    state = {}
    for name, (leaf, per_neuron) in core_fit.state_leaves(result.state).items():
        state[name] = leaf[..., :n_real] if per_neuron else leaf
        if data.own and name in data.coef_shaped(config, strength, n_cols):
            # stored over the full feature axis, as the masked product's are
            state[name] = data.full_rows(state[name], block.start)
    if data.own:
        arrays["coef"] = data.full_rows(arrays["coef"], block.start)
    if standard_errors:
        X_fit = np.asarray(data.design(n_cols))[:data.n_samples]
        arrays["coef_se"], arrays["intercept_se"] = inference.standard_errors(
            config, X_fit, mask[:, :n_real], arrays["coef"], arrays["intercept"], arrays["scale"])
    del mask
    if test_rows is not None:
        X_test, y_test = data.samples_at(test_rows, block.start, block.stop)
        scores = core_cv.heldout_scores(config, X_test, y_test, arrays["coef"], arrays["intercept"], arrays["scale"])
        arrays.update({store.HELDOUT_NAMES[score_type]: value for score_type, value in scores.items()})
    arrays.update(cv_arrays or {})
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
        "solve_turn": turn,
    }


# The longest an actor's first solve waits for another process's compilation before it compiles
# the program itself.
COMPILE_WAIT_S = 300.0


class _SolveTurns:
    """An actor's solve lock: its blocks' solves take turns, and ``with`` gives the turn's number.

    Turn 0 compiles the solve. With two blocks in flight, the block that reaches the actor first
    is not always the first to be solved (the other may finish reading sooner).

    With a local persistent compilation cache (``cache_dir``), turn 0 also holds a file lock in
    it, so that the actors of one machine compile one at a time: the first compiles and writes
    the program to the cache, the next loads it from there (a tenth of a second) instead of
    compiling it again beside the first (two compilations on two cores each took 3.5 s, where
    one takes 2 s). A turn waits at most ``COMPILE_WAIT_S`` for the lock, then goes on without it.
    """

    def __init__(self, cache_dir: str | None = None):
        self._lock = threading.Lock()
        self._turns = 0
        self._lock_path = None
        if cache_dir and "://" not in cache_dir:
            with contextlib.suppress(OSError):
                os.makedirs(cache_dir, exist_ok=True)
                self._lock_path = os.path.join(cache_dir, ".distglm-compile.lock")
        self._held = None

    def __enter__(self) -> int:
        self._lock.acquire()
        turn, self._turns = self._turns, self._turns + 1
        if turn == 0 and self._lock_path is not None:
            self._held = _file_lock(self._lock_path, COMPILE_WAIT_S)
        return turn

    def __exit__(self, *exc) -> None:
        if self._held is not None:
            self._held.close()  # closing the file releases its lock
            self._held = None
        self._lock.release()


def _file_lock(path: str, wait_s: float):
    """The open file ``path`` with an exclusive lock on it, or None when none came within ``wait_s``
    (or the file cannot be opened). Closing the file, or the process's end, releases the lock."""
    import fcntl

    try:
        f = open(path, "a")
    except OSError:
        return None
    deadline = time.monotonic() + wait_s
    while True:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return f
        except OSError:
            if time.monotonic() >= deadline:
                f.close()
                return None
            time.sleep(0.02)


class BlockFitter:
    """Ray actor class body (wrapped with ``ray.remote`` by the scheduler).

    Parameters
    ----------
    spec : FitSpec or None
        None for an actor started before the driver knew the fit (it overlaps the driver's
        checks of the inputs): :meth:`configure` gives it the spec before its first block.
    """

    def __init__(self, spec: FitSpec | None = None):
        # A persistent compilation cache lets a replacement actor, the second actor on a node
        # and a resumed fit load the compiled block fit instead of compiling it again.
        cache_dir = enable_compilation_cache()
        self._io = None
        self._n_blocks = 0
        # The scheduler gives an actor up to two blocks at once (it runs them in two threads):
        # one block is solved while the other is read or written; solves take turns.
        self._solve_lock = _SolveTurns(cache_dir)
        self._lock = threading.Lock()
        if spec is not None:
            self.configure(spec)

    def configure(self, spec: FitSpec) -> int:
        """Take the fit's spec; returns the actor's pid. Called once, before the first block."""
        import jax

        jax.config.update("jax_enable_x64", bool(spec.x64))
        if spec.log_level is not None:
            log_to_stderr(spec.log_level)
        self._spec = spec
        self._model = spec.build_model()
        self._config = self._model._fit_config()
        return os.getpid()

    def pid(self) -> int:
        return os.getpid()

    def fit(self, block: Block, strength) -> dict:
        """Fit ``block`` with its strength arrays (shape (..., pad_to)) and write its results.

        A cross-validated fit (``spec.cv_grid``) takes None: each neuron's strength is selected here.
        """
        try:
            return self._fit(block, strength)
        finally:
            # the block's y, its read buffers and the solve's temporaries are freed: back to the
            # system, so that the next block's reads do not add to memory kept from this one
            release_free_memory()

    def _fit(self, block: Block, strength) -> dict:
        t0 = time.perf_counter()
        with self._lock:
            if self._io is None:
                # Opened at the first block, once the driver has created the results.
                with store.using_storage_options(self._spec.path, self._spec.storage_options):
                    dtype = np.float64 if self._spec.x64 else np.float32
                    self._io = (SampleReader(store.InputsReader(self._spec.path), self._spec, dtype),
                                store.ResultsWriter(self._spec.path, self._spec.fit_name))
            # the first block of an actor pays for compilation; report it apart
            first, self._n_blocks = self._n_blocks == 0, self._n_blocks + 1
        data, writer = self._io
        spec, cv_arrays = self._spec, None
        if spec.cv_grid is not None:
            grid = np.asarray(spec.cv_grid)
            if spec.cv_stage == "refit":
                with store.using_storage_options(spec.path, spec.storage_options):
                    stored = store.read_results(spec.path, block.start, block.stop, spec.fit_name)
                path = {key: stored[key] for key in store.CV_PATH_NAMES if key in stored}
            else:
                t1 = time.perf_counter()
                # the path's solves take turns with the other block's like the refit's
                with self._solve_lock:
                    path = cv_path_arrays(data, block, self._model, self._config, grid, spec.cv_folds, spec.pad_to)
                if spec.cv_stage == "path":
                    t2 = time.perf_counter()
                    writer.write_path(block, path)
                    return {"block": block.id, "n_neurons": block.size, "n_converged": 0, "failures": {},
                            "read_s": 0.0, "solve_s": t2 - t1, "write_s": time.perf_counter() - t2,
                            "pid": os.getpid(), "first_block": first, "total_s": time.perf_counter() - t0}
            strength, cv_arrays = select_block(self._model, grid, path, data.n_features, spec.pad_to, spec.cv_index)
        summary = fit_one_block(data, writer, block, self._config, strength, spec.pad_to, spec.stream,
                                self._solve_lock, test_rows=spec.test_rows, standard_errors=spec.standard_errors,
                                cv_arrays=cv_arrays)
        turn = summary.pop("solve_turn")
        # the solve that compiled: the first turn (a cross-validated block compiles its path first)
        first = first if cv_arrays is not None else turn == 0
        summary["first_block"] = first
        summary["total_s"] = time.perf_counter() - t0
        _log.info("block %d: neurons %d-%d, %d converged, %d failed or not converged, %.2f s (read %.2f, "
                  "solve %.2f%s, write %.2f)", block.id, block.start, block.stop - 1, summary["n_converged"],
                  len(summary["failures"]), summary["total_s"], summary["read_s"], summary["solve_s"],
                  " with compilation" if first else "", summary["write_s"])
        return summary
