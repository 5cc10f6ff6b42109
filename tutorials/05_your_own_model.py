# ---
# jupyter:
#   jupytext:
#     formats: py:percent,ipynb
#     text_representation:
#       extension: .py
#       format_name: percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # Your own model: token, channels-last and text layers
#
# Every method in `captum_concepts` reads a layer's output as `(N, C, *S)`: channels in
# dimension 1, positions after it. That is how convolutional networks lay out their feature maps,
# but not how
#
# - a **vision transformer** does: its encoder layers output tokens `(N, 1 + T, C)`, a class
#   token followed by `T` patch tokens;
# - **Swin** and **ConvNeXt** do inside their stages: channels last, `(N, H, W, C)`;
# - a **text model** does: its embedding lookup and encoder give `(N, L, E)`, one vector per token.
#
# Such a layer needs a `reshape_transform`, with the convention of pytorch-grad-cam (a callable that
# takes the layer's output `(N, ...)` and returns `(N, C, *S)`, applied to the activations and to
# the gradients alike), so the functions you wrote for it work unchanged. Two ready-made ones cover
# the common cases: `tokens_to_grid(prefix_tokens=1)` and `channels_last`. Without one, a layer that
# is recognisably channels-last triggers a warning, and the maps are taken over the wrong axes.
#
# **All networks below have random weights** (nothing can be downloaded here). The code is what you
# would run on your trained model; the maps, scores and concepts of an untrained network carry
# **no meaning** about what a trained one looks at.

# %%
import os
import warnings

import matplotlib.pyplot as plt
import torch
import torchvision.models as tv
from torch import nn

from captum_concepts.attr import EmbeddingAttribution, channels_last, tokens_to_grid
from captum_concepts.concept import CoupledNMFConcepts, SemanticVector
from captum_concepts.data import TinyTextTransformer
from captum_concepts.metrics import score_curve

if os.environ.get("PYTEST_XDIST_WORKER"):  # CI runs the notebooks in parallel: one thread each
    torch.set_num_threads(1)
torch.manual_seed(0)
images = torch.rand(2, 3, 64, 64)  # stand-ins for your images, in [0, 1]

# %% [markdown]
# ## A vision transformer: token layers
#
# torchvision's `vit_b_16` at 64x64 pixels has a 4x4 grid of patch tokens plus the class token, so
# `encoder.layers.encoder_layer_k` outputs `(N, 17, 768)`. torchvision initialises the
# classification head to zero: with random weights every logit would be constant, so we draw it anew.
# The model output (1000 logits) is the embedding here; `embedding_dims` explains a few components.

# %%
vit = tv.vit_b_16(weights=None, image_size=64).eval()
nn.init.normal_(vit.heads.head.weight, std=0.02)
layers = ["conv_proj", "encoder.layers.encoder_layer_3", "encoder.layers.encoder_layer_7"]
ea = EmbeddingAttribution(
    vit,
    layer=layers,
    method="activation_gradient",
    channel_aggregator="abs",
    reshape_transform=[None, tokens_to_grid(prefix_tokens=1), tokens_to_grid(prefix_tokens=1)],
)
maps = ea.attribute(images, embedding_dims=[0, 1, 2, 3])
print([tuple(m.shape) for m in maps])  # each (N, 64, 64): the 4x4 grid upsampled to the image

fig, axes = plt.subplots(1, len(layers), figsize=(9, 3))
for ax, m, name in zip(axes, maps, layers):
    ax.imshow(m[0], cmap="viridis")
    ax.set_title(name.replace("encoder.layers.", ""), fontsize=9)
    ax.axis("off")
fig.suptitle("ViT (random weights): no meaning, only the shapes")
plt.show()

# %% [markdown]
# Without the transform the tokens would be read as 17 "channels" over 768 "positions": the
# warning says so.

# %%
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    EmbeddingAttribution(vit, layer="encoder.layers.encoder_layer_3", upsample=None).attribute(
        images, embedding_dims=[0]
    )
print(caught[0].message)

# %% [markdown]
# The representation scores take the same argument; one call gives the variance score at every
# layer. (The plain channel mean of a gradient vanishes in a transformer's residual stream, where
# every path passes a LayerNorm over the channels, so we aggregate absolute values.)

# %%
curve = score_curve(
    vit,
    None,
    layers,
    images,
    score="variance",
    channel_aggregator="abs",
    embedding_dims=[0, 1, 2, 3],
    reshape_transform=[None, tokens_to_grid(1), tokens_to_grid(1)],
)
print(dict(zip(curve.layers, curve.values.tolist())))

# %% [markdown]
# ## ConvNeXt and Swin: channels-last layers
#
# Inside a ConvNeXt block, torchvision permutes to `(N, H, W, C)` for the LayerNorm and the two
# linear layers, and Swin keeps every stage channels-last. `channels_last` moves the channels back
# to dimension 1.

# %%
convnext = tv.convnext_tiny(weights=None).eval()
ea = EmbeddingAttribution(
    convnext,
    layer=["features.1.0.block.2", "features.3"],  # a channels-last LayerNorm, a channels-first stage
    method="gradcam",
    reshape_transform=[channels_last, None],
)
cn_maps = ea.attribute(images, embedding_dims=[0, 1, 2])
swin = tv.swin_t(weights=None).eval()
ea = EmbeddingAttribution(swin, layer=["features.1", "features.3"], reshape_transform=channels_last)
swin_maps = ea.attribute(images, embedding_dims=[0, 1, 2])
fig, axes = plt.subplots(1, 4, figsize=(10, 3))
titles = ["ConvNeXt block.2", "ConvNeXt features.3", "Swin features.1", "Swin features.3"]
for ax, m, title in zip(axes, cn_maps + swin_maps, titles):
    ax.imshow(m[0], cmap="viridis")
    ax.set_title(title, fontsize=9)
    ax.axis("off")
fig.suptitle("Channels-last layers (random weights)")
plt.show()

# %% [markdown]
# Coupled NMF pools each channel over its positions (`pool="mean"`), so it needs the layout too.
# Swin's activations are not non-negative (no ReLU): `shift="min"` shifts every neuron by its
# minimum over the examples.

# %%
more = torch.rand(8, 3, 64, 64)
cnmf = CoupledNMFConcepts(
    3,
    swin,
    layers=["features.3", "features.5"],
    pool="mean",
    shift="min",
    reshape_transform=channels_last,
    max_iter=50,
).fit(more)
print(cnmf.layer_shapes_, cnmf.top_examples(2).tolist())

# %% [markdown]
# ## A text classifier: one value per token
#
# Token ids are integers, so there is no gradient with respect to the input. Explain the output
# of the embedding lookup instead: it is `(N, L, E)`, and `channels_last` makes it `(N, E, L)`, so
# the maps are `(N, L)`: one value per token.

# %%
text_model = TinyTextTransformer().eval()  # nn.Embedding + 2 encoder layers + head
tokens = torch.randint(0, 100, (3, 12))
ea = EmbeddingAttribution(
    text_model,
    layer=["embedding", "encoder.layers.0"],
    method="activation_gradient",
    reshape_transform=channels_last,
)
per_token, per_token_inner = ea.attribute(tokens)
print(per_token.shape, per_token_inner.shape)  # (3, 12) each
plt.figure(figsize=(6, 1.8))
plt.imshow(per_token, cmap="viridis", aspect="auto")
plt.xlabel("token position")
plt.ylabel("sentence")
plt.title("Per-token maps at the embedding lookup (random weights)")
plt.show()

# %% [markdown]
# Semantic vectors flatten the layer, so they need no layout; they work on the text model as on
# any other (here from random labels, so again without meaning).

# %%
labels = torch.tensor([0, 1, 0])
sv = SemanticVector(text_model, "encoder.layers.1").fit_from_labels((tokens, labels))
print(sv.relevance())

# %% [markdown]
# ## What else works on your model
#
# - `torch.compile(model)`: every method explains the original module (`model._orig_mod`, with a
#   warning) and accepts the layer names without the `_orig_mod.` prefix.
# - Captum's `NoiseTunnel(EmbeddingAttribution(...))` (SmoothGrad of an embedding) and
#   `captum.metrics.sensitivity_max(ea.attribute, x)`; `SemanticGuidedBackprop` warns when the model
#   has no `nn.ReLU` module (Guided Backprop only changes those: GELU, SiLU or `F.relu` networks get
#   a plain masked gradient).
# - The command line takes the same layouts: `captum-concepts scores --model swin_t --weights w.pt
#   --images DIR --layers features.3 features.5 --reshape channels-last`, `--reshape vit` for ViT
#   token layers; without `--weights` it warns and labels every figure "untrained weights".
