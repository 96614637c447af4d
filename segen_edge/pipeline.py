"""Bounded, ordered, lazy parallel map, and how a batch job spreads over the cores.

A batch job runs in *lanes*: a few threads, each taking a whole batch through decode,
resize, the model, resize back, PNG encode and atomic writes. onnxruntime releases the GIL,
so while one lane runs the model another decodes or writes, and the cores stay busy. At
most `lanes + 1` batches are in flight, so memory stays flat however many files a folder
holds, and results come back in input order.

On the CPU each run gets one onnxruntime thread and there is one lane per core, rather than
one batch at a time spread over every core: one thread per run needs no barrier between the
threads of each operator, so a core that stops to decode a JPEG never stalls the others.
Measured on 2 cores (batch 8), lanes ran the pets U-Net 5-25% and the FCN 10-40% faster than
one run on two threads before any decoding was added; `segment` on 500 pets JPEGs went from
0.63-0.79 of the model-only throughput (decode/encode threads beside a 2-thread model) to
0.80 (benchmarks/pipeline.py).
"""

from __future__ import annotations

import os
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


def cpu_count() -> int:
    """The cores this process may run on (its affinity mask, e.g. a container's share)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def batch_threads(threads: int | None, runs: int | None = None) -> int:
    """onnxruntime intra-op threads for each run of a batch job: `threads` if given, else 1
    (the lanes then use the cores); but a job of fewer `runs` than cores (one photo, one
    batch) shares the cores among its runs instead of leaving the other lanes idle."""
    if threads:
        return threads
    if runs is None or runs >= cpu_count():
        return 1
    return max(1, cpu_count() // max(1, runs))


def lanes_for(provider: str, threads: int | None) -> int:
    """Runs in flight at once: cores / threads per run on the CPU provider and on OpenVINO
    (its EP and its runtime: one inference stream per lane); two on CUDA (the device runs
    one batch while the host decodes and writes the other)."""
    if provider not in ("cpu", "openvino", "openvino-runtime"):
        return 2
    return max(1, cpu_count() // batch_threads(threads))
