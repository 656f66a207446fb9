"""batch_predictions[drop × recipe] through Dagster: inference drops landed and validated, two recipes trained, the
automation conditions evaluated on the real instance, and every partition they request materialized through Pipes.

One trained graph is shared by the module (training is the slow part); each test leaves nothing stale behind it.
"""

import json

import pyarrow.parquet as pq
import pytest
from dagster import AssetKey, DagsterInstance, MultiPartitionKey, evaluate_automation_conditions

from llm_assets.demo import register_drops
from llm_assets.resources import default_resources
from llm_assets.stages import MODEL_ASSETS
from llm_assets_tests.conftest import PROJECT
from llm_assets_tests.helpers import land_demo_drops, validate_landed_drops, write_recipe

GENERATION = {"max_new_tokens": 6, "batch_size": 8}
# a (4-bit quantized) and b (no quantization: its served model is the SFT model) train base and SFT only
FAST = {"cpt": None, "reward": None, "rlhf": None, "generation": GENERATION}
REQUESTS = [{"prompt": "What is the first word? red fox"},
            {"prompt": [{"role": "system", "content": "Answer briefly."}, {"role": "user", "content": "How many words? sun moon"}]},
            {"prompt": "   "},  # row 3: no request
            {"prompt": "What is the first word? red fox"},  # row 4 repeats row 1: a request of its own, kept
            {"prompt": [{"role": "user", "content": "Last word of: owl bee"}, {"role": "assistant", "content": "bee"}]}]  # row 5


def jsonl(rows) -> str:
    return "".join(json.dumps(r) + "\n" for r in rows)


class Graph:
    def __init__(self, root, recipes):
        from llm_assets.definitions import build_definitions

        self.root, self.recipes = root, recipes
        self.defs = build_definitions()
        self.instance = DagsterInstance.get()
        self.landing = default_resources()["landing"].open()
        self.store = default_resources()["store"].open()
        self.cursor = None

    def prepare(self, kind: str, keys) -> None:
        job = self.defs.resolve_job_def(f"{kind}_data_prep_job")
        for key in keys:
            assert job.execute_in_process(partition_key=key, instance=self.instance).success

    def land(self, name: str, text: str) -> None:
        """What the landing sensor does for a settled file: a drop partition, then its data prep run."""
        (self.root / "data" / "landing" / "inference" / name).write_text(text)
        register_drops(self.instance, self.landing)
        self.prepare("inference", [name])

    def train(self, recipe: str) -> None:
        job = self.defs.resolve_job_def("full_pipeline_job").get_subset(  # the recipe and its models: what predictions read
            asset_selection={AssetKey(a) for a in ("recipe", *MODEL_ASSETS)})
        result = job.execute_in_process(partition_key=recipe, instance=self.instance)
        assert result.success

    def tick(self) -> set[tuple[str, str]]:
        """The automation sensor's evaluation: the batch_predictions partitions it requests, as (drop, recipe)."""
        result = evaluate_automation_conditions(defs=self.defs, instance=self.instance, cursor=self.cursor)
        self.cursor = result.cursor
        return {(k.keys_by_dimension["drop"], k.keys_by_dimension["recipe"])
                for k in result.get_requested_partitions(AssetKey("batch_predictions"))}

    def predict(self, partitions) -> dict[tuple[str, str], dict]:
        """Materialize each (drop, recipe) through batch_predictions_job; its metadata by partition."""
        job = self.defs.resolve_job_def("batch_predictions_job")
        out = {}
        for drop, recipe in sorted(partitions):
            result = job.execute_in_process(partition_key=MultiPartitionKey({"drop": drop, "recipe": recipe}), instance=self.instance)
            assert result.success
            [event] = result.get_asset_materialization_events()
            out[(drop, recipe)] = {k: v.value for k, v in event.materialization.metadata.items()}
        return out

    def predictions(self, drop: str, recipe: str):
        return pq.read_table(self.store.get(f"predictions/{recipe}/{drop}").file("predictions.parquet")).to_pylist()


@pytest.fixture(scope="module")
def graph(tmp_path_factory):
    """Two recipes trained on the demo drops, then two inference drops landed: the automation tick requests four
    partitions, materialized here."""
    root = tmp_path_factory.mktemp("predictions")
    with pytest.MonkeyPatch.context() as mp:
        home = root / "dagster_home"
        home.mkdir()
        (home / "dagster.yaml").write_text((PROJECT / "configs" / "dagster.yaml").read_text())
        for var, value in {"DAGSTER_HOME": home, "LLM_ASSETS_DATA_DIR": root / "data", "LLM_ASSETS_CACHE": root / "worker_cache",
                           "LLM_ASSETS_RECIPES_DIR": root / "recipes", "LLM_ASSETS_TRAINING_RETRIES": "0"}.items():
            mp.setenv(var, str(value))
        for var in ("LLM_ASSETS_LANDING", "LLM_ASSETS_STORE"):
            mp.delenv(var, raising=False)
        write_recipe(root / "recipes", "a", **FAST)
        write_recipe(root / "recipes", "b", **FAST, quantization=None)
        g = Graph(root, root / "recipes")
        land_demo_drops(root / "data" / "landing", g.defs, g.instance, scale=0.05, kinds=("pretraining", "sft", "preference"))
        g.train("a")
        g.train("b")
        assert g.tick() == set()  # the prompts are not validated yet: nothing to reply to
        validate_landed_drops(g.defs, g.instance, kinds=("inference",))  # the demo prompts
        g.land("requests.jsonl", jsonl(REQUESTS))
        g.first = g.tick()
        g.first_metadata = g.predict(g.first)
        yield g


def test_two_drops_times_two_recipes_are_four_partitions(graph):
    assert graph.first == {(d, r) for d in ("demo_prompts.jsonl", "requests.jsonl") for r in ("a", "b")}
    assert graph.tick() == set()  # materialized: nothing stale
    meta = graph.first_metadata[("demo_prompts.jsonl", "a")]
    assert meta["dagster/row_count"] == meta["rows"] == 40
    assert meta["tokens_per_s"] > 0 and meta["rows_per_s"] > 0 and 0 < meta["latency_p50_ms"] <= meta["latency_p95_ms"]
    samples = meta["samples"].records
    assert [s.data["row"] for s in samples] == [1, 2, 3, 4, 5] and all(s.data["prompt"] for s in samples)
    assert meta["generation"] == {"max_new_tokens": 6, "do_sample": False, "temperature": 1.0, "top_p": 1.0, "batch_size": 8, "seed": 0}
    assert meta["predictions"].endswith("predictions.parquet") and "predictions/a/demo_prompts.jsonl/versions/" in meta["artifact"]
    # each partition replied with its own recipe's served model: a's is 4-bit, b's is its SFT model
    assert meta["model_version"] == graph.store.latest_version("models/quantize/a")
    assert graph.first_metadata[("demo_prompts.jsonl", "b")]["model_version"] == graph.store.latest_version("models/quantize/b")
    assert graph.store.latest_version("models/quantize/b") == graph.store.latest_version("models/sft/b")
    assert "quantization_config" in json.loads((graph.store.get("models/quantize/a").path / "config.json").read_text())


def test_the_parquet_has_every_row_with_its_number_in_file_order(graph):
    rows = graph.predictions("demo_prompts.jsonl", "a")
    assert [r["row"] for r in rows] == list(range(1, 41))
    assert set(rows[0]) == {"row", "prompt", "reply", "prompt_tokens", "reply_tokens", "latency_ms", "finish_reason"}
    landed = (graph.root / "data" / "landing" / "inference" / "demo_prompts.jsonl").read_text().splitlines()
    for r in rows:
        assert r["prompt"] == [{"role": "user", "content": json.loads(landed[r["row"] - 1])["prompt"]}]
        assert r["prompt_tokens"] > 0 and r["latency_ms"] > 0 and r["finish_reason"] in ("stop", "length")
        assert r["reply_tokens"] == 6 if r["finish_reason"] == "length" else 1 <= r["reply_tokens"] <= 6


def test_a_bad_prompt_row_is_quarantined_with_its_row_number_and_a_repeat_gets_its_own_reply(graph):
    rows = graph.predictions("requests.jsonl", "b")
    assert [r["row"] for r in rows] == [1, 2, 4]
    assert rows[1]["prompt"] == REQUESTS[1]["prompt"]  # the whole conversation, system turn included
    assert rows[0]["prompt"] == rows[2]["prompt"]
    quarantine = pq.read_table(graph.store.get("datasets/inference/requests.jsonl").file("quarantine.parquet")).to_pylist()
    assert [(q["source_row"], q["reason"]) for q in quarantine] == [(3, "bad_prompt"), (5, "bad_prompt")]
    assert "row 3: field 'prompt' is empty" in quarantine[0]["detail"]
    assert "row 5: field 'prompt' ends with a 'assistant' message" in quarantine[1]["detail"]


def test_a_retrained_model_reruns_its_own_predictions_only(graph):
    # before the third drop lands: two drops to re-run, not three (the tests share one graph and run in file order)
    drops = set(graph.instance.get_dynamic_partitions("inference_drops"))
    old = {d: graph.store.latest_version(f"predictions/b/{d}") for d in drops}
    write_recipe(graph.recipes, "b", **FAST, quantization=None, sft={"learning_rate": 5e-4})
    graph.train("b")  # observes the edited recipe and retrains b's SFT model, its served model
    requested = graph.tick()
    assert requested == {(d, "b") for d in drops}
    meta = graph.predict(requested)
    assert all(m["model_version"] == graph.store.latest_version("models/sft/b") for m in meta.values())
    assert all(graph.store.latest_version(f"predictions/b/{d}") != old[d] for d in drops)
    assert graph.tick() == set()


def test_landing_a_third_drop_runs_only_its_two_partitions(graph):
    graph.land("later.jsonl", jsonl([{"prompt": "Reverse the words: fig tea"}, {"prompt": "Count the words: map key jam"}]))
    requested = graph.tick()
    assert requested == {("later.jsonl", "a"), ("later.jsonl", "b")}
    meta = graph.predict(requested)
    assert {m["rows"] for m in meta.values()} == {2}
    assert graph.tick() == set()


def test_unchanged_inputs_reuse_the_predictions(graph):
    before = graph.store.latest_version("predictions/a/requests.jsonl")
    meta = graph.predict({("requests.jsonl", "a")})[("requests.jsonl", "a")]
    assert meta["reused"] is True and graph.store.latest_version("predictions/a/requests.jsonl") == before
    assert graph.tick() == set()
