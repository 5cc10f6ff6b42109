"""Write the tutorial notebooks (outputs cleared) from the cells below.

Edit this file, then run ``python tutorials/make_notebooks.py`` and check a notebook with
``python -m pytest --nbmake tutorials/<notebook>.ipynb``. CI executes every notebook.
"""

from __future__ import annotations

from pathlib import Path

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

HERE = Path(__file__).resolve().parent

SETUP = """\
import os

import matplotlib.pyplot as plt
import torch

if os.environ.get("PYTEST_XDIST_WORKER"):  # CI runs the notebooks in parallel: one thread each
    torch.set_num_threads(1)
torch.manual_seed(0)
%matplotlib inline"""

NOTEBOOKS = {}

# ----------------------------------------------------------------------------------------------
NOTEBOOKS["01_embedding_attributions_and_scores"] = [
    (
        "md",
        """\
# Embedding attributions and representation scores

*Paper:* M. Bertolini, D.-A. Clevert, F. Montanari — **Explaining, Evaluating and Enhancing Neural
Networks' Learned Representations** (`papers/embedding-attribution-scores_*`).

Captum explains one output neuron at a time, so an **embedding** (a layer output with no target
class: a representation, a siamese branch, a self-supervised encoder) needs one backward pass per
component and a wrapper. `EmbeddingAttribution` treats every embedding component `z_d` as an output
node, computes a base saliency map (vanilla gradients, activations × gradients or Grad-CAM) at any
source layer, aggregates it over the layer's **channels** (`channel_aggregator`) and over the
**embedding components** (`embedding_aggregator`: `mean`, `abs`, `var` or your callable), and
upsamples it to the image.

From these maps the paper builds two scores of the representation itself:
- the **noise score**: how different the attributions of a real input are from those of noise
  (informativeness), compared with a **noise benchmark** (noise vs noise);
- the **variance score**: how much the embedding components disagree in where they look
  (conciseness), at most 1/4.

Everything runs offline on scikit-learn's 8×8 digits in well under a minute on a laptop CPU.""",
    ),
    ("code", SETUP),
    (
        "code",
        """\
from captum_concepts.data import load_digits_tensors, pretrained_digits_cnn

data = load_digits_tensors()               # 1,437 train / 360 test digits, (N, 1, 8, 8) in [0, 1]
trained = pretrained_digits_cnn(seed=0)    # a small CNN, trained in a few seconds
model = trained.model
print(f"test accuracy {trained.test_accuracy:.1%}")
print([name for name, _ in model.named_modules() if name])""",
    ),
    (
        "md",
        """\
## Attribution maps of the embedding

The embedding is the output of `embedding_relu` (32 components). We explain it with respect to the
input and to three intermediate layers **in one call**: a list of layers shares one forward and
one backward pass.""",
    ),
    (
        "code",
        """\
from captum_concepts.attr import EmbeddingAttribution
from captum_concepts.visualization import visualize_embedding_attributions

layers = [None, "block1.relu", "block2.relu", "block3.relu"]     # None = the input
x = data.x_test[:4]
maps = {}
for agg in ("mean", "abs", "var"):
    ea = EmbeddingAttribution(
        model, embedding_layer="embedding_relu", layer=layers,
        method="activation_gradient", channel_aggregator="mean", embedding_aggregator=agg,
    )
    maps[agg] = ea.attribute(x)            # a list: one (4, 8, 8) tensor per layer
print([tuple(m.shape) for m in maps["var"]])

example = 0
grid = {agg: {str(l or "input"): m[example] for l, m in zip(layers, per_layer)}
        for agg, per_layer in maps.items()}
fig, axes = visualize_embedding_attributions(grid, original_image=x[example])""",
    ),
    (
        "md",
        """\
Rows are the embedding aggregators, columns the source layers. `mean` keeps signs (and can
cancel), `abs` is dense, and the paper's `var` aggregator is the sparsest: it highlights where the
embedding components *disagree*, i.e. what makes this example's embedding specific.

The per-component maps (before aggregation over the embedding) are available too; the variance
score needs them:""",
    ),
    (
        "code",
        """\
ea = EmbeddingAttribution(model, embedding_layer="embedding_relu", layer="block2.relu")
per_dim = ea.attribute(x, return_per_dim=True)
print(tuple(per_dim.shape))   # (examples, embedding components, H, W)""",
    ),
    (
        "md",
        """\
## Score curves: trained vs random weights

`score_curve` computes a score at every layer from a single attribution call. We compare the
trained network with the same architecture at random initialisation, and show the noise benchmark
(two noise inputs through the trained network) as a band. The paper's finding: in deep layers the
trained network's noise score separates from the random network and from the benchmark.""",
    ),
    (
        "code",
        """\
from captum_concepts.data import DigitsCNN
from captum_concepts.metrics import score_curve
from captum_concepts.visualization import visualize_score_curve

torch.manual_seed(0)
random_model = DigitsCNN().eval()
x = data.x_test[:32]
curves = {}
for name, m in (("trained", model), ("random weights", random_model)):
    torch.manual_seed(0)
    curves[name] = score_curve(m, "embedding_relu", layers, x, score="noise", method="gradient",
                               n_benchmark_draws=3)
bench = curves["trained"]
fig, ax = visualize_score_curve(
    {k: c.values for k, c in curves.items()}, layer_names=bench.layers,
    benchmark=bench.benchmark, benchmark_band=bench.benchmark_std, title="noise score",
)
for name, c in curves.items():
    print(name, [round(v, 3) for v in c.values.tolist()])""",
    ),
    (
        "code",
        """\
variance = {name: score_curve(m, "embedding_relu", layers, x, score="variance")
            for name, m in (("trained", model), ("random weights", random_model))}
fig, ax = visualize_score_curve({k: c.values for k, c in variance.items()},
                                layer_names=bench.layers, ylabel="variance score", ylim=(0, 0.25))""",
    ),
    (
        "md",
        """\
The scores are also plain functions, in Captum's metric style (explanation function first, one
value per example), so they work with any attribution method that returns one map per example:""",
    ),
    (
        "code",
        """\
from captum_concepts.metrics import noise_score, variance_score

ea = EmbeddingAttribution(model, embedding_layer="embedding_relu", layer="block3.relu")
ns = noise_score(ea, data.x_test[:16])
vs = variance_score(ea, data.x_test[:16])
print("noise score per example   ", ns[:4])
print("variance score per example", vs[:4], "(always <= 0.25)")""",
    ),
    (
        "md",
        """\
## What to try on your own model

- Point `embedding_layer` at the representation you care about (a projection head, the pooled
  features of a ResNet: `"avgpool"`, a transformer's CLS output) and `layer` at a list of
  intermediate blocks (`["layer1", "layer2", "layer3", "layer4"]`).
- Compare a pretrained checkpoint with a randomly initialised one: a noise-score curve close to the
  benchmark says the representation explains real images no better than noise.
- On a GPU, `EmbeddingAttribution(..., strategy="batched")` computes all embedding components'
  gradients with vmapped backward passes; `internal_batch_size` bounds the memory.
- From the command line: `captum-concepts scores --model resnet18 --weights my.pt --images DIR
  --layers layer2 layer3 layer4 --embedding-layer avgpool`.""",
    ),
]

# ----------------------------------------------------------------------------------------------
NOTEBOOKS["02_semantic_vectors_and_saliency"] = [
    (
        "md",
        """\
# Semantic vectors and semantic saliency

*Paper:* J. Gu, V. Tresp — **Semantics for Global and Local Interpretation of Deep Neural
Networks** (`papers/semantic-vectors_*`).

A **semantic vector** represents a concept (a class, a texture, a material) as a direction in the
feature space of one layer: binarise each example's features (`a = 1[φ(x) > 0]`), normalise, sum
over the concept's examples and normalise again. With it you get a **relevance** between concepts
(the cosine of their vectors), a **degree of diversity** of each concept, **retrieval** of the
examples closest to a concept, and a **perturbation check** of what the units mean.

**Semantic saliency** makes Guided Backprop and Gradient × Input class-discriminative: at one layer
the backward signal only passes through the units of the target class's semantic mask (units
active for most of its examples). The **generalised pointing game** measures where the evidence is:
keep the most salient pixels until they hold m % of the positive energy and check that they lie on
the target object.""",
    ),
    ("code", SETUP),
    (
        "code",
        """\
from captum_concepts.concept import SemanticVector
from captum_concepts.data import load_digits_tensors, pretrained_digits_cnn
from captum_concepts.visualization import visualize_relevance_matrix

data = load_digits_tensors()
model = pretrained_digits_cnn(seed=0).model

# block3.relu (before pooling): after max-pooling almost every unit fires for every digit, and
# binarised features then barely separate the classes
sv = SemanticVector(model, "block3.relu", random_state=0).fit_from_labels((data.x_train, data.y_train))
print("vectors", tuple(sv.vectors_.shape), " diversity", sv.diversity_.numpy().round(2))
fig, ax = visualize_relevance_matrix(sv.relevance(), concept_names=[str(d) for d in range(10)],
                                     title="relevance between digit concepts")""",
    ),
    (
        "md",
        """\
Fitting streams over the data (a tensor, a tuple or a `DataLoader`): memory does not grow with the
number of examples. Retrieval and local explanations use the cosine between an input's features
and each concept's vector:""",
    ),
    (
        "code",
        """\
top = sv.rank(data.x_test, concept=3, k=8)
print("test examples closest to concept 3 have labels", data.y_test[top.indices].tolist())
print("three closest concepts of the first test digits:", sv.explain(data.x_test[:3], k=3).names)
result = sv.perturbation_check(data.x_test[:200], data.y_test[:200])
print({k: round(v, 4) for k, v in result.means().items()})""",
    ),
    (
        "md",
        """\
## Semantic saliency on two-digit images

To check *where* a saliency map points we need images with more than one object. Two digits side by
side (8×16) with both labels and boxes; a small CNN learns to recognise both (multi-label) in a few
seconds.""",
    ),
    (
        "code",
        """\
from captum_concepts.data import DigitsCNN, make_two_digit_canvas, train_classifier

train = make_two_digit_canvas(2000, canvas_size=(8, 16), split="train", random_state=0)
test = make_two_digit_canvas(100, canvas_size=(8, 16), split="test", random_state=0)
torch.manual_seed(0)
canvas = train_classifier(DigitsCNN(image_size=(8, 16)), train.images, train.multi_hot,
                          test.images, test.multi_hot, epochs=10, multilabel=True)
canvas_model = canvas.model
with torch.no_grad():
    top2 = canvas_model(test.images).topk(2, dim=1).indices.sort(dim=1).values
both_right = (top2 == test.labels.sort(dim=1).values).all(dim=1).float().mean()
print(f"the two largest logits are the two digits on {both_right:.0%} of the test canvases")

# one semantic vector per class, fitted from the multi-hot labels
canvas_sv = SemanticVector(canvas_model, "block3.pool").fit_from_labels((train.images, train.multi_hot))""",
    ),
    (
        "code",
        """\
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
    row_labels=[f"target {int(t)}" for t in targets[show]],
)""",
    ),
    (
        "code",
        """\
from captum_concepts.metrics import pointing_game_curve
from captum_concepts.visualization import visualize_pointing_game_curve

energies = torch.linspace(0, 0.9, 10)
acc = {name: pointing_game_curve(maps, masks=masks, energies=energies)[1]
       for name, maps in (("Guided Backprop", plain), ("Semantic GBP", semantic))}
fig, ax = visualize_pointing_game_curve(energies, acc)
for name, a in acc.items():
    print(f"{name:16s} classic pointing game {a[0]:.2f}, at 50% energy {a[5]:.2f}")""",
    ),
    (
        "md",
        """\
By default a hit needs *all* the kept energy inside the target's box (`hit_fraction=1.0`), so
accuracies fall quickly as `m` grows on these tiny images; `hit_fraction=0.8` or a `tolerance` in
pixels relax it.

`SemanticGradientInput` works the same way for Gradient × Input. With an all-ones mask both
methods equal Captum's `GuidedBackprop` and `InputXGradient` exactly.

## What to try on your own model

- Fit semantic vectors at the last convolutional block of your classifier (the paper uses VGG16's
  `pool5`) from a labelled `DataLoader`; read the relevance matrix for classes your model confuses.
- Fit vectors of *low-level* concepts (textures, colours, parts) with `sv.fit({"striped": loader1,
  "dotted": loader2, ...})` and explain your images with `sv.explain(x, k=3)`.
- Compare plain and semantic saliency with `pointing_game_curve` on images with boxes or masks.
- From the command line: `captum-concepts saliency --model resnet18 --weights my.pt --images DIR
  --layers layer4`.""",
    ),
]

# ----------------------------------------------------------------------------------------------
NOTEBOOKS["03_coupled_nmf_concepts_and_tcav"] = [
    (
        "md",
        """\
# Concept discovery with coupled NMF, validated with TCAV

*Paper:* U. S. Saini, E. E. Papalexakis — **Analyzing Representations inside Convolutional Neural
Networks** (`papers/coupled-nmf-concepts_*`).

Without any labels, **coupled non-negative matrix factorisation** finds concepts shared by the
pixels, the neurons of several layers and the examples: the pixel matrix `D_i` of every channel and
the activation matrix `A_j` of every layer are factorised as `P_i F` and `O_j F` with **one shared
example factor `F`**. Row `k` of `F` says how much each example expresses concept `k`; column `k`
of `P_i` is the concept's pixel pattern, column `k` of `O_j` its neurons in layer `j`.

The paper then reads the concepts (top examples, top classes, pixel images and masks, similarity of
neuron factors across layers) and **validates** them with TCAV: each concept's top examples become
a Captum `Concept`.""",
    ),
    ("code", SETUP),
    (
        "code",
        """\
from captum_concepts.concept import CoupledNMFConcepts
from captum_concepts.data import load_digits_tensors, pretrained_digits_cnn

data = load_digits_tensors()
model = pretrained_digits_cnn(seed=0).model
x, y = data.x_train[:800], data.y_train[:800]

cnmf = CoupledNMFConcepts(n_concepts=10, model=model, layers=["block2.relu", "block3.relu"],
                          include_pixels=True, solver="hals", max_iter=100, random_state=0).fit(x)
print("F", tuple(cnmf.example_factors_.shape), " blocks", cnmf.block_names_,
      f" {cnmf.n_iter_} iterations")
print("top classes per concept (labels only used to read the result):")
print(cnmf.top_classes(y, k=3))""",
    ),
    (
        "code",
        """\
from captum_concepts.visualization import visualize_concept_grid

top = cnmf.top_examples(6)                       # (concepts, 6) indices into x
masks, _ = cnmf.factor_masks(x)                  # median masks of the pixel factors
fig, axes = visualize_concept_grid(x[top], masks=masks[:, 0], factor_images=cnmf.factor_images()[:, 0],
                                   concept_names=[f"concept {k}" for k in range(10)])""",
    ),
    (
        "md",
        """\
## Do concepts use separate neurons?

The cosine similarity between the concepts' neuron factors (columns of `O_j`) in each layer, and its
eigenvalues. The paper reports deeper layers closer to the identity: concepts are carried by
distinct neurons there, while shallow layers share generic edge detectors.""",
    ),
    (
        "code",
        """\
from captum_concepts.visualization import visualize_similarity_matrices

sims = [cnmf.neuron_similarity(layer) for layer in range(2)]
fig, axes = visualize_similarity_matrices(sims, layer_names=["block2.relu", "block3.relu"])""",
    ),
    (
        "md",
        """\
## TCAV validation

Each concept's 40 top examples become a `captum.concept.Concept`; a random set of examples is the
counterpart. TCAV fits a concept activation vector at `block3.pool` and reports the share of test
images of the concept's top class whose class score increases along it.""",
    ),
    (
        "code",
        """\
import tempfile

from captum.concept import TCAV, Concept
from torch.utils.data import DataLoader

concepts = cnmf.to_captum_concepts(x, k=40, first_id=1)
random_concept = Concept(0, "random", DataLoader(x[torch.randperm(len(x))[:40]], batch_size=40))
top_class = cnmf.top_classes(y, k=1)[:, 0]
scores = []
with tempfile.TemporaryDirectory() as tmp:
    tcav = TCAV(model, ["block3.pool"], save_path=tmp, show_progress=False)
    for k in range(5):
        cls = int(top_class[k])
        result = tcav.interpret(data.x_test[data.y_test == cls][:40], [[concepts[k], random_concept]],
                                target=cls)
        score = next(iter(result.values()))["block3.pool"]["sign_count"][0].item()
        scores.append(score)
        print(f"concept {k} (top class {cls}): TCAV score {score:.2f}")""",
    ),
    (
        "md",
        """\
New examples are projected onto the learned concepts with `cnmf.transform(new_images)` (the other
factors stay fixed), and `cnmf.neighbor_concepts(k=30)` gives the concept distribution of each
example's nearest neighbours in `F` space.

## What to try on your own model

- Pass the layers you want to relate (`layers=["layer2", "layer3", "layer4"]` of a ResNet); big
  convolutional layers can be pooled per channel with `pool="mean"`.
- Use `block_weights="balanced"` when one layer is much larger than the others, and
  `group_sparsity` with class labels as `groups` for concepts that stay within few classes.
- `solver="hals"` reaches the same objective in far fewer passes than the paper's multiplicative
  updates; on a GPU pass `device="cuda"`.
- From the command line: `captum-concepts discover --model resnet18 --weights my.pt --images DIR
  --layers layer3 layer4 --n-concepts 20`.""",
    ),
]

# ----------------------------------------------------------------------------------------------
NOTEBOOKS["04_training_with_score_constraints"] = [
    (
        "md",
        """\
# Training with score constraints

*Paper:* M. Bertolini, D.-A. Clevert, F. Montanari — **Explaining, Evaluating and Enhancing Neural
Networks' Learned Representations**, section 4.5.

The noise score (informativeness) and the variance score (conciseness) are differentiable functions
of the model's parameters, so they can enter the training loss:

`L = L_task − γ_NS · NS − γ_VS · VS`

rewarding embeddings whose explanations differ from those of noise and whose components look at
different places. Two details matter:
- the scores are computed from gradients, so training differentiates through a backward pass
  (`create_graph=True`, handled by `differentiable=True`);
- piecewise-linear activations (ReLU) have zero second derivatives: the paper uses **softplus** in
  the encoder.""",
    ),
    ("code", SETUP),
    (
        "code",
        """\
from collections import OrderedDict

from torch import nn

from captum_concepts.data import load_digits_tensors

data = load_digits_tensors()


def make_model(seed):
    torch.manual_seed(seed)
    return nn.Sequential(OrderedDict(
        conv1=nn.Conv2d(1, 8, 3, padding=1), act1=nn.Softplus(),
        conv2=nn.Conv2d(8, 16, 3, padding=1), act2=nn.Softplus(), pool=nn.MaxPool2d(2),
        flatten=nn.Flatten(), embedding=nn.Linear(16 * 4 * 4, 16), act3=nn.Softplus(),
        head=nn.Linear(16, 10),
    ))""",
    ),
    (
        "code",
        """\
import time

from captum_concepts.attr import EmbeddingAttribution
from captum_concepts.data import accuracy
from captum_concepts.metrics import noise_score, variance_score


def train(gamma_ns=0.0, gamma_vs=0.0, epochs=10, seed=0, score_every=15, score_batch=16):
    model = make_model(seed).eval()   # no dropout / batch norm: eval mode trains the same
    ea = EmbeddingAttribution(model, embedding_layer="act3", layer="conv2")
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    gen = torch.Generator().manual_seed(seed)
    step = 0
    for _ in range(epochs):
        for idx in torch.randperm(len(data.x_train), generator=gen).split(32):
            x, y = data.x_train[idx], data.y_train[idx]
            loss = nn.functional.cross_entropy(model(x), y)
            if (gamma_ns or gamma_vs) and step % score_every == 0:
                xs = x[:score_batch]
                ns = noise_score(ea, xs, differentiable=True).mean() if gamma_ns else 0.0
                vs = variance_score(ea, xs, differentiable=True).mean() if gamma_vs else 0.0
                loss = loss - gamma_ns * ns - gamma_vs * vs
            opt.zero_grad()
            loss.backward()
            opt.step()
            step += 1
    x_eval = data.x_test[:64]
    ns = noise_score(ea, x_eval).mean().item()
    vs = variance_score(ea, x_eval).mean().item()
    return accuracy(model, data.x_test, data.y_test), ns, vs


for name, g_ns, g_vs in (("no constraint", 0.0, 0.0), ("NS + VS, gamma 0.1", 0.1, 0.1)):
    start = time.perf_counter()
    acc, ns, vs = train(g_ns, g_vs)
    print(f"{name:20s} test accuracy {acc:.1%}  noise score {ns:.3f}  variance score {vs:.3f}  "
          f"({time.perf_counter() - start:.0f} s)")""",
    ),
    (
        "md",
        """\
The scores are computed every `score_every` mini-batches on a few examples, as in the paper, to
keep the extra backward passes cheap. On 8×8 digits and a few epochs the effect on accuracy is
small and depends on the seed; `experiments/scores_5_constraints.py` runs the paper's comparison
over bottleneck sizes, γ values and several seeds.

## What to try on your own model

- Add `- gamma * noise_score(ea, x, differentiable=True).mean()` to the loss of a
  representation-learning model (an autoencoder, a contrastive encoder) and compare the downstream
  accuracy of the learned embedding with and without it.
- Replace ReLU by softplus (or GELU) in the encoder: with ReLU the constraint's gradient w.r.t. the
  weights is (almost) zero.
- Try the variance constraint on large embeddings and the noise constraint on small ones (the
  paper's observation).""",
    ),
]


def build() -> None:
    for name, cells in NOTEBOOKS.items():
        nb = new_notebook()
        nb.metadata["kernelspec"] = {"display_name": "Python 3", "language": "python", "name": "python3"}
        nb.metadata["language_info"] = {"name": "python"}
        # per-cell limit for nbmake (its default, 300 s, is tight on a loaded 2-core CI machine)
        nb.metadata["execution"] = {"timeout": 900}
        nb.cells = [new_markdown_cell(src) if kind == "md" else new_code_cell(src) for kind, src in cells]
        for i, cell in enumerate(nb.cells):
            cell["id"] = f"{name[:2]}-{i:02d}"
        nbformat.validate(nb)
        nbformat.write(nb, HERE / f"{name}.ipynb")


if __name__ == "__main__":
    build()
