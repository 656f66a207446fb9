"""Hugging Face Hub client: snapshots of a model at a pinned revision, offline-safe.

Offline (``HF_HUB_OFFLINE=1``, or no network) it resolves from the local cache only and fails
at once with what to do, never hanging on a connection.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from dagster import ConfigurableResource
from pydantic import Field

from llm_assets.recipes import ArchitectureGroup

MODEL_FILES = ["*.json", "*.safetensors", "tokenizer*", "*.model", "*.tiktoken", "*.txt", "*.jinja"]
CONFIG_KEYS = {"hidden_size": "hidden_size", "intermediate_size": "intermediate_size", "num_layers": "num_hidden_layers",
               "num_heads": "num_attention_heads", "vocab_size": "vocab_size"}


class HubError(RuntimeError):
    pass


class HubClient(ConfigurableResource):
    token: str | None = Field(None, description="Hub token (set from the HF_TOKEN environment variable).")
    cache_dir: str | None = Field(None, description="Hub cache (default: HF_HUB_CACHE / ~/.cache/huggingface/hub).")
    offline: bool = Field(False, description="Resolve from the cache only (also when HF_HUB_OFFLINE=1).")
    timeout_s: float = Field(10.0, description="Per-request timeout, so an unreachable hub fails fast.")

    def snapshot(self, repo_id: str, revision: str) -> Path:
        """Local directory of ``repo_id`` at ``revision`` (downloaded unless already cached)."""
        from huggingface_hub import snapshot_download
        from huggingface_hub.errors import LocalEntryNotFoundError, RepositoryNotFoundError, RevisionNotFoundError

        offline = self.offline or os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes")
        os.environ.setdefault("HF_HUB_ETAG_TIMEOUT", str(int(self.timeout_s)))
        os.environ.setdefault("HF_HUB_DOWNLOAD_TIMEOUT", str(int(self.timeout_s)))
        try:
            path = snapshot_download(repo_id, revision=revision, cache_dir=self.cache_dir, token=self.token,
                                     allow_patterns=MODEL_FILES, local_files_only=offline)
        except LocalEntryNotFoundError:
            where = self.cache_dir or os.environ.get("HF_HUB_CACHE", "~/.cache/huggingface/hub")
            raise HubError(
                f"{repo_id}@{revision} is not in the local Hub cache ({where}) and the Hub "
                f"{'is switched off (offline)' if offline else 'cannot be reached'}. Download it on a connected machine "
                f"(hf download {repo_id} --revision {revision}) and copy the cache, or go online."
            ) from None
        except (RepositoryNotFoundError, RevisionNotFoundError) as e:
            raise HubError(f"{repo_id}@{revision}: {e.__class__.__name__}: check the repo id, the revision and HF_TOKEN") from None
        except OSError as e:  # connection errors surface as OSError subclasses
            raise HubError(f"{repo_id}@{revision}: the Hub could not be reached ({e}); set HF_HUB_OFFLINE=1 to use the cache") from None
        return Path(path)


def check_architecture(snapshot: Path, expected: ArchitectureGroup, repo_id: str) -> None:
    """The recipe's stated architecture (used for the memory estimate) must be the model's."""
    config = json.loads((snapshot / "config.json").read_text())
    wrong = [f"{ours}: recipe {getattr(expected, ours)} vs config.json {config.get(theirs)}"
             for ours, theirs in CONFIG_KEYS.items() if config.get(theirs) != getattr(expected, ours)]
    if wrong:
        raise HubError(f"{repo_id}: model.architecture in the recipe does not match the snapshot ({'; '.join(wrong)})")
