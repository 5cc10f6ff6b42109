"""Layer layouts, in one place: bring a layer's output to ``(N, C, *S)`` (pytorch-grad-cam's
``reshape_transform``), expand "one value or one per layer", apply every transform with its
output checked, and spot channels-last layers.

Every class that reads a layer's output spatially (``EmbeddingAttribution``, the score curves,
``CoupledNMFConcepts(pool=...)``, ``SimilarityAttribution``) takes its channels from dimension 1
and its spatial positions from the dimensions after it. Layers of other layouts -- the tokens of
a vision transformer ``(N, 1 + T, C)``, the channels-last stages of Swin ``(N, H, W, C)``, a text
model's token embeddings ``(N, L, E)`` -- need a ``reshape_transform``: a callable that takes the
layer's output ``(N, ...)`` and returns ``(N, C, *S)``, the convention of pytorch-grad-cam
(Gildenblat et al.), so that transforms written for it work unchanged. It is applied to the
activations and to the gradients alike (gradients are taken w.r.t. the raw layer output, then
transformed).

:func:`tokens_to_grid` and :func:`channels_last` cover the common cases (public, re-exported by
:mod:`captum_concepts.attr`). The rest is private plumbing used by every caller:

- :func:`expand_per_layer`: ``None``, one callable, or a list aligned with the layers -> one entry
  per layer (the one place where "one callable or a list" is read);
- :func:`apply_reshape`: the one place a transform is applied, with its output checked;
  :func:`layer_transforms` binds each layer's transform to the layer's name, so that the bound
  callable can be handed to code that calls it directly (forward mode's ``vjp``, shape probes)
  and is still checked;
- :func:`layout_hint`: a warning text for layers whose output is recognisably channels-last.
"""

from __future__ import annotations

import math
from typing import Any, Callable, List, Optional, Sequence, Tuple, Union

import torch
from torch import nn

from .layers import layer_name
from .validation import InvalidParameterError, check_int

__all__ = [
    "ReshapeTransform",
    "tokens_to_grid",
    "channels_last",
    "expand_per_layer",
    "apply_reshape",
    "CheckedTransform",
    "layer_transforms",
    "layout_hint",
]

ReshapeTransform = Callable[[torch.Tensor], torch.Tensor]
TransformSpec = Union[None, ReshapeTransform, Sequence[Optional[ReshapeTransform]]]


# ---------------------------------------------------------------------- the public transforms
class tokens_to_grid:  # noqa: N801 - used like a function, as pytorch-grad-cam's transforms
    """A ``reshape_transform`` for token layers: ``(N, k + T, C)`` -> ``(N, C, h, w)``.

    Drops the first ``prefix_tokens`` tokens (``k``; ViT's class token: 1, DeiT's class and
    distillation tokens: 2, a ViT with registers: ``1 + registers``) and lays the ``T`` remaining
    patch tokens out on their ``h x w`` grid in row-major order, as torchvision's ViT creates them
    (``conv_proj`` then ``flatten(2).transpose(1, 2)``).

    Args:
        prefix_tokens (int): tokens before the patch tokens. Default: 1.
        grid_size (int or (int, int), optional): ``h`` (square) or ``(h, w)``. Default None:
            inferred as ``h = w = sqrt(T)``; a ``T`` that is not a square raises ``ValueError``
            asking for ``grid_size``.

    Example::

        from captum_concepts.attr import tokens_to_grid

        to_grid = tokens_to_grid(prefix_tokens=1)  # ViT: a class token, then 4 x 4 patch tokens
        assert to_grid(torch.zeros(2, 1 + 16, 768)).shape == (2, 768, 4, 4)
        # with a torchvision ViT:
        # EmbeddingAttribution(vit, embedding_layer="encoder.ln",
        #                      layer="encoder.layers.encoder_layer_5", reshape_transform=to_grid)
    """

    def __init__(self, prefix_tokens: int = 1, grid_size: Union[None, int, Sequence[int]] = None) -> None:
        self.prefix_tokens = check_int(prefix_tokens, "prefix_tokens", low=0)
        self.grid_size: Optional[Tuple[int, int]] = None
        if grid_size is None:
            return
        if isinstance(grid_size, (list, tuple)) and len(grid_size) == 2:
            h, w = (check_int(g, f"grid_size[{i}]", low=1) for i, g in enumerate(grid_size))
        elif isinstance(grid_size, (list, tuple)):
            raise InvalidParameterError(
                f"grid_size must be a positive int or a pair (h, w) of them, got {len(grid_size)} entries"
            )
        else:
            h = w = check_int(grid_size, "grid_size", low=1)
        self.grid_size = (h, w)

    def __repr__(self) -> str:
        return f"tokens_to_grid(prefix_tokens={self.prefix_tokens}, grid_size={self.grid_size})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, tokens_to_grid) and (
            (self.prefix_tokens, self.grid_size) == (other.prefix_tokens, other.grid_size)
        )

    def __hash__(self) -> int:
        return hash((tokens_to_grid, self.prefix_tokens, self.grid_size))

    def __call__(self, t: torch.Tensor) -> torch.Tensor:
        if t.dim() != 3:
            raise ValueError(
                f"tokens_to_grid expects token layer outputs (N, {self.prefix_tokens} + T, C), got shape "
                f"{tuple(t.shape)}"
            )
        n_tokens = t.shape[1] - self.prefix_tokens
        if n_tokens < 1:
            raise ValueError(
                f"tokens_to_grid(prefix_tokens={self.prefix_tokens}) leaves no patch tokens in an output of "
                f"shape {tuple(t.shape)}"
            )
        if self.grid_size is None:
            h = math.isqrt(n_tokens)
            if h * h != n_tokens:
                raise ValueError(
                    f"tokens_to_grid: {n_tokens} patch tokens (shape {tuple(t.shape)} minus "
                    f"{self.prefix_tokens} prefix tokens) do not form a square grid; pass "
                    "grid_size=(h, w) or the right prefix_tokens"
                )
            h = w = h
        else:
            h, w = self.grid_size
            if h * w != n_tokens:
                raise ValueError(
                    f"tokens_to_grid: grid_size={self.grid_size} holds {h * w} tokens, the layer output "
                    f"{tuple(t.shape)} has {n_tokens} after {self.prefix_tokens} prefix tokens"
                )
        patches = t[:, self.prefix_tokens :]
        return patches.reshape(t.shape[0], h, w, t.shape[2]).permute(0, 3, 1, 2)


def channels_last(t: torch.Tensor) -> torch.Tensor:
    """A ``reshape_transform`` for channels-last layers: ``(N, *S, C)`` -> ``(N, C, *S)``.

    ``(N, H, W, C)`` -> ``(N, C, H, W)`` (Swin stages, ConvNeXt's inner ``LayerNorm`` /
    ``Linear``) and ``(N, L, C)`` -> ``(N, C, L)`` (a text model's token embeddings or encoder
    outputs: the maps are then one value per token, ``(N, L)``).

    Example::

        from captum_concepts.attr import EmbeddingAttribution, channels_last

        # a Swin / ConvNeXt stage writes (N, H, W, C); the maps need (N, C, H, W)
        assert channels_last(torch.zeros(2, 7, 7, 96)).shape == (2, 96, 7, 7)
        ea = EmbeddingAttribution(model, embedding_layer="embedding_relu", layer="block2.conv",
                                  reshape_transform=None)  # a CNN layer needs none
    """
    if not isinstance(t, torch.Tensor) or t.dim() < 3:
        shape = tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__
        raise ValueError(
            f"channels_last expects a channels-last layer output (N, *S, C) with at least one spatial "
            f"dimension, got {shape}"
        )
    return t.movedim(-1, 1)


# ---------------------------------------------------------------------- one entry per layer
def _is_transform(value: Any) -> bool:
    return value is None or callable(value)


def expand_per_layer(
    value: Any,
    n: int,
    name: str,
    per: str = "layer",
    single: Callable[[Any], bool] = _is_transform,
    expected: str = "None or a callable (N, ...) -> (N, C, *S)",
) -> List[Any]:
    """``value`` as a list of ``n`` entries, one per layer (or per ``per``: ``"tower"``, ...).

    A single entry (``single(value)``; by default None or a callable) is used for every layer; a
    list or tuple must hold exactly ``n`` entries, each a single entry. This is the one reading of
    "one value or a list aligned with the layers" in the package.

    Args:
        value: one entry or a list/tuple of ``n`` of them.
        n (int): the number of layers.
        name (str): the argument, named in errors.
        per (str): what the list is aligned with, named in errors. Default ``"layer"``.
        single (callable): whether a value is one entry. Default: None or a callable.
        expected (str): what one entry is, for errors.

    Returns:
        list: ``n`` entries.

    Raises:
        ValueError: a list of the wrong length.
        TypeError: an entry (or ``value``) that is neither a single entry nor a list of them.
    """
    if single(value):
        return [value] * n
    if isinstance(value, (list, tuple)):
        if len(value) != n:
            raise ValueError(f"{name} is a list of {len(value)} entries, expected one per {per} ({n})")
        for i, entry in enumerate(value):
            if not single(entry):
                raise TypeError(f"{name}[{i}] must be {expected}, got {type(entry).__name__}")
        return list(value)
    raise TypeError(
        f"{name} must be {expected}, or a list of them aligned with the {per}s, got {type(value).__name__}"
    )


# ---------------------------------------------------------------------- applying a transform
def apply_reshape(
    fn: Optional[ReshapeTransform], t: torch.Tensor, lead: int = 1, what: Optional[str] = None
) -> torch.Tensor:
    """``fn(t)``, checked: the one place a ``reshape_transform`` is applied.

    The first ``lead`` dimensions of ``t`` are batch dimensions (e.g. ``(B, N, ...)`` gradients of
    ``B`` embedding dimensions): they are merged into one for the call and split again after it.
    ``fn`` may be a :class:`CheckedTransform` (it is unwrapped, its layer name used in errors).

    Args:
        fn (callable or None): the transform; None returns ``t`` unchanged.
        t (Tensor): ``(*lead_dims, ...)``.
        lead (int): how many leading batch dimensions ``t`` has. Default 1.
        what (str, optional): the layer, for errors (default: the name bound to ``fn``, else
            ``"the layer"``).

    Returns:
        Tensor: ``(*lead_dims, C, *S)``.

    Raises:
        ValueError: ``fn`` did not return a tensor of at least two dimensions with the batch size
            of its input.
    """
    if isinstance(fn, CheckedTransform):
        what = fn.what if what is None else what
        fn = fn.fn
    if fn is None:
        return t
    what = "the layer" if what is None else what
    lead_shape = t.shape[:lead]
    m = math.prod(lead_shape)
    out = fn(t.reshape(m, *t.shape[lead:]))
    if not isinstance(out, torch.Tensor) or out.dim() < 2 or out.shape[0] != m:
        got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise ValueError(
            f"reshape_transform of {what} must return a tensor (N, C, *S) with the batch size N = {m} of "
            f"its input {tuple(t.shape[lead - 1 :])}; got {got}"
        )
    return out.reshape(*lead_shape, *out.shape[1:])


class CheckedTransform:
    """A ``reshape_transform`` bound to its layer's name: calling it is :func:`apply_reshape`.

    Code that calls a transform directly (``torch.func.vjp(transform, raw)``, shape probes) gets
    the same output check and error message as every other path.
    """

    def __init__(self, fn: ReshapeTransform, what: str) -> None:
        self.fn = fn.fn if isinstance(fn, CheckedTransform) else fn  # bound once, whoever binds again
        self.what = what

    def __call__(self, t: torch.Tensor) -> torch.Tensor:
        return apply_reshape(self.fn, t, 1, self.what)

    def __repr__(self) -> str:
        return f"CheckedTransform({self.fn!r}, {self.what!r})"


def layer_transforms(
    model: nn.Module,
    layers: Sequence[Optional[nn.Module]],
    reshape_transform: TransformSpec,
    name: str = "reshape_transform",
) -> List[Optional[CheckedTransform]]:
    """One checked transform per entry of ``layers`` (None for an input source, ``layer=None``).

    ``reshape_transform`` is read by :func:`expand_per_layer`; each transform is bound to its
    layer's dotted name in ``model`` for errors.
    """
    fns = expand_per_layer(reshape_transform, len(layers), name)
    return [
        None if lay is None or fn is None else CheckedTransform(fn, f"layer {layer_name(model, lay)!r}")
        for lay, fn in zip(layers, fns)
    ]


# ---------------------------------------------------------------------- channels-last layers
_SKIPPED = (nn.Dropout, nn.Identity)


def _last_leaf(module: nn.Module) -> Optional[nn.Module]:
    leaves = [m for m in module.modules() if not list(m.children()) and not isinstance(m, _SKIPPED)]
    return leaves[-1] if leaves else None


def _leaf_before(model: nn.Module, layer: nn.Module) -> Optional[nn.Module]:
    inside = {id(m) for m in layer.modules()}
    previous = None
    for m in model.modules():
        if m is layer:
            return previous
        if not list(m.children()) and not isinstance(m, _SKIPPED) and id(m) not in inside:
            previous = m
    return None


def _is_channels_last_module(m: nn.Module, shape: Tuple[int, ...]) -> bool:
    """True when ``m`` (just before, or at the end of, a layer whose output has ``shape``) is known to
    produce a channels-last tensor of that shape."""
    if len(shape) < 3:
        return False
    last = shape[-1]
    if isinstance(m, nn.Embedding):
        return m.embedding_dim == last
    if isinstance(m, nn.LayerNorm):
        # ConvNeXt's LayerNorm2d normalises dim 1: its normalized_shape matches shape[1], not shape[-1]
        return tuple(m.normalized_shape) == (last,) and shape[1] != last
    if isinstance(m, nn.Linear):
        return m.out_features == last and shape[1] != last
    if type(m).__name__ == "Permute":  # torchvision.ops.misc.Permute, e.g. [0, 2, 3, 1]
        dims = list(getattr(m, "dims", []))
        return len(dims) == len(shape) and dims[1] != 1 and dims[-1] == 1
    return False


def layout_hint(model: nn.Module, layer: nn.Module, shape: Tuple[int, ...]) -> Optional[str]:
    """A warning text when ``layer``'s output (of ``shape``) is recognisably not ``(N, C, *S)``."""
    candidates = [layer, _last_leaf(layer), _leaf_before(model, layer)]
    if not any(m is not None and _is_channels_last_module(m, shape) for m in candidates):
        return None
    if len(shape) == 3 and isinstance(layer, nn.Embedding):
        fix = "pass reshape_transform=channels_last for one value per token, maps (N, L)"
    elif len(shape) == 3:
        fix = (
            "pass reshape_transform=tokens_to_grid(prefix_tokens=k) for vision-transformer tokens "
            "(k = 1 for ViT's class token) or reshape_transform=channels_last for one value per token"
        )
    else:
        fix = "pass reshape_transform=channels_last"
    return (
        f"the output {tuple(shape)} looks channels-last (tokens or (N, H, W, C)), but it is read as "
        f"(N, C, *S) with C = {shape[1]}; {fix} (captum_concepts.attr)"
    )
