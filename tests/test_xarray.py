"""The store describes itself: xarray opens inputs and results as labelled Datasets.

A reader who never saw distglm's code opens the store with ``xarray.open_zarr`` and finds named
dimensions, coordinates (time in seconds, feature names, neuron ids), what each array means,
the status codes' meanings and the software that wrote it.
"""

import json
import socket

import nemos as nmo
import numpy as np
import pynapple as nap
import pytest
import ray
import xarray as xr
import zarr

import distglm
from distglm import store
from distglm.errors import InputError, StoreError

UNITS = np.array([4, 11, 17, 23, 30, 42])


@pytest.fixture(scope="module")
def recording():
    """Poisson counts of 6 units (ids 4..42, each with a brain area) on 3 named features, 10 ms bins."""
    rng = np.random.default_rng(7)
    t = 0.01 * np.arange(200)
    X = nap.TsdFrame(t=t, d=0.5 * rng.normal(size=(200, 3)), columns=["speed", "position", "theta"])
    y = rng.poisson(np.exp(X.values @ (0.3 * rng.normal(size=(3, 6))) - 0.5))
    # the fourth unit never spikes: its fit fails, and is reported under its unit id
    y[:, 3] = 0
    counts = nap.TsdFrame(t=t, d=y, columns=UNITS, metadata={"area": ["CA1", "CA1", "CA3", "CA3", "DG", "DG"]})
    return X, counts


MODEL = {"regularizer": "Ridge", "regularizer_strength": 0.1}


@pytest.fixture(scope="module")
def local_ray():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def fitted_store(recording, tmp_path_factory, local_ray):
    X, counts = recording
    path = distglm.write_inputs(tmp_path_factory.mktemp("xr") / "rec.zarr", X, counts, neuron_chunk=2)
    # a NeMoS model, given as it is: distglm.fit converts it
    report = distglm.fit(path, nmo.glm.PopulationGLM(**MODEL), num_actors=1, block_size=4, progress=False)
    return path, report


def test_inputs_open_in_xarray_with_names_dims_and_coordinates(fitted_store, recording):
    path, _ = fitted_store
    X, counts = recording
    ds = xr.open_zarr(path, group="inputs", consolidated=False)
    assert ds["X"].dims == ("time", "feature")
    assert ds["y"].dims == ("time", "neuron")
    np.testing.assert_array_equal(ds["time"], X.times())
    assert ds["time"].attrs["units"] == "s"
    assert list(ds["feature"].values) == ["speed", "position", "theta"]
    np.testing.assert_array_equal(ds["neuron"], UNITS)
    assert ds["y"].attrs["long_name"] == "responses" and ds["y"].attrs["units"] == "count"
    # pynapple metadata is a per-neuron coordinate
    assert list(ds["neuron_area"].sel(neuron=17).values.ravel()) == ["CA3"]
    # select by unit id and by time: the counts of unit 23 are those given for it
    np.testing.assert_array_equal(ds["y"].sel(neuron=23).values, counts.values[:, 3])
    np.testing.assert_allclose(ds["X"].sel(time=slice(0.5, 0.6), feature="theta").values,
                               X.restrict(nap.IntervalSet(0.5, 0.6)).values[:, 2])
    assert ds.attrs["software"]["distglm"] == distglm.__version__
    assert ds.attrs["software"]["zarr"] == zarr.__version__


def test_results_open_in_xarray_and_select_a_neuron_by_unit_id(fitted_store):
    path, _ = fitted_store
    ds = xr.open_zarr(path, group="results", consolidated=False)
    assert ds["coef"].dims == ("feature", "neuron")
    assert ds["intercept"].dims == ("neuron",)
    np.testing.assert_array_equal(ds["neuron"], UNITS)
    assert list(ds["feature"].values) == ["speed", "position", "theta"]
    model = distglm.load_model(path)
    np.testing.assert_allclose(ds["coef"].sel(neuron=42).values, model.coef_[:, 5])
    np.testing.assert_allclose(ds["coef"].sel(neuron=11, feature="position"), model.coef_[1, 1])
    status = ds["status"]
    meanings = dict(zip(status.attrs["flag_values"], status.attrs["flag_meanings"].split()))
    assert meanings[-1] == "unwritten" and meanings[0] == "ok"
    assert meanings[int(status.sel(neuron=23))] == "nonfinite_initial_intercept"
    assert ds.attrs["model"]["regularizer"] == "Ridge"
    assert set(ds.attrs["software"]) >= {"distglm", "jax", "zarr"}


@pytest.mark.filterwarnings("ignore:.*failed to fit:RuntimeWarning")
def test_failures_are_named_by_unit_id_and_the_nemos_model_was_fitted(fitted_store, recording):
    path, report = fitted_store
    assert list(report.failures) == [23]
    model = distglm.load_model(path)
    assert list(model.failure_reasons_) == [23]
    # NeMoS 0.2.8 fits Ridge with gradient descent unless told otherwise: its solver came along
    assert model.solver_name == "GradientDescent"
    reference = distglm.glm.from_nemos(nmo.glm.PopulationGLM(**MODEL)).fit(*recording)
    # gradient descent stops on one criterion per block, so blocks and one joint fit stop apart
    np.testing.assert_allclose(model.coef_, reference.coef_, rtol=5e-3, atol=1e-4)


def test_numpy_inputs_get_positions_and_given_labels(tmp_path):
    X, y = np.ones((5, 2)), np.ones((5, 3))
    path = distglm.write_inputs(tmp_path / "a.zarr", X, y, neuron_ids=["a", "b", "c"], time=0.1 * np.arange(5))
    ds = xr.open_zarr(path, group="inputs", consolidated=False)
    assert list(ds["neuron"].values) == ["a", "b", "c"]
    np.testing.assert_array_equal(ds["feature"], [0, 1])
    np.testing.assert_allclose(ds["y"].sel(neuron="b").values, 1.0)
    groups = distglm.write_inputs(tmp_path / "b.zarr", {"pos": np.ones((5, 2)), "s": np.ones((5, 1))}, y)
    assert list(store.read_coordinates(groups)["feature"]) == ["pos[0]", "pos[1]", "s[0]"]
    plain = distglm.write_inputs(tmp_path / "c.zarr", X, y)
    ds = xr.open_zarr(plain, group="inputs", consolidated=False)
    assert "units" not in ds["time"].attrs and ds["time"].attrs["long_name"] == "sample index"


@pytest.mark.parametrize("kwargs, match", [
    ({"neuron_ids": [1, 1, 2]}, "unique"),
    ({"neuron_ids": [1, 2]}, r"shape \(3,\)"),
    ({"feature_names": [0.5, 1.5]}, "integers or strings"),
    ({"time": [0.0, 0.2, 0.1, 0.3, 0.4]}, "strictly increasing"),
])
def test_bad_labels_are_refused_before_the_store_is_touched(tmp_path, kwargs, match):
    with pytest.raises((InputError, TypeError), match=match):
        distglm.write_inputs(tmp_path / "s.zarr", np.ones((5, 2)), np.ones((5, 3)), **kwargs)
    assert not (tmp_path / "s.zarr").exists()


def test_time_series_on_different_time_indexes_are_refused(tmp_path):
    X = nap.TsdFrame(t=np.arange(5.0), d=np.ones((5, 2)))
    y = nap.TsdFrame(t=np.arange(5.0) + 0.5, d=np.ones((5, 3)))
    with pytest.raises(InputError, match="different time indexes"):
        distglm.write_inputs(tmp_path / "s.zarr", X, y)


def test_stores_without_coordinates_still_read(tmp_path):
    # inputs written by hand with Zarr, as older distglm versions wrote them
    root = zarr.open_group(tmp_path / "old.zarr", mode="w")
    inputs = root.create_group("inputs")
    inputs.create_array("X", shape=(4, 2), dtype="f8")[...] = 1.0
    inputs.create_array("y", shape=(4, 3), dtype="f8")[...] = 1.0
    coordinates = store.read_coordinates(tmp_path / "old.zarr")
    np.testing.assert_array_equal(coordinates["neuron"], [0, 1, 2])
    np.testing.assert_array_equal(coordinates["time"], [0, 1, 2, 3])


def test_object_coordinates_are_refused(tmp_path):
    path = distglm.write_inputs(tmp_path / "s.zarr", np.ones((4, 2)), np.ones((4, 3)))
    document = tmp_path / "s.zarr" / "inputs" / "neuron" / "zarr.json"
    metadata = json.loads(document.read_text())
    metadata["codecs"] = [{"name": "numcodecs.pickle", "configuration": {}}]
    document.write_text(json.dumps(metadata))
    with pytest.raises(StoreError, match="pickle"):
        store.read_coordinates(path)


@pytest.fixture(scope="module")
def s3_options():
    """An S3 server on loopback with a bucket, reachable only through explicit storage_options."""
    import boto3
    from moto.server import ThreadedMotoServer

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    secret = "s3cr3t-not-for-the-store"
    boto3.client("s3", endpoint_url=endpoint, aws_access_key_id="AKIDDISTGLM", aws_secret_access_key=secret,
                 region_name="us-east-1").create_bucket(Bucket="xr-test")
    yield {"key": "AKIDDISTGLM", "secret": secret, "client_kwargs": {"endpoint_url": endpoint,
                                                                     "region_name": "us-east-1"}}
    server.stop()


@pytest.mark.filterwarnings("ignore:.*failed to fit:RuntimeWarning")
def test_storage_options_reach_the_store_and_the_actors_and_are_not_stored(s3_options, recording, local_ray,
                                                                          monkeypatch):
    # no credentials in the environment: the actors can reach the store only through the options
    for name in ("AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.delenv(name, raising=False)
    X, counts = recording
    path = "s3://xr-test/rec.zarr"
    distglm.write_inputs(path, X, counts, neuron_chunk=2, storage_options=s3_options)
    report = distglm.fit(path, distglm.PopulationGLM(**MODEL), num_actors=1, block_size=4, progress=False,
                         storage_options=s3_options)
    assert report.n_fitted == 6 and list(report.failures) == [23]
    np.testing.assert_array_equal(distglm.load_model(path, storage_options=s3_options).coef_,
                                  xr.open_zarr(path, group="results", consolidated=False,
                                               storage_options=s3_options)["coef"].values)
    ds = xr.open_zarr(path, group="results", consolidated=False, storage_options=s3_options)
    np.testing.assert_array_equal(ds["neuron"], UNITS)
    reference = distglm.PopulationGLM(**MODEL).fit(X, counts)
    np.testing.assert_allclose(ds["coef"], reference.coef_, rtol=1e-3, atol=1e-5)
    import s3fs

    fs = s3fs.S3FileSystem(**s3_options)
    for key in fs.find("xr-test/rec.zarr"):
        assert s3_options["secret"].encode() not in fs.cat_file(key), key
        assert b"AKIDDISTGLM" not in fs.cat_file(key), key


def test_storage_options_are_checked(tmp_path):
    with pytest.raises(TypeError, match="storage_options must be a dict"):
        distglm.write_inputs("s3://xr-test/x.zarr", np.ones((3, 1)), np.ones((3, 1)), storage_options="key=1")
    with pytest.raises(InputError, match="local path"):
        distglm.write_inputs(tmp_path / "x.zarr", np.ones((3, 1)), np.ones((3, 1)), storage_options={"anon": True})
