"""REST session management: list, create (optionally with a client-chosen id), inspect, delete."""

from __future__ import annotations

from fastapi import APIRouter, Body, Response

from ..deps import Authorized, ManagerDep
from ..models import CreateSessionRequest, SessionInfo
from ..responses import JSONResponse

router = APIRouter(tags=["sessions"], dependencies=[Authorized])


@router.get("/sessions", response_model=list[SessionInfo], summary="Sessions on this replica")
async def list_sessions(manager: ManagerDep) -> JSONResponse:
    return JSONResponse([s.info() for s in manager.list()])


@router.post("/sessions", status_code=201, response_model=SessionInfo, summary="Create a session")
async def create_session(manager: ManagerDep, body: CreateSessionRequest | None = Body(None)) -> JSONResponse:
    body = body or CreateSessionRequest()
    session = await manager.create(session_id=body.id, kernel_name=body.kernel_name)
    return JSONResponse(session.info(), status_code=201, headers={"Location": f"/sessions/{session.id}"})


@router.get("/sessions/{session_id}", response_model=SessionInfo, summary="One session")
async def get_session(session_id: str, manager: ManagerDep) -> JSONResponse:
    return JSONResponse(manager.get(session_id).info())


@router.delete("/sessions/{session_id}", status_code=204, summary="Delete a session and its kernel")
async def delete_session(session_id: str, manager: ManagerDep) -> Response:
    await manager.delete(session_id)
    return Response(status_code=204)
