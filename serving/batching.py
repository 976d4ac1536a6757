"""Adaptive micro-batching: one inference thread, and whatever queued meanwhile goes in the next call.

While the model runs in its thread (ONNX Runtime and torch release the GIL), the event loop keeps
parsing requests; those that arrive in the meantime are stacked into the next call. A lone request
is never held back waiting for company (and runs on the loop itself, skipping the thread hop), so
batching adds no waiting at low load; under load the batch size follows the arrival rate by itself
(up to max_batch images). With batching off, each request runs on the loop, one at a time.
"""
from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Optional

import numpy as np

# What the model gives for a batch: probabilities [N, C] and ood_score [N] (None from a graph without one).
Outputs = tuple[np.ndarray, Optional[np.ndarray]]


class MicroBatcher:
    def __init__(self, infer: Callable[[np.ndarray], Outputs], max_batch: int = 64, enabled: bool = True):
        self.infer = infer
        self.max_batch = max_batch
        self.enabled = enabled
        self._pending: list[tuple[np.ndarray, asyncio.Future]] = []
        self._running = False
        # One thread: the runtime parallelizes inside a call; two calls at once would only contend.
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="cifar10-infer")

    async def predict(self, images: np.ndarray) -> Outputs:
        """uint8 [N, 32, 32, 3] -> (probabilities [N, C], ood_score [N] or None)."""
        loop = asyncio.get_running_loop()
        if not self.enabled:
            return self.infer(images)
        future = loop.create_future()
        self._pending.append((images, future))
        if not self._running:
            self._running = True
            loop.create_task(self._drain())
        return await future

    def _take(self) -> list[tuple[np.ndarray, asyncio.Future]]:
        group, size = [], 0
        while self._pending and (not group or size + len(self._pending[0][0]) <= self.max_batch):
            item = self._pending.pop(0)
            group.append(item)
            size += len(item[0])
        return group

    async def _drain(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            await asyncio.sleep(0)  # requests parsed in this same loop turn join the first call
            while self._pending:
                group = self._take()
                try:
                    batch = np.concatenate([g[0] for g in group])  # [sum N, 32, 32, 3]
                    if len(group) == 1 and not self._pending:
                        # Nobody else is waiting: a thread hop would only add latency.
                        outputs = self.infer(batch)
                    else:
                        outputs = await loop.run_in_executor(self._executor, self.infer, batch)  # [sum N, C], [sum N]
                except Exception as exc:  # every waiter hears about it; none hangs
                    for _, fut in group:
                        if not fut.done():
                            fut.set_exception(exc)
                    continue
                start = 0
                for images, fut in group:
                    if not fut.done():
                        fut.set_result(tuple(None if o is None else o[start:start + len(images)] for o in outputs))
                    start += len(images)
        finally:
            self._running = False
