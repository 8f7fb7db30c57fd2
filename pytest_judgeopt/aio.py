"""Small asyncio pieces of the client: the state that belongs to one event loop, and a gather that
cancels the rest when one fails (so an unexpected error leaves no sibling call running and billing).
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Awaitable, Sequence
from dataclasses import dataclass, field
from typing import TypeVar

from .replies import Reply

T = TypeVar("T")


async def _awaited(work: Awaitable[T]) -> T:
    return await work


@dataclass
class LoopState:
    """What belongs to one event loop: the concurrency limit, the requests in flight (shared by identical
    requests), and per model the lock its first calls take one at a time."""

    semaphore: asyncio.Semaphore
    in_flight: dict[str, asyncio.Future[Reply]] = field(default_factory=dict)
    first_call: dict[str, asyncio.Lock] = field(default_factory=dict)
    # calls queued on (or holding) a model's first-call lock: while any are, later calls queue behind them, so
    # calls reach the model in the order they began even across the model's admission
    queued: Counter[str] = field(default_factory=Counter)
    requests: set[asyncio.Future[Reply]] = field(default_factory=set)  # litellm calls running now


def finished(request: asyncio.Future[Reply]) -> None:
    """A request's end: its failure is retrieved here, for a request whose caller was cancelled and never looks."""
    if not request.cancelled():
        request.exception()


async def settle(requests: set[asyncio.Future[Reply]], timeout: float) -> None:
    """Let the requests still running end (those whose callers were cancelled), before the loop closes."""
    if requests:
        await asyncio.wait(list(requests), timeout=timeout)


async def gather_or_cancel(work: Sequence[Awaitable[T]]) -> list[T]:
    """``asyncio.gather`` that, when one fails, cancels the others (and waits for them to end) before raising
    that first error as it is: an unexpected error must not leave sibling calls running and billing."""
    tasks = [asyncio.ensure_future(w) for w in work]
    try:
        return list(await asyncio.gather(*tasks))
    except BaseException:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        raise


async def cancel_pending() -> None:
    """End what litellm left running on our loop (its logging worker), so the loop closes cleanly."""
    tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
