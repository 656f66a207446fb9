"""Where the project's files live. Every location can be moved with an environment variable."""

from __future__ import annotations

import os
from pathlib import Path


def project_root() -> Path:
    """The checkout (or image directory) holding ``configs/``; ``LLM_ASSETS_ROOT`` overrides."""
    env = os.environ.get("LLM_ASSETS_ROOT")
    return Path(env).resolve() if env else Path(__file__).resolve().parent.parent


def recipes_dir() -> Path:
    env = os.environ.get("LLM_ASSETS_RECIPES_DIR")
    return Path(env) if env else project_root() / "configs" / "recipes"


def default_data_dir() -> Path:
    env = os.environ.get("LLM_ASSETS_DATA_DIR")
    return Path(env) if env else project_root() / "data"


def default_landing_root() -> str:
    return os.environ.get("LLM_ASSETS_LANDING", str(default_data_dir() / "landing"))


def default_store_root() -> str:
    return os.environ.get("LLM_ASSETS_STORE", str(default_data_dir() / "store"))


def worker_cache_dir() -> Path:
    """Where a training worker keeps artifacts fetched from the store between runs on its node: a cache, deleting it only
    costs downloads. Under its own HOME, not the project's data directory, which a worker on another node does not have."""
    env = os.environ.get("LLM_ASSETS_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "llm_assets" / "artifacts"
