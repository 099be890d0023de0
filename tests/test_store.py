import doctest
import multiprocessing
import os

import numpy as np
import pytest
import zarr

import distglm.store
from distglm.errors import InputError, InputTypeError, PlanError, StoreError
from distglm.plan import Block, plan_blocks
from distglm.store import (
    RESULT_NAMES,
    STATUS_UNWRITTEN,
    create_results,
    done_blocks,
    nan_rows,
    open_inputs,
    read_attrs,
    read_fingerprint,
    read_mask_block,
    read_results,
    read_state,
    read_X,
    read_y_block,
    scan_y,
    write_attrs,
    write_block,
    write_inputs,
)


def snapshot(path):
    """Every file under a local store, with its bytes: equal snapshots mean an unchanged store."""
    files = {}
    for directory, _, names in os.walk(path):
        for name in names:
            full = os.path.join(directory, name)
            with open(full, "rb") as handle:
                files[os.path.relpath(full, path)] = handle.read()
    return files


def make_inputs(n_samples=30, n_features=4, n_neurons=50, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n_samples, n_features))
    y = rng.poisson(2.0, size=(n_samples, n_neurons)).astype(np.int32)
    mask = (rng.random((n_features, n_neurons)) < 0.7).astype(np.int64)
    return X, y, mask


@pytest.fixture
def store(tmp_path):
    X, y, mask = make_inputs()
    return write_inputs(tmp_path / "fit.zarr", X, y, mask, neuron_chunk=10), (X, y, mask)


# --- inputs: round trips ----------------------------------------------------------------------


def test_round_trip_keeps_integer_y(store):
    path, (X, y, mask) = store
    assert isinstance(path, str)
    info = open_inputs(path)
    assert info[:8] == (30, 4, 50, 10, np.dtype(np.int32), True, None, np.dtype(np.float64))
    assert len(info.generation) == 32
    np.testing.assert_array_equal(read_X(path), X)
    block = read_y_block(path, 10, 30)
    assert block.dtype == np.int32
    np.testing.assert_array_equal(block, y[:, 10:30])
    mask_block = read_mask_block(path, 40, 50)
    assert mask_block.dtype == np.float64
    np.testing.assert_array_equal(mask_block, mask[:, 40:50])
    group = zarr.open_group(path, mode="r")
    assert group["inputs/y"].chunks == (30, 10)
    assert group["inputs/feature_mask"].chunks == (4, 10)
    assert group["inputs/feature_mask"].dtype == np.uint8
    assert group["inputs/X"].chunks == (30, 4)


def test_float_and_bool_dtypes(tmp_path):
    X = np.arange(12, dtype=np.float32).reshape(6, 2)
    y = np.eye(6, 3, dtype=bool)
    path = write_inputs(tmp_path / "a.zarr", X, y)
    info = open_inputs(path)
    assert (info.X_dtype, info.y_dtype, info.has_mask) == (np.float32, np.uint8, False)
    np.testing.assert_array_equal(read_y_block(path, 0, 3), y.astype(np.uint8))
    np.testing.assert_array_equal(read_mask_block(path, 1, 3), np.ones((2, 2)))
    # Integer X is a design matrix all the same: stored as float64.
    path = write_inputs(tmp_path / "b.zarr", X.astype(int), y.astype(np.float16))
    assert open_inputs(path).X_dtype == np.float64
    assert open_inputs(path).y_dtype == np.float16


def test_dict_X_and_mask(tmp_path):
    rng = np.random.default_rng(1)
    X = {"stim": rng.normal(size=(20, 3)), "history": rng.normal(size=(20, 2))}
    y = rng.poisson(1.0, size=(20, 7))
    mask = {"stim": np.array([1, 0, 1, 1, 0, 1, 1]), "history": np.ones(7, dtype=bool)}
    path = write_inputs(tmp_path / "fit.zarr", X, y, mask)
    info = open_inputs(path)
    assert info.feature_groups == (("stim", 3), ("history", 2))
    assert info.n_features == 5
    np.testing.assert_array_equal(read_X(path), np.concatenate([X["stim"], X["history"]], axis=1))
    expected = np.concatenate([np.repeat(mask["stim"][None], 3, 0), np.ones((2, 7))])
    np.testing.assert_array_equal(read_mask_block(path, 0, 7), expected)
    assert zarr.open_group(path, mode="r")["inputs"].attrs["feature_groups"] == [
        ["stim", 3],
        ["history", 2],
    ]


@pytest.mark.parametrize(
    "n_samples, n_neurons, dtype, expected",
    [
        (10, 100, np.int64, 64),  # small chunks everywhere: capped at 64 neurons
        (10, 5, np.int64, 5),  # fewer neurons than a chunk
        (10, 20, np.int64, 16),  # rounded down to a multiple of 8
        (60_000, 20, np.float64, 16),  # 32 MiB hold 69 neurons: capped at 20, rounded down to 16
        (65_536, 100, np.float64, 64),  # 32 MiB hold exactly 64 neurons
        (300_000, 20, np.float64, 16),  # chunks of 2**16 samples: as for a short recording
        (1_500_000, 3, np.float64, 3),  # a long recording no longer forces narrow chunks
    ],
)
def test_default_neuron_chunk(tmp_path, n_samples, n_neurons, dtype, expected):
    y = np.zeros((n_samples, n_neurons), dtype=dtype)
    path = write_inputs(tmp_path / "fit.zarr", np.zeros((n_samples, 1)), y)
    info = open_inputs(path)
    assert info.neuron_chunk == expected
    # long recordings are chunked along time as well, short ones are not
    assert info.row_chunk == min(n_samples, 2**16)


class SliceOnly:
    """A y that can only be read in column slices no wider than ``max_columns``."""

    def __init__(self, array, max_columns):
        self.array, self.max_columns, self.widths = array, max_columns, []
        self.shape, self.dtype = array.shape, array.dtype

    def __getitem__(self, key):
        rows, columns = key
        width = len(range(*columns.indices(self.shape[1])))
        assert width <= self.max_columns, "write_inputs read y whole"
        self.widths.append(width)
        return self.array[key]

    def __array__(self, *args, **kwargs):
        raise AssertionError("write_inputs converted y whole")


def test_large_y_is_written_in_slices(tmp_path, monkeypatch):
    monkeypatch.setattr(distglm.store.inputs, "_WRITE_SLICE_BYTES", 2 * 50 * 4 * 8)
    y = np.arange(50 * 37, dtype=np.int64).reshape(50, 37)
    lazy = SliceOnly(y, max_columns=8)
    path = write_inputs(tmp_path / "fit.zarr", np.ones((50, 2)), lazy, neuron_chunk=4)
    assert lazy.widths == [8, 8, 8, 8, 5]
    np.testing.assert_array_equal(read_y_block(path, 0, 37), y)


def test_memmap_and_zarr_y(tmp_path):
    y = np.arange(40, dtype=np.float32).reshape(8, 5)
    memmap = np.lib.format.open_memmap(tmp_path / "y.npy", mode="w+", dtype=y.dtype, shape=y.shape)
    memmap[:] = y
    path = write_inputs(tmp_path / "a.zarr", np.ones((8, 1)), memmap, neuron_chunk=2)
    np.testing.assert_array_equal(read_y_block(path, 0, 5), y)
    source = zarr.create_array(str(tmp_path / "y.zarr"), shape=y.shape, dtype=y.dtype,
                               chunks=(3, 3))
    source[:] = y
    path = write_inputs(tmp_path / "b.zarr", np.ones((8, 1)), source, neuron_chunk=2)
    np.testing.assert_array_equal(read_y_block(path, 2, 5), y[:, 2:])


def test_scan_y_streams_chunks(store):
    path, (_, y, _) = store
    seen = []
    scan_y(path, lambda start, stop, chunk: seen.append((start, stop, chunk.copy())))
    assert [(start, stop) for start, stop, _ in seen] == [(i, i + 10) for i in range(0, 50, 10)]
    np.testing.assert_array_equal(np.concatenate([chunk for *_, chunk in seen], axis=1), y)
    with pytest.raises(InputTypeError, match="chunk_fn must be callable"):
        scan_y(path, None)


def test_nan_rows(tmp_path):
    X, y = np.ones((6, 2)), np.ones((6, 25))
    X[1, 0] = np.nan
    y[4, 24] = np.nan
    path = write_inputs(tmp_path / "a.zarr", X, y, neuron_chunk=8)
    np.testing.assert_array_equal(nan_rows(path), [False, True, False, False, True, False])
    path = write_inputs(tmp_path / "b.zarr", X, np.ones((6, 3), dtype=int))
    np.testing.assert_array_equal(nan_rows(path), [False, True, False, False, False, False])


def test_read_range_checked(store):
    path, _ = store
    for start, stop in [(-1, 3), (5, 5), (0, 51), (7, 2)]:
        with pytest.raises(InputError, match=r"0 <= start < stop <= n_neurons=50"):
            read_y_block(path, start, stop)
    with pytest.raises(InputTypeError, match="start must be an int"):
        read_mask_block(path, 0.0, 3)


# --- inputs: refusals leave the store unchanged -----------------------------------------------

X0, Y0, MASK0 = make_inputs(n_samples=5, n_features=3, n_neurons=4)
DICT_X = {"a": np.ones((5, 2)), "b": np.ones((5, 1))}
BAD_INPUTS = [
    ({"X": np.ones(5)}, InputError,
     r"X must be 2-D of shape \(n_samples, n_features\); got shape \(5,\)"),
    ({"X": np.array([["a"]] * 5)}, InputTypeError, "X must be array-like of numbers; got an array of dtype <U1"),
    ({"X": np.array([[1.0, np.inf, 0]] * 5)}, InputError,
     "X must be finite .* inf at row 0, column 1"),
    ({"X": np.ones((0, 3)), "y": np.ones((0, 4))}, InputError, "at least one sample"),
    ({"y": np.ones(5)}, InputError,
     r"y must be 2-D of shape \(n_samples, n_neurons\); got shape \(5,\)"),
    ({"y": np.ones((5, 4), dtype=complex)}, InputTypeError,
     "y must be a numeric array .* complex128"),
    ({"y": np.ones((6, 4))}, InputError, r"X has 5 samples but y has shape \(6, 4\)"),
    ({"feature_mask": np.ones((4, 3))}, InputError,
     r"shape \(n_features, n_neurons\) = \(3, 4\); got shape \(4, 3\)"),
    ({"feature_mask": np.full((3, 4), 2)}, InputError,
     r"only 0s and 1s; got .*2.* at index \(0, 0\)"),
    ({"feature_mask": np.full((3, 4), np.nan)}, InputError, "only 0s and 1s; got .*nan"),
    ({"feature_mask": {"a": np.ones(4)}}, InputTypeError,
     "X must be a dict of arrays with the same keys"),
    ({"X": DICT_X, "feature_mask": np.ones((3, 4))}, InputTypeError,
     "feature_mask must be a dict"),
    ({"X": DICT_X, "feature_mask": {"a": np.ones(4), "c": np.ones(4)}}, InputError,
     r"missing \['b'\], unexpected \['c'\]"),
    ({"X": DICT_X, "feature_mask": {"a": np.ones(4), "b": np.ones(3)}}, InputError,
     r"feature_mask\['b'\] must have shape \(n_neurons,\) = \(4,\)"),
    ({"X": {"a": np.ones((5, 2)), "b": np.ones((4, 1))}}, InputError,
     "same n_samples; got {'a': 5, 'b': 4}"),
    ({"X": {"a": np.ones((5, 0))}}, InputError, "at least one column"),
    ({"X": {1: np.ones((5, 1))}}, InputTypeError, "names must be str"),
    ({"X": {}}, InputError, "empty dict"),
    ({"neuron_chunk": 0}, InputError, "neuron_chunk must be positive; got 0"),
    ({"neuron_chunk": 2.0}, InputTypeError, "neuron_chunk must be an int; got float"),
    ({"neuron_chunk": 5}, InputError, "neuron_chunk must be at most n_neurons=4; got 5"),
    ({"overwrite": "yes"}, InputTypeError, "overwrite must be a bool"),
]


@pytest.mark.parametrize("change, error, match", BAD_INPUTS)
def test_bad_inputs_leave_store_unchanged(tmp_path, change, error, match):
    path = write_inputs(tmp_path / "fit.zarr", X0, Y0, MASK0)
    before = snapshot(path)
    arguments = {"X": X0, "y": Y0, "feature_mask": MASK0, "overwrite": True} | change
    with pytest.raises(error, match=match):
        write_inputs(path, **arguments)
    assert snapshot(path) == before
    with pytest.raises(error, match=match):
        write_inputs(tmp_path / "new.zarr", **arguments)
    assert not (tmp_path / "new.zarr").exists()


def test_bad_path_type():
    with pytest.raises(InputTypeError, match="path must be a str"):
        write_inputs(3, X0, Y0)


def test_existing_inputs_need_overwrite(store):
    path, _ = store
    create_results(path, n_features=4, n_neurons=50, neuron_chunk=10, n_blocks=5,
                   dtype="float64", state_spec={}, fingerprint={"a": 1})
    before = snapshot(path)
    with pytest.raises(StoreError, match="already holds inputs; pass overwrite=True"):
        write_inputs(path, X0, Y0)
    assert snapshot(path) == before
    write_inputs(path, X0, Y0, overwrite=True)
    assert open_inputs(path).n_neurons == 4
    assert not open_inputs(path).has_mask
    assert read_fingerprint(path) is None


def test_foreign_directory_refused(tmp_path):
    (tmp_path / "notes.txt").write_text("not a store")
    with pytest.raises(StoreError, match="non-empty directory that is not a Zarr group"):
        write_inputs(tmp_path, X0, Y0)
    assert os.listdir(tmp_path) == ["notes.txt"]


# --- inputs: stores written directly with Zarr --------------------------------------------------


@pytest.mark.parametrize("zarr_format", [2, 3])
def test_user_written_group(tmp_path, zarr_format):
    X, y, _ = make_inputs(n_samples=21, n_neurons=33)
    group = zarr.open_group(str(tmp_path / "own.zarr"), mode="w", zarr_format=zarr_format)
    group.create_array("inputs/X", data=X, chunks=(7, 2))
    group.create_array("inputs/y", data=y, chunks=(7, 12))
    path = str(tmp_path / "own.zarr")
    info = open_inputs(path)
    assert info[:4] == (21, 4, 33, 12)
    assert not info.has_mask
    np.testing.assert_array_equal(read_y_block(path, 12, 33), y[:, 12:])
    np.testing.assert_array_equal(read_X(path), X)


def test_sharded_y_uses_shard_as_neuron_chunk(tmp_path):
    group = zarr.open_group(str(tmp_path / "own.zarr"), mode="w")
    group.create_array("inputs/X", data=np.ones((4, 2)))
    group.create_array("inputs/y", shape=(4, 40), dtype="int16", chunks=(4, 5), shards=(4, 20))
    assert open_inputs(str(tmp_path / "own.zarr")).neuron_chunk == 20


def user_group(tmp_path, X=np.ones((4, 2)), y=np.ones((4, 6)), mask=None, mask_chunks=(2, 3)):
    group = zarr.open_group(str(tmp_path / "own.zarr"), mode="w")
    if X is not None:
        group.create_array("inputs/X", data=X)
    if y is not None:
        group.create_array("inputs/y", data=y, chunks=(y.shape[0], 3, *y.shape[2:]))
    if mask is not None:
        group.create_array("inputs/feature_mask", data=mask, chunks=mask_chunks)
    return str(tmp_path / "own.zarr")


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"X": None}, "has no inputs/X array; write inputs with distglm.write_inputs"),
        ({"y": None}, "has no inputs/y array"),
        ({"X": np.ones(4)},
         r"inputs/X must be 2-D of shape \(n_samples, n_features\); got shape \(4,\)"),
        ({"y": np.ones((4, 6, 1))}, r"inputs/y must be 2-D .* got shape \(4, 6, 1\)"),
        ({"y": np.ones((5, 6))}, "inputs/X has 4 samples but inputs/y has 5"),
        ({"y": np.ones((4, 6), dtype=complex)}, "inputs/y must be numeric; got dtype complex128"),
        ({"mask": np.ones((6, 2))}, r"feature_mask must have shape .* = \(2, 6\); got \(6, 2\)"),
        ({"mask": np.ones((2, 6)), "mask_chunks": (2, 2)},
         "feature_mask is chunked by 2 neurons but inputs/y by 3; rechunk the mask"),
    ],
)
def test_malformed_user_group(tmp_path, kwargs, match):
    path = user_group(tmp_path, **kwargs)
    before = snapshot(path)
    with pytest.raises(StoreError, match=match):
        open_inputs(path)
    assert snapshot(path) == before


def test_bad_feature_groups_attribute(tmp_path):
    path = user_group(tmp_path)
    zarr.open_group(path + "/inputs", mode="r+").attrs["feature_groups"] = [["a", 1]]
    with pytest.raises(StoreError, match="does not add up to the 2 columns"):
        open_inputs(path)


def test_not_a_store(tmp_path):
    with pytest.raises(StoreError, match="is not a distglm store: no Zarr group at .*missing"):
        open_inputs(tmp_path / "missing")
    (tmp_path / "plain").mkdir()
    with pytest.raises(StoreError, match="is not a distglm store"):
        read_X(tmp_path / "plain")
    zarr.create_array(str(tmp_path / "array.zarr"), shape=(3,), dtype="f8")
    with pytest.raises(StoreError, match="is not a distglm store"):
        read_fingerprint(tmp_path / "array.zarr")


# --- results ------------------------------------------------------------------------------------

SPEC = {
    "velocity": ((4,), "float64", True),  # per neuron, like a momentum vector
    "stepsize": ((), "float32", False),  # one per block
    "history": ((2, 3), "int32", False),
}


def results_kwargs(**change):
    return {
        "n_features": 4,
        "n_neurons": 50,
        "neuron_chunk": 10,
        "n_blocks": 3,
        "dtype": "float64",
        "state_spec": SPEC,
        "fingerprint": {"model": "poisson", "blocks": [[0, 20], [20, 40], [40, 50]]},
    } | change


def block_payload(block, n_features=4):
    """Deterministic results and state of a block, different for every block."""
    rng = np.random.default_rng(block.id)
    arrays = {name: rng.normal(size=block.size) for name in ("intercept", "scale", "dof_resid",
                                                              "loss", "grad_norm")}
    arrays |= {
        "coef": rng.normal(size=(n_features, block.size)),
        "n_iter": np.full(block.size, 10 + block.id),
        "converged": np.arange(block.size) % 2 == 0,
        "status": np.full(block.size, block.id, dtype=np.int8),
    }
    state = {
        "velocity": rng.normal(size=(4, block.size)),
        "stepsize": np.float32(0.5 + block.id),
        "history": np.full((2, 3), block.id),
    }
    return arrays, state


BLOCKS = plan_blocks(50, 10, block_size=20)


@pytest.fixture
def results_store(store):
    path, _ = store
    create_results(path, **results_kwargs())
    return path


def test_create_results_layout(results_store):
    path = results_store
    group = zarr.open_group(path, mode="r")
    assert group["results/coef"].shape == (4, 50)
    assert group["results/coef"].chunks == (4, 10)
    for name in RESULT_NAMES[1:]:
        assert group[f"results/{name}"].shape == (50,)
        assert group[f"results/{name}"].chunks == (10,)
    assert group["results/done"].chunks == (1, 3)
    assert group["results/solver_state/velocity"].shape == (4, 50)
    assert group["results/solver_state/velocity"].chunks == (4, 10)
    assert group["results/solver_state/stepsize"].chunks == (1,)
    assert group["results/solver_state/history"].shape == (3, 2, 3)
    assert group["results/solver_state/history"].chunks == (1, 2, 3)
    results = read_results(path)
    assert np.isnan(results["coef"]).all() and results["coef"].dtype == np.float64
    assert (results["status"] == STATUS_UNWRITTEN).all() and results["status"].dtype == np.int8
    assert results["n_iter"].dtype == np.int32 and results["converged"].dtype == bool
    assert done_blocks(path) == set()
    assert read_fingerprint(path) == results_kwargs()["fingerprint"]
    state = read_state(path)
    assert list(state) == list(SPEC)
    assert state["stepsize"].dtype == np.float32 and state["stepsize"].shape == (3,)


def test_write_block_and_read_back(results_store):
    path = results_store
    for block in BLOCKS[::2]:
        write_block(path, block, *block_payload(block))
    assert done_blocks(path) == {0, 2}
    results, state = read_results(path), read_state(path)
    for block in BLOCKS[::2]:
        arrays, block_state = block_payload(block)
        for name in RESULT_NAMES:
            np.testing.assert_array_equal(results[name][..., block.start:block.stop], arrays[name])
        np.testing.assert_array_equal(state["velocity"][:, block.start:block.stop],
                                      block_state["velocity"])
        assert state["stepsize"][block.id] == block_state["stepsize"]
        np.testing.assert_array_equal(state["history"][block.id], block_state["history"])
    # The block not written still reads as unwritten.
    assert (results["status"][20:40] == STATUS_UNWRITTEN).all()
    np.testing.assert_array_equal(read_results(path, 45, 50)["loss"], results["loss"][45:])


def test_write_block_is_idempotent(results_store):
    path = results_store
    write_block(path, BLOCKS[1], *block_payload(BLOCKS[1]))
    once = snapshot(path)
    write_block(path, BLOCKS[1], *block_payload(BLOCKS[1]))
    assert snapshot(path) == once


def test_resume_keeps_results(results_store):
    path = results_store
    write_block(path, BLOCKS[0], *block_payload(BLOCKS[0]))
    before = snapshot(path)
    # A fingerprint with tuples reads back from JSON with lists: still the same fit.
    fingerprint = {"model": "poisson", "blocks": [(0, 20), (20, 40), (40, 50)]}
    create_results(path, **results_kwargs(fingerprint=fingerprint))
    assert snapshot(path) == before
    assert done_blocks(path) == {0}


def test_resume_keeps_results_chunked_by_a_divisor_of_the_blocks(results_store):
    # results chunked by the inputs' neuron chunk (10) are resumed by a fit that now chunks its
    # results by its blocks (20): the blocks still align with the stored chunks
    path = results_store
    write_block(path, BLOCKS[0], *block_payload(BLOCKS[0]))
    before = snapshot(path)
    create_results(path, **results_kwargs(neuron_chunk=20))
    assert snapshot(path) == before
    assert done_blocks(path) == {0}
    with pytest.raises(StoreError, match="laid out differently .*neuron chunk 10, which does not divide 15"):
        create_results(path, **results_kwargs(neuron_chunk=15))
    assert snapshot(path) == before


def test_different_fit_refused(results_store):
    path = results_store
    write_block(path, BLOCKS[0], *block_payload(BLOCKS[0]))
    before = snapshot(path)
    other = {"model": "gamma", "blocks": [[0, 20], [20, 40], [40, 50]]}
    with pytest.raises(StoreError, match=r"results of a different fit \(fingerprint differs in "
                                         r"\['model'\]\); pass resume=False to replace them"):
        create_results(path, **results_kwargs(fingerprint=other))
    with pytest.raises(StoreError, match="laid out differently .*float64 instead of float32"):
        create_results(path, **results_kwargs(dtype=np.float32))
    assert snapshot(path) == before
    create_results(path, **results_kwargs(fingerprint=other, overwrite=True))
    assert done_blocks(path) == set()
    assert read_fingerprint(path) == other
    assert np.isnan(read_results(path)["coef"]).all()


def test_incomplete_results_are_recreated(results_store):
    path = results_store
    zarr.open_group(path + "/results", mode="r+").attrs.pop("fingerprint")
    with pytest.raises(StoreError, match="not completely created"):
        done_blocks(path)
    create_results(path, **results_kwargs())
    assert read_fingerprint(path) == results_kwargs()["fingerprint"]


@pytest.mark.parametrize(
    "change, error, match",
    [
        ({"n_blocks": 0}, InputError, "n_blocks must be positive"),
        ({"dtype": "int32"}, InputTypeError, "dtype must be a float dtype; got int32"),
        ({"fingerprint": [1]}, InputTypeError, "fingerprint must be a dict"),
        ({"fingerprint": {"a": np.int64(1)}}, InputTypeError,
         "fingerprint must be JSON-serialisable"),
        ({"fingerprint": {"a": float("nan")}}, InputError, "without NaN"),
        ({"state_spec": {"a/b": ((), "f8", True)}}, InputError, "without '/'"),
        ({"state_spec": {"a": ((), "f8")}}, InputTypeError, r"state_spec\['a'\] must be \(shape"),
        ({"state_spec": {"a": ((), "f8", 1)}}, InputTypeError, "per_neuron must be a bool"),
    ],
)
def test_create_results_bad_arguments(store, change, error, match):
    path, _ = store
    before = snapshot(path)
    with pytest.raises(error, match=match):
        create_results(path, **results_kwargs(**change))
    assert snapshot(path) == before


def test_write_block_refusals_leave_store_unchanged(results_store):
    path = results_store
    arrays, state = block_payload(BLOCKS[0])
    before = snapshot(path)
    bad = [
        (Block(0, 5, 20), arrays, state, PlanError,
         "not aligned with the results' neuron chunk 10"),
        (Block(3, 0, 20), arrays, state, PlanError, "out of range: the results hold 3 blocks"),
        (Block(0, 0, 60), arrays, state, PlanError, "out of range"),
        (BLOCKS[0], {k: v for k, v in arrays.items() if k != "loss"}, state, InputError,
         r"arrays must have the keys .* missing \['loss'\], unexpected \[\]"),
        (BLOCKS[0], arrays | {"coef": np.ones((4, 19))}, state, InputError,
         r"arrays\['coef'\] .* must have shape \(4, 20\); got shape \(4, 19\)"),
        (BLOCKS[0], arrays, state | {"extra": 1}, InputError, r"unexpected \['extra'\]"),
        (BLOCKS[0], arrays, state | {"history": np.ones(6)}, InputError,
         r"state\['history'\] .* must have shape \(2, 3\)"),
        ((0, 0), arrays, state, InputTypeError, "block must be a Block"),
        (BLOCKS[0], [], state, InputTypeError, "arrays must be a dict"),
    ]
    for block, block_arrays, block_state, error, match in bad:
        with pytest.raises(error, match=match):
            write_block(path, block, block_arrays, block_state)
    assert snapshot(path) == before


def test_results_absent(store):
    path, _ = store
    assert read_fingerprint(path) is None
    for read in (done_blocks, read_results, read_state):
        with pytest.raises(StoreError, match="holds no results"):
            read(path)
    with pytest.raises(StoreError, match="holds no results"):
        write_block(path, BLOCKS[0], *block_payload(BLOCKS[0]))


def test_concurrent_writers(tmp_path):
    n_neurons, chunk = 80, 5
    blocks = plan_blocks(n_neurons, chunk, block_size=chunk)
    path = write_inputs(tmp_path / "fit.zarr", np.ones((3, 4)), np.ones((3, n_neurons)),
                        neuron_chunk=chunk)
    create_results(path, **results_kwargs(n_neurons=n_neurons, neuron_chunk=chunk,
                                          n_blocks=len(blocks)))
    tasks = [(path, block, *block_payload(block)) for block in blocks]
    # One block per task, so neighbouring blocks are written by different processes at once.
    with multiprocessing.get_context("spawn").Pool(4) as pool:
        pool.starmap(write_block, tasks, chunksize=1)
    assert done_blocks(path) == set(range(len(blocks)))
    results, state = read_results(path), read_state(path)
    for block in blocks:
        arrays, block_state = block_payload(block)
        for name in RESULT_NAMES:
            np.testing.assert_array_equal(results[name][..., block.start:block.stop],
                                          arrays[name])
        np.testing.assert_array_equal(state["velocity"][:, block.start:block.stop],
                                      block_state["velocity"])
        assert state["stepsize"][block.id] == block_state["stepsize"]
        np.testing.assert_array_equal(state["history"][block.id], block_state["history"])


# --- job metadata -------------------------------------------------------------------------------


def test_attrs_round_trip(store):
    path, _ = store
    assert read_attrs(path, "job") == {}
    write_attrs(path, "job", {"state": "running", "progress": [1, 5]})
    write_attrs(path, "job", {"progress": [2, 5]})
    assert read_attrs(path, "job") == {"state": "running", "progress": [2, 5]}
    with pytest.raises(InputError, match="group_name must name a group"):
        write_attrs(path, "/", {})
    with pytest.raises(InputTypeError, match="attrs must be JSON-serialisable"):
        write_attrs(path, "job", {"when": object()})
    with pytest.raises(StoreError, match="inputs/X is not a group"):
        write_attrs(path, "inputs/X", {"a": 1})


def test_docstring_examples():
    # the examples use the store's public functions, as a user does: from distglm.store
    public = {name: getattr(distglm.store, name) for name in distglm.store.__all__}
    for module in (distglm.store.inputs, distglm.store.results, distglm.store.records):
        outcome = doctest.testmod(module, extraglobs=public)
        assert outcome.attempted > 0 and outcome.failed == 0, module.__name__
