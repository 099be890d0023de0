import doctest
import json
import os
import subprocess
import sys

import numpy as np
import pytest

import distglm
import distglm.cli
import distglm.demo
from distglm import store
from distglm.cli import _load_model, main, pseudo_r2
from distglm.demo import causal_filter, raised_cosine_log, simulate
from distglm.errors import InputError


def run_cli(*args, timeout=300):
    """Run ``python -m distglm.cli ARGS`` in a fresh process, as a user would."""
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    env.pop("RAY_ADDRESS", None)
    return subprocess.run([sys.executable, "-m", "distglm.cli", *args], capture_output=True, text=True,
                          timeout=timeout, env=env)


@pytest.fixture
def small_store(tmp_path):
    rng = np.random.default_rng(0)
    X = rng.normal(size=(200, 3))
    y = rng.poisson(1.0, size=(200, 8))
    return store.write_inputs(str(tmp_path / "small.zarr"), X, y)


# ---------------------------------------------------------------------------------------------
# Arguments and messages


@pytest.mark.parametrize("command", [[], ["demo"], ["fit"], ["submit"], ["status"], ["cancel"], ["inspect"],
                                     ["logs"], ["unlock"]])
def test_help_of_every_command(command, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([*command, "--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: distglm")
    assert "_run-job" not in out
    # every command prints JSON on request
    assert ("--json" in out) == bool(command)


def test_version_names_distglm_and_its_libraries(capsys):
    import jax
    import zarr

    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith(f"distglm {distglm.__version__} (")
    assert f"jax {jax.__version__}" in out and f"zarr {zarr.__version__}" in out


@pytest.mark.parametrize("argv, suggestion", [
    (["fitt", "x.zarr"], "did you mean 'fit'?"),
    (["stats", "x.zarr"], "did you mean 'status'?"),
    (["fit", "x.zarr", "--no-resme"], "did you mean '--no-resume'?"),
    (["inspect", "x.zarr", "--faliures", "3"], "did you mean '--failures'?"),
])
def test_mistyped_commands_and_options_suggest_the_nearest(argv, suggestion, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    assert suggestion in capsys.readouterr().err


def test_hints_name_the_command_line_flags(tmp_path, capsys):
    from distglm.cli import cli_hint

    assert cli_hint("refit with resume=False (distglm fit PATH --no-resume)") == "refit with --no-resume"
    assert cli_hint("resume with block_size=64 (or leave it out)") == "resume with --block-size 64 (or leave it out)"
    rng = np.random.default_rng(0)
    path = store.write_inputs(str(tmp_path / "s.zarr"), rng.normal(size=(50, 3)), rng.poisson(1.0, size=(50, 8)))
    store.create_results(path, n_features=3, n_neurons=8, neuron_chunk=8, n_blocks=1, dtype="float64",
                         state_spec={}, fingerprint={"other": 1})
    # a fit refused because of another fit's results: the hint is the flag
    assert main(["fit", path, "--json"]) == 1
    captured = capsys.readouterr()
    assert "resume=False" not in captured.err and "--no-resume" in captured.err
    assert json.loads(captured.out)["error"] == captured.err.removeprefix("error: ").strip()


def test_json_of_inspect_and_unlock(tmp_path, capsys):
    rng = np.random.default_rng(0)
    path = store.write_inputs(str(tmp_path / "s.zarr"), rng.normal(size=(50, 3)), rng.poisson(1.0, size=(50, 8)),
                              neuron_ids=[f"u{i}" for i in range(8)])
    assert main(["inspect", path, "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["inputs"]["n_neurons"] == 8 and summary["job"] is None and "model" not in summary
    assert main(["unlock", path, "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == {"path": path, "unlocked": False, "holder": None}
    assert main(["logs", "distglm-0123456789ab", "--address", "http://127.0.0.1:9", "--json"]) == 1
    assert "cannot reach the Ray cluster" in json.loads(capsys.readouterr().out)["error"]


@pytest.mark.parametrize("argv", [
    [],                                   # no command
    ["frobnicate"],                       # unknown command
    ["fit"],                              # missing PATH
    ["demo", "--neurons", "-3"],          # not a positive integer
    ["demo", "--samples", "many"],
    ["fit", "x.zarr", "--block-size", "0"],
    ["fit", "x.zarr", "--memory-per-actor", "-1"],
    ["status"],
])
def test_bad_arguments_exit_2_with_usage(argv, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "usage: distglm" in err and "error:" in err


def test_missing_store_is_error_exit_1_not_traceback(tmp_path, capsys):
    missing = str(tmp_path / "nowhere.zarr")
    for argv in (["inspect", missing], ["status", missing], ["cancel", missing], ["fit", missing],
                 ["submit", missing, "--address", "http://127.0.0.1:9"]):
        assert main(argv) == 1
        err = capsys.readouterr().err
        assert err.startswith("error: ") and missing in err
        assert "Traceback" not in err


def test_demo_sizes_out_of_range(capsys):
    assert main(["demo", "--neurons", "4"]) == 1
    assert capsys.readouterr().err == "error: n_neurons must be at least n_hubs=8; got 4\n"
    assert main(["demo", "--samples", "50"]) == 1
    assert capsys.readouterr().err == "error: n_samples must be at least 100; got 50\n"


def test_status_of_store_without_job(small_store, capsys):
    assert main(["status", small_store]) == 1
    assert "holds no job record" in capsys.readouterr().err


def test_status_of_id_at_unreachable_address(capsys):
    assert main(["status", "distglm-0123456789ab", "--address", "http://127.0.0.1:9"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: cannot reach the Ray cluster's dashboard at http://127.0.0.1:9")


def test_model_file_errors(tmp_path, small_store, capsys):
    cases = {
        "bad.json": ("{not json", "is not valid JSON"),
        "list.json": ("[1, 2]", "must hold a JSON object"),
        "glm.json": ('{"class": "GLM"}', "need a PopulationGLM"),
        "typo.json": ('{"regularizr": "Ridge"}', "unknown keys in model configuration: ['regularizr']"),
        "value.json": ('{"observation_model": "Poison"}', "observation_model must be one of"),
    }
    for name, (text, message) in cases.items():
        (tmp_path / name).write_text(text)
        assert main(["fit", small_store, "--model", str(tmp_path / name)]) == 1
        err = capsys.readouterr().err
        assert err.startswith("error: ") and message in err, (name, err)
    assert main(["submit", small_store, "--model", str(tmp_path / "absent.json")]) == 1
    assert "cannot read the model file" in capsys.readouterr().err


def test_partial_model_config_takes_defaults(tmp_path):
    path = tmp_path / "ridge.json"
    path.write_text(json.dumps({"regularizer": "Ridge", "regularizer_strength": 0.1}))
    model = _load_model(str(path))
    assert isinstance(model, distglm.PopulationGLM)
    assert model.regularizer.name == "Ridge" and model.regularizer_strength == 0.1
    assert model.observation_model.name == "Poisson"
    inline = _load_model('{"observation_model": "Gamma"}')
    assert inline.observation_model.name == "Gamma"
    full = distglm.PopulationGLM(regularizer="Lasso", regularizer_strength=0.01, solver_kwargs={"maxiter": 50})
    path.write_text(json.dumps(distglm.glm.model_to_config(full)))
    assert distglm.glm.model_to_config(_load_model(str(path))) == distglm.glm.model_to_config(full)
    with pytest.raises(InputError):
        _load_model('{"class": "GLM"}')


def test_submit_env_options(monkeypatch):
    from distglm.cli import _job_env

    monkeypatch.setenv("DISTGLM_TEST_SECRET", "s3cr3t")
    monkeypatch.delenv("DISTGLM_TEST_UNSET", raising=False)
    assert _job_env([]) is None
    assert _job_env(["DISTGLM_TEST_SECRET", "REGION=eu-west-1", "EMPTY="]) == {
        "env_vars": {"DISTGLM_TEST_SECRET": "s3cr3t", "REGION": "eu-west-1", "EMPTY": ""}}
    with pytest.raises(InputError, match="DISTGLM_TEST_UNSET is not set"):
        _job_env(["DISTGLM_TEST_UNSET"])


def test_memory_per_actor_is_given_in_gb():
    from distglm.cli import _fit_options, _parser

    args = _parser().parse_args(["submit", "x.zarr", "--memory-per-actor", "2.5"])
    assert _fit_options(args)["memory_per_actor"] == 2_500_000_000
    assert "memory_per_actor" not in _fit_options(_parser().parse_args(["fit", "x.zarr"]))


def test_local_cluster_script_usage():
    script = os.path.join(os.path.dirname(__file__), "..", "cluster", "local.sh")
    result = subprocess.run(["bash", script, "sideways"], capture_output=True, text=True, timeout=30)
    assert result.returncode == 2 and "usage:" in result.stderr
    idle = subprocess.run(["bash", script, "status"], capture_output=True, text=True, timeout=30,
                          env={**os.environ, "DISTGLM_LOCAL_DIR": "/nonexistent/distglm-cluster"})
    assert idle.returncode == 0 and "down (nothing started" in idle.stdout


def test_inspect_of_store_without_results(small_store, capsys):
    assert main(["inspect", small_store]) == 0
    out = capsys.readouterr().out
    assert "X 200 x 3" in out and "y 200 x 8" in out
    assert "results: none" in out


@pytest.mark.parametrize("ids, named", [(None, ["1", "2"]), ([f"unit{i}" for i in range(8)], ["unit1", "unit2"])],
                         ids=["positions", "neuron-ids"])
def test_inspect_lists_failures_by_reason(tmp_path, capsys, ids, named):
    from distglm.core.fit import STATUS_REASONS
    from distglm.plan import Block

    rng = np.random.default_rng(0)
    small_store = store.write_inputs(str(tmp_path / "s.zarr"), rng.normal(size=(50, 3)),
                                     rng.poisson(1.0, size=(50, 8)), neuron_chunk=4, neuron_ids=ids)
    # results as a fit leaves them: two blocks of 4 neurons, the second not done yet
    store.create_results(small_store, n_features=3, n_neurons=8, neuron_chunk=4, n_blocks=2, dtype="float64",
                         state_spec={}, fingerprint={"model": distglm.glm.model_to_config(distglm.PopulationGLM()),
                                                     "n_samples": 50, "dtype": "<f8", "block_size": 4})
    status = np.array([0, 2, 1, 2], dtype=np.int8)
    arrays = {name: np.zeros(4) for name in store.RESULT_NAMES}
    arrays.update(coef=np.zeros((3, 4)), status=status, converged=status == 0, n_iter=np.array([5, 0, 100, 0]),
                  grad_norm=np.array([1e-5, np.nan, 0.1, np.nan]))
    store.write_block(small_store, Block(0, 0, 4), arrays, {})
    assert main(["inspect", small_store, "--failures", "1"]) == 0
    out = capsys.readouterr().out
    assert "blocks: 1/2 done" in out
    assert "neurons: 4/8 fitted, 1 converged, 3 failed or not converged" in out
    assert f"    {STATUS_REASONS[1]}: neurons {named[1]}\n" in out
    assert f"    {STATUS_REASONS[2]}: neurons {named[0]}, ... (2 in all)\n" in out
    assert "iterations: min 0, quartiles 0 / 2 / 29, max 100" in out
    assert "pseudo-R2 (McFadden) per neuron: not computed: the fit is unfinished" in out


# ---------------------------------------------------------------------------------------------
# The simulation


def test_docstring_examples():
    assert doctest.testmod(distglm.cli).failed == 0
    assert doctest.testmod(distglm.demo).failed == 0


def test_raised_cosines_tile_the_window():
    basis = raised_cosine_log(5, 60)
    assert basis.shape == (60, 5)
    assert np.all(basis >= 0) and np.all(basis <= 1)
    # adjacent bumps overlap by half and sum to one; the first peaks at lag 0, the last at the end
    np.testing.assert_allclose(basis.sum(axis=1), 1.0, atol=1e-12)
    np.testing.assert_array_equal(basis.argmax(axis=0)[[0, -1]], [0, 59])
    assert np.all(np.diff(basis.argmax(axis=0)) > 0)


def test_causal_filter_uses_only_the_past():
    spikes = np.zeros((10, 1))
    spikes[4] = 1
    kernel = np.array([[1.0], [0.5], [0.25]])
    out = causal_filter(spikes, kernel, lag=1)
    np.testing.assert_array_equal(out[:, 0], [0, 0, 0, 0, 0, 1, 0.5, 0.25, 0, 0])
    np.testing.assert_array_equal(causal_filter(spikes, kernel, lag=0)[:, 0], [0, 0, 0, 0, 1, 0.5, 0.25, 0, 0, 0])


def test_simulated_population_is_its_own_glm():
    pop = simulate(n_neurons=40, n_samples=3000, seed=3)
    assert pop.X.shape == (3000, 30) and pop.y.shape == (3000, 40) and pop.y.dtype == np.int32
    assert len(pop.feature_names) == 30
    # masked weights are exactly zero, every neuron has predictors, and spike counts are plausible
    assert np.all(pop.coef[pop.feature_mask == 0] == 0)
    assert np.all(pop.feature_mask.sum(axis=0) >= 3)
    assert 0.01 < pop.y.mean() < 0.3 and pop.y.max() < 20
    # the hubs' history columns are their own spike trains through the history filters
    history = causal_filter(pop.y[:, :8].astype(float), raised_cosine_log(3, 40), lag=1)
    np.testing.assert_allclose(pop.X[:, 6:], history, atol=1e-9)
    # same seed, same data
    np.testing.assert_array_equal(simulate(n_neurons=40, n_samples=3000, seed=3).y, pop.y)


def test_pseudo_r2_is_mcfadden_of_each_neuron():
    import jax.numpy as jnp

    pop = simulate(n_neurons=12, n_samples=3000, seed=1)
    model = distglm.PopulationGLM(feature_mask=pop.feature_mask).fit(pop.X, pop.y)
    per_neuron = pseudo_r2(model, pop.X, pop.y)
    assert per_neuron.shape == (12,)
    assert np.all((per_neuron > 0) & (per_neuron < 1))
    for j in (0, 9):
        only_j = model.score(pop.X, pop.y, score_type="pseudo-r2-McFadden",
                             aggregate_sample_scores=lambda terms: jnp.mean(terms[:, j]))
        # two float32 evaluations of 1 - L / L0 agree to a few ulps of L / L0 (about 1e-7), which is
        # more than 1e-5 relative when the pseudo-R2 itself is small
        np.testing.assert_allclose(per_neuron[j], float(only_j), rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------------------------------------
# End to end, on a local Ray


@pytest.mark.ray
def test_demo_then_inspect_and_refit_from_the_command_line(tmp_path):
    path = str(tmp_path / "demo.zarr")
    demo = run_cli("demo", "--neurons", "48", "--samples", "3000", "--store", path, "--num-actors", "2",
                   "--no-progress")
    assert demo.returncode == 0, demo.stderr
    assert "48 neurons fitted" in demo.stdout
    assert "pseudo-R2 (McFadden) per neuron: min" in demo.stdout
    assert "fitted vs simulated weights: correlation" in demo.stdout
    recovery = float(demo.stdout.split("correlation")[1].split()[0])
    assert recovery > 0.7

    # the same store again without --overwrite: a clear error
    again = run_cli("demo", "--neurons", "48", "--samples", "3000", "--store", path)
    assert again.returncode == 1
    assert again.stderr.startswith("error: ") and "already holds inputs" in again.stderr

    # refit with a partial model file, replacing the demo's results
    model_file = tmp_path / "ridge.json"
    model_file.write_text(json.dumps({"regularizer": "Ridge", "regularizer_strength": 0.1}))
    refit = run_cli("fit", path, "--model", str(model_file), "--no-resume", "--no-progress", "--num-actors", "2")
    assert refit.returncode == 0, refit.stderr
    assert "neurons: 48 (48 fitted" in refit.stdout
    assert distglm.load_model(path).regularizer.name == "Ridge"
    # without a progress bar, the driver logs the progress of every block, with the rate and the ETA
    progress = [line for line in refit.stderr.splitlines() if "distglm.scheduler: fit: block" in line]
    summary = json.loads(run_cli("inspect", path, "--json", "--no-pseudo-r2").stdout)
    assert len(progress) == summary["n_blocks"]
    assert (summary["neurons"]["fitted"], summary["neurons"]["total"]) == (48, 48)
    assert "48/48 neurons (100%)" in progress[-1] and "neurons/s" in progress[-1] and "ETA 0 s" in progress[-1]

    inspect = run_cli("inspect", path)
    assert inspect.returncode == 0, inspect.stderr
    assert "model: Poisson, Ridge (strength 0.1)" in inspect.stdout
    assert "neurons: 48/48 fitted" in inspect.stdout
    assert "iterations: min" in inspect.stdout
    assert "pseudo-R2 (McFadden) per neuron: min" in inspect.stdout


def test_inspect_refuses_results_that_describe_no_fit(tmp_path, capsys):
    rng = np.random.default_rng(0)
    path = store.write_inputs(str(tmp_path / "s.zarr"), rng.normal(size=(50, 3)), rng.poisson(1.0, size=(50, 8)))
    store.create_results(path, n_features=3, n_neurons=8, neuron_chunk=8, n_blocks=1, dtype="float64",
                         state_spec={}, fingerprint={"model": {}, "n_samples": 50, "dtype": "<f8"})
    assert main(["inspect", path]) == 1
    err = capsys.readouterr().err
    assert "fingerprint does not describe a distglm fit ('block_size' missing)" in err
    assert "--no-resume" in err and "Traceback" not in err


def test_history_options_describe_a_spec(tmp_path):
    from distglm.cli import _fit_options, _parser
    from distglm.history import HistorySpec

    def history(*argv):
        return _fit_options(_parser().parse_args(["fit", "x.zarr", *argv])).get("history")

    assert history() is None
    assert history("--history-basis", "3", "--history-window", "6", "--history-coupling", "self") == \
        HistorySpec.raised_cosine_log(3, 6, coupling="self")
    assert history("--history", '{"n_basis_funcs": 3, "window_size": 6, "width": 3.0}') == \
        HistorySpec.raised_cosine_log(3, 6, coupling="all", width=3.0)
    ring = np.roll(np.eye(4, dtype=bool), 1, axis=1) | np.eye(4, dtype=bool)
    np.save(tmp_path / "ring.npy", ring)
    assert history("--history-basis", "2", "--history-window", "5", "--history-coupling",
                   str(tmp_path / "ring.npy")) == HistorySpec.raised_cosine_log(2, 5, coupling=ring)
    spec = HistorySpec(np.array([[1.0, 0.0], [0.5, 0.5]]), ring)
    (tmp_path / "spec.json").write_text(json.dumps(spec.to_json()))
    assert history("--history", str(tmp_path / "spec.json")) == spec
    for argv, message in ((["--history", "{}", "--history-basis", "3"], "give --history or the flags"),
                          (["--history-basis", "3"], "need both --history-basis K and --history-window"),
                          (["--history", '{"n_basis_funcs": 3, "window": 6}'], r"unknown keys \['window'\]"),
                          (["--history", '{"n_basis_funcs": 3}'], r"needs 'kernels', or \['window_size'\]"),
                          (["--history-basis", "3", "--history-window", "6", "--history-coupling", "[[1, 2]]"],
                           "cannot read the coupling file"),
                          (["--history", '{"kernels": [[1.0]], "coupling": [[2]]}'], "nested list of 0/1")):
        with pytest.raises(InputError, match=message):
            history(*argv)

