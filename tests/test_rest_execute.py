"""The REST face against a real service process and real ipykernel kernels."""

from __future__ import annotations

import ast
import json
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.kernel_process import CONNECTION_FILE, host_pid
from tests.service import Service, running_service


@pytest.fixture
def client(service: Service) -> Iterator[httpx.Client]:
    with service.client() as c:
        yield c


def test_state_carries_over_between_calls(client: httpx.Client) -> None:
    first = client.post("/execute", json={"code": "x = 20\nprint('set')"})
    assert first.status_code == 200
    body = first.json()
    assert body["status"] == "ok"
    assert body["outputs"] == [{"output_type": "stream", "name": "stdout", "text": "set\n"}]
    sid = body["session"]
    second = client.post("/execute", json={"code": "x + 22", "session": sid}).json()
    assert second["session"] == sid
    assert second["execution_count"] == body["execution_count"] + 1
    assert second["outputs"] == [
        {
            "output_type": "execute_result",
            "execution_count": second["execution_count"],
            "data": {"text/plain": "42"},
            "metadata": {},
        }
    ]


def test_error_output_and_reply(client: httpx.Client) -> None:
    body = client.post("/execute", json={"code": "1/0"}).json()
    assert body["status"] == "error"
    assert body["error"]["ename"] == "ZeroDivisionError"
    assert body["outputs"][-1]["output_type"] == "error"
    assert body["outputs"][-1]["ename"] == "ZeroDivisionError"
    assert any("ZeroDivisionError" in line for line in body["outputs"][-1]["traceback"])


def test_image_display_data(client: httpx.Client) -> None:
    code = "%matplotlib inline\nimport matplotlib.pyplot as plt\nplt.plot([1, 2, 3])\nplt.show()"
    body = client.post("/execute", json={"code": code}).json()
    assert body["status"] == "ok", body
    images = [o for o in body["outputs"] if o["output_type"] == "display_data" and "image/png" in o["data"]]
    assert images, body["outputs"]
    import base64

    assert base64.b64decode(images[0]["data"]["image/png"]).startswith(b"\x89PNG")


def test_consecutive_stream_text_merges_and_clear_output(client: httpx.Client) -> None:
    code = (
        "import sys\nfrom IPython.display import clear_output\n"
        "print('a')\nprint('b')\nclear_output()\nprint('c', end='')\nsys.stdout.flush()\nprint('d')"
    )
    body = client.post("/execute", json={"code": code}).json()
    assert body["outputs"] == [{"output_type": "stream", "name": "stdout", "text": "cd\n"}]


def test_unknown_session_is_404(client: httpx.Client) -> None:
    r = client.post("/execute", json={"code": "1", "session": "no-such-session"})
    assert r.status_code == 404
    assert "no-such-session" in r.json()["message"]


def test_sessions_crud_with_client_chosen_id(client: httpx.Client) -> None:
    r = client.post("/sessions", json={"id": "my-session.1"})
    assert r.status_code == 201
    assert r.headers["location"] == "/sessions/my-session.1"
    assert r.json()["id"] == "my-session.1"
    assert client.post("/sessions", json={"id": "my-session.1"}).status_code == 409
    client.post("/execute", json={"code": "y = 5", "session": "my-session.1"})
    info = client.get("/sessions/my-session.1").json()
    assert info["execution_count"] == 1
    assert info["kernel_alive"] is True
    assert "my-session.1" in [s["id"] for s in client.get("/sessions").json()]
    # A REST session is a Jupyter kernel, and the reverse.
    assert client.get("/api/kernels/my-session.1").json()["id"] == "my-session.1"
    assert client.delete("/sessions/my-session.1").status_code == 204
    assert client.get("/sessions/my-session.1").status_code == 404
    assert client.delete("/sessions/my-session.1").status_code == 404


def test_kernel_id_works_as_session(client: httpx.Client) -> None:
    kid = client.post("/api/kernels", json={"name": "python3"}).json()["id"]
    assert client.post("/execute", json={"code": "z = 3", "session": kid}).json()["status"] == "ok"
    assert client.post("/execute", json={"code": "z * 2", "session": kid}).json()["outputs"][0]["data"] == {
        "text/plain": "6"
    }
    client.delete(f"/api/kernels/{kid}")


def test_input_on_rest_is_a_clear_error(client: httpx.Client) -> None:
    body = client.post("/execute", json={"code": "input('name? ')"}, timeout=30).json()
    assert body["status"] == "error"
    assert body["error"]["ename"] == "StdinNotImplementedError"


@pytest.mark.parametrize(
    ("payload", "status", "fragment"),
    [
        ('{"code": ', 422, "JSON"),
        ('{"code": 5}', 422, "code"),
        ('{"session": "abc"}', 422, "code"),
        ('{"code": "1", "timeout": -1}', 422, "timeout"),
        ('{"code": "1", "timeout": "soon"}', 422, "timeout"),
        ('{"code": "1", "session": "bad id!"}', 422, "session"),
        ('{"code": "1", "colour": "red"}', 422, "colour"),
        ("[1, 2]", 422, "body"),
    ],
)
def test_bad_input_is_a_clear_4xx(client: httpx.Client, payload: str, status: int, fragment: str) -> None:
    r = client.post("/execute", content=payload, headers={"content-type": "application/json"})
    assert r.status_code == status
    body = r.json()
    assert fragment.lower() in json.dumps(body).lower()
    assert body["reason"] and body["message"]


def test_bad_session_id_on_create(client: httpx.Client) -> None:
    r = client.post("/sessions", json={"id": "{slot}"})
    assert r.status_code == 422
    assert "id" in r.json()["message"]


def test_oversized_body_is_413(client: httpx.Client) -> None:
    r = client.post("/execute", json={"code": "#" * 2_000_000})
    assert r.status_code == 413
    assert "limit" in r.json()["message"]


def test_oversized_chunked_body_is_413(client: httpx.Client) -> None:
    def chunks() -> Iterator[bytes]:
        yield b'{"code": "'
        for _ in range(40):
            yield b"#" * 65536
        yield b'"}'

    r = client.post("/execute", content=chunks(), headers={"content-type": "application/json"})
    assert r.status_code == 413


def test_streaming_yields_outputs_as_they_happen(client: httpx.Client) -> None:
    code = "import time\nprint('first', flush=True)\ntime.sleep(1.5)\nprint('second')\n'done'"
    events: list[tuple[str, dict[str, object], float]] = []
    with client.stream("POST", "/execute/stream", json={"code": code}) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        name = ""
        for line in r.iter_lines():
            if line.startswith("event: "):
                name = line[len("event: ") :]
            elif line.startswith("data: "):
                events.append((name, json.loads(line[len("data: ") :]), time.monotonic()))
    names = [e[0] for e in events]
    assert names[0] == "session"
    assert names[-1] == "reply"
    outputs = [e for e in events if e[0] == "output"]
    assert [o[1].get("text") for o in outputs[:2]] == ["first\n", "second\n"]
    # The first output reached the client while the cell was still sleeping.
    assert events[-1][2] - outputs[0][2] >= 1.0
    reply = events[-1][1]
    assert reply["status"] == "ok"
    assert reply["session"] == events[0][1]["session"]
    assert reply["outputs"][-1]["data"] == {"text/plain": "'done'"}


def test_streaming_unknown_session_is_404_before_stream(client: httpx.Client) -> None:
    r = client.post("/execute/stream", json={"code": "1", "session": "missing"})
    assert r.status_code == 404


def test_metrics_count_executions(client: httpx.Client) -> None:
    client.post("/execute", json={"code": "1"})
    client.get("/sessions/not-there")
    text = client.get("/metrics").text
    assert 'skg_http_errors_total{status="404"}' in text
    assert 'skg_executions_total{status="ok"}' in text
    assert "skg_execution_seconds_bucket" in text
    assert "skg_pool_ready_kernels" in text
    assert "skg_sessions" in text


def test_openapi_documents_the_api(client: httpx.Client) -> None:
    spec = client.get("/openapi.json").json()
    for path in ("/execute", "/execute/stream", "/sessions", "/sessions/{session_id}", "/api/kernels"):
        assert path in spec["paths"]
    assert client.get("/docs").status_code == 200


@pytest.fixture(scope="module")
def tight_service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    args = ["--pool-size", "1", "--interrupt-grace", "2", "--output-limit", "4096"]
    with running_service(tmp_path_factory.mktemp("tight"), args) as svc:
        yield svc


def test_timeout_interrupts_and_keeps_state(tight_service: Service) -> None:
    with tight_service.client() as c:
        sid = c.post("/execute", json={"code": "kept = 7"}).json()["session"]
        body = c.post("/execute", json={"code": "import time\ntime.sleep(60)", "session": sid, "timeout": 1}).json()
        assert body["status"] == "timeout"
        assert body["error"]["ename"] == "TimeoutError"
        assert body["kernel_restarted"] is False
        after = c.post("/execute", json={"code": "kept", "session": sid}).json()
        assert after["outputs"][0]["data"] == {"text/plain": "7"}


def test_timeout_replaces_a_kernel_that_ignores_interrupts(tight_service: Service) -> None:
    code = "import signal\nsignal.signal(signal.SIGINT, signal.SIG_IGN)\nwhile True:\n    pass"
    with tight_service.client() as c:
        sid = c.post("/execute", json={"code": "kept = 1"}).json()["session"]
        body = c.post("/execute", json={"code": code, "session": sid, "timeout": 1}).json()
        assert body["status"] == "timeout"
        assert body["kernel_restarted"] is True
        assert "replaced" in body["error"]["evalue"]
        # The new kernel got the session's last committed state back.
        assert any("restored" in n for n in body["notices"])
        after = c.post("/execute", json={"code": "kept", "session": sid}).json()
        assert after["status"] == "ok"
        assert after["outputs"][0]["data"] == {"text/plain": "1"}
        assert after["restored"]["execution_count"] == 1
        assert after["kernel_restarted"] is False
        assert c.get(f"/sessions/{sid}").json()["kernel_restarts"] == 1


def test_output_beyond_the_cap_is_truncated(tight_service: Service) -> None:
    with tight_service.client() as c:
        body = c.post("/execute", json={"code": "for i in range(2000):\n    print(i)"}).json()
        assert body["status"] == "ok"
        assert body["truncated"] is True
        assert "output truncated" in body["outputs"][-1]["text"]
        kept = "".join(o["text"] for o in body["outputs"][:-1])
        assert 4000 <= len(kept) <= 4096
        assert body["outputs"][0]["text"].startswith("0\n1\n2\n")


def test_dead_kernel_is_reported_and_replaced(tight_service: Service) -> None:
    with tight_service.client() as c:
        sid = c.post("/execute", json={"code": "v = 1"}).json()["session"]
        body = c.post("/execute", json={"code": "import os\nos._exit(1)", "session": sid}).json()
        assert body["status"] == "error"
        assert body["error"]["ename"] == "KernelDied"
        assert body["kernel_restarted"] is True
        after = c.post("/execute", json={"code": "print('alive')", "session": sid}).json()
        assert after["status"] == "ok"
        assert after["outputs"] == [{"output_type": "stream", "name": "stdout", "text": "alive\n"}]


def test_kernel_dying_while_idle_is_reported_on_next_call(tight_service: Service, tmp_path: Path) -> None:
    with tight_service.client() as c:
        sid = c.post("/execute", json={"code": CONNECTION_FILE}).json()
        pid = host_pid(ast.literal_eval(sid["outputs"][0]["data"]["text/plain"]))
        import os
        import signal

        os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if c.get(f"/sessions/{sid['session']}").json()["kernel_restarts"] == 1:
                break
            time.sleep(0.2)
        after = c.post("/execute", json={"code": "1 + 1", "session": sid["session"]}).json()
        assert after["status"] == "ok"
        assert after["kernel_restarted"] is True
        assert any("exited" in n for n in after["notices"])


def test_warm_kernels_preload_modules_without_binding_them(client: httpx.Client) -> None:
    body = client.post(
        "/execute", json={"code": "import sys\n('pandas' in sys.modules, 'pandas' in dir(), 'pd' in dir())"}
    )
    assert body.json()["outputs"][0]["data"] == {"text/plain": "(True, False, False)"}


@pytest.mark.parametrize("bad", ["*", "a*b", "x?y", "{tag}", "-lead"])
def test_impossible_session_ids_are_not_found(client: httpx.Client, bad: str) -> None:
    for method, path in (("GET", f"/sessions/{bad}"), ("DELETE", f"/sessions/{bad}"), ("GET", f"/api/kernels/{bad}")):
        r = client.request(method, path)
        assert r.status_code == 404
        assert r.json()["reason"] == "Not Found"
    assert client.post("/execute", json={"code": "1", "session": bad}).status_code == 422
