# %% [markdown]
# # Concept maps, concept importance and similarity attribution
#
# Three questions the papers leave open, answered with the library's existing machinery
# (`CoupledNMFConcepts`, `SemanticVector`, `EmbeddingAttribution`):
#
# 1. **Where is each discovered concept in an image, and how much does it drive a class?**
#    Concept *presence* maps (non-negative coefficients of the concept's neuron factor at each
#    position, as Deep Feature Factorization reads one layer), concept *attribution* maps (where the
#    evidence for a concept's coefficient comes from) and concept *importance* for a class
#    (gradient × activation in concept space, with a residual so the terms add up exactly).
# 2. **Why are two embeddings similar?** `SimilarityAttribution` maps each side's contribution to
#    the dot or cosine similarity in one backward pass, and correspondence maps link the parts of
#    one image to the parts of the other.
# 3. **Class-discriminative masks that survive position changes**: `SemanticVector.masks(mode="channel")`,
#    our extension beside the paper's per-unit rule, compared with the pointing game.

# %%
# %matplotlib inline
import matplotlib.pyplot as plt
import torch

_ = torch.manual_seed(0)

# %% tags=["remove-cell"]
# Notebook housekeeping (hidden on the documentation site): small figures, no tqdm, Captum or
# torch notices, one thread per notebook when CI executes the notebooks in parallel.
import os
import warnings

warnings.filterwarnings("ignore", message="IProgress not found")  # tqdm, no ipywidgets
warnings.filterwarnings("ignore", category=UserWarning, module=r"captum\.")  # Captum notices
warnings.filterwarnings("ignore", category=FutureWarning, module=r"torch\.")  # torch.jit notices
plt.rcParams.update({"figure.dpi": 72, "savefig.dpi": 72})  # small figures, light notebook
if os.environ.get("PYTEST_XDIST_WORKER"):  # parallel CI: one thread per notebook
    torch.set_num_threads(1)

# %% [markdown]
# ## 1. Concept maps on the digits
#
# A coupled NMF of the pixels and two layers of a small CNN trained on scikit-learn's digits.

# %%
from captum_concepts.concept import (
    CoupledNMFConcepts,
    class_importance,
    concept_attribution_maps,
    concept_importance,
    concept_presence_maps,
)
from captum_concepts.data import load_digits_tensors, pretrained_digits_cnn
from captum_concepts.visualization import visualize_concept_importance, visualize_concept_maps

data = load_digits_tensors()
model = pretrained_digits_cnn(seed=0).model
x, y = data.x_train[:600], data.y_train[:600]
cnmf = CoupledNMFConcepts(6, model, layers=["block2.pool", "block3.pool"], solver="hals", max_iter=100).fit(x)
print("concepts:", cnmf.n_concepts, " top classes per concept:", cnmf.top_classes(y, k=2).tolist())

# %% [markdown]
# **Presence maps**: at each position of `block2.pool` (4×4), the non-negative least-squares
# coefficients of the concepts' neuron factors at that position, upsampled to the 8×8 image. The
# first row shows each concept's pixel factor image.

# %%
# Figure: each concept's pixel factor (top row) and its presence maps over four test digits (green)
images = data.x_test[:4]
presence = concept_presence_maps(cnmf, images, layer="block2.pool")
fig, axes = visualize_concept_maps(presence, images, factor_images=cnmf.factor_images(),
                                   title="concept presence at block2.pool")

# %% [markdown]
# **Attribution maps**: the concept coefficients of `block3.pool` are a linear function of its
# activations (least squares on the neuron factors); `EmbeddingAttribution` explains all of them at
# once (`return_per_dim`), here as gradient × input.

# %%
# Figure: signed input attribution of six concepts over four digits: red for, blue against the concept
attribution = concept_attribution_maps(cnmf, images, layer="block3.pool")
fig, axes = visualize_concept_maps(attribution, images, sign="all", title="evidence for each concept (input)")

# %% [markdown]
# **Importance for a class**: `u_k <d logit / dA, o_k>` per concept, and the residual
# `<d logit / dA, A - O u>`. The terms plus the residual are exactly the layer's gradient × activation
# total, at the cost of one backward pass per target for all concepts.

# %%
# Figure: concept importance bars for digits 0-4: one or two dominant concepts each, residual in grey
result = concept_importance(cnmf, data.x_test[:200], target=data.y_test[:200], layer="block3.pool")
gap = (result.importance.sum(1) + result.residual - result.total).abs().max()
print(f"max |concepts + residual - gradient x activation| = {gap:.2e}")
imp, res, classes = class_importance(result, data.y_test[:200])
names = [f"digit {c}" for c in classes[:5].tolist()]
fig, axes = visualize_concept_importance(imp[:5], res[:5], col_labels=names)

# %% [markdown]
# CRAFT's total Sobol indices rank the same concepts by a perturbation test instead of a gradient:
# the coefficients are masked at random, the layer rebuilt from them (plus the residual) and the rest
# of the model rerun; `S_T,k` is the share of the logit's variance that concept `k` explains.

# %%
from captum_concepts.concept import concept_sobol_indices

sobol = concept_sobol_indices(cnmf, data.x_test[:4], target=data.y_test[:4], layer="block3.pool")
print("total Sobol indices (rows: examples, columns: concepts)")
print(sobol.numpy().round(2))
print("importance, same examples:")
print((result.importance[:4] + 0.0).numpy().round(2))  # + 0.0 turns -0.0 into 0.0

# %% [markdown]
# Reading the two tables. Each total Sobol index `S_T,k` is the share of the logit's variance in
# which concept `k` takes part (alone or with others): the variance left when every other concept
# is held fixed. It lies in `[0, 1]` in theory; the values here
# are Monte-Carlo estimates (Jansen's estimator on `n_designs=32` random masks), so an index can come
# out slightly **above 1** (or below 0) by sampling error, and the indices of one example need not
# sum to 1 (concepts interact). Raise `n_designs` for tighter estimates. A **0** in the importance
# table is a concept whose coefficient is exactly zero in that example (the NMF coefficients are
# non-negative and often exactly 0): printed without the `+ 0.0` above it shows as `-0.000e+00`,
# the sign of zero times a negative gradient, which means nothing. Both tables agree on which
# concept carries each example's class.

# %% [markdown]
# `SemanticVector` concepts have presence maps too: the cosine of each position's features with the
# concept's vector at that position.

# %%
# Figure: SemanticVector presence maps of classes 0, 2, 4, 6, 8 over four digits: alike for every class
from captum_concepts.concept import SemanticVector

sv = SemanticVector(model, "block2.pool").fit_from_labels((x, y))
fig, axes = visualize_concept_maps(concept_presence_maps(sv, images), images, concepts=range(0, 10, 2),
                                   labels=[f"class {c}" for c in range(0, 10, 2)], sign="all")

# %% [markdown]
# ## 2. Similarity attribution
#
# The digits CNN's 32-D `embedding_relu` as a retrieval embedding: which pixels of `a` and of `b`
# make their cosine similarity? For `dot` the map of `a` is the embedding aggregation of `a`'s
# per-dimension maps weighted by `z(b)`; for `cosine` the weights are the exact gradient of the
# cosine. Either way both sides cost one forward and one backward pass, like one Captum
# `InputXGradient` call on the pair.

# %%
# Figure: three digit pairs (0-0, 1-1, 2-8) with each side's signed cosine-similarity map and score
from captum_concepts.attr import SimilarityAttribution
from captum_concepts.visualization import visualize_correspondence, visualize_similarity_maps

order = torch.argsort(data.y_test)
a, b = data.x_test[order[[0, 40, 80]]], data.x_test[order[[1, 41, 300]]]  # same, same, different digits
sa = SimilarityAttribution(model, embedding_layer="embedding_relu", similarity="cosine")
maps_a, maps_b = sa.attribute(a, b)
fig, axes = visualize_similarity_maps(maps_a, maps_b, a, b, scores=sa.similarity_scores(a, b))

# %% [markdown]
# **Correspondence maps** `M(p, q) = Σ_d m_d^a(p) m_d^b(q)` (second order, as BiLRP) need the `D`
# per-dimension maps of each side, so they are meant for source layers with few positions: here
# `block2.pool`, 4×4 positions. The lines link the strongest pairs of positions.

# %%
# Figure: two zeros side by side, red lines linking their most corresponding block2.pool positions
sa_layer = SimilarityAttribution(model, embedding_layer="embedding_relu", layer="block2.pool", upsample=None)
corr = sa_layer.correspondence(a[:1], b[:1])
cosine = sa_layer.similarity_scores(a[:1], b[:1]).item()
print("M:", tuple(corr.shape), f" sum = {corr.sum():.3f}, cosine = {cosine:.3f}")
fig, axes = visualize_correspondence(corr[0], a[0], b[0], grid_a=(4, 4), k=8)

# %% [markdown]
# The same on a torchvision architecture, `resnet18(weights=None)` with `fc` removed (the 512-D
# pooled features are the embedding), on random 64×64 images. **The weights are random, so these
# maps carry no meaning**: they only show that the class runs on a standard architecture (no weights
# can be downloaded here). With trained weights, pass your own images and, for two towers (CLIP-like),
# `model_b=`, `embedding_layer_b=`, `layer_b=`. Correspondence maps at `layer4` (2×2 positions at this
# size) work the same way but need 512 gradients per side, too slow for this notebook on a CPU.

# %%
# Figure: two pairs of noise images and their similarity maps, ResNet-18 with random weights: no meaning
import torchvision
from torch import nn

resnet = torchvision.models.resnet18(weights=None)
resnet.fc = nn.Identity()
resnet.eval()
ra, rb = torch.rand(2, 3, 64, 64), torch.rand(2, 3, 64, 64)
rs = SimilarityAttribution(resnet, layer="layer2", similarity="cosine")
ma, mb = rs.attribute(ra, rb)
fig, axes = visualize_similarity_maps(ma, mb, ra, rb, scores=rs.similarity_scores(ra, rb),
                                      title="resnet18, RANDOM weights: no meaning")

# %% [markdown]
# ## 3. Channel masks for semantic saliency
#
# The paper's semantic mask keeps units `1[r_c > 0.5]`: per *unit*, i.e. per (channel, position) of
# a convolutional layer, so it encodes where the class's evidence was in the fitting images. On
# two-digit canvases the digit of interest is elsewhere, and the mask cuts its path.
# `mode="channel"` (our extension, not the paper's rule) keeps whole channels whose
# position-averaged rate for the class is above the average over classes.

# %%
# Figure: pointing accuracy vs energy kept: Guided Backprop, the paper's mask rule and channel masks
from captum.attr import GuidedBackprop

from captum_concepts.attr import SemanticGuidedBackprop
from captum_concepts.data import DigitsCNN, make_two_digit_canvas, train_classifier
from captum_concepts.metrics import pointing_game_curve
from captum_concepts.visualization import visualize_pointing_game_curve

train = make_two_digit_canvas(2000, canvas_size=(8, 16), split="train", random_state=0)
test = make_two_digit_canvas(100, canvas_size=(8, 16), split="test", random_state=0)
_ = torch.manual_seed(0)
canvas_model = train_classifier(DigitsCNN(image_size=(8, 16)), train.images, train.multi_hot,
                                test.images, test.multi_hot, epochs=10, multilabel=True).model
erased = train.images * (~train.box_masks()[:, 1:2]).float()  # vectors from the first digit only
canvas_sv = SemanticVector(canvas_model, "block3.pool").fit_from_labels(
    (erased, train.labels[:, 0]), n_classes=10)

images = torch.cat([test.images, test.images])
targets = torch.cat([test.labels[:, 0], test.labels[:, 1]])
masks = torch.cat([test.box_masks()[:, 0], test.box_masks()[:, 1]])
maps = {"Guided Backprop": GuidedBackprop(canvas_model).attribute(images, target=targets).sum(1)}
for name, mask in (("paper rule r_c > 0.5", canvas_sv.masks(0.5)),
                   ("ours: channel", canvas_sv.masks(mode="channel"))):
    semantic = SemanticGuidedBackprop(canvas_model, "block3.pool", mask)
    maps[name] = semantic.attribute(images, target=targets).sum(1)
energies = torch.linspace(0, 0.9, 10)
acc = {k: pointing_game_curve(v, masks=masks, energies=energies)[1] for k, v in maps.items()}
fig, ax = visualize_pointing_game_curve(energies, acc)
for k, v in acc.items():
    print(f"{k:22s} pointing game at energy 0: {v[0]:.2f}, mean over energies {v.mean():.3f}")

# %% [markdown]
# Reading the curve: the paper's rule keeps the units that fire in more than half of a class's
# examples *at their position*; on canvases where the digit moves few units pass it, the masks cut
# paths through the digit itself, and at energy 0 the pointing game falls below plain Guided
# Backprop. Channel masks ignore the position and point at least as well as Guided Backprop (the
# experiments behind this are on the site's *Evidence* page).
#
# ## What to try on your own model
#
# - Fit `CoupledNMFConcepts` at two or three blocks of your network (`pool="mean"` for large
#   convolutional layers, `shift="min"` for layers that are not non-negative), then read
#   `concept_presence_maps` at a mid layer to see *where* each concept sits in your images.
# - Rank concepts for your classes with `concept_importance` (cheap: one backward pass per target)
#   and check the ranking with `concept_sobol_indices` on a few examples; a large residual says the
#   concepts miss part of what drives the class (fit more concepts).
# - For a retrieval or siamese model, `SimilarityAttribution(model, layer=..., similarity="cosine")`
#   shows which parts of a query and a match make them similar; correspondence maps link the parts.
# - With `SemanticVector`, compare `masks(0.5)` (the paper's rule) and `masks(mode="channel")` with
#   `pointing_game_curve` on images with boxes: objects that move favour the channel masks.
