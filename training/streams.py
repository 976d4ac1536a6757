"""A run's random streams: seeded once when the run starts, carried through last.pt so a resumed run continues them.

Three streams feed training: the global torch stream (dropout), the generator of the sample order and
the generator of the augmentation (crops, flips). They are seeded once, like the report's loop, and
never restarted: restarting them all every epoch from (seed, epoch), as this project did before,
measurably raised the training loss (docs/experiments.md, "Seed-recipe fidelity"). Exact resumption
comes instead from their states, saved in last.pt after every epoch.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

import torch
import torch.distributed as dist

from .config import DATA_SEED_OFFSET
from .distributed import DistInfo


@dataclass
class Streams:
    augment: torch.Generator
    order: Optional[torch.Generator] = None  # None: one process, the augmentation generator also draws the order


def start(seed: int, device: torch.device, info: DistInfo = DistInfo()) -> Streams:
    """The streams of a fresh run; call it after the model's initialization (which used the global stream)."""
    data_seed = seed + DATA_SEED_OFFSET
    if not info.enabled:
        return Streams(torch.Generator(device=device).manual_seed(data_seed))
    # Under DDP every rank draws the same order (and takes its slice of it), while augmentation and
    # dropout get a stream per rank so that ranks do not repeat each other's crops, flips and masks.
    rank_seed = int(torch.randint(2**62, (info.world_size,),
                                  generator=torch.Generator().manual_seed(data_seed))[info.rank])
    torch.manual_seed(rank_seed)
    return Streams(torch.Generator(device=device).manual_seed(rank_seed),
                   torch.Generator(device=device).manual_seed(data_seed))


def state(streams: Streams, device: torch.device, info: DistInfo = DistInfo()) -> dict[str, Any]:
    """Every rank's stream states, gathered (a collective: all ranks call it), for rank 0 to write to last.pt."""
    mine = {
        "device": device.type,
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state(device) if device.type == "cuda" else None,
        "augment": streams.augment.get_state(),
        "order": streams.order.get_state() if streams.order is not None else None,
    }
    if not info.enabled:
        return {"ranks": [mine]}
    ranks: list[Any] = [None] * info.world_size
    dist.all_gather_object(ranks, mine)
    return {"ranks": ranks}


def restore(saved: dict[str, Any], seed: int, epoch: int, device: torch.device,
            info: DistInfo = DistInfo()) -> tuple[Streams, Optional[str]]:
    """The streams as last.pt left them after `epoch`, and None; or, when last.pt cannot continue them
    (written before streams were saved, or on another kind of device), fresh ones and the reason."""
    ranks = saved.get("ranks")
    if not ranks:
        why = "it predates saved random streams"
    elif len(ranks) != info.world_size:
        why = f"it holds the streams of {len(ranks)} process(es), this run has {info.world_size}"
    elif ranks[info.rank]["device"] != device.type:
        why = f"it was written on {ranks[info.rank]['device']}, this run is on {device.type}"
    else:
        mine = ranks[info.rank]
        torch.set_rng_state(mine["torch"])
        if mine["cuda"] is not None:
            torch.cuda.set_rng_state(mine["cuda"], device)
        order = _generator(mine["order"], device) if mine["order"] is not None else None
        return Streams(_generator(mine["augment"], device), order), None
    # Seeded from (seed, epoch), so resuming the same file twice still gives the same run.
    fresh = (seed * 1_000_003 + epoch) % 2**62  # the same numbers as before for any seed below 2**42
    torch.manual_seed(fresh)  # start() seeds the global stream itself only under DDP
    return start(fresh, device, info), (
        f"the random streams restart from (seed, epoch) because {why}: the continued run is deterministic, "
        "but not identical to an uninterrupted one")


def _generator(state: torch.Tensor, device: torch.device) -> torch.Generator:
    generator = torch.Generator(device=device)
    generator.set_state(state)
    return generator
