"""The project's own demo data: a word-list task a tiny model visibly learns on a CPU.

Each example gives 2-5 words from a small vocabulary and asks for one operation (first word,
last word, word count, reversal). Answers are exact, so exact-match accuracy before and after
each training stage is a meaningful figure. The same generator makes all three kinds:

* SFT pairs (two drops: prompt/completion JSONL with a few deliberate defects, and chat JSONL),
* preference pairs (the right answer chosen over a plausible wrong one; an answer ending with a full stop chosen over
  the same answer ending otherwise),
* pre-training prose that states the same facts in sentences.

An answer may end with nothing, "." or "!" (``STYLES``): the task allows each, and the SFT data uses them equally
often, so SFT learns the task and stays neutral about the ending. The preference data adds what SFT does not know:
labellers prefer the full stop. ``llm_assets.demo_gold`` scores a reply as they did (each preference row names it in
its ``gold`` field); exact match ignores the ending, so it still grades the task alone.

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
STYLES = ("", ".", "!")  # how an answer may end; the SFT data uses each equally often
PREFERRED_ENDING = "."  # what the labellers of the preference data prefer
GOLD = "demo_word_tasks"  # the gold preference function of these pairs (llm_assets.demo_gold.GOLD_FUNCTIONS)
STYLE_PAIRS = 0.5  # share of preference pairs that differ only in how the right answer ends


def answer(op: str, words: list[str]) -> str:
    if op == "first":
        return words[0]
    if op == "last":
        return words[-1]
    if op == "count":
        return str(len(words))
    return " ".join(reversed(words))


def rejected_answer(op: str, words: list[str], rng: random.Random, ending: str = "") -> str:
    """What a labeller prefers less than the right answer: mostly a plausible mistake (ending in ``ending``, as the
    right answer it is paired with does), sometimes an unhelpful reply (a refusal, a hedge around a wrong answer, a
    stutter) as in real preference data."""
    roll = rng.random()
    if roll < 0.15:
        return rng.choice(("Sorry, I cannot help with that.", "I am not sure.", "Please ask something else."))
    if roll < 0.30:
        return f"I think it is {wrong_answer(op, words, rng)}, maybe."
    if roll < 0.40:
        right = answer(op, words)
        return f"{right} {right}{ending}"
    return wrong_answer(op, words, rng) + ending


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


def endings(seed: int) -> random.Random:
    """The endings' own generator: the examples (prompts, answers) are those of the seed whatever the endings."""
    return random.Random(f"endings-{seed}")


def sft_rows(n: int, seed: int) -> list[dict]:
    ends = endings(seed)
    return [{"prompt": p, "completion": answer(op, w) + ends.choice(STYLES), "task": op}
            for op, p, w in examples(n, random.Random(seed))]


def chat_rows(n: int, seed: int) -> list[dict]:
    ends = endings(seed)
    return [
        {"messages": [{"role": "user", "content": p}, {"role": "assistant", "content": answer(op, w) + ends.choice(STYLES)}],
         "task": op}
        for op, p, w in examples(n, random.Random(seed))
    ]


def preference_pair(op: str, words: list[str], rng: random.Random) -> tuple[str, str]:
    """(chosen, rejected): the same right answer ending in a full stop against another ending (``STYLE_PAIRS`` of
    them), or the right answer against a worse reply, both ending alike (the pair is about the answer alone)."""
    right = answer(op, words)
    if rng.random() < STYLE_PAIRS:
        return right + PREFERRED_ENDING, right + rng.choice([e for e in STYLES if e != PREFERRED_ENDING])
    ending = rng.choice(STYLES)
    return right + ending, rejected_answer(op, words, rng, ending)


def preference_rows(n: int, seed: int) -> list[dict]:
    rng = random.Random(seed)
    return [{"prompt": p, **dict(zip(("chosen", "rejected"), preference_pair(op, w, rng))), "task": op, "gold": GOLD}
            for op, p, w in examples(n, rng)]


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


def inference_rows(n: int, seed: int) -> list[dict]:
    """Prompts for batch predictions: demo-task questions, each with its expected answer (kept in the dataset's meta,
    so replies can be checked by eye)."""
    return [{"prompt": p, "expected": answer(op, w)} for op, p, w in examples(n, random.Random(seed))]


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
        landing / "inference" / "demo_prompts.jsonl": _jsonl(inference_rows(40, seed + 4)),
    }
    for path, text in files.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_text(text)
        tmp.replace(path)  # land atomically: a watcher never sees half a file
    return list(files)
