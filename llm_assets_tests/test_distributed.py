"""DeepSpeed ZeRO across 2 processes on the CPU (gloo), launched the way TrainingLauncher launches it."""

import json
import os
import subprocess

import pytest

from llm_assets.recipes import parse_recipe
from llm_assets.resources.launcher import TrainingLauncher
from llm_assets.training.__main__ import run_stage
from llm_assets.training.report import Reporter
from llm_assets.training.spec import StageSpec
from llm_assets_tests.helpers import demo_datasets, write_recipe


@pytest.mark.parametrize("zero", ["zero2", "zero3"])
def test_two_process_torchrun_deepspeed_sft(tmp_path, zero):
    datasets = demo_datasets(tmp_path)
    path = write_recipe(tmp_path / "recipes", distributed={"processes": 2, "deepspeed": f"configs/deepspeed/{zero}.json"},
                        sft={"max_steps": 4, "save_steps": 2})
    recipe = parse_recipe(path).model_dump(mode="json")
    run_stage("base", StageSpec(stage="base", recipe=recipe, output_dir=str(tmp_path / "base"), datasets=datasets), Reporter())
    spec = StageSpec(stage="sft", recipe=recipe, output_dir=str(tmp_path / "sft"), inputs={"model": str(tmp_path / "base")},
                     datasets=datasets, checkpoint_dir=str(tmp_path / "ckpt"), options={"eval_limit": 8})
    spec_path = spec.save(tmp_path / "sft.spec.json")
    command = TrainingLauncher().command(spec, spec_path)
    assert "--nproc-per-node=2" in command and command[0].endswith("torchrun")
    env = {**os.environ, "DS_ACCELERATOR": "cpu"}
    proc = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600, cwd=str(tmp_path))
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    assert len(result) == 1  # only rank 0 reports
    metrics = json.loads(result[0][len("RESULT "):])
    assert metrics["steps"] == 4 and metrics["eval_loss"] < metrics["parent_eval_loss"]
    ds_config = json.loads((tmp_path / "ckpt" / "checkpoint-4" / "trainer_state.json").read_text())
    assert ds_config["global_step"] == 4
    assert (tmp_path / "sft" / "model.safetensors").exists()
