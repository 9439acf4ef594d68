"""In-process checks of what keeps one tenant, kernel or client from reaching or growing what is not its own:
hand-over files read as hostile input, queues bounded in bytes, the output cap, route tables, tenants files,
owner addresses, browser checks, and the sandbox's command line and environment as data."""

from __future__ import annotations

import hashlib
import json
import os
import sys
from pathlib import Path
from typing import Any

import pytest

from kernel_gateway.browsers import refusal
from kernel_gateway.kernels.launch import kernel_environment
from kernel_gateway.kernels.sandbox import SandboxOptions, make_bwrap_argv, make_setpriv_argv
from kernel_gateway.routes.channels import ChannelConnection
from kernel_gateway.routes.execute import DROPPED_NOTICE, EventQueue
from kernel_gateway.sessions.frontends import MAX_ROUTES
from kernel_gateway.sessions.outputs import OutputCollector
from kernel_gateway.sessions.session import Session
from kernel_gateway.tenants import Tenants, TenantsFileError, derive_token, make_tenants_file, parse_tenants
from kernel_gateway.trust import PeerAddresses
from kernel_gateway.types import Channel, KernelMessage
from notebook_state.errors import CheckpointError
from notebook_state.handover import HandOverRejected, read_capture, take_auto

# -- hand-over files -------------------------------------------------------------------------------------


def handover(root: Path, blob: bytes = b"data") -> Path:
    """A well-formed hand-over as the kernel's tracker writes it: auto/<seq>/manifest.json and g1.bin."""
    out = root / "auto" / "0000000001"
    out.mkdir(parents=True)
    (out / "manifest.json").write_text(json.dumps({"groups": {"g1": {"hash": "h", "written": True, "names": ["x"]}}}))
    (out / "g1.bin").write_bytes(blob)
    return out


def test_a_plain_handover_is_read_and_consumed(tmp_path: Path) -> None:
    handover(tmp_path)
    manifest, blobs = take_auto(tmp_path / "auto") or ({}, {})
    assert blobs == {"g1": b"data"} and "g1" in manifest["groups"]
    assert list((tmp_path / "auto").iterdir()) == []  # consumed


@pytest.mark.parametrize("target", ["/proc/self/environ", "/dev/zero", "/etc/hostname"])
def test_a_symlinked_blob_is_never_followed(tmp_path: Path, target: str) -> None:
    out = handover(tmp_path)
    (out / "g1.bin").unlink()
    (out / "g1.bin").symlink_to(target)
    with pytest.raises(HandOverRejected, match="cannot be opened safely"):
        read_capture(out)
    assert take_auto(tmp_path / "auto") is None
    assert not out.exists()  # dropped, links and all


def test_a_fifo_does_not_block_the_reader(tmp_path: Path) -> None:
    out = handover(tmp_path)
    (out / "manifest.json").unlink()
    os.mkfifo(out / "manifest.json")  # opening it for reading would wait for a writer for ever
    with pytest.raises(HandOverRejected, match="regular file"):
        read_capture(out)


def test_a_symlinked_directory_is_refused(tmp_path: Path) -> None:
    real = handover(tmp_path / "elsewhere")
    auto = tmp_path / "auto"
    auto.mkdir()
    (auto / "0000000002").symlink_to(real)
    assert take_auto(auto) is None
    assert real.exists()  # what the link pointed to was not deleted either


def test_hard_links_names_and_sizes_are_checked(tmp_path: Path) -> None:
    out = handover(tmp_path)
    os.link(out / "g1.bin", tmp_path / "second-name")
    with pytest.raises(HandOverRejected, match="one link"):
        read_capture(out)
    (tmp_path / "second-name").unlink()
    (out / "manifest.json").write_text(json.dumps({"groups": {"../../x": {"hash": "h", "written": True}}}))
    with pytest.raises(HandOverRejected, match="not allowed"):
        read_capture(out)
    (out / "manifest.json").write_text(json.dumps({"groups": {"g1": {"hash": "h", "written": True}}}))
    os.truncate(out / "g1.bin", 10 * 1024**3)  # sparse: costs nothing until someone reads it
    with pytest.raises(HandOverRejected, match="size limit"):
        read_capture(out, limit=1024**3)


def test_a_kernel_that_reports_a_failure_is_heard(tmp_path: Path) -> None:
    out = handover(tmp_path)
    (out / "errors.json").write_text(json.dumps({"error": "boom"}))
    with pytest.raises(CheckpointError, match="boom"):
        read_capture(out)


# -- queues, caps and tables -----------------------------------------------------------------------------


async def test_sse_queue_drops_outputs_past_its_bytes_but_never_the_reply() -> None:
    queue = EventQueue(limit=4096)
    for _ in range(100):
        queue.output({"output_type": "stream", "name": "stdout", "text": "x" * 100})
    assert queue.bytes <= 4096 + 512
    queue.put(b"event: reply\ndata: {}\n\n")
    events = []
    while (event := await queue.get()) is not None and not event.startswith(b"event: reply"):
        events.append(event)
    assert sum(DROPPED_NOTICE.strip().split(":")[0].encode() in e for e in events) == 1
    assert queue.bytes == 0


def _message(size: int) -> KernelMessage:
    raw = [b"{}", b"{}", b"{}", b"x" * size]
    return KernelMessage(Channel.IOPUB, {"msg_type": "stream"}, {}, {}, {}, [], raw)


class _Stub:
    id = "s"
    query_params: dict[str, str] = {}


async def test_websocket_send_queue_is_bounded_in_bytes() -> None:
    conn = ChannelConnection(_Stub(), _Stub(), False, 10_000, 0, None, queue_bytes=10_000)  # type: ignore[arg-type]
    conn.deliver(_message(50_000))  # one message always fits, whatever its size
    assert conn.state.value == "open"
    conn.deliver(_message(10))
    assert conn.state.value == "closing" and conn._close[0] == 1013


def test_update_display_data_counts_against_the_output_cap() -> None:
    c = OutputCollector(2048)
    shown = {"display_id": "d"}
    c.add(KernelMessage(Channel.IOPUB, {"msg_type": "display_data"}, {}, {}, {"data": {"text/plain": "0"},
                                                                              "transient": shown}))  # fmt: skip
    for i in range(1, 50):
        big = {"data": {"text/plain": str(i) * (i * 100)}, "transient": shown}
        c.add(KernelMessage(Channel.IOPUB, {"msg_type": "update_display_data"}, {}, {}, big))
    assert c.truncated
    assert sum(len(json.dumps(o)) for o in c.outputs) <= 2048 + 200
    assert "truncated" in c.outputs[-1]["text"]


class _FakeKernel:
    name = "python3"
    id = "k"
    listener: Any = None

    def __init__(self) -> None:
        self.sent = 0

    def send(self, msg: KernelMessage) -> None:
        self.sent += 1


async def test_route_table_forgets_what_never_gets_a_reply() -> None:
    kernel = _FakeKernel()

    async def acquire() -> Any:
        return kernel

    session = Session("s", kernel, acquire)  # type: ignore[arg-type]
    frontend = object()
    for i in range(3 * MAX_ROUTES):
        kind = "comm_msg" if i % 2 else "kernel_info_request"
        msg = KernelMessage(Channel.SHELL, {"msg_id": f"m{i}", "msg_type": kind}, {}, {}, {})
        await session.submit(frontend, msg)  # type: ignore[arg-type]
    assert kernel.sent == 3 * MAX_ROUTES
    assert len(session.frontends.routes) <= MAX_ROUTES
    assert all(not k.endswith(("1", "3", "5", "7", "9")) for k in session.frontends.routes)  # comm_msg never routed


# -- tenants, owners, browsers ---------------------------------------------------------------------------


def test_tenants_file_entries_and_their_errors(tmp_path: Path) -> None:
    alice = hashlib.sha256(b"a-token").hexdigest()
    tenants = parse_tenants({"alice": alice, "bob": {"token_sha256": "0" * 64, "max_sessions": 3,
                                                      "kernel_memory": "2GiB"}})  # fmt: skip
    assert {t.name: (t.max_sessions, t.kernel_memory) for t in tenants.values()} == {
        "alice": (0, 0), "bob": (3, 2 * 1024**3)
    }  # fmt: skip
    for bad, why in (
        ([], "JSON object"),
        ({"bad name": alice}, "tenant name"),
        ({"a": "beef"}, "64 hex"),
        ({"a": alice, "b": alice}, "same token"),
        ({"a": {"token_sha256": alice, "admin": True}}, "unknown"),
        ({"a": {"token_sha256": alice, "max_sessions": -1}}, "max_sessions"),
    ):
        with pytest.raises(TenantsFileError, match=why):
            parse_tenants(bad)
    path = tmp_path / "tenants.json"
    path.write_text(json.dumps({"alice": alice}))
    registry = Tenants(path, "default-token", max_sessions=5)
    assert registry.identify("a-token").name == "alice"  # type: ignore[union-attr]
    assert registry.identify("default-token").name == ""  # type: ignore[union-attr]
    assert registry.identify("a-token ") is None and registry.identify("") is None
    assert registry.get("alice").max_sessions == 5


def test_derived_tokens_match_the_file_written_for_them() -> None:
    key = b"k" * 32
    written = make_tenants_file(key, ["ada", "bo"])
    assert written["ada"] == hashlib.sha256(derive_token(key, "ada").encode()).hexdigest()
    assert derive_token(key, "ada") != derive_token(key, "bo") != derive_token(b"j" * 32, "bo")


@pytest.mark.parametrize(
    ("own", "url", "networks", "pattern", "ok"),
    [
        ("http://10.0.0.5:8080", "http://10.0.0.9:8080", (), None, True),
        ("http://10.0.0.5:8080", "http://10.0.0.9:9999", (), None, False),  # another port
        ("http://10.0.0.5:8080", "http://169.254.169.254:8080", (), None, False),  # cloud metadata
        ("http://10.0.0.5:8080", "http://127.0.0.1:8080", (), None, False),
        ("http://10.0.0.5:8080", "http://evil.example:8080", (), None, False),
        ("http://10.0.0.5:8080", "file:///etc/passwd", (), None, False),
        ("http://10.0.0.5:8080", "http://u:p@10.0.0.9:8080", (), None, False),
        ("http://127.0.0.1:5000", "http://127.0.0.1:5001", (), None, True),  # local processes
        ("http://10.0.0.5:8080", "http://10.1.2.3:8080", ("10.1.0.0/16",), None, True),
        ("http://10.0.0.5:8080", "http://10.2.2.3:8080", ("10.1.0.0/16",), None, False),
        ("http://a:80", "http://skg-1.skg.svc:8080", (), r"http://skg-\d+\.skg\.svc:8080", True),
        ("http://a:80", "http://skg-x.evil:8080", (), r"http://skg-\d+\.skg\.svc:8080", False),
    ],
)
def test_owner_addresses(own: str, url: str, networks: tuple[str, ...], pattern: str | None, ok: bool) -> None:
    import ipaddress

    nets = [ipaddress.ip_network(n) for n in networks]
    assert (PeerAddresses(own, nets, pattern).refusal(url) is None) is ok


@pytest.mark.parametrize(
    ("host", "origin", "ok"),
    [
        ("127.0.0.1:8888", None, True),
        ("localhost:8888", "http://localhost:3000", True),
        ("[::1]:8888", "http://[::1]:8888", True),
        ("evil.example:8888", None, False),  # DNS rebinding: the page's own name
        ("127.0.0.1:8888", "http://evil.example", False),  # a cross-site page
        ("127.0.0.1:8888", "null", False),
        ("127.0.0.1:8888", "https://trusted.example", True),  # --allowed-origins
        ("devbox:8888", None, True),  # --allowed-hosts
    ],
)
def test_browser_checks(host: str, origin: str | None, ok: bool) -> None:
    headers = [(b"host", host.encode())] + ([(b"origin", origin.encode())] if origin else [])
    hosts = frozenset({"localhost", "127.0.0.1", "::1", "devbox"})
    assert (refusal(headers, hosts, frozenset({"https://trusted.example"})) is None) is ok


# -- the sandbox as data ---------------------------------------------------------------------------------


def test_bwrap_command_line_hides_the_service_and_other_kernels(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = Path(__file__).parent  # any directory that exists, outside /tmp (which is private anyway)
    kernel_dir = Path("/var/lib/skg/runtime/kernel-1")
    options = SandboxOptions(hidden=(data,), binds=(tmp_path / "shared",), network=False)
    argv = make_bwrap_argv("bwrap", kernel_dir, options, userns=True)
    joined = " ".join(argv)
    for flag in ("--unshare-pid", "--unshare-ipc", "--unshare-user", "--die-with-parent", "--unshare-net"):
        assert flag in argv
    assert f"--tmpfs {data}" in joined and f"--tmpfs {kernel_dir.parent}" in joined
    assert "--tmpfs /tmp" in joined and "--tmpfs /run" in joined
    # The kernel's own directory is the last thing mounted, over the hidden runtime directory.
    assert argv[argv.index("--bind", argv.index(f"{kernel_dir.parent}")) + 1] == str(kernel_dir)
    assert argv[-1] == "--"
    root = make_bwrap_argv("bwrap", kernel_dir, options, userns=False)
    assert "--cap-drop" in root and "--unshare-user" not in root
    # A service started in /tmp has /tmp on its import path: the kernel still gets a /tmp of its own.
    monkeypatch.setattr(sys, "path", ["/tmp", *sys.path])
    in_tmp = " ".join(make_bwrap_argv("bwrap", kernel_dir, options, userns=True))
    assert "--tmpfs /tmp" in in_tmp and "--ro-bind /tmp /tmp" not in in_tmp
    assert make_setpriv_argv(51_000, keep_bwrap=False)[:3] == ["setpriv", "--reuid=51000", "--regid=51000"]


def test_kernel_environment_is_an_allow_list() -> None:
    base = {
        "PATH": "/usr/bin", "LANG": "C.UTF-8", "LC_ALL": "C", "SKG_TOKEN": "t", "REDIS_URL": "redis://x",
        "AWS_SECRET_ACCESS_KEY": "s", "DATABASE_URL": "postgres://u:p@h/db", "HOME": "/root", "KERNEL_GREETING": "hi",
        "HTTPS_PROXY": "http://user:pw@proxy:3128", "NO_PROXY": "localhost", "CUSTOM_KERNEL_THING": "v",
        "KERNEL_API_TOKEN": "t",
    }  # fmt: skip
    env = kernel_environment(base, "SKG_", "CUSTOM_", extra=["DATABASE_URL"])
    assert env == {
        "PATH": "/usr/bin", "LANG": "C.UTF-8", "LC_ALL": "C", "KERNEL_GREETING": "hi", "NO_PROXY": "localhost",
        "CUSTOM_KERNEL_THING": "v", "DATABASE_URL": "postgres://u:p@h/db",
    }  # fmt: skip
