"""EmbeddingAttribution: attribute every component of an embedding to the input or to any
earlier layer, aggregated over channels and embedding dimensions (Bertolini et al., §2).
"""

from __future__ import annotations

import contextlib
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

import torch
from captum._utils.typing import TargetType
from captum.attr import GradientAttribution, LayerAttribution
from torch import nn

from ..._utils.captum_compat import captum_wrappable
from ..._utils.capture import LayerCapture
from ..._utils.common import TensorOrTuple, check_batch, format_inputs, restore_form, run_forward
from ..._utils.finite import check_finite_result
from ..._utils.first_pass import first_forward, first_layer, integer_input_hint
from ..._utils.hooks import ModelGuard
from ..._utils.layers import LayerSpec, layer_name, resolve_layer, uncompiled
from ..._utils.layout import ReshapeTransform, layer_transforms, layout_hint
from ..._utils.validation import (
    MODEL,
    Indices,
    check_int,
    check_option,
    index_tensor,
    target_index,
    validated,
)
from ..._utils.warn import warn_user
from .aggregators import Aggregator, check_aggregator
from .costs import WorkProbe, warn_if_costly
from .forward_mode import ForwardModeStateError, ForwardModeUnsupported, forward_maps
from .strategies import Job, Plan, Program, plan_sources, run_sweep
from .upsampling import check_upsample, upsample_maps

__all__ = ["EmbeddingAttribution", "METHODS", "STRATEGIES"]

METHODS = ("gradient", "activation_gradient", "gradcam")
STRATEGIES = ("auto", "batched", "loop", "forward")

Maps = Union[torch.Tensor, Tuple[torch.Tensor, ...]]


class EmbeddingAttribution(LayerAttribution, GradientAttribution):
    r"""Attribution maps of an embedding (no target class) with respect to the input or earlier layers.

    Every embedding component ``z_d`` (``d = 1..D``) is treated as its own output node. A base
    saliency method gives per-channel maps ``A_d`` at the source layer ``l``; they are aggregated
    over channels (``rho_C``), then over embedding dimensions (``rho_D``), then upsampled to the
    input's resolution (``U``):

    .. math::

        E(x) = U\Big(\rho_D\big(\{\rho_C(A_d(x))\}_{d=1}^{D}\big)\Big)

    ============================  =========================================  ==========================
    ``method``                    ``A_d``                                    Captum when ``D = 1``
    ============================  =========================================  ==========================
    ``"gradient"``                ``dz_d/dF``                                ``LayerGradientXActivation(
                                                                             multiply_by_inputs=False)``,
                                                                             ``Saliency(abs=False)``
    ``"activation_gradient"``     ``F * dz_d/dF``                            ``LayerGradientXActivation``,
                                                                             ``InputXGradient``
    ``"gradcam"``                 ``alpha_c * F_c``, ``alpha_c`` = spatial   ``LayerGradCam(
                                  mean of ``dz_d/dF_c``                      attr_dim_summation=False)``
    ============================  =========================================  ==========================

    (``LayerGradCam`` with its default ``attr_dim_summation=True`` returns the channel *sum*,
    i.e. ``C`` times our ``channel_aggregator="mean"`` map; we never apply a ReLU.)

    Shapes: a source tensor ``F`` of shape ``(N, C, *S)`` (``S = (L,)`` for 1-D, ``(H, W)`` for 2-D
    feature maps) gives maps ``(N, *S)``; a dense source ``(N, K)`` is ``K`` channels of one pixel and
    gives one value per example, shape ``(N,)``. Layer maps are upsampled to the spatial size of
    ``inputs[0]`` (a one-pixel map is copied over the whole input) unless ``upsample=None`` or
    ``inputs[0]`` has no spatial dimensions; input maps are already at the input's resolution.

    Layouts. Channels are read from dimension 1 and positions from the dimensions after it, so a
    layer whose output is not ``(N, C, *S)`` **needs a** ``reshape_transform`` (pytorch-grad-cam's
    convention: a callable ``(N, ...) -> (N, C, *S)``, applied to the activations and to the
    gradients alike): ``tokens_to_grid(prefix_tokens=1)`` for vision-transformer tokens
    ``(N, 1 + T, C)`` (maps on the ``h x w`` patch grid), ``channels_last`` for Swin / ConvNeXt
    channels-last tensors ``(N, H, W, C)`` and for token sequences ``(N, L, C)``: explaining the
    output of a text model's ``nn.Embedding`` (integer token inputs) with ``channels_last`` gives
    one value per token, maps ``(N, L)``. Without one, a layer that is recognisably channels-last
    (an ``nn.Embedding``, a ``LayerNorm`` / ``Linear`` over the last axis or torchvision's
    ``Permute`` at its end or right before it) triggers a ``UserWarning``.

    Cost. *Linear* cases (``embedding_aggregator="mean"`` with ``channel_aggregator="mean"``, any
    method, and ``return_per_dim=False``) use one backward pass of ``mean_d z_d``: the mean over ``d``
    commutes with the gradient, with ``F *`` and with Grad-CAM's spatial mean. All other cases need
    the ``D`` gradients ``dz_d/dF``. They come from ONE forward pass; the backward passes start at the
    embedding and stop at the lowest source layer (``torch.autograd.grad`` w.r.t. the layer outputs
    never traverses the layers below). ``strategy`` picks how the ``D`` vector-Jacobian products
    are run:

    - ``"batched"``: ``torch.autograd.grad(..., is_grads_batched=True)`` on chunks of
      ``internal_batch_size`` dimensions (one vmapped backward per chunk); the reverse-mode
      default on CUDA, where one vmapped backward keeps the device busy.
    - ``"loop"``: one backward pass of the head per dimension, reusing the single forward graph
      (``retain_graph=True``), each gradient reduced at once; the reverse-mode default on CPU,
      where max-pool backward has no vmap batching rule (it falls back to a per-sample loop)
      and large batched temporaries thrash the cache (``benchmarks/RESULTS.md`` compares them).
    - ``"forward"``: forward mode, one Jacobian-vector product per source *pixel* (``|S|`` in
      all; per *channel* for ``"gradcam"``, ``C``; per element, ``C |S|``, for a non-mean
      ``channel_aggregator`` with the other methods), each giving all ``D`` dimensions at once,
      in vmapped chunks of ``internal_batch_size`` tangents (see
      :mod:`~captum_concepts.attr._core.forward_mode`). Needs the model in eval mode (several
      forward passes); with ``create_graph=True`` it runs reverse mode. Fused attention kernels
      without a forward-mode rule (the ``nn.MultiheadAttention`` fast path, non-math
      ``scaled_dot_product_attention``) are switched off inside the call and restored after it.
      With a ``reshape_transform`` forward mode requires the transform to be *linear* in the
      layer output (permutations, reshapes, token selections): the tangents are built in the
      transformed layout and mapped back by the transform's adjoint.
    - ``"auto"`` (default): per source layer, ``"forward"`` when it needs fewer passes
      (its Jacobian-vector products, times 1.5 on CPU for its fixed costs, fewer than ``D``)
      *and* those passes cost less: the work of the first forward pass is counted and split at
      the source layer, a reverse product costs a pass through the head (the layers between the
      source and the embedding), a forward chunk costs a pass of the layers below plus one
      tangent through the head per product (the rule is stated in
      :func:`~captum_concepts.attr._core.strategies.choose_strategy`); never with
      ``create_graph``, a model in training mode or a model carrying backward hooks (forward
      mode would never call them; ``"forward"`` refuses such a model). Otherwise ``"batched"``
      when the embedding lives on a CUDA device and ``"loop"`` elsewhere. So a deep layer whose
      head is a pooling layer runs reverse mode (each reverse product is nearly free), a middle layer with few
      pixels and a deep head forward mode. Several layers may mix: forward mode for some, one
      reverse sweep for the others. When an operation has no forward-mode (or vmap) rule,
      ``"auto"`` silently reruns those layers in reverse mode on the graph of the first pass
      (``"forward"`` raises :class:`~captum_concepts.attr._core.forward_mode.ForwardModeUnsupported`);
      when torch's forward-AD state is unusable whatever the model (another thread using it
      outside this package, a call made inside ``torch.func.jvp``) it says so, as
      :class:`~captum_concepts.attr._core.forward_mode.ForwardModeStateError`, and ``"auto"``
      warns and runs reverse mode. One forward-mode computation runs at a time in the process
      (torch's forward-AD levels are process-global): threads explaining different models wait
      for each other there.

    Several source layers (``layer`` a list) share the same forward pass and the same backward
    pass(es): a list of ``L`` layers costs what the lowest one costs, not ``L`` times.

    Args:
        model (nn.Module): the model. It is called as ``model(*inputs, *additional_forward_args)``.
        embedding_layer (nn.Module or str, optional): the layer whose output, flattened to
            ``(N, D)``, is the embedding. Default None: the model output is the embedding.
        layer (nn.Module, str, None or a list/tuple of them, optional): the source layer(s).
            None means the model inputs. A list gives a list of results, one per entry (an entry
            None means the inputs), all from the same passes. Default: None.
        method (str): ``"gradient"`` (default), ``"activation_gradient"`` or ``"gradcam"``.
        channel_aggregator (str or callable): ``rho_C``: ``"mean"`` (default), ``"abs"`` (mean of
            absolute values), ``"var"`` (population variance) or a callable ``(tensor, dim) -> tensor``.
        embedding_aggregator (str or callable): ``rho_D``, same choices. Default ``"var"``.
        upsample (str or None): ``"nearest"`` (default, the paper's: each superpixel copied over
            its patch), ``"bilinear"`` or None (keep the layer's resolution).
        attribute_to_layer_input (bool): attribute to the layers' inputs instead of their outputs,
            as in Captum. Default False.
        strategy (str): ``"auto"`` (default), ``"batched"``, ``"loop"`` or ``"forward"``; see above.
            After :meth:`attribute`, ``strategy_`` holds the strategy each source layer ran:
            ``"linear"`` (the linear case above: one backward pass), ``"loop"``, ``"batched"``
            or ``"forward"`` (a list for a list of layers; a layer whose forward mode failed
            under ``"auto"`` reports the reverse strategy that ran), and ``plan_`` the
            :class:`~captum_concepts.attr._core.strategies.Plan` objects that ran (strategy,
            the reason it was chosen, chunk size, the predicted costs when counted).
        eval_mode (bool): run the model in eval mode inside :meth:`attribute` (default True; a
            model in training mode then triggers a ``UserWarning``). Pass False inside a training
            loop with score constraints: the model keeps its mode, and no warning is given.
        reshape_transform (callable, list of callables/None, or None): brings a source layer's
            output to ``(N, C, *S)``; one callable for every source layer, or a list aligned with
            ``layer`` (entries None: as is; never applied to the inputs). Default None: every
            layer is ``(N, C, *S)`` already. See "Layouts" above.

    Layers must run exactly once per forward pass (a reused module raises ``ValueError``).
    With ``eval_mode=True`` the model runs in eval mode inside :meth:`attribute`; every hook and
    flag is restored afterwards, also after an exception or Ctrl-C.
    Captured layer tensors are kept and a clone is handed to the rest of the model, so in-place
    operations downstream cannot corrupt them and the
    gradients are w.r.t. the values the downstream layers consume.

    ``multiplies_by_inputs`` is True for ``"activation_gradient"`` and ``"gradcam"`` (both multiply
    by the activations), False for ``"gradient"``. ``has_convergence_delta()`` is False. The class
    is a Captum ``LayerAttribution`` and ``GradientAttribution`` (like ``LayerGradCam``);
    ``self.layer`` is the resolved module, None (inputs) or a list of them.

    Captum interop: :meth:`attribute` carries the ``__wrapped__`` of Captum's ``log_usage``, so
    ``NoiseTunnel(ea)`` works; ``captum.metrics.sensitivity_max(ea.attribute, x)`` and
    ``infidelity`` take its maps (for ``infidelity``, which wants input-shaped attributions,
    broadcast a map over the input channels: ``maps.unsqueeze(1).expand_as(x)``). A
    model compiled by ``torch.compile`` is explained through its original module (``model._orig_mod``,
    with a ``UserWarning``); layer names need no ``_orig_mod.`` prefix.

    Example::

        from captum_concepts.attr import EmbeddingAttribution

        ea = EmbeddingAttribution(model, embedding_layer="embedding_relu", layer="block2.relu")
        images = data.x_test[:4]
        maps = ea.attribute(images)  # (4, 8, 8): var over components of channel means
        per_dim = ea.attribute(images, return_per_dim=True)  # (4, 32, 8, 8): one map per component
    """

    @validated(params=False, args={"model": MODEL})
    def __init__(
        self,
        model: nn.Module,
        embedding_layer: Optional[LayerSpec] = None,
        layer: Union[None, LayerSpec, Sequence[Optional[LayerSpec]]] = None,
        method: str = "gradient",
        channel_aggregator: Aggregator = "mean",
        embedding_aggregator: Aggregator = "var",
        upsample: Optional[str] = "nearest",
        attribute_to_layer_input: bool = False,
        strategy: str = "auto",
        eval_mode: bool = True,
        reshape_transform: Union[None, ReshapeTransform, Sequence[Optional[ReshapeTransform]]] = None,
    ) -> None:
        model = uncompiled(model)
        check_option(method, "method", METHODS)
        check_option(strategy, "strategy", STRATEGIES)
        self._multi = isinstance(layer, (list, tuple))
        if self._multi and len(layer) == 0:
            raise ValueError("layer is an empty list; pass at least one layer (None means the inputs)")
        entries = list(layer) if self._multi else [layer]
        layers = [
            None if lay is None else resolve_layer(model, lay, f"layer[{i}]" if self._multi else "layer")
            for i, lay in enumerate(entries)
        ]
        LayerAttribution.__init__(self, model, layers if self._multi else layers[0])
        GradientAttribution.__init__(self, model)
        self._layers: List[Optional[nn.Module]] = layers
        self.embedding_layer = (
            None if embedding_layer is None else resolve_layer(model, embedding_layer, "embedding_layer")
        )
        self.method = method
        self.channel_aggregator = check_aggregator(channel_aggregator, "channel_aggregator")
        self.embedding_aggregator = check_aggregator(embedding_aggregator, "embedding_aggregator")
        self.upsample = check_upsample(upsample, "upsample")
        self.attribute_to_layer_input = bool(attribute_to_layer_input)
        self.strategy = strategy
        self.eval_mode = bool(eval_mode)
        self.reshape_transform = reshape_transform
        # one checked transform per source (None for the inputs): every call of one checks its output
        self._transforms = layer_transforms(model, layers, reshape_transform)

    @property
    def multiplies_by_inputs(self) -> bool:
        return self.method != "gradient"

    def has_convergence_delta(self) -> bool:
        return False

    # ------------------------------------------------------------------ public
    @captum_wrappable
    @validated(grad=True, args={"embedding_dims": Indices()})
    def attribute(
        self,
        inputs: TensorOrTuple,
        additional_forward_args: Any = None,
        embedding_dims: Union[None, int, Sequence[int], torch.Tensor] = None,
        internal_batch_size: Optional[int] = None,
        return_per_dim: bool = False,
        show_progress: bool = True,
        create_graph: bool = False,
        *,
        target: TargetType = None,
    ) -> Union[Maps, List[Maps]]:
        r"""Compute the embedding attribution maps.

        Args:
            inputs (Tensor or tuple of Tensor): the batch, ``(N, C0, *S0)`` each (any shape with a
                batch dimension first).
            additional_forward_args (Any, optional): extra arguments appended to the forward call
                after the inputs (Captum's convention).
            embedding_dims (int, sequence of int, 1-D tensor or boolean mask, optional): the
                embedding dimensions (indices into the flattened ``(N, D)`` embedding, numpy ints
                too; a mask has length ``D``) to explain. Default None: all ``D``.
            internal_batch_size (int, optional): the number of embedding dimensions whose
                gradients are computed together (one vmapped backward with ``strategy="batched"``);
                bounds memory at about ``internal_batch_size x`` (size of the source activations).
                Default None: as many as fit a 512 MiB budget, at most 64. With ``strategy="loop"``
                each gradient is reduced at once and this only sets the progress-bar steps. With
                ``strategy="forward"`` it is the number of tangents propagated together (default:
                a 1 GiB budget, at most 64), one progress-bar step per chunk.
            return_per_dim (bool): if True return the channel-aggregated per-dimension maps
                ``U(rho_C(A_d))`` of shape ``(N, D, *S0)`` (the variance score needs them) instead
                of the embedding-aggregated maps. Default False.
            show_progress (bool): a tqdm bar over the chunks of embedding dimensions (reverse
                mode) or of tangents (forward mode). Default True: shown on a terminal, silent
                when output is not one (:func:`~captum_concepts._utils.progress.progress_bar`);
                False silences it. A call whose plan needs more than
                :data:`~captum_concepts.attr._core.costs.MANY_PASSES` gradient passes (a
                non-linear aggregator over hundreds of dimensions) warns before it starts,
                naming the cheaper choices.
            create_graph (bool): if True the maps stay differentiable w.r.t. the model parameters
                (for score constraints in training; piecewise-linear activations have zero second
                derivatives, use e.g. softplus). Default False: detached maps.
            target (int, list of int or tensor, optional; keyword only): Captum's ``target`` for a
                model whose output is the embedding (``embedding_layer=None``, e.g. logits
                ``(N, K)``): the output index to explain, one for the batch or one per example
                (a list or an ``(N,)`` tensor), an index into the flattened output. The map of
                example ``n`` is then ``U(rho_C(A_{target_n}))``: the one selected component, no
                aggregation over dimensions (``embedding_aggregator`` is not used; the result
                is what ``embedding_dims=[t]`` with ``embedding_aggregator="mean"`` gives for
                every example with target ``t``, and Captum's layer method with ``target``
                gives before ``rho_C``). Refused with
                ``embedding_dims`` (pass one of them) and with an ``embedding_layer`` (Captum's
                ``target`` indexes the model output; use ``embedding_dims`` for components of an
                inner embedding). Tuple targets (multi-dimensional outputs) are refused.

        Returns:
            Captum's rule. A layer source gives what the layer outputs (its inputs with
            ``attribute_to_layer_input``), whatever the form of ``inputs``: a tensor ``(N, *S0)``
            (``(N, D, *S0)`` with ``return_per_dim``) for a layer with one tensor, a tuple of them
            for a layer with several. The inputs as source (``layer=None``): tuples in, tuples
            out (a tensor for a tensor input, a tuple for tuple inputs). For a list of layers: a
            list of such results, in the same order.
        """
        inputs_t, _was_tuple = format_inputs(inputs)
        select = self._selector(embedding_dims, target, check_batch(inputs_t))
        job = self._job(internal_batch_size, return_per_dim, show_progress, create_graph, target is not None)
        with self._guard(create_graph) as guard, torch.enable_grad():
            x, z, sources, program = self._first_pass(guard, inputs_t, additional_forward_args, select, job)
            plans = program.plans
            warn_if_costly(
                plans, z.shape[1], self.embedding_aggregator, self.channel_aggregator, job.return_per_dim
            )
            flat = [t for group in sources for t in group]
            per_source: Dict[int, torch.Tensor] = {}
            for sweep in program.sweeps:
                per_source.update(zip(sweep.index, run_sweep(job, sweep, z, flat)))
        if program.forward:
            plans = self._run_forward(
                job, program, per_source, x=x, z=z, flat=flat, args=additional_forward_args, select=select
            )
        self.plan_ = plans if self._multi else plans[0]
        self.strategy_ = [p.strategy for p in plans] if self._multi else plans[0].strategy
        size = tuple(inputs_t[0].shape[2:]) if inputs_t[0].dim() > 2 else ()
        results, ran = [], iter(per_source[j] for j in range(len(flat)))
        for lay, group in zip(self._layers, sources):
            maps = []
            for m in (next(ran) for _ in group):
                if lay is not None:
                    spatial = m.dim() - (2 if return_per_dim else 1)
                    m = upsample_maps(m, size, self.upsample, spatial_dims=spatial)
                maps.append(m if create_graph else m.detach())
            # Captum's rule: input sources keep the form of the inputs, layer sources the form of
            # the layer's output (one tensor -> a tensor, whatever the inputs)
            results.append(restore_form(tuple(maps), (_was_tuple and lay is None) or len(maps) > 1))
        return check_finite_result(results if self._multi else results[0], type(self).__name__, inputs_t)

    @validated(grad=True, args={"embedding_dims": Indices()})
    def plan(
        self, inputs: TensorOrTuple, additional_forward_args: Any = None,
        embedding_dims: Union[None, int, Sequence[int], torch.Tensor] = None,
        internal_batch_size: Optional[int] = None, return_per_dim: bool = False, create_graph: bool = False,
        *, target: TargetType = None,
    ) -> Union[Plan, List[Plan]]:  # fmt: skip
        """What :meth:`attribute` would run with these arguments, and why, after one forward pass.

        Args: as :meth:`attribute`.

        Returns:
            :class:`~captum_concepts.attr._core.strategies.Plan`: per source layer (a list for a
            list of layers) the strategy, the reason it was chosen, the chunk size and, under
            ``strategy="auto"``, the counted work of the pass
            (:class:`~captum_concepts.attr._core.costs.PassCosts`). A forward-mode plan may still
            fall back to reverse mode in :meth:`attribute` (an operation without a forward rule).
        """
        inputs_t, _ = format_inputs(inputs)
        select = self._selector(embedding_dims, target, check_batch(inputs_t))
        job = self._job(internal_batch_size, return_per_dim, False, create_graph, target is not None)
        with self._guard(create_graph) as guard, torch.enable_grad():
            plans = self._first_pass(guard, inputs_t, additional_forward_args, select, job)[3].plans
        return plans if self._multi else plans[0]

    def _guard(self, create_graph: bool) -> ModelGuard:
        return ModelGuard(self.forward_func, eval_mode=self.eval_mode, freeze_parameters=not create_graph)

    def _job(self, internal_batch_size, return_per_dim, show_progress, create_graph, single=False) -> Job:
        internal_batch_size = check_int(internal_batch_size, "internal_batch_size", low=1, allow_none=True)
        return Job(
            method=self.method, channel_aggregator=self.channel_aggregator,
            embedding_aggregator="mean" if single else self.embedding_aggregator,  # one component: its map
            return_per_dim=bool(return_per_dim), create_graph=bool(create_graph),
            show_progress=bool(show_progress), internal_batch_size=internal_batch_size,
        )  # fmt: skip

    def _selector(self, embedding_dims, target, n: int) -> Callable[[torch.Tensor], torch.Tensor]:
        """``(N, D_all) -> (N, D)``: the explained components (``embedding_dims``, or per example
        Captum's ``target``), checked before the forward pass where the forward pass is not needed."""
        if target is None:
            return lambda z: _select_dims(z, embedding_dims)
        if embedding_dims is not None:
            raise ValueError(
                "pass target (Captum's: the output index per example) or embedding_dims (components "
                "explained for every example), not both"
            )
        if self.embedding_layer is not None:
            raise ValueError(
                "target indexes the model output (Captum's meaning) and needs embedding_layer=None; to "
                "explain components of embedding_layer pass embedding_dims=[...] instead"
            )
        index = target_index(target, n)
        return lambda z: _select_target(z, index)

    def _first_pass(self, guard: ModelGuard, inputs_t, additional_forward_args, select, job: Job):
        """The one forward pass (counting its work under ``"auto"``) and the plans: returns the
        prepared inputs, the selected embedding ``(N, D)``, the sources per layer and the program."""
        model = self.forward_func
        n = check_batch(inputs_t)
        x = tuple(_prepare_input(model, t, i, self._layers) for i, t in enumerate(inputs_t))
        captured, embedded = self._register_hooks(guard, model)
        training = any(m.training for m in model.modules())
        probe = None
        if self.strategy == "auto" and not (job.linear or job.create_graph or training):
            of = "input" if self.attribute_to_layer_input else "output"
            probe = WorkProbe(guard, self._layers, self.embedding_layer, of)
        counting = probe if probe is not None else contextlib.nullcontext()
        with counting, first_forward(model, x, type(self).__name__):
            output = guard.forward(run_forward, model, x, additional_forward_args)
        z = self._embedding(model, output, embedded, n)
        z = select(z)
        sources = [x if lay is None else captured[lay].tensors() for lay in self._layers]
        self._warn_layouts(model, sources)
        costs = [
            None if probe is None else probe.costs(lay, sum(t.numel() for t in group))
            for lay, group in zip(self._layers, sources)
        ]
        program = plan_sources(
            job, strategy=self.strategy, z=z, layers=self._layers, groups=sources,
            transforms=self._transforms, costs=costs, training=training, model=model,
        )  # fmt: skip
        return x, z, sources, program

    def _run_forward(
        self, job: Job, program: Program, per_source: Dict[int, torch.Tensor], *, x, z, flat, args, select
    ) -> List[Plan]:
        """Run the forward sources of ``program`` into ``per_source``; return the plans that ran.
        When forward mode fails, the program's fallback (under ``strategy="auto"``) runs as one
        reverse sweep on the (still alive) graph of the first pass, under new reverse plans."""
        index, specs = zip(*program.forward)
        try:
            maps = forward_maps(
                self.forward_func, tuple(t.detach() for t in x), specs, select=select, method=job.method,
                channel_aggregator=job.channel_aggregator, additional_forward_args=args,
                embedding_layer=self.embedding_layer, eval_mode=self.eval_mode,
                input_side=self.attribute_to_layer_input, show_progress=job.show_progress,
            )  # fmt: skip
        except ForwardModeUnsupported as err:
            back = program.fallback
            if back is None:
                raise
            why = f"{err.reason} ({type(err.__cause__ or err).__name__})"
            if isinstance(err, ForwardModeStateError):
                warn_user(f"{err}; running reverse mode")
            maps = run_sweep(job, back, z, flat, show_progress=False, create_graph=False)
            per_source.update(zip(back.index, maps))
            return [p if p.strategy != "forward" else p.fallback(back.strategy, why, back.chunk)
                    for p in program.plans]  # fmt: skip
        per_source.update(zip(index, [job.finish(m) for m in maps]))
        return program.plans

    def _warn_layouts(self, model: nn.Module, sources: List[Tuple[torch.Tensor, ...]]) -> None:
        for i, (lay, fn, group) in enumerate(zip(self._layers, self._transforms, sources)):
            if lay is None or fn is not None or len(group) != 1:
                continue
            hint = layout_hint(model, lay, tuple(group[0].shape))
            if hint is not None:
                arg = f"layer[{i}]" if self._multi else "layer"
                warn_user(f"{arg}={layer_name(model, lay)!r}: {hint}")

    # ------------------------------------------------------------------ forward
    def _register_hooks(self, guard: ModelGuard, model: nn.Module):
        of = "input" if self.attribute_to_layer_input else "output"
        captured: Dict[nn.Module, LayerCapture] = {}
        for i, lay in enumerate(self._layers):
            if lay is not None and lay not in captured:
                arg = f"layer[{i}]" if self._multi else "layer"
                captured[lay] = guard.capture(lay, arg, of=of, leaf=True)
        embedded = None
        if self.embedding_layer is not None:
            embedded = guard.capture(self.embedding_layer, "embedding_layer")
        return captured, embedded

    def _embedding(
        self, model: nn.Module, output: Any, embedded: Optional[LayerCapture], n: int
    ) -> torch.Tensor:
        if self.embedding_layer is None:
            if not isinstance(output, torch.Tensor):
                raise TypeError(
                    f"the model output is the embedding (embedding_layer=None) and must be a tensor, "
                    f"got {type(output).__name__}; pass embedding_layer"
                )
            z, where = output, "the model output"
        else:
            where = f"embedding_layer {layer_name(model, self.embedding_layer)!r}"
            z = embedded.tensor()
        if z.dim() == 0 or z.shape[0] != n:
            raise ValueError(f"{where} has shape {tuple(z.shape)}; expected batch size {n} first")
        z = z.reshape(n, -1)
        if z.shape[1] == 0:
            raise ValueError(f"{where} has D = 0 dimensions (shape {tuple(z.shape)}); nothing to attribute")
        if not z.requires_grad:
            raise ValueError(f"{where} does not depend differentiably on the inputs or the source layers")
        if not bool(torch.isfinite(z.detach()).all()):
            bad = torch.nonzero(~torch.isfinite(z.detach()).all(dim=1)).flatten().tolist()
            raise ValueError(
                f"{where} holds NaN or infinite values for examples {bad[:10]}: check inputs for NaN/Inf "
                "(their gradients would be meaningless)"
            )
        return z


def _prepare_input(
    model: nn.Module, t: torch.Tensor, i: int, layers: List[Optional[nn.Module]]
) -> torch.Tensor:
    if t.is_floating_point() or t.is_complex():
        return t.detach().requires_grad_(True)
    if not any(lay is None for lay in layers):
        return t
    found = first_layer(model)
    if found is None or not isinstance(found[1], nn.Embedding):  # not token ids: images or features
        raise TypeError(
            f"inputs[{i}] has dtype {t.dtype}; attributing to the inputs (layer=None) needs "
            f"floating-point inputs: {integer_input_hint(t.dtype)}"
        )
    raise TypeError(
            f"inputs[{i}] has dtype {t.dtype}; attributing to the inputs (layer=None) needs floating-point "
            "inputs. For token ids, attribute to the embedding lookup with the sequence transform, e.g. "
            "EmbeddingAttribution(model, layer='embedding', reshape_transform=channels_last) "
            "(from captum_concepts.attr import channels_last): one value per token, maps (N, L)"
        )


def _select_target(z: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """Component ``index[n]`` of row ``n``: ``(N, D_all) -> (N, 1)``."""
    d = z.shape[-1]
    out = index[(index < 0) | (index >= d)]
    if out.numel():
        bad = sorted(set(out.tolist()))[:10]
        raise ValueError(f"target {bad} out of range for a model output of D = {d} components")
    return z.gather(-1, index.to(z.device).unsqueeze(-1))


def _select_dims(z: torch.Tensor, embedding_dims) -> torch.Tensor:
    if embedding_dims is None:
        return z
    return z[:, index_tensor(embedding_dims, "embedding_dims", z.shape[1]).to(z.device)]
