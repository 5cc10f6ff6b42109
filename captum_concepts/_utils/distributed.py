"""Example-sharded computation on ``torch.distributed`` (private).

Every estimator that sums over examples (coupled NMF's sufficient statistics,
semantic vectors' sums and counts) shards the examples over the ranks of the
default process group and sums its per-rank results with :func:`all_reduce_sum`.
Nothing here sends messages of its own: only ``torch.distributed`` collectives
(gloo on CPU, NCCL on GPU).

Without an initialised process group (or with one rank) every function is the
identity / the single-process answer, so the same code runs under ``python``
and under ``torchrun``.

Global example order: rank 0's examples, then rank 1's, ... (rank-major). A
sharded fit equals the single-process fit on the concatenation of the shards in
that order; :func:`shard_range` gives contiguous shards so that this order is
the dataset's own.
"""

from __future__ import annotations

from typing import Any, List, Optional, Tuple

import torch
import torch.distributed as dist
from torch import Tensor

__all__ = [
    "is_distributed",
    "get_rank",
    "get_world_size",
    "all_reduce_sum",
    "all_reduce_min",
    "all_reduce_max",
    "all_reduce_mean",
    "shard_offset",
    "shard_range",
    "gather_columns",
    "all_gather_objects",
    "run_local_ranks",
]


def is_distributed() -> bool:
    """True when a default process group is initialised and has more than one rank."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def get_rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def get_world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def _comm_device(t: Tensor) -> torch.device:
    """NCCL only moves CUDA tensors: CPU tensors go through the rank's current GPU."""
    if dist.get_backend() == "nccl" and t.device.type != "cuda":
        return torch.device("cuda", torch.cuda.current_device())
    return t.device


def _all_reduce(t: Tensor, op) -> Tensor:
    if not is_distributed():
        return t
    device = _comm_device(t)
    buf = t.detach().to(device, copy=True).contiguous()  # never reduce the caller's tensor in place
    dist.all_reduce(buf, op=op)
    return buf.to(t.device)


def all_reduce_sum(t: Tensor) -> Tensor:
    """The sum of ``t`` over all ranks (a new tensor); ``t`` itself without a process group.

    All ranks receive the same values, so any decision taken from a reduced
    quantity (a convergence test, a factor update) is identical on every rank.
    """
    return _all_reduce(t, dist.ReduceOp.SUM if dist.is_available() else None)


def all_reduce_min(t: Tensor) -> Tensor:
    """Element-wise minimum over ranks."""
    return _all_reduce(t, dist.ReduceOp.MIN if dist.is_available() else None)


def all_reduce_max(t: Tensor) -> Tensor:
    """Element-wise maximum over ranks."""
    return _all_reduce(t, dist.ReduceOp.MAX if dist.is_available() else None)


def all_reduce_mean(values: Tensor, dim: int = -1) -> Tensor:
    """Mean along ``dim`` over the examples of every rank (shards may differ in size).

    E.g. a score curve computed on each rank's shard:
    ``all_reduce_mean(curve.per_example, dim=1)`` is the single-process
    ``curve.values`` of all the examples (sum and count all-reduced).
    """
    total = all_reduce_sum(values.sum(dim=dim, dtype=torch.float64))
    count = all_reduce_sum(
        torch.tensor([float(values.shape[dim])], dtype=torch.float64, device=values.device)
    )
    return (total / count).to(values.dtype)


def shard_offset(n_local: int) -> Tuple[int, int]:
    """``(offset, n_total)``: this rank's first global example index and the global count."""
    if not is_distributed():
        return 0, int(n_local)
    counts = all_gather_objects(int(n_local))
    return int(sum(counts[: get_rank()])), int(sum(counts))


def shard_range(n: int, rank: Optional[int] = None, world_size: Optional[int] = None) -> range:
    """Contiguous shard of ``range(n)`` for ``rank`` (default: this process's).

    Sizes differ by at most one; no example is repeated or dropped (unlike
    ``DistributedSampler``, which pads to equal sizes with repeated examples).
    """
    rank = get_rank() if rank is None else int(rank)
    world_size = get_world_size() if world_size is None else int(world_size)
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"rank must be in [0, world_size={world_size}), got {rank}")
    base, extra = divmod(int(n), world_size)
    start = rank * base + min(rank, extra)
    return range(start, start + base + (rank < extra))


def all_gather_objects(obj: Any) -> List[Any]:
    """``[obj of rank 0, obj of rank 1, ...]`` (picklable objects); ``[obj]`` without a group."""
    if not is_distributed():
        return [obj]
    out: List[Any] = [None] * get_world_size()
    dist.all_gather_object(out, obj)
    return out


def gather_columns(t: Tensor, dim: int = -1) -> Tensor:
    """Concatenate every rank's ``t`` along ``dim`` in rank order (shards may differ in size).

    E.g. the full ``F`` ``(d, N)`` from each rank's ``(d, N_r)`` columns. Every rank
    receives the result.
    """
    if not is_distributed():
        return t
    dim = dim % t.dim()
    sizes = all_gather_objects(int(t.shape[dim]))
    device = _comm_device(t)
    padded_shape = list(t.shape)
    padded_shape[dim] = max(sizes)
    local = torch.zeros(padded_shape, dtype=t.dtype, device=device)
    local.narrow(dim, 0, t.shape[dim]).copy_(t)
    parts = [torch.empty_like(local) for _ in sizes]
    dist.all_gather(parts, local)
    return torch.cat([p.narrow(dim, 0, s) for p, s in zip(parts, sizes)], dim=dim).to(t.device)


def _free_port() -> int:
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _numpy_tree(value: Any) -> Any:
    # tensors are sent back by value: a tensor in shared memory dies with the worker
    if isinstance(value, Tensor):
        return value.detach().cpu().numpy()
    if isinstance(value, (list, tuple)):
        return type(value)(_numpy_tree(v) for v in value)
    if isinstance(value, dict):
        return {k: _numpy_tree(v) for k, v in value.items()}
    return value


def _spawned(
    rank: int, fn, world_size: int, port: int, args: tuple, backend: str, queue, threads: int
) -> None:
    import os

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    if threads:
        torch.set_num_threads(threads)
    dist.init_process_group(backend, rank=rank, world_size=world_size)
    try:
        queue.put((rank, _numpy_tree(fn(*args))))
    finally:
        dist.destroy_process_group()


def run_local_ranks(
    fn, world_size: int = 2, args: tuple = (), backend: str = "gloo", threads_per_rank: int = 1
) -> List[Any]:
    """Run ``fn(*args)`` on ``world_size`` local processes joined in one process group.

    For tests, benchmarks and trying sharded code on one machine (``torchrun`` is
    the way to launch real jobs). ``fn`` must be importable (a module-level
    function); each rank binds ``127.0.0.1`` on a free port, sets
    ``threads_per_rank`` torch threads (0: leave as is), and returns
    ``fn``'s result, tensors converted to numpy arrays. Returns the results in
    rank order.
    """
    import torch.multiprocessing as mp

    ctx = mp.get_context("spawn")
    queue = ctx.SimpleQueue()
    context = mp.start_processes(
        _spawned,
        args=(fn, world_size, _free_port(), tuple(args), backend, queue, threads_per_rank),
        nprocs=world_size,
        join=False,
        start_method="spawn",
    )
    results = {}
    done = False
    while not done:  # drain while joining: a large result blocks its sender until read
        done = context.join(timeout=0.05)  # re-raises a worker's exception
        while not queue.empty():
            rank, value = queue.get()
            results[rank] = value
    return [results[r] for r in range(world_size)]
