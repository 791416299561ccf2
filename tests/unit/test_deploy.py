"""The container image, the Kubernetes manifests and the CI workflow, checked offline.

Every kustomization under k8s/ (the base and each overlay) is rendered with
``kubectl kustomize`` and every object validated, strictly, against the
Kubernetes OpenAPI schemas that kubernetes-validate ships, for the oldest and
the newest Kubernetes versions we support. Then the properties the deployment
relies on are asserted on the rendered objects (what ``kubectl apply -k``
would send), the environment each container will see is parsed by the real
``Settings``, and the Dockerfile, .dockerignore and workflow are checked.
The tools (kubectl, kubernetes-validate, yamllint, hadolint) come from the dev
extra; none needs a cluster, a Docker engine or the network.
"""

from __future__ import annotations

import functools
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml
from pydantic import ValidationError

from highpeaks_ml.config import ENV_PREFIX, AuthMode, Device, Settings
from tests.conftest import ROOT

K8S = ROOT / "k8s"
NAMESPACE = "highpeaks-ml"
IMAGE = "highpeaks-ml-platform:latest"
UID = 10001
# Oldest Kubernetes we support (native gRPC probes are GA since 1.27; the PDB's
# unhealthyPodEvictionPolicy is on by default since 1.27) and the newest
# kubernetes-validate knows.
K8S_VERSIONS = ["1.30.0", kubernetes_validate.utils.latest_version()]
# Secrets the operator creates (documented in docs/deploy.md): referenced, never rendered.
OPERATOR_SECRETS = {"highpeaks-ml-jwt", "highpeaks-ml-tls", "highpeaks-ml-s3"}
# Secrets KubeRay creates for a RayCluster with authOptions (named after it, key auth_token).
KUBERAY_SECRETS = {"highpeaks-ml-ray"}
# Custom resources, validated against their operator's published CRD schema (converted
# to JSON Schema by scripts/kuberay_schema.py) instead of the Kubernetes API schemas.
CRD_SCHEMAS = {("ray.io/v1", "RayCluster"): K8S / "schemas" / "raycluster-ray.io-v1.json"}
JWT_SECRET_EXAMPLE = K8S / "examples" / "jwt-secret.yaml"


# --- helpers ------------------------------------------------------------------


def _tool(name: str) -> str:
    """A dev-extra tool from this interpreter's venv (or PATH)."""
    here = Path(sys.executable).parent / name
    found = str(here) if here.exists() else shutil.which(name)
    if not found:
        pytest.fail(f"{name} not found: install the dev extra (make venv)")
    return found


def _kustomizations() -> list[str]:
    dirs = [p.parent for p in K8S.rglob("kustomization.yaml")]
    # Components are not buildable on their own; the overlays that use them are.
    roots = [d for d in dirs if "kind: Component" not in (d / "kustomization.yaml").read_text()]
    return sorted(str(d.relative_to(K8S)) for d in roots)


KUSTOMIZATIONS = _kustomizations()
OVERLAYS = [k for k in KUSTOMIZATIONS if k != "base"]


@functools.cache
def _render(name: str) -> tuple[dict[str, Any], ...]:
    out = subprocess.run(
        [_tool("kubectl"), "kustomize", str(K8S / name)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert out.returncode == 0, f"kubectl kustomize k8s/{name} failed:\n{out.stderr}"
    return tuple(d for d in yaml.safe_load_all(out.stdout) if d)


def _objects(name: str, kind: str) -> list[dict[str, Any]]:
    return [o for o in _render(name) if o["kind"] == kind]


def _one(name: str, kind: str, obj_name: str) -> dict[str, Any]:
    found = [o for o in _objects(name, kind) if o["metadata"]["name"] == obj_name]
    assert len(found) == 1, f"{name}: expected one {kind} {obj_name}, found {len(found)}"
    return found[0]


def _deployments(name: str) -> list[dict[str, Any]]:
    deps = _objects(name, "Deployment")
    assert deps, f"{name} renders no Deployment"
    return deps


def _container(dep: dict[str, Any]) -> dict[str, Any]:
    containers = dep["spec"]["template"]["spec"]["containers"]
    assert [c["name"] for c in containers] == ["server"], dep["metadata"]["name"]
    return containers[0]


def _port(container: dict[str, Any], port_name: str) -> int:
    ports = {p["name"]: p["containerPort"] for p in container.get("ports", [])}
    assert port_name in ports, f"no container port named {port_name!r}: {ports}"
    return ports[port_name]


def _dockerfile_env() -> dict[str, str]:
    """HIGHPEAKS_ML_* set by the runtime stage's ENV instructions."""
    env: dict[str, str] = {}
    for instr, args in _stages()[-1]:
        if instr == "ENV":
            for token in shlex.split(args):
                key, _, value = token.partition("=")
                if key.startswith(ENV_PREFIX):
                    env[key] = value
    return env


def _example_secret() -> dict[str, Any]:
    docs = [d for d in yaml.safe_load_all(JWT_SECRET_EXAMPLE.read_text()) if d]
    assert len(docs) == 1
    return docs[0]


def _pod_env(name: str, dep: dict[str, Any]) -> dict[str, str]:
    """The HIGHPEAKS_ML_* variables the container sees: image ENV, then envFrom, then env.

    Secret values come from the example Secret (k8s/examples/jwt-secret.yaml).
    """
    container = _container(dep)
    env = _dockerfile_env()
    configmaps = {o["metadata"]["name"]: o.get("data", {}) for o in _objects(name, "ConfigMap")}
    for source in container.get("envFrom", []):
        ref = source["configMapRef"]["name"]
        assert ref in configmaps, f"{name}: envFrom names ConfigMap {ref!r}, not rendered"
        env.update(configmaps[ref])
    secret = _example_secret()["stringData"]
    for item in container.get("env", []):
        if not item["name"].startswith(ENV_PREFIX):
            continue  # e.g. RAY_AUTH_TOKEN (overlays/ray): not a server setting
        if "value" in item:
            env[item["name"]] = item["value"]
        else:
            ref = item["valueFrom"]["secretKeyRef"]
            assert ref["name"] == "highpeaks-ml-jwt", item
            assert ref["key"] in secret, f"example Secret lacks key {ref['key']!r}"
            env[item["name"]] = secret[ref["key"]]
    return {k: v for k, v in env.items() if k.startswith(ENV_PREFIX)}


def _clear_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for key in list(os.environ):
        if key.startswith(ENV_PREFIX):
            monkeypatch.delenv(key)


def _settings(name: str, dep: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> Settings:
    """Parse the container's environment with the server's own Settings."""
    _clear_env(monkeypatch)
    for key, value in _pod_env(name, dep).items():
        monkeypatch.setenv(key, value)
    return Settings.load()


def _bytes(quantity: str | int) -> float:
    """A Kubernetes memory quantity (``4Gi``, ``512Mi``, ``1G``, plain bytes) in bytes."""
    text = str(quantity)
    for suffix, factor in (("Ki", 2**10), ("Mi", 2**20), ("Gi", 2**30), ("Ti", 2**40)):
        if text.endswith(suffix):
            return float(text[: -len(suffix)]) * factor
    for suffix, factor in (("k", 1e3), ("M", 1e6), ("G", 1e9), ("T", 1e12)):
        if text.endswith(suffix):
            return float(text[: -len(suffix)]) * factor
    return float(text)


def _cpu(quantity: str | int | float) -> float:
    text = str(quantity)
    return float(text[:-1]) / 1000 if text.endswith("m") else float(text)


# --- render and validate --------------------------------------------------------


def test_every_overlay_is_covered():
    assert "base" in KUSTOMIZATIONS
    assert {
        "overlays/gpu",
        "overlays/scaled",
        "overlays/tls",
        "overlays/ray",
        "overlays/s3",
    } <= set(OVERLAYS)


@functools.cache
def _crd_validator(api_version: str, kind: str) -> Any:
    """A strict validator for a custom resource: the CRD's schema, plus
    ``additionalProperties: false`` wherever it lists properties and keeps no unknown
    fields (what ``kubectl apply --validate=strict`` enforces; the API server would
    otherwise drop a misspelt field silently)."""
    import jsonschema

    def strict(node: Any) -> Any:
        if isinstance(node, dict):
            node = {k: strict(v) for k, v in node.items()}
            if (
                "properties" in node
                and "additionalProperties" not in node
                and not node.get("x-kubernetes-preserve-unknown-fields")
            ):
                node["additionalProperties"] = False
            return node
        if isinstance(node, list):
            return [strict(v) for v in node]
        return node

    schema = strict(json.loads(CRD_SCHEMAS[(api_version, kind)].read_text()))
    jsonschema.Draft7Validator.check_schema(schema)
    return jsonschema.Draft7Validator(schema)


@pytest.mark.parametrize("name", KUSTOMIZATIONS)
def test_renders_and_validates_strictly(name):
    objects = _render(name)
    assert objects
    for obj in objects:
        if (obj["apiVersion"], obj["kind"]) in CRD_SCHEMAS:
            errors = list(_crd_validator(obj["apiVersion"], obj["kind"]).iter_errors(obj))
            assert not errors, f"k8s/{name}: {obj['kind']}/{obj['metadata']['name']}: " + (
                "; ".join(f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in errors)
            )
            continue
        for version in K8S_VERSIONS:
            try:
                kubernetes_validate.validate(obj, version, strict=True)
            except kubernetes_validate.ValidationError as exc:
                pytest.fail(
                    f"k8s/{name}: {obj['kind']}/{obj['metadata']['name']} v{version}: {exc}"
                )


def test_example_secret_validates_and_holds_no_key():
    secret = _example_secret()
    for version in K8S_VERSIONS:
        kubernetes_validate.validate(secret, version, strict=True)
    assert secret["metadata"] == secret["metadata"] | {
        "name": "highpeaks-ml-jwt",
        "namespace": NAMESPACE,
    }
    data = secret["stringData"]
    assert set(data) == {"jwks.json", "issuer", "audience"}
    # A placeholder: no key material at all, and never a private key.
    assert json.loads(data["jwks.json"]) == {"keys": []}
    assert "PRIVATE" not in JWT_SECRET_EXAMPLE.read_text()


@pytest.mark.parametrize("name", KUSTOMIZATIONS)
def test_everything_is_in_the_namespace(name):
    kinds = {o["kind"] for o in _render(name)}
    assert {"Namespace", "ServiceAccount", "ConfigMap", "Deployment", "Service"} <= kinds
    assert {"PodDisruptionBudget", "NetworkPolicy"} <= kinds
    # Every overlay keeps its data on a claim, except the object-store one.
    assert ("PersistentVolumeClaim" in kinds) == (name != "overlays/s3")
    for obj in _render(name):
        if obj["kind"] == "Namespace":
            assert obj["metadata"]["name"] == NAMESPACE
        else:
            assert obj["metadata"].get("namespace") == NAMESPACE, obj["metadata"]["name"]


@pytest.mark.parametrize("name", KUSTOMIZATIONS)
def test_references_resolve(name):
    rendered = {(o["kind"], o["metadata"]["name"]) for o in _render(name)}
    for dep in _deployments(name):
        pod = dep["spec"]["template"]["spec"]
        assert ("ServiceAccount", pod["serviceAccountName"]) in rendered
        for vol in pod["volumes"]:
            if "persistentVolumeClaim" in vol:
                claim = vol["persistentVolumeClaim"]["claimName"]
                assert ("PersistentVolumeClaim", claim) in rendered
            if "secret" in vol:
                assert vol["secret"]["secretName"] in OPERATOR_SECRETS
        for source in _container(dep).get("envFrom", []):
            assert ("ConfigMap", source["configMapRef"]["name"]) in rendered
        for item in _container(dep).get("env", []):
            ref = item.get("valueFrom", {}).get("secretKeyRef")
            if ref:
                assert ref["name"] in OPERATOR_SECRETS | KUBERAY_SECRETS
                assert not ref.get("optional"), "a missing JWT setting must stop the pod"


# --- the workloads ----------------------------------------------------------------


@pytest.mark.parametrize("name", KUSTOMIZATIONS)
def test_pods_are_hardened(name):
    for dep in _deployments(name):
        labels = dep["spec"]["template"]["metadata"]["labels"]
        for key in ("name", "instance", "component", "part-of"):
            assert f"app.kubernetes.io/{key}" in labels
        assert dep["spec"]["selector"]["matchLabels"].items() <= labels.items()
        pod = dep["spec"]["template"]["spec"]
        assert pod["automountServiceAccountToken"] is False
        # Service links would inject HIGHPEAKS_ML_PORT=tcp://... for the Service
        # highpeaks-ml and break the server's settings.
        assert pod["enableServiceLinks"] is False
        psc = pod["securityContext"]
        assert psc["runAsNonRoot"] is True
        assert psc["runAsUser"] == UID and psc["runAsGroup"] == UID and psc["fsGroup"] == UID
        assert psc["seccompProfile"] == {"type": "RuntimeDefault"}
        c = _container(dep)
        assert c["image"] == IMAGE
        assert c["imagePullPolicy"] == "IfNotPresent"  # kind load docker-image + :latest
        sc = c["securityContext"]
        assert sc["runAsNonRoot"] is True and sc["runAsUser"] == UID
        assert sc["readOnlyRootFilesystem"] is True
        assert sc["allowPrivilegeEscalation"] is False
        assert sc.get("privileged", False) is False
        assert sc["capabilities"] == {"drop": ["ALL"]}
        assert sc["seccompProfile"] == {"type": "RuntimeDefault"}
        for kind in ("requests", "limits"):
            assert {"cpu", "memory"} <= set(c["resources"][kind]), (name, kind)
        # The only writable places: /tmp (emptyDir) and the data volume.
        mounts = {m["mountPath"]: m["name"] for m in c["volumeMounts"]}
        volumes = {v["name"]: v for v in pod["volumes"]}
        assert "emptyDir" in volumes[mounts["/tmp"]]
        assert all(m.get("readOnly") for m in c["volumeMounts"] if "secret" in volumes[m["name"]])


@pytest.mark.parametrize("name", KUSTOMIZATIONS)
def test_ports_probes_and_settings_agree(name, monkeypatch):
    for dep in _deployments(name):
        c = _container(dep)
        pod = dep["spec"]["template"]["spec"]
        s = _settings(name, dep, monkeypatch)
        grpc_port, metrics_port = _port(c, "grpc"), _port(c, "metrics")
        assert (grpc_port, metrics_port) == (50051, 9090)
        assert (s.port, s.metrics_port, s.host) == (grpc_port, metrics_port, "0.0.0.0")
        # Auth on, keys from the mounted Secret.
        assert s.auth_mode == AuthMode.JWT
        mounts = {m["name"]: m["mountPath"] for m in c["volumeMounts"]}
        volumes = {v["name"]: v for v in pod["volumes"]}
        jwt_dir = mounts[
            next(
                n
                for n, v in volumes.items()
                if v.get("secret", {}).get("secretName") == "highpeaks-ml-jwt"
            )
        ]
        key_files = [s.jwt_jwks_file, s.jwt_public_key_file, s.jwt_secret_file]
        assert [f for f in key_files if f], "no JWT key file set"
        for f in key_files:
            if f:
                assert str(f).startswith(jwt_dir + "/"), (
                    f"{f} is not in the Secret's mount {jwt_dir}"
                )
                assert Path(f).name in _example_secret()["stringData"]
        # The data directory is the claim's mount (with an s3:// store: a scratch emptyDir).
        data_kind = "emptyDir" if s.store else "persistentVolumeClaim"
        data_volume = next(n for n, v in volumes.items() if n == "data" and data_kind in v)
        assert str(s.home) == mounts[data_volume]
        # Native gRPC probes on the gRPC port, or on the plaintext health port under TLS.
        probe_port = s.health_port or s.port
        if s.health_port:
            assert s.tls_cert_file and _port(c, "health") == s.health_port
        for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
            assert set(c[probe]) & {"grpc", "httpGet", "tcpSocket", "exec"} == {"grpc"}, probe
            assert c[probe]["grpc"]["port"] == probe_port, probe
            assert c[probe]["grpc"].get("service", "") == "", probe
        # Liveness gives a draining server its whole grace period.
        live = c["livenessProbe"]
        assert live["periodSeconds"] * live["failureThreshold"] > s.grace_period_s
        assert pod["terminationGracePeriodSeconds"] > s.grace_period_s
        # A delay before GOAWAY while endpoint removal propagates, well inside the grace.
        assert 1 <= s.drain_delay_s <= s.grace_period_s / 2
        # Prometheus scrapes the metrics port.
        ann = dep["spec"]["template"]["metadata"]["annotations"]
        assert ann["prometheus.io/scrape"] == "true"
        assert int(ann["prometheus.io/port"]) == s.metrics_port
        # onnxruntime threads fit the CPU limit.
        assert 0 < s.intra_op_threads <= max(1, _cpu(c["resources"]["limits"]["cpu"]))
        # Loaded models are bounded well under the memory limit.
        assert 0 < s.session_cache_mb * 2**20 <= _bytes(c["resources"]["limits"]["memory"]) / 2


@pytest.mark.parametrize("name", KUSTOMIZATIONS)
def test_setting_values_are_accepted(name, monkeypatch):
    """Every HIGHPEAKS_ML_* value a container gets is a known setting and parses."""
    for dep in _deployments(name):
        env = _pod_env(name, dep)
        for key in env:
            # A misspelt name would be ignored silently by the settings loader.
            assert key.removeprefix(ENV_PREFIX).lower() in Settings.model_fields, key
        _clear_env(monkeypatch)
        for key, value in env.items():
            monkeypatch.setenv(key, value)
        Settings.load()  # raises ValidationError for a value the server refuses


@pytest.mark.parametrize("name", KUSTOMIZATIONS)
def test_single_writer_volumes_are_not_shared(name):
    claims = {o["metadata"]["name"]: o for o in _objects(name, "PersistentVolumeClaim")}
    for dep in _deployments(name):
        for vol in dep["spec"]["template"]["spec"]["volumes"]:
            claim = vol.get("persistentVolumeClaim", {}).get("claimName")
            if claim and claims[claim]["spec"]["accessModes"] == ["ReadWriteOnce"]:
                # A second pod could not attach it (or would train against it too).
                assert dep["spec"].get("replicas") == 1, dep["metadata"]["name"]
                assert dep["spec"]["strategy"]["type"] == "Recreate"


# --- service, policy, budget, namespace ------------------------------------------------


@pytest.mark.parametrize("name", KUSTOMIZATIONS)
def test_service_routes_grpc_to_the_servers(name):
    svc = _one(name, "Service", "highpeaks-ml")
    assert svc["spec"]["type"] == "ClusterIP"
    ports = {p["name"]: p for p in svc["spec"]["ports"]}
    assert ports["grpc"]["port"] == 50051
    for port in svc["spec"]["ports"]:
        assert port["targetPort"] == "grpc" and port["appProtocol"] == "grpc"
    assert {p["port"] for p in svc["spec"]["ports"]} == {50051, 80}
    # Each Service selects pods of exactly one Deployment.
    for svc in _objects(name, "Service"):
        selected = [
            d
            for d in _deployments(name)
            if svc["spec"]["selector"].items()
            <= d["spec"]["template"]["metadata"]["labels"].items()
        ]
        assert len(selected) == 1, svc["metadata"]["name"]


@pytest.mark.parametrize("name", KUSTOMIZATIONS)
def test_network_policy(name):
    policy = _one(name, "NetworkPolicy", "highpeaks-ml")
    spec = policy["spec"]
    for dep in _deployments(name):
        labels = dep["spec"]["template"]["metadata"]["labels"]
        assert spec["podSelector"]["matchLabels"].items() <= labels.items()
    assert spec["policyTypes"] == ["Ingress"]
    by_port = {rule["ports"][0]["port"]: rule["from"] for rule in spec["ingress"]}
    assert set(by_port) == {"grpc", "metrics"}
    assert {"namespaceSelector": {"matchLabels": {"highpeaks.io/ml-client": "true"}}} in by_port[
        "grpc"
    ]
    assert by_port["metrics"] == [
        {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}
    ]


@pytest.mark.parametrize("name", KUSTOMIZATIONS)
def test_disruption_budget_namespace_and_account(name):
    (pdb,) = _objects(name, "PodDisruptionBudget")
    server = _one(name, "Deployment", "highpeaks-ml")
    assert pdb["spec"]["selector"] == server["spec"]["selector"]
    assert pdb["spec"]["maxUnavailable"] == 1
    (ns,) = _objects(name, "Namespace")
    assert ns["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"
    (sa,) = _objects(name, "ServiceAccount")
    assert sa["automountServiceAccountToken"] is False


# --- overlays ---------------------------------------------------------------------


def test_base_runs_on_cpu_without_gpu(monkeypatch):
    dep = _one("base", "Deployment", "highpeaks-ml")
    assert _settings("base", dep, monkeypatch).device == Device.CPU
    assert "nvidia.com/gpu" not in json.dumps(dep)


def test_gpu_overlay_asks_for_a_gpu_and_cuda(monkeypatch):
    dep = _one("overlays/gpu", "Deployment", "highpeaks-ml")
    c = _container(dep)
    assert c["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert c["resources"]["requests"]["nvidia.com/gpu"] == 1
    pod = dep["spec"]["template"]["spec"]
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in pod[
        "tolerations"
    ]
    terms = pod["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
    assert terms["nodeSelectorTerms"][0]["matchExpressions"][0]["key"] == "nvidia.com/gpu.present"
    assert _settings("overlays/gpu", dep, monkeypatch).device == Device.CUDA


def test_tls_overlay_probes_the_plaintext_health_port(monkeypatch):
    dep = _one("overlays/tls", "Deployment", "highpeaks-ml")
    s = _settings("overlays/tls", dep, monkeypatch)
    assert s.tls_cert_file and s.tls_key_file and s.health_port == 8081
    mounts = {m["name"]: m["mountPath"] for m in _container(dep)["volumeMounts"]}
    assert str(s.tls_cert_file) == mounts["tls"] + "/tls.crt"
    assert str(s.tls_key_file) == mounts["tls"] + "/tls.key"
    # The NetworkPolicy does not open the health port: only the kubelet uses it.
    policy = _objects("overlays/tls", "NetworkPolicy")[0]
    assert "health" not in json.dumps(policy) and "8081" not in json.dumps(policy)


def test_scaled_overlay_shares_the_store_and_separates_training():
    name = "overlays/scaled"
    (pvc,) = _objects(name, "PersistentVolumeClaim")
    assert pvc["spec"]["accessModes"] == ["ReadWriteMany"]
    server = _one(name, "Deployment", "highpeaks-ml")
    trainer = _one(name, "Deployment", "highpeaks-ml-trainer")
    # The autoscaler owns the server's replica count; the trainer is exactly one.
    assert "replicas" not in server["spec"]
    assert server["spec"]["strategy"]["type"] == "RollingUpdate"
    assert trainer["spec"]["replicas"] == 1
    assert trainer["spec"]["strategy"]["type"] == "Recreate"
    (hpa,) = _objects(name, "HorizontalPodAutoscaler")
    assert hpa["apiVersion"] == "autoscaling/v2"
    assert hpa["spec"]["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": "highpeaks-ml",
    }
    assert (
        hpa["spec"]["minReplicas"] >= 2 and hpa["spec"]["maxReplicas"] > hpa["spec"]["minReplicas"]
    )
    assert [m["resource"]["name"] for m in hpa["spec"]["metrics"]] == ["cpu"]
    # Both mount the same claim.
    for dep in (server, trainer):
        claims = [
            v["persistentVolumeClaim"]["claimName"]
            for v in dep["spec"]["template"]["spec"]["volumes"]
            if "persistentVolumeClaim" in v
        ]
        assert claims == [pvc["metadata"]["name"]]
    # Training only on the trainer.
    assert _pod_env(name, server)["HIGHPEAKS_ML_TRAINING_WORKERS"] == "0"
    assert int(_pod_env(name, trainer)["HIGHPEAKS_ML_TRAINING_WORKERS"]) >= 1


def test_scaled_serving_replicas_recycle_connections(monkeypatch):
    """Clients must not stay pinned to the first replicas: connections age out
    (long enough that reconnecting is rare, with a grace for calls in flight)."""
    name = "overlays/scaled"
    s = _settings(name, _one(name, "Deployment", "highpeaks-ml"), monkeypatch)
    assert 60 <= s.max_connection_age_s <= 3600
    assert s.max_connection_age_grace_s >= s.grace_period_s
    _one(name, "Service", "highpeaks-ml-trainer")


def test_s3_overlay_needs_no_shared_volume(monkeypatch):
    name = "overlays/s3"
    assert _objects(name, "PersistentVolumeClaim") == []
    server = _one(name, "Deployment", "highpeaks-ml")
    trainer = _one(name, "Deployment", "highpeaks-ml-trainer")
    assert "replicas" not in server["spec"] and trainer["spec"]["replicas"] == 1
    for dep in (server, trainer):
        pod = dep["spec"]["template"]["spec"]
        assert not [v for v in pod["volumes"] if "persistentVolumeClaim" in v]
        s = _settings(name, dep, monkeypatch)
        assert s.store.startswith("s3://") and s.store_poll_s > 0
        # Credentials from the operator's Secret, as the standard AWS variables, not flags.
        c = _container(dep)
        refs = {
            e["name"]: e["valueFrom"]["secretKeyRef"]
            for e in c["env"]
            if e["name"].startswith("AWS_")
        }
        assert set(refs) == {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"}
        assert {r["name"] for r in refs.values()} == {"highpeaks-ml-s3"}
        assert "s3://" not in " ".join(c.get("args", []) + c.get("command", []))
        # The model cache fits its emptyDir, and the emptyDirs fit the ephemeral limit.
        sizes = {
            v["name"]: _bytes(v["emptyDir"]["sizeLimit"]) for v in pod["volumes"] if "emptyDir" in v
        }
        assert s.store_cache_mb * 2**20 < sizes["data"]
        assert sum(sizes.values()) <= _bytes(c["resources"]["limits"]["ephemeral-storage"])
    assert _pod_env(name, server)["HIGHPEAKS_ML_TRAINING_WORKERS"] == "0"
    assert int(_pod_env(name, trainer)["HIGHPEAKS_ML_TRAINING_WORKERS"]) >= 1


RAY = "overlays/ray"
SA_TOKEN_DIR = "/var/run/secrets/kubernetes.io/serviceaccount"


def _ray_cluster() -> dict[str, Any]:
    (cluster,) = _objects(RAY, "RayCluster")
    return cluster


def _ray_pod_templates() -> dict[str, dict[str, Any]]:
    spec = _ray_cluster()["spec"]
    pods = {"head": spec["headGroupSpec"]["template"]}
    for group in spec["workerGroupSpecs"]:
        pods[group["groupName"]] = group["template"]
    return pods


def _pinned(package: str) -> str:
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        if line.lower().startswith(f"{package}=="):
            return line.split("==", 1)[1]
    raise AssertionError(f"{package} is not pinned in constraints.txt")


def test_crd_validation_catches_mistakes():
    """The RayCluster check can fail: KubeRay's schema, strictly."""
    import copy

    cluster = _ray_cluster()
    validator = _crd_validator(cluster["apiVersion"], cluster["kind"])
    assert not list(validator.iter_errors(cluster))
    schema = json.loads(CRD_SCHEMAS[("ray.io/v1", "RayCluster")].read_text())
    assert "kuberay v1.7.0" in schema["$comment"]
    bad = copy.deepcopy(cluster)
    bad["spec"]["workerGroupSpecs"][0]["maxReplicas"] = "four"
    bad["spec"]["headGroupSpec"]["template"]["spec"]["containers"][0]["imagePullPolcy"] = "Never"
    bad["spec"]["authOptions"]["mode"] = "password"
    messages = " ".join(e.message for e in validator.iter_errors(bad))
    assert "'four' is not of type 'integer'" in messages
    assert "imagePullPolcy" in messages
    assert "'password' is not one of" in messages


def test_ray_cluster_is_hardened_and_autoscales():
    cluster = _ray_cluster()
    spec = cluster["spec"]
    assert cluster["metadata"]["namespace"] == NAMESPACE
    # The image's Ray (KubeRay picks its probes from rayVersion).
    assert spec["rayVersion"] == _pinned("ray")
    assert spec["authOptions"] == {"mode": "token"}
    assert spec["enableInTreeAutoscaling"] is True
    # The head runs no training task.
    assert spec["headGroupSpec"]["rayStartParams"]["num-cpus"] == "0"
    (group,) = spec["workerGroupSpecs"]
    assert group["minReplicas"] == 0 < group["maxReplicas"]
    for name, template in _ray_pod_templates().items():
        pod = template["spec"]
        assert pod["automountServiceAccountToken"] is False, name
        assert pod["enableServiceLinks"] is False, name
        psc = pod["securityContext"]
        assert psc["runAsNonRoot"] is True and psc["runAsUser"] == UID, name
        assert psc["seccompProfile"] == {"type": "RuntimeDefault"}, name
        volumes = {v["name"]: v for v in pod["volumes"]}
        (c,) = pod["containers"]
        assert c["image"] == IMAGE and c["imagePullPolicy"] == "IfNotPresent", name
        sc = c["securityContext"]
        assert sc["runAsNonRoot"] is True and sc["runAsUser"] == UID, name
        assert sc["readOnlyRootFilesystem"] is True, name
        assert sc["allowPrivilegeEscalation"] is False, name
        assert sc["capabilities"] == {"drop": ["ALL"]}, name
        for kind in ("requests", "limits"):
            assert {"cpu", "memory"} <= set(c["resources"][kind]), (name, kind)
        mounts = {m["mountPath"]: m["name"] for m in c["volumeMounts"]}
        # Writable: Ray's session files in /tmp, its object store in /dev/shm.
        assert "emptyDir" in volumes[mounts["/tmp"]], name
        assert volumes[mounts["/dev/shm"]]["emptyDir"]["medium"] == "Memory", name
        # No Kubernetes API token where jobs' code runs.
        assert SA_TOKEN_DIR not in mounts, name
    # Workers: requests equal limits (a job's CPUs are its own).
    worker = group["template"]["spec"]["containers"][0]["resources"]
    assert worker["requests"]["cpu"] == worker["limits"]["cpu"]
    assert worker["requests"]["memory"] == worker["limits"]["memory"]
    # Only the autoscaler gets an API token, projected into it alone.
    auto = spec["autoscalerOptions"]
    asc = auto["securityContext"]
    assert asc["runAsNonRoot"] is True and asc["readOnlyRootFilesystem"] is True
    assert asc["allowPrivilegeEscalation"] is False and asc["capabilities"] == {"drop": ["ALL"]}
    assert asc["seccompProfile"] == {"type": "RuntimeDefault"}
    assert {"cpu", "memory"} <= set(auto["resources"]["limits"])
    token_mount = next(m for m in auto["volumeMounts"] if m["mountPath"] == SA_TOKEN_DIR)
    head_volumes = {v["name"]: v for v in spec["headGroupSpec"]["template"]["spec"]["volumes"]}
    sources = head_volumes[token_mount["name"]]["projected"]["sources"]
    assert any("serviceAccountToken" in src for src in sources)


def test_ray_overlay_points_the_trainer_at_the_cluster(monkeypatch):
    cluster = _ray_cluster()
    name = cluster["metadata"]["name"]
    trainer = _one(RAY, "Deployment", "highpeaks-ml-trainer")
    s = _settings(RAY, trainer, monkeypatch)
    assert str(s.training_backend.value) == "ray"
    # KubeRay's head Service is <cluster>-head-svc; the Ray client server port is 10001.
    assert s.ray_address == f"ray://{name}-head-svc:10001"
    head = cluster["spec"]["headGroupSpec"]["template"]["spec"]["containers"][0]
    assert _port(head, "client") == 10001
    # Jobs at once: at most what the largest worker group offers, one CPU each.
    (group,) = cluster["spec"]["workerGroupSpecs"]
    cpus = _cpu(group["template"]["spec"]["containers"][0]["resources"]["limits"]["cpu"])
    assert 1 <= s.training_workers <= group["maxReplicas"] * cpus
    # The token KubeRay generates (authOptions), never a literal.
    env = {e["name"]: e for e in _container(trainer)["env"]}
    assert env["RAY_AUTH_MODE"]["value"] == "token"
    assert env["RAY_AUTH_TOKEN"]["valueFrom"]["secretKeyRef"] == {"name": name, "key": "auth_token"}
    # The serving replicas still neither train nor talk to Ray.
    server = _one(RAY, "Deployment", "highpeaks-ml")
    assert _pod_env(RAY, server)["HIGHPEAKS_ML_TRAINING_WORKERS"] == "0"
    assert "RAY_AUTH_TOKEN" not in json.dumps(server)


def test_ray_network_policy_admits_only_the_cluster_and_the_trainer():
    cluster = _ray_cluster()
    policy = _one(RAY, "NetworkPolicy", "highpeaks-ml-ray")
    selector = {"ray.io/cluster": cluster["metadata"]["name"]}
    assert policy["spec"]["podSelector"] == {"matchLabels": selector}
    assert policy["spec"]["policyTypes"] == ["Ingress"]
    trainer_labels = _one(RAY, "Deployment", "highpeaks-ml-trainer")["spec"]["template"][
        "metadata"
    ]["labels"]
    rules = policy["spec"]["ingress"]
    peers = [peer["podSelector"]["matchLabels"] for rule in rules for peer in rule["from"]]
    assert selector in peers
    assert len(peers) == 2  # nothing from other namespaces, nothing from the servers
    trainer_rule = next(r for r in rules if r["from"][0]["podSelector"]["matchLabels"] != selector)
    assert trainer_rule["from"][0]["podSelector"]["matchLabels"].items() <= trainer_labels.items()
    assert trainer_rule["ports"] == [{"port": 10001, "protocol": "TCP"}]
    # The servers' policy does not select Ray pods (it would close Ray's ports).
    base = _one(RAY, "NetworkPolicy", "highpeaks-ml")["spec"]["podSelector"]["matchLabels"]
    for template in _ray_pod_templates().values():
        assert not base.items() <= template["metadata"]["labels"].items()


# --- linters -------------------------------------------------------------------------


def test_yamllint_clean():
    paths = ["k8s", ".github", ".yamllint", ".hadolint.yaml"]
    out = subprocess.run(
        [_tool("yamllint"), "--strict", "--config-file", ".yamllint", *paths],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert out.returncode == 0, out.stdout + out.stderr


def test_hadolint_clean():
    out = subprocess.run(
        [_tool("hadolint"), "--config", ".hadolint.yaml", "Dockerfile"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert out.returncode == 0, out.stdout + out.stderr


# --- Dockerfile ----------------------------------------------------------------------


def _instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined, comments dropped."""
    text = (ROOT / "Dockerfile").read_text()
    lines = [ln for ln in text.splitlines() if not ln.lstrip().startswith("#")]
    joined = re.sub(r"\\\n", " ", "\n".join(lines))
    out = []
    for line in joined.splitlines():
        if line.strip():
            instr, _, args = line.strip().partition(" ")
            out.append((instr.upper(), args.strip()))
    return out


def _stages() -> list[list[tuple[str, str]]]:
    stages: list[list[tuple[str, str]]] = []
    for instr, args in _instructions():
        if instr == "FROM":
            stages.append([])
        if stages:
            stages[-1].append((instr, args))
    return stages


def test_dockerfile_is_multi_stage_and_lockfile_first():
    stages = _stages()
    assert len(stages) >= 2
    builder, runtime = stages[0], stages[-1]
    assert builder[0][1].endswith("AS builder")
    assert "slim" in (ROOT / "Dockerfile").read_text().split("ARG PYTHON_IMAGE=")[1].split()[0]
    assert "3.11" in (ROOT / "Dockerfile").read_text().split("ARG PYTHON_IMAGE=")[1].split()[0]
    copies = [(i, args) for i, (instr, args) in enumerate(builder) if instr == "COPY"]
    lock_copy = next(i for i, a in copies if "constraints.txt" in a and "pyproject.toml" in a)
    source_copy = next(i for i, a in copies if "highpeaks_ml" in a)
    dep_install = next(
        i
        for i, (instr, a) in enumerate(builder)
        if instr == "RUN" and "pip install" in a and "--constraint constraints.txt" in a
    )
    assert lock_copy < dep_install < source_copy
    # No pip cache in a layer.
    for instr, args in builder:
        if instr == "RUN" and "pip install" in args:
            assert args.count("pip install") == args.count("--no-cache-dir"), args
    assert ("ARG", "WITH_CUDA_LIBS=true") in builder
    assert any("[cuda,cudnn]" in a for i, a in builder if i == "RUN")
    # The runtime gets the venv, not the source or the build tools.
    assert ("COPY", "--from=builder /opt/venv /opt/venv") in runtime
    assert not any(i == "COPY" and "--from" not in a for i, a in runtime)


def test_dockerfile_runtime_contract():
    runtime = _stages()[-1]
    instrs = dict(runtime)  # last one of each kind
    user = instrs["USER"].split(":")[0]
    assert user.isdigit() and int(user) == UID
    assert json.loads(instrs["ENTRYPOINT"]) == ["highpeaks-ml", "serve"]
    assert instrs["STOPSIGNAL"] == "SIGTERM"
    assert set(instrs["EXPOSE"].split()) == {"50051", "9090"}
    env = _dockerfile_env()
    assert env["HIGHPEAKS_ML_HOST"] == "0.0.0.0"
    assert env["HIGHPEAKS_ML_AUTH_MODE"] == "jwt"
    assert env["HIGHPEAKS_ML_METRICS_PORT"] == "9090"
    assert env["HIGHPEAKS_ML_LOG_FORMAT"] == "json"
    assert json.loads(instrs["VOLUME"]) == [env["HIGHPEAKS_ML_HOME"]]
    # Every name is a real setting (a typo would be silently ignored).
    for key in env:
        assert key.removeprefix(ENV_PREFIX).lower() in Settings.model_fields, key
    # Kubernetes probes instead of a HEALTHCHECK, said in a comment.
    assert "HEALTHCHECK" not in instrs
    assert re.search(
        r"^# No HEALTHCHECK: Kubernetes probes", (ROOT / "Dockerfile").read_text(), re.M
    )
    # The user is created with the UID the manifests run as.
    assert any(i == "RUN" and f"--uid {UID}" in a for i, a in runtime)


def test_image_env_with_a_key_is_a_valid_configuration(monkeypatch):
    for key in list(os.environ):
        if key.startswith(ENV_PREFIX):
            monkeypatch.delenv(key)
    for key, value in _dockerfile_env().items():
        monkeypatch.setenv(key, value)
    # Auth is on by default: without a key the server refuses to start ...
    with pytest.raises(ValidationError, match="needs a key"):
        Settings.load()
    # ... and with one (as the CI smoke run and the Deployment give it) it is complete.
    monkeypatch.setenv("HIGHPEAKS_ML_JWT_PUBLIC_KEY_FILE", "/etc/highpeaks-ml/jwt/public-key.pem")
    s = Settings.load()
    assert (s.host, s.port, s.auth_mode) == ("0.0.0.0", 50051, AuthMode.JWT)


def _docker_excluded(path: str, patterns: list[str]) -> bool:
    """Docker's .dockerignore rule: the last matching pattern wins; a match on a parent counts."""
    parts = path.split("/")
    candidates = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    excluded = False
    for pattern in patterns:
        negate = pattern.startswith("!")
        pat = pattern.lstrip("!").strip("/")
        regex = re.escape(pat).replace(r"\*\*/", "(.*/)?").replace(r"\*\*", ".*")
        regex = regex.replace(r"\*", "[^/]*").replace(r"\?", "[^/]")
        if any(re.fullmatch(regex, c) for c in candidates):
            excluded = not negate
    return excluded


def test_dockerignore_keeps_the_context_small_and_clean():
    lines = (ROOT / ".dockerignore").read_text().splitlines()
    patterns = [ln.strip() for ln in lines if ln.strip() and not ln.startswith("#")]
    for path in [
        ".venv/bin/python",
        "var/models/iris/versions/1/model.onnx",
        ".git/HEAD",
        "tests/conftest.py",
        "k8s/base/deployment.yaml",
        "highpeaks_ml/__pycache__/config.cpython-311.pyc",
        "highpeaks_ml.egg-info/PKG-INFO",
        ".mypy_cache/x",
    ]:
        assert _docker_excluded(path, patterns), path
    # Everything the Dockerfile copies from the context is in it.
    sources = []
    for instr, args in _instructions():
        if instr == "COPY" and "--from" not in args:
            sources += args.split()[:-1]
    assert sources
    for src in sources:
        assert not _docker_excluded(src, patterns), src
        assert (ROOT / src).exists(), src
    for py in (ROOT / "highpeaks_ml").rglob("*.py"):
        assert not _docker_excluded(str(py.relative_to(ROOT)), patterns), py
    assert patterns[0] == "*"  # an allow-list: everything else stays out


# --- workflow ------------------------------------------------------------------------

WORKFLOW = ROOT / ".github" / "workflows" / "ci.yml"


def _workflow() -> dict[Any, Any]:
    data = yaml.safe_load(WORKFLOW.read_text())
    # PyYAML reads the key `on` as the boolean True (YAML 1.1).
    data["on"] = data.pop(True, data.get("on"))
    return data


def _steps(job: dict[str, Any]) -> list[dict[str, Any]]:
    return job["steps"]


def _runs(job: dict[str, Any]) -> str:
    return "\n".join(s.get("run", "") for s in _steps(job))


def test_workflow_structure():
    wf = _workflow()
    assert {"push", "pull_request"} <= set(wf["on"])
    assert wf["permissions"] == {"contents": "read"}
    jobs = wf["jobs"]
    assert {"test", "manifests", "audit", "image", "push"} <= set(jobs)
    for job in jobs.values():
        assert job["runs-on"] == "ubuntu-latest" and job["timeout-minutes"] > 0
        for step in _steps(job):
            if step.get("uses", "").startswith("actions/setup-python"):
                assert step["with"]["python-version"] == "3.11"
                assert step["with"]["cache"] == "pip"
    assert re.search(r"^make test$", _runs(jobs["test"]), re.M)
    assert "make proto-check" in _runs(jobs["test"])
    assert "make deploy-check" in _runs(jobs["manifests"])
    assert re.search(r"pip-audit --requirement constraints.txt", _runs(jobs["audit"]))
    # The image: buildx with a cache; loaded and smoke-run, never pushed here.
    image = jobs["image"]
    build = next(s for s in _steps(image) if s.get("uses", "").startswith("docker/build-push"))
    assert build["with"]["push"] is False and "type=gha" in build["with"]["cache-to"]
    assert any(s.get("uses", "").startswith("docker/setup-buildx") for s in _steps(image))
    assert "docker exec smoke highpeaks-ml health" in _runs(image)
    # Pushing: main only, opt-in through a variable, after everything passed,
    # to the registry the secrets name.
    push = jobs["push"]
    assert set(push["needs"]) == {"test", "manifests", "audit", "image"}
    cond = push["if"]
    for part in (
        "github.event_name == 'push'",
        "github.ref == 'refs/heads/main'",
        "vars.PUSH_IMAGE == 'true'",
    ):
        assert part in cond
    login = next(s for s in _steps(push) if s.get("uses", "").startswith("docker/login-action"))
    assert login["with"] == {
        "registry": "${{ secrets.REGISTRY }}",
        "username": "${{ secrets.REGISTRY_USERNAME }}",
        "password": "${{ secrets.REGISTRY_PASSWORD }}",
    }
    pushed = next(s for s in _steps(push) if s.get("uses", "").startswith("docker/build-push"))
    assert pushed["with"]["push"] is True
    assert "${{ secrets.REGISTRY }}/" in pushed["with"]["tags"]
    # The same build as the image job, so the push reuses its cache.
    assert pushed["with"]["build-args"] == build["with"]["build-args"]


def test_workflow_matches_the_github_schema():
    pytest.importorskip("check_jsonschema", reason="check-jsonschema not installed (dev extra)")
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "check_jsonschema",
            "--builtin-schema",
            "vendor.github-workflows",
            str(WORKFLOW),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert out.returncode == 0, out.stdout + out.stderr


def test_makefile_has_the_targets_the_workflow_runs():
    makefile = (ROOT / "Makefile").read_text()
    for job in _workflow()["jobs"].values():
        for target in re.findall(r"\bmake ([a-z][\w-]*)", _runs(job)):
            assert re.search(rf"^{target}:", makefile, re.M), target


# --- docs ------------------------------------------------------------------------------


def test_deploy_doc_commands_match_the_files():
    doc = (ROOT / "docs" / "deploy.md").read_text()
    for path in set(re.findall(r"\b((?:k8s|scripts)/[\w./-]*[\w])", doc)):
        assert (ROOT / path).exists(), path
    for target in set(re.findall(r"kubectl apply -k (\S+)", doc)):
        assert (ROOT / target / "kustomization.yaml").exists(), target
    for target in set(re.findall(r"\bmake ([a-z][\w-]*)", doc)):
        assert re.search(rf"^{target}:", (ROOT / "Makefile").read_text(), re.M), target
    # The names the commands use are the rendered ones.
    assert f"kubectl port-forward svc/highpeaks-ml 50051:50051 -n {NAMESPACE}" in doc
    assert "kind load docker-image highpeaks-ml-platform:latest" in doc
    assert "docker build -t highpeaks-ml-platform:latest ." in doc
    for secret in OPERATOR_SECRETS:
        assert secret in doc
    for key in _example_secret()["stringData"]:
        assert key in doc


def test_dev_jwt_script_makes_keys_the_server_settings_accept(tmp_path, monkeypatch):
    import jwt

    sys.path.insert(0, str(ROOT / "scripts"))
    try:
        import dev_jwt
    finally:
        sys.path.pop(0)
    kid = dev_jwt.make_keys(tmp_path)
    assert (tmp_path / "private-key.pem").stat().st_mode & 0o077 == 0
    token = dev_jwt.make_token(
        tmp_path, scope="ml:predict ml:train", issuer="https://id.example/", audience="hp"
    )
    keys = jwt.PyJWKSet.from_dict(json.loads((tmp_path / "jwks.json").read_text()))
    assert jwt.get_unverified_header(token)["kid"] == kid
    claims = jwt.decode(
        token, keys[kid].key, algorithms=["ES256"], audience="hp", issuer="https://id.example/"
    )
    assert claims["scope"] == "ml:predict ml:train" and claims["exp"] > claims["iat"]
    with pytest.raises(jwt.InvalidAudienceError):
        jwt.decode(token, keys[kid].key, algorithms=["ES256"], audience="other")


def test_the_images_cuda_wheels_are_pinned_in_constraints():
    """Every package onnxruntime-gpu's cuda/cudnn extras name is pinned, so two
    builds of one commit ship the same CUDA libraries (scripts/pin_cuda_libs.py)."""
    import importlib.metadata

    from packaging.requirements import Requirement

    sys.path.insert(0, str(ROOT / "scripts"))
    try:
        import pin_cuda_libs
    finally:
        sys.path.pop(0)
    pinned = pin_cuda_libs.pins((ROOT / "constraints.txt").read_text().splitlines())
    try:
        requires = importlib.metadata.requires("onnxruntime-gpu") or []
    except importlib.metadata.PackageNotFoundError:
        pytest.skip("onnxruntime-gpu is not installed here")
    wanted = []
    for spec in requires:
        req = Requirement(spec)
        if req.marker and any(req.marker.evaluate({"extra": e}) for e in ("cuda", "cudnn")):
            wanted.append(req)
    assert len(wanted) >= 5
    for req in wanted:
        name = pin_cuda_libs.normalise(req.name)
        assert name in pinned, f"{name} is not pinned in constraints.txt (make lock)"
        assert req.specifier.contains(pinned[name]), (name, pinned[name], str(req.specifier))
    assert "scripts/pin_cuda_libs.py" in (ROOT / "Makefile").read_text()


# --- examples -------------------------------------------------------------------

NIGHTLY_RETRAIN_EXAMPLE = K8S / "examples" / "nightly-retrain.yaml"


def test_nightly_retrain_example_is_valid_hardened_and_runs_the_cli():
    docs = [d for d in yaml.safe_load_all(NIGHTLY_RETRAIN_EXAMPLE.read_text()) if d]
    assert len(docs) == 1
    cron = docs[0]
    for version in K8S_VERSIONS:
        kubernetes_validate.validate(cron, version, strict=True)
    assert (cron["kind"], cron["metadata"]["namespace"]) == ("CronJob", NAMESPACE)
    assert cron["spec"]["concurrencyPolicy"] == "Forbid"
    job = cron["spec"]["jobTemplate"]["spec"]
    assert job["backoffLimit"] == 0  # a retry could train (and promote) twice
    pod = job["template"]["spec"]
    assert pod["automountServiceAccountToken"] is False and pod["enableServiceLinks"] is False
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == UID
    [c] = pod["containers"]
    assert c["image"] == IMAGE  # the server's own image: its CLI
    sc = c["securityContext"]
    assert sc["readOnlyRootFilesystem"] is True and sc["capabilities"] == {"drop": ["ALL"]}
    assert sc["allowPrivilegeEscalation"] is False
    # The pod is not one of the server's: no Service, PDB or policy selects it as a server.
    server_labels = _one("base", "Service", "highpeaks-ml")["spec"]["selector"]
    assert not server_labels.items() <= job["template"]["metadata"]["labels"].items()
    # The command line is one the real CLI accepts, and asks for what the example says.
    from highpeaks_ml.cli import build_parser
    from highpeaks_ml.cli.train import search_from_args

    assert c["command"] == ["highpeaks-ml"]
    args = build_parser().parse_args(c["args"])
    assert args.promote_if_better == "production" and args.wait
    search = search_from_args(args)
    assert search is not None and search["strategy"] == "random"
    assert set(search["space"]) == {"n_estimators", "max_depth", "bootstrap"}
    from highpeaks_ml.client import search_request

    assert search_request(search).max_trials == 16
    # It calls the Service (and port) the base renders.
    host, _, port = args.target.partition(":")
    service = _one("base", "Service", host)
    assert int(port) in {p["port"] for p in service["spec"]["ports"]}
    token = {e["name"]: e for e in c["env"]}["HIGHPEAKS_ML_TOKEN"]["valueFrom"]["secretKeyRef"]
    assert token["optional"] is True  # absent with auth off
