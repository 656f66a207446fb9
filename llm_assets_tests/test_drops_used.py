"""A model's metadata says which drops it trained on (``drops_used``), which it only measured on, and which
models it started from, each under its own key."""

from __future__ import annotations

from pathlib import Path

from llm_assets.artifacts import Store
from llm_assets.assets.models import model_key, stored_result
from llm_assets.objects import LocalObjects
from llm_assets.recipes import parse_recipe
from llm_assets.stages import STAGES
from llm_assets_tests.helpers import write_recipe

PROJECT = Path(__file__).resolve().parent.parent


def test_each_stage_trains_on_the_kinds_it_fits_and_only_measures_on_the_rest(tmp_path):
    builtin = parse_recipe(write_recipe(tmp_path, "micro"))
    hub = parse_recipe(PROJECT / "configs" / "recipes" / "qwen25-05b-zero3.yaml")
    trains = {s.name: s.trains_on(builtin) for s in STAGES.values()}
    assert trains == {"base": ("pretraining", "sft", "preference"),  # its tokenizer is trained on every corpus
                      "cpt": ("pretraining",), "sft": ("sft",), "reward": ("preference",), "rlhf": ("preference",),
                      "quantize": ()}
    assert STAGES["base"].trains_on(hub) == () and STAGES["base"].data_kinds(hub)  # a hub base is measured, not trained
    for stage in STAGES.values():
        assert set(stage.trains_on(builtin)) <= set(stage.data_kinds(builtin))


def test_stored_metadata_keeps_drops_measured_drops_and_parent_versions_apart(tmp_path):
    st = Store(LocalObjects(tmp_path / "store"))
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "weights.bin").write_bytes(b"rlhf")
    key = model_key("rlhf", "micro")
    version = st.commit(key, tmp_path / "model").version
    record = {"version": version, "fingerprint": "f", "inputs": {"data/preference": "d1", "data/sft": "d2", "model": "sftv",
                                                                  "reward": "rewv"},
              "drops_used": {"preference/r1": "v1"}, "drops_measured": {"sft/s1": "v2"}, "drops_left_out": {}, "metrics": {}}
    meta = stored_result(st, key, record).metadata
    assert meta["drops_used"].value == {"preference/r1": "v1"}
    assert meta["drops_measured"].value == {"sft/s1": "v2"}
    assert meta["parent_versions"].value == {"model": "sftv", "reward": "rewv"}
