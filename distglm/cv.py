"""``PopulationGLMCV``: a population GLM whose regularizer strength is chosen by cross-validation.

It follows scikit-learn's ``*CV`` estimators (``LassoCV``, ``LogisticRegressionCV``): the
candidates are scored on held-out folds, one strength is selected per neuron (or one for the
whole population) and the model is refitted on all samples with it. The candidates of a fold
are fitted as a warm-started path, every fit one ``core.fit_block`` over all neurons, by
:func:`distglm.core.cv.cv_path`.
"""

from __future__ import annotations

import numbers
import warnings
from typing import Any, Callable

import numpy as np

from . import validation as val
from .compile_cache import enable_compilation_cache
from .core import cv as _cv
from .core.observations import Observations
from .core.regularizers import Regularizer
from .core.scoring import SCORE_TYPES
from .errors import InputError, InputTypeError, UnsupportedOptionError
from .glm import PopulationGLM

__all__ = ["PopulationGLMCV", "SplitRecord", "fold_labels", "make_folds", "store_folds", "stored_folds"]

DEFAULT_N_STRENGTHS = 12
SELECTION_RULES = ("min", "1se")


def _check_strengths(value):
    if value is None:
        return None
    if isinstance(value, numbers.Integral) and not isinstance(value, bool):
        if value < 1:
            raise InputError(f"regularizer_strengths as a number of strengths must be at least 1; got {value}")
        return int(value)
    if isinstance(value, (str, bytes, dict, bool)):
        raise InputTypeError("regularizer_strengths must be None, a number of strengths or a 1-D array of "
                             f"strengths; got {value!r}")
    try:
        arr = np.asarray(value, dtype=float)
    except (TypeError, ValueError) as err:
        raise InputTypeError("regularizer_strengths must be None, a number of strengths or a 1-D array of "
                             f"strengths; got {value!r}") from err
    if arr.ndim != 1 or arr.size == 0:
        raise InputError(f"regularizer_strengths must be a non-empty 1-D array; got shape {arr.shape}")
    if not np.all(np.isfinite(arr) & (arr > 0)):
        raise InputError(f"regularizer_strengths must be positive and finite; got {arr}")
    return arr


def _check_cv(value):
    if isinstance(value, (bool, str, bytes, dict)) or value is None:
        raise InputTypeError(f"cv must be a number of folds, a splitter or fold labels; got {value!r}")
    if isinstance(value, numbers.Integral):
        if value < 2:
            raise InputError(f"cv as a number of folds must be at least 2; got {value}")
        return int(value)
    if hasattr(value, "split"):
        return value
    labels = val._as_numeric(value, "cv fold labels")
    if labels.ndim != 1 or np.any(labels != np.round(labels)):
        raise InputError(f"cv fold labels must be a 1-D array of integers, one per sample; got {labels!r}")
    return labels.astype(int)


def _check_scoring(value):
    if value not in SCORE_TYPES:
        raise UnsupportedOptionError(f"scoring must be one of {list(SCORE_TYPES)}; got {value!r}")
    return value


def _check_per_neuron(value):
    if not isinstance(value, (bool, np.bool_)):
        raise InputTypeError(f"per_neuron must be True or False; got {value!r}")
    return bool(value)


def _check_selection(value):
    if value not in SELECTION_RULES:
        raise InputError(f"selection must be one of {list(SELECTION_RULES)}; got {value!r}")
    return value


_CV_CHECKS: dict[str, Callable] = {
    "regularizer_strengths": _check_strengths,
    "cv": _check_cv,
    "scoring": _check_scoring,
    "per_neuron": _check_per_neuron,
    "selection": _check_selection,
}


def make_folds(cv, n_samples: int, X=None, y=None) -> list[tuple[np.ndarray, np.ndarray]]:
    """``(train, test)`` index arrays into ``n_samples`` samples, as ``PopulationGLMCV`` defines them.

    Parameters
    ----------
    cv : int, splitter or array of shape (n_samples,)
        An int ``k``: ``k`` contiguous blocks of samples (scikit-learn's ``KFold(k)``), each held
        out once; neural time series are autocorrelated, so folds are not shuffled. A splitter:
        its ``split(X, y)``. Labels: the samples labelled ``f`` form fold ``f``'s held-out set;
        samples labelled -1 are never held out (scikit-learn's ``PredefinedSplit``).
    n_samples : int
    X, y : arrays passed to a splitter's ``split``

    Examples
    --------
    >>> [test.tolist() for _, test in make_folds(3, 7)]
    [[0, 1, 2], [3, 4], [5, 6]]
    """
    cv = _check_cv(cv)
    if isinstance(cv, int):
        if cv > n_samples:
            raise InputError(f"cv={cv} folds need at least {cv} samples; got {n_samples}")
        tests = np.array_split(np.arange(n_samples), cv)
        folds = [(np.setdiff1d(np.arange(n_samples), test), test) for test in tests]
    elif hasattr(cv, "split"):
        folds = [(np.asarray(train, dtype=int), np.asarray(test, dtype=int)) for train, test in cv.split(X, y)]
    else:
        if cv.shape != (n_samples,):
            raise InputError(f"cv fold labels must have one label per sample, shape ({n_samples},); "
                             f"got shape {cv.shape}")
        folds = [(np.flatnonzero(cv != label), np.flatnonzero(cv == label)) for label in np.unique(cv[cv != -1])]
    if not folds:
        raise InputError(f"cv {cv!r} defines no fold")
    for k, (train, test) in enumerate(folds):
        if train.size == 0 or test.size == 0:
            raise InputError(f"fold {k} of cv {cv!r} has {train.size} training and {test.size} held-out samples; "
                             "both must be non-empty")
    return folds


def _kept_folds(folds, keep: np.ndarray):
    """Folds over all samples -> folds over the samples kept (NaN rows dropped), same order."""
    new_index = np.cumsum(keep) - 1
    out = []
    for k, (train, test) in enumerate(folds):
        train, test = new_index[train[keep[train]]], new_index[test[keep[test]]]
        if train.size == 0 or test.size == 0:
            raise InputError(f"fold {k} has no sample left without NaN in its "
                             f"{'training' if train.size == 0 else 'held-out'} set")
        out.append((train, test))
    return out


def fold_labels(cv, train: np.ndarray) -> np.ndarray:
    """Folds over a store's samples as labels of its training samples, for the actors of a distributed fit.

    The folds are defined on all the stored samples, as :func:`make_folds` defines them, and
    then restricted to the training samples (``train``, the samples neither NaN nor held out),
    as ``PopulationGLMCV.fit`` restricts them to the samples without NaN. ``cv`` must be a
    number of folds or labels: a splitter splits the training samples (:func:`store_folds`).

    Parameters
    ----------
    cv : int or array of shape (n_samples,)
    train : bool array of shape (n_samples,)

    Returns
    -------
    int array of shape (n_train,)
        Fold ``f`` holds out the samples labelled ``f``; -1: never held out.
        ``make_folds(labels, n_train)`` gives the folds back.

    Examples
    --------
    >>> fold_labels(3, np.array([True, True, False, True, True, True, True])).tolist()
    [0, 0, 1, 1, 2, 2]
    """
    cv = _check_cv(cv)
    if hasattr(cv, "split"):
        raise UnsupportedOptionError(f"fold labels over the stored samples come from a number of folds or from "
                                     f"labels, not from a splitter ({cv!r}): see store_folds")
    train = _check_train(train)
    folds = _kept_folds(make_folds(cv, train.size), train)
    return _labels_of(folds, int(train.sum()))


def _check_train(train) -> np.ndarray:
    train = np.asarray(train)
    if train.dtype != bool or train.ndim != 1:
        raise InputTypeError(f"train must be a 1-D boolean array, one flag per stored sample; got {train.dtype} of "
                             f"shape {train.shape}")
    return train


def _labels_of(folds, n_samples: int) -> np.ndarray:
    labels = np.full(n_samples, -1, dtype=np.int64)
    for k, (_, test) in enumerate(folds):
        labels[test] = k
    return labels


# roles of a sample in a fold, in the per-fold arrays of :func:`store_folds`
_UNUSED, _TRAIN, _TEST = 0, 1, 2


def _partitions(folds, n_samples: int) -> bool:
    """Whether every fold trains on all the samples it does not hold out, and no two folds hold out one sample."""
    held = np.zeros(n_samples, dtype=np.int64)
    for train, test in folds:
        if train.size + test.size != n_samples or np.union1d(train, test).size != n_samples:
            return False
        held[test] += 1
    return bool(held.max() <= 1)


def store_folds(cv, train: np.ndarray, X=None) -> np.ndarray:
    """The folds of a distributed cross-validation over a store's training samples, as the actors take them.

    A number of folds or labels: :func:`fold_labels` (folds defined on all the stored samples,
    restricted to the training ones). A splitter: its ``split(X)`` over the training samples
    alone (the samples without NaN and not held out, ``X`` their design), as
    ``PopulationGLMCV.fit`` splits the samples without NaN.

    Parameters
    ----------
    cv : int, splitter or array of shape (n_samples,)
    train : bool array of shape (n_samples,)
        The stored samples fitted.
    X : array of shape (n_train, n_features), optional
        What the splitter's ``split`` gets (the training samples' design); default a
        placeholder of n_train rows and no column, enough for splitters that only count samples.

    Returns
    -------
    int array of shape (n_train,) or int8 array of shape (n_folds, n_train)
        Fold labels (as :func:`fold_labels`) when each fold trains on every sample it does not
        hold out and no sample is held out twice (``KFold``); otherwise each sample's role in
        each fold: 1 training, 2 held out, 0 neither (``TimeSeriesSplit``, whose folds train on
        the past alone). :func:`stored_folds` turns either into ``(train, test)`` pairs.

    Examples
    --------
    >>> from sklearn.model_selection import TimeSeriesSplit
    >>> store_folds(TimeSeriesSplit(2), np.ones(6, bool)).tolist()
    [[1, 1, 2, 2, 0, 0], [1, 1, 1, 1, 2, 2]]
    """
    cv = _check_cv(cv)
    if not hasattr(cv, "split"):
        return fold_labels(cv, train)
    train = _check_train(train)
    n_train = int(train.sum())
    if X is None:
        X = np.zeros((n_train, 0))
    if len(X) != n_train:
        raise InputError(f"X must hold the {n_train} training samples; got {len(X)} rows")
    try:
        folds = make_folds(cv, n_train, X)
    except InputError:
        raise
    except Exception as err:  # noqa: BLE001 - whatever the user's splitter raises is theirs to fix
        raise InputError(f"cv {cv!r} could not split the store's {n_train} training samples (a distributed fit "
                         f"gives split() their design X alone, no y or groups): {type(err).__name__}: {err}") from None
    for k, (fold_train, test) in enumerate(folds):
        if fold_train.max() >= n_train or test.max() >= n_train or min(fold_train.min(), test.min()) < 0:
            raise InputError(f"fold {k} of cv {cv!r} indexes samples outside the {n_train} training samples")
    if _partitions(folds, n_train):
        return _labels_of(folds, n_train)
    roles = np.zeros((len(folds), n_train), dtype=np.int8)
    for k, (fold_train, test) in enumerate(folds):
        roles[k, fold_train] = _TRAIN
        roles[k, test] = _TEST
    return roles


def stored_folds(folds: np.ndarray, n_samples: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """``(train, test)`` index arrays of :func:`store_folds`' output (labels or per-fold roles).

    Examples
    --------
    >>> [(train.tolist(), test.tolist()) for train, test in stored_folds(np.array([[1, 2, 0]]), 3)]
    [([0], [1])]
    """
    folds = np.asarray(folds)
    if folds.ndim == 1:
        return make_folds(folds, n_samples)
    if folds.ndim != 2 or folds.shape[1] != n_samples:
        raise InputError(f"per-fold roles must have shape (n_folds, {n_samples}); got shape {folds.shape}")
    return [(np.flatnonzero(roles == _TRAIN), np.flatnonzero(roles == _TEST)) for roles in folds]


class SplitRecord:
    """A splitter as a fit's configuration records it: its description and its number of folds.

    The configuration of a model cross-validated by a splitter (``distglm.fit`` with
    ``cv=KFold(...)``) names the splitter rather than holding it; a model loaded from the
    store has this record as its ``cv``. It cannot split again: give the splitter to refit.

    Examples
    --------
    >>> SplitRecord("TimeSeriesSplit(n_splits=3)", 3).get_n_splits()
    3
    """

    def __init__(self, description: str, n_folds: int):
        if not isinstance(description, str):
            raise InputTypeError(f"a splitter's description must be a string; got {description!r}")
        if isinstance(n_folds, bool) or not isinstance(n_folds, numbers.Integral) or n_folds < 1:
            raise InputError(f"a splitter's number of folds must be a positive integer; got {n_folds!r}")
        self.description, self.n_folds = description, int(n_folds)

    def split(self, X=None, y=None, groups=None):
        raise UnsupportedOptionError(f"the folds of {self.description} were recorded by description only; set cv to "
                                     "the splitter itself to cross-validate again")

    def get_n_splits(self, X=None, y=None, groups=None) -> int:
        return self.n_folds

    def to_json(self) -> dict:
        return {"splitter": self.description, "n_folds": self.n_folds}

    def __eq__(self, other):
        return isinstance(other, SplitRecord) and other.to_json() == self.to_json()

    def __repr__(self) -> str:
        return self.description


class PopulationGLMCV(PopulationGLM):
    """A :class:`~distglm.glm.PopulationGLM` whose regularizer strength is selected by cross-validation.

    Parameters
    ----------
    observation_model, inverse_link_function, solver_name, solver_kwargs, feature_mask
        As for :class:`~distglm.glm.PopulationGLM`.
    regularizer : str or Regularizer
        "Ridge" (default), "Lasso", "ElasticNet" or "GroupLasso" (GroupLasso with
        ``per_neuron=False`` only: its strength is one per group, not per neuron).
    regularizer_strength : optional
        Only ElasticNet reads it: the ratio ``r`` of ``(s, r)`` stays fixed (default 0.5) while
        the strength ``s`` runs over the grid.
    regularizer_strengths : None, int or array of shape (n_strengths,)
        The candidates. None or an int ``m``: ``m`` (default 12) log-spaced strengths from the
        largest strength that keeps every coefficient of every neuron at 0 (as glmnet and glum
        compute it; for Ridge, that of a Lasso divided by 1e-3) down 4 decades.
    cv : int, splitter or array of shape (n_samples,)
        Folds; see :func:`make_folds`. Default 5 contiguous folds. A number of folds and labels
        are defined on the samples given (rows with NaN then leave their folds); a splitter
        (``KFold``, ``TimeSeriesSplit``...) splits the samples without NaN.
    scoring : {"log-likelihood", "pseudo-r2-McFadden", "pseudo-r2-Cohen"}
        Held-out score, as :meth:`~distglm.glm.PopulationGLM.score` computes it; higher is better.
    per_neuron : bool
        True (default): each neuron gets the strength its own held-out score prefers. False:
        one strength for all, the one the population's score prefers (what scikit-learn's
        ``GridSearchCV`` over a ``PopulationGLM`` selects with the same folds and scoring).
        A neuron whose candidate fit failed on some fold (no finite held-out score; see
        ``cv_status_``) is left out of the population's score, with a warning.
    selection : {"min", "1se"}
        "min" (default): the best mean held-out score; "1se": the largest strength whose mean
        score is within one standard error of the best (glmnet's ``lambda.1se``).

    Attributes
    ----------
    regularizer_strengths_ : array of shape (n_strengths,), the candidates, largest first
    regularizer_strength_ : array of shape (n_neurons,), each neuron's selected strength
    best_index_ : int array of shape (n_neurons,), its index in ``regularizer_strengths_``
    cv_scores_ : array of shape (n_strengths, n_folds, n_neurons), held-out score of each
        neuron (NaN where its fit failed)
    cv_mean_, cv_std_ : arrays of shape (n_strengths, n_neurons), mean and standard deviation
        (ddof=0, as ``GridSearchCV``'s ``std_test_score``) over folds
    population_cv_scores_ : array of shape (n_strengths, n_folds), the population's score
        (``PopulationGLM.score`` on the fold)
    cv_status_ : int8 array of shape (n_strengths, n_folds, n_neurons), each candidate's fit
        status (see ``distglm.core.STATUS_REASONS``)
    coef_, intercept_, scale_, ... : the refit on all samples with the selected strengths

    Examples
    --------
    >>> import numpy as np
    >>> from distglm.glm import PopulationGLMCV
    >>> rng = np.random.default_rng(0)
    >>> X = rng.normal(size=(400, 3))
    >>> y = rng.poisson(np.exp(X @ rng.normal(scale=0.3, size=(3, 2))))
    >>> model = PopulationGLMCV(regularizer_strengths=4, cv=3).fit(X, y)
    >>> model.cv_scores_.shape, model.regularizer_strength_.shape
    ((4, 3, 2), (2,))
    """

    def __init__(
        self,
        observation_model: str | Observations = "Poisson",
        inverse_link_function: Callable | str | None = None,
        regularizer: str | Regularizer | None = "Ridge",
        regularizer_strength: Any = None,
        solver_name: str | None = None,
        solver_kwargs: dict | None = None,
        feature_mask: Any = None,
        regularizer_strengths: Any = None,
        cv: Any = 5,
        scoring: str = "log-likelihood",
        per_neuron: bool = True,
        selection: str = "min",
    ):
        super().__init__(observation_model, inverse_link_function, regularizer, regularizer_strength,
                         solver_name, solver_kwargs, feature_mask)
        self.regularizer_strengths = regularizer_strengths
        self.cv = cv
        self.scoring = scoring
        self.per_neuron = per_neuron
        self.selection = selection

    def _cv_config(self) -> dict:
        """The cross-validation settings as JSON (for ``glm.model_to_config``)."""
        strengths, cv = self.regularizer_strengths, self.cv
        if isinstance(cv, SplitRecord):
            cv = cv.to_json()
        elif hasattr(cv, "split"):
            raise UnsupportedOptionError(f"a cv splitter ({cv!r}) cannot be written to a model configuration: give cv as "
                                         "a number of folds or an array of fold labels")
        return {
            "regularizer_strengths": (None if strengths is None else int(strengths)
                                      if isinstance(strengths, numbers.Integral) else
                                      np.asarray(strengths, dtype=float).tolist()),
            "cv": (cv if isinstance(cv, dict) else int(cv) if isinstance(cv, numbers.Integral) else
                   np.asarray(cv, dtype=int).tolist()),
            "scoring": self.scoring,
            "per_neuron": bool(self.per_neuron),
            "selection": self.selection,
        }

    @staticmethod
    def _cv_kwargs(config: dict) -> dict:
        """The constructor's cross-validation arguments from :meth:`_cv_config`'s output."""
        unknown = set(config) - set(_CV_CHECKS)
        if unknown:
            raise InputError(f"unknown keys in the cross-validation configuration: {sorted(unknown)}")
        kwargs = dict(config)
        if isinstance(kwargs.get("cv"), dict):
            record = kwargs["cv"]
            if set(record) != {"splitter", "n_folds"}:
                raise InputError(f"a recorded splitter must have the keys 'splitter' and 'n_folds'; got {record!r}")
            kwargs["cv"] = SplitRecord(record["splitter"], record["n_folds"])
        for name in ("regularizer_strengths", "cv"):
            if isinstance(kwargs.get(name), list):
                kwargs[name] = np.asarray(kwargs[name], dtype=float if name == "regularizer_strengths" else int)
        return kwargs

    def __setattr__(self, name, value):
        # the cross-validation settings are checked when set, as the model's other arguments are
        if name in _CV_CHECKS:
            _CV_CHECKS[name](value)
        super().__setattr__(name, value)

    def get_params(self, deep: bool = True) -> dict:
        return {**super().get_params(deep), **{name: getattr(self, name) for name in _CV_CHECKS}}

    def _reset_fit(self):
        super()._reset_fit()
        for name in ("regularizer_strengths_", "regularizer_strength_", "best_index_", "cv_scores_", "cv_mean_",
                     "cv_std_", "population_cv_scores_", "cv_status_"):
            setattr(self, name, None)

    def _check_regularizer(self):
        name = self.regularizer.name
        if name == "UnRegularized":
            raise InputError("PopulationGLMCV selects a regularizer strength; regularizer must be 'Ridge', "
                             "'Lasso', 'ElasticNet' or 'GroupLasso', got 'UnRegularized'")
        if name == "GroupLasso" and self.per_neuron:
            raise UnsupportedOptionError("GroupLasso takes one strength per group, not per neuron: use "
                                         "per_neuron=False with GroupLasso")
        if name == "ElasticNet" and np.ndim(self.regularizer_strength[1]) != 0:
            raise UnsupportedOptionError("PopulationGLMCV needs one ElasticNet ratio for all coefficients; got "
                                         f"ratio of shape {np.shape(self.regularizer_strength[1])}")

    def _candidate(self, strength, n_features: int, n_neurons: int):
        """The model's strength for candidate ``strength`` (a scalar, or one per neuron)."""
        strength = np.asarray(strength, dtype=float)
        if self.regularizer.name == "GroupLasso":
            return float(strength)
        coef_shaped = np.broadcast_to(strength, (n_features, n_neurons)).copy()
        if self.regularizer.name == "ElasticNet":
            return (coef_shaped, float(self.regularizer_strength[1]))
        return coef_shaped

    def _grid(self, max_strengths: Callable[[float], np.ndarray]) -> np.ndarray:
        """The candidate strengths, largest first.

        ``max_strengths(ratio)`` gives every neuron's largest useful strength
        (:func:`distglm.core.cv.max_strength`); it is called only for the default grid.
        """
        given = self.regularizer_strengths
        if given is not None and not isinstance(given, numbers.Integral):
            return np.sort(np.asarray(given, dtype=float))[::-1]
        ratio = float(self.regularizer_strength[1]) if self.regularizer.name == "ElasticNet" else 0.5
        top = np.asarray(max_strengths(ratio))
        # neurons without events have no gradient to bound; 1.0 when no neuron has one
        top = top[np.isfinite(top) & (top > 0)]
        return _cv.strength_grid(float(top.max()) if top.size else 1.0,
                                 DEFAULT_N_STRENGTHS if given is None else int(given))

    def _selected_strength(self, strengths, n_features: int, n_neurons: int):
        """The per-neuron strength arrays of the refit at ``strengths`` (shape (n_neurons,), or a scalar)."""
        return self.regularizer.expand_strength(self._candidate(strengths, n_features, n_neurons), n_features,
                                                n_neurons)

    def _set_cv(self, grid: np.ndarray, path: _cv.PathScores, index: np.ndarray | None = None) -> None:
        """Set the cross-validation attributes from the path's scores (``index``: the selection made)."""
        scores, pooled, selected = _cv.select(path, self.scoring, self.per_neuron, self.selection)
        index = selected if index is None else np.asarray(index)
        self.regularizer_strengths_ = grid
        self.best_index_ = index
        self.regularizer_strength_ = grid[index]
        self.cv_scores_ = scores
        with warnings.catch_warnings():
            # a neuron that failed on every fold (reported by the fit) has no mean
            warnings.simplefilter("ignore", RuntimeWarning)
            self.cv_mean_ = np.nanmean(scores, axis=1)
            self.cv_std_ = np.nanstd(scores, axis=1)
        self.population_cv_scores_ = pooled
        self.cv_status_ = np.asarray(path.status)

    def fit(self, X, y, init_params=None):
        """Cross-validate the candidate strengths, select, and refit on all samples.

        Parameters
        ----------
        X : array of shape (n_samples, n_features), or dict of (n_samples, k) arrays
        y : array of shape (n_samples, n_neurons)
        init_params : tuple (coef, intercept), optional
            Starting values of the refit.

        Returns
        -------
        self
        """
        self._check_regularizer()
        config = self._fit_config()
        enable_compilation_cache()
        Xa, ya, groups = self._prepare(X, y, drop_nans=False)
        if hasattr(self.cv, "split"):
            # a splitter splits the samples fitted, as a distributed fit's driver splits them
            Xa, ya, _ = val.drop_nan_rows(Xa, ya)
            folds = make_folds(self.cv, Xa.shape[0], Xa, ya)
        else:
            folds = make_folds(self.cv, Xa.shape[0])
            Xa, ya, keep = val.drop_nan_rows(Xa, ya)
            folds = _kept_folds(folds, keep)
        val.check_support(self._observation_model, ya)
        n_features, n_neurons = Xa.shape[1], ya.shape[1]
        mask = self._mask_for(groups, n_features, n_neurons)
        grid = self._grid(lambda ratio: _cv.max_strength(config, Xa, ya, mask, ratio=ratio))
        candidates = [self._selected_strength(s, n_features, n_neurons) for s in grid]
        path = _cv.cv_path(Xa, ya, mask, config, candidates, folds, self.scoring)
        _, _, index = _cv.select(path, self.scoring, self.per_neuron, self.selection)

        params = {name: value for name, value in PopulationGLM.get_params(self).items()}
        params["regularizer_strength"] = self._candidate(grid[index] if self.per_neuron else grid[index[0]],
                                                         n_features, n_neurons)
        refit = PopulationGLM(**params).fit(X, y, init_params)
        for name in ("coef_", "intercept_", "scale_", "dof_resid_", "solver_state_", "n_iter_", "converged_",
                     "status_", "_groups"):
            setattr(self, name, getattr(refit, name))
        self._set_cv(grid, path, index)
        return self
