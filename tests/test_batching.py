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
        rows = images.reshape(len(images), -1)[:, :2].astype(np.float32)  # [N, 2], row i tells which image
        return rows, rows[:, 0] + 0.5  # (probabilities, ood_score)


def _images(i, n=1):
    return np.full((n, 32, 32, 3), i, dtype=np.uint8)


def test_concurrent_requests_share_one_call_and_get_their_own_rows():
    infer = Recorder()
    batcher = MicroBatcher(infer, max_batch=64)

    async def run():
        return await asyncio.gather(*(batcher.predict(_images(i)) for i in range(10)))

    results = asyncio.run(run())
    assert infer.calls == [10]
    assert [int(probs[0, 0]) for probs, _ in results] == list(range(10))
    assert [float(ood[0]) for _, ood in results] == [i + 0.5 for i in range(10)]


def test_max_batch_splits_groups_and_multi_image_requests_stay_together():
    infer = Recorder()
    batcher = MicroBatcher(infer, max_batch=4)

    async def run():
        return await asyncio.gather(*(batcher.predict(_images(i, 3)) for i in range(3)))

    results = asyncio.run(run())
    assert infer.calls == [3, 3, 3]
    assert [r[0].shape[0] for r in results] == [3, 3, 3] and int(results[2][0][0, 0]) == 2
    assert [r[1].shape for r in results] == [(3,)] * 3


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


def test_a_model_without_an_ood_score_gives_none_in_its_place():
    batcher = MicroBatcher(lambda images: (np.ones((len(images), 10), np.float32), None), max_batch=64)

    async def run():
        return await asyncio.gather(*(batcher.predict(_images(i, 2)) for i in range(3)))

    results = asyncio.run(run())
    assert [r[0].shape for r in results] == [(2, 10)] * 3 and all(r[1] is None for r in results)
