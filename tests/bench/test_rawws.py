"""The load generator's raw WebSocket client speaks RFC 6455 as wsproto (hypercorn's) reads it."""

from __future__ import annotations

import os

import pytest
import trio
import trio.testing
from wsproto.connection import Connection, ConnectionType
from wsproto.events import BytesMessage, CloseConnection, Ping, TextMessage

from bench.rawws import OP_TEXT, RawClosed, RawWebSocket, encode_frame


@pytest.mark.parametrize("size", [0, 1, 125, 126, 3200, 65535, 65536, 200_000])
def test_frames_encoded_ahead_are_read_by_wsproto(size: int) -> None:
    payload = os.urandom(size)
    conn = Connection(ConnectionType.SERVER)  # frames only: the handshake is not under test
    conn.receive_data(encode_frame(payload) + encode_frame(b"hi", OP_TEXT))
    events = list(conn.events())
    assert b"".join(e.data for e in events if isinstance(e, BytesMessage)) == payload
    assert [e.data for e in events if isinstance(e, TextMessage)] == ["hi"]


async def test_reads_server_frames_answers_pings_and_reports_the_close_code() -> None:
    client_stream, server_stream = trio.testing.memory_stream_pair()
    server = Connection(ConnectionType.SERVER)
    ws = RawWebSocket(client_stream, b"")  # type: ignore[arg-type]
    big = "x" * 70_000
    out = server.send(TextMessage("ping")) + server.send(Ping(b"p1"))
    out += server.send(TextMessage(big[:100], message_finished=False))
    out += server.send(TextMessage(big[100:])) + server.send(BytesMessage(b"\x00\x01"))
    out += server.send(CloseConnection(1001, "bye"))
    with trio.fail_after(5):
        await server_stream.send_all(out)
        assert await ws.get_message() == "ping"
        assert await ws.get_message() == big  # the ping was answered between these
        assert await ws.get_message() == b"\x00\x01"
        with pytest.raises(RawClosed) as closed:
            await ws.get_message()
        assert (closed.value.code, closed.value.reason) == (1001, "bye")
        server.receive_data(await server_stream.receive_some(65536))
        kinds = [type(e).__name__ for e in server.events()]
    assert kinds[0] == "Pong" and "CloseConnection" in kinds


def test_the_framing_bench_takes_every_frame_both_ways() -> None:
    """``python -m bench.framing`` runs (it raises if a path lost a frame) and reports both."""
    from bench import framing

    out = framing.main()
    assert out["frames"] == framing.FRAMES
    assert out["fast_us_min"] > 0 and out["websockets_us_min"] > 0
    assert out["ratio_median"] > 0
