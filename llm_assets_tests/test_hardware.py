import os
import sys
import time

import pytest
import torch
from dagster import AssetExecutionContext, MaterializeResult, asset, materialize

from llm_assets.recipes import Recipe
from llm_assets.resources.launcher import TrainingLauncher, child_env, run_pipes_process
from llm_assets.training import hardware
from llm_assets.training.common import hardware_for, trainer_args
from llm_assets.training.hardware import choose, cpu_cores, cpu_has_native_bf16, idle_cores, training_thread_env
from llm_assets.training.spec import StageSpec


def test_cpu_defaults_are_fp32_weights_without_checkpointing_and_bf16_only_where_native(monkeypatch):
    if torch.cuda.is_available():
        pytest.skip("CPU defaults: this machine has a GPU, so choose() picks the GPU ones")
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    hw = choose()
    assert (hw.device, hw.dtype, hw.gradient_checkpointing, hw.attn_implementation) == ("cpu", "float32", False, "sdpa")
    assert hw.autocast == ("bfloat16" if cpu_has_native_bf16() else "none")
    assert hw.threads == len(os.sched_getaffinity(0))  # the cores this process may use, not the host's
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False)
    assert choose().autocast == "none"  # emulated bf16 is slower than fp32
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: True)
    assert (choose().dtype, choose().autocast) == ("float32", "bfloat16")
    assert choose(deepspeed=True).autocast == "none"  # DeepSpeed would cast the weights, not autocast


def test_recipe_overrides_win():
    hw = choose(dtype="bfloat16", gradient_checkpointing=True, attn_implementation="eager")
    assert (hw.dtype, hw.autocast, hw.gradient_checkpointing, hw.attn_implementation) == ("bfloat16", "bfloat16", True, "eager")
    assert (choose(dtype="float32").dtype, choose(dtype="float32").autocast) == ("float32", "none")


def test_trainer_arguments_follow_the_hardware_not_trl_defaults(tmp_path):
    recipe = Recipe(name="t")
    hw = hardware_for(recipe, recipe.sft)
    spec = StageSpec(stage="sft", recipe=recipe.model_dump(mode="json"), output_dir=str(tmp_path / "o"), checkpoint_dir=str(tmp_path / "c"))
    args = trainer_args(recipe.sft, spec, hw)
    assert args["bf16"] is (hw.autocast == "bfloat16") and args["fp16"] is (hw.autocast == "float16")
    assert args["gradient_checkpointing"] is hw.gradient_checkpointing and args["use_cpu"] is (hw.device == "cpu")
    if not torch.cuda.is_available():
        assert args["fp16"] is False and args["gradient_checkpointing"] is False and args["use_cpu"] is True
    assert args["output_dir"] == str(tmp_path / "c") and args["save_steps"] == recipe.sft.save_steps
    assert torch.get_num_threads() == hw.threads


def test_thread_count_follows_omp_num_threads_when_set(monkeypatch):
    """The launcher sets OMP_NUM_THREADS per process (and a user may); hardware_for must not override it with every core."""
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    assert choose().threads == 1
    hardware_for(Recipe(name="t"))
    assert torch.get_num_threads() == 1
    monkeypatch.setenv("OMP_NUM_THREADS", "0")  # not a count: every core
    assert choose().threads == cpu_cores()


def test_training_thread_env_spins_briefly_on_free_cores_and_waits_passively_beside_busy_ones():
    cores = len(os.sched_getaffinity(0))
    free, busy = (lambda: float(os.cpu_count())), (lambda: os.cpu_count() - 1.0)
    assert training_thread_env(environ={}, idle_now=free) == {"GOMP_SPINCOUNT": "10000", "OMP_NUM_THREADS": str(cores)}
    assert training_thread_env(environ={}, idle_now=busy) == {"OMP_WAIT_POLICY": "PASSIVE", "OMP_NUM_THREADS": str(cores)}
    assert training_thread_env(environ={}, idle_now=lambda: None)["OMP_WAIT_POLICY"] == "PASSIVE"  # unknown: the safe one
    assert training_thread_env(2, environ={}, idle_now=free)["OMP_NUM_THREADS"] == str(max(1, cores // 2))
    assert training_thread_env(4 * cores, environ={}, idle_now=free)["OMP_NUM_THREADS"] == "1"
    for users in ({"OMP_WAIT_POLICY": "ACTIVE"}, {"GOMP_SPINCOUNT": "0"}):  # the user's wait setting wins, both ways
        assert training_thread_env(environ=users, idle_now=free) == {"OMP_NUM_THREADS": str(cores)}
        assert training_thread_env(environ=users, idle_now=busy) == {"OMP_NUM_THREADS": str(cores)}


def test_idle_cores_sees_a_busy_process():
    from benchmarks.contention import busy_process

    with busy_process():
        time.sleep(0.3)
        assert idle_cores(0.5) <= os.cpu_count() - 0.5


# Stands in for the training entry point: what a training process sees once it has imported torch and chosen its hardware.
PROBE = """
import os, torch
from dagster_pipes import open_dagster_pipes
from llm_assets.recipes import Recipe
from llm_assets.training import hardware
from llm_assets.training.common import hardware_for

with open_dagster_pipes() as pipes:
    hardware_for(Recipe(name="probe"))
    seen = {k: os.environ.get(k) for k in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "OMP_NUM_THREADS", "PYTHONUNBUFFERED")}
    pipes.report_custom_message({"metrics": {**seen, "threads": torch.get_num_threads()}})
"""


def launched_child_sees(tmp_path, launcher_kw: dict) -> dict:
    """Materialize an asset that launches TrainingLauncher's command and environment, whose interpreter is a script running PROBE."""
    (tmp_path / "probe.py").write_text(PROBE)
    python = tmp_path / "python"
    python.write_text(f'#!/bin/sh\nexec "{sys.executable}" "{tmp_path / "probe.py"}"\n')  # ignores the stage arguments
    python.chmod(0o755)
    seen = {}

    @asset
    def probed(context: AssetExecutionContext, launcher: TrainingLauncher) -> MaterializeResult:
        returncode, invocation = run_pipes_process(context, launcher.command("sft", 1), child_env(launcher.extra_env, 1))
        seen.update(invocation.get_custom_messages()[-1]["metrics"])
        return MaterializeResult()  # a Pipes step must end with a result

    assert materialize([probed], resources={"launcher": TrainingLauncher(python=str(python), **launcher_kw)}).success
    return seen


@pytest.mark.parametrize("idle, waits", [(0.0, ("PASSIVE", None)), (64.0, (None, "10000"))])
def test_launched_training_process_uses_every_core_and_waits_as_the_load_at_launch_asks(project_env, monkeypatch, idle, waits):
    for key in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "OMP_NUM_THREADS"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setattr(hardware, "idle_cores", lambda: idle)  # the machine's load, which the test cannot set
    seen = launched_child_sees(project_env, {})
    cores = len(os.sched_getaffinity(0))
    assert (seen["OMP_WAIT_POLICY"], seen["GOMP_SPINCOUNT"]) == waits
    assert seen["OMP_NUM_THREADS"] == str(cores) and seen["threads"] == cores and seen["PYTHONUNBUFFERED"] == "1"


def test_user_environment_and_extra_env_override_the_launcher_threading(project_env, monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # set where Dagster was started
    monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
    seen = launched_child_sees(project_env, {"extra_env": {"OMP_WAIT_POLICY": "ACTIVE"}})
    assert (seen["OMP_WAIT_POLICY"], seen["OMP_NUM_THREADS"], seen["threads"]) == ("ACTIVE", "1", 1)
