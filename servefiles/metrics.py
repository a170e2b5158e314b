"""Prometheus counters for one servefiles instance.

Each instance has its own registry (two middlewares in one process, as in
the tests, never collide); the hit path increments pre-bound children only.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, Counter, generate_latest
from prometheus_client.core import CounterMetricFamily
from prometheus_client.registry import Collector

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class _EvictionCollector(Collector):
    """Evictions are counted by the tiers themselves; read them at scrape time."""

    def __init__(self, sources: dict[str, Callable[[], int]]) -> None:
        self._sources = sources

    def collect(self) -> Iterator[CounterMetricFamily]:
        family = CounterMetricFamily("servefiles_evictions", "Entries evicted from a cache tier", labels=["tier"])
        for tier, read in self._sources.items():
            family.add_metric([tier], read())
        yield family


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        # Each request for an existing file is one hit or one miss (FileService.serve counts it);
        # a reply about no file (404, 405, 503) is neither.
        hits = Counter(
            "servefiles_hits",
            "Requests for a file answered from this tier's copy, whatever the status (200, 206, 304, 412, 416, "
            "HEAD; a stale copy while the store is down too)",
            ["tier"],
            registry=self.registry,
        )
        self.memory_hits = hits.labels(tier="memory")
        self.disk_hits = hits.labels(tier="disk")
        self.misses = self._counter(
            "servefiles_misses",
            "Requests for a file no cache tier held: its content came from a store fetch (a HEAD, 304, 412 "
            "or 416 needs its metadata only); 404s are neither hits nor misses",
        )
        self.store_fetches = self._counter("servefiles_store_fetches", "Content reads from the store")
        self.bytes_sent = self._counter("servefiles_bytes_sent", "Body bytes handed to the server")
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
            "servefiles_stale_served", "Cached files served while the store was unreachable"
        )

    def _counter(self, name: str, documentation: str) -> Counter:
        return Counter(name, documentation, registry=self.registry)

    def watch_evictions(self, sources: dict[str, Callable[[], int]]) -> None:
        self.registry.register(_EvictionCollector(sources))

    def value(self, name: str, **labels: str) -> float:
        """A sample's current value (0 when absent): for tests and ``stats``."""
        return self.registry.get_sample_value(name, labels) or 0.0

    def render(self) -> bytes:
        return generate_latest(self.registry)
