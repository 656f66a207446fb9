"""DeepSpeed ZeRO across 2 processes on the CPU (gloo): the worker under torchrun, launched by TrainingLauncher with a
work order through Pipes, every rank reading the order and rank 0 alone committing to the store."""

import tempfile
from pathlib import Path

import pytest
from dagster import AssetExecutionContext, MaterializeResult, asset, materialize

from llm_assets.artifacts import Store
from llm_assets.objects import LocalObjects
from llm_assets.recipes import parse_recipe
from llm_assets.resources.launcher import TrainingLauncher
from llm_assets.training.order import StoreSettings, WorkOrder
from llm_assets.training.report import Reporter
from llm_assets.training.spec import StageSpec
from llm_assets.training.worker import run_stage
from llm_assets_tests.helpers import demo_datasets, write_recipe


@pytest.mark.parametrize("zero", ["zero2", "zero3"])
def test_two_process_torchrun_deepspeed_sft(tmp_path, zero):
    datasets = demo_datasets(tmp_path)
    path = write_recipe(tmp_path / "recipes", distributed={"processes": 2, "deepspeed": f"configs/deepspeed/{zero}.json"},
                        sft={"max_steps": 4, "save_steps": 2})
    recipe = parse_recipe(path).model_dump(mode="json")
    run_stage("base", StageSpec(stage="base", recipe=recipe, output_dir=str(tmp_path / "base"), datasets=datasets), Reporter())
    store = Store(LocalObjects(tmp_path / "store"))
    base = store.commit("models/base/tiny", tmp_path / "base")
    drops = {kind: [{"key": f"datasets/{kind}/{Path(p).stem}", "version": store.commit(f"datasets/{kind}/{Path(p).stem}", _alone(p)).version}
                    for p in paths] for kind, paths in datasets.items()}
    order = WorkOrder(stage="sft", recipe=recipe, store=StoreSettings(root=str(tmp_path / "store")), output_key="models/sft/tiny",
                      fingerprint="f" * 16, inputs={"model": {"key": "models/base/tiny", "version": base.version}},
                      datasets=drops, options={"eval_limit": 8})
    launcher = TrainingLauncher(extra_env={"DS_ACCELERATOR": "cpu"})
    assert launcher.command("sft", 2)[0].endswith("torchrun") and "--nproc-per-node=2" in launcher.command("sft", 2)
    seen = {}

    @asset
    def sft(context: AssetExecutionContext) -> MaterializeResult:
        seen.update(launcher.run(context, order, store))
        return MaterializeResult()

    assert materialize([sft]).success
    metrics = seen["metrics"]
    assert metrics["steps"] == 4 and metrics["eval_loss"] < metrics["parent_eval_loss"]
    assert store.has_version("models/sft/tiny", seen["version"]) and store.latest_version("models/sft/tiny") is None  # the step makes it current
    assert "model.safetensors" in {f["path"] for f in store.manifest("models/sft/tiny", seen["version"]).files}
    assert store.versions(order.checkpoints_key) == []  # committed: its checkpoints are gone from the store


def _alone(parquet: str) -> Path:
    """A directory holding one drop's dataset.parquet, as the dataset asset commits it."""
    d = Path(tempfile.mkdtemp())
    (d / "dataset.parquet").write_bytes(Path(parquet).read_bytes())
    return d
