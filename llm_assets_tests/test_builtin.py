"""Real-size builtin models: the name fixes a realistic Llama shape, the built model has exactly that shape
(every embedding row, whatever the tokenizer learned), and the memory estimator counts the same parameters."""

import json

import pytest
import torch
from safetensors import safe_open
from transformers import AutoConfig

from llm_assets.demo_data import corpus_rows, sft_rows
from llm_assets.recipes import BUILTIN_SHAPES, ModelGroup, RecipeError, parse_recipe
from llm_assets.training.builtin import build_builtin, llama_config, meta_parameter_count, render_chat, train_tokenizer
from llm_assets.training.memory import parameter_count


def demo_texts() -> list[str]:
    chats = [render_chat([{"role": "user", "content": r["prompt"]}, {"role": "assistant", "content": r["completion"]}])
             for r in sft_rows(200, 0)]
    return [r["text"] for r in corpus_rows(200, 3)] + chats


@pytest.mark.parametrize("name, low, high", [("builtin:llama-125m", 120e6, 130e6), ("builtin:llama-1b", 1.0e9, 1.1e9)])
def test_named_shape_on_the_meta_device_has_the_parameters_its_name_says_and_the_estimator_counts(name, low, high):
    arch = ModelGroup(base=name).architecture
    assert arch == BUILTIN_SHAPES[name]
    tok = train_tokenizer(demo_texts(), arch.vocab_size)
    assert len(tok) < arch.vocab_size  # the demo corpus is small: the embedding keeps the rows the tokenizer did not fill
    counted = meta_parameter_count(llama_config(arch, tok, 512, vocab_size=arch.vocab_size))
    assert counted == parameter_count(arch) and low < counted < high


def test_llama_125m_is_built_with_every_embedding_row_in_bf16(tmp_path):
    info = build_builtin(ModelGroup(base="builtin:llama-125m", seed=7), demo_texts(), 512, tmp_path)
    arch = BUILTIN_SHAPES["builtin:llama-125m"]
    assert info["parameters"] == parameter_count(arch) and info["embedding_rows"] == arch.vocab_size > info["vocab_size"]
    config = AutoConfig.from_pretrained(tmp_path)
    assert (config.vocab_size, config.hidden_size, config.num_hidden_layers) == (arch.vocab_size, 768, 12)
    with safe_open(tmp_path / "model.safetensors", "pt") as f:
        dtypes = {f.get_slice(k).get_dtype() for k in f.keys()}
        embed = f.get_tensor("model.embed_tokens.weight")
    assert dtypes == {"BF16"} and embed.shape == (arch.vocab_size, 768)
    assert json.loads((tmp_path / "tokenizer_config.json").read_text())["eos_token"] == "<|end|>"
    # the same texts and model.seed give the same weights (base_model's version), another seed others
    build_builtin(ModelGroup(base="builtin:llama-125m", seed=8), demo_texts(), 512, tmp_path / "seed8")
    with safe_open(tmp_path / "seed8" / "model.safetensors", "pt") as f:
        assert not torch.equal(f.get_tensor("model.embed_tokens.weight"), embed)
    build_builtin(ModelGroup(base="builtin:llama-125m", seed=7), demo_texts(), 512, tmp_path / "again")
    assert (tmp_path / "again" / "model.safetensors").read_bytes() == (tmp_path / "model.safetensors").read_bytes()


def recipe_file(tmp_path, model: str) -> str:
    path = tmp_path / "r.yaml"
    path.write_text(f"model:\n{model}")
    return path


def test_the_name_fills_in_the_architecture_and_an_equal_one_is_the_same_recipe(tmp_path):
    omitted = parse_recipe(recipe_file(tmp_path, "  base: builtin:llama-1b\n"))
    assert omitted.model.architecture == BUILTIN_SHAPES["builtin:llama-1b"]
    arch = "".join(f"    {k}: {str(v).lower() if isinstance(v, bool) else v}\n"
                   for k, v in BUILTIN_SHAPES["builtin:llama-1b"].model_dump().items())
    stated = parse_recipe(recipe_file(tmp_path, f"  base: builtin:llama-1b\n  architecture:\n{arch}"))
    assert stated.recipe_hash == omitted.recipe_hash


def test_a_differing_architecture_is_refused_in_one_line_naming_the_key(tmp_path):
    with pytest.raises(RecipeError) as e:
        parse_recipe(recipe_file(tmp_path, "  base: builtin:llama-125m\n  architecture:\n    num_layers: 2\n"))
    message = str(e.value)
    assert "\n" not in message and "r.yaml" in message and "'model.architecture'" in message and "builtin:tiny" in message
    with pytest.raises(RecipeError, match="builtin:llama-125m, builtin:llama-1b"):
        parse_recipe(recipe_file(tmp_path, "  base: builtin:llama-7b\n"))
    with pytest.raises(RecipeError, match="unknown key 'model.architecture.layers'"):  # a typo is named, not hidden
        parse_recipe(recipe_file(tmp_path, "  base: builtin:llama-125m\n  architecture:\n    layers: 12\n"))
