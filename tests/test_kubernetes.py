"""deploy/kubernetes: every overlay renders (kubectl kustomize), passes kubernetes-validate --strict for the
Kubernetes versions docs/deploy.md states, and says what the service needs (probe paths it answers, a grace
period that covers its drain, a CPU request equal to CIFAR10_THREADS)."""
from __future__ import annotations

import os
import shutil
import subprocess

import pytest
import yaml

from conftest import ROOT
from serving.config import TIMEOUT_S

KUBE = ROOT / "deploy" / "kubernetes"
TARGETS = {"default": KUBE, "cpu": KUBE / "overlays" / "cpu", "gpu": KUBE / "overlays" / "gpu"}
VERSIONS = ("1.30", "1.33", "1.37")  # docs/deploy.md: the Kubernetes releases the manifests are checked against
SETTLE_S = 1.0  # the drain's wait for an empty accept queue, with margin (serving/platform/shutdown.py: 0.1 s)


def render(path) -> list[dict]:
    if shutil.which("kubectl") is None:
        if os.environ.get("CI"):
            pytest.fail("kubectl is needed to render the kustomizations (.ci/run installs it)")
        pytest.skip("kubectl is not installed")
    out = subprocess.run(["kubectl", "kustomize", str(path)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return [d for d in yaml.safe_load_all(out.stdout) if d]


def by_kind(docs: list[dict]) -> dict[str, dict]:
    return {d["kind"]: d for d in docs}


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("version", VERSIONS)
def test_every_overlay_passes_strict_schema_validation(target, version):
    import kubernetes_validate

    docs = render(TARGETS[target])
    assert {d["kind"] for d in docs} == {"ConfigMap", "Service", "Deployment", "HorizontalPodAutoscaler",
                                         "PodDisruptionBudget"}
    for doc in docs:
        kubernetes_validate.validate(doc, version, strict=True)


def test_a_wrong_value_fails_validation_with_the_validators_sentence():
    import kubernetes_validate

    deployment = by_kind(render(TARGETS["cpu"]))["Deployment"]
    deployment["spec"]["replicas"] = "two"
    with pytest.raises(kubernetes_validate.ValidationError, match="'two' is not of type 'integer'"):
        kubernetes_validate.validate(deployment, VERSIONS[-1], strict=True)
    deployment["spec"]["replicas"] = 2
    deployment["spec"]["template"]["spec"]["containers"][0]["livenessprobe"] = {}  # a misspelt field
    with pytest.raises(kubernetes_validate.ValidationError, match="livenessprobe"):
        kubernetes_validate.validate(deployment, VERSIONS[-1], strict=True)


@pytest.mark.parametrize("target", TARGETS)
def test_the_pod_fits_the_service(target):
    from serving.openapi import ENDPOINTS

    kinds = by_kind(render(TARGETS[target]))
    pod = kinds["Deployment"]["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    settings = kinds["ConfigMap"]["data"]
    # Probes on paths the service documents (and answers: tests/test_serving.py), on its port.
    answered = {ep.path for ep in ENDPOINTS}
    port = container["ports"][0]
    assert port["containerPort"] == 3000
    for probe, path in (("startupProbe", "/readyz"), ("readinessProbe", "/readyz"), ("livenessProbe", "/livez")):
        assert container[probe]["httpGet"]["path"] == path and path in answered
        assert container[probe]["httpGet"]["port"] in (port["name"], 3000)
    # The grace period covers preStop, the service's own drain and its longest request.
    pre_stop = float(container["lifecycle"]["preStop"]["exec"]["command"][-1])
    drain = float(settings["CIFAR10_SHUTDOWN_DELAY"]) + SETTLE_S + TIMEOUT_S
    assert pod["terminationGracePeriodSeconds"] >= pre_stop + drain
    # torch and ONNX Runtime size their pools from CIFAR10_THREADS: it is the CPU the pod asks for.
    assert float(container["resources"]["requests"]["cpu"]) == float(settings["CIFAR10_THREADS"])
    # Non-root, read-only root filesystem, with /tmp the one writable path.
    assert pod["securityContext"]["runAsNonRoot"] and container["securityContext"]["readOnlyRootFilesystem"]
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    assert "emptyDir" in next(v for v in pod["volumes"] if v["name"] == mounts["/tmp"])
    env = {e["name"]: e.get("value") for e in container.get("env", [])}
    assert env["BENTOML_HOME"].startswith("/tmp/")  # BentoML creates folders in its home at start
    # Rolling updates and node drains keep capacity; the autoscaler and the budget point at this Deployment.
    # (on GPUs one pod at a time: surging would need a spare GPU)
    rolling = kinds["Deployment"]["spec"]["strategy"]["rollingUpdate"]
    surge = {"maxSurge": 0, "maxUnavailable": 1} if target == "gpu" else {"maxSurge": 1, "maxUnavailable": 0}
    assert rolling == surge
    assert "replicas" not in kinds["Deployment"]["spec"]  # the autoscaler owns the count
    assert kinds["HorizontalPodAutoscaler"]["spec"]["scaleTargetRef"]["name"] == kinds["Deployment"]["metadata"]["name"]
    selector = kinds["Deployment"]["spec"]["selector"]["matchLabels"]
    assert kinds["PodDisruptionBudget"]["spec"]["selector"]["matchLabels"] == selector
    assert kinds["Service"]["spec"]["selector"] == selector
    gpu = container["resources"]["limits"].get("nvidia.com/gpu")
    assert (gpu == 1 and settings["CIFAR10_DEVICE"] == "cuda") if target == "gpu" else gpu is None


def with_component(tmp_path, name: str) -> dict:
    """The CPU overlay's Deployment with components/NAME added, validated."""
    import kubernetes_validate

    overlay = tmp_path / name
    overlay.mkdir()
    (overlay / "kustomization.yaml").write_text(yaml.safe_dump({
        "apiVersion": "kustomize.config.k8s.io/v1beta1", "kind": "Kustomization",
        "resources": [str(os.path.relpath(TARGETS["cpu"], overlay))],
        "components": [str(os.path.relpath(KUBE / "components" / name, overlay))]}))
    deployment = by_kind(render(overlay))["Deployment"]
    for version in VERSIONS:
        kubernetes_validate.validate(deployment, version, strict=True)
    return deployment


def test_the_api_keys_component_mounts_the_secret_the_service_reads(tmp_path):
    deployment = with_component(tmp_path, "api-keys")
    pod = deployment["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    keys_file = next(e["value"] for e in container["env"] if e["name"] == "CIFAR10_API_KEYS")
    mount = next(m for m in container["volumeMounts"] if keys_file.startswith(m["mountPath"] + "/"))
    volume = next(v for v in pod["volumes"] if v["name"] == mount["name"])
    assert volume["secret"]["secretName"] == "cifar10-api-keys" and mount["readOnly"]
    assert "BENTOML_HOME" in {e["name"] for e in container["env"]}  # the component adds to the env, keeps the rest


def test_the_drain_filter_component_adds_only_net_admin(tmp_path):
    # The base adds no capability (Pod Security "restricted" admits it); the component adds the one the service's
    # socket filter needs on kernels like the CI VM's (docs/deploy.md), and keeps every other one dropped.
    (plain,) = by_kind(render(TARGETS["cpu"]))["Deployment"]["spec"]["template"]["spec"]["containers"]
    assert plain["securityContext"]["capabilities"] == {"drop": ["ALL"]}
    (container,) = with_component(tmp_path, "drain-filter")["spec"]["template"]["spec"]["containers"]
    assert container["securityContext"]["capabilities"] == {"drop": ["ALL"], "add": ["NET_ADMIN"]}


def test_the_multi_node_training_job_is_valid_and_meets_at_pod_zero():
    import kubernetes_validate

    docs = [d for d in yaml.safe_load_all((KUBE / "training" / "job.yaml").read_text()) if d]
    for doc in docs:
        for version in VERSIONS:
            kubernetes_validate.validate(doc, version, strict=True)
    service, job = by_kind(docs)["Service"], by_kind(docs)["Job"]
    spec = job["spec"]
    assert spec["completionMode"] == "Indexed" and spec["completions"] == spec["parallelism"] == 2
    pod = spec["template"]["spec"]
    assert service["spec"]["clusterIP"] == "None" and pod["subdomain"] == service["metadata"]["name"]
    command = pod["containers"][0]["command"]
    flags = dict(arg.split("=", 1) for arg in command if arg.startswith("--") and "=" in arg)
    # The rendezvous endpoint is pod 0's DNS name under the headless Service, on the port it exposes.
    host, port = flags["--rdzv-endpoint"].split(":")
    assert host == f"{job['metadata']['name']}-0.{service['metadata']['name']}"
    assert int(port) == service["spec"]["ports"][0]["port"]
    assert flags["--nnodes"] == str(spec["completions"]) and flags["--rdzv-backend"] == "c10d"
    assert command[command.index("-m") + 1] == "training"
