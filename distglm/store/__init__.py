"""The Zarr layout of a distglm store: inputs, results, and records of who works on it.

A store is one Zarr group (a local directory or any URL Zarr accepts) laid out as::

    inputs/                  attrs: generation, complete, feature_groups = [[name, k], ...], software
        X                    (time, feature) float, one chunk along features, chunks of at most
                             2**16 samples
        y                    (time, neuron), chunks (row_chunk, neuron_chunk) with
                             row_chunk = min(n_samples, 2**16)
        feature_mask         (feature, neuron) uint8 0/1, chunks (n_features, neuron_chunk);
                             absent means every feature predicts every neuron
        test                 (time,) bool: samples held out of every fit (write_inputs(test=...));
                             absent means none
        time, feature, neuron  coordinates: seconds (or the sample index), feature names, neuron ids
        neuron_<name>        per-neuron metadata of a pynapple y (auxiliary coordinates)
    results/                 attrs: fingerprint (written last), state_spec, model, software
        coef                 (feature, neuron), chunks (n_features, block_size): one chunk per block
                             of the fit (a multiple of the inputs' neuron_chunk)
        intercept, scale, dof_resid, loss, grad_norm, n_iter, converged, status
                             (neuron,), chunks (block_size,); status with CF flag_values/flag_meanings
        cv_model_terms, cv_null_terms, cv_status
                             (strength, fold, neuron), chunks (.., .., block_size): a
                             PopulationGLMCV's held-out score terms and fit status (null terms
                             for the pseudo-R2 scores only); attrs cv = their sizes
        cv_index, cv_strength
                             (neuron,): each neuron's selected candidate and strength
        feature, neuron      coordinates, copied from the inputs
        done                 (block, marker) uint64, one chunk per block: 0, or the block's checksum
        cv_done              the same for the cross-validation paths alone, written first when
                             one strength is selected from the scores of every block
        solver_state/<name>  (*shape, neuron) per neuron, or (block, *shape) per block
        <fit name>/          a named fit (distglm.fit(..., name=...)): the same layout, its own
                             fingerprint and done markers
    job/                     attrs: the record of a fit submitted to a cluster
    lease/                   attrs: the process that holds the store (one writer at a time)

The parts live in three modules, by what they hold: :mod:`~distglm.store.inputs` (what the user
wrote), :mod:`~distglm.store.results` (what fits write) and :mod:`~distglm.store.records` (job
records and the lease). Their public functions are gathered here.

Every array names its dimensions (Zarr v3 ``dimension_names``) and says what it holds
(``long_name``, ``description``, ``units`` where there are units), so
``xarray.open_zarr(path, group="inputs")`` and ``group="results"`` open labelled Datasets.
Stores written before the coordinates existed read as before, with positions for ids.

How the store stays true to its data:

- ``inputs`` are marked incomplete before anything is deleted or written and complete (with a
  new ``generation`` id) last, so interrupted inputs are refused rather than fitted.
- Replacing results first removes their fingerprint (a reader then sees no results at all),
  then deletes the rest; the new fingerprint is written last.
- A block's ``done`` marker is a checksum of the block's results and of the fit's fingerprint,
  written after the block's data and checked against it whenever done blocks are listed: a
  marker over missing, partial or another fit's data does not count.
- One process at a time holds the store's lease to write it; the lease expires when its holder
  dies, and can be broken by hand (``distglm unlock PATH``).

Each function opens the store anew (opening reads only small metadata documents), so any
process holding a path can call it. This package uses only numpy and zarr.
"""

from .inputs import (
    InputsInfo,
    InputsReader,
    inputs_generation,
    nan_rows,
    open_inputs,
    read_coordinates,
    read_test,
    read_time,
    read_mask_block,
    read_X,
    read_y_block,
    scan_X,
    scan_y,
    write_inputs,
)
from ._zarr import software_versions, using_storage_options, with_storage_options
from .records import (
    Lease,
    acquire_lease,
    break_lease,
    describe_holder,
    read_attrs,
    read_lease,
    write_attrs,
)
from .results import (
    HELDOUT_NAMES,
    RESULT_NAMES,
    SE_NAMES,
    CV_NAMES,
    CV_PATH_NAMES,
    STATUS_UNWRITTEN,
    ResultsWriter,
    create_results,
    cv_path_done_blocks,
    done_blocks,
    fit_names,
    read_fingerprint,
    read_results,
    read_state,
    results_group,
    write_block,
)

__all__ = [
    "RESULT_NAMES",
    "HELDOUT_NAMES",
    "SE_NAMES",
    "CV_NAMES",
    "CV_PATH_NAMES",
    "STATUS_UNWRITTEN",
    "cv_path_done_blocks",
    "InputsInfo",
    "InputsReader",
    "ResultsWriter",
    "Lease",
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
    "create_results",
    "write_block",
    "done_blocks",
    "read_results",
    "read_state",
    "read_fingerprint",
    "results_group",
    "fit_names",
    "write_attrs",
    "read_attrs",
    "acquire_lease",
    "read_lease",
    "break_lease",
    "describe_holder",
    "software_versions",
    "using_storage_options",
    "with_storage_options",
]
