"""Pure planning: split a population of neurons into blocks aligned with the store's chunks.

A block is the unit of work an actor fits and writes. Zarr only promises safe concurrent
writes to *different* chunks, so every block boundary except the population's end is a
multiple of the store's neuron chunk: two blocks never share a chunk, and actors can write
their blocks at the same time without locks.

It also estimates the peak memory of a process fitting a block (:func:`estimate_block_memory`)
so that the plan can choose the largest block that fits a memory budget
(:func:`largest_block`). The constants of the estimate were measured with real fits (peak RSS
of a fresh process fitting one block with LBFGS, float32, 20,000 to 100,000 samples, 50 to
2,000 features, 32 to 128 neurons, each preconditioner); ``benchmarks/bench_wide.py`` records
the estimate beside the measured peak.

For actors that stream their samples it sizes the chunks they read (:func:`stream_rows`) and
the cache they keep between passes (:func:`stream_cache_bytes`) from the same budget.

This module knows nothing of Zarr, JAX or Ray; it works on integers only.
"""

from __future__ import annotations

import numbers
from typing import NamedTuple

from distglm.errors import InputError, InputTypeError, PlanError

__all__ = ["Block", "MemoryEstimate", "estimate_block_memory", "largest_block", "plan_blocks", "padded_size",
           "stream_rows", "stream_cache_bytes", "TARGET_BLOCK_NEURONS", "PROCESS_BASE_BYTES", "ACTOR_BASE_BYTES",
           "STREAM_CHUNK_BYTES", "MIN_BLOCK_TIMEOUT_S", "block_timeout"]

#: Neurons per block the default plan aims for: large enough that one compiled solve does
#: real work, small enough that a lost block is cheap to redo.
TARGET_BLOCK_NEURONS = 256


#: Peak RSS of a fresh Python process that imports distglm and JAX and fits a tiny block
#: (compiled solve included), measured; the actors of a Ray fit add Ray's worker on top.
PROCESS_BASE_BYTES = 450_000_000
#: The same for a Ray actor (``ray::BlockFitter``), measured with the actors of a fit of a tiny
#: population (200 samples, 128 neurons; ``benchmarks/results/bench_large.md``).
ACTOR_BASE_BYTES = 660_000_000

# Copies of each array a block's fit holds at its peak, fitted to the peak RSS of real fits
# (least squares over 12 fits, rounded up; the Gram matrix's checked again up to 4,000 features
# by benchmarks/bench_wide.py): the design (the caller's X, the padded copy, the device copy), a
# block of y (the caller's, the padded float copy, the device copy and the (n_samples,
# n_neurons) predictions of the scale estimate), the preconditioner (the target, its factor and
# the inverse), the solver state (the loop's two states), and the Gram matrix (numpy's product,
# the device copy, the restricted matrix and its eigenbasis).
_DESIGN_COPIES = 4
_RESPONSE_COPIES = 4
_PRECONDITIONER_COPIES = 5
_STATE_COPIES = 2
_GRAM_COPIES = 4
# A block queued on an actor beside the one being solved holds its stored and padded y.
_QUEUED_RESPONSE_COPIES = 2
# What a cross-validating actor holds beside a plain fit's arrays (``core.cv.cv_path`` over a
# block): each fold's training and held-out rows of X and y, the fold fits' own copies of them
# and the held-out predictions, and one float64 strength array of shape (n_features, n_neurons)
# per candidate. The copies are solved from peak-RSS measurements at two shapes (X the larger
# array, then y: -0.4 to 1.4 copies of X and 3.6 to 4.3 of y over three runs, the peak of a
# process varying by some 40 MB from run to run) and rounded up with a margin;
# benchmarks/bench_cv_memory.py records them.
_CV_DESIGN_COPIES = 2
_CV_RESPONSE_COPIES = 5
_CV_STRENGTH_ITEMSIZE = 8
# Arrays of (n_features + 1) per neuron in the default LBFGS state: ten pairs of history
# vectors and the iterate's gradient and direction (the scalars per neuron are negligible).
_LBFGS_STATE_VECTORS = 22


class MemoryEstimate(NamedTuple):
    """Estimated peak resident memory, in bytes, of a process fitting one block of neurons.

    Attributes
    ----------
    total : int
        The sum of the parts below.
    base : int
        Python, JAX, the compiled solve (and Ray's worker, for an actor).
    design : int
        ``X``, its copies and its Gram matrix.
    responses : int
        The block's ``y``, its copies and the per-sample temporaries.
    preconditioner : int
        The change of variables and its factorisation.
    solver : int
        The solver state and its copies.
    cv : int
        For a cross-validated fit, what its path adds: the folds' copies of X and y and the
        candidates' strength arrays (0 otherwise).
    """

    total: int
    base: int
    design: int
    responses: int
    preconditioner: int
    solver: int
    cv: int = 0

    def __str__(self) -> str:
        parts = ", ".join(f"{name} {getattr(self, name) / 1e9:.2f}"
                          for name in ("base", "design", "responses", "preconditioner", "solver", "cv")
                          if name != "cv" or self.cv)
        return f"{self.total / 1e9:.2f} GB ({parts})"


def estimate_block_memory(n_samples, n_features, n_neurons, *, itemsize=4, preconditioner="cholesky",
                          state_bytes_per_neuron=None, queued_blocks=0,
                          base=PROCESS_BASE_BYTES, cv_strengths=0, y_itemsize=None) -> MemoryEstimate:
    """Estimate the peak resident memory of a process fitting one block of ``n_neurons``.

    Parameters
    ----------
    n_samples, n_features, n_neurons : int
        Shape of the block's fit: ``X`` is (n_samples, n_features), ``y`` (n_samples, n_neurons).
    itemsize : int
        Bytes per float (4 for float32, 8 for float64).
    preconditioner : {"cholesky", "shared", "diagonal", "none"}
        The change of variables the fit uses (``distglm.core.choose_preconditioner``); "none"
        for solvers that are not preconditioned.
    state_bytes_per_neuron : int, optional
        Bytes of the solver state per neuron (``distglm.core.state_spec``); default the
        default LBFGS's.
    queued_blocks : int
        Further blocks held while this one is solved (an actor reads the next block and writes
        the last one meanwhile).
    base : int
        Memory of the process before the data: ``PROCESS_BASE_BYTES`` or ``ACTOR_BASE_BYTES``.
    cv_strengths : int
        Candidate strengths of a cross-validated block (``PopulationGLMCV``), 0 for a plain
        fit: the folds' rows of X and y are copied (about 2 copies of X and 5 of the block's y at
        the peak, measured), and every candidate has a float64 strength array of shape
        (n_features, n_neurons).
    y_itemsize : int, optional
        Bytes per response held for the solve; default ``itemsize``. Counts held as uint8 or
        uint16 (``core.fit.NARROW_COUNTS``) take 1 or 2; the candidates of a cross-validated
        block are fitted on float copies whatever this is.

    Returns
    -------
    MemoryEstimate

    Examples
    --------
    >>> est = estimate_block_memory(20_000, 1000, 128, preconditioner="shared")
    >>> round(est.total / 1e9, 2), round(est.design / 1e9, 2)
    (0.87, 0.34)
    >>> round(estimate_block_memory(20_000, 1000, 128, preconditioner="shared", cv_strengths=12).cv / 1e9, 2)
    0.22
    """
    n_samples, n_features, n_neurons = _check_sizes(n_samples, n_features, n_neurons)
    itemsize = _check_int(itemsize, "itemsize", minimum=1)
    y_itemsize = itemsize if y_itemsize is None else _check_int(y_itemsize, "y_itemsize", minimum=1)
    queued_blocks = _check_int(queued_blocks, "queued_blocks", minimum=0)
    cv_strengths = _check_int(cv_strengths, "cv_strengths", minimum=0)
    base = _check_int(base, "base", minimum=0)
    params = n_features + 1
    if preconditioner not in _PRECONDITIONER_SIZES:
        raise InputError(f"preconditioner must be one of {tuple(_PRECONDITIONER_SIZES)}; got {preconditioner!r}")
    if state_bytes_per_neuron is None:
        state_bytes_per_neuron = _LBFGS_STATE_VECTORS * params * itemsize
    state_bytes_per_neuron = _check_int(state_bytes_per_neuron, "state_bytes_per_neuron", minimum=0)
    gram = params * params * itemsize if preconditioner != "none" else 0
    design = _DESIGN_COPIES * n_samples * n_features * itemsize + _GRAM_COPIES * gram
    responses = (_RESPONSE_COPIES + _QUEUED_RESPONSE_COPIES * queued_blocks) * n_samples * n_neurons * y_itemsize
    pre = _PRECONDITIONER_COPIES * _PRECONDITIONER_SIZES[preconditioner](params, n_neurons) * itemsize
    solver = _STATE_COPIES * state_bytes_per_neuron * n_neurons
    cv = 0
    if cv_strengths:
        cv = ((_CV_DESIGN_COPIES * n_features + _CV_RESPONSE_COPIES * n_neurons) * n_samples * itemsize
              + cv_strengths * n_features * n_neurons * _CV_STRENGTH_ITEMSIZE)
    return MemoryEstimate(base + design + responses + pre + solver + cv, base, design, responses, pre, solver, cv)


_PRECONDITIONER_SIZES = {
    "cholesky": lambda params, n: n * params * params,
    "shared": lambda params, n: params * params + params * n,
    "diagonal": lambda params, n: params * n,
    "none": lambda params, n: 0,
}


def largest_block(budget, n_neurons, neuron_chunk, n_samples, n_features, **estimate) -> int:
    """The largest block (a multiple of ``neuron_chunk``) whose estimated peak fits ``budget``.

    Parameters
    ----------
    budget : int
        Bytes a process fitting a block may use.
    n_neurons, neuron_chunk : int
        As in :func:`plan_blocks`; the answer is at most ``n_neurons`` rounded up to whole chunks.
    n_samples, n_features : int
        Shape of ``X``.
    **estimate
        Keyword arguments of :func:`estimate_block_memory`.

    Returns
    -------
    int

    Raises
    ------
    PlanError
        If not even one chunk of neurons fits: the message gives the estimate and the budget.

    Examples
    --------
    >>> largest_block(2_000_000_000, 1000, 64, 20_000, 1000, preconditioner="shared")
    1024
    >>> largest_block(1_000_000_000, 1000, 64, 20_000, 1000, preconditioner="shared")
    320
    """
    budget = _check_int(budget, "budget", minimum=1)
    n_neurons = _check_int(n_neurons, "n_neurons", minimum=1)
    neuron_chunk = _check_int(neuron_chunk, "neuron_chunk", minimum=1)
    most = -(-n_neurons // neuron_chunk)

    def fits(chunks: int) -> bool:
        return estimate_block_memory(n_samples, n_features, chunks * neuron_chunk, **estimate).total <= budget

    if not fits(1):
        one = estimate_block_memory(n_samples, n_features, neuron_chunk, **estimate)
        raise PlanError(
            f"a block of one chunk ({neuron_chunk} neurons) of {n_samples} samples x {n_features} features needs "
            f"about {one}, more than the {budget / 1e9:.2f} GB a process may use; give each actor more memory "
            f"(memory_per_actor=, or fewer actors per node), store y in smaller neuron chunks, or use fewer samples"
        )
    low, high = 1, most
    while low < high:
        mid = (low + high + 1) // 2
        if fits(mid):
            low = mid
        else:
            high = mid - 1
    return low * neuron_chunk


#: Bytes of one chunk of samples (X and a block's y, in the fit's float type) that a streaming
#: actor reads at a time: enough rows that each read does real work, few enough that the chunks
#: in flight stay a small part of its memory whatever the recording's length.
STREAM_CHUNK_BYTES = 32 * 2**20


def stream_rows(row_chunk, n_features, n_neurons, *, itemsize=4) -> int:
    """Samples per chunk a streaming actor reads: the store's chunk of samples, halved until X and a
    block's y in it take at most ``STREAM_CHUNK_BYTES`` (or one sample is left).

    Parameters
    ----------
    row_chunk : int
        Samples per stored chunk (the whole recording when it is stored in one chunk).
    n_features, n_neurons : int
        Columns of X (history features included) and neurons of the (padded) block.
    itemsize : int
        Bytes per float of the fit.

    Returns
    -------
    int

    Examples
    --------
    >>> stream_rows(2**16, 100, 512), stream_rows(20_000, 100, 128)
    (8192, 20000)
    """
    row_chunk = _check_int(row_chunk, "row_chunk", minimum=1)
    per_row = (_check_int(n_features, "n_features", minimum=1) + _check_int(n_neurons, "n_neurons", minimum=1)) \
        * _check_int(itemsize, "itemsize", minimum=1)
    halvings = max(0, -(-row_chunk * per_row // STREAM_CHUNK_BYTES) - 1).bit_length()
    return max(1, -(-row_chunk >> halvings))


def stream_cache_bytes(budget, n_samples, n_features, n_neurons, row_chunk, *, itemsize=4, **estimate) -> int:
    """Bytes of chunks of samples a streaming actor keeps between passes: what its budget leaves
    beside the chunks in flight and the solve, and no more than the samples themselves.

    The chunks in flight and the solve are estimated as a fit of one chunk of samples held in
    memory (:func:`estimate_block_memory` of ``stream_rows`` samples); what is left of ``budget``
    holds cached chunks, so an actor's peak stays near ``budget`` however long the recording,
    and a recording that fits is read once.

    Parameters
    ----------
    budget : int
        Bytes an actor may use.
    n_samples : int
        Stored samples (the recording's length).
    n_features, n_neurons, row_chunk, itemsize
        As in :func:`stream_rows`.
    **estimate
        Further keyword arguments of :func:`estimate_block_memory` (``preconditioner``,
        ``state_bytes_per_neuron``, ``base``: default ``ACTOR_BASE_BYTES``).

    Returns
    -------
    int
        0 when the budget leaves nothing to cache: every pass then reads the store again.

    Examples
    --------
    >>> stream_cache_bytes(2_000_000_000, 10**6, 100, 128, 2**16) // 2**20
    883
    >>> stream_cache_bytes(2_000_000_000, 10**4, 100, 128, 10**4) // 2**20
    8
    """
    budget = _check_int(budget, "budget", minimum=1)
    n_samples = _check_int(n_samples, "n_samples", minimum=1)
    rows = stream_rows(row_chunk, n_features, n_neurons, itemsize=itemsize)
    estimate.setdefault("base", ACTOR_BASE_BYTES)
    resident = estimate_block_memory(rows, n_features, n_neurons, itemsize=itemsize, **estimate).total
    data = -(-n_samples // rows) * rows * (n_features + n_neurons) * itemsize
    return max(0, min(budget - resident, data))


#: The shortest default deadline of a block (seconds): generous for any block of a modest
#: recording, whose own estimate below is shorter.
MIN_BLOCK_TIMEOUT_S = 900.0
# The default deadline's assumptions, deliberately pessimistic: a slow core's rate for the
# design's products, a slow store's rate for streamed reads, and the evaluations of a long fit.
_SLOW_FLOPS = 5e9
_SLOW_READ_BYTES_PER_S = 100e6
_DEADLINE_EVALUATIONS = 200


def block_timeout(n_samples, n_features, n_neurons, *, stream=False, candidates=1, itemsize=4) -> float:
    """The default deadline of a block (seconds): the longest a healthy actor could take.

    An evaluation of a block's objective is two products with the design, ``4 * n_samples *
    n_features * n_neurons`` flops, and, when the samples are streamed, a read of the block's
    chunks of X and y. The deadline allows 200 evaluations per candidate fit at 5 GFLOP/s (a
    sixth of one core's rate here) and 100 MB/s, and at least ``MIN_BLOCK_TIMEOUT_S``: long or wide recordings get a
    deadline that grows with their size instead of a fixed one that kills healthy blocks.

    Parameters
    ----------
    n_samples, n_features, n_neurons : int
        Samples fitted, columns of the block's design (history features included) and the
        block's (padded) neurons.
    stream : bool
        Whether the actor streams the samples from the store.
    candidates : int
        Fits per block: the candidate strengths times the folds when cross-validating, else 1.
    itemsize : int
        Bytes per float of the fit.

    Returns
    -------
    float

    Examples
    --------
    >>> block_timeout(20_000, 50, 256)
    900.0
    >>> round(block_timeout(1_000_000, 100, 512, stream=True))  # about 3.6 hours
    13088
    """
    n_samples, n_features, n_neurons = _check_sizes(n_samples, n_features, n_neurons)
    candidates = _check_int(candidates, "candidates", minimum=1)
    itemsize = _check_int(itemsize, "itemsize", minimum=1)
    evaluation = 4 * n_samples * n_features * n_neurons / _SLOW_FLOPS
    if stream:
        evaluation += n_samples * (n_features + n_neurons) * itemsize / _SLOW_READ_BYTES_PER_S
    return max(MIN_BLOCK_TIMEOUT_S, _DEADLINE_EVALUATIONS * candidates * evaluation)


class Block(NamedTuple):
    """A contiguous block of neurons ``[start, stop)``.

    Attributes
    ----------
    id : int
        Position of the block in its plan, from 0; also the index of its ``done`` marker.
    start : int
        First neuron of the block.
    stop : int
        One past the last neuron of the block.

    Examples
    --------
    >>> Block(id=1, start=256, stop=300).size
    44
    """

    id: int
    start: int
    stop: int

    @property
    def size(self) -> int:
        """Number of neurons in the block, ``stop - start``."""
        return self.stop - self.start


def _check_sizes(n_samples, n_features, n_neurons) -> tuple[int, int, int]:
    """The three sizes of a block's fit, each checked to be a positive integer."""
    return (_check_int(n_samples, "n_samples", minimum=1), _check_int(n_features, "n_features", minimum=1),
            _check_int(n_neurons, "n_neurons", minimum=1))


def _check_int(value, name: str, *, minimum: int | None = None) -> int:
    """Return ``value`` as a Python int, refusing bools, floats and values below ``minimum``.

    Bools are refused although they are ints, because ``block_size=True`` is always a mistake.
    """
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise InputTypeError(f"{name} must be an int; got {type(value).__name__} {value!r}")
    value = int(value)
    if minimum is not None and value < minimum:
        expected = "positive" if minimum == 1 else f">= {minimum}"
        raise InputError(f"{name} must be {expected}; got {value}")
    return value


def _default_block_size(n_neurons: int, neuron_chunk: int, num_actors: int) -> int:
    chunks_per_block = max(1, int(TARGET_BLOCK_NEURONS / neuron_chunk + 0.5))
    # Fewer than two blocks per actor leaves actors idle while the last blocks run, so shrink
    # blocks (one chunk at a time) until there are enough, or until a block is one chunk.
    while chunks_per_block > 1:
        n_blocks = -(-n_neurons // (chunks_per_block * neuron_chunk))
        if n_blocks >= 2 * num_actors:
            break
        chunks_per_block -= 1
    return chunks_per_block * neuron_chunk


def plan_blocks(n_neurons, neuron_chunk, block_size=None, num_actors=1) -> list[Block]:
    """Split neurons ``0 .. n_neurons - 1`` into contiguous blocks aligned with the chunks.

    Every block has ``block_size`` neurons except possibly the last, which is shorter. Every
    boundary except the final stop is a multiple of ``neuron_chunk``, so no two blocks share a
    Zarr chunk.

    Parameters
    ----------
    n_neurons : int
        Number of neurons in the population, positive.
    neuron_chunk : int
        Chunk length along neurons of the store's ``y`` (and of every result array), positive.
    block_size : int or None, optional
        Neurons per block, a positive multiple of ``neuron_chunk``. By default a multiple of the
        chunk close to 256 neurons (at least one chunk), made smaller when that gives fewer
        than ``2 * num_actors`` blocks and a smaller multiple gives more (never below one
        chunk).
    num_actors : int, optional
        Number of actors that will fit the blocks; only shapes the default ``block_size``.

    Returns
    -------
    list of Block
        Blocks with ids ``0 .. k - 1``, in order of neurons, covering every neuron once.

    Raises
    ------
    InputTypeError
        If an argument is not an int.
    InputError
        If an argument is not positive.
    PlanError
        If ``block_size`` is not a multiple of ``neuron_chunk``.

    Examples
    --------
    >>> [b.size for b in plan_blocks(1000, 100)]
    [300, 300, 300, 100]
    >>> plan_blocks(250, 100, block_size=200)
    [Block(id=0, start=0, stop=200), Block(id=1, start=200, stop=250)]
    >>> [b.size for b in plan_blocks(1000, 64, num_actors=4)]
    [128, 128, 128, 128, 128, 128, 128, 104]
    """
    n_neurons = _check_int(n_neurons, "n_neurons", minimum=1)
    neuron_chunk = _check_int(neuron_chunk, "neuron_chunk", minimum=1)
    num_actors = _check_int(num_actors, "num_actors", minimum=1)
    if block_size is None:
        block_size = _default_block_size(n_neurons, neuron_chunk, num_actors)
    else:
        block_size = _check_int(block_size, "block_size", minimum=1)
        if block_size % neuron_chunk:
            lower = block_size // neuron_chunk * neuron_chunk
            suggestion = f"{lower} or {lower + neuron_chunk}" if lower else f"{neuron_chunk}"
            raise PlanError(
                f"block_size={block_size} is not a multiple of the store's neuron chunk "
                f"{neuron_chunk}; use a multiple such as {suggestion}"
            )
    return [
        Block(id=i, start=start, stop=min(start + block_size, n_neurons))
        for i, start in enumerate(range(0, n_neurons, block_size))
    ]


def padded_size(blocks) -> int:
    """Return the common block length the actors compile for: the largest block's size.

    Shorter blocks (the last one) are padded to this length so that one compiled solve fits
    every block.

    Parameters
    ----------
    blocks : sequence of Block
        A non-empty plan, as returned by :func:`plan_blocks`.

    Returns
    -------
    int
        ``max(block.size for block in blocks)``.

    Raises
    ------
    InputError
        If ``blocks`` is empty.

    Examples
    --------
    >>> padded_size(plan_blocks(250, 100, block_size=200))
    200
    """
    blocks = list(blocks)
    if not blocks:
        raise InputError("blocks must hold at least one Block; got an empty plan")
    return max(block.size for block in blocks)
