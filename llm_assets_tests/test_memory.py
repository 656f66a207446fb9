"""Per-stage memory estimates: parameter counts from real (meta-device) models, what each stage holds as TRL holds
it, and the recipe check refusing the stage that does not fit."""

import json

import pytest
import torch
import yaml
from huggingface_hub import constants
from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

from llm_assets.recipes import ArchitectureGroup, RecipeError, parse_recipe
from llm_assets.stage_memory import stage_memory, training_setup
from llm_assets.training.memory import estimate
from llm_assets.training.memory.shape import architecture_shape, config_file_shape
from llm_assets_tests.helpers import MICRO, deep_update

ARCH = {"hidden_size": 256, "intermediate_size": 704, "num_layers": 3, "num_heads": 8, "num_kv_heads": 2,
        "vocab_size": 1000, "tie_word_embeddings": False}
# A 1.2 B-parameter Llama shape on one GPU: big enough that every part of the estimate shows.
GPU = {"model": {"base": "builtin:tiny", "dtype": "bfloat16",
                 "architecture": {"hidden_size": 2048, "intermediate_size": 5632, "num_layers": 16, "num_heads": 16,
                                  "num_kv_heads": 4, "vocab_size": 32000}},
       "data": {"max_length": 512}, "resources": {"gpus": 1}}


def recipe(tmp_path, name="r", **changes):
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(deep_update(deep_update(MICRO, GPU), changes)))
    return parse_recipe(path)


def test_parameter_count_is_the_instantiated_models():
    arch = ArchitectureGroup(**ARCH)
    real = LlamaForCausalLM(LlamaConfig(vocab_size=1000, hidden_size=256, intermediate_size=704, num_hidden_layers=3,
                                        num_attention_heads=8, num_key_value_heads=2, tie_word_embeddings=False))
    shape = architecture_shape(arch)
    assert shape.parameters == sum(p.numel() for p in real.parameters())
    assert shape.lm_head == 1000 * 256 and shape.kv_dim == 2 * 32
    quantizable = sum(m.weight.numel() for n, m in real.named_modules() if isinstance(m, torch.nn.Linear) and ".layers." in n)
    assert shape.decoder_linear == quantizable


def test_a_config_json_counts_what_the_architecture_block_cannot(tmp_path):
    """Qwen2 has q/k/v biases: its config.json counts them, as the real model has them."""
    config = Qwen2Config(vocab_size=1000, hidden_size=256, intermediate_size=704, num_hidden_layers=3,
                         num_attention_heads=8, num_key_value_heads=2, tie_word_embeddings=True)
    config.save_pretrained(tmp_path)
    shape = config_file_shape(tmp_path / "config.json")
    assert shape.parameters == sum(p.numel() for p in Qwen2ForCausalLM(config).parameters())
    assert shape.parameters > architecture_shape(ArchitectureGroup(**{**ARCH, "tie_word_embeddings": True})).parameters


def test_hub_recipe_reads_the_cached_config_at_its_revision(tmp_path, monkeypatch):
    revision = "a" * 40
    snapshot = tmp_path / "hub" / "models--org--model" / "snapshots" / revision
    snapshot.mkdir(parents=True)
    Qwen2Config(vocab_size=1000, hidden_size=256, intermediate_size=704, num_hidden_layers=3, num_attention_heads=8,
                num_key_value_heads=2).save_pretrained(snapshot)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    hub = {"model": {"base": "org/model", "revision": revision, "architecture": ARCH}}
    cached = stage_memory(recipe(tmp_path, "cached", **hub), "sft")
    assert "config.json" in cached.source and revision in cached.source
    other = {"model": {"base": "org/model", "revision": "b" * 40, "architecture": ARCH}}
    assert "model.architecture" in stage_memory(recipe(tmp_path, "uncached", **other), "sft").source


def test_rloo_generation_grows_with_its_rollout_not_with_num_generations(tmp_path):
    """TRL counts per_device_batch_size in completions: num_generations splits the rollout, it does not multiply it;
    the rollout is per_device_batch_size x gradient_accumulation_steps sequences of prompt + max_new_tokens."""
    base = stage_memory(recipe(tmp_path, rlhf={"max_new_tokens": 32, "gradient_accumulation_steps": 8}), "rlhf")
    longer = stage_memory(recipe(tmp_path, rlhf={"max_new_tokens": 512, "gradient_accumulation_steps": 8}), "rlhf")
    more = stage_memory(recipe(tmp_path, rlhf={"max_new_tokens": 32, "gradient_accumulation_steps": 8,
                                               "num_generations": 4}), "rlhf")
    assert longer.device_gb > base.device_gb
    assert more.device_gb == base.device_gb


def test_full_rlhf_holds_a_reference_and_lora_rlhf_does_not(tmp_path):
    full = stage_memory(recipe(tmp_path, "full"), "rlhf")
    lora = stage_memory(recipe(tmp_path, "lora", sft={"method": "lora"}), "rlhf")
    assert full.phase == "train" and full.parts["reference"] == pytest.approx(full.parts["weights"])
    assert "reference" not in lora.parts
    no_kl = stage_memory(recipe(tmp_path, "beta0", rlhf={"beta": 0.0}), "rlhf")
    assert "reference" not in no_kl.parts


def test_qlora_reward_and_rlhf_hold_4_bit_bases(tmp_path):
    lora, qlora = recipe(tmp_path, "l", sft={"method": "lora"}), recipe(tmp_path, "q", sft={"method": "qlora"})
    for stage in ("sft", "reward", "rlhf"):
        sixteen, four = (estimate(training_setup(r, stage)).weights_gb for r in (lora, qlora))
        assert four < 0.4 * sixteen, stage
    assert stage_memory(qlora, "rlhf").parts["reward model"] < 0.4 * stage_memory(lora, "rlhf").parts["reward model"]


def test_dpo_trains_on_chosen_and_rejected(tmp_path):
    dpo = stage_memory(recipe(tmp_path, "dpo", rlhf={"algorithm": "dpo", "per_device_batch_size": 4}), "rlhf")
    sft = stage_memory(recipe(tmp_path, "sft", sft={"per_device_batch_size": 8}), "sft")
    assert dpo.parts["activations"] == pytest.approx(sft.parts["activations"])  # 4 pairs = 8 sequences


def test_a_recipe_that_fits_for_sft_but_not_rlhf_is_refused_naming_rlhf(tmp_path):
    online = {"rlhf": {"per_device_batch_size": 8, "max_new_tokens": 128, "gradient_checkpointing": False},
              "sft": {"gradient_checkpointing": False}}
    probe = recipe(tmp_path, "probe", **online)
    sft, rlhf = stage_memory(probe, "sft").device_gb, stage_memory(probe, "rlhf").device_gb
    assert sft < rlhf
    path = tmp_path / "tight.yaml"
    limit = round((sft + rlhf) / 2, 1)
    changes = deep_update(deep_update(GPU, online), {"resources": {"gpu_memory_gb": limit}})
    path.write_text(yaml.safe_dump(deep_update(MICRO, changes)))
    with pytest.raises(RecipeError) as e:
        parse_recipe(path)
    msg = str(e.value)
    assert msg.startswith(f"{path}: stage 'rlhf' needs ") and f"resources.gpu_memory_gb = {limit:g}" in msg
    assert "\n" not in msg and "rlhf.per_device_batch_size" in msg


def test_checkpointing_is_chosen_only_when_the_estimate_without_it_does_not_fit(tmp_path):
    free = recipe(tmp_path, "free")
    without = stage_memory(free, "sft", gradient_checkpointing=False).device_gb
    with_ = stage_memory(free, "sft", gradient_checkpointing=True).device_gb
    assert with_ < without
    tight = recipe(tmp_path, "tight", resources={"gpu_memory_gb": round((with_ + without) / 2, 1)})
    assert stage_memory(tight, "sft").device_gb == pytest.approx(with_)
    assert stage_memory(free, "sft").device_gb == pytest.approx(without)


def test_cpu_recipes_need_no_gpu_and_count_everything_on_the_host(tmp_path):
    path = tmp_path / "cpu.yaml"
    path.write_text(yaml.safe_dump(MICRO))
    m = stage_memory(parse_recipe(path), "sft")
    assert m.gpus == 0 and m.device_gb == 0.0 and m.host_gb > sum(m.parts.values())
    assert json.dumps(m.parts)  # plain numbers, for launchers and reports
