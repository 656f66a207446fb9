"""The speed-ups must not change the mathematics: packing with per-document attention gives the
unpacked loss, and gradient accumulation gives the large batch's update. (Resuming a killed run
matching an uninterrupted one is tested end to end in test_model_assets.)"""

import pytest
import torch
from datasets import Dataset
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast
from trl import SFTConfig, SFTTrainer
from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

from llm_assets.training.builtin import train_tokenizer
from llm_assets.training.tokens import sft_tokens


@pytest.fixture(scope="module")
def tiny():
    rows = [{"prompt": [{"role": "user", "content": f"say {' '.join(['word'] * (i % 7 + 1))} number {i}"}],
             "completion": f"number {i} " + "ok " * (i % 5)} for i in range(16)]
    tok: PreTrainedTokenizerFast = train_tokenizer([r["prompt"][0]["content"] + r["completion"] for r in rows], 300)
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                         num_attention_heads=4, max_position_embeddings=512, pad_token_id=tok.pad_token_id,
                                         attn_implementation="sdpa"))
    table, _ = sft_tokens(rows, tok, "tokenizer", 64)
    return model, tok, table.to_pylist()


def examples(rows):
    """As SFTTrainer prepares them: the completion mask folded into labels (-100 = no loss)."""
    return [{"input_ids": r["input_ids"], "labels": [t if m else -100 for t, m in zip(r["input_ids"], r["completion_mask"])]}
            for r in rows]


def mean_loss(model, batch):
    """use_cache=False as SFTTrainer.compute_loss sets it: with a cache object transformers skips the per-document mask."""
    labels = batch.pop("labels")
    logits = model(**batch, use_cache=False).logits[:, :-1]
    return torch.nn.functional.cross_entropy(logits.reshape(-1, logits.size(-1)), labels[:, 1:].reshape(-1), ignore_index=-100)


def test_packed_loss_with_per_document_attention_equals_the_padded_loss(tiny):
    model, tok, rows = tiny
    model.eval()
    padded = DataCollatorForLanguageModeling(pad_token_id=tok.pad_token_id)(examples(rows))
    packed = DataCollatorForLanguageModeling(pad_token_id=tok.pad_token_id, padding_free=True)(examples(rows))
    assert packed["input_ids"].shape[0] == 1 and "attention_mask" not in packed  # one row, documents told apart by position_ids
    with torch.no_grad():
        a, b = mean_loss(model, dict(padded)), mean_loss(model, dict(packed))
    assert abs(float(a) - float(b)) < 1e-4
    # and the documents really are separated: without position_ids the packed row is one long document
    with torch.no_grad():
        leaky = dict(packed)
        leaky.pop("position_ids")
        assert abs(float(mean_loss(model, leaky)) - float(a)) > 1e-3


def one_step(tiny, tmp_path, batch, accumulation):
    model, tok, rows = tiny
    copy = LlamaForCausalLM(model.config)
    copy.load_state_dict(model.state_dict())
    args = SFTConfig(output_dir=str(tmp_path / f"{batch}x{accumulation}"), max_steps=1, per_device_train_batch_size=batch,
                     gradient_accumulation_steps=accumulation, optim="sgd", learning_rate=1.0, lr_scheduler_type="constant",
                     use_cpu=True, bf16=False, gradient_checkpointing=False, report_to="none", save_strategy="no",
                     completion_only_loss=True, max_length=64, seed=0, data_seed=0, disable_tqdm=True)
    data = Dataset.from_list([{"input_ids": r["input_ids"], "completion_mask": r["completion_mask"]} for r in rows[:8]])
    trainer = SFTTrainer(model=copy, args=args, train_dataset=data, processing_class=tok)
    trainer.train()
    return {k: v.detach().clone() for k, v in copy.state_dict().items()}


def test_gradient_accumulation_4x2_matches_batch_8(tiny, tmp_path):
    """SGD with learning rate 1: the parameter change is the gradient itself, compared element-wise."""
    big, accumulated = one_step(tiny, tmp_path, 8, 1), one_step(tiny, tmp_path, 2, 4)
    start = tiny[0].state_dict()
    moved = max(float((big[k] - start[k]).abs().max()) for k in big)
    assert moved > 1e-3  # the step did something
    assert max(float((big[k] - accumulated[k]).abs().max()) for k in big) < 1e-4
