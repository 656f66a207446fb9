import torch

from llm_assets.recipes import Recipe
from llm_assets.training.common import hardware_for, trainer_args
from llm_assets.training.hardware import choose, cpu_has_native_bf16
from llm_assets.training.spec import StageSpec


def test_cpu_defaults_are_fp32_weights_without_checkpointing_and_bf16_only_where_native(monkeypatch):
    if torch.cuda.is_available():
        return
    hw = choose()
    assert (hw.device, hw.dtype, hw.gradient_checkpointing, hw.attn_implementation) == ("cpu", "float32", False, "sdpa")
    assert hw.autocast == ("bfloat16" if cpu_has_native_bf16() else "none")
    assert hw.threads >= 1
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
    if not torch.cuda.is_available():
        assert args["bf16"] is (hw.autocast == "bfloat16") and args["fp16"] is False
        assert args["gradient_checkpointing"] is False and args["use_cpu"] is True
    assert args["output_dir"] == str(tmp_path / "c") and args["save_steps"] == recipe.sft.save_steps
    assert torch.get_num_threads() == hw.threads
