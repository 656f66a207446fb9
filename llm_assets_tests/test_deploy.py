"""deploy/: the Helm values validate against the official Dagster chart's own schema, the compose file and instance
config are valid, and both reference only things that exist: services, files, Secrets and the environment variables
this code reads."""

from __future__ import annotations

import copy
import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT7

from llm_assets.launch.from_env import K8S_ENV, LAUNCHER_ENV, launch_config_from_env
from llm_assets.launch.k8s import pod_spec
from llm_assets.recipes import load_recipe

PROJECT = Path(__file__).resolve().parent.parent
DEPLOY = PROJECT / "deploy"
CHART = Path(__file__).parent / "fixtures" / "dagster_helm"
VALUES = yaml.safe_load((DEPLOY / "helm" / "values.yaml").read_text())
COMPOSE = yaml.safe_load((DEPLOY / "docker-compose.yaml").read_text())
SOURCE = "\n".join(p.read_text() for p in (PROJECT / "llm_assets").rglob("*.py"))
THIRD_PARTY_ENV = re.compile(r"^(AWS_|DAGSTER_|HF_)")  # read by boto3, Dagster, huggingface_hub themselves


def helm_merge(defaults: Any, overrides: Any) -> Any:
    """Helm's coalescing of a chart's values with the user's: maps merge key by key, anything else (lists included)
    is replaced, and a null removes the chart's key."""
    if not (isinstance(defaults, dict) and isinstance(overrides, dict)):
        return copy.deepcopy(overrides)
    merged = copy.deepcopy(defaults)
    for key, value in overrides.items():
        if value is None:
            merged.pop(key, None)
        else:
            merged[key] = helm_merge(merged.get(key), value)
    return merged


def chart_validator(schema_file: str) -> jsonschema.protocols.Validator:
    """The chart's schema. Its references into the Kubernetes JSON schemas (a remote document) accept anything here:
    the chart's own types around them (an object, a list of objects, strings for labels) are still checked."""
    text = (CHART / schema_file).read_text()
    schema = json.loads(text)
    remote: dict[str, dict] = {}
    for uri, pointer in re.findall(r'"\$ref": "(https://[^"#]+)#([^"]*)"', text):
        node = remote.setdefault(uri, {})
        for part in pointer.strip("/").split("/"):
            node = node.setdefault(part, {})
    registry = Registry(retrieve=lambda uri: Resource.from_contents(remote[uri], default_specification=DRAFT7))
    return jsonschema.validators.validator_for(schema, default=jsonschema.Draft7Validator)(schema, registry=registry)


def rendered_values(values: dict) -> tuple[dict, dict]:
    """(chart values, user-deployments subchart values) as Helm validates them for ``helm install -f values``."""
    chart = helm_merge(yaml.safe_load((CHART / "values.yaml").read_text()), values)
    sub = helm_merge(yaml.safe_load((CHART / "user-deployments.values.yaml").read_text()), chart["dagster-user-deployments"])
    sub["global"] = helm_merge(sub.get("global", {}), chart["global"])
    return chart, sub


def schema_errors(values: dict) -> list[str]:
    chart, sub = rendered_values(values)
    errors = [*chart_validator("values.schema.json").iter_errors(chart),
              *chart_validator("user-deployments.values.schema.json").iter_errors(sub)]
    return [f"{'.'.join(map(str, e.absolute_path))}: {e.message}" for e in errors]


def test_helm_values_validate_against_the_charts_schema():
    assert schema_errors(VALUES) == []
    typo = helm_merge(VALUES, {"runLauncher": {"config": {"k8sRunLauncher": {"imagePulPolicy": "Always"}}}})
    assert any("imagePulPolicy" in e for e in schema_errors(typo))  # the check can fail
    wrong = helm_merge(VALUES, {"dagster-user-deployments": {"deployments": [{"name": "x", "port": "4000"}]}})
    assert schema_errors(wrong)


def user_deployment() -> dict:
    [deployment] = VALUES["dagster-user-deployments"]["deployments"]
    return deployment


def test_helm_code_location_runs_the_images_code_server():
    deployment = user_deployment()
    cmd = re.search(r'^CMD \[(.*)\]$', (PROJECT / "Dockerfile").read_text(), re.M).group(1)
    dockerfile_cmd = json.loads(f"[{cmd}]")
    assert dockerfile_cmd[-2:] == deployment["codeServerArgs"]  # -m llm_assets.definitions
    assert str(deployment["port"]) == dockerfile_cmd[dockerfile_cmd.index("-p") + 1]


def test_helm_env_is_read_by_the_code_and_secrets_are_references(monkeypatch):
    env = user_deployment()["env"]
    for var in env:
        assert THIRD_PARTY_ENV.match(var["name"]) or f'"{var["name"]}"' in SOURCE, f"{var['name']} is read by no code"
        assert "value" in var or "secretKeyRef" in var.get("valueFrom", {})
    plain = {v["name"]: v["value"] for v in env if "value" in v}
    assert not any("SECRET" in k or "TOKEN" in k or "PASSWORD" in k for k in plain)
    config = launch_config_from_env({k: v for k, v in plain.items() if k in (LAUNCHER_ENV, K8S_ENV)})
    assert config.kind == "k8s" and config.k8s is not None
    secrets = {ref.split("/")[0] for ref in config.k8s.secret_env.values()}
    secrets |= {s["name"] for s in user_deployment()["envSecrets"]}
    secrets |= {v["valueFrom"]["secretKeyRef"]["name"] for v in env if "valueFrom" in v}
    secrets.add(VALUES["global"]["postgresqlSecretName"])
    readme = (DEPLOY / "README.md").read_text()
    assert [s for s in sorted(secrets) if f"`{s}`" not in readme] == []  # every Secret to create is documented
    spec = pod_spec(load_recipe("llama31-8b-qlora"), "sft", config.k8s)
    assert spec["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert spec["tolerations"] == [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]


def test_compose_references_only_what_exists():
    services = COMPOSE["services"]
    assert set(services) == {"postgres", "minio", "minio-buckets", "code-location", "webserver", "daemon"}
    for name, service in services.items():
        for dep in service.get("depends_on", {}):
            assert dep in services, f"{name} depends on unknown service {dep}"
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("."):
                assert (DEPLOY / source).is_file(), f"{name} mounts missing {source}"
            else:
                assert source in COMPOSE["volumes"], f"{name} uses undeclared volume {source}"
        if "build" in service:
            assert (DEPLOY / service["build"]["context"] / service["build"]["dockerfile"]).is_file()
        for var in service.get("environment", {}):
            if var.startswith("LLM_ASSETS_"):
                assert f'"{var}"' in SOURCE, f"{name} sets {var}, which no code reads"
    workspace = yaml.safe_load((DEPLOY / "workspace.yaml").read_text())["load_from"][0]["grpc_server"]
    assert workspace["host"] in services and workspace["port"] == 4000
    for name in ("webserver", "daemon"):
        assert "/app/deploy/workspace.yaml" in services[name]["command"]
    instance = (DEPLOY / "dagster.yaml").read_text()
    for var in re.findall(r"env: (\w+)", instance):
        assert var in services["code-location"]["environment"], f"deploy/dagster.yaml reads {var}, compose sets none"
    bucket = services["minio-buckets"]["command"][0].rsplit("local/", 1)[1]
    for var in ("LLM_ASSETS_STORE", "LLM_ASSETS_LANDING"):
        assert services["code-location"]["environment"][var].startswith(f"s3://{bucket}/")


def test_compose_instance_config_is_valid(monkeypatch):
    from dagster._core.instance.config import dagster_instance_config
    from dagster._serdes.config_class import class_from_code_pointer

    for var in ("HOST", "USER", "PASSWORD", "DB"):
        monkeypatch.setenv(f"DAGSTER_POSTGRES_{var}", "x")
    config, _ = dagster_instance_config(str(DEPLOY), "dagster.yaml")
    assert set(config["storage"]) == {"postgres"}
    logs = config["compute_logs"]
    assert class_from_code_pointer(logs["module"], logs["class"]).__name__ == "LocalComputeLogManager"
    assert any(v.endswith(":/app/data") for v in COMPOSE["services"]["webserver"]["volumes"])
    assert logs["config"]["base_dir"].startswith("/app/data/")  # on the volume the webserver shares


@pytest.mark.skipif(shutil.which("docker-compose") is None, reason="docker-compose is not installed (apt-get install docker-compose)")
def test_docker_compose_accepts_the_file():
    out = subprocess.run(["docker-compose", "-f", str(DEPLOY / "docker-compose.yaml"), "config", "-q"],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
