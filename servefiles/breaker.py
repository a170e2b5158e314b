"""A circuit breaker between the frontends and a database that has gone away.

After ``threshold`` failures in a row the circuit opens: calls fail at once
(a 503, or a stale copy) instead of each waiting on a dead database, and the
database is not hammered by every request of every frontend. After a cooldown
one trial call is let through; success closes the circuit, failure doubles
the cooldown (up to ``max_cooldown``).
"""

from __future__ import annotations

import time
from collections.abc import Callable

from .errors import StoreUnavailable


class CircuitBreaker:
    def __init__(
        self,
        threshold: int = 3,
        cooldown: float = 0.5,
        max_cooldown: float = 15.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.threshold = threshold
        self.first_cooldown = cooldown
        self.max_cooldown = max_cooldown
        self._clock = clock
        self._failures = 0
        self._cooldown = cooldown
        self._open_until: float | None = None
        self._trial_running = False
        self.rejected = 0

    @property
    def is_open(self) -> bool:
        return self._open_until is not None

    def before(self) -> None:
        """Raise :class:`StoreUnavailable` if a call must not reach the database now, with
        :meth:`retry_after` as its ``retry_after`` (seconds)."""
        if self._open_until is None:
            return
        if self._clock() < self._open_until or self._trial_running:
            self.rejected += 1
            raise StoreUnavailable("database unavailable (circuit open)", retry_after=self.retry_after())
        self._trial_running = True  # half-open: this one call tries

    def succeeded(self) -> None:
        self._failures = 0
        self._cooldown = self.first_cooldown
        self._open_until = None
        self._trial_running = False

    def failed(self) -> None:
        self._failures += 1
        if self._trial_running or self._failures >= self.threshold:
            if self._trial_running:
                self._cooldown = min(self._cooldown * 2, self.max_cooldown)
            self._open_until = self._clock() + self._cooldown
            self._trial_running = False

    def abandoned(self) -> None:
        """A trial call ended without an answer (cancelled): let the next one try."""
        self._trial_running = False

    def retry_after(self) -> float:
        """Seconds until the next trial (0 when closed)."""
        return 0.0 if self._open_until is None else max(0.0, self._open_until - self._clock())
