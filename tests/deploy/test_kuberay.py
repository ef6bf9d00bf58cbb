"""deploy/kuberay.yaml: the RayCluster and the gateways, checked field by field (no Kubernetes
here): pinned images, only the gateway's port public, Ray's ports inside the cluster, secrets by
reference, one shared cache at the path the gateway's settings use, token authentication on."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import pytest
import ray
import yaml

from service.http.app import core_config
from service.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
MANIFEST = ROOT / "deploy" / "kuberay.yaml"
RAY_PORTS = {6379, 8265, 10001}
SECRET_NAMES = re.compile(r"TOKEN|PASSWORD|SECRET|DATABASE_URL|KEY", re.I)


@pytest.fixture(scope="module")
def docs() -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(MANIFEST.read_text()) if doc]


def _one(docs: list[dict[str, Any]], kind: str, name: str | None = None) -> dict[str, Any]:
    found = [d for d in docs if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)]
    assert len(found) == 1, f"one {kind} {name or ''} expected, found {len(found)}"
    return found[0]


def _pod_specs(docs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Every pod template: the Ray head, each worker group, the gateways."""
    cluster = _one(docs, "RayCluster")["spec"]
    specs = {"head": cluster["headGroupSpec"]["template"]["spec"]}
    specs |= {f"workers/{g['groupName']}": g["template"]["spec"] for g in cluster["workerGroupSpecs"]}
    specs["gateway"] = _one(docs, "Deployment", "vdata-gateway")["spec"]["template"]["spec"]
    return specs


def _env(container: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {e["name"]: e for e in container.get("env", [])}


def _gateway(docs: list[dict[str, Any]]) -> dict[str, Any]:
    (container,) = _pod_specs(docs)["gateway"]["containers"]
    return container


def test_kinds_and_api_versions(docs: list[dict[str, Any]]) -> None:
    kinds = sorted((d["apiVersion"], d["kind"]) for d in docs)
    assert kinds == sorted([("v1", "PersistentVolumeClaim"), ("v1", "PersistentVolumeClaim"), ("ray.io/v1", "RayCluster"),
                            ("apps/v1", "Deployment"), ("v1", "Service"),
                            ("networking.k8s.io/v1", "NetworkPolicy"), ("networking.k8s.io/v1", "NetworkPolicy")])
    assert not [d for d in docs if d["kind"] == "Secret"], "secrets are created by kubectl, never written here"
    assert _one(docs, "Deployment")["spec"]["replicas"] >= 2  # several gateways


def test_every_image_is_pinned_to_the_tested_ray_version(docs: list[dict[str, Any]]) -> None:
    images = {c["image"] for spec in _pod_specs(docs).values() for c in spec["containers"]}
    assert images and all(image.rsplit(":", 1)[1] == f"{ray.__version__}-py311" for image in images), images
    assert _one(docs, "RayCluster")["spec"]["rayVersion"] == ray.__version__
    dockerfile = (ROOT / "deploy" / "Dockerfile").read_text()
    assert f"FROM rayproject/ray:{ray.__version__}-py311" in dockerfile
    assert f'"ray[default]=={ray.__version__}"' in dockerfile and '"vdata[server] @ file://' in dockerfile


def test_only_the_gateway_port_is_public_and_rays_ports_stay_inside(docs: list[dict[str, Any]]) -> None:
    services = [d for d in docs if d["kind"] == "Service"]
    exposed = [s for s in services if s["spec"].get("type") in ("LoadBalancer", "NodePort")]
    for service in exposed:
        ports = {p["port"] for p in service["spec"]["ports"]} | {p.get("nodePort") for p in service["spec"]["ports"]}
        assert not ports & RAY_PORTS, f"{service['metadata']['name']} exposes Ray's ports {ports & RAY_PORTS}"
    gateway = _one(docs, "Service", "vdata-gateway")["spec"]
    assert [(p["port"], p["targetPort"]) for p in gateway["ports"]] == [(8000, "http")]
    assert gateway["selector"] == _one(docs, "Deployment")["spec"]["selector"]["matchLabels"]
    assert [(p["containerPort"], p["name"]) for p in _gateway(docs)["ports"]] == [(8000, "http")]
    head = _one(docs, "RayCluster")["spec"]["headGroupSpec"]
    assert head["serviceType"] == "ClusterIP"
    assert head["rayStartParams"]["dashboard-host"] == "127.0.0.1" and head["rayStartParams"]["num-cpus"] == "0"
    # the pods that run Ray (gateways included: they are Ray nodes) answer only each other
    member = {"vdata.io/ray-member": "true"}
    policy = _one(docs, "NetworkPolicy", "vdata-ray-private")["spec"]
    assert policy["podSelector"]["matchLabels"] == member and policy["policyTypes"] == ["Ingress"]
    assert policy["ingress"] == [{"from": [{"podSelector": {"matchLabels": member}}]}]
    cluster = _one(docs, "RayCluster")["spec"]
    templates = [cluster["headGroupSpec"]["template"], *(g["template"] for g in cluster["workerGroupSpecs"]),
                 _one(docs, "Deployment")["spec"]["template"]]
    assert all(t["metadata"]["labels"].items() >= member.items() for t in templates)
    public = _one(docs, "NetworkPolicy", "vdata-gateway-http")["spec"]
    assert public["podSelector"]["matchLabels"] == gateway["selector"]
    assert public["ingress"] == [{"ports": [{"port": 8000, "protocol": "TCP"}]}]  # that port only, from anywhere


def test_secrets_are_referenced_never_inlined(docs: list[dict[str, Any]]) -> None:
    for name, spec in _pod_specs(docs).items():
        for container in spec["containers"]:
            for var, entry in _env(container).items():
                if SECRET_NAMES.search(var):
                    assert "value" not in entry and "secretKeyRef" in entry["valueFrom"], f"{name}: {var} inlined"
    gateway = _env(_gateway(docs))
    assert gateway["VDATA_DATABASE_URL"]["valueFrom"]["secretKeyRef"] == {"name": "vdata-postgres", "key": "database_url"}
    # no credential anywhere in the objects themselves (comments aside): no URL with a password, no hex token
    strings = list(_strings(docs))
    assert not [s for s in strings if re.search(r"://[^/\s]*:[^/\s]*@", s) or re.fullmatch(r"[0-9a-f]{32,}", s)]


def _strings(node: Any) -> Any:
    if isinstance(node, str):
        yield node
    elif isinstance(node, dict):
        for key, value in node.items():
            yield from _strings(key)
            yield from _strings(value)
    elif isinstance(node, list):
        for value in node:
            yield from _strings(value)


def test_token_authentication_is_on_everywhere_with_one_secret(docs: list[dict[str, Any]]) -> None:
    auth = _one(docs, "RayCluster")["spec"]["authOptions"]
    assert auth == {"mode": "token", "secretName": "vdata-ray-auth"}  # KubeRay sets it in every Ray container
    gateway = _env(_gateway(docs))
    assert gateway["RAY_AUTH_MODE"]["value"] == "token"
    assert gateway["RAY_AUTH_TOKEN"]["valueFrom"]["secretKeyRef"] == {"name": auth["secretName"], "key": "auth_token"}


def test_the_gateways_join_the_ray_cluster_and_listen_on_their_pod_address(docs: list[dict[str, Any]],
                                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    container = _gateway(docs)
    script = " ".join(container["args"])
    cluster = _one(docs, "RayCluster")["metadata"]["name"]
    assert f"ray start --address={cluster}-head-svc:6379" in script and "--num-cpus=0" in script
    assert script.rstrip().endswith("exec vdata serve") and "0.0.0.0" not in MANIFEST.read_text()
    settings = _settings(container, monkeypatch)
    assert settings.engine.address == "auto" and settings.port == 8000 and settings.host == "$(POD_IP)"
    assert settings.database_url == "postgresql://from-the-secret"
    probe = container["readinessProbe"]["httpGet"]
    assert probe == {"path": "/healthz", "port": "http"}


def test_one_cache_volume_at_the_gateways_cache_path_in_every_gateway_and_worker(
        docs: list[dict[str, Any]], monkeypatch: pytest.MonkeyPatch) -> None:
    config = core_config(_settings(_gateway(docs), monkeypatch))
    assert config.cache_dir is not None, "the gateways name their shared cache folder (VDATA_CACHE_DIR)"
    cache_dir = Path(config.cache_dir)
    roots = _settings(_gateway(docs), monkeypatch).roots
    specs = _pod_specs(docs)
    claim = _one(docs, "PersistentVolumeClaim", "vdata-cache")
    assert claim["spec"]["accessModes"] == ["ReadWriteMany"]
    for name, spec in specs.items():
        if name == "head":
            continue
        volumes = {v["name"]: v for v in spec["volumes"]}
        (container,) = spec["containers"]
        mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
        assert volumes[mounts[str(cache_dir)]]["persistentVolumeClaim"]["claimName"] == "vdata-cache", name
        for root in roots:  # the datasets at the same path where the gateway checks them and workers read them
            assert volumes[mounts[str(root)]]["persistentVolumeClaim"]["claimName"] == "vdata-datasets", name
        env = _env(container)  # generated kernels somewhere writable
        assert env["NUMBA_CACHE_DIR"]["value"] in mounts and env["VDATA_KERNEL_CACHE"]["value"] in mounts, name


def _settings(container: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> Settings:
    """The gateway's settings from its container's environment, read by the real Settings (a
    misspelt name or a bad value fails); secrets stand in as placeholders."""
    for name in [n for n in os.environ if n.startswith("VDATA_")]:
        monkeypatch.delenv(name)
    for name, entry in _env(container).items():
        if name.startswith("VDATA_"):
            value = entry.get("value")
            if value is None:
                key = entry["valueFrom"]["secretKeyRef"]["key"]
                value = {"database_url": "postgresql://from-the-secret"}[key]
            monkeypatch.setenv(name, value)
    return Settings()
