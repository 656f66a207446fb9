"""Builtin models: Llama-architecture decoders with fresh weights and a BPE tokenizer trained on the corpora.

``builtin:tiny`` takes the recipe's architecture and sizes its embedding to the tokenizer. The named
real-size models (``builtin:llama-125m``, ``builtin:llama-1b``: ``recipes.BUILTIN_SHAPES``) keep every
``vocab_size`` row, as a hub checkpoint has rows its tokenizer never emits, so their parameter count,
memory and FLOPs are those of the shape they are named after; they are saved in bf16, as hub
checkpoints are (a 1 B model in fp32 would be 4 GB to write and copy between stages).
Deterministic for the same texts, shape and seed, with a chat template whose end-of-turn token
is EOS (so generation stops where a reply ends) and a dedicated PAD token.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from llm_assets.recipes import BUILTIN_SHAPES, BUILTIN_TINY, ArchitectureGroup, ModelGroup

PAD, BOS, EOT = "<|pad|>", "<|bos|>", "<|end|>"
ROLE_TOKENS = ["<|system|>", "<|user|>", "<|assistant|>"]
CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}<|end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)


def render_chat(messages: list[dict[str, str]]) -> str:
    """CHAT_TEMPLATE in Python, to train the tokenizer on text exactly as training will render it."""
    return "".join(f"<|{m['role']}|>\n{m['content']}{EOT}\n" for m in messages)


def train_tokenizer(texts: Iterable[str], vocab_size: int) -> PreTrainedTokenizerFast:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    specials = [PAD, BOS, EOT, *ROLE_TOKENS]
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=specials, min_frequency=2,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(sorted(set(texts)), trainer=trainer)  # sorted: the same corpus gives the same merges
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=BOS, eos_token=EOT, pad_token=PAD,
                                   additional_special_tokens=ROLE_TOKENS)
    fast.chat_template = CHAT_TEMPLATE
    fast.padding_side = "right"
    return fast


def llama_config(arch: ArchitectureGroup, tokenizer: PreTrainedTokenizerFast, max_positions: int,
                 vocab_size: int | None = None) -> LlamaConfig:
    """``vocab_size``: embedding rows, at least the tokenizer's (default: exactly the tokenizer's)."""
    return LlamaConfig(
        vocab_size=max(vocab_size or 0, len(tokenizer)), hidden_size=arch.hidden_size, intermediate_size=arch.intermediate_size,
        num_hidden_layers=arch.num_layers, num_attention_heads=arch.num_heads,
        num_key_value_heads=arch.num_kv_heads or arch.num_heads, max_position_embeddings=max_positions,
        tie_word_embeddings=arch.tie_word_embeddings, bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
    )


def build_model(arch: ArchitectureGroup, tokenizer: PreTrainedTokenizerFast, max_positions: int, seed: int,
                vocab_size: int | None = None) -> LlamaForCausalLM:
    config = llama_config(arch, tokenizer, max_positions, vocab_size)
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)  # on the CPU whatever the machine: the same seed gives the same weights everywhere
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    return model


def meta_parameter_count(config: LlamaConfig) -> int:
    """Parameters of the model ``config`` describes, instantiated on the meta device (no memory, no init time)."""
    with torch.device("meta"):
        model = LlamaForCausalLM(config)
    return sum(p.numel() for p in model.parameters())


def build_tiny(texts: Iterable[str], arch: ArchitectureGroup, max_positions: int, seed: int, output_dir: Path) -> dict:
    tokenizer = train_tokenizer(texts, arch.vocab_size)
    model = build_model(arch, tokenizer, max_positions, seed)
    model.save_pretrained(output_dir)
    tokenizer.save_pretrained(output_dir)
    return {"parameters": sum(p.numel() for p in model.parameters()), "vocab_size": len(tokenizer)}


def build_builtin(model: ModelGroup, texts: Iterable[str], max_positions: int, output_dir: Path) -> dict:
    """The builtin model ``model.base`` names, with its tokenizer, saved to ``output_dir``; its size figures."""
    if model.base == BUILTIN_TINY:
        return build_tiny(texts, model.architecture, max_positions, model.seed, output_dir)
    if model.base not in BUILTIN_SHAPES:
        raise ValueError(f"model.base {model.base!r} is not a builtin model; builtin models: {BUILTIN_TINY}, {', '.join(BUILTIN_SHAPES)}")
    arch = BUILTIN_SHAPES[model.base]
    tokenizer = train_tokenizer(texts, arch.vocab_size)
    built = build_model(arch, tokenizer, max_positions, model.seed, vocab_size=arch.vocab_size)
    parameters = sum(p.numel() for p in built.parameters())
    built.to(torch.bfloat16).save_pretrained(output_dir)
    tokenizer.save_pretrained(output_dir)
    return {"parameters": parameters, "vocab_size": len(tokenizer), "embedding_rows": built.config.vocab_size}
