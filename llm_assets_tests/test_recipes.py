import pytest

from llm_assets.recipes import RecipeError, load_all_recipes, parse_recipe
from llm_assets.training.memory import GB, estimate_recipe, zero_model_states


def test_shipped_recipes_validate_and_fit_their_gpus():
    recipes = load_all_recipes()
    assert {"tiny", "llama31-8b-qlora", "qwen25-05b-zero3"} <= set(recipes)
    llama = estimate_recipe(recipes["llama31-8b-qlora"])
    assert 7.9e9 < llama.parameters < 8.1e9  # Llama 3.1 8B from its architecture
    assert llama.total_gb <= 24
    qwen = estimate_recipe(recipes["qwen25-05b-zero3"])
    assert 0.48e9 < qwen.parameters < 0.51e9 and qwen.zero_stage == 3 and qwen.devices == 8


def test_unknown_key_names_file_key_and_allowed_keys(tmp_path):
    path = tmp_path / "typo.yaml"
    path.write_text("sft:\n  learnig_rate: 0.1\n")
    with pytest.raises(RecipeError) as e:
        parse_recipe(path)
    msg = str(e.value)
    assert str(path) in msg and "sft.learnig_rate" in msg and "Did you mean 'learning_rate'" in msg
    assert "per_device_batch_size" in msg  # the allowed keys are listed


def test_unknown_top_level_group(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text("trainer: {}\n")
    with pytest.raises(RecipeError, match=r"unknown key 'trainer'.*Allowed keys here: .*sft"):
        parse_recipe(path)


def test_hub_model_must_be_pinned(tmp_path):
    path = tmp_path / "hub.yaml"
    path.write_text("model:\n  base: org/model\n  revision: main\n")
    with pytest.raises(RecipeError, match="40-character commit hash"):
        parse_recipe(path)


def test_wrong_type_names_the_key(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text("sft:\n  max_steps: many\n")
    with pytest.raises(RecipeError, match=r"r.yaml: key 'sft.max_steps'"):
        parse_recipe(path)


def test_hash_is_stable_under_formatting_and_changes_with_values(tmp_path):
    a = tmp_path / "a.yaml"
    a.write_text("sft:\n  learning_rate: 0.001\n  max_steps: 10\n")
    h1 = parse_recipe(a).recipe_hash
    a.write_text("# a comment\nsft: {max_steps: 10, learning_rate: 1.0e-3}\n")
    assert parse_recipe(a).recipe_hash == h1
    a.write_text("sft: {max_steps: 11, learning_rate: 1.0e-3}\n")
    assert parse_recipe(a).recipe_hash != h1


def test_zero_paper_model_state_figures():
    """ZeRO paper, Figure 1: Psi = 7.5 B, K = 12, N_d = 64."""
    psi, n = 7.5e9, 64
    figures = {0: 120.0, 1: 31.4, 2: 16.6, 3: 1.9}
    for stage, expected in figures.items():
        total = zero_model_states(psi, zero_stage=stage, n_devices=n).total / GB
        assert round(total, 1) == expected, (stage, total)


def test_recipe_exceeding_gpu_memory_is_rejected_with_numbers(tmp_path):
    path = tmp_path / "big.yaml"
    path.write_text(
        "model:\n  base: meta-llama/Llama-3.1-8B-Instruct\n  revision: 0e9e39f249a16976918f6564b8830bc894c89659\n"
        "  dtype: bfloat16\n  architecture: {hidden_size: 4096, intermediate_size: 14336, num_layers: 32, num_heads: 32,"
        " num_kv_heads: 8, vocab_size: 128256, tie_word_embeddings: false}\n"
        "sft: {method: full}\nresources: {gpus: 1, gpu_memory_gb: 24}\n"
    )
    with pytest.raises(RecipeError) as e:
        parse_recipe(path)
    msg = str(e.value)
    assert "gpu_memory_gb = 24" in msg and "GB per device" in msg and "optimizer" in msg
