"""landing_sensor with Dagster's sensor testing API: exactly once, settling, re-lands, changes, bulk."""

import hashlib
import logging
import os
import time

import pytest
from dagster import DagsterInstance, build_sensor_context, materialize

from llm_assets.assets.data import data_assets
from llm_assets.resources import default_resources
from llm_assets.sensors import landing_sensor


SETTLE = 5  # seconds


@pytest.fixture
def landing(project_env, monkeypatch):
    monkeypatch.setenv("LLM_ASSETS_SETTLE_SECONDS", str(SETTLE))
    root = project_env / "data" / "landing"
    (root / "sft").mkdir(parents=True)
    return root


def put(root, name, text, age=60.0, kind="sft"):
    """Land a file whose last write was ``age`` seconds ago."""
    path = root / kind / name
    path.write_text(text)
    t = time.time() - age
    os.utime(path, (t, t))
    return path


class Records(logging.Handler):
    """Keeps what the sensor logged, as the daemon's tick log would show it."""

    def __init__(self):
        super().__init__(logging.INFO)
        self.records: list[logging.LogRecord] = []

    def emit(self, record):
        self.records.append(record)

    def warnings(self) -> list[str]:
        return [r.getMessage() for r in self.records if r.levelno == logging.WARNING]


def tick(cursor=None, log: Records | None = None):
    """One evaluation; the instance is the test's DAGSTER_HOME, so partitions persist like a daemon's."""
    instance = DagsterInstance.get()
    with build_sensor_context(instance=instance, cursor=cursor, resources={"landing": default_resources()["landing"]}) as ctx:
        if log is not None:
            ctx.log.addHandler(log)
        result = landing_sensor(ctx)
    for req in result.dynamic_partitions_requests:
        instance.add_dynamic_partitions(req.partitions_def_name, list(req.partition_keys))
    return result


ROW = '{"prompt": "p", "completion": "c"}\n'


def test_nothing_landed_requests_nothing(landing):
    result = tick()
    assert result.run_requests == [] and result.dynamic_partitions_requests == []


def test_a_new_file_becomes_one_drop_exactly_once_across_restarts(landing):
    put(landing, "a.jsonl", ROW)
    first = tick()
    assert [(r.partition_key, r.job_name) for r in first.run_requests] == [("a.jsonl", "sft_data_prep_job")]
    assert first.run_requests[0].tags["llm_assets/sha256"]
    assert tick(first.cursor).run_requests == []  # the next tick
    assert tick(first.cursor).run_requests == []  # a restarted daemon: a new context with the stored cursor
    assert DagsterInstance.get().get_dynamic_partitions("sft_drops") == ["a.jsonl"]


def test_a_file_still_being_written_waits_until_it_settles(landing):
    path = put(landing, "big.jsonl", ROW, age=0.0)
    pending = tick()
    assert pending.run_requests == []
    t = time.time() - 60
    os.utime(path, (t, t))
    assert [r.partition_key for r in tick(pending.cursor).run_requests] == ["big.jsonl"]


def test_same_content_relanded_is_not_a_new_drop(landing):
    put(landing, "a.jsonl", ROW)
    first = tick()
    put(landing, "a.jsonl", ROW, age=30)  # copied again: new mtime, same bytes
    put(landing, "a_copy.jsonl", ROW)  # or under another name
    again = tick(first.cursor)
    assert again.run_requests == []


def test_changed_content_under_the_same_name_is_a_new_drop(landing, project_env):
    put(landing, "a.jsonl", ROW)
    first = tick()
    put(landing, "a.jsonl", ROW + '{"prompt": "q", "completion": "d"}\n', age=30)
    second = tick(first.cursor)
    (req,) = second.run_requests
    assert req.partition_key.startswith("a.jsonl@") and len(req.partition_key) == len("a.jsonl@") + 8
    # the new drop snapshots the new content; the old drop's content can no longer be re-snapshotted
    selection = [a for a in data_assets if a.key.path[-1] in ("raw_sft_corpus", "sft_dataset")]
    ok = materialize(selection, partition_key=req.partition_key, instance=DagsterInstance.get(), resources=default_resources(),
                     tags=req.tags)
    assert ok.success
    old = materialize(selection, partition_key="a.jsonl", instance=DagsterInstance.get(), resources=default_resources(),
                      tags=first.run_requests[0].tags, raise_on_error=False)
    assert not old.success
    failure = next(e for e in old.all_events if e.event_type_value == "STEP_FAILURE")
    assert "changed after the drop was created" in failure.step_failure_data.error.message


def test_a_hundred_files_at_once(landing):
    for i in range(100):
        put(landing, f"f{i:03d}.jsonl", f'{{"prompt": "p{i}", "completion": "c"}}\n')
    first = tick()
    keys = [r.partition_key for r in first.run_requests]
    assert len(keys) == 100 == len(set(keys))
    assert len(DagsterInstance.get().get_dynamic_partitions("sft_drops")) == 100
    assert tick(first.cursor).run_requests == []


def test_a_file_overwritten_while_it_settles_becomes_a_drop_of_its_new_content(landing):
    put(landing, "a.jsonl", ROW)
    first = tick()
    newer = ROW + '{"prompt": "q", "completion": "d"}\n'
    put(landing, "a.jsonl", newer, age=SETTLE - 1)  # overwritten: seen while it settles
    pending = tick(first.cursor)
    assert pending.run_requests == []
    time.sleep(1.5)  # then left alone: it settles with the signature the pending tick saw
    (req,) = tick(pending.cursor).run_requests
    sha = hashlib.sha256(newer.encode()).hexdigest()
    assert req.partition_key == f"a.jsonl@{sha[:8]}" and req.tags["llm_assets/sha256"] == sha


def test_a_new_file_overwritten_before_it_settles_is_one_drop_of_its_last_content(landing):
    put(landing, "b.jsonl", ROW, age=0.0)
    pending = tick()
    newer = '{"prompt": "other", "completion": "content"}\n'
    put(landing, "b.jsonl", newer, age=SETTLE - 1)
    pending = tick(pending.cursor)
    assert pending.run_requests == []
    time.sleep(1.5)
    (req,) = tick(pending.cursor).run_requests
    assert req.partition_key == "b.jsonl" and req.tags["llm_assets/sha256"] == hashlib.sha256(newer.encode()).hexdigest()


def test_a_refused_name_warns_once_with_control_characters_escaped(landing):
    put(landing, "bad\x1bname.jsonl", ROW)
    put(landing, "notes.txt", "hello")
    first_log, second_log = Records(), Records()
    first = tick(log=first_log)
    assert len(first_log.warnings()) == 2
    escaped = next(w for w in first_log.warnings() if "control character" in w)
    assert "\x1b" not in escaped and "'bad\\x1bname.jsonl'" in escaped  # printed as repr, not as a raw escape
    assert any("'notes.txt': unsupported file type" in w for w in first_log.warnings())
    again = tick(first.cursor, log=second_log)
    assert second_log.warnings() == [] and again.run_requests == []
    (landing / "sft" / "notes.txt").unlink()  # gone, then landed again: warned about again
    gone = tick(again.cursor)
    third_log = Records()
    put(landing, "notes.txt", "hello")
    tick(gone.cursor, log=third_log)
    assert [w for w in third_log.warnings() if "notes.txt" in w]


def test_a_250_byte_name_becomes_a_drop_and_says_where_its_sidecar_goes(landing):
    name = "a" * 244 + ".jsonl"
    put(landing, name, ROW)
    log = Records()
    first = tick(log=log)
    (req,) = first.run_requests
    assert req.partition_key != name and len(req.partition_key) < 200
    assert any(f"{req.partition_key}.mapping.yaml" in r.getMessage() for r in log.records)
    assert tick(first.cursor).run_requests == []
