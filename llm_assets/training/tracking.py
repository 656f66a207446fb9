"""Experiment tracking for teams: the recipe's ``tracking.report_to`` turns on the Trainer's own integrations (MLflow,
TensorBoard, W&B). Where they send a run comes from the worker's environment (``MLFLOW_TRACKING_URI``,
``TENSORBOARD_LOGGING_DIR``, ``WANDB_*``), never from the work order: no server address or credential is in an order,
a record or a model's identity. The run's address goes into the stage's metrics, so the asset's metadata links to it."""

from __future__ import annotations

import importlib.util
import os
from typing import Any

# What each integration needs in the worker's environment to keep the run anywhere once the worker is gone (a worker
# runs in a scratch directory it deletes: an MLflow file store or TensorBoard events left there would vanish).
NEEDS = {"mlflow": ("MLFLOW_TRACKING_URI", "your tracking server, e.g. http://mlflow.internal:5000"),
         "tensorboard": ("TENSORBOARD_LOGGING_DIR", "a directory every worker can write and TensorBoard can read")}
PACKAGES = {"mlflow": ("mlflow",), "tensorboard": ("tensorboard", "tensorboardX"), "wandb": ("wandb",)}


def check_environment(report_to: list[str]) -> None:
    """Fail before training, in one line, when a tracker the recipe asks for cannot keep the run."""
    for name in report_to:
        if not any(importlib.util.find_spec(p) for p in PACKAGES[name]):
            raise ValueError(f"tracking.report_to lists {name}, but the {PACKAGES[name][0]} package is not installed where "
                             f"the stage runs: install it in the worker's environment or remove {name} from the recipe")
        if name in NEEDS and not os.environ.get(NEEDS[name][0]):
            var, what = NEEDS[name]
            raise ValueError(f"tracking.report_to lists {name}, but {var} is not set in the worker's environment: set it to "
                             f"{what} (the launcher's extra_env reaches every worker)")


def run_links(report_to: list[str]) -> dict[str, str]:
    """Where this run is being tracked, read once the integrations have started it (at ``on_train_begin``)."""
    links: dict[str, str] = {}
    if "mlflow" in report_to:
        import mlflow

        run = mlflow.active_run()
        if run is not None:
            links["mlflow_run"] = mlflow_run_url(mlflow.get_tracking_uri(), run.info.experiment_id, run.info.run_id)
            links["mlflow_run_id"] = run.info.run_id
    if "tensorboard" in report_to and os.environ.get("TENSORBOARD_LOGGING_DIR"):
        links["tensorboard_logdir"] = os.environ["TENSORBOARD_LOGGING_DIR"]
    if "wandb" in report_to:
        import wandb

        if wandb.run is not None and wandb.run.url:
            links["wandb_run"] = wandb.run.url
    return links


def mlflow_run_url(tracking_uri: str, experiment_id: str, run_id: str) -> str:
    """The run's page in the MLflow UI for a tracking server; for any other store, where to find the run."""
    if tracking_uri.startswith(("http://", "https://")):
        return f"{tracking_uri.rstrip('/')}/#/experiments/{experiment_id}/runs/{run_id}"
    return f"{tracking_uri} experiment {experiment_id} run {run_id}"


def log_final_metrics(links: dict[str, str], metrics: dict[str, Any]) -> None:
    """The stage's held-out figures, measured after training, added to the MLflow run the Trainer has closed."""
    if "mlflow_run_id" not in links:
        return
    import mlflow

    final = {f"final/{k}": float(v) for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    with mlflow.start_run(run_id=links["mlflow_run_id"]):
        mlflow.log_metrics(final)
