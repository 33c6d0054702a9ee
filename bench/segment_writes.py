"""The cost of one transcript-segment write on SQLite as the database ages.

A live session's current segment grows with every final and is written again each time (the
group commit: many sessions' writes in one transaction, see ``server.store._group``). P1's
steps reuse their users, so a later step resumes conversations that already hold a segment
per earlier step: the same writes then land in a bigger table. ``python -m bench.segment_writes``
prints JSON and a table: CPU microseconds per segment write, for ``ACTIVE`` conversations
whose current segment grows (a batch of ``BATCH`` random ones per commit), with 0 and
``HISTORY`` finished segments (~540 characters each) per conversation before them.

Two table layouts are measured: ``shipped`` (``transcript_segments`` as the migrations create
it: ``WITHOUT ROWID``, clustered by conversation) and ``rowid`` (an experiment only: the same
columns in a rowid table with a unique index, so rows lie in insertion order and the live
segments share the newest pages). The store's own functions do the writes, in one thread,
with no event loop: this is the database work alone.
"""

from __future__ import annotations

import json
import random
import tempfile
import time
from pathlib import Path
from typing import Any, Final

from server.store import SegmentRow
from server.store._conversations import create_conversation, save_segments_batch
from server.store._pool import connect
from server.store._tx import new_id
from server.store._users import create_user
from server.store.migrations import _SQL_CONVERSATIONS, apply_migrations

ACTIVE: Final = 1200
BATCH: Final = 100
ROUNDS: Final = 300
HISTORY: Final = 12
#: A finished segment's text, as the fake STT's tokens merge over a P1 session (~540 chars).
FINISHED_TEXT: Final = "seg1 0123abcd " * 38
#: The current segment keeps at most this many characters (it grows, then slides).
LIVE_CHARS: Final = 560


def _rowid_layout() -> str:
    """The shipped ``transcript_segments`` DDL, as a rowid table with a unique key instead."""
    table = _SQL_CONVERSATIONS[_SQL_CONVERSATIONS.index("CREATE TABLE transcript_segments") :]
    clustered = "PRIMARY KEY (conversation_id, id)\n) WITHOUT ROWID;"
    if clustered not in table:
        raise RuntimeError("transcript_segments changed: update the rowid experiment")
    return "DROP TABLE transcript_segments;\n" + table.replace(
        clustered, "UNIQUE (conversation_id, id)\n);"
    )


def _segment(conversation_id: str, segment_id: str, idx: int, text: str) -> SegmentRow:
    return SegmentRow(
        id=segment_id, conversation_id=conversation_id, idx=idx, text=text,
        speaker="SPEAKER_00", speaker_id=0, is_user=False, person_id=None,
        start_s=40.0 * idx, end_s=40.0 * idx + 1.0, stt_provider="fake",
    )  # fmt: skip


def measure(
    layout: str, history: int, *, active: int = ACTIVE, batch: int = BATCH, rounds: int = ROUNDS
) -> dict[str, Any]:
    """CPU and wall microseconds per segment write, and the file sizes after them."""
    with tempfile.TemporaryDirectory(prefix="bench-segments-") as directory:
        path = Path(directory) / "t.db"
        conn = connect(path)
        try:
            apply_migrations(conn)
            if layout == "rowid":
                conn.executescript(_rowid_layout())
            now = time.time()
            users = [create_user(conn, f"u{i}", now).id for i in range(active)]
            conversations = [
                create_conversation(conn, u, "omi", "en", 120.0, now).id for u in users
            ]
            for idx in range(history):
                for first in range(0, active, 200):
                    save_segments_batch(conn, [
                        (c, [_segment(c, new_id(), idx, FINISHED_TEXT)], [], now, now)
                        for c in conversations[first : first + 200]
                    ])  # fmt: skip
            live = {c: (new_id(), "") for c in conversations}
            rng = random.Random(1)
            cpu, wall = time.process_time(), time.perf_counter()
            for n in range(rounds):
                writes = []
                for c in rng.sample(conversations, batch):
                    segment_id, text = live[c]
                    text = f"{text} seg{n} {rng.getrandbits(32):08x}"[-LIVE_CHARS:]
                    live[c] = (segment_id, text)
                    row = _segment(c, segment_id, history, text.strip())
                    writes.append((c, [row], [], now + n, now))
                save_segments_batch(conn, writes)
            cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
            stored = conn.execute("SELECT COUNT(*) FROM transcript_segments").fetchone()[0]
            touched = sum(1 for _, text in live.values() if text)
        finally:
            conn.close()
        wal = path.with_name("t.db-wal")
        size = path.stat().st_size + (wal.stat().st_size if wal.exists() else 0)
    writes_done = rounds * batch
    return {"layout": layout, "history": history, "writes": writes_done,
            "cpu_us_per_write": round(cpu / writes_done * 1e6, 1),
            "wall_us_per_write": round(wall / writes_done * 1e6, 1),
            "file_mb": round(size / 1e6, 1), "segments_stored": stored,
            "segments_expected": active * history + touched}  # fmt: skip


def main() -> dict[str, Any]:
    runs = [measure(layout, history) for layout in ("shipped", "rowid") for history in (0, HISTORY)]
    return {"active": ACTIVE, "batch": BATCH, "rounds": ROUNDS, "runs": runs}


def table(out: dict[str, Any]) -> str:
    """The runs as a markdown table."""
    lines = ["| layout | finished segments per conversation | CPU µs per write | wall µs | file MB |",
             "|---|---|---|---|---|"]  # fmt: skip
    for r in out["runs"]:
        lines.append(f"| {r['layout']} | {r['history']} | {r['cpu_us_per_write']} | "
                     f"{r['wall_us_per_write']} | {r['file_mb']} |")  # fmt: skip
    return "\n".join(lines)


if __name__ == "__main__":
    result = main()
    print(json.dumps(result, indent=2))
    print(table(result))
