"""Real data assets through Dagster: materialize in a temporary DAGSTER_HOME, and the CLI."""

import json
import os
import subprocess
import sys
from pathlib import Path

import boto3
import pytest
from dagster import DagsterInstance, materialize

from llm_assets.assets.data import data_assets, dataset_key
from llm_assets.data.io import read_table
from llm_assets.demo_data import write_demo_drops
from llm_assets.partitions import DROP_PARTITIONS
from llm_assets.resources import default_resources

PROJECT = Path(__file__).resolve().parent.parent


def land(root: Path, kind: str, name: str, data: bytes) -> None:
    (root / kind).mkdir(parents=True, exist_ok=True)
    (root / kind / name).write_bytes(data)


def run_drop(kind: str, key: str, resources=None):
    instance = DagsterInstance.get()
    instance.add_dynamic_partitions(DROP_PARTITIONS[kind].name, [key])
    selection = [a for a in data_assets if a.key.path[-1] in (f"raw_{kind}_corpus", f"{kind}_dataset")]
    return materialize(selection, partition_key=key, instance=instance, resources=resources or default_resources(), raise_on_error=False)


def dataset_meta(result, kind):
    (event,) = [e for e in result.get_asset_materialization_events() if e.asset_key.path[-1] == f"{kind}_dataset"]
    return {k: v.value for k, v in event.materialization.metadata.items()}


def checks(result):
    return {c.check_name: c for c in result.get_asset_check_evaluations()}


def test_demo_drop_materializes_with_quarantine_and_passing_checks(project_env):
    landing = project_env / "data" / "landing"
    write_demo_drops(landing, scale=0.5)
    result = run_drop("sft", "demo_word_tasks.jsonl")
    assert result.success
    meta = dataset_meta(result, "sft")
    assert meta["format"] == "prompt_completion"
    assert meta["rows_in"] == meta["rows_kept"] + meta["rows_quarantined"] + meta["rows_duplicate"]
    assert meta["rows_quarantined"] == 3 and meta["rows_duplicate"] == 2 and meta["reject_rate"] == round(3 / meta["rows_in"], 4)
    assert meta["pii_scrubbed"] == {"email": 1}
    assert "empty_text" in meta["reject_reasons"] and "| source_row |" in meta["samples"]
    assert all(c.passed for c in checks(result).values()) and len(checks(result)) == 3
    store = default_resources()["store"].open()
    art = store.get(dataset_key("sft", "demo_word_tasks.jsonl"))
    stored = read_table(art.file("dataset.parquet"))
    assert len(stored) == meta["rows_kept"] and not stored.to_json().count("ana.lopez@mailbox.org")
    q = read_table(art.file("quarantine.parquet"))
    assert list(q["source_row"]) == [8, 20, 76]
    dupes = read_table(art.file("duplicates.parquet"))
    assert dupes[["source_row", "duplicate_of"]].values.tolist() == [[41, 31], [61, 51]]


def test_raw_snapshot_is_immutable_and_content_versioned(project_env):
    landing = project_env / "data" / "landing"
    land(landing, "pretraining", "c.jsonl", b'{"text": "one"}\n')
    r1 = run_drop("pretraining", "c.jsonl")
    land(landing, "pretraining", "c.jsonl", b'{"text": "two"}\n')
    r2 = run_drop("pretraining", "c.jsonl")
    v = [next(e for e in r.get_asset_materialization_events() if e.asset_key.path[-1] == "raw_pretraining_corpus") for r in (r1, r2)]
    tags = [e.materialization.tags["dagster/data_version"] for e in v]
    assert tags[0] != tags[1]
    store = default_resources()["store"].open()
    assert store.get("raw/pretraining/c.jsonl", tags[0]).file("c.jsonl").read_bytes() == b'{"text": "one"}\n'


def test_empty_file_fails_the_run_with_a_clear_message(project_env):
    land(project_env / "data" / "landing", "sft", "empty.jsonl", b"")
    result = run_drop("sft", "empty.jsonl")
    assert not result.success
    failure = next(e for e in result.all_events if e.event_type_value == "STEP_FAILURE")
    assert "sft drop 'empty.jsonl'" in failure.step_failure_data.error.message
    assert "the file is empty" in failure.step_failure_data.error.message


def test_a_third_of_bad_rows_is_the_consumers_call_but_most_rows_bad_fails_the_drop(project_env):
    """The dataset's own bound is a sanity check ("wrong format?"); recipes apply their own data.max_reject_rate."""
    landing = project_env / "data" / "landing"
    rows = [{"prompt": f"q{i}", "completion": "" if i % 3 == 0 else "a"} for i in range(30)]
    land(landing, "sft", "some_bad.jsonl", "".join(json.dumps(r) + "\n" for r in rows).encode())
    result = run_drop("sft", "some_bad.jsonl")
    c = checks(result)
    assert result.success and all(x.passed for x in c.values())
    assert c["reject_rate_plausible"].metadata["reject_rate"].value == pytest.approx(10 / 30, abs=1e-3)
    rows = [{"prompt": f"q{i}", "completion": "a" if i % 3 == 0 else ""} for i in range(30)]
    land(landing, "sft", "mostly_bad.jsonl", "".join(json.dumps(r) + "\n" for r in rows).encode())
    result = run_drop("sft", "mostly_bad.jsonl")
    c = checks(result)
    assert not result.success and not c["reject_rate_plausible"].passed and c["contract_holds"].passed
    assert c["reject_rate_plausible"].description.startswith("66.7% of the rows were quarantined, above the 50% sanity bound")


def test_shared_t0_mixture_keeps_every_well_formed_row(project_env, shared_data):
    """The real file's defects: 1,400 rows (all 7 TREC templates) have an empty completion."""
    data = (shared_data / "sft" / "t0_mixture.jsonl").read_bytes()
    land(project_env / "data" / "landing", "sft", "t0_mixture.jsonl", data)
    result = run_drop("sft", "t0_mixture.jsonl")
    meta = dataset_meta(result, "sft")
    rows = [json.loads(line) for line in data.decode().splitlines()]
    defective = {i for i, r in enumerate(rows, 1) if not r["completion"].strip()}
    assert meta["rows_in"] == 8200 and meta["rows_kept"] == 8200 - len(defective) == 6800
    q = read_table(default_resources()["store"].open().get(dataset_key("sft", "t0_mixture.jsonl")).file("quarantine.parquet"))
    assert set(q["source_row"]) == defective and set(q["reason"]) == {"empty_text"}
    # 17% of the file is defective: plausible for the file's format; each recipe decides whether that is too many
    c = checks(result)
    assert all(x.passed for x in c.values()) and meta["reject_rate"] == pytest.approx(1400 / 8200, abs=1e-4)


def test_shared_preference_and_news_ingest(project_env, shared_data):
    landing = project_env / "data" / "landing"
    land(landing, "preference", "hh.jsonl", (shared_data / "preference" / "hh_rlhf_harmless.jsonl").read_bytes())
    land(landing, "pretraining", "news.jsonl", (shared_data / "cpt" / "news_articles.jsonl").read_bytes())
    pref = dataset_meta(run_drop("preference", "hh.jsonl"), "preference")
    assert pref["format"] == "hh_rlhf" and pref["rows_in"] == 1500 and pref["rows_kept"] == 1497
    news = dataset_meta(run_drop("pretraining", "news.jsonl"), "pretraining")
    assert news["format"] == "text" and news["rows_kept"] == 390 and news["rows_duplicate"] == 10
    assert news["rows_quarantined"] == 0 and news["reject_rate"] == 0  # exact duplicates are de-duplication, not rejection


def test_s3_landing_and_store_end_to_end(project_env, s3_endpoint, monkeypatch):
    client = boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1")
    client.create_bucket(Bucket="lake")
    client.put_object(Bucket="lake", Key="landing/sft/s3drop.jsonl", Body=b'{"prompt": "p", "completion": "c"}\n{"prompt": "q", "completion": ""}\n')
    monkeypatch.setenv("LLM_ASSETS_LANDING", "s3://lake/landing")
    monkeypatch.setenv("LLM_ASSETS_STORE", "s3://lake/store")
    monkeypatch.setenv("LLM_ASSETS_S3_ENDPOINT", s3_endpoint)
    meta = dataset_meta(run_drop("sft", "s3drop.jsonl"), "sft")
    assert meta["rows_kept"] == 1 and meta["rows_quarantined"] == 1
    keys = [o["Key"] for o in client.list_objects_v2(Bucket="lake", Prefix="store/datasets/sft/s3drop.jsonl/")["Contents"]]
    assert any(k.endswith("/MANIFEST.json") for k in keys) and any(k.endswith("/LATEST") for k in keys)


def cli(args, env):
    return subprocess.run([str(Path(sys.executable).parent / "dagster"), *args], cwd=PROJECT, env=env, capture_output=True, text=True, timeout=300)


def test_cli_validate_and_materialize_a_partition(project_env):
    env = {**os.environ}
    r = cli(["definitions", "validate", "-w", "workspace.yaml"], env)
    assert r.returncode == 0, r.stderr[-2000:]
    land(project_env / "data" / "landing", "sft", "cli.jsonl", b'{"instruction": "Say hi", "output": "hi"}\n')
    DagsterInstance.get().add_dynamic_partitions("sft_drops", ["cli.jsonl"])
    r = cli(["asset", "materialize", "-m", "llm_assets.definitions", "--select", "raw_sft_corpus,sft_dataset", "--partition", "cli.jsonl"], env)
    assert r.returncode == 0, r.stderr[-3000:]
    record = DagsterInstance.get().get_latest_materialization_event(__import__("dagster").AssetKey("sft_dataset"))
    assert record.asset_materialization.partition == "cli.jsonl"
    assert record.asset_materialization.metadata["format"].value == "alpaca"
