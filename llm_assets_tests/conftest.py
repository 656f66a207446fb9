import os
import socket
from pathlib import Path

import pytest

from llm_assets.recipes import ArchitectureGroup
from llm_assets.training.builtin import build_tiny
from llm_assets_tests.helpers import HUB_REV

PROJECT = Path(__file__).resolve().parent.parent
SHARED_DATA = PROJECT.parent / "shared" / "data"


@pytest.fixture
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"../shared/data is absent ({SHARED_DATA}); the real public data sets are not on this machine")
    return SHARED_DATA


@pytest.fixture
def project_env(tmp_path, monkeypatch):
    """A fresh DAGSTER_HOME, landing zone and artifact store for one test."""
    home = tmp_path / "dagster_home"
    home.mkdir()
    (home / "dagster.yaml").write_text((PROJECT / "configs" / "dagster.yaml").read_text())
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    monkeypatch.setenv("LLM_ASSETS_DATA_DIR", str(tmp_path / "data"))
    for var in ("LLM_ASSETS_LANDING", "LLM_ASSETS_STORE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("LLM_ASSETS_TRAINING_RETRIES", "0")  # a test that wants retries says so
    monkeypatch.setenv("LLM_ASSETS_CACHE", str(tmp_path / "worker_cache"))
    return tmp_path


@pytest.fixture(scope="session")
def s3_endpoint():
    """A real S3 endpoint on localhost: moto in server mode."""
    from moto.server import ThreadedMotoServer

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    old = {k: os.environ.get(k) for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION")}
    os.environ.update(AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing", AWS_DEFAULT_REGION="us-east-1")
    yield f"http://127.0.0.1:{port}"
    server.stop()
    for k, v in old.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


@pytest.fixture
def hub_cache(tmp_path, monkeypatch):
    """models--acme--tiny-llama/{refs/main, snapshots/<HUB_REV>/...}: the layout huggingface_hub writes."""
    repo = tmp_path / "hub" / "models--acme--tiny-llama"
    snap = repo / "snapshots" / HUB_REV
    snap.mkdir(parents=True)
    arch = ArchitectureGroup(hidden_size=32, intermediate_size=64, num_layers=1, num_heads=2, vocab_size=300)
    build_tiny([f"word{i} and text {i}" for i in range(300)], arch, 128, 0, snap)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(HUB_REV)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return tmp_path / "hub", snap
