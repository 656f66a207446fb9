"""run_k8s_worker end to end through PipesK8sClient, against a one-node Kubernetes API on 127.0.0.1 (kube_node.py):
the worker gets its work order from the Pipes extras and its secrets from secretKeyRefs, and what it reports comes
back to Dagster through its pod log."""

from __future__ import annotations

import sys

import pytest
from dagster import DagsterInstance, asset, materialize

from llm_assets.launch.k8s import K8sSettings, run_k8s_worker
from llm_assets.recipes import load_recipe
from llm_assets_tests.kube_node import KubeNode

WORKER = """
import os, sys
from dagster_pipes import open_dagster_pipes
with open_dagster_pipes() as pipes:
    order = pipes.get_extra("order")
    print("plain output goes to the run's stdout")
    pipes.log.info(f"worker for {order['stage']}")
    if order.get("fail"):
        sys.exit(3)
    pipes.report_asset_materialization(metadata={
        "doubled": order["n"] * 2, "token": os.environ["HF_TOKEN"], "threads": os.environ["OMP_NUM_THREADS"],
        "from_launcher": os.environ["LAUNCHER_VALUE"], "store": os.environ["LLM_ASSETS_STORE"]})
"""


@pytest.fixture
def node(tmp_path):
    node = KubeNode(tmp_path / "node", secrets={"hf": {"token": "hf_test_value"}})
    yield node
    node.stop()


def materialize_worker(node: KubeNode, tmp_path, order: dict):
    settings = K8sSettings(image="reg/llm-assets:cuda", namespace="training", kubeconfig_file=str(node.kubeconfig(tmp_path / "kubeconfig")),
                           load_incluster_config=False, poll_interval_seconds=0.2, env={"LLM_ASSETS_STORE": "s3://models/store"},
                           secret_env={"HF_TOKEN": "hf/token"})

    @asset
    def worker_output(context):
        invocation = run_k8s_worker(context, stage="sft", recipe=load_recipe("tiny"), command=[sys.executable, "-c", WORKER],
                                    env={"OMP_NUM_THREADS": "64", "LAUNCHER_VALUE": "from the launcher"},
                                    extras={"order": order}, settings=settings)
        return invocation.get_materialize_result()

    return materialize([worker_output], instance=DagsterInstance.ephemeral(), raise_on_error=False)


def test_a_worker_pod_gets_its_order_and_reports_back(node, tmp_path):
    result = materialize_worker(node, tmp_path, {"stage": "sft", "n": 21})
    assert result.success
    [event] = result.get_asset_materialization_events()
    metadata = {k: v.value for k, v in event.materialization.metadata.items()}
    assert metadata["doubled"] == 42  # the order arrived as Pipes extras, the result came back through the log
    assert metadata["token"] == "hf_test_value"  # resolved from the Secret by the node, never written in the pod
    assert metadata["threads"] == "4"  # the pod's own cores, not the launching machine's OMP_NUM_THREADS
    assert metadata["from_launcher"] == "from the launcher" and metadata["store"] == "s3://models/store"
    [(namespace, pod)] = node.created
    assert namespace == "training" and pod["spec"]["restartPolicy"] == "Never"
    assert {"name": "HF_TOKEN", "valueFrom": {"secretKeyRef": {"name": "hf", "key": "token"}}} in pod["spec"]["containers"][0]["env"]
    assert "hf_test_value" not in str(pod)
    assert node.pods == {}  # deleted once finished


def test_a_failing_worker_fails_the_step_with_its_log(node, tmp_path):
    result = materialize_worker(node, tmp_path, {"stage": "sft", "n": 1, "fail": True})
    assert not result.success
    error = result.get_step_failure_events()[0].step_failure_data.error.cause  # what run_k8s_worker raised
    assert error.cls_name == "DagsterK8sError"
    assert "exited with errors" in error.message and "worker for sft" in error.message  # the pod's last log lines
    assert node.pods == {}
