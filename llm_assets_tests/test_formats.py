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


# Rows are checked after mapping, row by row: each defect is quarantined with its own reason and
# field, the good rows of the same file are kept unchanged, and the stored dataset holds its contract.

HH_GOOD = [("\n\nHuman: Hi\n\nAssistant: Hello!\n\nHuman: A joke?\n\nAssistant: A pun.",
            "\n\nHuman: Hi\n\nAssistant: Hello!\n\nHuman: A joke?\n\nAssistant: No."),
           ("\n\nHuman: 2+2?\n\nAssistant: 4", "\n\nHuman: 2+2?\n\nAssistant: 5")]


def hh_drop(bad_chosen, bad_rejected):
    """A file with the bad pair between two good ones (source rows 1 and 3)."""
    rows = [{"chosen": c, "rejected": r} for c, r in [HH_GOOD[0], (bad_chosen, bad_rejected), HH_GOOD[1]]]
    return validate_drop("preference", "hh.jsonl", jsonl(rows))


def assert_quarantined_alone(r, row, reason, field, *fragments):
    from llm_assets.data.pipeline import contract_violations

    assert r.rows_quarantined == 1 and r.rows_duplicate == 0, r.quarantine.to_dict("records")
    q = r.quarantine.iloc[0]
    assert (q["source_row"], q["reason"], q["field"]) == (row, reason, field), q.to_dict()
    for f in fragments:
        assert f in q["detail"], q["detail"]
    assert contract_violations(r.kind, r.dataset) == []


def test_hh_pair_whose_prompts_differ_by_a_missing_turn_is_quarantined():
    common = "\n\nHuman: Hi\n\nAssistant: Hello!\n\nHuman: Any plans?\n\nAssistant: A walk."
    r = hh_drop(common + "\n\nAssistant: Then lunch.", "\n\nHuman: Hi\n\nAssistant: Hello!\n\nHuman: Any plans?\n\nAssistant: None.")
    assert_quarantined_alone(r, 2, "missing_turn", "chosen", "'chosen' has an extra Assistant turn (4) that 'rejected' lacks")
    assert list(r.dataset["chosen"]) == ["A pun.", "4"] and list(r.dataset["rejected"]) == ["No.", "5"]
    assert r.dataset.iloc[0]["prompt"] == [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"},
                                           {"role": "user", "content": "A joke?"}]


def test_hh_pair_with_no_human_turn_before_the_replies_is_quarantined():
    """Both sides lack the same Human turn: the prompt would end with an Assistant turn (the dataset contract)."""
    common = "\n\nHuman: Hi\n\nAssistant: Hello!"
    r = hh_drop(common + "\n\nAssistant: Bye.", common + "\n\nAssistant: Later.")
    assert_quarantined_alone(r, 2, "missing_turn", "chosen", "turns 2 and 3 are both Assistant turns")
    assert r.rows_kept == 2


def test_hh_empty_human_turn_is_quarantined_naming_the_field():
    r = hh_drop("\n\nHuman: Hi\n\nAssistant: Yes?\n\nHuman: \n\nAssistant: Ok.", "\n\nHuman: Hi\n\nAssistant: Yes?\n\nHuman: \n\nAssistant: No.")
    assert_quarantined_alone(r, 2, "empty_turn", "chosen", "field 'chosen': Human turn 3 is empty")
    assert r.rows_kept == 2


@pytest.mark.parametrize("field", ["chosen", "rejected"])
def test_hh_errors_name_the_field(field):
    pair = {"chosen": "\n\nHuman: Hi\n\nAssistant: A", "rejected": "\n\nHuman: Hi\n\nAssistant: B"}
    pair[field] = "\n\nHuman: Hi\n\nAssistant: A\n\nHuman: And?"
    r = hh_drop(pair["chosen"], pair["rejected"])
    assert_quarantined_alone(r, 2, "wrong_last_speaker", field, f"field '{field}' ends with a Human turn")
    pair[field] = "preamble\n\nHuman: Hi\n\nAssistant: A"
    r = hh_drop(pair["chosen"], pair["rejected"])
    assert_quarantined_alone(r, 2, "bad_dialogue", field, f"field '{field}': text before the first")


def test_identical_chosen_and_rejected_replies_are_quarantined():
    r = hh_drop("\n\nHuman: Hi\n\nAssistant: Same.", "\n\nHuman: Hi\n\nAssistant: Same.")
    assert_quarantined_alone(r, 2, "identical_replies", "rejected", "'chosen' and 'rejected' hold the same reply")
    rows = [{"prompt": "2+2?", "chosen": "4", "rejected": "5"}, {"prompt": "Hi", "chosen": "Hello", "rejected": "Hello "}]
    r = validate_drop("preference", "p.jsonl", jsonl(rows))
    assert_quarantined_alone(r, 2, "identical_replies", "rejected")
    assert r.dataset.iloc[0]["chosen"] == "4"


def test_chat_ending_assistant_assistant_is_quarantined():
    good = {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Yo"}]}
    bad = {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Yo"}, {"role": "assistant", "content": "Again"}]}
    other = {"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Bye"}, {"role": "assistant", "content": "Bye."}]}
    r = validate_drop("sft", "c.jsonl", jsonl([good, bad, other]))
    assert_quarantined_alone(r, 2, "bad_turn_order", "messages", "messages 2 and 3 are both from the assistant")
    assert list(r.dataset["completion"]) == ["Yo", "Bye."] and r.dataset.iloc[1]["prompt"] == other["messages"][:-1]


def test_chat_errors_name_the_bad_role_and_the_last_speaker():
    good = {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Yo"}]}
    bot = {"messages": [{"role": "user", "content": "Hi"}, {"role": "bot", "content": "Yo"}]}
    ends_user = {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Yo"}, {"role": "user", "content": "?"}]}
    r = validate_drop("sft", "c.jsonl", jsonl([good, bot, ends_user]))
    details = list(r.quarantine["detail"])
    assert "has role 'bot' in message 2" in details[0], details
    assert "ends with a 'user' message (message 3); the last message must be from the assistant" in details[1], details


def test_every_mapped_row_that_breaks_the_dataset_contract_is_quarantined_not_the_drop():
    """A chat whose reply follows a system message maps to a prompt ending with 'system'."""
    from llm_assets.data.pipeline import contract_violations

    good = {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Yo"}]}
    bad = {"messages": [{"role": "user", "content": "Hi"}, {"role": "system", "content": "Be brief"}, {"role": "assistant", "content": "Yo"}]}
    r = validate_drop("sft", "c.jsonl", jsonl([bad, good]))
    assert r.rows_kept == 1 and r.quarantine.iloc[0]["reason"] == "bad_turn_order" and "follows a system message" in r.quarantine.iloc[0]["detail"]
    assert contract_violations("sft", r.dataset) == []
