"""``python -m server token|user ...``: manage users and API tokens in the server's store.

Commands::

    token create USER [--label L]    create USER if missing; print ONLY the raw token
    token list [USER]                id, prefix, label, created, last used, revoked (never tokens)
    token revoke TOKEN_ID|PREFIX     revoke one token (a prefix must match exactly one token)
    user list                        id, name, created

It opens the store the settings name exactly as the server does (:func:`server.store.open_store`:
SQLite in ``--data-dir``, or PostgreSQL with ``--database-url``; the schema is migrated the same
way) inside ``trio.run``. Errors go to stderr as one line, exit 2.
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Final, NoReturn

import trio

from lanes import LaneError
from server.clock import wall_now
from server.logs import redact
from server.settings import Settings
from server.store import Store, StoreError, TokenInfo, User, open_store

__all__ = ["main"]

EXIT_OK: Final = 0
EXIT_ERROR: Final = 2
#: The same rule as ``POST /v1/admin/users``.
USER_NAME: Final = re.compile(r"^[A-Za-z0-9_.@-]{1,64}$")
PROG: Final = "python -m server"
TOKEN_HEADER: Final = "\t".join(
    ["ID", "USER", "PREFIX", "LABEL", "CREATED", "LAST_USED", "REVOKED"]
)
USER_HEADER: Final = "\t".join(["ID", "NAME", "CREATED"])


class CliError(Exception):
    """A one-line error for stderr (exit code 2)."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise CliError(message)


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(prog=PROG, add_help=False)
    groups = parser.add_subparsers(dest="group", required=True, parser_class=_Parser)
    token = groups.add_parser("token").add_subparsers(dest="command", required=True)
    create = token.add_parser("create")
    create.add_argument("user")
    create.add_argument("--label", default="")
    token.add_parser("list").add_argument("user", nargs="?")
    token.add_parser("revoke").add_argument("token_id")
    groups.add_parser("user").add_subparsers(dest="command", required=True).add_parser("list")
    return parser


def main(argv: Sequence[str], *, settings: Settings) -> int:
    """Run one command (``argv`` starts with ``token`` or ``user``) on the store ``settings``
    name; return the exit code."""
    try:
        args = _parser().parse_args(list(argv))
        output = trio.run(_dispatch, args, settings)
    except (CliError, StoreError, LaneError, OSError) as exc:
        print(f"{PROG}: {redact(_one_line(exc), settings.secret_values())}", file=sys.stderr)
        return EXIT_ERROR
    if output:
        print(output)
    return EXIT_OK


def _one_line(exc: Exception) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


async def _dispatch(args: argparse.Namespace, settings: Settings) -> str:
    async with open_store(settings, threads=1) as store:
        command = f"{args.group} {args.command}"
        if command == "token create":
            return await _create(store, args.user, args.label)
        if command == "token list":
            return await _list_tokens(store, args.user)
        if command == "token revoke":
            return await _revoke(store, args.token_id)
        return "\n".join([USER_HEADER, *map(_user_line, await store.list_users())])


async def _create(store: Store, name: str, label: str) -> str:
    if not USER_NAME.match(name):
        raise CliError(f"invalid user name {name!r}: use 1-64 characters of [A-Za-z0-9_.@-]")
    now = wall_now()
    user = await store.get_user_by_name(name) or await store.create_user(name, now)
    raw, _info = await store.create_token(user.id, label, now)
    return raw


async def _users(store: Store, name: str | None) -> list[User]:
    if name is None:
        return await store.list_users()
    user = await store.get_user_by_name(name)
    if user is None:
        raise CliError(f"no user {name!r}")
    return [user]


async def _list_tokens(store: Store, name: str | None) -> str:
    lines = [TOKEN_HEADER]
    for user in await _users(store, name):
        lines.extend(_token_line(user, info) for info in await store.list_tokens(user.id))
    return "\n".join(lines)


async def _revoke(store: Store, wanted: str) -> str:
    matches: list[tuple[User, TokenInfo]] = []
    for user in await store.list_users():
        for info in await store.list_tokens(user.id):
            if wanted in (info.id, info.prefix):
                matches.append((user, info))
    if not matches:
        raise CliError(f"no token with id or prefix {wanted!r}")
    if len(matches) > 1:
        raise CliError(f"{wanted!r} matches {len(matches)} tokens; use the token id")
    user, info = matches[0]
    await store.revoke_token(user.id, info.id, wall_now())
    return f"revoked {info.id} ({info.prefix}) of {user.name}"


def _time(value: float | None) -> str:
    if value is None:
        return "-"
    return datetime.fromtimestamp(value, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _token_line(user: User, info: TokenInfo) -> str:
    fields = [
        info.id,
        user.name,
        info.prefix,
        info.label or "-",
        _time(info.created_at),
        _time(info.last_used_at),
        _time(info.revoked_at),
    ]
    return "\t".join(fields)


def _user_line(user: User) -> str:
    return "\t".join([user.id, user.name, _time(user.created_at)])
