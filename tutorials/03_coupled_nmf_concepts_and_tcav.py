# %% [markdown]
# # Concept discovery with coupled NMF, validated with TCAV
#
# *Paper:* U. S. Saini, E. E. Papalexakis — **Analyzing Representations inside Convolutional Neural
# Networks** (§3, Equations 3.1 and 3.2).
#
# Without any labels, **coupled non-negative matrix factorisation** finds concepts shared by the
# pixels, the neurons of several layers and the examples: the pixel matrix `D_i` of every channel and
# the activation matrix `A_j` of every layer are factorised as `P_i F` and `O_j F` with **one shared
# example factor `F`**. Row `k` of `F` says how much each example expresses concept `k`; column `k`
# of `P_i` is the concept's pixel pattern, column `k` of `O_j` its neurons in layer `j`.
#
# The paper then reads the concepts (top examples, top classes, pixel images and masks, similarity of
# neuron factors across layers) and **validates** them with TCAV: each concept's top examples become
# a Captum `Concept`.

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
print(cnmf.top_classes(y, k=3))

# %%
# Figure: ten concepts (rows): pixel factor image, then six top digits with the factor's mask in red
from captum_concepts.visualization import visualize_concept_grid

top = cnmf.top_examples(6)                       # (concepts, 6) indices into x
masks, _ = cnmf.factor_masks(x)                  # median masks of the pixel factors
fig, axes = visualize_concept_grid(x[top], masks=masks[:, 0], factor_images=cnmf.factor_images()[:, 0],
                                   labels=[f"concept {k}" for k in range(10)])

# %% [markdown]
# ## Do concepts use separate neurons?
#
# The cosine similarity between the concepts' neuron factors (columns of `O_j`) in each layer, and its
# eigenvalues. The paper reports deeper layers closer to the identity: concepts are carried by
# distinct neurons there, while shallow layers share generic edge detectors.

# %%
# Figure: factor similarity of block2.relu and block3.relu; eigenvalues: one near 5.5, the rest below 1
from captum_concepts.visualization import visualize_similarity_matrices

sims = [cnmf.neuron_similarity(layer) for layer in range(2)]
fig, axes = visualize_similarity_matrices(sims, labels=["block2.relu", "block3.relu"])

# %% [markdown]
# ## TCAV validation
#
# Each concept's 40 top examples become a `captum.concept.Concept`; a random set of examples is the
# counterpart. TCAV fits a concept activation vector at `block3.pool` and reports the share of test
# images of the concept's top class whose class score increases along it.

# %%
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
        print(f"concept {k} (top class {cls}): TCAV score {score:.2f}")

# %% [markdown]
# New examples are projected onto the learned concepts with
# `cnmf.transform(new_images, samples_first=True)`, an `(N, n_concepts)` matrix as in scikit-learn
# (`samples_first=False` gives the paper's `(n_concepts, N)` orientation of `F`; the other factors
# stay fixed), and `cnmf.neighbor_concepts(k=30)` gives the concept distribution of each example's
# nearest neighbours in `F` space.
#
# ## What to try on your own model
#
# - Pass the layers you want to relate (`layers=["layer2", "layer3", "layer4"]` of a ResNet); big
#   convolutional layers can be pooled per channel with `pool="mean"`.
# - Use `block_weights="balanced"` when one layer is much larger than the others, and
#   `group_sparsity` with class labels as `groups` for concepts that stay within few classes.
# - `solver="hals"` reaches the same objective in far fewer passes than the paper's multiplicative
#   updates; on a GPU pass `device="cuda"`.
# - From the command line: `captum-concepts discover --model resnet18 --weights my.pt --images DIR
#   --layers layer3 layer4 --n-concepts 20`.
