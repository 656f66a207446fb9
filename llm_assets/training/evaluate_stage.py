"""Stage ``evaluate``: the held-out figures of any model directory (eval loss, exact match, text loss)."""

from __future__ import annotations

from typing import Any

from llm_assets.training.base import baseline_metrics
from llm_assets.training.common import hardware_for
from llm_assets.training.report import Reporter
from llm_assets.training.spec import StageSpec


def run(spec: StageSpec, reporter: Reporter) -> dict[str, Any]:
    hw = hardware_for(spec.parsed_recipe)
    metrics = {**baseline_metrics(spec.inputs["model"], spec), "hardware": hw.as_dict()}
    reporter.log(f"[evaluate] {spec.inputs['model']} on {hw.why}: " + ", ".join(f"{k}={v:.4g}" for k, v in metrics.items() if isinstance(v, float)))
    return metrics
