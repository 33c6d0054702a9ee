"""Storage: the :class:`Store` repository interface, its SQLite backend, and their types.

Handlers depend on :class:`Store`; :func:`open_sqlite_store` owns the SQLite implementation
(see :mod:`server.store.sqlite` for the extension points and :mod:`server.store.migrations` for
adding schema steps).
"""

from server.store._validate import MAX_OFFSET as MAX_OFFSET
from server.store.errors import (
    ConflictError as ConflictError,
    NotFoundError as NotFoundError,
    SchemaTooNewError as SchemaTooNewError,
    StoreClosedError as StoreClosedError,
    StoreError as StoreError,
    StoreUnavailableError as StoreUnavailableError,
    ValidationError as ValidationError,
)
from server.store.migrations import (
    LATEST_VERSION as LATEST_VERSION,
    MIGRATIONS as MIGRATIONS,
    Migration as Migration,
    apply_migrations as apply_migrations,
)
from server.store.models import (
    CONVERSATION_STATUSES as CONVERSATION_STATUSES,
    VISIBILITIES as VISIBILITIES,
    CloseOutcome as CloseOutcome,
    Conversation as Conversation,
    ConversationStatus as ConversationStatus,
    ListQuery as ListQuery,
    Page as Page,
    SegmentRow as SegmentRow,
    StoreStatistics as StoreStatistics,
    TokenInfo as TokenInfo,
    User as User,
)
from server.store.repository import Store as Store, TransactionHook as TransactionHook
from server.store.sqlite import (
    DB_FILENAME as DB_FILENAME,
    SqliteStore as SqliteStore,
    open_sqlite_store as open_sqlite_store,
)

__all__ = [
    "CONVERSATION_STATUSES",
    "CloseOutcome",
    "ConflictError",
    "Conversation",
    "ConversationStatus",
    "DB_FILENAME",
    "LATEST_VERSION",
    "MAX_OFFSET",
    "ListQuery",
    "MIGRATIONS",
    "Migration",
    "NotFoundError",
    "Page",
    "SchemaTooNewError",
    "SegmentRow",
    "SqliteStore",
    "Store",
    "StoreClosedError",
    "StoreError",
    "StoreStatistics",
    "StoreUnavailableError",
    "TokenInfo",
    "TransactionHook",
    "User",
    "VISIBILITIES",
    "ValidationError",
    "apply_migrations",
    "open_sqlite_store",
]
