"""`make ui` stops everything it started: SIGTERM to make, or to the supervisor's PID as a service manager sends it,
leaves no webserver, daemon, code server, run worker or training child behind within 15 s, and the run that was
training is marked failed rather than left STARTED (plain `dagster dev` left all but its webserver and daemon running).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest
from dagster import DagsterInstance, DagsterRunStatus

from llm_assets_tests.ui_server import (PROJECT, alive, describe, free_port, in_ui_env, launch_run, materialize_demo,
                                        process_tree, start_make_ui, stop_all, ui_env, wait_for_webserver)

STOP_SECONDS = 15
TRAINING = "llm_assets.training"


@pytest.fixture(scope="module")
def ui_root(tmp_path_factory):
    """The demo data materialized, so that a run of recipe 'tiny's base model starts a training child."""
    root = tmp_path_factory.mktemp("ui_shutdown")
    with in_ui_env(root):
        materialize_demo(root, [])
        yield root


def wait_for(what: str, predicate, timeout: float, log):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if value := predicate():
            return value
        time.sleep(0.5)
    raise AssertionError(f"{what}: not within {timeout:.0f} s\n{log.read_text()[-3000:]}")


def run_status(root, run_id: str) -> DagsterRunStatus:
    with in_ui_env(root), DagsterInstance.get() as instance:
        return instance.get_run_by_id(run_id).status


def stop_and_check(process: subprocess.Popen, log) -> float:
    """SIGTERM to ``process``; every process of its tree as it was just before must be gone within STOP_SECONDS."""
    before = process_tree(process)
    t0 = time.time()
    process.send_signal(signal.SIGTERM)
    try:
        while (left := [p for p in before if alive(p)]) and time.time() - t0 < STOP_SECONDS + 5:
            time.sleep(0.2)
        elapsed = time.time() - t0
        assert not left, f"still running {elapsed:.0f} s after SIGTERM:\n{describe(left)}\n{log.read_text()[-3000:]}"
        assert elapsed < STOP_SECONDS, f"stopping took {elapsed:.1f} s"
        print(f"{len(before)} processes stopped {elapsed:.1f} s after SIGTERM")
        return elapsed
    finally:
        stop_all([p for p in before if alive(p)])


@pytest.mark.slow
def test_sigterm_to_make_ui_stops_every_process_and_fails_the_training_run(ui_root, tmp_path):
    port, log = free_port(), tmp_path / "ui.log"
    make = start_make_ui(ui_root, port, log)
    try:
        wait_for_webserver(port, make, log)
        run_id = launch_run(port, ["base_model"])
        wait_for("the base stage's training child", lambda: any(TRAINING in " ".join(p.cmdline()) for p in process_tree(make)), 240, log)
        kinds = describe(process_tree(make))
        for part in ("dagster_webserver", "dagster._daemon", "code-server", "multiprocessing", TRAINING):
            assert part in kinds, f"expected a {part} process under make ui:\n{kinds}"
        stop_and_check(make, log)
        assert make.wait(5) != 0
    finally:
        stop_all(process_tree(make))
    assert run_status(ui_root, run_id) == DagsterRunStatus.FAILURE


@pytest.mark.slow
def test_a_run_whose_worker_had_to_be_killed_is_marked_failed(ui_root, tmp_path):
    """--grace 0 kills at once, as after a grace period: no run worker can mark its own run, the supervisor does."""
    port, log = free_port(), tmp_path / "ui.log"
    ui = subprocess.Popen([sys.executable, "-m", "llm_assets.ui", "--grace", "0", "-h", "127.0.0.1", "-p", str(port),
                           "-w", str(PROJECT / "workspace.yaml")], cwd=PROJECT, env={**os.environ, **ui_env(ui_root)},
                          stdout=log.open("w"), stderr=subprocess.STDOUT)
    try:
        wait_for_webserver(port, ui, log)
        run_id = launch_run(port, ["base_model"])
        wait_for("the run to start", lambda: run_status(ui_root, run_id) == DagsterRunStatus.STARTED, 240, log)
        stop_and_check(ui, log)
        assert ui.wait(20) is not None
    finally:
        stop_all(process_tree(ui))
    assert run_status(ui_root, run_id) == DagsterRunStatus.FAILURE
    assert f"marked run {run_id} failed (its run worker was killed)" in log.read_text()

