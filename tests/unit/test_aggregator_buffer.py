from datetime import UTC, datetime, timedelta, timezone

import pytest
from hypothesis import given
from hypothesis import strategies as st

from aggregator import BufferPolicy, InvalidBufferStateError, InvalidConfigError, NaiveDatetimeError

NOW = datetime(2025, 3, 1, 12, 0, 0, tzinfo=UTC)


def ago(seconds: float) -> datetime:
    return NOW - timedelta(seconds=seconds)


def test_count_trigger_fires_at_buffer_size() -> None:
    policy = BufferPolicy(buffer_size=3, max_wait_seconds=None)
    assert not policy.should_aggregate(2, ago(1), NOW)
    assert policy.should_aggregate(3, ago(1), NOW)
    assert policy.should_aggregate(7, ago(1), NOW)


def test_nothing_pending_never_aggregates() -> None:
    policy = BufferPolicy(buffer_size=1, max_wait_seconds=5.0)
    assert not policy.should_aggregate(0, None, NOW)


def test_time_trigger_fires_once_the_oldest_waited_max_wait() -> None:
    policy = BufferPolicy(buffer_size=10, max_wait_seconds=30.0)
    assert not policy.should_aggregate(2, ago(29.999), NOW)
    assert policy.should_aggregate(2, ago(30.0), NOW)  # boundary: waited exactly max_wait
    assert policy.should_aggregate(1, ago(3600), NOW)


def test_time_trigger_needs_at_least_one_pending_update() -> None:
    policy = BufferPolicy(buffer_size=10, max_wait_seconds=30.0)
    assert not policy.should_aggregate(0, ago(3600), NOW)


def test_without_max_wait_only_the_count_matters() -> None:
    policy = BufferPolicy(buffer_size=10, max_wait_seconds=None)
    assert not policy.should_aggregate(9, ago(10**6), NOW)


def test_time_trigger_compares_instants_across_timezones() -> None:
    policy = BufferPolicy(buffer_size=10, max_wait_seconds=60.0)
    plus_two = timezone(timedelta(hours=2))
    # 13:59:30 at +02:00 is 11:59:30 UTC: 30 s before NOW, not yet 60 s
    assert not policy.should_aggregate(1, datetime(2025, 3, 1, 13, 59, 30, tzinfo=plus_two), NOW)
    # 13:58:30 at +02:00 is 11:58:30 UTC: 90 s before NOW
    assert policy.should_aggregate(1, datetime(2025, 3, 1, 13, 58, 30, tzinfo=plus_two), NOW)


def test_oldest_in_the_future_does_not_trigger() -> None:
    policy = BufferPolicy(buffer_size=10, max_wait_seconds=1.0)
    assert not policy.should_aggregate(1, NOW + timedelta(seconds=5), NOW)


def test_naive_now_is_rejected() -> None:
    policy = BufferPolicy(buffer_size=2, max_wait_seconds=1.0)
    with pytest.raises(NaiveDatetimeError, match="now"):
        policy.should_aggregate(1, ago(5), datetime(2025, 3, 1, 12, 0, 0))


def test_naive_oldest_is_rejected_even_when_count_fires() -> None:
    policy = BufferPolicy(buffer_size=1, max_wait_seconds=None)
    with pytest.raises(NaiveDatetimeError, match="2025-03-01T11:00:00"):
        policy.should_aggregate(5, datetime(2025, 3, 1, 11, 0, 0), NOW)


def test_pending_without_receive_time_is_an_error_when_time_matters() -> None:
    policy = BufferPolicy(buffer_size=10, max_wait_seconds=1.0)
    with pytest.raises(InvalidBufferStateError, match="pending_count is 3"):
        policy.should_aggregate(3, None, NOW)


def test_negative_pending_count_is_rejected() -> None:
    policy = BufferPolicy(buffer_size=10, max_wait_seconds=1.0)
    with pytest.raises(InvalidBufferStateError, match="-1"):
        policy.should_aggregate(-1, None, NOW)


@pytest.mark.parametrize(
    ("buffer_size", "max_wait_seconds", "message"),
    [
        (0, None, "buffer_size.*0"),
        (-4, None, "-4"),
        (2.0, None, "2.0"),
        (True, None, "True"),
        (5, 0.0, "max_wait_seconds.*0.0"),
        (5, -1.0, "-1.0"),
        (5, float("inf"), "inf"),
    ],
)
def test_policy_validates_on_construction(buffer_size: int, max_wait_seconds: float | None, message: str) -> None:
    with pytest.raises(InvalidConfigError, match=message):
        BufferPolicy(buffer_size=buffer_size, max_wait_seconds=max_wait_seconds)


@given(
    buffer_size=st.integers(min_value=1, max_value=50),
    pending=st.integers(min_value=0, max_value=100),
    waited=st.floats(min_value=0.0, max_value=1e5, allow_nan=False),
    max_wait=st.floats(min_value=0.001, max_value=1e5, allow_nan=False),
)
def test_trigger_matches_its_definition(buffer_size: int, pending: int, waited: float, max_wait: float) -> None:
    policy = BufferPolicy(buffer_size=buffer_size, max_wait_seconds=max_wait)
    oldest = NOW - timedelta(seconds=waited)
    actual_wait = (NOW - oldest).total_seconds()  # timedelta rounds to microseconds
    expected = pending >= buffer_size or (pending >= 1 and actual_wait >= max_wait)
    assert policy.should_aggregate(pending, oldest, NOW) == expected
