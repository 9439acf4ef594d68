"""Request and reply bodies of the REST face and the Jupyter API, as OpenAPI documents them."""

from __future__ import annotations

from http import HTTPStatus
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from notebook_state.types import SESSION_ID_PATTERN

_ID_PATTERN = SESSION_ID_PATTERN.pattern


class ErrorBody(BaseModel):
    """Every error the service answers: ``reason`` and ``message`` are what jupyter_server's GatewayClient reads."""

    model_config = ConfigDict(extra="allow")
    reason: str = Field(description="The HTTP reason phrase.")
    message: str = Field(description="What is wrong, and what to do about it.")


ERRORS = (400, 401, 403, 404, 409, 413, 421, 429, 502, 503)
"""Statuses any authenticated route may answer with an ErrorBody (422 is FastAPI's own validation error)."""
ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorBody, "description": HTTPStatus(code).phrase} for code in ERRORS
}


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ExecuteRequest(Strict):
    code: str = Field(..., max_length=1_000_000, description="The cell's source.")
    session: str | None = Field(
        None, pattern=_ID_PATTERN, description="Session to run in; omitted: a new session is created."
    )
    timeout: float | None = Field(
        None, gt=0, description="Seconds before the cell is interrupted (default: the service's)."
    )


class ErrorInfo(BaseModel):
    ename: str
    evalue: str
    traceback: list[str]


class ExecuteReply(BaseModel):
    session: str
    status: Literal["ok", "error", "timeout"]
    execution_count: int | None
    outputs: list[dict[str, Any]] = Field(
        description="nbformat v4 outputs: stream, display_data, execute_result, error"
    )
    error: ErrorInfo | None = None
    truncated: bool = Field(False, description="Output beyond the service's cap was dropped.")
    kernel_restarted: bool = Field(
        False, description="The session's kernel was replaced (died or did not stop on timeout); state was lost."
    )
    notices: list[str] = Field(default_factory=list, description="Things the client should know about this reply.")
    checkpoint: dict[str, Any] | None = Field(
        None, description="The cell's checkpoint: status committed|pending|failed, bytes written, lost variables."
    )
    restored: dict[str, Any] | None = Field(
        None, description="Set when the session was restored before this cell: execution count, lost variables."
    )


class CreateSessionRequest(Strict):
    id: str | None = Field(None, pattern=_ID_PATTERN, description="Client-chosen id; omitted: a UUID.")
    kernel_name: str | None = Field(None, description="Kernelspec; omitted: the service's default.")


class Owner(BaseModel):
    replica: str
    url: str
    epoch: int
    expires_in: float


class CheckpointInfo(BaseModel):
    bytes: int = 0
    at: str | None = None
    age_seconds: float | None = None
    variables: list[str] = Field(default_factory=list)
    execution_count: int = 0
    status: str | None = Field(None, description="committed, pending (store unreachable) or failed")
    epoch: int | None = None


class SessionInfo(BaseModel):
    id: str
    kernel_name: str
    state: str = Field(description="active (live here), live elsewhere, stored (evicted: restored on next use)")
    execution_state: str
    execution_count: int
    created: str
    last_activity: str
    connections: int
    kernel_restarts: int = 0
    kernel_alive: bool = False
    owner: Owner | None = None
    checkpoint: CheckpointInfo | None = None
    restored: dict[str, Any] | None = Field(None, description="The restore report, if restored on this replica.")


class CreateKernelRequest(BaseModel):
    # GatewayClient sends fields beyond these (e.g. "path"); they are accepted and ignored.
    name: str | None = Field(None, description="Kernelspec name; omitted: the default.")
    env: dict[str, str] | None = Field(None, description="KERNEL_* variables for the kernel's environment.")


class KernelModel(BaseModel):
    id: str
    name: str
    last_activity: str
    execution_state: str
    connections: int
