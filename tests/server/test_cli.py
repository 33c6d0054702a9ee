"""``python -m server``: flags generated from the settings, env under flags, --version, check."""

from __future__ import annotations

import dataclasses
import gc
import pathlib

import pytest

from server.__main__ import GC_YOUNG_THRESHOLD, _tune_gc, main
from server.settings import (
    Settings,
    SettingsError,
    display_default,
    parse_settings,
    settings_parser,
)


def _parse(argv: list[str], env: dict[str, str] | None = None) -> Settings:
    return parse_settings(settings_parser().parse_args(argv), env or {})


def test_help_lists_choices_bare_booleans_and_defaults_as_typed(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "--stt {embedded,deepgram,fake}" in out
    assert "--log-format {text,json}" in out
    assert "--allow-loopback-webhooks, --no-allow-loopback-webhooks" in out
    assert "default: data]" in out and "PosixPath" not in out
    assert "default: 25]" in out  # graceful_shutdown_s, not 25.0
    assert "TRIOSCRIBE_ADMIN_TOKEN]" in out  # secrets: no default shown
    assert "check [--migrate]" in out


def test_every_setting_has_a_flag_derived_from_the_dataclass() -> None:
    parser = settings_parser()
    flags = {opt for action in parser._actions for opt in action.option_strings}
    for f in dataclasses.fields(Settings):
        assert "--" + f.name.replace("_", "-") in flags, f.name


def test_boolean_flags_are_bare_and_have_no_forms() -> None:
    assert _parse(["--allow-loopback-webhooks"]).allow_loopback_webhooks is True
    assert _parse([]).allow_loopback_webhooks is False
    env = {"TRIOSCRIBE_ALLOW_LOOPBACK_WEBHOOKS": "yes"}
    assert _parse([], env).allow_loopback_webhooks is True
    assert _parse(["--no-allow-loopback-webhooks"], env).allow_loopback_webhooks is False


def test_flags_win_over_env_which_wins_over_defaults() -> None:
    env = {"TRIOSCRIBE_PORT": "9000", "TRIOSCRIBE_DATA_DIR": "/srv/x", "TRIOSCRIBE_VAD": "OFF"}
    settings = _parse(["--port", "9100"], env)
    assert (settings.port, settings.data_dir, settings.vad) == (9100, pathlib.Path("/srv/x"), "off")
    assert _parse(["--log-level", "debug"]).log_level == "DEBUG"  # choices: any case
    with pytest.raises(SettingsError, match="invalid setting port: cannot parse 'x' as int"):
        _parse([], {"TRIOSCRIBE_PORT": "x"})
    with pytest.raises(SettingsError, match="invalid setting stt: must be one of"):
        _parse([], {"TRIOSCRIBE_STT": "whisper"})
    with pytest.raises(SettingsError, match="listen_read_min_tick_ms: must be 1-1000"):
        _parse(["--listen-read-min-tick-ms", "0"])  # a 0 tick would poll a ready socket in a loop


def test_defaults_are_displayed_as_typed() -> None:
    assert [display_default(v) for v in (pathlib.Path("data"), 25.0, 0.5, False, None)] == [
        "data",
        "25",
        "0.5",
        "off",
        "unset",
    ]


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["--version"])
    assert capsys.readouterr().out.startswith("trioscribe ")


def _check(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, list[str]]:
    code = main(["check", *argv])
    return code, capsys.readouterr().out.splitlines()


def test_check_migrates_only_when_asked(
    capsys: pytest.CaptureFixture[str], tmp_path: pathlib.Path
) -> None:
    data = str(tmp_path / "data")
    code, lines = _check(capsys, "--data-dir", data)
    assert code == 1 and len(lines) == 1 and "migration(s) pending" in lines[0], lines
    assert not (tmp_path / "data").exists()  # nothing created without --migrate
    code, lines = _check(capsys, "--data-dir", data, "--migrate")
    assert code == 0 and len(lines) == 1 and "migrated from schema 0" in lines[0], lines
    code, lines = _check(capsys, "--data-dir", data)
    assert code == 0 and lines[0].startswith("ok: ") and "up to date" in lines[0], lines


def test_check_fails_in_one_line_on_bad_settings(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TRIOSCRIBE_STT", "deepgram")
    assert _check(capsys) == (
        1,
        [
            "check failed: invalid setting deepgram_api_key: is required when stt is deepgram"
            " (got None)"
        ],
    )
    assert _check(capsys, "--bogus") == (1, ["check failed: unrecognized arguments: --bogus"])


def test_check_reports_a_newer_schema(
    capsys: pytest.CaptureFixture[str], tmp_path: pathlib.Path
) -> None:
    import sqlite3

    with sqlite3.connect(tmp_path / "trioscribe.db") as db:
        db.execute("PRAGMA user_version = 999")
    code, lines = _check(capsys, "--data-dir", str(tmp_path), "--migrate")
    assert code == 1 and "newer than this server's" in lines[0], lines


def test_the_started_server_freezes_what_it_holds_and_collects_less_often() -> None:
    threshold = gc.get_threshold()
    try:
        _tune_gc()
        assert gc.get_freeze_count() > 0
        assert gc.get_threshold() == (GC_YOUNG_THRESHOLD, *threshold[1:])
    finally:
        gc.unfreeze()
        gc.set_threshold(*threshold)
