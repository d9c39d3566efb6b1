"""The Kubernetes manifests of deploy/k8s cannot rot.

Each overlay is rendered with ``kubectl kustomize`` (or a standalone ``kustomize build``), and
the output is checked three ways:

* against the Kubernetes OpenAPI schemas, strictly (unknown fields fail), with the
  ``kubernetes-validate`` package; KEDA ScaledObjects, which those schemas do not know, against
  deploy/k8s/keda-scaledobject.schema.json (the KEDA fields we use, closed to typos);
* against the rules of the deployment: probes, requests and limits, non-root, read-only root
  with the writable paths mounted, no secret inline, every secret-looking variable from a
  secretKeyRef, long enough grace periods for Celery's warm shutdown;
* against compose.yaml and the Dockerfile: the same commands, images named after the build targets.

Tools that are missing make the tests that need them skip, saying which.
"""

from __future__ import annotations

import functools
import json
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.unit.test_grafana_dashboard import exported_series, promql_metric_names

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "deploy" / "k8s"
OVERLAYS = ("cpu", "gpu")
KUBERNETES_VERSION = "1.30"  # the oldest Kubernetes the manifests are meant for
STAGES = ("preprocess", "inference", "postprocess")
# Deployment -> the compose.yaml service it runs.
COMPOSE_SERVICE = {
    "gateway": "gateway",
    "preprocess": "preprocess_worker",
    "inference": "inference_worker",
    "postprocess": "postprocess_worker",
    "registry": "registry_worker",
    "monitor": "monitor_worker",
    "monitor-beat": "monitor_beat",
    "training": "training_worker",
    "flower": "flower",
    "mlflow": "mlflow",
}
SECRET_NAME = "digitflow-secrets"
SECRET_KEYS = {"redis-password", "postgres-password", "flower-basic-auth", "admin-token", "api-keys"}
SECRET_LOOKING = re.compile(r"PASSWORD|TOKEN|SECRET|API_KEYS?$|BASIC_AUTH|_KEY$")
# Metrics the ScaledObjects may query before the code exports them: none now (the gateway exports
# digitflow_queue_work{queue} = Redis list length + messages held unacknowledged, gateway/health.py).
PENDING_METRICS: set[str] = set()


# --------------------------------------------------------------------------- rendering


def _kustomize_command() -> list[str]:
    kustomize = shutil.which("kustomize")
    if kustomize is not None:
        return [kustomize, "build"]
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("neither kubectl nor kustomize is installed (kubectl >= 1.27 embeds kustomize v5)")
    result = subprocess.run([kubectl, "version", "--client", "-o", "json"], capture_output=True, text=True, timeout=60)
    version = json.loads(result.stdout or "{}").get("kustomizeVersion", "")
    major = re.match(r"v(\d+)", version)
    if major is None or int(major.group(1)) < 5:
        pytest.skip(f"kubectl embeds kustomize {version or '< v4'}; the manifests need kustomize v5 (kubectl >= 1.27)")
    return [kubectl, "kustomize"]


@functools.cache
def _render(overlay: str) -> tuple[dict[str, Any], ...]:
    command = _kustomize_command()
    result = subprocess.run([*command, str(K8S / "overlays" / overlay)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    return tuple(doc for doc in yaml.safe_load_all(result.stdout) if doc)


@pytest.fixture(params=OVERLAYS)
def overlay(request: pytest.FixtureRequest) -> str:
    name: str = request.param
    return name


@pytest.fixture
def docs(overlay: str) -> tuple[dict[str, Any], ...]:
    return _render(overlay)


def of_kind(docs: tuple[dict[str, Any], ...], *kinds: str) -> dict[str, dict[str, Any]]:
    return {d["metadata"]["name"]: d for d in docs if d["kind"] in kinds}


def workloads(docs: tuple[dict[str, Any], ...]) -> dict[str, dict[str, Any]]:
    return of_kind(docs, "Deployment", "StatefulSet")


def containers(workload: dict[str, Any]) -> Iterator[dict[str, Any]]:
    yield from workload["spec"]["template"]["spec"]["containers"]


def digitflow_image(container: dict[str, Any]) -> bool:
    return str(container["image"]).startswith("digitflow/")


# --------------------------------------------------------------------------- schemas


def test_every_manifest_is_valid_kubernetes(docs: tuple[dict[str, Any], ...]) -> None:
    kubernetes_validate = pytest.importorskip(
        "kubernetes_validate", reason="kubernetes-validate is not installed (pip install kubernetes-validate)"
    )
    checked = 0
    for doc in docs:
        if doc["apiVersion"].startswith("keda.sh/"):
            continue
        try:
            kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)
        except kubernetes_validate.ValidationError as exc:
            pytest.fail(f"{doc['kind']}/{doc['metadata']['name']}: {exc.message} at {list(exc.path)}")
        checked += 1
    assert checked >= 20


def test_scaled_objects_follow_the_keda_schema(docs: tuple[dict[str, Any], ...]) -> None:
    jsonschema = pytest.importorskip(
        "jsonschema", reason="jsonschema is not installed (comes with kubernetes-validate)"
    )
    schema = json.loads((K8S / "keda-scaledobject.schema.json").read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    validator = jsonschema.Draft202012Validator(schema)
    scaled = of_kind(docs, "ScaledObject")
    assert set(scaled) == set(STAGES)
    for name, so in scaled.items():
        errors = sorted(validator.iter_errors(so), key=lambda e: list(e.path))
        assert not errors, f"ScaledObject/{name}: " + "; ".join(f"{list(e.path)}: {e.message}" for e in errors)


def test_the_keda_schema_rejects_what_keda_would_misread() -> None:
    jsonschema = pytest.importorskip(
        "jsonschema", reason="jsonschema is not installed (comes with kubernetes-validate)"
    )
    validator = jsonschema.Draft202012Validator(json.loads((K8S / "keda-scaledobject.schema.json").read_text()))
    good = yaml.safe_load((K8S / "components" / "keda" / "scaledobjects.yaml").read_text().split("---")[1])
    assert validator.is_valid(good)
    numeric = json.loads(json.dumps(good))
    numeric["spec"]["triggers"][0]["metadata"]["threshold"] = 2  # KEDA wants strings
    typo = json.loads(json.dumps(good))
    typo["spec"]["maxReplicas"] = 3
    assert not validator.is_valid(numeric) and not validator.is_valid(typo)


# --------------------------------------------------------------------------- scaling


def test_each_stage_scales_on_its_queues_waiting_and_in_flight_work(docs: tuple[dict[str, Any], ...]) -> None:
    deployments = of_kind(docs, "Deployment")
    known = exported_series() | PENDING_METRICS
    for stage, so in of_kind(docs, "ScaledObject").items():
        target = so["spec"]["scaleTargetRef"]
        assert target["name"] == stage and target.get("kind", "Deployment") == "Deployment"
        assert stage in deployments
        assert "replicas" not in deployments[stage]["spec"], f"{stage}: replicas belongs to the HPA KEDA runs"
        assert so["spec"]["minReplicaCount"] >= 1, "the gateway is ready only while every stage has a worker"
        assert so["spec"]["fallback"]["replicas"] >= 1
        (trigger,) = so["spec"]["triggers"]
        meta = trigger["metadata"]
        assert trigger["type"] == "prometheus" and meta["ignoreNullValues"] == "false"
        assert f'queue="{stage}"' in meta["query"]
        names = promql_metric_names(meta["query"])
        # Not digitflow_queue_depth: the list length misses the messages workers hold unacked.
        assert names == {"digitflow_queue_work"}, names
        assert names <= known


# --------------------------------------------------------------------------- hardening


def test_every_workload_has_probes_resources_and_runs_as_non_root(docs: tuple[dict[str, Any], ...]) -> None:
    loads = workloads(docs)
    assert set(COMPOSE_SERVICE) <= set(loads) and {"redis", "postgres"} <= set(loads)
    for name, workload in loads.items():
        pod = workload["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True, name
        assert pod.get("automountServiceAccountToken") is False, name
        for c in containers(workload):
            where = f"{name}/{c['name']}"
            assert c.get("livenessProbe") and c.get("readinessProbe"), f"{where} lacks probes"
            for kind in ("requests", "limits"):
                assert {"cpu", "memory"} <= set(c["resources"].get(kind, {})), f"{where} lacks {kind}"
            sc = c["securityContext"]
            assert sc["allowPrivilegeEscalation"] is False, where
            assert sc["capabilities"]["drop"] == ["ALL"], where
            assert sc["readOnlyRootFilesystem"] is True, where
            mounts = {m["mountPath"]: m["name"] for m in c.get("volumeMounts", [])}
            assert "/tmp" in mounts, f"{where}: a read-only root needs a writable /tmp"
            if digitflow_image(c):
                assert pod["securityContext"]["runAsUser"] == 10001, where  # the image's digitflow/mlflow user
                if name != "mlflow":
                    volumes = {v["name"]: v for v in pod["volumes"]}
                    for path in ("/tmp/digitflow", "/tmp/digitflow/prom"):  # VAR_DIR, PROMETHEUS_MULTIPROC_DIR
                        assert path in mounts and "emptyDir" in volumes[mounts[path]], f"{where}: {path}"


def test_http_probes_hit_the_endpoints_the_services_serve(docs: tuple[dict[str, Any], ...]) -> None:
    for name, workload in of_kind(docs, "Deployment").items():
        (c,) = containers(workload)
        ports = {p["name"]: p["containerPort"] for p in c.get("ports", [])}
        probes = {kind: c[kind] for kind in ("startupProbe", "readinessProbe", "livenessProbe") if kind in c}
        for kind, probe in probes.items():
            if "httpGet" in probe:
                assert probe["httpGet"]["port"] in ports, f"{name} {kind}: no such port"
        if name == "gateway":
            assert ports == {"http": 8000}
            assert probes["readinessProbe"]["httpGet"]["path"] == "/readyz"
            assert probes["livenessProbe"]["httpGet"]["path"] == "/healthz"
        elif name in {"preprocess", "inference", "postprocess", "registry", "monitor", "training"}:
            assert ports == {"metrics": 9100}
            env = {e["name"]: e.get("value") for e in c["env"]}
            assert env["METRICS_PORT"] == "9100"
            for kind in ("readinessProbe", "livenessProbe"):
                assert probes[kind]["httpGet"] == {"path": "/metrics", "port": "metrics"}, f"{name} {kind}"
            annotations = workload["spec"]["template"]["metadata"]["annotations"]
            assert annotations["prometheus.io/port"] == "9100"


def test_workers_get_time_for_a_warm_shutdown(docs: tuple[dict[str, Any], ...]) -> None:
    """SIGTERM makes Celery finish the running batch; the kubelet's SIGKILL must not come first."""
    deployments = of_kind(docs, "Deployment")
    for name in (*STAGES, "registry", "monitor"):
        assert deployments[name]["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] >= 60, name
    assert deployments["training"]["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] >= 300
    for name in ("monitor-beat", "mlflow"):
        assert (
            deployments[name]["spec"]["replicas"] == 1 and deployments[name]["spec"]["strategy"]["type"] == "Recreate"
        )


# --------------------------------------------------------------------------- secrets


def test_no_secret_is_inlined(docs: tuple[dict[str, Any], ...]) -> None:
    for doc in docs:
        if doc["kind"] == "Secret":
            assert not doc.get("data") and not doc.get("stringData"), f"Secret/{doc['metadata']['name']} inlines data"
    for name, workload in workloads(docs).items():
        for c in containers(workload):
            from_secret: set[str] = set()
            for env in c.get("env", []):
                where = f"{name}/{c['name']} {env['name']}"
                ref = env.get("valueFrom", {}).get("secretKeyRef")
                if ref is not None:
                    assert ref["name"] == SECRET_NAME and ref["key"] in SECRET_KEYS, where
                    from_secret.add(env["name"])
                    continue
                assert not SECRET_LOOKING.search(env["name"]), f"{where} must come from a secretKeyRef"
                value = env.get("value", "")
                # Credentials inside a URL may only be references to secret variables defined before.
                credentials = re.search(r"://([^@/]*)@", value)
                if credentials:
                    user, _, password = credentials.group(1).rpartition(":")
                    assert user in ("", "digitflow"), f"{where}: unexpected user in {value!r}"
                    var = re.fullmatch(r"\$\((\w+)\)", password)
                    assert var and var.group(1) in from_secret, f"{where}: inline credentials in {value!r}"
            for source in c.get("envFrom", []):
                assert "secretRef" not in source or source["secretRef"]["name"] == SECRET_NAME


def test_every_variable_reference_is_defined_first(docs: tuple[dict[str, Any], ...]) -> None:
    """Kubernetes expands $(VAR) only from variables defined earlier; anything else stays literal."""
    for name, workload in workloads(docs).items():
        for c in containers(workload):
            defined: set[str] = set()
            for env in c.get("env", []):
                for ref in re.findall(r"\$\((\w+)\)", env.get("value", "")):
                    assert ref in defined, f"{name}: {env['name']} uses $({ref}) before it is defined"
                defined.add(env["name"])
            for word in [*c.get("command", []), *c.get("args", [])]:
                for ref in re.findall(r"\$\((\w+)\)", word):
                    assert ref in defined, f"{name}: the command uses $({ref}), which is not defined"


def test_docs_tell_the_operator_how_to_create_the_secret() -> None:
    text = (ROOT / "docs" / "kubernetes.md").read_text()
    assert f"kubectl create secret generic {SECRET_NAME}" in text
    for key in SECRET_KEYS:
        assert key in text, f"docs/kubernetes.md does not mention the Secret key {key}"
    assert "kubectl apply -k deploy/k8s/overlays/cpu" in text


# --------------------------------------------------------------------------- compose parity


def dockerfile_targets() -> set[str]:
    return set(re.findall(r"^FROM .* AS (\w+)\s*$", (ROOT / "Dockerfile").read_text(), flags=re.MULTILINE))


def test_commands_and_images_match_compose_and_the_dockerfile(overlay: str, docs: tuple[dict[str, Any], ...]) -> None:
    compose = yaml.safe_load((ROOT / "compose.yaml").read_text())["services"]
    targets = dockerfile_targets()
    deployments = of_kind(docs, "Deployment")
    for name, service in COMPOSE_SERVICE.items():
        (c,) = containers(deployments[name])
        target = compose[service]["build"]["target"]
        assert target in targets, f"compose builds {service} from a target the Dockerfile lacks: {target}"
        tag = "cuda" if (overlay, name) == ("gpu", "inference") else "latest"
        assert c["image"] == f"digitflow/{target}:{tag}", name
        expected = list(compose[service]["command"])
        assert c["command"] == expected, f"{name} runs another command than compose's {service}"
    redis = workloads(docs)["redis"]
    (c,) = containers(redis)

    def normalise(arg: str) -> str:
        arg = re.sub(r"\$\{REDIS_PASSWORD[^}]*\}|\$\(REDIS_PASSWORD\)", "<password>", arg)
        return re.sub(r"\$\{REDIS_MAXMEMORY[^}]*\}|\$\(REDIS_MAXMEMORY\)", "<maxmemory>", arg)

    compose_args = [normalise(a) for a in compose["redis"]["command"]]
    assert [normalise(a) for a in c["args"] if a not in ("--dir", "/data")] == compose_args


def test_redis_persists_with_aof_on_a_claim(docs: tuple[dict[str, Any], ...]) -> None:
    redis = workloads(docs)["redis"]
    assert redis["kind"] == "StatefulSet"
    (c,) = containers(redis)
    args = c["args"]
    assert args[args.index("--appendonly") + 1] == "yes" and "--requirepass" in args
    (claim,) = redis["spec"]["volumeClaimTemplates"]
    assert {"name": claim["metadata"]["name"], "mountPath": "/data"} in c["volumeMounts"]
    postgres = workloads(docs)["postgres"]
    assert postgres["kind"] == "StatefulSet" and postgres["spec"]["volumeClaimTemplates"]
    assert of_kind(docs, "PersistentVolumeClaim")["mlflow-data"]


def test_services_select_pods_and_name_their_ports(docs: tuple[dict[str, Any], ...]) -> None:
    pods = {
        name: (
            w["spec"]["template"]["metadata"]["labels"],
            {p["name"] for c in containers(w) for p in c.get("ports", [])},
        )
        for name, w in workloads(docs).items()
    }
    services = of_kind(docs, "Service")
    assert {"gateway", "redis", "postgres", "mlflow"} <= set(services)
    for name, svc in services.items():
        selector = svc["spec"]["selector"]
        matches = [ports for labels, ports in pods.values() if selector.items() <= labels.items()]
        assert matches, f"Service/{name} selects no pod"
        for port in svc["spec"]["ports"]:
            assert port["targetPort"] in matches[0], f"Service/{name}: no container port {port['targetPort']}"
    for name, workload in workloads(docs).items():
        selector = workload["spec"]["selector"]["matchLabels"]
        assert selector.items() <= workload["spec"]["template"]["metadata"]["labels"].items(), name
        if workload["kind"] == "StatefulSet":
            assert workload["spec"]["serviceName"] in services


def test_only_the_gpu_overlay_asks_for_a_gpu(overlay: str, docs: tuple[dict[str, Any], ...]) -> None:
    deployments = of_kind(docs, "Deployment")
    for name, deployment in deployments.items():
        pod = deployment["spec"]["template"]["spec"]
        (c,) = containers(deployment)
        env = {e["name"]: e.get("value") for e in c.get("env", [])}
        gpu = (overlay, name) == ("gpu", "inference")
        for kind in ("requests", "limits"):
            assert (c["resources"][kind].get("nvidia.com/gpu") == "1") == gpu, f"{name} {kind}"
        if name == "inference":
            assert env["DEVICE"] == ("cuda" if gpu else "cpu")
            assert "solo" in c["command"]  # one process owns the device (CUDA does not survive fork)
        if gpu:
            assert pod["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
            assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in pod["tolerations"]
        else:
            assert "nodeSelector" not in pod and "tolerations" not in pod, name


def test_everything_lands_in_one_namespace(docs: tuple[dict[str, Any], ...]) -> None:
    assert {d["metadata"].get("namespace") for d in docs} == {"digitflow"}
    assert all(d["metadata"]["labels"].get("app.kubernetes.io/part-of") == "digitflow" for d in docs)
