"""Audio frames per second per server core through ``/v4/listen``, next to the echo ceiling.

Both servers run in their own process pinned to CPU 0; this load client is pinned to CPU 1.
The figure that matters is *frames per server CPU-second*: it is independent of whether the
client or the server saturates first. Ceiling: a bare hypercorn-trio WebSocket echo (raw ASGI)
with the same client, connection count and 3,200-byte frames (100 ms of 16 kHz PCM16).
``/v4/listen`` runs the real pipeline with the ``fake`` STT and VAD off: decode, STT feed,
segment assembly, client updates and batched SQLite writes, once per ``--listen-transport``
(``fast``: frames parsed on the socket, the default; ``hypercorn``: its ASGI WebSocket path).

    python -m bench.listen_throughput [--connections 32] [--seconds 6] [--transports fast,hypercorn]

Loopback only; bounded by ``--seconds`` per phase.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from dataclasses import asdict, dataclass
from typing import Final

import httpx
import trio
from trio_websocket import ConnectionClosed, WebSocketConnection, open_websocket_url

from bench._proc import cpu_seconds, open_server_process, pin_self

FRAME: Final = bytes(3200)
ADMIN: Final = "bench-admin"


@dataclass(frozen=True, slots=True)
class Phase:
    """One measured phase."""

    name: str
    seconds: float
    frames: int
    server_cpu_s: float

    @property
    def frames_per_s(self) -> float:
        return self.frames / self.seconds

    @property
    def frames_per_cpu_s(self) -> float:
        return self.frames / self.server_cpu_s if self.server_cpu_s else 0.0


async def _echo_client(url: str, seconds: float, counts: list[int]) -> None:
    async with open_websocket_url(url) as ws:
        deadline = trio.current_time() + seconds
        n = 0
        while trio.current_time() < deadline:
            await ws.send_message(FRAME)
            await ws.get_message()
            n += 1
        counts.append(n)
        await ws.aclose()


async def _sink_client(url: str, seconds: float, counts: list[int]) -> None:
    async with open_websocket_url(url) as ws:
        deadline = trio.current_time() + seconds
        while trio.current_time() < deadline:
            await ws.send_message(FRAME)
        await ws.send_message("count")
        counts.append(int(await ws.get_message()))
        await ws.aclose()


async def measure_bare(connections: int, seconds: float, *, sink: bool) -> Phase:
    """Frames per second through the bare server: echoed (ping-pong) or sunk (one-way)."""
    async with open_server_process(
        ["-m", "bench.echo_server"], port_pattern=rb"LISTENING (\d+)", cpu=0
    ) as server:
        url = f"ws://127.0.0.1:{server.port}/" + ("sink" if sink else "")
        client = _sink_client if sink else _echo_client
        counts: list[int] = []
        before = cpu_seconds(server.pid)
        started = trio.current_time()
        async with trio.open_nursery() as nursery:
            for _ in range(connections):
                nursery.start_soon(client, url, seconds, counts)
        elapsed = trio.current_time() - started
        used = cpu_seconds(server.pid) - before
    name = "bare hypercorn-trio one-way sink" if sink else "bare hypercorn-trio echo (ceiling)"
    return Phase(name, elapsed, sum(counts), used)


async def _drain_messages(ws: WebSocketConnection) -> None:
    await trio.lowlevel.checkpoint()
    try:
        while True:
            await ws.get_message()
    except ConnectionClosed:
        return


async def _listen_client(url: str, token: str, seconds: float) -> None:
    headers = [(b"Authorization", f"Bearer {token}".encode())]
    async with open_websocket_url(url, extra_headers=headers, message_queue_size=64) as ws:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_drain_messages, ws)
            deadline = trio.current_time() + seconds
            while trio.current_time() < deadline:
                await ws.send_message(FRAME)
            nursery.cancel_scope.cancel()
        await ws.aclose()


async def _stats_frames(client: httpx.AsyncClient) -> int:
    stats = (await client.get("/v1/stats", headers={"Authorization": f"Bearer {ADMIN}"})).json()
    return int(stats["sessions"]["totals"].get("frames", 0))


async def measure_listen(connections: int, seconds: float, transport: str = "fast") -> Phase:
    """Frames accepted per second by ``/v4/listen`` (counted by the server itself), served by
    ``transport`` (``--listen-transport``)."""
    with tempfile.TemporaryDirectory() as data_dir:
        env = {
            "TRIOSCRIBE_DATA_DIR": data_dir,
            "TRIOSCRIBE_PORT": "0",
            "TRIOSCRIBE_STT": "fake",
            "TRIOSCRIBE_VAD": "off",
            "TRIOSCRIBE_ADMIN_TOKEN": ADMIN,
            "TRIOSCRIBE_MAX_SESSIONS": str(connections + 10),
            "TRIOSCRIBE_MAX_SESSIONS_PER_USER": str(connections + 10),
            "TRIOSCRIBE_DAY_SUMMARY_HOUR_UTC": "-1",
            "TRIOSCRIBE_LOG_LEVEL": "WARNING",
            "TRIOSCRIBE_LISTEN_TRANSPORT": transport,
            # clients send as fast as the server takes frames: not the budget under test
            "TRIOSCRIBE_WS_MAX_FRAMES_PER_S": "1000000",
        }
        async with open_server_process(
            ["-m", "server", "--log-level", "INFO"],
            env=env,
            cpu=0,
            port_pattern=rb"listening on http://[^:]+:(\d+)",
            stream="stderr",
        ) as server:
            base = f"http://127.0.0.1:{server.port}"
            async with httpx.AsyncClient(base_url=base, timeout=30) as client:
                admin = {"Authorization": f"Bearer {ADMIN}"}
                await client.post("/v1/admin/users", json={"name": "bench"}, headers=admin)
                token = (
                    await client.post("/v1/admin/users/bench/tokens", json={}, headers=admin)
                ).json()["token"]
                url = f"ws://127.0.0.1:{server.port}/v4/listen?codec=pcm16&sample_rate=16000"
                frames_before = await _stats_frames(client)
                before = cpu_seconds(server.pid)
                started = trio.current_time()
                async with trio.open_nursery() as nursery:
                    for _ in range(connections):
                        nursery.start_soon(_listen_client, url, token, seconds)
                elapsed = trio.current_time() - started
                used = cpu_seconds(server.pid) - before
                frames = await _stats_frames(client) - frames_before
    return Phase(f"/v4/listen (fake STT, VAD off, {transport})", elapsed, frames, used)


def _table(phases: list[Phase], echo_ratio: float, sink_ratio: float) -> str:
    lines = ["| phase | frames/s | server CPU-s | frames per server CPU-s |", "|---|---|---|---|"]
    for p in phases:
        lines.append(
            f"| {p.name} | {p.frames_per_s:,.0f} | {p.server_cpu_s:.2f} | "
            f"{p.frames_per_cpu_s:,.0f} |"
        )
    lines.append(
        f"\n/v4/listen frames per core: {echo_ratio:.0%} of the echo ceiling "
        f"(goal >= 50%), {sink_ratio:.0%} of the one-way sink"
    )
    return "\n".join(lines)


async def main(
    connections: int, seconds: float, transports: tuple[str, ...] = ("fast",)
) -> dict[str, object]:
    """Run the phases and return the figures (ratios: the first transport's)."""
    pin_self(1)
    echo = await measure_bare(connections, seconds, sink=False)
    sink = await measure_bare(connections, seconds, sink=True)
    listens = [await measure_listen(connections, seconds, t) for t in transports]
    listen = listens[0]
    echo_ratio = _ratio(listen, echo)
    sink_ratio = _ratio(listen, sink)
    result = {
        "connections": connections,
        "seconds": seconds,
        "phases": [
            asdict(p) | {"frames_per_s": p.frames_per_s, "frames_per_cpu_s": p.frames_per_cpu_s}
            for p in (echo, sink, *listens)
        ],
        "listen_vs_echo_per_core": echo_ratio,
        "listen_vs_sink_per_core": sink_ratio,
        "sessions_at_10_frames_per_s_per_core": listen.frames_per_cpu_s / 10,
    }
    print(json.dumps(result, indent=2))
    print(_table([echo, sink, *listens], echo_ratio, sink_ratio))
    return result


def _ratio(a: Phase, b: Phase) -> float:
    return a.frames_per_cpu_s / b.frames_per_cpu_s if b.frames_per_cpu_s else 0.0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=6.0)
    parser.add_argument(
        "--transports",
        default="fast,hypercorn",
        help="comma-separated --listen-transport values to measure (ratios: the first)",
    )
    args = parser.parse_args()
    trio.run(main, args.connections, args.seconds, tuple(args.transports.split(",")))
