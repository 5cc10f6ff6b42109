"""strategy="forward" (Jacobian-vector products) equals the reverse strategies "loop" and "batched"
on every configuration of the strategy tests, on torchvision ResNet-18 and a ViT token layer;
strategy="auto" picks forward mode by the pass count; fallback when an op has no forward rule."""

from __future__ import annotations

import itertools
import warnings

import pytest
import torch
import torch.autograd.forward_ad as fwAD
import torchvision
from _kernels import kernel_batch
from _models import no_forward_rule_cnn
from captum.testing.helpers.basic_models import (
    BasicModel_ConvNet_One_Conv,
    BasicModel_MultiLayer_MultiInput,
    Conv1dSeqModel,
)
from torch import nn

from captum_concepts.attr import EmbeddingAttribution, ForwardModeUnsupported, choose_strategy, tokens_to_grid
from captum_concepts.attr._core.forward_mode import (
    ForwardModeStateError,
    ForwardSource,
    forward_maps,
    forward_passes,
)
from captum_concepts.data import DigitsCNN
from captum_concepts.metrics import score_curve, variance_score
from captum_concepts.testing import assert_same_state, count_hooks, model_state

METHODS = ["gradient", "activation_gradient", "gradcam"]
AGGS = ["mean", "abs", "var"]


def close(a, b, tol=1e-5):
    torch.testing.assert_close(a, b, rtol=tol, atol=tol)


def assert_strategies_agree(x, *args, tol=1e-5, call=None, **kwargs):
    """``EmbeddingAttribution(*args, **kwargs, strategy=...).attribute(x, **call)``: forward equals
    loop and batched; the loop reference is non-zero."""
    call = call or {}
    ref = EmbeddingAttribution(*args, **kwargs, strategy="loop").attribute(x, **call)
    refs = ref if isinstance(ref, (list, tuple)) else [ref]
    assert sum(r.abs().sum() for r in refs) > 0
    for strategy in ["batched", "forward"]:
        got = EmbeddingAttribution(*args, **kwargs, strategy=strategy).attribute(x, **call)
        for g, r in zip(got if isinstance(got, (list, tuple)) else [got], refs):
            close(g, r, tol)


@pytest.fixture
def x8(digits):
    return digits.x_test[:5]


# ---------------------------------------------------------------------------- digits CNN
@pytest.mark.kernels
@pytest.mark.parametrize("method", METHODS)
def test_forward_equals_reverse_every_aggregator(digits_cnn, x8, method):
    combos = list(itertools.product(AGGS, AGGS)) + [
        (lambda t, d: t.amax(d), "var"),
        ("abs", lambda t, d: t.amin(d)),
    ]
    chunks = dict(internal_batch_size=kernel_batch(5))
    for rc, rd in combos:
        assert_strategies_agree(x8, digits_cnn, "embedding", "block3.relu", method, rc, rd, call=chunks)
    per_dim = dict(return_per_dim=True, internal_batch_size=kernel_batch(7), embedding_dims=[0, 5, 9])
    assert_strategies_agree(
        x8, digits_cnn, "embedding", "block3.relu", method, "abs", upsample=None, call=per_dim
    )


@pytest.mark.kernels
def test_forward_per_dim_and_dense_source(digits_cnn, x8):
    assert_strategies_agree(
        x8,
        digits_cnn,
        "embedding",
        "block3.pool",
        "activation_gradient",
        "abs",
        "var",
        call=dict(return_per_dim=True),
    )
    for method, rc in [("activation_gradient", "abs"), ("gradient", "mean"), ("gradcam", "var")]:
        assert_strategies_agree(x8, digits_cnn, "classifier", "embedding_relu", method, rc)


@pytest.mark.kernels
def test_forward_multi_layer(digits_cnn, x8):
    layers = [None, "block1.relu", "block2.pool", "block3.conv"]
    chunks = dict(internal_batch_size=kernel_batch(8))
    for method, rc, rd in [("gradcam", "var", "var"), ("activation_gradient", "mean", "var")]:
        assert_strategies_agree(x8, digits_cnn, "embedding", layers, method, rc, rd, call=chunks)


def test_create_graph_falls_back_to_reverse_mode():
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1), nn.Softplus(), nn.Conv2d(4, 4, 3, padding=1), nn.Softplus(),
        nn.Flatten(), nn.Linear(4 * 6 * 6, 40),
    ).eval()  # fmt: skip
    x = torch.randn(3, 1, 6, 6)
    ea = EmbeddingAttribution(model, None, "1", "gradient", "mean", "var", strategy="forward")
    detached = ea.attribute(x)
    assert ea.strategy_ == "forward"
    maps = ea.attribute(x, create_graph=True)
    assert ea.strategy_ == "loop" and maps.requires_grad
    close(maps.detach(), detached)
    maps.mean().backward()
    assert model[2].weight.grad.abs().sum() > 0


# ---------------------------------------------------------------------------- Captum toy models
@pytest.mark.kernels
def test_forward_tuple_inputs_additional_args_and_layer_input():
    torch.manual_seed(0)
    model = BasicModel_MultiLayer_MultiInput().eval()
    inputs = tuple(torch.randn(4, 3) for _ in range(3))
    # its two outputs differ by a constant (equal gradients, Var_d = 0): rho_D = abs
    for kw in [dict(), dict(layer="model.linear1", attribute_to_layer_input=True)]:
        for method, rc in [("gradient", "mean"), ("activation_gradient", "abs"), ("gradcam", "var")]:
            assert_strategies_agree(
                inputs,
                model,
                None,
                method=method,
                channel_aggregator=rc,
                embedding_aggregator="abs",
                call=dict(additional_forward_args=(2,)),
                **kw,
            )


@pytest.mark.kernels
def test_forward_conv1d_sequence_model():
    torch.manual_seed(0)
    model = Conv1dSeqModel().eval()
    x = torch.randn(3, 4, 1000)
    for method, rc, rd in [("activation_gradient", "mean", "var"), ("gradcam", "abs", "var")]:
        assert_strategies_agree(x, model, None, "seq.0", method, rc, rd)


@pytest.mark.kernels
def test_forward_inplace_relu_leaves_model_unchanged():
    torch.manual_seed(0)
    plain, inplace = BasicModel_ConvNet_One_Conv().eval(), BasicModel_ConvNet_One_Conv(inplace=True).eval()
    x = torch.randn(2, 1, 4, 4) * 30 + 40
    ref = EmbeddingAttribution(plain, None, "conv1", "activation_gradient", "mean", "abs", strategy="loop")
    before = model_state(inplace)
    ea = EmbeddingAttribution(
        inplace, None, "conv1", "activation_gradient", "mean", "abs", strategy="forward"
    )
    got = ea.attribute(x)
    r = ref.attribute(x)
    assert r.abs().sum() > 0
    close(got, r)
    assert_same_state(before, inplace)
    assert count_hooks(inplace) == 0


# ---------------------------------------------------------------------------- torchvision
@pytest.mark.slow
def test_forward_resnet18():
    torch.manual_seed(0)
    model = torchvision.models.resnet18(weights=None).eval()
    x = torch.randn(2, 3, 64, 64)
    dims = list(range(0, 1000, 25))  # 40 logits: reverse loop stays cheap
    for method, rc, rd in [
        ("gradient", "mean", "var"),
        ("activation_gradient", "mean", "mean"),
        ("gradcam", "mean", "abs"),
    ]:
        layers = ["layer3", "layer4"] if method != "gradcam" else ["layer4.1.conv2"]
        assert_strategies_agree(
            x,
            model,
            None,
            layers,
            method,
            rc,
            rd,
            tol=1e-4,
            call=dict(embedding_dims=dims, return_per_dim=rd == "mean"),
        )


def _vit():
    torch.manual_seed(0)
    model = torchvision.models.vit_b_16(weights=None, image_size=32).eval()
    # torchvision zero-initialises the classification head: every logit gradient would be 0
    nn.init.normal_(model.heads.head.weight, std=0.02)
    return model


@pytest.mark.slow
def test_forward_vit_token_layer():
    model = _vit()
    x = torch.randn(2, 3, 32, 32)
    fast = torch.backends.mha.get_fastpath_enabled()
    # (N, 5, 768) tokens read as 5 "channels" of a 768-long signal; Grad-CAM: one product per token
    dims = dict(embedding_dims=list(range(0, 1000, 50)))
    layer = "encoder.layers.encoder_layer_10"
    assert_strategies_agree(
        x, model, None, layer, "gradcam", "mean", "var", upsample=None, tol=1e-4, call=dims
    )
    assert torch.backends.mha.get_fastpath_enabled() == fast


def _act_grad_reference(model, layer, x, dims, transform):
    """Plain-autograd per-dimension activation x gradient maps (rho_C = mean) at ``layer``, the
    transform applied to the activation and the gradient alike; also the layer's output."""
    store = {}
    handle = layer.register_forward_hook(lambda m, a, o: store.__setitem__("f", o))
    try:
        z = model(x)
    finally:
        handle.remove()
    ref = []
    for d in dims:
        (g,) = torch.autograd.grad(z[:, d].sum(), store["f"], retain_graph=True)
        ref.append((transform(g) * transform(store["f"])).mean(1))
    ref = torch.stack(ref, 1).detach()
    assert ref.abs().sum() > 0
    return ref, store["f"].detach()


@pytest.mark.slow
def test_forward_vit_with_a_linear_reshape_transform():
    """Tokens -> (N, C, T) without the class token: the basis is built in the transformed layout and
    mapped back by the transform's adjoint; reference: plain autograd, transform applied to the
    gradient and the activation alike."""
    model = _vit()
    x = torch.randn(2, 3, 32, 32)
    layer = model.encoder.layers.encoder_layer_10
    to_grid = lambda t: t[:, 1:].transpose(1, 2)  # noqa: E731
    dims = [3, 17, 400]
    ref, out = _act_grad_reference(model, layer, x, dims, to_grid)  # (N, 3, 4)
    passes = forward_passes(to_grid(out).shape, "activation_gradient", "mean")
    src = ForwardSource(layer, 0, out, to_grid, passes, chunk=2)
    select = lambda e: e[:, dims]  # noqa: E731
    (got,) = forward_maps(model, (x,), [src], select=select, method="activation_gradient",
                          channel_aggregator="mean")  # fmt: skip
    close(got, ref, 1e-4)


@pytest.mark.slow
def test_forward_vit_tokens_to_grid_through_embedding_attribution():
    """``EmbeddingAttribution(reshape_transform=tokens_to_grid())`` on a ViT token layer: forward
    mode equals loop and batched, and equals plain autograd with the class token dropped and the
    tokens laid out as a grid, for the activation and the gradient alike."""
    model = _vit()
    x = torch.randn(2, 3, 32, 32)
    layer = model.encoder.layers.encoder_layer_10
    dims = [3, 17, 400]
    call = dict(embedding_dims=dims, return_per_dim=True)
    kwargs = dict(
        method="activation_gradient",
        channel_aggregator="mean",
        embedding_aggregator="var",
        upsample=None,
        reshape_transform=tokens_to_grid(),
    )
    assert_strategies_agree(x, model, None, layer, tol=1e-4, call=call, **kwargs)

    def grid(t):  # (N, 1 + 4, C) -> (N, C, 2, 2)
        return t[:, 1:].transpose(1, 2).reshape(t.shape[0], t.shape[2], 2, 2)

    ref, _ = _act_grad_reference(model, layer, x, dims, grid)  # (N, 3, 2, 2)
    ea = EmbeddingAttribution(model, None, layer, strategy="forward", **kwargs)
    close(ea.attribute(x, **call), ref, 1e-4)
    assert ea.strategy_ == "forward"


# ---------------------------------------------------------------------------- auto
def test_auto_picks_forward_by_pass_count(digits_cnn, x8):
    # block3.relu is 4x4 = 16 pixels < D = 32 embedding dims: forward; the 8x8 input (64 pixels): loop
    ea = EmbeddingAttribution(digits_cnn, "embedding", [None, "block3.relu"], "gradient", "mean", "var")
    auto = ea.attribute(x8)
    assert ea.strategy_ == ["loop", "forward"]
    loop = EmbeddingAttribution(digits_cnn, "embedding", [None, "block3.relu"], strategy="loop").attribute(x8)
    for a, b in zip(auto, loop):
        close(a, b)
    ea.attribute(x8, embedding_dims=range(10))  # 16 passes > 10 dims
    assert ea.strategy_ == ["loop", "loop"]
    # Grad-CAM needs one product per channel: block3.relu has 32 channels, not fewer than 32 dims
    ea = EmbeddingAttribution(digits_cnn, "embedding", "block3.relu", "gradcam", "var", "var")
    ea.attribute(x8)
    assert ea.strategy_ == "loop"
    ea = EmbeddingAttribution(digits_cnn, "embedding", "block3.pool", "gradcam", "var", "var")  # 32 channels
    ea.attribute(x8, embedding_dims=range(4))
    assert ea.strategy_ == "loop"
    ea = EmbeddingAttribution(digits_cnn, "embedding", "block3.relu", "gradient", "mean", "mean")
    ea.attribute(x8)
    assert ea.strategy_ == "linear"  # one backward pass of mean_d z_d
    ea.attribute(x8, create_graph=True, return_per_dim=True)
    assert ea.strategy_ == "loop"


def test_choose_strategy_rule():
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert forward_passes((4, 256, 7, 7), "gradient", "mean") == 49
    assert forward_passes((4, 256, 7, 7), "gradcam", "var") == 256
    assert forward_passes((4, 256, 7, 7), "gradient", "abs") == 256 * 49
    assert forward_passes((4, 512), "activation_gradient", "mean") == 1
    assert choose_strategy("auto", 512, 49, cpu) == "forward"
    assert choose_strategy("auto", 512, 49, cuda) == "forward"
    assert choose_strategy("auto", 512, 784, cpu) == "loop"
    assert choose_strategy("auto", 512, 784, cuda) == "batched"
    assert choose_strategy("auto", 512, 49, cpu, create_graph=True) == "loop"
    assert choose_strategy("auto", 512, 49, cpu, training=True) == "loop"
    assert choose_strategy("forward", 8, 49, cpu) == "forward"
    assert choose_strategy("forward", 8, 49, cuda, create_graph=True) == "batched"
    assert choose_strategy("batched", 512, 49, cpu) == "batched"
    with pytest.raises(ValueError, match="eval mode"):
        choose_strategy("forward", 8, 49, cpu, training=True)


def test_forward_needs_eval_mode():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 3, 3), nn.BatchNorm2d(3), nn.Flatten(), nn.Linear(3 * 16, 40)).train()
    x = torch.randn(4, 1, 6, 6)
    ea = EmbeddingAttribution(model, None, "1", strategy="forward", eval_mode=False)
    with pytest.raises(ValueError, match="eval mode"):
        ea.attribute(x)
    ea = EmbeddingAttribution(model, None, "1", eval_mode=False)
    ea.attribute(x)
    assert ea.strategy_ == "loop"  # 16 pixels < 40 dims, but extra passes would update the statistics


def test_auto_falls_back_when_an_op_has_no_forward_rule():
    torch.manual_seed(0)
    model = no_forward_rule_cnn()
    x = torch.randn(2, 1, 6, 6)
    ea = EmbeddingAttribution(model, None, "0", "activation_gradient", "mean", "var")
    before = model_state(model)
    got = ea.attribute(x)
    assert ea.strategy_ == "loop"  # chose forward (16 pixels < 40), fell back
    ref = EmbeddingAttribution(
        model, None, "0", "activation_gradient", "mean", "var", strategy="loop"
    ).attribute(x)
    assert ref.abs().sum() > 0
    close(got, ref)
    with pytest.raises(ForwardModeUnsupported, match="forward-mode"):
        EmbeddingAttribution(
            model, None, "0", "activation_gradient", "mean", "var", strategy="forward"
        ).attribute(x)
    assert_same_state(before, model)
    assert count_hooks(model) == 0


def test_attention_kernel_settings_restored_after_an_error():
    fast = torch.backends.mha.get_fastpath_enabled()
    model = no_forward_rule_cnn()
    with pytest.raises(ForwardModeUnsupported):
        EmbeddingAttribution(model, None, "0", strategy="forward").attribute(torch.randn(2, 1, 6, 6))
    assert torch.backends.mha.get_fastpath_enabled() == fast


# ---------------------------------------------------------------------------- backward hooks
def _small_cnn():
    torch.manual_seed(0)
    return DigitsCNN(width=4, embedding_dim=32).eval()


XH = torch.rand(3, 1, 8, 8, generator=torch.Generator().manual_seed(3))


def test_auto_honours_a_backward_hook_that_scales_the_gradient():
    """A full backward hook in the head (between the source and the embedding) scales the
    gradient by 3: reverse mode calls it, forward mode never would. ``auto`` (which picks forward
    mode without the hook: 16 pixels < 32 dimensions) runs reverse mode and says why; its maps are
    the reverse maps, 9 x the maps without the hook (the variance over dimensions)."""
    model = _small_cnn()
    ea = EmbeddingAttribution(model, "embedding", "block3.relu")
    plain = ea.attribute(XH)
    assert ea.strategy_ == "forward" and plain.abs().sum() > 0
    handle = model.block3.pool.register_full_backward_hook(lambda m, grad_in, grad_out: (3 * grad_in[0],))
    try:
        before = model_state(model)
        plan = ea.plan(XH)
        assert plan.strategy == "loop"
        assert "backward hooks" in plan.reason and "block3.pool" in plan.reason
        got = ea.attribute(XH)
        assert ea.strategy_ == "loop" and ea.plan_ == plan
        ref = EmbeddingAttribution(model, "embedding", "block3.relu", strategy="loop").attribute(XH)
        close(got, ref)
        close(ref, 9 * plain)  # the hook ran
        with pytest.raises(ValueError, match="backward hooks.*block3.pool"):
            EmbeddingAttribution(model, "embedding", "block3.relu", strategy="forward").attribute(XH)
        assert_same_state(before, model)  # the user's hook stays, ours are gone
    finally:
        handle.remove()


def test_a_raising_backward_hook_raises_under_auto():
    model = _small_cnn()

    class HookRan(Exception):
        pass

    def hook(module, grad_in, grad_out):
        raise HookRan("the user's backward hook ran")

    handle = model.block3.pool.register_full_backward_hook(hook)
    try:
        before = model_state(model)
        with pytest.raises(HookRan):
            EmbeddingAttribution(model, "embedding", "block3.relu").attribute(XH)
        assert_same_state(before, model)
    finally:
        handle.remove()


def _full(model):
    return model.embedding.register_full_backward_hook(lambda m, gi, go: None)


def _legacy(model):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return model.embedding.register_backward_hook(lambda m, gi, go: None)


HOOKS = {
    "full": (_full, "module 'embedding'"),
    "legacy": (_legacy, "module 'embedding'"),
    "pre": (
        lambda m: m.embedding.register_full_backward_pre_hook(lambda mod, go: None),
        "module 'embedding'",
    ),
    "global": (
        lambda m: torch.nn.modules.module.register_module_full_backward_hook(lambda mod, gi, go: None),
        "global module backward hooks",
    ),
    "global pre": (
        lambda m: torch.nn.modules.module.register_module_full_backward_pre_hook(lambda mod, go: None),
        "global module backward hooks",
    ),
    "parameter": (lambda m: m.embedding.weight.register_hook(lambda g: g), "parameter 'embedding.weight'"),
}


@pytest.mark.parametrize("kind", list(HOOKS))
def test_every_kind_of_backward_hook_rules_out_forward_mode(kind):
    model = _small_cnn()
    ea = EmbeddingAttribution(model, "embedding", "block3.relu")
    assert ea.plan(XH).strategy == "forward"
    register, where = HOOKS[kind]
    handle = register(model)
    try:
        plan = ea.plan(XH)
        assert plan.strategy == "loop" and where in plan.reason, plan.reason
        with pytest.raises(ValueError, match=f"strategy=\"forward\" cannot honour .*{where}"):
            EmbeddingAttribution(model, "embedding", "block3.relu", strategy="forward").attribute(XH)
    finally:
        handle.remove()
    assert ea.plan(XH).strategy == "forward"


def _leave_dual_level_in_cpp_only():
    """What an interrupt between torch's C++ and Python bookkeeping of a forward-AD level leaves."""
    torch._C._enter_dual_level()
    return lambda: torch._C._exit_dual_level(level=0)


def _open_dual_level():
    """The caller holds a forward-AD level open (or another thread does, outside our lock)."""
    level = fwAD.dual_level()
    level.__enter__()
    return lambda: level.__exit__(None, None, None)


@pytest.mark.parametrize("state", [_leave_dual_level_in_cpp_only, _open_dual_level])
def test_torchs_broken_forward_ad_state_is_not_blamed_on_the_model(state):
    """``"forward"`` raises ForwardModeStateError saying the state is torch's, whatever the model,
    not "failed on this model"; ``"auto"`` warns, runs reverse mode and says why in its plan."""
    model = _small_cnn()
    ref = EmbeddingAttribution(model, "embedding", "block3.relu", strategy="loop").attribute(XH)
    assert ref.abs().sum() > 0
    cleanup = state()
    try:
        with pytest.raises(ForwardModeStateError, match="whatever the model") as info:
            EmbeddingAttribution(model, "embedding", "block3.relu", strategy="forward").attribute(XH)
        assert "on this model" not in str(info.value)
        ea = EmbeddingAttribution(model, "embedding", "block3.relu")
        with pytest.warns(UserWarning, match="forward-mode AD state"):
            got = ea.attribute(XH)
        assert ea.strategy_ == "loop" and "forward-AD state" in ea.plan_.reason
        close(got, ref)
    finally:
        cleanup()
    ea = EmbeddingAttribution(model, "embedding", "block3.relu")
    close(ea.attribute(XH), ref)
    assert ea.strategy_ == "forward"


# ---------------------------------------------------------------------------- scores
def test_scores_use_the_same_choice(digits_cnn, x8):
    ea = EmbeddingAttribution(digits_cnn, "embedding", "block3.relu")
    vs = variance_score(ea, x8)
    assert ea.strategy_ == "forward"
    ref = variance_score(EmbeddingAttribution(digits_cnn, "embedding", "block3.relu", strategy="loop"), x8)
    assert ref.abs().sum() > 0
    close(vs, ref)
    # the curve mixes: forward at the deep layers, one reverse sweep for the input and block1
    layers = [None, "block1.relu", "block3.relu"]
    auto = score_curve(digits_cnn, "embedding", layers, x8, score="variance")
    loop = score_curve(digits_cnn, "embedding", layers, x8, score="variance", strategy="loop")
    close(auto.per_example, loop.per_example)


# ---------------------------------------------------------------------------- CUDA
@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_forward_on_cuda_equals_batched():
    torch.manual_seed(0)
    model = torchvision.models.resnet18(weights=None).cuda().eval()
    x = torch.randn(8, 3, 112, 112, device="cuda")
    ea = EmbeddingAttribution(model, "avgpool", ["layer3", "layer4"], "activation_gradient", "mean", "var")
    got = ea.attribute(x)
    # layer3: 49 pixels and a deep head; layer4: a pooling head, whose reverse products are
    # nearly free while a forward chunk repeats the whole network below it
    assert ea.strategy_ == ["forward", "batched"]
    ref = EmbeddingAttribution(
        model, "avgpool", ["layer3", "layer4"], "activation_gradient", "mean", "var", strategy="batched"
    ).attribute(x)
    for g, r in zip(got, ref):
        assert g.is_cuda and r.abs().sum() > 0
        # TF32 convolutions: relative, not bitwise, agreement
        torch.testing.assert_close(g, r, rtol=1e-2, atol=1e-3 * float(r.abs().max()))
