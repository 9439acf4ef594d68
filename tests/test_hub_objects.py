"""hub.knativespawner.objects as data: the user's Knative Service built from a KubeSpawner-like pod manifest,
validated against knative/schema/knative-service.schema.json (and its container against the core schema)."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest

from hub.knativespawner.objects import (
    Gateway,
    Scaling,
    dropped_fields,
    make_knative_service,
    pod_fields,
    readiness,
    service_url,
)

ROOT = Path(__file__).resolve().parent.parent
SCHEMA = json.loads((ROOT / "knative" / "schema" / "knative-service.schema.json").read_text())
GATEWAY = Gateway("http://skg-gateway.skg.svc.cluster.local", token_secret=("skg-secrets", "SKG_TOKEN"))

# What KubeSpawner.get_pod_manifest() gives, serialised (z2jh-like: scheduling, pod securityContext, PVC...).
POD: dict[str, Any] = {
    "apiVersion": "v1",
    "kind": "Pod",
    "metadata": {
        "name": "jupyter-alice",
        "labels": {"component": "singleuser-server", "hub.jupyter.org/username": "alice"},
        "annotations": {"hub.jupyter.org/username": "alice"},
    },
    "spec": {
        "automountServiceAccountToken": False,
        "securityContext": {"fsGroup": 100},
        "nodeSelector": {"pool": "users"},
        "tolerations": [{"key": "hub.jupyter.org/dedicated", "operator": "Equal", "value": "user"}],
        "restartPolicy": "OnFailure",
        "initContainers": [{"name": "block-metadata", "image": "busybox"}],
        "containers": [
            {
                "name": "notebook",
                "image": "ghcr.io/example/skg-jupyterlab:1",
                "imagePullPolicy": "IfNotPresent",
                "args": ["--debug"],
                "ports": [{"name": "notebook-port", "containerPort": 8888}],
                "env": [
                    {"name": "JUPYTERHUB_API_TOKEN", "value": "tok"},
                    {"name": "JUPYTERHUB_API_URL", "value": "http://hub:8081/hub/api"},
                    {"name": "PORT", "value": "1"},
                ],
                "resources": {"requests": {"cpu": 0.5, "memory": 1073741824}, "limits": {"cpu": 2.0, "memory": "2G"}},
                "securityContext": {"runAsUser": 1000, "runAsGroup": 100, "allowPrivilegeEscalation": False},
                "lifecycle": {"postStart": {"exec": {"command": ["true"]}}},
                "volumeMounts": [
                    {"name": "scratch", "mountPath": "/tmp"},
                    {"name": "home", "mountPath": "/home/jovyan"},
                ],
            },
            {"name": "sidecar", "image": "busybox"},
        ],
        "volumes": [
            {"name": "scratch", "emptyDir": {}},
            {"name": "home", "persistentVolumeClaim": {"claimName": "claim-alice"}},
        ],
    },
}


def build(**kw: Any) -> dict[str, Any]:
    args: dict[str, Any] = {"gateway": GATEWAY, "port": 8888, "labels": {"app": "jupyterhub"}}
    args.update(kw)
    return make_knative_service("jupyter-alice", "jhub-users", copy.deepcopy(POD), **args)


def container(svc: dict[str, Any]) -> dict[str, Any]:
    result: dict[str, Any] = svc["spec"]["template"]["spec"]["containers"][0]
    return result


def test_valid_against_the_knative_schema() -> None:
    svc = build(probe_path="/user/alice/api")
    jsonschema.validate(svc, SCHEMA)
    # The container is a valid core container too (probes without a port: Knative fills in the container's).
    core = copy.deepcopy(container(svc))
    for probe in ("readinessProbe", "livenessProbe"):
        core[probe]["httpGet"]["port"] = 8888
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "x"}, "spec": {"containers": [core]}}
    kubernetes_validate.validate(pod, "1.31", strict=True)


def test_scales_to_zero_and_to_at_most_one() -> None:
    svc = build()
    assert svc["apiVersion"] == "serving.knative.dev/v1" and svc["kind"] == "Service"
    annotations = svc["spec"]["template"]["metadata"]["annotations"]
    assert annotations["autoscaling.knative.dev/min-scale"] == "0"
    assert annotations["autoscaling.knative.dev/max-scale"] == "1"
    assert annotations["hub.jupyter.org/username"] == "alice"  # the pod's own annotations are kept
    spec = svc["spec"]["template"]["spec"]
    assert spec["containerConcurrency"] == 0
    assert spec["timeoutSeconds"] <= 600  # fits a default Knative install
    # Knative cuts a WebSocket at the first of the three (knative/serving#16169): none is shorter.
    assert spec["timeoutSeconds"] == spec["responseStartTimeoutSeconds"] == spec["idleTimeoutSeconds"]
    tuned = build(scaling=Scaling(scale_to_zero_retention="10m", timeout_seconds=3600))
    tuned_annotations = tuned["spec"]["template"]["metadata"]["annotations"]
    assert tuned_annotations["autoscaling.knative.dev/scale-to-zero-pod-retention-period"] == "10m"
    assert tuned["spec"]["template"]["spec"]["timeoutSeconds"] == 3600


def test_container_comes_from_the_pod() -> None:
    c = container(build())
    assert c["image"] == "ghcr.io/example/skg-jupyterlab:1"
    assert c["args"] == ["--debug"]
    assert c["ports"] == [{"name": "http1", "containerPort": 8888}]
    assert c["resources"] == {
        "requests": {"cpu": "0.5", "memory": "1073741824"},
        "limits": {"cpu": "2", "memory": "2G"},
    }
    assert c["securityContext"] == {"runAsUser": 1000, "runAsGroup": 100, "allowPrivilegeEscalation": False}
    assert "lifecycle" not in c
    assert c["readinessProbe"]["httpGet"]["path"] == "/api"
    assert "periodSeconds" not in c["readinessProbe"], "a readiness period turns off Knative's fast start-up probing"
    assert c["volumeMounts"] == [
        {"name": "scratch", "mountPath": "/tmp"},
        {"name": "home", "mountPath": "/home/jovyan"},
    ]


def test_env_has_the_hub_env_and_the_gateway() -> None:
    env = {e["name"]: e for e in container(build())["env"]}
    assert env["JUPYTERHUB_API_TOKEN"]["value"] == "tok"
    assert env["JUPYTERHUB_API_URL"]["value"] == "http://hub:8081/hub/api"
    assert "PORT" not in env  # Knative sets it (and refuses it)
    assert env["SKG_GATEWAY_URL"]["value"] == GATEWAY.url
    assert env["JUPYTER_GATEWAY_URL"]["value"] == GATEWAY.url
    secret = {"secretKeyRef": {"name": "skg-secrets", "key": "SKG_TOKEN"}}
    assert env["SKG_GATEWAY_TOKEN"] == {"name": "SKG_GATEWAY_TOKEN", "valueFrom": secret}
    assert env["JUPYTER_GATEWAY_AUTH_TOKEN"]["valueFrom"] == secret
    plain = {e["name"]: e for e in container(build(gateway=Gateway("http://gw", token="t")))["env"]}
    assert plain["SKG_GATEWAY_TOKEN"] == {"name": "SKG_GATEWAY_TOKEN", "value": "t"}


def test_labels_and_visibility() -> None:
    svc = build()
    assert svc["metadata"]["name"] == "jupyter-alice" and svc["metadata"]["namespace"] == "jhub-users"
    assert svc["metadata"]["labels"] == {"app": "jupyterhub", "networking.knative.dev/visibility": "cluster-local"}
    assert svc["spec"]["template"]["metadata"]["labels"]["hub.jupyter.org/username"] == "alice"
    assert "networking.knative.dev/visibility" not in build(cluster_local=False)["metadata"]["labels"]
    assert "ownerReferences" not in svc["metadata"]  # the hub owns nothing; it deletes on stop


def test_fields_knative_refuses_are_dropped_and_reported() -> None:
    spec = build()["spec"]["template"]["spec"]
    assert set(spec) == {
        "automountServiceAccountToken", "containers", "volumes", "containerConcurrency", "timeoutSeconds",
        "responseStartTimeoutSeconds", "idleTimeoutSeconds",
    }  # fmt: skip
    # The user's home PVC is kept by default (its files must outlive scale to zero): it needs Knative's
    # persistent-volume-claim and persistent-volume-write flags, which the README has the cluster enable.
    assert spec["volumes"] == [
        {"name": "scratch", "emptyDir": {}},
        {"name": "home", "persistentVolumeClaim": {"claimName": "claim-alice"}},
    ]
    assert len(spec["containers"]) == 1
    assert dropped_fields(POD) == [
        "spec.containers[0].lifecycle",
        "spec.containers[1]",
        "spec.initContainers",
        "spec.nodeSelector",
        "spec.restartPolicy",
        "spec.securityContext",
        "spec.tolerations",
    ]
    # On a cluster with default flags the PVC goes (and is reported); its mount goes with it.
    plain = build(features=[])["spec"]["template"]["spec"]
    assert plain["volumes"] == [{"name": "scratch", "emptyDir": {}}]
    assert [m["name"] for m in plain["containers"][0]["volumeMounts"]] == ["scratch"]
    assert "spec.volumes[home]" in dropped_fields(POD, [])


def test_feature_flags_let_pod_fields_in() -> None:
    flags = ["securitycontext", "nodeselector", "tolerations", "persistent-volume-claim"]
    spec = build(features=flags)["spec"]["template"]["spec"]
    assert spec["securityContext"] == {"fsGroup": 100}
    assert spec["nodeSelector"] == {"pool": "users"}
    assert spec["tolerations"] == POD["spec"]["tolerations"]
    assert "initContainers" not in spec and "restartPolicy" not in spec
    assert "spec.securityContext" not in dropped_fields(POD, flags)
    assert pod_fields([]) < pod_fields(flags)
    with pytest.raises(ValueError, match="unknown Knative feature flags"):
        pod_fields(["podspec-securitycontext"])  # the flag's name, not its config-features key


def test_refuses_what_cannot_work() -> None:
    with pytest.raises(ValueError, match="reserved"):
        build(port=8012)
    with pytest.raises(ValueError, match="no container"):
        make_knative_service("x", "ns", {"spec": {"containers": []}}, gateway=GATEWAY, port=8888)


@pytest.mark.parametrize(
    ("status", "generation", "expected"),
    [
        ({}, 1, "pending"),
        ({"observedGeneration": 1, "conditions": [{"type": "Ready", "status": "Unknown"}]}, 1, "pending"),
        ({"observedGeneration": 1, "conditions": [{"type": "Ready", "status": "True"}]}, 1, "ready"),
        ({"observedGeneration": 1, "conditions": [{"type": "Ready", "status": "True"}]}, 2, "pending"),
        ({"observedGeneration": 2, "conditions": [{"type": "Ready", "status": "False"}]}, 2, "failed"),
    ],
)
def test_readiness(status: dict[str, Any], generation: int, expected: str) -> None:
    assert readiness({"metadata": {"generation": generation}, "status": status}) == expected


def test_service_url() -> None:
    svc = {"status": {"url": "https://a.example.com", "address": {"url": "http://a.ns.svc.cluster.local"}}}
    assert service_url(svc) == "http://a.ns.svc.cluster.local"
    assert service_url(svc, "url") == "https://a.example.com"
    assert service_url({"status": {}}) is None
