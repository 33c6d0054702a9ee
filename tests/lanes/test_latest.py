"""LatestSlot and its consumer: newest wins, drops are counted exactly, close ends cleanly."""

from __future__ import annotations

import pytest
import trio
import trio.testing

from lanes import LaneClosedError, LatestSlot, start_latest_consumer


async def test_newest_item_replaces_unconsumed_ones() -> None:
    slot: LatestSlot[int] = LatestSlot("audio")
    for i in range(5):
        slot.put_nowait(i)
    assert await slot.get() == 4
    stats = slot.statistics()
    assert (stats.put, stats.delivered, stats.dropped, stats.pending) == (5, 1, 4, False)


async def test_get_waits_for_the_next_put(autojump_clock: trio.testing.MockClock) -> None:
    slot: LatestSlot[str] = LatestSlot()
    got: list[str] = []

    async def consume() -> None:
        got.append(await slot.get())

    async with trio.open_nursery() as nursery:
        nursery.start_soon(consume)
        await trio.testing.wait_all_tasks_blocked()
        assert got == []
        slot.put_nowait("a")
    assert got == ["a"]


async def test_get_always_checkpoints() -> None:
    slot: LatestSlot[int] = LatestSlot()
    slot.put_nowait(1)
    with trio.testing.assert_checkpoints():
        assert await slot.get() == 1


async def test_none_is_a_valid_item() -> None:
    slot: LatestSlot[int | None] = LatestSlot()
    slot.put_nowait(None)
    assert await slot.get() is None
    assert not slot.statistics().pending


async def test_close_delivers_the_rest_then_ends(autojump_clock: trio.testing.MockClock) -> None:
    slot: LatestSlot[int] = LatestSlot("s")
    slot.put_nowait(7)
    slot.close()
    with pytest.raises(LaneClosedError):
        slot.put_nowait(8)
    assert [item async for item in slot] == [7]
    with pytest.raises(trio.EndOfChannel):
        await slot.get()


async def test_close_wakes_a_waiting_get(autojump_clock: trio.testing.MockClock) -> None:
    slot: LatestSlot[int] = LatestSlot()
    async with trio.open_nursery() as nursery:

        async def consume() -> None:
            with pytest.raises(trio.EndOfChannel):
                await slot.get()

        nursery.start_soon(consume)
        await trio.testing.wait_all_tasks_blocked()
        slot.close()
    assert slot.statistics().closed


async def test_cancelled_get_leaves_the_item(autojump_clock: trio.testing.MockClock) -> None:
    slot: LatestSlot[int] = LatestSlot()
    with trio.move_on_after(1):
        await slot.get()
    slot.put_nowait(3)
    assert await slot.get() == 3


async def test_slow_consumer_sees_only_the_newest(autojump_clock: trio.testing.MockClock) -> None:
    """Producer puts every 1 s; the consumer needs 3.6 s per item: it must skip, never queue."""
    slot: LatestSlot[int] = LatestSlot("frames")
    seen: list[int] = []
    in_flight = 0
    peak = 0

    async def handle(item: int) -> None:
        nonlocal in_flight, peak
        in_flight += 1
        peak = max(peak, in_flight)
        seen.append(item)
        await trio.sleep(3.6)
        in_flight -= 1

    async with trio.open_nursery() as nursery:
        start_latest_consumer(nursery, slot, handle)
        for i in range(10):
            slot.put_nowait(i)
            await trio.sleep(1)
        slot.close()
    # t=0 item 0 starts; it ends at 3.6, when 3 is newest; 3 ends at 7.2, when 7 is newest;
    # 7 ends at 10.8, after 9 was put (t=9) and the slot closed (t=10): 9 is still delivered.
    assert seen == [0, 3, 7, 9]
    stats = slot.statistics()
    assert (stats.put, stats.delivered, stats.dropped) == (10, 4, 6)
    assert peak == 1


async def test_consumer_error_propagates_to_its_nursery() -> None:
    slot: LatestSlot[int] = LatestSlot()

    async def handle(item: int) -> None:
        await trio.lowlevel.checkpoint()
        raise KeyError(item)

    with pytest.RaisesGroup(KeyError):
        async with trio.open_nursery() as nursery:
            start_latest_consumer(nursery, slot, handle, name="failing")
            slot.put_nowait(1)
