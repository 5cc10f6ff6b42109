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
# # Your own model: a trained ResNet-18 and a folder of real photographs
#
# You arrive with a trained network (a state dict on disk) and a folder of images. This tutorial
# goes through the steps end to end, offline:
#
# 1. a folder of **real images** read with torchvision's `ImageFolder` and the model's
#    normalisation;
# 2. a **state dict** saved with `torch.save` and loaded with `torch.load(path, weights_only=True)`
#    into a torchvision architecture built with `weights=None`;
# 3. **choosing layers**: how to list and name them, and what to do with channels-last and token
#    layers (`reshape_transform`);
# 4. explaining the embedding and scoring it layer by layer, on a **GPU when there is one**, and
#    reading the figures.
#
# **What is trained here and what is not.** Nothing can be downloaded, so there are no ImageNet
# weights. The images are real: tiles cut from the two photographs that ship with scikit-learn
# (`load_sample_images()`: a Chinese temple and a flower). The ResNet-18 is **trained in this
# notebook**, from random initialisation, for two epochs to tell which photograph a tile comes from;
# that is the model we save, load and explain. Its task is easy (colour and texture suffice), so
# read its maps as those of a small, specialised model, not of an ImageNet classifier. A second
# ResNet-18 with **random weights** serves as the reference of the score curves, and the models of
# the last section (ViT, Swin, a text transformer) have **random weights** too: they show the
# layouts, not meaningful maps.

# %%
# %matplotlib inline
import tempfile
from pathlib import Path

import matplotlib.pyplot as plt
import torch
import torchvision.models as tv
from torch import nn

device = "cuda" if torch.cuda.is_available() else "cpu"  # everything below runs on either
_ = torch.manual_seed(0)
print("device:", device)

# %% tags=["remove-cell"]
# Notebook housekeeping (hidden on the documentation site): small figures, no tqdm or deprecation
# notices from the libraries, one thread per notebook when CI executes the notebooks in parallel.
import os
import warnings

warnings.filterwarnings("ignore", message="IProgress not found")  # tqdm, no ipywidgets
warnings.filterwarnings("ignore", category=FutureWarning, module=r"torch\.")  # torch.jit notices
warnings.filterwarnings("ignore", category=UserWarning, module=r"captum\.")  # Captum notices
plt.rcParams.update({"figure.dpi": 72, "savefig.dpi": 72})  # small figures, light notebook
if os.environ.get("PYTEST_XDIST_WORKER"):  # parallel CI: one thread per notebook
    torch.set_num_threads(1)

# %% [markdown]
# ## 1. A folder of real images
#
# `ImageFolder` expects one sub-folder per class (`root/class_name/image.png`). We write 48×48
# tiles of the two photographs into such folders under a temporary directory: tiles from the left
# 70 % of each photograph for training, from the right 30 % for testing (so the test tiles show
# parts of the scene the model never saw). With your own data, point `ImageFolder` at your folder.

# %%
from PIL import Image
from sklearn.datasets import load_sample_images

root = Path(tempfile.mkdtemp(prefix="captum_concepts_tiles_"))
TILE, STRIDE, SPLIT = 48, 56, 448  # tile size, step between tiles, first test column (pixels)
photos = load_sample_images()  # two real RGB photographs, 427 x 640, shipped with scikit-learn
for name, photo in zip(("temple", "flower"), photos.images):
    height, width, _ = photo.shape
    for top in range(0, height - TILE + 1, STRIDE):
        for left in range(0, width - TILE + 1, STRIDE):
            split = "train" if left + TILE <= SPLIT else "test" if left >= SPLIT else None
            if split is not None:
                folder = root / split / name
                folder.mkdir(parents=True, exist_ok=True)
                Image.fromarray(photo[top : top + TILE, left : left + TILE]).save(
                    folder / f"{top}_{left}.png"
                )
print(sorted(str(p.relative_to(root)) for p in root.glob("*/*")))

# %% [markdown]
# The transform must be the one the model was trained with. torchvision's ImageNet models expect
# `ToTensor()` (values in `[0, 1]`) followed by `Normalize` with the ImageNet mean and standard
# deviation; we train with the same, so the code is what you would write for a torchvision
# checkpoint (for torchvision's own weights, `weights.transforms()` gives the exact pipeline).

# %%
# Figure: six test tiles with their class: three dark green flower tiles, three pale or textured temple tiles
from torchvision import transforms
from torchvision.datasets import ImageFolder

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
preprocess = transforms.Compose([transforms.ToTensor(), transforms.Normalize(MEAN, STD)])
train_set = ImageFolder(root / "train", transform=preprocess)
test_set = ImageFolder(root / "test", transform=preprocess)
print(train_set.classes, len(train_set), "training tiles,", len(test_set), "test tiles")


def show(x):
    """A normalised (3, H, W) tensor back to an image in [0, 1] for plotting."""
    return (x.cpu() * torch.tensor(STD)[:, None, None] + torch.tensor(MEAN)[:, None, None]).clamp(0, 1)


x_test, y_test = next(iter(torch.utils.data.DataLoader(test_set, batch_size=len(test_set))))
fig, axes = plt.subplots(1, 6, figsize=(8, 1.6))
for ax, i in zip(axes, [0, 5, 10, -11, -6, -1]):
    ax.imshow(show(x_test[i]).permute(1, 2, 0))
    ax.set_title(test_set.classes[y_test[i]], fontsize=8)
    ax.axis("off")
plt.show()

# %% [markdown]
# ## 2. Train, save, load: a state dict
#
# A torchvision ResNet-18 built with `weights=None` (random initialisation) and two classes,
# trained for two epochs. Then the usual round trip: `torch.save(model.state_dict(), path)`, a fresh
# `tv.resnet18(weights=None, num_classes=2)` and `load_state_dict(torch.load(path,
# weights_only=True))`. `weights_only=True` reads tensors only, never code, so it is the safe way to
# open a checkpoint you did not write; `map_location` puts the tensors on your device.

# %%
net = tv.resnet18(weights=None, num_classes=2).to(device)
optimiser = torch.optim.Adam(net.parameters(), lr=1e-3)
loader = torch.utils.data.DataLoader(
    train_set, batch_size=16, shuffle=True, generator=torch.Generator().manual_seed(0)
)
for epoch in range(2):
    net.train()
    for x, y in loader:
        loss = nn.functional.cross_entropy(net(x.to(device)), y.to(device))
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    print(f"epoch {epoch}: last training loss {loss.item():.3f}")

checkpoint = root / "resnet18_tiles.pt"
torch.save(net.state_dict(), checkpoint)

model = tv.resnet18(weights=None, num_classes=2)  # the architecture, randomly initialised ...
model.load_state_dict(torch.load(checkpoint, weights_only=True, map_location=device))  # ... then trained
model = model.to(device).eval()  # eval(): batch norm uses its running statistics
with torch.no_grad():
    accuracy = (model(x_test.to(device)).argmax(1).cpu() == y_test).float().mean().item()
print(f"test accuracy of the loaded model: {accuracy:.1%} on {len(test_set)} unseen tiles")

# %% [markdown]
# ## 3. Choosing layers
#
# Every method takes layers as modules or as the dotted names of `model.named_modules()`. The
# top-level children are the natural candidates; deeper names (`layer3.1.conv2`) work the same.
# A forward hook shows what each candidate outputs, which tells you the layout:

# %%
print([name for name, _ in model.named_children()])

candidates = ["conv1", "layer1", "layer2", "layer3", "layer4", "avgpool", "fc"]
shapes = {}
handles = [
    model.get_submodule(name).register_forward_hook(
        lambda m, i, o, name=name: shapes.update({name: tuple(o.shape)})
    )
    for name in candidates
]
with torch.no_grad():
    model(x_test[:1].to(device))
for handle in handles:
    handle.remove()
for name, shape in shapes.items():
    print(f"{name:8s} {shape}")

# %% [markdown]
# - Layers that output `(N, C, H, W)` (every convolutional stage of a ResNet) are read as they are:
#   channels in dimension 1, positions after it.
# - The **embedding** is the representation you want to explain, here the pooled features
#   `avgpool`, `(N, 512, 1, 1)`, flattened to 512 components (for a siamese or self-supervised
#   model, its projection head; `None` means the model's output).
# - Layers of another layout need a `reshape_transform` (section 5): a vision transformer's tokens
#   `(N, 1 + T, C)` take `tokens_to_grid(prefix_tokens=1)`; Swin / ConvNeXt stages and text
#   models' token embeddings `(N, H, W, C)` / `(N, L, E)` take `channels_last`. Without one, a layer
#   that looks channels-last triggers a warning.

# %% [markdown]
# ## 4. Explain the embedding and score it
#
# **Maps.** `EmbeddingAttribution` explains every component of the embedding with respect to the
# input or an earlier layer and aggregates the per-component maps: over channels (`mean`) and over
# components (`var`, the paper's sparse aggregator, which shows where the components *disagree*).
# The non-linear `var` needs one gradient per component, so we explain 32 of the 512 components
# (`embedding_dims`); with mean aggregation one backward pass suffices for all of them.

# %%
# Figure: four tiles (rows), their maps at the input and layers 1-3: grainy at the input, coarse blocks deeper
from captum_concepts.attr import EmbeddingAttribution
from captum_concepts.visualization import visualize_attribution_grid

layers = [None, "layer1", "layer2", "layer3"]  # None = the input
ea = EmbeddingAttribution(
    model,
    embedding_layer="avgpool",
    layer=layers,
    method="activation_gradient",
    channel_aggregator="mean",
    embedding_aggregator="var",
)
x = x_test[[0, 5, -6, -1]].to(device)  # two tiles of each class
maps = ea.attribute(x, embedding_dims=list(range(0, 512, 16)))  # one (4, 48, 48) map per layer
fig, axes = visualize_attribution_grid(
    torch.stack(maps, dim=1).cpu(),
    torch.stack([show(t) for t in x]),
    sign="absolute_value",
    col_labels=["input", "layer1", "layer2", "layer3"],
    labels=[test_set.classes[y] for y in y_test[[0, 5, -6, -1]]],
)

# %% [markdown]
# Reading the grid: each row is a test tile, each column the layer the map lives at, upsampled to
# the tile (a `layer3` map has 3×3 cells, hence the blocks). Bright cells are where the embedding's
# components react most differently to the tile; each map is scaled on its own, so compare shapes
# along a row, not brightness across maps. At the input and at `layer1` the maps are grainy, with a
# checkerboard left by the stride-2 convolution and max-pooling (a known artefact of gradients
# through strided layers); on the textured temple tile they follow the texture, on the smooth
# background tiles they spread over the whole tile. Deeper maps are coarser and show which regions of
# the tile the representation's components are specific to. For a model trained on two photographs
# these are texture and colour regions, not objects; on your model, look for maps that move with
# the content of the image from row to row.
#
# **Scores.** `score_curve` computes the noise score at every layer from one attribution call:
# how different the (normalised) maps of real tiles are from those of noise inputs, beside the
# **noise benchmark** (noise against noise) and the same curve of an untrained ResNet-18. Its
# defaults (activations × gradients, mean over channels and over components) are the setting under
# which the paper's score claims reproduce in our experiments; with `embedding_aggregator="var"` a
# trained network's noise score tends to sit at or below its benchmark (see the site's *Evidence*
# page). Noise inputs are standard normal in the normalised input space.

# %%
# Figure: noise score per layer: trained ResNet-18 above the benchmark, untrained below it up to layer2
from captum_concepts.metrics import score_curve
from captum_concepts.visualization import visualize_score_curve

_ = torch.manual_seed(1)
untrained = tv.resnet18(weights=None, num_classes=2).to(device).eval()  # random weights: the reference
score_layers = ["conv1", "layer1", "layer2", "layer3", "layer4"]
x = x_test[torch.randperm(len(test_set), generator=torch.Generator().manual_seed(0))[:16]].to(device)
curves = {}
for name, network in (("trained", model), ("random weights", untrained)):
    torch.manual_seed(0)  # the same noise inputs for both networks
    curves[name] = score_curve(
        network, "avgpool", score_layers, x, n_benchmark_draws=3, benchmark=name == "trained"
    )
bench = curves["trained"]
fig, ax = visualize_score_curve(
    {k: c.values.cpu() for k, c in curves.items()},
    labels=score_layers,
    benchmark=bench.benchmark.cpu(),
    benchmark_band=bench.benchmark_std.cpu(),
    title="noise score, ResNet-18 on photo tiles",
)
for name, c in curves.items():
    print(f"{name:15s}", [round(v, 3) for v in c.values.tolist()])
print(f"{'benchmark':15s}", [round(v, 3) for v in bench.benchmark.tolist()])

# %% [markdown]
# Reading the curves: the x-axis runs from shallow to deep source layers; each point is the mean
# noise score of the 16 test tiles at that layer (0: the maps of a real tile look like those of
# noise, 1: as different as normalised maps can be). The dashed line and its band are the noise
# benchmark, what noise against noise gives through the trained network. Here the trained network's
# curve lies above both the untrained network's and the benchmark at every layer, most clearly in
# the middle layers: its explanations of real tiles are distinguishable from those of noise, the
# untrained network's mostly are not. That is the paper's observation (Bertolini et al. §4.1, for
# activations × gradients), though on this small model the gap opens already at `conv1` rather
# than only in deep layers. A curve of your checkpoint that sits on the benchmark at a layer says
# that layer's explanations carry no more about the images than about noise. The numbers move by a
# few hundredths with the noise draws and the 16 tiles; average more tiles (and `n_noise`) before
# comparing two checkpoints.
#
# **On a GPU** nothing changes but the device: the model and the inputs are moved with `.to(device)`
# above, and every method computes on the inputs' device. The non-linear aggregators (`var`, `abs`)
# compute many components' gradients per backward pass there (`strategy="batched"`, bounded by
# `internal_batch_size`), which shortens but does not remove their one-gradient-per-component cost;
# maps and scores come back on the same device (`.cpu()` before plotting).

# %% [markdown]
# ## 5. Other layouts: token and channels-last layers (random weights)
#
# The networks in this section have **random weights**: their maps carry no meaning, they only show
# what to pass for each layout. torchvision's `vit_b_16` at 64×64 pixels has a 4×4 grid of patch
# tokens plus the class token, so `encoder.layers.encoder_layer_k` outputs `(N, 17, 768)`;
# `tokens_to_grid(prefix_tokens=1)` drops the class token and lays the patch tokens out as
# `(N, 768, 4, 4)`. (torchvision initialises the classification head to zero, which would make
# every logit constant, so we draw it anew; the output logits are the embedding here.)
#
# **Cost first.** The embedding is now ViT's 1000 logits. Mean over channels *and* over components
# (`channel_aggregator="mean", embedding_aggregator="mean"`) is linear: one backward pass explains all
# 1000 at once. Any non-linear aggregator (`"abs"`, `"var"`, the default `embedding_aggregator="var"`)
# needs one gradient per explained component: over all 1000 logits, 1000 backward passes through the
# transformer on top of the layer (or, in forward mode, one product per element of the layer,
# 768 channels × 16 patches = 12288 here, so the planner keeps reverse mode). That is about 1000 times
# the backward work of the linear call: many minutes on a CPU even at these 64×64 pixels, far longer
# at 224×224 (197 tokens). So explain a few components (`embedding_dims=[0, 1, 2]`: three passes),
# or use the linear setting with its caveat behind a LayerNorm: a LayerNorm ignores a shift of its
# input, so the gradient's mean over a token's channels is exactly zero (`method="gradient"` with the
# channel mean gives blank maps), and the channel mean of activation × gradient keeps only the part
# of the activations that varies across channels. `ea.plan(inputs)` tells, after one forward pass,
# what a call would run, before running it.

# %%
import warnings

from captum_concepts.attr import channels_last, tokens_to_grid

images = torch.rand(2, 3, 64, 64, device=device)  # stand-ins for images, in [0, 1]
vit = tv.vit_b_16(weights=None, image_size=64).eval()
nn.init.normal_(vit.heads.head.weight, std=0.02)
vit = vit.to(device)
vit_layers = ["conv_proj", "encoder.layers.encoder_layer_5"]
grids = [None, tokens_to_grid(prefix_tokens=1)]

# cheapest: mean over channels and over the 1000 logits, one backward pass for all of them
ea = EmbeddingAttribution(
    vit, layer=vit_layers, method="activation_gradient", embedding_aggregator="mean", reshape_transform=grids
)
mean_maps = ea.attribute(images)
print("mean, mean over all 1000 logits:", ea.strategy_)

# a non-linear aggregator: one backward pass per component, so explain three of them
ea = EmbeddingAttribution(
    vit, layer=vit_layers, method="activation_gradient", channel_aggregator="abs", reshape_transform=grids
)
vit_maps = ea.attribute(images, embedding_dims=[0, 1, 2])
print([tuple(m.shape) for m in vit_maps])  # each (N, 64, 64): the 4x4 grid upsampled to the image
full = ea.plan(images)[1]  # what embedding_dims=None (all 1000 logits) would run, without running it
print("abs over all 1000 logits:", full.strategy, "-", full.reason)

with warnings.catch_warnings(record=True) as caught:  # without the transform: a warning
    warnings.simplefilter("always")
    EmbeddingAttribution(vit, layer="encoder.layers.encoder_layer_5", upsample=None).attribute(
        images, embedding_dims=[0]
    )
print(caught[0].message)

# %% [markdown]
# Swin keeps every stage channels-last, `(N, H, W, C)`, and ConvNeXt does inside its blocks:
# `channels_last` moves the channels back to dimension 1. A text model's token embeddings
# `(N, L, E)` take the same transform, and the maps are then one value per token (token ids are
# integers, so explain the output of the `nn.Embedding`, not the input).

# %%
# Figure: maps of random-weight models, layouts only: ViT patch grids, Swin stages, text per-token maps
from captum_concepts.data import TinyTextTransformer

swin = tv.swin_t(weights=None).to(device).eval()
ea = EmbeddingAttribution(swin, layer=["features.1", "features.3"], reshape_transform=channels_last)
swin_maps = ea.attribute(images, embedding_dims=[0, 1, 2])

text_model = TinyTextTransformer().to(device).eval()  # nn.Embedding + 2 encoder layers + head
tokens = torch.randint(0, 100, (3, 12), device=device)
ea = EmbeddingAttribution(
    text_model, layer="embedding", method="activation_gradient", reshape_transform=channels_last
)
per_token = ea.attribute(tokens)  # (3, 12): one value per token

fig, axes = plt.subplots(1, 5, figsize=(11, 2.4), gridspec_kw={"width_ratios": [1, 1, 1, 1, 2]})
panels = [(vit_maps[0], "ViT conv_proj"), (vit_maps[1], "ViT encoder_layer_5"),
          (swin_maps[0], "Swin features.1"), (swin_maps[1], "Swin features.3")]  # fmt: skip
for ax, (m, title) in zip(axes, panels):
    ax.imshow(m[0].cpu(), cmap="viridis")
    ax.set_title(title, fontsize=8)
    ax.axis("off")
axes[-1].imshow(per_token.cpu(), cmap="viridis", aspect="auto")
axes[-1].set_title("text: per-token maps", fontsize=8)
axes[-1].set_xlabel("token position", fontsize=8)
fig.suptitle("Layouts only: RANDOM weights, no meaning", fontsize=9)
plt.show()

# %% [markdown]
# The same `reshape_transform` argument (one transform, or a list aligned with the layers) is taken
# by `score_curve`, `SimilarityAttribution` and `CoupledNMFConcepts` (which pools each channel over
# its positions); `SemanticVector` flattens the layer and needs none. `torch.compile`d models work
# (the original module is explained), and so does Captum's `NoiseTunnel(EmbeddingAttribution(...))`.
#
# ## What to try on your own model
#
# - Replace section 2 by your own architecture and checkpoint: `model = tv.resnet50(weights=None,
#   num_classes=K)`, `model.load_state_dict(torch.load("my.pt", weights_only=True))`, and section 1
#   by `ImageFolder("my_images/", transform=...)` with the transform your model was trained with.
# - List the candidate layers with `named_children()` and a forward hook as in section 3; explain
#   the representation you care about (`embedding_layer="avgpool"`, a projection head, a CLS output).
# - Compare your checkpoint's noise-score curve with the untrained architecture's and with the
#   benchmark: a curve on the benchmark says the layer's explanations of real images look like those
#   of noise.
# - Mind the cost of the aggregators: mean over channels and components costs one backward pass
#   whatever the embedding size; a non-linear one (`var`, `abs`) one pass per component, so start
#   with a few (`embedding_dims=[...]`), check `ea.plan(x)`, and explain all of them
#   (`embedding_dims=None`) on a GPU, for a small embedding, or with time to spare.
# - From the command line, without writing code: `captum-concepts scores --model resnet18 --weights
#   my.pt --images my_images/ --layers layer1 layer2 layer3 layer4 --embedding-layer avgpool`
#   (`--reshape vit` or `--reshape channels-last` for the other layouts).
