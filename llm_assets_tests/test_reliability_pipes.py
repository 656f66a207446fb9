"""A stage never depends on a Pipes message line arriving whole (issue 16, item 3): Dagster's file reader decoded a
partly written line, failed with JSONDecodeError and stopped reading. A real child here writes one message in two
pieces with a pause between them, then a garbled line, then reports on: every message arrives, the step succeeds."""



import sys

from dagster import AssetExecutionContext, DagsterEventType, DagsterInstance, MaterializeResult, asset, materialize

from llm_assets.resources.launcher import run_pipes_process

CHILD = """
import json, time
from dagster_pipes import PipesEnvVarParamsLoader, decode_param, open_dagster_pipes, DAGSTER_PIPES_MESSAGES_ENV_VAR
import os
path = decode_param(os.environ[DAGSTER_PIPES_MESSAGES_ENV_VAR])["path"]
with open_dagster_pipes() as pipes:
    pipes.report_custom_message({"n": 1})
    line = json.dumps({"__dagster_pipes_version": "0.1", "method": "report_custom_message", "params": {"payload": {"n": 2}}})
    with open(path, "a") as f:
        f.write(line[:25]); f.flush()
        time.sleep(0.5)  # the reader sees a torn line now
        f.write(line[25:] + "\\n")
        f.write('{"__dagster_pipes_version": "0.1", "method": "log", "params": {"message": "unterminated\\n')
    pipes.report_custom_message({"n": 3})
    pipes.log.info("still heard after the garbled line")
"""


def test_torn_and_garbled_message_lines_lose_nothing_else(project_env):
    seen = {}

    @asset
    def child(context: AssetExecutionContext) -> MaterializeResult:
        returncode, invocation = run_pipes_process(context, [sys.executable, "-c", CHILD], {})
        seen.update(returncode=returncode, messages=list(invocation.get_custom_messages()))
        return MaterializeResult()

    instance = DagsterInstance.get()
    result = materialize([child], instance=instance)
    assert result.success and seen == {"returncode": 0, "messages": [{"n": 1}, {"n": 2}, {"n": 3}]}
    logs = [e.message for e in instance.all_logs(result.run_id) if e.message]
    assert any("still heard after the garbled line" in m for m in logs)
    assert any("skipped a garbled message line" in m for m in logs)
    framework_errors = [e for e in instance.all_logs(result.run_id, of_type=DagsterEventType.ENGINE_EVENT)
                        if "framework exception" in (e.message or "")]
    assert not framework_errors
