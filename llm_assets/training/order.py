"""What the orchestrator sends a training worker: store keys and versions, never local paths.

A work order travels as Dagster Pipes extras (key ``order``), so the worker can run in a subprocess, a
Kubernetes pod or an ECS task: the artifact store is the only thing it shares with the Dagster step.
The worker fetches the inputs it names, trains, commits its output under ``output_key`` without making
it current, and leaves its result (or its error) at ``result_path`` (``error_path``) for the step to record.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

ORDER_EXTRA = "order"  # the Pipes extras key


@dataclass(frozen=True)
class StoreSettings:
    """How to open the artifact store: plain settings; S3 credentials come from the worker's environment or role."""

    root: str
    s3_endpoint: str | None = None
    region: str | None = None


@dataclass
class WorkOrder:
    stage: str
    recipe: dict[str, Any]
    store: StoreSettings
    output_key: str  # where the worker commits its output (models/<stage>/<recipe>)
    fingerprint: str  # the identity of this training: names its result and its checkpoints
    inputs: dict[str, dict[str, str]] = field(default_factory=dict)  # role -> {"key", "version"}
    datasets: dict[str, list[dict[str, str]]] = field(default_factory=dict)  # kind -> [{"key", "version"}], one per drop
    options: dict[str, Any] = field(default_factory=dict)  # eval_limit, ...
    hub: dict[str, Any] | None = None  # base stage of a hub model: {"repo", "revision", "endpoint", "offline", "timeout_s"}
    tokens: dict[str, Any] | None = None  # tokenization cache: {"key", "version" (None: the worker makes and commits it)}
    checkpoints: bool = True  # checkpoint into the store under checkpoints_key

    @property
    def checkpoints_key(self) -> str:
        return f"checkpoints/{self.output_key}/{self.fingerprint}"

    @property
    def result_path(self) -> str:
        return f"{self.output_key}/results/{self.fingerprint}.json"

    @property
    def error_path(self) -> str:
        return f"{self.output_key}/results/{self.fingerprint}.error.json"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "WorkOrder":
        return cls(**{**d, "store": StoreSettings(**d["store"])})
