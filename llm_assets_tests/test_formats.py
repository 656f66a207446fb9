import json

import pytest

from llm_assets.data.formats import FormatError
from llm_assets.data.pipeline import validate_drop


def jsonl(rows):
    return "".join(json.dumps(r) + "\n" for r in rows).encode()


@pytest.mark.parametrize(
    "row, prompt, completion, fmt",
    [
        ({"prompt": "Q?", "completion": "A."}, "Q?", "A.", "prompt_completion"),
        ({"instruction": "Translate", "input": "chat", "output": "cat"}, "Translate\n\nchat", "cat", "alpaca"),
        ({"instruction": "Say hi", "input": "", "output": "hi"}, "Say hi", "hi", "alpaca"),
        ({"instruction": "Summarize", "context": "Long text", "response": "Short"}, "Summarize\n\nLong text", "Short", "dolly"),
    ],
)
def test_single_turn_formats_map_to_a_user_prompt_and_completion(row, prompt, completion, fmt):
    r = validate_drop("sft", "d.jsonl", jsonl([row, {**row, "extra": 1}]))
    assert r.format.name == fmt
    first = r.dataset.iloc[0]
    assert first["prompt"] == [{"role": "user", "content": prompt}] and first["completion"] == completion


def test_chat_messages_keep_system_and_earlier_turns():
    msgs = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": "Hello"}, {"role": "user", "content": "Bye?"}, {"role": "assistant", "content": "Bye."}]
    r = validate_drop("sft", "c.jsonl", jsonl([{"messages": msgs}]))
    assert r.format.name == "chat"
    assert r.dataset.iloc[0]["prompt"] == msgs[:-1] and r.dataset.iloc[0]["completion"] == "Bye."


def test_chat_not_ending_with_assistant_is_quarantined():
    bad = {"messages": [{"role": "user", "content": "Hi"}]}
    good = {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Yo"}]}
    r = validate_drop("sft", "c.jsonl", jsonl([good, bad]))
    assert r.rows_kept == 1 and r.quarantine.iloc[0]["source_row"] == 2 and r.quarantine.iloc[0]["reason"] == "bad_messages"


def test_preference_with_shared_prompt():
    r = validate_drop("preference", "p.jsonl", jsonl([{"prompt": "2+2?", "chosen": "4", "rejected": "5"}]))
    assert r.format.name == "preference"
    row = r.dataset.iloc[0]
    assert row["prompt"] == [{"role": "user", "content": "2+2?"}] and (row["chosen"], row["rejected"]) == ("4", "5")


def test_hh_rlhf_dialogues_split_into_prompt_and_final_replies():
    common = "\n\nHuman: Hi\n\nAssistant: Hello!\n\nHuman: Tell me a joke"
    r = validate_drop("preference", "hh.jsonl", jsonl([{"chosen": common + "\n\nAssistant: A pun.", "rejected": common + "\n\nAssistant: No."}]))
    assert r.format.name == "hh_rlhf"
    row = r.dataset.iloc[0]
    assert row["prompt"] == [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}, {"role": "user", "content": "Tell me a joke"}]
    assert (row["chosen"], row["rejected"]) == ("A pun.", "No.")


def test_hh_rlhf_pairs_that_diverge_early_are_quarantined():
    a = "\n\nHuman: Hi\n\nAssistant: One\n\nHuman: Go on\n\nAssistant: X"
    b = "\n\nHuman: Hi\n\nAssistant: Two\n\nHuman: Go on\n\nAssistant: Y"
    ok = "\n\nHuman: Hi\n\nAssistant: "
    r = validate_drop("preference", "hh.jsonl", jsonl([{"chosen": a, "rejected": b}, {"chosen": ok + "Z", "rejected": ok + "W"}]))
    assert r.rows_kept == 1
    q = r.quarantine.iloc[0]
    assert q["source_row"] == 1 and q["reason"] == "prompt_mismatch" and "turn 2" in q["detail"]


def test_pretraining_text():
    r = validate_drop("pretraining", "t.jsonl", jsonl([{"text": "Once upon a time."}]))
    assert r.format.name == "text" and r.dataset.iloc[0]["text"] == "Once upon a time."


def test_unknown_format_lists_columns_and_known_formats():
    with pytest.raises(FormatError) as e:
        validate_drop("sft", "x.jsonl", jsonl([{"question": "q", "answer": "a"}]))
    msg = str(e.value)
    assert "['answer', 'question']" in msg and "alpaca" in msg and "prompt_completion" in msg and "mapping.yaml" in msg


def test_ambiguous_format_is_an_error():
    row = {"prompt": "p", "completion": "c", "instruction": "i", "output": "o"}
    with pytest.raises(FormatError, match="ambiguous sft format.*alpaca.*prompt_completion|ambiguous sft format.*prompt_completion.*alpaca"):
        validate_drop("sft", "x.jsonl", jsonl([row]))


def test_override_picks_format_and_renames_columns():
    rows = [{"question": "q1", "answer": "a1"}, {"question": "q2", "answer": "a2"}]
    r = validate_drop("sft", "x.jsonl", jsonl(rows), override={"format": "prompt_completion", "columns": {"prompt": "question", "completion": "answer"}})
    assert r.rows_kept == 2 and r.dataset.iloc[1]["completion"] == "a2"


def test_override_with_wrong_kind_is_refused():
    with pytest.raises(FormatError, match="not a sft format"):
        validate_drop("sft", "x.jsonl", jsonl([{"text": "t"}]), override={"format": "text"})


def test_csv_and_parquet_and_json_array(tmp_path):
    import pandas as pd

    rows = [{"prompt": "a", "completion": "b"}, {"prompt": "c", "completion": "d"}]
    pd.DataFrame(rows).to_parquet(tmp_path / "x.parquet")
    for name, data in [("x.csv", b"prompt,completion\na,b\nc,d\n"), ("x.json", json.dumps(rows).encode()),
                       ("x.parquet", (tmp_path / "x.parquet").read_bytes())]:
        r = validate_drop("sft", name, data)
        assert r.rows_kept == 2 and r.dataset.iloc[1]["completion"] == "d", name


def test_extra_columns_are_kept_in_meta():
    r = validate_drop("sft", "x.jsonl", jsonl([{"prompt": "p", "completion": "c", "task": "t1"}]))
    assert json.loads(r.dataset.iloc[0]["meta"]) == {"task": "t1"}


def test_split_is_deterministic_by_content():
    rows = [{"prompt": f"p{i}", "completion": "c"} for i in range(400)]
    a = validate_drop("sft", "a.jsonl", jsonl(rows))
    b = validate_drop("sft", "b.jsonl", jsonl(list(reversed(rows))))
    split_a = dict(zip(a.dataset.row_hash, a.dataset.split))
    assert split_a == dict(zip(b.dataset.row_hash, b.dataset.split))
    assert 0.05 < (a.dataset.split == "eval").mean() < 0.15
