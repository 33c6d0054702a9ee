"""/v4/listen end to end: a real server on port 0, a real WebSocket client, the fake STT."""

from __future__ import annotations

import pathlib
import sqlite3
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

import httpx
import pytest
import trio
from trio_websocket import ConnectionClosed

from server.listen.session import ListenSession
from server.serve import ServerHandle
from server.settings import Settings
from server.store.sqlite import DB_FILENAME
from server.stt.fake import FakeStream, FakeSttProvider, fake_text
from server.testing import (
    RATE,
    ListenClient,
    Received,
    frames,
    open_listen,
    pcm,
)
from tests.conftest import auth, create_user_token, start_server
from tests.helpers import wait_until

SECOND = RATE * 2


async def _token(server: ServerHandle, name: str = "alice") -> str:
    async with httpx.AsyncClient(base_url=server.url) as client:
        return await create_user_token(client, name)


def _expected(audio: bytes, seconds: int) -> list[str]:
    return [fake_text(i, audio[i * SECOND : (i + 1) * SECOND]) for i in range(seconds)]


async def _refusal(server: ServerHandle, query: str, token: str | None) -> Received:
    async with open_listen(server.url, query=query, token=token) as ws:
        return await ws.read_to_close()


async def test_streams_segments_back_in_order_and_persists_them(server: ServerHandle) -> None:
    audio = pcm(3.0)
    with trio.fail_after(20):
        token = await _token(server)
        async with open_listen(server.url, token=token) as ws:
            received = ws.received
            await ws.read_until(lambda r: "ready" in [e.get("status") for e in r.events])
            for frame in frames(audio):
                await ws.send_frame(frame)
            await ws.read_until(lambda r: r.has("seg2 "))
        async with httpx.AsyncClient(base_url=server.url) as client:
            listed = await client.get("/v1/conversations?statuses=in_progress", headers=auth(token))
            cid = listed.json()[0]["id"]
            stored = (await client.get(f"/v1/conversations/{cid}", headers=auth(token))).json()
    statuses = [e["status"] for e in received.events if e["type"] == "service_status"]
    assert statuses == ["initiating", "stt_initiating", "ready"]
    assert received.joined() == " ".join(_expected(audio, 3))
    segment = received.segments[received.order[0]]
    assert segment["speaker"] == "SPEAKER_00" and segment["start"] == pytest.approx(0.0, abs=0.5)
    assert segment["end"] == pytest.approx(3.0, abs=0.5)
    stored_text = " ".join(s["text"] for s in stored["transcript_segments"])
    assert stored_text == " ".join(_expected(audio, 3))
    assert stored["status"] == "in_progress"


async def test_auth_failures_close_1008_and_tickets_are_single_use(server: ServerHandle) -> None:
    with trio.fail_after(20):
        token = await _token(server)
        missing = await _refusal(server, "codec=pcm16&sample_rate=16000", None)
        wrong = await _refusal(server, "codec=pcm16&sample_rate=16000", "ts_wrong")
        async with httpx.AsyncClient(base_url=server.url) as client:
            ticket = (await client.post("/v1/listen/tickets", headers=auth(token))).json()["ticket"]
        query = f"codec=pcm16&sample_rate=16000&ticket={ticket}"
        async with open_listen(server.url, query=query) as ws:
            first = await ws.read_until(lambda r: "ready" in [e.get("status") for e in r.events])
        reused = await _refusal(server, query, None)
    assert (missing.close_code, wrong.close_code, reused.close_code) == (1008, 1008, 1008)
    assert "Bearer" in (missing.close_reason or "")
    assert first.close_code is None


@pytest.mark.parametrize(
    ("query", "code", "words"),
    [
        ("codec=mp3&sample_rate=16000", 1003, "codec"),
        ("codec=pcm16&sample_rate=16000&channels=2", 1003, "channels"),
        ("codec=pcm16&sample_rate=44100", 1008, "sample_rate"),
        ("codec=pcm16&sample_rate=16000&conversation_timeout=abc", 1008, "conversation_timeout"),
    ],
    ids=["codec", "channels", "sample-rate", "timeout"],
)
async def test_invalid_parameters_close_with_a_reason(
    server: ServerHandle, query: str, code: int, words: str
) -> None:
    with trio.fail_after(10):
        token = await _token(server)
        refused = await _refusal(server, query, token)
    assert refused.close_code == code
    assert words in (refused.close_reason or "")


async def test_stt_service_is_a_preference_logged_once_per_value(
    server: ServerHandle, caplog: pytest.LogCaptureFixture
) -> None:
    """Omi's app always sends its preferred model (``stt_service=soniox``): accepted, served by
    the configured provider, and logged once per distinct value."""
    query = "codec=pcm16&sample_rate=16000&stt_service=soniox-omi-test"
    caplog.set_level("INFO", logger="server.listen.params")
    with trio.fail_after(20):
        token = await _token(server)
        for _ in range(2):
            async with open_listen(server.url, query=query, token=token) as ws:
                await ws.wait_ready()
                await ws.send_frame(pcm(1.0))
                await ws.wait_for_text("seg0 ")
    logged = [r.getMessage() for r in caplog.records if "soniox-omi-test" in r.getMessage()]
    assert len(logged) == 1 and "'fake'" in logged[0]


async def test_bad_input_non_json_text_and_huge_frames(server: ServerHandle) -> None:
    with trio.fail_after(20):
        token = await _token(server)
        async with open_listen(server.url, token=token) as ws:
            await ws.send_frame(b"\x00" * (server.context.settings.ws_max_message_bytes + 1))
            huge = await ws.read_to_close()
        async with open_listen(server.url, token=token) as ws:
            # Omi ignores text it cannot use: not JSON, unparsable (nesting deeper than the
            # parser's recursion limit), not an object; none of it closes the session.
            await ws.send_text("not json")
            await ws.send_text("[" * 5000 + "]" * 5000)
            await ws.send_text('["an array"]')
            await ws.send_text('{"type": "speaker_assigned", "speaker_id": 1}')
            await ws.send_frame(b"\x01")  # keepalive frames of <= 2 bytes are ignored
            await ws.send_frame(b"\x01\x02\x03")  # odd length: a bad PCM16 frame, skipped
            for frame in frames(pcm(1.0)):
                await ws.send_frame(frame)
            fine = await ws.read_until(lambda r: len(r.segments) >= 1)
            ignored = server.context.sessions.statistics().totals["ignored_text"]
    assert huge.close_code == 1009
    assert ignored == 3
    assert fine.close_code is None and len(fine.segments) == 1


async def test_garbage_opus_is_counted_and_skipped(server: ServerHandle) -> None:
    with trio.fail_after(20):
        token = await _token(server)
        async with open_listen(server.url, query="codec=opus&sample_rate=16000", token=token) as ws:
            for _ in range(5):
                await ws.send_frame(b"\xff\xfe garbage opus packet \x00\x01")
            await ws.send_text('{"type": "ping_probe"}')
            received = await ws.read_until(lambda r: "ready" in [e.get("status") for e in r.events])
    assert received.close_code is None


async def test_session_caps_close_1013(
    nursery: trio.Nursery, make_settings: Callable[..., Settings]
) -> None:
    server = await start_server(nursery, make_settings(max_sessions_per_user=1, max_sessions=2))
    with trio.fail_after(20):
        alice = await _token(server, "alice")
        bob = await _token(server, "bob")
        carol = await _token(server, "carol")
        async with open_listen(server.url, token=alice) as first:
            await first.read_until(lambda r: len(r.events) >= 3)
            second = await _refusal(server, "codec=pcm16&sample_rate=16000", alice)
            async with open_listen(server.url, token=bob) as other:
                await other.read_until(lambda r: len(r.events) >= 3)
                full = await _refusal(server, "codec=pcm16&sample_rate=16000", carol)
    assert second.close_code == 1013 and "user" in (second.close_reason or "")
    assert full.close_code == 1013 and "capacity" in (full.close_reason or "")


async def test_stt_capacity_closes_1013(
    nursery: trio.Nursery, make_settings: Callable[..., Settings]
) -> None:
    from server.serve import serve

    server: ServerHandle = await nursery.start(
        lambda task_status: serve(
            make_settings(), stt_provider=FakeSttProvider(open_capacity=0), task_status=task_status
        )
    )
    with trio.fail_after(10):
        refused = await _refusal(server, "codec=pcm16&sample_rate=16000", await _token(server))
    assert refused.close_code == 1013


async def test_stt_failure_degrades_the_session_instead_of_killing_it(
    nursery: trio.Nursery, make_settings: Callable[..., Settings]
) -> None:
    from server.serve import serve

    settings = make_settings(heartbeat_interval_s=0.2)
    server: ServerHandle = await nursery.start(
        lambda task_status: serve(
            settings, stt_provider=FakeSttProvider(fail_after_chunks=1), task_status=task_status
        )
    )
    with trio.fail_after(20):
        token = await _token(server)
        async with open_listen(server.url, token=token) as ws:
            for frame in frames(pcm(2.0)):
                await ws.send_frame(frame)
            received = await ws.read_until(
                lambda r: "stt_degraded" in [e.get("status") for e in r.events] and r.pings >= 2,
            )
            await ws.send_frame(frames(pcm(0.1))[0])  # still accepting audio
    assert received.close_code is None
    assert len(received.segments) == 1


async def test_heartbeat_pings_and_idle_timeout_closes_1001(
    nursery: trio.Nursery, make_settings: Callable[..., Settings]
) -> None:
    server = await start_server(
        nursery, make_settings(heartbeat_interval_s=0.1, idle_timeout_s=0.6)
    )
    with trio.fail_after(20):
        async with open_listen(server.url, token=await _token(server)) as ws:
            received = await ws.read_to_close()
    assert received.pings >= 3
    assert received.close_code == 1001 and "idle" in (received.close_reason or "")


async def test_shutdown_sends_segments_so_far_then_1001_and_stores_the_rest(
    nursery: trio.Nursery, make_settings: Callable[..., Settings]
) -> None:
    """At a drain, what was transcribed so far is sent, then the close frame; the client's
    last frames (read after the close, see the next test) and the partial last second are
    transcribed and stored, not sent: nothing can follow a close frame."""
    settings = make_settings(graceful_shutdown_s=5.0)
    server = await start_server(nursery, settings)
    audio = pcm(1.5, seed=7)
    results: list[Received] = []
    partial: list[Received] = []

    async def stream(token: str) -> None:
        async with open_listen(server.url, token=token) as ws:
            received = await ws.read_until(lambda r: len(r.events) >= 3)
            partial.append(received)
            for frame in frames(audio):
                await ws.send_frame(frame)
            await ws.read_until(lambda r: len(r.segments) >= 1)
            results.append(await ws.read_until(lambda r: False))

    with trio.fail_after(20):
        tokens = [await _token(server, name) for name in ("alice", "bob")]
        async with trio.open_nursery() as clients:
            for token in tokens:
                clients.start_soon(stream, token)
            registry = server.context.sessions
            await wait_until(lambda: registry.statistics().live == 2)
            await wait_until(lambda: sum(len(r.segments) for r in partial) >= 2)
            server.request_shutdown()
        await wait_until(lambda: registry.statistics().live == 0)  # stored after the close
    expected = _expected(audio, 1) + [fake_text(1, audio[SECOND:])]
    for received in results:
        assert received.close_code == 1001
        assert received.joined() == expected[0]
    db = pathlib.Path(settings.data_dir) / DB_FILENAME
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
        rows = conn.execute("SELECT text FROM transcript_segments").fetchall()
    assert sorted(text for (text,) in rows) == [" ".join(expected)] * 2  # one per user


async def test_closed_socket_during_session_is_tolerated(server: ServerHandle) -> None:
    with trio.fail_after(10):
        token = await _token(server)
        async with open_listen(server.url, token=token) as ws:
            await ws.send_frame(frames(pcm(0.5))[0])
            await ws.close()
        with pytest.raises(ConnectionClosed):
            await ws.ws.get_message()
        async with httpx.AsyncClient(base_url=server.url) as client:
            ok = await client.get("/health")
    assert ok.status_code == 200


@pytest.mark.slow
async def test_embedded_stt_with_vad_returns_most_words_of_real_speech(
    nursery: trio.Nursery, make_settings: Callable[..., Settings]
) -> None:
    """The default stack: flite speech -> VAD gate -> pocketsphinx worker process -> segments."""
    fixture = pathlib.Path(__file__).parents[1] / "fixtures" / "speech"
    audio = (fixture / "two_sentences.raw").read_bytes()
    reference = (fixture / "two_sentences.txt").read_text().split()
    settings = make_settings(stt="embedded", vad="active", stt_workers=1, stt_streams_per_worker=1)
    server = await start_server(nursery, settings)
    with trio.fail_after(60):
        async with open_listen(server.url, token=await _token(server)) as ws:
            received = await ws.read_until(lambda r: len(r.events) >= 3)
            for frame in frames(audio + bytes(RATE * 2)):  # one second of silence to end it
                await ws.send_frame(frame)
                await trio.sleep(0.02)  # faster than real time, but paced like a device
            words = set(reference)
            await ws.read_until(lambda r: len(words & set(r.joined().split())) >= 0.7 * len(words))
    heard = received.joined().split()
    assert len(set(reference) & set(heard)) >= 0.7 * len(set(reference)), heard
    assert server.context.stats["stt"]()["finals"] >= 1
    skipped = server.context.sessions.statistics().vad_skipped_share
    assert 0.0 < skipped < 0.6  # the trailing second of silence was not sent to STT


async def test_deepgram_provider_end_to_end_against_the_fake_server(
    nursery: trio.Nursery, make_settings: Callable[..., Settings]
) -> None:
    """--stt deepgram: the session streams to a Deepgram-protocol server and relays finals."""
    from array import array

    from tests.fakes.deepgram import FAKE_API_KEY, open_fake_deepgram

    async with open_fake_deepgram() as fake:
        settings = make_settings(
            stt="deepgram", deepgram_url=fake.url, deepgram_api_key=FAKE_API_KEY
        )
        server = await start_server(nursery, settings)
        loud = array("h", [4000, -4000] * RATE).tobytes()  # 2 s: eight fake words
        with trio.fail_after(20):
            async with open_listen(server.url, token=await _token(server)) as ws:
                received = await ws.read_until(lambda r: len(r.events) >= 3)
                for frame in frames(loud + bytes(RATE)):  # then half a second of silence
                    await ws.send_frame(frame)
                await ws.read_until(lambda r: r.has("w8"))
    assert received.joined().split() == [f"w{n}" for n in range(1, 9)]
    assert received.segments[received.order[0]]["stt_provider"] == "deepgram"
    query = fake.connections[0].query
    assert (query["encoding"], query["sample_rate"], query["language"]) == (
        "linear16",
        "16000",
        "en",
    )
    assert fake.connections[0].authorization == f"Token {FAKE_API_KEY}"


class _GatedStt(FakeSttProvider):
    """The fake STT whose ``send_audio`` waits for ``gate``: the session stalls on its first
    frame while the transport holds the frames that follow, as a session behind under load.
    The wait is not shielded: a drain must not cut the frame the session has in hand."""

    def __init__(self, gate: trio.Event) -> None:
        super().__init__()
        self.gate = gate

    @asynccontextmanager
    async def open_stream(self, *, sample_rate: int, language: str) -> AsyncIterator[FakeStream]:
        async with super().open_stream(sample_rate=sample_rate, language=language) as stream:
            send_audio = stream.send_audio

            async def gated(pcm16: bytes) -> None:
                await self.gate.wait()
                await send_audio(pcm16)

            stream.send_audio = gated  # type: ignore[method-assign]
            yield stream


@pytest.mark.slow
async def test_drain_stores_the_frames_already_received(
    nursery: trio.Nursery, make_settings: Callable[..., Settings]
) -> None:
    """Frames the server holds for a session (hypercorn's queue) when it drains are
    transcribed and stored, the partial last second too."""
    settings, gate = make_settings(graceful_shutdown_s=5.0), trio.Event()
    from server.serve import serve

    server: ServerHandle = await nursery.start(
        lambda task_status: serve(settings, stt_provider=_GatedStt(gate), task_status=task_status)
    )
    audio = pcm(1.1, seed=11)  # 11 frames: 1 stalls in STT, 10 fill hypercorn's queue
    with trio.fail_after(20):
        token = await _token(server)
        async with open_listen(server.url, token=token) as ws:
            received = await ws.read_until(lambda r: len(r.events) >= 3)
            for frame in frames(audio):
                await ws.send_frame(frame)
            await trio.sleep(0.3)  # hypercorn reads the frames into its queue
            (session,) = server.context.sessions._sessions.values()
            assert isinstance(session, ListenSession)
            server.request_shutdown()
            await wait_until(lambda: session._cause is not None)  # drained while stalled
            gate.set()
            received = await ws.read_until(lambda r: False)
        await wait_until(lambda: server.context.sessions.statistics().live == 0)
    assert received.close_code == 1001
    db = pathlib.Path(settings.data_dir) / DB_FILENAME
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
        rows = conn.execute("SELECT text FROM transcript_segments").fetchall()
    expected = _expected(audio, 1) + [fake_text(1, audio[SECOND:])]
    assert " ".join(text for (text,) in rows) == " ".join(expected)


@pytest.mark.slow
async def test_drain_stores_everything_the_client_sent_before_it_saw_the_close(
    nursery: trio.Nursery, make_settings: Callable[..., Settings]
) -> None:
    """A client streams until it sees the 1001 (as a real-time device does): every frame it
    sent before that is transcribed and stored, the partial last second too. The fast
    transport reads after its close frame; frames in flight used to be lost (bench P3)."""
    settings = make_settings(graceful_shutdown_s=5.0)
    server = await start_server(nursery, settings)
    audio = pcm(60.0, seed=12)
    sent = 0

    async def stream(ws: ListenClient) -> None:
        nonlocal sent
        await trio.lowlevel.checkpoint()
        try:
            for frame in frames(audio):
                await ws.send_frame(frame)
                sent += len(frame)
                await trio.sleep(0.005)  # 20x real time: frames are always in flight
        except ConnectionClosed:
            return  # it saw the close frame: it sends nothing more

    with trio.fail_after(20):
        token = await _token(server)
        async with open_listen(server.url, token=token) as ws:
            await ws.read_until(lambda r: len(r.events) >= 3)
            async with trio.open_nursery() as client:
                client.start_soon(stream, ws)
                await trio.sleep(0.5)
                server.request_shutdown()
                received = await ws.read_to_close()
        await wait_until(lambda: server.context.sessions.statistics().live == 0)
    assert received.close_code == 1001
    assert 0 < sent < len(audio)
    db = pathlib.Path(settings.data_dir) / DB_FILENAME
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
        rows = conn.execute("SELECT text FROM transcript_segments").fetchall()
    whole = sent // SECOND
    expected = _expected(audio, whole)
    if sent % SECOND:
        expected.append(fake_text(whole, audio[whole * SECOND : sent]))
    assert " ".join(text for (text,) in rows) == " ".join(expected)
