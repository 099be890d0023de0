"""Kill a real process at a chosen point of its store writes, for the tests of interrupted runs.

``PRELUDE`` is Python source run first by a test's subprocess. It reads a crash plan from the
environment variable ``DISTGLM_TEST_CRASH`` and wraps one primitive of Zarr's local store so
that the process SIGKILLs itself there, as a power cut or an impatient ``kill -9`` would:

- ``{"op": "set", "match": "inputs/y/c", "after": 3}``: killed just before the 4th write of a
  key containing ``match``;
- ``{"op": "get", "match": "inputs/y/c", "after": 1}``: killed before the 2nd read;
- ``{"op": "delete_dir", "match": "results", "after": 5}``: the first recursive delete of a
  prefix containing ``match`` removes 5 of its files (in sorted key order, as object stores
  delete) and then the process is killed, leaving the rest.

Nothing else of the process is changed: the store, Zarr and (where used) Ray are the real ones.
"""

import json
import os
import signal
import subprocess
import sys

PRELUDE = r'''
import json as _json, os as _os, signal as _signal
import zarr.storage as _storage

_PLAN = _json.loads(_os.environ["DISTGLM_TEST_CRASH"])
_SEEN = [0]
_ORIGINAL = getattr(_storage.LocalStore, _PLAN["op"])


def _die():
    _os.kill(_os.getpid(), _signal.SIGKILL)


async def _crashing(self, key, *args, **kwargs):
    if _PLAN["match"] in key:
        if _PLAN["op"] == "delete_dir":
            files = sorted(_os.path.join(d, f) for d, _, names in _os.walk(self.root / key) for f in names)
            for name in files[:_PLAN["after"]]:
                _os.remove(name)
            _die()
        _SEEN[0] += 1
        if _SEEN[0] > _PLAN["after"]:
            _die()
    return await _ORIGINAL(self, key, *args, **kwargs)


setattr(_storage.LocalStore, _PLAN["op"], _crashing)
'''


def run_crashing(script: str, plan: dict, *args, timeout: float = 240):
    """Run ``script`` (after ``PRELUDE``) in a fresh interpreter with ``plan``; return the process.

    The subprocess gets a fresh local Ray if it starts one (``RAY_ADDRESS`` is removed).
    """
    env = dict(os.environ, DISTGLM_TEST_CRASH=json.dumps(plan))
    env.pop("RAY_ADDRESS", None)
    # Its own session, so that whatever it started (a local Ray) is removed with it afterwards.
    process = subprocess.Popen([sys.executable, "-c", PRELUDE + script, *map(str, args)], env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        stdout, stderr = process.communicate(timeout=timeout)
    finally:
        try:
            os.killpg(process.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
    return subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)
