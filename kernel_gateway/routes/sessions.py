"""REST session management: list, create (optionally with a client-chosen id), inspect, checkpoint, delete."""

from __future__ import annotations

import time

from fastapi import APIRouter, Body, Request, Response

from ..deps import Authorized, CallerDep, GatewayDep, ManagerDep
from ..forward import delete_anywhere, on_owner
from ..models import ERROR_RESPONSES, CreateSessionRequest, SessionInfo
from ..responses import JSONResponse
from ..sessions.session import Session
from ..views import session_info

router = APIRouter(tags=["sessions"], dependencies=[Authorized], responses=ERROR_RESPONSES)


@router.get("/sessions", response_model=list[SessionInfo], summary="Every session in the store")
async def list_sessions(manager: ManagerDep, caller: CallerDep) -> JSONResponse:
    now = time.time()
    records = await manager.records(caller.tenant)
    return JSONResponse([session_info(r, manager.sessions.get(r.id), now) for r in records])


@router.post("/sessions", status_code=201, response_model=SessionInfo, summary="Create a session")
async def create_session(
    gw: GatewayDep, caller: CallerDep, body: CreateSessionRequest | None = Body(None)
) -> JSONResponse:
    body = body or CreateSessionRequest()
    await gw.admit(caller)
    session = await gw.manager.create(session_id=body.id, kernel_name=body.kernel_name, tenant=caller.tenant)
    record = session.persistence.record if session.persistence else None
    return JSONResponse(
        session_info(record, session, time.time()), status_code=201, headers={"Location": f"/sessions/{session.id}"}
    )


@router.get(
    "/sessions/{session_id}",
    response_model=SessionInfo,
    summary="One session: its state here, its owner, and its last checkpoint (size, age, variables)",
)
async def get_session(session_id: str, manager: ManagerDep, caller: CallerDep) -> JSONResponse:
    record = await manager.record(session_id, caller.tenant)
    return JSONResponse(session_info(record, manager.sessions.get(session_id), time.time()))


@router.post("/sessions/{session_id}/checkpoint", summary="Checkpoint the session now")
async def checkpoint_session(session_id: str, request: Request, gw: GatewayDep) -> Response:
    async def here(session: Session) -> Response:
        return JSONResponse(await gw.manager.checkpoint_now(session))

    return await on_owner(gw, request, session_id, here)


@router.delete("/sessions/{session_id}", status_code=204, summary="Delete a session, its kernel and its state")
async def delete_session(session_id: str, request: Request, gw: GatewayDep) -> Response:
    return await delete_anywhere(gw, request, session_id)
