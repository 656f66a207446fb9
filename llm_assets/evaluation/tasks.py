"""lm-evaluation-harness tasks generated from the held-out split of the validated drops.

Each task is a YAML config beside a JSONL data file (``tasks/<name>.yaml``, ``data/<name>.jsonl``), read by
lm-eval offline through the ``json`` dataset builder, with paths relative to the directory that holds both:
from there, ``lm_eval --include_path tasks --tasks <name>`` reproduces a figure. Contexts are rendered exactly as
the stages render them (``training.tokens.prompt_text``), so lm-eval scores the text the model was trained on:

* SFT rows whose reply the model can write within ``evaluation.max_new_tokens`` -> ``generate_until``, greedy, scored
  by exact match (as ``training.evaluate.exact_match`` scores them); longer replies -> ``loglikelihood`` (``acc``: the
  reply is the model's greedy continuation; ``perplexity`` beside it);
* preference pairs -> ``multiple_choice`` between chosen and rejected (gold: chosen; ``acc``);
* pre-training documents -> ``loglikelihood_rolling`` (``bits_per_byte``; word and byte perplexity beside it).

The rows are the stages' held-out rows (``training.data.load_rows(paths, "eval")``: de-duplicated across drops, the
first drop wins, in content-hash order), grouped by the drop each came from, the first ``evaluation.limit`` per task.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import yaml

from llm_assets.training.data import load_rows
from llm_assets.training.tokens import full_text, prompt_text, split_encode

TASKS_DIR, DATA_DIR = "tasks", "data"
DATASETS_CACHE = ".datasets_cache"  # where ``datasets`` prepares the JSONL files: inside the directory, not the user's cache
# exact match compares answers as the project's own measure does (``training.evaluate.answer_of``: stripped, without
# closing . ! ?), applied in this order to the reply and the expected answer alike
ANSWER_OF = [r"^\s+", r"\s+$", r"[.!?]+$", r"\s+$"]


@dataclass(frozen=True)
class TaskInfo:
    """What a task measures and how to read it: the ``tasks`` entry of the evaluation metrics."""

    kind: str  # lm-eval output_type: generate_until, loglikelihood, multiple_choice, loglikelihood_rolling
    source: str  # "<kind>/<drop>" for a generated task, "lm-eval:<name>" for a standard one
    metric: str  # the figure the gates compare
    higher_is_better: bool

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def drop_stems(drops: list[str]) -> dict[str, str]:
    """drop -> the part of a task name lm-eval accepts (letters, digits, '_'), still saying which file it was; two drops
    whose names sanitize alike are told apart by their order."""
    out: dict[str, str] = {}
    for drop in drops:
        stem = re.sub(r"[^a-z0-9]+", "_", drop.lower().rsplit(".", 1)[0]).strip("_") or "drop"
        out[drop] = stem if stem not in out.values() else f"{stem}_{len(out)}"
    return out


def rows_by_drop(paths: list[str], drops: list[str]) -> dict[str, list[dict[str, Any]]]:
    """The held-out rows the stages measure on, each under the drop that contributed it (the first drop with its
    content, as ``load_rows`` de-duplicates)."""
    owner: dict[str, str] = {}
    for path, drop in zip(paths, drops):
        for h in pq.read_table(path, columns=["row_hash"]).column("row_hash").to_pylist():
            owner.setdefault(h, drop)
    out: dict[str, list[dict[str, Any]]] = {drop: [] for drop in drops}
    for row in load_rows(paths, "eval"):
        out[owner[row["row_hash"]]].append(row)
    return out


def continuation(tok, prompt: list[dict[str, str]], reply: str, template: str) -> str:
    """The text after the rendered prompt in the rendered example: the reply with whatever the template closes it
    with (end-of-turn), exactly what the stages score."""
    context, whole = prompt_text(tok, prompt, template), full_text(tok, prompt, reply, template)
    return whole[len(context):] if whole.startswith(context) else reply


def _config(name: str, kind: str, **fields: Any) -> dict[str, Any]:
    return {"task": name, "dataset_path": "json",
            "dataset_kwargs": {"data_files": {"test": f"{DATA_DIR}/{name}.jsonl"}, "cache_dir": DATASETS_CACHE},
            "test_split": "test", "output_type": kind, "num_fewshot": 0, "metadata": {"version": 1}, **fields}


def sft_tasks(tok, rows: list[dict[str, Any]], drop: str, stem: str, template: str, max_new_tokens: int,
              limit: int) -> dict[str, tuple[dict[str, Any], list[dict[str, Any]], TaskInfo]]:
    """Short replies (their tokens, end-of-turn included, fit ``max_new_tokens``) -> exact match; the rest -> log-likelihood."""
    encoded = split_encode(tok, [r["prompt"] for r in rows], [r["completion"] for r in rows], template)
    short = [r for r, (_, reply) in zip(rows, encoded) if len(reply) <= max_new_tokens][:limit]
    long = [r for r, (_, reply) in zip(rows, encoded) if len(reply) > max_new_tokens][:limit]
    out = {}
    if short:
        name = f"sft_{stem}_exact_match"
        config = _config(name, "generate_until", doc_to_text="context", doc_to_target="target", target_delimiter="",
                         generation_kwargs={"until": [], "do_sample": False, "max_gen_toks": max_new_tokens},
                         metric_list=[{"metric": "exact_match", "aggregation": "mean", "higher_is_better": True,
                                       "regexes_to_ignore": ANSWER_OF}])
        data = [{"context": prompt_text(tok, r["prompt"], template), "target": r["completion"].strip()} for r in short]
        out[name] = (config, data, TaskInfo("generate_until", f"sft/{drop}", "exact_match", True))
    if long:
        name = f"sft_{stem}_loglikelihood"
        config = _config(name, "loglikelihood", doc_to_text="context", doc_to_target="target", target_delimiter="",
                         metric_list=[{"metric": "acc", "aggregation": "mean", "higher_is_better": True},
                                      {"metric": "perplexity", "aggregation": "perplexity", "higher_is_better": False}])
        data = [{"context": prompt_text(tok, r["prompt"], template),
                 "target": continuation(tok, r["prompt"], r["completion"], template)} for r in long]
        out[name] = (config, data, TaskInfo("loglikelihood", f"sft/{drop}", "acc", True))
    return out


def preference_task(tok, rows: list[dict[str, Any]], drop: str, stem: str, template: str, limit: int):
    name = f"preference_{stem}_choice"
    config = _config(name, "multiple_choice", doc_to_text="context", doc_to_choice="choices", doc_to_target="gold",
                     target_delimiter="", metric_list=[{"metric": "acc", "aggregation": "mean", "higher_is_better": True}])
    data = [{"context": prompt_text(tok, r["prompt"], template),
             "choices": [continuation(tok, r["prompt"], r[k], template) for k in ("chosen", "rejected")], "gold": 0}
            for r in rows[:limit]]
    return {name: (config, data, TaskInfo("multiple_choice", f"preference/{drop}", "acc", True))}


def pretraining_task(rows: list[dict[str, Any]], drop: str, stem: str, limit: int):
    name = f"pretraining_{stem}_bits_per_byte"
    config = _config(name, "loglikelihood_rolling", doc_to_text="", doc_to_target="text",
                     metric_list=[{"metric": m, "aggregation": a, "higher_is_better": False}
                                  for m, a in (("bits_per_byte", "bits_per_byte"), ("word_perplexity", "weighted_perplexity"),
                                               ("byte_perplexity", "weighted_perplexity"))])
    data = [{"text": r["text"]} for r in rows[:limit]]
    return {name: (config, data, TaskInfo("loglikelihood_rolling", f"pretraining/{drop}", "bits_per_byte", False))}


def generate_tasks(tok, datasets: dict[str, list[str]], drops: dict[str, list[str]], template: str, max_new_tokens: int,
                   limit: int, directory: Path) -> dict[str, TaskInfo]:
    """Write every task the held-out rows give into ``directory`` (``tasks/``, ``data/``); name -> what it measures.
    ``datasets``: kind -> dataset.parquet of each drop; ``drops``: kind -> the drops' names, in the same order."""
    made: dict[str, tuple[dict[str, Any], list[dict[str, Any]], TaskInfo]] = {}
    for kind in ("sft", "preference", "pretraining"):
        stems = drop_stems(drops.get(kind, []))
        for drop, rows in rows_by_drop(datasets.get(kind, []), drops.get(kind, [])).items():
            if not rows:
                continue
            if kind == "sft":
                made.update(sft_tasks(tok, rows, drop, stems[drop], template, max_new_tokens, limit))
            elif kind == "preference":
                made.update(preference_task(tok, rows, drop, stems[drop], template, limit))
            else:
                made.update(pretraining_task(rows, drop, stems[drop], limit))
    (directory / TASKS_DIR).mkdir(parents=True, exist_ok=True)
    (directory / DATA_DIR).mkdir(parents=True, exist_ok=True)
    for name, (config, data, _) in made.items():
        (directory / TASKS_DIR / f"{name}.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
        (directory / DATA_DIR / f"{name}.jsonl").write_text("".join(json.dumps(d, ensure_ascii=False) + "\n" for d in data))
    return {name: info for name, (_, _, info) in made.items()}
