"""Runs in a kernel forked from the zygote, before any user code: the sandbox of its own that bubblewrap gives an
exec'd kernel, made with system calls, since a forked kernel never execs.

The zygote already runs inside bubblewrap (the system read-only, secrets hidden). Each forked kernel then gets,
on top of that, its own user, mount, pid, ipc and uts namespaces (and network, when kernels have none), a private
/tmp and /dev/shm, a /proc of its own processes, of the runtime directory only its own kernel directory, no
capabilities and no way to create further user namespaces. Python 3.11 has no ``os.unshare``, hence ctypes.

The namespaces are made in two steps because a new pid namespace takes effect only for children:
``enter_namespaces`` (the zygote's child, which stays outside and waits for the kernel) and ``seal`` (its own
child, pid 1 of the new namespace, which becomes the kernel).
"""

from __future__ import annotations

import ctypes
import fcntl
import os
import select
import signal
import socket
import stat
import struct
from collections.abc import Sequence

_libc = ctypes.CDLL(None, use_errno=True)
_libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_char_p]
_libc.unshare.argtypes = [ctypes.c_int]
_libc.prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]

CLONE_NEWNS, CLONE_NEWUTS, CLONE_NEWIPC = 0x00020000, 0x04000000, 0x08000000
CLONE_NEWUSER, CLONE_NEWPID, CLONE_NEWNET = 0x10000000, 0x20000000, 0x40000000
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC, MS_REMOUNT = 1, 2, 4, 8, 32
MS_BIND, MS_REC, MS_PRIVATE = 4096, 16384, 1 << 18
PR_SET_PDEATHSIG, PR_CAPBSET_DROP, PR_SET_NO_NEW_PRIVS, PR_CAP_AMBIENT = 1, 24, 38, 47
PR_CAP_AMBIENT_CLEAR_ALL = 4
_CAP_VERSION_3 = 0x20080522
_PROC_READ_ONLY = ("sys", "sysrq-trigger", "irq", "bus")  # as bubblewrap leaves them: no host-wide sysctls


def _check(result: int, what: str) -> None:
    if result != 0:
        errno = ctypes.get_errno()
        raise OSError(errno, f"{what}: {os.strerror(errno)}")


def mount(source: str | None, target: str, fstype: str | None, flags: int, data: str | None = None) -> None:
    def enc(text: str | None) -> bytes | None:
        return text.encode() if text is not None else None

    _check(_libc.mount(enc(source), target.encode(), enc(fstype), flags, enc(data)), f"mount {target}")


def prctl(option: int, arg: int = 0) -> None:
    _check(_libc.prctl(option, arg, 0, 0, 0), f"prctl {option}")


def die_with_parent(parent: int) -> None:
    """SIGKILL when the parent dies (and at once if it already has)."""
    prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent:
        os._exit(1)


def die_with_parent_pipe(alive: int) -> None:
    """The same where the parent has no pid here (pid 1 of a new namespace): ``alive`` is a pipe whose other
    end only the parent holds, at its end of file once the parent is gone."""
    prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    ready, _, _ = select.select([alive], [], [], 0)
    if ready:
        os._exit(1)
    os.close(alive)


def _write(path: str, text: str) -> None:
    fd = os.open(path, os.O_WRONLY)
    try:
        os.write(fd, text.encode())
    finally:
        os.close(fd)


def unshare(network: bool) -> None:
    """New namespaces; the user namespace's id maps are written by the zygote (``write_id_maps``), which alone
    may map uid 0 (that needs CAP_SETFCAP in the parent namespace)."""
    flags = CLONE_NEWUSER | CLONE_NEWNS | CLONE_NEWPID | CLONE_NEWIPC | CLONE_NEWUTS
    _check(_libc.unshare(flags | (0 if network else CLONE_NEWNET)), "unshare")
    _write("/proc/self/setgroups", "deny")


def write_id_maps(pid: int, uid: int, gid: int) -> None:
    """Map the kernel's uid and gid to themselves (the zygote's own: a kernel is no more than it)."""
    _write(f"/proc/{pid}/uid_map", f"{uid} {uid} 1")
    _write(f"/proc/{pid}/gid_map", f"{gid} {gid} 1")


def private_mounts(kernel_dir: str, tmp_size: int, keep: Sequence[str] = (), shared: Sequence[str] = ()) -> None:
    """A private /tmp and /dev/shm, and of the runtime directory only ``kernel_dir``. What the zygote's sandbox
    hides stays hidden: those mounts came from a more privileged namespace, so they are locked. ``keep``: what
    the kernel needs under /tmp or /dev/shm (the interpreter, the packages), bound back read-only, as
    bubblewrap does for an exec'd kernel; ``shared``: the operator's ``--sandbox-bind`` directories there,
    bound back read-write."""
    mount(None, "/", None, MS_REC | MS_PRIVATE)  # nothing here propagates back to the zygote
    own = os.open(kernel_dir, os.O_PATH | os.O_DIRECTORY)  # kept across the tmpfs that covers its siblings
    kept = {path: os.open(path, os.O_PATH) for path in (*keep, *shared) if os.path.exists(path)}
    try:
        for path in ("/tmp", "/dev/shm"):
            mount("tmpfs", path, "tmpfs", MS_NOSUID | MS_NODEV, f"mode=1777,size={tmp_size}")
        runtime = os.path.dirname(kernel_dir)
        os.makedirs(runtime, exist_ok=True)  # under /dev/shm it is gone with the old /dev/shm
        mount("tmpfs", runtime, "tmpfs", MS_NOSUID | MS_NODEV, "mode=0755,size=65536")
        os.mkdir(kernel_dir, 0o700)
        mount(f"/proc/self/fd/{own}", kernel_dir, None, MS_BIND | MS_REC)
        for path, fd in kept.items():
            if stat.S_ISDIR(os.fstat(fd).st_mode):  # the path itself is under the new tmpfs now
                os.makedirs(path, exist_ok=True)
            else:
                os.makedirs(os.path.dirname(path), exist_ok=True)
                os.close(os.open(path, os.O_CREAT | os.O_WRONLY, 0o600))
            mount(f"/proc/self/fd/{fd}", path, None, MS_BIND | MS_REC)
            writable = MS_RDONLY if path not in shared else 0
            mount(None, path, None, MS_BIND | MS_REMOUNT | writable | MS_NOSUID | MS_NODEV)
        if os.path.isdir("/dev/pts"):  # terminals of its own (bubblewrap's /dev is the zygote's, shared)
            mount("devpts", "/dev/pts", "devpts", MS_NOSUID | MS_NOEXEC, "newinstance,ptmxmode=0666,mode=620")
    finally:
        for fd in (own, *kept.values()):
            os.close(fd)


def _loopback_up() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        request = struct.pack("16sH14x", b"lo", 0)
        flags = struct.unpack("16sH14x", fcntl.ioctl(s.fileno(), 0x8913, request))[1]  # SIOCGIFFLAGS
        fcntl.ioctl(s.fileno(), 0x8914, struct.pack("16sH14x", b"lo", flags | 1))  # SIOCSIFFLAGS, IFF_UP


def seal(network: bool) -> None:
    """In pid 1 of the new namespaces: its own /proc, no more user namespaces, no capabilities."""
    os.setsid()  # its own process group: an interrupt it sends itself reaches no one else
    mount("proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC)
    _write("/proc/sys/user/max_user_namespaces", "0")
    for name in _PROC_READ_ONLY:
        path = f"/proc/{name}"
        if os.path.exists(path):
            mount(path, path, None, MS_BIND | MS_REC)
            mount(None, path, None, MS_BIND | MS_REMOUNT | MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC)
    if not network:
        _loopback_up()
    drop_capabilities()


def drop_capabilities() -> None:
    """No capability left, none to regain (no_new_privs, empty bounding set): the mounts above stay put."""
    with open("/proc/sys/kernel/cap_last_cap") as f:
        last = int(f.read())
    for cap in range(last + 1):
        prctl(PR_CAPBSET_DROP, cap)
    _check(_libc.prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0), "clear ambient capabilities")
    prctl(PR_SET_NO_NEW_PRIVS, 1)
    header = struct.pack("Ii", _CAP_VERSION_3, 0)
    data = bytes(24)  # two empty {effective, permitted, inheritable} sets
    _check(_libc.capset(ctypes.c_char_p(header), ctypes.c_char_p(data)), "capset")
