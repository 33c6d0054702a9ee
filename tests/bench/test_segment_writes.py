"""``python -m bench.segment_writes``, run small: both layouts store what was written."""

from __future__ import annotations

import pytest

from bench import segment_writes


@pytest.mark.parametrize("layout", ["shipped", "rowid"])
def test_both_layouts_store_every_segment_once(layout: str) -> None:
    out = segment_writes.measure(layout, 2, active=20, batch=5, rounds=6)
    assert out["writes"] == 30 and out["cpu_us_per_write"] > 0
    assert out["segments_stored"] == out["segments_expected"] > 40  # 2 finished each + live ones


def test_the_table_has_a_row_per_run() -> None:
    runs = [segment_writes.measure("shipped", h, active=4, batch=2, rounds=2) for h in (0, 1)]
    text = segment_writes.table({"runs": runs})
    assert text.count("\n| shipped |") == 2


def test_the_rowid_experiment_is_the_shipped_table_unclustered() -> None:
    ddl = segment_writes._rowid_layout()
    assert "WITHOUT ROWID" not in ddl and "UNIQUE (conversation_id, id)" in ddl
    assert "transcript_segments_in_order" in ddl  # the index the drop removed comes back
