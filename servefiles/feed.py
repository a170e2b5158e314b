"""The change feed: every frontend follows the store's changes, losslessly.

The store wakes the feed (PostgreSQL LISTEN/NOTIFY; SQLite polling), and
the feed reads ``changes(cursor)`` — one indexed query — and hands each
batch to the frontend, which drops or refetches what changed. The cursor is
persisted in the cache dir after each batch is applied, so a frontend that
was down, or lost its listening connection, catches up from where it was:
notifications are only hints, the cursor is the truth.

The cursor file also names the database (its ``store_id``) and its history
(:meth:`Store.read_history_id`): a cache dir that was filled from another
database is not trusted at all. Nor is anything cached once the database's
history went back: a standby promoted after asynchronous replication lost
the old primary's last commits, whose versions the new primary may issue
again for other content (a cursor would skip them, a copy would look current).
The feed checks for that on every (re)connect, before its first catch-up:
another history id, or a last version below the cursor (a database restored
from a backup), and every cached copy is dropped, the cursor reset.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import stat
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

from .errors import ServeFilesError, StoreUnavailable
from .localfs import kind, lstat_mode, read_regular, remove_any
from .store import Store, mask_dsn
from .store.types import Change

logger = logging.getLogger("servefiles")

CURSOR_FILE = "feed-cursor.json"
CURSOR_MAX_BYTES = 4096
"""A cursor file is one small JSON object; anything bigger is not one."""
BATCH = 1000
FIRST_BACKOFF_SECONDS = 0.1
MAX_BACKOFF_SECONDS = 2.0
"""The longest wait between reconnection attempts: a promoted standby is followed (and the
circuit breaker closed) at most this long after it accepts connections. An attempt on a
database that refuses connections costs one connection attempt per frontend."""

Apply = Callable[[list[Change]], Awaitable[None]]
Reset = Callable[[], Awaitable[None]]


class FeedCursor:
    """The persisted cursor: "this cache dir reflects every change up to version N of store S,
    history H" (``history_id``: :meth:`Store.read_history_id`)."""

    def __init__(self, state_dir: Path, store_id: str, history_id: str = "") -> None:
        self.path = state_dir / CURSOR_FILE
        self.store_id = store_id
        self.history_id = history_id

    def load(self) -> int | None:
        """The saved cursor, or None when there is none for this database.

        Read without following a symlink or waiting on a FIFO (see localfs.py); a cursor
        file that is not a small regular file holding JSON vouches for nothing and is
        removed, with one log line.
        """
        try:
            state = json.loads(read_regular(self.path, CURSOR_MAX_BYTES))
            # A cursor saved before servefiles kept the history has none: trusted as before.
            same_history = state.get("history", self.history_id) == self.history_id
            if state.get("store_id") == self.store_id and same_history and isinstance(state.get("cursor"), int):
                return int(state["cursor"])
        except FileNotFoundError:
            pass
        except (OSError, ValueError, AttributeError) as exc:
            mode = lstat_mode(self.path)
            if not mode:
                return None
            if not stat.S_ISREG(mode):
                what = f"a {kind(mode)}"
            else:
                what = "unreadable" if isinstance(exc, PermissionError) else "not a cursor"
            logger.warning("change-feed cursor %s is %s: removed (nothing cached is vouched for)", self.path, what)
            remove_any(self.path)
        return None

    def save(self, cursor: int) -> bool:
        """Atomically replace the cursor file (temp file, rename): never half a cursor."""
        fd, temp = tempfile.mkstemp(dir=self.path.parent, prefix=".feed-", suffix=".tmp")
        try:
            with os.fdopen(fd, "w") as out:
                json.dump({"store_id": self.store_id, "history": self.history_id, "cursor": cursor}, out)
            os.replace(temp, self.path)
            return True
        except OSError as exc:
            with contextlib.suppress(OSError):
                os.unlink(temp)
            logger.warning("cannot save the change-feed cursor: %s", exc)
            return False


class ChangeFeed:
    """Follow ``store``'s changes into ``apply``, from a cursor kept in ``state_dir``."""

    def __init__(
        self,
        store: Store,
        state_dir: Path,
        apply: Apply,
        poll_seconds: float,
        check_seconds: float,
        on_down: Callable[[], None] | None = None,
        on_up: Callable[[], None] | None = None,
        on_history_changed: Reset | None = None,
    ) -> None:
        self.store = store
        self.apply = apply
        self._on_down = on_down
        """Called when a healthy feed goes down (the published tree is withdrawn then)."""
        self._on_up = on_up
        """Called when the feed is caught up after being down: the store answers again."""
        self._on_history_changed = on_history_changed
        """Called, before the cursor is reset, when the database's history went back: drop every copy."""
        self._cursor_file = FeedCursor(state_dir, store.store_id, store.history_id)
        self.poll_seconds = check_seconds if store.notifies else poll_seconds
        self.cursor = 0
        self.healthy = False
        """True while the feed is connected and caught up: cached copies need no revalidation."""
        self.last_error: str | None = None
        self.failures = 0
        """Attempts that failed since start (to connect, to follow, to apply a batch)."""
        self.started_at: float | None = None
        self.caught_up_at: float | None = None
        """When it last caught up with the store (monotonic seconds; None: not yet)."""
        self.applied_at: float | None = None
        """When it last applied a change (monotonic seconds; None: none since it started)."""
        self._saved = -1
        self._task: asyncio.Task[None] | None = None
        self._caught_up = asyncio.Event()

    def load(self) -> bool:
        """Read the persisted cursor; False when there is none for this database."""
        saved = self._cursor_file.load()
        if saved is None:
            return False
        self.cursor = self._saved = saved
        return True

    @property
    def caught_up_once(self) -> bool:
        return self._caught_up.is_set()

    def lag_seconds(self, now: float) -> float:
        """0 while healthy; else seconds since it last caught up (since it started, if never)."""
        if self.healthy:
            return 0.0
        since = self.caught_up_at if self.caught_up_at is not None else self.started_at
        return 0.0 if since is None else max(0.0, now - since)

    def start(self) -> None:
        self.started_at = time.monotonic()
        self._task = asyncio.create_task(self._run(), name="servefiles change feed")

    async def wait_caught_up(self, seconds: float) -> bool:
        """Until the first catch-up is done (True), or ``seconds`` pass (False)."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._caught_up.wait(), seconds)
        return self._caught_up.is_set()

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        self.healthy = False

    async def _run(self) -> None:
        backoff = FIRST_BACKOFF_SECONDS
        while True:
            try:
                connected = False
                async for _ in self.store.wake_ups(self.poll_seconds):
                    if not connected:  # a new connection: maybe to another server (a promoted standby)
                        await self._check_history()
                        connected = True
                    await self._catch_up()
                    if not self.healthy:
                        logger.info("change feed following %s from version %d", mask_dsn(self.store.url), self.cursor)
                        if self._on_up is not None:
                            self._on_up()
                    self.healthy, self.last_error, backoff = True, None, FIRST_BACKOFF_SECONDS
                    self.caught_up_at = time.monotonic()
                    self._caught_up.set()
            except (StoreUnavailable, ServeFilesError, OSError) as exc:
                self._down(exc)
            except Exception as exc:  # e.g. the disk index could not be written: retry, never die
                logger.exception("change feed failed to apply changes; retrying")
                self._down(exc)
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, MAX_BACKOFF_SECONDS)

    def _down(self, exc: BaseException) -> None:
        was_healthy, self.healthy = self.healthy, False
        self.last_error = str(exc)
        self.failures += 1
        if was_healthy:
            logger.warning("change feed down, revalidating by time until it is back: %s", exc)
            if self._on_down is not None:
                self._on_down()

    async def _check_history(self) -> None:
        """Whether the database's history went back since the cursor was taken: another history id
        (a promoted standby: lost commits' versions may be issued again for other content), or a last
        version below the cursor (a restored backup). Then nothing cached is vouched for: every copy
        is dropped (``on_history_changed``) and the feed follows from the database's last version."""
        history = await self.store.read_history_id()
        last = await self.store.last_version()
        known = self._cursor_file.history_id
        if history == known and last >= self.cursor:
            return
        logger.warning(
            "the database's history went back (history %s, last version %d; this frontend had %s up to %d): "
            "dropping every cached copy",
            history or "-", last, known or "-", self.cursor,
        )  # fmt: skip
        if self._on_history_changed is not None:
            await self._on_history_changed()
        self._cursor_file.history_id = history
        self.cursor = last
        await asyncio.to_thread(self._save, last)

    async def _catch_up(self) -> None:
        while True:
            batch = await self.store.changes(self.cursor, limit=BATCH)
            if batch:
                await self.apply(batch)
                self.cursor = batch[-1].version
                self.applied_at = time.monotonic()
            if len(batch) < BATCH:
                break
        if self.cursor != self._saved:
            await asyncio.to_thread(self._save, self.cursor)

    def _save(self, cursor: int) -> None:
        if self._cursor_file.save(cursor):
            self._saved = cursor
