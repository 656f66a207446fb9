"""A stand-in for the Hugging Face Hub on 127.0.0.1 (the Hub cannot be reached from here): it serves the requests
huggingface_hub 2.4 makes for ``create_repo`` and ``upload_folder`` and keeps what arrives, so a test can assert on
the files, the commit message and the commit sha.

Served, as huggingface_hub's hf_api.py / _commit_api.py / lfs.py send them:
- ``POST /api/repos/create``: {name, organization, visibility}; 409 when the repo exists (the client's exist_ok).
- ``POST /api/validate-yaml``: the README's metadata, parsed as YAML.
- ``POST /api/models/<repo>/preupload/<rev>``: each file's upload mode, as the Hub decides it: ``lfs`` for
  safetensors and files of 10 MB or more, ``regular`` for the rest.
- ``POST /<repo>.git/info/lfs/objects/batch`` (git-lfs batch API, basic transfer), then ``PUT`` of each object to
  the href it names and ``POST`` to its verify href.
- ``POST /api/models/<repo>/commit/<rev>``: the NDJSON commit (header, ``file`` base64, ``lfsFile`` by oid).
It serves no Xet storage: the client must use plain LFS (``huggingface_hub.constants.HF_HUB_DISABLE_XET``).
Every request must carry ``Authorization: Bearer <token>``.
"""

from __future__ import annotations

import base64
import hashlib
import json
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import yaml

LFS_SUFFIXES = (".safetensors", ".bin", ".pt")
LFS_MIN_BYTES = 10 * 1024 * 1024


@dataclass
class Repo:
    private: bool
    files: dict[str, bytes] = field(default_factory=dict)
    commits: list[dict[str, Any]] = field(default_factory=list)  # {"sha", "message", "files", "lfs_files"}


class HubStandIn:
    """Start with ``with HubStandIn(token) as hub:``; ``hub.endpoint`` is its URL, ``hub.repos`` what it holds."""

    def __init__(self, token: str):
        self.token = token
        self.repos: dict[str, Repo] = {}
        self.lfs: dict[str, bytes] = {}  # oid -> bytes uploaded and verified
        self.requests: list[tuple[str, str]] = []  # (method, path) in order
        self.refused: list[str] = []  # requests refused for their token
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def __enter__(self) -> "HubStandIn":
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc) -> None:
        self._server.shutdown()
        self._server.server_close()

    def _handler(self):
        hub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:
                pass

            def do_POST(self) -> None:
                self._serve("POST")

            def do_PUT(self) -> None:
                self._serve("PUT")

            def _serve(self, method: str) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                path = self.path.split("?")[0]
                with hub._lock:
                    hub.requests.append((method, path))
                    if self.headers.get("Authorization") != f"Bearer {hub.token}" and not path.startswith("/lfs/"):
                        hub.refused.append(path)
                        return self._reply(401, {"error": "Invalid credentials in Authorization header"})
                    status, answer = hub._route(method, path, body)
                self._reply(status, answer)

            def _reply(self, status: int, answer: dict[str, Any]) -> None:
                data = json.dumps(answer).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        return Handler

    def _route(self, method: str, path: str, body: bytes) -> tuple[int, dict[str, Any]]:
        parts = path.strip("/").split("/")
        if method == "POST" and path == "/api/repos/create":
            return self._create(json.loads(body))
        if method == "POST" and path == "/api/validate-yaml":
            return self._validate_yaml(json.loads(body)["content"])
        if method == "POST" and parts[:2] == ["api", "models"] and len(parts) == 6 and parts[4] in ("preupload", "commit"):
            repo = "/".join(parts[2:4])
            if repo not in self.repos:
                return 404, {"error": f"Repository not found: {repo}"}
            return self._preupload(json.loads(body)) if parts[4] == "preupload" else self._commit(repo, body)
        if method == "POST" and path.endswith(".git/info/lfs/objects/batch"):
            return self._lfs_batch(json.loads(body))
        if method == "PUT" and parts[0] == "lfs" and len(parts) == 2:
            oid = parts[1]
            if hashlib.sha256(body).hexdigest() != oid:
                return 400, {"error": f"content does not match oid {oid}"}
            self.lfs[oid] = body
            return 200, {}
        if method == "POST" and path == "/lfs-verify":
            obj = json.loads(body)
            ok = obj["oid"] in self.lfs and len(self.lfs[obj["oid"]]) == obj["size"]
            return (200, {}) if ok else (404, {"error": f"object {obj['oid']} was not uploaded"})
        return 404, {"error": f"the stand-in Hub does not serve {method} {path}"}

    def _create(self, payload: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        repo = f"{payload['organization']}/{payload['name']}"
        if repo in self.repos:
            return 409, {"error": "You already created this model repo", "url": f"{self.endpoint}/{repo}"}
        self.repos[repo] = Repo(private=payload.get("visibility") == "private")
        return 200, {"url": f"{self.endpoint}/{repo}", "name": repo}

    def _validate_yaml(self, content: str) -> tuple[int, dict[str, Any]]:
        if not content.startswith("---\n"):
            return 200, {"errors": [], "warnings": [{"message": "empty or missing yaml metadata in repo card"}]}
        try:
            yaml.safe_load(content.split("---\n")[1])
        except yaml.YAMLError as e:
            return 400, {"errors": [{"message": str(e)}], "warnings": []}
        return 200, {"errors": [], "warnings": []}

    def _preupload(self, payload: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        files = [{"path": f["path"], "shouldIgnore": False, "oid": None,
                  "uploadMode": "lfs" if f["path"].endswith(LFS_SUFFIXES) or f["size"] >= LFS_MIN_BYTES else "regular"}
                 for f in payload["files"]]
        return 200, {"files": files}

    def _lfs_batch(self, payload: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        objects = []
        for obj in payload["objects"]:
            actions = None if obj["oid"] in self.lfs else {  # an object already stored needs no upload
                "upload": {"href": f"{self.endpoint}/lfs/{obj['oid']}"}, "verify": {"href": f"{self.endpoint}/lfs-verify"}}
            objects.append({"oid": obj["oid"], "size": obj["size"], "authenticated": True,
                            **({"actions": actions} if actions else {})})
        return 200, {"transfer": "basic", "objects": objects}

    def _commit(self, repo: str, body: bytes) -> tuple[int, dict[str, Any]]:
        lines = [json.loads(line) for line in body.decode().splitlines() if line.strip()]
        header = next(item["value"] for item in lines if item["key"] == "header")
        files, lfs_files = {}, []
        for item in lines:
            value = item["value"]
            if item["key"] == "file":
                files[value["path"]] = base64.b64decode(value["content"])
            elif item["key"] == "lfsFile":
                if value["oid"] not in self.lfs:
                    return 400, {"error": f"LFS object {value['oid']} of {value['path']} was never uploaded"}
                files[value["path"]] = self.lfs[value["oid"]]
                lfs_files.append(value["path"])
        target = self.repos[repo]
        target.files.update(files)
        sha = hashlib.sha1(json.dumps([header, sorted(files), len(target.commits)]).encode()).hexdigest()
        target.commits.append({"sha": sha, "message": header["summary"], "files": sorted(files), "lfs_files": sorted(lfs_files)})
        return 200, {"success": True, "commitOid": sha, "commitUrl": f"{self.endpoint}/{repo}/commit/{sha}"}
