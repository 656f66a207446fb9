"""The project's own demo data: a word-list task a tiny model visibly learns on a CPU.

Each example gives 2-5 words from a small vocabulary and asks for one operation (first word,
last word, word count, reversal). Answers are exact, so exact-match accuracy before and after
each training stage is a meaningful figure. The same generator makes all three kinds:

* SFT pairs (two drops: prompt/completion JSONL with a few deliberate defects, and chat JSONL),
* preference pairs (the right answer chosen, a plausible wrong one rejected),
* pre-training prose that states the same facts in sentences.

Everything is deterministic for a seed, so tests and the README's figures are reproducible.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

WORDS = ("red", "blue", "green", "gold", "pink", "gray", "cat", "dog", "fox", "owl", "bee", "elk",
         "sun", "moon", "star", "rain", "snow", "wind", "oak", "fig", "tea", "jam", "map", "key")
OPS = ("first", "last", "count", "reverse")
TEMPLATES = {
    "first": ("What is the first word? {w}", "First word of: {w}"),
    "last": ("What is the last word? {w}", "Last word of: {w}"),
    "count": ("How many words? {w}", "Count the words: {w}"),
    "reverse": ("Reverse the words: {w}", "Write these words backwards: {w}"),
}
NUMBERS = ("zero", "one", "two", "three", "four", "five", "six")


def answer(op: str, words: list[str]) -> str:
    if op == "first":
        return words[0]
    if op == "last":
        return words[-1]
    if op == "count":
        return str(len(words))
    return " ".join(reversed(words))


def rejected_answer(op: str, words: list[str], rng: random.Random) -> str:
    """What a labeller prefers less: mostly a plausible mistake, sometimes an unhelpful reply
    (a refusal, a hedge around a wrong answer, a stutter) as in real preference data."""
    roll = rng.random()
    if roll < 0.15:
        return rng.choice(("Sorry, I cannot help with that.", "I am not sure.", "Please ask something else."))
    if roll < 0.30:
        return f"I think it is {wrong_answer(op, words, rng)}, maybe."
    if roll < 0.40:
        right = answer(op, words)
        return f"{right} {right}"
    return wrong_answer(op, words, rng)


def wrong_answer(op: str, words: list[str], rng: random.Random) -> str:
    """A plausible mistake: the kind of error an undertrained model makes."""
    if op == "first":
        return words[-1]
    if op == "last":
        return words[0]
    if op == "count":
        return str(len(words) + rng.choice((-1, 1)))
    shuffled = words[:]
    while shuffled == list(reversed(words)):
        rng.shuffle(shuffled)
    return " ".join(shuffled)


def examples(n: int, rng: random.Random) -> list[tuple[str, str, list[str]]]:
    """``n`` distinct (op, prompt, words) examples: repeats would only be quarantined as duplicates."""
    out, seen = [], set()
    while len(out) < n:
        op = rng.choice(OPS)
        words = rng.sample(WORDS, rng.randint(2, 5))
        prompt = rng.choice(TEMPLATES[op]).format(w=" ".join(words))
        if prompt not in seen:
            seen.add(prompt)
            out.append((op, prompt, words))
    return out


def sft_rows(n: int, seed: int) -> list[dict]:
    return [{"prompt": p, "completion": answer(op, w), "task": op} for op, p, w in examples(n, random.Random(seed))]


def chat_rows(n: int, seed: int) -> list[dict]:
    return [
        {"messages": [{"role": "user", "content": p}, {"role": "assistant", "content": answer(op, w)}], "task": op}
        for op, p, w in examples(n, random.Random(seed))
    ]


def preference_rows(n: int, seed: int) -> list[dict]:
    rng = random.Random(seed)
    return [
        {"prompt": p, "chosen": answer(op, w), "rejected": rejected_answer(op, w, rng), "task": op}
        for op, p, w in examples(n, rng)
    ]


def corpus_rows(n: int, seed: int) -> list[dict]:
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        sentences = []
        for _ in range(rng.randint(2, 4)):
            words = rng.sample(WORDS, rng.randint(2, 5))
            w = " ".join(words)
            sentences.append(rng.choice((
                f"The words {w} are {NUMBERS[len(words)]} words. The first is {words[0]} and the last is {words[-1]}.",
                f"Take the list {w}. Backwards it reads {answer('reverse', words)}.",
                f"In {w} there are {len(words)} words, starting with {words[0]}.",
                f"Reversed, {w} becomes {answer('reverse', words)}, which ends with {words[0]}.",
            )))
        rows.append({"text": " ".join(sentences)})
    return rows


def _jsonl(rows: list[dict]) -> str:
    return "".join(json.dumps(r) + "\n" for r in rows)


def with_defects(rows: list[dict]) -> str:
    """The prompt/completion drop, with the defects real files have, so quarantine shows in the UI."""
    rows = [dict(r) for r in rows]
    rows[7]["completion"] = ""  # empty answer
    rows[19]["completion"] = "   "  # whitespace only
    rows[23]["prompt"] = "Reply to ana.lopez@mailbox.org first. " + rows[23]["prompt"]  # PII: scrubbed, kept
    rows.insert(40, rows[30])  # exact duplicates
    rows.insert(60, rows[50])
    lines = _jsonl(rows).splitlines(keepends=True)
    lines.insert(75, '{"prompt": "What is the first word? red fox", "completion": \n')  # truncated line
    return "".join(lines)


def write_demo_drops(landing: Path, seed: int = 0, scale: float = 1.0) -> list[Path]:
    """Write the demo drops into ``landing/<kind>/``; returns the files written."""
    n = lambda base: max(int(base * scale), 80)  # noqa: E731
    files = {
        landing / "sft" / "demo_word_tasks.jsonl": with_defects(sft_rows(n(1600), seed)),
        landing / "sft" / "demo_word_tasks_chat.jsonl": _jsonl(chat_rows(n(400), seed + 1)),
        landing / "preference" / "demo_preferences.jsonl": _jsonl(preference_rows(n(3000), seed + 2)),
        landing / "pretraining" / "demo_corpus.jsonl": _jsonl(corpus_rows(n(1000), seed + 3)),
    }
    for path, text in files.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_text(text)
        tmp.replace(path)  # land atomically: a watcher never sees half a file
    return list(files)
