"""Stage ``evaluate``: the held-out figures of any model directory (eval loss, exact match, text loss)."""

from __future__ import annotations

from typing import Any

from llm_assets.training.base import baseline_metrics
from llm_assets.training.report import Reporter
from llm_assets.training.spec import StageSpec


def run(spec: StageSpec, reporter: Reporter) -> dict[str, Any]:
    metrics = baseline_metrics(spec.inputs["model"], spec)
    reporter.log(f"[evaluate] {spec.inputs['model']}: " + ", ".join(f"{k}={v:.4g}" for k, v in metrics.items() if isinstance(v, float)))
    return metrics
