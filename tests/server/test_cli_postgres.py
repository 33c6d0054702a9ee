"""``check`` and ``token``/``user`` with ``--database-url``: the server's PostgreSQL store, never a
SQLite file in the data dir, never the password on screen."""

from __future__ import annotations

import pathlib
from collections.abc import Callable

import httpx
import psycopg
import pytest
import trio

from server.__main__ import main
from server.settings import Settings
from server.store import LATEST_VERSION
from tests.conftest import auth, start_server

PASSWORD = "s3cret-Pw"  # pgserver trusts local connections: any password is accepted


def _with_password(url: str) -> str:
    assert "postgres:@" in url, url
    return url.replace("postgres:@", f"postgres:{PASSWORD}@", 1)


def _run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    assert PASSWORD not in out + err
    return code, out, err


def _server_accepts(settings: Settings, token: str) -> int:
    async def request() -> int:
        with trio.fail_after(30):
            async with trio.open_nursery() as nursery:
                handle = await start_server(nursery, settings)
                async with httpx.AsyncClient(base_url=handle.url) as client:
                    response = await client.get("/v1/conversations", headers=auth(token))
                handle.request_shutdown(1.0)
        return response.status_code

    return trio.run(request)


@pytest.mark.slow  # about 1 s: four store openings, a migration and a server start
def test_check_and_tokens_use_the_database_url_and_never_the_data_dir(
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: pathlib.Path,
    make_settings: Callable[..., Settings],
    pg_url: str,
) -> None:
    url = _with_password(pg_url)
    data = tmp_path / "data"
    flags = ["--data-dir", str(data), "--database-url", url]

    code, out, _ = _run(capsys, "check", *flags)
    assert code == 1 and "postgresql://postgres:" in out, out
    assert f"no schema yet, {LATEST_VERSION} migration(s) pending" in out
    code, out, _ = _run(capsys, "check", *flags, "--migrate")
    assert code == 0 and f"migrated from schema 0 to {LATEST_VERSION}" in out, out
    code, out, _ = _run(capsys, "check", *flags)
    assert code == 0 and f"at schema {LATEST_VERSION} (up to date)" in out, out

    # Flags anywhere around the command; the variable works as well as the flag.
    code, raw, err = _run(capsys, *flags[:2], "token", "create", "alice", *flags[2:])
    assert code == 0 and raw.startswith("ts_") and raw.count("\n") == 1, err
    monkeypatch.setenv("TRIOSCRIBE_DATABASE_URL", url)
    code, listing, _ = _run(capsys, "token", "list", "alice", "--data-dir", str(data))
    assert code == 0 and [row.split("\t")[1] for row in listing.splitlines()] == ["USER", "alice"]
    code, _, err = _run(capsys, "token", "list", "nobody")
    assert code == 2 and "no user 'nobody'" in err

    assert not data.exists(), "nothing is written to the data dir with a database URL"
    assert _server_accepts(make_settings(database_url=pg_url), raw.strip()) == 200

    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute("UPDATE trioscribe_schema SET version = 999")
    code, out, _ = _run(capsys, "check", *flags, "--migrate")
    assert code == 1 and f"has schema 999, newer than this server's {LATEST_VERSION}" in out


def test_an_unreachable_database_fails_check_in_one_line_without_the_password(
    capsys: pytest.CaptureFixture[str], tmp_path: pathlib.Path
) -> None:
    url = f"postgresql://postgres:{PASSWORD}@/postgres?host={tmp_path}/no-server"
    code, out, _ = _run(capsys, "check", "--database-url", url, "--data-dir", str(tmp_path))
    assert code == 1 and out.count("\n") == 1 and "cannot connect to PostgreSQL" in out, out
    assert "postgresql://postgres:" in out and "No such file or directory" in out
    assert list(tmp_path.iterdir()) == []
