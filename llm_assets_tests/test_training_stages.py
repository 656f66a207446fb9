"""Every training stage on a micro model, in process (the Pipes wrapper is tested end to end elsewhere)."""

import json
from pathlib import Path

import pytest
import torch

from llm_assets.recipes import parse_recipe
from llm_assets.training.worker import run_stage
from llm_assets.training.models import is_adapter, load_causal_lm, load_tokenizer
from llm_assets.training.report import Reporter
from llm_assets.training.spec import beside
from llm_assets_tests.helpers import demo_datasets, write_recipe


@pytest.fixture(scope="module")
def datasets(tmp_path_factory):
    return demo_datasets(tmp_path_factory.mktemp("data"))


def spec_for(tmp, stage, recipe_path, datasets, inputs=None, out=None):
    from llm_assets.training.spec import StageSpec

    recipe = parse_recipe(recipe_path).model_dump(mode="json")
    out = Path(out or tmp / stage)
    return StageSpec(stage=stage, recipe=recipe, output_dir=str(out), inputs=inputs or {}, datasets=datasets,
                     checkpoint_dir=str(tmp / f"ckpt-{out.name}"), options={"eval_limit": 16})


@pytest.fixture(scope="module")
def chain(tmp_path_factory, datasets):
    """base -> cpt -> sft -> reward on the micro recipe, shared by the tests below."""
    tmp = tmp_path_factory.mktemp("chain")
    recipe = write_recipe(tmp / "recipes")
    metrics = {}
    prev = {}
    for stage in ("base", "cpt", "sft"):
        metrics[stage] = run_stage(stage, spec_for(tmp, stage, recipe, datasets, prev), Reporter())
        prev = {"model": str(tmp / stage)}
    metrics["reward"] = run_stage("reward", spec_for(tmp, "reward", recipe, datasets, {"model": str(tmp / "sft")}), Reporter())
    return tmp, recipe, metrics


def test_base_builds_a_tokenizer_with_chat_template_eos_and_pad(chain):
    tmp, _, metrics = chain
    tok = load_tokenizer(tmp / "base")
    assert tok.eos_token == "<|end|>" and tok.pad_token == "<|pad|>" and tok.pad_token_id != tok.eos_token_id
    text = tok.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False, add_generation_prompt=True)
    assert text == "<|user|>\nhi<|end|>\n<|assistant|>\n"
    assert metrics["base"]["parameters"] > 0 and metrics["base"]["exact_match"] == 0.0


def test_each_stage_trains_and_measures_against_its_parent(chain):
    tmp, _, m = chain
    assert m["cpt"]["steps"] == 4 and m["cpt"]["eval_loss"] < m["cpt"]["parent_eval_loss"]
    assert m["sft"]["steps"] == 6 and m["sft"]["eval_loss"] < m["sft"]["parent_eval_loss"]
    # the demo's SFT and preference rows all fit the micro recipe's 64 tokens: nothing is cut or left out
    assert m["sft"]["examples_fit"] == m["sft"]["train_examples"] and m["sft"]["too_long_examples"] == 0
    r = m["reward"]
    assert r["steps"] == 4 and r["eval_pairs"] == 16 and r["train_pairs_used"] == r["train_pairs"] and r["ties"] == 0
    # the demo's chosen replies are the task's answers: 4 steps lift the head well above its untrained guess
    assert r["reward_accuracy"] >= 0.6 > r["parent_reward_accuracy"] and r["reward_margin"] > 0
    for stage in ("cpt", "sft", "reward"):
        assert (tmp / stage / "model.safetensors").exists() and json.loads(beside(tmp / stage, "metrics.json").read_text())["steps"] > 0
        assert not (tmp / stage / "metrics.json").exists()  # a run record, not part of the model's content
    assert any("loss" in h for h in m["sft"]["log_history"])


@pytest.mark.parametrize("algorithm", ["rloo", "grpo", "dpo"])
def test_rlhf_algorithms(chain, datasets, algorithm):
    tmp, _, _ = chain
    recipe = write_recipe(tmp / f"recipes-{algorithm}", rlhf={"algorithm": algorithm})
    inputs = {"model": str(tmp / "sft"), "reward": str(tmp / "reward")}
    m = run_stage("rlhf", spec_for(tmp, "rlhf", recipe, datasets, inputs, out=tmp / f"rlhf-{algorithm}"), Reporter())
    assert m["steps"] == 2 and m["algorithm"] == algorithm
    assert {"mean_reward", "sft_mean_reward", "win_rate_vs_sft", "kl_to_sft", "exact_match"} <= set(m)
    # the policy moved away from the SFT reference: KL is exactly 0 for an unchanged policy
    assert m["kl_to_sft"] > 0
    sft, policy = load_causal_lm(tmp / "sft").state_dict(), load_causal_lm(tmp / f"rlhf-{algorithm}").state_dict()
    assert sft.keys() == policy.keys() and any(not torch.equal(sft[k], policy[k]) for k in sft)
    if algorithm == "dpo":  # every demo pair fits 64 tokens whole
        assert m["train_pairs_fit"] == m["train_prompts"] and m["train_pairs_left_out"] == m["train_pairs_truncated"] == 0


def lora_parameters(model, r: int) -> int:
    """LoRA's A (r x in) and B (out x r) on every linear layer but the output head ('all-linear')."""
    return sum(r * (m.in_features + m.out_features) for name, m in model.named_modules()
               if isinstance(m, torch.nn.Linear) and not name.endswith("lm_head"))


def test_sft_truncation_left_trains_on_prompts_cut_from_the_left(chain, datasets):
    """max_length 16 is below the demo's median example: 'drop' would leave most rows out, 'left' keeps them."""
    tmp, _, _ = chain
    recipe = write_recipe(tmp / "recipes-left", data={"max_length": 16, "truncation": "left"}, sft={"max_steps": 2})
    m = run_stage("sft", spec_for(tmp, "sft", recipe, datasets, {"model": str(tmp / "cpt")}, out=tmp / "sft-left"), Reporter())
    assert m["steps"] == 2 and m["examples_truncated"] > m["train_examples"] / 3
    assert m["examples_fit"] + m["examples_truncated"] + m["too_long_examples"] == m["train_examples"]


@pytest.mark.parametrize("bits, layer, max_ratio", [(4, "Linear4bit", 0.15), (8, "Linear8bitLt", 0.30)])
def test_quantization_round_trip(chain, datasets, bits, layer, max_ratio):
    tmp, _, _ = chain
    recipe = write_recipe(tmp / f"recipes-q{bits}", quantization={"bits": bits})
    out = tmp / f"quantize-{bits}"
    m = run_stage("quantize", spec_for(tmp, "quantize", recipe, datasets, {"model": str(tmp / "sft")}, out=out), Reporter())
    assert m["bits"] == bits and m["quantized_bytes"] < m["unquantized_bytes"] and m["linear_bytes_ratio"] <= max_ratio
    assert abs(m["eval_loss_delta"]) < 0.5
    reloaded = load_causal_lm(out)  # the saved quantized checkpoint loads back and runs
    assert type(reloaded.model.layers[0].mlp.up_proj).__name__ == layer
    ids = torch.tensor([[1, 2, 3]])
    assert torch.isfinite(reloaded(ids).logits).all()


def test_lora_and_qlora_sft_write_adapters(chain, datasets):
    tmp, _, _ = chain
    for method in ("lora", "qlora"):
        recipe = write_recipe(tmp / f"recipes-{method}", sft={"method": method, "max_steps": 2}, lora={"r": 4, "alpha": 8})
        out = tmp / f"sft-{method}"
        m = run_stage("sft", spec_for(tmp, "sft", recipe, datasets, {"model": str(tmp / "cpt")}, out=out), Reporter())
        assert is_adapter(out) and m["steps"] == 2
        assert m["trainable_parameters"] == lora_parameters(load_causal_lm(tmp / "cpt"), r=4)
        merged = load_causal_lm(out)  # adapter applied to its recorded base and merged
        assert sum(p.numel() for p in merged.parameters()) > m["trainable_parameters"]
    # a reward model starts from the merged LoRA SFT model
    reward = run_stage("reward", spec_for(tmp, "reward", recipe, datasets, {"model": str(tmp / "sft-lora")}, out=tmp / "reward-lora"), Reporter())
    assert reward["steps"] == 4 and (tmp / "reward-lora" / "model.safetensors").exists()


def test_progress_reads_step_percent_and_eta_at_this_runs_pace():
    from llm_assets.training.report import progress

    assert progress(20, 60, 30.0, 20) == "step 20/60 (33%), ETA 1m00s"
    assert progress(45, 60, 10.0, 5) == "step 45/60 (75%), ETA 30s"  # resumed at 40: five steps took 10 s
    assert progress(60, 60, 90.0, 60) == "step 60/60 (100%)"
    assert progress(10, 10000, 36.0, 10) == "step 10/10000 (0%), ETA 9h59m"
