"""Stream inputs through a model and collect pixel and layer blocks (private).

:func:`stream_layer_outputs` is the one loop that runs a model over batches and
captures layer outputs, for :class:`CoupledNMFConcepts` and :class:`SemanticVector`
alike: one :class:`~captum_concepts._utils.hooks.ModelGuard` per batch, so that
neither the guard nor ``torch.no_grad`` is held while the caller's code (or the
user's loader) runs between batches.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Any, Iterable, Iterator, List, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor, nn

from ..._utils.batches import Batch, iter_batches
from ..._utils.first_pass import first_forward
from ..._utils.hooks import ModelGuard
from ..._utils.layers import LayerSpec, layer_name, resolve_layers, uncompiled
from ..._utils.layout import apply_reshape, expand_per_layer, layout_hint
from ..._utils.validation import check_option
from ..._utils.warn import warn_user

__all__ = ["POOLS", "CollectedBlocks", "stream_layer_outputs", "pool_rows", "collect_blocks"]

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


def stream_layer_outputs(
    model: nn.Module,
    layers: Sequence[nn.Module],
    batches: Iterable[Batch],
    additional_forward_args: Any = None,
    device: Optional[torch.device] = None,
    arguments: Optional[Sequence[str]] = None,
    stop: bool = False,
    where: str = "fit",
) -> Iterator[Tuple[Batch, List[Tensor]]]:
    """For each batch yield ``(batch, [output of each layer])``, without autograd.

    Each layer must run exactly once per forward pass and output one tensor
    (a ``ValueError`` otherwise, the rule of every entry that reads a layer).
    ``stop=True`` (one layer only) ends the forward passes after the first at the
    layer's call: the first batch runs the whole model, so that a layer reused in
    ``forward`` is refused rather than read at its first use. The batch is moved to
    ``device`` (None: left where it is) before the forward pass; a PyTorch error in
    the first pass names the inputs and the fix
    (:func:`~captum_concepts._utils.first_pass.first_forward`, ``where`` names the
    entry). The returned outputs are safe from in-place operations later in the model.
    """
    if stop and len(layers) != 1:
        raise ValueError("stop=True needs exactly one layer")
    arguments = list(arguments) if arguments is not None else [f"layers[{j}]" for j in range(len(layers))]
    for i, batch in enumerate(batches):
        moved = batch.to(device)
        inputs = moved.inputs + tuple(moved.kwargs.values())
        check = first_forward(model, inputs, where) if i == 0 else contextlib.nullcontext()
        with ModelGuard(model, warn_train_mode=i == 0) as guard, torch.no_grad():
            captures = [guard.capture(m, a, stop=stop and i > 0) for m, a in zip(layers, arguments)]
            with check:
                guard.forward(moved.forward, model, additional_forward_args)
            outputs = [c.tensor() for c in captures]
        yield batch, outputs


def pool_rows(act: Tensor, pool: str) -> Tensor:
    """A layer output ``(N, C, *S)`` as the rows a fit reads: ``(N, C*S)`` flattened
    (``pool="none"``, or a layer without spatial dimensions), or ``(N, C)`` pooled per channel."""
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
        warn_user(f"layers: {name!r} is pooled per channel, but {hint}")


def collect_blocks(
    model: Optional[nn.Module],
    layers: Sequence[LayerSpec],
    inputs: InputsOrLoader,
    include_pixels: bool = True,
    pool: str = "none",
    batch_size: int = 256,
    device: Optional[torch.device] = None,
    dtype: torch.dtype = torch.float32,
    additional_forward_args: Any = None,
    has_labels: bool = False,
    reshape_transform: Any = None,
) -> CollectedBlocks:
    """One pass over ``inputs``: pixel channels and (pooled) layer outputs as blocks.

    ``inputs`` is a tensor, a tuple or dict of tensors, or an iterable of batches
    (:func:`~captum_concepts._utils.batches.iter_batches`); every input of a batch
    goes to the model (``model(*inputs, *additional_forward_args, **keyword_inputs)``),
    the labels of ``(inputs..., labels)`` batches (``has_labels=True``) do not.

    Pixel block ``i`` is channel ``i`` of every example's first input, flattened
    (``(H*W, N)``); activation block ``j`` is layer ``j``'s output, flattened or, with
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
    check_option(pool, "pool", POOLS)
    modules: List[nn.Module] = []
    names: List[str] = []
    if layers:
        if model is None:
            raise ValueError("layers were given but model is None; pass the model whose layers to read")
        model = uncompiled(model)
        transforms = expand_per_layer(reshape_transform, len(layers), "reshape_transform")
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
    batches: Iterable[Batch] = iter_batches(inputs, batch_size, "inputs", labels=has_labels)
    if modules:
        arguments = [f"layers[{j}]" for j in range(len(modules))]
        stream: Iterable[Tuple[Batch, List[Tensor]]] = stream_layer_outputs(
            model, modules, batches, additional_forward_args, device, arguments
        )
    else:
        stream = ((batch, []) for batch in batches)
    n_seen = 0
    for batch, acts in stream:
        first = batch.first
        if not out.input_shape:
            out.input_shape = tuple(first.shape[1:])
        elif tuple(first.shape[1:]) != out.input_shape:
            raise ValueError(
                f"inputs: every batch must have example shape {out.input_shape}, got {tuple(first.shape[1:])}"
            )
        if include_pixels and not pixel_views:
            channels = first.shape[1] if first.dim() > 2 else 1
            if not pixel_sinks:
                pixel_sinks = [_Sink(n_total) for _ in range(channels)]
            per_channel = first.reshape(first.shape[0], channels, -1)
            for i, sink in enumerate(pixel_sinks):
                sink.add(per_channel[:, i].to(device=device, dtype=dtype))
        for j, (sink, act) in enumerate(zip(layer_sinks, acts)):
            if act.dim() == 0 or act.shape[0] != batch.size:
                raise ValueError(
                    f"layers[{j}]={names[j]!r} changed the batch size: {batch.size} inputs, output of "
                    f"shape {tuple(act.shape)}"
                )
            if pool != "none" and transforms[j] is None and len(out.layer_shapes) <= j:
                _warn_layout(model, modules[j], names[j], act)
            act = apply_reshape(transforms[j], act, 1, f"layer {names[j]!r}")
            pooled = pool_rows(act, pool)
            if len(out.layer_shapes) <= j:
                out.layer_shapes.append(tuple(act.shape[1:]) if pool == "none" else (pooled.shape[1],))
            sink.add(pooled.to(device=device, dtype=dtype))
        n_seen += batch.size
    if n_seen == 0:
        raise ValueError("inputs yielded no examples")
    if pixel_views:
        flat = inputs.reshape(n_seen, inputs.shape[1] if inputs.dim() > 2 else 1, -1)
        out.pixel_blocks = [flat[:, i].t() for i in range(flat.shape[1])]
    else:
        out.pixel_blocks = [sink.finish().t() for sink in pixel_sinks]
    out.activation_blocks = [sink.finish().t() for sink in layer_sinks]
    return out
