# %% [markdown]
# # Embedding attributions and representation scores
#
# *Paper:* M. Bertolini, D.-A. Clevert, F. Montanari — **Explaining, Evaluating and Enhancing Neural
# Networks' Learned Representations** (§2 for the attributions, §3 for the scores).
#
# Captum explains one output neuron at a time, so an **embedding** (a layer output with no target
# class: a representation, a siamese branch, a self-supervised encoder) needs one backward pass per
# component and a wrapper. `EmbeddingAttribution` treats every embedding component `z_d` as an output
# node, computes a base saliency map (vanilla gradients, activations × gradients or Grad-CAM) at any
# source layer, aggregates it over the layer's **channels** (`channel_aggregator`) and over the
# **embedding components** (`embedding_aggregator`: `mean`, `abs`, `var` or your callable), and
# upsamples it to the image.
#
# From these maps the paper builds two scores of the representation itself:
# - the **noise score**: how different the attributions of a real input are from those of noise
#   (informativeness), compared with a **noise benchmark** (noise vs noise);
# - the **variance score**: how much the embedding components disagree in where they look
#   (conciseness), at most 1/4.
#
# Everything runs offline on scikit-learn's 8×8 digits in well under a minute on a laptop CPU.

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
from captum_concepts.data import load_digits_tensors, pretrained_digits_cnn

data = load_digits_tensors()               # 1,437 train / 360 test digits, (N, 1, 8, 8) in [0, 1]
trained = pretrained_digits_cnn(seed=0)    # a small CNN, trained in a few seconds
model = trained.model
print(f"test accuracy {trained.test_accuracy:.1%}")
print([name for name, _ in model.named_modules() if name])

# %% [markdown]
# ## Attribution maps of the embedding
#
# The embedding is the output of `embedding_relu` (32 components). We explain it with respect to the
# input and to three intermediate layers **in one call**: a list of layers shares one forward and
# one backward pass.

# %%
# Figure: a test digit and its maps at the input and 3 layers (columns) for the mean, abs, var aggregators
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
fig, axes = visualize_embedding_attributions(grid, original_image=x[example])

# %% [markdown]
# Rows are the embedding aggregators, columns the source layers. `mean` keeps signs (and can
# cancel), `abs` is dense, and the paper's `var` aggregator is the sparsest: it highlights where the
# embedding components *disagree*, i.e. what makes this example's embedding specific.
#
# The per-component maps (before aggregation over the embedding) are available too; the variance
# score needs them:

# %%
ea = EmbeddingAttribution(model, embedding_layer="embedding_relu", layer="block2.relu")
per_dim = ea.attribute(x, return_per_dim=True)
print(tuple(per_dim.shape))   # (examples, embedding components, H, W)

# %% [markdown]
# ## Score curves: trained vs random weights
#
# `score_curve` computes a score at every layer from a single attribution call. We compare the
# trained network with the same architecture at random initialisation, and show the noise benchmark
# (two noise inputs through the trained network) as a band. The paper's finding (§4.1, Fig. 3): for
# activations × gradients the trained network's noise score separates from the random network and
# from the benchmark in deep layers, while the two are close in shallow ones.
#
# **Which setting.** `score_curve`'s defaults are activations × gradients with **mean** aggregation
# over channels and over embedding components: that is the setting under which this claim (and the
# paper's ranking-with-accuracy and drift claims) reproduce in our experiments. The `var` aggregator
# of the maps above makes sparse maps, and with it a trained network's noise score sits at or below
# its benchmark; the paper does not say which aggregators its score figures use. The measurements
# are on the site's *Evidence* page (`experiments/README.md` in the repository).

# %%
# Figure: noise score per layer: trained and random CNN near the benchmark, trained far above at block3.pool
from captum_concepts.data import DigitsCNN
from captum_concepts.metrics import score_curve
from captum_concepts.visualization import visualize_score_curve

_ = torch.manual_seed(0)
random_model = DigitsCNN().eval()
x = data.x_test[:32]
curve_layers = layers + ["block3.pool"]  # block3.pool: the input of the linear embedding layer
curves = {}
for name, m in (("trained", model), ("random weights", random_model)):
    torch.manual_seed(0)
    curves[name] = score_curve(m, "embedding_relu", curve_layers, x, score="noise", n_benchmark_draws=3)
bench = curves["trained"]
fig, ax = visualize_score_curve(
    {k: c.values for k, c in curves.items()}, labels=bench.layers,
    benchmark=bench.benchmark, benchmark_band=bench.benchmark_std, title="noise score",
)
for name, c in curves.items():
    print(name, [round(v, 3) for v in c.values.tolist()])

# %% [markdown]
# Reading the figure: from the input to `block3.relu` the trained and the random-weight curves lie
# within a few hundredths of each other and of the benchmark (activations × gradients is dominated
# by the input there; on this small network the trained curve is even slightly below at
# `block3.relu`). At `block3.pool`, the deepest source (the input of the linear embedding), the
# trained network's score is more than twice the random network's: its deep attributions of real
# digits differ from those of noise, the untrained network's do not. That is the paper's §4.1
# observation, reproduced at the deepest layer. The band is the benchmark's spread over its noise
# draws.
#
# The variance score (eq. 3) uses the per-component maps, so the embedding aggregator does not enter
# it; it is at most 1/4 in every setting.

# %%
# Figure: variance score per layer: trained and random CNN close, both rising to about 0.15 at block3.pool
variance = {name: score_curve(m, "embedding_relu", curve_layers, x, score="variance")
            for name, m in (("trained", model), ("random weights", random_model))}
fig, ax = visualize_score_curve({k: c.values for k, c in variance.items()},
                                labels=bench.layers, ylabel="variance score", ylim=(0, 0.25))

# %% [markdown]
# The scores are also plain functions, in Captum's metric style (explanation function first, one
# value per example), so they work with any attribution method that returns one map per example:

# %%
from captum_concepts.metrics import noise_score, variance_score

ea = EmbeddingAttribution(  # the setting of score_curve's defaults
    model, embedding_layer="embedding_relu", layer="block3.relu",
    method="activation_gradient", channel_aggregator="mean", embedding_aggregator="mean",
)
ns = noise_score(ea, data.x_test[:16])
vs = variance_score(ea, data.x_test[:16])
print("noise score per example   ", ns[:4])
print("variance score per example", vs[:4], "(always <= 0.25)")

# %% [markdown]
# ## What to try on your own model
#
# - Point `embedding_layer` at the representation you care about (a projection head, the pooled
#   features of a ResNet: `"avgpool"`, a transformer's CLS output) and `layer` at a list of
#   intermediate blocks (`["layer1", "layer2", "layer3", "layer4"]`).
# - Compare a pretrained checkpoint with a randomly initialised one: a noise-score curve close to the
#   benchmark says the representation explains real images no better than noise. Keep
#   `score_curve`'s defaults (act×grad, mean/mean) for that comparison; use `"var"` for maps to look at.
# - Tutorial 05 does this end to end with a torchvision ResNet-18 loaded from a state dict and an
#   `ImageFolder` of real photographs.
# - On a GPU, `EmbeddingAttribution(..., strategy="batched")` computes all embedding components'
#   gradients with vmapped backward passes; `internal_batch_size` bounds the memory.
# - From the command line: `captum-concepts scores --model resnet18 --weights my.pt --images DIR
#   --layers layer2 layer3 layer4 --embedding-layer avgpool`.
