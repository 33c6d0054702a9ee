"""The session registry's statistics (:class:`server.listen.registry.SessionRegistry`)."""

from __future__ import annotations

from dataclasses import dataclass, field

import trio

from server.listen.registry import SessionRegistry
from server.listen.session import SESSION_COUNTERS


@dataclass
class _Session:
    """A live session as the registry sees it, with counters set by the test."""

    session_id: str
    user_id: str
    values: list[int] = field(default_factory=lambda: [0] * len(SESSION_COUNTERS))

    @property
    def conversation_id(self) -> str | None:
        return None

    def push_event(self, event: dict[str, object]) -> bool:
        return True

    def request_drain(self) -> None:
        pass

    def request_conversation_end(self) -> trio.Event:
        return trio.Event()

    def counter_values(self) -> tuple[int, ...]:
        return tuple(self.values)


def test_totals_are_the_ended_sessions_plus_every_live_one() -> None:
    registry = SessionRegistry(max_sessions=10, max_per_user=10)
    assert registry.statistics().totals == dict.fromkeys(SESSION_COUNTERS, 0)
    sessions = [_Session(f"s{i}", "u") for i in range(3)]
    for i, session in enumerate(sessions):
        session.values = [i + 1 + k for k in range(len(SESSION_COUNTERS))]
        registry.admit(session)
    frames, persisted = (
        SESSION_COUNTERS.index("frames"),
        SESSION_COUNTERS.index("persisted_segments"),
    )
    totals = registry.statistics().totals
    assert totals["frames"] == 1 + 2 + 3 + 3 * frames
    registry.release(sessions[0])
    sessions[0].values[frames] = 1_000  # ended: what it had at release is kept, nothing later
    sessions[1].values[frames] += 10  # live: read at every snapshot
    again = registry.statistics().totals
    assert again["frames"] == totals["frames"] + 10
    assert again["persisted_segments"] == 1 + 2 + 3 + 3 * persisted
    registry.release(sessions[1])
    registry.release(sessions[2])
    assert registry.statistics().totals == again
    assert registry.statistics().live == 0
