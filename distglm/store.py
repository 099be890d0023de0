"""The Zarr layout of a distglm store: write and read inputs, create and gather results.

A store is one Zarr group (a local directory or any URL Zarr accepts) laid out as::

    inputs/                  attrs: feature_groups = [[name, k], ...] when X was a dict
        X                    (n_samples, n_features) float, one chunk along features
        y                    (n_samples, n_neurons), chunks (n_samples, neuron_chunk)
        feature_mask         (n_features, n_neurons) uint8 0/1, chunks (n_features, neuron_chunk);
                             absent means every feature predicts every neuron
    results/                 attrs: fingerprint, state_spec
        coef                 (n_features, n_neurons), chunks (n_features, neuron_chunk)
        intercept, scale, dof_resid, loss, grad_norm, n_iter, converged, status
                             (n_neurons,), chunks (neuron_chunk,)
        done                 (n_blocks,) bool, one chunk per block
        solver_state/<name>  (*shape, n_neurons) per neuron, or (n_blocks, *shape) per block

Every array that blocks of neurons write is chunked along neurons by the same
``neuron_chunk``, and blocks are planned on chunk boundaries (:mod:`distglm.plan`): Zarr only
promises safe concurrent writes to different chunks, so several processes can write different
blocks of one store at once. A block's ``done`` marker is written last, so a block marked done
is complete.

Each function opens the store anew (opening reads only small metadata documents), so any
process holding a path can call it. This module uses only numpy and zarr.
"""

from __future__ import annotations

import json
import os
from typing import Callable, NamedTuple

import numpy as np
import zarr
from zarr.errors import BaseZarrError

from distglm import validation as val
from distglm.errors import InputError, InputTypeError, PlanError, StoreError
from distglm.plan import Block, _check_int

__all__ = [
    "RESULT_NAMES",
    "STATUS_UNWRITTEN",
    "InputsInfo",
    "write_inputs",
    "open_inputs",
    "read_X",
    "read_y_block",
    "read_mask_block",
    "scan_y",
    "nan_rows",
    "create_results",
    "write_block",
    "done_blocks",
    "read_results",
    "read_state",
    "read_fingerprint",
    "write_attrs",
    "read_attrs",
]

_MiB = 2**20
# One y chunk is what an actor reads per chunk of its block: big enough for efficient reads
# from object stores, small enough to keep several in memory.
_Y_CHUNK_BYTES = 32 * _MiB
# Blocks are whole chunks, so a default chunk wider than this would force big blocks and leave
# actors idle on populations of a few thousand neurons.
_MAX_DEFAULT_NEURON_CHUNK = 64
_X_CHUNK_BYTES = 64 * _MiB
# Bound on the memory write_inputs holds at once while copying y from a memmap or array store.
_WRITE_SLICE_BYTES = 64 * _MiB

#: Per-neuron result arrays, in the order :func:`read_results` returns them.
RESULT_NAMES = (
    "coef",
    "intercept",
    "scale",
    "dof_resid",
    "loss",
    "grad_norm",
    "n_iter",
    "converged",
    "status",
)
#: ``results/status`` of a neuron whose block was never written.
STATUS_UNWRITTEN = -1
# Result arrays whose dtype does not follow the fit's float dtype, with their fill values.
_FIXED_RESULTS = {
    "n_iter": (np.dtype("int32"), 0),
    "converged": (np.dtype("bool"), False),
    "status": (np.dtype("int8"), STATUS_UNWRITTEN),
}
_NUMERIC_KINDS = "biuf"


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
    """

    n_samples: int
    n_features: int
    n_neurons: int
    neuron_chunk: int
    y_dtype: np.dtype
    has_mask: bool
    feature_groups: tuple | None
    X_dtype: np.dtype


# ---------------------------------------------------------------------------------------------
# Opening


def _as_path(path) -> str:
    if isinstance(path, os.PathLike):
        path = os.fspath(path)
    if not isinstance(path, str):
        raise InputTypeError(
            f"path must be a str (a directory or a URL) or os.PathLike; got {type(path).__name__}"
        )
    return path


def _open_group(path: str, mode: str) -> zarr.Group:
    try:
        # Consolidated metadata would go stale as soon as results are added, so never use it.
        return zarr.open_group(path, mode=mode, use_consolidated=False)
    except (OSError, KeyError, BaseZarrError) as err:
        raise StoreError(
            f"{path} is not a distglm store: no Zarr group at {path} ({err})"
        ) from err
    except Exception as err:  # noqa: BLE001 - remote backends raise their own kinds (botocore, ...)
        raise StoreError(f"cannot read the store {path}: {type(err).__name__}: {err}") from err


def _array(group: zarr.Group, name: str, path: str, hint: str) -> zarr.Array:
    try:
        node = group[name]
    except KeyError:
        raise StoreError(f"{path} has no {name} array; {hint}") from None
    if not isinstance(node, zarr.Array):
        raise StoreError(f"{path}: {name} is a group; expected an array")
    return node


def _neuron_chunk(array: zarr.Array) -> int:
    # With sharding the unit a writer rewrites is the shard, not the inner chunk.
    return int((array.shards or array.chunks)[-1])


def _native(dtype) -> np.dtype:
    # Zarr reports little-endian dtypes with an explicit '<'; the native spelling compares equal
    # and prints as users expect (int32, not <i4).
    dtype = np.dtype(dtype)
    return dtype.newbyteorder("=") if dtype.isnative else dtype


def _json_like(value, name: str):
    """Return ``value`` as it reads back from JSON, so stored and given values compare equal."""
    try:
        return json.loads(json.dumps(value, allow_nan=False))
    except TypeError as err:
        raise InputTypeError(f"{name} must be JSON-serialisable (dict, list, str, int, float, "
                             f"bool, None); {err}") from None
    except ValueError as err:
        raise InputError(f"{name} must be JSON-serialisable without NaN or inf; {err}") from None


# ---------------------------------------------------------------------------------------------
# Inputs


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
    if dtype.kind not in _NUMERIC_KINDS:
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
    chunk = max(1, _Y_CHUNK_BYTES // (n_samples * itemsize))
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


def write_inputs(path, X, y, feature_mask=None, *, neuron_chunk=None, overwrite=False) -> str:
    """Write a fit's inputs to a Zarr store, ``y`` and the mask chunked along neurons.

    Every argument is checked before the store is touched, so a refused call leaves the store
    as it was.

    Parameters
    ----------
    path : str or os.PathLike
        Local directory or URL of the Zarr group; created if absent.
    X : array of shape (n_samples, n_features) or dict of str to arrays of shape (n_samples, k_i)
        Design matrix shared by all neurons. A dict of feature groups is stored concatenated in
        dict order, with the groups' names and sizes in the ``inputs`` attributes. Must be
        finite except for NaN, which marks a time bin dropped from the fit. Stored as float
        (integer X becomes float64).
    y : array of shape (n_samples, n_neurons)
        Responses, any numeric dtype; integer counts stay integer and bool becomes uint8. Any
        object with ``shape``, ``dtype`` and numpy slicing (a ``numpy.memmap``, a Zarr array)
        is copied a few chunks at a time, never loaded whole.
    feature_mask : array of shape (n_features, n_neurons) or dict, optional
        0/1 entries: feature ``i`` predicts neuron ``j`` iff ``feature_mask[i, j] == 1``. When X
        is a dict, a dict with the same keys of arrays of shape (n_neurons,), each repeated over
        its group's columns. Absent means all ones.
    neuron_chunk : int, optional
        Chunk length along neurons, at most n_neurons. By default the largest length whose
        chunk of y holds at most 32 MiB, capped at 64 neurons so that populations of a few
        thousand neurons still split into many blocks, rounded down to a multiple of 8 when
        at least 8.
    overwrite : bool, optional
        Replace inputs already in the store (and delete its now stale results). By default a
        store that holds inputs is refused.

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
        If the store already holds inputs and ``overwrite`` is False, or ``path`` is not a
        place for a Zarr group.

    Examples
    --------
    >>> import tempfile, numpy as np
    >>> path = write_inputs(tempfile.mkdtemp() + "/fit.zarr", np.ones((100, 3)),
    ...                     np.zeros((100, 40), dtype=np.int32), neuron_chunk=16)
    >>> info = open_inputs(path)
    >>> info.n_neurons, info.neuron_chunk, info.y_dtype
    (40, 16, dtype('int32'))
    """
    path = _as_path(path)
    if not isinstance(overwrite, bool):
        raise InputTypeError(f"overwrite must be a bool; got {type(overwrite).__name__}")
    X, groups = val.as_design(X)
    val.check_finite(X)
    n_samples, n_features = X.shape
    y, n_neurons, y_dtype = _validate_y(y, n_samples)
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
    root = _open_group(path, "a")
    if "inputs" in root:
        if not overwrite:
            raise StoreError(
                f"{path} already holds inputs; pass overwrite=True to replace them "
                "(this also deletes the results fitted to them)"
            )
        del root["inputs"]
        if "results" in root:
            del root["results"]

    attributes = {"feature_groups": [list(group) for group in groups]} if groups else {}
    inputs = root.create_group("inputs", attributes=attributes)
    x_rows = max(1, _X_CHUNK_BYTES // (n_features * X.dtype.itemsize))
    inputs.create_array(
        "X", shape=X.shape, dtype=X.dtype, chunks=(min(n_samples, x_rows), n_features)
    )[...] = X
    y_store = inputs.create_array(
        "y", shape=(n_samples, n_neurons), dtype=y_dtype, chunks=(n_samples, neuron_chunk)
    )
    # Whole chunks per slice: each chunk is written once, with no read-modify-write.
    chunk_bytes = n_samples * neuron_chunk * y_dtype.itemsize
    step = max(1, _WRITE_SLICE_BYTES // chunk_bytes) * neuron_chunk
    for start in range(0, n_neurons, step):
        stop = min(start + step, n_neurons)
        y_store[:, start:stop] = np.asarray(y[:, start:stop]).astype(y_dtype, copy=False)
    if mask is not None:
        inputs.create_array(
            "feature_mask", shape=mask.shape, dtype=np.uint8, chunks=(n_features, neuron_chunk)
        )[...] = mask
    return path


def _open_inputs(path: str):
    """Check a store's inputs from metadata; return the info and the open arrays."""
    root = _open_group(path, "r")
    hint = "write inputs with distglm.write_inputs(path, X, y)"
    X = _array(root, "inputs/X", path, hint)
    y = _array(root, "inputs/y", path, hint)
    if X.ndim != 2:
        raise StoreError(f"{path}: inputs/X must be 2-D of shape (n_samples, n_features); "
                         f"got shape {X.shape}")
    if y.ndim != 2:
        raise StoreError(f"{path}: inputs/y must be 2-D of shape (n_samples, n_neurons); "
                         f"got shape {y.shape}")
    for name, array in (("X", X), ("y", y)):
        if np.dtype(array.dtype).kind not in _NUMERIC_KINDS:
            raise StoreError(f"{path}: inputs/{name} must be numeric; got dtype {array.dtype}")
    (n_samples, n_features), n_neurons = X.shape, y.shape[1]
    if y.shape[0] != n_samples:
        raise StoreError(f"{path}: inputs/X has {n_samples} samples but inputs/y has "
                         f"{y.shape[0]}; both must have n_samples rows")
    neuron_chunk = _neuron_chunk(y)
    mask = root["inputs/feature_mask"] if "feature_mask" in root["inputs"] else None
    if mask is not None:
        if not isinstance(mask, zarr.Array) or mask.shape != (n_features, n_neurons):
            shape = mask.shape if isinstance(mask, zarr.Array) else "a group"
            raise StoreError(f"{path}: inputs/feature_mask must have shape (n_features, "
                             f"n_neurons) = ({n_features}, {n_neurons}); got {shape}")
        if np.dtype(mask.dtype).kind not in _NUMERIC_KINDS:
            raise StoreError(f"{path}: inputs/feature_mask must be numeric 0/1; "
                             f"got dtype {mask.dtype}")
        if _neuron_chunk(mask) != neuron_chunk:
            raise StoreError(
                f"{path}: inputs/feature_mask is chunked by {_neuron_chunk(mask)} neurons but "
                f"inputs/y by {neuron_chunk}; rechunk the mask along neurons to {neuron_chunk} "
                "so that blocks of neurons align with both"
            )
    groups = root["inputs"].attrs.get("feature_groups")
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
        y_dtype=_native(y.dtype),
        has_mask=mask is not None,
        feature_groups=groups,
        X_dtype=_native(X.dtype),
    )
    return info, X, y, mask


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
    return _open_inputs(_as_path(path))[0]


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
    _, X, _, _ = _open_inputs(_as_path(path))
    values = np.asarray(X[...])
    return values if values.dtype.kind == "f" else values.astype(np.float64)


def _check_range(start, stop, n_neurons: int) -> tuple[int, int]:
    start = _check_int(start, "start")
    stop = n_neurons if stop is None else _check_int(stop, "stop")
    if not 0 <= start < stop <= n_neurons:
        raise InputError(f"neurons [start, stop) must satisfy 0 <= start < stop <= "
                         f"n_neurons={n_neurons}; got start={start}, stop={stop}")
    return start, stop


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
    info, _, y, _ = _open_inputs(_as_path(path))
    start, stop = _check_range(start, stop, info.n_neurons)
    return np.asarray(y[:, start:stop])


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
    info, _, _, mask = _open_inputs(_as_path(path))
    start, stop = _check_range(start, stop, info.n_neurons)
    if mask is None:
        return np.ones((info.n_features, stop - start))
    return np.asarray(mask[:, start:stop], dtype=np.float64)


def scan_y(path, chunk_fn: Callable[[int, int, np.ndarray], None]) -> None:
    """Stream ``y`` one neuron chunk at a time, never holding all of it in memory.

    Parameters
    ----------
    path : str or os.PathLike
        Local directory or URL of the Zarr group.
    chunk_fn : callable
        Called as ``chunk_fn(start, stop, y_chunk)`` for consecutive chunks of neurons
        ``[start, stop)`` covering the population, with ``y_chunk`` of shape
        (n_samples, stop - start) in the stored dtype.

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
    info, _, y, _ = _open_inputs(_as_path(path))
    for start in range(0, info.n_neurons, info.neuron_chunk):
        stop = min(start + info.neuron_chunk, info.n_neurons)
        chunk_fn(start, stop, np.asarray(y[:, start:stop]))


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
    path = _as_path(path)
    rows = np.isnan(read_X(path)).any(axis=1)
    if open_inputs(path).y_dtype.kind == "f":

        def mark(start, stop, y_chunk):
            rows[:] |= np.isnan(y_chunk).any(axis=1)

        scan_y(path, mark)
    return rows


# ---------------------------------------------------------------------------------------------
# Results


def _normalise_state_spec(state_spec) -> dict:
    if not isinstance(state_spec, dict):
        raise InputTypeError(
            "state_spec must be a dict name -> (shape, dtype, per_neuron); "
            f"got {type(state_spec).__name__}"
        )
    spec = {}
    for name, entry in state_spec.items():
        if not isinstance(name, str) or not name or "/" in name:
            raise InputError(f"state_spec names must be non-empty str without '/'; got {name!r}")
        try:
            shape, dtype, per_neuron = entry
            shape = [_check_int(n, f"state_spec[{name!r}] shape entry", minimum=0) for n in shape]
            dtype = np.dtype(dtype).name
        except (TypeError, ValueError) as err:
            raise InputTypeError(
                f"state_spec[{name!r}] must be (shape tuple, dtype str, per_neuron bool); "
                f"got {entry!r} ({err})"
            ) from None
        if not isinstance(per_neuron, bool):
            raise InputTypeError(
                f"state_spec[{name!r}] per_neuron must be a bool; got {per_neuron!r}"
            )
        spec[name] = [shape, dtype, per_neuron]
    return spec


def _results(path: str, mode: str) -> zarr.Group:
    root = _open_group(path, mode)
    if "results" not in root:
        raise StoreError(f"{path} holds no results; a fit creates them with create_results")
    results = root["results"]
    # create_results writes the fingerprint last: without it some arrays may be missing.
    if "fingerprint" not in results.attrs:
        raise StoreError(f"{path} holds results that were not completely created; "
                         "run the fit again to create them anew")
    return results


def _layout_differences(results, n_features, n_neurons, neuron_chunk, n_blocks, dtype, spec):
    coef, done = results["coef"], results["done"]
    expected = {
        "coef shape": (coef.shape, (n_features, n_neurons)),
        "neuron chunk": (_neuron_chunk(coef), neuron_chunk),
        "dtype": (np.dtype(coef.dtype), dtype),
        "number of blocks": (done.shape, (n_blocks,)),
        "state_spec": (results.attrs.get("state_spec"), spec),
    }
    return [
        f"{key} {got} instead of {want}" for key, (got, want) in expected.items() if got != want
    ]


def create_results(
    path,
    *,
    n_features,
    n_neurons,
    neuron_chunk,
    n_blocks,
    dtype,
    state_spec,
    fingerprint,
    overwrite=False,
) -> None:
    """Create every result array of a fit, before any block is written, or keep them to resume.

    If the store already holds results with the same ``fingerprint`` (and layout), they are
    kept as they are, so a restarted fit skips the blocks marked done. The fingerprint is
    written last: results without one were never completely created and are replaced.

    Parameters
    ----------
    path : str or os.PathLike
        Local directory or URL of the Zarr group.
    n_features, n_neurons : int
        Shape of ``coef``, (n_features, n_neurons).
    neuron_chunk : int
        Chunk length along neurons of every per-neuron array; blocks must be aligned with it.
    n_blocks : int
        Number of blocks of the plan; ``done`` has one entry per block.
    dtype : numpy dtype or str
        Float dtype of ``coef``, ``intercept``, ``scale``, ``dof_resid``, ``loss`` and
        ``grad_norm`` (NaN until written). ``n_iter`` is int32, ``converged`` bool and
        ``status`` int8 (:data:`STATUS_UNWRITTEN` until written).
    state_spec : dict of str to (shape, dtype str, per_neuron bool)
        Solver state arrays, stored under ``results/solver_state/<name>``: of shape
        ``(*shape, n_neurons)`` when per neuron, else ``(n_blocks, *shape)``.
    fingerprint : dict
        JSON-serialisable description of the fit (model configuration and plan); a store with
        results of another fingerprint is refused unless ``overwrite``.
    overwrite : bool, optional
        Delete existing results and create them anew.

    Raises
    ------
    StoreError
        If the store holds results of a different fit (or layout) and ``overwrite`` is False.

    Examples
    --------
    >>> import tempfile, numpy as np
    >>> path = write_inputs(tempfile.mkdtemp() + "/fit.zarr", np.ones((5, 2)), np.ones((5, 3)))
    >>> create_results(path, n_features=2, n_neurons=3, neuron_chunk=3, n_blocks=1,
    ...                dtype="float64", state_spec={"stepsize": ((), "float64", False)},
    ...                fingerprint={"model": "poisson"})
    >>> read_fingerprint(path), done_blocks(path)
    ({'model': 'poisson'}, set())
    """
    path = _as_path(path)
    n_features = _check_int(n_features, "n_features", minimum=1)
    n_neurons = _check_int(n_neurons, "n_neurons", minimum=1)
    neuron_chunk = _check_int(neuron_chunk, "neuron_chunk", minimum=1)
    n_blocks = _check_int(n_blocks, "n_blocks", minimum=1)
    try:
        dtype = np.dtype(dtype)
    except TypeError as err:
        raise InputTypeError(f"dtype must be a float dtype; got {dtype!r} ({err})") from None
    if dtype.kind != "f":
        raise InputTypeError(f"dtype must be a float dtype; got {dtype}")
    spec = _normalise_state_spec(state_spec)
    if not isinstance(fingerprint, dict):
        raise InputTypeError(f"fingerprint must be a dict; got {type(fingerprint).__name__}")
    fingerprint = _json_like(fingerprint, "fingerprint")
    if not isinstance(overwrite, bool):
        raise InputTypeError(f"overwrite must be a bool; got {type(overwrite).__name__}")

    root = _open_group(path, "r+")
    if "results" in root:
        results = root["results"]
        stored = results.attrs.get("fingerprint")
        if stored is not None and not overwrite:
            if stored != fingerprint:
                keys = sorted(
                    key for key in set(stored) | set(fingerprint)
                    if stored.get(key) != fingerprint.get(key)
                )
                raise StoreError(
                    f"{path} holds results of a different fit (fingerprint differs in {keys}); "
                    "pass resume=False to replace them"
                )
            differences = _layout_differences(
                results, n_features, n_neurons, neuron_chunk, n_blocks, dtype, spec
            )
            if differences:
                raise StoreError(
                    f"{path} holds results of this fit laid out differently "
                    f"({'; '.join(differences)}); pass resume=False to replace them"
                )
            return
        del root["results"]

    results = root.create_group("results")
    per_neuron = {name: (dtype, np.nan) for name in RESULT_NAMES} | _FIXED_RESULTS
    for name, (array_dtype, fill) in per_neuron.items():
        shape = (n_features, n_neurons) if name == "coef" else (n_neurons,)
        results.create_array(
            name, shape=shape, dtype=array_dtype, fill_value=fill,
            chunks=shape[:-1] + (neuron_chunk,),
        )
    results.create_array("done", shape=(n_blocks,), dtype=bool, chunks=(1,), fill_value=False)
    state = results.create_group("solver_state")
    for name, (shape, state_dtype, is_per_neuron) in spec.items():
        # Zarr refuses zero-length chunks, so an empty dimension gets a chunk of one.
        chunk_shape = tuple(max(1, n) for n in shape)
        if is_per_neuron:
            full, chunks = (*shape, n_neurons), (*chunk_shape, neuron_chunk)
        else:
            full, chunks = (n_blocks, *shape), (1, *chunk_shape)
        state.create_array(name, shape=full, dtype=state_dtype, chunks=chunks, fill_value=0)
    results.attrs["state_spec"] = spec
    results.attrs["fingerprint"] = fingerprint


def write_block(path, block, arrays: dict, state: dict) -> None:
    """Write one block's results and solver state, then mark the block done.

    Writes only the block's chunks, so processes writing different blocks of one store do not
    interfere; writing the same block twice gives the same bytes.

    Parameters
    ----------
    path : str or os.PathLike
        Local directory or URL of the Zarr group, with results made by :func:`create_results`.
    block : Block
        The block; ``start`` and ``stop`` must lie on the results' neuron chunk boundaries
        (``stop`` may also be n_neurons).
    arrays : dict of str to array
        Every name of :data:`RESULT_NAMES`, trimmed to the block's real size: ``coef`` of shape
        (n_features, block.size), the others of shape (block.size,).
    state : dict of str to array
        Every solver state array of the ``state_spec``: of shape (*shape, block.size) when per
        neuron, else of shape ``shape``.

    Raises
    ------
    InputError
        If a name is missing or unexpected, or an array has the wrong shape.
    PlanError
        If the block is out of range or not aligned with the neuron chunk.
    StoreError
        If the store holds no results.

    Examples
    --------
    >>> import tempfile, numpy as np
    >>> path = write_inputs(tempfile.mkdtemp() + "/fit.zarr", np.ones((5, 2)), np.ones((5, 3)))
    >>> create_results(path, n_features=2, n_neurons=3, neuron_chunk=3, n_blocks=1,
    ...                dtype="float64", state_spec={}, fingerprint={})
    >>> arrays = {name: np.zeros((3,)) for name in RESULT_NAMES} | {"coef": np.ones((2, 3))}
    >>> write_block(path, Block(0, 0, 3), arrays, {})
    >>> done_blocks(path), read_results(path)["coef"].sum()
    ({0}, np.float64(6.0))
    """
    path = _as_path(path)
    try:
        block = Block(*block)
    except TypeError:
        raise InputTypeError(f"block must be a Block(id, start, stop); got {block!r}") from None
    block = Block(*(_check_int(value, f"block.{field}")
                    for field, value in zip(Block._fields, block)))
    for name, value in (("arrays", arrays), ("state", state)):
        if not isinstance(value, dict):
            raise InputTypeError(
                f"{name} must be a dict of name -> array; got {type(value).__name__}"
            )

    results = _results(path, "r+")
    coef, done = results["coef"], results["done"]
    n_features, n_neurons = coef.shape
    neuron_chunk, n_blocks = _neuron_chunk(coef), done.shape[0]
    if not (0 <= block.id < n_blocks and 0 <= block.start < block.stop <= n_neurons):
        raise PlanError(f"{block} is out of range: the results hold {n_blocks} blocks "
                        f"of {n_neurons} neurons")
    if block.start % neuron_chunk or (block.stop % neuron_chunk and block.stop != n_neurons):
        raise PlanError(
            f"{block} is not aligned with the results' neuron chunk {neuron_chunk}: it would "
            "share a chunk with another block"
        )

    spec = results.attrs["state_spec"]
    expected = {name: (n_features, block.size) if name == "coef" else (block.size,)
                for name in RESULT_NAMES}
    expected_state = {
        name: tuple(shape) + (block.size,) if is_per_neuron else tuple(shape)
        for name, (shape, _, is_per_neuron) in spec.items()
    }
    values = {}
    for what, given, shapes in (("arrays", arrays, expected), ("state", state, expected_state)):
        missing = [name for name in shapes if name not in given]
        extra = [name for name in given if name not in shapes]
        if missing or extra:
            raise InputError(f"{what} must have the keys {list(shapes)}; missing {missing}, "
                             f"unexpected {extra}")
        for name, shape in shapes.items():
            value = np.asarray(given[name])
            if value.shape != shape:
                raise InputError(f"{what}[{name!r}] for {block} must have shape {shape}; "
                                 f"got shape {value.shape}")
            values[(what, name)] = value

    for (what, name), value in values.items():
        if what == "arrays":
            results[name][..., block.start:block.stop] = value
        elif spec[name][2]:
            results[f"solver_state/{name}"][..., block.start:block.stop] = value
        else:
            results[f"solver_state/{name}"][block.id] = value
    # Last, so that a block marked done is a block completely written.
    done[block.id] = True


def done_blocks(path) -> set[int]:
    """Return the ids of the blocks whose results are completely written.

    Parameters
    ----------
    path : str or os.PathLike
        Local directory or URL of the Zarr group, with results.

    Returns
    -------
    set of int

    Examples
    --------
    >>> import tempfile, numpy as np
    >>> path = write_inputs(tempfile.mkdtemp() + "/fit.zarr", np.ones((5, 2)), np.ones((5, 3)))
    >>> create_results(path, n_features=2, n_neurons=3, neuron_chunk=3, n_blocks=1,
    ...                dtype="float32", state_spec={}, fingerprint={})
    >>> done_blocks(path)
    set()
    """
    done = _results(_as_path(path), "r")["done"]
    return {int(i) for i in np.flatnonzero(done[...])}


def read_results(path, start=0, stop=None) -> dict[str, np.ndarray]:
    """Read the per-neuron results of neurons ``[start, stop)``.

    Parameters
    ----------
    path : str or os.PathLike
        Local directory or URL of the Zarr group, with results.
    start : int, optional
        First neuron, 0 by default.
    stop : int or None, optional
        One past the last neuron, n_neurons by default.

    Returns
    -------
    dict of str to ndarray
        Keyed by :data:`RESULT_NAMES`: ``coef`` of shape (n_features, stop - start), the others
        of shape (stop - start,). Neurons of blocks not yet written read NaN, 0, False and
        :data:`STATUS_UNWRITTEN`.

    Examples
    --------
    >>> import tempfile, numpy as np
    >>> path = write_inputs(tempfile.mkdtemp() + "/fit.zarr", np.ones((5, 2)), np.ones((5, 3)))
    >>> create_results(path, n_features=2, n_neurons=3, neuron_chunk=3, n_blocks=1,
    ...                dtype="float64", state_spec={}, fingerprint={})
    >>> read_results(path, 1)["status"]
    array([-1, -1], dtype=int8)
    """
    results = _results(_as_path(path), "r")
    start, stop = _check_range(start, stop, results["coef"].shape[1])
    return {name: np.asarray(results[name][..., start:stop]) for name in RESULT_NAMES}


def read_state(path) -> dict[str, np.ndarray]:
    """Read every solver state array.

    Parameters
    ----------
    path : str or os.PathLike
        Local directory or URL of the Zarr group, with results.

    Returns
    -------
    dict of str to ndarray
        In ``state_spec`` order: of shape (*shape, n_neurons) for per-neuron state, else of
        shape (n_blocks, *shape).

    Examples
    --------
    >>> import tempfile, numpy as np
    >>> path = write_inputs(tempfile.mkdtemp() + "/fit.zarr", np.ones((5, 2)), np.ones((5, 3)))
    >>> create_results(path, n_features=2, n_neurons=3, neuron_chunk=3, n_blocks=1,
    ...                dtype="float64", state_spec={"velocity": ((2,), "float32", True)},
    ...                fingerprint={})
    >>> read_state(path)["velocity"].shape
    (2, 3)
    """
    results = _results(_as_path(path), "r")
    return {name: np.asarray(results[f"solver_state/{name}"][...])
            for name in results.attrs["state_spec"]}


def read_fingerprint(path) -> dict | None:
    """Return the fingerprint of the fit whose results the store holds, or None if it holds none.

    Parameters
    ----------
    path : str or os.PathLike
        Local directory or URL of the Zarr group.

    Returns
    -------
    dict or None

    Examples
    --------
    >>> import tempfile, numpy as np
    >>> path = write_inputs(tempfile.mkdtemp() + "/fit.zarr", np.ones((5, 2)), np.ones((5, 3)))
    >>> read_fingerprint(path) is None
    True
    """
    path = _as_path(path)
    root = _open_group(path, "r")
    return root["results"].attrs.get("fingerprint") if "results" in root else None


def _check_group_name(group_name) -> str:
    if not isinstance(group_name, str):
        raise InputTypeError(f"group_name must be a str; got {type(group_name).__name__}")
    if not group_name.strip("/"):
        raise InputError(f"group_name must name a group, like 'job'; got {group_name!r}")
    return group_name.strip("/")


def write_attrs(path, group_name, attrs: dict) -> None:
    """Set attributes (small JSON metadata, such as a job's status) on a group of the store.

    The group is created if absent; keys already there and not in ``attrs`` are kept. One
    process at a time should write a given group's attributes.

    Parameters
    ----------
    path : str or os.PathLike
        Local directory or URL of the Zarr group.
    group_name : str
        Group inside the store, for example ``"job"``.
    attrs : dict
        JSON-serialisable values to set.

    Examples
    --------
    >>> import tempfile, numpy as np
    >>> path = write_inputs(tempfile.mkdtemp() + "/fit.zarr", np.ones((5, 2)), np.ones((5, 3)))
    >>> write_attrs(path, "job", {"state": "running", "blocks_done": 3})
    >>> read_attrs(path, "job")["blocks_done"]
    3
    """
    path = _as_path(path)
    group_name = _check_group_name(group_name)
    if not isinstance(attrs, dict):
        raise InputTypeError(f"attrs must be a dict; got {type(attrs).__name__}")
    attrs = _json_like(attrs, "attrs")
    root = _open_group(path, "r+")
    try:
        group = root.require_group(group_name)
    except (TypeError, BaseZarrError) as err:
        raise StoreError(f"{path}: {group_name} is not a group ({err})") from None
    group.attrs.update(attrs)


def read_attrs(path, group_name) -> dict:
    """Read the attributes of a group of the store; empty if the group does not exist.

    Parameters
    ----------
    path : str or os.PathLike
        Local directory or URL of the Zarr group.
    group_name : str
        Group inside the store, for example ``"job"``.

    Returns
    -------
    dict

    Examples
    --------
    >>> import tempfile, numpy as np
    >>> path = write_inputs(tempfile.mkdtemp() + "/fit.zarr", np.ones((5, 2)), np.ones((5, 3)))
    >>> read_attrs(path, "job")
    {}
    """
    path = _as_path(path)
    group_name = _check_group_name(group_name)
    root = _open_group(path, "r")
    return dict(root[group_name].attrs) if group_name in root else {}
