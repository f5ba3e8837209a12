"""Retry timing for calls to servers: the wait a server asks for, jittered exponential backoff, one cap."""
from __future__ import annotations

import email.utils
import random
import time
from typing import Any

BACKOFF_BASE_S = 0.5    # the first retry waits 0.25-0.5 s, the next 0.5-1 s, ... (equal jitter, below)
BACKOFF_MAX_S = 30.0    # a backoff step never exceeds this


def retry_after_s(headers: Any) -> float | None:
    """Seconds the server asks us to wait: `retry-after-ms` (OpenAI-style), else `Retry-After` in seconds
    or as an HTTP date (RFC 9110 §10.2.3); None when absent or unparsable. `headers` needs only `.get`
    (urllib's and httpx's headers look names up case-insensitively; a plain dict needs lower case)."""
    if headers is None:
        return None
    ms = headers.get("retry-after-ms")
    if ms is not None:
        try:
            return max(0.0, float(ms) / 1000)
        except ValueError:
            pass
    value = (headers.get("retry-after") or "").strip()
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def backoff_s(retry: int, base: float = BACKOFF_BASE_S, cap: float = BACKOFF_MAX_S,
              rng: random.Random | None = None) -> float:
    """Exponential backoff before retry number `retry` (0-based) with "equal jitter": half of the capped
    step fixed, half random, so clients that failed together do not retry together (Brooker,
    "Exponential Backoff And Jitter", AWS Architecture Blog, 2015)."""
    step = min(cap, base * 2 ** retry)
    return step / 2 + (rng or random).uniform(0, step / 2)


def retry_wait_s(retry: int, requested: float | None, limit: float, base: float = BACKOFF_BASE_S,
                 cap: float = BACKOFF_MAX_S, rng: random.Random | None = None) -> float:
    """How long to sleep before retry number `retry`: the server's `requested` wait (Retry-After) if any,
    else backoff; never more than `limit`, the calling stage's own timeout (a server asking for an hour
    must not park a worker for an hour; the retry then simply fails again and is counted)."""
    wait = requested if requested is not None else backoff_s(retry, base, cap, rng)
    return max(0.0, min(wait, limit))
