"""Hugging Face Hub client: snapshots of a model at a pinned revision, offline-safe.

Offline (``HF_HUB_OFFLINE=1``, or no network) it resolves from the local cache only and fails
at once with what to do, never hanging on a connection.

Timeouts are passed to huggingface_hub, not set in the environment: the library reads its
``HF_HUB_*_TIMEOUT`` variables once, at import, so setting them later changes nothing. Read in
huggingface_hub 2.4: ``snapshot_download`` takes ``etag_timeout`` for each file's metadata
request, but lists the repo (``repo_info``, ``list_repo_tree``) with no timeout through a shared
HTTP client that has none, retrying a timed-out request five times. So the client first asks the
Hub about the revision once with ``timeout_s`` (a Hub that does not answer sends us to the cache
at once), and every request of the library's shared client gets ``timeout_s`` where it has none.
"""

from __future__ import annotations

import errno
import json
import os
from pathlib import Path

from dagster import ConfigurableResource
from pydantic import Field

from llm_assets.recipes import ArchitectureGroup

MODEL_FILES = ["*.json", "*.safetensors", "tokenizer*", "*.model", "*.tiktoken", "*.txt", "*.jinja"]
CONFIG_KEYS = {"hidden_size": "hidden_size", "intermediate_size": "intermediate_size", "num_layers": "num_hidden_layers",
               "num_heads": "num_attention_heads", "vocab_size": "vocab_size"}
# OSErrors of the cache's disk, not of the network: full, over quota, not writable, not a directory.
DISK_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOTDIR, errno.EEXIST, errno.EISDIR}


class HubError(RuntimeError):
    pass


class HubClient(ConfigurableResource):
    token: str | None = Field(None, description="Hub token: give it as EnvVar(\"HF_TOKEN\"), so only the variable's name is stored.")
    cache_dir: str | None = Field(None, description="Hub cache (default: HF_HUB_CACHE / ~/.cache/huggingface/hub).")
    offline: bool = Field(False, description="Resolve from the cache only (also when HF_HUB_OFFLINE=1).")
    timeout_s: float = Field(10.0, description="Per-request timeout, so an unreachable or stalled Hub fails fast.")
    endpoint: str | None = Field(None, description="Hub URL, e.g. a mirror (default: HF_ENDPOINT, else https://huggingface.co).")

    def snapshot(self, repo_id: str, revision: str) -> Path:
        """Local directory of ``repo_id`` at ``revision`` (downloaded unless already cached)."""
        from huggingface_hub import constants, snapshot_download
        from huggingface_hub.errors import LocalEntryNotFoundError, RepositoryNotFoundError, RevisionNotFoundError

        where = self.cache_dir or os.environ.get("HF_HUB_CACHE", "~/.cache/huggingface/hub")
        endpoint = self.endpoint or os.environ.get("HF_ENDPOINT") or None
        offline = self.offline or os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes")
        unreachable = None if offline else self._unreachable(repo_id, revision, endpoint)
        try:
            path = snapshot_download(repo_id, revision=revision, cache_dir=self.cache_dir, token=self.token, endpoint=endpoint,
                                     allow_patterns=MODEL_FILES, local_files_only=offline or unreachable is not None,
                                     etag_timeout=self.timeout_s)
        except LocalEntryNotFoundError:
            why = "is switched off (offline)" if offline else f"({endpoint or constants.ENDPOINT}) cannot be reached ({unreachable or 'no answer'})"
            raise HubError(not_cached(repo_id, revision, where, why)) from None
        except (RepositoryNotFoundError, RevisionNotFoundError) as e:
            raise HubError(f"{repo_id}@{revision}: {e.__class__.__name__}: check the repo id, the revision and HF_TOKEN") from None
        except OSError as e:
            if e.errno in DISK_ERRNOS:
                raise HubError(f"{repo_id}@{revision}: cannot write to the hub cache {where}: {e}; free space or point "
                               "HF_HUB_CACHE at a writable directory") from None
            raise HubError(f"{repo_id}@{revision}: the Hub ({endpoint or constants.ENDPOINT}) could not be reached ({e}); "
                           "set HF_HUB_OFFLINE=1 to use the cache") from None
        return Path(path)

    def unavailable(self, repo_id: str, revision: str) -> str | None:
        """Why ``snapshot`` cannot give ``repo_id@revision`` now, or None when it can: asked before a run is started,
        so it reads the local cache and, only when the snapshot is not there, asks the Hub once within ``timeout_s``."""
        from huggingface_hub import constants, snapshot_download
        from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

        try:
            snapshot_download(repo_id, revision=revision, cache_dir=self.cache_dir, allow_patterns=MODEL_FILES, local_files_only=True)
            return None
        except LocalEntryNotFoundError:
            pass
        where = self.cache_dir or os.environ.get("HF_HUB_CACHE", "~/.cache/huggingface/hub")
        endpoint = self.endpoint or os.environ.get("HF_ENDPOINT") or None
        if self.offline or os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes"):
            why = "is switched off (offline)"
        else:
            try:
                unreachable = self._unreachable(repo_id, revision, endpoint, refusals=True)
            except HfHubHTTPError as e:
                status = getattr(e.response, "status_code", 0) or 0
                if status < 500:  # a gated or missing repo, a bad token: the run would fail the same way
                    return (f"the Hub refused {repo_id}@{revision} (HTTP {status}): check the repo id, the revision and "
                            "HF_TOKEN (a gated model needs its licence accepted)")
                unreachable = f"HTTP {status}"
            if unreachable is None:
                return None
            why = f"({endpoint or constants.ENDPOINT}) cannot be reached ({unreachable})"
        return not_cached(repo_id, revision, where, why)

    def _unreachable(self, repo_id: str, revision: str, endpoint: str | None, refusals: bool = False) -> str | None:
        """Why the Hub did not answer one request about the revision within ``timeout_s``, or None when it did."""
        import httpx2
        from huggingface_hub import HfApi
        from huggingface_hub.errors import HfHubHTTPError

        bound_hub_requests(self.timeout_s)
        try:
            HfApi(endpoint=endpoint, token=self.token).model_info(repo_id, revision=revision, timeout=self.timeout_s)
        except (httpx2.TimeoutException, httpx2.NetworkError) as e:
            return f"{e.__class__.__name__} after at most {self.timeout_s:g} s: {e}"
        except HfHubHTTPError:
            if refusals:
                raise
            # it answered: snapshot_download reports a missing repo or revision, or uses the cache when the Hub is down
        return None


def not_cached(repo_id: str, revision: str, where: str, why: str) -> str:
    return (f"{repo_id}@{revision} is not in the local Hub cache ({where}) and the Hub {why}. Download it on a connected "
            f"machine (hf download {repo_id} --revision {revision}) and copy the cache, or go online.")


def bound_hub_requests(timeout_s: float) -> None:
    """Make huggingface_hub's shared HTTP client give every request without a timeout ``timeout_s``.

    Its own client has none and its repo listing passes none, so a Hub that accepts the connection
    and never answers would hang a run for ever. Done through its public ``set_client_factory``:
    the client is the library's own (its event hooks, redirects) plus this bound.
    """
    import httpx2
    from huggingface_hub import get_session, set_client_factory

    if getattr(get_session(), "llm_assets_timeout_s", None) == timeout_s:
        return
    library_hooks = [h for h in get_session().event_hooks["request"] if not hasattr(h, "llm_assets_timeout_s")]

    def bound(request: httpx2.Request) -> None:
        limits = request.extensions.get("timeout", {})
        request.extensions["timeout"] = {**limits, **{k: timeout_s for k in ("connect", "read", "write", "pool") if limits.get(k) is None}}

    def client() -> httpx2.Client:
        session = httpx2.Client(event_hooks={"request": [*library_hooks, bound]}, follow_redirects=True, timeout=timeout_s)
        session.llm_assets_timeout_s = timeout_s
        return session

    bound.llm_assets_timeout_s = timeout_s
    set_client_factory(client)


def check_architecture(snapshot: Path, expected: ArchitectureGroup, repo_id: str) -> None:
    """The recipe's stated architecture (used for the memory estimate) must be the model's."""
    config = json.loads((snapshot / "config.json").read_text())
    wrong = [f"{ours}: recipe {getattr(expected, ours)} vs config.json {config.get(theirs)}"
             for ours, theirs in CONFIG_KEYS.items() if config.get(theirs) != getattr(expected, ours)]
    if wrong:
        raise HubError(f"{repo_id}: model.architecture in the recipe does not match the snapshot ({'; '.join(wrong)})")
