"""The circuit breaker state machine, with a fake clock."""

from __future__ import annotations

import pytest

from langchain_fastpipe.errors import CircuitOpenError
from langchain_fastpipe.transport import BreakerPolicy, CircuitBreaker


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def make(threshold: int = 3, recovery: float = 10.0, probes: int = 1):
    clock = FakeClock()
    breaker = CircuitBreaker(
        BreakerPolicy(
            failure_threshold=threshold, recovery_time=recovery, half_open_max_calls=probes
        ),
        endpoint="http://h:80",
        clock=clock,
    )
    return breaker, clock


def fail(breaker: CircuitBreaker) -> None:
    breaker.on_failure(breaker.before_call())


def test_opens_after_threshold_consecutive_failures() -> None:
    breaker, _ = make(threshold=3)
    fail(breaker)
    fail(breaker)
    assert breaker.state == "closed"
    fail(breaker)
    assert breaker.state == "open"
    with pytest.raises(CircuitOpenError) as info:
        breaker.before_call()
    assert info.value.endpoint == "http://h:80"
    assert info.value.retry_at == 1010.0
    assert info.value.retry_in == 10.0


def test_success_resets_the_count() -> None:
    breaker, _ = make(threshold=2)
    fail(breaker)
    breaker.on_success(breaker.before_call())
    fail(breaker)
    assert breaker.state == "closed"


def test_half_open_admits_limited_probes_then_closes_on_success() -> None:
    breaker, clock = make(threshold=1, recovery=5.0, probes=1)
    fail(breaker)
    clock.now += 4.0
    with pytest.raises(CircuitOpenError) as info:
        breaker.before_call()
    assert info.value.retry_in == pytest.approx(1.0)
    clock.now += 1.0
    assert breaker.state == "half_open"
    probe = breaker.before_call()
    assert probe is True
    with pytest.raises(CircuitOpenError):  # the single probe slot is taken
        breaker.before_call()
    breaker.on_success(probe)
    assert breaker.state == "closed"
    assert breaker.before_call() is False


def test_half_open_failure_reopens_for_another_recovery_time() -> None:
    breaker, clock = make(threshold=1, recovery=5.0)
    fail(breaker)
    clock.now += 5.0
    probe = breaker.before_call()
    breaker.on_failure(probe)
    assert breaker.state == "open"
    assert breaker.snapshot()["times_opened"] == 2
    with pytest.raises(CircuitOpenError) as info:
        breaker.before_call()
    assert info.value.retry_at == clock.now + 5.0


def test_ignored_probe_frees_its_slot() -> None:
    breaker, clock = make(threshold=1, recovery=1.0)
    fail(breaker)
    clock.now += 1.0
    breaker.on_ignored(breaker.before_call())
    assert breaker.before_call() is True


def test_late_success_of_a_pre_open_call_does_not_close() -> None:
    breaker, _ = make(threshold=1)
    admitted = breaker.before_call()
    fail(breaker)
    breaker.on_success(admitted)
    assert breaker.state == "open"
