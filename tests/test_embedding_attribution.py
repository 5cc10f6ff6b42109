"""EmbeddingAttribution (SPEC §1): equivalence with Captum at D = 1, with a slow per-dimension
reference at D > 1, hand-computed aggregators, upsampling, multi-layer, create_graph, errors."""

from __future__ import annotations

import copy
import itertools

import pytest
import torch
from _kernels import kernel_batch
from captum.attr import (
    GradientAttribution,
    InputXGradient,
    LayerAttribution,
    LayerGradCam,
    LayerGradientXActivation,
    Saliency,
)
from captum.testing.helpers.basic_models import (
    BasicModel_ConvNet_One_Conv,
    BasicModel_MultiLayer,
    BasicModel_MultiLayer_MultiInput,
    BasicModelWithReusedModules,
    Conv1dSeqModel,
)
from torch import nn

from captum_concepts.attr import EmbeddingAttribution, aggregate, upsample_maps
from captum_concepts.testing import assert_same_state, model_state

METHODS = ["gradient", "activation_gradient", "gradcam"]
AGGS = ["mean", "abs", "var"]

# plain-torch aggregators, written independently of captum_concepts.attr.aggregate
REF = {
    "mean": lambda t, d: t.mean(d),
    "abs": lambda t, d: t.abs().mean(d),
    "var": lambda t, d: ((t - t.mean(d, keepdim=True)) ** 2).mean(d),
}


def close(a, b, tol=1e-5):
    torch.testing.assert_close(a, b, rtol=tol, atol=tol)


@pytest.fixture
def x8(digits):
    return digits.x_test[:5]


def reference_per_channel(model, x, emb_layer, src_layer, method):
    """One forward and one backward per embedding dimension: A_d of shape (N, D, C, H, W)."""
    out = []
    d_total = None
    d = 0
    while d_total is None or d < d_total:
        store = {}
        h1 = src_layer.register_forward_hook(lambda m, a, o, s=store: s.__setitem__("f", o))
        h2 = emb_layer.register_forward_hook(lambda m, a, o, s=store: s.__setitem__("z", o))
        try:
            model(x.clone().requires_grad_())
        finally:
            h1.remove()
            h2.remove()
        f, z = store["f"], store["z"].flatten(1)
        d_total = z.shape[1]
        (g,) = torch.autograd.grad(z[:, d].sum(), f)
        f = f.detach()
        if method == "gradient":
            a = g
        elif method == "activation_gradient":
            a = g * f
        else:
            a = g.mean((2, 3), keepdim=True) * f
        out.append(a)
        d += 1
    return torch.stack(out, 1)


# ---------------------------------------------------------------------------- aggregators
def test_aggregators_by_hand_on_2x2x2():
    t = torch.tensor([[[1.0, 2.0], [3.0, 4.0]], [[-1.0, 0.0], [5.0, -2.0]]])
    close(aggregate(t, 0, "mean"), torch.tensor([[0.0, 1.0], [4.0, 1.0]]))
    close(aggregate(t, 0, "abs"), torch.tensor([[1.0, 1.0], [4.0, 3.0]]))
    close(aggregate(t, 0, "var"), torch.tensor([[1.0, 1.0], [1.0, 9.0]]))
    close(aggregate(t, 2, "mean"), torch.tensor([[1.5, 3.5], [-0.5, 1.5]]))
    close(aggregate(t, -1, "abs"), torch.tensor([[1.5, 3.5], [0.5, 3.5]]))
    close(aggregate(t, 2, "var"), torch.tensor([[0.25, 0.25], [0.25, 12.25]]))
    close(aggregate(t, 1, lambda u, dim: u.amax(dim)), torch.tensor([[3.0, 4.0], [5.0, 0.0]]))


def test_aggregator_errors():
    t = torch.ones(2, 3)
    with pytest.raises(ValueError, match="how must be one of"):
        aggregate(t, 0, "median")
    with pytest.raises(ValueError, match="must map a tensor"):
        aggregate(t, 0, lambda u, dim: u)
    with pytest.raises(ValueError, match="out of range"):
        aggregate(t, 2, "mean")


# ---------------------------------------------------------------------------- upsampling
def test_nearest_upsampling_copies_superpixels():
    maps = torch.tensor([[[1.0, 2.0], [3.0, 4.0]]])
    up = upsample_maps(maps, (4, 6))
    assert up.shape == (1, 4, 6)
    for i in range(2):
        for j in range(2):
            assert torch.all(up[0, 2 * i : 2 * i + 2, 3 * j : 3 * j + 3] == maps[0, i, j])
    per_dim = torch.arange(8.0).reshape(1, 2, 2, 2)
    close(upsample_maps(per_dim, (4, 4)), per_dim.repeat_interleave(2, -1).repeat_interleave(2, -2))
    close(upsample_maps(torch.tensor([[1.0, 5.0]]), (4,)), torch.tensor([[1.0, 1.0, 5.0, 5.0]]))
    # a dense layer is one pixel: copied over the whole input
    close(
        upsample_maps(torch.tensor([2.0, 3.0]), (2, 2), spatial_dims=0),
        torch.tensor([2.0, 3.0])[:, None, None].expand(2, 2, 2),
    )
    bil = upsample_maps(torch.full((1, 2, 2), 7.0), (5, 5), "bilinear")
    close(bil, torch.full((1, 5, 5), 7.0))
    assert upsample_maps(maps, (4, 4), None) is maps
    with pytest.raises(ValueError, match="spatial dimension"):
        upsample_maps(torch.ones(2, 5), (4, 4), spatial_dims=1)


# ---------------------------------------------------------------------------- D = 1 vs Captum
@pytest.mark.kernels
@pytest.mark.parametrize("lname", ["block2.relu", "block3.pool"])
def test_d1_equals_captum_layer_methods(digits_cnn, x8, lname):
    layer = dict(digits_cnn.named_modules())[lname]
    k = 3
    for mult, method in [(False, "gradient"), (True, "activation_gradient")]:
        ref = LayerGradientXActivation(digits_cnn, layer, multiply_by_inputs=mult).attribute(x8, target=k)
        for agg in AGGS:
            ea = EmbeddingAttribution(
                digits_cnn,
                None,
                lname,
                method,
                channel_aggregator=agg,
                embedding_aggregator="mean",
                upsample=None,
            )
            close(ea.attribute(x8, embedding_dims=[k]), REF[agg](ref, 1))
    # Grad-CAM: per-channel contributions (attr_dim_summation=False), no ReLU
    gc = LayerGradCam(digits_cnn, layer)
    per_channel = gc.attribute(x8, target=k, attr_dim_summation=False, relu_attributions=False)
    summed = gc.attribute(x8, target=k, relu_attributions=False)[:, 0]
    for agg in AGGS:
        ea = EmbeddingAttribution(digits_cnn, None, lname, "gradcam", agg, "mean", upsample=None)
        close(ea.attribute(x8, embedding_dims=k), REF[agg](per_channel, 1))
    ea = EmbeddingAttribution(digits_cnn, None, lname, "gradcam", "mean", "mean", upsample=None)
    close(ea.attribute(x8, embedding_dims=k) * per_channel.shape[1], summed)  # Captum sums channels


@pytest.mark.kernels
def test_d1_equals_captum_at_input(digits_cnn, x8):
    k = 7
    sal = Saliency(digits_cnn).attribute(x8, target=k, abs=False)
    ixg = InputXGradient(digits_cnn).attribute(x8, target=k)
    ea = EmbeddingAttribution(digits_cnn, embedding_aggregator="mean")
    close(ea.attribute(x8, embedding_dims=[k]), sal[:, 0])
    ea = EmbeddingAttribution(digits_cnn, method="activation_gradient", embedding_aggregator="mean")
    close(ea.attribute(x8, embedding_dims=[k]), ixg[:, 0])


# ---------------------------------------------------------------------------- D > 1 vs reference loop
@pytest.mark.kernels
@pytest.mark.parametrize("method", METHODS)
def test_every_aggregator_equals_per_dimension_reference(digits_cnn, x8, method):
    ref_a = reference_per_channel(digits_cnn, x8, digits_cnn.embedding, digits_cnn.block3.relu, method)
    combos = list(itertools.product(AGGS, AGGS)) + [
        (lambda t, d: t.amax(d), "var"),
        ("abs", lambda t, d: t.amin(d)),
    ]
    # every combination batched; the loop strategy on a few (it runs the same post-processing)
    runs = [(c, "batched") for c in combos] + [(c, "loop") for c in combos[::4]]
    for (rc, rd), strategy in runs:
        ea = EmbeddingAttribution(digits_cnn, "embedding", "block3.relu", method, rc, rd, strategy=strategy)
        per_dim_ref = (REF[rc] if isinstance(rc, str) else rc)(ref_a, 2)  # (N, D, 4, 4)
        ref = (REF[rd] if isinstance(rd, str) else rd)(per_dim_ref, 1)
        ref = ref.repeat_interleave(2, -1).repeat_interleave(2, -2)  # nearest 4x4 -> 8x8
        close(ea.attribute(x8, internal_batch_size=kernel_batch(5)), ref)
    ea = EmbeddingAttribution(digits_cnn, "embedding", "block3.relu", method, "abs", upsample=None)
    per_dim = ea.attribute(
        x8, return_per_dim=True, internal_batch_size=kernel_batch(7), embedding_dims=[0, 5, 9]
    )
    close(per_dim, REF["abs"](ref_a, 2)[:, [0, 5, 9]])


@pytest.mark.kernels
def test_return_per_dim_shapes_and_consistency(digits_cnn, x8):
    ea = EmbeddingAttribution(digits_cnn, "embedding", "block3.pool", "activation_gradient", "abs", "var")
    per_dim = ea.attribute(x8, return_per_dim=True)
    assert per_dim.shape == (5, 32, 8, 8)
    close(aggregate(per_dim, 1, "var"), ea.attribute(x8))  # nearest upsampling commutes with rho_D
    ea = EmbeddingAttribution(digits_cnn, "embedding", "block3.pool", upsample=None)
    assert ea.attribute(x8).shape == (5, 2, 2)
    # a dense layer is K channels of one pixel: one value per example, copied over the input
    dense = EmbeddingAttribution(digits_cnn, "classifier", "embedding_relu", "activation_gradient", "abs")
    m = dense.attribute(x8)
    assert m.shape == (5, 8, 8)
    close(m, m[:, :1, :1].expand(5, 8, 8))
    assert EmbeddingAttribution(digits_cnn, "classifier", "embedding_relu", upsample=None).attribute(
        x8
    ).shape == (5,)


# ---------------------------------------------------------------------------- multi-layer, cost
@pytest.mark.kernels
def test_multi_layer_equals_single_layers_with_one_forward(digits_cnn, x8, monkeypatch):
    layers = [None, "block1.relu", "block2.pool", "block3.conv"]
    calls = {"forward": 0, "grad": 0}
    real_grad = torch.autograd.grad

    def counting_grad(*args, **kwargs):
        calls["grad"] += 1
        return real_grad(*args, **kwargs)

    def count_forward(module, args):
        calls["forward"] += 1

    chunk = kernel_batch(8)
    for method, rc, rd in [("gradcam", "var", "var"), ("activation_gradient", "mean", "mean")]:
        singles = [
            EmbeddingAttribution(digits_cnn, "embedding", lay, method, rc, rd).attribute(x8) for lay in layers
        ]
        calls.update(forward=0, grad=0)
        handle = digits_cnn.register_forward_pre_hook(count_forward)
        monkeypatch.setattr(torch.autograd, "grad", counting_grad)
        try:
            ea = EmbeddingAttribution(digits_cnn, "embedding", layers, method, rc, rd, strategy="batched")
            multi = ea.attribute(x8, internal_batch_size=chunk)
        finally:
            monkeypatch.undo()
            handle.remove()
        assert isinstance(multi, list) and len(multi) == 4
        for a, b in zip(multi, singles):
            close(a, b)
        assert calls["forward"] == 1
        # linear case: ONE backward; non-linear batched: one per chunk of the 32 dims, for all layers
        assert calls["grad"] == (1 if rd == "mean" else -(-32 // chunk))


# ---------------------------------------------------------------------------- create_graph
@pytest.mark.parametrize("strategy", ["loop", "batched"])
def test_create_graph_gives_parameter_gradients(strategy):
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1),
        nn.Softplus(),
        nn.Conv2d(4, 4, 3, padding=1),
        nn.Softplus(),
        nn.Flatten(),
        nn.Linear(4 * 6 * 6, 5),
    )
    x = torch.randn(3, 1, 6, 6)
    ea = EmbeddingAttribution(model, None, "1", "gradient", "var", "var", strategy=strategy)
    detached = ea.attribute(x)
    assert not detached.requires_grad
    maps = ea.attribute(x, create_graph=True)
    assert maps.requires_grad
    close(maps.detach(), detached)
    maps.mean().backward()
    for name in ["2.weight", "5.weight"]:
        grad = dict(model.named_parameters())[name].grad
        assert grad is not None and grad.abs().sum() > 0


# ---------------------------------------------------------------------------- Captum toy models
def test_tuple_inputs_and_additional_forward_args():
    torch.manual_seed(0)
    model = BasicModel_MultiLayer_MultiInput().eval()
    inputs = tuple(torch.randn(4, 3) for _ in range(3))
    sal = Saliency(model).attribute(inputs, target=1, abs=False, additional_forward_args=(2,))
    ea = EmbeddingAttribution(model, embedding_aggregator="mean")
    maps = ea.attribute(inputs, additional_forward_args=(2,), embedding_dims=1)
    assert isinstance(maps, tuple) and len(maps) == 3
    for m, s in zip(maps, sal):
        assert m.shape == (4,)  # dense input: K channels of one pixel
        close(m, s.mean(1))
    # D = 2, non-linear, to a layer input: the per-dimension reference from Captum, one call per dim
    lgxa = LayerGradientXActivation(model, model.model.linear1)
    per_dim = torch.stack(
        [
            lgxa.attribute(inputs, target=d, additional_forward_args=(2,), attribute_to_layer_input=True)
            for d in range(2)
        ],
        1,
    )
    ea = EmbeddingAttribution(
        model, None, "model.linear1", "activation_gradient", "abs", "var", attribute_to_layer_input=True
    )
    layer_maps = ea.attribute(inputs, additional_forward_args=(2,))  # the layer's one input: a tensor
    close(layer_maps, REF["var"](REF["abs"](per_dim, 2), 1))


def test_conv1d_sequence_model():
    torch.manual_seed(0)
    model = Conv1dSeqModel().eval()
    x = torch.randn(3, 4, 1000)
    ref = LayerGradientXActivation(model, model.seq[0]).attribute(x, target=(1, 0))
    ea = EmbeddingAttribution(model, None, "seq.0", "activation_gradient", "var", "mean")
    close(ea.attribute(x, embedding_dims=[1]), REF["var"](ref, 1))  # flattened index 1 = output (1, 0)
    both = EmbeddingAttribution(model, None, model.seq[0], "gradcam", "mean", "var").attribute(x)
    assert both.shape == (3, 1000)


def test_inplace_relu_does_not_corrupt_captured_activations():
    torch.manual_seed(0)
    plain, inplace = BasicModel_ConvNet_One_Conv().eval(), BasicModel_ConvNet_One_Conv(inplace=True).eval()
    x = torch.randn(2, 1, 4, 4) * 30 + 40
    a = EmbeddingAttribution(plain, None, "conv1", "activation_gradient", "var", "abs").attribute(x)
    before = model_state(inplace)
    b = EmbeddingAttribution(inplace, None, "conv1", "activation_gradient", "var", "abs").attribute(x)
    close(a, b)
    assert a.abs().sum() > 0
    assert_same_state(before, inplace)


def test_captum_protocol(digits_cnn):
    ea = EmbeddingAttribution(digits_cnn, "embedding", "block2.relu")
    assert isinstance(ea, GradientAttribution) and isinstance(ea, LayerAttribution)
    assert ea.layer is digits_cnn.block2.relu and not ea.has_convergence_delta()
    assert not ea.multiplies_by_inputs
    assert EmbeddingAttribution(digits_cnn, method="activation_gradient").multiplies_by_inputs
    assert EmbeddingAttribution(digits_cnn, layer=["block1.conv"], method="gradcam").multiplies_by_inputs


# ---------------------------------------------------------------------------- safety and errors
def test_model_unchanged_after_exception_midway(digits_cnn, x8):
    digits_cnn.train()

    def boom(module, args, out):
        raise RuntimeError("boom")

    handle = digits_cnn.block3.conv.register_forward_hook(boom)
    before = model_state(digits_cnn)
    ea = EmbeddingAttribution(digits_cnn, "embedding", "block2.relu")
    with pytest.warns(UserWarning, match="training mode"), pytest.raises(RuntimeError, match="boom"):
        ea.attribute(x8)
    assert_same_state(before, digits_cnn)
    handle.remove()
    before = model_state(digits_cnn)
    with pytest.warns(UserWarning), pytest.raises(ValueError, match="does not depend"):
        EmbeddingAttribution(digits_cnn, "block1.conv", "block3.conv").attribute(x8)
    assert_same_state(before, digits_cnn)


def test_bad_input_raises_clear_errors(digits_cnn, x8):
    for kwargs, match in [
        ({"method": "saliency"}, "method must be one of"),
        ({"channel_aggregator": "max"}, "channel_aggregator must be one of"),
        ({"embedding_aggregator": 3}, "embedding_aggregator must be one of"),
        ({"upsample": "cubic"}, "upsample must be one of"),
        ({"strategy": "vmap"}, "strategy must be one of"),
        ({"layer": "block2.rleu"}, "Did you mean"),
        ({"layer": []}, "empty list"),
    ]:
        with pytest.raises(ValueError, match=match):
            EmbeddingAttribution(digits_cnn, **kwargs)
    ea = EmbeddingAttribution(digits_cnn, "embedding", "block2.relu")
    with pytest.raises(ValueError, match="D = 0"):
        ea.attribute(x8, embedding_dims=[])
    with pytest.raises(ValueError, match="out of range"):
        ea.attribute(x8, embedding_dims=[0, 32])
    with pytest.raises(ValueError, match="internal_batch_size"):
        ea.attribute(x8, internal_batch_size=0)
    with pytest.raises(ValueError, match="does not depend"):
        EmbeddingAttribution(digits_cnn, "block2.conv", "block3.relu").attribute(x8)
    zero = nn.Sequential(nn.Flatten(), nn.Linear(64, 0))
    with pytest.raises(ValueError, match="D = 0"):
        EmbeddingAttribution(zero).attribute(x8)
    # a layer the forward pass never reaches (multi_relu is unused without multi_input_module)
    model = BasicModel_MultiLayer().eval()
    with pytest.raises(ValueError, match="never reached"):
        EmbeddingAttribution(model, None, "multi_relu").attribute(torch.randn(2, 3))
    reused = BasicModelWithReusedModules().eval()
    with pytest.raises(ValueError, match="run 2 times"):
        EmbeddingAttribution(reused, None, "relu").attribute(torch.randn(2, 3))
    with pytest.raises(TypeError, match="must be a torch.Tensor"):
        ea.attribute([1, 2])


def test_does_not_mutate_shared_model(trained_digits, x8):
    model = copy.deepcopy(trained_digits.model)
    before = model_state(model)
    EmbeddingAttribution(model, "embedding", ["block1.relu", "block3.relu"], "gradcam", "abs").attribute(
        x8, create_graph=True
    )
    assert_same_state(before, model)


def test_eval_mode_false_keeps_training_mode_without_warning(recwarn):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 16), nn.Dropout(0.5), nn.Linear(16, 4)).train()
    x = torch.rand(3, 6)
    kwargs = dict(method="gradient", embedding_aggregator="mean")
    with pytest.warns(UserWarning, match="training mode"):
        in_eval = EmbeddingAttribution(model, **kwargs).attribute(x)
    assert model.training
    recwarn.clear()
    train_maps = [EmbeddingAttribution(model, eval_mode=False, **kwargs).attribute(x) for _ in range(2)]
    assert not [w for w in recwarn if "training mode" in str(w.message)]
    assert model.training
    # dropout stays active: two calls differ, and differ from the eval-mode map
    assert not torch.equal(train_maps[0], train_maps[1])
    model.eval()
    assert torch.allclose(EmbeddingAttribution(model, **kwargs).attribute(x), in_eval)


# ---------------------------------------------------------------------- issue 27.5: Captum's target
def _logit_cnn():
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1), nn.Softplus(), nn.Conv2d(4, 6, 3, padding=1), nn.Softplus(),
        nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(24, 5),
    ).eval()  # fmt: skip


@pytest.mark.parametrize("strategy", ["loop", "forward"])
def test_target_has_captums_meaning_for_the_model_output(strategy):
    """target=t (one per example) explains logit t_n of example n: Captum's
    LayerGradientXActivation with the same target, averaged over channels (the layer has the
    input's resolution, so no upsampling)."""
    model = _logit_cnn()
    torch.manual_seed(1)
    x = torch.randn(4, 1, 6, 6)
    target = [3, 0, 4, 3]
    ea = EmbeddingAttribution(model, layer="1", method="activation_gradient", strategy=strategy)
    got = ea.attribute(x, target=target, show_progress=False)
    want = LayerGradientXActivation(model, model[1]).attribute(x, target=target).mean(1)
    assert want.abs().min() > 0
    close(got, want)
    for t in (torch.tensor(target), target):
        close(ea.attribute(x, target=t, show_progress=False), want)
    # one int for the batch: embedding_dims=[t] under a mean (embedding_aggregator is not used)
    mean = EmbeddingAttribution(model, layer="1", method="activation_gradient", embedding_aggregator="mean")
    close(ea.attribute(x, target=3, show_progress=False), mean.attribute(x, embedding_dims=[3]))
    per_dim = ea.attribute(x, target=target, return_per_dim=True, show_progress=False)
    assert per_dim.shape == (4, 1, 6, 6)
    close(per_dim[:, 0], want)


def test_target_on_the_inputs_is_the_plain_gradient():
    model = _logit_cnn()
    torch.manual_seed(2)
    x = torch.randn(3, 1, 6, 6)
    target = torch.tensor([1, 2, 0])
    got = EmbeddingAttribution(model).attribute(x, target=target, show_progress=False)
    xr = x.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(model(xr).gather(1, target[:, None]).sum(), xr)
    assert grad.abs().sum() > 0
    close(got, grad[:, 0])
    close(got, Saliency(model).attribute(x, target=target, abs=False)[:, 0])


def test_target_misuse_says_what_to_pass():
    model = _logit_cnn()
    x = torch.randn(2, 1, 6, 6)
    with pytest.raises(ValueError, match=r"needs embedding_layer=None.*embedding_dims="):
        EmbeddingAttribution(model, embedding_layer="5", layer="1").attribute(x, target=1)
    with pytest.raises(ValueError, match="not both"):
        EmbeddingAttribution(model).attribute(x, target=1, embedding_dims=[1])
    with pytest.raises(TypeError, match="tuple targets"):
        EmbeddingAttribution(model).attribute(x, target=(1, 2))
    with pytest.raises(ValueError, match=r"expected one index per example, \(2,\)"):
        EmbeddingAttribution(model).attribute(x, target=[1, 2, 3])
    with pytest.raises(ValueError, match=r"target \[7\] out of range .* D = 5"):
        EmbeddingAttribution(model).attribute(x, target=7, show_progress=False)
