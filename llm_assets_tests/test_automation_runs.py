"""The automation sensor as the daemon runs it: the sensor daemon's own iteration over the code location
(loaded in this process), runs submitted through the instance and executed by its run launcher.

What a user sees: automation's runs on the Runs page (a failed one with status FAILURE, no backfill),
and recipes that cannot run on this machine (a hub model that is not cached while the Hub cannot be
reached, GPUs it lacks, ``automation: manual``) given no run, with one warning per change in the
sensor's tick log, and run as soon as the model arrives.
"""

from __future__ import annotations

import logging
import shutil
import sys
import time
from contextlib import ExitStack
from pathlib import Path

import pytest
from dagster import DagsterEventType, DagsterInstance, DagsterRunStatus, RunsFilter
from dagster._core.definitions.instigation_logger import get_instigation_log_records  # the tick log the UI shows
from dagster._core.remote_origin import InProcessCodeLocationOrigin
from dagster._core.test_utils import create_test_daemon_workspace_context, freeze_time
from dagster._core.types.loadable_target_origin import LoadableTargetOrigin
from dagster._core.workspace.load_target import InProcessWorkspaceLoadTarget
from dagster._daemon.sensor import execute_sensor_iteration

from llm_assets.launch.sizing import cuda_gpus
from llm_assets_tests.helpers import HUB_REV, write_recipe
from llm_assets_tests.runless import land

PROJECT = Path(__file__).resolve().parent.parent
DROPS = {"pretraining": "p1", "sft": "s1", "preference": "r1"}
# Runs are submitted as the daemon submits them and executed in this process, so a test reads their outcome at once.
INSTANCE_YAML = """
telemetry: {enabled: false}
run_coordinator: {module: dagster._core.run_coordinator, class: DefaultRunCoordinator}
run_launcher: {module: dagster._core.launcher.sync_in_memory_run_launcher, class: SyncInMemoryRunLauncher}
"""


class SensorDaemon:
    """Ticks every running sensor (landing, recipe, automation) as `dagster dev`'s daemon does, a minute apart."""

    def __init__(self, tmp: Path):
        (Path(DagsterInstance.get().root_directory) / "dagster.yaml").write_text(INSTANCE_YAML)
        self.instance = DagsterInstance.get()
        location = tmp / "location.py"
        location.write_text("from llm_assets.definitions import build_definitions\n\ndefs = build_definitions()\n")
        origin = InProcessCodeLocationOrigin(LoadableTargetOrigin(executable_path=sys.executable, python_file=str(location),
                                                                  attribute="defs", working_directory=str(PROJECT)),
                                             location_name="llm_assets")
        self._stack = ExitStack()
        self.workspace = self._stack.enter_context(create_test_daemon_workspace_context(InProcessWorkspaceLoadTarget(origin), self.instance))
        self.now = time.time()

    def tick(self, times: int = 1) -> None:
        for _ in range(times):
            self.now += 60  # past every sensor's minimum interval
            with freeze_time(self.now):
                list(execute_sensor_iteration(self.workspace, logging.getLogger("sensor_daemon"), None, None))

    def automation_log(self) -> list[dict]:
        """Every record the automation sensor logged, over all its ticks (its tick log in the UI)."""
        [state] = [s for s in self.instance.all_instigator_state() if s.name == "automation"]
        ticks = self.instance.get_ticks(state.instigator_origin_id, state.selector_id)
        return [r for t in reversed(ticks) if t.log_key for r in get_instigation_log_records(self.instance, t.log_key)]

    def runs(self, recipe: str | None = None, status: DagsterRunStatus | None = None):
        return self.instance.get_runs(RunsFilter(statuses=[status] if status else None,
                                                 tags={"dagster/partition": recipe} if recipe else None))

    def close(self) -> None:
        self._stack.close()


@pytest.fixture
def recipes(project_env, monkeypatch):
    directory = project_env / "recipes"
    directory.mkdir()
    monkeypatch.setenv("LLM_ASSETS_RECIPES_DIR", str(directory))
    return directory


@pytest.fixture
def start_daemon(project_env, recipes):
    """Starts the daemon over the recipes written so far (the code location loads them once, as `dagster dev` does)."""
    started = []
    yield lambda: started.append(SensorDaemon(project_env)) or started[-1]
    for d in started:
        d.close()


def land_all(instance: DagsterInstance) -> None:
    for kind, drop in DROPS.items():
        land(instance, kind, drop)


def warnings_about(log: list[dict], recipe: str) -> list[str]:
    return [r["msg"] for r in log if r["levelname"] == "WARNING" and f"recipe '{recipe}'" in r["msg"]]


def test_a_failed_automation_run_is_a_failed_run_with_a_one_line_reason(start_daemon, recipes):
    write_recipe(recipes, "a")
    write_recipe(recipes, "b", sft={"method": "lora"})
    daemon = start_daemon()
    daemon.tick(2)  # the recipes observed, the automation's first look
    land_all(daemon.instance)  # drops validated, but their datasets are not in the store: base_model cannot train
    daemon.tick()
    # two partitions of each model asset requested on one tick: what made Dagster's default emit one backfill
    assert daemon.instance.get_backfills() == []
    failed = daemon.runs(status=DagsterRunStatus.FAILURE)
    assert {r.tags["dagster/partition"] for r in failed} == {"a", "b"}
    assert all(r.tags["dagster/sensor_name"] == "automation" and "base_model" in {k.to_user_string() for k in r.asset_selection}
               for r in failed)
    for run in failed:
        [step] = daemon.instance.all_logs(run.run_id, of_type=DagsterEventType.STEP_FAILURE)
        description = step.dagster_event.step_failure_data.user_failure_data.description
        assert "\n" not in description and "no usable pretraining drop" in description and "materialize pretraining_dataset" in description
    daemon.tick(2)
    assert len(daemon.runs()) == 2  # a failure is not retried on every tick


def test_shipped_hub_and_gpu_recipes_and_a_manual_one_get_no_run_and_one_warning_each(start_daemon, recipes, monkeypatch, tmp_path):
    """This machine as CI has it: no Hub (an endpoint that refuses connections), an empty Hub cache, maybe no GPU."""
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty_hub_cache"))
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    shipped = ["llama31-8b-qlora", "qwen25-05b-zero3", "gpu-1b", "gpu-1b-qlora"]
    for name in shipped:
        shutil.copy(PROJECT / "configs" / "recipes" / f"{name}.yaml", recipes)
    write_recipe(recipes, "by-hand", automation="manual")
    daemon = start_daemon()
    daemon.tick(2)
    land_all(daemon.instance)
    daemon.tick(3)
    assert daemon.runs() == [] if cuda_gpus() == 0 else {r.tags["dagster/partition"] for r in daemon.runs()} <= {"gpu-1b", "gpu-1b-qlora"}
    log = daemon.automation_log()
    for hub in ("llama31-8b-qlora", "qwen25-05b-zero3"):
        [warning] = warnings_about(log, hub)
        assert "is not in the local Hub cache" in warning and "cannot be reached" in warning and "hf download" in warning
    for gpu in ("gpu-1b", "gpu-1b-qlora"):
        assert len(warnings_about(log, gpu)) == (1 if cuda_gpus() == 0 else 0)
    assert [r["dagster_meta"]["orig_message"] for r in log if "by-hand" in r["msg"]] == [
        "recipe 'by-hand' is not started by automation: its automation is manual: only a Materialize runs it"]


def test_a_hub_recipe_runs_once_its_model_arrives(start_daemon, recipes, hub_cache, monkeypatch, tmp_path):
    cache, _ = hub_cache
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "not_yet"))
    write_recipe(recipes, "hubby", model={"base": "acme/tiny-llama", "revision": HUB_REV, "architecture": {
        "hidden_size": 32, "intermediate_size": 64, "num_layers": 1, "num_heads": 2, "vocab_size": 300}})
    daemon = start_daemon()
    daemon.tick(2)
    land_all(daemon.instance)
    daemon.tick(2)
    assert daemon.runs() == []
    [warning] = warnings_about(daemon.automation_log(), "hubby")
    assert "acme/tiny-llama" in warning and "switched off (offline)" in warning
    shutil.copytree(cache, tmp_path / "not_yet")  # the snapshot is copied in from a connected machine
    daemon.tick()
    [run] = daemon.runs("hubby")
    assert "base_model" in {k.to_user_string() for k in run.asset_selection}
    assert any("recipe 'hubby' can run here again" in r["msg"] for r in daemon.automation_log())
