"""``python -m llm_assets.demo``: land the demo data and materialize the graph into DAGSTER_HOME.

What it materializes is what ``make ui`` then shows: the same instance, the same partitions.
"""

from __future__ import annotations

import argparse
import sys
import time

from dagster import DagsterInstance

from llm_assets.demo_data import write_demo_drops
from llm_assets.markdown import markdown_table
from llm_assets.partitions import DROP_PARTITIONS
from llm_assets.resources.landing import KINDS


def register_drops(instance: DagsterInstance, landing) -> dict[str, list[str]]:
    """Add a drop partition for every landed file: the demo wrote them atomically, so there is nothing to settle."""
    drops = {}
    for kind in KINDS:
        scan = landing.scan(kind)
        for name, why in scan.refused:
            print(f"  ignored landing/{kind}/{name}: {why}")
        keys = sorted(f.key for f in scan.files)
        name = DROP_PARTITIONS[kind].name
        new = [k for k in keys if not instance.has_dynamic_partition(name, k)]
        if new:
            instance.add_dynamic_partitions(name, new)
        drops[kind] = keys
    return drops


def materialize_data(defs, instance: DagsterInstance, drops: dict[str, list[str]]) -> list[list[object]]:
    rows = []
    for kind, keys in drops.items():
        job = defs.resolve_job_def(f"{kind}_data_prep_job")
        for key in keys:
            t0 = time.time()
            result = job.execute_in_process(partition_key=key, instance=instance, raise_on_error=False)
            meta = {}
            for event in result.get_asset_materialization_events():
                if event.asset_key.path[-1] == f"{kind}_dataset":
                    meta = {k: v.value for k, v in event.materialization.metadata.items()}
            checks = result.get_asset_check_evaluations()
            failed = [c.check_name for c in checks if not c.passed]
            status = "ok" if result.success and not failed else "FAILED " + ", ".join(failed or ["run"])
            rows.append([kind, key, meta.get("format", "-"), meta.get("rows_in", "-"), meta.get("rows_kept", "-"),
                         meta.get("rows_quarantined", "-"), meta.get("rows_duplicate", "-"), status, f"{time.time() - t0:.1f}"])
    return rows


def materialize_models(defs, instance: DagsterInstance, recipe: str) -> tuple[bool, str]:
    from llm_assets.assets.reports import collect, release_markdown
    from llm_assets.report_table import report_markdown
    from llm_assets.resources import default_resources

    t0 = time.time()
    result = defs.resolve_job_def("full_pipeline_job").execute_in_process(partition_key=recipe, instance=instance, raise_on_error=False)
    failed = [f"{c.asset_key.path[-1]}.{c.check_name}" for c in result.get_asset_check_evaluations() if not c.passed]
    if not result.success:
        errors = [e.step_failure_data.error.message.strip() for e in result.all_events if e.event_type_value == "STEP_FAILURE"]
        return False, f"full_pipeline_job failed for recipe {recipe!r}: " + " | ".join(errors + failed)
    st = default_resources()["store"].open()
    metrics, passthrough = collect(st, recipe)
    table = report_markdown(recipe, metrics, passthrough) + "\n\n" + release_markdown(st, recipe)
    return not failed, f"{table}\n\nwhole graph for recipe {recipe!r}: {time.time() - t0:.0f} s" + (f"; FAILED checks: {failed}" if failed else "")


def materialize_predictions(defs, instance: DagsterInstance, drop: str, recipe: str) -> tuple[bool, str]:
    """batch_predictions for one inference drop and the recipe: its throughput and first replies."""
    from dagster import MultiPartitionKey

    from llm_assets.assets.predictions import predictions_key

    t0 = time.time()
    result = defs.resolve_job_def("batch_predictions_job").execute_in_process(
        partition_key=MultiPartitionKey({"drop": drop, "recipe": recipe}), instance=instance, raise_on_error=False)
    if not result.success:
        errors = [e.step_failure_data.error.message.strip() for e in result.all_events if e.event_type_value == "STEP_FAILURE"]
        return False, f"batch_predictions failed for {drop} x {recipe}: " + " | ".join(errors)
    from llm_assets.resources import default_resources

    record = default_resources()["store"].open().record(predictions_key(recipe, drop)) or {}
    m = record.get("metrics", {})
    figures = ", ".join(f"{k} {m[k]:,.4g}" for k in ("rows", "tokens_per_s", "rows_per_s", "latency_p50_ms", "latency_p95_ms") if k in m)
    samples = [[s.get("row"), s.get("prompt"), s.get("reply")] for s in m.get("samples", [])]
    return True, (f"Batch predictions {drop} x {recipe}: {figures} ({time.time() - t0:.0f} s)\n\n"
                  + markdown_table(["row", "prompt", "reply"], samples))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--no-land", action="store_true", help="Use what is already in the landing zone.")
    parser.add_argument("--recipe", default="tiny", help="Recipe to train after the data (default: tiny); 'none' to stop after the data.")
    args = parser.parse_args(argv)

    from llm_assets.definitions import defs
    from llm_assets.resources import default_resources

    resources = default_resources()
    landing = resources["landing"].open()
    instance = DagsterInstance.get()
    print(f"DAGSTER_HOME: {instance.root_directory}\nlanding zone: {landing.root}\nartifact store: {resources['store'].root}")
    if not args.no_land:
        if landing.root.startswith("s3://"):
            print("the landing zone is on S3: copy the demo files there yourself, or run with --no-land", file=sys.stderr)
            return 2
        from pathlib import Path

        for path in write_demo_drops(Path(landing.root)):
            print(f"  landed {path}")
    drops = register_drops(instance, landing)
    rows = materialize_data(defs, instance, drops)
    print("\nData drops\n" + markdown_table(["kind", "drop", "format", "rows in", "kept", "quarantined", "duplicates", "checks", "seconds"], rows))
    data_ok = all(r[7] == "ok" for r in rows if str(r[1]).startswith("demo_"))
    if args.recipe == "none":
        return 0 if data_ok else 1
    print(f"\nTraining recipe {args.recipe!r} (base -> cpt -> sft -> reward -> rlhf -> quantized -> evaluation -> released -> report) ...", flush=True)
    models_ok, text = materialize_models(defs, instance, args.recipe)
    print("\n" + text)
    predictions_ok = True
    for drop in drops.get("inference", []):
        ok, text = materialize_predictions(defs, instance, drop, args.recipe)
        predictions_ok &= ok
        print("\n" + text)
    return 0 if data_ok and models_ok and predictions_ok else 1


if __name__ == "__main__":
    sys.exit(main())
