"""The simulator's rate limit: a token bucket, as hosted APIs meter requests per minute.

`rate` requests per second refill the bucket, which holds at most `burst` (one second's worth by
default, at least one). A request that finds it empty is refused with HTTP 429 and told how long
until a token is back, which the server sends as Retry-After (and OpenAI's `retry-after-ms`).
"""

from __future__ import annotations


class TokenBucket:
    __slots__ = ("_at", "_tokens", "burst", "rate")

    def __init__(self, rate: float, burst: float | None = None) -> None:
        self.rate = rate
        self.burst = max(1.0, rate if burst is None else burst)
        self._tokens = self.burst
        self._at: float | None = None

    def take(self, now: float) -> float:
        """0 when a request may pass (and takes its token), else seconds until one could."""
        if self._at is not None:
            self._tokens = min(self.burst, self._tokens + (now - self._at) * self.rate)
        self._at = now
        if self._tokens >= 1:
            self._tokens -= 1
            return 0.0
        return (1 - self._tokens) / self.rate
