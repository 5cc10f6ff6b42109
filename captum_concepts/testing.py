"""Helpers for testing code that uses captum_concepts (as Captum's ``captum.testing``).

Not needed to use the package; imported only by tests, benchmarks and examples.
:func:`model_state` snapshots what every call of the package promises to restore (hooks,
train/eval flags, ``requires_grad``, buffers); :func:`assert_same_state` compares a model with
such a snapshot;
:func:`count_hooks` counts the module hooks registered anywhere in a model;
:func:`run_local_ranks` runs a function on local gloo ranks.
"""

from __future__ import annotations

import datetime
import time
from typing import Any, Callable, Dict, List, Optional

import torch
import torch.distributed as dist
from torch import Tensor, nn

from ._utils.hooks import _MODULE_HOOK_DICTS
from ._utils.validation import MODEL, NONE, AnyOf, InstanceOf, Int, RealNumber, validated

__all__ = ["count_hooks", "model_state", "assert_same_state", "run_local_ranks"]

_SECONDS = AnyOf(NONE, RealNumber(0, low_open=True))


@validated(args={"model": MODEL})
def count_hooks(model: nn.Module) -> int:
    """Total number of module hooks registered anywhere in ``model``.

    Example::

        from captum_concepts.attr import EmbeddingAttribution
        from captum_concepts.testing import count_hooks

        ea = EmbeddingAttribution(model, embedding_layer="embedding_relu", layer="block2.conv")
        ea.attribute(data.x_test[:2])
        assert count_hooks(model) == 0  # nothing left behind
    """
    return sum(len(getattr(m, attr, {}) or {}) for m in model.modules() for attr in _MODULE_HOOK_DICTS)


@validated(args={"model": MODEL})
def model_state(model: nn.Module) -> Dict[str, Any]:
    """A snapshot of what every call of the package promises to restore.

    Example::

        from captum_concepts.testing import assert_same_state, model_state

        before = model_state(model)
        model(data.x_test[:4])
        assert_same_state(before, model)
    """
    return {
        "hooks": count_hooks(model),
        "training": {name: m.training for name, m in model.named_modules()},
        "requires_grad": {name: p.requires_grad for name, p in model.named_parameters()},
        "params": {name: p.detach().clone() for name, p in model.named_parameters()},
        "relu_inplace": {name: m.inplace for name, m in model.named_modules() if isinstance(m, nn.ReLU)},
    }


@validated(args={"before": InstanceOf((dict,), "a model_state() snapshot"), "model": MODEL})
def assert_same_state(before: Dict[str, Any], model: nn.Module) -> None:
    """Raise ``AssertionError`` if ``model`` differs from the snapshot ``before``.

    Example::

        from captum_concepts.attr import EmbeddingAttribution
        from captum_concepts.testing import assert_same_state, model_state

        before = model_state(model)
        EmbeddingAttribution(model, embedding_layer="embedding_relu").attribute(data.x_test[:2])
        assert_same_state(before, model)  # raises AssertionError naming what changed
    """
    after = model_state(model)
    assert after["hooks"] == before["hooks"], f"hooks left: {after['hooks']} vs {before['hooks']}"
    assert after["training"] == before["training"], "train/eval flags changed"
    assert after["requires_grad"] == before["requires_grad"], "requires_grad flags changed"
    assert after["relu_inplace"] == before["relu_inplace"], "ReLU.inplace changed"
    for name, value in before["params"].items():
        assert torch.equal(value, after["params"][name]), f"parameter {name} changed"


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
    rank: int,
    fn,
    world_size: int,
    port: int,
    args: tuple,
    backend: str,
    queue,
    threads: int,
    timeout_s: Optional[float],
) -> None:
    import os

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    if threads:
        torch.set_num_threads(threads)
    kwargs = {} if timeout_s is None else {"timeout": datetime.timedelta(seconds=timeout_s)}
    dist.init_process_group(backend, rank=rank, world_size=world_size, **kwargs)
    try:
        queue.put((rank, _numpy_tree(fn(*args))))
    finally:
        dist.destroy_process_group()


@validated(
    args={
        "fn": InstanceOf((Callable,), "a callable"),
        "world_size": Int(1),
        "args": InstanceOf((tuple, list), "a tuple of arguments"),
        "backend": InstanceOf((str,), "a torch.distributed backend name (str)"),
        "threads_per_rank": Int(0),
        "timeout_s": _SECONDS,
        "wall_timeout_s": _SECONDS,
    }
)
def run_local_ranks(
    fn,
    world_size: int = 2,
    args: tuple = (),
    backend: str = "gloo",
    threads_per_rank: int = 1,
    timeout_s: Optional[float] = None,
    wall_timeout_s: Optional[float] = None,
) -> List[Any]:
    """Run ``fn(*args)`` on ``world_size`` local processes joined in one process group.

    For tests, benchmarks and trying sharded code on one machine (``torchrun`` is
    the way to launch real jobs). ``fn`` must be importable (a module-level
    function); each rank binds ``127.0.0.1`` on a free port, sets
    ``threads_per_rank`` torch threads (0: leave as is), and returns
    ``fn``'s result, tensors converted to numpy arrays. Returns the results in
    rank order.

    ``timeout_s`` (default None: PyTorch's 30 minutes) is the process group's
    timeout: a collective that waits longer raises on its rank, so a hang fails a
    test quickly. ``wall_timeout_s`` (default None: no limit) bounds the whole run:
    past it the ranks are terminated and ``TimeoutError`` is raised.

    Example::

        from captum_concepts.distributed import get_world_size
        from captum_concepts.testing import run_local_ranks

        # one local gloo rank here; world_size=2 runs two and returns [2, 2]
        assert run_local_ranks(get_world_size, world_size=1) == [1]
    """
    import torch.multiprocessing as mp

    ctx = mp.get_context("spawn")
    queue = ctx.SimpleQueue()
    context = mp.start_processes(
        _spawned,
        args=(fn, world_size, _free_port(), tuple(args), backend, queue, threads_per_rank, timeout_s),
        nprocs=world_size,
        join=False,
        start_method="spawn",
    )
    deadline = None if wall_timeout_s is None else time.monotonic() + wall_timeout_s
    results = {}
    done = False
    while not done:  # drain while joining: a large result blocks its sender until read
        done = context.join(timeout=0.05)  # re-raises a worker's exception
        while not queue.empty():
            rank, value = queue.get()
            results[rank] = value
        if not done and deadline is not None and time.monotonic() > deadline:
            for process in context.processes:
                if process.is_alive():
                    process.terminate()
            raise TimeoutError(f"run_local_ranks: {world_size} ranks still running after {wall_timeout_s} s")
    return [results[r] for r in range(world_size)]
