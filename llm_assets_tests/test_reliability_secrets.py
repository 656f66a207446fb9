"""No secret is ever stored (issue 16, item 2): with sentinel values in HF_TOKEN and the AWS credentials, a data asset
and a model stage run against an S3 store (moto, which takes any credentials), and nothing under DAGSTER_HOME (sqlite
rows decompressed, compute logs), in the bucket or in the worker's cache holds any of them."""

from __future__ import annotations

import sqlite3
import uuid
import zlib
from pathlib import Path

import boto3
from dagster import AssetKey, DagsterInstance

from llm_assets_tests.helpers import land_demo_drops, write_recipe

SECRETS = {"HF_TOKEN": "hf_SENTINELtoken5f2a9c", "AWS_SECRET_ACCESS_KEY": "SENTINELsecret7b31e0",
           "AWS_ACCESS_KEY_ID": "AKIASENTINEL4c8d21"}


def texts(data: bytes) -> list[bytes]:
    """The bytes as stored and, where they are zlib-compressed (Dagster's snapshots), decompressed."""
    out = [data]
    try:
        out.append(zlib.decompress(data))
    except zlib.error:
        pass
    return out


def sqlite_rows(path: Path) -> list[bytes]:
    with sqlite3.connect(path) as db:
        tables = [r[0] for r in db.execute("select name from sqlite_master where type='table'")]
        return [v if isinstance(v, bytes) else str(v).encode() for t in tables
                for row in db.execute(f'select * from "{t}"') for v in row if v is not None]


def hits(blobs: dict[str, bytes]) -> list[str]:
    return [f"{name}: {var}" for name, blob in blobs.items() for text in texts(blob)
            for var, value in SECRETS.items() if value.encode() in text]


def test_no_secret_value_is_stored_anywhere(project_env, s3_endpoint, monkeypatch):
    for var, value in SECRETS.items():
        monkeypatch.setenv(var, value)
    bucket = f"secrets-{uuid.uuid4().hex[:8]}"
    boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1").create_bucket(Bucket=bucket)
    monkeypatch.setenv("LLM_ASSETS_STORE", f"s3://{bucket}/store")
    monkeypatch.setenv("LLM_ASSETS_S3_ENDPOINT", s3_endpoint)
    recipes = project_env / "recipes"
    write_recipe(recipes)
    monkeypatch.setenv("LLM_ASSETS_RECIPES_DIR", str(recipes))
    from llm_assets.definitions import build_definitions

    instance, defs = DagsterInstance.get(), build_definitions()
    land_demo_drops(project_env / "data" / "landing", defs, instance, scale=0.05)
    job = defs.resolve_job_def("full_pipeline_job").get_subset(asset_selection={AssetKey("base_model")})
    assert job.execute_in_process(partition_key="tiny", instance=instance).success

    blobs: dict[str, bytes] = {}
    for f in project_env.rglob("*"):  # DAGSTER_HOME, compute logs, landing, worker cache
        if f.is_file():
            blobs[str(f)] = f.read_bytes()
            if f.suffix == ".db":
                blobs.update({f"{f} row {i}": v for i, v in enumerate(sqlite_rows(f))})
    s3 = boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1")
    for obj in s3.list_objects_v2(Bucket=bucket).get("Contents", []):
        blobs[f"s3://{bucket}/{obj['Key']}"] = s3.get_object(Bucket=bucket, Key=obj["Key"])["Body"].read()
    assert any(name.startswith(f"s3://{bucket}/store/models/base/tiny") for name in blobs)  # the stage committed to S3
    assert any("runs.db row" in name or "index.db row" in name for name in blobs)
    assert not hits(blobs)
    print(f"scanned {len(blobs)} files, rows and objects: no secret")
