"""The driver's check of a store's inputs, kept while the input files stay unchanged.

Before a fit, the driver reads every stored value of X and y (``scheduler._scan_inputs``): it
checks them (finite, within the float type's range and the family's support), finds the
samples to drop and the narrowest integer type that holds the counts, and digests the content
(results record the digest, so results of other inputs are never resumed). On a large store
this is a real share of the fit: it reads all of y. Its outcome depends only on the stored
bytes, the observation family and the float type, so the driver keeps it on local disk with a
signature of the input files: the inode, size, modification and change times of every file
under the store's ``inputs/``. Any write to a file, or its replacement, moves its change time
(which no program can set back), so the next fit sees another signature and reads the inputs
again. A check whose input files changed less than ``SETTLE_S`` before it began is not kept:
file systems keep times in coarse ticks, and a later write within the same tick would not
show.

Where the checks are kept: the ``DISTGLM_SCAN_CACHE`` environment variable (the empty string
turns this off), by default ``$XDG_CACHE_HOME/distglm/scans`` (``~/.cache/distglm/scans``).
Only stores on a local file system have a signature; a remote store is read by every fit.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import tempfile
import time

import numpy as np

__all__ = ["ENV_VAR", "MAX_ENTRIES", "SETTLE_S", "cache_dir", "signature", "load", "save"]

ENV_VAR = "DISTGLM_SCAN_CACHE"

# How long before a check its input files must have last changed for it to be kept.
SETTLE_S = 2.0

# Bumped when what a check finds, or how, changes: earlier entries are then never read.
_FORMAT = 1

# The most checks kept; past it, the least recently written go.
MAX_ENTRIES = 256

_log = logging.getLogger(__name__)


def cache_dir() -> str | None:
    """The directory of kept checks, or None when turned off (``DISTGLM_SCAN_CACHE=""``)."""
    path = os.environ.get(ENV_VAR)
    if path is None:
        base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
        path = os.path.join(base, "distglm", "scans")
    return path or None


@dataclasses.dataclass(frozen=True)
class Signature:
    """The state of a local store's input files: ``value`` (a digest of every file's inode, size,
    modification and change times) and ``newest_ns``, the latest change time among them (which
    ``value`` covers: signatures compare by ``value`` alone)."""

    value: str
    newest_ns: int = dataclasses.field(compare=False)


def signature(path: str) -> Signature | None:
    """The signature of the files under ``path/inputs``; None for a URL, a store without them, or
    inputs holding a symbolic link (read by every fit)."""
    if "://" in path:
        return None
    root = os.path.join(path, "inputs")
    entries, newest = [], 0
    try:
        stack = [root]
        while stack:
            with os.scandir(stack.pop()) as found:
                for entry in found:
                    if entry.is_symlink():
                        # what a link points to can change without a trace here
                        return None
                    if entry.is_dir(follow_symlinks=False):
                        stack.append(entry.path)
                        continue
                    st = entry.stat(follow_symlinks=False)
                    entries.append((os.path.relpath(entry.path, root), st.st_ino, st.st_size, st.st_mtime_ns,
                                    st.st_ctime_ns))
                    newest = max(newest, st.st_mtime_ns, st.st_ctime_ns)
    except OSError:
        return None
    if not entries:
        return None
    entries.sort()
    return Signature(hashlib.sha256(json.dumps(entries).encode()).hexdigest(), newest)


def _entry(path: str, key: tuple) -> str | None:
    where = cache_dir()
    if where is None:
        return None
    name = hashlib.sha256(json.dumps([_FORMAT, os.path.realpath(path), *key]).encode()).hexdigest()[:40]
    return os.path.join(where, name + ".npz")


def load(path: str, key: tuple, sig: Signature | None) -> dict | None:
    """The check kept for the store ``path`` and ``key`` when its signature is ``sig``, else None.

    Returns a dict of ``keep`` and ``y_ok`` (bool arrays of shape (n_samples,)), ``digest``
    and ``counts_dtype`` (str or None), as ``scheduler._scan_inputs`` found them.
    """
    entry = None if sig is None else _entry(path, key)
    if entry is None or not os.path.exists(entry):
        return None
    try:
        with np.load(entry, allow_pickle=False) as kept:
            if str(kept["signature"]) != sig.value:
                return None
            n = int(kept["n_samples"])
            counts = str(kept["counts_dtype"])
            return {"keep": np.unpackbits(kept["keep"], count=n).astype(bool),
                    "y_ok": np.unpackbits(kept["y_ok"], count=n).astype(bool),
                    "digest": str(kept["digest"]), "counts_dtype": counts or None}
    except Exception as err:  # noqa: BLE001 - a damaged entry is read again from the store
        _log.debug("kept check %s unreadable (%s): the inputs are read again", entry, err)
        return None


def save(path: str, key: tuple, sig: Signature | None, began_ns: int, keep: np.ndarray, y_ok: np.ndarray,
         digest: str, counts_dtype: str | None) -> bool:
    """Keep a check of the store ``path`` for ``key``, made from inputs of signature ``sig``
    (taken before and after the check, and equal) that began at ``began_ns`` (``time.time_ns``).

    Not kept (False) without a signature, when the cache is off or cannot be written, or when
    an input file changed less than ``SETTLE_S`` before the check began.
    """
    entry = None if sig is None else _entry(path, key)
    if entry is None or sig.newest_ns > began_ns - int(SETTLE_S * 1e9):
        return False
    try:
        os.makedirs(os.path.dirname(entry), exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=os.path.dirname(entry), suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as f:
                np.savez(f, signature=np.array(sig.value), n_samples=np.array(len(keep)),
                         keep=np.packbits(keep), y_ok=np.packbits(y_ok), digest=np.array(digest),
                         counts_dtype=np.array(counts_dtype or ""), saved=np.array(time.time()))
            os.replace(tmp, entry)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
    except OSError as err:
        _log.debug("check of %s not kept (%s)", path, err)
        return False
    _prune(os.path.dirname(entry))
    return True


def _prune(where: str) -> None:
    """Remove the least recently written checks beyond ``MAX_ENTRIES``."""
    try:
        with os.scandir(where) as found:
            entries = sorted((e.stat().st_mtime_ns, e.path) for e in found if e.name.endswith(".npz"))
        for _, old in entries[:max(0, len(entries) - MAX_ENTRIES)]:
            os.unlink(old)
    except OSError:
        pass
