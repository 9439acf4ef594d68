"""jupyter-kernel-gateway 3.0, the peer this service is compared with: in a venv of its own (its module is also
called ``kernel_gateway``, so it must never be installed into this project's environment), started on loopback."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from importlib import metadata
from pathlib import Path

from loadtests.common import HOST, BenchError, ManagedProcess, free_port, log

from .config import JKG_REQUIREMENT, PIP_TIMEOUT, REPO, STARTUP_TIMEOUT, Json
from .processes import Target, wait_http_ok

NAME = "jupyter-kernel-gateway"


def jkg_env(venv: Path, home: Path | None = None) -> dict[str, str]:
    """An environment in which nothing of this project is importable: no PYTHONPATH, no project venv."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME")}
    path = [p for p in env.get("PATH", "").split(os.pathsep) if p and not p.startswith(str(REPO))]
    env["PATH"] = os.pathsep.join([str(venv / "bin"), *path])
    env["VIRTUAL_ENV"] = str(venv)
    env["PYTHONUNBUFFERED"] = "1"
    if home is not None:
        env["JUPYTER_RUNTIME_DIR"] = str(home / "runtime")
        env["JUPYTER_DATA_DIR"] = str(home / "data")
        env["JUPYTER_CONFIG_DIR"] = str(home / "config")
    return env


_PROBE = """
import importlib.metadata as m, json, sys, kernel_gateway
names = ("jupyter-kernel-gateway", "jupyter_server", "jupyter_client", "ipykernel", "tornado", "pyzmq")
versions = {}
for name in names:
    try:
        versions[name] = m.version(name)
    except m.PackageNotFoundError:
        versions[name] = None
print(json.dumps({"python": sys.version.split()[0], "module": kernel_gateway.__file__, "versions": versions}))
"""


def probe_venv(venv: Path, cwd: Path) -> Json | None:
    python = venv / "bin" / "python"
    if not python.exists():
        return None
    done = subprocess.run(
        [str(python), "-c", _PROBE], env=jkg_env(venv), cwd=cwd, capture_output=True, text=True, timeout=60, check=False
    )
    if done.returncode != 0:
        return None
    info: Json = json.loads(done.stdout)
    return info


def _pip_install(venv: Path, cwd: Path, *requirements: str, check: bool) -> int:
    pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "--disable-pip-version-check", *requirements]
    done = subprocess.run(
        pip, env=jkg_env(venv), cwd=cwd, stdout=sys.stderr, stderr=sys.stderr, timeout=PIP_TIMEOUT, check=check
    )
    return done.returncode


def ensure_venv(venv: Path, cwd: Path) -> Json:
    """Its venv, made on first use; the same ipykernel as ours, so that the kernels themselves do not differ."""
    info = probe_venv(venv, cwd)
    if info is not None and str(info["versions"].get(NAME) or "").startswith("3.0."):
        log("bench", f"{NAME} {info['versions'][NAME]} found in {venv}")
    else:
        log("bench", f"creating {venv} with {JKG_REQUIREMENT} (one-off; pip output follows on stderr)")
        if not (venv / "bin" / "python").exists():
            subprocess.run(
                [sys.executable, "-m", "venv", str(venv)], env=jkg_env(venv), cwd=cwd, check=True, timeout=300
            )
        ours = metadata.version("ipykernel")
        if _pip_install(venv, cwd, JKG_REQUIREMENT, f"ipykernel=={ours}", check=False) != 0:
            log("bench", f"ipykernel=={ours} did not install beside it; trying any ipykernel")
            _pip_install(venv, cwd, JKG_REQUIREMENT, "ipykernel", check=True)
        info = probe_venv(venv, cwd)
        if info is None:
            raise BenchError(f"{venv} has no working {NAME} after pip install")
    module = Path(info["module"]).resolve()
    if module.is_relative_to(REPO.resolve()) and not module.is_relative_to(venv.resolve()):
        raise BenchError(f"{NAME} would import this project's kernel_gateway ({module})")
    return info


def start(venv: Path, home: Path, token: str, ipython_dir: Path) -> Target:
    """Its WebSocket personality on a free loopback port, with its cwd and Jupyter dirs in ``home``; its
    kernels inherit ``IPYTHONDIR``."""
    port = free_port()
    cmd = [
        str(venv / "bin" / "jupyter"),
        "kernelgateway",
        f"--KernelGatewayApp.ip={HOST}",
        f"--KernelGatewayApp.port={port}",
        "--KernelGatewayApp.port_retries=0",
        "--JupyterWebsocketPersonality.list_kernels=True",
    ]
    env = jkg_env(venv, home)
    env["KG_AUTH_TOKEN"] = token
    env["IPYTHONDIR"] = str(ipython_dir)
    proc = ManagedProcess.start(NAME, cmd, env, cwd=home)
    target = Target(NAME, proc, f"http://{HOST}:{port}", token)
    try:
        wait_http_ok(proc, target.url + "/api/kernelspecs", target.headers, STARTUP_TIMEOUT)
    except BaseException:
        proc.stop()
        raise
    return target
