"""SQL checks from a plan (``checks:`` in rehearsals, ``health.checks`` in apply): judging their result.

One judgement for both places, so a check means the same in the rehearsal
and against production.
"""

from __future__ import annotations

import json
from typing import Any

from .plan import Check

__all__ = ["check_problem", "check_summary"]


def _normalise(value: Any) -> Any:
    if isinstance(value, (list, tuple)):
        return [_normalise(v) for v in value]
    if isinstance(value, (bool, int, float, str)) or value is None:
        return value
    return str(value)


def check_problem(check: Check, rows: list[tuple[Any, ...]]) -> str | None:
    """What is wrong with *rows* as the result of *check*, or ``None`` when it passed.

    ``rows``: the exact row set (values compared as written, or as text);
    ``expect``: exactly one value; neither: no error, and a single returned
    value must be true.
    """
    got = [_normalise(list(r)) for r in rows]
    if check.rows is not None:
        want = [_normalise(list(r)) for r in check.rows]
        if got != want and [[str(v) for v in r] for r in got] != [[str(v) for v in r] for r in want]:
            return (f"check {check.name!r}: rows differ\n    expected: {json.dumps(want, default=str)}\n"
                    f"    got:      {json.dumps(got, default=str)}\n    sql: {check.sql}")
        return None
    if check.expect is not None:
        if len(got) != 1 or len(got[0]) != 1:
            return (f"check {check.name!r}: expected one value {check.expect!r}, got {len(got)} rows: "
                    f"{json.dumps(got[:5], default=str)}\n    sql: {check.sql}")
        value = got[0][0]
        if value != check.expect and str(value) != str(check.expect):
            return f"check {check.name!r}: expected {check.expect!r}, got {value!r}\n    sql: {check.sql}"
        return None
    if len(got) == 1 and len(got[0]) == 1 and not got[0][0]:
        return f"check {check.name!r}: returned {got[0][0]!r}, expected a true value\n    sql: {check.sql}"
    return None


def check_summary(check: Check, rows: list[tuple[Any, ...]]) -> str:
    """A one-line description of a passed check's result."""
    if check.rows is not None:
        return f"{len(rows)} rows as expected"
    if check.expect is not None:
        return f"value {_normalise(rows[0][0])!r} as expected"
    return "ran without error"
