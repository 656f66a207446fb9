"""A model's shape counted from a real transformers model built on the meta device (no memory, no init time).

Counting the instantiated modules, not a formula, gets every architecture's details right (Qwen2's
q/k/v biases, tied or untied heads, grouped-query attention) and gives the exact linear layers that
bitsandbytes quantizes and PEFT's ``all-linear`` wraps. The config comes from a model's own
``config.json`` (a hub snapshot in the local HF cache) or, before anything is downloaded, from the
Llama shape a recipe states.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Protocol


class Architecture(Protocol):
    """The shape of a Llama-style decoder (``recipes.ArchitectureGroup`` is one)."""

    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int | None
    vocab_size: int
    tie_word_embeddings: bool


@dataclass(frozen=True)
class Shape:
    """What the memory formulas need of a causal LM, counted from its modules."""

    parameters: int  # all parameters of the causal LM (a tied head counted once)
    embedding: int  # input embedding
    lm_head: int  # output projection when untied; 0 when tied to the embedding
    decoder_linear: int  # weights of the decoder layers' nn.Linear modules: what 4/8-bit quantizes
    layers: int
    hidden: int
    intermediate: int
    heads: int
    kv_dim: int  # key/value width per token and layer (kv heads x head dim)
    vocab: int
    linears: tuple[tuple[str, int, int], ...]  # (name, in, out) of one decoder layer's linear modules
    source: str  # where the config came from, for the estimate's description

    @property
    def reward_parameters(self) -> int:
        """A sequence-classification model on this decoder: the LM head replaced by a one-output score head."""
        return self.parameters - self.lm_head + self.hidden  # a tied head is the embedding, which stays


def lora_parameters(shape: Shape, r: int, target_modules: list[str] | str) -> int:
    """Adapter parameters: r x (in + out) per wrapped linear; ``all-linear`` is every decoder linear (PEFT leaves the
    output layer out)."""
    names = {n for n, _, _ in shape.linears} if target_modules == "all-linear" else set(target_modules)
    return shape.layers * sum(r * (i + o) for n, i, o in shape.linears if n in names)


def modules_to_save_parameters(shape: Shape, modules: list[str]) -> int:
    """Parameters PEFT copies and trains in full beside the adapters (embed_tokens, lm_head)."""
    sizes = {"embed_tokens": shape.embedding, "lm_head": shape.lm_head or shape.embedding}
    return sum(sizes.get(m, 0) for m in modules)


def architecture_config(a: Architecture):
    """The LlamaConfig of a recipe's stated shape (what builtin models are built from)."""
    from transformers import LlamaConfig

    return LlamaConfig(vocab_size=a.vocab_size, hidden_size=a.hidden_size, intermediate_size=a.intermediate_size,
                       num_hidden_layers=a.num_layers, num_attention_heads=a.num_heads,
                       num_key_value_heads=a.num_kv_heads or a.num_heads, tie_word_embeddings=a.tie_word_embeddings)


def cached_config_file(repo_id: str, revision: str | None) -> Path | None:
    """``config.json`` of ``repo_id`` at ``revision`` when the local HF cache holds it; never goes online."""
    from huggingface_hub import try_to_load_from_cache

    found = try_to_load_from_cache(repo_id, "config.json", revision=revision)
    return Path(found) if isinstance(found, str) else None


def architecture_shape(a: Architecture) -> Shape:
    return _count(architecture_config(a).to_json_string(), "the recipe's model.architecture")


def config_file_shape(path: Path) -> Shape:
    from transformers import AutoConfig

    return _count(AutoConfig.from_pretrained(str(path)).to_json_string(), f"config.json {path}")


@lru_cache(maxsize=64)
def _count(config_json: str, source: str) -> Shape:
    """Build the model on the meta device and count it (cached: recipes sharing a shape count it once)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    raw = json.loads(config_json)
    config = AutoConfig.for_model(**raw)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    parameters = sum(p.numel() for p in model.parameters())
    embedding = model.get_input_embeddings().weight.numel()
    head = model.get_output_embeddings()
    untied = 0 if head is None or head.weight is model.get_input_embeddings().weight else head.weight.numel()
    layer_modules = [m for n, m in model.named_modules() if n.endswith(".layers.0")]
    layer = layer_modules[0]
    linears = tuple((n.rsplit(".", 1)[-1], m.in_features, m.out_features)
                    for n, m in layer.named_modules() if isinstance(m, torch.nn.Linear))
    text = config.get_text_config()
    head_dim = getattr(text, "head_dim", None) or text.hidden_size // text.num_attention_heads
    kv_heads = getattr(text, "num_key_value_heads", None) or text.num_attention_heads
    return Shape(
        parameters=parameters, embedding=embedding, lm_head=untied,
        decoder_linear=text.num_hidden_layers * sum(i * o for _, i, o in linears),
        layers=text.num_hidden_layers, hidden=text.hidden_size, intermediate=text.intermediate_size,
        heads=text.num_attention_heads, kv_dim=kv_heads * head_dim, vocab=text.vocab_size,
        linears=linears, source=source,
    )
