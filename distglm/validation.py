"""Input checks at the boundary. Each error names what was expected and what came.

TypeError-flavoured errors (:class:`InputTypeError`) for the wrong kind of argument,
ValueError-flavoured ones (:class:`InputError`) for a wrong value.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Callable, NamedTuple

import numpy as np

from .errors import FitError, InputError, InputTypeError

__all__ = [
    "Design",
    "as_design",
    "as_responses",
    "check_n_samples",
    "drop_nan_rows",
    "check_support",
    "as_feature_mask",
    "check_binary_mask",
    "check_finite",
    "as_params",
    "as_sample_mask",
    "is_interval_set",
]


class Design(NamedTuple):
    """A design matrix with its feature groups.

    Attributes
    ----------
    X : np.ndarray of shape (n_samples, n_features)
    groups : tuple of (name, n_columns) pairs when X came as a dict of feature groups, else None
    """

    X: np.ndarray
    groups: tuple | None


def _describe(value) -> str:
    shape = getattr(value, "shape", None)
    if shape is not None:
        return f"{type(value).__name__} of shape {tuple(shape)}"
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _as_numeric(value, name: str) -> np.ndarray:
    if isinstance(value, (str, bytes, dict)) or value is None:
        raise InputTypeError(f"{name} must be array-like of numbers; got {_describe(value)}")
    if hasattr(value, "toarray") and hasattr(value, "nnz"):
        raise InputTypeError(f"{name} is a sparse matrix, which distglm does not take: pass a dense array "
                             f"({name}.toarray())")
    try:
        arr = np.asarray(value)
    except Exception as err:  # noqa: BLE001 - any failure to convert is the user's input
        raise InputTypeError(f"{name} must be array-like of numbers; got {_describe(value)}") from err
    if arr.dtype == bool:
        arr = arr.astype(np.uint8)
    if np.iscomplexobj(arr):
        raise InputTypeError(f"{name} must hold real numbers: Complex data not supported (got dtype {arr.dtype})")
    if not (np.issubdtype(arr.dtype, np.number)):
        raise InputTypeError(f"{name} must be array-like of numbers; got an array of dtype {arr.dtype}")
    return arr


def as_design(X, dtype=None) -> Design:
    """Check ``X`` (2-D array, or dict of 2-D arrays with equal rows) and return it as one array.

    ``dtype`` None keeps a floating ``X`` as it is and stores any other numbers as float64.
    """
    # any mapping of names to arrays, NeMoS's FeaturePytree included (it has a .shape too)
    if isinstance(X, Mapping) or (hasattr(X, "keys") and hasattr(X, "values") and not hasattr(X, "shape")):
        if len(X) == 0:
            raise InputError("X is an empty dict; expected at least one feature group")
        for key in X:
            if not isinstance(key, str):
                raise InputTypeError(f"feature group names must be str; got {key!r}")
        parts = {}
        for key, value in X.items():
            arr = _as_numeric(value, f"X[{key!r}]")
            if arr.ndim != 2:
                raise InputError(
                    f"X[{key!r}] must be 2-D of shape (n_samples, n_columns); got shape {arr.shape}"
                )
            parts[key] = arr
        rows = {key: part.shape[0] for key, part in parts.items()}
        if len(set(rows.values())) > 1:
            raise InputError(f"every feature group of X must have the same n_samples; got {rows}")
        empty = [key for key, part in parts.items() if part.shape[1] == 0]
        if empty:
            raise InputError(f"feature groups of X must have at least one column; {empty} have none")
        arr = np.concatenate(list(parts.values()), axis=1)
        groups = tuple((key, part.shape[1]) for key, part in parts.items())
    else:
        arr = _as_numeric(X, "X")
        if arr.ndim != 2:
            raise InputError(f"X must be 2-D of shape (n_samples, n_features); got shape {arr.shape}. Reshape your "
                             "data: X.reshape(-1, 1) for a single feature, X.reshape(1, -1) for a single sample")
        groups = None
    if 0 in arr.shape:
        raise InputError(f"X must have at least one sample and one feature; got shape {arr.shape}: "
                         f"{arr.shape[1]} feature(s) (shape={arr.shape}) while a minimum of 1 is required.")
    if dtype is None:
        dtype = arr.dtype if arr.dtype.kind == "f" else np.float64
    return Design(arr.astype(dtype, copy=False), groups)


def as_responses(y, dtype, population: bool) -> np.ndarray:
    """Check ``y``: 2-D (n_samples, n_neurons) for a population, 1-D (n_samples,) otherwise."""
    arr = _as_numeric(y, "y")
    if population and arr.ndim != 2:
        raise InputError(f"y must be 2-dimensional of shape (n_samples, n_neurons); got shape {arr.shape}")
    if not population and arr.ndim != 1:
        raise InputError(f"y must be 1-dimensional of shape (n_samples,); got shape {arr.shape}")
    return arr.astype(dtype, copy=False)


def check_n_samples(X: np.ndarray, y: np.ndarray) -> None:
    """X and y must have the same number of samples (rows)."""
    if X.shape[0] != y.shape[0]:
        raise InputError(
            f"X and y must have the same number of samples; got X with {X.shape[0]} and y with {y.shape[0]}"
        )


def check_finite(X: np.ndarray, keep: np.ndarray | None = None) -> None:
    """``X`` must be finite in the rows kept (``keep``, default: rows without NaN)."""
    if keep is None:
        keep = ~np.isnan(X).any(axis=1)
    bad = np.isinf(X) & keep[:, None]
    if bad.any():
        row, col = np.argwhere(bad)[0]
        raise InputError(
            f"X must be finite outside rows holding NaN (those rows are dropped); got {X[row, col]} "
            f"at row {row}, column {col}"
        )


def drop_nan_rows(X: np.ndarray, y: np.ndarray | None = None):
    """Drop time bins with a NaN in X or in any neuron of y; infinities are an error.

    Returns ``(X, y, keep)`` with ``keep`` a boolean array of shape (n_samples,).
    """
    keep = ~np.isnan(X).any(axis=1)
    if y is not None:
        keep &= ~np.isnan(y.reshape(y.shape[0], -1)).any(axis=1)
    check_finite(X, keep)
    if y is not None and np.isinf(y[keep]).any():
        bad = np.argwhere(np.isinf(y[keep].reshape(int(keep.sum()), -1)))[0]
        raise InputError(f"y must be finite outside NaN rows; got {y[keep].reshape(int(keep.sum()), -1)[tuple(bad)]} "
                         f"at row {np.flatnonzero(keep)[bad[0]]}, neuron {bad[1]}")
    if not keep.any():
        raise InputError("every sample holds a NaN in X or y; nothing is left to fit")
    return X[keep], (None if y is None else y[keep]), keep


def check_support(observation, y: np.ndarray, offset: int = 0, row_offset: int = 0) -> None:
    """Raise if any ``y`` lies outside the observation model's support.

    ``offset`` is added to the reported neuron index (for blocks of a larger population),
    ``row_offset`` to the reported sample (for chunks of a longer recording).
    """
    bad = observation.out_of_support(y)
    if bad.any():
        idx = tuple(np.argwhere(bad)[0])
        where = f"sample {idx[0] + row_offset}" + (f", neuron {idx[1] + offset}" if len(idx) > 1 else "")
        raise InputError(
            f"y must hold {observation.support} for the {observation.name} observation model; "
            f"got {y[idx]} at {where} ({int(bad.sum())} such values)"
        )


def as_feature_mask(mask, groups: tuple | None, n_features: int, n_neurons: int) -> np.ndarray:
    """Check a feature mask and return it as floats of shape (n_features, n_neurons).

    An array mask must have shape (n_features, n_neurons); with a dict X, the mask is a dict of
    (n_neurons,) arrays with X's keys, expanded here over each group's columns.
    """
    if groups is not None:
        if not isinstance(mask, Mapping):
            raise InputTypeError(
                f"with X given as a dict of feature groups, feature_mask must be a dict with the same keys; "
                f"got {_describe(mask)}"
            )
        names = [g[0] for g in groups]
        given = [str(k) for k in mask]
        if set(given) != set(names):
            missing = [n for n in names if n not in given]
            extra = [k for k in given if k not in names]
            raise InputError(f"feature_mask keys {sorted(given)} do not match X's feature groups {names}: "
                             f"missing {missing}, unexpected {extra}")
        rows = []
        by_name = {str(k): v for k, v in mask.items()}
        for name, size in groups:
            arr = _as_numeric(by_name[name], f"feature_mask[{name!r}]")
            if arr.shape != (n_neurons,):
                raise InputError(
                    f"feature_mask[{name!r}] must have shape (n_neurons,) = ({n_neurons},); got shape {arr.shape}"
                )
            check_binary_mask(arr, f"feature_mask[{name!r}]")
            rows.append(np.repeat(arr[None, :].astype(float), size, axis=0))
        return np.concatenate(rows, axis=0)
    if isinstance(mask, Mapping):
        raise InputTypeError(
            "feature_mask is a dict but X is an array; X must be a dict of arrays with the same keys, "
            f"or feature_mask an array of shape ({n_features}, {n_neurons})"
        )
    full = _as_numeric(mask, "feature_mask").astype(float)
    if full.shape != (n_features, n_neurons):
        raise InputError(
            f"feature_mask must have shape (n_features, n_neurons) = ({n_features}, {n_neurons}); "
            f"got shape {full.shape}"
        )
    check_binary_mask(full)
    return full


def check_binary_mask(mask: np.ndarray, name: str = "feature_mask") -> None:
    """A feature mask may hold only 0s and 1s."""
    bad = (mask != 0) & (mask != 1)
    if bad.any():
        index = tuple(int(i) for i in np.argwhere(bad)[0])
        raise InputError(f"{name} must hold only 0s and 1s; got {mask[index]} at index {index}")


def as_params(init_params: Any, groups: tuple | None, n_features: int, n_neurons: int | None, dtype):
    """Check ``init_params = (coef, intercept)``; return float arrays.

    ``n_neurons`` None means a single-neuron GLM: coef (n_features,), intercept (1,).
    """
    if not isinstance(init_params, (tuple, list)):
        raise InputTypeError(f"init_params must be a tuple or list (coef, intercept); got {_describe(init_params)}")
    if len(init_params) != 2:
        raise InputError(f"init_params must have length two, (coef, intercept); got length {len(init_params)}")
    coef, intercept = init_params
    if groups is not None:
        if not isinstance(coef, Mapping) or set(map(str, coef)) != {g[0] for g in groups}:
            raise InputError(f"init_params[0] must be a dict with X's feature groups {[g[0] for g in groups]}")
        by_name = {str(k): v for k, v in coef.items()}
        parts = []
        for name, size in groups:
            arr = _as_numeric(by_name[name], f"init_params[0][{name!r}]")
            want = (size,) if n_neurons is None else (size, n_neurons)
            if arr.shape != want:
                raise InputError(f"init_params[0][{name!r}] must have shape {want}; got shape {arr.shape}")
            parts.append(arr)
        coef = np.concatenate(parts, axis=0)
    coef = _as_numeric(coef, "init_params[0] (coef)").astype(dtype)
    intercept = _as_numeric(intercept, "init_params[1] (intercept)").astype(dtype)
    want_coef = (n_features,) if n_neurons is None else (n_features, n_neurons)
    want_int = (1,) if n_neurons is None else (n_neurons,)
    if coef.shape != want_coef:
        raise InputError(f"init_params[0] (coef) must have shape {want_coef}; got shape {coef.shape}")
    if intercept.shape != want_int:
        raise InputError(f"init_params[1] (intercept) must have shape {want_int}; got shape {intercept.shape}")
    if not (np.all(np.isfinite(coef)) and np.all(np.isfinite(intercept))):
        raise InputError("init_params must be finite; got NaN or infinite values")
    return coef, intercept


def check_solution(coef: np.ndarray, intercept: np.ndarray) -> None:
    """NeMoS's rule: a solution with every parameter NaN is an error, not a result."""
    if np.all(np.isnan(coef)) and np.all(np.isnan(intercept)):
        raise FitError(
            "Solver returned NaN parameters for every neuron, so the solution is invalid; "
            "try a smaller stepsize, more iterations, or float64 (jax_enable_x64)"
        )


def is_interval_set(value) -> bool:
    """Whether ``value`` is a set of time intervals (a pynapple ``IntervalSet``: ``start`` and ``end``, no ``times``)."""
    return hasattr(value, "start") and hasattr(value, "end") and not hasattr(value, "times")


def as_sample_mask(value, n_samples: int, times: Callable[[], np.ndarray], what: str) -> np.ndarray:
    """A choice of samples as a bool mask of shape (n_samples,).

    ``value`` is a bool array of shape (n_samples,), a slice of the samples, or a set of time
    intervals (a pynapple ``IntervalSet``) selecting the samples whose time (``times()``, of
    shape (n_samples,), increasing; called only for intervals) lies in an interval, bounds
    included, as pynapple's ``restrict`` and ``in_interval`` select them.

    Examples
    --------
    >>> as_sample_mask(slice(1, 3), 4, None, "test").tolist()
    [False, True, True, False]
    """
    if isinstance(value, slice):
        mask = np.zeros(n_samples, bool)
        mask[value] = True
        return mask
    if is_interval_set(value):
        starts, ends = (np.asarray(getattr(value, name), dtype=np.float64).reshape(-1) for name in ("start", "end"))
        if starts.shape != ends.shape or np.any(ends < starts):
            raise InputError(f"{what} as time intervals needs as many starts as ends, each end at or after its start; "
                             f"got starts {starts[:5]} and ends {ends[:5]}")
        t = times()
        mask = np.zeros(n_samples, bool)
        for lo, hi in zip(np.searchsorted(t, starts, side="left"), np.searchsorted(t, ends, side="right")):
            mask[lo:hi] = True
        return mask
    mask = np.asarray(value)
    if mask.dtype != bool or mask.shape != (n_samples,):
        raise InputTypeError(f"{what} must be a slice, a pynapple IntervalSet or a boolean array of shape "
                             f"({n_samples},), one per sample; got {mask.dtype} of shape {mask.shape}")
    return mask
