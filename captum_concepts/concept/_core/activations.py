"""Stream inputs through a model and collect pixel and layer blocks (private).

Used by :class:`CoupledNMFConcepts`; every hook goes through
:class:`~captum_concepts._utils.hooks.ModelGuard`.
"""

from __future__ import annotations

import warnings
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Any, Iterable, Iterator, List, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor, nn

from ..._utils.hooks import ModelGuard
from ..._utils.layers import LayerSpec, layer_name, resolve_layers, uncompiled
from ..._utils.layout import apply_reshape, check_reshape_transforms, layout_hint

__all__ = ["POOLS", "CollectedBlocks", "iter_input_batches", "collect_blocks"]

POOLS = ("none", "mean", "max")
InputsOrLoader = Union[Tensor, Iterable[Any]]


@dataclass
class CollectedBlocks:
    """Blocks in the paper's orientation: ``(features, N)`` views of ``(N, features)`` storage."""

    pixel_blocks: List[Tensor] = field(default_factory=list)
    activation_blocks: List[Tensor] = field(default_factory=list)
    input_shape: Tuple[int, ...] = ()
    layer_names: List[str] = field(default_factory=list)
    layer_shapes: List[Tuple[int, ...]] = field(default_factory=list)


def _first_tensor(batch: Any, argument: str) -> Tensor:
    if isinstance(batch, Tensor):
        return batch
    if isinstance(batch, (tuple, list)) and batch and isinstance(batch[0], Tensor):
        return batch[0]
    raise TypeError(
        f"{argument} must be a tensor or an iterable (e.g. a DataLoader) of batches that are tensors "
        f"or tuples/lists whose first element is the input tensor; got a batch of type {type(batch).__name__}"
    )


def iter_input_batches(inputs: InputsOrLoader, batch_size: int, argument: str = "inputs") -> Iterator[Tensor]:
    """Yield input batches from a tensor (split in ``batch_size``) or from a loader.

    A loader batch may be a tensor or an ``(inputs, labels, ...)`` tuple/list;
    only the first element is used.
    """
    if isinstance(inputs, Tensor):
        if inputs.dim() < 2 or inputs.shape[0] == 0:
            raise ValueError(f"{argument} must have shape (N, ...) with N > 0, got {tuple(inputs.shape)}")
        yield from inputs.split(batch_size)
        return
    if isinstance(inputs, (str, bytes)) or not isinstance(inputs, Iterable):
        raise TypeError(
            f"{argument} must be a tensor (N, ...) or an iterable of batches such as a DataLoader, "
            f"got {type(inputs).__name__}"
        )
    for batch in inputs:
        yield _first_tensor(batch, argument)


def _pool(act: Tensor, pool: str) -> Tensor:
    if act.dim() <= 2 or pool == "none":
        return act.reshape(act.shape[0], -1)
    dims = tuple(range(2, act.dim()))
    return act.mean(dim=dims) if pool == "mean" else act.amax(dim=dims)


class _Sink:
    """Rows ``(N, features)`` for one block, preallocated when ``N`` is known."""

    def __init__(self, n_total: Optional[int]) -> None:
        self.n_total = n_total
        self.chunks: List[Tensor] = []
        self.buffer: Optional[Tensor] = None
        self.n = 0

    def add(self, rows: Tensor) -> None:
        if self.n_total is not None:
            if self.buffer is None:
                self.buffer = rows.new_empty((self.n_total, rows.shape[1]))
            self.buffer[self.n : self.n + rows.shape[0]] = rows
        else:
            self.chunks.append(rows)
        self.n += rows.shape[0]

    def finish(self) -> Tensor:
        if self.buffer is not None:
            return self.buffer
        out = torch.cat(self.chunks, dim=0)
        self.chunks = []
        return out


def _warn_layout(model: nn.Module, module: nn.Module, name: str, act: Tensor) -> None:
    hint = layout_hint(model, module, tuple(act.shape))
    if hint is not None:
        warnings.warn(f"layers: {name!r} is pooled per channel, but {hint}", UserWarning, stacklevel=4)


def collect_blocks(
    model: Optional[nn.Module],
    layers: Sequence[LayerSpec],
    inputs: InputsOrLoader,
    include_pixels: bool = True,
    pool: str = "none",
    batch_size: int = 256,
    device: Optional[torch.device] = None,
    dtype: torch.dtype = torch.float32,
    reshape_transform: Any = None,
) -> CollectedBlocks:
    """One pass over ``inputs``: pixel channels and (pooled) layer outputs as blocks.

    Pixel block ``i`` is channel ``i`` of every input, flattened (``(H*W, N)``);
    activation block ``j`` is layer ``j``'s output, flattened or, with
    ``pool="mean"|"max"``, pooled over its spatial dimensions per channel
    (``(C_j, N)``). Every returned block is the transpose view of an
    ``(N, features)`` tensor, so nothing is copied to get the paper's
    orientation.

    Memory: the blocks hold ``4 * N * (sum_i S_i + sum_j a_j)`` bytes in float32.
    When ``inputs`` is a tensor the storage is allocated once and filled batch
    by batch (and pixel blocks are views of ``inputs`` itself when it already
    has the right dtype and device). For a loader ``N`` is unknown in advance:
    batches are kept in a list and concatenated block by block, so the peak is
    the blocks plus the largest block.

    ``reshape_transform`` (None, a callable or a list aligned with ``layers``) brings each layer's
    output to ``(N, C, *S)`` before it is pooled (see ``captum_concepts.attr.channels_last``).
    """
    if pool not in POOLS:
        raise ValueError(f"pool must be one of {POOLS}, got {pool!r}")
    modules: List[nn.Module] = []
    names: List[str] = []
    if layers:
        if model is None:
            raise ValueError("layers were given but model is None; pass the model whose layers to read")
        model = uncompiled(model)
        transforms = check_reshape_transforms(reshape_transform, len(layers))
        modules = resolve_layers(model, list(layers), argument="layers")
        names = [layer_name(model, m) or f"layer{j}" for j, m in enumerate(modules)]
        if len({id(m) for m in modules}) != len(modules):
            raise ValueError(f"layers must be distinct modules, got {names}")
    n_total = inputs.shape[0] if isinstance(inputs, Tensor) else None
    if device is None:
        if model is not None and next(model.parameters(), None) is not None:
            device = next(model.parameters()).device
        elif isinstance(inputs, Tensor):
            device = inputs.device
        else:
            device = torch.device("cpu")
    device = torch.device(device)
    # pixel blocks straight from a tensor that already has the right dtype/device: views, no copy
    pixel_views = (
        include_pixels and isinstance(inputs, Tensor) and inputs.dtype == dtype and inputs.device == device
    )
    out = CollectedBlocks(layer_names=names)
    pixel_sinks: List[_Sink] = []
    layer_sinks = [_Sink(n_total) for _ in modules]
    captured: List[Optional[Tensor]] = [None] * len(modules)

    def make_hook(j: int):
        def hook(_module, _inp, output):
            if not isinstance(output, Tensor):
                raise TypeError(
                    f"layer {names[j]!r} returns {type(output).__name__}; CoupledNMFConcepts needs a "
                    "layer whose output is one tensor"
                )
            captured[j] = output.detach()

        return hook

    ctx = ModelGuard(model) if modules else nullcontext()
    n_seen = 0
    with torch.no_grad(), ctx as guard:
        for j, m in enumerate(modules):
            guard.register_forward_hook(m, make_hook(j))
        for batch in iter_input_batches(inputs, batch_size):
            if not out.input_shape:
                out.input_shape = tuple(batch.shape[1:])
            elif tuple(batch.shape[1:]) != out.input_shape:
                raise ValueError(
                    f"inputs: every batch must have example shape {out.input_shape}, "
                    f"got {tuple(batch.shape[1:])}"
                )
            if include_pixels and not pixel_views:
                channels = batch.shape[1] if batch.dim() > 2 else 1
                if not pixel_sinks:
                    pixel_sinks = [_Sink(n_total) for _ in range(channels)]
                per_channel = batch.reshape(batch.shape[0], channels, -1)
                for i, sink in enumerate(pixel_sinks):
                    sink.add(per_channel[:, i].to(device=device, dtype=dtype))
            if modules:
                model(batch.to(device))
                for j, sink in enumerate(layer_sinks):
                    act = captured[j]
                    if act is None or act.shape[0] != batch.shape[0]:
                        raise ValueError(
                            f"layer {names[j]!r} did not run on the batch (or changed its batch size)"
                        )
                    if pool != "none" and transforms[j] is None and len(out.layer_shapes) <= j:
                        _warn_layout(model, modules[j], names[j], act)
                    act = apply_reshape(transforms[j], act, 1, f"layer {names[j]!r}")
                    pooled = _pool(act, pool)
                    if len(out.layer_shapes) <= j:
                        out.layer_shapes.append(
                            tuple(act.shape[1:]) if pool == "none" else (pooled.shape[1],)
                        )
                    sink.add(pooled.to(device=device, dtype=dtype))
                    captured[j] = None
            n_seen += batch.shape[0]
    if n_seen == 0:
        raise ValueError("inputs yielded no examples")
    if pixel_views:
        flat = inputs.reshape(n_seen, inputs.shape[1] if inputs.dim() > 2 else 1, -1)
        out.pixel_blocks = [flat[:, i].t() for i in range(flat.shape[1])]
    else:
        out.pixel_blocks = [sink.finish().t() for sink in pixel_sinks]
    out.activation_blocks = [sink.finish().t() for sink in layer_sinks]
    return out
