"""Example-sharded fitting on ``torch.distributed``: the helpers users call.

Estimators with ``distributed=True`` (:class:`~captum_concepts.concept.CoupledNMFConcepts`,
:class:`~captum_concepts.concept.SemanticVector`) all-reduce their sums over
examples on the default process group. These helpers split a dataset into
contiguous shards (:func:`shard_range`), join per-rank results
(:func:`gather_columns`, :func:`all_reduce_mean`) and report the process's place
(:func:`get_rank`, :func:`get_world_size`). Without an initialised process
group (or with one rank) every function is the single-process answer, so the
same script runs under ``python`` and under ``torchrun``.

Global example order: rank 0's examples, then rank 1's, ... A sharded fit equals
the single-process fit on the concatenation of the shards in that order.

When the ranks of a distributed fit disagree (parameters, block shapes) or one
rank fails, every rank raises at once: the same ``ValueError`` for a
disagreement, :class:`RankFailedError` (naming the failing rank and its error)
on the other ranks for a local failure.
"""

from ._utils.distributed import (
    RankFailedError,
    all_gather_objects,
    all_reduce_max,
    all_reduce_mean,
    all_reduce_min,
    all_reduce_sum,
    gather_columns,
    get_rank,
    get_world_size,
    is_distributed,
    shard_offset,
    shard_range,
)

__all__ = [
    "RankFailedError",
    "all_gather_objects",
    "all_reduce_max",
    "all_reduce_mean",
    "all_reduce_min",
    "all_reduce_sum",
    "gather_columns",
    "get_rank",
    "get_world_size",
    "is_distributed",
    "shard_offset",
    "shard_range",
]
