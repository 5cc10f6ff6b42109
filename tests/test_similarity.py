"""SimilarityAttribution: hand-computed autograd references, Captum equivalence, symmetry,
correspondence sums, two towers, model left unchanged."""

from __future__ import annotations

import pytest
import torch
from captum.attr import InputXGradient, LayerGradCam
from torch import nn

from captum_concepts.attr import SimilarityAttribution
from captum_concepts.testing import assert_same_state, model_state


def _encoder(bias: bool = True, seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(2, 4, 3, padding=1, bias=bias),
        nn.ReLU(),
        nn.Conv2d(4, 5, 3, padding=1, bias=bias),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(5 * 4 * 4, 6, bias=bias),
    ).eval()


def _pair(n: int = 3, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 2, 8, 8, generator=g), torch.rand(n, 2, 8, 8, generator=g)


def _score(za, zb, similarity):
    return (za * zb).sum(1) if similarity == "dot" else torch.cosine_similarity(za, zb, dim=1)


def _reference_input(enc, a, b, similarity):
    """Plain autograd: sum over channels of x * ds/dx for each side."""
    a, b = a.clone().requires_grad_(True), b.clone().requires_grad_(True)
    ga, gb = torch.autograd.grad(_score(enc(a), enc(b), similarity).sum(), (a, b))
    return (a * ga).sum(1).detach(), (b * gb).sum(1).detach()


@pytest.mark.parametrize("similarity", ["dot", "cosine"])
def test_input_maps_equal_hand_computed_gradient_x_input(similarity):
    enc = _encoder()
    a, b = _pair()
    ra, rb = _reference_input(enc, a, b, similarity)
    assert ra.abs().max() > 1e-4 and rb.abs().max() > 1e-4
    ma, mb = SimilarityAttribution(enc, similarity=similarity).attribute(a, b)
    assert ma.shape == (3, 8, 8) and mb.shape == (3, 8, 8)
    torch.testing.assert_close(ma, ra, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(mb, rb, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("similarity", ["dot", "cosine"])
def test_equals_captum_input_x_gradient_on_the_pair(similarity):
    enc = _encoder()
    a, b = _pair()
    ca, cb = InputXGradient(lambda x, y: _score(enc(x), enc(y), similarity)).attribute((a, b))
    ma, mb = SimilarityAttribution(enc, similarity=similarity).attribute(a, b)
    torch.testing.assert_close(ma, ca.sum(1), rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(mb, cb.sum(1), rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("similarity", ["dot", "cosine"])
def test_layer_maps_equal_hand_computed_gradient_x_activation(similarity):
    enc = _encoder()
    tail, head = enc[:4], enc[4:]
    a, b = _pair()
    fa, fb = tail(a).detach().requires_grad_(True), tail(b).detach().requires_grad_(True)
    ga, gb = torch.autograd.grad(_score(head(fa), head(fb), similarity).sum(), (fa, fb))
    ra, rb = (fa * ga).sum(1).detach(), (fb * gb).sum(1).detach()
    assert ra.abs().max() > 1e-4
    sa = SimilarityAttribution(enc, layer="3", similarity=similarity, upsample=None)
    ma, mb = sa.attribute(a, b)
    torch.testing.assert_close(ma, ra, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(mb, rb, rtol=1e-4, atol=1e-6)
    # gradcam: Captum's LayerGradCam of s w.r.t. side a's layer (b fixed), channel sum, no ReLU
    zb = enc(b).detach()
    gc = LayerGradCam(lambda x: _score(enc(x), zb, similarity), enc[3]).attribute(a, relu_attributions=False)
    got, _ = SimilarityAttribution(
        enc, layer="3", method="gradcam", similarity=similarity, upsample=None
    ).attribute(a, b)
    torch.testing.assert_close(got, gc[:, 0], rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("similarity", ["dot", "cosine"])
def test_swapping_a_and_b_swaps_the_maps(similarity):
    enc = _encoder()
    a, b = _pair()
    sa = SimilarityAttribution(enc, layer="1", similarity=similarity)
    ma, mb = sa.attribute(a, b)
    sb, sa_ = sa.attribute(b, a)
    assert ma.abs().max() > 1e-5
    torch.testing.assert_close(ma, sa_, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(mb, sb, rtol=1e-5, atol=1e-7)
    same_a, same_b = sa.attribute(a, a)
    torch.testing.assert_close(same_a, same_b, rtol=1e-5, atol=1e-7)


def test_cosine_weights_are_the_exact_gradient():
    from captum_concepts.attr._core.similarity import similarity_weights

    za, zb = torch.randn(4, 7, dtype=torch.float64), torch.randn(4, 7, dtype=torch.float64)
    za.requires_grad_(True)
    zb.requires_grad_(True)
    ga, gb = torch.autograd.grad(torch.cosine_similarity(za, zb, dim=1).sum(), (za, zb))
    wa, wb = similarity_weights(za.detach(), zb.detach(), "cosine")
    torch.testing.assert_close(wa, ga)
    torch.testing.assert_close(wb, gb)


@pytest.mark.parametrize("similarity", ["dot", "cosine"])
def test_correspondence_sums_to_the_plain_maps_and_the_similarity_on_a_homogeneous_encoder(similarity):
    enc = _encoder(bias=False)  # ReLU, max-pool, no biases: positively homogeneous, Euler holds
    a, b = _pair(2)
    sa = SimilarityAttribution(enc, layer="3", similarity=similarity, upsample=None)
    m = sa.correspondence(a, b)
    assert m.shape == (2, 64, 64) and m.abs().max() > 0
    s = sa.similarity_scores(a, b)
    torch.testing.assert_close(m.sum((1, 2)), s, rtol=1e-4, atol=1e-7)
    if similarity == "dot":
        ma, mb = sa.attribute(a, b)
        torch.testing.assert_close(m.sum(2), ma.reshape(2, -1), rtol=1e-4, atol=1e-7)
        torch.testing.assert_close(m.sum(1), mb.reshape(2, -1), rtol=1e-4, atol=1e-7)


def test_correspondence_is_the_product_of_per_dimension_maps():
    enc = _encoder()
    a, b = _pair(2)
    sa = SimilarityAttribution(enc, layer="4", similarity="dot", upsample=None)
    ma, mb = sa.per_dim_maps(a, b)
    assert ma.shape == (2, 6, 4, 4)
    m = sa.correspondence(a, b)
    ref = torch.stack([ma[i].reshape(6, -1).t() @ mb[i].reshape(6, -1) for i in range(2)])
    torch.testing.assert_close(m, ref)


class _TextTower(nn.Module):
    """Token ids and a per-example scale (an additional forward argument) -> embedding."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(3)
        self.lookup = nn.Embedding(20, 5)
        self.proj = nn.Linear(5, 6)

    def forward(self, tokens, scale):
        return self.proj(self.lookup(tokens).mean(1)) * scale[:, None]


@pytest.mark.parametrize("similarity", ["dot", "cosine"])
def test_two_towers_with_different_inputs_and_forward_args(similarity):
    image, text = _encoder(), _TextTower().eval()
    a, _ = _pair(3)
    tokens = torch.randint(0, 20, (3, 4))
    scale = torch.tensor([1.0, 2.0, 0.5])
    sa = SimilarityAttribution(
        image, layer="1", model_b=text, layer_b="lookup", similarity=similarity, upsample=None
    )
    ma, mb = sa.attribute(a, tokens, additional_forward_args_b=(scale,))
    # (N, tokens, features) is channels-first to EmbeddingAttribution: summed over dim 1
    assert ma.shape == (3, 8, 8) and mb.shape == (3, 5)
    # reference: s as a function of image layer 1 and of the token embeddings
    fa = image[:2](a).detach().requires_grad_(True)
    emb = text.lookup(tokens).detach().requires_grad_(True)
    zb = text.proj(emb.mean(1)) * scale[:, None]
    ga, gb = torch.autograd.grad(_score(image[2:](fa), zb, similarity).sum(), (fa, emb))
    torch.testing.assert_close(ma, (fa * ga).sum(1).detach(), rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(mb, (emb * gb).sum(1).detach(), rtol=1e-4, atol=1e-6)
    assert mb.abs().max() > 1e-5


class _Scaled(nn.Module):
    """Two inputs and an extra forward argument, to check tuples and Captum's argument rule."""

    def __init__(self) -> None:
        super().__init__()
        self.enc = _encoder()

    def forward(self, x, y, scale):
        return self.enc(x * y) * scale[:, None]


def test_tuple_inputs_and_additional_forward_args_shared_encoder():
    model = _Scaled().eval()
    a, b = _pair(3)
    a2, b2 = _pair(3, seed=5)
    scale = torch.tensor([1.0, 2.0, 3.0])
    ma, mb = SimilarityAttribution(model, similarity="dot").attribute(
        (a, a2), (b, b2), additional_forward_args=scale
    )
    assert isinstance(ma, tuple) and len(ma) == 2 and ma[0].shape == (3, 8, 8)
    xs = [t.clone().requires_grad_(True) for t in (a, a2, b, b2)]
    s = (model(xs[0], xs[1], scale) * model(xs[2], xs[3], scale)).sum()
    grads = torch.autograd.grad(s, xs)
    refs = [(x * g).sum(1).detach() for x, g in zip(xs, grads)]
    for got, ref in zip(list(ma) + list(mb), refs):
        torch.testing.assert_close(got, ref, rtol=1e-4, atol=1e-6)


def test_embedding_layer_and_model_left_unchanged_also_on_error():
    enc = _encoder().train()
    before = model_state(enc)
    a, b = _pair()
    with pytest.warns(UserWarning, match="training mode"):
        SimilarityAttribution(enc, embedding_layer="5", layer="1").attribute(a, b)
    assert_same_state(before, enc)
    with pytest.raises(ValueError):
        SimilarityAttribution(enc, embedding_layer="5", layer="1").attribute(a, b[:2])
    assert_same_state(before, enc)
    bad = SimilarityAttribution(enc, embedding_layer="5", layer="1")
    with pytest.raises(RuntimeError):
        bad.attribute(a[:, :1], b[:, :1])  # wrong channel count: the forward pass fails
    assert_same_state(before, enc)


def test_bad_arguments_name_the_argument():
    enc = _encoder()
    with pytest.raises(ValueError, match="similarity"):
        SimilarityAttribution(enc, similarity="l2")
    with pytest.raises(ValueError, match="method"):
        SimilarityAttribution(enc, method="lrp")
    with pytest.raises(ValueError, match="layer"):
        SimilarityAttribution(enc, layer="nope")
    with pytest.raises(ValueError, match="both towers"):
        SimilarityAttribution(enc, layer="1", model_b=enc, layer_b="1")
    with pytest.raises(ValueError, match="same number of pairs"):
        SimilarityAttribution(enc).attribute(*_pair(2)[:1], _pair(3)[1])
    with pytest.raises(ValueError, match="different shapes"):
        SimilarityAttribution(enc, layer="1").attribute(torch.rand(2, 2, 8, 8), torch.rand(2, 2, 16, 16))


def test_digits_model_embedding_similarity(digits, digits_cnn):
    x = digits.x_test[:8]
    sa = SimilarityAttribution(digits_cnn, embedding_layer="embedding_relu", layer="block2.relu")
    ma, mb = sa.attribute(x[:4], x[4:])
    assert ma.shape == (4, 8, 8) and torch.isfinite(ma).all() and ma.abs().max() > 0


# ---------------------------------------------------------------------- gradient entries, output form
def test_gradient_entries_refuse_inference_mode_with_its_cause():
    enc = _encoder()
    a, b = _pair(2)
    sa = SimilarityAttribution(enc, layer="3", upsample=None)
    with torch.inference_mode():
        a_inference = a.clone()
    for entry in (sa.attribute, sa.per_dim_maps, sa.correspondence):
        with torch.inference_mode(), pytest.raises(RuntimeError, match="inside torch.inference_mode"):
            entry(a, b)
        with pytest.raises(RuntimeError, match="inputs_a is an inference tensor"):
            entry(a_inference, b)
    with torch.no_grad():  # no_grad is fine: gradients are switched on inside
        ma, _ = sa.attribute(a, b)
    assert ma.abs().max() > 1e-5
    torch.testing.assert_close(ma, sa.attribute(a, b)[0])


def _per_dim_reference(model, xs, extra):
    """Plain autograd: for every embedding dimension d, sum over channels of x * dz_d/dx, per input."""
    xs = [x.clone().requires_grad_(True) for x in xs]
    z = model(*xs, *extra)
    per_dim = [[] for _ in xs]
    for d in range(z.shape[1]):
        for k, g in enumerate(torch.autograd.grad(z[:, d].sum(), xs, retain_graph=True)):
            per_dim[k].append((xs[k] * g).sum(1).detach())
    return [torch.stack(m, 1) for m in per_dim]  # (N, D, *S) per input


def test_per_dim_maps_and_correspondence_follow_captums_form():
    model = _Scaled().eval()
    a, b = _pair(2)
    a2, b2 = _pair(2, seed=5)
    scale = torch.tensor([1.0, 2.0])
    sa = SimilarityAttribution(model, similarity="dot")
    ma, mb = sa.per_dim_maps((a, a2), (b, b2), additional_forward_args=scale)
    # the inputs as source: tuples in, tuples out (every input, not only the first)
    assert isinstance(ma, tuple) and isinstance(mb, tuple) and len(ma) == len(mb) == 2
    refs_a = _per_dim_reference(model, (a, a2), (scale,))
    refs_b = _per_dim_reference(model, (b, b2), (scale,))
    assert all(r.abs().max() > 1e-5 for r in refs_a + refs_b)
    for got, ref in zip(list(ma) + list(mb), refs_a + refs_b):
        assert got.shape == (2, 6, 8, 8)
        torch.testing.assert_close(got, ref, rtol=1e-4, atol=1e-6)
    m = sa.correspondence((a, a2), (b, b2), additional_forward_args=scale)
    assert isinstance(m, tuple) and len(m) == 2 and all(isinstance(row, tuple) and len(row) == 2 for row in m)
    for i in range(2):
        for j in range(2):
            ref = torch.einsum("ndp,ndq->npq", refs_a[i].flatten(2), refs_b[j].flatten(2))
            assert m[i][j].shape == (2, 64, 64)
            torch.testing.assert_close(m[i][j], ref, rtol=1e-4, atol=1e-6)
    # a source layer: the layer's own form (one output tensor -> a tensor), whatever the inputs
    sl = SimilarityAttribution(model, layer="enc.3", similarity="dot", upsample=None)
    la, lb = sl.per_dim_maps((a, a2), (b, b2), additional_forward_args=scale)
    assert isinstance(la, torch.Tensor) and la.shape == (2, 6, 8, 8) and isinstance(lb, torch.Tensor)
    assert isinstance(sl.correspondence((a, a2), (b, b2), additional_forward_args=scale), torch.Tensor)
    ta, tb = sl.attribute((a, a2), (b, b2), additional_forward_args=scale)
    assert isinstance(ta, torch.Tensor) and ta.shape == (2, 8, 8) and isinstance(tb, torch.Tensor)
    # a tensor side and a tuple side: one level of tuples, for the tuple side
    two = SimilarityAttribution(_encoder(), model_b=model, similarity="dot")
    mixed = two.correspondence(a, (b, b2), additional_forward_args_b=(scale,))
    assert isinstance(mixed, tuple) and len(mixed) == 2 and mixed[1].shape == (2, 64, 64)
    ref_a = _per_dim_reference(_encoder(), (a,), ())[0]
    ref = torch.einsum("ndp,ndq->npq", ref_a.flatten(2), refs_b[1].flatten(2))
    torch.testing.assert_close(mixed[1], ref, rtol=1e-4, atol=1e-6)


# ---------------------------------------------------------------------- per-tower transforms
class _ChannelsLastTower(nn.Module):
    """Conv stem, then a channels-last linear stage (N, H, W, C), mean-pooled to an embedding."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(4)
        self.conv = nn.Conv2d(2, 4, 3, padding=1)
        self.mlp = nn.Linear(4, 5)
        self.head = nn.Linear(5, 6)

    def forward(self, x):
        return self.head(torch.relu(self.mlp(self.conv(x).permute(0, 2, 3, 1))).mean((1, 2)))


def _tower_references(image, text, a, tokens, scale, similarity):
    """Plain autograd: F * ds/dF at image.mlp (N, H, W, C) and at text.lookup (N, L, E)."""
    fa = image.mlp(image.conv(a).permute(0, 2, 3, 1)).detach().requires_grad_(True)
    za = image.head(torch.relu(fa).mean((1, 2)))
    emb = text.lookup(tokens).detach().requires_grad_(True)
    zb = text.proj(emb.mean(1)) * scale[:, None]
    ga, gb = torch.autograd.grad(_score(za, zb, similarity).sum(), (fa, emb))
    return (fa * ga).detach(), (emb * gb).detach()


def test_tower_reshape_transforms_one_per_tower():
    import warnings

    from captum_concepts.attr import channels_last

    image, text = _ChannelsLastTower().eval(), _TextTower().eval()
    a, _ = _pair(3)
    tokens = torch.randint(0, 20, (3, 4))
    scale = torch.tensor([1.0, 2.0, 0.5])
    ra, rb = _tower_references(image, text, a, tokens, scale, "cosine")
    assert ra.abs().max() > 1e-5 and rb.abs().max() > 1e-5
    towers = dict(model=image, layer="mlp", model_b=text, layer_b="lookup", upsample=None)
    # reshape_transform: every source layer of both towers -> per-token maps (N, L) on side b
    sa = SimilarityAttribution(**towers, reshape_transform=channels_last)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no layout warning: both layers are read channels-last
        ma, mb = sa.attribute(a, tokens, additional_forward_args_b=(scale,))
    torch.testing.assert_close(ma, ra.sum(-1), rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(mb, rb.sum(-1), rtol=1e-4, atol=1e-6)
    # one per tower: channels-last on the image tower only, side b read as (N, C=L, E)
    sa = SimilarityAttribution(**towers, tower_reshape_transforms=(channels_last, None))
    with pytest.warns(UserWarning, match="looks channels-last"):
        ma, mb = sa.attribute(a, tokens, additional_forward_args_b=(scale,))
    torch.testing.assert_close(ma, ra.sum(-1), rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(mb, rb.sum(1), rtol=1e-4, atol=1e-6)
    pa, pb = sa.per_dim_maps(a, tokens, additional_forward_args_b=(scale,))
    assert pa.shape == (3, 6, 8, 8) and pb.shape == (3, 6, 5)
    # the former two-item list still means one per tower, with a DeprecationWarning
    with pytest.warns(DeprecationWarning, match="tower_reshape_transforms=\\(for_a, for_b\\)"):
        old = SimilarityAttribution(**towers, reshape_transform=[channels_last, None])
    with pytest.warns(UserWarning, match="looks channels-last"):
        oa, ob = old.attribute(a, tokens, additional_forward_args_b=(scale,))
    torch.testing.assert_close(oa, ma)
    torch.testing.assert_close(ob, mb)


def test_tower_reshape_transforms_bad_uses_name_the_argument():
    from captum_concepts.attr import channels_last

    enc = _encoder()
    with pytest.raises(ValueError, match="tower_reshape_transforms needs two towers"):
        SimilarityAttribution(enc, layer="1", tower_reshape_transforms=(None, None))
    towers = dict(model=enc, layer="1", model_b=_TextTower(), layer_b="lookup")
    with pytest.raises(ValueError, match="not both"):
        SimilarityAttribution(
            **towers, reshape_transform=channels_last, tower_reshape_transforms=(None, None)
        )
    with pytest.raises(ValueError, match="expected one per tower \\(2\\)"):
        SimilarityAttribution(**towers, tower_reshape_transforms=[None, None, None])
    with pytest.raises(TypeError, match="tower_reshape_transforms\\[0\\] must be None or a callable"):
        SimilarityAttribution(**towers, tower_reshape_transforms=("channels_last", None))
    with pytest.raises(TypeError, match="tower_reshape_transforms must be a pair"):
        SimilarityAttribution(**towers, tower_reshape_transforms=channels_last)
    with pytest.raises(ValueError, match="reshape_transform is a list of 2 entries, expected one per layer"):
        SimilarityAttribution(enc, layer="1", reshape_transform=[None, None])  # shared: one layer
