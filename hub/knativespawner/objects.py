"""Pure functions: a user's Knative Service from KubeSpawner's pod manifest, and what its status says.

Nothing here talks to Kubernetes; values go in and plain dicts (the JSON the API server takes) come out, so the
manifest can be checked as data. ``pod_manifest`` is KubeSpawner's ``get_pod_manifest()`` serialised to its
camelCase JSON form (``ApiClient().sanitize_for_serialization(pod)``).
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

Obj = dict[str, Any]

API_VERSION = "serving.knative.dev/v1"
GROUP = "serving.knative.dev"
VERSION = "v1"
PLURAL = "services"

# PodSpec fields Knative Serving accepts under its default feature flags (pkg/apis/serving/fieldmask.go). The
# rest of KubeSpawner's pod (affinity, tolerations, nodeSelector, pod securityContext, initContainers,
# schedulerName, priorityClassName, restartPolicy...) needs a `kubernetes.podspec-*` flag and is dropped
# unless the flag is named in `features`.
KNATIVE_POD_FIELDS = frozenset(
    {
        "serviceAccountName",
        "containers",
        "volumes",
        "imagePullSecrets",
        "enableServiceLinks",
        "automountServiceAccountToken",
    }
)
# Knative's `kubernetes.podspec-<flag>` feature flags (config-features) and the PodSpec field each one lets in.
FEATURE_POD_FIELDS = {
    "affinity": "affinity",
    "dnsconfig": "dnsConfig",
    "dnspolicy": "dnsPolicy",
    "hostaliases": "hostAliases",
    "init-containers": "initContainers",
    "nodeselector": "nodeSelector",
    "priorityclassname": "priorityClassName",
    "runtimeclassname": "runtimeClassName",
    "schedulername": "schedulerName",
    "securitycontext": "securityContext",
    "tolerations": "tolerations",
    "topologyspreadconstraints": "topologySpreadConstraints",
}
# A user's files live on a PVC (z2jh `singleuser.storage.type: dynamic`); without it they are gone when the
# server scales to zero. Knative needs `kubernetes.podspec-persistent-volume-claim: enabled` for the volume and
# `kubernetes.podspec-persistent-volume-write: enabled` to mount it read-write (knative/README.md, hub/README.md).
PVC_FEATURES = frozenset({"persistent-volume-claim", "persistent-volume-write"})
DEFAULT_FEATURES = PVC_FEATURES
# Container fields Knative keeps (ContainerMask); `lifecycle`, `stdin`, `tty`... are refused by its webhook.
KNATIVE_CONTAINER_FIELDS = frozenset(
    {
        "name",
        "image",
        "imagePullPolicy",
        "command",
        "args",
        "workingDir",
        "env",
        "envFrom",
        "resources",
        "securityContext",
        "volumeMounts",
        "readinessProbe",
        "livenessProbe",
        "startupProbe",
        "terminationMessagePath",
        "terminationMessagePolicy",
    }
)
KNATIVE_SECURITY_CONTEXT_FIELDS = frozenset(
    {
        "runAsNonRoot",
        "runAsUser",
        "runAsGroup",
        "readOnlyRootFilesystem",
        "allowPrivilegeEscalation",
        "capabilities",
        "seccompProfile",
    }
)
# Volume sources allowed by default; persistentVolumeClaim needs kubernetes.podspec-persistent-volume-claim.
KNATIVE_VOLUME_SOURCES = frozenset({"emptyDir", "configMap", "secret", "projected"})


def pod_fields(features: Iterable[str] = DEFAULT_FEATURES) -> frozenset[str]:
    """The PodSpec fields a Knative Service may carry on a cluster with these feature flags enabled."""
    unknown = set(features) - set(FEATURE_POD_FIELDS) - PVC_FEATURES
    if unknown:
        raise ValueError(f"unknown Knative feature flags: {sorted(unknown)} (known: {sorted(FEATURE_POD_FIELDS)})")
    return KNATIVE_POD_FIELDS | {FEATURE_POD_FIELDS[f] for f in features if f in FEATURE_POD_FIELDS}


def volume_sources(features: Iterable[str] = DEFAULT_FEATURES) -> frozenset[str]:
    return KNATIVE_VOLUME_SOURCES | ({"persistentVolumeClaim"} if "persistent-volume-claim" in features else set())


# Environment variables Knative sets itself and refuses in a container's env.
RESERVED_ENV = frozenset({"PORT", "K_SERVICE", "K_CONFIGURATION", "K_REVISION"})
RESERVED_PORTS = frozenset({8012, 8013, 8022, 9090, 9091})


@dataclass(frozen=True)
class Gateway:
    """Where the user's JupyterLab runs its kernels: the Serverless Kernel Gateway.

    The token is given either as a value or, better, as a Secret reference (``token_secret`` = (name, key)).
    """

    url: str
    token: str | None = None
    token_secret: tuple[str, str] | None = None

    def env(self) -> list[Obj]:
        """SKG_* for docker/start-jupyterlab.sh and JUPYTER_GATEWAY_* for jupyter_server's GatewayClient."""
        out: list[Obj] = [
            {"name": "SKG_GATEWAY_URL", "value": self.url},
            {"name": "JUPYTER_GATEWAY_URL", "value": self.url},
        ]
        for name in ("SKG_GATEWAY_TOKEN", "JUPYTER_GATEWAY_AUTH_TOKEN"):
            if self.token_secret is not None:
                secret, key = self.token_secret
                out.append({"name": name, "valueFrom": {"secretKeyRef": {"name": secret, "key": key}}})
            elif self.token is not None:
                out.append({"name": name, "value": self.token})
        return out


@dataclass(frozen=True)
class Scaling:
    """The revision's autoscaling: one replica at most, none when idle."""

    min_scale: int = 0
    max_scale: int = 1
    initial_scale: int = 1
    target: int = 100
    window: str = "300s"
    scale_to_zero_retention: str = "0s"
    container_concurrency: int = 0  # 0: unlimited, a JupyterLab tab makes many concurrent requests
    # Knative's queue-proxy cuts a WebSocket at the first of these three (it sees no bytes on an upgraded
    # connection, knative/serving#16169), so all three are equal: the browser's sockets to JupyterLab last as
    # long as the cluster allows (600 s on a default install, max-revision-timeout-seconds). JupyterLab then
    # reconnects, and skg_jupyter answers the reconnect without waking the gateway.
    timeout_seconds: int = 600
    response_start_timeout_seconds: int = 600
    idle_timeout_seconds: int = 600

    def annotations(self) -> dict[str, str]:
        prefix = "autoscaling.knative.dev/"
        return {
            prefix + "class": "kpa.autoscaling.knative.dev",
            prefix + "metric": "concurrency",
            prefix + "min-scale": str(self.min_scale),
            prefix + "max-scale": str(self.max_scale),
            prefix + "initial-scale": str(self.initial_scale),
            prefix + "target": str(self.target),
            prefix + "window": self.window,
            prefix + "scale-to-zero-pod-retention-period": self.scale_to_zero_retention,
        }


def _pick(obj: Mapping[str, Any], keys: Iterable[str]) -> Obj:
    return {k: copy.deepcopy(obj[k]) for k in keys if k in obj and obj[k] is not None}


def dropped_fields(pod_manifest: Mapping[str, Any], features: Iterable[str] = DEFAULT_FEATURES) -> list[str]:
    """The parts of the pod that the Knative Service leaves out (for a warning), as dotted paths."""
    spec: Mapping[str, Any] = pod_manifest.get("spec") or {}
    allowed, sources = pod_fields(features), volume_sources(features)
    out = [f"spec.{k}" for k, v in spec.items() if k not in allowed and v not in (None, [], {})]
    containers = spec.get("containers") or []
    out += [f"spec.containers[{i}]" for i in range(1, len(containers))]
    if containers:
        out += [f"spec.containers[0].{k}" for k in containers[0] if k not in KNATIVE_CONTAINER_FIELDS | {"ports"}]
        sc = containers[0].get("securityContext") or {}
        out += [f"spec.containers[0].securityContext.{k}" for k in sc if k not in KNATIVE_SECURITY_CONTEXT_FIELDS]
    for volume in spec.get("volumes") or []:
        if not set(volume) - {"name"} <= sources:
            out.append(f"spec.volumes[{volume.get('name')}]")
    return sorted(out)


def _quantity(value: Any) -> str:
    """A resource quantity as the string Kubernetes prints (KubeSpawner gives numbers: 0.5, 1073741824)."""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def _resources(resources: Mapping[str, Any]) -> Obj:
    return {kind: {k: _quantity(v) for k, v in (values or {}).items()} for kind, values in resources.items() if values}


def _container(pod_container: Mapping[str, Any], port: int, gateway: Gateway, probe_path: str) -> Obj:
    if port in RESERVED_PORTS:
        raise ValueError(f"port {port} is reserved by Knative's queue-proxy; choose another")
    container = _pick(pod_container, KNATIVE_CONTAINER_FIELDS)
    sc = _pick(container.get("securityContext") or {}, KNATIVE_SECURITY_CONTEXT_FIELDS)
    if sc:
        container["securityContext"] = sc
    else:
        container.pop("securityContext", None)
    ours = {e["name"] for e in gateway.env()}
    env = [e for e in container.get("env") or [] if e["name"] not in RESERVED_ENV | ours]
    container["env"] = env + gateway.env()
    resources = _resources(container.get("resources") or {})
    if resources:
        container["resources"] = resources
    else:
        container.pop("resources", None)
    # Knative serves one port and sets $PORT from it; "http1" because JupyterLab needs HTTP/1.1 upgrades.
    container["ports"] = [{"name": "http1", "containerPort": port}]
    probe: Obj = {"httpGet": {"path": probe_path}}
    # No periodSeconds on readiness: Knative then probes aggressively while the pod starts (a cold start
    # becomes ready as soon as the server answers, not at the next period).
    container.setdefault("readinessProbe", {**probe, "timeoutSeconds": 2, "failureThreshold": 3})
    container.setdefault("livenessProbe", {**probe, "periodSeconds": 30, "timeoutSeconds": 5, "failureThreshold": 3})
    return container


def make_knative_service(
    name: str,
    namespace: str,
    pod_manifest: Mapping[str, Any],
    *,
    gateway: Gateway,
    port: int,
    labels: Mapping[str, str] | None = None,
    annotations: Mapping[str, str] | None = None,
    scaling: Scaling | None = None,
    probe_path: str = "/api",
    cluster_local: bool = True,
    features: Iterable[str] = DEFAULT_FEATURES,
) -> Obj:
    """One Knative Service running the user's server from the pod KubeSpawner would have created.

    ``labels``/``annotations`` go on the Service and (with the pod's own) on its revision template.
    ``probe_path`` is the user server's unauthenticated status path (``{base_url}api`` for jupyter_server).
    ``cluster_local`` keeps the Service off the public ingress: only the hub's proxy reaches it.
    ``features`` are the cluster's enabled ``kubernetes.podspec-*`` flags: the pod fields they allow are kept.
    """
    scaling = scaling or Scaling()
    spec: Mapping[str, Any] = pod_manifest.get("spec") or {}
    containers = spec.get("containers") or []
    if not containers:
        raise ValueError("the pod manifest has no container")
    meta: Mapping[str, Any] = pod_manifest.get("metadata") or {}
    template_labels = {**(meta.get("labels") or {}), **(labels or {})}
    template_annotations = {**(meta.get("annotations") or {}), **(annotations or {}), **scaling.annotations()}

    allowed, sources = pod_fields(features), volume_sources(features)
    revision: Obj = {
        k: v for k, v in _pick(spec, allowed).items() if k not in {"containers", "volumes"} and v not in ([], {})
    }
    revision["containerConcurrency"] = scaling.container_concurrency
    revision["timeoutSeconds"] = scaling.timeout_seconds
    revision["responseStartTimeoutSeconds"] = scaling.response_start_timeout_seconds
    revision["idleTimeoutSeconds"] = scaling.idle_timeout_seconds
    revision["containers"] = [_container(containers[0], port, gateway, probe_path)]
    volumes = [copy.deepcopy(v) for v in spec.get("volumes") or [] if set(v) - {"name"} <= sources]
    if volumes:
        revision["volumes"] = volumes
        kept = {v["name"] for v in volumes}
        mounts = [m for m in revision["containers"][0].get("volumeMounts") or [] if m["name"] in kept]
        revision["containers"][0]["volumeMounts"] = mounts
    else:
        revision["containers"][0].pop("volumeMounts", None)
    if not revision["containers"][0].get("volumeMounts"):
        revision["containers"][0].pop("volumeMounts", None)

    service_labels = dict(labels or {})
    if cluster_local:
        service_labels["networking.knative.dev/visibility"] = "cluster-local"
    metadata: Obj = {"name": name, "namespace": namespace, "labels": service_labels}
    if annotations:
        metadata["annotations"] = dict(annotations)
    return {
        "apiVersion": API_VERSION,
        "kind": "Service",
        "metadata": metadata,
        "spec": {
            "template": {
                "metadata": {"labels": template_labels, "annotations": template_annotations},
                "spec": revision,
            }
        },
    }


# ------------------------------------------------------------------------------------------------------------
# Reading a Knative Service's status
# ------------------------------------------------------------------------------------------------------------

Readiness = Literal["ready", "pending", "failed"]


def ready_condition(service: Mapping[str, Any]) -> Obj | None:
    """The Ready condition of the Service's status, if the controller has reported one for this generation."""
    status: Mapping[str, Any] = service.get("status") or {}
    generation = (service.get("metadata") or {}).get("generation")
    observed = status.get("observedGeneration")
    if generation is not None and observed is not None and observed < generation:
        return None  # the status describes an older spec
    for condition in status.get("conditions") or []:
        if condition.get("type") == "Ready":
            return dict(condition)
    return None


def readiness(service: Mapping[str, Any]) -> Readiness:
    """ready: Ready=True (including scaled to zero, which Knative reports as Ready); failed: Ready=False."""
    condition = ready_condition(service)
    if condition is None:
        return "pending"
    if condition.get("status") == "True":
        return "ready"
    if condition.get("status") == "False":
        return "failed"
    return "pending"


def failure_message(service: Mapping[str, Any]) -> str:
    condition = ready_condition(service) or {}
    return f"{condition.get('reason', 'Unknown')}: {condition.get('message', 'no message')}"


UrlSource = Literal["address", "url"]


def service_url(service: Mapping[str, Any], source: UrlSource = "address") -> str | None:
    """The Service's URL: ``status.address.url`` (cluster-local) or ``status.url`` (the route's, maybe public)."""
    status: Mapping[str, Any] = service.get("status") or {}
    url = (status.get("address") or {}).get("url") if source == "address" else status.get("url")
    return str(url) if url else None
