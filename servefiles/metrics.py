"""Prometheus metrics of one servefiles instance, in Prometheus conventions (base units:
seconds and bytes; counters end in ``_total``).

Each instance has its own registry (two middlewares in one process, as in the tests, never
collide). What the hit path touches costs as little as Python allows: a memory hit adds one
to a locked number (:class:`Tally`) and one observation to a lock-free histogram child chosen
without a label lookup (:class:`Timings`), about 0.3 µs in all; the sizes of the tiers, the
feed's lag and the breaker are not updated per request at all but read at scrape time from a
:class:`~servefiles.levels.Levels` snapshot. prometheus_client's own ``Counter`` (a lock per
increment, about 0.3 µs) stays for what happens off the hit path.

The names are listed in :data:`FAMILIES`; the README's "Metrics" section explains each.
"""

from __future__ import annotations

import threading
import time
from bisect import bisect_left
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Final

from prometheus_client import CollectorRegistry, Counter, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

from .errors import ContentChanged, StoreUnavailable
from .levels import Levels
from .probes import readiness

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

DURATION_BUCKETS: Final = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
                           1.0, 2.5, 5.0, 10.0)  # fmt: skip
"""Upper bounds (seconds) of the duration histograms: from a memory hit (tens of µs
in-process) to a large miss over a slow database (seconds)."""
OUTCOMES: Final = ("memory_hit", "disk_hit", "miss", "not_modified", "client_error", "server_error")
"""The ``outcome`` of a read request: a 304 from any tier is ``not_modified``, a 4xx
``client_error`` (404, 403, 412, 416…), a 5xx ``server_error``; any other reply is named by
the tier that answered it (a 200, a 206, a HEAD)."""
STORE_ERROR_KINDS: Final = ("connect", "query", "read", "changed", "feed", "circuit_open")
"""``connect``: opening the store failed (start-up); ``query``: a metadata query (a miss's or a
revalidation's) failed; ``read``: a content read failed mid-way; ``changed``: the file changed
under a read (it is read again); ``feed``: the change feed lost its connection or could not make
one; ``circuit_open``: a query refused at once by the open circuit breaker."""
REJECTION_REASONS: Final = ("bad_key", "header_limits", "auth", "private")
"""``bad_key``: a key the key gate refuses (404 to a read, 400 to a write); ``header_limits``:
a request head over ``servefiles serve``'s limits (414, 431); ``auth``: a write API request
without a valid upload token, or outside the token's folder (401, 403); ``private``: a read of
a private file without a valid signature or the hook's grant (403)."""
FAMILIES: Final = (
    "servefiles_hits", "servefiles_misses", "servefiles_store_fetches", "servefiles_bytes_sent",
    "servefiles_cache_write_failures", "servefiles_admissions", "servefiles_admission_rejections",
    "servefiles_revalidations", "servefiles_stale_served", "servefiles_evictions", "servefiles_cache_files_hashed",
    "servefiles_request_duration_seconds", "servefiles_store_fetch_duration_seconds",
    "servefiles_store_fetch_bytes", "servefiles_fill_duration_seconds", "servefiles_store_errors",
    "servefiles_rejected_requests", "servefiles_cache_bytes", "servefiles_cache_max_bytes",
    "servefiles_cache_entries", "servefiles_fills_in_flight", "servefiles_feed_connected",
    "servefiles_feed_cursor", "servefiles_feed_lag_versions", "servefiles_feed_lag_seconds",
    "servefiles_feed_last_change_age_seconds", "servefiles_breaker_open", "servefiles_ready",
)  # fmt: skip
"""Every metric family servefiles exposes (the names before ``_total``, ``_bucket``…)."""


class Tally:
    """A counter read at scrape time: a plain number behind a lock of its own (the WSGI adapter's
    request threads count the hits they answer beside the event loop; an uncontended lock costs
    about 0.1 µs, prometheus_client's ``Counter`` about 0.3)."""

    __slots__ = ("_lock", "value")

    def __init__(self) -> None:
        self.value = 0.0
        self._lock = threading.Lock()

    def inc(self, amount: float = 1.0) -> None:
        with self._lock:
            self.value += amount


class Timings:
    """One histogram child: counts per bucket of :data:`DURATION_BUCKETS` and the sum (seconds).

    :meth:`observe` takes no lock, for the event loop's thread; :meth:`observe_locked` is for
    other threads (the WSGI adapter's request threads), which never share a child with a loop."""

    __slots__ = ("_lock", "counts", "sum")

    def __init__(self) -> None:
        self.counts = [0] * (len(DURATION_BUCKETS) + 1)
        self.sum = 0.0
        self._lock = threading.Lock()

    def observe(self, seconds: float) -> None:
        self.counts[bisect_left(DURATION_BUCKETS, seconds)] += 1  # bucket "le": bound >= seconds
        self.sum += seconds

    def observe_locked(self, seconds: float) -> None:
        with self._lock:
            self.observe(seconds)

    def buckets(self) -> list[tuple[str, float]]:
        """Cumulative, as the exposition wants them, ``+Inf`` last."""
        total, cumulative = 0, []
        for bound, count in zip((*(str(b) for b in DURATION_BUCKETS), "+Inf"), self.counts, strict=True):
            total += count
            cumulative.append((bound, float(total)))
        return cumulative


class Metrics:
    """The metrics of one instance (see the module); :meth:`render` is the exposition."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        # Each request for an existing file is one hit or one miss (FileService.serve counts it);
        # a reply about no file (404, 405, 503) is neither. Counted on any thread: Tally.
        self.memory_hits, self.disk_hits, self.misses = Tally(), Tally(), Tally()
        self.requests = {outcome: Timings() for outcome in OUTCOMES}
        """Read requests' durations by outcome: from the adapter's call to the reply handed over
        (a streamed body: to its end). Choose a child with :meth:`request_timings`."""
        self.store_fetch = Timings()
        """Seconds spent waiting for one content read from the store (not for the client)."""
        self.store_fetch_bytes = Tally()
        self.bytes_sent = Tally()
        """Body bytes handed to the server: counted per request, on any thread (a Tally, not a Counter:
        prometheus_client's ``inc`` was 1 µs of a WSGI memory hit's 8)."""
        self.fills = Timings()
        self.store_errors = {kind: Tally() for kind in STORE_ERROR_KINDS}
        """Incremented on the loop; ``feed`` and ``circuit_open`` come from :meth:`watch`'s sources."""
        self.store_fetches = self._counter("servefiles_store_fetches", "Content reads from the store")
        self.cache_write_failures = self._counter("servefiles_cache_write_failures", "Disk-tier writes that failed")
        self.admissions = self._counter(
            "servefiles_admissions", "Misses whose file was admitted to the disk tier (written through)"
        )
        self.admission_rejections = self._counter(
            "servefiles_admission_rejections",
            "Misses whose file was not yet asked for often enough to be written to the disk tier",
        )
        self.revalidations = self._counter("servefiles_revalidations", "Metadata queries for a key's current version")
        self.stale_served = self._counter(
            "servefiles_stale_served", "Cached files served while the store was unreachable (stale-if-error)"
        )
        rejected = Counter(
            "servefiles_rejected_requests",
            "Requests refused before any lookup, by reason: bad_key, header_limits, auth, private",
            ["reason"],
            registry=self.registry,
        )
        self.rejected = {reason: rejected.labels(reason=reason) for reason in REJECTION_REASONS}
        self._levels: Callable[[], Levels] | None = None
        self._evictions: dict[str, Callable[[], int]] = {}
        self._hashed: Callable[[], int] = lambda: 0
        self._error_sources: dict[str, Callable[[], int]] = {}
        self.registry.register(_Scraped(self))

    def _counter(self, name: str, documentation: str) -> Counter:
        return Counter(name, documentation, registry=self.registry)

    def watch(
        self,
        levels: Callable[[], Levels],
        evictions: dict[str, Callable[[], int]],
        store_errors: dict[str, Callable[[], int]],
        hashed: Callable[[], int] = lambda: 0,
    ) -> None:
        """Read at scrape time: the state (gauges), each tier's evictions, store errors counted
        elsewhere (``feed``: the feed's failures; ``circuit_open``: the breaker's refusals), and the
        disk tier's files hashed to check them."""
        self._levels = levels
        self._evictions = evictions
        self._hashed = hashed
        self._error_sources = store_errors

    def request_timings(self, status: int, source: str | None) -> Timings:
        """The histogram child of a read reply (see :data:`OUTCOMES`): no label lookup."""
        if status == 304:
            return self.requests["not_modified"]
        if status >= 400:
            return self.requests["server_error" if status >= 500 else "client_error"]
        if source == "memory":
            return self.requests["memory_hit"]
        return self.requests["disk_hit" if source == "disk" else "miss"]

    async def fetched(self, reading: AsyncIterator[bytes], held: int = 0) -> AsyncIterator[bytes]:
        """``reading``, a content read from the store, passed through: its bytes counted, the time
        spent waiting for its chunks observed as one fetch, a failure counted by kind. ``held``: how
        many of its bytes come from a head fetched (and counted) with the metadata; a read that
        brings nothing more made no query and is not observed."""
        waited, size = 0.0, 0
        try:
            while True:
                started = time.perf_counter()
                try:
                    chunk = await anext(reading)
                except StopAsyncIteration:
                    break
                finally:
                    waited += time.perf_counter() - started
                size += len(chunk)
                yield chunk
        except StoreUnavailable:
            self.store_errors["read"].inc()
            raise
        except ContentChanged:
            self.store_errors["changed"].inc()
            raise
        finally:
            if size > held:
                self.store_fetch.observe(waited)
                self.store_fetch_bytes.inc(size - held)
            closing = getattr(reading, "aclose", None)
            if closing is not None:
                await closing()

    def value(self, name: str, **labels: str) -> float:
        """A sample's current value (0 when absent): for tests and ``stats``."""
        return self.registry.get_sample_value(name, labels) or 0.0

    def render(self) -> bytes:
        return generate_latest(self.registry)


class _Scraped(Collector):
    """What is kept outside prometheus_client (see the module), exposed at scrape time."""

    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics

    def collect(self) -> Iterator[Metric]:
        metrics = self._metrics
        yield _counter("servefiles_hits", "Requests for a file answered from this tier's copy, whatever the status "
                       "(200, 206, 304, 412, 416, HEAD; a stale copy while the store is down too)", "tier",
                       {"memory": metrics.memory_hits.value, "disk": metrics.disk_hits.value})  # fmt: skip
        yield _counter("servefiles_misses", "Requests for a file no cache tier held: its content came from a store "
                       "fetch (a HEAD, 304, 412 or 416 needs its metadata only); 404s are neither hits nor misses",
                       None, {"": metrics.misses.value})  # fmt: skip
        yield _counter("servefiles_evictions", "Entries evicted from a cache tier", "tier",
                       {tier: read() for tier, read in metrics._evictions.items()})  # fmt: skip
        yield _counter("servefiles_cache_files_hashed", "Disk-tier files read through and hashed against their "
                       "sha256: before this process first serves a file, and again on each read within the settle "
                       "time of its last change", None, {"": float(metrics._hashed())})  # fmt: skip
        errors = {kind: tally.value for kind, tally in metrics.store_errors.items()}
        errors.update({kind: float(read()) for kind, read in metrics._error_sources.items()})
        yield _counter("servefiles_store_errors", "Store failures by kind: connect, query, read, changed, feed, "
                       "circuit_open", "kind", errors)  # fmt: skip
        yield _counter("servefiles_store_fetch_bytes", "Content bytes read from the store", None,
                       {"": metrics.store_fetch_bytes.value})  # fmt: skip
        yield _counter("servefiles_bytes_sent", "Body bytes handed to the server", None,
                       {"": metrics.bytes_sent.value})  # fmt: skip
        requests = HistogramMetricFamily("servefiles_request_duration_seconds", "Read requests (GET, HEAD under "
                                         "the prefix) from arrival to the reply handed over, by outcome",
                                         labels=["outcome"])  # fmt: skip
        for outcome, timings in metrics.requests.items():
            requests.add_metric([outcome], timings.buckets(), timings.sum)
        yield requests
        yield _histogram("servefiles_store_fetch_duration_seconds", "Time spent waiting for one content read "
                         "from the store (a head fetched with the metadata, or a read)", metrics.store_fetch)
        yield _histogram("servefiles_fill_duration_seconds", "Cache fills from start to the copy in place (or "
                         "given up)", metrics.fills)  # fmt: skip
        if metrics._levels is not None:
            yield from _gauges(metrics._levels())


def _counter(name: str, documentation: str, label: str | None, values: dict[str, float]) -> CounterMetricFamily:
    family = CounterMetricFamily(name, documentation, labels=[label] if label else None)
    for value_label, value in values.items():
        family.add_metric([value_label] if label else [], value)
    return family


def _histogram(name: str, documentation: str, timings: Timings) -> HistogramMetricFamily:
    return HistogramMetricFamily(name, documentation, buckets=timings.buckets(), sum_value=timings.sum)


def _gauge(name: str, documentation: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, documentation, value=value)


def _per_tier(name: str, documentation: str, values: dict[str, float]) -> GaugeMetricFamily:
    family = GaugeMetricFamily(name, documentation, labels=["tier"])
    for tier, value in values.items():
        family.add_metric([tier], value)
    return family


def _gauges(levels: Levels) -> Iterator[GaugeMetricFamily]:
    """The state's gauges, from one snapshot. Tier sizes and the disk tier's entries are absent
    while its index is not open; the feed's gauges are 0 while no feed runs."""
    tiers = {"memory": levels.memory, **({"disk": levels.disk} if levels.disk is not None else {})}
    yield _per_tier("servefiles_cache_bytes", "Bytes held by a cache tier",
                    {tier: sizes.bytes for tier, sizes in tiers.items()})  # fmt: skip
    yield _per_tier("servefiles_cache_max_bytes", "A cache tier's budget",
                    {tier: sizes.max_bytes for tier, sizes in tiers.items()})  # fmt: skip
    yield _per_tier("servefiles_cache_entries", "Files held by a cache tier",
                    {tier: sizes.entries for tier, sizes in tiers.items()})  # fmt: skip
    yield _gauge("servefiles_fills_in_flight", "Store fetches filling the cache now", levels.fills_in_flight)
    feed = levels.feed
    yield _gauge("servefiles_feed_connected", "1 while the change feed is connected and caught up",
                 float(feed is not None and feed.connected))  # fmt: skip
    yield _gauge("servefiles_feed_cursor", "The last version the change feed applied", feed.cursor if feed else 0)
    yield _gauge("servefiles_feed_lag_versions", "Versions seen issued by the store beyond the feed's cursor",
                 feed.lag_versions if feed else 0)  # fmt: skip
    yield _gauge("servefiles_feed_lag_seconds", "0 while the feed is connected; else seconds since it was",
                 feed.lag_seconds if feed else 0)  # fmt: skip
    age = feed.last_change_age_seconds if feed else None
    yield _gauge("servefiles_feed_last_change_age_seconds", "Seconds since the feed last applied a change (NaN: "
                 "none since it started)", float("nan") if age is None else age)  # fmt: skip
    yield _gauge("servefiles_breaker_open", "1 while the circuit breaker refuses store queries",
                 float(levels.breaker_open))  # fmt: skip
    yield _gauge("servefiles_ready", "1 while GET /_servefiles/ready answers 200", float(readiness(levels).ready))
