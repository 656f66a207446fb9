"""ArtifactStore: the Dagster resource over the artifact store (``llm_assets.artifacts``), local or on S3."""

from __future__ import annotations

from dagster import ConfigurableResource
from dagster_aws.s3 import S3Resource

from llm_assets.artifacts import Store
from llm_assets.objects import open_objects


class ArtifactStore(ConfigurableResource):
    """Where every asset's files live: ``root`` is a directory or ``s3://bucket/prefix``."""

    root: str
    s3: S3Resource

    def open(self) -> Store:
        return Store(open_objects(self.root, self.s3.get_client))
