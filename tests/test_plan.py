import doctest

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import distglm.plan
from distglm.errors import InputError, InputTypeError, PlanError
from distglm.plan import TARGET_BLOCK_NEURONS, Block, padded_size, plan_blocks

n_neurons_st = st.integers(1, 5000)
chunk_st = st.integers(1, 600)
actors_st = st.integers(1, 64)


def check_partition(blocks, n_neurons, neuron_chunk):
    """Blocks cover 0..n_neurons-1 once, in order, with ids 0..k-1, on chunk boundaries."""
    assert [b.id for b in blocks] == list(range(len(blocks)))
    assert blocks[0].start == 0
    assert blocks[-1].stop == n_neurons
    for before, after in zip(blocks, blocks[1:]):
        assert before.stop == after.start
    assert all(b.size > 0 for b in blocks)
    assert all(b.start % neuron_chunk == 0 for b in blocks)
    assert all(b.stop % neuron_chunk == 0 for b in blocks[:-1])


def check_sizes(blocks, block_size):
    assert all(b.size == block_size for b in blocks[:-1])
    assert 0 < blocks[-1].size <= block_size
    assert padded_size(blocks) == blocks[0].size == max(b.size for b in blocks)


@given(n_neurons_st, chunk_st, st.integers(1, 20), actors_st)
def test_explicit_block_size_partitions_population(n_neurons, neuron_chunk, n_chunks, num_actors):
    block_size = n_chunks * neuron_chunk
    blocks = plan_blocks(n_neurons, neuron_chunk, block_size, num_actors)
    check_partition(blocks, n_neurons, neuron_chunk)
    check_sizes(blocks, block_size)
    assert len(blocks) == -(-n_neurons // block_size)


def reference_block_size(n_neurons, neuron_chunk, num_actors):
    """The multiple of the chunk nearest 256, shrunk until there are 2 blocks per actor."""
    chunks = min(range(1, 600), key=lambda k: abs(k * neuron_chunk - TARGET_BLOCK_NEURONS))
    while chunks > 1 and -(-n_neurons // (chunks * neuron_chunk)) < 2 * num_actors:
        chunks -= 1
    return chunks * neuron_chunk


@given(n_neurons_st, chunk_st, actors_st)
def test_default_block_size(n_neurons, neuron_chunk, num_actors):
    blocks = plan_blocks(n_neurons, neuron_chunk, num_actors=num_actors)
    check_partition(blocks, n_neurons, neuron_chunk)
    block_size = reference_block_size(n_neurons, neuron_chunk, num_actors)
    assert blocks == plan_blocks(n_neurons, neuron_chunk, block_size)
    if -(-n_neurons // neuron_chunk) >= 2 * num_actors:
        assert len(blocks) >= 2 * num_actors
    else:
        # Too few neurons for two blocks per actor: one chunk per block, as many as possible.
        assert all(b.size == neuron_chunk for b in blocks[:-1])


def test_default_block_size_is_close_to_target():
    assert plan_blocks(10_000, 100)[0].size == 300
    assert plan_blocks(10_000, 64)[0].size == 256
    assert plan_blocks(10_000, 1000)[0].size == 1000
    assert plan_blocks(10_000, 1)[0].size == 256


def test_default_block_size_shrinks_for_actors():
    assert [b.size for b in plan_blocks(1000, 64, num_actors=4)] == [128] * 7 + [104]
    # Never below one chunk, even when the population allows fewer blocks than wanted.
    assert [b.size for b in plan_blocks(100, 64, num_actors=8)] == [64, 36]


def test_chunk_larger_than_population_gives_one_block():
    assert plan_blocks(10, 64) == [Block(0, 0, 10)]


def test_numpy_integers_accepted():
    blocks = plan_blocks(np.int64(10), np.int32(5), np.int64(5), np.int8(1))
    assert blocks == [Block(0, 0, 5), Block(1, 5, 10)]
    assert all(type(value) is int for block in blocks for value in block)


def test_block_size():
    assert Block(3, 100, 164).size == 64


def test_not_a_multiple_names_both_numbers():
    message = (
        "block_size=150 is not a multiple of the store's neuron chunk 100; "
        "use a multiple such as 100 or 200"
    )
    with pytest.raises(PlanError) as info:
        plan_blocks(1000, 100, block_size=150)
    assert str(info.value) == message
    with pytest.raises(PlanError, match="block_size=50 .* chunk 100; use a multiple such as 100$"):
        plan_blocks(1000, 100, block_size=50)


@given(chunk_st, st.integers(1, 5000))
def test_any_non_multiple_is_refused(neuron_chunk, block_size):
    if block_size % neuron_chunk == 0:
        plan_blocks(1000, neuron_chunk, block_size)
    else:
        with pytest.raises(PlanError, match=f"block_size={block_size} .* chunk {neuron_chunk}"):
            plan_blocks(1000, neuron_chunk, block_size)


@pytest.mark.parametrize(
    "kwargs, name",
    [
        ({"n_neurons": 10.0}, "n_neurons"),
        ({"n_neurons": "10"}, "n_neurons"),
        ({"neuron_chunk": True}, "neuron_chunk"),
        ({"neuron_chunk": None}, "neuron_chunk"),
        ({"block_size": 2.0}, "block_size"),
        ({"num_actors": 1.5}, "num_actors"),
    ],
)
def test_bad_types(kwargs, name):
    arguments = {"n_neurons": 10, "neuron_chunk": 2} | kwargs
    with pytest.raises(InputTypeError, match=f"{name} must be an int; got"):
        plan_blocks(**arguments)


@pytest.mark.parametrize(
    "kwargs, name",
    [
        ({"n_neurons": 0}, "n_neurons"),
        ({"neuron_chunk": -1}, "neuron_chunk"),
        ({"block_size": 0}, "block_size"),
        ({"num_actors": 0}, "num_actors"),
    ],
)
def test_non_positive(kwargs, name):
    arguments = {"n_neurons": 10, "neuron_chunk": 2} | kwargs
    with pytest.raises(InputError, match=f"{name} must be positive; got"):
        plan_blocks(**arguments)


def test_padded_size_of_empty_plan():
    with pytest.raises(InputError, match="at least one Block"):
        padded_size([])


def test_docstring_examples():
    assert doctest.testmod(distglm.plan).failed == 0


@given(st.integers(1, 10**8), st.integers(1, 5000), st.integers(1, 5000), st.sampled_from([4, 8]))
def test_streamed_chunks_are_bounded_in_bytes(row_chunk, n_features, n_neurons, itemsize):
    rows = distglm.plan.stream_rows(row_chunk, n_features, n_neurons, itemsize=itemsize)
    assert 1 <= rows <= row_chunk
    assert rows == 1 or rows * (n_features + n_neurons) * itemsize <= distglm.plan.STREAM_CHUNK_BYTES
    # no smaller than needed: twice the rows would be over the bound, or more than the stored chunk
    assert 2 * rows > row_chunk or 2 * rows * (n_features + n_neurons) * itemsize > distglm.plan.STREAM_CHUNK_BYTES


def test_stream_cache_is_the_budget_left_and_no_more_than_the_samples():
    cache = distglm.plan.stream_cache_bytes
    budget, p, n = 2 * 10**9, 100, 128
    rows = distglm.plan.stream_rows(2**16, p, n)
    resident = distglm.plan.estimate_block_memory(rows, p, n, base=distglm.plan.ACTOR_BASE_BYTES).total
    # long recordings: the cache is what the budget leaves, whatever their length
    assert cache(budget, 10**7, p, n, 2**16) == cache(budget, 10**8, p, n, 2**16) == budget - resident
    # a shorter one is cached whole (in whole chunks), and no more
    assert cache(budget, 10**6, p, n, 2**16) == -(-10**6 // rows) * rows * (p + n) * 4 < budget - resident
    assert cache(budget, 5_000, p, n, 5_000) == 5_000 * (p + n) * 4
    # a budget that leaves nothing caches nothing
    assert cache(resident, 10**6, p, n, 2**16) == 0
    with pytest.raises(InputError, match="budget"):
        cache(0, 10**6, p, n, 2**16)


def test_a_cross_validated_block_is_planned_with_its_folds_and_candidates():
    from distglm.plan import estimate_block_memory, largest_block

    plain = estimate_block_memory(20_000, 500, 128, preconditioner="shared")
    cv = estimate_block_memory(20_000, 500, 128, preconditioner="shared", cv_strengths=12)
    # 2 copies of X and 5 of the block's y, and 12 float64 strength arrays of (500, 128)
    assert cv.cv == (2 * 500 + 5 * 128) * 20_000 * 4 + 12 * 500 * 128 * 8
    assert cv.total == plain.total + cv.cv and plain.cv == 0
    assert "cv 0.14" in str(cv) and "cv" not in str(plain)
    budget = estimate_block_memory(20_000, 500, 512, preconditioner="shared").total
    assert largest_block(budget, 1024, 64, 20_000, 500, preconditioner="shared", cv_strengths=12) < \
        largest_block(budget, 1024, 64, 20_000, 500, preconditioner="shared")


def test_blocks_of_counts_held_narrow_are_planned_at_their_size():
    from distglm.plan import estimate_block_memory, largest_block

    floats = estimate_block_memory(50_000, 100, 256, queued_blocks=1)
    counts = estimate_block_memory(50_000, 100, 256, queued_blocks=1, y_itemsize=1)
    assert counts.responses * 4 == floats.responses and counts.design == floats.design
    assert counts.total == floats.total - floats.responses + counts.responses
    budget = floats.total
    assert largest_block(budget, 4096, 64, 50_000, 100, queued_blocks=1, y_itemsize=1) > \
        largest_block(budget, 4096, 64, 50_000, 100, queued_blocks=1)
    with pytest.raises(InputError, match="y_itemsize"):
        estimate_block_memory(50_000, 100, 256, y_itemsize=0)


# --- the default deadline of a block ------------------------------------------------------------


def test_block_timeout_grows_with_the_blocks_work():
    from distglm.plan import MIN_BLOCK_TIMEOUT_S, block_timeout

    # a modest block keeps the floor
    assert block_timeout(20_000, 50, 256) == MIN_BLOCK_TIMEOUT_S
    # above it, the deadline is linear in each dimension of the products
    long = block_timeout(2_000_000, 100, 512)
    assert long > MIN_BLOCK_TIMEOUT_S
    assert block_timeout(4_000_000, 100, 512) == pytest.approx(2 * long)
    assert block_timeout(2_000_000, 200, 512) == pytest.approx(2 * long)
    # streaming adds the reads; cross-validation multiplies by the fits of a block
    assert block_timeout(2_000_000, 100, 512, stream=True) > long
    assert block_timeout(2_000_000, 100, 512, candidates=61) == pytest.approx(61 * long)
    # the coupled fit that ran past a fixed 900 s: 200,000 samples, 3,002 features, 64 neurons
    assert block_timeout(200_000, 3_002, 64, stream=True) > 10 * MIN_BLOCK_TIMEOUT_S


@pytest.mark.parametrize("kwargs, name", [({"n_samples": 0}, "n_samples"), ({"candidates": 0}, "candidates"),
                                          ({"n_features": 1.5}, "n_features")])
def test_block_timeout_refuses_bad_sizes(kwargs, name):
    from distglm.plan import block_timeout

    args = {"n_samples": 100, "n_features": 5, "n_neurons": 8, **kwargs}
    with pytest.raises((InputError, InputTypeError), match=name):
        block_timeout(args.pop("n_samples"), args.pop("n_features"), args.pop("n_neurons"), **args)


def test_fit_options_take_no_block_timeout_or_a_positive_one():
    from distglm.scheduler import check_fit_options

    assert check_fit_options(block_timeout=None)["block_timeout"] is None
    assert check_fit_options(block_timeout=5.0)["block_timeout"] == 5.0
    for bad in (0, -1.0, True, "60"):
        with pytest.raises(InputError, match="block_timeout must be a positive number of seconds or None"):
            check_fit_options(block_timeout=bad)
