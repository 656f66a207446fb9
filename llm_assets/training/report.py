"""Reporting from inside a training process: to Dagster through Pipes when launched by it,
else to stdout, so the same stage runs from a shell, a test or a Kubernetes pod."""

from __future__ import annotations

import json
import os
import time
from typing import Any

from transformers import TrainerCallback


class Reporter:
    def __init__(self, pipes: Any = None):
        self.pipes = pipes  # a dagster_pipes.PipesContext, or None
        self.rank0 = int(os.environ.get("RANK", "0")) == 0

    def log(self, message: str) -> None:
        if not self.rank0:
            return
        if self.pipes is not None:
            self.pipes.log.info(message)
        else:
            print(message, flush=True)

    def result(self, metrics: dict[str, Any]) -> None:
        """The stage's final metrics; the orchestrator turns them into materialization metadata."""
        if not self.rank0:
            return
        if self.pipes is not None:
            self.pipes.report_custom_message({"metrics": metrics})
        shown = {k: v for k, v in metrics.items() if isinstance(v, (int, float, str, bool))}
        print("RESULT " + json.dumps(shown, default=float), flush=True)


class LogCallback(TrainerCallback):
    """Loss, learning rate and tokens/s for every logging step, and the held-out figures of every evaluation during
    training, into the Dagster run log and ``history`` (the stage's curves); ``tracking`` is where the recipe's
    trackers (MLflow, TensorBoard, W&B) keep the run."""

    def __init__(self, reporter: Reporter, stage: str):
        self.reporter, self.stage = reporter, stage
        self.last: tuple[float, int] | None = None
        self.began: tuple[float, int] = (time.perf_counter(), 0)
        self.history: list[dict[str, float]] = []
        self.tracking: dict[str, str] = {}

    def on_train_begin(self, args, state, control, **kw):
        self.last = (time.perf_counter(), state.num_input_tokens_seen or 0)
        self.began = (self.last[0], state.global_step)  # a resumed run starts past step 0: the ETA counts this run's pace
        report_to = [r for r in ([args.report_to] if isinstance(args.report_to, str) else args.report_to or []) if r != "none"]
        if report_to and state.is_world_process_zero:  # the integrations' callbacks run before ours: their runs exist
            from llm_assets.training.tracking import run_links

            self.tracking = run_links(report_to)
            for name, where in self.tracking.items():
                if not name.endswith("_id"):
                    self.reporter.log(f"[{self.stage}] {name.replace('_', ' ')}: {where}")

    def on_log(self, args, state, control, logs=None, **kw):
        logs = dict(logs or {})
        # TRL's own count sees one row per batch when packed rows carry no attention mask; the Trainer's count is right
        # where it counts (SFT, CPT). The reward trainer's pairs have no input_ids for it to count: there TRL's is used.
        trl_tokens = logs.pop("num_tokens", None)
        now, tokens = time.perf_counter(), state.num_input_tokens_seen or trl_tokens or 0
        if "eval_runtime" in logs:  # an evaluation: its time is not training time, so the clock of tokens/s skips it
            if self.last:
                self.last = (self.last[0] + logs["eval_runtime"], self.last[1])
        else:
            if self.last and tokens > self.last[1]:
                logs["tokens_per_s"] = (tokens - self.last[1]) / max(now - self.last[0], 1e-9)
            self.last = (now, tokens)
        logs["step"] = state.global_step
        self.history.append({k: float(v) for k, v in logs.items() if isinstance(v, (int, float))})
        shown = " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in logs.items()
                         if k in ("loss", "learning_rate", "tokens_per_s", "grad_norm", "reward", "kl", "eval_loss", "eval_accuracy", "epoch")
                         or k.startswith("rewards/") and k.endswith("mean"))
        self.reporter.log(f"[{self.stage}] {shown} | {progress(state.global_step, state.max_steps, now - self.began[0], state.global_step - self.began[1])}")


def progress(step: int, total: int, seconds: float, steps_done: int) -> str:
    """``step 20/60 (33%), ETA 1m05s``: where a run is and when it ends at this run's pace so far."""
    if not total:
        return f"step {step}"
    left = max(total - step, 0)
    eta = f", ETA {duration(seconds / steps_done * left)}" if steps_done > 0 and left else ""
    return f"step {step}/{total} ({step / total:.0%}){eta}"


def duration(seconds: float) -> str:
    seconds = int(round(seconds))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}h{m:02d}m" if h else f"{m}m{s:02d}s" if m else f"{s}s"
