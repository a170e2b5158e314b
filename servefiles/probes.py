"""The health and readiness probes: the readiness rule, and what each caller is told.

``GET /_servefiles/health`` is liveness: 200 whenever the process can answer, whatever the
database does (a load balancer or an orchestrator restarts what fails it, and restarting a
frontend cures no database). ``GET /_servefiles/ready`` is readiness, decided here by
:func:`readiness` from a :class:`~servefiles.levels.Levels` snapshot, and nowhere else: the
adapters and the admin listener only carry the verdict out.

Anonymous callers learn the status and a short, fixed reason; the detailed report (the
state, the store's last error, the feed's cursor and lag, cache sizes) goes to a request
carrying a valid upload token, or to any caller of the admin listener (``--admin-port``),
which an operator binds where only they can reach it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .levels import Levels, TierLevels


@dataclass(frozen=True, slots=True)
class Readiness:
    ready: bool
    reason: str
    """Short and fixed for each case: it names no host, key or secret."""


def readiness(levels: Levels) -> Readiness:
    """Whether this frontend should receive traffic (issue 19), in this order:

    * not while it is stopping or stopped;
    * not until the store has answered (it was opened), and the disk index is open;
    * not until the change feed has caught up once (without it no cached copy is vouched for,
      and the first requests would all be revalidations), when the service follows one;
    * not while the store is out of reach: the feed down for longer than the freshness
      window (so no copy may be served as fresh) AND the circuit breaker open (queries
      failing). Without a feed (``feed=False``) the breaker alone decides.

    Otherwise ready, also with the feed down while queries still succeed (copies are then
    revalidated every ``freshness_seconds``). Every frontend of one database turns unready
    together while that database is out of reach: a load balancer that then keeps routing
    to all of them (as most do when none is healthy) gets the stale copies they still serve.
    """
    if levels.state in ("stopping", "stopped"):
        return Readiness(False, "shutting down")
    if not levels.store_answered:
        return Readiness(False, "store unavailable" if levels.store_error else "starting: waiting for the store")
    if not levels.disk_open:
        return Readiness(False, "starting: disk cache index not open")
    feed = levels.feed
    if levels.feed_enabled:
        if feed is None or not feed.caught_up_once:
            return Readiness(False, "starting: change feed catching up")
        feed_down = feed.lag_seconds > levels.freshness_seconds
    else:
        feed_down = True
    if feed_down and levels.breaker_open:
        return Readiness(False, "store unreachable: change feed down and circuit open")
    if levels.feed_enabled and feed is not None and not feed.connected:
        return Readiness(True, "ready: change feed down, revalidating")
    return Readiness(True, "ready")


def health_report(levels: Levels, detailed: bool) -> dict[str, Any]:
    """The liveness report (always ``"status": "ok"``; the reason is the life-cycle state)."""
    report: dict[str, Any] = {"status": "ok", "reason": levels.state}
    return {**report, **details(levels)} if detailed else report


def ready_report(levels: Levels, verdict: Readiness, detailed: bool) -> dict[str, Any]:
    """The readiness report: ``"status"`` is ``"ready"`` or ``"not ready"``, with the reason."""
    report: dict[str, Any] = {"status": "ready" if verdict.ready else "not ready", "reason": verdict.reason}
    return {**report, **details(levels)} if detailed else report


def details(levels: Levels) -> dict[str, Any]:
    """The detailed report: ``state``; ``store`` (``"ok"``, ``"not connected"`` or ``"unavailable:
    REASON"``, DSNs without their password); ``breaker_open``; ``feed`` (while one runs: connected
    as ``healthy``, ``cursor``, ``lag_versions``, ``lag_seconds``, ``last_change_age_seconds``,
    ``error``); ``disk`` (entries, bytes, max_bytes; None while its index is not open; or its
    error); ``memory`` (entries, bytes, max_bytes); ``fills_in_flight``."""
    if levels.store_error is not None:
        store = f"unavailable: {levels.store_error}"
    else:
        store = "ok" if levels.store_answered else "not connected"
    report: dict[str, Any] = {"state": levels.state, "store": store, "breaker_open": levels.breaker_open}
    feed = levels.feed
    if feed is not None:
        report["feed"] = {
            "healthy": feed.connected, "cursor": feed.cursor, "lag_versions": feed.lag_versions,
            "lag_seconds": round(feed.lag_seconds, 3),
            "last_change_age_seconds": _rounded(feed.last_change_age_seconds), "error": feed.error,
        }  # fmt: skip
    report["disk"] = {"error": levels.disk_error} if levels.disk_error else _tier(levels.disk)
    report["memory"] = _tier(levels.memory)
    report["fills_in_flight"] = levels.fills_in_flight
    return report


def _tier(tier: TierLevels | None) -> dict[str, int] | None:
    return None if tier is None else {"entries": tier.entries, "bytes": tier.bytes, "max_bytes": tier.max_bytes}


def _rounded(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds, 3)
