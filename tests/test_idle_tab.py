"""An idle JupyterLab tab sends nothing to the gateway: skg_jupyter's classes in a real jupyter_server.

A real gateway (the shared ``service``) sits behind tests/recording_proxy.py, which records every request
and WebSocket that reaches it; a real ``jupyter server`` is pointed at the proxy with the three skg_jupyter
classes and a short idle timeout. The test is the browser: it polls what JupyterLab polls and runs cells over
jupyter_server's kernel WebSocket, and checks at the proxy what the gateway saw.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import struct
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import httpx
import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.protocol import State

import skg_jupyter
from skg_jupyter.traffic import KernelLink, RecentIds, Traffic, local_kernel_info, parse
from tests.jupyter_app import JupyterServer, start_jupyter, stop_group
from tests.jupyter_ws import Msg, execute_request, message, recv_json, run_cell
from tests.recording_proxy import RecordingProxy
from tests.service import Service

ROOT = Path(__file__).resolve().parent.parent
IDLE_TIMEOUT = 1.0  # seconds without kernel traffic before jupyter_server closes its gateway socket
# The quiet window: JupyterLab's polls, QUIET_ROUNDS times, ROUND_GAP apart. Longer than GatewayClient's
# reconnect delay (1 s + up to 1 s of jitter) and than IDLE_TIMEOUT, so a reconnect or an idle-timer wake-up
# would fall inside it.
QUIET_ROUNDS = 12
ROUND_GAP = 0.25
DEADLINE = 30.0
TAB = "tab-" + uuid.uuid4().hex[:8]
# A cell that returns at once and leaves a thread printing for a few seconds, as a progress thread would.
TICKER = """
import threading, time
def tick():
    for _ in range(40):
        print("tick", flush=True)
        time.sleep(0.1)
threading.Thread(target=tick, daemon=True).start()
"""

pytestmark = pytest.mark.timeout(180)


# ---- pure parts -----------------------------------------------------------------------------------------------


def _binary(msg: Msg, *buffers: bytes) -> bytes:
    """jupyter_server's legacy binary frame: part count, offsets, the JSON message, the buffers."""
    parts = [json.dumps(msg).encode(), *buffers]
    offsets = [4 * (len(parts) + 1)]
    for part in parts[:-1]:
        offsets.append(offsets[-1] + len(part))
    return struct.pack(f"!{len(parts) + 1}I", len(parts), *offsets) + b"".join(parts)


def test_parse_reads_text_and_binary_frames_and_refuses_the_rest() -> None:
    msg = {**execute_request("1"), "channel": "shell"}
    assert parse(json.dumps(msg)) == msg
    assert parse(_binary(msg, b"\x00\xff" * 10)) == msg
    for junk in ("", "not json", "[1]", '{"header": 3}', b"\x00\x00", b"\x00\x00\x00\x09abc"):
        assert parse(junk) is None


def test_a_cell_is_running_until_its_reply_or_idle_status() -> None:
    traffic = Traffic()
    cell = execute_request("import time; time.sleep(9)")
    traffic.to_kernel(cell)
    traffic.to_kernel(message("complete_request", {"code": "x", "cursor_pos": 1}))
    assert traffic.busy and traffic.running == {cell["header"]["msg_id"]}
    other = message("status", {"execution_state": "idle"}, "iopub", parent={"msg_id": "someone-else"})
    traffic.from_kernel(other)
    assert traffic.busy, "another request's idle status does not end this cell"
    traffic.from_kernel(message("execute_reply", {"status": "ok"}, "shell", parent=cell["header"]))
    assert not traffic.busy
    traffic.to_kernel(cell)
    traffic.from_kernel(message("status", {"execution_state": "idle"}, "iopub", parent=cell["header"]))
    assert not traffic.busy
    traffic.to_kernel(cell)
    traffic.from_kernel(message("status", {"execution_state": "restarting"}, "iopub"))
    assert not traffic.busy, "a restarting kernel runs nothing of ours any more"


def test_kernel_info_is_answered_locally_only_for_an_idle_kernel_nobody_talks_to() -> None:
    link = KernelLink()
    assert not link.can_answer_kernel_info
    reply = message("kernel_info_reply", {"status": "ok", "implementation": "ipython"}, "shell")
    reply["header"]["session"] = "kernel-session-1"
    link.observe(reply)
    link.observe(message("status", {"execution_state": "busy"}, "iopub"))
    assert not link.can_answer_kernel_info
    link.observe(message("status", {"execution_state": "idle"}, "iopub"))
    assert link.can_answer_kernel_info
    link.upstream = 1
    assert not link.can_answer_kernel_info

    request = message("kernel_info_request", {})
    busy, answer, idle = local_kernel_info(request, reply)
    for msg in (busy, answer, idle):
        assert msg["parent_header"] == request["header"]
        assert msg["header"]["session"] == "kernel-session-1", "JupyterLab tracks the kernel's session id"
        assert set(msg["header"]) >= {"msg_id", "msg_type", "session", "username", "date", "version"}
    assert [m["channel"] for m in (busy, answer, idle)] == ["iopub", "shell", "iopub"]
    assert [busy["content"]["execution_state"], idle["content"]["execution_state"]] == ["busy", "idle"]
    assert answer["content"] == reply["content"] and answer["header"]["msg_id"] != reply["header"]["msg_id"]


def test_recent_ids_forget_the_oldest() -> None:
    recent = RecentIds(size=3)
    assert [recent.seen(i) for i in "abca"] == [False, False, False, True]
    assert not recent.seen("d")  # a, b, c, d: "a" is dropped
    assert not recent.seen("a"), "the oldest id was forgotten"
    assert recent.seen("d") and not recent.seen("")


# ---- a real jupyter_server in front of a real gateway ---------------------------------------------------------


@pytest.fixture(scope="module")
async def proxy(service: Service) -> AsyncIterator[RecordingProxy]:
    recorder = RecordingProxy(service.url)
    await recorder.start()
    try:
        yield recorder
    finally:
        await recorder.stop()


@pytest.fixture(scope="module")
async def jupyter(
    proxy: RecordingProxy, service: Service, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[JupyterServer]:
    assert service.token
    server = await asyncio.to_thread(
        start_jupyter,
        tmp_path_factory.mktemp("idle-tab"),
        gateway_url=proxy.url,
        gateway_token=service.token,
        token="idle-tab-token",
        args=[*skg_jupyter.SERVER_OPTIONS, f"--IdleClosingGatewayWebSocketConnection.idle_timeout={IDLE_TIMEOUT}"],
        env={"PYTHONPATH": str(ROOT)},  # skg_jupyter from this checkout, installed or not
        log_name="jupyter-idle-tab.log",
    )
    try:
        yield server
    finally:
        await asyncio.to_thread(stop_group, server.proc)
        out = ROOT / "test-output" / "test_idle_tab"
        out.mkdir(parents=True, exist_ok=True)
        (out / "jupyter-server.log").write_text(server.log())


async def until(what: str, check: Callable[[], bool]) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + DEADLINE
    while not check():
        assert loop.time() < deadline, f"{what}: not within {DEADLINE:g} s"
        await asyncio.sleep(0.05)


async def poll_like_jupyterlab(client: httpx.AsyncClient, kid: str) -> None:
    """What an open JupyterLab tab asks its server over and over, kernels and specs included."""
    kernels = await client.get("/api/kernels")
    assert kernels.status_code == 200 and kid in [k["id"] for k in kernels.json()], kernels.text
    for path in ("/api/sessions", "/api/kernelspecs", f"/api/kernels/{kid}", "/api/status"):
        r = await client.get(path)
        assert r.status_code == 200, f"{path}: {r.status_code} {r.text}"
    assert "python3" in (await client.get("/api/kernelspecs")).json()["kernelspecs"]


async def quiet_window(proxy: RecordingProxy, client: httpx.AsyncClient, kid: str, ws: ClientConnection) -> None:
    """JupyterLab's polls for the whole window: answered every time, and nothing reaches the gateway."""
    seen = len(proxy.requests)
    for _ in range(QUIET_ROUNDS):
        await poll_like_jupyterlab(client, kid)
        assert proxy.requests[seen:] == [] and proxy.open_sockets == 0, proxy.requests[seen:]
        await asyncio.sleep(ROUND_GAP)  # the passage of time is what is tested: nothing may wake up in it
    assert ws.state is State.OPEN, "the browser's socket stays open throughout"


async def ask(ws: ClientConnection, msg: Msg) -> tuple[Msg, list[Msg]]:
    """Send a shell request; return its reply and the iopub messages up to its idle status."""
    await ws.send(json.dumps(msg))
    mid, reply, iopub = msg["header"]["msg_id"], None, list[Msg]()
    while reply is None or not iopub or iopub[-1]["content"].get("execution_state") != "idle":
        got = await recv_json(ws, DEADLINE)
        if got["parent_header"].get("msg_id") != mid:
            continue
        if got["channel"] == "shell":
            reply = got
        elif got["channel"] == "iopub":
            iopub.append(got)
    return reply, iopub


async def test_an_idle_tab_leaves_the_gateway_alone(
    jupyter: JupyterServer, proxy: RecordingProxy, tmp_path: Path
) -> None:
    async with jupyter.client() as client:
        r = await client.post("/api/kernels", json={"name": "python3"})
        assert r.status_code == 201, f"{r.text}\n{jupyter.log()[-3000:]}"
        kid = r.json()["id"]
        ws_url = f"{jupyter.ws_url}/api/kernels/{kid}/channels?session_id={TAB}"
        opened: Callable[[], int] = lambda: sum(1 for method, _ in proxy.requests if method == "WS")  # noqa: E731

        async with connect(ws_url, additional_headers=jupyter.headers, open_timeout=DEADLINE) as ws:
            # The browser connects: no gateway socket until it sends something.
            assert opened() == 0
            reply, iopub = await ask(ws, message("kernel_info_request", {}))
            assert reply["content"]["status"] == "ok" and opened() == 1
            assert proxy.requests[-1] == ("WS", f"/api/kernels/{kid}/channels")
            cell = await run_cell(ws, "x = 6 * 7\nprint(x)", timeout=DEADLINE)
            assert cell.stdout == "42\n"
            await poll_like_jupyterlab(client, kid)  # as JupyterLab does all along: the answers are kept

            # Idle: jupyter_server closes its gateway socket itself, cleanly; the browser's stays open.
            await until("the idle gateway socket closed", lambda: proxy.open_sockets == 0)
            assert proxy.sockets[-1].client_close_code == 1000
            await quiet_window(proxy, client, kid, ws)

            # The next cell reopens it; state and output are there.
            before = opened()
            cell = await run_cell(ws, "print(x + 1)", timeout=DEADLINE)
            assert cell.stdout == "43\n" and opened() == before + 1

            # A thread of the kernel prints on (no cell of the tab runs): traffic keeps the socket open...
            cell = await run_cell(ws, TICKER, timeout=DEADLINE)
            assert cell.reply["content"]["status"] == "ok"
            await _next(ws, lambda m: m["header"]["msg_type"] == "stream" and "tick" in m["content"]["text"])
            # ...and while it is open, JupyterLab's polls go to the gateway (the counter counts them).
            listed = proxy.requests.count(("GET", "/api/kernels"))
            await poll_like_jupyterlab(client, kid)
            assert proxy.requests.count(("GET", "/api/kernels")) > listed and proxy.open_sockets == 1

            # Knative cuts the socket (its timeouts): no cell of the tab runs, so nothing reconnects.
            await proxy.cut()
            assert proxy.sockets[-1].cut and proxy.sockets[-1].client_close_code is None
            await quiet_window(proxy, client, kid, ws)

        # The browser reconnects (a reload, or its own socket cut): its kernel_info_request is answered by
        # jupyter_server from the kernel's last reply, without waking the gateway.
        seen = len(proxy.requests)
        async with connect(ws_url, additional_headers=jupyter.headers, open_timeout=DEADLINE) as ws:
            reply, iopub = await ask(ws, message("kernel_info_request", {}))
            assert reply["content"]["status"] == "ok" and reply["content"]["implementation"] == "ipython"
            assert [m["content"]["execution_state"] for m in iopub] == ["busy", "idle"]
            assert proxy.requests[seen:] == []
            await quiet_window(proxy, client, kid, ws)
            cell = await run_cell(ws, "print(x * 2)", timeout=DEADLINE)
            assert cell.stdout == "84\n"
            assert proxy.requests[seen:] == [("WS", f"/api/kernels/{kid}/channels")]

            # Cut under a running cell (it waits for input): jupyter_server reconnects at once, with the same
            # session_id. (That the gateway then resumes the channel, the reply included, is the gateway's part,
            # tested with its replay buffer.)
            request = execute_request("print('got', input())", allow_stdin=True)
            await ws.send(json.dumps(request))
            prompt = await _next(ws, lambda m: m["channel"] == "stdin" and m["header"]["msg_type"] == "input_request")
            before = opened()
            await proxy.cut()
            await until("reconnected under the running cell", lambda: opened() == before + 1 and proxy.open_sockets > 0)
            assert proxy.requests[-1] == ("WS", f"/api/kernels/{kid}/channels")
            answer = message("input_reply", {"value": "it"}, channel="stdin", parent=prompt["header"])
            await ws.send(json.dumps(answer))

        with contextlib.suppress(httpx.HTTPError):
            await client.delete(f"/api/kernels/{kid}")


async def _next(ws: ClientConnection, match: Callable[[Msg], bool]) -> Msg:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + DEADLINE
    while True:
        msg = await recv_json(ws, max(deadline - loop.time(), 0.01))
        if match(msg):
            return msg
