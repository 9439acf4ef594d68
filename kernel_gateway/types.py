"""The service's Protocols and message types, so that its layers meet on types rather than on classes."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol, TypeVar

from notebook_state.types import JSONDict, SessionId

__all__ = [
    "Channel",
    "JSONDict",
    "KernelListener",
    "KernelMessage",
    "ManagerSettings",
    "SessionDirectory",
    "SessionId",
    "Subscriber",
]


class Channel(enum.StrEnum):
    """The Jupyter messaging channels a frontend talks on (heartbeat stays inside the service)."""

    SHELL = "shell"
    IOPUB = "iopub"
    STDIN = "stdin"
    CONTROL = "control"


@dataclass(slots=True)
class KernelMessage:
    """One message from or to a kernel, with its four JSON parts decoded.

    ``raw`` keeps the parts exactly as they crossed the wire, when known, so that forwarding to a WebSocket
    need not encode them again.
    """

    channel: Channel
    header: JSONDict
    parent_header: JSONDict
    metadata: JSONDict
    content: JSONDict
    buffers: list[bytes] = field(default_factory=list)
    raw: list[bytes] | None = None

    # Read several times per message on the relay's path: a str is returned as it is (no str() call).
    @property
    def msg_type(self) -> str:
        kind = self.header.get("msg_type", "")
        return kind if type(kind) is str else str(kind)

    @property
    def msg_id(self) -> str:
        ident = self.header.get("msg_id", "")
        return ident if type(ident) is str else str(ident)

    @property
    def parent_id(self) -> str:
        ident = self.parent_header.get("msg_id", "")
        return ident if type(ident) is str else str(ident)


class Subscriber(Protocol):
    """Something that receives a session's kernel messages: a WebSocket connection or a REST cell run."""

    def deliver(self, msg: KernelMessage) -> None:
        """Take one message. Must not block: the kernel's reader calls it."""


class KernelListener(Protocol):
    """The owner of a kernel, told of everything the kernel sends and of its death."""

    def on_kernel_message(self, msg: KernelMessage) -> None: ...

    def on_kernel_died(self, kernel_id: str) -> None: ...


class ManagerSettings(Protocol):
    """What the session manager needs to know from the service's settings."""

    @property
    def kernel_name(self) -> str: ...

    @property
    def pool_size(self) -> int: ...

    @property
    def kernel_startup_timeout(self) -> float: ...

    @property
    def interrupt_grace(self) -> float: ...

    @property
    def output_limit(self) -> int: ...

    @property
    def evict_idle_after(self) -> float: ...

    @property
    def checkpoint(self) -> bool: ...

    @property
    def preload_modules(self) -> list[str]: ...

    @property
    def kernel_launch(self) -> str: ...

    @property
    def checkpoint_timeout(self) -> float: ...

    @property
    def lease_ttl(self) -> float: ...

    @property
    def session_ttl(self) -> float: ...

    @property
    def allowed_kernel_env_prefix(self) -> str: ...

    @property
    def data_dir(self) -> Path: ...

    @property
    def tenants_file(self) -> Path | None: ...

    @property
    def sandbox(self) -> str: ...

    @property
    def sandbox_tmp_size(self) -> int: ...

    @property
    def sandbox_bind(self) -> list[Path]: ...

    @property
    def sandbox_network(self) -> bool: ...

    @property
    def sandbox_uid_base(self) -> int: ...

    @property
    def sandbox_uid_count(self) -> int: ...

    @property
    def kernel_memory_limit(self) -> int: ...

    @property
    def kernel_env_allow(self) -> list[str]: ...

    @property
    def checkpoint_max_bytes(self) -> int: ...

    @property
    def max_sessions(self) -> int: ...

    @property
    def ws_replay_bytes(self) -> int: ...


S_co = TypeVar("S_co", covariant=True)


class SessionDirectory(Protocol[S_co]):
    """Finds a session's live object on this replica, restoring it here when no live replica owns it.

    Generic in the session type so that this module depends on nothing of the service's own.
    """

    async def resolve(self, session_id: str, tenant: str | None = None) -> S_co:
        """The live session here; raises OwnedElsewhere when another replica's lease is live. With ``tenant``,
        another tenant's session is not found."""
        ...

    async def take_over(self, session_id: str, epoch: int, tenant: str | None = None) -> S_co:
        """Take a session whose owner is provably gone, if its lease epoch is still ``epoch``."""
        ...
