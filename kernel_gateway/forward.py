"""Reaching a session's owner replica over HTTP: a request forwarded and its answer streamed back.

The forwarded request carries this replica's inter-replica claim (``peers.py``), never the user's token. How
long it may wait is bounded twice: by the owner's own limit on a cell (``Settings.forward_limit``), and by the
owner's lease, which this replica watches meanwhile. An owner that stopped renewing (paused, partitioned) is
given up on when its lease lapses: the client gets 503 + Retry-After, and its retry takes the session over.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable

import httpx
import orjson
from starlette.background import BackgroundTask
from starlette.requests import HTTPConnection, Request
from starlette.responses import Response, StreamingResponse

from notebook_state.store import StoreUnavailable

from .auth import caller_of
from .deps import Gateway
from .peers import REPLICA_HEADER, peer_claim
from .placement import Owner, OwnerGone, OwnerMoved
from .sessions.errors import OwnerUnreachable
from .sessions.session import Session
from .settings import Settings

Here = Callable[[Session], Awaitable[Response]]

_HOP_HEADERS = {"content-type", "accept", "last-event-id"}
"""What of the client's request travels on. Not ``authorization``: the claim replaces the user's token."""


def connect_timeout(settings: Settings) -> float:
    return min(2.0, settings.lease_ttl / 3)


def http_client(settings: Settings) -> httpx.AsyncClient:
    timeout = httpx.Timeout(settings.forward_limit, connect=connect_timeout(settings))
    return httpx.AsyncClient(timeout=timeout, transport=LazyTransport())


class LazyTransport(httpx.AsyncBaseTransport):
    """httpx's own transport, made at the first forward: its TLS context (the CA bundle parsed, 50-250 ms of
    CPU) is then not on a cold start's path to its first result, which forwards nothing."""

    def __init__(self) -> None:
        self.transport: httpx.AsyncHTTPTransport | None = None

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if self.transport is None:
            self.transport = httpx.AsyncHTTPTransport()
        return await self.transport.handle_async_request(request)

    async def aclose(self) -> None:
        if self.transport is not None:
            await self.transport.aclose()


def is_forwarded(gw: Gateway, conn: HTTPConnection) -> bool:
    """A request another replica sent here: one with a valid inter-replica claim (a client cannot forge it)."""
    return peer_claim(gw.peers, conn) is not None


def refused(exc: BaseException) -> bool:
    """The connection was refused: nothing listens at the owner's address, so the owner is provably gone."""
    seen: BaseException | None = exc
    for _ in range(8):
        if seen is None:
            return False
        if isinstance(seen, ConnectionRefusedError):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


async def owner_lapsed(gw: Gateway, owner: Owner) -> str:
    """Return (why) once ``owner`` no longer holds the lease it held, or nobody can say for a whole TTL."""
    ttl = gw.settings.lease_ttl
    confirmed = time.monotonic()
    while True:
        await asyncio.sleep(max(ttl / 3, 0.1))
        try:
            record = await gw.manager.store.get(owner.session_id)
        except StoreUnavailable:
            if time.monotonic() - confirmed > ttl:
                return f"the owner {owner.url} did not answer and the state store cannot confirm its lease"
            continue
        if record is None:
            # The session was deleted: by the owner answering this very request (a DELETE forwarded to it
            # releases the lease before its 204 is sent), or by someone else; either way the owner's own answer
            # is the true one, and the forward's timeout bounds the wait for it.
            confirmed = time.monotonic()
            continue
        lease = record.lease
        if lease is None or (lease.owner, lease.epoch) != (owner.replica, owner.epoch):
            return f"the owner {owner.url} stopped answering and its lease lapsed"
        confirmed = time.monotonic()


async def _race(gw: Gateway, owner: Owner, work: Awaitable[httpx.Response]) -> tuple[httpx.Response, asyncio.Task[str]]:
    """Send, while watching the owner's lease; the watch goes on (for the body) after the answer began."""
    send = asyncio.ensure_future(work)
    watch = asyncio.ensure_future(owner_lapsed(gw, owner))
    await asyncio.wait({send, watch}, return_when=asyncio.FIRST_COMPLETED)
    if not send.done():
        send.cancel()
        raise OwnerUnreachable(f"session {owner.session_id!r}: {watch.result()}; retry to reach its new owner")
    try:
        return send.result(), watch
    except httpx.ConnectError as exc:
        watch.cancel()
        if refused(exc):
            raise OwnerGone(f"owner {owner.replica} refused the connection at {owner.url}") from exc
        message = f"session {owner.session_id!r}: its owner {owner.url} is unreachable: {exc}"
        raise OwnerUnreachable(message, cell="not run") from exc
    except httpx.ConnectTimeout as exc:
        watch.cancel()
        message = f"session {owner.session_id!r}: its owner {owner.url} did not accept the connection: {exc}"
        raise OwnerUnreachable(message, cell="not run") from exc
    except httpx.HTTPError as exc:
        watch.cancel()
        raise OwnerUnreachable(f"session {owner.session_id!r}: its owner {owner.url} did not answer: {exc}") from exc


async def forward_request(gw: Gateway, request: Request, owner: Owner, tenant: str | None = None) -> Response:
    """Relay the request to the owner and stream its answer back (JSON and SSE alike).

    Raises OwnerGone when the owner provably is not there any more (refused, or another replica answered),
    OwnerMoved when it says the session moved on, OwnerUnreachable (503) when it does not answer in time.
    """
    gw.peer_addresses.check(owner.session_id, owner.url)  # the address came from the store: a replica's?
    headers = {k: v for k, v in request.headers.items() if k.lower() in _HOP_HEADERS}
    headers.update(gw.peers.headers(request.method, request.url.path, tenant, to=owner.replica))
    body = await request.body()
    outgoing = gw.http.build_request(
        request.method, owner.url.rstrip("/") + request.url.path, params=request.query_params, headers=headers,
        content=body,
    )  # fmt: skip
    upstream, watch = await _race(gw, owner, gw.http.send(outgoing, stream=True))
    if upstream.status_code == 421:
        watch.cancel()
        await upstream.aclose()
        answered = upstream.headers.get(REPLICA_HEADER)
        if answered and answered != owner.replica:
            raise OwnerGone(f"replica {answered} answers at {owner.url}, not the owner {owner.replica}: it restarted")
        raise OwnerMoved()
    gw.metrics.forwards.inc()
    sse = upstream.headers.get("content-type", "").startswith("text/event-stream")

    async def relay() -> AsyncIterator[bytes]:
        chunks = upstream.aiter_raw()
        try:
            while True:
                step = asyncio.ensure_future(anext(chunks))
                await asyncio.wait({step, watch}, return_when=asyncio.FIRST_COMPLETED)
                if not step.done():
                    step.cancel()
                    problem = watch.result()
                    break
                try:
                    yield step.result()
                except StopAsyncIteration:
                    return
                except httpx.HTTPError as exc:
                    problem = f"the owner {owner.url} broke off: {exc}"
                    break
            if sse:  # the stream has started: the failure travels as an event, like any other
                yield (
                    b"event: error\ndata: " + orjson.dumps({"reason": "OwnerUnreachable", "message": problem}) + b"\n\n"
                )
        finally:
            watch.cancel()

    keep = {k: v for k, v in upstream.headers.items() if k.lower() in ("content-type", "location", "cache-control")}
    return StreamingResponse(
        relay(), status_code=upstream.status_code, headers=keep, background=BackgroundTask(upstream.aclose)
    )


async def delete_anywhere(gw: Gateway, request: Request, session_id: str) -> Response:
    """Delete a session: through its live owner (which shuts its kernel down), else straight from the store."""
    manager = gw.manager
    tenant = caller_of(request).tenant
    if session_id not in manager.sessions and not is_forwarded(gw, request):
        lease = (await manager.record(session_id, tenant)).lease
        if lease is not None and lease.held_by_other(manager.replica_id, time.time()):
            owner = Owner(session_id, lease.owner, lease.url, lease.epoch)
            with contextlib.suppress(OwnerGone, OwnerMoved):
                return await forward_request(gw, request, owner, tenant)
    await manager.delete(session_id, tenant)
    return Response(status_code=204)


async def on_owner(gw: Gateway, request: Request, session_id: str, here: Here) -> Response:
    """Run ``here`` on the live session wherever placement finds it; forward to its owner otherwise."""
    claim = peer_claim(gw.peers, request)
    tenant = caller_of(request).tenant
    return await gw.placement.serve(
        session_id, claim, here, lambda owner: forward_request(gw, request, owner, tenant), tenant
    )
