"""A simulated recording for the ``distglm demo`` command: a known population GLM to fit.

The population has a few *hub* neurons whose spikes are simulated recurrently, and many more
neurons driven by the hubs. Every neuron sees one shared stimulus through a bank of log-stretched
raised-cosine filters (Pillow et al., 2008). The hubs' spike trains, also filtered through
raised cosines, are the remaining columns of the design matrix: a hub uses its own history
(refractoriness) and the history of a few other hubs (coupling); every other neuron is coupled to
a few hubs. Which columns predict which neuron is the feature mask, so the model that generated
the spikes is exactly a :class:`~distglm.glm.PopulationGLM` with that mask, and a fit should
recover its coefficients.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from .errors import InputError

__all__ = ["Population", "raised_cosine_log", "causal_filter", "simulate", "simulate_heterogeneous"]


class Population(NamedTuple):
    """A simulated recording and the parameters that generated it.

    Attributes
    ----------
    X : ndarray of shape (n_samples, n_features)
        Design matrix: stimulus features, then the hubs' spike-history features.
    y : ndarray of shape (n_samples, n_neurons)
        Spike counts per time bin, int32.
    feature_mask : ndarray of shape (n_features, n_neurons)
        uint8 0/1: feature ``i`` predicts neuron ``j`` iff ``feature_mask[i, j] == 1``.
    coef : ndarray of shape (n_features, n_neurons)
        True weights, exactly 0 where the mask is 0.
    intercept : ndarray of shape (n_neurons,)
        True intercepts (log of the baseline spike count per bin).
    feature_names : list of str
        One name per column of ``X``.
    """

    X: np.ndarray
    y: np.ndarray
    feature_mask: np.ndarray
    coef: np.ndarray
    intercept: np.ndarray
    feature_names: list


def raised_cosine_log(n_basis: int, window: int, time_scaling: float = 20.0) -> np.ndarray:
    """Log-stretched raised-cosine bumps tiling a window, as in Pillow et al. (2008).

    Bumps are narrow near lag 0 and widen with lag; each overlaps its neighbours by half, so
    together they sum to one over the whole window.

    Parameters
    ----------
    n_basis : int
        Number of bumps, at least 1.
    window : int
        Length of the window in bins, at least 2.
    time_scaling : float
        How strongly time is log-stretched (larger: narrower early bumps).

    Returns
    -------
    ndarray of shape (window, n_basis)
        Column ``k`` is bump ``k`` evaluated at lags ``0 .. window - 1``.

    Examples
    --------
    >>> basis = raised_cosine_log(4, 30)
    >>> basis.shape, float(basis.max()) <= 1.0
    ((30, 4), True)
    """
    if n_basis < 1 or window < 2:
        raise InputError(f"need n_basis >= 1 and window >= 2; got n_basis={n_basis}, window={window}")
    lags = np.linspace(0.0, 1.0, window)
    stretched = np.log(time_scaling * lags + 1.0) / np.log(time_scaling + 1.0)
    # the first bump peaks at lag 0 (the most recent bin), the last at the end of the window
    peaks = np.linspace(0.0, 1.0, n_basis)
    spacing = peaks[1] if n_basis > 1 else 1.0
    phase = (stretched[:, None] - peaks[None, :]) * np.pi / spacing
    return np.where(np.abs(phase) < np.pi, 0.5 * (np.cos(phase) + 1.0), 0.0)


def causal_filter(signals: np.ndarray, basis: np.ndarray, lag: int = 0) -> np.ndarray:
    """Filter each signal through each basis function, using only the past.

    ``out[t, i * n_basis + k] = sum_j signals[t - lag - j, i] * basis[j, k]``, with samples
    before the start taken as 0.

    Parameters
    ----------
    signals : ndarray of shape (n_samples, n_signals)
    basis : ndarray of shape (window, n_basis)
    lag : int
        Delay in bins: 1 for spike history (a bin never predicts itself), 0 for a stimulus.

    Returns
    -------
    ndarray of shape (n_samples, n_signals * n_basis)

    Examples
    --------
    >>> causal_filter(np.array([[1.0], [0.0], [0.0]]), np.array([[1.0], [0.5]]), lag=1).ravel()
    array([0. , 1. , 0.5])
    """
    n_samples = signals.shape[0]
    columns = []
    for signal in signals.T:
        for kernel in basis.T:
            full = np.convolve(signal, kernel)[:n_samples]
            columns.append(np.concatenate([np.zeros(lag), full[: n_samples - lag]]))
    return np.stack(columns, axis=1)


def _smooth_stimulus(rng: np.random.Generator, n_samples: int) -> np.ndarray:
    # An AR(1) process with a ~20-bin correlation time, like a slowly varying visual contrast.
    noise = rng.normal(size=n_samples)
    out = np.empty(n_samples)
    out[0] = noise[0]
    phi = 0.95
    for t in range(1, n_samples):
        out[t] = phi * out[t - 1] + np.sqrt(1 - phi**2) * noise[t]
    return out


def simulate(n_neurons: int = 256, n_samples: int = 20_000, *, n_stim_basis: int = 6, n_hubs: int = 8,
             n_hist_basis: int = 3, n_coupled: int = 3, seed: int = 0) -> Population:
    """Simulate Poisson spike counts of a population with stimulus, history and coupling terms.

    Parameters
    ----------
    n_neurons : int
        Neurons in the population, at least ``n_hubs``.
    n_samples : int
        Time bins (think 10 ms each).
    n_stim_basis : int
        Raised-cosine stimulus filters (a 50-bin window).
    n_hubs : int
        Neurons simulated recurrently, whose spike histories are features.
    n_hist_basis : int
        Raised-cosine history filters per hub (a 40-bin window).
    n_coupled : int
        Hubs coupled to each neuron (besides a hub's own history).
    seed : int

    Returns
    -------
    Population
        With ``n_stim_basis + n_hubs * n_hist_basis`` features.

    Examples
    --------
    >>> pop = simulate(n_neurons=20, n_samples=500, seed=1)
    >>> pop.X.shape, pop.y.shape, pop.feature_mask.shape
    ((500, 30), (500, 20), (30, 20))
    """
    if n_neurons < n_hubs:
        raise InputError(f"n_neurons must be at least n_hubs={n_hubs}; got {n_neurons}")
    if n_samples < 100:
        raise InputError(f"n_samples must be at least 100; got {n_samples}")
    rng = np.random.default_rng(seed)
    n_coupled = min(n_coupled, n_hubs - 1)

    stim = causal_filter(_smooth_stimulus(rng, n_samples)[:, None], raised_cosine_log(n_stim_basis, 50))
    stim = (stim - stim.mean(axis=0)) / stim.std(axis=0)

    mask, coef = _true_weights(rng, n_stim_basis, n_hubs, n_hist_basis, n_neurons, n_coupled)
    intercept = np.log(rng.uniform(0.03, 0.15, size=n_neurons))  # 3-15 Hz in 10 ms bins

    history_basis = raised_cosine_log(n_hist_basis, 40)
    history, hub_spikes = _simulate_hubs(rng, stim, history_basis, coef[:, :n_hubs], intercept[:n_hubs],
                                         n_stim_basis)
    X = np.concatenate([stim, history], axis=1)
    y = np.empty((n_samples, n_neurons), dtype=np.int32)
    y[:, :n_hubs] = hub_spikes
    rate = np.exp(X @ coef[:, n_hubs:] + intercept[n_hubs:])
    y[:, n_hubs:] = rng.poisson(rate)

    names = [f"stimulus[{k}]" for k in range(n_stim_basis)]
    names += [f"hub{h}_history[{k}]" for h in range(n_hubs) for k in range(n_hist_basis)]
    return Population(X, y, mask, coef, intercept, names)


def simulate_heterogeneous(n_neurons: int = 256, n_samples: int = 9_000, n_features: int = 50, *,
                           rates: tuple = (0.01, 5.0), tuning: tuple = (2.5, 0.1), seed: int = 0) -> Population:
    """Simulate Poisson neurons whose best regularizer strengths lie orders of magnitude apart.

    Neuron ``j`` fires on average from ``rates[0]`` (the first, quietest) to ``rates[1]`` (the
    last, loudest) spikes per bin, geometrically spaced. Its tuning goes the other way: the
    standard deviation of its linear predictor runs from ``tuning[0]`` to ``tuning[1]``, spread
    over from 1 to ``n_features`` true weights (quiet neurons sharply tuned to a few features,
    loud ones weakly and broadly tuned to many). A Ridge fit of ``n`` samples is best at about
    ``n_features / (n * sd**2)`` (a Gaussian prior of the weights' variance), so the quietest
    neurons need a strength ``(tuning[0] / tuning[1])**2`` times smaller than the loudest (625x
    by default), and with few samples per feature a strength that suits one end overfits, or
    flattens, the other.

    Parameters
    ----------
    n_neurons, n_samples, n_features : int
    rates : (float, float), the mean spikes per bin of the first and the last neuron
    tuning : (float, float), the standard deviation of their linear predictors
    seed : int

    Returns
    -------
    Population
        ``X`` of independent standard normal features, ``y`` int32 counts, the mask all ones.

    Examples
    --------
    >>> pop = simulate_heterogeneous(n_neurons=4, n_samples=2000, n_features=10, seed=1)
    >>> pop.y.shape, (pop.coef != 0).sum(axis=0).tolist()
    ((2000, 4), [1, 2, 5, 10])
    """
    if n_neurons < 2 or n_features < 1 or n_samples < 1:
        raise InputError(f"n_neurons must be at least 2, n_features and n_samples at least 1; got {n_neurons}, "
                         f"{n_features}, {n_samples}")
    if min(*rates, *tuning) <= 0:
        raise InputError(f"rates and tuning must be positive; got {rates} and {tuning}")
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n_samples, n_features))
    rate = np.geomspace(rates[0], rates[1], n_neurons)
    sd = np.geomspace(tuning[0], tuning[1], n_neurons)
    n_true = np.round(np.geomspace(1, n_features, n_neurons)).astype(int)
    coef = np.zeros((n_features, n_neurons))
    for j in range(n_neurons):
        weights = rng.normal(size=n_true[j])
        coef[rng.choice(n_features, n_true[j], replace=False), j] = weights / np.linalg.norm(weights) * sd[j]
    # exp(N(0, sd**2)) has mean exp(sd**2 / 2): the intercept keeps each neuron's mean rate
    intercept = np.log(rate) - 0.5 * sd**2
    y = rng.poisson(np.exp(X @ coef + intercept)).astype(np.int32)
    return Population(X, y, np.ones((n_features, n_neurons), np.uint8), coef, intercept,
                      [f"x[{i}]" for i in range(n_features)])


def _true_weights(rng, n_stim: int, n_hubs: int, n_hist: int, n_neurons: int, n_coupled: int):
    n_features = n_stim + n_hubs * n_hist
    mask = np.zeros((n_features, n_neurons), dtype=np.uint8)
    coef = np.zeros((n_features, n_neurons))
    responsive = rng.random(n_neurons) < 0.8
    responsive[:n_hubs] = True
    mask[:n_stim, responsive] = 1
    coef[:n_stim] = rng.normal(0.0, 0.12, size=(n_stim, n_neurons)) * mask[:n_stim]
    for j in range(n_neurons):
        others = [h for h in range(n_hubs) if h != j]
        for h in rng.choice(others, size=n_coupled, replace=False):
            rows = slice(n_stim + h * n_hist, n_stim + (h + 1) * n_hist)
            mask[rows, j] = 1
            coef[rows, j] = rng.normal(0.0, 0.15, size=n_hist)
        if j < n_hubs:
            rows = slice(n_stim + j * n_hist, n_stim + (j + 1) * n_hist)
            mask[rows, j] = 1
            # refractory: strongly negative at short lags, recovering at longer ones
            coef[rows, j] = np.linspace(-1.5, 0.1, n_hist)
    return mask, coef


def _simulate_hubs(rng, stim, basis, coef_hubs, intercept_hubs, n_stim):
    """Simulate the hubs bin by bin (their history feeds back).

    Returns the hubs' history features, of shape (n_samples, n_hubs * n_hist), and their spike
    counts, of shape (n_samples, n_hubs).
    """
    n_samples = stim.shape[0]
    window, n_hist = basis.shape
    n_hubs = coef_hubs.shape[1]
    drive = stim @ coef_hubs[:n_stim] + intercept_hubs
    w_hist = coef_hubs[n_stim:]
    lagged = basis[::-1]  # row i weighs the spike i + 1 bins before the bin being computed
    spikes = np.zeros((n_samples + window, n_hubs), dtype=np.int32)  # window leading zeros
    features = np.zeros((n_samples, n_hubs * n_hist))
    for t in range(n_samples):
        past = spikes[t:t + window]
        feats = (lagged.T @ past).T.reshape(-1)  # hub-major, matching the column order of X
        features[t] = feats
        rate = np.exp(drive[t] + feats @ w_hist)
        # a cap keeps a rare excursion from running away; with refractory history it never binds
        spikes[t + window] = rng.poisson(np.minimum(rate, 3.0))
    return features, spikes[window:]
