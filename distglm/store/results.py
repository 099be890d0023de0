"""The results of a fit: per-neuron arrays, solver state and verified done markers.

``create_results`` makes every array before any block is written and writes the fingerprint
(the description of the fit) last; replacing results removes the fingerprint first, so an
interrupted replacement reads as "no results" rather than as the old fit. A block's done marker,
``results/done[id] = (checksum, start, stop)``, is written after the block's data, and the
checksum covers that data and the fingerprint: :func:`done_blocks` recomputes it, so a marker
over missing chunks, half-written data or data of another fit is not taken for a done block.

A store holds one unnamed fit in ``results/`` and any number of named fits, each in its own
group ``results/<name>/`` laid out the same way, with its own fingerprint and done markers:
replacing or deleting one fit leaves the others as they are.
"""

from __future__ import annotations

import hashlib
import json
import re

import numpy as np
import zarr

from distglm.errors import InputError, InputTypeError, PlanError, StoreError
from distglm.plan import Block, _check_int

from . import _zarr
from ._zarr import as_path, open_group

__all__ = [
    "RESULT_NAMES",
    "STATUS_UNWRITTEN",
    "create_results",
    "discard_results",
    "ResultsWriter",
    "write_block",
    "done_blocks",
    "read_results",
    "read_state",
    "read_fingerprint",
    "results_group",
    "fit_names",
    "discard_all_results",
    "HELDOUT_NAMES",
    "SE_NAMES",
    "CV_NAMES",
    "CV_PATH_NAMES",
    "cv_path_done_blocks",
]

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
#: Per-neuron held-out scores of a fit that held samples out, by NeMoS score type.
HELDOUT_NAMES = {
    "log-likelihood": "heldout_log_likelihood",
    "pseudo-r2-McFadden": "heldout_pseudo_r2_mcfadden",
    "pseudo-r2-Cohen": "heldout_pseudo_r2_cohen",
}
#: Standard errors of a fit that computed them: ``coef_se`` shaped as ``coef``, ``intercept_se``.
SE_NAMES = ("coef_se", "intercept_se")
#: Cross-validation results of a fit that selected its strengths (``cv_null_terms`` only for the pseudo-R2
#: scores): held-out score terms and fit status of shape (n_strengths, n_folds, n_neurons), each neuron's
#: selected index into the candidates and its strength.
CV_NAMES = ("cv_model_terms", "cv_null_terms", "cv_status", "cv_index", "cv_strength")
#: The path arrays of :data:`CV_NAMES`, of shape (n_strengths, n_folds, n_neurons).
CV_PATH_NAMES = ("cv_model_terms", "cv_null_terms", "cv_status")
#: ``results/status`` of a neuron whose block was never written.
STATUS_UNWRITTEN = -1
# Result arrays whose dtype does not follow the fit's float dtype, with their fill values.
_FIXED_RESULTS = {
    "n_iter": (np.dtype("int32"), 0),
    "converged": (np.dtype("bool"), False),
    "status": (np.dtype("int8"), STATUS_UNWRITTEN),
    "cv_status": (np.dtype("int8"), STATUS_UNWRITTEN),
    "cv_index": (np.dtype("int32"), -1),
}
# What each result array holds, for readers of the store who never read distglm's code.
_DESCRIPTIONS = {
    "coef": {"long_name": "coefficients", "description": "weight of each feature in each neuron's linear "
             "predictor; 0 where the feature mask excludes the feature"},
    "intercept": {"long_name": "intercept", "description": "constant term of each neuron's linear predictor"},
    "scale": {"long_name": "scale", "description": "estimated scale (dispersion) of each neuron's "
              "observation model"},
    "dof_resid": {"long_name": "residual degrees of freedom", "units": "1"},
    "loss": {"long_name": "final objective", "description": "mean negative log-likelihood per time bin "
             "plus the penalty, at the solution"},
    "grad_norm": {"long_name": "gradient norm", "description": "norm of the objective's gradient at the "
                  "solution, the solver's stopping measure"},
    "n_iter": {"long_name": "solver iterations", "units": "1"},
    "converged": {"long_name": "converged", "description": "whether the solver met its tolerance"},
    "done": {"long_name": "block done markers", "description": "per block: checksum of its results (0 "
             "until the block is written), first neuron, one past the last neuron"},
    "cv_done": {"long_name": "block path markers", "description": "per block: checksum of its "
                "cross-validation path (0 until written), first neuron, one past the last neuron"},
    "cv_model_terms": {"long_name": "held-out score terms", "description": "per candidate strength and fold: "
                       "mean over the fold's held-out samples of the model's score terms"},
    "cv_null_terms": {"long_name": "held-out null score terms", "description": "the same for the null model "
                      "(pseudo-R2 scores)"},
    "cv_index": {"long_name": "selected candidate", "description": "index of the selected strength among the "
                 "candidates, largest first"},
    "cv_strength": {"long_name": "selected regularizer strength"},
}
# Dimensions of the per-neuron arrays other than (neuron,).
_DIMENSIONS = {"coef": ("feature", "neuron"), "coef_se": ("feature", "neuron"),
               "cv_model_terms": ("strength", "fold", "neuron"), "cv_null_terms": ("strength", "fold", "neuron"),
               "cv_status": ("strength", "fold", "neuron")}


# What a fit's group holds: a named fit's group beside them must not take one of these names.
_RESERVED = (frozenset(RESULT_NAMES) | frozenset(HELDOUT_NAMES.values()) | frozenset(SE_NAMES) | frozenset(CV_NAMES)
             | {"done", "cv_done", "solver_state", "feature", "neuron"})
_NAME_CHARS = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


def results_group(name=None) -> str:
    """The group of a fit's results in the store: ``"results"``, or ``"results/<name>"`` for a named fit.

    Names are letters, digits, ``.``, ``_`` and ``-`` (starting with a letter or digit), other
    than the names of a fit's own arrays.

    Examples
    --------
    >>> results_group(), results_group("ridge-cv")
    ('results', 'results/ridge-cv')
    """
    if name is None:
        return "results"
    if not isinstance(name, str):
        raise InputTypeError(f"a fit's name must be a str or None; got {type(name).__name__}")
    if not _NAME_CHARS.fullmatch(name) or name in _RESERVED:
        raise InputError(f"a fit's name must be letters, digits, '.', '_' or '-', starting with a letter or digit, "
                         f"and not one of {sorted(_RESERVED)}; got {name!r}")
    return f"results/{name}"


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


def _fit_label(name) -> str:
    return "results" if name is None else f"results of the fit {name!r}"


def _results(path: str, mode: str, name=None) -> zarr.Group:
    root = open_group(path, mode)
    results = _zarr.node(root, results_group(name), path)
    if results is None:
        raise StoreError(f"{path} holds no {_fit_label(name)}; a fit creates them with create_results")
    # create_results writes the fingerprint last: without it some arrays may be missing.
    if "fingerprint" not in results.attrs:
        raise StoreError(f"{path} holds {_fit_label(name)} that were not completely created; "
                         "run the fit again to create them anew")
    return results


_COEF_SHAPED = ("coef", "coef_se")


def _check_cv(cv) -> dict | None:
    if cv is None:
        return None
    if not isinstance(cv, dict) or set(cv) != {"n_strengths", "n_folds", "null", "pooled"}:
        raise InputTypeError("cv must be None or a dict with keys 'n_strengths', 'n_folds', 'null', 'pooled'; "
                             f"got {cv!r}")
    for flag in ("null", "pooled"):
        if not isinstance(cv[flag], bool):
            raise InputTypeError(f"cv[{flag!r}] must be a bool; got {cv[flag]!r}")
    return {"n_strengths": _check_int(cv["n_strengths"], "cv['n_strengths']", minimum=1),
            "n_folds": _check_int(cv["n_folds"], "cv['n_folds']", minimum=1), "null": cv["null"],
            "pooled": cv["pooled"]}


def _extra_names(heldout: bool, standard_errors: bool, cv: dict | None = None) -> tuple[str, ...]:
    cv_names = () if cv is None else tuple(name for name in CV_NAMES if cv["null"] or name != "cv_null_terms")
    return (tuple(HELDOUT_NAMES.values()) if heldout else ()) + (SE_NAMES if standard_errors else ()) + cv_names


def _names(results: zarr.Group) -> tuple[str, ...]:
    """The per-neuron arrays of a fit: :data:`RESULT_NAMES`, then the held-out scores, the standard
    errors and the cross-validation results if it has them."""
    return RESULT_NAMES + _extra_names(bool(results.attrs.get("heldout")), bool(results.attrs.get("standard_errors")),
                                       results.attrs.get("cv"))


def _leading_shape(name: str, n_features: int, cv: dict | None) -> tuple[int, ...]:
    """The shape of a per-neuron array before its neuron axis."""
    if name in _COEF_SHAPED:
        return (n_features,)
    if name in CV_PATH_NAMES:
        return (cv["n_strengths"], cv["n_folds"])
    return ()


def _result_array(results: zarr.Group, name: str, path: str) -> zarr.Array:
    return _zarr.array(results, name, path, "the results are incomplete: refit with resume=False "
                                            "(distglm fit PATH --no-resume)")


def _layout_differences(results, n_features, n_neurons, neuron_chunk, n_blocks, dtype, spec, heldout,
                        standard_errors, cv, path):
    coef, done = _result_array(results, "coef", path), _result_array(results, "done", path)
    expected = {
        "coef shape": (coef.shape, (n_features, n_neurons)),
        "dtype": (np.dtype(coef.dtype), dtype),
        "number of blocks": (done.shape, (n_blocks, 3)),
        "state_spec": (results.attrs.get("state_spec"), spec),
        "held-out scores": (bool(results.attrs.get("heldout")), heldout),
        "standard errors": (bool(results.attrs.get("standard_errors")), standard_errors),
        "cross-validation": (results.attrs.get("cv"), cv),
    }
    differences = [
        f"{key} {got} instead of {want}" for key, (got, want) in expected.items() if got != want
    ]
    # blocks aligned with the new chunk are aligned with any chunk that divides it
    if neuron_chunk % _zarr.neuron_chunk(coef):
        differences.append(f"neuron chunk {_zarr.neuron_chunk(coef)}, which does not divide {neuron_chunk}")
    return differences


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
    name=None,
    heldout=False,
    standard_errors=False,
    cv=None,
    attributes=None,
    status_meanings=None,
    extra_features=None,
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
        The scheduler passes its block size, so that a block writes one chunk of each array.
        Results kept to resume may have a smaller chunk that divides it (blocks still align).
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
    name : str, optional
        The fit's name: its results go to ``results/<name>/`` (see :func:`results_group`), beside
        the store's other fits, which are left as they are. None: the unnamed fit, ``results/``.
    heldout : bool, optional
        Whether the fit held samples out: then its blocks also write each neuron's held-out
        scores (:data:`HELDOUT_NAMES`, NaN until written), covered by the done markers too.
    standard_errors : bool, optional
        Whether its blocks also write standard errors (:data:`SE_NAMES`), likewise.
    cv : dict, optional
        For a fit that selects its strengths by cross-validation, ``{"n_strengths": int,
        "n_folds": int, "null": bool, "pooled": bool}``: its blocks also write :data:`CV_NAMES`
        (``cv_null_terms`` only with ``null``), the path arrays of shape (n_strengths, n_folds,
        n_neurons), likewise. With ``pooled`` (one strength selected from every block's scores),
        the path arrays are written first, each block marked in ``cv_done`` as ``done`` marks a
        block (see :meth:`ResultsWriter.write_path`), and the whole block again with the refit.
    attributes : dict, optional
        JSON-serialisable attributes of the ``results`` group (the model, software versions), for
        readers; the fingerprint alone decides whether results are resumed.
    extra_features : sequence of str, optional
        Names of the fitted features after the stored X's columns (features the actors build,
        such as history features): the last ``len(extra_features)`` of the ``n_features``.
    status_meanings : dict of int to str, optional
        Meaning of each ``status`` code, one word each (``"not_converged"``), recorded as CF
        ``flag_values``/``flag_meanings``; :data:`STATUS_UNWRITTEN` is always ``"unwritten"``.

    Every array names its dimensions (``feature``, ``neuron``, ``block``) and the store's neuron
    ids and feature names (:func:`~distglm.store.read_coordinates`) are copied beside them, so
    ``xarray.open_zarr(path, group="results")`` opens the results as a labelled Dataset.

    Raises
    ------
    StoreError
        If the store holds results of a different fit (or layout) and ``overwrite`` is False.

    Examples
    --------
    >>> import tempfile, numpy as np
    >>> from distglm.store import write_inputs
    >>> path = write_inputs(tempfile.mkdtemp() + "/fit.zarr", np.ones((5, 2)), np.ones((5, 3)))
    >>> create_results(path, n_features=2, n_neurons=3, neuron_chunk=3, n_blocks=1,
    ...                dtype="float64", state_spec={"stepsize": ((), "float64", False)},
    ...                fingerprint={"model": "poisson"})
    >>> read_fingerprint(path), done_blocks(path)
    ({'model': 'poisson'}, set())
    """
    path = as_path(path)
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
    fingerprint = _zarr.json_like(fingerprint, "fingerprint")
    for flag, value in (("overwrite", overwrite), ("heldout", heldout), ("standard_errors", standard_errors)):
        if not isinstance(value, bool):
            raise InputTypeError(f"{flag} must be a bool; got {type(value).__name__}")
    cv = _check_cv(cv)
    group = results_group(name)
    attributes = _zarr.json_like({} if attributes is None else attributes, "attributes")
    if not isinstance(attributes, dict) or {"fingerprint", "state_spec"} & set(attributes):
        raise InputError(f"attributes must be a dict without the keys fingerprint and state_spec; got {attributes!r}")
    flags = _status_flags(status_meanings)

    root = open_group(path, "r+")
    results = _zarr.node(root, group, path)
    if results is not None:
        stored = results.attrs.get("fingerprint")
        if stored is not None and not overwrite:
            if stored != fingerprint:
                keys = sorted(
                    key for key in set(stored) | set(fingerprint)
                    if stored.get(key) != fingerprint.get(key)
                )
                raise StoreError(
                    f"{path} holds {_fit_label(name)} of a different fit (fingerprint differs in {keys}); "
                    "pass resume=False to replace them"
                )
            differences = _layout_differences(
                results, n_features, n_neurons, neuron_chunk, n_blocks, dtype, spec, heldout, standard_errors, cv, path
            )
            if differences:
                raise StoreError(
                    f"{path} holds {_fit_label(name)} of this fit laid out differently "
                    f"({'; '.join(differences)}); pass resume=False to replace them"
                )
            return
    # also when no results group is there: an interrupted delete may have left arrays without it
    discard_results(root, name)

    results = root.require_group("results")
    if name is not None:
        results = results.create_group(name)
    results.attrs.update(attributes)
    _copy_coordinates(root, results, n_features, n_neurons, path, extra_features)
    names = RESULT_NAMES + _extra_names(heldout, standard_errors, cv)
    per_neuron = {name: _FIXED_RESULTS.get(name, (dtype, np.nan)) for name in names}
    for name, (array_dtype, fill) in per_neuron.items():
        shape = _leading_shape(name, n_features, cv) + (n_neurons,)
        results.create_array(
            name, shape=shape, dtype=array_dtype, fill_value=fill,
            chunks=shape[:-1] + (neuron_chunk,),
            dimension_names=_DIMENSIONS.get(name, ("neuron",)),
            attributes=(flags if name in ("status", "cv_status")
                        else _DESCRIPTIONS.get(name, {"long_name": name.replace("_", " ")})),
        )
    # (checksum, start, stop) per block, each block's row one chunk: written in one put.
    for marker in ("done", "cv_done") if cv is not None and cv["pooled"] else ("done",):
        results.create_array(marker, shape=(n_blocks, 3), dtype=np.uint64, chunks=(1, 3), fill_value=0,
                             dimension_names=("block", "marker"), attributes=_DESCRIPTIONS[marker])
    state = results.create_group("solver_state")
    for name, (shape, state_dtype, is_per_neuron) in spec.items():
        # Zarr refuses zero-length chunks, so an empty dimension gets a chunk of one.
        chunk_shape = tuple(max(1, n) for n in shape)
        inner = tuple(f"{name}_{axis}" for axis in range(len(shape)))
        if is_per_neuron:
            full, chunks, dimensions = (*shape, n_neurons), (*chunk_shape, neuron_chunk), (*inner, "neuron")
        else:
            full, chunks, dimensions = (n_blocks, *shape), (1, *chunk_shape), ("block", *inner)
        state.create_array(name, shape=full, dtype=state_dtype, chunks=chunks, fill_value=0,
                           dimension_names=dimensions, attributes={"long_name": f"solver state: {name}"})
    results.attrs["state_spec"] = spec
    results.attrs["heldout"] = heldout
    results.attrs["standard_errors"] = standard_errors
    results.attrs["cv"] = cv
    results.attrs["fingerprint"] = fingerprint


def _status_flags(status_meanings) -> dict:
    """The ``status`` array's attributes: CF flag values and one-word meanings."""
    meanings = {STATUS_UNWRITTEN: "unwritten"}
    if status_meanings is not None:
        if not isinstance(status_meanings, dict):
            raise InputTypeError(f"status_meanings must be a dict of int to str; got {type(status_meanings).__name__}")
        for code, meaning in status_meanings.items():
            if not isinstance(meaning, str) or not meaning or any(c.isspace() for c in meaning):
                raise InputError(f"status_meanings[{code!r}] must be one word (CF flag_meanings are "
                                 f"space-separated); got {meaning!r}")
            meanings[_check_int(code, "status code", minimum=-128)] = meaning
    return {"long_name": "fit status", "description": "outcome of each neuron's fit",
            "flag_values": sorted(meanings), "flag_meanings": " ".join(meanings[c] for c in sorted(meanings))}


def _copy_coordinates(root: zarr.Group, results: zarr.Group, n_features: int, n_neurons: int, path: str,
                      extra_features=None) -> None:
    """Copy the inputs' feature names and neuron ids beside the results (positions if they have none),
    the stored features' names followed by ``extra_features``, as strings, when there are any."""
    inputs = _zarr.node(root, "inputs", path)
    extra = [] if extra_features is None else [str(name) for name in extra_features]
    for name, length, long_name in (("feature", n_features - len(extra), "feature (column of X)"),
                                    ("neuron", n_neurons, "neuron id")):
        found = None if inputs is None else _zarr.labels(inputs, name, path, length)
        values = np.arange(length) if found is None else found
        if name == "feature" and extra:
            values = np.array([str(v) for v in values] + extra)
        _zarr.write_coordinate(results, name, values, {"long_name": long_name})


class ResultsWriter:
    """Writes blocks into a store's results, holding the result arrays open between blocks.

    An actor keeps one for the whole fit, so each block costs only its chunk writes, not the
    opening of a dozen arrays.

    Parameters
    ----------
    path : str or os.PathLike
        Local directory or URL of the Zarr group, with results made by :func:`create_results`.

    Raises
    ------
    StoreError
        If the store holds no (completely created) results.
    """

    def __init__(self, path, name=None):
        self.path = as_path(path)
        results = _results(self.path, "r+", name)
        self._fingerprint = results.attrs["fingerprint"]
        self._spec = results.attrs["state_spec"]
        self._names = _names(results)
        self._cv = results.attrs.get("cv")
        self._arrays = {("arrays", name): _result_array(results, name, self.path) for name in self._names}
        self._arrays.update({("state", name): _result_array(results, f"solver_state/{name}", self.path)
                             for name in self._spec})
        self._done = _result_array(results, "done", self.path)
        self._cv_done = (_result_array(results, "cv_done", self.path)
                         if self._cv is not None and self._cv["pooled"] else None)
        self._n_features, self._n_neurons = self._arrays[("arrays", "coef")].shape
        self._neuron_chunk = _zarr.neuron_chunk(self._arrays[("arrays", "coef")])

    def _check(self, block, arrays: dict, state: dict, path_only: bool = False) -> tuple[Block, dict]:
        try:
            block = Block(*block)
        except TypeError:
            raise InputTypeError(f"block must be a Block(id, start, stop); got {block!r}") from None
        block = Block(*(_check_int(value, f"block.{field}") for field, value in zip(Block._fields, block)))
        for name, value in (("arrays", arrays), ("state", state)):
            if not isinstance(value, dict):
                raise InputTypeError(f"{name} must be a dict of name -> array; got {type(value).__name__}")
        n_blocks, chunk = self._done.shape[0], self._neuron_chunk
        if not (0 <= block.id < n_blocks and 0 <= block.start < block.stop <= self._n_neurons):
            raise PlanError(f"{block} is out of range: the results hold {n_blocks} blocks "
                            f"of {self._n_neurons} neurons")
        if block.start % chunk or (block.stop % chunk and block.stop != self._n_neurons):
            raise PlanError(f"{block} is not aligned with the results' neuron chunk {chunk}: it would "
                            "share a chunk with another block")
        names = [name for name in self._names if name in CV_PATH_NAMES] if path_only else self._names
        shapes = {("arrays", name): _leading_shape(name, self._n_features, self._cv) + (block.size,)
                  for name in names}
        if not path_only:
            shapes.update({("state", name): tuple(shape) + (block.size,) if per_neuron else tuple(shape)
                           for name, (shape, _, per_neuron) in self._spec.items()})
        values = {}
        for what, given in (("arrays", arrays), ("state", state)):
            wanted = [name for kind, name in shapes if kind == what]
            missing = [name for name in wanted if name not in given]
            extra = [name for name in given if name not in wanted]
            if missing or extra:
                raise InputError(f"{what} must have the keys {wanted}; missing {missing}, unexpected {extra}")
        for (what, name), shape in shapes.items():
            value = np.asarray((arrays if what == "arrays" else state)[name])
            if value.shape != shape:
                raise InputError(f"{what}[{name!r}] for {block} must have shape {shape}; got shape {value.shape}")
            # Cast now, so that the checksum covers the bytes the store will hold.
            values[(what, name)] = value.astype(self._arrays[(what, name)].dtype, copy=False)
        return block, values

    def write(self, block, arrays: dict, state: dict) -> None:
        """Write one block's results and solver state, then mark the block done.

        See :func:`write_block` for the arguments.
        """
        block, values = self._check(block, arrays, state)
        for (what, name), value in values.items():
            if what == "state" and not self._spec[name][2]:
                self._arrays[(what, name)][block.id] = value
            else:
                self._arrays[(what, name)][..., block.start:block.stop] = value
        # Last, so that a block marked done is a block completely written; the checksum lets
        # readers check that claim against the data.
        checksum = _checksum(self._fingerprint, block, values)
        self._done[block.id] = np.array([checksum, block.start, block.stop], dtype=np.uint64)

    def write_path(self, block, arrays: dict) -> None:
        """Write one block's cross-validation path (first phase of a pooled selection), then mark it in ``cv_done``.

        ``arrays`` holds exactly the path arrays of the fit (``cv_model_terms``, ``cv_status``,
        and ``cv_null_terms`` for the pseudo-R2 scores), each of shape (n_strengths, n_folds,
        block.size). The block's refit later writes them again, with the same bytes, together
        with its other results.
        """
        if self._cv is None or not self._cv["pooled"]:
            raise StoreError(f"{self.path}: these results select no pooled strength; a block's cross-validation path "
                             "is written with its other results by write")
        block, values = self._check(block, arrays, {}, path_only=True)
        for (_, name), value in values.items():
            self._arrays[("arrays", name)][..., block.start:block.stop] = value
        checksum = _checksum(self._fingerprint, block, values)
        self._cv_done[block.id] = np.array([checksum, block.start, block.stop], dtype=np.uint64)


def write_block(path, block, arrays: dict, state: dict, name=None) -> None:
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
        Every name of :data:`RESULT_NAMES` (and of :data:`HELDOUT_NAMES` for results created with
        ``heldout=True``), trimmed to the block's real size: ``coef`` of shape
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
    >>> from distglm.store import write_inputs
    >>> path = write_inputs(tempfile.mkdtemp() + "/fit.zarr", np.ones((5, 2)), np.ones((5, 3)))
    >>> create_results(path, n_features=2, n_neurons=3, neuron_chunk=3, n_blocks=1,
    ...                dtype="float64", state_spec={}, fingerprint={})
    >>> arrays = {name: np.zeros((3,)) for name in RESULT_NAMES} | {"coef": np.ones((2, 3))}
    >>> write_block(path, Block(0, 0, 3), arrays, {})
    >>> done_blocks(path), read_results(path)["coef"].sum()
    ({0}, np.float64(6.0))
    """
    ResultsWriter(path, name).write(block, arrays, state)


def _checksum(fingerprint: dict, block: Block, values: dict) -> int:
    """A nonzero 63-bit checksum of a block's results and of the fit they belong to."""
    digest = hashlib.blake2b(digest_size=8)
    digest.update(json.dumps(fingerprint, sort_keys=True).encode())
    digest.update(np.asarray(block, dtype=np.int64).tobytes())
    for (what, name), value in sorted(values.items()):
        value = np.ascontiguousarray(value)
        digest.update(f"{what}/{name}:{value.dtype.str}:{value.shape}".encode())
        digest.update(value.tobytes())
    return (int.from_bytes(digest.digest(), "little") >> 1) | 1


def _drop_fingerprint(root: zarr.Group, group: str) -> None:
    try:
        results = root[group]
    except Exception:  # noqa: BLE001 - absent or damaged: there is no fingerprint to remove first
        results = None
    if isinstance(results, zarr.Group) and "fingerprint" in results.attrs:
        results.attrs.pop("fingerprint")


def discard_results(root: zarr.Group, name=None) -> None:
    """Delete one fit's results so that an interruption at any point leaves no results of it behind.

    The fingerprint goes first: results without one are "not completely created", which every
    reader refuses and every fit recreates, whatever of the arrays was deleted by then. The
    unnamed fit's arrays are deleted one by one, leaving the named fits beside them.
    """
    group = results_group(name)
    _drop_fingerprint(root, group)
    if name is not None:
        _zarr.delete_node(root, group)
        return
    if not fit_names_in(root):
        _zarr.delete_node(root, group)
        return
    for member in sorted(_RESERVED):
        _zarr.delete_node(root, f"{group}/{member}")
    results = root[group]
    for key in ("state_spec", "title", "model", "software"):
        if key in results.attrs:
            results.attrs.pop(key)


def discard_all_results(root: zarr.Group) -> None:
    """Delete every fit's results, named or not, each fingerprint first (see :func:`discard_results`)."""
    for name in fit_names_in(root):
        _drop_fingerprint(root, results_group(name))
    _drop_fingerprint(root, "results")
    _zarr.delete_node(root, "results")


def fit_names_in(root: zarr.Group) -> list[str]:
    """Names of the named fits whose groups are in ``root``'s ``results`` (complete or not), sorted."""
    try:
        results = root["results"]
    except Exception:  # noqa: BLE001 - absent or damaged: no named fit can be listed
        return []
    if not isinstance(results, zarr.Group):
        return []
    return sorted(key for key, node in results.members() if isinstance(node, zarr.Group) and key not in _RESERVED)


def fit_names(path) -> list:
    """The fits in a store with results: None for the unnamed fit (``results/``), then the names, sorted.

    A fit whose results were not completely created (no fingerprint) is not listed.

    Examples
    --------
    >>> import tempfile, numpy as np
    >>> from distglm.store import write_inputs
    >>> path = write_inputs(tempfile.mkdtemp() + "/fit.zarr", np.ones((5, 2)), np.ones((5, 3)))
    >>> for name in (None, "ridge"):
    ...     create_results(path, n_features=2, n_neurons=3, neuron_chunk=3, n_blocks=1,
    ...                    dtype="float64", state_spec={}, fingerprint={}, name=name)
    >>> fit_names(path)
    [None, 'ridge']
    """
    path = as_path(path)
    root = open_group(path, "r")
    names = [None] + fit_names_in(root)
    return [name for name in names if read_fingerprint(path, name) is not None]


def done_blocks(path, name=None) -> set[int]:
    """Return the ids of the blocks whose results are completely written, checked against them.

    A block counts as done only if its marker's checksum matches the block's results and
    solver state as the store now holds them, and the fingerprint of the fit; a marker over
    missing or altered chunks, or left by another fit, does not count.

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
    >>> from distglm.store import write_inputs
    >>> path = write_inputs(tempfile.mkdtemp() + "/fit.zarr", np.ones((5, 2)), np.ones((5, 3)))
    >>> create_results(path, n_features=2, n_neurons=3, neuron_chunk=3, n_blocks=1,
    ...                dtype="float32", state_spec={}, fingerprint={})
    >>> done_blocks(path)
    set()
    """
    return _verified_blocks(as_path(path), name, "done")


def cv_path_done_blocks(path, name=None) -> set[int]:
    """The ids of the blocks whose cross-validation path is written (``cv_done``), checked against it.

    Only for the results of a pooled selection (``create_results(..., cv={..., "pooled": True})``),
    whose blocks write their path first (:meth:`ResultsWriter.write_path`).

    Examples
    --------
    >>> import tempfile, numpy as np
    >>> from distglm.store import write_inputs
    >>> path = write_inputs(tempfile.mkdtemp() + "/fit.zarr", np.ones((5, 2)), np.ones((5, 3)))
    >>> create_results(path, n_features=2, n_neurons=3, neuron_chunk=3, n_blocks=1, dtype="float64",
    ...                state_spec={}, fingerprint={}, cv={"n_strengths": 2, "n_folds": 2, "null": False,
    ...                                                   "pooled": True})
    >>> ResultsWriter(path).write_path(Block(0, 0, 3), {"cv_model_terms": np.zeros((2, 2, 3)),
    ...                                                 "cv_status": np.zeros((2, 2, 3), np.int8)})
    >>> cv_path_done_blocks(path), done_blocks(path)
    ({0}, set())
    """
    path = as_path(path)
    cv = _results(path, "r", name).attrs.get("cv")
    if cv is None or not cv["pooled"]:
        raise StoreError(f"{path} holds {_fit_label(name)} without a pooled cross-validation (no cv_done markers)")
    return _verified_blocks(path, name, "cv_done")


def _verified_blocks(path: str, name, marker: str) -> set[int]:
    """Blocks whose ``marker`` (``done``: every array; ``cv_done``: the path arrays) checksum matches the data."""
    results = _results(path, "r", name)
    group = results_group(name)
    markers = _zarr.read(_result_array(results, marker, path), Ellipsis, f"{group}/{marker}", path)
    if markers.ndim != 2:
        raise StoreError(f"{path}: the results were written by an older distglm, whose done markers cannot be "
                         "checked against the data; refit with resume=False (distglm fit PATH --no-resume)")
    candidates = [int(i) for i in np.flatnonzero(markers[:, 0])]
    if not candidates:
        return set()
    path_only = marker == "cv_done"
    spec = {} if path_only else results.attrs["state_spec"]
    names = [key for key in _names(results) if not path_only or key in CV_PATH_NAMES]
    arrays = {key: _zarr.read(_result_array(results, key, path), Ellipsis, f"{group}/{key}", path)
              for key in names}
    state = {key: _zarr.read(_result_array(results, f"solver_state/{key}", path), Ellipsis,
                             f"{group}/solver_state/{key}", path) for key in spec}
    n_neurons = _result_array(results, "coef", path).shape[-1]
    done = set()
    for block_id in candidates:
        checksum, start, stop = (int(v) for v in markers[block_id])
        if not 0 <= start < stop <= n_neurons:
            continue
        block = Block(block_id, start, stop)
        values = {("arrays", key): value[..., start:stop] for key, value in arrays.items()}
        for key, (_, _, per_neuron) in spec.items():
            values[("state", key)] = state[key][..., start:stop] if per_neuron else state[key][block_id]
        if _checksum(results.attrs["fingerprint"], block, values) == checksum:
            done.add(block_id)
    return done


def read_results(path, start=0, stop=None, name=None) -> dict[str, np.ndarray]:
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
        Keyed by :data:`RESULT_NAMES` (and :data:`HELDOUT_NAMES`' values for results created with
        ``heldout=True``): ``coef`` of shape (n_features, stop - start), the others
        of shape (stop - start,). Neurons of blocks not yet written read NaN, 0, False and
        :data:`STATUS_UNWRITTEN`.

    Examples
    --------
    >>> import tempfile, numpy as np
    >>> from distglm.store import write_inputs
    >>> path = write_inputs(tempfile.mkdtemp() + "/fit.zarr", np.ones((5, 2)), np.ones((5, 3)))
    >>> create_results(path, n_features=2, n_neurons=3, neuron_chunk=3, n_blocks=1,
    ...                dtype="float64", state_spec={}, fingerprint={})
    >>> read_results(path, 1)["status"]
    array([-1, -1], dtype=int8)
    """
    path = as_path(path)
    results = _results(path, "r", name)
    group = results_group(name)
    start, stop = _zarr.check_range(start, stop, _result_array(results, "coef", path).shape[1])
    return {key: _zarr.read(_result_array(results, key, path), (Ellipsis, slice(start, stop)),
                            f"{group}/{key}", path) for key in _names(results)}


def read_state(path, name=None) -> dict[str, np.ndarray]:
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
    >>> from distglm.store import write_inputs
    >>> path = write_inputs(tempfile.mkdtemp() + "/fit.zarr", np.ones((5, 2)), np.ones((5, 3)))
    >>> create_results(path, n_features=2, n_neurons=3, neuron_chunk=3, n_blocks=1,
    ...                dtype="float64", state_spec={"velocity": ((2,), "float32", True)},
    ...                fingerprint={})
    >>> read_state(path)["velocity"].shape
    (2, 3)
    """
    path = as_path(path)
    results = _results(path, "r", name)
    group = results_group(name)
    return {key: _zarr.read(_result_array(results, f"solver_state/{key}", path), Ellipsis,
                            f"{group}/solver_state/{key}", path) for key in results.attrs["state_spec"]}


def read_fingerprint(path, name=None) -> dict | None:
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
    >>> from distglm.store import write_inputs
    >>> path = write_inputs(tempfile.mkdtemp() + "/fit.zarr", np.ones((5, 2)), np.ones((5, 3)))
    >>> read_fingerprint(path) is None
    True
    """
    path = as_path(path)
    results = _zarr.node(open_group(path, "r"), results_group(name), path)
    return None if results is None else results.attrs.get("fingerprint")

