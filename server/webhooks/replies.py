"""App replies to realtime posts, kept per conversation until its ``memory_created`` event.

Omi's app shows an app's reply as a chat message; trioscribe relays each reply live as an
``app_message`` event *and* keeps it here, as an Omi chat message, so the conversation's
``memory_created`` event carries it in ``messages`` (where Omi's app reads replies).

In memory only, and bounded: at most ``max_conversations`` conversations (the oldest is
dropped, counted) and ``max_per_conversation`` replies each (later ones are dropped, counted).
A restart loses replies not yet taken; they were still delivered live as ``app_message``.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import final

__all__ = ["AppReplies", "AppRepliesStatistics"]


@dataclass(frozen=True, slots=True)
class AppRepliesStatistics:
    """Counters of :class:`AppReplies`.

    Attributes:
        conversations: conversations holding replies now.
        kept: replies added.
        taken: replies handed to a ``memory_created`` event.
        dropped: replies lost to a bound.
    """

    conversations: int
    kept: int
    taken: int
    dropped: int


@final
class AppReplies:
    """Replies (Omi chat messages) by conversation id; see the module docstring."""

    def __init__(self, *, max_conversations: int = 10_000, max_per_conversation: int = 20) -> None:
        self._max_conversations = max_conversations
        self._max_per_conversation = max_per_conversation
        self._by_conversation: OrderedDict[str, list[dict[str, object]]] = OrderedDict()
        self._kept = self._taken = self._dropped = 0

    def add(self, conversation_id: str, message: dict[str, object]) -> None:
        """Keep one reply for ``conversation_id``'s ``memory_created`` event."""
        replies = self._by_conversation.setdefault(conversation_id, [])
        if len(replies) >= self._max_per_conversation:
            self._dropped += 1
            return
        replies.append(message)
        self._kept += 1
        while len(self._by_conversation) > self._max_conversations:
            _, lost = self._by_conversation.popitem(last=False)
            self._dropped += len(lost)

    def take(self, conversation_id: str) -> list[dict[str, object]]:
        """Remove and return the conversation's replies (oldest first)."""
        replies = self._by_conversation.pop(conversation_id, [])
        self._taken += len(replies)
        return replies

    def statistics(self) -> AppRepliesStatistics:
        """A snapshot of the counters."""
        return AppRepliesStatistics(
            conversations=len(self._by_conversation),
            kept=self._kept,
            taken=self._taken,
            dropped=self._dropped,
        )
