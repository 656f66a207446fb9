"""Jobs runnable from the UI and the dagster CLI."""

from __future__ import annotations

from dagster import AssetSelection, define_asset_job

from llm_assets.partitions import DROP_PARTITIONS
from llm_assets.resources.landing import KINDS

data_jobs = {
    kind: define_asset_job(
        f"{kind}_data_job",
        selection=AssetSelection.assets(f"raw_{kind}_corpus", f"{kind}_dataset"),
        partitions_def=DROP_PARTITIONS[kind],
        description=f"Snapshot and validate one {kind} drop.",
    )
    for kind in KINDS
}
