"""The code location uses Dagster's public API only: no dagster._ imports, the data-version tag it must spell itself
still means what it did, and Pipes children run through the public session API."""

import ast
import signal
import sys
from pathlib import Path

from dagster import AssetExecutionContext, AssetKey, DagsterInstance, MaterializeResult, StaticPartitionsDefinition, asset, build_sensor_context, materialize

from llm_assets.recipes import load_recipe
from llm_assets.resources.launcher import run_pipes_process
from llm_assets.sensors import build_recipe_sensor
from llm_assets_tests.helpers import write_recipe

PACKAGE = Path(__file__).resolve().parent.parent / "llm_assets"


def private_dagster_imports(path: Path) -> list[str]:
    """``module:line name`` for each import of a ``dagster._*`` module (private: it moves between releases)."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""] if isinstance(node, ast.ImportFrom) else []
        found += [f"{path.relative_to(PACKAGE.parent)}:{node.lineno} {n}" for n in names if n.startswith("dagster._")]
    return found


def test_no_module_of_the_package_imports_private_dagster():
    assert [hit for path in sorted(PACKAGE.rglob("*.py")) for hit in private_dagster_imports(path)] == []


def test_recipe_sensor_observations_carry_the_recipe_hash_as_their_data_version(project_env, monkeypatch):
    recipes = project_env / "recipes"
    write_recipe(recipes, "a")
    monkeypatch.setenv("LLM_ASSETS_RECIPES_DIR", str(recipes))
    sensor = build_recipe_sensor(StaticPartitionsDefinition(["a"]))
    instance = DagsterInstance.get()
    with build_sensor_context(instance=instance) as ctx:
        first = sensor(ctx)
    (observation,) = first.asset_events
    assert observation.partition == "a" and observation.data_version == load_recipe("a").recipe_hash
    instance.report_runless_asset_event(observation)
    (stored,) = instance.fetch_observations(AssetKey("recipe"), limit=10).records
    assert stored.asset_observation.data_version == load_recipe("a").recipe_hash
    with build_sensor_context(instance=instance, cursor=first.cursor) as ctx:
        assert sensor(ctx).asset_events == []  # unchanged recipe: nothing observed


CHILD_REPORTS = "from dagster_pipes import open_dagster_pipes\nwith open_dagster_pipes() as pipes:\n    pipes.report_custom_message({'metrics': {'loss': 1.5}})\n"
CHILD_IS_KILLED = "import os, signal\nos.kill(os.getpid(), signal.SIGKILL)\n"


def run_child(source: str) -> tuple[int, list]:
    """Run ``source`` as a Pipes child from a real asset materialization."""
    seen = {}

    @asset
    def child(context: AssetExecutionContext) -> MaterializeResult:
        returncode, invocation = run_pipes_process(context, [sys.executable, "-c", source], {})
        seen.update(returncode=returncode, messages=list(invocation.get_custom_messages()))
        return MaterializeResult()  # as the model assets do

    assert materialize([child], instance=DagsterInstance.get()).success
    return seen["returncode"], seen["messages"]


def test_a_pipes_child_hands_back_its_messages(project_env):
    assert run_child(CHILD_REPORTS) == (0, [{"metrics": {"loss": 1.5}}])


def test_a_killed_pipes_child_hands_back_its_signal(project_env):
    returncode, _ = run_child(CHILD_IS_KILLED)
    assert returncode == -signal.SIGKILL
