"""The benchmark harness measures what it says: each configuration in its own process, the same
number of optimizer steps, real tokens counted from the examples (packed batches have no mask)."""

import os
import time
from pathlib import Path

import pytest

from benchmarks.contention import busy_process, measure, settings
from benchmarks.run import build_workdir, run_config, sft_rows

ARCH = dict(hidden_size=64, intermediate_size=128, num_layers=2, num_heads=2, vocab_size=512)
ARGS = ["--batch", "4", "--max-length", "128", "--threads", "1"]


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    work = tmp_path_factory.mktemp("bench")
    rows, _ = sft_rows(64)
    build_workdir(work, rows, ARCH, 128)
    return work


def test_ours_packs_and_trl_unpacked_pads_over_the_same_steps(work):
    ours, trl = run_config("ours", work, 3, ARGS), run_config("trl_cpu", work, 3, ARGS)
    assert ours["steps"] == trl["steps"] == 3
    assert ours["packing"] and not trl["packing"]
    # over-long rows are left out (a reply is never cut), so bins are filled by whole short rows only (right-cut rows
    # used to fill them exactly): about 10% waste on this 64-row sample against TRL's 30%; the 5% target is for make bench
    assert ours["padding_waste"] < trl["padding_waste"] / 2
    assert ours["trainable_tokens"] > trl["trainable_tokens"] > 0  # a packed batch holds more examples
    assert ours["trainable_tokens_per_s"] > 0 and ours["real_tokens_per_s"] > ours["trainable_tokens_per_s"]
    assert not trl["bf16_autocast"] and not trl["gradient_checkpointing"]


def test_contention_compares_fixed_threadings_with_the_launchers_choice_made_under_the_load(work, monkeypatch):
    monkeypatch.setenv("OMP_WAIT_POLICY", "ACTIVE")  # the user's shell: stripped, the benchmark compares its own settings
    envs = settings(quick=False)
    assert "OMP_WAIT_POLICY" not in envs["before"] and "OMP_NUM_THREADS" not in envs["before"]
    assert envs["passive waits"]["OMP_WAIT_POLICY"] == "PASSIVE" and "OMP_WAIT_POLICY" not in envs["short spin"]
    assert envs["short spin"]["GOMP_SPINCOUNT"] == "10000" and envs["chosen"] is None  # chosen as each run starts
    assert list(settings(quick=True)) == ["before", "chosen"]
    chosen = measure(work, 2, ["--batch", "4", "--max-length", "128", "--threads", "0"], None, "busy")
    assert chosen["waits"] == "passive"  # the busy loop was running when the launcher looked at the load
    assert chosen["threads"] == len(os.sched_getaffinity(0)) and chosen["tokens_per_s"] > 0  # the training code's own count


def test_busy_process_burns_a_core_and_is_gone_after_the_block():
    with busy_process() as busy:
        time.sleep(1.0)
        stat = Path(f"/proc/{busy.pid}/stat").read_text().rsplit(")", 1)[1].split()
        assert busy.poll() is None and (int(stat[11]) + int(stat[12])) / os.sysconf("SC_CLK_TCK") > 0.1  # utime + stime
    assert busy.returncode is not None and not Path(f"/proc/{busy.pid}").exists()


def test_data_prep_benchmark_finds_every_row_its_generator_broke(tmp_path):
    from benchmarks.data_prep import MAX_CHARS, generate_drop, quarantine_matches
    from llm_assets.data.prepare import prepare_drop

    expected = generate_drop(tmp_path / "d.jsonl", 3000, seed=1)
    assert set(expected.quarantined.values()) >= {"malformed_json", "missing_field", "empty_text", "not_utf8"}
    assert expected.duplicates and expected.pii["email"] and expected.pii["phone"]
    (tmp_path / "out").mkdir()
    tally = prepare_drop("sft", "d.jsonl", tmp_path / "d.jsonl", tmp_path / "out", max_chars=MAX_CHARS, batch_rows=500)
    checks = quarantine_matches(tmp_path / "out", expected)
    assert checks["quarantine_exact"] and checks["duplicates_exact"], checks
    assert dict(tally.pii_counts) == expected.pii
    assert tally.rows_kept == 3000 - len(expected.quarantined) - len(expected.duplicates)
