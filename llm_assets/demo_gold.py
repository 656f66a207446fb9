"""The demo's gold preference: the function the generated preference pairs were labelled with.

Real preference data has no such function; the demo is generated, so it does, and the RLHF stage
can say whether the policy moved toward what the labellers wanted, not only toward what the reward
model learned. A preference row names its gold function in its ``gold`` field (kept in the
dataset's ``meta``); ``GOLD_FUNCTIONS`` maps that name to the function, so no stage has to guess
which data it is looking at.

The demo labellers prefer, first, the right answer and, second, an answer that ends with a full
stop. The SFT data ends its answers with nothing, "." or "!" equally often (``demo_data.STYLES``),
so SFT is neutral about the second preference and only the preference data teaches it.
"""

from __future__ import annotations

from typing import Callable

from llm_assets.demo_data import GOLD, PREFERRED_ENDING, TEMPLATES, answer
from llm_assets.training.evaluate import answer_of

RIGHT_ANSWER, FULL_STOP = 2.0, 1.0  # a right answer outweighs any ending


def demo_task(prompt: str) -> tuple[str, list[str]] | None:
    """(operation, words) of a demo prompt; None for any other text."""
    for op, templates in TEMPLATES.items():
        for template in templates:
            head = template.split("{w}")[0]
            if prompt.startswith(head) and prompt[len(head):].split():
                return op, prompt[len(head):].split()
    return None


def demo_gold_score(prompt: str, reply: str) -> float | None:
    """2 for the right answer, plus 1 for ending with a single full stop; None when ``prompt`` is not a demo prompt."""
    task = demo_task(prompt)
    if task is None:
        return None
    reply = reply.strip()
    right = answer_of(reply) == answer(*task)  # as exact match grades it
    full_stop = reply.endswith(PREFERRED_ENDING) and not reply.endswith(PREFERRED_ENDING * 2)
    return RIGHT_ANSWER * right + FULL_STOP * full_stop


GOLD_FUNCTIONS: dict[str, Callable[[str, str], float | None]] = {GOLD: demo_gold_score}
