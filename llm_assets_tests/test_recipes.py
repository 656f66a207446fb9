import ast
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from llm_assets.recipes import RecipeError, estimate_memory, load_all_recipes, parse_recipe
from llm_assets.training.memory import GB, zero_model_states
from llm_assets_tests.conftest import PROJECT
from llm_assets_tests.helpers import MICRO, deep_update


def test_shipped_recipes_validate_and_fit_their_gpus():
    recipes = load_all_recipes()
    assert {"tiny", "llama31-8b-qlora", "qwen25-05b-zero3"} <= set(recipes)
    llama = estimate_memory(recipes["llama31-8b-qlora"])
    assert 7.9e9 < llama.parameters < 8.1e9  # Llama 3.1 8B from its architecture
    assert llama.total_gb <= 24
    qwen = estimate_memory(recipes["qwen25-05b-zero3"])
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


def write_raw(path: Path, **changes) -> Path:
    """A recipe file written without validating it (it may be meant to fail)."""
    path.write_text(yaml.safe_dump(deep_update(MICRO, changes)))
    return path


def deepspeed_config(path: Path, stage: int) -> str:
    """A DeepSpeed config that sets ``stage``, under whatever name the test gives it."""
    config = json.loads((PROJECT / "configs" / "deepspeed" / "zero2.json").read_text())
    config["zero_optimization"]["stage"] = stage
    path.write_text(json.dumps(config))
    return str(path)


def test_missing_deepspeed_file_names_the_key_and_the_shipped_configs(tmp_path):
    path = write_raw(tmp_path / "ds.yaml", distributed={"processes": 2, "deepspeed": "configs/deepspeed/zero_2.json"})
    with pytest.raises(RecipeError) as e:
        parse_recipe(path)
    msg = str(e.value)
    assert msg.startswith(f"{path}: key 'distributed.deepspeed': ") and "zero_2.json does not exist" in msg
    assert "configs/deepspeed/zero2.json, configs/deepspeed/zero3.json, configs/deepspeed/zero3_offload.json" in msg


@pytest.mark.parametrize("content", ["{not json", json.dumps({"zero_optimization": {"stage": 4}}), "[]"])
def test_deepspeed_file_without_a_valid_stage_is_a_recipe_error(tmp_path, content):
    config = tmp_path / "custom.json"
    config.write_text(content)
    path = write_raw(tmp_path / "ds.yaml", distributed={"processes": 2, "deepspeed": str(config)})
    with pytest.raises(RecipeError, match=r"ds.yaml: key 'distributed.deepspeed': .*custom.json"):
        parse_recipe(path)


def test_qlora_zero_stage_is_read_from_the_config_not_its_name(tmp_path):
    """A stage-3 config under any name is refused for QLoRA; a stage-2 one is accepted whatever it is called."""
    qlora = {"sft": {"method": "qlora"}}
    renamed = deepspeed_config(tmp_path / "big.json", stage=3)
    path = write_raw(tmp_path / "q3.yaml", **qlora, distributed={"processes": 2, "deepspeed": renamed})
    with pytest.raises(RecipeError, match=r"q3.yaml: key 'distributed.deepspeed': .*big.json is ZeRO stage 3.*zero2.json"):
        parse_recipe(path)
    lookalike = deepspeed_config(tmp_path / "zero3_but_stage2.json", stage=2)
    path = write_raw(tmp_path / "q2.yaml", **qlora, distributed={"processes": 2, "deepspeed": lookalike})
    assert estimate_memory(parse_recipe(path)).zero_stage == 2


def test_every_broken_recipe_is_listed_at_once(tmp_path):
    write_raw(tmp_path / "good.yaml")
    write_raw(tmp_path / "typo.yaml", sft={"learnig_rate": 0.1})
    write_raw(tmp_path / "ds.yaml", distributed={"processes": 2, "deepspeed": "nowhere.json"})
    with pytest.raises(RecipeError) as e:
        load_all_recipes(tmp_path)
    lines = str(e.value).splitlines()
    assert len(lines) == 2
    assert lines[0].startswith(str(tmp_path / "ds.yaml")) and lines[1].startswith(str(tmp_path / "typo.yaml"))


def imported_modules(path: Path, package: Path) -> set[str]:
    """Every llm_assets module a source file imports, wherever the import sits (function bodies included)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        names = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module, *(f"{node.module}.{a.name}" for a in node.names)]
        for name in names:
            parts = name.split(".")
            if parts[0] == "llm_assets" and (package.parent.joinpath(*parts).with_suffix(".py").is_file()
                                             or package.parent.joinpath(*parts, "__init__.py").is_file()):
                found.add(name)
    return found


def test_no_two_modules_import_each_other():
    package = PROJECT / "llm_assets"
    graph = {}
    for path in package.rglob("*.py"):
        parts = path.relative_to(PROJECT).with_suffix("").parts
        module = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        graph[module] = imported_modules(path, package)
    pairs = sorted({tuple(sorted((a, b))) for a, deps in graph.items() for b in deps if a != b and a in graph.get(b, ())})
    assert pairs == []


def test_memory_command_prints_the_readme_figures():
    """``python -m llm_assets.training.memory`` still runs and prints what the README shows."""
    readme = (PROJECT / "README.md").read_text()
    block = re.search(r"`python -m llm_assets.training.memory` prints every recipe's estimate:\n\n```\n(.*?)```", readme, re.S)
    out = subprocess.run([sys.executable, "-m", "llm_assets.training.memory"], cwd=PROJECT, capture_output=True,
                         text=True, check=True).stdout
    assert block and block.group(1).splitlines() and set(block.group(1).splitlines()) <= set(out.splitlines())
