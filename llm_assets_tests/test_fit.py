"""Rows a recipe cannot train on (issue 10 item 9): SFT truncation modes, preference pairs whose
replies stay whole, ties that count as ties, and the fit report the base model shows before training."""

from __future__ import annotations

import inspect
import math
import pytest
from trl import DPOTrainer

from llm_assets.data.io import write_dataset
from llm_assets.data.pipeline import validate_drop
from llm_assets.recipes import parse_recipe
from llm_assets.training.builtin import build_model, render_chat, train_tokenizer
from llm_assets.training.data import load_rows
from llm_assets.training.evaluate import pairwise_accuracy
from llm_assets.training.fit import fit_report
from llm_assets.training.models import load_reward_model
from llm_assets.training.rlhf import PretokenizedDPOTrainer
from llm_assets.training.tokens import (
    FIT,
    LEFT_OUT,
    TRUNCATED,
    full_text,
    preference_tokens,
    read_tokens,
    sft_tokens,
    split_encode,
    write_tokens,
)
from llm_assets_tests.helpers import demo_datasets, write_recipe


def chat_texts(rows: list[dict]) -> list[str]:
    texts = []
    for r in rows:
        replies = [r["completion"]] if "completion" in r else [r["chosen"], r["rejected"]]
        texts += [render_chat(r["prompt"] + [{"role": "assistant", "content": reply}]) for reply in replies]
    return texts


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    """The demo drops as validated datasets and a tokenizer trained on them, as builtin:tiny trains its own."""
    tmp = tmp_path_factory.mktemp("fit")
    datasets = demo_datasets(tmp)
    texts = chat_texts(load_rows(datasets["sft"]) + load_rows(datasets["preference"]))
    texts += [r["text"] for r in load_rows(datasets["pretraining"])]
    return tmp, datasets, train_tokenizer(texts, 512)


def sft_rows(datasets):
    return load_rows(datasets["sft"], "train")


@pytest.mark.parametrize("truncation", ["drop", "left"])
def test_sft_never_cuts_a_reply(demo, truncation):
    """max_length 16 is below the demo's median SFT example (17 tokens). Before, an over-long example
    was cut on the right and trained on a partial reply; now every kept example holds its whole reply."""
    _, datasets, tok = demo
    rows = sft_rows(datasets)
    table, counts = sft_tokens(rows, tok, "tokenizer", 16, truncation)
    whole = split_encode(tok, [r["prompt"] for r in rows], [r["completion"] for r in rows], "tokenizer")
    replies = {tuple(reply) for _, reply in whole}
    assert counts[FIT] + counts[TRUNCATED] + counts[LEFT_OUT] == len(rows)
    assert table.num_rows == counts[FIT] + counts[TRUNCATED]
    for ids, mask in zip(table.column("input_ids").to_pylist(), table.column("completion_mask").to_pylist()):
        assert len(ids) <= 16
        reply = tuple(i for i, m in zip(ids, mask) if m)
        assert reply in replies and ids[-len(reply):] == list(reply)  # the whole reply, at the end
    if truncation == "drop":
        assert counts[TRUNCATED] == 0 and counts[LEFT_OUT] == sum(len(p) + len(r) > 16 for p, r in whole) > 0
    else:  # every example whose reply leaves room for a prompt token is kept, with its prompt's last tokens
        assert counts[LEFT_OUT] == sum(len(reply) >= 16 for _, reply in whole)
        assert counts[TRUNCATED] == sum(len(p) + len(r) > 16 and len(r) < 16 for p, r in whole) > 0


def test_a_cached_table_is_used_only_under_the_truncation_it_was_made_with(demo, tmp_path):
    """A 'drop' table holds none of the rows 'left' would train on; the counts travel with the table."""
    _, datasets, tok = demo
    table, counts = sft_tokens(sft_rows(datasets), tok, "tokenizer", 16, "drop")
    write_tokens(table, tmp_path)
    assert read_tokens(tmp_path, "left") is None
    tokens, cached = read_tokens(tmp_path, "drop")
    assert cached == counts and len(tokens) == table.num_rows and tokens.column_names == ["input_ids", "completion_mask"]


def test_fit_report_counts_what_the_stages_train_on(demo):
    tmp, datasets, tok = demo
    for truncation in ("drop", "left"):
        recipe = parse_recipe(write_recipe(tmp / f"recipes-{truncation}", data={"max_length": 16, "truncation": truncation}))
        report = fit_report(tok, recipe, datasets)
        assert set(report) == {"sft", "preference", "pretraining"}
        _, counts = sft_tokens(sft_rows(datasets), tok, "tokenizer", 16, truncation)
        assert {k: report["sft"][k] for k in (FIT, TRUNCATED, LEFT_OUT)} == counts
        _, pair_counts = preference_tokens(load_rows(datasets["preference"], "train"), tok, "tokenizer", 16)
        assert {k: report["preference"][k] for k in pair_counts} == pair_counts  # pairs: always cut from the left
    rows = sft_rows(datasets)
    lengths = sorted(len(tok(full_text(tok, r["prompt"], r["completion"], "tokenizer"), add_special_tokens=False)["input_ids"])
                     for r in rows)
    assert report["sft"]["rows"] == len(rows) and report["sft"]["p50_tokens"] == lengths[math.ceil(0.5 * len(lengths)) - 1]
    assert report["sft"]["p95_tokens"] == lengths[math.ceil(0.95 * len(lengths)) - 1]
    docs = load_rows(datasets["pretraining"], "train")
    long_docs = sum(len(tok(d["text"] + tok.eos_token, add_special_tokens=False)["input_ids"]) > 16 for d in docs)
    assert report["pretraining"] == {**report["pretraining"], "rows": len(docs), "truncated": long_docs, "fit": len(docs) - long_docs,
                                     "left_out": 0}


def test_fit_report_skips_kinds_without_rows(demo):
    tmp, datasets, tok = demo
    recipe = parse_recipe(write_recipe(tmp / "recipes-sft-only"))
    assert set(fit_report(tok, recipe, {"sft": datasets["sft"], "preference": []})) == {"sft"}


@pytest.fixture(scope="module")
def hh(tmp_path_factory):
    """The shared HH-RLHF drop validated as the dataset asset does, and a tokenizer trained on its train split."""
    from llm_assets_tests.conftest import SHARED_DATA

    source = SHARED_DATA / "preference" / "hh_rlhf_harmless.jsonl"
    if not source.exists():
        pytest.skip(f"{source} is absent; the real public data sets are not on this machine")
    path = tmp_path_factory.mktemp("hh") / "hh.parquet"
    write_dataset(validate_drop("preference", source.name, source.read_bytes()).dataset, path, "preference")
    return [str(path)], train_tokenizer(chat_texts(load_rows([str(path)], "train")), 1024)


def test_hh_pairs_stay_apart_at_max_length_128(hh):
    """Cut on the right (TRL's way, and our evaluation's before), many held-out HH pairs became the
    same tokens: their final replies were cut away. Cut from the left, none is."""
    paths, tok = hh
    held_out = load_rows(paths, "eval")
    pairs, counts = preference_tokens(held_out, tok, "tokenizer", 128)
    used = [p for p in pairs if p["outcome"] in (FIT, TRUNCATED)]
    assert counts[TRUNCATED] > 0 and len(used) == counts[FIT] + counts[TRUNCATED]
    assert counts["indistinguishable"] == 0 and counts[LEFT_OUT] == len(held_out) - len(used)
    for p in pairs:  # left out only when a reply alone leaves no room for the prompt
        assert (p["outcome"] == LEFT_OUT) == (max(len(p["chosen_ids"]), len(p["rejected_ids"])) >= 128)
    for p in used:
        chosen, rejected = p["prompt_ids"] + p["chosen_ids"], p["prompt_ids"] + p["rejected_ids"]
        assert chosen != rejected and len(chosen) <= 128 and len(rejected) <= 128
    right_cut = [(c[:128], r[:128]) for c, r in zip(whole_sequences(tok, held_out, "chosen"), whole_sequences(tok, held_out, "rejected"))]
    print(f"held-out pairs {len(held_out)}: {counts}; identical when cut on the right: {sum(c == r for c, r in right_cut)}")
    assert sum(c == r for c, r in right_cut) > 0.3 * len(held_out)  # the old encoding on the same pairs


def whole_sequences(tok, rows, side):
    return [p + r for p, r in split_encode(tok, [x["prompt"] for x in rows], [x[side] for x in rows], "tokenizer")]


def test_a_tie_counts_half_and_identical_replies_are_counted(demo, tmp_path):
    """An untrained head on pairs it cannot tell apart is at chance, 0.5; a tie used to count as a loss (0.0)."""
    _, datasets, tok = demo
    recipe = parse_recipe(write_recipe(tmp_path / "recipes"))
    build_model(recipe.model.architecture, tok, 512, seed=0).save_pretrained(tmp_path / "model")
    rm = load_reward_model(tmp_path / "model")
    rm.config.pad_token_id = tok.pad_token_id
    rows = load_rows(datasets["preference"], "eval")[:8]
    same = [{**r, "rejected": r["chosen"]} for r in rows]
    out = pairwise_accuracy(rm, tok, same, "tokenizer", 64)
    assert out == {**out, "reward_accuracy": 0.5, "ties": 8, "tie_rate": 1.0, "pairs": 8, "indistinguishable_pairs": 8,
                   "decided_accuracy": 0.0}
    real = pairwise_accuracy(rm, tok, rows, "tokenizer", 64)
    assert real["indistinguishable_pairs"] == 0 and real["pairs"] == 8
    assert real["reward_accuracy"] == pytest.approx((real["decided_accuracy"] * (8 - real["ties"]) + real["ties"] / 2) / 8)


def test_dpo_trains_on_our_token_ids():
    """Our DPO data reaches the trainer through TRL's private ``_prepare_dataset``: this fails when TRL renames it
    or stops calling it from ``__init__`` (the replies would be cut on the right again)."""
    assert "_prepare_dataset" in vars(DPOTrainer) and "_prepare_dataset" in vars(PretokenizedDPOTrainer)
    assert "self._prepare_dataset(train_dataset" in inspect.getsource(DPOTrainer.__init__)
    assert list(inspect.signature(DPOTrainer._prepare_dataset).parameters) == ["self", "dataset", "processing_class", "args",
                                                                              "dataset_name"]


def padding_share(trainer) -> float:
    """Of the tokens in the trainer's training batches, the share that is padding (a batch is padded to its longest)."""
    pad = total = 0
    for batch in trainer.get_train_dataloader():
        mask = batch["attention_mask"]
        pad, total = pad + int((mask == 0).sum()), total + mask.numel()
    return pad / total


def test_dpo_batches_hold_pairs_of_similar_length(demo, tmp_path):
    """DPO trains on the cached pair table with its length column and the length-grouped sampler, as the reward model
    does: far less of each batch is padding than in the random batches TRL makes by default."""
    from types import SimpleNamespace

    from transformers import AutoModelForCausalLM
    from trl import DPOConfig

    from llm_assets.training.report import Reporter
    from llm_assets.training.tokens import LENGTH_GROUPED, cached_pairs

    _, datasets, tok = demo
    rows = load_rows(datasets["preference"], "train")
    # the demo's pairs are alike in length: mix in long prompts, as real preference data has
    rows = [{**r, "prompt": [{"role": "user", "content": r["prompt"][-1]["content"] + " and more" * (i % 7) * 3}]}
            for i, r in enumerate(rows)]
    spec = SimpleNamespace(stage="rlhf", inputs={}, options={})
    pairs, counts, how = cached_pairs(spec, rows, tok, "tokenizer", 128, Reporter())
    assert how["tokenization"] == "computed" and len(pairs) == counts[FIT] + counts[TRUNCATED]
    recipe = parse_recipe(write_recipe(tmp_path / "recipes"))
    build_model(recipe.model.architecture, tok, 128, seed=0).save_pretrained(tmp_path / "model")  # DPO loads its reference from there
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "model")

    def share(**sampling) -> float:
        args = DPOConfig(output_dir=str(tmp_path / "out"), per_device_train_batch_size=8, use_cpu=True, report_to=[],
                         max_length=128, seed=0, **sampling)
        return padding_share(PretokenizedDPOTrainer(model=model, args=args, train_dataset=pairs, processing_class=tok))

    grouped, random_batches = share(**LENGTH_GROUPED), share(remove_unused_columns=False)
    assert grouped < 0.5 * random_batches, (grouped, random_batches)
