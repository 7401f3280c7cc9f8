"""Token buckets per principal: a burst, then the refill rate, and how long to wait."""

import pytest

from gateway.admission import RateLimiter, TokenBucket


def test_a_bucket_allows_its_burst_then_says_when_to_retry():
    bucket = TokenBucket(rate_per_s=2.0, burst=3, now=0.0)
    assert [bucket.take(0.0) for _ in range(3)] == [0.0, 0.0, 0.0]
    assert bucket.take(0.0) == pytest.approx(0.5)
    assert bucket.take(0.5) == 0.0
    assert bucket.take(0.5) == pytest.approx(0.5)


def test_principals_have_buckets_of_their_own():
    clock = iter([0.0] * 10)
    limiter = RateLimiter(rate_per_s=1.0, burst=1, clock=lambda: next(clock))
    assert limiter.take("alice") == 0.0
    assert limiter.take("alice") > 0
    assert limiter.take("bob") == 0.0


def test_rate_zero_means_no_limit():
    limiter = RateLimiter(rate_per_s=0.0, burst=0)
    assert all(limiter.take("x") == 0.0 for _ in range(1000))
