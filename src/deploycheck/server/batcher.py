"""`Batcher`: concurrent requests for one model merged into batches, run off the event loop, split back."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np


@dataclass
class _Pending:
    inputs: list[np.ndarray]
    rows: int
    future: asyncio.Future[list[np.ndarray]]


class Batcher:
    """Merges concurrent requests into batches of at most `max_batch_size` rows, runs each batch in `executor`,
    and returns to every caller its own rows. A batch takes what queued up while the previous one ran; with
    `max_delay_s` > 0 it also waits that long after its first request for more (bigger batches, more latency).
    Requests whose non-batch shapes differ are run in separate batches."""

    def __init__(self, run: Callable[[list[np.ndarray]], list[np.ndarray]], max_batch_size: int, max_delay_s: float,
                 executor: ThreadPoolExecutor, on_batch: Callable[[int], None] | None = None) -> None:
        self.run = run
        self.on_batch = on_batch
        self.max_batch_size = max_batch_size
        self.max_delay_s = max_delay_s
        self.executor = executor
        self._queue: asyncio.Queue[_Pending] = asyncio.Queue()
        self._carry: _Pending | None = None
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._loop())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def submit(self, inputs: list[np.ndarray]) -> list[np.ndarray]:
        future: asyncio.Future[list[np.ndarray]] = asyncio.get_running_loop().create_future()
        await self._queue.put(_Pending(inputs, int(inputs[0].shape[0]), future))
        return await future

    async def _next_batch(self) -> list[_Pending]:
        first = self._carry or await self._queue.get()
        self._carry = None
        batch, rows = [first], first.rows
        deadline = time.monotonic() + self.max_delay_s
        while rows < self.max_batch_size:
            try:
                item = self._queue.get_nowait()
            except asyncio.QueueEmpty:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                try:
                    item = await asyncio.wait_for(self._queue.get(), remaining)
                except (asyncio.TimeoutError, TimeoutError):
                    break
            compatible = all(a.shape[1:] == b.shape[1:] for a, b in zip(item.inputs, first.inputs))
            if rows + item.rows > self.max_batch_size or not compatible:
                self._carry = item
                break
            batch.append(item)
            rows += item.rows
        return batch

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = await self._next_batch()
            merged = [np.concatenate([p.inputs[i] for p in batch]) if len(batch) > 1 else batch[0].inputs[i]
                      for i in range(len(batch[0].inputs))]
            try:
                outputs = await loop.run_in_executor(self.executor, self.run, merged)
            except Exception as exc:  # every caller of the batch gets the failure
                for pending in batch:
                    if not pending.future.done():
                        pending.future.set_exception(exc)
                continue
            if self.on_batch is not None:
                self.on_batch(sum(p.rows for p in batch))
            start = 0
            for pending in batch:
                if not pending.future.done():
                    pending.future.set_result([o[start:start + pending.rows] for o in outputs])
                start += pending.rows
