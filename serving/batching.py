"""Opportunistic micro-batching on the event loop.

Requests whose handlers reach the model in the same event-loop turn are stacked into one call;
a lone request is never held back waiting for company, so batching adds no latency at low load.
"""
from __future__ import annotations

import asyncio
from typing import Callable

import numpy as np


class MicroBatcher:
    def __init__(self, infer: Callable[[np.ndarray], np.ndarray], max_batch: int = 64, enabled: bool = True):
        self.infer = infer
        self.max_batch = max_batch
        self.enabled = enabled
        self._pending: list[tuple[np.ndarray, asyncio.Future]] = []
        self._scheduled = False

    async def predict(self, images: np.ndarray) -> np.ndarray:
        """uint8 [N, 32, 32, 3] -> probabilities [N, C]."""
        if not self.enabled or len(images) >= self.max_batch:
            return self.infer(images)
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        self._pending.append((images, future))
        if not self._scheduled:
            self._scheduled = True
            loop.call_soon(self._flush)
        return await future

    def _flush(self) -> None:
        self._scheduled = False
        pending, self._pending = self._pending, []
        while pending:
            group, size = [], 0
            while pending and size + len(pending[0][0]) <= self.max_batch:
                item = pending.pop(0)
                group.append(item)
                size += len(item[0])
            if not group:  # a single oversized request
                group.append(pending.pop(0))
            try:
                probs = self.infer(np.concatenate([g[0] for g in group]))  # [sum N, C]
            except Exception as exc:  # every waiter hears about it; none hangs
                for _, fut in group:
                    if not fut.done():
                        fut.set_exception(exc)
                continue
            start = 0
            for images, fut in group:
                if not fut.done():
                    fut.set_result(probs[start:start + len(images)])
                start += len(images)
