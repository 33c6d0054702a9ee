"""The event loop's load and its pressure (:mod:`server.loopload`)."""

from __future__ import annotations

import pytest

from server.loopload import HIGH_LOAD, LOW_LOAD, LoopLoad, pressure, thread_busy_s


def test_pressure_is_zero_with_headroom_one_under_load_and_in_proportion_between() -> None:
    assert pressure(0.0) == pressure(LOW_LOAD) == 0.0
    assert pressure(HIGH_LOAD) == pressure(1.0) == 1.0
    assert pressure((LOW_LOAD + HIGH_LOAD) / 2) == pytest.approx(0.5)


def test_loop_load_is_the_threads_cpu_share_per_window() -> None:
    clocks = {"wall": 0.0, "cpu": 0.0}
    load = LoopLoad(0.5, wall=lambda: clocks["wall"], busy=lambda: clocks["cpu"])

    def spend(wall_s: float, cpu_s: float) -> float:
        clocks["wall"] += wall_s
        clocks["cpu"] += cpu_s
        return load()

    assert spend(0.4, 0.4) == 0.0  # no window has passed
    assert spend(0.1, 0.1) == pytest.approx(0.5)  # busy window (1.0), averaged with 0
    assert spend(0.5, 0.0) == pytest.approx(0.25)  # an idle one halves it
    assert spend(1.0, 0.8) == pytest.approx(0.525)
    real = LoopLoad(0.0)  # the default clocks: this thread's run and wait, at most real time
    before = thread_busy_s()
    spins = 0
    while thread_busy_s() == before and spins < 10_000:  # the kernel updates it per tick
        sum(range(1000))
        spins += 1
    assert thread_busy_s() > before
    assert 0.0 <= real() <= 1.0


def test_loop_load_reports_its_pressure() -> None:
    clocks = {"wall": 0.0, "cpu": 0.0}
    load = LoopLoad(0.5, wall=lambda: clocks["wall"], busy=lambda: clocks["cpu"])
    assert load.pressure() == 0.0
    clocks["wall"] = clocks["cpu"] = 1.0  # a fully busy window: load 0.5 (averaged with 0)
    assert load.pressure() == pytest.approx(pressure(0.5))
