"""Shared set-up of the UI tests: an instance where the demo data is materialized, and `make ui` on a free port."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import psutil
import pytest
from dagster import AssetKey, DagsterInstance

from llm_assets_tests.helpers import land_demo_drops, write_recipe

PROJECT = Path(__file__).resolve().parent.parent


def ui_env(root: Path) -> dict[str, str]:
    """The environment `make ui` gets: a DAGSTER_HOME, data directory, recipes and worker cache under ``root``."""
    return {"DAGSTER_HOME": str(root / "dagster_home"), "LLM_ASSETS_DATA_DIR": str(root / "data"),
            "LLM_ASSETS_RECIPES_DIR": str(root / "recipes"), "LLM_ASSETS_CACHE": str(root / "worker_cache"),
            "LLM_ASSETS_TRAINING_RETRIES": "0"}


@contextmanager
def in_ui_env(root: Path) -> Iterator[None]:
    """This process in the environment of ``ui_env`` (the instance, landing zone and store `make ui` will use)."""
    with pytest.MonkeyPatch.context() as mp:
        for var, value in ui_env(root).items():
            mp.setenv(var, value)
        for var in ("LLM_ASSETS_LANDING", "LLM_ASSETS_STORE"):
            mp.delenv(var, raising=False)
        yield


def materialize_demo(root: Path, models: list[str], scale: float = 0.1, **recipe_changes) -> None:
    """Land the demo drops (``scale``), validate every drop and materialize ``models`` of recipe 'tiny' (the micro
    recipe, ``automation: manual`` so the daemon starts nothing by itself), in this process and the env of ``ui_env``."""
    from llm_assets.definitions import build_definitions

    home = root / "dagster_home"
    home.mkdir(parents=True)
    shutil.copy(PROJECT / "configs" / "dagster.yaml", home / "dagster.yaml")
    write_recipe(root / "recipes", automation="manual", **recipe_changes)
    instance, defs = DagsterInstance.get(), build_definitions()
    land_demo_drops(root / "data" / "landing", defs, instance, scale=scale)
    if models:
        job = defs.resolve_job_def("full_pipeline_job").get_subset(asset_selection={AssetKey(m) for m in models})
        assert job.execute_in_process(partition_key="tiny", instance=instance).success


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_make_ui(root: Path, port: int, log: Path) -> subprocess.Popen:
    """`make ui` as a user runs it (the venv is taken as set up: ``-o`` keeps make from reinstalling it)."""
    return subprocess.Popen(["make", "-s", "-o", ".venv/.installed", "ui", f"UI_PORT={port}"], cwd=PROJECT,
                            env={**os.environ, **ui_env(root)}, stdout=log.open("w"), stderr=subprocess.STDOUT)


def wait_for_webserver(port: int, process: subprocess.Popen, log: Path, timeout: float = 180) -> None:
    """Until the webserver answers /server_info."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"make ui exited ({process.returncode}) before its webserver answered:\n{log.read_text()[-3000:]}")
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/server_info", timeout=2).read()
            return
        except OSError:
            time.sleep(1)
    raise AssertionError(f"the webserver did not answer on port {port} within {timeout:.0f} s:\n{log.read_text()[-3000:]}")


def launch_run(port: int, assets: list[str], partition: str = "tiny", timeout: float = 120) -> str:
    """Launch a run of ``assets`` through the webserver's GraphQL API, once the code location has loaded."""
    from dagster_graphql import DagsterGraphQLClient, DagsterGraphQLClientError

    client = DagsterGraphQLClient("127.0.0.1", port_number=port)
    deadline = time.time() + timeout
    while True:
        try:
            return client.submit_job_execution("full_pipeline_job", asset_selection=[AssetKey(a) for a in assets],
                                               tags={"dagster/partition": partition})
        except DagsterGraphQLClientError:
            if time.time() > deadline:
                raise
            time.sleep(2)


def process_tree(process: subprocess.Popen) -> list[psutil.Process]:
    """The process and everything it started that is still running (zombies are gone already)."""
    try:
        root = psutil.Process(process.pid)
        procs = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return []
    return [p for p in procs if alive(p)]


def alive(proc: psutil.Process) -> bool:
    try:
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def describe(procs: list[psutil.Process]) -> str:
    lines = []
    for p in procs:
        try:
            lines.append(f"{p.pid} {' '.join(p.cmdline())[:160]}")
        except psutil.NoSuchProcess:
            pass
    return "\n".join(lines)


def stop_all(procs: list[psutil.Process]) -> None:
    """What a failed test leaves must not keep running on a shared machine."""
    for p in procs:
        try:
            p.kill()
        except psutil.NoSuchProcess:
            pass
