"""Dynamic micro-batching: concurrent requests to one model share a model call.

Each request puts its inputs on the model's queue and awaits its own results; one worker per model takes the
first waiting request, adds whatever else arrives within ``max_wait_ms`` (up to ``max_batch_size`` inputs; no
wait when it is the only request in flight),
runs the model once in a worker thread (the event loop never computes) and hands each request its slice.

Example:
    >>> batcher = MicroBatcher(lambda items: [len(i) for i in items], max_batch_size=8, max_wait_ms=2)  # doctest: +SKIP
    >>> await batcher.submit(["a", "bb"])                                                               # doctest: +SKIP
    [1, 2]
"""

from __future__ import annotations

import asyncio
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable


class MicroBatcher:
    """Groups concurrent calls of ``run`` (a list of inputs -> one result per input).

    Args:
        run: the model call; it runs in this batcher's own worker thread.
        max_batch_size: the most inputs per call (a larger request runs alone).
        max_wait_ms: how long the first request waits for company.
        observe: called with each batch's size (metrics).
    """

    def __init__(self, run: Callable[[list[Any]], list[Any]], *, max_batch_size: int, max_wait_ms: float,
                 observe: Callable[[int], None] | None = None):
        self.run, self.max_batch_size, self.max_wait = run, max_batch_size, max_wait_ms / 1000.0
        self.observe = observe or (lambda size: None)
        self.queue: asyncio.Queue[tuple[list[Any], asyncio.Future]] = asyncio.Queue()
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="tunelab-model")
        self.worker: asyncio.Task | None = None
        self.carry: tuple[list[Any], asyncio.Future] | None = None  # a request too big to join the last batch
        self.inflight = 0  # submitted requests not answered yet

    @property
    def depth(self) -> int:
        """Requests waiting for the model."""
        return self.queue.qsize()

    async def submit(self, items: list[Any]) -> list[Any]:
        """The results for ``items``, computed in a batch with whatever else is waiting."""
        if self.worker is None:
            self.worker = asyncio.get_running_loop().create_task(self._work())
        future: asyncio.Future = asyncio.get_running_loop().create_future()
        self.inflight += 1
        try:
            await self.queue.put((items, future))
            return await future
        finally:
            self.inflight -= 1

    async def _work(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            group = [self.carry or await self.queue.get()]
            self.carry = None
            size = len(group[0][0])
            # waiting only pays when others are coming: alone, a request runs at once (no added latency)
            deadline = time.monotonic() + (self.max_wait if self.inflight > 1 else 0.0)
            while size < self.max_batch_size:
                remaining = deadline - time.monotonic()
                try:
                    nxt = self.queue.get_nowait() if remaining <= 0 else await asyncio.wait_for(self.queue.get(), remaining)
                except (asyncio.TimeoutError, asyncio.QueueEmpty):
                    break
                if size + len(nxt[0]) > self.max_batch_size:
                    self.carry = nxt  # too big to join: it leads the next batch
                    break
                group.append(nxt)
                size += len(nxt[0])
            live = [(items, fut) for items, fut in group if not fut.cancelled()]  # timed-out requests drop out
            if not live:
                continue
            flat = [item for items, _ in live for item in items]
            self.observe(len(flat))
            try:
                results = await loop.run_in_executor(self.executor, self.run, flat)
            except Exception as err:  # the model failed: every request of the batch gets the error
                for _, fut in live:
                    if not fut.done():
                        fut.set_exception(err)
                continue
            at = 0
            for items, fut in live:
                if not fut.done():
                    fut.set_result(results[at: at + len(items)])
                at += len(items)

    def stop(self) -> None:
        """Stop taking work (call on the event loop): the worker ends, waiting requests fail; a model call already
        running finishes in its thread."""
        if self.worker is not None:
            self.worker.cancel()
        waiting = [self.carry] if self.carry else []
        while not self.queue.empty():
            waiting.append(self.queue.get_nowait())
        for _, future in waiting:
            if not future.done():
                future.set_exception(RuntimeError("the model was unloaded"))

    def close(self) -> None:
        """``stop``, then wait for a running model call to finish."""
        self.stop()
        self.executor.shutdown(wait=True)
