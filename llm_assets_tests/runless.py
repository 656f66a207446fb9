"""What a landing sensor's run leaves behind, reported to an instance directly (runless events): a drop
partition, its raw and dataset materializations and the dataset's blocking check, in milliseconds."""

from __future__ import annotations

from dagster import AssetCheckEvaluation, AssetKey, AssetMaterialization, AssetRecordsFilter, DagsterInstance
from dagster._core.definitions.asset_checks.asset_check_evaluation import (  # no public export in 1.13; test-only
    AssetCheckEvaluationTargetMaterializationData,
)

DATA_VERSION = "dagster/data_version"  # the tag a materialization's data version is stored under


def land(instance: DagsterInstance, kind: str, drop: str, checks_pass: bool = True, content: str | None = None,
         check: bool = True) -> None:
    """Data versions are content hashes: the same ``content`` gives the same version. ``check``: record the blocking
    check's evaluation (runless check evaluations are one per partition)."""
    instance.add_dynamic_partitions(f"{kind}_drops", [drop])
    for asset in (f"raw_{kind}_corpus", f"{kind}_dataset"):
        instance.report_runless_asset_event(AssetMaterialization(asset, partition=drop, tags={DATA_VERSION: f"{asset}:{content or drop}"}))
    if not check:
        return
    [latest] = instance.fetch_materializations(AssetRecordsFilter(AssetKey(f"{kind}_dataset"), asset_partitions=[drop]), limit=1).records
    # what a run records: the evaluation targets the drop's materialization it checked
    target = AssetCheckEvaluationTargetMaterializationData(storage_id=latest.storage_id, run_id=latest.run_id, timestamp=latest.timestamp)
    instance.report_runless_asset_event(AssetCheckEvaluation(
        asset_key=AssetKey(f"{kind}_dataset"), check_name="contract_holds", passed=checks_pass, partition=drop, blocking=True,
        target_materialization_data=target))
