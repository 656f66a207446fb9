"""Hub loading from a local directory laid out like the Hub cache and from a Hub served on 127.0.0.1; offline, stalled and disk failures."""

import hashlib
import json
import os
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from llm_assets.recipes import ArchitectureGroup
from llm_assets.resources.hub import HubClient, HubError, bound_hub_requests, check_architecture
from llm_assets_tests.helpers import HUB_REV as REV

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


@pytest.fixture
def hub_server(hub_cache):
    """A Hub on 127.0.0.1 serving acme/tiny-llama at REV: the API routes snapshot_download calls and the file downloads."""
    _, snap = hub_cache
    files = {p.name: p.read_bytes() for p in snap.iterdir() if p.is_file()}
    repo = "acme/tiny-llama"

    class Hub(BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def reply(self, status: int, body: bytes = b"", headers: dict | None = None):
            self.send_response(status)
            for k, v in {"Content-Length": str(len(body)), **(headers or {})}.items():
                self.send_header(k, v)
            self.end_headers()
            if self.command == "GET":
                self.wfile.write(body)

        def do_GET(self):
            path = self.path.split("?")[0]
            if path == f"/api/models/{repo}/revision/{REV}":
                return self.reply(200, json.dumps({"id": repo, "sha": REV, "siblings": [{"rfilename": f} for f in files]}).encode())
            if path == f"/api/models/{repo}/tree/{REV}":
                tree = [{"type": "file", "path": f, "size": len(b), "oid": hashlib.sha1(b).hexdigest()} for f, b in files.items()]
                return self.reply(200, json.dumps(tree).encode())
            name = path.removeprefix(f"/{repo}/resolve/{REV}/")
            if name in files:
                return self.reply(200, files[name], {"ETag": f'"{hashlib.sha1(files[name]).hexdigest()}"', "X-Repo-Commit": REV})
            self.reply(404)

        do_HEAD = do_GET

    server = ThreadingHTTPServer(("127.0.0.1", 0), Hub)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_port}", snap
    server.shutdown()


@pytest.fixture
def silent_hub():
    """An endpoint that accepts connections (the kernel completes the handshake) and never answers."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(16)
        yield f"http://127.0.0.1:{s.getsockname()[1]}"


def test_snapshot_downloads_from_the_endpoint_given(hub_server, tmp_path, monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE")
    endpoint, snap = hub_server
    path = HubClient(cache_dir=str(tmp_path / "cache"), endpoint=endpoint, timeout_s=5).snapshot("acme/tiny-llama", REV)
    assert path == tmp_path / "cache" / "models--acme--tiny-llama" / "snapshots" / REV
    assert (path / "model.safetensors").read_bytes() == (snap / "model.safetensors").read_bytes()


def test_unreachable_hub_fails_fast(tmp_path, monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    t0 = time.time()
    with pytest.raises(HubError, match=r"acme/tiny-llama@.* Hub \(http://127.0.0.1:9\) cannot be reached"):
        HubClient(cache_dir=str(tmp_path / "empty"), endpoint="http://127.0.0.1:9", timeout_s=2).snapshot("acme/tiny-llama", REV)
    assert time.time() - t0 < 5


def test_hf_endpoint_set_after_the_hub_library_was_imported_is_used(tmp_path, monkeypatch):
    import huggingface_hub  # noqa: F401  (already imported: the library read HF_ENDPOINT then)

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # nothing listens on the discard port
    with pytest.raises(HubError, match=r"Hub \(http://127.0.0.1:9\) cannot be reached"):
        HubClient(cache_dir=str(tmp_path / "empty"), timeout_s=2).snapshot("acme/tiny-llama", REV)


def test_a_hub_that_never_answers_times_out_within_the_bound(silent_hub, tmp_path, monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    t0 = time.time()
    with pytest.raises(HubError, match=r"cannot be reached \(ReadTimeout after at most 1 s"):
        HubClient(cache_dir=str(tmp_path / "empty"), endpoint=silent_hub, timeout_s=1).snapshot("acme/tiny-llama", REV)
    assert time.time() - t0 < 5


def test_every_request_of_the_hub_library_gets_the_timeout(silent_hub):
    """snapshot_download lists a repo with timeout=None; the bound still applies to such a request."""
    import httpx2
    from huggingface_hub import get_session

    bound_hub_requests(1.0)
    t0 = time.time()
    with pytest.raises(httpx2.ReadTimeout):
        get_session().get(f"{silent_hub}/api/models/acme/tiny-llama/tree/{REV}", timeout=None)
    assert time.time() - t0 < 5


def test_a_cache_that_cannot_be_written_is_not_reported_as_a_network_error(hub_server, tmp_path, monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE")
    endpoint, _ = hub_server
    (tmp_path / "a_file").write_text("not a directory")
    cache = tmp_path / "a_file" / "hub"  # root can write anywhere, but not below a file
    with pytest.raises(HubError, match=rf"cannot write to the hub cache {cache}: .*Not a directory") as e:
        HubClient(cache_dir=str(cache), endpoint=endpoint, timeout_s=5).snapshot("acme/tiny-llama", REV)
    assert "could not be reached" not in str(e.value)


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes to a read-only (chmod 555) directory; the file-for-directory test covers it")
def test_a_read_only_cache_is_reported_as_such(hub_server, tmp_path, monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE")
    endpoint, _ = hub_server
    cache = tmp_path / "ro"
    cache.mkdir()
    cache.chmod(0o555)
    with pytest.raises(HubError, match=rf"cannot write to the hub cache {cache}: .*Permission denied"):
        HubClient(cache_dir=str(cache), endpoint=endpoint, timeout_s=5).snapshot("acme/tiny-llama", REV)


def test_architecture_mismatch_names_the_keys(hub_cache):
    _, snap = hub_cache
    config = json.loads((snap / "config.json").read_text())
    ok = ArchitectureGroup(hidden_size=32, intermediate_size=64, num_layers=1, num_heads=2, vocab_size=config["vocab_size"])
    check_architecture(snap, ok, "acme/tiny-llama")
    wrong = ok.model_copy(update={"num_layers": 4})
    with pytest.raises(HubError, match="num_layers: recipe 4 vs config.json 1"):
        check_architecture(snap, wrong, "acme/tiny-llama")


def test_unavailable_says_why_a_snapshot_cannot_be_had_before_any_run(hub_server, tmp_path, monkeypatch):
    """What automation asks before it starts a hub recipe: the cache first, then one bounded request."""
    endpoint, snap = hub_server
    cache = snap.parent.parent.parent
    assert HubClient(cache_dir=str(cache)).unavailable("acme/tiny-llama", REV) is None  # cached, offline
    empty = str(tmp_path / "empty")
    assert "is switched off (offline)" in HubClient(cache_dir=empty).unavailable("acme/tiny-llama", REV)
    monkeypatch.delenv("HF_HUB_OFFLINE")
    assert HubClient(cache_dir=empty, endpoint=endpoint, timeout_s=5).unavailable("acme/tiny-llama", REV) is None  # downloadable
    refused = HubClient(cache_dir=empty, endpoint=endpoint, timeout_s=5).unavailable("acme/missing", REV)
    assert refused.startswith("the Hub refused acme/missing@") and "HTTP 404" in refused and "HF_TOKEN" in refused
    down = HubClient(cache_dir=empty, endpoint="http://127.0.0.1:9", timeout_s=2).unavailable("acme/tiny-llama", REV)
    assert "cannot be reached" in down and f"hf download acme/tiny-llama --revision {REV}" in down and "\n" not in down
