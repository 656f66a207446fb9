"""evaluation[recipe] through lm-evaluation-harness: generated tasks agree with the project's own measure, the asset and
its three release gates through Dagster, and standard tasks that cannot run offline fail at once, saying why."""

import json
import time
from pathlib import Path

import datasets
import huggingface_hub.constants
import pytest
import yaml
from dagster import AssetKey, AssetSelection, DagsterInstance, Definitions, define_asset_job

from llm_assets.evaluation import gates, harness
from llm_assets.recipes import parse_recipe
from llm_assets.resources import default_resources
from llm_assets.stages import MODEL_ASSETS
from llm_assets.training import evaluation as stage
from llm_assets.training.data import load_rows
from llm_assets.training.evaluate import exact_match, generate
from llm_assets.training.models import load_causal_lm, load_tokenizer
from llm_assets.training.report import Reporter
from llm_assets.training.spec import StageSpec
from llm_assets.training.worker import run_stage
from llm_assets_tests.helpers import demo_datasets, land_demo_drops, write_recipe


@pytest.fixture
def offline_here(monkeypatch):
    """The stage switches this process offline; undone after the test, so other tests see the environment they had."""
    for var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"):
        monkeypatch.setenv(var, "1")
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(datasets.config, "HF_DATASETS_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)


@pytest.fixture(scope="module")
def micro_models(tmp_path_factory):
    """The demo drops and a micro base -> sft chain, trained in process."""
    tmp = tmp_path_factory.mktemp("eval")
    data = demo_datasets(tmp / "data")
    recipe = parse_recipe(write_recipe(tmp / "recipes")).model_dump(mode="json")
    inputs = {}
    for name in ("base", "sft"):
        spec = StageSpec(stage=name, recipe=recipe, output_dir=str(tmp / name), inputs=inputs, datasets=data,
                         checkpoint_dir=str(tmp / f"ckpt-{name}"), options={"eval_limit": 16})
        Path(spec.output_dir).mkdir()
        run_stage(name, spec, Reporter())
        inputs = {"model": str(tmp / name)}
    return tmp, recipe, data


def test_lm_eval_on_generated_tasks_gives_the_projects_exact_match_row_for_row(micro_models, offline_here):
    tmp, recipe, data = micro_models
    models = {"base": {"key": "models/base/tiny", "version": "b" * 64}, "sft": {"key": "models/sft/tiny", "version": "s" * 64},
              "policy": {"key": "models/rlhf/tiny", "version": "s" * 64}}  # no rlhf: the policy is the SFT model
    spec = StageSpec(stage="evaluation", recipe=recipe, output_dir=str(tmp / "evaluation"),
                     inputs={"base": str(tmp / "base"), "sft": str(tmp / "sft"), "policy": str(tmp / "sft")}, datasets=data,
                     options={"models": models, "drops": {k: [Path(p).stem for p in v] for k, v in data.items()}})
    Path(spec.output_dir).mkdir()
    metrics = stage.run(spec, Reporter())

    tasks = metrics["tasks"]
    task = "sft_demo_word_tasks_exact_match"
    assert tasks[task] == {"kind": "generate_until", "source": "sft/demo_word_tasks.jsonl", "metric": "exact_match",
                           "higher_is_better": True}
    assert tasks["preference_demo_preferences_choice"]["kind"] == "multiple_choice"
    assert tasks["pretraining_demo_corpus_bits_per_byte"]["higher_is_better"] is False
    assert set(metrics) >= {"models", "results", "tasks", "lm_eval_version"} and metrics["models"] == models
    out = Path(spec.output_dir)
    assert sorted(p.name for p in out.iterdir()) == ["data", "results.json", "tasks"]  # no datasets cache left in it
    raw = json.loads((out / "results.json").read_text())
    assert raw["policy"] == raw["sft"]  # one version, evaluated once
    config = yaml.safe_load((out / "tasks" / f"{task}.yaml").read_text())
    assert config["dataset_kwargs"]["data_files"] == {"test": f"data/{task}.jsonl"}  # relative: the directory is portable

    # the same held-out rows the stages measure on, scored by the project's own function, on the same model files
    rows = load_rows([p for p in data["sft"] if Path(p).stem == "demo_word_tasks.jsonl"], "eval")
    for role in ("base", "sft"):
        tok, model = load_tokenizer(tmp / role), load_causal_lm(tmp / role)
        ours = exact_match(model, tok, rows, recipe["data"]["chat_template"], recipe["evaluation"]["max_new_tokens"])
        replies = generate(model, tok, [r["prompt"] for r in rows], recipe["data"]["chat_template"], 24)
        figure = metrics["results"][task][role]
        assert figure["n"] == len(rows) == ours["exact_match_n"] > 0
        assert figure["value"] == pytest.approx(ours["exact_match"], abs=1e-9)
        samples = sorted(raw[role]["samples"][task], key=lambda s: s["doc_id"])
        assert [s["filtered_resps"][0].strip() for s in samples] == replies  # every reply, not just the count


@pytest.fixture
def graph(project_env, monkeypatch):
    """Demo drops landed and validated, a micro recipe that trains only SFT (every later stage passes it through, so the
    released model is the SFT model: test_release's end-to-end run evaluates a quantized one), and a job over the model
    stages and the evaluation."""
    recipes = project_env / "recipes"
    # replies longer than 4 tokens (the demo's reversals) are scored by log-likelihood, the rest by exact match
    write_recipe(recipes, cpt=None, reward=None, rlhf=None, quantization=None, evaluation={"limit": 8, "max_new_tokens": 4})
    monkeypatch.setenv("LLM_ASSETS_RECIPES_DIR", str(recipes))
    from llm_assets.definitions import build_definitions

    instance, defs = DagsterInstance.get(), build_definitions()
    # the evaluation reads the held-out splits of the training kinds; the inference drop (prompts only) is not validated
    land_demo_drops(project_env / "data" / "landing", defs, instance, kinds=("pretraining", "sft", "preference"))
    job = define_asset_job("evaluated", selection=AssetSelection.assets(*MODEL_ASSETS, "evaluation"),
                           partitions_def=defs.resolve_assets_def("evaluation").partitions_def)
    return Definitions.merge(defs, Definitions(jobs=[job])), instance


def checks_of(result) -> dict[str, tuple[bool, str]]:
    return {c.check_name: (c.passed, c.description) for c in result.get_asset_check_evaluations()
            if c.asset_key == AssetKey("evaluation")}


def test_evaluation_asset_shows_the_table_and_gates_the_release(graph):
    defs, instance = graph
    result = defs.resolve_job_def("evaluated").execute_in_process(partition_key="tiny", instance=instance, raise_on_error=False)
    assert result.success, [e.message for e in result.all_events if e.event_type_value == "STEP_FAILURE"]
    checks = checks_of(result)
    assert {name: passed for name, (passed, _) in checks.items()} == {
        "released_not_worse_than_base": True, "quantized_within_bound": True, "no_regression_vs_published": True}
    assert checks["no_regression_vs_published"][1] == "nothing published yet"
    assert checks["quantized_within_bound"][1] == "recipe 'tiny' has no quantization group: the released model is the policy itself"

    store = default_resources()["store"].open()
    record = store.record("models/evaluation/tiny")
    metrics = record["metrics"]
    assert {r: m["version"] for r, m in metrics["models"].items()} == {
        r: store.latest_version(f"models/{s}/tiny") for r, s in (("base", "base"), ("sft", "sft"), ("policy", "rlhf"),
                                                                  ("released", "quantize"))}
    task = "sft_demo_word_tasks_exact_match"
    assert set(metrics["results"][task]) == {"base", "sft", "policy", "released"}
    assert metrics["tasks"]["sft_demo_word_tasks_loglikelihood"]["kind"] == "loglikelihood"
    assert metrics["results"][task]["released"]["n"] == 8  # evaluation.limit rows per task
    assert {k: v for k, v in record["gates"].items()} == {name: {"passed": True, "reason": reason}
                                                          for name, (_, reason) in checks.items()}
    [mat] = [e.materialization for e in result.get_asset_materialization_events() if e.asset_key == AssetKey("evaluation")]
    table = mat.metadata["results"].value
    assert "| task | metric | rows from | base | sft | policy | released |" in table and f"| {task} | exact_match (↑) |" in table
    assert " ± " in table  # lm-eval's standard error beside each figure
    assert "policy " in table and "(= sft)" in table  # a passed-through stage is its parent's version, evaluated once
    assert (store.get("models/evaluation/tiny").path / "results.json").exists()

    # a published version that scored higher than the released one by more than the tolerance: the gate must fail,
    # saying which task, which models, the values and the recipe key; the evaluation itself is reused, not run again
    released = metrics["results"][task]["released"]["value"]
    store.put_record("models/published/tiny", "v0", {"version": "0" * 64, "results": {
        task: {"released": {"metric": "exact_match", "value": released + 0.5, "stderr": 0.0, "n": 10}}}})
    again = defs.resolve_job_def("evaluated").get_subset(asset_selection={AssetKey("evaluation")}).execute_in_process(
        partition_key="tiny", instance=instance, raise_on_error=False)
    assert not any("[evaluation]" in (e.message or "") for e in instance.all_logs(again.run_id))  # no worker ran
    passed, reason = checks_of(again)["no_regression_vs_published"]
    assert not passed and "\n" not in reason
    assert reason.startswith(f"{task}: released exact_match {released:.4g} vs published 000000000000 {released + 0.5:.4g}")
    assert "evaluation.published_tolerance 0.02" in reason
    assert store.record("models/evaluation/tiny")["gates"]["no_regression_vs_published"] == {"passed": False, "reason": reason}


def test_standard_tasks_that_cannot_run_offline_fail_at_once_naming_the_task_and_the_data(tmp_path, offline_here):
    started = time.monotonic()
    manager = harness.task_manager(tmp_path, ["lambada_openai"])  # lm-eval's own catalogue beside the generated tasks
    with pytest.raises(ValueError, match=r"^evaluation.tasks: lm-eval has no task 'lambada_opnai' .*fix or remove it"):
        harness.check_standard_tasks(manager, ["lambada_opnai"])
    with pytest.raises(ValueError) as missing:
        harness.check_standard_tasks(manager, ["lambada_openai"])
    message = str(missing.value)
    assert message.startswith("evaluation.tasks: lm-eval task 'lambada_openai' needs the dataset EleutherAI/lambada_openai, "
                              "which is not in the local Hugging Face datasets cache") and "\n" not in message
    assert time.monotonic() - started < 90  # no network wait


def test_gates_compare_each_task_in_its_own_direction_against_the_recipes_tolerance(tmp_path):
    recipe = parse_recipe(write_recipe(tmp_path / "recipes", evaluation={"quantized_tolerance": 0.05}))
    figure = lambda v: {"metric": "m", "value": v, "stderr": None, "n": 10}  # noqa: E731
    metrics = {"models": {"policy": {"version": "p"}, "released": {"version": "q"}},
               "tasks": {"em": {"kind": "generate_until", "source": "sft/a", "metric": "exact_match", "higher_is_better": True},
                         "bpb": {"kind": "loglikelihood_rolling", "source": "pretraining/b", "metric": "bits_per_byte",
                                 "higher_is_better": False}},
               "results": {"em": {"base": figure(0.50), "policy": figure(0.60), "released": figure(0.58)},
                           "bpb": {"base": figure(3.0), "policy": figure(2.00), "released": figure(2.10)}}}
    assert gates.released_not_worse_than_base(metrics, recipe).passed  # better than base on both (bpb: lower is better)
    quantized = gates.quantized_within_bound(metrics, recipe)
    assert not quantized.passed and quantized.compared["em"]["worse_by"] == pytest.approx(0.02)
    assert quantized.reason == ("bpb: released bits_per_byte 2.1 vs policy 2 (lower is better) is 0.1 worse, beyond "
                                "evaluation.quantized_tolerance 0.05: use quantization.bits 8, or raise "
                                "evaluation.quantized_tolerance")
    same = {**metrics, "models": {"policy": {"version": "p"}, "released": {"version": "p"}}}
    assert gates.quantized_within_bound(same, recipe).passed  # the released model is the policy: nothing quantized
    published = {"version": "v" * 64, "results": {"em": {"released": figure(0.59)}, "gone": {"released": figure(1.0)}}}
    regression = gates.no_regression_vs_published(metrics, recipe, published)
    assert regression.passed and list(regression.compared) == ["em"]  # only tasks both were evaluated on


def test_a_tolerance_per_task_or_data_kind_overrides_the_default_for_the_base_gate(tmp_path):
    recipe = parse_recipe(write_recipe(tmp_path / "recipes", evaluation={"tolerance_by_task": {"pretraining": 1.0}}))
    figure = lambda v: {"metric": "m", "value": v, "stderr": None, "n": 10}  # noqa: E731
    metrics = {"models": {"base": {"version": "b"}, "released": {"version": "q"}},
               "tasks": {"em": {"kind": "generate_until", "source": "sft/a", "metric": "exact_match", "higher_is_better": True},
                         "bpb": {"kind": "loglikelihood_rolling", "source": "pretraining/b", "metric": "bits_per_byte",
                                 "higher_is_better": False}},
               "results": {"em": {"base": figure(0.50), "released": figure(0.90)},
                           "bpb": {"base": figure(2.0), "released": figure(2.8)}}}
    outcome = gates.released_not_worse_than_base(metrics, recipe)
    assert outcome.passed and outcome.compared["bpb"]["tolerance"] == 1.0  # the kind's own tolerance
    strict = parse_recipe(write_recipe(tmp_path / "strict", evaluation={"tolerance_by_task": {"bpb": 0.5}}))
    failed = gates.released_not_worse_than_base(metrics, strict)  # a task's own entry names the key in the reason
    assert not failed.passed and "is 0.8 worse, beyond evaluation.tolerance_by_task.bpb 0.5" in failed.reason
