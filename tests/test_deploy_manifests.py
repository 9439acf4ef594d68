"""The Kubernetes manifests in knative/: rendered with `kubectl kustomize`, validated, and checked for what matters.

Every kustomization (the base, the dev, prod and managed-redis overlays, the baseline) is rendered from a copy
of knative/ whose secrets.env is made from secrets.env.example, so a developer's real secrets.env is never
read. Core objects are validated against the Kubernetes OpenAPI schemas that kubernetes-validate ships
(offline); the Knative Service against knative/schema/knative-service.schema.json and, for its containers,
against the core Pod schema too.
"""

from __future__ import annotations

import base64
import copy
import json
import os
import re
import shutil
import subprocess
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import redis as redis_lib
import yaml

from kernel_gateway.settings import Settings
from tests.redis_server import free_port, redis_server_binary

ROOT = Path(__file__).resolve().parent.parent
KNATIVE = ROOT / "knative"
SCHEMA = KNATIVE / "schema" / "knative-service.schema.json"
SECRETS_DIR = Path("components") / "secrets"
K8S_VERSION = "1.31"  # a version kubernetes-validate ships; clusters of 1.31 and later accept these objects
TARGETS = ("base", "overlays/dev", "overlays/prod", "overlays/managed-redis", "baseline")
KNATIVE_TARGETS = ("overlays/dev", "overlays/prod", "overlays/managed-redis")
DEPLOYABLE = (*KNATIVE_TARGETS, "baseline")
SECRET_KEYS = {"SKG_TOKEN", "SKG_SIGNING_KEY", "SKG_REDIS_PASSWORD"}
SECRET_NAME = re.compile(r"TOKEN|SECRET|PASSWORD|SIGNING|PRIVATE|CREDENTIAL|(^|_)KEY($|_)")
# Settings of the Redis state store, which is being built separately: accepted even before
# kernel_gateway.settings has them.
PENDING_SETTINGS = {"redis_url", "max_sessions"}
DEFAULT_MAX_REVISION_TIMEOUT = 600  # Knative's config-defaults max-revision-timeout-seconds
GATEWAY_UID = 10001  # docker/gateway.Dockerfile's USER

Obj = dict[str, Any]


def _kubectl() -> str:
    path = shutil.which("kubectl")
    if path is None:
        pytest.fail(
            "kubectl is not on PATH: these tests render knative/ with `kubectl kustomize`. Install kubectl "
            "(1.27 or later; CI uses 1.32, which ships kustomize 5.5); .ci/run checks for it too.",
            pytrace=False,
        )
    return path


def _kustomize(kubectl: str, path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([kubectl, "kustomize", str(path)], capture_output=True, text=True, timeout=60, check=False)


def _copy_tree(dst: Path) -> Path:
    tree = dst / "knative"
    shutil.copytree(KNATIVE, tree, ignore=shutil.ignore_patterns("secrets.env"))
    return tree


@pytest.fixture(scope="module")
def rendered(tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[Obj]]:
    """Every kustomization, rendered (concurrently, it is a few hundred ms in all) and parsed."""
    kubectl = _kubectl()
    tree = _copy_tree(tmp_path_factory.mktemp("kustomize"))
    shutil.copy(tree / SECRETS_DIR / "secrets.env.example", tree / SECRETS_DIR / "secrets.env")
    with ThreadPoolExecutor(len(TARGETS)) as pool:
        results = dict(zip(TARGETS, pool.map(lambda t: _kustomize(kubectl, tree / t), TARGETS), strict=True))
    out: dict[str, list[Obj]] = {}
    for target, proc in results.items():
        assert proc.returncode == 0, f"kubectl kustomize knative/{target} failed:\n{proc.stderr}"
        docs = [d for d in yaml.safe_load_all(proc.stdout) if d]
        assert docs, f"knative/{target} rendered nothing"
        out[target] = docs
    return out


def _of(docs: list[Obj], kind: str, api_prefix: str = "") -> list[Obj]:
    return [d for d in docs if d["kind"] == kind and d["apiVersion"].startswith(api_prefix)]


def _one(docs: list[Obj], kind: str, api_prefix: str = "") -> Obj:
    found = _of(docs, kind, api_prefix)
    assert len(found) == 1, f"expected one {kind}, found {len(found)}"
    return found[0]


def _ksvc(docs: list[Obj]) -> Obj:
    return _one(docs, "Service", "serving.knative.dev/")


def _settings(docs: list[Obj]) -> dict[str, str]:
    cms = [d for d in _of(docs, "ConfigMap") if d["metadata"]["name"].startswith("skg-settings")]
    assert len(cms) == 1, "expected one skg-settings ConfigMap"
    data: dict[str, str] = cms[0]["data"]
    return data


def _pod_specs(docs: list[Obj]) -> Iterator[tuple[str, Obj]]:
    for d in docs:
        if d["kind"] in ("Deployment", "StatefulSet") or d["apiVersion"].startswith("serving.knative.dev/"):
            yield f"{d['kind']}/{d['metadata']['name']}", d["spec"]["template"]["spec"]


def _containers(docs: list[Obj]) -> Iterator[tuple[str, Obj, Obj]]:
    for where, pod in _pod_specs(docs):
        for c in [*pod.get("initContainers", []), *pod["containers"]]:
            yield f"{where}/{c.get('name', '?')}", c, pod


def _gateway_containers(docs: list[Obj]) -> list[tuple[str, Obj, Obj]]:
    return [(w, c, p) for w, c, p in _containers(docs) if "skg-gateway" in c["image"]]


def redis_client(port: int, password: str | None) -> redis_lib.Redis:
    return redis_lib.Redis(host="127.0.0.1", port=port, password=password, socket_timeout=5, decode_responses=True)


def _seconds(duration: str) -> int:
    m = re.fullmatch(r"(\d+)(s|m|h)", duration)
    assert m, f"not a duration: {duration!r}"
    return int(m.group(1)) * {"s": 1, "m": 60, "h": 3600}[m.group(2)]


_SUFFIX = {"m": 1e-3, "": 1, "k": 1e3, "M": 1e6, "G": 1e9, "T": 1e12, "Ki": 2**10, "Mi": 2**20, "Gi": 2**30}


def _quantity(q: str | int) -> float:
    m = re.fullmatch(r"(\d+(?:\.\d+)?)(m|k|M|G|T|Ki|Mi|Gi)?", str(q))
    assert m, f"not a quantity: {q!r}"
    return float(m.group(1)) * _SUFFIX[m.group(2) or ""]


# ---- rendering --------------------------------------------------------------------------------------------


def test_every_kustomization_renders(rendered: dict[str, list[Obj]]) -> None:
    assert set(rendered) == set(TARGETS)


def test_rendering_without_secrets_env_fails_clearly(tmp_path: Path) -> None:
    """prod reads secrets.env, which users create: without it rendering fails and names the file."""
    tree = _copy_tree(tmp_path)
    proc = _kustomize(_kubectl(), tree / "overlays" / "prod")
    assert proc.returncode != 0
    assert "secrets.env" in proc.stderr


def test_real_secrets_env_is_git_ignored() -> None:
    proc = subprocess.run(
        ["git", "check-ignore", "--no-index", "-q", str(KNATIVE / SECRETS_DIR / "secrets.env")],
        cwd=ROOT,
        check=False,
    )
    assert proc.returncode == 0, "knative/components/secrets/secrets.env must be git-ignored"


# ---- schema validation ------------------------------------------------------------------------------------


def test_kubernetes_validate_rejects_a_broken_object() -> None:
    """The validator works offline and is not vacuous: a misspelt field and a wrong type both fail."""
    good: Obj = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": "x"},
        "data": {"A": "1"},
    }
    kubernetes_validate.validate(good, K8S_VERSION, strict=True)
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate({**good, "dta": {}}, K8S_VERSION, strict=True)
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate({**good, "data": {"A": 1}}, K8S_VERSION, strict=True)


@pytest.mark.parametrize("target", TARGETS)
def test_core_objects_match_kubernetes_schemas(rendered: dict[str, list[Obj]], target: str) -> None:
    kinds = set()
    for doc in rendered[target]:
        if doc["apiVersion"].startswith("serving.knative.dev/"):
            continue
        kinds.add(doc["kind"])
        try:
            kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
        except kubernetes_validate.ValidationError as exc:
            path = "/".join(str(p) for p in exc.path)
            pytest.fail(f"knative/{target}: {doc['kind']}/{doc['metadata']['name']} at {path}: {exc.message}")
    assert kinds, f"knative/{target} has no core objects"


def test_knative_schema_is_a_valid_json_schema() -> None:
    jsonschema.Draft202012Validator.check_schema(json.loads(SCHEMA.read_text()))


def _knative_validator() -> jsonschema.Draft202012Validator:
    return jsonschema.Draft202012Validator(json.loads(SCHEMA.read_text()))


@pytest.mark.parametrize("target", KNATIVE_TARGETS)
def test_knative_service_matches_schema(rendered: dict[str, list[Obj]], target: str) -> None:
    errors = [
        f"{'/'.join(str(p) for p in e.absolute_path)}: {e.message}"
        for e in _knative_validator().iter_errors(_ksvc(rendered[target]))
    ]
    assert not errors, f"knative/{target}: the Knative Service does not match its schema:\n" + "\n".join(errors)


def test_knative_schema_rejects_what_knative_would(rendered: dict[str, list[Obj]]) -> None:
    """Negative controls: a misspelt autoscaling knob, a pod-level securityContext (off in Knative by default),
    a reserved port name and an env var with both a value and a secret reference all fail."""
    validator = _knative_validator()
    ksvc = _ksvc(rendered["overlays/dev"])
    assert validator.is_valid(ksvc)

    typo = copy.deepcopy(ksvc)
    typo["spec"]["template"]["metadata"]["annotations"]["autoscaling.knative.dev/minScale"] = "0"
    pod_sc = copy.deepcopy(ksvc)
    pod_sc["spec"]["template"]["spec"]["securityContext"] = {"runAsNonRoot": True}
    port = copy.deepcopy(ksvc)
    port["spec"]["template"]["spec"]["containers"][0]["ports"][0]["name"] = "http"
    env = copy.deepcopy(ksvc)
    env["spec"]["template"]["spec"]["containers"][0]["env"][0]["value"] = "inlined"
    for bad in (typo, pod_sc, port, env):
        assert not validator.is_valid(bad)


@pytest.mark.parametrize("target", KNATIVE_TARGETS)
def test_knative_pod_spec_matches_core_pod_schema(rendered: dict[str, list[Obj]], target: str) -> None:
    """The Knative revision's containers and volumes are core types: validate them as a Pod's."""
    spec = copy.deepcopy(_ksvc(rendered[target])["spec"]["template"]["spec"])
    for c in spec["containers"]:
        for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
            if probe in c and "port" not in c[probe].get("httpGet", {"port": 0}):
                c[probe]["httpGet"]["port"] = c["ports"][0]["name"]  # Knative fills in the container port
    pod: Obj = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "revision"},
        "spec": {k: v for k, v in spec.items() if k in ("containers", "volumes", "enableServiceLinks")},
    }
    kubernetes_validate.validate(pod, K8S_VERSION, strict=True)


# ---- references -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("target", DEPLOYABLE)
def test_references_resolve(rendered: dict[str, list[Obj]], target: str) -> None:
    """Every ConfigMap/Secret a container names exists in the same render, with the key it asks for (generated
    names carry a content hash, which kustomize must substitute in the Knative Service too)."""
    docs = rendered[target]
    data = {
        (d["kind"], d["metadata"]["name"]): set(d.get("data", {})) for d in docs if d["kind"] in ("ConfigMap", "Secret")
    }
    for where, c, _ in _containers(docs):
        for src in c.get("envFrom", []):
            for kind, field in (("ConfigMap", "configMapRef"), ("Secret", "secretRef")):
                if field in src:
                    assert (kind, src[field]["name"]) in data, f"{where}: no {kind} {src[field]['name']}"
        for e in c.get("env", []):
            for kind, field in (("ConfigMap", "configMapKeyRef"), ("Secret", "secretKeyRef")):
                ref = e.get("valueFrom", {}).get(field)
                if ref:
                    keys = data.get((kind, ref["name"]))
                    assert keys is not None, f"{where}: env {e['name']} names a missing {kind} {ref['name']}"
                    assert ref["key"] in keys, f"{where}: {kind} {ref['name']} has no key {ref['key']}"


@pytest.mark.parametrize("target", DEPLOYABLE)
def test_gateway_image_is_set_by_the_overlay(rendered: dict[str, list[Obj]], target: str) -> None:
    gateways = _gateway_containers(rendered[target])
    assert gateways, f"knative/{target}: no gateway container"
    for where, c, _ in gateways:
        assert "/" in c["image"] and ":" in c["image"], f"{where}: image {c['image']!r} was not set by `images:`"


# ---- secrets ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("target", TARGETS)
def test_no_secret_value_is_inlined(rendered: dict[str, list[Obj]], target: str) -> None:
    docs = rendered[target]
    for where, c, _ in _containers(docs):
        for e in c.get("env", []):
            if SECRET_NAME.search(e["name"]):
                assert "value" not in e, f"{where}: {e['name']} has an inlined value"
                assert "secretKeyRef" in e.get("valueFrom", {}), f"{where}: {e['name']} is not a secretKeyRef"
        for src in c.get("envFrom", []):
            assert "secretRef" not in src, f"{where}: envFrom a whole Secret; reference each key instead"
    for cm in _of(docs, "ConfigMap"):
        for key in cm.get("data", {}):
            assert not SECRET_NAME.search(key), f"ConfigMap {cm['metadata']['name']} holds {key}"
    settings = _settings(docs)
    assert "@" not in settings.get("SKG_REDIS_URL", ""), "the Redis password belongs in the Secret, not the URL"


def test_base_has_no_secret(rendered: dict[str, list[Obj]]) -> None:
    assert not _of(rendered["base"], "Secret"), "the base must not carry secret values"


def test_secret_keys_agree_everywhere(rendered: dict[str, list[Obj]]) -> None:
    """secrets.env.example, the dev placeholders and what the manifests reference name the same keys."""
    example = {
        line.split("=", 1)[0].strip()
        for line in (KNATIVE / SECRETS_DIR / "secrets.env.example").read_text().splitlines()
        if line.strip() and not line.lstrip().startswith("#")
    }
    assert example == SECRET_KEYS
    for target in DEPLOYABLE:
        docs = rendered[target]
        secret = _one(docs, "Secret")
        assert set(secret["data"]) == SECRET_KEYS, target
        referenced = {
            e["valueFrom"]["secretKeyRef"]["key"]
            for _, c, _ in _gateway_containers(docs)
            for e in c.get("env", [])
            if "secretKeyRef" in e.get("valueFrom", {})
        }
        assert referenced == SECRET_KEYS, f"knative/{target}: the gateway references {referenced}"


def test_dev_secrets_are_obvious_placeholders(rendered: dict[str, list[Obj]]) -> None:
    secret = _one(rendered["overlays/dev"], "Secret")
    for key, value in secret["data"].items():
        assert "not-a-secret" in base64.b64decode(value).decode(), key


# ---- settings ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("target", DEPLOYABLE)
def test_settings_configmap(rendered: dict[str, list[Obj]], target: str) -> None:
    s = _settings(rendered[target])
    assert s["SKG_HOST"] == "0.0.0.0"
    assert int(s["SKG_POOL_SIZE"]) >= 1, "a cold-started replica is ready only once a warm kernel is"
    assert float(s["SKG_WS_IDLE_TIMEOUT"]) > 0, "idle WebSockets must close, or tabs pin a pod (serving#10835)"
    assert float(s["SKG_SHUTDOWN_GRACE"]) > 0
    assert s["SKG_DATA_DIR"].startswith("/tmp/"), "the root filesystem is read-only; /tmp is an emptyDir"
    assert re.match(r"rediss?://[^/@\s]+:\d+/\d+$", s["SKG_REDIS_URL"]), s["SKG_REDIS_URL"]
    assert "PORT" not in s, "Knative sets PORT itself"


@pytest.mark.parametrize("target", DEPLOYABLE)
def test_settings_are_known_to_the_service(
    rendered: dict[str, list[Obj]], target: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each SKG_* key is a field of kernel_gateway.settings (a misspelt one would be silently ignored), and the
    service accepts the whole configuration, with a token from the Secret."""
    s = _settings(rendered[target])
    fields = set(Settings.model_fields)
    for key in s:
        assert key.startswith("SKG_"), f"{key}: settings are SKG_* variables"
        name = key.removeprefix("SKG_").lower()
        assert name in fields or name in PENDING_SETTINGS, f"{key} is not a setting of the service"
    for key in list(os.environ):
        if key.startswith("SKG_"):
            monkeypatch.delenv(key)
    for key, value in s.items():
        monkeypatch.setenv(key, value)
    for key in SECRET_KEYS:
        monkeypatch.setenv(key, f"{key.lower()}-from-the-secret")
    settings = Settings()
    assert settings.host == "0.0.0.0"
    assert str(settings.data_dir) == s["SKG_DATA_DIR"]


# ---- the Knative Service ----------------------------------------------------------------------------------


@pytest.mark.parametrize("target", KNATIVE_TARGETS)
def test_knative_autoscaling(rendered: dict[str, list[Obj]], target: str) -> None:
    ksvc = _ksvc(rendered[target])
    ann = ksvc["spec"]["template"]["metadata"]["annotations"]
    spec = ksvc["spec"]["template"]["spec"]
    assert ann["autoscaling.knative.dev/min-scale"] == "0", "the service must be allowed to scale to zero"
    assert ann.get("autoscaling.knative.dev/class", "kpa.autoscaling.knative.dev") == "kpa.autoscaling.knative.dev"
    assert ann.get("autoscaling.knative.dev/metric", "concurrency") == "concurrency"
    max_scale = int(ann["autoscaling.knative.dev/max-scale"])
    assert 1 <= int(ann["autoscaling.knative.dev/initial-scale"]) <= max_scale
    cc = spec["containerConcurrency"]
    assert 0 < float(ann["autoscaling.knative.dev/target"]) <= cc
    assert 6 <= _seconds(ann["autoscaling.knative.dev/window"]) <= 3600, "Knative accepts a window of 6s to 1h"
    assert _seconds(ann["autoscaling.knative.dev/scale-to-zero-pod-retention-period"]) >= 0


@pytest.mark.parametrize("target", KNATIVE_TARGETS)
def test_knative_timeouts_fit_long_cells(rendered: dict[str, list[Obj]], target: str) -> None:
    docs = rendered[target]
    spec = _ksvc(docs)["spec"]["template"]["spec"]
    s = _settings(docs)
    timeout, start, idle = spec["timeoutSeconds"], spec["responseStartTimeoutSeconds"], spec["idleTimeoutSeconds"]
    longest_cell = float(s["SKG_MAX_EXECUTION_TIMEOUT"])
    # A non-streaming POST /execute answers only when its cell is done and committed.
    assert longest_cell < start <= timeout, "the longest REST cell must end before Knative gives up on it"
    assert float(s["SKG_EXECUTION_TIMEOUT"]) <= longest_cell
    # The gateway closes idle WebSockets itself before Knative's idle timeout would.
    assert float(s["SKG_WS_IDLE_TIMEOUT"]) <= idle <= timeout
    # Knative sets terminationGracePeriodSeconds to timeoutSeconds: room to drain.
    assert float(s["SKG_SHUTDOWN_GRACE"]) < timeout


def test_dev_fits_a_default_knative_install(rendered: dict[str, list[Obj]]) -> None:
    """Dev applies to an unconfigured cluster: timeoutSeconds within the default max-revision-timeout, and no
    field a default feature flag refuses (fieldRef: dev forwards to the container port instead)."""
    assert _ksvc(rendered["overlays/dev"])["spec"]["template"]["spec"]["timeoutSeconds"] <= 600
    assert "fieldRef" not in json.dumps(_ksvc(rendered["overlays/dev"]))
    prod = _ksvc(rendered["overlays/prod"])["spec"]["template"]["spec"]["timeoutSeconds"]
    if prod > DEFAULT_MAX_REVISION_TIMEOUT:
        assert "max-revision-timeout-seconds" in (KNATIVE / "README.md").read_text(), (
            "prod needs max-revision-timeout-seconds raised: the README must say so"
        )


@pytest.mark.parametrize("target", KNATIVE_TARGETS)
def test_knative_container_port_and_probes(rendered: dict[str, list[Obj]], target: str) -> None:
    (where, c, _) = _gateway_containers(rendered[target])[0]
    assert c["ports"] == [{"name": "http1", "containerPort": 8080}], where
    assert c["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert c["livenessProbe"]["httpGet"]["path"] == "/healthz"
    for probe in ("readinessProbe", "livenessProbe"):
        port = c[probe]["httpGet"].get("port")
        assert port in (None, "http1", 8080), f"{where}: a Knative probe port must be absent or the container port"


@pytest.mark.parametrize("target", KNATIVE_TARGETS)
def test_knative_readiness_probes_fast(rendered: dict[str, list[Obj]], target: str) -> None:
    """A readiness periodSeconds turns off the queue-proxy's aggressive start-up probing: every cold start
    would wait for the next period."""
    (where, c, _) = _gateway_containers(rendered[target])[0]
    assert "periodSeconds" not in c["readinessProbe"], where


def _default_jupyter_idle_timeout() -> float:
    """SKG_GATEWAY_IDLE_TIMEOUT's default in docker/start-jupyterlab.sh: when JupyterLab closes an idle tab's
    gateway socket (skg_jupyter)."""
    m = re.search(
        r'idle_timeout="\$\{SKG_GATEWAY_IDLE_TIMEOUT:-(\d+)\}"', (ROOT / "docker" / "start-jupyterlab.sh").read_text()
    )
    assert m, "docker/start-jupyterlab.sh sets the default idle timeout"
    return float(m.group(1))


@pytest.mark.parametrize("target", KNATIVE_TARGETS)
def test_websocket_timeouts_agree(rendered: dict[str, list[Obj]], target: str) -> None:
    """Knative cuts a kernel WebSocket at the first of the revision's three timeouts, busy or not
    (knative/serving#16169). Before that, in this order: JupyterLab (skg_jupyter) closes an idle tab's socket,
    then the gateway closes any socket idle for SKG_WS_IDLE_TIMEOUT (clients without skg_jupyter); a socket cut
    under a running cell is reopened at once and resumed."""
    docs = rendered[target]
    spec = _ksvc(docs)["spec"]["template"]["spec"]
    cut = min(spec["timeoutSeconds"], spec["responseStartTimeoutSeconds"], spec["idleTimeoutSeconds"])
    assert spec["timeoutSeconds"] == spec["responseStartTimeoutSeconds"] == spec["idleTimeoutSeconds"], (
        "a shorter one would only cut WebSockets sooner"
    )
    assert _default_jupyter_idle_timeout() < float(_settings(docs)["SKG_WS_IDLE_TIMEOUT"]) < cut


# Sizing of a replica (knative/README.md, "Sizing"): an idle kernel with numpy and pandas preloaded is about
# 100 MiB (measured), plus room for an average session's data; the service itself about 80 MiB, plus checkpoint
# buffers.
KERNEL_MIB = 192
SERVICE_MIB = 384
CONCURRENCY_HEADROOM = 4  # REST calls, forwarded requests and probes beside one socket per session


@pytest.mark.parametrize("target", DEPLOYABLE)
def test_session_cap_fits_memory_and_concurrency(rendered: dict[str, list[Obj]], target: str) -> None:
    docs = rendered[target]
    s = _settings(docs)
    sessions, pool = int(s["SKG_MAX_SESSIONS"]), int(s["SKG_POOL_SIZE"])
    assert sessions > 0, "without a cap a replica takes sessions until it runs out of memory"
    for where, c, _ in _gateway_containers(docs):
        limit_mib = _quantity(c["resources"]["limits"]["memory"]) / 2**20
        assert (sessions + pool) * KERNEL_MIB + SERVICE_MIB <= limit_mib, f"{where}: {sessions} sessions do not fit"
    if target in KNATIVE_TARGETS:
        cc = _ksvc(docs)["spec"]["template"]["spec"]["containerConcurrency"]
        assert sessions + CONCURRENCY_HEADROOM <= cc, "every session's socket and some REST calls fit at once"


@pytest.mark.parametrize("target", ("overlays/prod", "overlays/managed-redis"))
def test_forwarding_goes_through_the_queue_proxy(rendered: dict[str, list[Obj]], target: str) -> None:
    """Another replica reaches a session's owner at the owner's queue-proxy (8012), so that Knative counts the
    forwarded request on the owner; the pod IP comes from the downward API (kubernetes.podspec-fieldref)."""
    (_, c, _) = _gateway_containers(rendered[target])[0]
    names = [e["name"] for e in c["env"]]
    env = {e["name"]: e for e in c["env"]}
    assert env["POD_IP"]["valueFrom"]["fieldRef"]["fieldPath"] == "status.podIP"
    assert names.index("POD_IP") < names.index("SKG_ADVERTISE_URL"), "$(POD_IP) expands only if defined before"
    assert env["SKG_ADVERTISE_URL"]["value"] == "http://$(POD_IP):8012"
    assert c["ports"][0]["containerPort"] != 8012, "8012 is the queue-proxy's port, not the container's"
    assert "kubernetes.podspec-fieldref" in (KNATIVE / "README.md").read_text()


# ---- every workload ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("target", DEPLOYABLE)
def test_resources_on_every_container(rendered: dict[str, list[Obj]], target: str) -> None:
    for where, c, _ in _containers(rendered[target]):
        res = c.get("resources", {})
        for kind in ("requests", "limits"):
            for name in ("cpu", "memory"):
                assert name in res.get(kind, {}), f"{where}: no {kind}.{name}"
        for name, limit in res["limits"].items():
            if name in res["requests"]:
                assert _quantity(res["requests"][name]) <= _quantity(limit), f"{where}: {name} request > limit"


@pytest.mark.parametrize("target", DEPLOYABLE)
def test_security_context_on_every_container(rendered: dict[str, list[Obj]], target: str) -> None:
    for where, c, pod in _containers(rendered[target]):
        sc, psc = c.get("securityContext", {}), pod.get("securityContext", {})
        assert sc.get("runAsNonRoot", psc.get("runAsNonRoot")) is True, f"{where}: not runAsNonRoot"
        assert sc.get("runAsUser", psc.get("runAsUser", 0)) != 0, f"{where}: runs as root"
        assert sc.get("allowPrivilegeEscalation") is False, f"{where}: allowPrivilegeEscalation"
        assert sc.get("capabilities", {}).get("drop") == ["ALL"], f"{where}: capabilities not dropped"
        assert not sc.get("capabilities", {}).get("add"), f"{where}: adds capabilities"
        assert sc.get("privileged", False) is False
        assert sc.get("readOnlyRootFilesystem") is True, f"{where}: writable root filesystem"
        mounted = {m["mountPath"] for m in c.get("volumeMounts", [])}
        assert mounted, f"{where}: a read-only root filesystem needs a writable volume"


@pytest.mark.parametrize("target", DEPLOYABLE)
def test_gateway_pod(rendered: dict[str, list[Obj]], target: str) -> None:
    for where, c, pod in _gateway_containers(rendered[target]):
        sc = c["securityContext"]
        assert sc.get("runAsUser", pod.get("securityContext", {}).get("runAsUser")) == GATEWAY_UID, where
        tmp = [m for m in c["volumeMounts"] if m["mountPath"] == "/tmp"]
        assert tmp, f"{where}: /tmp (the data dir) must be mounted"
        volumes = {v["name"]: v for v in pod["volumes"]}
        assert "emptyDir" in volumes[tmp[0]["name"]], f"{where}: /tmp must be an emptyDir"
        assert pod.get("enableServiceLinks") is False, (
            f"{where}: service links would put SKG_REDIS_PORT=tcp://... (and SKG_PORT for a Service named skg) "
            "into the gateway's settings namespace"
        )
        env = {e["name"]: e for e in c.get("env", [])}
        assert env["HOME"]["value"].startswith("/tmp"), f"{where}: HOME must be writable"


@pytest.mark.parametrize("target", TARGETS)
def test_no_service_clashes_with_the_settings_prefix(rendered: dict[str, list[Obj]], target: str) -> None:
    """A Service named `skg` would give pods with service links SKG_PORT=tcp://..., which the service parses."""
    assert all(s["metadata"]["name"] != "skg" for s in _of(rendered[target], "Service", "v1"))


# ---- Redis ------------------------------------------------------------------------------------------------


REDIS_TARGETS = ("overlays/dev", "overlays/prod", "baseline")


def _redis_conf(docs: list[Obj]) -> dict[str, str]:
    """The redis.conf the StatefulSet mounts (from its ConfigMap), as directive -> value."""
    sts = _one(docs, "StatefulSet")
    volumes = {v["name"]: v for v in sts["spec"]["template"]["spec"].get("volumes", [])}
    redis = sts["spec"]["template"]["spec"]["containers"][0]
    mount = next(m for m in redis["volumeMounts"] if m["mountPath"] == "/etc/redis")
    name = volumes[mount["name"]]["configMap"]["name"]
    cm = next(d for d in _of(docs, "ConfigMap") if d["metadata"]["name"] == name)
    conf: dict[str, str] = {}
    for line in cm["data"]["redis.conf"].splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            key, _, value = line.strip().partition(" ")
            conf[key] = value.strip()
    return conf


@pytest.mark.parametrize("target", REDIS_TARGETS)
def test_in_cluster_redis(rendered: dict[str, list[Obj]], target: str) -> None:
    docs = rendered[target]
    sts = _one(docs, "StatefulSet")
    services = {s["metadata"]["name"]: s for s in _of(docs, "Service", "v1")}
    headless = services[sts["spec"]["serviceName"]]
    assert headless["spec"]["clusterIP"] == "None"
    host = re.match(r"rediss?://([^:/]+)", _settings(docs)["SKG_REDIS_URL"])
    assert host and host.group(1) in services, "SKG_REDIS_URL must name the Redis Service"
    assert services[host.group(1)]["spec"].get("clusterIP") != "None"
    redis = sts["spec"]["template"]["spec"]["containers"][0]
    conf = _redis_conf(docs)
    assert conf["maxmemory-policy"] == "noeviction", "checkpoints are never evicted silently"
    assert "requirepass" not in conf, "the password is not in a ConfigMap"
    # The password: from the Secret, into the environment, to redis-server on stdin; never on a command line.
    env = {e["name"]: e for e in redis["env"]}
    assert env["REDIS_PASSWORD"]["valueFrom"]["secretKeyRef"]["key"] == "SKG_REDIS_PASSWORD"
    command = [*redis.get("command", []), *redis.get("args", [])]
    assert "--requirepass" not in command and "$(REDIS_PASSWORD)" not in " ".join(command)
    assert 'requirepass "$REDIS_PASSWORD"' in command[-1] and "redis-server /etc/redis/redis.conf -" in command[-1]
    persistent = bool(sts["spec"].get("volumeClaimTemplates"))
    assert persistent == (target != "overlays/dev"), "only dev runs Redis without persistence"


@pytest.mark.parametrize("target", REDIS_TARGETS)
def test_redis_memory_fits_its_volume_and_container(rendered: dict[str, list[Obj]], target: str) -> None:
    """maxmemory, the memory limit and the volume agree (knative/README.md, "Redis"): with persistence the AOF
    reaches about 3 x the data, the volume is 4 x maxmemory, and the limit 2 x (the rewrite's fork)."""
    docs = rendered[target]
    conf = _redis_conf(docs)
    sts = _one(docs, "StatefulSet")
    maxmemory = _quantity(conf["maxmemory"].replace("gb", "Gi").replace("mb", "Mi"))
    limit = _quantity(sts["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"]["memory"])
    if conf["appendonly"] == "yes":
        assert conf["appendfsync"] == "always", "committed must mean on disk (README: Redis)"
        assert conf.get("save") == '""', "the AOF is the persistence"
        volume = _quantity(sts["spec"]["volumeClaimTemplates"][0]["spec"]["resources"]["requests"]["storage"])
        assert volume >= 4 * maxmemory, f"a {volume / 2**30:g} GiB volume for {maxmemory / 2**30:g} GiB of data"
        assert limit >= 2 * maxmemory, "room for the AOF rewrite's copy-on-write pages"
    else:
        assert conf.get("save") == '""', "no persistence at all, or none of it"
        assert limit >= 1.25 * maxmemory, "room for Redis's own overhead"


@pytest.mark.parametrize("target", REDIS_TARGETS)
def test_redis_disruption_budget(rendered: dict[str, list[Obj]], target: str) -> None:
    docs = rendered[target]
    pdb = _one(docs, "PodDisruptionBudget", "policy/v1")
    sts = _one(docs, "StatefulSet")
    labels = sts["spec"]["template"]["metadata"]["labels"]
    assert pdb["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert pdb["spec"].get("maxUnavailable") == 0 or pdb["spec"].get("minAvailable", 0) >= sts["spec"]["replicas"]
    assert pdb["spec"]["unhealthyPodEvictionPolicy"] == "AlwaysAllow", "a broken Redis must not block drains"


def test_redis_starts_as_configured(rendered: dict[str, list[Obj]], tmp_path: Path) -> None:
    """prod's Redis container command and redis.conf, run for real (sh and redis-server from this machine, the
    data dir and port moved to a temporary place): the password works and is on no command line, and the
    durability and memory settings are the ones documented."""
    docs = rendered["overlays/prod"]
    redis = _one(docs, "StatefulSet")["spec"]["template"]["spec"]["containers"][0]
    port = free_port()
    conf = next(d for d in _of(docs, "ConfigMap") if d["metadata"]["name"].startswith("skg-redis-config"))
    text = conf["data"]["redis.conf"].replace("port 6379", f"port {port}").replace("dir /data", f"dir {tmp_path}")
    (tmp_path / "redis.conf").write_text(text + "bind 127.0.0.1\n")
    command = [*redis["command"], redis["args"][0].replace("/etc/redis/redis.conf", str(tmp_path / "redis.conf"))]
    password = "0123abcd" * 8
    path = f"{Path(redis_server_binary()).parent}{os.pathsep}{os.environ.get('PATH', '/usr/bin:/bin')}"
    proc = subprocess.Popen(command, env={"PATH": path, "REDIS_PASSWORD": password}, stdout=subprocess.DEVNULL)
    try:
        client = redis_client(port, password)
        deadline = time.monotonic() + 30
        while True:
            try:
                client.ping()
                break
            except redis_lib.ConnectionError:
                assert proc.poll() is None and time.monotonic() < deadline, "redis-server did not start"
                time.sleep(0.05)
        with pytest.raises(redis_lib.AuthenticationError):
            redis_client(port, None).ping()
        config = {k: client.config_get(k)[k] for k in ("appendonly", "appendfsync", "maxmemory", "maxmemory-policy")}
        assert config == {"appendonly": "yes", "appendfsync": "always", "maxmemory": str(2 * 2**30),
                          "maxmemory-policy": "noeviction"}  # fmt: skip
        cmdline = Path(f"/proc/{proc.pid}/cmdline").read_bytes()
        assert password.encode() not in cmdline and b"redis-server" in cmdline
    finally:
        proc.terminate()
        proc.wait(20)


def test_managed_redis_overlay_has_no_redis(rendered: dict[str, list[Obj]]) -> None:
    docs = rendered["overlays/managed-redis"]
    assert not _of(docs, "StatefulSet")
    assert all("redis" not in s["metadata"]["name"] for s in _of(docs, "Service", "v1"))
    assert _settings(docs)["SKG_REDIS_URL"] != _settings(rendered["overlays/prod"])["SKG_REDIS_URL"]


# ---- the baseline -----------------------------------------------------------------------------------------


def test_baseline_cannot_scale_to_zero(rendered: dict[str, list[Obj]]) -> None:
    docs = rendered["baseline"]
    assert not _of(docs, "Service", "serving.knative.dev/"), "the baseline needs no Knative"
    deployment = _one(docs, "Deployment")
    hpa = _one(docs, "HorizontalPodAutoscaler", "autoscaling/v2")
    assert hpa["spec"]["minReplicas"] >= 1
    assert hpa["spec"]["maxReplicas"] >= hpa["spec"]["minReplicas"]
    ref = hpa["spec"]["scaleTargetRef"]
    assert (ref["apiVersion"], ref["kind"], ref["name"]) == ("apps/v1", "Deployment", deployment["metadata"]["name"])
    assert "replicas" not in deployment["spec"], "the HPA owns the replica count"
    metric = hpa["spec"]["metrics"][0]
    assert metric["type"] == "Resource" and metric["resource"]["name"] == "cpu"
    grace = deployment["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
    assert grace > float(_settings(docs)["SKG_SHUTDOWN_GRACE"]), "SIGTERM drain needs its grace period"
    c = deployment["spec"]["template"]["spec"]["containers"][0]
    assert c["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert c["livenessProbe"]["httpGet"]["path"] == "/healthz"
    service = next(s for s in _of(docs, "Service", "v1") if s["metadata"]["name"] == deployment["metadata"]["name"])
    assert service["spec"]["selector"].items() <= deployment["spec"]["template"]["metadata"]["labels"].items()


def test_baseline_shares_settings_with_knative(rendered: dict[str, list[Obj]]) -> None:
    """The baseline reuses the shared components: the same settings as prod, so the comparison is fair."""
    assert _settings(rendered["baseline"]) == _settings(rendered["overlays/prod"])
