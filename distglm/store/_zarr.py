"""What every part of the store shares: opening groups and arrays safely, clear read errors.

Every array distglm reads goes through :func:`array`, which refuses codecs that could run code
(a pickle codec in a crafted store) before a single chunk is decoded, and every chunk read goes
through :func:`read`, which turns a corrupted chunk into a :class:`StoreError` naming the array.
Small JSON documents that must be created atomically (the store's lease) are read and written
as raw keys of the store through :func:`get_key`, :func:`put_key` and :func:`delete_key`.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import threading
from importlib import metadata as package_metadata

import numpy as np
import zarr
from zarr.errors import BaseZarrError

from distglm.errors import InputError, InputTypeError, StoreError
from distglm.plan import _check_int

NUMERIC_KINDS = "biuf"
# Codecs that only reorder, check or (de)compress bytes. Anything else (numcodecs' pickle,
# msgpack or JSON object codecs, or a codec unknown to this list) is refused before any chunk is
# decoded: a store is data, and reading it must never run code from it.
_SAFE_CODECS = frozenset({
    "bytes", "endian", "transpose", "crc32c", "sharding_indexed", "zstd", "gzip", "blosc",
    "zlib", "lz4", "bz2", "lzma", "shuffle", "delta", "bitround", "numcodecs.zstd",
    "numcodecs.gzip", "numcodecs.blosc", "numcodecs.zlib", "numcodecs.lz4", "numcodecs.bz2",
    "numcodecs.lzma", "numcodecs.shuffle", "numcodecs.delta", "numcodecs.crc32",
    # UTF-8 strings of coordinate arrays (neuron ids, feature names): decoded as text, never as objects
    "vlen-utf8",
})
# Data types of coordinate arrays besides numbers: Zarr v3's variable-length UTF-8 string.
_LABEL_DTYPES = frozenset({"string"})


def as_path(path) -> str:
    if isinstance(path, os.PathLike):
        path = os.fspath(path)
    if not isinstance(path, str):
        raise InputTypeError(
            f"path must be a str (a directory or a URL) or os.PathLike; got {type(path).__name__}"
        )
    return path


def _describe(err: BaseException) -> str:
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    return f"{type(err).__name__}: {lines[0] if lines else ''}"[:300]


# fsspec options (credentials, endpoints) for store URLs, held by this process only: never written
# into a store, a job record or a log.
_STORAGE_OPTIONS: dict[str, dict] = {}
_STORAGE_OPTIONS_LOCK = threading.Lock()


def check_storage_options(storage_options) -> dict | None:
    if storage_options is not None and not isinstance(storage_options, dict):
        raise InputTypeError("storage_options must be a dict of fsspec options (as for fsspec.filesystem) or "
                             f"None; got {type(storage_options).__name__}")
    return storage_options or None


@contextlib.contextmanager
def using_storage_options(path, options):
    """Open the store at URL ``path`` with the fsspec ``options`` in this process while inside.

    Every store function opens the store anew by its path; this is how the options reach them
    without being stored anywhere. Local paths take no options.
    """
    options = check_storage_options(options)
    path = as_path(path)
    if options is not None and "://" not in path:
        raise InputError(f"storage_options are for URLs of fsspec stores (s3://, gs://, ...); got the local path {path}")
    if options is None:
        yield
        return
    with _STORAGE_OPTIONS_LOCK:
        previous = _STORAGE_OPTIONS.get(path)
        _STORAGE_OPTIONS[path] = options
    try:
        yield
    finally:
        with _STORAGE_OPTIONS_LOCK:
            if previous is None:
                _STORAGE_OPTIONS.pop(path, None)
            else:
                _STORAGE_OPTIONS[path] = previous


def with_storage_options(function):
    """Decorate ``function(path, ..., storage_options=None)`` to run with the store opened with them."""

    @functools.wraps(function)
    def opened(path, *args, storage_options=None, **kwargs):
        path = os.fspath(path) if isinstance(path, os.PathLike) else path
        with using_storage_options(path, storage_options):
            return function(path, *args, storage_options=storage_options, **kwargs)

    return opened


def open_group(path: str, mode: str) -> zarr.Group:
    with _STORAGE_OPTIONS_LOCK:
        options = _STORAGE_OPTIONS.get(path)
    try:
        # Consolidated metadata would go stale as soon as results are added, so never use it.
        return zarr.open_group(path, mode=mode, use_consolidated=False,
                               **({} if options is None else {"storage_options": options}))
    except (OSError, KeyError, BaseZarrError) as err:
        raise StoreError(
            f"{path} is not a distglm store: no Zarr group at {path} ({err})"
        ) from err
    except json.JSONDecodeError as err:
        raise StoreError(f"{path}: the store's zarr.json is corrupted ({err})") from None
    except Exception as err:  # noqa: BLE001 - remote backends raise their own kinds (botocore, ...)
        raise StoreError(f"cannot read the store {path}: {_describe(err)}") from err


def node(group: zarr.Group, name: str, path: str):
    """``group[name]``, or None when absent; a corrupted metadata document is a StoreError."""
    try:
        return group[name]
    except KeyError:
        return None
    except Exception as err:  # noqa: BLE001 - JSON, codec and backend errors all mean unreadable
        raise StoreError(f"{path}: the metadata of {name} cannot be read ({_describe(err)}); the store "
                         "is damaged: write it again") from None


def contains(group: zarr.Group, name: str, path: str) -> bool:
    return node(group, name, path) is not None


def _codec_names(metadata: dict) -> list[str]:
    """Every codec named in an array's metadata document, sharding's inner codecs included."""
    names = []

    def walk(codecs):
        for codec in codecs or ():
            if not isinstance(codec, dict):
                names.append(repr(codec))
                continue
            names.append(str(codec.get("name", codec.get("id"))))
            configuration = codec.get("configuration") or {}
            walk(configuration.get("codecs"))
            walk(configuration.get("index_codecs"))

    walk(metadata.get("codecs"))  # Zarr v3
    walk(metadata.get("filters"))  # Zarr v2
    walk([metadata["compressor"]] if metadata.get("compressor") else [])
    return names


def _raw_metadata(group: zarr.Group, name: str) -> list[dict]:
    """Every metadata document stored for an array (Zarr v3 ``zarr.json``, v2 ``.zarray``), unparsed.

    Both are returned when both exist: which one Zarr reads depends on the hierarchy, so both
    are checked. A document that cannot be read or parsed is an error: nothing unchecked is
    handed to Zarr.
    """
    documents = []
    for document in ("zarr.json", ".zarray"):
        try:
            raw = get_key(group, f"{name}/{document}")
            found = None if raw is None else json.loads(raw)
        except Exception as err:  # noqa: BLE001 - unreadable or not JSON: refused either way
            raise StoreError(f"the metadata of {name} cannot be read ({_describe(err)}); the store is damaged: "
                             "write it again") from None
        if found is not None:
            documents.append(found if isinstance(found, dict) else {"codecs": [repr(found)]})
    return documents


def check_safe(group: zarr.Group, name: str, path: str) -> None:
    """Refuse an array whose dtype or codecs could run code or hold Python objects.

    The codecs are read from the stored metadata document before Zarr parses it, so a codec is
    refused whether or not some library registered it in this process.
    """
    try:
        documents = _raw_metadata(group, name)
    except StoreError as err:
        raise StoreError(f"{path}: {err}") from None
    unsafe = sorted({codec for metadata in documents for codec in _codec_names(metadata)
                     if codec.lower() not in _SAFE_CODECS})
    for metadata in documents:
        dtype = metadata.get("data_type", metadata.get("dtype"))
        if isinstance(dtype, (dict, list)) or (isinstance(dtype, str) and "O" in dtype):
            raise StoreError(f"{path}: {name} must be numeric; got data type {dtype!r}")
    if unsafe:
        raise StoreError(
            f"{path}: {name} uses the codec(s) {unsafe}, which distglm does not read (they can run "
            f"code or hold Python objects); it reads only {sorted(c for c in _SAFE_CODECS if '.' not in c)}"
        )


def array(group: zarr.Group, name: str, path: str, hint: str) -> zarr.Array:
    check_safe(group, name, path)
    found = node(group, name, path)
    if found is None:
        raise StoreError(f"{path} has no {name} array; {hint}")
    if not isinstance(found, zarr.Array):
        raise StoreError(f"{path}: {name} is a group; expected an array")
    if np.dtype(found.dtype).kind not in NUMERIC_KINDS:
        raise StoreError(f"{path}: {name} must be numeric; got dtype {found.dtype}")
    return found


def labels(group: zarr.Group, name: str, path: str, length: int) -> np.ndarray | None:
    """A coordinate array (numbers or strings) of ``length`` entries, or None when the store has none.

    Stores written before coordinates were recorded have none; callers fall back to positions.
    """
    if node(group, name, path) is None:
        return None
    check_safe(group, name, path)
    found = node(group, name, path)
    kind = np.dtype(found.dtype).kind if isinstance(found, zarr.Array) else None
    data_types = {str(document.get("data_type")) for document in _raw_metadata(group, name)}
    if kind is None or not (kind in NUMERIC_KINDS or data_types <= _LABEL_DTYPES):
        raise StoreError(f"{path}: {name} must be a 1-D array of numbers or strings; got {found!r}")
    if found.shape != (length,):
        raise StoreError(f"{path}: {name} must have shape ({length},), one entry per index; got {found.shape}")
    values = read(found, Ellipsis, name, path)
    return np.array(values.tolist(), dtype=str) if kind not in NUMERIC_KINDS else values


def write_coordinate(group: zarr.Group, name: str, values, attributes: dict, dimension: str | None = None) -> None:
    """Write a 1-D coordinate array ``name`` along ``dimension`` (by default the dimension ``name``).

    xarray takes an array named as its only dimension for that dimension's index. Strings are
    stored as Zarr v3 variable-length UTF-8 strings, numbers as they are.
    """
    values = np.asarray(values)
    dtype = str if values.dtype.kind in "OUST" else values.dtype
    # chunks of at most a million entries: a long recording's time index is read in pieces
    coordinate = group.create_array(name, shape=values.shape, dtype=dtype, chunks=(min(values.size, 2**20),),
                                     dimension_names=(dimension or name,), attributes=attributes)
    coordinate[...] = values.astype(str) if dtype is str else values


def software_versions() -> dict:
    """The versions of distglm and of the libraries whose behaviour a store depends on."""
    import distglm

    versions = {"distglm": distglm.__version__, "zarr": zarr.__version__, "numpy": np.__version__}
    # read from the package metadata: the store never imports JAX
    try:
        versions["jax"] = package_metadata.version("jax")
    except package_metadata.PackageNotFoundError:
        versions["jax"] = None
    return versions


def read(values: zarr.Array, selection, name: str, path: str) -> np.ndarray:
    """``values[selection]`` as a numpy array; an undecodable chunk is a StoreError naming ``name``."""
    try:
        return np.asarray(values[selection])
    except Exception as err:  # noqa: BLE001 - codecs and backends raise many kinds
        raise StoreError(f"{path}: {name} cannot be read: a chunk is corrupted or missing "
                         f"({_describe(err)}); write the store again") from None


def check_range(start, stop, n_neurons: int) -> tuple[int, int]:
    start = _check_int(start, "start")
    stop = n_neurons if stop is None else _check_int(stop, "stop")
    if not 0 <= start < stop <= n_neurons:
        raise InputError(f"neurons [start, stop) must satisfy 0 <= start < stop <= "
                         f"n_neurons={n_neurons}; got start={start}, stop={stop}")
    return start, stop


def neuron_chunk(values: zarr.Array) -> int:
    # With sharding the unit a writer rewrites is the shard, not the inner chunk.
    return int((values.shards or values.chunks)[-1])


def native(dtype) -> np.dtype:
    # Zarr reports little-endian dtypes with an explicit '<'; the native spelling compares equal
    # and prints as users expect (int32, not <i4).
    dtype = np.dtype(dtype)
    return dtype.newbyteorder("=") if dtype.isnative else dtype


def json_like(value, name: str):
    """Return ``value`` as it reads back from JSON, so stored and given values compare equal."""
    try:
        return json.loads(json.dumps(value, allow_nan=False))
    except TypeError as err:
        raise InputTypeError(f"{name} must be JSON-serialisable (dict, list, str, int, float, "
                             f"bool, None); {err}") from None
    except ValueError as err:
        raise InputError(f"{name} must be JSON-serialisable without NaN or inf; {err}") from None


def delete_node(group: zarr.Group, name: str) -> None:
    """Delete everything stored under ``group``'s key ``name`` (absent is fine).

    The whole prefix goes, whether or not its metadata document is still there: an earlier
    interrupted delete may have removed that document first and left arrays behind.
    """
    from zarr.core.sync import sync

    sync(group.store.delete_dir(_key(group, name)))



def move_node(group: zarr.Group, source: str, target: str) -> None:
    """Move everything stored under ``group``'s key ``source`` to ``target`` (which must be absent).

    On a local disk this is one directory rename, atomic. Other stores have no rename: their
    keys are copied one by one and the source deleted after, so an interrupted move leaves the
    target partial; callers mark what they move incomplete until it has arrived.
    """
    from zarr.core.buffer import default_buffer_prototype
    from zarr.core.sync import sync
    from zarr.storage import LocalStore

    store, old, new = group.store, _key(group, source), _key(group, target)
    if isinstance(store, LocalStore):
        os.rename(os.path.join(store.root, old), os.path.join(store.root, new))
        return

    async def copy():
        async for key in store.list_prefix(old + "/"):
            value = await store.get(key, prototype=default_buffer_prototype())
            if value is not None:
                await store.set(new + key[len(old):], value)

    sync(copy())
    delete_node(group, source)

# ---------------------------------------------------------------------------------------------
# Raw keys: small JSON documents written with the store's own primitives


def _key(group: zarr.Group, key: str) -> str:
    return f"{group.path}/{key}".strip("/")


def get_key(group: zarr.Group, key: str) -> bytes | None:
    from zarr.core.buffer import default_buffer_prototype
    from zarr.core.sync import sync

    found = sync(group.store.get(_key(group, key), prototype=default_buffer_prototype()))
    return None if found is None else found.to_bytes()


def put_key(group: zarr.Group, key: str, value: bytes, *, exclusive: bool = False) -> None:
    """Write a key; with ``exclusive``, only if it does not exist yet.

    On a local disk the exclusive write is atomic (the file is created with O_EXCL); object
    stores check and then write, so callers read the key back to learn who won.
    """
    from zarr.core.buffer import default_buffer_prototype
    from zarr.core.sync import sync

    buffer = default_buffer_prototype().buffer.from_bytes(value)
    key = _key(group, key)
    sync(group.store.set_if_not_exists(key, buffer) if exclusive else group.store.set(key, buffer))


def delete_key(group: zarr.Group, key: str) -> None:
    from zarr.core.sync import sync

    sync(group.store.delete(_key(group, key)))
