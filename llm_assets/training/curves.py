"""A stage's training curves as one PNG, from the log history ``report.LogCallback`` keeps: losses (train and the
held-out evaluations), learning rate, grad norm, tokens/s, and the stage's own measures (reward and KL for RLHF,
accuracy for the reward model). Rendered on matplotlib's Agg canvas, with no pyplot state, so a worker with no display
draws it and two runs of one stage draw the same picture."""

from __future__ import annotations

import base64
import io

from llm_assets.artifacts import RECORDS
# (panel title, [(history key, legend label)]): a panel is drawn when any of its keys was logged.
PANELS: list[tuple[str, list[tuple[str, str]]]] = [
    ("loss", [("loss", "train"), ("eval_loss", "held-out")]),
    ("reward", [("reward", "train (sampled)"), ("rewards/chosen", "chosen (train)"), ("rewards/rejected", "rejected (train)"),
                ("eval_rewards/chosen", "chosen (held-out)"), ("eval_rewards/rejected", "rejected (held-out)"),
                ("mean_reward", "train"), ("eval_mean_reward", "held-out")]),
    ("KL to reference", [("kl", "train")]),
    ("accuracy", [("accuracy", "train"), ("eval_accuracy", "held-out"), ("rewards/accuracies", "train"),
                  ("eval_rewards/accuracies", "held-out")]),
    ("learning rate", [("learning_rate", "")]),
    ("grad norm", [("grad_norm", "")]),
    ("tokens/s", [("tokens_per_s", "")]),
]
COLUMNS = 3


def curves_path(key: str, fingerprint: str) -> str:
    """Beside the run record ``<key>/records/<fingerprint>.json``: the record of a run, not part of any model version."""
    return f"{key}/{RECORDS}/{fingerprint}.curves.png"


def panels_of(history: list[dict[str, float]]) -> list[tuple[str, list[tuple[str, list[float], list[float]]]]]:
    """The panels this history can fill: per panel, (label, steps, values) of every key that was logged."""
    out = []
    for title, keys in PANELS:
        lines = []
        for key, label in keys:
            points = [(h["step"], h[key]) for h in history if key in h and "step" in h and h[key] == h[key]]  # NaN: not drawn
            if points:
                lines.append((label, [s for s, _ in points], [v for _, v in points]))
        if lines:
            out.append((title, lines))
    return out


def render(history: list[dict[str, float]], title: str) -> bytes | None:
    """The curves as PNG bytes; None when nothing was logged (a stage that trains nothing)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    panels = panels_of(history)
    if not panels:
        return None
    rows = -(-len(panels) // COLUMNS)
    fig = Figure(figsize=(4.0 * min(len(panels), COLUMNS), 2.8 * rows), dpi=80, layout="constrained")
    FigureCanvasAgg(fig)
    fig.suptitle(title)
    for i, (name, lines) in enumerate(panels):
        ax = fig.add_subplot(rows, COLUMNS if len(panels) > 1 else 1, i + 1)
        for label, steps, values in lines:
            single = len(steps) == 1
            ax.plot(steps, values, marker="o" if single or label == "held-out" else None, markersize=3, label=label or None)
        ax.set_title(name, fontsize=10)
        ax.set_xlabel("step", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
        if any(label for label, _, _ in lines):
            ax.legend(fontsize=7)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", metadata={"Software": None})  # no version stamp: same history, same bytes
    return buf.getvalue()


def markdown_image(png: bytes, alt: str = "training curves") -> str:
    """Markdown that shows ``png`` inline: the Dagster UI's markdown allows ``data:`` image sources."""
    return f"![{alt}](data:image/png;base64,{base64.b64encode(png).decode()})"

