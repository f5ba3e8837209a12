"""The one retry-timing helper: Retry-After in seconds, as an HTTP date and as retry-after-ms; jittered
backoff bounds; every wait capped by the caller's own timeout."""
from __future__ import annotations

import email.message
import random
import time

from polycap.transforms.retry import backoff_s, retry_after_s, retry_wait_s


def _http_date(offset_s: float) -> str:
    return time.strftime("%a, %d %b %Y %H:%M:%S GMT", time.gmtime(time.time() + offset_s))


def test_retry_after_forms():
    assert retry_after_s({"retry-after": "2"}) == 2.0
    assert retry_after_s({"retry-after": " 1.5 "}) == 1.5
    assert retry_after_s({"retry-after-ms": "150", "retry-after": "9"}) == 0.15   # ms is the finer one
    assert retry_after_s({"retry-after-ms": "soon", "retry-after": "9"}) == 9.0
    assert 25 < retry_after_s({"retry-after": _http_date(30)}) <= 31
    assert retry_after_s({"retry-after": _http_date(-60)}) == 0.0                 # a date in the past
    assert retry_after_s({"retry-after": "-5"}) == 0.0
    for absent in (None, {}, {"retry-after": ""}, {"retry-after": "whenever"}):
        assert retry_after_s(absent) is None


def test_urllib_headers_are_case_insensitive():
    msg = email.message.Message()          # what urllib's HTTPError.headers is
    msg["Retry-After"] = "3"
    assert retry_after_s(msg) == 3.0


def test_backoff_grows_with_equal_jitter_and_is_capped():
    rng = random.Random(0)
    waits = [backoff_s(n, 0.5, 8.0, rng) for n in range(8)]
    assert 0.25 <= waits[0] <= 0.5 and all(4.0 <= w <= 8.0 for w in waits[5:])
    assert waits[3] > waits[0]
    assert backoff_s(0, 0.5, 8.0, random.Random(1)) == backoff_s(0, 0.5, 8.0, random.Random(1))  # seeded


def test_wait_prefers_the_server_and_never_exceeds_the_callers_timeout():
    rng = random.Random(0)
    assert retry_wait_s(0, 2.0, limit=10.0, rng=rng) == 2.0       # the server's Retry-After
    assert retry_wait_s(0, 3600.0, limit=10.0, rng=rng) == 10.0   # an hour is cut to the stage's timeout
    assert retry_wait_s(6, None, limit=1.0, rng=rng) == 1.0       # so is a long backoff step
    assert 0.25 <= retry_wait_s(0, None, limit=10.0, rng=rng) <= 0.5
    assert retry_wait_s(0, 0.0, limit=10.0, rng=rng) == 0.0       # Retry-After: 0 means now
