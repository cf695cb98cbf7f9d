"""A daemon thread for blocking calls made from the event loop."""

from __future__ import annotations

import asyncio
import queue
import threading
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")


class DaemonThread:
    """One daemon thread running submitted calls in order; results come back as futures.

    A daemon, so that a call stuck in a library (a hung model, a broker that does not
    answer) never keeps the process from exiting.
    """

    def __init__(self, name: str) -> None:
        self._calls: queue.SimpleQueue[
            tuple[Callable[[], Any], asyncio.Future[Any], asyncio.AbstractEventLoop] | None
        ] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._serve, name=name, daemon=True)
        self._thread.start()

    def submit(self, call: Callable[[], T]) -> asyncio.Future[T]:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        self._calls.put((call, future, loop))
        return future

    def _serve(self) -> None:
        while (item := self._calls.get()) is not None:
            call, future, loop = item
            try:
                result, error = call(), None
            except BaseException as exc:
                result, error = None, exc
            if loop.is_closed():  # a call that outlived its caller (it timed out, then exited)
                continue
            try:
                loop.call_soon_threadsafe(_settle, future, result, error)
            except RuntimeError:  # the loop closed in between
                continue

    @property
    def alive(self) -> bool:
        """Whether the thread still runs (after :meth:`close`: its last call has not returned)."""
        return self._thread.is_alive()

    def close(self) -> None:
        """End the thread once the calls submitted so far have returned."""
        self._calls.put(None)


def _settle(future: asyncio.Future[Any], result: Any, exc: BaseException | None) -> None:
    if future.done():  # the caller gave up (timeout) meanwhile
        return
    if exc is not None:
        future.set_exception(exc)
    else:
        future.set_result(result)
