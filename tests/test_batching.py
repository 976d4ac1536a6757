import asyncio

import numpy as np

from serving.batching import MicroBatcher


class Recorder:
    def __init__(self, fail=False):
        self.calls, self.fail = [], fail

    def __call__(self, images):
        self.calls.append(len(images))
        if self.fail:
            raise RuntimeError("model exploded")
        return images.reshape(len(images), -1)[:, :2].astype(np.float32)  # [N, 2], row i tells which image


def _images(i, n=1):
    return np.full((n, 32, 32, 3), i, dtype=np.uint8)


def test_concurrent_requests_share_one_call_and_get_their_own_rows():
    infer = Recorder()
    batcher = MicroBatcher(infer, max_batch=64)

    async def run():
        return await asyncio.gather(*(batcher.predict(_images(i)) for i in range(10)))

    results = asyncio.run(run())
    assert infer.calls == [10]
    assert [int(r[0, 0]) for r in results] == list(range(10))


def test_max_batch_splits_groups_and_multi_image_requests_stay_together():
    infer = Recorder()
    batcher = MicroBatcher(infer, max_batch=4)

    async def run():
        return await asyncio.gather(*(batcher.predict(_images(i, 3)) for i in range(3)))

    results = asyncio.run(run())
    assert infer.calls == [3, 3, 3]
    assert [r.shape[0] for r in results] == [3, 3, 3] and int(results[2][0, 0]) == 2


def test_lone_request_and_disabled_batching_call_directly():
    infer = Recorder()
    batcher = MicroBatcher(infer, enabled=False)

    async def run():
        return await asyncio.gather(*(batcher.predict(_images(i)) for i in range(3)))

    asyncio.run(run())
    assert infer.calls == [1, 1, 1]


def test_a_failing_model_fails_every_waiter_instead_of_hanging():
    batcher = MicroBatcher(Recorder(fail=True))

    async def run():
        return await asyncio.wait_for(asyncio.gather(*(batcher.predict(_images(i)) for i in range(3)),
                                                     return_exceptions=True), timeout=5)

    results = asyncio.run(run())
    assert all(isinstance(r, RuntimeError) for r in results)
