"""training/streams.py: the run's random streams, seeded once and continued from last.pt."""
from __future__ import annotations

import torch

from training import streams
from training.distributed import DistInfo

CPU = torch.device("cpu")


def _draws(s: streams.Streams) -> list[torch.Tensor]:
    return [torch.rand(5), torch.rand(5, generator=s.augment)]


def test_one_process_draws_order_and_augmentation_from_one_generator_apart_from_the_global_stream():
    torch.manual_seed(7)
    s = streams.start(7, CPU)
    assert s.order is None
    assert torch.equal(torch.rand(4, generator=s.augment),
                       torch.rand(4, generator=torch.Generator().manual_seed(7 + streams.DATA_SEED_OFFSET)))
    assert not torch.equal(torch.rand(4, generator=streams.start(7, CPU).augment), torch.rand(4))


def test_saved_states_continue_every_stream_where_it_was():
    torch.manual_seed(3)
    s = streams.start(3, CPU)
    _draws(s)  # an epoch's worth of use
    saved = streams.state(s, CPU)
    expected = _draws(s)
    torch.manual_seed(99)  # a new process would start anywhere
    restored, why = streams.restore(saved, 3, 1, CPU)
    assert why is None
    assert all(torch.equal(a, b) for a, b in zip(_draws(restored), expected, strict=True))


def test_ranks_share_the_order_and_differ_in_augmentation_and_dropout():
    made = []
    for rank in (0, 1):
        s = streams.start(5, CPU, DistInfo(rank=rank, world_size=2))
        made.append((torch.rand(3), torch.rand(3, generator=s.augment), torch.randperm(10, generator=s.order)))
    (g0, a0, o0), (g1, a1, o1) = made
    assert torch.equal(o0, o1)
    assert not torch.equal(a0, a1) and not torch.equal(g0, g1)


def test_a_last_pt_that_cannot_continue_the_streams_restarts_them_from_seed_and_epoch_and_says_so():
    old_format = {"torch": torch.get_rng_state(), "cuda": []}  # last.pt before streams were saved
    first, why = streams.restore(old_format, 4, 6, CPU)
    assert "predates saved random streams" in why and "not identical" in why
    first_draws = _draws(first)
    again, _ = streams.restore(old_format, 4, 6, CPU)
    assert all(torch.equal(a, b) for a, b in zip(first_draws, _draws(again), strict=True))
    torch.manual_seed(0)
    other_device = streams.state(streams.start(4, CPU), CPU)
    other_device["ranks"][0]["device"] = "cuda"
    _, why = streams.restore(other_device, 4, 6, CPU)
    assert "written on cuda, this run is on cpu" in why
    _, why = streams.restore(streams.state(streams.start(4, CPU), CPU), 4, 6, CPU, DistInfo(rank=0, world_size=2))
    assert "streams of 1 process(es), this run has 2" in why  # training refuses such a resume before this
