"""The code location: one Definitions object merging the domain modules."""

from dagster import Definitions

from llm_assets.assets.data import data_assets
from llm_assets.jobs import data_jobs
from llm_assets.resources import default_resources
from llm_assets.sensors import landing_sensor

defs = Definitions(
    assets=data_assets,
    jobs=list(data_jobs.values()),
    sensors=[landing_sensor],
    resources=default_resources(),
)
