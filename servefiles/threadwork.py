"""Blocking work handed to a thread by a coroutine that may be cancelled meanwhile.

Cancelling a coroutine that awaits ``asyncio.to_thread`` does not stop the thread: it runs to
its end, and its result is dropped. Whatever that work took (a descriptor, a lock, a temp file)
is then lost, and whatever the cancelled caller cleans up in its ``except`` or ``finally`` runs
while the thread may still use it (a writer aborted, its descriptor closed and maybe reused,
while its last write is still going). Two ways out, one per kind of work:

- :func:`taken_on_thread`: the work takes something the caller must give back. If the caller is
  cancelled, it is given back exactly once, by whichever side sees it last (the thread, once its
  work ends, or the caller, if the work had ended already), so nothing depends on the event loop
  running again (``asyncio.run`` cancels what is pending as it ends, then runs no callback).
- :func:`finished_on_thread`: the work uses something the caller owns. If the caller is
  cancelled, it waits for the thread to end before the cancellation goes on, so its cleanup never
  runs beside that work.

Both keep the work out of reach of a cancellation: the executor's future is shielded, never
cancelled (cancelling one still queued drops the work item, and with it a close it owed).
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import functools
import logging
import threading
from collections.abc import Callable
from typing import Generic, TypeVar, cast

__all__ = ["finished_on_thread", "taken_on_thread"]

_T = TypeVar("_T")

logger = logging.getLogger("servefiles")


class _Handover(Generic[_T]):
    """Who gives back what the thread took: the thread if the caller left first, else the caller."""

    __slots__ = ("abandoned", "has_result", "lock", "result")

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.abandoned = False
        self.has_result = False
        self.result: _T | None = None


async def taken_on_thread(take: Callable[[], _T], give_back: Callable[[_T], None]) -> _T:
    """``take()`` run on a thread: what it took, the caller's to give back from then on.

    If the caller is cancelled meanwhile (a shutdown), ``give_back(result)`` runs once the work
    has ended: on the thread if it was still running, at once on the caller's side if it had
    ended. An exception from ``take`` took nothing and is the caller's (or dropped, if it left);
    one from ``give_back`` is logged, and the cancellation goes on."""
    handover: _Handover[_T] = _Handover()

    def run() -> _T:
        taken = take()
        with handover.lock:
            if not handover.abandoned:
                handover.result, handover.has_result = taken, True
                return taken
        _give_back_quietly(give_back, taken)  # the caller is gone: nobody else will
        return taken

    running = _on_executor(run)
    try:
        return await asyncio.shield(running)
    except BaseException:  # cancelled, or the task torn down: the caller will not take it
        with handover.lock:
            handover.abandoned = True
            taken, owed = handover.result, handover.has_result
        if owed:
            _give_back_quietly(give_back, cast(_T, taken))  # has_result: the thread's own result
        raise


def _give_back_quietly(give_back: Callable[[_T], None], taken: _T) -> None:
    try:
        give_back(taken)
    except Exception as exc:  # never instead of the cancellation, nor lost without a word
        logger.warning("could not give back what a thread took for a cancelled caller: %s: %s", type(exc).__name__, exc)


async def finished_on_thread(call: Callable[..., _T], *args: object) -> _T:
    """``call(*args)`` on a thread. If the caller is cancelled meanwhile, the cancellation waits
    for the thread to end (and then goes on, the result dropped): the caller's cleanup of what the
    call uses (a writer it aborts, a descriptor it closes) never runs beside it."""
    running = _on_executor(functools.partial(call, *args))
    try:
        return await asyncio.shield(running)
    except asyncio.CancelledError:
        while not running.done():  # cancelled again meanwhile (a close itself cancelled): still wait
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.wait([running])
        raise


def _on_executor(work: Callable[[], _T]) -> asyncio.Future[_T]:
    """``work()`` on the loop's default executor, in a copy of the caller's context (as
    ``asyncio.to_thread`` runs it: log records keep what the app put in context variables)."""
    return asyncio.get_running_loop().run_in_executor(None, contextvars.copy_context().run, work)
