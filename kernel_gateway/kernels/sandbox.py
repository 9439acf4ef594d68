"""Each kernel in a sandbox of its own, so that user code reaches nothing that is not its own.

What the platform allows is found out once, by trying, in this order of strength:

1. ``bwrap`` (bubblewrap): the kernel gets its own pid, ipc and mount namespaces. It sees the system read-only,
   a private /tmp and /dev/shm, a /proc of its own processes, and of the service's runtime directories only its
   own; the data directory, the tenants file, /run (service-account tokens) and the service's home are hidden.
   No other kernel's connection file or socket exists there, and the service has no pid in it, so it cannot be
   signalled or read through /proc. When the service runs as root, the kernel also runs as a uid of its own
   (a user namespace inside), so files only root may read stay unreadable.
2. ``uid``: where namespaces are refused but the service is root, each kernel runs as a uid of its own with
   no-new-privileges: other kernels' directories (0700) and the service (root, not dumpable) are out of reach.
3. ``none``: neither is possible (a restricted Kubernetes pod). The service says so at start and in /readyz;
   docs/security.md says what holds instead (one tenant per pod, or a gVisor RuntimeClass).
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import os
import random
import shutil
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import notebook_state

log = logging.getLogger(__name__)

_PROBE_TIMEOUT = 10.0


class SandboxKind(enum.StrEnum):
    BWRAP = "bwrap"
    UID = "uid"
    NONE = "none"


@dataclass(frozen=True, slots=True)
class SandboxOptions:
    """What the settings ask of the sandbox."""

    mode: str = "auto"  # auto | bwrap | uid | none
    tmp_size: int = 512 * 1024**2
    binds: tuple[Path, ...] = ()
    hidden: tuple[Path, ...] = ()
    network: bool = True
    uid_base: int = 50_000
    uid_count: int = 10_000


@dataclass(frozen=True, slots=True)
class Sandbox:
    """What the platform allows, decided once; builds each kernel's launch prefix."""

    kind: SandboxKind
    detail: str
    options: SandboxOptions = field(default_factory=SandboxOptions)
    bwrap: str | None = None
    own_uid: bool = False  # kernels run as a uid of their own (the service is root)

    def to_json(self) -> dict[str, str]:
        return {"kind": self.kind.value, "detail": self.detail}

    def prefix(self, kernel_dir: Path, uid: int | None) -> list[str]:
        """The command that runs a kernel's argv inside its sandbox."""
        argv: list[str] = []
        if uid is not None:
            argv += make_setpriv_argv(uid, keep_bwrap=self.kind is SandboxKind.BWRAP)
        if self.kind is SandboxKind.BWRAP and self.bwrap is not None:
            userns = os.geteuid() != 0 or uid is not None
            argv += make_bwrap_argv(self.bwrap, kernel_dir, self.options, userns, own_uid=uid is not None)
        return argv

    def zygote_prefix(self, runtime_dir: Path, uid: int | None) -> list[str]:
        """The command that runs the kernel zygote: kernels forked from it isolate themselves inside it."""
        argv: list[str] = []
        if uid is not None:
            argv += make_setpriv_argv(uid, keep_bwrap=self.kind is SandboxKind.BWRAP)
        if self.kind is SandboxKind.BWRAP and self.bwrap is not None:
            userns = os.geteuid() != 0 or uid is not None
            argv += make_bwrap_argv(self.bwrap, runtime_dir, self.options, userns, uid is not None, zygote=True)
        return argv


def make_setpriv_argv(uid: int, keep_bwrap: bool) -> list[str]:
    """Drop to ``uid`` (its own group, no supplementary groups, no way back up through setuid binaries)."""
    argv = ["setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups", "--inh-caps=-all"]
    if not keep_bwrap:  # bwrap sets no-new-privs and the parent-death signal itself
        argv += ["--no-new-privs", "--pdeathsig=KILL"]
    return [*argv, "--"]


def needed_paths() -> list[str]:
    """What a kernel needs to run this Python and import the capture module: the interpreter's prefixes, the
    import path and the packages' own source roots (an editable install keeps those off sys.path)."""
    roots = {str(Path(m.__file__).resolve().parent.parent) for m in (notebook_state,) if m.__file__}
    paths = {sys.prefix, sys.base_prefix, sys.exec_prefix, *(p for p in sys.path if p), *roots}
    kept: list[str] = []
    for path in sorted(p for p in paths if os.path.isabs(p) and os.path.exists(p)):
        if not _under(path, kept):  # sorted: a parent comes before what it contains
            kept.append(path)
    return kept


def _under(path: str, parents: Iterable[str]) -> bool:
    return any(path == p or path.startswith(p.rstrip("/") + "/") for p in parents)


def make_bwrap_argv(
    bwrap: str, kernel_dir: Path, options: SandboxOptions, userns: bool, own_uid: bool = False, zygote: bool = False
) -> list[str]:
    """The bubblewrap command line for one kernel. Paths only: no secret is ever on a command line.

    ``own_uid``: the kernel runs as a uid of its own, so what only the service's user may read (its home, as
    a rule) stays unreadable without hiding it; a home others may read is hidden all the same.
    ``zygote``: the command line of the kernel zygote (``zygote.py``), whose forked kernels make namespaces of
    their own inside it (``isolate.py``): so it may create user namespaces, sees the whole runtime directory
    (``kernel_dir`` is that directory) and the host's /proc (over which each kernel mounts its own), and, as
    root, keeps CAP_SETFCAP to map its kernels' uid 0. It runs no user code.
    """
    size = str(options.tmp_size)
    argv = [bwrap, "--die-with-parent", "--unshare-ipc", "--unshare-uts", "--unshare-cgroup-try"]
    if not zygote:
        argv.insert(2, "--unshare-pid")
    if userns:
        argv += ["--unshare-user"] if zygote else ["--unshare-user", "--disable-userns"]
    else:
        argv += ["--cap-drop", "ALL", *(["--cap-add", "CAP_SETFCAP"] if zygote else [])]
    if not options.network and not zygote:
        argv.append("--unshare-net")
    argv += ["--ro-bind", "/", "/", "--dev", "/dev", *(["--bind", "/proc", "/proc"] if zygote else ["--proc", "/proc"])]
    private = ["/tmp", "/dev/shm"]
    for path in private:
        argv += ["--perms", "1777", "--size", size, "--tmpfs", path]
    hide = ["/run"]
    if os.path.isdir("/var/run") and not os.path.islink("/var/run"):
        hide.append("/var/run")
    home = os.environ.get("HOME", "")
    if home not in ("", "/") and os.path.isdir(home) and (not own_uid or os.stat(home).st_mode & 0o005):
        hide.append(home)  # the service user's credentials (~/.ssh, cloud configs)
    for hidden in hide:
        argv += ["--tmpfs", hidden]
    for needed in needed_paths():
        # A private or hidden directory itself is never bound back (the service started in /tmp has it on its
        # import path): that would give the kernel the host's /tmp, read-only, instead of its own.
        if _under(needed, private + hide) and needed not in private + hide:
            argv += ["--ro-bind", needed, needed]
    for bind in options.binds:
        argv += ["--bind-try", str(bind), str(bind)]
    for secret in options.hidden:
        if secret.is_dir():
            argv += ["--tmpfs", str(secret)]
        elif secret.exists():
            argv += ["--ro-bind", "/dev/null", str(secret)]
    runtime = kernel_dir.parent
    if zygote:
        argv += ["--bind", str(kernel_dir), str(kernel_dir)]
    elif not _under(str(runtime), private):
        argv += ["--tmpfs", str(runtime)]  # every other kernel's directory
    if not zygote:
        argv += ["--bind", str(kernel_dir), str(kernel_dir)]
    # ipykernel exits when its parent's pid changes or is 1, as it is in a pid namespace; bwrap's
    # --die-with-parent ties the kernel's life to the service's instead.
    argv += ["--unsetenv", "JPY_PARENT_PID", "--setenv", "HOME", "/tmp", "--chdir", "/tmp", "--"]
    return argv


class UidPool:
    """Hands each kernel a uid of its own from a range; random, so that replicas on one host rarely meet."""

    def __init__(self, base: int, count: int) -> None:
        self.base = base
        self.count = count
        self.used: set[int] = set()

    def take(self) -> int:
        for _ in range(64):
            uid = self.base + random.randrange(self.count)
            if uid not in self.used:
                self.used.add(uid)
                return uid
        raise RuntimeError("no free kernel uid: widen --sandbox-uid-count")


# The probe runs what a kernel needs (this Python, finding and reading the capture module; a sandbox in which the
# interpreter or its packages cannot be reached, as a home only its owner may enter, is no sandbox for kernels),
# without importing it: the probe is on a cold start's critical path.
_KERNEL_LIKE = [
    sys.executable, "-c",
    "import importlib.util as u; open(u.find_spec('notebook_state.capture').origin, 'rb').close(); "
    "assert u.find_spec('ipykernel')",
]  # fmt: skip


async def _works(argv: Sequence[str]) -> str | None:
    """None when ``argv`` runs to a zero exit, else why not."""
    try:
        proc = await asyncio.create_subprocess_exec(
            *argv, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE, start_new_session=True,
        )  # fmt: skip
    except OSError as exc:
        return str(exc)
    try:
        # asyncio.timeout, not wait_for: Python 3.11's wait_for returns a probe that ends in the turn of a cancel
        # and loses the cancel.
        async with asyncio.timeout(_PROBE_TIMEOUT):
            _, err = await proc.communicate()
    except TimeoutError:
        proc.kill()
        await proc.wait()
        return f"no answer in {_PROBE_TIMEOUT:g} s"
    except BaseException:  # cancelled: a probe that hangs would otherwise run on, nobody waiting for it
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        raise
    if proc.returncode == 0:
        return None
    return err.decode(errors="replace").strip().splitlines()[-1] if err.strip() else f"exit {proc.returncode}"


@dataclass(frozen=True, slots=True)
class Try:
    """One way to isolate kernels, tried by running what a kernel runs behind its prefix."""

    sandbox: Sandbox
    argv: list[str]
    refused: str  # said when it fails, before why


async def strongest(tries: Sequence[Try]) -> tuple[Try | None, list[str]]:
    """The first of ``tries`` (strongest first) that works, and why each before it did not. They run at once:
    a replica's first kernel waits for the verdict (as root: a uid of its own, else uid 0, both in bubblewrap),
    and together they take as long as one."""
    verdicts = await asyncio.gather(*(_works(t.argv) for t in tries))
    reasons: list[str] = []
    for attempt, why in zip(tries, verdicts, strict=True):
        if why is None:
            return attempt, reasons
        reasons.append(f"{attempt.refused}: {why}")
    return None, reasons


async def detect(options: SandboxOptions, probe_dir: Path) -> Sandbox:
    """The strongest sandbox this platform allows (or exactly the one asked for: it is an error if refused)."""
    if options.mode == "none":
        return Sandbox(SandboxKind.NONE, "disabled by --sandbox none", options)
    root = os.geteuid() == 0
    probe_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    reasons: list[str] = []
    tries: list[Try] = []  # strongest first
    bwrap = shutil.which("bwrap")
    uid = options.uid_base
    if options.mode in ("auto", "bwrap") and bwrap is None:
        reasons.append("bubblewrap is not installed")
    elif options.mode in ("auto", "bwrap"):
        for own_uid in (True, False) if root else (False,):
            how = "its own uid" if own_uid else "uid 0 without capabilities" if root else "a user namespace"
            detail = f"bubblewrap: own pid, ipc and mount namespaces, private /tmp; kernels run as {how}"
            sandbox = Sandbox(SandboxKind.BWRAP, detail, options, bwrap, own_uid)
            kernel_uid = uid if own_uid else None
            kernel_dir = _probe_dir(probe_dir / ("own-uid" if own_uid else "shared-uid"), kernel_uid)
            argv = [*sandbox.prefix(kernel_dir, kernel_uid), *_KERNEL_LIKE]
            tries.append(Try(sandbox, argv, f"bubblewrap refused ({how})"))
    found, refusals = await strongest(tries)
    reasons += refusals
    if found is not None:
        return found.sandbox
    if options.mode in ("auto", "uid") and not root:
        reasons.append("a uid of its own per kernel needs the service to run as root")
    elif options.mode in ("auto", "uid"):  # tried only where namespaces are refused: it is the rare case
        detail = "a uid of its own per kernel (no namespaces: " + "; ".join(reasons or ["not asked"]) + ")"
        sandbox = Sandbox(SandboxKind.UID, detail, options, None, own_uid=True)
        found, refusals = await strongest(
            [Try(sandbox, [*make_setpriv_argv(uid, keep_bwrap=False), *_KERNEL_LIKE], "setpriv refused")]
        )
        reasons += refusals
        if found is not None:
            return found.sandbox
    detail = "no sandbox: " + "; ".join(reasons)
    if options.mode != "auto":
        raise RuntimeError(f"--sandbox {options.mode} is not possible here: {detail}")
    return Sandbox(SandboxKind.NONE, detail, options)


def _probe_dir(path: Path, uid: int | None) -> Path:
    path.mkdir(mode=0o700, exist_ok=True)
    if uid is not None:
        os.chown(path, uid, uid)
    return path
