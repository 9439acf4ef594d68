"""End to end: a real ``jupyter server --gateway-url=<our service>`` runs a notebook on our kernels.

Every request here goes to jupyter_server's own REST and WebSocket API, exactly as JupyterLab would send it;
jupyter_server's GatewayClient relays it to the service. Only the final checks look at the service directly.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest
from jupyter_server.services.kernels.connection.base import (
    deserialize_binary_message,
    deserialize_msg_from_ws_v1,
    serialize_msg_to_ws_v1,
)
from websockets.asyncio.client import ClientConnection, connect

from tests.jupyter_app import JupyterServer, start_jupyter, stop_group
from tests.jupyter_ws import CellResult, Msg, execute_request, message
from tests.service import Service

V1 = "v1.kernel.websocket.jupyter.org"
JUPYTER_TOKEN = "jupyter-server-token-456"
CELL_TIMEOUT = 30.0
KERNEL_MARK = "hello123"

pytestmark = pytest.mark.timeout(120)


# --------------------------------------------------------------------------------------------------------------
# A real jupyter server, pointed at the service
# --------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def jupyter(service: Service, tmp_path_factory: pytest.TempPathFactory) -> Iterator[JupyterServer]:
    assert service.token, "the shared service runs with auth on"
    server = start_jupyter(
        tmp_path_factory.mktemp("jupyter-server"),
        gateway_url=service.url,
        gateway_token=service.token,
        token=JUPYTER_TOKEN,
        args=["--GatewayClient.request_timeout=60"],
        # GatewayClient forwards the KERNEL_* variables of its own process in the POST /api/kernels body.
        env={"KERNEL_TEST_MARK": KERNEL_MARK},
    )
    try:
        yield server
    finally:
        stop_group(server.proc)
        # Keep jupyter server's log (it shows every gateway request) for whoever reads a failure.
        out = Path(__file__).resolve().parent.parent / "test-output" / "test_jupyter_server_gateway"
        out.mkdir(parents=True, exist_ok=True)
        (out / "jupyter-server.log").write_text(server.log())


@pytest.fixture(scope="module")
def kernel_id(jupyter: JupyterServer) -> Iterator[str]:
    """One kernel, started through jupyter server, shared by the notebook tests of this module."""
    r = httpx.post(f"{jupyter.url}/api/kernels", json={"name": "python3"}, headers=jupyter.headers, timeout=60)
    assert r.status_code == 201, f"{r.status_code} {r.text}\n{jupyter.log()}"
    kid: str = r.json()["id"]
    yield kid
    with contextlib.suppress(httpx.HTTPError):
        httpx.delete(f"{jupyter.url}/api/kernels/{kid}", headers=jupyter.headers, timeout=30)


# --------------------------------------------------------------------------------------------------------------
# A frontend on jupyter server's kernel WebSocket, in either wire format
# --------------------------------------------------------------------------------------------------------------


class Frontend:
    """Speaks whichever protocol jupyter server chose: v1 binary frames, or JSON (legacy binary with buffers)."""

    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws
        self.v1 = ws.subprotocol == V1

    async def send(self, msg: Msg) -> None:
        if self.v1:
            parts = [json.dumps(msg[k]).encode() for k in ("header", "parent_header", "metadata", "content")]
            await self.ws.send(serialize_msg_to_ws_v1(parts, msg["channel"]))
        else:
            await self.ws.send(json.dumps(msg))

    async def recv(self, timeout: float = CELL_TIMEOUT) -> Msg:
        frame = await asyncio.wait_for(self.ws.recv(), timeout)
        if self.v1:
            assert isinstance(frame, bytes), "v1 frames are binary"
            channel, parts = deserialize_msg_from_ws_v1(frame)
            header, parent, metadata, content = (json.loads(p) for p in parts[:4])
            return {
                "channel": channel,
                "header": header,
                "parent_header": parent,
                "metadata": metadata,
                "content": content,
                "buffers": parts[4:],
            }
        if isinstance(frame, bytes):
            msg: Msg = deserialize_binary_message(frame)
            return msg
        decoded: Msg = json.loads(frame)
        return decoded

    async def run_cell(
        self,
        code: str,
        timeout: float = CELL_TIMEOUT,
        stdin_answer: str | None = None,
        request: Msg | None = None,
        started: asyncio.Event | None = None,
    ) -> CellResult:
        """Send an execute_request; gather until its execute_reply and its iopub idle have both arrived.

        ``started`` is set at the cell's first stream output (so a test can act while the cell runs)."""
        request = request or execute_request(code, allow_stdin=stdin_answer is not None)
        msg_id = request["header"]["msg_id"]
        await self.send(request)
        reply: Msg | None = None
        idle = False
        iopub: list[Msg] = []
        stdin: list[Msg] = []
        deadline = time.monotonic() + timeout
        while reply is None or not idle:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"cell {code!r}: reply={reply is not None} idle={idle} after {timeout} s")
            msg = await self.recv(left)
            if msg["parent_header"].get("msg_id") != msg_id:
                continue
            if msg["channel"] == "shell":
                reply = msg
            elif msg["channel"] == "stdin":
                stdin.append(msg)
                answer = message("input_reply", {"value": stdin_answer}, channel="stdin", parent=msg["header"])
                await self.send(answer)
            elif msg["channel"] == "iopub":
                iopub.append(msg)
                if started is not None and msg["header"]["msg_type"] == "stream":
                    started.set()
                if msg["header"]["msg_type"] == "status" and msg["content"]["execution_state"] == "idle":
                    idle = True
        return CellResult(reply, iopub, stdin)


@contextlib.asynccontextmanager
async def frontend(
    jupyter: JupyterServer, kid: str, subprotocols: list[str] | None = None, session_id: str | None = None
) -> AsyncIterator[Frontend]:
    url = f"{jupyter.ws_url}/api/kernels/{kid}/channels"
    # JupyterLab names its client session in the URL (jupyter server warns when it is missing).
    url += f"?session_id={session_id or uuid.uuid4().hex}"
    async with connect(
        url,
        additional_headers=jupyter.headers,
        subprotocols=subprotocols,  # type: ignore[arg-type]
        open_timeout=30,
        max_size=None,
    ) as ws:
        yield Frontend(ws)


def result_text(result: CellResult) -> str:
    results = result.of_type("execute_result")
    assert results, f"no execute_result: {result.iopub}"
    text: str = results[0]["content"]["data"]["text/plain"]
    return text


PROTOCOLS = {"json": None, "v1-offered": [V1]}


# --------------------------------------------------------------------------------------------------------------
# REST through jupyter server
# --------------------------------------------------------------------------------------------------------------


async def test_kernelspecs_through_jupyter_server(jupyter: JupyterServer) -> None:
    async with jupyter.client() as c:
        r = await c.get("/api/kernelspecs")
        assert r.status_code == 200, r.text
        specs = r.json()
        assert specs["default"] == "python3"
        assert "python3" in specs["kernelspecs"]
        assert specs["kernelspecs"]["python3"]["spec"]["language"] == "python"
        one = await c.get("/api/kernelspecs/python3")
        assert one.status_code == 200
        assert one.json()["name"] == "python3"
        # jupyter server fetches kernelspec resources (the launcher's logos) from the gateway too.
        logo = await c.get("/kernelspecs/python3/logo-64x64.png")
        assert logo.status_code == 200
        assert logo.content.startswith(b"\x89PNG")


async def test_kernel_listing_through_jupyter_server(jupyter: JupyterServer, service: Service, kernel_id: str) -> None:
    async with jupyter.client() as c:
        listed = (await c.get("/api/kernels")).json()
        assert kernel_id in [k["id"] for k in listed]
        model = (await c.get(f"/api/kernels/{kernel_id}")).json()
        assert model["id"] == kernel_id
        assert model["name"] == "python3"
    async with httpx.AsyncClient(base_url=service.url, headers=service.headers) as s:
        assert kernel_id in [k["id"] for k in (await s.get("/api/kernels")).json()]


# --------------------------------------------------------------------------------------------------------------
# A notebook over jupyter server's kernel WebSocket
# --------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("protocol", PROTOCOLS)
async def test_notebook_cells(jupyter: JupyterServer, kernel_id: str, protocol: str) -> None:
    async with frontend(jupyter, kernel_id, PROTOCOLS[protocol]) as fe:
        # jupyter_server pins the legacy (JSON) protocol when it proxies to a gateway
        # (GatewayWebSocketConnection.kernel_ws_protocol = ""), so a v1 offer falls back like JupyterLab does.
        assert fe.ws.subprotocol is None

        first = await fe.run_cell("x = 41")
        assert first.reply["content"]["status"] == "ok"
        second = await fe.run_cell("x + 1")
        assert second.reply["content"]["status"] == "ok"
        assert result_text(second) == "42"
        assert second.reply["content"]["execution_count"] == first.reply["content"]["execution_count"] + 1

        hello = await fe.run_cell("print('hello')")
        assert hello.stdout == "hello\n"
        assert hello.of_type("stream")[0]["content"]["name"] == "stdout"

        err = await fe.run_cell("1/0")
        assert err.reply["header"]["msg_type"] == "execute_reply"
        assert err.reply["content"]["status"] == "error"
        assert err.reply["content"]["ename"] == "ZeroDivisionError"
        errors = err.of_type("error")
        assert errors, err.iopub
        assert errors[0]["content"]["ename"] == "ZeroDivisionError"
        assert errors[0]["content"]["traceback"]

        # The kernel is still usable after an error.
        after = await fe.run_cell("x * 2")
        assert result_text(after) == "82"


async def test_images(jupyter: JupyterServer, kernel_id: str) -> None:
    async with frontend(jupyter, kernel_id) as fe:
        agg = await fe.run_cell(
            "import io\n"
            "import matplotlib\n"
            "matplotlib.use('Agg')\n"
            "import matplotlib.pyplot as plt\n"
            "from IPython.display import Image, display\n"
            "fig = plt.figure()\n"
            "plt.plot([1, 2])\n"
            "buf = io.BytesIO()\n"
            "fig.savefig(buf, format='png')\n"
            "plt.close(fig)\n"
            "display(Image(data=buf.getvalue()))\n"
        )
        assert agg.reply["content"]["status"] == "ok", agg.reply["content"]
        shown = agg.of_type("display_data")
        assert shown, agg.iopub
        assert base64.b64decode(shown[0]["content"]["data"]["image/png"]).startswith(b"\x89PNG")

        # What a notebook does: the inline backend turns plt.show() into a display_data.
        inline = await fe.run_cell("%matplotlib inline\nimport matplotlib.pyplot as plt\nplt.plot([1, 2])\nplt.show()")
        assert inline.reply["content"]["status"] == "ok", inline.reply["content"]
        pngs = [m for m in inline.of_type("display_data") if "image/png" in m["content"]["data"]]
        assert pngs, inline.iopub
        assert base64.b64decode(pngs[0]["content"]["data"]["image/png"]).startswith(b"\x89PNG")


async def test_kernel_env_from_gateway_client(jupyter: JupyterServer, kernel_id: str) -> None:
    async with frontend(jupyter, kernel_id) as fe:
        result = await fe.run_cell("import os\nos.environ.get('KERNEL_TEST_MARK')")
        assert result_text(result) == repr(KERNEL_MARK)


async def test_stdin_input(jupyter: JupyterServer, kernel_id: str) -> None:
    async with frontend(jupyter, kernel_id) as fe:
        result = await fe.run_cell("name = input('who? ')\nprint('hi', name)", stdin_answer="grace")
        assert result.stdin, "no input_request"
        assert result.stdin[0]["header"]["msg_type"] == "input_request"
        assert result.stdin[0]["content"]["prompt"] == "who? "
        assert result.reply["content"]["status"] == "ok"
        assert result.stdout == "hi grace\n"


async def test_interrupt_through_jupyter_server(jupyter: JupyterServer, kernel_id: str) -> None:
    async with frontend(jupyter, kernel_id) as fe, jupyter.client() as c:
        running = asyncio.Event()
        code = "import time\nprint('running', flush=True)\ntime.sleep(120)"
        task = asyncio.create_task(fe.run_cell(code, timeout=110, started=running))
        await asyncio.wait_for(running.wait(), 60)
        r = await c.post(f"/api/kernels/{kernel_id}/interrupt")
        assert r.status_code == 204, r.text
        # Well before the cell's own end: only the interrupt can have stopped it.
        result = await asyncio.wait_for(task, 100)
        assert result.reply["content"]["status"] == "error"
        assert result.reply["content"]["ename"] == "KeyboardInterrupt"
        # And the kernel takes the next cell.
        assert result_text(await fe.run_cell("'alive'")) == "'alive'"


async def test_two_connections_get_their_own_replies(jupyter: JupyterServer, kernel_id: str) -> None:
    async with frontend(jupyter, kernel_id) as one, frontend(jupyter, kernel_id, [V1]) as two:
        r1, r2 = await asyncio.gather(one.run_cell("'from one'"), two.run_cell("'from two'"))
        assert r1.reply["content"]["status"] == "ok"
        assert r2.reply["content"]["status"] == "ok"
        assert result_text(r1) == "'from one'"
        assert result_text(r2) == "'from two'"
        # A shell reply goes only to the connection that asked; iopub goes to both.
        request = execute_request("'only one'")
        task = asyncio.create_task(one.run_cell("", request=request))
        idle_on_two = False
        deadline = time.monotonic() + CELL_TIMEOUT
        while time.monotonic() < deadline:
            msg = await two.recv(deadline - time.monotonic())
            if msg["parent_header"].get("msg_id") != request["header"]["msg_id"]:
                continue
            assert msg["channel"] != "shell", "connection two got connection one's execute_reply"
            if msg["header"]["msg_type"] == "status" and msg["content"]["execution_state"] == "idle":
                idle_on_two = True
                break
        assert idle_on_two
        assert result_text(await asyncio.wait_for(task, CELL_TIMEOUT)) == "'only one'"


async def test_restart_keeps_websocket(jupyter: JupyterServer, kernel_id: str) -> None:
    async with frontend(jupyter, kernel_id) as fe, jupyter.client() as c:
        await fe.run_cell("x = 41")
        assert result_text(await fe.run_cell("x + 1")) == "42"
        r = await c.post(f"/api/kernels/{kernel_id}/restart")
        assert r.status_code == 200, r.text
        assert r.json()["id"] == kernel_id
        # The same WebSocket runs cells on the fresh kernel, whose state is gone.
        gone = await fe.run_cell("x")
        assert gone.reply["content"]["status"] == "error"
        assert gone.reply["content"]["ename"] == "NameError"
        fresh = await fe.run_cell("'x' in globals()")
        assert result_text(fresh) == "False"
        # KERNEL_* variables survive a restart (the replacement kernel gets the session's environment).
        env = await fe.run_cell("__import__('os').environ.get('KERNEL_TEST_MARK')")
        assert result_text(env) == repr(KERNEL_MARK)


async def test_delete_kernel_through_jupyter_server(jupyter: JupyterServer, service: Service) -> None:
    async with jupyter.client() as c, httpx.AsyncClient(base_url=service.url, headers=service.headers) as s:
        r = await c.post("/api/kernels", json={"name": "python3"})
        assert r.status_code == 201, r.text
        kid = r.json()["id"]
        async with frontend(jupyter, kid) as fe:
            assert result_text(await fe.run_cell("6 * 7")) == "42"
        assert kid in [k["id"] for k in (await s.get("/api/kernels")).json()]

        deleted = await c.delete(f"/api/kernels/{kid}")
        assert deleted.status_code == 204, deleted.text
        assert kid not in [k["id"] for k in (await c.get("/api/kernels")).json()]
        assert (await c.get(f"/api/kernels/{kid}")).status_code == 404
        assert kid not in [k["id"] for k in (await s.get("/api/kernels")).json()]
        assert (await s.get(f"/api/kernels/{kid}")).status_code == 404


async def test_session_as_jupyterlab_does(jupyter: JupyterServer, service: Service) -> None:
    """JupyterLab opens a notebook with POST /api/sessions, then the kernel WebSocket offering v1."""
    async with jupyter.client() as c, httpx.AsyncClient(base_url=service.url, headers=service.headers) as s:
        r = await c.post(
            "/api/sessions",
            json={
                "path": "Untitled.ipynb",
                "name": "Untitled.ipynb",
                "type": "notebook",
                "kernel": {"name": "python3"},
            },
        )
        assert r.status_code == 201, r.text
        session = r.json()
        kid = session["kernel"]["id"]
        assert session["kernel"]["name"] == "python3"
        assert kid in [k["id"] for k in (await s.get("/api/kernels")).json()]
        assert session["id"] in [x["id"] for x in (await c.get("/api/sessions")).json()]

        async with frontend(jupyter, kid, [V1], session_id="lab-client-session") as fe:
            await fe.run_cell("y = 20")
            assert result_text(await fe.run_cell("y + 22")) == "42"

        deleted = await c.delete(f"/api/sessions/{session['id']}")
        assert deleted.status_code == 204, deleted.text
        assert session["id"] not in [x["id"] for x in (await c.get("/api/sessions")).json()]
        assert kid not in [k["id"] for k in (await s.get("/api/kernels")).json()]
