"""Finding a kernel's process from outside its sandbox.

A sandboxed kernel has a pid namespace of its own: ``os.getpid()`` there is a small number that names some
other process on the host. What identifies a kernel on both sides is its connection file, which lives in the
kernel's own directory at the same path inside and out.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import psutil

CONNECTION_FILE = "__import__('sys').argv[__import__('sys').argv.index('-f') + 1]"
"""A cell expression whose value is the kernel's connection file path."""


def host_pid(connection_file: str, timeout: float = 10.0) -> int:
    """The host pid of the kernel process started with ``connection_file`` (not its sandbox's launchers)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for proc in psutil.process_iter(["cmdline", "name"]):
            cmdline = proc.info["cmdline"] or []
            launcher = bool(cmdline) and os.path.basename(cmdline[0]) in ("bwrap", "setpriv")
            if connection_file in cmdline and "ipykernel_launcher" in " ".join(cmdline) and not launcher:
                return int(proc.pid)
        forked = _listening_in(Path(connection_file).parent)
        if forked is not None:
            return forked
        time.sleep(0.1)
    raise LookupError(f"no kernel process with {connection_file}")


def _listening_in(directory: Path) -> int | None:
    """The process with a Unix socket in ``directory``: a kernel forked from the zygote has the zygote's command
    line, but only the kernel binds the sockets in its directory."""
    prefix = str(directory) + "/"
    for proc in psutil.process_iter():
        try:
            if any(str(c.laddr).startswith(prefix) for c in proc.net_connections(kind="unix")):
                return int(proc.pid)
        except (psutil.Error, OSError):
            continue
    return None


def kernel_dir(connection_file: str) -> Path:
    """The kernel's own directory: visible to it at the same path, so a test can leave files there for it."""
    return Path(connection_file).parent


def alive(pid: int) -> bool:
    """True while ``pid`` runs (a zombie does not count: its parent has exited)."""
    try:
        os.kill(pid, 0)
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split()[2] != "Z"
    except (ProcessLookupError, FileNotFoundError):
        return False
