"""A training worker dies with the step that launched it, and two workers never write one fingerprint's checkpoints
(issue 16, item 4); what a killed run leaves in the store holds no full pickle (item 9)."""

from __future__ import annotations

import subprocess
import sys
import time
import uuid
from pathlib import Path

import boto3
import psutil
import pytest
import torch
from dagster import AssetKey, DagsterInstance

from llm_assets.artifacts import Store, open_store
from llm_assets.resources import default_resources
from llm_assets.training.checkpoints import CheckpointBusy, checkpoint_lock
from llm_assets_tests.helpers import land_demo_drops, write_recipe

KEY = "checkpoints/models/sft/tiny/fp0"
HOLD = """
import sys, time
from llm_assets.artifacts import open_store
from llm_assets.training.checkpoints import checkpoint_lock
root, endpoint, key = sys.argv[1], sys.argv[2] or None, sys.argv[3]
with checkpoint_lock(open_store(root, endpoint, "us-east-1"), key, wait_s=0, lease_s=2):
    print("held", flush=True)
    time.sleep(600)
"""


def hold_in_child(root: str, endpoint: str = "") -> subprocess.Popen:
    child = subprocess.Popen([sys.executable, "-c", HOLD, root, endpoint, KEY], stdout=subprocess.PIPE, text=True)
    assert child.stdout.readline().strip() == "held"
    return child


def second_worker_waits_then_takes_over(store: Store, holder: subprocess.Popen, takeover_s: float) -> float:
    t0 = time.monotonic()
    with pytest.raises(CheckpointBusy, match=rf"another worker \(pid {holder.pid} on .*\) is training this same fingerprint"):
        with checkpoint_lock(store, KEY, wait_s=1):
            pass
    assert time.monotonic() - t0 >= 1  # it waited before giving up
    holder.kill()
    holder.wait()
    t0 = time.monotonic()
    with checkpoint_lock(store, KEY, wait_s=takeover_s):
        took = time.monotonic() - t0
    return took


def test_local_checkpoint_lock_is_exclusive_and_dies_with_its_holder(tmp_path):
    root = str(tmp_path / "store")
    holder = hold_in_child(root)
    took = second_worker_waits_then_takes_over(open_store(root), holder, takeover_s=5)
    assert took < 1.5, f"the kernel drops a killed holder's lock at once; took {took:.1f} s"
    print(f"local lock taken over {took:.2f} s after kill -9 of its holder")


def test_s3_checkpoint_lease_is_exclusive_and_expires_after_its_holder_dies(s3_endpoint):
    bucket = f"ck-{uuid.uuid4().hex[:8]}"
    boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1").create_bucket(Bucket=bucket)
    root = f"s3://{bucket}/store"
    holder = hold_in_child(root, s3_endpoint)
    time.sleep(2.5)  # past one lease length: the live holder renews it, so it is still held
    store = open_store(root, s3_endpoint, "us-east-1")
    took = second_worker_waits_then_takes_over(store, holder, takeover_s=10)
    assert took < 4, f"a dead holder's 2 s lease should be taken over within ~2 s; took {took:.1f} s"
    assert not store.objects.exists(f"locks/{KEY}.lock")  # released on exit
    print(f"S3 lease taken over {took:.2f} s after kill -9 of its holder")


STEP = """
import os
from dagster import AssetKey, DagsterInstance
from llm_assets.definitions import build_definitions
job = build_definitions().resolve_job_def("full_pipeline_job").get_subset(asset_selection={AssetKey("sft_model")})
job.execute_in_process(partition_key="tiny", instance=DagsterInstance.get(), raise_on_error=False)
"""


def test_kill_9_of_the_step_process_leaves_no_training_worker(project_env, monkeypatch):
    recipes = project_env / "recipes"
    # no CPT: SFT starts from the base model, and the only checkpoints stored are the killed SFT worker's
    write_recipe(recipes, cpt=None, sft={"max_steps": 2000, "save_steps": 2, "logging_steps": 50})
    monkeypatch.setenv("LLM_ASSETS_RECIPES_DIR", str(recipes))
    from llm_assets.definitions import build_definitions

    instance, defs = DagsterInstance.get(), build_definitions()
    land_demo_drops(project_env / "data" / "landing", defs, instance, kinds=("pretraining", "sft", "preference"))
    job = defs.resolve_job_def("full_pipeline_job").get_subset(asset_selection={AssetKey("base_model"), AssetKey("cpt_model")})
    assert job.execute_in_process(partition_key="tiny", instance=instance).success

    store = default_resources()["store"].open()
    ckpt_root = Path(store.root) / "checkpoints"
    log = project_env / "step.log"
    step = subprocess.Popen([sys.executable, "-c", STEP], stdout=log.open("w"), stderr=subprocess.STDOUT)
    try:
        deadline = time.time() + 240
        while not list(ckpt_root.rglob("MANIFEST.json")):  # mid-SFT: a checkpoint is committed
            assert step.poll() is None and time.time() < deadline, f"no SFT checkpoint stored:\n{log.read_text()[-3000:]}"
            time.sleep(0.2)
        workers = [p for p in psutil.Process(step.pid).children(recursive=True)]
        assert any("llm_assets.training" in " ".join(p.cmdline()) for p in workers), [p.cmdline() for p in workers]
        step.kill()
        step.wait()
        t0 = time.monotonic()
        _, alive = psutil.wait_procs(workers, timeout=5)
        gone_s = time.monotonic() - t0
        assert not alive, f"outlived the step process: {[p.cmdline() for p in alive]}"
        print(f"{len(workers)} worker processes gone {gone_s:.2f} s after kill -9 of the step process")
    finally:
        for p in psutil.Process(step.pid).children(recursive=True) if step.poll() is None else []:
            p.kill()
        step.kill()

    [key] = {str(m.relative_to(store.root).parent.parent) for m in ckpt_root.rglob("MANIFEST.json")}
    with checkpoint_lock(store, key, wait_s=0):  # the dead worker's hold went with it: a re-run starts at once
        pass
    files = [f for f in ckpt_root.rglob("*") if f.is_file()]
    assert not [f for f in files if f.name == "training_args.bin"]  # the Trainer's full pickle is not stored
    states = [f for f in files if f.suffix in (".pt", ".pth")]
    assert states, "the checkpoint keeps the optimizer, scheduler and RNG states"
    from transformers.trainer_pt_utils import safe_globals

    with safe_globals():  # as the Trainer reads them: tensors, plain containers and numpy arrays only, no code
        for f in states:
            torch.load(f, weights_only=True)
    assert not [f for f in Path(store.root).rglob("*") if f.is_file() and f.suffix in (".bin", ".pkl", ".pickle")
                and "checkpoints" not in f.parts]
