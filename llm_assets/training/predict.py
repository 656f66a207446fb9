"""Stage ``predict``: a reply to every prompt of one inference drop, from the recipe's served model, as Parquet.

setup: the model (role ``model``) on the stage's device, in its dtype; the drop's rows in file order.
generate: batched (``recipe.generation``), prompts of similar length batched together so little is padding.
save: ``predictions.parquet``, one row per request with its source row number, in file order.
report: rows, tokens/s, rows/s, latency percentiles and the first replies.

A row's ``latency_ms`` is the wall time of the batch it was generated in: every row of a batch waits for the
whole batch, so that is the time its reply took. Throughput figures divide totals by the generation time.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from llm_assets.data.io import MESSAGES
from llm_assets.training.common import hardware_for, model_kwargs, write_metrics
from llm_assets.training.evaluate import SAMPLES, Reply, reply_batches
from llm_assets.training.models import load_causal_lm, load_tokenizer
from llm_assets.training.report import Reporter
from llm_assets.training.spec import StageSpec

PREDICTIONS_FILE = "predictions.parquet"
PREDICTIONS = pa.schema([("row", pa.int64()), ("prompt", MESSAGES), ("reply", pa.string()), ("prompt_tokens", pa.int64()),
                         ("reply_tokens", pa.int64()), ("latency_ms", pa.float64()), ("finish_reason", pa.string())])


def load_requests(spec: StageSpec) -> list[dict[str, Any]]:
    """The drop's rows in the order of the landed file; an order names exactly one inference drop."""
    paths = spec.datasets.get("inference") or []
    if len(paths) != 1:
        raise ValueError(f"the predict stage replies to one inference drop at a time; the order names {len(paths)}")
    rows = pq.read_table(paths[0], columns=["source_row", "prompt"]).to_pylist()
    if not rows:
        raise ValueError(f"{paths[0]}: the inference dataset holds no rows (all quarantined?): nothing to reply to")
    return sorted(rows, key=lambda r: r["source_row"])


def predict(model, tok, rows: list[dict[str, Any]], recipe, reporter: Reporter) -> tuple[list[Reply], list[float], float]:
    """(reply per row, latency_ms per row, generation seconds): rows batched by prompt length, results in row order."""
    g = recipe.generation
    by_length = sorted(range(len(rows)), key=lambda i: sum(len(m["content"]) for m in rows[i]["prompt"]))
    replies: list[Reply | None] = [None] * len(rows)
    latency = [0.0] * len(rows)
    batches = reply_batches(model, tok, [rows[i]["prompt"] for i in by_length], recipe.data.chat_template, g.max_new_tokens,
                            do_sample=g.do_sample, temperature=g.temperature, top_p=g.top_p, top_k=0, batch_size=g.batch_size,
                            seed=g.seed)  # top_k=0: the recipe's top_p alone shapes sampling, not a hidden top-50
    t0 = tick = time.perf_counter()
    done = shown = 0
    for batch in batches:
        now = time.perf_counter()
        for i, reply in zip(by_length[done:done + len(batch)], batch):
            replies[i], latency[i] = reply, (now - tick) * 1000
        done, tick = done + len(batch), now
        if done - shown >= max(len(rows) // 10, g.batch_size) or done == len(rows):  # about ten progress lines a drop
            reporter.log(f"[predict] {done}/{len(rows)} rows, {done / (now - t0):.2f} rows/s")
            shown = done
    return replies, latency, time.perf_counter() - t0


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (a latency every request saw, not an interpolation between two)."""
    ordered = sorted(values)
    return ordered[max(1, math.ceil(len(ordered) * q / 100)) - 1] if ordered else 0.0


def run(spec: StageSpec, reporter: Reporter) -> dict[str, Any]:
    recipe = spec.parsed_recipe
    hw = hardware_for(recipe)
    rows = load_requests(spec)
    tok = load_tokenizer(spec.inputs["model"])
    model = load_causal_lm(spec.inputs["model"], **model_kwargs(hw))
    reporter.log(f"[predict] {len(rows)} prompts, batches of {recipe.generation.batch_size}, on {hw.why}")
    replies, latency, seconds = predict(model, tok, rows, recipe, reporter)

    table = pa.Table.from_pylist([
        {"row": r["source_row"], "prompt": [{"role": m["role"], "content": m["content"]} for m in r["prompt"]],
         "reply": a.text.strip(), "prompt_tokens": a.prompt_tokens, "reply_tokens": a.reply_tokens, "latency_ms": ms,
         "finish_reason": a.finish_reason} for r, a, ms in zip(rows, replies, latency)], schema=PREDICTIONS)
    pq.write_table(table, Path(spec.output_dir) / PREDICTIONS_FILE)

    reply_tokens = sum(a.reply_tokens for a in replies)
    metrics = {
        "rows": len(rows), "distinct_prompts": len({str(r["prompt"]) for r in rows}),
        "prompt_tokens": sum(a.prompt_tokens for a in replies), "reply_tokens": reply_tokens,
        "generation_s": seconds, "tokens_per_s": reply_tokens / seconds if seconds else 0.0,
        "rows_per_s": len(rows) / seconds if seconds else 0.0,
        "latency_p50_ms": percentile(latency, 50), "latency_p95_ms": percentile(latency, 95),
        "stopped_at_length": sum(a.finish_reason == "length" for a in replies),
        "generation": recipe.generation.model_dump(mode="json"), "hardware": hw.as_dict(),
        "samples": [{"row": r["source_row"], "prompt": r["prompt"][-1]["content"], "reply": a.text.strip(),
                     "finish_reason": a.finish_reason} for r, a in list(zip(rows, replies))[:SAMPLES]],
    }
    write_metrics(spec.output_dir, metrics)
    reporter.log(f"[predict] {len(rows)} replies in {seconds:.1f} s: {metrics['tokens_per_s']:.1f} tokens/s, "
                 f"{metrics['rows_per_s']:.2f} rows/s, latency p50 {metrics['latency_p50_ms']:.0f} ms, "
                 f"p95 {metrics['latency_p95_ms']:.0f} ms; {metrics['stopped_at_length']} stopped at max_new_tokens")
    return metrics
