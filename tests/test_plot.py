"""distglm.plot: every figure renders to a non-empty PNG with the axes it promises."""

import io
import types

import nemos as nmo
import numpy as np
import pytest

import distglm
from distglm import plot, store
from distglm.cli import main
from distglm.errors import InputError
from distglm.plan import Block

UNITS = [101, 102, 205, 207, 311, 312]


def png_bytes(fig) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=60)
    data = buffer.getvalue()
    assert data.startswith(b"\x89PNG") and len(data) > 2000
    return data


@pytest.fixture(scope="module")
def basis_fit():
    """Six neurons driven through a 5-function raised-cosine basis; the model and its design."""
    rng = np.random.default_rng(3)
    basis = nmo.basis.RaisedCosineLinearConv(n_basis_funcs=5, window_size=12)
    drive = rng.normal(size=400)
    X = np.nan_to_num(np.asarray(basis.compute_features(drive)))
    weights = 0.3 * rng.normal(size=(5, 6))
    y = rng.poisson(np.exp(X @ weights - 0.5))
    return basis, X, y, distglm.PopulationGLM().fit(X, y)


@pytest.fixture(scope="module")
def fitted_store(basis_fit, tmp_path_factory):
    """A store whose results are the model's, written as a fit writes them (no cluster needed)."""
    _, X, y, model = basis_fit
    path = store.write_inputs(tmp_path_factory.mktemp("plot") / "s.zarr", X, y, neuron_ids=UNITS, neuron_chunk=6)
    store.create_results(path, n_features=5, n_neurons=6, neuron_chunk=6, n_blocks=1, dtype="float64",
                         state_spec={}, fingerprint={"model": distglm.glm.model_to_config(model), "n_samples": 400,
                                                     "dtype": "<f8", "block_size": 6},
                         status_meanings={0: "ok", 1: "not_converged"})
    status = np.array([0, 0, 1, 0, 0, 0], dtype=np.int8)
    arrays = {"coef": model.coef_, "intercept": model.intercept_, "scale": np.ones(6), "dof_resid": np.ones(6),
              "loss": np.linspace(0.8, 1.3, 6), "grad_norm": np.full(6, 1e-7), "n_iter": np.arange(3, 9),
              "converged": status == 0, "status": status}
    store.write_block(path, Block(0, 0, 6), arrays, {})
    return path


def test_filters_of_chosen_neurons_from_a_model_and_from_a_store(basis_fit, fitted_store):
    basis, _, _, model = basis_fit
    fig = plot.filters(model, [0, 3], basis, bin_size=0.01)
    ax, = fig.axes
    lines = [line for line in ax.get_lines() if not line.get_label().startswith("_")]
    assert [line.get_label() for line in lines] == ["neuron 0", "neuron 3"]
    assert [text.get_text() for text in ax.get_legend().get_texts()] == ["neuron 0", "neuron 3"]
    _, values = basis.evaluate_on_grid(12)
    np.testing.assert_allclose(lines[1].get_ydata(), values @ model.coef_[:, 3])
    np.testing.assert_allclose(lines[0].get_xdata(), 0.01 * np.arange(12))
    assert ax.get_xlabel() == "lag (s)"
    png_bytes(fig)
    # from the store, neurons are chosen by their unit ids
    fig = plot.filters(fitted_store, [205], basis)
    assert [text.get_text() for text in fig.axes[0].get_legend().get_texts()] == ["neuron 205"]
    # the store's fit ran on an actor (one XLA thread), the model's in memory: equal to float32 rounding
    np.testing.assert_allclose(fig.axes[0].get_lines()[0].get_ydata(), values @ model.coef_[:, 2], rtol=1e-5)
    with pytest.raises(InputError, match=r"neurons \[999\] are not in the fit"):
        plot.filters(fitted_store, [999], basis)
    with pytest.raises(InputError, match="features must name 5 columns"):
        plot.filters(model, [0], basis, features=slice(0, 3))


def test_diagnostics_across_the_population(basis_fit, fitted_store):
    _, X, y, model = basis_fit
    fig = plot.diagnostics(fitted_store)
    assert [ax.get_title() for ax in fig.axes] == ["score per neuron", "solver iterations", "iterations vs score"]
    assert fig.axes[0].get_xlabel() == "final objective (lower is better)"
    legend = [text.get_text() for text in fig.axes[2].get_legend().get_texts()]
    assert legend == ["converged (5)", "not converged (1)"]
    png_bytes(fig)
    with pytest.raises(InputError, match="give scores="):
        plot.diagnostics(model)
    scores = np.asarray(model.score(X, y, score_type="pseudo-r2-McFadden", aggregate_sample_scores=lambda t: t.mean(0)))
    fig = plot.diagnostics(model, scores=scores)
    assert fig.axes[0].get_xlabel() == "score"
    png_bytes(fig)


def test_cv_curves_from_scores_or_a_selected_model():
    rng = np.random.default_rng(0)
    scores = rng.normal(size=(4, 3, 20)) - (np.log10([0.01, 0.1, 1.0, 10.0]) ** 2)[:, None, None]
    fig = plot.cv_curves(scores, strengths=[0.01, 0.1, 1.0, 10.0], neurons=[0, 5])
    ax, = fig.axes
    assert ax.get_xscale() == "log" and ax.get_xlabel() == "regularizer strength"
    median = [line for line in ax.get_lines() if line.get_label() == "median over neurons"][0]
    np.testing.assert_allclose(median.get_ydata(), np.median(scores.mean(axis=1), axis=1))
    assert {"neuron 0", "neuron 5"} <= {line.get_label() for line in ax.get_lines()}
    png_bytes(fig)
    selected = types.SimpleNamespace(cv_scores_=scores, regularizer_strengths_=np.array([0.01, 0.1, 1.0, 10.0]))
    assert plot.cv_curves(selected).axes[0].get_xscale() == "log"
    with pytest.raises(InputError, match=r"shape \(n_strengths, n_folds, n_neurons\)"):
        plot.cv_curves(np.zeros((4, 3)))


def test_summary_page_and_inspect_plot(fitted_store, tmp_path, capsys):
    fig = plot.summary_figure(fitted_store)
    assert len(fig.axes) == 5  # four panels and the coefficients' colour bar
    status_axes = [ax for ax in fig.axes if ax.get_title() == "neurons by status"][0]
    assert [label.get_text() for label in status_axes.get_yticklabels()] == ["ok", "not_converged"]
    out = tmp_path / "summary.png"
    assert main(["inspect", str(fitted_store), "--no-pseudo-r2", "--plot", str(out)]) == 0
    assert f"summary plot: {out}" in capsys.readouterr().out
    data = out.read_bytes()
    assert data.startswith(b"\x89PNG") and len(data) > 10_000



def test_docstring_examples():
    import doctest

    import distglm.logs

    assert doctest.testmod(plot).failed == 0
    assert doctest.testmod(distglm.logs).failed == 0
