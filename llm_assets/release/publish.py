"""Publishing a released model to the target its recipe names (``release.target``): a Hugging Face Hub repo, or a
registry prefix in an artifact store (S3 or a directory).

Hub: the repo is created when missing (private unless ``release.private`` is false), the files go up in one commit
whose message names the recipe hash and the data versions, and the commit sha is what was published. The token
is read from the environment variable ``release.token_env`` when publishing; it is passed to the client and
nowhere else. Registry: the files are committed under ``<name>`` with the store's atomic commit (files first,
manifest last), so a reader never sees half a model; the registry version is the content hash of the files,
which is the released version itself.
"""

from __future__ import annotations

import glob
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from llm_assets.artifacts import open_store
from llm_assets.recipes import ReleaseGroup


class PublishError(RuntimeError):
    """Publishing cannot start or did not finish; the message says what to do."""


@dataclass(frozen=True)
class Published:
    target: str  # hub | s3
    location: str  # https://<endpoint>/<repo> or <registry>/<name>/versions/<version>
    sha: str | None  # the hub commit; None for a registry
    version: str  # what the target calls it: the hub commit sha, or the registry version
    url: str  # where a person looks at it

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def commit_message(recipe: str, recipe_hash: str, version: str, drops: dict[str, str]) -> str:
    """One line naming what was published and from what: the release version, the recipe hash, every drop version."""
    data = ", ".join(f"{drop}@{v[:12]}" for drop, v in sorted(drops.items())) or "none recorded"
    return f"llm_assets release of recipe {recipe} {version[:12]} (recipe hash {recipe_hash[:12]}; data {data})"


def publish(release: ReleaseGroup, name: str, directory: Path, files: list[str], version: str, message: str,
            hub_endpoint: str | None = None, s3_endpoint: str | None = None) -> Published:
    """Publish ``files`` (the manifest's paths) of ``directory``, released version ``version`` of recipe ``name``, where
    ``release`` says. Only those: a store's local copy also holds its own bookkeeping (the manifest, a seal)."""
    if release.target == "hub":
        return publish_to_hub(directory, files, release, message, release.endpoint or hub_endpoint)
    if release.target == "s3":
        return publish_to_registry(directory, release.registry, release.name or name, version, message, s3_endpoint)
    raise PublishError(f"recipe '{name}' has no release.target: set it to 'hub' (with release.repo) or 's3' "
                       "(with release.registry) to publish")


def publish_to_hub(directory: Path, files: list[str], release: ReleaseGroup, message: str, endpoint: str | None) -> Published:
    from huggingface_hub import HfApi
    from huggingface_hub.errors import HfHubHTTPError

    token = os.environ.get(release.token_env)
    if not token:
        raise PublishError(f"release.token_env names {release.token_env}, which is not set in the environment of the "
                           f"process that publishes: set it to a Hub token with write access to {release.repo}")
    api = HfApi(endpoint=endpoint or os.environ.get("HF_ENDPOINT") or None, token=token)
    try:
        api.create_repo(release.repo, private=release.private, exist_ok=True, repo_type="model")
        info = api.upload_folder(folder_path=str(directory), repo_id=release.repo, repo_type="model",
                                 commit_message=message, allow_patterns=[glob.escape(f) for f in files])
    except HfHubHTTPError as e:
        status = getattr(e.response, "status_code", "?")
        raise PublishError(f"the Hub ({api.endpoint}) refused publishing to {release.repo} (HTTP {status}: "
                           f"{str(e).splitlines()[0]}); check release.repo and that {release.token_env} may write to it") from None
    return Published(target="hub", location=f"{api.endpoint}/{release.repo}", sha=info.oid, version=info.oid, url=info.commit_url)


def publish_to_registry(directory: Path, registry: str, name: str, version: str, message: str,
                        s3_endpoint: str | None) -> Published:
    store = open_store(registry, s3_endpoint)
    try:
        manifest = store.commit(name, directory, {"released_version": version, "message": message})
    except Exception as e:  # boto3's errors name the bucket and the call; the one line says which registry
        raise PublishError(f"publishing to the registry {registry} (release.registry) failed: {type(e).__name__}: "
                           f"{str(e).splitlines()[0] if str(e) else ''}") from None
    if manifest.version != version:  # the registry's version is the content hash: the same files give the released version
        raise PublishError(f"{store.root}/{name} committed version {manifest.version[:12]}, not the released {version[:12]}: "
                           f"{directory} holds files the release does not; materialize released_model again")
    location = f"{store.root}/{name}/versions/{manifest.version}"
    return Published(target="s3", location=location, sha=None, version=manifest.version, url=location)
