"""The store is never lost, never silently stale, never read unsafely: without Ray.

Interrupted writes are real processes killed with SIGKILL at chosen points of their store writes
(see ``crashing.py``); every check reads the real Zarr store on disk afterwards.
"""

import json
import os
import pickle
import subprocess
import sys
import time

import numpy as np
import pytest
import zarr

import distglm
from crashing import run_crashing
from distglm import store
from distglm.errors import StoreError
from distglm.plan import Block
from test_store import make_inputs, snapshot

RESULTS = dict(n_features=4, n_neurons=50, neuron_chunk=10, n_blocks=3, dtype="float64",
               state_spec={"velocity": ((4,), "float32", True), "stepsize": ((), "float64", False)})
FINGERPRINT = {"model": {"regularizer": "Ridge"}, "n_samples": 30, "dtype": "<f8", "block_size": 20}
BLOCKS = [Block(0, 0, 20), Block(1, 20, 40), Block(2, 40, 50)]


def block_values(block, seed):
    rng = np.random.default_rng(seed + block.id)
    arrays = {name: rng.normal(size=(block.size,)) for name in store.RESULT_NAMES}
    arrays.update(coef=rng.normal(size=(4, block.size)), n_iter=np.full(block.size, 7),
                  converged=np.ones(block.size, bool), status=np.zeros(block.size, np.int8))
    state = {"velocity": rng.normal(size=(4, block.size)), "stepsize": np.float64(0.5 + block.id)}
    return arrays, state


@pytest.fixture
def written(tmp_path):
    """A store whose results hold all three blocks, each marked done."""
    X, y, mask = make_inputs()
    path = store.write_inputs(tmp_path / "fit.zarr", X, y, mask, neuron_chunk=10)
    store.create_results(path, fingerprint=FINGERPRINT, **RESULTS)
    for block in BLOCKS:
        store.write_block(path, block, *block_values(block, seed=1))
    assert store.done_blocks(path) == {0, 1, 2}
    return path


# --- done markers are checked against the data ---------------------------------------------------


def test_a_done_marker_over_missing_chunks_does_not_count(written):
    # an object store deletes sorted keys: coefficient chunks go before the done markers
    os.remove(os.path.join(written, "results", "coef", "c", "0", "2"))
    assert store.done_blocks(written) == {0, 2}


def test_a_done_marker_over_altered_data_does_not_count(written):
    zarr.open_array(os.path.join(written, "results", "intercept"), mode="r+")[45] = 99.0
    assert store.done_blocks(written) == {0, 1}


def test_done_markers_of_another_fit_do_not_count(written):
    # the same arrays under another fingerprint: every marker belongs to the fit before
    zarr.open_group(os.path.join(written, "results"), mode="r+").attrs["fingerprint"] = {**FINGERPRINT,
                                                                                          "block_size": 10}
    assert store.done_blocks(written) == set()


def test_rewriting_a_block_gives_the_same_bytes(written):
    before = snapshot(written)
    store.write_block(written, BLOCKS[1], *block_values(BLOCKS[1], seed=1))
    assert snapshot(written) == before


# --- replacing results, interrupted ---------------------------------------------------------------

REPLACE = """
import sys, numpy as np
from distglm import store
path = sys.argv[1]
store.create_results(path, n_features=4, n_neurons=50, neuron_chunk=10, n_blocks=3, dtype="float64",
                     state_spec={}, fingerprint={"model": "the next fit"}, overwrite=True)
print("REPLACED")
"""


@pytest.mark.parametrize("files_deleted", [0, 3, 20])
def test_interrupted_replacement_leaves_no_results_that_look_complete(written, files_deleted):
    killed = run_crashing(REPLACE, {"op": "delete_dir", "match": "results", "after": files_deleted}, written)
    assert killed.returncode == -9, killed.stderr
    assert store.read_fingerprint(written) is None
    for read in (store.done_blocks, store.read_results, store.read_state):
        with pytest.raises(StoreError, match="not completely created"):
            read(written)
    # a rerun creates the results anew
    store.create_results(written, fingerprint=FINGERPRINT, **RESULTS)
    assert store.done_blocks(written) == set()
    assert np.all(store.read_results(written)["status"] == store.STATUS_UNWRITTEN)


# --- write_inputs(overwrite=True), interrupted -----------------------------------------------------

REWRITE = """
import sys, numpy as np
from distglm import store
rng = np.random.default_rng(7)
X, y = rng.normal(size=(30, 4)), rng.poisson(3.0, size=(30, 50)).astype(np.int32)
store.write_inputs(sys.argv[1], X, y, neuron_chunk=10, overwrite=True)
print("WRITTEN")
"""
REWRITE_WITH_MASK = REWRITE.replace("X, y, neuron_chunk=10", "X, y, np.ones((4, 50)), neuron_chunk=10")


def without_staging_or_lease(files):
    return {name: data for name, data in files.items() if not name.startswith(("staging", "lease"))}


@pytest.mark.parametrize("plan", [
    {"op": "set", "match": "staging/y/c", "after": 2},        # while the new y is written
    {"op": "set", "match": "staging/feature_mask", "after": 0},  # the last new array
], ids=["writing-y", "writing-mask"])
def test_interrupted_while_the_new_inputs_are_written_keeps_the_old_ones(written, plan):
    store.write_attrs(written, "job", {"id": "distglm-old", "state": "succeeded", "neurons_done": 50})
    before = snapshot(written)
    killed = run_crashing(REWRITE_WITH_MASK, plan, written)
    assert killed.returncode == -9, killed.stderr
    # the old inputs, their results and the job record are all still there, byte for byte
    assert without_staging_or_lease(snapshot(written)) == without_staging_or_lease(before)
    assert store.done_blocks(written) == {0, 1, 2}
    assert store.read_attrs(written, "job")["id"] == "distglm-old"
    X, y, mask = make_inputs()
    np.testing.assert_array_equal(store.read_y_block(written, 0, 50), y)
    # the rerun replaces the half-written staging group and the old inputs
    X, y, mask = make_inputs(seed=3)
    store.write_inputs(written, X, y, mask, neuron_chunk=10, overwrite=True)
    np.testing.assert_array_equal(store.read_y_block(written, 0, 50), y)
    assert not os.path.exists(os.path.join(written, "staging"))


def test_a_failing_source_of_y_keeps_the_old_inputs(written, tmp_path):
    before = snapshot(written)

    class Failing:
        """A y that fails partway through the copy, as a network array can."""
        shape, dtype, ndim = (30, 50), np.dtype(np.int32), 2

        def __getitem__(self, index):
            raise OSError("connection reset while reading y")

    X, _, mask = make_inputs(seed=3)
    with pytest.raises(OSError, match="connection reset"):
        store.write_inputs(written, X, Failing(), mask, neuron_chunk=10, overwrite=True)
    assert without_staging_or_lease(snapshot(written)) == without_staging_or_lease(before)
    assert not os.path.exists(os.path.join(written, "staging"))
    assert store.done_blocks(written) == {0, 1, 2}


@pytest.mark.parametrize("plan", [
    {"op": "delete_dir", "match": "results", "after": 4},   # while the old results go
    {"op": "delete_dir", "match": "inputs", "after": 2},    # while the old inputs go
    {"op": "set", "match": "inputs/zarr.json", "after": 1},  # just before the inputs are complete
], ids=["deleting-results", "deleting-inputs", "completing"])
def test_interrupted_swap_is_refused_until_written_again(written, plan):
    store.write_attrs(written, "job", {"id": "distglm-old", "state": "succeeded", "neurons_done": 50})
    killed = run_crashing(REWRITE, plan, written)
    assert killed.returncode == -9, killed.stderr
    # never the old results for the new inputs, never the old job, never half-swapped inputs
    assert store.read_fingerprint(written) is None
    assert store.read_attrs(written, "job") == {}
    with pytest.raises(StoreError, match="not completely written|has no inputs/X"):
        store.open_inputs(written)
    with pytest.raises(StoreError, match="not completely written|has no inputs/X"):
        distglm.load_model(written)
    # the lease of the killed process does not block the rerun
    X, y, mask = make_inputs(seed=3)
    store.write_inputs(written, X, y, mask, neuron_chunk=10, overwrite=True)
    np.testing.assert_array_equal(store.read_y_block(written, 0, 50), y)


def test_overwriting_inputs_discards_results_and_the_job_record(written, tmp_path):
    store.write_attrs(written, "job", {"id": "distglm-old", "state": "succeeded", "neurons_done": 50})
    generation = store.inputs_generation(written)
    X, y, mask = make_inputs(seed=4)
    store.write_inputs(written, X, y, mask, neuron_chunk=10, overwrite=True)
    assert store.inputs_generation(written) != generation
    assert store.read_fingerprint(written) is None
    assert store.read_attrs(written, "job") == {}
    status = subprocess.run([sys.executable, "-m", "distglm.cli", "status", written], capture_output=True,
                            text=True, timeout=120)
    assert status.returncode == 1
    assert "holds no job record" in status.stderr


# --- the lease ------------------------------------------------------------------------------------

HOLD = """
import sys, time
from distglm import store
lease = store.acquire_lease(sys.argv[1], "a long fit")
print("HELD", flush=True)
time.sleep(120)
"""


def hold_in_subprocess(path):
    holder = subprocess.Popen([sys.executable, "-c", HOLD, path], stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "HELD"
    return holder


def test_a_second_writer_is_refused_with_the_holder_named(written):
    holder = hold_in_subprocess(written)
    try:
        before = snapshot(written)
        with pytest.raises(StoreError, match=rf"in use by a long fit in process {holder.pid} on .*distglm unlock"):
            store.acquire_lease(written, "fit")
        X, y, mask = make_inputs(seed=5)
        with pytest.raises(StoreError, match=f"in use by a long fit in process {holder.pid}"):
            store.write_inputs(written, X, y, mask, neuron_chunk=10, overwrite=True)
        assert snapshot(written) == before
        held = store.read_lease(written)
        assert (held["pid"], held["purpose"], held["expired"]) == (holder.pid, "a long fit", False)
    finally:
        holder.kill()
        holder.wait()
    # its holder is gone: the lease has expired, and the next writer takes it
    assert store.read_lease(written)["expired"]
    with store.acquire_lease(written, "fit"):
        assert store.read_lease(written)["pid"] == os.getpid()
    assert store.read_lease(written) is None


def test_a_lease_from_another_machine_expires_after_its_ttl(written):
    def plant(renewed_at):
        holder = {"token": "x", "purpose": "fit", "host": "elsewhere", "pid": 1, "pid_started": 0.0,
                  "ttl_s": 60.0, "renewed_at": renewed_at, "acquired_at": "then"}
        document = {"zarr_format": 3, "node_type": "group", "attributes": {"holder": holder}}
        os.makedirs(os.path.join(written, "lease"), exist_ok=True)
        with open(os.path.join(written, "lease", "zarr.json"), "w") as handle:
            json.dump(document, handle)

    plant(time.time() - 5)
    with pytest.raises(StoreError, match="in use by fit in process 1 on elsewhere"):
        store.acquire_lease(written, "fit")
    plant(time.time() - 600)
    with store.acquire_lease(written, "fit"):
        pass


def test_a_broken_lease_is_noticed_by_its_holder(written):
    lease = store.acquire_lease(written, "fit", ttl=0.4)
    try:
        assert store.break_lease(written)["token"] == lease.holder["token"]
        deadline = time.monotonic() + 10
        while not lease.lost:
            assert time.monotonic() < deadline, "the holder never noticed"
            time.sleep(0.05)
        with pytest.raises(StoreError, match="lost the store's lease"):
            lease.check()
    finally:
        lease.release()


def test_unlock_breaks_only_a_dead_holders_lease_without_force(written):
    def unlock(*flags):
        return subprocess.run([sys.executable, "-m", "distglm.cli", "unlock", written, *flags],
                              capture_output=True, text=True, timeout=120)

    holder = hold_in_subprocess(written)
    try:
        refused = unlock()
        assert refused.returncode == 1
        assert f"held by a long fit in process {holder.pid}" in refused.stderr and "--force" in refused.stderr
        forced = unlock("--force")
        assert forced.returncode == 0, forced.stderr
        assert store.read_lease(written) is None
    finally:
        holder.kill()
        holder.wait()
    assert "is not locked" in unlock().stdout


# --- damaged and crafted stores -------------------------------------------------------------------


def test_a_corrupted_chunk_is_named(written):
    chunk = os.path.join(written, "inputs", "y", "c", "0", "1")
    with open(chunk, "wb") as handle:
        handle.write(b"\x28\xb5\x2f\xfd garbage that is no zstd frame")
    with pytest.raises(StoreError, match="inputs/y cannot be read: a chunk is corrupted"):
        store.read_y_block(written, 0, 50)
    np.testing.assert_array_equal(store.read_y_block(written, 0, 10), make_inputs()[1][:, :10])


@pytest.mark.parametrize("document", ["inputs/y/zarr.json", "inputs/zarr.json", "zarr.json"])
def test_a_corrupted_metadata_document_is_named(written, document):
    with open(os.path.join(written, document), "w") as handle:
        handle.write('{"zarr_format": 3, "node_type": ')
    with pytest.raises(StoreError, match="corrupted|cannot be read|not a distglm store"):
        store.open_inputs(written)


class Payload:
    """Pickles to a call of ``os.system`` that creates ``marker``: proof that unpickling ran code."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_a_crafted_pickle_codec_is_refused_and_runs_nothing(tmp_path):
    marker = tmp_path / "code-ran"
    path = str(tmp_path / "crafted.zarr")
    root = zarr.open_group(path, mode="w")
    root.create_array("inputs/X", shape=(4, 2), dtype="float64")[...] = 1.0
    os.makedirs(os.path.join(path, "inputs", "y", "c", "0"))
    with open(os.path.join(path, "inputs", "y", "zarr.json"), "w") as handle:
        json.dump({"zarr_format": 3, "node_type": "array", "shape": [4, 2], "data_type": "int32",
                   "chunk_grid": {"name": "regular", "configuration": {"chunk_shape": [4, 2]}},
                   "chunk_key_encoding": {"name": "default", "configuration": {"separator": "/"}},
                   "fill_value": 0, "attributes": {},
                   "codecs": [{"name": "numcodecs.pickle"}, {"name": "bytes", "configuration": {"endian": "little"}}]},
                  handle)
    with open(os.path.join(path, "inputs", "y", "c", "0", "0"), "wb") as handle:
        handle.write(pickle.dumps(Payload(marker)))
    for read in (store.open_inputs, lambda p: store.read_y_block(p, 0, 2), distglm.load_model):
        with pytest.raises(StoreError, match=r"inputs/y uses the codec\(s\) \['numcodecs.pickle'\], which distglm "
                                             "does not read"):
            read(path)
    assert not marker.exists()


def test_a_pickled_npz_is_refused_and_runs_nothing(tmp_path):
    marker = tmp_path / "code-ran"
    path = str(tmp_path / "model.npz")
    np.savez(path, config=np.array([Payload(marker)], dtype=object))
    with pytest.raises(ValueError):
        distglm.load_model(path)
    assert not marker.exists()


def test_a_model_naming_os_system_as_link_is_refused(tmp_path):
    from distglm.glm import model_from_config

    with pytest.raises(ValueError, match="inverse_link_function"):
        model_from_config({"inverse_link_function": "os.system"})
    cli = subprocess.run([sys.executable, "-m", "distglm.cli", "fit", str(tmp_path / "x.zarr"), "--model",
                          '{"inverse_link_function": "os.system"}'], capture_output=True, text=True, timeout=120)
    assert cli.returncode == 1 and "inverse_link_function" in cli.stderr


def test_results_of_an_older_distglm_are_refused_clearly(written):
    # the earlier layout: one bool per block, nothing to check the data against
    results = zarr.open_group(os.path.join(written, "results"), mode="r+")
    results.create_array("done", shape=(3,), dtype=bool, chunks=(1,), overwrite=True)[...] = True
    for read in (store.done_blocks, distglm.load_model):
        with pytest.raises(StoreError, match="written by an older distglm.*--no-resume"):
            read(written)


def test_a_v2_document_beside_a_harmless_v3_one_is_checked_too(written):
    with open(os.path.join(written, "inputs", "X", ".zarray"), "w") as handle:
        json.dump({"zarr_format": 2, "shape": [30, 4], "chunks": [30, 4], "dtype": "<f8", "order": "C",
                   "fill_value": 0.0, "compressor": None, "filters": [{"id": "pickle"}]}, handle)
    with pytest.raises(StoreError, match=r"inputs/X uses the codec\(s\) \['pickle'\]"):
        store.read_X(written)


def test_arrays_left_behind_their_group_are_cleared(written):
    # an interrupted delete that took the groups' documents first
    os.remove(os.path.join(written, "results", "zarr.json"))
    os.remove(os.path.join(written, "inputs", "zarr.json"))
    store.create_results(written, fingerprint=FINGERPRINT, **RESULTS)
    assert store.done_blocks(written) == set()
    X, y, mask = make_inputs(seed=6)
    store.write_inputs(written, X, y, mask, neuron_chunk=10)
    np.testing.assert_array_equal(store.read_y_block(written, 0, 50), y)
    assert store.read_fingerprint(written) is None
