"""A model stage's metrics as Dagster metadata, shown as a person reads them: losses and rewards to 4 significant digits,
rates as percentages, samples as tables, the training curves as an image and tracker runs as links. Every figure
stays a number, so Dagster's plots show its history across materializations; the exact values stay in the run record
in the store (``<key>/records/<fingerprint>.json``), which the gates read."""

from __future__ import annotations

from typing import Any

from dagster import MetadataValue, TableColumn, TableRecord, TableSchema

from llm_assets.artifacts import Store
from llm_assets.training.curves import curves_path, markdown_image

# Fractions of examples: shown as percentages under ``<name>_pct`` (``exact_match`` 0.5909 -> ``exact_match_pct`` 59.1).
RATES = ("exact_match", "parent_exact_match", "reward_accuracy", "parent_reward_accuracy", "decided_accuracy", "tie_rate",
         "parent_tie_rate", "win_rate_vs_sft")
HIDDEN = ("log_history",)  # drawn as the curves, too long for a metadata row
# Sample columns in reading order (run records store keys sorted): the prompt, then what answered it and its score.
SAMPLE_COLUMNS = ("prompt", "expected", "got", "chosen", "chosen_score", "rejected", "rejected_score", "prefers_chosen",
                  "sft_reply", "sft_reward", "policy_reply", "policy_reward", "unquantized", "quantized")


def rounded(v: float) -> float:
    """4 significant digits: what a loss or a reward means at a glance (0.30624099478385375 -> 0.3062)."""
    return float(f"{v:.4g}") if v == v else v


def metadata_of(metrics: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in metrics.items():
        if k in HIDDEN or v is None:
            continue
        if k == "samples":
            if v:
                out[k] = samples_table(v)
        elif k == "tracking":
            out.update(tracking_links(v))
        elif k in RATES and isinstance(v, (int, float)):
            out[f"{k}_pct"] = MetadataValue.float(round(100 * v, 1))
        elif isinstance(v, dict):
            out[k] = MetadataValue.json(v)
        elif isinstance(v, float):
            out[k] = MetadataValue.float(rounded(v))
        elif isinstance(v, (int, str, bool)):
            out[k] = v
    return out


def samples_table(samples: list[dict[str, Any]]) -> MetadataValue:
    """Held-out examples, one row each, columns typed from the first row; scores rounded like the figures."""
    kinds = {bool: "bool", int: "int", float: "float"}
    order = sorted(samples[0], key=lambda name: SAMPLE_COLUMNS.index(name) if name in SAMPLE_COLUMNS else len(SAMPLE_COLUMNS))
    columns = [TableColumn(name, kinds.get(type(samples[0][name]), "string")) for name in order]

    def cell(v: Any) -> Any:
        return rounded(v) if isinstance(v, float) else v if isinstance(v, (bool, int)) else str(v)

    return MetadataValue.table(records=[TableRecord({k: cell(s[k]) for k in order}) for s in samples],
                               schema=TableSchema(columns=columns))


def tracking_links(links: dict[str, str]) -> dict[str, Any]:
    """Each tracker's run: a link where it has a web page (MLflow, W&B), else where to find it (a TensorBoard log dir)."""
    return {name: MetadataValue.url(where) if where.startswith(("http://", "https://")) else MetadataValue.text(where)
            for name, where in links.items() if not name.endswith("_id")}


def curves_metadata(st: Store, key: str, fingerprint: str) -> dict[str, Any]:
    """The run's curves, kept by its worker beside the run record: shown inline (the UI's markdown takes a data: image)
    and named by their place in the store. A stage that trained nothing has none."""
    path = curves_path(key, fingerprint)
    if not st.objects.exists(path):
        return {}
    return {"curves": MetadataValue.md(markdown_image(st.objects.read_bytes(path))), "curves_file": MetadataValue.path(f"{st.root}/{path}")}
