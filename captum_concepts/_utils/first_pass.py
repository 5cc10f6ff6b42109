"""The first forward pass of an entry, with shape, dtype and device mistakes explained (private).

Names and parameters are checked before any forward pass (:mod:`.validation`), but whether the
inputs fit the model is only known when the model runs: images without a batch or channel axis,
RGB into a one-channel model, ``uint8`` images, ``float64`` inputs or a ``float64`` model, a
model on another device than the inputs. PyTorch reports these many frames deep in its own
words. :func:`first_forward` wraps the first forward pass of every entry that runs the model
(:class:`~captum_concepts.attr.EmbeddingAttribution`, the estimators' streaming loop, the
semantic saliency methods): a ``RuntimeError`` raised by PyTorch's own code there (a layer's
``forward``, a functional) is re-raised as a :class:`ForwardPassError` that names the inputs'
shape, dtype and device, what the model's first layer expects where it can be read, and the
likely fix, chained to the original error and quoting its first line. Errors raised by the
user's code or by this package (they already speak its words) and out-of-memory errors pass
through unchanged.
"""

from __future__ import annotations

import contextlib
import math
import os
from typing import Any, Iterator, List, Optional, Sequence, Tuple

import torch
from torch import nn

__all__ = ["ForwardPassError", "first_forward", "describe_inputs", "first_layer", "integer_input_hint"]

_TORCH_DIR = os.path.dirname(os.path.abspath(torch.__file__)) + os.sep


class ForwardPassError(ValueError, RuntimeError):
    """The model's first forward pass failed on the inputs given: a shape, dtype or device
    mistake. A ``ValueError`` (bad input) and, like the PyTorch error it chains, a
    ``RuntimeError``."""


def first_layer(model: nn.Module) -> Optional[Tuple[str, nn.Module]]:
    """The first convolution, linear layer or embedding lookup registered in ``model`` (usually
    the first one the inputs meet), with its name; None if there is none."""
    for name, module in model.named_modules():
        if isinstance(module, (nn.modules.conv._ConvNd, nn.Linear, nn.Embedding)):
            return name, module
    return None


def _parameter(model: nn.Module, layer: Optional[nn.Module]) -> Optional[torch.Tensor]:
    for source in (layer, model):
        if source is not None:
            param = next(source.parameters(), None)
            if param is not None:
                return param
    return None


def describe_inputs(inputs: Sequence[torch.Tensor], argument: str = "inputs") -> List[str]:
    """One line per input tensor: its shape, dtype and device."""
    return [
        f"{argument}[{i}]: shape {tuple(t.shape)}, dtype {t.dtype}, device {t.device}"
        for i, t in enumerate(inputs)
        if isinstance(t, torch.Tensor)
    ]


def _expectation(name: str, layer: nn.Module) -> str:
    label = f"{name!r} ({type(layer).__name__})" if name else type(layer).__name__
    if isinstance(layer, nn.modules.conv._ConvNd):
        spatial = ", ".join(["L"] if len(layer.kernel_size) == 1 else "HWD"[: len(layer.kernel_size)])
        return f"first layer {label} expects (N, {layer.in_channels}, {spatial}) inputs"
    if isinstance(layer, nn.Linear):
        return f"first layer {label} expects (N, ..., {layer.in_features}) inputs"
    return f"first layer {label} expects integer token ids (N, L) below {layer.num_embeddings}"


def integer_input_hint(dtype: torch.dtype) -> str:
    """The fix for integer inputs to a model that needs floating-point ones."""
    if dtype == torch.uint8:
        return "images stored as uint8 (0..255): pass x.float() / 255 (then the model's normalisation)"
    return "pass floating-point inputs: x.float()"


def _shape_fixes(x: torch.Tensor, layer: nn.Module) -> List[str]:
    if isinstance(layer, nn.modules.conv._ConvNd):
        k, c = len(layer.kernel_size), layer.in_channels
        if x.dim() == k:
            return [f"one example without batch and channel axes: x.unsqueeze(0).unsqueeze(0) (C = {c})"]
        if x.dim() == k + 1:
            if x.shape[0] == c:
                return ["one example without a batch axis: x.unsqueeze(0)"]
            if c == 1:
                return ["a batch without a channel axis: x.unsqueeze(1)"]
            return [f"inputs need a channel axis of {c}: (N, {c}, *S)"]
        if x.dim() == k + 2 and x.shape[1] != c:
            if x.shape[-1] == c:
                return ["channels-last images: x.movedim(-1, 1) (to (N, C, *S))"]
            if c == 1 and x.shape[1] == 3:
                return ["RGB images into a one-channel model: x.mean(1, keepdim=True) (grey), or a model "
                        "with in_channels=3"]  # fmt: skip
            if c == 3 and x.shape[1] == 1:
                return ["grey images into an RGB model: x.expand(-1, 3, *x.shape[2:])"]
            return [f"the model expects {c} input channels, the inputs have {x.shape[1]}"]
    if isinstance(layer, nn.Linear) and x.dim() >= 1 and x.shape[-1] != layer.in_features:
        if x.dim() > 2 and math.prod(x.shape[1:]) == layer.in_features:
            return ["flatten each example: x.flatten(1)"]
        return [f"the model expects {layer.in_features} features per example, the inputs have {x.shape[-1]}"]
    return []


def _fixes(
    inputs: Sequence[torch.Tensor], layer: Optional[nn.Module], param: Optional[torch.Tensor]
) -> List[str]:
    tensors = [t for t in inputs if isinstance(t, torch.Tensor)]
    fixes: List[str] = []
    if param is not None:
        elsewhere = [t for t in tensors if t.device != param.device]
        if elsewhere:
            fixes.append(
                f"inputs on {elsewhere[0].device}, model on {param.device}: move the inputs, "
                f"x.to({str(param.device)!r}), or the model, model.to(x.device)"
            )
    if not tensors:
        return fixes
    x = tensors[0]
    token_model = isinstance(layer, nn.Embedding)
    if not (x.is_floating_point() or x.is_complex() or x.dtype == torch.bool) and not token_model:
        fixes.append(integer_input_hint(x.dtype))
    elif param is not None and x.is_floating_point() and param.is_floating_point() and x.dtype != param.dtype:
        to = {torch.float32: "x.float()", torch.float64: "x.double()", torch.float16: "x.half()"}
        cast = to.get(param.dtype, f"x.to({param.dtype})")
        fixes.append(
            f"inputs are {x.dtype}, the model's parameters {param.dtype}: {cast}, or model.to(x.dtype)"
        )
    if layer is not None and not fixes:
        fixes += _shape_fixes(x, layer)
    return fixes


def _raised_by_torch(err: BaseException) -> bool:
    """True when the innermost frame is PyTorch's own code (a layer's ``forward``, a functional):
    errors of the user's code or of this package pass through unchanged."""
    tb = err.__traceback__
    last = None
    while tb is not None:
        last = tb
        tb = tb.tb_next
    return last is not None and os.path.abspath(last.tb_frame.f_code.co_filename).startswith(_TORCH_DIR)


def forward_failure(
    err: RuntimeError, model: nn.Module, inputs: Sequence[Any], where: str, argument: str = "inputs"
) -> ForwardPassError:
    """The :class:`ForwardPassError` explaining ``err`` (raise it ``from err``)."""
    found = first_layer(model)
    name, layer = found if found is not None else ("", None)
    param = _parameter(model, layer)
    lines = describe_inputs(inputs, argument)
    model_line = []
    if layer is not None:
        model_line.append(_expectation(name, layer))
    if param is not None:
        model_line.append(f"parameters {param.dtype} on {param.device}")
    if model_line:
        lines.append("model: " + "; ".join(model_line))
    fixes = _fixes(inputs, layer, param)
    fix = "; ".join(fixes) if fixes else "check the inputs against the model's first layer"
    first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    detail = "\n  ".join(lines)
    return ForwardPassError(
        f"{where}: the model's first forward pass failed on {argument} ({type(err).__name__}: {first})\n"
        f"  {detail}\nLikely fix: {fix}"
    )


@contextlib.contextmanager
def first_forward(
    model: nn.Module, inputs: Sequence[Any], where: str, argument: str = "inputs"
) -> Iterator[None]:
    """Run the first forward pass of an entry inside this context: a ``RuntimeError`` from
    PyTorch becomes a :class:`ForwardPassError` (chained) that names the inputs, the model's
    first layer and the likely fix. ``where`` names the entry (``"EmbeddingAttribution.attribute"``)."""
    try:
        yield
    except RuntimeError as err:
        if isinstance(err, (ForwardPassError, torch.OutOfMemoryError)) or not _raised_by_torch(err):
            raise
        raise forward_failure(err, model, inputs, where, argument) from err
