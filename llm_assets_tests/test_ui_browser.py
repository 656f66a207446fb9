"""The Dagster UI as a user sees it: Playwright drives Debian's Chromium against `make ui` on a free port.

From the asset graph, Materialize one ``sft_dataset`` partition through the launch dialog, follow the run to
success, and find the dataset's reject-reasons table on the partition's page, written by that run. Chromium is
launched by path (Playwright cannot download its own browser here): ``LLM_ASSETS_CHROMIUM``, else ``chromium`` on
PATH (``apt-get install chromium``). A failure leaves a screenshot under the test's tmp dir and prints its path.
"""

from __future__ import annotations

import os
import re
import shutil
import signal

import pytest
from playwright.sync_api import expect, sync_playwright

from llm_assets_tests.ui_server import (free_port, in_ui_env, materialize_demo, process_tree, start_make_ui, stop_all,
                                        wait_for_webserver)

PARTITION = "demo_word_tasks.jsonl"  # the demo SFT drop with malformed and empty rows: its reject-reasons table has rows
RUN_SECONDS = 180  # launch to success of one data run, on a busy 2-core machine


def chromium_path() -> str:
    path = os.environ.get("LLM_ASSETS_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
    if not path:
        pytest.skip("Chromium is not installed: apt-get install chromium (or set LLM_ASSETS_CHROMIUM to a Chromium or "
                    "Chrome binary); Playwright cannot download its own browser here")
    return path


@pytest.fixture
def ui(tmp_path):
    """`make ui` on a free port over a fresh instance where the demo drops are landed and every data asset materialized."""
    browser = chromium_path()
    with in_ui_env(tmp_path):
        materialize_demo(tmp_path, [])
        port, log = free_port(), tmp_path / "ui.log"
        make = start_make_ui(tmp_path, port, log)
        try:
            wait_for_webserver(port, make, log)
            yield f"http://127.0.0.1:{port}", browser
        finally:
            procs = process_tree(make)
            make.send_signal(signal.SIGTERM)
            try:
                make.wait(30)
            finally:
                stop_all(procs)


@pytest.mark.slow
def test_materialize_a_dataset_partition_from_the_asset_graph(ui, tmp_path):
    url, browser_path = ui
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=browser_path,
                                             args=["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"])
        page = browser.new_page(viewport={"width": 1600, "height": 1000})
        page.set_default_timeout(60_000)
        # a fresh instance greets its first visitor with a newsletter sign-up; dismissed whenever it shows
        page.add_locator_handler(page.get_by_role("dialog").filter(has_text="Join the Dagster community"),
                                 lambda dialog: dialog.get_by_role("button", name="Skip").click())
        try:
            page.goto(f"{url}/asset-groups")
            page.get_by_placeholder("Jump to…").fill("sft_dataset")
            page.keyboard.press("Enter")
            page.get_by_role("button", name="Materialize selected…").click()
            dialog = page.get_by_role("dialog").filter(has_text="Launch runs to materialize sft_dataset")
            dialog.get_by_text("Select a partition or create one").click()
            page.get_by_text(PARTITION, exact=True).filter(visible=True).click()
            page.keyboard.press("Escape")  # closes the partition list, not the dialog
            dialog.get_by_role("button", name="Launch 1 run").click()

            page.get_by_role("link", name="View", exact=True).click()  # the toast that says "Launched run ..."
            page.wait_for_url(re.compile(r"/runs/[0-9a-f-]{36}"))
            run_id = re.search(r"/runs/([0-9a-f-]{36})", page.url).group(1)
            status = page.get_by_text(re.compile(r"^(Success|Failure|Canceled)$")).first
            expect(status).to_be_visible(timeout=RUN_SECONDS * 1000)
            assert status.inner_text() == "Success", f"run {run_id} ended {status.inner_text()}"

            page.goto(f"{url}/assets/sft_dataset?view=partitions&partition={PARTITION}")
            expect(page.get_by_role("link", name=run_id[:8])).to_be_visible()  # the latest materialization is this run's
            reasons = page.locator("tr", has=page.get_by_text("reject_reasons", exact=True)).locator("table")
            expect(reasons).to_be_visible()
            expect(reasons.locator("th")).to_have_text(["reason", "field", "rows", "example"])
            expect(reasons).to_contain_text("malformed_json")
            expect(reasons).to_contain_text("empty_text")
        except BaseException:
            shot = tmp_path / "ui_failure.png"
            page.screenshot(path=str(shot), full_page=True)
            print(f"screenshot of the page at the failure: {shot}")
            raise
        finally:
            browser.close()
