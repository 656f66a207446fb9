"""Training curves and samples of every stage: evaluated during training on held-out rows without changing what is
learned, drawn into one PNG per stage, and shown rounded, as tables and as an image in the Dagster metadata."""

import io
from pathlib import Path

import pytest
from matplotlib.image import imread

from llm_assets.assets.model_metadata import metadata_of
from llm_assets.recipes import parse_recipe
from llm_assets.training.curves import panels_of, render
from llm_assets.training.report import Reporter
from llm_assets.training.spec import StageSpec
from llm_assets.training.worker import run_stage
from llm_assets_tests.helpers import demo_datasets, write_recipe


def spec_for(tmp: Path, stage: str, recipe: dict, datasets, inputs: dict, name: str | None = None) -> StageSpec:
    name = name or stage
    return StageSpec(stage=stage, recipe=recipe, output_dir=str(tmp / name), inputs=inputs, datasets=datasets,
                     checkpoint_dir=str(tmp / f"ckpt-{name}"), options={"eval_limit": 16})


@pytest.fixture(scope="module")
def chain(tmp_path_factory):
    """Every stage of the micro recipe, in process: base -> cpt -> sft -> reward -> rlhf (RLOO) -> quantize."""
    tmp = tmp_path_factory.mktemp("curves")
    datasets = demo_datasets(tmp / "data")
    recipe = parse_recipe(write_recipe(tmp / "recipes")).model_dump(mode="json")
    metrics = {}
    for stage, inputs in (("base", {}), ("cpt", {"model": "base"}), ("sft", {"model": "cpt"}), ("reward", {"model": "sft"}),
                          ("rlhf", {"model": "sft", "reward": "reward"}), ("quantize", {"model": "rlhf"})):
        spec = spec_for(tmp, stage, recipe, datasets, {role: str(tmp / s) for role, s in inputs.items()})
        metrics[stage] = run_stage(stage, spec, Reporter())
    return tmp, datasets, metrics


def held_out_steps(history):
    return [int(h["step"]) for h in history if "eval_loss" in h]


def test_every_trained_stage_is_evaluated_during_training_and_draws_its_curves(chain):
    _, _, m = chain
    # at step 0 and EVAL_POINTS times after (every ceil(max_steps / 4) steps), not only at the end
    assert held_out_steps(m["cpt"]["log_history"]) == [0, 1, 2, 3, 4]
    assert held_out_steps(m["sft"]["log_history"]) == [0, 2, 4, 6]
    assert held_out_steps(m["reward"]["log_history"]) == [0, 1, 2, 3, 4]
    # the curve starts at the parent and ends at the trained model, as the stage measures them afterwards
    sft_curve = [h["eval_loss"] for h in m["sft"]["log_history"] if "eval_loss" in h]
    assert sft_curve[0] == pytest.approx(m["sft"]["parent_eval_loss"], rel=1e-2)
    assert sft_curve[-1] == pytest.approx(m["sft"]["eval_loss"], rel=1e-2) and sft_curve[-1] < sft_curve[0]
    panels = {stage: {title: [label for label, _, _ in lines] for title, lines in panels_of(m[stage]["log_history"])}
              for stage in ("cpt", "sft", "reward", "rlhf")}
    for stage in ("cpt", "sft"):
        assert panels[stage] == {"loss": ["train", "held-out"], "learning rate": [""], "grad norm": [""], "tokens/s": [""]}
    assert panels["reward"]["accuracy"] == ["train", "held-out"] and panels["reward"]["loss"] == ["train", "held-out"]
    assert "tokens/s" in panels["reward"]  # the reward trainer's own token count, where the Trainer counts none
    assert panels["rlhf"]["reward"] == ["train (sampled)"] and panels["rlhf"]["KL to reference"] == ["train"]
    for stage in ("cpt", "sft", "reward", "rlhf"):
        png = render(m[stage]["log_history"], stage)
        image = imread(io.BytesIO(png))
        rows = 2 if len(panels[stage]) > 3 else 1
        assert image.shape[0] == 224 * rows and image.shape[1] == 320 * min(len(panels[stage]), 3), stage  # 4.0 x 2.8 in at 80 dpi
        assert png == render(m[stage]["log_history"], stage)  # same history, same bytes
    assert render([], "base") is None  # a stage that trained nothing has no curves


def test_dpo_is_evaluated_on_held_out_pairs_during_training(chain, tmp_path):
    root, datasets, _ = chain
    recipe = parse_recipe(write_recipe(tmp_path / "recipes", rlhf={"algorithm": "dpo", "max_steps": 4})).model_dump(mode="json")
    inputs = {"model": str(root / "sft"), "reward": str(root / "reward")}
    m = run_stage("rlhf", spec_for(tmp_path, "rlhf", recipe, datasets, inputs), Reporter())
    assert held_out_steps(m["log_history"]) == [0, 1, 2, 3, 4]
    panels = {title: [label for label, _, _ in lines] for title, lines in panels_of(m["log_history"])}
    assert panels["loss"] == ["train", "held-out"] and panels["accuracy"] == ["train", "held-out"]
    assert panels["reward"] == ["chosen (train)", "rejected (train)", "chosen (held-out)", "rejected (held-out)"]


def test_evaluating_during_training_changes_nothing_the_model_learns(chain, tmp_path, monkeypatch):
    """Evaluation draws from the global RNGs (a DataLoader seed) that LoRA dropout reads next: they are restored."""
    import llm_assets.training.sft as sft

    root, datasets, _ = chain
    recipe = parse_recipe(write_recipe(tmp_path / "recipes", sft={"method": "lora"}, lora={"dropout": 0.1})).model_dump(mode="json")
    with_eval = run_stage("sft", spec_for(tmp_path, "sft", recipe, datasets, {"model": str(root / "cpt")}, "with"), Reporter())
    monkeypatch.setattr(sft, "held_out_tokens", lambda *a, **k: None)
    without = run_stage("sft", spec_for(tmp_path, "sft", recipe, datasets, {"model": str(root / "cpt")}, "without"), Reporter())
    assert held_out_steps(with_eval["log_history"]) and not held_out_steps(without["log_history"])
    losses = [[h["loss"] for h in m["log_history"] if "loss" in h] for m in (with_eval, without)]
    assert losses[0] == losses[1] and with_eval["eval_loss"] == without["eval_loss"]
    assert (tmp_path / "with" / "adapter_model.safetensors").read_bytes() == (tmp_path / "without" / "adapter_model.safetensors").read_bytes()


def test_samples_of_every_stage(chain):
    _, _, m = chain
    reward = m["reward"]["samples"]
    assert len(reward) == 5 and all(s["prefers_chosen"] == (s["chosen_score"] > s["rejected_score"]) for s in reward)
    assert sum(s["prefers_chosen"] for s in reward) >= 3  # the trained reward model mostly prefers the chosen reply
    rlhf = m["rlhf"]["samples"]
    assert len(rlhf) == 5 and all(isinstance(s["sft_reward"], float) and isinstance(s["policy_reward"], float) for s in rlhf)
    assert all(isinstance(s["sft_reply"], str) and isinstance(s["policy_reply"], str) for s in rlhf)
    quantized = m["quantize"]["samples"]
    assert len(quantized) == 5 and set(quantized[0]) == {"prompt", "expected", "unquantized", "quantized"}
    assert all(isinstance(s["quantized"], str) and isinstance(s["unquantized"], str) for s in quantized)


def test_metadata_shows_figures_rounded_samples_as_tables_and_tracker_runs_as_links():
    metrics = {"eval_loss": 0.30624099478385375, "exact_match": 0.5909090909, "reward_accuracy": 0.935, "steps": 6,
               "method": "full", "perplexity": 1357.4242, "log_history": [{"step": 1, "loss": 1.0}],
               "samples": [{"prompt": "p", "chosen_score": 1.234567, "prefers_chosen": True, "n": 3}],
               "tracking": {"mlflow_run": "http://127.0.0.1:5000/#/experiments/1/runs/abc", "mlflow_run_id": "abc",
                            "tensorboard_logdir": "/mnt/tb"}, "hardware": {"device": "cpu"}}
    meta = metadata_of(metrics)
    assert meta["eval_loss"].value == 0.3062 and meta["perplexity"].value == 1357.0
    assert meta["exact_match_pct"].value == 59.1 and meta["reward_accuracy_pct"].value == 93.5 and "exact_match" not in meta
    assert meta["steps"] == 6 and meta["method"] == "full" and "log_history" not in meta
    table = meta["samples"]
    assert [(c.name, c.type) for c in table.schema.columns] == [("prompt", "string"), ("chosen_score", "float"),
                                                                 ("prefers_chosen", "bool"), ("n", "int")]
    assert table.records[0].data == {"prompt": "p", "chosen_score": 1.235, "prefers_chosen": True, "n": 3}
    assert meta["mlflow_run"].url == "http://127.0.0.1:5000/#/experiments/1/runs/abc" and "mlflow_run_id" not in meta
    assert meta["tensorboard_logdir"].text == "/mnt/tb" and meta["hardware"].data == {"device": "cpu"}


@pytest.mark.slow
def test_the_curves_show_as_an_image_in_the_dagster_ui(tmp_path):
    """Playwright drives Chromium against `make ui`: the trained model's curves open from its metadata as an image."""
    import signal

    from playwright.sync_api import expect, sync_playwright

    from llm_assets_tests.test_ui_browser import chromium_path
    from llm_assets_tests.ui_server import free_port, materialize_demo, process_tree, start_make_ui, stop_all, ui_env, wait_for_webserver

    browser_path = chromium_path()
    with pytest.MonkeyPatch.context() as mp:
        for var, value in ui_env(tmp_path).items():
            mp.setenv(var, value)
        for var in ("LLM_ASSETS_LANDING", "LLM_ASSETS_STORE"):
            mp.delenv(var, raising=False)
        materialize_demo(tmp_path, ["base_model", "cpt_model"])
        port, log = free_port(), tmp_path / "ui.log"
        make = start_make_ui(tmp_path, port, log)
        try:
            wait_for_webserver(port, make, log)
            with sync_playwright() as playwright:
                browser = playwright.chromium.launch(executable_path=browser_path, args=["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"])
                page = browser.new_page(viewport={"width": 1600, "height": 1000})
                page.set_default_timeout(60_000)
                page.add_locator_handler(page.get_by_role("dialog").filter(has_text="Join the Dagster community"),
                                         lambda dialog: dialog.get_by_role("button", name="Skip").click())
                try:
                    page.goto(f"http://127.0.0.1:{port}/assets/cpt_model?view=partitions&partition=tiny")
                    row = page.locator("tr", has=page.get_by_text("curves", exact=True))
                    row.get_by_text("[Show Markdown]").click()  # over 1,000 characters, the UI opens it in a dialog
                    image = page.get_by_role("dialog").get_by_role("img", name="training curves")
                    expect(image).to_be_visible()
                    width = image.evaluate("img => img.complete ? img.naturalWidth : 0")
                    assert width == 960, width  # 3 panels of 4.0 in at 80 dpi, decoded by the browser
                except BaseException:
                    shot = tmp_path / "curves_failure.png"
                    page.screenshot(path=str(shot), full_page=True)
                    print(f"screenshot of the page at the failure: {shot}")
                    raise
                finally:
                    browser.close()
        finally:
            procs = process_tree(make)
            make.send_signal(signal.SIGTERM)
            try:
                make.wait(30)
            finally:
                stop_all(procs)
