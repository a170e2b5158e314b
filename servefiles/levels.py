"""A frontend's state at one instant: what the probes and the metrics scrape report.

:meth:`servefiles.runtime.Runtime.levels` reads it from the process's own objects without
waiting on anything (the database least of all), so a liveness probe, a readiness probe
and a Prometheus scrape answer at once in every state. The readiness rule
(:mod:`servefiles.probes`) and the scrape-time gauges (:mod:`servefiles.metrics`) are
pure functions of it. Sizes are in bytes, durations in seconds.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class FeedLevels:
    """The change feed's position and health (see :mod:`servefiles.feed`)."""

    connected: bool
    """Connected and caught up at its last wake-up: cached copies need no revalidation."""
    caught_up_once: bool
    """It has caught up with the store at least once since it started."""
    cursor: int
    """The last version applied."""
    lag_versions: int
    """Versions this frontend has seen the store issue (answers to its queries, its own
    writes, the feed's reconnect) beyond the cursor: a lower bound of what it has not applied."""
    lag_seconds: float
    """0 while connected; else seconds since it last was (since it started, if never):
    changes made since then may not be applied."""
    last_change_age_seconds: float | None
    """Seconds since it last applied a change (None: none since it started)."""
    error: str | None
    """Why it last failed (DSNs without their password), until it is back."""


@dataclass(frozen=True, slots=True)
class TierLevels:
    """One cache tier's size."""

    entries: int
    bytes: int
    max_bytes: int


@dataclass(frozen=True, slots=True)
class Levels:
    """One frontend's state at one instant (see the module)."""

    state: str
    """``"not started"``, ``"starting"``, ``"running"``, ``"stopping"`` or ``"stopped"``."""
    store_answered: bool
    """The store was opened (it answered) since the last start; False again once closed."""
    store_error: str | None
    """Why the store last failed, start-up or query, until it answers again (no password)."""
    breaker_open: bool
    """The circuit breaker refuses queries: the store failed several times in a row."""
    memory: TierLevels
    disk_open: bool
    """The disk tier's index is open (:meth:`DiskCache.open` ran, :meth:`DiskCache.close` not since)."""
    disk: TierLevels | None
    """None while the disk index is not open, or when its size could not be read (``disk_error``)."""
    disk_error: str | None
    """Why the disk tier's size could not be read (its index is open but failed)."""
    fills_in_flight: int
    """Store fetches filling the cache right now (one per key and version)."""
    feed_enabled: bool
    """The service follows a change feed (``feed=True``, the default)."""
    feed: FeedLevels | None
    """None while no feed runs (not started, stopped, or ``feed=False``)."""
    freshness_seconds: float
    """How long a copy is trusted without the feed (``freshness_seconds``)."""
