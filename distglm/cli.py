"""The ``distglm`` command: fit a store, submit fits to a cluster, follow them, inspect results.

Commands::

    distglm demo                      simulate a population, fit it on a local Ray, summarise
    distglm fit PATH [--model M]      fit the store at PATH on Ray (local, or --address)
    distglm submit PATH [--model M]   submit the fit to a running cluster; prints the job id
    distglm status PATH|ID            a submitted job's state and progress
    distglm cancel PATH|ID            stop a submitted job
    distglm logs ID                   the log of a submitted job (progress of every block)
    distglm inspect PATH              the store's inputs, fit results and per-neuron diagnostics
    distglm unlock PATH               break the lease of a process that died holding the store

Every command takes ``--json`` (one JSON object on stdout, ``{"error": ...}`` on failure);
``distglm --version`` names distglm's version and those of the libraries it runs on.

A model ``M`` is a JSON file holding :func:`distglm.glm.model_to_config`'s output, or a JSON
object given inline. Keys left out take the defaults of :class:`~distglm.glm.PopulationGLM`, so
``{"regularizer": "Ridge", "regularizer_strength": 0.1}`` is a complete model. The keys:
``observation_model`` ("Poisson", "Gamma", "Bernoulli", "Gaussian", "NegativeBinomial"),
``observation_scale`` (NegativeBinomial's fixed scale), ``inverse_link_function`` (a name such
as "exp"; None for the observation model's default), ``regularizer`` ("UnRegularized", "Ridge",
"Lasso", "ElasticNet", "GroupLasso"), ``regularizer_strength`` (a number; ElasticNet
``{"tuple": [strength, ratio]}``), ``group_mask`` (GroupLasso's groups as nested lists),
``solver_name`` and ``solver_kwargs``. The feature mask is the store's ``inputs/feature_mask``.

Exit codes: 0 on success, 1 on an error (printed as ``error: ...``), 2 on bad arguments.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import json
import logging
import os
import re
import sys
import tempfile
import time

import numpy as np

from .errors import DistGLMError, InputError, InputTypeError
from .logs import log_to_stderr

__all__ = ["main", "pseudo_r2", "cli_hint", "inspect_store"]

# Above this many y values, inspect does not compute pseudo-R2 (it holds y and the rates in memory).
_MAX_SCORE_VALUES = 50_000_000


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer; got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer; got {value}")
    return value


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive number; got {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"expected a positive number; got {value}")
    return value


def _read_json(spec: str, flag: str, what: str, kind=dict):
    """The JSON value of ``flag``: an inline JSON object, or the contents of the file it names."""
    if spec.lstrip().startswith("{"):
        text, where = spec, flag
    else:
        try:
            with open(spec) as handle:
                text = handle.read()
        except OSError as err:
            raise InputError(f"cannot read the {what} file {spec}: {err.strerror or err}") from None
        where = spec
    try:
        value = json.loads(text)
    except json.JSONDecodeError as err:
        raise InputError(f"{where} is not valid JSON: {err}") from None
    if not isinstance(value, kind):
        expected = f"object of {what} settings" if kind is dict else "array"
        raise InputTypeError(f"{where} must hold a JSON {expected}; got {type(value).__name__}")
    return value


def _load_model(spec: str | None):
    """A PopulationGLM from a JSON file or an inline JSON object; the default model if None."""
    from .glm import PopulationGLM, model_from_config

    if spec is None:
        return PopulationGLM()
    where = "--model" if spec.lstrip().startswith("{") else spec
    model = model_from_config(_read_json(spec, "--model", "model"))
    if not isinstance(model, PopulationGLM):
        raise InputError(f"{where} describes a {type(model).__name__}; distributed fits need a PopulationGLM")
    return model


def _load_history(args):
    """The HistorySpec of ``--history`` (JSON) or of ``--history-basis/-window/-coupling``; None without them."""
    from .history import HistorySpec

    flags = {"--history-basis": args.history_basis, "--history-window": args.history_window,
             "--history-coupling": args.history_coupling}
    given = [flag for flag, value in flags.items() if value is not None]
    if args.history is not None:
        if given:
            raise InputError(f"give --history or the flags {given}, not both")
        return HistorySpec.from_json(_read_json(args.history, "--history", "history"))
    if not given:
        return None
    if args.history_basis is None or args.history_window is None:
        raise InputError("history features need both --history-basis K and --history-window SAMPLES")
    coupling = "all" if args.history_coupling is None else args.history_coupling
    if coupling not in ("self", "all"):
        try:
            coupling = np.load(coupling) if coupling.endswith(".npy") else _read_json(coupling, "--history-coupling",
                                                                                     "coupling", list)
        except OSError as err:
            raise InputError(f"cannot read the coupling file {args.history_coupling}: {err}") from None
        coupling = np.asarray(coupling).tolist()
    return HistorySpec.from_json({"n_basis_funcs": args.history_basis, "window_size": args.history_window,
                                  "coupling": coupling})


def _fit_options(args) -> dict:
    options = {"resume": not args.no_resume}
    history = _load_history(args)
    if history is not None:
        options["history"] = history
    if args.block_timeout is not None:
        options["block_timeout"] = args.block_timeout
    if args.num_actors is not None:
        options["num_actors"] = args.num_actors
    if args.block_size is not None:
        options["block_size"] = args.block_size
    if args.memory_per_actor is not None:
        options["memory_per_actor"] = int(args.memory_per_actor * 1e9)
    if args.stream is not None:
        options["stream"] = args.stream
    return options


def _quantiles(values: np.ndarray, fmt: str = ".3f") -> str:
    return _format_stats(_stats(values), fmt)


def pseudo_r2(model, X, y) -> np.ndarray:
    """McFadden's pseudo-R2 of each neuron of a fitted population model.

    Parameters
    ----------
    model : PopulationGLM
        Fitted.
    X : array of shape (n_samples, n_features)
    y : array of shape (n_samples, n_neurons)

    Returns
    -------
    ndarray of shape (n_neurons,)
        NaN for neurons whose fit failed.

    Examples
    --------
    >>> from distglm import PopulationGLM
    >>> from distglm.demo import simulate
    >>> pop = simulate(n_neurons=10, n_samples=2000)
    >>> model = PopulationGLM(feature_mask=pop.feature_mask).fit(pop.X, pop.y)
    >>> pseudo_r2(model, pop.X, pop.y).shape
    (10,)
    """
    import jax.numpy as jnp

    scores = model.score(X, y, score_type="pseudo-r2-McFadden",
                         aggregate_sample_scores=lambda terms: jnp.mean(terms, axis=0))
    return np.asarray(scores, dtype=float)


def _emit(args, text: str, data: dict) -> None:
    """Print ``text`` for a person, or ``data`` as one JSON object with ``--json``."""
    if args.json:
        print(json.dumps(data, default=_jsonable))
    else:
        print(text)


def _jsonable(value):
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    return str(value)


def _stats(values: np.ndarray) -> dict | None:
    values = np.asarray(values, dtype=float)
    values = values[np.isfinite(values)]
    if values.size == 0:
        return None
    return dict(zip(("min", "q25", "median", "q75", "max"), (float(v) for v in np.percentile(values, [0, 25, 50, 75, 100]))))


# The library's hints name its keyword arguments; on the command line the flags do the same.
_CLI_HINTS = (
    (re.compile(r"resume=False \(distglm fit PATH --no-resume\)"), "--no-resume"),
    (re.compile(r"distglm\.fit\(path, model, resume=False\)"), "distglm fit PATH --no-resume"),
    (re.compile(r"\bresume=False\b"), "--no-resume"),
    (re.compile(r"\bblock_size=(\d+)"), r"--block-size \1"),
    (re.compile(r"\bnum_actors=(\d+)"), r"--num-actors \1"),
    (re.compile(r"\bblock_timeout\b"), "--block-timeout"),
)


def cli_hint(message: str) -> str:
    """``message`` with the library's keyword arguments replaced by the command's flags.

    Examples
    --------
    >>> cli_hint("pass resume=False to replace them")
    'pass --no-resume to replace them'
    """
    for pattern, flag in _CLI_HINTS:
        message = pattern.sub(flag, message)
    return message


class _Parser(argparse.ArgumentParser):
    """An argument parser whose errors suggest the nearest command or option to a mistyped one."""

    def error(self, message):
        suggestion = None
        choice = re.search(r"invalid choice: '([^']*)' \(choose from (.*)\)", message)
        if choice:
            options = re.findall(r"'?([\w-]+)'?", choice.group(2))
            suggestion = difflib.get_close_matches(choice.group(1), options, n=1, cutoff=0.5)
        unknown = re.search(r"unrecognized arguments: (\S+)", message)
        if unknown:
            flags = [flag for action in self._actions for flag in action.option_strings]
            for sub in self._subparsers._group_actions if self._subparsers else ():
                for parser in getattr(sub, "choices", {}).values():
                    flags += [flag for action in parser._actions for flag in action.option_strings]
            suggestion = difflib.get_close_matches(unknown.group(1).split("=")[0], flags, n=1, cutoff=0.6)
        if suggestion:
            message += f"; did you mean {suggestion[0]!r}?"
        super().error(message)


# ---------------------------------------------------------------------------------------------
# Commands


def _cmd_demo(args) -> int:
    from . import PopulationGLM, fit, load_model, write_inputs
    from .demo import simulate

    t0 = time.perf_counter()
    pop = simulate(args.neurons, args.samples, seed=args.seed)
    t_sim = time.perf_counter() - t0
    path = args.store or os.path.join(tempfile.mkdtemp(prefix="distglm-demo-"), "demo.zarr")
    write_inputs(path, pop.X, pop.y, pop.feature_mask, overwrite=args.overwrite)
    n_samples, n_features = pop.X.shape
    if not args.json:
        print(f"distglm demo: {args.neurons} neurons x {n_samples} time bins, {n_features} features "
              f"(stimulus and spike-history filters), {int(pop.feature_mask.sum())} unmasked weights")
        print(f"  simulated in {t_sim:.1f} s; store: {path}")
    if args.address is None:
        # a local Ray started for the demo, whatever RAY_ADDRESS says
        os.environ.pop("RAY_ADDRESS", None)
    report = fit(path, PopulationGLM(), num_actors=args.num_actors, address=args.address,
                 progress=not args.no_progress, resume=False)
    model = load_model(path)
    mask = pop.feature_mask.astype(bool)
    recovery = np.corrcoef(np.asarray(model.coef_)[mask], pop.coef[mask])[0, 1]
    r2 = pseudo_r2(model, pop.X, pop.y)
    _emit(args, "\n".join([
        f"  fit: {report.n_fitted} neurons fitted, {report.n_converged} converged, {report.n_failed} failed "
        f"or not converged, in {report.seconds:.1f} s ({report.neurons_per_second:.1f} neurons/s, "
        f"{report.n_blocks} blocks)",
        f"  pseudo-R2 (McFadden) per neuron: {_quantiles(r2)}",
        f"  fitted vs simulated weights: correlation {recovery:.3f}",
        f"  inspect the results with: distglm inspect {path}",
    ]), {"store": path, "report": _report_dict(report), "pseudo_r2": _stats(r2),
         "weight_correlation": float(recovery)})
    return 0 if not report.failed_blocks else 1


def _cmd_fit(args) -> int:
    from . import fit

    model = _load_model(args.model)
    report = fit(args.path, model, address=args.address, progress=not (args.no_progress or args.json),
                 connect_timeout=args.connect_timeout, name=args.name, **_fit_options(args))
    _emit(args, str(report), _report_dict(report))
    if report.failed_blocks:
        print(f"error: {len(report.failed_blocks)} blocks failed on every try; rerun to retry them", file=sys.stderr)
        return 1
    return 0


def _report_dict(report) -> dict:
    out = dataclasses.asdict(report)
    out["failures"] = {str(neuron): reason for neuron, reason in report.failures.items()}
    out["failed_blocks"] = {str(block): reason for block, reason in report.failed_blocks.items()}
    return out


def _job_env(names: list[str]) -> dict | None:
    """The job's runtime environment from ``--env NAME`` (this shell's value) or ``--env NAME=VALUE``."""
    env = {}
    for item in names:
        name, sep, value = item.partition("=")
        if not sep:
            if name not in os.environ:
                raise InputError(f"--env {name}: {name} is not set in this environment")
            value = os.environ[name]
        env[name] = value
    return {"env_vars": env} if env else None


def _cmd_submit(args) -> int:
    from .submit import submit

    model = _load_model(args.model)
    job = submit(args.path, model, address=args.address, runtime_env=_job_env(args.env), **_fit_options(args))
    _emit(args, job.id, {"id": job.id, "path": job.path, "address": job.address})
    print(f"submitted to {job.address}; follow it with: distglm status {job.id} (log: distglm logs {job.id})",
          file=sys.stderr)
    return 0


def _cmd_status(args) -> int:
    from .submit import get_job

    job = get_job(args.target, address=args.address)
    status = job.wait(timeout=args.wait) if args.wait is not None else job.status()
    _emit(args, str(status), status.as_dict())
    return 0


def _cmd_cancel(args) -> int:
    from .submit import get_job

    status = get_job(args.target, address=args.address).cancel()
    _emit(args, str(status), status.as_dict())
    return 0


def _cmd_logs(args) -> int:
    from .submit import get_job

    job = get_job(args.target, address=args.address)
    text = job.logs()
    if args.tail is not None:
        text = "\n".join(text.splitlines()[-args.tail:])
    _emit(args, text.rstrip("\n"), {"id": job.id, "path": job.path, "log": text})
    return 0


def _cmd_unlock(args) -> int:
    from . import store

    holder = store.read_lease(args.path)
    if holder is None:
        _emit(args, f"{args.path} is not locked", {"path": args.path, "unlocked": False, "holder": None})
        return 0
    if not holder["expired"] and not args.force:
        raise InputError(f"{args.path} is held by {store.describe_holder(holder)}, which may still run; if you "
                         "know it is gone, break the lease with --force")
    if store.break_lease(args.path, token=holder.get("token")) is None:
        raise InputError(f"the lease of {args.path} changed hands while it was being broken; run unlock again")
    _emit(args, f"unlocked {args.path} (the lease of {store.describe_holder(holder)})",
          {"path": args.path, "unlocked": True, "holder": store.describe_holder(holder)})
    return 0


def _cmd_inspect(args) -> int:
    summary = inspect_store(args.path, args.name, failures_shown=args.failures,
                            pseudo_r2_wanted=not args.no_pseudo_r2)
    _emit(args, _inspect_text(summary, args.failures), summary)
    if args.plot:
        from .plot import summary_figure

        try:
            figure = summary_figure(args.path, name=args.name)
        except ImportError as err:
            raise InputError(f"--plot: {err}") from None
        figure.savefig(args.plot, dpi=100)
        if not args.json:
            print(f"  summary plot: {args.plot}")
    return 0


def inspect_store(path: str, name: str | None = None, failures_shown: int = 10, pseudo_r2_wanted: bool = True) -> dict:
    """What ``distglm inspect`` reports about a store's fit ``name`` (None: the unnamed fit), as a dict.

    Keys: ``store``, ``inputs`` (shapes, dtypes, neuron chunk, mask, feature groups, and
    ``held_out_samples``: how many samples the inputs hold out, or None), ``job``,
    ``lease`` (the holder, or None), ``fits`` (the store's fits: None for the unnamed one, then
    the names), ``fit`` and, once the fit created results, ``model``, ``blocks_done``,
    ``n_blocks``, ``neurons`` (fitted, converged, failed), ``failures`` (one entry per reason: the
    neuron ids, at most ``failures_shown`` of them, and the count), ``iterations``,
    ``gradient_norm``, ``loss``, ``heldout`` (score type -> quantiles, for fits that held samples
    out) and ``pseudo_r2`` (quantiles, or why they are missing).
    """
    from . import store
    from .core.fit import STATUS_OK, STATUS_REASONS
    from .plan import plan_blocks
    from .scheduler import stored_fingerprint

    info = store.open_inputs(path)
    out = {"store": path, "inputs": {
        "n_samples": info.n_samples, "n_features": info.n_features, "n_neurons": info.n_neurons,
        "X_dtype": str(info.X_dtype), "y_dtype": str(info.y_dtype), "neuron_chunk": info.neuron_chunk,
        "feature_mask": info.has_mask, "feature_groups": [list(g) for g in info.feature_groups or ()],
        "held_out_samples": int(store.read_test(path).sum()) if info.has_test else None}}
    job = store.read_attrs(path, "job")
    out["job"] = ({key: job.get(key) for key in ("id", "state", "neurons_done", "neurons_total", "error")}
                  if job.get("id") else None)
    holder = store.read_lease(path)
    out["lease"] = None if holder is None else {"holder": store.describe_holder(holder),
                                                "expired": bool(holder["expired"])}
    out["fits"] = store.fit_names(path)
    out["fit"] = name
    fingerprint = stored_fingerprint(path, name)
    if fingerprint is None:
        return out
    out["model"] = fingerprint.get("model", {})
    out["n_blocks"] = len(plan_blocks(info.n_neurons, info.neuron_chunk, fingerprint["block_size"]))
    out["blocks_done"] = len(store.done_blocks(path, name))
    res = store.read_results(path, name=name)
    status = res["status"]
    written = status != store.STATUS_UNWRITTEN
    out["neurons"] = {"fitted": int(written.sum()), "total": info.n_neurons, "converged": int(res["converged"].sum()),
                      "failed": int((written & (status != STATUS_OK)).sum())}
    ids = store.read_coordinates(path)["neuron"]
    out["failures"] = []
    for code in sorted(set(int(s) for s in status[written]) - {STATUS_OK}):
        neurons = np.flatnonzero(status == code)
        out["failures"].append({"status": code, "reason": STATUS_REASONS.get(code, f"status {code}"),
                                "neurons": [ids[n].item() for n in neurons[:failures_shown]],
                                "count": int(neurons.size)})
    for key, array in (("iterations", "n_iter"), ("gradient_norm", "grad_norm"), ("loss", "loss")):
        out[key] = _stats(res[array][written]) if written.any() else None
    out["heldout"] = {score_type: _stats(res[key][written]) for score_type, key in store.HELDOUT_NAMES.items()
                      if key in res and written.any()}
    if "cv_strength" in res:
        n_strengths, n_folds = res["cv_model_terms"].shape[:2]
        out["cross_validation"] = {"strengths": n_strengths, "folds": n_folds,
                                   "selected_strength": _stats(res["cv_strength"][written])}
    out["pseudo_r2"] = _inspect_pseudo_r2(pseudo_r2_wanted, info, path, name,
                                          out["blocks_done"] == out["n_blocks"])
    return out


def _inspect_text(summary: dict, failures_shown: int) -> str:
    inputs = summary["inputs"]
    lines = [f"store {summary['store']}",
             f"  inputs: X {inputs['n_samples']} x {inputs['n_features']} ({inputs['X_dtype']}), y "
             f"{inputs['n_samples']} x {inputs['n_neurons']} ({inputs['y_dtype']}), neuron chunk "
             f"{inputs['neuron_chunk']}, feature mask: {'yes' if inputs['feature_mask'] else 'no (all ones)'}"]
    if inputs.get("held_out_samples") is not None:
        lines.append(f"  held-out samples: {inputs['held_out_samples']} of {inputs['n_samples']}, recorded in the inputs "
                     "(every fit leaves them out and scores them)")
    if inputs["feature_groups"]:
        lines.append("  feature groups: " + ", ".join(f"{name} ({size})" for name, size in inputs["feature_groups"]))
    job = summary["job"]
    if job:
        lines.append(f"  job: {job['id']} {job['state']}, {job['neurons_done']}/{job['neurons_total']} neurons"
                     + (f", error: {job['error']}" if job["error"] else ""))
    if summary["lease"]:
        lines.append(f"  in use by: {summary['lease']['holder']}" + (" (expired)" if summary["lease"]["expired"] else ""))
    names, name = summary["fits"], summary["fit"]
    if names and names != [None]:
        lines.append("  fits: " + ", ".join("(unnamed)" if n is None else n for n in names))
    if "model" not in summary:
        lines.append("  results: none" + ("" if name is None else f" named {name!r}")
                     + " (fit the store with distglm fit or distglm submit)")
        return "\n".join(lines)
    if name is not None:
        lines.append(f"  fit: {name}")
    model, neurons = summary["model"], summary["neurons"]
    strength = model.get("regularizer_strength")
    lines.append(f"  model: {model.get('observation_model')}, {model.get('regularizer')}"
                 + (f" (strength {strength})" if strength is not None else "")
                 + f", solver {model.get('solver_name') or 'default'}")
    lines.append(f"  blocks: {summary['blocks_done']}/{summary['n_blocks']} done")
    lines.append(f"  neurons: {neurons['fitted']}/{neurons['total']} fitted, {neurons['converged']} converged, "
                 f"{neurons['failed']} failed or not converged")
    for failure in summary["failures"]:
        more = f", ... ({failure['count']} in all)" if failure["count"] > failures_shown else ""
        lines.append(f"    {failure['reason']}: neurons {', '.join(str(n) for n in failure['neurons'])}{more}")
    for key, label, fmt in (("iterations", "iterations", ".0f"), ("gradient_norm", "gradient norm", ".2e"),
                            ("loss", "loss", ".4g")):
        if summary[key] is not None:
            lines.append(f"  {label}: {_format_stats(summary[key], fmt)}")
    for score_type, stats in summary["heldout"].items():
        lines.append(f"  held-out {score_type} per neuron: {_format_stats(stats, '.4g')}")
    cv = summary.get("cross_validation")
    if cv is not None:
        lines.append(f"  cross-validated strength per neuron: {_format_stats(cv['selected_strength'], '.3g')} (of "
                     f"{cv['strengths']} candidates, {cv['folds']} folds)")
    r2 = summary["pseudo_r2"]
    lines.append("  pseudo-R2 (McFadden) per neuron: " + (r2 if isinstance(r2, str) else _format_stats(r2, ".3f")))
    return "\n".join(lines)


def _format_stats(stats: dict | None, fmt: str) -> str:
    if stats is None:
        return "no finite values"
    q = {key: format(value, fmt) for key, value in stats.items()}
    return f"min {q['min']}, quartiles {q['q25']} / {q['median']} / {q['q75']}, max {q['max']}"


def _inspect_pseudo_r2(wanted: bool, info, path: str, name: str | None, complete: bool) -> dict | str:
    """Quantiles of the neurons' pseudo-R2, or why they were not computed."""
    from . import load_model, store

    if not wanted:
        return "not computed (--no-pseudo-r2)"
    if not complete:
        return "not computed: the fit is unfinished"
    if info.n_samples * info.n_neurons > _MAX_SCORE_VALUES:
        return f"not computed: y holds {info.n_samples * info.n_neurons} values, more than {_MAX_SCORE_VALUES}"
    model = load_model(path, name=name)
    X = store.read_X(path)
    y = store.read_y_block(path, 0, info.n_neurons)
    if info.feature_groups:
        starts = np.cumsum([0] + [size for _, size in info.feature_groups])
        X = {name: X[:, s:s + size] for (name, size), s in zip(info.feature_groups, starts)}
    if model.history_ is not None:
        from .history import design

        X = design(X, y, model.history_)
    return _stats(pseudo_r2(model, X, y))


# ---------------------------------------------------------------------------------------------
# Parser


class _VersionAction(argparse.Action):
    # the versions are looked up only when asked for: every other command starts without it
    def __call__(self, parser, namespace, values, option_string=None):
        print(_version())
        parser.exit()


def _version() -> str:
    from . import store

    versions = store.software_versions()
    others = ", ".join(f"{name} {version}" for name, version in versions.items() if name != "distglm")
    return f"distglm {versions['distglm']} ({others})"


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="distglm",
        description="Population GLMs of neural activity, fitted in memory or sharded across a Ray cluster.",
        epilog="See 'distglm COMMAND --help'. A model file holds distglm.glm.model_to_config output, e.g. "
               '{"regularizer": "Ridge", "regularizer_strength": 0.1}; missing keys take their defaults.',
    )
    parser.add_argument("--version", action=_VersionAction, nargs=0, help="show the versions and exit")
    # every command prints one JSON object with --json
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--json", action="store_true", help="print one JSON object on stdout instead of text")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True, parser_class=_Parser)
    add_parser = commands.add_parser

    def add_command(*args, **kwargs):
        return add_parser(*args, parents=[common], **kwargs)

    commands.add_parser = add_command

    demo = commands.add_parser("demo", help="simulate a population, fit it on a local Ray and summarise",
                               description="Simulate a population of neurons (stimulus and spike-history "
                                           "features through raised-cosine filters, coupling to hub neurons, "
                                           "Poisson spikes), write it to a store, fit it with distglm.fit and "
                                           "print a summary.")
    demo.add_argument("--neurons", type=_positive_int, default=256, help="neurons to simulate (default 256)")
    demo.add_argument("--samples", type=_positive_int, default=20_000, help="time bins (default 20000)")
    demo.add_argument("--store", help="where to write the store (default: a new temporary directory)")
    demo.add_argument("--overwrite", action="store_true", help="replace the inputs of an existing --store")
    demo.add_argument("--num-actors", type=_positive_int, help="Ray actors (default: one per CPU)")
    demo.add_argument("--address", help="fit on this Ray cluster (host:6379) instead of a local Ray")
    demo.add_argument("--seed", type=int, default=0, help="random seed of the simulation (default 0)")
    demo.add_argument("--no-progress", action="store_true", help="no progress bar")
    demo.set_defaults(func=_cmd_demo)

    def add_fit_arguments(sub, address_help):
        sub.add_argument("path", help="the store (a directory or a URL such as s3://bucket/rec.zarr)")
        sub.add_argument("--model", help="model JSON file, or an inline JSON object (default: Poisson, "
                                         "unregularized)")
        sub.add_argument("--address", help=address_help)
        sub.add_argument("--num-actors", type=_positive_int, help="Ray actors (default: one per CPU of the cluster)")
        sub.add_argument("--block-size", type=_positive_int, help="neurons per block, a multiple of the store's "
                                                                  "neuron chunk")
        sub.add_argument("--memory-per-actor", type=_positive_float, metavar="GB",
                         help="memory an actor may use; blocks are sized to fit (default: the memory Ray "
                              "schedules per CPU)")
        sub.add_argument("--no-resume", action="store_true", help="refit every block, replacing earlier results")
        sub.add_argument("--block-timeout", type=_positive_float, metavar="SECONDS",
                         help="seconds a block may run at least before its actor is taken for stuck and the block "
                              "is retried elsewhere (default: from the blocks' work, at least 900; the limit grows to "
                              "10x the slowest block)")
        streaming = sub.add_mutually_exclusive_group()
        streaming.add_argument("--stream", dest="stream", action="store_const", const=True, default=None,
                               help="actors read X and y a chunk of samples at a time (default: when X and two "
                                    "blocks of y exceed 1 GiB)")
        streaming.add_argument("--no-stream", dest="stream", action="store_const", const=False,
                               help="actors hold X and each block of y in memory")
        sub.add_argument("--history", metavar="JSON", help="spike-history features built by the actors from y: a JSON "
                                                           "file or inline object, {\"n_basis_funcs\": K, "
                                                           "\"window_size\": W, \"coupling\": \"self\"} or a "
                                                           "HistorySpec's {\"kernels\": ..., \"coupling\": ...}")
        sub.add_argument("--history-basis", type=_positive_int, metavar="K",
                         help="history features from K raised-cosine-log kernels (with --history-window)")
        sub.add_argument("--history-window", type=_positive_int, metavar="SAMPLES",
                         help="past samples the history kernels span (with --history-basis)")
        sub.add_argument("--history-coupling", metavar="self|all|FILE",
                         help="whose past drives whom: self, all (default), or a bool (n_neurons, n_neurons) mask in a "
                              ".npy or JSON file, [i, j] true when neuron i's past drives neuron j")

    fit = commands.add_parser("fit", help="fit a store on Ray and wait for the result",
                              description="Fit the store's inputs on Ray actors in this process's Ray: a local "
                                          "one, or the cluster at --address / RAY_ADDRESS.")
    add_fit_arguments(fit, "the Ray cluster (host:6379 or ray://host:10001; default RAY_ADDRESS, else a local Ray)")
    fit.add_argument("--no-progress", action="store_true", help="no progress bar")
    fit.add_argument("--name", help="the fit's name: its results go to results/NAME/, beside the store's other fits")
    fit.add_argument("--connect-timeout", type=_positive_float, metavar="SECONDS",
                     help="seconds to wait for the cluster at --address (default 30, or DISTGLM_CONNECT_TIMEOUT)")
    fit.set_defaults(func=_cmd_fit)

    submit = commands.add_parser("submit", help="submit a fit to a running cluster and print its job id",
                                 description="Submit the fit as a Ray job; it runs on the cluster after this "
                                             "command exits, and records its progress in the store.")
    add_fit_arguments(submit, "the cluster's dashboard, http://HEAD:8265 (default RAY_ADDRESS, else "
                              "http://127.0.0.1:8265)")
    submit.add_argument("--env", action="append", default=[], metavar="NAME[=VALUE]",
                        help="set an environment variable for the job on the cluster, such as the store's "
                             "credentials; NAME alone passes this shell's value (repeatable)")
    submit.set_defaults(func=_cmd_submit)

    for name, help_text in (("status", "a submitted job's state and progress"), ("cancel", "stop a submitted job")):
        sub = commands.add_parser(name, help=help_text, description=help_text[0].upper() + help_text[1:] + ".")
        sub.add_argument("target", metavar="PATH|ID", help="the job's store, or its id")
        sub.add_argument("--address", help="the cluster's dashboard, http://HEAD:8265 (default: the one recorded "
                                           "in the store, else RAY_ADDRESS)")
        sub.set_defaults(func=_cmd_status if name == "status" else _cmd_cancel)
        if name == "status":
            sub.add_argument("--wait", type=float, metavar="SECONDS",
                             help="wait up to SECONDS for the job to end before printing")

    unlock = commands.add_parser("unlock", help="break the lease of a process that died holding a store",
                                 description="A store holds one writer at a time through a lease, which expires "
                                             "when its holder stops renewing it. Break the lease of a holder you "
                                             "know is gone; a lease still being renewed needs --force.")
    unlock.add_argument("path", help="the store")
    unlock.add_argument("--force", action="store_true", help="break a lease that has not expired")
    unlock.set_defaults(func=_cmd_unlock)

    inspect = commands.add_parser("inspect", help="a store's inputs, results and per-neuron diagnostics",
                                  description="Describe a store: its inputs, its job, its fit's results with "
                                              "failures and their reasons, iteration and gradient statistics, "
                                              "and McFadden's pseudo-R2 per neuron (reads X and y).")
    inspect.add_argument("path", help="the store")
    inspect.add_argument("--failures", type=_positive_int, default=10,
                         help="neurons listed per failure reason (default 10)")
    inspect.add_argument("--no-pseudo-r2", action="store_true", help="skip pseudo-R2 (which reads X and y)")
    inspect.add_argument("--name", help="the named fit to describe (default: the unnamed fit)")
    inspect.add_argument("--plot", metavar="FILE.png", help="also write a one-page summary figure (needs "
                                                            "matplotlib: pip install 'distglm[plot]')")
    inspect.set_defaults(func=_cmd_inspect)

    logs = commands.add_parser("logs", help="the log of a submitted job", description="Print the log the cluster "
                               "keeps of a submitted job: the fit's progress after every block and each actor's "
                               "line per block.")
    logs.add_argument("target", metavar="PATH|ID", help="the job's store, or its id")
    logs.add_argument("--address", help="the cluster's dashboard, http://HEAD:8265 (default: the one recorded "
                                        "in the store, else RAY_ADDRESS)")
    logs.add_argument("--tail", type=_positive_int, metavar="N", help="only the last N lines")
    logs.set_defaults(func=_cmd_logs)
    return parser


def _run_job(argv: list[str]) -> int:
    # The entrypoint of a submitted job (see distglm.submit); not a user command. Its last line
    # on failure, "error: ...", is what a Job reports when the store could not record the failure.
    import traceback

    from .submit import run_job

    parser = argparse.ArgumentParser(prog="distglm _run-job")
    parser.add_argument("path")
    parser.add_argument("--job-id", required=True)
    args = parser.parse_args(argv)
    # the job's log (ray job logs ID, distglm logs ID) shows a line per block and the overall rate
    log_to_stderr(logging.INFO)
    try:
        return run_job(args.path, args.job_id)
    except Exception as err:  # noqa: BLE001 - any failure of the job ends it with its reason
        traceback.print_exc()
        reason = " ".join(str(err).split()) or type(err).__name__
        print(f"error: {reason}", file=sys.stderr)
        return 1


def main(argv: list[str] | None = None) -> int:
    """Run the ``distglm`` command with ``argv`` (default ``sys.argv[1:]``); return its exit code.

    Examples
    --------
    >>> main(["inspect", "/nonexistent/store.zarr"])  # prints "error: ..." on stderr
    1
    """
    argv = sys.argv[1:] if argv is None else list(argv)
    args = None
    try:
        if argv[:1] == ["_run-job"]:
            return _run_job(argv[1:])
        args = _parser().parse_args(argv)
        if args.command == "fit" and (args.no_progress or args.json):
            # without a progress bar, a line per block on stderr
            log_to_stderr(logging.INFO)
        return args.func(args)
    except DistGLMError as err:
        message = cli_hint(str(err))
        if args is not None and args.json:
            print(json.dumps({"error": message}))
        print(f"error: {message}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
