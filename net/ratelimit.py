"""Token buckets: how the relay caps what one client, or one address, may send per second."""

from __future__ import annotations

import time


class TokenBucket:
    """Allows `rate` events per second on average and bursts of up to `burst`."""

    __slots__ = ("_stamp", "_tokens", "burst", "rate")

    def __init__(self, rate: float, burst: float) -> None:
        self.rate = float(rate)
        self.burst = float(burst)
        self._tokens = float(burst)
        self._stamp = time.monotonic()

    def _refill(self) -> None:
        now = time.monotonic()
        self._tokens = min(self.burst, self._tokens + (now - self._stamp) * self.rate)
        self._stamp = now

    def take(self, n: float = 1.0) -> bool:
        """Spend `n` tokens if there are enough; False (and nothing spent) otherwise."""
        self._refill()
        if self._tokens >= n:
            self._tokens -= n
            return True
        return False

    def refund(self, n: float = 1.0) -> None:
        """Give back `n` tokens taken for something that did not happen (never above the burst)."""
        self._refill()
        self._tokens = min(self.burst, self._tokens + n)

    @property
    def full(self) -> bool:
        """Whether the bucket has refilled to its burst (nothing spent lately)."""
        self._refill()
        return self._tokens >= self.burst

    def wait_time(self, n: float = 1.0) -> float:
        """Seconds until `n` tokens will be there (0 if they are now)."""
        self._refill()
        return 0.0 if self._tokens >= n else (n - self._tokens) / self.rate


class BucketsByKey:
    """One `TokenBucket` per key (a client address), made on first use.

    Buckets that have refilled are forgotten once there are more than `max_keys`, so
    memory stays bounded however many addresses come and go.
    """

    def __init__(self, rate: float, burst: float, max_keys: int = 10_000) -> None:
        self.rate = rate
        self.burst = burst
        self.max_keys = max_keys
        self._buckets: dict[str, TokenBucket] = {}

    def __getitem__(self, key: str) -> TokenBucket:
        bucket = self._buckets.get(key)
        if bucket is None:
            if len(self._buckets) >= self.max_keys:
                for k in [k for k, b in self._buckets.items() if b.full]:
                    del self._buckets[k]
            bucket = self._buckets[key] = TokenBucket(self.rate, self.burst)
        return bucket

    def __len__(self) -> int:
        return len(self._buckets)

    def take(self, key: str, n: float = 1.0) -> bool:
        return self[key].take(n)

    def refund(self, key: str, n: float = 1.0) -> None:
        bucket = self._buckets.get(key)
        if bucket is not None:
            bucket.refund(n)
