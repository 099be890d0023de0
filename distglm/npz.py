"""NeMoS 0.2.8's ``.npz`` layout: a nested dict flattened into one array per leaf.

Each key spells the path to a leaf as ``container::key`` pairs joined by ``::``, the
container being ``dict``, ``tuple``, ``list`` or ``item`` (the leaf itself), and dict keys
carrying their type (``strkey:coef_``, ``intkey:3``); tuple and list positions are plain
digits. ``None`` is stored as NaN. For example a model's ``regularizer_strength = (0.1, 0.5)``
is stored under ``tuple::strkey:regularizer_strength::item::0`` and ``...::item::1``.

Reading never unpickles and never imports or evaluates a name found in a file.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .errors import InputError

__all__ = ["flatten", "unflatten"]

_SEP = "::"


def _encode_key(key) -> str:
    if isinstance(key, str):
        return f"strkey:{key}"
    if isinstance(key, int) and not isinstance(key, bool):
        return f"intkey:{key}"
    raise InputError(f"only str and int dict keys can be saved; got {key!r}")


def _decode_key(key: str):
    if key.startswith("strkey:"):
        return key[len("strkey:"):]
    if key.startswith("intkey:"):
        return int(key[len("intkey:"):])
    if key.isdigit():
        return int(key)
    raise InputError(f"unreadable key {key!r} in the .npz file: expected 'strkey:...', 'intkey:...' or a position")


def flatten(tree: dict, prefix: str = "") -> dict[str, Any]:
    """Flatten nested dicts and tuples into ``{path: leaf}`` as NeMoS 0.2.8 saves them.

    Examples
    --------
    >>> flatten({"regularizer_strength": (0.1, 0.5), "solver_kwargs": None})
    {'tuple::strkey:regularizer_strength::item::0': 0.1, 'tuple::strkey:regularizer_strength::item::1': 0.5, \
'item::strkey:solver_kwargs': nan}
    """
    out = {}
    in_sequence = isinstance(tree, (tuple, list))
    items = enumerate(tree) if in_sequence else tree.items()
    for key, value in items:
        name = str(key) if in_sequence else _encode_key(key)
        if isinstance(value, dict):
            container = "dict"
        elif isinstance(value, (tuple, list)):
            container = "tuple" if isinstance(value, tuple) else "list"
        else:
            container = "item"
        path = f"{prefix}{_SEP}{container}{_SEP}{name}" if prefix else f"{container}{_SEP}{name}"
        if container == "item":
            out[path] = np.nan if value is None else value
        else:
            out.update(flatten(value, path))
    return out


def _leaf(value: np.ndarray):
    if value.ndim:
        return value
    if value.dtype.kind == "U":
        return str(value)
    if value.dtype.kind == "f" and np.isnan(value):
        return None
    return value.item()


def unflatten(arrays) -> dict:
    """Rebuild the nested dict from ``{path: array}`` (an open ``np.load`` file or a dict).

    0-d arrays become Python scalars or strings and NaN becomes None; other arrays stay arrays.

    Raises
    ------
    InputError
        If a key does not follow the layout.
    """
    root: dict = {}
    kinds: dict[int, str] = {}
    for path in arrays.keys():
        parts = path.split(_SEP)
        if len(parts) % 2 or any(kind not in ("dict", "tuple", "list", "item") for kind in parts[::2]) \
                or parts[-2] != "item":
            raise InputError(f"unreadable key {path!r} in the .npz file: expected 'container::key' pairs "
                             "ending in an 'item'")
        node = root
        for kind, key in zip(parts[:-2:2], parts[1:-2:2]):
            child = node.setdefault(_decode_key(key), {})
            kinds[id(child)] = kind
            node = child
        node[_decode_key(parts[-1])] = _leaf(np.asarray(arrays[path]))

    def rebuild(node):
        if not isinstance(node, dict):
            return node
        kind = kinds.get(id(node), "dict")
        if kind == "dict":
            return {key: rebuild(value) for key, value in node.items()}
        values = [rebuild(node[i]) for i in sorted(node)]
        return tuple(values) if kind == "tuple" else values

    return rebuild(root)
