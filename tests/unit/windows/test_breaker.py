"""The circuit breaker's state machine, on a clock the test moves (engine.windows.breaker)."""

from __future__ import annotations

import pytest

from engine.windows.breaker import CLOSED, HALF_OPEN, OPEN, Breaker, BreakerPolicy


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def make(**policy: float) -> tuple[Breaker, Clock, list[tuple[str, str]]]:
    clock = Clock()
    changes: list[tuple[str, str]] = []
    breaker = Breaker(
        "redis-a",
        BreakerPolicy(**policy),  # type: ignore[arg-type]
        clock=clock,
        on_change=lambda name, old, new: changes.append((old, new)),
    )
    return breaker, clock, changes


def test_one_failure_among_many_successes_does_not_open() -> None:
    breaker, clock, changes = make()
    for i in range(300):
        assert breaker.allow()
        if i == 150:
            breaker.failure("TimeoutError: a slow moment")
        else:
            breaker.success()
        clock.now += 0.003
    assert breaker.state == CLOSED and changes == []


def test_enough_failures_at_the_rate_open_it_and_calls_fail_fast() -> None:
    breaker, _, changes = make(min_failures=5, failure_rate=0.5)
    for _ in range(4):
        assert breaker.allow()
        breaker.failure("ConnectionError: refused")
    assert breaker.state == CLOSED  # four failures: below the minimum
    breaker.failure("ConnectionError: refused")
    assert breaker.state == OPEN and changes == [(CLOSED, OPEN)]
    assert not breaker.allow()
    assert breaker.last_error == "ConnectionError: refused"


def test_failures_below_the_rate_do_not_open() -> None:
    breaker, _, _ = make(min_failures=5, failure_rate=0.5)
    for _ in range(12):
        breaker.success()
    for _ in range(6):
        breaker.failure("TimeoutError")
    assert breaker.state == CLOSED  # 6 of 18: a third, under half
    for _ in range(6):
        breaker.failure("TimeoutError")
    assert breaker.state == OPEN  # 12 of 24: half


def test_old_failures_leave_the_window() -> None:
    breaker, clock, _ = make(window_s=10, min_failures=5)
    for _ in range(4):
        breaker.failure("TimeoutError")
    clock.now += 11  # the four are out of the window
    breaker.failure("TimeoutError")
    assert breaker.state == CLOSED


def test_half_open_lets_one_probe_through_and_its_success_closes() -> None:
    breaker, clock, changes = make(min_failures=1, open_s=0.5)
    breaker.failure("ConnectionError")
    assert not breaker.allow()
    clock.now += 0.5
    assert breaker.allow()  # the probe
    assert breaker.state == HALF_OPEN
    assert not breaker.allow()  # one probe at a time: the others still fail fast
    breaker.success()
    assert breaker.state == CLOSED and breaker.allow()
    assert changes == [(CLOSED, OPEN), (OPEN, HALF_OPEN), (HALF_OPEN, CLOSED)]
    breaker.failure("ConnectionError")  # the window was cleared: one failure again opens (min 1)
    assert breaker.state == OPEN


def test_a_failed_probe_opens_again_for_the_whole_period() -> None:
    breaker, clock, _ = make(min_failures=1, open_s=0.5)
    breaker.failure("ConnectionError")
    clock.now += 0.5
    assert breaker.allow()
    breaker.failure("ConnectionError: still down")
    assert breaker.state == OPEN and breaker.opened == 2
    clock.now += 0.4
    assert not breaker.allow()
    assert breaker.remaining_open_s() == pytest.approx(0.1)


def test_a_probe_that_never_reports_is_replaced_and_a_cancelled_one_given_back() -> None:
    breaker, clock, _ = make(min_failures=1, open_s=0.5)
    breaker.failure("ConnectionError")
    clock.now += 0.5
    assert breaker.allow()  # a probe whose thread dies without a word
    assert not breaker.allow()
    clock.now += 0.5
    assert breaker.allow()  # replaced after open_s: the breaker never stays half-open for good
    breaker.cancel()  # this caller did not use its probe after all
    assert breaker.allow()


def test_a_bad_policy_is_refused() -> None:
    with pytest.raises(ValueError, match="invalid breaker policy"):
        BreakerPolicy(failure_rate=0.0)
