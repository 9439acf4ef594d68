"""The Jupyter Kernel Gateway REST API, as jupyter_server's GatewayClient calls it."""

from __future__ import annotations

import mimetypes
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Body, Request, Response
from jupyter_client.kernelspec import NoSuchKernel
from starlette.responses import FileResponse

from .. import __version__
from ..deps import Authorized, CallerDep, GatewayDep, ManagerDep, SettingsDep
from ..forward import delete_anywhere, on_owner
from ..models import ERROR_RESPONSES, CreateKernelRequest, KernelModel
from ..responses import JSONResponse
from ..sessions.errors import KernelSpecNotFound
from ..sessions.session import Session
from ..views import kernel_model

router = APIRouter(tags=["jupyter"], dependencies=[Authorized], responses=ERROR_RESPONSES)

_RESOURCE_NAMES = ("kernel.js", "kernel.css")


def _spec_model(name: str, spec: dict[str, Any], resource_dir: str) -> dict[str, Any]:
    resources: dict[str, str] = {}
    directory = Path(resource_dir)
    for fname in _RESOURCE_NAMES:
        if (directory / fname).is_file():
            resources[fname] = f"/kernelspecs/{name}/{fname}"
    for logo in sorted(directory.glob("logo-*")):
        resources[logo.stem] = f"/kernelspecs/{name}/{logo.name}"
    return {"name": name, "spec": spec, "resources": resources}


@router.get("/api", summary="Service version (jupyter_server's shape)")
async def api_root() -> JSONResponse:
    return JSONResponse({"version": __version__})


@router.get("/api/kernelspecs", summary="Every installed kernelspec")
async def list_kernelspecs(manager: ManagerDep, settings: SettingsDep) -> JSONResponse:
    specs = manager.kernel_specs.get_all_specs()
    models = {name: _spec_model(name, s["spec"], s["resource_dir"]) for name, s in specs.items()}
    return JSONResponse({"default": settings.kernel_name, "kernelspecs": models})


@router.get("/api/kernelspecs/{name}", summary="One kernelspec")
async def get_kernelspec(name: str, manager: ManagerDep) -> JSONResponse:
    try:
        spec = manager.kernel_specs.get_kernel_spec(name)
    except NoSuchKernel as exc:
        raise KernelSpecNotFound(name) from exc
    return JSONResponse(_spec_model(name, spec.to_dict(), spec.resource_dir))


@router.get("/kernelspecs/{name}/{resource}", summary="A kernelspec's resource file (logo, kernel.js)")
async def kernelspec_resource(name: str, resource: str, manager: ManagerDep) -> Response:
    try:
        spec = manager.kernel_specs.get_kernel_spec(name)
    except NoSuchKernel as exc:
        raise KernelSpecNotFound(name) from exc
    directory = Path(spec.resource_dir).resolve()
    try:
        path = (directory / resource).resolve()
        found = path.parent == directory and path.is_file() and path.name != "kernel.json"
    except (ValueError, OSError):  # a NUL byte, a name too long: no such file either way
        found = False
    if not found:
        return JSONResponse(
            {"reason": "Not Found", "message": f"kernelspec {name!r} has no resource {resource!r}"}, status_code=404
        )
    media_type = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
    return FileResponse(path, media_type=media_type)


@router.get("/api/kernels", summary="Every kernel (session) in the store", response_model=list[KernelModel])
async def list_kernels(manager: ManagerDep, caller: CallerDep) -> JSONResponse:
    records = await manager.records(caller.tenant)
    return JSONResponse([kernel_model(r, manager.sessions.get(r.id)) for r in records])


@router.post("/api/kernels", status_code=201, summary="Start a kernel", response_model=KernelModel)
async def start_kernel(
    gw: GatewayDep, caller: CallerDep, body: CreateKernelRequest | None = Body(None)
) -> JSONResponse:
    body = body or CreateKernelRequest()
    await gw.admit(caller)
    session = await gw.manager.create(kernel_name=body.name, env=body.env, tenant=caller.tenant)
    return JSONResponse(
        kernel_model(None, session), status_code=201, headers={"Location": f"/api/kernels/{session.id}"}
    )


@router.get("/api/kernels/{kernel_id}", summary="One kernel", response_model=KernelModel)
async def get_kernel(kernel_id: str, manager: ManagerDep, caller: CallerDep) -> JSONResponse:
    session = manager.sessions.get(kernel_id)
    if session is not None and session.tenant == caller.tenant:
        return JSONResponse(kernel_model(None, session))
    return JSONResponse(kernel_model(await manager.record(kernel_id, caller.tenant), None))


@router.delete("/api/kernels/{kernel_id}", status_code=204, summary="Shut a kernel down and delete its state")
async def delete_kernel(kernel_id: str, request: Request, gw: GatewayDep) -> Response:
    return await delete_anywhere(gw, request, kernel_id)


@router.post("/api/kernels/{kernel_id}/interrupt", status_code=204, summary="Interrupt the running cell")
async def interrupt_kernel(kernel_id: str, request: Request, gw: GatewayDep) -> Response:
    async def here(session: Session) -> Response:
        await session.interrupt()
        return Response(status_code=204)

    return await on_owner(gw, request, kernel_id, here)


@router.post(
    "/api/kernels/{kernel_id}/restart",
    summary="Restart: the session continues on a fresh kernel",
    response_model=KernelModel,
)
async def restart_kernel(kernel_id: str, request: Request, gw: GatewayDep) -> Response:
    async def here(session: Session) -> Response:
        await session.restart()
        return JSONResponse(kernel_model(None, session))

    return await on_owner(gw, request, kernel_id, here)
