# %% [markdown]
# # Semantic vectors and semantic saliency
#
# *Paper:* J. Gu, V. Tresp — **Semantics for Global and Local Interpretation of Deep Neural
# Networks** (§3 for the semantic vectors, §5 for the saliency).
#
# A **semantic vector** represents a concept (a class, a texture, a material) as a direction in the
# feature space of one layer: binarise each example's features (`a = 1[φ(x) > 0]`), normalise, sum
# over the concept's examples and normalise again. With it you get a **relevance** between concepts
# (the cosine of their vectors), a **degree of diversity** of each concept, **retrieval** of the
# examples closest to a concept, and a **perturbation check** of what the units mean.
#
# **Semantic saliency** makes Guided Backprop and Gradient × Input class-discriminative: at one layer
# the backward signal only passes through the units of the target class's semantic mask (units
# active for most of its examples). The **generalised pointing game** measures where the evidence is:
# keep the most salient pixels until they hold m % of the positive energy and check that they lie on
# the target object.

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

# %%
# Figure: relevance matrix between the ten digit concepts: 1 on the diagonal, 0.75 to 0.96 elsewhere
from captum_concepts.concept import SemanticVector
from captum_concepts.data import load_digits_tensors, pretrained_digits_cnn
from captum_concepts.visualization import visualize_relevance_matrix

data = load_digits_tensors()
model = pretrained_digits_cnn(seed=0).model

# block3.relu (before pooling): after max-pooling almost every unit fires for every digit, and
# binarised features then barely separate the classes
sv = SemanticVector(model, "block3.relu", random_state=0).fit_from_labels((data.x_train, data.y_train))
print("vectors", tuple(sv.vectors_.shape), " diversity", sv.diversity_.numpy().round(2))
fig, ax = visualize_relevance_matrix(sv.relevance(), labels=[str(d) for d in range(10)],
                                     title="relevance between digit concepts")

# %% [markdown]
# Fitting streams over the data (a tensor, a tuple or a `DataLoader`): memory does not grow with the
# number of examples. Retrieval and local explanations use the cosine between an input's features
# and each concept's vector:

# %%
top = sv.rank(data.x_test, concept=3, k=8)
print("test examples closest to concept 3 have labels", data.y_test[top.indices].tolist())
print("three closest concepts of the first test digits:", sv.explain(data.x_test[:3], k=3).names)
result = sv.perturbation_check(data.x_test[:200], data.y_test[:200])
print({k: round(v, 4) for k, v in result.means().items()})

# %% [markdown]
# ## Semantic saliency on two-digit images
#
# To check *where* a saliency map points we need images with more than one object. Two digits side by
# side (8×16) with both labels and boxes; a small CNN learns to recognise both (multi-label) in a few
# seconds.

# %%
from captum_concepts.data import DigitsCNN, make_two_digit_canvas, train_classifier

train = make_two_digit_canvas(2000, canvas_size=(8, 16), split="train", random_state=0)
test = make_two_digit_canvas(100, canvas_size=(8, 16), split="test", random_state=0)
_ = torch.manual_seed(0)
canvas = train_classifier(DigitsCNN(image_size=(8, 16)), train.images, train.multi_hot,
                          test.images, test.multi_hot, epochs=10, multilabel=True)
canvas_model = canvas.model
with torch.no_grad():
    top2 = canvas_model(test.images).topk(2, dim=1).indices.sort(dim=1).values
both_right = (top2 == test.labels.sort(dim=1).values).all(dim=1).float().mean()
print(f"the two largest logits are the two digits on {both_right:.0%} of the test canvases")

# one semantic vector per class, fitted from the multi-hot labels
canvas_sv = SemanticVector(canvas_model, "block3.pool").fit_from_labels((train.images, train.multi_hot))

# %%
# Figure: two-digit canvases (a row per target) with Guided Backprop and Semantic GBP maps, digit boxes
from captum.attr import GuidedBackprop

from captum_concepts.attr import SemanticGuidedBackprop
from captum_concepts.visualization import visualize_attribution_grid

# every test canvas twice: once for each of its digits
images = torch.cat([test.images, test.images])
targets = torch.cat([test.labels[:, 0], test.labels[:, 1]])
masks = torch.cat([test.box_masks()[:, 0], test.box_masks()[:, 1]])
boxes = torch.cat([test.boxes, test.boxes.flip(1)])      # the target's box first (green)

plain = GuidedBackprop(canvas_model).attribute(images, target=targets).sum(1)
semantic = SemanticGuidedBackprop(canvas_model, "block3.pool", semantic_vectors=canvas_sv).attribute(
    images, target=targets).sum(1)

show = [0, 100, 1, 101]                  # two canvases, each digit as the target
fig, axes = visualize_attribution_grid(
    torch.stack([plain[show], semantic[show]], dim=1), images[show], sign="positive",
    col_labels=["Guided Backprop", "Semantic GBP"], boxes=boxes[show],
    labels=[f"target {int(t)}" for t in targets[show]],
)

# %%
# Figure: pointing accuracy vs energy kept: Guided Backprop and Semantic GBP nearly equal, 0 from 50 %
from captum_concepts.metrics import pointing_game_curve
from captum_concepts.visualization import visualize_pointing_game_curve

energies = torch.linspace(0, 0.9, 10)
acc = {name: pointing_game_curve(maps, masks=masks, energies=energies)[1]
       for name, maps in (("Guided Backprop", plain), ("Semantic GBP", semantic))}
fig, ax = visualize_pointing_game_curve(energies, acc)
for name, a in acc.items():
    print(f"{name:16s} classic pointing game {a[0]:.2f}, at 50% energy {a[5]:.2f}")

# %% [markdown]
# By default a hit needs *all* the kept energy inside the target's box (`hit_fraction=1.0`), so
# accuracies fall quickly as `m` grows on these tiny images; `hit_fraction=0.8` or a `tolerance` in
# pixels relax it.
#
# `SemanticGradientInput` works the same way for Gradient × Input. With an all-ones mask both
# methods equal Captum's `GuidedBackprop` and `InputXGradient` up to float rounding.
#
# ## What to try on your own model
#
# - Fit semantic vectors at the last convolutional block of your classifier (the paper uses VGG16's
#   `pool5`) from a labelled `DataLoader`; read the relevance matrix for classes your model confuses.
# - Fit vectors of *low-level* concepts (textures, colours, parts) with `sv.fit({"striped": loader1,
#   "dotted": loader2, ...})` and explain your images with `sv.explain(x, k=3)`.
# - Compare plain and semantic saliency with `pointing_game_curve` on images with boxes or masks.
# - From the command line: `captum-concepts saliency --model resnet18 --weights my.pt --images DIR
#   --layers layer4`.
