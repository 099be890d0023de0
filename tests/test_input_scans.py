"""The driver's check of the inputs is kept while the input files are unchanged, and only then."""

from __future__ import annotations

import contextlib
import os
import time

import numpy as np
import pytest
import zarr

import distglm
from distglm import input_scans, store
from distglm.core.observations import GammaObservations, PoissonObservations
from distglm.errors import InputError
from distglm.scheduler import _checked_inputs


@pytest.fixture
def scans(tmp_path, monkeypatch):
    """A cache of checks of this test's own, and a check kept however recent the inputs."""
    where = tmp_path / "scans"
    monkeypatch.setenv(input_scans.ENV_VAR, str(where))
    monkeypatch.setattr(input_scans, "SETTLE_S", 0.0)
    return where


@pytest.fixture
def counts(tmp_path):
    rng = np.random.default_rng(3)
    X = rng.normal(size=(300, 4))
    X[7, 2] = np.nan  # a dropped sample
    y = rng.poisson(1.0, size=(300, 24))
    path = distglm.write_inputs(tmp_path / "fit.zarr", X, y, neuron_chunk=8)
    time.sleep(0.05)  # later writes fall in another tick of the file system's clock
    return path


def check(path, observation=None):
    return _checked_inputs(path, store.open_inputs(path), observation or PoissonObservations(), np.float32)


def no_reads(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("the inputs were read again")

    monkeypatch.setattr(store, "scan_y", refuse)
    monkeypatch.setattr(store, "scan_X", refuse)


def assert_same_check(got, want):
    keep, mask, digest, y_ok, counts_dtype = got
    np.testing.assert_array_equal(keep, want[0])
    assert mask is None and want[1] is None
    assert (digest, counts_dtype) == (want[2], want[4])
    np.testing.assert_array_equal(y_ok, want[3])


def test_a_check_is_kept_and_reused_while_the_inputs_are_unchanged(counts, scans, monkeypatch):
    first = check(counts)
    assert not first[0][7] and first[0].sum() == 299 and first[4] == "uint8"
    assert len(list(scans.iterdir())) == 1
    no_reads(monkeypatch)
    assert_same_check(check(counts), first)


def test_inputs_edited_in_place_are_read_again(counts, scans):
    first = check(counts)
    y = zarr.open_array(os.path.join(counts, "inputs", "y"), mode="r+")
    y[10, 3] = y[10, 3] + 300
    again = check(counts)
    assert again[2] != first[2]
    assert again[4] == "uint16"
    # and the new check is the one kept
    assert check(counts)[2] == again[2]


def test_inputs_written_again_are_read_again(counts, scans, tmp_path):
    first = check(counts)
    X, y = store.read_X(counts), store.read_y_block(counts, 0, 24)
    y[0, 0] += 1
    distglm.write_inputs(counts, X, y, neuron_chunk=8, overwrite=True)
    assert check(counts)[2] != first[2]


def test_each_family_is_checked_on_its_own(counts, scans):
    check(counts)
    # the counts hold zeros: in a Poisson model's support, not in a Gamma model's
    with pytest.raises(InputError, match="strictly positive"):
        check(counts, GammaObservations())


def test_a_recent_check_is_not_kept(counts, scans, monkeypatch):
    monkeypatch.setattr(input_scans, "SETTLE_S", 3600.0)
    check(counts)
    assert not scans.exists() or not list(scans.iterdir())


def test_a_damaged_entry_is_read_again(counts, scans):
    first = check(counts)
    (entry,) = scans.iterdir()
    entry.write_bytes(b"not an npz")
    assert_same_check(check(counts), first)
    assert entry.read_bytes() != b"not an npz"


def test_turned_off_by_an_empty_variable(counts, monkeypatch, tmp_path):
    monkeypatch.setenv(input_scans.ENV_VAR, "")
    monkeypatch.setattr(input_scans, "SETTLE_S", 0.0)
    assert input_scans.cache_dir() is None
    check(counts)
    no_reads(monkeypatch)
    with pytest.raises(AssertionError, match="read again"):
        check(counts)


def test_remote_stores_have_no_signature():
    assert input_scans.signature("s3://bucket/fit.zarr") is None


def test_only_the_latest_checks_are_kept(counts, scans, monkeypatch, tmp_path):
    monkeypatch.setattr(input_scans, "MAX_ENTRIES", 2)
    for observation in (PoissonObservations(), GammaObservations(), PoissonObservations()):
        with contextlib.suppress(InputError):
            check(counts, observation)
    # the Gamma check failed and kept nothing; the Poisson one was written again, last
    assert len(list(scans.iterdir())) == 1
    other = distglm.write_inputs(tmp_path / "other.zarr", np.ones((10, 1)), np.ones((10, 3)))
    third = distglm.write_inputs(tmp_path / "third.zarr", np.ones((10, 1)), np.ones((10, 3)))
    time.sleep(0.05)
    check(other)
    check(third)
    kept = sorted(scans.iterdir(), key=lambda p: p.stat().st_mtime_ns)
    assert len(kept) == 2
    # the first store's check went: it is read again
    no_reads(monkeypatch)
    with pytest.raises(AssertionError, match="read again"):
        check(counts)


def test_inputs_holding_a_link_are_read_every_fit(counts, scans, tmp_path):
    # y's chunks moved elsewhere and linked: an edit there would leave the store's files as they were
    y = os.path.join(counts, "inputs", "y")
    os.rename(y, tmp_path / "y-elsewhere")
    os.symlink(tmp_path / "y-elsewhere", y)
    assert input_scans.signature(counts) is None
    check(counts)
    assert not scans.exists() or not list(scans.iterdir())
