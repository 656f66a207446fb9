"""landing_sensor: every new file in the landing zone becomes a drop partition and a run."""


from dagster import (
    AddDynamicPartitionsRequest,
    DefaultSensorStatus,
    RunRequest,
    SensorEvaluationContext,
    SensorResult,
    sensor,
)

from llm_assets.jobs import data_jobs
from llm_assets.partitions import DROP_PARTITIONS
from llm_assets.resources.landing import KINDS, LandingZone


@sensor(
    name="landing_sensor", jobs=list(data_jobs.values()), minimum_interval_seconds=30,
    default_status=DefaultSensorStatus.RUNNING, description="Turns each landed file into a drop partition and validates it.",
)
def landing_sensor(context: SensorEvaluationContext, landing: LandingZone) -> SensorResult:
    zone = landing.open()
    run_requests, partition_requests = [], []
    for kind in KINDS:
        scan = zone.scan(kind)
        for name, why in scan.refused:
            context.log.warning(f"landing/{kind}/{name} ignored: {why}")
        known = set(context.instance.get_dynamic_partitions(DROP_PARTITIONS[kind].name))
        new = sorted({f.key for f in scan.files} - known)
        if new:
            partition_requests.append(AddDynamicPartitionsRequest(DROP_PARTITIONS[kind].name, new))
            run_requests += [RunRequest(job_name=data_jobs[kind].name, partition_key=k, run_key=f"{kind}/{k}") for k in new]
    return SensorResult(run_requests=run_requests, dynamic_partitions_requests=partition_requests)
