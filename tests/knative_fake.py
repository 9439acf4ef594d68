"""A FAKE Kubernetes API server for tests -- NOT Kubernetes, NOT Knative.

An in-process aiohttp server on 127.0.0.1 that answers the REST paths kubernetes_asyncio's CustomObjectsApi
calls for ``serving.knative.dev/v1 services`` (create, get, replace, delete) and CoreV1Api calls for
``persistentvolumeclaims`` (create, get, delete), so that the KnativeSpawner is tested with the real client
library over real HTTP. It plays the Knative controller crudely: a created or replaced Service reports
Ready=Unknown, then Ready=True with a URL after ``ready_delay`` seconds (never if it is None); a deleted Service
carries a deletionTimestamp for ``delete_delay`` seconds, then is gone. ``address`` is the template of
``status.address.url`` (a test can point it at a server of its own). Every other path answers 404, and every
request is recorded in ``requests`` so tests can check that the spawner touches nothing else.
"""

from __future__ import annotations

import asyncio
import copy
import uuid
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

Obj = dict[str, Any]
PREFIX = "/apis/serving.knative.dev/v1/namespaces/{ns}/services"
PVCS = "/api/v1/namespaces/{ns}/persistentvolumeclaims"


def _status(code: int, reason: str, message: str) -> web.Response:
    body = {"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": reason, "message": message}
    return web.json_response({**body, "code": code}, status=code)


@dataclass
class FakeKnativeApi:
    ready_delay: float | None = 0.3
    delete_delay: float = 0.2
    domain: str = "example.com"
    address: str = "http://{name}.{ns}.svc.cluster.local"
    services: dict[tuple[str, str], Obj] = field(default_factory=dict)
    claims: dict[tuple[str, str], Obj] = field(default_factory=dict)
    requests: list[tuple[str, str]] = field(default_factory=list)
    url: str = ""
    _runner: web.AppRunner | None = None
    _tasks: set[asyncio.Task[None]] = field(default_factory=set)

    # -- lifecycle ---------------------------------------------------------------------------------------------

    async def start(self) -> str:
        app = web.Application(middlewares=[self._record])
        app.router.add_post(PREFIX, self._create)
        app.router.add_get(PREFIX + "/{name}", self._get)
        app.router.add_put(PREFIX + "/{name}", self._replace)
        app.router.add_delete(PREFIX + "/{name}", self._delete)
        app.router.add_post(PVCS, self._create_claim)
        app.router.add_get(PVCS + "/{name}", self._get_claim)
        app.router.add_delete(PVCS + "/{name}", self._delete_claim)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = self._runner.addresses[0][1]
        self.url = f"http://127.0.0.1:{port}"
        return self.url

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        if self._runner is not None:
            await self._runner.cleanup()

    @web.middleware
    async def _record(self, request: web.Request, handler: Any) -> web.StreamResponse:
        self.requests.append((request.method, request.path))
        response: web.StreamResponse = await handler(request)
        return response

    def _later(self, delay: float, action: Any) -> None:
        async def run() -> None:
            await asyncio.sleep(delay)
            action()

        task = asyncio.create_task(run())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # -- what the "controller" does ----------------------------------------------------------------------------

    def _pending(self, obj: Obj) -> None:
        obj["status"] = {
            "observedGeneration": obj["metadata"]["generation"],
            "conditions": [{"type": "Ready", "status": "Unknown", "reason": "RevisionMissing", "message": "..."}],
        }
        if self.ready_delay is not None:
            key = (obj["metadata"]["namespace"], obj["metadata"]["name"])
            generation = obj["metadata"]["generation"]
            self._later(self.ready_delay, lambda: self._make_ready(key, generation))

    def _make_ready(self, key: tuple[str, str], generation: int) -> None:
        obj = self.services.get(key)
        if obj is None or obj["metadata"]["generation"] != generation:
            return
        ns, name = key
        obj["status"] = {
            "observedGeneration": generation,
            "conditions": [{"type": "Ready", "status": "True"}],
            "url": f"http://{name}.{ns}.{self.domain}",
            "address": {"url": self.address.format(name=name, ns=ns)},
        }

    def fail(self, ns: str, name: str, reason: str = "RevisionFailed", message: str = "image pull failed") -> None:
        """Make a Service report Ready=False (as Knative does for a revision that cannot start)."""
        obj = self.services[(ns, name)]
        obj["status"]["conditions"] = [{"type": "Ready", "status": "False", "reason": reason, "message": message}]

    def remove(self, ns: str, name: str, uid: str | None = None) -> None:
        """Delete a Service behind the spawner's back (kubectl delete ksvc); with ``uid``, only that one."""
        obj = self.services.get((ns, name))
        if obj is not None and uid in (None, obj["metadata"]["uid"]):
            del self.services[(ns, name)]

    # -- handlers ----------------------------------------------------------------------------------------------

    async def _create(self, request: web.Request) -> web.Response:
        ns = request.match_info["ns"]
        body: Obj = await request.json()
        name = body["metadata"]["name"]
        if (ns, name) in self.services:
            return _status(409, "AlreadyExists", f'services.serving.knative.dev "{name}" already exists')
        obj = copy.deepcopy(body)
        obj["metadata"].update(namespace=ns, uid=str(uuid.uuid4()), generation=1, resourceVersion="1")
        self.services[(ns, name)] = obj
        self._pending(obj)
        return web.json_response(obj, status=201)

    async def _get(self, request: web.Request) -> web.Response:
        ns, name = request.match_info["ns"], request.match_info["name"]
        obj = self.services.get((ns, name))
        if obj is None:
            return _status(404, "NotFound", f'services.serving.knative.dev "{name}" not found')
        return web.json_response(obj)

    async def _replace(self, request: web.Request) -> web.Response:
        ns, name = request.match_info["ns"], request.match_info["name"]
        current = self.services.get((ns, name))
        if current is None:
            return _status(404, "NotFound", f'services.serving.knative.dev "{name}" not found')
        body: Obj = await request.json()
        if body["metadata"].get("resourceVersion") != current["metadata"]["resourceVersion"]:
            return _status(409, "Conflict", "the object has been modified")
        obj = copy.deepcopy(body)
        version = int(current["metadata"]["resourceVersion"]) + 1
        obj["metadata"].update(
            namespace=ns,
            uid=current["metadata"]["uid"],
            generation=current["metadata"]["generation"] + 1,
            resourceVersion=str(version),
        )
        self.services[(ns, name)] = obj
        self._pending(obj)
        return web.json_response(obj)

    async def _delete(self, request: web.Request) -> web.Response:
        ns, name = request.match_info["ns"], request.match_info["name"]
        obj = self.services.get((ns, name))
        if obj is None:
            return _status(404, "NotFound", f'services.serving.knative.dev "{name}" not found')
        obj["metadata"]["deletionTimestamp"] = "2025-01-01T00:00:00Z"
        uid = obj["metadata"]["uid"]
        self._later(self.delete_delay, lambda: self.remove(ns, name, uid))
        return web.json_response(obj)

    # -- PersistentVolumeClaims: stored as given, nothing else ---------------------------------------------------

    async def _create_claim(self, request: web.Request) -> web.Response:
        ns = request.match_info["ns"]
        body: Obj = await request.json()
        name = body["metadata"]["name"]
        if (ns, name) in self.claims:
            return _status(409, "AlreadyExists", f'persistentvolumeclaims "{name}" already exists')
        obj = copy.deepcopy(body)
        obj["metadata"].update(namespace=ns, uid=str(uuid.uuid4()), resourceVersion="1")
        self.claims[(ns, name)] = obj
        return web.json_response(obj, status=201)

    async def _get_claim(self, request: web.Request) -> web.Response:
        obj = self.claims.get((request.match_info["ns"], request.match_info["name"]))
        if obj is None:
            return _status(404, "NotFound", "persistentvolumeclaims not found")
        return web.json_response(obj)

    async def _delete_claim(self, request: web.Request) -> web.Response:
        obj = self.claims.pop((request.match_info["ns"], request.match_info["name"]), None)
        if obj is None:
            return _status(404, "NotFound", "persistentvolumeclaims not found")
        return web.json_response(obj)
