"""Data assets: raw_<kind>_corpus (an immutable snapshot of a landed file) and <kind>_dataset
(validated, scrubbed, de-duplicated, split; quarantine beside it), one partition per drop."""


import json
import tempfile
from pathlib import Path

from dagster import (
    AssetCheckResult,
    AssetCheckSpec,
    AssetExecutionContext,
    AssetsDefinition,
    Config,
    DataVersion,
    Failure,
    MaterializeResult,
    MetadataValue,
    asset,
)
from dagster_pandera import pandera_schema_to_dagster_type
from pydantic import Field

from llm_assets.automation import on_change
from llm_assets.data.contracts import dataset_schema
from llm_assets.data.formats import CANONICAL, FormatError
from llm_assets.data.pipeline import DEFAULT_EVAL_FRACTION, DEFAULT_MAX_CHARS, DropTally
from llm_assets.data.prepare import StoredProblems, prepare_drop, stored_dataset_problems
from llm_assets.data.readers import UnreadableFile
from llm_assets.markdown import markdown_table
from llm_assets.partitions import DROP_PARTITIONS, partitioned_checks
from llm_assets.resources.landing import KINDS, LandingZone, split_key
from llm_assets.artifacts import sha256_file
from llm_assets.resources.store import ArtifactStore

MAPPING_FILE = "mapping.yaml"
SHA_TAG = "llm_assets/sha256"  # set by landing_sensor on the runs it requests


class DatasetConfig(Config):
    """Defaults are what sensors and a plain Materialize click use."""

    eval_fraction: float = Field(DEFAULT_EVAL_FRACTION, ge=0, lt=1, description="Share of rows in the eval split (by content hash).")
    max_reject_rate: float = Field(0.5, ge=0, le=1, description=(
        "Sanity bound: above this quarantined share the file is probably in the wrong format or mapping, and the drop "
        "fails. Below it, each recipe decides with its own data.max_reject_rate whether it trains on the drop."))
    max_chars: int = Field(DEFAULT_MAX_CHARS, gt=0, description="Longest text field accepted, in characters.")


def raw_key(kind: str, drop: str) -> str:
    return f"raw/{kind}/{drop}"


def dataset_key(kind: str, drop: str) -> str:
    return f"datasets/{kind}/{drop}"


def _samples(rows: list[dict], kind: str) -> str:
    def show(v: object) -> str:
        if isinstance(v, list):
            v = " / ".join(f"{m['role']}: {m['content']}" for m in v)
        v = str(v).replace("\n", " ").replace("|", "\\|")
        return v if len(v) <= 160 else v[:160] + "…"

    cols = ["source_row", "split", *CANONICAL[kind]]
    return markdown_table(cols, [[show(r[c]) for c in cols] for r in rows])


def dataset_checks(kind: str, result: DropTally, stored: StoredProblems, max_rate: float) -> list[AssetCheckResult]:
    violations, dupes = stored.violations, stored.duplicate_rows
    return [
        AssetCheckResult(
            check_name="contract_holds", passed=not violations,
            metadata={"violations": violations, "first": MetadataValue.md("\n".join(f"- {v}" for v in stored.first) or "none")},
            description=None if not violations else (
                f"{violations} stored rows break the {kind} dataset contract (the first are in this check's 'first'): "
                "fix those rows in the landed file, or its .mapping.yaml, and land it again"),
        ),
        AssetCheckResult(
            check_name="reject_rate_plausible", passed=result.reject_rate <= max_rate,
            metadata={"reject_rate": round(result.reject_rate, 4), "bound": max_rate,
                      "rows_quarantined": result.rows_quarantined, "rows_in": result.rows_in},
            description=(
                f"{result.reject_rate:.1%} of the rows were quarantined, above the {max_rate:.0%} sanity bound: the file is "
                "probably in the wrong format or needs a .mapping.yaml; see the quarantine table's reasons"
            ) if result.reject_rate > max_rate else None,
        ),
        AssetCheckResult(check_name="no_duplicates", passed=dupes == 0, metadata={"duplicate_rows": dupes}, description=(
            f"{dupes} stored rows have the content hash of another, which de-duplication should have removed: "
            f"materialize {kind}_dataset again, and report it if they stay") if dupes else None),
    ]


def check_content(context: AssetExecutionContext, kind: str, sha: str) -> None:
    """A drop is immutable: its snapshot must be the content it was registered with (``name@sha8``
    keys and the sensor's run tag say which); later content of the same file is another drop."""
    _, prefix = split_key(context.partition_key)
    expected = context.run.tags.get(SHA_TAG) or prefix
    if expected and not sha.startswith(expected):
        raise Failure(description=(
            f"{kind} drop {context.partition_key!r} was registered with content {expected[:8]}..., but the landed file "
            f"now has {sha[:8]}...: it changed after the drop was created. The landing sensor makes the new content "
            "its own drop; this one cannot be snapshotted any more."))


def build_data_assets(kind: str) -> list[AssetsDefinition]:
    partitions = DROP_PARTITIONS[kind]

    @asset(
        name=f"raw_{kind}_corpus", partitions_def=partitions, group_name="data", code_version="1", kinds={"file"},
        description=f"Immutable snapshot of one landed {kind} file (and its mapping override); data version = content hash.",
    )
    def raw_corpus(context: AssetExecutionContext, landing: LandingZone, store: ArtifactStore) -> MaterializeResult:
        zone = landing.open()
        try:
            landed = zone.find(kind, context.partition_key)
            override = zone.mapping_override(landed)
        except (FileNotFoundError, ValueError) as e:
            raise Failure(description=str(e)) from None
        with tempfile.TemporaryDirectory() as tmp:
            snapshot = Path(tmp) / landed.name
            zone.download(landed, snapshot)  # streamed to disk, never whole in memory
            sha = sha256_file(snapshot)
            check_content(context, kind, sha)
            if override:
                (Path(tmp) / MAPPING_FILE).write_text(json.dumps(override))
            size = snapshot.stat().st_size
            manifest = store.open().commit(raw_key(kind, context.partition_key), Path(tmp), {"file": landed.name, "source": f"{zone.root}/{landed.path}"})
        return MaterializeResult(
            data_version=DataVersion(manifest.version),
            metadata={"file": landed.name, "source": f"{zone.root}/{landed.path}", "bytes": size, "sha256": sha,
                      "mapping_override": json.dumps(override) if override else "none", "artifact": f"{store.root}/{raw_key(kind, context.partition_key)}"},
        )

    schema = dataset_schema(kind)
    column_schema = pandera_schema_to_dagster_type(schema).metadata.get("schema")

    with partitioned_checks():  # each drop's checks recorded under its partition
        check_specs = [
            AssetCheckSpec("contract_holds", asset=f"{kind}_dataset", blocking=True, partitions_def=partitions,
                           description="Every stored row satisfies the pandera dataset contract."),
            AssetCheckSpec("reject_rate_plausible", asset=f"{kind}_dataset", blocking=True, partitions_def=partitions,
                           description="Quarantined share at most the sanity bound DatasetConfig.max_reject_rate (50%); each recipe applies its own data.max_reject_rate when it picks drops."),
            AssetCheckSpec("no_duplicates", asset=f"{kind}_dataset", blocking=True, partitions_def=partitions,
                           description="No two stored rows have the same content hash."),
        ]

    @asset(
        name=f"{kind}_dataset", partitions_def=partitions, group_name="data", code_version="1", deps=[raw_corpus], kinds={"parquet", "pandera"},
        automation_condition=on_change(),
        description=f"Validated {kind} rows in canonical form, PII scrubbed, de-duplicated, split by content hash; rejected rows in the quarantine table.",
        check_specs=check_specs,
    )
    def dataset(context: AssetExecutionContext, config: DatasetConfig, store: ArtifactStore) -> MaterializeResult:
        drop = context.partition_key
        st = store.open()
        raw = st.get(raw_key(kind, drop))
        name = raw.manifest.metadata["file"]
        override = json.loads(raw.file(MAPPING_FILE).read_text()) if raw.file(MAPPING_FILE).exists() else {}
        with tempfile.TemporaryDirectory() as tmp:
            try:
                result = prepare_drop(kind, name, raw.file(name), Path(tmp), override=override,
                                      max_chars=config.max_chars, eval_fraction=config.eval_fraction)
            except (UnreadableFile, FormatError) as e:
                raise Failure(description=f"{kind} drop '{drop}' ({raw.manifest.metadata.get('source', name)}): {e}") from None
            stored = stored_dataset_problems(kind, Path(tmp) / "dataset.parquet")
            checks = dataset_checks(kind, result, stored, config.max_reject_rate)
            summary = {"format": result.format.name, "rows_in": result.rows_in, "rows_kept": result.rows_kept,
                       "rows_quarantined": result.rows_quarantined, "rows_duplicate": result.rows_duplicate,
                       "reject_rate": result.reject_rate, "raw_version": raw.version,
                       "checks_passed": all(c.passed for c in checks)}
            (Path(tmp) / "summary.json").write_text(json.dumps(summary, indent=1))
            manifest = st.commit(dataset_key(kind, drop), Path(tmp), summary)
        reasons = result.reasons()
        context.log.info(f"{drop}: {result.rows_in} rows in, {result.rows_kept} kept, {result.rows_quarantined} quarantined, "
                         f"{result.rows_duplicate} exact duplicates dropped ({result.format.name})")
        for c in checks:
            if not c.passed:
                context.log.error(f"{kind} drop '{drop}': {c.check_name} failed: {c.description}")
        return MaterializeResult(
            data_version=DataVersion(manifest.version),
            check_results=checks,
            metadata={
                "dagster/row_count": result.rows_kept,
                "dagster/column_schema": column_schema,
                "format": result.format.name,
                "columns_found": ", ".join(result.columns_seen),
                "rows_in": result.rows_in,
                "rows_kept": result.rows_kept,
                "rows_quarantined": result.rows_quarantined,
                "rows_duplicate": result.rows_duplicate,
                "reject_rate": round(result.reject_rate, 4),
                "blank_lines_skipped": result.blank_lines,
                "train_rows": result.splits["train"],
                "eval_rows": result.splits["eval"],
                "pii_scrubbed": MetadataValue.json(dict(result.pii_counts)),
                "length_chars": MetadataValue.json(result.length_stats()),
                "reject_reasons": MetadataValue.md(markdown_table(list(reasons.columns), reasons.values.tolist()) if len(reasons) else "none"),
                "samples": MetadataValue.md(_samples(result.samples, kind)),
                "artifact": f"{st.root}/{dataset_key(kind, drop)}/versions/{manifest.version}",
            },
        )

    return [raw_corpus, dataset]


data_assets: list[AssetsDefinition] = [a for kind in KINDS for a in build_data_assets(kind)]
