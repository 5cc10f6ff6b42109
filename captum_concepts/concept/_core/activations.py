"""Stream inputs through a model and collect pixel and layer blocks (private).

:func:`stream_layer_outputs` is the one loop that runs a model over batches and
captures layer outputs, for :class:`CoupledNMFConcepts` and :class:`SemanticVector`
alike: one :class:`~captum_concepts._utils.hooks.ModelGuard` per batch, so that
neither the guard nor ``torch.no_grad`` is held while the caller's code (or the
user's loader) runs between batches. A coupled-NMF fit resolves what it reads once
(:func:`resolve_blocks`) and makes one pass over the batches (:func:`stream_blocks`), into memory
(:func:`collect_blocks`) or to disk (:func:`~.out_of_core.collect_to_store`).
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
from ..._utils.layout import apply_reshape, layout_hint
from ..._utils.warn import warn_user

__all__ = [
    "POOLS",
    "BlockSpec",
    "CollectedBlocks",
    "collect_blocks",
    "pick_device",
    "pool_rows",
    "resolve_blocks",
    "stream_blocks",
    "stream_layer_outputs",
]

POOLS = ("none", "mean", "max")
InputsOrLoader = Union[Tensor, Iterable[Any]]


@dataclass
class CollectedBlocks:
    """Blocks in the paper's orientation: ``(features, N)`` views of ``(N, features)`` storage."""

    pixel_blocks: List[Tensor] = field(default_factory=list)
    activation_blocks: List[Tensor] = field(default_factory=list)
    input_shape: Optional[Tuple[int, ...]] = ()
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


@dataclass(frozen=True)
class BlockSpec:
    """What a coupled-NMF fit reads from its inputs, resolved once (:func:`resolve_blocks`): the
    ``modules`` of ``model`` (uncompiled), their ``names`` and ``transforms``; rows are read on
    ``device`` (inputs are moved there) in ``dtype``, ``batch_size`` examples at a time."""

    model: Optional[nn.Module]
    modules: Tuple[nn.Module, ...]
    names: Tuple[str, ...]
    transforms: Tuple[Any, ...]
    include_pixels: bool
    pool: str
    batch_size: int
    device: torch.device
    dtype: torch.dtype


def pick_device(device: Any, *sources: Any) -> torch.device:
    """``device``; if None, that of the first tensor among ``sources``, else the CPU."""
    if device is None:
        device = next((t.device for t in sources if isinstance(t, Tensor)), "cpu")
    return torch.device(device)


def resolve_blocks(
    model: Optional[nn.Module],
    layers: Sequence[LayerSpec],
    transforms: Optional[Sequence[Any]] = None,
    include_pixels: bool = True,
    pool: str = "none",
    batch_size: int = 256,
    device: Optional[torch.device] = None,
    dtype: torch.dtype = torch.float32,
    inputs: Any = None,
) -> BlockSpec:
    """The rules that tie the layers to the model and the data, applied once, before any data is read.

    ``transforms``: one reshape transform (or None) per layer (None: none at all). ``device``
    None: the model's, else that of ``inputs`` when it is a tensor, else the CPU.

    Raises:
        ValueError: nothing to read (no pixels, no layers), layers without a model, or layers
            that are not distinct modules of ``model``.
    """
    if not include_pixels and not layers:
        raise ValueError("nothing to factorise: include_pixels=False and no layers")
    modules: Tuple[nn.Module, ...] = ()
    names: Tuple[str, ...] = ()
    if layers:
        if model is None:
            raise ValueError("layers were given but model is None; pass the model whose layers to read")
        model = uncompiled(model)
        modules = tuple(resolve_layers(model, list(layers), argument="layers"))
        names = tuple(layer_name(model, m) or f"layer{j}" for j, m in enumerate(modules))
        if len({id(m) for m in modules}) != len(modules):
            raise ValueError(f"layers must be distinct modules, got {list(names)}")
    device = pick_device(device, next(model.parameters(), None) if model is not None else None, inputs)
    transforms = tuple(transforms or (None,) * len(modules))
    return BlockSpec(model, modules, names, transforms, include_pixels, pool, int(batch_size), device, dtype)


def stream_blocks(
    spec: BlockSpec,
    inputs: InputsOrLoader,
    out: CollectedBlocks,
    additional_forward_args: Any = None,
    has_labels: bool = False,
    pixels: bool = True,
) -> Iterator[Tuple[Batch, List[Tensor]]]:
    """The one pass over ``inputs``: for each batch, the rows ``(B, r_b)`` of every block on
    ``spec.device`` in ``spec.dtype``: the first input's channels (unless ``pixels`` is False),
    then each layer's output brought to ``(B, C, *S)`` by its transform, flattened or pooled per
    channel (:func:`pool_rows`). ``out.input_shape`` and ``out.layer_shapes`` are set at the first
    batch. ``inputs``: a tensor, a tuple or dict of tensors, or an iterable of batches
    (:func:`~captum_concepts._utils.batches.iter_batches`), all sent to the model
    (``model(*inputs, *additional_forward_args, **keyword_inputs)``) but the labels of
    ``(inputs..., labels)`` batches with ``has_labels``.

    Raises:
        ValueError: batches of different example shapes, a layer that changes the batch size,
            or no examples at all.
    """
    batches: Iterable[Batch] = iter_batches(inputs, spec.batch_size, "inputs", labels=has_labels)
    if spec.modules:
        stream: Iterable[Tuple[Batch, List[Tensor]]] = stream_layer_outputs(
            spec.model, spec.modules, batches, additional_forward_args, spec.device
        )
    else:
        stream = ((batch, []) for batch in batches)
    n_seen = 0
    for i, (batch, acts) in enumerate(stream):
        first, to = batch.first, {"device": spec.device, "dtype": spec.dtype}
        if i == 0:
            out.input_shape = tuple(first.shape[1:])
        elif tuple(first.shape[1:]) != out.input_shape:
            raise ValueError(
                f"inputs: every batch must have example shape {out.input_shape}, got {tuple(first.shape[1:])}"
            )
        rows: List[Tensor] = []
        if spec.include_pixels and pixels:
            per_channel = first.reshape(first.shape[0], first.shape[1] if first.dim() > 2 else 1, -1)
            rows += [per_channel[:, c].to(**to) for c in range(per_channel.shape[1])]
        for j, (module, name, transform, act) in enumerate(
            zip(spec.modules, spec.names, spec.transforms, acts)
        ):
            if act.dim() == 0 or act.shape[0] != batch.size:
                raise ValueError(
                    f"layers[{j}]={name!r} changed the batch size: {batch.size} inputs, output of "
                    f"shape {tuple(act.shape)}"
                )
            if spec.pool != "none" and transform is None and i == 0:
                hint = layout_hint(spec.model, module, tuple(act.shape))
                if hint is not None:
                    warn_user(f"layers: {name!r} is pooled per channel, but {hint}")
            act = apply_reshape(transform, act, 1, f"layer {name!r}")
            pooled = pool_rows(act, spec.pool)
            if i == 0:
                out.layer_shapes.append(tuple(act.shape[1:]) if spec.pool == "none" else (pooled.shape[1],))
            rows.append(pooled.to(**to))
        n_seen += batch.size
        yield batch, rows
    if n_seen == 0:
        raise ValueError("inputs yielded no examples")


def collect_blocks(
    spec: BlockSpec, inputs: InputsOrLoader, additional_forward_args: Any = None, has_labels: bool = False
) -> CollectedBlocks:
    """The blocks of :func:`stream_blocks`, pixel block ``i`` ``(H*W, N)`` then activation block
    ``j`` ``(a_j, N)``, each the transpose view of ``(N, features)`` storage (no copy).

    Memory: the blocks hold ``4 * N * (sum_i S_i + sum_j a_j)`` bytes in float32. When ``inputs``
    is a tensor the storage is allocated once and filled batch by batch (and pixel blocks are
    views of ``inputs`` itself when it already has the right dtype and device). For a loader ``N``
    is unknown in advance: batches are kept in a list and concatenated block by block, so the
    peak is the blocks plus the largest block.
    """
    n_total = inputs.shape[0] if isinstance(inputs, Tensor) else None
    # pixel blocks straight from a tensor that already has the right dtype/device: views, no copy
    as_read = n_total is not None and (inputs.dtype, inputs.device) == (spec.dtype, spec.device)
    pixel_views = spec.include_pixels and as_read
    out = CollectedBlocks(layer_names=list(spec.names))
    parts: List[List[Tensor]] = []  # per block: one buffer of N rows, or a loader's batches
    n = 0
    for batch, rows in stream_blocks(spec, inputs, out, additional_forward_args, has_labels, not pixel_views):
        if n_total is None:
            parts = parts or [[] for _ in rows]
            for part, x in zip(parts, rows):
                part.append(x)
        else:
            parts = parts or [[x.new_empty((n_total, x.shape[1]))] for x in rows]
            for (buffer,), x in zip(parts, rows):
                buffer[n : n + batch.size] = x
        n += batch.size
    blocks = []
    while parts:  # a block's batches are released once it is joined
        part = parts.pop(0)
        blocks.append((part[0] if len(part) == 1 else torch.cat(part)).t())
    n_pixel = len(blocks) - len(spec.modules)
    if pixel_views:
        flat = inputs.reshape(n_total, inputs.shape[1] if inputs.dim() > 2 else 1, -1)
        out.pixel_blocks = [flat[:, i].t() for i in range(flat.shape[1])]
    else:
        out.pixel_blocks = blocks[:n_pixel]
    out.activation_blocks = blocks[n_pixel:]
    return out
