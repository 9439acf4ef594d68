"""Launching one kernel process: its environment (an allow-list) and jupyter_client's manager, started through
the sandbox's command prefix."""

from __future__ import annotations

import functools
import importlib.util
import os
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import zmq.asyncio
from jupyter_client.kernelspec import KernelSpec, KernelSpecManager, NoSuchKernel
from jupyter_client.manager import AsyncKernelManager
from jupyter_client.provisioning.factory import KernelProvisionerFactory
from jupyter_core.paths import jupyter_path
from traitlets import default

from .forked import ForkProvisioner, ZygoteClient
from .kernel import Kernel

ALLOWED_NAMES = frozenset(
    {
        "PATH", "LANG", "LANGUAGE", "TZ", "TERM", "USER", "LOGNAME",
        "PYTHONPATH", "PYTHONIOENCODING", "PYTHONUNBUFFERED", "PYTHONDONTWRITEBYTECODE", "PYTHONWARNINGS",
        "VIRTUAL_ENV", "CONDA_PREFIX", "CONDA_DEFAULT_ENV", "LD_LIBRARY_PATH",
        "SSL_CERT_FILE", "SSL_CERT_DIR", "REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE",
        "HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY", "http_proxy", "https_proxy", "no_proxy",
        "MPLBACKEND", "OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMEXPR_MAX_THREADS",
    }
)  # fmt: skip
"""What a kernel inherits of the service's environment, besides KERNEL_* and the configured prefix."""
ALLOWED_PREFIXES = ("LC_", "KERNEL_")
_SECRET_MARKERS = ("REDIS", "TOKEN", "SECRET", "PASSWORD", "SIGNING", "CREDENTIAL", "KEY")
_CREDENTIALS_IN_URL = re.compile(r"//[^/@\s]*@")


def kernel_environment(
    base: Mapping[str, str], env_prefix: str, allowed_prefix: str = "KERNEL_", extra: Iterable[str] = ()
) -> dict[str, str]:
    """The environment a kernel process starts with: only what is known to be harmless.

    User code runs in the kernel, so it gets an allow-list of the service's variables (the toolchain, locale,
    proxies without credentials), ``KERNEL_*`` and the configured frontend prefix, plus names the operator
    adds; never the service's own settings (``SKG_*``) nor anything named like a secret.
    """
    allowed = ALLOWED_NAMES | set(extra)
    prefixes = (*ALLOWED_PREFIXES, allowed_prefix) if allowed_prefix else ALLOWED_PREFIXES
    env: dict[str, str] = {}
    for name, value in base.items():
        if name.startswith(env_prefix) or not (name in allowed or name.startswith(prefixes)):
            continue
        if name not in extra and any(m in name.upper() for m in _SECRET_MARKERS):
            continue
        if "PROXY" in name.upper() and _CREDENTIALS_IN_URL.search(value):
            continue
        env[name] = value
    return env


IPYKERNEL_ARGUMENTS = [
    # IPython's on-disk history costs a kernel ~1 ms of CPU per cell (SQLite writes from a saving thread) and
    # means nothing here: a session outlives its kernel process, so the file would belong to no one. In, Out,
    # _ih and %history still work for the life of the kernel, in memory.
    "--HistoryManager.enabled=False",
]


@functools.cache  # where ipykernel is installed does not change while the service runs; asked per kernel start
def _ipykernel_resources() -> str | None:
    """Where ipykernel keeps its own kernelspec (``ipykernel.kernelspec.RESOURCES``), found without importing it."""
    spec = importlib.util.find_spec("ipykernel")
    if spec is None or not spec.submodule_search_locations:
        return None
    return os.path.join(next(iter(spec.submodule_search_locations)), "resources")


class KernelSpecs(KernelSpecManager):
    """jupyter_client's kernelspec lookup, reading a kernelspec installed on disk as it reads any other.

    jupyter_client imports IPython for the legacy ``~/.ipython/kernels`` and, for the native kernel's name,
    ``ipykernel.kernelspec`` only to tell whether the spec is ipykernel's own bundled one (~45 ms of the
    service's CPU, on a cold start's path to its first kernel). That bundled one, and only that one, still
    goes through jupyter_client's own lookup."""

    @default("kernel_dirs")
    def _kernel_dirs_default(self) -> list[str]:
        # jupyter_client's default imports IPython for the legacy ~/.ipython/kernels: the same place without it.
        ipython_dir = os.environ.get("IPYTHONDIR") or os.path.join(os.path.expanduser("~"), ".ipython")
        return [*jupyter_path("kernels"), os.path.join(ipython_dir, "kernels")]

    def _get_kernel_spec_by_name(self, kernel_name: str, resource_dir: str) -> KernelSpec:
        if os.path.realpath(resource_dir) == os.path.realpath(_ipykernel_resources() or resource_dir):
            return super()._get_kernel_spec_by_name(kernel_name, resource_dir)
        spec = self.kernel_spec_class.from_resource_dir(resource_dir)
        if not KernelProvisionerFactory.instance(parent=self.parent).is_provisioner_available(spec):
            raise NoSuchKernel(kernel_name)
        return spec


class SandboxedKernelManager(AsyncKernelManager):
    """jupyter_client's manager, launching the kernel's command behind the sandbox's prefix.

    ``format_kernel_cmd`` is jupyter_client's documented hook for the launch command; everything else
    (connection file, ports, shutdown) stays jupyter_client's own.
    """

    def __init__(self, launch_prefix: list[str], kernel_uid: int | None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.launch_prefix = launch_prefix
        self.kernel_uid = kernel_uid

    def format_kernel_cmd(self, extra_arguments: list[str] | None = None) -> list[str]:
        argv = super().format_kernel_cmd(extra_arguments)
        if any("ipykernel" in part for part in argv):
            argv += IPYKERNEL_ARGUMENTS
        return [*self.launch_prefix, *argv]

    def write_connection_file(self, **kwargs: Any) -> None:
        super().write_connection_file(**kwargs)
        if self.kernel_uid is not None:  # the kernel runs as a uid of its own: its key file is its alone
            os.chown(self.connection_file, self.kernel_uid, self.kernel_uid)


async def start_kernel(
    name: str,
    context: zmq.asyncio.Context,
    kernel_dir: Path,
    env: Mapping[str, str],
    timeout: float,
    launch_prefix: list[str] | None = None,
    kernel_uid: int | None = None,
    cwd: Path | None = None,
    zygote: ZygoteClient | None = None,
    capture: Mapping[str, Any] | None = None,
) -> Kernel:
    """Start a kernel of kernelspec ``name`` whose files all live in ``kernel_dir``; wait until it is ready.

    With ``zygote``, the kernel is forked from it (``forked.py``) instead of exec'd behind ``launch_prefix``;
    then ``capture`` (``{"auto_dir", "reply"}``) has it install the capture module itself before it serves
    (``Kernel.captured``)."""
    # IPC (Unix sockets in the kernel's own directory): no TCP ports, no other user can connect, a sandbox
    # sees its own sockets only, and a round trip is cheaper than over loopback TCP.
    km = SandboxedKernelManager(
        launch_prefix or [],
        kernel_uid,
        kernel_spec_manager=KernelSpecs(),
        kernel_name=name,
        context=context,
        transport="ipc",
        ip=str(kernel_dir / "k"),
        connection_file=str(kernel_dir / "kernel.json"),
    )
    # The process dies with the service's process group only if we ask; jupyter_client restarts are ours.
    km.autorestart = False
    if zygote is not None:
        km.kernel_id = kernel_dir.name
        km.provisioner = ForkProvisioner(kernel_id=km.kernel_id, kernel_spec=km.kernel_spec, parent=km)
        km.provisioner.zygote = zygote
        km.provisioner.kernel_dir = kernel_dir
        km.provisioner.fork_timeout = timeout
        km.provisioner.capture = capture
    if (launch_prefix or zygote is not None) and km.kernel_spec is not None:
        # A signal would reach the sandbox's own processes first (bubblewrap dies of SIGINT, taking the kernel
        # with it); ipykernel interrupts itself on an interrupt_request instead.
        km.kernel_spec.interrupt_mode = "message"
    kernel = Kernel(km, name, kernel_dir.name, kernel_dir)
    kernel.forked = zygote is not None
    kernel.captured = zygote is not None and capture is not None
    await kernel.start(env, timeout, cwd)
    return kernel
