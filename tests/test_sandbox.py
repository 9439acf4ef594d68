"""Kernels in their sandboxes, proven from inside a kernel: no other kernel's connection file or socket, no
signal to the service and no /proc of it, no secret in the environment, a private /tmp, and no way to make the
service sign anything but the kernel's own regular files."""

from __future__ import annotations

import ast
import asyncio
import contextlib
import os
import secrets
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from kernel_gateway.kernels.sandbox import Sandbox, SandboxKind, SandboxOptions, Try, strongest
from tests.kernel_process import CONNECTION_FILE, host_pid
from tests.service import Service, running_service, start_service

CANARY = "canary-" + secrets.token_hex(8)  # never written into a cell: cells are stored (history)
"""In the service's environment (and so in its /proc/<pid>/environ): no kernel may ever see it."""


def run(svc: Service, code: str, session: str | None = None) -> dict[str, Any]:
    body = {"code": code, **({"session": session} if session else {})}
    reply: dict[str, Any] = httpx.post(f"{svc.url}/execute", json=body, timeout=120).json()
    assert reply["status"] == "ok", reply
    return reply


def value(reply: dict[str, Any]) -> Any:
    text = next(o for o in reply["outputs"] if o["output_type"] == "execute_result")["data"]["text/plain"]
    return ast.literal_eval(text)


@pytest.fixture(scope="module")
def sandboxed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    tmp = tmp_path_factory.mktemp("sandbox")
    env = {
        "SANDBOX_CANARY": CANARY, "AWS_SECRET_ACCESS_KEY": CANARY, "DATABASE_URL": f"postgres://u:{CANARY}@db/x",
        "KERNEL_OPERATOR_SETTING": "for every kernel",
    }  # fmt: skip
    with running_service(tmp, ["--pool-size", "2"], env=env) as svc:
        yield svc


@pytest.fixture(scope="module")
def two_kernels(sandboxed: Service) -> tuple[tuple[str, str], tuple[str, str]]:
    """Two sessions, each with the path of its kernel's connection file."""
    kernels = []
    for _ in range(2):
        reply = run(sandboxed, CONNECTION_FILE)
        kernels.append((reply["session"], value(reply)))
    return kernels[0], kernels[1]


def test_readyz_and_the_log_name_the_sandbox(sandboxed: Service) -> None:
    sandbox = httpx.get(f"{sandboxed.url}/readyz").json()["sandbox"]
    assert sandbox["kind"] == "bwrap", sandbox
    assert "pid, ipc and mount namespaces" in sandbox["detail"]
    assert any("kernel sandbox: bubblewrap" in line for line in sandboxed.log)


def test_a_kernel_sees_no_other_kernels_connection_file_or_socket(
    sandboxed: Service, two_kernels: tuple[tuple[str, str], tuple[str, str]]
) -> None:
    (a, a_file), (_, b_file) = two_kernels
    assert os.path.exists(b_file)  # on the host, both are there
    probe = f"""
import glob, json, os, socket
mine, theirs = {a_file!r}, {b_file!r}
sockets = sorted(glob.glob(os.path.join(os.path.dirname(theirs), "k-*")))
def connect(path):
    s = socket.socket(socket.AF_UNIX)
    try:
        s.connect(path)
        return "connected"
    except OSError as exc:
        return type(exc).__name__
    finally:
        s.close()
(os.path.exists(mine), os.path.exists(theirs), os.listdir(os.path.dirname(os.path.dirname(mine))),
 [connect(p) for p in {sorted(str(p) for p in Path(b_file).parent.glob("k-*"))!r}], sockets)
"""
    sees_own, sees_theirs, runtime, connects, listed = value(run(sandboxed, probe, a))
    assert sees_own and not sees_theirs
    assert runtime == [os.path.basename(os.path.dirname(a_file))]  # only its own directory
    assert connects and set(connects) == {"FileNotFoundError"} and listed == []


def test_a_kernel_cannot_signal_or_read_the_service(
    sandboxed: Service, two_kernels: tuple[tuple[str, str], tuple[str, str]]
) -> None:
    (a, _), (_, b_file) = two_kernels
    service, other_kernel = sandboxed.proc.pid, host_pid(b_file)
    probe = f"""
import os, signal
def kill(pid):
    try:
        os.kill(pid, signal.SIGTERM)
        return "signalled"
    except OSError as exc:
        return type(exc).__name__
def environ(pid):
    try:
        return open(f"/proc/{{pid}}/environ", "rb").read().decode(errors="replace")
    except OSError as exc:
        return type(exc).__name__
everything = "".join(environ(p) for p in os.listdir("/proc") if p.isdigit())
(kill({service}), kill({other_kernel}), environ({service}), "SANDBOX_CANARY=" in everything,
 sorted(int(p) for p in os.listdir("/proc") if p.isdigit()))
"""
    killed, killed_other, read, seen, pids = value(run(sandboxed, probe, a))
    assert (killed, killed_other, read, seen) == ("ProcessLookupError", "ProcessLookupError", "FileNotFoundError",
                                                  False)  # fmt: skip
    assert max(pids) < 100  # its own pid namespace: a handful of its own processes
    assert sandboxed.proc.poll() is None and os.path.exists(f"/proc/{other_kernel}")


def test_the_environment_is_an_allow_list(sandboxed: Service) -> None:
    env = value(run(sandboxed, "dict(__import__('os').environ)"))
    assert CANARY not in repr(env)
    assert env["KERNEL_OPERATOR_SETTING"] == "for every kernel"
    assert not {k for k in env if k.startswith("SKG_") or "SECRET" in k or "DATABASE" in k}


def test_tmp_is_private_and_the_service_files_are_hidden(
    sandboxed: Service, two_kernels: tuple[tuple[str, str], tuple[str, str]], tmp_path: Path
) -> None:
    (a, _), (b, _) = two_kernels
    (tmp_path / "host-file").write_text("on the host")
    run(sandboxed, "open('/tmp/only-a', 'w').write('a')", a)
    data_dir = Path(sandboxed.proc.args[sandboxed.proc.args.index("--data-dir") + 1])  # type: ignore[union-attr]
    assert (data_dir / "signing.key").exists()
    probe = f"""
import os
(os.path.exists('/tmp/only-a'), os.path.exists({str(tmp_path / "host-file")!r}),
 os.path.exists({str(data_dir / "signing.key")!r}), os.listdir('/run'), os.getcwd(), os.environ['HOME'])
"""
    assert value(run(sandboxed, probe, b)) == (False, False, False, [], "/tmp", "/tmp")


def _blobs_mention(data_dir: Path, needle: bytes) -> bool:
    with sqlite3.connect(data_dir / "store" / "sessions.sqlite3") as db:
        stored = [row[0] for row in db.execute("SELECT data FROM blobs")]
        stored += [row[0] for row in db.execute("SELECT manifest FROM sessions WHERE manifest IS NOT NULL")]
    return any(needle in bytes(b) for b in stored)


@pytest.mark.parametrize("trap", ["symlink to the service's environ", "fifo", "symlink to /dev/zero"])
def test_a_kernel_cannot_make_the_service_sign_what_is_not_its_own_file(sandboxed: Service, trap: str) -> None:
    reply = run(sandboxed, f"kernel_file = {CONNECTION_FILE}")
    session = reply["session"]
    # The next hand-over the service reads is one the cell plants, named to sort after the kernel's own.
    plant = """
import json, os
auto = os.path.join(os.path.dirname(kernel_file), "auto", "zzzzzzzzzz")
os.makedirs(auto)
groups = {"g1": {"hash": "h", "written": True, "names": ["stolen"], "size": 1}}
json.dump({"groups": groups, "execution_count": 99}, open(os.path.join(auto, "manifest.json"), "w"))
"""
    plant += {
        "symlink to the service's environ": "os.symlink('/proc/self/environ', os.path.join(auto, 'g1.bin'))",
        "fifo": "os.mkfifo(os.path.join(auto, 'g1.bin'))",
        "symlink to /dev/zero": "os.symlink('/dev/zero', os.path.join(auto, 'g1.bin'))",
    }[trap]
    planted = run(sandboxed, plant + "\nvictim = 'kept'", session)
    assert planted["checkpoint"]["status"] == "committed"  # from a hand-over the service made itself
    assert httpx.get(f"{sandboxed.url}/healthz").status_code == 200  # no replica frozen or out of memory
    data_dir = Path(sandboxed.proc.args[sandboxed.proc.args.index("--data-dir") + 1])  # type: ignore[union-attr]
    assert not _blobs_mention(data_dir, CANARY.encode())
    info = httpx.get(f"{sandboxed.url}/sessions/{session}").json()
    assert "stolen" not in info["checkpoint"]["variables"] and "victim" in info["checkpoint"]["variables"]


def test_without_a_sandbox_the_service_says_so(tmp_path: Path) -> None:
    with running_service(tmp_path, ["--pool-size", "0", "--sandbox", "none"]) as svc:
        sandbox = httpx.get(f"{svc.url}/readyz").json()["sandbox"]
        assert sandbox["kind"] == "none" and "disabled" in sandbox["detail"]
        assert any("kernel sandbox is weak" in line for line in svc.log)


def test_a_uid_of_its_own_where_namespaces_are_refused(tmp_path: Path) -> None:
    """--sandbox uid: each kernel runs as a uid of its own, or the service refuses to start saying why (it never
    runs kernels less isolated than asked)."""
    service = start_service(tmp_path, ["--pool-size", "0", "--sandbox", "uid"], env={"SANDBOX_CANARY": CANARY},
                            ready=False)  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while service.proc.poll() is None and time.monotonic() < deadline:
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{service.url}/readyz", timeout=5).status_code == 200:
                    break
            time.sleep(0.2)
        if service.proc.poll() is not None:
            assert "--sandbox uid is not possible here" in "".join(service.log)
            return
        assert httpx.get(f"{service.url}/readyz").json()["sandbox"]["kind"] == "uid"
        a, b = run(service, CONNECTION_FILE), run(service, CONNECTION_FILE)
        b_file, data_dir = value(b), tmp_path / "skg"
        probe = f"""
import os
def attempt(f):
    try:
        f()
        return "allowed"
    except OSError as exc:
        return type(exc).__name__
(os.getuid(), attempt(lambda: open({b_file!r}).read()), attempt(lambda: os.kill({service.proc.pid}, 0)),
 attempt(lambda: open("/proc/{service.proc.pid}/environ").read()), attempt(lambda: os.listdir({str(data_dir)!r})))
"""
        uid, other_kernel, signal_service, environ, data = value(run(service, probe, a["session"]))
        assert uid not in (0, os.getuid())
        assert (other_kernel, signal_service, environ, data) == ("PermissionError",) * 4
    finally:
        service.stop()


def test_the_strongest_way_that_works_is_chosen_and_each_refusal_said() -> None:
    # The probe's tries run at once (real processes); the verdict is by strength, not by which answers first.
    none = Sandbox(SandboxKind.NONE, "", SandboxOptions())
    refused = Try(none, ["sh", "-c", "echo nope >&2; exit 3"], "strongest refused")
    works = Try(none, ["true"], "middle refused")
    weakest = Try(none, ["true"], "weakest refused")
    assert asyncio.run(strongest([refused, works, weakest])) == (works, ["strongest refused: nope"])
    assert asyncio.run(strongest([weakest, works])) == (weakest, [])
    found, reasons = asyncio.run(strongest([refused, Try(none, ["/nonexistent/bwrap"], "missing")]))
    assert found is None and reasons[0] == "strongest refused: nope" and reasons[1].startswith("missing: ")
