"""Resolve layers given as modules or as dotted names, in one place.

Captum accepts modules for attribution methods and strings for TCAV only
(Captum #918); every captum_concepts class accepts both, through
:func:`resolve_layer`. A model compiled by ``torch.compile`` is explained through its
original module (:func:`uncompiled`), so its layer names need no ``_orig_mod.``
prefix (the prefixed names are accepted as well).
"""

from __future__ import annotations

import difflib
from typing import List, Optional, Sequence, Union

from torch import nn

from .warn import warn_user

__all__ = ["LayerSpec", "resolve_layer", "resolve_layers", "layer_name", "uncompiled"]

LayerSpec = Union[str, nn.Module]

_COMPILED_PREFIX = "_orig_mod."


def _original_module(model: nn.Module) -> Optional[nn.Module]:
    """The module a ``torch.compile`` wrapper (``OptimizedModule``) runs, else None."""
    orig = getattr(model, "_orig_mod", None)
    if isinstance(orig, nn.Module) and type(model).__name__ == "OptimizedModule":
        return orig
    return None


def uncompiled(model: nn.Module, warn: bool = True) -> nn.Module:
    """``model`` itself, or the original module of a model compiled by ``torch.compile`` (with a warning).

    Hooks on submodules, per-dimension backward passes and ``is_grads_batched`` do not go
    through dynamo's graph capture, so a compiled model is explained by running its original
    module eagerly: the same parameters and the same function, without the compilation.
    """
    orig = _original_module(model)
    if orig is None:
        return model
    if warn:
        warn_user(
            "model is a torch.compile()d module; captum_concepts explains its original module "
            "(model._orig_mod) eagerly, with the same parameters: hooks and per-dimension gradients "
            "do not run through the compiled graph. Layer names need no '_orig_mod.' prefix."
        )
    return orig


def resolve_layer(model: nn.Module, layer: LayerSpec, argument: str = "layer") -> nn.Module:
    """Return the submodule of ``model`` that ``layer`` names.

    Args:
        model (nn.Module): the model that contains the layer.
        layer (str or nn.Module): a dotted name as in ``model.named_modules()``
            (``"layer4.1.conv2"``, ``"features.3"``) or a module of ``model``.
        argument (str): the argument name used in error messages.

    Returns:
        nn.Module: the layer.

    Raises:
        ValueError: the name does not exist (the message lists close names) or
            the module is not part of ``model``.
        TypeError: ``layer`` is neither a string nor a module.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    model = uncompiled(model, warn=False)
    if isinstance(layer, str):
        if layer.startswith(_COMPILED_PREFIX) and layer not in dict(model.named_modules()):
            layer = layer[len(_COMPILED_PREFIX) :]
        if layer == "":
            return model
        modules = dict(model.named_modules())
        if layer in modules:
            return modules[layer]
        names = [name for name in modules if name]
        close = difflib.get_close_matches(layer, names, n=5, cutoff=0.5)
        hint = f" Did you mean: {', '.join(repr(c) for c in close)}?" if close else ""
        shown = ", ".join(repr(n) for n in names[:30]) + (", ..." if len(names) > 30 else "")
        raise ValueError(
            f"{argument}={layer!r} is not a submodule of {type(model).__name__}.{hint} "
            f"Available names: {shown}"
        )
    if isinstance(layer, nn.Module):
        if layer is model or any(m is layer for m in model.modules()):
            return layer
        raise ValueError(
            f"{argument} is a {type(layer).__name__} module that is not part of "
            f"{type(model).__name__}; pass one of model.named_modules() or its name"
        )
    raise TypeError(
        f"{argument} must be a module of the model or its dotted name (str), got {type(layer).__name__}"
    )


def resolve_layers(
    model: nn.Module, layers: Union[LayerSpec, Sequence[LayerSpec]], argument: str = "layers"
) -> List[nn.Module]:
    """:func:`resolve_layer` for one layer or a sequence of them; always returns a list."""
    if isinstance(layers, (str, nn.Module)):
        layers = [layers]
    if not isinstance(layers, Sequence):
        raise TypeError(f"{argument} must be a layer or a sequence of layers, got {type(layers)}")
    return [resolve_layer(model, lay, argument=f"{argument}[{i}]") for i, lay in enumerate(layers)]


def layer_name(model: nn.Module, layer: nn.Module) -> Optional[str]:
    """The dotted name of ``layer`` inside ``model`` (``""`` for the model itself)."""
    for name, module in uncompiled(model, warn=False).named_modules():
        if module is layer:
            return name
    return None
