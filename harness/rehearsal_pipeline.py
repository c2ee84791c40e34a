"""The send-ahead pipeline: statements sent on the working connection before their results are needed.

After a tracked apply, the migration's second up, its down and its up again
go to the server in one message (each in a transaction that is rolled back),
together with the next migration's apply when the items still to run need
nothing from the working database.  The message is sent without waiting; a
marker row after each segment says it completed, and the results are read
(:meth:`Pipeline.land`) when an item needs them or before anything else uses
the connection (:attr:`harness.rehearsal_engine.Engine.conn`).  The server
thus runs the next message while the items of the migration before are
judged.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from psycopg import generators, pq

from . import tracking
from .rehearsal_model import as_script, tool_refusal, trackable_statements

if TYPE_CHECKING:
    from .rehearsal_engine import Engine

__all__ = ["Pipeline"]

# The column of the marker that ends each segment of a message sent ahead.
_SEGMENT = "harness.segment"


class Pipeline:
    """The messages of one rehearsal sent ahead on its working connection, and what they found."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.flight: list[tuple[int, str]] | None = None  # segments of the message sent and not yet read
        self.landed: dict[int, tracking.Delta] = {}  # applies done by a message sent ahead
        self.followed: int | None = None  # migration whose follow-up message went out before its apply was taken in

    # ------------------------------------------------------------------ one message, waited for

    def exchange(self, script: str) -> list[tracking.Delta]:
        """Send *script* (several statements, one message) and return its deltas in order."""
        conn = self.engine.conn
        cur = conn.cursor()
        # Migration text is trusted SQL, sent as written.
        cur.execute(script.encode(conn.info.encoding), prepare=False)  # type: ignore[call-overload]
        deltas = []
        column = tracking.DELTA_COLUMN.encode()
        while True:
            # The raw results: one column named DELTA_COLUMN, one text value.
            result = cur.pgresult
            if result is not None and result.status == pq.ExecStatus.TUPLES_OK and result.fname(0) == column:
                value = result.get_value(0, 0)
                assert value is not None
                deltas.append(tracking.parse_delta(bytes(value).decode()))
            if not cur.nextset():
                return deltas

    def recover(self) -> None:
        """Leave a transaction that a failed message left open."""
        conn = self.engine.conn
        if conn.info.transaction_status != pq.TransactionStatus.IDLE:
            conn.execute("ROLLBACK")

    # ------------------------------------------------------------------ what is sent

    def apply_script(self, index: int) -> str:
        """Migration *index*'s apply in one transaction, measured by the tracking functions."""
        migration = self.engine.migrations[index]
        changes = self.engine.selfcheck.changes_at(index)
        return f"BEGIN; {tracking.mark_sql()}; {as_script(migration.statements)}; {changes}; COMMIT"

    def ahead_parts(self, index: int) -> tuple[bool, bool]:
        """Whether migration *index* gets a tracked second up, and a tracked down and up again."""
        engine = self.engine
        migration = engine.migrations[index]
        cfg = engine.configs[migration.id]
        # Only where items will judge them: not for a schema-only rehearsal, nor inside the baseline.
        ahead = engine.measure and index > engine.baseline
        down = migration.down_statements
        return (
            ahead and cfg.idempotent,
            ahead and cfg.rollback and migration.reversible and down is not None and migration.down_transactional
            and tool_refusal(migration, "down") is None and trackable_statements(down),
        )

    def ahead_script(self, index: int) -> str | None:
        """The second up, down and up again of migration *index*, each in a rolled-back transaction."""
        migration = self.engine.migrations[index]
        again, down = self.ahead_parts(index)
        mark, up, changes = tracking.mark_sql(), as_script(migration.statements), self.engine.selfcheck.changes
        parts = []
        if again:
            parts.append(f"BEGIN; {mark}; {up}; {changes}; ROLLBACK")
        if down:
            assert migration.down_statements is not None
            parts.append(
                f"BEGIN; {mark}; {as_script(migration.down_statements)}; {changes}; {mark}; {up}; {changes}; ROLLBACK"
            )
        return "; ".join(parts) if parts else None

    def streamable(self, index: int) -> bool:
        """Whether the items of migration *index* need nothing from the working database at its position.

        Then the next migration may be applied before they run.
        """
        migration = self.engine.migrations[index]
        cfg = self.engine.configs[migration.id]
        if cfg.checks or migration.verify_sql is not None:
            return False
        if cfg.backward_compatible.enabled and cfg.backward_compatible.queries:
            return False
        _again, down = self.ahead_parts(index)
        return not (cfg.rollback and migration.reversible and not down)

    def apply_streamable(self, index: int) -> bool:
        """Whether migration *index* can be applied by a message sent ahead (no lock measurement, no failure rehearsal)."""
        engine = self.engine
        cfg = engine.configs[engine.migrations[index].id]
        return (
            engine.measure and index > engine.baseline and engine.trackable(index) and not cfg.locks.enabled
            and not engine.wants_atomic(index)
        )

    # ------------------------------------------------------------------ messages sent ahead

    def send_follow_up(self, index: int) -> None:
        """Send the second up, down and up again of migration *index* (applied), with the next apply when it may go."""
        segments: list[tuple[int, str, str]] = []
        ahead = self.ahead_script(index)
        if ahead is not None:
            segments.append((index, "ahead", ahead))
        nxt = index + 1
        if nxt < len(self.engine.migrations) and self.streamable(index) and self.apply_streamable(nxt):
            segments.append((nxt, "apply", self.apply_script(nxt)))
        if segments:
            self.send(segments)

    def send(self, segments: list[tuple[int, str, str]]) -> None:
        """Send the scripts of *segments* (index, kind, script) as one message, without waiting for the results.

        A marker after each segment says it completed.  The results are read
        when an item needs them (:meth:`land`), or before anything else uses
        the connection (the engine's ``conn`` property), so the server runs the
        message while the items of the migration before are judged.
        """
        text = "; ".join(
            f'{script}; SELECT \'{index}:{kind}\' AS "{_SEGMENT}"' for index, kind, script in segments
        )
        conn = self.engine.raw_conn
        conn.pgconn.send_query(text.encode(conn.info.encoding))
        conn.wait(generators.send(conn.pgconn))
        self.flight = [(index, kind) for index, kind, _ in segments]

    def land(self) -> None:
        """Read the results of the message in flight; keep what the segments that completed found."""
        self._take(self._receive())

    def _receive(self) -> dict[tuple[int, str], list[bytes]]:
        """The raw documents of each segment of the message in flight that completed, by (index, kind)."""
        flight, self.flight = self.flight, None
        if flight is None:
            return {}
        conn = self.engine.raw_conn
        results = conn.wait(generators.fetch_many(conn.pgconn))
        documents: list[bytes] = []
        completed: dict[tuple[int, str], list[bytes]] = {}
        for result in results:
            if result.status == pq.ExecStatus.FATAL_ERROR:
                break  # the server skipped the rest; the untracked path will say what failed
            if result.status != pq.ExecStatus.TUPLES_OK or result.nfields != 1:
                continue
            value = result.get_value(0, 0)
            if result.fname(0) == tracking.DELTA_COLUMN.encode() and value is not None:
                documents.append(bytes(value))
            elif result.fname(0) == _SEGMENT.encode() and value is not None:
                number, _, kind = bytes(value).decode().partition(":")
                completed[(int(number), kind)], documents = documents, []
        if conn.pgconn.transaction_status != pq.TransactionStatus.IDLE:
            conn.execute("ROLLBACK")
        return completed

    def _take(self, completed: dict[tuple[int, str], list[bytes]]) -> None:
        """Keep what the segments *completed* found: applies for later, the rest on their steps."""
        for (index, kind), documents in completed.items():
            found = [tracking.parse_delta(document.decode()) for document in documents]
            if kind == "apply":
                self.landed[index] = found[0]
                continue
            step = self.engine.steps[index]
            again, down = self.ahead_parts(index)
            if again:
                step.again = found.pop(0)
            if down:
                step.down, step.reup = found

    def await_ahead(self, index: int) -> bool:
        """Land the message with the second up, down and up again of migration *index*, if it is in flight.

        When the same message applied the next migration, that migration's
        own follow-up message goes out at once, before these results are
        parsed, the next state is computed and the items of *index* are
        judged: the server works meanwhile instead of waiting for the client.
        ``True`` when a message was landed (the engine then takes in the next
        apply it carried).
        """
        if self.flight is None or (index, "ahead") not in self.flight:
            return False
        completed = self._receive()
        nxt = index + 1
        early = (nxt, "apply") in completed and self.engine.broken is None and not self.engine.steps[nxt].applied
        if early:
            self.send_follow_up(nxt)
            self.followed = nxt
        self._take(completed)
        return True
