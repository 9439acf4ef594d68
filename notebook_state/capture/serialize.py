"""Serialising one alias group ``{name: obj}`` into a blob (``blob.py``: its layout), and loading it back.

Pickle protocol 5 with a ``buffer_callback``: big contiguous buffers (numpy arrays, pandas blocks) stay out of
band, so they are hashed and written straight from the object's memory, never copied into the pickle stream.

Functions defined in the notebook are pickled by value (cloudpickle) but WITHOUT a snapshot of the globals they
read: they are rebuilt with the restoring kernel's user namespace as their ``__globals__``, so they keep
seeing (and ``global``-assigning) the live variables, which are restored as variables of their own.
"""

from __future__ import annotations

import contextlib
import io
import pickle
import sys
import threading
import types
from collections.abc import Iterator
from typing import Any, cast

import cloudpickle  # type: ignore[import-untyped]

from .blob import Serialized, pack, read_blob, unpack

# The functions below that a pickle names (_user_namespace, _make_lock, _make_rlock, _rebuild_view) are looked
# up here by name when a checkpoint loads: they stay in this module, or stored checkpoints no longer load.
_LOCK_TYPE = type(threading.Lock())
_RLOCK_TYPE = type(threading.RLock())
_FILE_TYPES = (io.FileIO, io.BufferedReader, io.BufferedWriter, io.BufferedRandom, io.BufferedRWPair, io.TextIOWrapper)

_load_namespace: dict[str, Any] | None = None


def _user_namespace() -> dict[str, Any]:
    """At load time: the namespace notebook functions are rebuilt in (the restoring shell's user_ns)."""
    if _load_namespace is not None:
        return _load_namespace
    try:
        from IPython import get_ipython

        shell = get_ipython()
        if shell is not None:
            user_ns: dict[str, Any] = shell.user_ns
            return user_ns
    except Exception:
        pass
    return sys.modules["__main__"].__dict__


class _UserNamespace:
    """Pickles as a call to :func:`_user_namespace` (stands in for a notebook function's globals)."""

    def __reduce__(self) -> tuple[Any, tuple[()]]:
        return (_user_namespace, ())


_NS_MARKER = _UserNamespace()


@contextlib.contextmanager
def loading_into(ns: dict[str, Any]) -> Iterator[None]:
    """Make notebook functions unpickled inside this block use ``ns`` as their globals."""
    global _load_namespace
    previous, _load_namespace = _load_namespace, ns
    builtins_before = ns.get("__builtins__")
    try:
        yield
    finally:
        _load_namespace = previous
        # cloudpickle's _function_setstate stores its own __builtins__ dict into the globals; put ours back.
        if builtins_before is not None:
            ns["__builtins__"] = builtins_before


def _make_lock(locked: bool) -> Any:
    lock = threading.Lock()
    if locked:
        lock.acquire()
    return lock


def _make_rlock() -> Any:
    return threading.RLock()


def _rebuild_view(root: Any, shape: Any, dtype: Any, offset: int, strides: Any, writeable: bool) -> Any:
    import numpy as np

    view = np.ndarray(shape, dtype, buffer=root, offset=offset, strides=strides)
    view.flags.writeable = writeable and root.flags.writeable
    return view


def _view_reduce(obj: Any) -> Any:
    """A numpy view pickles as (its root array, where it looks into it), so it is a view again after a
    restore: ``b = a[2:5]`` keeps ``b.base is a`` and shared memory, as do pandas columns and slices."""
    np = sys.modules.get("numpy")
    if np is None or type(obj) is not np.ndarray or not isinstance(obj.base, np.ndarray):
        return NotImplemented
    root = obj.base
    while isinstance(root.base, np.ndarray):
        root = root.base
    if root.base is not None or root.dtype.hasobject or obj.dtype.hasobject:
        return NotImplemented  # memory owned by something else (bytes, mmap): pickle the values
    offset = obj.__array_interface__["data"][0] - root.__array_interface__["data"][0]
    return (_rebuild_view, (root, obj.shape, obj.dtype, offset, obj.strides, bool(obj.flags.writeable)))


def _refuse_or_reduce(obj: Any) -> Any:
    """Reductions shared by both picklers: locks are re-created, open files are refused, views stay views."""
    t = type(obj)
    if t.__name__ == "ndarray":
        return _view_reduce(obj)
    if t is _LOCK_TYPE:
        return (_make_lock, (obj.locked(),))
    if t is _RLOCK_TYPE:
        return (_make_rlock, ())
    if isinstance(obj, _FILE_TYPES):
        name = getattr(obj, "name", "?")
        mode = getattr(obj, "mode", "?")
        raise TypeError(f"cannot pickle open file {name!r} (mode {mode!r})")
    return NotImplemented


class NamespacePickler(cloudpickle.Pickler):  # type: ignore[misc]
    """cloudpickle, with notebook functions bound to the live namespace and open files refused."""

    def __init__(self, file: Any, ns: dict[str, Any], buffer_callback: Any = None) -> None:
        super().__init__(file, protocol=5, buffer_callback=buffer_callback)
        self._ns = ns

    def reducer_override(self, obj: Any) -> Any:
        reduced = _refuse_or_reduce(obj)
        if reduced is not NotImplemented:
            return reduced
        return super().reducer_override(obj)

    def _function_getnewargs(self, func: types.FunctionType) -> Any:
        newargs = super()._function_getnewargs(func)
        if func.__globals__ is self._ns:
            return (newargs[0], _NS_MARKER, *newargs[2:])
        return newargs

    def _dynamic_function_reduce(self, func: types.FunctionType) -> Any:
        reduced = super()._dynamic_function_reduce(func)
        if func.__globals__ is self._ns:
            state, slotstate = reduced[2]
            # Do not snapshot the globals the function reads: they are variables restored on their own.
            slotstate = {**slotstate, "__globals__": {}}
            reduced = (reduced[0], reduced[1], (state, slotstate), *reduced[3:])
        return reduced


def _dill_pickler_class() -> type[Any]:
    import dill  # type: ignore[import-untyped]

    class _DillPickler(dill.Pickler):  # type: ignore[misc]
        def reducer_override(self, obj: Any) -> Any:
            if isinstance(obj, type) and obj.__module__ == "__main__":
                # cloudpickle's class reduction carries a tracker id: one class object across all blobs.
                return cloudpickle.cloudpickle._class_reduce(obj)
            return _refuse_or_reduce(obj)

    return _DillPickler


def _dump(pickler_cls: Any, objs: dict[str, Any], ns: dict[str, Any], serializer: str) -> Serialized:
    out = io.BytesIO()
    buffers: list[memoryview] = []

    def keep(pb: pickle.PickleBuffer) -> bool:
        try:
            raw = pb.raw()
        except BufferError:
            return True  # not contiguous: pickle it in band
        buffers.append(raw)
        return False

    if serializer == "cloudpickle":
        pickler = pickler_cls(out, ns, buffer_callback=keep)
    else:
        pickler = pickler_cls(out, protocol=5, buffer_callback=keep)
        main = sys.modules.get("__main__")
        if main is not None and main.__dict__ is ns:
            pickler._main = main
    pickler.dump(objs)
    return pack(serializer, out.getbuffer(), buffers)


_PLAIN_ATOMS = frozenset({type(None), bool, int, float, complex, str, bytes})
_PLAIN_CONTAINERS = frozenset({tuple, list, dict, set, frozenset})


def is_plain_data(value: Any, budget: int = 256) -> bool:
    """Whether ``value`` is built-in data only (numbers, strings, and containers of them), within ``budget``
    objects: it pickles the same with or without cloudpickle, and the C pickler does it several times faster."""
    stack = [value]
    while stack:
        v = stack.pop()
        t = type(v)
        if t in _PLAIN_ATOMS:
            continue
        if t not in _PLAIN_CONTAINERS:
            return False
        budget -= len(v) + 1
        if budget < 0:
            return False
        if t is dict:
            stack.extend(v.keys())
            stack.extend(v.values())
        else:
            stack.extend(v)
    return True


def serialize(objs: dict[str, Any], ns: dict[str, Any]) -> Serialized:
    """cloudpickle first, dill if cloudpickle fails; raises the cloudpickle error if both fail. Small built-in
    data (most cells' counters and history tails) goes through the C pickler, to the same bytes."""
    if is_plain_data(objs):
        return serialize_data(objs)
    try:
        return _dump(NamespacePickler, objs, ns, "cloudpickle")
    except Exception as first:
        try:
            return _dump(_dill_pickler_class(), objs, ns, "dill")
        except Exception:
            raise first from None


def serialize_data(objs: dict[str, Any]) -> Serialized:
    """Plain data (built-in types, library objects importable by name, numpy arrays) with the C pickler: no
    per-object Python hook, several times faster for small states. Read back like a cloudpickle blob."""
    out = io.BytesIO()
    buffers: list[memoryview] = []

    def keep(pb: pickle.PickleBuffer) -> bool:
        try:
            buffers.append(pb.raw())
        except BufferError:
            return True
        return False

    pickle.Pickler(out, protocol=5, buffer_callback=keep).dump(objs)
    return pack("cloudpickle", out.getbuffer(), buffers)


def load_blob(path: str, ns: dict[str, Any]) -> dict[str, Any]:
    """Read a blob file into one writable buffer (arrays are rebuilt on it, not copied) and unpickle it."""
    return load_bytes(read_blob(path), ns)


def load_bytes(data: bytearray, ns: dict[str, Any]) -> dict[str, Any]:
    """Unpickle a blob held in memory (a writable buffer: arrays are rebuilt on it)."""
    serializer, stream, buffers = unpack(data)
    with loading_into(ns):
        if serializer == "dill":
            import dill

            result = dill.loads(bytes(stream), buffers=buffers)
        else:
            result = pickle.loads(stream, buffers=buffers)
    if not isinstance(result, dict):
        raise ValueError("blob does not hold a name -> object mapping")
    return cast(dict[str, Any], result)
