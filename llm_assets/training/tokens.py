"""Prompt + reply -> token ids, the one encoding both training and evaluation use, and the SFT
token table the tokenization cache stores (see ``llm_assets.tokens_cache``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
from datasets import Dataset

from llm_assets.tokens_cache import TOKENS_FILE
from llm_assets.training.data import plain

TOO_LONG = "llm_assets.too_long_examples"


def prompt_text(tok, prompt: list[dict[str, str]], template: str) -> str:
    if template == "plain":
        return plain(prompt)
    return tok.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True)


def full_text(tok, prompt: list[dict[str, str]], reply: str, template: str) -> str:
    if template == "plain":
        return plain(prompt) + reply + tok.eos_token
    return tok.apply_chat_template(prompt + [{"role": "assistant", "content": reply}], tokenize=False)


def encode_pairs(tok, prompts, replies, template: str, max_length: int) -> list[tuple[list[int], int]]:
    """(token ids of prompt + reply truncated to max_length, index where the reply starts)."""
    p_ids = tok([prompt_text(tok, p, template) for p in prompts], add_special_tokens=False)["input_ids"]
    f_ids = tok([full_text(tok, p, r, template) for p, r in zip(prompts, replies)], add_special_tokens=False)["input_ids"]
    return [(f[:max_length], min(len(p), max_length)) for p, f in zip(p_ids, f_ids)]


def sft_tokens(rows: list[dict[str, Any]], tok, template: str, max_length: int) -> tuple[pa.Table, int]:
    """Token ids and completion masks of every row with at least one reply token inside max_length,
    and how many rows had none (their prompt alone fills max_length: nothing to learn from)."""
    ids, masks, too_long = [], [], 0
    pairs = encode_pairs(tok, [r["prompt"] for r in rows], [r["completion"] for r in rows], template, max_length)
    for seq, start in pairs:
        if start >= len(seq):
            too_long += 1
            continue
        ids.append(seq)
        masks.append([0] * start + [1] * (len(seq) - start))
    table = pa.table({"input_ids": pa.array(ids, pa.list_(pa.int32())), "completion_mask": pa.array(masks, pa.list_(pa.int8()))},
                     metadata={TOO_LONG: str(too_long)})  # kept with the table, so a cache hit reports it too
    return table, too_long


def write_tokens(table: pa.Table, directory: Path) -> None:
    """Written under a temporary name and renamed: a directory with TOKENS_FILE holds a complete table."""
    directory.mkdir(parents=True, exist_ok=True)
    tmp = directory / f".{TOKENS_FILE}.partial"
    pq.write_table(table, tmp)
    tmp.rename(directory / TOKENS_FILE)


def read_tokens(directory: str | Path) -> tuple[Dataset, int]:
    """The cached table and how many rows it left out for length."""
    table = pq.read_table(Path(directory) / TOKENS_FILE)
    too_long = int((table.schema.metadata or {}).get(TOO_LONG.encode(), b"0"))
    return Dataset(table.replace_schema_metadata(None)), too_long
