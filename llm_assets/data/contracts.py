"""Data contracts as pandera schemas.

Two contracts per drop: the *source* contract checks the user's own columns for the detected
format (so a rejection names the field as it is in their file), and the *dataset* contract is
what every stored dataset must satisfy (checked again by a blocking asset check on the output).
Checks are element-wise so pandera reports the failing row, which becomes a quarantine entry.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import pandas as pd
import pandera.pandas as pa

from llm_assets.data.formats import CANONICAL, Format, check_messages

# pandera check name -> (quarantine reason code, what the person reads)
CHECK_REASONS = {
    "not_nullable": ("missing_field", "is missing or null"),
    "is_string": ("wrong_type", "must be a string"),
    "not_empty": ("empty_text", "is empty or only whitespace"),
    "max_chars": ("too_long", "is longer than the limit"),
    "valid_messages": ("bad_messages", "is not a valid message list"),
    "valid_prompt": ("bad_prompt", "is not a valid prompt (messages ending with a user turn)"),
    "unique": ("duplicate", "is duplicated"),
    "isin": ("bad_value", "has a value outside the allowed set"),
}


def _is_string(v: Any) -> bool:
    return isinstance(v, str)


def _string_column(max_chars: int, *, nullable: bool = False) -> pa.Column:
    return pa.Column(
        None,
        nullable=nullable,
        checks=[
            pa.Check(_is_string, element_wise=True, name="is_string"),
            pa.Check(lambda v: not isinstance(v, str) or bool(v.strip()), element_wise=True, name="not_empty"),
            pa.Check(lambda v: not isinstance(v, str) or len(v) <= max_chars, element_wise=True, name="max_chars"),
        ],
    )


def _optional_string_column() -> pa.Column:
    return pa.Column(None, nullable=True, required=False, checks=[pa.Check(_is_string, element_wise=True, name="is_string")])


# The final role each message check requires, so a failure can be explained by ``check_messages``.
MESSAGE_CHECKS = {"valid_messages": "assistant", "valid_prompt": "user"}


def _messages_column(max_chars: int, check: str) -> pa.Column:
    def valid(v: Any) -> bool:
        return check_messages(v, final_role=MESSAGE_CHECKS[check]) is None and sum(len(m["content"]) for m in v) <= max_chars

    return pa.Column(None, nullable=False, checks=[pa.Check(valid, element_wise=True, name=check)])


def _message_failure(check: str, value: Any) -> str | None:
    """The reason a message list failed its check, in words (pandera only knows the check's name)."""
    why = check_messages(value, final_role=MESSAGE_CHECKS[check])
    if why is None and isinstance(value, list):
        why = f"has {sum(len(m['content']) for m in value):,} characters, more than the limit (DatasetConfig.max_chars)"
    return why


def source_schema(fmt: Format, max_chars: int) -> pa.DataFrameSchema:
    columns: dict[str, pa.Column] = {c: _string_column(max_chars) for c in fmt.text_fields}
    columns.update({c: _optional_string_column() for c in fmt.optional})
    if fmt.name == "chat":
        columns["messages"] = _messages_column(max_chars, "valid_messages")
    if fmt.name == "chat_prompts":
        columns["messages"] = _messages_column(max_chars, "valid_prompt")
    if fmt.name in ("preference", "prompts"):  # prompt may be a string or a message list
        columns["prompt"] = pa.Column(None, nullable=False, checks=[pa.Check(
            lambda v: (isinstance(v, str) and bool(v.strip()) and len(v) <= max_chars)
            or (isinstance(v, list) and check_messages(v, final_role="user") is None),
            element_wise=True, name="valid_prompt")])
    return pa.DataFrameSchema(columns, name=f"source_{fmt.name}", strict=False)


def dataset_schema(kind: str, max_chars: int = 10**9) -> pa.DataFrameSchema:
    """The contract every stored dataset of ``kind`` satisfies."""
    columns: dict[str, pa.Column] = {
        "source_row": pa.Column(int, pa.Check.ge(1)),
        "row_hash": pa.Column(str, [pa.Check.str_length(64, 64)], unique=True),
        "split": pa.Column(str, pa.Check.isin(["train", "eval"])),
        "meta": pa.Column(str),
    }
    for c in CANONICAL[kind]:
        columns[c] = _messages_column(max_chars, "valid_prompt") if c == "prompt" else _string_column(max_chars)
    return pa.DataFrameSchema(columns, name=f"{kind}_dataset", strict=True, ordered=False)


def row_failures(schema: pa.DataFrameSchema, df: pd.DataFrame) -> dict[Any, list[tuple[str, str, str]]]:
    """Validate lazily; map each failing index to its (reason, column, message) list, in check order."""
    try:
        schema.validate(df, lazy=True)
        return {}
    except pa.errors.SchemaErrors as e:
        cases = e.failure_cases
    failures: dict[Any, list[tuple[str, str, str]]] = defaultdict(list)
    table_level = []
    for case in cases.itertuples(index=False):
        check = str(case.check).split("(")[0]
        reason, text = CHECK_REASONS.get(check, ("contract", f"fails check {case.check}"))
        if check == "max_chars":
            text = f"has {len(case.failure_case):,} characters, more than the limit (DatasetConfig.max_chars)" if isinstance(case.failure_case, str) else text
        if check in MESSAGE_CHECKS and isinstance(case.failure_case, list):
            text = _message_failure(check, case.failure_case) or text
        if check == "valid_prompt" and isinstance(case.failure_case, str):  # a prompt given as text
            text = "is empty or only whitespace" if not case.failure_case.strip() else \
                f"has {len(case.failure_case):,} characters, more than the limit (DatasetConfig.max_chars)"
        if case.index is None or pd.isna(case.index):
            table_level.append(f"column '{case.column}': {case.check} ({case.failure_case})")
            continue
        failures[case.index].append((reason, str(case.column), text))
    if table_level:
        raise pa.errors.SchemaError(schema, df, "; ".join(table_level))
    return failures


PLAIN_TYPES = frozenset({str, list, dict, int, float, bool, type(None)})


def _may_fail(nullable: bool, checks: tuple, value: Any) -> bool:
    """Whether pandera could fail ``value`` in a column, asked of the column's own element-wise checks directly."""
    if type(value) not in PLAIN_TYPES:
        return True  # a null-like pandas might see differently: let pandera decide
    if value is None or (type(value) is float and value != value):  # None or NaN
        return not nullable
    try:
        for check in checks:
            if not check(value):
                return True
    except Exception:
        return True
    return False


def row_failures_of(schema: pa.DataFrameSchema, rows: list[dict[str, Any]]) -> dict[int, list[tuple[str, str, str]]]:
    """``row_failures`` of ``rows`` (keyed by position) with pandera run only on the rows a direct call of the schema's
    element-wise checks says may fail: the same failures, without pandera's cost per clean row (most of a big drop)."""
    columns = schema.columns
    if not all(check.element_wise for column in columns.values() for check in column.checks):
        suspects = list(range(len(rows)))
    else:
        plan = [(name, col.nullable, tuple(check._check_fn for check in col.checks)) for name, col in columns.items()]
        suspects = [i for i, row in enumerate(rows)
                    if any(_may_fail(nullable, checks, row.get(name)) for name, nullable, checks in plan)]
    if not suspects:
        return {}
    frame = pd.DataFrame({c: [rows[i].get(c) for i in suspects] for c in columns}, index=suspects, dtype=object)
    return row_failures(schema, frame)
