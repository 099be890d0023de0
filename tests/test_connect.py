"""Reaching a cluster: address forms, bounded connections, and the local Ray distglm starts."""

import os
import socket
import subprocess
import sys
import time

import pytest

from distglm.connect import _driver_address, bounded, connect_ray, dashboard_url
from distglm.errors import ClusterError, InputError, InputTypeError


@pytest.mark.parametrize("address, want", [
    ("10.0.0.5:6379", ("10.0.0.5:6379", "10.0.0.5", 6379)),
    ("head", ("head:6379", "head", 6379)),
    ("ray://head", ("ray://head:10001", "head", 10001)),
    ("ray://head:10002", ("ray://head:10002", "head", 10002)),
])
def test_driver_addresses(address, want):
    assert _driver_address(address) == want


@pytest.mark.parametrize("address, error, match", [
    ("http://head:8265", InputError, "dashboard address, which distglm.submit uses.*--address HOST:6379"),
    ("grpc://head:1", InputError, "must be HOST:PORT"),
    ("head:port", InputError, "port that is not a number"),
    (":6379", InputError, "names no host"),
    ("", InputTypeError, "non-empty str"),
])
def test_bad_driver_addresses(address, error, match):
    with pytest.raises(error, match=match):
        _driver_address(address)


def test_dashboard_urls():
    assert dashboard_url("ray://10.0.0.5") == "http://10.0.0.5:8265"
    assert dashboard_url("head:9000") == "http://head:9000"
    assert dashboard_url("https://head/") == "https://head"


def test_bounded_calls_give_up_in_time():
    started = time.monotonic()
    with pytest.raises(TimeoutError, match="gave up"):
        bounded(lambda: time.sleep(30), 0.5, lambda: TimeoutError("gave up"))
    assert time.monotonic() - started < 5
    assert bounded(lambda: 42, 5, lambda: TimeoutError()) == 42
    with pytest.raises(KeyError):
        bounded(lambda: {}["missing"], 5, lambda: TimeoutError())


def test_nothing_listening_is_reported_at_once_with_its_cause():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    started = time.monotonic()
    with pytest.raises(ClusterError, match=rf"nothing listens at 127.0.0.1:{port} \(connection refused\)"):
        connect_ray(f"127.0.0.1:{port}", timeout=5)
    with pytest.raises(ClusterError, match="does not resolve"):
        connect_ray("no-such-host.invalid:6379", timeout=5)
    assert time.monotonic() - started < 15


def test_connect_timeout_is_checked():
    with pytest.raises(InputError, match="connect_timeout must be a positive number"):
        connect_ray("127.0.0.1:1", timeout=0)


LOCAL = """
import ray
from ray._raylet import AuthenticationMode, get_authentication_mode
from distglm.connect import connect_ray
assert connect_ray(num_cpus=1)
print("TOKEN", get_authentication_mode() == AuthenticationMode.TOKEN)
ray.shutdown()
"""


@pytest.mark.ray
def test_a_local_ray_has_token_authentication():
    env = {key: value for key, value in os.environ.items()
           if key not in ("RAY_ADDRESS", "RAY_AUTH_MODE")}
    run = subprocess.run([sys.executable, "-c", LOCAL], capture_output=True, text=True, timeout=180, env=env)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "TOKEN True" in run.stdout

