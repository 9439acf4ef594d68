"""Kernels forked from the replica's zygote (--kernel-launch fork), as real processes: they run cells with the
preloaded modules already there, are interrupted, restarted and killed like exec'd kernels, die with the
service, and are isolated from each other and from the service as exec'd kernels are (the sandbox tests of
tests/test_sandbox.py run here again with kernels exec'd, so both launches are proven; auto forks here).
Memory shared with the zygote is measured by the benchmark (skg-bench), not here."""

from __future__ import annotations

import ast
import asyncio
import logging
import os
import signal
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest
from jupyter_client.connect import write_connection_file

from kernel_gateway.kernels.factory import fork_kernels
from kernel_gateway.kernels.forkapp import connection_file
from kernel_gateway.kernels.kernel import Kernel
from kernel_gateway.kernels.launch import IPYKERNEL_ARGUMENTS, kernel_environment
from kernel_gateway.kernels.sandbox import Sandbox, SandboxKind, SandboxOptions, make_bwrap_argv
from kernel_gateway.kernels.zygote import next_wait
from kernel_gateway.replica import open_replica
from kernel_gateway.settings import Settings
from kernel_gateway.types import Channel
from notebook_state.types import REPLY_KEY
from tests.kernel_process import CONNECTION_FILE, alive, host_pid
from tests.service import Service, running_service, start_service
from tests.test_sandbox import (  # noqa: F401  (the same tests, against exec'd kernels: the fixture below)
    CANARY,
    test_a_kernel_cannot_signal_or_read_the_service,
    test_a_kernel_sees_no_other_kernels_connection_file_or_socket,
    test_tmp_is_private_and_the_service_files_are_hidden,
    two_kernels,
)
from tests.waiting import wait_for


def run(svc: Service, code: str, session: str | None = None) -> dict[str, Any]:
    body = {"code": code, **({"session": session} if session else {})}
    reply: dict[str, Any] = httpx.post(f"{svc.url}/execute", json=body, timeout=120).json()
    return reply


def value(reply: dict[str, Any]) -> Any:
    assert reply["status"] == "ok", reply
    text = next(o for o in reply["outputs"] if o["output_type"] == "execute_result")["data"]["text/plain"]
    return ast.literal_eval(text)


@pytest.fixture(scope="module")
def sandboxed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    """test_sandbox's tests imported above run against this: kernels exec'd, as before the zygote."""
    env = {"SANDBOX_CANARY": CANARY}
    with running_service(tmp_path_factory.mktemp("exec"), ["--pool-size", "2", "--kernel-launch", "exec"],
                         env=env) as svc:  # fmt: skip
        yield svc
        assert not any("kernel zygote: pid" in line for line in svc.log)


@pytest.fixture(scope="module")
def forked(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    with running_service(tmp_path_factory.mktemp("fork"), ["--pool-size", "1", "--kernel-launch", "fork"]) as svc:
        yield svc


def zygote_of(svc: Service, which: int = 0) -> psutil.Process:
    line = [line for line in svc.log if "kernel zygote: pid" in line][which]
    return psutil.Process(int(line.split("kernel zygote: pid ")[1].split(",")[0]))


def kernel_pid(svc: Service, session: str) -> int:
    return host_pid(value(run(svc, CONNECTION_FILE, session)))


def test_a_forked_kernel_has_the_preloaded_modules_and_a_seed_of_its_own(forked: Service) -> None:
    probe = "import sys, random, numpy; ('pandas' in sys.modules, random.random(), numpy.random.random())"
    first, second = run(forked, probe), run(forked, probe)
    (preloaded, r1, n1), (_, r2, n2) = value(first), value(second)
    assert preloaded  # imported by the zygote, never by the session
    assert r1 != r2 and n1 != n2  # each fork reseeded: no two kernels draw the same numbers
    zygote = zygote_of(forked)
    pid = kernel_pid(forked, first["session"])
    assert zygote.pid in [p.pid for p in psutil.Process(pid).parents()]
    matrix = "import numpy; a = numpy.arange(250000.0).reshape(500, 500); float((a @ a.T).trace())"
    assert value(run(forked, matrix, first["session"])) == pytest.approx(float(sum(i * i for i in range(250000))))


def test_a_forked_kernel_goes_on_from_the_app_the_zygote_prebuilt(forked: Service) -> None:
    # The zygote parsed the kernels' command line and made the profile (forkapp.prebuild_app); each kernel has
    # its own connection file, the command line's settings, and its profile directories in its own /tmp.
    probe = """
import os, sys
from ipykernel.kernelapp import IPKernelApp
ip = get_ipython()
(IPKernelApp.instance().connection_file == sys.argv[sys.argv.index("-f") + 1], ip.history_manager.enabled,
 os.path.isdir(ip.profile_dir.security_dir), os.path.isdir(ip.profile_dir.startup_dir))
"""
    assert value(run(forked, probe)) == (True, False, True, True)
    assert any("IPKernelApp prebuilt: True" in line for line in forked.log)


def test_a_forked_kernel_adopts_the_shell_the_zygote_built(forked: Service) -> None:
    # The zygote built the IPython shell (forkapp.prebuild_shell); each kernel's is that one made its own: its
    # kernel and parent, the shell's variables in this kernel's environment, _dh where this kernel started.
    probe = """
import os
from ipykernel.kernelapp import IPKernelApp
ip, kernel = get_ipython(), IPKernelApp.instance().kernel
(ip is kernel.shell, ip.kernel is kernel, ip.parent is kernel, os.environ.get("PAGER"), os.environ.get("TERM"),
 _dh == [os.getcwd()], ip.display_pub.pub_socket is kernel.iopub_socket)
"""
    first, second = run(forked, probe), run(forked, probe)
    assert value(first) == value(second) == (True, True, True, "cat", "xterm-color", True, True)
    assert any("IPython shell prebuilt: True" in line for line in forked.log)
    assert value(run(forked, "get_ipython().kernel.do_complete('pri', 3)['matches'][:1]")) == ["print"]
    # IPython's default extension, loaded in the zygote: %store works in the kernel's own profile
    loaded = "'IPython.extensions.storemagic' in get_ipython().extension_manager.loaded"
    stored = f"y = 41\n%store y\ndel y\n%store -r y\n(y + 1, {loaded})"
    assert value(run(forked, stored)) == (42, True)


def test_a_kernel_goes_on_from_the_prebuilt_app_only_for_the_argv_it_was_built_for() -> None:
    built = ["--HistoryManager.enabled=False"]
    assert connection_file(["-f", "/k/kernel.json", *built], built) == "/k/kernel.json"
    assert connection_file([*built, "-f", "/k/kernel.json"], built) == "/k/kernel.json"
    assert connection_file(["-f", "/k/kernel.json", *built, "--matplotlib=inline"], built) is None
    assert connection_file(["-f", "/k/kernel.json"], built) is None
    assert connection_file([*built, "-f"], built) is None
    assert connection_file(["-f", "/k/kernel.json", *built], None) is None


def test_a_forked_kernel_is_interrupted_restarted_and_replaced_when_killed(forked: Service) -> None:
    session = run(forked, "x = 41")["session"]
    box: dict[str, dict[str, Any]] = {}
    slow = threading.Thread(target=lambda: box.update(r=run(forked, "import time; time.sleep(120)", session)))
    slow.start()
    state = lambda: httpx.get(f"{forked.url}/api/kernels/{session}", timeout=30).json()["execution_state"]  # noqa: E731
    wait_for(lambda: state() == "busy")
    assert httpx.post(f"{forked.url}/api/kernels/{session}/interrupt", timeout=30).status_code == 204
    slow.join(60)
    assert box["r"]["status"] == "error" and box["r"]["error"]["ename"] == "KeyboardInterrupt", box
    assert value(run(forked, "x + 1", session)) == 42  # interrupted, not restarted

    before = kernel_pid(forked, session)
    assert httpx.post(f"{forked.url}/api/kernels/{session}/restart", timeout=60).status_code == 200
    wait_for(lambda: not alive(before))
    assert value(run(forked, "1 + 1", session)) == 2
    after = kernel_pid(forked, session)
    assert after != before

    os.kill(after, signal.SIGKILL)
    wait_for(lambda: run(forked, "2 + 2", session).get("status") == "ok")
    assert kernel_pid(forked, session) != after
    zygote = zygote_of(forked)
    wait_for(lambda: not [c for c in zygote.children() if c.status() == psutil.STATUS_ZOMBIE])  # reaped


def test_a_forked_kernel_has_no_capabilities_and_cannot_undo_its_sandbox(forked: Service) -> None:
    probe = """
import ctypes, os
libc = ctypes.CDLL(None, use_errno=True)
def errno(result):
    return os.strerror(ctypes.get_errno()) if result != 0 else "done"
status = dict(line.split(":", 1) for line in open("/proc/self/status").read().splitlines() if ":" in line)
runtime = os.path.dirname(os.path.dirname(__import__("sys").argv[__import__("sys").argv.index("-f") + 1]))
(status["CapEff"].strip(), status["CapBnd"].strip(), status["NoNewPrivs"].strip(),
 errno(libc.unshare(0x10000000)), errno(libc.umount2(runtime.encode(), 2)), errno(libc.umount2(b"/proc", 2)),
 errno(libc.mount(b"none", b"/tmp", b"tmpfs", 0, None)), os.getpid(), len(os.listdir(runtime)))
"""
    cap_eff, cap_bnd, no_new_privs, userns, umount_runtime, umount_proc, mount, pid, kernels = value(run(forked, probe))
    assert int(cap_eff, 16) == 0 and int(cap_bnd, 16) == 0 and no_new_privs == "1"
    assert userns != "done" and umount_runtime != "done" and umount_proc != "done" and mount != "done"
    assert pid == 1 and kernels == 1  # its own pid namespace; of the runtime directory only its own


def test_forked_kernels_die_with_the_service(tmp_path: Path) -> None:
    service = start_service(tmp_path, ["--pool-size", "2", "--kernel-launch", "fork"])
    try:
        session_kernel = kernel_pid(service, value_session(service))
        wait_for(lambda: len(zygote_of(service).children()) >= 3)  # the session's kernel and the pool's two
        zygote = zygote_of(service)
        everything = [zygote.pid, *(p.pid for p in zygote.children(recursive=True))]
        assert session_kernel in everything
    finally:
        os.kill(service.proc.pid, signal.SIGKILL)
        service.wait_exit(30)
    wait_for(lambda: not any(alive(pid) for pid in everything))


def test_a_zygote_that_dies_is_restarted_then_given_up_for_exec(tmp_path: Path) -> None:
    with running_service(tmp_path, ["--pool-size", "0", "--kernel-launch", "fork"]) as service:
        session = value_session(service)
        for restart in range(4):  # three restarts, then kernels are exec'd
            zygote = zygote_of(service, -1)
            forked = kernel_pid(service, session)
            assert zygote.pid in [p.pid for p in psutil.Process(forked).parents()]
            zygote.kill()
            wait_for(lambda: not alive(forked))  # noqa: B023  (its kernels die with it)
            wait_for(lambda: run(service, "1", session).get("status") == "ok")  # restored onto a new kernel
            if restart < 3:
                assert sum("kernel zygote: pid" in line for line in service.log) == restart + 2
        execd = kernel_pid(service, session)
        assert "ipykernel_launcher" in " ".join(psutil.Process(execd).cmdline())  # exec'd, not forked
        assert any("new kernels are exec'd" in line for line in service.log)


def test_without_network_a_forked_kernel_has_its_own_loopback_only(tmp_path: Path) -> None:
    with running_service(tmp_path, ["--pool-size", "0", "--no-sandbox-network"]) as service:
        port = int(service.url.rsplit(":", 1)[1])
        probe = f"""
import socket
def reach(port):
    try:
        socket.create_connection(("127.0.0.1", port), timeout=5).close()
        return "connected"
    except OSError as exc:
        return type(exc).__name__
server = socket.create_server(("127.0.0.1", 0))
(reach({port}), reach(server.getsockname()[1]))
"""
        assert value(run(service, probe)) == ("ConnectionRefusedError", "connected")
        assert any("kernel zygote: pid" in line for line in service.log)  # forked, not exec'd


def test_a_sandbox_bind_under_tmp_reaches_a_forked_kernel_read_write(tmp_path: Path) -> None:
    # A forked kernel makes /tmp its own: the operator's --sandbox-bind directories there are bound back.
    shared = tmp_path / "shared"
    shared.mkdir()
    (shared / "from-host.txt").write_text("hello")
    args = ["--pool-size", "0", "--kernel-launch", "fork", "--sandbox-bind", f'["{shared}"]']
    with running_service(tmp_path, args) as service:
        written, read = str(shared / "from-kernel.txt"), str(shared / "from-host.txt")
        code = f"open({written!r}, 'w').write('back'); open({read!r}).read()"
        assert value(run(service, code)) == "hello"
        assert (shared / "from-kernel.txt").read_text() == "back"
        assert any("kernel zygote: pid" in line for line in service.log)
        assert not any("could not fork" in line for line in service.log)  # forked, not exec'd after a failure


def test_a_forked_kernel_tracks_cells_from_its_start_without_an_install_request(tmp_path: Path) -> None:
    # The forked kernel installs the capture module itself before it serves (zygote.py); an exec'd one is sent
    # an install request. Either way the first cell's checkpoint rides in its execute_reply.
    settings = Settings(data_dir=tmp_path, pool_size=0, kernel_launch="fork", preload_modules=[])

    async def scenario() -> list[tuple[bool, bool, int, bool]]:
        manager = open_replica(settings, lambda: "http://127.0.0.1:1").manager
        factory, installs = manager.kernels, []
        install = factory.checkpointer.install

        async def counted(kernel: Any, timeout: float) -> None:
            installs.append(kernel.id)
            await install(kernel, timeout)

        factory.checkpointer.install = counted  # type: ignore[method-assign]
        seen = []
        try:
            for fork in (True, False):
                kernel: Kernel = await factory.start(settings.kernel_name, None, fork=fork)
                cell = {"code": "x = 41", "silent": False, "store_history": True, "user_expressions": {},
                        "allow_stdin": False}  # fmt: skip
                reply = await kernel.call(Channel.SHELL, "execute_request", cell, timeout=60)
                assert reply.content["status"] == "ok", reply.content
                seen.append((kernel.forked, kernel.captured, installs.count(kernel.id), REPLY_KEY in reply.metadata))
                await kernel.shutdown(now=True)
        finally:
            zygote = await factory.zygote()
            await manager.close()
            if zygote is not None:
                await zygote.close()
        return seen

    assert asyncio.run(scenario()) == [(True, True, 0, True), (False, False, 1, True)]


def test_a_kernel_forked_for_a_start_that_went_away_is_killed(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    # A start cancelled (a start timeout, a request gone, the pool closing) while the zygote forks its kernel:
    # the zygote answers after the waiter left, and that kernel used to run on for the life of the zygote.
    settings = Settings(data_dir=tmp_path, pool_size=0, kernel_launch="fork", preload_modules=[])
    caplog.set_level(logging.WARNING, logger="kernel_gateway.kernels.forked")

    async def scenario() -> int:
        manager = open_replica(settings, lambda: "http://127.0.0.1:1").manager
        factory = manager.kernels
        try:
            await factory.sandbox()
            zygote = await factory.zygote()
            assert zygote is not None
            kernel_dir = factory.runtime_dir / "abandoned"
            kernel_dir.mkdir(mode=0o700)
            conn = str(kernel_dir / "kernel.json")
            write_connection_file(conn, transport="ipc", ip=str(kernel_dir / "k"))
            env = kernel_environment(os.environ, "SKG_")
            fork = asyncio.get_running_loop().create_task(
                zygote.fork(["-f", conn, *IPYKERNEL_ARGUMENTS], env, None, kernel_dir, 60)
            )
            for _ in range(100):  # the fork's first step writes its request
                if zygote._waiting:
                    break
                await asyncio.sleep(0)
            assert zygote._waiting
            fork.cancel()  # before the zygote can have answered: its answer needs this loop to read it
            await asyncio.gather(fork, return_exceptions=True)
            killed: list[logging.LogRecord] = []
            for _ in range(1200):  # the answer, then the kernel's exit, come from the zygote (bounded: 60 s)
                killed = [r for r in caplog.records if "went away" in r.getMessage()]
                if killed and not zygote._kernels:
                    break
                await asyncio.sleep(0.05)
            assert killed, "the zygote's answer for the abandoned fork never came"
            assert not zygote._kernels and not zygote._abandoned  # its exit came back: nothing kept
            pid = int(killed[0].args[0])  # type: ignore[index]
            assert not alive(pid)  # gone while the zygote lives (the zygote's end would kill it anyway)
            return pid
        finally:
            zygote = await factory.zygote()
            await manager.close()
            if zygote is not None:
                await zygote.close()

    assert asyncio.run(scenario()) > 0


def value_session(svc: Service) -> str:
    reply = run(svc, "1")
    assert reply["status"] == "ok", reply
    return str(reply["session"])


def test_auto_forks_where_that_isolates_as_well_as_exec() -> None:
    options = SandboxOptions()
    bwrap = Sandbox(SandboxKind.BWRAP, "", options, "/usr/bin/bwrap")
    own_uid = Sandbox(SandboxKind.BWRAP, "", options, "/usr/bin/bwrap", own_uid=True)
    uid = Sandbox(SandboxKind.UID, "", options, None, own_uid=True)
    none = Sandbox(SandboxKind.NONE, "", options)
    assert [fork_kernels("auto", s) for s in (bwrap, own_uid, uid, none)] == [True, False, False, True]
    assert [fork_kernels("fork", s) for s in (bwrap, own_uid, uid, none)] == [True, True, False, True]
    assert not any(fork_kernels("exec", s) for s in (bwrap, own_uid, uid, none))


def test_the_zygote_sandbox_lets_kernels_make_namespaces_of_their_own(tmp_path: Path) -> None:
    kernel = make_bwrap_argv("bwrap", tmp_path / "k1", SandboxOptions(), userns=True)
    zygote = make_bwrap_argv("bwrap", tmp_path, SandboxOptions(), userns=True, zygote=True)
    assert "--disable-userns" in kernel and "--disable-userns" not in zygote and "--unshare-user" in zygote
    assert "--unshare-pid" in kernel and "--unshare-pid" not in zygote  # each forked kernel makes its own
    at = zygote.index("--bind", zygote.index("/proc") - 2)
    assert zygote[at : at + 3] == ["--bind", "/proc", "/proc"]  # a full /proc: each kernel mounts its own on it
    assert zygote[zygote.index(str(tmp_path)) - 1] == "--bind"  # the runtime directory: kernels bind their own
    as_root = make_bwrap_argv("bwrap", tmp_path, SandboxOptions(), userns=False, zygote=True)
    assert as_root[as_root.index("--cap-add") + 1] == "CAP_SETFCAP"  # to map a kernel's uid 0, nothing else
    assert "--die-with-parent" in zygote


def test_an_idle_zygote_sleeps_until_its_next_deadline() -> None:
    # A busy loop here burned a whole core per replica while no kernel was starting.
    now = 10_000.0  # time.monotonic() on a machine up for hours
    assert next_wait([], now) == 60.0
    assert next_wait([now + 2.5, now + 9.0], now) == 2.5
    assert next_wait([now - 1.0], now) == 0.0
