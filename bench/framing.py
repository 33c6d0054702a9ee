"""The cost of taking one audio frame off a ``/v4/listen`` connection: ``FastWebSocket``'s own
framing (audio frames unmasked directly) against ``websockets`` parsing every byte.

``python -m bench.framing`` prints JSON: microseconds per 100 ms PCM16 frame (3,200 bytes,
masked as a client sends it), read two frames per read as the poller hands them over, fed and
then taken with ``receive_nowait``; the minimum and median of ``ROUNDS`` alternated rounds of
``FRAMES`` frames each. No sockets and no event loop: this is the parse alone.
"""

from __future__ import annotations

import json
import random
import statistics
import time
from typing import Any, Final, cast

import trio
import wsproto
import wsproto.events as ws_events
from websockets.server import ServerProtocol
from websockets.utils import apply_mask

from server.guard import GuardedStream
from server.listen.fastws import FastWebSocket

FRAMES: Final = 2000
ROUNDS: Final = 15
FRAME_BYTES: Final = 3200
MAX_MESSAGE_BYTES: Final = 65536


class _NoReads:
    def receive_nowait(self, max_bytes: int) -> bytes:
        raise trio.WouldBlock


def client_frame(payload: bytes, rng: random.Random) -> bytes:
    """A final binary frame as a client sends it (masked; payload under 64 KiB)."""
    key = rng.randbytes(4)
    return bytes([0x82, 0x80 | 126]) + len(payload).to_bytes(2) + key + apply_mask(payload, key)


def _open_socket(websockets_only: bool) -> FastWebSocket:
    protocol = ServerProtocol(max_size=MAX_MESSAGE_BYTES)
    client = wsproto.WSConnection(wsproto.ConnectionType.CLIENT)
    protocol.receive_data(client.send(ws_events.Request(host="bench", target="/v4/listen")))
    request = protocol.events_received()[0]
    response = protocol.accept(request)  # type: ignore[arg-type]
    protocol.send_response(response)
    ws = FastWebSocket(
        {}, cast(GuardedStream, _NoReads()), protocol, response,
        max_message_bytes=MAX_MESSAGE_BYTES,
    )  # fmt: skip
    ws._handed_over = websockets_only  # every byte through websockets: the path before
    return ws


def one_round(reads: list[bytes], websockets_only: bool) -> float:
    """Seconds per frame to feed ``reads`` and take every message."""
    ws = _open_socket(websockets_only)
    taken = 0
    started = time.perf_counter()
    for data in reads:
        ws._feed(data)
        while True:
            try:
                ws.receive_nowait()
            except trio.WouldBlock:
                break
            taken += 1
    elapsed = time.perf_counter() - started
    if taken != FRAMES:
        raise RuntimeError(f"took {taken} messages of {FRAMES}")
    return elapsed / FRAMES


def main() -> dict[str, Any]:
    rng = random.Random(1)
    frames = [client_frame(rng.randbytes(FRAME_BYTES), rng) for _ in range(FRAMES)]
    reads = [frames[i] + frames[i + 1] for i in range(0, FRAMES, 2)]
    times: dict[str, list[float]] = {"fast": [], "websockets": []}
    for _ in range(ROUNDS):
        times["websockets"].append(one_round(reads, websockets_only=True))
        times["fast"].append(one_round(reads, websockets_only=False))
    out: dict[str, Any] = {"frames": FRAMES, "rounds": ROUNDS, "frame_bytes": FRAME_BYTES}
    for name, values in times.items():
        out[f"{name}_us_min"] = round(min(values) * 1e6, 2)
        out[f"{name}_us_median"] = round(statistics.median(values) * 1e6, 2)
    out["ratio_median"] = round(out["fast_us_median"] / out["websockets_us_median"], 2)
    return out


if __name__ == "__main__":
    print(json.dumps(main(), indent=2))
