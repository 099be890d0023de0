"""Pure planning: split a population of neurons into blocks aligned with the store's chunks.

A block is the unit of work an actor fits and writes. Zarr only promises safe concurrent
writes to *different* chunks, so every block boundary except the population's end is a
multiple of the store's neuron chunk: two blocks never share a chunk, and actors can write
their blocks at the same time without locks.

This module knows nothing of Zarr, JAX or Ray; it works on integers only.
"""

from __future__ import annotations

import numbers
from typing import NamedTuple

from distglm.errors import InputError, InputTypeError, PlanError

__all__ = ["Block", "plan_blocks", "padded_size", "TARGET_BLOCK_NEURONS"]

#: Neurons per block the default plan aims for: large enough that one compiled solve does
#: real work, small enough that a lost block is cheap to redo.
TARGET_BLOCK_NEURONS = 256


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
