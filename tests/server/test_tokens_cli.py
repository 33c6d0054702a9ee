"""The token CLI: create prints only the token, list never shows it, revoke, one-line errors."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import trio

from server.settings import Settings
from server.store import DB_FILENAME, TokenInfo, User, open_sqlite_store
from server.tokens_cli import main

TOKEN_RE = re.compile(r"^ts_[A-Za-z0-9_-]{43}$")
REPO = Path(__file__).resolve().parents[2]


def _run(capsys: pytest.CaptureFixture[str], data_dir: Path, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv), settings=Settings(data_dir=data_dir))
    out, err = capsys.readouterr()
    return code, out, err


def _authenticate(data_dir: Path, raw: str) -> User | None:
    async def check() -> User | None:
        async with open_sqlite_store(data_dir / DB_FILENAME) as store:
            return await store.authenticate(raw, 1e10)

    return trio.run(check)


def _tokens(data_dir: Path, name: str) -> list[TokenInfo]:
    async def tokens() -> list[TokenInfo]:
        async with open_sqlite_store(data_dir / DB_FILENAME) as store:
            user = await store.get_user_by_name(name)
            assert user is not None
            return await store.list_tokens(user.id)

    return trio.run(tokens)


def test_create_prints_only_a_working_token(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    code, out, err = _run(capsys, tmp_path, "token", "create", "alice", "--label", "laptop")
    assert (code, err) == (0, "")
    raw = out.removesuffix("\n")
    assert TOKEN_RE.match(raw), out
    user = _authenticate(tmp_path, raw)
    assert user is not None and user.name == "alice"
    code, second, _ = _run(capsys, tmp_path, "token", "create", "alice")  # existing user
    assert code == 0 and second != out
    assert [t.label for t in _tokens(tmp_path, "alice")] == ["laptop", ""]


def test_list_shows_prefixes_never_tokens(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    _, alice_raw, _ = _run(capsys, tmp_path, "token", "create", "alice", "--label", "ci")
    _, bob_raw, _ = _run(capsys, tmp_path, "token", "create", "bob")
    code, listing, err = _run(capsys, tmp_path, "token", "list")
    assert (code, err) == (0, "")
    assert alice_raw.strip() not in listing and bob_raw.strip() not in listing
    header, *rows = listing.splitlines()
    assert header.split("\t")[:4] == ["ID", "USER", "PREFIX", "LABEL"]
    assert [row.split("\t")[1:4] for row in rows] == [
        ["alice", alice_raw[:11], "ci"],
        ["bob", bob_raw[:11], "-"],
    ]
    code, only_bob, _ = _run(capsys, tmp_path, "token", "list", "bob")
    assert code == 0 and len(only_bob.splitlines()) == 2 and "alice" not in only_bob
    code, users, _ = _run(capsys, tmp_path, "user", "list")
    assert code == 0 and [row.split("\t")[1] for row in users.splitlines()] == [
        "NAME",
        "alice",
        "bob",
    ]


def test_revoke_by_id_and_by_prefix(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    raws = [_run(capsys, tmp_path, "token", "create", "alice")[1].strip() for _ in range(2)]
    first, second = _tokens(tmp_path, "alice")
    code, out, _ = _run(capsys, tmp_path, "token", "revoke", first.id)
    assert code == 0 and first.id in out
    assert _authenticate(tmp_path, raws[0]) is None
    assert _authenticate(tmp_path, raws[1]) is not None
    code, _, _ = _run(capsys, tmp_path, "token", "revoke", second.prefix)
    assert code == 0 and _authenticate(tmp_path, raws[1]) is None
    revoked = [t.revoked_at is not None for t in _tokens(tmp_path, "alice")]
    assert revoked == [True, True]


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["token", "revoke", "nope"], "no token with id or prefix 'nope'"),
        (["token", "list", "carol"], "no user 'carol'"),
        (["token", "create", "bad name!"], "invalid user name"),
        (["token", "frobnicate"], "invalid choice"),
        (["token"], "required"),
        ([], "required"),
    ],
)
def test_errors_are_one_line_on_stderr_with_code_2(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, argv: list[str], message: str
) -> None:
    code, out, err = _run(capsys, tmp_path, *argv)
    assert (code, out) == (2, "")
    assert err.count("\n") == 1 and message in err and err.startswith("python -m server: ")


@pytest.mark.slow
def test_as_a_subprocess_stdout_is_the_token_only(tmp_path: Path) -> None:
    script = (
        "import sys; from pathlib import Path; from server.settings import Settings; "
        "from server.tokens_cli import main; "
        "sys.exit(main(sys.argv[2:], settings=Settings(data_dir=Path(sys.argv[1]))))"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO)}

    def run(*argv: str) -> subprocess.CompletedProcess[str]:
        command = [sys.executable, "-c", script, str(tmp_path / "data"), *argv]
        return subprocess.run(command, capture_output=True, text=True, env=env, timeout=60)

    created = run("token", "create", "alice")
    assert created.returncode == 0, created.stderr
    assert TOKEN_RE.match(created.stdout.strip()) and created.stdout.count("\n") == 1
    failed = run("token", "revoke", "missing")
    assert failed.returncode == 2 and failed.stdout == "" and failed.stderr.count("\n") == 1
    assert _authenticate(tmp_path / "data", created.stdout.strip()) is not None
