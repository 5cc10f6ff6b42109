"""Semantic Guided Backprop and Semantic Gradient×Input (Gu & Tresp, §5).

Both run one forward and one backward pass. At one chosen layer the gradient
arriving at the layer's output is multiplied, per example, by the semantic mask
of that example's target class, which suppresses units that are not part of the
class concept: ``R^l = R^{l+1} · 1[R^{l+1} > 0 and X^l > 0 and mask > 0]``.
"""

from __future__ import annotations

from typing import Any, Hashable, Optional, Protocol, Sequence, Tuple, Union, runtime_checkable

import torch
from captum.attr import GradientAttribution
from torch import nn

from ..._utils.captum_compat import captum_wrappable
from ..._utils.common import TensorOrTuple, check_batch, format_inputs, restore_form
from ..._utils.finite import check_finite_result
from ..._utils.first_pass import first_forward, integer_input_hint
from ..._utils.hooks import ModelGuard
from ..._utils.layers import LayerSpec, layer_name, resolve_layer, uncompiled
from ..._utils.validation import MODEL, target_index, validated
from ..._utils.warn import warn_user

__all__ = ["SemanticGuidedBackprop", "SemanticGradientInput", "SemanticMaskSource"]

TargetType = Union[None, int, torch.Tensor, Sequence[int]]
ConceptKey = Union[str, int, Hashable]


@runtime_checkable
class SemanticMaskSource(Protocol):
    """What the semantic attributions read from fitted concepts, besides a plain mask tensor.

    A fitted :class:`~captum_concepts.concept.SemanticVector` is one; any object with this
    method can be passed as ``semantic_vectors``.

    Example::

        from captum_concepts.attr import SemanticGradientInput, SemanticMaskSource
        from captum_concepts.concept import SemanticVector

        sv = SemanticVector(model, "block3.relu").fit_from_labels((data.x_train, data.y_train))
        assert isinstance(sv, SemanticMaskSource)  # a fitted SemanticVector is one
        SemanticGradientInput(model, "block3.relu", sv).attribute(data.x_test[:2], target=0)
    """

    def semantic_masks(
        self, threshold: float = 0.5, concepts: Optional[Sequence[ConceptKey]] = None
    ) -> Tuple[nn.Module, torch.Tensor]:
        """``(layer, masks)``: the module whose output the masks are for, and the masks
        ``(num_classes, *layer_shape)`` (row ``t`` for class ``t``; bool or float).

        Args:
            threshold (float): the masks' threshold.
            concepts (sequence, optional): entry ``t`` names the concept of class ``t``.

        Raises:
            NotFittedError: the concepts are not fitted.
        """


class _MaskGradient(torch.autograd.Function):
    """Identity forward; backward multiplies the incoming gradient by ``mask``."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(mask)
        return x.clone()  # a fresh tensor, so a following in-place op cannot touch x

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (mask,) = ctx.saved_tensors
        return grad * mask, None


class _PositiveGradient(torch.autograd.Function):
    """Identity forward; backward keeps the positive part of the gradient (Guided Backprop)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        return x.clone()  # the ReLU may run in place on this copy, never on its input

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        return torch.relu(grad)


# non-linearities other than nn.ReLU that a Guided Backprop user may expect to be guided
_OTHER_ACTIVATIONS = (
    nn.GELU, nn.SiLU, nn.Hardswish, nn.ReLU6, nn.LeakyReLU, nn.ELU, nn.SELU, nn.CELU, nn.Mish,
    nn.Softplus, nn.Tanh, nn.Sigmoid, nn.Hardsigmoid, nn.PReLU, nn.RReLU, nn.Hardtanh,
)


def _guide_relu_input(_module: nn.Module, args: Tuple[Any, ...]):
    # Placed in front of every nn.ReLU call: ReLU backward gives R·1[X > 0], the gate
    # then keeps its positive part, i.e. R·1[R > 0 and X > 0] as in Captum's GuidedBackprop.
    if len(args) != 1 or not isinstance(args[0], torch.Tensor):
        return None
    return (_PositiveGradient.apply(args[0]),)


def _mask_table(
    model: nn.Module,
    layer: nn.Module,
    semantic_vectors: Union[SemanticMaskSource, torch.Tensor],
    concepts: Optional[Sequence[ConceptKey]],
    threshold: float,
) -> torch.Tensor:
    """Masks ``(num_classes, *layer_shape)`` (float) from a mask source or a tensor."""
    if isinstance(semantic_vectors, SemanticMaskSource):
        source_layer, masks = semantic_vectors.semantic_masks(threshold, concepts)
        if source_layer is not layer:
            name = layer_name(model, source_layer)
            raise ValueError(
                f"semantic_vectors were fitted at layer {name if name else type(source_layer).__name__!r}, "
                "which is not the layer given here; fit them at the layer whose gradient is masked"
            )
        semantic_vectors, concepts = masks, None
    if isinstance(semantic_vectors, torch.Tensor):
        if concepts is not None:
            raise ValueError(
                "concepts= is only used with a SemanticVector; a mask tensor has one row per class"
            )
        if semantic_vectors.dim() < 2:
            raise ValueError(
                "a semantic_vectors mask tensor must have shape (num_classes, *layer_shape), got "
                f"{tuple(semantic_vectors.shape)}"
            )
        return semantic_vectors.detach().float()
    raise TypeError(
        "semantic_vectors must be a fitted SemanticVector (or an object with a semantic_masks method) "
        f"or a mask tensor (num_classes, *layer_shape), got {type(semantic_vectors).__name__}"
    )


def _target_classes(target: TargetType, n: int, num_classes: int) -> torch.Tensor:
    """The mask row of each example, ``(n,)`` long (:func:`target_index`, within the masks)."""
    if target is None and num_classes == 1:
        return torch.zeros(n, dtype=torch.long)
    classes = target_index(target, n, f"target is required to choose among the {num_classes} semantic masks")
    if int(classes.min()) < 0 or int(classes.max()) >= num_classes:
        raise ValueError(
            f"target out of range: got classes {int(classes.min())}..{int(classes.max())}, "
            f"the semantic masks cover classes 0..{num_classes - 1}"
        )
    return classes


class _SemanticGradientBase(GradientAttribution):
    _guided = False

    @validated(params=False, args={"model": MODEL})
    def __init__(
        self,
        model: nn.Module,
        layer: LayerSpec,
        semantic_vectors: Union[SemanticMaskSource, torch.Tensor],
        threshold: float = 0.5,
        concepts: Optional[Sequence[ConceptKey]] = None,
        eval_mode: bool = True,
    ) -> None:
        model = uncompiled(model)
        GradientAttribution.__init__(self, model)
        self.eval_mode = bool(eval_mode)
        self.model = model
        self.layer = resolve_layer(model, layer)
        self.masks = _mask_table(model, self.layer, semantic_vectors, concepts, threshold)
        self._warn_activations()

    def _warn_activations(self) -> None:
        """Guided Backprop modifies ``nn.ReLU`` modules only: say when others carry the non-linearity."""
        if not self._guided:
            return
        n_relu = sum(isinstance(m, nn.ReLU) for m in self.model.modules())
        others = sorted({type(m).__name__ for m in self.model.modules() if isinstance(m, _OTHER_ACTIVATIONS)})
        if n_relu == 0:
            warn_user(
                f"{type(self).__name__}: the model has no nn.ReLU module"
                + (f" (its activations are {', '.join(others)})" if others else "")
                + "; Guided Backprop changes only nn.ReLU modules, so the result is a plain gradient "
                "masked at the semantic layer (as Captum's GuidedBackprop would give)"
            )
        elif others:
            warn_user(
                f"{type(self).__name__}: only some activations are nn.ReLU modules "
                f"(also {', '.join(others)}); "
                "Guided Backprop changes only the nn.ReLU modules (not these, nor functional F.relu "
                "calls), whose gradients pass unchanged"
            )

    @property
    def multiplies_by_inputs(self) -> bool:
        return not self._guided

    def has_convergence_delta(self) -> bool:
        return False

    def _checked_forward(self, classes: torch.Tensor, inputs: Tuple[torch.Tensor, ...]):
        """The model, with a clear error for a target class beyond its outputs and for inputs that
        do not fit it (:func:`~captum_concepts._utils.first_pass.first_forward`)."""

        def forward(*args):
            with first_forward(self.forward_func, inputs, f"{type(self).__name__}.attribute"):
                out = self.forward_func(*args)
            if isinstance(out, torch.Tensor) and out.dim() == 2 and int(classes.max()) >= out.shape[1]:
                raise ValueError(
                    f"target out of range: class {int(classes.max())} for a model with {out.shape[1]} outputs"
                )
            return out

        return forward

    @captum_wrappable
    @validated(grad=True)
    def attribute(
        self,
        inputs: TensorOrTuple,
        target: TargetType = None,
        additional_forward_args: Any = None,
    ) -> TensorOrTuple:
        r"""Semantic attributions (Guided Backprop or Gradient×Input, see the class).

        Args:
            inputs (Tensor or tuple of Tensors): ``(N, ...)`` each; tuple in, tuple out.
            target (int, Tensor or list): output class per example (also selects the
                mask); may be None only with a single mask.
            additional_forward_args: appended to the forward call, as in Captum.

        Returns:
            Attributions with the shape of ``inputs`` (detached).
        """
        inputs_t, was_tuple = format_inputs(inputs)
        n = check_batch(inputs_t)
        classes = _target_classes(target, n, self.masks.shape[0])
        layer_shape = tuple(self.masks.shape[1:])
        for i, x in enumerate(inputs_t):
            if not x.is_floating_point():
                raise TypeError(
                    f"inputs[{i}] has dtype {x.dtype}; gradients need floating-point inputs "
                    f"({integer_input_hint(x.dtype)})"
                )
        calls = []

        def mask_layer_gradient(_module, _args, out):
            calls.append(1)
            if not isinstance(out, torch.Tensor):
                raise TypeError(
                    f"the output of the semantic layer must be a tensor, got {type(out).__name__}"
                )
            if tuple(out.shape[1:]) != layer_shape:
                raise ValueError(
                    f"mask shape mismatch: the masks are for layer outputs of shape {layer_shape}, "
                    f"the layer produced {tuple(out.shape[1:])} per example"
                )
            rows = classes.to(out.device)
            mask = self.masks.to(device=out.device, dtype=out.dtype)[rows]
            if mask.shape[0] != out.shape[0]:  # one target for the batch: broadcast its mask
                mask = mask.expand(out.shape[0], *layer_shape)
            return _MaskGradient.apply(out, mask)

        grad_inputs = tuple(x.detach().requires_grad_(True) for x in inputs_t)
        with ModelGuard(self.model, eval_mode=self.eval_mode) as guard:
            if self._guided:
                for module in self.model.modules():
                    if isinstance(module, nn.ReLU):
                        guard.register_forward_pre_hook(module, _guide_relu_input)
            guard.register_forward_hook(self.layer, mask_layer_gradient)
            forward = self._checked_forward(classes, inputs_t)
            # Captum's own form of the parsed target (it refuses numpy ints)
            target = None if target is None else classes.to(grad_inputs[0].device)
            gradients = self.gradient_func(forward, grad_inputs, target, additional_forward_args)
        if not calls:
            raise ValueError(
                "layer was never reached by the forward pass, so no semantic mask was applied; "
                "pass a layer that runs in model.forward"
            )
        if self._guided:
            result = tuple(g.detach() for g in gradients)
        else:
            result = tuple((g * x).detach() for g, x in zip(gradients, inputs_t))
        return restore_form(check_finite_result(result, type(self).__name__, inputs_t), was_tuple)


class SemanticGuidedBackprop(_SemanticGradientBase):
    r"""Guided Backprop whose backward pass is restricted to the target class's concept units.

    At every ``nn.ReLU`` module the backward signal is ``R^{l+1} · 1[R^{l+1} > 0 and
    X^l > 0]`` (Captum's :class:`~captum.attr.GuidedBackprop`); at ``layer`` it is
    additionally multiplied by the semantic mask of each example's target class
    (Gu & Tresp, §5; the paper uses VGG16 ``pool5``). One forward and one backward pass
    for the whole batch. With an all-ones mask the result equals Captum's
    ``GuidedBackprop`` exactly.

    ReLU handling, as in Captum: only ``nn.ReLU`` modules are modified. A module
    used several times in ``forward`` is modified at every call; ``nn.ReLU(inplace=True)``
    works because the ReLU runs on a copy of its input. Functional calls
    (``F.relu``, ``torch.relu``, ``x.clamp(min=0)``) are **not** modified: their
    gradient passes as plain gradient, exactly as in Captum's GuidedBackprop.
    The mask multiplies the gradient arriving at ``layer``'s output at every call
    of that layer; it does not change the forward pass.

    Targets and masks: ``target`` (an int, a ``(N,)`` tensor or a list of ints, one
    per example) indexes the output *and* the mask table. With a
    :class:`~captum_concepts.concept.SemanticVector`, class ``t`` uses concept ``t``
    (:meth:`SemanticVector.class_rows`): ``fit_from_labels`` gives concept ``i`` =
    class ``i``; for concepts fitted from a dict, pass ``concepts=[concept of class
    0, concept of class 1, ...]`` (names or indices).

    Args:
        model (nn.Module): the model (Captum's ``forward_func``).
        layer (str or nn.Module): the layer whose gradient is masked; must be the layer
            the semantic vectors were fitted at.
        semantic_vectors (SemanticVector, SemanticMaskSource or Tensor): a fitted SemanticVector
            (masks ``1[r_c > threshold]``), any other object with the
            :class:`SemanticMaskSource` method ``semantic_masks``, or a mask tensor
            ``(num_classes, *layer_shape)`` (bool or float; float values multiply the gradient).
        threshold (float): activation-rate threshold of the masks. Default: 0.5.
        concepts (sequence, optional): class-to-concept map (SemanticVector or mask source only).
        eval_mode (bool): run the model in eval mode inside :meth:`attribute` (default True;
            a model in training mode then triggers a ``UserWarning``), as in
            :class:`~captum_concepts.attr.EmbeddingAttribution`. With False the model keeps its
            mode (dropout and batch statistics included), so an all-ones mask equals Captum's
            method on the model as it is, training mode included.

    A ``UserWarning`` at construction says when the model has no ``nn.ReLU`` module (the
    result is then a plain gradient masked at ``layer``) or when some of its activations are
    other modules (GELU, SiLU, Hardswish, ...). A model compiled by ``torch.compile`` is explained
    through its original module (with a warning); layer names need no ``_orig_mod.`` prefix.

    Note: masks ``1[r_c > 0.5]`` are per unit, i.e. per (channel, position) of a conv
    layer. Where objects appear at varying positions, few (channel, position) units
    are active in more than half of a class's examples, and the mask can cut the paths
    through the object itself (measured on two-digit canvases, see
    ``experiments/README.md``): use a lower ``threshold`` or pass a position-free mask
    tensor built from ``SemanticVector.activation_rates_``.

    Example::

        from captum_concepts.attr import SemanticGuidedBackprop
        from captum_concepts.concept import SemanticVector

        sv = SemanticVector(model, "block3.relu").fit_from_labels((data.x_train, data.y_train))
        sgb = SemanticGuidedBackprop(model, "block3.relu", sv)
        maps = sgb.attribute(data.x_test[:4], target=data.y_test[:4])  # (4, 1, 8, 8), like the input
    """

    _guided = True


class SemanticGradientInput(_SemanticGradientBase):
    r"""Gradient × Input with the gradient masked at ``layer`` by the target's semantic mask.

    Plain gradients everywhere (no ReLU is modified; ``F.relu`` and ``nn.ReLU``
    behave the same), multiplied at ``layer`` by the semantic mask of each
    example's target class, then multiplied by the input (Gu & Tresp, §5). One forward
    and one backward pass. With an all-ones mask it equals Captum's
    :class:`~captum.attr.InputXGradient` exactly.

    Targets and the class-to-concept map are as in :class:`SemanticGuidedBackprop`.

    Args:
        model (nn.Module): the model (Captum's ``forward_func``).
        layer (str or nn.Module): the layer whose gradient is masked; must be the layer
            the semantic vectors were fitted at.
        semantic_vectors (SemanticVector, SemanticMaskSource or Tensor): a fitted SemanticVector,
            another :class:`SemanticMaskSource` or a mask tensor ``(num_classes, *layer_shape)``,
            as in :class:`SemanticGuidedBackprop`.
        threshold (float): activation-rate threshold of the masks. Default: 0.5.
        concepts (sequence, optional): class-to-concept map (SemanticVector or mask source only).
        eval_mode (bool): run the model in eval mode inside :meth:`attribute` (default True), as
            in :class:`SemanticGuidedBackprop`.

    Example::

        from captum_concepts.attr import SemanticGradientInput
        from captum_concepts.concept import SemanticVector

        sv = SemanticVector(model, "block3.relu").fit_from_labels((data.x_train, data.y_train))
        sgi = SemanticGradientInput(model, "block3.relu", sv)
        maps = sgi.attribute(data.x_test[:4], target=3)  # evidence for class 3 through its units
    """
