"""The speed-ups must not change the mathematics: packing with per-document attention gives the
unpacked loss, scoring only labelled positions gives the same loss and gradients, and gradient
accumulation gives the large batch's update. (Resuming a killed run matching an uninterrupted one
is tested end to end in test_model_assets.)"""

import pytest
import torch
from datasets import Dataset
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast
from trl import SFTConfig, SFTTrainer
from trl.data_utils import pack_dataset
from trl.kernels import chunked_logprob
from trl.trainer import utils as trl_utils
from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

from llm_assets.training.builtin import train_tokenizer
from llm_assets.training.packing import PackedRowsCollator, score_trainable_positions_only
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


def bins(rows, length=64):
    """Best-fit-decreasing bins of ``length`` tokens, as SFTTrainer packs them."""
    return pack_dataset(Dataset.from_list(examples(rows)), length).to_list()


@pytest.mark.parametrize("layout", ["rows", "one_row"])
def test_packed_loss_with_per_document_attention_equals_the_padded_loss(tiny, layout):
    """rows: our collator, one bin per row (CPU / SDPA); one_row: TRL's padding-free batch (varlen kernels)."""
    model, tok, rows = tiny
    model.eval()
    padded = DataCollatorForLanguageModeling(pad_token_id=tok.pad_token_id)(examples(rows))
    packed_bins = bins(rows)
    assert len(packed_bins) < len(rows) and any(len(b["seq_lengths"]) > 1 for b in packed_bins)
    if layout == "rows":
        packed = PackedRowsCollator(pad_token_id=tok.pad_token_id)(packed_bins)
        assert packed["input_ids"].shape == (len(packed_bins), max(len(b["input_ids"]) for b in packed_bins))
    else:
        packed = DataCollatorForLanguageModeling(pad_token_id=tok.pad_token_id, padding_free=True)(packed_bins)
        assert packed["input_ids"].shape[0] == 1
    assert "attention_mask" not in packed  # documents are told apart by position_ids
    with torch.no_grad():
        a, b = mean_loss(model, dict(padded)), mean_loss(model, dict(packed))
    assert abs(float(a) - float(b)) < 1e-4
    # and the documents really are separated: without position_ids a bin is one long document
    with torch.no_grad():
        leaky = dict(packed)
        leaky.pop("position_ids")
        assert abs(float(mean_loss(model, leaky)) - float(a)) > 1e-3


def fused_loss_and_grads(model, batch):
    model.zero_grad()
    out = model(**batch, fused_lm_head=True)
    out.loss.backward()
    return out.loss.item(), {n: p.grad.clone() for n, p in model.named_parameters()}


def test_scoring_only_labelled_positions_keeps_loss_and_gradients(tiny, monkeypatch):
    """TRL scores every position on a CPU; we project only the labelled ones (a few % of them with completion-only loss)."""
    model, tok, rows = tiny
    copy = LlamaForCausalLM(model.config)
    copy.load_state_dict(model.state_dict())
    trl_utils.add_fused_lm_head(copy)
    batch = PackedRowsCollator(pad_token_id=tok.pad_token_id)(bins(rows))
    labelled = int((batch["labels"][:, 1:] != -100).sum())
    scored = []
    apply = trl_utils._ChunkedLogProbFunction.apply
    monkeypatch.setattr(trl_utils._ChunkedLogProbFunction, "apply", lambda hidden, *a: scored.append(hidden.shape[0]) or apply(hidden, *a))
    monkeypatch.setattr(trl_utils, "_use_triton", chunked_logprob._use_triton)  # TRL's own rule, whatever ran before; restored after

    full_loss, full_grads = fused_loss_and_grads(copy, dict(batch))
    assert score_trainable_positions_only()
    compact_loss, compact_grads = fused_loss_and_grads(copy, dict(batch))
    assert scored == [batch["labels"][:, 1:].numel(), labelled] and labelled < scored[0] / 2
    assert abs(full_loss - compact_loss) < 1e-6
    assert max(float((full_grads[n] - compact_grads[n]).abs().max()) for n in full_grads) < 1e-6


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
