"""Reaching a Ray cluster: address forms, authentication tokens and time limits.

One piece of code for every way distglm talks to a cluster: :func:`connect_ray` (the driver of
:func:`distglm.fit` joins a cluster, or starts a local Ray) and the Jobs API client of
:mod:`distglm.submit` (through :func:`dashboard_url`, :func:`auth_token` and :func:`bounded`).

Addresses:

- ``distglm.fit`` joins a cluster as a driver: ``HOST:PORT`` (the cluster's GCS, port 6379 by
  default) or ``ray://HOST:PORT`` (the Ray client server, port 10001). An ``http(s)://`` address
  is the dashboard, which only job submission uses; it is refused with the right form named.
- ``distglm.submit`` talks to the dashboard: see :func:`dashboard_url`.

Every connection is bounded in time: the address is first probed with a plain TCP connection
(so "nothing listens there" is reported at once, with its cause), then ``ray.init`` is given
``timeout`` seconds (default 30, or ``DISTGLM_CONNECT_TIMEOUT``). Clusters with token
authentication (Ray's default for new clusters) are reached with the token in
``RAY_AUTH_TOKEN``, the file named by ``RAY_AUTH_TOKEN_PATH``, or ``~/.ray/auth_token``.

A local Ray started here runs without a dashboard and with Ray's token authentication (on by
default for new local clusters since Ray 2.52, which distglm requires): Ray binds its servers to
the machine's address, which no setting of Ray restricts to loopback, so the token is what keeps
other machines out.
"""

from __future__ import annotations

import contextlib
import os
import socket
import threading
from typing import Callable

from .errors import ClusterError, InputError, InputTypeError

__all__ = ["DEFAULT_CONNECT_TIMEOUT_S", "auth_token", "bounded", "dashboard_url", "connect_ray", "one_line"]

#: Seconds ``connect_ray`` waits for a cluster, unless ``DISTGLM_CONNECT_TIMEOUT`` says otherwise.
DEFAULT_CONNECT_TIMEOUT_S = 30.0
_DASHBOARD_PORT = 8265
_GCS_PORT = 6379
_CLIENT_PORT = 10001
_DEFAULT_DASHBOARD = "http://127.0.0.1:8265"
# Ports that name a cluster rather than its dashboard: the GCS and the Ray client server.
_CLUSTER_PORTS = (str(_GCS_PORT), str(_CLIENT_PORT))
_TOKEN_PLACES = "RAY_AUTH_TOKEN, the file named by RAY_AUTH_TOKEN_PATH, or ~/.ray/auth_token"


def one_line(err: BaseException) -> str:
    """An exception as one short line: its type and its first non-empty line."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    return f"{type(err).__name__}: {lines[0] if lines else ''}"[:500]


def auth_token() -> str | None:
    """The cluster's authentication token, from the places Ray itself reads it, or None."""
    token = os.environ.get("RAY_AUTH_TOKEN")
    if token:
        return token.strip()
    path = os.environ.get("RAY_AUTH_TOKEN_PATH") or os.path.join(os.path.expanduser("~"), ".ray", "auth_token")
    try:
        with open(path) as handle:
            return handle.read().strip() or None
    except OSError:
        return None


def bounded(call: Callable, timeout: float, on_timeout: Callable[[], Exception]):
    """Run ``call()`` and return its value, or raise ``on_timeout()`` after ``timeout`` seconds.

    The call runs in a daemon thread: one stuck on a dead host must not keep the interpreter
    alive. Its own exceptions are raised here.
    """
    outcome = {}

    def target():
        try:
            outcome["value"] = call()
        except BaseException as err:  # noqa: BLE001 - re-raised in the calling thread
            outcome["error"] = err

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(timeout)
    if thread.is_alive():
        raise on_timeout()
    if "error" in outcome:
        raise outcome["error"]
    return outcome["value"]


def _split(address: str) -> tuple[str, str, str]:
    """``(scheme, host, port)`` of an address; scheme and port may be empty."""
    scheme, sep, rest = address.partition("://")
    if not sep:
        scheme, rest = "", address
    host, colon, port = rest.rstrip("/").rpartition(":")
    if not colon or "]" in port:
        host, port = rest.rstrip("/"), ""
    return scheme, host, port


def dashboard_url(address: str | None = None) -> str:
    """The URL of the Ray dashboard that serves the Jobs API of the cluster at ``address``.

    Parameters
    ----------
    address : str, optional
        ``http(s)://HOST:PORT`` (the dashboard), ``ray://HOST[:PORT]`` or ``HOST:6379`` (the
        cluster: its dashboard at HOST:8265), or another ``HOST:PORT`` (a dashboard). Default
        ``RAY_ADDRESS``, else ``http://127.0.0.1:8265``.

    Returns
    -------
    str

    Examples
    --------
    >>> dashboard_url("10.0.0.5:6379"), dashboard_url("http://head:8265/")
    ('http://10.0.0.5:8265', 'http://head:8265')
    """
    if address is None:
        address = os.environ.get("RAY_ADDRESS") or _DEFAULT_DASHBOARD
    if not isinstance(address, str) or not address.strip():
        raise InputTypeError(f"address must be a non-empty str like 'http://HEAD:8265'; got {address!r}")
    address = address.strip().rstrip("/")
    scheme, host, port = _split(address)
    if scheme in ("http", "https"):
        return address
    if scheme not in ("", "ray"):
        raise InputError(f"address must be http(s)://HOST:PORT (the Ray dashboard), ray://HOST or HOST:PORT; "
                         f"got {address!r}")
    if not host:
        raise InputError(f"address {address!r} names no host")
    if scheme == "ray" or port in ("",) + _CLUSTER_PORTS:
        port = str(_DASHBOARD_PORT)
    return f"http://{host}:{port}"


def _actor_lines_wanted() -> bool:
    # Actors' output reaches this process (and a job's log) only when it logs distglm's progress.
    from .logs import enabled_level

    return enabled_level() is not None


@contextlib.contextmanager
def _ray_process_environment():
    """glibc's arena limit (``actor.ACTOR_ENV``) in this process's environment while it starts a
    local Ray, so that Ray's processes, the workers that become actors among them, inherit it.

    glibc reads it once, when a process starts; an actor that finds it unset sets the limit with
    ``mallopt``, which leaves the arenas its worker made before in use (about 100 MB more at the
    peak of a 10,000-neuron fit's actors). A value already set here is kept, and nothing else of
    this process's environment changes.
    """
    from .actor import ACTOR_ENV

    key = "MALLOC_ARENA_MAX"
    added = key not in os.environ
    if added:
        os.environ[key] = ACTOR_ENV[key]
    try:
        yield
    finally:
        if added:
            os.environ.pop(key, None)


def _driver_address(address: str) -> tuple[str, str, int]:
    """``(address for ray.init, host, port)`` of a cluster address given to ``distglm.fit``."""
    if not isinstance(address, str) or not address.strip():
        raise InputTypeError(f"address must be a non-empty str like 'HOST:6379'; got {address!r}")
    address = address.strip()
    scheme, host, port = _split(address)
    if scheme in ("http", "https"):
        raise InputError(
            f"{address!r} is a Ray dashboard address, which distglm.submit uses; distglm.fit connects to the "
            "cluster itself: give its GCS address (HOST:6379) or a Ray client address (ray://HOST:10001) "
            "(on the command line: distglm fit PATH --address HOST:6379)"
        )
    if scheme not in ("", "ray"):
        raise InputError(f"address must be HOST:PORT (the cluster's GCS) or ray://HOST:PORT; got {address!r}")
    if not host:
        raise InputError(f"address {address!r} names no host")
    try:
        number = int(port) if port else (_CLIENT_PORT if scheme == "ray" else _GCS_PORT)
    except ValueError:
        raise InputError(f"address {address!r} has a port that is not a number: {port!r}") from None
    full = f"{scheme}://{host}:{number}" if scheme else f"{host}:{number}"
    return full, host.strip("[]"), number


def _probe(address: str, host: str, port: int, timeout: float) -> None:
    """Open and close a TCP connection to ``host:port``; raise ClusterError naming the cause."""
    try:
        with socket.create_connection((host, port), timeout=min(timeout, 10.0)):
            return
    except socket.gaierror as err:
        cause = f"the host name {host!r} does not resolve ({err.strerror or err})"
    except ConnectionRefusedError:
        cause = f"nothing listens at {host}:{port} (connection refused)"
    except (TimeoutError, socket.timeout):
        cause = f"{host}:{port} did not answer within {min(timeout, 10.0):.0f} s (no route, or a firewall)"
    except OSError as err:
        cause = f"{host}:{port} cannot be reached ({err.strerror or err})"
    raise ClusterError(f"cannot connect to the Ray cluster at {address!r}: {cause}. Is the cluster running, "
                       "and is this its GCS address (HOST:6379) or Ray client address (ray://HOST:10001)?")


def _timeout(timeout) -> float:
    if timeout is None:
        text = os.environ.get("DISTGLM_CONNECT_TIMEOUT")
        if not text:
            return DEFAULT_CONNECT_TIMEOUT_S
        try:
            timeout = float(text)
        except ValueError:
            raise InputError(f"DISTGLM_CONNECT_TIMEOUT must be a number of seconds; got {text!r}") from None
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not timeout > 0:
        raise InputError(f"connect_timeout must be a positive number of seconds; got {timeout!r}")
    return float(timeout)


def connect_ray(address: str | None = None, *, num_cpus: int | None = None, timeout: float | None = None) -> bool:
    """Join the Ray cluster at ``address`` (or ``RAY_ADDRESS``), or start a local Ray.

    Parameters
    ----------
    address : str, optional
        ``HOST:PORT`` or ``ray://HOST:PORT``; default ``RAY_ADDRESS``, else a local Ray.
    num_cpus : int, optional
        CPUs of a local Ray; default all of this machine's.
    timeout : float, optional
        Seconds to wait for the cluster; default ``DISTGLM_CONNECT_TIMEOUT`` or 30.

    Returns
    -------
    bool
        True when this call started Ray (a local one, or a connection) that the caller must
        shut down; False when Ray was already initialised in this process.

    Raises
    ------
    ClusterError
        If the cluster cannot be reached in time, or refuses the connection (the message says
        why: nothing listening, no token, timed out).
    """
    import ray

    if ray.is_initialized():
        return False
    timeout = _timeout(timeout)
    address = address or os.environ.get("RAY_ADDRESS") or None
    if address is None:
        with _ray_process_environment():
            ray.init(num_cpus=num_cpus or os.cpu_count(), include_dashboard=False, log_to_driver=_actor_lines_wanted())
        return True
    if address == "auto":
        # Ray finds the cluster this machine belongs to; there is no address to probe.
        full, host, port = address, "this machine's cluster", 0
    else:
        full, host, port = _driver_address(address)
        _probe(full, host, port, timeout)
    token = auth_token()
    if token is not None and not os.environ.get("RAY_AUTH_MODE"):
        # A driver sends its token only in token mode; a cluster without authentication
        # ignores it, so a token found is always offered.
        os.environ["RAY_AUTH_MODE"] = "token"
        os.environ.setdefault("RAY_AUTH_TOKEN", token)
        # Ray reads its configuration once, when its core is loaded: have it read it again.
        from ray._raylet import Config

        Config.initialize("")
    from ray.exceptions import AuthenticationError

    def on_timeout():
        return ClusterError(f"cannot connect to the Ray cluster at {full!r}: something listens at {host}:{port} "
                            f"but did not answer as a Ray cluster within {timeout:.0f} s (set "
                            "DISTGLM_CONNECT_TIMEOUT or connect_timeout= to wait longer)")

    try:
        bounded(lambda: ray.init(address=full, log_to_driver=_actor_lines_wanted()), timeout, on_timeout)
    except ClusterError:
        raise
    except AuthenticationError as err:
        found = "the token found there was refused" if auth_token() else "none was found there"
        raise ClusterError(f"the Ray cluster at {full!r} requires an authentication token: it is read from "
                           f"{_TOKEN_PLACES}, and {found} ({one_line(err)})") from None
    except Exception as err:  # noqa: BLE001 - any other failure to join is reported with its cause
        hint = "" if token else (f"; no authentication token was found in {_TOKEN_PLACES}, and a cluster with "
                                 "token authentication refuses drivers without one")
        raise ClusterError(f"cannot connect to the Ray cluster at {full!r}: {one_line(err)}{hint}") from None
    return True
