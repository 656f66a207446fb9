"""Tracking for teams: a recipe's ``tracking.report_to: [mlflow]`` sends a stage's run to a real MLflow tracking server
(started here on 127.0.0.1 with a SQLite backend), reached through the worker's MLFLOW_TRACKING_URI, and the asset's
metadata links to the run. A tracker that cannot keep the run stops the stage before training, in one line."""

import importlib.util
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request

import pytest
from dagster import AssetKey, DagsterInstance

from llm_assets.training.tracking import check_environment
from llm_assets_tests.helpers import land_demo_drops, write_recipe


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def mlflow_server(tmp_path):
    """``mlflow server`` on a free port, its runs in SQLite and its artifacts under tmp; stopped with its workers."""
    port, log = free_port(), tmp_path / "mlflow.log"
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}  # no background job runner: runs and metrics only
    server = subprocess.Popen([sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
                               "--backend-store-uri", f"sqlite:///{tmp_path / 'mlflow.db'}",
                               "--default-artifact-root", str(tmp_path / "mlflow-artifacts")],
                              env=env, stdout=log.open("w"), stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 90
        while True:
            try:
                if urllib.request.urlopen(f"{url}/health", timeout=2).read().strip() == b"OK":
                    break
            except OSError:
                pass
            if server.poll() is not None or time.time() > deadline:
                raise AssertionError(f"mlflow server did not come up on {url}:\n{log.read_text()[-3000:]}")
            time.sleep(0.5)
        yield url
    finally:
        os.killpg(server.pid, signal.SIGTERM)  # its own session: the server and the uvicorn worker it started
        try:
            server.wait(15)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait(5)


def meta(instance, asset):
    from dagster import AssetRecordsFilter

    [record] = instance.fetch_materializations(AssetRecordsFilter(AssetKey(asset), asset_partitions=["tiny"]), limit=1).records
    return {k: v.value for k, v in record.asset_materialization.metadata.items()}


def test_a_stage_run_is_tracked_in_mlflow_and_its_asset_links_to_the_run(project_env, mlflow_server, monkeypatch):
    from mlflow.tracking import MlflowClient

    from llm_assets.definitions import build_definitions
    from llm_assets.resources import default_resources

    recipes = project_env / "recipes"
    write_recipe(recipes, tracking={"report_to": ["mlflow"]})
    monkeypatch.setenv("LLM_ASSETS_RECIPES_DIR", str(recipes))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server)  # the worker's environment, not the work order
    instance, defs = DagsterInstance.get(), build_definitions()
    land_demo_drops(project_env / "data" / "landing", defs, instance)
    job = defs.resolve_job_def("full_pipeline_job").get_subset(asset_selection={AssetKey("base_model"), AssetKey("cpt_model")})
    assert job.execute_in_process(partition_key="tiny", instance=instance).success

    cpt = meta(instance, "cpt_model")
    prefix = f"{mlflow_server}/#/experiments/"
    assert cpt["mlflow_run"].startswith(prefix) and "mlflow_run" not in meta(instance, "base_model")  # base trains nothing
    run_id = cpt["mlflow_run"].rsplit("/", 1)[1]
    client = MlflowClient(mlflow_server)
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED" and run.data.tags["mlflow.runName"] == "tiny-cpt"
    assert run.info.experiment_id == cpt["mlflow_run"][len(prefix):].split("/")[0]
    assert float(run.data.params["learning_rate"]) == 1e-3 and int(run.data.params["max_steps"]) == 4
    assert [m.step for m in client.get_metric_history(run_id, "eval_loss")] == [0, 1, 2, 3, 4]  # evaluated during training
    assert len(client.get_metric_history(run_id, "loss")) >= 2
    # the held-out figures measured after training are added to the same run
    record = default_resources()["store"].open().record("models/cpt/tiny")
    assert run.data.metrics["final/eval_loss"] == pytest.approx(record["metrics"]["eval_loss"])
    assert run.data.metrics["final/parent_eval_loss"] == pytest.approx(record["metrics"]["parent_eval_loss"])


def test_a_tracker_that_cannot_keep_the_run_stops_the_stage_in_one_line(monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    with pytest.raises(ValueError, match="tracking.report_to lists mlflow, but MLFLOW_TRACKING_URI is not set in the worker's environment"):
        check_environment(["mlflow"])
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:1")
    check_environment(["mlflow"])
    check_environment([])  # the default: no tracker, nothing needed
    monkeypatch.delenv("TENSORBOARD_LOGGING_DIR", raising=False)
    tensorboard = importlib.util.find_spec("tensorboard") or importlib.util.find_spec("tensorboardX")
    expected = "TENSORBOARD_LOGGING_DIR is not set" if tensorboard else "the tensorboard package is not installed where the stage runs"
    with pytest.raises(ValueError, match=expected):
        check_environment(["tensorboard"])
