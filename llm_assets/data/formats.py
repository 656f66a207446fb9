"""The formats people actually have, detected from their columns and mapped to canonical rows.

Canonical rows (what every dataset asset stores):

* sft:         ``prompt`` (list of ``{role, content}`` messages), ``completion`` (the assistant reply)
* preference:  ``prompt`` (messages), ``chosen``, ``rejected`` (assistant replies)
* pretraining: ``text``
* inference:   ``prompt`` (messages ending with the user turn to reply to): a request, never trained on

Source fields that a format does not use are kept in ``meta`` (JSON), never dropped.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Callable

from llm_assets.data.pii import scrub

ROLES = ("system", "user", "assistant")


class RowError(ValueError):
    """One row that cannot be mapped; ``reason`` is a short code, ``field`` the source field at fault."""

    def __init__(self, reason: str, message: str, field: str | None = None):
        super().__init__(message)
        self.reason = reason
        self.field = field


class FormatError(ValueError):
    """The file's format is unknown or ambiguous."""


def user(content: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": content}]


def _join(*parts: str | None) -> str:
    return "\n\n".join(p for p in parts if p and p.strip())


def _map_prompt_completion(r: dict[str, Any]) -> dict[str, Any]:
    return {"prompt": user(r["prompt"]), "completion": r["completion"]}


def _map_alpaca(r: dict[str, Any]) -> dict[str, Any]:
    return {"prompt": user(_join(r["instruction"], r.get("input"))), "completion": r["output"]}


def _map_dolly(r: dict[str, Any]) -> dict[str, Any]:
    return {"prompt": user(_join(r["instruction"], r.get("context"))), "completion": r["response"]}


def _map_chat(r: dict[str, Any]) -> dict[str, Any]:
    """The last message is the reply; it must answer a user message (the source contract checked the rest)."""
    msgs = r["messages"]
    *prompt, last = msgs
    n, before = len(msgs), prompt[-1]["role"]  # the source contract guarantees a user message before the reply
    if before == "assistant":
        raise RowError("bad_turn_order", f"field 'messages': messages {n - 1} and {n} are both from the assistant; "
                       "the final assistant reply must follow a user message", "messages")
    if before != "user":
        raise RowError("bad_turn_order", f"field 'messages': the final assistant reply (message {n}) follows "
                       f"a {before} message; it must follow a user message", "messages")
    return {"prompt": [{"role": m["role"], "content": m["content"]} for m in prompt], "completion": last["content"]}


def _map_preference(r: dict[str, Any]) -> dict[str, Any]:
    prompt = r["prompt"]
    return {"prompt": user(prompt) if isinstance(prompt, str) else prompt, "chosen": r["chosen"], "rejected": r["rejected"]}


HH_TURN = re.compile(r"\n\n(Human|Assistant):")
HH_SPEAKER = {"user": "Human", "assistant": "Assistant"}


def parse_hh_dialogue(text: str, field: str = "dialogue") -> list[dict[str, str]]:
    """Split an HH-RLHF transcript ("\\n\\nHuman: ...\\n\\nAssistant: ...") into messages; errors name ``field``."""
    parts = HH_TURN.split(text)
    if parts[0].strip():
        raise RowError("bad_dialogue", f"field '{field}': text before the first '\\n\\nHuman:' turn: {scrub(parts[0][:300])[:60]!r}", field)
    turns = [{"role": "user" if speaker == "Human" else "assistant", "content": content.strip()}
             for speaker, content in zip(parts[1::2], parts[2::2])]
    if not turns:
        raise RowError("bad_dialogue", f"field '{field}': no '\\n\\nHuman:' / '\\n\\nAssistant:' turns found", field)
    return turns


def _hh_turns(r: dict[str, Any], field: str) -> list[dict[str, str]]:
    """One side of a pair: starts with Human, no empty turn, ends with the Assistant reply."""
    turns = parse_hh_dialogue(r[field], field)
    if turns[0]["role"] != "user":
        raise RowError("bad_dialogue", f"field '{field}' starts with an Assistant turn; a dialogue starts with '\\n\\nHuman:'", field)
    if turns[-1]["role"] != "assistant":
        raise RowError("wrong_last_speaker", f"field '{field}' ends with a Human turn (turn {len(turns)}); "
                       "it must end with the Assistant reply", field)
    if not turns[-1]["content"]:
        raise RowError("empty_text", f"the final Assistant turn of '{field}' is empty", field)
    for i, t in enumerate(turns[:-1], start=1):
        if not t["content"]:
            raise RowError("empty_turn", f"field '{field}': {HH_SPEAKER[t['role']]} turn {i} is empty", field)
    return turns


def _extra_turn(longer: list[dict[str, str]], shorter: list[dict[str, str]]) -> int | None:
    """The index of the one turn whose removal makes ``longer`` equal ``shorter``, if there is one."""
    if len(longer) != len(shorter) + 1:
        return None
    return next((i for i in range(len(longer)) if longer[:i] + longer[i + 1:] == shorter), None)


def _alternates(turns: list[dict[str, str]]) -> bool:
    return all(a["role"] != b["role"] for a, b in zip(turns, turns[1:]))


def _prompt_mismatch(chosen: list[dict[str, str]], rejected: list[dict[str, str]]) -> RowError:
    """Why the two prompts differ: one missing turn (named) or a real divergence (its turn)."""
    sides = {"chosen": chosen, "rejected": rejected}
    for longer, shorter in (("chosen", "rejected"), ("rejected", "chosen")):
        i = _extra_turn(sides[longer][:-1], sides[shorter][:-1])
        if i is not None:
            at_fault = longer if not _alternates(sides[longer]) else shorter
            role = HH_SPEAKER[sides[longer][i]["role"]]
            return RowError("missing_turn", f"field '{at_fault}': '{longer}' has an extra {role} turn ({i + 1}) that '{shorter}' lacks; "
                            "otherwise their prompts match, but a preference pair must share its prompt", at_fault)
    at = next((i for i, (a, b) in enumerate(zip(chosen, rejected)) if a != b), min(len(chosen), len(rejected)) - 1)
    return RowError("prompt_mismatch", f"'chosen' and 'rejected' differ at turn {at + 1}, before their final Assistant turn: "
                    "a preference pair must share its prompt", "rejected")


def _map_hh_rlhf(r: dict[str, Any]) -> dict[str, Any]:
    chosen, rejected = _hh_turns(r, "chosen"), _hh_turns(r, "rejected")
    if chosen[:-1] != rejected[:-1]:
        raise _prompt_mismatch(chosen, rejected)
    prompt = chosen[:-1]
    if prompt[-1]["role"] != "user":
        n = len(chosen)
        raise RowError("missing_turn", f"fields 'chosen' and 'rejected': turns {n - 1} and {n} are both Assistant turns, "
                       "so the final reply answers no Human turn (a Human turn is missing)", "chosen")
    return {"prompt": prompt, "chosen": chosen[-1]["content"], "rejected": rejected[-1]["content"]}


def canonical_row_error(kind: str, row: dict[str, Any]) -> RowError | None:
    """Problems only the mapped row shows (after scrubbing): a pair whose two replies are the same teaches nothing."""
    if kind == "preference" and isinstance(row["chosen"], str) and isinstance(row["rejected"], str) \
            and row["chosen"].strip() == row["rejected"].strip():
        return RowError("identical_replies", "fields 'chosen' and 'rejected' hold the same reply; "
                        "a preference pair needs two different replies", "rejected")
    return None


def _map_text(r: dict[str, Any]) -> dict[str, Any]:
    return {"text": r["text"]}


def _messages_only(msgs: list[dict[str, Any]]) -> list[dict[str, str]]:
    return [{"role": m["role"], "content": m["content"]} for m in msgs]


def _map_prompts(r: dict[str, Any]) -> dict[str, Any]:
    prompt = r["prompt"]
    return {"prompt": user(prompt) if isinstance(prompt, str) else _messages_only(prompt)}


def _map_chat_prompts(r: dict[str, Any]) -> dict[str, Any]:
    return {"prompt": _messages_only(r["messages"])}


@dataclass(frozen=True)
class Format:
    name: str
    kind: str
    required: tuple[str, ...]
    optional: tuple[str, ...]
    text_fields: tuple[str, ...]  # source fields that must be non-empty strings
    mapper: Callable[[dict[str, Any]], dict[str, Any]]
    description: str

    @property
    def columns(self) -> tuple[str, ...]:
        return self.required + self.optional


FORMATS: dict[str, Format] = {
    f.name: f
    for f in [
        Format("prompt_completion", "sft", ("prompt", "completion"), (), ("prompt", "completion"), _map_prompt_completion, "prompt / completion"),
        Format("alpaca", "sft", ("instruction", "output"), ("input",), ("instruction", "output"), _map_alpaca, "alpaca: instruction / input / output"),
        Format("dolly", "sft", ("instruction", "response"), ("context",), ("instruction", "response"), _map_dolly, "dolly: instruction / context / response"),
        Format("chat", "sft", ("messages",), (), (), _map_chat, "chat: messages = [{role, content}, ...] ending with the assistant turn"),
        Format("preference", "preference", ("prompt", "chosen", "rejected"), (), ("prompt", "chosen", "rejected"), _map_preference, "prompt / chosen / rejected"),
        Format("hh_rlhf", "preference", ("chosen", "rejected"), (), ("chosen", "rejected"), _map_hh_rlhf, "HH-RLHF: chosen / rejected dialogues with '\\n\\nHuman:' / '\\n\\nAssistant:' turns"),
        Format("text", "pretraining", ("text",), (), ("text",), _map_text, "text"),
        Format("prompts", "inference", ("prompt",), (), ("prompt",), _map_prompts, "prompt: text, or messages ending with a user turn"),
        Format("chat_prompts", "inference", ("messages",), (), (), _map_chat_prompts,
               "chat: messages = [{role, content}, ...] ending with the user turn to reply to"),
    ]
}

CANONICAL = {"sft": ("prompt", "completion"), "preference": ("prompt", "chosen", "rejected"), "pretraining": ("text",),
             "inference": ("prompt",)}


def formats_for(kind: str) -> list[Format]:
    return [f for f in FORMATS.values() if f.kind == kind]


def _known(kind: str) -> str:
    return "; ".join(f"{f.name} ({f.description})" for f in formats_for(kind))


def detect_format(kind: str, rows: list[dict[str, Any]], columns_seen: list[str]) -> Format:
    """The format whose required columns most rows have; ties between unrelated formats are ambiguous."""
    candidates = formats_for(kind)
    counts = {f.name: sum(1 for r in rows if all(c in r for c in f.required)) for f in candidates}
    best = max(counts.values(), default=0)
    if best == 0:
        raise FormatError(
            f"unknown {kind} format: columns found {sorted(columns_seen)}; known {kind} formats: {_known(kind)}. "
            "Rename the columns, or add '<file>.mapping.yaml' with 'format:' and 'columns: {canonical: yours}'"
        )
    tied = [FORMATS[n] for n, c in counts.items() if c == best]
    # A format whose columns contain another's is the more specific reading (prompt/chosen/rejected vs chosen/rejected).
    tied = [f for f in tied if not any(set(f.required) < set(g.required) for g in tied)]
    if len(tied) > 1:
        raise FormatError(
            f"ambiguous {kind} format: columns found {sorted(columns_seen)} fit {', '.join(f.name for f in tied)} equally. "
            "Say which in '<file>.mapping.yaml' (format: NAME)"
        )
    return tied[0]


def resolve_format(kind: str, override: dict[str, Any], rows: list[dict[str, Any]], columns_seen: list[str]) -> Format:
    name = override.get("format")
    if name is None:
        return detect_format(kind, rows, columns_seen)
    fmt = FORMATS.get(name)
    if fmt is None or fmt.kind != kind:
        raise FormatError(f"mapping override names format {name!r}, which is not a {kind} format; known: {_known(kind)}")
    return fmt


def rename_columns(row: dict[str, Any], columns: dict[str, str]) -> dict[str, Any]:
    """Apply an override ``columns: {canonical_name: source_name}``."""
    if not columns:
        return row
    out = {k: v for k, v in row.items() if k not in columns.values()}
    for canonical, source in columns.items():
        if source in row:
            out[canonical] = row[source]
    return out


def check_messages(value: Any, *, final_role: str | None = "assistant") -> str | None:
    """Why a message list is malformed (a phrase that follows "field 'messages'"), or None when it is well formed."""
    if not isinstance(value, list) or not value:
        return f"must be a non-empty list of {{role, content}} messages, got {type(value).__name__}"
    for i, m in enumerate(value, start=1):
        if not isinstance(m, dict) or set(m) - {"role", "content", "name"} or "role" not in m or "content" not in m:
            return f"has a message {i} that is not an object with 'role' and 'content'"
        if m["role"] not in ROLES:
            return f"has role {m['role']!r} in message {i}; roles are {', '.join(ROLES)}"
        if not isinstance(m["content"], str) or not m["content"].strip():
            return f"has empty or non-string content in message {i} ({m['role']})"
    if final_role and value[-1]["role"] != final_role:
        return f"ends with a {value[-1]['role']!r} message (message {len(value)}); the last message must be from the {final_role}"
    if not any(m["role"] == "user" for m in value):
        return "has no user message"
    return None
