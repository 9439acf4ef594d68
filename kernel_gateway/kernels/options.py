"""Where kernels' files go and what the settings ask of their sandbox: pure and light, so that the sandbox
probe can start before the rest of the service is imported (replica.py)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from ..types import ManagerSettings
from .sandbox import SandboxOptions


def scratch_parent() -> str | None:
    """/dev/shm when it has room: kernels' sockets and checkpoint hand-overs then never touch a disk."""
    shm = Path("/dev/shm")
    try:
        if shm.is_dir() and os.access(shm, os.W_OK) and shutil.disk_usage(shm).free > 2 * 1024**3:
            return str(shm)
    except OSError:
        pass
    return None


def sandbox_options(settings: ManagerSettings) -> SandboxOptions:
    hidden = [settings.data_dir.resolve()]
    if settings.tenants_file is not None:
        hidden.append(settings.tenants_file.resolve())
    return SandboxOptions(
        mode=settings.sandbox,
        tmp_size=int(settings.sandbox_tmp_size),
        binds=tuple(p.resolve() for p in settings.sandbox_bind),
        hidden=(*hidden, Path("/etc/shadow"), Path("/etc/gshadow")),
        network=settings.sandbox_network,
        uid_base=settings.sandbox_uid_base,
        uid_count=settings.sandbox_uid_count,
    )
