"""Figures of a fit: neurons' filters, the population's diagnostics, cross-validation curves.

Every function takes a store's path or a fitted model and returns a matplotlib ``Figure``
(made without pyplot, so it works with any backend and in threads); save it with
``fig.savefig("out.png")``. matplotlib is an optional dependency: ``pip install 'distglm[plot]'``.
``distglm inspect PATH --plot out.png`` writes :func:`summary_figure`.
"""

from __future__ import annotations

import os

import numpy as np

from .errors import InputError, InputTypeError

__all__ = ["filters", "diagnostics", "cv_curves", "summary_figure"]


def _figure(*, figsize):
    try:
        from matplotlib.figure import Figure
    except ImportError:
        raise ImportError("distglm.plot needs matplotlib: pip install 'distglm[plot]'") from None
    return Figure(figsize=figsize, layout="constrained")


def _fitted(source, name=None) -> dict:
    """Per-neuron results of a store (path) or a fitted model, with the neurons' ids.

    Returns a dict: ``coef`` (n_features, n_neurons), ``n_iter``, ``converged``, ``status``,
    ``loss`` (None for a model: models do not keep it), ``ids`` (n_neurons,), ``features``.
    """
    from . import store
    from .glm import GLM

    if isinstance(source, (str, os.PathLike)):
        path = os.fspath(source)
        results = store.read_results(path, name=name)
        coordinates = store.read_coordinates(path)
        return {"coef": results["coef"], "n_iter": results["n_iter"], "converged": results["converged"],
                "status": results["status"], "loss": results["loss"], "ids": coordinates["neuron"],
                "features": coordinates["feature"]}
    if isinstance(source, GLM):
        source._check_is_fit()
        coef = source._coef_matrix()
        ids = source._neuron_ids if source._neuron_ids is not None else np.arange(coef.shape[1])
        n_neurons = coef.shape[1]

        def per_neuron(value, fill):
            return np.full(n_neurons, fill) if value is None else np.asarray(value).reshape(n_neurons)

        return {"coef": coef, "n_iter": per_neuron(source.n_iter_, 0),
                "converged": per_neuron(source.converged_, True), "status": per_neuron(source.status_, 0),
                "loss": None, "ids": np.asarray(ids), "features": np.arange(coef.shape[0])}
    raise InputTypeError(f"source must be a store's path or a fitted distglm GLM/PopulationGLM; got "
                         f"{type(source).__name__}")


def _positions(ids: np.ndarray, neurons) -> list[int]:
    """The positions of the neurons named by their ids."""
    wanted = np.atleast_1d(np.asarray(neurons)).tolist()
    lookup = {value: i for i, value in enumerate(np.asarray(ids).tolist())}
    missing = [n for n in wanted if n not in lookup]
    if missing:
        raise InputError(f"neurons {missing} are not in the fit; its neuron ids are {list(lookup)[:10]}"
                         f"{'...' if len(lookup) > 10 else ''}")
    return [lookup[n] for n in wanted]


def _basis_matrix(basis, window_size):
    """The basis evaluated on its window, of shape (window_size, n_basis_funcs)."""
    if hasattr(basis, "evaluate_on_grid"):
        if window_size is None:
            window_size = getattr(basis, "window_size", None)
        if window_size is None:
            raise InputError("window_size must be given for a basis without a window_size of its own")
        _, values = basis.evaluate_on_grid(int(window_size))
        return np.asarray(values)
    values = np.asarray(basis, dtype=float)
    if values.ndim != 2:
        raise InputError(f"basis must be a NeMoS basis or an array of shape (window_size, n_basis_funcs); "
                         f"got shape {values.shape}")
    return values


def filters(source, neurons, basis, *, features=None, window_size=None, bin_size=None):
    """The fitted filters of chosen neurons: their coefficients times a basis, over its window.

    Parameters
    ----------
    source : str, os.PathLike or PopulationGLM
        A store with results, or a fitted model.
    neurons : id or sequence of ids
        The neurons to draw, by the ids the store records (``write_inputs(neuron_ids=...)``, a
        pynapple y's column labels) or, for a model without ids, by position.
    basis : NeMoS basis or array of shape (window_size, n_basis_funcs)
        The basis whose features the coefficients weigh; a NeMoS basis is evaluated on its window.
    features : slice or sequence of int, optional
        The columns of X the basis made, ``n_basis_funcs`` of them; by default the first ones.
    window_size : int, optional
        Samples of the window for a basis that has no ``window_size`` of its own.
    bin_size : float, optional
        Seconds per sample: the lag axis is in seconds instead of samples.

    Returns
    -------
    matplotlib.figure.Figure
        One axes, one line per neuron, labelled by the neuron's id.

    Examples
    --------
    >>> import numpy as np
    >>> from distglm.glm import PopulationGLM
    >>> rng = np.random.default_rng(0)
    >>> model = PopulationGLM().fit(rng.normal(size=(200, 3)), rng.poisson(1.0, size=(200, 4)))
    >>> fig = filters(model, [0, 2], np.eye(3))
    >>> [text.get_text() for text in fig.axes[0].get_legend().get_texts()]
    ['neuron 0', 'neuron 2']
    """
    fitted = _fitted(source)
    matrix = _basis_matrix(basis, window_size)
    columns = np.arange(matrix.shape[1]) if features is None else np.arange(fitted["coef"].shape[0])[features]
    if len(columns) != matrix.shape[1]:
        raise InputError(f"features must name {matrix.shape[1]} columns of X, one per basis function; got "
                         f"{len(columns)}")
    if columns.max(initial=-1) >= fitted["coef"].shape[0]:
        raise InputError(f"features exceed the fit's {fitted['coef'].shape[0]} features")
    lags = np.arange(matrix.shape[0]) * (1.0 if bin_size is None else float(bin_size))
    fig = _figure(figsize=(6, 4))
    ax = fig.add_subplot()
    for position in _positions(fitted["ids"], neurons):
        ax.plot(lags, matrix @ fitted["coef"][columns, position], label=f"neuron {fitted['ids'][position]}")
    ax.axhline(0.0, color="0.7", linewidth=0.8)
    ax.set_xlabel("lag (s)" if bin_size is not None else "lag (samples)")
    ax.set_ylabel("filter (linear predictor)")
    ax.set_title("fitted filters")
    ax.legend(fontsize="small")
    return fig


def diagnostics(source, scores=None):
    """The population's fit at a glance: score, iterations and convergence of every neuron.

    Parameters
    ----------
    source : str, os.PathLike or PopulationGLM
        A store with results, or a fitted model.
    scores : array of shape (n_neurons,), optional
        A score per neuron (a pseudo-R2, say); by default the final objective a store records
        (lower is better). A model keeps no objective: give ``scores`` to plot one.

    Returns
    -------
    matplotlib.figure.Figure
        Three axes: a histogram of the scores, a histogram of the iterations, and iterations
        against the score, converged and not converged neurons apart.

    Examples
    --------
    >>> import numpy as np
    >>> from distglm.glm import PopulationGLM
    >>> rng = np.random.default_rng(0)
    >>> X, y = rng.normal(size=(200, 3)), rng.poisson(1.0, size=(200, 6))
    >>> model = PopulationGLM().fit(X, y)
    >>> fig = diagnostics(model, scores=np.asarray(model.score(X, y, aggregate_sample_scores=lambda t: t.mean(0))))
    >>> [ax.get_title() for ax in fig.axes]
    ['score per neuron', 'solver iterations', 'iterations vs score']
    """
    fitted = _fitted(source)
    written = fitted["status"] >= 0
    if scores is None:
        if fitted["loss"] is None:
            raise InputError("a fitted model keeps no final objective: give scores= (one per neuron) to plot")
        scores, label = fitted["loss"], "final objective (lower is better)"
    else:
        label = "score"
    scores = np.asarray(scores, dtype=float).reshape(-1)
    if scores.shape != written.shape:
        raise InputError(f"scores must have shape ({written.size},), one per neuron; got shape {scores.shape}")
    iterations = np.asarray(fitted["n_iter"], dtype=float)
    converged = np.asarray(fitted["converged"], dtype=bool)
    finite = written & np.isfinite(scores)
    fig = _figure(figsize=(11, 3.5))
    axes = fig.subplots(1, 3)
    axes[0].hist(scores[finite], bins=30, color="C0")
    axes[0].set(title="score per neuron", xlabel=label, ylabel="neurons")
    axes[1].hist(iterations[written], bins=30, color="C1")
    axes[1].set(title="solver iterations", xlabel="iterations", ylabel="neurons")
    for mask, name, color in ((finite & converged, "converged", "C0"), (finite & ~converged, "not converged", "C3")):
        axes[2].scatter(iterations[mask], scores[mask], s=8, color=color, label=f"{name} ({int(mask.sum())})")
    axes[2].set(title="iterations vs score", xlabel="iterations", ylabel=label)
    axes[2].legend(fontsize="small")
    return fig


def cv_curves(source, strengths=None, neurons=None):
    """Cross-validated score against regularizer strength: the population and chosen neurons.

    Parameters
    ----------
    source : array of shape (n_strengths, n_folds, n_neurons), or a fitted PopulationGLMCV
        Held-out scores of every strength, fold and neuron (``PopulationGLMCV.cv_scores_``).
    strengths : array of shape (n_strengths,), optional
        The strengths tried; by default ``source``'s ``regularizer_strengths_`` (a
        :class:`~distglm.glm.PopulationGLMCV` has them), else positions.
    neurons : sequence of int, optional
        Positions of neurons to draw one by one, beside the population's median.

    Returns
    -------
    matplotlib.figure.Figure
        One axes: the median over neurons of the mean over folds, with the band between the
        quartiles, and a line per chosen neuron.

    Examples
    --------
    >>> import numpy as np
    >>> scores = np.random.default_rng(0).normal(size=(4, 3, 10))
    >>> fig = cv_curves(scores, strengths=[0.01, 0.1, 1.0, 10.0])
    >>> fig.axes[0].get_xscale()
    'log'
    """
    scores = getattr(source, "cv_scores_", source)
    if scores is None:
        raise InputError("source has no cross-validation scores (cv_scores_ is None): fit it with selection first")
    scores = np.asarray(scores, dtype=float)
    if scores.ndim != 3:
        raise InputError(f"cv scores must have shape (n_strengths, n_folds, n_neurons); got shape {scores.shape}")
    if strengths is None:
        strengths = getattr(source, "regularizer_strengths_", None)
    x = np.arange(scores.shape[0]) if strengths is None else np.asarray(strengths, dtype=float).reshape(-1)
    if x.shape != (scores.shape[0],):
        raise InputError(f"strengths must have shape ({scores.shape[0]},), one per row of the scores; got "
                         f"shape {x.shape}")
    per_neuron = np.nanmean(scores, axis=1)
    fig = _figure(figsize=(6, 4))
    ax = fig.add_subplot()
    low, median, high = np.nanpercentile(per_neuron, [25, 50, 75], axis=1)
    ax.fill_between(x, low, high, color="C0", alpha=0.25, label="quartiles over neurons")
    ax.plot(x, median, color="C0", marker="o", label="median over neurons")
    for position in [] if neurons is None else list(neurons):
        ax.plot(x, per_neuron[:, position], linewidth=0.8, label=f"neuron {position}")
    if strengths is not None and np.all(x > 0):
        ax.set_xscale("log")
    ax.set(title="cross-validated score", xlabel="regularizer strength" if strengths is not None else "strength index",
           ylabel="held-out score (mean over folds)")
    ax.legend(fontsize="small")
    return fig


def summary_figure(path, max_neurons: int = 200, name=None):
    """One page about a store's fit: coefficients, objective, iterations, statuses.

    Parameters
    ----------
    path : str or os.PathLike
        A store with results.
    max_neurons : int, optional
        Neurons shown in the coefficient map (the first ones); default 200.
    name : str, optional
        A named fit of the store (``distglm.fit(..., name=...)``); None: the unnamed fit.

    Returns
    -------
    matplotlib.figure.Figure
        Four axes: the coefficients (features x neurons), the final objective's histogram,
        iterations against the objective, and the count of neurons by status.
    """
    from .store import read_attrs, results_group

    fitted = _fitted(path, name)
    status, written = fitted["status"], fitted["status"] >= 0
    flags = read_attrs(path, f"{results_group(name)}/status")
    meanings = dict(zip(flags.get("flag_values", []), flags.get("flag_meanings", "").split()))
    fig = _figure(figsize=(10, 7))
    axes = fig.subplots(2, 2)
    shown = fitted["coef"][:, :max_neurons]
    limit = float(np.nanmax(np.abs(shown))) if np.isfinite(shown).any() else 1.0
    image = axes[0, 0].imshow(shown, aspect="auto", cmap="RdBu_r", vmin=-limit, vmax=limit, interpolation="nearest")
    fig.colorbar(image, ax=axes[0, 0], label="coefficient")
    axes[0, 0].set(title=f"coefficients ({shown.shape[1]} of {fitted['coef'].shape[1]} neurons)",
                   xlabel="neuron (position)", ylabel="feature")
    loss, iterations = fitted["loss"], fitted["n_iter"].astype(float)
    finite = written & np.isfinite(loss)
    axes[0, 1].hist(loss[finite], bins=30, color="C0")
    axes[0, 1].set(title="final objective per neuron", xlabel="objective (lower is better)", ylabel="neurons")
    converged = fitted["converged"].astype(bool)
    for mask, name, color in ((finite & converged, "converged", "C0"), (finite & ~converged, "not converged", "C3")):
        axes[1, 0].scatter(iterations[mask], loss[mask], s=8, color=color, label=f"{name} ({int(mask.sum())})")
    axes[1, 0].set(title="iterations vs objective", xlabel="iterations", ylabel="objective")
    axes[1, 0].legend(fontsize="small")
    codes, counts = np.unique(status, return_counts=True)
    axes[1, 1].barh([meanings.get(int(c), str(c)) for c in codes], counts, color="C2")
    axes[1, 1].set(title="neurons by status", xlabel="neurons")
    fig.suptitle(f"distglm fit: {os.path.basename(os.fspath(path).rstrip('/'))}")
    return fig
