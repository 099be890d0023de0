"""Records of who works on a store: job records (group attributes) and the store's lease.

The lease makes a store hold one writer at a time. A process that writes inputs or fits takes
it first and gives it back at the end; while it works, a thread renews it. Another process that
finds a lease that is not expired is refused with a message naming the holder. A lease expires
when its holder stops renewing it for ``ttl`` seconds (the holder died, or its machine is gone),
or at once when its holder was a process on this machine that no longer runs; it can also be
broken by hand (:func:`break_lease`, ``distglm unlock PATH``).

The lease is the group ``lease`` whose metadata document, ``lease/zarr.json``, holds the holder
in its attributes. It is created with the store's create-if-absent primitive: atomic on a local
disk (O_EXCL); on object stores a check-then-write, after which the document is read back after
a short pause, so only two processes that race within the store's write latency could both
believe they hold it. The holder renews the lease every ``ttl / 8`` and stops writing when it
has not renewed it for ``ttl / 2``, well before others may take it for expired.
"""

from __future__ import annotations

import datetime
import json
import socket
import threading
import time
import uuid

import psutil
from zarr.errors import BaseZarrError

from distglm.errors import InputError, InputTypeError, StoreError

from . import _zarr
from ._zarr import as_path, open_group

__all__ = ["write_attrs", "read_attrs", "Lease", "acquire_lease", "read_lease", "break_lease", "describe_holder"]

_LEASE_KEY = "lease/zarr.json"
#: Seconds without renewal after which a lease is expired.
DEFAULT_LEASE_TTL_S = 120.0
# Pause between writing a lease and reading it back to learn who holds it.
_SETTLE_S = 0.2


def _check_group_name(group_name) -> str:
    if not isinstance(group_name, str):
        raise InputTypeError(f"group_name must be a str; got {type(group_name).__name__}")
    if not group_name.strip("/"):
        raise InputError(f"group_name must name a group, like 'job'; got {group_name!r}")
    return group_name.strip("/")


def write_attrs(path, group_name, attrs: dict) -> None:
    """Set attributes (small JSON metadata, such as a job's status) on a group of the store.

    The group is created if absent; keys already there and not in ``attrs`` are kept. One
    process at a time should write a given group's attributes.

    Parameters
    ----------
    path : str or os.PathLike
        Local directory or URL of the Zarr group.
    group_name : str
        Group inside the store, for example ``"job"``.
    attrs : dict
        JSON-serialisable values to set.

    Examples
    --------
    >>> import tempfile, numpy as np
    >>> from distglm.store import write_inputs
    >>> path = write_inputs(tempfile.mkdtemp() + "/fit.zarr", np.ones((5, 2)), np.ones((5, 3)))
    >>> write_attrs(path, "job", {"state": "running", "blocks_done": 3})
    >>> read_attrs(path, "job")["blocks_done"]
    3
    """
    path = as_path(path)
    group_name = _check_group_name(group_name)
    if not isinstance(attrs, dict):
        raise InputTypeError(f"attrs must be a dict; got {type(attrs).__name__}")
    attrs = _zarr.json_like(attrs, "attrs")
    root = open_group(path, "r+")
    try:
        group = root.require_group(group_name)
    except (TypeError, BaseZarrError) as err:
        raise StoreError(f"{path}: {group_name} is not a group ({err})") from None
    group.attrs.update(attrs)


def read_attrs(path, group_name) -> dict:
    """Read the attributes of a group of the store; empty if the group does not exist.

    Parameters
    ----------
    path : str or os.PathLike
        Local directory or URL of the Zarr group.
    group_name : str
        Group inside the store, for example ``"job"``.

    Returns
    -------
    dict

    Examples
    --------
    >>> import tempfile, numpy as np
    >>> from distglm.store import write_inputs
    >>> path = write_inputs(tempfile.mkdtemp() + "/fit.zarr", np.ones((5, 2)), np.ones((5, 3)))
    >>> read_attrs(path, "job")
    {}
    """
    path = as_path(path)
    group_name = _check_group_name(group_name)
    group = _zarr.node(open_group(path, "r"), group_name, path)
    return {} if group is None else dict(group.attrs)


# ---------------------------------------------------------------------------------------------
# The lease


def _this_process() -> dict:
    process = psutil.Process()
    return {"host": socket.gethostname(), "pid": process.pid, "pid_started": process.create_time()}


def _read_holder(root) -> dict | None:
    raw = _zarr.get_key(root, _LEASE_KEY)
    if raw is None:
        return None
    try:
        holder = json.loads(raw)["attributes"]["holder"]
        float(holder["renewed_at"]), float(holder["ttl_s"]), str(holder["token"])
    except (ValueError, KeyError, TypeError):
        # A damaged lease protects nothing: it is as good as expired.
        return {"token": None, "damaged": True}
    return holder


def _expired(holder: dict, now: float) -> bool:
    if holder.get("damaged"):
        return True
    if now - float(holder["renewed_at"]) > float(holder["ttl_s"]):
        return True
    if holder.get("host") == socket.gethostname():
        try:
            process = psutil.Process(int(holder["pid"]))
            return abs(process.create_time() - float(holder["pid_started"])) > 1.0
        except (psutil.NoSuchProcess, ValueError, KeyError, TypeError):
            return True
    return False


def _document(holder: dict) -> bytes:
    return json.dumps({"zarr_format": 3, "node_type": "group", "attributes": {"holder": holder}}).encode()


def describe_holder(holder: dict, now: float | None = None) -> str:
    """Who holds a lease, for messages: purpose, process, host, since when, last renewal.

    Parameters
    ----------
    holder : dict
        As :func:`read_lease` returns it.
    now : float, optional
        Seconds since the epoch; default the current time.
    """
    now = time.time() if now is None else now
    return (f"{holder.get('purpose', 'a process')} in process {holder.get('pid')} on {holder.get('host')} "
            f"since {holder.get('acquired_at')} (last renewed {now - float(holder['renewed_at']):.0f} s ago)")


class Lease:
    """A store's lease, held by this process until :meth:`release` (or the ``with`` block ends).

    Attributes
    ----------
    path : str
    holder : dict
        What the lease document says of this process: token, host, pid, purpose, times.
    """

    def __init__(self, path: str, root, holder: dict):
        self.path, self._root, self.holder = path, root, holder
        self._stop = threading.Event()
        self._lost = threading.Event()
        self._thread = threading.Thread(target=self._renew, name="distglm-lease", daemon=True)
        self._thread.start()

    def _renew(self) -> None:
        ttl = float(self.holder["ttl_s"])
        while not self._stop.wait(ttl / 8):
            try:
                current = _read_holder(self._root)
                if current is None or current.get("token") != self.holder["token"]:
                    self._lost.set()
                    return
                renewed = {**self.holder, "renewed_at": time.time()}
                _zarr.put_key(self._root, _LEASE_KEY, _document(renewed))
                self.holder = renewed
            except Exception:  # noqa: BLE001 - a store briefly unreachable; the lease may still hold
                continue

    @property
    def lost(self) -> bool:
        """Whether the lease was broken or taken by another process, or was not renewed in time.

        The holder gives up at half the lease's ``ttl`` without a renewal, well before any other
        process may take the lease for expired.
        """
        stale = time.time() - float(self.holder["renewed_at"]) > float(self.holder["ttl_s"]) / 2
        return self._lost.is_set() or stale

    def check(self) -> None:
        """Raise StoreError if the lease was lost: this process must stop writing the store."""
        if self.lost:
            raise StoreError(f"{self.path}: this process lost the store's lease (it was broken, or could not be "
                             "renewed in time); stopped writing so that two writers never mix their results")

    def release(self) -> None:
        """Give the lease back (only if this process still holds it)."""
        self._stop.set()
        # bounded: a renewal stuck on an unreachable store must not hold the process
        self._thread.join(timeout=float(self.holder["ttl_s"]) / 4)
        try:
            current = _read_holder(self._root)
            if current is not None and current.get("token") == self.holder["token"]:
                _zarr.delete_key(self._root, _LEASE_KEY)
        except Exception:  # noqa: BLE001 - a lease not given back expires on its own
            pass

    def __enter__(self) -> "Lease":
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def acquire_lease(path, purpose: str, *, ttl: float = DEFAULT_LEASE_TTL_S) -> Lease:
    """Take the store's lease for ``purpose``, or refuse if another live process holds it.

    On a local disk the lease is created atomically. On object stores two processes that try
    within the same fraction of a second could both succeed; the document is read back after a
    short pause, which narrows that window to the object store's own latency.

    Parameters
    ----------
    path : str or os.PathLike
        Local directory or URL of an existing Zarr group.
    purpose : str
        What the lease is for, shown to a refused process (``"fit"``, ``"write_inputs"``).
    ttl : float, optional
        Seconds without renewal after which the lease expires; renewed every ``ttl / 4``.

    Returns
    -------
    Lease

    Raises
    ------
    StoreError
        If another process holds a lease that has not expired; the message names it.

    Examples
    --------
    >>> import tempfile, numpy as np
    >>> from distglm.store import write_inputs
    >>> path = write_inputs(tempfile.mkdtemp() + "/fit.zarr", np.ones((5, 2)), np.ones((5, 3)))
    >>> with acquire_lease(path, "fit") as lease:
    ...     read_lease(path)["purpose"]
    'fit'
    >>> read_lease(path) is None
    True
    """
    path = as_path(path)
    if not isinstance(purpose, str) or not purpose:
        raise InputTypeError(f"purpose must be a non-empty str; got {purpose!r}")
    if isinstance(ttl, bool) or not isinstance(ttl, (int, float)) or not ttl > 0:
        raise InputError(f"ttl must be a positive number of seconds; got {ttl!r}")
    root = open_group(path, "r+")
    token = uuid.uuid4().hex
    now = time.time()
    current = _read_holder(root)
    if current is not None:
        if not _expired(current, now):
            raise StoreError(
                f"{path} is in use by {describe_holder(current, now)}; a store takes one writer at a time. "
                f"Wait for it to end, or if that process is gone, break its lease with: distglm unlock {path}"
            )
        # Remove the expired lease only if it is still the one found: another process may have
        # taken over since.
        if (_read_holder(root) or {}).get("token") == current.get("token"):
            _zarr.delete_key(root, _LEASE_KEY)
    holder = {
        "token": token, "purpose": purpose, **_this_process(), "ttl_s": float(ttl), "renewed_at": now,
        "acquired_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }
    _zarr.put_key(root, _LEASE_KEY, _document(holder), exclusive=True)
    # Let a racing writer's document land (object stores check, then write), then see who won.
    time.sleep(_SETTLE_S)
    winner = _read_holder(root)
    if winner is None or winner.get("token") != token:
        raise StoreError(f"{path}: another process took the store's lease at the same moment"
                         + (f" ({describe_holder(winner, time.time())})" if winner and "pid" in winner else ""))
    return Lease(path, root, holder)


def read_lease(path) -> dict | None:
    """The holder of the store's lease, with ``expired`` (bool), or None if nobody holds it.

    Parameters
    ----------
    path : str or os.PathLike
        Local directory or URL of the Zarr group.

    Returns
    -------
    dict or None
        ``purpose``, ``host``, ``pid``, ``acquired_at``, ``renewed_at`` (seconds since the
        epoch), ``ttl_s`` and ``expired``.
    """
    path = as_path(path)
    holder = _read_holder(open_group(path, "r"))
    if holder is None:
        return None
    return {**holder, "expired": _expired(holder, time.time())}


def break_lease(path, token: str | None = None) -> dict | None:
    """Remove the store's lease; return the holder it had, or None if there was none.

    For a lease whose holder is gone on another machine and that has not expired yet. A live
    holder notices at its next renewal and stops writing.

    Parameters
    ----------
    path : str or os.PathLike
        Local directory or URL of the Zarr group.
    token : str, optional
        Break the lease only if it is still this one (as :func:`read_lease` returned it), so
        that a lease taken by another process in between is left alone.
    """
    path = as_path(path)
    root = open_group(path, "r+")
    holder = _read_holder(root)
    if holder is not None and (token is None or holder.get("token") == token):
        _zarr.delete_key(root, _LEASE_KEY)
        return holder
    return None
