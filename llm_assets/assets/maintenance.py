"""store_gc_job: the artifact store's garbage collector (``llm_assets.maintenance.gc``) as a job, launched from the UI
or on a schedule of your own; its report is in the run's logs and the op's output metadata."""

from dagster import (
    Config,
    DagsterInstance,
    DagsterRunStatus,
    Definitions,
    MetadataValue,
    OpExecutionContext,
    Output,
    RunsFilter,
    job,
    op,
)
from pydantic import Field

from llm_assets.maintenance.gc import EVERY_RECIPE, collect_garbage, scratch_root
from llm_assets.markdown import markdown_table
from llm_assets.resources.store import ArtifactStore

IN_PROGRESS = [DagsterRunStatus.QUEUED, DagsterRunStatus.NOT_STARTED, DagsterRunStatus.STARTING, DagsterRunStatus.STARTED,
               DagsterRunStatus.CANCELING, DagsterRunStatus.MANAGED]
PARTITION_TAG = "dagster/partition"


class StoreGcConfig(Config):
    dry_run: bool = Field(True, description="List what would be deleted and its bytes, delete nothing; set false to delete.")
    older_than_hours: float = Field(24.0, ge=0, description="Only what nothing has written for this long: commits and runs "
                                                            "under way are younger.")
    verify: bool = Field(False, description="Also hash every kept version and delete corrupt ones (reads every byte).")


def recipes_in_flight(instance: DagsterInstance, own_run_id: str) -> set[str]:
    """Recipes (partitions) of runs in progress that materialize assets: their checkpoints are kept whatever their age."""
    busy = set()
    for run in instance.get_runs(filters=RunsFilter(statuses=IN_PROGRESS)):
        if run.run_id == own_run_id or not run.asset_selection:
            continue
        busy.add(run.tags.get(PARTITION_TAG) or EVERY_RECIPE)
    return busy


@op(description="Deletes the store's unreferenced versions, unfinished commits and uploads, stale checkpoints and work files.")
def collect_store_garbage(context: OpExecutionContext, config: StoreGcConfig, store: ArtifactStore) -> Output[dict]:
    st = store.open()
    busy = recipes_in_flight(context.instance, context.run_id)
    report = collect_garbage(st, config.older_than_hours, config.dry_run, in_flight=busy, scratch=scratch_root(),
                             verify=config.verify)
    for line in report.lines():
        context.log.info(line)
    context.log.info(f"{st.root}: {report.summary()}")
    for error in report.errors:
        context.log.error(error)
    rows = [[g.kind, f"{g.bytes:,}", g.where, g.why] for g in report.garbage[:200]]
    return Output(report.as_dict(), metadata={
        "summary": report.summary(), "dry_run": report.dry_run, "bytes": report.total_bytes, "items": len(report.garbage),
        "kept_versions": report.kept_versions, "recipes_in_flight": ", ".join(sorted(busy)) or "none",
        "garbage": MetadataValue.md(markdown_table(["kind", "bytes", "where", "why"], rows) if rows else "nothing")})


@job(description="Garbage collection of the artifact store (dry run by default: set dry_run false to delete).")
def store_gc_job():
    collect_store_garbage()


def maintenance_definitions() -> Definitions:
    return Definitions(jobs=[store_gc_job])
