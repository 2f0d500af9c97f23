"""The process-group facts of a torchrun launch: rank, world size, barrier, object all-gather.

``torchrun --nproc_per_node=N -m gradproj CMD ...`` starts N processes with ``WORLD_SIZE``,
``RANK`` and ``LOCAL_RANK`` set; :func:`init` joins them into one torch.distributed group (gloo
on CPU, nccl on CUDA, each rank on ``cuda:LOCAL_RANK``). Without ``WORLD_SIZE`` (or with 1)
nothing is initialised and every function here answers for a single process: rank 0 of 1,
barriers and gathers are no-ops, so library code can call them unconditionally.
"""

from __future__ import annotations

import os
import sys
import time
from contextlib import contextmanager


def env_world_size() -> int:
    """WORLD_SIZE of the launch (1 when not launched by torchrun)."""
    return int(os.environ.get("WORLD_SIZE", "1") or 1)


def init(device: str = "auto") -> str:
    """Join the torchrun process group (once); returns the device this rank should use.

    ``device`` is the requested device name (auto, cpu, cuda, cuda:N); on CUDA each rank gets
    ``cuda:LOCAL_RANK`` and the backend is nccl, elsewhere gloo. A single process (WORLD_SIZE
    unset or 1) is left alone and ``device`` comes back unchanged.
    """
    if env_world_size() <= 1:
        return device
    import torch
    import torch.distributed as dist

    from gradproj.core.model import resolve_device

    cuda = resolve_device(device).type == "cuda"
    if cuda:
        local = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local)
        device = f"cuda:{local}"
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if cuda else "gloo", timeout=timeout())
    return device


def timeout():
    """How long a rank waits at a collective: ``GRADPROJ_DIST_TIMEOUT`` seconds, else 12 hours
    (the other ranks wait at a barrier while rank 0 alone computes IF and writes the outputs,
    which can take longer than torch's 30-minute default on a large run; a rank that fails
    ends the others through torchrun, so a long timeout does not keep a failed run alive)."""
    from datetime import timedelta

    return timedelta(seconds=float(os.environ.get("GRADPROJ_DIST_TIMEOUT", 12 * 3600)))


def active() -> bool:
    """True inside an initialised process group of more than one rank."""
    import torch.distributed as dist

    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    import torch.distributed as dist

    return dist.get_rank() if active() else 0


def world_size() -> int:
    import torch.distributed as dist

    return dist.get_world_size() if active() else 1


def is_main() -> bool:
    """Rank 0 (the only rank of a single process): the one that writes shared outputs."""
    return rank() == 0


def barrier() -> None:
    """Wait for every rank (no-op in a single process)."""
    if active():
        import torch.distributed as dist

        dist.barrier()


def all_gather(obj) -> list:
    """Every rank's picklable ``obj``, in rank order, on every rank (``[obj]`` alone)."""
    if not active():
        return [obj]
    import torch.distributed as dist

    out = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def shard(items: list) -> list:
    """This rank's share of ``items``: ``items[rank::world]``."""
    return items[rank()::world_size()]


def ranks_text(ranks) -> str:
    return ",".join(str(r) for r in ranks)


def announce(stage: str, detail: str) -> None:
    """Rank 0 of a multi-rank run prints ``gradproj: stage STAGE: DETAIL`` on stderr (a single
    process prints nothing: its output does not change)."""
    if active() and is_main():
        print(f"gradproj: stage {stage}: {detail}", file=sys.stderr, flush=True)


@contextmanager
def stage(name: str, how: str = ""):
    """A stage every rank runs: afterwards rank 0 prints which ranks ran it and how long each
    took, e.g. ``stage scores: ranks 0,1 (pairs r::2) 3.1s/3.0s``. Collective: every rank must
    enter it."""
    start = time.perf_counter()
    yield
    took = all_gather((rank(), time.perf_counter() - start))
    announce(name, f"ranks {ranks_text(r for r, _ in took)}" + (f" ({how})" if how else "")
             + " " + "/".join(f"{s:.1f}s" for _, s in took))


@contextmanager
def main_only_stage(name: str):
    """A stage only rank 0 runs while the others wait at a barrier; use as
    ``with main_only_stage(...) as run: if run: ...``."""
    start = time.perf_counter()
    yield is_main()
    barrier()
    announce(name, f"rank 0 (ranks {ranks_text(range(1, world_size()))} wait) "
                   f"{time.perf_counter() - start:.1f}s")
