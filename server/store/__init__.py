"""Storage: the :class:`Store` repository interface, its SQLite backend, and their types.

Handlers depend on :class:`Store` (:mod:`server.store.protocol`). :func:`open_store` opens the
store the settings name (SQLite in ``data_dir``, or PostgreSQL with ``database_url``; see
:mod:`server.store._open`); :func:`open_sqlite_store` owns the SQLite implementation (see
:mod:`server.store.sqlite` for the extension points and :mod:`server.store.migrations` for
adding schema steps).
"""

from server.store._db import (
    DbConnection as DbConnection,
    DbRow as DbRow,
    is_postgres as is_postgres,
    lock_clause as lock_clause,
)
from server.store._open import (
    StoreTarget as StoreTarget,
    open_store as open_store,
    store_target as store_target,
)
from server.store._tx import new_id as new_id, write_transaction as write_transaction
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
    SummaryFields as SummaryFields,
    TokenInfo as TokenInfo,
    User as User,
)
from server.store.protocol import (
    CompletionHook as CompletionHook,
    Store as Store,
    TransactionHook as TransactionHook,
)
from server.store.sqlite import (
    DB_FILENAME as DB_FILENAME,
    SqliteStore as SqliteStore,
    open_sqlite_store as open_sqlite_store,
)

__all__ = [
    "CONVERSATION_STATUSES",
    "CloseOutcome",
    "CompletionHook",
    "ConflictError",
    "Conversation",
    "ConversationStatus",
    "DB_FILENAME",
    "DbConnection",
    "DbRow",
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
    "StoreTarget",
    "StoreUnavailableError",
    "SummaryFields",
    "TokenInfo",
    "TransactionHook",
    "User",
    "VISIBILITIES",
    "ValidationError",
    "apply_migrations",
    "is_postgres",
    "lock_clause",
    "new_id",
    "open_sqlite_store",
    "open_store",
    "store_target",
    "write_transaction",
]
