"""The shared JAX core: pure maths, no I/O. Every fit, in memory or on a Ray actor, runs here."""

from .fit import (
    STATUS_REASONS,
    BlockResult,
    ChunkSource,
    FitConfig,
    Params,
    WarmStart,
    default_init,
    fit_block,
    fit_streamed,
    predict_rate,
    state_leaves,
)
from .observations import (
    OBSERVATION_MODELS,
    BernoulliObservations,
    GammaObservations,
    GaussianObservations,
    NegativeBinomialObservations,
    Observations,
    PoissonObservations,
)
from .regularizers import REGULARIZERS, ElasticNet, GroupLasso, Lasso, Regularizer, Ridge, UnRegularized

__all__ = [
    "STATUS_REASONS",
    "BlockResult",
    "ChunkSource",
    "FitConfig",
    "Params",
    "WarmStart",
    "default_init",
    "fit_block",
    "fit_streamed",
    "predict_rate",
    "state_leaves",
    "OBSERVATION_MODELS",
    "Observations",
    "PoissonObservations",
    "GammaObservations",
    "BernoulliObservations",
    "GaussianObservations",
    "NegativeBinomialObservations",
    "REGULARIZERS",
    "Regularizer",
    "UnRegularized",
    "Ridge",
    "Lasso",
    "ElasticNet",
    "GroupLasso",
]
