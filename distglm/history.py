"""Spike-history and coupling features, declared once and built from ``y`` where they are used.

A :class:`HistorySpec` names a bank of causal kernels (a basis of ``n_basis_funcs`` functions over
``window_size`` past samples) and which neurons' past drives which neuron: ``"self"`` (each
neuron its own history), ``"all"`` (all to all) or a bool neighbour mask. Fitting a store with
``distglm.fit(path, model, history=spec)`` never builds the (n_samples, n_neurons * K) design:
each actor convolves the stored ``y`` one chunk of samples at a time (a window of past samples
read across the chunk's edge) and feeds the chunk to the shared core.

The features are NeMoS 0.2.8's: ``basis.compute_features(y)`` of a convolutional basis gives,
for sample ``t``, neuron ``n`` and basis function ``k``, ``sum_j kernel[j, k] * y[t - 1 - j, n]``
in column ``n * K + k``, and NaN for the first ``window_size`` samples. With a stimulus design
``X_stim`` the full design is ``[X_stim, history]`` and the feature mask stacks the stimulus
mask on ``kron(coupling, ones((K, 1)))``.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from .errors import InputError, InputTypeError

__all__ = ["HistorySpec", "design", "history_features", "raised_cosine_log", "simulate_recurrent"]


def raised_cosine_log(n_basis_funcs: int, window_size: int, width: float = 2.0, time_scaling: float = 50.0,
                      enforce_decay_to_zero: bool = True) -> np.ndarray:
    """Kernels of a log-stretched raised-cosine basis, as NeMoS 0.2.8's ``RaisedCosineLogConv`` evaluates them.

    Parameters
    ----------
    n_basis_funcs : int
        Number of kernels K (at least 2).
    window_size : int
        Number of past samples W each kernel spans (at least 2).
    width, time_scaling, enforce_decay_to_zero
        As NeMoS's: width > 1 with 2 * width an integer; time_scaling > 0.

    Returns
    -------
    kernels : float64 array of shape (window_size, n_basis_funcs)
        ``kernels[j, k]`` weighs the sample ``j + 1`` steps in the past.

    Examples
    --------
    >>> raised_cosine_log(3, 5)[0]
    array([1. , 0.5, 0. ])
    """
    for name, value, low in (("n_basis_funcs", n_basis_funcs, 2), ("window_size", window_size, 2)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
            raise InputTypeError(f"{name} must be an int; got {type(value).__name__}")
        if value < low:
            raise InputError(f"{name} must be at least {low}; got {value}")
    if not width > 1 or not np.isclose(2 * width, round(2 * width)):
        raise InputError(f"width must be greater than 1 with 2 * width an integer; got {width!r}")
    if not time_scaling > 0:
        raise InputError(f"time_scaling must be positive; got {time_scaling!r}")
    samples = np.log(time_scaling * np.linspace(0.0, 1.0, window_size) + 1) / np.log(time_scaling + 1)
    last = 1 - width / (n_basis_funcs + width - 1) if enforce_decay_to_zero else 1.0
    peaks = np.linspace(0.0, last, n_basis_funcs)
    phase = np.clip(np.pi * (samples[:, None] - peaks[None]) / ((peaks[1] - peaks[0]) * width), -np.pi, np.pi)
    return 0.5 * (np.cos(phase) + 1)


def _kernels_of_basis(basis) -> np.ndarray:
    """The (window_size, K) kernels of a NeMoS convolutional basis with one input."""
    window = getattr(basis, "window_size", None)
    if window is None or not hasattr(basis, "evaluate_on_grid") or getattr(basis, "mode", "conv") != "conv":
        raise InputTypeError(f"basis must be a NeMoS convolutional basis (e.g. RaisedCosineLogConv) with a "
                             f"window_size; got {type(basis).__name__}")
    _, kernels = basis.evaluate_on_grid(int(window))
    kernels = np.asarray(kernels, np.float64)
    if kernels.ndim != 2 or kernels.shape[0] != window:
        raise InputError(f"basis {type(basis).__name__} must have one input (kernels of shape (window_size, K)); "
                         f"its kernels have shape {kernels.shape}")
    return kernels


@dataclasses.dataclass(frozen=True, eq=False)
class HistorySpec:
    """Declared history features: causal kernels and a coupling structure.

    Parameters
    ----------
    kernels : array of shape (window_size, K)
        ``kernels[j, k]`` weighs the sample ``j + 1`` steps in the past (the NeMoS convention:
        what ``basis.evaluate_on_grid(window_size)`` returns for a convolutional basis).
    coupling : "self", "all" or bool array of shape (n_neurons, n_neurons)
        ``coupling[i, j]`` True: neuron ``i``'s past is a predictor of neuron ``j``.

    Use :meth:`raised_cosine_log` or :meth:`from_basis` rather than kernels by hand.

    Examples
    --------
    >>> spec = HistorySpec.raised_cosine_log(4, 20, coupling="self")
    >>> spec.window_size, spec.n_basis_funcs, spec.coupling_mask(3).astype(int).tolist()
    (20, 4, [[1, 0, 0], [0, 1, 0], [0, 0, 1]])
    """

    kernels: np.ndarray
    coupling: object = "all"

    def __post_init__(self):
        kernels = np.asarray(self.kernels)
        if kernels.ndim != 2 or kernels.shape[0] < 1 or kernels.shape[1] < 1 or kernels.dtype.kind not in "fiu":
            raise InputError(f"kernels must be a numeric array of shape (window_size, K); got "
                             f"{kernels.dtype} of shape {kernels.shape}")
        if not np.all(np.isfinite(kernels)):
            raise InputError("kernels must be finite")
        kernels = np.array(kernels, np.float64)
        kernels.flags.writeable = False
        object.__setattr__(self, "kernels", kernels)
        coupling = self.coupling
        if isinstance(coupling, str):
            if coupling not in ("self", "all"):
                raise InputError(f"coupling must be 'self', 'all' or a bool array (n_neurons, n_neurons); "
                                 f"got {coupling!r}")
        else:
            arr = np.asarray(coupling)
            if arr.ndim != 2 or arr.shape[0] != arr.shape[1] or arr.dtype != bool:
                raise InputError(f"coupling must be 'self', 'all' or a bool array of shape (n_neurons, n_neurons); "
                                 f"got {arr.dtype} of shape {arr.shape}")
            arr = arr.copy()
            arr.flags.writeable = False
            object.__setattr__(self, "coupling", arr)

    @classmethod
    def raised_cosine_log(cls, n_basis_funcs: int, window_size: int, coupling="all", **options) -> HistorySpec:
        """distglm's raised-cosine-log basis (:func:`raised_cosine_log`; ``options`` as its)."""
        return cls(raised_cosine_log(n_basis_funcs, window_size, **options), coupling)

    @classmethod
    def from_basis(cls, basis, coupling="all") -> HistorySpec:
        """The kernels of a NeMoS 0.2.8 convolutional basis (e.g. ``nemos.basis.RaisedCosineLogConv``)."""
        return cls(_kernels_of_basis(basis), coupling)

    @property
    def window_size(self) -> int:
        return self.kernels.shape[0]

    @property
    def n_basis_funcs(self) -> int:
        return self.kernels.shape[1]

    def coupling_mask(self, n_neurons: int) -> np.ndarray:
        """Bool array of shape (n_neurons, n_neurons): ``[i, j]`` neuron i's past drives neuron j."""
        if isinstance(self.coupling, str):
            full = np.ones((n_neurons, n_neurons), dtype=bool)
            return full if self.coupling == "all" else np.eye(n_neurons, dtype=bool)
        if self.coupling.shape[0] != n_neurons:
            raise InputError(f"the coupling mask has shape {self.coupling.shape} but the store holds {n_neurons} "
                             f"neurons; expected ({n_neurons}, {n_neurons})")
        return np.array(self.coupling)

    def feature_mask(self, n_neurons: int) -> np.ndarray:
        """0/1 float array of shape (n_neurons * K, n_neurons): the history features' mask."""
        return np.repeat(self.coupling_mask(n_neurons), self.n_basis_funcs, axis=0).astype(np.float64)

    def feature_names(self, neuron_ids) -> list[str]:
        """Names of the history features, ``"<neuron id>_history<k>"`` in column order (neuron-major)."""
        return [f"{neuron}_history{k}" for neuron in np.asarray(neuron_ids).tolist()
                for k in range(self.n_basis_funcs)]

    def to_json(self) -> dict:
        """A JSON-ready description, as the store records it with a fit."""
        coupling = self.coupling if isinstance(self.coupling, str) else self.coupling.astype(int).tolist()
        return {"kernels": self.kernels.tolist(), "coupling": coupling}

    @classmethod
    def from_json(cls, record: dict) -> HistorySpec:
        """The spec a JSON object describes: :meth:`to_json`'s ``{"kernels": [[...]], "coupling": ...}``,
        or distglm's raised-cosine-log basis by its sizes, ``{"n_basis_funcs": K, "window_size": W,
        "coupling": ...}`` (with ``width``, ``time_scaling``, ``enforce_decay_to_zero`` optional).

        ``coupling`` is ``"self"``, ``"all"`` (the default) or a nested list of 0/1 (or true/false)
        of shape (n_neurons, n_neurons).

        Examples
        --------
        >>> HistorySpec.from_json({"n_basis_funcs": 3, "window_size": 10, "coupling": "self"}).kernels.shape
        (10, 3)
        """
        if not isinstance(record, dict):
            raise InputTypeError(f"a history spec must be a JSON object; got {type(record).__name__}")
        basis = ("n_basis_funcs", "window_size", "width", "time_scaling", "enforce_decay_to_zero")
        allowed = ("kernels", "coupling") if "kernels" in record else basis + ("coupling",)
        unknown = sorted(set(record) - set(allowed))
        if unknown:
            raise InputError(f"unknown keys {unknown} in a history spec; expected {list(allowed)}")
        coupling = record.get("coupling", "all")
        if not isinstance(coupling, str):
            arr = np.asarray(coupling)
            if arr.dtype == object or not np.isin(arr, (0, 1)).all():
                raise InputError("coupling must be 'self', 'all' or a nested list of 0/1 of shape (n_neurons, n_neurons)")
            coupling = arr.astype(bool)
        if "kernels" in record:
            return cls(np.asarray(record["kernels"], np.float64), coupling)
        missing = [name for name in basis[:2] if name not in record]
        if missing:
            raise InputError(f"a history spec needs 'kernels', or {missing} of its raised-cosine-log basis")
        return cls.raised_cosine_log(coupling=coupling, **{k: v for k, v in record.items() if k != "coupling"})

    def __eq__(self, other):
        return isinstance(other, HistorySpec) and self.to_json() == other.to_json()

    __hash__ = None


def history_rows(past: np.ndarray, kernels: np.ndarray) -> np.ndarray:
    """History features of ``len(past) - W + 1`` consecutive samples from the ``W`` samples before each.

    ``past`` holds the responses of the samples ``[a - W, b - 1)`` (shape (b - a + W - 1, n_neurons));
    the result, of shape (b - a, n_neurons * K), is the features of samples ``[a, b)``.
    """
    window, k = kernels.shape
    # each sample's window runs oldest first, so the kernel (newest lag first) is reversed
    windows = np.lib.stride_tricks.sliding_window_view(past, window, axis=0)
    return (windows @ kernels[::-1]).reshape(windows.shape[0], -1)


def history_features(y, spec: HistorySpec) -> np.ndarray:
    """The whole history design, as NeMoS's ``basis.compute_features(y)`` builds it (for small data).

    Parameters
    ----------
    y : array of shape (n_samples, n_neurons)
    spec : HistorySpec

    Returns
    -------
    float64 array of shape (n_samples, n_neurons * K)
        NaN in the first ``window_size`` rows.

    Examples
    --------
    >>> y = np.zeros((8, 1)); y[2, 0] = 1.0
    >>> history_features(y, HistorySpec(np.array([[1.0], [0.5]])))[:, 0].tolist()
    [nan, nan, 0.0, 1.0, 0.5, 0.0, 0.0, 0.0]
    """
    if not isinstance(spec, HistorySpec):
        raise InputTypeError(f"spec must be a HistorySpec; got {type(spec).__name__}")
    y = np.asarray(y, np.float64)
    if y.ndim != 2:
        raise InputError(f"y must be of shape (n_samples, n_neurons); got shape {y.shape}")
    window = spec.window_size
    out = np.full((y.shape[0], y.shape[1] * spec.n_basis_funcs), np.nan)
    if y.shape[0] > window:
        out[window:] = history_rows(y[:-1], spec.kernels)
    return out


def design(X, y, spec: HistorySpec) -> np.ndarray:
    """The full design ``[X, history_features(y, spec)]`` a history fit's model predicts from (small data).

    Parameters
    ----------
    X : array of shape (n_samples, n_features)
        The stimulus design, as stored.
    y : array of shape (n_samples, n_neurons)
    spec : HistorySpec

    Returns
    -------
    float64 array of shape (n_samples, n_features + n_neurons * K)
        NaN in the first ``window_size`` rows (``predict`` gives NaN there).

    Examples
    --------
    >>> design(np.ones((6, 2)), np.ones((6, 3)), HistorySpec.raised_cosine_log(2, 3)).shape
    (6, 8)
    """
    X = np.asarray(X, np.float64)
    history = history_features(y, spec)
    if X.ndim != 2 or X.shape[0] != history.shape[0]:
        raise InputError(f"X must be of shape (n_samples, n_features) with the {history.shape[0]} samples of y; "
                         f"got shape {X.shape}")
    return np.hstack([X, history])


def simulate_recurrent(model, random_key, feedforward_input, init_y, history: HistorySpec | None = None):
    """Simulate a fitted history model as a recurrent network: each draw feeds the next samples' history.

    The model's own draws, not recorded responses, fill the history windows, as NeMoS 0.2.8's
    ``nemos.simulation.simulate_recurrent`` does (same draws from the same key with a Poisson
    model and exponential link).

    Parameters
    ----------
    model : PopulationGLM
        Fitted on ``[X, history]`` (``distglm.load_model`` of a history fit, or in memory).
    random_key : jax PRNG key
    feedforward_input : array of shape (n_samples, n_features)
        The stimulus design of the samples to simulate.
    init_y : array of shape (window_size, n_neurons)
        The responses before the first simulated sample, oldest first.
    history : HistorySpec, optional
        Default the model's ``history_`` (set by ``load_model``).

    Returns
    -------
    (samples, rates) : float arrays of shape (n_samples, n_neurons)

    Examples
    --------
    >>> import jax
    >>> from distglm.glm import PopulationGLM
    >>> spec = HistorySpec.raised_cosine_log(2, 3, coupling="self")
    >>> model = PopulationGLM(feature_mask=np.vstack([np.ones((1, 2)), spec.feature_mask(2)]))
    >>> model.coef_, model.intercept_ = np.zeros((5, 2)), np.zeros(2)
    >>> spikes, rates = simulate_recurrent(model, jax.random.PRNGKey(0), np.zeros((4, 1)), np.zeros((3, 2)), spec)
    >>> spikes.shape, float(rates[0, 0])
    ((4, 2), 1.0)
    """
    import jax
    import jax.numpy as jnp

    spec = getattr(model, "history_", None) if history is None else history
    if not isinstance(spec, HistorySpec):
        raise InputTypeError("simulate_recurrent needs the model's history: a model loaded from a history fit, or "
                             f"history=HistorySpec(...); got {type(spec).__name__}")
    model._check_is_fit()
    coef, intercept = np.asarray(model._coef_matrix()), np.asarray(model.intercept_)
    n_neurons = intercept.shape[0]
    n_history = n_neurons * spec.n_basis_funcs
    X = np.asarray(feedforward_input, np.float64)
    init = np.asarray(init_y, np.float64)
    if X.ndim != 2 or X.shape[1] + n_history != coef.shape[0]:
        raise InputError(f"feedforward_input must be of shape (n_samples, {coef.shape[0] - n_history}) for a model "
                         f"of {coef.shape[0]} features with {n_history} history features; got shape {X.shape}")
    if init.shape != (spec.window_size, n_neurons):
        raise InputError(f"init_y must be of shape ({spec.window_size}, {n_neurons}) (window_size, n_neurons); "
                         f"got {init.shape}")
    dtype = jnp.asarray(0.0).dtype
    link, observation = model._fit_config().link, model._observation_model
    scale = jnp.asarray(model._scale_vector(n_neurons), dtype)
    w_history = jnp.asarray(coef[X.shape[1]:], dtype)
    flipped = jnp.asarray(spec.kernels[::-1], dtype)
    drive = jnp.asarray(X @ coef[:X.shape[1]] + intercept, dtype)

    def step(window, inputs):
        key, feedforward = inputs
        # the window runs oldest first: the newest sample meets the kernels' first lag
        features = jnp.einsum("wn,wk->nk", window, flipped).reshape(-1)
        rate = link(feedforward + features @ w_history)
        new = observation.sample(key, rate, scale)
        return jnp.vstack([window[1:], new]), (new, rate)

    keys = jax.random.split(random_key, X.shape[0])
    _, (samples, rates) = jax.lax.scan(step, jnp.asarray(init, dtype), (keys, drive))
    return np.asarray(samples), np.asarray(rates)
