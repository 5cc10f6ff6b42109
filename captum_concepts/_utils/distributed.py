"""Example-sharded computation on ``torch.distributed`` (private).

Every estimator that sums over examples (coupled NMF's sufficient statistics,
semantic vectors' sums and counts) shards the examples over the ranks of the
default process group and sums its per-rank results with :func:`all_reduce_sum`.
Nothing here sends messages of its own: only ``torch.distributed`` collectives
(gloo on CPU, NCCL on GPU).

Without an initialised process group (or with one rank) every function is the
identity / the single-process answer, so the same code runs under ``python``
and under ``torchrun``.

Misuse fails on every rank at once. An estimator method decorated with
:func:`synchronized` (``fit``, ``fit_matrices``, ... with ``distributed=True``)
runs as one *section*: its first collective is preceded by an all-gather of a
small signature (the estimator's parameters plus what the method
:func:`declare`-s, e.g. the rows of every block) and of a local error flag;
ranks that disagree raise the same ``ValueError`` naming the differing entries,
before any collective whose shapes would differ (gloo aborts the process on
those). Later collectives of the section are each preceded by a one-integer
status all-reduce: a rank whose code raises between two collectives (bad
labels, a failed forward pass) joins the others' next status reduction with a
failure flag, so every other rank raises :class:`RankFailedError` naming it
instead of waiting for the process-group timeout. The failing rank re-raises
its own exception.

Global example order: rank 0's examples, then rank 1's, ... (rank-major). A
sharded fit equals the single-process fit on the concatenation of the shards in
that order; :func:`shard_range` gives contiguous shards so that this order is
the dataset's own.
"""

from __future__ import annotations

import functools
import threading
from typing import Any, Callable, Dict, List, Optional, Tuple, TypeVar

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor

from .validation import NONE, AnyOf, InstanceOf, Int, validated

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
    "RankFailedError",
    "synchronized",
    "declare",
    "estimator_signature",
]

_TENSOR = InstanceOf((Tensor,), "a tensor")


@validated()
def is_distributed() -> bool:
    """True when a default process group is initialised and has more than one rank.

    Example::

        from captum_concepts.distributed import is_distributed

        is_distributed()  # False here; True inside an initialised torch.distributed process group
    """
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


@validated()
def get_rank() -> int:
    """This process's rank in the default process group, or 0 without one.

    Example::

        from captum_concepts.distributed import get_rank

        assert get_rank() == 0  # without a process group: rank 0
    """
    return dist.get_rank() if is_distributed() else 0


@validated()
def get_world_size() -> int:
    """The number of ranks in the default process group, or 1 without one.

    Example::

        from captum_concepts.distributed import get_world_size

        assert get_world_size() == 1  # without a process group: one rank
    """
    return dist.get_world_size() if is_distributed() else 1


def _comm_device(t: Tensor) -> torch.device:
    """NCCL only moves CUDA tensors: CPU tensors go through the rank's current GPU."""
    if dist.get_backend() == "nccl" and t.device.type != "cuda":
        return torch.device("cuda", torch.cuda.current_device())
    return t.device


def _all_reduce(t: Tensor, op) -> Tensor:
    if not is_distributed():
        return t
    _checkpoint()
    device = _comm_device(t)
    buf = t.detach().to(device, copy=True).contiguous()  # never reduce the caller's tensor in place
    with _collective():
        dist.all_reduce(buf, op=op)
    return buf.to(t.device)


@validated(args={"t": _TENSOR})
def all_reduce_sum(t: Tensor) -> Tensor:
    """The sum of ``t`` over all ranks (a new tensor); ``t`` itself without a process group.

    All ranks receive the same values, so any decision taken from a reduced
    quantity (a convergence test, a factor update) is identical on every rank.

    Example::

        from captum_concepts.distributed import all_reduce_sum

        total = all_reduce_sum(torch.ones(3))  # the sum over ranks; one rank: unchanged
    """
    return _all_reduce(t, dist.ReduceOp.SUM if dist.is_available() else None)


@validated(args={"t": _TENSOR})
def all_reduce_min(t: Tensor) -> Tensor:
    """Element-wise minimum over ranks.

    Example::

        from captum_concepts.distributed import all_reduce_min

        low = all_reduce_min(torch.tensor([3.0, -1.0]))  # element-wise minimum over ranks
    """
    return _all_reduce(t, dist.ReduceOp.MIN if dist.is_available() else None)


@validated(args={"t": _TENSOR})
def all_reduce_max(t: Tensor) -> Tensor:
    """Element-wise maximum over ranks.

    Example::

        from captum_concepts.distributed import all_reduce_max

        high = all_reduce_max(torch.tensor([3.0, -1.0]))  # element-wise maximum over ranks
    """
    return _all_reduce(t, dist.ReduceOp.MAX if dist.is_available() else None)


@validated(args={"values": _TENSOR, "dim": Int()})
def all_reduce_mean(values: Tensor, dim: int = -1) -> Tensor:
    """Mean along ``dim`` over the examples of every rank (shards may differ in size).

    E.g. a score curve computed on each rank's shard:
    ``all_reduce_mean(curve.per_example, dim=1)`` is the single-process
    ``curve.values`` of all the examples (sum and count all-reduced).

    Example::

        from captum_concepts.distributed import all_reduce_mean

        mean = all_reduce_mean(torch.arange(4.0))  # the mean over every rank's values: tensor([1.5])
    """
    total = all_reduce_sum(values.sum(dim=dim, dtype=torch.float64))
    count = all_reduce_sum(
        torch.tensor([float(values.shape[dim])], dtype=torch.float64, device=values.device)
    )
    return (total / count).to(values.dtype)


@validated(args={"n_local": Int(0)})
def shard_offset(n_local: int) -> Tuple[int, int]:
    """``(offset, n_total)``: this rank's first global example index and the global count.

    Example::

        from captum_concepts.distributed import shard_offset

        start, total = shard_offset(5)  # this rank's first global index and the global count: (0, 5)
    """
    if not is_distributed():
        return 0, int(n_local)
    counts = all_gather_objects(int(n_local))
    return int(sum(counts[: get_rank()])), int(sum(counts))


@validated(args={"n": Int(0), "rank": AnyOf(NONE, Int(0)), "world_size": AnyOf(NONE, Int(1))})
def shard_range(n: int, rank: Optional[int] = None, world_size: Optional[int] = None) -> range:
    """Contiguous shard of ``range(n)`` for ``rank`` (default: this process's).

    Sizes differ by at most one; no example is repeated or dropped (unlike
    ``DistributedSampler``, which pads to equal sizes with repeated examples).

    Example::

        from captum_concepts.distributed import shard_range

        assert shard_range(10, rank=1, world_size=3) == range(4, 7)  # rank 1's examples of 10
    """
    rank = get_rank() if rank is None else int(rank)
    world_size = get_world_size() if world_size is None else int(world_size)
    if rank >= world_size:  # both >= 0 and >= 1 by the decorator's rules
        raise ValueError(f"rank must be in [0, world_size={world_size}), got {rank}")
    base, extra = divmod(int(n), world_size)
    start = rank * base + min(rank, extra)
    return range(start, start + base + (rank < extra))


@validated()
def all_gather_objects(obj: Any) -> List[Any]:
    """``[obj of rank 0, obj of rank 1, ...]`` (picklable objects); ``[obj]`` without a group.

    Example::

        from captum_concepts.distributed import all_gather_objects

        names = all_gather_objects({"rank": 0})  # one entry per rank, in rank order
    """
    if not is_distributed():
        return [obj]
    _checkpoint()
    out: List[Any] = [None] * get_world_size()
    with _collective():
        dist.all_gather_object(out, obj)
    return out


@validated(args={"t": _TENSOR, "dim": Int()})
def gather_columns(t: Tensor, dim: int = -1) -> Tensor:
    """Concatenate every rank's ``t`` along ``dim`` in rank order (shards may differ in size).

    E.g. the full ``F`` ``(d, N)`` from each rank's ``(d, N_r)`` columns. Every rank
    receives the result.

    Example::

        from captum_concepts.distributed import gather_columns

        full = gather_columns(torch.ones(2, 3))  # every rank's columns side by side: (2, 3 x ranks)
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
    _checkpoint()
    with _collective():
        dist.all_gather(parts, local)
    return torch.cat([p.narrow(dim, 0, s) for p, s in zip(parts, sizes)], dim=dim).to(t.device)


# ---------------------------------------------------------------------- synchronised sections
class RankFailedError(RuntimeError):
    """Raised on every other rank when one rank of a :func:`synchronized` call failed.

    Example::

        from captum_concepts.distributed import RankFailedError

        try:
            pass  # a synchronised fit on several ranks
        except RankFailedError as err:  # another rank failed: its error is in the message
            print(err)
    """


class _Section:
    def __init__(self, what: str, signature: Dict[str, str]) -> None:
        self.what = what
        self.signature = signature
        self.agreed = False  # the signature has been exchanged
        self.broken = False  # a collective failed or the section already raised: no more messages


_state = threading.local()


def _active() -> Optional[_Section]:
    return getattr(_state, "section", None)


class _collective:
    """Marks the section broken when a collective itself fails (no further messages then)."""

    def __enter__(self) -> None:
        return None

    def __exit__(self, exc_type, exc, tb) -> bool:
        section = _active()
        if exc_type is not None and section is not None:
            section.broken = True
        return False


def _describe(value: Any) -> str:
    if isinstance(value, np.generic):  # np.int64(3) and 3 are the same parameter
        value = value.item()
    if isinstance(value, torch.nn.Module):
        return type(value).__name__
    if isinstance(value, Tensor):
        return f"tensor{tuple(value.shape)}:{value.dtype}"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_describe(v) for v in value) + "]"
    return repr(value)


# may differ between ranks: own model copy, own GPU, own file, own memory (the sums do not depend on it)
_PER_RANK = ("model", "device", "out_of_core", "batch_size")


def estimator_signature(estimator: Any, skip: Tuple[str, ...] = _PER_RANK) -> Dict[str, str]:
    """The parameters every rank must share: ``get_params()`` without the per-rank ones, as text."""
    params = estimator.get_params(deep=False)
    return {k: _describe(v) for k, v in params.items() if k not in skip}


def declare(**items: Any) -> None:
    """Add ``items`` (e.g. ``block_rows=[16, 12]``) to the signature of the running section.

    A no-op outside a :func:`synchronized` call and after its first collective.
    """
    section = _active()
    if section is not None and not section.agreed:
        section.signature.update({k: _describe(v) for k, v in items.items()})


def _error_text(exc: BaseException) -> str:
    text = str(exc).splitlines()[0] if str(exc) else ""
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _exchange(section: _Section, error: Optional[str]) -> None:
    """All-gather ``(signature, error)``; raise on every rank if any rank failed or they differ."""
    section.agreed = True
    entries: List[Any] = [None] * get_world_size()
    with _collective():
        dist.all_gather_object(entries, (section.signature, error))
    failed = [(r, e) for r, (_, e) in enumerate(entries) if e is not None]
    if failed:
        section.broken = True
        if error is None:
            raise RankFailedError(_failure_message(section, failed))
        return
    keys = list(dict.fromkeys(k for sig, _ in entries for k in sig))  # parameters first, then data
    differ = [k for k in keys if len({sig.get(k) for sig, _ in entries}) > 1]
    if differ:
        section.broken = True
        detail = "; ".join(
            f"{k}: " + ", ".join(f"rank {r} {sig.get(k, '(missing)')}" for r, (sig, _) in enumerate(entries))
            for k in differ
        )
        raise ValueError(
            f"{section.what} with distributed=True: the ranks disagree on {', '.join(differ)} ({detail}); "
            "every rank must pass the same parameters and blocks with the same rows (only the number "
            "of examples may differ)"
        )


def _status(section: _Section, error: Optional[str]) -> None:
    """One-integer all-reduce (MAX) of a failure flag; on a failure, gather the messages and raise."""
    flag = torch.tensor([0 if error is None else 1], dtype=torch.int32)
    flag = flag.to(_comm_device(flag))
    with _collective():
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
    if int(flag.item()) == 0:
        return
    section.broken = True
    entries: List[Any] = [None] * get_world_size()
    with _collective():
        dist.all_gather_object(entries, error)
    if error is None:
        raise RankFailedError(_failure_message(section, [(r, e) for r, e in enumerate(entries) if e]))


def _failure_message(section: _Section, failed: List[Tuple[int, str]]) -> str:
    where = "; ".join(f"rank {r}: {e}" for r, e in failed)
    return (
        f"{section.what} with distributed=True failed on {len(failed)} of {get_world_size()} ranks "
        f"({where}); this rank stops too"
    )


def _sync(section: _Section, error: Optional[str]) -> None:
    if section.broken:
        return
    if not section.agreed:
        _exchange(section, error)
    else:
        _status(section, error)


def _checkpoint() -> None:
    """Before a collective inside a section: the signature exchange first, then a status flag."""
    section = _active()
    if section is None or section.broken:
        return
    _state.section = None  # our own messages are not sections' collectives
    try:
        _sync(section, None)
    finally:
        _state.section = section


Method = TypeVar("Method", bound=Callable[..., Any])


def synchronized(method: Method) -> Method:
    """Run an estimator method as one synchronised section (see the module docstring).

    Active only when the estimator's ``distributed`` is true and a process group
    with more than one rank is initialised; nested calls join the outer section.
    """

    @functools.wraps(method)
    def wrapper(self, *args, **kwargs):
        if not getattr(self, "distributed", False) or not is_distributed() or _active() is not None:
            return method(self, *args, **kwargs)
        section = _Section(f"{type(self).__name__}.{method.__name__}", estimator_signature(self))
        _state.section = section
        try:
            result = method(self, *args, **kwargs)
        except Exception as exc:
            _state.section = None
            _sync(section, _error_text(exc))  # the others learn of it at their next collective
            raise
        finally:
            _state.section = None
        _sync(section, None)  # a rank that fails after the last collective is heard here
        return result

    return wrapper  # type: ignore[return-value]
