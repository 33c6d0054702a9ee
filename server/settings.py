"""Server settings: one frozen dataclass, filled from flags, then ``TRIOSCRIBE_*`` variables.

Every field name carries its unit (``_s`` seconds, ``_bytes``). Each field's metadata names its
command-line flag; the environment variable is ``TRIOSCRIBE_`` + the upper-cased field name
(``graceful_shutdown_s`` -> ``TRIOSCRIBE_GRACEFUL_SHUTDOWN_S``). Flags win over the environment,
the environment wins over the defaults. Invalid values fail at start with a one-line
:class:`SettingsError` naming the setting.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.metadata
import pathlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Final
from urllib.parse import urlsplit

__all__ = [
    "ENV_PREFIX",
    "Settings",
    "SettingsError",
    "add_arguments",
    "display_default",
    "parse_settings",
    "settings_from_argv",
    "settings_parser",
    "version",
]

ENV_PREFIX: Final = "TRIOSCRIBE_"
STT_PROVIDERS: Final = ("embedded", "deepgram", "fake")
VAD_MODES: Final = ("active", "off")
SUMMARISERS: Final = ("embedded", "openai")
LOG_LEVELS: Final = ("DEBUG", "INFO", "WARNING", "ERROR")
LOG_FORMATS: Final = ("text", "json")
LISTEN_TRANSPORTS: Final = ("fast", "hypercorn")


class SettingsError(ValueError):
    """A setting is invalid; the message names it and says why, on one line."""


def _setting(
    default: Any,
    help_text: str,
    *,
    secret: bool = False,
    choices: Sequence[str] | None = None,
) -> Any:
    """A settings field: its flag, env variable, ``--help`` line and validation derive from this.

    ``choices`` are checked (case-insensitively, stored as spelled here) and listed in ``--help``;
    ``secret`` values are masked in :meth:`Settings.redacted` and their defaults never shown.
    """
    metadata = {"help": help_text, "secret": secret, "choices": tuple(choices or ())}
    return field(default=default, metadata=metadata)


@dataclass(frozen=True, slots=True)
class Settings:
    """Everything the server can be configured with (see the module docstring for sources)."""

    # -- network and process
    host: str = _setting("127.0.0.1", "address to listen on")
    port: int = _setting(8000, "TCP port (0 picks a free one)")
    data_dir: pathlib.Path = _setting(pathlib.Path("data"), "directory for the SQLite database")
    graceful_shutdown_s: float = _setting(25.0, "SIGTERM/SIGINT drain deadline (keep < 30 s)")
    drain_readiness_s: float = _setting(
        1.0, "after SIGTERM, keep answering 503 / ready=false this long so balancers notice"
    )
    admin_token: str | None = _setting(None, "bearer token for /v1/admin endpoints", secret=True)
    log_level: str = _setting("INFO", "logging level", choices=LOG_LEVELS)
    log_format: str = _setting(
        "text", "log lines: text, or json (one object per line)", choices=LOG_FORMATS
    )
    # -- HTTP API
    http_max_body_bytes: int = _setting(1 << 20, "largest accepted HTTP request body")
    api_rate_per_s: float = _setting(20.0, "sustained API requests per second per user")
    api_burst: int = _setting(40, "API request burst per user before 429")
    ticket_ttl_s: float = _setting(60.0, "lifetime of a single-use WebSocket ticket")
    web_auth_timeout_s: float = _setting(
        5.0, "/v4/web/listen: time for the first message ({type: auth, token}) to arrive"
    )
    auth_jwks_url: str | None = _setting(
        None, "JWKS URL: accept JWT bearer tokens signed by its keys (Firebase, any OIDC)"
    )
    auth_issuer: str | None = _setting(
        None, "required JWT iss (https://securetoken.google.com/<p>)"
    )
    auth_audience: str | None = _setting(None, "required JWT aud (Firebase: the project id)")
    auth_jwks_refresh_s: float = _setting(3600.0, "how often the JWKS is re-fetched")
    auth_jwks_min_refresh_s: float = _setting(
        30.0, "least time between JWKS fetches (an unknown kid triggers one)"
    )
    # -- connections (server/guard)
    http_keep_alive_s: float = _setting(
        5.0, "idle keep-alive deadline; also bounds an incomplete request line and headers"
    )
    http_body_timeout_s: float = _setting(15.0, "deadline for receiving a request body (408)")
    send_timeout_s: float = _setting(
        10.0, "a write to a client blocked this long aborts the connection (<= idle timeout)"
    )
    unauthenticated_timeout_s: float = _setting(
        30.0, "a connection without an authenticated request is closed after this long"
    )
    max_unauthenticated_per_ip: int = _setting(
        256, "concurrent connections per client IP that have not authenticated yet (then 429)"
    )
    # -- storage
    storage_threads: int = _setting(4, "threads in the storage lane")
    storage_max_waiting: int = _setting(256, "storage calls allowed to queue before 503")
    database_url: str | None = _setting(
        None, "PostgreSQL URL (postgresql://...) to use instead of SQLite in data_dir", secret=True
    )
    workers: int = _setting(1, "server processes sharing the port (> 1 needs --database-url)")
    node_heartbeat_s: float = _setting(5.0, "how often this node marks itself alive in the store")
    node_ttl_s: float = _setting(
        30.0, "a node silent this long is dead; its sessions stop counting"
    )
    realtime_reload_s: float = _setting(
        15.0, "with --database-url: how often realtime webhook registrations are reloaded"
    )
    # -- listen sessions
    stt: str = _setting("embedded", "speech-to-text provider", choices=STT_PROVIDERS)
    vad: str = _setting("active", "voice activity gate before STT", choices=VAD_MODES)
    max_sessions: int = _setting(200, "server-wide cap on live /v4/listen sessions")
    max_sessions_per_user: int = _setting(4, "live /v4/listen sessions per user")
    ws_max_message_bytes: int = _setting(64 * 1024, "largest WebSocket message accepted (1009)")
    listen_transport: str = _setting(
        "fast",
        "/v4/listen WebSockets: fast (frames parsed on the socket) or hypercorn (its ASGI path)",
        choices=LISTEN_TRANSPORTS,
    )
    listen_read_tick_ms: int = _setting(
        300,
        "fast transport: under load, sessions' reads are woken in batches at most this often "
        "(0: each waits on its own socket); adds at most this to a segment's delivery",
    )
    listen_read_min_tick_ms: int = _setting(
        20,
        "fast transport: the read tick while the event loop has headroom (it grows with the "
        "loop's load up to --listen-read-tick-ms, which also bounds it; equal: a fixed tick); "
        "20 gives ~30 ms p99 segments below 30% load",
    )
    heartbeat_interval_s: float = _setting(10.0, "server 'ping' text frame interval")
    ws_max_frames_per_s: float = _setting(
        200.0, "sustained WebSocket frames per second per session (over budget: 1008)"
    )
    ws_frame_burst: int = _setting(1000, "WebSocket frames a session may send in a burst")
    idle_timeout_s: float = _setting(90.0, "close 1001 after this long without client data")
    conversation_timeout_s: float = _setting(120.0, "default silence before a conversation ends")
    sweeper_interval_s: float = _setting(30.0, "how often abandoned conversations are closed")
    stt_workers: int = _setting(2, "embedded STT worker processes")
    stt_streams_per_worker: int = _setting(3, "embedded STT streams per worker process")
    deepgram_url: str = _setting("wss://api.deepgram.com/v1/listen", "Deepgram live URL")
    deepgram_api_key: str | None = _setting(None, "Deepgram API key", secret=True)
    # -- processing and webhooks
    processing_workers: int = _setting(2, "concurrent conversation-processing workers")
    summariser: str = _setting("embedded", "conversation summariser", choices=SUMMARISERS)
    openai_base_url: str = _setting("https://api.openai.com/v1", "OpenAI-compatible API base URL")
    openai_api_key: str | None = _setting(None, "OpenAI-compatible API key", secret=True)
    openai_model: str = _setting("gpt-4o-mini", "chat model for summaries")
    allow_loopback_webhooks: bool = _setting(False, "allow http:// and loopback webhook URLs")
    webhook_timeout_s: float = _setting(15.0, "per-attempt webhook request timeout")
    webhook_workers: int = _setting(8, "concurrent durable webhook deliveries")
    day_summary_hour_utc: int = _setting(20, "hour (UTC) of the daily day_summary (-1: off)")

    def __post_init__(self) -> None:
        _validate(self)

    def redacted(self) -> dict[str, object]:
        """The settings as a dict with secrets masked, safe to log."""
        out: dict[str, object] = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            out[f.name] = "***" if f.metadata.get("secret") and value else value
        return out

    def secret_values(self) -> list[str]:
        """Every secret's literal value (and the password inside ``database_url``), for
        masking in anything printed or logged."""
        values = [
            value
            for f in dataclasses.fields(self)
            if f.metadata.get("secret") and (value := getattr(self, f.name))
        ]
        password = urlsplit(self.database_url).password if self.database_url else None
        return [*values, password] if password else values

    def __repr__(self) -> str:
        inner = ", ".join(f"{k}={v!r}" for k, v in self.redacted().items())
        return f"Settings({inner})"


_FIELDS: Final = {f.name: f for f in dataclasses.fields(Settings)}


def _validate(s: Settings) -> None:
    checks: list[tuple[str, bool, str]] = [
        ("port", 0 <= s.port <= 65535, "must be between 0 and 65535"),
        ("graceful_shutdown_s", 0 < s.graceful_shutdown_s <= 3600, "must be in (0, 3600]"),
        (
            "drain_readiness_s",
            0 <= s.drain_readiness_s <= s.graceful_shutdown_s,
            "must be between 0 and graceful_shutdown_s",
        ),
        ("http_max_body_bytes", s.http_max_body_bytes >= 1024, "must be >= 1024"),
        (
            "ws_max_message_bytes",
            1024 <= s.ws_max_message_bytes <= 16 << 20,
            "must be between 1024 and 16777216",
        ),
        ("api_rate_per_s", s.api_rate_per_s > 0, "must be > 0"),
        ("api_burst", s.api_burst >= 1, "must be >= 1"),
        ("storage_threads", 1 <= s.storage_threads <= 64, "must be between 1 and 64"),
        ("storage_max_waiting", s.storage_max_waiting >= 0, "must be >= 0"),
        (
            "database_url",
            s.database_url is None or s.database_url.startswith(("postgresql://", "postgres://")),
            "must be a postgresql:// URL",
        ),
        ("workers", 1 <= s.workers <= 64, "must be between 1 and 64"),
        (
            "workers",
            s.workers == 1 or s.database_url is not None,
            "above 1 needs --database-url (PostgreSQL): SQLite is one process's database",
        ),
        ("node_heartbeat_s", s.node_heartbeat_s > 0, "must be > 0"),
        ("realtime_reload_s", s.realtime_reload_s > 0, "must be > 0"),
        ("node_ttl_s", s.node_ttl_s >= 2 * s.node_heartbeat_s, "must be >= 2 x node_heartbeat_s"),
        ("max_sessions", s.max_sessions >= 1, "must be >= 1"),
        ("max_sessions_per_user", s.max_sessions_per_user >= 1, "must be >= 1"),
        ("listen_read_tick_ms", 0 <= s.listen_read_tick_ms <= 1000, "must be between 0 and 1000"),
        ("listen_read_min_tick_ms", 1 <= s.listen_read_min_tick_ms <= 1000, "must be 1-1000"),
        ("heartbeat_interval_s", s.heartbeat_interval_s > 0, "must be > 0"),
        ("idle_timeout_s", s.idle_timeout_s > 0, "must be > 0"),
        ("conversation_timeout_s", s.conversation_timeout_s > 0, "must be > 0"),
        ("sweeper_interval_s", s.sweeper_interval_s > 0, "must be > 0"),
        ("stt_workers", 1 <= s.stt_workers <= 64, "must be between 1 and 64"),
        ("stt_streams_per_worker", 1 <= s.stt_streams_per_worker <= 64, "must be between 1 and 64"),
        ("processing_workers", 1 <= s.processing_workers <= 64, "must be between 1 and 64"),
        ("webhook_workers", 1 <= s.webhook_workers <= 256, "must be between 1 and 256"),
        ("webhook_timeout_s", 0 < s.webhook_timeout_s <= 120, "must be in (0, 120]"),
        ("ticket_ttl_s", 0 < s.ticket_ttl_s <= 3600, "must be in (0, 3600]"),
        ("web_auth_timeout_s", 0 < s.web_auth_timeout_s <= 60, "must be in (0, 60]"),
        (
            "auth_jwks_url",
            s.auth_jwks_url is None or s.auth_jwks_url.startswith(("https://", "http://")),
            "must be an http(s) URL",
        ),
        ("auth_issuer", not s.auth_jwks_url or bool(s.auth_issuer), "is required with a JWKS"),
        ("auth_audience", not s.auth_jwks_url or bool(s.auth_audience), "is required with a JWKS"),
        ("auth_jwks_refresh_s", s.auth_jwks_refresh_s >= 60, "must be >= 60"),
        ("auth_jwks_min_refresh_s", s.auth_jwks_min_refresh_s >= 0, "must be >= 0"),
        ("http_keep_alive_s", 0 < s.http_keep_alive_s <= 3600, "must be in (0, 3600]"),
        ("http_body_timeout_s", 0 < s.http_body_timeout_s <= 3600, "must be in (0, 3600]"),
        ("send_timeout_s", 0 < s.send_timeout_s <= 3600, "must be in (0, 3600]"),
        (
            "unauthenticated_timeout_s",
            0 < s.unauthenticated_timeout_s <= 3600,
            "must be in (0, 3600]",
        ),
        ("max_unauthenticated_per_ip", s.max_unauthenticated_per_ip >= 1, "must be >= 1"),
        ("ws_max_frames_per_s", s.ws_max_frames_per_s > 0, "must be > 0"),
        ("ws_frame_burst", s.ws_frame_burst >= 1, "must be >= 1"),
        ("day_summary_hour_utc", -1 <= s.day_summary_hour_utc <= 23, "must be -1 or 0..23"),
        (
            "deepgram_api_key",
            s.stt != "deepgram" or bool(s.deepgram_api_key),
            "is required when stt is deepgram",
        ),
        (
            "openai_api_key",
            s.summariser != "openai" or bool(s.openai_api_key),
            "is required when summariser is openai",
        ),
    ]
    for f in dataclasses.fields(s):
        choices = f.metadata.get("choices")
        if choices:
            checks.append((f.name, getattr(s, f.name) in choices, f"must be one of {_or(choices)}"))
    for name, ok, why in checks:
        if not ok:
            secret = _FIELDS[name].metadata.get("secret")
            value = getattr(s, name)
            shown = "a hidden value" if secret and value is not None else repr(value)
            raise SettingsError(f"invalid setting {name}: {why} (got {shown})")


def _or(choices: Sequence[str]) -> str:
    return ", ".join(choices[:-1]) + " or " + choices[-1] if len(choices) > 1 else choices[0]


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _env(name: str) -> str:
    return ENV_PREFIX + name.upper()


def _base_type(f: dataclasses.Field[Any]) -> tuple[str, bool]:
    """The field's type as written (``from __future__ import annotations``) and whether it is
    optional: ``"int | None"`` -> ``("int", True)``."""
    parts = [p.strip() for p in str(f.type).split("|")]
    optional = "None" in parts
    rest = [p for p in parts if p != "None"]
    kind = rest[0] if len(rest) == 1 else str(f.type)
    return kind.removeprefix("pathlib."), optional


def _convert(f: dataclasses.Field[Any], raw: str) -> object:
    """Parse one flag or environment value for field ``f`` (one-line :class:`SettingsError`)."""
    kind, optional = _base_type(f)
    if optional and not raw.strip():
        return None
    try:
        if kind == "bool":
            lowered = raw.strip().lower()
            if lowered not in _TRUE | _FALSE:
                raise ValueError(raw)
            return lowered in _TRUE
        if kind == "int":
            return int(raw)
        if kind == "float":
            return float(raw)
        if kind == "Path":
            return pathlib.Path(raw)
    except ValueError:
        raise SettingsError(f"invalid setting {f.name}: cannot parse {raw!r} as {kind}") from None
    return _canonical_choice(f.metadata.get("choices", ()), raw)


_TRUE: Final = frozenset({"1", "true", "yes", "on"})
_FALSE: Final = frozenset({"0", "false", "no", "off"})


def _canonical_choice(choices: Sequence[str], raw: str) -> str:
    """``raw`` spelled as in ``choices`` when it matches one case-insensitively (``info`` ->
    ``INFO``); otherwise unchanged (validation then names the allowed values)."""
    for choice in choices:
        if raw.strip().lower() == choice.lower():
            return choice
    return raw


def display_default(value: object) -> str:
    """A default as a user would type it: ``data`` not ``PosixPath('data')``, ``25`` not
    ``25.0``, ``off``/``on`` for booleans, ``unset`` for ``None``."""
    if value is None:
        return "unset"
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def _help(f: dataclasses.Field[Any]) -> str:
    text = f"{f.metadata['help']} [env {_env(f.name)}"
    if not f.metadata.get("secret"):
        text += f"; default: {display_default(f.default)}"
    return (text + "]").replace("%", "%%")  # argparse %-formats help strings


def add_arguments(parser: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
    """Add one ``--flag`` per settings field to ``parser``.

    Booleans are bare flags with a ``--no-`` form; fields with choices list them (matched
    case-insensitively); other values stay strings until :func:`parse_settings` converts them,
    so a bad value fails with the same one line as a bad environment variable. Every default is
    ``None`` here: "not given on the command line", so the environment can fill it.
    """
    for f in dataclasses.fields(Settings):
        kind, _ = _base_type(f)
        choices = f.metadata.get("choices") or None
        if kind == "bool":
            parser.add_argument(
                _flag(f.name),
                dest=f.name,
                default=None,
                action=argparse.BooleanOptionalAction,
                help=_help(f),
            )
        elif choices:
            parser.add_argument(
                _flag(f.name),
                dest=f.name,
                default=None,
                choices=choices,
                type=partial(_canonical_choice, choices),
                help=_help(f),
            )
        else:
            parser.add_argument(
                _flag(f.name), dest=f.name, default=None, metavar=_metavar(f, kind), help=_help(f)
            )


def _metavar(f: dataclasses.Field[Any], kind: str) -> str:
    if f.metadata.get("secret"):
        return "SECRET"
    for suffix, unit in (("_s", "SECONDS"), ("_bytes", "BYTES"), ("_url", "URL")):
        if f.name.endswith(suffix):
            return unit
    return {"int": "N", "float": "NUMBER", "Path": "DIR"}.get(kind, "TEXT")


def parse_settings(
    args: argparse.Namespace | None = None, environ: Mapping[str, str] | None = None
) -> Settings:
    """Build :class:`Settings` from parsed flags and an environment mapping (flags win).

    Raises:
        SettingsError: a value cannot be parsed or is out of range.
    """
    environ = environ or {}
    values: dict[str, object] = {}
    for f in dataclasses.fields(Settings):
        raw = getattr(args, f.name, None) if args is not None else None
        if raw is None:
            raw = environ.get(_env(f.name))
        if raw is not None:
            values[f.name] = _convert(f, raw) if isinstance(raw, str) else raw
    return Settings(**values)  # type: ignore[arg-type]


def settings_parser(
    prog: str = "python -m server",
    *,
    parser_class: type[argparse.ArgumentParser] | None = None,
    **kwargs: Any,
) -> argparse.ArgumentParser:
    """An argument parser with every setting as a flag, ``--help`` and ``--version``."""
    kwargs.setdefault("usage", f"{prog} [options]")
    parser = (parser_class or argparse.ArgumentParser)(prog=prog, **kwargs)
    parser.add_argument("--version", action="version", version=f"trioscribe {version()}")
    add_arguments(parser)
    return parser


def version() -> str:
    """The installed trioscribe version (``unknown`` when run from a bare source tree)."""
    try:
        return importlib.metadata.version("trioscribe")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def settings_from_argv(argv: Sequence[str], environ: Mapping[str, str]) -> Settings:
    """Parse ``argv`` (flags only) and ``environ`` into settings."""
    return parse_settings(settings_parser().parse_args(list(argv)), environ)
