"""Run the tools' coroutines on the event loop that owns the runtime, from any thread or loop.

The runtime's Redis and HTTP clients belong to the loop they were opened on: awaiting them from
another loop fails or corrupts their connection pools. So every tool call is run *on the owner loop*:

- async, on the owner loop: awaited directly (no hop, no cost);
- async, on another loop (e.g. ``asyncio.run`` in a worker thread): submitted to the owner loop with
  ``run_coroutine_threadsafe`` and awaited through ``wrap_future``;
- sync, from a thread with no running loop: submitted the same way and waited for, with a timeout;
- sync, on the owner loop's own thread: refused at once with ``RuntimeError``: blocking that thread
  would wait for work only that thread can do (a deadlock). Use ``ainvoke`` there.

``run_in_background`` is the owner loop for purely synchronous programs: a daemon thread that opens
the runtime and keeps its loop running until the ``with`` block ends.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import threading
from collections.abc import Callable, Coroutine, Iterator
from contextlib import AbstractAsyncContextManager, contextmanager
from typing import Any, TypeVar

log = logging.getLogger(__name__)

T = TypeVar("T")
R = TypeVar("R")

SYNC_TIMEOUT_SECONDS = 120.0  # well above a lookup's own Stripe timeouts and retries


class LoopBridge:
    """Knows the loop that owns the runtime and runs coroutines there."""

    def __init__(self, loop: asyncio.AbstractEventLoop | None = None) -> None:
        self.loop = loop

    @classmethod
    def here(cls) -> LoopBridge:
        """The running loop when there is one (the usual case: built where the runtime was opened)."""
        try:
            return cls(asyncio.get_running_loop())
        except RuntimeError:
            return cls(None)

    def _owner(self) -> asyncio.AbstractEventLoop:
        loop = self.loop
        if loop is None:
            raise RuntimeError(
                "The billing tools were built outside an event loop, so a synchronous call has no loop "
                "to run on: build the toolkit inside the coroutine that opened the runtime, or use "
                "tools.bridge.run_in_background."
            )
        if loop.is_closed() or not loop.is_running():
            raise RuntimeError("The event loop that owns the billing runtime is not running.")
        return loop

    async def run_async(self, make: Callable[[], Coroutine[Any, Any, T]]) -> T:
        try:
            current = asyncio.get_running_loop()
        except RuntimeError:  # pragma: no cover - an async function always has a running loop
            current = None
        if self.loop is None or current is self.loop:
            return await make()
        owner = self._owner()
        return await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(make(), owner))

    def run_sync(self, make: Callable[[], Coroutine[Any, Any, T]], *,
                 timeout: float = SYNC_TIMEOUT_SECONDS) -> T:
        """Run on the owner loop and wait; ``TimeoutError`` when it takes longer than ``timeout``."""
        owner = self._owner()
        try:
            current: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:
            current = None
        if current is owner:
            raise RuntimeError(
                "A billing tool was called synchronously on the event loop that owns the runtime, "
                "which would deadlock; use `await tool.ainvoke(...)` there."
            )
        future = asyncio.run_coroutine_threadsafe(make(), owner)
        try:
            return future.result(timeout)
        except concurrent.futures.TimeoutError:
            future.cancel()
            raise TimeoutError(f"billing tool call took longer than {timeout:g} s") from None


@contextmanager
def run_in_background(
    open_runtime: Callable[[], AbstractAsyncContextManager[R]],
    build: Callable[[R], T],
    *, start_timeout: float = 60.0,
) -> Iterator[T]:
    """``build(runtime)`` on a private loop in a daemon thread, for synchronous programs.

    ``open_runtime`` is e.g. ``lambda: bot.runtime.open_runtime(settings)``; ``build`` runs on that loop
    (so a toolkit built there adopts it). The runtime is closed when the block ends.
    """
    loop = asyncio.new_event_loop()
    built: concurrent.futures.Future[T] = concurrent.futures.Future()
    stop: asyncio.Event | None = None

    async def hold() -> None:
        nonlocal stop
        stop = asyncio.Event()
        try:
            async with open_runtime() as runtime:
                built.set_result(build(runtime))
                await stop.wait()
        except BaseException as err:
            if not built.done():
                built.set_exception(err)
            raise

    def main() -> None:
        asyncio.set_event_loop(loop)
        try:
            loop.run_until_complete(hold())
        except BaseException as err:
            # Before the runtime opened, the caller gets the error through ``built``; after, only a
            # failure to close is left, and there is nobody to raise it to.
            if built.done() and built.exception() is None:
                log.warning("closing the billing runtime failed: %s", type(err).__name__)
        finally:
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()

    thread = threading.Thread(target=main, name="billing-tools-loop", daemon=True)
    thread.start()
    try:
        value = built.result(start_timeout)
    except BaseException:
        thread.join(start_timeout)
        raise
    try:
        yield value
    finally:
        event = stop
        if event is not None and not loop.is_closed():
            loop.call_soon_threadsafe(event.set)
        thread.join(start_timeout)

