"""A ``/v4/listen`` load generator: N real-time PCM16 sessions against a loopback server.

Each session opens the WebSocket with ``Authorization: Bearer``, streams one frame every
``frame_ms`` on an absolute trio-clock schedule (no drift), and reads what comes back. The
server is expected to run the ``fake`` STT (server/stt/fake.py), so every second ``k`` of audio
has a known transcript token ``f"seg{k} {zlib.crc32(second):08x}"``; the audio is deterministic
pseudo-random per (seed, session, second), so tokens also differ between sessions.

Per session: latency of index ``k`` = first arrival of ``seg{k}`` (segments may be merged, so a
text can carry several tokens) - send time of the last frame of second ``k``. After the audio,
a bounded grace (``grace_s``) waits for the rest; indices sent but never seen are *lost*;
indices first seen after a higher one are *reordered*; tokens whose crc differs are
*mismatched*. Optionally the server process is sampled (RSS, threads, CPU from ``/proc``) and
a stats URL is polled (``loop_lag``).

Bounds: every run is cut at ``max_total_s``; only loopback hosts are accepted.

Modules: :mod:`~bench.loadgen.config` (the run's config, audio, loopback guard),
:mod:`~bench.loadgen.session` (one session), :mod:`~bench.loadgen.aggregate` (server sampling
and the result), :mod:`~bench.loadgen.run` (local and worker-process runs, the step search),
:mod:`~bench.loadgen.cli` (``python -m bench listen``).
"""

from bench.loadgen.aggregate import (
    LoadResult as LoadResult,
    ServerSample as ServerSample,
    SessionSummary as SessionSummary,
    format_table as format_table,
    read_proc as read_proc,
)
from bench.loadgen.cli import (
    main_listen as main_listen,
)
from bench.loadgen.config import (
    DEFAULT_STEPS as DEFAULT_STEPS,
    LATE_FRAME_S as LATE_FRAME_S,
    SEG_TOKEN as SEG_TOKEN,
    AudioSource as AudioSource,
    LoadConfig as LoadConfig,
    NotLoopbackError as NotLoopbackError,
    check_loopback as check_loopback,
    expected_token as expected_token,
    load_fixture as load_fixture,
)
from bench.loadgen.run import (
    find_max_sessions as find_max_sessions,
    run_listen_load as run_listen_load,
)
from bench.loadgen.session import (
    SessionRecord as SessionRecord,
)

__all__ = [
    "AudioSource",
    "DEFAULT_STEPS",
    "LATE_FRAME_S",
    "LoadConfig",
    "LoadResult",
    "NotLoopbackError",
    "SEG_TOKEN",
    "ServerSample",
    "SessionRecord",
    "SessionSummary",
    "check_loopback",
    "expected_token",
    "find_max_sessions",
    "format_table",
    "load_fixture",
    "main_listen",
    "read_proc",
    "run_listen_load",
]
