"""Function bodies in a real rehearsal: a down that restores a body in other words restores it.

A down usually recreates the previous version of a function from a copy of
its source, and copies get reformatted; whitespace and comments must not
fail the rollback item.  A changed constant must, with a diff that shows it.
"""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from harness.plan import load_plan
from harness.postgres import Server
from harness.rehearsal import FAILED, PASSED, Rehearsal

V1 = """\
CREATE OR REPLACE FUNCTION price(qty int, unit numeric) RETURNS numeric LANGUAGE plpgsql AS $fn$
DECLARE
    total numeric := qty * unit;
BEGIN
    IF qty >= 100 THEN
        total := total * 0.9;  -- bulk discount
    END IF;
    RETURN round(total, 2);
END
$fn$;
CREATE OR REPLACE FUNCTION label(qty int) RETURNS text LANGUAGE sql AS $fn$
    SELECT 'qty: ' || qty
$fn$;
"""
V2 = V1.replace("0.9", "0.85").replace("'qty: '", "'quantity: '")
# V1 again, reformatted: other indentation, comments and keyword case.
V1_REFORMATTED = """\
create or replace function price(qty int, unit numeric) returns numeric language plpgsql as $fn$
declare total numeric := qty*unit;
begin
  /* bulk orders get 10% off */
  if qty >= 100 then total := total*0.9; end if;
  return round(total, 2);
end $fn$;
create or replace function label(qty int) returns text language sql as $fn$ select 'qty: '||qty; $fn$;
"""


def _rehearse(pg_server: Server, tmp_path: Path, down: str) -> dict[str, tuple[str, str]]:
    migrations = {
        "1_price.sql": V1,
        "1_price.down.sql": "DROP FUNCTION price(int, numeric); DROP FUNCTION label(int);",
        "2_discount.sql": V2,
        "2_discount.down.sql": down,
    }
    (tmp_path / "migrations").mkdir()
    for name, text in migrations.items():
        (tmp_path / "migrations" / name).write_text(text)
    (tmp_path / "plans").mkdir()
    plan_path = tmp_path / "plans" / "p.yaml"
    plan_path.write_text(
        textwrap.dedent(
            """\
            migrations: migrations/
            rehearsal: {provider: embedded}
            defaults: {idempotent: true, rollback: true, backward_compatible: true, lint: false, locks: false}
            """
        )
    )
    with Rehearsal(load_plan(plan_path), pg_server) as rehearsal:
        return {item.id: (o.status, o.message) for item, o in rehearsal.run_all()}


def test_a_down_restoring_a_body_with_other_whitespace_and_comments_passes(
    pg_server: Server, tmp_path: Path
) -> None:
    results = _rehearse(pg_server, tmp_path, V1_REFORMATTED)
    assert results["2_discount::rollback"][0] == PASSED
    assert [(item, message) for item, (status, message) in results.items() if status != PASSED] == []


@pytest.mark.parametrize(
    ("edit", "expected"),
    [
        # A reformatted copy: the diff of the tokens shows the one statement that changed.
        (
            ("0.9;", "0.95;"),
            [
                "function public.price(integer, numeric): body changed:",
                "    (whitespace and comments left out, one statement a line)",
                "    -total := total * 0.9 ;",
                "    +total := total * 0.95 ;",
            ],
        ),
        (
            ("'qty: '", "'qty:'"),
            ["function public.label(integer): body changed: \"SELECT 'qty: ' || qty\" -> \"select 'qty:'||qty;\""],
        ),
    ],
)
def test_a_down_restoring_another_constant_fails_with_a_diff(
    pg_server: Server, tmp_path: Path, edit: tuple[str, str], expected: list[str]
) -> None:
    results = _rehearse(pg_server, tmp_path, V1_REFORMATTED.replace(*edit))
    status, message = results["2_discount::rollback"]
    assert status == FAILED
    lines = [line.strip() for line in message.splitlines()]
    for line in expected:
        assert any(found.endswith(line.strip()) for found in lines), f"{line!r} not in:\n{message}"
    assert sum("changed" in line for line in lines) == 1, message
