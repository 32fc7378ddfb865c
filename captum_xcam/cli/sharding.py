r"""The processes of a run: one, or several started by ``torchrun``
(torch.distributed), which share out the images of one global list.

Under ``torchrun --nproc_per_node N -m captum_xcam explain ...`` every process
finds the same sorted list of images, takes every N-th one of those left to do
(:meth:`Processes.share`), writes its own rows, and process 0 merges them at
the end. torch.distributed (a gloo process group, which works on CPUs and is
only the control channel here: a few barriers and one gather of small Python
objects) is set up as benchmarks/faithfulness.py does, from the environment
that ``torchrun`` sets (``WORLD_SIZE``, ``RANK``, ``LOCAL_RANK``, ...)."""
import datetime
import os
from dataclasses import dataclass
from typing import List, Sequence, TypeVar

import torch
import torch.distributed as dist

Item = TypeVar("Item")

# The processes meet at a barrier only at the start and the end; the end waits
# for the slowest share, which on a large dataset can be hours behind the
# fastest (torch's default, 30 minutes, would fail such a run at its last step).
# A process that dies instead makes torchrun stop the others.
BARRIER_TIMEOUT = datetime.timedelta(days=1)


@dataclass(frozen=True)
class Processes:
    r"""This process's place among the processes of the run: ``rank`` of
    ``world``, ``local_rank`` on its machine. One process is rank 0 of 1."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def distributed(self) -> bool:
        return self.world > 1

    @property
    def is_first(self) -> bool:
        r"""Whether this process writes the shared files (rank 0)."""
        return self.rank == 0

    def share(self, items: Sequence[Item]) -> List[Item]:
        r"""This process's items: every ``world``-th from ``rank``, so each
        process gets as many as the others, give or take one, even when the
        items left to do are those at the end of the list."""
        return list(items[self.rank::self.world])

    def device(self, device: torch.device) -> torch.device:
        r"""``cuda`` without an index is ``cuda:LOCAL_RANK`` under torchrun (one
        GPU per process); any other device is used as given."""
        if self.distributed and device.type == "cuda" and device.index is None:
            device = torch.device("cuda", self.local_rank)
        if device.type == "cuda":
            torch.cuda.set_device(device)
        return device

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier()

    def gather(self, value: Item) -> List[Item]:
        r"""Every process's ``value`` (small picklable objects), in rank order."""
        if not self.distributed:
            return [value]
        everything: List[Item] = [value] * self.world
        dist.all_gather_object(everything, value)
        return everything

    def close(self) -> None:
        if self.distributed and dist.is_initialized():
            dist.destroy_process_group()


def start_processes() -> Processes:
    r"""One process, or under ``torchrun`` (``WORLD_SIZE`` > 1) this one of the
    processes, joined in a gloo process group."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return Processes()
    dist.init_process_group("gloo", timeout=BARRIER_TIMEOUT)
    return Processes(dist.get_rank(), dist.get_world_size(),
                     int(os.environ.get("LOCAL_RANK", "0")))
