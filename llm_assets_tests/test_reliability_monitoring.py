"""A killed run worker never wedges the ``training`` pool (issue 16, item 1): the real ``dagster-daemon`` with the
shipped instance config (poll interval lowered), a queued SFT run whose run worker is killed with SIGKILL mid-training,
then the run must be FAILURE, its pool slot free, and a later run that needs the pool must train."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import yaml
from dagster import AssetKey, DagsterInstance, DagsterRunStatus
from dagster._core.definitions.selector import JobSubsetSelector
from dagster._core.workspace.context import WorkspaceProcessContext
from dagster._core.workspace.load_target import WorkspaceFileTarget

from llm_assets.resources import default_resources
from llm_assets_tests.helpers import land_demo_drops, write_recipe

PROJECT = Path(__file__).resolve().parent.parent
POLL_S = 2  # the shipped 20 s, lowered so the test is quick; everything else is the shipped config
SLACK_S = 30  # a code server noticing its dead child, the daemon's loop start, sqlite on a shared 2-core machine


@pytest.fixture
def prepared(project_env, monkeypatch):
    """Drops validated, the base model trained in this process for two recipes that skip CPT (what the SFT runs start
    from; CPT adds nothing to what is killed); the shipped config with a 2 s poll."""
    config = yaml.safe_load((PROJECT / "configs" / "dagster.yaml").read_text())
    config["run_monitoring"].update(poll_interval_seconds=POLL_S, free_slots_after_run_end_seconds=POLL_S)
    (project_env / "dagster_home" / "dagster.yaml").write_text(yaml.safe_dump(config))
    recipes = project_env / "recipes"
    write_recipe(recipes, "killed", cpt=None, sft={"max_steps": 400, "save_steps": 50})  # long enough to be killed mid-way
    write_recipe(recipes, "later", cpt=None)
    monkeypatch.setenv("LLM_ASSETS_RECIPES_DIR", str(recipes))
    from llm_assets.definitions import build_definitions

    instance, defs = DagsterInstance.get(), build_definitions()
    land_demo_drops(project_env / "data" / "landing", defs, instance, kinds=("pretraining", "sft", "preference"))
    job = defs.resolve_job_def("full_pipeline_job").get_subset(asset_selection={AssetKey("base_model"), AssetKey("cpt_model")})
    for recipe in ("killed", "later"):
        assert job.execute_in_process(partition_key=recipe, instance=instance).success
    return instance


class Daemon:
    """``dagster-daemon run`` in its own session; ``close`` kills it and every process it started, wherever they went."""

    def __init__(self, home: Path, log: Path):
        self.log = log.open("wb")
        self.process = subprocess.Popen([str(Path(sys.executable).parent / "dagster-daemon"), "run", "-w", "workspace.yaml"],
                                        cwd=PROJECT, env={**os.environ, "DAGSTER_HOME": str(home)}, start_new_session=True,
                                        stdout=self.log, stderr=subprocess.STDOUT)
        self.seen: set[psutil.Process] = set()

    def tree(self) -> list[psutil.Process]:
        """Its live descendants, plus any seen before that were since orphaned (re-parented away from the daemon)."""
        try:
            self.seen.update(psutil.Process(self.process.pid).children(recursive=True))
        except psutil.NoSuchProcess:
            pass
        return [p for p in self.seen if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]

    def close(self) -> list[psutil.Process]:
        left = self.tree()
        try:
            os.killpg(self.process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        for p in left:  # a training worker runs in its own process group
            try:
                p.kill()
            except psutil.NoSuchProcess:
                pass
        self.process.wait(30)
        psutil.wait_procs(left, timeout=30)
        self.log.close()
        return left


def cmdline(p: psutil.Process) -> str:
    try:
        return " ".join(p.cmdline())
    except psutil.Error:
        return ""


def wait_for(what: str, predicate, timeout: float, log: Path):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}; daemon log tail:\n{log.read_text()[-3000:]}")


def submit(instance: DagsterInstance, workspace: WorkspaceProcessContext, recipe: str, assets: list[str]) -> str:
    """A run as the UI's Materialize submits it: through the instance's queued run coordinator, for the daemon."""
    context = workspace.create_request_context()
    location = context.get_code_location("llm_assets")
    [repo] = location.get_repositories().values()
    selector = JobSubsetSelector(location_name=location.name, repository_name=repo.name, job_name="full_pipeline_job",
                                 op_selection=None, asset_selection={AssetKey(a) for a in assets})
    remote_job = location.get_job(selector)
    plan = location.get_execution_plan(remote_job, {}, step_keys_to_execute=None, known_state=None, instance=instance)
    run = instance.create_run(
        job_name=remote_job.name, run_id=None, run_config={}, resolved_op_selection=None,
        step_keys_to_execute=plan.execution_plan_snapshot.step_keys_to_execute, op_selection=None, status=None,
        root_run_id=None, parent_run_id=None, tags={**remote_job.tags, "dagster/partition": recipe},
        job_snapshot=remote_job.job_snapshot, execution_plan_snapshot=plan.execution_plan_snapshot,
        parent_job_snapshot=remote_job.parent_job_snapshot, remote_job_origin=remote_job.get_remote_origin(),
        job_code_origin=remote_job.get_python_origin(), asset_selection=frozenset(AssetKey(a) for a in assets),
        asset_check_selection=None, asset_graph=repo.asset_graph)
    instance.submit_run(run.run_id, context)
    return run.run_id


def test_a_killed_run_worker_fails_its_run_and_frees_the_training_pool(prepared, project_env):
    instance = prepared
    log = project_env / "daemon.log"
    with WorkspaceProcessContext(instance, WorkspaceFileTarget(paths=[str(PROJECT / "workspace.yaml")])) as workspace:
        context = workspace.create_request_context()
        [repo] = context.get_code_location("llm_assets").get_repositories().values()
        for sensor in repo.get_sensors():  # only the runs this test submits: no automation or landing runs
            instance.stop_sensor(sensor.get_remote_origin_id(), sensor.selector_id, sensor)
        daemon = Daemon(project_env / "dagster_home", log)
        try:
            killed = submit(instance, workspace, "killed", ["sft_model"])
            worker = wait_for("the sft training worker", lambda: next(
                (p for p in daemon.tree() if "-m llm_assets.training sft" in cmdline(p)), None), 240, log)
            time.sleep(3)  # mid-training: past start-up, a few steps done
            ancestors = worker.parents()
            [run_worker] = [p for i, p in enumerate(ancestors[:-1]) if "api grpc" in cmdline(ancestors[i + 1])]
            assert instance.get_run_by_id(killed).status == DagsterRunStatus.STARTED
            assert instance.event_log_storage.get_concurrency_info("training").claimed_slots, "the sft step holds no slot"
            run_worker.kill()
            t0 = time.monotonic()

            wait_for("the run to be FAILURE", lambda: instance.get_run_by_id(killed).status == DagsterRunStatus.FAILURE,
                     POLL_S + SLACK_S, log)
            failed_s = time.monotonic() - t0
            wait_for("the training slot to be freed",
                     lambda: not instance.event_log_storage.get_concurrency_info("training").claimed_slots, POLL_S + SLACK_S, log)
            freed_s = time.monotonic() - t0
            # the step process outlives its run worker (re-parented); it notices and stops its training worker
            gone, alive = psutil.wait_procs([worker], timeout=SLACK_S)
            print(f"\nkill -9 of the run worker: run FAILURE after {failed_s:.1f} s, training slot free after {freed_s:.1f} s "
                  f"(poll {POLL_S} s, free_slots_after_run_end {POLL_S} s); training worker gone after "
                  f"{time.monotonic() - t0:.1f} s")
            assert not alive, f"the training worker {worker.pid} outlived the killed run worker"

            later = submit(instance, workspace, "later", ["sft_model"])
            wait_for("the later sft run to succeed", lambda: instance.get_run_by_id(later).status == DagsterRunStatus.SUCCESS,
                     240, log)
            print(f"a later sft run on the pool: SUCCESS {time.monotonic() - t0:.1f} s after the kill")
            assert default_resources()["store"].open().record("models/sft/later")["metrics"]["eval_loss"] > 0
        finally:
            left = daemon.close()
    assert not [p for p in left if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
