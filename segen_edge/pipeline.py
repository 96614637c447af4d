"""Bounded, ordered, lazy parallel map: the streaming part of every batch verb.

Decoding, resizing and PNG encoding run in worker threads while onnxruntime (which releases
the GIL) runs the model, so the cores stay busy. At most `window` items are in flight, so
memory stays flat however many files a folder holds.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TypeVar

T = TypeVar("T")
R = TypeVar("R")


def ordered_map(
    fn: Callable[[T], R],
    items: Iterable[T],
    pool: ThreadPoolExecutor,
    window: int,
    stop: threading.Event | None = None,
) -> Iterator[R]:
    """Yield fn(item) for each item, in order, keeping at most `window` calls in flight.

    Exceptions from `fn` propagate when their result is reached. When `stop` is set, no new
    work is submitted and what is in flight is drained (not yielded).
    """
    pending: deque[Future[R]] = deque()
    source = iter(items)
    exhausted = False
    try:
        while True:
            while not exhausted and len(pending) < window and not (stop and stop.is_set()):
                try:
                    item = next(source)
                except StopIteration:
                    exhausted = True
                    break
                pending.append(pool.submit(fn, item))
            if not pending:
                return
            if stop and stop.is_set():
                return
            yield pending.popleft().result()
    finally:
        for future in pending:
            future.cancel()
        for future in pending:
            if not future.cancelled():
                future.exception()  # wait, so no worker writes after we return


def batched(items: Iterable[T], size: int) -> Iterator[list[T]]:
    batch: list[T] = []
    for item in items:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch
