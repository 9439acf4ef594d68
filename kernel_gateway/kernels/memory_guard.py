"""Runs INSIDE a kernel: cap its address space, and end the process when user code runs out of it.

A kernel that hit its limit is in an unknown state (half-built objects, a library that failed mid-way), so
it is not left running: it exits with ``MEMORY_EXIT``, and the service restores the session onto a fresh
kernel from its last checkpoint (taken before the cell that failed) and says so in the reply.
"""

from __future__ import annotations

import os
import resource
import sys
from typing import Any

MEMORY_EXIT = 86
"""The exit status of a kernel that went over its memory limit."""


def install(limit: int) -> None:
    """Lower this process's address-space limit to ``limit`` bytes (it can never be raised again without
    privileges, which a sandboxed kernel has not), and exit on a MemoryError from a cell."""
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    shell: Any = sys.modules["IPython"].get_ipython()
    if shell is not None:
        shell.set_custom_exc((MemoryError,), _out_of_memory)


def _out_of_memory(shell: Any, etype: type, value: BaseException, tb: Any, tb_offset: int | None = None) -> None:
    with_limit = resource.getrlimit(resource.RLIMIT_AS)[0]
    sys.stderr.write(f"MemoryError: the cell went over the kernel's memory limit ({with_limit} bytes)\n")
    sys.stderr.flush()
    os._exit(MEMORY_EXIT)
