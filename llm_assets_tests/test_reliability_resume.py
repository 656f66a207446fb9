"""A run killed after its final checkpoint resumes there and trains no further (issue 16, item 8: it took one more step,
reporting ``steps: 201`` of 200)."""

from pathlib import Path

from safetensors.torch import load_file

from llm_assets.recipes import parse_recipe
from llm_assets.training.report import Reporter
from llm_assets.training.spec import StageSpec
from llm_assets.training.worker import run_stage
from llm_assets_tests.helpers import demo_datasets, write_recipe


def spec(tmp: Path, stage: str, recipe: Path, datasets, out: str, inputs=None) -> StageSpec:
    return StageSpec(stage=stage, recipe=parse_recipe(recipe).model_dump(mode="json"), output_dir=str(tmp / out),
                     inputs=inputs or {}, datasets=datasets, checkpoint_dir=str(tmp / f"ckpt-{stage}"), options={"eval_limit": 16})


def test_resuming_from_the_checkpoint_at_max_steps_trains_no_further(tmp_path):
    datasets = demo_datasets(tmp_path)
    recipe = write_recipe(tmp_path / "recipes", sft={"max_steps": 4, "save_steps": 2, "logging_steps": 1})
    base = spec(tmp_path, "base", recipe, datasets, "base")
    run_stage("base", base, Reporter())
    first = run_stage("sft", spec(tmp_path, "sft", recipe, datasets, "sft", {"model": base.output_dir}), Reporter())
    assert first["steps"] == 4 and not first["resumed_from"]
    assert (tmp_path / "ckpt-sft" / "checkpoint-4").is_dir()  # what a run killed before its commit leaves

    again = run_stage("sft", spec(tmp_path, "sft", recipe, datasets, "sft-again", {"model": base.output_dir}), Reporter())
    assert again["resumed_from"].endswith("checkpoint-4")
    assert again["steps"] == 4  # was 5: one step past max_steps
    assert again["log_history"] == [] or all(e.get("step", 0) <= 4 for e in again["log_history"])
    weights, resumed = load_file(tmp_path / "sft" / "model.safetensors"), load_file(tmp_path / "sft-again" / "model.safetensors")
    assert weights.keys() == resumed.keys() and all(weights[k].equal(resumed[k]) for k in weights)
    assert again["eval_loss"] == first["eval_loss"]
    assert abs(again["train_loss"] - first["train_loss"]) < 1e-3  # the mean of the losses the checkpoint logged
