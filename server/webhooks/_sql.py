"""Webhook endpoints, the outbox and the delivery log: the synchronous SQLite side.

Every function runs in a storage-lane thread *inside* a write transaction that its caller
opened (``SqliteStore.run_in_transaction`` or ``complete_conversation(extra=...)``), so several
of them compose into one atomic step.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import replace
from typing import Final, cast

from server.store import DbConnection, DbRow, lock_clause, new_id
from server.webhooks.models import (
    Attempt,
    Delivery,
    DeliveryMode,
    DeliveryStatus,
    DueDelivery,
    Endpoint,
    OwnerKind,
)
from server.webhooks.signing import new_message_id

__all__ = [
    "LimitReachedError",
    "all_deliveries",
    "claim_due",
    "claim_message",
    "count_pending",
    "day_summary_users",
    "delete_endpoint",
    "disable_endpoint",
    "enqueue",
    "get_delivery",
    "get_endpoint",
    "insert_endpoint",
    "list_deliveries",
    "list_endpoints",
    "next_due",
    "realtime_endpoints",
    "record_attempt",
    "redeliver",
    "rotate_secret",
    "update_endpoint",
]

_ENDPOINT_COLUMNS: Final = (
    "id, user_id, owner_kind, name, url, kinds_json, interval_s, secret, previous_secret,"
    " previous_secret_until, enabled, disabled_reason, created_at, updated_at, delivery"
)
_DELIVERY_COLUMNS: Final = (
    "id, endpoint_id, user_id, kind, message_id, status, attempts, next_attempt_at,"
    " last_status, last_error, created_at, updated_at, finished_at"
)
#: Concurrent claimers (other nodes) skip the deliveries another one is leasing (PostgreSQL).
CLAIM_LOCK: Final = "FOR UPDATE OF d SKIP LOCKED"
#: Columns a PATCH may change (names come from this allow-list only).
UPDATABLE: Final = frozenset({"url", "interval_s", "enabled", "name", "kinds_json", "delivery"})


class LimitReachedError(Exception):
    """The user already has the most endpoints of this kind allowed."""


def _endpoint(row: DbRow) -> Endpoint:
    return Endpoint(
        id=row["id"],
        user_id=row["user_id"],
        owner_kind=cast(OwnerKind, row["owner_kind"]),
        name=row["name"],
        url=row["url"],
        kinds=tuple(json.loads(row["kinds_json"])),
        interval_s=row["interval_s"],
        secret=row["secret"],
        previous_secret=row["previous_secret"],
        previous_secret_until=row["previous_secret_until"],
        enabled=bool(row["enabled"]),
        disabled_reason=row["disabled_reason"],
        created_at=row["created_at"],
        updated_at=row["updated_at"],
        delivery=cast(DeliveryMode, row["delivery"]),
    )


def _delivery(row: DbRow, log: tuple[Attempt, ...] = ()) -> Delivery:
    return Delivery(
        id=row["id"],
        endpoint_id=row["endpoint_id"],
        user_id=row["user_id"],
        kind=row["kind"],
        message_id=row["message_id"],
        status=cast(DeliveryStatus, row["status"]),
        attempts=row["attempts"],
        next_attempt_at=row["next_attempt_at"],
        last_status=row["last_status"],
        last_error=row["last_error"],
        created_at=row["created_at"],
        updated_at=row["updated_at"],
        finished_at=row["finished_at"],
        attempt_log=log,
    )


# -- endpoints ---------------------------------------------------------------------------------


def insert_endpoint(conn: DbConnection, endpoint: Endpoint, max_per_user: int) -> None:
    """Insert ``endpoint`` unless its user already has ``max_per_user`` of its owner kind."""
    (count,) = conn.execute(
        "SELECT COUNT(*) FROM webhook_endpoints WHERE user_id = ? AND owner_kind = ?",
        (endpoint.user_id, endpoint.owner_kind),
    ).fetchone()
    if count >= max_per_user:
        raise LimitReachedError(f"at most {max_per_user} {endpoint.owner_kind}s per user")
    conn.execute(
        f"INSERT INTO webhook_endpoints ({_ENDPOINT_COLUMNS})"
        " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (
            endpoint.id,
            endpoint.user_id,
            endpoint.owner_kind,
            endpoint.name,
            endpoint.url,
            json.dumps(list(endpoint.kinds)),
            endpoint.interval_s,
            endpoint.secret,
            None,
            None,
            int(endpoint.enabled),
            None,
            endpoint.created_at,
            endpoint.updated_at,
            endpoint.delivery,
        ),
    )


def list_endpoints(conn: DbConnection, user_id: str, owner_kind: str) -> list[Endpoint]:
    """The user's endpoints of ``owner_kind``, oldest first."""
    rows = conn.execute(
        f"SELECT {_ENDPOINT_COLUMNS} FROM webhook_endpoints WHERE user_id = ? AND owner_kind = ?"
        " ORDER BY created_at, id",
        (user_id, owner_kind),
    )
    return [_endpoint(row) for row in rows]


def get_endpoint(
    conn: DbConnection, user_id: str, owner_kind: str, endpoint_id: str
) -> Endpoint | None:
    """One of the user's endpoints, or ``None`` (also when it is another user's)."""
    row = conn.execute(
        f"SELECT {_ENDPOINT_COLUMNS} FROM webhook_endpoints"
        " WHERE id = ? AND user_id = ? AND owner_kind = ?",
        (endpoint_id, user_id, owner_kind),
    ).fetchone()
    return _endpoint(row) if row else None


def update_endpoint(
    conn: DbConnection,
    user_id: str,
    owner_kind: str,
    endpoint_id: str,
    values: Mapping[str, object],
    now: float,
) -> Endpoint | None:
    """Set validated columns (from :data:`UPDATABLE`); re-enabling clears the disable reason."""
    assert set(values) <= UPDATABLE
    assignments = [f"{name} = :{name}" for name in values] + ["updated_at = :now"]
    if values.get("enabled") is not None:
        assignments.append(
            "disabled_reason = CASE WHEN :enabled <> 0 THEN NULL ELSE 'disabled' END"
        )
    conn.execute(
        f"UPDATE webhook_endpoints SET {', '.join(assignments)}"
        " WHERE id = :id AND user_id = :user_id AND owner_kind = :owner_kind",
        {**values, "now": now, "id": endpoint_id, "user_id": user_id, "owner_kind": owner_kind},
    )
    return get_endpoint(conn, user_id, owner_kind, endpoint_id)


def delete_endpoint(conn: DbConnection, user_id: str, owner_kind: str, endpoint_id: str) -> bool:
    """Delete an endpoint with its queued deliveries and log."""
    cursor = conn.execute(
        "DELETE FROM webhook_endpoints WHERE id = ? AND user_id = ? AND owner_kind = ?",
        (endpoint_id, user_id, owner_kind),
    )
    return cursor.rowcount == 1


def rotate_secret(
    conn: DbConnection,
    user_id: str,
    owner_kind: str,
    endpoint_id: str,
    secret: str,
    grace_until: float,
    now: float,
) -> Endpoint | None:
    """Make ``secret`` current; the old one is still signed with until ``grace_until``."""
    conn.execute(
        "UPDATE webhook_endpoints SET previous_secret = secret, previous_secret_until = ?,"
        " secret = ?, updated_at = ? WHERE id = ? AND user_id = ? AND owner_kind = ?",
        (grace_until, secret, now, endpoint_id, user_id, owner_kind),
    )
    return get_endpoint(conn, user_id, owner_kind, endpoint_id)


def disable_endpoint(conn: DbConnection, endpoint_id: str, reason: str, now: float) -> bool:
    """Disable an endpoint (e.g. it answered 410 Gone)."""
    cursor = conn.execute(
        "UPDATE webhook_endpoints SET enabled = 0, disabled_reason = ?, updated_at = ?"
        " WHERE id = ? AND enabled = 1",
        (reason, now, endpoint_id),
    )
    return cursor.rowcount == 1


def realtime_endpoints(conn: DbConnection, user_id: str | None) -> list[Endpoint]:
    """Enabled endpoints with a realtime kind (of one user, or of everyone)."""
    clause = "" if user_id is None else " AND user_id = :user"
    rows = conn.execute(
        f"SELECT {_ENDPOINT_COLUMNS} FROM webhook_endpoints WHERE enabled = 1{clause}"
        " AND EXISTS (SELECT 1 FROM json_each(kinds_json)"
        " WHERE value IN ('realtime_transcript', 'audio_bytes')) ORDER BY created_at, id",
        {"user": user_id},
    )
    return [_endpoint(row) for row in rows]


def day_summary_users(conn: DbConnection) -> list[str]:
    """Users with at least one enabled ``day_summary`` endpoint."""
    rows = conn.execute(
        "SELECT DISTINCT user_id FROM webhook_endpoints WHERE enabled = 1"
        " AND EXISTS (SELECT 1 FROM json_each(kinds_json) WHERE value = 'day_summary')"
        " ORDER BY user_id"
    )
    return [row["user_id"] for row in rows]


# -- the outbox --------------------------------------------------------------------------------


def enqueue(
    conn: DbConnection,
    user_id: str,
    kind: str,
    payload: bytes,
    content_type: str,
    now: float,
    dedupe_key: str | None = None,
    *,
    message_id: str | None = None,
    defer_once_apps_s: float = 0.0,
) -> int:
    """Queue one message (one ``webhook-id``) for every enabled endpoint of the user for ``kind``.

    Due at once, except for apps with ``delivery = 'once'``, which are due after
    ``defer_once_apps_s``: the caller means to attempt them itself (:func:`claim_message`) and
    the delivery workers only take them if it did not (it crashed). With ``dedupe_key``, an
    endpoint that already has that key is skipped.

    Returns:
        How many deliveries were queued.
    """
    endpoints = conn.execute(
        "SELECT id, owner_kind, delivery FROM webhook_endpoints WHERE user_id = ? AND enabled = 1"
        " AND EXISTS (SELECT 1 FROM json_each(kinds_json) WHERE value = ?)",
        (user_id, kind),
    ).fetchall()
    message_id = message_id or new_message_id()
    queued = 0
    for row in endpoints:
        endpoint_id = row["id"]
        once_app = row["owner_kind"] == "app" and row["delivery"] == "once"
        due = now + defer_once_apps_s if once_app else now
        cursor = conn.execute(
            "INSERT OR IGNORE INTO webhook_deliveries (id, endpoint_id, user_id, kind, message_id,"
            " dedupe_key, payload, content_type, status, next_attempt_at, created_at, updated_at)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, 'pending', ?, ?, ?)",
            (new_id(), endpoint_id, user_id, kind, message_id, dedupe_key, payload,
             content_type, due, now, now),
        )  # fmt: skip
        queued += cursor.rowcount
    return queued


def claim_due(conn: DbConnection, now: float, lease_s: float, limit: int) -> list[DueDelivery]:
    """Lease up to ``limit`` due deliveries: push ``next_attempt_at`` out, count the attempt.

    Deliveries whose endpoint is disabled are failed instead of claimed. A worker that dies
    while holding one leaves it to be claimed again once the lease has passed.
    """
    rows = conn.execute(
        f"SELECT d.{_DELIVERY_COLUMNS.replace(', ', ', d.')}, d.payload, d.content_type,"
        " e.enabled AS endpoint_enabled FROM webhook_deliveries d"
        " JOIN webhook_endpoints e ON e.id = d.endpoint_id"
        " WHERE d.status = 'pending' AND d.next_attempt_at <= ?"
        f" ORDER BY d.next_attempt_at, d.id LIMIT ?{lock_clause(conn, CLAIM_LOCK)}",
        (now, limit),
    ).fetchall()
    return _lease(conn, rows, now, lease_s)


def claim_message(
    conn: DbConnection, message_id: str, now: float, lease_s: float
) -> list[DueDelivery]:
    """Lease the pending deliveries of one message to apps with ``delivery = 'once'``, due or not.

    Their enqueuer attempts them at once (to put the replies into its event); the delivery
    workers see them leased, and take them only if the lease passes unrecorded.
    """
    rows = conn.execute(
        f"SELECT d.{_DELIVERY_COLUMNS.replace(', ', ', d.')}, d.payload, d.content_type,"
        " e.enabled AS endpoint_enabled FROM webhook_deliveries d"
        " JOIN webhook_endpoints e ON e.id = d.endpoint_id"
        " WHERE d.message_id = ? AND d.status = 'pending' AND d.attempts = 0"
        " AND e.owner_kind = 'app' AND e.delivery = 'once'"
        f" ORDER BY d.id{lock_clause(conn, CLAIM_LOCK)}",
        (message_id,),
    ).fetchall()
    return _lease(conn, rows, now, lease_s)


def _lease(conn: DbConnection, rows: list[DbRow], now: float, lease_s: float) -> list[DueDelivery]:
    claimed: list[DueDelivery] = []
    for row in rows:
        if not row["endpoint_enabled"]:
            _finish(conn, row["id"], "failed", now, None, "endpoint disabled")
            continue
        conn.execute(
            "UPDATE webhook_deliveries SET attempts = attempts + 1, next_attempt_at = ?,"
            " updated_at = ? WHERE id = ?",
            (now + lease_s, now, row["id"]),
        )
        endpoint = conn.execute(
            f"SELECT {_ENDPOINT_COLUMNS} FROM webhook_endpoints WHERE id = ?",
            (row["endpoint_id"],),
        ).fetchone()
        delivery = _delivery(row)
        leased = _replace_attempts(delivery, delivery.attempts + 1, now + lease_s)
        claimed.append(
            DueDelivery(leased, _endpoint(endpoint), bytes(row["payload"]), row["content_type"])
        )
    return claimed


def _replace_attempts(delivery: Delivery, attempts: int, lease_until: float) -> Delivery:
    return replace(delivery, attempts=attempts, next_attempt_at=lease_until)


def record_attempt(
    conn: DbConnection,
    delivery_id: str,
    attempt: Attempt,
    *,
    outcome: DeliveryStatus,
    next_attempt_at: float | None,
    disable_reason: str | None = None,
) -> None:
    """Log one attempt and move the delivery on (pending again, delivered, or failed).

    ``disable_reason`` also disables the delivery's endpoint (410 Gone).
    """
    conn.execute(
        "INSERT INTO webhook_attempts"
        " (delivery_id, attempt, started_at, duration_s, status, error) VALUES (?, ?, ?, ?, ?, ?)"
        " ON CONFLICT (delivery_id, attempt) DO UPDATE SET started_at = excluded.started_at,"
        " duration_s = excluded.duration_s, status = excluded.status, error = excluded.error",
        (delivery_id, attempt.attempt, attempt.started_at, attempt.duration_s, attempt.status,
         attempt.error),
    )  # fmt: skip
    now = attempt.started_at + attempt.duration_s
    if outcome == "pending":
        conn.execute(
            "UPDATE webhook_deliveries SET next_attempt_at = ?, last_status = ?, last_error = ?,"
            " updated_at = ? WHERE id = ? AND status = 'pending'",
            (next_attempt_at, attempt.status, attempt.error, now, delivery_id),
        )
    else:
        _finish(conn, delivery_id, outcome, now, attempt.status, attempt.error)
    if disable_reason is not None:
        conn.execute(
            "UPDATE webhook_endpoints SET enabled = 0, disabled_reason = ?, updated_at = ?"
            " WHERE id = (SELECT endpoint_id FROM webhook_deliveries WHERE id = ?)",
            (disable_reason, now, delivery_id),
        )


def _finish(
    conn: DbConnection,
    delivery_id: str,
    status: str,
    now: float,
    last_status: int | None,
    last_error: str | None,
) -> None:
    conn.execute(
        "UPDATE webhook_deliveries SET status = ?, next_attempt_at = NULL, finished_at = ?,"
        " updated_at = ?, last_status = COALESCE(?, last_status), last_error = ? WHERE id = ?",
        (status, now, now, last_status, last_error, delivery_id),
    )


def next_due(conn: DbConnection) -> float | None:
    """When the earliest pending delivery is due (or its lease ends), or ``None``."""
    (due,) = conn.execute(
        "SELECT MIN(next_attempt_at) FROM webhook_deliveries WHERE status = 'pending'"
    ).fetchone()
    return None if due is None else float(due)


def count_pending(conn: DbConnection) -> int:
    """Deliveries not yet delivered or given up."""
    (count,) = conn.execute(
        "SELECT COUNT(*) FROM webhook_deliveries WHERE status = 'pending'"
    ).fetchone()
    return int(count)


# -- the delivery log --------------------------------------------------------------------------


def list_deliveries(
    conn: DbConnection, user_id: str, owner_kind: str, endpoint_id: str, limit: int
) -> list[Delivery] | None:
    """The endpoint's newest deliveries with their attempts; ``None`` if not the user's."""
    if get_endpoint(conn, user_id, owner_kind, endpoint_id) is None:
        return None
    rows = conn.execute(
        f"SELECT {_DELIVERY_COLUMNS} FROM webhook_deliveries WHERE endpoint_id = ?"
        " ORDER BY created_at DESC, id DESC LIMIT ?",
        (endpoint_id, limit),
    ).fetchall()
    return [_delivery(row, _attempts(conn, row["id"])) for row in rows]


def _attempts(conn: DbConnection, delivery_id: str) -> tuple[Attempt, ...]:
    rows = conn.execute(
        "SELECT attempt, started_at, duration_s, status, error FROM webhook_attempts"
        " WHERE delivery_id = ? ORDER BY attempt",
        (delivery_id,),
    )
    return tuple(Attempt(*tuple(row)) for row in rows)


def redeliver(
    conn: DbConnection,
    user_id: str,
    owner_kind: str,
    endpoint_id: str,
    delivery_id: str,
    now: float,
) -> Delivery | None:
    """Queue a logged delivery again (same ``webhook-id`` and payload, a fresh schedule)."""
    if get_endpoint(conn, user_id, owner_kind, endpoint_id) is None:
        return None
    row = conn.execute(
        "SELECT kind, message_id, payload, content_type FROM webhook_deliveries"
        " WHERE id = ? AND endpoint_id = ?",
        (delivery_id, endpoint_id),
    ).fetchone()
    if row is None:
        return None
    new = new_id()
    conn.execute(
        "INSERT INTO webhook_deliveries (id, endpoint_id, user_id, kind, message_id, payload,"
        " content_type, status, next_attempt_at, created_at, updated_at)"
        " VALUES (?, ?, ?, ?, ?, ?, ?, 'pending', ?, ?, ?)",
        (new, endpoint_id, user_id, row["kind"], row["message_id"], row["payload"],
         row["content_type"], now, now, now),
    )  # fmt: skip
    created = conn.execute(
        f"SELECT {_DELIVERY_COLUMNS} FROM webhook_deliveries WHERE id = ?", (new,)
    ).fetchone()
    return _delivery(created)


def get_delivery(conn: DbConnection, delivery_id: str) -> Delivery | None:
    """One delivery with its attempt log (tests, workers)."""
    row = conn.execute(
        f"SELECT {_DELIVERY_COLUMNS} FROM webhook_deliveries WHERE id = ?", (delivery_id,)
    ).fetchone()
    return _delivery(row, _attempts(conn, delivery_id)) if row else None


def all_deliveries(conn: DbConnection, user_id: str) -> list[Delivery]:
    """Every delivery of a user, oldest first, with attempts (tests and diagnostics)."""
    rows = conn.execute(
        f"SELECT {_DELIVERY_COLUMNS} FROM webhook_deliveries WHERE user_id = ?"
        " ORDER BY created_at, id",
        (user_id,),
    ).fetchall()
    return [_delivery(row, _attempts(conn, row["id"])) for row in rows]
