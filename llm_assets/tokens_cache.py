"""The tokenization cache: tokenized training data in the ArtifactStore, keyed by what determines it.

The key hashes the content identity of the rows used, the tokenizer's files (by content, from the
parent model's manifest, so a retrained parent with the same tokenizer still hits), the chat
template, max_length and the encoding code's version; a learning-rate or step change reuses the
entry, one changed byte of data or tokenizer does not. Entries are committed like any artifact
(content-addressed, atomic), so two runs racing to fill the same key both succeed.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

TOKENS_FILE = "tokens.parquet"
ENCODING_VERSION = "2"  # bump when llm_assets.training.tokens changes what it produces
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json",
                   "chat_template.jinja", "chat_template.json", "tokenizer.model", "vocab.json", "merges.txt")


def tokenizer_digest(files: list[dict[str, Any]]) -> str:
    """Content hash of the tokenizer files among a manifest's files."""
    found = sorted((f["path"], f["sha256"]) for f in files if f["path"] in TOKENIZER_FILES)
    if not found:
        raise ValueError("the parent model artifact has no tokenizer files (tokenizer.json, tokenizer_config.json, ...)")
    return hashlib.sha256(json.dumps(found).encode()).hexdigest()


def cache_key(stage: str, data: dict[str, str], tokenizer: str, template: str, max_length: int, truncation: str) -> str:
    """``data``: kind -> content identity of the rows (``rows_digest``), so re-validated or duplicate drops still hit."""
    identity = {"stage": stage, "data": sorted(data.items()), "tokenizer": tokenizer, "template": template,
                "max_length": max_length, "truncation": truncation, "encoding": ENCODING_VERSION}
    digest = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:32]
    return f"cache/tokens/{stage}/{digest}"
