"""The metrics an operator reads, parsed from the exposition with prometheus_client's own parser:
every family with its type and Prometheus' naming conventions, each counting what its name says,
on both adapters behind real servers; ``servefiles serve --admin-port`` serving probes and metrics
apart from the public port; and the Grafana dashboard in ``examples/`` naming only metrics that exist.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families

from servefiles import ServeFiles, open_store
from servefiles.metaview import MetadataView
from servefiles.metrics import FAMILIES, Metrics
from servefiles.store.types import Change

from .servers import Frontend, cli, free_port
from .test_feed import until
from .test_health import ADAPTERS, DETAILED, TOKEN, mounted

DASHBOARD = Path(__file__).parent.parent / "examples" / "grafana" / "servefiles-dashboard.json"

TYPES = {
    "counter": ("hits", "misses", "store_fetches", "bytes_sent", "cache_write_failures", "admissions",
                "admission_rejections", "revalidations", "stale_served", "evictions", "store_errors",
                "rejected_requests", "store_fetch_bytes", "cache_files_hashed"),
    "histogram": ("request_duration_seconds", "store_fetch_duration_seconds", "fill_duration_seconds"),
    "gauge": ("cache_bytes", "cache_max_bytes", "cache_entries", "fills_in_flight", "feed_connected", "feed_cursor",
              "feed_lag_versions", "feed_lag_seconds", "feed_last_change_age_seconds", "breaker_open", "ready"),
}  # fmt: skip
"""Each family's type, as issue 19 asks for it (the first ten are the names before it, kept)."""
LABELS = {
    "request_duration_seconds": ("outcome", {"memory_hit", "disk_hit", "miss", "not_modified", "client_error",
                                             "server_error"}),
    "store_errors": ("kind", {"connect", "query", "read", "changed", "feed", "circuit_open"}),
    "rejected_requests": ("reason", {"bad_key", "header_limits", "auth", "private"}),
    "hits": ("tier", {"memory", "disk"}),
    "evictions": ("tier", {"memory", "disk"}),
}  # fmt: skip
"""Labelled families: every value is exposed from the start (0 until counted), so a rate() exists."""
LARGE = 300 * 1024
"""Over the memory tier's largest file (256 KiB): its second request is a disk hit."""


def families(text: str) -> dict[str, Metric]:
    """The exposition parsed by prometheus_client (which raises on any malformed line)."""
    return {family.name: family for family in text_string_to_metric_families(text)}


def sample(found: dict[str, Metric], family: str, name: str, **labels: str) -> float:
    """One sample's value: ``family`` is the family's name, ``name`` the sample's."""
    values = [s.value for s in found[family].samples if s.name == name and all(s.labels.get(k) == v
              for k, v in labels.items())]  # fmt: skip
    assert len(values) == 1, (name, labels, found[family].samples)
    return values[0]


async def scrape(client: httpx.AsyncClient, path: str = "/_servefiles/metrics") -> dict[str, Metric]:
    response = await client.get(path)
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/plain")
    return families(response.text)


def test_the_listed_families_are_the_documented_ones() -> None:
    assert sorted(FAMILIES) == sorted(f"servefiles_{name}" for names in TYPES.values() for name in names)


@ADAPTERS
async def test_every_family_is_exposed_with_its_type_and_prometheus_conventions(
    adapter: str, store_url: str, tmp_path: Path
) -> None:
    async with mounted(adapter, store_url, tmp_path / "cache") as (_, client):
        found = await scrape(client)
        for kind, names in TYPES.items():
            for name in names:
                assert found[f"servefiles_{name}"].type == kind, name
        for family in found.values():
            if family.type == "counter":
                assert all(s.name.endswith(("_total", "_created")) for s in family.samples), family.name
            if family.type == "histogram":
                assert family.name.endswith("_seconds"), family.name  # base units
                assert {s.name for s in family.samples} >= {f"{family.name}_bucket", f"{family.name}_count"}
            assert not re.search(r"_(milliseconds|ms|kb|kib|mib|bytes_total_bytes)\b", family.name), family.name
        for name, (label, values) in LABELS.items():
            exposed = {s.labels[label] for s in found[f"servefiles_{name}"].samples}
            assert exposed == values, name


@ADAPTERS
async def test_metrics_count_each_outcome_rejection_fetch_and_fill(
    adapter: str, store_url: str, tmp_path: Path
) -> None:
    small, large = b"s" * 1000, os.urandom(LARGE)
    async with open_store(store_url) as store:
        await store.put("small.txt", small)
        await store.put("large.bin", large)
        await store.put("private/denied.txt", b"no")
        await store.put("private/boom.txt", b"the hook fails")
        last_version = await store.last_version()

    def authorize(request: object, key: str) -> bool:
        if key.endswith("boom.txt"):
            raise RuntimeError("the app's hook failed")
        return False

    options: dict[str, Any] = {"cache_min_uses": 1, "private": ["private"], "authorize": authorize}
    async with mounted(adapter, store_url, tmp_path / "cache", **options) as (served, client):
        first = await client.get("/media/small.txt")  # miss
        assert first.status_code == 200
        assert (await client.get("/media/small.txt")).status_code == 200  # memory hit
        revalidated = await client.get("/media/small.txt", headers={"if-none-match": first.headers["etag"]})
        assert revalidated.status_code == 304
        assert (await client.get("/media/large.bin")).content == large  # miss, filled to disk

        async def filled() -> bool:
            return bool((await client.get("/_servefiles/health", headers=DETAILED)).json()["disk"]["entries"] == 2)

        await until(filled, seconds=10)
        assert (await client.get("/media/large.bin")).content == large  # disk hit
        assert (await client.get("/media/bad%00key")).status_code == 404  # the key gate
        assert (await client.get("/media/private/denied.txt")).status_code == 403
        assert (await client.get("/media/private/boom.txt")).status_code == 500
        assert (await client.put("/media/new.txt", content=b"x")).status_code == 401
        assert (await client.put("/media/a//b", content=b"x", headers=DETAILED)).status_code == 400

        found = await scrape(client)
        count = "servefiles_request_duration_seconds_count"
        for outcome, expected in (("memory_hit", 1), ("disk_hit", 1), ("miss", 2), ("not_modified", 1),
                                  ("client_error", 2), ("server_error", 1)):  # fmt: skip
            assert sample(found, "servefiles_request_duration_seconds", count, outcome=outcome) == expected, outcome
        assert sample(found, "servefiles_request_duration_seconds", "servefiles_request_duration_seconds_bucket",
                      outcome="memory_hit", le="+Inf") == 1  # fmt: skip
        rejected = "servefiles_rejected_requests_total"
        for reason, expected in (("bad_key", 2), ("auth", 1), ("private", 1), ("header_limits", 0)):
            assert sample(found, "servefiles_rejected_requests", rejected, reason=reason) == expected, reason
        assert sample(found, "servefiles_hits", "servefiles_hits_total", tier="memory") == 2  # the 304 too
        assert sample(found, "servefiles_hits", "servefiles_hits_total", tier="disk") == 1
        assert sample(found, "servefiles_misses", "servefiles_misses_total") == 2
        hashed = "servefiles_cache_files_hashed"
        # The disk hit's file before its first serve, unless it was marked as it was written here
        # (a file system where every change moves the ctime: servefiles.cache.verified).
        marked = served.mount.service.disk.verified.changes_seen
        assert sample(found, hashed, f"{hashed}_total") == (0 if marked else 1), "the disk hit's file"
        fetched = sample(found, "servefiles_store_fetch_bytes", "servefiles_store_fetch_bytes_total")
        assert fetched == len(small) + len(large)  # each file read from the store once
        fetches = "servefiles_store_fetch_duration_seconds"
        assert sample(found, fetches, f"{fetches}_count") >= 2 and sample(found, fetches, f"{fetches}_sum") > 0
        fills = "servefiles_fill_duration_seconds"
        assert sample(found, fills, f"{fills}_count") == 2  # both admitted (cache_min_uses=1)

        report = (await client.get("/_servefiles/health", headers=DETAILED)).json()
        for tier in ("memory", "disk"):
            for key in ("bytes", "entries", "max_bytes"):
                family = f"servefiles_cache_{key}"
                assert sample(found, family, family, tier=tier) == report[tier][key], (tier, key)
        gauges = {name: sample(found, f"servefiles_{name}", f"servefiles_{name}") for name in
                  ("fills_in_flight", "feed_connected", "feed_cursor", "feed_lag_versions", "feed_lag_seconds",
                   "breaker_open", "ready")}  # fmt: skip
        assert gauges == {"fills_in_flight": 0, "feed_connected": 1, "feed_cursor": last_version,
                          "feed_lag_versions": 0, "feed_lag_seconds": 0, "breaker_open": 0, "ready": 1}  # fmt: skip
        errors = {s.labels["kind"]: s.value for s in found["servefiles_store_errors"].samples}
        assert set(errors.values()) == {0}, errors


async def test_store_errors_count_a_database_that_is_not_there(tmp_path: Path) -> None:
    app = ServeFiles(None, db=f"postgresql://app@127.0.0.1:{free_port()}/app", cache_dir=tmp_path / "cache")
    try:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app), base_url="http://t") as client:
            assert (await client.get("/media/a.txt")).status_code == 503
            found = families(app.service.metrics.render().decode())
            assert sample(found, "servefiles_store_errors", "servefiles_store_errors_total", kind="connect") == 1
            outcome = {"outcome": "server_error"}
            assert sample(found, "servefiles_request_duration_seconds", "servefiles_request_duration_seconds_count",
                          **outcome) == 1  # fmt: skip
            assert sample(found, "servefiles_ready", "servefiles_ready") == 0
    finally:
        await app.aclose()


def test_the_newest_version_seen_is_forgotten_with_a_history_that_went_back() -> None:
    """The feed's lag in versions is measured against the newest version seen; a database whose history
    went back (a restored backup, a promoted standby) issues lower ones again: no lag is left over."""
    view = MetadataView(1.0, Metrics())
    view.wrote("a.txt", 900, (900, "0" * 64))
    view.apply([Change(key="b.txt", version=1000, deleted=False)])
    assert view.newest_version == 1000
    view.forget()  # Runtime._drop_everything, when the feed finds the history went back
    assert view.newest_version == 0


# -- the admin listener -----------------------------------------------------------------------


def test_serve_admin_port_answers_probes_and_metrics_apart_from_the_public_port(tmp_path: Path) -> None:
    admin_port = free_port()
    admin = f"http://127.0.0.1:{admin_port}"
    db = f"sqlite:///{tmp_path}/files.db"
    frontend = Frontend("--db", db, "--cache-dir", str(tmp_path / "cache"), "--admin-port", str(admin_port),
                        "--upload-token", TOKEN, "--max-header-count", "20").start()  # fmt: skip
    try:
        assert f"admin at {admin}/_servefiles/" in frontend.output()

        def admin_ready() -> bool:
            try:
                return httpx.get(f"{admin}/_servefiles/ready").status_code == 200
            except httpx.TransportError:
                return False

        _wait(admin_ready)
        detailed = httpx.get(f"{admin}/_servefiles/ready").json()  # no token needed there
        assert detailed["status"] == "ready" and detailed["state"] == "running" and "feed" in detailed
        assert httpx.get(f"{admin}/_servefiles/health").json()["memory"]["max_bytes"] == 16 * 1024**2
        assert httpx.get(f"{admin}/media/a.txt").status_code == 404  # no files there
        public = httpx.get(f"{frontend.base}/_servefiles/ready")
        assert public.status_code == 200 and public.json() == {"status": "ready", "reason": "ready"}
        assert httpx.get(f"{frontend.base}/_servefiles/metrics").status_code == 404  # --metrics is off
        assert httpx.get(f"{frontend.base}/_servefiles/health", headers=DETAILED).json()["state"] == "running"

        crowded = {f"x-filler-{n}": "1" for n in range(30)}
        assert httpx.get(f"{frontend.base}/media/a.txt", headers=crowded).status_code == 431
        found = families(httpx.get(f"{admin}/_servefiles/metrics").text)
        assert sample(found, "servefiles_rejected_requests", "servefiles_rejected_requests_total",
                      reason="header_limits") == 1  # fmt: skip
    finally:
        frontend.stop()
    assert frontend.proc is not None and frontend.proc.returncode == 0, frontend.output()
    assert "Traceback" not in frontend.output()
    with pytest.raises(httpx.TransportError):  # both listeners stopped with the one SIGTERM
        httpx.get(f"{admin}/_servefiles/health")


def test_serve_refuses_an_admin_port_equal_to_the_public_port(tmp_path: Path) -> None:
    port = str(free_port())
    result = cli("serve", "--db", f"sqlite:///{tmp_path}/files.db", "--cache-dir", str(tmp_path / "cache"),
                 "--port", port, "--admin-port", port)  # fmt: skip
    assert result.returncode == 2 and b"--admin-port" in result.stderr and b"Traceback" not in result.stderr


def _wait(check: Any, seconds: float = 20) -> None:
    import time

    deadline = time.monotonic() + seconds
    while not check():
        assert time.monotonic() < deadline, "not within the time"
        time.sleep(0.05)


# -- the Grafana dashboard --------------------------------------------------------------------


def dashboard_expressions(node: object) -> list[str]:
    """Every PromQL expression in a dashboard: panel targets and template variable queries."""
    found: list[str] = []
    if isinstance(node, dict):
        for key, value in node.items():
            if key in ("expr", "definition") and isinstance(value, str):
                found.append(value)
            else:
                found += dashboard_expressions(value)
    elif isinstance(node, list):
        for item in node:
            found += dashboard_expressions(item)
    return found


async def test_the_grafana_dashboard_parses_and_names_only_metrics_that_exist(tmp_path: Path) -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["title"] == "servefiles" and dashboard["panels"]
    expressions = dashboard_expressions(dashboard)
    used = {name for expr in expressions for name in re.findall(r"\bservefiles_[a-z_]+", expr)}
    app = ServeFiles(None, db=f"sqlite:///{tmp_path}/files.db", cache_dir=tmp_path / "cache")
    try:
        await app.service.start()
        exposed = {s.name for family in families(app.service.metrics.render().decode()).values()
                   for s in family.samples}  # fmt: skip
    finally:
        await app.aclose()
    assert used and used <= exposed, sorted(used - exposed)
    families_used = {re.sub(r"_(total|bucket|sum|count)$", "", name) for name in used}
    assert families_used == set(FAMILIES), sorted(set(FAMILIES) - families_used)  # every metric has a panel
