"""Device decisions, tested without a GPU: ``decide`` is a pure function of the recipe's request and the machine, so
every combination is checked here; on this CPU the stages still report exactly what a plain fp32, one-example-at-a-time
evaluation gives (the figures before evaluation became batched and device-aware)."""

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from transformers import AutoModelForCausalLM

from llm_assets.recipes import Recipe, parse_recipe
from llm_assets.training.worker import run_stage
from llm_assets.training.common import hardware_for, model_kwargs
from llm_assets.training.evaluate import generate
from llm_assets.training.hardware import Machine, Request, decide
from llm_assets.training.models import load_tokenizer
from llm_assets.training.report import Reporter
from llm_assets.training.spec import StageSpec
from llm_assets.training.tokens import encode_pairs, prompt_text
from llm_assets_tests.helpers import demo_datasets, write_recipe

CPU = Machine(cuda=False, threads=2)
H100 = Machine(cuda=True, name="NVIDIA H100", bf16=True, capability=(9, 0), memory_gb=80.0,
               packages={"flash_attn": "2.8.3", "liger_kernel": "0.6.2", "vllm": "0.11.0"}, threads=16)
BARE_H100 = Machine(cuda=True, name="NVIDIA H100", bf16=True, capability=(9, 0), memory_gb=80.0, threads=16)
T4 = Machine(cuda=True, name="Tesla T4", bf16=False, capability=(7, 5), memory_gb=16.0, packages={"flash_attn": "2.8.3"})


def test_a_cpu_keeps_fp32_sdpa_row_wise_packing_and_no_gpu_kernels():
    hw = decide(Request(packing=True, generates=True, parameters=8e9), CPU)
    assert (hw.device, hw.dtype, hw.autocast, hw.attn_implementation) == ("cpu", "float32", "none", "sdpa")
    assert not (hw.padding_free or hw.liger_kernel or hw.vllm or hw.gradient_checkpointing)  # not even for 8 B parameters
    assert hw.torch_device == "cpu" and hw.choices == (
        "dtype float32: bf16 is emulated on this CPU, slower than fp32",
        "sdpa: CPU (FlashAttention is CUDA only)",
        "padding_free False: sdpa has no varlen kernel: one packed bin per row",
        "liger_kernel False: not on a CPU (CUDA only)",
        "vllm False: not on a CPU (CUDA only); HF generate",
        "gradient_checkpointing False: CPU: recompute costs more time than the memory saves")
    native = Machine(cuda=False, bf16=True)
    assert (decide(Request(), native).dtype, decide(Request(), native).autocast) == ("float32", "bfloat16")
    assert decide(Request(deepspeed=True), native).autocast == "none"  # DeepSpeed casts the weights itself
    narrow = decide(Request(hidden_size=128), native)  # the tiny recipe: casts cost more than bf16 matmuls gain
    assert narrow.autocast == "none" and narrow.choices[0] == "dtype float32: hidden size 128: matmuls too small for bf16 casts to pay"
    assert decide(Request(hidden_size=256), native).autocast == "bfloat16"


def test_a_gpu_with_every_package_takes_the_whole_fast_path_and_says_why():
    hw = decide(Request(packing=True, generates=True, memory_gb=30.0, group="rlhf"), H100)
    assert (hw.device, hw.dtype, hw.autocast, hw.attn_implementation) == ("cuda", "bfloat16", "bfloat16", "flash_attention_2")
    assert hw.padding_free and hw.liger_kernel and hw.vllm and not hw.gradient_checkpointing
    assert "flash_attention_2: flash_attn 2.8.3 installed on CUDA" in hw.choices
    assert "liger_kernel True: liger_kernel 0.6.2 installed on CUDA" in hw.choices
    assert "vllm True: vllm 0.11.0 installed on CUDA" in hw.choices
    assert "gradient_checkpointing False: the stage's estimate without it, 30.0 GB, fits the GPU's 80.0 GB" in hw.choices
    assert hw.as_dict()["choices"] == list(hw.choices) or hw.as_dict()["choices"] == hw.choices  # stored in metrics


def test_a_gpu_without_the_packages_falls_back_and_says_which_is_missing():
    hw = decide(Request(packing=True, generates=True), BARE_H100)
    assert (hw.dtype, hw.attn_implementation, hw.padding_free, hw.liger_kernel, hw.vllm) == ("bfloat16", "sdpa", False, False, False)
    assert "sdpa: flash_attn not installed" in hw.choices
    assert "liger_kernel False: liger_kernel is not installed (pip install liger-kernel)" in hw.choices
    assert "vllm False: vllm is not installed (pip install vllm); HF generate" in hw.choices
    assert "vllm False: no online generation in this stage" in decide(Request(), H100).choices  # SFT, reward, DPO


def test_flash_attention_needs_ampere_and_16_bit_weights():
    t4 = decide(Request(packing=True), T4)
    assert (t4.dtype, t4.attn_implementation, t4.padding_free) == ("float16", "sdpa", False)
    assert "sdpa: flash_attn 2.8.3 needs compute capability 8.0, this GPU has 7.5" in t4.choices
    fp32 = decide(Request(dtype="float32"), H100)
    assert (fp32.attn_implementation, fp32.autocast) == ("sdpa", "none")
    assert "sdpa: FlashAttention 2 runs in bf16/fp16 only, the weights are float32" in fp32.choices


@pytest.mark.parametrize("want, expected", [
    (Request(memory_gb=90.0), True),  # the estimate without checkpointing does not fit 80 GB
    (Request(memory_gb=79.0), False),
    (Request(parameters=8e9), True),  # no estimate: the parameter-count rule
    (Request(parameters=5e8), False),
    (Request(memory_gb=90.0, gradient_checkpointing=False), False),  # the recipe wins
    (Request(memory_gb=1.0, gradient_checkpointing=True), True),
])
def test_gradient_checkpointing_on_a_gpu_follows_the_memory_estimate(want, expected):
    assert decide(want, H100).gradient_checkpointing is expected


def test_recipe_overrides_win_and_impossible_ones_name_the_key():
    off = decide(Request(use_liger_kernel=False, use_vllm=False, padding_free=True, generates=True, group="rlhf"), H100)
    assert (off.liger_kernel, off.vllm, off.padding_free) == (False, False, True)
    assert "liger_kernel False: rlhf.use_liger_kernel: false" in off.choices
    assert decide(Request(padding_free=True), CPU).padding_free  # allowed: TRL's one-row batches with a dense mask
    assert decide(Request(attn_implementation="eager"), H100).attn_implementation == "eager"
    with pytest.raises(ValueError, match=r"^sft\.use_liger_kernel: true, but not on a CPU"):
        decide(Request(use_liger_kernel=True), CPU)
    with pytest.raises(ValueError, match=r"^rlhf\.use_vllm: true, but vllm is not installed \(pip install vllm\)"):
        decide(Request(use_vllm=True, generates=True, group="rlhf"), BARE_H100)
    with pytest.raises(ValueError, match=r"^sft\.padding_free: false with data\.packing .* flash_attention_2"):
        decide(Request(padding_free=False, packing=True), H100)
    assert not decide(Request(padding_free=False), H100).padding_free  # unpacked rows: padded batches are fine


def test_hardware_for_reads_each_stage_group_and_the_recipe_check_names_the_field():
    recipe = Recipe(name="t", sft={"use_liger_kernel": True}, rlhf={"padding_free": True})
    with pytest.raises(ValueError, match=r"^sft\.use_liger_kernel: true"):
        hardware_for(recipe, recipe.sft)
    assert hardware_for(recipe, recipe.rlhf).padding_free  # the rlhf group's own value
    if not torch.cuda.is_available():
        rlhf = hardware_for(recipe, recipe.rlhf)
        assert "vllm False: not on a CPU (CUDA only); HF generate" in rlhf.choices  # RLOO generates
        assert "vllm False: no online generation in this stage" in hardware_for(recipe, recipe.reward).choices


def test_models_load_onto_the_process_device_unless_deepspeed_places_them(monkeypatch):
    gpu = decide(Request(), H100)
    assert model_kwargs(gpu) == {"dtype": torch.bfloat16, "attn_implementation": "flash_attention_2", "device_map": {"": "cuda:0"}}
    monkeypatch.setenv("LOCAL_RANK", "3")  # torchrun's rank 3 owns GPU 3
    assert model_kwargs(gpu)["device_map"] == {"": "cuda:3"} and model_kwargs(gpu, training=True)["device_map"] == {"": "cuda:3"}
    ds = decide(Request(deepspeed=True), H100)
    assert "device_map" not in model_kwargs(ds, training=True) and model_kwargs(ds)["device_map"] == {"": "cuda:3"}
    assert model_kwargs(decide(Request(), CPU)) == {"dtype": torch.float32, "attn_implementation": "sdpa"}


# --- on this CPU: the stages' figures are exactly those of a plain fp32 evaluation, one example at a time ---

@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A micro SFT model (base -> sft) and its stage's metrics."""
    tmp = tmp_path_factory.mktemp("device")
    datasets = demo_datasets(tmp)
    recipe = write_recipe(tmp / "recipes")
    metrics = {}
    for stage, parent in (("base", None), ("sft", tmp / "base")):
        spec = StageSpec(stage=stage, recipe=parse_recipe(recipe).model_dump(mode="json"), output_dir=str(tmp / stage),
                         inputs={"model": str(parent)} if parent else {}, datasets=datasets,
                         checkpoint_dir=str(tmp / f"ckpt-{stage}"), options={"eval_limit": 16})
        metrics[stage] = run_stage(stage, spec, Reporter())
    return tmp, parse_recipe(recipe), datasets, metrics


def one_by_one(model_dir: Path, rows, recipe) -> dict:
    """Held-out loss and exact match as plainly as possible: fp32 on the CPU, no batching, no padding."""
    tok, model = load_tokenizer(model_dir), AutoModelForCausalLM.from_pretrained(model_dir).eval()
    template, nll, n, preds = recipe.data.chat_template, 0.0, 0, []
    with torch.no_grad():
        for ids, start in encode_pairs(tok, [r["prompt"] for r in rows], [r["completion"] for r in rows], template,
                                       recipe.data.max_length):
            logp = F.log_softmax(model(torch.tensor([ids])).logits[0, :-1].float(), -1)
            lp = logp.gather(-1, torch.tensor(ids[1:]).unsqueeze(-1)).squeeze(-1)[max(start - 1, 0):]
            nll, n = nll - float(lp.sum()), n + lp.numel()
        for r in rows:
            enc = tok(prompt_text(tok, r["prompt"], template), return_tensors="pt", add_special_tokens=False)
            out = model.generate(**enc, max_new_tokens=24, do_sample=False, top_p=None, top_k=None,
                                 pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id)
            preds.append(tok.decode(out[0, enc["input_ids"].shape[1]:], skip_special_tokens=True).strip())
    return {"eval_loss": nll / n, "preds": preds,
            "exact_match": sum(p == r["completion"].strip() for p, r in zip(preds, rows)) / len(rows)}


def test_sft_figures_on_cpu_equal_a_plain_one_by_one_evaluation(trained):
    from llm_assets.training.data import load_rows

    tmp, recipe, datasets, metrics = trained
    rows = load_rows(datasets["sft"], "eval", 16)
    m = metrics["sft"]
    assert m["hardware"]["device"] == "cpu" and m["hardware"]["choices"]
    for prefix, model_dir in (("parent_", tmp / "base"), ("", tmp / "sft")):
        plain = one_by_one(model_dir, rows, recipe)
        assert m[f"{prefix}eval_loss"] == pytest.approx(plain["eval_loss"], abs=1e-6)
        assert m[f"{prefix}exact_match"] == plain["exact_match"]
        assert [s["got"] for s in metrics[model_dir.name]["samples"]] == plain["preds"][:5]  # the replies themselves


def test_batched_left_padded_generation_equals_one_by_one_greedy(trained):
    tmp, recipe, datasets, _ = trained
    from llm_assets.training.data import load_rows

    tok, model = load_tokenizer(tmp / "base"), AutoModelForCausalLM.from_pretrained(tmp / "base")
    torch.manual_seed(0)  # the micro models reply with nothing but newlines or at once EOS: wide random weights ramble
    for p in model.parameters():
        p.data.normal_(0, 0.5)
    prompts = [r["prompt"] for r in load_rows(datasets["sft"], "eval", 24)]
    lengths = {len(tok(prompt_text(tok, p, recipe.data.chat_template), add_special_tokens=False)["input_ids"]) for p in prompts}
    assert len(lengths) > 3  # the batch really is left-padded
    batched = generate(model, tok, prompts, recipe.data.chat_template, max_new_tokens=16, batch_size=32)
    single = [generate(model, tok, [p], recipe.data.chat_template, max_new_tokens=16, batch_size=1)[0] for p in prompts]
    assert batched == single and sum(map(bool, batched)) > len(prompts) / 2
    assert tok.padding_side == load_tokenizer(tmp / "base").padding_side  # generate restores the tokenizer


def test_qlora_reward_and_rlhf_train_on_4_bit_bases_and_merge_into_whole_weights(trained):
    tmp, _, datasets, _ = trained
    recipe = write_recipe(tmp / "recipes-qlora", sft={"method": "qlora"}, lora={"r": 4, "alpha": 8},
                          reward={"max_steps": 2}, rlhf={"max_steps": 1})
    parsed = parse_recipe(recipe).model_dump(mode="json")

    def stage(name, inputs):
        spec = StageSpec(stage=name, recipe=parsed, output_dir=str(tmp / f"q-{name}"), inputs=inputs, datasets=datasets,
                         checkpoint_dir=str(tmp / f"ckpt-q-{name}"), options={"eval_limit": 8})
        return run_stage(name, spec, Reporter())

    reward = stage("reward", {"model": str(tmp / "sft")})
    rlhf = stage("rlhf", {"model": str(tmp / "sft"), "reward": str(tmp / "q-reward")})
    assert reward["quantized_base"] and rlhf["quantized_base"] and reward["steps"] == 2 and rlhf["steps"] == 1
    for out in ("q-reward", "q-rlhf"):  # merged into the unquantized weights: a whole model, no adapter, no 4-bit layers
        saved = tmp / out
        assert (saved / "model.safetensors").exists() and not (saved / "adapter_config.json").exists()
        assert "quantization_config" not in (saved / "config.json").read_text()
    sft, policy = (AutoModelForCausalLM.from_pretrained(tmp / d).state_dict() for d in ("sft", "q-rlhf"))
    assert sft.keys() == policy.keys() and any(not torch.equal(sft[k], policy[k]) for k in sft)
    assert {"mean_reward", "kl_to_sft", "exact_match"} <= set(rlhf)


def test_flash_attention_by_name_is_refused_in_one_line_where_it_cannot_run():
    assert decide(Request(attn_implementation="flash_attention_2"), H100).attn_implementation == "flash_attention_2"
    with pytest.raises(ValueError, match=r"^model\.attn_implementation: flash_attention_2, but not on a CPU"):
        decide(Request(attn_implementation="flash_attention_2"), CPU)
    with pytest.raises(ValueError, match=r"^model\.attn_implementation: flash_attention_2, but flash_attn is not installed"):
        decide(Request(attn_implementation="flash_attention_2"), BARE_H100)
