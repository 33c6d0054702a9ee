"""The realtime hand-off from a listen session to the webhook layer (webhooks, apps).

Both methods are synchronous and must never block: implementations put the data into
latest-wins slots or bounded buffers and return. A slow consumer can therefore never stall audio.
"""

from __future__ import annotations

from typing import Final, Protocol, final

__all__ = ["NO_HOOKS", "NoHooks", "RealtimeHooks"]


class RealtimeHooks(Protocol):
    """Receives a session's live data, without blocking."""

    def on_segments(
        self,
        user_id: str,
        session_id: str,
        conversation_id: str | None,
        segments: list[dict[str, object]],
    ) -> None:
        """New or changed transcript segments (Omi JSON shape) of a live session."""
        ...

    def on_audio(self, user_id: str, session_id: str, pcm16: bytes, sample_rate: int) -> None:
        """Decoded PCM16 mono audio of a live session, as it arrives."""
        ...

    def on_session_end(self, user_id: str, session_id: str) -> None:
        """The session ended: drop its buffers."""
        ...


@final
class NoHooks:
    """Hooks that do nothing (no integration configured)."""

    def on_segments(
        self,
        user_id: str,
        session_id: str,
        conversation_id: str | None,
        segments: list[dict[str, object]],
    ) -> None:
        """Ignore segments."""

    def on_audio(self, user_id: str, session_id: str, pcm16: bytes, sample_rate: int) -> None:
        """Ignore audio."""

    def on_session_end(self, user_id: str, session_id: str) -> None:
        """Nothing to drop."""


NO_HOOKS: Final = NoHooks()
