"""Regularizers: penalties on the coefficients and their proximal operators.

Penalties follow NeMoS 0.2.8 and apply to the coefficients only (never to intercepts), are
not divided by the number of samples or neurons, and are separable across neurons, which is
what lets a population be fitted block by block.

Strengths are carried as arrays whose last axis is the neuron axis, so a block of neurons
takes its slice ``[..., start:stop]`` like every other per-neuron array:

- Ridge, Lasso: ``s`` of shape (n_features, n_neurons);
- ElasticNet: ``(s, r)``, each of shape (n_features, n_neurons);
- GroupLasso: ``s`` of shape (n_groups, n_neurons), with the group mask of shape
  (n_groups, n_features) held by the regularizer.
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

import jax
import jax.numpy as jnp
import numpy as np

from ..errors import InputError, InputTypeError

__all__ = [
    "Regularizer",
    "UnRegularized",
    "Ridge",
    "Lasso",
    "ElasticNet",
    "GroupLasso",
    "REGULARIZERS",
]

_SMOOTH_SOLVERS = ("GradientDescent", "BFGS", "LBFGS", "NonlinearCG", "ProximalGradient", "SVRG", "ProxSVRG")


def _soft_threshold(x, t):
    return jnp.sign(x) * jax.nn.relu(jnp.abs(x) - t)


def _as_float_array(value, what: str) -> np.ndarray:
    if isinstance(value, (str, bytes, dict)) or value is None:
        raise InputTypeError(f"{what} must be a number or an array of numbers; got {value!r}")
    try:
        arr = np.asarray(value, dtype=float)
    except (TypeError, ValueError) as err:
        raise InputTypeError(f"{what} must be a number or an array of numbers; got {value!r}") from err
    if not np.all(np.isfinite(arr)):
        raise InputError(f"{what} must be finite; got {value!r}")
    return arr


def _plain_strength(value, what: str, max_ndim: int):
    """None -> 1.0; a scalar -> float; an array of at most ``max_ndim`` dims -> float array."""
    if value is None:
        return 1.0
    if isinstance(value, tuple):
        raise InputTypeError(f"{what} must be a number or an array of numbers, not a tuple; got {value!r}")
    arr = _as_float_array(value, what)
    if arr.ndim == 0:
        return float(arr)
    if arr.ndim > max_ndim:
        raise InputError(f"{what} must have at most {max_ndim} dimensions; got shape {arr.shape}")
    return arr


def _broadcast_coef_shaped(value, n_features: int, n_neurons: int, what: str) -> np.ndarray:
    arr = _as_float_array(value, what)
    if arr.ndim == 0:
        return np.full((n_features, n_neurons), float(arr))
    if arr.shape != (n_features, n_neurons):
        raise InputError(
            f"{what} must be a scalar or an array of the coefficients' shape "
            f"({n_features}, {n_neurons}); got shape {arr.shape}"
        )
    return arr


@dataclasses.dataclass(frozen=True)
class Regularizer:
    """Base class: the unpenalised problem, solved by any solver."""

    name: ClassVar[str] = ""
    allowed_solvers: ClassVar[tuple[str, ...]] = _SMOOTH_SOLVERS
    default_solver: ClassVar[str] = "LBFGS"
    smooth: ClassVar[bool] = True

    def validate_strength(self, strength) -> Any:
        """Check a user strength without the data's shapes; return it as NeMoS stores it.

        None becomes the default strength (1.0; ``(1.0, 0.5)`` for ElasticNet), a scalar a float,
        an array a float array. The unpenalised model takes no strength: None.

        Raises
        ------
        InputTypeError, InputError
            If ``strength`` has a kind or a value this regularizer cannot use.
        """
        return None

    def expand_strength(self, strength, n_features: int, n_neurons: int) -> Any:
        """Validate a user strength and return it as per-neuron arrays (see module doc)."""
        return None

    def penalty(self, coef, strength):
        """Penalty per neuron, shape (n_neurons,), for ``coef`` of shape (n_features, n_neurons)."""
        return jnp.zeros(coef.shape[-1], dtype=coef.dtype)

    def prox(self, coef, strength, scaling):
        """Proximal operator of ``scaling * penalty`` applied to ``coef``."""
        return coef

    def ridge_diagonal(self, strength):
        """Curvature the penalty adds to each coefficient, shape (n_features, n_neurons), or None."""
        return None

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


@dataclasses.dataclass(frozen=True, repr=False)
class UnRegularized(Regularizer):
    """No penalty."""

    name: ClassVar[str] = "UnRegularized"


@dataclasses.dataclass(frozen=True, repr=False)
class Ridge(Regularizer):
    """L2 penalty ``0.5 * s * sum(coef**2)``."""

    name: ClassVar[str] = "Ridge"

    def validate_strength(self, strength):
        return _plain_strength(strength, "Ridge regularizer_strength", 2)

    def expand_strength(self, strength, n_features, n_neurons):
        return _broadcast_coef_shaped(1.0 if strength is None else strength, n_features, n_neurons,
                                      "Ridge regularizer_strength")

    def penalty(self, coef, strength):
        return 0.5 * jnp.sum(strength * coef**2, axis=0)

    def prox(self, coef, strength, scaling):
        return coef / (1.0 + scaling * strength)

    def ridge_diagonal(self, strength):
        return strength


@dataclasses.dataclass(frozen=True, repr=False)
class Lasso(Regularizer):
    """L1 penalty ``s * sum(|coef|)``."""

    name: ClassVar[str] = "Lasso"
    allowed_solvers: ClassVar[tuple[str, ...]] = ("ProximalGradient", "ProxSVRG")
    default_solver: ClassVar[str] = "ProximalGradient"
    smooth: ClassVar[bool] = False

    def validate_strength(self, strength):
        return _plain_strength(strength, "Lasso regularizer_strength", 2)

    def expand_strength(self, strength, n_features, n_neurons):
        return _broadcast_coef_shaped(1.0 if strength is None else strength, n_features, n_neurons,
                                      "Lasso regularizer_strength")

    def penalty(self, coef, strength):
        return jnp.sum(strength * jnp.abs(coef), axis=0)

    def prox(self, coef, strength, scaling):
        return _soft_threshold(coef, scaling * strength)


@dataclasses.dataclass(frozen=True, repr=False)
class ElasticNet(Regularizer):
    """Elastic net ``s * ((1 - r) * 0.5 * coef**2 + r * |coef|)`` with strength ``(s, r)``.

    A bare strength ``s`` means ``r = 0.5``; ``r`` must lie in (0, 1].
    """

    name: ClassVar[str] = "ElasticNet"
    allowed_solvers: ClassVar[tuple[str, ...]] = ("ProximalGradient", "ProxSVRG")
    default_solver: ClassVar[str] = "ProximalGradient"
    smooth: ClassVar[bool] = False

    @staticmethod
    def _split(strength):
        if strength is None:
            return 1.0, 0.5
        if isinstance(strength, tuple):
            if len(strength) != 2:
                raise InputTypeError(
                    f"ElasticNet regularizer_strength must be a tuple (strength, ratio); got {strength!r}"
                )
            return strength
        return strength, 0.5

    def validate_strength(self, strength):
        s, r = self._split(strength)
        s = _plain_strength(s, "ElasticNet strength", 2)
        r = _plain_strength(r, "ElasticNet ratio", 2)
        if np.any((np.asarray(r) <= 0) | (np.asarray(r) > 1)):
            raise InputError(f"ElasticNet ratio must lie in (0, 1]; got {r!r}")
        return (s, r)

    def expand_strength(self, strength, n_features, n_neurons):
        s, r = self.validate_strength(strength)
        return (_broadcast_coef_shaped(s, n_features, n_neurons, "ElasticNet strength"),
                _broadcast_coef_shaped(r, n_features, n_neurons, "ElasticNet ratio"))

    def penalty(self, coef, strength):
        s, r = strength
        return jnp.sum(s * ((1.0 - r) * 0.5 * coef**2 + r * jnp.abs(coef)), axis=0)

    def prox(self, coef, strength, scaling):
        s, r = strength
        return _soft_threshold(coef, scaling * s * r) / (1.0 + scaling * s * (1.0 - r))


@dataclasses.dataclass(frozen=True, repr=False, eq=False)
class GroupLasso(Regularizer):
    """Group lasso ``sum_g s_g * sqrt(|g|) * ||coef_g||_2`` for each neuron.

    Parameters
    ----------
    mask : array-like of 0/1, shape (n_groups, n_features), optional
        Row ``g`` marks the features of group ``g``; each feature in at most one group.
        Features in no group are not penalised. Default: all features in one group.
    """

    mask: Any = None
    name: ClassVar[str] = "GroupLasso"
    allowed_solvers: ClassVar[tuple[str, ...]] = ("ProximalGradient", "ProxSVRG")
    default_solver: ClassVar[str] = "ProximalGradient"
    smooth: ClassVar[bool] = False

    def __post_init__(self):
        if self.mask is None:
            return
        mask = _as_float_array(self.mask, "GroupLasso mask")
        if mask.ndim != 2:
            raise InputError(f"GroupLasso mask must be 2-D of shape (n_groups, n_features); got shape {mask.shape}")
        if mask.shape[0] == 0 or not np.any(mask):
            raise InputError("GroupLasso mask is empty: no feature belongs to any group")
        if np.any((mask != 0) & (mask != 1)):
            raise InputError(f"GroupLasso mask must hold only 0s and 1s; got values {np.unique(mask)}")
        if np.any(mask.sum(axis=0) > 1):
            raise InputError("GroupLasso mask assigns some features to more than one group")
        object.__setattr__(self, "mask", mask)

    def __eq__(self, other):
        if type(other) is not GroupLasso:
            return NotImplemented
        if self.mask is None or other.mask is None:
            return self.mask is None and other.mask is None
        return self.mask.shape == other.mask.shape and bool(np.all(self.mask == other.mask))

    def __hash__(self):
        return hash(None if self.mask is None else (self.mask.shape, self.mask.tobytes()))

    def group_mask(self, n_features: int) -> np.ndarray:
        """The group mask, shape (n_groups, n_features), checked against ``n_features``."""
        if self.mask is None:
            return np.ones((1, n_features))
        if self.mask.shape[1] != n_features:
            raise InputError(
                f"GroupLasso mask has {self.mask.shape[1]} feature columns but X has {n_features} features"
            )
        return self.mask

    def validate_strength(self, strength):
        return _plain_strength(strength, "GroupLasso regularizer_strength (one per group)", 1)

    def expand_strength(self, strength, n_features, n_neurons):
        n_groups = self.group_mask(n_features).shape[0]
        arr = _as_float_array(1.0 if strength is None else strength, "GroupLasso regularizer_strength")
        if arr.ndim == 0:
            arr = np.full(n_groups, float(arr))
        if arr.shape != (n_groups,):
            raise InputError(
                f"GroupLasso regularizer_strength must be a scalar or of shape ({n_groups},) (one per group); "
                f"got shape {arr.shape}"
            )
        return np.repeat(arr[:, None], n_neurons, axis=1)

    def _group_norms(self, coef, gmask):
        # (n_groups, n_neurons): L2 norm of each group's coefficients, neuron by neuron
        return jnp.sqrt(jnp.einsum("gf,fn->gn", gmask, coef**2))

    def penalty(self, coef, strength):
        gmask = jnp.asarray(self.group_mask(coef.shape[0]), dtype=coef.dtype)
        size = jnp.sqrt(gmask.sum(axis=1))[:, None]
        return jnp.sum(strength * size * self._group_norms(coef, gmask), axis=0)

    def prox(self, coef, strength, scaling):
        gmask = jnp.asarray(self.group_mask(coef.shape[0]), dtype=coef.dtype)
        size = jnp.sqrt(gmask.sum(axis=1))[:, None]
        norms = self._group_norms(coef, gmask)
        safe = jnp.where(norms > 0, norms, 1.0)
        factor = jnp.where(norms > 0, jax.nn.relu(1.0 - scaling * strength * size / safe), 0.0)
        in_group = gmask.sum(axis=0) > 0
        return jnp.where(in_group[:, None], coef * (gmask.T @ factor), coef)

    def __repr__(self) -> str:
        return "GroupLasso()" if self.mask is None else f"GroupLasso(mask of shape {self.mask.shape})"


REGULARIZERS: dict[str, type[Regularizer]] = {
    cls.name: cls for cls in (UnRegularized, Ridge, Lasso, ElasticNet, GroupLasso)
}
