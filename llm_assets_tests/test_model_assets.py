"""The model half of the graph through Dagster: Pipes subprocesses, the store, checks, resume."""

import hashlib
import json
import shutil

import pytest
from dagster import AssetKey, DagsterInstance

from llm_assets.demo import register_drops
from llm_assets.resources import default_resources
from llm_assets_tests.conftest import PROJECT
from llm_assets_tests.helpers import HUB_REV, land_demo_drops, write_recipe


@pytest.fixture(scope="module")
def validated(tmp_path_factory):
    """The demo drops landed and validated through Dagster once for the module: an instance (DAGSTER_HOME) and a data
    directory (landing zone and store) that each test starts from a copy of, so no test sees another's runs."""
    root = tmp_path_factory.mktemp("validated")
    with pytest.MonkeyPatch.context() as mp:
        (root / "dagster_home").mkdir()
        (root / "dagster_home" / "dagster.yaml").write_text((PROJECT / "configs" / "dagster.yaml").read_text())
        for var, value in {"DAGSTER_HOME": root / "dagster_home", "LLM_ASSETS_DATA_DIR": root / "data",
                           "LLM_ASSETS_RECIPES_DIR": root / "recipes"}.items():
            mp.setenv(var, str(value))
        for var in ("LLM_ASSETS_LANDING", "LLM_ASSETS_STORE"):
            mp.delenv(var, raising=False)
        write_recipe(root / "recipes")
        from llm_assets.definitions import build_definitions

        with DagsterInstance.get() as instance:
            land_demo_drops(root / "data" / "landing", build_definitions(), instance, scale=0.1)
    return root


@pytest.fixture
def graph(project_env, validated, monkeypatch):
    """Demo drops landed and validated (this test's own copy of them), a micro 'tiny' recipe, and Definitions built on them."""
    shutil.copytree(validated / "dagster_home", project_env / "dagster_home", dirs_exist_ok=True)
    shutil.copytree(validated / "data", project_env / "data")
    recipes = project_env / "recipes"
    write_recipe(recipes)
    monkeypatch.setenv("LLM_ASSETS_RECIPES_DIR", str(recipes))
    from llm_assets.definitions import build_definitions

    instance = DagsterInstance.get()
    assert len(instance.get_dynamic_partitions("sft_drops")) == 2  # the copy holds the validated drops
    return build_definitions(), instance, recipes


def materialize_recipe(defs, instance, recipe="tiny", selection=None):
    job = defs.resolve_job_def("full_pipeline_job")
    if selection:
        job = job.get_subset(asset_selection={AssetKey(a) for a in selection})
    return job.execute_in_process(partition_key=recipe, instance=instance, raise_on_error=False)


def meta(instance, asset, partition="tiny"):
    from dagster import AssetRecordsFilter

    [record] = instance.fetch_materializations(AssetRecordsFilter(AssetKey(asset), asset_partitions=[partition]), limit=1).records
    return {k: v.value for k, v in record.asset_materialization.metadata.items()}


def test_whole_graph_on_the_micro_recipe(graph):
    defs, instance, _ = graph
    result = materialize_recipe(defs, instance)
    assert result.success, [e.message for e in result.all_events if e.event_type_value == "STEP_FAILURE"]
    checks = {(c.asset_key.path[-1], c.check_name): c.passed for c in result.get_asset_check_evaluations()}
    assert checks == {("base_model", "rows_fit_max_length"): True,
                      ("sft_model", "sft_beats_parent"): True, ("reward_model", "reward_accuracy_above_threshold"): True,
                      ("rlhf_policy", "policy_beats_sft"): True, ("rlhf_policy", "kl_within_bound"): True,
                      ("quantized_model", "eval_loss_delta_within_bound"): True,
                      **{("evaluation", gate): True for gate in
                         ("released_not_worse_than_base", "quantized_within_bound", "no_regression_vs_published")}}
    sft = meta(instance, "sft_model")
    assert sft["eval_loss"] < sft["parent_eval_loss"] and sft["steps"] == 6 and "demo_word_tasks.jsonl" in str(sft["drops_used"])
    assert meta(instance, "rlhf_policy")["algorithm"] == "rloo"
    q = meta(instance, "quantized_model")
    assert q["quantized_bytes"] < q["unquantized_bytes"]
    report = meta(instance, "model_report")["report"]
    assert "| sft | exact match |" in report and "| quantize | weights bytes |" in report
    store = default_resources()["store"].open()
    for stage in ("base", "cpt", "sft", "reward", "rlhf", "quantize"):
        art = store.get(f"models/{stage}/tiny")
        record = store.record(f"models/{stage}/tiny")
        assert (art.path / "config.json").exists() and record["version"] == art.version and record["recipe_hash"]
        assert not (art.path / "metrics.json").exists()  # run records live beside the artifact, not in its version
    # the training logs streamed into the Dagster run log through Pipes
    logs = [e.message for e in instance.all_logs(result.run_id) if e.message]
    assert any("[sft] loss=" in m and "tokens_per_s=" in m and "| step 4/6 (67%), ETA " in m for m in logs)
    assert any(m.startswith("[sft] eval_loss=") and "| step 2/6 (33%)" in m for m in logs)  # held-out loss during training
    # every trained stage shows its curves, kept beside its run record (not in its version); figures shown rounded
    for asset, stage in (("cpt_model", "cpt"), ("sft_model", "sft"), ("reward_model", "reward"), ("rlhf_policy", "rlhf")):
        m = meta(instance, asset)
        assert m["curves"].startswith("![training curves](data:image/png;base64,"), asset
        png = store.objects.read_bytes(f"models/{stage}/tiny/records/{m['fingerprint']}.curves.png")
        assert png.startswith(b"\x89PNG") and m["curves_file"].endswith(f"models/{stage}/tiny/records/{m['fingerprint']}.curves.png")
    assert "curves" not in meta(instance, "base_model") and "curves" not in meta(instance, "quantized_model")  # nothing trained
    assert sft["eval_loss"] == float(f"{store.record('models/sft/tiny')['metrics']['eval_loss']:.4g}")
    assert sft["exact_match_pct"] == round(100 * store.record("models/sft/tiny")["metrics"]["exact_match"], 1)
    # samples for every stage, as tables
    columns = {asset: [c.name for c in meta(instance, asset)["samples"].schema.columns]
               for asset in ("sft_model", "reward_model", "rlhf_policy", "quantized_model")}
    assert columns == {"sft_model": ["prompt", "expected", "got"],
                       "reward_model": ["prompt", "chosen", "chosen_score", "rejected", "rejected_score", "prefers_chosen"],
                       "rlhf_policy": ["prompt", "sft_reply", "sft_reward", "policy_reply", "policy_reward"],
                       "quantized_model": ["prompt", "expected", "unquantized", "quantized"]}
    [row, *_] = meta(instance, "reward_model")["samples"].records
    assert row.data["chosen_score"] == float(f"{row.data['chosen_score']:.4g}")


def test_recipe_without_cpt_passes_the_base_model_through(graph):
    defs, instance, recipes = graph
    write_recipe(recipes, "nocpt", cpt=None)
    from llm_assets.definitions import build_definitions

    defs = build_definitions()
    result = materialize_recipe(defs, instance, "nocpt", ["base_model", "cpt_model"])
    assert result.success
    m = meta(instance, "cpt_model", "nocpt")
    assert m["passthrough"] is True and m["passthrough_of"] == "base"
    store = default_resources()["store"].open()
    assert store.latest_version("models/cpt/nocpt") == store.latest_version("models/base/nocpt")


def test_failed_child_fails_the_materialization_with_its_error_and_is_not_retried(graph, monkeypatch):
    defs, instance, recipes = graph
    write_recipe(recipes, "broken", model={"attn_implementation": "flash_attention_2"})
    monkeypatch.setenv("LLM_ASSETS_TRAINING_RETRIES", "2")
    monkeypatch.setenv("LLM_ASSETS_TRAINING_RETRY_DELAY_S", "0")
    from llm_assets.definitions import build_definitions

    result = materialize_recipe(build_definitions(), instance, "broken", ["base_model", "cpt_model"])
    assert not result.success
    failure = next(e for e in result.all_events if e.event_type_value == "STEP_FAILURE")
    # the base stage measures its model on the stage's device with the recipe's attention: the first worker to load it
    assert failure.step_key == "base_model"
    message = failure.step_failure_data.error.message
    assert "the base stage failed" in message and "flash" in message.lower()  # the child's own error, not an exit code
    # the worker said why it failed: training again cannot help, so the retry policy does not apply
    assert not [e for e in result.all_events if e.event_type_value in ("STEP_UP_FOR_RETRY", "STEP_RESTARTED")]


def test_tokenization_cache_hits_on_a_learning_rate_change_and_misses_on_a_one_byte_data_change(graph, project_env):
    defs, instance, recipes = graph
    assert materialize_recipe(defs, instance, selection=["base_model", "cpt_model", "sft_model"]).success
    first = meta(instance, "sft_model")
    assert first["tokenization"] == "computed" and first["tokens_cache"].startswith("cache/tokens/sft/")

    again = materialize_recipe(defs, instance, selection=["sft_model"])  # nothing changed: no training at all
    reused = meta(instance, "sft_model")
    assert again.success and reused["reused"] is True and reused["artifact"] == first["artifact"]  # the same version
    assert not any("[sft] loss=" in (e.message or "") for e in instance.all_logs(again.run_id))

    write_recipe(recipes, sft={"learning_rate": 5e-4})  # only the learning rate
    from llm_assets.definitions import build_definitions

    assert materialize_recipe(build_definitions(), instance, selection=["base_model", "cpt_model", "sft_model"]).success
    assert meta(instance, "base_model")["reused"] is True and meta(instance, "cpt_model")["reused"] is True  # not their groups
    lr_only = meta(instance, "sft_model")
    assert lr_only["tokenization"] == "cache hit" and lr_only["tokens_cache"] == first["tokens_cache"]
    assert lr_only["train_loss"] != first["train_loss"]  # it did train again, on the cached tokens

    landing = project_env / "data" / "landing" / "sft"
    original = next(landing.glob("demo_word_tasks*.jsonl")).read_text()
    (landing / "changed.jsonl").write_text(original.replace("first", "First", 1))  # one byte
    drops = register_drops(instance, default_resources()["landing"].open())
    assert "changed.jsonl" in drops["sft"]
    defs = build_definitions()
    assert defs.resolve_job_def("sft_data_prep_job").execute_in_process(partition_key="changed.jsonl", instance=instance).success
    assert materialize_recipe(defs, instance, selection=["sft_model"]).success
    changed = meta(instance, "sft_model")
    assert changed["tokenization"] == "computed" and changed["tokens_cache"] != first["tokens_cache"]
    store = default_resources()["store"].open()
    assert store.latest_version(first["tokens_cache"]) and store.latest_version(changed["tokens_cache"])


def run_check(defs, instance, asset, check, recipe="tiny"):
    """One gate alone, as the UI's 'Execute' on a check does: reads the stored metrics, trains nothing."""
    from dagster import AssetCheckKey

    job = defs.resolve_job_def("full_pipeline_job").get_subset(
        asset_selection=set(), asset_check_selection={AssetCheckKey(AssetKey(asset), check)})
    result = job.execute_in_process(partition_key=recipe, instance=instance, raise_on_error=False)
    return result, [c for c in result.get_asset_check_evaluations() if c.check_name == check]


def test_a_gate_threshold_edit_reruns_the_check_and_trains_nothing(graph, monkeypatch):
    defs, instance, recipes = graph
    monkeypatch.setenv("LLM_ASSETS_TRAINING_RETRIES", "2")  # a failed gate is not a reason to retry
    monkeypatch.setenv("LLM_ASSETS_TRAINING_RETRY_DELAY_S", "0")
    stages = ["base_model", "cpt_model", "sft_model", "reward_model"]
    first = materialize_recipe(defs, instance, selection=stages)
    assert first.success
    trained = meta(instance, "reward_model")
    write_recipe(recipes, reward={"min_accuracy": 1.0})
    from llm_assets.definitions import build_definitions

    defs = build_definitions()
    result, [evaluation] = run_check(defs, instance, "reward_model", "reward_accuracy_above_threshold")
    assert not evaluation.passed and "reward.min_accuracy" in evaluation.description  # one line that names the key
    assert evaluation.metadata["reward.min_accuracy"].value == 1.0
    assert 100 * evaluation.metadata["reward_accuracy"].value == pytest.approx(trained["reward_accuracy_pct"], abs=0.05)
    again = materialize_recipe(defs, instance, selection=stages)  # the blocking gate fails; nothing is retrained
    assert not again.success
    for asset in stages:
        assert meta(instance, asset)["reused"] is True, asset
    assert not any("[reward] loss=" in (e.message or "") for e in instance.all_logs(again.run_id))
    later = materialize_recipe(defs, instance, selection=["rlhf_policy"])  # another run: still not trained on
    failure = next(e for e in later.all_events if e.event_type_value == "STEP_FAILURE")
    assert "failed its gate reward_accuracy_above_threshold" in failure.step_failure_data.error.message
    assert not [e for e in later.all_events if e.event_type_value in ("STEP_UP_FOR_RETRY", "STEP_RESTARTED")]
    write_recipe(recipes, reward={"min_accuracy": 0.0})
    _, [evaluation] = run_check(build_definitions(), instance, "reward_model", "reward_accuracy_above_threshold")
    assert evaluation.passed


def test_forced_retrain_with_the_same_seed_gives_the_same_version(graph):
    defs, instance, recipes = graph
    write_recipe(recipes, cpt=None)  # SFT straight on the base model: CPT is not what this test is about
    from llm_assets.definitions import build_definitions

    defs = build_definitions()
    assert materialize_recipe(defs, instance, selection=["base_model", "cpt_model", "sft_model"]).success
    before = meta(instance, "sft_model")
    job = defs.resolve_job_def("full_pipeline_job").get_subset(asset_selection={AssetKey("sft_model")})
    forced = job.execute_in_process(partition_key="tiny", instance=instance, tags={"llm_assets/force_retrain": "true"})
    after = meta(instance, "sft_model")
    assert forced.success and "reused" not in after and after["resumed_from"] == ""
    assert any("[sft] loss=" in (e.message or "") for e in instance.all_logs(forced.run_id))  # it really trained again
    st = default_resources()["store"].open()
    a, b = (st.manifest("models/sft/tiny", x["artifact"].rsplit("/", 1)[1]) for x in (before, after))
    fa, fb = ({f["path"]: f["sha256"] for f in m.files} for m in (a, b))
    differ = sorted(k for k in set(fa) | set(fb) if fa.get(k) != fb.get(k))
    assert after["artifact"] == before["artifact"], differ  # same files, same version: downstream has nothing new to do
    store = default_resources()["store"].open()
    assert store.record("models/sft/tiny")["run_id"] == forced.run_id


def test_a_drop_of_rows_already_trained_on_retrains_nothing(graph, project_env):
    defs, instance, recipes = graph
    write_recipe(recipes, cpt=None)  # SFT straight on the base model: CPT is not what this test is about
    from llm_assets.definitions import build_definitions

    defs = build_definitions()
    assert materialize_recipe(defs, instance, selection=["base_model", "cpt_model", "sft_model"]).success
    first = meta(instance, "sft_model")
    landing = project_env / "data" / "landing" / "sft"
    lines = next(landing.glob("demo_word_tasks*.jsonl")).read_text().splitlines()
    (landing / "repeat.jsonl").write_text("\n".join(reversed(lines[:40])) + "\n")  # other order, every row seen before
    drops = register_drops(instance, default_resources()["landing"].open())
    defs = build_definitions()
    assert defs.resolve_job_def("sft_data_prep_job").execute_in_process(partition_key=drops["sft"][-1], instance=instance).success
    assert materialize_recipe(defs, instance, selection=["sft_model"]).success
    again = meta(instance, "sft_model")
    assert again["reused"] is True and again["artifact"] == first["artifact"]
    assert "sft/repeat.jsonl" in again["drops_used"]


def test_each_recipe_decides_which_drops_it_trains_on(graph, project_env):
    defs, instance, recipes = graph
    rows = [{"prompt": f"Say {w}.", "completion": "" if i % 10 == 0 else w} for i, w in enumerate(["alpha", "beta", "gamma", "delta",
            "epsilon", "zeta", "eta", "theta", "iota", "kappa"] * 2)]
    (project_env / "data" / "landing" / "sft" / "tenth_bad.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    drops = register_drops(instance, default_resources()["landing"].open())
    write_recipe(recipes, cpt=None)  # which drops SFT trains on: CPT is not what this test is about
    write_recipe(recipes, "tolerant", cpt=None, data={"max_reject_rate": 0.2})
    from llm_assets.definitions import build_definitions

    defs = build_definitions()
    assert defs.resolve_job_def("sft_data_prep_job").execute_in_process(partition_key="tenth_bad.jsonl", instance=instance).success
    assert "tenth_bad.jsonl" in drops["sft"]
    for recipe in ("tiny", "tolerant"):
        assert materialize_recipe(defs, instance, recipe, ["base_model", "cpt_model", "sft_model"]).success
    strict, tolerant = meta(instance, "sft_model"), meta(instance, "sft_model", "tolerant")
    assert "tenth_bad.jsonl" in str(strict["drops_left_out"]) and "data.max_reject_rate 5.0%" in str(strict["drops_left_out"])
    assert "sft/tenth_bad.jsonl" in tolerant["drops_used"] and "tenth_bad" not in str(tolerant["drops_left_out"])


def test_a_stage_the_recipe_leaves_out_shows_its_gate_skipped(graph):
    defs, instance, recipes = graph
    write_recipe(recipes, "noreward", cpt=None, reward=None, rlhf={"algorithm": "dpo"})
    from llm_assets.definitions import build_definitions

    defs = build_definitions()
    result = materialize_recipe(defs, instance, "noreward", ["base_model", "cpt_model", "sft_model", "reward_model", "rlhf_policy"])
    assert result.success
    gates = {c.check_name for c in result.get_asset_check_evaluations()}
    assert "sft_beats_parent" in gates and "reward_accuracy_above_threshold" not in gates  # planned, not evaluated
    dpo = meta(instance, "rlhf_policy", "noreward")  # DPO, with no reward model, trains on pairs from the tokenization cache
    assert dpo["algorithm"] == "dpo" and dpo["tokenization"] == "computed" and dpo["tokens_cache"].startswith("cache/tokens/rlhf/")
    from dagster import AssetCheckKey

    key = AssetCheckKey(AssetKey("reward_model"), "reward_accuracy_above_threshold")
    record = instance.event_log_storage.get_latest_asset_check_execution_by_key([key])[key]
    # planned in a run that succeeded, with no evaluation: what the UI shows as Skipped (not Passed)
    assert record.run_id == result.run_id and record.status.value == "PLANNED" and record.partition == "noreward"
    assert any("reward_accuracy_above_threshold skipped" in (e.message or "") for e in instance.all_logs(result.run_id))


def test_a_hub_base_is_snapshotted_by_its_own_worker(graph, hub_cache, monkeypatch):
    """The step hands the worker the repo and pinned revision; the worker resolves it from its own Hub cache (or the Hub),
    checks the architecture, and a revision it cannot get fails with the Hub's one-line reason, not retried."""
    defs, instance, recipes = graph
    cache, snap = hub_cache
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))  # the worker's environment: its own cache
    monkeypatch.setenv("LLM_ASSETS_TRAINING_RETRIES", "2")
    monkeypatch.setenv("LLM_ASSETS_TRAINING_RETRY_DELAY_S", "0")
    arch = {"hidden_size": 32, "intermediate_size": 64, "num_layers": 1, "num_heads": 2,
            "vocab_size": json.loads((snap / "config.json").read_text())["vocab_size"]}
    write_recipe(recipes, "hubbed", model={"base": "acme/tiny-llama", "revision": HUB_REV, "architecture": arch})
    write_recipe(recipes, "uncached", model={"base": "acme/tiny-llama", "revision": "f" * 40, "architecture": arch})
    from llm_assets.definitions import build_definitions

    defs = build_definitions()
    assert materialize_recipe(defs, instance, "hubbed", ["base_model"]).success
    assert meta(instance, "base_model", "hubbed")["source"] == f"acme/tiny-llama@{HUB_REV}"
    store = default_resources()["store"].open()
    weights = {f["path"]: f["sha256"] for f in store.manifest("models/base/hubbed").files}
    assert weights["model.safetensors"] == hashlib.sha256((snap / "model.safetensors").read_bytes()).hexdigest()

    failed = materialize_recipe(defs, instance, "uncached", ["base_model"])
    message = failed.get_step_failure_events()[0].step_failure_data.error.message
    assert "the base stage failed: HubError" in message and "acme/tiny-llama" in message
    assert not [e for e in failed.all_events if e.event_type_value == "STEP_UP_FOR_RETRY"]
