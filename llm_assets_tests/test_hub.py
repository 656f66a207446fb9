"""Hub loading against a local directory laid out like the Hub cache, and offline failures."""

import json
import time

import pytest

from llm_assets.recipes import ArchitectureGroup
from llm_assets.resources.hub import HubClient, HubError, check_architecture
from llm_assets.training.builtin import build_tiny

REV = "0123456789abcdef0123456789abcdef01234567"


@pytest.fixture
def hub_cache(tmp_path, monkeypatch):
    """models--acme--tiny-llama/{refs/main, snapshots/<REV>/...}: the layout huggingface_hub writes."""
    repo = tmp_path / "hub" / "models--acme--tiny-llama"
    snap = repo / "snapshots" / REV
    snap.mkdir(parents=True)
    arch = ArchitectureGroup(hidden_size=32, intermediate_size=64, num_layers=1, num_heads=2, vocab_size=300)
    build_tiny([f"word{i} and text {i}" for i in range(300)], arch, 128, 0, snap)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(REV)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return tmp_path / "hub", snap


def test_snapshot_at_a_pinned_revision_from_the_cache(hub_cache):
    cache, snap = hub_cache
    path = HubClient(cache_dir=str(cache)).snapshot("acme/tiny-llama", REV)
    assert path == snap and (path / "model.safetensors").exists() and (path / "tokenizer.json").exists()


def test_offline_and_not_cached_fails_fast_with_what_to_do(hub_cache):
    cache, _ = hub_cache
    t0 = time.time()
    with pytest.raises(HubError, match=r"acme/other@.* is not in the local Hub cache .*offline.*hf download"):
        HubClient(cache_dir=str(cache)).snapshot("acme/other", REV)
    assert time.time() - t0 < 5


def test_unreachable_hub_fails_fast(tmp_path, monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # nothing listens on the discard port
    t0 = time.time()
    with pytest.raises(HubError, match="acme/tiny-llama"):
        HubClient(cache_dir=str(tmp_path / "empty"), timeout_s=2).snapshot("acme/tiny-llama", REV)
    assert time.time() - t0 < 30


def test_architecture_mismatch_names_the_keys(hub_cache):
    _, snap = hub_cache
    config = json.loads((snap / "config.json").read_text())
    ok = ArchitectureGroup(hidden_size=32, intermediate_size=64, num_layers=1, num_heads=2, vocab_size=config["vocab_size"])
    check_architecture(snap, ok, "acme/tiny-llama")
    wrong = ok.model_copy(update={"num_layers": 4})
    with pytest.raises(HubError, match="num_layers: recipe 4 vs config.json 1"):
        check_architecture(snap, wrong, "acme/tiny-llama")
