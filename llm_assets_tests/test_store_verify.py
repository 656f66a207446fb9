"""Stored bytes that no longer match their manifest are never served, on any read path (issue 16, item 5)."""

import hashlib
import json
import os

import boto3
import pytest

from llm_assets.artifacts import CorruptArtifact, Store
from llm_assets.objects import LocalObjects, S3Objects
from llm_assets.training.order import StoreSettings, WorkOrder
from llm_assets.training.report import Reporter
from llm_assets.training.worker import run_order
from llm_assets_tests.test_store import make_dir

WEIGHTS = bytes(range(256)) * 40  # 10,240 bytes


def s3_store(endpoint, tmp_path, cache="cache"):
    client = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1")
    bucket = f"v{hashlib.sha1(str(tmp_path).encode()).hexdigest()[:12]}"
    client.create_bucket(Bucket=bucket)
    return Store(S3Objects(f"s3://{bucket}/artifacts", client), cache_dir=tmp_path / cache)


def flip_keeping_stat(path):
    """Change one byte in place and set the mtime back: size and mtime as before, the content not."""
    st = path.stat()
    data = bytearray(path.read_bytes())
    data[100] ^= 0xFF
    path.write_bytes(bytes(data))
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert path.stat().st_size == st.st_size and path.stat().st_mtime_ns == st.st_mtime_ns


def test_local_get_refuses_a_truncated_or_rewritten_file(tmp_path):
    store = Store(LocalObjects(tmp_path / "store"))
    m = store.commit("models/sft/tiny", make_dir(tmp_path / "src", {"model.safetensors": WEIGHTS, "config.json": b"{}"}))
    art = store.get("models/sft/tiny")
    assert art.file("model.safetensors").read_bytes() == WEIGHTS
    stored = art.file("model.safetensors")

    flip_keeping_stat(stored)
    with pytest.raises(CorruptArtifact) as e:
        store.get("models/sft/tiny")
    message = str(e.value)
    assert f"models/sft/tiny/versions/{m.version}/model.safetensors does not match its manifest" in message
    assert "materialize models/sft/tiny again" in message and "\n" not in message

    stored.write_bytes(WEIGHTS[:-1])
    with pytest.raises(CorruptArtifact, match="10,239 bytes where the manifest says 10,240"):
        store.get("models/sft/tiny", m.version)
    assert store.verify("models/sft/tiny", m.version) == [("model.safetensors", "10,239 bytes where the manifest says 10,240")]


def test_local_get_hashes_only_files_whose_stat_changed(tmp_path):
    """A sound copy is sealed: reads cost a stat per file; a touched but unchanged file is hashed once and resealed."""
    store = Store(LocalObjects(tmp_path / "store"))
    m = store.commit("k", make_dir(tmp_path / "src", {"f": WEIGHTS}))
    path = store.get("k").file("f")
    os.utime(path)  # new mtime, same bytes
    assert store.get("k").file("f").read_bytes() == WEIGHTS
    assert store.verify("k", m.version) == []


def test_s3_get_refuses_corrupt_bytes_in_the_store(s3_endpoint, tmp_path):
    store = s3_store(s3_endpoint, tmp_path)
    m = store.commit("models/sft/tiny", make_dir(tmp_path / "src", {"model.safetensors": WEIGHTS}))
    store.objects.write_bytes(f"models/sft/tiny/versions/{m.version}/model.safetensors", WEIGHTS[::-1])
    with pytest.raises(CorruptArtifact, match=f"tiny/versions/{m.version}/model.safetensors does not match its manifest"):
        store.get("models/sft/tiny")
    assert not (tmp_path / "cache" / "models").exists()  # nothing unverified entered the cache
    assert list((tmp_path / "cache" / ".partial").iterdir()) == []


@pytest.mark.parametrize("damage", ["truncated", "same size and mtime"])
def test_s3_cache_damaged_after_download_is_fetched_again(s3_endpoint, tmp_path, damage):
    store = s3_store(s3_endpoint, tmp_path)
    m = store.commit("k", make_dir(tmp_path / "src", {"model.safetensors": WEIGHTS, "config.json": b"{}"}))
    cached = store.get("k").file("model.safetensors")
    if damage == "truncated":
        cached.write_bytes(WEIGHTS[:5000])
    else:
        flip_keeping_stat(cached)
    art = store.get("k")
    assert art.file("model.safetensors").read_bytes() == WEIGHTS
    assert art.version == m.version


def test_s3_verify_reads_the_stored_bytes_not_the_cache(s3_endpoint, tmp_path):
    store = s3_store(s3_endpoint, tmp_path)
    m = store.commit("k", make_dir(tmp_path / "src", {"f": WEIGHTS}))
    store.get("k")
    assert store.verify("k", m.version) == []
    store.objects.write_bytes(f"k/versions/{m.version}/f", WEIGHTS[:-10])
    assert store.verify("k", m.version) == [("f", "10,230 bytes where the manifest says 10,240")]


def test_read_file_refuses_a_rewritten_file(tmp_path):
    store = Store(LocalObjects(tmp_path / "store"))
    m = store.commit("k", make_dir(tmp_path / "src", {"metrics.json": b'{"eval_loss": 1.5}'}))
    store.objects.write_bytes(f"k/versions/{m.version}/metrics.json", b'{"eval_loss": 0.1}')
    with pytest.raises(CorruptArtifact, match=f"Version {m.version[:12]} of 'k' is corrupt"):
        store.read_file("k", "metrics.json")


def test_a_worker_refuses_a_corrupt_input_and_says_which(tmp_path, monkeypatch):
    """The worker's input fetch (run_order -> prepare -> Store.get): the error it leaves names the file."""
    monkeypatch.setenv("LLM_ASSETS_CACHE", str(tmp_path / "worker_cache"))
    monkeypatch.setenv("LLM_ASSETS_SCRATCH", str(tmp_path / "scratch"))
    (tmp_path / "scratch").mkdir()
    root = tmp_path / "store"
    store = Store(LocalObjects(root))
    d = store.commit("datasets/sft/a.jsonl", make_dir(tmp_path / "src", {"dataset.parquet": WEIGHTS}))
    (root / "datasets/sft/a.jsonl/versions" / d.version / "dataset.parquet").write_bytes(WEIGHTS[:-1])
    order = WorkOrder(stage="sft", recipe={"name": "tiny"}, store=StoreSettings(str(root)), output_key="models/sft/tiny",
                      fingerprint="f" * 16, datasets={"sft": [{"key": "datasets/sft/a.jsonl", "version": d.version}]})
    with pytest.raises(CorruptArtifact, match="datasets/sft/a.jsonl"):
        run_order(order, Reporter())
    error = json.loads((root / order.error_path).read_text())["error"]
    assert error.startswith("CorruptArtifact: ") and f"a.jsonl/versions/{d.version}/dataset.parquet" in error
    assert list((tmp_path / "scratch").iterdir()) == []
