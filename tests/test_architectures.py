"""Every method on torchvision architectures (random weights, small inputs) and a small text model.

Each result is compared with a reference computed here with plain autograd (hooks on the raw layer
output, ``torch.autograd.grad`` per embedding component, layouts rearranged by hand: channels-last
and token references included), and the model is checked untouched afterwards. Heavy architectures
are marked ``slow``.
"""

from __future__ import annotations

import copy
import functools
import warnings
from typing import Dict, List, Optional

import pytest
import torch
import torchvision.models as tv
from captum.concept import TCAV
from torch import nn

from captum_concepts.attr import (
    EmbeddingAttribution,
    SemanticGradientInput,
    SemanticGuidedBackprop,
    channels_last,
    tokens_to_grid,
)
from captum_concepts.concept import CoupledNMFConcepts, SemanticVector
from captum_concepts.data import TinyTextTransformer
from captum_concepts.metrics import score_curve, variance_score
from captum_concepts.testing import assert_same_state, model_state

DIMS = [0, 1, 2]  # embedding components explained (the logits of classes 0-2)
METHODS = ("gradient", "activation_gradient", "gradcam")


# ---------------------------------------------------------------------- layouts, written by hand
def _cl(t: torch.Tensor) -> torch.Tensor:
    return t.permute(0, 3, 1, 2) if t.dim() == 4 else t.transpose(1, 2)


def _tokens(t: torch.Tensor) -> torch.Tensor:
    n, k, c = t.shape
    h = int(round((k - 1) ** 0.5))
    return t[:, 1:].reshape(n, h, h, c).permute(0, 3, 1, 2)


REF_LAYOUT = {None: lambda t: t, channels_last: _cl, "tokens": _tokens}


def _vit():
    model = tv.vit_b_16(weights=None, image_size=32)
    nn.init.normal_(model.heads.head.weight, std=0.02)  # torchvision zero-initialises the head
    return model


# name: (builder, input size, layers explained (2), their transforms, semantic layer, slow)
ARCHS: Dict[str, tuple] = {
    "resnet50": (lambda: tv.resnet50(weights=None), 32, ["layer2", "layer4"], [None, None], "layer4", True),
    "vit_b_16": (
        _vit,
        32,
        ["conv_proj", "encoder.layers.encoder_layer_5"],
        [None, "tokens"],
        "encoder.layers.encoder_layer_10",
        True,
    ),
    "swin_t": (
        lambda: tv.swin_t(weights=None),
        64,
        ["features.1", "features.3"],
        [channels_last, channels_last],
        "features.5",
        True,
    ),
    "convnext_tiny": (
        lambda: tv.convnext_tiny(weights=None),
        32,
        ["features.1.0.block.2", "features.3"],
        [channels_last, None],
        "features.5",
        True,
    ),
    "efficientnet_b0": (
        lambda: tv.efficientnet_b0(weights=None),
        32,
        ["features.3", "features.6"],
        [None, None],
        "features.6",
        False,
    ),
    "mobilenet_v3_small": (
        lambda: tv.mobilenet_v3_small(weights=None),
        32,
        ["features.4", "features.12"],
        [None, None],
        "features.12",
        False,
    ),
    "densenet121": (
        lambda: tv.densenet121(weights=None),
        32,
        ["features.transition2", "features.denseblock4"],
        [None, None],
        "features.denseblock4",
        False,
    ),
    "inception_v3": (
        lambda: tv.inception_v3(weights=None, aux_logits=False, init_weights=True),
        75,
        ["Mixed_5b", "Mixed_6e"],
        [None, None],
        "Mixed_6e",
        True,
    ),
    "text": (
        lambda: TinyTextTransformer(vocab_size=40, embedding_dim=16, n_heads=2),
        None,
        ["embedding", "encoder.layers.0"],
        [channels_last, channels_last],
        "encoder.layers.0",
        False,
    ),
}


def _params():
    return [pytest.param(name, marks=[pytest.mark.slow] if cfg[5] else []) for name, cfg in ARCHS.items()]


@functools.lru_cache(maxsize=2)
def _setup(name: str):
    build, size, layers, layouts, sv_layer, _ = ARCHS[name]
    torch.manual_seed(0)
    model = build().eval()
    if size is None:
        x = torch.randint(0, 40, (2, 6))
    else:
        x = torch.rand(2, 3, size, size)
    transforms = [tokens_to_grid(prefix_tokens=1) if t == "tokens" else t for t in layouts]
    return model, x, layers, layouts, transforms, sv_layer


def _modules(model):
    return dict(model.named_modules())


# ---------------------------------------------------------------------- plain-autograd references
def _grads(model: nn.Module, x: torch.Tensor, layers: List[Optional[str]]):
    """Raw source tensors and ``dz_d/dF`` for d in DIMS: ``[(F, (D, *F.shape))]`` per layer (None: x)."""
    kept: Dict[str, torch.Tensor] = {}
    mods = _modules(model)
    handles = [
        mods[name].register_forward_hook(lambda m, a, out, name=name: kept.__setitem__(name, out))
        for name in layers
        if name is not None
    ]
    xg = x.detach().clone().requires_grad_(x.is_floating_point())
    try:
        z = model(xg)
    finally:
        for h in handles:
            h.remove()
    sources = [xg if name is None else kept[name] for name in layers]
    out = []
    for f in sources:
        g = torch.stack([torch.autograd.grad(z[:, d].sum(), f, retain_graph=True)[0] for d in DIMS])
        out.append((f.detach(), g))
    return out


def _per_dim_ref(f, g, layout, method):
    """``rho_C(A_d)`` with rho_C = mean of absolute values over channels (``"abs"``), in the layout
    ``(N, C, *S)``: ``(N, D, *S)``. (The plain channel mean of a gradient is 0 wherever every path
    to the output passes a LayerNorm over the channels, as in a transformer's residual stream.)"""
    to = REF_LAYOUT[layout]
    f = to(f)
    g = torch.stack([to(gd) for gd in g])
    if method == "gradient":
        a = g
    elif method == "activation_gradient":
        a = g * f
    else:
        a = g.mean(dim=tuple(range(3, g.dim())), keepdim=True) * f
    return a.abs().mean(2).movedim(0, 1)


def _close(got, ref, rtol=1e-3):
    scale = float(ref.abs().max())
    assert scale > 0, "the reference is all zeros"
    torch.testing.assert_close(got, ref, rtol=rtol, atol=rtol * scale)


class _GuidedReLU(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return x.clamp(min=0)

    @staticmethod
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        return grad.clamp(min=0) * (x > 0)


class _GuidedReLUModule(nn.Module):
    def forward(self, x):
        return _GuidedReLU.apply(x)


def _masked_input_gradient(model, layer_name, x, target, mask, guided):
    """d logit_target / dx with the gradient at the layer's output multiplied by ``mask[target]``."""
    model = copy.deepcopy(model)
    if guided:
        for parent in list(model.modules()):
            for child_name, child in parent.named_children():
                if isinstance(child, nn.ReLU):
                    setattr(parent, child_name, _GuidedReLUModule())

    def hook(_m, _a, out):
        out.register_hook(lambda g: g * mask[target].to(g))

    handle = _modules(model)[layer_name].register_forward_hook(hook)
    xg = x.detach().clone().requires_grad_(True)
    out = model(xg)
    handle.remove()
    return torch.autograd.grad(out.gather(1, target[:, None]).sum(), xg)[0]


def _semantic_vectors_ref(feats: torch.Tensor, labels: torch.Tensor, classes: int) -> torch.Tensor:
    a = (feats.flatten(1) > 0).float()
    a_hat = a / a.norm(dim=1, keepdim=True)
    sums = torch.stack([a_hat[labels == c].sum(0) for c in range(classes)])
    return sums / sums.norm(dim=1, keepdim=True)


# ---------------------------------------------------------------------- the tests
@pytest.mark.parametrize("name", _params())
def test_embedding_attribution_matches_autograd(name):
    model, x, layers, layouts, transforms, _ = _setup(name)
    before = model_state(model)
    sources = ([] if name == "text" else [None]) + layers
    refs = _grads(model, x, sources)
    all_layouts = ([] if name == "text" else [None]) + layouts
    for method in METHODS:
        ea = EmbeddingAttribution(
            model,
            layer=sources,
            method=method,
            channel_aggregator="abs",
            upsample=None,
            reshape_transform=([] if name == "text" else [None]) + transforms,
        )
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # right layouts: no layout warning
            maps = ea.attribute(x, embedding_dims=DIMS)
        for got, (f, g), layout in zip(maps, refs, all_layouts):
            ref = _per_dim_ref(f, g, layout, method).var(1, unbiased=False)
            _close(got, ref)
    assert_same_state(before, model)


@pytest.mark.parametrize("name", _params())
def test_semantic_vector_and_semantic_attributions_match_autograd(name):
    model, x, _, _, _, sv_layer = _setup(name)
    before = model_state(model)
    labels = torch.tensor([0, 1])
    kept = []
    handle = _modules(model)[sv_layer].register_forward_hook(lambda m, a, out: kept.append(out.detach()))
    with torch.no_grad():
        model(x)
    handle.remove()
    sv = SemanticVector(model, sv_layer).fit_from_labels((x, labels))
    _close(sv.vectors_, _semantic_vectors_ref(kept[0], labels, 2), rtol=1e-5)
    if name == "text":  # integer tokens: the semantic attributions need float inputs
        with pytest.raises(TypeError, match="floating-point inputs"):
            SemanticGradientInput(model, sv_layer, sv).attribute(x, target=labels)
        assert_same_state(before, model)
        return
    mask = sv.masks(0.5).float()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        sgb = SemanticGuidedBackprop(model, sv_layer, sv)
    # only ResNet and DenseNet use nn.ReLU modules throughout (Inception calls F.relu)
    warned = any("nn.ReLU" in str(w.message) for w in caught)
    assert warned == (name not in ("resnet50", "densenet121"))
    ref = _masked_input_gradient(model, sv_layer, x, labels, mask, guided=True)
    _close(sgb.attribute(x, target=labels), ref)
    ref = _masked_input_gradient(model, sv_layer, x, labels, mask, guided=False) * x
    _close(SemanticGradientInput(model, sv_layer, sv).attribute(x, target=labels), ref)
    assert_same_state(before, model)


@pytest.mark.kernels
@pytest.mark.parametrize("name", _params())
def test_coupled_nmf_two_layers_transform_and_tcav_export(name, tmp_path):
    model, x, layers, layouts, transforms, _ = _setup(name)
    gen = torch.Generator().manual_seed(1)  # 6 examples: TCAV needs 3 per concept for its split
    x = (
        torch.randint(0, 40, (6, 6), generator=gen)
        if name == "text"
        else torch.rand(6, *x.shape[1:], generator=gen)
    )
    before = model_state(model)
    kept: Dict[str, torch.Tensor] = {}
    mods = _modules(model)
    handles = [
        mods[n].register_forward_hook(lambda m, a, out, n=n: kept.__setitem__(n, out.detach().clone()))
        for n in layers
    ]
    with torch.no_grad():
        model(x)
    for h in handles:
        h.remove()
    pooled = []
    for n, layout in zip(layers, layouts):
        t = REF_LAYOUT[layout](kept[n])
        pooled.append(t.mean(dim=tuple(range(2, t.dim()))).t())  # (C, N)
    pixels = [] if name == "text" else [x[:, c].reshape(x.shape[0], -1).t() for c in range(x.shape[1])]
    params = dict(shift="min", max_iter=15, random_state=0)
    ref = CoupledNMFConcepts(2, include_pixels=name != "text", **params).fit_matrices(pixels, pooled)
    cnmf = CoupledNMFConcepts(
        2,
        model,
        layers=layers,
        include_pixels=name != "text",
        pool="mean",
        reshape_transform=transforms,
        **params,
    ).fit(x)
    assert cnmf.layer_names_ == layers
    _close(cnmf.example_factors_, ref.example_factors_)
    _close(cnmf.transform(x), ref.transform(pixel_blocks=pixels, activation_blocks=pooled))
    concepts = cnmf.to_captum_concepts(x, k=3)
    top = cnmf.top_examples(3)
    for c, concept in enumerate(concepts):
        (batch,) = list(concept.data_iter)
        assert torch.equal(batch, x[top[c]])  # the export indexes the fit's own top examples...
    # ...which are the reference's (its factors agree only to tolerance: skip a tie within it)
    F = ref.example_factors_
    for c in range(F.shape[0]):
        order = F[c].argsort(descending=True)
        if F[c, order[2]] - F[c, order[3]] > 1e-3 * float(F.abs().max()):
            assert set(top[c].tolist()) == set(order[:3].tolist()), c
    if name != "text":
        tcav = TCAV(model, [layers[-1]], save_path=str(tmp_path))
        scores = tcav.interpret(x, [concepts], target=0)
        (per_layer,) = scores.values()
        assert torch.isfinite(per_layer[layers[-1]]["sign_count"]).all()
    assert_same_state(before, model)


@pytest.mark.parametrize("name", _params())
def test_score_curve_matches_autograd(name):
    model, x, layers, layouts, transforms, _ = _setup(name)
    before = model_state(model)
    curve = score_curve(
        model,
        None,
        layers,
        x,
        score="variance",
        method="gradient",
        channel_aggregator="abs",
        upsample=None,
        embedding_dims=DIMS,
        reshape_transform=transforms,
    )
    assert curve.layers == layers
    per_dim = [
        _per_dim_ref(f, g, layout, "gradient") for (f, g), layout in zip(_grads(model, x, layers), layouts)
    ]
    expected = torch.stack([variance_score(lambda inp, m=m: m, x) for m in per_dim])
    _close(curve.per_example, expected, rtol=1e-4)  # a 1x1 layer's score is 0: one map value
    assert_same_state(before, model)


def test_layout_warnings_on_the_architectures_without_a_transform():
    vit = _vit().eval()
    x = torch.rand(1, 3, 32, 32)
    with pytest.warns(UserWarning, match="tokens_to_grid"):
        ea = EmbeddingAttribution(vit, layer="encoder.layers.encoder_layer_5", upsample=None)
        assert ea.attribute(x, embedding_dims=[0]).shape == (1, 768)  # one value per hidden feature
    swin = tv.swin_t(weights=None).eval()
    with pytest.warns(UserWarning, match="features.3'.*reshape_transform=channels_last"):
        EmbeddingAttribution(swin, layer="features.3").attribute(torch.rand(1, 3, 64, 64), embedding_dims=[0])
