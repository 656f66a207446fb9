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
    """Loss, learning rate and tokens/s for every logging step, into the Dagster run log."""

    def __init__(self, reporter: Reporter, stage: str):
        self.reporter, self.stage = reporter, stage
        self.last: tuple[float, int] | None = None
        self.began: tuple[float, int] = (time.perf_counter(), 0)
        self.history: list[dict[str, float]] = []

    def on_train_begin(self, args, state, control, **kw):
        self.last = (time.perf_counter(), state.num_input_tokens_seen or 0)
        self.began = (self.last[0], state.global_step)  # a resumed run starts past step 0: the ETA counts this run's pace

    def on_log(self, args, state, control, logs=None, **kw):
        logs = dict(logs or {})
        # TRL's own count sees one row per batch when packed rows carry no attention mask; the Trainer's count is right
        logs.pop("num_tokens", None)
        now, tokens = time.perf_counter(), state.num_input_tokens_seen or 0
        if self.last and tokens > self.last[1]:
            logs["tokens_per_s"] = (tokens - self.last[1]) / max(now - self.last[0], 1e-9)
        self.last = (now, tokens)
        logs["step"] = state.global_step
        self.history.append({k: float(v) for k, v in logs.items() if isinstance(v, (int, float))})
        shown = " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in logs.items()
                         if k in ("loss", "learning_rate", "tokens_per_s", "grad_norm", "reward", "kl", "eval_loss", "epoch")
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
