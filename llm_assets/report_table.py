"""The before -> after table of a recipe's stages (printed by the demo, shown by model_report)."""

from __future__ import annotations

from typing import Any

from llm_assets.markdown import markdown_table

HEADER = ["stage", "measure", "before", "after", "before is"]


def _f(v: Any, pct: bool = False) -> str:
    if v is None:
        return "-"
    return f"{v:.1%}" if pct else f"{v:,.4g}" if isinstance(v, float) else f"{v:,}" if isinstance(v, int) else str(v)


def stage_rows(metrics: dict[str, dict[str, Any]], passthrough: dict[str, str]) -> list[list[str]]:
    rows: list[list[str]] = []

    def add(stage: str, measure: str, before: Any, after: Any, parent: str, pct: bool = False) -> None:
        rows.append([stage, measure, _f(before, pct), _f(after, pct), parent])

    for stage, m in metrics.items():
        if stage in passthrough:
            rows.append([stage, f"passed {passthrough[stage]} through", "-", "-", "-"])
            continue
        if stage == "base":
            add("base", "parameters", None, m.get("parameters"), "-")
            add("base", "SFT eval loss", None, m.get("eval_loss"), "-")
            add("base", "exact match", None, m.get("exact_match"), "-", pct=True)
        elif stage == "cpt":
            add("cpt", "pre-training eval loss", m.get("parent_eval_loss"), m.get("eval_loss"), "base")
        elif stage == "sft":
            add("sft", "SFT eval loss", m.get("parent_eval_loss"), m.get("eval_loss"), "cpt")
            add("sft", "exact match", m.get("parent_exact_match"), m.get("exact_match"), "cpt", pct=True)
            parent_tasks = m.get("parent_exact_match_by_task") or {}
            for task, t in (m.get("exact_match_by_task") or {}).items():  # rows naming a task: each beside its majority baseline
                add("sft", f"exact match {task} (n={t['n']}; majority baseline {t['majority_baseline']:.1%})",
                    parent_tasks.get(task, {}).get("exact_match"), t["exact_match"], "cpt", pct=True)
        elif stage == "reward":
            add("reward", "pairwise accuracy", m.get("parent_reward_accuracy"), m.get("reward_accuracy"), "untrained head", pct=True)
        elif stage == "rlhf":
            if "mean_reward" in m:
                add("rlhf", "mean reward (sampled)", m.get("sft_mean_reward"), m.get("mean_reward"), "sft")
                add("rlhf", "mean reward (greedy)", m.get("sft_greedy_mean_reward"), m.get("greedy_mean_reward"), "sft")
                add("rlhf", "win rate vs SFT", 0.5, m.get("win_rate_vs_sft"), "sft", pct=True)
            if "preference_accuracy" in m:  # DPO's own measures on held-out pairs (its implicit reward)
                add("rlhf", "DPO preference accuracy", 0.5, m.get("preference_accuracy"), "sft", pct=True)
                add("rlhf", "DPO reward margin", 0.0, m.get("reward_margin"), "sft")
            if "gold_win_rate_vs_sft" in m:  # generated data: the preference the pairs were labelled with
                add("rlhf", "gold score (sampled)", m.get("sft_gold_score"), m.get("gold_score"), "sft")
                add("rlhf", "gold win rate vs SFT", 0.5, m.get("gold_win_rate_vs_sft"), "sft", pct=True)
            if "kl_to_sft" in m:
                add("rlhf", "KL to SFT", 0.0, m.get("kl_to_sft"), "sft")
            add("rlhf", "exact match", m.get("parent_exact_match"), m.get("exact_match"), "sft", pct=True)
        elif stage == "quantize":
            add("quantize", "SFT eval loss", m.get("unquantized_eval_loss"), m.get("eval_loss"), "rlhf (unquantized)")
            add("quantize", "weights bytes", m.get("unquantized_bytes"), m.get("quantized_bytes"), "rlhf (unquantized)")
            add("quantize", "linear layers bytes ratio", 1.0, m.get("linear_bytes_ratio"), "fp32")
    return rows


def report_markdown(recipe: str, metrics: dict[str, dict[str, Any]], passthrough: dict[str, str]) -> str:
    return f"### {recipe}\n\n" + markdown_table(HEADER, stage_rows(metrics, passthrough))
