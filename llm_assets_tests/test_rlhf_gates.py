"""RLHF that must help: the demo's gold preference, the rlhf gates (policy_beats_sft, kl_within_bound), DPO's own
measures under them, and the CPT / reward data through the tokenization cache."""

from collections import Counter
from pathlib import Path

import pytest
from dagster import AssetCheckKey, AssetKey, DagsterInstance

from llm_assets.demo_data import GOLD, PREFERRED_ENDING, STYLES, chat_rows, preference_rows, sft_rows
from llm_assets.demo_gold import GOLD_FUNCTIONS, demo_gold_score
from llm_assets.recipes import parse_recipe
from llm_assets.stages import STAGES, gate_outcome
from llm_assets.training.evaluate import answer_of
from llm_assets.training.report import Reporter
from llm_assets.training.spec import StageSpec
from llm_assets.training.worker import run_stage
from llm_assets_tests.helpers import demo_datasets, write_recipe


def test_the_gold_function_prefers_what_every_demo_pair_says():
    rows = preference_rows(3000, 2)
    assert all(r["gold"] == GOLD and GOLD_FUNCTIONS[r["gold"]] is demo_gold_score for r in rows)
    assert all(demo_gold_score(r["prompt"], r["chosen"]) > demo_gold_score(r["prompt"], r["rejected"]) for r in rows)
    # half the pairs differ only in how the right answer ends: what SFT cannot know
    same_answer = [r for r in rows if answer_of(r["chosen"]) == answer_of(r["rejected"])]
    assert 0.45 < len(same_answer) / len(rows) < 0.55
    assert all(r["chosen"].endswith(PREFERRED_ENDING) for r in same_answer)
    assert demo_gold_score("Tell me a joke", "ok.") is None  # not a demo prompt: no gold score


def test_sft_data_is_neutral_about_the_ending_and_exact_match_ignores_it():
    ends = Counter(r["completion"][-1] if r["completion"][-1] in ".!" else "" for r in sft_rows(1600, 0))
    ends += Counter(m["messages"][1]["content"][-1] if m["messages"][1]["content"][-1] in ".!" else "" for m in chat_rows(400, 1))
    assert set(ends) == set(STYLES) and max(ends.values()) - min(ends.values()) < 0.1 * sum(ends.values()) / 3
    prompt = "What is the last word? fig fox"
    assert demo_gold_score(prompt, "fox.") == 3 > demo_gold_score(prompt, "fox!") == demo_gold_score(prompt, "fox") == 2
    assert demo_gold_score(prompt, "fig.") == 1 > demo_gold_score(prompt, "fig") == 0
    assert answer_of(" fox. ") == answer_of("fox!") == answer_of("fox") == "fox" != answer_of("fig")


def test_gate_thresholds_are_no_part_of_the_rlhf_identity(tmp_path):
    a = parse_recipe(write_recipe(tmp_path / "a", "r"))
    b = parse_recipe(write_recipe(tmp_path / "b", "r", rlhf={"min_win_rate": 0.9, "max_kl": 0.1}))
    assert STAGES["rlhf"].identity(a) == STAGES["rlhf"].identity(b)
    assert [g.check for g in STAGES["rlhf"].gates] == ["policy_beats_sft", "kl_within_bound"]


def test_the_gates_read_the_algorithms_own_measure(tmp_path):
    rloo = parse_recipe(write_recipe(tmp_path / "a", "r", rlhf={"min_win_rate": 0.7, "max_kl": 1.0}))
    beats, kl = STAGES["rlhf"].gates
    metrics = {"win_rate_vs_sft": 0.62, "kl_to_sft": 0.4, "preference_accuracy": 0.9}
    passed, meta, reason = gate_outcome(beats, rloo, metrics)
    assert not passed and meta == {"win_rate_vs_sft": 0.62, "rlhf.min_win_rate": 0.7}
    assert reason.startswith("win_rate_vs_sft 0.62 is not >= rlhf.min_win_rate 0.7: ") and "\n" not in reason
    assert gate_outcome(kl, rloo, metrics)[0] and not gate_outcome(kl, rloo, {**metrics, "kl_to_sft": 1.2})[0]
    dpo = parse_recipe(write_recipe(tmp_path / "b", "r", reward=None, rlhf={"algorithm": "dpo", "min_win_rate": 0.7}))
    assert gate_outcome(beats, dpo, metrics)[:2] == (True, {"preference_accuracy": 0.9, "rlhf.min_win_rate": 0.7})


@pytest.fixture(scope="module")
def sft_chain(tmp_path_factory):
    """base -> cpt -> sft on the micro recipe and the demo data (the tokenization cache written on the way)."""
    tmp = tmp_path_factory.mktemp("chain")
    datasets = demo_datasets(tmp / "data")
    recipe = write_recipe(tmp / "recipes")
    metrics, inputs = {}, {}
    for stage in ("base", "cpt", "sft"):
        metrics[stage] = run_stage(stage, spec(tmp, stage, recipe, datasets, inputs), Reporter())
        inputs = {"model": str(tmp / stage)}
    return tmp, datasets, metrics


def spec(tmp: Path, stage: str, recipe: Path, datasets, inputs, out: str | None = None, **options) -> StageSpec:
    out = out or stage
    return StageSpec(stage=stage, recipe=parse_recipe(recipe).model_dump(mode="json"), output_dir=str(tmp / out),
                     inputs=inputs, datasets=datasets, checkpoint_dir=str(tmp / f"ckpt-{out}"),
                     options={"eval_limit": 16, **options})


def test_dpo_reports_its_measures_under_the_gates(sft_chain):
    tmp, datasets, _ = sft_chain
    recipe = write_recipe(tmp / "dpo", reward=None, rlhf={"algorithm": "dpo", "max_steps": 3, "per_device_batch_size": 8})
    m = run_stage("rlhf", spec(tmp, "rlhf", recipe, datasets, {"model": str(tmp / "sft")}, out="dpo"), Reporter())
    assert m["preference_pairs"] == 16 and 0 <= m["preference_accuracy"] <= 1 and m["reward_margin"] != 0
    assert m["kl_to_sft"] > 0 and "win_rate_vs_sft" not in m  # no reward model to judge by
    assert m["gold_prompts"] == 16 and 0 <= m["gold_win_rate_vs_sft"] <= 1  # the demo rows name their gold function
    parsed = parse_recipe(recipe)
    outcomes = [gate_outcome(g, parsed, m) for g in STAGES["rlhf"].gates]
    assert [sorted(meta) for _, meta, _ in outcomes] == [["preference_accuracy", "rlhf.min_win_rate"], ["kl_to_sft", "rlhf.max_kl"]]


def test_cpt_and_reward_data_come_from_the_tokenization_cache(sft_chain):
    tmp, datasets, first = sft_chain
    recipe = write_recipe(tmp / "recipes")
    assert first["cpt"]["tokenization"] == "computed"
    again = run_stage("cpt", spec(tmp, "cpt", recipe, datasets, {"model": str(tmp / "base")}, out="cpt2",
                                  tokens_out=str(tmp / "cpt-tokens")), Reporter())
    hit = run_stage("cpt", spec(tmp, "cpt", recipe, datasets, {"model": str(tmp / "base"), "tokens": str(tmp / "cpt-tokens")},
                                out="cpt3"), Reporter())
    assert again["tokenization"] == "computed" and hit["tokenization"] == "cache hit"
    assert hit["train_loss"] == pytest.approx(again["train_loss"], rel=1e-6) and hit["tokens_seen"] == again["tokens_seen"]
    computed = run_stage("reward", spec(tmp, "reward", recipe, datasets, {"model": str(tmp / "sft")}, out="rm1",
                                        tokens_out=str(tmp / "rm-tokens")), Reporter())
    cached = run_stage("reward", spec(tmp, "reward", recipe, datasets, {"model": str(tmp / "sft"), "tokens": str(tmp / "rm-tokens")},
                                      out="rm2"), Reporter())
    assert (computed["tokenization"], cached["tokenization"]) == ("computed", "cache hit")
    assert cached["train_pairs_used"] == computed["train_pairs_used"] and cached["reward_accuracy"] == computed["reward_accuracy"]


def run_gate(instance, check: str):
    from llm_assets.definitions import build_definitions

    job = build_definitions().resolve_job_def("full_pipeline_job").get_subset(
        asset_selection=set(), asset_check_selection={AssetCheckKey(AssetKey("rlhf_policy"), check)})
    result = job.execute_in_process(partition_key="tiny", instance=instance, raise_on_error=False)
    [evaluation] = [c for c in result.get_asset_check_evaluations() if c.check_name == check]
    return evaluation


def test_a_policy_that_does_not_beat_sft_fails_its_gate_and_is_not_quantized(project_env, monkeypatch, tmp_path):
    """The rlhf gates on a stored run record (as after training): a losing policy fails with one line naming the
    recipe key, and the quantize stage refuses to start from it; a winning one passes."""
    from llm_assets.resources import default_resources

    recipes = project_env / "recipes"
    write_recipe(recipes, rlhf={"min_win_rate": 0.7, "max_kl": 1.0})
    monkeypatch.setenv("LLM_ASSETS_RECIPES_DIR", str(recipes))
    instance = DagsterInstance.get()
    store = default_resources()["store"].open()
    model = tmp_path / "policy"
    model.mkdir()
    (model / "config.json").write_text("{}")
    version = store.commit("models/rlhf/tiny", model).version

    def record(**metrics):
        name = f"run-{metrics['win_rate_vs_sft']}"
        store.put_record("models/rlhf/tiny", name, {"version": version, "fingerprint": name, "metrics": metrics})

    record(win_rate_vs_sft=0.55, kl_to_sft=0.3)
    losing = run_gate(instance, "policy_beats_sft")
    assert not losing.passed and "\n" not in losing.description
    assert losing.description.startswith("win_rate_vs_sft 0.55 is not >= rlhf.min_win_rate 0.7: ")
    assert run_gate(instance, "kl_within_bound").passed  # the KL gate alone passes, the record still says failed
    assert store.record("models/rlhf/tiny")["gate"] == {"check": "policy_beats_sft", "passed": False,
                                                        "reason": losing.description}
    from llm_assets.definitions import build_definitions

    quantize = build_definitions().resolve_job_def("full_pipeline_job").get_subset(asset_selection={AssetKey("quantized_model")})
    result = quantize.execute_in_process(partition_key="tiny", instance=instance, raise_on_error=False)
    failure = next(e for e in result.all_events if e.event_type_value == "STEP_FAILURE")
    assert "models/rlhf/tiny failed its gate policy_beats_sft (win_rate_vs_sft 0.55" in failure.step_failure_data.error.message

    record(win_rate_vs_sft=0.8, kl_to_sft=0.3)
    assert run_gate(instance, "policy_beats_sft").passed
    assert store.record("models/rlhf/tiny")["gate"]["passed"] is True
