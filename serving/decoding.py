"""Where an upload's images are decoded: on the event loop when they are small, else on the worker's decode pool.

A request whose images hold few pixels decodes on the event loop (a CIFAR-10 JPEG: 1,024 pixels, tens of
microseconds, less than a thread hop). Larger ones, up to CIFAR10_MAX_PIXELS each (a 40 MP image takes 0.2-0.5 s
and 0.16-0.63 GB while it decodes), go to the decode pool, so that they never stall other requests, /readyz and
/livez. The headers decide, not the byte counts: a 1.7 kB lossless WebP can hold 40 M pixels (measured
2026-11-30). Headers are read on the loop only for small bodies (a large TIFF's tags are parsed in Python).
The pixels themselves come from contract/images.py, the one decoding contract training and serving share.
"""
from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from contract.images import ImageError, open_upload, to_input

from .errors import RequestError

INLINE_DECODE_PIXELS = 128 * 128
INLINE_HEADER_BYTES = 64 * 1024


def _checked(name: str, step, *args):
    try:
        return step(*args)
    except ImageError as exc:
        status = 413 if exc.code == "image_too_large" else 400
        raise RequestError(status, exc.code, f"{name}: {exc}") from None


class Decoder:
    """Uploaded bytes -> the model's uint8 [size, size, 3] input, with the service's pixel limit.

    Large decodes run one image per job on a pool of `threads` threads (as many as the worker has CPUs to use):
    concurrent large uploads take turns image by image, use every CPU, and hold memory for the pool's threads
    only (8 concurrent 40 MP uploads: 2.6 GB on anyio's 40-thread pool, 1.9 GB on this pool of 2, and 1.9 GB for
    16, before decoding stopped copying the image twice; docs/serving.md). A request that times out or whose
    client left stops before its next image instead of decoding the rest for nobody.
    """

    def __init__(self, input_size: int, max_pixels: int, threads: int, resize: str):
        self.input_size, self.max_pixels, self.resize = input_size, max_pixels, resize
        self.pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="decode")

    def _opened(self, data: bytes, name: str):
        return _checked(name, open_upload, data, self.max_pixels)

    def _job(self, job, name: str) -> np.ndarray:
        im = self._opened(job, name) if isinstance(job, bytes) else job
        return _checked(name, to_input, im, self.input_size, self.resize)

    async def decode(self, images: list[tuple[bytes, str]]) -> list[np.ndarray]:
        """Every (bytes, name) of a request decoded, in order; the first bad one raises its RequestError."""
        jobs: list = list(images)
        if sum(len(data) for data, _ in images) <= INLINE_HEADER_BYTES:
            jobs = [(self._opened(data, name), name) for data, name in images]
            if sum(im.width * im.height for im, _ in jobs) <= INLINE_DECODE_PIXELS:
                return [_checked(name, to_input, im, self.input_size, self.resize) for im, name in jobs]
        loop = asyncio.get_running_loop()
        out = []
        for job, name in jobs:
            out.append(await loop.run_in_executor(self.pool, self._job, job, name))
        return out

    def close(self) -> None:
        self.pool.shutdown()
