"""Time the no-clicks path under ``dagster dev``: land the demo files, watch the daemon do the rest.

    python scripts/automation_walkthrough.py [--quiet-minutes 3]

A fresh DAGSTER_HOME and data directory under a temporary directory; ``dagster dev`` with its
daemon (landing, recipe and automation sensors on by default). Steps, each timed from the moment
it starts: (1) copy the demo files into the landing zone -> drop partitions, validated datasets
and a successful model run per embedded recipe; (2) copy nothing -> no new run for a while;
(3) edit one recipe's learning rate -> a run for that recipe only. Prints a table for the issue note.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
EMBEDDED = ("tiny", "tiny-lora")


def wait(what: str, predicate, timeout: float, poll: float = 2.0):
    t0 = time.time()
    while time.time() - t0 < timeout:
        value = predicate()
        if value:
            return value
        time.sleep(poll)
    raise TimeoutError(f"{what}: not within {timeout:.0f} s")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quiet-minutes", type=float, default=3.0)
    parser.add_argument("--port", type=int, default=3999)
    args = parser.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="walkthrough-"))
    home, data, recipes = tmp / "dagster_home", tmp / "data", tmp / "recipes"
    home.mkdir()
    shutil.copy(ROOT / "configs" / "dagster.yaml", home / "dagster.yaml")
    shutil.copytree(ROOT / "configs" / "recipes", recipes)
    env = {**os.environ, "DAGSTER_HOME": str(home), "LLM_ASSETS_DATA_DIR": str(data), "LLM_ASSETS_RECIPES_DIR": str(recipes)}
    os.environ.update(env)

    from dagster import DagsterInstance, DagsterRunStatus, RunsFilter

    from llm_assets.demo_data import write_demo_drops

    dev = subprocess.Popen([str(Path(sys.executable).parent / "dagster"), "dev", "-h", "127.0.0.1", "-p", str(args.port),
                            "-w", str(ROOT / "workspace.yaml")], cwd=ROOT, env=env, stdout=open(tmp / "dev.log", "w"),
                           stderr=subprocess.STDOUT, start_new_session=True)
    rows = []
    try:
        instance = DagsterInstance.get()
        t0 = time.time()
        wait("the daemon's first sensor tick", lambda: _any_tick(instance), 180)
        rows.append(["dagster dev up, first sensor tick", f"{time.time() - t0:.0f} s"])

        def runs(status=None, since=0.0):
            recs = instance.get_run_records(RunsFilter(statuses=[status] if status else None))
            return [r for r in recs if r.create_timestamp.timestamp() >= since]

        # 1. land the demo files (written elsewhere, then moved in: a landing is an atomic rename)
        staging = tmp / "staging"
        t1 = time.time()
        for path in write_demo_drops(staging):
            dest = data / "landing" / path.parent.name / path.name
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.move(path, dest)
        wait("drop partitions", lambda: all(instance.get_dynamic_partitions(f"{k}_drops") for k in ("sft", "preference", "pretraining")), 300)
        rows.append(["files landed -> drop partitions registered", f"{time.time() - t1:.0f} s"])
        wait("validated datasets", lambda: _data_runs_done(instance), 600)
        rows.append(["-> every drop validated (data prep runs succeeded)", f"{time.time() - t1:.0f} s"])
        done = {}
        for recipe in EMBEDDED:
            wait(f"model run for {recipe}", lambda: _model_run(instance, recipe, DagsterRunStatus.SUCCESS, t1), 3600, poll=5)
            done[recipe] = time.time()
            rows.append([f"-> recipe {recipe} retrained (model run succeeded)", f"{done[recipe] - t1:.0f} s"])
        other = sorted({r.dagster_run.tags.get("dagster/partition") for r in runs(since=t1)} - set(EMBEDDED) - {None})
        rows.append(["runs for recipes that cannot run here (hub model not cached, GPUs)", ", ".join(other) or "none"])
        wait("every run finished", lambda: not runs(DagsterRunStatus.STARTED) and not runs(DagsterRunStatus.QUEUED), 1800, poll=5)

        # 2. nothing more lands
        count = len(runs())
        time.sleep(args.quiet_minutes * 60)
        rows.append([f"nothing landed for {args.quiet_minutes:g} min -> new runs", str(len(runs()) - count)])

        # 3. edit one recipe
        path = recipes / "tiny-lora.yaml"
        recipe = yaml.safe_load(path.read_text())
        recipe["sft"]["learning_rate"] *= 0.8
        path.write_text(yaml.safe_dump(recipe))
        t3 = time.time()
        wait("retrain after the edit", lambda: _model_run(instance, "tiny-lora", DagsterRunStatus.SUCCESS, t3), 3600, poll=5)
        rows.append(["tiny-lora.yaml learning rate edited -> tiny-lora retrained", f"{time.time() - t3:.0f} s"])
        time.sleep(60)
        retrained = sorted({r.dagster_run.tags.get("dagster/partition") for r in runs(since=t3)} - {None})
        rows.append(["recipes with runs after the edit", ", ".join(retrained)])
    finally:
        os.killpg(dev.pid, signal.SIGINT)
        try:
            dev.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(dev.pid, signal.SIGKILL)
    width = max(len(r[0]) for r in rows)
    print("\n".join(f"{a:<{width}}  {b}" for a, b in rows))
    print(f"(instance and logs kept under {tmp})")
    return 0


def _any_tick(instance) -> bool:
    """A sensor has ticked (instigator types are not public API: compared by value)."""
    return any(instance.get_ticks(s.instigator_origin_id, s.selector_id, limit=1)
               for s in instance.all_instigator_state() if s.instigator_type.value == "SENSOR")


def _data_runs_done(instance) -> bool:
    from dagster import DagsterRunStatus, RunsFilter

    recs = instance.get_run_records(RunsFilter(tags={"dagster/sensor_name": "landing_sensor"}))
    return len(recs) >= 4 and all(r.dagster_run.status == DagsterRunStatus.SUCCESS for r in recs)


def _model_run(instance, recipe: str, status, since: float) -> bool:
    from dagster import AssetKey, RunsFilter

    recs = instance.get_run_records(RunsFilter(statuses=[status], tags={"dagster/partition": recipe}))
    return any(r.create_timestamp.timestamp() >= since and AssetKey("sft_model") in (r.dagster_run.asset_selection or set())
               for r in recs)


if __name__ == "__main__":
    sys.exit(main())
