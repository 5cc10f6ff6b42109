"""reshape_transform: token and channels-last layers, against plain-autograd references."""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn
from torchvision.ops.misc import Permute

from captum_concepts.attr import EmbeddingAttribution, channels_last, tokens_to_grid
from captum_concepts.concept import CoupledNMFConcepts
from captum_concepts.data import TinyTextTransformer
from captum_concepts.metrics import score_curve, variance_score
from captum_concepts.testing import assert_same_state, model_state


class ChannelsLastNet(nn.Module):
    """Conv stem, then a ConvNeXt/Swin-like channels-last stage (N, H, W, C)."""

    def __init__(self, c: int = 6, d: int = 4) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, c, 3, padding=1)
        self.permute = Permute([0, 2, 3, 1])
        self.norm = nn.LayerNorm(c)
        self.mlp = nn.Linear(c, c)
        self.act = nn.GELU()
        self.head = nn.Linear(c, d)

    def forward(self, x):
        h = self.act(self.mlp(self.norm(self.permute(self.conv(x)))))
        return self.head(h.mean(dim=(1, 2)))


class TokenNet(nn.Module):
    """A tiny vision transformer: 2x2 patches of an 8x8 image, a class token, two encoder layers
    (the output reads the class token only, so the last layer's patch tokens get no gradient)."""

    def __init__(self, c: int = 8, d: int = 4) -> None:
        super().__init__()
        self.patch = nn.Conv2d(3, c, 2, stride=2)
        self.cls = nn.Parameter(torch.randn(1, 1, c))
        layer = nn.TransformerEncoderLayer(c, 2, 16, dropout=0.0, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)
        self.head = nn.Linear(c, d)

    def forward(self, x):
        t = self.patch(x).flatten(2).transpose(1, 2)
        t = torch.cat([self.cls.expand(x.shape[0], -1, -1), t], dim=1)
        return self.head(self.encoder(t)[:, 0])


def _layer_output_grads(model, layer, x):
    """Plain autograd: the layer output F (raw layout) and dz_d/dF for every d, ``(D, *F.shape)``."""
    kept = []
    handle = layer.register_forward_hook(lambda m, a, out: kept.append(out))
    try:
        z = model(x)
    finally:
        handle.remove()
    f = kept[0]
    grads = torch.stack(
        [torch.autograd.grad(z[:, d].sum(), f, retain_graph=True)[0] for d in range(z.shape[1])]
    )
    return f.detach(), grads


def _var(t, dim):
    return t.var(dim, unbiased=False)


# ---------------------------------------------------------------------- the transforms
def test_tokens_to_grid_hand_computed():
    t = torch.arange(2 * 5 * 3, dtype=torch.float32).reshape(2, 5, 3)  # 1 class token + 2x2 grid, C=3
    grid = tokens_to_grid(prefix_tokens=1)(t)
    assert grid.shape == (2, 3, 2, 2)
    # channel c at grid (i, j) is token 1 + 2 i + j
    for i in range(2):
        for j in range(2):
            assert torch.equal(grid[:, :, i, j], t[:, 1 + 2 * i + j, :])
    rect = tokens_to_grid(prefix_tokens=2, grid_size=(1, 3))(t)
    assert rect.shape == (2, 3, 1, 3) and torch.equal(rect[0, :, 0, 2], t[0, 4])
    assert tokens_to_grid(0, 1)(t[:, :1]).shape == (2, 3, 1, 1)


def test_tokens_to_grid_errors():
    with pytest.raises(ValueError, match="do not form a square grid; pass grid_size"):
        tokens_to_grid(prefix_tokens=0)(torch.zeros(1, 6, 2))
    with pytest.raises(ValueError, match="grid_size=\\(2, 2\\) holds 4 tokens"):
        tokens_to_grid(grid_size=2)(torch.zeros(1, 6, 2))
    with pytest.raises(ValueError, match="expects token layer outputs"):
        tokens_to_grid()(torch.zeros(1, 3, 4, 4))
    with pytest.raises(ValueError, match="prefix_tokens must be an int >= 0"):
        tokens_to_grid(prefix_tokens=-1)
    with pytest.raises(ValueError, match="grid_size\\[1\\] must be an int >= 1"):
        tokens_to_grid(grid_size=(2, 0))
    with pytest.raises(ValueError, match="grid_size must be a positive int or a pair"):
        tokens_to_grid(grid_size=(2, 2, 2))
    with pytest.raises(TypeError, match="prefix_tokens must be an int"):
        tokens_to_grid(prefix_tokens=True)
    assert tokens_to_grid(1, 3) == tokens_to_grid(1, (3, 3)) and "prefix_tokens=1" in repr(tokens_to_grid())


def test_channels_last_hand_computed():
    x = torch.arange(24.0).reshape(1, 2, 3, 4)  # (N, H, W, C)
    y = channels_last(x)
    assert y.shape == (1, 4, 2, 3) and y[0, 3, 1, 2] == x[0, 1, 2, 3]
    seq = torch.arange(6.0).reshape(1, 3, 2)  # (N, L, C)
    assert torch.equal(channels_last(seq), seq.transpose(1, 2))
    with pytest.raises(ValueError, match="at least one spatial"):
        channels_last(torch.zeros(2, 3))


# ---------------------------------------------------------------------- EmbeddingAttribution
@pytest.mark.parametrize("layer", ["norm", "mlp"])
@pytest.mark.parametrize("method", ["gradient", "activation_gradient", "gradcam"])
def test_channels_last_layer_matches_autograd(layer, method):
    torch.manual_seed(0)
    model = ChannelsLastNet().eval()
    x = torch.randn(2, 3, 5, 5)
    f, g = _layer_output_grads(model, getattr(model, layer), x)  # f (N, H, W, C), g (D, N, H, W, C)
    if method == "gradient":
        a = g
    elif method == "activation_gradient":
        a = g * f
    else:
        a = g.mean(dim=(2, 3), keepdim=True) * f
    ref = _var(a.mean(-1), 0)  # rho_C over the LAST axis, rho_D = var
    assert ref.abs().max() > 1e-6
    before = model_state(model)
    ea = EmbeddingAttribution(model, layer=layer, method=method, reshape_transform=channels_last)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no layout warning once the transform is given
        maps = ea.attribute(x)
    assert maps.shape == (2, 5, 5)
    torch.testing.assert_close(maps, ref, rtol=1e-4, atol=1e-6)
    assert_same_state(before, model)
    per_dim = ea.attribute(x, return_per_dim=True)
    torch.testing.assert_close(per_dim, a.mean(-1).movedim(0, 1), rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("layer", ["permute", "norm", "mlp", "act"])
def test_channels_last_layer_without_transform_warns(layer):
    torch.manual_seed(0)
    model = ChannelsLastNet().eval()
    ea = EmbeddingAttribution(model, layer=layer)
    with pytest.warns(UserWarning, match="looks channels-last.*reshape_transform=channels_last"):
        ea.attribute(torch.randn(1, 3, 5, 5))


def test_channels_first_layer_does_not_warn():
    torch.manual_seed(0)
    model = ChannelsLastNet().eval()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        EmbeddingAttribution(model, layer="conv").attribute(torch.randn(1, 3, 5, 5))


def test_token_layer_matches_autograd():
    torch.manual_seed(0)
    model = TokenNet().eval()
    x = torch.randn(2, 3, 8, 8)
    layer = model.encoder.layers[0]
    f, g = _layer_output_grads(model, layer, x)  # (N, 1 + 16, C)
    patches = (g * f)[:, :, 1:].mean(-1)  # (D, N, 16): rho_C over channels, class token dropped
    ref = _var(patches, 0).reshape(2, 4, 4)
    ref = ref.repeat_interleave(2, 1).repeat_interleave(2, 2)  # nearest upsampling of 2x2 patches
    assert ref.abs().max() > 1e-8
    ea = EmbeddingAttribution(
        model, layer="encoder.layers.0", method="activation_gradient", reshape_transform=tokens_to_grid(1)
    )
    torch.testing.assert_close(ea.attribute(x), ref, rtol=1e-4, atol=1e-8)
    with pytest.warns(UserWarning, match="tokens_to_grid"):
        EmbeddingAttribution(model, layer="encoder.layers.0", upsample=None).attribute(x)


def test_text_model_per_token_maps():
    torch.manual_seed(0)
    model = TinyTextTransformer(vocab_size=30, embedding_dim=8, n_heads=2).eval()
    tokens = torch.randint(0, 30, (2, 7))
    f, g = _layer_output_grads(model, model.embedding, tokens)  # (N, L, E)
    ref = _var((g * f).mean(-1), 0)  # (N, L)
    assert ref.abs().max() > 1e-8
    before = model_state(model)
    ea = EmbeddingAttribution(
        model, layer="embedding", method="activation_gradient", reshape_transform=channels_last
    )
    maps = ea.attribute(tokens)
    assert maps.shape == (2, 7)
    torch.testing.assert_close(maps, ref, rtol=1e-4, atol=1e-8)
    assert_same_state(before, model)
    with pytest.warns(UserWarning, match="reshape_transform=channels_last for one value per token"):
        assert EmbeddingAttribution(model, layer="embedding").attribute(tokens).shape == (2, 8)


def test_integer_inputs_error_shows_the_per_token_path():
    model = TinyTextTransformer(vocab_size=30, embedding_dim=8, n_heads=2).eval()
    with pytest.raises(TypeError, match="reshape_transform=channels_last.*maps \\(N, L\\)"):
        EmbeddingAttribution(model).attribute(torch.randint(0, 30, (2, 7)))


def test_transform_list_aligned_with_layers():
    torch.manual_seed(0)
    model = ChannelsLastNet().eval()
    x = torch.randn(2, 3, 5, 5)
    both = EmbeddingAttribution(
        model, layer=["conv", "mlp", None], reshape_transform=[None, channels_last, None]
    )
    conv, mlp, inp = both.attribute(x)
    torch.testing.assert_close(conv, EmbeddingAttribution(model, layer="conv").attribute(x))
    ref = EmbeddingAttribution(model, layer="mlp", reshape_transform=channels_last).attribute(x)
    torch.testing.assert_close(mlp, ref)
    torch.testing.assert_close(inp, EmbeddingAttribution(model).attribute(x))
    with pytest.raises(
        ValueError, match="reshape_transform is a list of 1 entries, expected one per layer \\(2\\)"
    ):
        EmbeddingAttribution(model, layer=["conv", "mlp"], reshape_transform=[channels_last])
    with pytest.raises(TypeError, match="reshape_transform must be None or a callable"):
        EmbeddingAttribution(model, layer="mlp", reshape_transform="channels_last")


def test_transform_with_a_wrong_batch_size_is_a_clear_error():
    model = ChannelsLastNet().eval()
    ea = EmbeddingAttribution(model, layer="mlp", reshape_transform=lambda t: t[:1].movedim(-1, 1))
    before = model_state(model)
    with pytest.raises(
        ValueError, match="reshape_transform of layer 'mlp' must return a tensor \\(N, C, \\*S\\)"
    ):
        ea.attribute(torch.randn(2, 3, 5, 5))
    assert_same_state(before, model)


# ---------------------------------------------------------------------- scores and coupled NMF
def test_score_curve_passes_the_transform_on():
    torch.manual_seed(0)
    model = ChannelsLastNet().eval()
    x = torch.randn(3, 3, 5, 5)
    curve = score_curve(
        model, None, ["conv", "mlp"], x, score="variance", method="gradient",
        reshape_transform=[None, channels_last],
    )  # fmt: skip
    ea = EmbeddingAttribution(model, layer="mlp", reshape_transform=channels_last)
    torch.testing.assert_close(curve.per_example[1], variance_score(ea, x))
    f, g = _layer_output_grads(model, model.mlp, x)
    per_dim = g.mean(-1).movedim(0, 1)  # (N, D, H, W), gradient method, rho_C over the last axis
    torch.testing.assert_close(variance_score(lambda inp: per_dim, x), curve.per_example[1])


def test_coupled_nmf_pools_channels_last_layers_over_space():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), Permute([0, 2, 3, 1]), nn.ReLU()).eval()
    x = torch.rand(6, 3, 5, 5)
    with torch.no_grad():
        act = model(x)  # (N, H, W, C), non-negative
    cnmf = CoupledNMFConcepts(
        2,
        model,
        layers=["2"],
        pool="mean",
        include_pixels=False,
        max_iter=20,
        reshape_transform=channels_last,
    ).fit(x)
    assert cnmf.layer_shapes_ == [(4,)]
    ref = CoupledNMFConcepts(2, include_pixels=False, max_iter=20).fit_matrices(
        [], [act.mean(dim=(1, 2)).t()]
    )
    torch.testing.assert_close(cnmf.example_factors_, ref.example_factors_)
    torch.testing.assert_close(
        cnmf.transform(x), ref.transform(pixel_blocks=[], activation_blocks=[act.mean(dim=(1, 2)).t()])
    )


def test_coupled_nmf_warns_when_it_pools_a_channels_last_layer():
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), Permute([0, 2, 3, 1]), nn.ReLU()).eval()
    x = torch.rand(4, 3, 5, 5)
    with pytest.warns(UserWarning, match="'2' is pooled per channel, but the output .* looks channels-last"):
        CoupledNMFConcepts(2, model, layers=["2"], pool="mean", include_pixels=False, max_iter=2).fit(x)


# ---------------------------------------------------------------------- one layout module
def test_numpy_integers_are_accepted_by_tokens_to_grid():
    np = pytest.importorskip("numpy")
    t = torch.randn(2, 1 + 6, 3)
    fn = tokens_to_grid(prefix_tokens=np.int64(1), grid_size=(np.int32(2), np.int64(3)))
    assert fn == tokens_to_grid(1, (2, 3)) and repr(fn) == "tokens_to_grid(prefix_tokens=1, grid_size=(2, 3))"
    torch.testing.assert_close(fn(t), tokens_to_grid(1, (2, 3))(t))
    assert tokens_to_grid(np.int64(0), np.int64(2))(t[:, 3:]).shape == (2, 3, 2, 2)


@pytest.mark.parametrize("strategy", ["auto", "batched", "forward"])
def test_every_path_checks_the_transform_output(strategy):
    """A transform that returns a tuple (a forgotten unpacking) or the wrong batch size is named as
    such on every path: the strategy probe, reverse mode and forward mode's vjp."""
    model = ChannelsLastNet().eval()
    x = torch.randn(2, 3, 5, 5)
    before = model_state(model)
    bad_transforms = [
        (lambda t: (t.movedim(-1, 1),), "got tuple"),  # a tuple instead of a tensor
        (lambda t: t[:1].movedim(-1, 1), "got \\(1,"),  # the wrong batch size
    ]
    for bad, got in bad_transforms:
        ea = EmbeddingAttribution(model, layer="mlp", strategy=strategy, reshape_transform=bad)
        with pytest.raises(ValueError, match=f"reshape_transform of layer 'mlp' must return a tensor.*{got}"):
            ea.attribute(x)
        assert_same_state(before, model)


def test_one_expansion_rule_for_every_caller():
    from captum_concepts._utils.layout import expand_per_layer

    assert expand_per_layer(None, 2, "reshape_transform") == [None, None]
    assert expand_per_layer(channels_last, 3, "reshape_transform") == [channels_last] * 3
    assert expand_per_layer((None, channels_last), 2, "reshape_transform") == [None, channels_last]
    with pytest.raises(ValueError, match="t is a list of 3 entries, expected one per tower \\(2\\)"):
        expand_per_layer([None] * 3, 2, "t", per="tower")
    with pytest.raises(TypeError, match="reshape_transform\\[1\\] must be None or a callable"):
        expand_per_layer([None, "channels_last"], 2, "reshape_transform")
    # the same rule in the concept estimators and the score curves
    model = ChannelsLastNet().eval()
    with pytest.raises(ValueError, match="reshape_transform is a list of 1 entries, expected one per layer"):
        cnmf = CoupledNMFConcepts(2, model, layers=["conv", "mlp"], reshape_transform=[None])
        cnmf.fit(torch.rand(2, 3, 5, 5))
    with pytest.raises(ValueError, match="reshape_transform is a list of 1 entries, expected one per layer"):
        score_curve(model, None, ["conv", "mlp"], torch.rand(2, 3, 5, 5), reshape_transform=[None])
