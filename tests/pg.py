"""A real PostgreSQL for the suite: the ``pgserver`` wheel's server, once per pytest session.

``pg_server`` starts PostgreSQL 16 (shipped inside the wheel) in a temporary directory on a
Unix socket only, and deletes it at the end of the session. PostgreSQL refuses to run as root;
``pgserver`` handles that itself (verified as root and as a normal user): as root it runs
``initdb`` and ``postgres`` as a system user ``pgserver`` that it creates if needed, and opens
the directories on the way for it. Every test gets a schema of its own (``pg_url``), so tests
never see each other's rows and need no cleanup.
"""

from __future__ import annotations

import logging
import tempfile
import uuid
import warnings
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import psycopg
import pytest

__all__ = ["fresh_schema_url", "pg_server_url"]

LOGGER = logging.getLogger(__name__)


@pytest.fixture(scope="session", name="pg_server_url")
def pg_server_url() -> Iterator[str]:
    """The URL of the session's PostgreSQL (database ``postgres``, user ``postgres``)."""
    with warnings.catch_warnings():
        # platformdirs warns at import that XDG_RUNTIME_DIR is unset (CI): harmless here.
        warnings.simplefilter("ignore")
        import pgserver

    pgdata = Path(tempfile.mkdtemp(prefix="trioscribe-pg-")) / "data"
    server = pgserver.get_server(pgdata, cleanup_mode="delete")
    try:
        yield server.get_uri()
    finally:
        server.cleanup()


def fresh_schema_url(base_url: str) -> str:
    """Create an empty schema and return ``base_url`` with it as the ``search_path``."""
    schema = f"t_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(base_url, autocommit=True) as conn:
        conn.execute(f"CREATE SCHEMA {schema}")
    separator = "&" if "?" in base_url else "?"
    return f"{base_url}{separator}options={quote(f'-csearch_path={schema}')}"


@pytest.fixture(name="pg_url")
def pg_url(pg_server_url: str) -> str:
    """A PostgreSQL URL whose (empty) schema belongs to this test alone."""
    return fresh_schema_url(pg_server_url)
