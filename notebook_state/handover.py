"""Reading what a kernel hands over: files written by user code's process, so read as hostile input.

The kernel writes each cell's checkpoint into a directory it can write to; whatever is there may be a symlink
(to ``/proc/self/environ``, ``/dev/zero``, another kernel's files), a FIFO that never answers, a hard link, a
file far too big to hold, or a name such as ``../x``. So every file is opened relative to an already opened
directory, without following links and without blocking, and read only when it is a regular file with a single
link, within a byte budget checked before and while reading; all of it runs off the event loop under a
timeout. The service signs only what passes: a kernel can make it sign nothing but its own regular files.
A small checkpoint comes instead inside the cell's reply (``read_reply``), checked the same way.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import re
import shutil
import stat
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from .errors import CheckpointError
from .types import JSONDict

T = TypeVar("T")

MAX_BYTES = 4 * 1024**3
"""Default cap on one hand-over (manifest and blobs together): beyond it, the checkpoint fails."""

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_FILE_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
_NAME = re.compile(r"^[A-Za-z0-9_-][A-Za-z0-9_.-]{0,200}$")
_CHUNK = 1 << 20

Capture = tuple[JSONDict, dict[str, bytes]]


class HandOverRejected(ValueError):
    """A hand-over file that is not a plain regular file of the kernel's, or too big."""


def capture_error(report: JSONDict) -> str:
    """What the kernel said went wrong: the tracker writes a list (``errors``), a crash one string (``error``)."""
    found = [str(e).splitlines()[0] for e in report.get("errors") or [] if str(e).strip()]
    if report.get("error"):
        found.append(str(report["error"]))
    return "; ".join(found) or "the kernel could not checkpoint"


class _Budget:
    def __init__(self, limit: int) -> None:
        self.left = limit

    def take(self, n: int, name: str) -> None:
        if n > self.left:
            raise HandOverRejected(f"hand-over file {name!r} goes past the checkpoint size limit")
        self.left -= n


def _open_dir(path: str | Path, dir_fd: int | None = None) -> int:
    return os.open(path, _DIR_FLAGS, dir_fd=dir_fd)


def _read_file(dir_fd: int, name: str, budget: _Budget) -> bytes | None:
    """The bytes of ``name`` in the directory, None when absent; HandOverRejected unless a plain file."""
    if not _NAME.match(name):
        raise HandOverRejected(f"hand-over file name {name!r} is not allowed")
    try:
        fd = os.open(name, _FILE_FLAGS, dir_fd=dir_fd)
    except FileNotFoundError:
        return None
    except OSError as exc:  # ELOOP: a symlink
        raise HandOverRejected(f"hand-over file {name!r} cannot be opened safely: {exc.strerror}") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_nlink != 1:
            raise HandOverRejected(f"hand-over file {name!r} is not a regular file with one link")
        budget.take(st.st_size, name)
        cap = st.st_size + budget.left  # the file may grow while it is read: the budget holds all the same
        chunks: list[bytes] = []
        got = 0
        while chunk := os.read(fd, _CHUNK):
            got += len(chunk)
            if got > cap:
                raise HandOverRejected(f"hand-over file {name!r} goes past the checkpoint size limit")
            chunks.append(chunk)
        budget.left -= max(0, got - st.st_size)
        return b"".join(chunks)
    finally:
        os.close(fd)


def _read_json(dir_fd: int, name: str, budget: _Budget) -> JSONDict | None:
    data = _read_file(dir_fd, name, budget)
    if data is None:
        return None
    value = json.loads(data)
    if not isinstance(value, dict):
        raise HandOverRejected(f"hand-over file {name!r} is not a JSON object")
    return value


def _read_capture_at(dir_fd: int, limit: int) -> Capture:
    budget = _Budget(limit)
    errors = _read_json(dir_fd, "errors.json", budget)
    if errors is not None:
        raise CheckpointError(capture_error(errors))
    manifest = _read_json(dir_fd, "manifest.json", budget)
    if manifest is None:
        raise CheckpointError("the kernel wrote no checkpoint manifest")
    blobs: dict[str, bytes] = {}
    groups = manifest.get("groups", {})
    if not isinstance(groups, dict):
        raise HandOverRejected("the manifest's groups are not an object")
    for gid, group in groups.items():
        if isinstance(group, dict) and group.get("written"):
            data = _read_file(dir_fd, f"{gid}.bin", budget)
            if data is None:
                raise CheckpointError(f"the kernel listed group {gid!r} but wrote no data for it")
            blobs[gid] = data
    return manifest, blobs


def read_capture(out: Path, limit: int = MAX_BYTES) -> Capture:
    """The manifest and written blobs in a checkpoint directory (the directory itself must not be a link)."""
    fd = _open_dir(out)
    try:
        return _read_capture_at(fd, limit)
    finally:
        os.close(fd)


def read_json(directory: Path, name: str, limit: int = MAX_BYTES) -> JSONDict:
    """One JSON object the kernel wrote (a restore report), read as safely as a checkpoint."""
    fd = _open_dir(directory)
    try:
        value = _read_json(fd, name, _Budget(limit))
    finally:
        os.close(fd)
    if value is None:
        raise CheckpointError(f"the kernel wrote no {name}")
    return value


def read_reply(found: object, limit: int = MAX_BYTES) -> Capture:
    """The checkpoint a kernel handed over in a cell's ``execute_reply`` (``capture.outbox``): ``{"manifest":
    {...}, "blobs": {gid: base64}}``, or ``{"errors": {...}}``. Checked as strictly as files: every blob the
    manifest says was written is there, nothing else is, names are plain, and the whole fits the budget."""
    if not isinstance(found, dict):
        raise HandOverRejected("the reply's checkpoint is not an object")
    errors = found.get("errors")
    if errors is not None:
        raise CheckpointError(capture_error(errors if isinstance(errors, dict) else {"error": str(errors)}))
    manifest, encoded = found.get("manifest"), found.get("blobs")
    if not isinstance(manifest, dict) or not isinstance(encoded, dict):
        raise HandOverRejected("the reply's checkpoint has no manifest")
    groups = manifest.get("groups", {})
    if not isinstance(groups, dict):
        raise HandOverRejected("the manifest's groups are not an object")
    written = {gid for gid, g in groups.items() if isinstance(g, dict) and g.get("written")}
    if written != encoded.keys():
        raise HandOverRejected("the reply's blobs are not those its manifest says were written")
    budget = _Budget(limit)
    blobs: dict[str, bytes] = {}
    for gid, data in encoded.items():
        if not _NAME.match(gid) or not isinstance(data, str):
            raise HandOverRejected(f"hand-over blob {gid!r} is not allowed")
        budget.take(len(data) * 3 // 4, gid)
        try:
            blobs[gid] = base64.b64decode(data, validate=True)
        except ValueError:
            raise HandOverRejected(f"hand-over blob {gid!r} is not base64") from None
    return manifest, blobs


def _remove(dir_fd: int, name: str) -> None:
    with contextlib.suppress(OSError):
        if stat.S_ISDIR(os.stat(name, dir_fd=dir_fd, follow_symlinks=False).st_mode):
            shutil.rmtree(name, dir_fd=dir_fd)
        else:
            os.unlink(name, dir_fd=dir_fd)


def take_auto(auto_dir: Path, limit: int = MAX_BYTES) -> Capture | None:
    """The checkpoint the kernel wrote as its last cell ended, if any; consumed (and older ones dropped).

    A hand-over that is not plain files is dropped like a missing one: the caller then asks the kernel for a
    full checkpoint into a directory the service made.
    """
    try:
        fd = _open_dir(auto_dir)
    except (FileNotFoundError, NotADirectoryError):
        return None
    except OSError:  # a symlink in place of the directory
        return None
    try:
        names = sorted(os.listdir(fd))
        if not names:
            return None
        try:
            latest = _open_dir(names[-1], fd)
        except OSError:
            return None
        try:
            return _read_capture_at(latest, limit)
        except (CheckpointError, OSError, ValueError):
            return None
        finally:
            os.close(latest)
    finally:
        with contextlib.suppress(OSError):
            for name in os.listdir(fd):
                _remove(fd, name)
        os.close(fd)


async def off_loop(fn: Callable[[], T], timeout: float) -> T:
    """Run a hand-over read in a thread, so that no file a kernel made can stall the replica's loop."""
    # asyncio.timeout, not wait_for: Python 3.11's wait_for returns a read that ends in the turn of a cancel and
    # loses the cancel (a restore cancelled at shutdown would go on and register its session after the close).
    async with asyncio.timeout(timeout):
        return await asyncio.to_thread(fn)


async def take_auto_async(auto_dir: Path, limit: int, timeout: float) -> Capture | None:
    return await off_loop(lambda: take_auto(auto_dir, limit), timeout)


async def read_capture_async(out: Path, limit: int, timeout: float) -> Capture:
    return await off_loop(lambda: read_capture(out, limit), timeout)
