"""Benchmark helpers for server processes: start pinned, wait for the port, read CPU time."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass

import trio

__all__ = ["ServerProcess", "cpu_seconds", "open_server_process", "pin_self", "rss_and_threads"]

_TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds used so far by process ``pid`` (Linux /proc)."""
    with open(f"/proc/{pid}/stat", "rb") as f:
        fields = f.read().rsplit(b")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _TICKS


def rss_and_threads(pid: int) -> tuple[int, int]:
    """Resident set size in bytes and thread count of ``pid`` (Linux /proc)."""
    rss = threads = 0
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                rss = int(line.split()[1]) * 1024
            elif line.startswith("Threads:"):
                threads = int(line.split()[1])
    return rss, threads


def pin_self(cpu: int) -> None:
    """Run this process on one CPU (if the machine has it)."""
    if hasattr(os, "sched_setaffinity") and cpu < (os.cpu_count() or 1):
        os.sched_setaffinity(0, {cpu})


@dataclass
class ServerProcess:
    """A started server: its process, port and captured output."""

    process: trio.Process
    port: int
    output: list[str]

    @property
    def pid(self) -> int:
        return self.process.pid


def _pinned(argv: Sequence[str], cpu: int | None) -> list[str]:
    if cpu is None or shutil.which("taskset") is None or cpu >= (os.cpu_count() or 1):
        return list(argv)
    return ["taskset", "-c", str(cpu), *argv]


@asynccontextmanager
async def open_server_process(
    argv: Sequence[str],
    *,
    port_pattern: bytes,
    env: Mapping[str, str] | None = None,
    cpu: int | None = None,
    stream: str = "stdout",
    start_timeout_s: float = 60.0,
) -> AsyncIterator[ServerProcess]:
    """Start ``argv`` (optionally pinned to ``cpu``), wait for ``port_pattern`` in its output,
    yield it, then SIGTERM it (SIGKILL after 15 s). Output keeps being drained meanwhile."""
    command = _pinned([sys.executable, *argv] if argv[0] == "-m" else argv, cpu)
    environment = {**os.environ, **(env or {})}
    if stream == "stdout":
        process = await trio.lowlevel.open_process(command, env=environment, stdout=subprocess.PIPE)
    else:
        process = await trio.lowlevel.open_process(command, env=environment, stderr=subprocess.PIPE)
    source = process.stdout if stream == "stdout" else process.stderr
    assert source is not None
    output: list[str] = []
    try:
        port = await _wait_port(source, port_pattern, output, start_timeout_s)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_drain, source, output)
            yield ServerProcess(process, port, output)
            await _stop(process)
            nursery.cancel_scope.cancel()
    finally:
        if process.returncode is None:
            process.kill()
            with trio.CancelScope(shield=True), trio.move_on_after(5):
                await process.wait()


async def _wait_port(
    source: trio.abc.ReceiveStream, pattern: bytes, output: list[str], timeout_s: float
) -> int:
    buffer = b""
    with trio.fail_after(timeout_s):
        while True:
            chunk = await source.receive_some(65536)
            if not chunk:
                raise RuntimeError(
                    "server exited before listening:\n" + buffer.decode(errors="replace")
                )
            buffer += chunk
            match = re.search(pattern, buffer)
            if match:
                output.append(buffer.decode(errors="replace"))
                return int(match.group(1))


async def _drain(source: trio.abc.ReceiveStream, output: list[str]) -> None:
    while chunk := await source.receive_some(65536):
        output.append(chunk.decode(errors="replace"))
        del output[:-200]  # keep the tail only


async def _stop(process: trio.Process) -> None:
    process.send_signal(signal.SIGTERM)
    with trio.move_on_after(15):
        await process.wait()
