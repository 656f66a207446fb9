"""Interrupted S3 commits leave nothing after garbage collection; referenced versions survive it (issue 16, item 6)."""

import hashlib
import os
import signal
import subprocess
import sys
import time

import boto3
import pytest
from dagster import DagsterInstance
from dagster_aws.s3 import S3Resource

from llm_assets.artifacts import Store
from llm_assets.assets.maintenance import store_gc_job
from llm_assets.maintenance.gc import collect_garbage
from llm_assets.objects import LocalObjects, S3Objects
from llm_assets.resources.store import ArtifactStore
from llm_assets_tests.test_store import make_dir

BIG = 20 * 1024 * 1024  # three parts at boto3's 8 MiB multipart chunks

# A writer whose connection hangs on the second part of its big file, then is killed -9 (the fault trial).
KILLED_WRITER = """
import sys, time, boto3
from pathlib import Path
from llm_assets.artifacts import Store
from llm_assets.objects import S3Objects
endpoint, root, src = sys.argv[1:]
client = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1")
def hang(params, **kwargs):
    if params["query_string"].get("partNumber") == 2:
        print("hanging", flush=True)
        time.sleep(600)
client.meta.events.register("before-call.s3.UploadPart", hang)
Store(S3Objects(root, client)).commit("models/sft/r", Path(src))
"""


@pytest.fixture
def bucket(s3_endpoint, tmp_path):
    client = boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1")
    name = f"gc{hashlib.sha1(str(tmp_path).encode()).hexdigest()[:12]}"
    client.create_bucket(Bucket=name)
    return client, name


def big_source(tmp_path):
    return make_dir(tmp_path / "src", {"config.json": b'{"a": 1}', "model.bin": os.urandom(BIG)})


def everything(client, bucket):
    objects = [o["Key"] for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket) for o in page.get("Contents", [])]
    uploads = client.list_multipart_uploads(Bucket=bucket).get("Uploads", [])
    return sorted(objects), uploads


def test_a_failed_commit_aborts_its_upload_and_removes_its_files(bucket, tmp_path):
    client, name = bucket

    def fail(params, **kwargs):
        if params["query_string"].get("partNumber") == 2:
            raise ConnectionResetError("the endpoint went away")

    client.meta.events.register("before-call.s3.UploadPart", fail)
    with pytest.raises(Exception):
        Store(S3Objects(f"s3://{name}/store", client)).commit("models/sft/r", big_source(tmp_path))
    assert everything(client, name) == ([], [])


def test_a_killed_commit_leaves_nothing_after_gc_and_a_dry_run_deletes_nothing(bucket, s3_endpoint, tmp_path):
    client, name = bucket
    root = f"s3://{name}/store"
    writer = subprocess.Popen([sys.executable, "-c", KILLED_WRITER, s3_endpoint, root, str(big_source(tmp_path))],
                              stdout=subprocess.PIPE, text=True)
    assert writer.stdout.readline().strip() == "hanging"
    time.sleep(1.0)  # the other parts finish
    os.kill(writer.pid, signal.SIGKILL)
    writer.wait()
    left = everything(client, name)
    assert [k.rsplit("/", 1)[-1] for k in left[0]] == ["config.json"] and len(left[1]) == 1  # the trial's garbage
    store = Store(S3Objects(root, client), cache_dir=tmp_path / "cache")

    young = collect_garbage(store, older_than_hours=1, dry_run=True)
    assert [g.kind for g in young.garbage] == ["upload"]  # moto dates every upload 2010; the files are younger than 1 h

    dry = collect_garbage(store, older_than_hours=0, dry_run=True)
    assert sorted(g.kind for g in dry.garbage) == ["uncommitted", "upload"]
    upload = next(g for g in dry.garbage if g.kind == "upload")
    assert upload.bytes >= 8 * 1024 * 1024  # the parts that were stored
    assert "would free" in dry.summary() and f"{dry.total_bytes:,}" in dry.summary()
    assert everything(client, name) == left  # a dry run deletes nothing

    done = collect_garbage(store, older_than_hours=0)
    assert done.errors == [] and done.total_bytes == dry.total_bytes
    assert everything(client, name) == ([], [])


def test_referenced_versions_survive_and_the_rest_goes(bucket, tmp_path):
    client, name = bucket
    store = Store(S3Objects(f"s3://{name}/store", client), cache_dir=tmp_path / "cache")
    v = {}
    for label, key in [("base_old", "models/base/r"), ("base_new", "models/base/r"), ("sft_old", "models/sft/r"),
                       ("sft", "models/sft/r"), ("rel_approved", "models/release/r"), ("rel_new", "models/release/r")]:
        v[label] = store.commit(key, make_dir(tmp_path / label, {"f": label.encode()})).version
    store.put_record("models/sft/r", "fp1", {"version": v["sft"], "inputs": {"model": v["base_old"]}})
    store.put_json(f"approvals/r/{v['rel_approved']}.json", {"version": v["rel_approved"], "approver": "ann"})
    ckpt = store.commit("checkpoints/models/sft/r/fp2", make_dir(tmp_path / "ck", {"step": b"1"}), latest=False)
    store.put_json("models/sft/r/results/fp1.json", {"version": v["sft"]})
    store.get("models/sft/r", v["sft_old"])  # a cached copy, of a version about to go

    busy = collect_garbage(store, older_than_hours=0, dry_run=True, in_flight={"r"})
    assert "checkpoint" not in {g.kind for g in busy.garbage}  # a recipe with a run in progress keeps its checkpoints

    report = collect_garbage(store, older_than_hours=0)
    gone = {(g.kind, g.where) for g in report.garbage}
    assert gone == {("version", f"models/sft/r/versions/{v['sft_old']}"), ("checkpoint", "checkpoints/models/sft/r/fp2"),
                    ("result", "models/sft/r/results/fp1.json"),
                    ("work", str(tmp_path / "cache" / "models/sft/r/versions" / v["sft_old"]))}
    for label in ("base_old", "base_new", "sft", "rel_approved", "rel_new"):
        assert store.get({"base": "models/base/r", "sft": "models/sft/r", "rel": "models/release/r"}[label.split("_")[0]],
                         v[label]).file("f").read_bytes() == label.encode()
    assert not store.has_version("models/sft/r", v["sft_old"]) and store.versions("checkpoints/models/sft/r/fp2") == []
    assert ckpt.version and report.kept_versions == 5


def test_local_work_directories_of_killed_writers_go(tmp_path):
    store = Store(LocalObjects(tmp_path / "store"))
    store.commit("k", make_dir(tmp_path / "src", {"f": b"1"}))
    staging = tmp_path / "store" / ".staging" / "dead"
    staging.mkdir(parents=True)
    (staging / "model.bin").write_bytes(b"x" * 100)
    scratch = tmp_path / "scratch"
    (scratch / "llm-assets-sft-abc" / "out").mkdir(parents=True)
    (scratch / "llm-assets-sft-abc" / "out" / "w").write_bytes(b"y" * 50)
    (scratch / "someone-else").mkdir()
    assert collect_garbage(store, older_than_hours=1, scratch=scratch).garbage == []  # too young: maybe still running
    report = collect_garbage(store, older_than_hours=0, scratch=scratch)
    assert sorted((g.where, g.bytes) for g in report.garbage) == [(".staging/dead", 100), (str(scratch / "llm-assets-sft-abc"), 50)]
    assert not staging.exists() and sorted(p.name for p in scratch.iterdir()) == ["someone-else"]
    assert store.get("k").file("f").read_bytes() == b"1"


def test_cli_and_job(bucket, s3_endpoint, tmp_path):
    client, name = bucket
    root = f"s3://{name}/store"
    store = Store(S3Objects(root, client))
    old = store.commit("k", make_dir(tmp_path / "a", {"f": b"old"})).version
    store.commit("k", make_dir(tmp_path / "b", {"f": b"new"}))
    env = {**os.environ, "LLM_ASSETS_STORE": root, "LLM_ASSETS_S3_ENDPOINT": s3_endpoint,
           "LLM_ASSETS_SCRATCH": str(tmp_path / "scratch"), "LLM_ASSETS_DATA_DIR": str(tmp_path / "data")}
    out = subprocess.run([sys.executable, "-m", "llm_assets.gc", "--dry-run", "--older-than", "0"], env=env,
                         capture_output=True, text=True, check=True).stdout
    assert "would delete version" in out and f"k/versions/{old}" in out and "1 version older than 0 h: would free" in out
    assert store.has_version("k", old)

    resources = {"store": ArtifactStore(root=root, s3=S3Resource(endpoint_url=s3_endpoint, region_name="us-east-1"))}
    result = store_gc_job.execute_in_process(
        run_config={"ops": {"collect_store_garbage": {"config": {"dry_run": False, "older_than_hours": 0}}}},
        resources=resources, instance=DagsterInstance.ephemeral())
    assert result.success
    assert result.output_for_node("collect_store_garbage")["garbage"][0]["where"] == f"k/versions/{old}"
    assert not store.has_version("k", old) and store.get("k").file("f").read_bytes() == b"new"
