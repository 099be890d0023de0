"""The inputs of a store: ``inputs/X``, ``inputs/y`` and ``inputs/feature_mask``.

``write_inputs`` writes new inputs whole into a ``staging`` group first; only then does it mark
the old ``inputs`` incomplete, remove the results and job record of the old inputs and the old
inputs themselves, and move the staging group into place, marked complete with a new
``generation`` id. A source of y that fails partway, or a writer killed while copying it, leaves
the old inputs and their results as they were. Readers refuse inputs marked incomplete, so an
interrupted swap is never fitted. Groups written by hand with Zarr (no ``complete`` attribute)
are read as they are.
"""

from __future__ import annotations

import concurrent.futures
import functools
import os
import re
import uuid
from typing import Callable, NamedTuple

import numpy as np

from distglm import validation as val
from distglm.errors import InputError, InputTypeError, StoreError
from distglm.plan import _check_int

from . import _zarr
from ._zarr import NUMERIC_KINDS, as_path, open_group
from .records import acquire_lease
from .results import discard_all_results

__all__ = [
    "InputsInfo",
    "InputsReader",
    "write_inputs",
    "open_inputs",
    "inputs_generation",
    "read_coordinates",
    "read_test",
    "read_time",
    "read_X",
    "read_y_block",
    "read_mask_block",
    "scan_X",
    "scan_y",
    "nan_rows",
]

_MiB = 2**20
# One y chunk is what an actor reads per chunk of its block: big enough for efficient reads
# from object stores, small enough to keep several in memory.
_Y_CHUNK_BYTES = 32 * _MiB
# Blocks are whole chunks, so a default chunk wider than this would force big blocks and leave
# actors idle on populations of a few thousand neurons.
_MAX_DEFAULT_NEURON_CHUNK = 64
_X_CHUNK_BYTES = 64 * _MiB
# Samples per chunk of X and y: a long recording is stored in chunks of time as well, so a
# reader can take a few thousand samples of a block without decoding the whole recording.
# Recordings up to this length keep one chunk along time.
_ROW_CHUNK = 2**16
# Bound on the memory write_inputs holds at once while copying y from a memmap or array store.
_WRITE_SLICE_BYTES = 64 * _MiB
# Where write_inputs writes new inputs before they replace the old ones.
_STAGING = "staging"


def _y_compressor():
    """y's codec. Spike counts are small integers: with their bits shuffled, LZ4 stores them in
    about two thirds of Zstandard's bytes and decodes them about three times faster (50,000 x 64
    int32 Poisson counts: 3.7 vs 5.7 MB, 5.6 vs 16 ms on one thread). Every block an actor fits
    decodes its y whole, so the decode is paid once per block per fit."""
    from zarr.codecs import BloscCodec

    return BloscCodec(cname="lz4", clevel=5, shuffle="bitshuffle")


class InputsInfo(NamedTuple):
    """What a store's inputs hold, read from metadata only.

    Attributes
    ----------
    n_samples, n_features, n_neurons : int
        Shapes: ``X`` is (n_samples, n_features), ``y`` is (n_samples, n_neurons).
    neuron_chunk : int
        Length along neurons of one stored chunk of ``y``; blocks are multiples of it.
    y_dtype : numpy.dtype
        Stored dtype of ``y`` (integer counts stay integer).
    has_mask : bool
        Whether ``inputs/feature_mask`` exists; without it every feature predicts every neuron.
    feature_groups : tuple of (str, int) or None
        ``(name, n_columns)`` of each feature group in column order when X was a dict.
    X_dtype : numpy.dtype
        Stored dtype of ``X``.
    row_chunk : int
        Length along samples of one stored chunk of ``y`` (n_samples for a short recording).
    has_test : bool
        Whether ``inputs/test`` records samples held out of every fit (``write_inputs(test=...)``).
    generation : str or None
        Id of this writing of the inputs, new at every ``write_inputs``; None for inputs
        written by hand with Zarr.
    """

    n_samples: int
    n_features: int
    n_neurons: int
    neuron_chunk: int
    y_dtype: np.dtype
    has_mask: bool
    feature_groups: tuple | None
    X_dtype: np.dtype
    generation: str | None = None
    row_chunk: int = 0
    has_test: bool = False


# ---------------------------------------------------------------------------------------------
# Inputs


def _is_time_series(value) -> bool:
    # pynapple's Tsd, TsdFrame and TsdTensor, recognised by their attributes: the store never
    # imports pynapple.
    return all(hasattr(value, attr) for attr in ("times", "values", "time_support"))


def _unwrap_series(value, what: str) -> tuple:
    """``(array, times, column labels, metadata)`` of a pynapple object; ``(value, None, None, {})`` otherwise.

    A ``Tsd`` is one column and a ``TsdTensor`` has its trailing axes flattened into columns, so
    that each is the 2-D array the store holds.
    """
    if not _is_time_series(value):
        return value, None, None, {}
    array = np.asarray(value.values)
    if array.ndim == 0:
        raise InputError(f"{what} must hold one value per time bin; got a scalar time series")
    array = array.reshape(array.shape[0], -1)
    columns = getattr(value, "columns", None)
    columns = None if columns is None else np.asarray(columns)
    table = getattr(value, "metadata", None)
    meta = {}
    if table is not None and len(getattr(table, "columns", ())):
        # a "/" would nest the array in a subgroup, and CF lists coordinates separated by spaces
        meta = {re.sub(r"[/\s]", "_", str(name)): _plain(np.asarray(table[name])) for name in table.columns}
    return array, np.asarray(value.times(), dtype=np.float64), columns, meta


def _plain(values: np.ndarray) -> np.ndarray:
    """Numbers as they are, anything else (pandas' object columns) as strings."""
    return values if values.dtype.kind in "biuf" else values.astype(str)


def _check_labels(values, length: int, what: str) -> np.ndarray:
    """1-D, ``length`` unique numbers or strings, as an array (strings as str)."""
    try:
        values = np.asarray(values)
    except (TypeError, ValueError) as err:
        raise InputTypeError(f"{what} must be a 1-D sequence of numbers or strings; {err}") from None
    values = _plain(values) if values.dtype.kind == "O" else values
    if values.dtype.kind not in "biuUST":
        raise InputTypeError(f"{what} must hold integers or strings; got dtype {values.dtype}")
    if values.shape != (length,):
        raise InputError(f"{what} must have shape ({length},), one entry each; got shape {values.shape}")
    if len(np.unique(values)) != length:
        raise InputError(f"{what} must be unique; got repeated entries")
    return values


def _check_time(values, n_samples: int) -> np.ndarray:
    try:
        values = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError) as err:
        raise InputTypeError(f"time must be a 1-D array of numbers (seconds); {err}") from None
    if values.shape != (n_samples,):
        raise InputError(f"time must have shape ({n_samples},), one entry per sample of X; got shape {values.shape}")
    if not np.all(np.isfinite(values)) or np.any(np.diff(values) <= 0):
        raise InputError("time must be finite and strictly increasing (the time of each sample, in seconds)")
    return values


def _labels_of(given, derived, default, length: int, what: str) -> np.ndarray:
    """The labels given by the caller, else those of the data, else ``default``; checked."""
    if given is not None and derived is not None and not np.array_equal(np.asarray(given), derived):
        raise InputError(f"{what} was given but differs from the labels of the data ({list(derived[:5])}...); "
                         "give one or the other")
    return _check_labels(default if given is None and derived is None else
                         (given if given is not None else derived), length, what)


def _validate_y(y, n_samples: int):
    # Objects with a shape and a dtype (numpy memmaps, zarr or h5py arrays) are sliced, never
    # loaded whole; anything else is small enough to be an in-memory array.
    if not (hasattr(y, "shape") and hasattr(y, "dtype") and hasattr(y, "__getitem__")):
        try:
            y = np.asarray(y)
        except (TypeError, ValueError) as err:
            raise InputTypeError(
                f"y must be a numeric array of shape (n_samples, n_neurons); {err}"
            ) from None
    dtype = np.dtype(y.dtype)
    if dtype.kind not in NUMERIC_KINDS:
        raise InputTypeError(
            f"y must be a numeric array of shape (n_samples, n_neurons); got dtype {dtype}"
        )
    shape = tuple(int(n) for n in y.shape)
    if len(shape) != 2:
        raise InputError(f"y must be 2-D of shape (n_samples, n_neurons); got shape {shape}")
    if shape[0] != n_samples:
        raise InputError(
            f"y must have one row per sample of X: X has {n_samples} samples "
            f"but y has shape {shape}"
        )
    if shape[1] == 0:
        raise InputError(f"y must have at least one neuron; got shape {shape}")
    # Bernoulli responses given as bool are stored as 0/1 counts, like every other integer y.
    store_dtype = np.dtype(np.uint8) if dtype.kind == "b" else dtype
    return y, shape[1], store_dtype


def _default_neuron_chunk(n_samples: int, n_neurons: int, itemsize: int) -> int:
    chunk = max(1, _Y_CHUNK_BYTES // (min(n_samples, _ROW_CHUNK) * itemsize))
    chunk = min(chunk, n_neurons, _MAX_DEFAULT_NEURON_CHUNK)
    return chunk // 8 * 8 if chunk >= 8 else chunk


def _refuse_foreign_directory(path: str) -> None:
    # Only a friendly check for local paths: writing a store into a directory full of other
    # files is almost always a typo in the path.
    if "://" in path or not os.path.isdir(path) or not os.listdir(path):
        return
    if not any(os.path.exists(os.path.join(path, name)) for name in ("zarr.json", ".zgroup")):
        raise StoreError(
            f"{path} is a non-empty directory that is not a Zarr group; choose a new path"
        )


@_zarr.with_storage_options
def write_inputs(path, X, y, feature_mask=None, *, time=None, neuron_ids=None, feature_names=None,
                 neuron_chunk=None, test=None, overwrite=False, storage_options=None) -> str:
    """Write a fit's inputs to a Zarr store, ``y`` and the mask chunked along neurons.

    Every argument is checked before the store is touched, so a refused call leaves the store
    as it was. The store describes itself: every array names its dimensions (``time``,
    ``feature``, ``neuron``) and says what it holds, and the time of each sample, the name of
    each feature and the id of each neuron are stored as coordinates, so
    ``xarray.open_zarr(path, group="inputs")`` opens it as a labelled Dataset.

    Parameters
    ----------
    path : str or os.PathLike
        Local directory or URL of the Zarr group; created if absent.
    X : array of shape (n_samples, n_features) or dict of str to arrays of shape (n_samples, k_i)
        Design matrix shared by all neurons. A dict of feature groups is stored concatenated in
        dict order, with the groups' names and sizes in the ``inputs`` attributes. Must be
        finite except for NaN, which marks a time bin dropped from the fit. Stored as float
        (integer X becomes float64). A pynapple ``TsdFrame``, ``Tsd`` (one feature) or
        ``TsdTensor`` (trailing axes flattened into features) gives its time index and column
        labels.
    y : array of shape (n_samples, n_neurons)
        Responses, any numeric dtype; integer counts stay integer and bool becomes uint8. Any
        object with ``shape``, ``dtype`` and numpy slicing (a ``numpy.memmap``, a Zarr array)
        is copied a few chunks at a time, never loaded whole. A pynapple ``TsdFrame`` (or
        ``Tsd``, one neuron) gives its time index, its column labels as neuron ids and its
        metadata columns as per-neuron coordinates (``neuron_<name>``).
    feature_mask : array of shape (n_features, n_neurons) or dict, optional
        0/1 entries: feature ``i`` predicts neuron ``j`` iff ``feature_mask[i, j] == 1``. When X
        is a dict, a dict with the same keys of arrays of shape (n_neurons,), each repeated over
        its group's columns. Absent means all ones.
    time : array of shape (n_samples,), optional
        Time of each sample in seconds, strictly increasing; by default that of a pynapple X or
        y, else the sample index (stored without units).
    neuron_ids : array of shape (n_neurons,), optional
        Unique integer or string id of each neuron; by default the column labels of a pynapple
        y, else 0 .. n_neurons - 1. Reports, ``distglm inspect`` and the xarray view name
        neurons by these ids.
    feature_names : array of shape (n_features,), optional
        Unique name (or integer label) of each column of X; by default the column labels of a
        pynapple X, ``"<group>[i]"`` for a dict of feature groups, else 0 .. n_features - 1.
    neuron_chunk : int, optional
        Chunk length along neurons, at most n_neurons. By default the largest length whose
        chunk of y holds at most 32 MiB, capped at 64 neurons so that populations of a few
        thousand neurons still split into many blocks, rounded down to a multiple of 8 when
        at least 8.
    overwrite : bool, optional
        Replace inputs already in the store, with the results and the job record of the old
        ones. The new inputs are written in full beside the old ones before anything old is
        deleted: a failure or interruption while they are written leaves the old inputs and
        results untouched. Interrupted during the swap that follows, the store is left with
        inputs marked incomplete (refused by every reader until written again), never with old
        results over new inputs. By default a store that holds inputs is refused.
    storage_options : dict, optional
        fsspec options (credentials, endpoint) for a store at a URL, as ``fsspec.filesystem``
        takes them; used by this call only, never written into the store.

    Returns
    -------
    str
        ``path``, as a str.

    Raises
    ------
    InputTypeError
        If an argument is of the wrong kind (non-numeric array, dict mask with array X).
    InputError
        If an argument has a wrong shape or value.
    StoreError
        If the store already holds inputs and ``overwrite`` is False, another process holds
        the store (a fit, or another ``write_inputs``), or ``path`` is not a place for a Zarr
        group.

    Examples
    --------
    >>> import tempfile, numpy as np
    >>> path = write_inputs(tempfile.mkdtemp() + "/fit.zarr", np.ones((100, 3)),
    ...                     np.zeros((100, 40), dtype=np.int32), neuron_chunk=16)
    >>> info = open_inputs(path)
    >>> info.n_neurons, info.neuron_chunk, info.y_dtype
    (40, 16, dtype('int32'))
    """
    path = as_path(path)
    if not isinstance(overwrite, bool):
        raise InputTypeError(f"overwrite must be a bool; got {type(overwrite).__name__}")
    if isinstance(X, dict):
        unwrapped = {name: _unwrap_series(value, f"X[{name!r}]") for name, value in X.items()}
        X = {name: parts[0] for name, parts in unwrapped.items()}
        x_times = next((parts[1] for parts in unwrapped.values() if parts[1] is not None), None)
        x_columns = None
    else:
        X, x_times, x_columns, _ = _unwrap_series(X, "X")
    y, y_times, y_columns, neuron_meta = _unwrap_series(y, "y")
    X, groups = val.as_design(X)
    val.check_finite(X)
    n_samples, n_features = X.shape
    y, n_neurons, y_dtype = _validate_y(y, n_samples)
    if x_times is not None and y_times is not None and not np.array_equal(x_times, y_times):
        raise InputError("X and y are time series on different time indexes; restrict them to the same "
                         "time bins first (pynapple: y.restrict(...) or y.bin_average(..., ep=...))")
    series_times = x_times if x_times is not None else y_times
    time_units = time is not None or series_times is not None
    time = _check_time(time if time is not None else
                       series_times if series_times is not None else np.arange(n_samples), n_samples)
    if series_times is not None and not np.array_equal(time, series_times):
        raise InputError("time was given but differs from the time index of the pynapple input; give one or the other")
    if test is not None:
        test = _check_test(test, n_samples, time if time_units else None)
    default_names = (np.arange(n_features) if groups is None else
                     np.array([f"{name}[{i}]" for name, size in groups for i in range(size)]))
    feature_names = _labels_of(feature_names, x_columns, default_names, n_features, "feature_names")
    neuron_ids = _labels_of(neuron_ids, y_columns, np.arange(n_neurons), n_neurons, "neuron_ids")
    mask = (None if feature_mask is None
            else val.as_feature_mask(feature_mask, groups, n_features, n_neurons).astype(np.uint8))
    if neuron_chunk is None:
        neuron_chunk = _default_neuron_chunk(n_samples, n_neurons, y_dtype.itemsize)
    else:
        neuron_chunk = _check_int(neuron_chunk, "neuron_chunk", minimum=1)
        if neuron_chunk > n_neurons:
            raise InputError(
                f"neuron_chunk must be at most n_neurons={n_neurons}; got {neuron_chunk}"
            )

    _refuse_foreign_directory(path)
    root = open_group(path, "a")
    with acquire_lease(path, "write_inputs") as lease:
        had_inputs = _zarr.contains(root, "inputs", path)
        if had_inputs and not overwrite:
            raise StoreError(
                f"{path} already holds inputs; pass overwrite=True to replace them "
                "(this also deletes the results fitted to them)"
            )
        # What an interrupted writer left in staging is never read: start it afresh.
        _zarr.delete_node(root, _STAGING)
        attributes = {"complete": False, "generation": uuid.uuid4().hex,
                      "title": "inputs of a population GLM fit (distglm)",
                      "software": _zarr.software_versions()}
        if groups:
            attributes["feature_groups"] = [list(group) for group in groups]
        staging = root.create_group(_STAGING, attributes=attributes)
        _write_coordinates(staging, time, time_units, feature_names, neuron_ids, neuron_meta)
        try:
            _write_arrays(staging, X, y, y_dtype, mask, neuron_chunk, neuron_meta, test)
        except BaseException:
            _zarr.delete_node(root, _STAGING)
            raise
        lease.check()
        if had_inputs:
            # Invalidate before deleting: interrupted from here on, the store holds inputs
            # marked incomplete (refused until written again), never results or a job record
            # that would describe the new inputs.
            root["inputs"].attrs["complete"] = False
        # Deleted whether or not their groups are there: an interrupted delete may have left
        # arrays behind their group's metadata document.
        _zarr.delete_node(root, "job")
        discard_all_results(root)
        _zarr.delete_node(root, "inputs")
        _zarr.move_node(root, _STAGING, "inputs")
        lease.check()
        _zarr.node(root, "inputs", path).attrs["complete"] = True
    return path


def _write_arrays(inputs, X, y, y_dtype, mask, neuron_chunk: int, neuron_meta: dict, test=None) -> None:
    """Write X, y (a few chunks at a time), the mask and the held-out samples into the group ``inputs``."""
    n_samples, n_features = X.shape
    n_neurons = y.shape[1]
    row_chunk = min(n_samples, _ROW_CHUNK)
    x_rows = max(1, _X_CHUNK_BYTES // (n_features * X.dtype.itemsize))
    inputs.create_array(
        "X", shape=X.shape, dtype=X.dtype, chunks=(min(row_chunk, x_rows), n_features),
        dimension_names=("time", "feature"), attributes=_X_ATTRIBUTES,
    )[...] = X
    y_store = inputs.create_array(
        "y", shape=(n_samples, n_neurons), dtype=y_dtype, chunks=(row_chunk, neuron_chunk),
        compressors=_y_compressor(),
        dimension_names=("time", "neuron"), attributes=_y_attributes(y_dtype, neuron_meta),
    )
    # Whole chunks per slice: each chunk is written once, with no read-modify-write.
    chunk_bytes = row_chunk * neuron_chunk * y_dtype.itemsize
    step = max(1, _WRITE_SLICE_BYTES // chunk_bytes) * neuron_chunk
    for start in range(0, n_neurons, step):
        stop = min(start + step, n_neurons)
        for row in range(0, n_samples, row_chunk):
            rows = slice(row, min(row + row_chunk, n_samples))
            y_store[rows, start:stop] = np.asarray(y[rows, start:stop]).astype(y_dtype, copy=False)
    if test is not None:
        inputs.create_array("test", shape=test.shape, dtype=bool, chunks=(min(n_samples, 2**20),),
                            dimension_names=("time",), attributes=_TEST_ATTRIBUTES)[...] = test
    if mask is not None:
        inputs.create_array(
            "feature_mask", shape=mask.shape, dtype=np.uint8, chunks=(n_features, neuron_chunk),
            dimension_names=("feature", "neuron"), attributes=_MASK_ATTRIBUTES,
        )[...] = mask


_X_ATTRIBUTES = {
    "long_name": "design matrix",
    "description": "predictors shared by every neuron, one row per time bin; a row holding NaN is left "
                   "out of the fit",
}
_TEST_ATTRIBUTES = {
    "long_name": "held-out samples",
    "description": "samples left out of every fit's training and used to score it",
    "flag_values": [0, 1],
    "flag_meanings": "training held_out",
}


def _check_test(test, n_samples: int, time: np.ndarray | None) -> np.ndarray:
    """``write_inputs``' ``test`` as a bool mask of shape (n_samples,) holding out some samples, not all."""

    def times():
        if time is None:
            raise InputError("test as time intervals needs the samples' times: give time=, or X or y as pynapple "
                             "time series")
        return time

    mask = val.as_sample_mask(test, n_samples, times, "test")
    if not mask.any() or mask.all():
        raise InputError(f"test must hold out at least one sample and keep one for training; it holds out "
                         f"{int(mask.sum())} of the {n_samples} samples")
    return mask


_MASK_ATTRIBUTES = {
    "long_name": "feature mask",
    "description": "whether a feature is a predictor of a neuron",
    "flag_values": [0, 1],
    "flag_meanings": "excluded included",
}


def _y_attributes(dtype: np.dtype, neuron_meta: dict) -> dict:
    attributes = {"long_name": "responses",
                  "description": "activity of each neuron in each time bin, the variable the model predicts"}
    if dtype.kind in "iu":
        attributes["units"] = "count"
    if neuron_meta:
        # CF: the names of auxiliary coordinates along this variable's dimensions
        attributes["coordinates"] = " ".join(f"neuron_{name}" for name in neuron_meta)
    return attributes


def _write_coordinates(inputs, time, time_units: bool, feature_names, neuron_ids, neuron_meta: dict) -> None:
    time_attributes = ({"long_name": "time", "units": "s"} if time_units
                       else {"long_name": "sample index", "description": "no time index was given"})
    _zarr.write_coordinate(inputs, "time", time, time_attributes)
    _zarr.write_coordinate(inputs, "feature", feature_names, {"long_name": "feature (column of X)"})
    _zarr.write_coordinate(inputs, "neuron", neuron_ids, {"long_name": "neuron id"})
    for name, values in neuron_meta.items():
        _zarr.write_coordinate(inputs, f"neuron_{name}", values,
                               {"long_name": f"{name} of each neuron (pynapple metadata)"}, "neuron")


def _open_inputs(path: str):
    """Check a store's inputs from metadata; return the info and the open arrays."""
    root = open_group(path, "r")
    hint = "write inputs with distglm.write_inputs(path, X, y)"
    inputs = _zarr.node(root, "inputs", path)
    if inputs is not None and inputs.attrs.get("complete") is False:
        raise StoreError(
            f"{path}: the inputs were not completely written (a write_inputs was interrupted); "
            "write them again with distglm.write_inputs(path, X, y, overwrite=True)"
        )
    X = _zarr.array(root, "inputs/X", path, hint)
    y = _zarr.array(root, "inputs/y", path, hint)
    if X.ndim != 2:
        raise StoreError(f"{path}: inputs/X must be 2-D of shape (n_samples, n_features); "
                         f"got shape {X.shape}")
    if y.ndim != 2:
        raise StoreError(f"{path}: inputs/y must be 2-D of shape (n_samples, n_neurons); "
                         f"got shape {y.shape}")
    (n_samples, n_features), n_neurons = X.shape, y.shape[1]
    if y.shape[0] != n_samples:
        raise StoreError(f"{path}: inputs/X has {n_samples} samples but inputs/y has "
                         f"{y.shape[0]}; both must have n_samples rows")
    neuron_chunk = _zarr.neuron_chunk(y)
    mask = None
    if _zarr.contains(inputs, "feature_mask", path):
        mask = _zarr.array(root, "inputs/feature_mask", path, hint)
        if mask.shape != (n_features, n_neurons):
            raise StoreError(f"{path}: inputs/feature_mask must have shape (n_features, "
                             f"n_neurons) = ({n_features}, {n_neurons}); got {mask.shape}")
        if _zarr.neuron_chunk(mask) != neuron_chunk:
            raise StoreError(
                f"{path}: inputs/feature_mask is chunked by {_zarr.neuron_chunk(mask)} neurons but "
                f"inputs/y by {neuron_chunk}; rechunk the mask along neurons to {neuron_chunk} "
                "so that blocks of neurons align with both"
            )
    groups = inputs.attrs.get("feature_groups")
    if groups is not None:
        try:
            groups = tuple((str(name), int(size)) for name, size in groups)
        except (TypeError, ValueError):
            raise StoreError(f"{path}: inputs attribute feature_groups must be a list of "
                             f"[name, size] pairs; got {groups!r}") from None
        if sum(size for _, size in groups) != n_features:
            raise StoreError(f"{path}: inputs attribute feature_groups {list(groups)} does not "
                             f"add up to the {n_features} columns of inputs/X")
    info = InputsInfo(
        n_samples=int(n_samples),
        n_features=int(n_features),
        n_neurons=int(n_neurons),
        neuron_chunk=neuron_chunk,
        y_dtype=_zarr.native(y.dtype),
        has_mask=mask is not None,
        feature_groups=groups,
        X_dtype=_zarr.native(X.dtype),
        generation=inputs.attrs.get("generation"),
        row_chunk=int((y.shards or y.chunks)[0]),
        has_test=_test_array(inputs, path, n_samples) is not None,
    )
    return info, X, y, mask


def _test_array(inputs, path: str, n_samples: int):
    """The store's ``inputs/test`` array, checked to be bool of shape (n_samples,); None without one."""
    if inputs is None or not _zarr.contains(inputs, "test", path):
        return None
    test = _zarr.node(inputs, "test", path)
    if not hasattr(test, "dtype") or np.dtype(test.dtype) != np.bool_ or test.shape != (n_samples,):
        raise StoreError(f"{path}: inputs/test must be a bool array of shape ({n_samples},), one flag per sample; "
                         f"got {test!r}; write the inputs again with distglm.write_inputs(..., test=...)")
    return test


def open_inputs(path) -> InputsInfo:
    """Check a store's inputs and describe them, reading metadata only (no data scan).

    Works on stores written by :func:`write_inputs` and on groups written directly with Zarr
    that have ``inputs/X`` and ``inputs/y`` (``y`` in any chunking: the neuron chunk is the
    chunk, or shard, length of ``y`` along neurons).

    Parameters
    ----------
    path : str or os.PathLike
        Local directory or URL of the Zarr group.

    Returns
    -------
    InputsInfo

    Raises
    ------
    StoreError
        If there is no Zarr group at ``path``, ``inputs/X`` or ``inputs/y`` is missing, not
        2-D or not numeric, their n_samples differ, or ``inputs/feature_mask`` has the wrong
        shape or a neuron chunk other than that of ``y``.

    Examples
    --------
    >>> import tempfile, numpy as np
    >>> path = write_inputs(tempfile.mkdtemp() + "/fit.zarr", {"a": np.ones((10, 2)),
    ...                     "b": np.ones((10, 1))}, np.ones((10, 4)))
    >>> open_inputs(path).feature_groups
    (('a', 2), ('b', 1))
    """
    return _open_inputs(as_path(path))[0]


def read_coordinates(path) -> dict[str, np.ndarray]:
    """The time of each sample, the name of each feature and the id of each neuron.

    Stores written before coordinates were recorded (or by hand with Zarr) give positions:
    0 .. n - 1 along each dimension.

    Parameters
    ----------
    path : str or os.PathLike
        Local directory or URL of the Zarr group.

    Returns
    -------
    dict
        ``"time"`` of shape (n_samples,), ``"feature"`` of shape (n_features,) and ``"neuron"``
        of shape (n_neurons,); numbers, or strings for string labels.

    Examples
    --------
    >>> import tempfile, numpy as np
    >>> path = write_inputs(tempfile.mkdtemp() + "/fit.zarr", np.ones((3, 1)), np.ones((3, 2)),
    ...                     neuron_ids=["unit7", "unit9"])
    >>> read_coordinates(path)["neuron"]
    array(['unit7', 'unit9'], dtype='<U5')
    """
    path = as_path(path)
    info = open_inputs(path)
    inputs = open_group(path, "r")["inputs"]
    lengths = {"time": info.n_samples, "feature": info.n_features, "neuron": info.n_neurons}
    coordinates = {}
    for name, length in lengths.items():
        found = _zarr.labels(inputs, name, path, length)
        coordinates[name] = np.arange(length) if found is None else found
    return coordinates


def read_test(path) -> np.ndarray | None:
    """The samples the inputs hold out of every fit (``write_inputs(test=...)``), or None.

    Parameters
    ----------
    path : str or os.PathLike
        Local directory or URL of the Zarr group.

    Returns
    -------
    bool ndarray of shape (n_samples,) or None

    Examples
    --------
    >>> import tempfile, numpy as np
    >>> path = write_inputs(tempfile.mkdtemp() + "/fit.zarr", np.ones((4, 1)), np.ones((4, 2)), test=slice(3, None))
    >>> read_test(path)
    array([False, False, False,  True])
    """
    path = as_path(path)
    info = open_inputs(path)
    test = _test_array(open_group(path, "r")["inputs"], path, info.n_samples)
    return None if test is None else _zarr.read(test, Ellipsis, "inputs/test", path)


def read_time(path) -> np.ndarray:
    """The time of each sample in seconds, as ``write_inputs`` recorded it.

    Raises
    ------
    InputError
        If the store records no time (inputs written by hand, or without ``time=`` or pynapple
        time series: their time coordinate is the sample index).

    Examples
    --------
    >>> import tempfile, numpy as np
    >>> path = write_inputs(tempfile.mkdtemp() + "/fit.zarr", np.ones((3, 1)), np.ones((3, 2)), time=[0.5, 1, 1.5])
    >>> read_time(path)
    array([0.5, 1. , 1.5])
    """
    path = as_path(path)
    info = open_inputs(path)
    inputs = open_group(path, "r")["inputs"]
    found = _zarr.labels(inputs, "time", path, info.n_samples)
    if found is None or _zarr.node(inputs, "time", path).attrs.get("units") != "s":
        raise InputError(f"{path} records no time of its samples (its inputs were written without time=, pynapple "
                         "time series, or by hand), so time intervals cannot select them; write the inputs with "
                         "time=... or pass a boolean mask of the samples")
    return np.asarray(found, dtype=np.float64)


def inputs_generation(path) -> str | None:
    """The id of this writing of the store's inputs (new at every ``write_inputs``).

    Results record the generation they were fitted to, so results of earlier inputs are never
    taken for results of these. None for inputs written by hand with Zarr.

    Examples
    --------
    >>> import tempfile, numpy as np
    >>> path = write_inputs(tempfile.mkdtemp() + "/fit.zarr", np.eye(3), np.ones((3, 2)))
    >>> len(inputs_generation(path))
    32
    """
    return open_inputs(path).generation


def read_X(path) -> np.ndarray:
    """Read the whole design matrix.

    Parameters
    ----------
    path : str or os.PathLike
        Local directory or URL of the Zarr group.

    Returns
    -------
    ndarray of shape (n_samples, n_features)
        Float; a non-float ``inputs/X`` written directly with Zarr is returned as float64.

    Examples
    --------
    >>> import tempfile, numpy as np
    >>> path = write_inputs(tempfile.mkdtemp() + "/fit.zarr", np.eye(3), np.ones((3, 2)))
    >>> read_X(path).shape
    (3, 3)
    """
    path = as_path(path)
    _, X, _, _ = _open_inputs(path)
    values = _zarr.read(X, Ellipsis, "inputs/X", path)
    return values if values.dtype.kind == "f" else values.astype(np.float64)


class InputsReader:
    """Reads blocks of a store's inputs, holding ``inputs/y`` and the mask open between blocks.

    Parameters
    ----------
    path : str or os.PathLike
        Local directory or URL of the Zarr group.

    Attributes
    ----------
    info : InputsInfo
    """

    def __init__(self, path):
        self.path = as_path(path)
        self.info, self._X, self._y, self._mask = _open_inputs(self.path)

    def y_block(self, start, stop, rows: slice = slice(None)) -> np.ndarray:
        """The responses of neurons ``[start, stop)`` in the samples ``rows`` (default all), stored dtype.

        Of shape (n_rows, stop - start).
        """
        start, stop = _zarr.check_range(start, stop, self.info.n_neurons)
        return _zarr.read(self._y, (_check_rows(rows), slice(start, stop)), "inputs/y", self.path)

    def X_rows(self, rows: slice) -> np.ndarray:
        """The design matrix's samples ``rows``, of shape (n_rows, n_features), stored dtype."""
        return _zarr.read(self._X, (_check_rows(rows), slice(None)), "inputs/X", self.path)

    def mask_block(self, start, stop) -> np.ndarray:
        """The float64 0/1 mask of neurons ``[start, stop)``, of shape (n_features, stop - start)."""
        start, stop = _zarr.check_range(start, stop, self.info.n_neurons)
        if self._mask is None:
            return np.ones((self.info.n_features, stop - start))
        values = _zarr.read(self._mask, (slice(None), slice(start, stop)), "inputs/feature_mask", self.path)
        return values.astype(np.float64)


def _check_rows(rows) -> slice:
    if not isinstance(rows, slice) or rows.step not in (None, 1):
        raise InputTypeError(f"rows must be a slice of consecutive samples; got {rows!r}")
    return rows


def read_y_block(path, start, stop) -> np.ndarray:
    """Read the responses of neurons ``[start, stop)``, in their stored dtype.

    Parameters
    ----------
    path : str or os.PathLike
        Local directory or URL of the Zarr group.
    start, stop : int
        Neurons to read, ``0 <= start < stop <= n_neurons``.

    Returns
    -------
    ndarray of shape (n_samples, stop - start)

    Examples
    --------
    >>> import tempfile, numpy as np
    >>> y = np.arange(12).reshape(3, 4)
    >>> path = write_inputs(tempfile.mkdtemp() + "/fit.zarr", np.ones((3, 1)), y)
    >>> read_y_block(path, 1, 3)
    array([[ 1,  2],
           [ 5,  6],
           [ 9, 10]])
    """
    return InputsReader(path).y_block(start, stop)


def read_mask_block(path, start, stop) -> np.ndarray:
    """Read the feature mask of neurons ``[start, stop)`` as floats.

    Parameters
    ----------
    path : str or os.PathLike
        Local directory or URL of the Zarr group.
    start, stop : int
        Neurons to read, ``0 <= start < stop <= n_neurons``.

    Returns
    -------
    ndarray of shape (n_features, stop - start)
        float64 0/1; all ones when the store has no mask.

    Examples
    --------
    >>> import tempfile, numpy as np
    >>> path = write_inputs(tempfile.mkdtemp() + "/fit.zarr", np.ones((5, 2)), np.ones((5, 3)))
    >>> read_mask_block(path, 0, 2)
    array([[1., 1.],
           [1., 1.]])
    """
    return InputsReader(path).mask_block(start, stop)


def scan_X(path, chunk_fn: Callable[[int, np.ndarray], None]) -> None:
    """Stream ``X`` one stored chunk of samples at a time, never holding all of it in memory.

    Parameters
    ----------
    path : str or os.PathLike
        Local directory or URL of the Zarr group.
    chunk_fn : callable
        Called as ``chunk_fn(row, X_rows)`` for consecutive chunks of samples starting at
        ``row``, with ``X_rows`` of shape (n_rows, n_features) in the stored dtype.

    Examples
    --------
    >>> import tempfile, numpy as np
    >>> path = write_inputs(tempfile.mkdtemp() + "/fit.zarr", np.ones((4, 3)), np.ones((4, 2)))
    >>> scan_X(path, lambda row, rows: print(row, rows.shape))
    0 (4, 3)
    """
    if not callable(chunk_fn):
        raise InputTypeError(f"chunk_fn must be callable; got {type(chunk_fn).__name__}")
    path = as_path(path)
    info, X, _, _ = _open_inputs(path)
    step = int((X.shards or X.chunks)[0])
    rows = range(0, info.n_samples, step)
    reads = (functools.partial(_zarr.read, X, (slice(row, min(row + step, info.n_samples)), slice(None)), "inputs/X",
                               path) for row in rows)
    for row, values in zip(rows, _read_ahead(reads)):
        chunk_fn(row, values)


def scan_y(path, chunk_fn: Callable, *, by_rows: bool = False) -> None:
    """Stream ``y`` one neuron chunk at a time, never holding all of it in memory.

    Parameters
    ----------
    path : str or os.PathLike
        Local directory or URL of the Zarr group.
    chunk_fn : callable
        Called as ``chunk_fn(start, stop, y_chunk)`` for consecutive chunks of neurons
        ``[start, stop)`` covering the population, with ``y_chunk`` of shape
        (n_samples, stop - start) in the stored dtype.
    by_rows : bool
        Stream stored chunks of samples too, so memory does not grow with the recording's
        length: ``chunk_fn(start, stop, y_chunk, row)`` is then called for each chunk of
        samples of each chunk of neurons, ``y_chunk`` of shape (n_rows, stop - start) holding
        the samples from ``row`` on.

    Examples
    --------
    >>> import tempfile, numpy as np
    >>> path = write_inputs(tempfile.mkdtemp() + "/fit.zarr", np.ones((4, 1)),
    ...                     np.ones((4, 20)), neuron_chunk=8)
    >>> scan_y(path, lambda start, stop, chunk: print(start, stop, chunk.shape))
    0 8 (4, 8)
    8 16 (4, 8)
    16 20 (4, 4)
    """
    if not callable(chunk_fn):
        raise InputTypeError(f"chunk_fn must be callable; got {type(chunk_fn).__name__}")
    if not isinstance(by_rows, bool):
        raise InputTypeError(f"by_rows must be a bool; got {type(by_rows).__name__}")
    path = as_path(path)
    info, _, y, _ = _open_inputs(path)
    step = info.row_chunk if by_rows else info.n_samples
    parts = [(start, min(start + info.neuron_chunk, info.n_neurons), row)
             for start in range(0, info.n_neurons, info.neuron_chunk) for row in range(0, info.n_samples, step)]
    reads = (functools.partial(_zarr.read, y, (slice(row, min(row + step, info.n_samples)), slice(start, stop)),
                               "inputs/y", path) for start, stop, row in parts)
    for (start, stop, row), chunk in zip(parts, _read_ahead(reads)):
        chunk_fn(start, stop, chunk, row) if by_rows else chunk_fn(start, stop, chunk)


def _read_ahead(reads):
    """Call ``reads`` (functions of no argument) in order and yield their results, reading one ahead.

    The next read (decompression included) runs in a background thread while the caller works on
    the current result, so a scan's checks and hashing overlap its reads. At most two results
    are held at once.
    """
    with concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="distglm-read") as pool:
        pending = None
        for read in reads:
            ahead = pool.submit(read)
            if pending is not None:
                yield pending.result()
            pending = ahead
        if pending is not None:
            yield pending.result()


def nan_rows(path) -> np.ndarray:
    """Find the time bins dropped from every neuron's fit: a NaN in ``X`` or in any ``y``.

    Parameters
    ----------
    path : str or os.PathLike
        Local directory or URL of the Zarr group.

    Returns
    -------
    ndarray of shape (n_samples,)
        bool, True for rows to drop. Integer ``y`` cannot hold NaN and is not scanned.

    Examples
    --------
    >>> import tempfile, numpy as np
    >>> X, y = np.ones((4, 2)), np.ones((4, 3))
    >>> X[0, 1] = np.nan
    >>> y[2, 2] = np.nan
    >>> nan_rows(write_inputs(tempfile.mkdtemp() + "/fit.zarr", X, y))
    array([ True, False,  True, False])
    """
    path = as_path(path)
    info = open_inputs(path)
    rows = np.zeros(info.n_samples, dtype=bool)

    def mark_X(row, X_rows):
        rows[row:row + len(X_rows)] |= np.isnan(X_rows).any(axis=1)

    scan_X(path, mark_X)
    if info.y_dtype.kind == "f":

        def mark(start, stop, y_chunk, row):
            rows[row:row + len(y_chunk)] |= np.isnan(y_chunk).any(axis=1)

        scan_y(path, mark, by_rows=True)
    return rows

